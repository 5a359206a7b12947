/* audit: the append-only, hash-chained JSONL trail, shared safely by several processes, and its verifier. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cxone.h"

#define AUDIT_MT "cxone.Audit"
#define GENESIS "0000000000000000000000000000000000000000000000000000000000000000"
#define HASH_MARK ",\"hash\":\""  /* 9 bytes */
#define PREV_MARK "\"prev\":\""   /* 8 bytes */
#define TAIL_WINDOW (64 * 1024)
#define TAIL_MAX (1024 * 1024)

enum { SYNC_NONE, SYNC_CLOSE, SYNC_ALWAYS };

typedef struct {
    int fd;           /* -1 once closed */
    char *path;
    int sync;
    int dirty;        /* written since the last fsync */
    /* The chain head as of our last write; trusted while the file is the same and no other
     * process has appended (same inode and size), which saves re-reading the tail. */
    int cached;
    dev_t dev;
    ino_t ino;
    off_t size;
    unsigned long long seq;
    char hash[65];
    /* What open found: a torn last line (a writer killed mid-write) */
    off_t torn_offset;
    size_t torn_bytes;
} audit;

/* ---- record parsing (shared by append's tail scan and verify) ---- */

typedef struct {
    unsigned long long seq;
    char prev[65], hash[65];
    size_t prefix_len; /* bytes covered by the hash */
} parsed;

