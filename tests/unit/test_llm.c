/* Tests for chat_llm's provider table, its chain of providers and the replay provider: every row of the
 * table has a name and every function, chat_config accepts exactly the table's names and parses
 * CHAT_LLM_FALLBACK; the chain against the fake LLM server's failure scenarios (a rate limit that
 * recovers after retries, a provider that always fails and falls back to another endpoint and then the
 * offline provider, a 401 that is not retried, a failure after the first token that is not fallen back
 * from), with every attempt in the result and the metrics; the replay provider streams exactly
 * the recorded pieces in order, paced by token_delay_ms (timestamps), stops within 100 ms on cancel
 * (at once after chat_llm_loop_wakeup), gives finish_reason "length" at max_tokens, refuses a missing
 * or malformed recording in chat_llm_new with a message naming the line, and runs many generations at
 * once on one chat_llm_loop. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>
#include <sys/types.h>

#include "chat_common.h"
#include "chat_llm.h"
#include "chat_llm_provider.h"
#include "chat_metrics.h"
#include "chat_util.h"
#include "testutil.h"
#include "testutil_llm.h"

/* The recording most tests replay: what its file holds, line by line, and the pieces it stands for. */
static const char *const RECORDING[] = {
    "\"The Seawind 250\"",
    "\" is powered by\"",
    "",                                 /* a blank line is skipped */
    "  \" a 250 hp \\\"V6\\\" outboard\"  ", /* whitespace around the string, escapes inside it */
    "\" (186 kW).\\n\"\r",              /* a newline piece; a CRLF file */
    "\"Caf\\u00e9 \xE2\x9B\xB5 \"",     /* \u escapes and raw UTF-8 */
    "\"Sources: boat-a/specs.md\"",
};
static const char *const PIECES[] = {
    "The Seawind 250", " is powered by", " a 250 hp \"V6\" outboard", " (186 kW).\n",
    "Caf\xC3\xA9 \xE2\x9B\xB5 ", "Sources: boat-a/specs.md",
};
#define N_PIECES ((int)CHAT_ARRAY_LEN(PIECES))

static char rec_path[64];
static pid_t fake_pid = -1;
static int fake_port;

/* Writes lines (each followed by "\n") to a new temporary file; returns its path (static buffer). */
static const char *write_file(const char *const *lines, size_t n)
{
    static char path[64];
    snprintf(path, sizeof path, "/tmp/chat_test_replay_XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    for (size_t i = 0; i < n; i++) fprintf(f, "%s\n", lines[i]);
    assert_int_equal(fclose(f), 0);
    return path;
}

static int setup(void **state)
{
    (void)state;
    snprintf(rec_path, sizeof rec_path, "%s", write_file(RECORDING, CHAT_ARRAY_LEN(RECORDING)));
    char err[128];
    if (chat_metrics_init(NULL, "test", err, sizeof err)) return -1;
    fake_pid = testutil_fake_llm_start(&fake_port);
    return fake_pid > 0 ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    unlink(rec_path);
    testutil_fake_llm_stop(fake_pid);
    chat_metrics_shutdown();
    return 0;
}

static chat_config replay_config(const char *path, int delay_ms)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "replay");
    snprintf(cfg.llm_replay_file, sizeof cfg.llm_replay_file, "%s", path);
    cfg.token_delay_ms = delay_ms;
    return cfg;
}

static chat_llm *replay_llm(int delay_ms)
{
    chat_config cfg = replay_config(rec_path, delay_ms);
    char err[256];
    chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
    if (!llm) fail_msg("chat_llm_new: %s", err);
    return llm;
}

/* ---- the table ---- */

