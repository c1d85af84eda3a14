/* Provider dispatch, the chain of providers, and the generation loop.
 *
 * A chat_llm is a chain of providers (rows of CHAT_LLM_PROVIDER_MAP, chosen by name) with their opened
 * states, so the pipeline holds one pointer and never branches on configuration; nothing here knows which
 * providers exist. A generation (llm_gen) drives the providers' state machines, each of which says when
 * it next needs a step (a deadline) and how its one attempt went when it finishes (gen_attempt).
 *
 * The chain: chat_llm_start makes every provider's generation of the request at once (the request is the
 * caller's for the call only, and a provider's gen_new keeps what it needs: openai its body, extractive
 * its answer), then steps the first. A failure before any token is retried on the same provider when its
 * outcome is transient (gen_rewind: the same generation again, after a back-off that is a deadline on the
 * loop, not a sleep: the first wait cfg->llm_retry_backoff_ms, doubling with up to 20% jitter, Retry-After
 * instead when the server gave one, all capped at cfg->llm_retry_max_ms; a server asking for more than the
 * cap while another provider could answer is not waited for), and otherwise, or after
 * cfg->llm_max_attempts attempts, the next provider's generation runs. A failure after a token ends the
 * answer: the caller has shown the text. Each attempt is recorded in the result and counted in
 * chat_llm_attempts_total{provider,outcome}. The cost of the chain on the happy path is the fallbacks'
 * gen_new: an extractive fallback composes its answer up front (a fraction of a millisecond).
 *
 * chat_llm_loop is the event loop that drives them: each provider's per-loop state (attached when the
 * loop is made: openai keeps its libcurl multi handle there, and with it every transfer of the loop and
 * its connection cache), a binary min-heap of the generations' deadlines (each generation is in it once,
 * at its earliest deadline; a provider whose deadline moves outside a step, from inside a libcurl
 * callback or its loop work, asks for a reschedule) and the list of generations for the cancel flags.
 * One wait: poll() on the loop's wakeup eventfd and every provider's sockets, up to the caller's timeout,
 * the earliest deadline, the providers' own timers, and the next cancel scan (every LOOP_TICK_MS while
 * generations run; at once after chat_llm_loop_wakeup, which is a flag plus a write to the eventfd).
 * Then the providers' work (their I/O: token callbacks run in there), the deadlines due, the cancel scan.
 * The cost of a wake is the sockets that moved and the deadlines due, plus the cancel scan at most every
 * LOOP_TICK_MS. Done callbacks are called from chat_llm_loop_run's deadline pass only, never from inside
 * a provider's work or a libcurl callback, so they may start new generations; the generation is freed
 * right after its done.
 *
 * chat_llm_generate is a generation on a private loop owned by the chat_llm (made on first use and kept,
 * so the provider's connection stays open between answers), run until its done callback fired. */
#include "chat_llm.h"

#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_list.h"
#include "chat_llm_provider.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_util.h"

#define LOOP_TICK_MS 100 /* cancel flags are looked at this often while generations run */
#define NOT_IN_HEAP ((size_t)-1)
#define CHAIN_MAX (1 + CHAT_LLM_MAX_FALLBACKS)
#define MAX_ATTEMPTS_DEFAULT 2
#define BACKOFF_MS_DEFAULT 300
#define BACKOFF_MAX_MS_DEFAULT 2000
#define JITTER_PCT 20

#define PROVIDER_ROW(sym) &sym,
static const chat_llm_provider *const PROVIDERS[] = {CHAT_LLM_PROVIDER_MAP(PROVIDER_ROW)};
#undef PROVIDER_ROW
#define N_PROVIDERS CHAT_ARRAY_LEN(PROVIDERS)

typedef struct llm_entry {
    const chat_llm_provider *p;
    size_t slot; /* p's row: its state on a loop is loop->ls[slot] */
    void *state; /* p's, from open */
} llm_entry;

struct chat_llm {
    llm_entry chain[CHAIN_MAX];
    size_t n;
    int max_attempts, backoff_ms, backoff_max_ms; /* per provider, before its first token */
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
    const chat_llm *llm;
    void *pg[CHAIN_MAX];   /* each provider's generation of the request, all made at the start */
    size_t cur;            /* the provider being tried */
    int tries;             /* attempts on it so far */
    int64_t attempt_t0;    /* when the current attempt began */
    int64_t backoff_until; /* 0: not waiting for a retry */
    uint64_t rng;          /* the back-off's jitter */
    int n_attempts;
    chat_llm_attempt attempts[CHAT_LLM_MAX_ATTEMPTS];
    /* when finished */
    bool finished;
    int rc;
    chat_llm_result res;
    const char *err;
} llm_gen;

