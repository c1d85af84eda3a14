/* The worker's answer registry (worker/worker_answers.c): an answer's text and pieces, the cursor rules
 * of a resume (table-driven: every case of wa_cursor), what an ATTACH is told, the followers' ids, and
 * the store of completed answers (replacement per session, expiry, the count bound). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "chat_common.h"
#include "testutil.h"
#include "worker_answers.h"

#define S(lit) ((chat_wire_str){lit, sizeof(lit) - 1})

/* "The ", "engine ", "has 280 hp." as one event of three pieces, then "!" alone. */
static void fill(wa_text *t)
{
    unsigned char lens[12];
    chat_wire_token_piece_put(lens, 4);
    chat_wire_token_piece_put(lens + 4, 7);
    chat_wire_token_piece_put(lens + 8, 11);
    assert_int_equal(wa_text_append(t, S("The engine has 280 hp."), (chat_wire_str){(const char *)lens, 12}), 0);
    assert_int_equal(wa_text_append(t, S("!"), S("")), 0);
    assert_int_equal(wa_text_append(t, S(""), S("")), 0); /* no piece */
}

static void test_text_and_offsets(void **state)
{
    (void)state;
    wa_text t;
    wa_text_init(&t);
    fill(&t);
    assert_int_equal(t.seq, 4);
    assert_string_equal(t.text.data, "The engine has 280 hp.!");
    static const struct {
        uint64_t n;
        size_t at;
    } cases[] = {{0, 0}, {1, 4}, {2, 11}, {3, 22}, {4, 23}, {5, 23}, {1000, 23}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) assert_int_equal(wa_text_offset(&t, cases[i].n), cases[i].at);
    wa_text_reset(&t);
    assert_int_equal(t.seq, 0);
    assert_int_equal(wa_text_offset(&t, 3), 0);
    wa_text_free(&t);
}

static void test_cursor_rules(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        uint64_t seq;
        bool finished;
        const char *client_answer; /* NULL or "": none given */
        uint64_t last_seq, want;
    } cases[] = {
        {"in flight, nothing yet", 5, false, "a1", 0, 0},
        {"in flight, some", 5, false, "a1", 3, 3},
        {"in flight, all so far", 5, false, "a1", 5, 5},
        {"in flight, future with its id: nothing missed", 5, false, "a1", 9, 5},
        {"in flight, future without id: an earlier answer's cursor", 5, false, NULL, 9, 0},
        {"in flight, future with an empty id", 5, false, "", 6, 0},
        {"in flight, stale without id", 5, false, NULL, 2, 2},
        {"in flight, an older answer's id", 5, false, "a0", 3, 0},
        {"in flight, a newer answer's id", 5, false, "a2", 3, 5},
        {"finished, missed the end", 5, true, "a1", 4, 4},
        {"finished, has every token but not the complete", 5, true, "a1", 5, 5},
        {"finished, has the complete", 5, true, "a1", 6, 6},
        {"finished, future with its id", 5, true, "a1", 60, 6},
        {"finished, future without id", 5, true, NULL, 60, 0},
        {"finished, has the complete, no id", 5, true, NULL, 6, 6},
        {"finished, an older answer's id", 5, true, "a0", 6, 0},
        {"finished, a newer answer's id (its answer was lost)", 5, true, "a2", 1, 6},
        {"finished without tokens", 0, true, "a1", 0, 0},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        uint64_t got = wa_cursor(cases[i].seq, cases[i].finished, "a1", cases[i].client_answer, cases[i].last_seq);
        if (got != cases[i].want) fail_msg("%s: %llu, not %llu", cases[i].name, (unsigned long long)got,
                                           (unsigned long long)cases[i].want);
    }
}

