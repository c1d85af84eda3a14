/* The orchestration pipeline: session → routing → retrieval → generation → memory, reported as the
 * protocol's events through the caller's sink.
 *
 * Design choices:
 * - The classifier vocabulary and the model list are cached and reloaded at most once a minute, so an
 *   admin's SQL change takes effect without a restart and the hot path costs no extra queries.
 * - The first half (chat_pipeline_begin) is a sequence of stages, one function each, along the progress
 *   steps: customer access and session (starting), routing and the model in question (agent_routing),
 *   retrieval (rag_retrieval), the prompt and the answer's confidence (generating). A cancellation is
 *   honoured between steps.
 * - Follow-ups ("and its torque?") are resolved for retrieval by carrying the model named in the recent
 *   history when the new message names none; the customer's own boat is the next fallback (the one the
 *   message names by its nickname first). For routing, a message without a signal of its own is
 *   classified again with the previous question. chat_question_search_text adds what the knowledge base
 *   states the asked figure with, and what an elliptical follow-up leaves out; a comparison retrieves
 *   every model's section and favours none.
 * - Agents are rows of chat_agent.h: the fallback agent, each agent's retrieval rule. The pipeline names
 *   none.
 * - confidence is that of the answer the context supports (chat_extractive_confidence), whatever the
 *   provider: calibrated on tests/data/answers_labelled.tsv (docs/answers.md).
 * - Exactly one terminal event: errors before the first token are error events (nothing useful was
 *   said); failures after it end with complete and finish_reason "error", keeping the partial answer.
 * - Never a silent loss: every turn is kept before its complete, in the database or, when the database
 *   cannot take it, in the process's spool (chat_spool.h), and complete says which ("stored"); a turn
 *   that is in neither (the database refused it, the spool is full or off) ends with NOT_STORED, the
 *   client being told instead of a complete that would claim a history it will never have. */
#include "chat_pipeline.h"

#include <ctype.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat_agent.h"
#include "chat_agent_cfg.h"
#include "chat_classify.h"
#include "chat_common.h"
#include "chat_customer.h"
#include "chat_extractive.h"
#include "chat_kb.h"
#include "chat_llm.h"
#include "chat_log.h"
#include "chat_memory.h"
#include "chat_metrics.h"
#include "chat_proto.h"
#include "chat_question.h"
#include "chat_spool.h"
#include "chat_util.h"

#define RELOAD_MS 60000 /* how stale the routing vocabulary and model list may get (an admin's edit) */

/* The answer's size limit is llm_max_tokens x ANSWER_BYTES_PER_TOKEN, at least ANSWER_MIN_BYTES: far
 * above what a provider that honours max_tokens sends (a token is 4 bytes on average), so it only
 * stops one that never ends. */
#define ANSWER_BYTES_PER_TOKEN 64
#define ANSWER_MIN_BYTES 16384

/* Follow-ups. A message routed to the fallback agent below FOLLOW_UP_CONFIDENCE has no routing signal
 * of its own (the classifier gives 0.3 for none at all; one decisive term gives 0.78): with history it
 * is classified again together with the previous question. A topic found that way is less certain than
 * one the message states: its confidence is scaled by FOLLOW_UP_DAMPING. */
#define FOLLOW_UP_CONFIDENCE 0.5
#define FOLLOW_UP_DAMPING 0.8

typedef struct model_entry {
    char id[64];
    char name[128];
    char lname[128]; /* name in lower case, for find_model */
    char number[16]; /* "250" of "Seawind 250", matched as a whole word */
} model_entry;

/* The models table, read at each vocabulary load; any number of rows. */
typedef struct model_list {
    model_entry *at;
    size_t n, cap;
} model_list;

struct chat_pipeline {
    chat_config cfg;
    chat_db *db;
    chat_db *read_db; /* the read replica (CHAT_DB_READ_*), NULL without one: see chat_db_read_route */
    chat_llm *llm;
    chat_agent_cfg *agents; /* each agent's prompt and model settings, reloaded on SIGHUP */
    chat_classifier *clf;
    chat_kb_stats *kb_stats;
    chat_kb_stats *own_stats; /* NULL when the caller's shared one is used */
    chat_spool *spool;        /* the process's, or NULL: a turn the database cannot take is not kept */
    int64_t vocab_loaded_ms; /* 0 = never */
    int kb_derived;          /* search kb_search (1) or kb_documents (0); -1 = not judged yet */
    model_list models;
    char line_models[CHAT_LLM_LINE_MAX * 64]; /* the ids, for chat_llm_request.line_models; "": too many */
};

chat_pipeline *chat_pipeline_new(const chat_config *cfg, char *err, size_t errlen)
{
    chat_pipeline *p = calloc(1, sizeof *p);
    if (!p) return chat_fail_null(err, errlen, "out of memory");
    p->cfg = *cfg;
    p->db = chat_db_new(cfg);
    p->read_db = chat_db_new_read(cfg);
    p->kb_stats = p->own_stats = chat_kb_stats_new(cfg->kb_common_pct);
    p->kb_derived = cfg->kb_derived ? -1 : 0;
    p->clf = chat_classifier_new();
    if (!p->db || !p->kb_stats || !p->clf) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        goto fail;
    }
    p->llm = chat_llm_new(cfg, err, errlen);
    if (!p->llm) goto fail;
    p->agents = chat_agent_cfg_new(cfg->prompts_dir, err, errlen);
    if (!p->agents) goto fail;
    return p;
