/* End-to-end tests of /ws/chat: chat-streamer and chat-worker processes on a private database, driven
 * through tools/wsclient (an independent WebSocket client).
 *
 * Self-contained: the group set-up builds database chat_t_streamer with the sample data, starts a worker
 * pool (2 processes, extractive provider, a small token delay so tests can act mid-answer) on an ipc
 * endpoint in a temporary directory, and a streamer on a free port. Tests that need other settings start
 * their own streamer: on other endpoints when they need no workers (no-workers, RS256), or, when they need
 * the workers, in place of the main streamer on the same endpoint (the workers re-register with the new
 * broker, which is itself a test of the heartbeat/RESET path). Logs: build/tests/e2e/streamer-*.log. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_db.h"
#include "chat_jwt.h"
#include "chat_util.h"
#include "e2eutil.h"
#include "testutil.h"
#include "wsclient.h"

#define SECRET "e2e-streamer-secret-0123456789abcdef"
#define OTHER_SECRET "another-secret-entirely-0123456789abcd"
#define ALLOWED_ORIGIN "http://allowed.example"
#define QUESTION "What is the engine power of the Seawind 250?"
#define TOKEN_DELAY_MS "8"
#define ANSWER_MS 15000 /* longest wait for one answer */

static struct {
    char dir[256];
    char endpoint[320];
    char log_dir[512];
    pid_t workers;
    pid_t streamer; /* the main streamer (on endpoint) */
    int port;
    char url[128];
    char *alice, *bob, *expired;
    char bin_streamer[512], bin_worker[512];
} E;

/* ---------------------------------------------------------------- JSON and JWT helpers */

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!o || !json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string)) return NULL;
    return json_object_get_string(v);
}

static json_object *jget(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static void b64url(const unsigned char *in, size_t len, chat_buf *out)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    for (size_t i = 0; i < len; i += 3) {
        unsigned v =
            (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < len ? in[i + 2] : 0);
        char q[4] = {tbl[v >> 18 & 63], tbl[v >> 12 & 63], tbl[v >> 6 & 63], tbl[v & 63]};
        chat_buf_append(out, q, i + 2 < len ? 4 : i + 1 < len ? 3 : 2);
    }
}

#define HS256_HEADER "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"

/* header.payload, then a signature: HMAC-SHA256 with key (key NULL: no signature, "alg none" style). */
static char *jwt_hs(const char *header, const char *payload, const char *key, size_t keylen)
{
    chat_buf b;
    chat_buf_init(&b);
    b64url((const unsigned char *)header, strlen(header), &b);
    chat_buf_puts(&b, ".");
    b64url((const unsigned char *)payload, strlen(payload), &b);
    if (key) {
        unsigned char mac[32];
        unsigned int maclen = 0;
        HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)b.data, b.len, mac, &maclen);
        chat_buf_puts(&b, ".");
        b64url(mac, maclen, &b);
    } else {
        chat_buf_puts(&b, ".");
    }
    return chat_buf_take(&b);
}

/* payload as a token the suite's streamers accept, but for its claims: HS256 with SECRET. */
static char *hs256(const char *payload)
{
    return jwt_hs(HS256_HEADER, payload, SECRET, strlen(SECRET));
}

static char *claims(const char *sub, long exp_off, long nbf_off, bool with_exp)
{
    char *p = NULL;
    time_t now = time(NULL);
    char nbf[64] = "";
    if (nbf_off) snprintf(nbf, sizeof nbf, ",\"nbf\":%lld", (long long)(now + nbf_off));
    char exp[64] = "";
    if (with_exp) snprintf(exp, sizeof exp, ",\"exp\":%lld", (long long)(now + exp_off));
    if (asprintf(&p, "{\"sub\":\"%s\",\"email\":\"%s@example.com\",\"name\":\"Test %s\",\"iat\":%lld%s%s}", sub, sub,
                 sub, (long long)now, exp, nbf) < 0)
        return NULL;
    return p;
}

static char *mint(const char *sub)
{
    char email[128], name[128];
    snprintf(email, sizeof email, "%s@example.com", sub);
    snprintf(name, sizeof name, "Test %s", sub);
    return chat_jwt_mint_hs256(SECRET, sub, email, name, time(NULL), 3600);
}

/* ---------------------------------------------------------------- processes */

static const char *log_path(const char *name)
{
    static char p[700];
    snprintf(p, sizeof p, "%s/streamer-%s.log", E.log_dir, name);
    return p;
}

/* Starts a streamer on a free port with endpoint and extra settings; waits until it listens. */
static pid_t streamer_start(const char *name, const char *endpoint, const char *const extra[], int *port)
{
    char listen[64], zmq[400];
    for (int attempt = 0; attempt < 3; attempt++) {
        *port = e2e_free_port();
        assert_true(*port > 0);
        snprintf(listen, sizeof listen, "CHAT_STREAMER_LISTEN=127.0.0.1:%d", *port);
        snprintf(zmq, sizeof zmq, "CHAT_ZMQ_ENDPOINT=%s", endpoint);
        /* Settings the tests rely on are set or reset here, whatever the caller's environment holds. */
        const char *env[48] = {listen,
                               zmq,
                               "JWT_SECRET=" SECRET,
                               "CHAT_ALLOWED_ORIGINS=" ALLOWED_ORIGIN,
                               "CHAT_DB_NAME=chat_t_streamer",
                               "CHAT_SHUTDOWN_GRACE_S=5",
                               "CHAT_LOG_LEVEL=info",
                               "JWT_ALGORITHM",
                               "JWT_PUBLIC_KEY_FILE",
                               "JWT_ISSUER",
                               "JWT_AUDIENCE",
                               "CHAT_RATE_LIMIT_PER_MIN",
                               "CHAT_MAX_QUEUE",
                               "CHAT_MAX_OUTBOUND_BYTES",
                               "CHAT_MAX_MESSAGE_BYTES",
                               "CHAT_IDLE_TIMEOUT_S",
                               "CHAT_PING_INTERVAL_S",
                               "CHAT_STREAMER_PING_TIMEOUT_S",
                               "CHAT_STREAMER_HEADER_TIMEOUT_S",
                               "CHAT_STREAMER_AUTH_TIMEOUT_S",
                               "CHAT_STREAMER_SNDBUF",
                               "CHAT_STREAMER_RX_BUFFER",
                               "CHAT_STREAMER_WRITE_STALL_MS",
                               "CHAT_STREAMER_QUEUE_MAX",
                               "CHAT_STREAMER_QUEUE_WAIT_MS",
                               "CHAT_STREAMER_START_WAIT_MS"};
        int n = 26;
        for (int i = 0; extra && extra[i] && n < 47; i++)
            env[n++] = extra[i];
        env[n] = NULL;
        const char *argv[] = {E.bin_streamer, NULL};
        pid_t pid = e2e_spawn(argv, env, log_path(name));
        assert_true(pid > 0);
        if (e2e_wait_port("127.0.0.1", *port, 5000, pid) == 0) return pid;
        e2e_stop(pid, SIGKILL, 1000, NULL); /* the port was taken meanwhile: try another */
    }
    fail_msg("streamer %s did not start, see %s", name, log_path(name));
    return -1;
}

/* A streamer with settings of its own and no workers (an endpoint of its own, named after it). */
static pid_t streamer_alone(const char *name, const char *const extra[], int *port)
{
    char endpoint[400];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/%s.ipc", E.dir, name);
    return streamer_start(name, endpoint, extra, port);
}

static void stop_streamer(pid_t pid)
{
    int status = 0;
    assert_int_equal(e2e_stop(pid, SIGTERM, 15000, &status), 0);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

/* A private stack stopped cleanly: its streamer, then its worker pool (private_stack's *workers). */
static void stop_stack(pid_t streamer, pid_t workers)
{
    stop_streamer(streamer);
    assert_int_equal(e2e_stop(workers, SIGTERM, 10000, NULL), 0);
}

/* /status as JSON (caller puts). */
static json_object *status_of(int port)
{
    char body[16384];
    int code = e2e_http_get("127.0.0.1", port, "/status", NULL, body, sizeof body, 2000);
    if (code != 200) return NULL;
    return json_tokener_parse(body);
}

static int status_int(int port, const char *key)
{
    json_object *st = status_of(port);
    int v = st && jget(st, key) ? json_object_get_int(jget(st, key)) : -1;
    json_object_put(st);
    return v;
}

static void wait_workers(int port, int n, int timeout_ms)
{
    long long deadline = e2e_now_ms() + timeout_ms;
    while (status_int(port, "workers_live") < n) {
        if (e2e_now_ms() > deadline) fail_msg("fewer than %d workers registered within %d ms", n, timeout_ms);
        e2e_sleep_ms(50);
    }
}

static void main_streamer_restart(void)
{
    E.streamer = streamer_start("main", E.endpoint, NULL, &E.port);
    snprintf(E.url, sizeof E.url, "ws://127.0.0.1:%d/ws/chat", E.port);
    wait_workers(E.port, 2, 10000);
}

/* ---------------------------------------------------------------- WebSocket helpers */

static chat_wsc *ws_open_at(int port, const char *path_query, const char *origin, int *http_status)
{
    char url[4200], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d%.4096s", port, path_query);
    chat_wsc_opts o = {.origin = origin, .timeout_ms = 5000};
    return chat_wsc_connect(url, &o, http_status, err, sizeof err);
}

/* A connection to the streamer on port with ?token= (token NULL: none); *first: the reply to the token,
 * its first frame (caller puts), or NULL without a token. */
static chat_wsc *ws_open_query(int port, const char *token, json_object **first)
{
    char pq[4096];
    if (token)
        snprintf(pq, sizeof pq, "/ws/chat?token=%s", token);
    else
        snprintf(pq, sizeof pq, "/ws/chat");
    chat_wsc *c = ws_open_at(port, pq, NULL, NULL);
    assert_non_null(c);
    *first = NULL;
    if (token) assert_int_equal(chat_wsc_recv_json(c, 5000, first), 0);
    return c;
}

/* A connection to the streamer on port, authenticated by ?token= (token NULL: not authenticated). */
static chat_wsc *ws_open_on(int port, const char *token)
{
    json_object *o;
    chat_wsc *c = ws_open_query(port, token, &o);
    if (o) assert_string_equal(jstr(o, "type"), "auth_success");
    json_object_put(o);
    return c;
}

/* What the streamer on port answers a connection with ?token= (caller puts); the connection is closed. */
static json_object *query_auth_reply(int port, const char *token)
{
    json_object *o;
    chat_wsc_close(ws_open_query(port, token, &o), 1000, NULL);
    return o;
}

static chat_wsc *ws_open(const char *token)
{
    return ws_open_on(E.port, token);
}

static void send_str(chat_wsc *c, const char *s)
{
    assert_int_equal(chat_wsc_send_text(c, s, strlen(s)), 0);
}

static void send_auth(chat_wsc *c, const char *token)
{
    char msg[4096];
    snprintf(msg, sizeof msg, "{\"type\":\"auth\",\"token\":\"%s\"}", token);
    send_str(c, msg);
}

static void send_message(chat_wsc *c, const char *text, const char *extra)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("message"));
    json_object_object_add(o, "message", json_object_new_string(text));
    char *s = NULL;
    const char *body = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN);
    if (extra) { /* splice extra members in: {...,extra} */
        assert_true(asprintf(&s, "%.*s,%s}", (int)strlen(body) - 1, body, extra) > 0);
        body = s;
    }
    send_str(c, body);
    free(s);
    json_object_put(o);
}

/* The next JSON message; fails the test on timeout or close. */
static json_object *next_json(chat_wsc *c, int timeout_ms)
{
    json_object *o = NULL;
    int rc = chat_wsc_recv_json(c, timeout_ms, &o);
    if (rc) fail_msg("no message (rc %d, close %d %s)", rc, chat_wsc_close_code(c), chat_wsc_close_reason(c));
    return o;
}

/* Sends an auth message with token; its reply, which must be of type want (the caller puts it). */
static json_object *auth_reply(chat_wsc *c, const char *token, const char *want)
{
    send_auth(c, token);
    json_object *o = next_json(c, 5000);
    assert_string_equal(jstr(o, "type"), want);
    return o;
}

/* Expects an error frame with code; returns after it. */
static void expect_error(chat_wsc *c, const char *code)
{
    json_object *o = next_json(c, 5000);
    if (strcmp(jstr(o, "type") ? jstr(o, "type") : "", "error") || !jstr(o, "code") || strcmp(jstr(o, "code"), code))
        fail_msg("expected error %s, got %s", code, json_object_to_json_string(o));
    assert_non_null(jstr(o, "error"));
    json_object_put(o);
}

/* The connection still answers: an application ping gets a pong. */
static void expect_usable(chat_wsc *c)
{
    send_str(c, "{\"type\":\"ping\"}");
    json_object *o = next_json(c, 5000);
    assert_string_equal(jstr(o, "type"), "pong");
    json_object_put(o);
}

/* Waits for the connection to be closed by the server; returns the close code. */
static int wait_closed(chat_wsc *c, int timeout_ms)
{
    long long deadline = e2e_now_ms() + timeout_ms;
    for (;;) {
        int rc = chat_wsc_recv(c, 200, NULL, NULL);
        if (rc == CHAT_ERR) return chat_wsc_close_code(c);
        if (e2e_now_ms() > deadline) return 0;
    }
}

/* Everything the server sent for one message. */
typedef struct answer {
    char steps[8][32];
    int nsteps;
    int first_token_at; /* index in the event sequence */
    int ntokens;
    int events;
    chat_buf tokens;
    bool partial_always;  /* every token had partial_response */
    bool partial_never;   /* no token had one */
    bool partial_matches; /* each partial_response == tokens so far */
    json_object *complete;
    char error[48];
    bool closed;
    /* answers that outlive connections */
    char session_id[72], answer_id[72]; /* from progress, resumed or user_message */
    json_object *resumed;               /* the resumed frame, when one came */
    char user_message[256];             /* the last user_message's text */
    int user_messages;
    unsigned long long seq; /* the last token's */
    bool seq_rising;        /* every token's seq above the one before */
    chat_buf partial;       /* the last token's partial_response */
    int pause_at_tokens; /* collect returns after this many tokens (0: at the terminal event only) */
} answer;

static void answer_init(answer *a)
{
    memset(a, 0, sizeof *a);
    chat_buf_init(&a->tokens);
    chat_buf_init(&a->partial);
    a->first_token_at = -1;
    a->partial_always = a->partial_never = a->partial_matches = a->seq_rising = true;
}

static void answer_clear(answer *a)
{
    chat_buf_free(&a->tokens);
    chat_buf_free(&a->partial);
    json_object_put(a->complete);
    json_object_put(a->resumed);
    memset(a, 0, sizeof *a);
}

/* The answer's ids, from any frame that names them. */
static void note_ids(answer *a, json_object *o)
{
    if (jstr(o, "session_id")) snprintf(a->session_id, sizeof a->session_id, "%s", jstr(o, "session_id"));
    if (jstr(o, "answer_id")) snprintf(a->answer_id, sizeof a->answer_id, "%s", jstr(o, "answer_id"));
}

static void feed_token(answer *a, json_object *o)
{
    const char *t = jstr(o, "token");
    assert_non_null(t);
    if (a->first_token_at < 0) a->first_token_at = a->events - 1;
    a->ntokens++;
    chat_buf_puts(&a->tokens, t);
    const char *p = jstr(o, "partial_response");
    if (p) {
        a->partial_never = false;
        if (strcmp(p, a->tokens.data)) a->partial_matches = false;
        chat_buf_reset(&a->partial);
        chat_buf_puts(&a->partial, p);
    } else {
        a->partial_always = false;
    }
    json_object *seq = jget(o, "seq");
    unsigned long long n = seq ? (unsigned long long)json_object_get_int64(seq) : 0;
    if (n <= a->seq) a->seq_rising = false;
    a->seq = n;
    note_ids(a, o);
}

/* One frame of an answer into a (o is taken). True at its terminal frame (complete or error). */
static bool answer_feed(answer *a, json_object *o)
{
    const char *type = jstr(o, "type");
    assert_non_null(type);
    a->events++;
    bool terminal = false;
    if (!strcmp(type, "progress")) {
        assert_non_null(jstr(o, "message"));
        if (a->nsteps < 8) snprintf(a->steps[a->nsteps++], sizeof a->steps[0], "%s", jstr(o, "step"));
        note_ids(a, o);
    } else if (!strcmp(type, "token")) {
        feed_token(a, o);
    } else if (!strcmp(type, "complete")) {
        note_ids(a, o);
        a->complete = o;
        return true;
    } else if (!strcmp(type, "error")) {
        snprintf(a->error, sizeof a->error, "%s", jstr(o, "code") ? jstr(o, "code") : "?");
        terminal = true;
    } else if (!strcmp(type, "resumed")) {
        note_ids(a, o);
        json_object_put(a->resumed);
        a->resumed = o;
        return false;
    } else if (!strcmp(type, "user_message")) {
        note_ids(a, o);
        a->user_messages++;
        snprintf(a->user_message, sizeof a->user_message, "%s", jstr(o, "message") ? jstr(o, "message") : "");
    } else {
        fail_msg("unexpected frame %s", json_object_to_json_string(o));
    }
    json_object_put(o);
    return terminal;
}

/* Reads events until complete or error. on_token (may be NULL) is called after each token. */
static void collect(chat_wsc *c, answer *a, int timeout_ms, void (*on_token)(chat_wsc *, answer *, void *), void *ud)
{
    long long deadline = e2e_now_ms() + timeout_ms;
    for (;;) {
        long long left = deadline - e2e_now_ms();
        if (left <= 0) fail_msg("answer timed out after %d events", a->events);
        json_object *o = NULL;
        int rc = chat_wsc_recv_json(c, (int)left, &o);
        if (rc == CHAT_ERR) {
            a->closed = true;
            return;
        }
        if (rc) fail_msg("receive failed: %d", rc);
        bool token = !strcmp(jstr(o, "type") ? jstr(o, "type") : "", "token");
        if (answer_feed(a, o)) return;
        if (token && on_token) on_token(c, a, ud);
        if (token && a->ntokens == a->pause_at_tokens) return;
    }
}

/* Sends a message (extra: more JSON members, or NULL) and collects its answer into a. */
static void ask_with(chat_wsc *c, const char *text, const char *extra, answer *a)
{
    answer_init(a);
    send_message(c, text, extra);
    collect(c, a, ANSWER_MS, NULL, NULL);
}

static void ask(chat_wsc *c, const char *text, answer *a) { ask_with(c, text, NULL, a); }

