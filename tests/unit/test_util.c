/* chat_util and chat_config: UTF-8 validation tables, UUIDs, buffers, ids, configuration errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_config.h"
#include "chat_util.h"
#include "testutil.h"

static void test_utf8(void **state)
{
    static const struct {
        const char *s;
        size_t len;
        bool valid;
    } cases[] = {
        {"", 0, true},
        {"plain ascii", 11, true},
        {"caf\xc3\xa9", 5, true},
        {"\xe6\x97\xa5\xe6\x9c\xac", 6, true},       /* CJK */
        {"\xf0\x9f\x9a\xa4", 4, true},               /* emoji */
        {"\xc3", 1, false},                          /* cut */
        {"\xc0\xaf", 2, false},                      /* overlong */
        {"\xe0\x80\xaf", 3, false},                  /* overlong */
        {"\xed\xa0\x80", 3, false},                  /* surrogate */
        {"\xf4\x90\x80\x80", 4, false},              /* > U+10FFFF */
        {"\xff", 1, false},
        {"ok\x80", 3, false},                        /* lone continuation */
        {"a\0b", 3, true},                           /* NUL is valid UTF-8 */
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++)
        assert_int_equal(chat_utf8_valid(cases[i].s, cases[i].len), cases[i].valid);
    /* prefix never cuts a sequence */
    const char *e = "ab\xf0\x9f\x9a\xa4";
    assert_int_equal(chat_utf8_prefix(e, 6, 4), 2);
    assert_int_equal(chat_utf8_prefix(e, 6, 6), 6);
    assert_int_equal(chat_utf8_prefix(e, 6, 2), 2);
}

static void test_uuid(void **state)
{
    char a[37], b[37];
    assert_int_equal(chat_uuid4(a), 0);
    assert_int_equal(chat_uuid4(b), 0);
    assert_int_equal(strlen(a), 36);
    assert_string_not_equal(a, b);
    assert_int_equal(a[14], '4');
    assert_true(strchr("89ab", a[19]) != NULL);
    assert_true(chat_id_valid(a));
}

/* Version 7: the version and variant bits, and ids made later sort after (a millisecond apart). */
static void test_uuid7(void **state)
{
    char prev[37], cur[37];
    assert_int_equal(chat_uuid7(prev), 0);
    for (int i = 0; i < 5; i++) {
        usleep(1500);
        assert_int_equal(chat_uuid7(cur), 0);
        assert_int_equal(strlen(cur), 36);
        assert_int_equal(cur[14], '7');
        assert_true(strchr("89ab", cur[19]) != NULL);
        assert_true(chat_id_valid(cur));
        assert_true(strcmp(cur, prev) > 0);
        memcpy(prev, cur, sizeof cur);
    }
}

static void test_ids(void **state)
{
    assert_true(chat_id_valid("python-session-1"));
    assert_true(chat_id_valid("cust-1001"));
    assert_false(chat_id_valid(""));
    assert_false(chat_id_valid(NULL));
    assert_false(chat_id_valid("has space"));
    assert_false(chat_id_valid("quote'"));
    assert_false(chat_id_valid("a/../b"));
    char long_id[80];
    memset(long_id, 'a', 65);
    long_id[65] = '\0';
    assert_false(chat_id_valid(long_id));
    long_id[64] = '\0';
    assert_true(chat_id_valid(long_id));
    /* ids compare and hash case-folded, as the database's collation compares them */
    assert_true(chat_id_equal("Trip-1", "tRIP-1"));
    assert_false(chat_id_equal("trip-1", "trip_1"));
    assert_false(chat_id_equal("trip-1", "trip-10"));
    assert_true(chat_id_hash(7, "Trip-1") == chat_id_hash(7, "TRIP-1"));
    assert_true(chat_id_hash(7, "trip-1") != chat_id_hash(7, "trip-2"));
}

