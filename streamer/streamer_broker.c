/* The broker: ZeroMQ ROUTER <-> chat-worker DEALERs, the zguide load-balancing broker with
 * Paranoid Pirate heartbeats (see chat_wire.h for the wire protocol).
 *
 * Design choices:
 * - Served on the streamer's own event loop, not on a thread of its own: the loop watches ZMQ_FD and
 *   calls sb_broker_run, which also runs the timers (heartbeats, queue deadlines) when they are due. A
 *   broker thread handed every batch of events over through a mutex-protected list and woke the loop
 *   with lws_cancel_service(), and was woken back through an eventfd for every command: on paced
 *   streams that thread was 30 % of the streamer's CPU, most of it going to sleep and being woken
 *   (docs/benchmarks.md). ZMQ_FD only says "the socket's state may have changed" (it is edge-like), so
 *   every run ends by asking ZMQ_EVENTS, which also consumes the signal, and a run that leaves messages
 *   waiting returns 0: the loop's side runs it again at once (streamer_ws.c, broker_run). Every use of
 *   the ROUTER happens inside sb_broker_run.
 * - A worker is one process with one DEALER and several slots (its READY says how many). Jobs go only to
 *   live workers with a free slot, the least loaded first. A job waits in one bounded FIFO with a
 *   deadline when all are busy; with no live worker at all it fails at once (OVERLOADED), never hangs.
 * - Except while the broker is new (CHAT_STREAMER_START_WAIT_MS, 3 s: more than a worker takes to find
 *   a restarted streamer, CHAT_WIRE_DEAD_MS plus its reconnect interval): a streamer restarted under
 *   running workers would otherwise refuse every message until they are back, and answer a resume from
 *   the workers back so far, missing an answer held by one still reconnecting. In that window a message
 *   waits in the queue for a worker; a subscription that finds no answer in flight (or no worker yet)
 *   settles only when the window ends, after asking the workers that came back meanwhile.
 * - A worker silent for CHAT_WIRE_DEAD_MS is dead. Its job is retried once on another worker if no token
 *   reached the client yet, otherwise the client gets PROCESSING_ERROR. Progress steps already sent are
 *   not repeated by the retry, and the pipeline's own "starting" is dropped (the streamer sent it).
 * - Client-facing JSON (progress, complete, error) is built here, off the event loop; tokens travel raw
 *   so the connection can coalesce them when its client reads slowly.
 * - ROUTER_MANDATORY turns a send to a vanished worker into EHOSTUNREACH instead of a silent drop.
 * - Subscriptions (sb_sub_new) follow an answer wherever it is generated: its state lives in the worker
 *   that generates it (chat_wire.h, ATTACH), so that it survives the streamer. One aimed at a job of
 *   this broker asks that job's worker (after the JOB, or once a queued job is dispatched); otherwise
 *   every worker is asked, and one of them checks the owner in the database for a resume. An answer in
 *   flight settles it at once (the others are DETACHed); else, once every worker asked has answered (or
 *   is gone), the youngest completed answer, or nothing, or SESSION_FORBIDDEN. Its events then come
 *   under its own id, like a job's; a subscription takes no slot.
 * - A client that leaves DETACHes its job: the answer goes on (the workers' CHAT_ORPHAN_POLICY). Token
 *   events carry their piece's number (seq), progress and complete their answer's ids.
 * - Workers on other hosts: CurveZMQ, set up by chat_curve_server before the bind (chat_curve.h).
 *
 * Settings beyond chat_config (streamer-only, read here): CHAT_STREAMER_QUEUE_MAX (jobs waiting for a
 * worker, default 1024), CHAT_STREAMER_QUEUE_WAIT_MS (how long one may wait, default 5000) and
 * CHAT_STREAMER_START_WAIT_MS (the new broker's window above, default 3000; 0: none). */
#include "streamer_broker.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_config.h"
#include "chat_curve.h"
#include "chat_list.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "streamer_map.h"

#define SB_MAX_MSGS_PER_TURN 512 /* ROUTER messages handled before timers get a look-in */
#define SB_MAX_WORKERS 4096
#define SB_MAX_ATTEMPTS 2

/* What a subscription (sb_sub_new) needs beyond a job: what it asked, whom, and the best answer heard. */
typedef struct sb_sub {
    chat_wire_attach att; /* strings in this allocation; att.job_id is the job's id */
    uint64_t target;      /* a local job it follows, 0: none */
    bool resume;          /* a client's resume: "resumed" first, SESSION_FORBIDDEN for a session the user lacks */
    bool decided;         /* settled: following a worker's answer, or over */
    bool unknown;         /* the database check found no such session of the user */
    bool cancel_wanted;   /* cancelled before it was settled */
    struct sb_job *parked_on; /* waiting for this queued job to reach a worker */
    struct sb_job *parked_next;
    uint64_t *asked;      /* ids of the workers whose ATTACHED is awaited */
    uint64_t asked_upto;  /* every worker of an id up to this one was asked (ids grow) */
    size_t n_asked, cap_asked;
    char *answer_id;      /* of the answer followed (owned), once settled */
    /* The youngest FINISHED heard so far, kept until every worker asked has answered. */
    bool held;
    uint64_t held_seq, held_cursor, held_age, held_from;
    char *held_answer, *held_text, *held_complete; /* owned; the complete frame is built already */
    size_t held_len;
} sb_sub;

struct sb_job {
    sb_job *next;  /* command list, then the waiting queue */
    sb_job *wnext, *wprev; /* the running jobs (or followed subscriptions) of its worker: O(1) removal */
    uint64_t id;
    int attempts;
    bool tokens_sent;
    bool cancelled;
    bool gone; /* the client left: deliver nothing */
    uint8_t steps_sent; /* progress steps sent, bit 1 << chat_proto_step: a retry does not repeat them */
    uint64_t seq;       /* the answer's pieces delivered (tokens carry their number) */
    int64_t submitted_ms;
    int64_t deadline_ms; /* while queued */
    struct sb_worker *worker;
    chat_wire_job *spec; /* a JOB (owned): what a worker is sent (spec->job_id == id); NULL for a sub */
    sb_sub *sub;         /* a subscription; NULL for a JOB */
    sb_job *parked;      /* a queued JOB: the subscriptions waiting for it to reach a worker */
};

/* One worker process: a DEALER that runs up to `capacity` jobs at once (its slots). */
typedef struct sb_worker {
    struct sb_worker *next;
    char ident[CHAT_WIRE_MAX_IDENTITY];
    size_t identlen;
    uint64_t id; /* unique in this broker's life (a subscription names the workers it waits for) */
    int pid;
    int capacity;
    int running;
    int64_t last_seen_ms;
    int64_t idle_since_ms; /* when a slot last became free */
    sb_job *jobs;          /* running, linked by wnext */
    sb_job *subs;          /* subscriptions following one of its answers, linked by wnext */
    bool retiring;
} sb_worker;

typedef enum { CMD_SUBMIT = 1, CMD_CANCEL, CMD_DETACH } cmd_kind;

typedef struct sb_cmd {
    struct sb_cmd *next;
    cmd_kind kind;
    sb_job *job;     /* submit */
    uint64_t job_id; /* cancel, detach */
} sb_cmd;

struct sb_broker {
    /* Read-only after creation. */
    int queue_max;
    int queue_wait_ms;
    char endpoint[512];
    sb_loop loop;