/* A complete answer in the spec's shape: steps in order, tokens, response == tokens, metadata. */
static void assert_full_answer(const answer *a)
{
    if (!a->complete) fail_msg("no complete (error %s)", a->error);
    assert_int_equal(a->nsteps, 4);
    assert_string_equal(a->steps[0], "starting");
    assert_string_equal(a->steps[1], "agent_routing");
    assert_string_equal(a->steps[2], "rag_retrieval");
    assert_string_equal(a->steps[3], "generating");
    assert_true(a->ntokens > 0);
    assert_int_equal(a->first_token_at, 4); /* every progress before the first token */
    assert_true(a->partial_always && a->partial_matches);
    const char *resp = jstr(a->complete, "response");
    assert_non_null(resp);
    assert_string_equal(resp, a->tokens.data);
    assert_non_null(jstr(a->complete, "session_id"));
    json_object *m = jget(a->complete, "metadata");
    assert_non_null(m);
    assert_non_null(jstr(m, "agent"));
    assert_non_null(jget(m, "confidence"));
    json_object *ctx = jget(m, "context");
    assert_non_null(ctx);
    assert_true(json_object_is_type(jget(ctx, "sources"), json_type_array));
    assert_string_equal(jstr(m, "finish_reason"), "stop");
    assert_non_null(jget(m, "usage"));
    assert_non_null(jget(m, "timings"));
}

/* ---------------------------------------------------------------- set-up */

/* The endpoint of a test's own stack: ipc://<E.dir>/<name>.ipc. */
static void own_endpoint(char *out, size_t n, const char *name)
{
    snprintf(out, n, "ipc://%s/%s.ipc", E.dir, name);
}

/* A worker pool of a test's own: `procs` processes of `slots` slots each on the tests' database, connected
 * to endpoints (one, or several separated by commas), with the settings of own and then of extra
 * (NULL-terminated lists, either may be NULL); logs to log_path(log). Returns the supervisor's pid. */
static pid_t pool_spawn(const char *log, const char *endpoints, int procs, int slots, const char *const own[],
                        const char *const extra[])
{
    char zmq[900], procs_env[40], slots_env[40];
    snprintf(zmq, sizeof zmq, "CHAT_ZMQ_ENDPOINT=%s", endpoints);
    snprintf(procs_env, sizeof procs_env, "CHAT_WORKERS=%d", procs);
    snprintf(slots_env, sizeof slots_env, "CHAT_WORKER_SLOTS=%d", slots);
    const char *env[32] = {zmq, "CHAT_DB_NAME=chat_t_streamer", procs_env, slots_env};
    size_t n = 4;
    const char *const *lists[] = {own, extra};
    for (size_t k = 0; k < CHAT_ARRAY_LEN(lists); k++)
        for (size_t i = 0; lists[k] && lists[k][i] && n + 1 < CHAT_ARRAY_LEN(env); i++) env[n++] = lists[k][i];
    const char *argv[] = {E.bin_worker, NULL};
    pid_t pid = e2e_spawn(argv, env, log_path(log));
    assert_true(pid > 0);
    return pid;
}

static int group_setup(void **state)
{
    (void)state;
    memset(&E, 0, sizeof E);
    /* CHAT_E2E_STREAMER_BIN / CHAT_E2E_WORKER_BIN: run other builds (e.g. with sanitizers) under the test. */
    const char *bs = getenv("CHAT_E2E_STREAMER_BIN"), *bw = getenv("CHAT_E2E_WORKER_BIN");
    snprintf(E.bin_streamer, sizeof E.bin_streamer, "%s", bs && *bs ? bs : testutil_path("build/bin/chat-streamer"));
    snprintf(E.bin_worker, sizeof E.bin_worker, "%s", bw && *bw ? bw : testutil_path("build/bin/chat-worker"));
    const char *var = getenv("CHAT_VAR"); /* logs beside the suite's other logs */
    if (var && *var) snprintf(E.log_dir, sizeof E.log_dir, "%s/log", var);
    else snprintf(E.log_dir, sizeof E.log_dir, "%s", testutil_path("build/tests/e2e"));
    const char *d = e2e_tmpdir("chat-streamer-e2e");
    assert_non_null(d);
    snprintf(E.dir, sizeof E.dir, "%s", d);
    snprintf(E.endpoint, sizeof E.endpoint, "ipc://%s/w.ipc", E.dir);
    for (const char *n = "main"; n; n = NULL)
        unlink(log_path(n));

    chat_db *db = testutil_db_fresh("streamer", TESTUTIL_SAMPLE);
    chat_db_free(db);

    const char *own[] = {"CHAT_LLM_PROVIDER=extractive",
                         "CHAT_TOKEN_DELAY_MS=" TOKEN_DELAY_MS,
                         "CHAT_SHUTDOWN_GRACE_S=5",
                         "CHAT_LOG_LEVEL=info",
                         "CHAT_MAX_MESSAGE_BYTES",
                         "LLM_MAX_TOKENS",
                         /* these tests were written for answers that end with their connection (and
                          * answers that outlive it have tests of their own, below) */
                         "CHAT_ORPHAN_POLICY=cancel",
                         "CHAT_ORPHAN_GRACE_S=0",
                         NULL};
    unlink(log_path("workers"));
    E.workers = pool_spawn("workers", E.endpoint, 2, 1, own, NULL);
    main_streamer_restart();

    E.alice = mint("alice");
    E.bob = mint("bob");
    E.expired = chat_jwt_mint_hs256(SECRET, "alice", NULL, NULL, time(NULL) - 7200, 60);
    assert_non_null(E.alice);
    assert_non_null(E.bob);
    assert_non_null(E.expired);
    return 0;
}

static void resume_stack_stop(void);

static int group_teardown(void **state)
{
    (void)state;
    resume_stack_stop();
    if (E.streamer > 0) e2e_stop(E.streamer, SIGTERM, 10000, NULL);
    int status = 0;
    if (E.workers > 0) {
        /* The supervisor stops its workers and exits 0 on SIGTERM. */
        if (e2e_stop(E.workers, SIGTERM, 10000, &status) || !WIFEXITED(status) || WEXITSTATUS(status))
            fprintf(stderr, "warning: the worker supervisor did not stop cleanly\n");
    }
    free(E.alice);
    free(E.bob);
    free(E.expired);
    e2e_rmdir(E.dir);
    return 0;
}

/* ---------------------------------------------------------------- connection, HTTP, Origin */

static void test_status_and_paths(void **state)
{
    (void)state;
    json_object *st = status_of(E.port);
    assert_non_null(st);
    static const char *const keys[] = {"connections", "workers_live", "workers_busy", "jobs_queued"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(keys); i++)
        assert_true(json_object_is_type(jget(st, keys[i]), json_type_int));
    assert_int_equal(json_object_get_int(jget(st, "workers_live")), 2);
    assert_int_equal(json_object_array_length(jget(st, "workers")), 2);
    json_object_put(st);

    char body[1024];
    assert_int_equal(e2e_http_get("127.0.0.1", E.port, "/nope", NULL, body, sizeof body, 2000), 404);
    int status = 0;
    chat_wsc *c = ws_open_at(E.port, "/ws/other", NULL, &status);
    assert_null(c);
    assert_int_equal(status, 404);
    /* Behind a proxy the path may keep a trailing slash. */
    c = ws_open_at(E.port, "/ws/chat/", NULL, &status);
    assert_non_null(c);
    assert_int_equal(status, 101);
    chat_wsc_close(c, 1000, "bye");
    /* permessage-deflate is never negotiated (wsclient refuses a response that names an extension). */
    char err[256];
    chat_wsc_opts o = {.timeout_ms = 5000,
                       .extra_headers = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"};
    c = chat_wsc_connect(E.url, &o, &status, err, sizeof err);
    if (!c) fail_msg("handshake with a deflate offer failed: %s", err);
    assert_int_equal(status, 101);
    expect_usable(c);
    /* The connection is counted while open. */
    assert_true(status_int(E.port, "connections") >= 1);
    chat_wsc_close(c, 1000, "bye");
}

static void test_origin_allowlist(void **state)
{
    (void)state;
    struct {
        const char *origin;
        int status;
    } cases[] = {
        {ALLOWED_ORIGIN, 101}, {"http://evil.example", 403}, {NULL, 101}, {"http://allowed.example.evil", 403}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        int status = 0;
        chat_wsc *c = ws_open_at(E.port, "/ws/chat", cases[i].origin, &status);
        if (status != cases[i].status)
            fail_msg("origin %s: status %d", cases[i].origin ? cases[i].origin : "(none)", status);
        if (cases[i].status == 101) {
            assert_non_null(c);
            expect_usable(c);
        } else {
            assert_null(c);
        }
        chat_wsc_close(c, 1000, NULL);
    }
}

/* The page's own origin is accepted besides the allowlist; "*" admits any origin with a warning in the
 * log; a malformed allowlist stops the streamer at start. */
static void test_origin_settings(void **state)
{
    (void)state;
    char own[64];
    snprintf(own, sizeof own, "http://127.0.0.1:%d", E.port);
    int status = 0;
    chat_wsc *c = ws_open_at(E.port, "/ws/chat", own, &status);
    assert_int_equal(status, 101);
    expect_usable(c);
    chat_wsc_close(c, 1000, NULL);

    char endpoint[400];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/origins.ipc", E.dir);
    unlink(log_path("origin-any"));
    const char *any[] = {"CHAT_ALLOWED_ORIGINS=*", NULL};
    int port;
    pid_t pid = streamer_start("origin-any", endpoint, any, &port);
    c = ws_open_at(port, "/ws/chat", "http://evil.example", &status);
    assert_int_equal(status, 101);
    chat_wsc_close(c, 1000, NULL);
    stop_streamer(pid);
    char *log = testutil_read_file(log_path("origin-any"), NULL);
    assert_non_null(log);
    assert_non_null(strstr(log, "CHAT_ALLOWED_ORIGINS contains \"*\""));
    free(log);

    char listen[64], zmq[460];
    snprintf(listen, sizeof listen, "CHAT_STREAMER_LISTEN=127.0.0.1:%d", e2e_free_port());
    snprintf(zmq, sizeof zmq, "CHAT_ZMQ_ENDPOINT=%s", endpoint);
    const char *env[] = {listen, zmq, "JWT_SECRET=" SECRET,
                         "CHAT_ALLOWED_ORIGINS=https://ok.example, https://bad.example/", NULL};
    const char *argv[] = {E.bin_streamer, NULL};
    unlink(log_path("origin-bad"));
    pid = e2e_spawn(argv, env, log_path("origin-bad"));
    assert_true(pid > 0);
    int st = 0;
    assert_int_equal(e2e_wait_exit(pid, 5000, &st), 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    log = testutil_read_file(log_path("origin-bad"), NULL);
    assert_non_null(log);
    assert_non_null(strstr(log, "\"https://bad.example/\" is not an origin"));
    free(log);
}

/* Connects to port and sends a request head one byte a second (drip) or nothing at all. Returns when
 * the server closed the connection, in ms after the connect, or -1 when it was still open after
 * limit_ms. A response before the head is complete fails the test. */
static long long slow_head_closed_after(int port, bool drip, int limit_ms)
{
    static const char head[] = "GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    long long t0 = e2e_now_ms(), closed = -1;
    size_t sent = 0;
    while (closed < 0 && e2e_now_ms() - t0 < limit_ms) {
        if (drip && sent < sizeof head - 1 && send(fd, head + sent, 1, MSG_NOSIGNAL) == 1) sent++;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 1000) <= 0) continue;
        char b[256];
        ssize_t n = recv(fd, b, sizeof b, 0);
        if (n > 0) fail_msg("a response after %zu bytes of the head: %.*s", sent, (int)n, b);
        closed = e2e_now_ms() - t0;
    }
    close(fd);
    return closed;
}

/* Slowloris: with CHAT_STREAMER_HEADER_TIMEOUT_S=2, a connection sending its request head one byte a
 * second is closed after about 2 s (lws's default would be 10), so is one that sends nothing; a normal
 * request is not affected. */
static void test_request_head_timeout(void **state)
{
    (void)state;
    const char *extra[] = {"CHAT_STREAMER_HEADER_TIMEOUT_S=2", NULL};
    int port;
    pid_t pid = streamer_alone("head", extra, &port);
    static const bool drips[] = {true, false};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(drips); i++) {
        long long after = slow_head_closed_after(port, drips[i], 6000);
        if (after < 1500 || after > 4500)
            fail_msg("%s: closed after %lld ms, want about 2000", drips[i] ? "one byte a second" : "silent", after);
    }
    assert_int_equal(status_int(port, "connections"), 0); /* a complete request is served */
    stop_streamer(pid);
}

/* ---------------------------------------------------------------- authentication */

static void test_auth_query_success(void **state)
{
    (void)state;
    json_object *o;
    chat_wsc *c = ws_open_query(E.port, E.alice, &o);
    assert_string_equal(jstr(o, "type"), "auth_success");
    assert_non_null(jstr(o, "message"));
    json_object *u = jget(o, "user");
    assert_string_equal(jstr(u, "id"), "alice");
    assert_non_null(jstr(u, "email"));
    assert_non_null(jstr(u, "name"));
    json_object_put(o);
    chat_wsc_close(c, 1000, NULL);
}

static void test_auth_query_failure_then_message(void **state)
{
    (void)state;
    /* A bad token in the URL still opens the socket; the client may retry with an auth message. */
    chat_wsc *c = ws_open_at(E.port, "/ws/chat?token=not-a-jwt", NULL, NULL);
    assert_non_null(c);
    json_object *o = next_json(c, 5000);
    assert_string_equal(jstr(o, "type"), "auth_error");
    assert_string_equal(jstr(o, "message"), "Invalid token");
    json_object_put(o);
    send_message(c, QUESTION, NULL);
    expect_error(c, "AUTH_REQUIRED");
    o = auth_reply(c, E.bob, "auth_success");
    assert_string_equal(jstr(jget(o, "user"), "id"), "bob");
    json_object_put(o);
    chat_wsc_close(c, 1000, NULL);
}

static void test_auth_message_expired_and_retry(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(NULL);
    json_object *o = auth_reply(c, E.expired, "auth_error");
    assert_string_equal(jstr(o, "message"), "Token expired");
    json_object_put(o);
    json_object_put(auth_reply(c, E.alice, "auth_success"));
    chat_wsc_close(c, 1000, NULL);
}

/* A connection that outlives its token must authenticate again before its next message.
 * exp 28 s ago is still inside the 30 s leeway at auth time, and outside it 3 s later. */
static void test_token_expires_on_open_connection(void **state)
{
    (void)state;
    char *payload = claims("alice", -28, 0, true);
    char *token = hs256(payload);
    chat_wsc *c = ws_open(NULL);
    json_object_put(auth_reply(c, token, "auth_success"));
    sleep(3);
    send_message(c, QUESTION, NULL);
    expect_error(c, "AUTH_REQUIRED");
    send_message(c, QUESTION, NULL); /* stays unauthenticated until a new auth */
    expect_error(c, "AUTH_REQUIRED");
    json_object_put(auth_reply(c, E.alice, "auth_success"));
    chat_wsc_close(c, 1000, NULL);
    free(token);
    free(payload);
}

/* Messages queued while the token was valid still run after it expires; a new one is refused. (The
 * refusal used to drop the connection's user while queued messages still needed it: a crash.) */
static void test_token_expires_with_queue(void **state)
{
    (void)state;
    char *payload = claims("alice", -28, 0, true); /* valid for one or two more seconds */
    char *token = hs256(payload);
    chat_wsc *c = ws_open(NULL);
    json_object_put(auth_reply(c, token, "auth_success"));
    json_object *o;
    for (int i = 0; i < 8; i++) send_message(c, QUESTION, "\"partial\":false"); /* 4-5 s of answers */
    e2e_sleep_ms(2100);
    send_message(c, QUESTION, NULL);
    int completes = 0, refused = 0;
    long long deadline = e2e_now_ms() + 30000;
    while ((completes < 8 || !refused) && e2e_now_ms() < deadline) {
        o = NULL;
        if (chat_wsc_recv_json(c, 2000, &o)) break;
        if (!strcmp(jstr(o, "type"), "complete")) completes++;
        if (!strcmp(jstr(o, "type"), "error")) {
            assert_string_equal(jstr(o, "code"), "AUTH_REQUIRED");
            refused++;
        }
        json_object_put(o);
    }
    assert_int_equal(completes, 8);
    assert_int_equal(refused, 1);
    expect_usable(c); /* the streamer is alive and the connection too */
    chat_wsc_close(c, 1000, NULL);
    free(token);
    free(payload);
}

/* Expects auth_error with code; returns after it. */
static void expect_auth_error(chat_wsc *c, const char *code, const char *what)
{
    json_object *o = next_json(c, 5000);
    const char *type = jstr(o, "type"), *got = jstr(o, "code");
    if (!type || strcmp(type, "auth_error") || !got || strcmp(got, code) || !jstr(o, "message"))
        fail_msg("%s: expected auth_error %s, got %s", what, code, json_object_to_json_string(o));
    json_object_put(o);
}

/* An auth frame of n bytes: the token made of 'x' (before or after the type). */
static char *big_auth(size_t n, bool type_last)
{
    char *f = malloc(n + 1);
    assert_non_null(f);
    const char *head = type_last ? "{\"token\":\"" : "{\"type\":\"auth\",\"token\":\"";
    const char *tail = type_last ? "\",\"type\":\"auth\"}" : "\"}";
    size_t h = strlen(head), t = strlen(tail);
    memcpy(f, head, h);
    memset(f + h, 'x', n - h - t);
    memcpy(f + n - t, tail, t + 1);
    return f;
}

/* Every reply to an auth attempt is auth_success or auth_error (with a code), before and after a
 * successful authentication: a client waiting for its auth answer never gets a plain error. */
