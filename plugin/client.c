/* client: the cxone.Client userdata (options, URL and id checks, request bodies, results). */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cxone.h"
#include "http.h"
#include "wire.h"

#define CLIENT_MT "cxone.Client"
#define BATCH_MT "cxone.Batch"
#define DEFAULT_BASE_URL "https://api.cxone.com"
#define DEFAULT_SCOPE "integration:actions:read integration:actions:write integration:actions:admin"
#define DEFAULT_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"
#define MAX_ID_LEN 128

typedef struct {
    cxone_http *h;   /* NULL once closed */
    cxone_xfer one;  /* the transfer of sequential calls, reused */
} client_t;

enum { OP_GET = 0, OP_PATCH, OP_PUT, OP_BUILD, OP_WEBHOOK };
static const char *const op_names[] = {"get", "patch", "put", "build", NULL};

/* ---- helpers ---- */

static client_t *check_client(lua_State *L, int idx)
{
    client_t *c = luaL_checkudata(L, idx, CLIENT_MT);
    if (!c->h) luaL_error(L, "attempt to use a closed cxone.Client");
    return c;
}

/* Failure with a message scrubbed of the client's secrets. */
static int client_fail(lua_State *L, const cxone_http *h, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int client_fail(lua_State *L, const cxone_http *h, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cxone_http_scrub(h, msg, sizeof msg);
    return cxone_fail(L, code, "%s", msg);
}

static int is_loopback(const char *host)
{
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0)
        return 1;
    /* 127.0.0.0/8 as a dotted quad */
    int a, b, c, d;
    char tail;
    return sscanf(host, "%d.%d.%d.%d%c", &a, &b, &c, &d, &tail) == 4 && a == 127
        && b >= 0 && b <= 255 && c >= 0 && c <= 255 && d >= 0 && d <= 255;
}

/* Checks an absolute http(s) URL; writes why it is refused into why. 0 if acceptable. */
static int check_url(const char *what, const char *url, int insecure_http, int allow_query,
                     char *why, size_t whylen)
{
    int ret = -1;
    char *scheme = NULL, *host = NULL, *user = NULL, *query = NULL, *frag = NULL;
    CURLU *u = curl_url();
    if (!u) { snprintf(why, whylen, "out of memory checking %s", what); return -1; }
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (rc != CURLUE_OK) {
        snprintf(why, whylen, "%s is not a valid absolute URL (%s)", what, curl_url_strerror(rc));
        goto done;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_USER, &user, 0);
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0);
    if (!scheme || !host || !*host) {
        snprintf(why, whylen, "%s has no scheme or host", what);
    } else if (strcasecmp(scheme, "https") != 0 && strcasecmp(scheme, "http") != 0) {
        snprintf(why, whylen, "%s must use https:// (got %.16s://)", what, scheme);
    } else if (user) {
        snprintf(why, whylen, "%s must not carry credentials (user:password@): use the client options",
                 what);
    } else if (!allow_query && (query || frag)) {
        snprintf(why, whylen, "%s must not have a query or fragment", what);
    } else if (strcasecmp(scheme, "http") == 0 && !insecure_http && !is_loopback(host)) {
        snprintf(why, whylen,
                 "%s uses plain http:// to the non-loopback host %.200s: the token and secrets would "
                 "travel unencrypted; use https://, or set insecure_http = true if you really mean it",
                 what, host);
    } else {
        ret = 0;
    }
done:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(query);
    curl_free(frag);
    curl_url_cleanup(u);
    return ret;
}

/* Ids that go into URL path segments: unreserved characters only, so nothing can add a
 * segment, a query or a fragment. Returns NULL if fine, else why not. */
static const char *bad_id(const char *s, size_t n)
{
    if (n == 0) return "is empty";
    if (n > MAX_ID_LEN) return "is longer than 128 characters";
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return "is a dot segment";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~'))
            return "contains characters not allowed in a URL path segment (allowed: A-Z a-z 0-9 - . _ ~)";
    }
    return NULL;
}

/* Header values from the caller (If-Match, Idempotency-Key): printable ASCII only. */
static int header_value_ok(const char *s, size_t n)
{
    if (n == 0 || n > 200) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return 0;
    return 1;
}

/* If-Match values: printable ASCII, up to 255 bytes (the longest ETag the transport keeps). */
static int if_match_ok(const char *s, size_t n)
{
    if (n == 0 || n > 255) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return 0;
    return 1;
}

static void check_opts_table(lua_State *L, int idx)
{
    if (!lua_isnoneornil(L, idx)) luaL_checktype(L, idx, LUA_TTABLE);
}

/* ---- constructor ---- */

/***
 * Creates a client for the CXone API. A client used in a forked child (an nginx worker, say)
 * opens its own connections there and never touches the parent's; its token is kept.
 * @function client
 * @tparam table opts see the module documentation (client_id, client_secret, base_url, ...)
 * @treturn[1] cxone.Client
 * @treturn[2] fail with code "config" (refused URL, unreadable ca_file) or "memory"
 */
