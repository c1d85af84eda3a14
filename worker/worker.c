/* One chat-worker process: one DEALER to the streamer's broker; CHAT_WORKER_SLOTS answers at once.
 *
 * Design choices:
 * - A slot is an answer in flight, not a thread. Its database stages (session, history, retrieval, then
 *   storing the turn) run on CHAT_WORKER_DB_CONNS stage threads, each with its own pipeline and
 *   connection (chat_pipeline_begin / chat_pipeline_end), and its generation on the one generator thread
 *   (chat_llm_loop: every openai transfer on one libcurl multi handle, the extractive provider's paced
 *   tokens on timers). A model streams for seconds at little CPU, so thousands of answers stream with a
 *   handful of threads; with a thread per answer, every token woke its own thread and 1,280 slots cost
 *   230 MB and most of a CPU in context switches at 50,000 tokens per second. A generation that never
 *   waits (chat_llm_instant: the extractive provider without a token delay) runs on the stage thread
 *   instead: handing it to the generator and back would cost two thread wake-ups and buy nothing.
 * - A stage thread takes the tasks of one kind that wait at the head of the queue together (up to
 *   CHAT_MEMORY_BATCH_MAX) and ends their answers with one chat_pipeline_end_many: under load, one INSERT
 *   stores several turns. When the queue is short a group is one task, so nothing waits for another.
 * - One main thread owns the DEALER and never blocks for long: it heartbeats every
 *   CHAT_WIRE_HEARTBEAT_MS even while every slot is busy, so the broker can tell a busy worker from a
 *   dead one, and it receives CANCEL while answers stream. READY tells the broker how many slots there
 *   are; the broker sends at most that many jobs at once.
 * - One DEALER per process: a token's way out is one wake of the main thread, which drains whatever
 *   every slot produced meanwhile, and one ZeroMQ I/O thread that writes many messages per system call.
 * - ZeroMQ sockets belong to one thread, so the stage threads and the generator do not write to the
 *   DEALER, and only the main thread speaks the broker's wire (chat_wire.h). What an answer produces
 *   waits in its slot (progress steps and tokens in buffers, the terminal event as an owned copy), and
 *   the producing thread sends a note, an 8-byte {slot, kind} part on its own inproc PUSH to the main
 *   thread's PULL, which then builds the events from the slot. A slow broker back-pressures the answers
 *   through the high-water marks instead of growing a queue.
 * - The answer's first token is sent at once (a TOKENS note, which sends the steps waiting before it);
 *   later tokens, and steps that no token follows yet, are gathered for CHAT_TOKEN_FLUSH_MS (2): the
 *   first slot to have something waiting sends a TICK, and when the interval is over the main thread
 *   sends every waiting slot's steps and tokens, one event per step and one per answer's tokens. With
 *   hundreds of answers streaming a token every few tens of milliseconds, that is one wake-up of the main
 *   thread (and of the broker and the event loop behind it) per interval instead of one per token, for
 *   at most 2 ms more between tokens; the first token is never held back (an instant generation's tokens
 *   all leave with complete, microseconds later). Batching never merges frames: a token event lists its
 *   pieces' lengths, and the streamer sends each piece as its own frame. 0 sends each step and token at
 *   once. The main thread swaps a slot's buffers with spare ones of its own, so sending tokens allocates
 *   nothing.
 * - After every answer the stage thread that finished it sends a DONE note. If an answer ever ended
 *   without a terminal event, the main thread supplies a PROCESSING_ERROR, so the broker never waits
 *   forever.
 * - The broker counts a slot free at the job's terminal event, which the DONE follows a moment later: a
 *   JOB arriving in between waits in a small FIFO and starts on the next DONE; so does one sent by a
 *   broker that does not count the slots a gone broker's answers hold. A waiting job is an answer like a
 *   slot's for CANCEL, DETACH and ATTACH (its followers move to its slot), so a client that dropped while
 *   it waited resumes it rather than asking again. A JOB is parsed once and copied once
 *   (chat_wire_job_dup): the slot owns that copy until DONE.
 * - Answers outlive the broker that asked for them (worker_answers.h): each slot keeps what its answer
 *   sent (appended after each send) and the ids of the streamers' subscriptions that follow it (ATTACH:
 *   a client that resumed, another tab); every event goes to the primary (the JOB's sender) and to each
 *   of them. A completed answer is kept per session for CHAT_RESUME_RETENTION_S. A primary whose client
 *   left DETACHes: its answer goes on (CHAT_ORPHAN_POLICY=finish, the default) or, with "cancel", stops
 *   once nobody has followed it for CHAT_ORPHAN_GRACE_S.
 * - Paranoid Pirate on this side: a broker silent for CHAT_WIRE_DEAD_MS is presumed gone and the socket
 *   is recreated; one that answers RESET has restarted and does not know us. Either way READY is sent
 *   again at once and the answers in flight go on as orphans: nothing goes under their job ids any more
 *   (the new broker numbers its jobs afresh), the streamer that comes back ATTACHes to them. A RESET
 *   before the broker said anything else since our READY answers a message we sent before it: ignored.
 * - An ATTACH that finds nothing held can ask for the session's owner (CHAT_WIRE_A_CHECK_OWNER): a stage
 *   thread looks it up (it has the database) and hands the answer back in a note, like the answers'.
 * - The pipeline's own "starting" progress is not forwarded: the streamer sent it when the message was
 *   accepted. Cancel sets the answer's atomic flag (looked at between stages, by the token callback, and
 *   by the generator, which is woken for it). */
#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_curve.h"
#include "chat_jwt.h"
#include "chat_kb.h"
#include "chat_list.h"
#include "chat_log.h"
#include "chat_memory.h"
#include "chat_pipeline.h"
#include "chat_proto.h"
#include "chat_spool.h"
#include "chat_util.h"
#include "chat_wire.h"
#include "worker_answers.h"

#define STOP_GIVE_UP_MS 5000 /* after the grace period and a cancel, exit anyway */
#define SLOT_EVENTS_HWM 10000
#define GEN_WAIT_MS 100      /* the generator's longest wait when nothing is due */
#define SPARE_MAX_BYTES 16384 /* a slot's emptied token buffer is kept for reuse up to this size */
#define CHAT_WORKER_MAX_PEERS 16 /* streamers one worker serves (endpoints in CHAT_ZMQ_ENDPOINT) */
#define BATCH_MAX_BYTES (1u << 20) /* a flush's TOKENS for one broker is sent once it reaches this */

typedef struct worker worker;

enum { STAGE_BEGIN, STAGE_END };

/* What a stage thread or the generator tells the main thread about a slot: one fixed-size part on its
 * inproc PUSH (worker-internal, never on the broker's wire). */
typedef enum {
    NOTE_TOKENS,   /* send the slot's waiting steps and tokens now (the answer's first token) */
    NOTE_TICK,     /* slots have steps or tokens waiting: send them within CHAT_TOKEN_FLUSH_MS */
    NOTE_TERMINAL, /* the answer's terminal event waits in the slot */
    NOTE_DONE,     /* the answer is over: the slot is free again */
    NOTE_CHECKED,  /* an owner check is done (a check_note, slot -1) */
} note_kind;

typedef struct note {
    int slot;
    int kind; /* note_kind */
} note;

/* Whether the user has the session, looked up for an ATTACH that found nothing held here
 * (CHAT_WIRE_A_CHECK_OWNER): main thread -> a stage thread (the database) -> main thread, which answers the
 * ATTACH and frees it. */
typedef struct owner_check {
    struct owner_check *next;
    uint64_t job_id;
    int peer; /* the broker that asked */
    int rc; /* chat_memory_session_exists's */
    char session_id[CHAT_SESSION_ID_MAX + 1];
    char user_id[256];
} owner_check;

typedef struct check_note {
    note n; /* {-1, NOTE_CHECKED} */
    owner_check *check;
} check_note;

/* What an answer produced that the main thread has not sent yet. ev: progress as "step\0message\0"
 * pairs (they always come before the answer's first token); tok: the pieces' text, one after another;
 * lens: each piece's length (chat_wire_token_piece_put), by which the streamer frames each piece. */
typedef struct slot_out {
    chat_buf ev, tok, lens;
} slot_out;

