/* Customer context against the real private MariaDB, with rows of its own (not sample_data.sql): unknown
 * and malformed ids, boats joined with their model, appointment selection and order (upcoming soonest
 * first, then the three most recent past ones, and each boat's last completed visit when older), the
 * work done, NULL columns, the text of describe(), the boat a text names, the next and last visit, the
 * engine-hour schedule, and the answers written from the records. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_customer.h"
#include "chat_question.h"
#include "chat_util.h"
#include "testutil.h"

static chat_db *db;
static char err[512];

/* Fixed far-future and far-past dates keep the expected text exact; two rows relative to NOW() check the
 * boundary between upcoming and past. */
static const char *const fixture =
    "INSERT INTO models (id, name, category) VALUES ('seawind-250', 'Seawind 250', 'center console'),"
    " ('seawind-190', 'Seawind 190', 'bowrider'), ('seawind-340', 'Seawind 340', 'cabin cruiser');"
    "INSERT INTO customers (id, name, email) VALUES ('c-jane', 'Jane Doe', 'jane@example.com'),"
    " ('c-two', 'Zo\xc3\xab M\xc3\xbcller \xe5\xb1\xb1\xe7\x94\xb0', 'zoe@example.com'),"
    " ('c-empty', 'Nobody Boatless', 'n@example.com'), ('c-other', 'Other Person', 'o@example.com');"
    "INSERT INTO vehicles (id, customer_id, model_id, hull_id, nickname, purchase_date, engine_hours) VALUES"
    " ('v-1', 'c-jane', 'seawind-250', 'SWM25012A323', 'Blue Heron', '2023-04-01', 412),"
    " ('v-2', 'c-two', 'seawind-340', 'SWM34001B525', NULL, '2025-02-01', NULL),"
    " ('v-3', 'c-two', 'seawind-190', 'SWM19001C121', 'Little Tern', '2021-07-01', 530),"
    " ('v-4', 'c-other', 'seawind-190', 'SWM19002C121', 'Not Yours', '2022-01-01', 10);"
    "INSERT INTO appointments (id, customer_id, vehicle_id, scheduled_at, service, location, status) VALUES"
    " (1, 'c-jane', 'v-1', '2099-12-03 09:00:00', '100-hour service', 'Harbor Point Marina', 'scheduled'),"
    " (2, 'c-jane', 'v-1', '2001-05-01 10:30:00', '20-hour break-in service', 'Harbor Point Marina', 'completed'),"
    " (10, 'c-two', 'v-2', '2099-06-01 08:00:00', 'Annual service', NULL, 'scheduled'),"
    " (11, 'c-two', 'v-3', '2098-01-15 14:30:00', 'Winterization', 'Crystal Lake', 'scheduled'),"
    " (12, 'c-two', 'v-3', NOW() + INTERVAL 2 DAY, 'Impeller replacement', 'Crystal Lake', 'scheduled'),"
    " (13, 'c-two', NULL, '2099-01-01 12:00:00', 'Cancelled future', 'Crystal Lake', 'cancelled'),"
    " (14, 'c-two', 'v-2', NOW() - INTERVAL 2 DAY, 'Stale never updated', 'Crystal Lake', 'scheduled'),"
    " (15, 'c-two', 'v-2', '2010-03-01 09:00:00', 'Oldest past', 'Crystal Lake', 'completed'),"
    " (16, 'c-two', 'v-2', NOW() - INTERVAL 1 DAY, 'Yesterday', 'Crystal Lake', 'completed'),"
    " (17, 'c-two', 'v-3', '2020-08-20 16:45:00', 'Cancelled past', NULL, 'cancelled'),"
    " (18, 'c-two', 'v-2', '2019-02-02 11:00:00', 'Third past', 'Port Alden', 'completed'),"
    " (20, 'c-other', 'v-4', '2099-02-02 10:00:00', 'Not yours', 'Port Alden', 'scheduled');";

/* A customer with a history: four recent visits of "Sea Dog", an older one of the unnamed 190 (its last
 * completed visit, kept although older than the three most recent), one dropped; two boats of one model. */
