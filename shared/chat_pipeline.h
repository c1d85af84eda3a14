/* The orchestration pipeline that both front ends share: one chat request in, the protocol's events
 * out through a sink the caller supplies.
 *
 *   progress starting -> customer access check -> session and history (memory)
 *   -> progress agent_routing -> classify (+ follow-up resolution from history) -> model in question
 *   -> progress rag_retrieval -> retrieval shaped by the agent (customer model, fault codes)
 *   -> progress generating -> LLM tokens -> turn stored -> complete (metadata)
 *
 * Exactly one terminal event is emitted per run: complete (finish_reason stop, length, cancelled or
 * error with partial text) or error (code + client-safe message). The turn is kept before complete:
 * stored, or, when the database cannot take it, spooled (chat_spool.h); complete's metadata says which
 * ("stored": true or false). A turn that could be neither ends with the error NOT_STORED instead. A chat_pipeline owns one database
 * connection and one LLM client: use it from one thread at a time; create one per thread. */
#ifndef CHAT_PIPELINE_H
#define CHAT_PIPELINE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "chat_db.h"
#include "chat_jwt.h"
#include "chat_kb.h"
#include "chat_llm.h"
#include "chat_spool.h"

typedef struct chat_request {
    const char *message;     /* required, non-empty (front ends validate first) */
    const char *session_id;  /* NULL or empty: a new session */
    const char *customer_id; /* NULL or empty: none */
    const chat_user *user;   /* authenticated user; required */
    const char *request_id;  /* idempotency key for storing the turn; NULL: one is generated */
    int64_t accepted_us;     /* when the caller accepted it (chat_now_us); 0: now. Timings count from it */
    bool session_new;        /* session_id is a fresh id the caller chose (chat_memory_new_session) */
} chat_request;

typedef struct chat_sink {
    void *ud;
    /* step: a chat_proto_step's name (chat_proto.h's step table); message: human text */
    void (*progress)(void *ud, const char *step, const char *message);
    /* New text. Return non-zero to stop generation (the client went away). */
    int (*token)(void *ud, const char *text, size_t len);
    /* metadata_json: {"agent","confidence","context":{"sources":[...],"passages","model"?},"finish_reason",
     * "usage":{...},"timings":{...},"provider","attempts":[{"provider","model","outcome","ms"}],"stored"}
     * (the history keeps it without "stored") */
    void (*complete)(void *ud, const char *response, const char *session_id, const char *metadata_json);
    /* code: a CHAT_CODE_* string; message: client-safe */
    void (*error)(void *ud, const char *code, const char *message);
} chat_sink;

typedef struct chat_pipeline chat_pipeline;

/* Opens nothing yet (the database connects on first use, so a process can start while the database is
 * down). NULL with err on a bad configuration (e.g. unknown LLM provider). */
chat_pipeline *chat_pipeline_new(const chat_config *cfg, char *err, size_t errlen);
void chat_pipeline_free(chat_pipeline *p);

/* Runs one request to its terminal event. cancel (may be NULL) may be set from any thread.
 * Returns 0 when complete was emitted, or the negative code behind the error event (CHAT_EDB for
 * NOT_STORED). */
int chat_pipeline_run(chat_pipeline *p, const chat_request *req, const chat_sink *sink, const atomic_int *cancel);

/* The same run in two halves around the model, for callers that generate elsewhere (the worker runs
 * many generations on one chat_llm_loop thread while a few stage threads do the database halves).
 *
 * chat_pipeline_begin: the first half, up to the prompt (customer, session and history, routing,
 * retrieval), with its progress events. Returns the turn, ready to generate; or NULL after it emitted the
 * terminal event itself (an error, or complete for a request cancelled before generation), with *rc as
 * chat_pipeline_run would return it. req and sink->ud must stay valid until chat_pipeline_end; the sink
 * is copied. The turn keeps nothing of the pipeline: the pipeline may serve other requests before the
 * turn ends, and the turn may end on another pipeline. */
typedef struct chat_run chat_run;
chat_run *chat_pipeline_begin(chat_pipeline *p, const chat_request *req, const chat_sink *sink,
                              const atomic_int *cancel, int *rc);
/* The request to give the model; valid until the turn ends. */
const chat_llm_request *chat_run_llm_request(const chat_run *t);
/* The chat_llm_token_fn to give the model, with the turn as its ud: it keeps the answer (bounded) and
 * passes each piece to the sink's token callback. Runs on whatever thread generates. */
int chat_run_token(void *run, const char *text, size_t len);
/* The second half, on any thread with a pipeline of the same configuration (not necessarily the one that
 * began the turn): gen_rc, res and err as the model returned them; keeps the turn (stored or spooled),
 * emits complete (or error: the model failed before any text, or NOT_STORED) and frees the turn. Returns
 * as chat_pipeline_run. */
int chat_pipeline_end(chat_pipeline *p, chat_run *t, int gen_rc, const chat_llm_result *res, const char *err);
/* The same for runs generated elsewhere in a group: each run's outcome recorded first
 * (chat_run_set_outcome, or chat_pipeline_generate), then their turns stored together, up to
 * CHAT_MEMORY_BATCH_MAX per statement (one by one when a statement fails, or for a new session), then
 * each run's terminal event, in order. Frees the runs. A worker ending several answers at once costs
 * MariaDB one INSERT instead of several. */
void chat_run_set_outcome(chat_run *t, int gen_rc, const chat_llm_result *res, const char *err);
void chat_pipeline_end_many(chat_pipeline *p, chat_run *const *runs, size_t n);
/* The model, here, with the pipeline's own client (chat_llm_generate); records the outcome. */
void chat_pipeline_generate(chat_pipeline *p, chat_run *t);
/* Frees a turn that will never end (the process is going away); emits nothing. Accepts NULL. */
void chat_run_abandon(chat_run *t);

/* Makes p spool the turns the database cannot take when their answer ends, in spool (one per process,
 * shared by its pipelines, chat_spool_open); without one such a turn ends with NOT_STORED. spool must
 * outlive p. Before p's first run. */
void chat_pipeline_use_spool(chat_pipeline *p, chat_spool *spool);

/* The pipeline's database connection (for /health and tools). */
chat_db *chat_pipeline_db(chat_pipeline *p);

/* Makes p use stats, the knowledge base's word statistics shared by the caller's pipelines (one
 * chat_kb_stats per process: the word sample is read once, not once per connection), instead of its own.
 * stats must outlive p. Before p's first run. */
void chat_pipeline_share_kb_stats(chat_pipeline *p, chat_kb_stats *stats);

#endif
