/* libFuzzer harness: the call engine's answer path without a network, through its Lua binding
 * (core.engine → Engine:call → Call:next/answer/result, as the nginx and HAProxy drivers use it).
 * Input: byte 0 picks the call (a token answer, or get/patch/put/build), bytes 1-2 the status
 * (100..599), then header lines "name: value" up to an empty line, then the body; later
 * requests of the same call (a retry, the 401 refresh) get a transport failure.
 * Invariants: never raises; the call ends within a few steps, every wait is finite and >= 0;
 * three values: a result (whose variables array or buildId string is there, as the one reading
 * checked), nil and meta, or nil, message, known code; no message holds the client secret, the
 * token or a masked value of the payload (raw, or with its non-ASCII bytes replaced), nor ends
 * with an 8+ byte prefix of one that the body quoted; a token taken is printable ASCII. The scrubbing
 * primitives of plugin/util.c are checked on the body directly too: cxone_scrub_into leaves no
 * secret and no cut-off start of one, cxone_scrub_cut leaves no 8+ byte start of one at a cut. */
#include <ctype.h>
#include <math.h>
#include <stdint.h>

#include "fuzz.h"

/* Canaries: a client secret, a token-like secret and a masked UTF-8 value. */
static const char *const SECRETS[] = {
    "Zq7kP2sec-client-secret-CANARY",
    "Tk9vY2tlbi1jYW5hcnk-token-CANARY",
    "M\xc3\xa4sk\xc3\xa9" "d-v\xc3\xa4lue-CANARY-\xe2\x82\xac" "99",
};
#define NSECRETS (sizeof SECRETS / sizeof *SECRETS)
/* The secrets this input's call knows: the masked value only when its payload carries it
 * (patch, put). A get, build or token call cannot scrub a value it was never given, so a
 * server echoing one there is the server's text, not a leak. */
static size_t g_known = NSECRETS;

static void sanitized(const char *s, char *out, size_t cap)
{
    size_t j = 0;
    for (; *s && j + 1 < cap; s++) out[j++] = (unsigned char)*s >= 0x20 && (unsigned char)*s < 0x7f ? *s : '?';
    out[j] = '\0';
}

static size_t count(const char *h, size_t hl, const char *n, size_t nl)
{
    size_t c = 0;
    for (const char *p = h; (p = memmem(p, hl - (size_t)(p - h), n, nl)); p++) c++;
    return c;
}

/* What an honest implementation may show of the body's top-level strings: each with the
 * secrets scrubbed, then sanitised to printable ASCII, joined by NULs (into *out). */
static void legit_text(lua_State *L, const uint8_t *body, size_t bl, cxone_buf *out)
{
    char err[160];
    cxone_span spans[NSECRETS];
    for (size_t i = 0; i < g_known; i++) spans[i] = (cxone_span){SECRETS[i], strlen(SECRETS[i])};
    if (!cxone_json_decode(L, (const char *)body, bl, err, sizeof err)) return;
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -1) == LUA_TSTRING) {
                size_t n, start = out->len;
                const char *v = lua_tolstring(L, -1, &n);
                cxone_scrub_into(out, v, n, spans, g_known);
                for (size_t k = start; k < out->len; k++)
                    if ((unsigned char)out->p[k] < 0x20 || (unsigned char)out->p[k] >= 0x7f) out->p[k] = '?';
                cxone_buf_addc(out, '\0');
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    FUZZ_CHECK(!out->oom, "out of memory");
}

/* A message may hold a secret neither as sent nor with its non-ASCII bytes replaced (more
 * often than the server's own text, scrubbed and sanitised, holds that form), nor end with 8+
 * bytes of one the body quoted. */
