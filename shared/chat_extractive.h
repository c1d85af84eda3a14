/* The "extractive" LLM provider, the default when no model is configured: an honest, grounded answer
 * composed from the retrieved passages, with no network. It picks the sentences that best answer the
 * question (term overlap, numbers and units for spec questions, the customer's model), phrases them in
 * the agent's voice, cites the sources, and says plainly when the knowledge base has no answer.
 * Streams word by word; cfg->token_delay_ms paces tokens like a real model. */
#ifndef CHAT_EXTRACTIVE_H
#define CHAT_EXTRACTIVE_H

#include <stdatomic.h>
#include <stddef.h>

#include "chat_config.h"
#include "chat_llm.h"

/* Same contract as chat_llm_generate. */
int chat_extractive_generate(const chat_config *cfg, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                             const atomic_int *cancel, chat_llm_result *res, char *err, size_t errlen);

/* The answer text alone, without streaming (caller frees). For tests and the REST fast path. */
char *chat_extractive_compose(const chat_llm_request *req);

#endif
