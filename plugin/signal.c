/* signal: the signals a run can be interrupted by (a flag the Lua side polls), the record written on a second one, and a monotonic clock. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cxone.h"

/* Lua cannot run in a signal handler, so the handler only counts. The Lua side polls the count
 * between requests (a transfer in flight finishes). While a batch of writes is in flight the
 * Lua side may register "last words": a complete audit line to append if a second signal comes
 * (the user wants out now), written with async-signal-safe calls only, and only if the trail
 * still has the size the line chains from (no one appended since). */

static const struct { const char *name; int signo; } SIGNALS[] = {
    {"INT", SIGINT}, {"TERM", SIGTERM}, {"HUP", SIGHUP}, {"XFSZ", SIGXFSZ}, {"PIPE", SIGPIPE}, {NULL, 0},
};

#define MAX_SAVED 8
static struct { int signo; struct sigaction old; } g_saved[MAX_SAVED];
static int g_nsaved;

static volatile sig_atomic_t g_count;  /* signals seen since arm */
static volatile sig_atomic_t g_first;  /* the first one's number */
static volatile sig_atomic_t g_words;  /* 1 while g_line/g_path/g_size may be used by the handler */
static char *g_line, *g_path, *g_note;
static size_t g_len, g_note_len;
static char *g_first_note;             /* written to stderr on the first signal (signal_arm's note) */
static size_t g_first_note_len;
static char *g_second;                 /* set: a second signal without last words writes it and exits */
static size_t g_second_len;
static off_t g_size;

static void write_all_raw(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return;
        p += w;
        n -= (size_t)w;
    }
}

/* A second signal while last words are registered: append them if the trail is as expected,
 * say so on stderr, and exit 128 + signo. Async-signal-safe calls only. */
static void last_words(int signo)
{
    int fd = open(g_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd >= 0) {
        if (flock(fd, LOCK_EX | LOCK_NB) == 0) {
            struct stat st;
            if (fstat(fd, &st) == 0 && st.st_size == g_size) {
                write_all_raw(fd, g_line, g_len);
                fdatasync(fd);
            }
            flock(fd, LOCK_UN);
        }
        close(fd);
    }
    if (g_note) write_all_raw(2, g_note, g_note_len);
    _exit(128 + signo);
}

static void on_signal(int signo)
{
    int saved = errno;
    if (g_count == 0) {
        g_first = signo;
        if (g_first_note) write_all_raw(2, g_first_note, g_first_note_len);
    }
    if (g_count < 1000) g_count++;
    if (g_count >= 2 && g_words) last_words(signo);
    if (g_count >= 2 && g_second) {
        write_all_raw(2, g_second, g_second_len);
        _exit(128 + signo);
    }
    errno = saved;
}

/* The number of the signal named by the string at idx (a list entry of argument arg). */
static int signo_of(lua_State *L, int idx, int arg)
{
    if (lua_type(L, idx) != LUA_TSTRING) return luaL_argerror(L, arg, "signal names must be strings");
    const char *name = lua_tostring(L, idx);
    if (strncmp(name, "SIG", 3) == 0) name += 3;
    for (int i = 0; SIGNALS[i].name; i++)
        if (strcmp(SIGNALS[i].name, name) == 0) return SIGNALS[i].signo;
    return luaL_argerror(L, arg, lua_pushfstring(L, "unknown signal '%s' (INT, TERM, HUP, XFSZ, PIPE)", name));
}

static const char *name_of(int signo)
{
    for (int i = 0; SIGNALS[i].name; i++)
        if (SIGNALS[i].signo == signo) return SIGNALS[i].name;
    return "?";
}

