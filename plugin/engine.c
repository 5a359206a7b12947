/* engine: the call engine without I/O (see engine.h): the API codec, the token lifecycle and
 * each call's state machine. Every state change of a call goes through one function, step(). */
#include <ctype.h>
#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "engine.h"
#include "scrub.h"

#define REDACTED "[redacted]"
#define EVENT_POLL 0.05 /* a call waiting for another one (token, a free slot) asks again */

/* Call states. */
enum {
    S_READY = 0, /* wants to send its next attempt (after the token, the limiter) */
    S_WAIT,      /* backing off until not_before */
    S_TOKEN,     /* its token request is out */
    S_SENT,      /* its API/webhook request is out */
    S_DONE
};

struct cx_engine {
    cx_config cfg;         /* strings owned (secrets wiped) */
    char *token_body;      /* the token request's form body (holds secrets: wiped) */
    char *token_basic;     /* "Authorization: Basic ..." or NULL (wiped) */
    char *ua_line;         /* "User-Agent: ..." */
    /* the token */
    char *bearer;          /* "Authorization: Bearer <token>" (wiped) */
    size_t bearer_prefix;
    double tok_refresh_at, tok_expiry, tok_expires_in;
    char *tok_scope;
    unsigned tok_gen, tok_own_gen;
    cx_call *tok_fetcher;  /* the call whose token request is out or pending, if any */
    const char *tok_fail_code;
    char tok_fail_msg[CX_MSG];
    double tok_fail_until;
    /* pacing and accounting */
    cx_pacer pacer;
    int inflight;          /* API attempts out */
    int next_id;
    uint64_t rng;
    cx_stats stats;
};

/* ---- small helpers ---- */

static char *dup_str(const char *s)
{
    if (!s) return NULL;
    size_t n = strlen(s);
    char *p = malloc(n + 1);
    if (p) memcpy(p, s, n + 1);
    return p;
}

static void wipe_free(char **p)
{
    if (*p) {
        OPENSSL_cleanse(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

static char *line_of(const char *name, const char *value)
{
    size_t n = strlen(name) + strlen(value) + 3;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s: %s", name, value);
    return p;
}

static double rng_unit(cx_engine *e)
{
    /* xorshift64*, seeded by the binding from a CSPRNG; only for backoff jitter */
    uint64_t x = e->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    e->rng = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

static void trace(const cx_engine *e, const cx_call *c, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void trace(const cx_engine *e, const cx_call *c, const char *fmt, ...)
{
    if (!e->cfg.trace) return;
    char line[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    e->cfg.trace(e->cfg.trace_ud, c ? c->id : 0, line);
}

/* ---- the API codec ---- */

const char *cx_bad_id(const char *s, size_t n)
{
    if (n == 0) return "is empty";
    if (n > 128) return "is longer than 128 characters";
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.')) return "is a dot segment";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!(isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~'))
            return "contains characters not allowed in a URL path segment (allowed: A-Z a-z 0-9 - . _ ~)";
    }
    return NULL;
}

int cx_header_value_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e) return 0;
    return 1;
}

/* RFC 9110's entity-tag: [W/]"<printable ASCII but the quote>", at most CX_ETAG_MAX bytes; it
 * goes back in If-Match, so anything else is refused rather than stored cut or dropped (a
 * dropped one would make the next write unconditional). */
int cx_etag_ok(const char *v, size_t n)
{
    if (n > CX_ETAG_MAX) return 0;
    if (n >= 2 && v[0] == 'W' && v[1] == '/') { v += 2; n -= 2; }
    if (n < 2 || v[0] != '"' || v[n - 1] != '"') return 0;
    for (size_t i = 1; i + 1 < n; i++)
        if ((unsigned char)v[i] < 0x21 || (unsigned char)v[i] > 0x7e || v[i] == '"') return 0;
    return 1;
}

int cx_token_chars_ok(const char *s, size_t n)
{
    if (n == 0) return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f) return 0;
    return 1;
}

static void form_field(cxone_buf *b, const char *k, const char *v)
{
    static const char hex[] = "0123456789ABCDEF";
    if (b->len) cxone_buf_addc(b, '&');
    cxone_buf_addstr(b, k);
    cxone_buf_addc(b, '=');
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if (isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
            cxone_buf_addc(b, (char)c);
        } else {
            char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
            cxone_buf_add(b, esc, 3);
        }
    }
}

/* "Authorization: Basic base64(id:secret)", malloc'ed (wipe it), or NULL when out of memory. */
static char *basic_line(const char *id, const char *secret)
{
    cxone_buf raw;
    cxone_buf_init(&raw);
    cxone_buf_addstr(&raw, id);
    cxone_buf_addc(&raw, ':');
    cxone_buf_addstr(&raw, secret);
    if (raw.oom) { cxone_buf_free(&raw); return NULL; }
    static const char pre[] = "Authorization: Basic ";
    size_t enc = 4 * ((raw.len + 2) / 3);
    char *out = malloc(sizeof pre + enc + 1);
    if (out) {
        memcpy(out, pre, sizeof pre - 1);
        EVP_EncodeBlock((unsigned char *)out + sizeof pre - 1, (const unsigned char *)raw.p, (int)raw.len);
    }
    cxone_buf_free(&raw);
    return out;
}

/* A minimal reader of the flat JSON object a token endpoint answers, so that the token never
 * becomes a (non-wipeable) Lua string: js_member finds the last top-level member `key`. */
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
            case 'u': /* kept escaped: a token with it fails the character check */
                if (e - p < 5) return NULL;
                if (out) cxone_buf_addc(out, '\\');
                c = 'u';
                break;
            default: return NULL;
            }
        }
        if (out) cxone_buf_addc(out, c);
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