static int l_client(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *base = cxone_opt_string(L, 1, "base_url", DEFAULT_BASE_URL, NULL);
    const char *token_url = cxone_opt_string(L, 1, "token_url", NULL, NULL);
    const char *id = cxone_opt_string(L, 1, "client_id", NULL, NULL);
    const char *secret = cxone_opt_string(L, 1, "client_secret", NULL, NULL);
    const char *key_id = cxone_opt_string(L, 1, "access_key_id", NULL, NULL);
    const char *key_secret = cxone_opt_string(L, 1, "access_key_secret", NULL, NULL);
    int basic = cxone_opt_boolean(L, 1, "basic_auth", 0);
    const char *scope = cxone_opt_string(L, 1, "scope", DEFAULT_SCOPE, NULL);
    lua_Number cto = cxone_opt_number(L, 1, "connect_timeout", 10);
    lua_Number to = cxone_opt_number(L, 1, "timeout", 30);
    lua_Integer retries = cxone_opt_integer(L, 1, "retries", 3);
    lua_Number bbase = cxone_opt_number(L, 1, "backoff_base", 0.5);
    lua_Number bcap = cxone_opt_number(L, 1, "backoff_cap", 8);
    lua_Number racap = cxone_opt_number(L, 1, "retry_after_cap", 60);
    lua_Number deadline = cxone_opt_number(L, 1, "deadline", 120);
    lua_Number margin = cxone_opt_number(L, 1, "refresh_margin", 30);
    const char *ca_file = cxone_opt_string(L, 1, "ca_file", NULL, NULL);
    int insecure = cxone_opt_boolean(L, 1, "insecure_http", 0);
    int debug = cxone_opt_boolean(L, 1, "debug", 0);
    const char *ua = cxone_opt_string(L, 1, "user_agent", NULL, NULL);

    luaL_argcheck(L, id && *id, 1, "option 'client_id' is required (a non-empty string)");
    luaL_argcheck(L, secret && *secret, 1, "option 'client_secret' is required (a non-empty string)");
    luaL_argcheck(L, (key_id == NULL) == (key_secret == NULL), 1,
                  "options 'access_key_id' and 'access_key_secret' go together");
    luaL_argcheck(L, cto > 0 && cto <= 3600, 1, "option 'connect_timeout' must be in (0, 3600]");
    luaL_argcheck(L, to > 0 && to <= 86400, 1, "option 'timeout' must be in (0, 86400]");
    luaL_argcheck(L, retries >= 0 && retries <= 100, 1, "option 'retries' must be in [0, 100]");
    luaL_argcheck(L, bbase >= 0 && bbase <= 3600, 1, "option 'backoff_base' must be in [0, 3600]");
    luaL_argcheck(L, bcap >= 0 && bcap <= 3600, 1, "option 'backoff_cap' must be in [0, 3600]");
    luaL_argcheck(L, racap >= 0 && racap <= 86400, 1, "option 'retry_after_cap' must be in [0, 86400]");
    luaL_argcheck(L, deadline > 0 && deadline <= 86400, 1, "option 'deadline' must be in (0, 86400]");
    luaL_argcheck(L, margin >= 0 && margin <= 86400, 1, "option 'refresh_margin' must be in [0, 86400]");
    luaL_argcheck(L, !ua || header_value_ok(ua, strlen(ua)), 1,
                  "option 'user_agent' must be printable ASCII (at most 200 bytes)");
    const char *env = getenv("CXONE_DEBUG");
    if (env && *env && strcmp(env, "0") != 0) debug = 1;

    char why[400];
    if (check_url("base_url", base, insecure, 0, why, sizeof why) != 0)
        return cxone_fail(L, "config", "%s", why);
    if (token_url && check_url("token_url", token_url, insecure, 0, why, sizeof why) != 0)
        return cxone_fail(L, "config", "%s", why);
    if (ca_file && access(ca_file, R_OK) != 0)
        return cxone_fail(L, "config", "ca_file %.300s is not readable", ca_file);
    if (!ca_file && access(DEFAULT_CA_BUNDLE, R_OK) == 0) ca_file = DEFAULT_CA_BUNDLE;

    /* the userdata first, so that a failure below is collected with it */
    client_t *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    cxone_xfer_init(&c->one);
    luaL_setmetatable(L, CLIENT_MT);
    cxone_http *h = c->h = cxone_http_new();
    if (!h) return cxone_fail(L, "memory", "out of memory creating the client");

    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/') bl--;
    h->base_url = malloc(bl + 1);
    if (h->base_url) { memcpy(h->base_url, base, bl); h->base_url[bl] = '\0'; }
    if (token_url) {
        h->token_url = cxone_sdup(token_url);
    } else if (h->base_url) {
        h->token_url = malloc(bl + sizeof "/oauth/token");
        if (h->token_url) snprintf(h->token_url, bl + sizeof "/oauth/token", "%s/oauth/token", h->base_url);
    }
    h->client_id = cxone_sdup(id);
    h->client_secret = cxone_sdup(secret);
    h->key_id = cxone_sdup(key_id);
    h->key_secret = cxone_sdup(key_secret);
    h->scope = cxone_sdup(scope);
    h->ca_file = cxone_sdup(ca_file);
    if (ua) {
        h->user_agent = cxone_sdup(ua);
    } else {
        char buf[96];
        snprintf(buf, sizeof buf, "cxone-overrides/%s libcurl/%s", CXONE_VERSION, curl_version_info(CURLVERSION_NOW)->version);
        h->user_agent = cxone_sdup(buf);
    }
    h->basic_auth = basic;
    h->connect_timeout_ms = (long)ceil(cto * 1000);
    h->timeout_ms = (long)ceil(to * 1000);
    h->retries = (int)retries;
    h->backoff_base = bbase;
    h->backoff_cap = bcap;
    h->retry_after_cap = racap;
    h->deadline = deadline;
    h->refresh_margin = margin;
    h->debug = debug;
    if (!h->base_url || !h->token_url || !h->client_id || !h->client_secret || !h->scope
        || (key_id && (!h->key_id || !h->key_secret)) || (ca_file && !h->ca_file) || !h->user_agent) {
        cxone_http_free(h);
        c->h = NULL;
        return cxone_fail(L, "memory", "out of memory creating the client");
    }
    if (cxone_http_start(h, why, sizeof why) != 0) {
        cxone_http_free(h);
        c->h = NULL;
        return cxone_fail(L, "memory", "%s", why);
    }
    return 1;
}

/* ---- outcomes ---- */

/* Appends s[0..n) JSON-quoted with every non-ASCII character as a \\uXXXX escape (hex digits in
 * the given case), as encoders that escape to ASCII write it. Invalid UTF-8 is left as is. */
