/* engine_lua: the Lua binding of the call engine (core.engine → cxone.Engine, cxone.Call) for
 * drivers written in Lua (nginx cosockets, HAProxy's httpclient, tests with scripted answers).
 * A driver only moves bytes and time: every policy is the engine's (plugin/engine.h).
 *
 * Lifetimes: a cxone.Engine and each of its cxone.Call hold one reference each to a shared
 * C record; the cx_engine is freed (its secrets wiped) when the last of them goes, so a call
 * collected after its engine (or the other way round) never touches freed memory. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "rand.h"

#include "answer.h"
#include "config.h"
#include "cxone.h"
#include "engine.h"

#define ENGINE_MT "cxone.Engine"
#define CALL_MT "cxone.Call"

/***
 * The call engine for drivers written in Lua.
 *
 * A driver's loop, for one call:
 *
 *     local call = engine:call("get", { action = id, env = "prod" }, now())
 *     while true do
 *         local what, x = call:next(now())
 *         if what == "done" then break end
 *         if what == "wait" then sleep(x)
 *         else -- "send" or "token": x = {method=, url=, headers=, body=, timeout=, ...}
 *             local status, headers, body = send(x)
 *             if status then call:answer(now(), status, headers, body)
 *             else call:neterr(now(), headers --[[kind]], body --[[detail]]) end
 *         end
 *     end
 *     local res, err, code = call:result()
 *
 * `now` is any monotonic clock in seconds (the same one for every entry point of an engine).
 * @section engine
 */

typedef struct {
    cx_engine *e;
    int refs;   /* the Engine userdata (while open) + each Call */
    int closed; /* the Engine was closed: no new calls, no progress */
} eng_rec;

typedef struct {
    eng_rec *eng;
} engine_ud;

typedef struct {
    eng_rec *eng;
    cx_call *c;
    int res_ref;  /* the decoded answer, once read (LUA_NOREF before) */
    int read;     /* the outcome was read once (the answer decoded or refused) */
} call_ud;

static void eng_unref(eng_rec *r)
{
    if (!r || --r->refs > 0) return;
    if (r->e) cx_engine_free(r->e);
    free(r);
}

static engine_ud *check_engine(lua_State *L, int idx)
{
    engine_ud *u = luaL_checkudata(L, idx, ENGINE_MT);
    if (!u->eng || u->eng->closed) luaL_error(L, "attempt to use a closed cxone.Engine");
    return u;
}

static call_ud *check_call(lua_State *L, int idx)
{
    call_ud *u = luaL_checkudata(L, idx, CALL_MT);
    if (!u->c) luaL_error(L, "attempt to use a closed cxone.Call");
    return u;
}

/* A call may progress only while its engine is open. */
static call_ud *check_live_call(lua_State *L, int idx)
{
    call_ud *u = check_call(L, idx);
    if (u->eng->closed) luaL_error(L, "attempt to use a cxone.Call of a closed cxone.Engine");
    return u;
}

static double wall_now(void)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (double)time(NULL);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double check_now(lua_State *L, int idx)
{
    double now = luaL_checknumber(L, idx);
    luaL_argcheck(L, isfinite(now), idx, "now must be a finite number");
    return now;
}

/* A version-4 UUID from OpenSSL's CSPRNG; 0, or -1 when it failed. */
/* ---- core.engine ---- */

/***
 * Creates a call engine. The options are `core.client`'s (base_url, token_url, client_id,
 * client_secret, access_key_id, access_key_secret, scope, basic_auth, insecure_http, retries,
 * timeout, connect_timeout, deadline, refresh_margin, backoff_base, backoff_cap,
 * retry_after_cap, user_agent) plus `rate_limit` (requests per second, 0: none; the lower of
 * it, `CXONE_MAX_RPS` and the rate learned from the server wins) and `max_concurrency` (calls in
 * flight, the ceiling that backs off when 429s arrive). No I/O: nothing is sent until a
 * driver runs a call.
 * @function engine
 * @tparam table opts
 * @treturn[1] cxone.Engine
 * @treturn[2] fail with code "config" (a missing or invalid setting) or "memory"
 * @raise when an option has the wrong Lua type
 */
