/* client: the cxone.Client userdata: the call engine (engine.c) driven by libcurl
 * (curl_driver.c), its options read by config.c and its outcomes made by answer.c. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "answer.h"
#include "config.h"
#include "curl_driver.h"
#include "cxone.h"
#include "rand.h"

#define CLIENT_MT "cxone.Client"
#define CALLS_MT "cxone.Calls"

typedef struct {
    cx_engine *e;   /* NULL once closed */
    cx_curl *d;
} client_t;

static const char *const op_names[] = {"get", "patch", "put", "build", NULL};

static client_t *check_client(lua_State *L, int idx)
{
    client_t *c = luaL_checkudata(L, idx, CLIENT_MT);
    if (!c->e) luaL_error(L, "attempt to use a closed cxone.Client");
    return c;
}

static void check_opts_table(lua_State *L, int idx)
{
    if (!lua_isnoneornil(L, idx)) luaL_checktype(L, idx, LUA_TTABLE);
}

/* The calls of one method invocation, in a userdata so that a Lua error frees them (they are
 * either not started or done then: the engine holds no pointer to them). */
typedef struct {
    size_t n;
    cx_call **c;
    unsigned char *skipped;
} calls_t;

static int calls_gc(lua_State *L)
{
    calls_t *b = luaL_checkudata(L, 1, CALLS_MT);
    for (size_t i = 0; b->c && i < b->n; i++) cx_call_free(NULL, b->c[i]);
    free(b->c);
    free(b->skipped);
    b->c = NULL;
    b->skipped = NULL;
    b->n = 0;
    return 0;
}

static calls_t *push_calls(lua_State *L, size_t n)
{
    calls_t *b = cxone_newudata_gc(L, sizeof *b, CALLS_MT, calls_gc);
    if (n) {
        b->c = calloc(n, sizeof *b->c);
        b->skipped = calloc(n, 1);
        if (!b->c || !b->skipped) luaL_error(L, "out of memory preparing the calls");
        b->n = n;
    }
    return b;
}

/***
 * Creates a client for the CXone API. A client used in a forked child (an nginx worker, say)
 * opens its own connections there and never touches the parent's; its token is kept.
 * @function client
 * @tparam table opts client_id, client_secret (required), base_url, token_url, access_key_id,
 *   access_key_secret, scope, basic_auth, ca_file, insecure_http, debug, user_agent, retries (3),
 *   timeout (per attempt, 30 s), connect_timeout (10 s), deadline (per call, 120 s),
 *   refresh_margin (30 s), backoff_base, backoff_cap, retry_after_cap (60 s), rate_limit
 *   (requests per second; CXONE_MAX_RPS too: the lower wins), max_concurrency (16)
 * @treturn[1] cxone.Client
 * @treturn[2] fail with code "config" (a missing or invalid setting, a refused URL, an
 *   unreadable ca_file) or "memory"; a wrong Lua type is an argument error
 */
static int l_client(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    cxone_buf *scratch = cxone_buf_push(L);
    cx_config cfg;
    cxone_extra x;
    char why[400];
    if (cxone_read_config(L, 1, &cfg, &x, scratch, why, sizeof why) != 0)
        return cxone_fail(L, "config", "%s", why);
    char ua[96];
    if (!cfg.user_agent) {
        snprintf(ua, sizeof ua, "cxone-overrides/%s", CXONE_VERSION);
        cfg.user_agent = ua;
    }
    if (cx_seed(&cfg.seed) != 0) cfg.seed = (uint64_t)time(NULL);
    if (x.debug) cfg.trace = cx_curl_trace;
    /* the userdata first, so that a failure below is collected with it */
    client_t *c = lua_newuserdatauv(L, sizeof *c, 0);
    memset(c, 0, sizeof *c);
    luaL_setmetatable(L, CLIENT_MT);
    c->e = cx_engine_new(&cfg);
    if (!c->e) return cxone_fail(L, "memory", "out of memory creating the client");
    c->d = cx_curl_new(x.ca_file, x.debug, why, sizeof why);
    if (!c->d) {
        cx_engine_free(c->e);
        c->e = NULL;
        return cxone_fail(L, "memory", "%s", why);
    }
    return 1;
}