static void json_quote_ascii(cxone_buf *out, const char *s, size_t n, int upper)
{
    const char *hex = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    cxone_buf plain;
    cxone_buf_init(&plain);
    cxone_json_quote(&plain, s, n); /* escapes for ASCII, as ours */
    if (plain.oom || !plain.p) { out->oom = 1; cxone_buf_free(&plain); return; }
    const unsigned char *p = (const unsigned char *)plain.p, *e = p + plain.len;
    while (p < e) {
        unsigned c = *p, cp = 0, k = 0;
        if (c < 0x80) { cxone_buf_addc(out, (char)c); p++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { cp = c & 0x1F; k = 1; }
        else if (c >= 0xE0 && c <= 0xEF) { cp = c & 0x0F; k = 2; }
        else if (c >= 0xF0 && c <= 0xF4) { cp = c & 0x07; k = 3; }
        if (!k || (size_t)(e - p) <= k || !cxone_utf8_valid(p, k + 1)) {
            cxone_buf_addc(out, (char)c);
            p++;
            continue;
        }
        for (unsigned i = 1; i <= k; i++) cp = (cp << 6) | (p[i] & 0x3F);
        p += k + 1;
        unsigned units[2] = {cp, 0}, nu = 1;
        if (cp >= 0x10000) {
            units[0] = 0xD800 + ((cp - 0x10000) >> 10);
            units[1] = 0xDC00 + ((cp - 0x10000) & 0x3FF);
            nu = 2;
        }
        for (unsigned u = 0; u < nu; u++) {
            char esc[6] = {'\\', 'u', hex[(units[u] >> 12) & 15], hex[(units[u] >> 8) & 15],
                           hex[(units[u] >> 4) & 15], hex[units[u] & 15]};
            cxone_buf_add(out, esc, 6);
        }
    }
    cxone_buf_free(&plain);
}

#define SECRET_FORMS 4 /* as sent, JSON-quoted, JSON-quoted to ASCII (lower and upper case hex) */

/* Pushes what no message may show, and points *spans (*ns of them) at it: the masked values
 * of the payload at idx (0 if none) as sent and in the forms a server echoing our JSON body
 * shows them, the client secrets and the token. Returns the GC-owned buffer holding the
 * derived forms (the caller wipes it when done). Stack: ..., forms, spans. */
static cxone_buf *push_secrets(lua_State *L, const cxone_http *h, int payload, cxone_span **spans,
                               size_t *ns)
{
    cxone_buf *forms = cxone_buf_push(L);
    int base = lua_gettop(L);
    size_t nvars = 0;
    int vars = 0;
    if (payload && lua_type(L, payload) == LUA_TTABLE) {
        if (cxone_rawfield(L, payload, "variables") == LUA_TTABLE) {
            vars = lua_gettop(L);
            nvars = (size_t)lua_rawlen(L, vars);
        } else {
            lua_pop(L, 1);
        }
    }
    if (nvars > (1u << 20)) nvars = 1u << 20;
    /* per masked value: the raw string (referenced by the payload, which is on the stack) and
     * the [start, end) offsets of its derived forms in `forms` */
    typedef struct { const char *p; size_t n, off[SECRET_FORMS - 1][2]; } masked_t;
    masked_t *mv = lua_newuserdatauv(L, (nvars + 1) * sizeof *mv, 0);
    size_t nm = 0;
    for (size_t i = 1; i <= nvars; i++) {
        lua_rawgeti(L, vars, (lua_Integer)i);                    /* entry */
        if (lua_type(L, -1) == LUA_TTABLE) {
            cxone_rawfield(L, -1, "masked");                      /* entry, masked */
            int masked = lua_toboolean(L, -1);
            lua_pop(L, 1);                                        /* entry */
            if (masked) {
                if (cxone_rawfield(L, -1, "value") == LUA_TSTRING) { /* entry, value */
                    masked_t *m = &mv[nm++];
                    m->p = lua_tolstring(L, -1, &m->n); /* referenced by the payload */
                    for (int f = 0; f < SECRET_FORMS - 1; f++) {
                        m->off[f][0] = forms->len;
                        if (f == 0) cxone_json_quote(forms, m->p, m->n);
                        else json_quote_ascii(forms, m->p, m->n, f == 2);
                        m->off[f][1] = forms->len;
                    }
                }
                lua_pop(L, 1);                                    /* entry */
            }
        }
        lua_pop(L, 1);                                            /* (the entry) */
    }
    CXONE_STACK_IS(L, base + (vars ? 1 : 0) + 1);
    cxone_span *sp = lua_newuserdatauv(L, (SECRET_FORMS * nm + 3) * sizeof *sp, 0);
    size_t n = 0;
    for (size_t i = 0; i < nm; i++) {
        sp[n++] = (cxone_span){mv[i].p, mv[i].n};
        for (int f = 0; f < SECRET_FORMS - 1 && !forms->oom; f++) {
            size_t a = mv[i].off[f][0] + 1, b = mv[i].off[f][1] - 1; /* without the quotes */
            if (b > a) sp[n++] = (cxone_span){forms->p + a, b - a};
        }
    }
    const char *sec[] = {h->client_secret, h->key_secret,
                         h->bearer_hdr ? h->bearer_hdr + h->bearer_prefix : NULL};
    for (size_t i = 0; i < 3; i++)
        if (sec[i]) sp[n++] = (cxone_span){sec[i], strlen(sec[i])};
    /* stack: forms, [variables], mv, spans: keep forms and spans only */
    lua_replace(L, base + 1);
    lua_settop(L, base + 1);
    *spans = sp;
    *ns = n;
    return forms;
}

/* Reads string field `key` (else `alt`, if given) of the JSON error body of x into out ("" if
 * none), made safe to
 * show: masked values (payload at idx, 0 if none), secrets and the token are scrubbed from the
 * whole server text first, in bytes (so any encoding), then it is cut (never leaving the start
 * of a secret at the cut), then reduced to printable ASCII. Decodes through Lua: only called
 * once the engine has finished. */
static void error_field(lua_State *L, const cxone_http *h, const cxone_xfer *x, int payload,
                        const char *key, const char *alt, char *out, size_t cap)
{
    char err[64];
    out[0] = '\0';
    if (!x->resp.p || x->resp.len == 0) return;
    int top = lua_gettop(L);
    if (!cxone_json_decode(L, x->resp.p, x->resp.len, err, sizeof err)) return;
    int t = LUA_TNIL, obj = lua_gettop(L);
    if (lua_type(L, obj) == LUA_TTABLE) {
        t = cxone_rawfield(L, obj, key);
        if ((t != LUA_TSTRING || lua_rawlen(L, -1) == 0) && alt) { /* same reading */
            lua_pop(L, 1);
            t = cxone_rawfield(L, obj, alt);
        }
    }
    if (t == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        cxone_span *spans;
        size_t ns;
        cxone_buf *forms = push_secrets(L, h, payload, &spans, &ns);
        cxone_scrub_message(s, n, spans, ns, out, cap);
        cxone_buf_free(forms);
    }
    lua_settop(L, top);
}

/* Removes the masked values of the payload at idx (if any) from msg. */
static void scrub_masked(lua_State *L, int payload, char *msg, size_t cap)
{
    if (payload == 0 || lua_type(L, payload) != LUA_TTABLE) return;
    cxone_rawfield(L, payload, "variables");
    if (lua_type(L, -1) == LUA_TTABLE) {
        size_t n = (size_t)lua_rawlen(L, -1);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);
            if (lua_type(L, -1) == LUA_TTABLE) {
                cxone_rawfield(L, -1, "masked");
                int masked = lua_toboolean(L, -1);
                cxone_rawfield(L, -2, "value");
                size_t vl;
                const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
                if (masked && v) cxone_scrub_value(msg, cap, v, vl);
                lua_pop(L, 2);
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
}

static void push_meta(lua_State *L, const cxone_xfer *x, const char *idem)
{
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)x->status);
    lua_setfield(L, -2, "status");
    if (x->etag[0]) {
        lua_pushstring(L, x->etag);
        lua_setfield(L, -2, "etag");
    }
    lua_pushnumber(L, floor(x->latency_ms * 1000.0 + 0.5) / 1000.0);
    lua_setfield(L, -2, "latency_ms");
    lua_pushinteger(L, x->attempts);
    lua_setfield(L, -2, "attempts");
    if (idem) {
        lua_pushstring(L, idem);
        lua_setfield(L, -2, "idempotency_key");
    }
}

