/* The lws side of chat-streamer: the /ws/chat protocol, per-connection sessions, /status, shutdown.
 *
 * Design choices:
 * - One lws service thread (count_threads 1) owns every socket and session and never blocks: no database,
 *   no HTTP client. JWT verification (CPU only, microseconds) runs here. The broker (streamer_broker.c)
 *   runs on this thread too: its ZeroMQ descriptor is adopted into the loop as a raw file (protocol
 *   "chat-broker"), its timers are one lws_sul, and its events are delivered as each run ends, so a token
 *   goes from the worker's message to the client's socket without a thread hand-off.
 * - The loop is libev (epoll) through lws's evlib plugin, poll() as a fallback: poll() costs
 *   O(connections) per wake-up, so with tens of thousands of connections a connection storm is quadratic.
 * - Memory per idle connection is what lws needs plus a ~200-byte session: the receive-reassembly buffer,
 *   the outbound queue, queued messages and the answer text live in a side structure allocated while the
 *   connection has work and freed when it is idle again. A message that arrives in one piece is parsed in
 *   place, never copied.
 * - Timers: lws keeps its timers in one sorted list whose insertion walks from the head, so one long
 *   timer per connection (lws's ping "validity" policy or lws_set_timer_usecs) costs O(connections) each
 *   time it is re-armed: O(n^2) with 50,000 connections. The streamer therefore disables lws's validity
 *   timers and keeps two intrusive lists of sessions, ordered by last received byte and by last client
 *   message (moving to the tail is O(1)). A one-second sweep pings connections silent for
 *   ping_interval_s, drops those silent for CHAT_STREAMER_PING_TIMEOUT_S (default twice that plus 10 s),
 *   and closes (1000) those idle for idle_timeout_s. lws's own short timeouts (handshake, close) remain.
 *   "Silent" means no byte read from the socket: streamer_rx.c sees every read, because lws 4.1 does not
 *   report pongs with an empty payload (the answer browsers give to the streamer's empty pings). The one
 *   per-connection deadline that follows no activity order, auth_expiring (CHAT_AUTH_REFRESH_LEAD_S before
 *   the token's exp), is a node in a timing wheel of one-second slots (chat_wheel.h): O(1) to arm, re-arm
 *   on a refresh and drop.
 * - Outbound queue per connection, bounded by bytes owed to the client. Tokens are not queued as frames:
 *   a token item is a range of the answer text, so consecutive tokens of a slow reader coalesce into one
 *   frame (token = the concatenated text, partial_response = the latest) and memory stays O(answer). The
 *   answer is kept JSON-escaped as well, each token escaped once on arrival, so a frame is copied from
 *   two ranges of it, not escaped again (with partial_response, every frame repeats the whole answer).
 *   Past max_outbound_bytes, or when the client takes nothing for CHAT_STREAMER_WRITE_STALL_MS, the
 *   connection is closed with 1008 "slow consumer" (a reader that stopped reading cannot hold a
 *   connection, its memory and its answers forever).
 * - One answer at a time per connection: further messages wait in a bounded FIFO, and the next one is
 *   dispatched when the previous answer's tokens have left the queue (a slow reader does not hold a
 *   worker for answers it cannot read). progress "starting" is sent when a message starts. A resume,
 *   and another tab's message in the conversation the connection follows (streamer_sessions.h), wait
 *   in the same FIFO and are answered the same way: a subscription to the answer (streamer_broker.h)
 *   instead of a job. A connection that leaves detaches from its answer, which goes on (resumable).
 * - Per-connection token bucket (rate_limit_per_min, burst 10) on messages and resumes (unauthenticated
 *   ones too), auth frames and invalid frames; application pings have a bucket of their own at the same
 *   rate. Messages without a session_id continue the connection's last session.
 * - A connection not authenticated CHAT_STREAMER_AUTH_TIMEOUT_S after it opened is closed (1008): a third
 *   list, in opening order, holds the connections still waiting, so the sweep reads only its head.
 * - Path and Origin are checked in LWS_CALLBACK_HTTP_CONFIRM_UPGRADE, where a 404/403 response can still
 *   be written (a refusal in FILTER_PROTOCOL_CONNECTION only drops the TCP connection).
 * - Graceful shutdown: close every listener at once (streamer_listen.h: new connections go to the other
 *   streamers of the port or of lighttpd's balance) and refuse new messages, let answers in flight finish
 *   within shutdown_grace_s, then close everything with 1001 and exit 0. A connection that was already
 *   queued on a listener when it closed is taken and served, not reset.
 * - Token refresh: an auth on an authenticated connection with a token for the same user replaces the
 *   token (its exp, email and name) without touching answers in flight; a token for another user is
 *   refused with auth_error USER_MISMATCH and the connection keeps its user (a connection's user never
 *   changes: its sessions, queued messages and answers are that user's).
 *
 * Settings beyond chat_config (streamer-only, see docs/streamer.md): CHAT_STREAMER_SNDBUF (kernel send
 * buffer per WebSocket, default 65536 so that a slow reader cannot park megabytes in kernel buffers
 * through autotuning, and is noticed; 0 = leave it to the kernel),
 * CHAT_STREAMER_RX_BUFFER (lws rx chunk per connection, default 512: lws allocates it per connection), CHAT_STREAMER_WRITE_STALL_MS
 * (default 30000), CHAT_STREAMER_PING_TIMEOUT_S (default 2 * CHAT_PING_INTERVAL_S + 10),
 * CHAT_STREAMER_HEADER_TIMEOUT_S (default 10), CHAT_STREAMER_AUTH_TIMEOUT_S (default 10),
 * CHAT_STREAMER_EVENT_LOOP (libev | poll), CHAT_LWS_DEBUG (lws log bitmask) and CHAT_AUTH_REFRESH_LEAD_S
 * (auth_expiring this long before a token's exp, default 30, 0 = never). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libwebsockets.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_list.h"
#include "chat_config.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_origin.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "chat_userlimit.h"
#include "chat_wheel.h"
#include "streamer.h"
#include "streamer_broker.h"
#include "streamer_listen.h"
#include "streamer_map.h"
#include "streamer_sessions.h"
#include "streamer_rx.h"

#define ST_BURST 10.0f
#define ST_TOKEN_OVERHEAD 64 /* JSON around a token frame, for the outbound byte count */
#define ST_MAX_WRITES_PER_CALLBACK 16
#define ST_TX_KEEP (256u * 1024) /* the shared send buffer is shrunk back after a larger frame */
#define ST_CLOSE_WAIT_MS 3000    /* after the close phase starts, how long to wait for clients */
#define ST_QUEUED_SERVE_MS 1000  /* a drain that took queued connections serves them at least this long */
#define ST_KILL_AFTER_S 10       /* a connection being closed that cannot take its close frame */

/* ---------------------------------------------------------------- sessions */

typedef enum {
    P_MESSAGE, /* the client's message */
    P_RESUME,  /* the client's resume of session_id */
    P_FOLLOW,  /* another connection of the user asked `message` in session_id: show it and its answer */
} pmsg_kind;

typedef struct pmsg { /* work waiting behind the answer in progress */
    struct pmsg *next;
    char *message, *session_id, *customer_id;
    char *answer_id;             /* resume: the client's cursor's; follow: the answer's */
    unsigned long long last_seq; /* resume */
    uint64_t target;             /* follow: the job answering it */
    uint8_t kind;                /* pmsg_kind */
    bool partial;
} pmsg;

typedef struct sess sess;

typedef struct sess_x { /* a connection's working state, present only while it has work */
    sess *owner;
    struct sess_x *oprev, *onext; /* in S.outq while the outbound queue is not empty */
    int64_t head_since_ms;        /* when the oldest unsent item became the head */
    /* inbound: a message arriving in several pieces */
    chat_buf rx;
    size_t rx_total;
    bool rx_active;
    bool rx_skip; /* too long: discarding the rest, answer MESSAGE_TOO_LONG at the end */
    chat_proto_scan rx_scan; /* while skipping: whether the message is an auth attempt */
    /* outbound */
    sb_event *out_head, *out_tail;
    size_t out_bytes;
    int out_tokens; /* SB_EV_TOKENS items in the queue (they reference answer) */
    /* waiting messages */
    pmsg *p_head, *p_tail;
    int p_len;
    /* the answer in progress: the connection's own job, or a subscription to a conversation's answer */
    uint64_t job_id;
    bool job_partial;
    bool job_resume; /* a resume: its refusal detaches the connection from the session */
    bool cancel_sent;
    bool job_counted; /* its own answer, counted in S.limits until it ends or the connection leaves it */
    int64_t job_t0_ms;
    uint64_t seq;                                /* the seq of its last token */
    char job_session[CHAT_ID_MAX + 1]; /* its conversation (token frames carry it) */
    char job_answer[CHAT_ID_MAX + 1];  /* its answer id, when this connection asked it */
    chat_buf answer;     /* the answer so far */
    chat_buf answer_esc; /* the same, JSON-escaped: token items are ranges of it */
} sess_x;

enum {
    F_LISTED = 1,   /* in the rx and msg lists */
    F_PING_DUE = 2, /* send a ping at the next writeable */
    F_PINGED = 4,   /* a ping is out, no byte received since */
    F_DEAD = 8,     /* being killed: ignore everything */
    /* in the auth list: not authenticated at ESTABLISHED, the deadline not reached yet */
    F_AUTH_WAIT = 16,
    F_TOUCHED = 32, /* in S.touched: deliver_events queued something for it */
};

enum { L_RX = 0, L_MSG = 1, L_AUTH = 2, L_COUNT };

struct sess {
    struct sess *prev[L_COUNT], *next[L_COUNT];
    struct lws *wsi;
    sess_x *x;
    ss_member *att;   /* the conversation it follows (streamer_sessions.h), NULL: none */
    char *user;       /* "id\0email\0name\0" once authenticated */
    char *session_id; /* the default for messages that name none */
    const char *close_reason;
    int64_t token_exp; /* the token's exp: a connection outliving it must authenticate again */
    chat_wheel_node expiring; /* in S.expiring until auth_expiring is sent (due: exp - lead) */
    int64_t last_rx_ms;
    int64_t last_msg_ms;
    int64_t bucket_ms;
    float bucket;
    float ping_bucket; /* application pings have a bucket of their own, at the same rate */
    int64_t ping_bucket_ms;
    int64_t opened_ms;
    uint16_t close_code; /* non-zero: close after the queue drains */
    uint8_t flags;
    srx_conn wire; /* every read from the socket counts as activity (streamer_rx.h) */
};