/* 1 found (*value at its first byte), 0 absent, -1 not a well-formed object. */
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
        cxone_buf_free(&k);
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

/* Member `key` as a string (into str) or a number (into num): 1, 0 absent or other type, -1. */
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
        *num = strtod(v, NULL);
        return 1;
    }
    return 0;
}

const char *cx_quoted_field(long status, int webhook, const char **alt)
{
    int client_error = status >= 400 && status < 500 && status != 429;
    int api_own = status == 401 || status == 403 || status == 404 || status == 409 || status == 412;
    int quotes_message = client_error && (webhook || !api_own);
    *alt = quotes_message ? "error" : NULL;
    return status == 403 && !webhook ? "required_scope" : quotes_message ? "message" : NULL;
}

const char *cx_status_failure(long status, int attempts, int webhook, const char *client_id,
                              const char *server, char *msg, size_t cap)
{
    char tries[48] = "";
    if (attempts > 0)
        snprintf(tries, sizeof tries, " after %d attempt%s", attempts, attempts == 1 ? "" : "s");
    if (webhook && status >= 400 && status < 500 && status != 429) {
        /* a CI receiver, not the API: the same codes, its own words */
        snprintf(msg, cap, "the webhook was rejected (HTTP %ld)%s%s", status, server[0] ? ": " : "",
                 server);
        return status == 401 ? "auth" : status == 403 ? "scope" : status == 404 ? "not_found"
             : status == 409 || status == 412 ? "conflict" : "invalid";
    }
    if (status == 401) {
        snprintf(msg, cap, "the API refused the token (HTTP 401) even after a token refresh: check "
                 "that client %s is still authorised", client_id);
        return "auth";
    }
    if (status == 403) {
        if (server[0])
            snprintf(msg, cap, "permission denied (HTTP 403): grant the scope '%s' to client %s",
                     server, client_id);
        else
            snprintf(msg, cap, "permission denied (HTTP 403): client %s lacks the scope this "
                     "operation needs", client_id);
        return "scope";
    }
    if (status == 404) {
        snprintf(msg, cap, "not found (HTTP 404): check the action id and environment id");
        return "not_found";
    }
    if (status == 409 || status == 412) {
        snprintf(msg, cap, "conflict (HTTP %ld): the target changed since the plan was made; re-read it and "
                 "plan again (after a retried PATCH/PUT with If-Match this can also mean an earlier "
                 "attempt was applied but its answer was lost)", status);
        return "conflict";
    }
    if (status == 429) {
        snprintf(msg, cap, "rate limited (HTTP 429)%s; try again later or lower the request rate "
                 "(rate_limit, --max-rps)", tries);
        return "rate_limited";
    }
    if (status >= 500 && status < 600) {
        snprintf(msg, cap, "server error (HTTP %ld)%s", status, tries);
        return "server";
    }
    if (status >= 400 && status < 500) {
        snprintf(msg, cap, "the request was rejected (HTTP %ld)%s%s", status,
                 server[0] ? ": " : "", server);
        return "invalid";
    }
    snprintf(msg, cap, "unexpected HTTP status %ld", status);
    return "format";
}

/* ---- scrubbing ---- */

/* Calls fn for each secret of the engine (client secret, key secret, token) and of the call (its
 * masked values, stored length-prefixed: 4 bytes of length, then the bytes); ORs the results. */
static int each_secret(const cx_engine *e, const cx_call *c, int (*fn)(void *, const char *, size_t),
                       void *ud)
{
    int rc = 0;
    const char *own[] = {e->cfg.client_secret, e->cfg.key_secret,
                         e->bearer ? e->bearer + e->bearer_prefix : NULL};
    for (size_t i = 0; i < 3; i++)
        if (own[i]) rc |= fn(ud, own[i], strlen(own[i]));
    if (c && c->secrets.p) {
        size_t off = 0;
        while (off + 4 <= c->secrets.len) {
            uint32_t len;
            memcpy(&len, c->secrets.p + off, 4);
            off += 4;
            if (len > c->secrets.len - off) break;
            rc |= fn(ud, c->secrets.p + off, len);
            off += len;
        }
    }
    return rc;
}

static int add_to_set(void *set, const char *p, size_t n) { return cx_secrets_add(set, p, n); }

int cx_call_secrets(const cx_engine *e, const cx_call *c, cx_secrets *set)
{
    return each_secret(e, c, add_to_set, set);
}

/* Text that came from outside (a server, a driver's error): any piece of a secret. */
static void scrub_foreign(const cx_engine *e, const cx_call *c, char *msg, size_t cap)
{
    cx_secrets set;
    cx_secrets_init(&set);
    cx_call_secrets(e, c, &set); /* a set that ran out of memory hides the whole text */
    cx_scrub_inplace(&set, msg, cap);
    cx_secrets_free(&set);
}

/* A NUL-terminated message of cap bytes, for scrub_whole. */
typedef struct {
    char *s;
    size_t cap;
} msgbuf_t;

/* Replaces each whole occurrence of the secret in the message. */
static int scrub_whole(void *ud, const char *secret, size_t slen)
{
    static const size_t rl = sizeof REDACTED - 1;
    msgbuf_t *m = ud;
    char *s = m->s;
    if (slen < 4) return 0;
    char *hit;
    size_t from = 0;
    while ((hit = memmem(s + from, strlen(s + from), secret, slen)) != NULL) {
        size_t pos = (size_t)(hit - s), len = strlen(s), tail = len - pos - slen;
        if (pos + rl + tail + 1 > m->cap) { /* no room: cut the message at the secret */
            s[pos] = '\0';
            if (pos + rl + 1 <= m->cap) memcpy(s + pos, REDACTED, rl + 1);
            return 0;
        }
        memmove(s + pos + rl, s + pos + slen, tail + 1);
        memcpy(s + pos, REDACTED, rl);
        from = pos + rl;
    }
    return 0;
}