static void test_attached(void **state)
{
    (void)state;
    wa_text t;
    wa_text_init(&t);
    fill(&t);
    chat_wire_attach req = {.job_id = 9, .session_id = "s", .user_id = "alice", .answer_id = "a1", .last_seq = 2};
    chat_wire_attached out;
    wa_attached(&req, &t, "a1", NULL, 0, &out);
    assert_int_equal(out.status, CHAT_WIRE_ATT_IN_FLIGHT);
    assert_true(out.job_id == 9 && out.seq == 4 && out.cursor == 2 && out.from == 11 && out.age_ms == 0);
    assert_memory_equal(out.text.s + out.from, "has 280 hp.!", out.text.len - out.from);
    assert_int_equal(out.response.len, 0);

    chat_wire_event done = {.kind = CHAT_WIRE_EV_COMPLETE,
                            .complete = {S("The engine has 280 hp.!"), S("s"), S("{\"finish_reason\":\"stop\"}")}};
    req.last_seq = 5; /* has the complete */
    wa_attached(&req, &t, "a1", &done, 1200, &out);
    assert_int_equal(out.status, CHAT_WIRE_ATT_FINISHED);
    assert_true(out.cursor == 5 && out.from == out.text.len && out.age_ms == 1200);
    assert_true(chat_wire_str_eq(out.metadata_json, "{\"finish_reason\":\"stop\"}"));
    req.answer_id = "";
    req.last_seq = 0;
    wa_attached(&req, &t, "a1", &done, 0, &out);
    assert_true(out.cursor == 0 && out.from == 0);
    req.answer_id = "a2"; /* a newer answer's cursor: past this one */
    wa_attached(&req, &t, "a1", &done, 0, &out);
    assert_true(out.cursor == 5 && out.from == out.text.len);
    wa_text_free(&t);
}

static void test_subs(void **state)
{
    (void)state;
    wa_subs s = {0};
    assert_false(wa_subs_has(&s, 1, 0));
    for (uint64_t id = 1; id <= 40; id++) assert_int_equal(wa_subs_add(&s, id, (int)(id % 2)), 0);
    assert_int_equal(wa_subs_add(&s, 7, 1), 0); /* not twice */
    assert_int_equal(wa_subs_add(&s, 7, 0), 0); /* the same id from another broker is another subscription */
    assert_int_equal(s.n, 41);
    assert_true(wa_subs_remove(&s, 7, 1));
    assert_false(wa_subs_remove(&s, 7, 1));
    assert_false(wa_subs_has(&s, 7, 1));
    assert_true(wa_subs_has(&s, 7, 0));
    assert_true(wa_subs_has(&s, 40, 0) && wa_subs_has(&s, 1, 1));
    assert_int_equal(s.n, 40);
    wa_subs_drop_tag(&s, 1); /* that broker is gone */
    assert_int_equal(s.n, 21);
    for (size_t i = 0; i < s.n; i++) assert_int_equal(s.at[i].tag, 0);
    wa_subs_free(&s);
    assert_int_equal(s.n, 0);
}

static void put_of(wa_store *st, const char *user, const char *sid, const char *answer, const char *text, int64_t now)
{
    wa_text t;
    wa_text_init(&t);
    assert_int_equal(wa_text_append(&t, (chat_wire_str){text, strlen(text)}, S("")), 0);
    chat_wire_event done = {.kind = CHAT_WIRE_EV_COMPLETE,
                            .complete = {{text, strlen(text)}, {sid, strlen(sid)}, S("{}")}};
    assert_int_equal(wa_store_put(st, user, sid, answer, &t, &done, now), 0);
    assert_int_equal(t.text.len, 0); /* moved (or, kept nowhere, emptied) */
    assert_int_equal(t.seq, 0);
    wa_text_free(&t);
}

static void put(wa_store *st, const char *sid, const char *answer, const char *text, int64_t now)
{
    put_of(st, "alice", sid, answer, text, now);
}

static void test_store(void **state)
{
    (void)state;
    wa_store *st = wa_store_new(1000, 3);
    assert_non_null(st);
    put(st, "s1", "a1", "one", 0);
    put(st, "s2", "a2", "two", 100);
    const wa_kept *k = wa_store_find(st, "alice", "s1", 200);
    assert_non_null(k);
    assert_string_equal(k->answer_id, "a1");
    assert_string_equal(k->user_id, "alice");
    assert_string_equal(k->text.text.data, "one");
    assert_int_equal(k->text.seq, 1);
    assert_true(chat_wire_str_eq(k->complete->complete.response, "one"));
    /* a session's newer answer replaces the older one */
    put(st, "s1", "a3", "three", 300);
    assert_int_equal(wa_store_count(st), 2);
    assert_string_equal(wa_store_find(st, "alice", "s1", 300)->answer_id, "a3");
    /* the count bound: the oldest goes */
    put(st, "s4", "a4", "four", 400);
    put(st, "s5", "a5", "five", 500);
    assert_int_equal(wa_store_count(st), 3);
    assert_null(wa_store_find(st, "alice", "s2", 500));
    assert_non_null(wa_store_find(st, "alice", "s1", 500));
    /* the retention: s1 (300) expires at 1300, s4 at 1400 */
    assert_non_null(wa_store_find(st, "alice", "s4", 1299));
    assert_null(wa_store_find(st, "alice", "s1", 1300));
    assert_non_null(wa_store_find(st, "alice", "s4", 1300));
    assert_null(wa_store_find(st, "alice", "s4", 1400));
    assert_int_equal(wa_store_count(st), 1);
    assert_null(wa_store_find(st, "alice", "nope", 1400));
    wa_store_free(st);

    /* retention 0: nothing is kept */
    st = wa_store_new(0, 10);
    put(st, "s1", "a1", "one", 0);
    assert_int_equal(wa_store_count(st), 0);
    wa_store_free(st);
    wa_store_free(NULL);
}

