/* The orchestration pipeline end to end inside one process, against the real MariaDB with the sample
 * knowledge base and the extractive provider: event order, metadata, grounded answers for the facts of
 * tests/data/extractive_facts.tsv, follow-ups, session ownership, idempotent turns, cancellation at each
 * stage, a database outage, every turn kept before its complete (stored, spooled while the database is
 * away and replayed, or NOT_STORED), and the openai provider against the fake LLM server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <pthread.h>
#include <unistd.h>

#include "chat_agent_cfg.h"
#include "chat_common.h"
#include "chat_memory.h"
#include "chat_pipeline.h"
#include "chat_proto.h"
#include "chat_spool.h"
#include "chat_util.h"
#include "testutil.h"

typedef struct events {
    char steps[8][24];
    int n_steps;
    chat_buf tokens;
    int n_tokens;
    char *response;
    char session_id[80];
    json_object *metadata;
    char error_code[40];
    char error_message[256];
    int terminals;
    /* cancellation hooks */
    atomic_int *cancel;
    const char *cancel_at_step;
    int cancel_after_tokens;
} events;

static void ev_init(events *e)
{
    memset(e, 0, sizeof *e);
    chat_buf_init(&e->tokens);
}

static void ev_clear(events *e)
{
    chat_buf_free(&e->tokens);
    free(e->response);
    if (e->metadata) json_object_put(e->metadata);
}

static void on_progress(void *ud, const char *step, const char *message)
{
    events *e = ud;
    assert_true(e->n_steps < 8);
    snprintf(e->steps[e->n_steps++], sizeof e->steps[0], "%s", step);
    assert_true(message && *message);
    if (e->cancel_at_step && !strcmp(step, e->cancel_at_step)) atomic_store(e->cancel, 1);
}

static int on_token(void *ud, const char *text, size_t len)
{
    events *e = ud;
    assert_true(chat_utf8_valid(text, len));
    chat_buf_append(&e->tokens, text, len);
    e->n_tokens++;
    if (e->cancel_after_tokens && e->n_tokens == e->cancel_after_tokens) atomic_store(e->cancel, 1);
    return 0;
}

static void on_complete(void *ud, const char *response, const char *session_id, const char *metadata)
{
    events *e = ud;
    e->terminals++;
    e->response = strdup(response);
    snprintf(e->session_id, sizeof e->session_id, "%s", session_id);
    e->metadata = json_tokener_parse(metadata);
    assert_non_null(e->metadata);
}

static void on_error(void *ud, const char *code, const char *message)
{
    events *e = ud;
    e->terminals++;
    snprintf(e->error_code, sizeof e->error_code, "%s", code);
    snprintf(e->error_message, sizeof e->error_message, "%s", message);
}

static chat_pipeline *pipe_extractive;
static chat_user alice = {"user-alice", "alice@example.com", "Alice", 0};
static chat_user bob = {"user-bob", "bob@example.com", "Bob", 0};

static int setup(void **state)
{
    pipe_extractive = testutil_pipeline_sample("pipeline"); /* a staff desk: the facts table names many customers */
    return 0;
}

static int teardown(void **state)
{
    chat_pipeline_free(pipe_extractive);
    return 0;
}

/* This file's configuration with the extractive model. */
static chat_config extractive_config(void)
{
    chat_config cfg = testutil_config("pipeline");
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "extractive");
    return cfg;
}

/* A pipeline of cfg (the caller frees it); fails the test, with chat_pipeline_new's reason, without. */
static chat_pipeline *pipeline_of(const chat_config *cfg)
{
    char err[256];
    chat_pipeline *p = chat_pipeline_new(cfg, err, sizeof err);
    if (!p) fail_msg("chat_pipeline_new: %s", err);
    return p;
}

static int run(chat_pipeline *p, events *e, const chat_user *u, const char *msg, const char *session,
               const char *customer, const char *request_id, atomic_int *cancel)
{
    chat_request req = {msg, session, customer, u, request_id, 0, false};
    chat_sink sink = {e, on_progress, on_token, on_complete, on_error};
    e->cancel = cancel;
    return chat_pipeline_run(p, &req, &sink, cancel);
}

/* A question of alice's on pipe_extractive, in a new session, nothing else set: run's result. */
static int ask_alice(events *e, const char *msg)
{
    return run(pipe_extractive, e, &alice, msg, NULL, NULL, NULL, NULL);
}

static const char *meta_str(json_object *m, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(m, key, &v) ? json_object_get_string(v) : NULL;
}

/* metadata.context.model (the boat the turn was read as about) is want. */
static void assert_context_model(json_object *m, const char *want)
{
    json_object *ctx, *model;
    assert_true(json_object_object_get_ex(m, "context", &ctx));
    assert_true(json_object_object_get_ex(ctx, "model", &model));
    assert_string_equal(json_object_get_string(model), want);
}

static double meta_confidence(json_object *m)
{
    json_object *v;
    assert_true(json_object_object_get_ex(m, "confidence", &v));
    return json_object_get_double(v);
}