static int l_engine(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 1);
    cx_config cfg;
    cxone_extra extra;
    char why[400];
    cxone_buf *scratch = cxone_buf_push(L); /* slot 2: the base URL as the engine takes it */
    /* reads and checks every option (argument errors for wrong types); strings stay
     * referenced by the options table or the scratch buffer until cx_engine_new copies them */
    if (cxone_read_config(L, 1, &cfg, &extra, scratch, why, sizeof why) != 0)
        return cxone_fail(L, "config", "%s", why);
    char ua[96];
    if (!cfg.user_agent) { /* as cxone.Client's, naming the path */
        snprintf(ua, sizeof ua, "cxone-overrides/%s (embedded)", CXONE_VERSION);
        cfg.user_agent = ua;
    }
    if (cx_seed(&cfg.seed) != 0) cfg.seed = (uint64_t)time(NULL) * 2654435761u;
    engine_ud *u = lua_newuserdatauv(L, sizeof *u, 0);
    u->eng = NULL;
    luaL_setmetatable(L, ENGINE_MT);
    eng_rec *r = calloc(1, sizeof *r);
    if (!r) return cxone_fail(L, "memory", "out of memory creating the engine");
    r->e = cx_engine_new(&cfg);
    if (!r->e) {
        free(r);
        return cxone_fail(L, "memory", "out of memory creating the engine");
    }
    r->refs = 1;
    u->eng = r;
    return 1;
}

/* ---- Engine:call ---- */

static const char *const op_names[] = {"get", "patch", "put", "build", NULL};
static const int op_codes[] = {CX_GET, CX_PATCH, CX_PUT, CX_BUILD};

/* An optional string field of the args table (raw); argument error for another type. */
static const char *arg_string(lua_State *L, int t, const char *field, size_t *len)
{
    int ty = cxone_rawfield(L, t, field);
    const char *s = NULL;
    if (ty == LUA_TSTRING) s = lua_tolstring(L, -1, len);
    else if (ty != LUA_TNIL) {
        const char *msg = lua_pushfstring(L, "'%s' must be a string, got %s", field, luaL_typename(L, -1));
        luaL_argerror(L, 3, msg);
    }
    lua_pop(L, 1); /* still referenced by the args table */
    return s;
}

/***
 * Starts a call (nothing is sent before `Call:next`).
 * @function Engine:call
 * @tparam string op "get", "patch", "put", "build", or "token" (a new token: authenticate)
 * @tparam table|nil args `action`, `env` (get, patch, put: from the payload when absent),
 *   `payload` (patch, put: a table, encoded as JSON; its masked values never appear in any
 *   message of the call), `if_match` (patch, put), `idempotency_key` (build: a new UUID when
 *   absent)
 * @tparam number now the call's start: its deadline runs from here
 * @treturn cxone.Call a call already done with code "invalid" when the data is unusable (a bad
 *   id, an unencodable payload)
 * @raise on wrong argument types
 */
