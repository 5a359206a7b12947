/* Shared mechanism: the failure helper, Lua-owned buffers, UTF-8, hashing, option readers,
 * and switching core dumps off. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "cxone.h"

#ifdef CXONE_CHECKS
void cxone_stack_fault(const char *file, int line, int want, int got)
{
    if (want < 0)
        fprintf(stderr, "%s:%d: lua_pop(%d) with %d value%s in the frame\n", file, line, -want, got,
                got == 1 ? "" : "s");
    else
        fprintf(stderr, "%s:%d: the stack holds %d values where %d were expected\n", file, line, got,
                want);
    abort();
}
#endif

int cxone_fail(lua_State *L, const char *code, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    luaL_pushfail(L);
    lua_pushstring(L, msg);
    lua_pushstring(L, code);
    return 3;
}

/* ---- buffers owned by Lua (the buffer itself: plugin/buf.c) ---- */

#define BUF_MT "cxone.Buffer"

static int buf_gc(lua_State *L)
{
    cxone_buf_free(luaL_checkudata(L, 1, BUF_MT));
    return 0;
}

void *cxone_newudata_gc(lua_State *L, size_t size, const char *tname, lua_CFunction gc)
{
    void *p = lua_newuserdatauv(L, size, 0);
    memset(p, 0, size);
    if (luaL_newmetatable(L, tname)) {
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return p;
}

cxone_buf *cxone_buf_push(lua_State *L)
{
    cxone_buf *b = cxone_newudata_gc(L, sizeof *b, BUF_MT, buf_gc);
    cxone_buf_init(b);
    return b;
}

/* ---- UTF-8 ---- */

int cxone_utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        unsigned int cp;
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; }
        else return 0;
        if (n - i <= need) return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) return 0;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((need == 2 && cp < 0x800) || (need == 3 && (cp < 0x10000 || cp > 0x10FFFF))
            || (cp >= 0xD800 && cp <= 0xDFFF))
            return 0;
        i += need + 1;
    }
    return 1;
}

/* ---- hashing (libcrypto) ---- */

static void to_hex(const unsigned char *d, unsigned int n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    for (unsigned int i = 0; i < n; i++) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    out[2 * n] = '\0';
}

int cxone_sha256_hex(const void *data, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32) return -1;
    to_hex(md, mdlen, out);
    return 0;
}

int cxone_hmac_sha256_hex(const void *key, size_t keylen, const void *data, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (keylen > INT32_MAX) return -1;
    if (!HMAC(EVP_sha256(), key, (int)keylen, data, n, md, &mdlen) || mdlen != 32) return -1;
    to_hex(md, mdlen, out);
    return 0;
}

/* ---- option readers ---- */

/* Raw access: an options table's metamethods are never run, so a string read here stays
 * referenced by the table after the pop (nothing can replace it behind our back). */
static int opt_field(lua_State *L, int idx, const char *field, int type, const char *tname)
{
    if (lua_isnoneornil(L, idx)) return 0;
    idx = lua_absindex(L, idx);
    if (cxone_rawfield(L, idx, field) == LUA_TNIL) { lua_pop(L, 1); return 0; }
    if (lua_type(L, -1) != type) {
        /* arguments are evaluated before the push: -1 is still the option's value */
        const char *msg = lua_pushfstring(L, "option '%s' must be %s, got %s", field, tname,
                                          luaL_typename(L, -1));
        luaL_argerror(L, idx, msg);
    }
    return 1;
}

lua_Integer cxone_opt_integer(lua_State *L, int idx, const char *field, lua_Integer def)
{
    if (!opt_field(L, idx, field, LUA_TNUMBER, "an integer")) return def;
    if (!lua_isinteger(L, -1)) {
        const char *msg = lua_pushfstring(L, "option '%s' must be an integer", field);
        luaL_argerror(L, idx, msg);
    }
    lua_Integer v = lua_tointeger(L, -1);
    lua_pop(L, 1);
    return v;
}

