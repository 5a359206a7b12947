/* Pacing and retry policy: rate-limit headers, the GCRA limiter with AIMD concurrency, the retry delay (pace.h). */
#include <math.h>
#include <string.h>

#include "pace.h"

/* ---- parsing ---- */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
static int is_blank(int c) { return c == ' ' || c == '\t'; }
static int is_digit(int c) { return c >= '0' && c <= '9'; }

/* name[0..n) equals the lower-case z, in any case */
static int name_is(const char *name, size_t n, const char *z)
{
    size_t zl = strlen(z);
    if (n != zl) return 0;
    for (size_t i = 0; i < n; i++)
        if (lower((unsigned char)name[i]) != z[i]) return 0;
    return 1;
}

static void trim(const char **p, const char **e)
{
    while (*p < *e && is_blank(**p)) (*p)++;
    while (*e > *p && is_blank((*e)[-1])) (*e)--;
}

/* A plain decimal at *p (digits, an optional fraction); advances *p. Returns -1 if none. */
static double number(const char **p, const char *e)
{
    const char *s = *p;
    double v = 0;
    int digits = 0;
    while (s < e && is_digit(*s)) { v = v * 10 + (*s - '0'); s++; digits++; }
    if (!digits) return -1;
    if (s < e && *s == '.') {
        double f = 0.1;
        s++;
        while (s < e && is_digit(*s)) { v += (*s - '0') * f; f /= 10; s++; }
    }
    *p = s;
    return isfinite(v) ? v : -1;
}

/* The first number of the value, followed by nothing, a list separator or parameters. */
static double first_number(const char *p, const char *e)
{
    trim(&p, &e);
    double v = number(&p, e);
    if (v < 0) return -1;
    while (p < e && is_blank(*p)) p++;
    return p == e || *p == ',' || *p == ';' ? v : -1;
}

/* Reset: delta seconds, or an epoch time when over 1e9. */
static double reset_value(double v, double wall)
{
    if (v < 0) return -1;
    if (v > 1e9) v = v > wall ? v - wall : 0;
    return v;
}

/* ---- HTTP dates ---- */

static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static int month_of(const char *p, const char *e)
{
    static const char *const names[] = {"jan", "feb", "mar", "apr", "may", "jun",
                                        "jul", "aug", "sep", "oct", "nov", "dec"};
    if (e - p < 3) return 0;
    for (int m = 0; m < 12; m++)
        if (lower((unsigned char)p[0]) == names[m][0] && lower((unsigned char)p[1]) == names[m][1]
            && lower((unsigned char)p[2]) == names[m][2])
            return m + 1;
    return 0;
}

/* exactly k digits at *p */
static int digits(const char **p, const char *e, int k, int *out)
{
    int v = 0;
    for (int i = 0; i < k; i++) {
        if (*p >= e || !is_digit(**p)) return 0;
        v = v * 10 + (*(*p)++ - '0');
    }
    *out = v;
    return 1;
}

static int lit(const char **p, const char *e, char c)
{
    if (*p >= e || **p != c) return 0;
    (*p)++;
    return 1;
}

static int hms(const char **p, const char *e, int *h, int *mi, int *s)
{
    return digits(p, e, 2, h) && lit(p, e, ':') && digits(p, e, 2, mi) && lit(p, e, ':')
        && digits(p, e, 2, s) && *h < 24 && *mi < 60 && *s < 61;
}

