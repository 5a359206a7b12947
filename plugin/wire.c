/* wire: builds API and token requests and interprets their answers without doing any I/O,
 * plus the retry policy as a pure decision; transports (nginx cosockets, HAProxy's
 * httpclient) send what these functions describe and hand back what they received. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "cxone.h"
#include "http.h"
#include "wire.h"

#define WIRE_DEFAULT_SCOPE \
    "integration:actions:read integration:actions:write integration:actions:admin"
#define WIRE_MAX_URL 2048

enum { W_GET = 0, W_PATCH, W_PUT, W_BUILD };
static const char *const w_ops[] = {"get", "patch", "put", "build", NULL};

/* ---- helpers ---- */

static void set_str(lua_State *L, int t, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, t, k);
}

/* Reads a required string field of the options table, raising an argument error naming it
 * when absent or not a string (an empty id is data, checked later). */
static const char *need_str(lua_State *L, int idx, const char *field)
{
    const char *s = cxone_opt_string(L, idx, field, NULL, NULL);
    if (!s) {
        const char *m = lua_pushfstring(L, "option '%s' is required (a string)", field);
        luaL_argerror(L, idx, m);
    }
    return s;
}

/* Replaces in msg every string of the list at idx (if a table) and every masked value of the
 * payload at pidx (if a table) with [redacted]. */
static void scrub_all(lua_State *L, int secrets, int pidx, char *msg, size_t cap)
{
    if (secrets && lua_type(L, secrets) == LUA_TTABLE) {
        size_t n = (size_t)lua_rawlen(L, secrets);
        for (size_t i = 1; i <= n; i++) {
            lua_rawgeti(L, secrets, (lua_Integer)i);
            size_t sl;
            const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &sl) : NULL;
            if (s) cxone_scrub_value(msg, cap, s, sl);
            lua_pop(L, 1);
        }
    }
    cxone_scrub_masked(L, pidx, msg, cap);
}

/* Something no message may show: a string held by Lua (p), or a range of the forms buffer. */
typedef struct {
    const char *p;
    size_t off, n;
} hide_t;

/* Records s[0..n) and its three JSON-quoted forms (as cxone.Client does: a server may echo our
 * body re-encoded), the forms appended to `forms`. */
static void add_forms(cxone_buf *forms, hide_t *h, size_t *nh, const char *s, size_t n)
{
    h[(*nh)++] = (hide_t){s, 0, n};
    for (int f = 0; f < 3; f++) {
        size_t a = forms->len;
        if (f == 0) cxone_json_quote(forms, s, n);
        else cxone_json_quote_ascii(forms, s, n, f == 2);
        size_t b = forms->len;
        if (b > a + 2) h[(*nh)++] = (hide_t){NULL, a + 1, b - a - 2}; /* without the quotes */
    }
}

/* A string field of a JSON error body ("" if none), safe to show: the JSON is decoded (so \u
 * escapes become the bytes they stand for), then every secret of the list at `secrets` and every
 * masked value of the payload at `pidx`, as sent and in its JSON-quoted forms, is removed from the
 * whole text; then it is cut (never leaving the start of a secret at the cut) and reduced to
 * printable ASCII. */
