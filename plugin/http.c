/* http: libcurl transport for cxone.Client: one multi handle per client, retries with
 * backoff and Retry-After, the OAuth2 token cache, a redacting debug trace, and fresh handles
 * in a forked child. Nothing here calls Lua. */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "http.h"

#define REDACTED "[redacted]"

double cxone_http_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- wiping buffers ---- */

void cxone_sbuf_reserve(cxone_buf *b, size_t need)
{
    if (b->oom || need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 512;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *p = malloc(cap);
    if (!p) { b->oom = 1; return; }
    if (b->p) {
        memcpy(p, b->p, b->len);
        OPENSSL_cleanse(b->p, b->cap);
        free(b->p);
    }
    p[b->len] = '\0';
    b->p = p;
    b->cap = cap;
}

void cxone_sbuf_add(cxone_buf *b, const void *s, size_t n)
{
    if (b->oom) return;
    if (n > SIZE_MAX - b->len - 1) { b->oom = 1; return; }
    cxone_sbuf_reserve(b, b->len + n + 1);
    if (b->oom) return;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sbuf_adds(cxone_buf *b, const char *s) { cxone_sbuf_add(b, s, strlen(s)); }

void cxone_sbuf_wipe(cxone_buf *b)
{
    if (b->p) {
        OPENSSL_cleanse(b->p, b->cap);
        free(b->p);
    }
    cxone_buf_init(b);
}

char *cxone_sdup(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}

void cxone_sfree(char **p)
{
    if (*p) {
        OPENSSL_cleanse(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

/* ---- scrubbing ---- */

void cxone_scrub_value(char *s, size_t cap, const char *secret, size_t slen)
{
    static const size_t rl = sizeof REDACTED - 1;
    if (!s || !secret || slen < 4 || cap == 0) return;
    char *hit;
    size_t from = 0;
    while ((hit = memmem(s + from, strlen(s + from), secret, slen)) != NULL) {
        size_t pos = (size_t)(hit - s), len = strlen(s);
        size_t tail = len - pos - slen;
        size_t newlen = pos + rl + tail;
        if (newlen + 1 > cap) { /* no room: cut the message at the secret */
            s[pos] = '\0';
            if (pos + rl + 1 <= cap) memcpy(s + pos, REDACTED, rl + 1);
            return;
        }
        memmove(s + pos + rl, s + pos + slen, tail + 1);
        memcpy(s + pos, REDACTED, rl);
        from = pos + rl;
    }
}

void cxone_http_scrub(const cxone_http *h, char *s, size_t cap)
{
    if (!h) return;
    const char *secrets[] = {h->client_secret, h->key_secret};
    for (size_t i = 0; i < 2; i++)
        if (secrets[i]) cxone_scrub_value(s, cap, secrets[i], strlen(secrets[i]));
    if (h->bearer_hdr) {
        const char *t = h->bearer_hdr + h->bearer_prefix;
        cxone_scrub_value(s, cap, t, strlen(t));
    }
}

/* ---- randomness ---- */

static uint64_t rng_next(cxone_http *h)
{
    /* xorshift64*, seeded from the CSPRNG; only used for backoff jitter */
    uint64_t x = h->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    h->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static double rng_unit(cxone_http *h) { return (double)(rng_next(h) >> 11) / 9007199254740992.0; }

int cxone_http_uuid4(char out[37])
{
    unsigned char b[16];
    static const char hex[] = "0123456789abcdef";
    if (RAND_bytes(b, sizeof b) != 1) return -1;
    b[6] = (unsigned char)((b[6] & 0x0F) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3F) | 0x80);
    char *o = out;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10) *o++ = '-';
        *o++ = hex[b[i] >> 4];
        *o++ = hex[b[i] & 15];
    }
    *o = '\0';
    return 0;
}

/* ---- transfers ---- */

void cxone_xfer_init(cxone_xfer *x)
{
    memset(x, 0, sizeof *x);
    cxone_buf_init(&x->body);
    cxone_buf_init(&x->resp);
    x->retry_after = -1;
}

void cxone_xfer_reset(cxone_xfer *x)
{
    free(x->url);
    cxone_sbuf_wipe(&x->body);
    cxone_sbuf_wipe(&x->resp);
    curl_slist_free_all(x->headers);
    cxone_sfree(&x->auth_hdr);
    cxone_xfer_init(x);
}

int cxone_xfer_header(cxone_xfer *x, const char *line)
{
    struct curl_slist *l = curl_slist_append(x->headers, line);
    if (!l) return -1;
    x->headers = l;
    return 0;
}

static void xfer_fail(cxone_xfer *x, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void xfer_fail(cxone_xfer *x, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->fail_msg, sizeof x->fail_msg, fmt, ap);
    va_end(ap);
    x->fail_code = code;
    cxone_http_scrub(x->h, x->fail_msg, sizeof x->fail_msg);
}

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

/* Control characters (and bytes >= 0x7f) never reach the terminal raw: a server's header
 * could carry escape sequences, and a request could carry CR/LF/NUL. */
static void trace_clean(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s >= 0x7f) *s = '?';
}

/* Prints one line: header values that carry credentials are cut, query strings in request
 * lines are hidden, and any known secret left anywhere is replaced. */
static void trace_line(const cxone_xfer *x, const char *dir, const char *line, size_t n)
{
    char buf[1024];
    while (n && (line[n - 1] == '\r' || line[n - 1] == '\n')) n--;
    if (n == 0) return;
    if (n > sizeof buf - 64) n = sizeof buf - 64;
    size_t len = 0;
    int cut = header_is_secret(line, n);
    /* HTTP/2 pseudo-header dumps in curl's text ("[authorization: Bearer ...]") */
    const char *lb = NULL;
    for (size_t i = 0; i + 14 < n && !cut; i++)
        if (strncasecmp(line + i, "authorization:", 14) == 0) { lb = line + i; cut = (int)(i + 14); }
    if (cut) {
        memcpy(buf, line, (size_t)cut);
        len = (size_t)cut;
        memcpy(buf + len, " " REDACTED, sizeof REDACTED);
        len += sizeof REDACTED;
        (void)lb;
    } else {
        memcpy(buf, line, n);
        len = n;
        /* request line: METHOD target HTTP/x — hide the query (webhook URLs may carry tokens) */
        if (strcmp(dir, ">") == 0) {
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
    hide_queries(buf, sizeof buf);
    cxone_http_scrub(x->h, buf, sizeof buf);
    trace_clean(buf);
    fprintf(stderr, "cxone[%d] %s %s\n", x->id, dir, buf);
}

static void trace_lines(const cxone_xfer *x, const char *dir, const char *data, size_t n)
{
    while (n) {
        const char *nl = memchr(data, '\n', n);
        size_t k = nl ? (size_t)(nl - data) + 1 : n;
        trace_line(x, dir, data, k);
        data += k;
        n -= k;
    }
}

/* The token request body is form-encoded: show field names, hide credential values. */
static void trace_form(const cxone_xfer *x, const char *data, size_t n)
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
    cxone_http_scrub(x->h, buf, sizeof buf);
    trace_clean(buf);
    fprintf(stderr, "cxone[%d] > %s\n", x->id, buf);
}

static int on_debug(CURL *e, curl_infotype type, char *data, size_t size, void *ud)
{
    const cxone_xfer *x = ud;
    (void)e;
    switch (type) {
    case CURLINFO_TEXT: trace_lines(x, "*", data, size); break;
    case CURLINFO_HEADER_OUT: trace_lines(x, ">", data, size); break;
    case CURLINFO_HEADER_IN: trace_lines(x, "<", data, size); break;
    case CURLINFO_DATA_OUT:
        if (x->kind == CXH_TOKEN) trace_form(x, data, size);
        else fprintf(stderr, "cxone[%d] > [%zu bytes of request body not shown]\n", x->id, size);
        break;
    case CURLINFO_DATA_IN:
        fprintf(stderr, "cxone[%d] < [%zu bytes of response body not shown]\n", x->id, size);
        break;
    default: break;
    }
    return 0;
}

static void trace_event(const cxone_http *h, const cxone_xfer *x, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void trace_event(const cxone_http *h, const cxone_xfer *x, const char *fmt, ...)
{
    if (!h->debug) return;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    cxone_http_scrub(h, buf, sizeof buf);
    trace_clean(buf);
    fprintf(stderr, "cxone[%d] * %s\n", x ? x->id : 0, buf);
}

/* ---- libcurl callbacks ---- */

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    cxone_xfer *x = ud;
    size_t n = size * nmemb;
    if (x->resp.len + n > CXH_MAX_RESPONSE) { x->too_large = 1; return 0; }
    cxone_sbuf_add(&x->resp, data, n);
    return x->resp.oom ? 0 : n;
}

static double parse_retry_after(const char *v)
{
    const char *p = v;
    while (*p >= '0' && *p <= '9') p++;
    if (p != v && *p == '\0') {
        double s = strtod(v, NULL);
        return s > 1e7 ? 1e7 : s;
    }
    time_t when = curl_getdate(v, NULL);
    if (when == (time_t)-1) return -1;
    double d = difftime(when, time(NULL));
    return d < 0 ? 0 : d;
}

/* An entity-tag as RFC 9110 has it ([W/]"<printable ASCII except the quote>"), of at most
 * 255 bytes: it goes back to the server in If-Match, so anything else is refused rather than
 * stored cut or dropped (a dropped one would make the next write unconditional). */
static int etag_ok(const char *v, size_t n)
{
    if (n >= 256) return 0;
    if (n >= 2 && v[0] == 'W' && v[1] == '/') { v += 2; n -= 2; }
    if (n < 2 || v[0] != '"' || v[n - 1] != '"') return 0;
    for (size_t i = 1; i + 1 < n; i++)
        if ((unsigned char)v[i] < 0x21 || (unsigned char)v[i] > 0x7e || v[i] == '"') return 0;
    return 1;
}

int cxone_etag_ok(const char *v, size_t n) { return etag_ok(v, n); }

static size_t on_header(char *data, size_t size, size_t nitems, void *ud)
{
    cxone_xfer *x = ud;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) { /* a new response (after 1xx too) */
        x->etag[0] = '\0';
        x->bad_etag = 0;
        x->retry_after = -1;
        return n;
    }
    const char *colon = memchr(data, ':', n);
    if (!colon) return n;
    size_t kl = (size_t)(colon - data);
    const char *v = colon + 1, *end = data + n;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t')) end--;
    size_t vl = (size_t)(end - v);
    char tmp[256];
    if (kl == 4 && strncasecmp(data, "etag", 4) == 0) {
        if (etag_ok(v, vl)) {
            memcpy(x->etag, v, vl);
            x->etag[vl] = '\0';
        } else {
            x->etag[0] = '\0';
            x->bad_etag = 1;
        }
    } else if (kl == 11 && strncasecmp(data, "retry-after", 11) == 0 && vl < sizeof tmp) {
        memcpy(tmp, v, vl);
        tmp[vl] = '\0';
        x->retry_after = parse_retry_after(tmp);
    }
    return n;
}

/* ---- the transport object ---- */

cxone_http *cxone_http_new(void)
{
    cxone_http *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    cxone_xfer_init(&h->tok);
    h->tok.h = h;
    return h;
}

/* ---- fork safety ----
 * libcurl's handles must never be used in two processes (its documentation says so): after a
 * fork the pooled connections, their TLS state and HTTP/2 streams are still the parent's, and a
 * child writing on them would mix its requests into the parent's (one answer for the other).
 * So the handles remember the process that made them (h->pid), and a client used or closed in
 * another process abandons the inherited handles and, when used, makes new ones over new
 * connections. The token cache is kept (a token is not tied to a connection); the backoff
 * jitter is reseeded from the CSPRNG so that parent and children do not retry in step.
 *
 * Abandoning must put nothing on the parent's sockets: curl's teardown of a TLS connection
 * reads from it (taking bytes meant for the parent) and sends close_notify, and on HTTP/2 it
 * may send a GOAWAY, any of which ends the parent's connection; it also closes descriptor
 * numbers the child may have closed and reused for files of its own (curl's internal wakeup
 * socket pair cannot even be told apart from those). So the child never runs curl's teardown
 * on inherited handles: it leaks them, kept reachable (keep_forever), and only closes its copies
 * of the connection sockets, which on_open_socket records for every socket curl opens
 * (descriptor and inode, so that a number reused since is left alone). Closing a copy says
 * nothing on the wire (the parent still holds the socket) and lets the server see the
 * connection end when the parent ends it. The leak costs no physical memory until touched (the
 * pages are shared with the parent, copy-on-write) and two descriptors (curl's wakeup pair) per
 * inherited client. */

static curl_socket_t on_open_socket(void *ud, curlsocktype purpose, struct curl_sockaddr *a)
{
    cxone_http *h = ud;
    (void)purpose;
    if (h->nsocks == h->capsocks) {
        size_t cap = h->capsocks ? h->capsocks * 2 : 8;
        struct cxone_http_sock *p = realloc(h->socks, cap * sizeof *p);
        if (!p) return CURL_SOCKET_BAD; /* curl reports it as a failed connect */
        h->socks = p;
        h->capsocks = cap;
    }
    int fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
    if (fd < 0) return CURL_SOCKET_BAD;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return CURL_SOCKET_BAD;
    }
    h->socks[h->nsocks].fd = fd;
    h->socks[h->nsocks].ino = (unsigned long long)st.st_ino;
    h->nsocks++;
    return fd;
}

static int on_close_socket(void *ud, curl_socket_t fd)
{
    cxone_http *h = ud;
    for (size_t i = 0; i < h->nsocks; i++)
        if (h->socks[i].fd == fd) {
            h->socks[i] = h->socks[--h->nsocks];
            break;
        }
    return close(fd);
}

static void reseed(cxone_http *h)
{
    uint64_t seed = 0;
    if (RAND_bytes((unsigned char *)&seed, sizeof seed) != 1) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)ts.tv_nsec;
    }
    h->rng = seed | 1;
}