static void test_event_order_and_metadata(void **state)
{
    events e;
    ev_init(&e);
    assert_int_equal(ask_alice(&e, "What is the engine power of the Seawind 250?"), 0);
    const char *order[] = {"starting", "agent_routing", "rag_retrieval", "generating"};
    assert_int_equal(e.n_steps, 4);
    for (int i = 0; i < 4; i++) assert_string_equal(e.steps[i], order[i]);
    assert_int_equal(e.terminals, 1);
    assert_true(e.n_tokens > 5);
    assert_string_equal(e.response, e.tokens.data);
    assert_int_equal(strlen(e.session_id), 36); /* a new UUID */
    assert_string_equal(meta_str(e.metadata, "agent"), "specs");
    assert_string_equal(meta_str(e.metadata, "finish_reason"), "stop");
    double c = meta_confidence(e.metadata);
    assert_true(c > 0.3 && c <= 1.0);
    json_object *ctx, *sources, *usage, *timings, *v;
    assert_true(json_object_object_get_ex(e.metadata, "context", &ctx));
    assert_true(json_object_object_get_ex(ctx, "sources", &sources));
    assert_true(json_object_array_length(sources) >= 1);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(sources, 0)), "seawind-250/specs.md");
    assert_true(json_object_object_get_ex(e.metadata, "usage", &usage));
    assert_true(json_object_object_get_ex(usage, "completion_tokens", &v));
    assert_int_equal(json_object_get_int(v), e.n_tokens);
    assert_true(json_object_object_get_ex(e.metadata, "timings", &timings));
    assert_true(json_object_object_get_ex(timings, "first_token_ms", &v));
    double first = json_object_get_double(v);
    assert_true(first >= 0);
    /* the stages end after the session and retrieval, and before the first token */
    double stages = 0;
    for (const char *const *k = (const char *const[]){"session_ms", "retrieval_ms", NULL}; *k; k++) {
        assert_true(json_object_object_get_ex(timings, *k, &v));
        stages += json_object_get_double(v);
    }
    assert_true(json_object_object_get_ex(timings, "ready_ms", &v));
    assert_true(json_object_get_double(v) >= stages - 0.002 && json_object_get_double(v) <= first);
    assert_true(json_object_object_get_ex(timings, "total_ms", &v));
    assert_true(strstr(e.response, "seawind-250/specs.md") != NULL); /* cites its source */
    ev_clear(&e);
}

/* A row of tests/data/extractive_facts.tsv: customer (or "-")<TAB>question<TAB>fact that the answer must
 * contain; true when it does. */
static bool fact_row(char **row, void *ud)
{
    const char *line = row[0], *q = row[1], *fact = row[2];
    const char *customer = strcmp(line, "-") ? line : NULL;
    events e;
    ev_init(&e);
    assert_int_equal(run(pipe_extractive, &e, &alice, q, NULL, customer, NULL, NULL), 0);
    bool found = e.response && strstr(e.response, fact);
    if (!found)
        print_message("missing fact '%s' for '%s' (customer %s): %s\n", fact, q, line, e.response ? e.response : "");
    ev_clear(&e);
    return found;
}

static void test_extractive_facts(void **state)
{
    testutil_tsv_score("tests/data/extractive_facts.tsv", "extractive facts", 3, fact_row, NULL, 12, 100);
}

/* How the extractive answer is shaped: the asked fault code only, small talk, and honesty. */
static void test_extractive_behaviour(void **state)
{
    static const struct {
        const char *question;
        const char *must;     /* substring the answer contains */
        const char *must_not; /* substring it must not contain, or NULL */
    } cases[] = {
        {"What does fault code E42 mean?", "E42", "E63"},
        {"my display shows e71", "E71", "E42"},
        {"hello", "Seawind Marine assistant", "Sources:"},
        {"thanks!", "Seawind Marine assistant", "Sources:"},
        {"xyzzy plugh frobnicate", "could not find an answer", "Sources:"},
        {"What is the engine power of the Seawind 190?", "150 hp", "Seawind 250"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        events e;
        ev_init(&e);
        assert_int_equal(run(pipe_extractive, &e, &alice, cases[i].question, NULL, NULL, NULL, NULL), 0);
        if (!strstr(e.response, cases[i].must)) fail_msg("'%s': missing '%s' in: %s", cases[i].question, cases[i].must, e.response);
        if (cases[i].must_not && strstr(e.response, cases[i].must_not))
            fail_msg("'%s': unexpected '%s' in: %s", cases[i].question, cases[i].must_not, e.response);
        ev_clear(&e);
    }
}

static void test_follow_up_uses_history(void **state)
{
    events a, b;
    ev_init(&a);
    ev_init(&b);
    assert_int_equal(ask_alice(&a, "Tell me about the Seawind 280 engine"), 0);
    assert_int_equal(run(pipe_extractive, &b, &alice, "and its torque?", a.session_id, NULL, NULL, NULL), 0);
    assert_string_equal(b.session_id, a.session_id);
    assert_context_model(b.metadata, "seawind-280");
    assert_non_null(strstr(b.response, "280"));
    assert_non_null(strstr(b.response, "Nm"));
    ev_clear(&a);
    ev_clear(&b);
}

/* metadata.context.model, or NULL when the turn was read as about no boat. */
static const char *context_model(json_object *m)
{
    json_object *ctx, *model;
    if (!json_object_object_get_ex(m, "context", &ctx) || !json_object_object_get_ex(ctx, "model", &model)) return NULL;
    return json_object_get_string(model);
}

/* The model alice's question on p is read as about (metadata.context.model) is want. */
static void assert_model_read(chat_pipeline *p, const char *question, const char *want)
{
    events e;
    ev_init(&e);
    assert_int_equal(run(p, &e, &alice, question, NULL, NULL, NULL, NULL), 0);
    assert_context_model(e.metadata, want);
    ev_clear(&e);
}

/* A line of any length: with 87 models (the sample's 7 and 80 more), a question names the last of them
 * by its name in any case, or by its number. */
static void test_long_line_of_models(void **state)
{
    chat_pipeline *p = testutil_pipeline_sample("pipeline_line");
    testutil_sql(chat_pipeline_db(p), "INSERT INTO models (id, name, category) SELECT CONCAT('zephyr-', seq),"
                                      " CONCAT('Zephyr ', seq), 'test' FROM seq_100_to_179");
    assert_int_equal(testutil_count(chat_pipeline_db(p), "SELECT COUNT(*) FROM models", NULL), 87);
    assert_model_read(p, "What is the top speed of the Zephyr 178?", "zephyr-178");
    assert_model_read(p, "how much does the ZEPHYR 179 weigh", "zephyr-179");
    assert_model_read(p, "How long is the 177?", "zephyr-177");
    assert_model_read(p, "What is the top speed of the Seawind 250?", "seawind-250");
    chat_pipeline_free(p);
}

/* bob naming alice's session id gets a normal answer in a conversation of his own: nothing of alice's
 * history reaches his context (his follow-up is not read as about her boat), hers is unchanged, and the
 * two are stored apart. */
static void test_session_id_of_another_user(void **state)
{
    events a, b, c;
    ev_init(&a);
    ev_init(&b);
    ev_init(&c);
    assert_int_equal(run(pipe_extractive, &a, &alice, "Tell me about the Seawind 280 engine", "alice-private-1", NULL,
                         NULL, NULL),
                     0);
    assert_string_equal(a.session_id, "alice-private-1");
    assert_context_model(a.metadata, "seawind-280");
    assert_int_equal(run(pipe_extractive, &b, &bob, "and its torque?", "alice-private-1", NULL, NULL, NULL), 0);
    assert_string_equal(b.session_id, "alice-private-1");
    assert_string_equal(b.error_code, "");
    assert_non_null(b.response);
    const char *model = context_model(b.metadata);
    if (model && !strcmp(model, "seawind-280")) fail_msg("bob's turn was read with alice's history: %s", b.response);
    /* his answer is the one a conversation of his with no history gets, word for word */
    events fresh;
    ev_init(&fresh);
    assert_int_equal(run(pipe_extractive, &fresh, &bob, "and its torque?", "bob-fresh-1", NULL, NULL, NULL), 0);
    assert_non_null(fresh.response);
    assert_string_equal(b.response, fresh.response);
    ev_clear(&fresh);
    /* alice's follow-up still has her history */
    assert_int_equal(run(pipe_extractive, &c, &alice, "and its torque?", "alice-private-1", NULL, NULL, NULL), 0);
    assert_context_model(c.metadata, "seawind-280");
    chat_db *d = chat_pipeline_db(pipe_extractive);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE session_id = 'alice-private-1'"
                                       " AND user_id = ?", alice.id),
                     4);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE session_id = 'alice-private-1'"
                                       " AND user_id = ?", bob.id),
                     2);
    ev_clear(&a);
    ev_clear(&b);
    ev_clear(&c);
}