/* Maps a finished transfer to a code and message (for failures). */
static const char *failure_of(lua_State *L, cxone_http *h, const cxone_xfer *x, int op,
                              int payload, char *msg, size_t cap)
{
    if (x->fail_code) {
        snprintf(msg, cap, "%s", x->fail_msg);
        return x->fail_code;
    }
    const char *alt, *field = cxone_wire_quoted(x->status, op == OP_WEBHOOK, &alt);
    char server[240] = "";
    if (field) error_field(L, h, x, payload, field, alt, server, sizeof server);
    const char *code = cxone_wire_failure(x->status, x->attempts, op == OP_WEBHOOK, h->client_id,
                                          server, msg, cap);
    scrub_masked(L, payload, msg, cap);
    cxone_http_scrub(h, msg, cap);
    return code;
}

/* Reads a 2xx answer once (cxone_wire_answer) into answers[x->slot]; called by the engine as
 * each transfer finishes (http.h: on_answer), so a bad answer is a failure before
 * stop_on_failure looks. Lua runs protected here: no error may unwind through the engine. */
typedef struct {
    lua_State *L;
    int answers; /* absolute index of the table the decoded answers go into */
} reader_t;

static int read_answer(lua_State *L) /* (x, answers) -> nothing, or a message */
{
    cxone_xfer *x = lua_touserdata(L, 1);
    char msg[320];
    if (!cxone_wire_answer(L, x->expect, x->status, x->bad_etag, x->resp.p, x->resp.len, msg,
                           sizeof msg)) {
        lua_pushstring(L, msg);
        return 1;
    }
    lua_rawseti(L, 2, (lua_Integer)x->slot);
    return 0;
}

static void on_answer(void *ud, cxone_xfer *x)
{
    const reader_t *r = ud;
    lua_State *L = r->L;
    int rc = LUA_ERRMEM;
    if (lua_checkstack(L, 4)) {
        lua_pushcfunction(L, read_answer);
        lua_pushlightuserdata(L, x);
        lua_pushvalue(L, r->answers);
        rc = lua_pcall(L, 2, 1, 0);
        if (rc == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
            x->fail_code = "format";
            snprintf(x->fail_msg, sizeof x->fail_msg, "%s", lua_tostring(L, -1));
        }
        lua_pop(L, 1);
    }
    if (rc != LUA_OK) {
        x->fail_code = "memory";
        snprintf(x->fail_msg, sizeof x->fail_msg, "out of memory reading the answer");
    }
}

/* Runs the transfers with their 2xx answers read into the table at `answers`. */
static void run_reading(lua_State *L, cxone_http *h, cxone_xfer **xs, size_t n, int conc,
                        int stop, int answers)
{
    reader_t r = {L, answers};
    h->on_answer = on_answer;
    h->on_answer_ud = &r;
    cxone_http_run(h, xs, n, conc, stop, 0);
    h->on_answer = NULL;
    h->on_answer_ud = NULL;
}

/* Pushes the meta table, then the outcome of a finished transfer: `answer, nil, meta` (returns
 * 1) or `nil, message, code` (returns 0); four stack slots in all. The answer is the one
 * run_reading put in the table at `answers` (webhooks: true). */
