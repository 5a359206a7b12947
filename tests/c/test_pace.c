/* C tests of plugin/pace.c with a fake clock: rate-limit headers, Retry-After dates, the limiter
 * (GCRA, pauses, AIMD), the retry decision, and simulated runs against a rate-limited server. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pace.h"

static int passed, failed;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) passed++;                                                      \
        else { failed++; fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } \
    } while (0)
#define NEAR(a, b) (fabs((a) - (b)) < 1e-9)

static int hdr(cx_rlinfo *r, const char *name, const char *value, double wall)
{
    return cx_rlinfo_header(r, name, strlen(name), value, strlen(value), wall);
}

static double ra(const char *v, double wall) { return cx_retry_after_parse(v, strlen(v), wall); }

static void test_retry_after(void)
{
    const double t = 784111777; /* Sun, 06 Nov 1994 08:49:37 GMT */
    CHECK(ra("120", t) == 120);
    CHECK(ra("  7 ", t) == 7);
    CHECK(ra("0", t) == 0);
    CHECK(ra("Sun, 06 Nov 1994 08:49:37 GMT", t - 30) == 30);
    CHECK(ra("Sunday, 06-Nov-94 08:49:37 GMT", t - 30) == 30);
    CHECK(ra("Sun Nov  6 08:49:37 1994", t - 30) == 30);
    CHECK(ra("Thu, 01 Jan 1970 00:00:00 GMT", 0) == 0);
    CHECK(ra("Tue, 29 Feb 2000 23:59:59 GMT", 951868799 - 1) == 1); /* a leap day */
    CHECK(ra("Wednesday, 01-Jan-25 00:00:00 GMT", 1735689600 - 5) == 5); /* 2-digit year: 2025 */
    CHECK(ra("Sun, 06 Nov 1994 08:49:37 GMT", t + 100) == 0);           /* in the past */
    CHECK(ra("99999999999999999999", 0) == CX_RETRY_AFTER_MAX);
    CHECK(ra("Fri, 01 Jan 9999 00:00:00 GMT", 0) == CX_RETRY_AFTER_MAX);
    static const char *const bad[] = {"", "  ", "-5", "1.5", "12s", "0x10", "inf", "nan",
        "Sun, 06 Nov 1994 08:49:37", "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 32 Nov 1994 08:49:37 GMT",
        "Sun, 29 Feb 1900 08:49:37 GMT", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 06 Nov 1994 24:00:00 GMT",
        "Sun, 6 Nov 1994 08:49:37 GMT", "Sun Nov 6 08:49:37 1994", "Sun Nov  6 08:49:37 1994 x",
        "S, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-1994 08:49:37 GMT"};
    int all = 1;
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        double v = ra(bad[i], t);
        if (v != -1) { fprintf(stderr, "  accepted [%s] as %g\n", bad[i], v); all = 0; }
    }
    CHECK(all);
    /* not NUL-terminated: only n bytes are read */
    CHECK(cx_retry_after_parse("12345", 2, 0) == 12);
}

