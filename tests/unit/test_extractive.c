/* The extractive provider on hand-built passages (no database): which sentences answer, the agent's
 * voice, citations, honesty when nothing matches, the customer's appointment; the answer kinds on a
 * small line of "Kestrel" boats (comparisons naming the winner, an unknown model, asking which model or
 * which boat, the exclusion asked about, a service's task list, the customer's records) and their
 * confidence; one composition per turn (the confidence's answer reused, never a stale one); the streaming
 * contract (tokens concatenate to the answer, max_tokens gives "length", cancel, pacing), and paced
 * generations on one chat_llm_loop (interleaving, no token inside chat_llm_start, cancel of one, starts
 * from callbacks, freeing a running loop). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_agent.h"
#include "chat_common.h"
#include "chat_customer.h"
#include "chat_extractive.h"
#include "chat_llm.h"
#include "chat_question.h"
#include "chat_util.h"
#include "testutil.h"
#include "testutil_llm.h"

static chat_kb_passage passages[] = {
    {1, "boat-a/specs.md", "Boat A Specifications - Engine", "specs", "boat-a",
     "The Boat A is powered by a single V6 outboard. The engine power of the Boat A is 250 hp (186 kW) at 5,800 "
     "rpm. The hull of the Boat A is painted white.",
     9.0},
    {2, "troubleshooting/fuel.md", "Fuel Troubleshooting - E42: Water in Fuel", "troubleshooting", NULL,
     "Fault code E42 means that water was found in the fuel filter. With E42 the display beeps. Drain the "
     "separator bowl and replace the filter. Fault code E63 means the alternator is not charging.",
     8.0},
    {3, "policies/warranty.md", "Warranty - Coverage", NULL, NULL,
     "Every new boat is covered for 3 years. The warranty starts on the delivery date.", 2.0},
    {4, "boat-a/maintenance.md", "Boat A Maintenance Guide - 300-Hour Service", "maintenance", "boat-a",
     "The 300-hour service of the Boat A is the major service for its V6 outboard. In addition to the 100-hour "
     "items, it replaces the six spark plugs and the thermostat. The impeller of the Boat A must be replaced "
     "every 300 engine hours or every 3 years.",
     7.0},
    {5, "boat-a/maintenance.md", "Boat A Maintenance Guide - Outdrive", "maintenance", "boat-a",
     "The gimbal bearing of the Boat A is changed every 500 hours, and more often in salt water. The bellows "
     "of the Boat A are replaced every 3 years.",
     6.0},
};

static chat_kb_result make_result(size_t from, size_t n)
{
    chat_kb_result r = {passages + from, n, 10.0};
    return r;
}

static char *compose(const char *question, const char *agent, size_t from, size_t n, const char *customer)
{
    chat_kb_result r = make_result(from, n);
    chat_llm_request req = {.question = question, .agent = agent, .passages = &r, .customer_context = customer};
    char *a = chat_extractive_compose(&req);
    assert_non_null(a);
    return a;
}

/* Case i's answer a holds must and not must_not (NULL: anything), and is UTF-8; frees a. */
static void check_answer(size_t i, char *a, const char *must, const char *must_not)
{
    if (!strstr(a, must)) fail_msg("case %zu: missing '%s' in: %s", i, must, a);
    if (must_not && strstr(a, must_not)) fail_msg("case %zu: unexpected '%s' in: %s", i, must_not, a);
    assert_true(chat_utf8_valid(a, strlen(a)));
    free(a);
}