static int is_hex64(const char *s)
{
    for (int i = 0; i < 64; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

/* Structural parse of one line (without its newline); 1 if it has the shape of a record. */
static int parse_record(const char *line, size_t len, parsed *r)
{
    static const char head[] = "{\"seq\":";
    const size_t hl = sizeof head - 1, tail = 9 + 64 + 2; /* ,"hash":" hex "} */
    if (len < hl + 1 + tail + 8 + 64 + 1 || memcmp(line, head, hl) != 0) return 0;
    size_t i = hl;
    unsigned long long seq = 0;
    if (line[i] < '1' || line[i] > '9') return 0;
    while (i < len && line[i] >= '0' && line[i] <= '9') {
        if (seq > 1844674407370955160ULL) return 0;
        seq = seq * 10 + (unsigned)(line[i++] - '0');
    }
    if (i >= len || line[i] != ',') return 0;
    if (memcmp(line + len - 2, "\"}", 2) != 0) return 0;
    const char *hash = line + len - 2 - 64;
    const char *mark = hash - 9;
    if (memcmp(mark, HASH_MARK, 9) != 0 || !is_hex64(hash)) return 0;
    size_t plen = (size_t)(mark - line);
    /* prefix ends with "prev":"<64 hex>" */
    if (plen < 8 + 64 + 1 || line[plen - 1] != '"') return 0;
    const char *prev = line + plen - 1 - 64;
    if (memcmp(prev - 8, PREV_MARK, 8) != 0 || !is_hex64(prev)) return 0;
    r->seq = seq;
    memcpy(r->prev, prev, 64);
    r->prev[64] = '\0';
    memcpy(r->hash, hash, 64);
    r->hash[64] = '\0';
    r->prefix_len = plen;
    return 1;
}

/* Does the record's hash match its content? */
static int record_hash_ok(const char *line, const parsed *r)
{
    char hex[65];
    if (cxone_sha256_hex(line, r->prefix_len, hex) != 0) return 0;
    return memcmp(hex, r->hash, 64) == 0;
}

/* ---- the chain head: the last intact record of the file ---- */

typedef struct {
    unsigned long long seq;
    char hash[65];
    int found;          /* an intact record was found (else: empty or no record yet) */
    size_t torn_bytes;  /* bytes after the last newline (a torn last line) */
} head;

/* Scans backwards from the end of fd (size bytes) for the last intact record.
 * Returns 0, or -1 with errno (EBADMSG: no intact record within TAIL_MAX bytes). */
static int read_head(int fd, off_t size, head *h)
{
    h->found = 0;
    h->seq = 0;
    memcpy(h->hash, GENESIS, 65);
    h->torn_bytes = 0;
    if (size == 0) return 0;
    size_t window = size < TAIL_WINDOW ? (size_t)size : TAIL_WINDOW;
    for (;;) {
        char *buf = malloc(window);
        if (!buf) { errno = ENOMEM; return -1; }
        off_t start = size - (off_t)window;
        size_t got = 0;
        while (got < window) {
            ssize_t n = pread(fd, buf + got, window - got, start + (off_t)got);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) { int e = n < 0 ? errno : EIO; free(buf); errno = e; return -1; }
            got += (size_t)n;
        }
        size_t end = window;
        if (buf[window - 1] != '\n') {
            char *nl = memrchr(buf, '\n', window);
            size_t frag = nl ? window - (size_t)(nl - buf) - 1 : window;
            h->torn_bytes = (start == 0 || nl) ? frag : 0;
            end = nl ? (size_t)(nl - buf) + 1 : 0;
        }
        /* walk complete lines backwards; the first may be partial unless the window starts at 0 */
        while (end > 0) {
            size_t line_end = end - 1; /* index of its '\n' */
            char *nl = line_end ? memrchr(buf, '\n', line_end) : NULL;
            size_t line_start = nl ? (size_t)(nl - buf) + 1 : 0;
            if (!nl && start != 0) break; /* partial first line: widen the window */
            parsed r;
            if (parse_record(buf + line_start, line_end - line_start, &r)
                && record_hash_ok(buf + line_start, &r)) {
                h->found = 1;
                h->seq = r.seq;
                memcpy(h->hash, r.hash, 65);
                free(buf);
                return 0;
            }
            end = line_start;
        }
        free(buf);
        if (start == 0) return 0; /* no intact record at all: chain from genesis */
        if (window >= TAIL_MAX) { errno = EBADMSG; return -1; }
        window = window * 4 > TAIL_MAX ? TAIL_MAX : window * 4;
        if ((off_t)window > size) window = (size_t)size;
    }
}

/* ---- the object ---- */

static audit *check_audit(lua_State *L, int idx)
{
    audit *a = luaL_checkudata(L, idx, AUDIT_MT);
    if (a->fd < 0) luaL_error(L, "attempt to use a closed " AUDIT_MT);
    return a;
}

static int open_fd(const char *path)
{
    int fd;
    do fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    while (fd < 0 && errno == EINTR);
    return fd;
}

static int lock_fd(int fd, int op)
{
    int rc;
    do rc = flock(fd, op);
    while (rc < 0 && errno == EINTR);
    return rc;
}

static int audit_close_fd(audit *a)
{
    int rc = 0;
    if (a->fd >= 0) {
        if (a->dirty && a->sync != SYNC_NONE && fsync(a->fd) != 0) rc = -1;
        if (close(a->fd) != 0) rc = -1;
        a->fd = -1;
        a->dirty = 0;
    }
    return rc;
}

/***
 * Opens (creating it if needed) an audit trail for appending.
 * Several processes may hold the same file open: each record is one write() on an
 * O_APPEND descriptor under an exclusive flock, so lines never tear or interleave.
 * @function audit_open
 * @tparam string path
 * @tparam[opt] table opts `sync`: "close" (default: fsync when closed), "always" (fdatasync
 *   after every record) or "none"
 * @treturn[1] cxone.Audit
 * @treturn[2] fail code "io"
 */
static int l_audit_open(lua_State *L)
{
    size_t plen;
    luaL_checktype(L, 1, LUA_TSTRING);
    const char *path = lua_tolstring(L, 1, &plen);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    const char *sync = cxone_opt_string(L, 2, "sync", "close", NULL);
    int mode;
    if (strcmp(sync, "close") == 0) mode = SYNC_CLOSE;
    else if (strcmp(sync, "always") == 0) mode = SYNC_ALWAYS;
    else if (strcmp(sync, "none") == 0) mode = SYNC_NONE;
    else return luaL_argerror(L, 2, "option 'sync' must be \"close\", \"always\" or \"none\"");
    luaL_argcheck(L, plen > 0 && strlen(path) == plen, 1, "path must be a non-empty string without NUL");

    /* userdata first, resources after: an error in between cannot leak */
    audit *a = lua_newuserdatauv(L, sizeof *a, 0);
    memset(a, 0, sizeof *a);
    a->fd = -1;
    luaL_setmetatable(L, AUDIT_MT);
    a->path = strdup(path);
    if (!a->path) return cxone_fail(L, "io", "out of memory");
    a->sync = mode;
    a->fd = open_fd(path);
    if (a->fd < 0) return cxone_fail(L, "io", "cannot open audit trail %s: %s", path, strerror(errno));

    struct stat st;
    head h;
    if (lock_fd(a->fd, LOCK_SH) != 0 || fstat(a->fd, &st) != 0 || read_head(a->fd, st.st_size, &h) != 0) {
        int e = errno;
        audit_close_fd(a);
        return cxone_fail(L, "io", "cannot read audit trail %s: %s", path,
                          e == EBADMSG ? "no intact record in its last 1 MiB (run cxone audit verify)" : strerror(e));
    }
    lock_fd(a->fd, LOCK_UN);
    if (h.torn_bytes) {
        a->torn_offset = st.st_size - (off_t)h.torn_bytes;
        a->torn_bytes = h.torn_bytes;
    }
    return 1;
}

/* ---- serialising a record: known fields only, never a value or a secret ---- */

enum { F_STRING, F_INTEGER, F_NUMBER, F_BOOLEAN, F_NAMES };
static const struct { const char *name; int type; } FIELDS[] = {
    {"event", F_STRING}, {"run_id", F_STRING}, {"action_id", F_STRING}, {"environment", F_STRING},
    {"tier", F_STRING}, {"variables", F_NAMES}, {"drift_count", F_INTEGER}, {"changes", F_INTEGER},
    {"latency_ms", F_NUMBER}, {"attempts", F_INTEGER}, {"status", F_STRING}, {"error", F_STRING},
    {"code", F_STRING}, {"build_id", F_STRING}, {"etag", F_STRING}, {"dry_run", F_BOOLEAN},
    {"user", F_STRING}, {"steps", F_INTEGER}, {"plan", F_STRING}, {"build_status", F_STRING},
    {"build_code", F_STRING}, {"reconciled", F_BOOLEAN}, {"head", F_STRING}, {"message", F_STRING},
    {"applied", F_INTEGER}, {"failed", F_INTEGER}, {NULL, 0},
};

static int field_index(const char *k)
{
    for (int i = 0; FIELDS[i].name; i++)
        if (strcmp(FIELDS[i].name, k) == 0) return i;
    return -1;
}

/* Appends ,"field":value for every known field present (in FIELDS order). Raises argument
 * errors for unknown keys or wrong types, so it runs before any resource is taken. */
static void serialise(lua_State *L, int rec, cxone_buf *b)
{
    lua_pushnil(L);
    while (lua_next(L, rec)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING || field_index(lua_tostring(L, -1)) < 0) {
            lua_pushfstring(L, "unknown audit field '%s' (records hold names and outcomes, never values)",
                            lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : luaL_typename(L, -1));
            luaL_argerror(L, rec, lua_tostring(L, -1));
        }
    }
    lua_getfield(L, rec, "event");
    if (lua_type(L, -1) != LUA_TSTRING) luaL_argerror(L, rec, "field 'event' (a string) is required");
    lua_pop(L, 1);

    for (int i = 0; FIELDS[i].name; i++) {
        lua_getfield(L, rec, FIELDS[i].name);
        int t = lua_type(L, -1);
        if (t == LUA_TNIL) { lua_pop(L, 1); continue; }
        static const char *const tnames[] = {"a string", "an integer", "a number", "a boolean",
                                             "a list of names"};
        int ok = (FIELDS[i].type == F_STRING && t == LUA_TSTRING)
                 || (FIELDS[i].type == F_INTEGER && t == LUA_TNUMBER && lua_isinteger(L, -1))
                 || (FIELDS[i].type == F_NUMBER && t == LUA_TNUMBER)
                 || (FIELDS[i].type == F_BOOLEAN && t == LUA_TBOOLEAN)
                 || (FIELDS[i].type == F_NAMES && t == LUA_TTABLE);
        if (!ok) {
            lua_pushfstring(L, "field '%s' must be %s", FIELDS[i].name, tnames[FIELDS[i].type]);
            luaL_argerror(L, rec, lua_tostring(L, -1));
        }
        cxone_buf_addc(b, ',');
        cxone_json_quote(b, FIELDS[i].name, strlen(FIELDS[i].name));
        cxone_buf_addc(b, ':');
        if (FIELDS[i].type == F_NAMES) {
            /* names only: a list of strings, or of {name = ...} entries whose values we drop */
            lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
            cxone_buf_addc(b, '[');
            for (lua_Integer k = 1; k <= n; k++) {
                lua_rawgeti(L, -1, k);
                if (lua_istable(L, -1)) {
                    lua_getfield(L, -1, "name");
                    lua_remove(L, -2);
                }
                if (lua_type(L, -1) != LUA_TSTRING)
                    luaL_argerror(L, rec, "field 'variables' must list names (strings or {name=...})");
                size_t nl;
                const char *nm = lua_tolstring(L, -1, &nl);
                if (k > 1) cxone_buf_addc(b, ',');
                cxone_json_quote(b, nm, nl);
                lua_pop(L, 1);
            }
            cxone_buf_addc(b, ']');
        } else {
            char err[128];
            if (cxone_json_encode(L, -1, b, err, sizeof err) != 0) luaL_argerror(L, rec, err);
        }
        lua_pop(L, 1);
    }
}

