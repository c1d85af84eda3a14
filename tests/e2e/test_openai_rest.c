/* End-to-end tests of the REST API's streaming doors through lighttpd and the FastCGI pool: the
 * OpenAI-compatible API (/v1/models, /v1/chat/completions whole and streamed), how a stream really
 * streams (chunks spread over the paced answer) and what a client that disconnects does to its
 * generation, the protocol's events as SSE on /api/v1/chat, and /health/live and /health/ready.
 *
 * Assumes the stack tests/run.sh starts (CHAT_TOKEN_DELAY_MS=5: the offline provider paces its tokens)
 * and mints tokens with its JWT secret ($CHAT_VAR/jwt-secret or JWT_SECRET). HTTP goes through libcurl;
 * streams are read with the library's own SSE parser (chat_sse), every event stamped with its arrival
 * time. Users are unique per run. The database-down test runs last: it stops the private MariaDB
 * (deploy/mariadb.sh) and starts it again. */
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
#include "chat_sse.h"
#include "chat_util.h"
#include "e2eutil.h"
#include "testutil.h"

#define Q_SHORT "What is the engine power of the Seawind 250?"
#define Q_LONG "What does fault code E42 mean and how do I fix it?" /* ~100 tokens: half a second paced */
#define TOKEN_DELAY_MS 5                                          /* tests/run.sh's CHAT_TOKEN_DELAY_MS */
#define MODEL "seawind-assistant"

static struct {
    e2e_stack st;
    char *alice, *bob, *wrong_secret;
    CURL *curl;
    char *short_answer;     /* the whole answer to Q_SHORT (test_completion_whole) */
    char *long_answer;      /* the streamed answer to Q_LONG (test_stream_is_paced) */
    char alice_session[65]; /* a session of alice's */
} E;

/* ---- HTTP with SSE ---- */

typedef struct event {
    char name[32];
    char *data;
    long long at_us; /* arrival, from the request's start */
    int delivery;    /* which write callback brought it (events that came together share one) */
} event;

typedef struct reply {
    long status;
    char content_type[128];
    chat_buf body, headers;
    event *ev;
    size_t n, cap;
    chat_sse *sse;
    long long t0_us;
    int deliveries;
    size_t abort_after; /* events; 0 = read to the end */
    CURLcode rc;
} reply;

static void reply_free(reply *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->ev[i].data);
    free(r->ev);
    chat_sse_free(r->sse);
    chat_buf_free(&r->body);
    chat_buf_free(&r->headers);
    memset(r, 0, sizeof *r);
}

static int on_event(void *ud, const char *name, const char *data, size_t len)
{
    reply *r = ud;
    if (chat_array_reserve(&r->ev, &r->cap, r->n, sizeof *r->ev)) return 1;
    event *e = &r->ev[r->n++];
    snprintf(e->name, sizeof e->name, "%s", name);
    e->data = strndup(data, len);
    e->at_us = chat_now_us() - r->t0_us;
    e->delivery = r->deliveries;
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *ud)
{
    reply *r = ud;
    size_t n = size * nmemb;
    r->deliveries++;
    if (chat_buf_append(&r->body, data, n) || chat_sse_feed(r->sse, data, n)) return 0;
    return r->abort_after && r->n >= r->abort_after ? 0 : n; /* 0: curl drops the connection */
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *ud)
{
    return chat_buf_append(ud, data, size * nmemb) ? 0 : size * nmemb;
}

typedef struct request {
    const char *method, *path;
    const char *token;        /* Bearer token, NULL: none */
    const char *content_type; /* NULL: application/json when there is a body */
    const char *accept;       /* NULL: none */
    const char *body;         /* NULL: none */
    size_t abort_after;
} request;

static void http(const request *q, reply *r)
{
    memset(r, 0, sizeof *r);
    chat_buf_init(&r->body);
    chat_buf_init(&r->headers);
    r->sse = chat_sse_new(on_event, r, 4 << 20);
    r->abort_after = q->abort_after;
    char url[1024], auth[4096], ct[256], acc[256];
    snprintf(url, sizeof url, "%s%s", E.st.base, q->path);
    struct curl_slist *hl = curl_slist_append(NULL, "Expect:");
    if (q->token) snprintf(auth, sizeof auth, "Authorization: Bearer %s", q->token), hl = curl_slist_append(hl, auth);
    if (q->body) {
        snprintf(ct, sizeof ct, "Content-Type: %s", q->content_type ? q->content_type : "application/json");
        hl = curl_slist_append(hl, ct);
    }
    if (q->accept) snprintf(acc, sizeof acc, "Accept: %s", q->accept), hl = curl_slist_append(hl, acc);
    CURL *c = E.curl;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, &r->headers);
    if (!strcmp(q->method, "HEAD"))
        curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
    else
        curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, q->method);
    if (q->body) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, q->body);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)strlen(q->body));
    }
    r->t0_us = chat_now_us();
    r->rc = curl_easy_perform(c);
    curl_slist_free_all(hl);
    if (r->rc != CURLE_OK && !(q->abort_after && r->rc == CURLE_WRITE_ERROR))
        fail_msg("%s %s: %s", q->method, q->path, curl_easy_strerror(r->rc));
    e2e_curl_result(c, &r->status, r->content_type, sizeof r->content_type);
    if (!r->body.data) chat_buf_puts(&r->body, "");
    if (!r->headers.data) chat_buf_puts(&r->headers, "");
}

