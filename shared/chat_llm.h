/* LLM providers behind one interface: "openai" (any OpenAI-compatible Chat Completions endpoint,
 * streamed over SSE with libcurl), "extractive" (grounded answers composed from retrieved passages, no
 * network) and "replay" (a recorded answer played back, for tests). The pipeline builds one
 * chat_llm_request and does not care which provider runs it; a provider is a struct of functions in a
 * table (chat_llm_provider.h), so adding one touches no caller.
 *
 * A chat_llm is a chain of providers: cfg->llm_provider, then the fallbacks of CHAT_LLM_FALLBACK
 * (cfg->llm_fallback: another OpenAI-compatible endpoint, the offline extractive provider...). Before
 * the first token, a transient failure (chat_llm_outcome's retry column: a rate limit, an unavailable
 * server) is retried on the same provider after a back-off (cfg->llm_max_attempts attempts, waits from
 * cfg->llm_retry_backoff_ms doubling up to cfg->llm_retry_max_ms, Retry-After honoured), and any other
 * failure, or the last attempt's, moves to the next provider of the chain. After the first token nothing
 * is tried again: the caller has shown the text, and the answer ends with finish_reason "error". Every
 * attempt is in the result (chat_llm_result.attempts) and in the chat_llm_attempts_total metric.
 *
 * A chat_llm is used by one thread at a time. Cancellation: *cancel may be set to non-zero from any
 * thread; generation stops within 100 ms (at once on a loop after chat_llm_loop_wakeup; openai: the
 * transfer is aborted) and returns CHAT_ECANCELLED with finish_reason "cancelled". */
#ifndef CHAT_LLM_H
#define CHAT_LLM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "chat_config.h"
#include "chat_kb.h"

typedef struct chat_llm_message {
    const char *role; /* "system", "user", "assistant" */
    const char *content;
} chat_llm_message;

typedef struct chat_llm_request {
    /* The prompt for chat models: system prompt, history, then the user's message. */
    const chat_llm_message *messages;
    size_t n_messages;
    int max_tokens;        /* <= 0: the provider's configured limit */
    const char *model;     /* NULL or "": the provider's configured model; the chain's first provider only */
    bool has_temperature;  /* false: none sent (the provider's default) */
    double temperature;
    /* Grounding, used by the extractive provider (and available to any). */
    const char *question;
    const char *agent;               /* a chat_agents[] name (chat_agent.h): the answer's voice */
    const chat_kb_result *passages;  /* may be NULL */
    const char *customer_context;    /* plain text about the customer's boats and appointments, or NULL */
    const struct chat_customer *customer; /* the same as records (chat_customer.h), or NULL */
    /* The knowledge base's whole line of models, ids separated by spaces ("seawind-190 seawind-220"), when
     * it has at most CHAT_LLM_LINE_MAX of them; NULL otherwise. A question back ("Which model do you
     * mean?") names them all, not only the models the few retrieved passages happen to be about. */
    const char *line_models;
    /* The extractive answer to this very request when the caller composed it already
     * (chat_extractive_confidence gives it): the extractive provider streams it instead of composing it
     * again. NULL: the provider composes it. */
    const char *prepared_answer;
} chat_llm_request;

#define CHAT_LLM_LINE_MAX 8

/* Called for each piece of generated text, in order (valid UTF-8, may be several words).
 * Return non-zero to stop generation (treated like a cancel). */
typedef int (*chat_llm_token_fn)(void *ud, const char *text, size_t len);

/* How one attempt ended. X(ID, name, retry): name is what metadata and metrics say; retry, whether the
 * same provider is worth asking again before the first token (a transient failure). */
#define CHAT_LLM_OUTCOME_MAP(X)                                                                                        \
    X(OK, "ok", false)                    /* answered */                                                             \
    X(RATE_LIMITED, "rate_limited", true) /* HTTP 429 */                                                             \
    X(UNAVAILABLE, "unavailable", true)   /* HTTP 500, 502, 503, 504; connection refused or cut */                   \
    X(TIMEOUT, "timeout", false)          /* no connection, or no first token, in time; a stalled stream */          \
    X(AUTH, "auth_error", false)          /* HTTP 401, 403: the key */                                               \
    X(REFUSED, "refused", false)          /* another HTTP 4xx: the request itself */                                 \
    X(INVALID, "invalid_response", false) /* not an OpenAI-compatible stream, or an error event in it */             \
    X(ERROR, "error", false)              /* anything else: DNS, TLS, out of memory, an unfinished stream */         \
    X(CANCELLED, "cancelled", false)      /* the cancel flag */

typedef enum chat_llm_outcome {
#define CHAT_LLM_X_OUTCOME(id, name, retry) CHAT_LLM_OUTCOME_##id,
    CHAT_LLM_OUTCOME_MAP(CHAT_LLM_X_OUTCOME)
#undef CHAT_LLM_X_OUTCOME
        CHAT_LLM_OUTCOME_COUNT
} chat_llm_outcome;