/* Our own words (which may name the client id, a URL, a header): whole secrets only, as a
 * safety net; pieces of the text that came from outside were scrubbed as such before. */
void cx_scrub_msg(const cx_engine *e, const cx_call *c, char *msg, size_t cap)
{
    msgbuf_t m = {msg, cap};
    each_secret(e, c, scrub_whole, &m);
}

/* ---- the engine object ---- */

static void drop_token(cx_engine *e)
{
    wipe_free(&e->bearer);
    free(e->tok_scope);
    e->tok_scope = NULL;
    e->bearer_prefix = 0;
    e->tok_refresh_at = e->tok_expiry = 0;
}

void cx_engine_free(cx_engine *e)
{
    if (!e) return;
    drop_token(e);
    wipe_free(&e->token_body);
    wipe_free(&e->token_basic);
    free(e->ua_line);
    char **s[] = {(char **)&e->cfg.base_url, (char **)&e->cfg.token_url, (char **)&e->cfg.client_id,
                  (char **)&e->cfg.client_secret, (char **)&e->cfg.key_id,
                  (char **)&e->cfg.key_secret, (char **)&e->cfg.scope, (char **)&e->cfg.user_agent};
    for (size_t i = 0; i < sizeof s / sizeof *s; i++) wipe_free(s[i]);
    OPENSSL_cleanse(e, sizeof *e);
    free(e);
}

cx_engine *cx_engine_new(const cx_config *cfg)
{
    cx_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->cfg = *cfg;
    const char **s[] = {&e->cfg.base_url, &e->cfg.token_url, &e->cfg.client_id, &e->cfg.client_secret,
                        &e->cfg.key_id, &e->cfg.key_secret, &e->cfg.scope, &e->cfg.user_agent};
    int oom = 0;
    for (size_t i = 0; i < sizeof s / sizeof *s; i++) {
        const char *orig = *s[i];
        *s[i] = orig ? dup_str(orig) : NULL;
        if (orig && !*s[i]) oom = 1;
    }
    if (!oom && (!e->cfg.base_url || !e->cfg.token_url || !e->cfg.client_id || !e->cfg.client_secret))
        oom = 1; /* the bindings never pass these NULL */
    if (!oom) {
        cxone_buf b;
        cxone_buf_init(&b);
        const cx_config *c = &e->cfg;
        if (c->key_id) {
            form_field(&b, "grant_type", "password");
            form_field(&b, "username", c->key_id);
            form_field(&b, "password", c->key_secret ? c->key_secret : "");
            e->token_basic = basic_line(c->client_id, c->client_secret);
            oom |= !e->token_basic;
        } else if (c->basic_auth) {
            form_field(&b, "grant_type", "client_credentials");
            e->token_basic = basic_line(c->client_id, c->client_secret);
            oom |= !e->token_basic;
        } else {
            form_field(&b, "grant_type", "client_credentials");
            form_field(&b, "client_id", c->client_id);
            form_field(&b, "client_secret", c->client_secret);
        }
        if (c->scope && *c->scope) form_field(&b, "scope", c->scope);
        if (!b.oom && cxone_buf_cstr(&b) == 0) e->token_body = dup_str(b.p);
        oom |= !e->token_body;
        cxone_buf_free(&b);
        e->ua_line = line_of("User-Agent", c->user_agent ? c->user_agent : "cxone-overrides");
        oom |= !e->ua_line;
    }
    if (oom) {
        cx_engine_free(e);
        return NULL;
    }
    if (e->cfg.max_concurrency < 1) e->cfg.max_concurrency = 1;
    if (!(e->cfg.token_fail_memory >= 0)) e->cfg.token_fail_memory = 5;
    cx_pacer_init(&e->pacer, e->cfg.rate_limit, e->cfg.max_concurrency);
    e->rng = e->cfg.seed | 1;
    return e;
}

const cx_config *cx_engine_config(const cx_engine *e) { return &e->cfg; }
const cx_stats *cx_engine_stats(cx_engine *e)
{
    e->stats.paced_s = e->pacer.paced_s;
    return &e->stats;
}
cx_pacer *cx_engine_pacer(cx_engine *e) { return &e->pacer; }
void cx_engine_reseed(cx_engine *e, uint64_t seed) { e->rng = seed | 1; }

static int token_fresh(const cx_engine *e, double now) { return e->bearer && now < e->tok_refresh_at; }

double cx_engine_token_ttl(const cx_engine *e, double now)
{
    if (!e->bearer) return -1;
    double ttl = e->tok_expiry - now;
    return ttl > 0 ? ttl : 0;
}

double cx_engine_token_expires_in(const cx_engine *e) { return e->tok_expires_in; }
const char *cx_engine_token_scope(const cx_engine *e) { return e->tok_scope; }
unsigned cx_engine_token_gen(const cx_engine *e) { return e->tok_own_gen; }

const char *cx_engine_token(const cx_engine *e, double now, double *ttl)
{
    if (!token_fresh(e, now)) return NULL;
    if (ttl) *ttl = e->tok_refresh_at - now;
    return e->bearer + e->bearer_prefix;
}

