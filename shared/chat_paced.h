/* A prepared answer released piece by piece on a chat_llm_loop: the generation half shared by the
 * providers whose whole answer is known when the generation starts (extractive, replay).
 *
 * The first piece goes at the first step, each next one delay_ms after the one before (all on the
 * first step without a delay), so one loop thread paces any number of answers with its timers and
 * never sleeps. The cancel flag and max_tokens are looked at before every piece. The step, deadline,
 * outcome and free functions have the shape of chat_llm_provider's rows, so a provider uses them as
 * they are (gen_pfx chat_paced in CHAT_LLM_PROVIDER_DEFINE) and writes only its gen_new. Everything
 * runs on the loop's thread. */
#ifndef CHAT_PACED_H
#define CHAT_PACED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_llm.h"
#include "chat_llm_provider.h"

/* One answer: text holds the n pieces back to back, piece i ending at ends[i] (ascending, the last
 * at strlen(text)). text and ends (both malloc'd) belong to the generation from the call on and are
 * freed with it, on failure too. max_tokens <= 0: no limit. prompt_tokens is reported as given.
 * 0 with *gen, or CHAT_EINVAL / CHAT_ENOMEM with err. */
int chat_paced_new(const chat_llm_gen_ctx *ctx, char *text, size_t *ends, size_t n, int delay_ms, int max_tokens,
                   int prompt_tokens, void **gen, char *err, size_t errlen);
int64_t chat_paced_deadline(const void *gen);
/* Finishes with rc 0 and finish_reason "stop" after the last piece, "length" when max_tokens pieces
 * went out and more remain, CHAT_ECANCELLED ("cancelled") on the flag or a non-zero token callback. */
bool chat_paced_step(void *gen, int64_t now);
int chat_paced_outcome(const void *gen, const chat_llm_result **res, const char **err);
/* OK, CANCELLED or ERROR (out of memory) after rc; no model, no Retry-After. */
void chat_paced_attempt(const void *gen, chat_llm_outcome *outcome, const char **model, int64_t *retry_after_ms);
/* Back to the first piece. 0. */
int chat_paced_rewind(void *gen);
void chat_paced_free(void *gen); /* accepts NULL */

#endif