static void test_auth_replies(void **state)
{
    (void)state;
    size_t n = 100 * 1024;
    char *big = big_auth(n, false), *big_last = big_auth(n, true);
    char expired[2048], garbage[] = "{\"type\":\"auth\",\"token\":\"garbage\"}";
    snprintf(expired, sizeof expired, "{\"type\":\"auth\",\"token\":\"%s\"}", E.expired);
    const struct {
        const char *name, *frame, *code;
        int fragments; /* 0: one frame */
    } cases[] = {
        {"100 KB auth", big, "MESSAGE_TOO_LONG", 0},
        {"100 KB auth, type last", big_last, "MESSAGE_TOO_LONG", 0},
        {"100 KB auth in 10 fragments", big, "MESSAGE_TOO_LONG", 10},
        {"100 KB auth in 10 fragments, type last", big_last, "MESSAGE_TOO_LONG", 10},
        {"cut short", "{\"type\":\"auth\",\"token\":", "INVALID_JSON", 0},
        {"trailing garbage", "{\"type\": \"auth\", \"token\": \"a.b.c\"} x", "INVALID_JSON", 0},
        {"no token", "{\"type\":\"auth\"}", "INVALID_REQUEST", 0},
        {"null token", "{\"type\":\"auth\",\"token\":null}", "INVALID_REQUEST", 0},
        {"number token", "{\"type\":\"auth\",\"token\":42}", "INVALID_REQUEST", 0},
        {"empty token", "{\"type\":\"auth\",\"token\":\"\"}", "INVALID_REQUEST", 0},
        {"invalid token", garbage, "INVALID_TOKEN", 0},
        {"expired token", expired, "TOKEN_EXPIRED", 0},
    };
    /* Within the default burst of 10 (the frames too long to read are not charged). */
    for (int authed = 0; authed < 2; authed++) {
        chat_wsc *c = ws_open(authed ? E.alice : NULL);
        for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
            const char *f = cases[i].frame;
            size_t len = strlen(f);
            int k = cases[i].fragments;
            if (!k) {
                send_str(c, f);
            } else {
                for (int j = 0; j < k; j++) {
                    size_t from = len * (size_t)j / (size_t)k, to = len * (size_t)(j + 1) / (size_t)k;
                    assert_int_equal(chat_wsc_send_frame(c, j ? CHAT_WS_CONT : CHAT_WS_TEXT, j == k - 1, f + from,
                                                         to - from),
                                     0);
                }
            }
            expect_auth_error(c, cases[i].code, cases[i].name);
        }
        /* Other frames are still answered with error, and the connection is as it was. */
        send_str(c, "not json");
        expect_error(c, "INVALID_JSON");
        send_message(c, QUESTION, "\"partial\":false");
        if (!authed) {
            expect_error(c, "AUTH_REQUIRED");
        } else {
            answer a;
            answer_init(&a);
            collect(c, &a, ANSWER_MS, NULL, NULL);
            assert_non_null(a.complete);
            answer_clear(&a);
        }
        chat_wsc_close(c, 1000, NULL);
    }
    free(big);
    free(big_last);

    /* Rate-limited auth frames get auth_error RATE_LIMITED. */
    char endpoint[400];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/authrate.ipc", E.dir);
    const char *extra[] = {"CHAT_RATE_LIMIT_PER_MIN=3", NULL};
    int port;
    pid_t pid = streamer_start("authrate", endpoint, extra, &port);
    chat_wsc *c = ws_open_at(port, "/ws/chat", NULL, NULL);
    assert_non_null(c);
    for (int i = 0; i < 3; i++) {
        send_str(c, garbage);
        expect_auth_error(c, "INVALID_TOKEN", "within the burst");
    }
    send_str(c, garbage);
    expect_auth_error(c, "RATE_LIMITED", "over the rate");
    send_str(c, "{\"type\":\"auth\"");
    expect_auth_error(c, "RATE_LIMITED", "invalid JSON over the rate");
    chat_wsc_close(c, 1000, NULL);
    stop_streamer(pid);
}

static void test_message_without_auth(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(NULL);
    send_message(c, QUESTION, NULL);
    expect_error(c, "AUTH_REQUIRED");
    expect_usable(c);
    send_message(c, QUESTION, NULL);
    expect_error(c, "AUTH_REQUIRED");
    chat_wsc_close(c, 1000, NULL);
}

/* Each token must be refused with auth_error, by auth message and in the query string. */
static void test_jwt_attacks(void **state)
{
    (void)state;
    char *ok = claims("mallory", 3600, 0, true);
    char *no_exp = claims("mallory", 0, 0, false);
    char *future = claims("mallory", 3600, 3600, true);
    char *past = claims("mallory", -3600, 0, true);
    assert_non_null(ok);
    struct {
        const char *name;
        char *token;
        const char *message;
    } cases[] = {
        {"alg none", jwt_hs("{\"alg\":\"none\",\"typ\":\"JWT\"}", ok, NULL, 0), "Invalid token"},
        {"alg None", jwt_hs("{\"alg\":\"None\",\"typ\":\"JWT\"}", ok, NULL, 0), "Invalid token"},
        {"alg NONE", jwt_hs("{\"alg\":\"NONE\",\"typ\":\"JWT\"}", ok, NULL, 0), "Invalid token"},
        {"alg none signed", jwt_hs("{\"alg\":\"none\"}", ok, SECRET, strlen(SECRET)), "Invalid token"},
        {"wrong key", jwt_hs(HS256_HEADER, ok, OTHER_SECRET, strlen(OTHER_SECRET)), "Invalid token"},
        {"HS384 header", jwt_hs("{\"alg\":\"HS384\",\"typ\":\"JWT\"}", ok, SECRET, strlen(SECRET)), "Invalid token"},
        {"no exp", hs256(no_exp), "Invalid token"},
        {"not yet valid", hs256(future), "Invalid token"},
        {"expired", hs256(past), "Token expired"},
        {"garbage", strdup("garbage"), "Invalid token"},
        {"three dots", strdup("a.b.c"), "Invalid token"},
        {"empty parts", strdup(".."), "Invalid token"},
    };
    /* The control: the same construction with the right key is accepted, so refusals mean something. */
    char *good = hs256(ok);
    chat_wsc *c = ws_open(NULL);
    json_object *o = auth_reply(c, good, "auth_success");
    assert_string_equal(jstr(jget(o, "user"), "id"), "mallory");
    json_object_put(o);
    chat_wsc_close(c, 1000, NULL);

    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        assert_non_null(cases[i].token);
        c = ws_open(NULL);
        send_auth(c, cases[i].token);
        o = next_json(c, 5000);
        if (strcmp(jstr(o, "type"), "auth_error")) fail_msg("%s: accepted by auth message", cases[i].name);
        assert_string_equal(jstr(o, "message"), cases[i].message);
        json_object_put(o);
        send_message(c, QUESTION, NULL); /* still not authenticated */
        expect_error(c, "AUTH_REQUIRED");
        chat_wsc_close(c, 1000, NULL);

        o = query_auth_reply(E.port, cases[i].token);
        if (strcmp(jstr(o, "type"), "auth_error")) fail_msg("%s: accepted in the query", cases[i].name);
        json_object_put(o);
        free(cases[i].token);
    }
    free(good);
    free(ok);
    free(no_exp);
    free(future);
    free(past);
}

/* ---------------------------------------------------------------- chat */

static void test_streaming_chat(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    answer a;
    ask(c, QUESTION, &a);
    assert_full_answer(&a);
    assert_true(strlen(jstr(a.complete, "response")) > 10);
    answer_clear(&a);
    chat_wsc_close(c, 1000, NULL);
}

static void test_multiple_messages(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    answer a, b;
    ask(c, QUESTION, &a);
    assert_full_answer(&a);
    ask(c, "And how long is it?", &b);
    assert_full_answer(&b);
    /* Without a session_id, the second message continues the connection's session. */
    assert_string_equal(jstr(a.complete, "session_id"), jstr(b.complete, "session_id"));
    answer_clear(&a);
    answer_clear(&b);
    chat_wsc_close(c, 1000, NULL);
}

static void test_empty_message(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    send_str(c, "{\"type\":\"message\",\"message\":\"\"}");
    expect_error(c, "EMPTY_MESSAGE");
    send_str(c, "{\"type\":\"message\",\"message\":\"   \\t \"}");
    expect_error(c, "EMPTY_MESSAGE");
    send_str(c, "{\"type\":\"message\"}");
    expect_error(c, "EMPTY_MESSAGE");
    answer a;
    ask(c, QUESTION, &a); /* still fully usable */
    assert_full_answer(&a);
    answer_clear(&a);
    chat_wsc_close(c, 1000, NULL);
}

static void test_protocol_errors(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    char *long_msg = malloc(20001);
    memset(long_msg, 'a', 20000);
    long_msg[20000] = '\0';
    char *too_long = NULL;
    assert_true(asprintf(&too_long, "{\"type\":\"message\",\"message\":\"%s\"}", long_msg) > 0);
    struct {
        const char *frame;
        const char *code;
    } cases[] = {
        {"not json", "INVALID_JSON"},
        {"{\"type\":\"message\",", "INVALID_JSON"},
        {"[1,2,3]", "INVALID_JSON"},
        {"{\"type\":\"shout\"}", "UNKNOWN_TYPE"},
        {too_long, "MESSAGE_TOO_LONG"},
        {"{\"type\":\"message\",\"message\":\"hi\",\"session_id\":\"bad id!\"}", "INVALID_REQUEST"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        send_str(c, cases[i].frame);
        expect_error(c, cases[i].code);
    }
    expect_usable(c);
    free(too_long);
    free(long_msg);
    chat_wsc_close(c, 1000, NULL);
}

/* The boat a complete's turn was read as about (metadata.context.model), or "" when none. */
static const char *context_model_of(const answer *a)
{
    const char *m = jstr(jget(jget(a->complete, "metadata"), "context"), "model");
    return m ? m : "";
}

/* A count of user's stored messages of session sid (the extractive workers' database). */
static long long stored_of(const char *user, const char *sid)
{
    chat_config cfg = testutil_config("streamer");
    chat_db *db = chat_db_new(&cfg);
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ? AND user_id = '%s'", user);
    long long n = testutil_count(db, sql, sid);
    chat_db_free(db);
    return n;
}

/* bob naming alice's session id gets a normal answer, in a conversation of his own of that id: his
 * follow-up is not read with alice's history (the context names no boat of hers), hers still is, and
 * the two conversations are stored apart. Nothing tells bob that alice uses the id. */
static void test_session_id_of_another_user(void **state)
{
    (void)state;
    chat_wsc *a = ws_open(E.alice);
    answer x;
    ask_with(a, QUESTION, "\"session_id\":\"alice-private-1\"", &x);
    assert_full_answer(&x);
    assert_string_equal(jstr(x.complete, "session_id"), "alice-private-1");
    assert_string_equal(context_model_of(&x), "seawind-250");
    answer_clear(&x);

    chat_wsc *b = ws_open(E.bob);
    answer y;
    ask_with(b, "And its fuel capacity?", "\"session_id\":\"alice-private-1\"", &y);
    assert_full_answer(&y);
    assert_string_equal(jstr(y.complete, "session_id"), "alice-private-1");
    assert_string_not_equal(context_model_of(&y), "seawind-250"); /* none of alice's history */
    answer_clear(&y);
    /* alice's follow-up is still read with hers */
    ask_with(a, "And its fuel capacity?", "\"session_id\":\"alice-private-1\"", &x);
    assert_full_answer(&x);
    assert_string_equal(context_model_of(&x), "seawind-250");
    answer_clear(&x);
    assert_int_equal(stored_of("alice", "alice-private-1"), 4);
    assert_int_equal(stored_of("bob", "alice-private-1"), 2);
    expect_usable(a); /* alice's connection saw nothing of bob's turn */
    chat_wsc_close(a, 1000, NULL);
    chat_wsc_close(b, 1000, NULL);
}

static void test_partial_false(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    answer a;
    ask_with(c, QUESTION, "\"partial\":false", &a);
    assert_non_null(a.complete);
    assert_true(a.ntokens > 0);
    assert_true(a.partial_never);
    assert_string_equal(jstr(a.complete, "response"), a.tokens.data);
    answer_clear(&a);
    chat_wsc_close(c, 1000, NULL);
}

static void send_cancel_once(chat_wsc *c, answer *a, void *ud)
{
    bool *sent = ud;
    if (*sent || a->ntokens < 2) return;
    send_str(c, "{\"type\":\"cancel\"}");
    *sent = true;
}

static void test_cancel(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    answer full;
    ask(c, QUESTION, &full); /* the uncancelled answer, for comparison */
    assert_full_answer(&full);

    answer a;
    answer_init(&a);
    bool sent = false;
    send_message(c, QUESTION, "\"session_id\":\"cancel-test-1\"");
    collect(c, &a, ANSWER_MS, send_cancel_once, &sent);
    assert_true(sent);
    assert_non_null(a.complete);
    json_object *m = jget(a.complete, "metadata");
    assert_string_equal(jstr(m, "finish_reason"), "cancelled");
    const char *resp = jstr(a.complete, "response");
    assert_string_equal(resp, a.tokens.data); /* the partial response: what was streamed */
    assert_true(strlen(resp) < strlen(jstr(full.complete, "response")));
    answer_clear(&a);
    answer_clear(&full);
    /* A cancel with nothing in flight is harmless. */
    send_str(c, "{\"type\":\"cancel\"}");
    expect_usable(c);
    chat_wsc_close(c, 1000, NULL);
}

/* Stops reading and drops the TCP connection after the first token. */
static void drop_after_first_token(chat_wsc *c, answer *a, void *ud)
{
    if (a->ntokens == 1) chat_wsc_close(c, 0, NULL), *(bool *)ud = true;
}

static int finish_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    snprintf(ud, 64, "%s", v[0] ? v[0] : "");
    return 0;
}

/* With CHAT_ORPHAN_POLICY=cancel and no grace (this file's workers), a client that disconnects
 * mid-answer cancels its job: the worker stops generating, and the turn is stored with finish_reason
 * "cancelled" well before the full answer would have been done. */
static void test_disconnect_cancels_job(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    answer a;
    answer_init(&a);
    send_message(c, QUESTION, "\"session_id\":\"disconnect-test-1\"");
    bool dropped = false;
    long long deadline = e2e_now_ms() + ANSWER_MS;
    while (!dropped && e2e_now_ms() < deadline) {
        json_object *o = NULL;
        if (chat_wsc_recv_json(c, 1000, &o)) continue;
        if (!strcmp(jstr(o, "type"), "token")) a.ntokens++, drop_after_first_token(c, &a, &dropped);
        json_object_put(o);
    }
    assert_true(dropped);
    chat_config cfg = testutil_config("streamer");
    chat_db *db = chat_db_new(&cfg);
    char finish[64] = "", err[256];
    for (int i = 0; i < 50 && !finish[0]; i++) {
        usleep(100 * 1000);
        assert_int_equal(chat_db_run(db,
                                     "SELECT JSON_VALUE(metadata, '$.finish_reason') FROM chat_messages"
                                     " WHERE session_id = 'disconnect-test-1' AND role = 'assistant'",
                                     NULL, 0, finish_row, finish, NULL, NULL, err, sizeof err),
                         0);
    }
    assert_string_equal(finish, "cancelled");
    chat_db_free(db);
    answer_clear(&a);
}

static void test_queueing(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    const char *questions[] = {QUESTION, "What is the warranty on a new boat?", "How long is the Seawind 190?"};
    for (int i = 0; i < 3; i++)
        send_message(c, questions[i], "\"session_id\":\"queue-test-1\"");
    /* Answers come one after the other, in order, never interleaved. */
    char *responses[3];
    for (int i = 0; i < 3; i++) {
        answer a;
        answer_init(&a);
        collect(c, &a, ANSWER_MS, NULL, NULL);
        assert_full_answer(&a);
        responses[i] = strdup(jstr(a.complete, "response"));
        answer_clear(&a);
    }
    /* Each answer belongs to its question: asked alone, the third gives the same text as queued. */
    assert_string_not_equal(responses[0], responses[2]);
    answer alone;
    answer_init(&alone);
    send_message(c, questions[2], "\"session_id\":\"queue-test-2\"");
    collect(c, &alone, ANSWER_MS, NULL, NULL);
    assert_full_answer(&alone);
    assert_string_equal(jstr(alone.complete, "response"), responses[2]);
    answer_clear(&alone);
    for (int i = 0; i < 3; i++)
        free(responses[i]);
    chat_wsc_close(c, 1000, NULL);
}

/* ---------------------------------------------------------------- frames and limits */

static void test_oversized_frames(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    /* 100 KB in one frame: skipped, MESSAGE_TOO_LONG, connection kept. */
    size_t n = 100 * 1024;
    char *big = malloc(n);
    memset(big, ' ', n);
    memcpy(big, "{\"type\":\"message\",\"message\":\"", 29);
    memcpy(big + n - 2, "\"}", 2);
    for (size_t i = 29; i < n - 2; i++)
        big[i] = 'x';
    assert_int_equal(chat_wsc_send_text(c, big, n), 0);
    expect_error(c, "MESSAGE_TOO_LONG");
    /* The same in ten fragments. */
    for (int i = 0; i < 10; i++)
        assert_int_equal(chat_wsc_send_frame(c, i ? CHAT_WS_CONT : CHAT_WS_TEXT, i == 9, big + i * (n / 10), n / 10),
                         0);
    expect_error(c, "MESSAGE_TOO_LONG");
    /* A small message in fragments is reassembled and answered. */
    const char *ping = "{\"type\":\"ping\"}";
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_TEXT, false, ping, 5), 0);
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_CONT, false, ping + 5, 5), 0);
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_CONT, true, ping + 10, strlen(ping) - 10), 0);
    json_object *o = next_json(c, 5000);
    assert_string_equal(jstr(o, "type"), "pong");
    json_object_put(o);
    expect_usable(c);
    chat_wsc_close(c, 1000, NULL);

    /* An absurd frame (2 MB announced) is closed with 1009 before its payload is read. */
    c = ws_open(E.alice);
    unsigned char hdr[14] = {0x81, 0x80 | 127, 0, 0, 0, 0, 0, 0x20, 0, 0, 1, 2, 3, 4};
    assert_int_equal(chat_wsc_send_raw(c, hdr, sizeof hdr), 0);
    chat_wsc_send_raw(c, big, 4096); /* some payload; the server may close before taking it */
    assert_int_equal(wait_closed(c, 5000), 1009);
    chat_wsc_close(c, 0, NULL);
    free(big);
}

static void test_invalid_utf8_and_binary(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    const char bad[] = "{\"type\":\"message\",\"message\":\"\xff\xfe\"}";
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_TEXT, true, bad, sizeof bad - 1), 0);
    assert_int_equal(wait_closed(c, 5000), 1007);
    chat_wsc_close(c, 0, NULL);

    c = ws_open(E.alice);
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_BINARY, true, "\x01\x02\x03", 3), 0);
    assert_int_equal(wait_closed(c, 5000), 1003);
    chat_wsc_close(c, 0, NULL);
}

/* RFC 6455 section 5.1: a client frame without a mask closes the connection with 1002, whatever the
 * frame (data or control, alone or after a masked one in the same write, its header split across
 * writes); the application never sees it (no pong for an unmasked {"type":"ping"}). */