static void test_table(void **state)
{
    (void)state;
    size_t n = 0;
    for (const chat_llm_provider *p; (p = chat_llm_provider_at(n)); n++) {
        if (!p->name || !*p->name) fail_msg("row %zu has no name", n);
        const void *fns[] = {
            (const void *)p->open,        (const void *)p->close,        (const void *)p->instant,
            (const void *)p->loop_attach, (const void *)p->loop_detach,  (const void *)p->loop_fds,
            (const void *)p->loop_work,   (const void *)p->gen_new,      (const void *)p->gen_deadline,
            (const void *)p->gen_step,    (const void *)p->gen_outcome,  (const void *)p->gen_free,
            (const void *)p->gen_attempt, (const void *)p->gen_rewind,
        };
        for (size_t k = 0; k < CHAT_ARRAY_LEN(fns); k++)
            if (!fns[k]) fail_msg("provider %s lacks function %zu", p->name, k);
        assert_string_equal(chat_llm_provider_name_at(n), p->name);
        for (size_t j = 0; j < n; j++)
            if (!strcmp(chat_llm_provider_at(j)->name, p->name)) fail_msg("provider %s twice", p->name);
    }
    assert_true(n >= 3);
    assert_null(chat_llm_provider_name_at(n));

    /* the configuration accepts every name of the table, and lists them when it refuses one */
    char err[256];
    chat_config cfg;
    for (size_t i = 0; i < n; i++) {
        setenv("CHAT_LLM_PROVIDER", chat_llm_provider_name_at(i), 1);
        setenv("LLM_BASE_URL", "http://127.0.0.1:9/v1", 1);
        if (chat_config_from_env(&cfg, err, sizeof err)) fail_msg("%s: %s", chat_llm_provider_name_at(i), err);
        assert_string_equal(cfg.llm_provider, chat_llm_provider_name_at(i));
    }
    setenv("CHAT_LLM_PROVIDER", "magic", 1);
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "replay"));
    assert_null(strstr(err, "magic"));
    unsetenv("CHAT_LLM_PROVIDER");
    unsetenv("LLM_BASE_URL");

    cfg = replay_config(rec_path, 0);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "magic");
    assert_null(chat_llm_new(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "unknown LLM provider"));
}

/* ---- one generation ---- */

typedef struct piece_log {
    int n;
    char text[16][64];
    size_t len[16];
    int64_t at[16];
    int stop_after;         /* return non-zero at this piece; 0 = never */
    atomic_int *cancel_at2; /* raised at the second piece */
} piece_log;

static int log_piece(void *ud, const char *t, size_t n)
{
    piece_log *l = ud;
    if (l->n < 16) {
        snprintf(l->text[l->n], sizeof l->text[l->n], "%.*s", (int)n, t);
        l->len[l->n] = n;
        l->at[l->n] = chat_now_ms();
    }
    l->n++;
    if (l->cancel_at2 && l->n == 2) atomic_store(l->cancel_at2, 1);
    return l->stop_after && l->n >= l->stop_after;
}

static const chat_llm_message prompt[] = {{"system", "You are helpful."}, {"user", "What powers the 250?"}};

static int generate(chat_llm *llm, int max_tokens, const atomic_int *cancel, piece_log *l, chat_llm_result *res,
                    char *err, size_t errlen)
{
    chat_llm_request req = {.messages = prompt, .n_messages = CHAT_ARRAY_LEN(prompt), .max_tokens = max_tokens};
    return chat_llm_generate(llm, &req, log_piece, l, cancel, res, err, errlen);
}

static void assert_pieces(const piece_log *l, int n)
{
    assert_int_equal(l->n, n);
    for (int i = 0; i < n; i++) {
        assert_int_equal(l->len[i], strlen(PIECES[i]));
        assert_string_equal(l->text[i], PIECES[i]);
    }
}

static void test_replay_pieces(void **state)
{
    (void)state;
    chat_llm *llm = replay_llm(0);
    assert_string_equal(chat_llm_provider_name(llm), "replay");
    assert_true(chat_llm_instant(llm));
    for (int round = 0; round < 2; round++) { /* the recording is replayed whole every time */
        piece_log l = {0};
        chat_llm_result res;
        char err[128];
        assert_int_equal(generate(llm, 0, NULL, &l, &res, err, sizeof err), 0);
        assert_pieces(&l, N_PIECES);
        assert_string_equal(res.finish_reason, "stop");
        assert_int_equal(res.completion_tokens, N_PIECES);
        assert_int_equal(res.tokens_emitted, N_PIECES);
        assert_true(res.prompt_tokens > 0);
    }
    chat_llm_free(llm);
}