/* Stores a token obtained at `start` (the moment its request went out), valid expires_in s. */
static int store_token(cx_engine *e, const char *tok, size_t n, double expires_in, double life,
                       const char *scope, double start)
{
    static const char pre[] = "Authorization: Bearer ";
    char *line = malloc(sizeof pre + n);
    char *sc = scope ? dup_str(scope) : NULL;
    if (!line || (scope && !sc)) {
        free(line);
        free(sc);
        return -1;
    }
    memcpy(line, pre, sizeof pre - 1);
    memcpy(line + sizeof pre - 1, tok, n);
    line[sizeof pre - 1 + n] = '\0';
    drop_token(e);
    e->bearer = line;
    e->bearer_prefix = sizeof pre - 1;
    e->tok_scope = sc;
    e->tok_expires_in = expires_in;
    e->tok_expiry = start + expires_in;
    e->tok_refresh_at = start + life;
    e->tok_gen++;
    e->tok_fail_code = NULL;
    e->tok_fail_until = 0;
    return 0;
}

int cx_engine_token_import(cx_engine *e, const char *tok, size_t n, double ttl, double now)
{
    if (!cx_token_chars_ok(tok, n) || !(ttl > 0)) return -1;
    if (store_token(e, tok, n, ttl, ttl, NULL, now) != 0) return -1;
    /* a call whose token request was asked for but may not have gone out (its driver took
     * another worker's token instead) goes on with this one; an answer to that request, if it
     * comes, is ignored */
    cx_call *f = e->tok_fetcher;
    if (f && f->state == S_TOKEN) {
        f->state = S_READY;
        f->holds_token_fetch = 0;
    }
    e->tok_fetcher = NULL;
    return 0;
}

void cx_engine_token_failed(cx_engine *e, const char *code, const char *msg, double until)
{
    static const char *const codes[] = {"auth", "scope", "rate_limited", "server", "format",
                                        "network", "timeout", "tls", "memory", "config"};
    e->tok_fail_code = "network";
    for (size_t i = 0; i < sizeof codes / sizeof *codes; i++)
        if (code && strcmp(code, codes[i]) == 0) e->tok_fail_code = codes[i];
    snprintf(e->tok_fail_msg, sizeof e->tok_fail_msg, "%s", msg ? msg : "token request failed");
    cx_scrub_msg(e, NULL, e->tok_fail_msg, sizeof e->tok_fail_msg);
    e->tok_fail_until = until;
}

const char *cx_engine_token_failure(const cx_engine *e, double now, const char **msg)
{
    if (!e->tok_fail_code || now >= e->tok_fail_until) return NULL;
    if (msg) *msg = e->tok_fail_msg;
    return e->tok_fail_code;
}

void cx_engine_token_drop(cx_engine *e) { drop_token(e); }

/* ---- calls ---- */

static void finish(cx_engine *e, cx_call *c, double now)
{
    if (c->state == S_DONE) return;
    if (e->tok_fetcher == c) e->tok_fetcher = NULL;
    c->state = S_DONE;
    c->done = 1;
    c->latency_ms = (now - c->first_start) * 1000.0;
    if (c->latency_ms < 0) c->latency_ms = 0;
    cx_stats *s = &e->stats;
    s->latency_ms_total += c->latency_ms;
    int b = 0;
    for (double lim = 1.0; b < CX_HIST_BUCKETS - 1 && c->latency_ms > lim; lim *= 2) b++;
    s->hist[b]++;
    if (cx_call_ok(c)) s->successes++;
    else s->failures++;
}

static void fail(cx_engine *e, cx_call *c, double now, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static void fail(cx_engine *e, cx_call *c, double now, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->msg, sizeof c->msg, fmt, ap);
    va_end(ap);
    cx_scrub_msg(e, c, c->msg, sizeof c->msg);
    c->code = code;
    finish(e, c, now);
}

int cx_call_ok(const cx_call *c)
{
    return c->done && !c->code && c->status >= 200 && c->status < 300;
}

static const char *what(const cx_call *c)
{
    return c->kind == CX_KIND_WEBHOOK ? "webhook" : "request";
}

static int add_line(cx_call *c, const char *name, const char *value)
{
    if (c->nlines >= CX_MAX_HEADERS) return -1;
    char *l = line_of(name, value);
    if (!l) return -1;
    c->lines[c->nlines++] = l;
    return 0;
}

static char *api_url(const cx_engine *e, const char *action, const char *env)
{
    size_t n = strlen(e->cfg.base_url) + strlen(action) + (env ? strlen(env) : 0) + 96;
    char *u = malloc(n);
    if (!u) return NULL;
    if (env)
        snprintf(u, n, "%s/api/v2/integration/actions/%s/environments/%s/variables", e->cfg.base_url,
                 action, env);
    else
        snprintf(u, n, "%s/api/v2/integration/actions/%s/build", e->cfg.base_url, action);
    return u;
}