/* The epoch time of an HTTP-date in p[0..e), or -1. */
static double http_date(const char *p, const char *e)
{
    int day, year, h, mi, s, mon;
    const char *w = p;
    while (p < e && ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))) p++;
    if (p - w < 3) return -1;
    if (p < e && *p == ',') { /* IMF-fixdate or RFC 850 */
        p++;
        if (!lit(&p, e, ' ') || !digits(&p, e, 2, &day)) return -1;
        char sep = p < e ? *p : 0;
        if (sep != ' ' && sep != '-') return -1;
        p++;
        if (!(mon = month_of(p, e))) return -1;
        p += 3;
        if (!lit(&p, e, sep)) return -1;
        if (sep == ' ') {
            if (!digits(&p, e, 4, &year)) return -1;
        } else {
            if (!digits(&p, e, 2, &year)) return -1;
            year += year < 70 ? 2000 : 1900;
        }
        if (!lit(&p, e, ' ') || !hms(&p, e, &h, &mi, &s) || !lit(&p, e, ' ')) return -1;
        if (e - p != 3 || lower(p[0]) != 'g' || lower(p[1]) != 'm' || lower(p[2]) != 't') return -1;
    } else { /* asctime: "Sun Nov  6 08:49:37 1994" */
        if (!lit(&p, e, ' ') || !(mon = month_of(p, e))) return -1;
        p += 3;
        if (!lit(&p, e, ' ')) return -1;
        if (p < e && *p == ' ') {
            p++;
            if (!digits(&p, e, 1, &day)) return -1;
        } else if (!digits(&p, e, 2, &day)) {
            return -1;
        }
        if (!lit(&p, e, ' ') || !hms(&p, e, &h, &mi, &s) || !lit(&p, e, ' ')
            || !digits(&p, e, 4, &year) || p != e)
            return -1;
    }
    static const int mdays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (day < 1 || day > mdays[mon - 1]) return -1;
    if (mon == 2 && day == 29 && !(year % 4 == 0 && (year % 100 != 0 || year % 400 == 0))) return -1;
    return (double)days_from_civil(year, (unsigned)mon, (unsigned)day) * 86400.0 + h * 3600.0
         + mi * 60.0 + s;
}

double cx_retry_after_parse(const char *v, size_t n, double wall)
{
    const char *p = v, *e = v + n;
    trim(&p, &e);
    if (p == e) return -1;
    double d;
    if (is_digit(*p)) {
        const char *q = p;
        while (q < e && is_digit(*q)) q++;
        if (q != e) return -1; /* delay-seconds is digits only */
        d = 0;
        for (q = p; q < e && d <= CX_RETRY_AFTER_MAX; q++) d = d * 10 + (*q - '0');
    } else {
        double t = http_date(p, e);
        if (t < 0) return -1;
        d = t - wall;
        if (!(d > 0)) d = 0;
    }
    return d > CX_RETRY_AFTER_MAX ? CX_RETRY_AFTER_MAX : d;
}

/* ---- structured fields: items split by ',', members by ';', quoted strings skipped ---- */

typedef void (*member_fn)(void *ctx, int item, int member, const char *k, size_t kl,
                          const char *v, const char *ve);

static void each_member(const char *p, const char *e, member_fn fn, void *ctx)
{
    int item = 0, member = 0;
    while (p < e) {
        const char *s = p;
        int quoted = 0;
        while (p < e && (quoted || (*p != ',' && *p != ';'))) {
            if (*p == '"') quoted = !quoted;
            else if (*p == '\\' && quoted && p + 1 < e) p++;
            p++;
        }
        const char *me = p, *ms = s;
        trim(&ms, &me);
        const char *eq = ms;
        while (eq < me && *eq != '=' && *eq != '"') eq++;
        if (eq < me && *eq == '=') {
            const char *ke = eq, *vs = eq + 1;
            trim(&ms, &ke);
            trim(&vs, &me);
            fn(ctx, item, member, ms, (size_t)(ke - ms), vs, me);
        } else {
            fn(ctx, item, member, NULL, 0, ms, me); /* a bare member */
        }
        if (p < e && *p == ',') { item++; member = 0; }
        else member++;
        if (p < e) p++;
    }
}

static double member_number(const char *v, const char *ve)
{
    double x = number(&v, ve);
    return x >= 0 && v == ve ? x : -1;
}

/* RateLimit-Policy: per item the limit (q= or a leading number) and window (w=). */
typedef struct { int item; double q, w, best_q, best_w; } policy_ctx;