static void test_replay_paced(void **state)
{
    (void)state;
    enum { DELAY = 30 };
    chat_llm *llm = replay_llm(DELAY);
    assert_false(chat_llm_instant(llm));
    piece_log l = {0};
    chat_llm_result res;
    char err[128];
    int64_t t0 = chat_now_ms();
    assert_int_equal(generate(llm, 0, NULL, &l, &res, err, sizeof err), 0);
    int64_t took = chat_now_ms() - t0;
    assert_pieces(&l, N_PIECES);
    if (l.at[0] - t0 > 50) fail_msg("the first piece came after %lld ms", (long long)(l.at[0] - t0));
    for (int i = 1; i < N_PIECES; i++) {
        int64_t gap = l.at[i] - l.at[i - 1];
        if (gap < DELAY - 2) fail_msg("piece %d came %lld ms after the one before", i, (long long)gap);
    }
    /* done with the last piece, not a token interval later */
    if (took > (N_PIECES - 1) * DELAY * 2 + 50) fail_msg("%d paced pieces took %lld ms", N_PIECES, (long long)took);
    assert_string_equal(res.finish_reason, "stop");
    chat_llm_free(llm);
}

static void test_replay_max_tokens(void **state)
{
    (void)state;
    static const struct {
        int req_max, cfg_max, pieces;
        const char *finish;
    } cases[] = {
        {3, 0, 3, "length"},
        {1, 0, 1, "length"},
        {N_PIECES, 0, N_PIECES, "stop"}, /* exactly all of them is not cut */
        {N_PIECES + 5, 0, N_PIECES, "stop"},
        {0, 2, 2, "length"}, /* LLM_MAX_TOKENS when the request names none */
        {4, 2, 4, "length"}, /* the request's wins */
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_config cfg = replay_config(rec_path, 0);
        cfg.llm_max_tokens = cases[i].cfg_max;
        char err[128];
        chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
        assert_non_null(llm);
        piece_log l = {0};
        chat_llm_result res;
        int rc = generate(llm, cases[i].req_max, NULL, &l, &res, err, sizeof err);
        if (rc || l.n != cases[i].pieces || strcmp(res.finish_reason, cases[i].finish))
            fail_msg("case %zu: rc %d, %d pieces, finish %s", i, rc, l.n, res.finish_reason);
        assert_pieces(&l, cases[i].pieces);
        assert_int_equal(res.completion_tokens, cases[i].pieces);
        chat_llm_free(llm);
    }
}

/* ---- generations on a loop ---- */

static void test_replay_cancel(void **state)
{
    (void)state;
    char err[128];
    chat_llm_result res;

    /* raised from another thread while the generation waits for its next piece (2 s away) */
    chat_llm *slow = replay_llm(2000);
    atomic_int flag = 0;
    testutil_waker r = {.flags = {&flag}, .after_ms = 150};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, testutil_waker_thread, &r), 0);
    piece_log l = {0};
    int rc = generate(slow, 0, &flag, &l, &res, err, sizeof err);
    int64_t done = chat_now_ms();
    pthread_join(t, NULL);
    assert_int_equal(rc, CHAT_ECANCELLED);
    assert_string_equal(res.finish_reason, "cancelled");
    assert_int_equal(l.n, 1);
    if (done - r.at[0] > 100) fail_msg("cancel took %lld ms", (long long)(done - r.at[0]));

    /* on a loop, with chat_llm_loop_wakeup after the raise: at once, not at the loop's next look */
    chat_llm_loop *loop = testutil_loop_new();
    testutil_gen g;
    testutil_gen_init(&g, 0, 0, NULL);
    chat_llm_request req = {.messages = prompt, .n_messages = CHAT_ARRAY_LEN(prompt)};
    assert_int_equal(testutil_gen_launch(loop, slow, &g, &req), 0);
    testutil_waker w = {.loop = loop, .flags = {&g.cancel}, .after_ms = 150};
    assert_int_equal(pthread_create(&t, NULL, testutil_waker_thread, &w), 0);
    int64_t end = chat_now_ms() + 3000;
    while (!g.done_calls && chat_now_ms() < end) chat_llm_loop_run(loop, 1000);
    pthread_join(t, NULL);
    assert_int_equal(g.done_calls, 1);
    assert_int_equal(g.rc, CHAT_ECANCELLED);
    assert_int_equal(g.pieces, 1);
    if (g.done_at - w.at[0] > 30) fail_msg("cancel with wakeup took %lld ms", (long long)(g.done_at - w.at[0]));
    chat_llm_loop_free(loop);
    chat_buf_free(&g.text);
    chat_llm_free(slow);

    /* raised by the token callback itself, the caller's stop, and before the start */
    chat_llm *llm = replay_llm(5);
    atomic_int at2 = 0;
    piece_log c = {.cancel_at2 = &at2};
    assert_int_equal(generate(llm, 0, &at2, &c, &res, err, sizeof err), CHAT_ECANCELLED);
    assert_int_equal(c.n, 2);
    assert_string_equal(res.finish_reason, "cancelled");
    piece_log s = {.stop_after = 3};
    assert_int_equal(generate(llm, 0, NULL, &s, &res, err, sizeof err), CHAT_ECANCELLED);
    assert_int_equal(s.n, 3);
    assert_string_equal(res.finish_reason, "cancelled");
    atomic_int pre = 1;
    piece_log p = {0};
    assert_int_equal(generate(llm, 0, &pre, &p, &res, err, sizeof err), CHAT_ECANCELLED);
    assert_int_equal(p.n, 0);
    chat_llm_free(llm);
}

