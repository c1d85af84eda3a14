/* Tests for the openai provider against build/bin/fake-llm (started once for the group on a free port):
 * every scenario of the fake (tokens, finish_reason, usage, error codes and messages), the retry rules
 * (429 once -> success, 429 always -> error after exactly two requests, none after a token), the stall
 * and first-token timeouts, cancel from another thread while the server is silent, the request the
 * server received (headers, body fields), and chat_openai_parse_chunk on real-world chunk shapes; then
 * many generations at once on one chat_llm_loop: concurrency, a mix of fates, cancel of one, generations
 * started from callbacks, and freeing a loop with transfers running. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <errno.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_llm.h"
#include "chat_openai.h"
#include "chat_util.h"
#include "testutil.h"
#include "testutil_llm.h"

static pid_t fake_pid = -1;
static int fake_port;

/* ---- the fake server ---- */

/* The group's set-up and teardown: curl's global state (once for the program) and the fake server. */
static int start_fake(void **state)
{
    (void)state;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    fake_pid = testutil_fake_llm_start(&fake_port);
    return fake_pid > 0 ? 0 : -1;
}

static int stop_fake(void **state)
{
    (void)state;
    testutil_fake_llm_stop(fake_pid);
    fake_pid = -1;
    curl_global_cleanup();
    return 0;
}

/* GET /debug/last as a JSON object (caller puts). */
static json_object *fake_last(void)
{
    json_object *o = testutil_fake_llm_last(fake_port);
    assert_non_null(o);
    return o;
}

static long fake_requests(void)
{
    long n = testutil_fake_llm_requests(fake_port);
    assert_true(n >= 0);
    return n;
}

static bool last_bool(json_object *o, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_boolean(v);
}

static int last_int(json_object *o, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_int(v);
}

static const char *last_str(json_object *o, const char *k)
{
    json_object *v;
    assert_true(json_object_object_get_ex(o, k, &v));
    return json_object_get_string(v);
}

/* ---- running a generation ---- */

static const chat_llm_message prompt[] = {
    {"system", "You are a helpful marine assistant."},
    {"user", "What oil does my engine take?"},
    {"assistant", "Your Yamaha F150 takes 10W-30 marine oil."},
    {"user", "How do I winterize my outboard engine before storage?"},
};
#define PROMPT_WORDS "How do I winterize my"

static size_t prompt_bytes(void)
{
    size_t n = 0;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(prompt); i++)
        n += strlen(prompt[i].content);
    return n;
}

typedef struct collect {
    chat_buf text;
    int pieces;
    bool all_valid;
    int stop_after; /* return non-zero from this piece on; 0 = never */
} collect;

static int on_token(void *ud, const char *t, size_t n)
{
    collect *c = ud;
    c->pieces++;
    if (n == 0 || !chat_utf8_valid(t, n)) c->all_valid = false;
    chat_buf_append(&c->text, t, n);
    return c->stop_after && c->pieces >= c->stop_after;
}

static chat_config config_for(const char *model, const char *key)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "openai");
    snprintf(cfg.llm_base_url, sizeof cfg.llm_base_url, "http://127.0.0.1:%d/v1", fake_port);
    snprintf(cfg.llm_api_key, sizeof cfg.llm_api_key, "%s", key);
    snprintf(cfg.llm_model, sizeof cfg.llm_model, "%s", model);
    cfg.llm_connect_timeout_ms = 2000;
    cfg.llm_first_token_timeout_ms = 5000;
    cfg.llm_stall_timeout_ms = 5000;
    cfg.llm_max_tokens = 77;
    return cfg;
}

typedef struct run {
    int rc;
    char err[256];
    chat_llm_result res;
    collect col;
    int64_t ms;
    long requests; /* requests the fake received during the run */
} run;

static void do_run(const chat_config *cfg, const atomic_int *cancel, int stop_after, int max_tokens, run *r)
{
    memset(r, 0, sizeof *r);
    chat_buf_init(&r->col.text);
    r->col.all_valid = true;
    r->col.stop_after = stop_after;
    char err[256];
    chat_llm *llm = chat_llm_new(cfg, err, sizeof err);
    if (!llm) fail_msg("chat_llm_new: %s", err);
    chat_llm_request req;
    memset(&req, 0, sizeof req);
    req.messages = prompt;
    req.n_messages = CHAT_ARRAY_LEN(prompt);
    req.max_tokens = max_tokens;
    long before = fake_requests();
    int64_t t0 = chat_now_ms();
    r->rc = chat_llm_generate(llm, &req, on_token, &r->col, cancel, &r->res, r->err, sizeof r->err);
    r->ms = chat_now_ms() - t0;
    r->requests = fake_requests() - before;
    chat_llm_free(llm);
    /* the contract: tokens_emitted counts the callbacks */
    assert_int_equal(r->res.tokens_emitted, r->col.pieces);
    assert_true(r->col.all_valid);
}

static void run_model(const char *model, run *r)
{
    chat_config cfg = config_for(model, "sk-test-secret");
    do_run(&cfg, NULL, 0, 0, r);
}

static void run_free(run *r)
{
    chat_buf_free(&r->col.text);
}

/* ---- scenarios ---- */

