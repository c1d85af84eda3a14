/* End-to-end tests through the front door: lighttpd on CHAT_PORT with the FastCGI REST pool, the
 * WebSocket proxy to the streamer, the static test page, the access log.
 *
 * Assumes a stack started by tests/run.sh with `CHAT_DEMO=0 bash deploy/stack.sh start` (CHAT_VAR,
 * CHAT_PORT and the DB variables in the environment); the JWT secret is read from $CHAT_VAR/jwt-secret
 * (or JWT_SECRET) to mint tokens. HTTP goes through libcurl, the WebSocket through tools/wsclient (an
 * independent client implementation). Users are unique per run so earlier runs never interfere.
 * The database-down test runs last: it stops the private MariaDB (deploy/mariadb.sh) and starts it again. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <curl/curl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_util.h"
#include "e2eutil.h"
#include "testutil.h"
#include "wsclient.h"

#define QUESTION "What is the engine power of the Seawind 250?"
#define ID_BUF 65 /* chat_id_valid: at most 64 characters */

static struct {
    e2e_stack st;
    char alice_id[64], bob_id[64];
    char *alice, *bob, *expired, *wrong_secret;
    CURL *curl;
} E;

typedef struct http_resp {
    long status;
    chat_buf body;
    chat_buf headers;
    char content_type[128];
} http_resp;

static void resp_free(http_resp *r)
{
    chat_buf_free(&r->body);
    chat_buf_free(&r->headers);
}

static size_t collect(char *data, size_t size, size_t nmemb, void *ud)
{
    return chat_buf_append(ud, data, size * nmemb) ? 0 : size * nmemb;
}

/* One request. headers: NULL-terminated list of "Name: value". body may be NULL. */
static void http(const char *method, const char *path, const char *const *headers, const char *body, size_t body_len,
                 http_resp *r)
{
    memset(r, 0, sizeof *r);
    chat_buf_init(&r->body);
    chat_buf_init(&r->headers);
    char url[1024];
    snprintf(url, sizeof url, "%s%s", E.st.base, path);
    CURL *c = E.curl;
    curl_easy_reset(c);
    struct curl_slist *hl = NULL;
    for (int i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    hl = curl_slist_append(hl, "Expect:"); /* no 100-continue round trip for the big bodies */
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r->headers);
    if (!strcmp(method, "HEAD"))
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    if (body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
    }
    CURLcode rc = curl_easy_perform(c);
    curl_slist_free_all(hl);
    if (rc != CURLE_OK) fail_msg("%s %s: %s", method, path, curl_easy_strerror(rc));
    e2e_curl_result(c, &r->status, r->content_type, sizeof r->content_type);
    if (!r->body.data) chat_buf_puts(&r->body, "");
    if (!r->headers.data) chat_buf_puts(&r->headers, "");
}

static void post_chat(const char *token, const char *content_type, const char *body, http_resp *r)
{
    char auth[4096], ct[256];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token ? token : "");
    snprintf(ct, sizeof ct, "Content-Type: %s", content_type);
    const char *h[3] = {ct, NULL, NULL};
    if (token) h[1] = auth;
    http("POST", "/api/v1/chat", h, body, strlen(body), r);
}

static void get_auth(const char *path, const char *token, http_resp *r)
{
    char auth[4096];
    snprintf(auth, sizeof auth, "Authorization: Bearer %s", token);
    const char *h[] = {auth, NULL};
    http("GET", path, h, NULL, 0, r);
}

static json_object *parse(const http_resp *r)
{
    json_object *o = json_tokener_parse(r->body.data);
    if (!o) fail_msg("HTTP %ld: body is not JSON: %.200s", r->status, r->body.data);
    return o;
}

static json_object *path_get(json_object *o, const char *a, const char *b)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, a, &v)) return NULL;
    if (b && !json_object_object_get_ex(v, b, &v)) return NULL;
    return v;
}

