/* answer: a finished engine call as Lua values, shared by every binding (client.c for the
 * libcurl driver, engine_lua.c for the drivers written in Lua): the 2xx answer decoded once with
 * its shape checked, the error body's quoted field made safe, and the three return values. */
#ifndef CXONE_ANSWER_H
#define CXONE_ANSWER_H

#include "cxone.h"
#include "engine.h"

/* Collects the masked values of the payload at idx (read raw; 0 or not a table: none) into a
 * GC-owned scratch userdata it pushes (one stack slot), and points spec->secrets at them; the
 * strings stay referenced by the payload, which must stay on the stack while spec is used. */
void cxone_spec_secrets(lua_State *L, int payload, cx_spec *spec);
/* Reads the 2xx answer of a done call once (decode + shape check). On success pushes the
 * decoded table and returns 1; on a bad answer rejects the call (cx_call_reject: `format`) and
 * returns 0 with nothing pushed. Never raises (the Lua work runs protected; out of memory
 * becomes the call's `memory` failure). Calls that are not a successful API read/write/build
 * push nothing and return 0. */
int cxone_read_answer(lua_State *L, cx_engine *e, cx_call *c);
/* Pushes the meta table of a call: {status=, etag=, latency_ms=, attempts=, idempotency_key=}. */
void cxone_push_meta(lua_State *L, const cx_call *c);
/* Pushes the meta table, then the call's outcome: `answer, nil, meta` (returns 1) or
 * `nil, message, code` (returns 0): four stack slots in all. `answer` is the value at index
 * res (0: read it now with cxone_read_answer; webhooks: true). */
int cxone_push_outcome(lua_State *L, cx_engine *e, cx_call *c, int res);

/* Pushes the engine's counters as one table (the same fields for every binding):
 * requests, attempts, retries, token_requests, successes, failures, rate_limited, connections
 * (the driver's count, given), latency_ms_total, paced_s, rate (requests/s, 0: none) and
 * latency_buckets (calls by latency: bucket i counts calls of at most 2^(i-1) ms, the last one
 * the rest). */
void cxone_push_stats(lua_State *L, cx_engine *e, double connections);

#endif
