/* chat-worker: one worker process runs the orchestration pipeline for jobs the streamer's broker hands it
 * over ZeroMQ (see chat_wire.h), cfg->worker_slots at a time; worker_main.c supervises the processes. */
#ifndef WORKER_H
#define WORKER_H

#include <signal.h>

#include "chat_config.h"

/* Serves jobs until *stop is set; then finishes the jobs in flight (cancelling them after
 * cfg->shutdown_grace_s) and returns the exit code. Creates its own ZeroMQ context, threads (one per
 * slot), sockets and database connections: call it after fork (never before), once per process. */
int worker_run(const chat_config *cfg, volatile sig_atomic_t *stop);

#endif
