/* The ZeroMQ protocol between the streamer's broker and the chat-worker processes.
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
 *     EV job_id progress step message
 *     EV job_id token    text
 *     EV job_id complete response session_id metadata_json     terminal: that slot is free again
 *     EV job_id error    code message                          terminal: that slot is free again
 *   broker -> worker
 *     JOB job_id flags request_id user_id user_email user_name session_id customer_id message
 *     CANCEL job_id                      set that job's cancel flag (ignored when not running)
 *     HB                                 heartbeat
 *     RESET                              "I do not know you" (broker restarted): drop the jobs, send READY
 *
 * job_id is a decimal uint64 chosen by the broker; flags is a decimal bitmask (CHAT_WIRE_F_*).
 * Thread context: a zmq socket belongs to one thread; these helpers keep no state of their own. */
#ifndef CHAT_WIRE_H
#define CHAT_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CHAT_WIRE_VERSION "chatwire/1"
#define CHAT_WIRE_HEARTBEAT_MS 500
#define CHAT_WIRE_DEAD_MS 2000
#define CHAT_WIRE_MAX_PARTS 16          /* a message with more parts is dropped */
#define CHAT_WIRE_MAX_BYTES (16u << 20) /* a message larger than this is dropped */

#define CHAT_WIRE_READY "READY"
#define CHAT_WIRE_HB "HB"
#define CHAT_WIRE_BYE "BYE"
#define CHAT_WIRE_EVENT "EV"
#define CHAT_WIRE_JOB "JOB"
#define CHAT_WIRE_CANCEL "CANCEL"
#define CHAT_WIRE_RESET "RESET"

#define CHAT_WIRE_EV_PROGRESS "progress"
#define CHAT_WIRE_EV_TOKEN "token"
#define CHAT_WIRE_EV_COMPLETE "complete"
#define CHAT_WIRE_EV_ERROR "error"

enum { CHAT_WIRE_F_PARTIAL = 1 }; /* the client wants partial_response with tokens */

/* One received multipart message. part[i] points into one owned buffer and is NUL-terminated (a part
 * may itself contain NUL bytes; len[i] is authoritative). Reusable: recv into it again without clear. */
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

typedef struct chat_wire_part {
    const void *data;
    size_t len;
} chat_wire_part;

/* Sends parts[0..n) as one message. flags: 0 or ZMQ_DONTWAIT. 0, or CHAT_ERR with zmq's errno
 * (EAGAIN at the high-water mark, EHOSTUNREACH for an unknown ROUTER peer with ROUTER_MANDATORY). */
int chat_wire_send(void *sock, const chat_wire_part *parts, int n, int flags);

/* True when part i exists and equals the C string s. */
bool chat_wire_is(const chat_wire_msg *m, int i, const char *s);
/* Part i as a decimal uint64: 0 or CHAT_EINVAL. */
int chat_wire_u64(const chat_wire_msg *m, int i, uint64_t *out);

/* A job as it travels. Strings are NUL-terminated; NULL and "" both mean absent. */
typedef struct chat_wire_job {
    uint64_t job_id;
    unsigned flags; /* CHAT_WIRE_F_* */
    const char *request_id;
    const char *user_id;
    const char *user_email;
    const char *user_name;
    const char *session_id;
    const char *customer_id;
    const char *message;
} chat_wire_job;

/* Sends JOB. identity (may be NULL) is the ROUTER envelope of the target worker. */
int chat_wire_send_job(void *sock, const void *identity, size_t idlen, const chat_wire_job *job, int flags);
/* Parses the JOB whose command part is m->part[at]; job's strings point into m. 0 or CHAT_EINVAL. */
int chat_wire_parse_job(const chat_wire_msg *m, int at, chat_wire_job *job);

/* Sends a command with an optional argument part: [identity] cmd [arg]. arg may be NULL. */
int chat_wire_send_cmd(void *sock, const void *identity, size_t idlen, const char *cmd, const char *arg, int flags);

/* Sends EV job_id kind f[0..nf) (worker side, no envelope). Fields are (data, len) parts. */
int chat_wire_send_event(void *sock, uint64_t job_id, const char *kind, const chat_wire_part *f, int nf, int flags);

#endif