static void test_headers(void)
{
    cx_rlinfo r;
    cx_rlinfo_init(&r);
    CHECK(r.limit < 0 && r.remaining < 0 && r.reset < 0 && r.window < 0 && r.retry_after < 0);
    CHECK(hdr(&r, "X-RateLimit-Limit", " 100 ", 0) == 1 && r.limit == 100);
    CHECK(hdr(&r, "x-ratelimit-remaining", "7", 0) == 1 && r.remaining == 7);
    CHECK(hdr(&r, "X-RATELIMIT-RESET", "30", 1700000000) == 1 && r.reset == 30);
    CHECK(hdr(&r, "X-RateLimit-Reset", "1700000045", 1700000000) == 1 && r.reset == 45); /* epoch */
    CHECK(hdr(&r, "X-RateLimit-Reset", "1700000045", 1700000100) == 1 && r.reset == 0);
    CHECK(hdr(&r, "Retry-After", "3", 0) == 1 && r.retry_after == 3);
    CHECK(hdr(&r, "Content-Type", "3", 0) == 0 && r.limit == 100);
    CHECK(hdr(&r, "X-RateLimit-Limit", "100, 100;w=60", 0) == 1 && r.limit == 100);
    /* malformed values: recognised, nothing set */
    CHECK(hdr(&r, "X-RateLimit-Limit", "lots", 0) == 1 && r.limit == 100);
    CHECK(hdr(&r, "X-RateLimit-Remaining", "-1", 0) == 1 && r.remaining == 7);
    CHECK(hdr(&r, "X-RateLimit-Remaining", "5x", 0) == 1 && r.remaining == 7);
    CHECK(hdr(&r, "Retry-After", "soon", 0) == 1 && r.retry_after == 3);
    CHECK(hdr(&r, "X-RateLimit-Limit", "1e3", 0) == 1 && r.limit == 100);
    /* the IETF fields, older (separate headers) and newer drafts */
    cx_rlinfo_init(&r);
    CHECK(hdr(&r, "RateLimit-Limit", "50", 0) == 1 && r.limit == 50);
    CHECK(hdr(&r, "RateLimit-Remaining", "4", 0) == 1 && r.remaining == 4);
    CHECK(hdr(&r, "RateLimit-Reset", "2.5", 0) == 1 && r.reset == 2.5);
    cx_rlinfo_init(&r);
    CHECK(hdr(&r, "RateLimit-Policy", "10;w=1, 50;w=60", 0) == 1 && r.limit == 50 && r.window == 60);
    CHECK(hdr(&r, "RateLimit-Policy", "\"burst\";q=100;w=10, \"day\";q=1000;w=86400", 0) == 1
          && r.limit == 1000 && r.window == 86400);
    CHECK(hdr(&r, "RateLimit-Policy", "\"a,b;q=1\";q=30;w=3", 0) == 1 && r.limit == 30 && r.window == 3);
    CHECK(hdr(&r, "RateLimit-Policy", "q=abc", 0) == 1 && r.limit == 30);
    cx_rlinfo_init(&r);
    CHECK(hdr(&r, "RateLimit", "limit=100, remaining=50, reset=30", 0) == 1 && r.limit == 100
          && r.remaining == 50 && r.reset == 30);
    cx_rlinfo_init(&r);
    CHECK(hdr(&r, "RateLimit", "\"default\";r=0;t=12", 0) == 1 && r.remaining == 0 && r.reset == 12
          && r.limit < 0);
    CHECK(hdr(&r, "RateLimit", "\"a\";r=9;t=2, \"b\";r=3;t=1", 0) == 1 && r.remaining == 3 && r.reset == 2);
}