static int push_outcome(lua_State *L, cxone_http *h, cxone_xfer *x, int op, int payload,
                        const char *idem, int answers)
{
    char msg[512];
    push_meta(L, x, idem);
    if (!x->failed && op != OP_WEBHOOK && lua_rawgeti(L, answers, (lua_Integer)x->slot) != LUA_TTABLE) {
        lua_pop(L, 1); /* not read: cannot happen while every run goes through run_reading */
        x->failed = 1;
        x->fail_code = "format";
        snprintf(x->fail_msg, sizeof x->fail_msg, "the API's answer was not read");
    } else if (!x->failed && op == OP_WEBHOOK) {
        lua_pushboolean(L, 1);
    }
    if (!x->failed) {
        h->stats.successes++;
        lua_pushnil(L);
        lua_pushvalue(L, -3);
        return 1;
    }
    h->stats.failures++;
    const char *code = failure_of(L, h, x, op, payload, msg, sizeof msg);
    luaL_pushfail(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 0;
}

/* ---- request preparation (raises only argument errors before the network) ---- */

static int add_header(cxone_xfer *x, const char *name, const char *value)
{
    char line[320];
    snprintf(line, sizeof line, "%s: %s", name, value);
    return cxone_xfer_header(x, line);
}

static int api_url(cxone_xfer *x, const cxone_http *h, const char *action, const char *env,
                   const char *suffix)
{
    size_t n = strlen(h->base_url) + strlen(action) + (env ? strlen(env) : 0) + 96;
    x->url = malloc(n);
    if (!x->url) return -1;
    if (env)
        snprintf(x->url, n, "%s/api/v2/integration/actions/%s/environments/%s/variables",
                 h->base_url, action, env);
    else
        snprintf(x->url, n, "%s/api/v2/integration/actions/%s/%s", h->base_url, action, suffix);
    return 0;
}

/* Prepares x for op. Stack: payload (or 0), ids, header values are already validated as
 * types; data problems become x->fail_code ("invalid"/"memory") so batch can report them per
 * entry. */
static void prepare(lua_State *L, cxone_http *h, cxone_xfer *x, int op, const char *action,
                    const char *env, int payload, const char *if_match, const char *idem)
{
    const char *why;
    cxone_xfer_reset(x);
    x->h = h;
    x->kind = CXH_API;
    x->retry_policy = CXH_RETRY_ALL;
    if ((why = bad_id(action, strlen(action))) != NULL) {
        snprintf(x->fail_msg, sizeof x->fail_msg, "action id %s", why);
        x->fail_code = "invalid";
        return;
    }
    if (env && (why = bad_id(env, strlen(env))) != NULL) {
        snprintf(x->fail_msg, sizeof x->fail_msg, "environment id %s", why);
        x->fail_code = "invalid";
        return;
    }
    /* an ETag the transport accepted (up to 255 bytes) must be usable as If-Match */
    if (if_match && !if_match_ok(if_match, strlen(if_match))) {
        snprintf(x->fail_msg, sizeof x->fail_msg, "if_match must be 1-255 printable ASCII characters");
        x->fail_code = "invalid";
        return;
    }
    if (idem && !header_value_ok(idem, strlen(idem))) {
        snprintf(x->fail_msg, sizeof x->fail_msg, "idempotency_key must be 1-200 printable ASCII characters");
        x->fail_code = "invalid";
        return;
    }
    int oom = 0;
    switch (op) {
    case OP_GET:
        x->method = "GET";
        x->expect = CXH_EXPECT_VARIABLES;
        oom |= api_url(x, h, action, env, NULL);
        break;
    case OP_PATCH:
    case OP_PUT: {
        x->method = op == OP_PATCH ? "PATCH" : "PUT";
        x->expect = CXH_EXPECT_VARIABLES;
        x->has_body = 1;
        oom |= api_url(x, h, action, env, NULL);
        char err[160];
        /* encode into a scratch buffer (wiped as it grows and when freed), then copy once into a
         * body of the exact size: no reallocation ever leaves a masked value behind */
        cxone_buf tmp;
        cxone_buf_init(&tmp);
        int rc = cxone_json_encode(L, payload, &tmp, err, sizeof err);
        if (rc == 0 && !tmp.oom) {
            cxone_sbuf_reserve(&x->body, tmp.len + 1);
            cxone_sbuf_add(&x->body, tmp.p ? tmp.p : "", tmp.len);
        }
        cxone_sbuf_wipe(&tmp);
        if (rc != 0) {
            snprintf(x->fail_msg, sizeof x->fail_msg, "payload cannot be encoded as JSON: %s", err);
            x->fail_code = "invalid";
            return;
        }
        oom |= x->body.oom;
        oom |= cxone_xfer_header(x, "Content-Type: application/json");
        if (if_match) oom |= add_header(x, "If-Match", if_match);
        break;
    }
    case OP_BUILD:
        x->method = "POST";
        x->expect = CXH_EXPECT_BUILD;
        x->has_body = 1;
        oom |= api_url(x, h, action, NULL, "build");
        cxone_sbuf_add(&x->body, "{}", 2);
        oom |= x->body.oom;
        oom |= cxone_xfer_header(x, "Content-Type: application/json");
        oom |= add_header(x, "Idempotency-Key", idem);
        break;
    }
    oom |= cxone_xfer_header(x, "Accept: application/json");
    oom |= cxone_xfer_header(x, "Expect:");
    if (oom) {
        snprintf(x->fail_msg, sizeof x->fail_msg, "out of memory preparing the request");
        x->fail_code = "memory";
    }
}

/* payload.actionId / payload.environmentId, raising an argument error if not strings. */
static const char *payload_id(lua_State *L, int payload, int argn, const char *field)
{
    cxone_rawfield(L, payload, field);
    if (lua_type(L, -1) != LUA_TSTRING) {
        const char *m = lua_pushfstring(L, "payload.%s must be a string, got %s", field,
                                        luaL_typename(L, -1));
        luaL_argerror(L, argn, m);
    }
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1); /* referenced by the payload */
    return s;
}

/* The meta of the client's latest single call, kept in the registry under the client's
 * address (cleared when it is closed). Pops the value on top (a table, or nil). */
static void set_last_meta(lua_State *L, const client_t *c)
{
    lua_rawsetp(L, LUA_REGISTRYINDEX, c);
}

static int run_one(lua_State *L, client_t *c, int op, int payload, const char *idem)
{
    cxone_xfer *x = &c->one, *xs[1] = {x};
    lua_createtable(L, 1, 0);
    int answers = lua_gettop(L);
    x->slot = 1;
    run_reading(L, c->h, xs, 1, 1, 0, answers);
    push_outcome(L, c->h, x, op, payload, idem, answers);
    cxone_xfer_reset(x); /* wipes the body and the answer */
    lua_pushvalue(L, -4);
    set_last_meta(L, c);
    return 3;
}

/* ---- methods ---- */

/***
 * Fetches a token now (it is otherwise fetched and refreshed on demand).
 * @function Client:authenticate
 * @treturn[1] boolean true
 * @treturn[1] nil
 * @treturn[1] table {expires_in=, scope=}
 * @treturn[2] fail (auth, scope, network, tls, server, rate_limited, format)
 */
static int m_authenticate(lua_State *L)
{
    client_t *c = check_client(L, 1);
    cxone_http *h = c->h;
    cxone_http_run(h, NULL, 0, 1, 0, 1);
    if (h->tok_fail_code) {
        h->stats.failures++;
        return client_fail(L, h, h->tok_fail_code, "%s", h->tok_fail_msg);
    }
    lua_pushboolean(L, 1);
    lua_pushnil(L);
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, h->token_expires_in);
    lua_setfield(L, -2, "expires_in");
    if (h->token_scope) {
        lua_pushstring(L, h->token_scope);
        lua_setfield(L, -2, "scope");
    }
    return 3;
}

/***
 * Reads an environment's variables.
 * @function Client:get
 * @tparam string action_id
 * @tparam string env_id
 * @treturn[1] table {variables=, environmentId=, actionId=}
 * @treturn[1] nil
 * @treturn[1] table meta {status=, etag=, latency_ms=, attempts=} (also Client:last_meta)
 * @treturn[2] fail (its meta: Client:last_meta)
 */
static int m_get(lua_State *L)
{
    client_t *c = check_client(L, 1);
    const char *a = luaL_checkstring(L, 2);
    const char *e = luaL_checkstring(L, 3);
    prepare(L, c->h, &c->one, OP_GET, a, e, 0, NULL, NULL);
    return run_one(L, c, OP_GET, 0, NULL);
}

