/* Provider dispatch and the generation loop.
 *
 * chat_llm is a tagged union over the two providers so the pipeline holds one pointer and never branches
 * on configuration itself. A generation (llm_gen) is likewise a tagged union over the providers' state
 * machines (chat_openai_gen, chat_extractive_gen), which say when they next need a step (a deadline) and
 * what happened when they finish.
 *
 * chat_llm_loop is the event loop that drives them: one libcurl multi handle (every openai transfer of the
 * loop, and its connection cache), a binary min-heap of the generations' deadlines (each generation is in
 * it once, at its earliest deadline; a provider whose deadline moves earlier from inside a libcurl
 * callback asks for a reschedule), and the list of generations for the cancel flags. One wait:
 * curl_multi_poll up to the caller's timeout, the earliest deadline, and the next cancel scan (every
 * LOOP_TICK_MS while generations run; at once after chat_llm_loop_wakeup, which is curl_multi_wakeup plus
 * a flag). The cost of a wake is the transfers that moved and the deadlines due, plus the cancel scan at
 * most every LOOP_TICK_MS. Done callbacks are called from chat_llm_loop_run only, never from inside a
 * libcurl callback, so they may start new generations; the generation is freed right after its done.
 *
 * chat_llm_generate is a generation on a private loop owned by the chat_llm (made on first use and kept,
 * so the provider's connection stays open between answers), run until its done callback fired. */
#include "chat_llm.h"

#include <curl/curl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_extractive.h"
#include "chat_openai.h"
#include "chat_util.h"

#define LOOP_TICK_MS 100 /* cancel flags are looked at this often while generations run */
#define NOT_IN_HEAP ((size_t)-1)

struct chat_llm {
    chat_config cfg;
    chat_openai *openai; /* NULL for the extractive provider */
    chat_llm_loop *loop; /* chat_llm_generate's, made on first use */
};

typedef struct llm_gen {
    chat_llm_loop *loop;
    struct llm_gen *prev, *next; /* loop->gens */
    size_t heap_at;              /* index in loop->heap */
    int64_t due;
    chat_llm_done_fn done;
    void *ud;
    const atomic_int *cancel;
    chat_openai_gen *oai; /* exactly one of the two */
    chat_extractive_gen *ext;
} llm_gen;

struct chat_llm_loop {
    CURLM *multi;
    llm_gen *gens; /* every running generation, newest first */
    int n;
    llm_gen **heap; /* min-heap on due; room for every generation */
    size_t heap_n, heap_cap;
    int64_t last_scan; /* of the cancel flags */
    atomic_int woken;  /* chat_llm_loop_wakeup was called: scan the cancel flags now */
};

/* ---- provider dispatch ---- */

chat_llm *chat_llm_new(const chat_config *cfg, char *err, size_t errlen)
{
    chat_llm *llm = calloc(1, sizeof *llm);
    if (!llm) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    llm->cfg = *cfg;
    if (!strcmp(cfg->llm_provider, "openai")) {
        llm->openai = chat_openai_new(cfg, err, errlen);
        if (!llm->openai) {
            free(llm);
            return NULL;
        }
    } else if (strcmp(cfg->llm_provider, "extractive")) {
        chat_fail(err, errlen, CHAT_EINVAL, "unknown LLM provider");
        free(llm);
        return NULL;
    }
    return llm;
}

void chat_llm_free(chat_llm *llm)
{
    if (!llm) return;
    chat_llm_loop_free(llm->loop);
    chat_openai_free(llm->openai);
    free(llm);
}

const char *chat_llm_provider_name(const chat_llm *llm) { return llm->openai ? "openai" : "extractive"; }

bool chat_llm_instant(const chat_llm *llm) { return !llm->openai && llm->cfg.token_delay_ms <= 0; }

static int64_t gen_deadline(const llm_gen *g)
{
    return g->oai ? chat_openai_gen_deadline(g->oai) : chat_extractive_gen_deadline(g->ext);
}

static bool gen_step(llm_gen *g, int64_t now)
{
    return g->oai ? chat_openai_gen_step(g->oai, now) : chat_extractive_gen_step(g->ext, now);
}

static void gen_free(llm_gen *g)
{
    chat_openai_gen_free(g->oai);
    chat_extractive_gen_free(g->ext);
    free(g);
}

/* ---- the deadline heap ---- */

static void heap_swap(chat_llm_loop *l, size_t a, size_t b)
{
    llm_gen *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->heap_at = a;
    l->heap[b]->heap_at = b;
}