static void test_pacer_basics(void)
{
    cx_pacer p;
    double wake = -1;
    cx_pacer_init(&p, 0, 4);
    CHECK(cx_pacer_rate(&p) == 0 && cx_pacer_concurrency(&p) == 4);
    for (int i = 0; i < 1000; i++) CHECK(cx_pacer_take(&p, 5.0, 5.0, &wake) == 1);
    CHECK(p.paced_s == 0 && p.taken == 1000);

    /* 10/s: one every 0.1 s; a request held back counts its wait once, when it goes */
    cx_pacer_init(&p, 10, 4);
    CHECK(cx_pacer_rate(&p) == 10);
    CHECK(cx_pacer_take(&p, 100.0, 100.0, &wake) == 1);
    CHECK(cx_pacer_take(&p, 100.0, 100.0, &wake) == 0 && NEAR(wake, 100.1));
    CHECK(cx_pacer_take(&p, 100.05, 100.0, &wake) == 0 && NEAR(wake, 100.1));
    CHECK(cx_pacer_take(&p, 100.1, 100.0, &wake) == 1 && NEAR(p.paced_s, 0.1));
    CHECK(cx_pacer_take(&p, 100.1, 100.1, NULL) == 0);
    /* two requests waiting at once: the wall time is counted once */
    CHECK(cx_pacer_take(&p, 100.2, 100.1, &wake) == 1 && NEAR(p.paced_s, 0.2));
    CHECK(cx_pacer_take(&p, 100.3, 100.1, &wake) == 1 && NEAR(p.paced_s, 0.3));
    /* idle for long: no credit beyond the burst (1) */
    CHECK(cx_pacer_take(&p, 200.0, 200.0, &wake) == 1);
    CHECK(cx_pacer_take(&p, 200.0, 200.0, &wake) == 0 && NEAR(wake, 200.1));
    /* burst 3: three at once when idle, then paced */
    cx_pacer_init(&p, 10, 4);
    p.burst = 3;
    int went = 0;
    for (int i = 0; i < 5; i++) went += cx_pacer_take(&p, 0.0, 0.0, &wake);
    CHECK(went == 3 && NEAR(wake, 0.1));
    /* 100 requests at 10/s take 9.9 s after the first */
    cx_pacer_init(&p, 10, 4);
    double now = 0;
    for (int i = 0; i < 100; i++) {
        double asked = now;
        while (!cx_pacer_take(&p, now, asked, &wake)) now = wake;
    }
    CHECK(NEAR(now, 9.9));
    /* the lower of the set and the learned rate wins; 0 is none */
    cx_pacer_init(&p, 10, 4);
    p.learned_rps = 4;
    CHECK(cx_pacer_rate(&p) == 4);
    p.learned_rps = 40;
    CHECK(cx_pacer_rate(&p) == 10);
    cx_pacer_set_rate(&p, 0);
    CHECK(cx_pacer_rate(&p) == 40);
    cx_pacer_set_rate(&p, NAN);
    CHECK(cx_pacer_rate(&p) == 40 && p.set_rps == 0);
    cx_pacer_init(&p, -3, 0);
    CHECK(cx_pacer_rate(&p) == 0 && cx_pacer_concurrency(&p) == 1);
    /* a rate lowered after a backlog at a higher one waits at most one new interval */
    cx_pacer_init(&p, 1, 1);
    CHECK(cx_pacer_take(&p, 0, 0, &wake) == 1);
    cx_pacer_set_rate(&p, 100);
    CHECK(cx_pacer_take(&p, 0, 0, &wake) == 0 && NEAR(wake, 0.01));
}

static cx_rlinfo info(double limit, double remaining, double reset, double window, double ra_)
{
    cx_rlinfo r = {limit, remaining, reset, window, ra_};
    return r;
}