static void test_ok(void **state)
{
    (void)state;
    run r;
    run_model("fake-ok", &r);
    if (r.rc) fail_msg("rc %d: %s", r.rc, r.err);
    assert_string_equal(r.res.finish_reason, "stop");
    const char *want_start = "You asked about: " PROMPT_WORDS ". ";
    assert_non_null(r.col.text.data);
    assert_memory_equal(r.col.text.data, want_start, strlen(want_start));
    assert_non_null(strstr(r.col.text.data, "check every part."));
    assert_true(r.col.pieces >= 15);
    /* usage came from the stream: the fake counts 3 per message on top of bytes/4, unlike the estimate */
    assert_int_equal(r.res.prompt_tokens, 3 * (int)CHAT_ARRAY_LEN(prompt) + (int)(prompt_bytes() / 4));
    assert_int_equal(r.res.completion_tokens, r.col.pieces);
    assert_int_equal(r.requests, 1);

    json_object *last = fake_last();
    assert_true(last_bool(last, "authorization_present"));
    assert_true(last_bool(last, "accept_event_stream"));
    assert_true(last_bool(last, "content_type_json"));
    assert_true(last_bool(last, "stream"));
    assert_true(last_bool(last, "include_usage"));
    assert_int_equal(last_int(last, "max_tokens"), 77);
    assert_int_equal(last_int(last, "messages"), (int)CHAT_ARRAY_LEN(prompt));
    assert_string_equal(last_str(last, "model"), "fake-ok");
    assert_string_equal(last_str(last, "path"), "/v1/chat/completions");
    json_object_put(last);
    run_free(&r);
}

static void test_no_key_trailing_slash(void **state)
{
    (void)state;
    chat_config cfg = config_for("fake-ok", "");
    strcat(cfg.llm_base_url, "/");
    run r;
    do_run(&cfg, NULL, 0, 12, &r);
    assert_int_equal(r.rc, 0);
    json_object *last = fake_last();
    assert_false(last_bool(last, "authorization_present"));
    assert_string_equal(last_str(last, "path"), "/v1/chat/completions");
    assert_int_equal(last_int(last, "max_tokens"), 12); /* the request's max_tokens wins over the config */
    json_object_put(last);
    run_free(&r);
}

/* The fake's scenarios, table-driven; -1 or NULL: not checked. */
typedef struct scenario {
    const char *model;
    int rc;
    const char *err;     /* exact message, or NULL */
    const char *substr;  /* or a part of it */
    const char *finish;  /* finish_reason */
    long requests;       /* requests the fake saw: 2 means one retry */
    int pieces;          /* token callbacks (tokens emitted, before an error), exactly */
    int min_pieces;      /* or at least */
    int min_ms, max_ms;  /* how long the generation took */
    bool estimates;      /* no usage chunk: the token counts are estimates */
    const char *text;    /* the whole answer */
    const char *start;   /* or how it starts */
} scenario;

static const scenario scenarios[] = {
    {"fake-401", CHAT_ELLM, "LLM provider rejected the API key", NULL, "error", 1, 0, -1, -1, -1, false, NULL, NULL},
    {"fake-429-always", CHAT_ELLM, "LLM provider rate limit reached", NULL, "error", 2, 0, -1, -1, -1, false, NULL,
     NULL},
    {"fake-disconnect", CHAT_ELLM, "LLM stream ended unexpectedly", NULL, "error", 1, 4, -1, -1, -1, false, NULL, NULL},
    {"fake-garbage", CHAT_ELLM, "LLM sent an invalid response", NULL, "error", 1, 0, -1, -1, -1, false, NULL, NULL},
    {"fake-no-done", CHAT_ELLM, "LLM stream ended unexpectedly", NULL, "error", 1, 3, -1, -1, -1, false, NULL, NULL},
    {"fake-error-event", CHAT_ELLM, NULL, "overloaded", "error", 1, 2, -1, -1, -1, false, NULL, NULL},
    /* the fake said Retry-After: 1 */
    {"fake-429", 0, NULL, NULL, "stop", 2, -1, 1, 900, 3000, false, NULL, NULL},
    /* a backoff happened */
    {"fake-500-once", 0, NULL, NULL, NULL, 2, -1, -1, 200, -1, false, NULL, "You asked about: "},
    {"fake-length", 0, NULL, NULL, "length", -1, 5, -1, -1, -1, true, NULL, NULL},
    /* a stream with no content at all completes with an empty answer (it used to crash the worker) */
    {"fake-empty", 0, NULL, NULL, "stop", -1, 0, -1, -1, -1, false, NULL, NULL},
    /* every piece was valid UTF-8 (checked in do_run), and nothing was lost or replaced */
    {"fake-utf8", 0, NULL, NULL, NULL, -1, -1, 8, -1, -1, false,
     "H\xC3\xA9llo w\xC3\xB6rld \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x9A\xA4 ok", NULL},
};

