/* The orchestration pipeline: session → routing → retrieval → generation → memory, reported as the
 * protocol's events through the caller's sink.
 *
 * Design choices:
 * - The classifier vocabulary and the model list are cached and reloaded at most once a minute, so an
 *   admin's SQL change takes effect without a restart and the hot path costs no extra queries.
 * - Follow-ups ("and its torque?") are resolved for retrieval by carrying the model named in the recent
 *   history when the new message names none; the customer's own boat is the next fallback.
 * - confidence = routing certainty and retrieval strength combined, so it moves with both.
 * - Exactly one terminal event: errors before the first token are error events (nothing useful was
 *   said); failures after it end with complete and finish_reason "error", keeping the partial answer. */
#include "chat_pipeline.h"

#include <ctype.h>
#include <json-c/json.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat_classify.h"
#include "chat_common.h"
#include "chat_customer.h"
#include "chat_kb.h"
#include "chat_llm.h"
#include "chat_log.h"
#include "chat_memory.h"
#include "chat_proto.h"
#include "chat_util.h"

#define RELOAD_MS 60000
#define MAX_MODELS 64

typedef struct model_entry {
    char id[64];
    char name[128];
    char number[16]; /* "250" of "Seawind 250", matched as a whole word */
} model_entry;

struct chat_pipeline_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int n, n_free;
    chat_db **db;           /* db[0..n_free) are free */
    chat_kb_stats **stats;  /* the word statistics cached for each connection travel with it */
};

struct chat_pipeline {
    chat_config cfg;
    chat_pipeline_pool *pool; /* NULL: db and kb_stats are the pipeline's own */
    bool holding;             /* pooled: db and kb_stats are borrowed until released */
    chat_db *db;
    chat_llm *llm;
    chat_classifier *clf;
    chat_kb_stats *kb_stats;
    int64_t vocab_loaded_ms; /* 0 = never */
    model_entry models[MAX_MODELS];
    int n_models;
};

chat_pipeline_pool *chat_pipeline_pool_new(const chat_config *cfg, int connections)
{
    if (connections < 1) connections = 1;
    chat_pipeline_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return NULL;
    pthread_mutex_init(&pool->mu, NULL);
    pthread_cond_init(&pool->cv, NULL);
    pool->db = calloc((size_t)connections, sizeof *pool->db);
    pool->stats = calloc((size_t)connections, sizeof *pool->stats);
    if (!pool->db || !pool->stats) goto fail;
    for (; pool->n < connections; pool->n++) {
        pool->db[pool->n] = chat_db_new(cfg);
        pool->stats[pool->n] = chat_kb_stats_new(cfg->kb_common_pct);
        if (!pool->db[pool->n] || !pool->stats[pool->n]) {
            chat_db_free(pool->db[pool->n]);
            chat_kb_stats_free(pool->stats[pool->n]);
            goto fail;
        }
    }
    pool->n_free = pool->n;
    return pool;
fail:
    chat_pipeline_pool_free(pool);
    return NULL;
}

void chat_pipeline_pool_free(chat_pipeline_pool *pool)
{
    if (!pool) return;
    for (int i = 0; i < pool->n; i++) chat_db_free(pool->db[i]), chat_kb_stats_free(pool->stats[i]);
    free(pool->db);
    free(pool->stats);
    pthread_cond_destroy(&pool->cv);
    pthread_mutex_destroy(&pool->mu);
    free(pool);
}

/* Borrows a connection for a database stage (no-op when held already or not pooled). */
static void db_hold(chat_pipeline *p)
{
    if (!p->pool || p->holding) return;
    chat_pipeline_pool *pool = p->pool;
    pthread_mutex_lock(&pool->mu);
    while (pool->n_free == 0) pthread_cond_wait(&pool->cv, &pool->mu);
    pool->n_free--;
    p->db = pool->db[pool->n_free];
    p->kb_stats = pool->stats[pool->n_free];
    pthread_mutex_unlock(&pool->mu);
    p->holding = true;
}