static int patch_or_put(lua_State *L, int op)
{
    client_t *c = check_client(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    check_opts_table(L, 3);
    const char *a = payload_id(L, 2, 2, "actionId");
    const char *e = payload_id(L, 2, 2, "environmentId");
    const char *if_match = cxone_opt_string(L, 3, "if_match", NULL, NULL);
    prepare(L, c->h, &c->one, op, a, e, 2, if_match, NULL);
    return run_one(L, c, op, 2, NULL);
}

/***
 * Merges variables into an environment (PATCH), optionally only if its ETag is unchanged.
 * Retried on 429/5xx/connection failures; with if_match a retry after a lost answer may
 * report `conflict` although the first attempt was applied.
 * @function Client:patch
 * @tparam table payload {variables=, environmentId=, actionId=}
 * @tparam[opt] table opts {if_match=etag}
 * @treturn[1] table result
 * @treturn[1] nil
 * @treturn[1] table meta
 * @treturn[2] fail (its meta: Client:last_meta)
 */
static int m_patch(lua_State *L) { return patch_or_put(L, OP_PATCH); }

/***
 * Replaces an environment's variables (PUT); as patch otherwise.
 * @function Client:put
 */
static int m_put(lua_State *L) { return patch_or_put(L, OP_PUT); }

/***
 * Queues a build of an action. A random Idempotency-Key is generated unless given, so that
 * retries never queue it twice.
 * @function Client:build
 * @tparam string action_id
 * @tparam[opt] table opts {idempotency_key=}
 * @treturn[1] table {buildId=, status=}
 * @treturn[1] nil
 * @treturn[1] table meta (with idempotency_key)
 * @treturn[2] fail (its meta: Client:last_meta)
 */
static int m_build(lua_State *L)
{
    client_t *c = check_client(L, 1);
    const char *a = luaL_checkstring(L, 2);
    check_opts_table(L, 3);
    const char *idem = cxone_opt_string(L, 3, "idempotency_key", NULL, NULL);
    char uuid[37];
    if (!idem) {
        if (cxone_http_uuid4(uuid) != 0) {
            lua_pushnil(L);
            set_last_meta(L, c);
            return cxone_fail(L, "memory", "the random generator failed");
        }
        idem = uuid;
    }
    lua_pushstring(L, idem); /* keep a copy alive for meta */
    idem = lua_tostring(L, -1);
    prepare(L, c->h, &c->one, OP_BUILD, a, NULL, 0, NULL, idem);
    return run_one(L, c, OP_BUILD, 0, idem);
}

/***
 * POSTs a JSON event to a CI/CD webhook. With a secret it is signed:
 * `X-Cxone-Signature: t=<unix time>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`, so a receiver
 * can check both the body and its age (and reject replays). Failures are returned, never
 * raised. Retried only when the event surely was not processed (connection refused, 429, 503).
 * @function Client:webhook
 * @tparam string url
 * @tparam table event
 * @tparam[opt] table opts {secret=, timestamp=} (timestamp: the unix time to sign, default now)
 * @treturn[1] boolean true
 * @treturn[1] nil
 * @treturn[1] table meta
 * @treturn[2] fail (config for a refused URL, invalid for an unencodable event)
 */
static int m_webhook(lua_State *L)
{
    client_t *c = check_client(L, 1);
    cxone_http *h = c->h;
    const char *url = luaL_checkstring(L, 2);
    luaL_checktype(L, 3, LUA_TTABLE);
    check_opts_table(L, 4);
    size_t sl = 0;
    const char *secret = cxone_opt_string(L, 4, "secret", NULL, &sl);
    lua_Integer ts = cxone_opt_integer(L, 4, "timestamp", (lua_Integer)time(NULL));
    luaL_argcheck(L, ts >= 0, 4, "option 'timestamp' must be a unix time (>= 0)");
    lua_pushnil(L); /* failures before the network have no meta */
    set_last_meta(L, c);
    char why[400];
    /* the webhook URL is never echoed: it may carry a token in its query */
    if (check_url("the webhook URL", url, 0, 1, why, sizeof why) != 0) {
        h->stats.failures++;
        return client_fail(L, h, "config", "%s", why);
    }
    cxone_xfer *x = &c->one;
    cxone_xfer_reset(x);
    x->h = h;
    x->kind = CXH_WEBHOOK;
    x->retry_policy = CXH_RETRY_SAFE;
    x->method = "POST";
    x->has_body = 1;
    char err[160];
    if (cxone_json_encode(L, 3, &x->body, err, sizeof err) != 0) {
        cxone_xfer_reset(x);
        h->stats.failures++;
        return cxone_fail(L, "invalid", "the webhook event cannot be encoded as JSON: %s", err);
    }
    int oom = x->body.oom || !(x->url = cxone_sdup(url));
    oom |= cxone_xfer_header(x, "Content-Type: application/json");
    oom |= cxone_xfer_header(x, "Expect:");
    if (secret && !oom) {
        char hex[65], line[128];
        cxone_buf signed_text; /* "<t>.<body>" */
        cxone_buf_init(&signed_text);
        cxone_buf_addf(&signed_text, "%lld.", (long long)ts);
        cxone_buf_add(&signed_text, x->body.p ? x->body.p : "", x->body.len);
        int bad = signed_text.oom
            || cxone_hmac_sha256_hex(secret, sl, signed_text.p, signed_text.len, hex) != 0;
        cxone_buf_free(&signed_text);
        if (bad) {
            cxone_xfer_reset(x);
            return cxone_fail(L, "memory", "libcrypto failed to sign the webhook body");
        }
        snprintf(line, sizeof line, "X-Cxone-Signature: t=%lld,v1=%s", (long long)ts, hex);
        oom |= cxone_xfer_header(x, line);
    }
    if (oom) {
        cxone_xfer_reset(x);
        return cxone_fail(L, "memory", "out of memory preparing the webhook");
    }
    return run_one(L, c, OP_WEBHOOK, 0, NULL);
}

/* ---- batch ---- */

typedef struct {
    size_t n;
    cxone_xfer *x;    /* n transfers */
    cxone_xfer **px;  /* n pointers */
    char (*idem)[201]; /* the builds' keys (generated, or the caller's: at most 200 bytes) */
} batch_t;

static int batch_gc(lua_State *L)
{
    batch_t *b = luaL_checkudata(L, 1, BATCH_MT);
    if (b->x)
        for (size_t i = 0; i < b->n; i++) cxone_xfer_reset(&b->x[i]);
    free(b->x);
    free(b->px);
    free(b->idem);
    b->x = NULL;
    b->px = NULL;
    b->idem = NULL;
    b->n = 0;
    return 0;
}

static const char *req_str(lua_State *L, int t, size_t i, const char *field, int required)
{
    int ty = cxone_rawfield(L, t, field);
    if (ty == LUA_TNIL && !required) { lua_pop(L, 1); return NULL; }
    if (ty != LUA_TSTRING) {
        const char *m = lua_pushfstring(L, "request #%d: '%s' must be a string, got %s", (int)i, field,
                                        luaL_typename(L, -1));
        luaL_argerror(L, 2, m);
    }
    const char *s = lua_tostring(L, -1);
    lua_pop(L, 1);
    return s;
}

/***
 * Runs many requests concurrently over the client's multi handle.
 * @function Client:batch
 * @tparam table requests list of {op="get"|"patch"|"put"|"build", action=, env=, payload=,
 *   if_match=, idempotency_key=}
 * @tparam[opt] table opts {concurrency=8, stop_on_failure=false}
 * @treturn table results in the same order: {ok=true, result=, meta=} or
 *   {ok=false, error=, code=, meta=} or {ok=false, skipped=true, code="not_attempted"}
 */
static int m_batch(lua_State *L)
{
    client_t *c = check_client(L, 1);
    cxone_http *h = c->h;
    luaL_checktype(L, 2, LUA_TTABLE);
    check_opts_table(L, 3);
    lua_Integer conc = cxone_opt_integer(L, 3, "concurrency", 8);
    int stop = cxone_opt_boolean(L, 3, "stop_on_failure", 0);
    luaL_argcheck(L, conc >= 1 && conc <= CXH_MAX_CONCURRENCY, 3, "option 'concurrency' must be in [1, 64]");
    size_t n = (size_t)lua_rawlen(L, 2);

    /* the transfers live in a userdata so that any error below frees them */
    batch_t *b = cxone_newudata_gc(L, sizeof *b, BATCH_MT, batch_gc);
    int bidx = lua_gettop(L);
    if (n > 0) {
        b->x = calloc(n, sizeof *b->x);
        b->px = calloc(n, sizeof *b->px);
        b->idem = calloc(n, sizeof *b->idem);
        if (!b->x || !b->px || !b->idem) return cxone_fail(L, "memory", "out of memory preparing the batch");
        b->n = n;
        for (size_t i = 0; i < n; i++) {
            cxone_xfer_init(&b->x[i]);
            b->px[i] = &b->x[i];
        }
    }
    int *opk = n ? lua_newuserdatauv(L, n * sizeof(int), 0) : NULL;
    lua_createtable(L, (int)n, 0); /* the payloads as read, for scrubbing the results */
    int pidx = lua_gettop(L);
    /* One pass: each entry and each of its fields is read once, raw (a metamethod cannot
     * answer differently on a second read), checked, and turned into a request. Misuse
     * raises an argument error before anything is sent; the userdata above is collected. */
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, (lua_Integer)i);
        if (lua_type(L, -1) != LUA_TTABLE) {
            const char *m = lua_pushfstring(L, "request #%d must be a table, got %s", (int)i,
                                            luaL_typename(L, -1));
            luaL_argerror(L, 2, m);
        }
        int t = lua_gettop(L);
        const char *op = req_str(L, t, i, "op", 1);
        int k = 0;
        while (op_names[k] && strcmp(op_names[k], op) != 0) k++;
        if (!op_names[k]) {
            const char *m = lua_pushfstring(L, "request #%d: unknown op '%s' (get, patch, put, build)",
                                            (int)i, op);
            luaL_argerror(L, 2, m);
        }
        opk[i - 1] = k;
        const char *if_match = req_str(L, t, i, "if_match", 0);
        const char *idem = req_str(L, t, i, "idempotency_key", 0);
        cxone_xfer *x = &b->x[i - 1];
        if (k == OP_PATCH || k == OP_PUT) {
            if (cxone_rawfield(L, t, "payload") != LUA_TTABLE) {
                const char *m = lua_pushfstring(L, "request #%d: 'payload' must be a table", (int)i);
                luaL_argerror(L, 2, m);
            }
            int p = lua_gettop(L);
            const char *id[2];
            for (int f = 0; f < 2; f++) {
                const char *field = f ? "environmentId" : "actionId";
                if (cxone_rawfield(L, p, field) != LUA_TSTRING) {
                    const char *m = lua_pushfstring(L, "request #%d: payload.%s must be a string",
                                                    (int)i, field);
                    luaL_argerror(L, 2, m);
                }
                id[f] = lua_tostring(L, -1);
                lua_pop(L, 1); /* referenced by the payload */
            }
            const char *a = id[0], *e = id[1];
            const char *ra = req_str(L, t, i, "action", 0), *re = req_str(L, t, i, "env", 0);
            prepare(L, h, x, k, a, e, p, if_match, NULL);
            if (!x->fail_code && ((ra && strcmp(ra, a) != 0) || (re && strcmp(re, e) != 0))) {
                cxone_xfer_reset(x);
                x->fail_code = "invalid";
                snprintf(x->fail_msg, sizeof x->fail_msg,
                         "request #%d: action/env disagree with payload.actionId/environmentId", (int)i);
            }
            lua_rawseti(L, pidx, (lua_Integer)i); /* pops the payload */
        } else if (k == OP_BUILD) {
            const char *a = req_str(L, t, i, "action", 1);
            int no_key = 0;
            if (!idem) {
                no_key = cxone_http_uuid4(b->idem[i - 1]) != 0;
            } else if (strlen(idem) < sizeof b->idem[i - 1]) { /* longer: refused by prepare */
                memcpy(b->idem[i - 1], idem, strlen(idem) + 1);
            }
            prepare(L, h, x, k, a, NULL, 0, NULL, idem ? idem : b->idem[i - 1]);
            if (no_key) { /* never a shared placeholder key */
                x->fail_code = "memory";
                snprintf(x->fail_msg, sizeof x->fail_msg, "the random generator failed");
            }
        } else {
            const char *a = req_str(L, t, i, "action", 1);
            const char *e = req_str(L, t, i, "env", 1);
            prepare(L, h, x, k, a, e, 0, NULL, NULL);
        }
        lua_pop(L, 1);
    }

    lua_createtable(L, (int)n, 0);
    int answers = lua_gettop(L);
    for (size_t i = 0; i < n; i++) b->x[i].slot = (int)i + 1;
    run_reading(L, h, b->px, n, (int)conc, stop, answers);

    /* results, in order */
    lua_createtable(L, (int)n, 0);
    for (size_t i = 1; i <= n; i++) {
        cxone_xfer *x = &b->x[i - 1];
        lua_createtable(L, 0, 4);
        if (x->skipped) {
            lua_pushboolean(L, 0);
            lua_setfield(L, -2, "ok");
            lua_pushboolean(L, 1);
            lua_setfield(L, -2, "skipped");
            lua_pushliteral(L, "not_attempted");
            lua_setfield(L, -2, "code");
        } else {
            int payload = 0;
            if (opk[i - 1] == OP_PATCH || opk[i - 1] == OP_PUT) {
                lua_rawgeti(L, pidx, (lua_Integer)i); /* the payload as read before the run */
                payload = lua_gettop(L);
            }
            int top = lua_gettop(L);
            int ok = push_outcome(L, h, x, opk[i - 1], payload,
                                  opk[i - 1] == OP_BUILD ? b->idem[i - 1] : NULL, answers);
            /* stack: entry, [payload], meta, three values */
            int entry = payload ? payload - 1 : top;
            if (ok) {
                lua_pop(L, 2);
                lua_setfield(L, entry, "result");
            } else {
                lua_setfield(L, entry, "code");
                lua_setfield(L, entry, "error");
                lua_pop(L, 1);
            }
            lua_setfield(L, entry, "meta");
            lua_pushboolean(L, ok);
            lua_setfield(L, entry, "ok");
            if (payload) lua_pop(L, 1);
        }
        lua_rawseti(L, -2, (lua_Integer)i);
        cxone_xfer_reset(x);
    }
    lua_replace(L, bidx); /* the batch userdata's slot now holds the results */
    lua_settop(L, bidx);
    return 1;
}

