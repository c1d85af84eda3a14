/* Paced release of a prepared answer (see chat_paced.h).
 *
 * The answer is kept as one string plus the end offset of each piece rather than as separate strings:
 * one allocation each whatever the length, and the token callback gets pointers into the text. The
 * deadline is the next piece's time only while a delay applies and a first piece went out; otherwise
 * the generation is due at once, and a step runs until it finishes or must wait. */
#include "chat_paced.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_util.h"

typedef struct paced {
    char *text;
    size_t *ends, n, next; /* next: the piece to go */
    int delay_ms, max_tokens;
    int64_t due; /* when the next piece may go (after the first) */
    chat_llm_gen_ctx ctx;
    bool finished;
    int rc;
    chat_llm_result res;
    char err[64];
} paced;

int chat_paced_new(const chat_llm_gen_ctx *ctx, char *text, size_t *ends, size_t n, int delay_ms, int max_tokens,
                   int prompt_tokens, void **gen, char *err, size_t errlen)
{
    *gen = NULL;
    if (!ctx || !text || (n && !ends)) {
        free(text);
        free(ends);
        return chat_fail(err, errlen, CHAT_EINVAL, "invalid LLM request");
    }
    paced *g = calloc(1, sizeof *g);
    if (!g) {
        free(text);
        free(ends);
        return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    }
    g->text = text, g->ends = ends, g->n = n;
    g->delay_ms = delay_ms > 0 ? delay_ms : 0;
    g->max_tokens = max_tokens > 0 ? max_tokens : 1 << 30;
    g->ctx = *ctx;
    g->res.prompt_tokens = prompt_tokens;
    snprintf(g->res.finish_reason, sizeof g->res.finish_reason, "stop");
    *gen = g;
    return 0;
}

int64_t chat_paced_deadline(const void *gen)
{
    const paced *g = gen;
    /* the first piece goes at once, the others delay_ms after the one before */
    if (g->finished || !g->delay_ms || !g->res.completion_tokens) return INT64_MIN;
    return g->due;
}

static void paced_finish(paced *g, int rc, const char *reason, const char *msg)
{
    g->finished = true;
    g->rc = rc;
    if (reason) snprintf(g->res.finish_reason, sizeof g->res.finish_reason, "%s", reason);
    if (msg) chat_fail(g->err, sizeof g->err, rc, "%s", msg);
}

bool chat_paced_step(void *gen, int64_t now)
{
    paced *g = gen;
    while (!g->finished) {
        if (g->next == g->n) {
            paced_finish(g, 0, NULL, NULL);
            break;
        }
        if (g->ctx.cancel && atomic_load(g->ctx.cancel)) {
            paced_finish(g, CHAT_ECANCELLED, "cancelled", "cancelled");
            break;
        }
        if (g->res.completion_tokens >= g->max_tokens) {
            paced_finish(g, 0, "length", NULL);
            break;
        }
        if (g->delay_ms && g->res.completion_tokens > 0 && now < g->due) break; /* not yet */
        size_t from = g->next ? g->ends[g->next - 1] : 0;
        g->res.completion_tokens++;
        g->res.tokens_emitted++;
        int stop = g->ctx.fn ? g->ctx.fn(g->ctx.ud, g->text + from, g->ends[g->next] - from) : 0;
        g->next++;
        if (stop) {
            paced_finish(g, CHAT_ECANCELLED, "cancelled", "stopped by the caller");
            break;
        }
        if (g->next == g->n) { /* the last one: done now, not a token interval later */
            paced_finish(g, 0, NULL, NULL);
            break;
        }
        if (g->delay_ms) g->due = chat_now_ms() + g->delay_ms;
    }
    return g->finished;
}

int chat_paced_outcome(const void *gen, const chat_llm_result **res, const char **err)
{
    const paced *g = gen;
    if (res) *res = &g->res;
    if (err) *err = g->err;
    return g->rc;
}

void chat_paced_attempt(const void *gen, chat_llm_outcome *outcome, const char **model, int64_t *retry_after_ms)
{
    const paced *g = gen;
    *outcome = !g->rc                     ? CHAT_LLM_OUTCOME_OK
               : g->rc == CHAT_ECANCELLED ? CHAT_LLM_OUTCOME_CANCELLED
                                          : CHAT_LLM_OUTCOME_ERROR;
    *model = "";
    *retry_after_ms = -1;
}

int chat_paced_rewind(void *gen)
{
    paced *g = gen;
    int prompt_tokens = g->res.prompt_tokens;
    g->next = 0;
    g->finished = false;
    g->rc = 0;
    g->err[0] = '\0';
    memset(&g->res, 0, sizeof g->res);
    g->res.prompt_tokens = prompt_tokens;
    snprintf(g->res.finish_reason, sizeof g->res.finish_reason, "stop");
    return 0;
}

void chat_paced_free(void *gen)
{
    paced *g = gen;
    if (!g) return;
    free(g->text);
    free(g->ends);
    free(g);
}