static void db_release(chat_pipeline *p)
{
    if (!p->pool || !p->holding) return;
    chat_pipeline_pool *pool = p->pool;
    pthread_mutex_lock(&pool->mu);
    pool->db[pool->n_free] = p->db;
    pool->stats[pool->n_free] = p->kb_stats;
    pool->n_free++;
    pthread_cond_signal(&pool->cv);
    pthread_mutex_unlock(&pool->mu);
    p->db = NULL;
    p->kb_stats = NULL;
    p->holding = false;
}

chat_pipeline *chat_pipeline_new_pooled(const chat_config *cfg, chat_pipeline_pool *pool, char *err, size_t errlen)
{
    chat_pipeline *p = calloc(1, sizeof *p);
    if (!p) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    p->cfg = *cfg;
    p->pool = pool;
    if (!pool) {
        p->db = chat_db_new(cfg);
        p->kb_stats = chat_kb_stats_new(cfg->kb_common_pct);
    }
    p->clf = chat_classifier_new();
    if ((!pool && (!p->db || !p->kb_stats)) || !p->clf) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        goto fail;
    }
    p->llm = chat_llm_new(cfg, err, errlen);
    if (!p->llm) goto fail;
    return p;
fail:
    chat_pipeline_free(p);
    return NULL;
}

chat_pipeline *chat_pipeline_new(const chat_config *cfg, char *err, size_t errlen)
{
    return chat_pipeline_new_pooled(cfg, NULL, err, errlen);
}

void chat_pipeline_free(chat_pipeline *p)
{
    if (!p) return;
    db_release(p);
    chat_llm_free(p->llm);
    chat_classifier_free(p->clf);
    if (!p->pool) {
        chat_kb_stats_free(p->kb_stats);
        chat_db_free(p->db);
    }
    free(p);
}

chat_db *chat_pipeline_db(chat_pipeline *p) { return p->db; }

static int model_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    chat_pipeline *p = ud;
    if (p->n_models >= MAX_MODELS || !v[0] || !v[1]) return 0;
    model_entry *m = &p->models[p->n_models++];
    snprintf(m->id, sizeof m->id, "%s", v[0]);
    snprintf(m->name, sizeof m->name, "%s", v[1]);
    m->number[0] = '\0';
    const char *sp = strrchr(m->name, ' ');
    if (sp && sp[1]) snprintf(m->number, sizeof m->number, "%s", sp + 1);
    return 0;
}

/* Reloads routing terms and the model list when stale. Failures keep the previous copy. */
static int refresh_vocabulary(chat_pipeline *p, char *err, size_t errlen)
{
    int64_t now = chat_now_ms();
    if (p->vocab_loaded_ms && now - p->vocab_loaded_ms < RELOAD_MS) return 0;
    int rc = chat_classifier_load_db(p->clf, p->db, err, errlen);
    if (rc) return p->vocab_loaded_ms ? 0 : rc;
    int saved = p->n_models;
    p->n_models = 0;
    rc = chat_db_run(p->db, "SELECT id, name FROM models ORDER BY id", NULL, 0, model_row, p, NULL, NULL, err,
                     errlen);
    if (rc) {
        p->n_models = saved;
        return p->vocab_loaded_ms ? 0 : rc;
    }
    p->vocab_loaded_ms = now;
    return 0;
}

static bool word_at(const char *text, const char *hit, size_t len)
{
    bool before = hit == text || !isalnum((unsigned char)hit[-1]);
    bool after = !isalnum((unsigned char)hit[len]);
    return before && after;
}

