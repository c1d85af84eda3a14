/* Conversation memory against the real private MariaDB: session creation, sessions keyed by (user, id)
 * (another user's id is a new conversation of one's own, and two users' conversations of one id never
 * mix), malformed ids, history order and limit, idempotent turns, the REST JSON, Unicode and large texts,
 * races for a new session id, migration 005 keeping existing conversations, and the database restarted
 * between two calls (chat_db must reconnect).
 * Set CHAT_TEST_SKIP_RESTART=1 to skip the restart test when other people share the test server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <libgen.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_memory.h"
#include "chat_util.h"
#include "testutil.h"

static chat_db *db;
static char err[512];

static int setup(void **state)
{
    *state = db = testutil_db_fresh("memory", TESTUTIL_SCHEMA);
    return 0;
}

static long long count_messages(const char *sid)
{
    return testutil_count(db, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", sid);
}

/* A session opened (or created) without its history: the id and whether it was created. */
static int memory_open(chat_db *d, const char *user, const char *req, const char *customer,
                       char out_id[CHAT_SESSION_ID_MAX + 1], int *created, char *e, size_t elen)
{
    chat_session_info info;
    int rc = chat_memory_open_session(d, user, req, customer, false, 0, NULL, &info, e, elen);
    if (created) *created = rc ? 0 : info.created;
    snprintf(out_id, CHAT_SESSION_ID_MAX + 1, "%s", rc ? "" : info.id);
    return rc;
}

static void open_ok(const char *user, const char *req, char sid[CHAT_SESSION_ID_MAX + 1], int want_created)
{
    int created = -1;
    int rc = memory_open(db, user, req, NULL, sid, &created, err, sizeof err);
    if (rc) fail_msg("open %s for %s: %s (%s)", req ? req : "(new)", user, chat_strerror(rc), err);
    assert_int_equal(created, want_created);
}