typedef struct slot {
    worker *w;
    int index;

    /* The answer in flight. The main thread fills these at assign; from then until DONE they belong to
     * whichever thread holds the slot: a stage thread (BEGIN), the generator, a stage thread (END),
     * handed on through the task queue and the generator's inbox (whose mutexes order the accesses).
     * job is the slot's own copy of the JOB (req points into it), freed by the main thread after DONE. */
    chat_wire_job *job;
    chat_user user;
    chat_request req;
    atomic_int cancel;
    int stage;             /* STAGE_BEGIN or STAGE_END, with the task */
    int64_t accepted_us;   /* when the main thread handed the job over */
    chat_run *run;         /* between chat_pipeline_begin and chat_pipeline_end */
    bool first_token_sent;
    int gen_rc;            /* the generation's outcome, for chat_pipeline_end */
    chat_llm_result gen_res;
    char gen_err[256];

    /* Main thread only. */
    bool busy; /* a job was handed over and its DONE is not seen yet */
    uint64_t job_id;
    int peer;  /* the broker that sent the JOB (w->peers) */
    bool terminal_sent;
    /* Who follows the answer, and what it sent (worker_answers.h). The primary is the broker that sent
     * the JOB, under job_id: it may DETACH (its client left: no more progress or tokens, the terminal
     * still goes, the broker counts the slot until then); orphan: that broker is gone (RESET or silent),
     * job_id means nothing to the broker there is now, so nothing at all goes under it. */
    bool primary, orphan;
    wa_subs subs;         /* subscriptions (ATTACH): every event goes under each of their ids too */
    wa_text sent;         /* the answer's pieces as they went out */
    int64_t unwatched_ms; /* since when nobody follows it (orphan policy cancel); 0: somebody does */

    /* What the answer produced, producing thread -> main thread, under tok_mu. terminal: the answer's
     * complete or error (an owned copy) until the main thread sends it. */
    pthread_mutex_t tok_mu;
    slot_out out;
    chat_wire_event *terminal;
    bool in_dirty; /* listed in w->dirty (under w->dirty_mu) */

    /* Main thread only: emptied buffers swapped in for out at each flush, so that producing and sending
     * reuse the same memory instead of allocating per flush. */
    slot_out spare;
} slot;

/* A FIFO of slot indexes with room for every slot (a slot is in at most one queue at a time). */
typedef struct slot_fifo {
    int *at;
    int head, len, cap;
} slot_fifo;

/* One broker (streamer) this worker serves: a DEALER connected to its endpoint, with its side of the
 * Paranoid Pirate conversation. A worker connects to every endpoint of CHAT_ZMQ_ENDPOINT (several
 * streamers share one pool); job and subscription ids are each broker's own, so they always travel
 * with the peer's index. Main thread only. */
typedef struct peer {
    char endpoint[512];
    void *dealer;
    chat_wire_msg m;       /* its last message (the buffer is reused) */
    int64_t last_heard_ms; /* when it last said anything */
    int64_t next_hb_ms;
    int64_t ready_at_ms;   /* when READY (or BYE) last went out */
    bool announce;         /* READY (or BYE) is owed */
    bool welcomed;         /* it said something other than RESET since our READY */
    chat_buf batch;        /* a flush's token events for this broker, sent as one TOKENS (chat_wire.h) */
} peer;

typedef struct stage_thread {
    worker *w;
    pthread_t thread;
    bool started;
    chat_pipeline *pipeline;
} stage_thread;

/* A JOB accepted while no slot was idle: it starts on the next slot that frees itself. Until then it is
 * cancelled, detached and followed (an ATTACH finds it, as a slot's answer) here. */
typedef struct waiting_job {
    chat_wire_job *job; /* owned */
    bool cancel;
    bool orphan; /* sent by a broker that is gone since */
    int peer;
    wa_subs subs; /* ATTACHes that follow it already: they move to its slot */
} waiting_job;

struct worker {
    chat_config cfg;
    void *zctx;
    char endpoint[64]; /* the inproc PULL the other threads push to */
    slot *slots;
    int n_slots;

    /* Stage threads: the database halves of every answer. */
    stage_thread *stages;
    int n_stages;
    chat_kb_stats *kb_stats; /* shared by the stage threads' pipelines */
    chat_spool *spool;       /* the process's turns the database could not take, or NULL (chat_spool.h) */
    pthread_mutex_t task_mu;
    pthread_cond_t task_cv;
    slot_fifo tasks;
    owner_check *checks_head, *checks_tail; /* under task_mu */
    bool stages_quit;

    /* The generator thread and its loop; inbox: slots whose generation is to start. */
    pthread_t gen_thread;
    bool gen_started;
    chat_llm_loop *loop;
    chat_llm *llm;
    bool instant; /* generations never wait (chat_llm_instant): the stage threads run them */
    pthread_mutex_t gen_mu;
    slot_fifo inbox;
    atomic_bool gen_quit;

    /* Main thread only. */
    int n_busy;
    int n_finishing;  /* busy slots whose terminal event went out (the broker counts them free) */
    int *idle;        /* stack of idle slot indexes */
    int n_idle;
    waiting_job *pending; /* ring of JOBs waiting for a DONE, capacity n_slots */
    int pend_head, pend_len;
    int n_orphaned; /* busy slots of a gone broker whose terminal is not handled yet: the broker does not count them */
    int64_t flush_at_ms; /* 0: no TICK pending */
    wa_store *kept;      /* completed answers, per session, for CHAT_RESUME_RETENTION_S */
    peer *peers;         /* the brokers served */
    int n_peers;
    bool orphan_cancel;  /* CHAT_ORPHAN_POLICY=cancel */
    int64_t next_sweep_ms;

    /* Slots with tokens waiting for the next flush, producing threads -> main thread. */
    pthread_mutex_t dirty_mu;
    int *dirty;
    int n_dirty;
    bool ticking; /* the main thread flushes every interval without a TICK (flush_dirty) */
    int *flushing; /* main thread: the list being flushed */
};

/* The calling thread's PUSH to the main thread (each stage thread and the generator has its own). */
static _Thread_local void *tl_push;

static void fifo_push(slot_fifo *f, int v)
{
    f->at[(f->head + f->len) % f->cap] = v;
    f->len++;
}

static int fifo_pop(slot_fifo *f)
{
    int v = f->at[f->head];
    f->head = (f->head + 1) % f->cap;
    f->len--;
    return v;
}

/* ---------------------------------------------------------------- events, from any thread but main */

/* Tells the main thread about s (blocking: at the high-water mark the answer waits). */
static void slot_note(slot *s, note_kind kind)
{
    note n = {s->index, (int)kind};
    zmq_send(tl_push, &n, sizeof n, 0);
}

/* Lists the slot for the next flush; the first slot listed since the last flush wakes the main thread,
 * unless it is ticking already (flush_dirty). */
static void mark_dirty(slot *s)
{
    worker *w = s->w;
    pthread_mutex_lock(&w->dirty_mu);
    bool first_dirty = w->n_dirty == 0 && !w->ticking;
    if (!s->in_dirty) {
        s->in_dirty = true;
        w->dirty[w->n_dirty++] = s->index;
    }
    pthread_mutex_unlock(&w->dirty_mu);
    if (first_dirty) slot_note(s, NOTE_TICK);
}

/* Progress waits in the slot like tokens do: the answer's first token, the terminal event or the
 * interval sends it, always before the tokens (with CHAT_TOKEN_FLUSH_MS 0, a TOKENS note sends it at
 * once). A note per step would cost: three through the PUSH and the main thread cost about a tenth of
 * the turns per second a worker manages. */
static void on_progress(void *ud, const char *step, const char *message)
{
    slot *s = ud;
    if (!strcmp(step, chat_proto_step_name(CHAT_STEP_STARTING))) return; /* the streamer sent it already */
    pthread_mutex_lock(&s->tok_mu);
    bool was_empty = s->out.ev.len == 0;
    chat_buf_append(&s->out.ev, step, strlen(step) + 1);
    chat_buf_append(&s->out.ev, message, strlen(message) + 1);
    pthread_mutex_unlock(&s->tok_mu);
    if (!was_empty) return;
    if (s->w->cfg.token_flush_ms == 0)
        slot_note(s, NOTE_TOKENS);
    else
        mark_dirty(s);
}