static int m_call(lua_State *L)
{
    engine_ud *eu = check_engine(L, 1);
    cx_engine *e = eu->eng->e;
    const char *opname = luaL_checkstring(L, 2);
    double now = check_now(L, 4);
    if (!lua_isnoneornil(L, 3)) luaL_checktype(L, 3, LUA_TTABLE);
    else { lua_newtable(L); lua_replace(L, 3); }
    lua_settop(L, 3);
    int is_token = strcmp(opname, "token") == 0;
    int op = -1;
    for (int i = 0; op_names[i]; i++)
        if (strcmp(opname, op_names[i]) == 0) op = op_codes[i];
    if (op < 0 && !is_token)
        return luaL_argerror(L, 2, lua_pushfstring(L, "unknown operation '%s' (get, patch, put, build, token)", opname));

    cx_spec spec;
    memset(&spec, 0, sizeof spec);
    spec.op = is_token ? CX_GET : op;
    size_t al = 0, el = 0, il = 0, kl = 0;
    spec.action = arg_string(L, 3, "action", &al);
    spec.env = arg_string(L, 3, "env", &el);
    spec.if_match = arg_string(L, 3, "if_match", &il);
    spec.idempotency_key = arg_string(L, 3, "idempotency_key", &kl);
    char idem[37];
    const char *early = NULL; /* a failure before the network: (code "invalid") */
    char why[200];
    why[0] = '\0';

    int pt = cxone_rawfield(L, 3, "payload"); /* slot 4 */
    if (pt != LUA_TNIL && pt != LUA_TTABLE)
        return luaL_argerror(L, 3, lua_pushfstring(L, "'payload' must be a table, got %s", luaL_typename(L, 4)));
    if ((op == CX_PATCH || op == CX_PUT) && pt != LUA_TTABLE)
        return luaL_argerror(L, 3, "'payload' (a table) is required for patch and put");

    cxone_buf *body = cxone_buf_push(L); /* slot 5 */
    if (op == CX_PATCH || op == CX_PUT) {
        /* action and env from the payload when the args do not name them */
        if (!spec.action) {
            if (cxone_rawfield(L, 4, "actionId") == LUA_TSTRING) spec.action = lua_tolstring(L, -1, &al);
            lua_pop(L, 1);
        }
        if (!spec.env) {
            if (cxone_rawfield(L, 4, "environmentId") == LUA_TSTRING) spec.env = lua_tolstring(L, -1, &el);
            lua_pop(L, 1);
        }
        char err[160];
        if (cxone_json_encode(L, 4, body, err, sizeof err) != 0) {
            snprintf(why, sizeof why, "the payload cannot be encoded as JSON: %s", err);
            early = why;
        } else if (body->oom) {
            early = "out of memory encoding the payload";
        } else {
            spec.body = body->p;
            spec.body_len = body->len;
        }
        if (!spec.action || !spec.env) {
            snprintf(why, sizeof why, "the payload names no %s", !spec.action ? "actionId" : "environmentId");
            early = why;
        }
    }
    cxone_spec_secrets(L, pt == LUA_TTABLE ? 4 : 0, &spec); /* slot 6 */
    if (op == CX_BUILD && !spec.idempotency_key) {
        if (cx_uuid4(idem) != 0) early = "the random generator failed";
        else spec.idempotency_key = idem;
    }
    if (op == CX_GET && !is_token && (!spec.action || !spec.env))
        return luaL_argerror(L, 3, "'action' and 'env' (strings) are required for get");
    if (op == CX_BUILD && !spec.action) return luaL_argerror(L, 3, "'action' (a string) is required for build");
    if (is_token) {
        spec.op = CX_AUTH;
    }

    call_ud *cu = lua_newuserdatauv(L, sizeof *cu, 0);
    memset(cu, 0, sizeof *cu);
    cu->res_ref = LUA_NOREF;
    luaL_setmetatable(L, CALL_MT);
    /* a spec without the strings that failed to encode: the engine makes a done call */
    cx_call *c = cx_call_new(e, &spec, now);
    if (!c) return cxone_fail(L, "memory", "out of memory starting the call");
    cu->c = c;
    cu->eng = eu->eng;
    eu->eng->refs++;
    if (early && !c->done) cx_call_fail_early(e, c, "invalid", early);
    return 1;
}

/* ---- Call:next ---- */

static void set_str(lua_State *L, int t, const char *k, const char *v)
{
    lua_pushstring(L, v);
    lua_setfield(L, t, k);
}

static void set_num(lua_State *L, int t, const char *k, double v)
{
    lua_pushnumber(L, v);
    lua_setfield(L, t, k);
}

