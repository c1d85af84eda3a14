/* The streamer <-> worker ZeroMQ protocol (see chat_wire.h): multipart framing, then one parser and one
 * builder for the typed messages.
 *
 * A received message is copied into one growable buffer, each part NUL-terminated, so parsed fields are C
 * strings and a message costs one allocation that is reused from message to message. Limits on parts and
 * bytes are enforced while receiving: a peer cannot make us buffer without bound. The parser then only
 * points into that buffer (no copy, no allocation: the token path runs through it 100,000 times a
 * second), and the builder hands zmq the caller's own bytes. */
#include "chat_wire.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_util.h"

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

int chat_wire_send_parts(void *sock, const chat_wire_str *parts, int n, int flags)
{
    for (int i = 0; i < n; i++) {
        int f = flags | (i + 1 < n ? ZMQ_SNDMORE : 0);
        /* Only the first part can fail with EAGAIN: zmq queues a started message atomically. */
        if (zmq_send(sock, parts[i].s ? parts[i].s : "", parts[i].len, f) < 0) return CHAT_ERR;
    }
    return 0;
}

/* ---------------------------------------------------------------- strings and numbers */

chat_wire_str chat_wire_cstr(const char *s)
{
    return (chat_wire_str){s ? s : "", s ? strlen(s) : 0};
}

bool chat_wire_str_eq(chat_wire_str a, const char *b)
{
    size_t l = strlen(b);
    return a.len == l && memcmp(a.s, b, l) == 0;
}

static chat_wire_str part_at(const chat_wire_msg *m, int i)
{
    return (chat_wire_str){m->part[i], m->len[i]};
}

/* A decimal uint64 without sign, spaces or leading junk: 0 or CHAT_EINVAL. */
static int parse_u64(chat_wire_str p, uint64_t max, uint64_t *out)
{
    if (p.len == 0 || p.len > 20) return CHAT_EINVAL;
    uint64_t v = 0;
    for (size_t k = 0; k < p.len; k++) {
        unsigned c = (unsigned char)p.s[k] - '0';
        if (c > 9 || v > (UINT64_MAX - c) / 10) return CHAT_EINVAL;
        v = v * 10 + c;
    }
    if (v > max) return CHAT_EINVAL;
    *out = v;
    return 0;
}

/* Writes v in decimal into buf (at least 20 bytes); its length (every event carries a job id). */
static size_t format_u64(char *buf, uint64_t v)
{
    return chat_u64_dec(buf, v);
}

/* ---------------------------------------------------------------- the tables */

static const char *const COMMAND_NAMES[] = {
#define X(name, wire) [CHAT_WIRE_##name] = wire,
    CHAT_WIRE_COMMAND_MAP(X)
#undef X
};

static const struct event_info {
    const char *name;
    bool terminal;
} EVENTS[] = {
#define X(name, wire, terminal) [CHAT_WIRE_EV_##name] = {wire, terminal},
    CHAT_WIRE_EVENT_MAP(X)
#undef X
};

static const char *const ATTACH_STATUS[] = {
#define X(name, wire) [CHAT_WIRE_ATT_##name] = wire,
    CHAT_WIRE_ATTACH_STATUS_MAP(X)
#undef X
};

const char *chat_wire_attach_status_name(chat_wire_attach_status st)
{
    return (unsigned)st < CHAT_ARRAY_LEN(ATTACH_STATUS) ? ATTACH_STATUS[st] : "";
}

/* Where each kind's fields sit in chat_wire_event, in wire order: the parser, the builder and the copy
 * all walk this, so a kind's fields are listed here and in its union member only. */