fail:
    chat_pipeline_free(p);
    return NULL;
}

void chat_pipeline_free(chat_pipeline *p)
{
    if (!p) return;
    chat_agent_cfg_free(p->agents);
    chat_llm_free(p->llm);
    chat_classifier_free(p->clf);
    chat_kb_stats_free(p->own_stats);
    chat_db_free(p->read_db);
    chat_db_free(p->db);
    free(p->models.at);
    free(p);
}

chat_db *chat_pipeline_db(chat_pipeline *p) { return p->db; }

/* Reads that may be slightly stale (retrieval, classifier terms, models, customer context). */
static chat_db *stale_db(chat_pipeline *p) { return chat_db_read_route(p->read_db, p->db); }

void chat_pipeline_use_spool(chat_pipeline *p, chat_spool *spool) { p->spool = spool; }

void chat_pipeline_share_kb_stats(chat_pipeline *p, chat_kb_stats *stats)
{
    if (!stats) return;
    chat_kb_stats_free(p->own_stats);
    p->own_stats = NULL;
    p->kb_stats = stats;
}

/* p->line_models from p->models: the ids separated by spaces, or "" when there are none, more than
 * CHAT_LLM_LINE_MAX, or an id that does not fit the list's form. */
static void build_line(chat_pipeline *p)
{
    size_t len = 0, cap = sizeof p->line_models;
    p->line_models[0] = '\0';
    if (p->models.n > CHAT_LLM_LINE_MAX) return;
    for (size_t i = 0; i < p->models.n; i++) {
        const char *id = p->models.at[i].id;
        int n = snprintf(p->line_models + len, cap - len, "%s%s", i ? " " : "", id);
        if (n < 0 || (size_t)n >= cap - len || strchr(id, ' ')) {
            p->line_models[0] = '\0';
            return;
        }
        len += (size_t)n;
    }
}

/* src in lower case into dst, cap bytes at most with its NUL (the model names, the texts find_model
 * searches). */
static void lower_into(char *dst, const char *src, size_t cap)
{
    size_t i = 0;
    for (; i + 1 < cap && src[i]; i++)
        dst[i] = (char)tolower((unsigned char)src[i]);
    dst[i] = '\0';
}

static int model_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    model_list *l = ud;
    if (!v[0] || !v[1]) return 0;
    if (chat_array_reserve(&l->at, &l->cap, l->n, sizeof *l->at)) return CHAT_ENOMEM;
    model_entry *m = &l->at[l->n++];
    snprintf(m->id, sizeof m->id, "%s", v[0]);
    snprintf(m->name, sizeof m->name, "%s", v[1]);
    lower_into(m->lname, m->name, sizeof m->lname);
    m->number[0] = '\0';
    const char *sp = strrchr(m->name, ' ');
    if (sp && sp[1]) snprintf(m->number, sizeof m->number, "%s", sp + 1);
    return 0;
}

/* Whether questions can search the derived table, judged once on the primary (it keeps the copy). */
static void judge_kb_derived(chat_pipeline *p)
{
    char why[256] = "";
    int ok = chat_kb_derived_usable(p->db, why, sizeof why);
    if (ok < 0) return; /* the database is away: judged again at the next reload */
    p->kb_derived = ok;
    if (!ok) chat_log_info("questions search kb_documents, not its derived copy kb_search: %s", why);
}

/* Reloads routing terms and the model list when stale. Failures keep the previous copy. */
static int refresh_vocabulary(chat_pipeline *p, char *err, size_t errlen)
{
    int64_t now = chat_now_ms();
    if (p->vocab_loaded_ms && now - p->vocab_loaded_ms < RELOAD_MS) return 0;
    int rc = chat_classifier_load_db(p->clf, stale_db(p), err, errlen);
    if (rc) return p->vocab_loaded_ms ? 0 : rc;
    model_list fresh = {0};
    rc = chat_db_run(stale_db(p), "SELECT id, name FROM models ORDER BY id", NULL, 0, model_row, &fresh, NULL, NULL,
                     err, errlen);
    if (rc) { /* the previous list stays whole */
        free(fresh.at);
        return p->vocab_loaded_ms ? 0 : rc;
    }
    free(p->models.at);
    p->models = fresh;
    build_line(p);
    p->vocab_loaded_ms = now;
    if (p->kb_derived < 0) judge_kb_derived(p);
    return 0;
}

static bool word_at(const char *text, const char *hit, size_t len)
{
    bool before = hit == text || !isalnum((unsigned char)hit[-1]);
    bool after = !isalnum((unsigned char)hit[len]);
    return before && after;
}

/* The model a text names: its full name (in any case), or its number as a whole word ("the 280"); the
 * first of the table (by id) when several are named. The text is lowered once and each model costs a
 * plain substring search: about 10 us for a 400-byte text against 400 models on the bench machine, so
 * a line of any length the table holds is fine (the history's messages are searched only when the
 * message names no model). */
static const model_entry *find_model(const chat_pipeline *p, const char *text)
{
    if (!text || !p->models.n) return NULL;
    size_t len = strlen(text);
    char small[1024];
    char *low = len < sizeof small ? small : malloc(len + 1);
    if (!low) return NULL;
    lower_into(low, text, len + 1);
    const model_entry *found = NULL;
    for (size_t i = 0; i < p->models.n && !found; i++)
        if (strstr(low, p->models.at[i].lname)) found = &p->models.at[i];
    for (size_t i = 0; i < p->models.n && !found; i++) {
        const char *num = p->models.at[i].number;
        size_t nl = strlen(num);
        if (!nl) continue;
        for (const char *h = strstr(low, num); h && !found; h = strstr(h + 1, num))
            if (word_at(low, h, nl)) found = &p->models.at[i];
    }
    if (low != small) free(low);
    return found;
}