typedef struct dl_list {
    sess *head, *tail;
} dl_list;

/* ---------------------------------------------------------------- process-wide state (lws thread) */

static struct {
    chat_config cfg;
    chat_jwt_verifier *jwt;
    sb_broker *broker;
    struct lws_context *ctx;
    sm_map jobs; /* job id -> session with that job (or subscription) in progress */
    ss_registry *reg; /* which connections follow which conversation */
    chat_userlimit *limits; /* per-user limits shared by the host's streamers (chat_userlimit.h) */
    chat_wheel *expiring; /* sessions to warn with auth_expiring, by wall-clock second */
    int auth_lead_s;      /* CHAT_AUTH_REFRESH_LEAD_S */
    uint64_t next_job;
    size_t frame_max;
    int sndbuf;
    int rx_buffer;
    int ping_timeout_s; /* no byte received for this long: dropped */
    int head_timeout_s; /* lws's bound on a request head (slowloris) */
    int auth_timeout_s; /* a connection not authenticated this long after it opened is closed */
    bool evlib; /* libev loop (else poll) */
    int conns;
    dl_list lists[L_COUNT];
    sess_x *outq_head, *outq_tail; /* connections with something to send */
    int stall_ms;
    unsigned char *tx;
    size_t txcap;
    lws_sorted_usec_list_t broker_sul; /* the broker's next run */
    struct lws *broker_wsi;            /* its ZeroMQ descriptor (a dup), watched by the loop */
    /* While deliver_events runs: the connections it queued frames for, written at its end (write_now). */
    bool delivering;
    sess **touched;
    size_t n_touched, cap_touched;
    volatile sig_atomic_t stop_requested;
    int phase; /* 0 serving, 1 draining (grace), 2 closing, 3 done */
    sl_listener ls[SL_MAX_LISTENERS];
    int nls;
    int64_t grace_deadline_ms, close_deadline_ms;
    int64_t drain_min_ms; /* the grace period lasts at least until then (connections taken at its start) */
    lws_sorted_usec_list_t tick;
    int64_t last_sweep_ms, last_status_ms;
    unsigned long long msgs, msgs_at_status, jobs_at_status;
    unsigned long long errors[CHAT_PROTO_CODE_COUNT]; /* error frames sent, by code */
} S;

static void dl_remove(sess *s, int k)
{
    dl_list *l = &S.lists[k];
    if (s->prev[k])
        s->prev[k]->next[k] = s->next[k];
    else
        l->head = s->next[k];
    if (s->next[k])
        s->next[k]->prev[k] = s->prev[k];
    else
        l->tail = s->prev[k];
    s->prev[k] = s->next[k] = NULL;
}

static void dl_append(sess *s, int k)
{
    dl_list *l = &S.lists[k];
    s->prev[k] = l->tail;
    s->next[k] = NULL;
    if (l->tail)
        l->tail->next[k] = s;
    else
        l->head = s;
    l->tail = s;
}

static void dl_touch(sess *s, int k)
{
    if (!(s->flags & F_LISTED) || S.lists[k].tail == s) return;
    dl_remove(s, k);
    dl_append(s, k);
}

static const char *user_id(const sess *s)
{
    return s->user;
}
static const char *user_email(const sess *s)
{
    return s->user + strlen(s->user) + 1;
}
static const char *user_name(const sess *s)
{
    const char *e = user_email(s);
    return e + strlen(e) + 1;
}

static sess_x *x_get(sess *s)
{
    if (!s->x) {
        s->x = calloc(1, sizeof *s->x);
        if (s->x) {
            s->x->owner = s;
            chat_buf_init(&s->x->rx);
            chat_buf_init(&s->x->answer);
            chat_buf_init(&s->x->answer_esc);
        }
    }
    return s->x;
}

static void outq_link(sess_x *x)
{
    x->oprev = S.outq_tail;
    x->onext = NULL;
    CHAT_QUEUE_APPEND(S.outq_head, S.outq_tail, x, onext);
}

static void outq_unlink(sess_x *x)
{
    if (x->oprev)
        x->oprev->onext = x->onext;
    else if (S.outq_head == x)
        S.outq_head = x->onext;
    else
        return; /* not linked */
    if (x->onext)
        x->onext->oprev = x->oprev;
    else
        S.outq_tail = x->oprev;
    x->oprev = x->onext = NULL;
}

static void pmsg_free(pmsg *p)
{
    if (!p) return;
    free(p->message);
    free(p->session_id);
    free(p->customer_id);
    free(p->answer_id);
    free(p);
}

static void x_drop_pending(sess_x *x)
{
    for (pmsg *p = x->p_head, *n; p; p = n)
        n = p->next, pmsg_free(p);
    x->p_head = x->p_tail = NULL;
    x->p_len = 0;
}

static void x_drop_out(sess_x *x)
{
    if (x->out_head) outq_unlink(x);
    for (sb_event *e = x->out_head, *n; e; e = n)
        n = e->next, sb_event_free(e);
    x->out_head = x->out_tail = NULL;
    x->out_bytes = 0;
    x->out_tokens = 0;
}

/* Frees the side structure when the connection has nothing in flight. */
static void x_release_if_idle(sess *s)
{
    sess_x *x = s->x;
    if (!x || x->rx_active || x->out_head || x->p_head || x->job_id) return;
    chat_buf_free(&x->rx);
    chat_buf_free(&x->answer);
    chat_buf_free(&x->answer_esc);
    free(x);
    s->x = NULL;
}

static size_t item_bytes(const sess_x *x, const sb_event *e)
{
    if (e->kind != SB_EV_TOKENS) return e->len;
    return (e->end - e->start) + (x->job_partial ? e->end : 0) + ST_TOKEN_OVERHEAD;
}

static void count_error(const char *code)
{
    chat_proto_code c;
    if (chat_proto_code_lookup(code, &c)) S.errors[c]++;
    chat_metric_inc(CHAT_METRIC_ERRORS, chat_metric_label(CHAT_METRIC_LABEL_CODE, code), 1);
}

/* ---------------------------------------------------------------- outbound */

static void kill_slow_consumer(sess *s);

/* Owing more than max_outbound_bytes makes a slow consumer when the socket is full. A burst produced
 * within one read (many frames answered at once) may go up to four times the limit before the first
 * write has had a chance. */
static bool over_limit(sess *s)
{
    size_t owed = s->x->out_bytes, limit = (size_t)S.cfg.max_outbound_bytes;
    if (owed <= limit) return false;
    return owed > 4 * limit || lws_send_pipe_choked(s->wsi);
}

/* Lists s for write_now at the end of deliver_events; false (out of memory) leaves it to the callback. */
static bool touch(sess *s)
{
    if (s->flags & F_TOUCHED) return true;
    if (S.n_touched == S.cap_touched) {
        size_t cap = S.cap_touched ? 2 * S.cap_touched : 256;
        sess **t = realloc(S.touched, cap * sizeof *t);
        if (!t) return false;
        S.touched = t, S.cap_touched = cap;
    }
    S.touched[S.n_touched++] = s;
    s->flags |= F_TOUCHED;
    return true;
}

static void out_push(sess *s, sb_event *e)
{
    sess_x *x = x_get(s);
    if (!x || (s->flags & F_DEAD)) {
        sb_event_free(e);
        return;
    }
    e->next = NULL;
    if (x->out_tail) {
        x->out_tail->next = e;
    } else {
        x->out_head = e;
        x->head_since_ms = chat_now_ms();
        outq_link(x);
    }
    x->out_tail = e;
    if (e->kind == SB_EV_TOKENS) x->out_tokens++;
    x->out_bytes += item_bytes(x, e);
    if (over_limit(s)) {
        kill_slow_consumer(s);
        return;
    }
    if (S.delivering && touch(s)) return;
    lws_callback_on_writable(s->wsi);
}

/* Queues a frame the caller built (takes json; NULL means out of memory: the connection is failed). */
static void send_json(sess *s, char *json)
{
    if (!json) {
        chat_log_error("streamer: out of memory building a frame");
        return;
    }
    sb_event *e = sb_event_new(0, SB_EV_FRAME, json, strlen(json), NULL);
    free(json);
    if (!e) {
        chat_log_error("streamer: out of memory queueing a frame");
        return;
    }
    out_push(s, e);
}

static void send_error(sess *s, const char *message, const char *code)
{
    count_error(code);
    send_json(s, chat_proto_error(message, code));
}

/* Refuses a frame the client sent: an auth attempt gets auth_error, anything else error, so that a client
 * waiting for the answer to its auth always gets auth_success or auth_error. */
static void send_refusal(sess *s, bool auth, const char *message, const char *code)
{
    if (!auth) {
        send_error(s, message, code);
        return;
    }
    count_error(code);
    send_json(s, chat_proto_auth_error(message, code));
}

/* Whether a frame the parser could not take is an auth attempt (chat_proto_scan). */
static bool frame_is_auth(const char *data, size_t len)
{
    chat_proto_scan sc;
    memset(&sc, 0, sizeof sc);
    chat_proto_scan_feed(&sc, data, len);
    return sc.auth;
}

static void request_close(sess *s, int code, const char *reason)
{
    if (s->close_code || (s->flags & F_DEAD)) return;
    s->close_code = (uint16_t)code;
    s->close_reason = reason;
    if (s->x) x_drop_pending(s->x);
    lws_callback_on_writable(s->wsi);
}

/* The connection's own answer stops counting against its user's limit (it ended, or the connection left
 * it: an orphaned answer finishing in its worker is not counted, see docs/streamer.md). */
static void x_uncount(sess *s)
{
    sess_x *x = s->x;
    if (!x || !x->job_counted) return;
    x->job_counted = false;
    chat_userlimit_end(S.limits, user_id(s));
}

/* The connection stops waiting for its answer (client gone, shutdown): the answer itself goes on in
 * its worker, stored whole and resumable (CHAT_ORPHAN_POLICY). */
static void abandon_job(sess *s)
{
    sess_x *x = s->x;
    if (!x || !x->job_id) return;
    x_uncount(s);
    sm_del(&S.jobs, x->job_id);
    sb_broker_detach(S.broker, x->job_id);
    x->job_id = 0;
}