static void heap_up(chat_llm_loop *l, size_t i)
{
    while (i && l->heap[i]->due < l->heap[(i - 1) / 2]->due) {
        heap_swap(l, i, (i - 1) / 2);
        i = (i - 1) / 2;
    }
}

static void heap_down(chat_llm_loop *l, size_t i)
{
    for (;;) {
        size_t m = i, a = 2 * i + 1, b = 2 * i + 2;
        if (a < l->heap_n && l->heap[a]->due < l->heap[m]->due) m = a;
        if (b < l->heap_n && l->heap[b]->due < l->heap[m]->due) m = b;
        if (m == i) return;
        heap_swap(l, i, m);
        i = m;
    }
}

/* Puts g in the heap at due, or moves it there. Never allocates: chat_llm_start made room. */
static void heap_set(chat_llm_loop *l, llm_gen *g, int64_t due)
{
    g->due = due;
    if (g->heap_at == NOT_IN_HEAP) {
        g->heap_at = l->heap_n++;
        l->heap[g->heap_at] = g;
    }
    heap_up(l, g->heap_at);
    heap_down(l, g->heap_at);
}

static void heap_remove(chat_llm_loop *l, llm_gen *g)
{
    size_t i = g->heap_at;
    if (i == NOT_IN_HEAP) return;
    g->heap_at = NOT_IN_HEAP;
    if (i == --l->heap_n) return;
    l->heap[i] = l->heap[l->heap_n];
    l->heap[i]->heap_at = i;
    heap_up(l, i);
    heap_down(l, l->heap[i]->heap_at);
}

/* The openai provider's reschedule hook (from inside curl_multi_perform). */
static void gen_resched(void *priv)
{
    llm_gen *g = priv;
    heap_set(g->loop, g, gen_deadline(g));
}

/* ---- the loop ---- */

chat_llm_loop *chat_llm_loop_new(char *err, size_t errlen)
{
    chat_llm_loop *l = calloc(1, sizeof *l);
    if (!l) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    l->multi = chat_openai_multi_new(err, errlen);
    if (!l->multi) {
        free(l);
        return NULL;
    }
    l->last_scan = chat_now_ms();
    atomic_init(&l->woken, 0);
    return l;
}

void chat_llm_loop_free(chat_llm_loop *l)
{
    if (!l) return;
    for (llm_gen *g = l->gens, *next; g; g = next) {
        next = g->next;
        gen_free(g); /* removes a running transfer from the multi */
    }
    free(l->heap);
    curl_multi_cleanup(l->multi);
    free(l);
}

int chat_llm_start(chat_llm_loop *l, chat_llm *llm, const chat_llm_request *req, chat_llm_token_fn fn,
                   chat_llm_done_fn done, void *ud, const atomic_int *cancel, char *err, size_t errlen)
{
    if (!l || !llm || !req) return chat_fail(err, errlen, CHAT_EINVAL, "invalid LLM request");
    if (chat_array_reserve(&l->heap, &l->heap_cap, l->heap_n, sizeof *l->heap))
        return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    llm_gen *g = calloc(1, sizeof *g);
    if (!g) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    g->loop = l;
    g->heap_at = NOT_IN_HEAP;
    g->done = done, g->ud = ud, g->cancel = cancel;
    int rc = llm->openai
                 ? chat_openai_gen_new(llm->openai, l->multi, req, fn, ud, cancel, gen_resched, g, &g->oai, err, errlen)
                 : chat_extractive_gen_new(&llm->cfg, req, fn, ud, cancel, &g->ext, err, errlen);
    if (rc) {
        free(g);
        return rc;
    }
    g->next = l->gens;
    if (l->gens) l->gens->prev = g;
    l->gens = g;
    l->n++;
    heap_set(l, g, gen_deadline(g)); /* the first step comes from chat_llm_loop_run */
    return 0;
}

/* g has finished: out of the loop, its done callback, freed. */
static void gen_finish(llm_gen *g)
{
    chat_llm_loop *l = g->loop;
    heap_remove(l, g);
    if (g->prev)
        g->prev->next = g->next;
    else
        l->gens = g->next;
    if (g->next) g->next->prev = g->prev;
    l->n--;
    const chat_llm_result *res = NULL;
    const char *err = NULL;
    int rc = g->oai ? chat_openai_gen_outcome(g->oai, &res, &err) : chat_extractive_gen_outcome(g->ext, &res, &err);
    if (g->done) g->done(g->ud, rc, res, err);
    gen_free(g);
}