static void policy_done(policy_ctx *c)
{
    if (c->q < 0) return;
    double rate = c->w > 0 ? c->q / c->w : -1, best = c->best_w > 0 ? c->best_q / c->best_w : -1;
    if (c->best_q < 0 || (rate >= 0 && (best < 0 || rate < best))) {
        c->best_q = c->q;
        c->best_w = c->w;
    }
}

static void policy_member(void *ctx, int item, int member, const char *k, size_t kl, const char *v,
                          const char *ve)
{
    policy_ctx *c = ctx;
    if (item != c->item) {
        policy_done(c);
        c->item = item;
        c->q = c->w = -1;
    }
    if (!k && member == 0) {
        double x = member_number(v, ve);
        if (x >= 0) c->q = x;
    } else if (k && name_is(k, kl, "q")) {
        c->q = member_number(v, ve);
    } else if (k && name_is(k, kl, "w")) {
        c->w = member_number(v, ve);
    }
}

/* RateLimit: limit=, remaining= / r=, reset= / t=; several items: the lowest remaining, the
 * longest reset, the lowest limit. */
typedef struct { double limit, remaining, reset; } rl_ctx;

static void rl_member(void *ctx, int item, int member, const char *k, size_t kl, const char *v,
                      const char *ve)
{
    rl_ctx *c = ctx;
    (void)item;
    (void)member;
    if (!k) return;
    double x = member_number(v, ve);
    if (x < 0) return;
    if (name_is(k, kl, "limit") || name_is(k, kl, "q")) {
        if (c->limit < 0 || x < c->limit) c->limit = x;
    } else if (name_is(k, kl, "remaining") || name_is(k, kl, "r")) {
        if (c->remaining < 0 || x < c->remaining) c->remaining = x;
    } else if (name_is(k, kl, "reset") || name_is(k, kl, "t")) {
        if (x > c->reset) c->reset = x;
    }
}

void cx_rlinfo_init(cx_rlinfo *r)
{
    r->limit = r->remaining = r->reset = r->window = r->retry_after = -1;
}

int cx_rlinfo_header(cx_rlinfo *r, const char *name, size_t nl, const char *value, size_t vl,
                     double wall)
{
    const char *p = value, *e = value + vl;
    trim(&p, &e);
    double x;
    if (name_is(name, nl, "x-ratelimit-limit") || name_is(name, nl, "ratelimit-limit")) {
        if ((x = first_number(p, e)) >= 0) r->limit = x;
    } else if (name_is(name, nl, "x-ratelimit-remaining") || name_is(name, nl, "ratelimit-remaining")) {
        if ((x = first_number(p, e)) >= 0) r->remaining = x;
    } else if (name_is(name, nl, "x-ratelimit-reset") || name_is(name, nl, "ratelimit-reset")) {
        if ((x = first_number(p, e)) >= 0) r->reset = reset_value(x, wall);
    } else if (name_is(name, nl, "retry-after")) {
        if ((x = cx_retry_after_parse(p, (size_t)(e - p), wall)) >= 0) r->retry_after = x;
    } else if (name_is(name, nl, "ratelimit-policy")) {
        policy_ctx c = {0, -1, -1, -1, -1};
        each_member(p, e, policy_member, &c);
        policy_done(&c);
        if (c.best_q >= 0) {
            r->limit = c.best_q;
            r->window = c.best_w > 0 ? c.best_w : -1;
        }
    } else if (name_is(name, nl, "ratelimit")) {
        rl_ctx c = {-1, -1, -1};
        each_member(p, e, rl_member, &c);
        if (c.limit >= 0) r->limit = c.limit;
        if (c.remaining >= 0) r->remaining = c.remaining;
        if (c.reset >= 0) r->reset = reset_value(c.reset, wall);
    } else {
        return 0;
    }
    return 1;
}

/* ---- the limiter ---- */