/* Ends a connection from outside its WRITEABLE callback. The queue and the job are dropped at once.
 * With a code, the close frame is sent from the next WRITEABLE callback, which lws only makes once it has
 * flushed what it buffered itself (closing earlier would make lws drop the connection without a close
 * frame); a client that never reads again is cut after ST_KILL_AFTER_S. code 0: cut now, no close frame. */
static void kill_conn(sess *s, int code, const char *reason)
{
    abandon_job(s);
    ss_detach(S.reg, &s->att);
    if (s->x) {
        x_drop_out(s->x);
        x_drop_pending(s->x);
    }
    s->flags |= F_DEAD;
    if (code) {
        s->close_code = (uint16_t)code;
        s->close_reason = reason;
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, ST_KILL_AFTER_S);
        lws_callback_on_writable(s->wsi);
    } else {
        lws_set_timeout(s->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
    }
}

static void kill_slow_consumer(sess *s)
{
    chat_log_warn("streamer: closing a slow consumer (%zu bytes owed, limit %d)", s->x ? s->x->out_bytes : 0,
                  S.cfg.max_outbound_bytes);
    kill_conn(s, ST_CLOSE_POLICY, "slow consumer");
}

static int tx_reserve(size_t len)
{
    size_t need = LWS_PRE + len + 1;
    if (need <= S.txcap) return 0;
    unsigned char *p = realloc(S.tx, need);
    if (!p) return CHAT_ENOMEM;
    S.tx = p, S.txcap = need;
    return 0;
}

/* Sends the len bytes at S.tx + LWS_PRE as one text frame. */
static int tx_send(struct lws *wsi, size_t len)
{
    int n = lws_write(wsi, S.tx + LWS_PRE, len, LWS_WRITE_TEXT);
    if (S.txcap > ST_TX_KEEP + LWS_PRE && len < ST_TX_KEEP) { /* give back a buffer grown for one big frame */
        unsigned char *p = realloc(S.tx, LWS_PRE + ST_TX_KEEP);
        if (p) S.tx = p, S.txcap = LWS_PRE + ST_TX_KEEP;
    }
    return n < 0 || (size_t)n < len ? -1 : 0;
}

static int write_text(struct lws *wsi, const char *data, size_t len)
{
    if (tx_reserve(len)) return -1;
    memcpy(S.tx + LWS_PRE, data, len);
    return tx_send(wsi, len);
}

/* Writes one queued item. 0, or -1 to drop the connection. A token frame is assembled in the send
 * buffer from ranges of the escaped answer: nothing is escaped or allocated per frame, although every
 * frame repeats the answer so far (partial_response). */
static int write_item(sess *s, sb_event *e)
{
    sess_x *x = s->x;
    if (e->kind != SB_EV_TOKENS) return write_text(s->wsi, e->data, e->len);
    const char *esc = x->answer_esc.data ? x->answer_esc.data : "";
    const char *partial = x->job_partial ? esc : NULL;
    const char *sid = x->job_session[0] ? x->job_session : NULL;
    size_t len = chat_proto_token_frame(NULL, esc + e->start, e->end - e->start, partial, e->end, e->seq, sid);
    if (tx_reserve(len)) return -1;
    chat_proto_token_frame((char *)S.tx + LWS_PRE, esc + e->start, e->end - e->start, partial, e->end, e->seq, sid);
    return tx_send(s->wsi, len);
}

/* Appends a token to the answer, raw and escaped; the escaped length before it in *at. */
static int answer_append(sess_x *x, const char *text, size_t len, size_t *at)
{
    size_t el = chat_proto_escape(text, len, NULL);
    *at = x->answer_esc.len;
    if (chat_buf_append(&x->answer, text, len)) return CHAT_ENOMEM;
    char tmp[512];
    char *dst = el <= sizeof tmp ? tmp : malloc(el);
    if (!dst) return CHAT_ENOMEM;
    chat_proto_escape(text, len, dst);
    int rc = chat_buf_append(&x->answer_esc, dst, el);
    if (dst != tmp) free(dst);
    return rc;
}

/* ---------------------------------------------------------------- jobs */

static void dispatch_next(sess *s);

/* A token bucket of rate_limit_per_min, burst min(10, rate): false when empty. at_ms 0 = full. */
static bool bucket_take(float *bucket, int64_t *at_ms, int64_t now)
{
    float rate = (float)S.cfg.rate_limit_per_min / 60000.0f; /* tokens per ms */
    float burst = S.cfg.rate_limit_per_min < ST_BURST ? (float)S.cfg.rate_limit_per_min : ST_BURST;
    if (!*at_ms)
        *bucket = burst;
    else
        *bucket += (float)(now - *at_ms) * rate;
    if (*bucket > burst) *bucket = burst;
    *at_ms = now;
    if (*bucket < 1.0f) return false;
    *bucket -= 1.0f;
    return true;
}

/* Appends p to the connection's waiting work. */
static void x_queue(sess_x *x, pmsg *p)
{
    CHAT_QUEUE_APPEND(x->p_head, x->p_tail, p, next);
    x->p_len++;
}

/* The state of a new answer the connection follows (its own job or a subscription). */
static void x_begin(sess_x *x, uint64_t id, bool partial, const char *session_id, const char *answer_id)
{
    x->job_id = id;
    x->job_partial = partial;
    x->job_resume = false;
    x->cancel_sent = false;
    x->job_counted = false;
    x->job_t0_ms = chat_now_ms();
    x->seq = 0;
    snprintf(x->job_session, sizeof x->job_session, "%s", session_id ? session_id : "");
    snprintf(x->job_answer, sizeof x->job_answer, "%s", answer_id ? answer_id : "");
    chat_buf_reset(&x->answer);
    chat_buf_reset(&x->answer_esc);
}

/* What a follower of a new answer is told (ss_each's ud), and the followers to wake once the registry's
 * walk is over (starting their work may attach them elsewhere). */
typedef struct follow_ctx {
    uint64_t target;
    const char *session_id, *answer_id, *message;
    sess **woken;
    size_t n, cap;
} follow_ctx;

/* Queues, on another connection of the user following the conversation, the message and its answer. A
 * follower whose queue is full misses it live (it is in the session's history). */
static void queue_follow(void *conn, void *ud)
{
    sess *o = conn;
    follow_ctx *f = ud;
    sess_x *x = (o->flags & F_DEAD) || o->close_code ? NULL : x_get(o);
    if (!x || x->p_len >= S.cfg.max_queue_per_conn) return;
    pmsg *p = calloc(1, sizeof *p);
    if (p) {
        p->kind = P_FOLLOW;
        p->target = f->target;
        p->partial = true;
        p->message = strdup(f->message);
        p->session_id = strdup(f->session_id);
        p->answer_id = strdup(f->answer_id);
    }
    if (!p || !p->message || !p->session_id || !p->answer_id) {
        pmsg_free(p);
        return;
    }
    x_queue(x, p);
    if (!chat_array_reserve(&f->woken, &f->cap, f->n, sizeof *f->woken)) f->woken[f->n++] = o;
}

/* Follows the conversation: later answers of it, asked from the user's other connections too, reach
 * this one. Out of memory it simply follows nothing. */
static void follow_session(sess *s, const char *session_id)
{
    if (ss_attach(S.reg, &s->att, user_id(s), session_id, s))
        chat_log_error("streamer: out of memory following a conversation");
}

static bool take_token(sess *s, int64_t now)
{
    return bucket_take(&s->bucket, &s->bucket_ms, now);
}

/* Charges a frame to the connection's messages (ping false) or application pings; false, with
 * RATE_LIMITED sent, when that bucket is empty. */
static bool charge(sess *s, bool ping, int64_t now)
{
    bool ok = ping ? bucket_take(&s->ping_bucket, &s->ping_bucket_ms, now) : take_token(s, now);
    if (!ok) send_error(s, "Too many messages, please slow down", CHAT_CODE_RATE_LIMITED);
    return ok;
}

static void start_job(sess *s, pmsg *p)
{
    sess_x *x = s->x;
    sb_stats st;
    sb_broker_stats(S.broker, &st);
    if (st.workers_live == 0 && !st.starting) { /* fail fast, before promising anything with "starting" */
        send_error(s, "No worker is available, please retry shortly", CHAT_CODE_OVERLOADED);
        pmsg_free(p);
        return;
    }
    char rid[37], new_sid[37];
    if (chat_uuid7(rid)) snprintf(rid, sizeof rid, "req-%" PRIu64, S.next_job + 1); /* time-ordered: see wa_cursor */
    uint64_t id = ++S.next_job;
    const char *sid = p->session_id && *p->session_id ? p->session_id : s->session_id;
    unsigned flags = p->partial ? CHAT_WIRE_F_PARTIAL : 0;
    if (!sid || !*sid) { /* a new conversation: named here, so that every event of its first answer can carry it */
        if (chat_uuid4(new_sid)) {
            send_error(s, "Internal error", CHAT_CODE_PROCESSING_ERROR);
            pmsg_free(p);
            return;
        }
        sid = new_sid;
        flags |= CHAT_WIRE_F_NEW_SESSION;
    }
    chat_wire_job spec = {
        .job_id = id,
        .flags = flags,
        .request_id = rid,
        .user_id = user_id(s),
        .user_email = user_email(s),
        .user_name = user_name(s),
        .session_id = sid,
        .customer_id = p->customer_id,
        .message = p->message,
    };
    if (!chat_userlimit_begin(S.limits, user_id(s))) { /* the user's other answers, on any streamer */
        send_error(s, "Too many answers in progress, please wait for one to finish", CHAT_CODE_RATE_LIMITED);
        pmsg_free(p);
        return;
    }
    sb_job *job = sb_job_new(&spec);
    if (!job || sm_put(&S.jobs, id, s)) {
        sb_job_free(job);
        chat_userlimit_end(S.limits, user_id(s));
        send_error(s, "Out of memory", CHAT_CODE_PROCESSING_ERROR);
        pmsg_free(p);
        return;
    }
    x_begin(x, id, p->partial, sid, rid);
    x->job_counted = true;
    /* Submitted before "starting" is queued: should that frame push a slow reader over its limit, the
     * connection's teardown detaches a job the broker already knows, instead of one it has not seen. The
     * followers' subscriptions come after it, so that the broker knows the job they follow. */
    sb_broker_submit(S.broker, job);
    follow_session(s, sid);
    follow_ctx f = {id, sid, rid, p->message, NULL, 0, 0};
    ss_each(S.reg, user_id(s), sid, s, queue_follow, &f);
    for (size_t i = 0; i < f.n; i++) dispatch_next(f.woken[i]);
    free(f.woken);
    chat_proto_ref ref = {sid, rid, 0};
    send_json(s, chat_proto_progress_of(&ref, chat_proto_step_name(CHAT_STEP_STARTING),
                                        chat_proto_step_message(CHAT_STEP_STARTING)));
    pmsg_free(p);
    chat_log_debug("streamer: job %" PRIu64 " submitted", id);
}

