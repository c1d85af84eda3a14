/* Tests for chat_agent_cfg: the repository's prompts folder loads (each agent's prompt as its file says,
 * no model settings), agents.conf sections and keys merge as documented ([default] under each agent's
 * own) and every malformed line is refused with the file and line named, a prompt file missing, empty,
 * not UTF-8 or too large is refused by name, and a reload, asked for by chat_agent_cfg_request_reload or
 * by SIGHUP, changes the settings at the next chat_agent_cfg_get while a reload that fails keeps the
 * previous settings until the next request. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_agent.h"
#include "chat_agent_cfg.h"
#include "chat_common.h"
#include "chat_util.h"
#include "testutil.h"

/* A private copy of the repository's prompts folder (the test may write into it). */
static char dir[512];

static int setup(void **state)
{
    (void)state;
    const char *d = testutil_copy_dir("prompts", "agent_cfg");
    if (!d) return -1;
    snprintf(dir, sizeof dir, "%s", d);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    testutil_rmdir(dir);
    return 0;
}

/* Writes name in the private folder. */
static void put(const char *name, const char *text)
{
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    assert_int_equal(testutil_write_file(path, text), 0);
}

static void put_repo_file(const char *name)
{
    char rel[128];
    snprintf(rel, sizeof rel, "prompts/%s", name);
    char *text = testutil_read_file(testutil_path(rel), NULL);
    assert_non_null(text);
    put(name, text);
    free(text);
}

static void test_repository_defaults(void **state)
{
    (void)state;
    char err[512];
    chat_agent_cfg *c = chat_agent_cfg_new(testutil_path("prompts"), err, sizeof err);
    if (!c) fail_msg("%s", err);
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent_settings *s = chat_agent_cfg_get(c, chat_agents[i].name);
        char want[128];
        snprintf(want, sizeof want, "You are the Seawind Marine %s assistant for boat owners.", chat_agents[i].name);
        assert_memory_equal(s->prompt, want, strlen(want));
        assert_true(s->prompt[strlen(s->prompt) - 1] == '.'); /* the file's newline trimmed */
        assert_string_equal(s->model, "");                    /* every line of agents.conf is commented */
        assert_int_equal(s->max_tokens, 0);
        assert_false(s->has_temperature);
    }
    /* an unknown agent gets the fallback agent's settings */
    assert_ptr_equal(chat_agent_cfg_get(c, "nobody"), chat_agent_cfg_get(c, chat_agent_fallback()->name));
    chat_agent_cfg_free(c);
    chat_agent_cfg_free(NULL);

    /* no folder named: $CHAT_ROOT/prompts */
    c = chat_agent_cfg_new(NULL, err, sizeof err);
    if (!c) fail_msg("%s", err);
    assert_string_equal(chat_agent_cfg_dir(c), testutil_path("prompts"));
    chat_agent_cfg_free(c);
}

/* agents.conf texts and what they give two agents, or the error they get. */
typedef struct conf_case {
    const char *text;
    const char *err; /* a part of the error, NULL: loads */
    const char *specs_model, *general_model;
    int specs_max, general_max;
    double specs_temp, general_temp; /* -1: none */
} conf_case;

static const conf_case conf_cases[] = {
    {"[default]\nmodel = m-all\ntemperature = 0.5\nmax_tokens = 100\n[specs]\nmodel = m-specs\ntemperature = 0\n", NULL,
     "m-specs", "m-all", 100, 100, 0, 0.5},
    {"# comment\n; another\n\n  [ specs ]  \r\n  max_tokens=42 \r\n[general]\ntemperature = 1.25\n", NULL, "", "", 42,
     0, -1, 1.25},
    {"[specs]\nmodel = first\nmodel = openai/gpt-4o-mini:free\n", NULL, "openai/gpt-4o-mini:free", "", 0, 0, -1, -1},
    {"", NULL, "", "", 0, 0, -1, -1},
    {"[nobody]\n", "agents.conf line 1: unknown section [nobody]", NULL, NULL, 0, 0, 0, 0},
    {"\nmodel = x\n", "line 2: key before the first [section]", NULL, NULL, 0, 0, 0, 0},
    {"[specs]\ncolour = red\n", "line 2: unknown key \"colour\"", NULL, NULL, 0, 0, 0, 0},
    {"[specs]\ntemperature = 3\n", "temperature must be a number in [0, 2]", NULL, NULL, 0, 0, 0, 0},
    {"[specs]\ntemperature = warm\n", "temperature must be", NULL, NULL, 0, 0, 0, 0},
    {"[specs]\nmax_tokens = 0\n", "max_tokens must be an integer in [1, 100000]", NULL, NULL, 0, 0, 0, 0},
    {"[specs]\nmax_tokens = 12x\n", "max_tokens must be", NULL, NULL, 0, 0, 0, 0},
    {"[specs]\nmodel = a b\n", "model has a space", NULL, NULL, 0, 0, 0, 0},
    {"[specs]\nmodel =\n", "model has no value", NULL, NULL, 0, 0, 0, 0},
    {"[specs\n", "line 1: a section line ends with ]", NULL, NULL, 0, 0, 0, 0},
    {"[default]\njust words\n", "line 2: expected key = value", NULL, NULL, 0, 0, 0, 0},
};

