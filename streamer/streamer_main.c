/* chat-streamer: process set-up around the lws side (streamer_ws.c) and the broker (streamer_broker.c).
 *
 * Order matters: SIGTERM/SIGINT are blocked before any thread exists (ZeroMQ's I/O and ZAP threads
 * inherit the mask), so they reach only the service thread, whose poll() they interrupt; the
 * handler just sets a flag the loop reads. RLIMIT_NOFILE is raised to the hard limit because every
 * WebSocket is a descriptor. SIGPIPE is ignored: a peer that vanished is an error code, not a death. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "chat_common.h"
#include "chat_config.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_util.h"
#include "streamer.h"

static void on_signal(int sig)
{
    (void)sig;
    st_request_shutdown();
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    if (rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl))
            chat_log_warn("streamer: cannot raise the open files limit: %s", strerror(errno));
    }
    chat_log_info("streamer: open files limit %llu", (unsigned long long)rl.rlim_cur);
}

int main(int argc, char **argv)
{
    (void)argv;
    chat_log_init("chat-streamer", CHAT_LOG_INFO);
    if (argc > 1) {
        fprintf(stderr, "usage: chat-streamer (configured by the environment, see docs/streamer.md)\n");
        return 2;
    }
    chat_config cfg;
    if (chat_config_load(&cfg)) return 1;
    char err[512];
    raise_nofile();
    if (chat_metrics_init(cfg.metrics_dir, "streamer", err, sizeof err)) chat_log_warn("%s", err);

    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    pthread_sigmask(SIG_BLOCK, &term, NULL);
    chat_handle_stop_signals(on_signal); /* SIGPIPE ignored too */

    int rc = 1;
    if (st_init(&cfg, err, sizeof err)) {
        chat_log_error("streamer: %s", err);
        goto out;
    }
    /* st_run unblocks the signals once every thread exists; one that arrived meanwhile is delivered then. */
    rc = st_run(&term);
out:
    st_cleanup();
    chat_metrics_shutdown();
    return rc;
}