/* A resume, or a follow of another connection's answer: a subscription (streamer_broker.h). */
static void start_sub(sess *s, pmsg *p)
{
    sess_x *x = s->x;
    bool resume = p->kind == P_RESUME;
    uint64_t id = ++S.next_job;
    sb_job *job = sb_sub_new(id, user_id(s), p->session_id, p->answer_id, resume ? p->last_seq : 0, p->target, resume);
    if (!job || sm_put(&S.jobs, id, s)) {
        sb_job_free(job);
        if (resume) send_error(s, "Out of memory", CHAT_CODE_PROCESSING_ERROR);
        pmsg_free(p);
        return;
    }
    x_begin(x, id, p->partial, p->session_id, resume ? NULL : p->answer_id);
    x->job_resume = resume;
    if (resume) follow_session(s, p->session_id);
    if (!resume) {
        chat_proto_ref ref = {p->session_id, p->answer_id, 0};
        send_json(s, chat_proto_user_message(&ref, p->message));
    }
    sb_broker_submit(S.broker, job);
    pmsg_free(p);
}

/* Starts the next waiting message when the connection is free for it. */
static void dispatch_next(sess *s)
{
    sess_x *x = s->x;
    while (x && !x->job_id && x->p_head && !x->out_tokens && !s->close_code && !(s->flags & F_DEAD)) {
        pmsg *p = x->p_head;
        x->p_head = p->next;
        if (!x->p_head) x->p_tail = NULL;
        x->p_len--;
        p->next = NULL;
        if (S.phase) {
            if (p->kind != P_FOLLOW) send_error(s, "The server is shutting down, please reconnect", CHAT_CODE_OVERLOADED);
            pmsg_free(p);
            continue;
        }
        if (p->kind == P_MESSAGE)
            start_job(s, p);
        else
            start_sub(s, p);
    }
}

static void remember_session(sess *s, const char *sid)
{
    if (!sid || !*sid || (s->session_id && !strcmp(s->session_id, sid))) return;
    char *copy = strdup(sid);
    if (!copy) return;
    free(s->session_id);
    s->session_id = copy;
}

/* A cancelled answer whose worker was lost before it could say so still ends the way a cancel does:
 * complete with the partial text the client already has and finish_reason "cancelled", not an error.
 * Returns the replacement (e is freed), or e itself when out of memory. */
static sb_event *cancelled_complete(sess *s, sb_event *e)
{
    sess_x *x = s->x;
    chat_proto_ref ref = {x->job_session[0] ? x->job_session : s->session_id, x->job_answer, x->seq + 1};
    char *json = chat_proto_complete_cancelled_of(&ref, x->answer.data ? x->answer.data : "");
    sb_event *ne = json ? sb_event_new(e->job_id, SB_EV_FRAME, json, strlen(json), ref.session_id) : NULL;
    free(json);
    if (!ne) return e;
    ne->terminal = 1;
    sb_event_free(e);
    return ne;
}

/* True when the connection is not keeping up with its answer: its socket is full (the kernel's send
 * buffer, CHAT_STREAMER_SNDBUF, holds what the reader has not taken), or what it owes passed half its
 * limit. Only then do a connection's waiting tokens merge into one frame: a reader that keeps up gets a
 * frame per piece, however the pieces were batched on their way here, and however late this process got
 * to write them (time is no signal: a busy machine delays the writer, not the reader). */
static bool backed_up(sess *s)
{
    const sess_x *x = s->x;
    return x->out_bytes > (size_t)S.cfg.max_outbound_bytes / 2 || lws_send_pipe_choked(s->wsi);
}

/* Turns e into the token item of the answer's escaped text from at to its end, and queues it. */
static void push_token_item(sess *s, sb_event *e, size_t at)
{
    e->kind = SB_EV_TOKENS;
    e->start = at;
    e->end = s->x->answer_esc.len;
    e->len = 0;
    out_push(s, e);
}

/* A piece of the answer (e, SB_EV_TOKEN): appended to the answer, then its own frame, or merged into the
 * token frame waiting at the tail when the reader is behind. */
static void deliver_token(sess *s, sb_event *e)
{
    sess_x *x = s->x;
    size_t at;
    if (answer_append(x, e->data, e->len, &at)) {
        sb_event_free(e);
        return;
    }
    x->seq = e->seq;
    sb_event *last = x->out_tail;
    if (last && last->kind == SB_EV_TOKENS && last->job_id == e->job_id && backed_up(s)) {
        size_t before = item_bytes(x, last);
        last->end = x->answer_esc.len;
        last->seq = e->seq;
        x->out_bytes += item_bytes(x, last) - before;
        sb_event_free(e);
        if (over_limit(s)) kill_slow_consumer(s);
        return;
    }
    push_token_item(s, e, at);
}

/* The answer so far of a subscription (SB_EV_SNAPSHOT): the client has its first e->start bytes; the
 * rest becomes one token frame (token: what it missed, partial_response: everything so far). */
static void deliver_snapshot(sess *s, sb_event *e)
{
    sess_x *x = s->x;
    size_t at;
    chat_buf_reset(&x->answer);
    chat_buf_reset(&x->answer_esc);
    x->seq = e->seq;
    if ((e->start && answer_append(x, e->data, e->start, &at)) || e->start == e->len ||
        answer_append(x, e->data + e->start, e->len - e->start, &at)) {
        sb_event_free(e);
        return;
    }
    push_token_item(s, e, at);
}

/* A frame, or the end of a subscription that shows nothing more (SB_EV_END). The terminal one ends the
 * answer: the next waiting message may start. */
static void deliver_frame(sess *s, sb_event *e)
{
    sess_x *x = s->x;
    bool terminal = e->terminal;
    uint64_t id = e->job_id;
    if (terminal && x->cancel_sent && e->kind == SB_EV_FRAME && e->error)
        e = cancelled_complete(s, e); /* the worker was lost after the cancel */
    if (terminal) {
        remember_session(s, e->session_id);
        if (x->job_resume && e->error && chat_id_equal(ss_session(s->att) ? ss_session(s->att) : "", x->job_session))
            ss_detach(S.reg, &s->att); /* refused: it follows nothing of it */
        x_uncount(s);
        sm_del(&S.jobs, id);
        x->job_id = 0;
        chat_log_debug("streamer: job %" PRIu64 " answered in %" PRId64 " ms", id, chat_now_ms() - x->job_t0_ms);
    }
    if (e->kind == SB_EV_END)
        sb_event_free(e);
    else
        out_push(s, e);
    if (terminal && !(s->flags & F_DEAD)) dispatch_next(s);
}

static int drain_out(sess *s, struct lws *wsi);
static void deliver_queued(sb_event *e);

/* Writes what deliver_events queued for s at once, from outside a WRITEABLE callback. Asking lws for
 * one instead costs two epoll_ctl calls (writable interest on, then off) and a loop turn per frame, 9 %
 * of the streamer's CPU on paced streams (docs/benchmarks.md). Only the plain case is written here: a
 * connection being closed, owing a ping, in the closing phase or with bytes lws buffered itself (the
 * socket was full) goes through the callback, as does whatever the socket does not take now. */
static void write_now(sess *s)
{
    s->flags &= (uint8_t)~F_TOUCHED;
    if (!s->wsi || !s->x || !s->x->out_head) return;
    if ((s->flags & (F_DEAD | F_PING_DUE)) || s->close_code || S.phase >= 2 || lws_partial_buffered(s->wsi)) {
        lws_callback_on_writable(s->wsi);
        return;
    }
    if (drain_out(s, s->wsi)) {
        kill_conn(s, 0, NULL); /* the write failed: the socket is gone */
        return;
    }
    if (s->x && s->x->out_head) {
        lws_callback_on_writable(s->wsi);
        return;
    }
    dispatch_next(s);
    if (s->close_code)
        lws_callback_on_writable(s->wsi); /* the close frame goes from the callback */
    else
        x_release_if_idle(s);
}

/* Events from the broker, in order; then each connection that got frames writes them. */
static void deliver_events(void)
{
    S.delivering = true;
    deliver_queued(sb_broker_take_events(S.broker));
    S.delivering = false;
    for (size_t i = 0; i < S.n_touched; i++)
        write_now(S.touched[i]);
    S.n_touched = 0;
}

static void deliver_queued(sb_event *e)
{
    while (e) {
        sb_event *next = e->next;
        e->next = NULL;
        sess *s = sm_get(&S.jobs, e->job_id);
        sess_x *x = s ? s->x : NULL;
        if (!x || x->job_id != e->job_id || (s->flags & F_DEAD))
            sb_event_free(e);
        else if (e->kind == SB_EV_TOKEN)
            deliver_token(s, e);
        else if (e->kind == SB_EV_SNAPSHOT)
            deliver_snapshot(s, e);
        else
            deliver_frame(s, e);
        e = next;
    }
}

/* ---------------------------------------------------------------- inbound */

/* Drops the follows waiting on a connection whose user changed: they were the previous user's. */
static void x_drop_follows(sess_x *x)
{
    pmsg **pp = &x->p_head;
    x->p_tail = NULL;
    while (*pp) {
        pmsg *p = *pp;
        if (p->kind == P_FOLLOW) {
            *pp = p->next;
            x->p_len--;
            pmsg_free(p);
        } else {
            x->p_tail = p;
            pp = &p->next;
        }
    }
}