struct chat_llm_loop {
    void *ls[N_PROVIDERS];      /* each provider's loop state */
    struct pollfd *fds;         /* [0] wake_fd, then each provider's sockets in table order */
    size_t fds_cap;
    size_t nfds_of[N_PROVIDERS]; /* how many of fds are each provider's, this wait */
    int wake_fd;                /* eventfd */
    llm_gen *gens;              /* every running generation, newest first */
    int n;
    llm_gen **heap; /* min-heap on due; room for every generation */
    size_t heap_n, heap_cap;
    int64_t last_scan; /* of the cancel flags */
    atomic_int woken;  /* chat_llm_loop_wakeup was called: scan the cancel flags now */
};

/* ---- the provider table ---- */

const chat_llm_provider *chat_llm_provider_at(size_t i) { return i < N_PROVIDERS ? PROVIDERS[i] : NULL; }

const char *chat_llm_provider_name_at(size_t i) { return i < N_PROVIDERS ? PROVIDERS[i]->name : NULL; }

int chat_llm_loop_none_attach(void **loop_state, char *err, size_t errlen)
{
    *loop_state = NULL;
    return 0;
}

void chat_llm_loop_none_detach(void *loop_state) {}

const struct pollfd *chat_llm_loop_none_fds(void *loop_state, size_t *n, int64_t *due)
{
    *n = 0;
    *due = INT64_MAX;
    return NULL;
}

void chat_llm_loop_none_work(void *loop_state, const struct pollfd *fds, size_t n, int64_t now) {}

/* ---- outcomes ---- */

static const struct {
    const char *name;
    bool retry;
} OUTCOMES[CHAT_LLM_OUTCOME_COUNT] = {
#define OUTCOME_ROW(id, name, retry) {name, retry},
    CHAT_LLM_OUTCOME_MAP(OUTCOME_ROW)
#undef OUTCOME_ROW
};

const char *chat_llm_outcome_name(chat_llm_outcome o)
{
    return (unsigned)o < CHAT_LLM_OUTCOME_COUNT ? OUTCOMES[o].name : NULL;
}

/* ---- the chain ---- */

/* e: the provider cfg->llm_provider names, opened with cfg. */
static int entry_open(llm_entry *e, const chat_config *cfg, char *err, size_t errlen)
{
    size_t slot = 0;
    while (slot < N_PROVIDERS && strcmp(PROVIDERS[slot]->name, cfg->llm_provider)) slot++;
    if (slot == N_PROVIDERS) return chat_fail(err, errlen, CHAT_EINVAL, "unknown LLM provider");
    e->p = PROVIDERS[slot];
    e->slot = slot;
    return e->p->open(cfg, &e->state, err, errlen);
}

/* Fallback i of cfg as a configuration of its own: its provider, URL, key, model and extras in place of
 * cfg's llm_* ones, everything else shared. */
static void fallback_config(chat_config *fc, const chat_config *cfg, const chat_llm_fallback *fb)
{
    *fc = *cfg;
    snprintf(fc->llm_provider, sizeof fc->llm_provider, "%s", fb->provider);
    snprintf(fc->llm_base_url, sizeof fc->llm_base_url, "%s", fb->base_url);
    snprintf(fc->llm_api_key, sizeof fc->llm_api_key, "%s", fb->api_key);
    snprintf(fc->llm_model, sizeof fc->llm_model, "%s", fb->model);
    snprintf(fc->llm_extra_headers, sizeof fc->llm_extra_headers, "%s", fb->extra_headers);
    snprintf(fc->llm_extra_body, sizeof fc->llm_extra_body, "%s", fb->extra_body);
}

