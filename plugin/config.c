/* config: core.client's and core.engine's options, checked once into a cx_config (config.h). */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <curl/curl.h>

#include "config.h"

#define DEFAULT_BASE_URL "https://api.cxone.com"
#define DEFAULT_SCOPE "integration:actions:read integration:actions:write integration:actions:admin"
#define DEFAULT_CA_BUNDLE "/etc/ssl/certs/ca-certificates.crt"

static int is_loopback_host(const char *host)
{
    if (strcasecmp(host, "localhost") == 0 || strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0)
        return 1;
    int a, b, c, d;
    char tail;
    return sscanf(host, "%d.%d.%d.%d%c", &a, &b, &c, &d, &tail) == 4 && a == 127 && b >= 0
        && b <= 255 && c >= 0 && c <= 255 && d >= 0 && d <= 255;
}

int cxone_url_is_loopback(const char *url)
{
    CURLU *u = curl_url();
    char *host = NULL;
    int r = 0;
    if (u && curl_url_set(u, CURLUPART_URL, url, 0) == CURLUE_OK
        && curl_url_get(u, CURLUPART_HOST, &host, 0) == CURLUE_OK && host)
        r = is_loopback_host(host);
    curl_free(host);
    curl_url_cleanup(u);
    return r;
}

int cxone_check_url(const char *what, const char *url, int insecure_http, int allow_query,
                    char *why, size_t whylen)
{
    int ret = -1;
    char *scheme = NULL, *host = NULL, *user = NULL, *query = NULL, *frag = NULL;
    CURLU *u = curl_url();
    if (!u) { snprintf(why, whylen, "out of memory checking %s", what); return -1; }
    CURLUcode rc = curl_url_set(u, CURLUPART_URL, url, 0);
    if (rc != CURLUE_OK) {
        snprintf(why, whylen, "%s is not a valid absolute URL (%s)", what, curl_url_strerror(rc));
        goto done;
    }
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_USER, &user, 0);
    curl_url_get(u, CURLUPART_QUERY, &query, 0);
    curl_url_get(u, CURLUPART_FRAGMENT, &frag, 0);
    if (!scheme || !host || !*host) {
        snprintf(why, whylen, "%s has no scheme or host", what);
    } else if (strcasecmp(scheme, "https") != 0 && strcasecmp(scheme, "http") != 0) {
        snprintf(why, whylen, "%s must use https:// (got %.16s://)", what, scheme);
    } else if (user) {
        snprintf(why, whylen, "%s must not carry credentials (user:password@): use the client options",
                 what);
    } else if (!allow_query && (query || frag)) {
        snprintf(why, whylen, "%s must not have a query or fragment", what);
    } else if (strcasecmp(scheme, "http") == 0 && !insecure_http && !is_loopback_host(host)) {
        snprintf(why, whylen,
                 "%s uses plain http:// to the non-loopback host %.200s: the token and secrets would "
                 "travel unencrypted; use https://, or set insecure_http = true if you really mean it",
                 what, host);
    } else {
        ret = 0;
    }
done:
    curl_free(scheme);
    curl_free(host);
    curl_free(user);
    curl_free(query);
    curl_free(frag);
    curl_url_cleanup(u);
    return ret;
}

