/* chat-worker: one worker process runs the orchestration pipeline for jobs the streamer's broker hands it
 * over ZeroMQ (see chat_wire.h), one job at a time; worker_main.c runs several per process (slots) and
 * supervises the processes. */
#ifndef WORKER_H
#define WORKER_H

#include <signal.h>

#include "chat_config.h"
#include "chat_pipeline.h"

/* Serves jobs until *stop is set; then finishes the job in flight (cancelling it after
 * cfg->shutdown_grace_s) and returns the exit code. Creates its own ZeroMQ context, threads and
 * sockets, and touches no process-wide state: call it after fork (never before), once per thread for
 * several slots in one process. pool (may be NULL: the worker opens its own connection) is the
 * process's shared database connections; it must outlive the call. */
int worker_run(const chat_config *cfg, chat_pipeline_pool *pool, volatile sig_atomic_t *stop);

#endif