static void test_buf(void **state)
{
    chat_buf b;
    chat_buf_init(&b);
    for (int i = 0; i < 1000; i++) assert_int_equal(chat_buf_printf(&b, "%d,", i), 0);
    assert_int_equal(strncmp(b.data, "0,1,2,", 6), 0);
    size_t len = b.len;
    chat_buf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_true(b.cap >= len);
    char *s = chat_buf_take(&b);
    assert_non_null(s);
    assert_null(b.data);
    free(s);
    s = chat_buf_take(&b); /* an empty buffer hands out "" */
    assert_string_equal(s, "");
    free(s);
}

/* Comma-separated lists: each item and its length, in order; a trailing comma adds nothing, an empty
 * item in the middle is one of length 0. */
static void test_list_next(void **state)
{
    (void)state;
    static const struct {
        const char *list;
        const char *items; /* the items seen, each followed by '|' */
    } cases[] = {
        {"", ""},     {"a", "a|"},       {"a,b", "a|b|"}, {"ipc://x,tcp://h:1", "ipc://x|tcp://h:1|"},
        {"a,", "a|"}, {"a,,b", "a||b|"}, {",a", "|a|"},   {"one two", "one two|"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char seen[128] = "";
        size_t len;
        for (const char *at = cases[i].list, *p; (p = chat_list_next(&at, &len));)
            snprintf(seen + strlen(seen), sizeof seen - strlen(seen), "%.*s|", (int)len, p);
        if (strcmp(seen, cases[i].items)) fail_msg("'%s': %s", cases[i].list, seen);
    }
    const char *none = NULL;
    size_t len = 0;
    assert_null(chat_list_next(&none, &len));
}

static void test_config_errors(void **state)
{
    chat_config cfg;
    char err[256];
    unsetenv("CHAT_LLM_PROVIDER");
    unsetenv("OPENROUTER_API_KEY");
    unsetenv("LLM_BASE_URL");
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), 0);
    assert_string_equal(cfg.llm_provider, "extractive");
    setenv("CHAT_DB_PORT", "notanumber", 1);
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "CHAT_DB_PORT"));
    /* the servers' form: the same code, the message in the log */
    int p[2], saved = dup(STDERR_FILENO);
    assert_int_equal(pipe(p), 0);
    dup2(p[1], STDERR_FILENO);
    int rc = chat_config_load(&cfg);
    dup2(saved, STDERR_FILENO);
    close(saved), close(p[1]);
    char logged[512] = "";
    ssize_t n = read(p[0], logged, sizeof logged - 1);
    close(p[0]);
    logged[n > 0 ? n : 0] = '\0';
    assert_int_equal(rc, CHAT_EINVAL);
    if (!strstr(logged, "configuration: ") || !strstr(logged, "CHAT_DB_PORT")) fail_msg("logged: %s", logged);
    unsetenv("CHAT_DB_PORT");
    assert_int_equal(chat_config_load(&cfg), 0);
    setenv("OPENROUTER_API_KEY", "sk-secret-value", 1);
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), 0);
    assert_string_equal(cfg.llm_provider, "openai");
    assert_non_null(strstr(cfg.llm_base_url, "openrouter"));
    assert_string_equal(cfg.llm_api_key, "sk-secret-value");
    unsetenv("OPENROUTER_API_KEY");
    setenv("CHAT_LLM_PROVIDER", "magic", 1);
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), CHAT_EINVAL);
    assert_null(strstr(err, "magic")); /* values are never echoed */
    unsetenv("CHAT_LLM_PROVIDER");
    char big[2000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    setenv("JWT_SECRET", big, 1);
    assert_int_equal(chat_config_from_env(&cfg, err, sizeof err), CHAT_EINVAL);
    unsetenv("JWT_SECRET");
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_utf8), cmocka_unit_test(test_uuid), cmocka_unit_test(test_uuid7), cmocka_unit_test(test_ids),
              cmocka_unit_test(test_buf), cmocka_unit_test(test_config_errors), cmocka_unit_test(test_list_next))
