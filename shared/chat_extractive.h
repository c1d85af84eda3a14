/* The "extractive" LLM provider, the default when no model is configured: an honest, grounded answer
 * composed from the retrieved passages, with no network. It picks the sentences that best answer the
 * question (term overlap, numbers and units for spec questions, the customer's model), phrases them in
 * the agent's voice, cites the sources, and says plainly when the knowledge base has no answer.
 * Streams word by word through chat_llm; cfg->token_delay_ms paces tokens like a real model. */
#ifndef CHAT_EXTRACTIVE_H
#define CHAT_EXTRACTIVE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "chat_llm.h"

/* The answer text alone, without streaming: what chat_extractive_gen_new streams, and what the tests
 * read. req is read during the call only. Caller frees; NULL when out of memory. */
char *chat_extractive_compose(const chat_llm_request *req);

/* ---- for chat_llm.c only: one paced generation on a chat_llm_loop ----
 *
 * All of these run on the loop's thread. The answer is composed by chat_extractive_gen_new (req is read
 * during the call only); tokens go out from chat_extractive_gen_step only. cfg is read during the call;
 * fn's ud and cancel must outlive the generation. Returns 0 with *out, or CHAT_EINVAL / CHAT_ENOMEM with
 * err. */
typedef struct chat_extractive_gen chat_extractive_gen;
int chat_extractive_gen_new(const chat_config *cfg, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                            const atomic_int *cancel, chat_extractive_gen **out, char *err, size_t errlen);
/* When chat_extractive_gen_step must next be called (chat_now_ms clock; <= now: at once). */
int64_t chat_extractive_gen_deadline(const chat_extractive_gen *g);
/* Releases the tokens due at now (the first at once, then one per token_delay_ms; all of them without a
 * delay) and applies cancel and max_tokens. Returns true when the generation has finished; otherwise its
 * deadline is later than now. */
bool chat_extractive_gen_step(chat_extractive_gen *g, int64_t now);
/* A finished generation's rc, result and err ("" on success); res and err point into g. */
int chat_extractive_gen_outcome(const chat_extractive_gen *g, const chat_llm_result **res, const char **err);
void chat_extractive_gen_free(chat_extractive_gen *g);

#endif
