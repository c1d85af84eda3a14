/* The "openai" LLM provider: any OpenAI-compatible Chat Completions endpoint (OpenRouter, Ollama,
 * llama.cpp server, vLLM...) with stream: true, read through chat_sse with libcurl.
 *
 * Failures become clear errors: HTTP 401/403 (bad key), 429 (rate limited), 5xx, a stream that ends
 * without [DONE], garbage; connect, first-token and stall timeouts; each attempt classed
 * (chat_llm_outcome) for the chain's retries and fallbacks (chat_llm.h), Retry-After / retry-after-ms
 * passed on. Extra headers and body fields (LLM_EXTRA_HEADERS, LLM_EXTRA_BODY) go with every request.
 * The API key is sent only in the Authorization header and never logged.
 *
 * Callers use chat_llm (chat_llm_generate, or chat_llm_start on a chat_llm_loop); what is here is the
 * provider's settings object and its chunk parser, public for tests. */
#ifndef CHAT_OPENAI_H
#define CHAT_OPENAI_H

#include <stddef.h>

#include "chat_config.h"

/* The provider's settings (URL, key, model, timeouts), read-only once made: any number of generations,
 * on any number of loops, may use one chat_openai, which must outlive them. */
typedef struct chat_openai chat_openai;

chat_openai *chat_openai_new(const chat_config *cfg, char *err, size_t errlen);
void chat_openai_free(chat_openai *o);

/* Parses one SSE data payload (a chat.completion.chunk JSON). Appends the delta content to *text
 * (caller frees; may stay NULL), copies a non-null finish_reason, fills usage when present.
 * Returns 0, or CHAT_EINVAL for malformed JSON or an {"error":...} object (message in err). */
int chat_openai_parse_chunk(const char *data, size_t len, char **text, char finish_reason[16], int *prompt_tokens,
                            int *completion_tokens, char *err, size_t errlen);

/* The provider itself is chat_openai_provider (chat_llm_provider.h): chosen through chat_llm, it keeps its
 * libcurl multi handle in its per-loop state, and no libcurl type leaves chat_openai.c. */

#endif