static const model_entry *model_by_id(const chat_pipeline *p, const char *id)
{
    for (size_t i = 0; id && i < p->models.n; i++)
        if (!strcmp(p->models.at[i].id, id)) return &p->models.at[i];
    return NULL;
}

typedef struct run_ctx {
    const chat_sink *sink;
    chat_buf response;
    int64_t t0_us;
    int64_t first_token_us; /* 0 until the first token */
    int64_t last_token_us;  /* the latest token, for the inter-token latency */
    int64_t queue_us;       /* from acceptance to the first stage (the worker's queue) */
    int64_t session_us;     /* opening the session and reading its history */
    int64_t ready_us;       /* from acceptance to the stages' end: the generation starts (0: never) */
    bool stopped;           /* the sink asked to stop */
    size_t max_bytes;       /* the answer's size limit, whatever the provider sends */
    bool truncated;         /* stopped at max_bytes */
} run_ctx;

/* max_tokens is the provider's limit; this one holds even when a provider ignores it. */
static void set_answer_limit(run_ctx *c, int max_tokens)
{
    size_t max_bytes = (size_t)(max_tokens > 0 ? max_tokens : 0) * ANSWER_BYTES_PER_TOKEN;
    c->max_bytes = max_bytes < ANSWER_MIN_BYTES ? ANSWER_MIN_BYTES : max_bytes;
}

