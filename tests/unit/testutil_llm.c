/* Generations on a chat_llm_loop for the tests (testutil_llm.h): one pair of callbacks records what a
 * generation gets, and starts the generations chained to it. */
#include "testutil_llm.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int testutil_gen_order[TESTUTIL_GEN_ORDER_MAX];
int testutil_gen_norder;

int testutil_gen_switches(void)
{
    int switches = 0;
    for (int i = 1; i < testutil_gen_norder; i++) switches += testutil_gen_order[i] != testutil_gen_order[i - 1];
    return switches;
}

static int gen_piece(void *ud, const char *t, size_t n)
{
    testutil_gen *g = ud;
    int64_t now = chat_now_ms();
    if (testutil_gen_norder < TESTUTIL_GEN_ORDER_MAX) testutil_gen_order[testutil_gen_norder++] = g->id;
    if (!g->pieces) g->first_at = now;
    g->last_at = now;
    g->pieces++;
    if (n == 0 || !chat_utf8_valid(t, n)) g->all_valid = false;
    chat_buf_append(&g->text, t, n);
    testutil_gen *next = g->start_on_token;
    if (g->pieces == 1 && next) g->start_rc = next->start(g->loop, g->llm, next);
    return 0;
}

static void gen_done(void *ud, int rc, const chat_llm_result *res, const char *err)
{
    testutil_gen *g = ud;
    g->done_calls++;
    g->rc = rc;
    g->res = *res;
    snprintf(g->err, sizeof g->err, "%s", err);
    g->done_at = chat_now_ms();
    testutil_gen *next = g->start_on_done;
    if (next) g->start_rc = next->start(g->loop, g->llm, next);
}

void testutil_gen_init(testutil_gen *g, int id, int max_tokens, testutil_gen_start_fn start)
{
    memset(g, 0, sizeof *g);
    g->id = id;
    g->max_tokens = max_tokens;
    g->start = start;
    g->all_valid = true;
    chat_buf_init(&g->text);
    atomic_init(&g->cancel, 0);
}

int testutil_gen_launch(chat_llm_loop *loop, chat_llm *llm, testutil_gen *g, const chat_llm_request *req)
{
    char err[256];
    g->loop = loop, g->llm = llm;
    g->started_at = chat_now_ms();
    int rc = chat_llm_start(loop, llm, req, gen_piece, gen_done, g, &g->cancel, err, sizeof err);
    if (rc) fprintf(stderr, "chat_llm_start: %s\n", err);
    return rc;
}

chat_llm_loop *testutil_loop_new(void)
{
    char err[256];
    chat_llm_loop *loop = chat_llm_loop_new(err, sizeof err);
    if (!loop) fail_msg("chat_llm_loop_new: %s", err);
    return loop;
}

int testutil_loop_run(chat_llm_loop *loop, int until_ms)
{
    int64_t end = chat_now_ms() + until_ms;
    int left;
    while ((left = chat_llm_loop_run(loop, 50)) > 0 && chat_now_ms() < end) {
    }
    return left;
}

void *testutil_waker_thread(void *arg)
{
    testutil_waker *w = arg;
    for (int i = 0; i < 4; i++) {
        int ms = i ? 130 : w->after_ms; /* 130: the raises fall at different points of the loop's tick */
        struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        w->at[i] = chat_now_ms();
        if (w->flags[i]) atomic_store(w->flags[i], 1);
        if (w->loop) chat_llm_loop_wakeup(w->loop);
        if (i == 3 || !w->flags[i] || !w->flags[i + 1]) break;
    }
    return NULL;
}