static void test_answers(void **state)
{
    static const struct {
        const char *question, *agent;
        size_t from, n;
        const char *customer;
        const char *must, *must_not;
    } cases[] = {
        {"What is the engine power of the Boat A?", "specs", 0, 3, NULL, "250 hp (186 kW)", "painted white"},
        {"What is the engine power of the Boat A?", "specs", 0, 3, NULL, "Sources: boat-a/specs.md", NULL},
        {"What is the engine power of the Boat A?", "specs", 0, 3, NULL, "specification sheet", NULL},
        {"what does E42 mean?", "troubleshooting", 1, 2, NULL, "Drain the separator bowl", "E63"},
        {"what does E42 mean?", "troubleshooting", 1, 2, NULL, "troubleshooting guide", NULL},
        {"how long is the warranty", "general", 2, 1, NULL, "3 years", NULL},
        {"zzz qqq", "general", 0, 3, NULL, "could not find an answer", "Sources:"},
        {"What is the engine power?", "specs", 0, 0, NULL, "could not find an answer", "Sources:"},
        {"hello!", "general", 0, 3, NULL, "Seawind Marine assistant", "Sources:"},
        {"When is my next service?", "maintenance", 0, 0,
         "Customer: Jo. Upcoming appointments: 2030-01-02 09:00 100-hour service at Port Alden. Recent past "
         "appointments: 2029-01-01 oil change.",
         "2030-01-02 09:00 100-hour service", "2029-01-01"},
        /* a sentence that leans on the one before it ("it replaces") comes with it */
        {"When are the spark plugs replaced on the Boat A?", "maintenance", 3, 1, NULL,
         "The 300-hour service of the Boat A is the major service for its V6 outboard. In addition", NULL},
        /* "change" asks what the knowledge base says with "replaced" */
        {"How often should I change the impeller of the Boat A?", "maintenance", 3, 1, NULL, "every 300 engine hours",
         "could not find"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char *a = compose(cases[i].question, cases[i].agent, cases[i].from, cases[i].n, cases[i].customer);
        check_answer(i, a, cases[i].must, cases[i].must_not);
    }
}

/* The request as the pipeline makes it: the typed message as the user turn, the search text (the message
 * and the words that state what it asks for: "every" for an interval) as the question. "How often ...
 * changed" is answered by the service that replaces the spark plugs, not given up because the
 * best-scoring sentence, of another passage ("every", "replacement"), says nothing of spark plugs. */
static void test_lead_covers_question(void **state)
{
    (void)state;
    const char *typed = "How often should the spark plugs be changed on the Boat A?";
    char *search = chat_question_search_text(typed, NULL, NULL, NULL);
    assert_non_null(search);
    assert_non_null(strstr(search, "every"));
    chat_llm_message msg = {"user", typed};
    chat_kb_result r = make_result(3, 2);
    chat_llm_request req = {
        .question = search, .agent = "maintenance", .passages = &r, .messages = &msg, .n_messages = 1};
    char *a = chat_extractive_compose(&req);
    assert_non_null(a);
    if (!strstr(a, "it replaces the six spark plugs")) fail_msg("missing the spark plugs' service in: %s", a);
    free(a);
    free(search);
}

/* "What does the warranty cover?" names no item: the parts of the warranty answer it, not the exclusion
 * that scores best on "warranty" and "cover" ("does not cover normal wear items"). An item asked about
 * ("Are impellers covered?") is still answered by the exclusion. */
static void test_scope_question(void **state)
{
    (void)state;
    static chat_kb_passage policy[] = {
        {1, "policies/warranty.md", "Warranty - Exclusions", NULL, NULL,
         "The warranty does not cover normal wear items such as impellers, anodes, filters and belts.", 9.0},
        {2, "policies/warranty.md", "Warranty - Overview", NULL, NULL,
         "Every new boat is covered by the limited warranty from its delivery date. The limited warranty has four "
         "parts: a 10-year hull warranty, a 3-year engine warranty, a 2-year warranty on electronics, and a "
         "1-year warranty on upholstery.",
         8.0},
    };
    static const struct {
        const char *question, *must, *must_not;
    } cases[] = {
        {"What does the warranty cover?", "four parts", "normal wear"},
        {"Are impellers covered by the warranty?", "normal wear", NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_kb_result r = {policy, CHAT_ARRAY_LEN(policy), 10.0};
        chat_llm_request req = {.question = cases[i].question, .agent = "general", .passages = &r};
        char *a = chat_extractive_compose(&req);
        assert_non_null(a);
        check_answer(i, a, cases[i].must, cases[i].must_not);
    }
}

/* ---- the answer kinds, on a small line of boats ---- */

static chat_kb_passage line[] = {
    {11, "kestrel-21/specs.md", "Kestrel 21 Specifications - Capacities", CHAT_AGENT_SPECS, "kestrel-21",
     "The Kestrel 21 has a fuel tank capacity of 150 L (40 US gallons). The dry weight of the Kestrel 21 is 1,200 kg "
     "(2,650 lb). The top speed of the Kestrel 21 is 40 knots (46 mph).",
     5.0},
    {12, "kestrel-24/specs.md", "Kestrel 24 Specifications - Capacities", CHAT_AGENT_SPECS, "kestrel-24",
     "The Kestrel 24 has a fuel tank capacity of 300 L (79 US gallons). The dry weight of the Kestrel 24 is 2,100 kg "
     "(4,630 lb). The top speed of the Kestrel 24 is 44 knots (51 mph).",
     4.0},
    {13, "kestrel-30/specs.md", "Kestrel 30 Specifications - Capacities", CHAT_AGENT_SPECS, "kestrel-30",
     "The Kestrel 30 has a fuel tank capacity of 600 L (159 US gallons). The dry weight of the Kestrel 30 is 4,000 kg "
     "(8,820 lb). The top speed of the Kestrel 30 is 48 knots (55 mph).",
     3.0},
    {14, "kestrel-21/maintenance.md", "Kestrel 21 Maintenance Guide - 20-Hour Break-In Service", CHAT_AGENT_MAINTENANCE,
     "kestrel-21",
     "The break-in service of the Kestrel 21 is due at 20 engine hours. The technician changes the engine oil and "
     "filter, changes the gear oil, checks the propeller nut torque, and reads the engine computer for fault codes.",
     3.0},
    {15, "policies/warranty.md", "Warranty - Exclusions", NULL, NULL,
     "The warranty covers the hull for 10 years. The warranty excludes damage from grounding, collision and "
     "freezing.",
     2.0},
};

static chat_vehicle fleet[] = {
    {"f-1", "kestrel-21", "Kestrel 21", "Tern", "KH1", 530},
    {"f-2", "kestrel-30", "Kestrel 30", "Albatross", "KH2", 143},
};
static chat_appointment fleet_visits[] = {
    {"2099-05-01 09:00", "Annual service", "Port Alden", "scheduled", "f-2", NULL},
    {"2001-02-03 10:00", "Impeller replacement", "Port Alden", "completed", "f-1", "Replaced the impeller."},
};
static chat_customer owner = {"c-1", "Jo Owner", "jo@example.com", fleet, 2, fleet_visits, 2};

typedef struct kind_case {
    const char *question;
    size_t from, n;      /* the passages of line[] given */
    bool customer;       /* with owner's records */
    const char *must[2]; /* in the answer */
    const char *must_not;
    double conf_min, conf_max;
} kind_case;

static void check_kind(const kind_case *k, size_t i)
{
    chat_kb_result r = {line + k->from, k->n, 5.0};
    chat_llm_request req = {.question = k->question, .agent = CHAT_AGENT_SPECS, .passages = &r,
                            .customer = k->customer ? &owner : NULL};
    char *a = chat_extractive_compose(&req);
    double conf = chat_extractive_confidence(&req, NULL);
    assert_non_null(a);
    for (int m = 0; m < 2 && k->must[m]; m++)
        if (!strstr(a, k->must[m])) fail_msg("case %zu '%s': missing '%s' in: %s", i, k->question, k->must[m], a);
    if (k->must_not && strstr(a, k->must_not)) fail_msg("case %zu '%s': unexpected '%s' in: %s", i, k->question, k->must_not, a);
    if (conf < k->conf_min || conf > k->conf_max)
        fail_msg("case %zu '%s': confidence %.2f, want %.2f..%.2f (%s)", i, k->question, conf, k->conf_min, k->conf_max, a);
    free(a);
}

static void test_answer_kinds(void **state)
{
    static const kind_case cases[] = {
        {"Which Kestrel has the biggest fuel tank?", 0, 3, false,
         {"the Kestrel 30 has the biggest fuel tank: 600 L (159 US gallons)", "the Kestrel 21: 150 L"}, NULL, 0.8, 0.9},
        {"Which is lighter, the Kestrel 21 or the Kestrel 24?", 0, 3, false,
         {"Of the Kestrel 21 and the Kestrel 24, the Kestrel 21 is the lightest: 1,200 kg", NULL}, "Kestrel 30", 0.8, 0.9},
        {"Is the Kestrel 24 heavier than the Kestrel 30?", 0, 3, false, {"No. ", "the Kestrel 30 is the heaviest"}, NULL,
         0.8, 0.9},
        {"What is the top speed of the Kestrel 99?", 0, 3, false, {"I have no information about the Kestrel 99", NULL},
         "knots", 0, 0.2},
        {"What is the top speed?", 0, 3, false, {"Which model do you mean?", "the Kestrel 21"}, "knots", 0.2, 0.4},
        {"What is the top speed of the Kestrel 24?", 0, 3, false, {"44 knots (51 mph)", NULL}, "48 knots", 0.7, 1},
        {"Does the warranty cover running aground?", 4, 1, false, {"No. The warranty excludes damage from grounding", NULL},
         NULL, 0.5, 1},
        {"What is included in the break-in service of the Kestrel 21?", 3, 1, false, {"propeller nut torque", NULL}, NULL,
         0.7, 1},
        {"Do you sell jet skis?", 0, 5, false, {"could not find an answer", NULL}, "Sources:", 0, 0.2},
        {"Which boats do I own?", 0, 3, true, {"\"Tern\" (Kestrel 21)", "\"Albatross\" (Kestrel 30)"}, NULL, 0.85, 1},
        {"What was done on Tern last time?", 0, 3, true, {"Impeller replacement", "Replaced the impeller."}, "Annual", 0.85,
         1},
        {"When is my next service?", 0, 3, true, {"Annual service on 2099-05-01 09:00", NULL}, "Impeller", 0.85, 1},
        {"How fast is my boat?", 0, 3, true, {"Which of your boats do you mean", "\"Albatross\""}, "knots", 0.2, 0.4},
        {"Which of my boats has the biggest fuel tank?", 0, 3, true, {"\"Albatross\" (Kestrel 30) has the biggest", NULL},
         "Kestrel 24", 0.8, 0.9},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) check_kind(&cases[i], i);
}

/* "Which model do you mean?" names the whole line the request carries, not only the models of the
 * passages retrieved (two of three here); without a line, or with one that lacks a retrieved model,
 * the passages' models. */
static void test_which_model_names_line(void **state)
{
    (void)state;
    static const struct {
        const char *line, *must, *must_not;
    } cases[] = {
        {"kestrel-21 kestrel-24 kestrel-30", "the Kestrel 21, the Kestrel 24 or the Kestrel 30?", NULL},
        {NULL, "I have it for the Kestrel 21 and the Kestrel 24.", "Kestrel 30"},
        {"kestrel-21 kestrel-30", "I have it for the Kestrel 21 and the Kestrel 24.", "Kestrel 30"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_kb_result r = {line, 2, 5.0};
        chat_llm_request req = {.question = "What is the top speed?",
                                .agent = CHAT_AGENT_SPECS,
                                .passages = &r,
                                .line_models = cases[i].line};
        char *a = chat_extractive_compose(&req);
        assert_non_null(a);
        check_answer(i, a, cases[i].must, cases[i].must_not);
    }
}

typedef struct collected {
    chat_buf text;
    int n;
    int stop_after;
    atomic_int *cancel_at_3;
} collected;

static int collect(void *ud, const char *text, size_t len)
{
    collected *c = ud;
    chat_buf_append(&c->text, text, len);
    c->n++;
    if (c->cancel_at_3 && c->n == 3) atomic_store(c->cancel_at_3, 1);
    return c->stop_after && c->n >= c->stop_after;
}

static int generate(const chat_config *cfg, int max_tokens, collected *c, atomic_int *cancel, chat_llm_result *res)
{
    chat_kb_result r = make_result(0, 3);
    chat_llm_request req = {.question = "What is the engine power of the Boat A?", .agent = "specs", .passages = &r,
                            .max_tokens = max_tokens};
    char err[128];
    chat_buf_init(&c->text);
    chat_config ecfg = *cfg;
    snprintf(ecfg.llm_provider, sizeof ecfg.llm_provider, "extractive");
    chat_llm *llm = chat_llm_new(&ecfg, err, sizeof err);
    assert_non_null(llm);
    int rc = chat_llm_generate(llm, &req, collect, c, cancel, res, err, sizeof err);
    chat_llm_free(llm);
    return rc;
}

/* The confidence's answer is the one the generation streams: the pipeline hands it over with the
 * request (prepared_answer), and the provider streams it as it is, on whatever thread it runs, without
 * composing it again. */
static void test_composed_once(void **state)
{
    (void)state;
    chat_kb_result r = {line, 3, 5.0};
    chat_llm_request a = {
        .question = "Which Kestrel has the biggest fuel tank?", .agent = CHAT_AGENT_SPECS, .passages = &r};
    char *plain = chat_extractive_compose(&a), *answer = NULL;
    assert_true(chat_extractive_confidence(&a, &answer) > 0.8);
    assert_non_null(answer);
    assert_string_equal(answer, plain);
    assert_true(chat_extractive_confidence(&a, NULL) > 0.8);

    /* a prepared answer is what composing and a generation give, not a new composition */
    static const char prepared[] = "The prepared answer, composed before the generation began.";
    a.prepared_answer = prepared;
    char *copy = chat_extractive_compose(&a);
    assert_string_equal(copy, prepared);
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "extractive");
    char err[128];
    chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
    assert_non_null(llm);
    collected c = {0};
    chat_buf_init(&c.text);
    chat_llm_result res;
    assert_int_equal(chat_llm_generate(llm, &a, collect, &c, NULL, &res, err, sizeof err), 0);
    assert_string_equal(c.text.data, prepared);
    assert_true(c.n > 1); /* still streamed piece by piece */
    chat_llm_free(llm);
    chat_buf_free(&c.text);
    free(plain), free(answer), free(copy);
}

static void test_streaming_contract(void **state)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    chat_llm_result res;
    collected c = {0};
    assert_int_equal(generate(&cfg, 0, &c, NULL, &res), 0);
    char *whole = compose("What is the engine power of the Boat A?", "specs", 0, 3, NULL);
    assert_string_equal(c.text.data, whole); /* tokens concatenate to the answer */
    assert_string_equal(res.finish_reason, "stop");
    assert_int_equal(res.completion_tokens, c.n);
    assert_true(c.n > 10 && res.prompt_tokens > 0);
    free(whole);
    chat_buf_free(&c.text);

    collected d = {0};
    assert_int_equal(generate(&cfg, 5, &d, NULL, &res), 0);
    assert_string_equal(res.finish_reason, "length");
    assert_int_equal(d.n, 5);
    chat_buf_free(&d.text);

    atomic_int cancel = 0;
    collected e = {.cancel_at_3 = &cancel};
    assert_int_equal(generate(&cfg, 0, &e, &cancel, &res), CHAT_ECANCELLED);
    assert_string_equal(res.finish_reason, "cancelled");
    assert_int_equal(e.n, 3);
    chat_buf_free(&e.text);

    collected f = {.stop_after = 2}; /* the caller's callback asks to stop */
    assert_int_equal(generate(&cfg, 0, &f, NULL, &res), CHAT_ECANCELLED);
    assert_int_equal(f.n, 2);
    chat_buf_free(&f.text);
}

static void test_pacing(void **state)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.token_delay_ms = 10;
    chat_llm_result res;
    collected c = {0};
    int64_t t0 = chat_now_ms();
    assert_int_equal(generate(&cfg, 11, &c, NULL, &res), 0);
    int64_t took = chat_now_ms() - t0;
    assert_int_equal(c.n, 11);
    assert_true(took >= 100); /* 10 gaps of 10 ms */
    chat_buf_free(&c.text);
}

