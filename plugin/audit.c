/* audit: the append-only, hash-chained JSONL trail (SHA-256, or HMAC-SHA-256 with a key), shared
 * safely by several processes, and its verifier. Writer and verifier share one reading of a file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>

#include "cxone.h"

#define AUDIT_MT "cxone.Audit"
#define GENESIS "0000000000000000000000000000000000000000000000000000000000000000"
#define HASH_MARK ",\"hash\":\""  /* 9 bytes */
#define PREV_MARK "\"prev\":\""   /* 8 bytes */
#define CHAIN_SHA ",\"chain\":\"sha256\""
#define CHAIN_HMAC ",\"chain\":\"hmac-sha256\""
#define KEY_ID_MARK ",\"key_id\":\"" /* 11 bytes, then 16 hex and '"', just before CHAIN_HMAC */
#define KEY_ID_LABEL "cxone-audit-key-id"
#define RECORD_HEAD "{\"seq\":"   /* 7 bytes: every record, and so every torn tail, starts so */
#define RECORD_MAX (1024 * 1024)  /* the longest line a writer produces */
#define TAIL_WINDOW (64 * 1024)
#define TAIL_MAX (4 * RECORD_MAX) /* a torn tail plus the last record always fit */

enum { SYNC_NONE, SYNC_CLOSE, SYNC_ALWAYS };
/* how a record's hash is made; LEGACY: no "chain" field (written before it existed): SHA-256 */
enum { MODE_LEGACY, MODE_SHA, MODE_HMAC };

typedef struct {
    const unsigned char *p; /* NULL: no key, plain SHA-256 */
    size_t n;
    char id[17];            /* key_id: the first 16 hex of HMAC(key, KEY_ID_LABEL) */
} chainkey;

/* Fills k for key[0..n) (NULL: none); 0, or -1 if libcrypto failed. The key id names which
 * key wrote a record, so a wrong key is told apart from an edit; it reveals no more about the
 * key than every record's HMAC does. */
static int chainkey_init(chainkey *k, const void *key, size_t n)
{
    char hex[65];
    k->p = key;
    k->n = n;
    k->id[0] = '\0';
    if (!key) return 0;
    if (cxone_hmac_sha256_hex(key, n, KEY_ID_LABEL, sizeof KEY_ID_LABEL - 1, hex) != 0) return -1;
    memcpy(k->id, hex, 16);
    k->id[16] = '\0';
    return 0;
}

typedef struct {
    int fd;           /* -1 once closed */
    long pid;         /* the process fd belongs to: a forked child opens the file again */
    dev_t fdev;       /* the file fd was opened on (a child checks its copy still names it) */
    ino_t fino;
    char *path;
    int sync;
    int dirty;        /* written since the last fsync */
    unsigned char *key; /* HMAC key (wiped before it is freed), or NULL */
    size_t keylen;
    chainkey ck;        /* the key as the chain uses it (points at key) */
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

static chainkey key_of(const audit *a)
{
    return a->ck;
}

/* ---- record parsing (shared by the writer's tail scan and the verifier) ---- */

typedef struct {
    unsigned long long seq;
    char prev[65], hash[65];
    size_t prefix_len; /* bytes covered by the hash */
    int mode;
    char key_id[17];   /* MODE_HMAC: the key id the record names */
} parsed;

static int is_hex64(const char *s)
{
    for (int i = 0; i < 64; i++) {
        char c = s[i];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
    }
    return 1;
}

static int ends_with(const char *s, size_t n, const char *suffix)
{
    size_t k = strlen(suffix);
    return n >= k && memcmp(s + n - k, suffix, k) == 0;
}

/* Structural parse of one line (without its newline); 1 if it has the shape of a record. */
static int parse_record(const char *line, size_t len, parsed *r)
{
    const size_t hl = sizeof RECORD_HEAD - 1, tail = 9 + 64 + 2; /* ,"hash":" hex "} */
    if (len > RECORD_MAX || len < hl + 1 + tail + 8 + 64 + 1 || memcmp(line, RECORD_HEAD, hl) != 0) return 0;
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
    if (plen < i + 8 + 64 + 1 || line[plen - 1] != '"') return 0;
    const char *prev = line + plen - 1 - 64;
    if (memcmp(prev - 8, PREV_MARK, 8) != 0 || !is_hex64(prev)) return 0;
    /* ...preceded by the chain mode, which the writer always puts just before "prev" */
    size_t before = (size_t)(prev - 8 - line); /* up to the ',' before "prev" */
    if (before < i || line[before - 1] != ',') return 0;
    before--;
    if (ends_with(line, before, CHAIN_HMAC)) {
        /* ...and a keyed record names its key: ,"key_id":"<16 hex>" before the chain */
        const size_t kl = sizeof KEY_ID_MARK - 1;
        size_t end = before - (sizeof CHAIN_HMAC - 1);
        if (end < i + kl + 17 || line[end - 1] != '"' || memcmp(line + end - 17 - kl, KEY_ID_MARK, kl) != 0)
            return 0;
        const char *id = line + end - 17;
        for (int j = 0; j < 16; j++)
            if (!((id[j] >= '0' && id[j] <= '9') || (id[j] >= 'a' && id[j] <= 'f'))) return 0;
        memcpy(r->key_id, id, 16);
        r->key_id[16] = '\0';
        r->mode = MODE_HMAC;
    } else if (ends_with(line, before, CHAIN_SHA)) {
        r->mode = MODE_SHA;
    } else {
        r->mode = MODE_LEGACY;
    }
    r->seq = seq;
    memcpy(r->prev, prev, 64);
    r->prev[64] = '\0';
    memcpy(r->hash, hash, 64);
    r->hash[64] = '\0';
    r->prefix_len = plen;
    return 1;
}

/* The hash of a record's prefix in the given mode (HMAC needs the key). 0, or -1. */
static int chain_hash(const char *prefix, size_t n, chainkey k, char hex[65])
{
    if (k.p) return cxone_hmac_sha256_hex(k.p, k.n, prefix, n, hex);
    return cxone_sha256_hex(prefix, n, hex);
}

/* Does the record's hash match its content (under k, whose presence matches the record's mode)? */
static int record_hash_ok(const char *line, const parsed *r, chainkey k)
{
    char hex[65];
    if (chain_hash(line, r->prefix_len, k, hex) != 0) return 0;
    return CRYPTO_memcmp(hex, r->hash, 64) == 0;
}

/* Can these final bytes (after the last newline) be what a writer killed mid-write left? A write
 * is one record, so they are a non-empty prefix of one: no NUL, not longer than a record, and
 * starting like every record does. Anything else is damage, not a torn write. */
static int torn_ok(const char *p, size_t n)
{
    size_t hl = sizeof RECORD_HEAD - 1;
    return n > 0 && n < RECORD_MAX && memcmp(p, RECORD_HEAD, n < hl ? n : hl) == 0 && !memchr(p, '\0', n);
}

/* ---- the chain head: the last record of the file, as the writer reads it ---- */

enum { H_OK, H_ERRNO, H_JUNK, H_BADHASH, H_NEEDKEY, H_UNKEYED, H_WRONGKEY };

typedef struct {
    unsigned long long seq;
    char hash[65];
    int found;          /* a record was found (else: empty, or only a torn line) */
    size_t torn_bytes;  /* bytes after the last newline (a torn last line) */
    char torn_sha[65];  /* their SHA-256 */
} head;

static int pread_all(int fd, char *buf, size_t n, off_t at)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, at + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) { if (r == 0) errno = EIO; return -1; }
        got += (size_t)r;
    }
    return 0;
}

