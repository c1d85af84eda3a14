/* Tests for chat_sse: the writer (a table of events with their exact text, each read back by the parser
 * as the event it was), a table of small streams with their expected events, the size bound, stop and reset,
 * and a realistic stream (BOM, CRLF, CR, comments, multi-line data, UTF-8) fed split at every byte
 * position (two and three pieces) and one byte at a time: the events must be the same every time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_sse.h"
#include "chat_util.h"
#include "testutil.h"

/* Events are recorded as "name\x01data\x02" so a whole run compares as one string. */
static int record(void *ud, const char *event, const char *data, size_t len)
{
    chat_buf *b = ud;
    assert_int_equal(strlen(data), len); /* NUL-terminated at len (no NUL in these streams) */
    chat_buf_puts(b, event);
    chat_buf_append(b, "\x01", 1);
    chat_buf_append(b, data, len);
    chat_buf_append(b, "\x02", 1);
    return 0;
}

/* Feeds s in pieces ending at the given cut positions; returns the recorded events (caller frees). */
static char *run_cuts(const char *s, size_t len, const size_t *cuts, size_t ncuts)
{
    chat_buf out;
    chat_buf_init(&out);
    chat_sse *p = chat_sse_new(record, &out, 4096);
    assert_non_null(p);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        assert_int_equal(chat_sse_feed(p, s + at, end - at), 0);
        at = end;
    }
    chat_sse_free(p);
    return chat_buf_take(&out);
}

static char *run_whole(const char *s)
{
    return run_cuts(s, strlen(s), NULL, 0);
}

typedef struct {
    const char *name;
    const char *in;
    const char *want; /* events as "name\x01data\x02"... */
} sse_case;

#define EV(n, d) n "\x01" d "\x02"

static const sse_case cases[] = {
    {"simple", "data: hello\n\n", EV("message", "hello")},
    {"no space after colon", "data:hello\n\n", EV("message", "hello")},
    {"only one space stripped", "data:  hello\n\n", EV("message", " hello")},
    {"multi-line data", "data: a\ndata: b\ndata:\n\n", EV("message", "a\nb\n")},
    {"named event", "event: ping\ndata: x\n\n", EV("ping", "x")},
    {"event type resets after dispatch", "event: a\ndata: 1\n\ndata: 2\n\n", EV("a", "1") EV("message", "2")},
    {"empty event name is message", "event:\ndata: x\n\n", EV("message", "x")},
    {"CRLF", "data: a\r\ndata: b\r\n\r\ndata: c\r\n\r\n", EV("message", "a\nb") EV("message", "c")},
    {"CR", "data: a\rdata: b\r\r", EV("message", "a\nb")},
    {"mixed endings", "data: a\r\n\rdata: b\n\r\n", EV("message", "a") EV("message", "b")},
    {"comments ignored", ": hi\ndata: a\n: between\ndata: b\n\n", EV("message", "a\nb")},
    {"comment-only block does not dispatch", ": keep-alive\n\n: OPENROUTER PROCESSING\n\n", ""},
    {"no data field: no dispatch", "event: x\n\nid: 1\n\nretry: 10\n\n", ""},
    {"empty data value dispatches empty data", "data:\n\n", EV("message", "")},
    {"field without colon", "data\ndata\n\n", EV("message", "\n")},
    {"id and retry ignored", "id: 5\nretry: 100\ndata: x\n\n", EV("message", "x")},
    {"unknown field ignored", "foo: bar\ndata: x\n\n", EV("message", "x")},
    {"field name is exact", "data : x\nDATA: y\n\n", ""},
    {"value may contain colons", "data: a:b: c\n\n", EV("message", "a:b: c")},
    {"BOM at start ignored",
     "\xEF\xBB\xBF"
     "data: x\n\n",
     EV("message", "x")},
    {"BOM only at start",
     "\xEF\xBB\xBF"
     "data: a\n\n\xEF\xBB\xBF"
     "data: b\n\n",
     EV("message", "a")},
    {"partial BOM is content",
     "\xEF\xBB"
     "data: a\n\ndata: b\n\n",
     EV("message", "b")},
    {"unfinished event dropped", "data: a\n\ndata: b\n", EV("message", "a")},
    {"unterminated line dropped", "data: a", ""},
    {"blank lines alone", "\n\r\n\r\n", ""},
    {"UTF-8 passes through", "data: caf\xC3\xA9 \xF0\x9F\x9A\xA4\n\n", EV("message", "caf\xC3\xA9 \xF0\x9F\x9A\xA4")},
    {"DONE sentinel is plain data", "data: {\"a\":1}\n\ndata: [DONE]\n\n",
     EV("message", "{\"a\":1}") EV("message", "[DONE]")},
};

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char *got = run_whole(cases[i].in);
        if (strcmp(got, cases[i].want)) fail_msg("case '%s': got '%s' want '%s'", cases[i].name, got, cases[i].want);
        free(got);
    }
}