/* POST /v1/chat/completions as alice: the model, one user message and extra (more fields, starting with
 * a comma, or ""); abort_after as in request. */
static void ask(const char *question, const char *extra, size_t abort_after, reply *r)
{
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_printf(&b, "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"%s\"}]%s}", question,
                    extra);
    http(&(request){.method = "POST",
                    .path = "/v1/chat/completions",
                    .token = E.alice,
                    .body = b.data,
                    .abort_after = abort_after},
         r);
    chat_buf_free(&b);
}

/* ---- JSON ---- */

static json_object *parse(const char *text)
{
    json_object *o = json_tokener_parse(text);
    if (!o) fail_msg("not JSON: %.300s", text);
    return o;
}

/* The value at a dotted path ("choices.0.delta.content"; numbers index arrays), NULL when absent. */
static json_object *at(json_object *o, const char *path)
{
    char part[64];
    while (o && *path) {
        size_t n = strcspn(path, ".");
        snprintf(part, sizeof part, "%.*s", (int)n, path);
        path += n + (path[n] == '.');
        if (json_object_is_type(o, json_type_array)) {
            o = json_object_array_get_idx(o, (size_t)atoi(part));
        } else if (!json_object_object_get_ex(o, part, &o)) {
            return NULL;
        }
    }
    return o;
}

static const char *str_at(json_object *o, const char *path)
{
    json_object *v = at(o, path);
    return json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
}

static bool has_key(json_object *o, const char *key)
{
    return json_object_object_get_ex(o, key, NULL);
}

/* OpenAI's error shape with this status, type, code and param (NULL: JSON null). */
static void assert_oai_error(const reply *r, long status, const char *type, const char *code, const char *param)
{
    if (r->status != status) fail_msg("want %ld %s, got %ld: %.300s", status, code, r->status, r->body.data);
    assert_non_null(strstr(r->content_type, "application/json"));
    json_object *o = parse(r->body.data);
    const char *msg = str_at(o, "error.message");
    assert_non_null(msg);
    assert_true(msg[0] != '\0');
    if (strcmp(str_at(o, "error.type"), type)) fail_msg("type %s, want %s", str_at(o, "error.type"), type);
    if (strcmp(str_at(o, "error.code"), code)) fail_msg("code %s, want %s", str_at(o, "error.code"), code);
    json_object *p = NULL;
    assert_true(json_object_object_get_ex(at(o, "error"), "param", &p));
    if (param)
        assert_string_equal(json_object_get_string(p), param);
    else
        assert_null(p);
    json_object_put(o);
}

/* ---- set-up ---- */

static int group_setup(void **state)
{
    (void)state;
    if (e2e_stack_open(&E.st, "test_openai_rest")) return -1;
    /* Users unique to this run; a token signed with another secret. */
    const struct {
        char **token;
        const char *secret, *who, *email, *name;
    } users[] = {
        {&E.alice, E.st.secret, "alice", "alice@example.com", "Alice"},
        {&E.bob, E.st.secret, "bob", "bob@example.com", "Bob"},
        {&E.wrong_secret, "not-the-secret-of-this-stack-0123456789abcdef", "alice", NULL, NULL},
    };
    time_t now = time(NULL);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(users); i++) {
        char sub[80];
        snprintf(sub, sizeof sub, "oai-%s-%ld-%d", users[i].who, (long)now, (int)getpid());
        *users[i].token = chat_jwt_mint_hs256(users[i].secret, sub, users[i].email, users[i].name, now, 3600);
        if (!*users[i].token) return -1;
    }
    E.curl = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? curl_easy_init() : NULL;
    return E.curl ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    e2e_stack_close(&E.st);
    char *owned[] = {E.alice, E.bob, E.wrong_secret, E.short_answer, E.long_answer};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(owned); i++)
        free(owned[i]);
    curl_easy_cleanup(E.curl);
    curl_global_cleanup();
    return 0;
}