/* ---- generations paced on one chat_llm_loop ---- */

/* Starts g on the question of the first passages (the request and its result on this stack: chat_llm_start
 * keeps neither). */
static int lgen_start(chat_llm_loop *loop, chat_llm *llm, testutil_gen *g)
{
    chat_kb_result r = make_result(0, 3);
    chat_llm_request req = {.question = "What is the engine power of the Boat A?", .agent = "specs", .passages = &r,
                            .max_tokens = g->max_tokens};
    return testutil_gen_launch(loop, llm, g, &req);
}

static chat_llm *extractive(int token_delay_ms)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "extractive");
    cfg.token_delay_ms = token_delay_ms;
    char err[128];
    chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
    assert_non_null(llm);
    return llm;
}

/* Four paced answers on one thread: their tokens interleave, each takes (T-1) x 20 ms, and the whole
 * takes about as long as one. */
static void test_loop_pacing(void **state)
{
    (void)state;
    enum { N = 4, T = 11, DELAY = 20 };
    chat_llm *llm = extractive(DELAY);
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen g[N];
    testutil_gen_norder = 0;
    int64_t t0 = chat_now_ms();
    for (int i = 0; i < N; i++) {
        testutil_gen_init(&g[i], i, T, lgen_start);
        assert_int_equal(lgen_start(loop, llm, &g[i]), 0);
    }
    assert_int_equal(testutil_loop_run(loop, 5000), 0);
    int64_t took = chat_now_ms() - t0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(g[i].done_calls, 1);
        assert_int_equal(g[i].rc, 0);
        assert_string_equal(g[i].res.finish_reason, "length");
        assert_int_equal(g[i].pieces, T);
        int64_t span = g[i].last_at - g[i].first_at;
        if (span < (T - 1) * DELAY - 5 || span > (T - 1) * DELAY * 2 + 50)
            fail_msg("generation %d: %d tokens in %lld ms", i, T, (long long)span);
    }
    int switches = testutil_gen_switches();
    if (switches < (T - 1) * 2) fail_msg("tokens did not interleave (%d switches)", switches);
    if (took > (T - 1) * DELAY * 2 + 100) fail_msg("%d paced generations took %lld ms", N, (long long)took);
    chat_llm_loop_free(loop);
    chat_llm_free(llm);
    for (int i = 0; i < N; i++) chat_buf_free(&g[i].text);
}