static const char *str_field(json_object *o, const char *key)
{
    json_object *v = path_get(o, key, NULL);
    return v && json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static bool header_has(const http_resp *r, const char *name_value)
{
    return chat_strcasestr(r->headers.data, name_value) != NULL;
}

/* The error shape every API error shares, and nothing internal in it. */
static void assert_error(const http_resp *r, long status, const char *code)
{
    if (r->status != status) fail_msg("expected %ld %s, got %ld: %.300s", status, code, r->status, r->body.data);
    assert_non_null(strstr(r->content_type, "application/json"));
    json_object *o = parse(r);
    const char *got = str_field(o, "code"), *msg = str_field(o, "error");
    assert_non_null(got);
    assert_non_null(msg);
    assert_true(msg[0] != '\0');
    if (strcmp(got, code)) fail_msg("expected code %s, got %s", code, got);
    static const char *leaks[] = {"mysql", "mariadb", "sql", "errno", ".c:", "socket"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(leaks); i++)
        assert_null(chat_strcasestr(r->body.data, leaks[i]));
    json_object_put(o);
}

static int group_setup(void **state)
{
    (void)state;
    if (e2e_stack_open(&E.st, "test_frontdoor")) return -1;
    snprintf(E.alice_id, sizeof E.alice_id, "e2e-alice-%ld-%d", (long)time(NULL), (int)getpid());
    snprintf(E.bob_id, sizeof E.bob_id, "e2e-bob-%ld-%d", (long)time(NULL), (int)getpid());
    time_t now = time(NULL);
    E.alice = chat_jwt_mint_hs256(E.st.secret, E.alice_id, "alice@example.com", "Alice", now, 3600);
    E.bob = chat_jwt_mint_hs256(E.st.secret, E.bob_id, "bob@example.com", "Bob", now, 3600);
    /* Expired well beyond any leeway the verifier allows (JWT_LEEWAY is at most 600 s). */
    E.expired = chat_jwt_mint_hs256(E.st.secret, E.alice_id, "alice@example.com", "Alice", now - 7200, 600);
    E.wrong_secret =
        chat_jwt_mint_hs256("this-is-not-the-secret-of-the-stack-0123456789", E.alice_id, NULL, NULL, now, 3600);
    if (!E.alice || !E.bob || !E.expired || !E.wrong_secret) return -1;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) return -1;
    E.curl = curl_easy_init();
    return E.curl ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    curl_easy_cleanup(E.curl);
    curl_global_cleanup();
    e2e_stack_close(&E.st);
    free(E.alice);
    free(E.bob);
    free(E.expired);
    free(E.wrong_secret);
    return 0;
}

/* Polls /health until it answers want (or timeout_ms passes); returns the last response. */
static void wait_health(long want, int timeout_ms, http_resp *r)
{
    int64_t end = chat_now_ms() + timeout_ms;
    for (;;) {
        http("GET", "/health", NULL, NULL, 0, r);
        if (r->status == want || chat_now_ms() > end) return;
        resp_free(r);
        usleep(200 * 1000);
    }
}

/* ---- health, static files ---- */

static void test_health_ok(void **state)
{
    (void)state;
    http_resp r;
    wait_health(200, 30000, &r);
    if (r.status != 200) fail_msg("/health: %ld %s", r.status, r.body.data);
    assert_non_null(strstr(r.content_type, "application/json"));
    json_object *o = parse(&r);
    assert_string_equal(str_field(o, "status"), "ok");
    assert_true(json_object_get_boolean(path_get(o, "database", "ok")));
    assert_true(json_object_get_boolean(path_get(o, "streamer", "ok")));
    assert_true(json_object_get_int(path_get(o, "workers", "live")) >= 1);
    assert_int_equal(json_object_array_length(path_get(o, "failing", NULL)), 0);
    json_object_put(o);
    resp_free(&r);

    http("HEAD", "/health", NULL, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    resp_free(&r);
}

static void test_test_page(void **state)
{
    (void)state;
    http_resp r;
    http("GET", "/ws/test", NULL, NULL, 0, &r);
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.content_type, "text/html"));
    const char *t = chat_strcasestr(r.body.data, "<title>");
    assert_non_null(t);
    const char *te = chat_strcasestr(t, "</title>");
    assert_non_null(te);
    char title[256];
    snprintf(title, sizeof title, "%.*s", (int)(te - t - 7), t + 7);
    assert_non_null(chat_strcasestr(title, "WebSocket"));
    assert_non_null(chat_strcasestr(r.body.data, "/chat-client.js"));
    assert_true(header_has(&r, "X-Content-Type-Options: nosniff"));
    assert_true(header_has(&r, "Content-Security-Policy: "));
    assert_true(header_has(&r, "connect-src 'self'"));
    resp_free(&r);

    http("GET", "/", NULL, NULL, 0, &r); /* the root sends people to the test page */
    assert_true(r.status == 301 || r.status == 302);
    assert_true(header_has(&r, "/ws/test"));
    resp_free(&r);
}