static void check_scenario(const scenario *c, const run *r)
{
    if (r->rc != c->rc)
        fail_msg("%s: rc %s want %s (%s)", c->model, chat_strerror(r->rc), chat_strerror(c->rc), r->err);
    if (c->err && strcmp(r->err, c->err)) fail_msg("%s: err '%s' want '%s'", c->model, r->err, c->err);
    if (c->substr && !strstr(r->err, c->substr)) fail_msg("%s: err '%s' lacks '%s'", c->model, r->err, c->substr);
    if (c->finish) assert_string_equal(r->res.finish_reason, c->finish);
    if (c->requests >= 0 && r->requests != c->requests)
        fail_msg("%s: %ld requests want %ld", c->model, r->requests, c->requests);
    if (c->pieces >= 0 && r->col.pieces != c->pieces)
        fail_msg("%s: %d pieces want %d", c->model, r->col.pieces, c->pieces);
    if (c->min_pieces >= 0 && r->col.pieces < c->min_pieces)
        fail_msg("%s: %d pieces want at least %d", c->model, r->col.pieces, c->min_pieces);
    if ((c->min_ms >= 0 && r->ms < c->min_ms) || (c->max_ms >= 0 && r->ms >= c->max_ms))
        fail_msg("%s: took %lld ms", c->model, (long long)r->ms);
    if (c->estimates) {
        assert_int_equal(r->res.completion_tokens, r->col.pieces);
        assert_int_equal(r->res.prompt_tokens, (int)(prompt_bytes() / 4));
    }
    if (c->text) assert_string_equal(r->col.text.data, c->text);
    if (c->start) assert_memory_equal(r->col.text.data, c->start, strlen(c->start));
}

static void test_scenarios(void **state)
{
    (void)state;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(scenarios); i++) {
        run r;
        run_model(scenarios[i].model, &r);
        check_scenario(&scenarios[i], &r);
        if (scenarios[i].rc) assert_null(strstr(r.err, "sk-test-secret"));
        run_free(&r);
    }
}

static void test_connect_refused(void **state)
{
    (void)state;
    /* a port that was free a moment ago */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &alen), 0);
    close(s);
    chat_config cfg = config_for("fake-ok", "k");
    snprintf(cfg.llm_base_url, sizeof cfg.llm_base_url, "http://127.0.0.1:%d/v1", ntohs(a.sin_port));
    run r;
    do_run(&cfg, NULL, 0, 0, &r);
    /* retried once after a backoff */
    static const scenario want = {"refused", CHAT_ELLM, "could not connect to the LLM provider", NULL, NULL, -1, -1, -1,
                                  200, 3000, false, NULL, NULL};
    check_scenario(&want, &r);
    run_free(&r);
}

/* The timeouts: a stream that stalls after its first tokens, and one that never starts (the stall timeout
 * must not apply before the first token); a timeout is not retried. */
static void test_timeouts(void **state)
{
    (void)state;
    static const struct {
        scenario want;
        int stall_ms, first_ms; /* first_ms 0: the configuration's */
    } cases[] = {
        {{"fake-stall", CHAT_ETIMEOUT, NULL, "stalled", "error", 1, 3, -1, 450, 2000, false, NULL, NULL}, 500, 0},
        {{"fake-slow-first", CHAT_ETIMEOUT, NULL, "did not start answering", NULL, 1, 0, -1, 650, 2000, false, NULL,
          NULL},
         300, 700},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_config cfg = config_for(cases[i].want.model, "k");
        cfg.llm_stall_timeout_ms = cases[i].stall_ms;
        if (cases[i].first_ms) cfg.llm_first_token_timeout_ms = cases[i].first_ms;
        run r;
        do_run(&cfg, NULL, 0, 0, &r);
        check_scenario(&cases[i].want, &r);
        run_free(&r);
    }
}

typedef struct canceller {
    atomic_int *flag;
    int after_ms;
    int64_t set_at;
} canceller;

static void *cancel_thread(void *arg)
{
    canceller *c = arg;
    struct timespec ts = {0, (long)c->after_ms * 1000000L};
    nanosleep(&ts, NULL);
    c->set_at = chat_now_ms();
    atomic_store(c->flag, 1);
    return NULL;
}

static void cancel_case(const char *model)
{
    chat_config cfg = config_for(model, "k");
    atomic_int flag = 0;
    canceller c = {&flag, 300, 0};
    pthread_t t;
    run r;
    assert_int_equal(pthread_create(&t, NULL, cancel_thread, &c), 0);
    do_run(&cfg, &flag, 0, 0, &r);
    int64_t done = chat_now_ms();
    pthread_join(t, NULL);
    if (r.rc != CHAT_ECANCELLED) fail_msg("%s: rc %s (%s)", model, chat_strerror(r.rc), r.err);
    assert_string_equal(r.res.finish_reason, "cancelled");
    /* do_run's closing GET /debug/last is included in `done`; still far below a second */
    if (done - c.set_at >= 1000) fail_msg("%s: cancel took %lld ms", model, (long long)(done - c.set_at));
    run_free(&r);
}

static void test_cancel(void **state)
{
    (void)state;
    cancel_case("fake-stall");      /* silent after 3 tokens */
    cancel_case("fake-slow-first"); /* silent from the start */
}

static void test_callback_stop_and_precancel(void **state)
{
    (void)state;
    chat_config cfg = config_for("fake-ok", "k");
    run r;
    do_run(&cfg, NULL, 2, 0, &r);
    assert_int_equal(r.rc, CHAT_ECANCELLED);
    assert_int_equal(r.col.pieces, 2);
    assert_string_equal(r.res.finish_reason, "cancelled");
    run_free(&r);

    atomic_int flag = 1;
    do_run(&cfg, &flag, 0, 0, &r);
    assert_int_equal(r.rc, CHAT_ECANCELLED);
    assert_int_equal(r.requests, 0);
    assert_string_equal(r.res.finish_reason, "cancelled");
    run_free(&r);
}