/* Makes the multi handle and the token's easy handle; 0, or -1 (nothing left half made). */
static int make_handles(cxone_http *h)
{
    h->multi = curl_multi_init();
    h->tok_easy = curl_easy_init();
    if (!h->multi || !h->tok_easy) {
        if (h->tok_easy) curl_easy_cleanup(h->tok_easy);
        if (h->multi) curl_multi_cleanup(h->multi);
        h->multi = NULL;
        h->tok_easy = NULL;
        return -1;
    }
    /* connections are pooled in the multi handle; allow one per concurrent transfer */
    curl_multi_setopt(h->multi, CURLMOPT_MAXCONNECTS, (long)CXH_MAX_CONCURRENCY);
    return 0;
}

/* Frees the handles (closing their connections) and forgets them. */
static void free_handles(cxone_http *h)
{
    /* the engine never returns with handles attached, but be defensive */
    for (int i = 0; i < h->neasy; i++) {
        if (h->multi) curl_multi_remove_handle(h->multi, h->easy[i]);
        curl_easy_cleanup(h->easy[i]);
    }
    if (h->tok_easy) {
        if (h->multi) curl_multi_remove_handle(h->multi, h->tok_easy);
        curl_easy_cleanup(h->tok_easy);
    }
    if (h->multi) curl_multi_cleanup(h->multi);
    h->multi = NULL;
    h->tok_easy = NULL;
    h->neasy = h->nfree = 0;
}