static int on_token(void *ud, const char *text, size_t len)
{
    run_ctx *c = ud;
    int64_t now = chat_now_us();
    if (!c->first_token_us) c->first_token_us = now;
    else chat_metric_observe(CHAT_METRIC_ITL, 0, (double)(now - c->last_token_us) / 1e6);
    c->last_token_us = now;
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

/* System prompt: the agent's prompt (its file in the prompts folder), the customer, and the passages to
 * ground on, each under its source. */
static char *build_system_prompt(const char *prompt, const char *customer, const chat_kb_result *kb)
{
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_printf(&b, "%s\n", prompt);
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

/* The model's attempts (chat_llm_result.attempts): [{"provider","model","outcome","ms"}], model null for a
 * provider without models. */
static json_object *attempts_json(const chat_llm_result *lr)
{
    json_object *a = json_object_new_array();
    for (int i = 0; i < lr->n_attempts && i < CHAT_LLM_MAX_ATTEMPTS; i++) {
        const chat_llm_attempt *at = &lr->attempts[i];
        json_object *o = json_object_new_object();
        json_object_object_add(o, "provider", json_object_new_string(at->provider ? at->provider : ""));
        json_object_object_add(o, "model", at->model[0] ? json_object_new_string(at->model) : NULL);
        json_object_object_add(o, "outcome", json_object_new_string(chat_llm_outcome_name(at->outcome)));
        json_object_object_add(o, "ms", json_object_new_int(at->ms));
        json_object_array_add(a, o);
    }
    return a;
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
    json_object_object_add(t, "queue_ms", json_double((double)c->queue_us / 1000.0, "%.3f"));
    json_object_object_add(t, "session_ms", json_double((double)c->session_us / 1000.0, "%.3f"));
    json_object_object_add(t, "retrieval_ms", json_double((double)retrieval_us / 1000.0, "%.3f"));
    if (c->ready_us) json_object_object_add(t, "ready_ms", json_double((double)c->ready_us / 1000.0, "%.3f"));
    json_object_object_add(t, "total_ms", json_double((double)(now - c->t0_us) / 1000.0, "%.3f"));
    json_object_object_add(m, "timings", t);
    json_object_object_add(m, "provider", json_object_new_string(provider));
    json_object_object_add(m, "attempts", attempts_json(lr));
    char *out = strdup(json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(m);
    return out;
}

/* One request between chat_pipeline_begin and chat_pipeline_end. Everything the two halves share lives
 * here, not in the pipeline, so the second half may run on another thread's pipeline. */
struct chat_run {
    const chat_request *req; /* the caller's, valid until chat_pipeline_end */
    chat_sink sink;
    const atomic_int *cancel;
    run_ctx c;
    char sid[CHAT_SESSION_ID_MAX + 1];
    chat_history hist;
    chat_session_info session;
    chat_customer cust;
    bool have_customer;
    chat_kb_result kb;
    char *customer_text, *system, *query;
    char *answer; /* lreq.prepared_answer: the extractive answer composed for the confidence, or NULL */
    chat_llm_message *msgs;
    chat_llm_request lreq;
    const char *agent; /* a chat_agents[] name (static) */
    double confidence;
    int64_t retrieval_us;
    char model_id[64]; /* "" when no model is in question */
    char llm_model[256]; /* the agent's model setting (lreq.model), "" for the provider's own */
    char line_models[CHAT_LLM_LINE_MAX * 64]; /* lreq.line_models: a copy, the turn keeps nothing of p */
    char rid[37];      /* the request id made up when the request has none */
    /* the model's outcome (chat_run_set_outcome) */
    int gen_rc;
    chat_llm_result gen_res;
    char gen_err[256];
};

static void turn_free(chat_run *t)
{
    if (!t) return;
    free(t->msgs);
    free(t->system);
    free(t->query);
    free(t->answer);
    free(t->customer_text);
    chat_kb_result_clear(&t->kb);
    if (t->have_customer) chat_customer_clear(&t->cust);
    chat_history_clear(&t->hist);
    chat_buf_free(&t->c.response);
    free(t);
}

static const char *run_request_id(chat_run *t)
{
    const char *id = t->req->request_id;
    if (id && *id) return id;
    if (!t->rid[0] && chat_uuid4(t->rid)) snprintf(t->rid, sizeof t->rid, "unknown");
    return t->rid;
}

/* The thread's log context (chat_log_context_set) names this run's request and session; the public
 * functions below set it while they serve a run and clear it before they return. */
static void log_context(chat_run *t) { chat_log_context_set(run_request_id(t), t->sid); }

/* What keeping a turn came to, besides a negative code (not kept: the answer ends with NOT_STORED). */
enum { KEPT_SPOOLED = 0, KEPT_STORED = 1 };

/* Spools the turn (chat_spool.h): KEPT_SPOOLED, or CHAT_EDB (logged) without a spool or when it cannot
 * take the turn. */
static int spool_turn(chat_pipeline *p, chat_run *t, const char *metadata)
{
    if (!p->spool) return CHAT_EDB;
    const chat_request *req = t->req;
    chat_spool_turn st = {
        .session_id = t->sid,
        .request_id = run_request_id(t),
        .user_id = req->user->id,
        .customer_id = req->customer_id,
        .new_session = t->session.deferred,
        .touch_session = t->session.touch_due,
        .user_text = req->message,
        .assistant_text = t->c.response.data ? t->c.response.data : "",
        .metadata_json = metadata,
    };
    char err[256];
    if (!chat_spool_append(p->spool, &st, err, sizeof err)) return KEPT_SPOOLED;
    chat_log_error("pipeline: turn %s of session %s neither stored nor spooled: %s", st.request_id, t->sid, err);
    return CHAT_EDB;
}

/* Keeps one turn: stored (the session row first when it is new), else spooled when the database cannot
 * take it now. The turn is kept before complete is sent, so a client that reads complete and asks a
 * follow-up finds it in the history (or, when it was spooled, is told it is not there yet). While turns
 * wait in the spool, a new one goes after them, so that a session's turns are stored in order. Returns
 * KEPT_STORED, KEPT_SPOOLED, or a negative code (logged): refused by the database, or no spool could
 * take it. */
static int keep_turn(chat_pipeline *p, chat_run *t, const char *metadata)
{
    if (p->spool && chat_spool_pending(p->spool)) return spool_turn(p, t, metadata);
    char err[256];
    const chat_request *req = t->req;
    const char *response = t->c.response.data ? t->c.response.data : "";
    /* A new conversation's session row is written here, with its first turn, not before the answer:
     * nobody knows its id before complete carries it. */
    int rc = t->session.deferred ? chat_memory_create_session(p->db, t->sid, req->user->id, req->customer_id, err,
                                                              sizeof err)
                                 : 0;
    if (!rc)
        rc = chat_memory_store_turn(p->db, req->user->id, t->sid, run_request_id(t), req->message, response,
                                    metadata, t->session.touch_due, err, sizeof err);
    if (!rc) return KEPT_STORED;
    if (chat_spool_refused(rc, p->db)) {
        chat_log_error("pipeline: turn %s of session %s refused by the database: %s", run_request_id(t), t->sid, err);
        return rc;
    }
    chat_log_warn("pipeline: storing turn %s failed (%s)%s", run_request_id(t), err, p->spool ? ": spooled" : "");
    return spool_turn(p, t, metadata);
}

/* metadata (a JSON object's text) with "stored" added as its last member; NULL when out of memory. */
static char *metadata_with_stored(const char *metadata, bool stored)
{
    size_t n = strlen(metadata);
    while (n && metadata[n - 1] != '}')
        n--;
    if (!n) return NULL;
    bool empty = true; /* "{}" or "{ }" */
    for (size_t i = 1; i + 1 < n && empty; i++)
        empty = strchr(" \t\r\n", metadata[i]) != NULL;
    chat_buf b;
    chat_buf_init(&b);
    if (chat_buf_append(&b, metadata, n - 1) ||
        chat_buf_printf(&b, "%s\"stored\":%s}", empty ? "" : ",", stored ? "true" : "false")) {
        chat_buf_free(&b);
        return NULL;
    }
    return chat_buf_take(&b);
}

static void emit_complete(chat_run *t, const char *metadata)
{
    if (t->sink.complete) t->sink.complete(t->sink.ud, t->c.response.data ? t->c.response.data : "", t->sid, metadata);
}

/* The terminal event of a run whose turn keep_turn kept (kept: its outcome): complete, its metadata
 * saying whether the turn is stored or spooled; or NOT_STORED when it was not kept. Returns as
 * chat_pipeline_run (CHAT_EDB for NOT_STORED). */
static int end_turn(chat_run *t, const char *metadata, int kept)
{
    if (kept < 0)
        return fail_event(&t->sink, CHAT_EDB, CHAT_CODE(NOT_STORED), chat_proto_code_message(CHAT_PROTO_NOT_STORED));
    char *m = metadata_with_stored(metadata, kept == KEPT_STORED);
    if (!m) return fail_event(&t->sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
    emit_complete(t, m);
    free(m);
    return 0;
}

static int finish_turn(chat_pipeline *p, chat_run *t, const char *metadata)
{
    if (!metadata) return fail_event(&t->sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
    return end_turn(t, metadata, keep_turn(p, t, metadata));
}

/* ---- the first half, stage by stage ----------------------------------------------------------------
 *
 * Each stage reads what the ones before it left in the run (and in the begin_state below), emits the
 * error event itself when it fails and returns the code; chat_pipeline_begin only sequences them, with
 * a cancellation check before each progress step but the first. */

/* What the first half's stages hand each other beyond the run; lives during chat_pipeline_begin only
 * (model points into p->models, which the next vocabulary load replaces). */
typedef struct begin_state {
    chat_pipeline *p;
    chat_run *t;
    char err[256];
    chat_route route;
    const model_entry *model; /* the model in question, or NULL */
    bool model_from_context;  /* not named in the message: from the history or the customer's boat */
} begin_state;

#define BEGIN_CANCELLED 1 /* a stage's "stop here": the request was cancelled before generation */

static int fail_db(begin_state *s, const char *what, const char *client_message)
{
    chat_log_warn("pipeline: %s: %s", what, s->err);
    return fail_event(&s->t->sink, CHAT_EDB, CHAT_CODE_PROCESSING_ERROR, client_message);
}

static const char DB_UNAVAILABLE[] = "The database is unavailable, please retry";

/* A run for req with its clock started, or NULL after the error event (an empty message, no memory). */
static chat_run *run_new(chat_pipeline *p, const chat_request *req, const chat_sink *sink, const atomic_int *cancel,
                         int *rc)
{
    if (!req->message || !*req->message || !req->user) {
        *rc = fail_event(sink, CHAT_EINVAL, CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty");
        return NULL;
    }
    chat_run *t = calloc(1, sizeof *t);
    if (!t) {
        *rc = fail_event(sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
        return NULL;
    }
    t->req = req;
    t->sink = *sink;
    t->cancel = cancel;
    t->agent = chat_agent_fallback()->name;
    int64_t now = chat_now_us();
    int64_t t0 = req->accepted_us > 0 && req->accepted_us <= now ? req->accepted_us : now;
    t->c = (run_ctx){.sink = &t->sink, .t0_us = t0, .queue_us = now - t0};
    set_answer_limit(&t->c, p->cfg.llm_max_tokens); /* the agent's own, once it is known */
    chat_buf_init(&t->c.response);
    return t;
}

/* The customer named, when the caller may see their records: with CHAT_CUSTOMER_ACCESS=own only the
 * customer whose email is the token's. Checked first, so a refused request stores nothing; an unknown id
 * is refused the same way, so ids cannot be probed. */
static int stage_customer(begin_state *s)
{
    chat_run *t = s->t;
    const chat_request *req = t->req;
    if (!req->customer_id || !*req->customer_id) return 0;
    chat_db *db = stale_db(s->p);
    int crc = chat_customer_load(db, req->customer_id, &t->cust, s->err, sizeof s->err);
    if (crc == CHAT_EDB && (db = chat_db_read_failed(s->p->read_db, db, s->p->db)))
        crc = chat_customer_load(db, req->customer_id, &t->cust, s->err, sizeof s->err);
    if (crc == CHAT_EDB) return fail_db(s, "customer", DB_UNAVAILABLE);
    t->have_customer = crc == 0;
    bool own = t->have_customer && req->user->email[0] && !strcasecmp(req->user->email, t->cust.email);
    if (strcmp(s->p->cfg.customer_access, "any") && !own)
        return fail_event(&t->sink, CHAT_EFORBIDDEN, CHAT_CODE_CUSTOMER_FORBIDDEN,
                          "You may not access this customer's records");
    if (t->have_customer) t->customer_text = chat_customer_describe(&t->cust);
    return 0;
}

/* The session (opened, or a new one deferred to the first turn) and its recent history. */
static int stage_session(begin_state *s)
{
    chat_run *t = s->t;
    const chat_request *req = t->req;
    int64_t s0 = chat_now_us();
    int rc = req->session_new
                 ? chat_memory_new_session(req->session_id, &t->session, s->err, sizeof s->err)
                 : chat_memory_open_session(s->p->db, req->user->id, req->session_id, req->customer_id, true,
                                            s->p->cfg.history_turns, &t->hist, &t->session, s->err, sizeof s->err);
    t->c.session_us = chat_now_us() - s0;
    memcpy(t->sid, t->session.id, sizeof t->sid);
    log_context(t);
    if (rc == CHAT_EINVAL)
        return fail_event(&t->sink, rc, CHAT_CODE_INVALID_REQUEST, "Invalid session_id or customer_id");
    if (rc) return fail_db(s, "session", DB_UNAVAILABLE);
    return 0;
}

/* Routing: the classifier on the message; a follow-up with no routing signal of its own ("and its
 * torque?") continues the previous question's topic. */
static int stage_route(begin_state *s)
{
    chat_run *t = s->t;
    if (refresh_vocabulary(s->p, s->err, sizeof s->err)) return fail_db(s, "vocabulary", DB_UNAVAILABLE);
    chat_route *route = &s->route;
    chat_classify(s->p->clf, t->req->message, route);
    const chat_agent *fallback = chat_agent_fallback();
    if (!strcmp(route->agent, fallback->name) && route->confidence < FOLLOW_UP_CONFIDENCE && t->hist.n >= 2) {
        chat_buf joined;
        chat_buf_init(&joined);
        chat_buf_printf(&joined, "%s %s", t->hist.items[t->hist.n - 2].content, t->req->message);
        chat_route prev;
        chat_classify(s->p->clf, joined.data, &prev);
        if (strcmp(prev.agent, fallback->name)) *route = prev, route->confidence *= FOLLOW_UP_DAMPING;
        chat_buf_free(&joined);
    }
    chat_log_debug("pipeline: routed to %s (%.2f) %s", route->agent, route->confidence, route->explain);
    t->agent = route->agent;
    return 0;
}

/* The model in question: named now, else the customer's boat the message names by its nickname, else
 * named in the recent history (newest first), else the customer's first boat. */
static void stage_model(begin_state *s)
{
    chat_run *t = s->t;
    const model_entry *model = find_model(s->p, t->req->message);
    const chat_vehicle *boat =
        !model && t->have_customer ? chat_customer_vehicle_named(&t->cust, t->req->message) : NULL;
    if (boat) model = model_by_id(s->p, boat->model_id), s->model_from_context = model != NULL;
    for (size_t i = t->hist.n; !model && i > 0; i--) {
        model = find_model(s->p, t->hist.items[i - 1].content);
        s->model_from_context = model != NULL;
    }
    if (!model && t->have_customer && t->cust.n_vehicles) {
        model = model_by_id(s->p, t->cust.vehicles[0].model_id);
        s->model_from_context = model != NULL;
    }
    if (model) snprintf(t->model_id, sizeof t->model_id, "%s", model->id);
    s->model = model;
}

/* Retrieval: the search text (chat_question_search_text: the message, the words that state the figure
 * it asks for, what a follow-up leaves out, and the model's name when the model came from the context,
 * so "and its torque?" finds the model's passages), shaped by the agent's retrieval rule, the model (none
 * for a comparison, which retrieves every model's section) and a fault code. */
static int stage_retrieve(begin_state *s)
{
    chat_run *t = s->t;
    t->query = chat_question_search_text(t->req->message, &t->hist,
                                         s->model && s->model_from_context ? s->model->name : NULL,
                                         t->have_customer ? &t->cust : NULL);
    if (!t->query) return fail_event(&t->sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
    bool compares;
    size_t k = chat_question_passages(t->query, (size_t)s->p->cfg.kb_top_k, &compares);
    char code[16];
    chat_kb_query q = {
        .question = t->query,
        .agent = chat_agent_kb_filter(chat_agent_find(s->route.agent)),
        .model_id = s->model && !compares ? s->model->id : NULL,
        .fault_code = chat_kb_find_fault_code(t->query, code) ? code : NULL,
        .k = k,
        .stats = s->p->kb_stats,
        .sync_db = s->p->kb_derived > 0 ? s->p->db : NULL,
    };
    int64_t r0 = chat_now_us();
    chat_db *db = stale_db(s->p);
    int rc = chat_kb_search(db, &q, &t->kb, s->err, sizeof s->err);
    if (rc == CHAT_EDB && (db = chat_db_read_failed(s->p->read_db, db, s->p->db))) /* died since its check */
        rc = chat_kb_search(db, &q, &t->kb, s->err, sizeof s->err);
    t->retrieval_us = chat_now_us() - r0;
    if (rc) return fail_db(s, "retrieval", "The knowledge base is unavailable, please retry");
    return 0;
}

/* The prompt: the system prompt, the history, the message; and the confidence of the answer it grounds. */
static int stage_prompt(begin_state *s)
{
    chat_run *t = s->t;
    const chat_agent_settings *as = chat_agent_cfg_get(s->p->agents, t->agent);
    int max_tokens = as->max_tokens > 0 ? as->max_tokens : s->p->cfg.llm_max_tokens;
    snprintf(t->llm_model, sizeof t->llm_model, "%s", as->model);
    set_answer_limit(&t->c, max_tokens);
    t->system = build_system_prompt(as->prompt, t->customer_text, &t->kb);
    size_t nmsg = 0;
    t->msgs = calloc(t->hist.n + 2, sizeof *t->msgs);
    if (!t->system || !t->msgs) return fail_event(&t->sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
    t->msgs[nmsg++] = (chat_llm_message){"system", t->system};
    for (size_t i = 0; i < t->hist.n; i++)
        t->msgs[nmsg++] = (chat_llm_message){t->hist.items[i].role, t->hist.items[i].content};
    t->msgs[nmsg++] = (chat_llm_message){"user", t->req->message};
    t->lreq = (chat_llm_request){
        .messages = t->msgs,
        .n_messages = nmsg,
        .max_tokens = max_tokens,
        .model = t->llm_model[0] ? t->llm_model : NULL,
        .has_temperature = as->has_temperature,
        .temperature = as->temperature,
        .question = t->query,
        .agent = t->agent,
        .passages = &t->kb,
        .customer_context = t->customer_text,
        .customer = t->have_customer ? &t->cust : NULL,
        .line_models = s->p->line_models[0] ? memcpy(t->line_models, s->p->line_models, sizeof t->line_models) : NULL,
    };
    /* composes the extractive answer to measure it; an extractive generation streams it as it is */
    t->confidence = chat_extractive_confidence(&t->lreq, &t->answer);
    t->lreq.prepared_answer = t->answer;
    return 0;
}

/* The step's progress event, with its default message. */
static void announce(const chat_sink *sink, chat_proto_step step)
{
    progress(sink, chat_proto_step_name(step), chat_proto_step_message(step));
}

/* The stages in order, each progress step announced first. 0: ready to generate; BEGIN_CANCELLED; or
 * the negative code of the error event emitted. */
static int begin_stages(begin_state *s)
{
    const chat_sink *sink = &s->t->sink;
    const atomic_int *cancel = s->t->cancel;
    int rc;
    announce(sink, CHAT_STEP_STARTING);
    if ((rc = stage_customer(s)) || (rc = stage_session(s))) return rc;
    if (cancelled(cancel)) return BEGIN_CANCELLED;
    announce(sink, CHAT_STEP_AGENT_ROUTING);
    if ((rc = stage_route(s))) return rc;
    stage_model(s);
    if (cancelled(cancel)) return BEGIN_CANCELLED;
    announce(sink, CHAT_STEP_RAG_RETRIEVAL);
    if ((rc = stage_retrieve(s))) return rc;
    if (cancelled(cancel)) return BEGIN_CANCELLED;
    announce(sink, CHAT_STEP_GENERATING);
    return stage_prompt(s);
}

/* A request cancelled before generation ends with complete, finish_reason cancelled and no answer. */
static int end_cancelled(chat_pipeline *p, chat_run *t)
{
    chat_llm_result lr = {0};
    char *metadata = build_metadata(chat_agent_fallback()->name, 0, NULL, "cancelled", &lr, &t->c, 0, NULL,
                                    chat_llm_provider_name(p->llm));
    int rc = finish_turn(p, t, metadata);
    free(metadata);
    return rc;
}

chat_run *chat_pipeline_begin(chat_pipeline *p, const chat_request *req, const chat_sink *sink,
                              const atomic_int *cancel, int *rcp)
{
    int dummy;
    if (!rcp) rcp = &dummy;
    *rcp = 0;
    chat_run *t = run_new(p, req, sink, cancel, rcp);
    if (!t) return NULL;
    log_context(t);
    begin_state s = {.p = p, .t = t};
    int rc = begin_stages(&s);
    if (!rc) t->c.ready_us = chat_now_us() - t->c.t0_us;
    if (rc) *rcp = rc == BEGIN_CANCELLED ? end_cancelled(p, t) : rc;
    chat_log_context_clear();
    if (!rc) return t;
    turn_free(t);
    return NULL;
}

const chat_llm_request *chat_run_llm_request(const chat_run *t) { return &t->lreq; }

int chat_run_token(void *run, const char *text, size_t len) { return on_token(&((chat_run *)run)->c, text, len); }

void chat_run_set_outcome(chat_run *t, int gen_rc, const chat_llm_result *res, const char *err)
{
    t->gen_rc = gen_rc;
    if (res) t->gen_res = *res;
    snprintf(t->gen_err, sizeof t->gen_err, "%s", err ? err : "");
}

/* The provider that answered (a fallback of the chain, maybe); the chain's first when none ran. */
static const char *answered_by(const chat_pipeline *p, const chat_llm_result *lr)
{
    return lr->provider ? lr->provider : chat_llm_provider_name(p->llm);
}

/* The metadata for the run's outcome; NULL after the error event was emitted (the model failed before
 * any text, or out of memory), with *rc its code. */
/* The answer's figures for the operators' scrape (chat_metrics.h): latencies by agent from the
 * moment the request was accepted, tokens by provider, the answer by finish_reason. */
static void record_metrics(chat_pipeline *p, const chat_run *t, const char *finish)
{
    unsigned agent = chat_metric_label(CHAT_METRIC_LABEL_AGENT, t->agent);
    unsigned provider = chat_metric_label(CHAT_METRIC_LABEL_PROVIDER, answered_by(p, &t->gen_res));
    if (t->c.first_token_us)
        chat_metric_observe(CHAT_METRIC_TTFT, agent, (double)(t->c.first_token_us - t->c.t0_us) / 1e6);
    chat_metric_observe(CHAT_METRIC_E2E, agent, (double)(chat_now_us() - t->c.t0_us) / 1e6);
    chat_metric_observe(CHAT_METRIC_RETRIEVAL, agent, (double)t->retrieval_us / 1e6);
    chat_metric_inc(CHAT_METRIC_ANSWERS, chat_metric_label(CHAT_METRIC_LABEL_FINISH, finish), 1);
    chat_metric_inc(CHAT_METRIC_PROMPT_TOKENS, provider, (uint64_t)(t->gen_res.prompt_tokens > 0 ? t->gen_res.prompt_tokens : 0));
    chat_metric_inc(CHAT_METRIC_GENERATION_TOKENS, provider,
                    (uint64_t)(t->gen_res.completion_tokens > 0 ? t->gen_res.completion_tokens : 0));
}

static char *run_metadata(chat_pipeline *p, chat_run *t, int *rc)
{
    const chat_llm_result *lr = &t->gen_res;
    const char *finish = lr->finish_reason[0] ? lr->finish_reason : "stop";
    *rc = 0;
    if (t->c.truncated) {
        finish = "length";
    } else if (t->gen_rc == CHAT_ECANCELLED || t->c.stopped) {
        finish = "cancelled";
    } else if (t->gen_rc) {
        const char *msg = t->gen_err[0] ? t->gen_err : "The language model failed";
        chat_log_warn("pipeline: generation failed (%s): %s", chat_strerror(t->gen_rc), msg);
        if (!t->c.first_token_us) {
            *rc = fail_event(&t->sink, t->gen_rc, CHAT_CODE_PROCESSING_ERROR, msg);
            return NULL;
        }
        finish = "error";
    }
    record_metrics(p, t, finish);
    char *metadata = build_metadata(t->agent, t->confidence, &t->kb, finish, lr, &t->c, t->retrieval_us,
                                    t->model_id[0] ? t->model_id : NULL, answered_by(p, lr));
    if (!metadata) *rc = fail_event(&t->sink, CHAT_ENOMEM, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
    return metadata;
}

/* Keeps the turns of a group of at most CHAT_MEMORY_BATCH_MAX runs (meta[i]: run i's metadata, NULL for
 * a run that ended already): in one statement where it can, else one by one (a new session's row first,
 * and alone); kept[i] gets each one's outcome as keep_turn gives it. */
static void keep_group(chat_pipeline *p, chat_run *const *runs, char *const *meta, size_t m, int *kept)
{
    chat_memory_turn turns[CHAT_MEMORY_BATCH_MAX];
    size_t idx[CHAT_MEMORY_BATCH_MAX], nb = 0;
    bool together = m > 1 && !(p->spool && chat_spool_pending(p->spool)); /* else after the spooled ones */
    for (size_t i = 0; i < m; i++) {
        chat_run *t = runs[i];
        if (!meta[i]) continue;
        if (!together || t->session.deferred) {
            kept[i] = keep_turn(p, t, meta[i]);
            continue;
        }
        turns[nb] = (chat_memory_turn){t->req->user->id, t->sid, run_request_id(t), t->req->message,
                                       t->c.response.data ? t->c.response.data : "", meta[i]};
        idx[nb++] = i;
    }
    char err[256];
    if (nb > 1 && !chat_memory_store_turns(p->db, turns, nb, err, sizeof err)) {
        for (size_t k = 0; k < nb; k++) {
            chat_run *t = runs[idx[k]];
            kept[idx[k]] = KEPT_STORED;
            if (t->session.touch_due && chat_memory_touch_session(p->db, t->req->user->id, t->sid, err, sizeof err))
                chat_log_warn("pipeline: touching the session failed: %s", err);
        }
        return;
    }
    if (nb > 1) chat_log_debug("pipeline: %zu turns not stored together (%s): one by one", nb, err);
    for (size_t k = 0; k < nb; k++)
        kept[idx[k]] = keep_turn(p, runs[idx[k]], meta[idx[k]]);
}

/* Ends runs whose outcome is recorded; rcs (may be NULL) gets each one's return code. */
static void end_runs(chat_pipeline *p, chat_run *const *runs, size_t n, int *rcs)
{
    for (size_t at = 0; at < n; at += CHAT_MEMORY_BATCH_MAX) {
        size_t m = n - at < CHAT_MEMORY_BATCH_MAX ? n - at : CHAT_MEMORY_BATCH_MAX;
        char *meta[CHAT_MEMORY_BATCH_MAX] = {0};
        int kept[CHAT_MEMORY_BATCH_MAX] = {0};
        for (size_t i = 0; i < m; i++) {
            int rc;
            log_context(runs[at + i]);
            meta[i] = run_metadata(p, runs[at + i], &rc);
            if (rcs) rcs[at + i] = rc;
        }
        if (m > 1) chat_log_context_clear(); /* the group's lines are about no one run */
        keep_group(p, runs + at, meta, m, kept);
        for (size_t i = 0; i < m; i++) {
            log_context(runs[at + i]);
            if (meta[i]) {
                int rc = end_turn(runs[at + i], meta[i], kept[i]);
                if (rcs) rcs[at + i] = rc;
            }
            free(meta[i]);
            turn_free(runs[at + i]);
        }
    }
    chat_log_context_clear();
}

void chat_pipeline_end_many(chat_pipeline *p, chat_run *const *runs, size_t n) { end_runs(p, runs, n, NULL); }

int chat_pipeline_end(chat_pipeline *p, chat_run *t, int gen_rc, const chat_llm_result *lr, const char *gen_err)
{
    chat_run_set_outcome(t, gen_rc, lr, gen_err);
    int rc;
    end_runs(p, &t, 1, &rc);
    return rc;
}

void chat_pipeline_generate(chat_pipeline *p, chat_run *t)
{
    char err[256] = "";
    chat_llm_result lr = {0};
    log_context(t);
    int rc = chat_llm_generate(p->llm, &t->lreq, chat_run_token, t, t->cancel, &lr, err, sizeof err);
    chat_log_context_clear();
    chat_run_set_outcome(t, rc, &lr, err);
}

void chat_run_abandon(chat_run *t) { turn_free(t); }

int chat_pipeline_run(chat_pipeline *p, const chat_request *req, const chat_sink *sink, const atomic_int *cancel)
{
    int rc = 0;
    chat_run *t = chat_pipeline_begin(p, req, sink, cancel, &rc);
    if (!t) return rc;
    char err[256] = "";
    chat_llm_result lr = {0};
    log_context(t);
    int grc = chat_llm_generate(p->llm, &t->lreq, chat_run_token, t, cancel, &lr, err, sizeof err);
    chat_log_context_clear();
    return chat_pipeline_end(p, t, grc, &lr, err);
}
