/* floor.c: the floor the client's CPU per request is measured against. N keep-alive GETs, then
 * N PATCHes, with raw libcurl (one easy handle, sequential) against cxone-sim; prints the CPU
 * (user + system) per request of each phase in microseconds, one line each:
 *   get <us/request> <requests>
 *   patch <us/request> <requests>
 * Usage: cxone-floor BASE_URL TOKEN N ACTION_ID [PHASES [ENV]]: PHASES "get,patch" (default),
 * "get" or "patch"; ENV the environment (default dev). Exits 1 on any non-2xx answer. */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static size_t sink(char *p, size_t size, size_t n, void *ud)
{
    (void)p;
    size_t *total = ud;
    *total += size * n;
    return size * n;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6
         + (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

/* PATCH bodies: each one changes a value, so the server really writes. */
static char body[512];
static const char *body_action, *body_env;

static int run(CURL *e, const char *what, int n)
{
    int patch = strcmp(what, "patch") == 0;
    double t0 = cpu_seconds();
    for (int i = 0; i < n; i++) {
        if (patch) {
            snprintf(body, sizeof body, "{\"variables\":[{\"name\":\"FLOOR_N\",\"value\":\"%d\",\"masked\":false},"
                     "{\"name\":\"FLOOR_KEY\",\"value\":\"floor-secret-1\",\"masked\":true}],"
                     "\"environmentId\":\"%s\",\"actionId\":\"%s\"}", i, body_env, body_action);
            curl_easy_setopt(e, CURLOPT_POSTFIELDS, body);
        }
        CURLcode cc = curl_easy_perform(e);
        long st = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &st);
        if (cc != CURLE_OK || st < 200 || st >= 300) {
            fprintf(stderr, "floor: %s %d: %s, HTTP %ld\n", what, i, curl_easy_strerror(cc), st);
            return -1;
        }
    }
    printf("%s %.2f %d\n", what, (cpu_seconds() - t0) / n * 1e6, n);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 5 || argc > 7) {
        fprintf(stderr, "usage: %s BASE_URL TOKEN N ACTION_ID [PHASES [ENV]]\n", argv[0]);
        return 2;
    }
    const char *base = argv[1], *token = argv[2], *action = argv[4];
    const char *phases = argc > 5 ? argv[5] : "get,patch", *env = argc > 6 ? argv[6] : "dev";
    if (strlen(env) > 16 || strlen(action) > 64 || strlen(base) > 512 || strlen(token) > 512) return 2;
    int n = atoi(argv[3]);
    if (n <= 0) return 2;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return 1;
    CURL *e = curl_easy_init();
    if (!e) return 1;
    char url[1024], auth[1024];
    snprintf(url, sizeof url, "%s/api/v2/integration/actions/%s/environments/%s/variables", base, action, env);
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    body_action = action;
    body_env = env;
    struct curl_slist *hdrs = curl_slist_append(NULL, auth);
    struct curl_slist *h2 = hdrs ? curl_slist_append(hdrs, "Content-Type: application/json") : NULL;
    if (!h2) return 1;
    hdrs = h2;
    size_t total = 0;
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &total);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 30L);
    int rc = strstr(phases, "get") ? run(e, "get", n) : 0;
    if (rc == 0 && strstr(phases, "patch")) {
        curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "PATCH");
        rc = run(e, "patch", n);
    }
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(e);
    curl_global_cleanup();
    return rc == 0 ? 0 : 1;
}