    void *zctx;
    void *router;
    chat_curve_zap *curve; /* the ZAP handler when CURVE is on (chat_curve.h), else NULL */
    bool stopped;          /* sb_broker_stop: commands only queue, nobody is called any more */
    bool in_run;           /* inside sb_broker_run: a command queued now is run before it returns */
    int64_t next_hb_ms;
    int64_t warm_until_ms; /* the start window: workers not back yet are waited for */
    uint64_t *early;       /* ids of the subscriptions that start when the window ends */
    size_t n_early, cap_early;

    sb_cmd *cmd_head, *cmd_tail;
    sb_event *ev_head, *ev_tail; /* waiting for sb_broker_take_events */

    /* Counters (sb_broker_stats). */
    atomic_int n_live, n_busy, n_queued, n_running;
    atomic_ullong n_done, n_failed;

    sb_worker *workers;
    int n_workers;
    uint64_t next_worker_id;
    sb_job *q_head, *q_tail;
    int q_len;
    sm_map jobs;                   /* id -> job, queued or running */
    sb_event *out_head, *out_tail; /* events gathered during one run */
    chat_wire_msg msg;
};

/* ---------------------------------------------------------------- jobs and events */

sb_job *sb_job_new(const chat_wire_job *spec)
{
    sb_job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->spec = chat_wire_job_dup(spec);
    if (!j->spec) {
        free(j);
        return NULL;
    }
    j->id = spec->job_id;
    return j;
}

sb_job *sb_sub_new(uint64_t id, const char *user_id, const char *session_id, const char *answer_id,
                   uint64_t last_seq, uint64_t target, bool resume)
{
    size_t lu = strlen(user_id) + 1, ls = strlen(session_id) + 1, la = answer_id ? strlen(answer_id) + 1 : 1;
    sb_job *j = calloc(1, sizeof *j);
    sb_sub *sub = calloc(1, sizeof *sub + lu + ls + la);
    if (!j || !sub) {
        free(j), free(sub);
        return NULL;
    }
    char *p = (char *)(sub + 1);
    sub->att = (chat_wire_attach){.job_id = id,
                                  .flags = 0,
                                  .user_id = memcpy(p, user_id, lu),
                                  .session_id = memcpy(p + lu, session_id, ls),
                                  .answer_id = memcpy(p + lu + ls, answer_id ? answer_id : "", la),
                                  .last_seq = last_seq};
    sub->target = target;
    sub->resume = resume;
    j->id = id;
    j->sub = sub;
    return j;
}

static void sub_drop_held(sb_sub *sub)
{
    free(sub->held_answer), free(sub->held_text), free(sub->held_complete);
    sub->held_answer = sub->held_text = sub->held_complete = NULL;
    sub->held = false;
}

void sb_job_free(sb_job *job)
{
    if (!job) return;
    chat_wire_job_free(job->spec);
    if (job->sub) {
        sub_drop_held(job->sub);
        free(job->sub->asked);
        free(job->sub->answer_id);
        free(job->sub);
    }
    free(job);
}

/* The answer a job's frames belong to. */
static chat_proto_ref job_ref(const sb_job *job)
{
    if (job->sub) return (chat_proto_ref){job->sub->att.session_id, job->sub->answer_id, job->seq};
    return (chat_proto_ref){job->spec->session_id, job->spec->request_id, job->seq};
}

static const char *job_session(const sb_job *job)
{
    return job->sub ? job->sub->att.session_id : job->spec->session_id;
}

sb_event *sb_event_new(uint64_t job_id, int kind, const char *data, size_t len, const char *session_id)
{
    size_t sl = session_id ? strlen(session_id) + 1 : 0;
    sb_event *e = malloc(sizeof *e + len + 1 + sl);
    if (!e) return NULL;
    e->next = NULL;
    e->job_id = job_id;
    e->kind = (uint8_t)kind;
    e->terminal = 0;
    e->error = 0;
    e->start = e->end = 0;
    e->seq = 0;
    e->len = len;
    if (len) memcpy(e->data, data, len);
    e->data[len] = '\0';
    e->session_id = NULL;
    if (session_id) {
        char *s = e->data + len + 1;
        memcpy(s, session_id, sl);
        e->session_id = s;
    }
    return e;
}

void sb_event_free(sb_event *e)
{
    free(e);
}

/* Queues e for the loop's side (delivered at the end of the run). */
static void out_append(sb_broker *b, sb_event *e)
{
    CHAT_QUEUE_APPEND(b->out_head, b->out_tail, e, next);
}

/* Queues a frame event for the lws thread. Takes ownership of json; a terminal frame that could not be
 * built becomes the out-of-memory error. Returns the queued event. */
static sb_event *emit_json(sb_broker *b, sb_job *job, char *json, bool terminal, const char *session_id)
{
    if (!json) {
        chat_log_error("broker: out of memory building a frame for job %" PRIu64, job->id);
        if (!terminal) return NULL;
    }
    if (job->gone) {
        free(json);
        return NULL;
    }
    const char *data = json ? json : chat_proto_error_oom;
    sb_event *e = sb_event_new(job->id, SB_EV_FRAME, data, strlen(data), terminal ? session_id : NULL);
    free(json);
    if (!e) {
        chat_log_error("broker: out of memory queueing an event for job %" PRIu64, job->id);
        return NULL;
    }
    e->terminal = terminal;
    e->error = data == chat_proto_error_oom;
    out_append(b, e);
    return e;
}

/* Queues the terminal error frame of a job. */
static void emit_error(sb_broker *b, sb_job *job, const char *code, const char *message)
{
    sb_event *e = emit_json(b, job, chat_proto_error(message, code), true, NULL);
    if (e) e->error = 1;
    chat_metric_inc(CHAT_METRIC_ERRORS, chat_metric_label(CHAT_METRIC_LABEL_CODE, code), 1);
}

/* A piece, numbered (kind SB_EV_TOKEN), or an answer's text so far of which the client has the first
 * `from` bytes (SB_EV_SNAPSHOT, seq: the pieces in it). */
static void emit_text(sb_broker *b, sb_job *job, int kind, const char *text, size_t len, size_t from, uint64_t seq)
{
    if (job->gone || (kind == SB_EV_TOKEN && !len)) return;
    sb_event *e = sb_event_new(job->id, kind, text, len, NULL);
    if (!e) {
        chat_log_error("broker: out of memory queueing a token for job %" PRIu64, job->id);
        return;
    }
    e->start = from;
    e->seq = seq;
    out_append(b, e);
}

static void emit_token(sb_broker *b, sb_job *job, const char *text, size_t len)
{
    if (len) job->seq++;
    emit_text(b, job, SB_EV_TOKEN, text, len, 0, job->seq);
}

/* The terminal event of a subscription that has nothing (more) to show. */
static void emit_end(sb_broker *b, sb_job *job)
{
    if (job->gone) return;
    sb_event *e = sb_event_new(job->id, SB_EV_END, "", 0, NULL);
    if (!e) return; /* the connection then waits for nothing: its next message still starts */
    e->terminal = 1;
    out_append(b, e);
}

/* One token event per piece of the worker's event: the connection frames each on its own. */
static void emit_pieces(sb_broker *b, sb_job *job, const chat_wire_event *ev)
{
    size_t n = chat_wire_token_pieces(ev), at = 0;
    if (!ev->token.piece_lens.len) {
        emit_token(b, job, ev->token.text.s, ev->token.text.len);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = chat_wire_token_piece_len(&ev->token.piece_lens, i);
        emit_token(b, job, ev->token.text.s + at, len);
        at += len;
    }
}