static void test_turn_stored_once(void **state)
{
    events a, b;
    ev_init(&a);
    ev_init(&b);
    assert_int_equal(run(pipe_extractive, &a, &alice, "Warranty length?", "retry-session", NULL, "req-42", NULL), 0);
    assert_int_equal(run(pipe_extractive, &b, &alice, "Warranty length?", "retry-session", NULL, "req-42", NULL), 0);
    assert_int_equal(testutil_count(chat_pipeline_db(pipe_extractive),
                                    "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", "retry-session"),
                     2);
    ev_clear(&a);
    ev_clear(&b);
}

static long long messages_in(const char *sid)
{
    return testutil_count(chat_pipeline_db(pipe_extractive), "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?",
                          sid);
}

/* A new session named by the caller (session_new: the streamer's UUID): the answer carries that id, and the
 * session is created with its turn, the caller's; another user naming the id has a conversation of his
 * own, and a chosen id the caller has already (a collision) never joins the turn to the earlier one. */
static void test_session_new_chosen_id(void **state)
{
    events a, b, c;
    ev_init(&a), ev_init(&b), ev_init(&c);
    chat_sink sink = {&a, on_progress, on_token, on_complete, on_error};
    chat_request req = {"What is the engine power of the Seawind 250?", "chosen-by-streamer-1", NULL, &alice, NULL, 0,
                        true};
    assert_int_equal(chat_pipeline_run(pipe_extractive, &req, &sink, NULL), 0);
    assert_string_equal(a.session_id, "chosen-by-streamer-1");
    assert_int_equal(messages_in("chosen-by-streamer-1"), 2);
    /* bob's turn goes to a session of his own; alice continues hers */
    assert_int_equal(run(pipe_extractive, &b, &bob, "Hello", "chosen-by-streamer-1", NULL, NULL, NULL), 0);
    assert_int_equal(run(pipe_extractive, &c, &alice, "And its fuel capacity?", "chosen-by-streamer-1", NULL, NULL, NULL),
                     0);
    assert_context_model(c.metadata, "seawind-250");
    chat_db *db = chat_pipeline_db(pipe_extractive);
    const char *mine = "SELECT COUNT(*) FROM chat_messages WHERE session_id = 'chosen-by-streamer-1' AND user_id = ?";
    assert_int_equal(testutil_count(db, mine, alice.id), 4);
    assert_int_equal(testutil_count(db, mine, bob.id), 2);
    /* alice's "new" session with an id she has already: not stored into the earlier conversation */
    events d;
    ev_init(&d);
    sink.ud = &d;
    chat_request taken = {"Hello", "chosen-by-streamer-1", NULL, &alice, NULL, 0, true};
    chat_pipeline_run(pipe_extractive, &taken, &sink, NULL);
    assert_int_equal(testutil_count(db, mine, alice.id), 4);
    ev_clear(&a), ev_clear(&b), ev_clear(&c), ev_clear(&d);
}

static void test_confidence_varies(void **state)
{
    events clear, vague;
    ev_init(&clear);
    ev_init(&vague);
    assert_int_equal(ask_alice(&clear, "What does fault code E42 mean?"), 0);
    assert_int_equal(ask_alice(&vague, "hmm ok"), 0);
    double c1 = meta_confidence(clear.metadata), c2 = meta_confidence(vague.metadata);
    print_message("confidence: clear %.2f, vague %.2f\n", c1, c2);
    assert_true(c1 > c2 + 0.2);
    assert_string_equal(meta_str(clear.metadata, "agent"), "troubleshooting");
    ev_clear(&clear);
    ev_clear(&vague);
}