/* Runs on the generator thread. */
static int on_token(void *ud, const char *text, size_t len)
{
    slot *s = ud;
    if (!len || len > UINT32_MAX) return atomic_load(&s->cancel) ? 1 : 0; /* no piece to frame */
    unsigned char piece[4];
    chat_wire_token_piece_put(piece, (uint32_t)len);
    pthread_mutex_lock(&s->tok_mu);
    bool was_empty = s->out.tok.len == 0;
    int rc = chat_buf_append(&s->out.tok, text, len);
    if (!rc && (rc = chat_buf_append(&s->out.lens, piece, sizeof piece))) s->out.tok.len -= len; /* in step */
    pthread_mutex_unlock(&s->tok_mu);
    if (rc) return 1;
    if (s->w->instant && s->w->cfg.token_flush_ms > 0) {
        /* the whole answer follows within microseconds, and complete sends what waits: one event whose
         * pieces the streamer still sends as a frame each */
    } else if (!s->first_token_sent || s->w->cfg.token_flush_ms == 0) {
        s->first_token_sent = true;
        if (was_empty) slot_note(s, NOTE_TOKENS);
    } else if (was_empty) {
        mark_dirty(s);
    }
    return atomic_load(&s->cancel) ? 1 : 0;
}

/* Keeps the answer's terminal event in the slot for the main thread: a copy, as the pipeline's strings
 * do not outlive the call. Only the first counts. Out of memory, the slot's DONE supplies an error. */
static void slot_terminal(slot *s, const chat_wire_event *ev)
{
    chat_wire_event *copy = chat_wire_event_dup(ev);
    if (!copy) {
        chat_log_error("worker: out of memory keeping the end of job %" PRIu64, ev->job_id);
        return;
    }
    pthread_mutex_lock(&s->tok_mu);
    bool first = !s->terminal;
    if (first) s->terminal = copy;
    pthread_mutex_unlock(&s->tok_mu);
    if (!first) {
        chat_wire_event_free(copy);
        return;
    }
    slot_note(s, NOTE_TERMINAL);
}

static void on_complete(void *ud, const char *response, const char *session_id, const char *metadata_json)
{
    slot *s = ud;
    chat_wire_event ev = {.job_id = s->job->job_id,
                          .kind = CHAT_WIRE_EV_COMPLETE,
                          .complete = {chat_wire_cstr(response), chat_wire_cstr(session_id),
                                       chat_wire_cstr(metadata_json)}};
    slot_terminal(s, &ev);
}

static void on_error(void *ud, const char *code, const char *message)
{
    slot *s = ud;
    chat_wire_event ev = {.job_id = s->job->job_id,
                          .kind = CHAT_WIRE_EV_ERROR,
                          .error = {chat_wire_cstr(code), chat_wire_cstr(message)}};
    slot_terminal(s, &ev);
}

static void *push_open(worker *w)
{
    void *push = zmq_socket(w->zctx, ZMQ_PUSH);
    int hwm = SLOT_EVENTS_HWM, zero = 0;
    if (push) {
        zmq_setsockopt(push, ZMQ_SNDHWM, &hwm, sizeof hwm);
        zmq_setsockopt(push, ZMQ_LINGER, &zero, sizeof zero);
    }
    if (!push || zmq_connect(push, w->endpoint)) {
        chat_log_error("worker: a thread cannot reach the main thread: %s", zmq_strerror(errno));
        if (push) zmq_close(push);
        return NULL;
    }
    return push;
}

/* ---------------------------------------------------------------- stage threads */

static void stage_submit(worker *w, slot *s, int stage)
{
    s->stage = stage;
    pthread_mutex_lock(&w->task_mu);
    fifo_push(&w->tasks, s->index);
    pthread_cond_signal(&w->task_cv);
    pthread_mutex_unlock(&w->task_mu);
}

static void gen_submit(worker *w, slot *s)
{
    pthread_mutex_lock(&w->gen_mu);
    fifo_push(&w->inbox, s->index);
    pthread_mutex_unlock(&w->gen_mu);
    chat_llm_loop_wakeup(w->loop);
}

/* The first half of an answer: the request from the JOB, then chat_pipeline_begin. The run, ready to
 * generate; NULL when the answer already ended (its DONE is sent). */
static chat_run *stage_begin(stage_thread *st, slot *s)
{
    const chat_wire_job *job = s->job;
    memset(&s->user, 0, sizeof s->user);
    snprintf(s->user.id, sizeof s->user.id, "%s", job->user_id);
    snprintf(s->user.email, sizeof s->user.email, "%s", job->user_email);
    snprintf(s->user.name, sizeof s->user.name, "%s", job->user_name);
    s->req = (chat_request){
        .message = job->message,
        .session_id = job->session_id[0] ? job->session_id : NULL,
        .customer_id = job->customer_id[0] ? job->customer_id : NULL,
        .user = &s->user,
        .request_id = job->request_id[0] ? job->request_id : NULL,
        .accepted_us = s->accepted_us,
        .session_new = (job->flags & CHAT_WIRE_F_NEW_SESSION) && job->session_id[0],
    };
    chat_sink sink = {.ud = s, .progress = on_progress, .token = on_token, .complete = on_complete, .error = on_error};
    int rc = 0;
    chat_run *run = chat_pipeline_begin(st->pipeline, &s->req, &sink, &s->cancel, &rc);
    if (run) return run;
    if (rc) chat_log_debug("worker: job %" PRIu64 " ended with %s", job->job_id, chat_strerror(rc));
    slot_note(s, NOTE_DONE);
    return NULL;
}

/* Runs a group of tasks of one kind taken from the queue together (at most CHAT_MEMORY_BATCH_MAX):
 * their turns are then stored in one statement (chat_pipeline_end_many). Under load the queue holds
 * many; otherwise a group is one task and nothing waits for another. BEGIN tasks of a generation that
 * never waits (chat_llm_instant) are whole answers here: two thread hand-offs fewer than the generator
 * would cost. Other BEGIN tasks go to the generator one by one. */
static void stage_run(stage_thread *st, slot **group, int n)
{
    chat_run *runs[CHAT_MEMORY_BATCH_MAX];
    slot *done[CHAT_MEMORY_BATCH_MAX];
    int nr = 0;
    for (int i = 0; i < n; i++) {
        slot *s = group[i];
        if (s->stage == STAGE_END) {
            chat_run_set_outcome(s->run, s->gen_rc, &s->gen_res, s->gen_err);
            runs[nr] = s->run, done[nr++] = s;
            s->run = NULL;
            continue;
        }
        chat_run *run = stage_begin(st, s);
        if (!run) continue;
        if (!st->w->instant) {
            s->run = run;
            gen_submit(st->w, s);
            continue;
        }
        chat_pipeline_generate(st->pipeline, run);
        runs[nr] = run, done[nr++] = s;
    }
    if (!nr) return;
    chat_pipeline_end_many(st->pipeline, runs, (size_t)nr);
    for (int i = 0; i < nr; i++) slot_note(done[i], NOTE_DONE);
}

/* Looks the user's session up for an ATTACH and hands the result back to the main thread. */
static void run_check(stage_thread *st, owner_check *c)
{
    char err[256];
    c->rc = chat_memory_session_exists(chat_pipeline_db(st->pipeline), c->user_id, c->session_id, err, sizeof err);
    if (c->rc && c->rc != CHAT_ENOTFOUND) chat_log_warn("worker: looking a session up failed: %s", err);
    check_note cn = {{-1, NOTE_CHECKED}, c};
    zmq_send(tl_push, &cn, sizeof cn, 0);
}

static void *stage_main(void *arg)
{
    stage_thread *st = arg;
    worker *w = st->w;
    tl_push = push_open(w);
    if (!tl_push) return NULL;
    slot *group[CHAT_MEMORY_BATCH_MAX];
    for (;;) {
        pthread_mutex_lock(&w->task_mu);
        while (!w->tasks.len && !w->checks_head && !w->stages_quit)
            pthread_cond_wait(&w->task_cv, &w->task_mu);
        if (w->checks_head) { /* a resume waits on it: before the answers' stages */
            owner_check *c = w->checks_head;
            w->checks_head = c->next;
            if (!w->checks_head) w->checks_tail = NULL;
            pthread_mutex_unlock(&w->task_mu);
            run_check(st, c);
            continue;
        }
        if (!w->tasks.len) { /* quitting, and nothing left to do */
            pthread_mutex_unlock(&w->task_mu);
            break;
        }
        int n = 0;
        group[n++] = &w->slots[fifo_pop(&w->tasks)];
        /* more of the same kind that wait already: ENDs, or the BEGINs of answers made here */
        bool batchable = group[0]->stage == STAGE_END || w->instant;
        while (batchable && n < CHAT_MEMORY_BATCH_MAX && w->tasks.len &&
               w->slots[w->tasks.at[w->tasks.head]].stage == group[0]->stage)
            group[n++] = &w->slots[fifo_pop(&w->tasks)];
        pthread_mutex_unlock(&w->task_mu);
        stage_run(st, group, n);
    }
    zmq_close(tl_push);
    return NULL;
}