cx_call *cx_call_new(cx_engine *e, const cx_spec *sp, double now)
{
    cx_call *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    cxone_buf_init(&c->body);
    cxone_buf_init(&c->resp);
    cxone_buf_init(&c->secrets);
    cx_rlinfo_init(&c->rl);
    c->op = sp->op;
    c->kind = sp->op == CX_WEBHOOK ? CX_KIND_WEBHOOK : CX_KIND_API;
    c->retry_policy = sp->op == CX_WEBHOOK ? CX_RETRY_SAFE : CX_RETRY_ALL;
    c->first_start = c->not_before = now;
    c->deadline_at = now + e->cfg.deadline;
    c->retry_after = -1;
    c->state = S_READY;
    c->id = ++e->next_id;
    e->stats.requests++;
    for (size_t i = 0; i < sp->nsecrets; i++) {
        uint32_t len = (uint32_t)sp->secret_lens[i];
        cxone_buf_add(&c->secrets, &len, 4);
        cxone_buf_add(&c->secrets, sp->secrets[i], sp->secret_lens[i]);
    }
    const char *why = NULL;
    int oom = c->secrets.oom;
    if (sp->op == CX_AUTH) {
        c->kind = CX_KIND_API; /* a call that only obtains a (new) token */
        return c;
    }
    if (sp->op == CX_WEBHOOK) {
        c->url = dup_str(sp->url ? sp->url : "");
        oom |= !c->url;
        oom |= add_line(c, "Content-Type", "application/json");
        if (sp->signature) { /* a complete header line from the binding */
            char *l = dup_str(sp->signature);
            if (l && c->nlines < CX_MAX_HEADERS) c->lines[c->nlines++] = l;
            else { free(l); oom = 1; }
        }
    } else if (sp->op == CX_LIST) {
        size_t n = strlen(e->cfg.base_url) + 32;
        c->url = malloc(n);
        if (c->url) snprintf(c->url, n, "%s/api/v2/integration/actions", e->cfg.base_url);
        oom |= !c->url;
    } else {
        if (!sp->action || (why = cx_bad_id(sp->action, strlen(sp->action))) != NULL) {
            cx_call_fail_early(e, c, "invalid", "");
            snprintf(c->msg, sizeof c->msg, "action id %s", why ? why : "is missing");
            return c;
        }
        if (sp->op != CX_BUILD && (!sp->env || (why = cx_bad_id(sp->env, strlen(sp->env))) != NULL)) {
            cx_call_fail_early(e, c, "invalid", "");
            snprintf(c->msg, sizeof c->msg, "environment id %s", why ? why : "is missing");
            return c;
        }
        if (sp->if_match && !cx_header_value_ok(sp->if_match, strlen(sp->if_match), CX_ETAG_MAX)) {
            cx_call_fail_early(e, c, "invalid", "if_match must be 1-255 printable ASCII characters");
            return c;
        }
        if (sp->op == CX_BUILD) {
            const char *k = sp->idempotency_key;
            if (!k || !cx_header_value_ok(k, strlen(k), CX_KEY_MAX)) {
                cx_call_fail_early(e, c, "invalid",
                                   "idempotency_key must be 1-200 printable ASCII characters");
                return c;
            }
            memcpy(c->idem, k, strlen(k) + 1);
            oom |= add_line(c, "Idempotency-Key", k);
        }
        c->url = api_url(e, sp->action, sp->op == CX_BUILD ? NULL : sp->env);
        oom |= !c->url;
        if (sp->op != CX_GET) oom |= add_line(c, "Content-Type", "application/json");
        if (sp->if_match && (sp->op == CX_PATCH || sp->op == CX_PUT))
            oom |= add_line(c, "If-Match", sp->if_match);
    }
    oom |= add_line(c, "Accept", "application/json");
    if (sp->op == CX_BUILD) {
        cxone_buf_add(&c->body, "{}", 2);
    } else if (sp->op != CX_GET && sp->op != CX_LIST) {
        /* exactly sized once: no reallocation leaves a masked value behind */
        cxone_buf_add(&c->body, sp->body ? sp->body : "", sp->body ? sp->body_len : 0);
        if (!c->body.p) cxone_buf_add(&c->body, "", 0), cxone_buf_cstr(&c->body);
    }
    oom |= c->body.oom;
    if (oom) cx_call_fail_early(e, c, "memory", "out of memory preparing the request");
    return c;
}

void cx_call_fail_early(cx_engine *e, cx_call *c, const char *code, const char *msg)
{
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    cx_scrub_msg(e, c, c->msg, sizeof c->msg);
    c->code = code;
    finish(e, c, c->first_start);
}

void cx_call_free(cx_engine *e, cx_call *c)
{
    if (!c) return;
    if (e) {
        if (e->tok_fetcher == c) e->tok_fetcher = NULL;
        if (c->state == S_SENT && c->kind == CX_KIND_API && e->inflight > 0) e->inflight--;
    }
    free(c->url);
    for (int i = 0; i < c->nlines; i++) free(c->lines[i]);
    wipe_free(&c->auth);
    cxone_buf_free(&c->body);
    cxone_buf_free(&c->resp);
    cxone_buf_free(&c->secrets);
    OPENSSL_cleanse(c, sizeof *c);
    free(c);
}

/* Fills rq with the call's current request (lines: fixed ones, then auth). */
static void fill_request(const cx_engine *e, cx_call *c, cx_request *rq, double now)
{
    memset(rq, 0, sizeof *rq);
    rq->kind = c->kind;
    rq->url = c->url;
    rq->method = c->op == CX_GET || c->op == CX_LIST ? "GET"
                 : c->op == CX_PATCH ? "PATCH" : c->op == CX_PUT ? "PUT" : "POST";
    for (int i = 0; i < c->nlines && rq->nlines < CX_MAX_HEADERS - 2; i++)
        rq->lines[rq->nlines++] = c->lines[i];
    rq->lines[rq->nlines++] = e->ua_line;
    if (c->auth) rq->lines[rq->nlines++] = c->auth;
    if (c->op != CX_GET && c->op != CX_LIST) {
        rq->body = c->body.p ? c->body.p : "";
        rq->body_len = c->body.len;
    }
    double left = c->deadline_at - now;
    rq->timeout = e->cfg.timeout < left ? e->cfg.timeout : left;
    if (rq->timeout < 0.001) rq->timeout = 0.001;
    rq->connect_timeout = e->cfg.connect_timeout < rq->timeout ? e->cfg.connect_timeout : rq->timeout;
    rq->attempt = c->attempts;
}