/* ---- bad recordings ---- */

static void test_replay_bad_files(void **state)
{
    (void)state;
    static const struct {
        const char *lines[3];
        size_t n;
        const char *must; /* in err */
    } cases[] = {
        {{NULL}, 0, "holds no piece"},
        {{"", "   "}, 2, "holds no piece"},
        {{"\"ok\"", "not json"}, 2, "line 2 is not one JSON string"},
        {{"42"}, 1, "line 1 is not one JSON string"},
        {{"[\"a\"]"}, 1, "line 1 is not one JSON string"},
        {{"\"a\" \"b\""}, 1, "line 1 is not one JSON string"},
        {{"\"a\" x"}, 1, "line 1 is not one JSON string"},
        {{"\"unterminated"}, 1, "line 1 is not one JSON string"},
        {{"\"ok\"", "", "\"\""}, 3, "line 3 is not a piece of text"},
        {{"\"a\\u0000b\""}, 1, "line 1 is not a piece of text"},
        {{"\"bad \xC3\x28 utf8\""}, 1, "line 1 is not a piece of text"},
    };
    char err[256];
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        const char *path = write_file(cases[i].lines, cases[i].n);
        chat_config cfg = replay_config(path, 0);
        chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
        unlink(path);
        if (llm) fail_msg("case %zu: accepted", i);
        if (!strstr(err, cases[i].must)) fail_msg("case %zu: '%s' lacks '%s'", i, err, cases[i].must);
        assert_null(strstr(err, "/tmp")); /* names the setting, never its value */
    }

    chat_config cfg = replay_config("", 0);
    assert_null(chat_llm_new(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "needs CHAT_LLM_REPLAY_FILE"));
    cfg = replay_config("/nonexistent/chat-replay.txt", 0);
    assert_null(chat_llm_new(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "CHAT_LLM_REPLAY_FILE cannot be opened"));
    assert_null(strstr(err, "nonexistent"));
}

/* ---- many generations on one loop ---- */

/* Two hundred paced replays at once on one thread, a few cut by max_tokens, one cancelled with a wakeup:
 * each gets its pieces in order and its done once, their pieces interleave, and the whole takes about
 * as long as one. */