static void timestamp(char out[32])
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03ldZ", ts.tv_nsec / 1000000L);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* If the path no longer names our file (renamed away by rotation, or deleted), switch to a
 * new file at the path; its first record chains from our file's last one (*carry). */
static int follow_rotation(audit *a, head *carry, int *rotated)
{
    struct stat pst, fst;
    *rotated = 0;
    if (fstat(a->fd, &fst) != 0) return -1;
    if (stat(a->path, &pst) == 0 && pst.st_dev == fst.st_dev && pst.st_ino == fst.st_ino) return 0;
    if (lock_fd(a->fd, LOCK_SH) != 0) return -1;
    int rc = read_head(a->fd, fst.st_size, carry);
    lock_fd(a->fd, LOCK_UN);
    if (rc != 0) return -1;
    int fd = open_fd(a->path);
    if (fd < 0) return -1;
    if (a->dirty && a->sync != SYNC_NONE) fsync(a->fd);
    close(a->fd);
    a->fd = fd;
    a->dirty = 0;
    a->cached = 0;
    *rotated = 1;
    return 0;
}

static int fail_errno(lua_State *L, const audit *a, const char *what, int e)
{
    return cxone_fail(L, "io", "audit trail %s: %s: %s", a->path, what,
                      e == EBADMSG ? "no intact record in its last 1 MiB (run cxone audit verify)" : strerror(e));
}

