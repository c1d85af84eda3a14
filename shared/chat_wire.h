/* The ZeroMQ protocol between the streamer's broker and the chat-worker processes: every message of it
 * is parsed and built here, and only here, as typed structs (chat_wire_cmd).
 *
 * Pattern: the zguide's load-balancing broker with Paranoid Pirate heartbeats. The streamer's broker
 * thread owns a ROUTER socket bound at CHAT_ZMQ_ENDPOINT; each worker process owns one DEALER connected to
 * it and runs up to `slots` jobs at once. A worker announces READY, then both sides send HB every
 * CHAT_WIRE_HEARTBEAT_MS while idle or busy; a peer silent for CHAT_WIRE_DEAD_MS is dead (the broker
 * requeues or fails its jobs, the worker drops its jobs and reconnects). Any message counts as a sign of
 * life, heartbeats only fill silence.
 *
 * Every message is multipart; the first part (after the ROUTER's identity envelope) names the command.
 * No JSON on this wire: fields are raw parts, so chat text is never re-escaped and the client-facing JSON
 * is built once, by the streamer. Empty optional fields are empty parts.
 *
 *   worker -> broker
 *     READY  version pid slots           ready for up to `slots` jobs at once (sent once after connecting;
 *                                        without slots, 1)
 *     HB                                 heartbeat
 *     BYE                                stop sending jobs; the jobs in flight still finish
 *     ATTACHED job_id status answer_id seq cursor age_ms from text response session_id metadata_json
 *                                        the answer to an ATTACH (see below)
 *     EV job_id progress step message
 *     EV job_id token    text piece_lens                        piece_lens: 4-byte lengths, or empty (one piece)
 *     EV job_id complete response session_id metadata_json     terminal: that slot is free again
 *     EV job_id error    code message                          terminal: that slot is free again
 *     EVS batch                          several events (any kind) of several jobs in one message: a
 *                                        flush's, an answer's first token with its steps, a terminal
 *                                        with the tokens before it; batch: records of job_id (8 bytes),
 *                                        kind (1), then each field as an EV carries it: length (4),
 *                                        bytes, NUL; numbers little-endian
 *   broker -> worker
 *     JOB job_id flags request_id user_id user_email user_name session_id customer_id message
 *     CANCEL job_id                      set that job's cancel flag (ignored when not running); the id of
 *                                        a subscription (ATTACH) cancels the answer it follows
 *     ATTACH job_id flags session_id user_id answer_id last_seq
 *                                        follow the session's answer: held here, it is answered with
 *                                        ATTACHED and, in flight, its later events come under job_id too
 *     DETACH job_id                      no more events for that job or subscription (the answer goes on)
 *     HB                                 heartbeat
 *     RESET                              "I do not know you" (broker restarted): drop the jobs, send READY
 *
 * job_id is a decimal uint64 chosen by the broker; flags is a decimal bitmask (CHAT_WIRE_F_*, CHAT_WIRE_A_*).
 *
 * Answers outlive the streamer that asked for them: a worker keeps each answer's text and piece count
 * while it streams and, once complete, for a retention window per session, so that any streamer can
 * ATTACH to it (a client that resumes after a drop, another tab of the same conversation). ATTACHED
 * says what the worker holds (CHAT_WIRE_ATTACH_STATUS_MAP): the answer's text so far (text), the byte
 * offset where the part the client has not seen starts (from: after piece last_seq of answer_id), the
 * pieces sent so far (seq) and, finished, its complete's fields.
 *
 * Design choices:
 * - One typed struct for every message (chat_wire_cmd: a kind and its payload), one parser and one
 *   builder, so the two sides cannot drift apart and no caller counts parts. The parser is strict: a
 *   command with a part too many or too few, a number that does not parse or a READY of another version
 *   is refused (CHAT_EINVAL, with the reason in err), never half-read.
 * - Parsing does not copy: a parsed message's strings point into the received chat_wire_msg, whose one
 *   buffer is reused from message to message, so a token event costs no allocation on either side. What
 *   must outlive the message is copied once, explicitly (chat_wire_job_dup, chat_wire_event_dup).
 * - The job's fields are listed once (CHAT_WIRE_JOB_STRINGS); its struct, builder, parser and owned copy
 *   are generated from that list.
 *
 * Thread context: a zmq socket belongs to one thread; these functions keep no state of their own. */
#ifndef CHAT_WIRE_H
#define CHAT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_util.h"