/* token_delay_ms 0: nothing inside chat_llm_start, everything on the next run. */
static void test_loop_no_delay(void **state)
{
    (void)state;
    chat_llm *llm = extractive(0);
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen g[3];
    for (int i = 0; i < 3; i++) {
        testutil_gen_init(&g[i], i, 0, lgen_start);
        assert_int_equal(lgen_start(loop, llm, &g[i]), 0);
        assert_int_equal(g[i].pieces, 0);
        assert_int_equal(g[i].done_calls, 0);
    }
    assert_int_equal(chat_llm_loop_run(loop, 0), 0);
    char *whole = compose("What is the engine power of the Boat A?", "specs", 0, 3, NULL);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(g[i].done_calls, 1);
        assert_int_equal(g[i].rc, 0);
        assert_string_equal(g[i].text.data, whole);
        assert_string_equal(g[i].res.finish_reason, "stop");
        assert_int_equal(g[i].res.completion_tokens, g[i].pieces);
        assert_true(g[i].res.prompt_tokens > 0);
        chat_buf_free(&g[i].text);
    }
    free(whole);
    assert_int_equal(chat_llm_loop_run(loop, 0), 0);
    assert_int_equal(g[0].done_calls, 1);
    chat_llm_loop_free(loop);
    chat_llm_free(llm);
}

