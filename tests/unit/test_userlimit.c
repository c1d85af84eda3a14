/* chat_userlimit: a table of admit / begin / end steps across two handles on one file (two streamers of
 * a host) with the verdict and the host-wide count each must give; a dead owner's counts stop counting
 * and its slot is reclaimed zeroed; the rate window resets with the minute. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_userlimit.h"
#include "testutil.h"

enum { OP_ADMIT, OP_BEGIN, OP_END };

typedef struct step {
    int handle; /* 0 or 1: which streamer */
    int op;
    const char *user;
    int64_t now_s;
    int expect;  /* admit: verdict; begin: 1 admitted / 0 refused; end: unused */
    int answers; /* the user's answers in progress across the host afterwards */
} step;

/* max 2 answers, 3 messages a minute */
static const step STEPS[] = {
    {0, OP_ADMIT, "alice", 60, CHAT_UL_OK, 0},
    {0, OP_BEGIN, "alice", 60, 1, 1},
    {1, OP_ADMIT, "alice", 61, CHAT_UL_OK, 1},
    {1, OP_BEGIN, "alice", 61, 1, 2},
    {1, OP_ADMIT, "alice", 62, CHAT_UL_ANSWERS, 2}, /* two in progress on two streamers */
    {0, OP_BEGIN, "alice", 62, 0, 2},
    {0, OP_ADMIT, "bob", 62, CHAT_UL_OK, 0},         /* another user is not affected */
    {0, OP_END, "alice", 63, 0, 1},
    {1, OP_ADMIT, "alice", 63, CHAT_UL_OK, 1},       /* the third message of minute 1 */
    {1, OP_BEGIN, "alice", 63, 1, 2},
    {1, OP_END, "alice", 64, 0, 1},
    {1, OP_END, "alice", 64, 0, 0},
    {0, OP_ADMIT, "alice", 65, CHAT_UL_RATE, 0},     /* the fourth of minute 1, on either streamer */
    {1, OP_ADMIT, "alice", 119, CHAT_UL_RATE, 0},
    {1, OP_ADMIT, "alice", 120, CHAT_UL_OK, 0},      /* minute 2 */
    {0, OP_END, "alice", 121, 0, 0},                 /* an unpaired end does not go below zero */
    {0, OP_BEGIN, "alice", 121, 1, 1},
};

static char *tmp_path(void)
{
    char *p = malloc(64);
    snprintf(p, 64, "/tmp/test_userlimit.%d", (int)getpid());
    unlink(p);
    return p;
}

static void test_steps_table(void **state)
{
    (void)state;
    char *path = tmp_path();
    char err[256];
    chat_userlimit *h[2] = {chat_userlimit_new(path, 2, 3, err, sizeof err), chat_userlimit_new(path, 2, 3, err, sizeof err)};
    assert_non_null(h[0]);
    assert_non_null(h[1]);
    for (size_t i = 0; i < sizeof STEPS / sizeof STEPS[0]; i++) {
        const step *s = &STEPS[i];
        chat_userlimit *u = h[s->handle];
        int got = 0;
        if (s->op == OP_ADMIT) got = (int)chat_userlimit_admit(u, s->user, s->now_s);
        if (s->op == OP_BEGIN) got = chat_userlimit_begin(u, s->user);
        if (s->op == OP_END) chat_userlimit_end(u, s->user);
        if (got != s->expect) fail_msg("step %zu: got %d, want %d", i, got, s->expect);
        for (int k = 0; k < 2; k++)
            if (chat_userlimit_answers(h[k], s->user) != s->answers)
                fail_msg("step %zu: handle %d sees %d answers, want %d", i, k, chat_userlimit_answers(h[k], s->user), s->answers);
    }
    chat_userlimit_free(h[0]);
    chat_userlimit_free(h[1]);
    unlink(path);
    free(path);
}

/* A streamer killed with answers in progress: they stop counting at once, and a new one gets a clean row. */
static void test_dead_owner(void **state)
{
    (void)state;
    char *path = tmp_path();
    char err[256];
    chat_userlimit *a = chat_userlimit_new(path, 1, 0, err, sizeof err);
    chat_userlimit *b = chat_userlimit_new(path, 1, 0, err, sizeof err);
    assert_non_null(a);
    assert_non_null(b);
    assert_true(chat_userlimit_begin(a, "carol"));
    assert_false(chat_userlimit_begin(b, "carol"));
    assert_int_equal(chat_userlimit_admit(b, "carol", 0), CHAT_UL_ANSWERS);
    chat_userlimit_set_owner(a, 0x7ffffff0); /* a pid nobody has: a dead streamer */
    assert_int_equal(chat_userlimit_answers(b, "carol"), 0);
    assert_true(chat_userlimit_begin(b, "carol"));
    chat_userlimit_end(b, "carol");
    chat_userlimit *c = chat_userlimit_new(path, 1, 0, err, sizeof err); /* the restart: takes the dead slot */
    assert_non_null(c);
    chat_userlimit_set_owner(a, (int32_t)getpid()); /* would count again if c had not zeroed the row */
    assert_int_equal(chat_userlimit_answers(c, "carol"), 0);
    chat_userlimit_free(c);
    chat_userlimit_free(b);
    free(a); /* its slot went to c: only the handle is left (test only: the struct is opaque elsewhere) */
    unlink(path);
    free(path);
}

static void test_private_table(void **state)
{
    (void)state;
    chat_userlimit *u = chat_userlimit_new(NULL, 0, 0, NULL, 0); /* both limits off */
    assert_non_null(u);
    for (int i = 0; i < 1000; i++) {
        assert_int_equal(chat_userlimit_admit(u, "dave", 0), CHAT_UL_OK);
        assert_true(chat_userlimit_begin(u, "dave"));
    }
    assert_int_equal(chat_userlimit_answers(u, "dave"), 1000);
    chat_userlimit_free(u);
    chat_userlimit_free(NULL);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_steps_table),
              cmocka_unit_test(test_dead_owner),
              cmocka_unit_test(test_private_table))
