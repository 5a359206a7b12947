/* statefile: small state files shared by concurrent runs (the masked-value ledger): a lock file
 * beside the data, durable appends, and atomic replacement through a unique temp file. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cxone.h"

#define STATEFILE_MT "cxone.StateFile"
#define STATEFILE_MAX (64u << 20) /* a ledger larger than this is refused as damaged */

typedef struct {
    int lockfd;   /* -1 once closed */
    int locks;    /* lock() nesting depth */
    pid_t pid;    /* the process that opened it: a forked child must reopen */
    dev_t dev;    /* the lock file's identity, so that a child never closes a descriptor */
    ino_t ino;    /*   number that has since been reused for something else */
    char *path;
} statefile;

static int open_lock(const char *path)
{
    size_t n = strlen(path);
    char *lockpath = malloc(n + 6);
    if (!lockpath) { errno = ENOMEM; return -1; }
    memcpy(lockpath, path, n);
    memcpy(lockpath + n, ".lock", 6);
    int fd = open(lockpath, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    int e = errno;
    free(lockpath);
    errno = e;
    return fd;
}

/* Opens the lock file and remembers which file it is. */
static int open_own_lock(statefile *s)
{
    s->lockfd = open_lock(s->path);
    if (s->lockfd < 0) return -1;
    struct stat st;
    if (fstat(s->lockfd, &st) != 0) {
        int e = errno;
        close(s->lockfd);
        s->lockfd = -1;
        errno = e;
        return -1;
    }
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->pid = getpid();
    return 0;
}

/* In a forked child, closes the inherited copy of the lock descriptor, but only while that
 * number still names our lock file (the child may have reused it for something else). The
 * parent's lock is not touched: closing a copy never releases a flock held by another copy. */
static void forget_inherited(statefile *s)
{
    struct stat st;
    if (s->lockfd >= 0 && fstat(s->lockfd, &st) == 0 && st.st_dev == s->dev && st.st_ino == s->ino)
        close(s->lockfd);
    s->lockfd = -1;
    s->locks = 0;
}

static statefile *check_sf(lua_State *L, int idx)
{
    statefile *s = luaL_checkudata(L, idx, STATEFILE_MT);
    /* closed: by this process, or before a fork (its path is gone either way) */
    if (!s->path || (s->lockfd < 0 && s->pid == getpid()))
        luaL_error(L, "attempt to use a closed " STATEFILE_MT);
    return s;
}

/* The object, usable in this process: a forked child gets a lock descriptor of its own (a lock
 * held through the parent's open file would be shared with it). Returns -1 (errno set) when the
 * lock file cannot be reopened. */
static int own(statefile *s)
{
    if (s->pid == getpid()) return 0;
    forget_inherited(s);
    return open_own_lock(s);
}

static int sf_fail(lua_State *L, const statefile *s, const char *what, int e)
{
    return cxone_fail(L, "io", "%s %s: %s", what, s->path, strerror(e));
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (w == 0) { errno = EIO; return -1; }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* fsyncs the directory holding path, so that a rename in it is durable. */
static int sync_dir(const char *path)
{
    char *copy = strdup(path);
    if (!copy) { errno = ENOMEM; return -1; }
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(copy);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    errno = e;
    return rc;
}

/* Takes the lock (nested calls only count), retrying on EINTR. */
static int take_lock(statefile *s)
{
    if (s->locks > 0) { s->locks++; return 0; }
    while (flock(s->lockfd, LOCK_EX) != 0) {
        if (errno != EINTR) return -1;
    }
    s->locks = 1;
    return 0;
}

static void drop_lock(statefile *s)
{
    if (s->locks > 0 && --s->locks == 0) flock(s->lockfd, LOCK_UN);
}

/***
 * Opens a state file shared by concurrent processes. Creates `path .. ".lock"` (mode 0600,
 * never through a symbolic link); the data file itself is created on the first append.
 * @function state_open
 * @tparam string path
 * @treturn[1] cxone.StateFile
 * @treturn[2] fail code "io"
 */
static int l_state_open(lua_State *L)
{
    size_t n;
    const char *path = luaL_checklstring(L, 1, &n);
    luaL_argcheck(L, n > 0 && strlen(path) == n, 1, "path must be a non-empty string without NUL");
    statefile *s = lua_newuserdatauv(L, sizeof *s, 0);
    s->lockfd = -1;
    s->locks = 0;
    s->pid = getpid();
    s->path = NULL;
    luaL_setmetatable(L, STATEFILE_MT);
    s->path = strdup(path);
    if (!s->path) return cxone_fail(L, "memory", "out of memory opening a state file");
    if (open_own_lock(s) != 0) return cxone_fail(L, "io", "cannot open the lock file of %s: %s", path, strerror(errno));
    return 1;
}

/***
 * Takes the exclusive lock (blocking); nested calls nest.
 * @function StateFile:lock
 * @treturn[1] boolean true
 * @treturn[2] fail code "io"
 */
static int m_lock(lua_State *L)
{
    statefile *s = check_sf(L, 1);
    if (own(s) != 0) return sf_fail(L, s, "cannot reopen the lock file of", errno);
    if (take_lock(s) != 0) return sf_fail(L, s, "cannot lock", errno);
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Releases one level of the lock.
 * @function StateFile:unlock
 */
static int m_unlock(lua_State *L)
{
    statefile *s = check_sf(L, 1);
    if (s->pid == getpid()) drop_lock(s); /* a child holds no lock of its own yet */
    return 0;
}

/***
 * Reads the whole data file ("" when it does not exist yet).
 * @function StateFile:read
 * @treturn[1] string
 * @treturn[2] fail code "io"
 */
static int m_read(lua_State *L)
{
    statefile *s = check_sf(L, 1);
    if (own(s) != 0) return sf_fail(L, s, "cannot reopen the lock file of", errno);
    int fd = open(s->path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) { lua_pushliteral(L, ""); return 1; }
        return sf_fail(L, s, "cannot open", errno);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return sf_fail(L, s, "cannot stat", e);
    }
    if (!S_ISREG(st.st_mode) || (uintmax_t)st.st_size > STATEFILE_MAX) {
        close(fd);
        return cxone_fail(L, "io", "%s is not a regular file of at most %u MiB", s->path, STATEFILE_MAX >> 20);
    }
    cxone_buf *b = cxone_buf_push(L); /* GC-owned: freed even if pushing the result raises */
    char chunk[16384];
    for (;;) {
        ssize_t r = read(fd, chunk, sizeof chunk);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return sf_fail(L, s, "cannot read", e);
        }
        if (r == 0) break;
        cxone_buf_add(b, chunk, (size_t)r);
        if (b->oom || b->len > STATEFILE_MAX) break;
    }
    close(fd);
    if (b->oom) return cxone_fail(L, "memory", "out of memory reading %s", s->path);
    lua_pushlstring(L, b->p ? b->p : "", b->len);
    return 1;
}

/***
 * Appends text durably under the lock: one write, then fdatasync. A failed write is cut back,
 * so the file never keeps half a record.
 * @function StateFile:append
 * @tparam string text
 * @treturn[1] boolean true
 * @treturn[2] fail code "io" (disk full, file too large, ...)
 */
static int m_append(lua_State *L)
{
    statefile *s = check_sf(L, 1);
    size_t n;
    const char *text = luaL_checklstring(L, 2, &n);
    if (own(s) != 0) return sf_fail(L, s, "cannot reopen the lock file of", errno);
    if (take_lock(s) != 0) return sf_fail(L, s, "cannot lock", errno);
    int fd = open(s->path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
        int e = errno;
        drop_lock(s);
        return sf_fail(L, s, "cannot open", e);
    }
    struct stat st;
    int rc = fstat(fd, &st);
    int sized = rc == 0;
    if (rc == 0 && (st.st_mode & 077)) rc = fchmod(fd, 0600);
    if (rc == 0) rc = write_all(fd, text, n);
    if (rc == 0) rc = fdatasync(fd);
    int e = errno;
    /* cut back whatever part of the record made it (the reader also skips a torn final line) */
    if (rc != 0 && sized && ftruncate(fd, st.st_size) != 0) {
        /* keep the write's error: it is the one to report */
    }
    close(fd);
    drop_lock(s);
    if (rc != 0) return sf_fail(L, s, "cannot append to", e);
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Replaces the data file atomically under the lock: a unique temp file in the same directory
 * (mode 0600, created exclusively, so no link is followed), fsync, rename, fsync of the
 * directory. On failure the old file is kept and the temp file removed.
 * @function StateFile:replace
 * @tparam string text
 * @treturn[1] boolean true
 * @treturn[2] fail code "io"
 */
static int m_replace(lua_State *L)
{
    statefile *s = check_sf(L, 1);
    size_t n, plen = strlen(s->path);
    const char *text = luaL_checklstring(L, 2, &n);
    if (own(s) != 0) return sf_fail(L, s, "cannot reopen the lock file of", errno);
    char *tmp = malloc(plen + 8);
    if (!tmp) return cxone_fail(L, "memory", "out of memory replacing %s", s->path);
    memcpy(tmp, s->path, plen);
    memcpy(tmp + plen, ".XXXXXX", 8);
    if (take_lock(s) != 0) {
        int e = errno;
        free(tmp);
        return sf_fail(L, s, "cannot lock", e);
    }
    int fd = mkostemp(tmp, O_CLOEXEC); /* O_EXCL|O_CREAT, mode 0600 */
    int rc = fd < 0 ? -1 : 0;
    if (rc == 0) rc = fchmod(fd, 0600);
    if (rc == 0) rc = write_all(fd, text, n);
    if (rc == 0) rc = fsync(fd);
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && rc == 0) { rc = -1; e = errno; }
    if (rc == 0 && rename(tmp, s->path) != 0) { rc = -1; e = errno; }
    if (rc != 0 && fd >= 0) unlink(tmp);
    if (rc == 0 && sync_dir(s->path) != 0) { rc = -1; e = errno; }
    drop_lock(s);
    free(tmp);
    if (rc != 0) return sf_fail(L, s, "cannot replace", e);
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * Closes the lock file (releasing the lock); idempotent. Also __gc and __close.
 * @function StateFile:close
 * @treturn boolean true
 */
static int m_close(lua_State *L)
{
    statefile *s = luaL_checkudata(L, 1, STATEFILE_MT);
    if (s->pid != getpid()) {
        /* a copy inherited by a forked child: closing it releases nothing of the parent's */
        forget_inherited(s);
    } else if (s->lockfd >= 0) {
        /* release explicitly: a forked child's copy of the descriptor would keep the lock */
        if (s->locks > 0) flock(s->lockfd, LOCK_UN);
        close(s->lockfd);
    }
    s->pid = getpid(); /* closed here, whichever process opened it */
    s->lockfd = -1;
    s->locks = 0;
    free(s->path);
    s->path = NULL;
    lua_pushboolean(L, 1);
    return 1;
}

static int m_tostring(lua_State *L)
{
    statefile *s = luaL_checkudata(L, 1, STATEFILE_MT);
    if (s->lockfd < 0) lua_pushliteral(L, STATEFILE_MT " (closed)");
    else lua_pushfstring(L, STATEFILE_MT " (%s%s)", s->path, s->locks ? ", locked" : "");
    return 1;
}

/***
 * Whether a standard stream is a terminal (for prompts and colour), without spawning a shell.
 * @function isatty
 * @tparam integer fd 0, 1 or 2
 * @treturn boolean
 */
static int l_isatty(lua_State *L)
{
    lua_Integer fd = luaL_checkinteger(L, 1);
    luaL_argcheck(L, fd >= 0 && fd <= 2, 1, "must be 0, 1 or 2");
    lua_pushboolean(L, isatty((int)fd) == 1);
    return 1;
}

/***
 * Writes a private file atomically: a unique temp file beside it (mode 0600 whatever the umask,
 * created exclusively), fsync, rename over path, fsync of the directory. Readers see the old
 * file or the new one, never a part; a symbolic link at path is replaced, not followed.
 * @function write_private
 * @tparam string path
 * @tparam string text
 * @treturn[1] boolean true
 * @treturn[2] fail code "io"
 */
static int l_write_private(lua_State *L)
{
    size_t plen, n;
    const char *path = luaL_checklstring(L, 1, &plen);
    luaL_argcheck(L, plen > 0 && strlen(path) == plen, 1, "path must be a non-empty string without NUL");
    const char *text = luaL_checklstring(L, 2, &n);
    char *tmp = malloc(plen + 8);
    if (!tmp) return cxone_fail(L, "memory", "out of memory writing %s", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".XXXXXX", 8);
    int fd = mkostemp(tmp, O_CLOEXEC); /* O_EXCL|O_CREAT, mode 0600 */
    int rc = fd < 0 ? -1 : 0;
    if (rc == 0) rc = fchmod(fd, 0600);
    if (rc == 0) rc = write_all(fd, text, n);
    if (rc == 0) rc = fsync(fd);
    int e = errno;
    if (fd >= 0 && close(fd) != 0 && rc == 0) { rc = -1; e = errno; }
    if (rc == 0 && rename(tmp, path) != 0) { rc = -1; e = errno; }
    if (rc != 0 && fd >= 0) unlink(tmp);
    if (rc == 0 && sync_dir(path) != 0) { rc = -1; e = errno; }
    free(tmp);
    if (rc != 0) return cxone_fail(L, "io", "cannot write %s: %s", path, strerror(e));
    lua_pushboolean(L, 1);
    return 1;
}

void cxone_statefile_open(lua_State *L)
{
    static const luaL_Reg meth[] = {
        {"lock", m_lock},
        {"unlock", m_unlock},
        {"read", m_read},
        {"append", m_append},
        {"replace", m_replace},
        {"close", m_close},
        {NULL, NULL},
    };
    static const luaL_Reg metameth[] = {
        {"__gc", m_close},
        {"__close", m_close},
        {"__tostring", m_tostring},
        {NULL, NULL},
    };
    cxone_class(L, STATEFILE_MT, metameth, meth);
    lua_pushcfunction(L, l_state_open);
    lua_setfield(L, -2, "state_open");
    lua_pushcfunction(L, l_isatty);
    lua_setfield(L, -2, "isatty");
    lua_pushcfunction(L, l_write_private);
    lua_setfield(L, -2, "write_private");
}
