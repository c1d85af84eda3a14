/* chat-bench: a load generator for the chat protocol (docs/benchmarks.md has the how and the results).
 *
 *   chat-bench idle    hold N authenticated WebSocket connections for T seconds; with --pid-file, the RSS
 *                      of the server processes before and while holding them, per connection
 *   chat-bench connect open and authenticate N connections, report connect and auth latency, close
 *   chat-bench chat    C connections, closed loop (send, read to complete, repeat) or open loop (--rate);
 *                      connect, auth, first-token, inter-token and turn latency, turns/s, token frames/s
 *   chat-bench rest    C HTTP/1.1 keep-alive connections, closed loop: GET (e.g. /health) or, for
 *                      /api/v1/chat, POST a question with a Bearer token; requests/s and latency
 *
 * Design:
 * - One epoll loop per process over non-blocking sockets, a small state machine per connection, so that
 *   tens of thousands of connections cost ~100 bytes each here: read buffers exist only while a partial
 *   frame is pending, and reads go to one shared scratch buffer. The RFC 6455 framing (frame headers,
 *   masks, the accept key) is tools/ws_frame.c, the same as chat_wsc's (tools/wsclient.c, the blocking
 *   client of the tests and chat-ws); this file adds only the event engine around it.
 * - Several processes (fork) when one process's RLIMIT_NOFILE cannot hold the connections; they connect,
 *   report READY, start the measured phase together on the parent's signal, and send their counters and
 *   latency histograms (bench/bench_stats.h: fixed-size, mergeable) back through a pipe.
 * - Loopback only: ws://127.x.y.z or localhost or [::1], or a Unix socket (ws+unix:/path.sock:/ws/chat,
 *   the form libwebsockets uses). Source addresses can be spread over 127.0.0.1..127.0.0.N (bind with
 *   IP_BIND_ADDRESS_NO_PORT, so each address has its own ephemeral port range).
 * - Bounded: every phase has a deadline, the whole run has --max-time, children die with the parent.
 * - Tokens are minted per simulated user with chat_jwt_mint_hs256 from JWT_SECRET or --secret-file, before
 *   any timing starts. Neither tokens nor questions are printed.
 * - Latency is measured here, on the client side of loopback: it includes both kernels' socket work and
 *   this process's scheduling. Worker-side timings that the server reports (metadata.timings of complete
 *   frames) are aggregated beside it. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench_stats.h"
#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "cli.h"
#include "ws_frame.h"

#define MAX_TARGETS 16
#define MAX_PIDS 8
#define MAX_ERRS 48
#define MAX_TIMING_KEYS 6
#define MAX_PROCS 64
#define MAX_CONNS 1000000L
#define SCRATCH_BYTES (256u * 1024)
#define RBUF_MAX (16u << 20) /* a server message larger than this fails the connection */

enum { M_IDLE, M_CONNECT, M_CHAT, M_REST };
static const char *const MODE_NAMES[] = {"idle", "connect", "chat", "rest"}; /* in M_* order */
enum { A_MESSAGE, A_QUERY, A_NONE };
enum { ST_FREE, ST_WAIT_RETRY, ST_CONNECTING, ST_HANDSHAKE, ST_AUTH, ST_IDLE, ST_TURN, ST_HTTP_IDLE, ST_HTTP_WAIT, ST_CLOSED };
enum { H_TCP, H_OPEN, H_AUTH, H_CONNAUTH, H_ACK, H_FIRST, H_GAP, H_TURN, H_OUTSIDE, H_REST, H_COUNT };
static const char *const H_NAMES[H_COUNT] = {
    "tcp connect", "ws open (connect+upgrade)", "auth -> auth_success", "connect+auth",
    "first frame (progress)", "first token", "inter-token gap", "turn (send -> complete)",
    "first token - pipeline's", "request -> response",
};

typedef struct target {
    bool is_unix;
    struct sockaddr_storage addr;
    socklen_t alen;
    char host_hdr[280];
    char path[1024];
    char label[300];
} target;

typedef struct opts {
    int mode;
    target targets[MAX_TARGETS];
    int ntargets;
    long conns;
    int procs;
    long per_proc;
    int concurrency;
    int src_addrs;
    double duration, warmup, timeout, max_time, settle;
    int auth;
    char secret[1024];
    char *fixed_token;
    long users;
    double rate;
    long messages;
    int think_ms;
    char **questions; /* pre-built message frames (JSON) for chat, request bodies for rest */
    size_t *qlens;
    size_t nquestions;
    const char *pid_files[MAX_PIDS];
    int npids;
    const char *status_url;
} opts;

typedef struct err_entry {
    char name[48];
    uint64_t n;
} err_entry;

/* Everything a process measures; sent whole to the parent at the end. The counters from attempted to
 * bytes_in are consecutive uint64_t fields: stats_merge adds them as an array. */
typedef struct stats {
    uint64_t attempted, established, authed, failed_setup, connect_retries, dropped_after_setup;
    uint64_t turns_sent, turns_done, turns_error, turns_done_window, frames_window, token_frames_window;
    uint64_t token_frames, completion_tokens, answers_with_usage, missed_sends, reconnects;
    uint64_t rest_done, rest_done_window, rest_ok_window, rest_non2xx, tokens_window, pings, bytes_in;
    uint64_t ready_by_target[MAX_TARGETS];
    double window_s;
    int nerrs, ntiming;
    err_entry errs[MAX_ERRS];
    char timing_keys[MAX_TIMING_KEYS][24];
    bench_hist h[H_COUNT];
    bench_hist timing[MAX_TIMING_KEYS];
} stats;

typedef struct conn {
    int fd;
    uint8_t state;
    uint8_t target;
    uint8_t frag_op;
    bool in_window; /* the current turn/request started inside the measured window */
    bool got_ack, got_token;
    bool reconnect; /* REST: setting up again after the server ended keep-alive */
    uint32_t idx; /* global index: user, source address, target, key */
    int64_t t0;   /* start of the current operation (connect, auth, turn, request), us */
    int64_t t_conn, t_last;
    int64_t first_us; /* this turn: send -> first token */
    int64_t deadline_ms;
    char *rbuf; /* pending partial input */
    uint32_t rlen, rcap;
    char *wbuf; /* pending output */
    uint32_t wlen, woff;
    char *frag; /* fragmented message being reassembled */
    uint32_t flen, fcap;
    char *token; /* until authenticated */
} conn;

/* ------------------------------------------------------------------ small helpers */

static volatile sig_atomic_t g_stop;
static void on_signal(int sig) { g_stop = sig; }

static int64_t now_ms(void) { return chat_now_us() / 1000; }

/* Errors are counted by name; past MAX_ERRS distinct names the rest go to the last slot, "other". */
static void stats_err_n(stats *s, const char *name, uint64_t n)
{
    for (int i = 0; i < s->nerrs; i++)
        if (!strcmp(s->errs[i].name, name)) {
            s->errs[i].n += n;
            return;
        }
    if (s->nerrs < MAX_ERRS - 1) {
        snprintf(s->errs[s->nerrs].name, sizeof s->errs[0].name, "%s", name);
        s->errs[s->nerrs++].n = n;
        return;
    }
    if (s->nerrs == MAX_ERRS - 1) {
        snprintf(s->errs[s->nerrs].name, sizeof s->errs[0].name, "other");
        s->errs[s->nerrs++].n = 0;
    }
    s->errs[MAX_ERRS - 1].n += n;
}

static void stats_err(stats *s, const char *name) { stats_err_n(s, name, 1); }

static int timing_slot(stats *s, const char *key)
{
    for (int i = 0; i < s->ntiming; i++)
        if (!strcmp(s->timing_keys[i], key)) return i;
    if (s->ntiming == MAX_TIMING_KEYS || strlen(key) >= sizeof s->timing_keys[0]) return -1;
    snprintf(s->timing_keys[s->ntiming], sizeof s->timing_keys[0], "%s", key);
    bh_init(&s->timing[s->ntiming]);
    return s->ntiming++;
}

static void stats_merge(stats *into, const stats *from)
{
    uint64_t *a = &into->attempted;
    const uint64_t *b = &from->attempted;
    size_t n = (size_t)(&into->bytes_in - &into->attempted) + 1;
    for (size_t i = 0; i < n; i++) a[i] += b[i];
    for (int i = 0; i < MAX_TARGETS; i++) into->ready_by_target[i] += from->ready_by_target[i];
    if (from->window_s > into->window_s) into->window_s = from->window_s;
    for (int i = 0; i < from->nerrs; i++) stats_err_n(into, from->errs[i].name, from->errs[i].n);
    for (int i = 0; i < H_COUNT; i++) bh_merge(&into->h[i], &from->h[i]);
    for (int i = 0; i < from->ntiming; i++) {
        int j = timing_slot(into, from->timing_keys[i]);
        if (j >= 0) bh_merge(&into->timing[j], &from->timing[i]);
    }
}

static bool write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n, len -= (size_t)n;
    }
    return true;
}

/* Reads exactly len bytes, waiting at most until deadline_ms (0 = forever). */
static bool read_all(int fd, void *buf, size_t len, int64_t deadline_ms)
{
    char *p = buf;
    while (len) {
        if (deadline_ms) {
            int64_t left = deadline_ms - now_ms();
            if (left <= 0) return false;
            struct pollfd pfd = {.fd = fd, .events = POLLIN};
            int pr = poll(&pfd, 1, (int)(left > 1000 ? 1000 : left));
            if (pr < 0 && errno != EINTR) return false;
            if (pr <= 0) continue;
        }
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return false;
        p += n, len -= (size_t)n;
    }
    return true;
}

static void b64(const unsigned char *in, int n, char *out) { EVP_EncodeBlock((unsigned char *)out, in, n); }

/* ------------------------------------------------------------------ targets (loopback only) */

static bool loopback_host(const char *host, size_t hl, struct sockaddr_storage *ss, socklen_t *alen)
{
    char h[64];
    if (hl == 0 || hl >= sizeof h) return false;
    memcpy(h, host, hl);
    h[hl] = '\0';
    if (!strcmp(h, "localhost")) snprintf(h, sizeof h, "127.0.0.1");
    memset(ss, 0, sizeof *ss);
    if (!strcmp(h, "[::1]")) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        a6->sin6_family = AF_INET6;
        a6->sin6_addr = in6addr_loopback;
        *alen = sizeof *a6;
        return true;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    if (inet_pton(AF_INET, h, &a->sin_addr) != 1) return false;
    if ((ntohl(a->sin_addr.s_addr) >> 24) != 127) return false;
    a->sin_family = AF_INET;
    *alen = sizeof *a;
    return true;
}