static void sub_unpark_all(sb_broker *b, sb_job *job);
static void sub_unlink_parked(sb_job *sub);

/* Drops a job from the books and frees it: the subscriptions waiting for a queued JOB ask every worker
 * instead; a parked subscription leaves its list. */
static void job_drop(sb_broker *b, sb_job *job)
{
    if (job->parked) sub_unpark_all(b, job);
    if (job->sub && job->sub->parked_on) sub_unlink_parked(job);
    sm_del(&b->jobs, job->id);
    sb_job_free(job);
}

/* Ends a job with an error event, drops it from the books, frees it. */
static void job_fail(sb_broker *b, sb_job *job, const char *code, const char *message)
{
    emit_error(b, job, code, message);
    atomic_fetch_add(&b->n_failed, 1);
    chat_log_info("broker: job %" PRIu64 " failed: %s after %" PRId64 " ms", job->id, code,
                  chat_now_ms() - job->submitted_ms);
    job_drop(b, job);
}

/* A job cancelled before any worker ran it: the protocol still owes the client a terminal complete. */
static void job_cancelled_unstarted(sb_broker *b, sb_job *job)
{
    chat_proto_ref ref = job_ref(job);
    ref.seq++;
    emit_json(b, job, chat_proto_complete_cancelled_of(&ref, ""), true, job_session(job));
    atomic_fetch_add(&b->n_done, 1);
    job_drop(b, job);
}

/* ---------------------------------------------------------------- the waiting queue */

static void q_push(sb_broker *b, sb_job *job, bool front, int64_t now)
{
    job->deadline_ms = now + b->queue_wait_ms;
    job->next = NULL;
    if (front) {
        job->next = b->q_head;
        b->q_head = job;
        if (!b->q_tail) b->q_tail = job;
    } else {
        CHAT_QUEUE_APPEND(b->q_head, b->q_tail, job, next);
    }
    b->q_len++;
    atomic_store(&b->n_queued, b->q_len);
    chat_metric_gauge_set(CHAT_METRIC_QUEUED, 0, b->q_len);
}

static sb_job *q_pop(sb_broker *b)
{
    sb_job *j = b->q_head;
    if (!j) return NULL;
    b->q_head = j->next;
    if (!b->q_head) b->q_tail = NULL;
    j->next = NULL;
    b->q_len--;
    atomic_store(&b->n_queued, b->q_len);
    chat_metric_gauge_set(CHAT_METRIC_QUEUED, 0, b->q_len);
    return j;
}

static bool q_remove(sb_broker *b, sb_job *job)
{
    sb_job **pp = &b->q_head, *prev = NULL;
    while (*pp && *pp != job)
        prev = *pp, pp = &(*pp)->next;
    if (!*pp) return false;
    *pp = job->next;
    if (b->q_tail == job) b->q_tail = prev;
    job->next = NULL;
    b->q_len--;
    atomic_store(&b->n_queued, b->q_len);
    chat_metric_gauge_set(CHAT_METRIC_QUEUED, 0, b->q_len);
    return true;
}

/* ---------------------------------------------------------------- workers */

static void publish_counts(sb_broker *b)
{
    int live = 0, busy = 0;
    for (sb_worker *w = b->workers; w; w = w->next) {
        if (!w->retiring) live += w->capacity;
        busy += w->running;
    }
    atomic_store(&b->n_live, live);
    atomic_store(&b->n_busy, busy);
    atomic_store(&b->n_running, busy);
    int procs = 0;
    for (sb_worker *w = b->workers; w; w = w->next) procs += !w->retiring;
    chat_metric_gauge_set(CHAT_METRIC_WORKERS, 0, procs);
    chat_metric_gauge_set(CHAT_METRIC_WORKER_SLOTS, 0, live);
    chat_metric_gauge_set(CHAT_METRIC_WORKER_SLOTS_BUSY, 0, busy);
}

static sb_worker *worker_find(sb_broker *b, const char *ident, size_t len)
{
    for (sb_worker *w = b->workers; w; w = w->next)
        if (w->identlen == len && !memcmp(w->ident, ident, len)) return w;
    return NULL;
}

/* The worker's job could not finish there: retry once if the client saw no token, else fail it. A
 * subscription that lost the worker of its answer fails like a job mid-answer. */
static void job_orphaned(sb_broker *b, sb_job *job, int64_t now, const char *why)
{
    job->worker = NULL;
    if (job->gone) {
        job_drop(b, job);
        return;
    }
    if (job->sub) {
        chat_log_warn("broker: subscription %" PRIu64 " lost its worker (%s)", job->id, why);
        job_fail(b, job, CHAT_CODE_PROCESSING_ERROR, "The worker processing your message failed, please retry");
        return;
    }
    if (!job->tokens_sent && !job->cancelled && job->attempts < SB_MAX_ATTEMPTS) {
        chat_log_warn("broker: job %" PRIu64 " lost its worker (%s), retrying", job->id, why);
        q_push(b, job, true, now);
        return;
    }
    if (job->cancelled && !job->tokens_sent) {
        job_cancelled_unstarted(b, job);
        return;
    }
    chat_log_warn("broker: job %" PRIu64 " lost its worker (%s) mid-answer", job->id, why);
    job_fail(b, job, CHAT_CODE_PROCESSING_ERROR, "The worker processing your message failed, please retry");
}

/* A JOB runs on w (it takes a slot); a subscription follows an answer of w (it takes none). */
static void worker_attach(sb_worker *w, sb_job *job)
{
    sb_job **list = job->sub ? &w->subs : &w->jobs;
    job->worker = w;
    job->wprev = NULL;
    job->wnext = *list;
    if (*list) (*list)->wprev = job;
    *list = job;
    if (!job->sub) w->running++;
}

static void worker_detach(sb_worker *w, sb_job *job)
{
    if (job->worker != w) return;
    if (job->wprev)
        job->wprev->wnext = job->wnext;
    else if (job->sub)
        w->subs = job->wnext;
    else
        w->jobs = job->wnext;
    if (job->wnext) job->wnext->wprev = job->wprev;
    if (!job->sub) w->running--;
    job->wnext = job->wprev = NULL;
    job->worker = NULL;
}

static void sub_forget_worker(sb_broker *b, sb_worker *w);

/* Every job running on w lost its worker (it died, restarted or was removed), and every subscription
 * that followed or waited for one of its answers. */
static void worker_orphan_all(sb_broker *b, sb_worker *w, int64_t now, const char *why)
{
    while (w->jobs) {
        sb_job *job = w->jobs;
        worker_detach(w, job);
        job_orphaned(b, job, now, why);
    }
    while (w->subs) {
        sb_job *job = w->subs;
        worker_detach(w, job);
        job_orphaned(b, job, now, why);
    }
    sub_forget_worker(b, w);
}

static void worker_remove(sb_broker *b, sb_worker *w, int64_t now, const char *why)
{
    sb_worker **pp = &b->workers;
    while (*pp && *pp != w)
        pp = &(*pp)->next;
    if (*pp) *pp = w->next;
    b->n_workers--;
    chat_log_info("broker: worker pid %d removed (%s)%s", w->pid, why, w->running ? " with jobs in flight" : "");
    worker_orphan_all(b, w, now, why);
    free(w);
    publish_counts(b);
}