/* ---- the writer ---- */

static void test_write_table(void **state)
{
    (void)state;
    static const struct {
        const char *name, *event, *data;
        const char *want, *read_back; /* the exact text; the event the parser reads from it */
    } wcases[] = {
        {"data only", NULL, "{\"a\":1}", "data: {\"a\":1}\n\n", EV("message", "{\"a\":1}")},
        {"named", "token", "{\"type\":\"token\"}", "event: token\ndata: {\"type\":\"token\"}\n\n",
         EV("token", "{\"type\":\"token\"}")},
        {"DONE", NULL, "[DONE]", "data: [DONE]\n\n", EV("message", "[DONE]")},
        {"empty data", "ping", "", "event: ping\ndata:\n\n", EV("ping", "")},
        {"lines split", NULL, "a\nb\r\nc\rd", "data: a\ndata: b\ndata: c\ndata: d\n\n", EV("message", "a\nb\nc\nd")},
        {"trailing line break kept", NULL, "a\n", "data: a\ndata:\n\n", EV("message", "a\n")},
        {"leading space kept", NULL, " x", "data:  x\n\n", EV("message", " x")},
        {"colon and UTF-8 pass", NULL, "caf\xC3\xA9: [x]", "data: caf\xC3\xA9: [x]\n\n",
         EV("message", "caf\xC3\xA9: [x]")},
    };
    chat_buf b;
    chat_buf_init(&b);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(wcases); i++) {
        chat_buf_reset(&b);
        assert_int_equal(chat_sse_write(&b, wcases[i].event, wcases[i].data, strlen(wcases[i].data)), 0);
        if (strcmp(b.data, wcases[i].want)) fail_msg("%s: wrote '%s'", wcases[i].name, b.data);
        char *got = run_whole(b.data);
        if (strcmp(got, wcases[i].read_back)) fail_msg("%s: read back '%s'", wcases[i].name, got);
        free(got);
    }
    /* Events append; an event name with a line break is refused and writes nothing. */
    chat_buf_reset(&b);
    assert_int_equal(chat_sse_write(&b, NULL, "1", 1), 0);
    assert_int_equal(chat_sse_write(&b, NULL, "2", 1), 0);
    assert_int_equal(chat_sse_write(&b, "a\nb", "3", 1), CHAT_EINVAL);
    assert_string_equal(b.data, "data: 1\n\ndata: 2\n\n");
    chat_buf_free(&b);
}

/* A stream in the shape real providers send, with every awkward feature at once. */
static const char realistic[] =
    "\xEF\xBB\xBF"
    ": OPENROUTER PROCESSING\r\n\r\n"
    "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\r\n\r\n"
    "data: {\"choices\":[{\"delta\":{\"content\":\"Bonjour \xC3\xA9t\xC3\xA9 \xF0\x9F\x9A\xA4\"}}]}\n\n"
    "event: note\rdata: line one\rdata: line two\r\r"
    ": keep-alive\n"
    "id: 42\n"
    "data:no-space\n\n"
    "data: \xE6\x97\xA5\xE6\x9C\xAC\r\n"
    "data\r\n"
    "\r\n"
    "event: ignored-no-data\n\n"
    "data: [DONE]\n\n"
    "data: unfinished";

static const char realistic_want[] =
    EV("message", "{\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}")
        EV("message", "{\"choices\":[{\"delta\":{\"content\":\"Bonjour \xC3\xA9t\xC3\xA9 \xF0\x9F\x9A\xA4\"}}]}")
            EV("note", "line one\nline two") EV("message", "no-space") EV("message", "\xE6\x97\xA5\xE6\x9C\xAC\n")
                EV("message", "[DONE]");

