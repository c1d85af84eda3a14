/* chat-worker: a small supervisor that forks CHAT_WORKERS worker processes (worker.c) and restarts any
 * that die, or, with --single, one worker in the foreground.
 *
 * Design choices:
 * - Processes for isolation, slots for concurrency: a crash, a leak or a stuck LLM call takes down one
 *   process, which the broker notices by its heartbeats and the supervisor replaces; within a process,
 *   CHAT_WORKER_SLOTS answers stream at once (worker.c: a few stage threads for the database, one event
 *   loop for every generation). A model streaming 30 tokens/s keeps a slot busy for seconds at almost
 *   no CPU: slots, not processes, give concurrency.
 * - The supervisor forks before creating any thread or ZeroMQ context, so children start clean. Each
 *   child asks for SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so no orphan keeps serving.
 * - Restarts back off (100 ms doubling to 5 s) while children die young, so a broken configuration does
 *   not fork in a tight loop; a child that lived 10 s resets its back-off.
 * - SIGTERM/SIGINT: forwarded to the children, which finish their job in flight within
 *   CHAT_SHUTDOWN_GRACE_S; stragglers get SIGKILL after grace + 10 s. Exit 0.
 * - SIGHUP: forwarded to the children, whose pipelines reload the agents' prompts and model settings
 *   (chat_agent_cfg.h) before their next answer. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat_agent_cfg.h"
#include "chat_common.h"
#include "chat_config.h"
#include "chat_curve.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_util.h"
#include "worker.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
#define HEALTHY_AFTER_MS 10000
#define KILL_AFTER_GRACE_MS 10000

static volatile sig_atomic_t g_stop;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void install_signals(void)
{
    chat_handle_stop_signals(on_signal);
    chat_agent_cfg_install_sighup();
}

typedef struct child {
    pid_t pid; /* 0 = not running */
    int64_t started_ms;
    int64_t restart_at_ms;
    int backoff_ms;
} child;

/* One worker process, with a metrics file of its own. */
static int run_one(const chat_config *cfg)
{
    char err[256];
    if (chat_metrics_init(cfg->metrics_dir, "worker", err, sizeof err)) chat_log_warn("%s", err);
    int rc = worker_run(cfg, &g_stop);
    chat_metrics_shutdown();
    return rc;
}

static pid_t spawn(const chat_config *cfg, pid_t parent)
{
    pid_t pid = fork();
    if (pid != 0) return pid;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(0); /* the supervisor died before prctl */
    g_stop = 0;
    install_signals();
    _exit(run_one(cfg));
}

static int supervise(const chat_config *cfg, int n)
{
    child *kids = calloc((size_t)n, sizeof *kids);
    if (!kids) return 1;
    pid_t self = getpid();
    for (int i = 0; i < n; i++)
        kids[i].backoff_ms = BACKOFF_MIN_MS;
    chat_log_info("supervisor: starting %d workers", n);
    unsigned reloads = chat_agent_cfg_reload_requests();
    while (!g_stop) {
        if (reloads != chat_agent_cfg_reload_requests()) { /* SIGHUP: the children reload */
            reloads = chat_agent_cfg_reload_requests();
            for (int i = 0; i < n; i++)
                if (kids[i].pid) kill(kids[i].pid, SIGHUP);
        }
        int64_t now = chat_now_ms();
        for (int i = 0; i < n; i++) {
            if (kids[i].pid || now < kids[i].restart_at_ms) continue;
            pid_t pid = spawn(cfg, self);
            if (pid < 0) {
                chat_log_error("supervisor: fork: %s", strerror(errno));
                kids[i].restart_at_ms = now + BACKOFF_MAX_MS;
                continue;
            }
            kids[i].pid = pid;
            kids[i].started_ms = now;
        }
        int status;
        pid_t pid;
        while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
            for (int i = 0; i < n; i++) {
                if (kids[i].pid != pid) continue;
                now = chat_now_ms();
                int64_t lived = now - kids[i].started_ms;
                if (WIFSIGNALED(status))
                    chat_log_warn("supervisor: worker pid %d killed by signal %d after %lld ms", (int)pid,
                                  WTERMSIG(status), (long long)lived);
                else
                    chat_log_warn("supervisor: worker pid %d exited with %d after %lld ms", (int)pid,
                                  WEXITSTATUS(status), (long long)lived);
                if (lived >= HEALTHY_AFTER_MS) kids[i].backoff_ms = BACKOFF_MIN_MS;
                kids[i].restart_at_ms = now + kids[i].backoff_ms;
                kids[i].backoff_ms = kids[i].backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : kids[i].backoff_ms * 2;
                kids[i].pid = 0;
            }
        }
        chat_sleep_ms(50);
    }

    chat_log_info("supervisor: stopping workers");
    for (int i = 0; i < n; i++)
        if (kids[i].pid) kill(kids[i].pid, SIGTERM);
    int64_t deadline = chat_now_ms() + (int64_t)cfg->shutdown_grace_s * 1000 + KILL_AFTER_GRACE_MS;
    for (;;) {
        int left = 0;
        for (int i = 0; i < n; i++) {
            if (!kids[i].pid) continue;
            int status;
            pid_t r = waitpid(kids[i].pid, &status, WNOHANG);
            if (r == kids[i].pid || (r < 0 && errno == ECHILD))
                kids[i].pid = 0;
            else
                left++;
        }
        if (!left) break;
        if (chat_now_ms() >= deadline) {
            chat_log_warn("supervisor: %d workers did not stop, killing them", left);
            for (int i = 0; i < n; i++)
                if (kids[i].pid) kill(kids[i].pid, SIGKILL), waitpid(kids[i].pid, NULL, 0);
            break;
        }
        chat_sleep_ms(20);
    }
    free(kids);
    chat_log_info("supervisor: stopped");
    return 0;
}

int main(int argc, char **argv)
{
    bool single = false;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--single")) {
            single = true;
        } else {
            fprintf(stderr, "usage: chat-worker [--single]   (CHAT_WORKERS processes, or one with --single)\n");
            return 2;
        }
    }
    chat_log_init(single ? "chat-worker" : "chat-workers", CHAT_LOG_INFO);
    chat_config cfg;
    if (chat_config_load(&cfg)) return 1;
    if (chat_curve_client_check(cfg.zmq_endpoint)) return 1; /* refuse to start, not fork failing children */
    install_signals();
    if (single) return run_one(&cfg);
    if (cfg.workers <= 0) {
        chat_log_warn("supervisor: CHAT_WORKERS is 0, nothing to run");
        return 0;
    }
    return supervise(&cfg, cfg.workers);
}
