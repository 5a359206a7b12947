/* engine: the call engine of cxone.core, without I/O. It builds every request, interprets every
 * answer and transport failure, owns the OAuth2 token lifecycle, retries, backoff, the deadline,
 * pacing under the tenant's rate limit, scrubbing and each call's metadata, and tells its driver
 * what to do next: send this, wait until then, done. Drivers (libcurl: curl_driver.c; nginx
 * cosockets and HAProxy's httpclient through engine_lua.c) only move bytes and read the clock.
 *
 * No Lua, no libcurl, no clock, no environment in here: every entry point takes `now` (seconds of
 * a monotonic clock) and, where dates are parsed, `wall` (unix time). Nothing here raises or
 * longjmps; allocation failures become the call's `memory` failure.
 *
 * The driver loop, for one call (several calls of one engine may be in flight at once):
 *
 *     cx_call *c = cx_call_new(e, &spec, now);
 *     for (;;) {
 *         cx_request rq;
 *         switch (cx_call_next(e, c, now, &rq)) {
 *         case CX_SEND:  send rq; for each answer header cx_call_header(...); cx_call_body(...)
 *                        for the body; then cx_call_answer(e, c, now, status) -- or, when no
 *                        answer came, cx_call_neterr(e, c, now, kind, detail)
 *         case CX_WAIT:  sleep until rq.wake (or until another call of the engine progresses)
 *         case CX_DONE:  read the outcome (cx_call_ok, c->code, c->msg, the answer body); free
 *         }
 *     }
 *
 * Ownership: the engine owns its configuration strings, the token and the calls' buffers, and
 * wipes every one that may hold a secret when it is freed. A cx_request points into the call and
 * the engine: valid until the next entry point is called for that call. */
#ifndef CXONE_ENGINE_H
#define CXONE_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "pace.h"
#include "scrub.h"

/* What a call does. */
/* CX_AUTH: a call that only obtains a new token (authenticate). CX_LIST: GET of the action
 * list (an emulator extension: the contract has no list route). */
enum { CX_GET = 0, CX_PATCH, CX_PUT, CX_BUILD, CX_WEBHOOK, CX_AUTH, CX_LIST };
/* What a request goes to: the API (bearer token), the token endpoint, or a third party. */
enum { CX_KIND_API = 0, CX_KIND_TOKEN, CX_KIND_WEBHOOK };
/* What cx_call_next asks of the driver. */
enum { CX_SEND = 1, CX_WAIT, CX_DONE };
/* Transport failures a driver reports (cx_call_neterr). */
enum {
    CX_NE_REFUSED = 1, /* no connection was made (refused, unreachable): the request never left */
    CX_NE_RESOLVE,     /* the host name did not resolve */
    CX_NE_TLS,         /* TLS handshake or certificate verification failed */
    CX_NE_TIMEOUT,     /* no (complete) answer within the attempt's timeout */
    CX_NE_RESET,       /* the connection broke after the request may have been sent */
    CX_NE_REWIND,      /* the transport would have re-sent the request body on its own: refused,
                          the attempt counts as one that may have reached the server */
    CX_NE_TOO_LARGE,   /* the answer exceeded CX_MAX_ANSWER (cx_call_body said so) */
    CX_NE_MEMORY,      /* the driver ran out of memory */
    CX_NE_CONFIG,      /* the driver refused the request (unsupported method, bad URL) */
    CX_NE_OTHER
};
/* Which failures may be retried: everything retryable, or only what surely did not reach the
 * server's handler (no connection, 429, 503): for webhooks, which are not idempotent. */
enum { CX_RETRY_ALL = 0, CX_RETRY_SAFE };

#define CX_MAX_ANSWER (4u << 20) /* larger answers are a `format` failure */
#define CX_MAX_HEADERS 8
#define CX_MSG 320
#define CX_ETAG_MAX 255 /* longest entity-tag kept (and so sent back in If-Match) */
#define CX_KEY_MAX 200  /* longest Idempotency-Key / header value from a caller */
/* latency histogram: bucket upper bounds in ms, doubling from 1 ms; the last is open */
#define CX_HIST_BUCKETS 20

