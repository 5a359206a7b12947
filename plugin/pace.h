/* Pacing and retry policy of the call engine: rate-limit headers, the client-side limiter and the
 * retry decision, as pure functions of their inputs (no Lua, no I/O, no clock, no environment). */
#ifndef CXONE_PACE_H
#define CXONE_PACE_H

#include <stddef.h>

/* Units: every time is seconds as a double. `now` is a monotonic clock value and `wall` a Unix
 * epoch time (for HTTP dates and epoch Reset values); the caller reads both and passes them in,
 * so that tests drive everything with a fake clock. Nothing here allocates. */

/* ---- what one answer's headers say ---- */

/* Rate-limit information from one answer's headers. Absent values are < 0. */
typedef struct {
    double limit;       /* requests per window: X-RateLimit-Limit, RateLimit-Limit, RateLimit-Policy
                           q= (or its leading number), RateLimit limit= */
    double remaining;   /* X-RateLimit-Remaining, RateLimit-Remaining, RateLimit r= / remaining= */
    double reset;       /* seconds from the answer until the window resets: X-RateLimit-Reset as
                           delta seconds or as an epoch time (a value > 1e9 is an epoch: v - wall,
                           at least 0), RateLimit-Reset, RateLimit t= / reset= */
    double window;      /* RateLimit-Policy w= (seconds) */
    double retry_after; /* Retry-After in seconds (delta or HTTP-date, from wall) */
} cx_rlinfo;

void cx_rlinfo_init(cx_rlinfo *r);
/* Feeds one header: name[0..nl) (any case), value[0..vl) as received (not NUL-terminated,
 * surrounding blanks allowed). Returns 1 if the header is one of those above (even when its
 * value is malformed: then it sets nothing), else 0. Numbers are plain decimals (digits, an
 * optional fraction; no sign, exponent, hex, inf or nan); the first number of a list is read
 * ("100, 100;w=60"). RateLimit-Policy with several policies keeps the one with the lowest
 * rate (q/w). A header given twice: the later value wins. */
int cx_rlinfo_header(cx_rlinfo *r, const char *name, size_t nl, const char *value, size_t vl,
                     double wall);
/* Retry-After: delay-seconds ("120"), or an HTTP-date: IMF-fixdate ("Sun, 06 Nov 1994 08:49:37
 * GMT"), RFC 850 ("Sunday, 06-Nov-94 08:49:37 GMT", a two-digit year < 70 is 20xx) or asctime
 * ("Sun Nov  6 08:49:37 1994"). Returns seconds from wall (0 for a date in the past), capped at
 * CX_RETRY_AFTER_MAX, or -1 if malformed. */
#define CX_RETRY_AFTER_MAX 1e7
double cx_retry_after_parse(const char *v, size_t n, double wall);

/* ---- the client-side limiter ---- */

/* A GCRA (token bucket) shared by all the calls of one engine, with AIMD concurrency.
 * The rate is the lower of the operator's (set_rps) and the learned one, either being 0 for
 * none; 0 overall means unlimited. Fields may be read (statistics, tracing); change them only
 * through the functions, except `burst`, which may be set after init. */
typedef struct {
    double set_rps;        /* the operator's limit (rate_limit option, CXONE_MAX_RPS, --max-rps) */
    double learned_rps;    /* learned from headers and 429s (0 = nothing learned) */
    int learned_from;      /* CX_LEARN_*: where learned_rps came from */
    double tat;            /* GCRA theoretical arrival time of the next request */
    double burst;          /* requests that may go at once when idle (>= 1; default 1) */
    double paused_until;   /* no request before this (a 429's Retry-After; Remaining 0 until Reset) */
    double max_reset;      /* the longest Reset seen with a Limit: the window when none is given */
    int conc, conc_max;    /* current and maximum concurrency (AIMD) */
    int ok_streak;         /* 2xx answers since the last increase or 429 */
    int quiet;             /* 2xx answers since the last 429 or rate increase (CX_LEARN_429) */
    double epoch_start;    /* the last decrease (or first take): 429s before it are the same burst */
    unsigned long epoch_ok;  /* 2xx answers since epoch_start */
    double obs_start;      /* observed send rate: takes counted since obs_start */
    unsigned long obs_count;
    double obs_rps;        /* the last complete observation (0 = none yet) */
    /* statistics */
    double paced_s;        /* seconds of wall time during which a request was held back by the
                              limiter (concurrent waits counted once) */
    double paced_mark;     /* paced_s counts time up to here */
    unsigned long taken;   /* requests let go */
    unsigned long throttled; /* 429 answers observed */
} cx_pacer;

#define CX_LEARN_NONE 0
#define CX_LEARN_POLICY 1    /* limit / window from the headers */
#define CX_LEARN_REMAINING 2 /* remaining / reset (only the window's rest; lifted when plenty) */
#define CX_LEARN_429 3       /* multiplicative decrease on a 429 without usable headers */