/***
 * The next step of the call.
 * @function Call:next
 * @tparam number now
 * @treturn[1] string "send": send the request (an API request)
 * @treturn[1] table `{method=, url=, headers={Name=value}, body=, timeout=, connect_timeout=,
 *   attempt=, kind="api"|"token"}`: answer with `Call:answer` or `Call:neterr`
 * @treturn[2] string "token": a token request, shaped as above (a driver sharing tokens between
 *   processes may instead `Engine:token_import` a token another one obtained, or
 *   `Engine:token_failed`, then ask `next` again)
 * @treturn[3] string "wait"
 * @treturn[3] number seconds to wait before asking again
 * @treturn[4] string "done": read `Call:result`
 */
static int m_next(lua_State *L)
{
    call_ud *u = check_live_call(L, 1);
    double now = check_now(L, 2);
    cx_request rq;
    memset(&rq, 0, sizeof rq);
    int what = cx_call_next(u->eng->e, u->c, now, &rq);
    if (what == CX_DONE) {
        lua_pushliteral(L, "done");
        return 1;
    }
    if (what == CX_WAIT) {
        double s = rq.wake - now;
        lua_pushliteral(L, "wait");
        lua_pushnumber(L, s > 0 ? s : 0);
        return 2;
    }
    lua_pushstring(L, rq.kind == CX_KIND_TOKEN ? "token" : "send");
    lua_createtable(L, 0, 9);
    int t = lua_gettop(L);
    set_str(L, t, "method", rq.method);
    set_str(L, t, "url", rq.url);
    set_str(L, t, "kind", rq.kind == CX_KIND_TOKEN ? "token" : rq.kind == CX_KIND_WEBHOOK ? "webhook" : "api");
    lua_createtable(L, 0, rq.nlines);
    for (int i = 0; i < rq.nlines; i++) {
        const char *line = rq.lines[i];
        const char *colon = line ? strchr(line, ':') : NULL;
        if (!colon) continue;
        const char *v = colon + 1;
        while (*v == ' ' || *v == '\t') v++;
        lua_pushlstring(L, line, (size_t)(colon - line));
        lua_pushstring(L, v);
        lua_rawset(L, -3);
    }
    lua_setfield(L, t, "headers");
    if (rq.body) {
        lua_pushlstring(L, rq.body, rq.body_len);
        lua_setfield(L, t, "body");
    }
    set_num(L, t, "timeout", rq.timeout);
    set_num(L, t, "connect_timeout", rq.connect_timeout);
    lua_pushinteger(L, rq.attempt);
    lua_setfield(L, t, "attempt");
    return 2;
}

/* ---- Call:answer, Call:neterr ---- */

static void feed_header(cx_call *c, lua_State *L, int k, int v, double wall)
{
    size_t nl, vl;
    const char *name = lua_tolstring(L, k, &nl);
    const char *val = lua_tolstring(L, v, &vl);
    cx_call_header(c, name, nl, val, vl, wall);
}

/***
 * The answer to the request last sent.
 * @function Call:answer
 * @tparam number now
 * @tparam integer status
 * @tparam[opt] table headers name (any case) → value, or a list of values (HAProxy's lists,
 *   indexed from 0, are read too)
 * @tparam[opt] string body the whole body (larger than `core.MAX_ANSWER`: the call fails as the
 *   engine says for an oversized answer)
 */