/* ---- /v1/models ---- */

static void test_models(void **state)
{
    (void)state;
    reply r;
    http(&(request){.method = "GET", .path = "/v1/models", .token = E.alice}, &r);
    if (r.status != 200) fail_msg("/v1/models: %ld %s", r.status, r.body.data);
    json_object *o = parse(r.body.data);
    assert_string_equal(str_at(o, "object"), "list");
    assert_int_equal(json_object_array_length(at(o, "data")), 1);
    assert_string_equal(str_at(o, "data.0.id"), MODEL);
    assert_string_equal(str_at(o, "data.0.object"), "model");
    assert_non_null(str_at(o, "data.0.owned_by"));
    assert_true(json_object_is_type(at(o, "data.0.created"), json_type_int));
    json_object_put(o);
    reply_free(&r);

    http(&(request){.method = "GET", .path = "/v1/models/" MODEL, .token = E.alice}, &r);
    assert_int_equal(r.status, 200);
    o = parse(r.body.data);
    assert_string_equal(str_at(o, "id"), MODEL);
    json_object_put(o);
    reply_free(&r);

    static const struct {
        const char *method, *path;
        bool auth;
        long status;
        const char *type, *code, *param;
    } cases[] = {
        {"GET", "/v1/models", false, 401, "authentication_error", "AUTH_REQUIRED", NULL},
        {"GET", "/v1/models/gpt-4o", true, 404, "not_found_error", "NOT_FOUND", "model"},
        {"POST", "/v1/models", true, 405, "invalid_request_error", "METHOD_NOT_ALLOWED", NULL},
        {"GET", "/v1/embeddings", true, 404, "not_found_error", "NOT_FOUND", NULL},
        {"GET", "/v1/chat/completions", true, 405, "invalid_request_error", "METHOD_NOT_ALLOWED", NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        bool post = !strcmp(cases[i].method, "POST"); /* lighttpd wants a body (or a length) */
        http(&(request){.method = cases[i].method,
                        .path = cases[i].path,
                        .token = cases[i].auth ? E.alice : NULL,
                        .body = post ? "{}" : NULL},
             &r);
        assert_oai_error(&r, cases[i].status, cases[i].type, cases[i].code, cases[i].param);
        reply_free(&r);
    }
}

/* ---- /v1/chat/completions, whole ---- */

/* The shape of a chat.completion, and the assistant's metadata in the extension. Returns the session id
 * (static buffer). */
static const char *check_completion(json_object *o)
{
    static char sid[65];
    assert_true(!strncmp(str_at(o, "id"), "chatcmpl-", 9));
    assert_string_equal(str_at(o, "object"), "chat.completion");
    assert_string_equal(str_at(o, "model"), MODEL);
    long long created = json_object_get_int64(at(o, "created"));
    assert_true(llabs(created - (long long)time(NULL)) < 60);
    assert_int_equal(json_object_array_length(at(o, "choices")), 1);
    assert_int_equal(json_object_get_int(at(o, "choices.0.index")), 0);
    assert_string_equal(str_at(o, "choices.0.message.role"), "assistant");
    assert_true(strlen(str_at(o, "choices.0.message.content")) > 0);
    assert_string_equal(str_at(o, "choices.0.finish_reason"), "stop");
    int in = json_object_get_int(at(o, "usage.prompt_tokens")),
        out = json_object_get_int(at(o, "usage.completion_tokens"));
    assert_true(in > 0 && out > 0);
    assert_int_equal(json_object_get_int(at(o, "usage.total_tokens")), in + out);
    assert_non_null(str_at(o, "seawind.agent"));
    double conf = json_object_get_double(at(o, "seawind.confidence"));
    assert_true(conf >= 0.0 && conf <= 1.0);
    assert_true(json_object_array_length(at(o, "seawind.context.sources")) >= 1);
    const char *s = str_at(o, "seawind.session_id");
    assert_non_null(s);
    assert_true(chat_id_valid(s));
    snprintf(sid, sizeof sid, "%s", s);
    return sid;
}

static int history_count(const char *session_id, const char *token, json_object **out)
{
    char path[256];
    snprintf(path, sizeof path, "/api/v1/sessions/%s/messages", session_id);
    reply r;
    http(&(request){.method = "GET", .path = path, .token = token}, &r);
    int n = -1;
    if (r.status == 200) {
        json_object *o = parse(r.body.data);
        n = (int)json_object_array_length(at(o, "messages"));
        if (out)
            *out = o;
        else
            json_object_put(o);
    }
    reply_free(&r);
    return n;
}

static void test_completion_whole(void **state)
{
    (void)state;
    reply r;
    ask(Q_SHORT, "", 0, &r);
    if (r.status != 200) fail_msg("completion: %ld %s", r.status, r.body.data);
    assert_non_null(strstr(r.content_type, "application/json"));
    json_object *o = parse(r.body.data);
    snprintf(E.alice_session, sizeof E.alice_session, "%s", check_completion(o));
    E.short_answer = strdup(str_at(o, "choices.0.message.content"));
    assert_true(json_object_array_length(at(o, "seawind.context.sources")) >= 1);
    json_object_put(o);
    reply_free(&r);

    /* The session_id extension continues the stored conversation. */
    char extra[160];
    snprintf(extra, sizeof extra, ",\"session_id\":\"%s\",\"user\":\"ignored\"", E.alice_session);
    ask("And how much does it weigh?", extra, 0, &r);
    if (r.status != 200) fail_msg("follow-up: %ld %s", r.status, r.body.data);
    o = parse(r.body.data);
    assert_string_equal(check_completion(o), E.alice_session);
    json_object_put(o);
    reply_free(&r);
    assert_int_equal(history_count(E.alice_session, E.alice, NULL), 4);

    /* Earlier messages are not the memory: without session_id the question starts a new session. */
    const char *conv =
        "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"" Q_SHORT "\"},{\"role\":\"assistant\",\"content\":\"250 hp\"},"
        "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"" Q_SHORT "\"}]}]}";
    http(&(request){.method = "POST", .path = "/v1/chat/completions", .token = E.alice, .body = conv}, &r);
    if (r.status != 200) fail_msg("conversation: %ld %s", r.status, r.body.data);
    o = parse(r.body.data);
    const char *sid = check_completion(o);
    assert_string_not_equal(sid, E.alice_session);
    assert_string_equal(str_at(o, "choices.0.message.content"), E.short_answer); /* the last user message */
    assert_int_equal(history_count(sid, E.alice, NULL), 2);
    json_object_put(o);
    reply_free(&r);
}

static void test_completion_errors(void **state)
{
    (void)state;
    /* Over lighttpd's limit for /v1/ (its own 413, re-entered as JSON), and a long conversation under it. */
    size_t big_len = 2 << 20, long_len = 600 << 10;
    char *big = malloc(big_len + 64), *longconv = malloc(long_len + 256);
    assert_non_null(big);
    assert_non_null(longconv);
    int k = snprintf(big, 64, "{\"model\":\"" MODEL "\",\"x\":\"");
    memset(big + k, 'a', big_len), strcpy(big + k + big_len, "\"}");
    k = snprintf(longconv, 256, "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"assistant\",\"content\":\"");
    memset(longconv + k, 'b', long_len);
    strcpy(longconv + k + long_len, "\"},{\"role\":\"user\",\"content\":\"" Q_SHORT "\"}]}");

    const struct {
        const char *name, *token, *content_type, *body;
        long status;
        const char *type, *code, *param;
    } cases[] = {
        {"no key", NULL, NULL, "{}", 401, "authentication_error", "AUTH_REQUIRED", NULL},
        {"bad key", "not-a-jwt", NULL, "{}", 401, "authentication_error", "INVALID_TOKEN", NULL},
        {"key of another stack", E.wrong_secret, NULL, "{}", 401, "authentication_error", "INVALID_TOKEN", NULL},
        {"not JSON", E.alice, NULL, "{\"model\":", 400, "invalid_request_error", "INVALID_JSON", NULL},
        {"no messages", E.alice, NULL, "{\"model\":\"" MODEL "\"}", 400, "invalid_request_error", "INVALID_REQUEST",
         "messages"},
        {"another model", E.alice, NULL, "{\"model\":\"gpt-4o\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}",
         404, "not_found_error", "NOT_FOUND", "model"},
        {"blank question", E.alice, NULL,
         "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\" \"}]}", 400, "invalid_request_error",
         "EMPTY_MESSAGE", "messages"},
        {"text/plain", E.alice, "text/plain", "{}", 415, "invalid_request_error", "UNSUPPORTED_MEDIA_TYPE", NULL},
        {"somebody else's customer", E.bob, NULL,
         "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
         "\"customer_id\":\"cust-1001\"}",
         403, "permission_error", "CUSTOMER_FORBIDDEN", NULL},
        {"2 MB body", E.alice, NULL, big, 413, "invalid_request_error", "PAYLOAD_TOO_LARGE", NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        reply r;
        http(&(request){.method = "POST",
                        .path = "/v1/chat/completions",
                        .token = cases[i].token,
                        .content_type = cases[i].content_type,
                        .body = cases[i].body},
             &r);
        if (r.status != cases[i].status) fail_msg("%s: %ld %.300s", cases[i].name, r.status, r.body.data);
        assert_oai_error(&r, cases[i].status, cases[i].type, cases[i].code, cases[i].param);
        if (cases[i].status == 401) assert_non_null(chat_strcasestr(r.headers.data, "WWW-Authenticate: Bearer"));
        reply_free(&r);
    }
    reply r;
    http(&(request){.method = "POST", .path = "/v1/chat/completions", .token = E.alice, .body = longconv}, &r);
    if (r.status != 200) fail_msg("a 600 KB conversation: %ld %.300s", r.status, r.body.data);
    reply_free(&r);
    free(big);
    free(longconv);
}

/* ---- /v1/chat/completions, streamed ---- */

/* The chunks of an OpenAI stream: data-only events, ids the same, the role first, [DONE] last. Returns
 * the text of the content deltas (caller frees); *finish gets the finish chunk (caller puts). */
static char *check_chunks(const reply *r, bool usage, json_object **finish)
{
    if (r->status != 200) fail_msg("stream: %ld %.300s", r->status, r->body.data);
    assert_non_null(strstr(r->content_type, "text/event-stream"));
    assert_true(r->n >= 4);
    assert_string_equal(r->ev[r->n - 1].data, "[DONE]");
    chat_buf text;
    chat_buf_init(&text);
    chat_buf_puts(&text, "");
    char id[128] = "";
    *finish = NULL;
    size_t finish_at = r->n - 2 - (usage ? 1 : 0); /* then the usage chunk, when asked for, and [DONE] */
    for (size_t i = 0; i + 1 < r->n; i++) {
        assert_string_equal(r->ev[i].name, "message");
        json_object *o = parse(r->ev[i].data);
        assert_string_equal(str_at(o, "object"), "chat.completion.chunk");
        assert_string_equal(str_at(o, "model"), MODEL);
        if (!id[0]) snprintf(id, sizeof id, "%s", str_at(o, "id"));
        assert_string_equal(str_at(o, "id"), id);
        assert_true(usage == has_key(o, "usage")); /* "usage": null on the others */
        if (i > finish_at) {                       /* the usage chunk */
            assert_int_equal(json_object_array_length(at(o, "choices")), 0);
            int in = json_object_get_int(at(o, "usage.prompt_tokens"));
            assert_true(in > 0);
            assert_int_equal(json_object_get_int(at(o, "usage.total_tokens")),
                             in + json_object_get_int(at(o, "usage.completion_tokens")));
            json_object_put(o);
            continue;
        }
        if (i == 0) assert_string_equal(str_at(o, "choices.0.delta.role"), "assistant");
        if (i == finish_at) {
            assert_non_null(str_at(o, "choices.0.finish_reason"));
            assert_null(at(o, "choices.0.delta.content"));
            *finish = o;
            continue;
        }
        assert_null(str_at(o, "choices.0.finish_reason"));
        const char *c = str_at(o, "choices.0.delta.content");
        assert_non_null(c);
        chat_buf_puts(&text, c);
        json_object_put(o);
    }
    assert_non_null(*finish);
    return chat_buf_take(&text);
}

/* The session_id extension naming another user's session: a normal completion (whole and streamed) in a
 * conversation of bob's own of that id. Nothing of alice's history reaches his context (his follow-up is
 * not read as about her boat); the two are stored apart, and each one's history shows only his own. */
static void test_completion_session_of_another_user(void **state)
{
    (void)state;
    assert_true(E.alice_session[0]); /* from test_completion_whole */
    int alice_n = history_count(E.alice_session, E.alice, NULL);
    assert_true(alice_n >= 4);
    char body[512];
    snprintf(body, sizeof body,
             "{\"model\":\"" MODEL "\",\"messages\":[{\"role\":\"user\",\"content\":\"And its fuel capacity?\"}],"
             "\"session_id\":\"%s\"}",
             E.alice_session);
    reply r;
    http(&(request){.method = "POST", .path = "/v1/chat/completions", .token = E.bob, .body = body}, &r);
    if (r.status != 200) fail_msg("bob's completion: %ld %.300s", r.status, r.body.data);
    json_object *o = parse(r.body.data);
    assert_string_equal(check_completion(o), E.alice_session);
    const char *model = str_at(o, "seawind.context.model");
    if (model && !strcmp(model, "seawind-250")) fail_msg("bob's answer was read with alice's history: %s", r.body.data);
    json_object_put(o);
    reply_free(&r);
    /* streamed too */
    char streamed[600];
    snprintf(streamed, sizeof streamed,
             "{\"model\":\"" MODEL "\",\"stream\":true,\"messages\":[{\"role\":\"user\",\"content\":"
             "\"How long is the Seawind 190?\"}],\"session_id\":\"%s\"}",
             E.alice_session);
    http(&(request){.method = "POST", .path = "/v1/chat/completions", .token = E.bob, .body = streamed}, &r);
    json_object *finish = NULL;
    free(check_chunks(&r, false, &finish));
    assert_string_equal(str_at(finish, "seawind.session_id"), E.alice_session);
    json_object_put(finish);
    reply_free(&r);
    /* apart: bob's two turns, alice's as they were */
    json_object *h = NULL;
    assert_int_equal(history_count(E.alice_session, E.bob, &h), 4);
    const char *text = json_object_to_json_string(h);
    assert_null(strstr(text, Q_SHORT));
    assert_null(strstr(text, "weigh"));
    json_object_put(h);
    assert_int_equal(history_count(E.alice_session, E.alice, &h), alice_n);
    text = json_object_to_json_string(h);
    assert_null(strstr(text, "fuel capacity"));
    assert_null(strstr(text, "Seawind 190"));
    json_object_put(h);
}

static void test_stream_matches_whole(void **state)
{
    (void)state;
    assert_non_null(E.short_answer);
    for (int usage = 0; usage < 2; usage++) {
        reply r;
        ask(Q_SHORT, usage ? ",\"stream\":true,\"stream_options\":{\"include_usage\":true}" : ",\"stream\":true", 0,
            &r);
        json_object *finish = NULL;
        char *text = check_chunks(&r, usage, &finish);
        assert_string_equal(text, E.short_answer);
        assert_string_equal(str_at(finish, "choices.0.finish_reason"), "stop");
        assert_non_null(str_at(finish, "seawind.agent"));
        assert_true(json_object_array_length(at(finish, "seawind.context.sources")) >= 1);
        assert_true(chat_id_valid(str_at(finish, "seawind.session_id")));
        json_object_put(finish);
        free(text);
        reply_free(&r);
    }
}

/* Each chunk leaves when it is generated: over a paced answer of n tokens (one every TOKEN_DELAY_MS),
 * the content chunks arrive spread over most of the (n - 1) * TOKEN_DELAY_MS it takes, in many separate
 * deliveries. With lighttpd holding the response (server.stream-response-body 0) they all arrive at the
 * end, within a millisecond or two. */
static void test_stream_is_paced(void **state)
{
    (void)state;
    reply r;
    ask(Q_LONG, ",\"stream\":true", 0, &r);
    json_object *finish = NULL;
    E.long_answer = check_chunks(&r, false, &finish);
    json_object_put(finish);
    /* the content chunks: after the role chunk, before the finish chunk and [DONE] */
    size_t first = 1, last = r.n - 3, n = last - first + 1;
    assert_true(n >= 40);
    long long span_us = r.ev[last].at_us - r.ev[first].at_us;
    long long paced_us = (long long)(n - 1) * TOKEN_DELAY_MS * 1000;
    int deliveries = r.ev[last].delivery - r.ev[first].delivery + 1;
    printf("# %zu content chunks over %.1f ms (paced: %.1f ms) in %d deliveries\n", n, span_us / 1000.0,
           paced_us / 1000.0, deliveries);
    if (span_us < paced_us * 4 / 10)
        fail_msg("%zu chunks arrived within %.1f ms: held back, not streamed", n, span_us / 1000.0);
    if (deliveries < (int)n / 3) fail_msg("%zu chunks came in only %d deliveries", n, deliveries);
    reply_free(&r);
}

/* A client that goes away mid-stream cancels its generation: the turn is stored at once with what had
 * been generated and finish_reason "cancelled" (the session id is the client's own, so it can be read). */
static void test_stream_disconnect_cancels(void **state)
{
    (void)state;
    assert_non_null(E.long_answer); /* from test_stream_is_paced */
    char sid[65], extra[128];
    snprintf(sid, sizeof sid, "oai-cancel-%ld-%d", (long)time(NULL), (int)getpid());
    snprintf(extra, sizeof extra, ",\"stream\":true,\"session_id\":\"%s\"", sid);
    reply r;
    ask(Q_LONG, extra, 6, &r);
    assert_int_equal(r.rc, CURLE_WRITE_ERROR); /* we hung up */
    assert_true(r.n >= 6);
    reply_free(&r);
    long long t0 = chat_now_ms();
    json_object *h = NULL;
    int count = -1;
    while ((count = history_count(sid, E.alice, &h)) < 2 && chat_now_ms() - t0 < 10000) {
        json_object_put(h);
        h = NULL;
        usleep(100 * 1000);
    }
    if (count != 2) fail_msg("no turn stored for the cancelled stream (%d messages)", count);
    assert_string_equal(str_at(h, "messages.0.content"), Q_LONG);
    assert_string_equal(str_at(h, "messages.1.role"), "assistant");
    const char *finish = str_at(h, "messages.1.metadata.finish_reason"), *text = str_at(h, "messages.1.content");
    if (!finish || strcmp(finish, "cancelled"))
        fail_msg("the stored turn's finish_reason is %s", finish ? finish : "NULL");
    assert_true(strlen(text) < strlen(E.long_answer));
    assert_true(!strncmp(text, E.long_answer, strlen(text))); /* what had been generated */
    printf("# cancelled after %zu of %zu bytes, stored within %lld ms of the hang-up\n", strlen(text),
           strlen(E.long_answer), chat_now_ms() - t0);
    json_object_put(h);

    /* The responder that served it serves the next request as usual. */
    ask(Q_SHORT, "", 0, &r);
    assert_int_equal(r.status, 200);
    reply_free(&r);
}

/* ---- /api/v1/chat with Accept: text/event-stream ---- */

/* The protocol's events: named after their type, progress steps in order, tokens whose partial_response
 * is the text so far (when partial), one complete last. Returns the complete (caller puts). */
static json_object *check_events(const reply *r, bool partial)
{
    if (r->status != 200) fail_msg("SSE chat: %ld %.300s", r->status, r->body.data);
    assert_non_null(strstr(r->content_type, "text/event-stream"));
    static const char *const steps[] = {"starting", "agent_routing", "rag_retrieval", "generating"};
    size_t nsteps = 0, ntokens = 0;
    chat_buf text;
    chat_buf_init(&text);
    chat_buf_puts(&text, "");
    json_object *complete = NULL;
    for (size_t i = 0; i < r->n; i++) {
        json_object *o = parse(r->ev[i].data);
        const char *type = str_at(o, "type");
        assert_non_null(type);
        assert_string_equal(r->ev[i].name, type);
        assert_null(complete); /* nothing after complete */
        if (!strcmp(type, "progress")) {
            assert_true(nsteps < CHAT_ARRAY_LEN(steps) && !ntokens);
            assert_string_equal(str_at(o, "step"), steps[nsteps++]);
            assert_non_null(str_at(o, "message"));
        } else if (!strcmp(type, "token")) {
            ntokens++;
            chat_buf_puts(&text, str_at(o, "token"));
            if (partial)
                assert_string_equal(str_at(o, "partial_response"), text.data);
            else
                assert_false(has_key(o, "partial_response"));
        } else if (!strcmp(type, "complete")) {
            complete = o;
            continue;
        } else {
            fail_msg("unexpected event %s", r->ev[i].data);
        }
        json_object_put(o);
    }
    assert_int_equal(nsteps, CHAT_ARRAY_LEN(steps));
    assert_true(ntokens >= 2);
    assert_non_null(complete);
    assert_string_equal(str_at(complete, "response"), text.data);
    assert_true(chat_id_valid(str_at(complete, "session_id")));
    assert_non_null(str_at(complete, "metadata.agent"));
    chat_buf_free(&text);
    return complete;
}

static void test_rest_chat_events(void **state)
{
    (void)state;
    assert_non_null(E.short_answer);
    static const struct {
        const char *accept, *body;
        bool partial;
    } cases[] = {
        {"text/event-stream", "{\"message\":\"" Q_SHORT "\"}", true},
        {"application/json;q=0.5, Text/Event-Stream; charset=utf-8", "{\"message\":\"" Q_SHORT "\"}", true},
        {"text/event-stream", "{\"message\":\"" Q_SHORT "\",\"partial\":false}", false},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        reply r;
        http(&(request){.method = "POST",
                        .path = "/api/v1/chat",
                        .token = E.alice,
                        .accept = cases[i].accept,
                        .body = cases[i].body},
             &r);
        json_object *complete = check_events(&r, cases[i].partial);
        assert_string_equal(str_at(complete, "response"), E.short_answer);
        json_object_put(complete);
        reply_free(&r);
    }
    /* A refusal before the answer starts is no stream: the usual status and JSON. */
    const char *body = "{\"message\":\"hi\",\"customer_id\":\"cust-1001\"}"; /* not bob's */
    reply r;
    http(
        &(request){
            .method = "POST", .path = "/api/v1/chat", .token = E.bob, .accept = "text/event-stream", .body = body},
        &r);
    assert_int_equal(r.status, 403);
    assert_non_null(strstr(r.content_type, "application/json"));
    json_object *o = parse(r.body.data);
    assert_string_equal(str_at(o, "code"), "CUSTOMER_FORBIDDEN");
    json_object_put(o);
    reply_free(&r);
    /* Without the header the answer is whole, as ever. */
    http(&(request){.method = "POST",
                    .path = "/api/v1/chat",
                    .token = E.alice,
                    .accept = "application/json",
                    .body = cases[0].body},
         &r);
    assert_int_equal(r.status, 200);
    o = parse(r.body.data);
    assert_string_equal(str_at(o, "response"), E.short_answer);
    json_object_put(o);
    reply_free(&r);
}

/* ---- /health/live and /health/ready ---- */

static void test_health_probes(void **state)
{
    (void)state;
    reply r;
    long long t0 = chat_now_ms();
    do { /* the stack may still be finding its workers */
        http(&(request){.method = "GET", .path = "/health/ready"}, &r);
        if (r.status == 200) break;
        reply_free(&r);
        usleep(200 * 1000);
    } while (chat_now_ms() - t0 < 30000);
    if (r.status != 200) fail_msg("/health/ready: %ld %s", r.status, r.body.data);
    assert_string_equal(r.body.data,
                        "{\"status\":\"ready\",\"failing\":[],\"database\":true,\"streamer\":true,\"workers\":true}");
    reply_free(&r);
    http(&(request){.method = "GET", .path = "/health/live"}, &r);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body.data, "{\"status\":\"ok\"}");
    assert_non_null(strstr(r.content_type, "application/json"));
    reply_free(&r);
    static const char *const paths[] = {"/health/live", "/health/ready"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(paths); i++) {
        http(&(request){.method = "HEAD", .path = paths[i]}, &r);
        assert_int_equal(r.status, 200);
        reply_free(&r);
        http(&(request){.method = "POST", .path = paths[i], .body = "{}"}, &r);
        assert_int_equal(r.status, 405);
        assert_non_null(chat_strcasestr(r.headers.data, "Allow: GET, HEAD"));
        reply_free(&r);
    }
}

static int mariadb(const char *action)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "cd '%s' && bash deploy/mariadb.sh %s >/dev/null 2>&1", testutil_root(), action);
    return system(cmd);
}