static void test_replay_loop_many(void **state)
{
    (void)state;
    enum { N = 200, DELAY = 20, CANCELLED = 7 };
    chat_llm *llm = replay_llm(DELAY);
    chat_llm_loop *loop = testutil_loop_new();
    static testutil_gen g[N];
    char whole[512] = "";
    for (int i = 0; i < N_PIECES; i++) strcat(whole, PIECES[i]);
    testutil_gen_norder = 0;
    int64_t t0 = chat_now_ms();
    for (int i = 0; i < N; i++) {
        testutil_gen_init(&g[i], i, i % 10 == 3 ? 2 : 0, NULL);
        chat_llm_request req = {.messages = prompt, .n_messages = 2, .max_tokens = g[i].max_tokens};
        assert_int_equal(testutil_gen_launch(loop, llm, &g[i], &req), 0);
    }
    assert_int_equal(testutil_gen_norder, 0); /* nothing inside chat_llm_start */
    testutil_waker r = {.loop = loop, .flags = {&g[CANCELLED].cancel}, .after_ms = DELAY + DELAY / 2};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, testutil_waker_thread, &r), 0);
    int64_t end = chat_now_ms() + 5000;
    while (chat_llm_loop_run(loop, 1000) > 0 && chat_now_ms() < end) {
    }
    int64_t took = chat_now_ms() - t0;
    pthread_join(t, NULL);
    for (int i = 0; i < N; i++) {
        assert_int_equal(g[i].done_calls, 1);
        if (i == CANCELLED) {
            assert_int_equal(g[i].rc, CHAT_ECANCELLED);
            if (g[i].pieces < 2 || g[i].pieces >= N_PIECES) fail_msg("cancelled after %d pieces", g[i].pieces);
            if (g[i].done_at - r.at[0] > 30)
                fail_msg("cancel with wakeup took %lld ms", (long long)(g[i].done_at - r.at[0]));
            continue;
        }
        assert_int_equal(g[i].rc, 0);
        if (g[i].max_tokens) {
            assert_int_equal(g[i].pieces, 2);
            assert_string_equal(g[i].res.finish_reason, "length");
            assert_int_equal(strncmp(g[i].text.data, whole, g[i].text.len), 0);
            assert_int_equal(g[i].text.len, strlen(PIECES[0]) + strlen(PIECES[1]));
        } else {
            assert_int_equal(g[i].pieces, N_PIECES);
            assert_string_equal(g[i].res.finish_reason, "stop");
            assert_string_equal(g[i].text.data, whole);
        }
    }
    int switches = testutil_gen_switches();
    if (switches < N * 3) fail_msg("pieces did not interleave (%d switches)", switches);
    if (took > (N_PIECES - 1) * DELAY * 3 + 200) fail_msg("%d paced replays took %lld ms", N, (long long)took);
    chat_llm_loop_free(loop);
    chat_llm_free(llm);
    for (int i = 0; i < N; i++) chat_buf_free(&g[i].text);
}

/* ---- the chain ---- */

/* The openai provider on the fake server's /v1 asking for model, quick back-offs (50 ms doubling, at most
 * 500 ms), the recording for a replay fallback. */
static chat_config chain_config(const char *model, int max_attempts)
{
    chat_config cfg = replay_config(rec_path, 0);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "openai");
    snprintf(cfg.llm_base_url, sizeof cfg.llm_base_url, "http://127.0.0.1:%d/v1", fake_port);
    snprintf(cfg.llm_api_key, sizeof cfg.llm_api_key, "sk-chain-secret");
    snprintf(cfg.llm_model, sizeof cfg.llm_model, "%s", model);
    cfg.llm_connect_timeout_ms = 2000;
    cfg.llm_first_token_timeout_ms = cfg.llm_stall_timeout_ms = 5000;
    cfg.llm_max_attempts = max_attempts;
    cfg.llm_retry_backoff_ms = 50;
    cfg.llm_retry_max_ms = 500;
    return cfg;
}

/* A fallback: "openai:<model>" (the fake server's /alt/v1, another endpoint), or a provider's name. */
static void add_fallback(chat_config *cfg, const char *spec)
{
    chat_llm_fallback *fb = &cfg->llm_fallback[cfg->n_llm_fallback++];
    memset(fb, 0, sizeof *fb);
    const char *colon = strchr(spec, ':');
    snprintf(fb->provider, sizeof fb->provider, "%.*s", colon ? (int)(colon - spec) : (int)strlen(spec), spec);
    if (!colon) return;
    snprintf(fb->base_url, sizeof fb->base_url, "http://127.0.0.1:%d/alt/v1", fake_port);
    snprintf(fb->model, sizeof fb->model, "%s", colon + 1);
}