/* Inherited handles stay reachable from here, never freed (a leak checker does not count them
 * as lost); a lock-free push, for hosts with threads. */
struct kept_handles {
    struct kept_handles *next;
    CURLM *multi;
    CURL *tok_easy;
    int neasy;
    CURL *easy[CXH_MAX_CONCURRENCY];
};
static struct kept_handles *kept;

static void keep_forever(const cxone_http *h)
{
    if (!h->multi && !h->tok_easy && h->neasy == 0) return;
    struct kept_handles *k = malloc(sizeof *k);
    if (!k) return; /* then lost for real, which is all the difference */
    k->multi = h->multi;
    k->tok_easy = h->tok_easy;
    k->neasy = h->neasy;
    memcpy(k->easy, h->easy, sizeof k->easy);
    k->next = __atomic_load_n(&kept, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(&kept, &k->next, k, 0, __ATOMIC_RELEASE, __ATOMIC_RELAXED)) {}
}

/* In a forked child: closes this process's copies of the inherited connection sockets (those
 * whose number still names the same socket) and abandons the handles (see above). */
static void drop_inherited(cxone_http *h)
{
    for (size_t i = 0; i < h->nsocks; i++) {
        struct stat st;
        if (fstat(h->socks[i].fd, &st) == 0 && S_ISSOCK(st.st_mode)
            && (unsigned long long)st.st_ino == h->socks[i].ino)
            close(h->socks[i].fd);
    }
    h->nsocks = 0;
    keep_forever(h);
    h->multi = NULL;
    h->tok_easy = NULL;
    h->neasy = h->nfree = 0;
}

/* Makes the handles usable in this process: fresh ones in a forked child, and again after an
 * earlier failure to make them. 0, or -1 (out of memory). */
static int own_handles(cxone_http *h)
{
    long pid = (long)getpid();
    if (h->pid != pid) {
        drop_inherited(h);
        reseed(h);
        h->pid = pid;
    }
    if (h->multi && h->tok_easy) return 0;
    free_handles(h);
    return make_handles(h);
}

int cxone_http_start(cxone_http *h, char *err, size_t errlen)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "libcurl failed to initialise");
        return -1;
    }
    h->pid = (long)getpid(); /* also says curl_global_init was called */
    if (make_handles(h) != 0) {
        snprintf(err, errlen, "out of memory creating the libcurl handles");
        return -1;
    }
    reseed(h);
    return 0;
}

static void drop_token(cxone_http *h)
{
    cxone_sfree(&h->bearer_hdr);
    free(h->token_scope);
    h->token_scope = NULL;
    h->bearer_prefix = 0;
    h->token_expiry = h->token_refresh_at = 0;
}

