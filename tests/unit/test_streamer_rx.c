/* Unit tests of the streamer's frame-header scanner (streamer/streamer_rx.c: srx_scan), which finds
 * unmasked client frames in the bytes lws reads. Streams of client frames are fed whole, split in two
 * at every point and a byte at a time: the scanner reports the first unmasked frame exactly once, and
 * never mistakes a payload's bytes for a header. (The recv() interposition itself is covered end to
 * end by tests/e2e/test_streamer.c.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_util.h"
#include "streamer_rx.h"
#include "testutil.h"
#include "ws_frame.h" /* CHAT_WS_* opcodes */

/* Appends a client frame: opcode, payload of len bytes (all `fill`), masked or not, with the shortest
 * length encoding (7-bit, 16-bit or 64-bit). */
static void frame(chat_buf *b, int opcode, size_t len, unsigned char fill, bool masked)
{
    unsigned char h[14];
    size_t n = 0;
    h[n++] = (unsigned char)(0x80 | opcode);
    unsigned char m = masked ? 0x80 : 0;
    if (len < 126) {
        h[n++] = (unsigned char)(m | len);
    } else if (len < 65536) {
        h[n++] = m | 126;
        h[n++] = (unsigned char)(len >> 8), h[n++] = (unsigned char)len;
    } else {
        h[n++] = m | 127;
        for (int i = 7; i >= 0; i--)
            h[n++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    if (masked)
        for (int i = 0; i < 4; i++)
            h[n++] = (unsigned char)(0x11 * (i + 1));
    assert_int_equal(chat_buf_append(b, h, n), 0);
    unsigned char *p = malloc(len ? len : 1);
    assert_non_null(p);
    memset(p, fill, len);
    assert_int_equal(chat_buf_append(b, p, len), 0);
    free(p);
}

/* Feeds b in pieces of at most step bytes (0: whole) after a first piece of first bytes; returns
 * how many calls reported an unmasked frame and, in *at, the end offset of the piece that did. */
static int feed(const chat_buf *b, size_t first, size_t step, size_t *at)
{
    srx_conn c;
    memset(&c, 0, sizeof c);
    const unsigned char *p = (const unsigned char *)b->data;
    int reports = 0;
    for (size_t off = 0; off < b->len;) {
        size_t n = off == 0 && first ? first : step ? step : b->len - off;
        if (n > b->len - off) n = b->len - off;
        if (srx_scan(&c, p + off, n)) reports++, *at = off + n;
        off += n;
    }
    return reports;
}

typedef struct stream_case {
    const char *name;
    struct {
        int opcode;
        size_t len;
        unsigned char fill;
        bool masked;
    } frames[4];
    int nframes;
    int bad; /* index of the first unmasked frame, -1 = none */
} stream_case;

static void test_scan_streams(void **state)
{
    (void)state;
    /* 0x81 0x05 inside a payload looks like an unmasked text header: it must be skipped as payload. */
    static const stream_case cases[] = {
        {"masked text and empty pong", {{CHAT_WS_TEXT, 2, 'a', true}, {CHAT_WS_PONG, 0, 0, true}}, 2, -1},
        {"unmasked first", {{CHAT_WS_TEXT, 5, 'a', false}, {CHAT_WS_TEXT, 5, 'a', true}}, 2, 0},
        {"unmasked empty pong", {{CHAT_WS_PING, 3, 'p', true}, {CHAT_WS_PONG, 0, 0, false}}, 2, 1},
        {"16-bit length, then unmasked", {{CHAT_WS_TEXT, 200, 'x', true}, {CHAT_WS_CLOSE, 2, 3, false}}, 2, 1},
        {"64-bit length", {{CHAT_WS_BINARY, 70000, 'y', true}, {CHAT_WS_CLOSE, 2, 3, true}}, 2, -1},
        {"payload like headers", {{CHAT_WS_TEXT, 40, 0x81, true}, {CHAT_WS_TEXT, 40, 0x05, true}}, 2, -1},
        {"126 and 65535 bytes",
         {{CHAT_WS_TEXT, 126, 'a', true}, {CHAT_WS_TEXT, 65535, 'b', true}, {CHAT_WS_TEXT, 1, 'c', false}},
         3,
         2},
    };
    for (size_t k = 0; k < CHAT_ARRAY_LEN(cases); k++) {
        chat_buf b;
        chat_buf_init(&b);
        size_t bad_end = 0; /* the unmasked frame's header ends here (its second byte) */
        for (int f = 0; f < cases[k].nframes; f++) {
            if (f == cases[k].bad) bad_end = b.len + 2;
            frame(&b, cases[k].frames[f].opcode, cases[k].frames[f].len, cases[k].frames[f].fill,
                  cases[k].frames[f].masked);
        }
        int want = cases[k].bad >= 0 ? 1 : 0;
        size_t at = 0;
        /* whole, a byte at a time, and split in two at every point of the first 300 bytes */
        if (feed(&b, 0, 0, &at) != want) fail_msg("%s: whole", cases[k].name);
        at = 0;
        if (feed(&b, 0, 1, &at) != want || (want && at != bad_end))
            fail_msg("%s: byte by byte, reported at %zu, want %zu", cases[k].name, at, bad_end);
        for (size_t split = 1; split < b.len && split < 300; split++) {
            at = 0;
            if (feed(&b, split, 0, &at) != want) fail_msg("%s: split at %zu", cases[k].name, split);
            if (want && at != (split >= bad_end ? split : b.len))
                fail_msg("%s: split at %zu reported at %zu", cases[k].name, split, at);
        }
        chat_buf_free(&b);
    }
}

/* A zeroed connection is not attached; detaching it, or one whose fd was out of range, is harmless. */
static void test_detach_unattached(void **state)
{
    (void)state;
    srx_conn c;
    memset(&c, 0, sizeof c);
    srx_detach(&c);
    srx_attach(&c, 5, &c); /* no table: srx_init was not called */
    assert_null(c.ud);
    srx_detach(&c);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_scan_streams),
              cmocka_unit_test(test_detach_unattached))
