/* Question analysis (no database): the figure asked for, comparisons and their direction, coverage, task
 * and how-to questions, the customer's records asked about, the models named (and the numbers that are
 * not models), elliptical follow-ups, whole-word matching, figures read off sentences, and the search text retrieval is given (the
 * words that state the figure, what a follow-up leaves out of the previous question, every boat of the
 * customer for "which of my boats"). A micro-benchmark of parsing is printed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_question.h"
#include "chat_util.h"
#include "testutil.h"

static void test_attributes(void **state)
{
    static const struct {
        const char *text;
        chat_attr attr;
    } cases[] = {
        {"How big is the fuel tank on my boat?", CHAT_ATTR_FUEL_TANK},
        {"How much fuel does it hold?", CHAT_ATTR_FUEL_TANK},
        {"How much fuel does the Seawind 310 burn at cruise?", CHAT_ATTR_FUEL_BURN},
        {"How big is the fresh water tank on the Seawind 340?", CHAT_ATTR_FRESH_WATER},
        {"What is the cruise speed of the Seawind 240?", CHAT_ATTR_CRUISE_SPEED},
        {"What's the range of the Seawind 250 at cruise speed?", CHAT_ATTR_RANGE},
        {"how fast is the 190", CHAT_ATTR_TOP_SPEED},
        {"What is the engine power?", CHAT_ATTR_POWER},
        {"What engine powers the Seawind 280?", CHAT_ATTR_ENGINE}, /* "powers" is not "power" */
        {"How long is the Seawind 240?", CHAT_ATTR_LENGTH},
        {"How long is the structural hull warranty?", CHAT_ATTR_NONE}, /* unless: warranty */
        {"How long does the 100-hour service take?", CHAT_ATTR_SHOP_TIME},
        {"How heavy is the Seawind 280?", CHAT_ATTR_WEIGHT},
        {"How much does the Seawind 250 weigh?", CHAT_ATTR_WEIGHT},
        {"What is the maximum load of the Seawind 190?", CHAT_ATTR_MAX_LOAD},
        {"How many people can the Seawind 310 carry?", CHAT_ATTR_PERSONS},
        {"How many people does the Seawind 280 sleep?", CHAT_ATTR_SLEEPS},
        {"What oil should I use in the Seawind 340?", CHAT_ATTR_OIL_TYPE},
        {"How much gear lube does the lower unit take?", CHAT_ATTR_GEAR_LUBE},
        {"How much oil does the engine take?", CHAT_ATTR_OIL},
        {"How often should I replace the impeller?", CHAT_ATTR_INTERVAL},
        {"What interest rate do you offer?", CHAT_ATTR_RATE},
        {"How much is the diagnostic fee?", CHAT_ATTR_PRICE},
        {"What does fault code E42 mean?", CHAT_ATTR_NONE},
        {"hello", CHAT_ATTR_NONE},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_question q;
        chat_question_parse(cases[i].text, &q);
        if (q.attr != cases[i].attr) fail_msg("'%s': attribute %d, want %d", cases[i].text, q.attr, cases[i].attr);
    }
    assert_string_equal(chat_attr_get(CHAT_ATTR_FUEL_TANK)->unit, "L");
    assert_null(chat_attr_get(CHAT_ATTR_NONE));
    assert_true(chat_attr_word(CHAT_ATTR_WEIGHT, "heavy"));
    assert_false(chat_attr_word(CHAT_ATTR_WEIGHT, "fast"));
}