#define CHAT_WIRE_VERSION "chatwire/4" /* 2: token events carry their pieces' lengths; 3: ATTACH, DETACH; 4: EVS */
#define CHAT_WIRE_HEARTBEAT_MS 500
#define CHAT_WIRE_DEAD_MS 2000
#define CHAT_WIRE_MAX_PARTS 16          /* a message with more parts is dropped */
#define CHAT_WIRE_MAX_BYTES (16u << 20) /* a message larger than this is dropped */
#define CHAT_WIRE_MAX_IDENTITY 255      /* bytes of a ROUTER identity envelope (zmq's own limit) */
#define CHAT_WIRE_MAX_SLOTS 65536       /* a READY offering more slots is refused */

/* JOB flags. */
enum {
    CHAT_WIRE_F_PARTIAL = 1,     /* the client wants partial_response with tokens */
    CHAT_WIRE_F_NEW_SESSION = 2, /* session_id is new, chosen by the streamer (a UUID): create it with the turn */
    CHAT_WIRE_F_DETACHED = 4,    /* nobody waits for the events any more (the client left while it was queued) */
};
/* ATTACH flags. */
enum {
    CHAT_WIRE_A_CHECK_OWNER = 1, /* holding nothing of the session, ask the database whether the user has it */
};

/* Bytes with a length. In a parsed message s points into the chat_wire_msg and is NUL-terminated (the
 * bytes may hold a NUL themselves: len is authoritative); to build one, s need not be terminated. */
typedef struct chat_wire_str {
    const char *s;
    size_t len;
} chat_wire_str;

/* s as a chat_wire_str; NULL is "". */
chat_wire_str chat_wire_cstr(const char *s);
/* True when a holds exactly the C string b. */
bool chat_wire_str_eq(chat_wire_str a, const char *b);

/* ---------------------------------------------------------------- commands */

/* X(NAME, wire name): the first part of every message. */
#define CHAT_WIRE_COMMAND_MAP(X)                                                                             \
    X(READY, "READY")                                                                                        \
    X(HB, "HB")                                                                                              \
    X(BYE, "BYE")                                                                                            \
    X(EV, "EV")                                                                                              \
    X(JOB, "JOB")                                                                                            \
    X(CANCEL, "CANCEL")                                                                                      \
    X(RESET, "RESET")                                                                                        \
    X(ATTACH, "ATTACH")                                                                                      \
    X(ATTACHED, "ATTACHED")                                                                                  \
    X(DETACH, "DETACH")                                                                                      \
    X(EVS, "EVS")

typedef enum chat_wire_kind {
    CHAT_WIRE_NONE = 0,
#define X(name, wire) CHAT_WIRE_##name,
    CHAT_WIRE_COMMAND_MAP(X)
#undef X
} chat_wire_kind;

/* ---------------------------------------------------------------- events (EV) */

/* X(NAME, wire name, terminal): what an EV reports; a terminal event ends its job. */
#define CHAT_WIRE_EVENT_MAP(X)                                                                               \
    X(PROGRESS, "progress", false)                                                                           \
    X(TOKEN, "token", false)                                                                                 \
    X(COMPLETE, "complete", true)                                                                            \
    X(ERROR, "error", true)

typedef enum chat_wire_event_kind {
#define X(name, wire, terminal) CHAT_WIRE_EV_##name,
    CHAT_WIRE_EVENT_MAP(X)
#undef X
} chat_wire_event_kind;

/* One event of one job; the member named after its kind holds its fields, in wire order. */
typedef struct chat_wire_event {
    uint64_t job_id;
    chat_wire_event_kind kind;
    union {
        struct {
            chat_wire_str step, message;
        } progress;
        struct {
            chat_wire_str text;       /* the pieces, one after another */
            chat_wire_str piece_lens; /* each piece's length, 4 bytes little-endian; empty: one piece */
        } token;
        struct {
            chat_wire_str response, session_id, metadata_json;
        } complete;
        struct {
            chat_wire_str code, message; /* a CHAT_CODE_* string; client-safe text */
        } error;
    };
} chat_wire_event;

bool chat_wire_event_terminal(chat_wire_event_kind kind);

/* A token event carries every piece the model produced since the worker's last send (one piece per
 * token callback, about a word), with their lengths, so that the streamer can send each as its own
 * frame however the worker batched them: batching saves wake-ups, never frames. The parser checks that
 * the lengths add up to the text. */
size_t chat_wire_token_pieces(const chat_wire_event *ev);              /* how many (0 for other kinds) */
uint32_t chat_wire_token_piece_len(const chat_wire_str *lens, size_t i); /* piece i's length */
void chat_wire_token_piece_put(unsigned char out[4], uint32_t len);     /* encodes a length */