static void fill_token_request(const cx_engine *e, cx_call *c, cx_request *rq, double now)
{
    memset(rq, 0, sizeof *rq);
    static const char *const fixed[] = {"Content-Type: application/x-www-form-urlencoded",
                                        "Accept: application/json"};
    rq->kind = CX_KIND_TOKEN;
    rq->method = "POST";
    rq->url = e->cfg.token_url;
    rq->lines[rq->nlines++] = fixed[0];
    rq->lines[rq->nlines++] = fixed[1];
    rq->lines[rq->nlines++] = e->ua_line;
    if (e->token_basic) rq->lines[rq->nlines++] = e->token_basic;
    rq->body = e->token_body;
    rq->body_len = strlen(e->token_body);
    double left = c->deadline_at - now;
    rq->timeout = e->cfg.timeout < left ? e->cfg.timeout : left;
    if (rq->timeout < 0.001) rq->timeout = 0.001;
    rq->connect_timeout = e->cfg.connect_timeout < rq->timeout ? e->cfg.connect_timeout : rq->timeout;
    rq->attempt = c->tok_attempts;
}

static void reset_answer(cx_call *c)
{
    c->status = 0;
    c->resp.len = 0;
    c->etag[0] = '\0';
    c->bad_etag = 0;
    c->answer_too_large = 0;
    c->retry_after = -1;
    cx_rlinfo_init(&c->rl);
}

int cx_call_next(cx_engine *e, cx_call *c, double now, cx_request *rq)
{
    memset(rq, 0, sizeof *rq);
    for (;;) {
        switch (c->state) {
        case S_DONE:
            return CX_DONE;
        case S_TOKEN:
        case S_SENT: /* the driver asks while its request is out: nothing to do but wait */
            rq->wake = now + EVENT_POLL;
            return CX_WAIT;
        case S_WAIT:
            if (now < c->not_before) {
                rq->wake = c->not_before;
                return CX_WAIT;
            }
            c->state = S_READY;
            continue;
        default:
            break;
        }
        /* S_READY */
        if (now >= c->deadline_at) {
            fail(e, c, now, "timeout", "%s gave up after %d attempt%s: the %.0f s deadline passed",
                 what(c), c->attempts, c->attempts == 1 ? "" : "s", e->cfg.deadline);
            return CX_DONE;
        }
        if (c->kind == CX_KIND_API) {
            if (c->op == CX_AUTH && !c->holds_token_fetch && c->tok_attempts == 0 && !e->tok_fetcher)
                e->tok_refresh_at = 0; /* authenticate: a new token even when one is cached */
            if (!token_fresh(e, now)) {
                const char *fmsg;
                const char *fcode = cx_engine_token_failure(e, now, &fmsg);
                if (fcode && e->tok_fetcher == NULL && c->op != CX_AUTH) {
                    snprintf(c->msg, sizeof c->msg, "%s", fmsg);
                    c->code = fcode;
                    finish(e, c, now);
                    return CX_DONE;
                }
                if (e->tok_fetcher && e->tok_fetcher != c) {
                    rq->wake = now + EVENT_POLL;
                    return CX_WAIT;
                }
                e->tok_fetcher = c;
                c->holds_token_fetch = 1;
                c->tok_attempts++;
                e->stats.token_requests++;
                reset_answer(c);
                c->sent_at = now;
                c->state = S_TOKEN;
                fill_token_request(e, c, rq, now);
                trace(e, c, "requesting a token from the token endpoint");
                return CX_SEND;
            }
            if (c->op == CX_AUTH) {
                c->status = 200;
                finish(e, c, now);
                return CX_DONE;
            }
            /* the rate limit: a free slot, then the pacer's permission */
            if (e->inflight >= cx_pacer_concurrency(&e->pacer)) {
                rq->wake = now + EVENT_POLL;
                return CX_WAIT;
            }
            double at = 0;
            if (c->asked_at == 0) c->asked_at = now;
            if (!cx_pacer_take(&e->pacer, now, c->asked_at, &at)) {
                if (at >= c->deadline_at) {
                    fail(e, c, now, "rate_limited", "rate limited: the server asked to pause "
                         "requests for %.0f s, past this call's deadline (%.0f s left of %.0f s); "
                         "try again later or lower the request rate (rate_limit, --max-rps)",
                         at - now, c->deadline_at - now, e->cfg.deadline);
                    return CX_DONE;
                }
                if (c->asked_at == now)
                    trace(e, c, "held %.3f s by the rate limit (%.1f requests/s)", at - now,
                          cx_pacer_rate(&e->pacer));
                rq->wake = at;
                return CX_WAIT;
            }
            c->asked_at = 0;
            wipe_free(&c->auth);
            c->auth = dup_str(e->bearer);
            if (!c->auth) {
                fail(e, c, now, "memory", "out of memory preparing the request");
                return CX_DONE;
            }
            c->token_gen = e->tok_gen;
            e->inflight++;
        }
        c->attempts++;
        e->stats.attempts++;
        reset_answer(c);
        c->sent_at = now;
        c->state = S_SENT;
        fill_request(e, c, rq, now);
        return CX_SEND;
    }
}

void cx_call_header_reset(cx_call *c)
{
    c->etag[0] = '\0';
    c->bad_etag = 0;
    c->retry_after = -1;
    cx_rlinfo_init(&c->rl);
}