/* ---- many generations on one chat_llm_loop ---- */

/* Starts g on the prompt (the request is a stack value: chat_llm_start must not keep it). */
static int lgen_start(chat_llm_loop *loop, chat_llm *llm, testutil_gen *g)
{
    chat_llm_request req;
    memset(&req, 0, sizeof req);
    req.messages = prompt;
    req.n_messages = CHAT_ARRAY_LEN(prompt);
    return testutil_gen_launch(loop, llm, g, &req);
}

static chat_llm *llm_for(const chat_config *cfg)
{
    char err[256];
    chat_llm *llm = chat_llm_new(cfg, err, sizeof err);
    if (!llm) fail_msg("chat_llm_new: %s", err);
    return llm;
}

static void assert_fake_ok_text(const testutil_gen *g)
{
    const char *want_start = "You asked about: " PROMPT_WORDS ". ";
    if (!g->text.data || strncmp(g->text.data, want_start, strlen(want_start)) ||
        !strstr(g->text.data, "check every part."))
        fail_msg("generation %d: text '%s'", g->id, g->text.data ? g->text.data : "(none)");
    assert_true(g->all_valid);
    assert_int_equal(g->res.tokens_emitted, g->pieces);
}

/* Twenty fake-ok answers at once on one loop: all right, each done exactly once, and really concurrent
 * (their tokens interleave, and the whole takes far less than twenty answers one after the other). */
static void test_loop_concurrent(void **state)
{
    (void)state;
    enum { N = 20 };
    chat_config cfg = config_for("fake-ok", "sk-test-secret");
    chat_llm *llm = llm_for(&cfg);
    chat_llm_loop *loop = testutil_loop_new();
    static testutil_gen g[N];
    long before = fake_requests();
    testutil_gen_norder = 0;
    int64_t t0 = chat_now_ms();
    for (int i = 0; i < N; i++) {
        testutil_gen_init(&g[i], i, 0, lgen_start);
        assert_int_equal(lgen_start(loop, llm, &g[i]), 0);
    }
    assert_int_equal(testutil_gen_norder, 0); /* nothing happens inside chat_llm_start */
    assert_int_equal(testutil_loop_run(loop, 10000), 0);
    int64_t took = chat_now_ms() - t0;
    for (int k = 0; k < 3; k++) chat_llm_loop_run(loop, 10); /* nothing more is called */
    for (int i = 0; i < N; i++) {
        if (g[i].rc) fail_msg("generation %d: rc %s (%s)", i, chat_strerror(g[i].rc), g[i].err);
        assert_int_equal(g[i].done_calls, 1);
        assert_string_equal(g[i].res.finish_reason, "stop");
        assert_string_equal(g[i].err, "");
        assert_fake_ok_text(&g[i]);
    }
    assert_int_equal(fake_requests() - before, N);
    int switches = testutil_gen_switches();
    if (switches < 2 * N) fail_msg("tokens of the generations did not interleave (%d switches)", switches);
    /* one fake-ok answer takes ~130 ms; twenty in a row would take over 2.5 s */
    if (took > 1500) fail_msg("20 concurrent generations took %lld ms", (long long)took);
    chat_llm_loop_free(loop);
    chat_llm_free(llm);
    for (int i = 0; i < N; i++) chat_buf_free(&g[i].text);
}

/* One loop, four providers' fates at once: each ends its own way while the others stream. */
static void test_loop_mix(void **state)
{
    (void)state;
    chat_config c_ok = config_for("fake-ok", "k"), c_429 = config_for("fake-429", "k"),
                c_stall = config_for("fake-stall", "k"), c_401 = config_for("fake-401", "sk-test-secret");
    c_stall.llm_stall_timeout_ms = 500;
    chat_llm *l_ok = llm_for(&c_ok), *l_429 = llm_for(&c_429), *l_stall = llm_for(&c_stall),
             *l_401 = llm_for(&c_401);
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen ok, r429, stall, e401;
    testutil_gen_init(&ok, 0, 0, lgen_start);
    testutil_gen_init(&r429, 1, 0, lgen_start);
    testutil_gen_init(&stall, 2, 0, lgen_start);
    testutil_gen_init(&e401, 3, 0, lgen_start);
    long before = fake_requests();
    int64_t t0 = chat_now_ms();
    assert_int_equal(lgen_start(loop, l_429, &r429), 0);
    assert_int_equal(lgen_start(loop, l_stall, &stall), 0);
    assert_int_equal(lgen_start(loop, l_401, &e401), 0);
    assert_int_equal(lgen_start(loop, l_ok, &ok), 0);
    assert_int_equal(testutil_loop_run(loop, 10000), 0);

    if (ok.rc) fail_msg("fake-ok: %s", ok.err);
    assert_fake_ok_text(&ok);
    assert_int_equal(ok.done_calls, 1);

    if (r429.rc) fail_msg("fake-429: %s", r429.err);
    assert_fake_ok_text(&r429);
    assert_true(r429.done_at - t0 >= 900); /* Retry-After: 1, a timer on the loop */
    assert_true(r429.done_at - t0 < 3000);
    assert_int_equal(r429.done_calls, 1);

    assert_int_equal(stall.rc, CHAT_ETIMEOUT);
    assert_string_equal(stall.err, "LLM stream stalled (no data for 500 ms)");
    assert_int_equal(stall.pieces, 3);
    assert_string_equal(stall.res.finish_reason, "error");
    assert_true(stall.done_at - t0 >= 450);
    assert_true(stall.done_at - t0 < 2000);
    assert_int_equal(stall.done_calls, 1);

    assert_int_equal(e401.rc, CHAT_ELLM);
    assert_string_equal(e401.err, "LLM provider rejected the API key");
    assert_int_equal(e401.pieces, 0);
    assert_int_equal(e401.done_calls, 1);

    /* nobody waited for anybody: the quick ones ended while the 429 backed off and the stall stalled */
    assert_true(e401.done_at < stall.done_at);
    assert_true(ok.done_at < stall.done_at);
    assert_true(stall.done_at < r429.done_at);
    assert_int_equal(fake_requests() - before, 5); /* the 429 twice */

    chat_llm_loop_free(loop);
    chat_llm_free(l_ok), chat_llm_free(l_429), chat_llm_free(l_stall), chat_llm_free(l_401);
    testutil_gen *all[] = {&ok, &r429, &stall, &e401};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(all); i++) chat_buf_free(&all[i]->text);
}

