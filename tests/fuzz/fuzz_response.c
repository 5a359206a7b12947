/* libFuzzer harness: the interpretation of answers without a network (plugin/wire.c:
 * core.wire_response, core.wire_token_response, core.wire_retry_after, over the scanners of
 * plugin/http.c). Input: byte 0 picks the call (token answer, or get/patch/put/build), bytes
 * 1-2 the status (100..599), then header lines "name: value" up to an empty line, then the body.
 * Invariants: never raises; three values: a result (whose variables array or buildId string
 * is there, as the one reading checked), nil and meta, or nil, message, known code; no message holds a client
 * secret or a masked value of the payload (raw, or with its non-ASCII bytes replaced), nor ends
 * with an 8+ byte prefix of one that the body quoted; a token is printable ASCII. The scrubbing
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
    for (size_t i = 0; i < NSECRETS; i++) spans[i] = (cxone_span){SECRETS[i], strlen(SECRETS[i])};
    if (!cxone_json_decode(L, (const char *)body, bl, err, sizeof err)) return;
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            if (lua_type(L, -1) == LUA_TSTRING) {
                size_t n, start = out->len;
                const char *v = lua_tolstring(L, -1, &n);
                cxone_scrub_into(out, v, n, spans, NSECRETS);
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
    for (size_t i = 0; i < NSECRETS; i++) {
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
                                        "server", "invalid", "format", NULL};
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

    if (strcmp(op, "token") == 0) {
        fuzz_push_core(L, "wire_token_response");
        lua_pushinteger(L, status);
        lua_pushlstring(L, (const char *)body, bl);
        FUZZ_CHECK(lua_pcall(L, 2, 3, 0) == LUA_OK, "wire_token_response raised: %s", lua_tostring(L, -1));
        int r = lua_gettop(L) - 2;
        if (lua_istable(L, r)) {
            FUZZ_CHECK(status == 200, "a token from HTTP %d", status);
            lua_getfield(L, r, "access_token");
            size_t tl;
            const char *t = lua_tolstring(L, -1, &tl);
            FUZZ_CHECK(t && tl > 0, "no access_token");
            for (size_t i = 0; i < tl; i++)
                FUZZ_CHECK((unsigned char)t[i] > 0x20 && (unsigned char)t[i] < 0x7f, "token byte %zu is 0x%02x", i, (unsigned char)t[i]);
            lua_getfield(L, r, "expires_in");
            FUZZ_CHECK(lua_isnumber(L, -1) && lua_tonumber(L, -1) > 0, "expires_in not positive");
        } else {
            check_failure(L, r, "wire_token_response", body, bl);
        }
    } else {
        fuzz_push_core(L, "wire_response");
        lua_pushstring(L, op);
        lua_pushinteger(L, status);
        lua_pushvalue(L, headers);
        lua_pushlstring(L, (const char *)body, bl);
        /* opts: client_id, secrets = {client secret, token}, payload with a masked value */
        lua_createtable(L, 0, 4);
        lua_pushliteral(L, "fuzz-client");
        lua_setfield(L, -2, "client_id");
        lua_createtable(L, 2, 0);
        lua_pushstring(L, SECRETS[0]);
        lua_rawseti(L, -2, 1);
        lua_pushstring(L, SECRETS[1]);
        lua_rawseti(L, -2, 2);
        lua_setfield(L, -2, "secrets");
        lua_createtable(L, 0, 1);
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
        lua_pushinteger(L, 1);
        lua_setfield(L, -2, "attempts");
        int base = lua_gettop(L) - 6;
        FUZZ_CHECK(lua_pcall(L, 5, LUA_MULTRET, 0) == LUA_OK, "wire_response raised: %s", lua_tostring(L, -1));
        FUZZ_CHECK(lua_gettop(L) - base == 3, "wire_response returned %d values", lua_gettop(L) - base);
        int r = base + 1;
        if (lua_istable(L, r)) {
            FUZZ_CHECK(status >= 200 && status < 300, "a result from HTTP %d", status);
            FUZZ_CHECK(lua_isnil(L, r + 1) && lua_istable(L, r + 2), "not result, nil, meta");
            /* the shape was checked by the same reading that built the table */
            int build = strcmp(op, "build") == 0;
            lua_getfield(L, r, build ? "buildId" : "variables");
            FUZZ_CHECK(build ? lua_type(L, -1) == LUA_TSTRING : lua_istable(L, -1),
                       "a result whose %s is a %s", build ? "buildId" : "variables", luaL_typename(L, -1));
            lua_pop(L, 1);
        } else {
            check_failure(L, r, "wire_response", body, bl);
        }
    }

    /* Retry-After, as a transport would read it */
    lua_getfield(L, headers, "retry-after");
    if (lua_type(L, -1) == LUA_TSTRING) {
        int v = lua_gettop(L);
        fuzz_push_core(L, "wire_retry_after");
        lua_pushvalue(L, v);
        FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK, "wire_retry_after raised: %s", lua_tostring(L, -1));
        if (!lua_isnil(L, -1)) {
            double s = lua_tonumber(L, -1);
            FUZZ_CHECK(lua_isnumber(L, -1) && s >= 0 && isfinite(s), "Retry-After gave %g", s);
        }
    }
    fuzz_done(L);
    return 0;
}
