/* Tests of the process-shared metrics (shared/chat_metrics.c): what one process counts, what a scrape
 * sums over several real processes (counters of exited ones kept, their gauges dropped, MAX gauges),
 * histogram buckets at their boundaries, labels outside their set, and promtool's verdict on the text. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "chat_common.h"
#include "chat_metrics.h"
#include "chat_util.h"
#include "testutil.h"

static char *render(const char *dir)
{
    chat_buf b;
    chat_buf_init(&b);
    assert_int_equal(chat_metrics_render(dir, &b), 0);
    return chat_buf_take(&b);
}

static void test_one_process(void **state)
{
    assert_int_equal(chat_metrics_init(NULL, "test", NULL, 0), 0);
    chat_metric_inc(CHAT_METRIC_ANSWERS, chat_metric_label(CHAT_METRIC_LABEL_FINISH, "stop"), 3);
    chat_metric_inc(CHAT_METRIC_ANSWERS, chat_metric_label(CHAT_METRIC_LABEL_FINISH, "cancelled"), 1);
    chat_metric_inc(CHAT_METRIC_ANSWERS, chat_metric_label(CHAT_METRIC_LABEL_FINISH, "weird"), 2);
    chat_metric_inc(CHAT_METRIC_ERRORS, chat_metric_label(CHAT_METRIC_LABEL_CODE, "OVERLOADED"), 1);
    chat_metric_inc(CHAT_METRIC_LLM_ATTEMPTS, chat_metric_label(CHAT_METRIC_LABEL_ATTEMPT, "openai,rate_limited"), 2);
    chat_metric_inc(CHAT_METRIC_LLM_ATTEMPTS, chat_metric_label(CHAT_METRIC_LABEL_ATTEMPT, "extractive,ok"), 1);
    chat_metric_inc(CHAT_METRIC_LLM_ATTEMPTS, chat_metric_label(CHAT_METRIC_LABEL_ATTEMPT, "magic,ok"), 1);
    chat_metric_gauge_add(CHAT_METRIC_WS_CONNECTIONS, 0, 5);
    chat_metric_gauge_add(CHAT_METRIC_WS_CONNECTIONS, 0, -2);
    chat_metric_gauge_set(CHAT_METRIC_WORKERS, 0, 4);
    char *t = render(NULL);
    assert_true(testutil_metric(t, "chat_answers_total{finish_reason=\"stop\"}") == 3);
    assert_true(testutil_metric(t, "chat_answers_total{finish_reason=\"cancelled\"}") == 1);
    assert_true(testutil_metric(t, "chat_answers_total{finish_reason=\"other\"}") == 2);
    assert_true(testutil_metric(t, "chat_answers_total{finish_reason=\"length\"}") == 0);
    assert_true(testutil_metric(t, "chat_errors_total{code=\"OVERLOADED\"}") == 1);
    /* a dimension of two labels: each value in two parts; "other" is both */
    assert_true(testutil_metric(t, "chat_llm_attempts_total{provider=\"openai\",outcome=\"rate_limited\"}") == 2);
    assert_true(testutil_metric(t, "chat_llm_attempts_total{provider=\"extractive\",outcome=\"ok\"}") == 1);
    assert_true(testutil_metric(t, "chat_llm_attempts_total{provider=\"openai\",outcome=\"ok\"}") == 0);
    assert_true(testutil_metric(t, "chat_llm_attempts_total{provider=\"other\",outcome=\"other\"}") == 1);
    assert_true(testutil_metric(t, "chat_websocket_connections") == 3);
    assert_true(testutil_metric(t, "chat_workers_live") == 4);
    assert_non_null(strstr(t, "# TYPE chat_time_to_first_token_seconds histogram\n"));
    assert_non_null(strstr(t, "# TYPE chat_answers_total counter\n"));
    free(t);
    chat_metrics_shutdown();
}

static void test_histogram_buckets(void **state)
{
    static const struct {
        double seconds;
        const char *first_bucket; /* the smallest le that counts it */
        const char *below;        /* the largest le that does not, or NULL */
    } cases[] = {
        {0.0005, "0.001", NULL}, {0.001, "0.001", NULL},   {0.0011, "0.0025", "0.001"},
        {1.0, "1", "0.5"},        {59.9, "60", "30"},       {600, "+Inf", "60"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        assert_int_equal(chat_metrics_init(NULL, "test", NULL, 0), 0);
        chat_metric_observe(CHAT_METRIC_ITL, 0, cases[i].seconds);
        char *t = render(NULL), series[96];
        snprintf(series, sizeof series, "chat_inter_token_latency_seconds_bucket{le=\"%s\"}", cases[i].first_bucket);
        assert_true(testutil_metric(t, series) == 1);
        if (cases[i].below) {
            snprintf(series, sizeof series, "chat_inter_token_latency_seconds_bucket{le=\"%s\"}", cases[i].below);
            assert_true(testutil_metric(t, series) == 0);
        }
        assert_true(testutil_metric(t, "chat_inter_token_latency_seconds_count") == 1);
        double sum = testutil_metric(t, "chat_inter_token_latency_seconds_sum");
        assert_true(sum > cases[i].seconds - 1e-6 && sum < cases[i].seconds + 1e-6);
        free(t);
        chat_metrics_shutdown();
    }
}

/* A child process with its own file: counts, sets gauges, then waits for a byte on rd (or exits). */
static pid_t child(const char *dir, int gauge_max, int rd)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid) return pid;
    if (chat_metrics_init(dir, "worker", NULL, 0)) _exit(1);
    chat_metric_inc(CHAT_METRIC_GENERATION_TOKENS, chat_metric_label(CHAT_METRIC_LABEL_PROVIDER, "extractive"), 10);
    chat_metric_gauge_add(CHAT_METRIC_IN_FLIGHT, 0, 2);
    chat_metric_gauge_set(CHAT_METRIC_WORKER_SLOTS, 0, gauge_max);
    chat_metric_observe(CHAT_METRIC_TTFT, chat_metric_label(CHAT_METRIC_LABEL_AGENT, "specs"), 0.02);
    if (write(STDOUT_FILENO, "", 0) < 0) _exit(1);
    char c;
    if (rd >= 0 && read(rd, &c, 1) < 0) _exit(1);
    _exit(0); /* no shutdown: an exit without it must not leave live-looking gauges either */
}