/* ---- introspection and lifetime ---- */

/***
 * Counters since the client was created.
 * @function Client:stats
 * @treturn table {requests=, attempts=, retries=, token_requests=, successes=, failures=,
 *   connections=, latency_ms_total=}
 */
static int m_stats(lua_State *L)
{
    client_t *c = check_client(L, 1);
    const cxone_http_stats *s = &c->h->stats;
    lua_createtable(L, 0, 8);
#define F(name)                                 \
    lua_pushinteger(L, (lua_Integer)s->name);   \
    lua_setfield(L, -2, #name)
    F(requests);
    F(attempts);
    F(retries);
    F(token_requests);
    F(successes);
    F(failures);
    F(connections);
#undef F
    lua_pushnumber(L, s->latency_ms_total);
    lua_setfield(L, -2, "latency_ms_total");
    return 1;
}

/***
 * Seconds left on the cached token.
 * @function Client:token_ttl
 * @treturn number|nil nil when no token is cached
 */
static int m_token_ttl(lua_State *L)
{
    client_t *c = check_client(L, 1);
    double ttl = cxone_http_token_ttl(c->h);
    if (ttl < 0) lua_pushnil(L);
    else lua_pushnumber(L, ttl);
    return 1;
}

/***
 * The meta table of the client's latest get, patch, put, build or webhook call, whether it
 * succeeded or failed: `{status=, etag=, latency_ms=, attempts=, idempotency_key=}` (status 0
 * when no answer came). A successful call also returns it as its third value; a failed one
 * returns `nil, message, code`, and this is where its status and attempts are read.
 * @function Client:last_meta
 * @treturn table|nil nil before the first call, and after a failure before the network
 */
static int m_last_meta(lua_State *L)
{
    client_t *c = check_client(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, c);
    return 1;
}

/***
 * Closes the client: frees the libcurl handles and wipes the credentials and the token.
 * Idempotent; also __gc and __close.
 * @function Client:close
 */
static int m_close(lua_State *L)
{
    client_t *c = luaL_checkudata(L, 1, CLIENT_MT);
    lua_pushnil(L);
    set_last_meta(L, c);
    if (c->h) {
        cxone_xfer_reset(&c->one);
        cxone_http_free(c->h);
        c->h = NULL;
    }
    return 0;
}

static int m_tostring(lua_State *L)
{
    client_t *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (!c->h) {
        lua_pushliteral(L, "cxone.Client (closed)");
        return 1;
    }
    double ttl = cxone_http_token_ttl(c->h);
    if (ttl < 0)
        lua_pushfstring(L, "cxone.Client (client_id=%s, no token)", c->h->client_id);
    else
        lua_pushfstring(L, "cxone.Client (client_id=%s, token valid %d s)", c->h->client_id, (int)ttl);
    return 1;
}

void cxone_client_open(lua_State *L)
{
    static const luaL_Reg meth[] = {
        {"authenticate", m_authenticate},
        {"get", m_get},
        {"patch", m_patch},
        {"put", m_put},
        {"build", m_build},
        {"webhook", m_webhook},
        {"batch", m_batch},
        {"last_meta", m_last_meta},
        {"stats", m_stats},
        {"token_ttl", m_token_ttl},
        {"close", m_close},
        {NULL, NULL},
    };
    static const luaL_Reg metameth[] = {
        {"__gc", m_close},
        {"__close", m_close},
        {"__tostring", m_tostring},
        {NULL, NULL},
    };
    cxone_class(L, CLIENT_MT, metameth, meth);
    lua_pushcfunction(L, l_client);
    lua_setfield(L, -2, "client");
}

/* ---- shared with wire.c; declared in wire.h ---- */

const char *cxone_bad_id(const char *s, size_t n) { return bad_id(s, n); }
void cxone_json_quote_ascii(cxone_buf *out, const char *s, size_t n, int upper)
{
    json_quote_ascii(out, s, n, upper);
}
int cxone_header_value_ok(const char *s, size_t n) { return header_value_ok(s, n); }
void cxone_scrub_masked(lua_State *L, int payload, char *msg, size_t cap)
{
    scrub_masked(L, payload, msg, cap);
}
int cxone_check_url(const char *what, const char *url, int insecure_http, int allow_query,
                    char *why, size_t whylen)
{
    return check_url(what, url, insecure_http, allow_query, why, whylen);
}