/* The live worker with a free slot that runs the fewest jobs (spreading answers over processes and
 * their CPUs), least recently freed first among equals; NULL when every slot is busy. */
static sb_worker *worker_idle(sb_broker *b)
{
    sb_worker *best = NULL;
    for (sb_worker *w = b->workers; w; w = w->next) {
        if (w->retiring || w->running >= w->capacity) continue;
        if (!best || w->running < best->running ||
            (w->running == best->running && w->idle_since_ms < best->idle_since_ms))
            best = w;
    }
    return best;
}

/* Sends cmd to worker w without waiting: 0, or CHAT_ERR with zmq's errno. */
static int send_to(sb_broker *b, const sb_worker *w, const chat_wire_cmd *cmd)
{
    chat_wire_str to = {w->ident, w->identlen};
    return chat_wire_send(b->router, &to, cmd, ZMQ_DONTWAIT);
}

static void sub_send_parked(sb_broker *b, sb_job *t, sb_worker *w);

/* Hands queued jobs to idle workers. */
static void dispatch(sb_broker *b, int64_t now)
{
    while (b->q_head) {
        sb_worker *w = worker_idle(b);
        if (!w) return;
        sb_job *job = q_pop(b);
        if (send_to(b, w, &(chat_wire_cmd){.kind = CHAT_WIRE_JOB, .job = *job->spec})) {
            int e = errno;
            q_push(b, job, true, now); /* back to the front, for the next idle worker */
            worker_remove(b, w, now, e == EHOSTUNREACH ? "unreachable" : "send failed");
            continue;
        }
        job->attempts++;
        worker_attach(w, job);
        chat_log_debug("broker: job %" PRIu64 " -> worker pid %d (attempt %d, waited %" PRId64 " ms)", job->id, w->pid,
                       job->attempts, now - job->submitted_ms);
        sub_send_parked(b, job, w); /* after the JOB: the worker knows the answer when they come */
        publish_counts(b);
    }
}

/* ---------------------------------------------------------------- subscriptions */

/* A subscription leaves the list of the queued job it waited for. */
static void sub_unlink_parked(sb_job *job)
{
    sb_sub *sub = job->sub;
    sb_job **pp = &sub->parked_on->parked;
    while (*pp && *pp != job)
        pp = &(*pp)->sub->parked_next;
    if (*pp) *pp = sub->parked_next;
    sub->parked_on = NULL;
    sub->parked_next = NULL;
}

/* Sends the subscription's ATTACH to w, whose ATTACHED it then awaits. 0, or a negative code (w could
 * not be sent to; the heartbeat deals with it). */
static int sub_ask(sb_broker *b, sb_job *job, sb_worker *w, bool check_owner)
{
    sb_sub *sub = job->sub;
    if (chat_array_reserve(&sub->asked, &sub->cap_asked, sub->n_asked, sizeof *sub->asked)) return CHAT_ENOMEM;
    chat_wire_attach a = sub->att;
    a.flags = check_owner ? CHAT_WIRE_A_CHECK_OWNER : 0;
    if (send_to(b, w, &(chat_wire_cmd){.kind = CHAT_WIRE_ATTACH, .attach = a})) return CHAT_ERR;
    sub->asked[sub->n_asked++] = w->id;
    return 0;
}

static bool sub_asked_remove(sb_sub *sub, uint64_t worker_id)
{
    for (size_t i = 0; i < sub->n_asked; i++) {
        if (sub->asked[i] != worker_id) continue;
        sub->asked[i] = sub->asked[--sub->n_asked];
        return true;
    }
    return false;
}

/* Of the workers of an id above `after`, the least busy that takes jobs (else any): it looks a resumed
 * session's owner up. */
static sb_worker *worker_checker(sb_broker *b, uint64_t after)
{
    sb_worker *best = NULL;
    for (sb_worker *w = b->workers; w; w = w->next)
        if (w->id > after && (!best || (best->retiring && !w->retiring) ||
                              (best->retiring == w->retiring && w->running < best->running)))
            best = w;
    return best;
}

/* True in the new broker's window (CHAT_STREAMER_START_WAIT_MS), when workers may still be on their way. */
static bool starting(const sb_broker *b, int64_t now)
{
    return now < b->warm_until_ms;
}

static void sub_settle(sb_broker *b, sb_job *job);
static void sub_settle_or_wait(sb_broker *b, sb_job *job);

/* Asks every worker of an id above `after` (0: all of them; a retiring one still finishes and keeps its
 * answers); for a resume whose owner nobody has looked up yet, one of them also does, in case nobody
 * holds anything. */
static void sub_ask_newer(sb_broker *b, sb_job *job, uint64_t after)
{
    sb_sub *sub = job->sub;
    sb_worker *checker = sub->resume && !sub->unknown && !sub->held ? worker_checker(b, after) : NULL;
    for (sb_worker *w = b->workers; w; w = w->next)
        if (w->id > after && sub_ask(b, job, w, w == checker))
            chat_log_warn("broker: ATTACH for %" PRIu64 " not sent to worker pid %d", job->id, w->pid);
    sub->asked_upto = b->next_worker_id;
}

static void sub_ask_all(sb_broker *b, sb_job *job)
{
    sub_ask_newer(b, job, 0);
    if (!job->sub->n_asked) sub_settle_or_wait(b, job);
}

/* A queued job reached w: its waiting subscriptions ask w. */
static void sub_send_parked(sb_broker *b, sb_job *t, sb_worker *w)
{
    while (t->parked) {
        sb_job *job = t->parked;
        sub_unlink_parked(job);
        if (sub_ask(b, job, w, false)) sub_ask_all(b, job);
    }
}

/* A queued job ends without running: its waiting subscriptions ask every worker instead. */
static void sub_unpark_all(sb_broker *b, sb_job *t)
{
    while (t->parked) {
        sb_job *job = t->parked;
        sub_unlink_parked(job);
        if (job->gone)
            job_drop(b, job);
        else
            sub_ask_all(b, job);
    }
}

/* The newest job of this broker answering user's session (ids grow), or NULL. */
static sb_job *local_answer(sb_broker *b, const char *user, const char *session)
{
    sb_job *best = NULL;
    for (size_t i = 0; i < b->jobs.cap; i++) {
        sb_job *j = b->jobs.slots[i].key ? b->jobs.slots[i].val : NULL;
        if (!j || j->sub || !chat_id_equal(j->spec->session_id, session) || strcmp(j->spec->user_id, user)) continue;
        if (!best || j->id > best->id) best = j;
    }
    return best;
}

/* A new subscription: to the job of this broker it names, or that answers the session; else (or when
 * that job's worker cannot be reached) to every worker. A job still queued parks it until it runs. Only
 * a job of the same user and session is followed: a session is its user's own (chat_memory.h). */
static void sub_start(sb_broker *b, sb_job *job)
{
    sb_sub *sub = job->sub;
    sb_job *t = sub->target ? sm_get(&b->jobs, sub->target) : NULL;
    if (t && (t->sub || strcmp(t->spec->user_id, sub->att.user_id) ||
              !chat_id_equal(t->spec->session_id, sub->att.session_id)))
        t = NULL;
    if (!t && sub->resume) t = local_answer(b, sub->att.user_id, sub->att.session_id);
    if (t && !t->worker) {
        sub->parked_on = t;
        sub->parked_next = t->parked;
        t->parked = job;
        return;
    }
    if (t && sub_ask(b, job, t->worker, false) == 0) return;
    sub_ask_all(b, job);
}