/* Reads the end of fd (size bytes) the way the verifier does: bytes after the last newline are
 * a torn write only if torn_ok says so, and the last complete line must be a record whose hash
 * verifies in the writer's mode (k). Returns H_OK, H_ERRNO (errno set) or why the end is bad. */
static int read_head(int fd, off_t size, chainkey k, head *h)
{
    h->found = 0;
    h->seq = 0;
    memcpy(h->hash, GENESIS, 65);
    h->torn_bytes = 0;
    h->torn_sha[0] = '\0';
    if (size == 0) return H_OK;
    size_t window = size < TAIL_WINDOW ? (size_t)size : TAIL_WINDOW;
    for (;;) {
        char *buf = malloc(window);
        if (!buf) { errno = ENOMEM; return H_ERRNO; }
        off_t start = size - (off_t)window;
        if (pread_all(fd, buf, window, start) != 0) { int e = errno; free(buf); errno = e; return H_ERRNO; }
        char *nl = memrchr(buf, '\n', window);
        size_t tail = nl ? window - (size_t)(nl - buf) - 1 : window;
        char *pnl = nl && nl > buf ? memrchr(buf, '\n', (size_t)(nl - buf)) : NULL;
        if (tail >= RECORD_MAX || (nl && (size_t)(nl - (pnl ? pnl + 1 : buf)) > RECORD_MAX)) {
            free(buf); /* longer than any record: not something a writer left */
            return H_JUNK;
        }
        if ((!nl || !pnl) && start > 0) { /* the tail or the last line starts before the window */
            free(buf);
            if (window >= TAIL_MAX) return H_JUNK; /* cannot happen (see TAIL_MAX); never loop */
            window = window * 4 > TAIL_MAX ? TAIL_MAX : window * 4;
            if ((off_t)window > size) window = (size_t)size;
            continue;
        }
        int rc = H_OK;
        if (tail) {
            if (!torn_ok(buf + window - tail, tail)) rc = H_JUNK;
            else if (cxone_sha256_hex(buf + window - tail, tail, h->torn_sha) != 0) { errno = ENOMEM; rc = H_ERRNO; }
            h->torn_bytes = tail;
        }
        if (rc == H_OK && nl) {
            const char *line = pnl ? pnl + 1 : buf;
            size_t len = (size_t)(nl - line);
            parsed r;
            if (!parse_record(line, len, &r)) rc = H_JUNK;
            else if (r.mode == MODE_HMAC && !k.p) rc = H_NEEDKEY;
            else if (r.mode != MODE_HMAC && k.p) rc = H_UNKEYED;
            else if (k.p && memcmp(r.key_id, k.id, 16) != 0) rc = H_WRONGKEY;
            else if (!record_hash_ok(line, &r, k)) rc = H_BADHASH;
            else {
                h->found = 1;
                h->seq = r.seq;
                memcpy(h->hash, r.hash, 65);
            }
        }
        free(buf);
        return rc;
    }
}

