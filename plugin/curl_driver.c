/* curl_driver: the libcurl driver of the call engine (curl_driver.h). It moves bytes and time:
 * requests come from cx_call_next, answers and failures go back to the engine as they are. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <curl/curl.h>
#include <openssl/crypto.h>

#include "curl_driver.h"
#include "rand.h"
#include "scrub.h"

#define REDACTED "[redacted]"
/* Hosts never reached through a proxy, whatever the environment says. */
#define LOOPBACK_HOSTS "localhost,127.0.0.0/8,::1"

/* One transfer in flight: the call it carries and what libcurl reads and writes for it. */
typedef struct {
    cx_curl *d;
    cx_engine *e;
    cx_call *c;
    CURL *easy;
    int kind, id, configured;
    struct curl_slist *hdrs;
    const char *body;
    size_t body_len, body_pos;
    char errbuf[CURL_ERROR_SIZE];
} slot_t;

struct cx_curl {
    char *ca_file;
    char *noproxy;          /* LOOPBACK_HOSTS plus the environment's no_proxy */
    int debug;
    CURLM *multi;
    CURL *easy[CXD_MAX_CONCURRENCY];
    slot_t slot[CXD_MAX_CONCURRENCY];
    int neasy, busy[CXD_MAX_CONCURRENCY];
    double connections;
    /* fork safety: the process that made the handles, and the sockets they hold open */
    long pid;
    struct sock_t { int fd; unsigned long long ino; } *socks;
    size_t nsocks, capsocks;
};

double cx_curl_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double cx_curl_wall(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double cx_curl_connections(const cx_curl *d) { return d->connections; }

/* ---- debug trace (stderr), redacted ---- */

static int header_is_secret(const char *line, size_t n)
{
    static const char *names[] = {"authorization", "proxy-authorization", "cookie", "set-cookie"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        size_t k = strlen(names[i]);
        if (n > k && strncasecmp(line, names[i], k) == 0 && line[k] == ':') return (int)k + 1;
    }
    return 0;
}

/* Replaces the query of every absolute URL in s ("scheme://...?query") with [redacted]:
 * webhook URLs may carry tokens, and curl's informational lines repeat URLs. */
static void hide_queries(char *s, size_t cap)
{
    char *p = s;
    while ((p = strstr(p, "://")) != NULL) {
        p += 3;
        char *end = p + strcspn(p, " \t'\"<>");
        char *q = memchr(p, '?', (size_t)(end - p));
        if (!q) { p = end; continue; }
        size_t tail = strlen(end);
        size_t need = (size_t)(q - s) + 1 + sizeof REDACTED - 1 + tail + 1;
        if (need > cap) { *q = '\0'; return; }
        memmove(q + sizeof REDACTED, end, tail + 1);
        memcpy(q + 1, REDACTED, sizeof REDACTED - 1);
        p = q + sizeof REDACTED;
    }
}

/* Control characters (and bytes >= 0x7f) never reach the terminal raw. */
static void trace_clean(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) *s = '?';
}

void cx_curl_trace(void *ud, int id, const char *line)
{
    char buf[512];
    (void)ud;
    snprintf(buf, sizeof buf, "%s", line);
    trace_clean(buf);
    fprintf(stderr, "cxone[%d] * %s\n", id, buf);
}

static void trace_out(const slot_t *s, const char *dir, char *buf, size_t cap)
{
    hide_queries(buf, cap);
    cx_scrub_msg(s->e, s->c, buf, cap);
    trace_clean(buf);
    fprintf(stderr, "cxone[%d] %s %s\n", s->id, dir, buf);
}

/* One line: header values that carry credentials are cut, the query of a request line is hidden,
 * and any known secret left anywhere is replaced. */