/* Cancelling at each stage ends with complete, finish_reason cancelled, and no further events. */
static void test_cancel_each_stage(void **state)
{
    const char *stages[] = {"starting", "agent_routing", "rag_retrieval", "generating"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(stages) + 1; i++) {
        atomic_int cancel = 0;
        events e;
        ev_init(&e);
        if (i < CHAT_ARRAY_LEN(stages)) e.cancel_at_step = stages[i];
        else e.cancel_after_tokens = 3;
        assert_int_equal(run(pipe_extractive, &e, &alice, "What is the top speed of the Seawind 310?", NULL, NULL,
                             NULL, &cancel),
                         0);
        assert_int_equal(e.terminals, 1);
        assert_string_equal(meta_str(e.metadata, "finish_reason"), "cancelled");
        if (i < CHAT_ARRAY_LEN(stages)) {
            assert_int_equal(e.n_tokens, 0);
            assert_int_equal(e.n_steps, (int)i + 1); /* nothing after the stage that cancelled */
        } else {
            assert_int_equal(e.n_tokens, 3);
            assert_string_equal(e.response, e.tokens.data); /* the partial answer */
        }
        ev_clear(&e);
    }
}

/* CHAT_CUSTOMER_ACCESS=own (the default): only the customer whose email is the token's. */
static void test_customer_access_own(void **state)
{
    chat_config cfg = extractive_config();
    assert_string_equal(cfg.customer_access, "own");
    chat_pipeline *p = pipeline_of(&cfg);
    chat_user daniel = {"user-daniel", "Daniel.Okafor@example.com", "Daniel", 0}; /* cust-1001's email */
    events e;
    ev_init(&e);
    assert_int_equal(run(p, &e, &daniel, "What is the engine power?", "own-1", "cust-1001", NULL, NULL), 0);
    assert_non_null(strstr(e.response, "250 hp"));
    ev_clear(&e);
    static const char *const refused[] = {"cust-1001", "cust-1002", "cust-9999"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(refused); i++) {
        const chat_user *u = i == 0 ? &alice : &daniel;
        ev_init(&e);
        assert_int_equal(run(p, &e, u, "When is my next service?", "own-2", refused[i], NULL, NULL), CHAT_EFORBIDDEN);
        assert_string_equal(e.error_code, "CUSTOMER_FORBIDDEN");
        assert_int_equal(e.n_tokens, 0);
        assert_int_equal(e.n_steps, 1); /* refused before anything else ran */
        ev_clear(&e);
    }
    /* nothing was stored for the refused requests */
    assert_int_equal(testutil_count(chat_pipeline_db(p), "SELECT COUNT(*) FROM chat_sessions WHERE id = ?", "own-2"), 0);
    chat_pipeline_free(p);
}

static void test_database_down(void **state)
{
    chat_config cfg = testutil_config("pipeline");
    snprintf(cfg.db_socket, sizeof cfg.db_socket, "/nonexistent/mariadb.sock");
    chat_pipeline *p = pipeline_of(&cfg); /* starts while the database is down */
    events e;
    ev_init(&e);
    assert_int_equal(run(p, &e, &alice, "engine power?", NULL, NULL, NULL, NULL), CHAT_EDB);
    assert_string_equal(e.error_code, "PROCESSING_ERROR");
    assert_null(strstr(e.error_message, "nonexistent")); /* no internals leak */
    assert_int_equal(e.terminals, 1);
    ev_clear(&e);
    chat_pipeline_free(p);
}

/* The run in two halves (the worker's way): chat_pipeline_begin on one pipeline, the model elsewhere,
 * chat_pipeline_end on another pipeline. Between the halves the first pipeline serves other requests;
 * the events are those of chat_pipeline_run; the turn is stored (a follow-up sees it); a request refused
 * in the first half, or a model failing before its first token, ends with an error event and no turn. */