/* w streams the answer: the subscription follows it from here, what the client missed first. */
static void sub_follow(sb_broker *b, sb_job *job, sb_worker *w, const chat_wire_attached *a)
{
    sb_sub *sub = job->sub;
    sub->decided = true;
    sub_drop_held(sub);
    if (job->gone) {
        send_to(b, w, &(chat_wire_cmd){.kind = CHAT_WIRE_DETACH, .job_id = job->id});
        job_drop(b, job);
        return;
    }
    sub->answer_id = strndup(a->answer_id.s, a->answer_id.len);
    job->seq = a->seq;
    worker_attach(w, job);
    chat_proto_ref ref = job_ref(job);
    if (sub->resume) emit_json(b, job, chat_proto_resumed(&ref, true, true), false, NULL);
    emit_text(b, job, SB_EV_SNAPSHOT, a->text.s, a->text.len, (size_t)a->from, a->seq);
    if (sub->cancel_wanted && !job->cancelled) {
        job->cancelled = true;
        send_to(b, w, &(chat_wire_cmd){.kind = CHAT_WIRE_CANCEL, .job_id = job->id});
    }
}

/* Keeps a's completed answer if it is the youngest heard (several workers may hold one of the session's
 * answers: the last one counts). Its complete frame is built now, from a's fields. */
static void sub_hold(sb_job *job, const chat_wire_attached *a)
{
    sb_sub *sub = job->sub;
    if (sub->held && a->age_ms >= sub->held_age) return;
    sub_drop_held(sub);
    sub->held_answer = strndup(a->answer_id.s, a->answer_id.len);
    sub->held_text = malloc(a->text.len + 1);
    if (sub->held_answer) {
        chat_proto_ref ref = {sub->att.session_id, sub->held_answer, a->seq + 1};
        sub->held_complete = chat_proto_complete_of(&ref, a->response.s, a->metadata_json.s);
    }
    if (!sub->held_answer || !sub->held_text || !sub->held_complete) {
        chat_log_error("broker: out of memory keeping a finished answer for %" PRIu64, job->id);
        sub_drop_held(sub);
        return;
    }
    memcpy(sub->held_text, a->text.s, a->text.len);
    sub->held_text[a->text.len] = '\0';
    sub->held_len = a->text.len;
    sub->held_seq = a->seq, sub->held_cursor = a->cursor, sub->held_age = a->age_ms, sub->held_from = a->from;
    sub->held = true;
}

/* Every worker asked has answered and none streams the answer: the youngest completed one (what the
 * client misses of it, and its complete unless the client has it), or nothing, or, for a resume of a
 * session the user does not have, SESSION_FORBIDDEN (whether or not another user has one of that id:
 * the answer is the same). */
static void sub_settle(sb_broker *b, sb_job *job)
{
    sb_sub *sub = job->sub;
    sub->decided = true;
    const char *sid = sub->att.session_id;
    if (job->gone) {
        job_drop(b, job);
        return;
    }
    if (sub->held) {
        sub->answer_id = sub->held_answer, sub->held_answer = NULL;
        job->seq = sub->held_seq;
        chat_proto_ref ref = job_ref(job);
        bool has_all = sub->held_cursor > sub->held_seq; /* the complete too */
        if (sub->resume) emit_json(b, job, chat_proto_resumed(&ref, false, !has_all), has_all, sid);
        if (!has_all) {
            emit_text(b, job, SB_EV_SNAPSHOT, sub->held_text, sub->held_len, (size_t)sub->held_from, sub->held_seq);
            emit_json(b, job, sub->held_complete, true, sid);
            sub->held_complete = NULL;
        } else if (!sub->resume) {
            emit_end(b, job);
        }
    } else if (sub->resume && sub->unknown) {
        emit_error(b, job, CHAT_CODE_SESSION_FORBIDDEN, chat_proto_code_message(CHAT_PROTO_SESSION_FORBIDDEN));
    } else if (sub->resume) {
        chat_proto_ref ref = {sid, NULL, 0};
        emit_json(b, job, chat_proto_resumed(&ref, false, false), true, sid);
    } else {
        emit_end(b, job);
    }
    job_drop(b, job);
}

/* A worker's answer to a subscription's ATTACH. */
static void handle_attached(sb_broker *b, sb_worker *w, const chat_wire_attached *a)
{
    sb_job *job = sm_get(&b->jobs, a->job_id);
    bool asked = job && job->sub && sub_asked_remove(job->sub, w->id);
    if (!asked || job->sub->decided) { /* given up on, or settled by another worker's answer */
        if (a->status == CHAT_WIRE_ATT_IN_FLIGHT)
            send_to(b, w, &(chat_wire_cmd){.kind = CHAT_WIRE_DETACH, .job_id = a->job_id});
        return;
    }
    sb_sub *sub = job->sub;
    switch (a->status) {
    case CHAT_WIRE_ATT_IN_FLIGHT:
        sub_follow(b, job, w, a);
        return;
    case CHAT_WIRE_ATT_FORBIDDEN: /* from a worker of an earlier version: the session was somebody else's */
        sub->decided = true;
        emit_error(b, job, CHAT_CODE_SESSION_FORBIDDEN, chat_proto_code_message(CHAT_PROTO_SESSION_FORBIDDEN));
        job_drop(b, job);
        return;
    case CHAT_WIRE_ATT_FINISHED:
        sub_hold(job, a);
        break;
    case CHAT_WIRE_ATT_UNKNOWN:
        sub->unknown = true;
        break;
    case CHAT_WIRE_ATT_NONE:
        break;
    }
    if (!sub->n_asked) sub_settle_or_wait(b, job);
}

/* w is gone: the subscriptions still waiting for its ATTACHED stop waiting (collected first: settling
 * changes the map). */
static void sub_forget_worker(sb_broker *b, sb_worker *w)
{
    uint64_t *ids = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < b->jobs.cap; i++) {
        sb_job *j = b->jobs.slots[i].key ? b->jobs.slots[i].val : NULL;
        if (!j || !j->sub || j->sub->decided || !sub_asked_remove(j->sub, w->id) || j->sub->n_asked) continue;
        if (chat_array_reserve(&ids, &cap, n, sizeof *ids)) break;
        ids[n++] = j->id;
    }
    for (size_t i = 0; i < n; i++) {
        sb_job *j = sm_get(&b->jobs, ids[i]);
        if (j) sub_settle_or_wait(b, j);
    }
    free(ids);
}


/* ---------------------------------------------------------------- commands from the loop's side */

/* A subscription starts: to the answer it names, or asking every worker. Retiring workers still hold
 * answers: only none at all is a refusal, and not while the broker is new (the workers may be on their
 * way: it waits for the window's end). */
static void sub_begin(sb_broker *b, sb_job *job)
{
    if (b->workers)
        sub_start(b, job);
    else if (starting(b, chat_now_ms()))
        sub_settle_or_wait(b, job);
    else
        job_fail(b, job, CHAT_CODE_OVERLOADED, "No worker is available, please retry shortly");
}