/* An owned copy of ev: one allocation holding the struct and its fields (each NUL-terminated), for an
 * event that must outlive the strings it points to. NULL on out of memory. Free with
 * chat_wire_event_free (accepts NULL). Any thread. */
chat_wire_event *chat_wire_event_dup(const chat_wire_event *ev);
void chat_wire_event_free(chat_wire_event *ev);

/* ---------------------------------------------------------------- jobs (JOB) */

/* X(field, required): the job's strings, in wire order after job_id and flags. A JOB without a
 * required field is refused. */
#define CHAT_WIRE_JOB_STRINGS(X)                                                                             \
    X(request_id, false)                                                                                     \
    X(user_id, true)                                                                                         \
    X(user_email, false)                                                                                     \
    X(user_name, false)                                                                                      \
    X(session_id, false)                                                                                     \
    X(customer_id, false)                                                                                    \
    X(message, true)

/* A job as it travels. Strings are NUL-terminated. To build one, NULL and "" both mean absent; a parsed
 * or copied job's strings are never NULL ("" when absent). */
typedef struct chat_wire_job {
    uint64_t job_id;
    unsigned flags; /* CHAT_WIRE_F_* */
#define X(field, required) const char *field;
    CHAT_WIRE_JOB_STRINGS(X)
#undef X
} chat_wire_job;

/* An owned copy of job: one allocation holding the struct and its strings, so the job outlives the
 * message or the caller's buffers it came from. NULL on out of memory. Free with chat_wire_job_free
 * (accepts NULL). Any thread. */
chat_wire_job *chat_wire_job_dup(const chat_wire_job *job);
void chat_wire_job_free(chat_wire_job *job);

/* ---------------------------------------------------------------- following answers (ATTACH) */

/* X(NAME, wire name): what a worker holds of the session an ATTACH names. */
#define CHAT_WIRE_ATTACH_STATUS_MAP(X)                                                                       \
    X(IN_FLIGHT, "in_flight") /* streaming: its later events follow under the ATTACH's job_id */            \
    X(FINISHED, "finished")   /* completed within the retention window: the complete's fields are set */   \
    X(NONE, "none")           /* nothing held (CHECK_OWNER: and the user has the session) */               \
    X(UNKNOWN, "unknown")     /* CHECK_OWNER: nothing held and the user has no such session */             \
    X(FORBIDDEN, "forbidden") /* sent by earlier workers for another user's session; no longer sent */

typedef enum chat_wire_attach_status {
#define X(name, wire) CHAT_WIRE_ATT_##name,
    CHAT_WIRE_ATTACH_STATUS_MAP(X)
#undef X
} chat_wire_attach_status;

/* A subscription to a session's answer. Strings as in a job: NUL-terminated, never NULL once parsed. */
typedef struct chat_wire_attach {
    uint64_t job_id; /* the streamer's id for it: the answer's events come back under it */
    unsigned flags;  /* CHAT_WIRE_A_* */
    const char *session_id, *user_id; /* required */
    const char *answer_id; /* the answer last_seq counts pieces of; "": whichever the session has */
    uint64_t last_seq;     /* pieces the client has */
} chat_wire_attach;

/* A worker's answer to an ATTACH. text: the answer so far; seq: its pieces sent so far; cursor: the
 * client's position in this answer as the worker read last_seq (0 .. seq + 1, where seq + 1 means it has
 * the complete as well); from: the byte offset in text after piece cursor, where what the client has
 * not seen starts (text.len: nothing missed). FINISHED also carries the complete's fields; other
 * statuses carry empty strings and zeros. */
typedef struct chat_wire_attached {
    uint64_t job_id;
    chat_wire_attach_status status;
    chat_wire_str answer_id;
    uint64_t seq;
    uint64_t cursor;
    uint64_t age_ms; /* FINISHED: since it completed (the broker keeps the youngest of several) */
    uint64_t from;
    chat_wire_str text;
    chat_wire_str response, session_id, metadata_json;
} chat_wire_attached;

const char *chat_wire_attach_status_name(chat_wire_attach_status st); /* "" when out of range */

/* ---------------------------------------------------------------- many events in one message (EVS) */