/* Polls path until it answers want (at most timeout_ms); the last reply stays in r. */
static void wait_status(const char *path, long want, int timeout_ms, reply *r)
{
    long long end = chat_now_ms() + timeout_ms;
    for (;;) {
        http(&(request){.method = "GET", .path = path}, r);
        if (r->status == want || chat_now_ms() > end) return;
        reply_free(r);
        usleep(200 * 1000);
    }
}

/* Readiness follows the database; liveness does not. */
static void test_health_database_down(void **state)
{
    (void)state;
    assert_int_equal(mariadb("stop"), 0);
    reply r;
    wait_status("/health/ready", 503, 5000, &r); /* the per-process cache holds an answer for up to 1 s */
    long st = r.status;
    char body[512];
    snprintf(body, sizeof body, "%s", r.body.data);
    bool retry = chat_strcasestr(r.headers.data, "Retry-After:") != NULL;
    reply_free(&r);
    http(&(request){.method = "GET", .path = "/health/live"}, &r);
    long live = r.status;
    reply_free(&r);
    assert_int_equal(mariadb("start"), 0);
    if (st != 503) fail_msg("/health/ready with the database down: %ld %s", st, body);
    assert_string_equal(body, "{\"status\":\"not_ready\",\"failing\":[\"database\"],\"database\":false,"
                              "\"streamer\":true,\"workers\":true}");
    assert_true(retry);
    assert_int_equal(live, 200);
    wait_status("/health/ready", 200, 30000, &r);
    if (r.status != 200) fail_msg("/health/ready after the restart: %ld %s", r.status, r.body.data);
    reply_free(&r);
}

TESTUTIL_MAIN(group_setup, group_teardown,
              cmocka_unit_test(test_health_probes),
              cmocka_unit_test(test_models),
              cmocka_unit_test(test_completion_whole),
              cmocka_unit_test(test_completion_errors),
              cmocka_unit_test(test_completion_session_of_another_user),
              cmocka_unit_test(test_stream_matches_whole),
              cmocka_unit_test(test_stream_is_paced),
              cmocka_unit_test(test_stream_disconnect_cancels),
              cmocka_unit_test(test_rest_chat_events),
              cmocka_unit_test(test_health_database_down))