/* chat_llm_attempts_total{provider,outcome} as this process's scrape says. */
static long attempts_metric(const char *provider, const char *outcome)
{
    chat_buf b;
    chat_buf_init(&b);
    assert_int_equal(chat_metrics_render(NULL, &b), 0);
    char line[160];
    snprintf(line, sizeof line, "chat_llm_attempts_total{provider=\"%s\",outcome=\"%s\"} ", provider, outcome);
    const char *at = strstr(b.data, line);
    assert_non_null(at);
    long n = strtol(at + strlen(line), NULL, 10);
    chat_buf_free(&b);
    return n;
}

typedef struct chain_case {
    const char *name;
    const char *model; /* the first provider's fake scenario */
    int max_attempts;
    const char *fallbacks[3]; /* for add_fallback */
    int rc;
    const char *err;      /* with rc */
    const char *provider; /* who answered, or failed last */
    const char *attempts; /* each "provider/model/outcome" ("-": no model), space-separated */
    long requests;        /* the fake server saw */
    const char *finish;
    int tokens;       /* -1: some */
    const char *path; /* of the fake's last request; NULL: not checked */
    int min_ms, max_ms; /* how long it took (retry-after-ms: 50 is taken over Retry-After: 1) */
} chain_case;

#define RL2 "openai/fake-429-first-2/rate_limited "
#define RL3 "openai/fake-429-first-3/rate_limited "
#define DOWN "openai/fake-503-always/unavailable "
static const chain_case chain_cases[] = {
    {"rate-limited twice, then answers (retry-after-ms: 50 honoured)", "fake-429-first-2", 3, {NULL}, 0, NULL,
     "openai", RL2 RL2 "openai/fake-429-first-2/ok", 3, "stop", -1, "/v1/chat/completions", 90, 900},
    {"rate-limited more often than it may be asked: the offline provider", "fake-429-first-3", 2, {"extractive"}, 0,
     NULL, "extractive", RL3 RL3 "extractive/-/ok", 2, "stop", -1, NULL, 40, 2000},
    {"always down: the other endpoint answers", "fake-503-always", 2, {"openai:fake-ok", "extractive"}, 0, NULL,
     "openai", DOWN DOWN "openai/fake-ok/ok", 3, "stop", -1, "/alt/v1/chat/completions", 40, 2000},
    {"always down, the other endpoint too: the offline provider", "fake-503-always", 2,
     {"openai:fake-503-always", "replay"}, 0, NULL, "replay", DOWN DOWN DOWN DOWN "replay/-/ok", 4, "stop", N_PIECES,
     "/alt/v1/chat/completions", 80, 2000},
    {"a 401 is not asked again: the next provider answers", "fake-401", 3, {"extractive"}, 0, NULL, "extractive",
     "openai/fake-401/auth_error extractive/-/ok", 1, "stop", -1, NULL, 0, 2000},
    {"a failure after the first token ends the answer: no fallback", "fake-disconnect", 3, {"extractive"}, CHAT_ELLM,
     "LLM stream ended unexpectedly", "openai", "openai/fake-disconnect/unavailable", 1, "error", 4, NULL, 0, 2000},
    {"a Retry-After over the cap is not waited for when another provider can answer", "fake-429", 3, {"replay"}, 0,
     NULL, "replay", "openai/fake-429/rate_limited replay/-/ok", 1, "stop", N_PIECES, NULL, 0, 2000},
    {"down, nothing to fall back to: every attempt, backing off, then the error", "fake-503-always", 3, {NULL},
     CHAT_ELLM, "LLM provider unavailable (HTTP 503)", "openai", DOWN DOWN "openai/fake-503-always/unavailable", 3,
     "error", 0, NULL, 150, 2000},
};

