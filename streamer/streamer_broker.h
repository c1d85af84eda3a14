/* The streamer's broker: one thread that owns the ZeroMQ ROUTER socket the chat-worker processes connect
 * to, and the queue of jobs waiting for a worker.
 *
 * Threads: every function below except sb_broker_new/free is called from the lws service thread and only
 * takes a mutex for a few pointer operations; the broker thread never touches lws objects. Work flows in
 * two mutex-protected lists: commands (submit, cancel) towards the broker, which is woken through an
 * eventfd polled next to the ROUTER socket, and events (tokens, ready-made JSON frames) towards lws,
 * which is woken through the wake callback (lws_cancel_service). */
#ifndef STREAMER_BROKER_H
#define STREAMER_BROKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_config.h"
#include "chat_curve.h"
#include "chat_wire.h"

/* A job: allocated by sb_job_new, with its own copy of the spec (chat_wire_job_dup), owned by the broker
 * after sb_broker_submit. The lws thread keeps only its id. */
typedef struct sb_job sb_job;

/* Copies spec (job_id included): the caller's strings may go once it returns. NULL on out of memory. */
sb_job *sb_job_new(const chat_wire_job *spec);
void sb_job_free(sb_job *job); /* accepts NULL */

enum {
    SB_EV_TOKEN = 1, /* data: token text */
    SB_EV_FRAME = 2, /* data: a JSON frame ready to send */
    SB_EV_TOKENS = 3 /* lws-side only: coalesced tokens, the range [start, end) of the session's answer */
};

/* An event for the lws thread. One allocation; the lws thread moves frames straight into a connection's
 * outbound queue, so this is also the outbound queue item. */
typedef struct sb_event {
    struct sb_event *next;
    uint64_t job_id;
    uint8_t kind;
    uint8_t terminal;       /* the job is over (complete or error) */
    uint8_t error;          /* SB_EV_FRAME: an error frame (set where it is built: nobody reads the JSON) */
    size_t start, end;      /* SB_EV_TOKENS */
    const char *session_id; /* terminal complete: the session id, inside this allocation; else NULL */
    size_t len;             /* bytes of data (without the NUL) */
    char data[];
} sb_event;

/* A frame event built from json (copied). session_id may be NULL. NULL on out of memory. */
sb_event *sb_event_new(uint64_t job_id, int kind, const char *data, size_t len, const char *session_id);
void sb_event_free(sb_event *e); /* accepts NULL */

typedef struct sb_stats {
    int workers_live; /* registered and heard from within CHAT_WIRE_DEAD_MS, not retiring */
    int workers_busy;
    int jobs_queued; /* waiting for a worker */
    int jobs_running;
    unsigned long long jobs_done;
    unsigned long long jobs_failed;
    chat_curve_stats curve; /* workers refused by CURVE (chat_curve.h); zeros without CURVE */
} sb_stats;

typedef struct sb_broker sb_broker;

/* Binds the ROUTER at cfg->zmq_endpoint (the directory of an ipc path is created if missing), with
 * CURVE and a ZAP handler when the CHAT_CURVE_* settings ask for it (chat_curve.h; a network endpoint
 * without keys fails unless CHAT_ZMQ_INSECURE=1). wake(wake_ud) is called from the broker thread when events are waiting. NULL with err on failure. */
sb_broker *sb_broker_new(const chat_config *cfg, void (*wake)(void *), void *wake_ud, char *err, size_t errlen);
int sb_broker_start(sb_broker *b, char *err, size_t errlen);
/* Stops and joins the broker thread (idempotent, accepts NULL): after it, wake() is never called again,
 * and sb_broker_cancel/submit only queue. Call it before the lws context that wake() touches goes away. */
void sb_broker_stop(sb_broker *b);
/* Stops the thread (if started), closes the socket, frees queued jobs and events. Accepts NULL. */
void sb_broker_free(sb_broker *b);

/* Hands job to the broker (ownership moves). The broker answers with events for job->id: at once an
 * OVERLOADED error when no worker is live or the queue is full, later OVERLOADED when no worker freed up
 * within the queue deadline, else the worker's progress/token/terminal events. */
void sb_broker_submit(sb_broker *b, sb_job *job);
/* Stops a job. client_gone: the connection closed, no event is wanted; otherwise the job ends with a
 * terminal complete (finish_reason cancelled) from the worker, or from the broker if it had not started. */
void sb_broker_cancel(sb_broker *b, uint64_t job_id, bool client_gone);
/* Takes every waiting event, oldest first (caller frees each with sb_event_free). */
sb_event *sb_broker_take_events(sb_broker *b);

/* Lock-free snapshot of the counters. */
void sb_broker_stats(sb_broker *b, sb_stats *out);
/* Appends ,"workers":[{"pid":N,"busy":true|false},...] to a JSON object being built in buf (NUL-terminated,
 * at most cap bytes in all). Returns the new length. */
size_t sb_broker_workers_json(sb_broker *b, char *buf, size_t len, size_t cap);

#endif