/* Cancel of one paced generation from another thread (flag + wakeup) stops that one at once, not at the
 * loop's next 100 ms tick; the others go on. */
static void test_loop_cancel(void **state)
{
    (void)state;
    enum { N = 5 };
    chat_llm *llm = extractive(50);
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen g[N]; /* 0..3 are cancelled one by one, 4 runs to its 16 tokens */
    for (int i = 0; i < N; i++) {
        testutil_gen_init(&g[i], i, i < 4 ? 0 : 16, lgen_start);
        assert_int_equal(lgen_start(loop, llm, &g[i]), 0);
    }
    testutil_waker w = {.loop = loop, .flags = {&g[0].cancel, &g[1].cancel, &g[2].cancel, &g[3].cancel},
                        .after_ms = 220};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, testutil_waker_thread, &w), 0);
    while (!g[3].done_calls) chat_llm_loop_run(loop, 1000);
    pthread_join(t, NULL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(g[i].done_calls, 1);
        assert_int_equal(g[i].rc, CHAT_ECANCELLED);
        assert_string_equal(g[i].res.finish_reason, "cancelled");
        assert_string_equal(g[i].err, "cancelled");
        int64_t took = g[i].done_at - w.at[i];
        if (took < 0 || took > 20) fail_msg("cancel %d took %lld ms", i, (long long)took);
        int want = 1 + (int)((w.at[i] - g[i].first_at) / 50); /* tokens released before the cancel */
        if (g[i].pieces < want - 1 || g[i].pieces > want + 1)
            fail_msg("generation %d: %d tokens before its cancel, want about %d", i, g[i].pieces, want);
    }
    assert_int_equal(g[4].done_calls, 0);
    assert_int_equal(testutil_loop_run(loop, 3000), 0);
    assert_int_equal(g[4].rc, 0);
    assert_int_equal(g[4].pieces, 16);
    for (int i = 0; i < N; i++) {
        assert_int_equal(g[i].done_calls, 1);
        chat_buf_free(&g[i].text);
    }
    chat_llm_loop_free(loop);
    chat_llm_free(llm);
}

