/* The "openai" LLM provider: any OpenAI-compatible Chat Completions endpoint (OpenRouter, Ollama,
 * llama.cpp server, vLLM...) with stream: true, read through chat_sse with libcurl.
 *
 * Failures become clear errors: HTTP 401/403 (bad key), 429 (rate limited), 5xx, a stream that ends
 * without [DONE], garbage; connect, first-token and stall timeouts; one retry before the first token on
 * transient failures (connect error, 429, 5xx). The API key is sent only in the Authorization header and
 * never logged. One chat_openai per thread. */
#ifndef CHAT_OPENAI_H
#define CHAT_OPENAI_H

#include <stdatomic.h>
#include <stddef.h>

#include "chat_config.h"
#include "chat_llm.h"

typedef struct chat_openai chat_openai;

chat_openai *chat_openai_new(const chat_config *cfg, char *err, size_t errlen);
void chat_openai_free(chat_openai *o);
/* Same contract as chat_llm_generate. */
int chat_openai_generate(chat_openai *o, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                         const atomic_int *cancel, chat_llm_result *res, char *err, size_t errlen);

/* Parses one SSE data payload (a chat.completion.chunk JSON). Appends the delta content to *text
 * (caller frees; may stay NULL), copies a non-null finish_reason, fills usage when present.
 * Returns 0, or CHAT_EINVAL for malformed JSON or an {"error":...} object (message in err). */
int chat_openai_parse_chunk(const char *data, size_t len, char **text, char finish_reason[16], int *prompt_tokens,
                            int *completion_tokens, char *err, size_t errlen);

#endif
