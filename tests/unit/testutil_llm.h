/* Helpers of the tests that run generations on a chat_llm_loop (test_extractive, test_openai, test_llm):
 * a generation's record (its pieces, its done callback, its times), generations started from another's
 * callbacks, the order of all pieces, running a loop to the end, and a thread that raises cancel flags
 * and wakes the loop. Everything but the waker runs on the loop's thread. */
#ifndef TESTUTIL_LLM_H
#define TESTUTIL_LLM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "chat_llm.h"
#include "chat_util.h"

typedef struct testutil_gen testutil_gen;

/* How a test starts one of its generations: builds the request on its own stack (so that a loop keeping
 * a pointer into it would read garbage) and returns testutil_gen_launch's result. */
typedef int (*testutil_gen_start_fn)(chat_llm_loop *loop, chat_llm *llm, testutil_gen *g);

struct testutil_gen {
    int id;
    int max_tokens;              /* for the start function's request */
    testutil_gen_start_fn start; /* used when another generation starts this one */
    chat_buf text;               /* the pieces, concatenated */
    int pieces;                  /* token callbacks so far */
    bool all_valid;              /* every piece was non-empty, valid UTF-8 */
    int done_calls, rc;
    char err[256]; /* the done callback's */
    chat_llm_result res;
    atomic_int cancel;
    int64_t started_at, first_at, last_at, done_at; /* chat_now_ms: launch, first and last piece, done */
    chat_llm_loop *loop;
    chat_llm *llm;
    /* started (with their start function, on this one's loop and llm) from this one's first piece and
     * from its done callback; start_rc is what that start returned */
    testutil_gen *start_on_token, *start_on_done;
    int start_rc;
};

#define TESTUTIL_GEN_ORDER_MAX 8192
/* The id of the generation of every piece, in call order (the first TESTUTIL_GEN_ORDER_MAX); a test sets
 * testutil_gen_norder to 0 before it starts. */
extern int testutil_gen_order[TESTUTIL_GEN_ORDER_MAX];
extern int testutil_gen_norder;
/* How often the recorded order switches from one generation to another: (pieces - 1) at most, 0 when
 * the generations ran one after another. */
int testutil_gen_switches(void);

/* Zeroes g and sets it up (all_valid until a bad piece; start may be NULL for one no other starts).
 * The test frees g->text with chat_buf_free. */
void testutil_gen_init(testutil_gen *g, int id, int max_tokens, testutil_gen_start_fn start);
/* chat_llm_start of req with g's callbacks and g->cancel; the error (if any) on stderr. */
int testutil_gen_launch(chat_llm_loop *loop, chat_llm *llm, testutil_gen *g, const chat_llm_request *req);

/* A loop, or the test fails. */
chat_llm_loop *testutil_loop_new(void);
/* Runs the loop until nothing runs or until_ms passed; the number still running. */
int testutil_loop_run(chat_llm_loop *loop, int until_ms);

/* A thread (testutil_waker_thread) that sleeps after_ms, then raises flags[0] and wakes the loop (when
 * set), then every 130 ms the next flag, up to four, stopping before the first NULL one; at[] gets the
 * chat_now_ms of each raise. With flags[0] NULL it only wakes the loop once. */
typedef struct testutil_waker {
    chat_llm_loop *loop;
    atomic_int *flags[4];
    int after_ms;
    int64_t at[4];
} testutil_waker;
void *testutil_waker_thread(void *arg);

#endif
