/* The streamer's broker: the ZeroMQ ROUTER socket the chat-worker processes connect to, and the queue of
 * jobs waiting for a worker.
 *
 * Threads: none of its own. Everything here runs on the thread of the streamer's event loop, which
 * watches sb_broker_fd and calls sb_broker_run when it is readable, when the delay the last run returned
 * is over, and soon after the loop's kick callback asks for it. Commands (submit, cancel, detach) queue
 * and take effect in the next run; events (tokens, ready-made JSON frames) come back through the loop's
 * events callback at the end of a run. No lock, no thread hand-off, no wake-up on the token path. */
#ifndef STREAMER_BROKER_H
#define STREAMER_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "chat_curve.h"
#include "chat_wire.h"

/* A job: allocated by sb_job_new (a JOB for a worker, with its own copy of the spec, chat_wire_job_dup)
 * or sb_sub_new (a subscription: follow a conversation's answer wherever it is generated), owned by the
 * broker after sb_broker_submit. The lws thread keeps only its id; both kinds answer with events under
 * it, the same way. */
typedef struct sb_job sb_job;

/* Copies spec (job_id included): the caller's strings may go once it returns. NULL on out of memory. */
sb_job *sb_job_new(const chat_wire_job *spec);
/* A subscription id to the answer of user_id's session_id: the one streaming, else the last one
 * completed within the retention window. The client has pieces 1..last_seq of answer answer_id (NULL:
 * of whichever answer the session has). target: a job of this streamer it follows (another tab's
 * message; 0: none known, every worker is asked). resume: a client's resume, answered first with a
 * "resumed" frame, SESSION_FORBIDDEN when the session is not the user's (or does not exist); a follow
 * (resume false) shows nothing when nothing is held. Strings are copied. NULL on out of memory. */
sb_job *sb_sub_new(uint64_t id, const char *user_id, const char *session_id, const char *answer_id,
                   uint64_t last_seq, uint64_t target, bool resume);
void sb_job_free(sb_job *job); /* accepts NULL */

enum {
    SB_EV_TOKEN = 1,    /* data: one piece's text; seq: its number */
    SB_EV_FRAME = 2,    /* data: a JSON frame ready to send */
    SB_EV_TOKENS = 3,   /* lws-side only: coalesced tokens, the range [start, end) of the session's answer */
    SB_EV_SNAPSHOT = 4, /* data: an answer's text so far, of which the client has [0, start); seq: its pieces */
    SB_EV_END = 5,      /* terminal, nothing to send (a follow that found nothing) */
};

/* An event for the lws thread. One allocation; the lws thread moves frames straight into a connection's
 * outbound queue, so this is also the outbound queue item. */
typedef struct sb_event {
    struct sb_event *next;
    uint64_t job_id;
    uint8_t kind;
    uint8_t terminal;       /* the job is over (complete or error) */
    uint8_t error;          /* SB_EV_FRAME: an error frame (set where it is built: nobody reads the JSON) */
    size_t start, end;      /* SB_EV_TOKENS; SNAPSHOT: start */
    uint64_t seq;           /* SB_EV_TOKEN(S), SNAPSHOT: the number of the answer's last piece in it */
    const char *session_id; /* terminal complete: the session id, inside this allocation; else NULL */
    size_t len;             /* bytes of data (without the NUL) */
    char data[];
} sb_event;

/* A frame event built from json (copied). session_id may be NULL. NULL on out of memory. */
sb_event *sb_event_new(uint64_t job_id, int kind, const char *data, size_t len, const char *session_id);
void sb_event_free(sb_event *e); /* accepts NULL */

typedef struct sb_stats {
    int workers_live; /* registered and heard from within CHAT_WIRE_DEAD_MS, not retiring */
    bool starting;    /* in the new broker's window (CHAT_STREAMER_START_WAIT_MS): workers may be on their way */
    int workers_busy;
    int jobs_queued; /* waiting for a worker */
    int jobs_running;
    unsigned long long jobs_done;
    unsigned long long jobs_failed;
    chat_curve_stats curve; /* workers refused by CURVE (chat_curve.h); zeros without CURVE */
} sb_stats;

typedef struct sb_broker sb_broker;

/* What the broker asks of the event loop that serves it. Both are called on the loop's thread. */
typedef struct sb_loop {
    void (*events)(void *ud); /* at the end of a run, when events wait: take them (sb_broker_take_events) */
    void (*kick)(void *ud);   /* a command was queued outside a run: call sb_broker_run soon */
    void *ud;
} sb_loop;

/* Binds the ROUTER at cfg->zmq_endpoint (the directory of an ipc path is created if missing), with
 * CURVE and a ZAP handler when the CHAT_CURVE_* settings ask for it (chat_curve.h; a network endpoint
 * without keys fails unless CHAT_ZMQ_INSECURE=1). loop is copied. NULL with err on failure. */
sb_broker *sb_broker_new(const chat_config *cfg, const sb_loop *loop, char *err, size_t errlen);
/* The descriptor to watch for reading: ZeroMQ's ZMQ_FD of the ROUTER. It belongs to ZeroMQ: watch a dup()
 * of it if the loop closes what it watches. -1 on error. */
int sb_broker_fd(sb_broker *b);
/* One run: the queued commands, the messages waiting (up to a bound), the timers that are due; then the
 * events go to the loop (its events callback). Returns the milliseconds until the next run is due if
 * nothing wakes the descriptor or kicks it before (0: at once, more is waiting), -1 once stopped. */
long sb_broker_run(sb_broker *b);
/* After it (idempotent, accepts NULL), sb_broker_run does nothing and the loop's callbacks are never
 * called again; submit, cancel and detach only queue. Call it before the loop goes away. */
void sb_broker_stop(sb_broker *b);
/* Closes the socket, frees queued jobs and events. Accepts NULL. */
void sb_broker_free(sb_broker *b);

/* Hands job to the broker (ownership moves). The broker answers with events for job->id: at once an
 * OVERLOADED error when no worker is live or the queue is full, later OVERLOADED when no worker freed up
 * within the queue deadline, else the worker's progress/token/terminal events. A subscription gets what
 * it missed first (SB_EV_SNAPSHOT), then the answer's later events (see sb_sub_new). */
void sb_broker_submit(sb_broker *b, sb_job *job);
/* Stops the answer: the job's, or the one a subscription follows (for everybody who follows it). It ends
 * with a terminal complete (finish_reason cancelled) from the worker, or from the broker if it had not
 * started. */
void sb_broker_cancel(sb_broker *b, uint64_t job_id);
/* The connection of job_id left: no more events for it. The answer itself goes on (the workers apply
 * CHAT_ORPHAN_POLICY): a job still waiting for a worker runs, a running one is stored whole and stays
 * resumable. */
void sb_broker_detach(sb_broker *b, uint64_t job_id);
/* Takes every waiting event, oldest first (caller frees each with sb_event_free). */
sb_event *sb_broker_take_events(sb_broker *b);

/* A snapshot of the counters. */
void sb_broker_stats(sb_broker *b, sb_stats *out);
/* Appends ,"workers":[{"pid":N,"busy":true|false},...] to a JSON object being built in buf (NUL-terminated,
 * at most cap bytes in all). Returns the new length. */
size_t sb_broker_workers_json(sb_broker *b, char *buf, size_t len, size_t cap);

#endif
