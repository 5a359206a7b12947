/* libFuzzer harness: the JSON decoder (plugin/json.c). Any input must either decode or fail
 * with a message that does not quote it; whatever decodes must encode, and decoding that
 * encoding again must give an equal value (numbers by value, strings byte for byte). */
#include <stdint.h>

#include "fuzz.h"

/* Deep equality of the values at a and b (absolute indices). */
static int equal(lua_State *L, int a, int b, int depth)
{
    FUZZ_CHECK(depth < 200, "runaway nesting in comparison");
    int t = lua_type(L, a);
    if (t != lua_type(L, b)) return 0;
    if (t != LUA_TTABLE) return lua_rawequal(L, a, b) || (t == LUA_TNUMBER && lua_compare(L, a, b, LUA_OPEQ));
    luaL_checkstack(L, 4, "compare");
    /* every key of a is in b with an equal value, and b has no more keys than a */
    size_t na = 0, nb = 0;
    lua_pushnil(L);
    while (lua_next(L, a)) {
        na++;
        lua_pushvalue(L, -2);
        lua_rawget(L, b);
        int ok = equal(L, lua_gettop(L) - 1, lua_gettop(L), depth + 1);
        lua_pop(L, 2);
        if (!ok) { lua_pop(L, 1); return 0; }
    }
    lua_pushnil(L);
    while (lua_next(L, b)) { nb++; lua_pop(L, 1); }
    return na == nb;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L = fuzz_state();
    char err[160];
    const char *s = (const char *)data;

    int top = lua_gettop(L);
    int decoded = cxone_json_decode(L, s, size, err, sizeof err);

    /* the Lua binding: the same verdict; nil, message, "format" on failure */
    fuzz_push_core(L, "json_decode");
    lua_pushlstring(L, s, size);
    FUZZ_CHECK(lua_pcall(L, 1, 3, 0) == LUA_OK, "core.json_decode raised: %s", lua_tostring(L, -1));
    FUZZ_CHECK(decoded == !lua_isnil(L, -3), "core.json_decode disagrees with cxone_json_decode");
    FUZZ_CHECK(decoded || strcmp(lua_tostring(L, -1), "format") == 0, "failure code is not 'format'");
    lua_pop(L, 3);

    if (!decoded) {
        FUZZ_CHECK(lua_gettop(L) == top, "failed decode left %d values", lua_gettop(L) - top);
        FUZZ_CHECK(strncmp(err, "invalid JSON at byte ", 21) == 0, "unexpected message: %s", err);
        fuzz_done(L);
        return 0;
    }
    FUZZ_CHECK(lua_gettop(L) == top + 1, "decode pushed %d values", lua_gettop(L) - top);
    int v1 = lua_gettop(L);

    cxone_buf out;
    cxone_buf_init(&out);
    if (cxone_json_encode(L, v1, &out, err, sizeof err) == 0) {
        FUZZ_CHECK(!out.oom, "encode ran out of memory");
        FUZZ_CHECK(cxone_json_decode(L, out.p, out.len, err, sizeof err),
                   "our own encoding does not decode: %s", err);
        FUZZ_CHECK(equal(L, v1, lua_gettop(L), 0), "decode(encode(v)) differs from v");
    }
    /* else: NaN/infinity from a huge numeral or nesting beyond the encoder's limit: refused */
    cxone_buf_free(&out);

    fuzz_done(L);
    return 0;
}
