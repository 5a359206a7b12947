/* http.c: libmicrohttpd plumbing: accumulates request bodies (413 over 1 MiB), hands each
 * request to sim.lua's handle(), turns its verdict into a response, a delay, a hang, a reset
 * or a truncated body, counts connections and logs one line per request. */
#include "sim.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <lauxlib.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Per-request context, MHD's *con_cls. */
struct request {
    char *body;
    size_t len, cap;
    int too_large;
    int dispatched;               /* a verdict has been acted on */
    struct sim_pending *pending;  /* set while the connection is suspended */
    lua_Integer defer_id;         /* sim.lua's id for a deferred answer, 0 if none */
    int status;                   /* status sent, for the log line */
    const char *outcome;          /* "reset", "hang", ... when no status was sent */
    double t0;
    char method[16];
    char *path;
};

static lua_State *Lg;             /* used only from the MHD polling thread */
static int quiet;
static int suspended;             /* connections suspended right now (atomic) */
static int shutting_down;         /* atomic: no new suspensions */
static char *tls_cert_mem, *tls_key_mem;

int sim_http_suspended(void) { return __atomic_load_n(&suspended, __ATOMIC_SEQ_CST); }
void sim_http_begin_shutdown(void) { __atomic_store_n(&shutting_down, 1, __ATOMIC_SEQ_CST); }

/* ---- building the request table for Lua ---- */

/* Adds one header to the table at the top of the stack, name lowercased; repeats are joined. */
static enum MHD_Result add_header(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    lua_State *L = cls;
    char name[128];
    size_t i;
    (void)kind;
    for (i = 0; key[i] && i < sizeof name - 1; i++) name[i] = (char)tolower((unsigned char)key[i]);
    name[i] = '\0';
    lua_getfield(L, -1, name);                         /* existing value or nil */
    if (lua_isstring(L, -1)) {
        lua_pushstring(L, ", ");
        lua_pushstring(L, value ? value : "");
        lua_concat(L, 3);
    } else {
        lua_pop(L, 1);
        lua_pushstring(L, value ? value : "");
    }
    lua_setfield(L, -2, name);
    return MHD_YES;
}

static enum MHD_Result add_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value)
{
    lua_State *L = cls;
    (void)kind;
    lua_pushstring(L, value ? value : "");
    lua_setfield(L, -2, key);
    return MHD_YES;
}

static void push_request(lua_State *L, struct MHD_Connection *c, struct request *r)
{
    lua_createtable(L, 0, 8);
    lua_pushstring(L, r->method);
    lua_setfield(L, -2, "method");
    lua_pushstring(L, r->path);
    lua_setfield(L, -2, "path");
    lua_newtable(L);
    MHD_get_connection_values(c, MHD_HEADER_KIND, add_header, L);
    lua_setfield(L, -2, "headers");
    lua_newtable(L);
    MHD_get_connection_values(c, MHD_GET_ARGUMENT_KIND, add_arg, L);
    lua_setfield(L, -2, "args");
    lua_pushlstring(L, r->body ? r->body : "", r->len);
    lua_setfield(L, -2, "body");
    lua_pushboolean(L, r->too_large);
    lua_setfield(L, -2, "too_large");
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    char addr[INET6_ADDRSTRLEN] = "?";
    if (ci && ci->client_addr) {
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, addr, sizeof addr);
        else if (sa->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, addr, sizeof addr);
    }
    lua_pushstring(L, addr);
    lua_setfield(L, -2, "remote");
}

/* ---- responses ---- */

/* A body that stops halfway through what Content-Length promised. */
struct truncated {
    char *data;
    size_t limit;
};

static ssize_t truncated_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct truncated *t = cls;
    if (pos >= t->limit) return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = t->limit - (size_t)pos;
    if (n > max) n = max;
    memcpy(buf, t->data + pos, n);
    return (ssize_t)n;
}

static void truncated_free(void *cls)
{
    struct truncated *t = cls;
    free(t->data);
    free(t);
}

/* Builds the response described by the verdict table at index v; NULL when out of memory. */
static struct MHD_Response *make_response(lua_State *L, int v, int truncate)
{
    size_t len = 0;
    lua_getfield(L, v, "body");
    const char *body = lua_tolstring(L, -1, &len);
    if (!body) body = "";
    struct MHD_Response *resp;
    if (truncate) {
        struct truncated *t = calloc(1, sizeof *t);
        char *copy = malloc(len + 1);
        if (!t || !copy) {
            free(t);
            free(copy);
            lua_pop(L, 1);
            return NULL;
        }
        memcpy(copy, body, len);
        t->data = copy;
        t->limit = len / 2;
        resp = MHD_create_response_from_callback(len, 4096, truncated_reader, t, truncated_free);
        if (!resp) truncated_free(t);
    } else {
        resp = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    }
    lua_pop(L, 1);
    if (!resp) return NULL;
    lua_getfield(L, v, "headers");
    if (lua_istable(L, -1)) {
        lua_pushnil(L);
        while (lua_next(L, -2)) {                      /* -2: name, -1: value */
            const char *name = lua_tostring(L, -2);
            const char *value = lua_tostring(L, -1);
            if (name && value && MHD_add_response_header(resp, name, value) != MHD_YES) {
                lua_pop(L, 3);
                MHD_destroy_response(resp);
                return NULL;
            }
            lua_pop(L, 1);
        }
    }
    lua_pop(L, 1);
    return resp;
}