/* chat_llm_loop_wakeup from another thread ends a long wait at once; a cancel flag raised with it stops
 * that one generation at once (not at the loop's next 100 ms tick), and only that one. */
static void test_loop_cancel_one(void **state)
{
    (void)state;
    chat_llm_loop *loop = testutil_loop_new();
    pthread_t t;

    testutil_waker idle = {.loop = loop, .after_ms = 100};
    assert_int_equal(pthread_create(&t, NULL, testutil_waker_thread, &idle), 0);
    assert_int_equal(chat_llm_loop_run(loop, 5000), 0);
    int64_t woke = chat_now_ms();
    pthread_join(t, NULL);
    if (woke - idle.at[0] > 50) fail_msg("wakeup took %lld ms", (long long)(woke - idle.at[0]));

    chat_config c_stall = config_for("fake-stall", "k"), c_slow = config_for("fake-slow-first", "k");
    chat_llm *l_stall = llm_for(&c_stall), *l_slow = llm_for(&c_slow);
    enum { N = 5 };
    testutil_gen g[N]; /* 0..3 stall after 3 tokens and are cancelled one by one; 4 never starts answering */
    for (int i = 0; i < N; i++) {
        testutil_gen_init(&g[i], i, 0, lgen_start);
        assert_int_equal(lgen_start(loop, i < 4 ? l_stall : l_slow, &g[i]), 0);
    }
    testutil_waker w = {.loop = loop, .flags = {&g[0].cancel, &g[1].cancel, &g[2].cancel, &g[3].cancel},
                        .after_ms = 300};
    assert_int_equal(pthread_create(&t, NULL, testutil_waker_thread, &w), 0);
    int64_t end = chat_now_ms() + 3000;
    while (!g[3].done_calls && chat_now_ms() < end) chat_llm_loop_run(loop, 1000);
    pthread_join(t, NULL);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(g[i].done_calls, 1);
        assert_int_equal(g[i].rc, CHAT_ECANCELLED);
        assert_string_equal(g[i].res.finish_reason, "cancelled");
        assert_int_equal(g[i].pieces, 3);
        int64_t took = g[i].done_at - w.at[i];
        if (took < 0 || took > 30) fail_msg("cancel %d with wakeup took %lld ms", i, (long long)took);
    }
    assert_int_equal(g[4].done_calls, 0); /* the other goes on */

    /* without a wakeup, the loop still sees the flag within its 100 ms tick */
    int64_t set = chat_now_ms();
    atomic_store(&g[4].cancel, 1);
    assert_int_equal(testutil_loop_run(loop, 3000), 0);
    assert_int_equal(g[4].rc, CHAT_ECANCELLED);
    assert_int_equal(g[4].pieces, 0);
    assert_int_equal(g[4].done_calls, 1);
    if (g[4].done_at - set > 150) fail_msg("cancel without wakeup took %lld ms", (long long)(g[4].done_at - set));

    chat_llm_loop_free(loop);
    chat_llm_free(l_stall), chat_llm_free(l_slow);
    for (int i = 0; i < N; i++) chat_buf_free(&g[i].text);
}

/* A generation started from a token callback (that is, from inside libcurl's transfer) and one started
 * from a done callback both run; done is never called from inside chat_llm_start. */
