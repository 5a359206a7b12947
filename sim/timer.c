/* timer.c: a helper thread that resumes suspended connections when their delay ends or, for
 * hung ones, when the peer hangs up; the MHD polling thread itself never sleeps. */
#include "sim.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

struct sim_pending {
    struct sim_pending *prev, *next;
    struct MHD_Connection *conn;
    double deadline;      /* monotonic seconds; < 0 for a hang (no deadline) */
    int fd;               /* socket watched for hang-up (hangs only), else -1 */
    int in_list;
    int verdict;          /* SIM_PENDING_* */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct sim_pending *head;
static int npending;
static int wake_pipe[2] = { -1, -1 };
static pthread_t thread;
static int running, stopping;

static void unlink_locked(struct sim_pending *p)
{
    if (!p->in_list) return;
    if (p->prev) p->prev->next = p->next; else head = p->next;
    if (p->next) p->next->prev = p->prev;
    p->prev = p->next = NULL;
    p->in_list = 0;
    npending--;
}

static void wake(void)
{
    char c = 1;
    ssize_t r;
    do { r = write(wake_pipe[1], &c, 1); } while (r < 0 && errno == EINTR);
    /* EAGAIN means a wake-up is already pending: fine. */
}

/* Ends an entry with a verdict and lets MHD call the handler again. Lock held. */
static void fire_locked(struct sim_pending *p, int verdict)
{
    p->verdict = verdict;
    unlink_locked(p);
    MHD_resume_connection(p->conn);
}

static void *timer_main(void *arg)
{
    (void)arg;
    struct pollfd *fds = NULL;
    size_t cap = 0;
    for (;;) {
        pthread_mutex_lock(&mu);
        if (stopping) {
            pthread_mutex_unlock(&mu);
            break;
        }
        size_t need = (size_t)npending + 1;
        if (need > cap) {
            struct pollfd *nf = realloc(fds, need * sizeof *nf);
            if (nf) {
                fds = nf;
                cap = need;
            }
        }
        /* Slot 0 is the wake-up pipe; the rest are sockets of hung connections. */
        size_t n = 0;
        double now = sim_monotonic(), next = -1;
        if (cap > 0) {
            fds[n].fd = wake_pipe[0];
            fds[n].events = POLLIN;
            n++;
        }
        for (struct sim_pending *p = head; p; p = p->next) {
            if (p->deadline >= 0 && (next < 0 || p->deadline < next)) next = p->deadline;
            if (p->fd >= 0 && n < cap) {
                fds[n].fd = p->fd;
                fds[n].events = POLLRDHUP;
                n++;
            }
        }
        pthread_mutex_unlock(&mu);

        int timeout = -1;
        if (next >= 0) {
            double ms = (next - now) * 1000.0;
            timeout = ms <= 0 ? 0 : (int)ms + 1;
        }
        if (n == 0) {                      /* no memory for the poll set: retry shortly */
            usleep(10000);
            continue;
        }
        int rc = poll(fds, n, timeout);
        if (rc < 0 && errno != EINTR) usleep(1000);

        pthread_mutex_lock(&mu);
        if (rc > 0 && (fds[0].revents & POLLIN)) {
            char buf[64];
            while (read(wake_pipe[0], buf, sizeof buf) > 0) {}
        }
        /* Hung connections whose peer went away: drop them. */
        for (size_t i = 1; rc > 0 && i < n; i++) {
            if (!(fds[i].revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))) continue;
            for (struct sim_pending *p = head; p; p = p->next) {
                if (p->fd == fds[i].fd) {
                    fire_locked(p, SIM_PENDING_DROP);
                    break;
                }
            }
        }
        /* Delays that are over. */
        now = sim_monotonic();
        struct sim_pending *p = head;
        while (p) {
            struct sim_pending *nx = p->next;
            if (p->deadline >= 0 && p->deadline <= now) fire_locked(p, SIM_PENDING_FIRED);
            p = nx;
        }
        pthread_mutex_unlock(&mu);
    }
    free(fds);
    return NULL;
}

int sim_timer_start(void)
{
    if (pipe2(wake_pipe, O_NONBLOCK | O_CLOEXEC) != 0) return -1;
    if (pthread_create(&thread, NULL, timer_main, NULL) != 0) {
        close(wake_pipe[0]);
        close(wake_pipe[1]);
        wake_pipe[0] = wake_pipe[1] = -1;
        return -1;
    }
    running = 1;
    return 0;
}

void sim_timer_stop(void)
{
    if (!running) return;
    pthread_mutex_lock(&mu);
    stopping = 1;
    pthread_mutex_unlock(&mu);
    wake();
    pthread_join(thread, NULL);
    running = 0;
    close(wake_pipe[0]);
    close(wake_pipe[1]);
    wake_pipe[0] = wake_pipe[1] = -1;
}

struct sim_pending *sim_timer_new(void)
{
    return calloc(1, sizeof(struct sim_pending));
}

void sim_timer_arm(struct sim_pending *p, struct MHD_Connection *conn, double delay_ms, int fd)
{
    p->conn = conn;
    p->deadline = delay_ms < 0 ? -1 : sim_monotonic() + delay_ms / 1000.0;
    p->fd = delay_ms < 0 ? fd : -1;
    pthread_mutex_lock(&mu);
    p->next = head;
    if (head) head->prev = p;
    head = p;
    p->in_list = 1;
    npending++;
    pthread_mutex_unlock(&mu);
    wake();
}

int sim_timer_finish(struct sim_pending *p)
{
    pthread_mutex_lock(&mu);
    unlink_locked(p);
    int v = p->verdict;
    pthread_mutex_unlock(&mu);
    free(p);
    return v;
}

int sim_timer_release_all(void)
{
    int n = 0;
    pthread_mutex_lock(&mu);
    while (head) {
        fire_locked(head, SIM_PENDING_DROP);
        n++;
    }
    pthread_mutex_unlock(&mu);
    return n;
}