/* After a step or a transfer's end: finished, or back in the heap at its next deadline (never at or before
 * now, so the timer pass below always ends). */
static void gen_after(llm_gen *g, bool finished, int64_t now)
{
    if (finished) {
        gen_finish(g);
        return;
    }
    int64_t due = gen_deadline(g);
    heap_set(g->loop, g, due > now ? due : now + 1);
}

int chat_llm_loop_run(chat_llm_loop *l, int timeout_ms)
{
    int64_t now = chat_now_ms();
    int64_t wait = timeout_ms > 0 ? timeout_ms : 0;
    if (l->heap_n && l->heap[0]->due < now + wait) wait = l->heap[0]->due <= now ? 0 : l->heap[0]->due - now;
    if (l->n && l->last_scan + LOOP_TICK_MS - now < wait) wait = l->last_scan + LOOP_TICK_MS - now;
    if (wait < 0) wait = 0;
    curl_multi_poll(l->multi, NULL, 0, (int)wait, NULL);

    /* network I/O: token callbacks run in here */
    int running = 0;
    if (curl_multi_perform(l->multi, &running) != CURLM_OK) {
        /* the multi itself failed: every transfer ends with "LLM transfer failed" */
        for (llm_gen *g = l->gens, *next; g; g = next) {
            next = g->next;
            if (g->oai) gen_after(g, chat_openai_gen_transfer_done(g->oai, false, CURLE_OK), chat_now_ms());
        }
    }
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(l->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURLcode cc = msg->data.result; /* msg is gone once the handle is removed */
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        llm_gen *g = (llm_gen *)(void *)priv;
        if (g && g->oai) gen_after(g, chat_openai_gen_transfer_done(g->oai, true, cc), chat_now_ms());
    }

    /* deadlines: paced tokens, timeouts, retries, first steps */
    now = chat_now_ms();
    while (l->heap_n && l->heap[0]->due <= now) {
        llm_gen *g = l->heap[0];
        gen_after(g, gen_step(g, now), now);
    }

    /* cancel flags */
    if (atomic_exchange(&l->woken, 0) || now - l->last_scan >= LOOP_TICK_MS) {
        l->last_scan = now;
        for (llm_gen *g = l->gens, *next; g; g = next) {
            next = g->next; /* generations started meanwhile go in front: not visited */
            if (g->cancel && atomic_load(g->cancel)) gen_after(g, gen_step(g, now), now);
        }
    }
    return l->n;
}

void chat_llm_loop_wakeup(chat_llm_loop *l)
{
    if (!l) return;
    atomic_store(&l->woken, 1);
    curl_multi_wakeup(l->multi);
}

/* ---- the blocking call ---- */

/* chat_llm_start has one ud for both callbacks: the caller's token callback goes through sync_token. */
typedef struct sync_gen {
    chat_llm_token_fn fn;
    void *ud;
    chat_llm_result *res;
    char *err;
    size_t errlen;
    int rc;
    bool fired;
} sync_gen;

static int sync_token(void *ud, const char *text, size_t len)
{
    sync_gen *s = ud;
    return s->fn ? s->fn(s->ud, text, len) : 0;
}

static void sync_done(void *ud, int rc, const chat_llm_result *res, const char *err)
{
    sync_gen *s = ud;
    s->fired = true;
    s->rc = rc;
    *s->res = *res;
    if (rc && s->err && s->errlen) snprintf(s->err, s->errlen, "%s", err);
}

int chat_llm_generate(chat_llm *llm, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                      const atomic_int *cancel, chat_llm_result *res, char *err, size_t errlen)
{
    chat_llm_result dummy;
    if (!res) res = &dummy;
    memset(res, 0, sizeof *res);
    snprintf(res->finish_reason, sizeof res->finish_reason, "error");
    if (!llm) return chat_fail(err, errlen, CHAT_EINVAL, "invalid LLM request");
    if (!llm->loop && !(llm->loop = chat_llm_loop_new(err, errlen))) return CHAT_ERR;
    sync_gen s = {fn, ud, res, err, errlen, 0, false};
    int rc = chat_llm_start(llm->loop, llm, req, sync_token, sync_done, &s, cancel, err, errlen);
    if (rc) return rc;
    while (!s.fired)
        chat_llm_loop_run(llm->loop, 1000);
    return s.rc;
}