void cxone_http_free(cxone_http *h)
{
    if (!h) return;
    if (h->pid && h->pid != (long)getpid()) drop_inherited(h); /* closed in a forked child */
    else free_handles(h);
    if (h->pid) curl_global_cleanup();
    free(h->socks);
    cxone_xfer_reset(&h->tok);
    drop_token(h);
    cxone_sfree(&h->client_secret);
    cxone_sfree(&h->key_secret);
    cxone_sfree(&h->client_id);
    cxone_sfree(&h->key_id);
    free(h->scope);
    free(h->ca_file);
    free(h->user_agent);
    free(h->base_url);
    free(h->token_url);
    OPENSSL_cleanse(h, sizeof *h);
    free(h);
}

double cxone_http_token_ttl(cxone_http *h)
{
    if (!h->bearer_hdr) return -1;
    double ttl = h->token_expiry - cxone_http_now();
    return ttl > 0 ? ttl : 0;
}

static int token_fresh(const cxone_http *h, double now)
{
    return h->bearer_hdr && now < h->token_refresh_at;
}

/* ---- the token request ---- */

static void form_escape(cxone_buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            cxone_sbuf_add(b, s, 1);
        } else {
            char e[3] = {'%', hex[c >> 4], hex[c & 15]};
            cxone_sbuf_add(b, e, 3);
        }
    }
}

static void form_field(cxone_buf *b, const char *k, const char *v)
{
    if (b->len) cxone_sbuf_add(b, "&", 1);
    sbuf_adds(b, k);
    cxone_sbuf_add(b, "=", 1);
    form_escape(b, v);
}

/* "Authorization: Basic base64(id:secret)" into a wiped, malloc'ed string. */
static char *basic_header(const char *id, const char *secret)
{
    cxone_buf raw;
    cxone_buf_init(&raw);
    sbuf_adds(&raw, id);
    cxone_sbuf_add(&raw, ":", 1);
    sbuf_adds(&raw, secret);
    if (raw.oom) { cxone_sbuf_wipe(&raw); return NULL; }
    static const char pre[] = "Authorization: Basic ";
    size_t enc = 4 * ((raw.len + 2) / 3);
    char *out = malloc(sizeof pre + enc + 1);
    if (out) {
        memcpy(out, pre, sizeof pre - 1);
        EVP_EncodeBlock((unsigned char *)out + sizeof pre - 1, (const unsigned char *)raw.p, (int)raw.len);
    }
    cxone_sbuf_wipe(&raw);
    return out;
}

/* Builds h->tok for one token exchange; returns 0 or -1 on oom. */
static int prepare_token(cxone_http *h)
{
    cxone_xfer *x = &h->tok;
    cxone_xfer_reset(x);
    x->h = h;
    x->kind = CXH_TOKEN;
    x->retry_policy = CXH_RETRY_ALL;
    x->method = "POST";
    x->has_body = 1;
    x->url = cxone_sdup(h->token_url);
    if (!x->url) return -1;
    cxone_sbuf_reserve(&x->body, 1024);
    if (h->key_id) {
        form_field(&x->body, "grant_type", "password");
        form_field(&x->body, "username", h->key_id);
        form_field(&x->body, "password", h->key_secret);
        x->auth_hdr = basic_header(h->client_id, h->client_secret);
        if (!x->auth_hdr) return -1;
    } else if (h->basic_auth) {
        form_field(&x->body, "grant_type", "client_credentials");
        x->auth_hdr = basic_header(h->client_id, h->client_secret);
        if (!x->auth_hdr) return -1;
    } else {
        form_field(&x->body, "grant_type", "client_credentials");
        form_field(&x->body, "client_id", h->client_id);
        form_field(&x->body, "client_secret", h->client_secret);
    }
    if (h->scope && *h->scope) form_field(&x->body, "scope", h->scope);
    if (x->body.oom) return -1;
    if (cxone_xfer_header(x, "Content-Type: application/x-www-form-urlencoded") != 0
        || cxone_xfer_header(x, "Accept: application/json") != 0)
        return -1;
    return 0;
}

/* A minimal scanner for the flat JSON object the token endpoint answers, so that the token
 * never becomes a (non-wipeable) Lua string. Finds top-level `key`; for strings copies the
 * unescaped value into a malloc'ed string (*str), for numbers sets *num. Returns 1 if found
 * with the expected type, 0 if absent or of another type, -1 if the text is not JSON. */
static const char *js_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')) p++;
    return p;
}

static const char *js_string(const char *p, const char *e, cxone_buf *out)
{
    if (p >= e || *p != '"') return NULL;
    for (p++; p < e; p++) {
        char c = *p;
        if (c == '"') return p + 1;
        if ((unsigned char)c < 0x20) return NULL;
        if (c == '\\') {
            if (++p >= e) return NULL;
            switch (*p) {
            case '"': case '\\': case '/': c = *p; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u': /* not expected in these fields: keep it escaped, i.e. fail validation later */
                if (e - p < 5) return NULL;
                if (out) cxone_sbuf_add(out, "\\", 1);
                c = 'u';
                break;
            default: return NULL;
            }
        }
        if (out) cxone_sbuf_add(out, &c, 1);
    }
    return NULL;
}

static const char *js_skip(const char *p, const char *e, int depth)
{
    p = js_ws(p, e);
    if (p >= e || depth > 32) return NULL;
    if (*p == '"') return js_string(p, e, NULL);
    if (*p == '{' || *p == '[') {
        char close = *p == '{' ? '}' : ']';
        p = js_ws(p + 1, e);
        if (p < e && *p == close) return p + 1;
        for (;;) {
            if (close == '}') {
                p = js_string(js_ws(p, e), e, NULL);
                if (!p) return NULL;
                p = js_ws(p, e);
                if (p >= e || *p != ':') return NULL;
                p++;
            }
            p = js_skip(p, e, depth + 1);
            if (!p) return NULL;
            p = js_ws(p, e);
            if (p >= e) return NULL;
            if (*p == close) return p + 1;
            if (*p != ',') return NULL;
            p++;
        }
    }
    const char *s = p;
    while (p < e && (isalnum((unsigned char)*p) || *p == '-' || *p == '+' || *p == '.')) p++;
    return p > s ? p : NULL;
}

