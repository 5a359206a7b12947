/* C tests of plugin/engine.c driven like a driver would, with scripted answers and a fake
 * clock: no sockets, no Lua. Built without any Lua include path: the engine must need none. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static int passed, failed;
#define CHECK(cond)                                                              \
    do {                                                                         \
        if (cond) passed++;                                                      \
        else { failed++; fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); } \
    } while (0)

#define SECRET "engine-test-secret-0123456789"
#define TOKEN "tok_0123456789abcdef0123456789"
#define MASKED "masked-canary-value-42"
#define WALL 1.7e9

static cx_config config(void)
{
    cx_config c;
    memset(&c, 0, sizeof c);
    c.base_url = "https://api.example.test";
    c.token_url = "https://api.example.test/oauth/token";
    c.client_id = "engine-client";
    c.client_secret = SECRET;
    c.scope = "integration:actions:read";
    c.user_agent = "test";
    c.timeout = 30;
    c.connect_timeout = 10;
    c.deadline = 120;
    c.refresh_margin = 30;
    c.token_fail_memory = 5;
    c.retries = 3;
    c.backoff_base = 0.5;
    c.backoff_cap = 8;
    c.retry_after_cap = 60;
    c.max_concurrency = 8;
    c.seed = 42;
    return c;
}

/* A scripted server answer. */
typedef struct {
    long status;          /* 0: a transport failure of kind `ne` */
    int ne;
    const char *body;
    const char *h1, *v1, *h2, *v2;
} script_t;

static void answer(cx_engine *e, cx_call *c, double now, const script_t *s)
{
    if (!s->status) {
        cx_call_neterr(e, c, now, s->ne, "scripted failure");
        return;
    }
    if (s->h1) cx_call_header(c, s->h1, strlen(s->h1), s->v1, strlen(s->v1), WALL);
    if (s->h2) cx_call_header(c, s->h2, strlen(s->h2), s->v2, strlen(s->v2), WALL);
    if (s->body) cx_call_body(c, s->body, strlen(s->body));
    cx_call_answer(e, c, now, s->status);
}

static const script_t TOKEN_OK = {200, 0, "{\"access_token\":\"" TOKEN "\",\"expires_in\":3600}", 0, 0, 0, 0};
static const script_t VARS_OK = {200, 0, "{\"variables\":[]}", "ETag", "\"v1\"", 0, 0};

/* Drives one call to its end: api answers come from `api` in order (the token endpoint always
 * from `tok`, NULL: TOKEN_OK), the clock advancing to each wake. Returns the number of API
 * requests sent; *t is the clock at the end. */
static int drive(cx_engine *e, cx_call *c, double *t, const script_t *api, int napi, const script_t *tok,
                 int *ntok)
{
    int sent = 0, guard = 0;
    cx_request rq;
    for (;;) {
        int r = cx_call_next(e, c, *t, &rq);
        if (r == CX_DONE || ++guard > 1000) break;
        if (r == CX_WAIT) {
            CHECK(rq.wake > *t);
            *t = rq.wake;
            continue;
        }
        CHECK(rq.timeout > 0 && rq.timeout <= 30);
        CHECK(rq.timeout <= c->deadline_at - *t + 1e-9);
        if (rq.kind == CX_KIND_TOKEN) {
            if (ntok) (*ntok)++;
            CHECK(strstr(rq.body, "client_secret=") != NULL);
            answer(e, c, *t + 0.01, tok ? tok : &TOKEN_OK);
        } else {
            int has_auth = 0;
            for (int i = 0; i < rq.nlines; i++)
                if (strcmp(rq.lines[i], "Authorization: Bearer " TOKEN) == 0) has_auth = 1;
            CHECK(has_auth);
            answer(e, c, *t + 0.01, &api[sent < napi ? sent : napi - 1]);
            sent++;
        }
        *t += 0.01;
    }
    return sent;
}

static cx_call *get_call(cx_engine *e, double t)
{
    cx_spec s = {.op = CX_GET, .action = "a1", .env = "prod"};
    return cx_call_new(e, &s, t);
}