static void test_pacer_learning(void)
{
    cx_pacer p;
    double wake;
    cx_rlinfo r;
    /* a 429 with Retry-After: paused until then, concurrency halved, counted */
    cx_pacer_init(&p, 0, 8);
    r = info(-1, -1, -1, -1, 2);
    cx_pacer_observe(&p, 10, &r, 429);
    CHECK(p.throttled == 1 && cx_pacer_concurrency(&p) == 4);
    CHECK(cx_pacer_take(&p, 11, 11, &wake) == 0 && wake == 12);
    CHECK(cx_pacer_take(&p, 12, 11, &wake) == 1 && NEAR(p.paced_s, 1));
    /* 429s of the same burst (before the pause ended) are counted, not acted on again */
    cx_pacer_observe(&p, 11.5, NULL, 429);
    CHECK(cx_pacer_concurrency(&p) == 4 && p.throttled == 2);
    cx_pacer_observe(&p, 12.5, NULL, 429);
    cx_pacer_observe(&p, 12.5, NULL, 429);
    CHECK(cx_pacer_concurrency(&p) == 2 && p.throttled == 4);
    cx_pacer_observe(&p, 12.6, NULL, 429);
    cx_pacer_observe(&p, 12.7, NULL, 429);
    CHECK(cx_pacer_concurrency(&p) == 1 && p.throttled == 6);
    /* additive increase: one more after each round of `conc` successes, up to the maximum */
    cx_pacer_observe(&p, 13, NULL, 200);
    CHECK(cx_pacer_concurrency(&p) == 2);
    cx_pacer_observe(&p, 13, NULL, 200);
    CHECK(cx_pacer_concurrency(&p) == 2);
    cx_pacer_observe(&p, 13, NULL, 204);
    CHECK(cx_pacer_concurrency(&p) == 3);
    for (int i = 0; i < 100; i++) cx_pacer_observe(&p, 14, NULL, 200);
    CHECK(cx_pacer_concurrency(&p) == 8);
    cx_pacer_observe(&p, 14, NULL, 0);   /* a transport failure: no change */
    cx_pacer_observe(&p, 14, NULL, 503);
    CHECK(cx_pacer_concurrency(&p) == 8 && p.throttled == 6);

    /* a 429 without headers lowers the rate from the observed send rate */
    cx_pacer_init(&p, 0, 4);
    double now = 0;
    for (int i = 0; i < 100; i++, now += 0.02) CHECK(cx_pacer_take(&p, now, now, &wake) == 1);
    CHECK(p.obs_rps > 49 && p.obs_rps < 51);
    cx_pacer_observe(&p, now, NULL, 429);
    CHECK(p.learned_from == CX_LEARN_429 && NEAR(cx_pacer_rate(&p), p.obs_rps * CX_PACE_DECREASE));
    /* the operator's lower limit stays the bound; a second 429 decreases again */
    double first = cx_pacer_rate(&p);
    now += 0.5;
    cx_pacer_observe(&p, now, NULL, 429);
    CHECK(NEAR(cx_pacer_rate(&p), first * CX_PACE_DECREASE));
    /* when 429s stop, the rate grows back by CX_PACE_INCREASE per round of max(20, 2 * rate) */
    double before = cx_pacer_rate(&p);
    int round = (int)ceil(fmax(20, 2 * before));
    for (int i = 0; i < round - 1; i++) cx_pacer_observe(&p, now, NULL, 200);
    CHECK(cx_pacer_rate(&p) == before);
    cx_pacer_observe(&p, now, NULL, 200);
    CHECK(NEAR(cx_pacer_rate(&p), before * CX_PACE_INCREASE));
    /* and is dropped once it is twice what we send (it no longer binds) */
    for (int i = 0; i < 100000 && p.learned_from == CX_LEARN_429; i++) cx_pacer_observe(&p, now, NULL, 200);
    CHECK(p.learned_from == CX_LEARN_NONE && cx_pacer_rate(&p) == 0);

    /* headers: limit and window */
    cx_pacer_init(&p, 0, 4);
    r = info(120, 100, 30, 60, -1);
    cx_pacer_observe(&p, 0, &r, 200);
    CHECK(p.learned_from == CX_LEARN_POLICY && NEAR(cx_pacer_rate(&p), 2 * CX_PACE_MARGIN));
    /* the operator's lower rate wins over it */
    cx_pacer_set_rate(&p, 1);
    CHECK(cx_pacer_rate(&p) == 1);
    /* a limit without a window: the longest reset seen is the window */
    cx_pacer_init(&p, 0, 4);
    r = info(20, 15, 0.5, -1, -1);
    cx_pacer_observe(&p, 0, &r, 200);
    CHECK(NEAR(cx_pacer_rate(&p), 40 * CX_PACE_MARGIN));
    r = info(20, 3, 1.0, -1, -1);
    cx_pacer_observe(&p, 1, &r, 200);
    CHECK(NEAR(cx_pacer_rate(&p), 20 * CX_PACE_MARGIN) && p.max_reset == 1.0);
    r = info(20, 10, 0.2, -1, -1);
    cx_pacer_observe(&p, 2, &r, 200);
    CHECK(NEAR(cx_pacer_rate(&p), 20 * CX_PACE_MARGIN));
    /* a 429 whose headers say the rate: the headers' rate (not a decrease), still halved */
    r = info(20, 0, 1.0, -1, 1);
    cx_pacer_observe(&p, 3, &r, 429);
    CHECK(NEAR(cx_pacer_rate(&p), 20 * CX_PACE_MARGIN) && cx_pacer_concurrency(&p) == 2);
    /* Remaining 0 with a Reset pauses until then */
    cx_pacer_init(&p, 0, 4);
    r = info(-1, 0, 5, -1, -1);
    cx_pacer_observe(&p, 10, &r, 200);
    CHECK(cx_pacer_take(&p, 12, 12, &wake) == 0 && wake == 15);
    /* without a limit, a low Remaining paces the rest of the window; plenty lifts it */
    cx_pacer_init(&p, 0, 4);
    r = info(-1, 4, 8, -1, -1);
    cx_pacer_observe(&p, 0, &r, 200);
    CHECK(p.learned_from == CX_LEARN_REMAINING && NEAR(cx_pacer_rate(&p), 0.5 * CX_PACE_MARGIN));
    r = info(-1, 500, 60, -1, -1);
    cx_pacer_observe(&p, 1, &r, 200);
    CHECK(p.learned_from == CX_LEARN_NONE && cx_pacer_rate(&p) == 0);
    /* a later, longer pause wins; an earlier one does not shorten it */
    cx_pacer_init(&p, 0, 4);
    r = info(-1, -1, -1, -1, 100);
    cx_pacer_observe(&p, 0, &r, 429);
    r = info(-1, -1, -1, -1, 1);
    cx_pacer_observe(&p, 0, &r, 429);
    CHECK(cx_pacer_take(&p, 50, 50, &wake) == 0 && wake == 100);
}