static void handle_auth(sess *s, const char *token)
{
    chat_user u;
    char err[128], detail[256];
    int rc = chat_jwt_verify(S.jwt, token, time(NULL), &u, err, sizeof err, detail, sizeof detail);
    if (rc) {
        chat_log_info("streamer: authentication failed: %s", detail);
        send_refusal(s, true, err[0] ? err : "Invalid token",
                     rc == CHAT_EEXPIRED ? CHAT_CODE_TOKEN_EXPIRED : CHAT_CODE_INVALID_TOKEN);
        return;
    }
    if (s->user && strcmp(s->user, u.id)) {
        chat_log_info("streamer: refused a token for another user on an authenticated connection");
        send_refusal(s, true, "The token is for another user: open a new connection to change users",
                     CHAT_CODE_USER_MISMATCH);
        return;
    }
    size_t a = strlen(u.id), b = strlen(u.email), c = strlen(u.name);
    char *packed = malloc(a + b + c + 3);
    if (!packed) {
        send_refusal(s, true, "Out of memory", CHAT_CODE_PROCESSING_ERROR);
        return;
    }
    memcpy(packed, u.id, a + 1);
    memcpy(packed + a + 1, u.email, b + 1);
    memcpy(packed + a + b + 2, u.name, c + 1);
    if (s->user && strcmp(s->user, u.id)) { /* another user: the old default session is not theirs */
        free(s->session_id);
        s->session_id = NULL;
        ss_detach(S.reg, &s->att);
        if (s->x) x_drop_follows(s->x);
    }
    free(s->user);
    s->user = packed;
    s->token_exp = u.exp;
    /* auth_expiring lead seconds before exp, at once for a shorter token; none for a token past its exp
     * already (accepted within the leeway): the next message after the leeway gets AUTH_REQUIRED. */
    if (S.auth_lead_s > 0 && s->token_exp > (int64_t)time(NULL))
        chat_wheel_add(S.expiring, &s->expiring, s->token_exp - S.auth_lead_s);
    else
        chat_wheel_remove(S.expiring, &s->expiring);
    send_json(s, chat_proto_auth_success(&u));
}

/* A message within its user's limits across the host's streamers (a resume starts no answer: always). */
static bool user_admits(sess *s, bool resume)
{
    chat_ul_verdict v = resume ? CHAT_UL_OK : chat_userlimit_admit(S.limits, user_id(s), (int64_t)time(NULL));
    if (v == CHAT_UL_RATE) send_error(s, "Too many messages, please slow down", CHAT_CODE_RATE_LIMITED);
    if (v == CHAT_UL_ANSWERS)
        send_error(s, "Too many answers in progress, please wait for one to finish", CHAT_CODE_RATE_LIMITED);
    return v == CHAT_UL_OK;
}

/* The checks before a message or a resume is queued: authenticated with a token still valid, not shutting
 * down, within the rate and the queue. False when refused (the error is sent). */
static bool may_queue(sess *s, int64_t now, bool resume)
{
    /* The user stays recorded: messages queued while the token was valid still run under it. New
     * ones are refused until an auth message brings a fresh token (and a new token_exp). */
    if (s->user && (int64_t)time(NULL) - S.cfg.jwt_leeway_s >= s->token_exp) {
        send_error(s, "Token expired, please authenticate again", CHAT_CODE_AUTH_REQUIRED);
        return false;
    }
    if (!s->user) {
        send_error(s, "Authentication required", CHAT_CODE_AUTH_REQUIRED);
        return false;
    }
    if (S.phase) {
        send_error(s, "The server is shutting down, please reconnect", CHAT_CODE_OVERLOADED);
        return false;
    }
    sess_x *x = x_get(s);
    if (!x) {
        send_error(s, "Out of memory", CHAT_CODE_PROCESSING_ERROR);
        return false;
    }
    if (x->p_len >= S.cfg.max_queue_per_conn) {
        send_error(s, "Too many messages waiting for an answer, please slow down", CHAT_CODE_RATE_LIMITED);
        return false;
    }
    return user_admits(s, resume);
}

/* A message or a resume: queued behind the answer in progress (the parsed strings move into it). */
static void handle_request(sess *s, chat_in *in, int64_t now)
{
    if (!may_queue(s, now, in->type == CHAT_IN_RESUME)) return;
    sess_x *x = s->x;
    pmsg *p = calloc(1, sizeof *p);
    if (!p) {
        send_error(s, "Out of memory", CHAT_CODE_PROCESSING_ERROR);
        return;
    }
    if (in->type == CHAT_IN_RESUME) {
        p->kind = P_RESUME;
        p->session_id = in->attach_session, in->attach_session = NULL;
        p->answer_id = in->answer_id, in->answer_id = NULL;
        p->last_seq = in->last_seq;
    } else {
        p->kind = P_MESSAGE;
        p->message = in->message, in->message = NULL;
        p->session_id = in->session_id, in->session_id = NULL;
        p->customer_id = in->customer_id, in->customer_id = NULL;
    }
    p->partial = in->partial;
    x_queue(x, p);
    S.msgs++;
    dispatch_next(s);
}

/* ss_each's: cancels the first answer of the conversation found on another connection of the user. */
typedef struct cancel_ctx {
    const char *session_id;
    bool done;
} cancel_ctx;

static void cancel_followed(void *conn, void *ud)
{
    sess *o = conn;
    cancel_ctx *c = ud;
    if (c->done || !o->x || !o->x->job_id || !chat_id_equal(o->x->job_session, c->session_id)) return;
    o->x->cancel_sent = true;
    sb_broker_cancel(S.broker, o->x->job_id);
    c->done = true;
}

/* cancel: the answer this connection follows; with a session_id, that conversation's answer, followed
 * here or on another connection of the user (the worker stops it for everybody). */
static void handle_cancel(sess *s, const char *session_id)
{
    sess_x *x = s->x;
    bool mine = x && x->job_id && (!session_id || chat_id_equal(x->job_session, session_id));
    if (mine) {
        if (!x->cancel_sent) {
            x->cancel_sent = true;
            sb_broker_cancel(S.broker, x->job_id);
        }
        return;
    }
    if (!session_id || !s->user) return; /* nothing in flight: ignored */
    cancel_ctx c = {session_id, false};
    ss_each(S.reg, user_id(s), session_id, s, cancel_followed, &c);
}

static void handle_text(sess *s, const char *data, size_t len)
{
    int64_t now = chat_now_ms();
    s->last_msg_ms = now;
    dl_touch(s, L_MSG);
    chat_in in;
    memset(&in, 0, sizeof in);
    const char *code = NULL;
    char err[256];
    if (chat_proto_parse(data, len, (size_t)S.cfg.max_message_bytes, &in, &code, err, sizeof err)) {
        bool auth = in.type ? in.type == CHAT_IN_AUTH : frame_is_auth(data, len);
        if (!take_token(s, now))
            send_refusal(s, auth, "Too many messages, please slow down", CHAT_CODE_RATE_LIMITED);
        else
            send_refusal(s, auth, err[0] ? err : "Invalid JSON", code ? code : CHAT_CODE_INVALID_JSON);
        chat_in_clear(&in);
        return;
    }
    switch (in.type) {
    case CHAT_IN_AUTH:
        if (!take_token(s, now))
            send_refusal(s, true, "Too many messages, please slow down", CHAT_CODE_RATE_LIMITED);
        else
            handle_auth(s, in.token);
        break;
    case CHAT_IN_MESSAGE: /* charged before the auth check: unauthenticated ones count too */
    case CHAT_IN_RESUME:
        if (charge(s, false, now)) handle_request(s, &in, now);
        break;
    case CHAT_IN_CANCEL: handle_cancel(s, in.attach_session); break;
    case CHAT_IN_PING:
        if (charge(s, true, now)) send_json(s, chat_proto_pong());
        break;
    case CHAT_IN_NONE: break; /* the parser refuses it */
    }
    chat_in_clear(&in);
}

/* A piece of a text message. Returns -1 to close (the reason is set). */
static int on_receive(sess *s, struct lws *wsi, const char *in, size_t len)
{
    if (lws_frame_is_binary(wsi)) {
        static const char r[] = "binary frames are not supported";
        lws_close_reason(wsi, (enum lws_close_status)ST_CLOSE_UNSUPPORTED, (unsigned char *)r, sizeof r - 1);
        return -1;
    }
    bool first = lws_is_first_fragment(wsi), final = lws_is_final_fragment(wsi);
    size_t remaining = lws_remaining_packet_payload(wsi);
    if (first && final) { /* the common case: parse in place */
        if (len > S.frame_max) {
            send_refusal(s, frame_is_auth(in, len), "Message too long", CHAT_CODE_MESSAGE_TOO_LONG);
            return 0;
        }
        handle_text(s, in, len);
        return 0;
    }
    sess_x *x = x_get(s);
    if (!x) {
        static const char r[] = "out of memory";
        lws_close_reason(wsi, (enum lws_close_status)ST_CLOSE_INTERNAL, (unsigned char *)r, sizeof r - 1);
        return -1;
    }
    if (first) {
        x->rx_active = true;
        x->rx_skip = false;
        memset(&x->rx_scan, 0, sizeof x->rx_scan);
        x->rx_total = 0;
        chat_buf_reset(&x->rx);
    }
    x->rx_total += len;
    if (x->rx_total + remaining > ST_ABSURD_BYTES) {
        static const char r[] = "message too big";
        lws_close_reason(wsi, (enum lws_close_status)ST_CLOSE_TOO_BIG, (unsigned char *)r, sizeof r - 1);
        return -1;
    }
    if (!x->rx_skip && x->rx_total > S.frame_max) {
        x->rx_skip = true;
        chat_proto_scan_feed(&x->rx_scan, x->rx.data, x->rx.len); /* what came before, then each piece */
        chat_buf_free(&x->rx);
    }
    if (x->rx_skip) chat_proto_scan_feed(&x->rx_scan, in, len);
    if (!x->rx_skip && chat_buf_append(&x->rx, in, len)) {
        static const char r[] = "out of memory";
        lws_close_reason(wsi, (enum lws_close_status)ST_CLOSE_INTERNAL, (unsigned char *)r, sizeof r - 1);
        return -1;
    }
    if (!final) return 0;
    x->rx_active = false;
    if (x->rx_skip)
        send_refusal(s, x->rx_scan.auth, "Message too long", CHAT_CODE_MESSAGE_TOO_LONG);
    else
        handle_text(s, x->rx.data ? x->rx.data : "", x->rx.len);
    chat_buf_free(&x->rx);
    x_release_if_idle(s);
    return 0;
}

/* ---------------------------------------------------------------- connection lifecycle */