/* Walks the top-level members of the JSON object text s[0..n) and points *value at the value
 * of the last member named key. Returns 1 found, 0 absent, -1 not a well-formed object. Keys
 * are decoded into wiped scratch buffers: the text may hold a token. */
static int js_member(const char *s, size_t n, const char *key, const char **value)
{
    const char *p = js_ws(s, s + n), *e = s + n;
    if (p >= e || *p != '{') return -1;
    p = js_ws(p + 1, e);
    if (p < e && *p == '}') return 0;
    int found = 0;
    for (;;) {
        cxone_buf k;
        cxone_buf_init(&k);
        p = js_string(js_ws(p, e), e, &k);
        int match = p && !k.oom && k.len == strlen(key) && memcmp(k.p, key, k.len) == 0;
        cxone_sbuf_wipe(&k);
        if (!p) return -1;
        p = js_ws(p, e);
        if (p >= e || *p != ':') return -1;
        p = js_ws(p + 1, e);
        if (match) {
            *value = p;
            found = 1;
        }
        p = js_skip(p, e, 0);
        if (!p) return -1;
        p = js_ws(p, e);
        if (p >= e) return -1;
        if (*p == '}') return found;
        if (*p != ',') return -1;
        p++;
    }
}

/* Reads the member key as a string (into str) or a number (into num). */
static int js_field(const char *s, size_t n, const char *key, cxone_buf *str, double *num)
{
    const char *v = NULL, *e = s + n;
    int rc = js_member(s, n, key, &v);
    if (rc != 1) return rc;
    if (str && *v == '"') {
        str->len = 0;
        if (!js_string(v, e, str) || str->oom) return -1;
        return 1;
    }
    if (num && (*v == '-' || (*v >= '0' && *v <= '9'))) {
        char *endp;
        *num = strtod(v, &endp);
        return 1;
    }
    return 0;
}

static int token_chars_ok(const char *s, size_t n)
{
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return 0;
    return 1;
}

/* Copies the OAuth "error" field (sanitised) for messages. */
static void oauth_error(const cxone_xfer *x, char *out, size_t cap)
{
    cxone_buf b;
    cxone_buf_init(&b);
    out[0] = '\0';
    if (js_field(x->resp.p ? x->resp.p : "", x->resp.len, "error", &b, NULL) == 1 && !b.oom) {
        size_t j = 0;
        for (size_t i = 0; i < b.len && j + 1 < cap; i++)
            if (islower((unsigned char)b.p[i]) || b.p[i] == '_') out[j++] = b.p[i];
        out[j] = '\0';
    }
    cxone_sbuf_wipe(&b);
}

static const char *cc_code(CURLcode cc)
{
    switch (cc) {
    case CURLE_SSL_CONNECT_ERROR: case CURLE_PEER_FAILED_VERIFICATION: case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CIPHER: case CURLE_SSL_CACERT_BADFILE: case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH: case CURLE_SSL_INVALIDCERTSTATUS: case CURLE_SSL_CRL_BADFILE:
    case CURLE_USE_SSL_FAILED: case CURLE_SSL_ENGINE_NOTFOUND: case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED: case CURLE_SSL_SHUTDOWN_FAILED: case CURLE_SSL_CLIENTCERT:
        return "tls";
    case CURLE_OUT_OF_MEMORY: return "memory";
    case CURLE_UNSUPPORTED_PROTOCOL: case CURLE_URL_MALFORMAT: return "config";
    default: return "network";
    }
}

static int cc_retryable(CURLcode cc, int policy)
{
    if (policy == CXH_RETRY_SAFE) return cc == CURLE_COULDNT_CONNECT;
    switch (cc) {
    case CURLE_COULDNT_CONNECT: case CURLE_OPERATION_TIMEDOUT: case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR: case CURLE_GOT_NOTHING: case CURLE_PARTIAL_FILE: case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
        return 1;
    default: return 0;
    }
}

static int status_retryable(long st, int policy)
{
    if (policy == CXH_RETRY_SAFE) return st == 429 || st == 503;
    return st == 429 || st == 500 || st == 502 || st == 503 || st == 504;
}

static const char *xfer_what(const cxone_xfer *x)
{
    return x->kind == CXH_TOKEN ? "token request" : x->kind == CXH_WEBHOOK ? "webhook" : "request";
}

static void fail_cc(cxone_xfer *x)
{
    if (x->too_large) {
        xfer_fail(x, "format", "%s: the answer is larger than %u bytes", xfer_what(x), CXH_MAX_RESPONSE);
        return;
    }
    if (x->cc == CURLE_WRITE_ERROR && x->resp.oom) {
        xfer_fail(x, "memory", "%s: out of memory reading the answer", xfer_what(x));
        return;
    }
    const char *code = cc_code(x->cc);
    const char *hint = strcmp(code, "tls") == 0
        ? " (check ca_file: the server's certificate must chain to a trusted CA)" : "";
    xfer_fail(x, code, "%s failed after %d attempt%s: %s%s%s%s", xfer_what(x), x->attempts,
              x->attempts == 1 ? "" : "s", curl_easy_strerror(x->cc), x->errbuf[0] ? ": " : "",
              x->errbuf, hint);
}

/* ---- the engine ---- */

static CURL *take_easy(cxone_http *h)
{
    if (h->nfree > 0) return h->easy[h->free_easy[--h->nfree]];
    if (h->neasy >= CXH_MAX_CONCURRENCY) return NULL;
    CURL *e = curl_easy_init();
    if (!e) return NULL;
    h->easy[h->neasy++] = e;
    return e;
}

static void give_easy(cxone_http *h, CURL *e)
{
    for (int i = 0; i < h->neasy; i++)
        if (h->easy[i] == e) { h->free_easy[h->nfree++] = i; return; }
}