static void test_retry_delay(void)
{
    cx_retry_cfg c = {3, 0.5, 4, 120};
    /* full jitter: [0, min(cap, base * 2^(n-1))) */
    CHECK(cx_retry_delay(&c, 1, -1, 60, 0.0) == 0);
    CHECK(NEAR(cx_retry_delay(&c, 1, -1, 60, 0.5), 0.25));
    CHECK(NEAR(cx_retry_delay(&c, 2, -1, 60, 0.5), 0.5));
    CHECK(NEAR(cx_retry_delay(&c, 3, -1, 60, 0.5), 1.0));
    CHECK(cx_retry_delay(&c, 3, -1, 60, 0.999999) < 2.0);
    c.retries = 100;
    CHECK(NEAR(cx_retry_delay(&c, 60, -1, 60, 0.5), 2.0)); /* capped at 4, no overflow */
    CHECK(cx_retry_delay(&c, 60, -1, 60, 7) < 4 && cx_retry_delay(&c, 60, -1, 60, NAN) == 0);
    c.retries = 3;
    /* the budget */
    CHECK(cx_retry_delay(&c, 4, -1, 60, 0.5) == CX_GIVE_UP);
    CHECK(cx_retry_delay(&c, 4, 1, 60, 0.5) == CX_GIVE_UP);
    c.retries = 0;
    CHECK(cx_retry_delay(&c, 1, -1, 60, 0.5) == CX_GIVE_UP);
    c.retries = 3;
    /* Retry-After honoured in full, whatever the backoff would say */
    CHECK(cx_retry_delay(&c, 1, 7, 60, 0.9) == 7);
    CHECK(cx_retry_delay(&c, 1, 0, 60, 0.9) == 0);
    /* past the deadline, or over the cap: fail at once */
    CHECK(cx_retry_delay(&c, 1, 86400, 60, 0.5) == CX_PAST_DEADLINE);
    CHECK(cx_retry_delay(&c, 1, 60, 60, 0.5) == CX_PAST_DEADLINE);
    CHECK(cx_retry_delay(&c, 1, 121, INFINITY, 0.5) == CX_PAST_DEADLINE);
    CHECK(cx_retry_delay(&c, 1, 119, INFINITY, 0.5) == 119);
    c.retry_after_cap = 0; /* no cap but the deadline */
    CHECK(cx_retry_delay(&c, 1, 1000, INFINITY, 0.5) == 1000);
    /* a backoff that would pass the deadline; none left */
    CHECK(cx_retry_delay(&c, 3, -1, 0.9, 0.95) == CX_PAST_DEADLINE);
    CHECK(cx_retry_delay(&c, 1, -1, 0, 0.5) == CX_PAST_DEADLINE);
}

/* ---- simulated runs: a token-bucket server (R/s, burst R) and a client of `conc` callers ---- */

typedef struct {
    double rate, level, t;
    int headers;   /* send X-RateLimit-* on every answer (else only Retry-After on 429s) */
} server;