/***
 * Appends one record and returns its sequence number and hash.
 * Fields: `event` (required), `run_id`, `action_id`, `environment`, `tier`, `variables`
 * (names only; entries given as tables are reduced to their names), `drift_count`, `changes`,
 * `latency_ms`, `attempts`, `status`, `error`, `code`, `build_id`, `etag`, `dry_run`, `user`.
 * Unknown fields are an argument error. `seq`, `ts`, `prev` and `hash` are added.
 * @function Audit:append
 * @tparam table record
 * @treturn[1] integer seq
 * @treturn[1] string hash
 * @treturn[2] fail code "io"
 */
static int l_append(lua_State *L)
{
    audit *a = check_audit(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    cxone_buf *body = cxone_buf_push(L); /* 3: GC-owned, so the argument errors below cannot leak */
    cxone_buf *line = cxone_buf_push(L); /* 4 */
    serialise(L, 2, body);
    if (body->oom) return cxone_fail(L, "io", "out of memory");

    /* From here on nothing raises until the lock is released. */
    head carry, h;
    int rotated;
    struct stat st;
    if (follow_rotation(a, &carry, &rotated) != 0) return fail_errno(L, a, "cannot follow rotation", errno);
    if (lock_fd(a->fd, LOCK_EX) != 0) return fail_errno(L, a, "cannot lock", errno);
    if (fstat(a->fd, &st) != 0) goto fail_locked;
    if (a->cached && st.st_dev == a->dev && st.st_ino == a->ino && st.st_size == a->size) {
        h.found = 1;
        h.seq = a->seq;
        memcpy(h.hash, a->hash, 65);
        h.torn_bytes = 0;
    } else if (read_head(a->fd, st.st_size, &h) != 0) {
        goto fail_locked;
    }
    if (!h.found && rotated && carry.found) {
        h.seq = carry.seq; /* a new file after rotation continues the old chain */
        memcpy(h.hash, carry.hash, 65);
    } else if (!h.found && a->cached && st.st_dev == a->dev && st.st_ino == a->ino) {
        h.seq = a->seq; /* truncated in place (copytruncate): continue the chain too */
        memcpy(h.hash, a->hash, 65);
    }

    char ts[32], hex[65];
    timestamp(ts);
    if (h.torn_bytes) cxone_buf_addc(line, '\n'); /* close a torn line left by a killed writer */
    size_t start = line->len;
    cxone_buf_addf(line, "{\"seq\":%llu,\"ts\":\"%s\"", h.seq + 1, ts);
    cxone_buf_add(line, body->p, body->len);
    cxone_buf_addstr(line, ",\"prev\":\"");
    cxone_buf_add(line, h.hash, 64);
    cxone_buf_addc(line, '"');
    if (line->oom || cxone_sha256_hex(line->p + start, line->len - start, hex) != 0) {
        errno = ENOMEM;
        goto fail_locked;
    }
    cxone_buf_addstr(line, HASH_MARK);
    cxone_buf_add(line, hex, 64);
    cxone_buf_addstr(line, "\"}\n");
    if (line->oom) { errno = ENOMEM; goto fail_locked; }
    if (write_all(a->fd, line->p, line->len) != 0) goto fail_locked;
    if (a->sync == SYNC_ALWAYS) {
        if (fdatasync(a->fd) != 0) goto fail_locked;
    } else {
        a->dirty = 1;
    }
    a->cached = 1;
    a->dev = st.st_dev;
    a->ino = st.st_ino;
    a->size = st.st_size + (off_t)line->len;
    a->seq = h.seq + 1;
    memcpy(a->hash, hex, 65);
    lock_fd(a->fd, LOCK_UN);

    lua_pushinteger(L, (lua_Integer)a->seq);
    lua_pushstring(L, a->hash);
    return 2;

fail_locked: {
        int e = errno;
        a->cached = 0;
        lock_fd(a->fd, LOCK_UN);
        return fail_errno(L, a, "cannot append", e);
    }
}

/***
 * Flushes (per the sync option) and closes the trail; idempotent. Also __gc and __close.
 * @function Audit:close
 * @treturn[1] boolean true
 * @treturn[2] fail code "io" (the final fsync failed)
 */
static int l_close(lua_State *L)
{
    audit *a = luaL_checkudata(L, 1, AUDIT_MT);
    int rc = audit_close_fd(a);
    if (rc != 0 && a->path) return cxone_fail(L, "io", "audit trail %s: close: %s", a->path, strerror(errno));
    lua_pushboolean(L, 1);
    return 1;
}

static int audit_gc(lua_State *L)
{
    audit *a = luaL_checkudata(L, 1, AUDIT_MT);
    audit_close_fd(a);
    free(a->path);
    a->path = NULL;
    return 0;
}

/***
 * What open found at the end of the file: a torn last line left by a writer that was killed
 * mid-write (the next record closes it and chains from the last intact record).
 * @function Audit:torn
 * @treturn table|nil `{offset = byte offset, bytes = length}`
 */
static int l_torn(lua_State *L)
{
    audit *a = luaL_checkudata(L, 1, AUDIT_MT);
    if (!a->torn_bytes) return 0;
    lua_createtable(L, 0, 2);
    lua_pushinteger(L, (lua_Integer)a->torn_offset);
    lua_setfield(L, -2, "offset");
    lua_pushinteger(L, (lua_Integer)a->torn_bytes);
    lua_setfield(L, -2, "bytes");
    return 1;
}

static int l_path(lua_State *L)
{
    audit *a = luaL_checkudata(L, 1, AUDIT_MT);
    if (!a->path) return 0;
    lua_pushstring(L, a->path);
    return 1;
}

static int audit_tostring(lua_State *L)
{
    audit *a = luaL_checkudata(L, 1, AUDIT_MT);
    if (a->fd < 0) lua_pushliteral(L, "cxone.Audit (closed)");
    else lua_pushfstring(L, "cxone.Audit (%s)", a->path);
    return 1;
}

/* ---- verification ---- */

#define MAX_TORN 64

typedef struct {
    unsigned long long records, first_seq, last_seq;
    char last_hash[65], start_prev[65];
    int have, anchored;
    struct { int file; unsigned long line; size_t bytes; } torn[MAX_TORN];
    int ntorn;
    unsigned long ntorn_total;
    int bad, bad_file;
    unsigned long bad_line;
    char msg[320];
} vstate;

static void vbad(vstate *v, int file, unsigned long line, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void vbad(vstate *v, int file, unsigned long line, const char *fmt, ...)
{
    va_list ap;
    v->bad = 1;
    v->bad_file = file;
    v->bad_line = line;
    va_start(ap, fmt);
    vsnprintf(v->msg, sizeof v->msg, fmt, ap);
    va_end(ap);
}

/* Checks one file, continuing the chain in v. Returns 0, or -1 with errno for I/O errors. */
static int verify_file(const char *path, int file, vstate *v)
{
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned long lineno = 0, last_torn_line = 0;
    while (!v->bad && (n = getline(&buf, &cap, f)) > 0) {
        lineno++;
        size_t len = (size_t)n;
        if (buf[len - 1] == '\n') len--;
        parsed r;
        if (!parse_record(buf, len, &r)) {
            if (v->ntorn < MAX_TORN) {
                v->torn[v->ntorn].file = file;
                v->torn[v->ntorn].line = lineno;
                v->torn[v->ntorn].bytes = len;
                v->ntorn++;
            }
            v->ntorn_total++;
            last_torn_line = lineno;
            continue;
        }
        if (!record_hash_ok(buf, &r)) {
            vbad(v, file, lineno, "line %lu: record seq %llu was edited (its hash does not match its content)",
                 lineno, r.seq);
            break;
        }
        int after_torn = last_torn_line && last_torn_line == lineno - 1;
        if (!v->have) {
            if (v->anchored) {
                if (memcmp(r.prev, v->last_hash, 64) != 0)
                    vbad(v, file, lineno, "line %lu: the first record does not chain from the given previous hash",
                         lineno);
            } else if (r.seq == 1 && memcmp(r.prev, GENESIS, 64) != 0) {
                vbad(v, file, lineno, "line %lu: record seq 1 does not start the chain", lineno);
            }
            memcpy(v->start_prev, r.prev, 65);
            v->first_seq = r.seq;
        } else if (r.seq != v->last_seq + 1) {
            if (after_torn)
                vbad(v, file, lineno - 1, "line %lu: a complete record was cut short or altered "
                     "(the chain jumps from seq %llu to %llu across it)", lineno - 1, v->last_seq, r.seq);
            else
                vbad(v, file, lineno, "line %lu: sequence jumps from %llu to %llu "
                     "(a record before it was deleted, or records were reordered)", lineno, v->last_seq, r.seq);
        } else if (memcmp(r.prev, v->last_hash, 64) != 0) {
            if (after_torn)
                vbad(v, file, lineno - 1, "line %lu: a complete record was cut short or altered "
                     "(the next record does not chain from the one before it)", lineno - 1);
            else
                vbad(v, file, lineno, "line %lu: record seq %llu does not chain from the record before it "
                     "(a record was deleted, replaced or reordered)", lineno, r.seq);
        }
        if (v->bad) break;
        v->have = 1;
        v->records++;
        v->last_seq = r.seq;
        memcpy(v->last_hash, r.hash, 65);
    }
    int e = ferror(f) ? errno : 0;
    free(buf);
    fclose(f);
    if (e) { errno = e; return -1; }
    return 0;
}

/***
 * Verifies a trail's hash chain (or several files of a rotated trail, oldest first).
 * Reports the first edited, deleted, reordered or cut record by line. Torn lines left by a
 * killed writer (the chain continues intact after them) are listed in `report.torn`.
 * @function audit_verify
 * @tparam string|table paths a path, or a list of paths in rotation order
 * @tparam[opt] table opts `previous_hash`: the hash the first record must chain from
 * @treturn[1] boolean true
 * @treturn[1] table report `{records, first_seq, last_seq, last_hash, starts_after, torn = {{file, line, bytes}}}`
 * @treturn[2] nil
 * @treturn[2] string message naming the file and line
 * @treturn[2] string "tampered" or "io"
 * @treturn[2] table report (up to the break)
 */
static int l_verify(lua_State *L)
{
    int single = lua_type(L, 1) == LUA_TSTRING;
    if (!single) luaL_argcheck(L, lua_istable(L, 1), 1, "expected a path or a list of paths");
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    size_t plen = 0;
    const char *prev = cxone_opt_string(L, 2, "previous_hash", NULL, &plen);
    luaL_argcheck(L, !prev || (plen == 64 && is_hex64(prev)), 2, "previous_hash must be 64 lowercase hex digits");
    lua_settop(L, 2);
    int nfiles = single ? 1 : (int)lua_rawlen(L, 1);
    for (int i = 1; !single && i <= nfiles; i++) {
        lua_rawgeti(L, 1, i);
        luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1, "list of paths must hold strings");
        lua_pop(L, 1);
    }

    vstate *v = lua_newuserdatauv(L, sizeof *v, 0); /* 3 */
    memset(v, 0, sizeof *v);
    memcpy(v->last_hash, GENESIS, 65);
    if (prev) {
        memcpy(v->last_hash, prev, 64);
        v->anchored = 1;
    }
    const char *failed_path = NULL;
    int io_errno = 0;
    for (int i = 1; i <= nfiles && !v->bad; i++) {
        if (single) lua_pushvalue(L, 1);
        else lua_rawgeti(L, 1, i);
        const char *path = lua_tostring(L, -1); /* still held by argument 1 after the pop */
        lua_pop(L, 1);
        if (verify_file(path, i, v) != 0) {
            failed_path = path;
            io_errno = errno;
            break;
        }
    }

    /* the report */
    lua_createtable(L, 0, 7);
    int rep = lua_gettop(L);
    lua_pushinteger(L, (lua_Integer)v->records);
    lua_setfield(L, rep, "records");
    if (v->have) {
        lua_pushinteger(L, (lua_Integer)v->first_seq);
        lua_setfield(L, rep, "first_seq");
        lua_pushinteger(L, (lua_Integer)v->last_seq);
        lua_setfield(L, rep, "last_seq");
        lua_pushstring(L, v->last_hash);
        lua_setfield(L, rep, "last_hash");
        if (memcmp(v->start_prev, GENESIS, 64) != 0) {
            lua_pushstring(L, v->start_prev);
            lua_setfield(L, rep, "starts_after");
        }
    }
    lua_createtable(L, v->ntorn, 0);
    for (int i = 0; i < v->ntorn; i++) {
        lua_createtable(L, 0, 3);
        if (single) lua_pushvalue(L, 1);
        else lua_rawgeti(L, 1, v->torn[i].file);
        lua_setfield(L, -2, "file");
        lua_pushinteger(L, (lua_Integer)v->torn[i].line);
        lua_setfield(L, -2, "line");
        lua_pushinteger(L, (lua_Integer)v->torn[i].bytes);
        lua_setfield(L, -2, "bytes");
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, rep, "torn");

    if (failed_path) {
        lua_pushnil(L);
        lua_pushfstring(L, "cannot read audit trail %s: %s", failed_path, strerror(io_errno));
        lua_pushliteral(L, "io");
        lua_pushvalue(L, rep);
        return 4;
    }
    if (v->bad) {
        if (single) lua_pushvalue(L, 1);
        else lua_rawgeti(L, 1, v->bad_file);
        lua_pushinteger(L, (lua_Integer)v->bad_line);
        lua_setfield(L, rep, "line");
        lua_pushvalue(L, -1);
        lua_setfield(L, rep, "file");
        lua_pushnil(L);
        lua_pushfstring(L, "%s: %s", lua_tostring(L, -2), v->msg);
        lua_pushliteral(L, "tampered");
        lua_pushvalue(L, rep);
        return 4;
    }
    lua_pushboolean(L, 1);
    lua_pushvalue(L, rep);
    return 2;
}

void cxone_audit_open(lua_State *L)
{
    static const luaL_Reg meth[] = {
        {"append", l_append},
        {"close", l_close},
        {"torn", l_torn},
        {"path", l_path},
        {NULL, NULL},
    };
    static const luaL_Reg metameth[] = {
        {"__gc", audit_gc},
        {"__close", audit_gc},
        {"__tostring", audit_tostring},
        {NULL, NULL},
    };
    if (luaL_newmetatable(L, AUDIT_MT)) {
        luaL_setfuncs(L, metameth, 0);
        lua_newtable(L);
        luaL_setfuncs(L, meth, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);
    lua_pushcfunction(L, l_audit_open);
    lua_setfield(L, -2, "audit_open");
    lua_pushcfunction(L, l_verify);
    lua_setfield(L, -2, "audit_verify");
}
