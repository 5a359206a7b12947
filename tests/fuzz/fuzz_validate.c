/* libFuzzer harness: core.validate through a Lua state (plugin/validate.c). The input is JSON:
 * a payload object, or [payload, opts]. Invalid data must give a list of violations, never an
 * error (an error is allowed only for bad options: an argument error); and no violation
 * message may contain a variable's value (checked for values holding "CANARY" that appear
 * nowhere else in the input). */
#include <stdint.h>

#include "fuzz.h"

/* Checks every message of the violations table at vi against the canary values of the
 * payload at pi. */
static void check_no_value_in_messages(lua_State *L, int pi, int vi, const char *input, size_t size)
{
    lua_getfield(L, pi, "variables");
    if (lua_type(L, -1) != LUA_TTABLE) { lua_pop(L, 1); return; }
    int vars = lua_gettop(L);
    lua_pushnil(L);
    while (lua_next(L, vars)) {
        if (lua_type(L, -1) == LUA_TTABLE) {
            lua_getfield(L, -1, "value");
            size_t vl;
            const char *v = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &vl) : NULL;
            /* a canary: long enough, marked, and quoted exactly once in the input */
            if (v && vl >= 8 && memmem(v, vl, "CANARY", 6)) {
                const char *first = memmem(input, size, v, vl);
                int once = first && !memmem(first + 1, size - (size_t)(first + 1 - input), v, vl);
                for (lua_Integer i = 1; once; i++) {
                    lua_rawgeti(L, vi, i);
                    if (lua_type(L, -1) != LUA_TTABLE) { lua_pop(L, 1); break; }
                    lua_getfield(L, -1, "message");
                    size_t ml;
                    const char *m = lua_tolstring(L, -1, &ml);
                    FUZZ_CHECK(m != NULL, "violation %d has no message", (int)i);
                    FUZZ_CHECK(!memmem(m, ml, v, vl), "violation message quotes a value: %s", m);
                    lua_pop(L, 2);
                }
            }
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state();
    char err[160];
    if (!cxone_json_decode(L, (const char *)data, size, err, sizeof err) || !lua_istable(L, -1)) {
        fuzz_done(L);
        return 0;
    }
    int in = lua_gettop(L);
    int with_opts = 0;
    lua_rawgeti(L, in, 1);
    lua_rawgeti(L, in, 2);
    if (lua_istable(L, -2) && lua_istable(L, -1) && lua_rawlen(L, in) == 2) {
        with_opts = 1;
    } else {
        lua_pop(L, 2);
        lua_pushvalue(L, in);
    }
    int payload = in + 1; /* the payload, then (with_opts) the options */
    fuzz_push_core(L, "validate");
    lua_pushvalue(L, payload);
    if (with_opts) lua_pushvalue(L, payload + 1);
    int rc = lua_pcall(L, with_opts ? 2 : 1, 3, 0);
    if (rc != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        FUZZ_CHECK(with_opts, "validate raised on a payload without options: %s", m ? m : "?");
        FUZZ_CHECK(m && strstr(m, "bad argument #2"), "validate raised something other than an "
                   "argument error about its options: %s", m ? m : "?");
        fuzz_done(L);
        return 0;
    }
    int r1 = lua_gettop(L) - 2;
    if (lua_toboolean(L, r1)) {
        FUZZ_CHECK(lua_isnil(L, r1 + 1), "validate returned true and more");
    } else {
        FUZZ_CHECK(lua_isnil(L, r1), "validate returned %s", luaL_typename(L, r1));
        FUZZ_CHECK(lua_istable(L, r1 + 1), "no violations table");
        FUZZ_CHECK(lua_type(L, r1 + 2) == LUA_TSTRING && strcmp(lua_tostring(L, r1 + 2), "invalid") == 0,
                   "code is not 'invalid'");
        FUZZ_CHECK(lua_rawlen(L, r1 + 1) > 0, "invalid with no violations");
        check_no_value_in_messages(L, payload, r1 + 1, (const char *)data, size);
        /* the violations render (their __tostring) without error */
        lua_getglobal(L, "tostring");
        lua_pushvalue(L, r1 + 1);
        FUZZ_CHECK(lua_pcall(L, 1, 1, 0) == LUA_OK, "tostring(violations) raised: %s", lua_tostring(L, -1));
    }
    fuzz_done(L);
    return 0;
}
