/* http: the transport under cxone.Client (libcurl multi engine, retries, token cache, trace).
 * Pure C: nothing in here calls Lua, so no Lua error can unwind through libcurl frames. */
#ifndef CXONE_HTTP_H
#define CXONE_HTTP_H

#include <curl/curl.h>
#include "cxone.h"

/* What a transfer talks to: the API (bearer token), the token endpoint, or a third party. */
enum { CXH_API = 0, CXH_TOKEN, CXH_WEBHOOK };
/* Which failures may be retried: everything retryable, or only what certainly did not reach
 * the server's handler (refused connections, 429, 503), for non-idempotent webhooks. */
enum { CXH_RETRY_ALL = 0, CXH_RETRY_SAFE };
enum { CXH_PENDING = 0, CXH_READY, CXH_RUNNING, CXH_DONE };
/* What a 2xx answer must look like (read once by the caller's on_answer, see cxone_http). */
enum { CXH_EXPECT_ANY = 0, CXH_EXPECT_VARIABLES, CXH_EXPECT_BUILD };

#define CXH_MAX_RESPONSE (4u << 20) /* answers larger than this are a `format` failure */
#define CXH_MAX_CONCURRENCY 64

typedef struct cxone_xfer {
    /* request (set by the caller before cxone_http_run) */
    int kind, retry_policy, expect;
    const char *method;           /* static string: GET, POST, PATCH, PUT */
    char *url;                    /* malloc'ed */
    cxone_buf body;               /* wiped on reset (may hold masked values) */
    int has_body;
    struct curl_slist *headers;   /* no secrets in here; Authorization is added per attempt */
    const char *fail_code;        /* set before the run: fails without touching the network */
    char fail_msg[320];
    /* engine state */
    int state, id, auth_retried, retries_used;
    unsigned token_gen;
    double first_start, deadline_at, not_before;
    CURL *easy;
    char *auth_hdr;               /* this attempt's Authorization header, wiped */
    struct curl_slist auth_node;  /* our own node in front of `headers` (never freed by curl) */
    /* the last attempt's answer */
    long status;
    cxone_buf resp;               /* wiped on reset */
    char etag[256];               /* a well-formed entity-tag of at most 255 bytes, or "" */
    int bad_etag;                 /* the answer's ETag was over-long or malformed */
    double retry_after;           /* seconds, < 0 when absent */
    int too_large;
    CURLcode cc;
    char errbuf[CURL_ERROR_SIZE];
    /* outcome */
    int attempts, skipped, failed;   /* failed: transport failure, non-2xx, or bad 2xx */
    int slot;                        /* the caller's, for on_answer (the engine never reads it) */
    double latency_ms;
    struct cxone_http *h;
} cxone_xfer;

typedef struct cxone_http_stats {
    double requests, attempts, retries, token_requests, successes, failures, connections;
    double latency_ms_total;
} cxone_http_stats;

typedef struct cxone_http {
    /* configuration */
    long connect_timeout_ms, timeout_ms;
    int retries, debug;
    double backoff_base, backoff_cap, retry_after_cap, deadline, refresh_margin;
    char *ca_file, *user_agent, *base_url, *token_url;
    /* credentials (all wiped and freed by cxone_http_free) */
    char *client_id, *client_secret, *key_id, *key_secret, *scope;
    int basic_auth;
    /* libcurl */
    CURLM *multi;
    CURL *easy[CXH_MAX_CONCURRENCY];
    int neasy, free_easy[CXH_MAX_CONCURRENCY], nfree;
    CURL *tok_easy;
    /* token cache */
    char *bearer_hdr;             /* "Authorization: Bearer <token>", wiped */
    size_t bearer_prefix;         /* offset of the token inside bearer_hdr */
    double token_expiry, token_refresh_at, token_expires_in;
    char *token_scope;
    unsigned token_gen;
    cxone_xfer tok;
    int tok_running, tok_failed_run;
    const char *tok_fail_code;
    char tok_fail_msg[320];
    /* Called when an API transfer with an `expect` finishes with a 2xx answer, before
     * stop_on_failure looks at it: the caller reads the answer (once) and sets fail_code and
     * fail_msg if it is unusable (bad_etag, wrong shape). Set by the caller around a run. */
    void (*on_answer)(void *ud, cxone_xfer *x);
    void *on_answer_ud;
    /* misc */
    uint64_t rng;
    int next_id;
    cxone_http_stats stats;
    /* fork safety: the process that made the libcurl handles, and the sockets they hold open
     * (descriptor and inode), so that a forked child can drop them without a word on the wire */
    long pid;
    struct cxone_http_sock { int fd; unsigned long long ino; } *socks;
    size_t nsocks, capsocks;
} cxone_http;

double cxone_http_now(void);

/* Appends to a buffer whose old storage is wiped when it grows (for bodies that may hold
 * secrets); wipe frees it with OPENSSL_cleanse first. */
void cxone_sbuf_add(cxone_buf *b, const void *s, size_t n);
void cxone_sbuf_reserve(cxone_buf *b, size_t cap);
void cxone_sbuf_wipe(cxone_buf *b);
/* malloc'ed copy, and its wiping free. */
char *cxone_sdup(const char *s);
void cxone_sfree(char **p);

/* Allocates the transport (configuration fields zeroed; the caller fills them, then calls
 * cxone_http_start). Returns NULL on oom. */
cxone_http *cxone_http_new(void);
int cxone_http_start(cxone_http *h, char *err, size_t errlen);
void cxone_http_free(cxone_http *h);

void cxone_xfer_init(cxone_xfer *x);
/* Frees everything the transfer holds (wiping bodies) and re-initialises it. */
void cxone_xfer_reset(cxone_xfer *x);
/* Appends a header line; returns 0 or -1 on oom. */
int cxone_xfer_header(cxone_xfer *x, const char *line);

/* Runs the transfers to completion with at most `concurrency` in flight, retrying and
 * refreshing the token as needed; force_token fetches a new token even if one is cached.
 * Never fails as a whole: each transfer carries its own outcome. */
void cxone_http_run(cxone_http *h, cxone_xfer **xs, size_t n, int concurrency,
                    int stop_on_failure, int force_token);

/* Seconds left on the cached token, or -1 when there is none. */
double cxone_http_token_ttl(cxone_http *h);
/* Random UUID version 4 (37 bytes with NUL); returns 0 or -1 if the CSPRNG failed. */
int cxone_http_uuid4(char out[37]);
/* Replaces every occurrence of the client's secrets and token in s (NUL-terminated, buffer
 * size cap) with "[redacted]". */
void cxone_http_scrub(const cxone_http *h, char *s, size_t cap);
void cxone_scrub_value(char *s, size_t cap, const char *secret, size_t slen);
/* Is v[0..n) an entity-tag we can send back in If-Match ([W/]"printable", at most 255 bytes)?
 * An answer whose ETag is not is a `format` failure, never an unconditional write. */
int cxone_etag_ok(const char *v, size_t n);

#endif