/* Bytes arrived from the client (streamer_rx.c, inside lws's read, before lws parses them): the
 * keepalive's sign of life. Pongs count whatever their payload; lws reports only non-empty ones.
 * An unmasked frame (RFC 6455 section 5.1) closes the connection with 1002: being dead from here on,
 * the connection ignores the frames lws parses from these bytes. */
static void on_wire_read(void *ud, bool unmasked)
{
    sess *s = ud;
    if (!s->wsi || (s->flags & F_DEAD)) return;
    s->last_rx_ms = chat_now_ms();
    s->flags &= (uint8_t)~F_PINGED;
    dl_touch(s, L_RX);
    if (unmasked) {
        chat_log_info("streamer: closing a connection that sent an unmasked frame");
        kill_conn(s, ST_CLOSE_PROTOCOL, "unmasked frame");
    }
}

static void on_established(sess *s, struct lws *wsi)
{
    memset(s, 0, sizeof *s);
    s->wsi = wsi;
    int64_t now = chat_now_ms();
    s->last_rx_ms = s->last_msg_ms = now;
    dl_append(s, L_RX);
    dl_append(s, L_MSG);
    s->flags |= F_LISTED;
    S.conns++;
    chat_metric_gauge_add(CHAT_METRIC_WS_CONNECTIONS, 0, 1);
    srx_attach(&s->wire, lws_get_socket_fd(wsi), s);
    if (S.sndbuf > 0) {
        int fd = lws_get_socket_fd(wsi);
        if (fd >= 0) setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &S.sndbuf, sizeof S.sndbuf);
    }
    /* ?token=... : the headers are still attached during ESTABLISHED. A bad token still opens the socket
     * (the client may retry with an auth message). */
    char buf[8192];
    const char *tok = lws_get_urlarg_by_name(wsi, "token=", buf, sizeof buf);
    if (tok) {
        s->bucket_ms = now, s->bucket = ST_BURST; /* the query token does not cost the client a message */
        handle_auth(s, tok);
    }
    s->opened_ms = now;
    if (!s->user) { /* the auth deadline runs (sweep_auth) */
        dl_append(s, L_AUTH);
        s->flags |= F_AUTH_WAIT;
    }
}

static void on_closed(sess *s)
{
    if (!s->wsi) return; /* never established */
    srx_detach(&s->wire);
    if (s->flags & F_LISTED) {
        dl_remove(s, L_RX);
        dl_remove(s, L_MSG);
    }
    if (s->flags & F_AUTH_WAIT) dl_remove(s, L_AUTH);
    S.conns--;
    chat_metric_gauge_add(CHAT_METRIC_WS_CONNECTIONS, 0, -1);
    chat_wheel_remove(S.expiring, &s->expiring);
    abandon_job(s);
    ss_detach(S.reg, &s->att);
    if (s->x) {
        x_drop_out(s->x);
        x_drop_pending(s->x);
        chat_buf_free(&s->x->rx);
        chat_buf_free(&s->x->answer);
        chat_buf_free(&s->x->answer_esc);
        free(s->x);
    }
    free(s->user);
    free(s->session_id);
    memset(s, 0, sizeof *s);
}

static void close_now(sess *s, struct lws *wsi)
{
    const char *r = s->close_reason ? s->close_reason : "";
    lws_close_reason(wsi, (enum lws_close_status)s->close_code, (unsigned char *)r, strlen(r));
}

/* Writes queued items while the socket takes them (at most ST_MAX_WRITES_PER_CALLBACK). 0, or -1 when a
 * write failed (the connection is to be dropped). */
static int drain_out(sess *s, struct lws *wsi)
{
    sess_x *x = s->x;
    int n = 0;
    while (x && x->out_head && n < ST_MAX_WRITES_PER_CALLBACK) {
        if (n > 0 && lws_send_pipe_choked(wsi)) break;
        sb_event *e = x->out_head;
        x->out_head = e->next;
        x->head_since_ms = chat_now_ms();
        if (!x->out_head) {
            x->out_tail = NULL;
            outq_unlink(x);
        }
        x->out_bytes -= item_bytes(x, e);
        if (e->kind == SB_EV_TOKENS) x->out_tokens--;
        int rc = write_item(s, e);
        sb_event_free(e);
        if (rc) return -1;
        n++;
        if (lws_partial_buffered(wsi)) break;
    }
    return 0;
}

static int on_writeable(sess *s, struct lws *wsi)
{
    if (s->flags & F_DEAD) { /* killed: only the close frame is left to send */
        if (!s->close_code) return 0;
        close_now(s, wsi);
        return -1;
    }
    if (S.phase >= 2 && !s->close_code) { /* closing phase: end whatever is left, then 1001 */
        abandon_job(s);
        request_close(s, ST_CLOSE_GOING_AWAY, "server shutting down");
    }
    if (s->flags & F_PING_DUE) {
        s->flags &= (uint8_t)~F_PING_DUE;
        if (tx_reserve(0) == 0 && lws_write(wsi, S.tx + LWS_PRE, 0, LWS_WRITE_PING) < 0) return -1;
    }
    if (drain_out(s, wsi)) return -1;
    if (s->x && s->x->out_head) {
        lws_callback_on_writable(wsi);
        return 0;
    }
    dispatch_next(s);
    if (s->close_code && (!s->x || !s->x->out_head)) {
        close_now(s, wsi);
        return -1;
    }
    x_release_if_idle(s);
    return 0;
}

/* ---------------------------------------------------------------- HTTP: /status, refusals */

static int http_reply(struct lws *wsi, int status, const char *ctype, const char *body, size_t len)
{
    size_t cap = LWS_PRE + 1024 + len;
    unsigned char *buf = malloc(cap);
    if (!buf) return -1;
    unsigned char *start = buf + LWS_PRE, *p = start, *end = buf + cap - 1;
    int rc = -1;
    if (lws_add_http_common_headers(wsi, (unsigned int)status, ctype, (lws_filepos_t)len, &p, end)) goto out;
    if (lws_add_http_header_by_token(wsi, WSI_TOKEN_HTTP_CACHE_CONTROL, (const unsigned char *)"no-store", 8, &p, end))
        goto out;
    if (lws_finalize_write_http_header(wsi, start, &p, end)) goto out;
    memcpy(start, body, len);
    if (lws_write(wsi, start, len, LWS_WRITE_HTTP_FINAL) != (int)len) goto out;
    rc = lws_http_transaction_completed(wsi) ? -1 : 0;
out:
    free(buf);
    return rc;
}

static int serve_http(struct lws *wsi, const char *uri)
{
    if (!lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI)) {
        lws_return_http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED, NULL);
        return -1; /* do not try to read a request body */
    }
    if (!strcmp(uri, "/status")) {
        sb_stats st;
        sb_broker_stats(S.broker, &st);
        char body[16384];
        size_t n = (size_t)snprintf(body, sizeof body,
                                    "{\"connections\":%d,\"workers_live\":%d,\"workers_busy\":%d,\"jobs_queued\":%d,"
                                    "\"jobs_running\":%d,\"jobs_done\":%llu,\"jobs_failed\":%llu,\"workers_refused\":%llu,"
                                    "\"worker_handshakes_failed\":%llu,\"shutting_down\":%s",
                                    S.conns, st.workers_live, st.workers_busy, st.jobs_queued, st.jobs_running,
                                    st.jobs_done, st.jobs_failed, st.curve.refused, st.curve.handshakes_failed,
                                    S.phase ? "true" : "false");
        n = sb_broker_workers_json(S.broker, body, n, sizeof body - 2);
        body[n++] = '}';
        body[n] = '\0';
        return http_reply(wsi, 200, "application/json", body, n);
    }
    if (!strcmp(uri, "/metrics")) { /* this process's own figures; the front door's /metrics sums all */
        chat_buf b;
        chat_buf_init(&b);
        int rc = chat_metrics_render(NULL, &b) ? -1
                                               : http_reply(wsi, 200, "text/plain; version=0.0.4; charset=utf-8",
                                                            b.data ? b.data : "", b.len);
        chat_buf_free(&b);
        return rc;
    }
    if (!strcmp(uri, "/ws/chat") || !strcmp(uri, "/ws/chat/")) {
        static const char msg[] = "WebSocket endpoint: connect with an Upgrade: websocket request\n";
        return http_reply(wsi, 426, "text/plain", msg, sizeof msg - 1);
    }
    char *nf = chat_proto_rest_error(chat_proto_code_message(CHAT_PROTO_NOT_FOUND), CHAT_CODE(NOT_FOUND));
    int rc = nf ? http_reply(wsi, 404, "application/json", nf, strlen(nf)) : -1;
    free(nf);
    return rc;
}

/* A request header into buf; "" when absent, false when too long for buf. */
static bool header_copy(struct lws *wsi, enum lws_token_indexes h, char *buf, int len)
{
    buf[0] = '\0';
    int n = lws_hdr_total_length(wsi, h);
    return n <= 0 || (n < len && lws_hdr_copy(wsi, buf, len, h) >= 0);
}

/* The page's own origin, the ones in CHAT_ALLOWED_ORIGINS and clients sending no Origin (chat_origin.h). */
static bool origin_allowed(struct lws *wsi)
{
    char origin[512], host[512];
    if (!header_copy(wsi, WSI_TOKEN_ORIGIN, origin, sizeof origin) ||
        !header_copy(wsi, WSI_TOKEN_HOST, host, sizeof host))
        return false;
    return chat_origin_allowed(origin, host[0] ? host : NULL, S.cfg.allowed_origins);
}

/* Before the 101: only /ws/chat upgrades, only from allowed origins, not once connections are being
 * closed (a drain's grace period serves the connections its listeners had queued). */
static int confirm_upgrade(struct lws *wsi, const char *up)
{
    if (!up || strcasecmp(up, "websocket")) return -1;
    char uri[256];
    int n = lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI);
    if (n <= 0 || (strcmp(uri, "/ws/chat") && strcmp(uri, "/ws/chat/"))) {
        lws_return_http_status(wsi, HTTP_STATUS_NOT_FOUND, NULL);
        return 1;
    }
    if (S.phase >= 2) {
        lws_return_http_status(wsi, HTTP_STATUS_SERVICE_UNAVAILABLE, NULL);
        return 1;
    }
    if (!origin_allowed(wsi)) {
        chat_log_info("streamer: refused a WebSocket from a disallowed Origin");
        lws_return_http_status(wsi, HTTP_STATUS_FORBIDDEN, NULL);
        return 1;
    }
    return 0;
}