/* Installs act for signo, saving the disposition it replaces (once per signal). */
static int install(lua_State *L, int signo, const struct sigaction *act)
{
    struct sigaction old;
    if (sigaction(signo, act, &old) != 0)
        return cxone_fail(L, "system", "cannot set the handler of SIG%s: %s", name_of(signo), strerror(errno));
    for (int i = 0; i < g_nsaved; i++)
        if (g_saved[i].signo == signo) return 0;
    if (g_nsaved == MAX_SAVED) return 0; /* cannot happen: SIGNALS has fewer entries */
    g_saved[g_nsaved].signo = signo;
    g_saved[g_nsaved].old = old;
    g_nsaved++;
    return 0;
}

/***
 * Starts counting the given signals instead of dying of them (the count starts at 0).
 * @function signal_arm
 * @tparam {string,...} names e.g. `{"INT", "TERM"}`
 * @tparam[opt] table opts `restart` (default false): restart interrupted system calls; false
 *   makes a blocking read (a confirmation prompt) return at once; `ignore`: names of signals to
 *   ignore meanwhile (`{"XFSZ"}`: a write past the file size limit fails with EFBIG instead);
 *   `note`: text written to stderr when the first signal arrives (what happens now);
 *   `second`: text written to stderr when a second one arrives with no last words registered,
 *   then the process exits 128 + signo at once (for phases that write nothing)
 * @treturn[1] true
 * @treturn[2] fail code "system"
 */
static int l_signal_arm(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int restart = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        lua_getfield(L, 2, "restart");
        restart = lua_toboolean(L, -1);
        lua_pop(L, 1);
    }
    int n = (int)lua_rawlen(L, 1);
    int nums[16];
    if (n > 16) return luaL_argerror(L, 1, "too many signals");
    for (int i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        nums[i - 1] = signo_of(L, lua_gettop(L), 1);
        lua_pop(L, 1);
    }
    int ign[16], nign = 0;
    if (!lua_isnoneornil(L, 2)) {
        lua_getfield(L, 2, "ignore");
        if (!lua_isnil(L, -1)) {
            luaL_argcheck(L, lua_istable(L, -1), 2, "option 'ignore' must be a list of signal names");
            nign = (int)lua_rawlen(L, -1);
            if (nign > 16) return luaL_argerror(L, 2, "too many signals");
            for (int i = 1; i <= nign; i++) {
                lua_rawgeti(L, -1, i);
                ign[i - 1] = signo_of(L, lua_gettop(L), 2);
                lua_pop(L, 1);
            }
        }
        lua_pop(L, 1);
    }
    const char *note = NULL;
    size_t note_len = 0;
    if (!lua_isnoneornil(L, 2)) {
        lua_getfield(L, 2, "note");
        if (!lua_isnil(L, -1)) {
            luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 2, "option 'note' must be a string");
            note = lua_tolstring(L, -1, &note_len);
        }
        lua_pop(L, 1); /* the string stays reachable from opts while it is copied below */
    }
    const char *second = NULL;
    size_t second_len = 0;
    if (!lua_isnoneornil(L, 2)) {
        lua_getfield(L, 2, "second");
        if (!lua_isnil(L, -1)) {
            luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 2, "option 'second' must be a string");
            second = lua_tolstring(L, -1, &second_len);
        }
        lua_pop(L, 1);
    }
    char *copy = NULL, *copy2 = NULL;
    if (note) {
        copy = malloc(note_len ? note_len : 1);
        if (!copy) return cxone_fail(L, "memory", "out of memory");
        memcpy(copy, note, note_len);
    }
    if (second) {
        copy2 = malloc(second_len ? second_len : 1);
        if (!copy2) {
            free(copy);
            return cxone_fail(L, "memory", "out of memory");
        }
        memcpy(copy2, second, second_len);
    }
    char *old_second = g_second;
    g_second = NULL;
    g_second_len = second_len;
    g_second = copy2;
    free(old_second);
    g_count = 0;
    g_first = 0;
    char *old_note = g_first_note;
    g_first_note = NULL; /* the handler never sees a half-set note */
    g_first_note_len = note_len;
    g_first_note = copy;
    free(old_note);
    struct sigaction act;
    memset(&act, 0, sizeof act);
    act.sa_handler = on_signal;
    sigemptyset(&act.sa_mask);
    act.sa_flags = restart ? SA_RESTART : 0;
    for (int i = 0; i < n; i++)
        if (install(L, nums[i], &act) != 0) return 3;
    struct sigaction ig;
    memset(&ig, 0, sizeof ig);
    ig.sa_handler = SIG_IGN;
    sigemptyset(&ig.sa_mask);
    for (int i = 0; i < nign; i++)
        if (install(L, ign[i], &ig) != 0) return 3;
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * How many armed signals arrived since signal_arm, and the first one's name.
 * @function signal_poll
 * @treturn integer count (0: none)
 * @treturn string|nil "INT", "TERM", ...
 * @treturn integer|nil its number (the exit status is 128 + it)
 */