static int start_attempt(cxone_http *h, cxone_xfer *x, CURL *e, double now)
{
    curl_easy_reset(e);
    x->easy = e;
    x->status = 0;
    x->resp.len = 0;
    if (x->resp.p) x->resp.p[0] = '\0';
    x->etag[0] = '\0';
    x->bad_etag = 0;
    x->retry_after = -1;
    x->too_large = 0;
    x->cc = CURLE_OK;
    x->errbuf[0] = '\0';
    x->attempts++;
    if (x->kind == CXH_TOKEN) h->stats.token_requests++;
    else h->stats.attempts++;

    /* headers: our Authorization node in front of the caller's list */
    struct curl_slist *hdrs = x->headers;
    if (x->kind == CXH_API) {
        cxone_sfree(&x->auth_hdr);
        x->auth_hdr = cxone_sdup(h->bearer_hdr);
        if (!x->auth_hdr) return -1;
        x->token_gen = h->token_gen;
    }
    if (x->auth_hdr) {
        x->auth_node.data = x->auth_hdr;
        x->auth_node.next = hdrs;
        hdrs = &x->auth_node;
    }

    long remain = (long)((x->deadline_at - now) * 1000.0);
    if (remain < 1) remain = 1;
    CURLcode rc = CURLE_OK;
#define SET(opt, val) do { if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val); } while (0)
    SET(CURLOPT_URL, x->url);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    SET(CURLOPT_CONNECTTIMEOUT_MS, h->connect_timeout_ms < remain ? h->connect_timeout_ms : remain);
    SET(CURLOPT_TIMEOUT_MS, h->timeout_ms < remain ? h->timeout_ms : remain);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    if (h->ca_file) {
        SET(CURLOPT_CAINFO, h->ca_file);
        SET(CURLOPT_CAPATH, (char *)NULL); /* no per-connection directory scan */
    }
    SET(CURLOPT_USERAGENT, h->user_agent);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, x);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, x);
    SET(CURLOPT_ERRORBUFFER, x->errbuf);
    SET(CURLOPT_PRIVATE, x);
    SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
    SET(CURLOPT_OPENSOCKETDATA, h);
    SET(CURLOPT_CLOSESOCKETFUNCTION, on_close_socket);
    SET(CURLOPT_CLOSESOCKETDATA, h);
    if (strcmp(x->method, "GET") == 0) {
        SET(CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(x->method, "POST") != 0) SET(CURLOPT_CUSTOMREQUEST, x->method);
        SET(CURLOPT_POSTFIELDSIZE, (long)(x->has_body ? x->body.len : 0));
        SET(CURLOPT_POSTFIELDS, x->has_body && x->body.p ? x->body.p : "");
    }
    SET(CURLOPT_HTTPHEADER, hdrs);
    if (h->debug) {
        SET(CURLOPT_DEBUGFUNCTION, on_debug);
        SET(CURLOPT_DEBUGDATA, x);
        SET(CURLOPT_VERBOSE, 1L);
    }
#undef SET
    if (rc != CURLE_OK) {
        xfer_fail(x, "config", "%s: libcurl refused an option: %s", xfer_what(x), curl_easy_strerror(rc));
        return -1;
    }
    if (curl_multi_add_handle(h->multi, e) != CURLM_OK) {
        xfer_fail(x, "memory", "%s: libcurl could not start the transfer", xfer_what(x));
        return -1;
    }
    x->state = CXH_RUNNING;
    return 0;
}

static void finish(cxone_http *h, cxone_xfer *x, double now)
{
    x->state = CXH_DONE;
    /* the caller reads a 2xx API answer now (once), so that a bad one counts as a failure
     * before stop_on_failure looks */
    if (!x->fail_code && x->status >= 200 && x->status < 300 && x->kind == CXH_API
        && x->expect != CXH_EXPECT_ANY && h->on_answer)
        h->on_answer(h->on_answer_ud, x);
    x->failed = x->fail_code != NULL || x->status < 200 || x->status >= 300;
    x->latency_ms = (now - x->first_start) * 1000.0;
    if (x->kind != CXH_TOKEN) h->stats.latency_ms_total += x->latency_ms;
}

/* Schedules another attempt, or finishes the transfer when the budget or deadline is spent.
 * Returns 1 if a retry was scheduled. */
static int schedule_retry(cxone_http *h, cxone_xfer *x, double now, const char *why)
{
    if (x->retries_used >= h->retries) return 0;
    double wait;
    if (x->retry_after >= 0) {
        wait = x->retry_after < h->retry_after_cap ? x->retry_after : h->retry_after_cap;
    } else {
        double ceil_ = h->backoff_base * pow(2.0, x->retries_used);
        if (ceil_ > h->backoff_cap) ceil_ = h->backoff_cap;
        wait = ceil_ * rng_unit(h);
    }
    if (now + wait >= x->deadline_at) {
        trace_event(h, x, "not retrying after %s: waiting %.2f s would pass the %.1f s deadline",
                    why, wait, h->deadline);
        return 0;
    }
    x->retries_used++;
    x->state = CXH_READY;
    x->not_before = now + wait;
    if (x->kind != CXH_TOKEN) h->stats.retries++;
    trace_event(h, x, "retry %d/%d in %.3f s after %s", x->retries_used, h->retries, wait, why);
    return 1;
}