/* ---------------------------------------------------------------- the protocol callback */

static int callback_chat(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    sess *s = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: return confirm_upgrade(wsi, in);
    case LWS_CALLBACK_HTTP: return serve_http(wsi, in ? in : "");
    case LWS_CALLBACK_ESTABLISHED: on_established(s, wsi); return 0;
    case LWS_CALLBACK_RECEIVE:
        if (!s || !s->wsi || s->close_code || (s->flags & F_DEAD)) return 0;
        return on_receive(s, wsi, in, len); /* activity was noted by on_wire_read */
    case LWS_CALLBACK_SERVER_WRITEABLE:
        if (!s || !s->wsi) return 0;
        return on_writeable(s, wsi);
    case LWS_CALLBACK_CLOSED:
        if (s) on_closed(s);
        return 0;
    default: return 0;
    }
}

static void broker_run(void);

/* The broker's descriptor: readable means ZeroMQ's state changed (messages may wait). */
static int callback_broker(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)wsi, (void)user, (void)in, (void)len;
    switch (reason) {
    case LWS_CALLBACK_RAW_RX_FILE: broker_run(); return 0;
    case LWS_CALLBACK_RAW_CLOSE_FILE: S.broker_wsi = NULL; return 0;
    default: return 0;
    }
}

static const struct lws_protocols PROTOCOLS[] = {
    {.name = "chat", .callback = callback_chat, .per_session_data_size = sizeof(sess)},
    {.name = "chat-broker", .callback = callback_broker},
    {.name = NULL},
};
static struct lws_protocols protocols[3];

/* ---------------------------------------------------------------- periodic work */

/* Connections still unauthenticated auth_timeout_s after they opened are closed (1008). The list is in
 * opening order; one that authenticated meanwhile just leaves it. */
static void sweep_auth(int64_t now)
{
    int64_t auth_ms = (int64_t)S.auth_timeout_s * 1000;
    for (sess *s = S.lists[L_AUTH].head, *next; s && now - s->opened_ms >= auth_ms; s = next) {
        next = s->next[L_AUTH];
        dl_remove(s, L_AUTH);
        s->flags &= (uint8_t)~F_AUTH_WAIT;
        if (s->user || (s->flags & F_DEAD)) continue;
        chat_log_info("streamer: closing a connection not authenticated within %d s", S.auth_timeout_s);
        request_close(s, ST_CLOSE_POLICY, "authentication timeout");
    }
}

static void sweep(int64_t now)
{
    int64_t ping_ms = (int64_t)S.cfg.ping_interval_s * 1000;
    int64_t dead_ms = (int64_t)S.ping_timeout_s * 1000;
    int64_t idle_ms = (int64_t)S.cfg.idle_timeout_s * 1000;
    for (sess *s = S.lists[L_RX].head, *next; s && now - s->last_rx_ms >= ping_ms; s = next) {
        next = s->next[L_RX];
        if (s->flags & F_DEAD) continue;
        if (now - s->last_rx_ms >= dead_ms) {
            chat_log_info("streamer: dropping a connection silent for %" PRId64 " s", (now - s->last_rx_ms) / 1000);
            kill_conn(s, 0, NULL);
        } else if (!(s->flags & F_PINGED)) {
            s->flags |= F_PINGED | F_PING_DUE;
            lws_callback_on_writable(s->wsi);
        }
    }
    for (sess *s = S.lists[L_MSG].head, *next; s && now - s->last_msg_ms >= idle_ms; s = next) {
        next = s->next[L_MSG];
        s->last_msg_ms = now; /* revisit after another full period */
        dl_touch(s, L_MSG);
        if (s->flags & F_DEAD) continue;
        sess_x *x = s->x;
        if (x && (x->job_id || x->p_head || x->out_head || x->rx_active)) continue; /* busy is not idle */
        if (s->close_code) { /* asked to close a period ago and still here */
            kill_conn(s, 0, NULL);
            continue;
        }
        request_close(s, ST_CLOSE_NORMAL, "idle timeout");
    }
    sweep_auth(now);
    /* A reader that takes nothing for stall_ms holds memory and a job for nobody. */
    for (sess_x *x = S.outq_head, *next; x; x = next) {
        next = x->onext;
        if (now - x->head_since_ms >= S.stall_ms && !(x->owner->flags & F_DEAD)) {
            chat_log_warn("streamer: a client read nothing for %" PRId64 " ms", now - x->head_since_ms);
            kill_slow_consumer(x->owner);
        }
    }
}

/* Tells the connections whose token expires within the lead (O(due) per second, chat_wheel.h). */
static void on_token_expiring(chat_wheel_node *node, void *ud)
{
    sess *s = (sess *)(void *)((char *)node - offsetof(sess, expiring));
    int64_t left = s->token_exp - *(const int64_t *)ud;
    if (!s->wsi || !s->user || s->close_code || (s->flags & F_DEAD) || left <= 0) return;
    send_json(s, chat_proto_auth_expiring(left));
}

static void warn_expiring_tokens(void)
{
    int64_t now_s = (int64_t)time(NULL); /* exp is wall-clock time */
    chat_wheel_expire(S.expiring, now_s, on_token_expiring, &now_s);
}

static void status_line(int64_t now)
{
    sb_stats st;
    sb_broker_stats(S.broker, &st);
    unsigned long long jobs = st.jobs_done + st.jobs_failed;
    double secs = (double)(now - S.last_status_ms) / 1000.0;
    chat_log_info("/ws/chat: %d connections, %.2f messages/s, %.2f jobs/s, workers %d live %d busy, %d queued, "
                  "jobs failed %llu, refused: auth_required %llu rate_limited %llu overloaded %llu",
                  S.conns, secs > 0 ? (double)(S.msgs - S.msgs_at_status) / secs : 0.0,
                  secs > 0 ? (double)(jobs - S.jobs_at_status) / secs : 0.0, st.workers_live, st.workers_busy,
                  st.jobs_queued, st.jobs_failed, S.errors[CHAT_PROTO_AUTH_REQUIRED], S.errors[CHAT_PROTO_RATE_LIMITED],
                  S.errors[CHAT_PROTO_OVERLOADED]);
    S.msgs_at_status = S.msgs;
    S.jobs_at_status = jobs;
    S.last_status_ms = now;
}

static void begin_drain(int64_t now)
{
    S.phase = 1;
    S.grace_deadline_ms = now + (int64_t)S.cfg.shutdown_grace_s * 1000;
    int queued = sl_close_listeners(S.ls, S.nls);
    /* Connections taken from the listeners' queues are still in their handshake: without answers in
     * flight the drain would end at once and refuse them (503). Served for a moment, they open, and are
     * closed with 1001 like the others (a client reconnects, to another streamer). */
    S.drain_min_ms = queued ? now + ST_QUEUED_SERVE_MS : now;
    chat_log_info("streamer: shutting down: listeners closed (%d queued connections taken), %d connections, "
                  "%zu answers in flight, grace %d s",
                  queued, S.conns, S.jobs.n, S.cfg.shutdown_grace_s);
}

static void begin_close(int64_t now)
{
    S.phase = 2;
    S.close_deadline_ms = now + ST_CLOSE_WAIT_MS;
    if (S.jobs.n) chat_log_warn("streamer: grace period over with %zu answers in flight", S.jobs.n);
    lws_callback_on_writable_all_protocol(S.ctx, &protocols[0]);
}

static void shutdown_progress(int64_t now)
{
    if (S.stop_requested && S.phase == 0) begin_drain(now);
    if (S.phase == 1 && ((S.jobs.n == 0 && now >= S.drain_min_ms) || now >= S.grace_deadline_ms)) begin_close(now);
    if (S.phase == 2 && (S.conns == 0 || now >= S.close_deadline_ms)) S.phase = 3;
}

static void tick_cb(lws_sorted_usec_list_t *sul)
{
    int64_t now = chat_now_ms();
    shutdown_progress(now);
    if (now - S.last_sweep_ms >= 1000) {
        S.last_sweep_ms = now;
        sweep(now);
    }
    if (now - S.last_status_ms >= 60000) status_line(now);
    warn_expiring_tokens();
    if (S.phase < 3)
        lws_sul_schedule(S.ctx, 0, sul, tick_cb, (S.phase ? 50 : 250) * LWS_US_PER_MS);
    else if (S.evlib)
        pthread_kill(pthread_self(), SIGINT); /* breaks the libev loop (lws's SIGINT watcher) */
    else
        lws_cancel_service(S.ctx); /* wakes the poll so that st_run sees the end */
}

/* ---------------------------------------------------------------- set-up and the loop */

/* ---------------------------------------------------------------- the broker on this loop */

static void broker_sul_cb(lws_sorted_usec_list_t *sul)
{
    (void)sul;
    broker_run();
}

/* Runs the broker until nothing waits, then schedules its next run for when its timers are due (the
 * descriptor may wake it before). A run that leaves work waiting (a full turn of messages, commands
 * queued by its deliveries) is run again here, up to BROKER_RUNS_MAX times, not through a sul due at
 * once: under the libev loop such a sul was served only when lws next set its timer, as late as the
 * 250 ms tick, and the tokens behind it waited (make bench's paced step at 400 streams: inter-token gap
 * p99 135 ms and first token p99 82 ms; run here, 25 and 12 ms: docs/benchmarks.md). */
#define BROKER_RUNS_MAX 64
static void broker_run(void)
{
    long ms = 0;
    for (int i = 0; i < BROKER_RUNS_MAX && ms == 0; i++)
        ms = sb_broker_run(S.broker);
    if (ms < 0 || !S.ctx) return;
    lws_sul_schedule(S.ctx, 0, &S.broker_sul, broker_sul_cb, ms ? ms * LWS_US_PER_MS : 1);
}

static void broker_events(void *ud)
{
    (void)ud;
    deliver_events();
}

static void broker_kick(void *ud)
{
    (void)ud;
    if (S.ctx) lws_sul_schedule(S.ctx, 0, &S.broker_sul, broker_sul_cb, 1);
}

/* Adopts a dup of the broker's ZeroMQ descriptor into the loop (lws closes what it adopted when the
 * context goes; ZeroMQ's own descriptor must stay open until its socket closes). */
