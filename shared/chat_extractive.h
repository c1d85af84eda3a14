/* The "extractive" LLM provider, the default when no model is configured: an honest, grounded answer
 * composed from everything the pipeline knows, with no network: the customer's records (their boats by
 * name and model, past visits with the work done, upcoming appointments) and the retrieved passages. It
 * answers the question's intent (the figure asked for, the exclusion asked about, a service's task list),
 * compares models from their spec sheets and names the winner, asks which model (or which of the
 * customer's boats) when that decides the answer, says plainly when it does not know ("I have no
 * information about the Seawind 999"), phrases the answer in the agent's voice (the intro of its row in
 * chat_agent.h) and cites the sources. Streams word by word through chat_llm (chat_paced);
 * cfg->token_delay_ms paces tokens like a real model.
 *
 * Confidence (chat_extractive_confidence; the "confidence" of the complete event, whatever the
 * provider) is the confidence of the answer this provider composes, by the kind of answer (the CONF_*
 * constants of chat_extractive.c):
 *   0.9   from the customer's records; the passage about the fault code asked about
 *   0.85  a comparison with the figure of every model compared (0.6 when some are missing)
 *   0.55 + 0.35 s  a service's task list, s the share of the question's words its section title names (>= 0.5)
 *   sentences: c = the share of the question's own words (each weighted by its rarity among the candidate
 *   sentences, 1 + ln((N + 1) / (df + 1))) that the answer's sentences from its best passage contain, a
 *   figure found covering the words that asked for it ("how heavy" by "dry weight"); below 0.5 the
 *   provider says it does not know; otherwise
 *     0.55 + 0.35 c  a figure was asked for and is there (on the model in question)
 *     0.2 + 0.25 c   a figure was asked for and is not there (at most 0.45)
 *     0.45 + 0.45 c  a fact in words was asked for (the engine, the recommended oil) and is there
 *     0.25 + 0.6 c^2 otherwise
 *   0.5   a greeting;  0.3  a question back (which model, which boat)
 *   0.1   "I have no information about ..." (a model or fault code the knowledge base lacks), "I could not
 *         find an answer"
 * Routing certainty and retrieval scores are not part of it: they decide which passages come, and how
 * well those passages answer is measured directly. Calibrated on tests/data/answers_labelled.tsv
 * (docs/answers.md): answers at 0.7 or more are right, wrong, unanswerable and clarifying ones are below
 * 0.5 on the tuned part; the held-out part's figures are reported there. */
#ifndef CHAT_EXTRACTIVE_H
#define CHAT_EXTRACTIVE_H

#include "chat_llm.h"

/* The answer text alone, without streaming: what the provider's generations stream, piece by piece.
 * Public on purpose, as the provider's one decision worth checking on its own: the answer as a whole
 * (the tests judge its content without a loop or pacing). req->prepared_answer, when set, is the
 * answer: it is copied, not composed again. req is read during the call only. Caller frees; NULL when
 * out of memory. */
char *chat_extractive_compose(const chat_llm_request *req);

/* How far the answer to req can be trusted, 0..1 (see above): the confidence of the answer
 * chat_extractive_compose gives, which is also how well the context grounds any provider's answer.
 * Composes the answer to measure it; answer (may be NULL) gets it, for req->prepared_answer, so that
 * the generation that follows streams it without composing it again, on whatever thread it runs
 * (caller frees; NULL when out of memory). Thread-safe. */
double chat_extractive_confidence(const chat_llm_request *req, char **answer);

/* The provider itself is chat_extractive_provider (chat_llm_provider.h): chosen through chat_llm. */

#endif