/* Every worker asked has answered and none streams the answer: settle, unless the broker is new, when a
 * worker not back yet may hold it. Then the subscription waits for the window's end (early_subs_end). */
static void sub_settle_or_wait(sb_broker *b, sb_job *job)
{
    if (!starting(b, chat_now_ms()) || chat_array_reserve(&b->early, &b->cap_early, b->n_early, sizeof *b->early)) {
        sub_settle(b, job); /* after the window, or out of memory: what is known now */
        return;
    }
    b->early[b->n_early++] = job->id;
}

/* The start window is over: each subscription that waited asks the workers that came back since it
 * asked (the first time, if it found none), and settles once they have answered. One whose client left
 * meanwhile is dropped. */
static void early_subs_end(sb_broker *b, int64_t now)
{
    if (!b->n_early || starting(b, now)) return;
    uint64_t *ids = b->early;
    size_t n = b->n_early;
    b->early = NULL, b->n_early = b->cap_early = 0;
    for (size_t i = 0; i < n; i++) {
        sb_job *job = sm_get(&b->jobs, ids[i]);
        if (!job || !job->sub || job->sub->decided) continue;
        sb_sub *sub = job->sub;
        if (job->gone) {
            job_drop(b, job);
            continue;
        }
        if (!sub->asked_upto) { /* no worker when it came */
            sub_begin(b, job);
            continue;
        }
        sub_ask_newer(b, job, sub->asked_upto);
        if (!sub->n_asked) sub_settle(b, job);
    }
    free(ids);
}