#define CX_PACE_MARGIN 0.95   /* header-learned rates are paced at this fraction */
#define CX_PACE_DECREASE 0.7  /* a 429 without headers: rate times this */
#define CX_PACE_INCREASE 1.02 /* each quiet round after that: rate times this */

/* set_rps <= 0: none. conc_max < 1 is taken as 1; concurrency starts at conc_max. */
void cx_pacer_init(cx_pacer *p, double set_rps, int conc_max);
/* Changes the operator's limit (<= 0: none), keeping what was learned. */
void cx_pacer_set_rate(cx_pacer *p, double set_rps);
/* The effective rate in requests per second, 0 = unlimited. */
double cx_pacer_rate(const cx_pacer *p);
/* May a request start at `now`? `asked` is when this request first asked (pass now the first
 * time, and the same value again after each wait), so that the time it was held back is
 * counted in paced_s when it goes (as wall time: the part of [asked, now] already counted
 * for another request is not counted again). Returns 1: go (the slot is taken). Returns 0: ask
 * again at *wake (> now). *wake may lie past the call's deadline (a long pause a server asked
 * for): the engine then fails the call at once (rate_limited) instead of waiting. wake may be
 * NULL. */
int cx_pacer_take(cx_pacer *p, double now, double asked, double *wake);
/* After an answer at `now`: learns from its headers (rl may be NULL) and its status (a
 * transport failure is status 0: only what the headers say applies).
 * Headers (any status): a Limit with a window (RateLimit-Policy w=, else the longest Reset seen
 * with a Limit, which is a fixed window's length or a full token bucket's refill time) sets the
 * rate to CX_PACE_MARGIN * limit / window; without a Limit, a low Remaining (<= 10) with a
 * Reset sets CX_PACE_MARGIN * remaining / reset until Remaining is plenty again; Remaining 0
 * with a Reset pauses until now + Reset.
 * 429: throttled++; paused until now + Retry-After when given. Then, once per burst (a 429
 * arriving while the pause of the previous decrease lasts belongs to it: only counted): the
 * concurrency is halved (at least 1) and, unless the headers gave the rate, the rate becomes
 * CX_PACE_MARGIN * the rate the server admitted since the last decrease (2xx answers over that
 * time plus the Retry-After: a token bucket's or a window's rate), or, when that would not
 * lower it, the current rate times CX_PACE_MARGIN; with no 2xx to go by, the current (else the
 * observed send) rate times CX_PACE_DECREASE.
 * 2xx: after a round of conc successes, concurrency + 1 (up to conc_max); a rate learned
 * from 429s grows by CX_PACE_INCREASE each round of max(20, 2 * rate) successes (it probes),
 * and is dropped once it is twice the observed send rate (it no longer binds). */
void cx_pacer_observe(cx_pacer *p, double now, const cx_rlinfo *rl, long status);
/* How many calls may be in flight at once now (1..conc_max): the caller starts no more. */
int cx_pacer_concurrency(const cx_pacer *p);

/* ---- the retry decision ---- */

/* retries: attempts after the first (0 = none). backoff_base/backoff_cap: seconds; the wait
 * before attempt n+1 is drawn uniformly from [0, min(cap, base * 2^(n-1))) (full jitter).
 * retry_after_cap: the longest Retry-After honoured (<= 0: no cap but the deadline). */
typedef struct {
    int retries;
    double backoff_base, backoff_cap, retry_after_cap;
} cx_retry_cfg;

#define CX_GIVE_UP (-1.0)        /* the attempts are spent */
#define CX_PAST_DEADLINE (-2.0)  /* the wait would not end before the deadline (or the cap) */

/* The wait before the next attempt, after `used` attempts (>= 1) failed retryably. Whether a
 * failure is retryable is the engine's decision, not this one's.
 * retry_after: the server's Retry-After in seconds, < 0 when absent. remaining: seconds left
 * before the call's deadline (INFINITY: none). u01: a uniform random number in [0, 1) from the
 * caller (clamped into it).
 * Returns the delay (>= 0); CX_GIVE_UP when used > retries; CX_PAST_DEADLINE when the wait
 * would reach or pass the deadline, or when a Retry-After exceeds retry_after_cap.
 * Decision: a Retry-After is honoured in full (never shortened, never lengthened by the
 * backoff) when it ends before the deadline and is within the cap; otherwise the call fails
 * at once (the engine reports rate_limited and the wait the server asked for, since it knows
 * retry_after was given) rather than waiting for a deadline that would come first. A backoff
 * that would pass the deadline fails at once the same way (the engine reports the attempt's
 * own failure or a timeout). */
double cx_retry_delay(const cx_retry_cfg *c, int used, double retry_after, double remaining,
                      double u01);

#endif