/* A session is its user's own: bob's answer in a session of alice's id is kept beside hers, replaces
 * nothing of hers, and each finds only his own; a user with no answer in that session finds nothing. */
static void test_store_per_user(void **state)
{
    (void)state;
    wa_store *st = wa_store_new(1000, 10);
    put_of(st, "alice", "s1", "a1", "alice's", 0);
    put_of(st, "bob", "s1", "b1", "bob's", 10);
    assert_int_equal(wa_store_count(st), 2);
    const wa_kept *k = wa_store_find(st, "alice", "s1", 20);
    assert_non_null(k);
    assert_string_equal(k->answer_id, "a1");
    assert_string_equal(k->text.text.data, "alice's");
    k = wa_store_find(st, "bob", "s1", 20);
    assert_non_null(k);
    assert_string_equal(k->answer_id, "b1");
    assert_string_equal(k->user_id, "bob");
    assert_null(wa_store_find(st, "carol", "s1", 20));
    assert_null(wa_store_find(st, "Alice", "s1", 20));
    /* bob's newer answer replaces his older one, not alice's */
    put_of(st, "bob", "s1", "b2", "bob's again", 30);
    assert_int_equal(wa_store_count(st), 2);
    assert_string_equal(wa_store_find(st, "alice", "s1", 40)->answer_id, "a1");
    assert_string_equal(wa_store_find(st, "bob", "s1", 40)->answer_id, "b2");
    /* the key is the pair, not a concatenation: ("ab", "c") is not ("a", "bc") */
    put_of(st, "ab", "c", "x1", "x", 50);
    assert_null(wa_store_find(st, "a", "bc", 60));
    wa_store_free(st);
}

/* A session id names one conversation whatever its case, as in the database (chat_id_equal): an answer
 * kept under "Trip-1" is found for "TRIP-1" and replaced by the one of "trip-1"; the user still counts
 * byte for byte. */
static void test_store_session_case(void **state)
{
    (void)state;
    wa_store *st = wa_store_new(1000, 10);
    put_of(st, "alice", "Trip-1", "a1", "first", 0);
    const wa_kept *k = wa_store_find(st, "alice", "TRIP-1", 10);
    assert_non_null(k);
    assert_string_equal(k->answer_id, "a1");
    put_of(st, "alice", "trip-1", "a2", "second", 20);
    assert_int_equal(wa_store_count(st), 1);
    assert_string_equal(wa_store_find(st, "alice", "Trip-1", 30)->answer_id, "a2");
    assert_null(wa_store_find(st, "ALICE", "trip-1", 30));
    wa_store_free(st);
}

/* Many sessions in one store: lookups find each, collisions in a bucket included. */
static void test_store_many(void **state)
{
    (void)state;
    wa_store *st = wa_store_new(1000000, 5000);
    char sid[32], ans[32];
    for (int i = 0; i < 6000; i++) {
        snprintf(sid, sizeof sid, "session-%d", i);
        snprintf(ans, sizeof ans, "answer-%d", i);
        put(st, sid, ans, "x", i);
    }
    assert_int_equal(wa_store_count(st), 5000);
    for (int i = 0; i < 6000; i++) {
        snprintf(sid, sizeof sid, "session-%d", i);
        const wa_kept *k = wa_store_find(st, "alice", sid, 6000);
        if (i < 1000) {
            assert_null(k);
            continue;
        }
        assert_non_null(k);
        snprintf(ans, sizeof ans, "answer-%d", i);
        assert_string_equal(k->answer_id, ans);
    }
    wa_store_free(st);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_text_and_offsets),
              cmocka_unit_test(test_cursor_rules),
              cmocka_unit_test(test_attached),
              cmocka_unit_test(test_subs),
              cmocka_unit_test(test_store),
              cmocka_unit_test(test_store_per_user),
              cmocka_unit_test(test_store_session_case),
              cmocka_unit_test(test_store_many))