/* The engine's settings. Strings are copied by cx_engine_new; secrets are wiped on free. */
typedef struct {
    const char *base_url;   /* without trailing slashes */
    const char *token_url;
    const char *client_id, *client_secret;
    const char *key_id, *key_secret;   /* access key (password grant), both or neither */
    const char *scope;
    const char *user_agent;
    int basic_auth;         /* client credentials in a Basic header instead of the body */
    double timeout;         /* per attempt, seconds */
    double connect_timeout; /* seconds */
    double deadline;        /* per call, seconds, all attempts and waits included */
    double refresh_margin;  /* refresh the token this long before it expires */
    double token_fail_memory; /* a failed token request is remembered this long (seconds) */
    int retries;
    double backoff_base, backoff_cap, retry_after_cap;
    double rate_limit;      /* requests per second set by the operator; 0: none */
    int max_concurrency;    /* AIMD ceiling for calls in flight (>= 1) */
    uint64_t seed;          /* backoff jitter (from a CSPRNG; the engine reads no randomness) */
    /* The engine's account of its decisions (retry, token, pacing), one line at a time, already
     * scrubbed; NULL: none. For debug traces. */
    void (*trace)(void *ud, int call_id, const char *line);
    void *trace_ud;
} cx_config;

typedef struct {
    double requests, attempts, retries, token_requests, successes, failures;
    double rate_limited;    /* 429 answers seen (API and token endpoint) */
    double paced_s;         /* seconds calls were held back by the rate limiter */
    double latency_ms_total;
    double hist[CX_HIST_BUCKETS]; /* calls by latency (fixed buckets: constant memory) */
} cx_stats;

typedef struct cx_engine cx_engine;
typedef struct cx_call cx_call;

/* What one call is to do. Strings are copied by cx_call_new. */
typedef struct {
    int op;                     /* CX_GET ... CX_WEBHOOK */
    const char *action, *env;   /* ids (env: get/patch/put) */
    const char *body;           /* patch/put: the JSON payload; webhook: the event */
    size_t body_len;
    const char *if_match;       /* patch/put, optional */
    const char *idempotency_key;/* build: required (the binding makes one) */
    const char *url;            /* webhook only: the receiver's URL (checked by the binding) */
    const char *signature;      /* webhook only, optional: the whole X-Cxone-Signature line */
    const char *const *secrets; /* extra strings no message of this call may show (masked values) */
    const size_t *secret_lens;
    size_t nsecrets;
} cx_spec;

/* A request for the driver to send: `lines` are complete "Name: value" header lines (the
 * Authorization line among them: never log it unredacted). */
typedef struct {
    int kind;                  /* CX_KIND_* */
    const char *method;        /* "GET", "POST", "PATCH", "PUT" */
    const char *url;
    const char *lines[CX_MAX_HEADERS];
    int nlines;
    const char *body;          /* NULL for GET */
    size_t body_len;
    double timeout;            /* this attempt's timeout (seconds), within the call's deadline */
    double connect_timeout;
    double wake;               /* CX_WAIT: ask again at this time (the engine's "now" clock) */
    int attempt;               /* 1-based number of this attempt (token attempts counted apart) */
} cx_request;

struct cx_call {
    int op, kind, retry_policy;
    int state;                 /* internal */
    /* request */
    char *url;
    cxone_buf body;            /* wiped (may hold masked values) */
    char *lines[CX_MAX_HEADERS]; int nlines;  /* fixed header lines */
    char *auth;                /* this attempt's Authorization line (wiped) */
    char idem[CX_KEY_MAX + 1];
    cxone_buf secrets;         /* masked values of this call, NUL-separated (wiped) */
    /* timing and attempts */
    double first_start, deadline_at, not_before, asked_at, sent_at;
    int attempts;              /* API/webhook attempts sent */
    int tok_attempts;          /* token attempts this call sent */
    int retries_used, auth_retried, in_flight, holds_token_fetch;
    unsigned token_gen;
    /* the answer being received, then the last one */
    long status;
    cxone_buf resp;            /* wiped */
    char etag[CX_ETAG_MAX + 1];
    int bad_etag, answer_too_large;
    cx_rlinfo rl;
    /* outcome */
    int done;
    const char *code;          /* NULL on success */
    char msg[CX_MSG];
    double latency_ms;
    double retry_after;        /* of the last answer, seconds (< 0: none) */
    int id;                    /* numbered by the engine, for traces */
    int slot;                  /* the binding's (the engine never reads it) */
};

/* Makes an engine (NULL when out of memory). The configuration is copied; it is not checked
 * here (the bindings validate options and say which one is wrong). */
cx_engine *cx_engine_new(const cx_config *cfg);
void cx_engine_free(cx_engine *e);
const cx_config *cx_engine_config(const cx_engine *e);
const cx_stats *cx_engine_stats(cx_engine *e);
cx_pacer *cx_engine_pacer(cx_engine *e);
/* A new jitter seed (after fork, so that parent and children do not retry in step). */
void cx_engine_reseed(cx_engine *e, uint64_t seed);