static void token_done(cxone_http *h, cxone_xfer *x, double now)
{
    char why[64];
    h->tok_running = 0;
    h->tok_fail_code = NULL;
    h->tok_fail_msg[0] = '\0';
    if (x->fail_code) goto failed;
    if (x->status != 200) {
        oauth_error(x, why, sizeof why);
        const char *code = x->status == 400 || x->status == 401 ? "auth"
            : x->status == 403 ? "scope" : x->status == 429 ? "rate_limited"
            : x->status >= 500 ? "server" : "format";
        if (strcmp(why, "invalid_scope") == 0) code = "scope";
        xfer_fail(x, code, "token request refused (HTTP %ld%s%s) after %d attempt%s: %s", x->status,
                  why[0] ? ", " : "", why, x->attempts, x->attempts == 1 ? "" : "s",
                  strcmp(code, "auth") == 0
                      ? (h->key_id ? "check access_key_id/access_key_secret and client_id/client_secret"
                                   : "check client_id and client_secret")
                  : strcmp(code, "scope") == 0 ? "the client may not request these scopes"
                                               : "try again later");
        goto failed;
    }
    cxone_buf tok, scope;
    double expires_in = -1;
    cxone_buf_init(&tok);
    cxone_buf_init(&scope);
    cxone_sbuf_reserve(&tok, 2048);
    const char *body = x->resp.p ? x->resp.p : "";
    int r1 = js_field(body, x->resp.len, "access_token", &tok, NULL);
    int r2 = js_field(body, x->resp.len, "expires_in", NULL, &expires_in);
    int r3 = js_field(body, x->resp.len, "scope", &scope, NULL);
    if (r1 != 1 || tok.oom || !token_chars_ok(tok.p, tok.len) || r2 < 0 || r3 < 0) {
        cxone_sbuf_wipe(&tok);
        cxone_sbuf_wipe(&scope);
        xfer_fail(x, "format", "token endpoint answered without a usable access_token");
        goto failed;
    }
    if (r2 != 1 || !(expires_in > 0)) expires_in = 300; /* conservative when absent */
    static const char pre[] = "Authorization: Bearer ";
    char *hdr = malloc(sizeof pre + tok.len);
    char *sc = r3 == 1 && !scope.oom ? cxone_sdup(scope.p) : NULL;
    if (!hdr) {
        free(sc);
        cxone_sbuf_wipe(&tok);
        cxone_sbuf_wipe(&scope);
        xfer_fail(x, "memory", "out of memory storing the token");
        goto failed;
    }
    memcpy(hdr, pre, sizeof pre - 1);
    memcpy(hdr + sizeof pre - 1, tok.p, tok.len + 1);
    cxone_sbuf_wipe(&tok);
    cxone_sbuf_wipe(&scope);
    drop_token(h);
    h->bearer_hdr = hdr;
    h->bearer_prefix = sizeof pre - 1;
    h->token_scope = sc;
    h->token_expires_in = expires_in;
    h->token_expiry = x->first_start + expires_in;
    /* refresh when fewer than refresh_margin seconds remain, or at half-life for short tokens */
    double life = expires_in - h->refresh_margin;
    if (life < expires_in / 2) life = expires_in / 2;
    h->token_refresh_at = x->first_start + life;
    h->token_gen++;
    trace_event(h, x, "token obtained, valid %.0f s", expires_in);
    (void)now;
    cxone_sbuf_wipe(&x->resp);
    return;
failed:
    h->tok_failed_run = 1;
    h->tok_fail_code = x->fail_code;
    memcpy(h->tok_fail_msg, x->fail_msg, sizeof h->tok_fail_msg);
    cxone_sbuf_wipe(&x->resp);
}

static void attempt_done(cxone_http *h, cxone_xfer *x, CURLcode cc, double now)
{
    long st = 0, nconn = 0;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &st);
    curl_easy_getinfo(x->easy, CURLINFO_NUM_CONNECTS, &nconn);
    h->stats.connections += (double)nconn;
    x->status = st;
    x->cc = cc;
    x->easy = NULL;
    if (x->kind == CXH_API) cxone_sfree(&x->auth_hdr); /* a bearer copy: rebuilt per attempt */

    if (cc != CURLE_OK) {
        char why[128];
        snprintf(why, sizeof why, "%s", curl_easy_strerror(cc));
        if (!x->too_large && cc_retryable(cc, x->retry_policy) && schedule_retry(h, x, now, why)) return;
        fail_cc(x);
    } else if (st == 401 && x->kind == CXH_API && !x->auth_retried) {
        /* the token was revoked or expired early: refresh once (unless another transfer
         * already did) and retry this request once, outside the retry budget */
        x->auth_retried = 1;
        if (x->token_gen == h->token_gen) h->token_refresh_at = 0;
        x->state = CXH_READY;
        x->not_before = now;
        h->stats.retries++;
        trace_event(h, x, "401: refreshing the token and retrying once");
        return;
    } else if (status_retryable(st, x->retry_policy)) {
        char why[32];
        snprintf(why, sizeof why, "HTTP %ld", st);
        if (schedule_retry(h, x, now, why)) return;
    }
    finish(h, x, now);
    if (x->kind == CXH_TOKEN) token_done(h, x, now);
}

/* Fails every started transfer that is waiting for a token with the token's failure. */
static void fail_token_waiters(cxone_http *h, cxone_xfer **xs, size_t lo, size_t hi, double now)
{
    for (size_t i = lo; i < hi; i++) {
        cxone_xfer *x = xs[i];
        if (x->state != CXH_READY || x->kind != CXH_API || x->not_before > now) continue;
        x->fail_code = h->tok_fail_code;
        memcpy(x->fail_msg, h->tok_fail_msg, sizeof x->fail_msg);
        finish(h, x, now);
    }
}

static void start_token(cxone_http *h, double now)
{
    cxone_xfer *t = &h->tok;
    h->tok_fail_code = NULL;
    if (prepare_token(h) != 0) {
        h->tok_fail_code = "memory";
        snprintf(h->tok_fail_msg, sizeof h->tok_fail_msg, "out of memory building the token request");
        cxone_xfer_reset(t);
        return;
    }
    t->id = ++h->next_id;
    t->state = CXH_READY;
    t->first_start = t->not_before = now;
    t->deadline_at = now + h->deadline;
    h->tok_running = 1;
    trace_event(h, t, "requesting a token from the token endpoint");
}

/* The engine keeps the admitted transfers that are not done yet in `act` (at most
 * `concurrency` of them, in admission order), so each pass of the loop costs O(concurrency)
 * whatever the batch's size. Moves the ones that finished out of `act`, counting them and
 * noting a failure for stop_on_failure. */
static void sweep_done(cxone_xfer **act, int *nact, size_t *ndone, int *stop)
{
    int k = 0;
    for (int i = 0; i < *nact; i++) {
        cxone_xfer *x = act[i];
        if (x->state == CXH_DONE) {
            (*ndone)++;
            if (stop && !x->skipped && x->failed) *stop = 1;
        } else {
            act[k++] = x;
        }
    }
    *nact = k;
}

