/* Server-Sent Events (WHATWG HTML "event stream interpretation"): the incremental parser and the writer.
 *
 * Design: a byte-level state machine that never needs to look ahead, so a feed may end anywhere (inside a
 * BOM, between CR and LF, inside a UTF-8 sequence) and the result is identical to one big feed. Carried
 * state: the partial line, the pending data and event-type buffers, how much of a leading BOM has been
 * matched, and whether the last byte was a CR (so an LF at the start of the next feed is swallowed).
 * Bytes are passed through untouched; UTF-8 validity is the consumer's business (it sees whole events).
 *
 * Bounds: comment lines are skipped without being buffered (servers may send long keep-alive padding),
 * a field line may hold at most max_event_bytes + a little for the field name, and the data of one event
 * at most max_event_bytes; beyond that the parser fails with CHAT_EINVAL and stays failed until reset.
 *
 * The writer splits data at line breaks into data: lines, so whatever it writes this parser (and any
 * other) reads back as the same event; the REST API's JSON has no raw line breaks, so in practice an
 * event is one data: line. */
#include "chat_sse.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_util.h"

#define SSE_DEFAULT_MAX (1024 * 1024)
#define SSE_FIELD_SLACK 64 /* room for "data: " or "event: " on top of the value */

static const unsigned char sse_bom[3] = {0xEF, 0xBB, 0xBF};

struct chat_sse {
    chat_sse_event_fn fn;
    void *ud;
    size_t max;
    chat_buf line;  /* the current field line, without its terminator */
    chat_buf data;  /* data values, each followed by '\n' */
    chat_buf event; /* event type buffer */
    int bom;        /* leading BOM bytes matched so far; -1 once the start of stream is decided */
    bool last_cr;   /* previous byte ended a line with CR: a following LF belongs to it */
    bool in_comment;
    bool failed;
};

chat_sse *chat_sse_new(chat_sse_event_fn fn, void *ud, size_t max_event_bytes)
{
    if (!fn) return NULL;
    chat_sse *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->fn = fn;
    p->ud = ud;
    p->max = max_event_bytes ? max_event_bytes : SSE_DEFAULT_MAX;
    chat_buf_init(&p->line);
    chat_buf_init(&p->data);
    chat_buf_init(&p->event);
    return p;
}

void chat_sse_free(chat_sse *p)
{
    if (!p) return;
    chat_buf_free(&p->line);
    chat_buf_free(&p->data);
    chat_buf_free(&p->event);
    free(p);
}

void chat_sse_reset(chat_sse *p)
{
    if (!p) return;
    chat_buf_reset(&p->line);
    chat_buf_reset(&p->data);
    chat_buf_reset(&p->event);
    p->bom = 0;
    p->last_cr = false;
    p->in_comment = false;
    p->failed = false;
}

static int sse_fail(chat_sse *p)
{
    p->failed = true;
    return CHAT_EINVAL;
}

static int sse_dispatch(chat_sse *p)
{
    if (p->data.len == 0) {
        /* no data field since the last dispatch: nothing to deliver, only forget the event type */
        chat_buf_reset(&p->event);
        return 0;
    }
    p->data.len--; /* the '\n' after the last data value */
    p->data.data[p->data.len] = '\0';
    const char *name = p->event.len ? p->event.data : "message";
    int rc = p->fn(p->ud, name, p->data.data, p->data.len);
    chat_buf_reset(&p->data);
    chat_buf_reset(&p->event);
    return rc;
}

static int sse_line(chat_sse *p)
{
    if (p->in_comment) {
        p->in_comment = false;
        return 0;
    }
    if (p->line.len == 0) return sse_dispatch(p);

    const char *l = p->line.data;
    size_t n = p->line.len;
    const char *colon = memchr(l, ':', n);
    size_t flen = colon ? (size_t)(colon - l) : n;
    const char *v = colon ? colon + 1 : l + n;
    size_t vlen = (size_t)(l + n - v);
    if (vlen && *v == ' ') v++, vlen--;

    int rc = 0;
    if (flen == 4 && !memcmp(l, "data", 4)) {
        if (p->data.len + vlen + 1 > p->max + 1)
            rc = sse_fail(p);
        else if (chat_buf_append(&p->data, v, vlen) || chat_buf_append(&p->data, "\n", 1))
            rc = CHAT_ENOMEM;
    } else if (flen == 5 && !memcmp(l, "event", 5)) {
        chat_buf_reset(&p->event);
        if (chat_buf_append(&p->event, v, vlen)) rc = CHAT_ENOMEM;
    }
    /* "id" and "retry" only matter to reconnecting EventSource clients; unknown fields are ignored. */
    chat_buf_reset(&p->line);
    return rc;
}

static int sse_append(chat_sse *p, const char *s, size_t n)
{
    if (!n) return 0;
    if (p->line.len == 0 && !p->in_comment && s[0] == ':') p->in_comment = true;
    if (p->in_comment) return 0;
    if (p->line.len + n > p->max + SSE_FIELD_SLACK) return sse_fail(p);
    return chat_buf_append(&p->line, s, n);
}

static int sse_bytes(chat_sse *p, const char *buf, size_t len)
{
    size_t i = 0;
    while (i < len) {
        if (p->last_cr) {
            p->last_cr = false;
            if (buf[i] == '\n') {
                i++;
                continue;
            }
        }
        size_t k = i;
        while (k < len && buf[k] != '\r' && buf[k] != '\n')
            k++;
        int rc = sse_append(p, buf + i, k - i);
        if (rc) return rc;
        if (k == len) break;
        p->last_cr = buf[k] == '\r';
        i = k + 1;
        rc = sse_line(p);
        if (rc) return rc;
    }
    return 0;
}

int chat_sse_feed(chat_sse *p, const char *buf, size_t len)
{
    if (!p) return CHAT_EINVAL;
    if (p->failed) return CHAT_EINVAL;
    size_t i = 0;
    while (p->bom >= 0 && i < len) {
        if ((unsigned char)buf[i] == sse_bom[p->bom]) {
            i++;
            if (++p->bom == 3) p->bom = -1;
            continue;
        }
        /* not a BOM after all: the bytes matched so far are ordinary stream content */
        int matched = p->bom;
        p->bom = -1;
        int rc = sse_bytes(p, (const char *)sse_bom, (size_t)matched);
        if (rc) return rc;
    }
    return sse_bytes(p, buf + i, len - i);
}

int chat_sse_write(chat_buf *out, const char *event, const char *data, size_t len)
{
    if (event && strpbrk(event, "\r\n")) return CHAT_EINVAL;
    if (!data) data = "", len = 0;
    if (event && (chat_buf_puts(out, "event: ") || chat_buf_puts(out, event) || chat_buf_puts(out, "\n")))
        return CHAT_ENOMEM;
    for (size_t i = 0;;) {
        size_t k = i;
        while (k < len && data[k] != '\r' && data[k] != '\n')
            k++;
        if (chat_buf_puts(out, k > i ? "data: " : "data:") || chat_buf_append(out, data + i, k - i) ||
            chat_buf_puts(out, "\n"))
            return CHAT_ENOMEM;
        if (k == len) break;
        if (data[k] == '\r' && k + 1 < len && data[k + 1] == '\n') k++;
        i = k + 1;
    }
    return chat_buf_puts(out, "\n") ? CHAT_ENOMEM : 0;
}