/* ---------------------------------------------------------------- the generator thread */

static int gen_token(void *ud, const char *text, size_t len)
{
    slot *s = ud;
    return chat_run_token(s->run, text, len);
}

static void gen_done(void *ud, int rc, const chat_llm_result *res, const char *err)
{
    slot *s = ud;
    s->gen_rc = rc;
    s->gen_res = *res;
    snprintf(s->gen_err, sizeof s->gen_err, "%s", err ? err : "");
    stage_submit(s->w, s, STAGE_END);
}

static void *gen_main(void *arg)
{
    worker *w = arg;
    tl_push = push_open(w);
    if (!tl_push) return NULL;
    while (!atomic_load(&w->gen_quit)) {
        chat_llm_loop_run(w->loop, GEN_WAIT_MS);
        for (;;) {
            pthread_mutex_lock(&w->gen_mu);
            int idx = w->inbox.len ? fifo_pop(&w->inbox) : -1;
            pthread_mutex_unlock(&w->gen_mu);
            if (idx < 0) break;
            slot *s = &w->slots[idx];
            char err[256] = "";
            int rc = chat_llm_start(w->loop, w->llm, chat_run_llm_request(s->run), gen_token, gen_done, s, &s->cancel,
                                    err, sizeof err);
            if (rc) {
                chat_llm_result none = {.finish_reason = "error"};
                gen_done(s, rc, &none, err);
            }
        }
    }
    zmq_close(tl_push);
    return NULL;
}

/* ---------------------------------------------------------------- main thread */

/* A DEALER connected to endpoint, the index-th of CHAT_ZMQ_ENDPOINT (its CURVE streamer key). */
static void *dealer_open(worker *w, const char *endpoint, size_t index)
{
    void *d = zmq_socket(w->zctx, ZMQ_DEALER);
    if (!d) return NULL;
    int zero = 0, hwm = 100000, ivl = 100, ivl_max = 1000;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(d, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    if (chat_curve_client(d, endpoint, index)) { /* CURVE keys or plain (chat_curve.h); logged */
        zmq_close(d);
        return NULL;
    }
    if (zmq_connect(d, endpoint)) {
        chat_log_error("worker: cannot connect to %s: %s", endpoint, zmq_strerror(errno));
        zmq_close(d);
        return NULL;
    }
    return d;
}

/* READY with this broker's share of the slots: every broker dispatches up to what it was told, so
 * together they never ask more than the process has. */
static void send_ready(worker *w, void *dealer)
{
    int share = w->n_slots / (w->n_peers > 0 ? w->n_peers : 1);
    chat_wire_cmd ready = {.kind = CHAT_WIRE_READY, .ready = {.pid = (int)getpid(), .slots = share > 0 ? share : 1}};
    chat_wire_send(dealer, NULL, &ready, ZMQ_DONTWAIT);
}

static void *dealer_of(worker *w, int p)
{
    return w->peers[p].dealer;
}

static void send_cmd(void *dealer, chat_wire_kind kind)
{
    chat_wire_send(dealer, NULL, &(chat_wire_cmd){.kind = kind}, ZMQ_DONTWAIT);
}

static void send_job_error(void *dealer, uint64_t id, const char *code, const char *message)
{
    chat_wire_event ev = {.job_id = id,
                          .kind = CHAT_WIRE_EV_ERROR,
                          .error = {chat_wire_cstr(code), chat_wire_cstr(message)}};
    chat_wire_send_event(dealer, &ev, ZMQ_DONTWAIT);
}

/* ---------------------------------------------------------------- followers */

/* Sends broker p's batch: every event the notes or the flush just handled produced for it, in order,
 * as one EVS message (chat_wire.h). Blocking: at the high-water mark the pipeline waits rather than
 * losing an event. No batch is left waiting once the notes or a flush are handled, so a direct send
 * (ATTACHED, a refusal) is never overtaken. */
static void send_batch(worker *w, int p)
{
    chat_buf *b = &w->peers[p].batch;
    if (!b->len) return;
    chat_wire_cmd cmd = {.kind = CHAT_WIRE_EVS, .events = {{b->data, b->len}, 0}};
    if (chat_wire_send(dealer_of(w, p), NULL, &cmd, 0)) chat_log_warn("worker: events not sent: %s", zmq_strerror(errno));
    chat_buf_reset(b); /* its memory serves the next one: one buffer per broker */
}

static void send_batches(worker *w)
{
    for (int p = 0; p < w->n_peers; p++)
        send_batch(w, p);
}

/* Adds ev under job_id to broker p's batch; one that cannot grow is sent, then ev on its own. */
static void send_to_peer(worker *w, int p, uint64_t job_id, chat_wire_event ev)
{
    ev.job_id = job_id;
    if (!chat_wire_events_add(&w->peers[p].batch, &ev)) {
        if (w->peers[p].batch.len >= BATCH_MAX_BYTES) send_batch(w, p); /* well within the receiver's limit */
        return;
    }
    send_batch(w, p);
    if (chat_wire_send_event(dealer_of(w, p), &ev, 0)) chat_log_warn("worker: event not sent: %s", zmq_strerror(errno));
}

/* Sends ev (its job_id aside) to whoever follows the answer: the primary (for a terminal event even
 * after it detached, so that the broker frees the slot; never once orphaned) and every subscription. */
static void send_followers(worker *w, slot *s, chat_wire_event ev)
{
    bool terminal = chat_wire_event_terminal(ev.kind);
    if (!s->orphan && (s->primary || terminal)) send_to_peer(w, s->peer, s->job_id, ev);
    for (size_t i = 0; i < s->subs.n; i++)
        send_to_peer(w, s->subs.at[i].tag, s->subs.at[i].id, ev);
}

/* The orphan policy: with "cancel", an answer nobody has followed for CHAT_ORPHAN_GRACE_S stops. */
static void watch_check(worker *w, slot *s, int64_t now)
{
    if (!w->orphan_cancel || !s->busy || s->terminal_sent || atomic_load(&s->cancel)) return;
    if ((s->primary && !s->orphan) || s->subs.n) {
        s->unwatched_ms = 0;
        return;
    }
    if (!s->unwatched_ms) s->unwatched_ms = now;
    if (now - s->unwatched_ms < (int64_t)w->cfg.orphan_grace_s * 1000) return;
    atomic_store(&s->cancel, 1);
    chat_llm_loop_wakeup(w->loop);
    chat_log_info("worker: job %" PRIu64 " cancelled: nobody follows it", s->job_id);
}

static void orphan_sweep(worker *w, int64_t now)
{
    if (!w->orphan_cancel || now < w->next_sweep_ms) return;
    w->next_sweep_ms = now + 250;
    for (int i = 0; i < w->n_slots; i++) watch_check(w, &w->slots[i], now);
}

/* The k-th job waiting for a slot, oldest first (k < pend_len). */
static waiting_job *waiting_at(worker *w, int k)
{
    return &w->pending[(w->pend_head + k) % w->n_slots];
}

/* Broker p that sent jobs is gone: nothing goes under their ids or its subscriptions' any more, but the
 * answers go on (CHAT_ORPHAN_POLICY) and stay resumable; the ones waiting for a slot too. */
static void orphan_all(worker *w, int p)
{
    int64_t now = chat_now_ms();
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        wa_subs_drop_tag(&s->subs, p);
        if (s->busy && !s->orphan && s->peer == p) {
            s->orphan = true;
            if (!s->terminal_sent) w->n_orphaned++;
        }
        if (s->busy) watch_check(w, s, now);
    }
    for (int k = 0; k < w->pend_len; k++) {
        waiting_job *q = waiting_at(w, k);
        wa_subs_drop_tag(&q->subs, p);
        if (q->peer == p) q->orphan = true;
    }
}

/* The slot streaming user_id's session_id's answer (its terminal not sent yet) for the user's ATTACH, or
 * NULL: the one named answer_id if any, else the session's. A session is the user's own (chat_memory.h):
 * another user's answer in a session of the same id is another conversation's, never found here. */
static slot *answer_of(worker *w, const char *user_id, const char *session_id, const char *answer_id)
{
    slot *found = NULL;
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        if (!s->busy || s->terminal_sent || strcmp(s->job->user_id, user_id) ||
            !chat_id_equal(s->job->session_id, session_id))
            continue;
        if (*answer_id && !strcmp(s->job->request_id, answer_id)) return s;
        if (!found) found = s;
    }
    return found;
}