static const char *const history_fixture =
    "INSERT INTO customers (id, name, email) VALUES ('c-hist', 'Hal Story', 'hal@example.com'),"
    " ('c-twin', 'Twin Owner', 'twin@example.com');"
    "INSERT INTO vehicles (id, customer_id, model_id, hull_id, nickname, purchase_date, engine_hours) VALUES"
    " ('h-1', 'c-hist', 'seawind-250', 'HH1', 'Sea Dog', '2020-01-01', 530),"
    " ('h-2', 'c-hist', 'seawind-190', 'HH2', NULL, '2021-01-01', 12),"
    " ('t-1', 'c-twin', 'seawind-250', 'TT1', 'One', '2020-01-01', 100),"
    " ('t-2', 'c-twin', 'seawind-250', 'TT2', 'Two', '2021-01-01', 200);"
    "INSERT INTO appointments (id, customer_id, vehicle_id, scheduled_at, service, location, status, work_done) VALUES"
    " (30, 'c-hist', 'h-1', '2024-05-01 09:00:00', 'Oil change', 'Port Alden', 'completed', 'Changed the oil.'),"
    " (31, 'c-hist', 'h-1', '2024-04-01 09:00:00', 'Impeller replacement', 'Port Alden', 'completed', 'Replaced the impeller'),"
    " (32, 'c-hist', 'h-1', '2024-03-01 09:00:00', 'Trim check', 'Port Alden', 'cancelled', NULL),"
    " (33, 'c-hist', 'h-2', '2023-01-01 09:00:00', 'Break-in', 'Crystal Lake', 'completed', 'Changed the gear oil.'),"
    " (34, 'c-hist', 'h-1', '2022-01-01 09:00:00', 'Old one', 'Port Alden', 'completed', 'Old work.'),"
    " (35, 'c-hist', 'h-1', '2099-03-03 10:00:00', '300-hour service', 'Port Alden', 'scheduled', NULL);";

static int setup(void **state)
{
    *state = db = testutil_db_fresh("customer", TESTUTIL_SCHEMA);
    testutil_sql(db, fixture);
    testutil_sql(db, history_fixture);
    return 0;
}

static void test_unknown(void **state)
{
    static const char *const ids[] = {"c-nobody", "", "bad id", "x'; DROP TABLE customers; --", NULL};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(ids); i++) {
        chat_customer c;
        assert_int_equal(chat_customer_load(db, ids[i], &c, err, sizeof err), CHAT_ENOTFOUND);
        assert_null(c.id);
        assert_int_equal(c.n_vehicles, 0);
        chat_customer_clear(&c);
    }
    chat_customer_clear(NULL);
}

static void test_single_boat_describe(void **state)
{
    chat_customer c;
    assert_int_equal(chat_customer_load(db, "c-jane", &c, err, sizeof err), 0);
    assert_string_equal(c.id, "c-jane");
    assert_string_equal(c.name, "Jane Doe");
    assert_int_equal(c.n_vehicles, 1);
    assert_string_equal(c.vehicles[0].id, "v-1");
    assert_string_equal(c.vehicles[0].model_id, "seawind-250");
    assert_string_equal(c.vehicles[0].model_name, "Seawind 250");
    assert_string_equal(c.vehicles[0].nickname, "Blue Heron");
    assert_string_equal(c.vehicles[0].hull_id, "SWM25012A323");
    assert_int_equal(c.vehicles[0].engine_hours, 412);
    assert_int_equal(c.n_appointments, 2);
    assert_string_equal(c.appointments[0].scheduled_at, "2099-12-03 09:00");
    assert_string_equal(c.appointments[0].status, "scheduled");
    assert_string_equal(c.appointments[0].vehicle_id, "v-1");
    assert_string_equal(c.appointments[1].scheduled_at, "2001-05-01 10:30");
    char *text = chat_customer_describe(&c);
    assert_non_null(text);
    assert_string_equal(text, "Customer: Jane Doe. Boats: Seawind 250 \"Blue Heron\" (hull SWM25012A323, 412 engine "
                              "hours). Upcoming appointments: 2099-12-03 09:00 100-hour service at Harbor Point "
                              "Marina. Recent past appointments: 2001-05-01 10:30 20-hour break-in service at Harbor "
                              "Point Marina (completed).");
    free(text);
    chat_customer_clear(&c);
    assert_null(c.id);
    chat_customer_clear(&c); /* twice is fine */
}