/* The attempts of r against the case's list, and the metric's counts of them against before. */
static void check_attempts(const chain_case *k, const chat_llm_result *r, long before[][CHAT_LLM_OUTCOME_COUNT])
{
    char want[512];
    snprintf(want, sizeof want, "%s", k->attempts);
    long delta[3][CHAT_LLM_OUTCOME_COUNT] = {{0}};
    int i = 0;
    for (char *save = NULL, *a = strtok_r(want, " ", &save); a; a = strtok_r(NULL, " ", &save), i++) {
        char provider[32], model[96], outcome[32];
        assert_int_equal(sscanf(a, "%31[^/]/%95[^/]/%31s", provider, model, outcome), 3);
        if (i >= r->n_attempts) fail_msg("%s: attempt %d (%s) missing", k->name, i + 1, a);
        const chat_llm_attempt *at = &r->attempts[i];
        if (strcmp(at->provider, provider) || strcmp(at->model, strcmp(model, "-") ? model : "") ||
            strcmp(chat_llm_outcome_name(at->outcome), outcome))
            fail_msg("%s: attempt %d is %s/%s/%s, not %s", k->name, i + 1, at->provider, at->model,
                     chat_llm_outcome_name(at->outcome), a);
        assert_true(at->ms >= 0);
        for (size_t p = 0; p < 3; p++)
            if (!strcmp(chat_llm_provider_name_at(p), provider)) delta[p][at->outcome]++;
    }
    if (r->n_attempts != i) fail_msg("%s: %d attempts, not %d", k->name, r->n_attempts, i);
    for (size_t p = 0; p < 3; p++)
        for (int o = 0; o < CHAT_LLM_OUTCOME_COUNT; o++) {
            long now = attempts_metric(chat_llm_provider_name_at(p), chat_llm_outcome_name((chat_llm_outcome)o));
            if (now - before[p][o] != delta[p][o])
                fail_msg("%s: chat_llm_attempts_total{%s,%s} moved by %ld, not %ld", k->name,
                         chat_llm_provider_name_at(p), chat_llm_outcome_name((chat_llm_outcome)o), now - before[p][o],
                         delta[p][o]);
        }
}

static void run_chain_case(const chain_case *k)
{
    chat_config cfg = chain_config(k->model, k->max_attempts);
    for (size_t f = 0; f < CHAT_ARRAY_LEN(k->fallbacks) && k->fallbacks[f]; f++) add_fallback(&cfg, k->fallbacks[f]);
    char err[256] = "";
    chat_llm *llm = chat_llm_new(&cfg, err, sizeof err);
    if (!llm) fail_msg("%s: %s", k->name, err);
    assert_string_equal(chat_llm_provider_name(llm), "openai");
    long before[3][CHAT_LLM_OUTCOME_COUNT];
    for (size_t p = 0; p < 3; p++)
        for (int o = 0; o < CHAT_LLM_OUTCOME_COUNT; o++)
            before[p][o] = attempts_metric(chat_llm_provider_name_at(p), chat_llm_outcome_name((chat_llm_outcome)o));
    long requests = testutil_fake_llm_requests(fake_port);
    piece_log l = {0};
    chat_llm_result res;
    int64_t t0 = chat_now_ms();
    chat_llm_request req = {.messages = prompt,
                            .n_messages = CHAT_ARRAY_LEN(prompt),
                            .question = "What powers the 250?",
                            .agent = "specs",
                            .model = k->model}; /* the first provider's: the fallbacks keep their own */
    int rc = chat_llm_generate(llm, &req, log_piece, &l, NULL, &res, err, sizeof err);
    int64_t ms = chat_now_ms() - t0;
    if (rc != k->rc) fail_msg("%s: rc %s (%s), not %s", k->name, chat_strerror(rc), err, chat_strerror(k->rc));
    if (k->err) assert_string_equal(err, k->err);
    assert_null(strstr(err, "sk-chain-secret"));
    assert_string_equal(res.provider, k->provider);
    assert_string_equal(res.finish_reason, k->finish);
    assert_int_equal(res.tokens_emitted, l.n);
    if (k->tokens >= 0) assert_int_equal(l.n, k->tokens);
    else assert_true(l.n > 0);
    long asked = testutil_fake_llm_requests(fake_port) - requests;
    if (asked != k->requests) fail_msg("%s: %ld requests, not %ld", k->name, asked, k->requests);
    if (k->path) {
        json_object *last = testutil_fake_llm_last(fake_port), *v;
        assert_true(last && json_object_object_get_ex(last, "path", &v));
        assert_string_equal(json_object_get_string(v), k->path);
        json_object_put(last);
    }
    if (ms < k->min_ms || ms > k->max_ms)
        fail_msg("%s: took %lld ms, not %d..%d", k->name, (long long)ms, k->min_ms, k->max_ms);
    check_attempts(k, &res, before);
    chat_llm_free(llm);
}

static void test_chain_scenarios(void **state)
{
    (void)state;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(chain_cases); i++) run_chain_case(&chain_cases[i]);
}

