/* chat_log: the text line as it always was, the CHAT_LOG_FORMAT=json line (parsed back with json-c),
 * the escaping of its strings, the thread's request/session context, and the SIGHUP reopen. Each test
 * points the log at a fresh file through CHAT_LOG_FILE and reads it back. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_log.h"
#include "testutil.h"

static char log_file[256];

/* Starts logging to a new empty file in the given format (NULL: the default). */
static void start(const char *format)
{
    snprintf(log_file, sizeof log_file, "%s/test_log.%d.log", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp",
             (int)getpid());
    unlink(log_file);
    setenv("CHAT_LOG_FILE", log_file, 1);
    if (format) setenv("CHAT_LOG_FORMAT", format, 1);
    else unsetenv("CHAT_LOG_FORMAT");
    unsetenv("CHAT_LOG_LEVEL");
    chat_log_init("test_log", CHAT_LOG_INFO);
}

/* The file's whole text; caller frees. */
static char *slurp(const char *path)
{
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strdup(buf);
}

/* The file's only line, parsed; it must be one object and end with the one newline. */
static json_object *one_json_line(void)
{
    char *text = slurp(log_file);
    size_t len = strlen(text);
    assert_true(len > 0 && text[len - 1] == '\n');
    assert_null(memchr(text, '\n', len - 1));
    json_object *o = json_tokener_parse(text);
    if (!o) fail_msg("not JSON: %s", text);
    assert_true(json_object_is_type(o, json_type_object));
    free(text);
    return o;
}

static const char *field(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

static void test_text_unchanged(void **state)
{
    (void)state;
    start(NULL);
    chat_log_context_set("req-1", "sess-1"); /* a context never changes a text line */
    chat_log_warn("hello %d", 42);
    chat_log_context_clear();
    char *text = slurp(log_file);
    char expect[128];
    snprintf(expect, sizeof expect, "Z test_log[%d] warn: hello 42\n", (int)getpid());
    /* 2026-12-02T12:00:00.000Z test_log[pid] warn: hello 42 */
    assert_int_equal(strlen(text), 24 + strlen(expect) - 1);
    assert_string_equal(text + 23, expect);
    assert_true(text[4] == '-' && text[10] == 'T' && text[19] == '.');
    free(text);
}

static void test_json_fields(void **state)
{
    (void)state;
    start("json");
    chat_log_info("started on port %d", 8001);
    json_object *o = one_json_line();
    const char *t = field(o, "time");
    assert_non_null(t);
    assert_int_equal(strlen(t), 24); /* 2026-12-02T12:00:00.000Z */
    assert_true(t[10] == 'T' && t[19] == '.' && t[23] == 'Z');
    assert_string_equal(field(o, "level"), "info");
    assert_string_equal(field(o, "process"), "test_log");
    json_object *pid = NULL;
    assert_true(json_object_object_get_ex(o, "pid", &pid));
    assert_int_equal(json_object_get_int(pid), getpid());
    assert_string_equal(field(o, "event"), "started on port 8001");
    assert_null(field(o, "request_id"));
    assert_null(field(o, "session_id"));
    json_object_put(o);
}

static void test_json_escaping(void **state)
{
    (void)state;
    static const struct {
        const char *msg, *parsed; /* what is logged, what the JSON gives back */
    } cases[] = {
        {"say \"hi\"", "say \"hi\""},
        {"two\nlines\r\n", "two\nlines\r\n"},
        {"tab\there", "tab\there"},
        {"back\\slash /", "back\\slash /"},
        {"bell\x01\x1f\x7f", "bell\x01\x1f\x7f"},
        {"caf\xc3\xa9 \xf0\x9f\x9a\xa4", "caf\xc3\xa9 \xf0\x9f\x9a\xa4"},
        {"bad \xff byte", "bad \xef\xbf\xbd byte"}, /* invalid UTF-8 becomes U+FFFD */
        {"}{\"event\":\"forged", "}{\"event\":\"forged"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        start("json");
        chat_log_error("%s", cases[i].msg);
        json_object *o = one_json_line();
        assert_string_equal(field(o, "event"), cases[i].parsed);
        assert_string_equal(field(o, "level"), "error");
        json_object_put(o);
    }
}

static void test_json_long_line(void **state)
{
    (void)state;
    start("json");
    char big[3000];
    memset(big, '"', sizeof big - 1); /* every byte escaped: the line still is one whole object */
    big[sizeof big - 1] = '\0';
    chat_log_info("%s", big);
    json_object *o = one_json_line();
    assert_true(strlen(field(o, "event")) > 1000);
    json_object_put(o);
}

static void test_json_context(void **state)
{
    (void)state;
    start("json");
    chat_log_context_set("req-\"7\"", "sess-abc");
    chat_log_info("answer done");
    json_object *o = one_json_line();
    assert_string_equal(field(o, "request_id"), "req-\"7\"");
    assert_string_equal(field(o, "session_id"), "sess-abc");
    json_object_put(o);

    start("json");
    chat_log_context_set(NULL, "sess-only");
    chat_log_info("x");
    o = one_json_line();
    assert_null(field(o, "request_id"));
    assert_string_equal(field(o, "session_id"), "sess-only");
    json_object_put(o);

    start("json");
    chat_log_context_clear();
    chat_log_info("after");
    o = one_json_line();
    assert_null(field(o, "request_id"));
    assert_null(field(o, "session_id"));
    json_object_put(o);
}

static void *other_thread(void *arg)
{
    (void)arg;
    chat_log_info("from another thread");
    return NULL;
}

/* The context is the thread's own: another thread's line does not carry it. */
static void test_json_context_thread_local(void **state)
{
    (void)state;
    start("json");
    chat_log_context_set("req-main", NULL);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, other_thread, NULL), 0);
    pthread_join(th, NULL);
    chat_log_context_clear();
    json_object *o = one_json_line();
    assert_null(field(o, "request_id"));
    json_object_put(o);
}

static void test_json_sighup_reopen(void **state)
{
    (void)state;
    start("json");
    chat_log_info("before");
    char moved[300];
    snprintf(moved, sizeof moved, "%s.1", log_file);
    assert_int_equal(rename(log_file, moved), 0);
    raise(SIGHUP);
    chat_log_info("after");
    json_object *o = one_json_line();
    assert_string_equal(field(o, "event"), "after");
    json_object_put(o);
    unlink(moved);
}

static int teardown(void **state)
{
    (void)state;
    unlink(log_file);
    return 0;
}

TESTUTIL_MAIN(NULL, teardown,
              cmocka_unit_test(test_text_unchanged),       cmocka_unit_test(test_json_fields),
              cmocka_unit_test(test_json_escaping),        cmocka_unit_test(test_json_long_line),
              cmocka_unit_test(test_json_context),         cmocka_unit_test(test_json_context_thread_local),
              cmocka_unit_test(test_json_sighup_reopen))