static void test_open_and_ownership(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1], sid2[CHAT_SESSION_ID_MAX + 1];
    /* no id: a new UUID session */
    open_ok("alice", NULL, sid, 1);
    assert_int_equal(strlen(sid), 36);
    assert_true(chat_id_valid(sid));
    open_ok("alice", "", sid2, 1);
    assert_string_not_equal(sid, sid2);
    /* reopen by its owner */
    char again[CHAT_SESSION_ID_MAX + 1];
    open_ok("alice", sid, again, 0);
    assert_string_equal(again, sid);
    /* another user naming it opens a new conversation of his own, whatever the case of the user id (the
     * user is compared byte for byte, trailing space included); then it is his, and alice's stays hers */
    static const char *const others[] = {"bob", "Alice", "alice ", "ALICE"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(others); i++) {
        open_ok(others[i], sid, again, 1);
        assert_string_equal(again, sid);
        open_ok(others[i], sid, again, 0);
    }
    open_ok("alice", sid, again, 0);
    assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_sessions WHERE id = ?", sid), 5);
    /* a session id is one session of its user whatever its case */
    char upper[CHAT_SESSION_ID_MAX + 1];
    snprintf(upper, sizeof upper, "%s", sid);
    for (char *p = upper; *p; p++)
        if (*p >= 'a' && *p <= 'z') *p = (char)(*p - 32);
    open_ok("bob", upper, again, 0);
    /* a client-chosen id is created on first use and the user's from then on */
    open_ok("carol", "carol-session.1:x", again, 1);
    open_ok("carol", "carol-session.1:x", again, 0);
    open_ok("dave", "carol-session.1:x", again, 1);
    /* malformed ids and users */
    char big[80];
    memset(big, 'a', 65), big[65] = '\0';
    static const char *const bad_ids[] = {"has space", "semi;colon", "quote'", "slash/x", "\xc3\xa9t\xc3\xa9",
                                          "%", "a\nb"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad_ids); i++)
        assert_int_equal(memory_open(db, "alice", bad_ids[i], NULL, again, NULL, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(memory_open(db, "alice", big, NULL, again, NULL, err, sizeof err), CHAT_EINVAL);
    memset(big, 'a', 64), big[64] = '\0';
    open_ok("alice", big, again, 1); /* 64 is the limit, included */
    assert_int_equal(memory_open(db, "", NULL, NULL, again, NULL, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(memory_open(db, NULL, NULL, NULL, again, NULL, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(memory_open(db, "\xff", NULL, NULL, again, NULL, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(memory_open(db, "alice", NULL, "bad customer", again, NULL, err, sizeof err), CHAT_EINVAL);
    /* a Unicode user id (JWT sub) is fine */
    open_ok("\xe7\x94\xa8\xe6\x88\xb7-1", NULL, again, 1);
}

/* A session named by the caller before its first turn (the streamer's UUID): nothing is written until the
 * turn; the check then sees it for its user only; an id the user has already cannot be chosen again for a
 * new conversation, while another user's id of the same name is no obstacle. */
static void test_new_session_and_owner(void **state)
{
    (void)state;
    char sid[CHAT_SESSION_ID_MAX + 1];
    open_ok("alice", NULL, sid, 1);
    chat_session_info info;
    assert_int_equal(chat_memory_new_session("chosen-new-1", &info, err, sizeof err), 0);
    assert_string_equal(info.id, "chosen-new-1");
    assert_true(info.created && info.deferred);
    assert_int_equal(chat_memory_new_session("bad id", &info, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(chat_memory_new_session(NULL, &info, err, sizeof err), CHAT_EINVAL);
    /* not written yet */
    assert_int_equal(chat_memory_session_exists(db, "alice", "chosen-new-1", err, sizeof err), CHAT_ENOTFOUND);
    assert_int_equal(chat_memory_create_session(db, "chosen-new-1", "alice", NULL, err, sizeof err), 0);
    assert_int_equal(chat_memory_session_exists(db, "alice", "chosen-new-1", err, sizeof err), 0);
    /* another user has no such session: the same answer as for an id nobody has */
    assert_int_equal(chat_memory_session_exists(db, "bob", "chosen-new-1", err, sizeof err), CHAT_ENOTFOUND);
    assert_int_equal(chat_memory_session_exists(db, "alice", sid, err, sizeof err), 0);
    assert_int_equal(chat_memory_session_exists(db, "Alice", sid, err, sizeof err), CHAT_ENOTFOUND);
    assert_int_equal(chat_memory_session_exists(db, "alice", "no-such-session", err, sizeof err), CHAT_ENOTFOUND);
    assert_int_equal(chat_memory_session_exists(db, "alice", "bad id", err, sizeof err), CHAT_EINVAL);
    /* a chosen id the user has is refused when its row is written; another user's is his own new one */
    assert_int_equal(chat_memory_create_session(db, sid, "alice", NULL, err, sizeof err), CHAT_ECONFLICT);
    assert_int_equal(chat_memory_create_session(db, sid, "bob", NULL, err, sizeof err), 0);
    assert_int_equal(chat_memory_session_exists(db, "bob", sid, err, sizeof err), 0);
    assert_int_equal(chat_memory_session_exists(db, "alice", sid, err, sizeof err), 0);
}

static int customer_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    snprintf(ud, 64, "%s", v[0] ? v[0] : "(null)");
    return 0;
}

static void test_customer_tie(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1], cust[64];
    int created = 0;
    assert_int_equal(memory_open(db, "erin", "erin-1", NULL, sid, &created, err, sizeof err), 0);
    chat_db_param p = CHAT_DB_P_STR("erin-1");
    const char *sql = "SELECT customer_id FROM chat_sessions WHERE user_id = 'erin' AND id = ?";
    assert_int_equal(chat_db_run(db, sql, &p, 1, customer_row, cust, NULL, NULL, err, sizeof err), 0);
    assert_string_equal(cust, "(null)");
    /* the first customer named ties the session; a later one does not re-tie it */
    assert_int_equal(memory_open(db, "erin", "erin-1", "cust-1001", sid, NULL, err, sizeof err), 0);
    assert_int_equal(memory_open(db, "erin", "erin-1", "cust-1002", sid, NULL, err, sizeof err), 0);
    assert_int_equal(chat_db_run(db, sql, &p, 1, customer_row, cust, NULL, NULL, err, sizeof err), 0);
    assert_string_equal(cust, "cust-1001");
    assert_int_equal(memory_open(db, "erin", NULL, "cust-1003", sid, &created, err, sizeof err), 0);
    p = CHAT_DB_P_STR(sid);
    assert_int_equal(chat_db_run(db, sql, &p, 1, customer_row, cust, NULL, NULL, err, sizeof err), 0);
    assert_string_equal(cust, "cust-1003");
    /* another user's session of the same id has its own customer, and leaves erin's alone */
    assert_int_equal(memory_open(db, "fred", "erin-1", "cust-1002", sid, &created, err, sizeof err), 0);
    assert_int_equal(created, 1);
    p = CHAT_DB_P_STR("erin-1");
    assert_int_equal(chat_db_run(db, sql, &p, 1, customer_row, cust, NULL, NULL, err, sizeof err), 0);
    assert_string_equal(cust, "cust-1001");
    assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_sessions WHERE user_id = 'fred' AND id = ?"
                                        " AND customer_id = 'cust-1002'", "erin-1"),
                     1);
}

static void store_ok(const char *user, const char *sid, const char *rid, const char *u, const char *a,
                     const char *meta)
{
    int rc = chat_memory_store_turn(db, user, sid, rid, u, a, meta, true, err, sizeof err);
    if (rc) fail_msg("store %s/%s/%s: %s (%s)", user, sid, rid, chat_strerror(rc), err);
}

static void test_history_order_and_limit(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1];
    open_ok("frank", NULL, sid, 1);
    char rid[16], u[32], a[32];
    for (int i = 1; i <= 5; i++) {
        snprintf(rid, sizeof rid, "r%d", i), snprintf(u, sizeof u, "question %d", i), snprintf(a, sizeof a, "answer %d", i);
        store_ok("frank", sid, rid, u, a, NULL);
    }
    chat_history h;
    assert_int_equal(testutil_history(db, sid, 3, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 6);
    for (size_t i = 0; i < h.n; i++) {
        snprintf(u, sizeof u, "%s %zu", i % 2 ? "answer" : "question", 3 + i / 2);
        assert_string_equal(h.items[i].role, i % 2 ? "assistant" : "user");
        assert_string_equal(h.items[i].content, u);
    }
    chat_history_clear(&h);
    assert_int_equal(h.n, 0);
    chat_history_clear(&h); /* twice is fine */
    assert_int_equal(testutil_history(db, sid, 100, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 10);
    assert_string_equal(h.items[0].content, "question 1");
    chat_history_clear(&h);
    assert_int_equal(testutil_history(db, sid, 0, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(testutil_history(db, sid, -3, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 0);
    /* an unknown session has an empty history; a malformed id is refused */
    assert_int_equal(testutil_history(db, "nobody-here", 5, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 0);
    assert_int_equal(testutil_history(db, "bad id", 5, &h, err, sizeof err), CHAT_EINVAL);
    assert_null(h.items);
}

static void test_store_idempotent(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1];
    open_ok("grace", NULL, sid, 1);
    store_ok("grace", sid, "req-1", "What is the beam?", "8 ft 6 in.", "{\"agent\":\"specs\"}");
    store_ok("grace", sid, "req-1", "What is the beam?", "8 ft 6 in.", "{\"agent\":\"specs\"}");
    assert_int_equal(count_messages(sid), 2);
    /* a retry with other text keeps what was stored first */
    store_ok("grace", sid, "req-1", "changed", "changed", NULL);
    assert_int_equal(count_messages(sid), 2);
    chat_history h;
    assert_int_equal(testutil_history(db, sid, 5, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 2);
    assert_string_equal(h.items[0].content, "What is the beam?");
    chat_history_clear(&h);
    /* request ids are per session: the same id in another session is another turn */
    char other[CHAT_SESSION_ID_MAX + 1];
    open_ok("grace", NULL, other, 1);
    store_ok("grace", other, "req-1", "hi", "hello", NULL);
    assert_int_equal(count_messages(other), 2);
    /* an empty answer (a cancelled generation) is a turn too */
    store_ok("grace", sid, "req-2", "and the draft?", "", NULL);
    assert_int_equal(count_messages(sid), 4);
    /* refused inputs store nothing */
    assert_int_equal(chat_memory_store_turn(db, "grace", "no-such-session", "r", "u", "a", NULL, true, err, sizeof err),
                     CHAT_ENOTFOUND);
    assert_int_equal(count_messages("no-such-session"), 0);
    assert_int_equal(chat_memory_store_turn(db, "grace", sid, "bad id", "u", "a", NULL, true, err, sizeof err),
                     CHAT_EINVAL);
    assert_int_equal(chat_memory_store_turn(db, "grace", sid, "", "u", "a", NULL, true, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(chat_memory_store_turn(db, "grace", "bad id", "r", "u", "a", NULL, true, err, sizeof err),
                     CHAT_EINVAL);
    assert_int_equal(chat_memory_store_turn(db, "grace", sid, "r3", NULL, "a", NULL, true, err, sizeof err),
                     CHAT_EINVAL);
    assert_int_equal(chat_memory_store_turn(db, "grace", sid, "r3", "u", NULL, NULL, true, err, sizeof err),
                     CHAT_EINVAL);
    assert_int_equal(chat_memory_store_turn(db, "grace", sid, "r3", "bad \xff utf8", "a", NULL, true, err, sizeof err),
                     CHAT_EINVAL);
    assert_int_equal(chat_memory_store_turn(db, "grace", sid, "r3", "u", "cut \xe2\x80", NULL, true, err, sizeof err),
                     CHAT_EINVAL);
    assert_int_equal(count_messages(sid), 4);
}

/* Several turns in one statement: all stored, in order, idempotent like single ones; one bad turn (an
 * unknown session, an invalid text) stores none of them. */
static void test_store_turns_together(void **state)
{
    char a[CHAT_SESSION_ID_MAX + 1], b[CHAT_SESSION_ID_MAX + 1];
    open_ok("heidi", NULL, a, 1);
    open_ok("heidi", NULL, b, 1);
    chat_memory_turn t[3] = {
        {"heidi", a, "t-1", "first question", "first answer", "{\"agent\":\"specs\"}"},
        {"heidi", b, "t-1", "other question", "other answer", NULL},
        {"heidi", a, "t-2", "second question", "second answer", NULL},
    };
    assert_int_equal(chat_memory_store_turns(db, t, 3, err, sizeof err), 0);
    assert_int_equal(count_messages(a), 4);
    assert_int_equal(count_messages(b), 2);
    chat_history h;
    assert_int_equal(testutil_history(db, a, 5, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 4);
    assert_string_equal(h.items[0].content, "first question");
    assert_string_equal(h.items[1].content, "first answer");
    assert_string_equal(h.items[3].content, "second answer");
    chat_history_clear(&h);
    assert_int_equal(chat_memory_store_turns(db, t, 3, err, sizeof err), 0); /* a retry: no new rows */
    assert_int_equal(count_messages(a), 4);

    chat_memory_turn bad[2] = {{"heidi", a, "t-3", "kept?", "no", NULL},
                               {"heidi", "no-such-session", "t-3", "u", "a", NULL}};
    assert_int_not_equal(chat_memory_store_turns(db, bad, 2, err, sizeof err), 0);
    assert_int_equal(count_messages(a), 4); /* all or none */
    bad[1] = (chat_memory_turn){"heidi", b, "t-3", "bad \xff utf8", "a", NULL};
    assert_int_equal(chat_memory_store_turns(db, bad, 2, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(count_messages(a), 4);
    assert_int_equal(chat_memory_store_turns(db, t, 0, err, sizeof err), CHAT_EINVAL);
    chat_memory_turn many[CHAT_MEMORY_BATCH_MAX + 1];
    for (int i = 0; i <= CHAT_MEMORY_BATCH_MAX; i++) many[i] = t[0];
    assert_int_equal(chat_memory_store_turns(db, many, CHAT_MEMORY_BATCH_MAX + 1, err, sizeof err), CHAT_EINVAL);
}

static int ts_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    snprintf(ud, 32, "%s", v[0] ? v[0] : "");
    return 0;
}

static void test_updated_at_touched(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1], ts[32];
    open_ok("heidi", NULL, sid, 1);
    chat_db_param p = CHAT_DB_P_STR(sid);
    assert_int_equal(chat_db_run(db, "UPDATE chat_sessions SET updated_at = '2001-01-01 00:00:00' WHERE id = ?", &p, 1,
                                 NULL, NULL, NULL, NULL, err, sizeof err),
                     0);
    /* opening reports the stale timestamp; storing with touch refreshes it, and then it is fresh */
    chat_session_info info;
    assert_int_equal(chat_memory_open_session(db, "heidi", sid, NULL, false, 0, NULL, &info, err, sizeof err), 0);
    assert_true(info.touch_due);
    assert_false(info.created);
    store_ok("heidi", sid, "r1", "u", "a", NULL);
    assert_int_equal(chat_db_run(db, "SELECT updated_at > '2020-01-01' FROM chat_sessions WHERE id = ?", &p, 1, ts_row,
                                 ts, NULL, NULL, err, sizeof err),
                     0);
    assert_string_equal(ts, "1");
    assert_int_equal(chat_memory_open_session(db, "heidi", sid, NULL, false, 0, NULL, &info, err, sizeof err), 0);
    assert_false(info.touch_due);
    /* without touch the turn is stored and the timestamp is left alone */
    assert_int_equal(chat_db_run(db, "UPDATE chat_sessions SET updated_at = '2001-01-01 00:00:00' WHERE id = ?", &p, 1,
                                 NULL, NULL, NULL, NULL, err, sizeof err),
                     0);
    assert_int_equal(chat_memory_store_turn(db, "heidi", sid, "r2", "u2", "a2", NULL, false, err, sizeof err), 0);
    assert_int_equal(count_messages(sid), 4);
    assert_int_equal(chat_db_run(db, "SELECT updated_at > '2020-01-01' FROM chat_sessions WHERE id = ?", &p, 1, ts_row,
                                 ts, NULL, NULL, err, sizeof err),
                     0);
    assert_string_equal(ts, "0");
}

/* Owner check and history in one call: the pipeline's path for every turn of an existing session. */
static void test_open_session_with_history(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1], rid[16], u[32], a[32];
    open_ok("judy", NULL, sid, 1);
    chat_history h;
    chat_session_info info;
    /* no turns yet: opened, empty history */
    assert_int_equal(chat_memory_open_session(db, "judy", sid, NULL, false, 5, &h, &info, err, sizeof err), 0);
    assert_string_equal(info.id, sid);
    assert_false(info.created);
    assert_int_equal(h.n, 0);
    for (int i = 1; i <= 4; i++) {
        snprintf(rid, sizeof rid, "r%d", i), snprintf(u, sizeof u, "question %d", i), snprintf(a, sizeof a, "answer %d", i);
        store_ok("judy", sid, rid, u, a, NULL);
    }
    static const struct {
        int turns;
        size_t n;
        int first; /* number of the oldest question returned */
    } cases[] = {{1, 2, 4}, {3, 6, 2}, {4, 8, 1}, {50, 8, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        assert_int_equal(chat_memory_open_session(db, "judy", sid, NULL, false, cases[c].turns, &h, &info, err, sizeof err),
                         0);
        assert_int_equal(h.n, cases[c].n);
        for (size_t i = 0; i < h.n; i++) {
            snprintf(u, sizeof u, "%s %zu", i % 2 ? "answer" : "question", cases[c].first + i / 2);
            assert_string_equal(h.items[i].role, i % 2 ? "assistant" : "user");
            assert_string_equal(h.items[i].content, u);
        }
        chat_history_clear(&h);
    }
    /* zero turns: the owner check alone */
    assert_int_equal(chat_memory_open_session(db, "judy", sid, NULL, false, 0, &h, &info, err, sizeof err), 0);
    assert_int_equal(h.n, 0);
    /* another user naming it: a new conversation of hers, and not a byte of judy's history comes back */
    assert_int_equal(chat_memory_open_session(db, "mallory", sid, NULL, false, 5, &h, &info, err, sizeof err), 0);
    assert_true(info.created);
    assert_int_equal(h.n, 0);
    assert_null(h.items);
    /* an unknown id is created for its caller, with no history */
    assert_int_equal(chat_memory_open_session(db, "judy", "judy-new-1", NULL, false, 5, &h, &info, err, sizeof err), 0);
    assert_true(info.created);
    assert_string_equal(info.id, "judy-new-1");
    assert_int_equal(h.n, 0);
    /* a new session without an id */
    assert_int_equal(chat_memory_open_session(db, "judy", NULL, NULL, false, 5, &h, &info, err, sizeof err), 0);
    assert_true(info.created);
    assert_int_equal(strlen(info.id), 36);
    /* deferred: a new session costs no round trip before the answer; its row comes with the first turn */
    chat_session_info d;
    assert_int_equal(chat_memory_open_session(db, "judy", NULL, "cust-1001", true, 5, &h, &d, err, sizeof err), 0);
    assert_true(d.created && d.deferred);
    assert_int_equal(strlen(d.id), 36);
    assert_int_equal(h.n, 0);
    assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_sessions WHERE id = ?", d.id), 0);
    assert_int_equal(chat_memory_store_turn(db, "judy", d.id, "r1", "u", "a", NULL, false, err, sizeof err),
                     CHAT_ENOTFOUND);
    assert_int_equal(chat_memory_create_session(db, d.id, "judy", "cust-1001", err, sizeof err), 0);
    assert_int_equal(chat_memory_create_session(db, d.id, "judy", NULL, err, sizeof err), CHAT_ECONFLICT);
    store_ok("judy", d.id, "r1", "u", "a", NULL);
    assert_int_equal(count_messages(d.id), 2);
    chat_session_info again;
    assert_int_equal(chat_memory_open_session(db, "judy", d.id, NULL, true, 5, &h, &again, err, sizeof err), 0);
    assert_false(again.created || again.deferred); /* an existing session is read as before */
    assert_string_equal(again.id, d.id);
    assert_int_equal(h.n, 2);
    chat_history_clear(&h);
    assert_int_equal(chat_memory_open_session(db, "mallory", d.id, NULL, true, 5, &h, &again, err, sizeof err), 0);
    assert_true(again.created);
    assert_int_equal(h.n, 0);
    assert_int_equal(chat_memory_open_session(db, "judy", "bad id", NULL, false, 5, &h, &info, err, sizeof err), CHAT_EINVAL);
    assert_int_equal(chat_memory_open_session(db, "judy", sid, NULL, false, 5, &h, NULL, err, sizeof err), CHAT_EINVAL);
}

static void test_messages_json(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1];
    open_ok("ivan", NULL, sid, 1);
    store_ok("ivan", sid, "r1", "Is the \"250\" fast?\n", "Yes: 52 mph </script>",
             "{\"agent\":\"specs\",\"confidence\":0.9}");
    store_ok("ivan", sid, "r2", "thanks", "You're welcome.", "not json {");
    char *json = NULL;
    assert_int_equal(chat_memory_messages_json(db, "ivan", sid, &json, err, sizeof err), 0);
    assert_non_null(json);
    json_object *root = json_tokener_parse(json);
    assert_non_null(root);
    json_object *v, *msgs;
    assert_true(json_object_object_get_ex(root, "session_id", &v));
    assert_string_equal(json_object_get_string(v), sid);
    assert_true(json_object_object_get_ex(root, "messages", &msgs));
    assert_int_equal(json_object_array_length(msgs), 4);
    static const char *const roles[] = {"user", "assistant", "user", "assistant"};
    static const char *const contents[] = {"Is the \"250\" fast?\n", "Yes: 52 mph </script>", "thanks",
                                           "You're welcome."};
    for (size_t i = 0; i < 4; i++) {
        json_object *m = json_object_array_get_idx(msgs, i);
        assert_true(json_object_object_get_ex(m, "role", &v));
        assert_string_equal(json_object_get_string(v), roles[i]);
        assert_true(json_object_object_get_ex(m, "content", &v));
        assert_string_equal(json_object_get_string(v), contents[i]);
        assert_true(json_object_object_get_ex(m, "created_at", &v));
        const char *ts = json_object_get_string(v);
        /* 2025-01-02T03:04:05.678Z */
        assert_int_equal(strlen(ts), 24);
        assert_true(ts[4] == '-' && ts[10] == 'T' && ts[19] == '.' && ts[23] == 'Z');
        assert_true(ts[0] == '2');
        /* metadata: only on the first answer; the unparsable one is left out */
        bool has_meta = json_object_object_get_ex(m, "metadata", &v);
        assert_int_equal(has_meta, i == 1);
        if (has_meta) {
            json_object *agent;
            assert_true(json_object_object_get_ex(v, "agent", &agent));
            assert_string_equal(json_object_get_string(agent), "specs");
        }
    }
    json_object_put(root);
    free(json);
    /* only the owner: for anybody else it is a session he does not have, as one nobody has */
    json = (char *)1;
    assert_int_equal(chat_memory_messages_json(db, "mallory", sid, &json, err, sizeof err), CHAT_ENOTFOUND);
    assert_null(json);
    assert_int_equal(chat_memory_messages_json(db, "ivan", "no-such-session", &json, err, sizeof err),
                     CHAT_ENOTFOUND);
    assert_int_equal(chat_memory_messages_json(db, "ivan", "bad id", &json, err, sizeof err), CHAT_EINVAL);
    /* an empty session */
    open_ok("ivan", "ivan-empty", sid, 1);
    assert_int_equal(chat_memory_messages_json(db, "ivan", sid, &json, err, sizeof err), 0);
    assert_string_equal(json, "{\"session_id\":\"ivan-empty\",\"messages\":[]}");
    free(json);
}

static void test_unicode_and_sizes(void **state)
{
    char sid[CHAT_SESSION_ID_MAX + 1];
    open_ok("judy", NULL, sid, 1);
    const char *u = "\xf0\x9f\x9a\xa4 \xe8\x88\xb9\xe3\x81\xae\xe3\x82\xa8\xe3\x83\xb3\xe3\x82\xb8\xe3\x83\xb3\xe3\x81"
                    "\x8c\xe5\x8b\x95\xe3\x81\x8b\xe3\x81\xaa\xe3\x81\x84 e\xcc\x81 \xd8\xa7\xd9\x84\xd9\x82\xd8\xa7\xd8"
                    "\xb1\xd8\xa8";
    const char *a = "\xf0\x9f\x98\x80\xf0\x9f\x91\x8d\xf0\x9f\x8f\xbd \xe5\xae\x8c\xe4\xba\x86";
    store_ok("judy", sid, "r1", u, a, "{\"note\":\"\xf0\x9f\x9a\xa4\"}");
    chat_history h;
    assert_int_equal(testutil_history(db, sid, 1, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 2);
    assert_string_equal(h.items[0].content, u);
    assert_string_equal(h.items[1].content, a);
    chat_history_clear(&h);
    char *json = NULL;
    assert_int_equal(chat_memory_messages_json(db, "judy", sid, &json, err, sizeof err), 0);
    json_object *root = json_tokener_parse(json), *msgs, *v;
    assert_true(json_object_object_get_ex(root, "messages", &msgs));
    assert_true(json_object_object_get_ex(json_object_array_get_idx(msgs, 0), "content", &v));
    assert_string_equal(json_object_get_string(v), u);
    json_object_put(root);
    free(json);

    /* 1 MB is far above the front ends' 8 KB cap but within MEDIUMTEXT: stored and read back intact */
    size_t mb = 1024 * 1024;
    char *big = malloc(mb + 1);
    assert_non_null(big);
    for (size_t i = 0; i < mb; i++) big[i] = (char)('a' + i % 26);
    big[mb] = '\0';
    store_ok("judy", sid, "r-big", big, "ok", NULL);
    assert_int_equal(testutil_history(db, sid, 1, &h, err, sizeof err), 0);
    assert_int_equal(h.n, 2);
    assert_int_equal(strlen(h.items[0].content), mb);
    assert_memory_equal(h.items[0].content, big, mb);
    chat_history_clear(&h);
    free(big);
    /* above MEDIUMTEXT: refused before reaching the server */
    size_t too = 16777216;
    big = malloc(too + 1);
    assert_non_null(big);
    memset(big, 'x', too), big[too] = '\0';
    assert_int_equal(chat_memory_store_turn(db, "judy", sid, "r-huge", big, "a", NULL, true, err, sizeof err),
                     CHAT_EINVAL);
    free(big);
    assert_int_equal(count_messages(sid), 4);
}

/* Two users race to create the same new session id on separate connections: each gets a conversation of
 * his own; the same user racing himself gets one conversation, created once. */
typedef struct racer {
    const char *user;
    const char *sid;
    int rc, created;
} racer;

static void *race(void *arg)
{
    racer *r = arg;
    chat_config cfg = testutil_config("memory");
    chat_db *d = chat_db_new(&cfg);
    char out[CHAT_SESSION_ID_MAX + 1], e[256];
    r->rc = d ? memory_open(d, r->user, r->sid, NULL, out, &r->created, e, sizeof e) : CHAT_ENOMEM;
    chat_db_free(d);
    return NULL;
}

static void test_open_race(void **state)
{
    for (int i = 0; i < 20; i++) {
        char sid[32];
        snprintf(sid, sizeof sid, "race-%d", i);
        bool same = i % 2; /* one user twice, or two users */
        racer a = {"user-a", sid, 99, -1}, b = {same ? "user-a" : "user-b", sid, 99, -1};
        pthread_t ta, tb;
        assert_int_equal(pthread_create(&ta, NULL, race, &a), 0);
        assert_int_equal(pthread_create(&tb, NULL, race, &b), 0);
        pthread_join(ta, NULL), pthread_join(tb, NULL);
        if (a.rc || b.rc) fail_msg("race %d: %s / %s", i, chat_strerror(a.rc), chat_strerror(b.rc));
        if (a.created + b.created != (same ? 1 : 2)) fail_msg("race %d: created %d + %d", i, a.created, b.created);
        assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_sessions WHERE id = ?", sid), same ? 1 : 2);
    }
}

/* The two users' conversations of one session id never mix: bob naming alice's id gets a new session of
 * his own with no history of hers, his turns (even under the same request id) are stored apart, each
 * history, REST JSON, batch insert, timestamp and check sees its own user's only, and a user with no
 * session of that id can store nothing into either. */
static void test_same_id_two_users(void **state)
{
    (void)state;
    const char *sid = "shared-1";
    char out[CHAT_SESSION_ID_MAX + 1];
    open_ok("alice", sid, out, 1);
    store_ok("alice", sid, "r1", "alice asks about the Seawind", "alice's answer", NULL);
    chat_history h;
    chat_session_info info;
    assert_int_equal(chat_memory_open_session(db, "bob", sid, NULL, false, 10, &h, &info, err, sizeof err), 0);
    assert_true(info.created);
    assert_string_equal(info.id, sid);
    assert_int_equal(h.n, 0);
    store_ok("bob", sid, "r1", "bob asks about the Breeze", "bob's answer", NULL);
    assert_int_equal(count_messages(sid), 4);
    static const struct {
        const char *user, *question, *answer;
    } own[] = {{"alice", "alice asks about the Seawind", "alice's answer"},
               {"bob", "bob asks about the Breeze", "bob's answer"}};
    for (size_t u = 0; u < 2; u++) {
        assert_int_equal(chat_memory_open_session(db, own[u].user, sid, NULL, false, 10, &h, &info, err, sizeof err),
                         0);
        assert_false(info.created);
        assert_int_equal(h.n, 2);
        assert_string_equal(h.items[0].content, own[u].question);
        assert_string_equal(h.items[1].content, own[u].answer);
        chat_history_clear(&h);
        char *json = NULL;
        assert_int_equal(chat_memory_messages_json(db, own[u].user, sid, &json, err, sizeof err), 0);
        assert_non_null(strstr(json, own[u].question));
        assert_null(strstr(json, own[1 - u].question));
        assert_null(strstr(json, own[1 - u].answer));
        free(json);
        assert_int_equal(chat_memory_session_exists(db, own[u].user, sid, err, sizeof err), 0);
    }
    /* a batch holding a turn of each goes to each one's session */
    chat_memory_turn t[2] = {{"alice", sid, "r2", "alice again", "a2", NULL},
                             {"bob", sid, "r2", "bob again", "b2", NULL}};
    assert_int_equal(chat_memory_store_turns(db, t, 2, err, sizeof err), 0);
    assert_int_equal(chat_memory_open_session(db, "alice", sid, NULL, false, 10, &h, &info, err, sizeof err), 0);
    assert_int_equal(h.n, 4);
    assert_string_equal(h.items[2].content, "alice again");
    chat_history_clear(&h);
    assert_int_equal(chat_memory_open_session(db, "bob", sid, NULL, false, 10, &h, &info, err, sizeof err), 0);
    assert_int_equal(h.n, 4);
    assert_string_equal(h.items[0].content, "bob asks about the Breeze");
    assert_string_equal(h.items[2].content, "bob again");
    chat_history_clear(&h);
    /* touching one leaves the other's timestamp */
    testutil_sql(db, "UPDATE chat_sessions SET updated_at = '2001-01-01 00:00:00' WHERE id = 'shared-1'");
    assert_int_equal(chat_memory_touch_session(db, "alice", sid, err, sizeof err), 0);
    assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_sessions WHERE id = ? AND updated_at > '2020-01-01'",
                                    sid),
                     1);
    assert_int_equal(chat_memory_open_session(db, "bob", sid, NULL, false, 0, NULL, &info, err, sizeof err), 0);
    assert_true(info.touch_due);
    /* carol has no session of that id: nothing she stores lands in theirs */
    assert_int_equal(chat_memory_session_exists(db, "carol", sid, err, sizeof err), CHAT_ENOTFOUND);
    assert_int_equal(chat_memory_store_turn(db, "carol", sid, "r3", "u", "a", NULL, false, err, sizeof err),
                     CHAT_ENOTFOUND);
    assert_int_equal(count_messages(sid), 8);
    char *json = (char *)1;
    assert_int_equal(chat_memory_messages_json(db, "carol", sid, &json, err, sizeof err), CHAT_ENOTFOUND);
    assert_null(json);
    /* deleting one user's session takes its messages only */
    testutil_sql(db, "DELETE FROM chat_sessions WHERE user_id = 'bob' AND id = 'shared-1'");
    assert_int_equal(count_messages(sid), 4);
    assert_int_equal(chat_memory_open_session(db, "alice", sid, NULL, false, 10, &h, &info, err, sizeof err), 0);
    assert_int_equal(h.n, 4);
    chat_history_clear(&h);
}

/* A database of schema version 4 (sessions keyed by id alone) keeps every conversation through migration
 * 005, each still its owner's: the owner reads her history, another user naming the id starts his own. */
static void test_migration_005_keeps_sessions(void **state)
{
    (void)state;
    chat_db *d = testutil_db_fresh("memory_m005", 0);
    char schema[1024], migrations[1024];
    snprintf(schema, sizeof schema, "%s", testutil_path("sql/schema.sql"));
    snprintf(migrations, sizeof migrations, "%s", testutil_path("sql/migrations"));
    int version = 0;
    if (chat_db_migrate(d, schema, NULL, &version, err, sizeof err)) fail_msg("baseline: %s", err);
    assert_int_equal(version, 1);
    testutil_sql(d, "INSERT INTO schema_version (version) VALUES (2), (3), (4);"
                    "INSERT INTO chat_sessions (id, user_id, customer_id) VALUES ('old-1', 'alice', 'cust-1001'),"
                    " ('old-2', 'Bob', NULL);"
                    "INSERT INTO chat_messages (session_id, request_id, role, content) VALUES"
                    " ('old-1', 'r1', 'user', 'old question'), ('old-1', 'r1', 'assistant', 'old answer'),"
                    " ('old-2', 'r1', 'user', 'bob question'), ('old-2', 'r1', 'assistant', 'bob answer');");
    if (chat_db_migrate(d, schema, migrations, &version, err, sizeof err)) fail_msg("migrate: %s", err);
    assert_true(version >= 5);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE user_id = ?", "alice"), 2);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE user_id = ?", "Bob"), 2);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_sessions WHERE customer_id = ?", "cust-1001"), 1);
    chat_history h;
    chat_session_info info;
    assert_int_equal(chat_memory_open_session(d, "alice", "old-1", NULL, false, 10, &h, &info, err, sizeof err), 0);
    assert_false(info.created);
    assert_int_equal(h.n, 2);
    assert_string_equal(h.items[0].content, "old question");
    chat_history_clear(&h);
    assert_int_equal(chat_memory_open_session(d, "bob", "old-2", NULL, false, 10, &h, &info, err, sizeof err), 0);
    assert_true(info.created); /* "bob" is not "Bob" */
    assert_int_equal(h.n, 0);
    assert_int_equal(chat_memory_store_turn(d, "alice", "old-1", "r2", "new question", "new answer", NULL, true, err,
                                            sizeof err),
                     0);
    assert_int_equal(chat_memory_store_turn(d, "alice", "old-1", "r1", "dup", "dup", NULL, true, err, sizeof err), 0);
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", "old-1"), 4);
    chat_db_free(d);
}

/* Restarts the private test server: $CHAT_VAR, else the folder above the socket's run/ directory. */
static void restart_database(void)
{
    const char *var = getenv("CHAT_VAR");
    char derived[1024];
    if (!var || !*var) {
        const char *sock = getenv("CHAT_DB_SOCKET");
        if (!sock || !*sock) fail_msg("CHAT_VAR or CHAT_DB_SOCKET needed to restart the test database");
        snprintf(derived, sizeof derived, "%s", sock);
        var = dirname(dirname(derived));
    }
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cd '%s' && CHAT_VAR='%s' bash deploy/mariadb.sh restart >/dev/null 2>&1",
             testutil_root(), var);
    if (system(cmd) != 0) fail_msg("restart failed: %s", cmd);
}

static void test_database_restart(void **state)
{
    const char *skip_env = getenv("CHAT_TEST_SKIP_RESTART");
    if (skip_env && *skip_env == '1') {
        print_message("restart test skipped (CHAT_TEST_SKIP_RESTART=1)\n");
        skip();
    }
    char sid[CHAT_SESSION_ID_MAX + 1], again[CHAT_SESSION_ID_MAX + 1];
    open_ok("kim", NULL, sid, 1);
    store_ok("kim", sid, "r1", "before the restart", "ok", NULL);

    /* a read right after a restart: the stale connection and statement cache are replaced */
    restart_database();
    chat_history h;
    int rc = testutil_history(db, sid, 5, &h, err, sizeof err);
    if (rc) fail_msg("history after restart: %s (%s)", chat_strerror(rc), err);
    assert_int_equal(h.n, 2);
    chat_history_clear(&h);
    /* it really was a new server */
    char up[32] = "";
    assert_int_equal(chat_db_run(db, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE "
                                     "VARIABLE_NAME = 'UPTIME'",
                                 NULL, 0, ts_row, up, NULL, NULL, err, sizeof err),
                     0);
    assert_true(atoi(up) < 60);

    /* a transaction right after a restart */
    restart_database();
    rc = chat_memory_store_turn(db, "kim", sid, "r2", "after the restart", "ok", NULL, true, err, sizeof err);
    if (rc) fail_msg("store after restart: %s (%s)", chat_strerror(rc), err);
    assert_int_equal(count_messages(sid), 4);

    /* ownership checks after a restart */
    restart_database();
    rc = memory_open(db, "kim", sid, NULL, again, NULL, err, sizeof err);
    if (rc) fail_msg("open after restart: %s (%s)", chat_strerror(rc), err);
    open_ok("lee", sid, again, 1); /* lee's own conversation */
    char *json = NULL;
    restart_database();
    rc = chat_memory_messages_json(db, "kim", sid, &json, err, sizeof err);
    if (rc) fail_msg("messages after restart: %s (%s)", chat_strerror(rc), err);
    assert_non_null(strstr(json, "after the restart"));
    free(json);
}

TESTUTIL_MAIN(setup, testutil_db_teardown,
              cmocka_unit_test(test_open_and_ownership),
              cmocka_unit_test(test_new_session_and_owner),
              cmocka_unit_test(test_customer_tie),
              cmocka_unit_test(test_history_order_and_limit),
              cmocka_unit_test(test_store_idempotent),
              cmocka_unit_test(test_store_turns_together),
              cmocka_unit_test(test_updated_at_touched),
              cmocka_unit_test(test_open_session_with_history),
              cmocka_unit_test(test_messages_json),
              cmocka_unit_test(test_unicode_and_sizes),
              cmocka_unit_test(test_open_race),
              cmocka_unit_test(test_same_id_two_users),
              cmocka_unit_test(test_migration_005_keeps_sessions),
              cmocka_unit_test(test_database_restart))