static void test_ordering_and_selection(void **state)
{
    chat_customer c;
    assert_int_equal(chat_customer_load(db, "c-two", &c, err, sizeof err), 0);
    assert_string_equal(c.name, "Zo\xc3\xab M\xc3\xbcller \xe5\xb1\xb1\xe7\x94\xb0");
    /* boats by purchase date; NULL columns come back as NULL / -1 */
    assert_int_equal(c.n_vehicles, 2);
    assert_string_equal(c.vehicles[0].id, "v-3");
    assert_string_equal(c.vehicles[1].id, "v-2");
    assert_string_equal(c.vehicles[1].model_name, "Seawind 340");
    assert_null(c.vehicles[1].nickname);
    assert_int_equal(c.vehicles[1].engine_hours, -1);
    /* upcoming scheduled soonest first (not the cancelled future one, not the stale past 'scheduled' one),
     * then the three most recent past ones, newest first (the oldest of four dropped) */
    static const char *const want[] = {"Impeller replacement", "Winterization", "Annual service", "Yesterday",
                                       "Cancelled past", "Third past"};
    if (c.n_appointments != CHAT_ARRAY_LEN(want)) {
        for (size_t i = 0; i < c.n_appointments; i++) print_message("got %s\n", c.appointments[i].service);
        fail_msg("%zu appointments, want %zu", c.n_appointments, CHAT_ARRAY_LEN(want));
    }
    for (size_t i = 0; i < CHAT_ARRAY_LEN(want); i++) assert_string_equal(c.appointments[i].service, want[i]);
    for (size_t i = 0; i < 3; i++) assert_string_equal(c.appointments[i].status, "scheduled");
    assert_string_equal(c.appointments[3].status, "completed");
    assert_string_equal(c.appointments[4].status, "cancelled");
    assert_null(c.appointments[2].location);
    assert_null(c.appointments[4].location);
    for (size_t i = 0; i < c.n_appointments; i++) {
        const char *d = c.appointments[i].scheduled_at;
        assert_int_equal(strlen(d), 16);
        assert_true(d[4] == '-' && d[7] == '-' && d[10] == ' ' && d[13] == ':');
    }
    char *text = chat_customer_describe(&c);
    assert_non_null(text);
    print_message("%s\n", text);
    assert_non_null(strstr(text, "Customer: Zo\xc3\xab M\xc3\xbcller \xe5\xb1\xb1\xe7\x94\xb0."));
    assert_non_null(strstr(text, "Boats: Seawind 190 \"Little Tern\" (hull SWM19001C121, 530 engine hours); "
                                 "Seawind 340 (hull SWM34001B525)."));
    assert_non_null(strstr(text, "2098-01-15 14:30 Winterization at Crystal Lake for \"Little Tern\"; "
                                 "2099-06-01 08:00 Annual service for the Seawind 340."));
    assert_non_null(strstr(text, "2020-08-20 16:45 Cancelled past for \"Little Tern\" (cancelled)"));
    assert_null(strstr(text, "Stale"));
    assert_null(strstr(text, "Oldest"));
    assert_null(strstr(text, "Not yours"));
    assert_null(strstr(text, "Cancelled future"));
    assert_null(strstr(text, "example.com")); /* no contact details in prompts */
    /* upcoming before past in the text */
    assert_true(strstr(text, "Impeller replacement") < strstr(text, "Yesterday"));
    free(text);
    chat_customer_clear(&c);
}

static void test_no_boats_no_appointments(void **state)
{
    chat_customer c;
    assert_int_equal(chat_customer_load(db, "c-empty", &c, err, sizeof err), 0);
    assert_int_equal(c.n_vehicles, 0);
    assert_int_equal(c.n_appointments, 0);
    char *text = chat_customer_describe(&c);
    assert_string_equal(text, "Customer: Nobody Boatless. Boats: none on file. Upcoming appointments: none.");
    free(text);
    chat_customer_clear(&c);
    assert_null(chat_customer_describe(NULL));
}

static void test_many_rows_bounded(void **state)
{
    /* more boats and appointments than loaded: the lists are capped, the text stays short */
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_puts(&b, "INSERT INTO customers (id, name, email) VALUES ('c-fleet', 'Fleet Owner', 'f@example.com');");
    for (int i = 0; i < 60; i++)
        chat_buf_printf(&b,
                        "INSERT INTO vehicles (id, customer_id, model_id, hull_id, engine_hours) VALUES "
                        "('fv-%d', 'c-fleet', 'seawind-190', 'H%d', %d);"
                        "INSERT INTO appointments (id, customer_id, scheduled_at, service) VALUES "
                        "(%d, 'c-fleet', '2099-01-01' + INTERVAL %d DAY, 'Service %d');",
                        i, i, i, 1000 + i, i, i);
    testutil_sql(db, b.data);
    chat_buf_free(&b);
    chat_customer c;
    assert_int_equal(chat_customer_load(db, "c-fleet", &c, err, sizeof err), 0);
    assert_true(c.n_vehicles > 0 && c.n_vehicles < 60);
    assert_true(c.n_appointments > 0 && c.n_appointments < 60);
    assert_string_equal(c.appointments[0].service, "Service 0");
    char *text = chat_customer_describe(&c);
    assert_true(strlen(text) < 4096);
    free(text);
    chat_customer_clear(&c);
}