/* The outcome's name ("rate_limited"); NULL past the last. */
const char *chat_llm_outcome_name(chat_llm_outcome o);

#define CHAT_LLM_MAX_ATTEMPTS 16 /* attempts a result details; more are only counted */

typedef struct chat_llm_attempt {
    const char *provider; /* a provider table name (static) */
    char model[96];       /* what it was asked for, cut to fit; "" for a provider without models */
    chat_llm_outcome outcome;
    int ms; /* from the attempt's start to its end */
} chat_llm_attempt;

typedef struct chat_llm_result {
    char finish_reason[16]; /* stop | length | cancelled | error */
    int prompt_tokens;
    int completion_tokens;
    int tokens_emitted;     /* number of token callbacks made */
    const char *provider;   /* the provider that answered, or failed last (static); NULL when none ran */
    int n_attempts;         /* attempts made, in order; the first CHAT_LLM_MAX_ATTEMPTS are in attempts */
    chat_llm_attempt attempts[CHAT_LLM_MAX_ATTEMPTS];
} chat_llm_result;

typedef struct chat_llm chat_llm;

/* The chain: cfg->llm_provider, then cfg->llm_fallback in order, each provider opened with its settings
 * (the replay provider reads its recording here; a fallback's own URL, key, model and extras replace
 * cfg's llm_* ones). NULL with err on a bad configuration, naming the fallback at fault. */
chat_llm *chat_llm_new(const chat_config *cfg, char *err, size_t errlen);
void chat_llm_free(chat_llm *llm);
/* The name of the chain's first provider. */
const char *chat_llm_provider_name(const chat_llm *llm);
/* The name of the i-th provider chat_llm_new knows, in table order; NULL past the last. */
const char *chat_llm_provider_name_at(size_t i);
/* True when a generation never waits for anything (every provider of the chain is extractive or replay
 * without a token delay): a caller with an event loop may as well run it where it is, with
 * chat_llm_generate. */
bool chat_llm_instant(const chat_llm *llm);

/* Runs one generation. Returns 0 (finish_reason stop or length), CHAT_ECANCELLED, CHAT_ETIMEOUT or
 * CHAT_ELLM with a client-safe message in err (no key, no prompt text). res is always filled. */
int chat_llm_generate(chat_llm *llm, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                      const atomic_int *cancel, chat_llm_result *res, char *err, size_t errlen);

/* ---- Many generations on one thread ----
 *
 * A chat_llm_loop runs any number of generations at once on the thread that calls chat_llm_loop_run:
 * openai transfers share the loop's libcurl multi handle (and its connection cache), the extractive
 * and replay providers' paced tokens are released by the loop's timers. A worker process streams thousands of
 * answers this way without a thread per answer. Everything here runs on the loop's thread only, except
 * chat_llm_loop_wakeup. chat_llm_generate is the same machinery on a private loop, run to the end.
 * Token and done callbacks may call chat_llm_start (on this loop or another), but not chat_llm_loop_run
 * or chat_llm_loop_free of their own loop. */
typedef struct chat_llm_loop chat_llm_loop;

/* Called exactly once per started generation, on the loop's thread, from chat_llm_loop_run (never from
 * inside chat_llm_start): rc, res and err as chat_llm_generate would return them (err "" on success).
 * res and err are valid during the call only. */
typedef void (*chat_llm_done_fn)(void *ud, int rc, const chat_llm_result *res, const char *err);

/* NULL with err when a provider cannot set up its share of the loop (openai: libcurl's multi handle) or
 * the loop cannot make its wakeup eventfd. */
chat_llm_loop *chat_llm_loop_new(char *err, size_t errlen);
/* Generations still running are aborted without their done callback (their transfers are cut, their
 * memory freed). Accepts NULL. */
void chat_llm_loop_free(chat_llm_loop *loop);

/* Starts one generation with llm's provider and settings (llm must outlive it and be used by the loop's
 * thread only meanwhile). req is read during the call only: the caller may free it on return. fn gets
 * the text as chat_llm_generate gives it; a non-zero return stops the generation (finish_reason
 * "cancelled", rc CHAT_ECANCELLED). cancel (may be NULL) may be set from any thread; the loop looks at
 * it at least every 100 ms, at once after chat_llm_loop_wakeup. Returns 0, or a negative code with err:
 * then nothing started and done is not called. */
int chat_llm_start(chat_llm_loop *loop, chat_llm *llm, const chat_llm_request *req, chat_llm_token_fn fn,
                   chat_llm_done_fn done, void *ud, const atomic_int *cancel, char *err, size_t errlen);

/* Does what is due (network I/O, paced tokens, timeouts, retries, cancels, done callbacks), waiting up
 * to timeout_ms for something to do; returns early after chat_llm_loop_wakeup. Returns the number of
 * generations still running. */
int chat_llm_loop_run(chat_llm_loop *loop, int timeout_ms);

/* Makes the loop's current or next wait in chat_llm_loop_run return. Any thread. */
void chat_llm_loop_wakeup(chat_llm_loop *loop);

#endif