#define OBS_WINDOW 1.0 /* seconds of takes per observation of the send rate */
#define LOW_REMAINING 10.0

void cx_pacer_init(cx_pacer *p, double set_rps, int conc_max)
{
    memset(p, 0, sizeof *p);
    p->set_rps = set_rps > 0 && isfinite(set_rps) ? set_rps : 0;
    p->burst = 1;
    p->conc_max = conc_max < 1 ? 1 : conc_max;
    p->conc = p->conc_max;
    p->tat = -INFINITY;
    p->paused_until = -INFINITY;
    p->obs_start = NAN; /* set by the first take */
    p->epoch_start = NAN;
    p->paced_mark = -INFINITY;
}

void cx_pacer_set_rate(cx_pacer *p, double set_rps)
{
    p->set_rps = set_rps > 0 && isfinite(set_rps) ? set_rps : 0;
}

double cx_pacer_rate(const cx_pacer *p)
{
    double s = p->set_rps, l = p->learned_rps;
    if (s > 0 && l > 0) return s < l ? s : l;
    return s > 0 ? s : l > 0 ? l : 0;
}

int cx_pacer_take(cx_pacer *p, double now, double asked, double *wake)
{
    double at = now;
    if (p->paused_until > at) at = p->paused_until;
    double r = cx_pacer_rate(p);
    if (r > 0) {
        double t = 1.0 / r, tau = ((p->burst >= 1 ? p->burst : 1) - 1) * t;
        if (p->tat > now + tau + t) p->tat = now + tau + t; /* a lower rate's backlog: one interval */
        double ready = p->tat - tau;
        if (ready > at) at = ready;
    }
    if (at > now) {
        if (wake) *wake = at;
        return 0;
    }
    if (r > 0) {
        double t = 1.0 / r;
        p->tat = (p->tat > now ? p->tat : now) + t;
    }
    /* paced_s is wall time: the part of [asked, now] not counted for an earlier request */
    if (asked < now) { /* this request was held: count what no earlier held one counted */
        if (asked < p->paced_mark) asked = p->paced_mark;
        if (asked < now) p->paced_s += now - asked;
        if (now > p->paced_mark) p->paced_mark = now;
    }
    p->taken++;
    /* the observed send rate, over windows of OBS_WINDOW seconds */
    if (isnan(p->obs_start)) {
        p->obs_start = now;
        p->obs_count = 0;
    }
    p->obs_count++;
    if (isnan(p->epoch_start)) p->epoch_start = now;
    if (now - p->obs_start >= OBS_WINDOW) {
        p->obs_rps = (double)p->obs_count / (now - p->obs_start);
        p->obs_start = now;
        p->obs_count = 0;
    }
    return 1;
}

/* The current send rate as far as known: the last observation, else the partial window. */
static double observed(const cx_pacer *p, double now)
{
    if (p->obs_rps > 0) return p->obs_rps;
    if (!isnan(p->obs_start) && now - p->obs_start >= 0.1 && p->obs_count > 0)
        return (double)p->obs_count / (now - p->obs_start);
    return 0;
}

static void learn(cx_pacer *p, double rps, int from)
{
    p->learned_rps = rps > 0 && isfinite(rps) ? rps : 0;
    p->learned_from = p->learned_rps > 0 ? from : CX_LEARN_NONE;
}

/* What the headers say about the rate; returns 1 if they set it. */
static int learn_headers(cx_pacer *p, double now, const cx_rlinfo *rl)
{
    if (rl->remaining == 0 && rl->reset > 0 && now + rl->reset > p->paused_until)
        p->paused_until = now + rl->reset;
    if (rl->limit > 0) {
        if (rl->reset > p->max_reset && rl->reset <= 86400) p->max_reset = rl->reset;
        double w = rl->window > 0 ? rl->window : p->max_reset;
        if (w > 0) {
            learn(p, CX_PACE_MARGIN * rl->limit / w, CX_LEARN_POLICY);
            return 1;
        }
    } else if (rl->remaining >= 0 && rl->reset > 0) {
        if (rl->remaining <= LOW_REMAINING) {
            double rem = rl->remaining > 1 ? rl->remaining : 1;
            learn(p, CX_PACE_MARGIN * rem / rl->reset, CX_LEARN_REMAINING);
            return 1;
        }
        if (p->learned_from == CX_LEARN_REMAINING) learn(p, 0, CX_LEARN_NONE); /* plenty again */
    }
    return 0;
}

