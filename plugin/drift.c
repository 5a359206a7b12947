/* drift: compares two variable lists completely, without ever exposing a masked value. */
#include <stdlib.h>
#include <string.h>

#include "cxone.h"

#define REDACTED "***"

typedef struct {
    const char *name, *value;
    size_t nlen, vlen;
    int masked;
    int side; /* 0 baseline, 1 target */
} var;

static int cmp_var(const void *a, const void *b)
{
    const var *x = a, *y = b;
    size_t n = x->nlen < y->nlen ? x->nlen : y->nlen;
    int c = memcmp(x->name, y->name, n);
    if (c) return c;
    if (x->nlen != y->nlen) return x->nlen < y->nlen ? -1 : 1;
    return x->side - y->side;
}

/* Reads the list at idx into vars[*n...]; returns NULL or an error message (pushed nothing).
 * Entries are read raw, and every string kept is also stored in the anchor table, so the
 * pointers stay valid whatever happens to the caller's tables afterwards. */
static const char *collect(lua_State *L, int idx, int anchor, int side, const char *what, var *vars,
                           size_t *n, char *err, size_t errlen)
{
    lua_Integer len = (lua_Integer)lua_rawlen(L, idx);
    for (lua_Integer i = 1; i <= len; i++) {
        lua_rawgeti(L, idx, i);
        int e = lua_gettop(L);
        if (!lua_istable(L, e)) {
            lua_pop(L, 1);
            snprintf(err, errlen, "%s[%lld] is not a table", what, (long long)i);
            return err;
        }
        var *v = &vars[*n];
        v->side = side;
        cxone_rawfield(L, e, "name");
        v->name = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &v->nlen) : NULL;
        if (v->name) lua_rawseti(L, anchor, (lua_Integer)(2 * *n + 1));
        else lua_pop(L, 1);
        int vt = cxone_rawfield(L, e, "value");
        v->value = vt == LUA_TSTRING ? lua_tolstring(L, -1, &v->vlen) : NULL;
        if (v->value) lua_rawseti(L, anchor, (lua_Integer)(2 * *n + 2));
        else lua_pop(L, 1);
        int mt = cxone_rawfield(L, e, "masked");
        v->masked = lua_toboolean(L, -1);
        lua_pop(L, 2); /* masked, entry */
        (*n)++;
        if (!v->name) {
            snprintf(err, errlen, "%s[%lld] has no string name", what, (long long)i);
            return err;
        }
        if (!v->value && vt != LUA_TNIL) {
            snprintf(err, errlen, "%s[%lld].value is not a string", what, (long long)i);
            return err;
        }
        if (mt != LUA_TNIL && mt != LUA_TBOOLEAN) {
            snprintf(err, errlen, "%s[%lld].masked is not a boolean", what, (long long)i);
            return err;
        }
    }
    return NULL;
}

static int is_redacted(const var *v)
{
    return v->value && v->vlen == 3 && memcmp(v->value, REDACTED, 3) == 0;
}

/* Pushes a value as shown in a drift item: masked ones always as ***. */
static void push_shown(lua_State *L, const var *v)
{
    if (v->masked) lua_pushliteral(L, REDACTED);
    else if (v->value) lua_pushlstring(L, v->value, v->vlen);
    else lua_pushnil(L);
}

static void push_item(lua_State *L, int list, lua_Integer *k, const char *type, const var *b, const var *t)
{
    const var *named = b ? b : t;
    lua_createtable(L, 0, 6);
    lua_pushlstring(L, named->name, named->nlen);
    lua_setfield(L, -2, "variable");
    lua_pushstring(L, type);
    lua_setfield(L, -2, "drift_type");
    if (b) {
        push_shown(L, b);
        lua_setfield(L, -2, "baseline");
        lua_pushboolean(L, b->masked);
        lua_setfield(L, -2, "baseline_masked");
    }
    if (t) {
        push_shown(L, t);
        lua_setfield(L, -2, "target");
        lua_pushboolean(L, t->masked);
        lua_setfield(L, -2, "target_masked");
    }
    lua_rawseti(L, list, ++*k);
}

/***
 * Compares a baseline variable list with a target list (as the API returns them, or a desired
 * list) and returns every difference, sorted by name: `{variable, drift_type, baseline, target,
 * baseline_masked, target_masked}` with drift_type `value_mismatch`, `masked_mismatch`,
 * `new_variable` (only in target), `missing_variable` (only in baseline) or `unverifiable` (a
 * masked value came back redacted, so equality cannot be known). Masked values show as `***`.
 * @function drift
 * @tparam table baseline list of `{name, value, masked}`
 * @tparam table target list of `{name, value, masked}`
 * @treturn[1] table the items (empty when there is no drift)
 * @treturn[2] fail a malformed list (code "invalid")
 */
static int l_drift(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    size_t nb = (size_t)lua_rawlen(L, 1), nt = (size_t)lua_rawlen(L, 2), n = 0;
    char err[160];
    if (nb > (1u << 24) || nt > (1u << 24)) return cxone_fail(L, "invalid", "variable lists too long");
    /* GC-owned scratch: an error raised below cannot leak it. */
    var *vars = lua_newuserdatauv(L, (nb + nt + 1) * sizeof(var), 0);
    lua_createtable(L, (int)(2 * (nb + nt)), 0); /* slot 4: anchors the strings in vars */
    if (collect(L, 1, 4, 0, "baseline", vars, &n, err, sizeof err)
        || collect(L, 2, 4, 1, "target", vars, &n, err, sizeof err))
        return cxone_fail(L, "invalid", "%s", err);
    qsort(vars, n, sizeof(var), cmp_var);

    for (size_t i = 1; i < n; i++)
        if (vars[i].side == vars[i - 1].side && vars[i].nlen == vars[i - 1].nlen
            && memcmp(vars[i].name, vars[i - 1].name, vars[i].nlen) == 0)
            return cxone_fail(L, "invalid", "%s lists variable %.*s twice",
                              vars[i].side ? "target" : "baseline",
                              (int)(vars[i].nlen > 128 ? 128 : vars[i].nlen), vars[i].name);

    lua_newtable(L);
    int list = lua_gettop(L);
    lua_Integer k = 0;
    for (size_t i = 0; i < n; i++) {
        const var *a = &vars[i];
        const var *b = i + 1 < n ? &vars[i + 1] : NULL;
        if (b && a->nlen == b->nlen && memcmp(a->name, b->name, a->nlen) == 0) {
            /* present on both sides: a is the baseline, b the target */
            i++;
            if (a->masked != b->masked) {
                push_item(L, list, &k, "masked_mismatch", a, b);
            } else if (a->masked) {
                if (is_redacted(a) || is_redacted(b) || !a->value || !b->value)
                    push_item(L, list, &k, "unverifiable", a, b);
                else if (a->vlen != b->vlen || memcmp(a->value, b->value, a->vlen) != 0)
                    push_item(L, list, &k, "value_mismatch", a, b);
            } else if ((a->value == NULL) != (b->value == NULL)
                       || (a->value && (a->vlen != b->vlen || memcmp(a->value, b->value, a->vlen) != 0))) {
                push_item(L, list, &k, "value_mismatch", a, b);
            }
        } else if (a->side == 0) {
            push_item(L, list, &k, "missing_variable", a, NULL);
        } else {
            push_item(L, list, &k, "new_variable", NULL, a);
        }
    }
    return 1;
}

void cxone_drift_open(lua_State *L)
{
    lua_pushcfunction(L, l_drift);
    lua_setfield(L, -2, "drift");
}