static int m_answer(lua_State *L)
{
    call_ud *u = check_live_call(L, 1);
    double now = check_now(L, 2);
    lua_Integer status = luaL_checkinteger(L, 3);
    luaL_argcheck(L, status >= 100 && status <= 999, 3, "an HTTP status (100-999) expected");
    if (!lua_isnoneornil(L, 4)) luaL_checktype(L, 4, LUA_TTABLE);
    size_t bl = 0;
    const char *body = luaL_optlstring(L, 5, "", &bl);
    lua_settop(L, 5);
    double wall = wall_now();
    if (lua_istable(L, 4)) {
        lua_pushnil(L);
        while (lua_next(L, 4)) { /* key -2, value -1 */
            if (lua_type(L, -2) == LUA_TSTRING) {
                if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
                    lua_pushvalue(L, -1);
                    lua_tostring(L, -1); /* a number as its text, on a copy (next needs the key) */
                    feed_header(u->c, L, -3, -1, wall);
                    lua_pop(L, 1);
                } else if (lua_type(L, -1) == LUA_TTABLE) {
                    int list = lua_gettop(L);
                    for (lua_Integer i = 0;; i++) {
                        int ty = (int)lua_rawgeti(L, list, i);
                        if (ty == LUA_TSTRING || ty == LUA_TNUMBER) {
                            lua_tostring(L, -1);
                            feed_header(u->c, L, list - 1, -1, wall);
                        } else if (i > 0) {
                            lua_pop(L, 1);
                            break;
                        }
                        lua_pop(L, 1);
                    }
                }
            }
            lua_pop(L, 1);
        }
    }
    if (bl > 0 && cx_call_body(u->c, body, bl) != 0) {
        cx_call_neterr(u->eng->e, u->c, now, CX_NE_TOO_LARGE, NULL);
        return 0;
    }
    cx_call_answer(u->eng->e, u->c, now, (long)status);
    return 0;
}

static const char *const ne_names[] = {"refused", "resolve", "tls", "timeout", "reset", "rewind",
                                       "too_large", "memory", "config", "other", NULL};
static const int ne_codes[] = {CX_NE_REFUSED, CX_NE_RESOLVE, CX_NE_TLS, CX_NE_TIMEOUT, CX_NE_RESET,
                               CX_NE_REWIND, CX_NE_TOO_LARGE, CX_NE_MEMORY, CX_NE_CONFIG, CX_NE_OTHER};

/***
 * No answer came to the request last sent.
 * @function Call:neterr
 * @tparam number now
 * @tparam string kind "refused" (no connection: the request never left), "resolve", "tls",
 *   "timeout", "reset" (the connection broke after the request may have been sent), "rewind",
 *   "too_large", "memory", "config" (the driver refused the request), "other"
 * @tparam[opt] string detail the driver's words (scrubbed of every secret before use)
 */
static int m_neterr(lua_State *L)
{
    call_ud *u = check_live_call(L, 1);
    double now = check_now(L, 2);
    int k = luaL_checkoption(L, 3, NULL, ne_names);
    const char *detail = luaL_optstring(L, 4, NULL);
    cx_call_neterr(u->eng->e, u->c, now, ne_codes[k], detail);
    return 0;
}

/* ---- Call:result, Call:meta ---- */

/* Pushes the decoded answer (or nothing, returning 0), decoding it on the first read only. */
static void read_once(lua_State *L, call_ud *u)
{
    if (u->read) return;
    u->read = 1;
    if (cxone_read_answer(L, u->eng->e, u->c)) u->res_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/***
 * The outcome of a done call.
 * @function Call:result
 * @treturn[1] table the decoded answer (build: `{build_id=...}` as the API says; token: true)
 * @treturn[1] nil
 * @treturn[1] table meta `{status=, etag=, latency_ms=, attempts=, idempotency_key=}`
 * @treturn[2] nil
 * @treturn[2] string message (never a secret)
 * @treturn[2] string code (`Call:meta` has the status and attempts)
 * @raise when the call is not done
 */
static int m_result(lua_State *L)
{
    call_ud *u = check_call(L, 1);
    if (!u->c->done) return luaL_error(L, "the call is not done (ask Call:next until it says done)");
    lua_settop(L, 1);
    read_once(L, u);
    int res = 0;
    if (u->res_ref != LUA_NOREF) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, u->res_ref);
        res = lua_gettop(L);
    }
    int top = lua_gettop(L);
    int ok = cxone_push_outcome(L, u->eng->e, u->c, res);
    /* meta, then answer nil meta | nil msg code */
    (void)ok;
    lua_remove(L, top + 1); /* the meta pushed first */
    return 3;
}

