/* The orchestration pipeline that both front ends share: one chat request in, the protocol's events
 * out through a sink the caller supplies.
 *
 *   session (memory) -> progress agent_routing -> classify (+ follow-up resolution from history)
 *   -> progress rag_retrieval -> retrieval shaped by the agent (customer model, fault codes)
 *   -> progress generating -> LLM tokens -> complete (metadata) -> turn stored
 *
 * Exactly one terminal event is emitted per run: complete (finish_reason stop, length, cancelled or
 * error with partial text) or error (code + client-safe message). A chat_pipeline owns one database
 * connection (or borrows one from a chat_pipeline_pool) and one LLM client: use it from one thread at a
 * time; create one per worker thread. */
#ifndef CHAT_PIPELINE_H
#define CHAT_PIPELINE_H

#include <stdatomic.h>
#include <stddef.h>

#include "chat_config.h"
#include "chat_db.h"
#include "chat_jwt.h"

typedef struct chat_request {
    const char *message;     /* required, non-empty (front ends validate first) */
    const char *session_id;  /* NULL or empty: a new session */
    const char *customer_id; /* NULL or empty: none */
    const chat_user *user;   /* authenticated user; required */
    const char *request_id;  /* idempotency key for storing the turn; NULL: one is generated */
} chat_request;

typedef struct chat_sink {
    void *ud;
    /* step: starting | agent_routing | rag_retrieval | generating; message: human text */
    void (*progress)(void *ud, const char *step, const char *message);
    /* New text. Return non-zero to stop generation (the client went away). */
    int (*token)(void *ud, const char *text, size_t len);
    /* metadata_json: {"agent","confidence","context":{"sources":[...]},"finish_reason","usage":{...},
     * "timings":{...}} */
    void (*complete)(void *ud, const char *response, const char *session_id, const char *metadata_json);
    /* code: a CHAT_CODE_* string; message: client-safe */
    void (*error)(void *ud, const char *code, const char *message);
} chat_sink;

typedef struct chat_pipeline chat_pipeline;

/* Database connections shared by the pipelines of one process (the worker's slots). A pooled pipeline
 * holds a connection only while it reads or writes, not while the model generates: a real model streams
 * for seconds, so many slots can stream with a few connections. Thread-safe; it must outlive every
 * pipeline that uses it. NULL on out of memory. */
typedef struct chat_pipeline_pool chat_pipeline_pool;
chat_pipeline_pool *chat_pipeline_pool_new(const chat_config *cfg, int connections);
void chat_pipeline_pool_free(chat_pipeline_pool *pool);

/* Opens nothing yet (the database connects on first use, so a process can start while the database is
 * down). NULL with err on a bad configuration (e.g. unknown LLM provider). */
chat_pipeline *chat_pipeline_new(const chat_config *cfg, char *err, size_t errlen);
/* Same, borrowing its connection from pool for each database stage of a run (blocking while all are
 * in use). pool NULL: like chat_pipeline_new. */
chat_pipeline *chat_pipeline_new_pooled(const chat_config *cfg, chat_pipeline_pool *pool, char *err, size_t errlen);
void chat_pipeline_free(chat_pipeline *p);

/* Runs one request to its terminal event. cancel (may be NULL) may be set from any thread.
 * Returns 0 when complete was emitted, or the negative code behind the error event. */
int chat_pipeline_run(chat_pipeline *p, const chat_request *req, const chat_sink *sink, const atomic_int *cancel);

/* The pipeline's database connection (for /health and tools); NULL for a pooled pipeline outside a run. */
chat_db *chat_pipeline_db(chat_pipeline *p);

#endif