static void test_unmasked_frame(void **state)
{
    (void)state;
    static const char ping[] = "{\"type\":\"ping\"}";
    unsigned char text[2 + sizeof ping - 1] = {0x81, (unsigned char)(sizeof ping - 1)};
    memcpy(text + 2, ping, sizeof ping - 1);
    static const unsigned char pong[] = {0x8a, 0x00};
    const struct {
        const char *name;
        const unsigned char *bytes;
        size_t len;
        bool masked_first; /* a masked frame in the same write before it */
        size_t split;      /* > 0: the bytes go in two writes, split there */
    } cases[] = {{"text", text, sizeof text, false, 0},
                 {"empty pong", pong, sizeof pong, false, 0},
                 {"after a masked frame", text, sizeof text, true, 0},
                 {"header split", text, sizeof text, false, 1}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_wsc *c = ws_open(E.alice);
        unsigned char buf[64];
        size_t n = 0;
        if (cases[i].masked_first) { /* a masked empty pong: header, key, no payload */
            static const unsigned char masked_pong[] = {0x8a, 0x80, 1, 2, 3, 4};
            memcpy(buf, masked_pong, sizeof masked_pong);
            n = sizeof masked_pong;
        }
        memcpy(buf + n, cases[i].bytes, cases[i].len);
        n += cases[i].len;
        size_t first = cases[i].split ? cases[i].split : n;
        assert_int_equal(chat_wsc_send_raw(c, buf, first), 0);
        if (first < n) {
            e2e_sleep_ms(100);
            assert_int_equal(chat_wsc_send_raw(c, buf + first, n - first), 0);
        }
        const char *m = NULL;
        int rc = chat_wsc_recv(c, 5000, &m, NULL);
        if (rc != CHAT_ERR) fail_msg("%s: rc %d (%s) instead of a close", cases[i].name, rc, rc ? "" : m);
        if (chat_wsc_close_code(c) != 1002 || strcmp(chat_wsc_close_reason(c), "unmasked frame"))
            fail_msg("%s: close %d %s", cases[i].name, chat_wsc_close_code(c), chat_wsc_close_reason(c));
        chat_wsc_close(c, 0, NULL);
    }
}

/* ---------------------------------------------------------------- workers failing */

/* The pid of the first worker the streamer on port lists as busy (an answer running), or 0. */
static pid_t busy_worker(int port)
{
    pid_t pid = 0;
    json_object *st = status_of(port);
    json_object *ws = jget(st, "workers");
    for (size_t i = 0; ws && i < json_object_array_length(ws) && !pid; i++) {
        json_object *w = json_object_array_get_idx(ws, i);
        if (json_object_get_boolean(jget(w, "busy"))) pid = json_object_get_int(jget(w, "pid"));
    }
    json_object_put(st);
    return pid;
}

static void kill_busy_worker(chat_wsc *c, answer *a, void *ud)
{
    (void)c;
    pid_t *killed = ud;
    if (*killed || a->ntokens < 1) return;
    *killed = busy_worker(E.port);
    if (*killed) kill(*killed, SIGKILL);
}

/* At the first token: cancels, then kills the busy worker, so the cancel is ahead of the broker's news
 * of the death and the cancelled job ends by losing its worker (or, when the worker acknowledged the
 * cancel before it died, as any cancel ends). Killing first raced: the broker could learn of the death
 * before the cancel reached it, and the job then ended as a lost worker's does. */
static void cancel_then_kill(chat_wsc *c, answer *a, void *ud)
{
    pid_t *killed = ud;
    if (*killed || a->ntokens < 1) return;
    pid_t pid = busy_worker(E.port);
    if (!pid) return;
    send_str(c, "{\"type\":\"cancel\"}");
    kill(pid, SIGKILL);
    *killed = pid;
}

static void test_cancel_then_worker_lost(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    answer a;
    answer_init(&a);
    pid_t killed = 0;
    send_message(c, QUESTION, NULL);
    collect(c, &a, ANSWER_MS, cancel_then_kill, &killed);
    assert_true(killed > 0);
    assert_non_null(a.complete); /* not PROCESSING_ERROR: the client asked for the end */
    assert_string_equal(jstr(jget(a.complete, "metadata"), "finish_reason"), "cancelled");
    assert_string_equal(jstr(a.complete, "response"), a.tokens.data);
    answer_clear(&a);
    wait_workers(E.port, 2, 15000); /* the supervisor replaces the worker */
    expect_usable(c);
    chat_wsc_close(c, 1000, NULL);
}

static void test_worker_killed_mid_answer(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    answer a;
    answer_init(&a);
    pid_t killed = 0;
    send_message(c, QUESTION, "\"session_id\":\"kill-test-1\"");
    long long t0 = e2e_now_ms();
    collect(c, &a, ANSWER_MS, kill_busy_worker, &killed);
    assert_true(killed > 0);
    /* Tokens were sent, so no retry: PROCESSING_ERROR, within the heartbeat deadline. */
    if (!a.complete) assert_string_equal(a.error, "PROCESSING_ERROR");
    assert_true(e2e_now_ms() - t0 < 6000);
    answer_clear(&a);
    /* The supervisor replaces the worker; the same connection works again. */
    pid_t kids[8];
    long long deadline = e2e_now_ms() + 10000;
    for (;;) {
        int n = e2e_children(E.workers, kids, 8);
        bool replaced = n == 2;
        for (int i = 0; i < n; i++)
            replaced &= kids[i] != killed;
        if (replaced) break;
        assert_true(e2e_now_ms() < deadline);
        e2e_sleep_ms(50);
    }
    wait_workers(E.port, 2, 10000);
    ask(c, QUESTION, &a);
    assert_full_answer(&a);
    answer_clear(&a);
    chat_wsc_close(c, 1000, NULL);
}

static void test_no_workers(void **state)
{
    (void)state;
    char endpoint[400];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/none.ipc", E.dir);
    int port;
    const char *extra[] = {"CHAT_STREAMER_START_WAIT_MS=0", NULL}; /* no workers on their way */
    pid_t pid = streamer_start("noworkers", endpoint, extra, &port);
    chat_wsc *c = ws_open_on(port, E.alice);
    for (int i = 0; i < 2; i++) {
        long long t0 = e2e_now_ms();
        send_message(c, QUESTION, NULL);
        expect_error(c, "OVERLOADED");
        assert_true(e2e_now_ms() - t0 < 1000);
    }
    expect_usable(c);
    chat_wsc_close(c, 1000, NULL);
    stop_streamer(pid);
}

/* ---------------------------------------------------------------- rate limit, slow readers */

/* A streamer with a pool of its own: one worker process with `slots` slots pacing tokens by delay_ms and
 * batching later tokens over flush_ms (-1: the default), with the worker settings wextra besides
 * (NULL-terminated, may be NULL). Returns the streamer's pid; *workers gets the pool's. */
static pid_t private_stack_env(const char *name, int slots, int delay_ms, int flush_ms, const char *const extra[],
                               const char *const wextra[], int *port, pid_t *workers)
{
    char endpoint[400], delay_env[40], flush_env[40], log[64];
    own_endpoint(endpoint, sizeof endpoint, name);
    snprintf(delay_env, sizeof delay_env, "CHAT_TOKEN_DELAY_MS=%d", delay_ms);
    snprintf(flush_env, sizeof flush_env, "CHAT_TOKEN_FLUSH_MS=%d", flush_ms);
    snprintf(log, sizeof log, "%s-worker", name);
    const char *own[] = {delay_env, "CHAT_LLM_PROVIDER=extractive", "CHAT_LOG_LEVEL=warn",
                         flush_ms >= 0 ? flush_env : NULL, NULL};
    *workers = pool_spawn(log, endpoint, 1, slots, own, wextra);
    pid_t pid = streamer_start(name, endpoint, extra, port);
    wait_workers(*port, slots, 10000);
    return pid;
}

/* The same without worker settings of its own. */
static pid_t private_stack_flush(const char *name, int slots, int delay_ms, int flush_ms, const char *const extra[],
                                 int *port, pid_t *workers)
{
    return private_stack_env(name, slots, delay_ms, flush_ms, extra, NULL, port, workers);
}

static pid_t private_stack(const char *name, int slots, int delay_ms, const char *const extra[], int *port,
                           pid_t *workers)
{
    return private_stack_flush(name, slots, delay_ms, -1, extra, port, workers);
}

/* A connection of alice's to a private streamer, authenticated by ?token=; its first frame is read.
 * empty_pongs: the client answers pings with empty pongs (chat_wsc_opts). */
static chat_wsc *open_alice_with(int port, bool empty_pongs)
{
    char url[2200], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ws/chat?token=%s", port, E.alice);
    chat_wsc_opts o = {.timeout_ms = 5000, .empty_pongs = empty_pongs};
    chat_wsc *c = chat_wsc_connect(url, &o, NULL, err, sizeof err);
    if (!c) fail_msg("connect: %s", err);
    json_object_put(next_json(c, 5000));
    return c;
}

static chat_wsc *open_alice(int port)
{
    return open_alice_with(port, false);
}

static void note_first_token(chat_wsc *c, answer *a, void *ud)
{
    (void)c;
    long long *at = ud;
    if (a->ntokens == 1 && !*at) *at = e2e_now_ms();
}

/* Token batching in the worker (CHAT_TOKEN_FLUSH_MS) saves wake-ups, never frames: the first token leaves
 * alone and at once, later ones are gathered per interval on their way to the streamer, and a client that
 * keeps up still gets one token frame per piece the model produced, with a 300 ms interval, without one,
 * and without a token delay (the answer generated on the stage thread at once, its pieces leaving with
 * complete in one event). */
static void test_token_batching(void **state)
{
    (void)state;
    static const struct {
        const char *name;
        int delay_ms, flush_ms;
    } cases[] = {{"batch", 10, 300}, {"nobatch", 10, 0}, {"instant", 0, 300}, {"instant-nobatch", 0, 0}};
    for (size_t k = 0; k < CHAT_ARRAY_LEN(cases); k++) {
        int port;
        pid_t workers;
        pid_t pid = private_stack_flush(cases[k].name, 1, cases[k].delay_ms, cases[k].flush_ms, NULL, &port, &workers);
        chat_wsc *c = open_alice(port);
        answer a;
        ask(c, QUESTION, &a); /* warms the worker up (connection, statements, vocabulary) */
        answer_clear(&a);
        answer_init(&a);
        long long first_at = 0, t0 = e2e_now_ms();
        send_message(c, QUESTION, NULL);
        collect(c, &a, ANSWER_MS, note_first_token, &first_at);
        assert_full_answer(&a); /* same text, order and partial_response either way */
        assert_true(first_at > 0 && first_at - t0 < 250); /* never held for the interval */
        json_object *usage = jget(jget(a.complete, "metadata"), "usage");
        int tokens = json_object_get_int(jget(usage, "completion_tokens"));
        assert_true(tokens >= 20);
        if (a.ntokens != tokens) fail_msg("%s: %d token frames for %d tokens", cases[k].name, a.ntokens, tokens);
        answer_clear(&a);
        chat_wsc_close(c, 1000, NULL);
        stop_stack(pid, workers);
    }
}

/* ---------------------------------------------------------------- the openai provider, end to end */

/* A streamer whose one worker process (8 slots) asks the fake OpenAI server for `model`, with the worker's
 * environment changed further by wextra (NULL-terminated, may be NULL). */
static pid_t openai_stack_env(const char *name, int llm_port, const char *model, const char *const *wextra, int *port,
                              pid_t *workers)
{
    char endpoint[400], base[128], model_env[64], log[64];
    own_endpoint(endpoint, sizeof endpoint, name);
    snprintf(base, sizeof base, "LLM_BASE_URL=http://127.0.0.1:%d/v1", llm_port);
    snprintf(model_env, sizeof model_env, "LLM_MODEL=%s", model);
    snprintf(log, sizeof log, "%s-worker", name);
    const char *own[] = {"CHAT_LLM_PROVIDER=openai", base, model_env, "LLM_API_KEY=sk-e2e-test",
                         "LLM_STALL_TIMEOUT_MS=60000", "CHAT_LOG_LEVEL=warn", NULL};
    *workers = pool_spawn(log, endpoint, 1, 8, own, wextra);
    const char *extra[] = {"CHAT_RATE_LIMIT_PER_MIN=100000", NULL};
    pid_t pid = streamer_start(name, endpoint, extra, port);
    wait_workers(*port, 8, 10000);
    return pid;
}

static pid_t openai_stack(const char *name, int llm_port, const char *model, int *port, pid_t *workers)
{
    return openai_stack_env(name, llm_port, model, NULL, port, workers);
}

/* The fake OpenAI server of a test (its setup starts it, its teardown stops it, failed or not). */
typedef struct fake_llm {
    pid_t pid;
    int port;
} fake_llm;

static int fake_llm_setup(void **state)
{
    static fake_llm f;
    f.pid = testutil_fake_llm_start(&f.port);
    *state = &f;
    return f.pid > 0 ? 0 : -1;
}

static int fake_llm_teardown(void **state)
{
    fake_llm *f = *state;
    testutil_fake_llm_stop(f->pid);
    f->pid = -1;
    return 0;
}

/* After the first token, waits for the model to fall silent, then cancels. */
typedef struct stall_cancel {
    bool sent;
    long long at;
} stall_cancel;

static void cancel_in_silence(chat_wsc *c, answer *a, void *ud)
{
    stall_cancel *sc = ud;
    if (sc->sent || a->ntokens < 1) return;
    e2e_sleep_ms(300); /* fake-stall sends three chunks at once, then nothing for 30 s */
    send_str(c, "{\"type\":\"cancel\"}");
    sc->sent = true;
    sc->at = e2e_now_ms();
}

/* The worker with the openai provider: six answers stream at once from one process (one libcurl multi
 * handle on its generator thread), each with every event of the protocol and the model's own text; a
 * cancel stops a model that went silent mid-answer at once (complete, finish_reason cancelled, the
 * partial text), where the stall timeout is a minute away. */
static void test_openai_through_worker(void **state)
{
    int llm_port = ((fake_llm *)*state)->port;
    int port;
    pid_t workers;
    pid_t pid = openai_stack("oai", llm_port, "fake-ok", &port, &workers);
    enum { N = 6 };
    chat_wsc *cs[N];
    for (int k = 0; k < N; k++) cs[k] = open_alice(port);
    for (int k = 0; k < N; k++) send_message(cs[k], QUESTION, NULL);
    for (int k = 0; k < N; k++) {
        answer a;
        answer_init(&a);
        collect(cs[k], &a, ANSWER_MS, NULL, NULL);
        assert_full_answer(&a);
        assert_non_null(strstr(a.tokens.data, "You asked about:")); /* the fake model's answer */
        assert_true(a.ntokens >= 1);
        json_object *m = jget(a.complete, "metadata");
        assert_string_equal(jstr(m, "provider"), "openai");
        answer_clear(&a);
        chat_wsc_close(cs[k], 1000, NULL);
    }
    stop_stack(pid, workers);

    pid = openai_stack("oaistall", llm_port, "fake-stall", &port, &workers);
    chat_wsc *c = open_alice(port);
    answer a;
    answer_init(&a);
    stall_cancel sc = {false, 0};
    send_message(c, QUESTION, NULL);
    collect(c, &a, ANSWER_MS, cancel_in_silence, &sc);
    bool sent = sc.sent;
    long long t0 = sc.at;
    assert_true(sent);
    assert_true(e2e_now_ms() - t0 < 500); /* not the 60 s stall timeout, not even a polling interval */
    assert_non_null(a.complete);
    assert_string_equal(jstr(jget(a.complete, "metadata"), "finish_reason"), "cancelled");
    assert_string_equal(jstr(a.complete, "response"), a.tokens.data);
    answer_clear(&a);
    expect_usable(c);
    chat_wsc_close(c, 1000, NULL);
    stop_stack(pid, workers);
}

/* The model the fake LLM server was last asked for, and whether its system message opens with prompt. */
static void expect_last_asked(int llm_port, const char *model, const char *prompt)
{
    json_object *last = testutil_fake_llm_last(llm_port);
    assert_non_null(last);
    assert_string_equal(jstr(last, "model"), model);
    const char *system = jstr(last, "system");
    assert_non_null(system);
    if (strncmp(system, prompt, strlen(prompt))) fail_msg("system message '%.60s' is not '%s'", system, prompt);
    json_object_put(last);
}

/* SIGHUP to the worker supervisor reaches its worker: the next answer is asked with the agent's new prompt
 * and model from CHAT_PROMPTS_DIR. */
static void test_sighup_reloads_agent_settings(void **state)
{
    int llm_port = ((fake_llm *)*state)->port;
    char dir[512], path[600], env[600];
    snprintf(dir, sizeof dir, "%s", testutil_copy_dir("prompts", "e2e_prompts"));
    snprintf(path, sizeof path, "%s/agents.conf", dir);
    assert_int_equal(testutil_write_file(path, "[specs]\nmodel = fake-before-reload\n"), 0);
    snprintf(env, sizeof env, "CHAT_PROMPTS_DIR=%s", dir);
    const char *wextra[] = {env, NULL};
    int port;
    pid_t workers;
    pid_t pid = openai_stack_env("reload", llm_port, "fake-ok", wextra, &port, &workers);
    chat_wsc *c = open_alice(port);
    answer a;
    ask(c, QUESTION, &a);
    assert_full_answer(&a);
    answer_clear(&a);
    expect_last_asked(llm_port, "fake-before-reload", "You are the Seawind Marine specs assistant");

    assert_int_equal(testutil_write_file(path, "[specs]\nmodel = fake-after-reload\n"), 0);
    snprintf(path, sizeof path, "%s/specs.txt", dir);
    assert_int_equal(testutil_write_file(path, "Reloaded prompt.\n"), 0);
    assert_int_equal(kill(workers, SIGHUP), 0);
    e2e_sleep_ms(300); /* the supervisor passes it on within its 50 ms loop */
    ask(c, QUESTION, &a);
    assert_full_answer(&a);
    answer_clear(&a);
    expect_last_asked(llm_port, "fake-after-reload", "Reloaded prompt.\n");
    assert_int_equal(e2e_children(workers, (pid_t[1]){0}, 1), 1); /* the worker lived through it */

    chat_wsc_close(c, 1000, NULL);
    stop_stack(pid, workers);
    testutil_rmdir(dir);
}

/* Through the worker: a provider that is down before its first token is retried, then the chain's
 * offline provider answers; the complete event says so and lists the attempts. */
static void test_fallback_through_worker(void **state)
{
    int llm_port = ((fake_llm *)*state)->port;
    const char *wextra[] = {"CHAT_LLM_FALLBACK=extractive", "LLM_RETRY_BACKOFF_MS=20", NULL};
    int port;
    pid_t workers;
    pid_t pid = openai_stack_env("fallback", llm_port, "fake-503-always", wextra, &port, &workers);
    chat_wsc *c = open_alice(port);
    answer a;
    ask(c, QUESTION, &a);
    assert_full_answer(&a);
    json_object *m = jget(a.complete, "metadata"), *attempts = jget(m, "attempts");
    assert_string_equal(jstr(m, "provider"), "extractive");
    assert_non_null(strstr(a.tokens.data, "Seawind 250"));
    assert_int_equal(json_object_array_length(attempts), 3);
    static const char *const outcomes[] = {"unavailable", "unavailable", "ok"};
    for (size_t i = 0; i < 3; i++)
        assert_string_equal(jstr(json_object_array_get_idx(attempts, i), "outcome"), outcomes[i]);
    assert_string_equal(jstr(json_object_array_get_idx(attempts, 0), "model"), "fake-503-always");
    answer_clear(&a);
    chat_wsc_close(c, 1000, NULL);
    stop_stack(pid, workers);
}

/* One worker, answers requested back to back: the next job reaches the worker the moment the broker
 * sees the previous complete, before the worker has quite finished with it. None may be refused. */