static void test_begin_end_split(void **state)
{
    chat_config cfg = extractive_config();
    chat_pipeline *other = pipeline_of(&cfg);
    char err[256];
    chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
    assert_non_null(llm);

    events e;
    ev_init(&e);
    chat_request req = {"What is the engine power of the Seawind 250?", NULL, NULL, &alice, NULL, 0, false};
    chat_sink sink = {&e, on_progress, on_token, on_complete, on_error};
    int rc = -1;
    chat_run *r = chat_pipeline_begin(pipe_extractive, &req, &sink, NULL, &rc);
    assert_non_null(r);
    assert_int_equal(rc, 0);
    assert_int_equal(e.n_steps, 4);
    assert_string_equal(e.steps[3], "generating");
    assert_int_equal(e.terminals, 0);

    events e2; /* the first pipeline is free between the halves */
    ev_init(&e2);
    assert_int_equal(run(pipe_extractive, &e2, &bob, "How often should I change the oil?", NULL, NULL, NULL, NULL), 0);
    assert_int_equal(e2.terminals, 1);
    assert_non_null(e2.response);
    ev_clear(&e2);

    chat_llm_result lr;
    int grc = chat_llm_generate(llm, chat_run_llm_request(r), chat_run_token, r, NULL, &lr, err, sizeof err);
    assert_int_equal(grc, 0);
    assert_true(e.n_tokens > 5);
    assert_int_equal(e.terminals, 0);
    assert_int_equal(chat_pipeline_end(other, r, grc, &lr, err), 0);
    assert_int_equal(e.terminals, 1);
    assert_string_equal(e.response, e.tokens.data);
    assert_non_null(strstr(e.response, "hp"));
    assert_string_equal(meta_str(e.metadata, "finish_reason"), "stop");
    assert_string_equal(meta_str(e.metadata, "agent"), "specs");

    /* stored: a follow-up on the session sees the model from its history */
    events f;
    ev_init(&f);
    assert_int_equal(run(other, &f, &alice, "And its fuel capacity?", e.session_id, NULL, NULL, NULL), 0);
    assert_string_equal(f.session_id, e.session_id);
    assert_context_model(f.metadata, "seawind-250");
    ev_clear(&f);

    /* refused in the first half: the error event, no run */
    events g;
    ev_init(&g);
    chat_request bad = {"Hello", "bad session id", NULL, &bob, NULL, 0, false};
    sink.ud = &g;
    assert_null(chat_pipeline_begin(pipe_extractive, &bad, &sink, NULL, &rc));
    assert_int_equal(rc, CHAT_EINVAL);
    assert_int_equal(g.terminals, 1);
    assert_string_equal(g.error_code, CHAT_CODE_INVALID_REQUEST);
    ev_clear(&g);

    /* the model failed before any text: an error event with the model's message */
    events h;
    ev_init(&h);
    sink.ud = &h;
    chat_request req3 = {"What is the beam of the Seawind 250?", NULL, NULL, &alice, NULL, 0, false};
    r = chat_pipeline_begin(pipe_extractive, &req3, &sink, NULL, &rc);
    assert_non_null(r);
    chat_llm_result failed = {.finish_reason = "error"};
    assert_int_equal(chat_pipeline_end(other, r, CHAT_ELLM, &failed, "LLM provider unavailable (HTTP 503)"), CHAT_ELLM);
    assert_int_equal(h.terminals, 1);
    assert_string_equal(h.error_code, CHAT_CODE_PROCESSING_ERROR);
    assert_string_equal(h.error_message, "LLM provider unavailable (HTTP 503)");
    ev_clear(&h);

    /* accepted_us: the timings count from the caller's acceptance */
    events q;
    ev_init(&q);
    sink.ud = &q;
    chat_request req4 = {"Hello", NULL, NULL, &alice, NULL, chat_now_us() - 50000, false};
    r = chat_pipeline_begin(pipe_extractive, &req4, &sink, NULL, &rc);
    assert_non_null(r);
    grc = chat_llm_generate(llm, chat_run_llm_request(r), chat_run_token, r, NULL, &lr, err, sizeof err);
    assert_int_equal(chat_pipeline_end(pipe_extractive, r, grc, &lr, err), 0);
    json_object *timings, *queue;
    assert_true(json_object_object_get_ex(q.metadata, "timings", &timings));
    assert_true(json_object_object_get_ex(timings, "queue_ms", &queue));
    assert_true(json_object_get_double(queue) >= 50.0);
    ev_clear(&q);

    ev_clear(&e);
    chat_llm_free(llm);
    chat_pipeline_free(other);
}

/* Several runs ended together (the worker under load): each gets its own terminal event, in order (a
 * model that failed before any text: error; the others: complete), and every stored turn is in its
 * session's history, whether the session is new (its row written first) or not. */