static void test_loop_start_from_callbacks(void **state)
{
    (void)state;
    chat_config cfg = config_for("fake-ok", "k");
    chat_llm *llm = llm_for(&cfg);
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen a, b, c;
    testutil_gen_init(&a, 0, 0, lgen_start);
    testutil_gen_init(&b, 1, 0, lgen_start);
    testutil_gen_init(&c, 2, 0, lgen_start);
    a.start_on_token = &b; /* b starts at a's first token */
    b.start_on_done = &c;  /* c when b is done */
    assert_int_equal(lgen_start(loop, llm, &a), 0);
    assert_int_equal(testutil_loop_run(loop, 10000), 0);
    testutil_gen *all[] = {&a, &b, &c};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(all); i++) {
        if (all[i]->rc) fail_msg("generation %d: %s", all[i]->id, all[i]->err);
        assert_int_equal(all[i]->done_calls, 1);
        assert_int_equal(all[i]->start_rc, 0);
        assert_fake_ok_text(all[i]);
    }
    assert_true(c.started_at >= b.done_at);
    chat_llm_loop_free(loop);
    chat_llm_free(llm);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(all); i++) chat_buf_free(&all[i]->text);
}

/* chat_llm_loop_free with transfers running: no done callback, nothing leaked (valgrind). */
static void test_loop_free_running(void **state)
{
    (void)state;
    chat_config c_stall = config_for("fake-stall", "k"), c_slow = config_for("fake-slow-first", "k"),
                c_429 = config_for("fake-429-always", "k");
    chat_llm *l_stall = llm_for(&c_stall), *l_slow = llm_for(&c_slow), *l_429 = llm_for(&c_429);
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen g[6];
    for (int i = 0; i < 6; i++) testutil_gen_init(&g[i], i, 0, lgen_start);
    assert_int_equal(lgen_start(loop, l_stall, &g[0]), 0);
    assert_int_equal(lgen_start(loop, l_stall, &g[1]), 0);
    assert_int_equal(lgen_start(loop, l_slow, &g[2]), 0);
    assert_int_equal(lgen_start(loop, l_429, &g[3]), 0); /* backing off when the loop goes */
    int64_t end = chat_now_ms() + 3000;
    while ((g[0].pieces < 3 || g[1].pieces < 3) && chat_now_ms() < end) chat_llm_loop_run(loop, 50);
    for (int k = 0; k < 5; k++) chat_llm_loop_run(loop, 20);
    assert_int_equal(g[0].pieces, 3);
    assert_int_equal(lgen_start(loop, l_stall, &g[4]), 0); /* started, never run */
    assert_int_equal(chat_llm_loop_run(loop, 0), 5);       /* all five still running */
    assert_int_equal(lgen_start(loop, l_stall, &g[5]), 0); /* started, never stepped */
    chat_llm_loop_free(loop);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(g[i].done_calls, 0);
        chat_buf_free(&g[i].text);
    }
    chat_llm_loop_free(NULL);
    chat_llm_free(l_stall), chat_llm_free(l_slow), chat_llm_free(l_429);
}

static void test_new_rejects_bad_config(void **state)
{
    (void)state;
    char err[128];
    chat_config cfg = config_for("m", "");
    cfg.llm_base_url[0] = '\0';
    assert_null(chat_openai_new(&cfg, err, sizeof err));
    snprintf(cfg.llm_base_url, sizeof cfg.llm_base_url, "ftp://example.com/v1");
    assert_null(chat_openai_new(&cfg, err, sizeof err));
    assert_null(chat_openai_new(NULL, err, sizeof err));
    chat_openai_free(NULL);
}

/* Extra headers and body fields reach the server (OpenRouter's HTTP-Referer and X-Title, Ollama's
 * keep_alive and options.num_ctx), the fields the provider sets win over the extra ones, and the
 * request's model and temperature replace the configured ones. */
static void test_extra_headers_and_body(void **state)
{
    (void)state;
    chat_config cfg = config_for("fake-ok", "sk-test-secret");
    snprintf(cfg.llm_extra_headers, sizeof cfg.llm_extra_headers,
             "{\"HTTP-Referer\":\"https://chat.example\",\"X-Title\":\"Seawind chat\",\"X-Empty\":\"\"}");
    snprintf(cfg.llm_extra_body, sizeof cfg.llm_extra_body,
             "{\"keep_alive\":\"5m\",\"options\":{\"num_ctx\":8192},\"model\":\"not-this\",\"stream\":false,"
             "\"max_tokens\":1}");
    char err[256];
    chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
    if (!llm) fail_msg("%s", err);
    collect col = {.all_valid = true};
    chat_buf_init(&col.text);
    chat_llm_request req = {.messages = prompt, .n_messages = CHAT_ARRAY_LEN(prompt), .model = "fake-ok-per-agent",
                            .has_temperature = true, .temperature = 0.2};
    chat_llm_result res;
    assert_int_equal(chat_llm_generate(llm, &req, on_token, &col, NULL, &res, err, sizeof err), 0);
    json_object *last = fake_last(), *h, *b, *v, *opts;
    assert_true(json_object_object_get_ex(last, "headers", &h));
    assert_string_equal(last_str(h, "http-referer"), "https://chat.example");
    assert_string_equal(last_str(h, "x-title"), "Seawind chat");
    assert_string_equal(last_str(h, "x-empty"), "");
    assert_string_equal(last_str(h, "accept"), "text/event-stream");
    assert_true(json_object_object_get_ex(last, "body", &b));
    assert_string_equal(last_str(b, "keep_alive"), "5m");
    assert_true(json_object_object_get_ex(b, "options", &opts));
    assert_int_equal(last_int(opts, "num_ctx"), 8192);
    assert_string_equal(last_str(b, "model"), "fake-ok-per-agent"); /* the request's, over config and extras */
    assert_true(last_bool(b, "stream"));
    assert_int_equal(last_int(b, "max_tokens"), 77);
    assert_true(json_object_object_get_ex(b, "temperature", &v));
    assert_true(json_object_get_double(v) == 0.2);
    json_object_put(last);
    chat_buf_free(&col.text);
    chat_llm_free(llm);
}