static void trace_line(const slot_t *s, const char *dir, const char *line, size_t n)
{
    char buf[1024];
    while (n && (line[n - 1] == '\r' || line[n - 1] == '\n')) n--;
    if (n == 0) return;
    if (n > sizeof buf - 64) n = sizeof buf - 64;
    size_t len = 0;
    int cut = header_is_secret(line, n);
    /* HTTP/2 pseudo-header dumps in curl's text ("[authorization: Bearer ...]") */
    for (size_t i = 0; i + 14 < n && !cut; i++)
        if (strncasecmp(line + i, "authorization:", 14) == 0) cut = (int)(i + 14);
    if (cut) {
        memcpy(buf, line, (size_t)cut);
        len = (size_t)cut;
        memcpy(buf + len, " " REDACTED, sizeof REDACTED);
        len += sizeof REDACTED;
    } else {
        memcpy(buf, line, n);
        len = n;
        if (strcmp(dir, ">") == 0) { /* request line: METHOD target HTTP/x: hide the query */
            char *sp = memchr(buf, ' ', len);
            char *q = sp ? memchr(sp, '?', len - (size_t)(sp - buf)) : NULL;
            char *sp2 = q ? memchr(q, ' ', len - (size_t)(q - buf)) : NULL;
            if (q && sp2 && memmem(sp2, len - (size_t)(sp2 - buf), " HTTP/", 6) == sp2) {
                size_t tail = len - (size_t)(sp2 - buf);
                char tmp[128];
                size_t tl = tail < sizeof tmp ? tail : sizeof tmp - 1;
                memcpy(tmp, sp2, tl);
                memcpy(q, "?" REDACTED, sizeof REDACTED);
                len = (size_t)(q - buf) + sizeof REDACTED;
                memcpy(buf + len, tmp, tl);
                len += tl;
            }
        }
    }
    buf[len] = '\0';
    trace_out(s, dir, buf, sizeof buf);
}

static void trace_lines(const slot_t *s, const char *dir, const char *data, size_t n)
{
    while (n) {
        const char *nl = memchr(data, '\n', n);
        size_t k = nl ? (size_t)(nl - data) + 1 : n;
        trace_line(s, dir, data, k);
        data += k;
        n -= k;
    }
}

/* The token request body is form-encoded: show field names, hide credential values. */
static void trace_form(const slot_t *s, const char *data, size_t n)
{
    static const char *secret_keys[] = {"client_secret", "password", "access_token",
                                        "refresh_token", "client_assertion", "assertion"};
    char buf[1024];
    size_t len = 0;
    while (n && len < sizeof buf - 64) {
        const char *amp = memchr(data, '&', n);
        size_t k = amp ? (size_t)(amp - data) : n;
        const char *eq = memchr(data, '=', k);
        size_t kl = eq ? (size_t)(eq - data) : k;
        int secret = 0;
        for (size_t i = 0; i < sizeof secret_keys / sizeof *secret_keys; i++)
            if (kl == strlen(secret_keys[i]) && memcmp(data, secret_keys[i], kl) == 0) secret = 1;
        size_t show = secret ? kl : k;
        if (show > sizeof buf - 64 - len) show = sizeof buf - 64 - len;
        memcpy(buf + len, data, show);
        len += show;
        if (secret) {
            memcpy(buf + len, "=" REDACTED, sizeof REDACTED);
            len += sizeof REDACTED;
        }
        if (amp) buf[len++] = '&';
        data += amp ? k + 1 : k;
        n -= amp ? k + 1 : k;
    }
    buf[len] = '\0';
    trace_out(s, ">", buf, sizeof buf);
}

static int on_debug(CURL *easy, curl_infotype type, char *data, size_t size, void *ud)
{
    const slot_t *s = ud;
    (void)easy;
    if (!s->c) return 0;
    switch (type) {
    case CURLINFO_TEXT: trace_lines(s, "*", data, size); break;
    case CURLINFO_HEADER_OUT: trace_lines(s, ">", data, size); break;
    case CURLINFO_HEADER_IN: trace_lines(s, "<", data, size); break;
    case CURLINFO_DATA_OUT:
        if (s->kind == CX_KIND_TOKEN) trace_form(s, data, size);
        else fprintf(stderr, "cxone[%d] > [%zu bytes of request body not shown]\n", s->id, size);
        break;
    case CURLINFO_DATA_IN:
        fprintf(stderr, "cxone[%d] < [%zu bytes of response body not shown]\n", s->id, size);
        break;
    default: break;
    }
    return 0;
}

/* ---- libcurl callbacks: bytes in and out ---- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    slot_t *s = ud;
    size_t n = size * nmemb;
    return cx_call_body(s->c, data, n) == 0 ? n : 0;
}

static size_t on_header(char *data, size_t size, size_t nitems, void *ud)
{
    slot_t *s = ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) { /* a new response (after 1xx too) */
        cx_call_header_reset(s->c);
        return n;
    }
    const char *colon = memchr(data, ':', n);
    if (colon) cx_call_header(s->c, data, (size_t)(colon - data), colon + 1,
                              n - (size_t)(colon - data) - 1, cx_curl_wall());
    return n;
}

