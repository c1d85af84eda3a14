/* The "openai" LLM provider: any OpenAI-compatible Chat Completions endpoint (OpenRouter, Ollama,
 * llama.cpp server, vLLM...) with stream: true, read through chat_sse with libcurl.
 *
 * Failures become clear errors: HTTP 401/403 (bad key), 429 (rate limited), 5xx, a stream that ends
 * without [DONE], garbage; connect, first-token and stall timeouts; one retry before the first token on
 * transient failures (connect error, 429, 5xx). The API key is sent only in the Authorization header and
 * never logged.
 *
 * Callers use chat_llm (chat_llm_generate, or chat_llm_start on a chat_llm_loop); the generation
 * functions below are the state machine chat_llm.c drives, not an API for anyone else. */
#ifndef CHAT_OPENAI_H
#define CHAT_OPENAI_H

#include <curl/curl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "chat_llm.h"

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

/* ---- for chat_llm.c only: one generation on a loop's shared multi handle ----
 *
 * All of these run on the loop's thread. A generation never calls into libcurl's multi API from inside a
 * libcurl callback (libcurl forbids it): its transfers are added to the multi in chat_openai_gen_step. */

/* libcurl's global initialisation (once per process) and a new multi handle. NULL with err. */
CURLM *chat_openai_multi_new(char *err, size_t errlen);

typedef struct chat_openai_gen chat_openai_gen;

/* Called from inside curl_multi_perform when the generation's deadline moved earlier (first content,
 * [DONE]): the loop must ask chat_openai_gen_deadline again. */
typedef void (*chat_openai_resched_fn)(void *priv);

/* Builds the request (req is read during the call only); nothing is sent before the first
 * chat_openai_gen_step. priv is stored as the transfers' CURLOPT_PRIVATE and passed to resched. o, multi,
 * fn's ud and cancel must outlive the generation. Returns 0 with *out, or CHAT_EINVAL / CHAT_ENOMEM with
 * err. */
int chat_openai_gen_new(chat_openai *o, CURLM *multi, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                        const atomic_int *cancel, chat_openai_resched_fn resched, void *priv, chat_openai_gen **out,
                        char *err, size_t errlen);
/* When chat_openai_gen_step must next be called (chat_now_ms clock; <= now: at once). */
int64_t chat_openai_gen_deadline(const chat_openai_gen *g);
/* Does what is due at now: starts an attempt (the first, or a retry after its backoff), applies the
 * cancel flag and the first-token, stall and [DONE]-grace timers. Returns true when the generation has
 * finished (see chat_openai_gen_outcome); otherwise its deadline is later than now. */
bool chat_openai_gen_step(chat_openai_gen *g, int64_t now);
/* The generation's transfer ended (curl_multi_info_read gave CURLMSG_DONE with cc), or, with !completed,
 * the multi handle failed. Returns true when the generation has finished; otherwise it is backing off
 * before its retry. */
bool chat_openai_gen_transfer_done(chat_openai_gen *g, bool completed, CURLcode cc);
/* A finished generation's rc, result and err ("" on success), as chat_llm_generate returns them; res and
 * err point into g. */
int chat_openai_gen_outcome(const chat_openai_gen *g, const chat_llm_result **res, const char **err);
/* Frees g at any point; a running transfer is removed from the multi (its connection is closed). */
void chat_openai_gen_free(chat_openai_gen *g);

#endif