static void error_field(lua_State *L, int secrets, int pidx, const char *body, size_t n,
                        const char *key, const char *alt, char *out, size_t cap)
{
    char err[64];
    out[0] = '\0';
    if (!body || n == 0) return;
    int top = lua_gettop(L);
    if (!cxone_json_decode(L, body, n, err, sizeof err)) return;
    if (lua_type(L, -1) != LUA_TTABLE) { lua_settop(L, top); return; }
    if ((cxone_rawfield(L, top + 1, key) != LUA_TSTRING || lua_rawlen(L, -1) == 0) && alt) {
        /* the fallback key, from the same reading */
        lua_pop(L, 1);
        cxone_rawfield(L, top + 1, alt);
    }
    if (lua_type(L, -1) != LUA_TSTRING) { lua_settop(L, top); return; }
    size_t tn;
    const char *text = lua_tolstring(L, -1, &tn); /* stack: decoded, text */
    size_t nsec = secrets && lua_type(L, secrets) == LUA_TTABLE ? (size_t)lua_rawlen(L, secrets) : 0;
    size_t nvar = 0;
    if (pidx && lua_type(L, pidx) == LUA_TTABLE) {
        if (cxone_rawfield(L, pidx, "variables") == LUA_TTABLE) nvar = (size_t)lua_rawlen(L, -1);
        lua_pop(L, 1);
    }
    cxone_buf *forms = cxone_buf_push(L);
    hide_t *h = lua_newuserdatauv(L, (4 * (nsec + nvar) + 1) * sizeof *h, 0);
    size_t nh = 0;
    /* the strings stay referenced by the secrets list and the payload while we work */
    for (size_t i = 1; i <= nsec; i++) {
        lua_rawgeti(L, secrets, (lua_Integer)i);
        size_t sl;
        const char *s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &sl) : NULL;
        if (s) add_forms(forms, h, &nh, s, sl);
        lua_pop(L, 1);
    }
    if (nvar) {
        cxone_rawfield(L, pidx, "variables");
        for (size_t i = 1; i <= nvar; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);             /* variables, entry */
            if (lua_type(L, -1) == LUA_TTABLE) {
                cxone_rawfield(L, -1, "masked");
                int masked = lua_toboolean(L, -1);
                cxone_rawfield(L, -2, "value");              /* variables, entry, masked, value */
                size_t vl;
                const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
                if (masked && v) add_forms(forms, h, &nh, v, vl);
                lua_pop(L, 2);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    if (!forms->oom) {
        cxone_span *sp = lua_newuserdatauv(L, (nh + 1) * sizeof *sp, 0);
        for (size_t i = 0; i < nh; i++)
            sp[i] = (cxone_span){h[i].p ? h[i].p : forms->p + h[i].off, h[i].n};
        cxone_scrub_message(text, tn, sp, nh, out, cap);
    }
    cxone_buf_free(forms);
    lua_settop(L, top);
}

/* The value of header name (lowercase) in the table at idx: a string, or the last string of a
 * list (HAProxy gives lists), copied into out (cap bytes, NUL-terminated) since a transport's
 * headers table may have an __index that makes the string it returns (lua-resty-http's does,
 * for case-insensitive names). Returns its length, or -1 if absent; a value that does not fit
 * is reported by its length with out left empty. */
static long header_of(lua_State *L, int idx, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    if (!idx || lua_type(L, idx) != LUA_TTABLE) return -1;
    lua_getfield(L, idx, name);
    if (lua_type(L, -1) == LUA_TTABLE) {
        size_t n = (size_t)lua_rawlen(L, -1);
        lua_rawgeti(L, -1, (lua_Integer)(n ? n : 1));
        lua_remove(L, -2);
    }
    long got = -1;
    if (lua_type(L, -1) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        got = n > 0x7fffffff ? 0x7fffffff : (long)n;
        if (n < cap) memcpy(out, s, n + 1);
    }
    lua_pop(L, 1);
    return got;
}


/* ---- requests ---- */

/***
 * Describes an API request for a transport to send (no I/O).
 * @function wire_request
 * @tparam string op "get", "patch", "put" or "build"
 * @tparam table opts `base_url` (required), `action`, `env` (get/build), `payload` (patch/put:
 *   `{actionId=, environmentId=, variables=}`), `if_match`, `idempotency_key` (build; a random
 *   UUID when absent), `token` (adds `Authorization: Bearer`), `user_agent`
 * @treturn[1] table `{method=, url=, headers={name=value}, body=, idempotency_key=}`
 * @treturn[2] fail with code "invalid" (a bad id, header value or unencodable payload)
 * @usage local req = core.wire_request("get", {base_url = url, action = a, env = "prod", token = t})
 */
static int l_wire_request(lua_State *L)
{
    int op = luaL_checkoption(L, 1, NULL, w_ops);
    luaL_checktype(L, 2, LUA_TTABLE);
    /* every field is read raw (no metamethod runs, so the strings read stay referenced by the
     * tables, and the ids in the URL are those of the body encoded raw below) */
    const char *action = NULL, *env = NULL;
    int pidx = 0;
    if (op == W_PATCH || op == W_PUT) {
        cxone_rawfield(L, 2, "payload");
        luaL_argcheck(L, lua_type(L, -1) == LUA_TTABLE, 2, "option 'payload' must be a table");
        pidx = lua_gettop(L);
        cxone_rawfield(L, pidx, "actionId");
        cxone_rawfield(L, pidx, "environmentId");
        luaL_argcheck(L, lua_type(L, -2) == LUA_TSTRING && lua_type(L, -1) == LUA_TSTRING, 2,
                      "payload.actionId and payload.environmentId must be strings");
        action = lua_tostring(L, -2);
        env = lua_tostring(L, -1); /* both stay on the stack */
    } else {
        action = need_str(L, 2, "action");
        if (op == W_GET) env = need_str(L, 2, "env");
    }
    size_t bl;
    const char *base = cxone_opt_string(L, 2, "base_url", NULL, &bl);
    luaL_argcheck(L, base && bl > 0, 2, "option 'base_url' is required (a non-empty string)");
    while (bl > 0 && base[bl - 1] == '/') bl--;
    const char *token = cxone_opt_string(L, 2, "token", NULL, NULL);
    const char *if_match = cxone_opt_string(L, 2, "if_match", NULL, NULL);
    const char *idem = cxone_opt_string(L, 2, "idempotency_key", NULL, NULL);
    const char *ua = cxone_opt_string(L, 2, "user_agent", NULL, NULL);
    const char *why;
    if ((why = cxone_bad_id(action, strlen(action))) != NULL)
        return cxone_fail(L, "invalid", "action id %s", why);
    if (env && (why = cxone_bad_id(env, strlen(env))) != NULL)
        return cxone_fail(L, "invalid", "environment id %s", why);
    if (if_match && !cxone_header_value_ok(if_match, strlen(if_match)))
        return cxone_fail(L, "invalid", "if_match must be 1-200 printable ASCII characters");
    if (idem && !cxone_header_value_ok(idem, strlen(idem)))
        return cxone_fail(L, "invalid", "idempotency_key must be 1-200 printable ASCII characters");
    if (token && !cxone_token_chars_ok(token, strlen(token)))
        return cxone_fail(L, "invalid", "the token holds characters not allowed in a header");
    if (ua && !cxone_header_value_ok(ua, strlen(ua)))
        return cxone_fail(L, "invalid", "user_agent must be 1-200 printable ASCII characters");
    char uuid[37];
    if (op == W_BUILD && !idem) {
        if (cxone_http_uuid4(uuid) != 0) return cxone_fail(L, "memory", "the random generator failed");
        idem = uuid;
    }

    lua_createtable(L, 0, 5);
    int t = lua_gettop(L);
    static const char *const methods[] = {"GET", "PATCH", "PUT", "POST"};
    set_str(L, t, "method", methods[op]);
    lua_pushlstring(L, base, bl); /* the base URL without trailing slashes */
    const char *b0 = lua_tostring(L, -1);
    if (env)
        lua_pushfstring(L, "%s/api/v2/integration/actions/%s/environments/%s/variables", b0, action, env);
    else
        lua_pushfstring(L, "%s/api/v2/integration/actions/%s/build", b0, action);
    lua_remove(L, -2);
    luaL_argcheck(L, lua_rawlen(L, -1) <= WIRE_MAX_URL, 2, "option 'base_url' is too long");
    lua_setfield(L, t, "url");

    lua_createtable(L, 0, 6);
    int h = lua_gettop(L);
    set_str(L, h, "Accept", "application/json");
    if (ua) set_str(L, h, "User-Agent", ua);
    if (token) {
        lua_pushfstring(L, "Bearer %s", token);
        lua_setfield(L, h, "Authorization");
    }
    if (op != W_GET) set_str(L, h, "Content-Type", "application/json");
    if (if_match && (op == W_PATCH || op == W_PUT)) set_str(L, h, "If-Match", if_match);
    if (op == W_BUILD) {
        set_str(L, h, "Idempotency-Key", idem);
        set_str(L, t, "idempotency_key", idem);
    }
    lua_setfield(L, t, "headers");

    if (op == W_BUILD) {
        set_str(L, t, "body", "{}");
    } else if (pidx) {
        cxone_buf *b = cxone_buf_push(L); /* freed by __gc even if a Lua error unwinds */
        char err[160];
        if (cxone_json_encode(L, pidx, b, err, sizeof err) != 0)
            return cxone_fail(L, "invalid", "payload cannot be encoded as JSON: %s", err);
        if (b->oom) return cxone_fail(L, "memory", "out of memory encoding the payload");
        lua_pushlstring(L, b->p ? b->p : "", b->len);
        OPENSSL_cleanse(b->p, b->cap); /* may hold masked values */
        lua_setfield(L, t, "body");
        lua_pop(L, 1);
    }
    lua_pushvalue(L, t);
    return 1;
}

/***
 * Describes the OAuth2 token request (client_credentials, or the password grant with an access
 * key). The body holds the client secret: send it, never log it.
 * @function wire_token_request
 * @tparam table opts `token_url` (required), `client_id`, `client_secret` (required),
 *   `access_key_id`/`access_key_secret`, `scope` (default: read, write and admin),
 *   `basic_auth` (credentials in an HTTP Basic header instead of the body)
 * @treturn table `{method="POST", url=, headers={name=value}, body=}`
 */
static int l_wire_token_request(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    const char *url = need_str(L, 1, "token_url");
    const char *id = need_str(L, 1, "client_id");
    const char *secret = need_str(L, 1, "client_secret");
    luaL_argcheck(L, *url && *id && *secret, 1, "options 'token_url', 'client_id' and 'client_secret' must not be empty");
    const char *key_id = cxone_opt_string(L, 1, "access_key_id", NULL, NULL);
    const char *key_secret = cxone_opt_string(L, 1, "access_key_secret", NULL, NULL);
    const char *scope = cxone_opt_string(L, 1, "scope", WIRE_DEFAULT_SCOPE, NULL);
    int basic = cxone_opt_boolean(L, 1, "basic_auth", 0);
    luaL_argcheck(L, (key_id == NULL) == (key_secret == NULL), 1,
                  "options 'access_key_id' and 'access_key_secret' go together");

    lua_createtable(L, 0, 4);
    int t = lua_gettop(L);
    set_str(L, t, "method", "POST");
    set_str(L, t, "url", url);
    cxone_buf *b = cxone_buf_push(L);
    char *auth = NULL;
    if (key_id) {
        cxone_form_field(b, "grant_type", "password");
        cxone_form_field(b, "username", key_id);
        cxone_form_field(b, "password", key_secret);
        auth = cxone_basic_header(id, secret);
    } else if (basic) {
        cxone_form_field(b, "grant_type", "client_credentials");
        auth = cxone_basic_header(id, secret);
    } else {
        cxone_form_field(b, "grant_type", "client_credentials");
        cxone_form_field(b, "client_id", id);
        cxone_form_field(b, "client_secret", secret);
    }
    if (scope && *scope) cxone_form_field(b, "scope", scope);
    if (b->oom || ((key_id || basic) && !auth)) {
        cxone_sbuf_wipe(b);
        if (auth) { OPENSSL_cleanse(auth, strlen(auth)); free(auth); }
        return luaL_error(L, "out of memory building the token request");
    }
    lua_pushlstring(L, b->p, b->len);
    cxone_sbuf_wipe(b);
    lua_setfield(L, t, "body");
    lua_pop(L, 1); /* the buffer */
    lua_createtable(L, 0, 3);
    set_str(L, lua_gettop(L), "Content-Type", "application/x-www-form-urlencoded");
    set_str(L, lua_gettop(L), "Accept", "application/json");
    if (auth) {
        /* "Authorization: Basic ..." → the value part (lua_pushstring copies before the wipe) */
        lua_pushstring(L, auth + sizeof "Authorization: " - 1);
        OPENSSL_cleanse(auth, strlen(auth));
        free(auth);
        lua_setfield(L, -2, "Authorization");
    }
    lua_setfield(L, t, "headers");
    return 1;
}

/***
 * Interprets the token endpoint's answer.
 * @function wire_token_response
 * @tparam integer status
 * @tparam string body
 * @tparam[opt] table opts `access_key = true` when the password grant was used (for the hint)
 * @treturn[1] table `{access_token=, expires_in=, scope=}` (expires_in 300 when absent)
 * @treturn[2] fail with code auth, scope, rate_limited, server or format
 */
static int l_wire_token_response(lua_State *L)
{
    lua_Integer st = luaL_checkinteger(L, 1);
    size_t n;
    const char *body = luaL_optlstring(L, 2, "", &n);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    int key = cxone_opt_boolean(L, 3, "access_key", 0);
    if (st != 200) {
        char why[64];
        error_field(L, 0, 0, body, n, "error", NULL, why, sizeof why);
        for (char *p = why; *p; p++)
            if (!((*p >= 'a' && *p <= 'z') || *p == '_')) { *p = '\0'; break; }
        const char *code = st == 400 || st == 401 ? "auth" : st == 403 ? "scope"
            : st == 429 ? "rate_limited" : st >= 500 ? "server" : "format";
        if (strcmp(why, "invalid_scope") == 0) code = "scope";
        return cxone_fail(L, code, "token request refused (HTTP %d%s%s): %s", (int)st,
                          why[0] ? ", " : "", why,
                          strcmp(code, "auth") == 0
                              ? (key ? "check access_key_id/access_key_secret and client_id/client_secret"
                                     : "check client_id and client_secret")
                          : strcmp(code, "scope") == 0 ? "the client may not request these scopes"
                                                       : "try again later");
    }
    cxone_buf *tok = cxone_buf_push(L);
    cxone_buf *scope = cxone_buf_push(L);
    double expires_in = -1;
    int r1 = cxone_js_field(body, n, "access_token", tok, NULL);
    int r2 = cxone_js_field(body, n, "expires_in", NULL, &expires_in);
    int r3 = cxone_js_field(body, n, "scope", scope, NULL);
    if (r1 != 1 || tok->oom || !tok->p || !cxone_token_chars_ok(tok->p, tok->len) || r2 < 0 || r3 < 0) {
        cxone_sbuf_wipe(tok);
        return cxone_fail(L, "format", "token endpoint answered without a usable access_token");
    }
    if (r2 != 1 || !(expires_in > 0)) expires_in = 300; /* conservative when absent */
    lua_createtable(L, 0, 3);
    lua_pushlstring(L, tok->p, tok->len);
    cxone_sbuf_wipe(tok);
    lua_setfield(L, -2, "access_token");
    lua_pushnumber(L, expires_in);
    lua_setfield(L, -2, "expires_in");
    if (r3 == 1 && !scope->oom && scope->p) {
        lua_pushlstring(L, scope->p, scope->len);
        lua_setfield(L, -2, "scope");
    }
    return 1;
}

/* ---- answers ---- */

int cxone_wire_answer(lua_State *L, int expect, long status, int bad_etag, const char *body,
                      size_t n, char *msg, size_t cap)
{
    int build = expect == CXH_EXPECT_BUILD;
    char kind = 0, err[160];
    if (bad_etag) {
        snprintf(msg, cap, "the API answered HTTP %ld with an ETag that is over 255 bytes or not a "
                 "quoted entity-tag: refusing it, since a write could not be made conditional on it",
                 status);
        return 0;
    }
    if (cxone_json_decode_member(L, body ? body : "", n, build ? "buildId" : "variables", &kind,
                                 err, sizeof err)) {
        if (kind == (build ? '"' : '[')) return 1; /* a member means the value is an object */
        lua_pop(L, 1);
    }
    if (build)
        snprintf(msg, cap, "the API answered HTTP %ld to the build request but not with a JSON "
                 "object holding a 'buildId' string", status);
    else
        snprintf(msg, cap, "the API answered HTTP %ld but not with a JSON object holding a "
                 "'variables' array", status);
    return 0;
}

const char *cxone_wire_quoted(long status, int webhook, const char **alt)
{
    int client_error = status >= 400 && status < 500 && status != 429;
    int api_own = status == 401 || status == 403 || status == 404 || status == 409 || status == 412;
    int quotes_message = client_error && (webhook || !api_own);
    *alt = quotes_message ? "error" : NULL;
    return status == 403 && !webhook ? "required_scope" : quotes_message ? "message" : NULL;
}

const char *cxone_wire_failure(long status, int attempts, int webhook, const char *client_id,
                               const char *server, char *msg, size_t cap)
{
    char tries[48] = "";
    if (attempts > 0)
        snprintf(tries, sizeof tries, " after %d attempt%s", attempts, attempts == 1 ? "" : "s");
    if (webhook && status >= 400 && status < 500 && status != 429) {
        /* a CI receiver, not the API: the same codes, its own words */
        snprintf(msg, cap, "the webhook was rejected (HTTP %ld)%s%s", status, server[0] ? ": " : "",
                 server);
        return status == 401 ? "auth" : status == 403 ? "scope" : status == 404 ? "not_found"
             : status == 409 || status == 412 ? "conflict" : "invalid";
    }
    if (status == 401) {
        snprintf(msg, cap, "the API refused the token (HTTP 401) even after a token refresh: check "
                 "that client %s is still authorised", client_id);
        return "auth";
    }
    if (status == 403) {
        if (server[0])
            snprintf(msg, cap, "permission denied (HTTP 403): grant the scope '%s' to client %s",
                     server, client_id);
        else
            snprintf(msg, cap, "permission denied (HTTP 403): client %s lacks the scope this "
                     "operation needs", client_id);
        return "scope";
    }
    if (status == 404) {
        snprintf(msg, cap, "not found (HTTP 404): check the action id and environment id");
        return "not_found";
    }
    if (status == 409 || status == 412) {
        snprintf(msg, cap, "conflict (HTTP %ld): the target changed since the plan was made; "
                 "re-read it and plan again (after a retried PATCH/PUT with If-Match this can also "
                 "mean an earlier attempt was applied but its answer was lost)", status);
        return "conflict";
    }
    if (status == 429) {
        snprintf(msg, cap, "rate limited (HTTP 429)%s; try again later or lower the request rate",
                 tries);
        return "rate_limited";
    }
    if (status >= 500 && status < 600) {
        snprintf(msg, cap, "server error (HTTP %ld)%s", status, tries);
        return "server";
    }
    if (status >= 400 && status < 500) {
        snprintf(msg, cap, "the request was rejected (HTTP %ld)%s%s", status,
                 server[0] ? ": " : "", server);
        return "invalid";
    }
    snprintf(msg, cap, "unexpected HTTP status %ld", status);
    return "format";
}

static void push_meta(lua_State *L, lua_Integer st, const char *etag, size_t el, int opts)
{
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, st);
    lua_setfield(L, -2, "status");
    if (etag && el > 0 && el < 256) {
        lua_pushlstring(L, etag, el);
        lua_setfield(L, -2, "etag");
    }
    static const char *const copy[] = {"attempts", "latency_ms", "idempotency_key"};
    for (size_t i = 0; i < sizeof copy / sizeof *copy; i++) {
        if (lua_type(L, opts) != LUA_TTABLE) break;
        cxone_rawfield(L, opts, copy[i]);
        lua_setfield(L, -2, copy[i]);
    }
}