/* The request body, read by libcurl; a rewind after any byte was read is refused, so libcurl
 * cannot re-send a request on a new connection without the engine knowing (it fails the
 * transfer with CURLE_SEND_FAIL_REWIND instead, and the engine counts the attempt). */
static size_t on_read(char *buf, size_t size, size_t nitems, void *ud)
{
    slot_t *s = ud;
    size_t room = size * nitems, left = s->body_len - s->body_pos;
    size_t k = left < room ? left : room;
    if (k) memcpy(buf, s->body + s->body_pos, k);
    s->body_pos += k;
    return k;
}

static int on_seek(void *ud, curl_off_t offset, int origin)
{
    slot_t *s = ud;
    if (origin == SEEK_SET && offset == 0 && s->body_pos == 0) return CURL_SEEKFUNC_OK;
    return CURL_SEEKFUNC_CANTSEEK;
}

/* ---- fork safety ----
 * libcurl's handles must never be used in two processes: after a fork the pooled connections,
 * their TLS state and HTTP/2 streams are still the parent's. So the handles remember the process
 * that made them (pid), and a client used or closed in another process abandons the inherited
 * handles and, when used, makes new ones over new connections. The token is kept (it is not tied
 * to a connection); the engine's backoff jitter is reseeded. Abandoning must put nothing on the
 * parent's sockets (curl's teardown of a TLS connection reads from it and sends close_notify;
 * on HTTP/2 a GOAWAY), so the child never runs curl's teardown on inherited handles: it leaks
 * them, kept reachable (keep_forever), and only closes its copies of the connection sockets
 * (recorded by on_open_socket with their inode, so that a number reused since is left alone). */

static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    cx_curl *d = ud;
    (void)purpose;
    if (d->nsocks == d->capsocks) {
        size_t cap = d->capsocks ? d->capsocks * 2 : 8;
        struct sock_t *p = realloc(d->socks, cap * sizeof *p);
        if (!p) return CURL_SOCKET_BAD; /* curl reports it as a failed connect */
        d->socks = p;
        d->capsocks = cap;
    }
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd < 0) return CURL_SOCKET_BAD;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    d->socks[d->nsocks].fd = fd;
    d->socks[d->nsocks].ino = (unsigned long long)st.st_ino;
    d->nsocks++;
    d->connections++;
    return fd;
}

static int on_close_socket(void *ud, curl_socket_t fd)
{
    cx_curl *d = ud;
    for (size_t i = 0; i < d->nsocks; i++)
        if (d->socks[i].fd == fd) {
            d->socks[i] = d->socks[--d->nsocks];
            break;
        }
    return close(fd);
}

static int make_handles(cx_curl *d)
{
    d->multi = curl_multi_init();
    if (!d->multi) return -1;
    curl_multi_setopt(d->multi, CURLMOPT_MAXCONNECTS, (long)CXD_MAX_CONCURRENCY);
    return 0;
}

static void free_handles(cx_curl *d)
{
    for (int i = 0; i < d->neasy; i++) {
        if (d->multi && d->busy[i]) curl_multi_remove_handle(d->multi, d->easy[i]);
        curl_easy_cleanup(d->easy[i]);
        curl_slist_free_all(d->slot[i].hdrs);
    }
    if (d->multi) curl_multi_cleanup(d->multi);
    d->multi = NULL;
    d->neasy = 0;
    memset(d->busy, 0, sizeof d->busy);
    memset(d->slot, 0, sizeof d->slot);
}

/* Inherited handles stay reachable from here, never freed (a leak checker does not count them
 * as lost); a lock-free push, for hosts with threads. */
struct kept_handles {
    struct kept_handles *next;
    CURLM *multi;
    int neasy;
    CURL *easy[CXD_MAX_CONCURRENCY];
};
static struct kept_handles *kept;

