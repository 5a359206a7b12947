/* sim.h: declarations shared by the cxone-sim C files (options, HTTP server, timers, Lua bridge, storage). */
#ifndef CXONE_SIM_H
#define CXONE_SIM_H

#include <stddef.h>
#include <stdint.h>
#include <microhttpd.h>
#include <lua.h>

#define SIM_MAX_BODY (1024 * 1024)   /* request bodies above this answer 413 */

/* Command-line configuration. */
struct sim_options {
    char host[256];
    unsigned port;
    const char *state_path;     /* --state, NULL if absent */
    const char *scenario_path;  /* --scenario */
    long token_ttl;             /* --token-ttl, seconds */
    double rate_limit;          /* --rate-limit N/s, 0 = off */
    const char *rate_limit_headers; /* --rate-limit-headers: "all", "429" or "none" */
    const char *rate_limit_reset;   /* --rate-limit-reset: "delta" or "epoch" */
    const char *tls_cert;
    const char *tls_key;
    int quiet;
};

/* store.c: files and randomness. */
int sim_read_file(const char *path, char **out, size_t *len, char *err, size_t errlen);
int sim_atomic_write(const char *path, const char *data, size_t len, char *err, size_t errlen);
/* The change journal beside the state file (<state>.journal): see sim/README.md. */
int sim_journal_open(const char *path, char *err, size_t errlen);
int sim_journal_append(const char *data, size_t len, char *err, size_t errlen);
int sim_journal_reset(char *err, size_t errlen);
size_t sim_journal_size(void);
void sim_journal_close(void);
int sim_random_bytes(unsigned char *buf, size_t n);
double sim_monotonic(void);

/* luabridge.c: the one Lua state that holds routing, state and validation. */
lua_State *sim_lua_open(const struct sim_options *opt, char *err, size_t errlen);
void sim_lua_close(lua_State *L);
int sim_lua_flush(lua_State *L);          /* writes the state file once more at shutdown */
/* Pushes sim.lua's function `name` and the traceback handler below it; returns the handler's index. */
int sim_lua_prepare(lua_State *L, const char *name);
unsigned long sim_connections_total(void);
void sim_connections_add(void);

/* timer.c: wakes suspended connections (delays, hangs) from a small helper thread. */
struct sim_pending;
int sim_timer_start(void);
void sim_timer_stop(void);
/* Allocates an entry (NULL when out of memory); arming it cannot fail, so a connection is
 * only suspended once its wake-up is guaranteed. */
struct sim_pending *sim_timer_new(void);
/* Arms a resume after delay_ms (delay_ms < 0: hang, resume only when the peer closes fd). */
void sim_timer_arm(struct sim_pending *p, struct MHD_Connection *conn, double delay_ms, int fd);
/* Verdicts an entry ends with. */
enum { SIM_PENDING_WAITING = 0, SIM_PENDING_FIRED = 1, SIM_PENDING_DROP = 2 };
/* Takes an entry out of the timer (if still there), frees it and returns its verdict. */
int sim_timer_finish(struct sim_pending *p);
/* Resumes every suspended connection with the "drop" verdict (shutdown). Returns how many. */
int sim_timer_release_all(void);

/* http.c: the libmicrohttpd plumbing. */
struct MHD_Daemon *sim_http_start(const struct sim_options *opt, lua_State *L, int listen_fd,
                                  char *err, size_t errlen);
void sim_http_stop(struct MHD_Daemon *d);
void sim_http_begin_shutdown(void);       /* from now on no connection is suspended */
int sim_http_suspended(void);             /* connections currently suspended */

#endif