/* ws://HOST[:PORT]/PATH, ws+unix:/SOCKET[:/PATH], and the same with http. */
static int parse_target(const char *url, bool http, target *t, char *err, size_t errlen)
{
    memset(t, 0, sizeof *t);
    const char *scheme = http ? "http" : "ws";
    size_t sl = strlen(scheme);
    snprintf(t->label, sizeof t->label, "%s", url);
    if (!strncmp(url, scheme, sl) && !strncmp(url + sl, "+unix:", 6)) {
        const char *sock = url + sl + 6;
        const char *sep = strstr(sock + 1, ":/");
        size_t plen = sep ? (size_t)(sep - sock) : strlen(sock);
        struct sockaddr_un *un = (struct sockaddr_un *)&t->addr;
        if (!plen || plen >= sizeof un->sun_path) return chat_fail(err, errlen, CHAT_EINVAL, "bad socket path in %s", url);
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, sock, plen);
        t->alen = (socklen_t)sizeof *un;
        t->is_unix = true;
        snprintf(t->host_hdr, sizeof t->host_hdr, "localhost");
        snprintf(t->path, sizeof t->path, "%s", sep ? sep + 1 : "/");
        return 0;
    }
    if (strncmp(url, scheme, sl) || strncmp(url + sl, "://", 3))
        return chat_fail(err, errlen, CHAT_EINVAL, "%s: expected %s://HOST[:PORT]/PATH or %s+unix:/SOCKET:/PATH", url,
                         scheme, scheme);
    const char *h = url + sl + 3;
    const char *slash = strchr(h, '/');
    size_t authlen = slash ? (size_t)(slash - h) : strlen(h);
    const char *colon = NULL;
    if (h[0] == '[') {
        const char *rb = memchr(h, ']', authlen);
        if (rb && (size_t)(rb + 1 - h) < authlen && rb[1] == ':') colon = rb + 1;
    } else {
        colon = memchr(h, ':', authlen);
    }
    size_t hl = colon ? (size_t)(colon - h) : authlen;
    long port = colon ? strtol(colon + 1, NULL, 10) : 80;
    if (port <= 0 || port > 65535) return chat_fail(err, errlen, CHAT_EINVAL, "%s: bad port", url);
    if (!loopback_host(h, hl, &t->addr, &t->alen))
        return chat_fail(err, errlen, CHAT_EINVAL, "%s: only loopback hosts (127.0.0.0/8, localhost, [::1])", url);
    if (t->addr.ss_family == AF_INET) ((struct sockaddr_in *)&t->addr)->sin_port = htons((uint16_t)port);
    else ((struct sockaddr_in6 *)&t->addr)->sin6_port = htons((uint16_t)port);
    snprintf(t->host_hdr, sizeof t->host_hdr, "%.*s", (int)authlen, h);
    snprintf(t->path, sizeof t->path, "%s", slash ? slash : "/");
    return 0;
}

/* ------------------------------------------------------------------ the per-process engine */

typedef struct engine {
    const opts *o;
    int proc;
    long first, count; /* global indices [first, first + count) */
    int ep, ctl;
    conn *conns;
    stats *st;
    uint64_t rng;
    uint64_t key_salt;
    char *scratch, *out;
    size_t out_cap;
    long next_to_open, pending; /* ramp */
    int phase;                  /* 0 ramp, 1 wait go, 2 run, 3 drain, 4 wait quit */
    int64_t go_us, measure_us, end_us;
    uint32_t *idle; /* open loop: idle connections */
    long nidle;
    int64_t next_send_us;
    long in_flight;
} engine;

enum { PH_RAMP, PH_WAIT_GO, PH_RUN, PH_DRAIN, PH_WAIT_QUIT };

static void conn_free_bufs(conn *c)
{
    free(c->rbuf), free(c->wbuf), free(c->frag);
    c->rbuf = c->wbuf = c->frag = NULL;
    c->rlen = c->rcap = c->wlen = c->woff = c->flen = c->fcap = 0;
}

static void start_conn(engine *e, conn *c);

static bool setup_state(int s) { return s == ST_WAIT_RETRY || s == ST_CONNECTING || s == ST_HANDSHAKE || s == ST_AUTH; }

static void conn_close(engine *e, conn *c)
{
    if (c->fd >= 0) close(c->fd);
    c->fd = -1;
    conn_free_bufs(c);
    c->state = ST_CLOSED;
}

/* REST: the server ended keep-alive; the same slot connects again (token kept). */
static void conn_reopen(engine *e, conn *c)
{
    conn_close(e, c);
    e->st->reconnects++;
    if (e->phase == PH_RUN) start_conn(e, c);
}

static void turn_next(engine *e, conn *c);
static void rest_next(engine *e, conn *c);

/* A connection failed: counted under reason; in the ramp it no longer holds a slot. */
static void conn_fail(engine *e, conn *c, const char *reason)
{
    stats_err(e->st, reason);
    bool was_setup = setup_state(c->state);
    bool was_busy = c->state == ST_TURN || c->state == ST_HTTP_WAIT;
    if (was_setup) {
        e->st->failed_setup++;
        e->pending--;
    } else {
        e->st->dropped_after_setup++;
    }
    if (was_busy) {
        e->in_flight--;
        if (c->state == ST_TURN) e->st->turns_error++;
    }
    conn_close(e, c);
}

