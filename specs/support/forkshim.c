/* forkshim: fork, wait, _exit and dup2 for specs under a Lua that Debian's lua-posix is not built for
 * (it ships 5.1-5.3 only); specs/support/fork.lua compiles it on demand into a temporary
 * directory. The same names and results as posix.unistd.fork, posix.sys.wait.wait,
 * posix.unistd._exit and posix.unistd.dup2. Test support only: not part of the module. */
#include <errno.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

static int fail(lua_State *L)
{
    int e = errno;
    lua_pushnil(L);
    lua_pushstring(L, strerror(e));
    lua_pushinteger(L, e);
    return 3;
}

static int l_fork(lua_State *L)
{
    pid_t pid = fork();
    if (pid < 0) return fail(L);
    lua_pushinteger(L, (lua_Integer)pid);
    return 1;
}

/* wait(pid) -> pid, "exited"|"killed"|"stopped", status or signal */
static int l_wait(lua_State *L)
{
    pid_t pid = (pid_t)luaL_optinteger(L, 1, -1);
    int st = 0;
    pid_t r;
    do r = waitpid(pid, &st, 0);
    while (r < 0 && errno == EINTR);
    if (r < 0) return fail(L);
    lua_pushinteger(L, (lua_Integer)r);
    if (WIFEXITED(st)) {
        lua_pushliteral(L, "exited");
        lua_pushinteger(L, WEXITSTATUS(st));
    } else if (WIFSIGNALED(st)) {
        lua_pushliteral(L, "killed");
        lua_pushinteger(L, WTERMSIG(st));
    } else {
        lua_pushliteral(L, "stopped");
        lua_pushinteger(L, WSTOPSIG(st));
    }
    return 3;
}

static int l_exit(lua_State *L)
{
    _exit((int)luaL_optinteger(L, 1, 0));
    return 0;
}

static int l_dup2(lua_State *L)
{
    int r, from = (int)luaL_checkinteger(L, 1), to = (int)luaL_checkinteger(L, 2);
    do r = dup2(from, to);
    while (r < 0 && errno == EINTR);
    if (r < 0) return fail(L);
    lua_pushinteger(L, r);
    return 1;
}

int luaopen_forkshim(lua_State *L)
{
    lua_createtable(L, 0, 4);
    lua_pushcfunction(L, l_dup2);
    lua_setfield(L, -2, "dup2");
    lua_pushcfunction(L, l_fork);
    lua_setfield(L, -2, "fork");
    lua_pushcfunction(L, l_wait);
    lua_setfield(L, -2, "wait");
    lua_pushcfunction(L, l_exit);
    lua_setfield(L, -2, "_exit");
    return 1;
}
