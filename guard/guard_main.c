/* chat-guard: bounds the time a client may take to send its request through the front door (slowloris),
 * the one limit lighttpd lacks (guard_track.h says the rule and what it leaves alone).
 *
 * Once a second it lists the front door's connections (guard_diag.h: the kernel's counters, nothing
 * read from lighttpd), and shuts down those guard_track finds trickling, through descriptors it takes
 * from lighttpd (guard_fd.h). It is beside lighttpd, not in front of it, so the token path gains no hop;
 * when it is not running, lighttpd serves exactly as before, with only its per-read limit.
 *
 * Settings (environment): CHAT_PORT (8000), the front door's port; CHAT_HEAD_TIMEOUT_S (20; 0 turns
 * the guard off), the bound. The holders of the port's listening socket are found in /proc, again
 * whenever the listener changes (lighttpd restarted). SIGTERM/SIGINT: exit 0. SIGHUP: reopen the log. */
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "chat_config.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_util.h"
#include "guard_diag.h"
#include "guard_fd.h"
#include "guard_track.h"

#define GUARD_POLL_MS 1000
#define GUARD_MAX_HOLDERS 64 /* lighttpd's master and its server.max-worker processes */
#define GUARD_LOG_PER_POLL 8 /* lines naming a client; an attack of hundreds gets one more line, not hundreds */

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

typedef struct guard {
    uint16_t port;
    int timeout_s;
    guard_track *track;
    uint64_t listener; /* inode of the listening socket the holders were found for */
    pid_t holders[GUARD_MAX_HOLDERS];
    size_t nholders;
} guard;

/* The port's sockets in states (guard_diag_list), with a log line when the kernel refuses. */
static int list_port(const guard *g, unsigned states, guard_sock **out, size_t *n)
{
    char err[256];
    int rc = guard_diag_list(g->port, states, out, n, err, sizeof err);
    if (rc) chat_log_warn("listing the sockets of port %u: %s", g->port, err);
    return rc;
}

/* The processes holding the port's listening socket: found again when the listener changed. */
static void find_holders(guard *g)
{
    guard_sock *l = NULL;
    size_t n = 0;
    if (list_port(g, GUARD_DIAG_LISTEN, &l, &n)) return;
    if (n && l[0].inode != g->listener) {
        g->listener = l[0].inode;
        g->nholders = guard_fd_holders(g->listener, g->holders, GUARD_MAX_HOLDERS);
        chat_log_info("port %u is held by %zu process%s (first pid %d)", g->port, g->nholders,
                      g->nholders == 1 ? "" : "es", g->nholders ? (int)g->holders[0] : 0);
    }
    free(l);
}

static bool was_holder(const pid_t *pids, size_t n, pid_t pid)
{
    for (size_t i = 0; i < n; i++)
        if (pids[i] == pid) return true;
    return false;
}

/* Shuts the n sockets inodes in each holder not in skip (nskip of them): how many were shut. */
static int shut_in_holders(guard *g, const uint64_t *inodes, size_t n, const pid_t *skip, size_t nskip, char *err,
                           size_t errlen)
{
    int shut = 0;
    for (size_t h = 0; h < g->nholders; h++) {
        if (was_holder(skip, nskip, g->holders[h])) continue;
        int rc = guard_fd_shutdown(g->holders[h], inodes, n, err, errlen);
        if (rc > 0) shut += rc;
        if (rc < 0) g->listener = 0; /* a holder gone or out of reach: look again next time */
    }
    return shut;
}

/* Shuts the victims' sockets in whichever holder has them; logs each by peer address (no request data).
 * The listener's inode outlives its holders' pids: lighttpd forks its server.max-worker processes after
 * it binds (the guard may have looked before they existed) and replaces a worker that dies. So when a
 * victim is in none of the known holders, the holders are found again and only the new ones are tried
 * (a socket shut twice would be counted twice). */
static void close_victims(guard *g, const guard_sock *socks, const size_t *victims, int nv)
{
    uint64_t inodes[nv];
    for (int i = 0; i < nv; i++)
        inodes[i] = socks[victims[i]].inode;
    find_holders(g);
    char err[256] = "";
    int shut = shut_in_holders(g, inodes, (size_t)nv, NULL, 0, err, sizeof err);
    if (shut < nv) {
        pid_t tried[GUARD_MAX_HOLDERS];
        size_t ntried = g->nholders;
        memcpy(tried, g->holders, ntried * sizeof *tried);
        g->listener = 0;
        find_holders(g);
        shut += shut_in_holders(g, inodes, (size_t)nv, tried, ntried, err, sizeof err);
    }
    for (int i = 0; i < nv && i < GUARD_LOG_PER_POLL; i++)
        chat_log_warn("closing the connection from %s: its request was still arriving %d s after the server last "
                      "answered (CHAT_HEAD_TIMEOUT_S)",
                      socks[victims[i]].peer, g->timeout_s);
    if (nv > GUARD_LOG_PER_POLL)
        chat_log_warn("closing %d more trickling connections (CHAT_HEAD_TIMEOUT_S)", nv - GUARD_LOG_PER_POLL);
    chat_metric_inc(CHAT_METRIC_SLOW_REQUESTS_CLOSED, 0, (uint64_t)shut);
    if (shut < nv)
        chat_log_error("%d of %d trickling connections could not be closed: %s", nv - shut, nv,
                       err[0] ? err : "no process holding the port has them");
}

static void poll_once(guard *g)
{
    guard_sock *socks = NULL;
    size_t n = 0;
    if (list_port(g, GUARD_DIAG_ESTABLISHED, &socks, &n)) return;
    size_t *victims = n ? malloc(n * sizeof *victims) : NULL;
    int nv = (n && !victims) ? 0 : guard_track_update(g->track, socks, n, chat_now_ms(), victims);
    if (nv > 0) close_victims(g, socks, victims, nv);
    free(victims);
    free(socks);
}

int main(void)
{
    chat_log_init("chat-guard", CHAT_LOG_INFO);
    chat_handle_stop_signals(on_signal);
    guard g = {.port = (uint16_t)chat_config_env_int("CHAT_PORT", 8000, 1, 65535),
               .timeout_s = chat_config_env_int("CHAT_HEAD_TIMEOUT_S", 20, 0, 3600)};
    char err[256];
    const char *metrics = getenv("CHAT_METRICS_DIR");
    if (chat_metrics_init(metrics, "guard", err, sizeof err)) chat_log_warn("%s", err);
    if (g.timeout_s == 0) { /* idle rather than exit, which a supervisor would take for a crash */
        chat_log_info("CHAT_HEAD_TIMEOUT_S=0: no bound on a request's time; waiting to be stopped");
        while (!g_stop)
            chat_sleep_ms(GUARD_POLL_MS);
        return 0;
    }
    g.track = guard_track_new((int64_t)g.timeout_s * 1000);
    if (!g.track) return 1;
    chat_log_info("guarding port %u: a request must arrive within %d s (CHAT_HEAD_TIMEOUT_S)", g.port, g.timeout_s);
    find_holders(&g);
    while (!g_stop) {
        poll_once(&g);
        chat_sleep_ms(GUARD_POLL_MS);
    }
    guard_track_free(g.track);
    chat_metrics_shutdown();
    chat_log_info("stopped");
    return 0;
}