/* ---- running calls ---- */

typedef struct {
    lua_State *L;
    cx_engine *e;
    int answers; /* absolute index of the table the decoded answers go into */
} reader_t;

/* As each call finishes: its 2xx answer is read once into answers[slot] (a bad one makes the
 * call a `format` failure before stop_on_failure looks). */
static void on_done(void *ud, cx_call *c)
{
    reader_t *r = ud;
    if (cxone_read_answer(r->L, r->e, c)) lua_rawseti(r->L, r->answers, c->slot);
}

static void run(lua_State *L, client_t *cl, calls_t *b, int conc, int stop, int answers)
{
    reader_t r = {L, cl->e, answers};
    for (size_t i = 0; i < b->n; i++) b->c[i]->slot = (int)i + 1;
    cx_curl_run(cl->d, cl->e, b->c, b->n, conc, stop, on_done, &r, b->skipped);
}

/* The meta of the client's latest single call, kept in the registry under the client's
 * address (cleared when it is closed). Pops the value on top (a table, or nil). */
static void set_last_meta(lua_State *L, const client_t *c)
{
    lua_rawsetp(L, LUA_REGISTRYINDEX, c);
}

/* Runs one call made from spec and returns its three values (the meta kept for last_meta). */
static int run_one(lua_State *L, client_t *cl, const cx_spec *spec)
{
    calls_t *b = push_calls(L, 1);
    b->c[0] = cx_call_new(cl->e, spec, cx_curl_now());
    if (!b->c[0]) return luaL_error(L, "out of memory preparing the request");
    lua_createtable(L, 1, 0);
    int answers = lua_gettop(L);
    run(L, cl, b, 1, 0, answers);
    lua_rawgeti(L, answers, 1);
    int res = lua_type(L, -1) == LUA_TTABLE ? lua_gettop(L) : 0;
    cxone_push_outcome(L, cl->e, b->c[0], res);
    cx_call_free(cl->e, b->c[0]);
    b->c[0] = NULL;
    lua_pushvalue(L, -4);
    set_last_meta(L, cl);
    return 3;
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

/* Encodes the payload at idx into a pushed scratch buffer (wiped when collected) and fills the
 * spec's body and secrets (one more pushed slot). Returns NULL, or the encoder's complaint. */
static const char *encode_payload(lua_State *L, int idx, cx_spec *spec, char *err, size_t errlen)
{
    idx = lua_absindex(L, idx);
    cxone_buf *b = cxone_buf_push(L);
    cxone_spec_secrets(L, idx, spec);
    if (cxone_json_encode(L, idx, b, err, errlen) != 0) return err;
    if (b->oom || cxone_buf_cstr(b) != 0) {
        snprintf(err, errlen, "out of memory encoding the payload");
        return err;
    }
    spec->body = b->p;
    spec->body_len = b->len;
    return NULL;
}

/* ---- methods ---- */

/***
 * Fetches a new token now (it is otherwise fetched and refreshed on demand).
 * @function Client:authenticate
 * @treturn[1] boolean true
 * @treturn[1] nil
 * @treturn[1] table {expires_in=, scope=}
 * @treturn[2] fail (auth, scope, network, timeout, tls, server, rate_limited, format)
 */
static int m_authenticate(lua_State *L)
{
    client_t *c = check_client(L, 1);
    lua_rawgetp(L, LUA_REGISTRYINDEX, c); /* last_meta stays: this is not an API call */
    int keep = lua_gettop(L);
    cx_spec spec = {.op = CX_AUTH};
    run_one(L, c, &spec);
    lua_pushvalue(L, keep);
    set_last_meta(L, c);
    if (lua_isnil(L, -3)) return 3;
    lua_pop(L, 3);
    lua_pushboolean(L, 1);
    lua_pushnil(L);
    lua_createtable(L, 0, 2);
    lua_pushnumber(L, cx_engine_token_expires_in(c->e));
    lua_setfield(L, -2, "expires_in");
    const char *scope = cx_engine_token_scope(c->e);
    if (scope) {
        lua_pushstring(L, scope);
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
    cx_spec spec = {.op = CX_GET};
    spec.action = luaL_checkstring(L, 2);
    spec.env = luaL_checkstring(L, 3);
    return run_one(L, c, &spec);
}

/***
 * Lists the actions (`GET /api/v2/integration/actions`: cxone-sim's extension; the API's
 * contract has no list route, so a real tenant may answer 404, code `not_found`).
 * @function Client:list_actions
 * @treturn[1] table {actions = {{id=, name=, environments=}, ...}}
 * @treturn[1] nil
 * @treturn[1] table meta
 * @treturn[2] fail (its meta: Client:last_meta)
 */
static int m_list_actions(lua_State *L)
{
    client_t *c = check_client(L, 1);
    cx_spec spec = {.op = CX_LIST};
    return run_one(L, c, &spec);
}

static int patch_or_put(lua_State *L, int op)
{
    client_t *c = check_client(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    check_opts_table(L, 3);
    cx_spec spec = {.op = op};
    spec.action = payload_id(L, 2, 2, "actionId");
    spec.env = payload_id(L, 2, 2, "environmentId");
    spec.if_match = cxone_opt_string(L, 3, "if_match", NULL, NULL);
    char err[160];
    if (encode_payload(L, 2, &spec, err, sizeof err)) {
        lua_pushnil(L);
        set_last_meta(L, c);
        return cxone_fail(L, "invalid", "payload cannot be encoded as JSON: %s", err);
    }
    return run_one(L, c, &spec);
}

/***
 * Merges variables into an environment (PATCH), optionally only if its ETag is unchanged.
 * Retried on 429/5xx/connection failures; libcurl never re-sends it on its own (a broken
 * connection is an attempt the engine counts). With if_match a retry after a lost answer may
 * report `conflict` although the first attempt was applied.
 * @function Client:patch
 * @tparam table payload {variables=, environmentId=, actionId=}
 * @tparam[opt] table opts {if_match=etag}
 * @treturn[1] table result
 * @treturn[1] nil
 * @treturn[1] table meta
 * @treturn[2] fail (its meta: Client:last_meta)
 */
static int m_patch(lua_State *L) { return patch_or_put(L, CX_PATCH); }

/***
 * Replaces an environment's variables (PUT); as patch otherwise.
 * @function Client:put
 */
static int m_put(lua_State *L) { return patch_or_put(L, CX_PUT); }

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
    cx_spec spec = {.op = CX_BUILD};
    spec.action = luaL_checkstring(L, 2);
    check_opts_table(L, 3);
    spec.idempotency_key = cxone_opt_string(L, 3, "idempotency_key", NULL, NULL);
    char uuid[37];
    if (!spec.idempotency_key) {
        if (cx_uuid4(uuid) != 0) {
            lua_pushnil(L);
            set_last_meta(L, c);
            return cxone_fail(L, "memory", "the random generator failed");
        }
        spec.idempotency_key = uuid;
    }
    return run_one(L, c, &spec);
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
    if (cxone_check_url("the webhook URL", url, 0, 1, why, sizeof why) != 0)
        return cxone_fail(L, "config", "%s", why);
    cx_spec spec = {.op = CX_WEBHOOK, .url = url};
    char err[160];
    cxone_buf *b = cxone_buf_push(L);
    if (cxone_json_encode(L, 3, b, err, sizeof err) != 0)
        return cxone_fail(L, "invalid", "the webhook event cannot be encoded as JSON: %s", err);
    char line[128];
    if (secret) {
        char hex[65];
        cxone_buf *signed_text = cxone_buf_push(L); /* "<t>.<body>" */
        cxone_buf_addf(signed_text, "%lld.", (long long)ts);
        cxone_buf_add(signed_text, b->p ? b->p : "", b->len);
        if (signed_text->oom || cxone_hmac_sha256_hex(secret, sl, signed_text->p, signed_text->len, hex) != 0)
            return cxone_fail(L, "memory", "libcrypto failed to sign the webhook body");
        snprintf(line, sizeof line, "X-Cxone-Signature: t=%lld,v1=%s", (long long)ts, hex);
        spec.signature = line;
    }
    if (b->oom) return cxone_fail(L, "memory", "out of memory preparing the webhook");
    spec.body = b->p ? b->p : "";
    spec.body_len = b->len;
    return run_one(L, c, &spec);
}

/* A string field of a batch request (NULL when absent and optional). */
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
 * Runs many requests concurrently over the client's connections (and within its rate limit).
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
    luaL_checktype(L, 2, LUA_TTABLE);
    check_opts_table(L, 3);
    lua_Integer conc = cxone_opt_integer(L, 3, "concurrency", 8);
    int stop = cxone_opt_boolean(L, 3, "stop_on_failure", 0);
    luaL_argcheck(L, conc >= 1 && conc <= CXD_MAX_CONCURRENCY, 3, "option 'concurrency' must be in [1, 64]");
    size_t n = (size_t)lua_rawlen(L, 2);
    calls_t *b = push_calls(L, n);
    int bidx = lua_gettop(L);
    double now = cx_curl_now();
    /* One pass: each entry and each of its fields is read once, raw, checked, and turned into a
     * call. Misuse raises an argument error before anything is sent; the calls are collected. */
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
        cx_spec spec = {.op = k};
        spec.if_match = req_str(L, t, i, "if_match", 0);
        spec.idempotency_key = req_str(L, t, i, "idempotency_key", 0);
        const char *mismatch = NULL, *early = NULL;
        char err[200], uuid[37];
        if (k == CX_PATCH || k == CX_PUT) {
            if (cxone_rawfield(L, t, "payload") != LUA_TTABLE) {
                const char *m = lua_pushfstring(L, "request #%d: 'payload' must be a table", (int)i);
                luaL_argerror(L, 2, m);
            }
            int p = lua_gettop(L);
            const char *a = NULL, *e = NULL;
            for (int f = 0; f < 2; f++) {
                const char *field = f ? "environmentId" : "actionId";
                if (cxone_rawfield(L, p, field) != LUA_TSTRING) {
                    const char *m = lua_pushfstring(L, "request #%d: payload.%s must be a string",
                                                    (int)i, field);
                    luaL_argerror(L, 2, m);
                }
                if (f) e = lua_tostring(L, -1);
                else a = lua_tostring(L, -1);
                lua_pop(L, 1); /* referenced by the payload */
            }
            spec.action = a;
            spec.env = e;
            const char *ra = req_str(L, t, i, "action", 0), *re = req_str(L, t, i, "env", 0);
            if ((ra && strcmp(ra, a) != 0) || (re && strcmp(re, e) != 0))
                mismatch = "action/env disagree with payload.actionId/environmentId";
            char eerr[160];
            if (encode_payload(L, p, &spec, eerr, sizeof eerr)) {
                snprintf(err, sizeof err, "payload cannot be encoded as JSON: %s", eerr);
                early = err;
            }
        } else if (k == CX_BUILD) {
            spec.action = req_str(L, t, i, "action", 1);
            if (!spec.idempotency_key) {
                if (cx_uuid4(uuid) == 0) spec.idempotency_key = uuid;
                else early = "the random generator failed"; /* never a shared placeholder key */
            }
        } else {
            spec.action = req_str(L, t, i, "action", 1);
            spec.env = req_str(L, t, i, "env", 1);
        }
        cx_call *call = cx_call_new(c->e, &spec, now);
        if (!call) return luaL_error(L, "out of memory preparing the batch");
        b->c[i - 1] = call;
        if (!call->done && (early || mismatch)) {
            if (mismatch) snprintf(err, sizeof err, "request #%d: %s", (int)i, mismatch);
            cx_call_fail_early(c->e, call, early && !mismatch ? (strstr(early, "random") ? "memory" : "invalid")
                                                              : "invalid",
                               mismatch ? err : early);
        }
        lua_settop(L, t - 1);
    }
    lua_createtable(L, (int)n, 0);
    int answers = lua_gettop(L);
    run(L, c, b, (int)conc, stop, answers);

    lua_createtable(L, (int)n, 0); /* results, in order */
    for (size_t i = 1; i <= n; i++) {
        cx_call *x = b->c[i - 1];
        lua_createtable(L, 0, 4);
        int entry = lua_gettop(L);
        if (b->skipped[i - 1]) {
            lua_pushboolean(L, 0);
            lua_setfield(L, entry, "ok");
            lua_pushboolean(L, 1);
            lua_setfield(L, entry, "skipped");
            lua_pushliteral(L, "not_attempted");
            lua_setfield(L, entry, "code");
        } else {
            lua_rawgeti(L, answers, (lua_Integer)i);
            int res = lua_type(L, -1) == LUA_TTABLE ? lua_gettop(L) : 0;
            int ok = cxone_push_outcome(L, c->e, x, res); /* meta, three values */
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
            lua_settop(L, entry);
        }
        lua_rawseti(L, -2, (lua_Integer)i);
        cx_call_free(c->e, x);
        b->c[i - 1] = NULL;
    }
    lua_replace(L, bidx); /* the calls' slot now holds the results */
    lua_settop(L, bidx);
    return 1;
}