static void test_processes_summed(void **state)
{
    char dir[] = "/tmp/chat-metrics-XXXXXX";
    assert_non_null(mkdtemp(dir));
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t exited = child(dir, 9, -1);
    int st;
    assert_int_equal(waitpid(exited, &st, 0), exited);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    pid_t live1 = child(dir, 3, p[0]), live2 = child(dir, 5, p[0]);
    usleep(200 * 1000); /* both have counted (they block on the pipe right after) */
    char *t = render(dir);
    /* the exited one too */
    assert_true(testutil_metric(t, "chat_generation_tokens_total{provider=\"extractive\"}") == 30);
    assert_true(testutil_metric(t, "chat_answers_in_flight") == 4); /* live ones only */
    assert_true(testutil_metric(t, "chat_worker_slots") == 5); /* the largest live */
    assert_true(testutil_metric(t, "chat_time_to_first_token_seconds_bucket{agent=\"specs\",le=\"0.025\"}") == 3);
    assert_true(testutil_metric(t, "chat_time_to_first_token_seconds_bucket{agent=\"specs\",le=\"0.01\"}") == 0);
    free(t);
    assert_int_equal(write(p[1], "xx", 2), 2);
    waitpid(live1, NULL, 0);
    waitpid(live2, NULL, 0);
    t = render(dir);
    assert_true(testutil_metric(t, "chat_answers_in_flight") == 0);
    assert_true(testutil_metric(t, "chat_generation_tokens_total{provider=\"extractive\"}") == 30);
    free(t);
    close(p[0]);
    close(p[1]);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* A file that is not one of ours, or of another layout, is skipped rather than summed. */
static void test_foreign_files_skipped(void **state)
{
    char dir[] = "/tmp/chat-metrics-XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/bogus-1.metrics", dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    for (int i = 0; i < 100000; i++) fputc('x', f);
    fclose(f);
    assert_int_equal(chat_metrics_init(dir, "test", NULL, 0), 0);
    chat_metric_inc(CHAT_METRIC_REST_REQUESTS, chat_metric_label(CHAT_METRIC_LABEL_STATUS, "200"), 7);
    char *t = render(dir);
    assert_true(testutil_metric(t, "chat_rest_requests_total{status=\"200\"}") == 7);
    free(t);
    chat_metrics_shutdown();
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

/* Prometheus's own linter accepts the exposition (Debian's prometheus package, installed by make deps). */
static void test_promtool_accepts(void **state)
{
    assert_int_equal(chat_metrics_init(NULL, "test", NULL, 0), 0);
    chat_metric_observe(CHAT_METRIC_E2E, 0, 0.3);
    chat_metric_inc(CHAT_METRIC_PROMPT_TOKENS, 0, 12);
    chat_metric_inc(CHAT_METRIC_LLM_ATTEMPTS, 3, 1);
    char *t = render(NULL);
    FILE *p = popen("promtool check metrics >/dev/null 2>&1", "w");
    assert_non_null(p);
    fputs(t, p);
    int rc = pclose(p);
    free(t);
    chat_metrics_shutdown();
    assert_true(WIFEXITED(rc));
    assert_int_equal(WEXITSTATUS(rc), 0);
}

/* Every metric the Grafana dashboard (deploy/grafana-dashboard.json) queries is one this build exports. */
static void test_dashboard_names_exported_metrics(void **state)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/deploy/grafana-dashboard.json", testutil_root());
    char *json = testutil_read_file(path, NULL);
    assert_non_null(json);
    assert_int_equal(chat_metrics_init(NULL, "test", NULL, 0), 0);
    char *t = render(NULL);
    int checked = 0;
    for (const char *p = strstr(json, "chat_"); p; p = strstr(p, "chat_")) {
        char name[96], type_line[128];
        size_t n = strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_");
        if (n >= sizeof name) n = sizeof name - 1;
        memcpy(name, p, n);
        name[n] = '\0';
        p += n;
        static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
        for (size_t i = 0; i < CHAT_ARRAY_LEN(suffixes); i++) {
            size_t sl = strlen(suffixes[i]);
            if (n > sl && !strcmp(name + n - sl, suffixes[i])) name[n - sl] = '\0';
        }
        snprintf(type_line, sizeof type_line, "# TYPE %s ", name);
        if (!strstr(t, type_line)) fail_msg("the dashboard queries %s, which is not exported", name);
        checked++;
    }
    assert_true(checked >= 10);
    free(t);
    free(json);
    chat_metrics_shutdown();
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_one_process),
              cmocka_unit_test(test_histogram_buckets),
              cmocka_unit_test(test_processes_summed),
              cmocka_unit_test(test_foreign_files_skipped),
              cmocka_unit_test(test_promtool_accepts),
              cmocka_unit_test(test_dashboard_names_exported_metrics))
