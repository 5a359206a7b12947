/* wire: the no-I/O half of the client (requests built, answers interpreted, retry decisions),
 * for transports that do their own I/O (nginx cosockets, HAProxy's httpclient). */
#ifndef CXONE_WIRE_H
#define CXONE_WIRE_H

#include "cxone.h"

/* cxone_wire_open (core.wire_*) is declared in cxone.h with the other openers. */

/* Defined in client.c: the URL and id checks of cxone.Client. */
const char *cxone_bad_id(const char *s, size_t n);
/* A JSON string literal of s[0..n) in ASCII only (\uXXXX, lower or upper case hex): the form in
 * which a server may echo a value we sent. */
void cxone_json_quote_ascii(cxone_buf *out, const char *s, size_t n, int upper);
int cxone_header_value_ok(const char *s, size_t n);
/* Replaces in msg every masked value of the payload at idx (0 or not a table: none), read raw. */
void cxone_scrub_masked(lua_State *L, int payload, char *msg, size_t cap);
int cxone_check_url(const char *what, const char *url, int insecure_http, int allow_query,
                    char *why, size_t whylen);

/* Defined in wire.c: a 2xx answer to an API call (CXH_EXPECT_VARIABLES or _BUILD), for both
 * transports: refused if its ETag was unusable (bad_etag), else decoded once with its shape
 * checked by the same reading. Pushes the table and returns 1, or pushes nothing and returns 0
 * with a `format` message in msg (never quoting the answer). */
int cxone_wire_answer(lua_State *L, int expect, long status, int bad_etag, const char *body,
                      size_t n, char *msg, size_t cap);

/* Defined in wire.c, for both transports (and webhooks): which field of a non-2xx answer's
 * error body the message quotes (NULL: none; *alt: the fallback when it is absent or empty),
 * then the code and message for the status, quoting `server` (that field's text, already made
 * safe: "" if none). attempts > 0 is named in the messages of retried statuses. */
const char *cxone_wire_quoted(long status, int webhook, const char **alt);
const char *cxone_wire_failure(long status, int attempts, int webhook, const char *client_id,
                               const char *server, char *msg, size_t cap);

/* Defined in http.c: the token-answer scanner, Retry-After, form encoding. */
int cxone_js_field(const char *s, size_t n, const char *key, cxone_buf *str, double *num);
int cxone_token_chars_ok(const char *s, size_t n);
double cxone_parse_retry_after(const char *v);
void cxone_form_field(cxone_buf *b, const char *k, const char *v);
char *cxone_basic_header(const char *id, const char *secret);

#endif