static void keep_forever(const cx_curl *d)
{
    if (!d->multi && d->neasy == 0) return;
    struct kept_handles *k = malloc(sizeof *k);
    if (!k) return; /* then lost for real, which is all the difference */
    k->multi = d->multi;
    k->neasy = d->neasy;
    memcpy(k->easy, d->easy, sizeof k->easy);
    k->next = __atomic_load_n(&kept, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&kept, &k->next, k, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {}
}

static void drop_inherited(cx_curl *d)
{
    for (size_t i = 0; i < d->nsocks; i++) {
        struct stat st;
        if (fstat(d->socks[i].fd, &st) == 0 && S_ISSOCK(st.st_mode)
            && (unsigned long long)st.st_ino == d->socks[i].ino)
            close(d->socks[i].fd);
    }
    d->nsocks = 0;
    keep_forever(d);
    for (int i = 0; i < d->neasy; i++) d->slot[i].hdrs = NULL; /* kept with the handles */
    d->multi = NULL;
    d->neasy = 0;
    memset(d->busy, 0, sizeof d->busy);
}

/* Makes the handles usable in this process: fresh ones in a forked child, and again after an
 * earlier failure to make them. 0, or -1 (out of memory). */
static int own_handles(cx_curl *d, cx_engine *e)
{
    long pid = (long)getpid();
    if (d->pid != pid) {
        uint64_t seed;
        drop_inherited(d);
        if (cx_seed(&seed) == 0) cx_engine_reseed(e, seed);
        else cx_engine_reseed(e, (uint64_t)time(NULL) ^ ((uint64_t)pid << 32));
        d->pid = pid;
    }
    if (d->multi) return 0;
    free_handles(d);
    return make_handles(d);
}

cx_curl *cx_curl_new(const char *ca_file, int debug, char *why, size_t whylen)
{
    cx_curl *d = calloc(1, sizeof *d);
    if (!d) { snprintf(why, whylen, "out of memory creating the client"); return NULL; }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        free(d);
        snprintf(why, whylen, "libcurl failed to initialise");
        return NULL;
    }
    d->pid = (long)getpid(); /* also says curl_global_init was called */
    d->debug = debug;
    /* the environment's no_proxy is honoured, and loopback is never proxied */
    const char *np = getenv("no_proxy");
    if (!np || !*np) np = getenv("NO_PROXY");
    size_t nl = sizeof LOOPBACK_HOSTS + (np ? strlen(np) + 1 : 0);
    d->noproxy = malloc(nl);
    if (d->noproxy) snprintf(d->noproxy, nl, "%s%s%s", LOOPBACK_HOSTS, np && *np ? "," : "", np && *np ? np : "");
    d->ca_file = ca_file ? strdup(ca_file) : NULL;
    if (!d->noproxy || (ca_file && !d->ca_file) || make_handles(d) != 0) {
        cx_curl_free(d);
        snprintf(why, whylen, "out of memory creating the libcurl handles");
        return NULL;
    }
    return d;
}

void cx_curl_free(cx_curl *d)
{
    if (!d) return;
    if (d->pid && d->pid != (long)getpid()) drop_inherited(d); /* closed in a forked child */
    else free_handles(d);
    if (d->pid) curl_global_cleanup();
    free(d->socks);
    free(d->ca_file);
    free(d->noproxy);
    free(d);
}

/* ---- transfers ---- */

static int take_slot(cx_curl *d)
{
    for (int i = 0; i < d->neasy; i++)
        if (!d->busy[i]) return i;
    if (d->neasy >= CXD_MAX_CONCURRENCY) return -1;
    CURL *e = curl_easy_init();
    if (!e) return -1;
    d->easy[d->neasy] = e;
    memset(&d->slot[d->neasy], 0, sizeof d->slot[d->neasy]);
    return d->neasy++;
}

/* Options that never change for a handle, set once. */
static CURLcode configure(cx_curl *d, slot_t *s)
{
    CURL *e = s->easy;
    CURLcode rc = CURLE_OK;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (d->ca_file) {
        SET(CURLOPT_CAINFO, d->ca_file);
        SET(CURLOPT_CAPATH, (char *)NULL); /* no per-connection directory scan */
        SET(CURLOPT_PROXY_CAINFO, d->ca_file);
    }
    SET(CURLOPT_NOPROXY, d->noproxy);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, s);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, s);
    SET(CURLOPT_READFUNCTION, on_read);
    SET(CURLOPT_READDATA, s);
    SET(CURLOPT_SEEKFUNCTION, on_seek);
    SET(CURLOPT_SEEKDATA, s);
    SET(CURLOPT_ERRORBUFFER, s->errbuf);
    SET(CURLOPT_PRIVATE, s);
    SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    SET(CURLOPT_OPENSOCKETDATA, d);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    SET(CURLOPT_CLOSESOCKETDATA, d);
    if (d->debug) {
        SET(CURLOPT_DEBUGFUNCTION, on_debug);
        SET(CURLOPT_DEBUGDATA, s);
        SET(CURLOPT_VERBOSE, 1L);
    }
