/* End-to-end tests of CurveZMQ between chat-streamer and chat-worker processes over TCP on loopback.
 *
 * The group set-up makes four key pairs with build/bin/chat-keys (a streamer, another streamer, an
 * allowed worker, a stranger), a database chat_t_curve with the sample data, and one streamer on
 * tcp://127.0.0.1:<free port> with CURVE that admits only the allowed worker's key. Each test starts the
 * workers it needs (CHAT_WORKERS=1, extractive provider) and stops them. Traffic is looked at through a
 * small TCP proxy of this file's own (a thread) between a worker and its streamer: under CURVE the
 * question's text never crosses it, and a control run without CURVE shows that the check would see it.
 * Logs: $CHAT_VAR/log/streamer-curve-*.log (under the suite's log-hygiene check). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
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
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_util.h"
#include "e2eutil.h"
#include "testutil.h"
#include "wsclient.h"

#define SECRET "e2e-curve-secret-0123456789abcdef0123"
#define QUESTION "What is the engine power of the Seawind 250?"
#define WAIT_MS 15000 /* longest wait for a worker to register or be refused */
#define CAPTURE_MAX (4 << 20)

typedef char pubkey[41];

static struct {
    char dir[256], log_dir[512];
    char bin_streamer[512], bin_worker[512];
    pubkey streamer, other_streamer, worker, stranger; /* public keys */
    char endpoint[64];                                 /* where the CURVE streamer's ROUTER binds */
    int zmq_port, port;
    pid_t pid;
    char *token;
} C;

/* ---------------------------------------------------------------- files and keys */

static const char *in_dir(const char *name)
{
    static char p[2][320];
    static int k;
    k ^= 1;
    snprintf(p[k], sizeof p[k], "%s/%s", C.dir, name);
    return p[k];
}

static const char *log_path(const char *name)
{
    static char p[700];
    snprintf(p, sizeof p, "%s/streamer-curve-%s.log", C.log_dir, name);
    return p;
}

