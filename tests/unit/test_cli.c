/* Tests of the command-line option table (tools/cli.c): every kind of row, ranges at their edges, a full
 * list, help, unknown options and missing values, and where the positional arguments end up. One table
 * of command lines, each parsed afresh into zeroed values; then what the values are. */
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "chat_common.h"
#include "cli.h"
#include "testutil.h"

typedef struct vals {
    bool flag;
    const char *str;
    const char *list[2];
    int nlist;
    long l, k;
    int i, choice;
    double d;
} vals;

static const char *const CHOICES[] = {"a", "b", "c", NULL};

static bool parse(const char *const *args, vals *v, int *status)
{
    const chat_cli_opt table[] = {
        CHAT_CLI_FLAG_OPT("flag", &v->flag),
        CHAT_CLI_STR_OPT("str", &v->str),
        CHAT_CLI_LIST_OPT("list", v->list, &v->nlist, 2, "too many --list"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "long", &v->l, 1, 100, "--long: 1..100"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_INT, "int", &v->i, -5, 5, "--int: -5..5"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "dbl", &v->d, 0.5, 2, "--dbl: 0.5..2"),
        CHAT_CLI_CHOICE_OPT("choice", &v->choice, CHOICES, "--choice: a, b or c"),
        {.letter = 'k', .kind = CHAT_CLI_LONG, .dst = &v->k, .lo = 1, .hi = 50, .problem = "-k: 1..50"},
        CHAT_CLI_HELP_OPT('h'),
    };
    static const chat_cli cli = {.prog = "test-cli", .usage = "usage: test-cli [options]\n", .own_messages = true};
    char *argv[32];
    int argc = 0;
    argv[argc++] = (char *)"test-cli";
    for (; args[argc - 1]; argc++) {
        assert_true(argc < (int)CHAT_ARRAY_LEN(argv) - 1);
        argv[argc] = (char *)args[argc - 1];
    }
    argv[argc] = NULL;
    memset(v, 0, sizeof *v);
    v->choice = -1;
    return chat_cli_parse(&cli, table, CHAT_ARRAY_LEN(table), argc, argv, 1, status);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_table(void **state)
{
    const struct {
        const char *const *args;
        bool go;
        int status; /* when not go */
    } cases[] = {
        {ARGS("--long", "1"), true, 0},          {ARGS("--long", "100"), true, 0},
        {ARGS("--long", "0"), false, 2},         {ARGS("--long", "101"), false, 2},
        {ARGS("--long", "5x"), false, 2},        {ARGS("--long", ""), false, 2},
        {ARGS("--long", "99999999999999999999"), false, 2},
        {ARGS("--long", " "), false, 2},         {ARGS("--long", "3 "), false, 2},
        {ARGS("--long", "0x10"), false, 2},      {ARGS("--dbl", "1e0"), true, 0},
        {ARGS("--dbl", "2.01"), false, 2},       {ARGS("--dbl", ""), false, 2},
        {ARGS("--int", "-5"), true, 0},          {ARGS("--int", "6"), false, 2},
        {ARGS("--dbl", "0.5"), true, 0},         {ARGS("--dbl", "2"), true, 0},
        {ARGS("--dbl", "0.49"), false, 2},       {ARGS("--dbl", "1e"), false, 2},
        {ARGS("--choice", "c"), true, 0},        {ARGS("--choice", "d"), false, 2},
        {ARGS("--choice", "A"), false, 2},       {ARGS("--list", "x", "--list", "y"), true, 0},
        {ARGS("--list", "x", "--list", "y", "--list", "z"), false, 2},
        {ARGS("-k", "50"), true, 0},             {ARGS("-k", "51"), false, 2},
        {ARGS("--help"), false, 0},              {ARGS("-h", "--long", "0"), false, 0},
        {ARGS("--nope"), false, 2},              {ARGS("--str"), false, 2},
        {ARGS("-k"), false, 2},                  {ARGS("-x"), false, 2},
        {ARGS("--flag=1"), false, 2},            {ARGS("positional", "only"), true, 0},
    };
    int saved = dup(STDERR_FILENO), null = open("/dev/null", O_WRONLY); /* the usage texts of the refusals */
    assert_true(saved >= 0 && null >= 0);
    fflush(stderr);
    dup2(null, STDERR_FILENO);
    int wrong = -1, got_go = 0, got_status = 0;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases) && wrong < 0; i++) {
        vals v;
        int status = -1;
        bool go = parse(cases[i].args, &v, &status);
        if (go != cases[i].go || (!go && status != cases[i].status)) wrong = (int)i, got_go = go, got_status = status;
    }
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved), close(null);
    if (wrong >= 0)
        fail_msg("case %d (%s ...): go %d status %d, want %d %d", wrong, cases[wrong].args[0], got_go, got_status,
                 cases[wrong].go, cases[wrong].status);
}

static void test_values(void **state)
{
    vals v;
    int status;
    assert_true(parse(ARGS("first", "--flag", "--str", "s", "--list", "a", "--long", "7", "--long", "8", "--int", "-5",
                           "--dbl", "1.5", "--choice", "b", "-k", "3", "--list", "b", "last"),
                      &v, &status));
    assert_true(v.flag);
    assert_string_equal(v.str, "s");
    assert_int_equal(v.nlist, 2);
    assert_string_equal(v.list[0], "a");
    assert_string_equal(v.list[1], "b");
    assert_int_equal(v.l, 8); /* the last one wins */
    assert_int_equal(v.i, -5);
    assert_true(v.d == 1.5);
    assert_int_equal(v.choice, 1);
    assert_int_equal(v.k, 3);
    /* the positional arguments, permuted to the end */
    assert_int_equal(optind, 20);

    assert_true(parse(ARGS("--str", "--flag"), &v, &status)); /* a value may look like an option */
    assert_string_equal(v.str, "--flag");
    assert_false(v.flag);
    assert_true(parse(ARGS("--", "--flag"), &v, &status)); /* "--" ends the options */
    assert_false(v.flag);
    /* a refused value leaves what an earlier one stored */
    int saved = dup(STDERR_FILENO), null = open("/dev/null", O_WRONLY);
    assert_true(saved >= 0 && null >= 0);
    dup2(null, STDERR_FILENO);
    bool go_long = parse(ARGS("--long", "5", "--long", "0"), &v, &status);
    long kept_long = v.l;
    bool go_dbl = parse(ARGS("--dbl", "1.25", "--dbl", "9"), &v, &status);
    dup2(saved, STDERR_FILENO);
    close(saved), close(null);
    assert_false(go_long);
    assert_int_equal(kept_long, 5);
    assert_false(go_dbl);
    assert_true(v.d == 1.25);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_table),
              cmocka_unit_test(test_values))