static void test_work_done_and_each_boats_visit(void **state)
{
    chat_customer c;
    assert_int_equal(chat_customer_load(db, "c-hist", &c, err, sizeof err), 0);
    static const char *const want[] = {"300-hour service", "Oil change", "Impeller replacement", "Trim check", "Break-in"};
    if (c.n_appointments != CHAT_ARRAY_LEN(want)) {
        for (size_t i = 0; i < c.n_appointments; i++) print_message("got %s\n", c.appointments[i].service);
        fail_msg("%zu appointments, want %zu", c.n_appointments, CHAT_ARRAY_LEN(want));
    }
    for (size_t i = 0; i < CHAT_ARRAY_LEN(want); i++) assert_string_equal(c.appointments[i].service, want[i]);
    assert_null(c.appointments[0].work_done);
    assert_string_equal(c.appointments[1].work_done, "Changed the oil.");
    assert_null(c.appointments[3].work_done);
    char *text = chat_customer_describe(&c);
    assert_non_null(strstr(text, "Oil change at Port Alden for \"Sea Dog\" (completed; work done: Changed the oil)"));
    assert_non_null(strstr(text, "Break-in at Crystal Lake for the Seawind 190 (completed; work done: Changed the gear oil)"));
    assert_null(strstr(text, "Old work"));
    free(text);
    chat_customer_clear(&c);
}