/* Generations started from a token callback and from a done callback run; freeing a loop with paced
 * generations running calls no done callback and leaks nothing (valgrind). */
static void test_loop_chain_and_free(void **state)
{
    (void)state;
    chat_llm *llm = extractive(5);
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen a, b, c;
    testutil_gen_init(&a, 0, 4, lgen_start);
    testutil_gen_init(&b, 1, 4, lgen_start);
    testutil_gen_init(&c, 2, 4, lgen_start);
    a.start_on_token = &b;
    b.start_on_done = &c;
    assert_int_equal(lgen_start(loop, llm, &a), 0);
    assert_int_equal(testutil_loop_run(loop, 3000), 0);
    testutil_gen *all[] = {&a, &b, &c};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(all); i++) {
        assert_int_equal(all[i]->done_calls, 1);
        assert_int_equal(all[i]->rc, 0);
        assert_int_equal(all[i]->start_rc, 0);
        assert_int_equal(all[i]->pieces, 4);
        chat_buf_free(&all[i]->text);
    }
    assert_true(c.first_at >= b.done_at);

    testutil_gen d[3];
    for (int i = 0; i < 3; i++) {
        testutil_gen_init(&d[i], i, 0, lgen_start);
        assert_int_equal(lgen_start(loop, llm, &d[i]), 0);
    }
    chat_llm_loop_run(loop, 0);
    chat_llm_loop_run(loop, 20);
    assert_true(d[0].pieces > 0);
    chat_llm_loop_free(loop);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d[i].done_calls, 0);
        chat_buf_free(&d[i].text);
    }
    chat_llm_free(llm);
}

TESTUTIL_MAIN(NULL, NULL, cmocka_unit_test(test_answers), cmocka_unit_test(test_lead_covers_question),
              cmocka_unit_test(test_scope_question), cmocka_unit_test(test_which_model_names_line),
              cmocka_unit_test(test_answer_kinds), cmocka_unit_test(test_composed_once),
              cmocka_unit_test(test_streaming_contract), cmocka_unit_test(test_pacing),
              cmocka_unit_test(test_loop_pacing), cmocka_unit_test(test_loop_no_delay),
              cmocka_unit_test(test_loop_cancel), cmocka_unit_test(test_loop_chain_and_free))