void cx_call_header(cx_call *c, const char *name, size_t nl, const char *v, size_t vl, double wall)
{
    while (vl && (v[0] == ' ' || v[0] == '\t')) { v++; vl--; }
    while (vl && (v[vl - 1] == ' ' || v[vl - 1] == '\t' || v[vl - 1] == '\r' || v[vl - 1] == '\n')) vl--;
    if (nl == 4 && strncasecmp(name, "etag", 4) == 0) {
        if (cx_etag_ok(v, vl)) {
            memcpy(c->etag, v, vl);
            c->etag[vl] = '\0';
            c->bad_etag = 0;
        } else {
            c->etag[0] = '\0';
            c->bad_etag = 1;
        }
        return;
    }
    cx_rlinfo_header(&c->rl, name, nl, v, vl, wall);
    c->retry_after = c->rl.retry_after;
}

int cx_call_body(cx_call *c, const char *data, size_t n)
{
    if (c->resp.len + n > CX_MAX_ANSWER) {
        c->answer_too_large = 1;
        return -1;
    }
    cxone_buf_add(&c->resp, data, n);
    return c->resp.oom ? -1 : 0;
}

static int status_retryable(long st, int policy)
{
    if (policy == CX_RETRY_SAFE) return st == 429 || st == 503;
    return st == 429 || st == 500 || st == 502 || st == 503 || st == 504;
}

/* Schedules another attempt after `why`; returns 1 if scheduled. Without one the caller
 * finishes the call, unless this already did (a Retry-After past the deadline: returns -1). */
static int schedule_retry(cx_engine *e, cx_call *c, double now, const char *why)
{
    double remaining = c->deadline_at - now;
    if (c->retry_after >= 0 && (c->retry_after >= remaining || c->retry_after > e->cfg.retry_after_cap)) {
        int rl = c->status == 429;
        char limit[96];
        if (c->retry_after >= remaining)
            snprintf(limit, sizeof limit, "past this call's deadline (%.0f s left of %.0f s)",
                     remaining > 0 ? remaining : 0, e->cfg.deadline);
        else
            snprintf(limit, sizeof limit, "longer than retry_after_cap (%.0f s) allows",
                     e->cfg.retry_after_cap);
        fail(e, c, now, rl ? "rate_limited" : "server",
             "%s%s: the server asked to wait %.0f s (Retry-After) before trying again, %s; try "
             "again later%s", rl ? "rate limited" : "server unavailable", why, c->retry_after, limit,
             rl ? " or lower the request rate (rate_limit, --max-rps)" : "");
        return -1;
    }
    cx_retry_cfg rc = {e->cfg.retries, e->cfg.backoff_base, e->cfg.backoff_cap, e->cfg.retry_after_cap};
    double d = cx_retry_delay(&rc, c->retries_used + 1, c->retry_after, remaining, rng_unit(e));
    if (d < 0) {
        trace(e, c, "not retrying after%s: %s", why,
              d == CX_PAST_DEADLINE ? "the wait would pass the deadline" : "the retries are spent");
        return 0;
    }
    c->retries_used++;
    e->stats.retries++;
    c->state = S_WAIT;
    c->not_before = now + d;
    trace(e, c, "retry %d/%d in %.3f s after%s", c->retries_used, e->cfg.retries, d, why);
    return 1;
}

static void token_answer(cx_engine *e, cx_call *c, double now, long st)
{
    char why[64] = "";
    c->state = S_READY;
    if (st != 200) {
        cxone_buf b;
        cxone_buf_init(&b);
        if (js_field(c->resp.p ? c->resp.p : "", c->resp.len, "error", &b, NULL) == 1 && !b.oom) {
            size_t j = 0;
            for (size_t i = 0; i < b.len && j + 1 < sizeof why; i++)
                if (islower((unsigned char)b.p[i]) || b.p[i] == '_') why[j++] = b.p[i];
            why[j] = '\0';
        }
        cxone_buf_free(&b);
        if (st == 429) e->stats.rate_limited++;
        cx_pacer_observe(&e->pacer, now, &c->rl, st);
        long keep = c->status;
        c->status = st;
        if (status_retryable(st, CX_RETRY_ALL)) {
            int r = schedule_retry(e, c, now, " HTTP 429/5xx from the token endpoint");
            if (r != 0) {
                c->status = keep;
                if (r < 0) {
                    e->tok_fetcher = NULL;
                    cx_engine_token_failed(e, c->code, c->msg, now + e->cfg.token_fail_memory);
                }
                return; /* retrying, still the fetcher; or failed with the wait named */
            }
        }
        c->status = keep;
        const char *code = st == 400 || st == 401 ? "auth" : st == 403 ? "scope"
            : st == 429 ? "rate_limited" : st >= 500 ? "server" : "format";
        if (strcmp(why, "invalid_scope") == 0) code = "scope";
        e->tok_fetcher = NULL;
        fail(e, c, now, code, "token request refused (HTTP %ld%s%s) after %d attempt%s: %s", st,
             why[0] ? ", " : "", why, c->tok_attempts, c->tok_attempts == 1 ? "" : "s",
             strcmp(code, "auth") == 0
                 ? (e->cfg.key_id ? "check access_key_id/access_key_secret and client_id/client_secret"
                                  : "check client_id and client_secret")
             : strcmp(code, "scope") == 0 ? "the client may not request these scopes"
                                          : "try again later");
        cx_engine_token_failed(e, c->code, c->msg, now + e->cfg.token_fail_memory);
        return;
    }
    cxone_buf tok, scope;
    double expires_in = -1;
    cxone_buf_init(&tok);
    cxone_buf_init(&scope);
    const char *body = c->resp.p ? c->resp.p : "";
    int r1 = js_field(body, c->resp.len, "access_token", &tok, NULL);
    int r2 = js_field(body, c->resp.len, "expires_in", NULL, &expires_in);
    int r3 = js_field(body, c->resp.len, "scope", &scope, NULL);
    int bad = r1 != 1 || tok.oom || !tok.p || !cx_token_chars_ok(tok.p, tok.len) || r2 < 0 || r3 < 0;
    int oom = 0;
    if (!bad) {
        if (r2 != 1 || !(expires_in > 0)) expires_in = 300; /* conservative when absent */
        /* refresh when fewer than refresh_margin seconds remain, or at half-life */
        double life = expires_in - e->cfg.refresh_margin;
        if (life < expires_in / 2) life = expires_in / 2;
        oom = cxone_buf_cstr(&scope) != 0 && r3 == 1;
        if (!oom)
            oom = store_token(e, tok.p, tok.len, expires_in, life, r3 == 1 ? scope.p : NULL,
                              c->sent_at) != 0;
    }
    cxone_buf_free(&tok);
    cxone_buf_free(&scope);
    c->resp.len = 0;
    e->tok_fetcher = NULL;
    c->holds_token_fetch = 0;
    if (bad || oom) {
        fail(e, c, now, oom ? "memory" : "format", "%s",
             oom ? "out of memory storing the token"
                 : "token endpoint answered without a usable access_token");
        cx_engine_token_failed(e, c->code, c->msg, now + e->cfg.token_fail_memory);
        return;
    }
    e->tok_own_gen++;
    trace(e, c, "token obtained, valid %.0f s", expires_in);
}