void cx_pacer_observe(cx_pacer *p, double now, const cx_rlinfo *rl, long status)
{
    int said = rl ? learn_headers(p, now, rl) : 0;
    if (status == 429) {
        p->throttled++;
        double ra = rl && rl->retry_after >= 0 ? rl->retry_after : -1;
        if (ra >= 0 && now + ra > p->paused_until) p->paused_until = now + ra;
        if (now <= p->epoch_start) return; /* sent before the last decrease: the same burst */
        p->ok_streak = 0;
        p->quiet = 0;
        p->conc = p->conc > 1 ? p->conc / 2 : 1;
        if (!said) {
            /* what the server admitted since the last decrease, over that time and the wait
             * it asks for now: a token bucket's rate, or a window's */
            double span = now - p->epoch_start + (ra > 0 ? ra : 0);
            double est = !isnan(p->epoch_start) && span > 0 && p->epoch_ok > 0
                       ? (double)p->epoch_ok / span : 0;
            double cur = cx_pacer_rate(p), next = 0;
            if (est > 0) next = CX_PACE_MARGIN * est;
            if (cur > 0 && (next <= 0 || next >= cur))
                next = est > 0 ? CX_PACE_MARGIN * cur : CX_PACE_DECREASE * cur;
            if (next <= 0) next = CX_PACE_DECREASE * observed(p, now);
            if (next > 0) learn(p, next, CX_LEARN_429);
        }
        p->epoch_start = now > p->paused_until ? now : p->paused_until;
        p->epoch_ok = 0;
    } else if (status >= 200 && status < 300) {
        p->epoch_ok++;
        p->ok_streak++;
        if (p->conc < p->conc_max && p->ok_streak >= p->conc) {
            p->conc++;
            p->ok_streak = 0;
        }
        if (p->learned_from == CX_LEARN_429) {
            double round = 2 * p->learned_rps > 20 ? 2 * p->learned_rps : 20;
            if (++p->quiet >= round) {
                double obs = observed(p, now);
                p->quiet = 0;
                learn(p, p->learned_rps * CX_PACE_INCREASE, CX_LEARN_429);
                if (obs > 0 && p->learned_rps > 2 * obs) learn(p, 0, CX_LEARN_NONE);
            }
        }
    }
}

int cx_pacer_concurrency(const cx_pacer *p) { return p->conc; }

/* ---- retries ---- */

double cx_retry_delay(const cx_retry_cfg *c, int used, double retry_after, double remaining,
                      double u01)
{
    if (used < 1) used = 1;
    if (used > c->retries) return CX_GIVE_UP;
    if (!(remaining > 0)) return CX_PAST_DEADLINE;
    double d;
    if (retry_after >= 0) {
        if (c->retry_after_cap > 0 && retry_after > c->retry_after_cap) return CX_PAST_DEADLINE;
        d = retry_after;
    } else {
        if (!(u01 >= 0)) u01 = 0; /* NaN too */
        if (u01 >= 1) u01 = 1.0 - 0x1p-53; /* the largest double under 1 */
        double ceil = c->backoff_base > 0 ? c->backoff_base : 0;
        for (int i = 1; i < used && ceil < c->backoff_cap; i++) ceil *= 2;
        if (c->backoff_cap > 0 && ceil > c->backoff_cap) ceil = c->backoff_cap;
        d = u01 * ceil;
    }
    return d >= remaining ? CX_PAST_DEADLINE : d;
}