/* The model a text names: its full name, or its number as a whole word ("the 280"). */
static const model_entry *find_model(const chat_pipeline *p, const char *text)
{
    if (!text) return NULL;
    for (int i = 0; i < p->n_models; i++)
        if (chat_strcasestr(text, p->models[i].name)) return &p->models[i];
    for (int i = 0; i < p->n_models; i++) {
        const char *num = p->models[i].number;
        size_t nl = strlen(num);
        if (!nl) continue;
        for (const char *h = strstr(text, num); h; h = strstr(h + 1, num))
            if (word_at(text, h, nl)) return &p->models[i];
    }
    return NULL;
}

static const model_entry *model_by_id(const chat_pipeline *p, const char *id)
{
    for (int i = 0; id && i < p->n_models; i++)
        if (!strcmp(p->models[i].id, id)) return &p->models[i];
    return NULL;
}

typedef struct run_ctx {
    const chat_sink *sink;
    chat_buf response;
    int64_t t0_us;
    int64_t first_token_us; /* 0 until the first token */
    int64_t db_wait_us;     /* waiting for a pooled connection before the first stage */
    int64_t session_us;     /* opening the session and reading its history */
    bool stopped;           /* the sink asked to stop */
    size_t max_bytes;       /* the answer's size limit, whatever the provider sends */
    bool truncated;         /* stopped at max_bytes */
} run_ctx;

static int on_token(void *ud, const char *text, size_t len)
{
    run_ctx *c = ud;
    if (!c->first_token_us) c->first_token_us = chat_now_us();
    if (c->response.len + len > c->max_bytes) { /* a provider that never stops must not exhaust memory */
        c->truncated = true;
        return 1;
    }
    if (chat_buf_append(&c->response, text, len)) return 1;
    if (c->sink->token && c->sink->token(c->sink->ud, text, len)) {
        c->stopped = true;
        return 1;
    }
    return 0;
}

static void progress(const chat_sink *s, const char *step, const char *message)
{
    if (s->progress) s->progress(s->ud, step, message);
}

static int fail_event(const chat_sink *s, int rc, const char *code, const char *message)
{
    if (s->error) s->error(s->ud, code, message);
    return rc;
}

static bool cancelled(const atomic_int *cancel) { return cancel && atomic_load(cancel); }

/* System prompt: the agent's role, the customer, and the numbered passages to ground on. */
static char *build_system_prompt(const char *agent, const char *customer, const chat_kb_result *kb)
{
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_printf(&b,
                    "You are the Seawind Marine %s assistant for boat owners. Answer from the context below only; "
                    "if the answer is not in it, say so plainly. Be concise, keep figures exact with their "
                    "units, and name the sources you used in brackets, e.g. [seawind-250/specs.md].\n",
                    agent);
    if (customer) chat_buf_printf(&b, "\nCustomer on file:\n%s\n", customer);
    chat_buf_puts(&b, "\nContext:\n");
    for (size_t i = 0; kb && i < kb->n; i++)
        chat_buf_printf(&b, "[%s] %s\n%s\n\n", kb->items[i].source, kb->items[i].title, kb->items[i].body);
    if (!kb || !kb->n) chat_buf_puts(&b, "(no matching documents)\n");
    return chat_buf_take(&b);
}

/* json-c prints doubles with 17 significant digits; metadata wants 0.65 and 8.877. */
static json_object *json_double(double v, const char *fmt)
{
    char text[32];
    snprintf(text, sizeof text, fmt, v);
    return json_object_new_double_s(strtod(text, NULL), text);
}