/***
 * Interprets an API answer the transport received.
 * @function wire_response
 * @tparam string op "get", "patch", "put" or "build"
 * @tparam integer status the HTTP status
 * @tparam table headers lowercase names → value (or a list of values)
 * @tparam string body
 * @tparam[opt] table opts `client_id` (named in messages), `secrets` (a list of strings removed
 *   from any message), `payload` (its masked values are removed too), `attempts`, `latency_ms`,
 *   `idempotency_key` (copied into meta)
 * @treturn[1] table the decoded answer (read once: the shape check is made by the same reading)
 * @treturn[1] nil
 * @treturn[1] table meta `{status=, etag=, attempts=, latency_ms=, idempotency_key=}`
 * @treturn[2] fail (auth, scope, not_found, conflict, rate_limited, server, invalid, format)
 */
static int l_wire_response(lua_State *L)
{
    int op = luaL_checkoption(L, 1, NULL, w_ops);
    lua_Integer st = luaL_checkinteger(L, 2);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    size_t n;
    const char *body = luaL_optlstring(L, 4, "", &n);
    if (!lua_isnoneornil(L, 5)) luaL_checktype(L, 5, LUA_TTABLE);
    lua_settop(L, 5);
    /* the ETag first: the headers' __index (if any) runs before anything is read raw below */
    char etag[256];
    long elen = header_of(L, 3, "etag", etag, sizeof etag);
    size_t el = elen > 0 && (size_t)elen < sizeof etag ? (size_t)elen : 0;
    int bad_etag = elen >= 0 && ((size_t)elen >= sizeof etag || !cxone_etag_ok(etag, el));
    const char *client_id = cxone_opt_string(L, 5, "client_id", "(unnamed)", NULL);
    lua_Integer att = cxone_opt_integer(L, 5, "attempts", 0);
    int attempts = att > 0 && att < 1000000 ? (int)att : 0;
    int secrets = 0, pidx = 0;
    if (lua_type(L, 5) == LUA_TTABLE) {
        cxone_rawfield(L, 5, "secrets"); /* 6 */
        secrets = lua_gettop(L);
        cxone_rawfield(L, 5, "payload"); /* 7 */
        pidx = lua_gettop(L);
    }
    char msg[512], server[240];
    const char *code = NULL;

    if (st >= 200 && st < 300) {
        if (!cxone_wire_answer(L, op == W_BUILD ? CXH_EXPECT_BUILD : CXH_EXPECT_VARIABLES, (long)st,
                               bad_etag, body, n, msg, sizeof msg)) {
            code = "format";
        } else {
            lua_pushnil(L);
            push_meta(L, st, etag, el, 5);
            return 3;
        }
    } else {
        const char *alt, *field = cxone_wire_quoted((long)st, 0, &alt);
        server[0] = '\0';
        if (field) error_field(L, secrets, pidx, body, n, field, alt, server, sizeof server);
        code = cxone_wire_failure((long)st, attempts, 0, client_id, server, msg, sizeof msg);
    }
    scrub_all(L, secrets, pidx, msg, sizeof msg);
    luaL_pushfail(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 3;
}

/***
 * The retry policy: how long to wait before the next attempt, or give up.
 * @function wire_retry
 * @tparam integer retries_used attempts already retried (0 after the first failure)
 * @tparam integer|string outcome an HTTP status, or a transport failure code ("network",
 *   "timeout", "refused": a connection that was never made)
 * @tparam[opt] table opts `retries` (3), `backoff_base` (0.5), `backoff_cap` (8),
 *   `retry_after` (seconds, from wire_retry_after), `retry_after_cap` (60), `remaining`
 *   (seconds left before the caller's deadline), `safe` (only what surely did not reach the
 *   server's handler: refused connections, 429 and 503)
 * @treturn[1] number seconds to wait (full-jitter exponential backoff, or Retry-After)
 * @treturn[2] nil when the outcome is final, the budget is spent or the wait would pass the deadline
 * @treturn[2] string why
 */
static int l_wire_retry(lua_State *L)
{
    lua_Integer used = luaL_checkinteger(L, 1);
    int st = 0;
    const char *cc = NULL;
    if (lua_type(L, 2) == LUA_TNUMBER) st = (int)luaL_checkinteger(L, 2);
    else cc = luaL_checkstring(L, 2);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    lua_Integer retries = cxone_opt_integer(L, 3, "retries", 3);
    lua_Number base = cxone_opt_number(L, 3, "backoff_base", 0.5);
    lua_Number cap = cxone_opt_number(L, 3, "backoff_cap", 8);
    lua_Number ra = cxone_opt_number(L, 3, "retry_after", -1);
    lua_Number racap = cxone_opt_number(L, 3, "retry_after_cap", 60);
    lua_Number remaining = cxone_opt_number(L, 3, "remaining", HUGE_VAL);
    int safe = cxone_opt_boolean(L, 3, "safe", 0);
    luaL_argcheck(L, used >= 0, 1, "must be >= 0");

    int retryable;
    if (cc) {
        retryable = strcmp(cc, "refused") == 0
            || (!safe && (strcmp(cc, "network") == 0 || strcmp(cc, "timeout") == 0));
    } else if (safe) {
        retryable = st == 429 || st == 503;
    } else {
        retryable = st == 429 || st == 500 || st == 502 || st == 503 || st == 504;
    }
    if (!retryable) {
        lua_pushnil(L);
        lua_pushliteral(L, "final");
        return 2;
    }
    if (used >= retries) {
        lua_pushnil(L);
        lua_pushliteral(L, "retries spent");
        return 2;
    }
    double wait;
    if (ra >= 0) {
        wait = ra < racap ? ra : racap;
    } else {
        double ceil_ = base * pow(2.0, (double)used);
        if (ceil_ > cap) ceil_ = cap;
        uint64_t r = 0;
        if (RAND_bytes((unsigned char *)&r, sizeof r) != 1) r = UINT64_MAX / 2;
        wait = ceil_ * ((double)(r >> 11) / 9007199254740992.0);
    }
    if (wait >= remaining) {
        lua_pushnil(L);
        lua_pushliteral(L, "deadline");
        return 2;
    }
    lua_pushnumber(L, wait);
    return 1;
}

/***
 * Parses a Retry-After header value (seconds or an HTTP-date).
 * @function wire_retry_after
 * @tparam string value
 * @treturn number|nil seconds (>= 0), or nil when unparsable
 */
static int l_wire_retry_after(lua_State *L)
{
    size_t n;
    const char *v = luaL_checklstring(L, 1, &n);
    char tmp[128];
    if (n == 0 || n >= sizeof tmp) { lua_pushnil(L); return 1; }
    memcpy(tmp, v, n + 1);
    double s = cxone_parse_retry_after(tmp);
    if (s < 0) lua_pushnil(L);
    else lua_pushnumber(L, s);
    return 1;
}

/***
 * Checks a base or token URL as cxone.Client does (http(s) only, no credentials, query or
 * fragment; plain http only for loopback unless insecure_http).
 * @function wire_check_url
 * @tparam string what the option's name, for the message
 * @tparam string url
 * @tparam[opt] boolean insecure_http
 * @treturn[1] boolean true
 * @treturn[2] fail with code "config"
 */
static int l_wire_check_url(lua_State *L)
{
    const char *what = luaL_checkstring(L, 1);
    const char *url = luaL_checkstring(L, 2);
    int insecure = lua_toboolean(L, 3);
    char why[400];
    if (cxone_check_url(what, url, insecure, 0, why, sizeof why) != 0)
        return cxone_fail(L, "config", "%s", why);
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * A random UUID (version 4) from the OS's CSPRNG (OpenSSL RAND_bytes): run ids and
 * Idempotency-Keys, safe across fork.
 * @function wire_uuid
 * @treturn[1] string
 * @treturn[2] fail with code "memory" if the CSPRNG failed
 */
static int l_wire_uuid(lua_State *L)
{
    char u[37];
    if (cxone_http_uuid4(u) != 0) return cxone_fail(L, "memory", "the random generator failed");
    lua_pushstring(L, u);
    return 1;
}

/***
 * Removes secrets from a message.
 * @function wire_scrub
 * @tparam string message
 * @tparam table secrets a list of strings (shorter than 4 bytes are ignored)
 * @tparam[opt] table payload its masked values are removed too
 * @treturn string the message with each secret replaced by [redacted]
 */
static int l_wire_scrub(lua_State *L)
{
    size_t n;
    const char *m = luaL_checklstring(L, 1, &n);
    luaL_checktype(L, 2, LUA_TTABLE);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", m);
    scrub_all(L, 2, lua_isnoneornil(L, 3) ? 0 : 3, buf, sizeof buf);
    lua_pushstring(L, buf);
    return 1;
}

void cxone_wire_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"wire_request", l_wire_request},
        {"wire_token_request", l_wire_token_request},
        {"wire_token_response", l_wire_token_response},
        {"wire_response", l_wire_response},
        {"wire_retry", l_wire_retry},
        {"wire_retry_after", l_wire_retry_after},
        {"wire_check_url", l_wire_check_url},
        {"wire_uuid", l_wire_uuid},
        {"wire_scrub", l_wire_scrub},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