#undef SET
    return rc;
}

/* Starts rq for call c; 0, or -1 with the engine told why (the call moves on). */
static int start(cx_curl *d, cx_engine *e, cx_call *c, const cx_request *rq, double now)
{
    int i = take_slot(d);
    if (i < 0) {
        cx_call_neterr(e, c, now, CX_NE_MEMORY, "out of memory creating a libcurl handle");
        return -1;
    }
    slot_t *s = &d->slot[i];
    s->d = d;
    s->e = e;
    s->c = c;
    s->easy = d->easy[i];
    s->kind = rq->kind;
    s->id = c->id;
    s->body = rq->body;
    s->body_len = rq->body ? rq->body_len : 0;
    s->body_pos = 0;
    s->errbuf[0] = '\0';
    curl_slist_free_all(s->hdrs);
    s->hdrs = NULL;
    CURLcode rc = CURLE_OK;
    if (!s->configured) {
        rc = configure(d, s);
        s->configured = rc == CURLE_OK;
    }
    for (int k = 0; k < rq->nlines && rc == CURLE_OK; k++) {
        struct curl_slist *l = curl_slist_append(s->hdrs, rq->lines[k]);
        if (!l) rc = CURLE_OUT_OF_MEMORY;
        else s->hdrs = l;
    }
    struct curl_slist *l = rc == CURLE_OK ? curl_slist_append(s->hdrs, "Expect:") : NULL;
    if (l) s->hdrs = l;
    else rc = CURLE_OUT_OF_MEMORY;
    CURL *h = s->easy;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(h, opt, val); } while (0)
    SET(CURLOPT_URL, rq->url);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)ceil(rq->connect_timeout * 1000.0));
    SET(CURLOPT_TIMEOUT_MS, (long)ceil(rq->timeout * 1000.0));
    /* plain http:// is never sent through a proxy; https only through a CONNECT tunnel */
    int plain = strncasecmp(rq->url, "http://", 7) == 0;
    SET(CURLOPT_PROXY, plain ? "" : (char *)NULL);
    SET(CURLOPT_HTTPPROXYTUNNEL, plain ? 0L : 1L);
    if (!rq->body) {
        SET(CURLOPT_CUSTOMREQUEST, (char *)NULL);
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDS, (char *)NULL);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body_len);
        SET(CURLOPT_CUSTOMREQUEST, strcmp(rq->method, "POST") == 0 ? (char *)NULL : rq->method);
    }
    SET(CURLOPT_HTTPHEADER, s->hdrs);
#undef SET
    if (rc != CURLE_OK) {
        char why[200];
        snprintf(why, sizeof why, "libcurl refused an option: %s", curl_easy_strerror(rc));
        cx_call_neterr(e, c, now, rc == CURLE_OUT_OF_MEMORY ? CX_NE_MEMORY : CX_NE_CONFIG, why);
        s->c = NULL;
        return -1;
    }
    if (curl_multi_add_handle(d->multi, h) != CURLM_OK) {
        cx_call_neterr(e, c, now, CX_NE_MEMORY, "libcurl could not start the transfer");
        s->c = NULL;
        return -1;
    }
    d->busy[i] = 1;
    return 0;
}

static int cc_kind(CURLcode cc, const cx_call *c)
{
    switch (cc) {
    case CURLE_COULDNT_CONNECT: return CX_NE_REFUSED;
    case CURLE_COULDNT_RESOLVE_HOST: case CURLE_COULDNT_RESOLVE_PROXY: return CX_NE_RESOLVE;
    case CURLE_OPERATION_TIMEDOUT: return CX_NE_TIMEOUT;
    case CURLE_SEND_FAIL_REWIND: return CX_NE_REWIND;
    case CURLE_SEND_ERROR: case CURLE_RECV_ERROR: case CURLE_GOT_NOTHING: case CURLE_PARTIAL_FILE:
    case CURLE_HTTP2: case CURLE_HTTP2_STREAM:
        return CX_NE_RESET;
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_INVALIDCERTSTATUS: case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED: case CURLE_SSL_ENGINE_NOTFOUND: case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED: case CURLE_SSL_SHUTDOWN_FAILED: case CURLE_SSL_CLIENTCERT:
        return CX_NE_TLS;
    case CURLE_OUT_OF_MEMORY: return CX_NE_MEMORY;
    case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_URL_MALFORMAT: return CX_NE_CONFIG;
    case CURLE_WRITE_ERROR:
        return c->answer_too_large ? CX_NE_TOO_LARGE : c->resp.oom ? CX_NE_MEMORY : CX_NE_OTHER;
    default: return CX_NE_OTHER;
    }
}