static void test_realistic_every_split(void **state)
{
    (void)state;
    size_t len = sizeof realistic - 1;
    char *ref = run_whole(realistic);
    assert_string_equal(ref, realistic_want);

    for (size_t i = 0; i <= len; i++) {
        size_t cut[1] = {i};
        char *got = run_cuts(realistic, len, cut, 1);
        if (strcmp(got, ref)) fail_msg("split at byte %zu differs", i);
        free(got);
    }
    /* three pieces: every pair of cut points (catches state carried across two boundaries, e.g. CR|LF) */
    for (size_t i = 0; i <= len; i++) {
        for (size_t j = i; j <= len; j++) {
            size_t cut[2] = {i, j};
            char *got = run_cuts(realistic, len, cut, 2);
            if (strcmp(got, ref)) fail_msg("split at bytes %zu and %zu differs", i, j);
            free(got);
        }
    }
    /* one byte at a time */
    size_t *cuts = malloc(len * sizeof *cuts);
    assert_non_null(cuts);
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    char *got = run_cuts(realistic, len, cuts, len);
    assert_string_equal(got, ref);
    free(got);
    free(cuts);
    free(ref);
}

static void test_bound(void **state)
{
    (void)state;
    chat_buf out;
    chat_buf_init(&out);
    chat_sse *p = chat_sse_new(record, &out, 8);
    assert_non_null(p);
    /* exactly 8 bytes of data across two lines (a\n + 5 bytes... = 8) is fine */
    assert_int_equal(chat_sse_feed(p, "data: ab\ndata: cdefg\n\n", 22), 0);
    assert_string_equal(out.data, EV("message", "ab\ncdefg"));
    /* 9 bytes is not */
    assert_int_equal(chat_sse_feed(p, "data: ab\ndata: cdefgh\n\n", 23), CHAT_EINVAL);
    /* failure is sticky until reset */
    assert_int_equal(chat_sse_feed(p, "data: x\n\n", 9), CHAT_EINVAL);
    chat_sse_reset(p);
    chat_buf_reset(&out);
    assert_int_equal(chat_sse_feed(p, "data: x\n\n", 9), 0);
    assert_string_equal(out.data, EV("message", "x"));

    /* a very long line without terminator is refused without buffering it all */
    chat_sse_reset(p);
    char big[4096];
    memset(big, 'x', sizeof big);
    assert_int_equal(chat_sse_feed(p, big, sizeof big), CHAT_EINVAL);

    /* but a long comment line is skipped, whatever its length */
    chat_sse_reset(p);
    chat_buf_reset(&out);
    big[0] = ':';
    assert_int_equal(chat_sse_feed(p, big, sizeof big), 0);
    assert_int_equal(chat_sse_feed(p, big, sizeof big), 0);
    assert_int_equal(chat_sse_feed(p, "\ndata: y\n\n", 10), 0);
    assert_string_equal(out.data, EV("message", "y"));
    chat_sse_free(p);
    chat_buf_free(&out);
}

static int stop_at_second(void *ud, const char *event, const char *data, size_t len)
{
    (void)event, (void)data, (void)len;
    int *n = ud;
    return ++*n == 2 ? 7 : 0;
}

static void test_stop_and_reset(void **state)
{
    (void)state;
    int n = 0;
    chat_sse *p = chat_sse_new(stop_at_second, &n, 0);
    assert_non_null(p);
    assert_int_equal(chat_sse_feed(p, "data: 1\n\ndata: 2\n\ndata: 3\n\n", 27), 7);
    assert_int_equal(n, 2);
    chat_sse_free(p);

    chat_buf out;
    chat_buf_init(&out);
    p = chat_sse_new(record, &out, 0);
    assert_int_equal(chat_sse_feed(p, "event: e\ndata: half", 19), 0);
    assert_int_equal(chat_sse_feed(p, "\r", 1), 0);
    chat_sse_reset(p);
    /* after reset: no leftover event type, data or pending CR, and a BOM is accepted again */
    assert_int_equal(chat_sse_feed(p,
                                   "\n\xEF\xBB\xBF"
                                   "data: x\n\n",
                                   13),
                     0);
    assert_null(out.data); /* the leading LF made a blank line (nothing), the BOM is now mid-stream */
    chat_sse_reset(p);
    assert_int_equal(chat_sse_feed(p,
                                   "\xEF\xBB\xBF"
                                   "data: x\n\n",
                                   12),
                     0);
    assert_string_equal(out.data, EV("message", "x"));
    chat_sse_free(p);
    chat_buf_free(&out);

    assert_null(chat_sse_new(NULL, NULL, 0));
    chat_sse_free(NULL);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_table),
              cmocka_unit_test(test_write_table),
              cmocka_unit_test(test_realistic_every_split),
              cmocka_unit_test(test_bound),
              cmocka_unit_test(test_stop_and_reset))
