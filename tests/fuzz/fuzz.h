/* Shared by the libFuzzer harnesses: one Lua state per process with cxone.core loaded, and a
 * check that stops the run (a finding) when an invariant breaks. */
#ifndef CXONE_FUZZ_H
#define CXONE_FUZZ_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cxone.h"

int luaopen_cxone_core(lua_State *L);

/* Aborts with a message: libFuzzer saves the input as a crash artifact. */
#define FUZZ_CHECK(cond, ...)                                                   \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "fuzz invariant broken (%s:%d): ", __FILE__, __LINE__); \
            fprintf(stderr, __VA_ARGS__);                                       \
            fputc('\n', stderr);                                                \
            abort();                                                            \
        }                                                                       \
    } while (0)

/* The process-wide state; the module table is kept in the registry as "fuzz.core". */
static lua_State *fuzz_state(void)
{
    static lua_State *L;
    if (L) return L;
    L = luaL_newstate();
    FUZZ_CHECK(L != NULL, "luaL_newstate failed");
    luaL_openlibs(L);
    luaL_requiref(L, "cxone.core", luaopen_cxone_core, 0);
    lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.core");
    return L;
}

/* Pushes core[name] (a function). */
static void fuzz_push_core(lua_State *L, const char *name)
{
    lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.core");
    lua_getfield(L, -1, name);
    lua_remove(L, -2);
    FUZZ_CHECK(lua_type(L, -1) == LUA_TFUNCTION, "core.%s is not a function", name);
}

/* Ends one input: empties the stack and collects everything, so that every input frees what
 * it allocated (libFuzzer then runs LeakSanitizer only when C code really kept memory; a
 * growing Lua heap would make it scan after most inputs) and freed memory is reused early. */
static void fuzz_done(lua_State *L)
{
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT, 0);
}

#endif