/* A transfer ended: its answer or failure goes to the engine. */
static void ended(cx_curl *d, CURL *h, CURLcode cc)
{
    slot_t *s = NULL;
    curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&s);
    curl_multi_remove_handle(d->multi, h);
    if (!s) return;
    int i = (int)(s - d->slot);
    if (i >= 0 && i < d->neasy) d->busy[i] = 0;
    cx_call *c = s->c;
    s->c = NULL;
    if (!c) return;
    double now = cx_curl_now();
    if (cc == CURLE_OK) {
        long st = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &st);
        cx_call_answer(s->e, c, now, st);
    } else {
        char why[CURL_ERROR_SIZE + 96];
        snprintf(why, sizeof why, "%s%s%s", curl_easy_strerror(cc), s->errbuf[0] ? ": " : "", s->errbuf);
        cx_call_neterr(s->e, c, now, cc_kind(cc, c), why);
    }
}

void cx_curl_run(cx_curl *d, cx_engine *e, cx_call **calls, size_t n, int concurrency,
                 int stop_on_failure, cx_curl_done_fn done, void *ud, unsigned char *skipped)
{
    if (concurrency < 1) concurrency = 1;
    if (concurrency > CXD_MAX_CONCURRENCY) concurrency = CXD_MAX_CONCURRENCY;
    if (own_handles(d, e) != 0) { /* a forked child could not make its own handles */
        for (size_t i = 0; i < n; i++) {
            if (!calls[i]->done) cx_call_fail_early(e, calls[i], "memory",
                                                    "out of memory creating the libcurl handles");
            if (done) done(ud, calls[i]);
        }
        return;
    }
    cx_call *act[CXD_MAX_CONCURRENCY]; /* admitted, not done */
    unsigned char out[CXD_MAX_CONCURRENCY];  /* its request is out */
    int nact = 0, stop = 0;
    size_t next = 0, ndone = 0;
    for (;;) {
        double now = cx_curl_now(), wake = now + 1.0;
        /* admit */
        while (next < n && nact < concurrency && !stop) {
            out[nact] = 0;
            act[nact++] = calls[next++];
        }
        /* ask the engine what each admitted call wants */
        int k = 0;
        for (int i = 0; i < nact; i++) {
            cx_call *c = act[i];
            int busy = out[i];
            if (!busy) {
                cx_request rq;
                int r;
                while ((r = cx_call_next(e, c, now, &rq)) == CX_SEND) {
                    if (start(d, e, c, &rq, now) == 0) { busy = 1; break; }
                }
                if (r == CX_WAIT && rq.wake < wake) wake = rq.wake;
                if (r == CX_DONE) {
                    if (done) done(ud, c);
                    ndone++;
                    if (stop_on_failure && !cx_call_ok(c)) stop = 1;
                    continue; /* leaves act */
                }
            }
            out[k] = (unsigned char)busy;
            act[k++] = c;
        }
        nact = k;
        if (stop) { /* the calls not admitted are not started */
            for (; next < n; next++) {
                if (skipped) skipped[next] = 1;
                ndone++;
            }
        }
        if (ndone == n) break;
        if (next < n && nact < concurrency && !stop) continue; /* a slot is free: admit */

        /* drive libcurl */
        int running = 0, progressed = 0;
        curl_multi_perform(d->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(d->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE) continue;
            CURL *h = m->easy_handle;
            slot_t *s = NULL;
            curl_easy_getinfo(h, CURLINFO_PRIVATE, (char **)&s);
            for (int i = 0; i < nact; i++)
                if (s && act[i] == s->c) out[i] = 0;
            ended(d, h, m->data.result);
            progressed = 1;
        }
        if (progressed) continue;
        now = cx_curl_now();
        long ms = (long)ceil((wake - now) * 1000.0);
        if (ms < 0) ms = 0;
        if (ms > 1000) ms = 1000;
        curl_multi_poll(d->multi, NULL, 0, (int)ms, NULL);
    }
}