/* One request at `now`: 200 or 429, and what the answer says. */
static long serve(server *s, double now, cx_rlinfo *r)
{
    double cap = s->rate;
    s->level = fmin(cap, s->level + (now - s->t) * s->rate);
    s->t = now;
    cx_rlinfo_init(r);
    long status;
    if (s->level >= 1) {
        s->level -= 1;
        status = 200;
    } else {
        status = 429;
        r->retry_after = ceil((1 - s->level) / s->rate);
    }
    if (s->headers) {
        r->limit = cap;
        r->remaining = floor(s->level);
        r->reset = (cap - s->level) / s->rate;
    }
    return status;
}

typedef struct { double sent_at, answer_at, ready_at, asked; int state, tries; } job;
enum { WAITING, FLIGHT, DONE };

/* n calls through a pacer of conc; latency per answer; returns the wall time and counts. */
static double simulate(server *srv, cx_pacer *p, int n, double latency, long *requests, long *r429,
                       int *failed_calls)
{
    job *j = calloc((size_t)n, sizeof *j);
    if (!j) abort();
    cx_retry_cfg rc = {6, 0.25, 4, 120};
    double now = 0, end = 0;
    int done = 0, inflight = 0;
    *requests = *r429 = 0;
    *failed_calls = 0;
    unsigned long long rng = 88172645463325252ULL;
    for (int i = 0; i < n; i++) j[i].asked = -1;
    while (done < n && now < 3600) {
        for (int i = 0; i < n; i++) { /* answers due */
            if (j[i].state != FLIGHT || j[i].answer_at > now) continue;
            cx_rlinfo r;
            long st = serve(srv, j[i].sent_at, &r);
            inflight--;
            cx_pacer_observe(p, now, &r, st);
            if (st == 200) { j[i].state = DONE; done++; end = now; continue; }
            (*r429)++;
            rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
            double d = cx_retry_delay(&rc, j[i].tries, r.retry_after, 60, (double)(rng >> 11) / 9007199254740992.0);
            if (d < 0) { j[i].state = DONE; done++; (*failed_calls)++; continue; }
            j[i].state = WAITING;
            j[i].ready_at = now + d;
            j[i].asked = -1;
        }
        double next = now + 0.001;
        for (int i = 0; i < n && inflight < cx_pacer_concurrency(p); i++) { /* starts */
            if (j[i].state != WAITING || j[i].ready_at > now) continue;
            if (j[i].asked < 0) j[i].asked = now;
            double wake;
            if (!cx_pacer_take(p, now, j[i].asked, &wake)) { if (wake < next) next = wake; break; }
            j[i].state = FLIGHT;
            j[i].tries++;
            j[i].sent_at = now;
            j[i].answer_at = now + latency;
            inflight++;
            (*requests)++;
        }
        now = next;
    }
    free(j);
    return end;
}

static void test_simulated(void)
{
    const int n = 400;
    const double R = 20;
    for (int headers = 0; headers < 2; headers++) {
        server s = {R, R, 0, headers};
        cx_pacer p;
        cx_pacer_init(&p, 0, 8);
        long req, r429;
        int lost;
        double wall = simulate(&s, &p, n, 0.02, &req, &r429, &lost);
        double share = (double)r429 / (double)req;
        fprintf(stderr, "  %s: %d calls, %ld requests, %ld 429 (%.1f %%), wall %.2f s = %.2f x requests/R,"
                " paced %.1f s\n", headers ? "X-RateLimit-* on every answer" : "429 + Retry-After only",
                n, req, r429, 100 * share, wall, wall / (req / R), p.paced_s);
        CHECK(lost == 0);
        /* the targets, under a deterministic fake clock (the first burst of R is free) */
        CHECK(share <= 0.02);
        CHECK(wall <= 1.15 * (req / R));
    }
    /* the operator's rate alone: no 429 at all */
    server s = {R, R, 0, 0};
    cx_pacer p;
    cx_pacer_init(&p, R * 0.95, 8);
    long req, r429;
    int lost;
    double wall = simulate(&s, &p, n, 0.02, &req, &r429, &lost);
    CHECK(r429 == 0 && lost == 0 && wall <= 1.15 * (req / R));
}

int main(void)
{
    test_retry_after();
    test_headers();
    test_pacer_basics();
    test_pacer_learning();
    test_retry_delay();
    test_simulated();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