/* The same among the jobs waiting for a slot (accepted, not started: nothing sent yet), or NULL. */
static waiting_job *waiting_answer_of(worker *w, const char *user_id, const char *session_id, const char *answer_id)
{
    waiting_job *found = NULL;
    for (int k = 0; k < w->pend_len; k++) {
        waiting_job *q = waiting_at(w, k);
        if (strcmp(q->job->user_id, user_id) || !chat_id_equal(q->job->session_id, session_id)) continue;
        if (*answer_id && !strcmp(q->job->request_id, answer_id)) return q;
        if (!found) found = q;
    }
    return found;
}

static void send_attached(void *dealer, const chat_wire_attached *a)
{
    chat_wire_cmd c = {.kind = CHAT_WIRE_ATTACHED, .attached = *a};
    if (chat_wire_send(dealer, NULL, &c, 0)) chat_log_warn("worker: ATTACHED not sent: %s", zmq_strerror(errno));
}

/* An ATTACH: what is held of the user's session, from the answer streaming or waiting for a slot (the
 * streamer then follows it) or the completed one kept; nothing held, the database says whether the user
 * has the session when asked to. Nothing of another user's session of the same id is ever held for it. */
static void handle_attach(worker *w, int p, const chat_wire_attach *a)
{
    void *dealer = dealer_of(w, p);
    int64_t now = chat_now_ms();
    chat_wire_attached out = {.job_id = a->job_id, .status = CHAT_WIRE_ATT_NONE};
    slot *s = answer_of(w, a->user_id, a->session_id, a->answer_id);
    waiting_job *q = s ? NULL : waiting_answer_of(w, a->user_id, a->session_id, a->answer_id);
    const wa_kept *k = s || q ? NULL : wa_store_find(w->kept, a->user_id, a->session_id, now);
    if (s || q) {
        if (wa_subs_add(s ? &s->subs : &q->subs, a->job_id, p)) {
            send_job_error(dealer, a->job_id, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
            return;
        }
        static const wa_text nothing_sent;
        wa_attached(a, s ? &s->sent : &nothing_sent, s ? s->job->request_id : q->job->request_id, NULL, 0, &out);
        if (s) s->unwatched_ms = 0;
    } else if (k) {
        wa_attached(a, &k->text, k->answer_id, k->complete, now - k->finished_ms, &out);
    } else if (a->flags & CHAT_WIRE_A_CHECK_OWNER) {
        owner_check *c = calloc(1, sizeof *c);
        if (c) {
            c->job_id = a->job_id;
            c->peer = p;
            snprintf(c->session_id, sizeof c->session_id, "%s", a->session_id);
            snprintf(c->user_id, sizeof c->user_id, "%s", a->user_id);
            pthread_mutex_lock(&w->task_mu);
            CHAT_QUEUE_APPEND(w->checks_head, w->checks_tail, c, next);
            pthread_cond_signal(&w->task_cv);
            pthread_mutex_unlock(&w->task_mu);
            return; /* answered on its NOTE_CHECKED */
        }
    }
    send_attached(dealer, &out);
}

/* A session check is back: none when the user has the session (or the database could not say: a resume
 * then finds nothing, which gives nothing away), else unknown (whoever else has a session of that id). */
static void check_done(worker *w, owner_check *c)
{
    chat_wire_attached out = {.job_id = c->job_id, .status = CHAT_WIRE_ATT_NONE};
    if (c->rc == CHAT_ENOTFOUND) out.status = CHAT_WIRE_ATT_UNKNOWN;
    if (c->peer < w->n_peers) {
        send_batch(w, c->peer); /* a note's events for this broker go first, as they happened */
        send_attached(dealer_of(w, c->peer), &out);
    }
    free(c);
}

/* The busy slot whose primary (not orphaned) or subscription id is broker p's id; *sub says which. */
static slot *follower_of(worker *w, int p, uint64_t id, bool *sub)
{
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        if (!s->busy) continue;
        if (s->job_id == id && s->peer == p && !s->orphan) {
            *sub = false;
            return s;
        }
        if (wa_subs_has(&s->subs, id, p)) {
            *sub = true;
            return s;
        }
    }
    return NULL;
}

/* The same among the jobs waiting for a slot. */
static waiting_job *waiting_follower_of(worker *w, int p, uint64_t id, bool *sub)
{
    for (int k = 0; k < w->pend_len; k++) {
        waiting_job *q = waiting_at(w, k);
        if (q->job->job_id == id && q->peer == p && !q->orphan) {
            *sub = false;
            return q;
        }
        if (wa_subs_has(&q->subs, id, p)) {
            *sub = true;
            return q;
        }
    }
    return NULL;
}

/* DETACH: the primary (its client left) or a subscription no longer wants events; the answer goes on. */
static void detach_job(worker *w, int p, uint64_t id)
{
    bool sub;
    slot *s = follower_of(w, p, id, &sub);
    if (s && sub)
        wa_subs_remove(&s->subs, id, p);
    else if (s)
        s->primary = false;
    if (s) {
        watch_check(w, s, chat_now_ms());
        return;
    }
    waiting_job *q = waiting_follower_of(w, p, id, &sub);
    if (q && sub)
        wa_subs_remove(&q->subs, id, p);
    else if (q)
        q->job->flags |= CHAT_WIRE_F_DETACHED;
}

/* ---------------------------------------------------------------- jobs */

/* Hands q's job (ownership moves) to an idle slot, with the subscriptions that follow it (q keeps the
 * slot's emptied ones, to reuse), and queues its first stage. */
static void assign(worker *w, waiting_job *q)
{
    slot *s = &w->slots[w->idle[--w->n_idle]];
    chat_wire_job *job = q->job;
    bool orphan = q->orphan;
    q->job = NULL;
    s->job = job;
    s->peer = q->peer;
    atomic_store(&s->cancel, q->cancel ? 1 : 0);
    s->busy = true;
    s->job_id = job->job_id;
    s->terminal_sent = false;
    s->accepted_us = chat_now_us();
    s->first_token_sent = false;
    s->primary = !(job->flags & CHAT_WIRE_F_DETACHED);
    s->orphan = orphan;
    s->subs.n = 0;
    if (q->subs.n) {
        wa_subs followers = q->subs;
        q->subs = s->subs;
        s->subs = followers;
    }
    s->unwatched_ms = 0;
    wa_text_reset(&s->sent);
    if (orphan) w->n_orphaned++;
    w->n_busy++;
    chat_log_debug("worker: job %" PRIu64 " started on slot %d", s->job_id, s->index);
    watch_check(w, s, chat_now_ms());
    stage_submit(w, s, STAGE_BEGIN);
}

/* A JOB from the broker (spec points into the received message): its copy starts on an idle slot, or
 * waits for a slot whose terminal event went out (or one a gone broker's answer holds: this broker does
 * not count those); else the job is refused. */
static void start_job(worker *w, int p, const chat_wire_job *spec, bool stopping)
{
    void *dealer = dealer_of(w, p);
    /* a slot frees itself on its DONE: the broker may count it free a moment earlier */
    bool room = !stopping && (w->n_idle > 0 || w->pend_len < w->n_finishing + w->n_orphaned);
    if (!room) { /* the broker should never do this; answer rather than strand the client */
        send_job_error(dealer, spec->job_id, CHAT_CODE_OVERLOADED, "The worker is busy, please retry");
        return;
    }
    chat_wire_job *job = chat_wire_job_dup(spec);
    if (!job) {
        send_job_error(dealer, spec->job_id, CHAT_CODE_PROCESSING_ERROR, "Out of memory");
        return;
    }
    if (w->n_idle > 0) {
        assign(w, &(waiting_job){.job = job, .peer = p});
        return;
    }
    waiting_job *q = waiting_at(w, w->pend_len++);
    q->job = job;
    q->cancel = false;
    q->orphan = false;
    q->peer = p;
    q->subs.n = 0;
}

/* CANCEL: the job's, or, for a subscription's id, the answer it follows (a cancel from another tab
 * stops the answer for everybody). */
static void cancel_job(worker *w, int p, uint64_t id)
{
    bool sub;
    slot *s = follower_of(w, p, id, &sub);
    if (s) {
        atomic_store(&s->cancel, 1);
        chat_llm_loop_wakeup(w->loop); /* a generation stops at once, not at the next look */
        chat_log_debug("worker: job %" PRIu64 " cancelled%s", s->job_id, sub ? " by a follower" : "");
        return;
    }
    waiting_job *q = waiting_follower_of(w, p, id, &sub);
    if (q) q->cancel = true;
}