/* ---- introspection and lifetime ---- */

/***
 * Counters since the client was created.
 * @function Client:stats
 * @treturn table {requests=, attempts=, retries=, token_requests=, successes=, failures=,
 *   connections=, latency_ms_total=, rate_limited= (429s seen), paced_s= (seconds held back by
 *   the rate limit), rate= (the effective limit, requests/s, 0: none), latency_buckets= (calls
 *   by latency: bucket i counts calls of at most 2^(i-1) ms, the last one the rest)}
 */
static int m_stats(lua_State *L)
{
    client_t *c = check_client(L, 1);
    cxone_push_stats(L, c->e, cx_curl_connections(c->d));
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
    double ttl = cx_engine_token_ttl(c->e, cx_curl_now());
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
    if (c->e) {
        cx_curl_free(c->d);
        cx_engine_free(c->e);
        c->d = NULL;
        c->e = NULL;
    }
    return 0;
}

static int m_tostring(lua_State *L)
{
    client_t *c = luaL_checkudata(L, 1, CLIENT_MT);
    if (!c->e) {
        lua_pushliteral(L, "cxone.Client (closed)");
        return 1;
    }
    const char *id = cx_engine_config(c->e)->client_id;
    double ttl = cx_engine_token_ttl(c->e, cx_curl_now());
    if (ttl < 0)
        lua_pushfstring(L, "cxone.Client (client_id=%s, no token)", id);
    else
        lua_pushfstring(L, "cxone.Client (client_id=%s, token valid %d s)", id, (int)ttl);
    return 1;
}

/***
 * A random UUID (version 4) from the OS's CSPRNG (OpenSSL RAND_bytes): run ids and
 * Idempotency-Keys, safe across fork.
 * @function uuid
 * @treturn[1] string
 * @treturn[2] fail with code "memory" if the CSPRNG failed
 */
static int l_uuid(lua_State *L)
{
    char u[37];
    if (cx_uuid4(u) != 0) return cxone_fail(L, "memory", "the random generator failed");
    lua_pushstring(L, u);
    return 1;
}

void cxone_client_open(lua_State *L)
{
    static const luaL_Reg meth[] = {
        {"authenticate", m_authenticate},
        {"get", m_get},
        {"list_actions", m_list_actions},
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
    lua_pushcfunction(L, l_uuid);
    lua_setfield(L, -2, "uuid");
}