enum { EV_MAX_FIELDS = 3 };
#define EV_FIELD(kind, field) offsetof(chat_wire_event, kind.field)
static const struct event_layout {
    int n;
    size_t at[EV_MAX_FIELDS];
} LAYOUT[] = {
    [CHAT_WIRE_EV_PROGRESS] = {2, {EV_FIELD(progress, step), EV_FIELD(progress, message)}},
    [CHAT_WIRE_EV_TOKEN] = {2, {EV_FIELD(token, text), EV_FIELD(token, piece_lens)}},
    [CHAT_WIRE_EV_COMPLETE] = {3, {EV_FIELD(complete, response), EV_FIELD(complete, session_id),
                                   EV_FIELD(complete, metadata_json)}},
    [CHAT_WIRE_EV_ERROR] = {2, {EV_FIELD(error, code), EV_FIELD(error, message)}},
};
#undef EV_FIELD
_Static_assert(CHAT_ARRAY_LEN(LAYOUT) == CHAT_ARRAY_LEN(EVENTS), "every event kind has a layout");

static bool event_kind_valid(chat_wire_event_kind kind)
{
    return (unsigned)kind < CHAT_ARRAY_LEN(EVENTS);
}

static chat_wire_str *event_field(chat_wire_event *ev, int i)
{
    return (chat_wire_str *)((char *)ev + LAYOUT[ev->kind].at[i]);
}

static const chat_wire_str *event_field_c(const chat_wire_event *ev, int i)
{
    return (const chat_wire_str *)((const char *)ev + LAYOUT[ev->kind].at[i]);
}

bool chat_wire_event_terminal(chat_wire_event_kind kind)
{
    return event_kind_valid(kind) && EVENTS[kind].terminal;
}

/* ---------------------------------------------------------------- owned copies */

chat_wire_event *chat_wire_event_dup(const chat_wire_event *ev)
{
    if (!event_kind_valid(ev->kind)) return NULL;
    int n = LAYOUT[ev->kind].n;
    size_t total = sizeof *ev;
    for (int i = 0; i < n; i++)
        total += event_field_c(ev, i)->len + 1;
    chat_wire_event *e = malloc(total);
    if (!e) return NULL;
    *e = *ev;
    char *p = (char *)(e + 1);
    for (int i = 0; i < n; i++) {
        chat_wire_str *f = event_field(e, i);
        if (f->len) memcpy(p, f->s, f->len);
        p[f->len] = '\0';
        f->s = p;
        p += f->len + 1;
    }
    return e;
}

void chat_wire_event_free(chat_wire_event *ev)
{
    free(ev);
}

chat_wire_job *chat_wire_job_dup(const chat_wire_job *job)
{
    size_t total = sizeof *job;
#define X(field, required) total += (job->field ? strlen(job->field) : 0) + 1;
    CHAT_WIRE_JOB_STRINGS(X)
#undef X
    chat_wire_job *j = malloc(total);
    if (!j) return NULL;
    *j = *job;
    char *p = (char *)(j + 1);
#define X(field, required)                                                                                   \
    {                                                                                                        \
        size_t n = job->field ? strlen(job->field) : 0;                                                      \
        if (n) memcpy(p, job->field, n);                                                                     \
        p[n] = '\0';                                                                                         \
        j->field = p;                                                                                        \
        p += n + 1;                                                                                          \
    }
    CHAT_WIRE_JOB_STRINGS(X)
#undef X
    return j;
}

void chat_wire_job_free(chat_wire_job *job)
{
    free(job);
}

/* ---------------------------------------------------------------- parsing */

/* The command at part `at`; CHAT_WIRE_NONE when unknown. */
static chat_wire_kind command_at(const chat_wire_msg *m, int at)
{
    chat_wire_str p = part_at(m, at);
    for (size_t k = 1; k < CHAT_ARRAY_LEN(COMMAND_NAMES); k++)
        if (chat_wire_str_eq(p, COMMAND_NAMES[k])) return (chat_wire_kind)k;
    return CHAT_WIRE_NONE;
}