/* Extras that cannot be sent are refused when the provider opens, the setting named. */
static void test_extras_refused(void **state)
{
    (void)state;
    static const struct {
        const char *headers, *body, *err;
    } cases[] = {
        {"not json", "", "LLM_EXTRA_HEADERS must be a JSON object"},
        {"[\"X-Title: a\"]", "", "LLM_EXTRA_HEADERS must be a JSON object"},
        {"{\"X-Title\":1}", "", "LLM_EXTRA_HEADERS must be a JSON object of header names and string values"},
        {"{\"Authorization\":\"Bearer x\"}", "", "without the request's own headers"},
        {"{\"content-type\":\"text/plain\"}", "", "without the request's own headers"},
        {"{\"X Title\":\"a\"}", "", "LLM_EXTRA_HEADERS must be"},
        {"{\"X-Title\":\"a\\r\\nX-Evil: 1\"}", "", "LLM_EXTRA_HEADERS must be"},
        {"", "{\"keep_alive\":", "LLM_EXTRA_BODY must be a JSON object"},
        {"", "[1,2]", "LLM_EXTRA_BODY must be a JSON object"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_config cfg = config_for("fake-ok", "k");
        snprintf(cfg.llm_extra_headers, sizeof cfg.llm_extra_headers, "%s", cases[i].headers);
        snprintf(cfg.llm_extra_body, sizeof cfg.llm_extra_body, "%s", cases[i].body);
        char err[256] = "";
        chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
        if (llm) fail_msg("case %zu opened", i);
        if (!strstr(err, cases[i].err)) fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].err);
    }
}

/* ---- chat_openai_parse_chunk on real-world shapes ---- */

typedef struct chunk_case {
    const char *name;
    const char *json;
    int rc;
    const char *text;       /* expected appended text ("" = none) */
    const char *finish;     /* "" = none */
    int prompt, completion; /* -1 = untouched */
    const char *err_substr;
} chunk_case;

static const chunk_case chunk_cases[] = {
    {"openai role chunk",
     "{\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-mini\","
     "\"system_fingerprint\":\"fp_1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
     "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}",
     0, "", "", -1, -1, NULL},
    {"openai content",
     "{\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"gpt-4o-mini\","
     "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}]}",
     0, "Hello", "", -1, -1, NULL},
    {"openai finish",
     "{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,"
     "\"finish_reason\":\"stop\"}]}",
     0, "", "stop", -1, -1, NULL},
    {"openai usage-only chunk",
     "{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,"
     "\"completion_tokens\":7,\"total_tokens\":19,\"prompt_tokens_details\":{\"cached_tokens\":0}}}",
     0, "", "", 12, 7, NULL},
    {"openrouter content",
     "{\"id\":\"gen-1\",\"provider\":\"OpenAI\",\"model\":\"openai/gpt-4o-mini\",\"object\":\"chat.completion.chunk\","
     "\"created\":1718000000,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\" world\"},"
     "\"finish_reason\":null,\"native_finish_reason\":null,\"logprobs\":null}]}",
     0, " world", "", -1, -1, NULL},
    {"openrouter finish with usage",
     "{\"id\":\"gen-1\",\"provider\":\"OpenAI\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
     "\"content\":\"\"},\"finish_reason\":\"length\",\"native_finish_reason\":\"length\"}],\"usage\":{"
     "\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7,\"cost\":0.0001}}",
     0, "", "length", 5, 2, NULL},
    {"openrouter mid-stream error",
     "{\"id\":\"gen-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"provider\":\"p\","
     "\"error\":{\"code\":\"server_error\",\"message\":\"Provider disconnected unexpectedly\"},"
     "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"error\"}]}",
     CHAT_EINVAL, "", "", -1, -1, "Provider disconnected unexpectedly"},
    {"error as a string", "{\"error\":\"Internal error\"}", CHAT_EINVAL, "", "", -1, -1, "Internal error"},
    {"ollama content",
     "{\"id\":\"chatcmpl-372\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama3.2\","
     "\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
     "\"content\":\"Hi\"},\"finish_reason\":null}]}",
     0, "Hi", "", -1, -1, NULL},
    {"ollama final",
     "{\"id\":\"chatcmpl-372\",\"object\":\"chat.completion.chunk\",\"created\":1718000000,\"model\":\"llama3.2\","
     "\"system_fingerprint\":\"fp_ollama\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
     "\"content\":\"\"},\"finish_reason\":\"stop\"}]}",
     0, "", "stop", -1, -1, NULL},
    {"llama.cpp content",
     "{\"choices\":[{\"finish_reason\":null,\"index\":0,\"delta\":{\"content\":\" there\"}}],\"created\":1718000000,"
     "\"id\":\"chatcmpl-abc\",\"model\":\"gpt-3.5-turbo\",\"system_fingerprint\":\"b4000\","
     "\"object\":\"chat.completion.chunk\"}",
     0, " there", "", -1, -1, NULL},
    {"llama.cpp final with timings",
     "{\"choices\":[{\"finish_reason\":\"length\",\"index\":0,\"delta\":{}}],\"created\":1,\"id\":\"c\","
     "\"model\":\"m\",\"object\":\"chat.completion.chunk\",\"usage\":{\"completion_tokens\":16,"
     "\"prompt_tokens\":9,\"total_tokens\":25},\"timings\":{\"prompt_n\":9,\"predicted_n\":16}}",
     0, "", "length", 9, 16, NULL},
    {"null content", "{\"choices\":[{\"index\":0,\"delta\":{\"content\":null},\"finish_reason\":null}]}", 0, "", "", -1,
     -1, NULL},
    {"missing choices", "{\"id\":\"x\",\"object\":\"chat.completion.chunk\"}", 0, "", "", -1, -1, NULL},
    {"null choices and usage", "{\"choices\":null,\"usage\":null}", 0, "", "", -1, -1, NULL},
    {"escapes and surrogate pair",
     "{\"choices\":[{\"delta\":{\"content\":\"caf\\u00e9 \\ud83d\\udea4 \\\"q\\\"\\n\"}}]}", 0,
     "caf\xC3\xA9 \xF0\x9F\x9A\xA4 \"q\"\n", "", -1, -1, NULL},
    {"other finish reason kept", "{\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\"}]}", 0, "",
     "content_filter", -1, -1, NULL},
    {"legacy completions text", "{\"choices\":[{\"text\":\"abc\",\"finish_reason\":null}]}", 0, "abc", "", -1, -1,
     NULL},
    {"trailing whitespace ok", "{\"choices\":[]}  \n", 0, "", "", -1, -1, NULL},
    {"not json", "this is not json", CHAT_EINVAL, "", "", -1, -1, "invalid response"},
    {"truncated json", "{\"choices\":[{\"delta\":{\"content\":\"Hel", CHAT_EINVAL, "", "", -1, -1, "invalid response"},
    {"not an object", "[1,2,3]", CHAT_EINVAL, "", "", -1, -1, "invalid response"},
    {"trailing garbage", "{\"choices\":[]} x", CHAT_EINVAL, "", "", -1, -1, "invalid response"},
    {"choices not an array", "{\"choices\":{\"delta\":{}}}", CHAT_EINVAL, "", "", -1, -1, "invalid response"},
    {"empty", "", CHAT_EINVAL, "", "", -1, -1, "invalid response"},
};