/* The failure for a read_head status other than H_OK (errno still set for H_ERRNO). */
static int head_fail(lua_State *L, const char *path, const char *what, int rc)
{
    switch (rc) {
    case H_JUNK:
        return cxone_fail(L, "tampered", "audit trail %s: %s: its last line is not a record (the file was "
                          "damaged or edited; run cxone audit verify, and move it away to start a new trail)",
                          path, what);
    case H_BADHASH:
        return cxone_fail(L, "tampered", "audit trail %s: %s: its last record does not verify (a wrong "
                          "CXONE_AUDIT_KEY, or an edited record; run cxone audit verify)", path, what);
    case H_NEEDKEY:
        return cxone_fail(L, "key", "audit trail %s: %s: the trail is keyed (HMAC-SHA-256); set "
                          "CXONE_AUDIT_KEY to append to it", path, what);
    case H_WRONGKEY:
        return cxone_fail(L, "key", "audit trail %s: %s: the trail was written with another key (its key "
                          "id differs from CXONE_AUDIT_KEY's)", path, what);
    case H_UNKEYED:
        return cxone_fail(L, "key", "audit trail %s: %s: the trail is not keyed (plain SHA-256) but a key "
                          "was given; move it away to start a keyed trail", path, what);
    default:
        return cxone_fail(L, "io", "audit trail %s: %s: %s", path, what, strerror(errno));
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

/* Does a->fd still name the file it was opened on? (In a forked child it may not: the child
 * may have closed the descriptor and reused the number.) */
static int fd_is_ours(const audit *a)
{
    struct stat st;
    return fstat(a->fd, &st) == 0 && st.st_dev == a->fdev && st.st_ino == a->fino;
}

static void note_file(audit *a)
{
    struct stat st;
    if (fstat(a->fd, &st) == 0) {
        a->fdev = st.st_dev;
        a->fino = st.st_ino;
    } else {
        a->fdev = 0;
        a->fino = 0;
    }
}

static int audit_close_fd(audit *a)
{
    int rc = 0;
    if (a->fd >= 0 && a->pid != (long)getpid()) {
        /* a forked child's copy of the parent's descriptor: closing it releases nothing of the
         * parent's (its flock stays), and the parent's writes are the parent's to sync */
        if (fd_is_ours(a)) close(a->fd);
        a->fd = -1;
        a->dirty = 0;
    } else if (a->fd >= 0) {
        if (a->dirty && a->sync != SYNC_NONE && fsync(a->fd) != 0) rc = -1;
        if (close(a->fd) != 0) rc = -1;
        a->fd = -1;
        a->dirty = 0;
    }
    return rc;
}

/* Makes a->fd this process's own. A forked child shares the parent's open file and with it the
 * parent's flock: the child's LOCK_EX would be granted while the parent holds the lock, and its
 * LOCK_UN would release the parent's, so two appends could interleave and break the chain. A
 * child therefore opens the same file again (through /proc/self/fd, so a rotation since the
 * open is followed as the parent would; by path where /proc is missing, e.g. in a chroot) and
 * drops its copy of the parent's descriptor. 0, or -1 with errno. */
static int own_fd(audit *a)
{
    long pid = (long)getpid();
    if (a->pid == pid) return 0;
    int fd = -1, ours = fd_is_ours(a);
    if (ours) {
        char proc[64];
        snprintf(proc, sizeof proc, "/proc/self/fd/%d", a->fd);
        do fd = open(proc, O_RDWR | O_APPEND | O_CLOEXEC);
        while (fd < 0 && errno == EINTR);
    }
    if (fd < 0) fd = open_fd(a->path);
    if (fd < 0) return -1;
    if (ours) close(a->fd);
    a->fd = fd;
    a->pid = pid;
    a->dirty = 0;
    a->cached = 0;
    note_file(a);
    return 0;
}

/***
 * Opens (creating it if needed) an audit trail for appending.
 * Several processes may hold the same file open: each append is one write() on an
 * O_APPEND descriptor under an exclusive flock, so lines never interleave (a trail opened
 * before a fork is opened again by the child on its first append). With `key`, records
 * are chained with HMAC-SHA-256 (`"chain":"hmac-sha256"` and the key's `key_id` in every
 * record), else with plain SHA-256 (`"chain":"sha256"`). The end of the file is read as `audit_verify` reads it: open
 * fails if its last line is not a record, does not verify, or is in the other mode.
 * @function audit_open
 * @tparam string path
 * @tparam[opt] table opts `sync`: "close" (default: fsync when closed), "always" (fdatasync
 *   after every record) or "none"; `key`: the HMAC key (a non-empty string, never written anywhere)
 * @treturn[1] cxone.Audit
 * @treturn[2] fail code "io", "key" (the trail's mode differs from the key given) or "tampered"
 */
static int l_audit_open(lua_State *L)
{
    size_t plen, klen = 0;
    luaL_checktype(L, 1, LUA_TSTRING);
    const char *path = lua_tolstring(L, 1, &plen);
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    const char *sync = cxone_opt_string(L, 2, "sync", "close", NULL);
    const char *key = cxone_opt_string(L, 2, "key", NULL, &klen);
    int mode;
    if (strcmp(sync, "close") == 0) mode = SYNC_CLOSE;
    else if (strcmp(sync, "always") == 0) mode = SYNC_ALWAYS;
    else if (strcmp(sync, "none") == 0) mode = SYNC_NONE;
    else return luaL_argerror(L, 2, "option 'sync' must be \"close\", \"always\" or \"none\"");
    luaL_argcheck(L, plen > 0 && strlen(path) == plen, 1, "path must be a non-empty string without NUL");
    luaL_argcheck(L, !key || klen > 0, 2, "option 'key' must not be empty");

    /* userdata first, resources after: an error in between cannot leak */
    audit *a = lua_newuserdatauv(L, sizeof *a, 0);
    memset(a, 0, sizeof *a);
    a->fd = -1;
    a->pid = (long)getpid();
    luaL_setmetatable(L, AUDIT_MT);
    a->path = strdup(path);
    if (!a->path) return cxone_fail(L, "memory", "out of memory");
    if (key) {
        a->key = malloc(klen);
        if (!a->key) return cxone_fail(L, "memory", "out of memory");
        memcpy(a->key, key, klen);
        a->keylen = klen;
    }
    if (chainkey_init(&a->ck, a->key, a->keylen) != 0) return cxone_fail(L, "memory", "libcrypto: HMAC failed");
    a->sync = mode;
    a->fd = open_fd(path);
    if (a->fd < 0) return cxone_fail(L, "io", "cannot open audit trail %s: %s", path, strerror(errno));

    struct stat st;
    head h;
    int rc = H_ERRNO;
    if (lock_fd(a->fd, LOCK_SH) == 0) {
        if (fstat(a->fd, &st) == 0) rc = read_head(a->fd, st.st_size, key_of(a), &h);
        int e = errno;
        lock_fd(a->fd, LOCK_UN);
        errno = e;
    }
    if (rc != H_OK) {
        int e = errno;
        audit_close_fd(a);
        errno = e;
        return head_fail(L, path, "cannot open", rc);
    }
    a->fdev = st.st_dev;
    a->fino = st.st_ino;
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
    {"applied", F_INTEGER}, {"failed", F_INTEGER}, {"bytes", F_INTEGER}, {"dropped_sha256", F_STRING},
    {"not_attempted", F_INTEGER}, {"unknown", F_INTEGER}, {"signal", F_STRING},
    {"tenant", F_STRING}, {"override_freeze", F_STRING}, {"revert_of", F_STRING},
    {NULL, 0},
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

/* Appends one complete line to out: the record seq with body (",field":... pairs), chained from
 * prev (64 hex) in k's mode; its hash goes to hex. 0, or -1 (out of memory or libcrypto). */
static int add_line(cxone_buf *out, unsigned long long seq, const char *ts, const char *body, size_t blen,
                    const char *prev, chainkey k, char hex[65])
{
    size_t start = out->len;
    cxone_buf_addf(out, "{\"seq\":%llu,\"ts\":\"%s\"", seq, ts);
    cxone_buf_add(out, body, blen);
    if (k.p) {
        cxone_buf_addstr(out, KEY_ID_MARK);
        cxone_buf_add(out, k.id, 16);
        cxone_buf_addc(out, '"');
        cxone_buf_addstr(out, CHAIN_HMAC);
    } else {
        cxone_buf_addstr(out, CHAIN_SHA);
    }
    cxone_buf_addc(out, ',');
    cxone_buf_addstr(out, PREV_MARK);
    cxone_buf_add(out, prev, 64);
    cxone_buf_addc(out, '"');
    if (out->oom || chain_hash(out->p + start, out->len - start, k, hex) != 0) return -1;
    cxone_buf_addstr(out, HASH_MARK);
    cxone_buf_add(out, hex, 64);
    cxone_buf_addstr(out, "\"}\n");
    return out->oom ? -1 : 0;
}

/* If the path no longer names our file (renamed away by rotation, or deleted), switch to a
 * new file at the path; its first record chains from our file's last one (*carry). */
static int follow_rotation(audit *a, head *carry, int *rotated)
{
    struct stat pst, fst;
    *rotated = 0;
    /* one stat per append: the path against the identity noted when fd was opened */
    if (stat(a->path, &pst) == 0 && pst.st_dev == a->fdev && pst.st_ino == a->fino && a->fino != 0) return H_OK;
    if (fstat(a->fd, &fst) != 0) return H_ERRNO;
    if (stat(a->path, &pst) == 0 && pst.st_dev == fst.st_dev && pst.st_ino == fst.st_ino) return H_OK;
    if (lock_fd(a->fd, LOCK_SH) != 0) return H_ERRNO;
    int rc = read_head(a->fd, fst.st_size, key_of(a), carry);
    int e = errno;
    lock_fd(a->fd, LOCK_UN);
    errno = e;
    if (rc != H_OK) return rc;
    int fd = open_fd(a->path);
    if (fd < 0) return H_ERRNO;
    if (a->dirty && a->sync != SYNC_NONE) fsync(a->fd);
    close(a->fd);
    a->fd = fd;
    a->dirty = 0;
    a->cached = 0;
    note_file(a);
    *rotated = 1;
    return H_OK;
}

/***
 * Appends one record and returns its sequence number and hash (the trail's new head).
 * Fields: `event` (required), `run_id`, `action_id`, `environment`, `tier`, `variables`
 * (names only; entries given as tables are reduced to their names), `drift_count`, `changes`,
 * `latency_ms`, `attempts`, `status`, `error`, `code`, `build_id`, `etag`, `dry_run`, `user`,
 * `steps`, `plan`, `build_status`, `build_code`, `reconciled`, `head`, `message`, `applied`,
 * `failed`, `bytes`, `dropped_sha256`, `not_attempted`, `unknown`, `signal`. Unknown fields are
 * an argument error. `seq`, `ts`,
 * `chain` (and `key_id` when keyed), `prev` and `hash` are added.
 * A torn last line (a writer killed mid-write) is cut off first, under the lock, and recorded:
 * an `audit.torn_tail_dropped` record with its `bytes` and `dropped_sha256` precedes this one.
 * @function Audit:append
 * @tparam table record
 * @treturn[1] integer seq
 * @treturn[1] nil
 * @treturn[1] string hash, the trail's new head (third, so that `if err then` works)
 * @treturn[2] fail code "io", "memory", "invalid" (record over 1 MiB), "key" or "tampered"
 */
static int l_append(lua_State *L)
{
    audit *a = check_audit(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    cxone_buf *body = cxone_buf_push(L); /* 3: GC-owned, so the argument errors below cannot leak */
    cxone_buf *line = cxone_buf_push(L); /* 4 */
    serialise(L, 2, body);
    if (body->oom) return cxone_fail(L, "memory", "out of memory");
    if (body->len > RECORD_MAX - 512)
        return cxone_fail(L, "invalid", "audit trail %s: record too large (%zu bytes; at most 1 MiB)", a->path,
                          body->len);

    if (own_fd(a) != 0)
        return cxone_fail(L, "io", "audit trail %s: cannot open it again in this process: %s", a->path,
                          strerror(errno));

    /* From here on nothing raises until the lock is released. */
    head carry, h;
    int rotated, rc;
    struct stat st;
    if ((rc = follow_rotation(a, &carry, &rotated)) != H_OK) return head_fail(L, a->path, "cannot follow rotation", rc);
    if (lock_fd(a->fd, LOCK_EX) != 0) return head_fail(L, a->path, "cannot lock", H_ERRNO);
    if (fstat(a->fd, &st) != 0) { rc = H_ERRNO; goto fail_locked; }
    if (a->cached && st.st_dev == a->dev && st.st_ino == a->ino && st.st_size == a->size) {
        h.found = 1;
        h.seq = a->seq;
        memcpy(h.hash, a->hash, 65);
        h.torn_bytes = 0;
    } else if ((rc = read_head(a->fd, st.st_size, key_of(a), &h)) != H_OK) {
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
    unsigned long long seq = h.seq + 1;
    const char *prev = h.hash;
    char dropped_hex[65];
    if (h.torn_bytes) {
        /* the torn tail goes, and a record says so, chained from the last intact record */
        char drop[160];
        int dn = snprintf(drop, sizeof drop, ",\"event\":\"audit.torn_tail_dropped\",\"bytes\":%zu,"
                          "\"dropped_sha256\":\"%s\"", h.torn_bytes, h.torn_sha);
        if (add_line(line, seq, ts, drop, (size_t)dn, prev, key_of(a), dropped_hex) != 0) {
            errno = ENOMEM;
            rc = H_ERRNO;
            goto fail_locked;
        }
        seq++;
        prev = dropped_hex;
    }
    if (add_line(line, seq, ts, body->p, body->len, prev, key_of(a), hex) != 0) {
        errno = ENOMEM;
        rc = H_ERRNO;
        goto fail_locked;
    }
    off_t base = st.st_size;
    if (h.torn_bytes) {
        base -= (off_t)h.torn_bytes;
        int t;
        do t = ftruncate(a->fd, base);
        while (t != 0 && errno == EINTR);
        if (t != 0) { rc = H_ERRNO; goto fail_locked; }
    }
    if (write_all(a->fd, line->p, line->len) != 0) { rc = H_ERRNO; goto fail_locked; }
    if (a->sync == SYNC_ALWAYS) {
        if (fdatasync(a->fd) != 0) { rc = H_ERRNO; goto fail_locked; }
    } else {
        a->dirty = 1;
    }
    a->cached = 1;
    a->dev = st.st_dev;
    a->ino = st.st_ino;
    a->size = base + (off_t)line->len;
    a->seq = seq;
    memcpy(a->hash, hex, 65);
    lock_fd(a->fd, LOCK_UN);

    lua_pushinteger(L, (lua_Integer)a->seq);
    lua_pushnil(L);
    lua_pushstring(L, a->hash);
    return 3;

fail_locked: {
        int e = errno;
        a->cached = 0;
        lock_fd(a->fd, LOCK_UN);
        errno = e;
        return head_fail(L, a->path, "cannot append", rc);
    }
}

/***
 * Makes the records appended so far durable (fdatasync), whatever the sync option: one flush
 * for several records (group commit), e.g. the intents of the writes about to start.
 * @function Audit:sync
 * @treturn[1] boolean true
 * @treturn[2] fail code "io"
 */
static int l_sync(lua_State *L)
{
    audit *a = check_audit(L, 1);
    if (a->pid != (long)getpid()) { lua_pushboolean(L, 1); return 1; } /* nothing of ours to sync yet */
    int rc;
    do rc = fdatasync(a->fd);
    while (rc != 0 && errno == EINTR);
    if (rc != 0) return cxone_fail(L, "io", "audit trail %s: cannot make it durable: %s", a->path, strerror(errno));
    a->dirty = 0;
    lua_pushboolean(L, 1);
    return 1;
}

/***
 * The line `append(record)` would add now, without writing it: for a record that must be
 * written where no Lua can run (a signal handler), only if the file still has the size returned.
 * Fails if the trail's end holds a torn line or was rotated (append would first repair that).
 * @function Audit:prepare
 * @tparam table record as for append
 * @treturn[1] string the line (with its newline)
 * @treturn[1] integer the file's size the line chains from
 * @treturn[1] string the trail's path
 * @treturn[2] fail code "io", "tampered", "key"
 */
static int l_prepare(lua_State *L)
{
    audit *a = check_audit(L, 1);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    cxone_buf *body = cxone_buf_push(L); /* 3 */
    cxone_buf *line = cxone_buf_push(L); /* 4 */
    serialise(L, 2, body);
    if (body->oom) return cxone_fail(L, "memory", "out of memory");
    if (own_fd(a) != 0)
        return cxone_fail(L, "io", "audit trail %s: cannot open it again in this process: %s", a->path,
                          strerror(errno));
    struct stat pst, st;
    if (stat(a->path, &pst) != 0 || fstat(a->fd, &st) != 0 || pst.st_dev != st.st_dev || pst.st_ino != st.st_ino)
        return cxone_fail(L, "io", "audit trail %s: cannot prepare a record: the file was moved or rotated", a->path);
    head h;
    int rc;
    if (lock_fd(a->fd, LOCK_SH) != 0) return head_fail(L, a->path, "cannot lock", H_ERRNO);
    if (fstat(a->fd, &st) != 0) rc = H_ERRNO;
    else if (a->cached && st.st_dev == a->dev && st.st_ino == a->ino && st.st_size == a->size) {
        h.found = 1;
        h.seq = a->seq;
        memcpy(h.hash, a->hash, 65);
        h.torn_bytes = 0;
        rc = H_OK;
    } else {
        rc = read_head(a->fd, st.st_size, key_of(a), &h);
    }
    int e = errno;
    lock_fd(a->fd, LOCK_UN);
    errno = e;
    if (rc != H_OK) return head_fail(L, a->path, "cannot prepare a record", rc);
    if (h.torn_bytes) return cxone_fail(L, "io", "audit trail %s: cannot prepare a record: its end is torn", a->path);
    char ts[32], hex[65];
    timestamp(ts);
    if (add_line(line, h.seq + 1, ts, body->p, body->len, h.hash, key_of(a), hex) != 0)
        return cxone_fail(L, "memory", "out of memory");
    lua_pushlstring(L, line->p, line->len);
    lua_pushinteger(L, (lua_Integer)st.st_size);
    lua_pushstring(L, a->path);
    return 3;
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
    if (a->key) {
        OPENSSL_cleanse(a->key, a->keylen);
        free(a->key);
        a->key = NULL;
        a->keylen = 0;
        chainkey_init(&a->ck, NULL, 0);
    }
    return 0;
}

/***
 * What open found at the end of the file: a torn last line left by a writer that was killed
 * mid-write (the next append cuts it off, records that it did, and chains from the last record).
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
    else lua_pushfstring(L, "cxone.Audit (%s, %s)", a->path, a->key ? "hmac-sha256" : "sha256");
    return 1;
}

/* ---- verification ---- */

#define MAX_TORN 64

typedef struct {
    chainkey key;
    unsigned long long records, first_seq, last_seq, head_seq;
    char last_hash[65], start_prev[65], want_head[65];
    int have, anchored, check_head, head_seen;
    struct { int file; unsigned long line; size_t bytes; } torn[MAX_TORN];
    int ntorn;
    int bad, bad_file;
    unsigned long bad_line;
    const char *code;
    char msg[400];
} vstate;

static void vbad(vstate *v, int file, unsigned long line, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void vbad(vstate *v, int file, unsigned long line, const char *code, const char *fmt, ...)
{
    va_list ap;
    v->bad = 1;
    v->bad_file = file;
    v->bad_line = line;
    v->code = code;
    va_start(ap, fmt);
    vsnprintf(v->msg, sizeof v->msg, fmt, ap);
    va_end(ap);
}

/* Checks one record line (complete, without its newline) against the chain so far. */
static void verify_line(vstate *v, int file, unsigned long lineno, const char *buf, size_t len)
{
    parsed r;
    if (!parse_record(buf, len, &r)) {
        vbad(v, file, lineno, "tampered", "line %lu: not a record (a damaged, inserted or blank line; only a "
             "final line without its newline can be a torn write)", lineno);
        return;
    }
    if (r.mode == MODE_HMAC && !v->key.p) {
        vbad(v, file, lineno, "key", "line %lu: the trail is keyed (HMAC-SHA-256) and cannot be verified "
             "without its key: set CXONE_AUDIT_KEY", lineno);
        return;
    }
    if (r.mode != MODE_HMAC && v->key.p) {
        vbad(v, file, lineno, "tampered", "line %lu: record seq %llu is not keyed (plain SHA-256) although a key "
             "was given: the trail was written or rewritten without the key", lineno, r.seq);
        return;
    }
    if (v->key.p && memcmp(r.key_id, v->key.id, 16) != 0) {
        vbad(v, file, lineno, "key", "line %lu: record seq %llu was written with another key (key id %s; "
             "the given key's is %s)", lineno, r.seq, r.key_id, v->key.id);
        return;
    }
    if (!record_hash_ok(buf, &r, v->key)) {
        if (v->key.p)
            vbad(v, file, lineno, "tampered", "line %lu: record seq %llu does not verify with the given key "
                 "(a wrong key, or the record was edited)", lineno, r.seq);
        else
            vbad(v, file, lineno, "tampered", "line %lu: record seq %llu was edited (its hash does not match "
                 "its content)", lineno, r.seq);
        return;
    }
    if (!v->have) {
        if (v->anchored) {
            if (memcmp(r.prev, v->last_hash, 64) != 0)
                vbad(v, file, lineno, "tampered", "line %lu: the first record (seq %llu) does not continue from "
                     "the given hash", lineno, r.seq);
        } else if (r.seq != 1 || memcmp(r.prev, GENESIS, 64) != 0) {
            vbad(v, file, lineno, "tampered", "line %lu: the trail starts at seq %llu, not at seq 1 from the "
                 "genesis value: its first records were deleted, or it continues a rotated file (give that "
                 "file first, or --after HASH)", lineno, r.seq);
        }
        memcpy(v->start_prev, r.prev, 65);
        v->first_seq = r.seq;
    } else if (r.seq != v->last_seq + 1) {
        vbad(v, file, lineno, "tampered", "line %lu: sequence jumps from %llu to %llu (a record before it was "
             "deleted, or records were reordered)", lineno, v->last_seq, r.seq);
    } else if (memcmp(r.prev, v->last_hash, 64) != 0) {
        vbad(v, file, lineno, "tampered", "line %lu: record seq %llu does not chain from the record before it "
             "(a record was deleted, replaced or reordered%s)", lineno, r.seq,
             lineno == 1 ? ", or the files are not given in rotation order" : "");
    }
    if (v->bad) return;
    v->have = 1;
    v->records++;
    v->last_seq = r.seq;
    memcpy(v->last_hash, r.hash, 65);
    if (v->check_head && memcmp(r.hash, v->want_head, 64) == 0) {
        v->head_seen = 1;
        v->head_seq = r.seq;
    }
}

/* Checks one file, continuing the chain in v. It reads what the file held when no writer was
 * mid-write (its size under a shared lock); only bytes after the last newline of that can be
 * torn. Returns 0, or -1 with errno for I/O errors. */
static int verify_file(const char *path, int file, vstate *v)
{
    FILE *f = fopen(path, "re");
    if (!f) return -1;
    struct stat st;
    int fd = fileno(f);
    if (lock_fd(fd, LOCK_SH) != 0 || fstat(fd, &st) != 0) {
        int e = errno;
        fclose(f);
        errno = e;
        return -1;
    }
    lock_fd(fd, LOCK_UN);
    off_t limit = st.st_size, off = 0;
    char *buf = NULL;
    size_t cap = 0;
    ssize_t n;
    unsigned long lineno = 0;
    while (!v->bad && off < limit && (n = getline(&buf, &cap, f)) > 0) {
        lineno++;
        size_t len = (size_t)n;
        if (off + (off_t)len > limit) len = (size_t)(limit - off); /* appended after we looked */
        off += (off_t)len;
        if (buf[len - 1] != '\n') {
            /* the very end of the file, without a newline */
            if (!torn_ok(buf, len)) {
                vbad(v, file, lineno, "tampered", "line %lu: the file ends with %zu bytes that are not the "
                     "beginning of a record (damage, not a torn write)", lineno, len);
            } else if (v->ntorn < MAX_TORN) {
                v->torn[v->ntorn].file = file;
                v->torn[v->ntorn].line = lineno;
                v->torn[v->ntorn].bytes = len;
                v->ntorn++;
            }
            break;
        }
        verify_line(v, file, lineno, buf, len - 1);
    }
    int e = ferror(f) ? errno : 0;
    free(buf);
    fclose(f);
    if (e) { errno = e; return -1; }
    return 0;
}

static void set_str(lua_State *L, int t, const char *k, const char *s)
{
    lua_pushstring(L, s);
    lua_setfield(L, t, k);
}

static void set_int(lua_State *L, int t, const char *k, unsigned long long n)
{
    lua_pushinteger(L, (lua_Integer)n);
    lua_setfield(L, t, k);
}

/* the path of file i (1-based) of argument 1 */
static void push_path(lua_State *L, int single, int i)
{
    if (single) lua_pushvalue(L, 1);
    else lua_rawgeti(L, 1, i);
}

static const char *opt_hash(lua_State *L, const char *field)
{
    size_t n = 0;
    const char *s = cxone_opt_string(L, 2, field, NULL, &n);
    if (s && !(n == 64 && is_hex64(s))) {
        lua_pushfstring(L, "option '%s' must be 64 lowercase hex digits", field);
        luaL_argerror(L, 2, lua_tostring(L, -1));
    }
    return s;
}

/***
 * Verifies a trail's chain (or several files of a rotated trail, oldest first).
 * Every line must be a record that verifies and chains from the one before; only bytes after
 * the last newline of a file that begin like a record count as a torn write (a warning, in
 * `report.torn`). The first record must be seq 1 chained from the genesis value, unless `after`
 * names the hash it continues from. With `key`, every record must be HMAC-SHA-256 under that
 * key; without it, or with another key, a keyed trail fails (code "key"). With `key`, a trail
 * without any record fails (code "tampered"): it must hold at least its first record. With
 * `head`, the trail must end at it.
 * @function audit_verify
 * @tparam string|table paths a path, or a list of paths in rotation order
 * @tparam[opt] table opts `key` (string), `head` and `after` (64 hex digits), `report` (boolean:
 *   return the report even when verification fails, with `ok = false`)
 * @treturn[1] table report `{ok = true, records, first_seq, last_seq, head, chain, starts_after,
 *   torn = {{file, line, bytes}}, errors = {}}`
 * @treturn[2] nil
 * @treturn[2] string message naming the file and line
 * @treturn[2] string "tampered", "key" or "io"
 */
static int l_verify(lua_State *L)
{
    int single = lua_type(L, 1) == LUA_TSTRING;
    if (!single) luaL_argcheck(L, lua_istable(L, 1), 1, "expected a path or a list of paths");
    if (!lua_isnoneornil(L, 2)) luaL_checktype(L, 2, LUA_TTABLE);
    size_t klen = 0;
    const char *key = cxone_opt_string(L, 2, "key", NULL, &klen);
    luaL_argcheck(L, !key || klen > 0, 2, "option 'key' must not be empty");
    const char *after = opt_hash(L, "after");
    const char *want = opt_hash(L, "head");
    int always_report = cxone_opt_boolean(L, 2, "report", 0);
    lua_settop(L, 2);
    int nfiles = single ? 1 : (int)lua_rawlen(L, 1);
    luaL_argcheck(L, nfiles > 0, 1, "list of paths is empty");
    for (int i = 1; !single && i <= nfiles; i++) {
        lua_rawgeti(L, 1, i);
        luaL_argcheck(L, lua_type(L, -1) == LUA_TSTRING, 1, "list of paths must hold strings");
        lua_pop(L, 1);
    }

    vstate *v = lua_newuserdatauv(L, sizeof *v, 0); /* 3; key and hashes stay held by argument 2 */
    memset(v, 0, sizeof *v);
    if (chainkey_init(&v->key, key, klen) != 0) return cxone_fail(L, "memory", "libcrypto: HMAC failed");
    memcpy(v->last_hash, GENESIS, 65);
    if (after) {
        memcpy(v->last_hash, after, 64);
        v->anchored = 1;
    }
    if (want) {
        memcpy(v->want_head, want, 64);
        v->check_head = 1;
    }
    const char *failed_path = NULL;
    int io_errno = 0;
    for (int i = 1; i <= nfiles && !v->bad; i++) {
        push_path(L, single, i);
        const char *path = lua_tostring(L, -1); /* still held by argument 1 after the pop */
        lua_pop(L, 1);
        if (verify_file(path, i, v) != 0) {
            failed_path = path;
            io_errno = errno;
            break;
        }
    }
    if (!v->bad && !failed_path && v->check_head && memcmp(v->last_hash, v->want_head, 64) != 0) {
        if (v->head_seen)
            vbad(v, nfiles, 0, "tampered", "the trail does not end at the given head: it is record seq %llu, "
                 "and %llu records follow it", v->head_seq, v->last_seq - v->head_seq);
        else if (v->have)
            vbad(v, nfiles, 0, "tampered", "the trail ends at seq %llu, not at the given head, which it does "
                 "not contain: records were cut from its end (or the head is from another trail)", v->last_seq);
        else
            vbad(v, nfiles, 0, "tampered", "the trail holds no records, so it does not end at the given head");
    }
    /* fail closed: a keyed trail proves itself with at least its first record; an empty one
     * (emptied, or replaced by an empty file) proves nothing */
    if (!v->bad && !failed_path && key && !v->have)
        vbad(v, nfiles, 0, "tampered", "the trail holds no records: a keyed trail must hold at least its first "
             "record, so an empty one was emptied or replaced (nothing in it can be verified)");

    /* the report */
    lua_createtable(L, 0, 10);
    int rep = lua_gettop(L); /* 4 */
    int ok = !v->bad && !failed_path;
    lua_pushboolean(L, ok);
    lua_setfield(L, rep, "ok");
    set_int(L, rep, "records", v->records);
    set_str(L, rep, "chain", key ? "hmac-sha256" : "sha256");
    set_str(L, rep, "head", v->last_hash); /* with no record: the genesis value, or `after` */
    if (v->have) {
        set_int(L, rep, "first_seq", v->first_seq);
        set_int(L, rep, "last_seq", v->last_seq);
        if (memcmp(v->start_prev, GENESIS, 64) != 0) set_str(L, rep, "starts_after", v->start_prev);
    }
    lua_createtable(L, v->ntorn, 0);
    for (int i = 0; i < v->ntorn; i++) {
        lua_createtable(L, 0, 3);
        push_path(L, single, v->torn[i].file);
        lua_setfield(L, -2, "file");
        lua_pushinteger(L, (lua_Integer)v->torn[i].line);
        lua_setfield(L, -2, "line");
        lua_pushinteger(L, (lua_Integer)v->torn[i].bytes);
        lua_setfield(L, -2, "bytes");
        lua_rawseti(L, -2, i + 1);
    }
    lua_setfield(L, rep, "torn");
    lua_newtable(L); /* errors */
    const char *code = NULL;
    if (failed_path) {
        code = "io";
        lua_pushfstring(L, "cannot read audit trail %s: %s", failed_path, strerror(io_errno));
    } else if (v->bad) {
        code = v->code;
        push_path(L, single, v->bad_file);
        lua_pushfstring(L, "%s: %s", lua_tostring(L, -1), v->msg);
        lua_remove(L, -2);
    }
    if (code) { /* errors, message */
        lua_createtable(L, 0, 4);
        lua_pushvalue(L, -2);
        lua_setfield(L, -2, "message");
        lua_pushstring(L, code);
        lua_setfield(L, -2, "code");
        if (failed_path) {
            lua_pushstring(L, failed_path);
            lua_setfield(L, -2, "file");
        } else {
            push_path(L, single, v->bad_file);
            lua_setfield(L, -2, "file");
            if (v->bad_line) {
                lua_pushinteger(L, (lua_Integer)v->bad_line);
                lua_setfield(L, -2, "line");
            }
        }
        lua_rawseti(L, -3, 1);
        lua_insert(L, -2); /* message, errors */
    }
    lua_setfield(L, rep, "errors");
    if (!code) return 1; /* the report */
    set_str(L, rep, "code", code);
    if (always_report) {
        lua_pushvalue(L, rep);
        return 1;
    }
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushstring(L, code);
    return 3; /* nil, message, code */
}

void cxone_audit_open(lua_State *L)
{
    static const luaL_Reg meth[] = {
        {"append", l_append},
        {"close", l_close},
        {"torn", l_torn},
        {"path", l_path},
        {"sync", l_sync},
        {"prepare", l_prepare},
        {NULL, NULL},
    };
    static const luaL_Reg metameth[] = {
        {"__gc", audit_gc},
        {"__close", audit_gc},
        {"__tostring", audit_tostring},
        {NULL, NULL},
    };
    cxone_class(L, AUDIT_MT, metameth, meth);
    lua_pushcfunction(L, l_audit_open);
    lua_setfield(L, -2, "audit_open");
    lua_pushcfunction(L, l_verify);
    lua_setfield(L, -2, "audit_verify");
}
