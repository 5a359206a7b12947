/* main.c: cxone-sim's entry point: command line, listening socket, start-up, signals, clean shutdown. */
#include "sim.h"

#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define EXIT_USAGE 2

static void usage(FILE *out)
{
    fprintf(out,
        "usage: cxone-sim [options]\n"
        "A local emulator of the NICE CXone Integration Engine API (see sim/README.md).\n\n"
        "  --listen HOST:PORT     address to listen on (default 127.0.0.1:8642; port 0 picks a\n"
        "                         free port). The first line on stdout is the base URL.\n"
        "  --state FILE           load state from FILE and write every change back atomically\n"
        "                         (created from the demo data set if it does not exist)\n"
        "  --scenario FILE        arm the faults listed in FILE ({\"faults\":[...]})\n"
        "  --token-ttl SECONDS    access token lifetime (default 3600)\n"
        "  --rate-limit N/s       per-client token bucket on API routes (burst N; default off)\n"
        "  --rate-limit-headers all|429|none\n"
        "                         where X-RateLimit-* and RateLimit(-Policy) go: every API answer\n"
        "                         (default), 429s only, or nowhere (Retry-After only)\n"
        "  --rate-limit-reset delta|epoch\n"
        "                         X-RateLimit-Reset as seconds from now (default) or a unix time\n"
        "  --tls-cert FILE        serve HTTPS with this PEM certificate...\n"
        "  --tls-key FILE         ...and this PEM private key\n"
        "  --quiet                no per-request log on stderr\n"
        "  --help                 this text\n");
}

static int bad(const char *fmt, const char *arg)
{
    fprintf(stderr, "cxone-sim: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see --help)\n");
    return -1;
}

/* Parses "HOST:PORT" or "[V6]:PORT". */
static int parse_listen(const char *s, struct sim_options *o)
{
    const char *colon;
    size_t hl;
    if (s[0] == '[') {
        const char *end = strchr(s, ']');
        if (!end || end[1] != ':') return -1;
        hl = (size_t)(end - s - 1);
        if (hl == 0 || hl >= sizeof o->host) return -1;
        memcpy(o->host, s + 1, hl);
        colon = end + 1;
    } else {
        colon = strrchr(s, ':');
        if (!colon) return -1;
        hl = (size_t)(colon - s);
        if (hl == 0 || hl >= sizeof o->host) return -1;
        memcpy(o->host, s, hl);
    }
    o->host[hl] = '\0';
    char *end;
    errno = 0;
    unsigned long p = strtoul(colon + 1, &end, 10);
    if (errno || *end || end == colon + 1 || p > 65535) return -1;
    o->port = (unsigned)p;
    return 0;
}

static int parse_args(int argc, char **argv, struct sim_options *o)
{
    memset(o, 0, sizeof *o);
    snprintf(o->host, sizeof o->host, "127.0.0.1");
    o->port = 8642;
    o->token_ttl = 3600;
    o->rate_limit_headers = "all";
    o->rate_limit_reset = "delta";
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            exit(0);
        } else if (strcmp(a, "--quiet") == 0) {
            o->quiet = 1;
            continue;
        }
        if (strncmp(a, "--", 2) != 0) return bad("unexpected argument '%s'", a);
        if (strcmp(a, "--listen") && strcmp(a, "--state") && strcmp(a, "--scenario")
            && strcmp(a, "--token-ttl") && strcmp(a, "--rate-limit") && strcmp(a, "--tls-cert")
            && strcmp(a, "--tls-key") && strcmp(a, "--rate-limit-headers")
            && strcmp(a, "--rate-limit-reset"))
            return bad("unknown option '%s'", a);
        if (!v) return bad("option %s needs a value", a);
        i++;
        if (strcmp(a, "--listen") == 0) {
            if (parse_listen(v, o) != 0) return bad("--listen wants HOST:PORT, got '%s'", v);
        } else if (strcmp(a, "--state") == 0) {
            o->state_path = v;
        } else if (strcmp(a, "--scenario") == 0) {
            o->scenario_path = v;
        } else if (strcmp(a, "--token-ttl") == 0) {
            char *end;
            errno = 0;
            long t = strtol(v, &end, 10);
            if (errno || *end || end == v || t < 0 || t > 100000000L)
                return bad("--token-ttl wants a number of seconds, got '%s'", v);
            o->token_ttl = t;
        } else if (strcmp(a, "--rate-limit") == 0) {
            char *end;
            errno = 0;
            double n = strtod(v, &end);
            if (errno || end == v || !(n > 0) || n > 1e7 || (*end && strcmp(end, "/s") != 0))
                return bad("--rate-limit wants N/s with N > 0, got '%s'", v);
            o->rate_limit = n;
        } else if (strcmp(a, "--rate-limit-headers") == 0) {
            if (strcmp(v, "all") && strcmp(v, "429") && strcmp(v, "none"))
                return bad("--rate-limit-headers wants all, 429 or none, got '%s'", v);
            o->rate_limit_headers = v;
        } else if (strcmp(a, "--rate-limit-reset") == 0) {
            if (strcmp(v, "delta") && strcmp(v, "epoch"))
                return bad("--rate-limit-reset wants delta or epoch, got '%s'", v);
            o->rate_limit_reset = v;
        } else if (strcmp(a, "--tls-cert") == 0) {
            o->tls_cert = v;
        } else if (strcmp(a, "--tls-key") == 0) {
            o->tls_key = v;
        }
    }
    if (!o->tls_cert != !o->tls_key) return bad("%s", "--tls-cert and --tls-key go together");
    return 0;
}