static void test_intents(void **state)
{
    static const struct {
        const char *text;
        bool compare;
        int extreme;
        bool coverage, tasks, howto, mine, small_talk, elliptical;
        int customer;
    } cases[] = {
        {"Which of your boats has the biggest fuel tank?", true, 1, false, false, false, false, false, false, 0},
        {"Which is faster, the Seawind 190 or the Seawind 220?", true, 1, false, false, false, false, false, false, 0},
        {"Which boat has the shallowest draft?", true, -1, false, false, false, false, false, false, 0},
        {"Compare the Seawind 250 and the Seawind 310", true, 0, false, false, false, false, false, false, 0},
        {"How much gear lube does the lower unit take?", false, 0, false, false, false, false, false, false, 0},
        {"Does the warranty cover running aground?", false, 0, true, false, false, false, false, false, 0},
        {"What is included in the 20-hour break-in service?", false, 0, false, true, false, false, false, false, 0},
        {"What does the 300-hour service replace?", false, 0, false, true, false, false, false, false, 0},
        {"How should I flush the engine?", false, 0, false, false, true, false, false, false, 0},
        {"Thanks!", false, 0, false, false, false, false, true, false, 0},
        {"and the 310?", false, 0, false, false, false, false, false, true, 0},
        {"can it be transferred?", false, 0, false, false, false, false, false, true, 0},
        {"Tell me about the engines of the Seawind 340", false, 0, false, false, false, false, false, false, 0},
        {"Which boats do I own and when are they due for service?", false, 0, false, false, false, true, false, false,
         CHAT_ASK_BOATS | CHAT_ASK_DUE | CHAT_ASK_NEXT},
        {"When was my last service?", false, 0, false, false, false, true, false, false, CHAT_ASK_LAST},
        {"When is my next appointment?", false, 0, false, false, false, true, false, false, CHAT_ASK_NEXT},
        {"What service history do I have on file?", false, 0, false, false, false, true, false, false,
         CHAT_ASK_HISTORY | CHAT_ASK_NEXT},
        {"How many engine hours does Midnight Sun have?", false, 0, false, false, false, false, false, false,
         CHAT_ASK_HOURS},
        {"What's the fee if I don't show up for my appointment?", false, 0, false, false, false, true, false, false, 0},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_question q;
        chat_question_parse(cases[i].text, &q);
        if (q.compare != cases[i].compare || q.extreme != cases[i].extreme || q.coverage != cases[i].coverage ||
            q.tasks != cases[i].tasks || q.howto != cases[i].howto || q.mine != cases[i].mine ||
            q.small_talk != cases[i].small_talk || q.elliptical != cases[i].elliptical || q.customer != cases[i].customer)
            fail_msg("'%s': compare %d extreme %d coverage %d tasks %d howto %d mine %d small %d elliptical %d customer %d",
                     cases[i].text, q.compare, q.extreme, q.coverage, q.tasks, q.howto, q.mine, q.small_talk,
                     q.elliptical, q.customer);
    }
}

