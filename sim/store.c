/* store.c: whole-file reads, crash-safe state-file writes (temp + fsync + rename + dir fsync), the
 * append-only change journal beside the state file, randomness, clock. */
#include "sim.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

int sim_read_file(const char *path, char **out, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        fclose(f);
        snprintf(err, errlen, "out of memory reading %s", path);
        return -1;
    }
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) {
                free(buf);
                fclose(f);
                snprintf(err, errlen, "out of memory reading %s", path);
                return -1;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return -1;
    }
    fclose(f);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Writes all of buf to fd, retrying short writes and EINTR. */
static int write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        buf += w;
        len -= (size_t)w;
    }
    return 0;
}

/* The new content goes to a temporary file in the same directory, is fsynced, then renamed
 * over the old one, and the directory is fsynced: a crash leaves either the old or the new
 * file, never a torn one, and a successful return means the change is on disk. */
int sim_atomic_write(const char *path, const char *data, size_t len, char *err, size_t errlen)
{
    size_t plen = strlen(path);
    char *tmp = malloc(plen + 32);
    char *dircopy = strdup(path);
    if (!tmp || !dircopy) {
        free(tmp);
        free(dircopy);
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    snprintf(tmp, plen + 32, "%s.tmp.%ld", path, (long)getpid());

    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (write_all(fd, data, len) != 0 || fsync(fd) != 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto fail;
    }
    if (close(fd) != 0) {
        snprintf(err, errlen, "cannot close %s: %s", tmp, strerror(errno));
        unlink(tmp);
        goto fail;
    }
    if (rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        unlink(tmp);
        goto fail;
    }
    /* Make the rename itself durable. */
    int dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd) != 0) {
        snprintf(err, errlen, "cannot sync the directory of %s: %s", path, strerror(errno));
        if (dfd >= 0) close(dfd);
        goto fail;
    }
    close(dfd);
    free(tmp);
    free(dircopy);
    return 0;
fail:
    free(tmp);
    free(dircopy);
    return -1;
}

/* ---- the journal: one line per change, appended and made durable before the answer ---- */

static int journal_fd = -1;
static off_t journal_size;   /* bytes of whole lines in the journal */
static int journal_torn;     /* a failed append left a partial line that could not be cut off */

/* fsyncs the directory holding path, so a file just created there survives a crash. */
static int sync_dir_of(const char *path)
{
    char *dircopy = strdup(path);
    if (!dircopy) { errno = ENOMEM; return -1; }
    int dfd = open(dirname(dircopy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    free(dircopy);
    if (dfd < 0) return -1;
    int rc = fsync(dfd);
    int e = errno;
    close(dfd);
    errno = e;
    return rc;
}

int sim_journal_open(const char *path, char *err, size_t errlen)
{
    if (journal_fd >= 0) return 0;
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return -1;
    }
    off_t end = lseek(fd, 0, SEEK_END);
    if (end < 0 || sync_dir_of(path) != 0) {
        snprintf(err, errlen, "cannot prepare %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    journal_fd = fd;
    journal_size = end;
    return 0;
}

/* Appends one record (a whole line) and fdatasyncs it. On failure the journal is cut back to
 * its last whole line, so a later append never follows a torn one. */
int sim_journal_append(const char *data, size_t len, char *err, size_t errlen)
{
    if (journal_fd < 0) {
        snprintf(err, errlen, "the journal is not open");
        return -1;
    }
    /* After a torn tail that could not be cut off, end it first: it becomes a line of its own
     * that replay skips, and this record still starts a line. */
    if (journal_torn) {
        if (write_all(journal_fd, "\n", 1) != 0) {
            snprintf(err, errlen, "cannot append to the journal: %s", strerror(errno));
            return -1;
        }
        journal_torn = 0;
    }
    if (write_all(journal_fd, data, len) != 0 || fdatasync(journal_fd) != 0) {
        snprintf(err, errlen, "cannot append to the journal: %s", strerror(errno));
        if (ftruncate(journal_fd, journal_size) != 0) journal_torn = 1;
        return -1;
    }
    off_t end = lseek(journal_fd, 0, SEEK_END);
    journal_size = end >= 0 ? end : journal_size + (off_t)len;
    return 0;
}

/* Empties the journal once a snapshot holding everything in it is on disk. */
int sim_journal_reset(char *err, size_t errlen)
{
    if (journal_fd < 0) return 0;
    if (ftruncate(journal_fd, 0) != 0 || fsync(journal_fd) != 0) {
        snprintf(err, errlen, "cannot empty the journal: %s", strerror(errno));
        return -1;
    }
    journal_size = 0;
    journal_torn = 0;
    return 0;
}

size_t sim_journal_size(void) { return journal_fd >= 0 ? (size_t)journal_size : 0; }

void sim_journal_close(void)
{
    if (journal_fd >= 0) close(journal_fd);
    journal_fd = -1;
}

int sim_random_bytes(unsigned char *buf, size_t n)
{
    static int fd = -1;   /* kept open; only the MHD thread and startup use it */
    if (fd < 0) {
        fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
        if (fd < 0) return -1;
    }
    while (n > 0) {
        ssize_t r = read(fd, buf, n);
        if (r < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (r == 0) return -1;
        buf += r;
        n -= (size_t)r;
    }
    return 0;
}

double sim_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