/* A number option within [lo, hi] (lo_open: excluded); -1 with why when out of range. */
static int num_in(lua_State *L, int idx, const char *k, double def, double lo, int lo_open,
                  double hi, double *out, char *why, size_t whylen)
{
    double v = cxone_opt_number(L, idx, k, def);
    if (!(lo_open ? v > lo : v >= lo) || !(v <= hi)) {
        snprintf(why, whylen, "option '%s' must be a number in %s%g, %g]", k, lo_open ? "(" : "[",
                 lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cxone_read_config(lua_State *L, int idx, cx_config *cfg, cxone_extra *x, cxone_buf *scratch,
                      char *why, size_t whylen)
{
    memset(cfg, 0, sizeof *cfg);
    memset(x, 0, sizeof *x);
    /* every option's type first (argument errors), then its value */
    const char *base = cxone_opt_string(L, idx, "base_url", DEFAULT_BASE_URL, NULL);
    cfg->token_url = cxone_opt_string(L, idx, "token_url", NULL, NULL);
    cfg->client_id = cxone_opt_string(L, idx, "client_id", NULL, NULL);
    cfg->client_secret = cxone_opt_string(L, idx, "client_secret", NULL, NULL);
    cfg->key_id = cxone_opt_string(L, idx, "access_key_id", NULL, NULL);
    cfg->key_secret = cxone_opt_string(L, idx, "access_key_secret", NULL, NULL);
    cfg->basic_auth = cxone_opt_boolean(L, idx, "basic_auth", 0);
    cfg->scope = cxone_opt_string(L, idx, "scope", DEFAULT_SCOPE, NULL);
    cfg->user_agent = cxone_opt_string(L, idx, "user_agent", NULL, NULL);
    x->ca_file = cxone_opt_string(L, idx, "ca_file", NULL, NULL);
    x->insecure_http = cxone_opt_boolean(L, idx, "insecure_http", 0);
    x->debug = cxone_opt_boolean(L, idx, "debug", 0);
    lua_Integer retries = cxone_opt_integer(L, idx, "retries", 3);
    lua_Integer conc = cxone_opt_integer(L, idx, "max_concurrency", 16);
    double rate = 0;
    const char *env_rps = getenv("CXONE_MAX_RPS");
    const char *env_debug = getenv("CXONE_DEBUG");
    if (env_debug && *env_debug && strcmp(env_debug, "0") != 0) x->debug = 1;

    if (!cfg->client_id || !*cfg->client_id) {
        snprintf(why, whylen, "option 'client_id' is required (a non-empty string)");
        return -1;
    }
    if (!cfg->client_secret || !*cfg->client_secret) {
        snprintf(why, whylen, "option 'client_secret' is required (a non-empty string)");
        return -1;
    }
    if ((cfg->key_id == NULL) != (cfg->key_secret == NULL)) {
        snprintf(why, whylen, "options 'access_key_id' and 'access_key_secret' go together");
        return -1;
    }
    if (num_in(L, idx, "connect_timeout", 10, 0, 1, 3600, &cfg->connect_timeout, why, whylen)
        || num_in(L, idx, "timeout", 30, 0, 1, 86400, &cfg->timeout, why, whylen)
        || num_in(L, idx, "backoff_base", 0.5, 0, 0, 3600, &cfg->backoff_base, why, whylen)
        || num_in(L, idx, "backoff_cap", 8, 0, 0, 3600, &cfg->backoff_cap, why, whylen)
        || num_in(L, idx, "retry_after_cap", 60, 0, 0, 86400, &cfg->retry_after_cap, why, whylen)
        || num_in(L, idx, "deadline", 120, 0, 1, 86400, &cfg->deadline, why, whylen)
        || num_in(L, idx, "refresh_margin", 30, 0, 0, 86400, &cfg->refresh_margin, why, whylen)
        || num_in(L, idx, "rate_limit", 0, 0, 0, 100000, &rate, why, whylen))
        return -1;
    if (retries < 0 || retries > 100) {
        snprintf(why, whylen, "option 'retries' must be an integer in [0, 100]");
        return -1;
    }
    if (conc < 1 || conc > 64) {
        snprintf(why, whylen, "option 'max_concurrency' must be an integer in [1, 64]");
        return -1;
    }
    if (env_rps && *env_rps) {
        char *end;
        double v = strtod(env_rps, &end);
        if (*end || !(v > 0) || v > 100000) {
            snprintf(why, whylen, "CXONE_MAX_RPS must be a number of requests per second in (0, 100000]");
            return -1;
        }
        if (rate == 0 || v < rate) rate = v; /* the lower of the two wins */
    }
    if (cfg->user_agent && !cx_header_value_ok(cfg->user_agent, strlen(cfg->user_agent), CX_KEY_MAX)) {
        snprintf(why, whylen, "option 'user_agent' must be printable ASCII (at most 200 bytes)");
        return -1;
    }
    if (cxone_check_url("base_url", base, x->insecure_http, 0, why, whylen) != 0) return -1;
    if (cfg->token_url && cxone_check_url("token_url", cfg->token_url, x->insecure_http, 0, why, whylen) != 0)
        return -1;
    if (x->ca_file && access(x->ca_file, R_OK) != 0) {
        snprintf(why, whylen, "ca_file %.300s is not readable", x->ca_file);
        return -1;
    }
    if (!x->ca_file && access(DEFAULT_CA_BUNDLE, R_OK) == 0) x->ca_file = DEFAULT_CA_BUNDLE;
    /* the base URL without trailing slashes; the token URL beside it unless given */
    size_t bl = strlen(base);
    while (bl > 0 && base[bl - 1] == '/') bl--;
    cxone_buf_add(scratch, base, bl);
    cxone_buf_addc(scratch, '\0');
    size_t tok_off = scratch->len;
    if (!cfg->token_url) {
        cxone_buf_add(scratch, base, bl);
        cxone_buf_addstr(scratch, "/oauth/token");
        cxone_buf_addc(scratch, '\0');
    }
    if (scratch->oom) {
        snprintf(why, whylen, "out of memory reading the options");
        return -1;
    }
    cfg->base_url = scratch->p;
    if (!cfg->token_url) cfg->token_url = scratch->p + tok_off;
    cfg->retries = (int)retries;
    cfg->max_concurrency = (int)conc;
    cfg->rate_limit = rate;
    cfg->token_fail_memory = 5;
    return 0;
}