/***
 * The call's metadata so far (after "done": as `Call:result` gives it).
 * @function Call:meta
 * @treturn table `{status=, etag=, latency_ms=, attempts=, idempotency_key=}`
 */
static int m_meta(lua_State *L)
{
    call_ud *u = check_call(L, 1);
    cxone_push_meta(L, u->c);
    return 1;
}

/***
 * Whether the call is done.
 * @function Call:done
 * @treturn boolean
 */
static int m_done(lua_State *L)
{
    call_ud *u = check_call(L, 1);
    lua_pushboolean(L, u->c->done);
    return 1;
}

/***
 * Releases the call (wipes its buffers). Idempotent; also __gc and __close.
 * @function Call:close
 */
static int m_call_close(lua_State *L)
{
    call_ud *u = luaL_checkudata(L, 1, CALL_MT);
    if (u->c) {
        cx_call_free(u->eng->e, u->c);
        u->c = NULL;
    }
    if (u->res_ref != LUA_NOREF) {
        luaL_unref(L, LUA_REGISTRYINDEX, u->res_ref);
        u->res_ref = LUA_NOREF;
    }
    if (u->eng) {
        eng_unref(u->eng);
        u->eng = NULL;
    }
    return 0;
}

static int m_call_tostring(lua_State *L)
{
    call_ud *u = luaL_checkudata(L, 1, CALL_MT);
    if (!u->c) lua_pushliteral(L, "cxone.Call (closed)");
    else if (!u->c->done) lua_pushfstring(L, "cxone.Call (%d attempts)", u->c->attempts);
    else lua_pushfstring(L, "cxone.Call (done: %s)", u->c->code ? u->c->code : "ok");
    return 1;
}

/* ---- the token, shared by drivers ---- */

/***
 * The engine's token while fresh, for a driver that shares it with other processes (nginx's
 * shared dict). A secret: store it, never show it.
 * @function Engine:token
 * @tparam number now
 * @treturn[1] string token
 * @treturn[1] number seconds it may still be used (its refresh margin deducted)
 * @treturn[2] nil when none is fresh
 */
static int m_token(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    double now = check_now(L, 2), ttl = 0;
    const char *t = cx_engine_token(u->eng->e, now, &ttl);
    if (!t) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, t);
    lua_pushnumber(L, ttl);
    return 2;
}

/***
 * Uses a token another process obtained.
 * @function Engine:token_import
 * @tparam string token
 * @tparam number ttl seconds it may be used from now
 * @tparam number now
 * @treturn[1] true
 * @treturn[2] fail with code "format" (not a bearer token) or "memory"
 */
