/* chat-worker: one worker process answers the jobs the streamer's broker hands it over ZeroMQ (see
 * chat_wire.h), up to cfg->worker_slots at a time; worker_main.c supervises the processes. */
#ifndef WORKER_H
#define WORKER_H

#include <signal.h>

#include "chat_config.h"

/* Serves jobs until *stop is set; then finishes the jobs in flight (cancelling them after
 * cfg->shutdown_grace_s) and returns the exit code (0; 1 when it could not start).
 * Creates its own ZeroMQ context, sockets, database connections and threads: the calling thread becomes
 * the main thread (the DEALER to the broker, heartbeats, every event sent); cfg->worker_db_conns stage
 * threads (at most one per slot) run the database halves of the answers, each with its own pipeline and
 * connection; one generator thread runs every generation on one chat_llm_loop. A slot is an answer in
 * flight, not a thread. Call it after fork (never before), once per process. */
int worker_run(const chat_config *cfg, volatile sig_atomic_t *stop);

#endif