static void test_parse_chunk_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(chunk_cases); i++) {
        const chunk_case *c = &chunk_cases[i];
        char *text = NULL, finish[16] = "", err[256] = "";
        int prompt_t = -1, completion_t = -1;
        int rc =
            chat_openai_parse_chunk(c->json, strlen(c->json), &text, finish, &prompt_t, &completion_t, err, sizeof err);
        if (rc != c->rc) fail_msg("%s: rc %d want %d (%s)", c->name, rc, c->rc, err);
        if (strcmp(text ? text : "", c->text)) fail_msg("%s: text '%s' want '%s'", c->name, text ? text : "", c->text);
        if (strcmp(finish, c->finish)) fail_msg("%s: finish '%s' want '%s'", c->name, finish, c->finish);
        if (prompt_t != c->prompt || completion_t != c->completion)
            fail_msg("%s: usage %d/%d want %d/%d", c->name, prompt_t, completion_t, c->prompt, c->completion);
        if (c->err_substr && !strstr(err, c->err_substr))
            fail_msg("%s: err '%s' lacks '%s'", c->name, err, c->err_substr);
        free(text);
    }

    /* text accumulates over calls; the length bounds the parse (no NUL needed) */
    char *text = NULL;
    const char *a = "{\"choices\":[{\"delta\":{\"content\":\"Hello\"}}]}XXXX";
    assert_int_equal(chat_openai_parse_chunk(a, strlen(a) - 4, &text, NULL, NULL, NULL, NULL, 0), 0);
    const char *b = "{\"choices\":[{\"delta\":{\"content\":\", world\"}}]}";
    assert_int_equal(chat_openai_parse_chunk(b, strlen(b), &text, NULL, NULL, NULL, NULL, 0), 0);
    assert_string_equal(text, "Hello, world");
    free(text);
}

TESTUTIL_MAIN(start_fake, stop_fake,
              cmocka_unit_test(test_parse_chunk_table),
              cmocka_unit_test(test_new_rejects_bad_config),
              cmocka_unit_test(test_extra_headers_and_body),
              cmocka_unit_test(test_extras_refused),
              cmocka_unit_test(test_ok),
              cmocka_unit_test(test_no_key_trailing_slash),
              cmocka_unit_test(test_scenarios),
              cmocka_unit_test(test_connect_refused),
              cmocka_unit_test(test_timeouts),
              cmocka_unit_test(test_cancel),
              cmocka_unit_test(test_callback_stop_and_precancel),
              cmocka_unit_test(test_loop_concurrent),
              cmocka_unit_test(test_loop_mix),
              cmocka_unit_test(test_loop_cancel_one),
              cmocka_unit_test(test_loop_start_from_callbacks),
              cmocka_unit_test(test_loop_free_running))
