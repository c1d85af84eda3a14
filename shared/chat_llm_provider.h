/* The LLM provider interface: what chat_llm.c needs of a provider, as a struct of functions, and the
 * table of providers. Callers use chat_llm.h; this header is for chat_llm.c, the providers and tests.
 *
 * A provider is one file defining one `const chat_llm_provider chat_X_provider` (CHAT_LLM_PROVIDER_DEFINE)
 * plus one row in CHAT_LLM_PROVIDER_MAP below; chat_llm.c finds it there by name (cfg->llm_provider) and
 * never branches on which provider runs. Every function is required (chat_llm_loop_none_* serve a
 * provider that needs nothing of a loop, chat_paced_* one whose answer is known at the start).
 *
 * Three lifetimes, each with its own opaque state:
 *   provider state  open/close, one per chat_llm: the settings, read-only once open, so any number of
 *                   generations on any number of loops may use it at once.
 *   loop state      loop_attach/loop_detach, one per provider per chat_llm_loop (every provider is
 *                   attached when the loop is made): what the provider shares between the generations
 *                   of one loop (openai: the libcurl multi handle and its connection cache). The loop
 *                   knows it only as file descriptors to poll and a time at which to call loop_work.
 *   generation      gen_new .. gen_free, one per answer: a state machine the loop steps when its
 *                   deadline is due or its cancel flag is up. A provider makes one attempt; the chain
 *                   in chat_llm.c decides on retries (gen_rewind) and fallbacks from gen_attempt.
 * Everything but open and close runs on the loop's thread. */
#ifndef CHAT_LLM_PROVIDER_H
#define CHAT_LLM_PROVIDER_H

#include <poll.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "chat_llm.h"

/* What a generation gets from the loop, copied by gen_new. */
typedef struct chat_llm_gen_ctx {
    chat_llm_token_fn fn; /* the caller's text callback (may be NULL); a non-zero return stops */
    void *ud;
    const atomic_int *cancel; /* may be NULL; may be raised from any thread */
    /* Tells the loop that gen_deadline has changed outside a gen_step: moved earlier, or to at once
     * because the generation finished (from loop_work, say). May be called from anywhere on the loop's
     * thread, libcurl callbacks included; it only moves a timer. */
    void (*resched)(void *loop_gen);
    void *loop_gen;
} chat_llm_gen_ctx;

typedef struct chat_llm_provider {
    const char *name; /* what cfg->llm_provider names */

    /* The provider's settings from cfg (read during the call only). 0 with *state, or a negative code
     * with a client-safe err naming the setting at fault (never its value). Any thread. */
    int (*open)(const chat_config *cfg, void **state, char *err, size_t errlen);
    void (*close)(void *state); /* accepts NULL */
    /* True when a generation never waits for anything: a caller with an event loop may as well run it
     * where it is, with chat_llm_generate. */
    bool (*instant)(const void *state);

    /* Per loop. 0 with *loop_state (may be NULL), or a negative code with err. */
    int (*loop_attach)(void **loop_state, char *err, size_t errlen);
    /* After every generation of the loop was freed. */
    void (*loop_detach)(void *loop_state);
    /* The sockets the provider waits on (its own array: the loop copies it before polling) and, in *due,
     * when loop_work must run even without I/O (chat_now_ms clock; INT64_MAX: never). */
    const struct pollfd *(*loop_fds)(void *loop_state, size_t *n, int64_t *due);
    /* Does the work due at now: fds are the loop's copies of what loop_fds gave, revents filled by poll
     * (all zero when the wait ended for another reason). Generations whose deadline moved call their
     * ctx->resched; no generation is freed or finished by the loop from in here. */
    void (*loop_work)(void *loop_state, const struct pollfd *fds, size_t n, int64_t now);

    /* Per generation. Prepares an answer to req (read during the call only; nothing is emitted before
     * the first gen_step). state, loop_state, ctx->ud and ctx->cancel outlive the generation. 0 with
     * *gen, or CHAT_EINVAL / CHAT_ENOMEM with err. */
    int (*gen_new)(void *state, void *loop_state, const chat_llm_request *req, const chat_llm_gen_ctx *ctx,
                   void **gen, char *err, size_t errlen);
    /* When gen_step must next be called (chat_now_ms clock; <= now: at once). */
    int64_t (*gen_deadline)(const void *gen);
    /* Does what is due at now and applies the cancel flag. True when the generation has finished;
     * otherwise its deadline is later than now. */
    bool (*gen_step)(void *gen, int64_t now);
    /* A finished generation's rc, result and err ("" on success), as chat_llm_generate returns them;
     * res and err point into gen. res's provider and attempts are the chain's to fill. */
    int (*gen_outcome)(const void *gen, const chat_llm_result **res, const char **err);
    /* A finished generation's attempt: its outcome class (CHAT_LLM_OUTCOME_OK when rc was 0), the model it
     * asked for ("" for none; points into gen) and how long the provider asked to wait before another
     * try (Retry-After; -1 when it did not say). */
    void (*gen_attempt)(const void *gen, chat_llm_outcome *outcome, const char **model, int64_t *retry_after_ms);
    /* Makes a finished generation that failed before any text ready to run again: the same request, as
     * from gen_new (nothing emitted before the next gen_step). 0, or a negative code when it cannot. */
    int (*gen_rewind)(void *gen);
    /* Frees gen at any point (a running transfer is cut). */
    void (*gen_free)(void *gen);
} chat_llm_provider;

