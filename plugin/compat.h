/* One place for Lua version differences: write against 5.4, shim 5.3 and LuaJIT here. */
#ifndef CXONE_COMPAT_H
#define CXONE_COMPAT_H

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

#if LUA_VERSION_NUM < 503
#include "compat-5.3.h" /* lua-compat53-dev: luaL_setfuncs, lua_rawlen, luaL_testudata, ... */
#endif

#if LUA_VERSION_NUM < 504
/* 5.4 user values are not needed; a plain userdata is enough. */
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata((L), (sz))
#define luaL_pushfail(L) lua_pushnil(L)
#endif

#if LUA_VERSION_NUM < 503
/* LuaJIT and 5.1 have no integer subtype: integers are exact in doubles up to 2^53.
 * compat-5.3.h's lua_isinteger casts the double to lua_Integer before any range check
 * (undefined behaviour for 1e300 or NaN): ours replaces it. */
#undef lua_isinteger
#define lua_isinteger(L, i) cxone_compat_isinteger((L), (i))
static inline int cxone_compat_isinteger(lua_State *L, int i)
{
    if (lua_type(L, i) != LUA_TNUMBER) return 0;
    lua_Number n = lua_tonumber(L, i);
    /* Range check first: converting an out-of-range double to an integer is undefined. */
    if (!(n >= -9007199254740992.0 && n <= 9007199254740992.0)) return 0;
    return n == (lua_Number)(lua_Integer)n;
}
#endif

#endif