static void test_single_worker_back_to_back(void **state)
{
    (void)state;
    const char *extra[] = {"CHAT_RATE_LIMIT_PER_MIN=100000", NULL};
    int port;
    pid_t workers;
    pid_t pid = private_stack("single", 1, 0, extra, &port, &workers);
    /* Six clients with four messages queued each keep jobs waiting in the broker: each is dispatched
     * the moment the worker's previous answer completes. */
    chat_wsc *cs[6];
    for (int k = 0; k < 6; k++) cs[k] = open_alice(port);
    for (int round = 0; round < 3; round++) {
        for (int k = 0; k < 6; k++)
            for (int i = 0; i < 4; i++) send_message(cs[k], QUESTION, "\"partial\":false");
        for (int k = 0; k < 6; k++)
            for (int i = 0; i < 4; i++) {
                answer a;
                answer_init(&a);
                collect(cs[k], &a, ANSWER_MS, NULL, NULL);
                if (!a.complete) fail_msg("round %d, client %d, turn %d ended with %s", round, k, i, a.error);
                answer_clear(&a);
            }
    }
    for (int k = 1; k < 6; k++) chat_wsc_close(cs[k], 1000, NULL);
    chat_wsc *c = cs[0];
    chat_wsc_close(c, 1000, NULL);
    stop_stack(pid, workers);
}