static void check_message(lua_State *L, const char *m, size_t ml, const uint8_t *body, size_t bl)
{
    cxone_buf legit;
    cxone_buf_init(&legit);
    legit_text(L, body, bl, &legit);
    const char *lt = legit.p ? legit.p : "";
    for (size_t i = 0; i < g_known; i++) {
        char alt[128];
        sanitized(SECRETS[i], alt, sizeof alt);
        size_t sl = strlen(SECRETS[i]), al = strlen(alt);
        FUZZ_CHECK(!memmem(m, ml, SECRETS[i], sl), "message holds secret %zu: %s", i, m);
        FUZZ_CHECK(count(m, ml, alt, al) <= count(lt, legit.len, alt, al),
                   "message holds secret %zu (non-ASCII replaced): %s", i, m);
        if (!memmem(body, bl, SECRETS[i], sl)) continue;
        for (size_t k = CXONE_SCRUB_PREFIX_MIN; k < sl && k <= ml; k++)
            FUZZ_CHECK(memcmp(m + ml - k, SECRETS[i], k) != 0,
                       "message ends with a %zu-byte start of secret %zu: %s", k, i, m);
        for (size_t k = CXONE_SCRUB_PREFIX_MIN; k < al && k <= ml; k++)
            FUZZ_CHECK(memcmp(m + ml - k, alt, k) != 0 || memmem(lt, legit.len, alt, k),
                       "message ends with a %zu-byte start of secret %zu (non-ASCII replaced): %s", k, i, m);
    }
    cxone_buf_free(&legit);
}

/* Does s[0..n) end with the first k >= 8 bytes (k < length) of a secret? */
static int ends_with_start(const char *s, size_t n)
{
    for (size_t i = 0; i < NSECRETS; i++) {
        size_t sl = strlen(SECRETS[i]);
        for (size_t k = CXONE_SCRUB_PREFIX_MIN; k < sl && k <= n; k++)
            if (memcmp(s + n - k, SECRETS[i], k) == 0) return 1;
    }
    return 0;
}

static void check_scrub(const uint8_t *body, size_t bl, unsigned cut_seed)
{
    cxone_span spans[NSECRETS];
    for (size_t i = 0; i < NSECRETS; i++) spans[i] = (cxone_span){SECRETS[i], strlen(SECRETS[i])};
    cxone_buf out;
    cxone_buf_init(&out);
    cxone_scrub_into(&out, (const char *)body, bl, spans, NSECRETS);
    FUZZ_CHECK(!out.oom, "scrub ran out of memory");
    for (size_t i = 0; i < NSECRETS; i++)
        FUZZ_CHECK(!memmem(out.p ? out.p : "", out.len, SECRETS[i], strlen(SECRETS[i])),
                   "cxone_scrub_into left secret %zu", i);
    FUZZ_CHECK(!ends_with_start(out.p ? out.p : "", out.len), "cxone_scrub_into left a cut-off secret");
    cxone_buf_free(&out);
    size_t n = bl ? cut_seed % (bl + 1) : 0, n0 = n;
    int shortened = cxone_scrub_cut((const char *)body, &n, spans, NSECRETS);
    FUZZ_CHECK(n <= n0 && shortened == (n != n0), "cxone_scrub_cut grew the text or misreported");
    /* what remains must not end inside an occurrence of a secret in the whole body */
    for (size_t i = 0; i < NSECRETS; i++) {
        size_t sl = strlen(SECRETS[i]);
        for (size_t k = CXONE_SCRUB_PREFIX_MIN; k < sl && k <= n; k++)
            FUZZ_CHECK(n - k + sl > bl || memcmp(body + n - k, SECRETS[i], sl) != 0,
                       "cut at %zu of %zu bytes: %zu bytes of secret %zu remain", n, bl, k, i);
    }
}

static int known_code(const char *c)
{
    static const char *const codes[] = {"auth", "scope", "not_found", "conflict", "rate_limited",
                                        "server", "invalid", "format", "network", "timeout", NULL};
    for (int i = 0; c && codes[i]; i++)
        if (strcmp(c, codes[i]) == 0) return 1;
    return 0;
}