void cxone_http_run(cxone_http *h, cxone_xfer **xs, size_t n, int concurrency,
                    int stop_on_failure, int force_token)
{
    if (concurrency < 1) concurrency = 1;
    if (concurrency > CXH_MAX_CONCURRENCY) concurrency = CXH_MAX_CONCURRENCY;
    if (own_handles(h) != 0) { /* a forked child could not make its own handles */
        double now = cxone_http_now();
        h->tok_fail_code = "memory";
        snprintf(h->tok_fail_msg, sizeof h->tok_fail_msg, "out of memory creating the libcurl handles");
        for (size_t i = 0; i < n; i++) {
            cxone_xfer *x = xs[i];
            x->h = h;
            x->id = ++h->next_id;
            x->first_start = now;
            h->stats.requests++;
            if (!x->fail_code) xfer_fail(x, "memory", "%s", h->tok_fail_msg);
            finish(h, x, now);
        }
        return;
    }
    cxone_xfer *act[CXH_MAX_CONCURRENCY]; /* admitted, not done */
    int nact = 0;
    size_t next = 0, ndone = 0;
    int stop = 0, want_token = force_token;
    int *stopp = stop_on_failure ? &stop : NULL;
    if (force_token) h->token_refresh_at = 0;
    h->tok_fail_code = NULL;
    h->tok_failed_run = 0;

    for (;;) {
        double now = cxone_http_now();
        int progressed = 0;

        /* admit new transfers up to the concurrency limit */
        sweep_done(act, &nact, &ndone, stopp);
        while (next < n && nact < concurrency && !stop) {
            cxone_xfer *x = xs[next++];
            x->h = h;
            x->id = ++h->next_id;
            x->first_start = x->not_before = now;
            x->deadline_at = now + h->deadline;
            x->state = CXH_READY;
            h->stats.requests++;
            if (x->fail_code) { /* failed before the network */
                finish(h, x, now);
                ndone++;
                if (stop_on_failure) stop = 1;
                continue;
            }
            act[nact++] = x;
        }
        if (stop) {
            for (; next < n; next++) {
                xs[next]->skipped = 1;
                xs[next]->state = CXH_DONE;
                ndone++;
            }
        }

        /* the token: fetch when forced, or when a due API transfer needs a fresh one */
        if (!h->tok_running) {
            int need = want_token;
            for (int i = 0; i < nact && !need; i++) {
                cxone_xfer *x = act[i];
                if (x->state == CXH_READY && x->kind == CXH_API && x->not_before <= now
                    && !token_fresh(h, now))
                    need = 1;
            }
            if (need && h->tok_failed_run && !want_token) {
                /* the token endpoint already failed during this run: do not hammer it */
                fail_token_waiters(h, act, 0, (size_t)nact, now);
            } else if (need) {
                want_token = 0;
                start_token(h, now);
                if (!h->tok_running) fail_token_waiters(h, act, 0, (size_t)nact, now);
            }
        }
        if (h->tok_running && h->tok.state == CXH_READY && h->tok.not_before <= now) {
            if (start_attempt(h, &h->tok, h->tok_easy, now) != 0) {
                finish(h, &h->tok, now);
                token_done(h, &h->tok, now);
                fail_token_waiters(h, act, 0, (size_t)nact, now);
            }
        }

        /* launch the transfers that are due */
        double wake = now + 1.0;
        if (h->tok_running && h->tok.state == CXH_READY && h->tok.not_before < wake)
            wake = h->tok.not_before;
        for (int i = 0; i < nact; i++) {
            cxone_xfer *x = act[i];
            if (x->state != CXH_READY) continue;
            if (x->not_before > now) {
                if (x->not_before < wake) wake = x->not_before;
                continue;
            }
            if (x->kind == CXH_API && (h->tok_running || !token_fresh(h, now))) continue;
            CURL *e = take_easy(h);
            if (!e) {
                xfer_fail(x, "memory", "out of memory creating a libcurl handle");
                finish(h, x, now);
                continue;
            }
            if (start_attempt(h, x, e, now) != 0) {
                give_easy(h, e);
                finish(h, x, now);
            }
        }

        /* finished? (skipped transfers are marked done at admission) */
        sweep_done(act, &nact, &ndone, stopp);
        if (ndone == n && !h->tok_running) break;
        if (next < n && nact < concurrency && !stop) continue; /* a slot is free: admit */

        /* drive libcurl */
        int running = 0;
        curl_multi_perform(h->multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(h->multi, &left)) != NULL) {
            if (m->msg != CURLMSG_DONE) continue;
            CURL *e = m->easy_handle;
            CURLcode cc = m->data.result;
            cxone_xfer *x = NULL;
            curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&x);
            curl_multi_remove_handle(h->multi, e);
            if (e != h->tok_easy) give_easy(h, e);
            if (!x) continue;
            double t = cxone_http_now();
            attempt_done(h, x, cc, t);
            if (x->kind == CXH_TOKEN && !h->tok_running && h->tok_fail_code)
                fail_token_waiters(h, act, 0, (size_t)nact, t);
            progressed = 1;
        }
        if (progressed) continue;

        /* sleep until libcurl has work, or the next scheduled retry is due */
        now = cxone_http_now();
        long ms = (long)ceil((wake - now) * 1000.0);
        if (ms < 0) ms = 0;
        if (ms > 1000) ms = 1000;
        curl_multi_poll(h->multi, NULL, 0, (int)ms, NULL);
    }
    /* API transfers that finished with the token's failure */
    for (size_t i = 0; i < n; i++) {
        cxone_xfer *x = xs[i];
        if (x->skipped) continue;
        if (x->attempts == 0 && !x->fail_code && h->tok_fail_code) {
            x->fail_code = h->tok_fail_code;
            memcpy(x->fail_msg, h->tok_fail_msg, sizeof x->fail_msg);
        }
    }
}

/* ---- shared with wire.c (requests and answers without I/O); declared in wire.h ---- */

int cxone_js_field(const char *s, size_t n, const char *key, cxone_buf *str, double *num)
{
    return js_field(s, n, key, str, num);
}
int cxone_token_chars_ok(const char *s, size_t n) { return token_chars_ok(s, n); }
double cxone_parse_retry_after(const char *v) { return parse_retry_after(v); }
void cxone_form_field(cxone_buf *b, const char *k, const char *v) { form_field(b, k, v); }
char *cxone_basic_header(const char *id, const char *secret) { return basic_header(id, secret); }