/* The threads of a process (its /proc/<pid>/task entries); -1 when it cannot be read. */
static int thread_count(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* One worker process with 24 slots streams 24 paced answers at the same time, with a handful of threads:
 * a slot is an answer in flight, not a thread (the generations share one event loop). */
static void test_worker_slots_run_concurrently(void **state)
{
    (void)state;
    enum { SLOTS = 24 };
    const char *extra[] = {"CHAT_RATE_LIMIT_PER_MIN=100000", NULL};
    int port;
    pid_t workers;
    pid_t pid = private_stack("slots", SLOTS, 15, extra, &port, &workers);
    pid_t kids[4];
    assert_int_equal(e2e_children(workers, kids, 4), 1); /* one process */
    chat_wsc *cs[SLOTS];
    for (int k = 0; k < SLOTS; k++) cs[k] = open_alice(port);
    for (int k = 0; k < SLOTS; k++) send_message(cs[k], QUESTION, NULL);
    int max_busy = 0, threads = 0;
    for (int i = 0; i < 80 && max_busy < SLOTS; i++) {
        int busy = status_int(port, "workers_busy");
        if (busy > max_busy) max_busy = busy, threads = thread_count(kids[0]);
        e2e_sleep_ms(25);
    }
    assert_int_equal(max_busy, SLOTS);
    /* main, the stage threads (CHAT_WORKER_DB_CONNS, 4), the generator, ZeroMQ's and libcurl's own */
    if (threads < 1 || threads > 12) fail_msg("%d threads in the worker while %d answers stream", threads, SLOTS);
    for (int k = 0; k < SLOTS; k++) {
        answer a;
        answer_init(&a);
        collect(cs[k], &a, ANSWER_MS, NULL, NULL);
        assert_full_answer(&a);
        answer_clear(&a);
        chat_wsc_close(cs[k], 1000, NULL);
    }
    stop_stack(pid, workers);
}

/* A worker process with three slots dies while three answers stream from it: every one of the three
 * ends (complete, or PROCESSING_ERROR once tokens went out) within the heartbeat deadline, none hangs,
 * and after the supervisor's replacement each connection gets full answers again. */
typedef struct slots_kill {
    pid_t supervisor;
    pid_t killed;
} slots_kill;

static void kill_worker_process(chat_wsc *c, answer *a, void *ud)
{
    (void)c;
    slots_kill *k = ud;
    if (k->killed || a->ntokens < 1) return;
    pid_t kids[4];
    if (e2e_children(k->supervisor, kids, 4) != 1) return;
    k->killed = kids[0];
    kill(k->killed, SIGKILL);
}

static void test_worker_with_slots_killed(void **state)
{
    (void)state;
    int port;
    pid_t workers;
    pid_t pid = private_stack("slotkill", 3, 15, NULL, &port, &workers);
    chat_wsc *cs[3];
    for (int k = 0; k < 3; k++) cs[k] = open_alice(port);
    for (int k = 0; k < 3; k++) send_message(cs[k], QUESTION, NULL);
    for (int i = 0; i < 200 && status_int(port, "workers_busy") < 3; i++) e2e_sleep_ms(10);
    assert_int_equal(status_int(port, "workers_busy"), 3); /* all three on the one process */
    slots_kill k = {.supervisor = workers};
    long long t0 = e2e_now_ms();
    for (int i = 0; i < 3; i++) {
        answer a;
        answer_init(&a);
        collect(cs[i], &a, ANSWER_MS, kill_worker_process, &k);
        if (!a.complete) assert_string_equal(a.error, "PROCESSING_ERROR");
        answer_clear(&a);
    }
    assert_true(k.killed > 0);
    assert_true(e2e_now_ms() - t0 < 8000);
    wait_workers(port, 3, 15000);
    for (int i = 0; i < 3; i++) {
        answer a;
        answer_init(&a);
        ask(cs[i], QUESTION, &a);
        assert_full_answer(&a);
        answer_clear(&a);
        chat_wsc_close(cs[i], 1000, NULL);
    }
    stop_stack(pid, workers);
}

static void expect_type(chat_wsc *c, const char *type, int timeout_ms)
{
    json_object *o = next_json(c, timeout_ms);
    if (!jstr(o, "type") || strcmp(jstr(o, "type"), type))
        fail_msg("expected %s, got %s", type, json_object_to_json_string(o));
    json_object_put(o);
}

/* Token refresh on an open socket (CHAT_AUTH_REFRESH_LEAD_S=3, no leeway): auth_expiring arrives 3 s
 * before exp; an auth with a fresh token for the same user, sent while an answer streams, is answered
 * auth_success among the tokens, the answer goes on, and messages are accepted after the old exp (a
 * connection that did not refresh gets AUTH_REQUIRED, as before); a token for another user is refused
 * with USER_MISMATCH and the connection stays its user's. */
static void test_token_refresh(void **state)
{
    (void)state;
    const char *extra[] = {"CHAT_AUTH_REFRESH_LEAD_S=3", "JWT_LEEWAY=0", "CHAT_RATE_LIMIT_PER_MIN=100000", NULL};
    int port;
    pid_t workers;
    pid_t pid = private_stack("refresh", 2, 40, extra, &port, &workers);
    time_t t0 = time(NULL);
    long long exp = (long long)t0 + 6;
    char *short_lived = chat_jwt_mint_hs256(SECRET, "alice", "alice@example.com", "Test alice", t0, 6);
    assert_non_null(short_lived);
    chat_wsc *c = ws_open_at(port, "/ws/chat", NULL, NULL), *plain = ws_open_at(port, "/ws/chat", NULL, NULL);
    assert_non_null(c);
    assert_non_null(plain);
    send_auth(c, short_lived);
    expect_type(c, "auth_success", 5000);
    send_auth(plain, short_lived);
    expect_type(plain, "auth_success", 5000);

    /* (1) auth_expiring, the lead before exp */
    json_object *o = next_json(c, 8000);
    long long at = (long long)time(NULL);
    if (strcmp(jstr(o, "type"), "auth_expiring")) fail_msg("got %s", json_object_to_json_string(o));
    int expires_in = json_object_get_int(jget(o, "expires_in"));
    if (expires_in < 1 || expires_in > 3 || at < exp - 3 || at >= exp)
        fail_msg("auth_expiring at exp%+lld with expires_in %d", at - exp, expires_in);
    json_object_put(o);
    expect_type(plain, "auth_expiring", 5000);

    /* (2) a refresh while an answer streams */
    send_message(c, QUESTION, "\"session_id\":\"refresh-alice-1\"");
    answer a;
    answer_init(&a);
    int tokens_at_success = -1;
    while (!a.complete) {
        o = next_json(c, ANSWER_MS);
        const char *type = jstr(o, "type");
        if (!strcmp(type, "token")) {
            chat_buf_puts(&a.tokens, jstr(o, "token"));
            if (a.ntokens++ == 0) send_auth(c, E.alice); /* a fresh token, an hour long */
        } else if (!strcmp(type, "auth_success")) {
            assert_string_equal(jstr(jget(o, "user"), "id"), "alice");
            tokens_at_success = a.ntokens;
        } else if (!strcmp(type, "complete")) {
            a.complete = json_object_get(o);
        } else if (strcmp(type, "progress")) {
            fail_msg("unexpected %s", json_object_to_json_string(o));
        }
        json_object_put(o);
    }
    if (tokens_at_success < 1 || tokens_at_success >= a.ntokens)
        fail_msg("auth_success after token %d of %d: the answer did not go on streaming", tokens_at_success,
                 a.ntokens);
    assert_string_equal(jstr(a.complete, "response"), a.tokens.data);
    assert_string_equal(jstr(jget(a.complete, "metadata"), "finish_reason"), "stop");
    answer_clear(&a);

    /* (3) after the old exp: the refreshed connection is served, the other must authenticate again */
    while ((long long)time(NULL) <= exp)
        e2e_sleep_ms(100);
    ask(c, QUESTION, &a);
    assert_full_answer(&a);
    answer_clear(&a);
    send_message(plain, QUESTION, NULL);
    expect_error(plain, "AUTH_REQUIRED");

    /* (4) another user's token: refused, the connection (and every conversation on it) stays alice's */
    send_auth(c, E.bob);
    expect_auth_error(c, "USER_MISMATCH", "bob's token on alice's connection");
    ask_with(c, QUESTION, "\"session_id\":\"refresh-alice-1\"", &a);
    assert_full_answer(&a);
    answer_clear(&a);

    chat_wsc_close(c, 1000, NULL);
    chat_wsc_close(plain, 1000, NULL);
    free(short_lived);
    stop_stack(pid, workers);
}

static void test_rate_limited(void **state)
{
    (void)state;
    char endpoint[400];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/rate.ipc", E.dir);
    const char *extra[] = {"CHAT_RATE_LIMIT_PER_MIN=4", "CHAT_STREAMER_START_WAIT_MS=0", NULL};
    int port;
    pid_t pid = streamer_start("rate", endpoint, extra, &port);
    chat_wsc *c = open_alice(port);
    /* Burst 4: four messages pass the limiter (and find no worker), the fifth is refused. */
    for (int i = 0; i < 4; i++) {
        send_message(c, QUESTION, NULL);
        expect_error(c, "OVERLOADED");
    }
    send_message(c, QUESTION, NULL);
    expect_error(c, "RATE_LIMITED");
    expect_usable(c);
    /* Another connection has its own bucket. */
    chat_wsc *d = open_alice(port);
    send_message(d, QUESTION, NULL);
    expect_error(d, "OVERLOADED");
    chat_wsc_close(c, 1000, NULL);
    chat_wsc_close(d, 1000, NULL);
    stop_streamer(pid);
}

/* Unauthenticated messages and application pings are rate limited too (burst 4 here): messages in the
 * connection's bucket (AUTH_REQUIRED until it is empty, then RATE_LIMITED), pings in one of their own,
 * at the same rate, so pinging does not eat the budget of messages. */
static void test_rate_limited_unauthenticated_and_pings(void **state)
{
    (void)state;
    const char *extra[] = {"CHAT_RATE_LIMIT_PER_MIN=4", NULL};
    int port;
    pid_t pid = streamer_alone("rate2", extra, &port);
    chat_wsc *c = ws_open_at(port, "/ws/chat", NULL, NULL);
    assert_non_null(c);
    for (int i = 0; i < 4; i++) {
        send_message(c, QUESTION, NULL);
        expect_error(c, "AUTH_REQUIRED");
    }
    send_message(c, QUESTION, NULL);
    expect_error(c, "RATE_LIMITED");
    for (int i = 0; i < 4; i++)
        expect_usable(c); /* the pings' own bucket is full */
    send_str(c, "{\"type\":\"ping\"}");
    expect_error(c, "RATE_LIMITED");
    chat_wsc_close(c, 1000, NULL);
    stop_streamer(pid);
}

/* CHAT_STREAMER_AUTH_TIMEOUT_S=2: a connection that has not authenticated 2 s after it opened is closed
 * with 1008 "authentication timeout", even while it keeps sending (application pings); one that
 * authenticated in time, by message or in the query, stays. */
static void test_auth_deadline(void **state)
{
    (void)state;
    const char *extra[] = {"CHAT_STREAMER_AUTH_TIMEOUT_S=2", NULL};
    int port;
    pid_t pid = streamer_alone("authdeadline", extra, &port);
    long long t0 = e2e_now_ms();
    chat_wsc *anon = ws_open_at(port, "/ws/chat", NULL, NULL);
    chat_wsc *late = ws_open_at(port, "/ws/chat", NULL, NULL);
    chat_wsc *query = open_alice(port);
    assert_non_null(anon);
    assert_non_null(late);
    e2e_sleep_ms(1000);
    json_object_put(auth_reply(late, E.alice, "auth_success"));
    int code = 0;
    while (!code && e2e_now_ms() - t0 < 5000) {
        send_str(anon, "{\"type\":\"ping\"}");
        if (chat_wsc_recv(anon, 500, NULL, NULL) == CHAT_ERR) code = chat_wsc_close_code(anon);
    }
    long long took = e2e_now_ms() - t0;
    if (code != 1008 || strcmp(chat_wsc_close_reason(anon), "authentication timeout"))
        fail_msg("unauthenticated: close %d \"%s\" after %lld ms", code, chat_wsc_close_reason(anon), took);
    assert_true(took >= 1500);
    e2e_sleep_ms(1500); /* past the deadline of all three */
    expect_usable(late);
    expect_usable(query);
    chat_wsc_close(anon, 0, NULL);
    chat_wsc_close(late, 1000, NULL);
    chat_wsc_close(query, 1000, NULL);
    stop_streamer(pid);
}

/* A connection with no client message for CHAT_IDLE_TIMEOUT_S is closed with 1000; messages (here
 * application pings) keep one open. WebSocket pings from the server are answered by the client meanwhile
 * and do not count as activity. */
static void test_idle_timeout(void **state)
{
    (void)state;
    char endpoint[400];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/idle.ipc", E.dir);
    const char *extra[] = {"CHAT_IDLE_TIMEOUT_S=5", "CHAT_PING_INTERVAL_S=1", NULL};
    int port;
    pid_t pid = streamer_start("idle", endpoint, extra, &port);
    chat_wsc *idle = open_alice(port);
    chat_wsc *busy = open_alice(port);
    long long t0 = e2e_now_ms();
    int code = 0;
    while (!code && e2e_now_ms() - t0 < 9000) {
        expect_usable(busy);
        if (chat_wsc_recv(idle, 1000, NULL, NULL) == CHAT_ERR) code = chat_wsc_close_code(idle);
    }
    assert_int_equal(code, 1000);
    assert_string_equal(chat_wsc_close_reason(idle), "idle timeout");
    assert_true(e2e_now_ms() - t0 >= 4000);
    expect_usable(busy);
    chat_wsc_close(idle, 0, NULL);
    chat_wsc_close(busy, 1000, NULL);
    stop_streamer(pid);
}

/* Keepalive with the intervals shortened: pinged after 1 s of silence, dropped after 3 s without a
 * byte. A client that answers the pings with empty pongs (as browsers and python-websockets do to the
 * streamer's empty pings) stays connected well past the drop time, idle or while an answer paced to
 * outlast it streams, and gets the whole answer; a client that sends nothing is dropped. */
static void test_keepalive_empty_pongs(void **state)
{
    (void)state;
    const char *extra[] = {"CHAT_PING_INTERVAL_S=1", "CHAT_STREAMER_PING_TIMEOUT_S=3", "CHAT_IDLE_TIMEOUT_S=60", NULL};
    int port;
    pid_t workers;
    /* a token every 250 ms: the answer (about 35 tokens) takes over 8 s, twice the drop time and more */
    pid_t pid = private_stack("keepalive", 1, 250, extra, &port, &workers);
    chat_wsc *ponger = open_alice_with(port, true);
    chat_wsc *mute = open_alice(port); /* never reads, so never answers a ping */
    long long t0 = e2e_now_ms();
    while (e2e_now_ms() - t0 < 7000) { /* reading answers the pings */
        int rc = chat_wsc_recv(ponger, 250, NULL, NULL);
        if (rc != CHAT_ETIMEOUT)
            fail_msg("idle ponger: rc %d, close %d after %lld ms", rc, chat_wsc_close_code(ponger), e2e_now_ms() - t0);
    }
    assert_int_equal(wait_closed(mute, 1000), 1006); /* dropped without a close frame */
    expect_usable(ponger);
    answer a;
    t0 = e2e_now_ms();
    ask(ponger, QUESTION, &a);
    long long took = e2e_now_ms() - t0;
    if (a.closed) fail_msg("the answer was cut after %lld ms and %d tokens", took, a.ntokens);
    assert_full_answer(&a);
    if (took < 6000) fail_msg("the answer took %lld ms: too fast to outlast the drop time twice", took);
    answer_clear(&a);
    chat_wsc_close(ponger, 1000, NULL);
    chat_wsc_close(mute, 0, NULL);
    stop_stack(pid, workers);
}

/* In place of the main streamer: small send buffers, a short write stall, a small outbound limit. */
static void test_slow_reader(void **state)
{
    (void)state;
    stop_streamer(E.streamer);
    const char *extra[] = {"CHAT_STREAMER_SNDBUF=4096", "CHAT_STREAMER_WRITE_STALL_MS=1000",
                           "CHAT_MAX_OUTBOUND_BYTES=8192", "CHAT_RATE_LIMIT_PER_MIN=100000", NULL};
    E.streamer = streamer_start("slow", E.endpoint, extra, &E.port);
    snprintf(E.url, sizeof E.url, "ws://127.0.0.1:%d/ws/chat", E.port);
    wait_workers(E.port, 2, 10000);
    long rss0 = e2e_rss_kb(E.streamer);
    assert_true(rss0 > 0);

    /* (1) A reader that stops reading while answers stream: closed with 1008 once it stalls. */
    chat_wsc *slow = ws_open(E.alice);
    int small = 2048;
    setsockopt(chat_wsc_fd(slow), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    for (int i = 0; i < 4; i++)
        send_message(slow, QUESTION, "\"session_id\":\"slow-test-1\"");

    /* Meanwhile another client is served normally. */
    chat_wsc *other = ws_open(E.bob);
    answer a;
    ask(other, QUESTION, &a);
    assert_full_answer(&a);
    answer_clear(&a);
    e2e_sleep_ms(3500);
    assert_int_equal(wait_closed(slow, 10000), 1008);
    assert_string_equal(chat_wsc_close_reason(slow), "slow consumer");
    chat_wsc_close(slow, 0, NULL);

    /* (2) A client that sends a burst of bad frames and reads none of the answers: closed with 1008 once
     * the error frames it owes exceed the outbound limit. The burst goes out in one write (masked frames
     * with a zero key): a client still writing into a connection that is being closed would get a TCP
     * reset, which loses the close frame. */
    chat_wsc *flood = ws_open(E.alice);
    setsockopt(chat_wsc_fd(flood), SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
    enum { FRAMES = 1500 };
    unsigned char *burst = malloc(FRAMES * 10);
    for (int i = 0; i < FRAMES; i++)
        memcpy(burst + i * 10, "\x81\x84\0\0\0\0nope", 10);
    assert_int_equal(chat_wsc_send_raw(flood, burst, FRAMES * 10), 0);
    free(burst);
    e2e_sleep_ms(300);
    assert_int_equal(wait_closed(flood, 10000), 1008);
    assert_string_equal(chat_wsc_close_reason(flood), "slow consumer");
    chat_wsc_close(flood, 0, NULL);

    /* The streamer's memory did not follow the backlog, and others are still served. */
    long rss1 = e2e_rss_kb(E.streamer);
    assert_true(rss1 - rss0 < 16 * 1024);
    ask(other, QUESTION, &a);
    assert_full_answer(&a);
    answer_clear(&a);
    chat_wsc_close(other, 1000, NULL);
    stop_streamer(E.streamer);
    main_streamer_restart();
}

/* ---------------------------------------------------------------- RS256 */

static EVP_PKEY *rsa_key;

static char *jwt_rs256(const char *payload)
{
    chat_buf b;
    chat_buf_init(&b);
    const char *header = "{\"alg\":\"RS256\",\"typ\":\"JWT\"}";
    b64url((const unsigned char *)header, strlen(header), &b);
    chat_buf_puts(&b, ".");
    b64url((const unsigned char *)payload, strlen(payload), &b);
    unsigned char sig[512];
    size_t siglen = sizeof sig;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    if (!md || EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, rsa_key) != 1 ||
        EVP_DigestSign(md, sig, &siglen, (const unsigned char *)b.data, b.len) != 1)
        fail_msg("RS256 signing failed");
    EVP_MD_CTX_free(md);
    chat_buf_puts(&b, ".");
    b64url(sig, siglen, &b);
    return chat_buf_take(&b);
}

static void test_rs256_and_alg_confusion(void **state)
{
    (void)state;
    rsa_key = EVP_RSA_gen(2048);
    assert_non_null(rsa_key);
    char pem_path[400];
    snprintf(pem_path, sizeof pem_path, "%s/jwt-public.pem", E.dir);
    FILE *f = fopen(pem_path, "w");
    assert_non_null(f);
    assert_int_equal(PEM_write_PUBKEY(f, rsa_key), 1);
    fclose(f);
    size_t pem_len;
    char *pem = testutil_read_file(pem_path, &pem_len);
    assert_non_null(pem);

    char endpoint[400], keyfile[500];
    snprintf(endpoint, sizeof endpoint, "ipc://%s/rs.ipc", E.dir);
    snprintf(keyfile, sizeof keyfile, "JWT_PUBLIC_KEY_FILE=%s", pem_path);
    const char *extra[] = {"JWT_ALGORITHM=RS256", keyfile, "JWT_SECRET=", NULL};
    int port;
    pid_t pid = streamer_start("rs256", endpoint, extra, &port);

    char *payload = claims("rsa-user", 3600, 0, true);
    struct {
        const char *name;
        char *token;
        bool ok;
    } cases[] = {
        {"RS256 valid", jwt_rs256(payload), true},
        /* The classic confusion: HS256 signed with the public key as the HMAC secret. */
        {"HS256 with the public key", jwt_hs(HS256_HEADER, payload, pem, pem_len), false},
        {"alg none", jwt_hs("{\"alg\":\"none\",\"typ\":\"JWT\"}", payload, NULL, 0), false},
        {"HS256 with the old secret", hs256(payload), false},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        json_object *o = query_auth_reply(port, cases[i].token);
        const char *want = cases[i].ok ? "auth_success" : "auth_error";
        if (strcmp(jstr(o, "type"), want)) fail_msg("%s: got %s", cases[i].name, jstr(o, "type"));
        json_object_put(o);
        free(cases[i].token);
    }
    free(payload);
    free(pem);
    EVP_PKEY_free(rsa_key);
    stop_streamer(pid);
}

/* ---------------------------------------------------------------- turns kept while the database is away */

/* Bytes in the *.spool files of dir (-1 when it cannot be read); *named counts those whose name holds
 * the text named (may be NULL). */
static long long spool_bytes(const char *dir, const char *named, int *n_named)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    long long total = 0;
    if (n_named) *n_named = 0;
    for (struct dirent *de; (de = readdir(d));) {
        const char *dot = strrchr(de->d_name, '.');
        if (!dot || strcmp(dot, ".spool")) continue;
        char path[1100];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (!stat(path, &st)) total += st.st_size;
        if (n_named && named && strstr(de->d_name, named)) (*n_named)++;
    }
    closedir(d);
    return total;
}

/* The stored messages of a session, read with the test's own connection. */
static long long stored_messages(chat_db *db, const char *sid)
{
    return testutil_count(db, "SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", sid);
}

/* Waits until the session holds want messages; fails the test after timeout_ms. */
static void wait_stored(chat_db *db, const char *sid, long long want, int timeout_ms)
{
    long long deadline = e2e_now_ms() + timeout_ms, n;
    while ((n = stored_messages(db, sid)) != want && e2e_now_ms() < deadline)
        e2e_sleep_ms(100);
    if (n != want) fail_msg("session %s: %lld messages stored, expected %lld", sid, n, want);
}

/* Sends a message and collects its answer up to its first token. */
static void start_answer(chat_wsc *c, const char *extra, answer *a)
{
    answer_init(a);
    a->pause_at_tokens = 1;
    send_message(c, QUESTION, extra);
    collect(c, a, ANSWER_MS, NULL, NULL);
    if (a->ntokens != 1) fail_msg("no first token (error %s)", a->error);
    a->pause_at_tokens = 0;
}

/* The rest of an answer begun by start_answer: complete, the answer whole, and the turn not stored yet. */
static void finish_unstored(chat_wsc *c, answer *a)
{
    collect(c, a, ANSWER_MS, NULL, NULL);
    if (!a->complete) fail_msg("no complete (error %s)", a->error);
    assert_string_equal(jstr(a->complete, "response"), a->tokens.data);
    json_object *m = jget(a->complete, "metadata");
    assert_string_equal(jstr(m, "finish_reason"), "stop");
    json_object *stored = jget(m, "stored");
    assert_non_null(stored);
    assert_true(json_object_is_type(stored, json_type_boolean));
    assert_false(json_object_get_boolean(stored));
}

/* Answers streaming while the worker's database goes away end with complete saying "stored": false; the
 * turns are in no history then, but in the worker's spool; once the database answers again they are
 * stored, each exactly once: by the same process, and, after a kill -9, by the process that replaces it
 * (it takes the dead one's spool over at start). The database is made unreachable for this one worker
 * only, through a proxy the test controls. */
static void test_turns_kept_while_database_away(void **state)
{
    (void)state;
    char proxy_path[400], spool_dir[400], proxy_env[460], spool_env[460];
    snprintf(proxy_path, sizeof proxy_path, "%s/db.sock", E.dir);
    snprintf(spool_dir, sizeof spool_dir, "%s/spool", E.dir);
    snprintf(proxy_env, sizeof proxy_env, "CHAT_DB_SOCKET=%s", proxy_path);
    snprintf(spool_env, sizeof spool_env, "CHAT_SPOOL_DIR=%s", spool_dir);
    chat_config cfg = testutil_config("streamer");
    e2e_proxy *proxy = e2e_proxy_start(proxy_path, cfg.db_socket);
    assert_non_null(proxy);
    chat_db *db = chat_db_new(&cfg);
    const char *wextra[] = {proxy_env, spool_env, "CHAT_SPOOL_RETRY_MS=200", NULL};
    int port;
    pid_t workers;
    pid_t pid = private_stack_env("store", 4, 60, -1, NULL, wextra, &port, &workers);
    chat_wsc *c1 = open_alice(port), *c2 = open_alice(port);

    /* Both answers under way (past the database work of their first half), then the database goes. */
    answer a1, a2;
    start_answer(c1, "\"session_id\":\"away-1\"", &a1);
    start_answer(c2, NULL, &a2); /* a new conversation: its session's row is written with the turn */
    e2e_proxy_set_up(proxy, false);
    finish_unstored(c1, &a1);
    finish_unstored(c2, &a2);
    char new_sid[80];
    snprintf(new_sid, sizeof new_sid, "%s", jstr(a2.complete, "session_id"));
    assert_int_equal(stored_messages(db, "away-1"), 0);
    assert_int_equal(stored_messages(db, new_sid), 0);
    assert_true(spool_bytes(spool_dir, NULL, NULL) > 0);
    answer_clear(&a1);
    answer_clear(&a2);

    /* The database is back: the same process stores both, once. */
    e2e_proxy_set_up(proxy, true);
    wait_stored(db, "away-1", 2, 10000);
    wait_stored(db, new_sid, 2, 10000);
    assert_int_equal(testutil_count(db, "SELECT COUNT(*) FROM chat_sessions WHERE id = ? AND user_id = 'alice'", new_sid),
                     1);

    /* Away again; the worker dies with a turn in its spool; its successor stores it once the database is
     * back. */
    start_answer(c1, "\"session_id\":\"away-2\"", &a1);
    e2e_proxy_set_up(proxy, false);
    finish_unstored(c1, &a1);
    answer_clear(&a1);
    pid_t kids[4];
    assert_int_equal(e2e_children(workers, kids, 4), 1);
    char dead[32];
    snprintf(dead, sizeof dead, "-worker-%d-", (int)kids[0]);
    int n_dead = 0;
    assert_true(spool_bytes(spool_dir, dead, &n_dead) > 0);
    assert_int_equal(n_dead, 1);
    kill(kids[0], SIGKILL);
    long long deadline = e2e_now_ms() + 15000;
    do { /* the supervisor starts another worker, which takes the dead one's spool over */
        e2e_sleep_ms(100);
        spool_bytes(spool_dir, dead, &n_dead);
    } while (n_dead && e2e_now_ms() < deadline);
    assert_int_equal(n_dead, 0);
    assert_int_equal(stored_messages(db, "away-2"), 0);
    e2e_proxy_set_up(proxy, true);
    wait_stored(db, "away-2", 2, 10000);
    deadline = e2e_now_ms() + 5000;
    while (spool_bytes(spool_dir, NULL, NULL) != 0 && e2e_now_ms() < deadline)
        e2e_sleep_ms(100);
    assert_int_equal(spool_bytes(spool_dir, NULL, NULL), 0); /* every spool emptied */
    e2e_sleep_ms(500);
    assert_int_equal(stored_messages(db, "away-1"), 2);
    assert_int_equal(stored_messages(db, new_sid), 2);
    assert_int_equal(stored_messages(db, "away-2"), 2);

    /* And with the database there, an answer is stored at once and says so. */
    wait_workers(port, 4, 10000);
    ask_with(c1, QUESTION, "\"session_id\":\"away-2\"", &a1);
    assert_full_answer(&a1);
    assert_true(json_object_get_boolean(jget(jget(a1.complete, "metadata"), "stored")));
    assert_int_equal(stored_messages(db, "away-2"), 4);
    answer_clear(&a1);

    chat_wsc_close(c1, 1000, NULL);
    chat_wsc_close(c2, 1000, NULL);
    stop_stack(pid, workers);
    chat_db_free(db);
    e2e_proxy_stop(proxy);
    e2e_rmdir(spool_dir);
}

/* ---------------------------------------------------------------- shutdown (last: it ends the main streamer) */

static void sigterm_once(chat_wsc *c, answer *a, void *ud)
{
    (void)c;
    bool *sent = ud;
    if (*sent || a->ntokens < 1) return;
    kill(E.streamer, SIGTERM);
    *sent = true;
}

static void test_sigterm_with_answer_in_flight(void **state)
{
    (void)state;
    chat_wsc *c = ws_open(E.alice);
    chat_wsc *idle = ws_open(E.bob);
    answer a;
    answer_init(&a);
    bool sent = false;
    send_message(c, QUESTION, "\"session_id\":\"sigterm-test-1\"");
    collect(c, &a, ANSWER_MS, sigterm_once, &sent);
    assert_true(sent);
    /* The answer in flight completed... */
    assert_non_null(a.complete);
    assert_string_equal(jstr(jget(a.complete, "metadata"), "finish_reason"), "stop");
    assert_string_equal(jstr(a.complete, "response"), a.tokens.data);
    answer_clear(&a);
    /* ...then every connection is closed with 1001 and the process exits 0. */
    assert_int_equal(wait_closed(c, 10000), 1001);
    assert_int_equal(wait_closed(idle, 10000), 1001);
    int status = 0;
    assert_int_equal(e2e_wait_exit(E.streamer, 10000, &status), 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    E.streamer = 0;
    chat_wsc_close(c, 0, NULL);
    chat_wsc_close(idle, 0, NULL);
}

/* ---------------------------------------------------------------- answers that outlive connections */

/* A stack of its own for these tests: workers with the default orphan policy (an answer whose client
 * left is finished and stored), a retention window short enough to outlive within a test, and tokens
 * slow enough to act mid-answer. Started by the first test that needs it, stopped by the group's
 * teardown. */
#define R_TOKEN_DELAY_MS "25"
#define R_RETENTION_S 4
#define R_SLOTS 4 /* 2 processes x 2 slots */

static struct {
    pid_t workers, streamer;
    int port;
    char endpoint[400];
} R;

static void resume_streamer_start(void)
{
    R.streamer = streamer_start("resume", R.endpoint, NULL, &R.port);
    wait_workers(R.port, R_SLOTS, 15000);
}

/* The settings of this group's worker pools: extractive answers paced by R_TOKEN_DELAY_MS, the default
 * orphan policy. */
static const char *const R_POOL[] = {"CHAT_LLM_PROVIDER=extractive", "CHAT_TOKEN_DELAY_MS=" R_TOKEN_DELAY_MS,
                                     "CHAT_ORPHAN_POLICY", "CHAT_LOG_LEVEL=info", NULL};

static void resume_stack(void)
{
    if (R.streamer > 0) return;
    own_endpoint(R.endpoint, sizeof R.endpoint, "resume");
    char retention[64];
    snprintf(retention, sizeof retention, "CHAT_RESUME_RETENTION_S=%d", R_RETENTION_S);
    const char *extra[] = {retention, "CHAT_ORPHAN_GRACE_S", NULL};
    unlink(log_path("resume-workers"));
    R.workers = pool_spawn("resume-workers", R.endpoint, 2, 2, R_POOL, extra);
    resume_streamer_start();
}

/* The group's tests of answers that outlive connections start with the stack of their own. */
static int resume_setup(void **state)
{
    (void)state;
    resume_stack();
    return 0;
}

static void resume_stack_stop(void)
{
    if (R.streamer > 0) e2e_stop(R.streamer, SIGTERM, 10000, NULL);
    if (R.workers > 0) e2e_stop(R.workers, SIGTERM, 15000, NULL);
    memset(&R, 0, sizeof R);
}

/* One JSON value of a row (the first column), or "" when none. */
static int text_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    chat_buf *b = ud;
    chat_buf_reset(b);
    chat_buf_puts(b, v[0] ? v[0] : "");
    return 0;
}

/* The first column of the query's last row, for session sid (the query's one parameter); "" when none. */
static char *db_text(const char *sql, const char *sid)
{
    chat_config cfg = testutil_config("streamer");
    chat_db *db = chat_db_new(&cfg);
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_puts(&b, "");
    char err[256];
    chat_db_param p = CHAT_DB_P_STR(sid);
    if (chat_db_run(db, sql, &p, 1, text_row, &b, NULL, NULL, err, sizeof err)) fail_msg("query: %s", err);
    chat_db_free(db);
    return chat_buf_take(&b);
}

/* Waits until the session has `turns` stored turns (2 messages each), then checks that it has exactly
 * that many and that the last answer stored is `response`: an answer is stored once, and whole. */
static void assert_stored(const char *sid, int turns, const char *response)
{
    char want[16];
    snprintf(want, sizeof want, "%d", 2 * turns);
    char *n = NULL;
    for (int i = 0; i < 100; i++) {
        free(n);
        n = db_text("SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", sid);
        if (atoi(n) >= 2 * turns) break;
        e2e_sleep_ms(100);
    }
    e2e_sleep_ms(200); /* and nothing more arrives */
    free(n);
    n = db_text("SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", sid);
    if (strcmp(n, want)) fail_msg("session %s: %s messages stored, not %s", sid, n, want);
    free(n);
    if (!response) return;
    char *stored = db_text("SELECT content FROM chat_messages WHERE session_id = ? AND role = 'assistant'"
                           " ORDER BY id DESC LIMIT 1",
                           sid);
    assert_string_equal(stored, response);
    free(stored);
}

/* The finish_reason stored with sid's last answer is want. */
static void assert_stored_finish(const char *sid, const char *want)
{
    char *finish = db_text("SELECT JSON_VALUE(metadata, '$.finish_reason') FROM chat_messages"
                           " WHERE session_id = ? AND role = 'assistant' ORDER BY id DESC LIMIT 1",
                           sid);
    assert_string_equal(finish, want);
    free(finish);
}

/* Reads a's frames until it holds n tokens (or its end); false when it ended first. */
static bool read_tokens(chat_wsc *c, answer *a, int n)
{
    while (a->ntokens < n) {
        if (answer_feed(a, next_json(c, ANSWER_MS))) return false;
    }
    return true;
}

/* Sends the resume frame. last_seq < 0 leaves it out; answer_id NULL too. */
static void send_resume(chat_wsc *c, const char *sid, long long last_seq, const char *answer_id)
{
    char msg[512];
    int n = snprintf(msg, sizeof msg, "{\"type\":\"resume\",\"session_id\":\"%s\"", sid);
    if (last_seq >= 0) n += snprintf(msg + n, sizeof msg - (size_t)n, ",\"last_seq\":%lld", last_seq);
    if (answer_id) n += snprintf(msg + n, sizeof msg - (size_t)n, ",\"answer_id\":\"%s\"", answer_id);
    snprintf(msg + n, sizeof msg - (size_t)n, "}");
    send_str(c, msg);
}

/* {"type":"cancel","session_id":sid} */
static void send_cancel_of(chat_wsc *c, const char *sid)
{
    char msg[256];
    snprintf(msg, sizeof msg, "{\"type\":\"cancel\",\"session_id\":\"%s\"}", sid);
    send_str(c, msg);
}

/* The resumed frame comes first; then the rest of the answer, if any, into a. */
static void resume_into(chat_wsc *c, const char *sid, long long last_seq, const char *answer_id, answer *a)
{
    answer_init(a);
    send_resume(c, sid, last_seq, answer_id);
    json_object *o = next_json(c, 5000);
    if (strcmp(jstr(o, "type") ? jstr(o, "type") : "", "resumed")) fail_msg("not resumed: %s", json_object_to_json_string(o));
    assert_string_equal(jstr(o, "session_id"), sid);
    a->resumed = o;
    note_ids(a, o);
}

/* A new connection of token on port resuming session sid from the start: resumed with want's answer id,
 * then want's whole response in its complete. The connection stays open for the caller. */
static chat_wsc *resume_whole(int port, const char *token, const char *sid, const answer *want)
{
    chat_wsc *c = ws_open_on(port, token);
    answer r;
    resume_into(c, sid, 0, NULL, &r);
    assert_string_equal(jstr(r.resumed, "answer_id"), want->answer_id);
    collect(c, &r, ANSWER_MS, NULL, NULL);
    assert_non_null(r.complete);
    assert_string_equal(jstr(r.complete, "response"), jstr(want->complete, "response"));
    answer_clear(&r);
    return c;
}

static bool resumed_in_flight(const answer *a)
{
    return json_object_get_boolean(jget(a->resumed, "in_flight"));
}

/* The connection has nothing more to say: a ping is answered by the next frame. */
static void expect_nothing_more(chat_wsc *c)
{
    expect_usable(c);
}

/* Asks on a fresh connection of alice's to the streamer on port and reads the answer up to n tokens: *a
 * holds what it saw. */
static chat_wsc *ask_partly_on(int port, const char *extra, int n, answer *a)
{
    chat_wsc *c = ws_open_on(port, E.alice);
    answer_init(a);
    send_message(c, QUESTION, extra);
    assert_true(read_tokens(c, a, n));
    assert_true(a->session_id[0] && a->answer_id[0]); /* "starting" names the answer */
    assert_int_equal(a->seq, (unsigned long long)n);   /* one frame per piece for a reader that keeps up */
    return c;
}

/* The same on the group's own streamer. */
static chat_wsc *ask_partly(const char *extra, int n, answer *a)
{
    return ask_partly_on(R.port, extra, n, a);
}

/* A client back after a drop: a new connection of alice's to the streamer on port, resuming where
 * `before` left off (its session, last seq and answer id); the resumed frame is in *after. */
static chat_wsc *reconnect_and_resume(int port, const answer *before, answer *after)
{
    chat_wsc *d = ws_open_on(port, E.alice);
    resume_into(d, before->session_id, (long long)before->seq, before->answer_id, after);
    return d;
}

/* The text a client sees across a drop: what it had, then what the resume gave, equals the complete's
 * response (no gap, no duplicate), and the complete's seq is one past the last token's. */
static void assert_whole(const answer *before, const answer *after)
{
    if (!after->complete) fail_msg("no complete after the resume (error %s)", after->error);
    chat_buf all;
    chat_buf_init(&all);
    chat_buf_puts(&all, before->tokens.data ? before->tokens.data : "");
    chat_buf_puts(&all, after->tokens.data ? after->tokens.data : "");
    assert_string_equal(all.data, jstr(after->complete, "response"));
    if (after->ntokens) assert_string_equal(after->partial.data, jstr(after->complete, "response"));
    assert_true(after->seq_rising);
    unsigned long long last = after->ntokens ? after->seq : before->seq;
    assert_int_equal(json_object_get_int64(jget(after->complete, "seq")), (int64_t)last + 1);
    assert_string_equal(jstr(after->complete, "answer_id"), before->answer_id);
    assert_string_equal(jstr(after->complete, "session_id"), before->session_id);
    chat_buf_free(&all);
}

/* Dropped after three tokens, resumed on a new connection: the answer is still streaming, the missed text
 * comes as one token (partial_response: everything so far), then the live tokens and the complete. The
 * turn is stored once. A drop no longer cancels (the default CHAT_ORPHAN_POLICY=finish). */
static void test_resume_after_drop(void **state)
{
    (void)state;
    answer before, after;
    chat_wsc *c = ask_partly(NULL, 3, &before);
    chat_wsc_close(c, 0, NULL);
    chat_wsc *d = reconnect_and_resume(R.port, &before, &after);
    assert_true(resumed_in_flight(&after));
    assert_string_equal(jstr(after.resumed, "answer_id"), before.answer_id);
    collect(d, &after, ANSWER_MS, NULL, NULL);
    assert_whole(&before, &after);
    assert_string_equal(jstr(jget(after.complete, "metadata"), "finish_reason"), "stop");
    assert_stored(before.session_id, 1, jstr(after.complete, "response"));
    /* the connection now follows the conversation: a message without session_id continues it */
    answer next;
    ask(d, "And how long is it?", &next);
    assert_non_null(next.complete);
    assert_string_equal(jstr(next.complete, "session_id"), before.session_id);
    answer_clear(&next);
    answer_clear(&before);
    answer_clear(&after);
    chat_wsc_close(d, 1000, NULL);
}

/* A session id names its conversation whatever its case, in the worker's held answers as in the stored
 * history: a resume naming the session in capitals gets the answer in flight, whole. */
static void test_resume_other_case(void **state)
{
    (void)state;
    answer before, after;
    chat_wsc *c = ask_partly(NULL, 2, &before);
    chat_wsc_close(c, 0, NULL);
    char upper[sizeof before.session_id];
    snprintf(upper, sizeof upper, "%s", before.session_id);
    for (char *p = upper; *p; p++)
        *p = (char)toupper((unsigned char)*p);
    assert_string_not_equal(upper, before.session_id);
    chat_wsc *d = ws_open_on(R.port, E.alice);
    resume_into(d, upper, (long long)before.seq, before.answer_id, &after);
    assert_string_equal(jstr(after.resumed, "answer_id"), before.answer_id);
    collect(d, &after, ANSWER_MS, NULL, NULL);
    assert_whole(&before, &after);
    assert_stored(before.session_id, 1, jstr(after.complete, "response"));
    answer_clear(&before);
    answer_clear(&after);
    chat_wsc_close(d, 1000, NULL);
}

/* A client that drops with nobody following its answer: the answer is finished and stored whole. */
static void test_drop_finishes_answer(void **state)
{
    (void)state;
    answer a;
    chat_wsc *c = ask_partly(NULL, 1, &a);
    chat_wsc_close(c, 0, NULL);
    assert_stored(a.session_id, 1, NULL);
    assert_stored_finish(a.session_id, "stop");
    answer_clear(&a);
}

/* Within the retention window a completed answer is resumable: the missed text and the complete. A
 * client that has the complete (last_seq = the complete's seq) gets only "resumed". After the window,
 * the owner's resume is "resumed" with nothing (the answer is in the session's history). */
static void test_resume_finished_answer(void **state)
{
    (void)state;
    answer before, after;
    chat_wsc *c = ask_partly(NULL, 2, &before);
    chat_wsc_close(c, 0, NULL);
    assert_stored(before.session_id, 1, NULL); /* it has finished meanwhile */
    chat_wsc *d = reconnect_and_resume(R.port, &before, &after);
    assert_false(resumed_in_flight(&after));
    assert_string_equal(jstr(after.resumed, "answer_id"), before.answer_id);
    collect(d, &after, ANSWER_MS, NULL, NULL);
    assert_int_equal(after.ntokens, 1); /* the missed text in one frame */
    assert_whole(&before, &after);
    long long complete_seq = json_object_get_int64(jget(after.complete, "seq"));
    assert_int_equal(json_object_get_int64(jget(after.resumed, "seq")), complete_seq - 1);
    assert_stored(before.session_id, 1, jstr(after.complete, "response"));
    /* holding the complete already: nothing to send but "resumed" */
    answer again;
    resume_into(d, before.session_id, complete_seq, before.answer_id, &again);
    assert_false(resumed_in_flight(&again));
    expect_nothing_more(d);
    answer_clear(&again);
    /* after the window */
    e2e_sleep_ms(R_RETENTION_S * 1000 + 500);
    resume_into(d, before.session_id, (long long)before.seq, before.answer_id, &again);
    assert_false(resumed_in_flight(&again));
    assert_null(jget(again.resumed, "answer_id"));
    expect_nothing_more(d);
    answer_clear(&again);
    answer_clear(&before);
    answer_clear(&after);
    chat_wsc_close(d, 1000, NULL);
}

/* Two tabs on one conversation: the second resumes it, then sees the first tab's next message
 * (user_message) and its answer live, the same text; the answer is stored once. A message from the
 * second tab reaches the first the same way. */
static void test_two_tabs(void **state)
{
    (void)state;
    chat_wsc *t1 = ws_open_on(R.port, E.alice), *t2 = ws_open_on(R.port, E.alice);
    answer first;
    ask_with(t1, QUESTION, "\"session_id\":\"tabs-session-1\"", &first);
    assert_non_null(first.complete);
    answer r;
    resume_into(t2, "tabs-session-1", json_object_get_int64(jget(first.complete, "seq")), first.answer_id, &r);
    answer_clear(&r);
    expect_nothing_more(t2);
    for (int round = 0; round < 2; round++) {
        chat_wsc *asker = round ? t2 : t1, *watcher = round ? t1 : t2;
        const char *question = round ? "How long is the Seawind 190?" : "And how long is it?";
        answer own, seen;
        answer_init(&seen);
        ask_with(asker, question, NULL, &own); /* continues the conversation it follows */
        assert_full_answer(&own);
        collect(watcher, &seen, ANSWER_MS, NULL, NULL);
        assert_int_equal(seen.user_messages, 1);
        assert_string_equal(seen.user_message, question);
        assert_string_equal(seen.answer_id, own.answer_id);
        assert_non_null(seen.complete);
        assert_string_equal(seen.tokens.data, jstr(own.complete, "response"));
        assert_string_equal(jstr(seen.complete, "response"), jstr(own.complete, "response"));
        assert_int_equal(json_object_get_int64(jget(seen.complete, "seq")),
                         json_object_get_int64(jget(own.complete, "seq")));
        assert_true(seen.seq_rising);
        assert_stored("tabs-session-1", 2 + round, jstr(own.complete, "response"));
        answer_clear(&own);
        answer_clear(&seen);
    }
    expect_nothing_more(t1);
    expect_nothing_more(t2);
    answer_clear(&first);
    chat_wsc_close(t1, 1000, NULL);
    chat_wsc_close(t2, 1000, NULL);
}

/* A cancel from the other tab (naming the conversation) stops the answer for everybody: both tabs get
 * complete with finish_reason cancelled and their text, no token after it, and the model stopped (the
 * stored answer is the cancelled one, shorter than the whole). */
static void test_cancel_from_other_tab(void **state)
{
    (void)state;
    answer a1, a2;
    chat_wsc *t1 = ask_partly(NULL, 2, &a1);
    chat_wsc *t2 = ws_open_on(R.port, E.alice);
    resume_into(t2, a1.session_id, 0, NULL, &a2);
    assert_true(resumed_in_flight(&a2));
    send_cancel_of(t2, a1.session_id);
    collect(t2, &a2, ANSWER_MS, NULL, NULL);
    collect(t1, &a1, ANSWER_MS, NULL, NULL);
    for (int i = 0; i < 2; i++) {
        answer *a = i ? &a2 : &a1;
        assert_non_null(a->complete);
        assert_string_equal(jstr(jget(a->complete, "metadata"), "finish_reason"), "cancelled");
        assert_string_equal(jstr(a->complete, "response"), a->tokens.data);
    }
    assert_string_equal(jstr(a1.complete, "response"), jstr(a2.complete, "response"));
    expect_nothing_more(t1); /* no token after the complete */
    expect_nothing_more(t2);
    assert_stored(a1.session_id, 1, jstr(a1.complete, "response"));
    assert_stored_finish(a1.session_id, "cancelled");
    /* the whole answer is longer: the model stopped */
    answer full;
    ask(t1, QUESTION, &full);
    assert_true(strlen(jstr(full.complete, "response")) > strlen(jstr(a1.complete, "response")));
    answer_clear(&full);
    answer_clear(&a1);
    answer_clear(&a2);
    chat_wsc_close(t1, 1000, NULL);
    chat_wsc_close(t2, 1000, NULL);
}

/* Only the owner resumes: another user gets SESSION_FORBIDDEN for alice's session, streaming or
 * finished, and the same for a session that does not exist (ids cannot be probed); bob's connection
 * stays usable and receives nothing of alice's answer. */
static void test_resume_other_user(void **state)
{
    (void)state;
    answer a;
    chat_wsc *c = ask_partly(NULL, 1, &a);
    chat_wsc *b = ws_open_on(R.port, E.bob);
    send_resume(b, a.session_id, 0, NULL); /* streaming */
    expect_error(b, "SESSION_FORBIDDEN");
    collect(c, &a, ANSWER_MS, NULL, NULL);
    assert_non_null(a.complete);
    send_resume(b, a.session_id, 0, a.answer_id); /* finished, within the window */
    expect_error(b, "SESSION_FORBIDDEN");
    send_resume(b, "no-such-session-at-all", 0, NULL);
    expect_error(b, "SESSION_FORBIDDEN");
    send_cancel_of(b, a.session_id); /* not bob's: nothing happens */
    expect_nothing_more(b);
    assert_stored(a.session_id, 1, jstr(a.complete, "response"));
    assert_stored_finish(a.session_id, "stop");
    /* alice may */
    answer r;
    resume_into(c, a.session_id, json_object_get_int64(jget(a.complete, "seq")), a.answer_id, &r);
    expect_nothing_more(c);
    answer_clear(&r);
    answer_clear(&a);
    chat_wsc_close(b, 1000, NULL);
    chat_wsc_close(c, 1000, NULL);
}

/* Two users' conversations of one session id never mix on the resumable path: alice's second tab
 * follows her session S; bob asks in his own S (a normal answer), and neither of alice's tabs gets a
 * frame of it, no user_message, no token; while bob's answer streams, alice's resume finds her own
 * finished answer, not bob's in-flight one; once it is over, each one's resume gets his own answer,
 * and alice's is not replaced by bob's in what the workers keep. */
static void test_same_session_id_two_users(void **state)
{
    (void)state;
    const char *sid = "shared-session-1";
    chat_wsc *t1 = ws_open_on(R.port, E.alice), *t2 = ws_open_on(R.port, E.alice);
    answer mine;
    char extra[128];
    snprintf(extra, sizeof extra, "\"session_id\":\"%s\"", sid);
    ask_with(t1, QUESTION, extra, &mine);
    assert_non_null(mine.complete);
    long long my_seq = json_object_get_int64(jget(mine.complete, "seq"));
    answer r;
    resume_into(t2, sid, my_seq, mine.answer_id, &r); /* t2 follows alice's S */
    answer_clear(&r);
    expect_nothing_more(t2);

    chat_wsc *b = ws_open_on(R.port, E.bob);
    answer his;
    answer_init(&his);
    send_message(b, "How long is the Seawind 190?", extra);
    assert_true(read_tokens(b, &his, 2)); /* bob's answer is streaming */
    assert_string_equal(his.session_id, sid);
    /* alice resumes S meanwhile: her own finished answer, which she has whole */
    chat_wsc *t3 = ws_open_on(R.port, E.alice);
    resume_into(t3, sid, my_seq, mine.answer_id, &r);
    assert_false(resumed_in_flight(&r));
    assert_string_equal(jstr(r.resumed, "answer_id"), mine.answer_id);
    answer_clear(&r);
    expect_nothing_more(t3);
    collect(b, &his, ANSWER_MS, NULL, NULL);
    if (!his.complete) fail_msg("bob's answer: error %s", his.error);
    assert_string_equal(jstr(his.complete, "session_id"), sid);
    assert_string_not_equal(his.answer_id, mine.answer_id);
    /* none of alice's connections received a frame of bob's turn */
    expect_nothing_more(t1);
    expect_nothing_more(t2);
    expect_nothing_more(t3);
    assert_int_equal(stored_of("alice", sid), 2);
    assert_int_equal(stored_of("bob", sid), 2);
    /* each one's resume within the window: his own answer */
    chat_wsc *b2 = resume_whole(R.port, E.bob, sid, &his);
    chat_wsc *t4 = resume_whole(R.port, E.alice, sid, &mine);
    /* bob's next message in S reaches his follower, and still nothing of it reaches alice's tabs */
    answer next, seen;
    answer_init(&seen);
    ask_with(b, "And its beam?", extra, &next);
    assert_non_null(next.complete);
    collect(b2, &seen, ANSWER_MS, NULL, NULL);
    assert_int_equal(seen.user_messages, 1);
    assert_string_equal(seen.answer_id, next.answer_id);
    expect_nothing_more(t1);
    expect_nothing_more(t2);
    expect_nothing_more(t4);
    answer_clear(&next);
    answer_clear(&seen);
    answer_clear(&his);
    answer_clear(&mine);
    chat_wsc *all[] = {t1, t2, t3, t4, b, b2};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(all); i++) chat_wsc_close(all[i], 1000, NULL);
}