static enum MHD_Result queue(struct MHD_Connection *c, struct request *r, unsigned status,
                             struct MHD_Response *resp)
{
    if (!resp) {
        r->outcome = "out-of-memory";
        return MHD_NO;
    }
    enum MHD_Result rc = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    if (rc == MHD_YES) r->status = (int)status;
    else r->outcome = "queue-failed";
    return rc;
}

static enum MHD_Result internal_error(struct MHD_Connection *c, struct request *r)
{
    static const char body[] = "{\"error\":\"internal\",\"message\":\"simulator error, see its log\"}";
    struct MHD_Response *resp = MHD_create_response_from_buffer(sizeof body - 1, (void *)body,
                                                                MHD_RESPMEM_PERSISTENT);
    if (resp && MHD_add_response_header(resp, "Content-Type", "application/json") != MHD_YES) {
        MHD_destroy_response(resp);
        resp = NULL;
    }
    return queue(c, r, 500, resp);
}

/* Suspends the connection until the timer fires (delay_ms >= 0) or the peer leaves (< 0). */
static enum MHD_Result suspend_for(struct MHD_Connection *c, struct request *r, double delay_ms)
{
    int fd = -1;
    if (delay_ms < 0) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) fd = ci->connect_fd;
    }
    struct sim_pending *p = sim_timer_new();
    if (!p) {
        r->outcome = "out-of-memory";
        return MHD_NO;
    }
    MHD_suspend_connection(c);
    __atomic_add_fetch(&suspended, 1, __ATOMIC_SEQ_CST);
    r->pending = p;
    sim_timer_arm(p, c, delay_ms, fd);
    return MHD_YES;
}

/* Calls sim.lua's `fn` with `nargs` arguments already pushed above the handler slot h,
 * then acts on the verdict. */
static enum MHD_Result act(struct MHD_Connection *c, struct request *r, int h, int nargs)
{
    lua_State *L = Lg;
    r->dispatched = 1;
    if (lua_pcall(L, nargs, 1, h) != LUA_OK || !lua_istable(L, -1)) {
        fprintf(stderr, "cxone-sim: sim.lua failed on %s %s: %s\n", r->method, r->path,
                lua_isstring(L, -1) ? lua_tostring(L, -1) : "verdict is not a table");
        lua_settop(L, h - 1);
        return internal_error(c, r);
    }
    int v = lua_gettop(L);
    lua_getfield(L, v, "action");
    const char *action = lua_tostring(L, -1);
    if (!action) action = "respond";
    lua_getfield(L, v, "status");
    unsigned status = (unsigned)lua_tointeger(L, -1);
    lua_pop(L, 1);
    enum MHD_Result rc;
    int stopping = __atomic_load_n(&shutting_down, __ATOMIC_SEQ_CST);

    if (strcmp(action, "reset") == 0) {
        r->outcome = "reset";
        rc = MHD_NO;
    } else if (strcmp(action, "hang") == 0) {
        r->outcome = "hang";
        rc = stopping ? MHD_NO : suspend_for(c, r, -1);
    } else if (strcmp(action, "defer") == 0) {
        lua_getfield(L, v, "id");
        r->defer_id = lua_tointeger(L, -1);
        lua_getfield(L, v, "delay_ms");
        double ms = lua_tonumber(L, -1);
        lua_pop(L, 2);
        if (stopping) {
            r->outcome = "shutdown";
            rc = MHD_NO;
        } else {
            rc = suspend_for(c, r, ms < 0 ? 0 : ms);
        }
    } else if (strcmp(action, "truncate") == 0) {
        rc = queue(c, r, status ? status : 200, make_response(L, v, 1));
    } else {
        rc = queue(c, r, status ? status : 200, make_response(L, v, 0));
    }
    lua_settop(L, h - 1);
    return rc;
}

static enum MHD_Result dispatch(struct MHD_Connection *c, struct request *r)
{
    int h = sim_lua_prepare(Lg, "handle");
    push_request(Lg, c, r);
    return act(c, r, h, 1);
}