static int l_signal_poll(lua_State *L)
{
    int count = (int)g_count, first = (int)g_first;
    lua_pushinteger(L, count);
    if (count == 0) return 1;
    lua_pushstring(L, name_of(first));
    lua_pushinteger(L, first);
    return 3;
}

static void clear_words(void)
{
    g_words = 0;
    free(g_line);
    free(g_path);
    free(g_note);
    g_line = g_path = g_note = NULL;
    g_len = g_note_len = 0;
}

/***
 * Registers (or, without arguments, clears) the line a second signal appends to the trail at
 * `path` before exiting 128 + signo, if the file still has `size` bytes; `note` goes to stderr.
 * @function signal_last_words
 * @tparam[opt] string path
 * @tparam[opt] string line a complete record line (Audit:prepare)
 * @tparam[opt] integer size
 * @tparam[opt] string note
 * @treturn[1] true
 * @treturn[2] fail code "memory"
 */
static int l_signal_last_words(lua_State *L)
{
    clear_words();
    if (lua_isnoneornil(L, 1)) { lua_pushboolean(L, 1); return 1; }
    size_t plen, llen, nlen = 0;
    const char *path = luaL_checklstring(L, 1, &plen);
    const char *line = luaL_checklstring(L, 2, &llen);
    lua_Integer size = luaL_checkinteger(L, 3);
    const char *note = luaL_optlstring(L, 4, NULL, &nlen);
    luaL_argcheck(L, size >= 0, 3, "size must not be negative");
    g_path = malloc(plen + 1);
    g_line = malloc(llen ? llen : 1);
    g_note = note ? malloc(nlen ? nlen : 1) : NULL;
    if (!g_path || !g_line || (note && !g_note)) {
        clear_words();
        return cxone_fail(L, "memory", "out of memory");
    }
    memcpy(g_path, path, plen + 1);
    memcpy(g_line, line, llen);
    g_len = llen;
    if (note) {
        memcpy(g_note, note, nlen);
        g_note_len = nlen;
    }
    g_size = (off_t)size;
    g_words = 1;
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Puts back the dispositions signal_arm replaced, clears the last words and the count.
 * @function signal_restore
 * @treturn true
 */
static int l_signal_restore(lua_State *L)
{
    clear_words();
    for (int i = g_nsaved - 1; i >= 0; i--) sigaction(g_saved[i].signo, &g_saved[i].old, NULL);
    g_nsaved = 0;
    free(g_first_note);
    g_first_note = NULL;
    g_first_note_len = 0;
    free(g_second);
    g_second = NULL;
    g_second_len = 0;
    g_count = 0;
    g_first = 0;
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Seconds on a monotonic clock (for ages, rates and ETAs; never the time of day).
 * @function monotonic
 * @treturn number
 */
static int l_monotonic(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
    return 1;
}

void cxone_signal_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"signal_arm", l_signal_arm},
        {"signal_poll", l_signal_poll},
        {"signal_last_words", l_signal_last_words},
        {"signal_restore", l_signal_restore},
        {"monotonic", l_monotonic},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
}