/* Stale and future cursors on a finished answer: last_seq 0 (the client had more) gets the whole
 * answer again, exactly; a last_seq past the answer with its answer_id is nothing missed ("resumed"
 * only); without answer_id it is read as an earlier answer's cursor (the whole answer). In flight, a
 * future cursor with the answer's id is nothing missed: the live tokens follow from the current one. */
static void test_resume_stale_and_future_seq(void **state)
{
    (void)state;
    answer a;
    chat_wsc *c = ask_partly(NULL, 2, &a);
    chat_wsc *d = ws_open_on(R.port, E.alice);
    answer ahead;
    resume_into(d, a.session_id, 100000, a.answer_id, &ahead);
    assert_true(resumed_in_flight(&ahead));
    unsigned long long at = (unsigned long long)json_object_get_int64(jget(ahead.resumed, "seq"));
    collect(d, &ahead, ANSWER_MS, NULL, NULL);
    collect(c, &a, ANSWER_MS, NULL, NULL);
    assert_non_null(ahead.complete);
    /* nothing of what it claimed to have came again: it got the pieces after `at`, a suffix */
    const char *full = jstr(a.complete, "response");
    size_t fl = strlen(full), tl = ahead.tokens.len;
    assert_true(tl < fl && !strcmp(full + fl - tl, ahead.tokens.data));
    assert_true(ahead.ntokens == 0 || ahead.seq > at);
    answer_clear(&ahead);
    long long complete_seq = json_object_get_int64(jget(a.complete, "seq"));
    static const struct {
        const char *name;
        long long last_seq;
        bool with_id;
        bool whole; /* else nothing but resumed */
    } cases[] = {{"stale", 0, true, true},
                 {"stale without id", 1, false, false},
                 {"future with id", 100000, true, false},
                 {"future without id", 100000, false, true},
                 {"has the complete", 0, true, false}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        long long seq = i == CHAT_ARRAY_LEN(cases) - 1 ? complete_seq : cases[i].last_seq;
        answer r;
        resume_into(d, a.session_id, seq, cases[i].with_id ? a.answer_id : NULL, &r);
        assert_false(resumed_in_flight(&r));
        if (cases[i].whole) {
            collect(d, &r, ANSWER_MS, NULL, NULL);
            if (!r.complete) fail_msg("%s: no complete", cases[i].name);
            assert_string_equal(r.tokens.data, full);
            assert_int_equal(r.ntokens, 1);
            assert_int_equal(json_object_get_int64(jget(r.complete, "seq")), complete_seq);
        } else if (!strcmp(cases[i].name, "stale without id")) {
            collect(d, &r, ANSWER_MS, NULL, NULL); /* everything after piece 1 */
            assert_non_null(r.complete);
            assert_true(r.tokens.len < fl && !strcmp(full + fl - r.tokens.len, r.tokens.data));
            assert_string_equal(r.partial.data, full);
        }
        expect_nothing_more(d);
        answer_clear(&r);
    }
    assert_stored(a.session_id, 1, full);
    answer_clear(&a);
    chat_wsc_close(c, 1000, NULL);
    chat_wsc_close(d, 1000, NULL);
}