/* The token: seconds left (-1 when none), its lifetime and scope (NULL if none). */
double cx_engine_token_ttl(const cx_engine *e, double now);
double cx_engine_token_expires_in(const cx_engine *e);
const char *cx_engine_token_scope(const cx_engine *e);
/* The token itself, for drivers that share it between processes (nginx's shared dict); NULL
 * when none is fresh. A secret: store it, never show it. */
const char *cx_engine_token(const cx_engine *e, double now, double *ttl);
/* A token obtained elsewhere (another worker): used until ttl seconds from now. Returns 0, or -1
 * when it is not a usable bearer token or memory ran out. */
int cx_engine_token_import(cx_engine *e, const char *tok, size_t n, double ttl, double now);
/* Another worker's token request failed: calls needing a token fail with this until `until`. */
void cx_engine_token_failed(cx_engine *e, const char *code, const char *msg, double until);
/* The remembered token failure, if one is in force: its code (NULL if none) and message. */
const char *cx_engine_token_failure(const cx_engine *e, double now, const char **msg);
/* Forget the token (the next call fetches a new one). */
void cx_engine_token_drop(cx_engine *e);
/* Increments whenever the engine obtains a token by its own request (drivers that share tokens
 * publish it then). */
unsigned cx_engine_token_gen(const cx_engine *e);

/* A call. Never NULL unless memory ran out; a call whose spec is unusable (a bad id, header
 * value) is created done, with code "invalid". */
cx_call *cx_call_new(cx_engine *e, const cx_spec *spec, double now);
/* A call that fails before the network (set by a binding: e.g. an unencodable payload). */
void cx_call_fail_early(cx_engine *e, cx_call *c, const char *code, const char *msg);
void cx_call_free(cx_engine *e, cx_call *c);
/* The next step: CX_SEND (rq filled), CX_WAIT (rq->wake set), or CX_DONE. */
int cx_call_next(cx_engine *e, cx_call *c, double now, cx_request *rq);
/* The answer to the request last sent: headers one by one (a status line of a new response,
 * e.g. after 1xx, is reported with cx_call_header_reset), the body in pieces (returns -1 when it
 * grew past CX_MAX_ANSWER: stop reading and report CX_NE_TOO_LARGE), then the status. */
void cx_call_header_reset(cx_call *c);
void cx_call_header(cx_call *c, const char *name, size_t nl, const char *value, size_t vl, double wall);
int cx_call_body(cx_call *c, const char *data, size_t n);
void cx_call_answer(cx_engine *e, cx_call *c, double now, long status);
/* No answer came. detail: the driver's words (scrubbed before use; may be NULL). */
void cx_call_neterr(cx_engine *e, cx_call *c, double now, int kind, const char *detail);
/* A 2xx answer the binding found unusable (wrong shape): the call fails with `format`. */
void cx_call_reject(cx_engine *e, cx_call *c, const char *msg);
/* Done and successful (a 2xx answer, not rejected)? */
int cx_call_ok(const cx_call *c);

/* ---- the API codec (engine.c), shared with the bindings ---- */

/* NULL if s[0..n) may be an id in a URL path segment, else why not. */
const char *cx_bad_id(const char *s, size_t n);
/* Printable ASCII, 1..max bytes: a header value from a caller. */
int cx_header_value_ok(const char *s, size_t n, size_t max);
/* A well-formed entity-tag ([W/]"printable") of at most CX_ETAG_MAX bytes. */
int cx_etag_ok(const char *v, size_t n);
/* Bearer token characters (visible ASCII, no space). */
int cx_token_chars_ok(const char *s, size_t n);
/* Which field of a non-2xx answer's error body a message quotes (NULL: none; *alt: fallback). */
const char *cx_quoted_field(long status, int webhook, const char **alt);
/* The code and message of a non-2xx final answer, quoting `server` (already made safe). */
const char *cx_status_failure(long status, int attempts, int webhook, const char *client_id,
                              const char *server, char *msg, size_t cap);
/* Replaces every secret of the engine (client secret, key secret, token) and of the call (its
 * masked values; c may be NULL) in the NUL-terminated msg (cap bytes) with [redacted]. */
void cx_scrub_msg(const cx_engine *e, const cx_call *c, char *msg, size_t cap);
/* Adds those secrets to set (0, or -1 when memory ran out: the set then hides everything). */
int cx_call_secrets(const cx_engine *e, const cx_call *c, cx_secrets *set);

#endif