/* A worker sends what one moment produced for a streamer in one EVS message instead of one EV per event:
 * a flush's steps and tokens of every answer, an answer's first token with the steps before it, a
 * terminal event with the tokens before it. With hundreds of answers streaming, a message per event
 * woke both ends' ZeroMQ and receiving threads some 10,000 times a second per worker (docs/benchmarks.md,
 * "The token path"). A record is one event, exactly as an EV would carry it, and the receiver handles
 * each as it would that EV, in order. The parser checks every record once (bounds, kind, each field's
 * terminating NUL, token pieces), so iterating cannot fail, and fields are NUL-terminated in place. */
typedef struct chat_wire_events {
    chat_wire_str batch; /* the records, back to back */
    size_t count;        /* how many */
} chat_wire_events;

/* Appends ev to a batch being built. 0, CHAT_EINVAL (an unknown kind, a field over 4 GB), CHAT_ENOMEM
 * (the batch is unchanged). */
int chat_wire_events_add(chat_buf *batch, const chat_wire_event *ev);
/* The record at *at of a parsed batch (strings point into the message), advancing *at; false at the
 * end. Start with *at = 0. */
bool chat_wire_events_next(const chat_wire_events *t, size_t *at, chat_wire_event *ev);

/* ---------------------------------------------------------------- messages */

typedef struct chat_wire_ready {
    int pid;
    int slots; /* 1 .. CHAT_WIRE_MAX_SLOTS; a READY without it means 1 */
} chat_wire_ready;

/* One message, typed. HB, BYE and RESET carry nothing. */
typedef struct chat_wire_cmd {
    chat_wire_kind kind;
    union {
        chat_wire_ready ready; /* READY (its version is CHAT_WIRE_VERSION: the parser refuses others) */
        chat_wire_event ev;    /* EV */
        chat_wire_job job;     /* JOB */
        uint64_t job_id;       /* CANCEL, DETACH */
        chat_wire_attach attach;     /* ATTACH */
        chat_wire_attached attached; /* ATTACHED */
        chat_wire_events events;     /* EVS */
    };
} chat_wire_cmd;

/* One received multipart message. part[i] points into one owned buffer and is NUL-terminated (a part
 * may itself contain NUL bytes; len[i] is authoritative). Reusable: recv into it again without clear.
 * Only chat_wire.c reads its parts: everyone else calls chat_wire_parse. */
typedef struct chat_wire_msg {
    int n;
    const char *part[CHAT_WIRE_MAX_PARTS];
    size_t len[CHAT_WIRE_MAX_PARTS];
    char *buf;
    size_t cap;
} chat_wire_msg;

void chat_wire_msg_init(chat_wire_msg *m);
void chat_wire_msg_clear(chat_wire_msg *m); /* frees the buffer */

/* Receives one whole message (all its parts). flags: 0 or ZMQ_DONTWAIT.
 * 0; CHAT_ETIMEOUT when nothing is waiting (DONTWAIT) or the receive timed out; CHAT_EINVAL when the
 * message had too many parts or bytes (it was consumed and dropped); CHAT_ENOMEM; CHAT_ERR on a socket
 * error (errno is zmq's, e.g. ETERM). */
int chat_wire_recv(void *sock, chat_wire_msg *m, int flags);

/* Parses m into *cmd, whose strings then point into m (valid until m is received into again).
 * from: NULL for a message without envelope (what a DEALER receives); else m's first part is the ROUTER
 * identity of the sender, stored in *from, which is set ({"", 0}: none) even when the rest is refused.
 * 0, or CHAT_EINVAL with the reason in err (no field content in it: fit for logs). */
int chat_wire_parse(const chat_wire_msg *m, chat_wire_str *from, chat_wire_cmd *cmd, char *err, size_t errlen);

/* Sends cmd as one message. to: the ROUTER identity of the receiving worker, or NULL (a DEALER's send).
 * A READY is sent with CHAT_WIRE_VERSION. flags: 0 or ZMQ_DONTWAIT. 0; CHAT_EINVAL for a cmd that cannot
 * be sent (unknown kind); CHAT_ERR with zmq's errno (EAGAIN at the high-water mark, EHOSTUNREACH for an
 * unknown ROUTER peer with ROUTER_MANDATORY). */
int chat_wire_send(void *sock, const chat_wire_str *to, const chat_wire_cmd *cmd, int flags);

/* chat_wire_send of EV ev without envelope: a worker's events. */
int chat_wire_send_event(void *sock, const chat_wire_event *ev, int flags);

/* Sends parts[0..n) as one raw message, whatever they hold (the framing under chat_wire_send; tests use
 * it to send malformed messages). Same returns as chat_wire_send. */
int chat_wire_send_parts(void *sock, const chat_wire_str *parts, int n, int flags);

#endif