static void check_agent(const chat_agent_cfg *cc, const char *agent, const char *model, int max, double temp)
{
    const chat_agent_settings *s = chat_agent_cfg_get((chat_agent_cfg *)cc, agent);
    assert_string_equal(s->model, model);
    assert_int_equal(s->max_tokens, max);
    assert_int_equal(s->has_temperature, temp >= 0);
    if (temp >= 0) assert_true(s->temperature == temp);
}

static void test_conf_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(conf_cases); i++) {
        const conf_case *k = &conf_cases[i];
        put(CHAT_AGENT_CFG_FILE, k->text);
        char err[512] = "";
        chat_agent_cfg *c = chat_agent_cfg_new(dir, err, sizeof err);
        if (k->err) {
            if (c) fail_msg("case %zu loaded, wanted '%s'", i, k->err);
            if (!strstr(err, k->err)) fail_msg("case %zu: '%s' lacks '%s'", i, err, k->err);
            continue;
        }
        if (!c) fail_msg("case %zu: %s", i, err);
        check_agent(c, "specs", k->specs_model, k->specs_max, k->specs_temp);
        check_agent(c, "general", k->general_model, k->general_max, k->general_temp);
        chat_agent_cfg_free(c);
    }
    put_repo_file(CHAT_AGENT_CFG_FILE);
}

/* Prompt files that cannot be used, each named in the error. */
static void test_prompt_errors(void **state)
{
    (void)state;
    char path[700], err[512];
    snprintf(path, sizeof path, "%s/troubleshooting.txt", dir);
    unlink(path);
    assert_null(chat_agent_cfg_new(dir, err, sizeof err));
    assert_non_null(strstr(err, "troubleshooting.txt"));

    static const struct {
        const char *text, *err;
    } bad[] = {{" \n\t\n", "troubleshooting.txt is empty"}, {"caf\xC3 au lait", "troubleshooting.txt is not UTF-8"}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad); i++) {
        put("troubleshooting.txt", bad[i].text);
        assert_null(chat_agent_cfg_new(dir, err, sizeof err));
        if (!strstr(err, bad[i].err)) fail_msg("'%s' lacks '%s'", err, bad[i].err);
    }
    char *big = malloc(CHAT_AGENT_PROMPT_MAX + 2);
    memset(big, 'a', CHAT_AGENT_PROMPT_MAX + 1);
    big[CHAT_AGENT_PROMPT_MAX + 1] = '\0';
    put("troubleshooting.txt", big);
    free(big);
    assert_null(chat_agent_cfg_new(dir, err, sizeof err));
    assert_non_null(strstr(err, "troubleshooting.txt is larger than"));
    put_repo_file("troubleshooting.txt");
    chat_agent_cfg *c = chat_agent_cfg_new(dir, err, sizeof err);
    assert_non_null(c);
    chat_agent_cfg_free(c);
}

/* A reload comes at the first get after a request (a call or SIGHUP); one that fails keeps the previous
 * settings, and the next request tries again. */
static void test_reload(void **state)
{
    (void)state;
    char err[512];
    chat_agent_cfg *c = chat_agent_cfg_new(dir, err, sizeof err);
    if (!c) fail_msg("%s", err);
    const char *old_prompt = chat_agent_cfg_get(c, "specs")->prompt;
    char *keep = strdup(old_prompt);

    put("specs.txt", "Prompt B\n");
    put(CHAT_AGENT_CFG_FILE, "[specs]\nmodel = model-b\ntemperature = 0.2\nmax_tokens = 64\n");
    assert_string_equal(chat_agent_cfg_get(c, "specs")->prompt, keep); /* nothing asked yet */
    unsigned before = chat_agent_cfg_reload_requests();
    chat_agent_cfg_request_reload();
    assert_int_equal(chat_agent_cfg_reload_requests(), before + 1);
    const chat_agent_settings *s = chat_agent_cfg_get(c, "specs");
    assert_string_equal(s->prompt, "Prompt B");
    check_agent(c, "specs", "model-b", 64, 0.2);

    /* by SIGHUP; a broken file keeps what was there */
    assert_int_equal(chat_agent_cfg_install_sighup(), 0);
    put(CHAT_AGENT_CFG_FILE, "[specs]\nmodel = model-c\ntemperature = hot\n");
    assert_int_equal(raise(SIGHUP), 0);
    assert_int_equal(chat_agent_cfg_reload_requests(), before + 2);
    check_agent(c, "specs", "model-b", 64, 0.2);
    assert_string_equal(chat_agent_cfg_get(c, "specs")->prompt, "Prompt B");
    assert_int_equal(chat_agent_cfg_reload(c, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "line 3: temperature must be"));

    /* fixed: taken at the next request, not before */
    put(CHAT_AGENT_CFG_FILE, "[specs]\nmodel = model-c\n");
    check_agent(c, "specs", "model-b", 64, 0.2);
    assert_int_equal(raise(SIGHUP), 0);
    check_agent(c, "specs", "model-c", 0, -1);

    put("specs.txt", keep);
    put_repo_file(CHAT_AGENT_CFG_FILE);
    free(keep);
    chat_agent_cfg_free(c);
}

TESTUTIL_MAIN(setup, teardown,
              cmocka_unit_test(test_repository_defaults),
              cmocka_unit_test(test_conf_table),
              cmocka_unit_test(test_prompt_errors),
              cmocka_unit_test(test_reload))
