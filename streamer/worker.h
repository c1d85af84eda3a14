/* chat-worker: one worker process runs the orchestration pipeline for jobs the streamer's broker hands it
 * over ZeroMQ (see chat_wire.h), one job at a time; worker_main.c supervises several of them. */
#ifndef WORKER_H
#define WORKER_H

#include <signal.h>

#include "chat_config.h"

/* Serves jobs until *stop is set; then finishes the job in flight (cancelling it after
 * cfg->shutdown_grace_s) and returns the process exit code. Creates its threads and sockets itself:
 * call it in a fresh process (after fork, never before). */
int worker_run(const chat_config *cfg, volatile sig_atomic_t *stop);

#endif