chat_llm *chat_llm_new(const chat_config *cfg, char *err, size_t errlen)
{
    chat_llm *llm = calloc(1, sizeof *llm);
    chat_config *fc = cfg->n_llm_fallback > 0 ? malloc(sizeof *fc) : NULL; /* big: not on the stack */
    if (!llm || (cfg->n_llm_fallback > 0 && !fc)) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        goto fail;
    }
    llm->max_attempts = cfg->llm_max_attempts > 0 ? cfg->llm_max_attempts : MAX_ATTEMPTS_DEFAULT;
    llm->backoff_ms = cfg->llm_retry_backoff_ms > 0 ? cfg->llm_retry_backoff_ms : BACKOFF_MS_DEFAULT;
    llm->backoff_max_ms = cfg->llm_retry_max_ms > 0 ? cfg->llm_retry_max_ms : BACKOFF_MAX_MS_DEFAULT;
    if (entry_open(&llm->chain[0], cfg, err, errlen)) goto fail;
    llm->n = 1;
    for (int i = 0; i < cfg->n_llm_fallback && i < CHAT_LLM_MAX_FALLBACKS; i++) {
        char why[256];
        fallback_config(fc, cfg, &cfg->llm_fallback[i]);
        int rc = entry_open(&llm->chain[llm->n], fc, why, sizeof why);
        if (rc) {
            chat_fail(err, errlen, rc, "CHAT_LLM_FALLBACK entry %d (LLM_FALLBACK_%d_*): %s", i + 1, i + 1, why);
            goto fail;
        }
        llm->n++;
    }
    if (fc) explicit_bzero(fc, sizeof *fc); /* it held a key */
    free(fc);
    return llm;
fail:
    if (fc) explicit_bzero(fc, sizeof *fc);
    free(fc);
    chat_llm_free(llm);
    return NULL;
}

void chat_llm_free(chat_llm *llm)
{
    if (!llm) return;
    chat_llm_loop_free(llm->loop);
    for (size_t i = llm->n; i--;) llm->chain[i].p->close(llm->chain[i].state);
    free(llm);
}

const char *chat_llm_provider_name(const chat_llm *llm) { return llm->chain[0].p->name; }

bool chat_llm_instant(const chat_llm *llm)
{
    for (size_t i = 0; i < llm->n; i++)
        if (!llm->chain[i].p->instant(llm->chain[i].state)) return false;
    return true;
}

static bool gen_cancelled(const llm_gen *g) { return g->cancel && atomic_load(g->cancel); }

static int64_t gen_deadline(const llm_gen *g)
{
    if (g->finished) return INT64_MIN;
    if (g->backoff_until) return g->backoff_until;
    return g->llm->chain[g->cur].p->gen_deadline(g->pg[g->cur]);
}

/* One attempt into the generation's list and the metrics. */
static void gen_record(llm_gen *g, const char *provider, const char *model, chat_llm_outcome oc, int64_t ms)
{
    if (g->n_attempts < CHAT_LLM_MAX_ATTEMPTS) {
        chat_llm_attempt *a = &g->attempts[g->n_attempts];
        a->provider = provider;
        snprintf(a->model, sizeof a->model, "%.*s", (int)chat_utf8_prefix(model, strlen(model), sizeof a->model - 1),
                 model);
        a->outcome = oc;
        a->ms = ms < 0 ? 0 : ms > INT_MAX ? INT_MAX : (int)ms;
    }
    g->n_attempts++;
    char label[64];
    snprintf(label, sizeof label, "%s,%s", provider, chat_llm_outcome_name(oc));
    chat_metric_inc(CHAT_METRIC_LLM_ATTEMPTS, chat_metric_label(CHAT_METRIC_LABEL_ATTEMPT, label), 1);
}

/* The chain's end: r (may be NULL: nothing but the cancel), with the attempts and who answered. */
static void gen_end(llm_gen *g, int rc, const chat_llm_result *r, const char *err)
{
    g->finished = true;
    g->rc = rc;
    g->err = err;
    if (r) g->res = *r;
    else snprintf(g->res.finish_reason, sizeof g->res.finish_reason, "cancelled");
    g->res.provider = g->llm->chain[g->cur].p->name;
    g->res.n_attempts = g->n_attempts;
    int k = g->n_attempts < CHAT_LLM_MAX_ATTEMPTS ? g->n_attempts : CHAT_LLM_MAX_ATTEMPTS;
    memcpy(g->res.attempts, g->attempts, (size_t)k * sizeof *g->attempts);
}

/* How long before the next try of the current provider: Retry-After when the server gave one, else the
 * back-off doubled per try with jitter; within [backoff_ms, backoff_max_ms]. */
static int64_t retry_wait(llm_gen *g, int64_t retry_after_ms)
{
    const chat_llm *l = g->llm;
    int64_t w = retry_after_ms;
    if (w < 0) {
        int shift = g->tries - 1 < 16 ? g->tries - 1 : 16;
        w = (int64_t)l->backoff_ms << shift;
        g->rng = g->rng * 6364136223846793005ull + 1442695040888963407ull; /* an LCG: jitter, not secrets */
        w += w * (int64_t)((g->rng >> 33) % (JITTER_PCT + 1)) / 100;
    }
    if (w > l->backoff_max_ms) w = l->backoff_max_ms;
    if (w < l->backoff_ms && l->backoff_ms <= l->backoff_max_ms) w = l->backoff_ms;
    return w;
}