/* Defines provider sym, named name_, from its file's functions: pfx_open, pfx_close, pfx_instant and
 * pfx_gen_new; loop_pfx_attach, _detach, _fds and _work; gen_pfx_deadline, _step, _outcome, _attempt,
 * _rewind and _free.
 * A provider with nothing of its own on a loop names chat_llm_loop_none for loop_pfx; one whose answer is
 * known at the start names chat_paced for gen_pfx (chat_paced.h). */
#define CHAT_LLM_PROVIDER_DEFINE(sym, name_, pfx, loop_pfx, gen_pfx)                                    \
    const chat_llm_provider sym = {                                                                     \
        .name = name_, .open = pfx##_open, .close = pfx##_close, .instant = pfx##_instant,              \
        .loop_attach = loop_pfx##_attach, .loop_detach = loop_pfx##_detach, .loop_fds = loop_pfx##_fds, \
        .loop_work = loop_pfx##_work, .gen_new = pfx##_gen_new, .gen_deadline = gen_pfx##_deadline,     \
        .gen_step = gen_pfx##_step, .gen_outcome = gen_pfx##_outcome, .gen_attempt = gen_pfx##_attempt, \
        .gen_rewind = gen_pfx##_rewind, .gen_free = gen_pfx##_free,                                     \
    }

/* The table: one row per provider, in the order chat_llm_provider_at lists them. */
#define CHAT_LLM_PROVIDER_MAP(X)                                                                        \
    X(chat_openai_provider)                                                                             \
    X(chat_extractive_provider)                                                                         \
    X(chat_replay_provider)

#define CHAT_LLM_PROVIDER_DECLARE(sym) extern const chat_llm_provider sym;
CHAT_LLM_PROVIDER_MAP(CHAT_LLM_PROVIDER_DECLARE)
#undef CHAT_LLM_PROVIDER_DECLARE

/* The i-th row of the table, NULL past the last. */
const chat_llm_provider *chat_llm_provider_at(size_t i);

/* The loop hooks of a provider with no sockets and nothing shared between generations. */
int chat_llm_loop_none_attach(void **loop_state, char *err, size_t errlen);
void chat_llm_loop_none_detach(void *loop_state);
const struct pollfd *chat_llm_loop_none_fds(void *loop_state, size_t *n, int64_t *due);
void chat_llm_loop_none_work(void *loop_state, const struct pollfd *fds, size_t n, int64_t now);

#endif