static int broker_attach(char *err, size_t errlen)
{
    int fd = sb_broker_fd(S.broker);
    int mine = fd >= 0 ? fcntl(fd, F_DUPFD_CLOEXEC, 0) : -1;
    if (mine < 0) return chat_fail(err, errlen, CHAT_ERR, "broker: no ZeroMQ descriptor to watch");
    lws_sock_file_fd_type u;
    u.filefd = mine;
    S.broker_wsi = lws_adopt_descriptor_vhost(lws_get_vhost_by_name(S.ctx, "chat-streamer"), LWS_ADOPT_RAW_FILE_DESC,
                                              u, "chat-broker", NULL);
    if (!S.broker_wsi) {
        close(mine);
        return chat_fail(err, errlen, CHAT_ERR, "broker: the event loop cannot watch its descriptor");
    }
    broker_run(); /* whatever is waiting already, and the first timers */
    return 0;
}

static void lws_log_emit(int level, const char *line)
{
    size_t n = strlen(line);
    while (n && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    chat_log(level == LLL_ERR ? CHAT_LOG_ERROR : CHAT_LOG_WARN, "lws: %.*s", (int)n, line);
}

/* The per-user limits' table: CHAT_USERLIMIT_FILE, by default streamer.userlimit in the metrics
 * directory (the host's run directory; its reader lists only *.metrics), else private to this process. */
static int open_limits(const chat_config *cfg, char *err, size_t errlen)
{
    char path[4096] = "";
    const char *env = getenv("CHAT_USERLIMIT_FILE");
    if (env)
        snprintf(path, sizeof path, "%s", env);
    else if (cfg->metrics_dir[0])
        snprintf(path, sizeof path, "%s/streamer.userlimit", cfg->metrics_dir);
    /* On by default: one user's script or stuck client should not take every worker slot of the host. */
    int answers = chat_config_env_int("CHAT_USER_MAX_ANSWERS", 4, 0, 1000000);
    int rate = chat_config_env_int("CHAT_USER_RATE_PER_MIN", 120, 0, 1000000);
    S.limits = chat_userlimit_new(path, answers, rate, err, errlen);
    if (!S.limits) return CHAT_ERR;
    chat_log_info("streamer: per-user limits %d answers, %d messages a minute (%s)", answers, rate,
                  path[0] ? path : "this process only");
    return 0;
}

int st_init(const chat_config *cfg, char *err, size_t errlen)
{
    memset(&S, 0, sizeof S);
    S.cfg = *cfg;
    sm_init(&S.jobs);
    size_t mm = (size_t)cfg->max_message_bytes * 6 + 4096; /* worst-case JSON escaping of the text */
    S.frame_max = mm < 65536 ? 65536 : mm;
    if (S.frame_max >= ST_ABSURD_BYTES) S.frame_max = ST_ABSURD_BYTES - 1;
    S.sndbuf = chat_config_env_int("CHAT_STREAMER_SNDBUF", 65536, 0, 64 << 20);
    S.rx_buffer = chat_config_env_int("CHAT_STREAMER_RX_BUFFER", 512, 128, 1 << 20);
    S.stall_ms = chat_config_env_int("CHAT_STREAMER_WRITE_STALL_MS", 30000, 100, 3600000);
    S.auth_lead_s = chat_config_env_int("CHAT_AUTH_REFRESH_LEAD_S", 30, 0, 86400);
    S.expiring = chat_wheel_new(1024, (int64_t)time(NULL)); /* 17 minutes a turn */
    if (!S.expiring) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    bool any_origin;
    if (chat_origin_list_check(cfg->allowed_origins, &any_origin, err, errlen)) return CHAT_EINVAL;
    if (any_origin)
        chat_log_warn("streamer: CHAT_ALLOWED_ORIGINS contains \"*\": any web page may open WebSockets with its "
                      "visitors' tokens");
    S.ping_timeout_s = chat_config_env_int("CHAT_STREAMER_PING_TIMEOUT_S", 2 * cfg->ping_interval_s + 10,
                                           cfg->ping_interval_s + 1, 86400);
    S.head_timeout_s = chat_config_env_int("CHAT_STREAMER_HEADER_TIMEOUT_S", 10, 1, 3600);
    S.auth_timeout_s = chat_config_env_int("CHAT_STREAMER_AUTH_TIMEOUT_S", 10, 1, 3600);
    if (srx_init(on_wire_read, err, errlen)) return CHAT_ERR; /* before any other thread exists */
    S.jwt = chat_jwt_verifier_new(cfg, err, errlen);
    if (!S.jwt) return CHAT_EINVAL;
    S.reg = ss_new();
    if (!S.reg) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    sb_loop loop = {.events = broker_events, .kick = broker_kick, .ud = NULL};
    S.broker = sb_broker_new(cfg, &loop, err, errlen);
    if (!S.broker) return CHAT_ERR;
    return open_limits(cfg, err, errlen);
}

void st_request_shutdown(void)
{
    S.stop_requested = 1;
}

int st_run(const sigset_t *unblock)
{
    char err[256];
    S.nls = sl_parse(S.cfg.streamer_listen, S.ls, SL_MAX_LISTENERS);
    if (S.nls < 0) {
        chat_log_error("CHAT_STREAMER_LISTEN must be up to %d of host:port or unix:/path, comma-separated",
                       SL_MAX_LISTENERS);
        return 1;
    }
    /* CHAT_LWS_DEBUG=<lws log bitmask>, e.g. 15 for err|warn|notice|info: lws's own logs, for debugging. */
    const char *lws_debug = getenv("CHAT_LWS_DEBUG");
    lws_set_log_level(lws_debug && atoi(lws_debug) > 0 ? atoi(lws_debug) : LLL_ERR, lws_log_emit);

    protocols[0] = PROTOCOLS[0];
    protocols[0].rx_buffer_size = (size_t)S.rx_buffer;
    protocols[0].tx_packet_size = 0;
    protocols[1] = PROTOCOLS[1];
    protocols[2] = PROTOCOLS[2];
    /* secs_since_valid_hangup 0 disables lws's per-connection validity timers (see the file comment). */
    static const lws_retry_bo_t no_validity = {.secs_since_valid_ping = 0, .secs_since_valid_hangup = 0};

    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.protocols = protocols;
    info.extensions = NULL; /* no permessage-deflate */
    info.count_threads = 1;
    info.pt_serv_buf_size = 16384;
    info.max_http_header_data = 8192; /* room for a long ?token= */
    /* Slowloris: lws gives each accepted connection a header table at once and closes the connection
     * when its request head is not complete timeout_secs_ah_idle later (the hold is not re-armed by
     * each byte, so a client dripping its head is closed however slowly it drips). timeout_secs bounds
     * lws's other short waits the same way: for a header table when all are taken, the close
     * handshake, a request body. */
    info.timeout_secs = (unsigned int)S.head_timeout_s;
    info.timeout_secs_ah_idle = (unsigned int)S.head_timeout_s;
    info.gid = -1, info.uid = -1;
    info.retry_and_idle_policy = &no_validity;
    info.vhost_name = "chat-streamer";
    info.server_string = "chat-streamer";
    /* The context first, then a vhost per listener (sl_create_vhosts), all served by the one loop. */
    info.options = LWS_SERVER_OPTION_VALIDATE_UTF8 | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND |
                   LWS_SERVER_OPTION_EXPLICIT_VHOSTS;

    /* libev (epoll) by default: poll() costs O(connections) per wake-up, which with tens of thousands of
     * connections makes every event, and a connection storm quadratically, expensive. */
    const char *loop = getenv("CHAT_STREAMER_EVENT_LOOP");
    S.evlib = !loop || !*loop || !strcmp(loop, "libev");
    if (S.evlib) info.options |= LWS_SERVER_OPTION_LIBEV;
    S.ctx = lws_create_context(&info);
    if (!S.ctx && S.evlib) {
        chat_log_warn("streamer: the libev event loop is unavailable (libwebsockets-evlib-ev), using poll()");
        S.evlib = false;
        info.options &= ~(uint64_t)LWS_SERVER_OPTION_LIBEV;
        S.ctx = lws_create_context(&info);
    }
    if (!S.ctx) {
        chat_log_error("streamer: cannot create the lws context");
        return 1;
    }
    if (sl_create_vhosts(S.ctx, &info, S.ls, S.nls)) return 1;
    if (broker_attach(err, sizeof err)) {
        chat_log_error("%s", err);
        return 1;
    }
    if (unblock) pthread_sigmask(SIG_UNBLOCK, unblock, NULL);
    int64_t now = chat_now_ms();
    S.last_sweep_ms = S.last_status_ms = now;
    lws_sul_schedule(S.ctx, 0, &S.tick, tick_cb, 250 * LWS_US_PER_MS);
    chat_log_info("streamer: listening on %s, workers at %s", S.cfg.streamer_listen, S.cfg.zmq_endpoint);

    /* With poll(), lws_service returns after each wake-up (a signal interrupts the poll). With libev it runs
     * the loop until lws's SIGINT watcher breaks it: a real SIGINT (start a shutdown) or the tick's own,
     * raised once the shutdown is complete. */
    while (S.phase < 3) {
        if (S.stop_requested && S.phase == 0) begin_drain(chat_now_ms());
        int n = lws_service(S.ctx, 0);
        if (S.evlib && S.phase < 3)
            st_request_shutdown();
        else if (n < 0)
            break;
    }
    chat_log_info("streamer: stopped (%d connections left)", S.conns);
    return 0;
}

void st_cleanup(void)
{
    sb_broker_stop(S.broker); /* the CLOSED callbacks below only queue their detaches */
    if (S.ctx) {
        lws_sul_cancel(&S.tick);
        lws_sul_cancel(&S.broker_sul);
        lws_context_destroy(S.ctx); /* closes what is left; CLOSED callbacks cancel their jobs */
        S.ctx = NULL;
    }
    sb_broker_free(S.broker);
    S.broker = NULL;
    srx_free();
    chat_jwt_verifier_free(S.jwt);
    S.jwt = NULL;
    ss_free(S.reg);
    S.reg = NULL;
    chat_userlimit_free(S.limits);
    S.limits = NULL;
    sm_free(&S.jobs);
    chat_wheel_free(S.expiring);
    S.expiring = NULL;
    free(S.tx);
    free(S.touched);
    S.tx = NULL;
}
