/* Multipart framing for the streamer <-> worker ZeroMQ protocol (see chat_wire.h).
 *
 * A received message is copied into one growable buffer, each part NUL-terminated, so callers can use
 * parts as C strings and a message costs one allocation that is reused from message to message. Limits on
 * parts and bytes are enforced while receiving: a peer cannot make us buffer without bound. */
#include "chat_wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "chat_common.h"

void chat_wire_msg_init(chat_wire_msg *m)
{
    memset(m, 0, sizeof *m);
}

void chat_wire_msg_clear(chat_wire_msg *m)
{
    free(m->buf);
    chat_wire_msg_init(m);
}

static int reserve(chat_wire_msg *m, size_t need)
{
    if (need <= m->cap) return 0;
    size_t cap = m->cap ? m->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(m->buf, cap);
    if (!p) return CHAT_ENOMEM;
    m->buf = p, m->cap = cap;
    return 0;
}

/* Discards the remaining parts of a message we stopped reading. */
static void drain_rest(void *sock)
{
    int more = 1;
    size_t sz = sizeof more;
    while (zmq_getsockopt(sock, ZMQ_RCVMORE, &more, &sz) == 0 && more) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        int rc = zmq_msg_recv(&part, sock, 0);
        zmq_msg_close(&part);
        if (rc < 0) break;
        sz = sizeof more;
    }
}

int chat_wire_recv(void *sock, chat_wire_msg *m, int flags)
{
    size_t off[CHAT_WIRE_MAX_PARTS];
    size_t used = 0;
    int rc = 0;
    m->n = 0;
    for (;;) {
        zmq_msg_t part;
        zmq_msg_init(&part);
        if (zmq_msg_recv(&part, sock, m->n == 0 ? flags : 0) < 0) {
            int e = errno;
            zmq_msg_close(&part);
            errno = e;
            if (m->n == 0 && e == EAGAIN) return CHAT_ETIMEOUT;
            return CHAT_ERR;
        }
        size_t len = zmq_msg_size(&part);
        int more = zmq_msg_more(&part);
        if (m->n >= CHAT_WIRE_MAX_PARTS || used + len + 1 > CHAT_WIRE_MAX_BYTES) {
            rc = CHAT_EINVAL;
        } else if (reserve(m, used + len + 1)) {
            rc = CHAT_ENOMEM;
        } else {
            if (len) memcpy(m->buf + used, zmq_msg_data(&part), len);
            m->buf[used + len] = '\0';
            off[m->n] = used;
            m->len[m->n] = len;
            m->n++;
            used += len + 1;
        }
        zmq_msg_close(&part);
        if (rc) {
            if (more) drain_rest(sock);
            m->n = 0;
            return rc;
        }
        if (!more) break;
    }
    /* Pointers are fixed up last: the buffer may have moved while growing. */
    for (int i = 0; i < m->n; i++)
        m->part[i] = m->buf + off[i];
    return 0;
}

int chat_wire_send(void *sock, const chat_wire_part *parts, int n, int flags)
{
    for (int i = 0; i < n; i++) {
        int f = flags | (i + 1 < n ? ZMQ_SNDMORE : 0);
        /* Only the first part can fail with EAGAIN: zmq queues a started message atomically. */
        if (zmq_send(sock, parts[i].data ? parts[i].data : "", parts[i].len, f) < 0) return CHAT_ERR;
    }
    return 0;
}

bool chat_wire_is(const chat_wire_msg *m, int i, const char *s)
{
    if (i < 0 || i >= m->n) return false;
    size_t l = strlen(s);
    return m->len[i] == l && memcmp(m->part[i], s, l) == 0;
}

int chat_wire_u64(const chat_wire_msg *m, int i, uint64_t *out)
{
    if (i < 0 || i >= m->n || m->len[i] == 0 || m->len[i] > 20) return CHAT_EINVAL;
    uint64_t v = 0;
    for (size_t k = 0; k < m->len[i]; k++) {
        unsigned char c = (unsigned char)m->part[i][k];
        if (c < '0' || c > '9') return CHAT_EINVAL;
        if (v > (UINT64_MAX - (c - '0')) / 10) return CHAT_EINVAL;
        v = v * 10 + (c - '0');
    }
    *out = v;
    return 0;
}

static chat_wire_part str_part(const char *s)
{
    return (chat_wire_part){s ? s : "", s ? strlen(s) : 0};
}

int chat_wire_send_job(void *sock, const void *identity, size_t idlen, const chat_wire_job *job, int flags)
{
    char id[24], fl[12];
    snprintf(id, sizeof id, "%" PRIu64, job->job_id);
    snprintf(fl, sizeof fl, "%u", job->flags);
    chat_wire_part p[12];
    int n = 0;
    if (identity) p[n++] = (chat_wire_part){identity, idlen};
    p[n++] = str_part(CHAT_WIRE_JOB);
    p[n++] = str_part(id);
    p[n++] = str_part(fl);
    p[n++] = str_part(job->request_id);
    p[n++] = str_part(job->user_id);
    p[n++] = str_part(job->user_email);
    p[n++] = str_part(job->user_name);
    p[n++] = str_part(job->session_id);
    p[n++] = str_part(job->customer_id);
    p[n++] = str_part(job->message);
    return chat_wire_send(sock, p, n, flags);
}

int chat_wire_parse_job(const chat_wire_msg *m, int at, chat_wire_job *job)
{
    if (!chat_wire_is(m, at, CHAT_WIRE_JOB) || m->n != at + 10) return CHAT_EINVAL;
    memset(job, 0, sizeof *job);
    uint64_t flags;
    if (chat_wire_u64(m, at + 1, &job->job_id) || chat_wire_u64(m, at + 2, &flags)) return CHAT_EINVAL;
    job->flags = (unsigned)flags;
    job->request_id = m->part[at + 3];
    job->user_id = m->part[at + 4];
    job->user_email = m->part[at + 5];
    job->user_name = m->part[at + 6];
    job->session_id = m->part[at + 7];
    job->customer_id = m->part[at + 8];
    job->message = m->part[at + 9];
    if (!job->user_id[0] || !job->message[0]) return CHAT_EINVAL;
    return 0;
}

int chat_wire_send_cmd(void *sock, const void *identity, size_t idlen, const char *cmd, const char *arg, int flags)
{
    chat_wire_part p[3];
    int n = 0;
    if (identity) p[n++] = (chat_wire_part){identity, idlen};
    p[n++] = str_part(cmd);
    if (arg) p[n++] = str_part(arg);
    return chat_wire_send(sock, p, n, flags);
}

int chat_wire_send_event(void *sock, uint64_t job_id, const char *kind, const chat_wire_part *f, int nf, int flags)
{
    if (nf < 0 || nf > CHAT_WIRE_MAX_PARTS - 3) return CHAT_EINVAL;
    char id[24];
    snprintf(id, sizeof id, "%" PRIu64, job_id);
    chat_wire_part p[CHAT_WIRE_MAX_PARTS];
    int n = 0;
    p[n++] = str_part(CHAT_WIRE_EVENT);
    p[n++] = str_part(id);
    p[n++] = str_part(kind);
    for (int i = 0; i < nf; i++)
        p[n++] = f[i];
    return chat_wire_send(sock, p, n, flags);
}