static void test_models(void **state)
{
    static const struct {
        const char *text;
        const char *models; /* space-separated */
    } cases[] = {
        {"Which has more torque, the 280 or the 220?", "280 220"},
        {"What is the top speed of the Seawind 999?", "999"},
        {"How long does the 100-hour service take on a Seawind 250?", "250"},
        {"What happens at 300 hours on the 310's engine?", "310"},
        {"E42 on my TV250, D6-380 and $590 at 8:00, 24.5 knots", ""},
        {"the 190 and the 190 again", "190"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_question q;
        chat_question_parse(cases[i].text, &q);
        char got[128] = "";
        for (int k = 0; k < q.n_models; k++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%s", k ? " " : "", q.models[k]);
        if (strcmp(got, cases[i].models)) fail_msg("'%s': models '%s', want '%s'", cases[i].text, got, cases[i].models);
    }
}

static void test_whole_words(void **state)
{
    assert_true(chat_question_has("What is the HP rating?", "hp"));
    assert_false(chat_question_has("Do you ship parts?", "hp"));
    assert_true(chat_question_has("When is Reel Deal's next service?", "reel deal"));
    assert_false(chat_question_has("the powers", "power"));
    assert_true(chat_question_has_any("a tank, please", "gauge|tank"));
    assert_false(chat_question_has_any("", "gauge|tank"));
    assert_false(chat_question_has(NULL, "x"));
    assert_string_equal(chat_question_find("The Fuel Tank", "fuel t"), "Fuel Tank");
    assert_null(chat_question_find("The Fuel Tank", "tanks"));
    assert_true(chat_question_added_word("winterization"));
    assert_true(chat_question_added_word("weight"));
    assert_false(chat_question_added_word("transferred"));
}

static void test_figures(void **state)
{
    static const struct {
        const char *sentence;
        chat_attr attr;
        double value;      /* < 0: no figure */
        const char *shown;
    } cases[] = {
        {"The Seawind 310 has a fuel tank capacity of 1,135 L (300 US gallons).", CHAT_ATTR_FUEL_TANK, 1135,
         "1,135 L (300 US gallons)"},
        {"The Seawind 340 carries a 300 L fresh water tank, a 110 L holding tank and a 40 L water heater.",
         CHAT_ATTR_FRESH_WATER, 300, "300 L"},
        {"The Seawind 340 carries a 300 L fresh water tank, a 110 L holding tank and a 40 L water heater.",
         CHAT_ATTR_HOLDING_TANK, 110, "110 L"},
        {"The engine power of the Seawind 340 is 380 hp (283 kW) per engine, or 760 hp (567 kW) combined, at 3,500 rpm.",
         CHAT_ATTR_POWER, 760, "760 hp (567 kW)"},
        {"The peak torque of each Stormvik D6-380 is 1,050 Nm at 2,500 rpm.", CHAT_ATTR_TORQUE, 1050, "1,050 Nm"},
        {"The top speed of the Seawind 190 is 42 knots (48 mph) with a light load.", CHAT_ATTR_TOP_SPEED, 42,
         "42 knots (48 mph)"},
        {"The draft of the Seawind 190 is 0.38 m (15 in) with the engine tilted up.", CHAT_ATTR_DRAFT, 0.38,
         "0.38 m (15 in)"},
        {"Seawind Care Basic costs from $590 per year.", CHAT_ATTR_PRICE, 590, "$590"},
        {"The Tidecrest T150 engine of the Seawind 190 takes 4.5 L of engine oil with a filter change.", CHAT_ATTR_OIL,
         4.5, "4.5 L"},
        {"The fuel tank is a welded aluminum tank under the cockpit floor.", CHAT_ATTR_FUEL_TANK, -1, NULL},
        {"The Seawind 190 is powered by a single Tidecrest T150 outboard.", CHAT_ATTR_ENGINE, -1, NULL},
        {"The top speed of the Seawind 999 is unknown.", CHAT_ATTR_TOP_SPEED, -1, NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_figure f;
        bool found = chat_attr_figure(cases[i].sentence, cases[i].attr, &f);
        if (found != (cases[i].value >= 0)) fail_msg("'%s': figure %s", cases[i].sentence, found ? f.shown : "none");
        if (!found) continue;
        if (f.value != cases[i].value || strcmp(f.shown, cases[i].shown))
            fail_msg("'%s': %g '%s', want %g '%s'", cases[i].sentence, f.value, f.shown, cases[i].value, cases[i].shown);
    }
    chat_figure f;
    assert_false(chat_attr_figure(NULL, CHAT_ATTR_TOP_SPEED, &f));
    assert_false(chat_attr_figure("x", CHAT_ATTR_NONE, &f));
}

static chat_history history(chat_turn *turns, size_t n)
{
    chat_history h;
    memset(&h, 0, sizeof h);
    h.items = turns;
    h.n = n;
    return h;
}

static void test_search_text(void **state)
{
    chat_turn engine[] = {{"user", "Tell me about the engines of the Seawind 340"}, {"assistant", "Twin diesels."}};
    chat_turn speed[] = {{"user", "What's the top speed of the Seawind 190?"}, {"assistant", "42 knots."},
                         {"user", "and the 310?"}, {"assistant", "52 knots."}};
    chat_turn hull[] = {{"user", "How long is the structural hull warranty?"}, {"assistant", "10 years."}};
    chat_turn code[] = {{"user", "What does fault code E42 mean?"}, {"assistant", "Water in the fuel."}};
    chat_history h_engine = history(engine, 2), h_speed2 = history(speed, 2), h_speed4 = history(speed, 4),
                 h_hull = history(hull, 2), h_code = history(code, 2);
    static char v0[] = "v0", m0[] = "seawind-340", n0[] = "Seawind 340", k0[] = "Nordic Light", hull0[] = "H0";
    static char v1[] = "v1", m1[] = "seawind-190", n1[] = "Seawind 190", k1[] = "Little Tern", hull1[] = "H1";
    chat_vehicle boats[] = {{v0, m0, n0, k0, hull0, 143}, {v1, m1, n1, k1, hull1, 530}};
    chat_customer cust;
    memset(&cust, 0, sizeof cust);
    cust.vehicles = boats;
    cust.n_vehicles = 2;
    const struct {
        const char *message;
        const chat_history *hist;
        const char *context;
        const chat_customer *cust;
        const char *must;     /* the search text contains */
        const char *must_not; /* or NULL */
    } cases[] = {
        {"how much does it weigh?", &h_engine, "Seawind 340", NULL, "dry weight", "engines"},
        {"how much does it weigh?", &h_engine, "Seawind 340", NULL, "Seawind 340", NULL},
        {"and the 310?", &h_speed2, NULL, NULL, "top speed", "Seawind 190"},
        {"which one is heavier?", &h_speed4, NULL, NULL, "310", NULL},
        {"which one is heavier?", &h_speed4, NULL, NULL, "190", NULL},
        {"can it be transferred?", &h_hull, NULL, NULL, "structural hull warranty", NULL},
        {"how do I fix it?", &h_code, NULL, NULL, "E42", NULL},
        {"How do I get my boat ready for winter?", NULL, NULL, NULL, "winterization", NULL},
        {"Which of my boats is longer?", NULL, "Seawind 340", &cust, "Seawind 190", NULL},
        {"Compare the Seawind 250 and the Seawind 310", NULL, NULL, NULL, "fuel tank", NULL},
        {"What is the torque?", &h_engine, NULL, NULL, "torque", "engines"}, /* not elliptical: nothing borrowed */
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char *t = chat_question_search_text(cases[i].message, cases[i].hist, cases[i].context, cases[i].cust);
        assert_non_null(t);
        if (strncmp(t, cases[i].message, strlen(cases[i].message))) fail_msg("'%s' does not start the search text", t);
        if (!strstr(t, cases[i].must)) fail_msg("'%s': search text '%s' lacks '%s'", cases[i].message, t, cases[i].must);
        if (cases[i].must_not && strstr(t, cases[i].must_not))
            fail_msg("'%s': search text '%s' has '%s'", cases[i].message, t, cases[i].must_not);
        free(t);
    }
    char *t = chat_question_search_text(NULL, NULL, NULL, NULL);
    assert_string_equal(t, "");
    free(t);
}

static void test_retrieval_size(void **state)
{
    bool compares = false;
    assert_int_equal(chat_question_passages("Which of your boats has the biggest fuel tank?", 4, &compares), 16);
    assert_true(compares);
    assert_int_equal(chat_question_passages("What is the fuel tank capacity of the Seawind 250?", 4, &compares), 4);
    assert_false(compares);
    assert_int_equal(chat_question_passages("Which model is the fastest?", 20, &compares), 20);
    assert_true(compares);
    assert_int_equal(chat_question_passages("What is the top speed of the 190?", 4, NULL), 4);
}

static void test_parse_speed(void **state)
{
    enum { N = 20000 };
    chat_question q;
    int64_t t0 = chat_now_us();
    for (int i = 0; i < N; i++) chat_question_parse("Which boats do I own and when are they due for service? Seawind 190", &q);
    double us = (double)(chat_now_us() - t0) / N;
    print_message("chat_question_parse: %.2f us per question\n", us);
    assert_true(us < 200); /* a few microseconds; generous for loaded machines and sanitizers */
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_attributes), cmocka_unit_test(test_intents), cmocka_unit_test(test_models),
              cmocka_unit_test(test_whole_words), cmocka_unit_test(test_figures), cmocka_unit_test(test_search_text),
              cmocka_unit_test(test_retrieval_size),
              cmocka_unit_test(test_parse_speed))