static char *build_metadata(const char *agent, double confidence, const chat_kb_result *kb, const char *finish,
                            const chat_llm_result *lr, const run_ctx *c, int64_t retrieval_us, const char *model_id,
                            const char *provider)
{
    json_object *m = json_object_new_object();
    json_object_object_add(m, "agent", json_object_new_string(agent));
    json_object_object_add(m, "confidence", json_double(confidence, "%.2f"));
    json_object *ctx = json_object_new_object();
    json_object *sources = json_object_new_array();
    for (size_t i = 0; kb && i < kb->n; i++) {
        bool seen = false;
        for (size_t j = 0; j < i; j++) seen |= !strcmp(kb->items[j].source, kb->items[i].source);
        if (!seen) json_object_array_add(sources, json_object_new_string(kb->items[i].source));
    }
    json_object_object_add(ctx, "sources", sources);
    json_object_object_add(ctx, "passages", json_object_new_int((int)(kb ? kb->n : 0)));
    if (model_id) json_object_object_add(ctx, "model", json_object_new_string(model_id));
    json_object_object_add(m, "context", ctx);
    json_object_object_add(m, "finish_reason", json_object_new_string(finish));
    json_object *usage = json_object_new_object();
    json_object_object_add(usage, "prompt_tokens", json_object_new_int(lr->prompt_tokens));
    json_object_object_add(usage, "completion_tokens", json_object_new_int(lr->completion_tokens));
    json_object_object_add(m, "usage", usage);
    json_object *t = json_object_new_object();
    int64_t now = chat_now_us();
    if (c->first_token_us)
        json_object_object_add(t, "first_token_ms", json_double((double)(c->first_token_us - c->t0_us) / 1000.0, "%.3f"));
    else
        json_object_object_add(t, "first_token_ms", NULL);
    json_object_object_add(t, "db_wait_ms", json_double((double)c->db_wait_us / 1000.0, "%.3f"));
    json_object_object_add(t, "session_ms", json_double((double)c->session_us / 1000.0, "%.3f"));
    json_object_object_add(t, "retrieval_ms", json_double((double)retrieval_us / 1000.0, "%.3f"));
    json_object_object_add(t, "total_ms", json_double((double)(now - c->t0_us) / 1000.0, "%.3f"));
    json_object_object_add(m, "timings", t);
    json_object_object_add(m, "provider", json_object_new_string(provider));
    char *out = strdup(json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(m);
    return out;
}

int chat_pipeline_run(chat_pipeline *p, const chat_request *req, const chat_sink *sink, const atomic_int *cancel)
{
    char err[256];
    char sid[CHAT_SESSION_ID_MAX + 1];
    chat_history hist = {0};
    chat_session_info session = {0};
    chat_customer cust = {0};
    bool have_customer = false;
    chat_kb_result kb = {0};
    char *customer_text = NULL, *system = NULL, *query = NULL, *metadata = NULL;
    chat_llm_message *msgs = NULL;
    chat_llm_result lr = {0};
    /* max_tokens is the provider's limit; this one holds even when a provider ignores it */
    size_t max_bytes = (size_t)p->cfg.llm_max_tokens * 64;
    run_ctx c = {.sink = sink, .t0_us = chat_now_us(), .max_bytes = max_bytes < 16384 ? 16384 : max_bytes};
    chat_buf_init(&c.response);
    int rc = 0;

    if (!req->message || !*req->message || !req->user)
        return fail_event(sink, CHAT_EINVAL, CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty");

    progress(sink, "starting", "Processing your message...");
    db_hold(p);
    c.db_wait_us = chat_now_us() - c.t0_us;

    /* The customer named, when the caller may see their records: with CHAT_CUSTOMER_ACCESS=own only the
     * customer whose email is the token's. Checked first, so a refused request stores nothing; an
     * unknown id is refused the same way, so ids cannot be probed. */
    if (req->customer_id && *req->customer_id) {
        int crc = chat_customer_load(p->db, req->customer_id, &cust, err, sizeof err);
        if (crc == CHAT_EDB) {
            chat_log_warn("pipeline: customer: %s", err);
            rc = fail_event(sink, CHAT_EDB, CHAT_CODE_PROCESSING_ERROR, "The database is unavailable, please retry");
            goto out;
        }
        have_customer = crc == 0;
        bool own = have_customer && req->user->email[0] && !strcasecmp(req->user->email, cust.email);
        if (strcmp(p->cfg.customer_access, "any") && !own) {
            rc = fail_event(sink, CHAT_EFORBIDDEN, CHAT_CODE_CUSTOMER_FORBIDDEN,
                            "You may not access this customer's records");
            goto out;
        }
        if (have_customer) customer_text = chat_customer_describe(&cust);
    }

    /* Session and memory. */
    int64_t s0 = chat_now_us();
    rc = chat_memory_open_session(p->db, req->user->id, req->session_id, req->customer_id, true, p->cfg.history_turns,
                                  &hist, &session, err, sizeof err);
    c.session_us = chat_now_us() - s0;
    memcpy(sid, session.id, sizeof sid);
    if (rc == CHAT_EFORBIDDEN) {
        rc = fail_event(sink, rc, CHAT_CODE_SESSION_FORBIDDEN, "This session belongs to another user");
        goto out;
    }
    if (rc == CHAT_EINVAL) {
        rc = fail_event(sink, rc, CHAT_CODE_INVALID_REQUEST, "Invalid session_id or customer_id");
        goto out;
    }
    if (rc) {
        chat_log_warn("pipeline: session: %s", err);
        rc = fail_event(sink, CHAT_EDB, CHAT_CODE_PROCESSING_ERROR, "The database is unavailable, please retry");
        goto out;
    }
    if (cancelled(cancel)) goto cancel_before_generation;

    /* Routing. */
    progress(sink, "agent_routing", "Routing to appropriate agent...");
    if (refresh_vocabulary(p, err, sizeof err)) {
        chat_log_warn("pipeline: vocabulary: %s", err);
        rc = fail_event(sink, CHAT_EDB, CHAT_CODE_PROCESSING_ERROR, "The database is unavailable, please retry");
        goto out;
    }
    chat_route route;
    chat_classify(p->clf, req->message, &route);
    /* A follow-up with no routing signal of its own continues the previous turn's topic. */
    if (!strcmp(route.agent, CHAT_AGENT_GENERAL) && route.confidence < 0.5 && hist.n >= 2) {
        chat_buf joined;
        chat_buf_init(&joined);
        chat_buf_printf(&joined, "%s %s", hist.items[hist.n - 2].content, req->message);
        chat_route prev;
        chat_classify(p->clf, joined.data, &prev);
        if (strcmp(prev.agent, CHAT_AGENT_GENERAL)) route = prev, route.confidence *= 0.8;
        chat_buf_free(&joined);
    }
    chat_log_debug("pipeline: routed to %s (%.2f) %s", route.agent, route.confidence, route.explain);

    /* The model in question: named now, else named in recent history, else the customer's boat. */
    const model_entry *model = find_model(p, req->message);
    bool model_from_context = false;
    for (size_t i = hist.n; !model && i > 0; i--) {
        model = find_model(p, hist.items[i - 1].content);
        model_from_context = model != NULL;
    }
    if (!model && have_customer && cust.n_vehicles) {
        model = model_by_id(p, cust.vehicles[0].model_id);
        model_from_context = model != NULL;
    }
    if (cancelled(cancel)) goto cancel_before_generation;

    /* Retrieval. */
    progress(sink, "rag_retrieval", "Searching knowledge base...");
    chat_buf qb;
    chat_buf_init(&qb);
    chat_buf_puts(&qb, req->message);
    if (model && model_from_context) chat_buf_printf(&qb, " %s", model->name);
    query = chat_buf_take(&qb);
    char code[16];
    chat_kb_query q = {
        .question = query,
        .agent = strcmp(route.agent, CHAT_AGENT_GENERAL) ? route.agent : NULL,
        .model_id = model ? model->id : NULL,
        .fault_code = chat_kb_find_fault_code(req->message, code) ? code : NULL,
        .k = (size_t)p->cfg.kb_top_k,
        .stats = p->kb_stats,
    };
    int64_t r0 = chat_now_us();
    rc = chat_kb_search(p->db, &q, &kb, err, sizeof err);
    int64_t retrieval_us = chat_now_us() - r0;
    if (rc) {
        chat_log_warn("pipeline: retrieval: %s", err);
        rc = fail_event(sink, CHAT_EDB, CHAT_CODE_PROCESSING_ERROR, "The knowledge base is unavailable, please retry");
        goto out;
    }
    double strength = kb.n ? 1.0 - exp(-kb.top_raw / 6.0) : 0.0;
    double confidence = 0.5 * route.confidence + 0.5 * strength;
    if (cancelled(cancel)) goto cancel_before_generation;

    /* Generation. */
    progress(sink, "generating", "Generating response...");
    system = build_system_prompt(route.agent, customer_text, &kb);
    size_t nmsg = 0;
    msgs = calloc(hist.n + 2, sizeof *msgs);
    if (!system || !msgs) {
        rc = fail_event(sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
        goto out;
    }
    msgs[nmsg++] = (chat_llm_message){"system", system};
    for (size_t i = 0; i < hist.n; i++) msgs[nmsg++] = (chat_llm_message){hist.items[i].role, hist.items[i].content};
    msgs[nmsg++] = (chat_llm_message){"user", req->message};
    chat_llm_request lreq = {
        .messages = msgs,
        .n_messages = nmsg,
        .max_tokens = p->cfg.llm_max_tokens,
        .question = query,
        .agent = route.agent,
        .passages = &kb,
        .customer_context = customer_text,
    };
    db_release(p); /* the model may stream for seconds: other slots use the connection meanwhile */
    rc = chat_llm_generate(p->llm, &lreq, on_token, &c, cancel, &lr, err, sizeof err);
    const char *finish = lr.finish_reason[0] ? lr.finish_reason : "stop";
    if (c.truncated) {
        finish = "length";
        rc = 0;
    } else if (rc == CHAT_ECANCELLED || c.stopped) {
        finish = "cancelled";
        rc = 0;
    } else if (rc) {
        chat_log_warn("pipeline: generation failed (%s): %s", chat_strerror(rc), err);
        if (!c.first_token_us) {
            rc = fail_event(sink, rc, CHAT_CODE_PROCESSING_ERROR, err);
            goto out;
        }
        finish = "error";
        rc = 0;
    }
    metadata = build_metadata(route.agent, confidence, &kb, finish, &lr, &c, retrieval_us, model ? model->id : NULL,
                              chat_llm_provider_name(p->llm));
    goto finish;

cancel_before_generation:
    metadata = build_metadata("general", 0, NULL, "cancelled", &lr, &c, 0, NULL, chat_llm_provider_name(p->llm));

finish:
    if (!metadata) {
        rc = fail_event(sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
        goto out;
    }
    {
        /* The turn is stored before complete is sent, so a client that reads complete and asks a follow-up
         * finds it in the history. Storage failure does not withhold the answer already streamed. */
        char rid[37];
        const char *request_id = req->request_id;
        if (!request_id || !*request_id) request_id = chat_uuid4(rid) == 0 ? rid : "unknown";
        db_hold(p);
        /* A new conversation's session row is written here, with its first turn, not before the answer:
         * nobody knows its id before complete carries it. */
        if (session.deferred &&
            chat_memory_create_session(p->db, sid, req->user->id, req->customer_id, err, sizeof err))
            chat_log_warn("pipeline: creating the session failed: %s", err);
        else if (chat_memory_store_turn(p->db, sid, request_id, req->message, c.response.data ? c.response.data : "",
                                        metadata, session.touch_due, err, sizeof err))
            chat_log_warn("pipeline: storing the turn failed: %s", err);
        if (sink->complete) sink->complete(sink->ud, c.response.data ? c.response.data : "", sid, metadata);
    }
    rc = 0;

out:
    db_release(p);
    free(metadata);
    free(msgs);
    free(system);
    free(query);
    free(customer_text);
    chat_kb_result_clear(&kb);
    if (have_customer) chat_customer_clear(&cust);
    chat_history_clear(&hist);
    chat_buf_free(&c.response);
    return rc;
}