/* chat-keys DIR/name.key; its public key (the tool's only output) into pub. */
static void make_keys(const char *name, pubkey pub)
{
    char cmd[1024], file[64];
    snprintf(file, sizeof file, "%s.key", name);
    snprintf(cmd, sizeof cmd, "'%s' '%s'", testutil_path("build/bin/chat-keys"), in_dir(file));
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char line[128] = "";
    assert_non_null(fgets(line, sizeof line, p));
    assert_int_equal(pclose(p), 0);
    line[strcspn(line, "\n")] = '\0';
    assert_int_equal(strlen(line), 40);
    memcpy(pub, line, 41);
    struct stat st;
    assert_int_equal(stat(in_dir(file), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
}

static void write_file(const char *name, const char *text)
{
    FILE *f = fopen(in_dir(name), "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static bool log_has(const char *name, const char *needle)
{
    char *text = testutil_read_file(log_path(name), NULL);
    bool has = text && strstr(text, needle);
    free(text);
    return has;
}

/* ---------------------------------------------------------------- processes */

/* Starts bin logging to log_path(name) with the settings both programs share, then own (a program's
 * own), then extra (a test's; each list NULL-terminated, a later mention of a name wins). */
static pid_t spawn(const char *name, const char *bin, const char *endpoint, const char *const own[],
                   const char *const extra[])
{
    char zmq[128];
    snprintf(zmq, sizeof zmq, "CHAT_ZMQ_ENDPOINT=%s", endpoint);
    const char *env[32] = {zmq, "CHAT_DB_NAME=chat_t_curve", "CHAT_LOG_LEVEL=info", "CHAT_SHUTDOWN_GRACE_S=2",
                           /* whatever the caller's environment holds: only what a test says */
                           "CHAT_CURVE_SECRET_FILE", "CHAT_CURVE_ALLOWED", "CHAT_CURVE_SERVER_KEY",
                           "CHAT_ZMQ_INSECURE"};
    int n = 8;
    const char *const *lists[] = {own, extra};
    for (size_t l = 0; l < CHAT_ARRAY_LEN(lists); l++)
        for (int i = 0; lists[l] && lists[l][i] && n < 31; i++)
            env[n++] = lists[l][i];
    env[n] = NULL;
    const char *argv[] = {bin, NULL};
    unlink(log_path(name));
    pid_t pid = e2e_spawn(argv, env, log_path(name));
    assert_true(pid > 0);
    return pid;
}

/* A streamer on endpoint; its pid once it listens on *port, or -1 when it exited first (a refusal to
 * start). */
static pid_t streamer_start(const char *name, const char *endpoint, const char *const extra[], int *port)
{
    char listen[64];
    *port = e2e_free_port();
    assert_true(*port > 0);
    snprintf(listen, sizeof listen, "CHAT_STREAMER_LISTEN=127.0.0.1:%d", *port);
    const char *own[] = {listen, "JWT_SECRET=" SECRET, "CHAT_STREAMER_START_WAIT_MS=0", NULL}; /* refusals at once */
    pid_t pid = spawn(name, C.bin_streamer, endpoint, own, extra);
    if (e2e_wait_port("127.0.0.1", *port, 5000, pid) == 0) return pid;
    e2e_stop(pid, SIGKILL, 1000, NULL);
    return -1;
}

/* A worker supervisor (one worker of two slots, the extractive provider) connecting to endpoint. */
static pid_t worker_start(const char *name, const char *endpoint, const char *const extra[])
{
    static const char *const own[] = {"CHAT_WORKERS=1", "CHAT_WORKER_SLOTS=2", "CHAT_LLM_PROVIDER=extractive",
                                      "CHAT_TOKEN_DELAY_MS=0", NULL};
    return spawn(name, C.bin_worker, endpoint, own, extra);
}

static void stop(pid_t pid)
{
    if (pid > 0) e2e_stop(pid, SIGTERM, 10000, NULL);
}

/* pid exits by itself within 5 s with status 1 (a refusal to start). */
static void expect_refusal(pid_t pid)
{
    int status = 0;
    if (e2e_wait_exit(pid, 5000, &status)) {
        e2e_stop(pid, SIGKILL, 1000, NULL);
        fail_msg("still running: it should have refused to start");
    }
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 1);
}

/* A number in the streamer's /status, -1 when unreadable. */
static long long status_num(int port, const char *key)
{
    char body[16384];
    if (e2e_http_get("127.0.0.1", port, "/status", NULL, body, sizeof body, 2000) != 200) return -1;
    json_object *st = json_tokener_parse(body), *v;
    long long n = st && json_object_object_get_ex(st, key, &v) ? json_object_get_int64(v) : -1;
    json_object_put(st);
    return n;
}

/* Waits until /status's key reaches at least min: true, or false after WAIT_MS. */
static bool wait_status(int port, const char *key, long long min)
{
    for (long long deadline = e2e_now_ms() + WAIT_MS; e2e_now_ms() < deadline; e2e_sleep_ms(50))
        if (status_num(port, key) >= min) return true;
    return false;
}

/* The previous test's workers have left the streamer. */
static void wait_no_workers(void)
{
    for (long long deadline = e2e_now_ms() + WAIT_MS; status_num(C.port, "workers_live") != 0; e2e_sleep_ms(50))
        if (e2e_now_ms() > deadline) fail_msg("a worker is still registered");
}

/* ---------------------------------------------------------------- asking */

/* Asks QUESTION on a new connection to port: the complete response (caller frees), or NULL with the
 * error frame's code in code. */
static char *ask(int port, char code[32])
{
    char url[4096], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ws/chat?token=%s", port, C.token);
    chat_wsc_opts opts = {.timeout_ms = 5000};
    chat_wsc *c = chat_wsc_connect(url, &opts, NULL, err, sizeof err);
    if (!c) fail_msg("connect: %s", err);
    static const char msg[] = "{\"type\":\"message\",\"message\":\"" QUESTION "\"}";
    assert_int_equal(chat_wsc_send_text(c, msg, sizeof msg - 1), 0);
    char *response = NULL;
    snprintf(code, 32, "none");
    for (long long deadline = e2e_now_ms() + WAIT_MS; !response && e2e_now_ms() < deadline;) {
        json_object *o = NULL, *v;
        if (chat_wsc_recv_json(c, 1000, &o)) continue;
        const char *type = json_object_object_get_ex(o, "type", &v) ? json_object_get_string(v) : "";
        if (!strcmp(type, "complete") && json_object_object_get_ex(o, "response", &v)) {
            response = strdup(json_object_get_string(v));
        } else if (!strcmp(type, "error")) {
            snprintf(code, 32, "%s", json_object_object_get_ex(o, "code", &v) ? json_object_get_string(v) : "?");
            json_object_put(o);
            break;
        }
        json_object_put(o);
    }
    chat_wsc_close(c, 1000, NULL);
    return response;
}

/* ---------------------------------------------------------------- the proxy */

/* Forwards connections from its port to target_port on loopback and keeps every byte it saw, both ways
 * (up to CAPTURE_MAX). One thread, poll(); a worker has one connection at a time, a few are allowed. */
typedef struct proxy {
    int listen_fd, port, target_port;
    pthread_t thread;
    atomic_bool stop;
    pthread_mutex_t mu;
    chat_buf seen;
} proxy;

enum { PROXY_PAIRS = 4 };

static int connect_loopback(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* Moves what from has to to, keeping a copy. False when the pair is over (EOF or an error). */
static bool proxy_move(proxy *p, int from, int to)
{
    char buf[16384];
    ssize_t n = e2e_pass(from, to, buf, sizeof buf);
    if (n <= 0) return false;
    pthread_mutex_lock(&p->mu);
    if (p->seen.len + (size_t)n <= CAPTURE_MAX) chat_buf_append(&p->seen, buf, (size_t)n);
    pthread_mutex_unlock(&p->mu);
    return true;
}

static void *proxy_main(void *arg)
{
    proxy *p = arg;
    int fds[PROXY_PAIRS][2];
    for (int i = 0; i < PROXY_PAIRS; i++)
        fds[i][0] = fds[i][1] = -1;
    while (!atomic_load(&p->stop)) {
        struct pollfd pf[1 + 2 * PROXY_PAIRS] = {{.fd = p->listen_fd, .events = POLLIN}};
        for (int i = 0; i < PROXY_PAIRS; i++)
            for (int k = 0; k < 2; k++)
                pf[1 + 2 * i + k] = (struct pollfd){.fd = fds[i][k], .events = POLLIN};
        if (poll(pf, 1 + 2 * PROXY_PAIRS, 100) <= 0) continue;
        for (int i = 0; i < PROXY_PAIRS; i++)
            for (int k = 0; k < 2; k++) {
                if (fds[i][k] < 0 || !(pf[1 + 2 * i + k].revents & (POLLIN | POLLHUP | POLLERR))) continue;
                if (proxy_move(p, fds[i][k], fds[i][!k])) continue;
                close(fds[i][0]), close(fds[i][1]);
                fds[i][0] = fds[i][1] = -1;
            }
        if (!(pf[0].revents & POLLIN)) continue;
        int in = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC), out = in >= 0 ? connect_loopback(p->target_port) : -1;
        int slot = 0;
        while (slot < PROXY_PAIRS && fds[slot][0] >= 0)
            slot++;
        if (in < 0 || out < 0 || slot == PROXY_PAIRS) {
            if (in >= 0) close(in);
            if (out >= 0) close(out);
            continue;
        }
        fds[slot][0] = in, fds[slot][1] = out;
    }
    for (int i = 0; i < PROXY_PAIRS; i++)
        for (int k = 0; k < 2; k++)
            if (fds[i][k] >= 0) close(fds[i][k]);
    return NULL;
}

static void proxy_start(proxy *p, int target_port)
{
    memset(p, 0, sizeof *p);
    chat_buf_init(&p->seen);
    pthread_mutex_init(&p->mu, NULL);
    p->target_port = target_port;
    p->listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    assert_int_equal(bind(p->listen_fd, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(p->listen_fd, 8), 0);
    assert_int_equal(getsockname(p->listen_fd, (struct sockaddr *)&a, &len), 0);
    p->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&p->thread, NULL, proxy_main, p), 0);
}

/* Stops the proxy; true when what it saw holds needle. The bytes are dropped (never written to a log). */
static bool proxy_stop_saw(proxy *p, const char *needle, size_t *seen_len)
{
    atomic_store(&p->stop, true);
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
    bool saw = p->seen.len && memmem(p->seen.data, p->seen.len, needle, strlen(needle));
    *seen_len = p->seen.len;
    chat_buf_free(&p->seen);
    pthread_mutex_destroy(&p->mu);
    return saw;
}

/* ---------------------------------------------------------------- set-up */

static int group_setup(void **state)
{
    (void)state;
    memset(&C, 0, sizeof C);
    /* The programs under test (CHAT_E2E_*_BIN: other builds, e.g. with sanitizers), logs beside the suite's. */
    struct {
        const char *env, *dflt;
        char *out;
    } bins[] = {{"CHAT_E2E_STREAMER_BIN", "build/bin/chat-streamer", C.bin_streamer},
                {"CHAT_E2E_WORKER_BIN", "build/bin/chat-worker", C.bin_worker}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bins); i++) {
        const char *v = getenv(bins[i].env);
        snprintf(bins[i].out, sizeof C.bin_worker, "%s", v && *v ? v : testutil_path(bins[i].dflt));
    }
    const char *var = getenv("CHAT_VAR");
    snprintf(C.log_dir, sizeof C.log_dir, "%s%s", var && *var ? var : testutil_path("build/tests/e2e"),
             var && *var ? "/log" : "");
    const char *d = e2e_tmpdir("chat-curve-e2e");
    assert_non_null(d);
    snprintf(C.dir, sizeof C.dir, "%s", d);
    make_keys("streamer", C.streamer);
    make_keys("other-streamer", C.other_streamer);
    make_keys("worker", C.worker);
    make_keys("stranger", C.stranger);
    char allowed[256];
    snprintf(allowed, sizeof allowed, "# the workers this streamer admits\n%s   # worker\n", C.worker);
    write_file("workers.allowed", allowed);
    snprintf(allowed, sizeof allowed, "%s\n", C.other_streamer);
    write_file("other.allowed", allowed);

    chat_db_free(testutil_db_fresh("curve", TESTUTIL_SAMPLE));
    C.token = chat_jwt_mint_hs256(SECRET, "alice", "alice@example.com", "Alice", time(NULL), 3600);
    assert_non_null(C.token);

    C.zmq_port = e2e_free_port();
    snprintf(C.endpoint, sizeof C.endpoint, "tcp://127.0.0.1:%d", C.zmq_port);
    char secret[400], list[400];
    snprintf(secret, sizeof secret, "CHAT_CURVE_SECRET_FILE=%s", in_dir("streamer.key"));
    snprintf(list, sizeof list, "CHAT_CURVE_ALLOWED=%s", in_dir("workers.allowed"));
    const char *extra[] = {secret, list, NULL};
    C.pid = streamer_start("main", C.endpoint, extra, &C.port);
    if (C.pid < 0) fail_msg("the CURVE streamer did not start, see %s", log_path("main"));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    stop(C.pid);
    free(C.token);
    e2e_rmdir(C.dir);
    return 0;
}

/* CHAT_CURVE_* settings for a worker: its secret file and the streamer key it expects (NULL: none). */
typedef struct worker_keys {
    char secret[400], server[80];
    const char *env[4];
} worker_keys;

static const char *const *worker_env(worker_keys *k, const char *secret_name, const char *server_key)
{
    snprintf(k->secret, sizeof k->secret, "CHAT_CURVE_SECRET_FILE=%s", in_dir(secret_name));
    snprintf(k->server, sizeof k->server, "CHAT_CURVE_SERVER_KEY=%s", server_key ? server_key : "");
    k->env[0] = k->secret;
    k->env[1] = k->server;
    k->env[2] = NULL;
    return k->env;
}

/* ---------------------------------------------------------------- tests */

/* A network endpoint without keys stops both programs at start, naming the settings; so does a secret
 * file others may read. */
static void test_network_endpoint_needs_keys(void **state)
{
    (void)state;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", e2e_free_port());
    int port;
    assert_int_equal(streamer_start("nokeys", endpoint, NULL, &port), -1);
    assert_true(log_has("nokeys", "CHAT_ZMQ_INSECURE=1"));
    expect_refusal(worker_start("nokeys-worker", endpoint, NULL));
    assert_true(log_has("nokeys-worker", "CHAT_CURVE_SERVER_KEY"));

    assert_int_equal(chmod(in_dir("stranger.key"), 0644), 0);
    worker_keys k = {0};
    expect_refusal(worker_start("readable-key", C.endpoint, worker_env(&k, "stranger.key", C.streamer)));
    assert_true(log_has("readable-key", "chmod 600"));
    assert_int_equal(chmod(in_dir("stranger.key"), 0600), 0);
    /* A worker whose CHAT_CURVE_ALLOWED lists two streamers must say which one CHAT_ZMQ_ENDPOINT is. */
    char two[128], list[400];
    snprintf(two, sizeof two, "%s\n%s\n", C.streamer, C.other_streamer);
    write_file("two.allowed", two);
    snprintf(list, sizeof list, "CHAT_CURVE_ALLOWED=%s", in_dir("two.allowed"));
    const char *choose[] = {worker_env(&k, "worker.key", NULL)[0], list, NULL};
    expect_refusal(worker_start("two-streamers", C.endpoint, choose));
    assert_true(log_has("two-streamers", "set CHAT_CURVE_SERVER_KEY"));
}

/* The control: without CURVE (CHAT_ZMQ_INSECURE=1, a warning in both logs) the proxy sees the question,
 * so the check of the next test would see it too. */
static void test_plain_traffic_is_visible(void **state)
{
    (void)state;
    char endpoint[64];
    int zport = e2e_free_port(), port;
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", zport);
    const char *insecure[] = {"CHAT_ZMQ_INSECURE=1", NULL};
    pid_t s = streamer_start("plain", endpoint, insecure, &port);
    assert_true(s > 0);
    proxy p;
    proxy_start(&p, zport);
    char via[64];
    snprintf(via, sizeof via, "tcp://127.0.0.1:%d", p.port);
    pid_t w = worker_start("plain-worker", via, insecure);
    assert_true(wait_status(port, "workers_live", 1));
    char code[32];
    char *response = ask(port, code);
    if (!response) fail_msg("no answer (%s)", code);
    free(response);
    stop(w);
    stop(s);
    size_t seen;
    assert_true(proxy_stop_saw(&p, QUESTION, &seen));
    assert_true(log_has("plain", "plain ZeroMQ (CHAT_ZMQ_INSECURE=1)"));
    assert_true(log_has("plain-worker", "plain ZeroMQ (CHAT_ZMQ_INSECURE=1)"));
}

/* An allowed worker answers through the proxy, and nothing of the question crosses it in clear. */
static void test_allowed_worker_answers_encrypted(void **state)
{
    (void)state;
    proxy p;
    proxy_start(&p, C.zmq_port);
    char via[64];
    snprintf(via, sizeof via, "tcp://127.0.0.1:%d", p.port);
    worker_keys k = {0};
    pid_t w = worker_start("allowed", via, worker_env(&k, "worker.key", C.streamer));
    long long live = status_num(C.port, "workers_live");
    if (!wait_status(C.port, "workers_live", live + 1)) fail_msg("the allowed worker did not register");
    char code[32];
    char *response = ask(C.port, code);
    if (!response) fail_msg("no answer (%s)", code);
    assert_true(strlen(response) > 20);
    stop(w);
    size_t seen;
    bool clear = proxy_stop_saw(&p, QUESTION, &seen);
    assert_false(clear);
    assert_true(seen > strlen(QUESTION) + strlen(response)); /* the job and its answer did cross it */
    free(response);
    assert_int_equal(status_num(C.port, "workers_refused"), 0);
    char shown[64];
    snprintf(shown, sizeof shown, "admitted a peer from 127.0.0.1 (public key %.8s...)", C.worker);
    assert_true(log_has("main", shown));
}

/* A worker whose key the streamer does not list gets no job: refused, counted, logged with no more of
 * its key than the first characters. */
static void test_unlisted_worker_refused(void **state)
{
    (void)state;
    wait_no_workers();
    long long refused = status_num(C.port, "workers_refused");
    worker_keys k = {0};
    pid_t w = worker_start("stranger", C.endpoint, worker_env(&k, "stranger.key", C.streamer));
    bool counted = wait_status(C.port, "workers_refused", refused + 1);
    long long live = status_num(C.port, "workers_live");
    char code[32];
    char *response = ask(C.port, code);
    stop(w);
    assert_true(counted);
    assert_int_equal(live, 0);
    assert_null(response);
    assert_string_equal(code, "OVERLOADED");
    char shown[64];
    snprintf(shown, sizeof shown, "refused a peer from 127.0.0.1 (public key %.8s...)", C.stranger);
    assert_true(log_has("main", shown));
    assert_false(log_has("main", C.stranger)); /* never the whole key */
}

/* A worker that expects another streamer's key, or speaks no CURVE, never gets through the handshake:
 * no job, and the failed handshakes are counted. */
static void test_worker_refuses_other_streamer(void **state)
{
    (void)state;
    char list[400];
    snprintf(list, sizeof list, "CHAT_CURVE_ALLOWED=%s", in_dir("other.allowed"));
    worker_keys k1 = {0}, k2 = {0};
    const char *by_list[] = {worker_env(&k2, "worker.key", NULL)[0], list, NULL};
    const char *plain[] = {"CHAT_ZMQ_INSECURE=1", NULL};
    const struct {
        const char *name;
        const char *const *env;
    } cases[] = {
        {"other-key", worker_env(&k1, "worker.key", C.other_streamer)}, /* CHAT_CURVE_SERVER_KEY */
        {"other-list", by_list},                                        /* the one key of its CHAT_CURVE_ALLOWED */
        {"plain", plain},
    };
    wait_no_workers();
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        long long failed = status_num(C.port, "worker_handshakes_failed");
        long long refused = status_num(C.port, "workers_refused");
        pid_t w = worker_start(cases[i].name, C.endpoint, cases[i].env);
        bool counted = wait_status(C.port, "worker_handshakes_failed", failed + 1);
        e2e_sleep_ms(300);
        long long live = status_num(C.port, "workers_live");
        char code[32];
        char *response = ask(C.port, code);
        stop(w);
        if (!counted) fail_msg("%s: no failed handshake counted", cases[i].name);
        if (live != 0 || response) fail_msg("%s: %lld workers live, answered: %d", cases[i].name, live, !!response);
        assert_string_equal(code, "OVERLOADED");
        assert_int_equal(status_num(C.port, "workers_refused"), refused); /* ZAP never asked */
    }
    assert_true(log_has("main", "the peer expects another server key"));
    /* a plain peer: libzmq reports the mechanism mismatch, or, when the peer hangs up first, no detail */
    assert_true(log_has("main", "the peer does not use CURVE") || log_has("main", "a handshake failed (no detail"));
}

TESTUTIL_MAIN(group_setup, group_teardown,
              cmocka_unit_test(test_network_endpoint_needs_keys),      cmocka_unit_test(test_plain_traffic_is_visible),
              cmocka_unit_test(test_allowed_worker_answers_encrypted), cmocka_unit_test(test_unlisted_worker_refused),
              cmocka_unit_test(test_worker_refuses_other_streamer))
