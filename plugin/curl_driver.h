/* curl_driver: the libcurl driver of the call engine: one multi handle per client (connections
 * and TLS sessions reused, HTTP/2 over TLS), request bodies supplied through a read callback so
 * that libcurl can never re-send a write unseen, a redacting debug trace, the proxy policy, and
 * fresh handles in a forked child. It moves bytes and time; every decision is the engine's. */
#ifndef CXONE_CURL_DRIVER_H
#define CXONE_CURL_DRIVER_H

#include <stddef.h>
#include "engine.h"

#define CXD_MAX_CONCURRENCY 64

typedef struct cx_curl cx_curl;

/* Called as each call finishes (before stop_on_failure looks at it): the binding reads the
 * answer there and may reject it (cx_call_reject). Must not raise. */
typedef void (*cx_curl_done_fn)(void *ud, cx_call *c);

/* NULL with why when libcurl cannot be initialised or memory ran out. ca_file may be NULL. */
cx_curl *cx_curl_new(const char *ca_file, int debug, char *why, size_t whylen);
void cx_curl_free(cx_curl *d);
/* Runs the calls of engine e to completion, at most `concurrency` admitted at once (the engine
 * may hold some back further, under a rate limit). With stop_on_failure, once a call fails the
 * calls not yet admitted are not started: skipped[i] = 1 for those (skipped may be NULL when
 * stop_on_failure is 0). */
void cx_curl_run(cx_curl *d, cx_engine *e, cx_call **calls, size_t n, int concurrency,
                 int stop_on_failure, cx_curl_done_fn done, void *ud, unsigned char *skipped);
/* Prints one of the engine's trace lines on stderr (cx_config.trace), control bytes as '?'. */
void cx_curl_trace(void *ud, int id, const char *line);
/* Connections opened since the driver was made. */
double cx_curl_connections(const cx_curl *d);
/* The clocks the driver gives the engine: monotonic seconds, and unix time. */
double cx_curl_now(void);
double cx_curl_wall(void);

#endif
