/* config: the options of core.client and core.engine read into one cx_config, with the CXONE_*
 * environment variables the C core honours read here and nowhere else. */
#ifndef CXONE_CONFIG_H
#define CXONE_CONFIG_H

#include "cxone.h"
#include "engine.h"

/* Settings that are not the engine's (the libcurl driver's, the bindings'). */
typedef struct {
    const char *ca_file;   /* NULL: the system bundle when readable */
    int debug;             /* option `debug`, or CXONE_DEBUG set and not "0" */
    int insecure_http;
} cxone_extra;

/* Reads the options table at idx into cfg (strings point into the table, valid while it is
 * held: cx_engine_new copies them) and extra. A wrong Lua type raises an argument error naming
 * the option; a missing or unusable setting (no client_id, a refused URL, a value out of range,
 * an unreadable ca_file) returns -1 with the reason in why (never quoting a secret). The base
 * URL is stored without trailing slashes in the scratch buffer `scratch` (pushed by the caller
 * with cxone_buf_push, kept on the stack while cfg is used). */
int cxone_read_config(lua_State *L, int idx, cx_config *cfg, cxone_extra *extra, cxone_buf *scratch,
                      char *why, size_t whylen);

/* Checks an absolute http(s) URL: no credentials; no query or fragment unless allow_query;
 * plain http only to loopback unless insecure_http. 0, or -1 with why. */
int cxone_check_url(const char *what, const char *url, int insecure_http, int allow_query,
                    char *why, size_t whylen);
/* Is the host part of URL a loopback address (localhost, 127.0.0.0/8, ::1)? */
int cxone_url_is_loopback(const char *url);

#endif
