/* chat_wheel: a table of add / remove / expire steps with the nodes each expire must fire, callbacks that
 * re-add or remove nodes while firing, and 50,000 timers each fired exactly at its tick. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_wheel.h"
#include "testutil.h"

enum { N_NODES = 10 };

typedef struct fired {
    chat_wheel_node *base;
    unsigned mask; /* bit i: node i fired */
    int n;
} fired;

static void record(chat_wheel_node *node, void *ud)
{
    fired *f = ud;
    assert_false(chat_wheel_scheduled(node)); /* unscheduled before its callback */
    f->mask |= 1u << (node - f->base);
    f->n++;
}

static void test_steps_table(void **state)
{
    (void)state;
    /* 8 slots from tick 100: 111 shares 103's slot and 117 shares 101's, a turn or two later. */
    static const struct {
        char op; /* a add, r remove, e expire */
        int node;
        int64_t tick;
        unsigned fires; /* e: the nodes that fire */
        size_t count;   /* scheduled afterwards */
    } steps[] = {
        {'a', 0, 101, 0, 1},
        {'a', 1, 105, 0, 2},
        {'a', 2, 111, 0, 3},
        {'a', 3, 117, 0, 4},
        {'e', 0, 100, 0, 4},
        {'e', 0, 101, 1u << 0, 3}, /* 3 waits in the same slot for a later turn */
        {'e', 0, 103, 0, 3},       /* 2 shares this slot: not yet */
        {'e', 0, 105, 1u << 1, 2},
        {'e', 0, 111, 1u << 2, 1},
        {'a', 4, 90, 0, 2},        /* in the past: fires at the next expire */
        {'e', 0, 111, 0, 2},       /* a tick already processed: nothing */
        {'e', 0, 112, 1u << 4, 1},
        {'e', 0, 117, 1u << 3, 0},
        {'a', 5, 120, 0, 1},
        {'r', 5, 0, 0, 0},
        {'r', 5, 0, 0, 0}, /* removing twice is harmless */
        {'e', 0, 130, 0, 0},
        {'a', 6, 131, 0, 1},
        {'a', 6, 135, 0, 1}, /* rescheduled, not added twice */
        {'e', 0, 131, 0, 1},
        {'e', 0, 135, 1u << 6, 0},
        {'a', 7, 140, 0, 1},
        {'a', 8, 1000, 0, 2},
        {'a', 9, 4999, 0, 3},
        {'e', 0, 5000, (1u << 7) | (1u << 8) | (1u << 9), 0}, /* a long gap: every slot once */
        {'a', 0, -5, 0, 1},
        {'e', 0, 5001, 1u << 0, 0},
    };
    chat_wheel_node nodes[N_NODES];
    memset(nodes, 0, sizeof nodes);
    chat_wheel *w = chat_wheel_new(8, 100);
    assert_non_null(w);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(steps); i++) {
        chat_wheel_node *n = &nodes[steps[i].node];
        fired f = {.base = nodes};
        switch (steps[i].op) {
        case 'a': chat_wheel_add(w, n, steps[i].tick); break;
        case 'r': chat_wheel_remove(w, n); break;
        default: chat_wheel_expire(w, steps[i].tick, record, &f); break;
        }
        if (f.mask != steps[i].fires) fail_msg("step %zu: fired 0x%x, want 0x%x", i, f.mask, steps[i].fires);
        if (chat_wheel_count(w) != steps[i].count)
            fail_msg("step %zu: %zu scheduled, want %zu", i, chat_wheel_count(w), steps[i].count);
    }
    chat_wheel_free(w);
    chat_wheel_free(NULL);
    assert_null(chat_wheel_new(6, 0)); /* not a power of two */
    assert_null(chat_wheel_new(0, 0));
}

/* Callbacks: node 0 re-adds itself 10 ticks later; node 1 removes node 2, due at the same tick. */
typedef struct ctx {
    chat_wheel *w;
    chat_wheel_node nodes[3];
    int64_t now;
    int fired[3];
} ctx;

static void fire_and_meddle(chat_wheel_node *node, void *ud)
{
    ctx *c = ud;
    int i = (int)(node - c->nodes);
    c->fired[i]++;
    if (i == 0) chat_wheel_add(c->w, node, c->now + 10);
    if (i == 1) chat_wheel_remove(c->w, &c->nodes[2]);
    if (i == 2) chat_wheel_remove(c->w, &c->nodes[1]);
}

static void test_callbacks_change_the_wheel(void **state)
{
    (void)state;
    ctx c;
    memset(&c, 0, sizeof c);
    c.w = chat_wheel_new(4, 0);
    assert_non_null(c.w);
    chat_wheel_add(c.w, &c.nodes[0], 5);
    chat_wheel_add(c.w, &c.nodes[1], 7);
    chat_wheel_add(c.w, &c.nodes[2], 7);
    for (c.now = 0; c.now <= 40; c.now++)
        chat_wheel_expire(c.w, c.now, fire_and_meddle, &c);
    assert_int_equal(c.fired[0], 4); /* 5, 15, 25, 35 */
    assert_int_equal(c.fired[1] + c.fired[2], 1); /* whichever fired first removed the other */
    assert_int_equal(chat_wheel_count(c.w), 1);
    chat_wheel_free(c.w);
}

/* 50,000 timers over an hour of one-second ticks on 1024 slots: each fires once, at its own tick. */
typedef struct many {
    chat_wheel_node *nodes;
    int64_t now;
    int wrong, fired;
} many;

static void fire_check(chat_wheel_node *node, void *ud)
{
    many *m = ud;
    if (node->due != m->now) m->wrong++;
    m->fired++;
}

static void test_many_timers(void **state)
{
    (void)state;
    enum { N = 50000, SPAN = 3600 };
    many m = {.nodes = calloc(N, sizeof(chat_wheel_node))};
    assert_non_null(m.nodes);
    chat_wheel *w = chat_wheel_new(1024, 1);
    assert_non_null(w);
    srand(11);
    for (int i = 0; i < N; i++)
        chat_wheel_add(w, &m.nodes[i], 1 + rand() % SPAN);
    assert_int_equal(chat_wheel_count(w), N);
    for (m.now = 1; m.now <= SPAN; m.now++)
        chat_wheel_expire(w, m.now, fire_check, &m);
    assert_int_equal(m.fired, N);
    assert_int_equal(m.wrong, 0);
    assert_int_equal(chat_wheel_count(w), 0);
    chat_wheel_free(w);
    free(m.nodes);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_steps_table),
              cmocka_unit_test(test_callbacks_change_the_wheel),
              cmocka_unit_test(test_many_timers))