static void cancel_all(worker *w)
{
    for (int i = 0; i < w->n_slots; i++)
        if (w->slots[i].busy) atomic_store(&w->slots[i].cancel, 1);
    for (int k = 0; k < w->pend_len; k++)
        waiting_at(w, k)->cancel = true;
    chat_llm_loop_wakeup(w->loop);
}

/* One message from the broker; its kind (CHAT_WIRE_NONE when it was dropped). RESET is the caller's. */
static chat_wire_kind handle_broker(worker *w, int p, const chat_wire_msg *m, bool stopping)
{
    chat_wire_cmd c;
    char err[128];
    if (chat_wire_parse(m, NULL, &c, err, sizeof err)) {
        chat_log_warn("worker: a message from the broker dropped: %s", err);
        return CHAT_WIRE_NONE;
    }
    switch (c.kind) {
    case CHAT_WIRE_JOB:
        start_job(w, p, &c.job, stopping);
        break;
    case CHAT_WIRE_CANCEL:
        cancel_job(w, p, c.job_id);
        break;
    case CHAT_WIRE_ATTACH:
        handle_attach(w, p, &c.attach);
        break;
    case CHAT_WIRE_DETACH:
        detach_job(w, p, c.job_id);
        break;
    default: /* HB: the sign of life is all; READY, EV, ATTACHED and BYE only go the other way */
        break;
    }
    return c.kind;
}

static void slot_out_init(slot_out *o)
{
    chat_buf_init(&o->ev);
    chat_buf_init(&o->tok);
    chat_buf_init(&o->lens);
}

static void slot_out_free(slot_out *o)
{
    chat_buf_free(&o->ev);
    chat_buf_free(&o->tok);
    chat_buf_free(&o->lens);
}

/* Empties a buffer kept for the next flush; one that a long instant answer grew is let go, so that
 * thousands of slots do not each keep their largest answer. */
static void spare_reset(chat_buf *b)
{
    if (b->cap > SPARE_MAX_BYTES)
        chat_buf_free(b);
    else
        chat_buf_reset(b);
}

static void slot_out_spare_reset(slot_out *o)
{
    spare_reset(&o->ev);
    spare_reset(&o->tok);
    spare_reset(&o->lens);
}

/* Sends what waits in the slot's buffers: the progress steps, each as its event, then the tokens as one
 * event, to every follower, and appends the tokens to what the answer sent (after sending: what an
 * ATTACH is told and what follows it meet at the same piece). The buffers are swapped with the slot's
 * spares under the lock, and sent from there. */
static void flush_tokens(worker *w, slot *s)
{
    pthread_mutex_lock(&s->tok_mu);
    slot_out o = s->out;
    s->out = s->spare;
    pthread_mutex_unlock(&s->tok_mu);
    for (size_t at = 0; at < o.ev.len;) {
        const char *step = o.ev.data + at;
        size_t sl = strlen(step);
        const char *message = step + sl + 1;
        size_t ml = strlen(message);
        at += sl + ml + 2;
        send_followers(w, s, (chat_wire_event){.kind = CHAT_WIRE_EV_PROGRESS, .progress = {{step, sl}, {message, ml}}});
    }
    if (o.tok.len) {
        chat_wire_str text = {o.tok.data, o.tok.len}, pieces = {o.lens.data, o.lens.len};
        send_followers(w, s, (chat_wire_event){.kind = CHAT_WIRE_EV_TOKEN, .token = {text, pieces}});
        if (wa_text_append(&s->sent, text, pieces))
            chat_log_error("worker: out of memory keeping job %" PRIu64 "'s text: it cannot be resumed whole", s->job_id);
    }
    s->spare = o;
    slot_out_spare_reset(&s->spare);
}

/* Sends the answer's terminal event if it waits in the slot, after the steps and tokens before it: the
 * first one only (the broker frees the slot on it). A complete is kept for resuming, with its text. */
static void send_terminal(worker *w, slot *s)
{
    pthread_mutex_lock(&s->tok_mu);
    chat_wire_event *ev = s->terminal;
    s->terminal = NULL;
    pthread_mutex_unlock(&s->tok_mu);
    if (!ev) return;
    if (!s->terminal_sent) {
        flush_tokens(w, s); /* nothing may follow the terminal event */
        send_followers(w, s, *ev);
        s->terminal_sent = true;
        if (s->orphan) w->n_orphaned--;
        w->n_finishing++;
        const chat_wire_job *j = s->job;
        if (ev->kind == CHAT_WIRE_EV_COMPLETE && j->session_id[0] && j->request_id[0] &&
            wa_store_put(w->kept, j->user_id, j->session_id, j->request_id, &s->sent, ev, chat_now_ms()))
            chat_log_error("worker: out of memory keeping job %" PRIu64 "'s answer for resuming", s->job_id);
        s->subs.n = 0;
    }
    chat_wire_event_free(ev);
}

static void slot_done(worker *w, slot *s)
{
    send_terminal(w, s); /* normally sent already, on its own note */
    flush_tokens(w, s);
    if (!s->terminal_sent) {
        chat_log_error("worker: the pipeline ended job %" PRIu64 " without a terminal event", s->job_id);
        if (s->orphan) w->n_orphaned--;
        send_followers(w, s, (chat_wire_event){.kind = CHAT_WIRE_EV_ERROR,
                                               .error = {chat_wire_cstr(CHAT_CODE_PROCESSING_ERROR),
                                                         chat_wire_cstr("Error during message processing")}});
    } else {
        w->n_finishing--;
    }
    /* debug: the broker logs every turn once, with its outcome and duration (the streamer's log) */
    chat_log_debug("worker: job %" PRIu64 " done in %" PRId64 " ms%s", s->job_id, (chat_now_us() - s->accepted_us) / 1000,
                   atomic_load(&s->cancel) ? " (cancelled)" : "");
    chat_wire_job_free(s->job);
    s->job = NULL;
    s->busy = false;
    s->job_id = 0;
    s->orphan = false;
    s->subs.n = 0;
    if (s->sent.text.cap > SPARE_MAX_BYTES) wa_text_free(&s->sent); /* as the spares: no slot keeps its largest */
    w->n_busy--;
    w->idle[w->n_idle++] = s->index;
    if (w->pend_len) { /* accepted earlier: it runs even when stopping */
        waiting_job *q = waiting_at(w, 0);
        w->pend_head = (w->pend_head + 1) % w->n_slots;
        w->pend_len--;
        assign(w, q);
    }
}

/* Sends what every slot that listed itself since the last flush has waiting, in one EVS message per
 * broker. A flush that found something keeps the main thread ticking: the next flush is due one
 * interval later whatever comes, and producers send no TICK meanwhile. With answers streaming
 * continuously that is one wake-up of the main thread per interval (its timer) instead of two (a TICK
 * from the first producer after each flush, then the timer); a flush that finds nothing stops it, and
 * the next producer's TICK starts it again. Returns how many slots it flushed. */
static int flush_dirty(worker *w)
{
    pthread_mutex_lock(&w->dirty_mu);
    int n = w->n_dirty;
    memcpy(w->flushing, w->dirty, (size_t)n * sizeof *w->flushing);
    for (int i = 0; i < n; i++) w->slots[w->dirty[i]].in_dirty = false;
    w->n_dirty = 0;
    w->ticking = n > 0;
    pthread_mutex_unlock(&w->dirty_mu);
    for (int i = 0; i < n; i++)
        if (w->slots[w->flushing[i]].busy) flush_tokens(w, &w->slots[w->flushing[i]]);
    send_batches(w);
    return n;
}

/* A note from a stage thread or the generator. */
static void handle_note(worker *w, const note *n)
{
    if (n->kind == NOTE_CHECKED) {
        check_done(w, ((const check_note *)n)->check);
        return;
    }
    if (n->slot < 0 || n->slot >= w->n_slots) return;
    slot *s = &w->slots[n->slot];
    if (n->kind == NOTE_TICK) {
        if (!w->flush_at_ms) w->flush_at_ms = chat_now_ms() + w->cfg.token_flush_ms;
        return;
    }
    if (!s->busy) return;
    switch ((note_kind)n->kind) {
    case NOTE_TOKENS:
        flush_tokens(w, s);
        return;
    case NOTE_TERMINAL:
        send_terminal(w, s);
        return;
    case NOTE_DONE:
        slot_done(w, s);
        return;
    case NOTE_TICK:
    case NOTE_CHECKED:
        return;
    }
}