static void test_static_files(void **state)
{
    (void)state;
    static const struct {
        const char *path;
        long status;
        const char *type;
    } cases[] = {
        {"/chat-client.js", 200, "text/javascript"},
        {"/ws-test.js", 200, "text/javascript"},
        {"/ws-test.css", 200, "text/css"},
        {"/ws-test.html", 200, "text/html"},
        {"/no-such-file.js", 404, NULL},
        {"/.hidden", 403, NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        http_resp r;
        http("GET", cases[i].path, NULL, NULL, 0, &r);
        if (r.status != cases[i].status) fail_msg("%s: %ld", cases[i].path, r.status);
        if (cases[i].type) {
            assert_non_null(strstr(r.content_type, cases[i].type));
            assert_true(r.body.len > 0);
        }
        resp_free(&r);
    }
}

/* ---- REST chat ---- */

static char alice_session[ID_BUF];

static void check_success(const http_resp *r, char *session_out, size_t cap)
{
    if (r->status != 200) fail_msg("chat: %ld %s", r->status, r->body.data);
    assert_non_null(strstr(r->content_type, "application/json"));
    json_object *o = parse(r);
    const char *resp = str_field(o, "response"), *sid = str_field(o, "session_id");
    assert_non_null(resp);
    assert_true(strlen(resp) > 0);
    assert_non_null(sid);
    assert_true(chat_id_valid(sid));
    json_object *meta = path_get(o, "metadata", NULL);
    assert_non_null(meta);
    assert_non_null(str_field(meta, "agent"));
    json_object *conf = path_get(meta, "confidence", NULL);
    assert_non_null(conf);
    assert_true(json_object_is_type(conf, json_type_double) || json_object_is_type(conf, json_type_int));
    double c = json_object_get_double(conf);
    assert_true(c >= 0.0 && c <= 1.0);
    json_object *sources = path_get(meta, "context", "sources");
    assert_non_null(sources);
    assert_true(json_object_is_type(sources, json_type_array));
    if (session_out) snprintf(session_out, cap, "%s", sid);
    json_object_put(o);
}

/* Posts message in session sid with token, into r. */
static void post_in_session(const char *token, const char *content_type, const char *message, const char *sid,
                            http_resp *r)
{
    char body[512];
    snprintf(body, sizeof body, "{\"message\":\"%s\",\"session_id\":\"%s\"}", message, sid);
    post_chat(token, content_type, body, r);
}

/* check_success, and the answer is in session sid (the poster's own conversation of that id). */
static void check_same_session(const http_resp *r, const char *sid)
{
    char got[ID_BUF];
    check_success(r, got, sizeof got);
    assert_string_equal(got, sid);
}

/* GET of the session history at path with token, into r; fails the test (naming whose) unless a 200. */
static void get_history(const char *path, const char *token, const char *whose, http_resp *r)
{
    get_auth(path, token, r);
    if (r->status != 200) fail_msg("%shistory: %ld %s", whose, r->status, r->body.data);
}

static void test_chat_success_and_continue(void **state)
{
    (void)state;
    http_resp r;
    post_chat(E.alice, "application/json", "{\"message\":\"" QUESTION "\"}", &r);
    check_success(&r, alice_session, sizeof alice_session);
    json_object *o = parse(&r);
    assert_true(json_object_array_length(path_get(path_get(o, "metadata", NULL), "context", "sources")) >= 1);
    json_object_put(o);
    resp_free(&r);

    /* The same session, continued; a charset parameter is fine. */
    post_in_session(E.alice, "application/json; charset=utf-8", "And how much does it weigh?", alice_session, &r);
    check_same_session(&r, alice_session);
    resp_free(&r);
}

static void test_history(void **state)
{
    (void)state;
    assert_true(alice_session[0]); /* from test_chat_success_and_continue */
    char path[256];
    snprintf(path, sizeof path, "/api/v1/sessions/%s/messages", alice_session);
    http_resp r;
    get_history(path, E.alice, "", &r);
    json_object *o = parse(&r);
    assert_string_equal(str_field(o, "session_id"), alice_session);
    json_object *msgs = path_get(o, "messages", NULL);
    assert_non_null(msgs);
    assert_int_equal(json_object_array_length(msgs), 4);
    json_object *m0 = json_object_array_get_idx(msgs, 0), *m1 = json_object_array_get_idx(msgs, 1);
    assert_string_equal(str_field(m0, "role"), "user");
    assert_string_equal(str_field(m0, "content"), QUESTION);
    assert_string_equal(str_field(m1, "role"), "assistant");
    json_object_put(o);
    resp_free(&r);

    /* bob has no session of that id (test_session_of_another_user, later, gives him one): the answer is
     * the same as for an id nobody has */
    get_auth(path, E.bob, &r);
    assert_error(&r, 403, "SESSION_FORBIDDEN");
    assert_null(strstr(r.body.data, QUESTION));
    char foreign[1024];
    snprintf(foreign, sizeof foreign, "%s", r.body.data);
    resp_free(&r);

    /* an unknown session is answered exactly as another user's: the answer must not tell which ids exist */
    get_auth("/api/v1/sessions/no-such-session-e2e/messages", E.bob, &r);
    assert_error(&r, 403, "SESSION_FORBIDDEN");
    assert_string_equal(r.body.data, foreign);
    resp_free(&r);

    http("GET", path, NULL, NULL, 0, &r);
    assert_error(&r, 401, "AUTH_REQUIRED");
    resp_free(&r);
}

/* A REST answer says its turn is stored ("stored": true in its metadata), and the history has it, its
 * metadata without the flag. */
static void test_chat_says_stored(void **state)
{
    (void)state;
    http_resp r;
    post_chat(E.alice, "application/json", "{\"message\":\"How often should I change the oil?\"}", &r);
    check_success(&r, NULL, 0);
    json_object *o = parse(&r);
    json_object *stored = path_get(o, "metadata", "stored");
    assert_non_null(stored);
    assert_true(json_object_is_type(stored, json_type_boolean) && json_object_get_boolean(stored));
    char path[256];
    snprintf(path, sizeof path, "/api/v1/sessions/%s/messages", str_field(o, "session_id"));
    json_object_put(o);
    resp_free(&r);
    get_history(path, E.alice, "", &r);
    o = parse(&r);
    json_object *msgs = path_get(o, "messages", NULL);
    assert_int_equal(json_object_array_length(msgs), 2);
    json_object *meta = path_get(json_object_array_get_idx(msgs, 1), "metadata", NULL);
    assert_non_null(meta);
    assert_null(path_get(meta, "stored", NULL));
    json_object_put(o);
    resp_free(&r);
}

/* bob posting with alice's session id gets a normal answer, in a conversation of his own of that id:
 * nothing of alice's history reaches his context (his follow-up is not read as about her boat), the two
 * are stored apart, and each one's GET of the id's messages shows only his own. */
static void test_session_of_another_user(void **state)
{
    (void)state;
    assert_true(alice_session[0]);
    char path[256];
    snprintf(path, sizeof path, "/api/v1/sessions/%s/messages", alice_session);
    http_resp r;
    get_history(path, E.alice, "alice's ", &r);
    json_object *o = parse(&r);
    size_t alice_n = json_object_array_length(path_get(o, "messages", NULL));
    json_object_put(o);
    resp_free(&r);

    post_in_session(E.bob, "application/json", "And its fuel capacity?", alice_session, &r);
    check_same_session(&r, alice_session);
    o = parse(&r);
    const char *model = str_field(path_get(path_get(o, "metadata", NULL), "context", NULL), "model");
    if (model && !strcmp(model, "seawind-250")) fail_msg("bob's answer was read with alice's history: %s", r.body.data);
    json_object_put(o);
    resp_free(&r);

    /* bob's messages of the id: his turn only */
    get_history(path, E.bob, "bob's ", &r);
    assert_null(strstr(r.body.data, QUESTION));
    assert_null(strstr(r.body.data, "weigh"));
    o = parse(&r);
    json_object *msgs = path_get(o, "messages", NULL);
    assert_int_equal(json_object_array_length(msgs), 2);
    assert_string_equal(str_field(json_object_array_get_idx(msgs, 0), "content"), "And its fuel capacity?");
    json_object_put(o);
    resp_free(&r);
    /* alice's: unchanged, nothing of bob's */
    get_auth(path, E.alice, &r);
    assert_int_equal(r.status, 200);
    assert_null(strstr(r.body.data, "fuel capacity"));
    o = parse(&r);
    assert_int_equal(json_object_array_length(path_get(o, "messages", NULL)), alice_n);
    json_object_put(o);
    resp_free(&r);
    /* and alice's own follow-up is still read with her history */
    post_in_session(E.alice, "application/json", "And its fuel capacity?", alice_session, &r);
    check_success(&r, NULL, 0);
    o = parse(&r);
    model = str_field(path_get(path_get(o, "metadata", NULL), "context", NULL), "model");
    assert_non_null(model);
    assert_string_equal(model, "seawind-250");
    json_object_put(o);
    resp_free(&r);
}

static void test_auth_errors(void **state)
{
    (void)state;
    const char *body = "{\"message\":\"hello\"}";
    static const struct {
        const char *authorization; /* full header line, NULL = none */
        const char *code;
    } cases[] = {
        {NULL, "AUTH_REQUIRED"},
        {"Authorization: Basic YWxpY2U6cGFzcw==", "AUTH_REQUIRED"},
        {"Authorization: Bearer ", "AUTH_REQUIRED"},
        {"Authorization: Bearer not-a-jwt", "INVALID_TOKEN"},
        {"Authorization: Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "INVALID_TOKEN"},
        {"WRONG", "INVALID_TOKEN"},
        {"EXPIRED", "TOKEN_EXPIRED"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char line[4096];
        const char *a = cases[i].authorization;
        if (a && !strcmp(a, "WRONG"))
            snprintf(line, sizeof line, "Authorization: Bearer %s", E.wrong_secret);
        else if (a && !strcmp(a, "EXPIRED"))
            snprintf(line, sizeof line, "Authorization: Bearer %s", E.expired);
        else if (a)
            snprintf(line, sizeof line, "%s", a);
        const char *h[] = {"Content-Type: application/json", a ? line : NULL, NULL};
        http_resp r;
        http("POST", "/api/v1/chat", h, body, strlen(body), &r);
        assert_error(&r, 401, cases[i].code);
        assert_true(header_has(&r, "WWW-Authenticate: Bearer"));
        resp_free(&r);
    }
}

static void test_request_errors(void **state)
{
    (void)state;
    char *big = malloc(200 * 1024 + 64), *over = malloc(70 * 1024 + 64), *longmsg = malloc(20000);
    assert_non_null(big);
    assert_non_null(over);
    assert_non_null(longmsg);
    snprintf(big, 64, "{\"message\":\"");
    memset(big + strlen(big), 'a', 200 * 1024);
    strcpy(big + 12 + 200 * 1024, "\"}");
    snprintf(over, 64, "{\"message\":\"");
    memset(over + 12, 'a', 70 * 1024);
    strcpy(over + 12 + 70 * 1024, "\"}");
    snprintf(longmsg, 64, "{\"message\":\"");
    memset(longmsg + 12, 'b', 9000); /* over CHAT_MAX_MESSAGE_BYTES (8192), under the body limit */
    strcpy(longmsg + 12 + 9000, "\"}");

    static const struct {
        const char *name, *content_type;
        int body; /* index into bodies */
        long status;
        const char *code;
    } cases[] = {
        {"empty message", "application/json", 0, 400, "EMPTY_MESSAGE"},
        {"blank message", "application/json", 1, 400, "EMPTY_MESSAGE"},
        {"no message", "application/json", 2, 400, "EMPTY_MESSAGE"},
        {"invalid JSON", "application/json", 3, 400, "INVALID_JSON"},
        {"empty body", "application/json", 4, 400, "INVALID_JSON"},
        {"array body", "application/json", 5, 400, "INVALID_REQUEST"},
        {"message not a string", "application/json", 6, 400, "INVALID_REQUEST"},
        {"bad session id", "application/json", 7, 400, "INVALID_REQUEST"},
        {"bad customer id", "application/json", 8, 400, "INVALID_REQUEST"},
        {"text/plain", "text/plain", 9, 415, "UNSUPPORTED_MEDIA_TYPE"},
        {"form", "application/x-www-form-urlencoded", 9, 415, "UNSUPPORTED_MEDIA_TYPE"},
        {"latin-1 charset", "application/json; charset=iso-8859-1", 9, 415, "UNSUPPORTED_MEDIA_TYPE"},
        {"70 KB body (responder limit)", "application/json", 10, 413, "PAYLOAD_TOO_LARGE"},
        {"200 KB body (lighttpd limit)", "application/json", 11, 413, "PAYLOAD_TOO_LARGE"},
        {"message too long", "application/json", 12, 400, "MESSAGE_TOO_LONG"},
        {"someone else's customer", "application/json", 13, 403, "CUSTOMER_FORBIDDEN"},
        {"only Unicode spaces", "application/json", 14, 400, "EMPTY_MESSAGE"},
    };
    const char *bodies[] = {"{\"message\":\"\"}",
                            "{\"message\":\"  \\n\\t \"}",
                            "{\"session_id\":\"abc\"}",
                            "{\"message\": \"unterminated",
                            "",
                            "[\"message\"]",
                            "{\"message\": 42}",
                            "{\"message\":\"hi\",\"session_id\":\"has space\"}",
                            "{\"message\":\"hi\",\"customer_id\":\"../../etc\"}",
                            "{\"message\":\"hi\"}",
                            over,
                            big,
                            longmsg,
                            "{\"message\":\"When is my next service?\",\"customer_id\":\"cust-1001\"}",
                            "{\"message\":\"\\u00a0\\u3000 \"}"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        http_resp r;
        post_chat(E.alice, cases[i].content_type, bodies[cases[i].body], &r);
        if (r.status != cases[i].status) fail_msg("%s: %ld %.200s", cases[i].name, r.status, r.body.data);
        assert_error(&r, cases[i].status, cases[i].code);
        resp_free(&r);
    }
    free(big);
    free(over);
    free(longmsg);
}

/* REST and the WebSocket refuse a message with the same code and the same words, in the same order
 * (one validator, chat_proto_message_fields). Each body is sent as REST's body and, with a "type", as a
 * WebSocket message frame through the proxy. */
static void test_message_refusals_match_websocket(void **state)
{
    (void)state;
    char *longmsg = malloc(9100);
    assert_non_null(longmsg);
    strcpy(longmsg, "{\"message\":\"");
    memset(longmsg + 12, 'b', 9000); /* over CHAT_MAX_MESSAGE_BYTES (8192) */
    strcpy(longmsg + 12 + 9000, "\"}");
    const struct {
        const char *body, *code, *error;
    } cases[] = {
        {"{\"message\": 42}", "INVALID_REQUEST", "Message must be a string"},
        {"{\"message\":\"a\\u0000b\"}", "INVALID_REQUEST", "Message must not contain NUL"},
        {"{\"message\":\" \\n \",\"session_id\":\"has space\"}", "EMPTY_MESSAGE", "Message cannot be empty"},
        {longmsg, "MESSAGE_TOO_LONG", "Message too long (maximum 8192 bytes)"},
        {"{\"message\":\"hi\",\"session_id\":\"has space\",\"customer_id\":\"../x\"}", "INVALID_REQUEST",
         "Invalid session_id"},
        {"{\"message\":\"hi\",\"customer_id\":\"../x\"}", "INVALID_REQUEST", "Invalid customer_id"},
        {"{\"message\":\"hi\",\"partial\":\"yes\"}", "INVALID_REQUEST", "partial must be a boolean"},
    };
    char err[256];
    chat_wsc *c = e2e_stack_ws(&E.st, E.alice, NULL, err, sizeof err);
    if (!c) fail_msg("connect through lighttpd: %s", err);
    json_object *o = NULL;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        http_resp r;
        post_chat(E.alice, "application/json", cases[i].body, &r);
        assert_error(&r, 400, cases[i].code);
        o = parse(&r);
        if (strcmp(str_field(o, "error"), cases[i].error))
            fail_msg("case %zu: REST says '%s', want '%s'", i, str_field(o, "error"), cases[i].error);
        json_object_put(o);
        resp_free(&r);

        chat_buf f;
        chat_buf_init(&f);
        chat_buf_printf(&f, "{\"type\":\"message\",%s", cases[i].body + 1);
        assert_int_equal(chat_wsc_send_text(c, f.data, f.len), 0);
        chat_buf_free(&f);
        assert_int_equal(chat_wsc_recv_type(c, 5000, "error", &o), 0);
        assert_string_equal(str_field(o, "code"), cases[i].code);
        if (strcmp(str_field(o, "error"), cases[i].error))
            fail_msg("case %zu: the WebSocket says '%s', want '%s'", i, str_field(o, "error"), cases[i].error);
        json_object_put(o);
    }
    chat_wsc_close(c, 1000, NULL);
    free(longmsg);
}

static void test_routing_errors(void **state)
{
    (void)state;
    static const struct {
        const char *method, *path;
        long status;
        const char *code, *allow;
    } cases[] = {
        {"GET", "/api/v1/chat", 405, "METHOD_NOT_ALLOWED", "Allow: POST"},
        {"PUT", "/api/v1/chat", 405, "METHOD_NOT_ALLOWED", "Allow: POST"},
        {"DELETE", "/health", 405, "METHOD_NOT_ALLOWED", "Allow: GET, HEAD"},
        {"POST", "/api/v1/demo-token", 405, "METHOD_NOT_ALLOWED", "Allow: GET, HEAD"},
        {"GET", "/api/v1/nothing-here", 404, "NOT_FOUND", NULL},
        {"GET", "/api/v1/chat/extra", 404, "NOT_FOUND", NULL},
        {"GET", "/api/v2/chat", 404, "NOT_FOUND", NULL},
        /* Not configured on the test stack (CHAT_DEMO=0): the endpoint does not exist. */
        {"GET", "/api/v1/demo-token", 404, "NOT_FOUND", NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        http_resp r;
        http(cases[i].method, cases[i].path, NULL, cases[i].method[0] == 'P' ? "{}" : NULL,
             cases[i].method[0] == 'P' ? 2 : 0, &r);
        if (r.status != cases[i].status) fail_msg("%s %s: %ld", cases[i].method, cases[i].path, r.status);
        assert_error(&r, cases[i].status, cases[i].code);
        if (cases[i].allow && !header_has(&r, cases[i].allow))
            fail_msg("%s %s: no \"%s\" header", cases[i].method, cases[i].path, cases[i].allow);
        resp_free(&r);
    }
}

/* ---- WebSocket through the proxy, and the access log ---- */

static void test_websocket_chat(void **state)
{
    (void)state;
    char url[4096], err[256];
    snprintf(url, sizeof url, "%s/ws/chat?token=%s", E.st.ws_base, E.alice);
    int http_status = 0;
    chat_wsc *c = chat_wsc_connect(url, NULL, &http_status, err, sizeof err);
    if (!c) fail_msg("connect through lighttpd: %s (HTTP %d)", err, http_status);
    assert_int_equal(http_status, 101);

    json_object *o = NULL;
    int rc = chat_wsc_recv_type(c, 5000, "auth_success", &o);
    if (rc) fail_msg("no auth_success for a query-string token (%d)", rc);
    assert_string_equal(str_field(path_get(o, "user", NULL), "id"), E.alice_id);
    json_object_put(o);

    const char *msg = "{\"type\":\"message\",\"message\":\"" QUESTION "\"}";
    assert_int_equal(chat_wsc_send_text(c, msg, strlen(msg)), 0);
    chat_buf tokens;
    chat_buf_init(&tokens);
    int progress = 0, ntokens = 0;
    bool generating = false;
    json_object *complete = NULL;
    int64_t end = chat_now_ms() + 30000;
    while (!complete) {
        int left = (int)(end - chat_now_ms());
        if (left <= 0) fail_msg("no complete within 30 s (%d progress, %d tokens)", progress, ntokens);
        rc = chat_wsc_recv_json(c, left, &o);
        if (rc) fail_msg("recv: %d (close %d)", rc, chat_wsc_close_code(c));
        const char *type = str_field(o, "type");
        assert_non_null(type);
        if (!strcmp(type, "progress")) {
            progress++;
            const char *step = str_field(o, "step");
            if (step && !strcmp(step, "generating")) generating = true;
        } else if (!strcmp(type, "token")) {
            ntokens++;
            const char *t = str_field(o, "token");
            assert_non_null(t);
            chat_buf_puts(&tokens, t);
        } else if (!strcmp(type, "complete")) {
            complete = o;
            o = NULL;
        } else if (!strcmp(type, "error")) {
            fail_msg("error event: %s", json_object_to_json_string(o));
        }
        json_object_put(o);
    }
    assert_true(progress >= 1);
    assert_true(generating);
    assert_true(ntokens >= 1);
    const char *response = str_field(complete, "response");
    assert_non_null(response);
    assert_string_equal(response, tokens.data);
    assert_true(chat_id_valid(str_field(complete, "session_id")));
    assert_non_null(str_field(path_get(complete, "metadata", NULL), "agent"));
    json_object_put(complete);
    chat_buf_free(&tokens);
    chat_wsc_close(c, 1000, "bye");

    /* The auth message path works through the proxy as well. */
    snprintf(url, sizeof url, "%s/ws/chat", E.st.ws_base);
    c = chat_wsc_connect(url, NULL, &http_status, err, sizeof err);
    if (!c) fail_msg("connect: %s", err);
    char auth[4096];
    snprintf(auth, sizeof auth, "{\"type\":\"auth\",\"token\":\"%s\"}", E.bob);
    assert_int_equal(chat_wsc_send_text(c, auth, strlen(auth)), 0);
    rc = chat_wsc_recv_type(c, 5000, "auth_success", &o);
    assert_int_equal(rc, 0);
    json_object_put(o);
    chat_wsc_close(c, 1000, NULL);
}

/* The Origin check through lighttpd's proxy: the page's own origin (the Host lighttpd passes on is the
 * client's), clients without an Origin and allowlisted origins (tests/run.sh lists the https origins
 * under *.allowed.example in CHAT_ALLOWED_ORIGINS) get a socket; any other origin gets 403. */
static void test_websocket_origin(void **state)
{
    (void)state;
    char own[160], other_port[160], lookalike[160];
    snprintf(own, sizeof own, "%s", E.st.base);
    snprintf(other_port, sizeof other_port, "http://127.0.0.1:%d", atoi(strrchr(E.st.base, ':') + 1) + 1);
    snprintf(lookalike, sizeof lookalike, "http://127.0.0.1.evil:%s", strrchr(E.st.base, ':') + 1);
    const struct {
        const char *origin;
        int status;
    } cases[] = {
        {own, 101},
        {NULL, 101},
        {"https://app.allowed.example", 101},
        {"http://evil.example", 403},
        {other_port, 403},
        {lookalike, 403},
        {"https://allowed.example", 403}, /* the glob's domain itself is not listed */
        {"https://app.allowed.example.evil", 403},
        {"null", 403},
    };
    char url[4096], err[256];
    snprintf(url, sizeof url, "%s/ws/chat?token=%s", E.st.ws_base, E.alice);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_wsc_opts o = {.origin = cases[i].origin, .timeout_ms = 5000};
        int status = 0;
        chat_wsc *c = chat_wsc_connect(url, &o, &status, err, sizeof err);
        const char *name = cases[i].origin ? cases[i].origin : "(no Origin)";
        if (status != cases[i].status) fail_msg("Origin %s: HTTP %d (%s), want %d", name, status, err, cases[i].status);
        if (cases[i].status == 101) {
            json_object *j = NULL;
            if (chat_wsc_recv_type(c, 5000, "auth_success", &j)) fail_msg("Origin %s: no auth_success", name);
            json_object_put(j);
        } else {
            assert_null(c);
        }
        chat_wsc_close(c, 1000, NULL);
    }
}

static bool file_has(const char *path, const char *needle)
{
    char *s = testutil_read_file(path, NULL);
    bool has = s && strstr(s, needle);
    free(s);
    return has;
}

static void test_access_log_has_no_token(void **state)
{
    (void)state;
    char log[1100], errlog[1100];
    snprintf(log, sizeof log, "%s/log/access.log", E.st.var);
    snprintf(errlog, sizeof errlog, "%s/log/lighttpd-error.log", E.st.var);
    /* A WebSocket is logged when it ends: wait for test_websocket_chat's connection to show up. */
    int64_t end = chat_now_ms() + 10000;
    while (!file_has(log, "\"GET /ws/chat HTTP/1.1\" 101") && chat_now_ms() < end)
        usleep(200 * 1000);
    if (!file_has(log, "\"GET /ws/chat HTTP/1.1\" 101")) fail_msg("%s has no /ws/chat 101 line", log);
    assert_false(file_has(log, "token="));
    assert_false(file_has(log, E.alice));
    assert_false(file_has(errlog, E.alice));
}

/* ---- database down: 503, /health degraded, and back ---- */

static int mariadb(const char *action)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cd '%s' && bash deploy/mariadb.sh %s >/dev/null 2>&1", testutil_root(), action);
    return system(cmd);
}

static void test_database_down(void **state)
{
    (void)state;
    assert_int_equal(mariadb("stop"), 0);

    http_resp r;
    post_chat(E.alice, "application/json", "{\"message\":\"" QUESTION "\"}", &r);
    int st = (int)r.status;
    if (st != 503) {
        mariadb("start");
        fail_msg("chat with the database down: %d %s", st, r.body.data);
    }
    assert_error(&r, 503, "SERVICE_UNAVAILABLE");
    assert_true(header_has(&r, "Retry-After:"));
    resp_free(&r);

    get_auth("/api/v1/sessions/anything/messages", E.alice, &r);
    assert_error(&r, 503, "SERVICE_UNAVAILABLE");
    resp_free(&r);

    wait_health(503, 5000, &r); /* the per-process cache holds an answer for up to 1 s */
    st = (int)r.status;
    json_object *o = json_tokener_parse(r.body.data);
    if (st != 503 || !o) {
        mariadb("start");
        fail_msg("/health with the database down: %d %s", st, r.body.data);
    }
    assert_string_equal(str_field(o, "status"), "degraded");
    assert_false(json_object_get_boolean(path_get(o, "database", "ok")));
    assert_non_null(strstr(json_object_to_json_string(path_get(o, "failing", NULL)), "database"));
    json_object_put(o);
    resp_free(&r);

    assert_int_equal(mariadb("start"), 0);
    wait_health(200, 30000, &r);
    if (r.status != 200) fail_msg("/health after the restart: %ld %s", r.status, r.body.data);
    resp_free(&r);
    post_chat(E.alice, "application/json", "{\"message\":\"" QUESTION "\"}", &r);
    check_success(&r, NULL, 0);
    resp_free(&r);
}

TESTUTIL_MAIN(group_setup, group_teardown,
              cmocka_unit_test(test_health_ok),
              cmocka_unit_test(test_test_page),
              cmocka_unit_test(test_static_files),
              cmocka_unit_test(test_chat_success_and_continue),
              cmocka_unit_test(test_history),
              cmocka_unit_test(test_chat_says_stored),
              cmocka_unit_test(test_session_of_another_user),
              cmocka_unit_test(test_auth_errors),
              cmocka_unit_test(test_request_errors),
              cmocka_unit_test(test_message_refusals_match_websocket),
              cmocka_unit_test(test_routing_errors),
              cmocka_unit_test(test_websocket_chat),
              cmocka_unit_test(test_websocket_origin),
              cmocka_unit_test(test_access_log_has_no_token),
              cmocka_unit_test(test_database_down))