static void test_end_many(void **state)
{
    events first;
    ev_init(&first);
    assert_int_equal(ask_alice(&first, "What is the engine power of the Seawind 250?"), 0);
    enum { N = 4 };
    static const char *const questions[N] = {"And its fuel capacity?", "How often should I change the oil?",
                                             "What is the beam of the Seawind 250?", "And its weight?"};
    events e[N];
    chat_request req[N];
    chat_run *runs[N];
    for (int i = 0; i < N; i++) {
        ev_init(&e[i]);
        /* 0 and 3 continue alice's conversation, 1 and 2 start new ones */
        req[i] = (chat_request){questions[i], i == 0 || i == 3 ? first.session_id : NULL, NULL, &alice, NULL, 0, false};
        chat_sink sink = {&e[i], on_progress, on_token, on_complete, on_error};
        int rc = -1;
        runs[i] = chat_pipeline_begin(pipe_extractive, &req[i], &sink, NULL, &rc);
        assert_non_null(runs[i]);
        if (i == 2) {
            chat_llm_result failed = {.finish_reason = "error"};
            chat_run_set_outcome(runs[i], CHAT_ELLM, &failed, "LLM provider unavailable (HTTP 503)");
        } else {
            chat_pipeline_generate(pipe_extractive, runs[i]);
        }
        assert_int_equal(e[i].terminals, 0);
    }
    chat_pipeline_end_many(pipe_extractive, runs, N);
    for (int i = 0; i < N; i++) assert_int_equal(e[i].terminals, 1);
    assert_string_equal(e[2].error_code, CHAT_CODE_PROCESSING_ERROR);
    assert_string_equal(e[2].error_message, "LLM provider unavailable (HTTP 503)");
    for (int i = 0; i < N; i++) {
        if (i == 2) continue;
        assert_non_null(e[i].response);
        assert_string_equal(e[i].response, e[i].tokens.data);
        assert_string_equal(meta_str(e[i].metadata, "finish_reason"), "stop");
    }
    assert_string_equal(e[0].session_id, first.session_id);
    assert_string_equal(e[3].session_id, first.session_id);

    /* stored: alice's conversation has its three turns, the new one its first */
    chat_db *d = chat_pipeline_db(pipe_extractive);
    chat_history h;
    char err[256];
    assert_int_equal(testutil_history(d, first.session_id, 10, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 6);
    assert_string_equal(h.items[2].content, questions[0]);
    assert_string_equal(h.items[4].content, questions[3]);
    chat_history_clear(&h);
    assert_int_equal(testutil_history(d, e[1].session_id, 10, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 2);
    assert_string_equal(h.items[0].content, questions[1]);
    chat_history_clear(&h);
    for (int i = 0; i < N; i++) ev_clear(&e[i]);
    ev_clear(&first);
}

/* ---- every turn kept before its complete: stored, spooled, or NOT_STORED ---- */

static bool meta_stored(json_object *m, bool *stored)
{
    json_object *v;
    if (!json_object_object_get_ex(m, "stored", &v) || !json_object_is_type(v, json_type_boolean)) return false;
    *stored = json_object_get_boolean(v);
    return true;
}

/* complete says the turn is stored; the history keeps its metadata without the flag. */
static void test_stored_flag(void **state)
{
    events e;
    ev_init(&e);
    assert_int_equal(run(pipe_extractive, &e, &alice, "How often should I change the oil?", "stored-flag", NULL, NULL,
                         NULL),
                     0);
    bool stored = false;
    assert_true(meta_stored(e.metadata, &stored));
    assert_true(stored);
    assert_int_equal(testutil_count(chat_pipeline_db(pipe_extractive),
                                    "SELECT COUNT(*) FROM chat_messages WHERE session_id = ? AND role = 'assistant'"
                                    " AND metadata NOT LIKE '%stored%'",
                                    "stored-flag"),
                     1);
    ev_clear(&e);
}

/* A pipeline of pipe_extractive's configuration whose database is unreachable, with spool (may be NULL). */
static chat_pipeline *pipeline_away(chat_spool *spool)
{
    chat_config cfg = extractive_config();
    snprintf(cfg.customer_access, sizeof cfg.customer_access, "any");
    snprintf(cfg.db_socket, sizeof cfg.db_socket, "/nonexistent/mariadb.sock");
    chat_pipeline *p = pipeline_of(&cfg);
    if (spool) chat_pipeline_use_spool(p, spool);
    return p;
}

/* An answer begun and generated on pipe_extractive, ended on end (the worker's way: another stage
 * thread's pipeline), the database gone in between when end's is unreachable. before_end (may be NULL)
 * runs between the halves. */
static void answer_ended_on(chat_pipeline *end, events *e, const char *msg, const char *session,
                            void (*before_end)(void))
{
    chat_request req = {msg, session, NULL, &alice, NULL, 0, false};
    chat_sink sink = {e, on_progress, on_token, on_complete, on_error};
    int rc = -1;
    chat_run *r = chat_pipeline_begin(pipe_extractive, &req, &sink, NULL, &rc);
    assert_non_null(r);
    chat_pipeline_generate(pipe_extractive, r);
    if (before_end) before_end();
    chat_pipeline_end_many(end, &r, 1);
    assert_int_equal(e->terminals, 1);
}

static chat_spool *open_spool(const char *dir_name)
{
    chat_config cfg = testutil_config("pipeline");
    snprintf(cfg.spool_dir, sizeof cfg.spool_dir, "%s", testutil_fresh_dir(dir_name));
    chat_spool *s = NULL;
    char err[256];
    assert_int_equal(chat_spool_open(&cfg, "test", false, &s, err, sizeof err), 0);
    assert_non_null(s);
    return s;
}

/* Answers ending while the database is away are spooled and say so ("stored": false), for a session that
 * exists and for a new one; a turn ending meanwhile on a pipeline whose database answers goes after them
 * (stored false too); the replay then stores all three, in order, the new session owned by its user. */
static void test_spooled_while_database_away(void **state)
{
    chat_spool *spool = open_spool("pipeline-spool");
    chat_pipeline *away = pipeline_away(spool);
    chat_db *d = chat_pipeline_db(pipe_extractive);
    events a, b, c;
    ev_init(&a), ev_init(&b), ev_init(&c);
    answer_ended_on(away, &a, "What is the engine power of the Seawind 250?", "spooled-session", NULL);
    answer_ended_on(away, &b, "How often should I change the oil?", NULL, NULL);
    bool stored = true;
    assert_non_null(a.response);
    assert_true(meta_stored(a.metadata, &stored));
    assert_false(stored);
    stored = true;
    assert_non_null(b.response);
    assert_true(meta_stored(b.metadata, &stored));
    assert_false(stored);
    assert_int_equal(strlen(b.session_id), 36);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", "spooled-session"), 0);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_sessions WHERE id = ?", b.session_id), 0);
    assert_int_equal(chat_spool_waiting(spool), 2);

    chat_pipeline_use_spool(pipe_extractive, spool);
    answer_ended_on(pipe_extractive, &c, "And its fuel capacity?", "spooled-session", NULL);
    chat_pipeline_use_spool(pipe_extractive, NULL);
    stored = true;
    assert_true(meta_stored(c.metadata, &stored));
    assert_false(stored);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", "spooled-session"), 0);

    size_t n = 0;
    char err[256];
    assert_int_equal(chat_spool_replay(spool, d, &n, err, sizeof err), 0);
    assert_int_equal(n, 3);
    chat_history h;
    assert_int_equal(testutil_history(d, "spooled-session", 10, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 4);
    assert_string_equal(h.items[0].content, "What is the engine power of the Seawind 250?");
    assert_string_equal(h.items[1].content, a.response);
    assert_string_equal(h.items[2].content, "And its fuel capacity?");
    chat_history_clear(&h);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_sessions WHERE id = ? AND user_id = 'user-alice'",
                                    b.session_id),
                     1);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", b.session_id), 2);
    ev_clear(&a), ev_clear(&b), ev_clear(&c);
    chat_pipeline_free(away);
    chat_spool_free(spool);
}

static void delete_doomed_session(void) { testutil_sql(chat_pipeline_db(pipe_extractive), "DELETE FROM chat_sessions WHERE id = 'doomed-session'"); }

/* A turn that can be neither stored nor spooled ends with NOT_STORED instead of complete: no spool
 * while the database is away, or a turn the database refuses (its session deleted during the answer),
 * which is not spooled either. */