/* Takes every note waiting on the PULL, then sends what they produced. */
static void receive_notes(worker *w, void *pull)
{
    check_note cn;
    int got;
    while ((got = zmq_recv(pull, &cn, sizeof cn, ZMQ_DONTWAIT)) >= 0)
        if (got == (int)sizeof(note) || (got == (int)sizeof cn && cn.n.kind == NOTE_CHECKED)) handle_note(w, &cn.n);
    send_batches(w); /* what every note of this wake produced: one message per broker */
}

static worker *worker_new(const chat_config *cfg)
{
    worker *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->cfg = *cfg;
    w->n_slots = cfg->worker_slots > 0 ? cfg->worker_slots : 1;
    w->n_stages = cfg->worker_db_conns < w->n_slots ? cfg->worker_db_conns : w->n_slots;
    if (w->n_stages < 1) w->n_stages = 1;
    snprintf(w->endpoint, sizeof w->endpoint, "inproc://chat-worker-events-%p", (void *)w);
    size_t n = (size_t)w->n_slots;
    w->slots = calloc(n, sizeof *w->slots);
    w->stages = calloc((size_t)w->n_stages, sizeof *w->stages);
    w->idle = calloc(n, sizeof *w->idle);
    w->pending = calloc(n, sizeof *w->pending);
    w->dirty = calloc(n, sizeof *w->dirty);
    w->flushing = calloc(n, sizeof *w->flushing);
    w->tasks = (slot_fifo){.at = calloc(n, sizeof(int)), .cap = w->n_slots};
    w->inbox = (slot_fifo){.at = calloc(n, sizeof(int)), .cap = w->n_slots};
    w->kept = wa_store_new((int64_t)cfg->resume_retention_s * 1000, (size_t)cfg->resume_max_answers);
    w->orphan_cancel = !strcmp(cfg->orphan_policy, "cancel");
    if (!w->slots || !w->stages || !w->idle || !w->pending || !w->dirty || !w->flushing || !w->tasks.at ||
        !w->inbox.at || !w->kept) {
        free(w->slots), free(w->stages), free(w->idle), free(w->pending);
        free(w->dirty), free(w->flushing), free(w->tasks.at);
        free(w->inbox.at);
        wa_store_free(w->kept);
        free(w);
        return NULL;
    }
    pthread_mutex_init(&w->dirty_mu, NULL);
    pthread_mutex_init(&w->task_mu, NULL);
    pthread_cond_init(&w->task_cv, NULL);
    pthread_mutex_init(&w->gen_mu, NULL);
    atomic_init(&w->gen_quit, false);
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        s->w = w;
        s->index = i;
        pthread_mutex_init(&s->tok_mu, NULL);
        slot_out_init(&s->out);
        slot_out_init(&s->spare);
        wa_text_init(&s->sent);
        w->idle[w->n_slots - 1 - i] = i; /* slot 0 first */
    }
    for (int i = 0; i < w->n_stages; i++) w->stages[i].w = w;
    w->n_idle = w->n_slots;
    return w;
}

/* Frees everything; only when no other thread of the worker runs any more. */
static void worker_free(worker *w)
{
    for (int i = 0; i < w->n_slots; i++) {
        slot *s = &w->slots[i];
        chat_run_abandon(s->run);
        chat_wire_job_free(s->job);
        chat_wire_job_free(w->pending[i].job);
        wa_subs_free(&w->pending[i].subs);
        chat_wire_event_free(s->terminal);
        slot_out_free(&s->out);
        slot_out_free(&s->spare);
        wa_text_free(&s->sent);
        wa_subs_free(&s->subs);
        pthread_mutex_destroy(&s->tok_mu);
    }
    for (owner_check *c = w->checks_head, *next; c; c = next)
        next = c->next, free(c);
    wa_store_free(w->kept);
    for (int i = 0; i < w->n_stages; i++) chat_pipeline_free(w->stages[i].pipeline);
    chat_spool_free(w->spool);
    chat_kb_stats_free(w->kb_stats);
    chat_llm_loop_free(w->loop);
    chat_llm_free(w->llm);
    if (w->zctx) zmq_ctx_term(w->zctx);
    free(w->slots), free(w->stages), free(w->idle), free(w->pending);
    free(w->dirty), free(w->flushing), free(w->tasks.at);
    free(w->inbox.at);
    pthread_mutex_destroy(&w->dirty_mu);
    pthread_mutex_destroy(&w->task_mu);
    pthread_cond_destroy(&w->task_cv);
    pthread_mutex_destroy(&w->gen_mu);
    free(w);
}

/* Stops the stage threads and the generator. Returns false when some answer is still in flight (the
 * give-up path): its threads are then left running, detached, with the shared state they use. */
static bool threads_stop(worker *w)
{
    bool stuck = w->n_busy > 0;
    pthread_mutex_lock(&w->task_mu);
    w->stages_quit = true;
    pthread_cond_broadcast(&w->task_cv);
    pthread_mutex_unlock(&w->task_mu);
    atomic_store(&w->gen_quit, true);
    if (w->loop) chat_llm_loop_wakeup(w->loop);
    for (int i = 0; i < w->n_stages; i++) {
        if (!w->stages[i].started) continue;
        if (stuck)
            pthread_detach(w->stages[i].thread);
        else
            pthread_join(w->stages[i].thread, NULL);
    }
    if (w->gen_started) {
        if (stuck)
            pthread_detach(w->gen_thread);
        else
            pthread_join(w->gen_thread, NULL);
    }
    return !stuck;
}

/* Everything but the DEALER: the pipelines, the model, the inproc PULL, the stage and generator threads.
 * 0, or -1 (logged). */
static int worker_start(worker *w, void **pull)
{
    char err[256];
    w->kb_stats = chat_kb_stats_new(w->cfg.kb_common_pct);
    if (!w->kb_stats) return -1;
    for (int i = 0; i < w->n_stages; i++) {
        w->stages[i].pipeline = chat_pipeline_new(&w->cfg, err, sizeof err);
        if (!w->stages[i].pipeline) {
            chat_log_error("worker: %s", err);
            return -1;
        }
        chat_pipeline_share_kb_stats(w->stages[i].pipeline, w->kb_stats);
    }
    if (w->n_stages) chat_kb_fulltext_warn(chat_pipeline_db(w->stages[0].pipeline), "worker");
    /* without a spool the worker still serves: a turn the database cannot take then ends NOT_STORED */
    if (chat_spool_open(&w->cfg, "worker", true, &w->spool, err, sizeof err))
        chat_log_error("worker: no spool for turns the database cannot take: %s", err);
    for (int i = 0; w->spool && i < w->n_stages; i++) chat_pipeline_use_spool(w->stages[i].pipeline, w->spool);
    w->llm = chat_llm_new(&w->cfg, err, sizeof err);
    if (w->llm) w->loop = chat_llm_loop_new(err, sizeof err);
    if (!w->llm || !w->loop) {
        chat_log_error("worker: %s", err);
        return -1;
    }
    w->instant = chat_llm_instant(w->llm);
    w->zctx = zmq_ctx_new();
    if (!w->zctx) return -1;
    *pull = zmq_socket(w->zctx, ZMQ_PULL);
    int hwm = SLOT_EVENTS_HWM * 4;
    if (*pull) zmq_setsockopt(*pull, ZMQ_RCVHWM, &hwm, sizeof hwm);
    if (!*pull || zmq_bind(*pull, w->endpoint)) {
        chat_log_error("worker: inproc socket: %s", zmq_strerror(errno));
        return -1;
    }
    for (int i = 0; i < w->n_stages; i++) {
        if (pthread_create(&w->stages[i].thread, NULL, stage_main, &w->stages[i])) {
            chat_log_error("worker: cannot start stage thread %d: %s", i, strerror(errno));
            return -1;
        }
        w->stages[i].started = true;
    }
    if (pthread_create(&w->gen_thread, NULL, gen_main, w)) {
        chat_log_error("worker: cannot start the generator thread: %s", strerror(errno));
        return -1;
    }
    w->gen_started = true;
    return 0;
}

/* The main thread's loop state besides the peers (w->peers). */
typedef struct main_loop {
    void *pull;
    int64_t stop_at_ms; /* 0 until asked to stop */
    bool bye_sent, cancelled_for_stop;
} main_loop;

/* Sends kind to every broker. */
static void send_all(worker *w, chat_wire_kind kind)
{
    for (int p = 0; p < w->n_peers; p++) send_cmd(w->peers[p].dealer, kind);
}

