/* The "extractive" LLM provider, the default when no model is configured: an honest, grounded answer
 * composed from the retrieved passages, with no network. It picks the sentences that best answer the
 * question (term overlap, numbers and units for spec questions, the customer's model), phrases them in
 * the agent's voice, cites the sources, and says plainly when the knowledge base has no answer.
 * Streams word by word through chat_llm (chat_paced); cfg->token_delay_ms paces tokens like a real model. */
#ifndef CHAT_EXTRACTIVE_H
#define CHAT_EXTRACTIVE_H

#include "chat_llm.h"

/* The answer text alone, without streaming: what the provider's generations stream, piece by piece.
 * Public on purpose, as the provider's one decision worth checking on its own: the answer as a whole
 * (the tests judge its content without a loop or pacing). req is read during the call only. Caller
 * frees; NULL when out of memory. */
char *chat_extractive_compose(const chat_llm_request *req);

/* The provider itself is chat_extractive_provider (chat_llm_provider.h): chosen through chat_llm. */

#endif