static int m_token_import(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    size_t n;
    const char *t = luaL_checklstring(L, 2, &n);
    double ttl = luaL_checknumber(L, 3);
    double now = check_now(L, 4);
    luaL_argcheck(L, isfinite(ttl) && ttl > 0, 3, "a positive number of seconds expected");
    if (cx_engine_token_import(u->eng->e, t, n, ttl, now) != 0)
        return cxone_fail(L, "format", "the shared token is not a usable bearer token");
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Another process's token request failed: calls needing a token fail with this until
 * `seconds` from now (a storm of callers does not ask again).
 * @function Engine:token_failed
 * @tparam string code
 * @tparam string message (shown as is: it must hold no secret; the other process's engine
 *   scrubbed it)
 * @tparam number seconds
 * @tparam number now
 */
static int m_token_failed(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    const char *code = luaL_checkstring(L, 2);
    const char *msg = luaL_checkstring(L, 3);
    double s = luaL_checknumber(L, 4);
    double now = check_now(L, 5);
    luaL_argcheck(L, isfinite(s) && s >= 0, 4, "a number of seconds expected");
    cx_engine_token_failed(u->eng->e, code, msg, now + s);
    return 0;
}

/***
 * The token failure in force (this engine's own, or one given by `token_failed`).
 * @function Engine:token_failure
 * @tparam number now
 * @treturn[1] string code
 * @treturn[1] string message
 * @treturn[1] number how long a failure is remembered (seconds: the `token_fail_memory` setting)
 * @treturn[2] nil when none
 */
static int m_token_failure(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    double now = check_now(L, 2);
    const char *msg = NULL;
    const char *code = cx_engine_token_failure(u->eng->e, now, &msg);
    if (!code) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushstring(L, code);
    lua_pushstring(L, msg ? msg : "");
    lua_pushnumber(L, cx_engine_config(u->eng->e)->token_fail_memory);
    return 3;
}

/***
 * A number that grows whenever the engine obtains a token by its own request (a driver that
 * shares tokens publishes it then).
 * @function Engine:token_gen
 * @treturn integer
 */
static int m_token_gen(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    lua_pushinteger(L, (lua_Integer)cx_engine_token_gen(u->eng->e));
    return 1;
}

/***
 * Forgets the token (the next call asks for a new one).
 * @function Engine:token_drop
 */
static int m_token_drop(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    cx_engine_token_drop(u->eng->e);
    return 0;
}

/***
 * Seconds left on the token, its lifetime and scope as the server gave them.
 * @function Engine:token_ttl
 * @tparam number now
 * @treturn[1] number seconds left
 * @treturn[1] number expires_in
 * @treturn[1] string|nil scope
 * @treturn[2] nil when there is no token
 */
static int m_token_ttl(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    double now = check_now(L, 2);
    double ttl = cx_engine_token_ttl(u->eng->e, now);
    if (ttl < 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_pushnumber(L, ttl);
    lua_pushnumber(L, cx_engine_token_expires_in(u->eng->e));
    const char *sc = cx_engine_token_scope(u->eng->e);
    if (sc) lua_pushstring(L, sc);
    else lua_pushnil(L);
    return 3;
}

/***
 * The key under which processes share this engine's token: a hash of the token URL, the client
 * id, the access key id and the scope (never a secret).
 * @function Engine:token_key
 * @treturn string 32 hex digits
 */
static int m_token_key(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    const cx_config *cfg = cx_engine_config(u->eng->e);
    cxone_buf b;
    cxone_buf_init(&b);
    const char *parts[] = {cfg->token_url, cfg->client_id, cfg->key_id, cfg->scope};
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) {
        cxone_buf_addstr(&b, parts[i] ? parts[i] : "");
        cxone_buf_addc(&b, '\0');
    }
    char hex[65];
    int bad = b.oom || cxone_sha256_hex(b.p, b.len, hex) != 0;
    cxone_buf_free(&b);
    if (bad) return cxone_fail(L, "memory", "out of memory hashing the token key");
    lua_pushlstring(L, hex, 32);
    return 1;
}

/* ---- introspection ---- */

/***
 * Counters since the engine was created: `Client:stats()`'s fields (connections 0: a driver
 * counts its own), among them `rate_limited` (429 answers), `paced_s` (seconds calls were held
 * back by the rate limiter), `rate` and `latency_buckets`.
 * @function Engine:stats
 * @treturn table
 */
static int m_stats(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    cxone_push_stats(L, u->eng->e, 0); /* connections: the driver's business, it adds its own */
    return 1;
}

/***
 * The request rate the engine paces itself to (requests per second: the lower of the one set
 * and the one learned from the server), for drivers that pace several processes together.
 * @function Engine:rate
 * @treturn number|nil nil when unlimited
 */
static int m_rate(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    double r = cx_pacer_rate(cx_engine_pacer(u->eng->e));
    if (!(r > 0) || !isfinite(r)) lua_pushnil(L);
    else lua_pushnumber(L, r);
    return 1;
}

/***
 * The engine's settings that are not secrets: base_url, token_url, client_id, scope, timeout,
 * connect_timeout, deadline, retries, rate_limit, max_concurrency.
 * @function Engine:settings
 * @treturn table
 */
static int m_settings(lua_State *L)
{
    engine_ud *u = check_engine(L, 1);
    const cx_config *c = cx_engine_config(u->eng->e);
    lua_createtable(L, 0, 10);
    int t = lua_gettop(L);
    set_str(L, t, "base_url", c->base_url);
    set_str(L, t, "token_url", c->token_url);
    set_str(L, t, "client_id", c->client_id);
    set_str(L, t, "scope", c->scope);
    set_num(L, t, "timeout", c->timeout);
    set_num(L, t, "connect_timeout", c->connect_timeout);
    set_num(L, t, "deadline", c->deadline);
    set_num(L, t, "token_fail_memory", c->token_fail_memory);
    lua_pushinteger(L, c->retries);
    lua_setfield(L, t, "retries");
    set_num(L, t, "rate_limit", c->rate_limit);
    lua_pushinteger(L, c->max_concurrency);
    lua_setfield(L, t, "max_concurrency");
    return 1;
}

/***
 * Closes the engine: wipes the credentials and the token once no call of it is left; calls in
 * flight can no longer progress. Idempotent; also __gc and __close.
 * @function Engine:close
 */
static int m_close(lua_State *L)
{
    engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);
    if (u->eng) {
        u->eng->closed = 1;
        if (u->eng->e) cx_engine_token_drop(u->eng->e);
        eng_unref(u->eng);
        u->eng = NULL;
    }
    return 0;
}

