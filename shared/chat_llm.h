/* LLM providers behind one interface: "openai" (any OpenAI-compatible Chat Completions endpoint,
 * streamed over SSE with libcurl) and "extractive" (grounded answers composed from retrieved passages,
 * no network). The pipeline builds one chat_llm_request and does not care which provider runs it.
 *
 * A chat_llm is used by one thread at a time. Cancellation: *cancel may be set to non-zero from any
 * thread; generation stops within about a second (openai: the transfer is aborted) and returns
 * CHAT_ECANCELLED with finish_reason "cancelled". */
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
    int max_tokens;
    /* Grounding, used by the extractive provider (and available to any). */
    const char *question;
    const char *agent;               /* specs | maintenance | troubleshooting | general */
    const chat_kb_result *passages;  /* may be NULL */
    const char *customer_context;    /* plain text about the customer's boats and appointments, or NULL */
} chat_llm_request;

/* Called for each piece of generated text, in order (valid UTF-8, may be several words).
 * Return non-zero to stop generation (treated like a cancel). */
typedef int (*chat_llm_token_fn)(void *ud, const char *text, size_t len);

typedef struct chat_llm_result {
    char finish_reason[16]; /* stop | length | cancelled | error */
    int prompt_tokens;
    int completion_tokens;
    int tokens_emitted;     /* number of token callbacks made */
} chat_llm_result;

typedef struct chat_llm chat_llm;

/* Chooses the provider from cfg->llm_provider. NULL with err on a bad configuration. */
chat_llm *chat_llm_new(const chat_config *cfg, char *err, size_t errlen);
void chat_llm_free(chat_llm *llm);
const char *chat_llm_provider_name(const chat_llm *llm);

/* Runs one generation. Returns 0 (finish_reason stop or length), CHAT_ECANCELLED, CHAT_ETIMEOUT or
 * CHAT_ELLM with a client-safe message in err (no key, no prompt text). res is always filled. */
int chat_llm_generate(chat_llm *llm, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                      const atomic_int *cancel, chat_llm_result *res, char *err, size_t errlen);

#endif