static void test_not_stored(void **state)
{
    chat_pipeline *away = pipeline_away(NULL);
    events e;
    ev_init(&e);
    answer_ended_on(away, &e, "What is the engine power of the Seawind 250?", "not-stored-session", NULL);
    assert_null(e.response);
    assert_string_equal(e.error_code, "NOT_STORED");
    assert_string_equal(e.error_message, "The answer could not be saved to the conversation, please ask again");
    assert_true(e.n_tokens > 5); /* the answer streamed before */
    ev_clear(&e);
    chat_pipeline_free(away);

    chat_spool *spool = open_spool("pipeline-refused");
    chat_pipeline_use_spool(pipe_extractive, spool);
    ev_init(&e);
    answer_ended_on(pipe_extractive, &e, "How often should I change the oil?", "doomed-session", delete_doomed_session);
    chat_pipeline_use_spool(pipe_extractive, NULL);
    assert_null(e.response);
    assert_string_equal(e.error_code, "NOT_STORED");
    assert_false(chat_spool_pending(spool));
    ev_clear(&e);
    chat_spool_free(spool);
}

/* The openai provider against the fake LLM server: prompt with history reaches the model, tokens stream. */
static void test_openai_provider(void **state)
{
    int port = 0;
    pid_t pid = testutil_fake_llm_start(&port);
    assert_true(pid > 0);

    chat_config cfg = testutil_config_fake_llm("pipeline", port, "fake-ok");
    chat_pipeline *p = pipeline_of(&cfg);
    events e;
    ev_init(&e);
    assert_int_equal(run(p, &e, &alice, "What is the beam of the Seawind 340?", NULL, NULL, NULL, NULL), 0);
    assert_true(e.n_tokens > 3);
    assert_non_null(strstr(e.response, "beam")); /* the fake echoes the user's words */
    assert_string_equal(meta_str(e.metadata, "provider"), "openai");
    ev_clear(&e);
    /* a provider failure before any token is an error event */
    snprintf(cfg.llm_model, sizeof cfg.llm_model, "fake-401");
    chat_pipeline *p2 = pipeline_of(&cfg);
    ev_init(&e);
    assert_int_not_equal(run(p2, &e, &alice, "engine power?", NULL, NULL, NULL, NULL), 0);
    assert_string_equal(e.error_code, "PROCESSING_ERROR");
    ev_clear(&e);
    chat_pipeline_free(p2);
    /* a provider that ignores max_tokens is cut at the answer's size limit: finish_reason length */
    snprintf(cfg.llm_model, sizeof cfg.llm_model, "fake-endless");
    cfg.llm_max_tokens = 100; /* limit: 16 KB */
    chat_pipeline *p3 = pipeline_of(&cfg);
    ev_init(&e);
    assert_int_equal(run(p3, &e, &alice, "engine power?", NULL, NULL, NULL, NULL), 0);
    assert_string_equal(meta_str(e.metadata, "finish_reason"), "length");
    assert_true(strlen(e.response) <= 16384 && strlen(e.response) > 8000);
    ev_clear(&e);
    chat_pipeline_free(p3);
    chat_pipeline_free(p);
    testutil_fake_llm_stop(pid);
}

/* metadata.attempts[i] as "provider/model/outcome" ("-" for a null model). */
static void attempt_str(json_object *meta, size_t i, char *out, size_t outlen)
{
    json_object *a, *at, *model;
    assert_true(json_object_object_get_ex(meta, "attempts", &a));
    assert_true(i < json_object_array_length(a));
    at = json_object_array_get_idx(a, i);
    assert_true(json_object_object_get_ex(at, "model", &model));
    assert_true(meta_str(at, "ms") != NULL);
    snprintf(out, outlen, "%s/%s/%s", meta_str(at, "provider"), model ? json_object_get_string(model) : "-",
             meta_str(at, "outcome"));
}

/* A provider that is down before its first token: the chain's fallbacks answer, the complete event says
 * which one did and lists every attempt. */
static void test_fallback_in_metadata(void **state)
{
    int port = 0;
    pid_t pid = testutil_fake_llm_start(&port);
    assert_true(pid > 0);
    chat_config cfg = testutil_config_fake_llm("pipeline", port, "fake-503-always");
    cfg.llm_retry_backoff_ms = 20;
    cfg.n_llm_fallback = 1;
    snprintf(cfg.llm_fallback[0].provider, sizeof cfg.llm_fallback[0].provider, "extractive");
    chat_pipeline *p = pipeline_of(&cfg);
    events e;
    ev_init(&e);
    assert_int_equal(run(p, &e, &alice, "What is the beam of the Seawind 340?", NULL, NULL, NULL, NULL), 0);
    assert_string_equal(meta_str(e.metadata, "provider"), "extractive");
    assert_string_equal(meta_str(e.metadata, "finish_reason"), "stop");
    assert_non_null(strstr(e.response, "Seawind 340")); /* the offline provider's grounded answer */
    static const char *const want[] = {"openai/fake-503-always/unavailable", "openai/fake-503-always/unavailable",
                                       "extractive/-/ok"};
    json_object *a;
    assert_true(json_object_object_get_ex(e.metadata, "attempts", &a));
    assert_int_equal(json_object_array_length(a), CHAT_ARRAY_LEN(want));
    for (size_t i = 0; i < CHAT_ARRAY_LEN(want); i++) {
        char got[200];
        attempt_str(e.metadata, i, got, sizeof got);
        assert_string_equal(got, want[i]);
    }
    ev_clear(&e);
    chat_pipeline_free(p);

    /* the extractive provider alone: one attempt */
    ev_init(&e);
    const char *q = "What is the beam of the Seawind 340?";
    assert_int_equal(ask_alice(&e, q), 0);
    char got[200];
    attempt_str(e.metadata, 0, got, sizeof got);
    assert_string_equal(got, "extractive/-/ok");
    ev_clear(&e);
    testutil_fake_llm_stop(pid);
}