static int m_tostring(lua_State *L)
{
    engine_ud *u = luaL_checkudata(L, 1, ENGINE_MT);
    if (!u->eng || u->eng->closed) {
        lua_pushliteral(L, "cxone.Engine (closed)");
        return 1;
    }
    const cx_config *c = cx_engine_config(u->eng->e);
    lua_pushfstring(L, "cxone.Engine (client_id=%s, %s)", c->client_id ? c->client_id : "?",
                    c->base_url ? c->base_url : "?");
    return 1;
}

void cxone_engine_lua_open(lua_State *L)
{
    static const luaL_Reg emeth[] = {
        {"call", m_call},
        {"token", m_token},
        {"token_import", m_token_import},
        {"token_failed", m_token_failed},
        {"token_failure", m_token_failure},
        {"token_gen", m_token_gen},
        {"token_drop", m_token_drop},
        {"token_ttl", m_token_ttl},
        {"token_key", m_token_key},
        {"stats", m_stats},
        {"rate", m_rate},
        {"settings", m_settings},
        {"close", m_close},
        {NULL, NULL},
    };
    static const luaL_Reg emeta[] = {
        {"__gc", m_close},
        {"__close", m_close},
        {"__tostring", m_tostring},
        {NULL, NULL},
    };
    static const luaL_Reg cmeth[] = {
        {"next", m_next},
        {"answer", m_answer},
        {"neterr", m_neterr},
        {"result", m_result},
        {"meta", m_meta},
        {"done", m_done},
        {"close", m_call_close},
        {NULL, NULL},
    };
    static const luaL_Reg cmeta[] = {
        {"__gc", m_call_close},
        {"__close", m_call_close},
        {"__tostring", m_call_tostring},
        {NULL, NULL},
    };
    cxone_class(L, ENGINE_MT, emeta, emeth);
    cxone_class(L, CALL_MT, cmeta, cmeth);
    lua_pushcfunction(L, l_engine);
    lua_setfield(L, -2, "engine");
    lua_pushinteger(L, (lua_Integer)CX_MAX_ANSWER);
    lua_setfield(L, -2, "MAX_ANSWER");
}