/* The current provider's attempt has finished: the chain ends, retries it after a back-off, or moves on. */
static void gen_after_attempt(llm_gen *g, int64_t now)
{
    const llm_entry *e = &g->llm->chain[g->cur];
    void *pg = g->pg[g->cur];
    const chat_llm_result *r = NULL;
    const char *err = NULL, *model = "";
    chat_llm_outcome oc = CHAT_LLM_OUTCOME_ERROR;
    int64_t retry_after = -1;
    int rc = e->p->gen_outcome(pg, &r, &err);
    e->p->gen_attempt(pg, &oc, &model, &retry_after);
    gen_record(g, e->p->name, model, oc, now - g->attempt_t0);
    if (!rc || rc == CHAT_ECANCELLED || r->tokens_emitted > 0 || gen_cancelled(g)) {
        gen_end(g, rc, r, err); /* answered, stopped, or failed after the caller saw text */
        return;
    }
    bool more = g->cur + 1 < g->llm->n;
    if (OUTCOMES[oc].retry && g->tries < g->llm->max_attempts && !(more && retry_after > g->llm->backoff_max_ms) &&
        e->p->gen_rewind(pg) == 0) {
        int64_t wait = retry_wait(g, retry_after);
        chat_log_info("llm: %s (%s) %s before its first token: try %d of %d in %lld ms", e->p->name, model,
                      OUTCOMES[oc].name, g->tries + 1, g->llm->max_attempts, (long long)wait);
        g->tries++;
        g->backoff_until = now + wait;
        return;
    }
    if (!more) {
        gen_end(g, rc, r, err);
        return;
    }
    chat_log_warn("llm: %s (%s) %s before its first token (%s): falling back to %s", e->p->name, model,
                  OUTCOMES[oc].name, err, g->llm->chain[g->cur + 1].p->name);
    g->cur++;
    g->tries = 1;
    g->attempt_t0 = now;
}

/* Steps the current attempt; between attempts, the back-off. True when the chain has ended. */
static bool gen_step(llm_gen *g, int64_t now)
{
    while (!g->finished) {
        if (g->backoff_until) {
            if (gen_cancelled(g)) {
                gen_end(g, CHAT_ECANCELLED, NULL, "generation cancelled");
                break;
            }
            if (now < g->backoff_until) return false;
            g->backoff_until = 0;
            g->attempt_t0 = now;
        }
        if (!g->llm->chain[g->cur].p->gen_step(g->pg[g->cur], now)) return false;
        gen_after_attempt(g, now);
    }
    return true;
}

