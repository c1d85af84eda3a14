/* End-to-end tests of the metrics on the running stack (tests/run.sh starts it on CHAT_PORT): GET /metrics
 * through lighttpd sums every process's figures (streamer, workers, FastCGI responders) in a text that
 * promtool accepts, the figures move with what the test does (an answer over WebSocket, a REST request,
 * an open connection), and the streamer's own status socket answers /metrics for itself. */
#include <curl/curl.h>
#include <json-c/json.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include <cmocka.h>

#include "chat_jwt.h"
#include "chat_util.h"
#include "e2eutil.h"
#include "testutil.h"
#include "wsclient.h"

static struct {
    e2e_stack st;
    char *token;
} E;

static size_t collect(char *data, size_t size, size_t nmemb, void *ud)
{
    return chat_buf_append(ud, data, size * nmemb) ? 0 : size * nmemb;
}

/* GET url (over unix_socket when not NULL): the body, or NULL; *status gets the HTTP status. */
static char *get(const char *url, const char *unix_socket, long *status)
{
    CURL *c = curl_easy_init();
    chat_buf b;
    chat_buf_init(&b);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 10000L);
    if (unix_socket) curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, unix_socket);
    *status = 0;
    if (curl_easy_perform(c) == CURLE_OK) curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(c);
    if (!b.data) chat_buf_puts(&b, "");
    return chat_buf_take(&b);
}

static char *scrape(void)
{
    char url[256];
    snprintf(url, sizeof url, "%s/metrics", E.st.base);
    long status;
    char *text = get(url, NULL, &status);
    assert_int_equal(status, 200);
    return text;
}

/* The sum of every sample of a metric family whose line starts with prefix (e.g. all agents' counts). */
static double sum_of(const char *text, const char *prefix)
{
    double sum = 0;
    size_t n = strlen(prefix);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, prefix, n)) continue;
        const char *sp = strchr(p, ' ');
        const char *nl = strchr(p, '\n');
        if (sp && (!nl || sp < nl)) sum += atof(sp + 1);
    }
    return sum;
}

static void promtool_accepts(const char *text)
{
    FILE *p = popen("promtool check metrics >/dev/null 2>&1", "w");
    assert_non_null(p);
    fputs(text, p);
    int rc = pclose(p);
    assert_true(WIFEXITED(rc));
    if (WEXITSTATUS(rc)) fail_msg("promtool check metrics refused the scrape");
}

/* One answer over WebSocket through lighttpd; the connection stays open for the caller. */
static chat_wsc *ask_over_websocket(void)
{
    char err[256];
    chat_wsc *c = e2e_stack_ws(&E.st, E.token, NULL, err, sizeof err);
    if (!c) fail_msg("connect: %s", err);
    json_object *o = NULL;
    static const char msg[] = "{\"type\":\"message\",\"message\":\"What is the engine power of the Seawind 250?\"}";
    assert_int_equal(chat_wsc_send_text(c, msg, sizeof msg - 1), 0);
    assert_int_equal(chat_wsc_recv_type(c, 30000, "complete", &o), 0);
    json_object_put(o);
    return c;
}

static int group_setup(void **state)
{
    (void)state;
    if (e2e_stack_open(&E.st, "test_metrics")) return -1;
    E.token = chat_jwt_mint_hs256(E.st.secret, "e2e-metrics", "metrics@example.com", "Metrics", time(NULL), 3600);
    return E.token && curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    free(E.token);
    e2e_stack_close(&E.st);
    curl_global_cleanup();
    return 0;
}

/* A WebSocket answer and a REST request later, the front door's scrape counts both, sums the
 * processes' gauges (the open connection, live workers, database connections) and passes promtool. */
static void test_scrape_moves_with_traffic(void **state)
{
    (void)state;
    char *before = scrape();
    double answers0 = sum_of(before, "chat_answers_total{"), ttft0 = sum_of(before, "chat_time_to_first_token_seconds_count{");
    double rest0 = testutil_metric(before, "chat_rest_requests_total{status=\"200\"}");
    free(before);

    chat_wsc *c = ask_over_websocket();
    char url[256];
    snprintf(url, sizeof url, "%s/health", E.st.base);
    long status;
    free(get(url, NULL, &status));
    assert_int_equal(status, 200);

    char *after = scrape();
    promtool_accepts(after);
    assert_true(sum_of(after, "chat_answers_total{") >= answers0 + 1);
    assert_true(testutil_metric(after, "chat_answers_total{finish_reason=\"stop\"}") >= 1);
    assert_true(sum_of(after, "chat_time_to_first_token_seconds_count{") >= ttft0 + 1);
    /* the /health above */
    assert_true(testutil_metric(after, "chat_rest_requests_total{status=\"200\"}") >= rest0 + 1);
    assert_true(testutil_metric(after, "chat_websocket_connections") >= 1); /* c is still open */
    assert_true(testutil_metric(after, "chat_workers_live") >= 1);
    assert_true(testutil_metric(after, "chat_worker_slots") >= 1);
    assert_true(testutil_metric(after, "chat_db_connections") >= 1);
    assert_true(sum_of(after, "chat_generation_tokens_total{") >= 1);
    free(after);
    chat_wsc_close(c, 1000, NULL);
}

/* The streamer's own status socket answers /metrics with its figures alone. */
static void test_streamer_own_metrics(void **state)
{
    (void)state;
    char sock[1100];
    snprintf(sock, sizeof sock, "%s/run/streamer.sock", E.st.var);
    long status;
    char *text = get("http://localhost/metrics", sock, &status);
    assert_int_equal(status, 200);
    promtool_accepts(text);
    assert_true(testutil_metric(text, "chat_workers_live") >= 1);     /* the broker's view is the streamer's */
    assert_true(testutil_metric(text, "chat_db_connections") == 0);   /* the streamer never opens the database */
    free(text);
}

TESTUTIL_MAIN(group_setup, group_teardown,
              cmocka_unit_test(test_scrape_moves_with_traffic),
              cmocka_unit_test(test_streamer_own_metrics))