/* Binds and listens; on success returns the socket and stores the bound port. */
static int open_listener(struct sim_options *o, int *family)
{
    struct addrinfo hints, *res = NULL, *ai;
    char port[16];
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    snprintf(port, sizeof port, "%u", o->port);
    int rc = getaddrinfo(o->host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "cxone-sim: cannot resolve %s: %s\n", o->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1, saved = 0;
    for (ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) == 0
            && bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 511) == 0) {
            *family = ai->ai_family;
            break;
        }
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        fprintf(stderr, "cxone-sim: cannot listen on %s:%u: %s\n", o->host, o->port, strerror(saved));
        return -1;
    }
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        fprintf(stderr, "cxone-sim: getsockname: %s\n", strerror(errno));
        close(fd);
        return -1;
    }
    char hbuf[NI_MAXHOST], sbuf[NI_MAXSERV];
    if (getnameinfo((struct sockaddr *)&ss, sl, hbuf, sizeof hbuf, sbuf, sizeof sbuf,
                    NI_NUMERICHOST | NI_NUMERICSERV) == 0)
        o->port = (unsigned)atoi(sbuf);
    return fd;
}

int main(int argc, char **argv)
{
    struct sim_options opt;
    char err[1024];

    if (parse_args(argc, argv, &opt) != 0) return EXIT_USAGE;

    /* SIGINT/SIGTERM are blocked in every thread and taken by sigwait() below. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &sigs, NULL) != 0) {
        fprintf(stderr, "cxone-sim: cannot block signals\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);

    lua_State *L = sim_lua_open(&opt, err, sizeof err);
    if (!L) {
        fprintf(stderr, "cxone-sim: %s\n", err);
        return EXIT_USAGE;
    }
    int family = AF_INET;
    int lfd = open_listener(&opt, &family);
    if (lfd < 0) {
        sim_lua_close(L);
        return EXIT_USAGE;
    }
    if (sim_timer_start() != 0) {
        fprintf(stderr, "cxone-sim: cannot start the timer thread\n");
        close(lfd);
        sim_lua_close(L);
        return 1;
    }
    struct MHD_Daemon *d = sim_http_start(&opt, L, lfd, err, sizeof err);
    if (!d) {
        fprintf(stderr, "cxone-sim: %s\n", err);
        sim_timer_stop();
        close(lfd);
        sim_lua_close(L);
        return EXIT_USAGE;
    }

    /* Tests read this first line to learn where the simulator listens. */
    int v6 = family == AF_INET6;
    printf("%s://%s%s%s:%u\n", opt.tls_cert ? "https" : "http", v6 ? "[" : "", opt.host,
           v6 ? "]" : "", opt.port);
    fflush(stdout);
    if (!opt.quiet) fprintf(stderr, "cxone-sim: listening on port %u\n", opt.port);

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0) {}

    /* Shutdown: stop suspending, release every delayed or hung connection, then stop MHD
     * (which must not find a suspended connection), then write the state one last time. */
    sim_http_begin_shutdown();
    double until = sim_monotonic() + 3.0;
    do {
        sim_timer_release_all();
        if (sim_http_suspended() == 0) break;
        usleep(5000);
    } while (sim_monotonic() < until);
    sim_http_stop(d);                      /* also closes the listening socket */
    sim_timer_stop();
    int rc = sim_lua_flush(L) == 0 ? 0 : 1;
    sim_lua_close(L);
    if (!opt.quiet) fprintf(stderr, "cxone-sim: stopped (signal %d)\n", sig);
    return rc;
}