static void want_write(engine *e, conn *c, bool on)
{
    struct epoll_event ev = {.events = EPOLLIN | (on ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(e->ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Queues bytes: written at once when nothing is pending, the rest on EPOLLOUT. */
static bool conn_write(engine *e, conn *c, const char *buf, size_t len)
{
    if (!c->wlen) {
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            conn_fail(e, c, "write error");
            return false;
        }
        if (n < 0) n = 0;
        if ((size_t)n == len) return true;
        buf += n, len -= (size_t)n;
        want_write(e, c, true);
    }
    if (c->woff && c->woff == c->wlen) c->woff = c->wlen = 0;
    char *nb = realloc(c->wbuf, c->wlen + len);
    if (!nb) {
        conn_fail(e, c, "out of memory");
        return false;
    }
    c->wbuf = nb;
    memcpy(c->wbuf + c->wlen, buf, len);
    c->wlen += (uint32_t)len;
    return true;
}

static void conn_flush(engine *e, conn *c)
{
    while (c->woff < c->wlen) {
        ssize_t n = send(c->fd, c->wbuf + c->woff, c->wlen - c->woff, MSG_NOSIGNAL);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
        if (n <= 0) {
            conn_fail(e, c, "write error");
            return;
        }
        c->woff += (uint32_t)n;
    }
    free(c->wbuf);
    c->wbuf = NULL;
    c->wlen = c->woff = 0;
    want_write(e, c, false);
}

static bool ensure_out(engine *e, size_t need)
{
    if (need <= e->out_cap) return true;
    size_t cap = e->out_cap ? e->out_cap : 4096;
    while (cap < need) cap *= 2;
    char *nb = realloc(e->out, cap);
    if (!nb) return false;
    e->out = nb;
    e->out_cap = cap;
    return true;
}

/* One masked client frame. */
static bool ws_send(engine *e, conn *c, int opcode, const char *data, size_t len)
{
    if (!ensure_out(e, len + CHAT_WSF_MAX_HEADER)) return false;
    unsigned char *o = (unsigned char *)e->out;
    uint32_t mask = (uint32_t)bench_rand(&e->rng);
    unsigned char mk[4];
    memcpy(mk, &mask, 4);
    size_t h = chat_wsf_client_header(o, opcode, true, len, mk);
    chat_wsf_mask(o + h, (const unsigned char *)data, len, mk, 0);
    return conn_write(e, c, e->out, h + len);
}

/* The Sec-WebSocket-Key is a function of the connection index and a per-process salt, so nothing is
 * stored per connection to check the server's Sec-WebSocket-Accept. */
static void ws_key(const engine *e, const conn *c, char out[25])
{
    uint64_t s = e->key_salt ^ ((uint64_t)c->idx * 0x9E3779B97F4A7C15ull);
    uint64_t a = bench_rand(&s), b = bench_rand(&s);
    unsigned char raw[16];
    memcpy(raw, &a, 8);
    memcpy(raw + 8, &b, 8);
    b64(raw, 16, out);
}

static void send_handshake(engine *e, conn *c)
{
    const target *t = &e->o->targets[c->target];
    char key[25];
    ws_key(e, c, key);
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_printf(&b, "GET %s", t->path);
    if (e->o->auth == A_QUERY && c->token)
        chat_buf_printf(&b, "%stoken=%s", strchr(t->path, '?') ? "&" : "?", c->token);
    chat_buf_printf(&b,
                    " HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                    "Sec-WebSocket-Version: 13\r\nUser-Agent: chat-bench\r\n\r\n",
                    t->host_hdr, key);
    if (!b.data) {
        conn_fail(e, c, "out of memory");
        return;
    }
    c->state = ST_HANDSHAKE;
    conn_write(e, c, b.data, b.len);
    chat_buf_free(&b);
}

static void send_auth(engine *e, conn *c)
{
    char *frame = chat_proto_client_auth(c->token ? c->token : "");
    c->state = ST_AUTH;
    c->t0 = chat_now_us();
    if (frame) ws_send(e, c, 1, frame, strlen(frame));
    free(frame);
}

/* Setup finished (authenticated, or open without auth): the connection joins the held set. */
static void setup_done(engine *e, conn *c)
{
    int64_t now = chat_now_us();
    e->pending--;
    if (!c->reconnect) {
        e->st->authed++;
        e->st->ready_by_target[c->target]++;
        bh_add(&e->st->h[H_CONNAUTH], now - c->t_conn);
    }
    c->reconnect = false;
    if (e->o->mode != M_REST) { /* REST sends its token with every request */
        free(c->token);
        c->token = NULL;
    }
    if (e->o->mode == M_REST) {
        c->state = ST_HTTP_IDLE;
    } else {
        c->state = ST_IDLE;
        if (!c->rlen) { /* idle connections keep no buffers */
            free(c->rbuf);
            c->rbuf = NULL;
            c->rcap = 0;
        }
    }
    c->deadline_ms = 0;
    if (e->phase == PH_RUN || e->phase == PH_DRAIN) { /* a REST reconnect in the run */
        if (e->o->mode == M_REST) rest_next(e, c);
    }
}

/* The JSON "type" of a server frame without a full parse (token frames are most of the traffic). */
static const char *frame_type(const char *s, size_t n, size_t *tl)
{
    const char *end = s + n;
    for (const char *p = s; p < end;) {
        const char *q = memmem(p, (size_t)(end - p), "\"type\"", 6);
        if (!q) return NULL;
        const char *v = q + 6;
        while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
        if (v < end && *v == ':') {
            v++;
            while (v < end && (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')) v++;
            if (v < end && *v == '"') {
                const char *ve = memchr(v + 1, '"', (size_t)(end - v - 1));
                if (!ve) return NULL;
                *tl = (size_t)(ve - v - 1);
                return v + 1;
            }
        }
        p = q + 6;
    }
    return NULL;
}

static bool is_type(const char *t, size_t tl, const char *want) { return t && tl == strlen(want) && !memcmp(t, want, tl); }

static void note_error_frame(engine *e, const char *msg, size_t len, const char *prefix)
{
    char name[48];
    json_tokener *tok = json_tokener_new();
    json_object *o = tok ? json_tokener_parse_ex(tok, msg, (int)len) : NULL;
    json_object *code = NULL;
    if (o && json_object_object_get_ex(o, "code", &code) && json_object_is_type(code, json_type_string))
        snprintf(name, sizeof name, "%s %s", prefix, json_object_get_string(code));
    else
        snprintf(name, sizeof name, "%s", prefix);
    stats_err(e->st, name);
    json_object_put(o);
    if (tok) json_tokener_free(tok);
}

/* complete: usage.completion_tokens and the numeric members of metadata.timings. record: the turn
 * started in the measured window; window: it ends in it. timings.first_token_ms is the pipeline's own
 * first-token time (the worker's clock), so the client's first-token latency minus it is the time spent
 * outside the pipeline: transport, lighttpd, the streamer, the broker's queue, ZeroMQ. */
static void note_complete(engine *e, conn *c, const char *msg, size_t len, bool record, bool window)
{
    json_tokener *tok = json_tokener_new();
    json_object *o = tok ? json_tokener_parse_ex(tok, msg, (int)len) : NULL;
    json_object *meta = NULL, *x = NULL, *y = NULL;
    if (o && json_object_object_get_ex(o, "metadata", &meta) && json_object_is_type(meta, json_type_object)) {
        if (json_object_object_get_ex(meta, "usage", &x) && json_object_object_get_ex(x, "completion_tokens", &y) &&
            json_object_is_type(y, json_type_int)) {
            e->st->completion_tokens += (uint64_t)json_object_get_int64(y);
            e->st->answers_with_usage++;
            if (window) e->st->tokens_window += (uint64_t)json_object_get_int64(y);
        }
        if (record && json_object_object_get_ex(meta, "timings", &x) && json_object_is_type(x, json_type_object)) {
            json_object_object_foreach(x, k, v)
            {
                if (!json_object_is_type(v, json_type_double) && !json_object_is_type(v, json_type_int)) continue;
                int slot = timing_slot(e->st, k);
                int64_t us = (int64_t)(json_object_get_double(v) * 1000.0);
                if (slot >= 0) bh_add(&e->st->timing[slot], us);
                if (!strcmp(k, "first_token_ms") && c->got_token) bh_add(&e->st->h[H_OUTSIDE], c->first_us - us);
            }
        }
    }
    json_object_put(o);
    if (tok) json_tokener_free(tok);
}

static bool in_window(const engine *e, int64_t t) { return t >= e->measure_us && t < e->end_us; }

static void turn_finished(engine *e, conn *c, bool ok)
{
    int64_t now = chat_now_us();
    e->in_flight--;
    if (ok) {
        e->st->turns_done++;
        if (in_window(e, now)) e->st->turns_done_window++;
        if (c->in_window) bh_add(&e->st->h[H_TURN], now - c->t0);
    } else {
        e->st->turns_error++;
    }
    c->state = ST_IDLE;
    c->deadline_ms = 0;
    turn_next(e, c);
}

/* One complete text message from the server. */
static void on_message(engine *e, conn *c, const char *msg, size_t len)
{
    int64_t now = chat_now_us();
    size_t tl = 0;
    const char *t = frame_type(msg, len, &tl);
    if (c->state == ST_TURN && in_window(e, now)) {
        e->st->frames_window++;
        if (is_type(t, tl, "token")) e->st->token_frames_window++;
    }
    if (c->state == ST_AUTH) {
        if (is_type(t, tl, "auth_success")) {
            bh_add(&e->st->h[H_AUTH], now - c->t0);
            setup_done(e, c);
        } else if (is_type(t, tl, "auth_error")) {
            conn_fail(e, c, "auth_error");
        } else if (is_type(t, tl, "error")) {
            note_error_frame(e, msg, len, "auth: error");
            conn_fail(e, c, "auth refused");
        }
        return;
    }
    if (c->state != ST_TURN) {
        if (is_type(t, tl, "error")) note_error_frame(e, msg, len, "error (no turn)");
        return;
    }
    if (!c->got_ack) {
        c->got_ack = true;
        if (c->in_window) bh_add(&e->st->h[H_ACK], now - c->t0);
    }
    if (is_type(t, tl, "token")) {
        e->st->token_frames++;
        if (!c->got_token) {
            c->got_token = true;
            c->first_us = now - c->t0;
            if (c->in_window) bh_add(&e->st->h[H_FIRST], now - c->t0);
        } else if (c->in_window) {
            bh_add(&e->st->h[H_GAP], now - c->t_last);
        }
        c->t_last = now;
    } else if (is_type(t, tl, "complete")) {
        note_complete(e, c, msg, len, c->in_window, in_window(e, now));
        turn_finished(e, c, true);
    } else if (is_type(t, tl, "error")) {
        note_error_frame(e, msg, len, "error");
        turn_finished(e, c, false);
    }
}

/* Parses frames from data; returns bytes consumed, or -1 when the connection was closed or failed. */
static long ws_parse(engine *e, conn *c, const char *data, size_t len)
{
    size_t pos = 0;
    while (len - pos >= 2) {
        chat_wsf_header fh;
        const char *why = NULL;
        int hr = chat_wsf_parse_server_header((const unsigned char *)data + pos, len - pos, &fh, &why);
        if (hr < 0) {
            conn_fail(e, c, "protocol: bad server frame");
            return -1;
        }
        if (hr == 0) break;
        bool fin = fh.fin;
        int op = fh.opcode;
        uint64_t plen = fh.len;
        size_t h = fh.header_len;
        if (plen > RBUF_MAX) {
            conn_fail(e, c, "protocol: message too big");
            return -1;
        }
        if (len - pos < h + plen) break;
        const char *pl = data + pos + h;
        pos += h + (size_t)plen;
        if (op == CHAT_WS_PING) {
            e->st->pings++;
            if (!ws_send(e, c, CHAT_WS_PONG, pl, (size_t)plen)) return -1;
        } else if (op == CHAT_WS_PONG) {
            /* nothing */
        } else if (op == CHAT_WS_CLOSE) {
            char name[48];
            int code = plen >= 2 ? ((unsigned char)pl[0] << 8) | (unsigned char)pl[1] : 1005;
            snprintf(name, sizeof name, "closed by server (%d)", code);
            unsigned char echo[2] = {(unsigned char)(code >> 8), (unsigned char)code};
            ws_send(e, c, CHAT_WS_CLOSE, (const char *)echo, code == 1005 ? 0 : 2);
            if (c->fd >= 0) conn_fail(e, c, name);
            return -1;
        } else {
            if (op != 0 && fin && !c->frag_op) {
                on_message(e, c, pl, (size_t)plen);
            } else {
                if (op != 0) c->frag_op = (uint8_t)op, c->flen = 0;
                else if (!c->frag_op) {
                    conn_fail(e, c, "protocol: continuation without start");
                    return -1;
                }
                if (c->flen + plen > RBUF_MAX) {
                    conn_fail(e, c, "protocol: message too big");
                    return -1;
                }
                if (c->flen + plen > c->fcap) {
                    uint32_t cap = c->fcap ? c->fcap : 4096;
                    while (cap < c->flen + plen) cap *= 2;
                    char *nb = realloc(c->frag, cap);
                    if (!nb) {
                        conn_fail(e, c, "out of memory");
                        return -1;
                    }
                    c->frag = nb, c->fcap = cap;
                }
                memcpy(c->frag + c->flen, pl, (size_t)plen);
                c->flen += (uint32_t)plen;
                if (fin) {
                    c->frag_op = 0;
                    on_message(e, c, c->frag, c->flen);
                    if (c->fd < 0) return -1;
                    c->flen = 0;
                }
            }
        }
        if (c->fd < 0) return -1;
    }
    return (long)pos;
}

/* "HTTP/1.x NNN" at the start of data (which is not NUL-terminated): NNN, or 0. */
static int http_status(const char *data, size_t len)
{
    if (len < 12 || memcmp(data, "HTTP/1.", 7) || data[8] != ' ') return 0;
    int st = 0;
    for (int i = 9; i < 12; i++) {
        if (data[i] < '0' || data[i] > '9') return 0;
        st = st * 10 + (data[i] - '0');
    }
    return st;
}

/* The 101 response: status, Upgrade and the Sec-WebSocket-Accept for our key. */
static long parse_handshake(engine *e, conn *c, const char *data, size_t len)
{
    const char *end = memmem(data, len, "\r\n\r\n", 4);
    if (!end) {
        if (len > 16384) {
            conn_fail(e, c, "handshake: headers too long");
            return -1;
        }
        return 0;
    }
    size_t hl = (size_t)(end - data) + 4;
    int status = http_status(data, hl);
    if (status != 101) {
        char name[48];
        snprintf(name, sizeof name, "handshake: HTTP %d", status);
        conn_fail(e, c, name);
        return -1;
    }
    char key[25], want[CHAT_WSF_ACCEPT_LEN + 1];
    ws_key(e, c, key);
    chat_wsf_accept(key, 24, want);
    bool ok = false;
    for (const char *p = data; p < end;) {
        const char *nl = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!nl) nl = end;
        if ((size_t)(nl - p) > 21 && !strncasecmp(p, "Sec-WebSocket-Accept:", 21)) {
            const char *v = p + 21;
            while (v < nl && *v == ' ') v++;
            ok = (size_t)(nl - v) >= 28 && !memcmp(v, want, 28);
        }
        p = nl + 2;
    }
    if (!ok) {
        conn_fail(e, c, "handshake: bad Sec-WebSocket-Accept");
        return -1;
    }
    int64_t now = chat_now_us();
    bh_add(&e->st->h[H_OPEN], now - c->t_conn);
    e->st->established++;
    if (e->o->auth == A_MESSAGE) {
        send_auth(e, c);
    } else if (e->o->auth == A_QUERY) {
        c->state = ST_AUTH; /* the server answers the query token with auth_success */
        c->t0 = now;
    } else {
        setup_done(e, c);
    }
    return (long)hl;
}

/* ---- REST ---- */

static void rest_next(engine *e, conn *c)
{
    const opts *o = e->o;
    if (e->phase != PH_RUN || g_stop || (o->messages && e->st->turns_sent >= (uint64_t)o->messages)) return;
    const target *t = &o->targets[c->target];
    chat_buf b;
    chat_buf_init(&b);
    if (o->nquestions) { /* POST a question */
        size_t qi = bench_rand_below(&e->rng, (uint32_t)o->nquestions);
        chat_buf_printf(&b,
                        "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n",
                        t->path, t->host_hdr, o->qlens[qi]);
        if (c->token) chat_buf_printf(&b, "Authorization: Bearer %s\r\n", c->token);
        chat_buf_puts(&b, "\r\n");
        chat_buf_append(&b, o->questions[qi], o->qlens[qi]);
    } else {
        chat_buf_printf(&b, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", t->path, t->host_hdr);
    }
    if (!b.data) return;
    c->t0 = chat_now_us();
    c->in_window = in_window(e, c->t0);
    c->state = ST_HTTP_WAIT;
    c->deadline_ms = now_ms() + (int64_t)(o->timeout * 1000);
    e->st->turns_sent++;
    e->in_flight++;
    conn_write(e, c, b.data, b.len);
    chat_buf_free(&b);
}

static bool header_has(const char *h, const char *end, const char *name, const char *value_sub)
{
    size_t nl = strlen(name);
    for (const char *p = h; p < end;) {
        const char *le = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!le) le = end;
        if ((size_t)(le - p) > nl && !strncasecmp(p, name, nl) && p[nl] == ':') {
            if (!value_sub) return true;
            char v[256];
            size_t vl = (size_t)(le - p - nl - 1);
            if (vl >= sizeof v) vl = sizeof v - 1;
            memcpy(v, p + nl + 1, vl);
            v[vl] = '\0';
            if (strcasestr(v, value_sub)) return true;
        }
        p = le + 2;
    }
    return false;
}

static long content_length(const char *h, const char *end)
{
    for (const char *p = h; p < end;) {
        const char *le = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!le) le = end;
        if ((size_t)(le - p) > 15 && !strncasecmp(p, "Content-Length:", 15)) return strtol(p + 15, NULL, 10);
        p = le + 2;
    }
    return -1;
}

/* Returns bytes of one whole response, 0 when more is needed, -1 on a malformed response. */
static long http_response_len(const char *data, size_t len, int *status, bool *close_after)
{
    const char *he = memmem(data, len, "\r\n\r\n", 4);
    if (!he) return len > 65536 ? -1 : 0;
    size_t hl = (size_t)(he - data) + 4;
    *status = http_status(data, hl);
    if (!*status) return -1;
    *close_after = header_has(data, he, "Connection", "close");
    long cl = content_length(data, he);
    if (cl >= 0) return len >= hl + (size_t)cl ? (long)(hl + (size_t)cl) : 0;
    if (header_has(data, he, "Transfer-Encoding", "chunked")) {
        size_t pos = hl;
        for (;;) {
            const char *le = memmem(data + pos, len - pos, "\r\n", 2);
            if (!le) return 0;
            long sz = strtol(data + pos, NULL, 16);
            if (sz < 0) return -1;
            pos = (size_t)(le - data) + 2;
            if (sz == 0) { /* trailers end with an empty line */
                for (;;) {
                    const char *te = memmem(data + pos, len - pos, "\r\n", 2);
                    if (!te) return 0;
                    bool empty = te == data + pos;
                    pos = (size_t)(te - data) + 2;
                    if (empty) return (long)pos;
                }
            }
            if (len < pos + (size_t)sz + 2) return 0;
            pos += (size_t)sz + 2;
        }
    }
    if (*status == 204 || *status == 304) return (long)hl;
    *close_after = true;
    return -2; /* body until EOF: not supported with keep-alive benchmarking */
}

static long rest_parse(engine *e, conn *c, const char *data, size_t len)
{
    size_t pos = 0;
    while (pos < len) {
        if (c->state != ST_HTTP_WAIT) {
            conn_fail(e, c, "http: unexpected bytes");
            return -1;
        }
        int status = 0;
        bool close_after = false;
        long n = http_response_len(data + pos, len - pos, &status, &close_after);
        if (n == 0) break;
        if (n < 0) {
            conn_fail(e, c, n == -2 ? "http: response without length" : "http: malformed response");
            return -1;
        }
        pos += (size_t)n;
        int64_t now = chat_now_us();
        e->in_flight--;
        e->st->rest_done++;
        if (in_window(e, now)) e->st->rest_done_window++;
        if (c->in_window) bh_add(&e->st->h[H_REST], now - c->t0);
        if (status >= 200 && status <= 299 && in_window(e, now)) e->st->rest_ok_window++;
        if (status < 200 || status > 299) {
            char name[48];
            snprintf(name, sizeof name, "HTTP %d", status);
            stats_err(e->st, name);
            e->st->rest_non2xx++;
        }
        c->state = ST_HTTP_IDLE;
        c->deadline_ms = 0;
        if (close_after) { /* the server ends keep-alive (max requests): reconnect */
            conn_reopen(e, c);
            return -1;
        }
        rest_next(e, c);
        if (c->fd < 0) return -1;
    }
    return (long)pos;
}

static long conn_parse(engine *e, conn *c, const char *data, size_t len)
{
    long used = 0;
    if (c->state == ST_HANDSHAKE) {
        used = parse_handshake(e, c, data, len);
        if (used <= 0) return used;
    }
    if (c->state == ST_HTTP_IDLE || c->state == ST_HTTP_WAIT) {
        long n = rest_parse(e, c, data + used, len - (size_t)used);
        return n < 0 ? -1 : used + n;
    }
    long n = ws_parse(e, c, data + used, len - (size_t)used);
    return n < 0 ? -1 : used + n;
}

static void on_readable(engine *e, conn *c)
{
    const char *data;
    size_t total;
    ssize_t n;
    if (c->rlen) {
        if (c->rcap - c->rlen < 65536) {
            uint32_t cap = c->rcap * 2 < c->rlen + 65536 ? c->rlen + 65536 : c->rcap * 2;
            if (cap > RBUF_MAX + 65536) {
                conn_fail(e, c, "protocol: message too big");
                return;
            }
            char *nb = realloc(c->rbuf, cap);
            if (!nb) {
                conn_fail(e, c, "out of memory");
                return;
            }
            c->rbuf = nb, c->rcap = cap;
        }
        n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
        data = c->rbuf;
        total = c->rlen + (n > 0 ? (size_t)n : 0);
    } else {
        n = read(c->fd, e->scratch, SCRATCH_BYTES);
        data = e->scratch;
        total = n > 0 ? (size_t)n : 0;
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) return;
        conn_fail(e, c, errno == ECONNRESET ? "connection reset" : "read error");
        return;
    }
    if (n == 0) {
        if (c->state == ST_HTTP_IDLE) { /* keep-alive closed by the server between requests */
            conn_reopen(e, c);
            return;
        }
        conn_fail(e, c, c->state == ST_HANDSHAKE ? "handshake: EOF" : "EOF from server");
        return;
    }
    e->st->bytes_in += (uint64_t)n;
    long used = conn_parse(e, c, data, total);
    if (used < 0 || c->fd < 0) return;
    size_t left = total - (size_t)used;
    if (data == e->scratch) {
        if (left) { /* keep the partial frame (an emptied buffer of a busy connection is reused) */
            if (c->rcap < left) {
                uint32_t cap = left < 16384 ? 16384 : (uint32_t)left * 2;
                char *nb = realloc(c->rbuf, cap);
                if (!nb) {
                    conn_fail(e, c, "out of memory");
                    return;
                }
                c->rbuf = nb, c->rcap = cap;
            }
            memcpy(c->rbuf, data + used, left);
            c->rlen = (uint32_t)left;
        }
    } else {
        if (left && used) memmove(c->rbuf, c->rbuf + used, left);
        c->rlen = (uint32_t)left;
        if (!left && c->state == ST_IDLE) {
            free(c->rbuf);
            c->rbuf = NULL;
            c->rcap = 0;
        }
    }
}

static void on_connected(engine *e, conn *c)
{
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
    if (soerr) {
        char name[48];
        snprintf(name, sizeof name, "connect: %s", strerror(soerr));
        conn_fail(e, c, name);
        return;
    }
    bh_add(&e->st->h[H_TCP], chat_now_us() - c->t_conn);
    want_write(e, c, false);
    if (e->o->mode == M_REST) {
        setup_done(e, c);
        return;
    }
    send_handshake(e, c);
}

static void start_conn(engine *e, conn *c)
{
    const opts *o = e->o;
    const target *t = &o->targets[c->target];
    int64_t now = chat_now_us();
    if (c->state == ST_FREE) {
        e->st->attempted++;
        e->pending++;
    } else if (c->state == ST_CLOSED) { /* a REST reconnect: in setup again, not a new connection */
        c->reconnect = true;
        e->pending++;
    }
    c->t_conn = now;
    c->deadline_ms = now / 1000 + (int64_t)(o->timeout * 1000);
    int fd = socket(t->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->state = ST_CONNECTING;
        conn_fail(e, c, errno == EMFILE ? "socket: too many open files" : "socket failed");
        return;
    }
    c->fd = fd;
    c->state = ST_CONNECTING;
    if (!t->is_unix) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (o->src_addrs > 1 && t->addr.ss_family == AF_INET) {
            setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
            struct sockaddr_in src = {.sin_family = AF_INET};
            src.sin_addr.s_addr = htonl(0x7f000001u + (c->idx % (uint32_t)o->src_addrs));
            if (bind(fd, (struct sockaddr *)&src, sizeof src)) {
                conn_fail(e, c, "bind source address failed");
                return;
            }
        }
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(e->ep, EPOLL_CTL_ADD, fd, &ev)) {
        conn_fail(e, c, "epoll_ctl failed");
        return;
    }
    if (connect(fd, (struct sockaddr *)&t->addr, t->alen) && errno != EINPROGRESS) {
        if (t->is_unix && errno == EAGAIN) { /* the listen backlog is full: try again shortly */
            close(fd);
            c->fd = -1;
            c->state = ST_WAIT_RETRY;
            c->deadline_ms = now_ms() + 5 + (int64_t)bench_rand_below(&e->rng, 20);
            e->st->connect_retries++;
            return;
        }
        char name[48];
        snprintf(name, sizeof name, "connect: %s", strerror(errno));
        conn_fail(e, c, name);
    }
}

/* ---- chat turns ---- */

static void send_message(engine *e, conn *c)
{
    const opts *o = e->o;
    size_t qi = bench_rand_below(&e->rng, (uint32_t)o->nquestions);
    c->t0 = chat_now_us();
    c->in_window = in_window(e, c->t0);
    c->got_ack = c->got_token = false;
    c->state = ST_TURN;
    c->deadline_ms = c->t0 / 1000 + (int64_t)(o->timeout * 1000);
    e->st->turns_sent++;
    e->in_flight++;
    ws_send(e, c, 1, o->questions[qi], o->qlens[qi]);
}

/* After a turn: closed loop sends the next message at once (or after --think-ms, approximated by the
 * deadline scan); open loop returns the connection to the idle pool. */
static void turn_next(engine *e, conn *c)
{
    const opts *o = e->o;
    if (c->fd < 0) return;
    if (e->phase != PH_RUN || g_stop) return;
    if (o->messages && e->st->turns_sent >= (uint64_t)o->messages) return;
    if (o->rate > 0) {
        e->idle[e->nidle++] = (uint32_t)(c - e->conns);
        return;
    }
    if (o->think_ms > 0) {
        c->deadline_ms = now_ms() + o->think_ms; /* ST_IDLE + deadline = think time over */
        return;
    }
    send_message(e, c);
}

/* ---- the loop ---- */

static void scan_deadlines(engine *e)
{
    int64_t now = now_ms();
    for (long i = 0; i < e->count; i++) {
        conn *c = &e->conns[i];
        if (!c->deadline_ms || now < c->deadline_ms) continue;
        switch (c->state) {
        case ST_WAIT_RETRY: start_conn(e, c); break;
        case ST_CONNECTING: conn_fail(e, c, "timeout: connect"); break;
        case ST_HANDSHAKE: conn_fail(e, c, "timeout: handshake"); break;
        case ST_AUTH: conn_fail(e, c, "timeout: auth"); break;
        case ST_TURN: conn_fail(e, c, "timeout: turn"); break;
        case ST_HTTP_WAIT: conn_fail(e, c, "timeout: http"); break;
        case ST_IDLE: /* think time over */
            c->deadline_ms = 0;
            if (e->phase == PH_RUN && e->o->mode == M_CHAT) send_message(e, c);
            break;
        default: c->deadline_ms = 0; break;
        }
    }
}

static void ramp(engine *e)
{
    while (e->phase == PH_RAMP && e->next_to_open < e->count && e->pending < e->o->concurrency) {
        conn *c = &e->conns[e->next_to_open++];
        start_conn(e, c);
    }
}

static void open_loop_tick(engine *e)
{
    const opts *o = e->o;
    int64_t now = chat_now_us();
    double interval_us = 1e6 / (o->rate / (double)o->procs);
    while (e->next_send_us <= now && now < e->end_us) {
        if (o->messages && e->st->turns_sent >= (uint64_t)o->messages) break;
        if (e->nidle) {
            conn *c = &e->conns[e->idle[--e->nidle]];
            if (c->fd >= 0 && c->state == ST_IDLE) send_message(e, c);
        } else {
            e->st->missed_sends++;
        }
        e->next_send_us += (int64_t)interval_us;
    }
}

typedef struct ctl_msg {
    char tag; /* 'G' go, 'Q' quit */
    int64_t go_us;
} ctl_msg;

typedef struct rep_msg {
    char tag; /* 'R' ready, 'D' done */
    uint64_t established, authed, failed;
} rep_msg;

static void send_rep(engine *e, int fd, char tag)
{
    rep_msg r;
    memset(&r, 0, sizeof r); /* padding too: the struct goes through a pipe whole */
    r.tag = tag, r.established = e->st->established, r.authed = e->st->authed, r.failed = e->st->failed_setup;
    write_all(fd, &r, sizeof r);
}

/* The child's resources: the descriptor limit raised to its hard maximum, the connection table, the
 * counters, the shared read buffer, the epoll set with the parent's control pipe in it (data NULL). */
static int child_init(engine *e, const opts *o, int proc, long first, long count, int ctl_rd)
{
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(e, 0, sizeof *e);
    e->o = o, e->proc = proc, e->first = first, e->count = count, e->ctl = ctl_rd;
    e->rng = (uint64_t)chat_now_us() ^ ((uint64_t)getpid() << 32);
    e->key_salt = bench_rand(&e->rng);
    e->conns = calloc((size_t)(count > 0 ? count : 1), sizeof *e->conns);
    e->st = calloc(1, sizeof *e->st);
    e->scratch = malloc(SCRATCH_BYTES);
    e->idle = calloc((size_t)(count > 0 ? count : 1), sizeof *e->idle);
    e->ep = epoll_create1(EPOLL_CLOEXEC);
    if (!e->conns || !e->st || !e->scratch || !e->idle || e->ep < 0) {
        fprintf(stderr, "chat-bench[%d]: out of memory\n", proc);
        return 1;
    }
    struct epoll_event cev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(e->ep, EPOLL_CTL_ADD, ctl_rd, &cev);
    return 0;
}

/* Each connection's index, target and token, before any timing starts (REST GETs carry none). */
static int mint_tokens(engine *e)
{
    const opts *o = e->o;
    time_t tnow = time(NULL);
    long nt = o->mode == M_REST && !o->nquestions ? 0 : e->count;
    for (long i = 0; i < e->count; i++) {
        conn *c = &e->conns[i];
        c->fd = -1;
        c->idx = (uint32_t)(e->first + i);
        c->target = (uint8_t)(c->idx % (uint32_t)o->ntargets);
        if (o->auth == A_NONE || i >= nt) continue;
        if (o->fixed_token) {
            c->token = strdup(o->fixed_token);
        } else {
            char sub[64], email[96];
            long u = o->users > 0 ? (long)c->idx % o->users : (long)c->idx;
            snprintf(sub, sizeof sub, "bench-user-%ld", u);
            snprintf(email, sizeof email, "bench-user-%ld@bench.example", u);
            c->token = chat_jwt_mint_hs256(o->secret, sub, email, "Bench User", tnow, 86400);
        }
        if (!c->token) {
            fprintf(stderr, "chat-bench[%d]: cannot mint a token\n", e->proc);
            return 1;
        }
    }
    return 0;
}

/* The parent's go: the measured window is fixed, and every ready connection starts its first turn or
 * request (open loop: joins the idle pool). */
static void start_run(engine *e, int64_t go_us)
{
    const opts *o = e->o;
    e->go_us = go_us;
    e->measure_us = go_us + (int64_t)(o->warmup * 1e6);
    e->end_us = e->measure_us + (int64_t)(o->duration * 1e6);
    e->phase = PH_RUN;
    e->st->window_s = o->duration;
    e->next_send_us = go_us;
    for (long k = 0; k < e->count; k++) {
        conn *x = &e->conns[k];
        if (x->fd < 0) continue;
        if (o->mode == M_CHAT && x->state == ST_IDLE) {
            if (o->rate > 0) e->idle[e->nidle++] = (uint32_t)k;
            else send_message(e, x);
        } else if (o->mode == M_REST && x->state == ST_HTTP_IDLE) {
            rest_next(e, x);
        }
    }
}

enum { CTL_MORE, CTL_QUIT, CTL_LOST }; /* after a message of the parent: go on, quit, or quit at once */

static int on_parent(engine *e)
{
    ctl_msg m;
    if (!read_all(e->ctl, &m, sizeof m, now_ms() + 2000)) return CTL_LOST;
    if (m.tag != 'G') return CTL_QUIT;
    start_run(e, m.go_us);
    return CTL_MORE;
}

/* One epoll_wait's events; false when the parent said quit (or is gone). */
static bool dispatch(engine *e, const struct epoll_event *evs, int n)
{
    bool quit = false;
    for (int i = 0; i < n; i++) {
        conn *c = evs[i].data.ptr;
        if (!c) { /* the parent */
            int r = on_parent(e);
            if (r == CTL_LOST) return false;
            if (r == CTL_QUIT) quit = true;
            continue;
        }
        if (c->fd < 0) continue;
        uint32_t ev = evs[i].events;
        if (c->state == ST_CONNECTING) {
            if (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(e, c);
            continue;
        }
        if ((ev & EPOLLOUT) && c->wlen) conn_flush(e, c);
        if (c->fd >= 0 && (ev & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(e, c);
    }
    return !quit;
}

/* The phase changes that time and counts decide: the ramp ends when every connection is set up (or at
 * the deadline); the run ends at the window's end or the message count; the drain ends when nothing is
 * in flight (or a timeout after the window). The parent hears of the first and the last. */
static void advance_phase(engine *e, int rep_wr, int64_t ramp_deadline)
{
    const opts *o = e->o;
    int64_t nowus = chat_now_us();
    if (e->phase == PH_RAMP) {
        if ((e->next_to_open >= e->count && e->pending == 0) || now_ms() > ramp_deadline || g_stop) {
            send_rep(e, rep_wr, 'R');
            e->phase = PH_WAIT_GO;
        }
    } else if (e->phase == PH_RUN) {
        bool count_done = o->messages && e->st->turns_sent >= (uint64_t)o->messages;
        if (nowus >= e->end_us || count_done || g_stop) {
            e->phase = PH_DRAIN;
            if (count_done && nowus < e->end_us) { /* stopped by count: the window ends now */
                double w = (double)(nowus - e->measure_us) / 1e6;
                e->st->window_s = w > 0 ? w : 0;
            }
        }
    }
    /* in-flight turns and requests finish (or time out) before the report */
    if (e->phase == PH_DRAIN && (e->in_flight <= 0 || chat_now_us() > e->end_us + (int64_t)(o->timeout * 1e6))) {
        send_rep(e, rep_wr, 'D');
        e->phase = PH_WAIT_QUIT;
    }
}

/* A close frame where the connection is open, then the socket. */
static void close_all(engine *e)
{
    for (long i = 0; i < e->count; i++) {
        conn *c = &e->conns[i];
        if (c->fd < 0) continue;
        if (e->o->mode != M_REST && (c->state == ST_IDLE || c->state == ST_TURN)) {
            static const char bye[2] = {0x03, (char)0xe8};
            ws_send(e, c, 8, bye, 2);
        }
        if (c->fd >= 0) close(c->fd);
        c->fd = -1;
        conn_free_bufs(c);
    }
    for (long i = 0; i < e->count; i++) free(e->conns[i].token);
}

/* A child process: connections [first, first + count), ramped up, run on the parent's go, reported
 * through rep_wr ('R' ready, 'D' done, then the whole stats) until the parent says quit. */
static int run_child(const opts *o, int proc, long first, long count, int ctl_rd, int rep_wr)
{
    engine eng, *e = &eng;
    if (child_init(e, o, proc, first, count, ctl_rd) || mint_tokens(e)) return 1;
    struct epoll_event evs[1024];
    int64_t last_scan = 0;
    e->phase = PH_RAMP;
    int64_t ramp_deadline = now_ms() + (int64_t)(o->max_time * 1000);
    for (bool more = true; more;) {
        if (e->phase == PH_RAMP) {
            ramp(e);
            advance_phase(e, rep_wr, ramp_deadline);
        }
        int timeout = e->phase == PH_RUN && o->rate > 0 ? 1 : 50;
        int n = epoll_wait(e->ep, evs, (int)CHAT_ARRAY_LEN(evs), timeout);
        if (n < 0 && errno != EINTR) break;
        more = dispatch(e, evs, n);
        int64_t nowus = chat_now_us();
        if (e->phase == PH_RUN && o->mode == M_CHAT && o->rate > 0) open_loop_tick(e);
        if (nowus / 1000 - last_scan >= 50) {
            last_scan = nowus / 1000;
            scan_deadlines(e);
        }
        if (e->phase != PH_RAMP) advance_phase(e, rep_wr, ramp_deadline);
    }
    close_all(e);
    write_all(rep_wr, e->st, sizeof *e->st);
    return 0;
}

/* ------------------------------------------------------------------ the parent */

typedef struct proc_sample {
    long rss_kb;
    unsigned long long cpu_ticks;
    int nkids; /* direct children (FastCGI responders of lighttpd, workers of chat-worker) */
    long kids_rss_kb;
    unsigned long long kids_cpu_ticks;
    unsigned long long same_kids_cpu_ticks; /* of the children running the same program (lighttpd's
                                             * server.max-worker processes, chat-worker's workers) */
    char comm[32];
} proc_sample;

static pid_t read_pid_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long p = -1;
    if (fscanf(f, "%ld", &p) != 1) p = -1;
    fclose(f);
    return (pid_t)p;
}

static bool sample_one(pid_t pid, proc_sample *s)
{
    char path[64], line[512];
    s->rss_kb = -1;
    s->cpu_ticks = 0;
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return false;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) s->rss_kb = strtol(line + 6, NULL, 10);
    fclose(f);
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    f = fopen(path, "r");
    if (f) {
        char buf[1024];
        size_t n = fread(buf, 1, sizeof buf - 1, f);
        buf[n] = '\0';
        fclose(f);
        const char *p = strrchr(buf, ')'); /* fields after the command name */
        const char *c = strchr(buf, '(');
        if (c && p && p > c) snprintf(s->comm, sizeof s->comm, "%.*s", (int)(p - c - 1), c + 1);
        unsigned long ut = 0, stt = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &stt) == 2)
            s->cpu_ticks = ut + stt;
    }
    return s->rss_kb >= 0;
}

