/* The extractive provider on hand-built passages (no database): which sentences answer, the agent's
 * voice, citations, honesty when nothing matches, the customer's appointment, and the streaming
 * contract (tokens concatenate to the answer, max_tokens gives "length", cancel, pacing). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_extractive.h"
#include "chat_util.h"

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
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char *a = compose(cases[i].question, cases[i].agent, cases[i].from, cases[i].n, cases[i].customer);
        if (!strstr(a, cases[i].must)) fail_msg("case %zu: missing '%s' in: %s", i, cases[i].must, a);
        if (cases[i].must_not && strstr(a, cases[i].must_not))
            fail_msg("case %zu: unexpected '%s' in: %s", i, cases[i].must_not, a);
        assert_true(chat_utf8_valid(a, strlen(a)));
        free(a);
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
    return chat_extractive_generate(cfg, &req, collect, c, cancel, res, err, sizeof err);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_answers),
        cmocka_unit_test(test_streaming_contract),
        cmocka_unit_test(test_pacing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
