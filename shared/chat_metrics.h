/* Metrics in the Prometheus text format, summed over every process of the stack.
 *
 * Design: the stack is many processes (streamers, worker processes, FastCGI responders), and a scrape
 * must see all of them at once. Each process keeps its figures in a file-backed shared mapping of its own
 * ($CHAT_VAR/run/metrics/<kind>-<pid>.metrics), written with relaxed atomics (no lock, no syscall, a few
 * nanoseconds per update); whoever answers /metrics maps every file of the folder and sums them, the
 * way prometheus_client's multiprocess mode does. A counter of a process that has exited still counts
 * (totals never go backwards while the stack runs; deploy/stack.sh clears the folder at start); its
 * gauges do not. Without a folder (tests, tools) the figures live in private memory and a render shows
 * this process alone.
 *
 * The metrics are one table, CHAT_METRICS below: names and shapes follow what LLM-serving operators know
 * from vLLM and LiteLLM (time to first token, inter-token latency, end-to-end latency, tokens, answers by
 * finish_reason), in seconds, with at most one label each whose values come from a fixed set (so the
 * layout is the same in every process and cardinality is bounded): a value outside the set counts as
 * "other".
 *
 * Thread context: every update function may be called from any thread at any time, also before
 * chat_metrics_init (then it does nothing). */
#ifndef CHAT_METRICS_H
#define CHAT_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "chat_util.h"

/* Label dimensions: the label's name and the function that lists its values (chat_metrics.c: the agent
 * table, the provider table, the protocol's error table, and two short lists of its own). A name with a
 * comma is that many labels, and each value has as many comma-separated parts (ATTEMPT: "openai,ok"). */
#define CHAT_METRIC_LABELS(X)                                                                                          \
    X(NONE, NULL, NULL)                                                                                               \
    X(AGENT, "agent", agent_at)                                                                                       \
    X(PROVIDER, "provider", provider_at)                                                                              \
    X(FINISH, "finish_reason", finish_at)                                                                             \
    X(CODE, "code", code_at)                                                                                          \
    X(STATUS, "status", status_at)                                                                                    \
    X(ATTEMPT, "provider,outcome", attempt_at)

/* Kinds: a counter only grows; a gauge is summed over live processes (SUM) or the largest live value
 * is shown (MAX: a figure every streamer reports about the same shared thing); a histogram has the
 * buckets of CHAT_METRIC_BUCKETS (seconds). */
#define CHAT_METRICS(X)                                                                                                \
    X(TTFT, HISTOGRAM, AGENT, "chat_time_to_first_token_seconds",                                                     \
      "Time from a message's arrival at the streamer to its first token leaving it")                                 \
    X(ITL, HISTOGRAM, NONE, "chat_inter_token_latency_seconds", "Time between two token frames of one answer")      \
    X(E2E, HISTOGRAM, AGENT, "chat_e2e_request_latency_seconds",                                                      \
      "Time from a message's arrival to its complete or error frame")                                                 \
    X(RETRIEVAL, HISTOGRAM, AGENT, "chat_retrieval_seconds", "Knowledge-base retrieval time of a turn")              \
    X(ANSWERS, COUNTER, FINISH, "chat_answers_total", "Answers ended, by finish_reason")                             \
    X(ERRORS, COUNTER, CODE, "chat_errors_total", "Error events and responses sent to clients, by code")             \
    X(PROMPT_TOKENS, COUNTER, PROVIDER, "chat_prompt_tokens_total", "Prompt tokens, as the provider counted them")   \
    X(GENERATION_TOKENS, COUNTER, PROVIDER, "chat_generation_tokens_total", "Generated tokens")                      \
    X(LLM_ATTEMPTS, COUNTER, ATTEMPT, "chat_llm_attempts_total",                                                      \
      "Attempts at an answer, by provider and outcome (retries and fallbacks included)")                             \
    X(REST_REQUESTS, COUNTER, STATUS, "chat_rest_requests_total", "REST requests answered, by HTTP status")         \
    X(WS_CONNECTIONS, GAUGE_SUM, NONE, "chat_websocket_connections", "Open WebSocket connections")                  \
    X(IN_FLIGHT, GAUGE_SUM, NONE, "chat_answers_in_flight", "Answers being generated or streamed")                  \
    X(QUEUED, GAUGE_SUM, NONE, "chat_jobs_queued", "Messages waiting for a free worker slot")                       \
    X(WORKERS, GAUGE_MAX, NONE, "chat_workers_live", "Live worker processes, as a streamer sees them")              \
    X(WORKER_SLOTS, GAUGE_MAX, NONE, "chat_worker_slots", "Answer slots of the live workers")                       \
    X(WORKER_SLOTS_BUSY, GAUGE_MAX, NONE, "chat_worker_slots_busy", "Worker slots with an answer in flight")        \
    X(DB_CONNECTIONS, GAUGE_SUM, NONE, "chat_db_connections", "Open database connections")                          \
    X(DB_BUSY, GAUGE_SUM, NONE, "chat_db_connections_busy", "Database connections running a statement")                                                                                     \
    X(DB_REPLICA_LAG, GAUGE_MAX, NONE, "chat_db_replica_lag_seconds",                                                 \
      "Read replica's lag as last checked; -1 when down or not replicating (its reads go to the primary)")                                                                                 \
    X(SLOW_REQUESTS_CLOSED, COUNTER, NONE, "chat_slow_requests_closed_total",                                         \
      "Front-door connections chat-guard closed for sending a request longer than CHAT_HEAD_TIMEOUT_S")

#define CHAT_METRIC_BUCKETS 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0
#define CHAT_METRIC_NBUCKETS 15 /* the finite buckets above; +Inf comes on top */

typedef enum {
#define X(id, kind, label, name, help) CHAT_METRIC_##id,
    CHAT_METRICS(X)
#undef X
        CHAT_METRIC_COUNT
} chat_metric_id;

typedef enum {
#define X(id, name, values) CHAT_METRIC_LABEL_##id,
    CHAT_METRIC_LABELS(X)
#undef X
        CHAT_METRIC_LABEL_COUNT
} chat_metric_label_dim;

/* Sets up this process's figures: under dir (created 0700 if missing) as <kind>-<pid>.metrics, or in
 * private memory when dir is NULL or "". Call once, before the process starts threads; a second call
 * replaces the first (a forked child calls it again to get a file of its own). 0, or a negative code with
 * err (the process then runs without metrics: updates do nothing). */
int chat_metrics_init(const char *dir, const char *kind, char *err, size_t errlen);
/* Zeroes this process's gauges (its counters stay, see above) and unmaps. Accepts being called twice. */
void chat_metrics_shutdown(void);

/* The index of value among the label's values ("other" when it is none of them, or NULL). */
unsigned chat_metric_label(chat_metric_label_dim dim, const char *value);

void chat_metric_inc(chat_metric_id m, unsigned label, uint64_t n);   /* counters */
void chat_metric_gauge_add(chat_metric_id m, unsigned label, int64_t delta);
void chat_metric_gauge_set(chat_metric_id m, unsigned label, int64_t value);
void chat_metric_observe(chat_metric_id m, unsigned label, double seconds); /* histograms */

/* Appends the Prometheus text exposition (version 0.0.4) of every process's figures under dir (this
 * process's alone when dir is NULL or "") to out. Files that are not metrics files of this build are
 * skipped. 0 or CHAT_ENOMEM. Any thread. */
int chat_metrics_render(const char *dir, chat_buf *out);

#endif