/* The process and, summed apart, its direct children (from /proc/PID/task/PID/children). */
static bool sample_proc(pid_t pid, proc_sample *s)
{
    memset(s, 0, sizeof *s);
    if (!sample_one(pid, s)) return false;
    char path[80];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)pid, (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return true;
    int kid;
    while (fscanf(f, "%d", &kid) == 1) {
        proc_sample k;
        if (!sample_one(kid, &k)) continue;
        s->nkids++;
        s->kids_rss_kb += k.rss_kb;
        s->kids_cpu_ticks += k.cpu_ticks;
        if (!strcmp(k.comm, s->comm)) s->same_kids_cpu_ticks += k.cpu_ticks;
    }
    fclose(f);
    return true;
}

/* GET over HTTP/1.0 with a 2 s bound; the body (up to cap) into out. 0 or -1. */
static int http_get_simple(const char *url, char *out, size_t cap)
{
    target t;
    char err[256];
    if (parse_target(url, true, &t, err, sizeof err)) return -1;
    int fd = socket(t.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc = -1;
    char req[1400];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n", t.path, t.host_hdr);
    size_t got = 0;
    if (connect(fd, (struct sockaddr *)&t.addr, t.alen) == 0 && write_all(fd, req, (size_t)rl)) {
        ssize_t n;
        while (got < cap - 1 && (n = read(fd, out + got, cap - 1 - got)) > 0) got += (size_t)n;
        out[got] = '\0';
        char *body = strstr(out, "\r\n\r\n");
        if (body) {
            memmove(out, body + 4, strlen(body + 4) + 1);
            rc = 0;
        }
    }
    close(fd);
    return rc;
}

static const char *mode_name(int m) { return MODE_NAMES[m]; }

static void print_kv_hist(const char *key, const bench_hist *h)
{
    printf(" %s_n=%llu %s_p50_us=%llu %s_p90_us=%llu %s_p99_us=%llu %s_max_us=%llu", key,
           (unsigned long long)h->count, key, (unsigned long long)bh_quantile(h, 0.5), key,
           (unsigned long long)bh_quantile(h, 0.9), key, (unsigned long long)bh_quantile(h, 0.99), key,
           (unsigned long long)h->max);
}

/* The server processes (--pid-file) and the status page (--status-url), sampled three times: before
 * the ramp, while the connections are held (after the ramp and the settle time), and at the end; chat
 * and rest also at the edges of the measured window (AT_WIN0, AT_WIN1: after the warm-up, before the
 * drain), so that CPU time can be divided by what the clients received in that window. */
enum { AT_BEFORE, AT_HELD, AT_END, AT_WIN0, AT_WIN1, AT_COUNT };
typedef struct server_watch {
    pid_t pid[MAX_PIDS];
    proc_sample s[AT_COUNT][MAX_PIDS];
    bool alive[AT_COUNT][MAX_PIDS]; /* after AT_BEFORE: the process was still there */
    char status[3][4096];           /* "" when not fetched (AT_BEFORE..AT_END only) */
    bool windowed;                  /* AT_WIN0 and AT_WIN1 were sampled */
} server_watch;

static void watch_sample(const opts *o, server_watch *w, int at)
{
    for (int i = 0; i < o->npids; i++) {
        if (at == AT_BEFORE) {
            w->pid[i] = read_pid_file(o->pid_files[i]);
            if (w->pid[i] <= 0 || !sample_proc(w->pid[i], &w->s[at][i]))
                fprintf(stderr, "chat-bench: no running process for pid file %s\n", o->pid_files[i]);
        } else {
            w->alive[at][i] = w->pid[i] > 0 && sample_proc(w->pid[i], &w->s[at][i]);
        }
    }
    if (at <= AT_END && o->status_url && http_get_simple(o->status_url, w->status[at], sizeof w->status[at]))
        w->status[at][0] = '\0';
}

/* The client's processes and source addresses: each process holds at most per_proc connections (its
 * descriptor limit minus a margin). 0, or 1 with a message when the connections do not fit. */
static int plan_processes(opts *o)
{
    struct rlimit rl;
    long fd_cap = 1024;
    if (!getrlimit(RLIMIT_NOFILE, &rl)) fd_cap = rl.rlim_max == RLIM_INFINITY ? 1000000 : (long)rl.rlim_max;
    long per_proc = o->per_proc > 0 ? o->per_proc : fd_cap - 64;
    if (per_proc > fd_cap - 16) per_proc = fd_cap - 16;
    if (per_proc < 1) per_proc = 1;
    int procs = o->procs > 0 ? o->procs : (int)((o->conns + per_proc - 1) / per_proc);
    if (procs < 1) procs = 1;
    if (procs > MAX_PROCS) {
        fprintf(stderr, "chat-bench: %ld connections need %d processes (max %d): raise the fd limit\n", o->conns, procs,
                MAX_PROCS);
        return 1;
    }
    if ((o->conns + procs - 1) / procs > per_proc) {
        fprintf(stderr, "chat-bench: %d processes cannot hold %ld connections (at most %ld each)\n", procs, o->conns,
                per_proc);
        return 1;
    }
    o->procs = procs;
    if (o->src_addrs <= 0) { /* enough addresses for the loopback ephemeral range (28k ports each) */
        o->src_addrs = (int)(o->conns / 25000) + 1;
        if (o->src_addrs > 250) o->src_addrs = 250;
    }
    return 0;
}

static void print_plan(const opts *o)
{
    int procs = o->procs;
    printf("chat-bench %s: %ld connections in %d process%s -> %s%s, auth %s", mode_name(o->mode), o->conns, procs,
           procs > 1 ? "es" : "", o->targets[0].label, o->ntargets > 1 ? " (+ more targets)" : "",
           o->mode == M_REST ? (o->auth == A_NONE ? "none" : "bearer")
                             : o->auth == A_MESSAGE ? "message" : o->auth == A_QUERY ? "query" : "none");
    if (o->mode == M_CHAT || o->mode == M_REST)
        printf(", %s, %.0f s measured after %.0f s warm-up", o->rate > 0 ? "open loop" : "closed loop", o->duration,
               o->warmup);
    else if (o->mode == M_IDLE)
        printf(", held %.0f s", o->duration);
    printf("\n");
    fflush(stdout);
}

/* The child processes and the two pipes of each: ctl (parent -> child), rep (child -> parent). */
typedef struct children {
    pid_t pid[MAX_PROCS];
    int ctl[MAX_PROCS], rep[MAX_PROCS];
    int64_t deadline_ms; /* --max-time from the start: no child is waited for longer */
} children;

/* Forks o->procs children, each with its share of the connections. 0, or 1 (children already started
 * die with the parent: PR_SET_PDEATHSIG). */
static int spawn_children(const opts *o, children *k)
{
    long first = 0;
    for (int i = 0; i < o->procs; i++) {
        long cnt = o->conns / o->procs + (i < o->conns % o->procs ? 1 : 0);
        int a[2], b[2];
        if (pipe2(a, O_CLOEXEC) || pipe2(b, O_CLOEXEC)) {
            perror("chat-bench: pipe");
            return 1;
        }
        pid_t p = fork();
        if (p < 0) {
            perror("chat-bench: fork");
            return 1;
        }
        if (p == 0) {
            close(a[1]), close(b[0]);
            for (int j = 0; j < i; j++) close(k->ctl[j]), close(k->rep[j]);
            _exit(run_child(o, i, first, cnt, a[0], b[1]));
        }
        close(a[0]), close(b[1]);
        k->pid[i] = p, k->ctl[i] = a[1], k->rep[i] = b[0];
        first += cnt;
    }
    return 0;
}

static bool send_ctl(const children *k, int i, char tag, int64_t go_us)
{
    ctl_msg m;
    memset(&m, 0, sizeof m); /* padding too: the struct goes through a pipe whole */
    m.tag = tag, m.go_us = go_us;
    return write_all(k->ctl[i], &m, sizeof m);
}

/* Every child's 'R' (its connections are set up), then the ramp's line. 0, or 1 when a child did not
 * report in time (then nothing is printed). */
static int await_ready(const opts *o, const children *k, double *ramp_s)
{
    int rc = 0;
    int64_t t_ramp0 = chat_now_us();
    uint64_t est = 0, auth = 0, failed = 0;
    for (int i = 0; i < o->procs && !rc; i++) {
        rep_msg r;
        if (!read_all(k->rep[i], &r, sizeof r, k->deadline_ms) || r.tag != 'R') {
            fprintf(stderr, "chat-bench: process %d did not report its connections\n", i);
            rc = 1;
            break;
        }
        est += r.established, auth += r.authed, failed += r.failed;
    }
    *ramp_s = (double)(chat_now_us() - t_ramp0) / 1e6;
    if (rc) return rc;
    if (o->mode == M_REST)
        printf("connections: %llu connected, %llu failed, in %.1f s\n", (unsigned long long)auth,
               (unsigned long long)failed, *ramp_s);
    else
        printf("connections: %llu open, %llu ready (%s), %llu failed, in %.1f s\n", (unsigned long long)est,
               (unsigned long long)auth, o->auth == A_NONE ? "open" : "authenticated", (unsigned long long)failed,
               *ramp_s);
    fflush(stdout);
    return 0;
}

/* Memory while holding: after a settle time, so that lazily freed buffers are gone. */
static void settle(const opts *o)
{
    if (!o->npids || (o->mode != M_IDLE && o->mode != M_CONNECT)) return;
    int64_t until = now_ms() + (int64_t)(o->settle * 1000);
    while (now_ms() < until && !g_stop) usleep(50000);
}

/* Sleeps until the time (us) or a signal; false on the signal. */
static bool sleep_until_us(int64_t t)
{
    int64_t d;
    while (!g_stop && (d = t - chat_now_us()) > 0) usleep(d > 50000 ? 50000 : (useconds_t)d);
    return !g_stop;
}

/* The measured phase: go for every child at go_us, the servers sampled at the window's edges (chat,
 * rest, when sampled), then every child's 'D'. 0 or 1. */
static int run_measured(const opts *o, const children *k, int64_t go_us, server_watch *w)
{
    for (int i = 0; i < o->procs; i++)
        if (!send_ctl(k, i, 'G', go_us)) return 1;
    if (o->npids && (o->mode == M_CHAT || o->mode == M_REST) && !o->messages) {
        int64_t w0 = go_us + (int64_t)(o->warmup * 1e6);
        if (sleep_until_us(w0)) watch_sample(o, w, AT_WIN0);
        if (sleep_until_us(w0 + (int64_t)(o->duration * 1e6))) {
            watch_sample(o, w, AT_WIN1);
            w->windowed = true;
        }
    }
    for (int i = 0; i < o->procs; i++) {
        rep_msg r;
        if (!read_all(k->rep[i], &r, sizeof r, k->deadline_ms) || r.tag != 'D') {
            fprintf(stderr, "chat-bench: process %d did not finish in time\n", i);
            return 1;
        }
    }
    return 0;
}

/* Quit for every child, their stats merged into all (when rc is still 0), the pipes closed, the
 * children reaped (killed after 5 s). Returns rc, or 1 when a child's stats did not come. */
static int collect_children(const opts *o, const children *k, stats *all, stats *one, int rc)
{
    for (int i = 0; i < o->procs; i++) send_ctl(k, i, 'Q', 0);
    for (int i = 0; i < o->procs; i++) {
        if (!rc && read_all(k->rep[i], one, sizeof *one, k->deadline_ms + 10000)) stats_merge(all, one);
        else rc = 1;
        close(k->ctl[i]), close(k->rep[i]);
    }
    for (int i = 0; i < o->procs; i++) {
        int status;
        int64_t until = now_ms() + 5000;
        while (waitpid(k->pid[i], &status, WNOHANG) == 0) {
            if (now_ms() > until) {
                kill(k->pid[i], SIGKILL);
                waitpid(k->pid[i], &status, 0);
                break;
            }
            usleep(10000);
        }
    }
    return rc;
}

/* How long the phases took and what the client itself cost. */
typedef struct run_times {
    double ramp_s, run_s, client_cpu;
} run_times;

/* The client side: the latency histograms of the mode, turns or requests, errors. */
static void report_client(const opts *o, const stats *s)
{
    if (s->connect_retries) printf("  (connect retried %llu times on a full listen backlog)\n", (unsigned long long)s->connect_retries);
    bh_print(stdout, H_NAMES[H_TCP], &s->h[H_TCP]);
    if (o->mode != M_REST) bh_print(stdout, H_NAMES[H_OPEN], &s->h[H_OPEN]);
    if (o->mode != M_REST && o->auth != A_NONE) {
        bh_print(stdout, o->auth == A_QUERY ? "auth (101 -> auth_success)" : H_NAMES[H_AUTH], &s->h[H_AUTH]);
        bh_print(stdout, H_NAMES[H_CONNAUTH], &s->h[H_CONNAUTH]);
    }
    double w = s->window_s > 0 ? s->window_s : 1;
    if (o->mode == M_CHAT) {
        printf("turns: %llu complete (%.1f/s in the window), %llu failed; token frames %.0f/s, all frames %.0f/s,"
               " tokens %.0f/s",
               (unsigned long long)s->turns_done, (double)s->turns_done_window / w, (unsigned long long)s->turns_error,
               (double)s->token_frames_window / w, (double)s->frames_window / w, (double)s->tokens_window / w);
        if (s->turns_done)
            printf("; per answer %.1f token frames", (double)s->token_frames / (double)s->turns_done);
        if (s->answers_with_usage)
            printf(", %.1f tokens", (double)s->completion_tokens / (double)s->answers_with_usage);
        printf("\n");
        if (s->missed_sends) printf("  open loop: %llu sends missed (no idle connection)\n", (unsigned long long)s->missed_sends);
        for (int i = H_ACK; i <= H_OUTSIDE; i++) bh_print(stdout, H_NAMES[i], &s->h[i]);
        for (int i = 0; i < s->ntiming; i++) {
            char name[48];
            snprintf(name, sizeof name, "server %s", s->timing_keys[i]);
            bh_print(stdout, name, &s->timing[i]);
        }
    }
    if (o->mode == M_REST) {
        printf("requests: %llu answered (%.1f/s in the window, %.1f/s with a 2xx status), %llu not 2xx, %llu reconnects\n",
               (unsigned long long)s->rest_done, (double)s->rest_done_window / w, (double)s->rest_ok_window / w,
               (unsigned long long)s->rest_non2xx, (unsigned long long)s->reconnects);
        bh_print(stdout, H_NAMES[H_REST], &s->h[H_REST]);
    }
    if (s->nerrs) {
        printf("errors:");
        for (int i = 0; i < s->nerrs; i++) printf("%s %s: %llu", i ? "," : "", s->errs[i].name, (unsigned long long)s->errs[i].n);
        printf("\n");
    }
    if (o->mode == M_IDLE && s->dropped_after_setup)
        printf("  %llu connections dropped while held\n", (unsigned long long)s->dropped_after_setup);
}

/* CPU time in the measured window of one sampled process, its children of the same program (a process
 * group: lighttpd and its server.max-worker processes, chat-worker and its workers) and its other
 * children (lighttpd's FastCGI responders), in ms: bench/bench.sh divides them by the token frames the
 * clients received in the same window (token_frames_win). */
static void report_window_cpu(const server_watch *w, int i, const char *label)
{
    const proc_sample *a = &w->s[AT_WIN0][i], *b = &w->s[AT_WIN1][i];
    long ticks = sysconf(_SC_CLK_TCK);
    if (!w->windowed || !w->alive[AT_WIN0][i] || !w->alive[AT_WIN1][i] || ticks <= 0) return;
    double ms = 1000.0 / (double)ticks;
    double self = (double)(b->cpu_ticks - a->cpu_ticks) * ms;
    /* a child that exited in between leaves the sums: never below zero */
    double same = b->same_kids_cpu_ticks >= a->same_kids_cpu_ticks ? (double)(b->same_kids_cpu_ticks - a->same_kids_cpu_ticks) * ms : 0;
    double kids = b->kids_cpu_ticks >= a->kids_cpu_ticks ? (double)(b->kids_cpu_ticks - a->kids_cpu_ticks) * ms : 0;
    double other = kids > same ? kids - same : 0;
    printf("  in the measured window: CPU %.0f ms (the process %.0f, its children of the same program %.0f, other"
           " children %.0f)\n", self + same + other, self, same, other);
    printf("BENCH server=%s win_group_cpu_ms=%.0f win_self_cpu_ms=%.0f win_other_kids_cpu_ms=%.0f\n", label, self + same,
           self, other);
}

/* One sampled server process: its memory and CPU lines. false when it was not sampled at the start;
 * else tree gets its RSS with its children's before and while held (kB). */
static bool report_server(const opts *o, const stats *s, const server_watch *w, int i, const run_times *t, long tree[2])
{
    const proc_sample *s0 = &w->s[AT_BEFORE][i], *s1 = &w->s[AT_HELD][i], *s2 = &w->s[AT_END][i];
    if (w->pid[i] <= 0 || s0->rss_kb < 0) return false;
    const char *base = strrchr(o->pid_files[i], '/');
    base = base ? base + 1 : o->pid_files[i];
    char label[64];
    snprintf(label, sizeof label, "%s", base);
    char *dot = strstr(label, ".pid");
    if (dot) *dot = '\0';
    if (!w->alive[AT_HELD][i] || !w->alive[AT_END][i]) {
        printf("server %s (pid %d): EXITED during the run%s\n", label, (int)w->pid[i],
               w->alive[AT_HELD][i] ? "" : " (before the measured phase)");
        printf("BENCH server=%s exited=1\n", label);
        return false;
    }
    long ticks = sysconf(_SC_CLK_TCK);
    bool held = o->mode == M_IDLE || o->mode == M_CONNECT;
    /* With one --pid-file per --url, the i-th process serves the i-th target's connections only. */
    uint64_t mine = o->npids == o->ntargets && o->ntargets > 1 ? s->ready_by_target[i] : s->authed;
    /* the process and its children: lighttpd with server.max-worker holds connections in its workers */
    tree[0] = s0->rss_kb + s0->kids_rss_kb, tree[1] = s1->rss_kb + s1->kids_rss_kb;
    double per = mine ? (double)(tree[1] - tree[0]) * 1024.0 / (double)mine : 0;
    /* CPU over the run (chat, rest) or over the whole ramp and hold (idle, connect) */
    const proc_sample *from = held ? s0 : s1;
    double span = held ? t->run_s + t->ramp_s + o->settle : t->run_s;
    double cpu = span > 0 && ticks > 0 ? (double)(s2->cpu_ticks - from->cpu_ticks) / (double)ticks / span * 100 : 0;
    double kcpu = span > 0 && ticks > 0 && s2->kids_cpu_ticks >= from->kids_cpu_ticks
                      ? (double)(s2->kids_cpu_ticks - from->kids_cpu_ticks) / (double)ticks / span * 100
                      : 0;
    printf("server %s (pid %d): RSS %.1f MB before, %.1f MB %s, %.1f MB at the end", label, (int)w->pid[i],
           s0->rss_kb / 1024.0, s1->rss_kb / 1024.0, held ? "holding" : "at the start", s2->rss_kb / 1024.0);
    if (held)
        printf("; %.0f bytes per connection%s (%llu connections)", per, s1->nkids ? " with its children" : "",
               (unsigned long long)mine);
    printf("; CPU %.0f %% of a core\n", cpu);
    if (s2->nkids)
        printf("  and its %d children: RSS %.1f MB before, %.1f MB at the end; CPU %.0f %% of a core\n", s2->nkids,
               s0->kids_rss_kb / 1024.0, s2->kids_rss_kb / 1024.0, kcpu);
    printf("BENCH server=%s rss_before_kb=%ld rss_held_kb=%ld rss_end_kb=%ld bytes_per_conn=%.0f cpu_pct=%.0f"
           " kids=%d kids_rss_end_kb=%ld kids_cpu_pct=%.0f\n",
           label, s0->rss_kb, s1->rss_kb, s2->rss_kb, held ? per : 0.0, cpu, s2->nkids, s2->kids_rss_kb, kcpu);
    report_window_cpu(w, i, label);
    return true;
}

/* Every sampled server, then their sum per connection (idle and connect, more than one sampled). */
static void report_servers(const opts *o, const stats *s, const server_watch *w, const run_times *t)
{
    long sum_before = 0, sum_held = 0;
    int nsampled = 0;
    for (int i = 0; i < o->npids; i++) {
        long tree[2];
        if (!report_server(o, s, w, i, t, tree)) continue;
        sum_before += tree[0], sum_held += tree[1], nsampled++;
    }
    if (nsampled > 1 && (o->mode == M_IDLE || o->mode == M_CONNECT) && s->authed) {
        double per = (double)(sum_held - sum_before) * 1024.0 / (double)s->authed;
        printf("all sampled server processes: %.0f bytes per connection\n", per);
        printf("BENCH server=all bytes_per_conn=%.0f\n", per);
    }
}

/* The status pages, the client's cost, and the run's BENCH line (bench/bench.sh reads its keys). */
static void report_summary(const opts *o, const stats *s, const server_watch *w, const run_times *t)
{
    if (w->status[AT_HELD][0]) printf("server /status while held: %s\n", w->status[AT_HELD]);
    if (w->status[AT_END][0]) printf("server /status at the end: %s\n", w->status[AT_END]);
    int procs = o->procs;
    double span = t->run_s + t->ramp_s;
    printf("client: %d process%s, CPU %.1f s (%.0f %% of a core over %.1f s)\n", procs, procs > 1 ? "es" : "",
           t->client_cpu, span > 0 ? t->client_cpu / span * 100 : 0, span);
    printf("BENCH mode=%s conns=%ld procs=%d open=%llu ready=%llu failed=%llu dropped=%llu ramp_s=%.2f", mode_name(o->mode),
           o->conns, procs, (unsigned long long)s->established, (unsigned long long)s->authed,
           (unsigned long long)s->failed_setup, (unsigned long long)s->dropped_after_setup, t->ramp_s);
    print_kv_hist("open", &s->h[H_OPEN]);
    print_kv_hist("auth", &s->h[H_AUTH]);
    print_kv_hist("connauth", &s->h[H_CONNAUTH]);
    double win = s->window_s > 0 ? s->window_s : 1;
    if (o->mode == M_CHAT) {
        printf(" turns_per_s=%.1f token_frames_per_s=%.0f tokens_per_s=%.0f turns_failed=%llu tokens_per_answer=%.1f",
               (double)s->turns_done_window / win, (double)s->token_frames_window / win, (double)s->tokens_window / win,
               (unsigned long long)s->turns_error,
               s->answers_with_usage ? (double)s->completion_tokens / (double)s->answers_with_usage : 0.0);
        print_kv_hist("ack", &s->h[H_ACK]);
        print_kv_hist("first", &s->h[H_FIRST]);
        print_kv_hist("gap", &s->h[H_GAP]);
        print_kv_hist("turn", &s->h[H_TURN]);
        print_kv_hist("outside", &s->h[H_OUTSIDE]);
        for (int i = 0; i < s->ntiming; i++) {
            char key[40];
            snprintf(key, sizeof key, "srv_%s", s->timing_keys[i]);
            print_kv_hist(key, &s->timing[i]);
        }
    }
    if (o->mode == M_REST) {
        printf(" req_per_s=%.1f req_ok_per_s=%.1f non2xx=%llu", (double)s->rest_done_window / win,
               (double)s->rest_ok_window / win, (unsigned long long)s->rest_non2xx);
        print_kv_hist("req", &s->h[H_REST]);
    }
    uint64_t errs = 0;
    for (int i = 0; i < s->nerrs; i++) errs += s->errs[i].n;
    printf(" errors=%llu client_cpu_s=%.1f window_s=%.2f token_frames_win=%llu turns_win=%llu\n",
           (unsigned long long)errs, t->client_cpu, s->window_s, (unsigned long long)s->token_frames_window,
           (unsigned long long)s->turns_done_window);
}

/* The run, phase by phase: plan the processes, sample the servers, fork, ramp (children report ready),
 * settle and sample, the measured phase, sample, collect the children's stats, report. The report is
 * printed even when a phase failed (with what was measured), and the exit status says so. */
static int run_parent(opts *o)
{
    if (plan_processes(o)) return 1;
    static server_watch w; /* once per process: zeroed, and too big for a comfortable stack frame */
    children k = {.deadline_ms = now_ms() + (int64_t)(o->max_time * 1000)};
    watch_sample(o, &w, AT_BEFORE);
    print_plan(o);
    if (spawn_children(o, &k)) return 1;
    run_times t = {0};
    int rc = await_ready(o, &k, &t.ramp_s);
    if (!rc) settle(o);
    watch_sample(o, &w, AT_HELD);
    int64_t go = chat_now_us() + 20000;
    if (!rc) rc = run_measured(o, &k, go, &w);
    int64_t t_end = chat_now_us();
    watch_sample(o, &w, AT_END);
    stats *all = calloc(1, sizeof *all), *one = malloc(sizeof *one);
    if (!all || !one) return 1;
    rc = collect_children(o, &k, all, one, rc);
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    t.client_cpu = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
                   ru.ru_stime.tv_usec / 1e6;
    t.run_s = (double)(t_end - go) / 1e6;
    report_client(o, all);
    report_servers(o, all, &w, &t);
    report_summary(o, all, &w, &t);
    /* A run that measured nothing is a failure, not a table of zeros with exit status 0. */
    const char *nothing = NULL;
    if (o->mode == M_REST && all->rest_done == all->rest_non2xx) nothing = "no request got a 2xx answer";
    else if (o->mode != M_REST && !all->authed) nothing = "no connection was set up";
    else if (o->mode == M_CHAT && !all->turns_done) nothing = "no turn was answered";
    if (!rc && nothing) {
        fprintf(stderr, "chat-bench: nothing measured: %s\n", nothing);
        rc = 1;
    }
    free(all), free(one);
    return rc;
}

/* ------------------------------------------------------------------ options */

static const chat_cli BENCH_CLI = {
    .prog = "chat-bench",
    .usage =
        "usage: chat-bench idle|connect|chat|rest --url URL [options]\n"
        "  --url URL           ws://127.0.0.1:PORT/ws/chat, ws+unix:/path.sock:/ws/chat (rest: http://..., http+unix:...);\n"
        "                      repeat to spread connections over several servers (loopback only)\n"
        "  --conns N           connections (default 100)\n"
        "  --duration S        idle: hold time; chat/rest: measured time (default 10)\n"
        "  --warmup S          chat/rest: run before measuring (default 1)\n"
        "  --auth message|query|none   how to authenticate (default message)\n"
        "  --secret-file F     HS256 secret (first line), else $JWT_SECRET;  --token-file F: one token for all\n"
        "  --users N           distinct users (default: one per connection)\n"
        "  --rate R            chat: open loop, R messages/s in total (default: closed loop)\n"
        "  --messages N        stop after N messages / requests in total\n"
        "  --think-ms N        chat closed loop: pause between turns\n"
        "  --questions F       questions, one per line (default: built-in); rest: POST them as JSON\n"
        "  --post              rest: POST questions to the URL (implied for /api/v1/chat)\n"
        "  --pid-file F        server process to sample (RSS, CPU); repeatable; as many as --url: one per target\n"
        "  --status-url URL    server status page, fetched while held and at the end (http://, http+unix:)\n"
        "  --procs P / --per-proc N   processes / connections per process (default from RLIMIT_NOFILE)\n"
        "  --concurrency N     connection attempts in flight per process (default 256)\n"
        "  --src-addrs N       TCP: source addresses 127.0.0.1..127.0.0.N (default: one per 25,000 connections)\n"
        "  --timeout S         per connect / auth / turn / request (default 30)\n"
        "  --settle S          idle: wait before sampling server memory (default 2)\n"
        "  --max-time S        bound on the whole run (default: duration + warm-up + 180)\n",
};

static int usage(const char *problem) { return chat_cli_usage(&BENCH_CLI, problem); }

static const char *const BUILTIN_Q[] = {
    "What is the engine power of the Seawind 250?",
    "How much fuel does the Seawind 280 hold?",
    "What does fault code E17 mean?",
    "How often should I service the Seawind 190?",
    "What does the warranty cover?",
    "My engine overheats, what should I check?",
    "What oil does the Seawind 310 take?",
    "Where is the Harbor Point service center?",
    "What is the top speed of the Seawind 340?",
    "How do I winterize my Seawind 220?",
};

static bool first_line(const char *path, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    if (!f) return false;
    bool ok = fgets(out, (int)cap, f) != NULL;
    fclose(f);
    if (ok) out[strcspn(out, "\r\n")] = '\0';
    return ok && out[0];
}

/* Pre-builds the frames (chat) or bodies (rest) so the hot loop only masks and writes. */
static int load_questions(opts *o, const char *file, bool rest)
{
    char **lines = NULL;
    size_t n = 0, cap = 0;
    FILE *f = file ? fopen(file, "r") : NULL;
    if (file && !f) {
        fprintf(stderr, "chat-bench: cannot read %s\n", file);
        return -1;
    }
    char line[2048];
    size_t bi = 0;
    for (;;) {
        const char *q;
        if (f) {
            if (!fgets(line, sizeof line, f)) break;
            line[strcspn(line, "\r\n")] = '\0';
            if (!line[0]) continue;
            q = line;
        } else {
            if (bi == CHAT_ARRAY_LEN(BUILTIN_Q)) break;
            q = BUILTIN_Q[bi++];
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nl = realloc(lines, cap * sizeof *nl);
            if (!nl) return -1;
            lines = nl;
        }
        lines[n] = rest ? chat_proto_rest_request(q, NULL, NULL) : chat_proto_client_message(q, NULL, NULL, true);
        if (!lines[n]) return -1;
        n++;
        if (n >= 1000000) break;
    }
    if (f) fclose(f);
    if (!n) {
        fprintf(stderr, "chat-bench: no questions\n");
        return -1;
    }
    o->questions = lines;
    o->nquestions = n;
    o->qlens = calloc(n, sizeof *o->qlens);
    if (!o->qlens) return -1;
    for (size_t i = 0; i < n; i++) o->qlens[i] = strlen(lines[i]);
    return 0;
}

/* What the command line names before it becomes opts: the URLs, the files, --post. */
typedef struct cmdline {
    const char *urls[MAX_TARGETS];
    int nurls;
    const char *secret_file, *token_file, *qfile;
    bool post;
} cmdline;

static const char *const AUTH_NAMES[] = {"message", "query", "none", NULL}; /* in A_* order */

/* The mode (argv[1]) and the options after it, with their defaults; 0 or the exit status. */
static int parse_command_line(int argc, char **argv, opts *o, cmdline *cl)
{
    int m = 0;
    while (m < (int)CHAT_ARRAY_LEN(MODE_NAMES) && strcmp(argv[1], MODE_NAMES[m])) m++;
    if (m == (int)CHAT_ARRAY_LEN(MODE_NAMES)) return usage("unknown mode");
    o->mode = m;
    o->conns = 100, o->concurrency = 256, o->duration = 10, o->warmup = 1, o->timeout = 30, o->settle = 2;
    o->max_time = -1;
    o->auth = -1; /* not given: the mode decides */
    const chat_cli_opt table[] = {
        CHAT_CLI_LIST_OPT("url", cl->urls, &cl->nurls, MAX_TARGETS, "too many --url"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "conns", &o->conns, 1, MAX_CONNS, "--conns: 1..1000000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "duration", &o->duration, 0, 86400, "--duration: 0..86400"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "warmup", &o->warmup, 0, 3600, "--warmup: 0..3600"),
        CHAT_CLI_CHOICE_OPT("auth", &o->auth, AUTH_NAMES, "--auth: message, query or none"),
        CHAT_CLI_STR_OPT("secret-file", &cl->secret_file),
        CHAT_CLI_STR_OPT("token-file", &cl->token_file),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "users", &o->users, 1, MAX_CONNS, "--users: 1..1000000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "rate", &o->rate, 0, 1e7, "--rate: 0..1e7"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "messages", &o->messages, 0, 1000000000L, "--messages: 0..1e9"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_INT, "think-ms", &o->think_ms, 0, 600000, "--think-ms: 0..600000"),
        CHAT_CLI_STR_OPT("questions", &cl->qfile),
        CHAT_CLI_FLAG_OPT("post", &cl->post),
        CHAT_CLI_LIST_OPT("pid-file", o->pid_files, &o->npids, MAX_PIDS, "too many --pid-file"),
        CHAT_CLI_STR_OPT("status-url", &o->status_url),
        CHAT_CLI_NUM_OPT(CHAT_CLI_INT, "procs", &o->procs, 1, MAX_PROCS, "--procs: 1..64"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "per-proc", &o->per_proc, 1, MAX_CONNS, "--per-proc: 1..1000000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_INT, "concurrency", &o->concurrency, 1, 100000, "--concurrency: 1..100000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_INT, "src-addrs", &o->src_addrs, 1, 250, "--src-addrs: 1..250"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "timeout", &o->timeout, 0.1, 3600, "--timeout: 0.1..3600"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "settle", &o->settle, 0, 600, "--settle: 0..600"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "max-time", &o->max_time, 1, 86400, "--max-time: 1..86400"),
    };
    int status;
    if (!chat_cli_parse(&BENCH_CLI, table, CHAT_ARRAY_LEN(table), argc, argv, 2, &status)) return status;
    if (optind != argc) return usage("unexpected argument");
    if (!cl->nurls) return usage("--url is required");
    return 0;
}

/* The targets, the mode's own settings (connect holds nothing, idle and connect warm up nothing, REST
 * posts to /api/v1/chat and needs no auth for a GET) and the default --max-time. 0 or the exit status. */
static int resolve_targets(opts *o, cmdline *cl)
{
    bool http = o->mode == M_REST;
    char err[512];
    for (int i = 0; i < cl->nurls; i++)
        if (parse_target(cl->urls[i], http, &o->targets[o->ntargets++], err, sizeof err)) return usage(err);
    if (o->mode == M_CONNECT) o->duration = 0;
    if (o->mode == M_IDLE || o->mode == M_CONNECT) o->warmup = 0;
    if (o->max_time < 0) o->max_time = o->duration + o->warmup + 180;
    if (http) cl->post = cl->post || strstr(o->targets[0].path, "/api/v1/chat") != NULL;
    if (o->auth < 0) o->auth = http && !cl->post ? A_NONE : A_MESSAGE;
    return 0;
}

/* The one token (--token-file) or the secret to mint them with, when the mode authenticates. 0 or the
 * exit status. */
static int resolve_auth(opts *o, const cmdline *cl)
{
    bool http = o->mode == M_REST;
    bool need_token = o->auth != A_NONE && (!http || cl->post);
    if (!need_token) o->auth = http ? A_NONE : o->auth;
    if (!need_token) return 0;
    char tok[8192];
    if (cl->token_file) {
        if (!first_line(cl->token_file, tok, sizeof tok)) return usage("--token-file: cannot read a token");
        o->fixed_token = strdup(tok);
    } else if (cl->secret_file) {
        if (!first_line(cl->secret_file, o->secret, sizeof o->secret)) return usage("--secret-file: cannot read a secret");
    } else if (getenv("JWT_SECRET") && *getenv("JWT_SECRET")) {
        snprintf(o->secret, sizeof o->secret, "%s", getenv("JWT_SECRET"));
    } else {
        return usage("a token is needed: --secret-file, $JWT_SECRET or --token-file");
    }
    if (!o->fixed_token && strlen(o->secret) < 32) return usage("the JWT secret must have at least 32 bytes");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) return usage(NULL);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage(NULL);
        return 0;
    }
    static opts o;
    cmdline cl = {0};
    int rc = parse_command_line(argc, argv, &o, &cl);
    if (!rc) rc = resolve_targets(&o, &cl);
    if (!rc) rc = resolve_auth(&o, &cl);
    if (rc) return rc;
    bool http = o.mode == M_REST;
    if ((o.mode == M_CHAT || (http && cl.post)) && load_questions(&o, cl.qfile, http)) return 1;
    if (http && !cl.post) o.nquestions = 0;
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    /* A load generator must not outlive its bound even if something above misbehaves. */
    alarm((unsigned)(o.max_time + 30));
    rc = run_parent(&o);
    memset(o.secret, 0, sizeof o.secret);
    return rc;
}