/* While stopping: BYE once, cancel what still runs after the grace period, give up after that. True
 * when the loop is to end. */
static bool stop_due(worker *w, main_loop *ml, int64_t now)
{
    if (!ml->bye_sent) {
        send_all(w, CHAT_WIRE_BYE);
        ml->bye_sent = true;
        chat_log_info("worker: stopping%s", w->n_busy ? " after the jobs in flight" : "");
    }
    if (!w->n_busy && !w->pend_len) return true;
    int64_t grace = (int64_t)w->cfg.shutdown_grace_s * 1000;
    if (!ml->cancelled_for_stop && now - ml->stop_at_ms >= grace) {
        chat_log_warn("worker: grace period over, cancelling %d jobs", w->n_busy);
        cancel_all(w);
        ml->cancelled_for_stop = true;
    }
    if (now - ml->stop_at_ms >= grace + STOP_GIVE_UP_MS) {
        chat_log_error("worker: %d jobs did not stop, exiting anyway", w->n_busy);
        return true;
    }
    return false;
}

/* Sleeps until a broker or a slot has something, or the next timer. 0, or -1 on a socket error. */
static int wait_for_work(worker *w, main_loop *ml, int64_t now)
{
    int64_t wake_at = now + CHAT_WIRE_HEARTBEAT_MS;
    for (int p = 0; p < w->n_peers; p++)
        if (w->peers[p].next_hb_ms < wake_at) wake_at = w->peers[p].next_hb_ms;
    if (w->flush_at_ms && w->flush_at_ms < wake_at) wake_at = w->flush_at_ms;
    long timeout = wake_at > now ? (long)(wake_at - now) : 0;
    if (ml->stop_at_ms && timeout > 100) timeout = 100;
    zmq_pollitem_t items[1 + CHAT_WORKER_MAX_PEERS];
    items[0] = (zmq_pollitem_t){ml->pull, 0, ZMQ_POLLIN, 0};
    for (int p = 0; p < w->n_peers; p++) items[1 + p] = (zmq_pollitem_t){w->peers[p].dealer, 0, ZMQ_POLLIN, 0};
    if (zmq_poll(items, 1 + w->n_peers, timeout) < 0 && errno != EINTR) {
        chat_log_error("worker: zmq_poll: %s", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

/* Takes every message broker p sent, in order. A RESET once the broker knew us means it restarted and
 * does not know us any more: what its predecessor asked for goes on as orphans, and READY is owed. A
 * RESET before the broker said anything else since our READY answers a message we sent before that
 * READY (the broker answers every message of an unknown peer so): it is ignored. */
static void receive_broker(worker *w, main_loop *ml, int p, int64_t now)
{
    peer *pr = &w->peers[p];
    while (chat_wire_recv(pr->dealer, &pr->m, ZMQ_DONTWAIT) == 0) {
        pr->last_heard_ms = now;
        chat_wire_kind k = handle_broker(w, p, &pr->m, ml->stop_at_ms != 0);
        if (k != CHAT_WIRE_RESET) {
            if (k != CHAT_WIRE_NONE) pr->welcomed = true;
        } else if (pr->welcomed && !pr->announce) {
            chat_log_warn("worker: the broker at %s does not know us (restarted?), announcing again; %d answers go on",
                          pr->endpoint, w->n_busy);
            orphan_all(w, p);
            pr->announce = true;
        }
    }
}

/* Paranoid Pirate, the worker's side, for broker p: a silent broker means a new socket (new identity),
 * and its answers go on as orphans (CHAT_ORPHAN_POLICY) that a streamer may ATTACH to; READY goes out
 * at once (again if no welcome came within CHAT_WIRE_DEAD_MS). Then the heartbeat. False when no socket
 * could be opened. */
static bool keep_contact(worker *w, main_loop *ml, int p, int64_t now)
{
    peer *pr = &w->peers[p];
    if (now - pr->last_heard_ms > CHAT_WIRE_DEAD_MS) {
        chat_log_warn("worker: the broker at %s is silent, reconnecting; %d answers go on", pr->endpoint, w->n_busy);
        zmq_close(pr->dealer);
        pr->dealer = dealer_open(w, pr->endpoint, (size_t)p);
        if (!pr->dealer) return false;
        pr->last_heard_ms = now;
        orphan_all(w, p);
        pr->announce = true;
    }
    if (!pr->welcomed && now - pr->ready_at_ms > CHAT_WIRE_DEAD_MS) pr->announce = true;
    if (pr->announce) {
        if (ml->bye_sent)
            send_cmd(pr->dealer, CHAT_WIRE_BYE);
        else
            send_ready(w, pr->dealer);
        pr->announce = pr->welcomed = false;
        pr->ready_at_ms = now;
    }
    if (now >= pr->next_hb_ms) {
        send_cmd(pr->dealer, CHAT_WIRE_HB);
        pr->next_hb_ms = now + CHAT_WIRE_HEARTBEAT_MS;
    }
    return true;
}

/* The main thread's loop, until stopped (or its sockets fail). */
static void serve(worker *w, main_loop *ml, volatile sig_atomic_t *stop)
{
    int64_t now = chat_now_ms();
    for (int p = 0; p < w->n_peers; p++) {
        w->peers[p].last_heard_ms = w->peers[p].ready_at_ms = now;
        w->peers[p].next_hb_ms = now + CHAT_WIRE_HEARTBEAT_MS;
    }
    for (;;) {
        now = chat_now_ms();
        if (*stop && !ml->stop_at_ms) ml->stop_at_ms = now;
        if (ml->stop_at_ms && stop_due(w, ml, now)) return;
        if (wait_for_work(w, ml, now)) return;
        now = chat_now_ms();
        for (int p = 0; p < w->n_peers; p++) receive_broker(w, ml, p, now);
        receive_notes(w, ml->pull);
        if (w->flush_at_ms && chat_now_ms() >= w->flush_at_ms)
            w->flush_at_ms = flush_dirty(w) ? chat_now_ms() + w->cfg.token_flush_ms : 0;
        orphan_sweep(w, now);
        for (int p = 0; p < w->n_peers; p++)
            if (!keep_contact(w, ml, p, now)) return;
    }
}

/* One peer per endpoint of the comma-separated list, each DEALER connected: 0, or -1 (logged). */
static int peers_open(worker *w, const char *list)
{
    w->peers = calloc(CHAT_WORKER_MAX_PEERS, sizeof *w->peers);
    if (!w->peers) return -1;
    for (const char *at = list; *at && w->n_peers < CHAT_WORKER_MAX_PEERS;) {
        while (*at == ',' || *at == ' ') at++;
        size_t n = strcspn(at, ", ");
        if (!n) break;
        peer *pr = &w->peers[w->n_peers];
        snprintf(pr->endpoint, sizeof pr->endpoint, "%.*s", (int)n, at);
        chat_wire_msg_init(&pr->m);
        pr->dealer = dealer_open(w, pr->endpoint, (size_t)w->n_peers);
        w->n_peers++;
        if (!pr->dealer) return -1;
        at += n;
    }
    if (!w->n_peers) chat_log_error("worker: CHAT_ZMQ_ENDPOINT names no endpoint");
    return w->n_peers ? 0 : -1;
}

static void peers_close(worker *w)
{
    for (int p = 0; w->peers && p < w->n_peers; p++) {
        if (w->peers[p].dealer) zmq_close(w->peers[p].dealer);
        chat_wire_msg_clear(&w->peers[p].m);
        chat_buf_free(&w->peers[p].batch);
    }
    free(w->peers);
    w->peers = NULL;
    w->n_peers = 0;
}

int worker_run(const chat_config *cfg, volatile sig_atomic_t *stop)
{
    worker *w = worker_new(cfg);
    if (!w) return 1;
    int rc = 1;
    main_loop ml = {0};
    if (worker_start(w, &ml.pull) == 0 && peers_open(w, cfg->zmq_endpoint) == 0) {
        for (int p = 0; p < w->n_peers; p++) send_ready(w, w->peers[p].dealer);
        chat_log_info("worker: ready with %d slots (%d stage threads, %s provider), connected to %s", w->n_slots,
                      w->n_stages, chat_llm_provider_name(w->llm), cfg->zmq_endpoint);
        serve(w, &ml, stop);
        rc = 0;
    }
    bool stopped = threads_stop(w);
    peers_close(w);
    if (ml.pull) zmq_close(ml.pull);
    if (stopped) worker_free(w);
    return rc;
}
