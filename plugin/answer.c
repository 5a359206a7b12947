/* answer: a finished engine call as Lua values, for every binding (answer.h). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "answer.h"

/* The masked values of a payload, for cx_spec.secrets. */
typedef struct {
    const char **p;
    size_t *n;
} masked_t;

void cxone_spec_secrets(lua_State *L, int payload, cx_spec *spec)
{
    payload = payload ? lua_absindex(L, payload) : 0;
    size_t nvars = 0;
    if (payload && lua_type(L, payload) == LUA_TTABLE) {
        if (cxone_rawfield(L, payload, "variables") == LUA_TTABLE) nvars = (size_t)lua_rawlen(L, -1);
        lua_pop(L, 1);
    }
    if (nvars > (1u << 20)) nvars = 1u << 20;
    /* one userdata: nvars pointers, then nvars lengths */
    void *mem = lua_newuserdatauv(L, (nvars + 1) * (sizeof(const char *) + sizeof(size_t)), 0);
    const char **ps = mem;
    size_t *ns = (size_t *)(ps + nvars + 1), k = 0;
    if (nvars) {
        cxone_rawfield(L, payload, "variables");
        for (size_t i = 1; i <= nvars; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i);                /* vars, entry */
            if (lua_type(L, -1) == LUA_TTABLE) {
                cxone_rawfield(L, -1, "masked");
                int masked = lua_toboolean(L, -1);
                cxone_rawfield(L, -2, "value");                 /* vars, entry, masked, value */
                if (masked && lua_type(L, -1) == LUA_TSTRING) {
                    ps[k] = lua_tolstring(L, -1, &ns[k]);      /* referenced by the payload */
                    k++;
                }
                lua_pop(L, 2);
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    spec->secrets = ps;
    spec->secret_lens = ns;
    spec->nsecrets = k;
}

void cxone_push_meta(lua_State *L, const cx_call *c)
{
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, (lua_Integer)c->status);
    lua_setfield(L, -2, "status");
    if (c->etag[0]) {
        lua_pushstring(L, c->etag);
        lua_setfield(L, -2, "etag");
    }
    lua_pushnumber(L, floor(c->latency_ms * 1000.0 + 0.5) / 1000.0);
    lua_setfield(L, -2, "latency_ms");
    lua_pushinteger(L, c->attempts);
    lua_setfield(L, -2, "attempts");
    if (c->idem[0]) {
        lua_pushstring(L, c->idem);
        lua_setfield(L, -2, "idempotency_key");
    }
}

/* Every variable's `masked`, where present, is a JSON boolean (a server answering 0 or "false"
 * must not be read as a setting). The table is on top. */
static int masked_ok(lua_State *L)
{
    int ok = 1;
    cxone_rawfield(L, -1, "variables");
    size_t n = (size_t)lua_rawlen(L, -1);
    for (size_t i = 1; i <= n && ok; i++) {
        if (lua_rawgeti(L, -1, (lua_Integer)i) == LUA_TTABLE) {
            int t = cxone_rawfield(L, -1, "masked");
            ok = t == LUA_TNIL || t == LUA_TBOOLEAN;
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return ok;
}

/* (call) -> the decoded answer, or nothing and a message string */
static int decode_answer(lua_State *L)
{
    const cx_call *c = lua_touserdata(L, 1);
    int build = c->op == CX_BUILD;
    char kind = 0, err[160];
    lua_settop(L, 1);
    if (c->op == CX_LIST) { /* {"actions": [...]} */
        if (cxone_json_decode_member(L, c->resp.p ? c->resp.p : "", c->resp.len, "actions", &kind, err,
                                     sizeof err)) {
            if (kind == '[') return 1;
            lua_pop(L, 1);
        }
        lua_pushfstring(L, "the API answered HTTP %d but not with a JSON object holding an 'actions' array",
                        (int)c->status);
        return 1;
    }
    if (cxone_json_decode_member(L, c->resp.p ? c->resp.p : "", c->resp.len,
                                 build ? "buildId" : "variables", &kind, err, sizeof err)) {
        if (kind == (build ? '"' : '[')) { /* a member means the value is an object */
            if (build || masked_ok(L)) return 1;
            lua_pushfstring(L, "the API answered HTTP %d with a variable whose 'masked' is not a "
                            "JSON boolean", (int)c->status);
            return 1;
        }
        lua_pop(L, 1);
    }
    if (build)
        lua_pushfstring(L, "the API answered HTTP %d to the build request but not with a JSON "
                        "object holding a 'buildId' string", (int)c->status);
    else
        lua_pushfstring(L, "the API answered HTTP %d but not with a JSON object holding a "
                        "'variables' array", (int)c->status);
    return 1;
}

int cxone_read_answer(lua_State *L, cx_engine *e, cx_call *c)
{
    if (!cx_call_ok(c) || c->op == CX_WEBHOOK || c->op == CX_AUTH) return 0;
    if (!lua_checkstack(L, 8)) {
        cx_call_reject(e, c, "out of memory reading the answer");
        c->code = "memory";
        return 0;
    }
    lua_pushcfunction(L, decode_answer);
    lua_pushlightuserdata(L, c);
    int rc = lua_pcall(L, 1, 1, 0);
    if (rc == LUA_OK && lua_type(L, -1) == LUA_TTABLE) return 1;
    if (rc == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
        cx_call_reject(e, c, lua_tostring(L, -1));
    } else {
        cx_call_reject(e, c, "out of memory reading the answer");
        c->code = "memory";
    }
    lua_pop(L, 1);
    return 0;
}

/* (call, engine, out) -> nothing: the quoted field of the error body, scrubbed, into out */
typedef struct {
    cx_engine *e;
    const cx_call *c;
    const char *key, *alt;
    char *out;
    size_t cap;
} field_t;

static int error_field(lua_State *L)
{
    field_t *f = lua_touserdata(L, 1);
    const cx_call *c = f->c;
    char err[64];
    lua_settop(L, 1);
    if (!c->resp.p || c->resp.len == 0) return 0;
    if (!cxone_json_decode(L, c->resp.p, c->resp.len, err, sizeof err)) return 0;
    if (lua_type(L, 2) != LUA_TTABLE) return 0;
    int t = cxone_rawfield(L, 2, f->key);
    if ((t != LUA_TSTRING || lua_rawlen(L, -1) == 0) && f->alt) { /* the same reading */
        lua_pop(L, 1);
        t = cxone_rawfield(L, 2, f->alt);
    }
    if (t != LUA_TSTRING) return 0;
    size_t n;
    const char *s = lua_tolstring(L, -1, &n);
    cx_secrets set;
    cx_secrets_init(&set);
    cx_call_secrets(f->e, c, &set);
    cx_scrub_message(&set, s, n, f->out, f->cap);
    cx_secrets_free(&set);
    return 0;
}

int cxone_push_outcome(lua_State *L, cx_engine *e, cx_call *c, int res)
{
    char msg[CX_MSG + 256];
    int tmp = 0; /* the answer read here, removed before returning */
    if (res) res = lua_absindex(L, res);
    if (!res && cx_call_ok(c) && c->op != CX_WEBHOOK && c->op != CX_AUTH && cxone_read_answer(L, e, c))
        tmp = res = lua_gettop(L);
    int ok = cx_call_ok(c);
    cxone_push_meta(L, c);
    if (ok) {
        if (res && c->op != CX_WEBHOOK && c->op != CX_AUTH) lua_pushvalue(L, res);
        else lua_pushboolean(L, 1);
        lua_pushnil(L);
        lua_pushvalue(L, -3);
    } else {
        const char *code = c->code;
        if (code) {
            snprintf(msg, sizeof msg, "%s", c->msg);
        } else { /* a final non-2xx answer: its message quotes the error body, scrubbed */
            const char *alt, *field = cx_quoted_field(c->status, c->op == CX_WEBHOOK, &alt);
            char server[240] = "";
            if (field) {
                field_t f = {e, c, field, alt, server, sizeof server};
                lua_pushcfunction(L, error_field);
                lua_pushlightuserdata(L, &f);
                if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
                    lua_pop(L, 1);
                    server[0] = '\0';
                }
            }
            code = cx_status_failure(c->status, c->attempts, c->op == CX_WEBHOOK,
                                     cx_engine_config(e)->client_id, server, msg, sizeof msg);
            cx_scrub_msg(e, c, msg, sizeof msg);
        }
        luaL_pushfail(L);
        lua_pushstring(L, msg);
        lua_pushstring(L, code);
    }
    if (tmp) lua_remove(L, tmp);
    return ok;
}

void cxone_push_stats(lua_State *L, cx_engine *e, double connections)
{
    const cx_stats *s = cx_engine_stats(e);
    lua_createtable(L, 0, 12);
#define F(name)                                 \
    lua_pushinteger(L, (lua_Integer)s->name);   \
    lua_setfield(L, -2, #name)
    F(requests);
    F(attempts);
    F(retries);
    F(token_requests);
    F(successes);
    F(failures);
    F(rate_limited);
#undef F
    lua_pushinteger(L, (lua_Integer)connections);
    lua_setfield(L, -2, "connections");
    lua_pushnumber(L, s->latency_ms_total);
    lua_setfield(L, -2, "latency_ms_total");
    lua_pushnumber(L, s->paced_s);
    lua_setfield(L, -2, "paced_s");
    lua_pushnumber(L, cx_pacer_rate(cx_engine_pacer(e)));
    lua_setfield(L, -2, "rate");
    lua_createtable(L, CX_HIST_BUCKETS, 0);
    for (int i = 0; i < CX_HIST_BUCKETS; i++) {
        lua_pushinteger(L, (lua_Integer)s->hist[i]);
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, -2, "latency_buckets");
}