static void test_plain_get_and_token_reuse(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 100;
    int ntok = 0;
    cx_call *c = get_call(e, t);
    CHECK(drive(e, c, &t, &VARS_OK, 1, NULL, &ntok) == 1);
    CHECK(cx_call_ok(c) && c->attempts == 1 && strcmp(c->etag, "\"v1\"") == 0);
    cx_call_free(e, c);
    c = get_call(e, t);
    CHECK(drive(e, c, &t, &VARS_OK, 1, NULL, &ntok) == 1);
    CHECK(ntok == 1); /* the token is reused */
    CHECK(cx_engine_stats(e)->token_requests == 1 && cx_engine_stats(e)->successes == 2);
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_401_refreshes_once(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    int ntok = 0;
    script_t s[] = {{401, 0, "{}", 0, 0, 0, 0}, {401, 0, "{}", 0, 0, 0, 0}};
    cx_call *c = get_call(e, t);
    CHECK(drive(e, c, &t, s, 2, NULL, &ntok) == 2);
    CHECK(!cx_call_ok(c) && c->status == 401 && c->code == NULL); /* the binding words it */
    CHECK(ntok == 2);                                               /* refreshed once */
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_retry_then_success_within_deadline(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    script_t s[] = {{503, 0, "", 0, 0, 0, 0}, {0, CX_NE_RESET, 0, 0, 0, 0, 0}, VARS_OK};
    cx_call *c = get_call(e, t);
    CHECK(drive(e, c, &t, s, 3, NULL, NULL) == 3);
    CHECK(cx_call_ok(c) && c->attempts == 3 && c->retries_used == 2);
    cx_call_free(e, c);
    /* a write that broke while being sent (libcurl refused to re-send it) is an attempt too */
    cx_spec w = {.op = CX_PATCH, .action = "a1", .env = "prod", .body = "{}", .body_len = 2,
                 .if_match = "\"v1\""};
    c = cx_call_new(e, &w, t);
    script_t s2[] = {{0, CX_NE_REWIND, 0, 0, 0, 0, 0}, VARS_OK};
    CHECK(drive(e, c, &t, s2, 2, NULL, NULL) == 2);
    CHECK(cx_call_ok(c) && c->attempts == 2);
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_retry_after_past_deadline_fails_at_once(void)
{
    cx_config cfg = config();
    cfg.deadline = 10;
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    script_t s[] = {{429, 0, "", "Retry-After", "86400", 0, 0}};
    cx_call *c = get_call(e, t);
    CHECK(drive(e, c, &t, s, 1, NULL, NULL) == 1);
    CHECK(c->code && strcmp(c->code, "rate_limited") == 0);
    CHECK(strstr(c->msg, "86400 s") != NULL);
    CHECK(t < 1); /* no waiting for the deadline */
    CHECK(cx_engine_stats(e)->rate_limited == 1);
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_hang_costs_at_most_the_deadline(void)
{
    cx_config cfg = config();
    cfg.deadline = 3;
    cfg.timeout = 2;
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0, start = 0;
    cx_call *c = get_call(e, t);
    cx_request rq;
    int guard = 0;
    while (cx_call_next(e, c, t, &rq) != CX_DONE && ++guard < 100) {
        if (rq.kind == CX_KIND_TOKEN) { answer(e, c, t, &TOKEN_OK); continue; }
        if (rq.wake > t && rq.url == NULL) { t = rq.wake; continue; }
        t += rq.timeout; /* the server never answers: the attempt times out */
        cx_call_neterr(e, c, t, CX_NE_TIMEOUT, "timed out");
    }
    CHECK(c->done && c->code && strcmp(c->code, "timeout") == 0);
    CHECK(t - start <= cfg.deadline + 1e-6);
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_token_failure_remembered(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    int ntok = 0;
    script_t bad = {401, 0, "{\"error\":\"invalid_client\"}", 0, 0, 0, 0};
    cx_call *c = get_call(e, t);
    CHECK(drive(e, c, &t, &VARS_OK, 1, &bad, &ntok) == 0);
    CHECK(c->code && strcmp(c->code, "auth") == 0 && strstr(c->msg, "invalid_client"));
    CHECK(strstr(c->msg, SECRET) == NULL);
    cx_call_free(e, c);
    /* within the memory, another call fails at once with the same words and no request */
    c = get_call(e, t + 1);
    t += 1;
    CHECK(drive(e, c, &t, &VARS_OK, 1, &bad, &ntok) == 0);
    CHECK(ntok == 1 && c->code && strcmp(c->code, "auth") == 0);
    cx_call_free(e, c);
    /* after it, the endpoint is asked again */
    t += 10;
    c = get_call(e, t);
    CHECK(drive(e, c, &t, &VARS_OK, 1, NULL, &ntok) == 1);
    CHECK(ntok == 2 && cx_call_ok(c));
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_token_waiters_get_the_leaders_error(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    cx_call *a = get_call(e, t), *b = get_call(e, t);
    cx_request ra, rb;
    CHECK(cx_call_next(e, a, t, &ra) == CX_SEND && ra.kind == CX_KIND_TOKEN);
    CHECK(cx_call_next(e, b, t, &rb) == CX_WAIT); /* one token request at a time */
    script_t bad = {400, 0, "{\"error\":\"invalid_client\"}", 0, 0, 0, 0};
    answer(e, a, t, &bad);
    CHECK(cx_call_next(e, a, t, &ra) == CX_DONE);
    CHECK(cx_call_next(e, b, t, &rb) == CX_DONE); /* at once, not after a timeout */
    CHECK(b->code && strcmp(b->code, "auth") == 0 && strcmp(a->msg, b->msg) == 0);
    cx_call_free(e, a);
    cx_call_free(e, b);
    cx_engine_free(e);
}

static void test_token_imported_while_asked(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    cx_call *c = get_call(e, t);
    cx_request rq;
    CHECK(cx_call_next(e, c, t, &rq) == CX_SEND && rq.kind == CX_KIND_TOKEN);
    /* the driver takes another worker's token instead of sending the request */
    CHECK(cx_engine_token_import(e, TOKEN, strlen(TOKEN), 600, t) == 0);
    CHECK(cx_call_next(e, c, t, &rq) == CX_SEND && rq.kind == CX_KIND_API);
    answer(e, c, t, &VARS_OK);
    CHECK(cx_call_next(e, c, t, &rq) == CX_DONE && cx_call_ok(c));
    CHECK(cx_engine_stats(e)->token_requests == 1); /* asked once, answered by the import */
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_pacing_and_rate_learning(void)
{
    cx_config cfg = config();
    cfg.rate_limit = 10; /* the operator's limit */
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    CHECK(fabs(cx_pacer_rate(cx_engine_pacer(e)) - 10) < 1e-9);
    int sent = 0;
    for (int i = 0; i < 20; i++) {
        cx_call *c = get_call(e, t);
        sent += drive(e, c, &t, &VARS_OK, 1, NULL, NULL);
        CHECK(cx_call_ok(c));
        cx_call_free(e, c);
    }
    CHECK(sent == 20);
    CHECK(t >= 1.8); /* 20 requests at 10/s: at least 1.9 s of spacing after the first */
    CHECK(cx_engine_stats(e)->paced_s > 1.0);
    /* a server saying 2 per second wins over the operator's 10 */
    script_t s = {200, 0, "{\"variables\":[]}", "RateLimit-Policy", "\"default\";q=2;w=1", 0, 0};
    cx_call *c = get_call(e, t);
    drive(e, c, &t, &s, 1, NULL, NULL);
    CHECK(cx_pacer_rate(cx_engine_pacer(e)) <= 2.0);
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_masked_values_and_secrets_never_in_messages(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    const char *secrets[] = {MASKED};
    size_t lens[] = {strlen(MASKED)};
    cx_spec w = {.op = CX_PATCH, .action = "a1", .env = "prod", .body = "{}", .body_len = 2,
                 .secrets = secrets, .secret_lens = lens, .nsecrets = 1};
    cx_call *c = cx_call_new(e, &w, t);
    script_t s = {0, CX_NE_OTHER, 0, 0, 0, 0, 0};
    cx_request rq;
    while (cx_call_next(e, c, t, &rq) != CX_DONE) {
        if (rq.kind == CX_KIND_TOKEN) { answer(e, c, t, &TOKEN_OK); continue; }
        if (rq.url == NULL) { t = rq.wake; continue; }
        (void)s;
        /* a driver's words that echo pieces of the masked value, the secret and the token */
        cx_call_neterr(e, c, t, CX_NE_TLS, "peer said masked-canary-val and engine-test-secret and tok_0123456789abc");
    }
    CHECK(c->code && strcmp(c->code, "tls") == 0);
    CHECK(strstr(c->msg, "masked-canary") == NULL && strstr(c->msg, "canary-val") == NULL);
    CHECK(strstr(c->msg, "engine-test-secret") == NULL && strstr(c->msg, "tok_0123456789") == NULL);
    CHECK(strstr(c->msg, "[redacted]") != NULL);
    cx_call_free(e, c);
    cx_engine_free(e);
}

static void test_bad_input_fails_early(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    cx_spec s = {.op = CX_GET, .action = "../x", .env = "prod"};
    cx_call *c = cx_call_new(e, &s, 0);
    cx_request rq;
    CHECK(cx_call_next(e, c, 0, &rq) == CX_DONE && strcmp(c->code, "invalid") == 0);
    cx_call_free(e, c);
    char etag[300];
    memset(etag, 'a', sizeof etag - 1);
    etag[sizeof etag - 1] = '\0';
    cx_spec w = {.op = CX_PATCH, .action = "a1", .env = "prod", .body = "{}", .body_len = 2, .if_match = etag};
    c = cx_call_new(e, &w, 0);
    CHECK(c->done && strcmp(c->code, "invalid") == 0);
    cx_call_free(e, c);
    /* a 2xx whose ETag could not be sent back in If-Match is a format failure, never kept cut */
    c = get_call(e, 0);
    double t = 0;
    script_t s2 = {200, 0, "{\"variables\":[]}", "ETag", "no-quotes", 0, 0};
    drive(e, c, &t, &s2, 1, NULL, NULL);
    CHECK(c->code && strcmp(c->code, "format") == 0);
    cx_call_free(e, c);
    cx_engine_free(e);
}

/* CX_LIST: a GET of the action list (no ids, no body), retried as any read. */
static void test_list_actions_request(void)
{
    cx_config cfg = config();
    cx_engine *e = cx_engine_new(&cfg);
    double t = 0;
    cx_spec s = {.op = CX_LIST};
    cx_call *c = cx_call_new(e, &s, t);
    cx_request rq;
    int api = 0, guard = 0;
    for (int r; (r = cx_call_next(e, c, t, &rq)) != CX_DONE && ++guard < 100;) {
        if (r == CX_WAIT) { t = rq.wake; continue; }
        if (rq.kind == CX_KIND_TOKEN) { answer(e, c, t + 0.01, &TOKEN_OK); continue; }
        api++;
        CHECK(strcmp(rq.method, "GET") == 0);
        size_t n = strlen(rq.url), k = strlen("/api/v2/integration/actions");
        CHECK(n > k && strcmp(rq.url + n - k, "/api/v2/integration/actions") == 0);
        CHECK(rq.body == NULL && rq.body_len == 0);
        script_t busy = {503, 0, "{}", 0, 0, 0, 0}, ok = {200, 0, "{\"actions\":[]}", 0, 0, 0, 0};
        answer(e, c, t + 0.01, api == 1 ? &busy : &ok);
    }
    CHECK(api == 2 && cx_call_ok(c) && c->attempts == 2);
    cx_call_free(e, c);
    cx_engine_free(e);
}

int main(void)
{
    test_list_actions_request();
    test_plain_get_and_token_reuse();
    test_401_refreshes_once();
    test_retry_then_success_within_deadline();
    test_retry_after_past_deadline_fails_at_once();
    test_hang_costs_at_most_the_deadline();
    test_token_failure_remembered();
    test_token_waiters_get_the_leaders_error();
    test_token_imported_while_asked();
    test_pacing_and_rate_learning();
    test_masked_values_and_secrets_never_in_messages();
    test_bad_input_fails_early();
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