lua_Number cxone_opt_number(lua_State *L, int idx, const char *field, lua_Number def)
{
    if (!opt_field(L, idx, field, LUA_TNUMBER, "a number")) return def;
    lua_Number v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

int cxone_opt_boolean(lua_State *L, int idx, const char *field, int def)
{
    if (!opt_field(L, idx, field, LUA_TBOOLEAN, "a boolean")) return def;
    int v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

const char *cxone_opt_string(lua_State *L, int idx, const char *field, const char *def, size_t *len)
{
    if (!opt_field(L, idx, field, LUA_TSTRING, "a string")) {
        if (len) *len = def ? strlen(def) : 0;
        return def;
    }
    const char *s = lua_tolstring(L, -1, len);
    lua_pop(L, 1); /* still referenced by the options table */
    return s;
}

int cxone_rawfield(lua_State *L, int t, const char *field)
{
    t = lua_absindex(L, t);
    lua_pushstring(L, field);
    lua_rawget(L, t);
    return lua_type(L, -1);
}

void cxone_class(lua_State *L, const char *name, const luaL_Reg *metameth, const luaL_Reg *meth)
{
    if (luaL_newmetatable(L, name)) {
        luaL_setfuncs(L, metameth, 0);
        lua_newtable(L);
        luaL_setfuncs(L, meth, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
}

/* ---- Lua-visible helpers ---- */

/***
 * SHA-256 of a string, as lowercase hex.
 * @function sha256
 * @tparam string data
 * @treturn[1] string 64 hex digits
 * @treturn[2] fail code "memory" (libcrypto could not allocate)
 */
static int l_sha256(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char hex[65];
    if (cxone_sha256_hex(s, n, hex) != 0) return cxone_fail(L, "memory", "libcrypto: SHA-256 failed");
    lua_pushstring(L, hex);
    return 1;
}

/***
 * HMAC-SHA-256 of a string with a key, as lowercase hex (used to sign webhook bodies).
 * @function hmac_sha256
 * @tparam string key
 * @tparam string data
 * @treturn[1] string 64 hex digits
 * @treturn[2] fail code "memory" (libcrypto could not allocate)
 */
static int l_hmac_sha256(lua_State *L)
{
    size_t kn, n;
    const char *k = luaL_checklstring(L, 1, &kn);
    const char *s = luaL_checklstring(L, 2, &n);
    char hex[65];
    if (cxone_hmac_sha256_hex(k, kn, s, n, hex) != 0) return cxone_fail(L, "memory", "libcrypto: HMAC failed");
    lua_pushstring(L, hex);
    return 1;
}

/***
 * Encodes a Lua value as JSON (the encoder the client uses for request bodies).
 * @function json_encode
 * @param value
 * @treturn[1] string
 * @treturn[2] fail
 */
static int l_json_encode(lua_State *L)
{
    luaL_checkany(L, 1);
    cxone_buf b;
    char err[160];
    cxone_buf_init(&b);
    if (cxone_json_encode(L, 1, &b, err, sizeof err) != 0) {
        cxone_buf_free(&b);
        return cxone_fail(L, "invalid", "%s", err);
    }
    if (b.oom) {
        cxone_buf_free(&b);
        return cxone_fail(L, "memory", "out of memory encoding JSON");
    }
    lua_pushlstring(L, b.p ? b.p : "", b.len);
    cxone_buf_free(&b);
    return 1;
}

/***
 * Decodes JSON text (null becomes a NULL light userdata, as cjson's null).
 * @function json_decode
 * @tparam string text
 * @return[1] value
 * @treturn[2] fail
 */
static int l_json_decode(lua_State *L)
{
    size_t n;
    const char *s = luaL_checklstring(L, 1, &n);
    char err[160];
    if (!cxone_json_decode(L, s, n, err, sizeof err)) return cxone_fail(L, "format", "%s", err);
    return 1;
}

/***
 * Switches core dumps off for this process (RLIMIT_CORE 0, soft and hard, and not dumpable),
 * so that a crash cannot write the client secret, the token or masked values to disk.
 * The CLI calls it first thing.
 * @function no_core_dumps
 * @treturn[1] boolean true
 * @treturn[2] fail (code "system")
 */
static int l_no_core_dumps(lua_State *L)
{
    struct rlimit rl = {0, 0};
    if (setrlimit(RLIMIT_CORE, &rl) != 0)
        return cxone_fail(L, "system", "cannot switch core dumps off (setrlimit): %s", strerror(errno));
    if (prctl(PR_SET_DUMPABLE, 0L, 0L, 0L, 0L) != 0)
        return cxone_fail(L, "system", "cannot switch core dumps off (prctl): %s", strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Replaces this process by a program (execvp: PATH is searched when file has no slash), keeping
 * the process id, so a signal sent to the caller reaches the program itself and nothing is left
 * running behind it. `cxone sim` runs the emulator this way. Returns only on failure.
 * @function exec
 * @tparam string file the program
 * @tparam[opt] {string,...} args its arguments (argv[1], ...; argv[0] is file)
 * @treturn fail (code "system") when the program cannot be run
 */
static int l_exec(lua_State *L)
{
    const char *file = luaL_checkstring(L, 1);
    lua_Integer n = 0;
    if (!lua_isnoneornil(L, 2)) {
        luaL_checktype(L, 2, LUA_TTABLE);
        n = (lua_Integer)lua_rawlen(L, 2);
    }
    luaL_argcheck(L, n < 4096, 2, "too many arguments");
    /* the argv array lives in a userdata (collected if exec fails); its strings stay in args */
    const char **argv = lua_newuserdatauv(L, (size_t)(n + 2) * sizeof *argv, 0);
    argv[0] = file;
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 2, i); /* args[i] on top */
        if (lua_type(L, -1) != LUA_TSTRING)
            return luaL_argerror(L, 2, "arguments must be strings");
        argv[i] = lua_tostring(L, -1);
        lua_pop(L, 1);
    }
    argv[n + 1] = NULL;
    fflush(NULL);
    execvp(file, (char *const *)argv);
    return cxone_fail(L, "system", "cannot run %s: %s", file, strerror(errno));
}

/***
 * Who owns a file and who may write it, for refusing configuration files others could edit.
 * @function file_owner
 * @tparam string path
 * @treturn[1] table `{uid=, mode=, self=}`: the owner, the permission bits, this process's uid
 * @treturn[2] fail (code "io")
 */
static int l_file_owner(lua_State *L)
{
    const char *path = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(path, &st) != 0) return cxone_fail(L, "io", "cannot read %s: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return cxone_fail(L, "io", "%s is not a regular file", path);
    lua_createtable(L, 0, 3);
    lua_pushinteger(L, (lua_Integer)st.st_uid);
    lua_setfield(L, -2, "uid");
    lua_pushinteger(L, (lua_Integer)(st.st_mode & 07777));
    lua_setfield(L, -2, "mode");
    lua_pushinteger(L, (lua_Integer)geteuid());
    lua_setfield(L, -2, "self");
    return 1;
}

#define CAPTURE_MAX 65536

/***
 * Runs a program without a shell (execvp: PATH searched when the name has no slash), stdin and
 * stderr on /dev/null, and returns what it wrote on stdout (at most 64 KiB): how a secret
 * manager's CLI hands over a secret. The output is never echoed; a program still running after
 * `timeout` seconds is killed.
 * @function capture
 * @tparam {string,...} argv the program and its arguments
 * @tparam[opt] number timeout seconds (default 30)
 * @treturn[1] string its stdout
 * @treturn[2] fail (code "config": it could not run, failed, was killed or said too much)
 */
static int l_capture(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    luaL_argcheck(L, n >= 1 && n < 256, 1, "a list of 1 to 255 strings expected");
    double timeout = luaL_optnumber(L, 2, 30);
    luaL_argcheck(L, timeout > 0 && timeout <= 3600, 2, "a timeout in (0, 3600] seconds expected");
    const char **argv = lua_newuserdatauv(L, (size_t)(n + 1) * sizeof *argv, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        if (lua_type(L, -1) != LUA_TSTRING) return luaL_argerror(L, 1, "arguments must be strings");
        argv[i - 1] = lua_tostring(L, -1); /* still referenced by the table */
        lua_pop(L, 1);
    }
    argv[n] = NULL;
    char *out = lua_newuserdatauv(L, CAPTURE_MAX + 1, 0); /* collected, never leaked */
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        return cxone_fail(L, "system", "cannot run %s: pipe: %s", argv[0], strerror(errno));
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(fds[0]);
        close(fds[1]);
        return cxone_fail(L, "system", "cannot run %s: fork: %s", argv[0], strerror(e));
    }
    if (pid == 0) {
        int null = open("/dev/null", O_RDWR);
        if (null < 0 || dup2(null, 0) < 0 || dup2(fds[1], 1) < 0 || dup2(null, 2) < 0) _exit(126);
        execvp(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    size_t len = 0;
    int too_much = 0, timed_out = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        struct timespec t1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double left = timeout - ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
        if (left <= 0) { timed_out = 1; break; }
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int pr = poll(&pfd, 1, (int)(left * 1000) + 1);
        if (pr < 0 && errno == EINTR) continue;
        if (pr <= 0) continue;
        char tmp[4096];
        ssize_t r = read(fds[0], tmp, sizeof tmp);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        if (len + (size_t)r > CAPTURE_MAX) { too_much = 1; break; }
        memcpy(out + len, tmp, (size_t)r);
        OPENSSL_cleanse(tmp, sizeof tmp);
        len += (size_t)r;
    }
    close(fds[0]);
    if (timed_out || too_much) kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    if (timed_out || too_much || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        OPENSSL_cleanse(out, len);
        if (timed_out) return cxone_fail(L, "config", "%s did not finish within %g s", argv[0], timeout);
        if (too_much) return cxone_fail(L, "config", "%s wrote more than %d bytes", argv[0], CAPTURE_MAX);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 127)
            return cxone_fail(L, "config", "cannot run %s (not found or not executable)", argv[0]);
        if (WIFEXITED(status))
            return cxone_fail(L, "config", "%s failed (exit status %d)", argv[0], WEXITSTATUS(status));
        return cxone_fail(L, "config", "%s was killed by signal %d", argv[0], WTERMSIG(status));
    }
    lua_pushlstring(L, out, len);
    OPENSSL_cleanse(out, len);
    return 1;
}

void cxone_util_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"no_core_dumps", l_no_core_dumps},
        {"exec", l_exec},
        {"file_owner", l_file_owner},
        {"capture", l_capture},
        {"sha256", l_sha256},
        {"hmac_sha256", l_hmac_sha256},
        {"json_encode", l_json_encode},
        {"json_decode", l_json_decode},
        {NULL, NULL},
    };
    luaL_setfuncs(L, fns, 0);
    lua_pushlightuserdata(L, NULL);
    lua_setfield(L, -2, "null");
}