static void gen_free(llm_gen *g)
{
    for (size_t i = 0; i < g->llm->n; i++)
        if (g->pg[i]) g->llm->chain[i].p->gen_free(g->pg[i]);
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

/* A provider's reschedule hook (chat_llm_gen_ctx.resched). */
static void gen_resched(void *loop_gen)
{
    llm_gen *g = loop_gen;
    heap_set(g->loop, g, gen_deadline(g));
}

/* ---- the loop ---- */

chat_llm_loop *chat_llm_loop_new(char *err, size_t errlen)
{
    chat_llm_loop *l = calloc(1, sizeof *l);
    if (!l || chat_array_reserve(&l->fds, &l->fds_cap, 0, sizeof *l->fds)) {
        free(l);
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    l->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (l->wake_fd < 0) {
        chat_fail(err, errlen, CHAT_ERR, "eventfd failed: %s", strerror(errno));
        goto fail;
    }
    size_t i = 0;
    for (; i < N_PROVIDERS; i++)
        if (PROVIDERS[i]->loop_attach(&l->ls[i], err, errlen)) break;
    if (i < N_PROVIDERS) {
        while (i--) PROVIDERS[i]->loop_detach(l->ls[i]);
        close(l->wake_fd);
        goto fail;
    }
    l->fds[0] = (struct pollfd){.fd = l->wake_fd, .events = POLLIN};
    l->last_scan = chat_now_ms();
    atomic_init(&l->woken, 0);
    return l;
fail:
    free(l->fds);
    free(l);
    return NULL;
}

void chat_llm_loop_free(chat_llm_loop *l)
{
    if (!l) return;
    for (llm_gen *g = l->gens, *next; g; g = next) {
        next = g->next;
        gen_free(g); /* cuts a running transfer */
    }
    for (size_t i = N_PROVIDERS; i--;) PROVIDERS[i]->loop_detach(l->ls[i]);
    close(l->wake_fd);
    free(l->heap);
    free(l->fds);
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
    g->llm = llm;
    g->tries = 1;
    g->attempt_t0 = chat_now_ms();
    g->rng = (uint64_t)(uintptr_t)g ^ (uint64_t)chat_now_us();
    chat_llm_gen_ctx ctx = {.fn = fn, .ud = ud, .cancel = cancel, .resched = gen_resched, .loop_gen = g};
    for (size_t i = 0; i < llm->n; i++) {
        chat_llm_request r = *req;
        if (i) r.model = NULL; /* the request's model is the first provider's; a fallback has its own */
        const llm_entry *e = &llm->chain[i];
        int rc = e->p->gen_new(e->state, l->ls[e->slot], &r, &ctx, &g->pg[i], err, errlen);
        if (rc) {
            gen_free(g);
            return rc;
        }
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
    CHAT_DLIST_UNLINK(l->gens, g);
    l->n--;
    if (g->done) g->done(g->ud, g->rc, &g->res, g->err ? g->err : "");
    gen_free(g);
}

/* After a step: finished, or back in the heap at its next deadline (never at or before now, so the timer
 * pass below always ends). */
static void gen_after(llm_gen *g, bool finished, int64_t now)
{
    if (finished) {
        gen_finish(g);
        return;
    }
    int64_t due = gen_deadline(g);
    heap_set(g->loop, g, due > now ? due : now + 1);
}

/* Fills l->fds after the wakeup eventfd with every provider's sockets and lowers *until to the providers'
 * own timers. Returns the number of entries. */
static size_t loop_gather(chat_llm_loop *l, int64_t *until)
{
    const struct pollfd *src[N_PROVIDERS];
    size_t total = 1;
    for (size_t i = 0; i < N_PROVIDERS; i++) {
        int64_t due = INT64_MAX;
        src[i] = PROVIDERS[i]->loop_fds(l->ls[i], &l->nfds_of[i], &due);
        if (due < *until) *until = due;
        total += l->nfds_of[i];
    }
    if (chat_array_reserve(&l->fds, &l->fds_cap, total - 1, sizeof *l->fds)) {
        /* out of memory: the sockets wait, the timers and the wakeup still work; look again soon */
        memset(l->nfds_of, 0, sizeof l->nfds_of);
        int64_t soon = chat_now_ms() + LOOP_TICK_MS / 10;
        if (soon < *until) *until = soon;
        return 1;
    }
    size_t k = 1;
    for (size_t i = 0; i < N_PROVIDERS; i++) {
        if (l->nfds_of[i]) memcpy(l->fds + k, src[i], l->nfds_of[i] * sizeof *l->fds);
        k += l->nfds_of[i];
    }
    return k;
}

/* Waits until `until` (chat_now_ms clock) for the wakeup or a provider's socket, then lets every provider
 * do its work: network I/O, token callbacks. */
static void loop_wait_and_work(chat_llm_loop *l, int64_t until)
{
    size_t nfds = loop_gather(l, &until);
    int64_t now = chat_now_ms();
    int64_t wait = until <= now ? 0 : until - now; /* until may be INT64_MIN: due at once */
    if (wait > INT_MAX) wait = INT_MAX;
    if (poll(l->fds, nfds, (int)wait) < 0)
        for (size_t i = 0; i < nfds; i++) l->fds[i].revents = 0; /* EINTR: nothing is known to be ready */
    if (l->fds[0].revents) {
        uint64_t v;
        if (read(l->wake_fd, &v, sizeof v) < 0) { /* EAGAIN: another wake took it */
        }
    }
    now = chat_now_ms();
    size_t k = 1;
    for (size_t i = 0; i < N_PROVIDERS; i++) {
        PROVIDERS[i]->loop_work(l->ls[i], l->fds + k, l->nfds_of[i], now);
        k += l->nfds_of[i];
    }
}

int chat_llm_loop_run(chat_llm_loop *l, int timeout_ms)
{
    int64_t now = chat_now_ms();
    int64_t until = now + (timeout_ms > 0 ? timeout_ms : 0);
    if (l->heap_n && l->heap[0]->due < until) until = l->heap[0]->due;
    if (l->n && l->last_scan + LOOP_TICK_MS < until) until = l->last_scan + LOOP_TICK_MS;
    loop_wait_and_work(l, until);

    /* deadlines: paced tokens, timeouts, retries, first steps, generations their provider finished */
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
    uint64_t one = 1;
    if (write(l->wake_fd, &one, sizeof one) < 0) { /* EAGAIN: the counter is full, a wake is pending anyway */
    }
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