/* READY version pid [slots]; args start at part `at`, nargs of them. */
static int parse_ready(const chat_wire_msg *m, int at, int nargs, chat_wire_ready *r, char *err, size_t errlen)
{
    if (nargs < 2 || nargs > 3) return chat_fail(err, errlen, CHAT_EINVAL, "READY with %d fields", nargs);
    if (!chat_wire_str_eq(part_at(m, at), CHAT_WIRE_VERSION))
        return chat_fail(err, errlen, CHAT_EINVAL, "READY of another protocol version");
    uint64_t pid, slots = 1;
    if (parse_u64(part_at(m, at + 1), INT32_MAX, &pid)) return chat_fail(err, errlen, CHAT_EINVAL, "READY: bad pid");
    if (nargs == 3 && (parse_u64(part_at(m, at + 2), CHAT_WIRE_MAX_SLOTS, &slots) || slots == 0))
        return chat_fail(err, errlen, CHAT_EINVAL, "READY: bad slots (1 to %d)", CHAT_WIRE_MAX_SLOTS);
    r->pid = (int)pid;
    r->slots = (int)slots;
    return 0;
}

/* The piece lengths of a token event: empty (one piece, the whole text), or 4-byte little-endian lengths,
 * none 0, that add up to the text. */
static bool token_pieces_valid(const chat_wire_str *text, const chat_wire_str *lens)
{
    if (lens->len % 4) return false;
    size_t sum = 0, n = lens->len / 4;
    for (size_t i = 0; i < n; i++) {
        uint32_t l = chat_wire_token_piece_len(lens, i);
        if (!l || l > text->len - sum) return false;
        sum += l;
    }
    return n == 0 || sum == text->len;
}

size_t chat_wire_token_pieces(const chat_wire_event *ev)
{
    if (ev->kind != CHAT_WIRE_EV_TOKEN) return 0;
    if (!ev->token.piece_lens.len) return ev->token.text.len ? 1 : 0;
    return ev->token.piece_lens.len / 4;
}