static void test_vehicle_named(void **state)
{
    chat_customer hist, two, twin;
    assert_int_equal(chat_customer_load(db, "c-hist", &hist, err, sizeof err), 0);
    assert_int_equal(chat_customer_load(db, "c-two", &two, err, sizeof err), 0);
    assert_int_equal(chat_customer_load(db, "c-twin", &twin, err, sizeof err), 0);
    const struct {
        const chat_customer *c;
        const char *text;
        const char *vehicle; /* NULL: none */
    } cases[] = {
        {&hist, "What was done on Sea Dog last time?", "h-1"},
        {&hist, "how much oil does SEA DOG's engine take", "h-1"},
        {&hist, "my Seawind 190", "h-2"},
        {&hist, "and the 190?", "h-2"},
        {&hist, "the 340", NULL},
        {&hist, "my boat", NULL},
        {&hist, "Sea Doghouse", NULL},
        {&two, "When is Little Tern due?", "v-3"},
        {&two, "my Seawind 340", "v-2"},
        {&twin, "my Seawind 250", NULL}, /* two boats of that model */
        {&twin, "Two", "t-2"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        const chat_vehicle *v = chat_customer_vehicle_named(cases[i].c, cases[i].text);
        if (cases[i].vehicle ? !v || strcmp(v->id, cases[i].vehicle) : v != NULL)
            fail_msg("'%s': %s, want %s", cases[i].text, v ? v->id : "none", cases[i].vehicle ? cases[i].vehicle : "none");
    }
    assert_null(chat_customer_vehicle_named(NULL, "x"));
    assert_null(chat_customer_vehicle_named(&hist, NULL));
    /* the next and the last visit, of a boat or of any */
    assert_string_equal(chat_customer_next(&hist, NULL)->service, "300-hour service");
    assert_null(chat_customer_next(&hist, &hist.vehicles[1]));
    assert_string_equal(chat_customer_last_visit(&hist, NULL)->service, "Oil change");
    assert_string_equal(chat_customer_last_visit(&hist, &hist.vehicles[1])->service, "Break-in");
    chat_customer_clear(&hist);
    chat_customer_clear(&two);
    chat_customer_clear(&twin);
}

static void test_next_service_hours(void **state)
{
    static const struct {
        int hours, due;
        const char *what;
    } cases[] = {{-1, -1, NULL},  {0, 20, "20-hour break-in service"}, {12, 20, "20-hour break-in service"},
                 {20, 100, "100-hour service"}, {286, 300, "300-hour service"}, {530, 600, "300-hour service"},
                 {610, 700, "100-hour service"}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_vehicle v = {.engine_hours = cases[i].hours};
        const char *what = NULL;
        assert_int_equal(chat_vehicle_next_service_hours(&v, &what), cases[i].due);
        if (cases[i].what) assert_string_equal(what, cases[i].what);
    }
}

static void test_answers_from_records(void **state)
{
    chat_customer hist, empty;
    assert_int_equal(chat_customer_load(db, "c-hist", &hist, err, sizeof err), 0);
    assert_int_equal(chat_customer_load(db, "c-empty", &empty, err, sizeof err), 0);
    const chat_vehicle *sea_dog = &hist.vehicles[0], *unnamed = &hist.vehicles[1];
    const struct {
        const chat_customer *c;
        int asks;
        const chat_vehicle *only;
        const char *must[3];
        const char *must_not;
    } cases[] = {
        {&hist, CHAT_ASK_BOATS | CHAT_ASK_DUE, NULL,
         {"2 boats on file: \"Sea Dog\" (Seawind 250), hull HH1, 530 engine hours: booked for 300-hour service on 2099-03-03 10:00",
          "your Seawind 190, hull HH2, 12 engine hours: no appointment booked; at 12 engine hours its next 20-hour "
          "break-in service is due at 20 hours", NULL},
         "Oil change"},
        {&hist, CHAT_ASK_LAST, NULL, {"last service visit was the Oil change on 2024-05-01 09:00", "Work done: Changed the oil.", NULL}, "Break-in"},
        {&hist, CHAT_ASK_LAST, unnamed, {"Break-in on 2023-01-01 09:00 at Crystal Lake", "Changed the gear oil.", NULL}, "Oil change"},
        {&hist, CHAT_ASK_HISTORY, NULL, {"- Trim check on 2024-03-01 09:00", "(cancelled)", "Work done: Replaced the impeller."}, "Old one"},
        {&hist, CHAT_ASK_HISTORY, sea_dog, {"Impeller replacement", NULL, NULL}, "Break-in"},
        {&hist, CHAT_ASK_NEXT, unnamed, {"no upcoming appointments on file for your Seawind 190", NULL, NULL}, "300-hour"},
        {&hist, CHAT_ASK_NEXT, NULL, {"Your next appointment is the 300-hour service on 2099-03-03 10:00 at Port Alden for \"Sea Dog\"", NULL, NULL}, NULL},
        {&hist, CHAT_ASK_HOURS, sea_dog, {"\"Sea Dog\" (Seawind 250) has 530 engine hours on record.", NULL, NULL}, "12 engine"},
        {&empty, CHAT_ASK_BOATS, NULL, {"no boats on file", NULL, NULL}, NULL},
        {&empty, CHAT_ASK_LAST, NULL, {"no completed service visits on file", NULL, NULL}, NULL},
        {&empty, CHAT_ASK_HISTORY, NULL, {"no past service visits on file", NULL, NULL}, NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_buf b;
        chat_buf_init(&b);
        assert_int_equal(chat_customer_answer(cases[i].c, cases[i].asks, cases[i].only, &b), 0);
        assert_non_null(strstr(b.data, "Here is what I have on file for you."));
        for (size_t k = 0; k < 3 && cases[i].must[k]; k++)
            if (!strstr(b.data, cases[i].must[k])) fail_msg("case %zu: missing '%s' in: %s", i, cases[i].must[k], b.data);
        if (cases[i].must_not && strstr(b.data, cases[i].must_not))
            fail_msg("case %zu: unexpected '%s' in: %s", i, cases[i].must_not, b.data);
        assert_null(strstr(b.data, "example.com"));
        chat_buf_free(&b);
    }
    assert_int_equal(chat_customer_answer(NULL, CHAT_ASK_BOATS, NULL, NULL), CHAT_EINVAL);
    chat_customer_clear(&hist);
    chat_customer_clear(&empty);
}

TESTUTIL_MAIN(setup, testutil_db_teardown,
              cmocka_unit_test(test_unknown),
              cmocka_unit_test(test_single_boat_describe),
              cmocka_unit_test(test_ordering_and_selection),
              cmocka_unit_test(test_no_boats_no_appointments),
              cmocka_unit_test(test_many_rows_bounded),
              cmocka_unit_test(test_work_done_and_each_boats_visit),
              cmocka_unit_test(test_vehicle_named),
              cmocka_unit_test(test_next_service_hours),
              cmocka_unit_test(test_answers_from_records))