/* A failure at r: nil, a message that passes check_message, a known code. */
static void check_failure(lua_State *L, int r, const char *fn, const uint8_t *body, size_t bl)
{
    FUZZ_CHECK(lua_isnil(L, r), "%s returned %s", fn, luaL_typename(L, r));
    size_t ml;
    const char *m = lua_tolstring(L, r + 1, &ml);
    FUZZ_CHECK(m, "no message");
    FUZZ_CHECK(known_code(lua_tostring(L, r + 2)), "unknown code %s", lua_tostring(L, r + 2));
    check_message(L, m, ml, body, bl);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3) return 0;
    lua_State *L = fuzz_state();
    static const char *const ops[] = {"token", "get", "patch", "put", "build"};
    const char *op = ops[data[0] % 5];
    int status = 100 + ((data[1] << 8 | data[2]) % 500);
    const uint8_t *p = data + 3, *end = data + size;

    /* headers (lowercased names) up to an empty line */
    lua_newtable(L);
    int headers = lua_gettop(L);
    while (p < end && *p != '\n') {
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *le = nl ? nl : end;
        const uint8_t *colon = memchr(p, ':', (size_t)(le - p));
        if (colon && colon > p) {
            char name[64];
            size_t nn = (size_t)(colon - p) < sizeof name - 1 ? (size_t)(colon - p) : sizeof name - 1;
            for (size_t i = 0; i < nn; i++) name[i] = (char)tolower(p[i]);
            name[nn] = '\0';
            const uint8_t *v = colon + 1;
            while (v < le && *v == ' ') v++;
            lua_pushlstring(L, (const char *)v, (size_t)(le - v));
            lua_setfield(L, headers, name);
        }
        p = nl ? nl + 1 : end;
    }
    if (p < end) p++; /* the empty line */
    const uint8_t *body = p;
    size_t bl = (size_t)(end - p);
    check_scrub(body, bl, (unsigned)data[1] << 8 | data[2]);

    /* the engine: no retries by default (byte 2 gives one), the client secret a canary */
    fuzz_push_core(L, "engine");
    lua_createtable(L, 0, 8);
    lua_pushliteral(L, "http://127.0.0.1:9");
    lua_setfield(L, -2, "base_url");
    lua_pushliteral(L, "fuzz-client");
    lua_setfield(L, -2, "client_id");
    lua_pushstring(L, SECRETS[0]);
    lua_setfield(L, -2, "client_secret");
    lua_pushinteger(L, data[2] & 1);
    lua_setfield(L, -2, "retries");
    FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK && lua_isuserdata(L, -1), "core.engine failed");
    int eng = lua_gettop(L);
    int token_op = strcmp(op, "token") == 0;
    if (!token_op) { /* a token another process obtained: the token canary */
        lua_getfield(L, eng, "token_import");
        lua_pushvalue(L, eng);
        lua_pushstring(L, SECRETS[1]);
        lua_pushinteger(L, 3600);
        lua_pushinteger(L, 0);
        FUZZ_CHECK(lua_pcall(L, 4, 1, 0) == LUA_OK && lua_toboolean(L, -1), "token_import failed");
        lua_pop(L, 1);
    }
    /* the call: a payload with a masked value for writes */
    g_known = strcmp(op, "patch") == 0 || strcmp(op, "put") == 0 ? NSECRETS : NSECRETS - 1;
    lua_getfield(L, eng, "call");
    lua_pushvalue(L, eng);
    lua_pushstring(L, token_op ? "get" : op);
    lua_createtable(L, 0, 3);
    lua_pushliteral(L, "a1b2c3d4-e5f6-4890-abcd-ef1234567890");
    lua_setfield(L, -2, "action");
    lua_pushliteral(L, "dev");
    lua_setfield(L, -2, "env");
    if (strcmp(op, "patch") == 0 || strcmp(op, "put") == 0) {
        lua_createtable(L, 0, 3);
        lua_pushliteral(L, "a1b2c3d4-e5f6-4890-abcd-ef1234567890");
        lua_setfield(L, -2, "actionId");
        lua_pushliteral(L, "dev");
        lua_setfield(L, -2, "environmentId");
        lua_createtable(L, 1, 0);
        lua_createtable(L, 0, 3);
        lua_pushliteral(L, "API_KEY");
        lua_setfield(L, -2, "name");
        lua_pushstring(L, SECRETS[2]);
        lua_setfield(L, -2, "value");
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, "masked");
        lua_rawseti(L, -2, 1);
        lua_setfield(L, -2, "variables");
        lua_setfield(L, -2, "payload");
    }
    lua_pushinteger(L, 0);
    FUZZ_CHECK(lua_pcall(L, 4, 1, 0) == LUA_OK && lua_isuserdata(L, -1), "Engine:call raised: %s",
               lua_tostring(L, -1));
    int call = lua_gettop(L);
    double now = 0;
    int answered = 0, steps = 0, took_token = 0;
    for (;; steps++) {
        FUZZ_CHECK(steps < 20, "the call did not end within 20 steps");
        lua_getfield(L, call, "next");
        lua_pushvalue(L, call);
        lua_pushnumber(L, now);
        FUZZ_CHECK(lua_pcall(L, 2, 2, 0) == LUA_OK, "Call:next raised: %s", lua_tostring(L, -1));
        const char *what = lua_tostring(L, -2);
        FUZZ_CHECK(what, "Call:next gave no step");
        if (strcmp(what, "done") == 0) { lua_pop(L, 2); break; }
        if (strcmp(what, "wait") == 0) {
            double w = lua_tonumber(L, -1);
            FUZZ_CHECK(lua_isnumber(L, -1) && w >= 0 && isfinite(w), "a wait of %g s", w);
            now += w;
            lua_pop(L, 2);
            continue;
        }
        if (token_op && answered && strcmp(what, "send") == 0 && !took_token) {
            /* the token answer was taken: the engine holds a printable token */
            took_token = 1;
            FUZZ_CHECK(status == 200, "a token from HTTP %d", status);
            lua_getfield(L, eng, "token");
            lua_pushvalue(L, eng);
            lua_pushnumber(L, now);
            FUZZ_CHECK(lua_pcall(L, 2, 2, 0) == LUA_OK, "Engine:token raised");
            size_t tl;
            const char *t = lua_tolstring(L, -2, &tl);
            FUZZ_CHECK(t && tl > 0, "no token after a token answer");
            for (size_t i = 0; i < tl; i++)
                FUZZ_CHECK((unsigned char)t[i] > 0x20 && (unsigned char)t[i] < 0x7f, "token byte %zu is 0x%02x", i,
                           (unsigned char)t[i]);
            lua_pop(L, 2);
        }
        lua_pop(L, 2);
        if (!answered) { /* the first request gets the fuzzed answer */
            answered = 1;
            lua_getfield(L, call, "answer");
            lua_pushvalue(L, call);
            lua_pushnumber(L, now);
            lua_pushinteger(L, status);
            lua_pushvalue(L, headers);
            lua_pushlstring(L, (const char *)body, bl);
            FUZZ_CHECK(lua_pcall(L, 5, 0, 0) == LUA_OK, "Call:answer raised: %s", lua_tostring(L, -1));
        } else { /* every later one gets a transport failure */
            lua_getfield(L, call, "neterr");
            lua_pushvalue(L, call);
            lua_pushnumber(L, now);
            lua_pushliteral(L, "reset");
            lua_pushliteral(L, "connection reset by the fuzzer");
            FUZZ_CHECK(lua_pcall(L, 4, 0, 0) == LUA_OK, "Call:neterr raised: %s", lua_tostring(L, -1));
        }
    }
    lua_getfield(L, call, "result");
    lua_pushvalue(L, call);
    int base = lua_gettop(L) - 2;
    FUZZ_CHECK(lua_pcall(L, 1, LUA_MULTRET, 0) == LUA_OK, "Call:result raised: %s", lua_tostring(L, -1));
    FUZZ_CHECK(lua_gettop(L) - base == 3, "Call:result returned %d values", lua_gettop(L) - base);
    int r = base + 1;
    if (!lua_isnil(L, r)) {
        FUZZ_CHECK(lua_isnil(L, r + 1) && lua_istable(L, r + 2), "not result, nil, meta");
        lua_getfield(L, r + 2, "status");
        lua_Integer st = lua_tointeger(L, -1);
        lua_pop(L, 1);
        FUZZ_CHECK(st >= 200 && st < 300, "a result from HTTP %d", (int)st);
        FUZZ_CHECK(!token_op || took_token, "a token call succeeded without a token");
        if (!token_op || st == status) {
            /* the shape was checked by the same reading that built the table */
            int build = strcmp(op, "build") == 0;
            FUZZ_CHECK(lua_istable(L, r), "a result that is a %s", luaL_typename(L, r));
            lua_getfield(L, r, build ? "buildId" : "variables");
            FUZZ_CHECK(build ? lua_type(L, -1) == LUA_TSTRING : lua_istable(L, -1),
                       "a result whose %s is a %s", build ? "buildId" : "variables", luaL_typename(L, -1));
            lua_pop(L, 1);
        }
    } else {
        check_failure(L, r, "Call:result", body, bl);
    }
    /* the call's metadata and its tostring never hold a secret either */
    lua_getfield(L, call, "close");
    lua_pushvalue(L, call);
    FUZZ_CHECK(lua_pcall(L, 1, 0, 0) == LUA_OK, "Call:close raised");
    lua_getfield(L, eng, "close");
    lua_pushvalue(L, eng);
    FUZZ_CHECK(lua_pcall(L, 1, 0, 0) == LUA_OK, "Engine:close raised");
    fuzz_done(L);
    return 0;
}