/* What the fake LLM server was last asked: the model, the temperature (-1 when none was sent), max_tokens
 * and the system message. */
typedef struct asked {
    const char *model;
    double temperature;
    int max_tokens;
    const char *system_start; /* the system message opens with it */
} asked;

static void expect_asked(int port, const asked *want)
{
    json_object *last = testutil_fake_llm_last(port), *v;
    assert_non_null(last);
    assert_string_equal(meta_str(last, "model"), want->model);
    assert_true(json_object_object_get_ex(last, "temperature", &v));
    if (want->temperature < 0) assert_null(v);
    else assert_true(v && json_object_get_double(v) == want->temperature);
    assert_true(json_object_object_get_ex(last, "max_tokens", &v));
    assert_int_equal(json_object_get_int(v), want->max_tokens);
    const char *system = meta_str(last, "system");
    assert_non_null(system);
    if (strncmp(system, want->system_start, strlen(want->system_start)))
        fail_msg("the system message opens with '%.60s', not '%s'", system, want->system_start);
    assert_non_null(strstr(system, "\nContext:\n")); /* the passages follow the agent's prompt */
    json_object_put(last);
}

/* Asks msg of p and checks the answer's agent and what the model was asked. */
static void ask_expect(chat_pipeline *p, int port, const char *msg, const char *agent, const asked *want)
{
    events e;
    ev_init(&e);
    assert_int_equal(run(p, &e, &alice, msg, NULL, NULL, NULL, NULL), 0);
    assert_string_equal(meta_str(e.metadata, "agent"), agent);
    expect_asked(port, want);
    ev_clear(&e);
}

/* Each agent's settings from the prompts folder reach the model: its prompt opens the system message, and
 * its model, temperature and max_tokens are the request's ([default] for an agent without a section of
 * its own); after a reload request (what SIGHUP does) the next answer has the new ones. */
static void test_agent_settings_reach_model(void **state)
{
    int port = 0;
    pid_t pid = testutil_fake_llm_start(&port);
    assert_true(pid > 0);
    char dir[512], path[600];
    snprintf(dir, sizeof dir, "%s", testutil_copy_dir("prompts", "pipeline"));
    snprintf(path, sizeof path, "%s/specs.txt", dir);
    assert_int_equal(testutil_write_file(path, "You are the test's spec-sheet reader (A).\n"), 0);
    snprintf(path, sizeof path, "%s/" CHAT_AGENT_CFG_FILE, dir);
    assert_int_equal(testutil_write_file(path, "[default]\nmodel = fake-default\n"
                                               "[specs]\nmodel = fake-specs-a\ntemperature = 0.25\nmax_tokens = 99\n"),
                     0);
    chat_config cfg = testutil_config_fake_llm("pipeline", port, "fake-ok");
    snprintf(cfg.prompts_dir, sizeof cfg.prompts_dir, "%s", dir);
    chat_pipeline *p = pipeline_of(&cfg);

    const char *specs_q = "What is the beam of the Seawind 340?", *oil_q = "How often should I change the oil?";
    ask_expect(p, port, specs_q, "specs", &(asked){"fake-specs-a", 0.25, 99, "You are the test's spec-sheet reader (A).\n"});
    ask_expect(p, port, oil_q, "maintenance",
               &(asked){"fake-default", -1, cfg.llm_max_tokens, "You are the Seawind Marine maintenance assistant"});

    snprintf(path, sizeof path, "%s/specs.txt", dir);
    assert_int_equal(testutil_write_file(path, "You are the test's spec-sheet reader (B).\n"), 0);
    snprintf(path, sizeof path, "%s/" CHAT_AGENT_CFG_FILE, dir);
    assert_int_equal(testutil_write_file(path, "[specs]\nmodel = fake-specs-b\n"), 0);
    ask_expect(p, port, specs_q, "specs", &(asked){"fake-specs-a", 0.25, 99, "You are the test's spec-sheet reader (A)."});
    chat_agent_cfg_request_reload();
    ask_expect(p, port, specs_q, "specs",
               &(asked){"fake-specs-b", -1, cfg.llm_max_tokens, "You are the test's spec-sheet reader (B).\n"});
    ask_expect(p, port, oil_q, "maintenance", &(asked){"fake-ok", -1, cfg.llm_max_tokens, "You are the Seawind"});

    chat_pipeline_free(p);
    testutil_rmdir(dir);
    testutil_fake_llm_stop(pid);
}

TESTUTIL_MAIN(setup, teardown, cmocka_unit_test(test_event_order_and_metadata), cmocka_unit_test(test_extractive_facts),
              cmocka_unit_test(test_extractive_behaviour), cmocka_unit_test(test_follow_up_uses_history),
              cmocka_unit_test(test_long_line_of_models), cmocka_unit_test(test_session_id_of_another_user),
              cmocka_unit_test(test_turn_stored_once), cmocka_unit_test(test_session_new_chosen_id),
              cmocka_unit_test(test_confidence_varies), cmocka_unit_test(test_cancel_each_stage),
              cmocka_unit_test(test_customer_access_own), cmocka_unit_test(test_database_down),
              cmocka_unit_test(test_begin_end_split), cmocka_unit_test(test_end_many),
              cmocka_unit_test(test_stored_flag), cmocka_unit_test(test_spooled_while_database_away),
              cmocka_unit_test(test_not_stored), cmocka_unit_test(test_openai_provider),
              cmocka_unit_test(test_agent_settings_reach_model), cmocka_unit_test(test_fallback_in_metadata))