/* CHAT_LLM_FALLBACK and each fallback's own settings from the environment; what is refused, by name. */
static void test_chain_config(void **state)
{
    (void)state;
    static const char *const vars[] = {"CHAT_LLM_FALLBACK", "LLM_FALLBACK_1_API_KEY", "LLM_FALLBACK_1_MODEL",
                                       "LLM_FALLBACK_1_EXTRA_HEADERS", "LLM_MODEL", "CHAT_LLM_PROVIDER"};
    char err[256];
    chat_config cfg;
    setenv("CHAT_LLM_FALLBACK", " openai:https://other.example/v1 , extractive", 1);
    setenv("LLM_FALLBACK_1_API_KEY", "sk-other", 1);
    setenv("LLM_FALLBACK_1_EXTRA_HEADERS", "{\"X-Title\":\"chat\"}", 1);
    setenv("LLM_MODEL", "main-model", 1);
    if (chat_config_from_env(&cfg, err, sizeof err)) fail_msg("%s", err);
    assert_int_equal(cfg.n_llm_fallback, 2);
    assert_string_equal(cfg.llm_fallback[0].provider, "openai");
    assert_string_equal(cfg.llm_fallback[0].base_url, "https://other.example/v1");
    assert_string_equal(cfg.llm_fallback[0].api_key, "sk-other");
    assert_string_equal(cfg.llm_fallback[0].model, "main-model"); /* LLM_MODEL unless its own is set */
    assert_string_equal(cfg.llm_fallback[0].extra_headers, "{\"X-Title\":\"chat\"}");
    assert_string_equal(cfg.llm_fallback[1].provider, "extractive");
    assert_int_equal(cfg.llm_max_attempts, 2);
    assert_int_equal(cfg.llm_retry_backoff_ms, 300);
    assert_int_equal(cfg.llm_retry_max_ms, 2000);
    setenv("LLM_FALLBACK_1_MODEL", "other-model", 1);
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), 0);
    assert_string_equal(cfg.llm_fallback[0].model, "other-model");
    chat_llm *llm = chat_llm_new(&cfg, err, sizeof err); /* extractive first, then the two */
    if (!llm) fail_msg("%s", err);
    assert_string_equal(chat_llm_provider_name(llm), "extractive");
    assert_false(chat_llm_instant(llm)); /* an openai fallback waits */
    chat_llm_free(llm);

    static const struct {
        const char *value, *err;
    } bad[] = {
        {"magic", "each entry of CHAT_LLM_FALLBACK must be one of: openai, extractive, replay"},
        {"openai", "openai takes a URL"},
        {"extractive:http://x/v1", "the other providers none"},
        {"extractive,extractive,extractive,extractive", "CHAT_LLM_FALLBACK names more than 3 providers"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad); i++) {
        setenv("CHAT_LLM_FALLBACK", bad[i].value, 1);
        assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), CHAT_EINVAL);
        if (!strstr(err, bad[i].err)) fail_msg("'%s': '%s' lacks '%s'", bad[i].value, err, bad[i].err);
    }
    /* a fallback's settings are checked when the chain is made, the entry named */
    setenv("CHAT_LLM_FALLBACK", "openai:http://127.0.0.1:9/v1", 1);
    setenv("LLM_FALLBACK_1_EXTRA_HEADERS", "[1]", 1);
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), 0);
    assert_null(chat_llm_new(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "CHAT_LLM_FALLBACK entry 1 (LLM_FALLBACK_1_*): LLM_EXTRA_HEADERS must be"));
    for (size_t i = 0; i < CHAT_ARRAY_LEN(vars); i++) unsetenv(vars[i]);
}

TESTUTIL_MAIN(setup, teardown,
              cmocka_unit_test(test_table),
              cmocka_unit_test(test_replay_pieces),
              cmocka_unit_test(test_replay_paced),
              cmocka_unit_test(test_replay_max_tokens),
              cmocka_unit_test(test_replay_cancel),
              cmocka_unit_test(test_replay_bad_files),
              cmocka_unit_test(test_replay_loop_many),
              cmocka_unit_test(test_chain_config),
              cmocka_unit_test(test_chain_scenarios))