void cx_call_answer(cx_engine *e, cx_call *c, double now, long st)
{
    if (c->state == S_TOKEN) {
        token_answer(e, c, now, st);
        return;
    }
    if (c->state != S_SENT) return;
    if (c->kind == CX_KIND_API) {
        if (e->inflight > 0) e->inflight--;
        cx_pacer_observe(&e->pacer, now, &c->rl, st);
        if (st == 429) e->stats.rate_limited++;
    }
    c->status = st;
    wipe_free(&c->auth);
    c->state = S_READY;
    if (st == 401 && c->kind == CX_KIND_API && !c->auth_retried) {
        /* the token was revoked or expired early: refresh once (unless another call already did)
         * and retry this request once, outside the retry budget */
        c->auth_retried = 1;
        if (c->token_gen == e->tok_gen) e->tok_refresh_at = 0;
        e->stats.retries++;
        trace(e, c, "401: refreshing the token and retrying once");
        return;
    }
    if (status_retryable(st, c->retry_policy)) {
        char why[32];
        snprintf(why, sizeof why, " HTTP %ld", st);
        int r = schedule_retry(e, c, now, why);
        if (r != 0) return;
    }
    if (st >= 200 && st < 300 && c->bad_etag && c->kind == CX_KIND_API) {
        fail(e, c, now, "format", "the API answered HTTP %ld with an ETag that is over 255 bytes or "
             "not a quoted entity-tag: refusing it, since a write could not be made conditional on it",
             st);
        return;
    }
    finish(e, c, now);
}

static const char *neterr_code(int kind)
{
    switch (kind) {
    case CX_NE_TLS: return "tls";
    case CX_NE_TIMEOUT: return "timeout";
    case CX_NE_TOO_LARGE: return "format";
    case CX_NE_MEMORY: return "memory";
    case CX_NE_CONFIG: return "config";
    default: return "network";
    }
}

static int neterr_retryable(int kind, int policy)
{
    if (kind == CX_NE_REFUSED) return 1; /* the request never left */
    if (policy == CX_RETRY_SAFE) return 0;
    return kind == CX_NE_TIMEOUT || kind == CX_NE_RESET || kind == CX_NE_REWIND || kind == CX_NE_OTHER;
}

void cx_call_neterr(cx_engine *e, cx_call *c, double now, int kind, const char *detail)
{
    int token = c->state == S_TOKEN;
    if (c->state != S_SENT && !token) return;
    char said[200]; /* the driver's words may quote what a server or proxy said */
    snprintf(said, sizeof said, "%s", detail ? detail : "no answer");
    scrub_foreign(e, c, said, sizeof said);
    detail = said;
    if (!token && c->kind == CX_KIND_API && e->inflight > 0) e->inflight--;
    wipe_free(&c->auth);
    c->state = S_READY;
    c->status = 0;
    c->retry_after = -1;
    if (kind == CX_NE_TOO_LARGE) {
        fail(e, c, now, "format", "%s: the answer is larger than %u bytes",
             token ? "token request" : what(c), CX_MAX_ANSWER);
    } else {
        if (neterr_retryable(kind, token ? CX_RETRY_ALL : c->retry_policy)) {
            char why[160];
            snprintf(why, sizeof why, " a transport failure (%.120s)", detail);
            if (schedule_retry(e, c, now, why) != 0) return;
        }
        int n = token ? c->tok_attempts : c->attempts;
        const char *hint = kind == CX_NE_TLS
            ? " (check ca_file: the server's certificate must chain to a trusted CA)"
            : kind == CX_NE_REWIND
            ? " (the connection broke while the request was being sent; it was not sent again "
              "behind our back, and may have reached the server)" : "";
        fail(e, c, now, neterr_code(kind), "%s failed after %d attempt%s: %s%s",
             token ? "token request" : what(c), n, n == 1 ? "" : "s", detail,
             hint);
    }
    if (token) {
        e->tok_fetcher = NULL;
        cx_engine_token_failed(e, c->code, c->msg, now + e->cfg.token_fail_memory);
    }
}

void cx_call_reject(cx_engine *e, cx_call *c, const char *msg)
{
    if (!c->done || c->code) return;
    snprintf(c->msg, sizeof c->msg, "%s", msg);
    cx_scrub_msg(e, c, c->msg, sizeof c->msg);
    c->code = "format";
    e->stats.successes--;
    e->stats.failures++;
}