uint32_t chat_wire_token_piece_len(const chat_wire_str *lens, size_t i)
{
    const unsigned char *b = (const unsigned char *)lens->s + 4 * i;
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

void chat_wire_token_piece_put(unsigned char out[4], uint32_t len)
{
    out[0] = (unsigned char)len, out[1] = (unsigned char)(len >> 8);
    out[2] = (unsigned char)(len >> 16), out[3] = (unsigned char)(len >> 24);
}

/* EV job_id kind fields... */
static int parse_event(const chat_wire_msg *m, int at, int nargs, chat_wire_event *ev, char *err, size_t errlen)
{
    if (nargs < 2) return chat_fail(err, errlen, CHAT_EINVAL, "EV with %d fields", nargs);
    if (parse_u64(part_at(m, at), UINT64_MAX, &ev->job_id))
        return chat_fail(err, errlen, CHAT_EINVAL, "EV: bad job id");
    chat_wire_str kind = part_at(m, at + 1);
    size_t k = 0;
    while (k < CHAT_ARRAY_LEN(EVENTS) && !chat_wire_str_eq(kind, EVENTS[k].name))
        k++;
    if (k == CHAT_ARRAY_LEN(EVENTS)) return chat_fail(err, errlen, CHAT_EINVAL, "EV of an unknown kind");
    ev->kind = (chat_wire_event_kind)k;
    int n = LAYOUT[k].n;
    if (nargs != 2 + n)
        return chat_fail(err, errlen, CHAT_EINVAL, "EV %s with %d fields, not %d", EVENTS[k].name, nargs - 2, n);
    for (int i = 0; i < n; i++)
        *event_field(ev, i) = part_at(m, at + 2 + i);
    if (ev->kind == CHAT_WIRE_EV_TOKEN && !token_pieces_valid(&ev->token.text, &ev->token.piece_lens))
        return chat_fail(err, errlen, CHAT_EINVAL, "EV token: piece lengths do not add up to the text");
    return 0;
}

/* ---------------------------------------------------------------- EVS */

/* A record: job_id (8 bytes), kind (1), then each of the kind's fields (LAYOUT): its length (4), its
 * bytes and a NUL, so that parsed fields are C strings in place, as an EV's parts are. */
enum { EVS_HEAD = 9, EVS_FIELD_HEAD = 4 };

static uint64_t get_le(const unsigned char *b, int n)
{
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

static void put_le(unsigned char *b, uint64_t v, int n)
{
    for (int i = 0; i < n; i++, v >>= 8)
        b[i] = (unsigned char)v;
}

/* The record at `at` of batch (at < batch.len): its event and where the next one starts; false when it
 * runs past the batch, names an unknown kind, lacks a field's NUL or its token pieces do not add up. */
static bool evs_record(chat_wire_str batch, size_t at, chat_wire_event *ev, size_t *next)
{
    const unsigned char *b = (const unsigned char *)batch.s;
    if (batch.len - at < EVS_HEAD) return false;
    ev->job_id = get_le(b + at, 8);
    ev->kind = (chat_wire_event_kind)b[at + 8];
    if (!event_kind_valid(ev->kind)) return false;
    at += EVS_HEAD;
    for (int i = 0; i < LAYOUT[ev->kind].n; i++) {
        if (batch.len - at < EVS_FIELD_HEAD) return false;
        uint64_t len = get_le(b + at, 4);
        at += EVS_FIELD_HEAD;
        if (len >= batch.len - at || b[at + len] != '\0') return false;
        *event_field(ev, i) = (chat_wire_str){(const char *)b + at, (size_t)len};
        at += (size_t)len + 1;
    }
    *next = at;
    return ev->kind != CHAT_WIRE_EV_TOKEN || token_pieces_valid(&ev->token.text, &ev->token.piece_lens);
}

/* EVS batch: every record checked here, once. */
static int parse_events(const chat_wire_msg *m, int at, int nargs, chat_wire_events *t, char *err, size_t errlen)
{
    if (nargs != 1) return chat_fail(err, errlen, CHAT_EINVAL, "EVS with %d fields, not 1", nargs);
    t->batch = part_at(m, at);
    t->count = 0;
    chat_wire_event ev;
    for (size_t pos = 0, next; pos < t->batch.len; pos = next, t->count++)
        if (!evs_record(t->batch, pos, &ev, &next))
            return chat_fail(err, errlen, CHAT_EINVAL, "EVS: record %zu is malformed", t->count + 1);
    return 0;
}

int chat_wire_events_add(chat_buf *batch, const chat_wire_event *ev)
{
    if (!event_kind_valid(ev->kind)) return CHAT_EINVAL;
    for (int i = 0; i < LAYOUT[ev->kind].n; i++)
        if (event_field_c(ev, i)->len > UINT32_MAX) return CHAT_EINVAL;
    size_t was = batch->len;
    unsigned char head[EVS_HEAD];
    put_le(head, ev->job_id, 8);
    head[8] = (unsigned char)ev->kind;
    int rc = chat_buf_append(batch, head, sizeof head);
    for (int i = 0; !rc && i < LAYOUT[ev->kind].n; i++) {
        const chat_wire_str *f = event_field_c(ev, i);
        unsigned char len[EVS_FIELD_HEAD];
        put_le(len, f->len, 4);
        rc = chat_buf_append(batch, len, sizeof len);
        if (!rc) rc = chat_buf_append(batch, f->s, f->len);
        if (!rc) rc = chat_buf_append(batch, "", 1);
    }
    if (rc) batch->len = was; /* all or nothing */
    return rc ? CHAT_ENOMEM : 0;
}

bool chat_wire_events_next(const chat_wire_events *t, size_t *at, chat_wire_event *ev)
{
    size_t next;
    if (*at >= t->batch.len || !evs_record(t->batch, *at, ev, &next)) return false;
    *at = next;
    return true;
}

/* The number of fields a JOB carries after its command. */
enum {
    JOB_NARGS = 2
#define X(field, required) +1
        CHAT_WIRE_JOB_STRINGS(X)
#undef X
};

/* JOB job_id flags strings... */
static int parse_job(const chat_wire_msg *m, int at, int nargs, chat_wire_job *job, char *err, size_t errlen)
{
    if (nargs != JOB_NARGS) return chat_fail(err, errlen, CHAT_EINVAL, "JOB with %d fields, not %d", nargs, JOB_NARGS);
    uint64_t flags;
    if (parse_u64(part_at(m, at), UINT64_MAX, &job->job_id) || parse_u64(part_at(m, at + 1), UINT32_MAX, &flags))
        return chat_fail(err, errlen, CHAT_EINVAL, "JOB: bad job id or flags");
    job->flags = (unsigned)flags;
    int i = at + 2;
#define X(field, required)                                                                                   \
    job->field = m->part[i++];                                                                               \
    if ((required) && !job->field[0]) return chat_fail(err, errlen, CHAT_EINVAL, "JOB without " #field);
    CHAT_WIRE_JOB_STRINGS(X)
#undef X
    return 0;
}

enum { ATTACH_NARGS = 6, ATTACHED_NARGS = 11 };

/* ATTACH job_id flags session_id user_id answer_id last_seq */
static int parse_attach(const chat_wire_msg *m, int at, int nargs, chat_wire_attach *a, char *err, size_t errlen)
{
    if (nargs != ATTACH_NARGS) return chat_fail(err, errlen, CHAT_EINVAL, "ATTACH with %d fields, not %d", nargs, ATTACH_NARGS);
    uint64_t flags;
    if (parse_u64(part_at(m, at), UINT64_MAX, &a->job_id) || parse_u64(part_at(m, at + 1), UINT32_MAX, &flags) ||
        parse_u64(part_at(m, at + 5), UINT64_MAX, &a->last_seq))
        return chat_fail(err, errlen, CHAT_EINVAL, "ATTACH: bad job id, flags or last_seq");
    a->flags = (unsigned)flags;
    a->session_id = m->part[at + 2];
    a->user_id = m->part[at + 3];
    a->answer_id = m->part[at + 4];
    if (!a->session_id[0] || !a->user_id[0]) return chat_fail(err, errlen, CHAT_EINVAL, "ATTACH without session or user");
    return 0;
}

/* ATTACHED job_id status answer_id seq cursor age_ms from text response session_id metadata_json */
static int parse_attached(const chat_wire_msg *m, int at, int nargs, chat_wire_attached *a, char *err, size_t errlen)
{
    if (nargs != ATTACHED_NARGS)
        return chat_fail(err, errlen, CHAT_EINVAL, "ATTACHED with %d fields, not %d", nargs, ATTACHED_NARGS);
    if (parse_u64(part_at(m, at), UINT64_MAX, &a->job_id) || parse_u64(part_at(m, at + 3), UINT64_MAX, &a->seq) ||
        parse_u64(part_at(m, at + 4), UINT64_MAX, &a->cursor) || parse_u64(part_at(m, at + 5), UINT64_MAX, &a->age_ms) ||
        parse_u64(part_at(m, at + 6), UINT64_MAX, &a->from))
        return chat_fail(err, errlen, CHAT_EINVAL, "ATTACHED: bad number");
    chat_wire_str st = part_at(m, at + 1);
    size_t k = 0;
    while (k < CHAT_ARRAY_LEN(ATTACH_STATUS) && !chat_wire_str_eq(st, ATTACH_STATUS[k]))
        k++;
    if (k == CHAT_ARRAY_LEN(ATTACH_STATUS)) return chat_fail(err, errlen, CHAT_EINVAL, "ATTACHED of an unknown status");
    a->status = (chat_wire_attach_status)k;
    a->answer_id = part_at(m, at + 2);
    a->text = part_at(m, at + 7);
    a->response = part_at(m, at + 8);
    a->session_id = part_at(m, at + 9);
    a->metadata_json = part_at(m, at + 10);
    if (a->from > a->text.len) return chat_fail(err, errlen, CHAT_EINVAL, "ATTACHED: from beyond the text");
    if (a->cursor > a->seq + 1) return chat_fail(err, errlen, CHAT_EINVAL, "ATTACHED: cursor beyond the answer");
    return 0;
}

int chat_wire_parse(const chat_wire_msg *m, chat_wire_str *from, chat_wire_cmd *cmd, char *err, size_t errlen)
{
    int at = 0;
    cmd->kind = CHAT_WIRE_NONE;
    if (from) {
        *from = (chat_wire_str){"", 0};
        if (m->n < 1 || m->len[0] == 0 || m->len[0] > CHAT_WIRE_MAX_IDENTITY)
            return chat_fail(err, errlen, CHAT_EINVAL, "no identity envelope");
        *from = part_at(m, 0);
        at = 1;
    }
    if (at >= m->n) return chat_fail(err, errlen, CHAT_EINVAL, "an empty message");
    cmd->kind = command_at(m, at);
    int nargs = m->n - at - 1;
    switch (cmd->kind) {
    case CHAT_WIRE_READY:
        return parse_ready(m, at + 1, nargs, &cmd->ready, err, errlen);
    case CHAT_WIRE_EV:
        return parse_event(m, at + 1, nargs, &cmd->ev, err, errlen);
    case CHAT_WIRE_JOB:
        return parse_job(m, at + 1, nargs, &cmd->job, err, errlen);
    case CHAT_WIRE_ATTACH:
        return parse_attach(m, at + 1, nargs, &cmd->attach, err, errlen);
    case CHAT_WIRE_ATTACHED:
        return parse_attached(m, at + 1, nargs, &cmd->attached, err, errlen);
    case CHAT_WIRE_EVS:
        return parse_events(m, at + 1, nargs, &cmd->events, err, errlen);
    case CHAT_WIRE_CANCEL:
    case CHAT_WIRE_DETACH:
        if (nargs != 1 || parse_u64(part_at(m, at + 1), UINT64_MAX, &cmd->job_id))
            return chat_fail(err, errlen, CHAT_EINVAL, "%s without a job id", COMMAND_NAMES[cmd->kind]);
        return 0;
    case CHAT_WIRE_HB:
    case CHAT_WIRE_BYE:
    case CHAT_WIRE_RESET:
        if (nargs) return chat_fail(err, errlen, CHAT_EINVAL, "%s with %d fields", COMMAND_NAMES[cmd->kind], nargs);
        return 0;
    case CHAT_WIRE_NONE:
        break;
    }
    return chat_fail(err, errlen, CHAT_EINVAL, "an unknown command");
}

/* ---------------------------------------------------------------- building */

/* Room for the longest message: envelope, command and an ATTACHED's fields. */
enum { MAX_SEND_PARTS = 2 + ATTACHED_NARGS };
_Static_assert((int)JOB_NARGS <= (int)ATTACHED_NARGS, "ATTACHED is the longest");
_Static_assert(MAX_SEND_PARTS <= CHAT_WIRE_MAX_PARTS, "every message fits the receivers' part limit");

/* Appends an EV's arguments to p[n..); the new n, or CHAT_EINVAL for an unknown kind. num: room for the
 * job id's digits. */
static int add_event(chat_wire_str *p, int n, char *num, const chat_wire_event *ev)
{
    if (!event_kind_valid(ev->kind)) return CHAT_EINVAL;
    p[n++] = (chat_wire_str){num, format_u64(num, ev->job_id)};
    p[n++] = chat_wire_cstr(EVENTS[ev->kind].name);
    for (int i = 0; i < LAYOUT[ev->kind].n; i++)
        p[n++] = *event_field_c(ev, i);
    return n;
}

static chat_wire_str num_str(char *buf, uint64_t v)
{
    return (chat_wire_str){buf, format_u64(buf, v)};
}

/* ATTACH's and ATTACHED's arguments; num: room for five numbers. */
static int add_attach(chat_wire_str *p, int n, char (*num)[24], const chat_wire_cmd *cmd)
{
    if (cmd->kind == CHAT_WIRE_ATTACH) {
        const chat_wire_attach *a = &cmd->attach;
        p[n++] = num_str(num[0], a->job_id);
        p[n++] = num_str(num[1], a->flags);
        p[n++] = chat_wire_cstr(a->session_id);
        p[n++] = chat_wire_cstr(a->user_id);
        p[n++] = chat_wire_cstr(a->answer_id);
        p[n++] = num_str(num[2], a->last_seq);
        return n;
    }
    const chat_wire_attached *a = &cmd->attached;
    p[n++] = num_str(num[0], a->job_id);
    p[n++] = chat_wire_cstr(chat_wire_attach_status_name(a->status));
    p[n++] = a->answer_id;
    p[n++] = num_str(num[1], a->seq);
    p[n++] = num_str(num[2], a->cursor);
    p[n++] = num_str(num[3], a->age_ms);
    p[n++] = num_str(num[4], a->from);
    p[n++] = a->text;
    p[n++] = a->response;
    p[n++] = a->session_id;
    p[n++] = a->metadata_json;
    return n;
}

/* Appends the arguments of cmd (other than EV) to p[n..); the new n. num: room for five numbers. */
static int add_args(chat_wire_str *p, int n, char (*num)[24], const chat_wire_cmd *cmd)
{
    switch (cmd->kind) {
    case CHAT_WIRE_ATTACH:
    case CHAT_WIRE_ATTACHED:
        return add_attach(p, n, num, cmd);
    case CHAT_WIRE_READY:
        p[n++] = chat_wire_cstr(CHAT_WIRE_VERSION);
        p[n++] = (chat_wire_str){num[0], format_u64(num[0], (uint64_t)(cmd->ready.pid > 0 ? cmd->ready.pid : 0))};
        p[n++] = (chat_wire_str){num[1], format_u64(num[1], (uint64_t)(cmd->ready.slots > 0 ? cmd->ready.slots : 1))};
        break;
    case CHAT_WIRE_JOB:
        p[n++] = (chat_wire_str){num[0], format_u64(num[0], cmd->job.job_id)};
        p[n++] = (chat_wire_str){num[1], format_u64(num[1], cmd->job.flags)};
#define X(field, required) p[n++] = chat_wire_cstr(cmd->job.field);
        CHAT_WIRE_JOB_STRINGS(X)
#undef X
        break;
    case CHAT_WIRE_CANCEL:
    case CHAT_WIRE_DETACH:
        p[n++] = (chat_wire_str){num[0], format_u64(num[0], cmd->job_id)};
        break;
    case CHAT_WIRE_EVS:
        p[n++] = cmd->events.batch;
        break;
    default: /* HB, BYE, RESET: the command alone */
        break;
    }
    return n;
}

int chat_wire_send(void *sock, const chat_wire_str *to, const chat_wire_cmd *cmd, int flags)
{
    if (cmd->kind <= CHAT_WIRE_NONE || (unsigned)cmd->kind >= CHAT_ARRAY_LEN(COMMAND_NAMES)) return CHAT_EINVAL;
    if (cmd->kind == CHAT_WIRE_ATTACHED && !*chat_wire_attach_status_name(cmd->attached.status)) return CHAT_EINVAL;
    chat_wire_str p[MAX_SEND_PARTS];
    char num[5][24];
    int n = 0;
    if (to) p[n++] = *to;
    p[n++] = chat_wire_cstr(COMMAND_NAMES[cmd->kind]);
    n = cmd->kind == CHAT_WIRE_EV ? add_event(p, n, num[0], &cmd->ev) : add_args(p, n, num, cmd);
    if (n < 0) return n;
    return chat_wire_send_parts(sock, p, n, flags);
}

/* The token path: no chat_wire_cmd to fill, the event's fields go to zmq as they are. */
int chat_wire_send_event(void *sock, const chat_wire_event *ev, int flags)
{
    chat_wire_str p[3 + EV_MAX_FIELDS];
    char num[24];
    p[0] = chat_wire_cstr(COMMAND_NAMES[CHAT_WIRE_EV]);
    int n = add_event(p, 1, num, ev);
    if (n < 0) return n;
    return chat_wire_send_parts(sock, p, n, flags);
}