/* A worker killed mid-answer: PROCESSING_ERROR as before (tokens were sent: no retry); nothing of the
 * answer is left to resume ("resumed", nothing more), and no turn is stored for it. */
static void test_resume_after_worker_killed(void **state)
{
    (void)state;
    chat_wsc *c = ws_open_on(R.port, E.alice);
    answer first;
    ask_with(c, QUESTION, "\"session_id\":\"worker-killed-1\"", &first);
    assert_non_null(first.complete);
    answer a;
    answer_init(&a);
    send_message(c, QUESTION, NULL);
    assert_true(read_tokens(c, &a, 1));
    pid_t killed = busy_worker(R.port);
    assert_true(killed > 0);
    kill(killed, SIGKILL);
    collect(c, &a, ANSWER_MS, NULL, NULL);
    assert_string_equal(a.error, "PROCESSING_ERROR");
    answer r;
    resume_into(c, "worker-killed-1", (long long)a.seq, a.answer_id, &r);
    assert_false(resumed_in_flight(&r));
    expect_nothing_more(c);
    assert_stored("worker-killed-1", 1, jstr(first.complete, "response"));
    wait_workers(R.port, R_SLOTS, 15000);
    answer_clear(&r);
    answer_clear(&a);
    answer_clear(&first);
    chat_wsc_close(c, 1000, NULL);
}

/* The streamer killed with SIGKILL mid-answer and restarted: the answer goes on in its worker, the client
 * reconnects and resumes, and gets the answer whole, exactly once; it is stored once. */
static void test_resume_after_streamer_killed(void **state)
{
    (void)state;
    answer before, after;
    chat_wsc *c = ask_partly(NULL, 2, &before);
    e2e_stop(R.streamer, SIGKILL, 5000, NULL);
    chat_wsc_close(c, 0, NULL);
    resume_streamer_start(); /* the same endpoint: the workers come back to it */
    chat_wsc *d = reconnect_and_resume(R.port, &before, &after);
    collect(d, &after, ANSWER_MS, NULL, NULL);
    assert_whole(&before, &after);
    assert_string_equal(jstr(jget(after.complete, "metadata"), "finish_reason"), "stop");
    assert_stored(before.session_id, 1, jstr(after.complete, "response"));
    answer_clear(&before);
    answer_clear(&after);
    chat_wsc_close(d, 1000, NULL);
}

/* A message that waits in the worker for its slot is resumable like a streaming one: with the one slot
 * held by the answer of a streamer killed since (which the restarted streamer does not count), a message
 * sent on the new streamer waits in the worker; its client drops and resumes while the other answer
 * still streams, is told the answer is in flight, and gets it whole once it runs, stored once. (A
 * resume that found nothing would have the client send it again: two answers.) */
static void test_resume_answer_waiting_for_slot(void **state)
{
    (void)state;
    char ep[400];
    own_endpoint(ep, sizeof ep, "waiting");
    static const char *const pool[] = {"CHAT_LLM_PROVIDER=extractive", "CHAT_TOKEN_DELAY_MS=100", "CHAT_ORPHAN_POLICY",
                                       NULL};
    pid_t workers = pool_spawn("waiting-workers", ep, 1, 1, pool, NULL);
    int port;
    pid_t streamer = streamer_start("waiting", ep, NULL, &port);
    wait_workers(port, 1, 15000);
    answer held, after;
    chat_wsc *c = ask_partly_on(port, NULL, 2, &held); /* about 4 s to go */
    e2e_stop(streamer, SIGKILL, 5000, NULL);
    chat_wsc_close(c, 0, NULL);
    streamer = streamer_start("waiting", ep, NULL, &port);
    wait_workers(port, 1, 15000);

    const char *sid = "waiting-for-slot-1";
    chat_wsc *d = ws_open_on(port, E.alice);
    send_message(d, QUESTION, "\"session_id\":\"waiting-for-slot-1\"");
    e2e_sleep_ms(300); /* the JOB reaches the worker, whose slot is taken */
    chat_wsc_close(d, 0, NULL);
    chat_wsc *e = ws_open_on(port, E.alice);
    resume_into(e, sid, 0, NULL, &after);
    char *held_turns = db_text("SELECT COUNT(*) FROM chat_messages WHERE session_id = ?", held.session_id);
    assert_string_equal(held_turns, "0"); /* the first answer still streams: the message did wait */
    free(held_turns);
    assert_true(resumed_in_flight(&after));
    collect(e, &after, ANSWER_MS, NULL, NULL);
    if (!after.complete) fail_msg("no complete after the resume (error %s)", after.error);
    assert_string_equal(after.tokens.data, jstr(after.complete, "response"));
    assert_string_equal(jstr(after.complete, "answer_id"), jstr(after.resumed, "answer_id"));
    assert_stored(sid, 1, jstr(after.complete, "response"));
    assert_stored(held.session_id, 1, NULL); /* the held answer was finished too */
    answer_clear(&held);
    answer_clear(&after);
    chat_wsc_close(e, 1000, NULL);
    stop_streamer(streamer);
    assert_int_equal(e2e_stop(workers, SIGTERM, 15000, NULL), 0);
}

/* A streamer restarted under running workers serves at once, before they are back: a message sent the
 * moment it listens waits for a worker instead of OVERLOADED, and a resume sent then waits for every
 * worker rather than settling with those back so far (CHAT_STREAMER_START_WAIT_MS). */
static void test_restarted_streamer_waits_for_workers(void **state)
{
    (void)state;
    answer before, after, fresh;
    chat_wsc *c = ask_partly(NULL, 2, &before);
    e2e_stop(R.streamer, SIGKILL, 5000, NULL);
    chat_wsc_close(c, 0, NULL);
    R.streamer = streamer_start("resume", R.endpoint, NULL, &R.port); /* no wait for the workers */
    chat_wsc *d = reconnect_and_resume(R.port, &before, &after);
    chat_wsc *e = ws_open_on(R.port, E.alice);
    ask(e, "What is the engine power?", &fresh);
    if (!fresh.complete) fail_msg("the message right after the restart: %s", fresh.error);
    collect(d, &after, ANSWER_MS, NULL, NULL);
    assert_whole(&before, &after);
    assert_stored(before.session_id, 1, jstr(after.complete, "response"));
    wait_workers(R.port, R_SLOTS, 15000);
    answer_clear(&fresh);
    answer_clear(&before);
    answer_clear(&after);
    chat_wsc_close(e, 1000, NULL);
    chat_wsc_close(d, 1000, NULL);
}

/* Two streamers, a and b, sharing one worker pool: its 2 processes of 4 slots connect to both endpoints
 * and give each streamer a half of their slots. */
typedef struct two_streamers {
    pid_t workers, a, b;
    int port_a, port_b;
} two_streamers;

/* Starts them under name (<name>-a, <name>-b, <name>-workers); streamer_extra: settings of both streamers
 * (NULL-terminated, or NULL). Returns once both see the whole pool. */
static void two_streamers_start(two_streamers *t, const char *name, const char *const streamer_extra[])
{
    char e1[400], e2[400], both[810], na[64], nb[64], log[64];
    snprintf(na, sizeof na, "%s-a", name);
    snprintf(nb, sizeof nb, "%s-b", name);
    snprintf(log, sizeof log, "%s-workers", name);
    own_endpoint(e1, sizeof e1, na);
    own_endpoint(e2, sizeof e2, nb);
    snprintf(both, sizeof both, "%s,%s", e1, e2);
    t->workers = pool_spawn(log, both, 2, 4, R_POOL, NULL);
    t->a = streamer_start(na, e1, streamer_extra, &t->port_a);
    t->b = streamer_start(nb, e2, streamer_extra, &t->port_b);
    wait_workers(t->port_a, 4, 15000); /* 2 processes x a half of their 4 slots each */
    wait_workers(t->port_b, 4, 15000);
}

/* Stops both streamers cleanly, then the pool. */
static void two_streamers_stop(two_streamers *t)
{
    stop_streamer(t->a);
    stop_streamer(t->b);
    assert_int_equal(e2e_stop(t->workers, SIGTERM, 15000, NULL), 0);
}

/* Two streamers share one worker pool (its workers connect to both endpoints): an answer asked on one
 * and dropped is resumed on the other, whole and once; each streamer answers with the pool. */
static void test_resume_on_another_streamer(void **state)
{
    (void)state;
    two_streamers t;
    two_streamers_start(&t, "two", NULL);
    answer before, after;
    chat_wsc *c = ask_partly_on(t.port_a, NULL, 3, &before);
    chat_wsc_close(c, 0, NULL);
    chat_wsc *d = reconnect_and_resume(t.port_b, &before, &after);
    collect(d, &after, ANSWER_MS, NULL, NULL);
    assert_whole(&before, &after);
    assert_stored(before.session_id, 1, jstr(after.complete, "response"));
    /* the other streamer answers as well, with the same pool, in the same conversation */
    answer next;
    ask(d, "And how long is it?", &next);
    assert_non_null(next.complete);
    assert_string_equal(jstr(next.complete, "session_id"), before.session_id);
    assert_stored(before.session_id, 2, jstr(next.complete, "response"));
    answer_clear(&next);
    answer_clear(&before);
    answer_clear(&after);
    chat_wsc_close(d, 1000, NULL);
    two_streamers_stop(&t);
}

/* Per-user limits are on without any setting: a user's fifth answer in progress is refused while her
 * four others stream (CHAT_USER_MAX_ANSWERS' default, 4), another user's is not, and the streamer logs
 * the defaults it applies (4 answers, 120 messages a minute). The suite's own stack turns them off
 * (tests/run.sh: its tests share one user over many connections). */
static void test_user_limits_on_by_default(void **state)
{
    (void)state;
    char ep[400], file[600];
    snprintf(ep, sizeof ep, "ipc://%s/ud.ipc", E.dir);
    snprintf(file, sizeof file, "CHAT_USERLIMIT_FILE=%s/ud.table", E.dir);
    char zmq[500];
    snprintf(zmq, sizeof zmq, "CHAT_ZMQ_ENDPOINT=%s", ep);
    const char *env[] = {zmq, "CHAT_DB_NAME=chat_t_streamer", "CHAT_WORKERS=1", "CHAT_WORKER_SLOTS=8",
                         "CHAT_LLM_PROVIDER=extractive", "CHAT_TOKEN_DELAY_MS=" R_TOKEN_DELAY_MS,
                         "CHAT_LOG_LEVEL=info", NULL};
    const char *argv[] = {E.bin_worker, NULL};
    pid_t workers = e2e_spawn(argv, env, log_path("ud-workers"));
    assert_true(workers > 0);
    const char *defaults[] = {"CHAT_USER_MAX_ANSWERS", "CHAT_USER_RATE_PER_MIN", file, NULL}; /* unset */
    int port;
    pid_t st = streamer_start("ud", ep, defaults, &port);
    wait_workers(port, 8, 15000);
    enum { N = 4 };
    chat_wsc *c[N + 1];
    answer a[N], refused, bobs;
    for (int i = 0; i <= N; i++) c[i] = ws_open_on(port, E.alice);
    for (int i = 0; i < N; i++) {
        answer_init(&a[i]);
        send_message(c[i], QUESTION, NULL);
    }
    for (int i = 0; i < N; i++) assert_true(read_tokens(c[i], &a[i], 2)); /* four of hers stream */
    ask(c[N], QUESTION, &refused);
    assert_null(refused.complete);
    assert_string_equal(refused.error, "RATE_LIMITED");
    chat_wsc *other = ws_open_on(port, E.bob);
    ask(other, QUESTION, &bobs);
    assert_non_null(bobs.complete);
    for (int i = 0; i < N; i++) {
        collect(c[i], &a[i], ANSWER_MS, NULL, NULL);
        assert_non_null(a[i].complete);
        answer_clear(&a[i]);
    }
    answer_clear(&refused);
    answer_clear(&bobs);
    for (int i = 0; i <= N; i++) chat_wsc_close(c[i], 1000, NULL);
    chat_wsc_close(other, 1000, NULL);
    stop_streamer(st);
    assert_int_equal(e2e_stop(workers, SIGTERM, 15000, NULL), 0);
    FILE *f = fopen(log_path("ud"), "r");
    assert_non_null(f);
    char line[1024];
    bool logged = false;
    while (!logged && fgets(line, sizeof line, f)) logged = strstr(line, "per-user limits 4 answers, 120 messages a minute");
    fclose(f);
    assert_true(logged);
}

/* Per-user limits hold across streamers: with CHAT_USER_MAX_ANSWERS=1 shared by two streamers through one
 * table, alice's second answer is refused on the other streamer while her first streams, bob's is not,
 * and once hers is complete she may ask again there. */
static void test_user_limit_across_streamers(void **state)
{
    (void)state;
    char file[600];
    snprintf(file, sizeof file, "CHAT_USERLIMIT_FILE=%s/ul.table", E.dir);
    const char *limits[] = {"CHAT_USER_MAX_ANSWERS=1", file, NULL};
    two_streamers t;
    two_streamers_start(&t, "ul", limits);
    answer first, refused, bobs, again;
    chat_wsc *a = ask_partly_on(t.port_a, NULL, 2, &first); /* alice's answer is streaming on streamer A */
    chat_wsc *b = ws_open_on(t.port_b, E.alice), *other = ws_open_on(t.port_b, E.bob);
    ask(b, QUESTION, &refused);
    assert_null(refused.complete);
    assert_string_equal(refused.error, "RATE_LIMITED");
    ask(other, QUESTION, &bobs); /* a limit per user, not per streamer */
    assert_non_null(bobs.complete);
    collect(a, &first, ANSWER_MS, NULL, NULL);
    assert_non_null(first.complete);
    ask(b, QUESTION, &again); /* her answer is over: B accepts her again */
    assert_non_null(again.complete);
    answer_clear(&first);
    answer_clear(&refused);
    answer_clear(&bobs);
    answer_clear(&again);
    chat_wsc_close(a, 1000, NULL);
    chat_wsc_close(b, 1000, NULL);
    chat_wsc_close(other, 1000, NULL);
    two_streamers_stop(&t);
}

TESTUTIL_MAIN(group_setup, group_teardown,
              cmocka_unit_test(test_status_and_paths),
              cmocka_unit_test(test_origin_allowlist),
              cmocka_unit_test(test_origin_settings),
              cmocka_unit_test(test_request_head_timeout),
              cmocka_unit_test(test_auth_query_success),
              cmocka_unit_test(test_auth_query_failure_then_message),
              cmocka_unit_test(test_auth_message_expired_and_retry),
              cmocka_unit_test(test_token_expires_on_open_connection),
              cmocka_unit_test(test_token_expires_with_queue),
              cmocka_unit_test(test_message_without_auth),
              cmocka_unit_test(test_auth_replies),
              cmocka_unit_test(test_jwt_attacks),
              cmocka_unit_test(test_streaming_chat),
              cmocka_unit_test(test_multiple_messages),
              cmocka_unit_test(test_empty_message),
              cmocka_unit_test(test_protocol_errors),
              cmocka_unit_test(test_session_id_of_another_user),
              cmocka_unit_test(test_partial_false),
              cmocka_unit_test(test_cancel),
              cmocka_unit_test(test_disconnect_cancels_job),
              cmocka_unit_test(test_queueing),
              cmocka_unit_test(test_oversized_frames),
              cmocka_unit_test(test_invalid_utf8_and_binary),
              cmocka_unit_test(test_unmasked_frame),
              cmocka_unit_test(test_no_workers),
              cmocka_unit_test(test_single_worker_back_to_back),
              cmocka_unit_test(test_worker_slots_run_concurrently),
              cmocka_unit_test_setup_teardown(test_openai_through_worker, fake_llm_setup, fake_llm_teardown),
              cmocka_unit_test(test_worker_with_slots_killed),
              cmocka_unit_test(test_token_batching),
              cmocka_unit_test(test_rate_limited),
              cmocka_unit_test(test_token_refresh),
              cmocka_unit_test(test_rate_limited_unauthenticated_and_pings),
              cmocka_unit_test(test_auth_deadline),
              cmocka_unit_test(test_rs256_and_alg_confusion),
              cmocka_unit_test(test_idle_timeout),
              cmocka_unit_test(test_keepalive_empty_pongs),
              cmocka_unit_test(test_worker_killed_mid_answer),
              cmocka_unit_test(test_cancel_then_worker_lost),
              cmocka_unit_test(test_slow_reader),
              cmocka_unit_test_setup(test_resume_after_drop, resume_setup),
              cmocka_unit_test(test_resume_answer_waiting_for_slot),
              cmocka_unit_test_setup(test_resume_other_case, resume_setup),
              cmocka_unit_test_setup(test_restarted_streamer_waits_for_workers, resume_setup),
              cmocka_unit_test_setup(test_drop_finishes_answer, resume_setup),
              cmocka_unit_test_setup(test_resume_finished_answer, resume_setup),
              cmocka_unit_test_setup(test_two_tabs, resume_setup),
              cmocka_unit_test_setup(test_cancel_from_other_tab, resume_setup),
              cmocka_unit_test_setup(test_resume_other_user, resume_setup),
              cmocka_unit_test_setup(test_same_session_id_two_users, resume_setup),
              cmocka_unit_test_setup(test_resume_stale_and_future_seq, resume_setup),
              cmocka_unit_test_setup(test_resume_after_worker_killed, resume_setup),
              cmocka_unit_test_setup(test_resume_after_streamer_killed, resume_setup),
              cmocka_unit_test(test_resume_on_another_streamer),
              cmocka_unit_test(test_user_limit_across_streamers),
              cmocka_unit_test(test_user_limits_on_by_default),
              cmocka_unit_test(test_turns_kept_while_database_away),
              cmocka_unit_test(test_sigterm_with_answer_in_flight),
              cmocka_unit_test_setup_teardown(test_sighup_reloads_agent_settings, fake_llm_setup, fake_llm_teardown),
              cmocka_unit_test_setup_teardown(test_fallback_through_worker, fake_llm_setup, fake_llm_teardown))
