/* The "replay" LLM provider: plays back a recorded answer, so tests (and demos) get a model's streaming
 * shape, exact and repeatable, with no network and no knowledge base.
 *
 * CHAT_LLM_REPLAY_FILE (cfg->llm_replay_file) names a file of token pieces, one JSON string per line
 * (blank lines are skipped), e.g.
 *     "The Seawind 250"
 *     " is powered by"
 *     " a 250 hp outboard.\n"
 * read once by chat_llm_new: a missing setting, an unreadable file, a line that is not one non-empty
 * JSON string of valid UTF-8, or a file with no piece is an error there, naming the line. Every
 * generation then streams exactly those pieces in order, one token callback each, the first at once
 * and the others CHAT_TOKEN_DELAY_MS apart (chat_paced, like the extractive provider); it stops at
 * max_tokens pieces (the request's, else LLM_MAX_TOKENS; finish_reason "length") or on cancel. The
 * request's text is not looked at beyond its size, which gives the prompt_tokens estimate.
 *
 * The provider itself is chat_replay_provider (chat_llm_provider.h), chosen through chat_llm with
 * CHAT_LLM_PROVIDER=replay; nothing else is public. */
#ifndef CHAT_REPLAY_H
#define CHAT_REPLAY_H

#include "chat_llm_provider.h"

#endif
