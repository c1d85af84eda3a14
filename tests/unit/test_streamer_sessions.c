/* The streamer's attachment registry (streamer/streamer_sessions.c): attach, move, detach, the user in
 * the key (another user naming the same session never meets the owner's connections), iteration that
 * skips the asking connection, and many conversations (the table grows). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "chat_common.h"
#include "streamer_sessions.h"
#include "testutil.h"

static void count(void *conn, void *ud)
{
    (void)conn;
    (*(int *)ud)++;
}

static void collect(void *conn, void *ud)
{
    char *seen = ud;
    seen[strlen(seen)] = *(const char *)conn;
}

static int followers(ss_registry *r, const char *user, const char *session, const void *skip)
{
    int n = 0;
    size_t called = ss_each(r, user, session, skip, count, &n);
    assert_int_equal(called, (size_t)n);
    return n;
}

static void test_attach_move_detach(void **state)
{
    (void)state;
    ss_registry *r = ss_new();
    assert_non_null(r);
    char a = 'a', b = 'b', c = 'c';
    ss_member *ma = NULL, *mb = NULL, *mc = NULL;
    assert_null(ss_session(ma));
    assert_int_equal(ss_attach(r, &ma, "alice", "s1", &a), 0);
    assert_int_equal(ss_attach(r, &mb, "alice", "s1", &b), 0);
    assert_int_equal(ss_attach(r, &mc, "bob", "s1", &c), 0); /* bob naming alice's session: his own group */
    assert_string_equal(ss_session(ma), "s1");
    assert_int_equal(ss_groups(r), 2);
    char seen[8] = "";
    assert_int_equal(ss_each(r, "alice", "s1", NULL, collect, seen), 2);
    assert_true(strchr(seen, 'a') && strchr(seen, 'b') && !strchr(seen, 'c'));
    assert_int_equal(followers(r, "alice", "s1", &a), 1); /* the asking connection skipped */
    assert_int_equal(followers(r, "bob", "s1", NULL), 1);
    /* the user and the session are not mixed up: "al" + "ices1" is not "alice" + "s1" */
    assert_int_equal(followers(r, "al", "ices1", NULL), 0);
    assert_int_equal(followers(r, "alice", "s2", NULL), 0);
    /* attaching again to the same conversation changes nothing; to another one moves */
    ss_member *before = ma;
    assert_int_equal(ss_attach(r, &ma, "alice", "s1", &a), 0);
    assert_ptr_equal(ma, before);
    assert_int_equal(ss_attach(r, &ma, "alice", "s2", &a), 0);
    assert_string_equal(ss_session(ma), "s2");
    assert_int_equal(followers(r, "alice", "s1", NULL), 1);
    assert_int_equal(followers(r, "alice", "s2", NULL), 1);
    assert_int_equal(ss_groups(r), 3);
    ss_detach(r, &mb);
    assert_null(mb);
    ss_detach(r, &mb); /* NULL: nothing */
    assert_int_equal(followers(r, "alice", "s1", NULL), 0);
    assert_int_equal(ss_groups(r), 2);
    ss_detach(r, &ma);
    ss_detach(r, &mc);
    assert_int_equal(ss_groups(r), 0);
    ss_free(r);
    ss_free(NULL);
}

/* The session id compares as the database compares it: "Trip-1" and "TRIP-1" are one conversation, one
 * group with both members; the user still counts byte for byte. */
static void test_session_case(void **state)
{
    (void)state;
    ss_registry *r = ss_new();
    char a = 'a', b = 'b', c = 'c';
    ss_member *ma = NULL, *mb = NULL, *mc = NULL;
    assert_int_equal(ss_attach(r, &ma, "alice", "Trip-1", &a), 0);
    assert_int_equal(ss_attach(r, &mb, "alice", "TRIP-1", &b), 0);
    assert_int_equal(ss_attach(r, &mc, "Alice", "trip-1", &c), 0);
    assert_int_equal(ss_groups(r), 2);
    assert_int_equal(followers(r, "alice", "trip-1", NULL), 2);
    ss_member *before = ma;
    assert_int_equal(ss_attach(r, &ma, "alice", "tRIP-1", &a), 0); /* the same conversation: no move */
    assert_ptr_equal(ma, before);
    ss_detach(r, &ma);
    ss_detach(r, &mb);
    ss_detach(r, &mc);
    ss_free(r);
}

static void test_many(void **state)
{
    (void)state;
    ss_registry *r = ss_new();
    enum { N = 3000 };
    static ss_member *m[N];
    static char conn[N];
    char sid[32];
    for (int i = 0; i < N; i++) {
        snprintf(sid, sizeof sid, "session-%d", i / 2); /* two tabs each */
        assert_int_equal(ss_attach(r, &m[i], "user", sid, &conn[i]), 0);
    }
    assert_int_equal(ss_groups(r), N / 2);
    for (int i = 0; i < N / 2; i++) {
        snprintf(sid, sizeof sid, "session-%d", i);
        assert_int_equal(followers(r, "user", sid, NULL), 2);
        assert_int_equal(followers(r, "user", sid, &conn[2 * i]), 1);
    }
    for (int i = 0; i < N; i += 2) ss_detach(r, &m[i]);
    assert_int_equal(ss_groups(r), N / 2);
    ss_free(r); /* frees the members left */
}

TESTUTIL_MAIN(NULL, NULL, cmocka_unit_test(test_attach_move_detach), cmocka_unit_test(test_session_case), cmocka_unit_test(test_many))