static void handle_submit(sb_broker *b, sb_job *job, int64_t now)
{
    job->submitted_ms = now;
    if (sm_put(&b->jobs, job->id, job)) {
        emit_error(b, job, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
        sb_job_free(job);
        return;
    }
    if (job->sub) {
        sub_begin(b, job);
        return;
    }
    if (atomic_load(&b->n_live) == 0 && !starting(b, now)) {
        job_fail(b, job, CHAT_CODE_OVERLOADED, "No worker is available, please retry shortly");
        return;
    }
    if (b->q_len >= b->queue_max) dispatch(b, now); /* a run may bring many submits: free slots first */
    if (b->q_len >= b->queue_max) {
        job_fail(b, job, CHAT_CODE_OVERLOADED, "The server is busy, please retry shortly");
        return;
    }
    q_push(b, job, false, now);
}

/* The client asked to stop the answer: the job's, or the one a subscription follows (the worker stops it
 * for everybody who follows it). */
static void handle_cancel(sb_broker *b, uint64_t id)
{
    sb_job *job = sm_get(&b->jobs, id);
    if (!job) return;
    if (job->sub && !job->worker) {
        if (job->sub->parked_on)
            handle_cancel(b, job->sub->parked_on->id);
        else
            job->sub->cancel_wanted = true; /* applied once it follows an answer */
        return;
    }
    if (!job->worker) { /* still waiting for a worker */
        q_remove(b, job);
        job_cancelled_unstarted(b, job);
        return;
    }
    if (job->cancelled) return;
    job->cancelled = true;
    if (send_to(b, job->worker, &(chat_wire_cmd){.kind = CHAT_WIRE_CANCEL, .job_id = id}))
        chat_log_warn("broker: CANCEL for job %" PRIu64 " not delivered (%s)", id, zmq_strerror(errno));
}

/* The connection left: nothing more is delivered. A subscription ends (the worker stops sending under
 * its id); a job goes on without anybody waiting (CHAT_WIRE_F_DETACHED while queued, DETACH once it
 * runs), so that its answer is stored whole and stays resumable (the workers' CHAT_ORPHAN_POLICY). */
static void handle_detach(sb_broker *b, uint64_t id)
{
    sb_job *job = sm_get(&b->jobs, id);
    if (!job) return;
    job->gone = true;
    if (job->sub) {
        if (job->worker) {
            send_to(b, job->worker, &(chat_wire_cmd){.kind = CHAT_WIRE_DETACH, .job_id = id});
            worker_detach(job->worker, job);
            job_drop(b, job);
        } else if (job->sub->parked_on) {
            job_drop(b, job);
        } /* else waiting for ATTACHED: dropped once settled */
        return;
    }
    if (!job->worker) {
        job->spec->flags |= CHAT_WIRE_F_DETACHED;
        return;
    }
    if (send_to(b, job->worker, &(chat_wire_cmd){.kind = CHAT_WIRE_DETACH, .job_id = id}))
        chat_log_warn("broker: DETACH for job %" PRIu64 " not delivered (%s)", id, zmq_strerror(errno));
}

static void run_commands(sb_broker *b, int64_t now)
{
    sb_cmd *c = b->cmd_head;
    b->cmd_head = b->cmd_tail = NULL;
    while (c) {
        sb_cmd *next = c->next;
        if (c->kind == CMD_SUBMIT)
            handle_submit(b, c->job, now);
        else if (c->kind == CMD_CANCEL)
            handle_cancel(b, c->job_id);
        else
            handle_detach(b, c->job_id);
        free(c);
        c = next;
    }
}

/* ---------------------------------------------------------------- messages from workers */

static void handle_event(sb_broker *b, sb_worker *w, const chat_wire_event *ev, int64_t now)
{
    sb_job *job = sm_get(&b->jobs, ev->job_id);
    if (!job || job->worker != w) return; /* stale: a job we already gave up on */
    if (ev->kind == CHAT_WIRE_EV_PROGRESS) {
        chat_proto_step step;
        if (!chat_proto_step_lookup(ev->progress.step.s, &step) || !chat_wire_str_eq(ev->progress.step, chat_proto_step_name(step)) ||
            step == CHAT_STEP_STARTING)
            return; /* an unknown step, or "starting" (sent by the streamer) */
        _Static_assert(CHAT_STEP_COUNT <= 8, "steps_sent holds a bit per step");
        if (job->steps_sent & (1u << step)) return;
        job->steps_sent |= (uint8_t)(1u << step);
        chat_proto_ref ref = job_ref(job);
        ref.seq = 0;
        emit_json(b, job, chat_proto_progress_of(&ref, ev->progress.step.s, ev->progress.message.s), false, NULL);
        return;
    }
    if (ev->kind == CHAT_WIRE_EV_TOKEN) {
        job->tokens_sent = true;
        emit_pieces(b, job, ev);
        return;
    }
    bool complete = ev->kind == CHAT_WIRE_EV_COMPLETE;
    if (complete) {
        chat_proto_ref ref = job_ref(job);
        ref.session_id = ev->complete.session_id.s;
        ref.seq++; /* the complete counts in the sequence: a client holding it resumes past it */
        emit_json(b, job, chat_proto_complete_of(&ref, ev->complete.response.s, ev->complete.metadata_json.s), true,
                  ev->complete.session_id.s);
    } else {
        emit_error(b, job, ev->error.code.s, ev->error.message.s);
    }
    worker_detach(w, job);
    if (job->sub) { /* a follower of an answer counted already */
        job_drop(b, job);
        return;
    }
    atomic_fetch_add(complete ? &b->n_done : &b->n_failed, 1);
    chat_log_info("broker: job %" PRIu64 " %s on worker pid %d in %" PRId64 " ms%s%s", job->id,
                  complete ? "completed" : "ended with error", w->pid, now - job->submitted_ms,
                  complete ? "" : " code ", complete ? "" : ev->error.code.s);
    job_drop(b, job);
    w->idle_since_ms = now;
    if (w->retiring && !w->running)
        worker_remove(b, w, now, "retired");
    else
        publish_counts(b);
}

/* READY from w (NULL: a worker not known yet, whose identity is `from`). */
static void handle_ready(sb_broker *b, sb_worker *w, chat_wire_str from, const chat_wire_ready *r, int64_t now)
{
    if (w) { /* re-announced: whatever it was doing is lost */
        w->last_seen_ms = now;
        worker_orphan_all(b, w, now, "worker restarted");
        w->capacity = r->slots;
        w->retiring = false;
        publish_counts(b);
        return;
    }
    if (b->n_workers >= SB_MAX_WORKERS) {
        chat_log_warn("broker: too many workers, READY ignored");
        return;
    }
    w = calloc(1, sizeof *w);
    if (!w) return;
    w->id = ++b->next_worker_id;
    memcpy(w->ident, from.s, from.len);
    w->identlen = from.len;
    w->pid = r->pid;
    w->capacity = r->slots;
    w->last_seen_ms = w->idle_since_ms = now;
    w->next = b->workers;
    b->workers = w;
    b->n_workers++;
    chat_log_info("broker: worker pid %d ready with %d slots (%d workers)", w->pid, w->capacity, b->n_workers);
    publish_counts(b);
}

static void handle_bye(sb_broker *b, sb_worker *w, int64_t now)
{
    chat_log_info("broker: worker pid %d retiring", w->pid);
    w->retiring = true;
    if (!w->running)
        worker_remove(b, w, now, "retired");
    else
        publish_counts(b);
}

static void handle_message(sb_broker *b, const chat_wire_msg *m, int64_t now)
{
    chat_wire_str from;
    chat_wire_cmd c;
    char err[128];
    int rc = chat_wire_parse(m, &from, &c, err, sizeof err);
    if (!from.len) return;
    sb_worker *w = worker_find(b, from.s, from.len);
    if (rc && w) {
        chat_log_warn("broker: a message from worker pid %d dropped: %s", w->pid, err);
        w->last_seen_ms = now; /* still a sign of life */
        return;
    }
    if (rc) {
        chat_log_warn("broker: a message from an unknown worker dropped: %s", err);
        return;
    }
    if (c.kind == CHAT_WIRE_READY) {
        handle_ready(b, w, from, &c.ready, now);
        return;
    }
    if (!w) { /* e.g. the streamer restarted under a running worker */
        chat_wire_send(b->router, &from, &(chat_wire_cmd){.kind = CHAT_WIRE_RESET}, ZMQ_DONTWAIT);
        return;
    }
    w->last_seen_ms = now;
    switch (c.kind) {
    case CHAT_WIRE_EV:
        handle_event(b, w, &c.ev, now);
        return;
    case CHAT_WIRE_EVS: {
        chat_wire_event ev;
        for (size_t at = 0; chat_wire_events_next(&c.events, &at, &ev);)
            handle_event(b, w, &ev, now);
        return;
    }
    case CHAT_WIRE_ATTACHED:
        handle_attached(b, w, &c.attached);
        return;
    case CHAT_WIRE_BYE:
        handle_bye(b, w, now);
        return;
    default: /* HB: the sign of life is all; JOB, CANCEL and RESET only go the other way */
        return;
    }
}

/* ---------------------------------------------------------------- timers */

static void heartbeat(sb_broker *b, int64_t now)
{
    sb_worker *w = b->workers;
    while (w) {
        sb_worker *next = w->next;
        if (now - w->last_seen_ms > CHAT_WIRE_DEAD_MS) {
            worker_remove(b, w, now, "heartbeat lost");
        } else if (send_to(b, w, &(chat_wire_cmd){.kind = CHAT_WIRE_HB}) && errno == EHOSTUNREACH) {
            worker_remove(b, w, now, "unreachable");
        }
        w = next;
    }
}

static void expire_queue(sb_broker *b, int64_t now)
{
    /* With no live worker left, nothing queued can run: fail it now rather than at its deadline (after the
     * start window: in it, workers may still be on their way). */
    bool none = atomic_load(&b->n_live) == 0 && !starting(b, now);
    while (b->q_head && (none || b->q_head->deadline_ms <= now)) {
        sb_job *job = q_pop(b);
        job_fail(b, job, CHAT_CODE_OVERLOADED,
                 none ? "No worker is available, please retry shortly" : "The server is busy, please retry shortly");
    }
}

/* Hands the run's events to the loop's side, and tells it once per run. */
static void flush_events(sb_broker *b)
{
    if (b->out_head) {
        CHAT_QUEUE_CONCAT(b->ev_head, b->ev_tail, b->out_head, b->out_tail, next);
        b->out_head = b->out_tail = NULL;
    }
    if (b->ev_head && b->loop.events) b->loop.events(b->loop.ud);
}

/* Receives what waits on the ROUTER, at most SB_MAX_MSGS_PER_TURN messages. */
static void receive_messages(sb_broker *b, int64_t now)
{
    for (int i = 0; i < SB_MAX_MSGS_PER_TURN; i++) {
        int rc = chat_wire_recv(b->router, &b->msg, ZMQ_DONTWAIT);
        if (rc == CHAT_ETIMEOUT) return;
        if (rc == CHAT_EINVAL) {
            chat_log_warn("broker: oversized message from a worker dropped");
            continue;
        }
        if (rc) {
            if (errno != EINTR) chat_log_warn("broker: receive: %s", zmq_strerror(errno));
            return;
        }
        handle_message(b, &b->msg, now);
    }
}

/* True when a message waits on the ROUTER. Asking also consumes ZMQ_FD's signal: the loop is woken
 * again only by what happens after this call. */
static bool messages_waiting(sb_broker *b)
{
    int events = 0;
    size_t len = sizeof events;
    return zmq_getsockopt(b->router, ZMQ_EVENTS, &events, &len) == 0 && (events & ZMQ_POLLIN);
}

long sb_broker_run(sb_broker *b)
{
    if (b->stopped) return -1;
    b->in_run = true;
    int64_t now = chat_now_ms();
    chat_metric_gauge_set(CHAT_METRIC_IN_FLIGHT, 0, (int64_t)b->jobs.n); /* as of the last run: cheap */
    run_commands(b, now);
    receive_messages(b, now);
    if (now >= b->next_hb_ms) {
        heartbeat(b, now);
        b->next_hb_ms = now + CHAT_WIRE_HEARTBEAT_MS;
    }
    dispatch(b, now);
    expire_queue(b, now);
    early_subs_end(b, now);
    flush_events(b); /* may queue commands (the loop's side starts the next message): run below */
    b->in_run = false;
    if (b->cmd_head || b->out_head || messages_waiting(b)) return 0;
    int64_t due = b->next_hb_ms;
    if (b->q_head && b->q_head->deadline_ms < due) due = b->q_head->deadline_ms;
    bool window_ends_something = b->n_early || (b->q_head && !atomic_load(&b->n_live));
    if (window_ends_something && b->warm_until_ms < due) due = b->warm_until_ms;
    now = chat_now_ms();
    return due > now ? (long)(due - now) : 0;
}

int sb_broker_fd(sb_broker *b)
{
    int fd = -1;
    size_t len = sizeof fd;
    if (zmq_getsockopt(b->router, ZMQ_FD, &fd, &len)) return -1;
    return fd;
}

/* ---------------------------------------------------------------- public API */

/* "ipc://dir/file": make dir exist, so a fresh checkout's var/run does not stop the stack. */
static void ensure_ipc_dir(const char *endpoint)
{
    if (strncmp(endpoint, "ipc://", 6)) return;
    char path[512];
    snprintf(path, sizeof path, "%s", endpoint + 6);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        mkdir(path, 0755);
        *p = '/';
    }
}