/* Tells sim.lua to forget a deferred answer that will never be sent. */
static void cancel_defer(struct request *r)
{
    if (!r->defer_id) return;
    int h = sim_lua_prepare(Lg, "cancel");
    lua_pushinteger(Lg, r->defer_id);
    if (lua_pcall(Lg, 1, 0, h) != LUA_OK)
        fprintf(stderr, "cxone-sim: sim.lua cancel failed: %s\n", lua_tostring(Lg, -1));
    lua_settop(Lg, h - 1);
    r->defer_id = 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_size, void **con_cls)
{
    struct request *r = *con_cls;
    (void)cls;
    (void)version;
    if (!r) {
        /* First call: only the headers are in. */
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->t0 = sim_monotonic();
        snprintf(r->method, sizeof r->method, "%s", method);
        r->path = strdup(url);
        if (!r->path) {
            free(r);
            return MHD_NO;
        }
        *con_cls = r;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > SIM_MAX_BODY) {
            r->too_large = 1;          /* answer 413 now, without reading the body */
            return dispatch(c, r);
        }
        return MHD_YES;
    }
    if (r->pending) {
        /* Resumed by the timer thread. */
        int verdict = sim_timer_finish(r->pending);
        r->pending = NULL;
        __atomic_sub_fetch(&suspended, 1, __ATOMIC_SEQ_CST);
        if (verdict != SIM_PENDING_FIRED || !r->defer_id) {
            cancel_defer(r);
            return MHD_NO;                 /* hang released, or shutting down: drop */
        }
        lua_Integer id = r->defer_id;
        r->defer_id = 0;
        int h = sim_lua_prepare(Lg, "resume");
        lua_pushinteger(Lg, id);
        return act(c, r, h, 1);
    }
    if (*upload_size > 0) {
        if (!r->dispatched && !r->too_large) {
            if (r->len + *upload_size > SIM_MAX_BODY) {
                r->too_large = 1;          /* keep reading, discard, answer 413 at the end */
                free(r->body);
                r->body = NULL;
                r->len = r->cap = 0;
            } else {
                if (r->len + *upload_size > r->cap) {
                    size_t ncap = r->cap ? r->cap : 1024;
                    while (ncap < r->len + *upload_size) ncap *= 2;
                    char *nb = realloc(r->body, ncap);
                    if (!nb) return MHD_NO;
                    r->body = nb;
                    r->cap = ncap;
                }
                memcpy(r->body + r->len, upload_data, *upload_size);
                r->len += *upload_size;
            }
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->dispatched) return MHD_YES;     /* answered early (413); nothing more to do */
    return dispatch(c, r);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    struct request *r = *con_cls;
    (void)cls;
    (void)c;
    (void)toe;
    if (!r) return;
    if (r->pending) {
        sim_timer_finish(r->pending);
        __atomic_sub_fetch(&suspended, 1, __ATOMIC_SEQ_CST);
    }
    cancel_defer(r);
    if (!quiet) {
        /* Method, path (no query string), status, time: never a header or a body. */
        double ms = (sim_monotonic() - r->t0) * 1000.0;
        if (r->status)
            fprintf(stderr, "%s %s %d %.1fms\n", r->method, r->path, r->status, ms);
        else
            fprintf(stderr, "%s %s %s %.1fms\n", r->method, r->path, r->outcome ? r->outcome : "-", ms);
    }
    free(r->body);
    free(r->path);
    free(r);
    *con_cls = NULL;
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    (void)cls;
    (void)c;
    (void)socket_context;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) sim_connections_add();
}

struct MHD_Daemon *sim_http_start(const struct sim_options *opt, lua_State *L, int listen_fd,
                                  char *err, size_t errlen)
{
    char *cert = NULL, *key = NULL;
    size_t n;
    Lg = L;
    quiet = opt->quiet;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME;
    if (!opt->quiet) flags |= MHD_USE_ERROR_LOG;
    if (opt->tls_cert) {
        if (MHD_is_feature_supported(MHD_FEATURE_TLS) != MHD_YES) {
            snprintf(err, errlen, "this libmicrohttpd has no TLS support");
            return NULL;
        }
        if (sim_read_file(opt->tls_cert, &cert, &n, err, errlen) != 0) return NULL;
        if (sim_read_file(opt->tls_key, &key, &n, err, errlen) != 0) {
            free(cert);
            return NULL;
        }
        flags |= MHD_USE_TLS;
    }
    struct MHD_OptionItem tls_opts[] = {
        { cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, cert },
        { MHD_OPTION_HTTPS_MEM_KEY, 0, key },
        { MHD_OPTION_END, 0, NULL },
    };
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, NULL,
        MHD_OPTION_LISTEN_SOCKET, listen_fd,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, NULL,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, NULL,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)600,
        MHD_OPTION_ARRAY, tls_opts,
        MHD_OPTION_END);
    /* MHD keeps pointers to the certificate and key: they live until sim_http_stop. */
    tls_cert_mem = cert;
    tls_key_mem = key;
    if (!d) snprintf(err, errlen, "cannot start the HTTP server%s", opt->tls_cert ? " (check the TLS certificate and key)" : "");
    return d;
}

void sim_http_stop(struct MHD_Daemon *d)
{
    if (d) MHD_stop_daemon(d);
    free(tls_cert_mem);
    free(tls_key_mem);
    tls_cert_mem = tls_key_mem = NULL;
}