sb_broker *sb_broker_new(const chat_config *cfg, const sb_loop *loop, char *err, size_t errlen)
{
    sb_broker *b = calloc(1, sizeof *b);
    if (!b) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    sm_init(&b->jobs);
    chat_wire_msg_init(&b->msg);
    if (loop) b->loop = *loop;
    b->next_hb_ms = chat_now_ms() + CHAT_WIRE_HEARTBEAT_MS;
    b->queue_max = chat_config_env_int("CHAT_STREAMER_QUEUE_MAX", 1024, 1, 1000000);
    b->queue_wait_ms = chat_config_env_int("CHAT_STREAMER_QUEUE_WAIT_MS", 5000, 0, 600000);
    b->warm_until_ms = chat_now_ms() + chat_config_env_int("CHAT_STREAMER_START_WAIT_MS", 3000, 0, 60000);
    snprintf(b->endpoint, sizeof b->endpoint, "%s", cfg->zmq_endpoint);
    if (strchr(b->endpoint, ',')) { /* a list is for workers that serve several streamers */
        chat_fail(err, errlen, CHAT_EINVAL, "a streamer binds one CHAT_ZMQ_ENDPOINT, not a list");
        goto fail;
    }

    b->zctx = zmq_ctx_new();
    if (!b->zctx) {
        chat_fail(err, errlen, CHAT_ERR, "broker: cannot create a zmq context");
        goto fail;
    }
    b->router = zmq_socket(b->zctx, ZMQ_ROUTER);
    if (!b->router) {
        chat_fail(err, errlen, CHAT_ERR, "broker: zmq_socket: %s", zmq_strerror(errno));
        goto fail;
    }
    int one = 1, zero = 0, hwm = 100000;
    zmq_setsockopt(b->router, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
    zmq_setsockopt(b->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(b->router, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(b->router, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (chat_curve_server(b->zctx, b->router, b->endpoint, &b->curve, err, errlen)) goto fail;
    ensure_ipc_dir(b->endpoint);
    if (zmq_bind(b->router, b->endpoint)) {
        chat_fail(err, errlen, CHAT_ERR, "broker: cannot bind %s: %s", b->endpoint, zmq_strerror(errno));
        goto fail;
    }
    return b;
fail:
    sb_broker_free(b);
    return NULL;
}

void sb_broker_stop(sb_broker *b)
{
    if (b) b->stopped = true;
}

void sb_broker_free(sb_broker *b)
{
    if (!b) return;
    sb_broker_stop(b);
    if (b->router) zmq_close(b->router);
    if (b->zctx) zmq_ctx_term(b->zctx);
    chat_curve_zap_free(b->curve); /* its thread ended with the context */
    for (sb_cmd *c = b->cmd_head, *n; c; c = n) {
        n = c->next;
        sb_job_free(c->job);
        free(c);
    }
    for (sb_event *e = b->ev_head, *n; e; e = n)
        n = e->next, sb_event_free(e);
    for (sb_event *e = b->out_head, *n; e; e = n)
        n = e->next, sb_event_free(e);
    for (sb_worker *w = b->workers, *n; w; w = n)
        n = w->next, free(w);
    /* Every live job is in the map, queued or running. */
    for (size_t i = 0; i < b->jobs.cap; i++)
        if (b->jobs.slots[i].key) sb_job_free(b->jobs.slots[i].val);
    sm_free(&b->jobs);
    free(b->early);
    chat_wire_msg_clear(&b->msg);
    free(b);
}

/* Asks the loop for a run soon: a run in progress sees the command before it returns. */
static void kick(sb_broker *b)
{
    if (!b->in_run && !b->stopped && b->loop.kick) b->loop.kick(b->loop.ud);
}

static void push_cmd(sb_broker *b, sb_cmd *c)
{
    bool was_empty = b->cmd_head == NULL;
    CHAT_QUEUE_APPEND(b->cmd_head, b->cmd_tail, c, next);
    if (was_empty) kick(b);
}

void sb_broker_submit(sb_broker *b, sb_job *job)
{
    sb_cmd *c = calloc(1, sizeof *c);
    if (!c) { /* cannot even queue the command: answer locally */
        sb_event *e = sb_event_new(job->id, SB_EV_FRAME, chat_proto_error_oom, strlen(chat_proto_error_oom), NULL);
        sb_job_free(job);
        if (!e) return;
        e->terminal = 1;
        e->error = 1;
        out_append(b, e); /* delivered by the next run */
        kick(b);
        return;
    }
    c->kind = CMD_SUBMIT;
    c->job = job;
    push_cmd(b, c);
}

static void push_job_cmd(sb_broker *b, cmd_kind kind, uint64_t job_id)
{
    sb_cmd *c = calloc(1, sizeof *c);
    if (!c) {
        chat_log_error("broker: out of memory; %s of job %" PRIu64 " lost", kind == CMD_CANCEL ? "cancel" : "detach",
                       job_id);
        return;
    }
    c->kind = kind;
    c->job_id = job_id;
    push_cmd(b, c);
}

void sb_broker_cancel(sb_broker *b, uint64_t job_id)
{
    push_job_cmd(b, CMD_CANCEL, job_id);
}

void sb_broker_detach(sb_broker *b, uint64_t job_id)
{
    push_job_cmd(b, CMD_DETACH, job_id);
}

sb_event *sb_broker_take_events(sb_broker *b)
{
    sb_event *e = b->ev_head;
    b->ev_head = b->ev_tail = NULL;
    return e;
}

void sb_broker_stats(sb_broker *b, sb_stats *out)
{
    out->workers_live = atomic_load(&b->n_live);
    out->starting = starting(b, chat_now_ms());
    out->workers_busy = atomic_load(&b->n_busy);
    out->jobs_queued = atomic_load(&b->n_queued);
    out->jobs_running = atomic_load(&b->n_running);
    out->jobs_done = atomic_load(&b->n_done);
    out->jobs_failed = atomic_load(&b->n_failed);
    chat_curve_zap_stats(b->curve, &out->curve);
}

size_t sb_broker_workers_json(sb_broker *b, char *buf, size_t len, size_t cap)
{
    chat_buf j;
    chat_buf_init(&j);
    for (sb_worker *w = b->workers; w; w = w->next)
        chat_buf_printf(&j, "%s{\"pid\":%d,\"busy\":%s,\"slots\":%d,\"running\":%d%s}", w == b->workers ? "" : ",",
                        w->pid, w->running ? "true" : "false", w->capacity, w->running,
                        w->retiring ? ",\"retiring\":true" : "");
    int n = snprintf(buf + len, cap > len ? cap - len : 0, ",\"workers\":[%s]", j.data ? j.data : "");
    chat_buf_free(&j);
    if (n < 0 || len + (size_t)n >= cap) { /* too many workers for the buffer: leave the list out */
        if (len < cap) buf[len] = '\0';
        return len;
    }
    return len + (size_t)n;
}
