/* Test helpers for fresh databases on the private test server: each test program gets its own
 * database (chat_t_<name>) so programs never see each other's rows; and plain SQL reads of what the
 * library stored, so tests check it without a library function of its own. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_kb.h"
#include "chat_pipeline.h"
#include "chat_util.h"
#include "testutil.h"

chat_config testutil_config(const char *name)
{
    chat_config cfg;
    char err[256];
    if (chat_config_from_env(&cfg, err, sizeof err)) fail_msg("config: %s", err);
    snprintf(cfg.db_name, sizeof cfg.db_name, "chat_t_%s", name);
    return cfg;
}

chat_config testutil_config_fake_llm(const char *name, int port, const char *model)
{
    chat_config cfg = testutil_config(name);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "openai");
    snprintf(cfg.llm_base_url, sizeof cfg.llm_base_url, "http://127.0.0.1:%d/v1", port);
    snprintf(cfg.llm_model, sizeof cfg.llm_model, "%s", model);
    return cfg;
}

void testutil_sql(chat_db *db, const char *sql)
{
    char err[512];
    if (chat_db_exec_script(db, sql, strlen(sql), err, sizeof err)) fail_msg("sql: %s", err);
}

static int count_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    *(long long *)ud = v[0] ? atoll(v[0]) : -1;
    return 0;
}

long long testutil_count(chat_db *db, const char *sql, const char *param)
{
    long long n = -1;
    char err[512];
    chat_db_param p = CHAT_DB_P_STR(param);
    if (chat_db_run(db, sql, &p, param ? 1 : 0, count_row, &n, NULL, NULL, err, sizeof err))
        fail_msg("count: %s", err);
    return n;
}

void testutil_sql_file(chat_db *db, const char *rel)
{
    size_t len;
    char *sql = testutil_read_file(testutil_path(rel), &len);
    if (!sql) fail_msg("cannot read %s", rel);
    char err[512];
    if (chat_db_exec_script(db, sql, len, err, sizeof err)) fail_msg("%s: %s", rel, err);
    free(sql);
}

int testutil_db_teardown(void **state)
{
    chat_db_free(*state);
    return 0;
}

void testutil_db_drop(chat_db *db, const char *name)
{
    char sql[160];
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS `chat_t_%s`", name);
    testutil_sql(db, sql);
}

chat_db *testutil_db_fresh(const char *name, int flags)
{
    chat_config cfg = testutil_config(name);
    chat_db *db = chat_db_new(&cfg);
    char err[512];
    if (!db) fail_msg("out of memory");
    /* created (so that a connection can select it), dropped with an earlier run's rows, created empty */
    if (chat_db_create_database(db, err, sizeof err)) fail_msg("create: %s", err);
    testutil_db_drop(db, name);
    if (chat_db_create_database(db, err, sizeof err)) fail_msg("create: %s", err);
    if (flags & (TESTUTIL_SCHEMA | TESTUTIL_SAMPLE)) {
        char schema[1024], migrations[1024];
        snprintf(schema, sizeof schema, "%s", testutil_path("sql/schema.sql"));
        snprintf(migrations, sizeof migrations, "%s", testutil_path("sql/migrations"));
        if (chat_db_migrate(db, schema, migrations, NULL, err, sizeof err)) fail_msg("migrate: %s", err);
    }
    if (flags & TESTUTIL_SAMPLE) {
        testutil_sql_file(db, "sql/sample_data.sql");
        testutil_sql_file(db, "sql/classifier_terms.sql");
        chat_kb_import_stats st = {0};
        if (chat_kb_import_dir(db, testutil_path("sql/kb"), &st, err, sizeof err)) fail_msg("kb import: %s", err);
    }
    return db;
}

chat_pipeline *testutil_pipeline_sample(const char *name)
{
    chat_db_free(testutil_db_fresh(name, TESTUTIL_SAMPLE));
    chat_config cfg = testutil_config(name);
    snprintf(cfg.llm_provider, sizeof cfg.llm_provider, "extractive");
    snprintf(cfg.customer_access, sizeof cfg.customer_access, "any");
    char err[256];
    chat_pipeline *p = chat_pipeline_new(&cfg, err, sizeof err);
    if (!p) fail_msg("pipeline: %s", err);
    return p;
}

/* A row of the history: counted first, so chat_history_clear frees a half-filled one. */
static int history_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    chat_history *h = ud;
    chat_turn *t = &h->items[h->n++];
    t->role = strdup(v[0] ? v[0] : "");
    t->content = strndup(v[1] ? v[1] : "", v[1] ? lens[1] : 0);
    return t->role && t->content ? 0 : CHAT_ENOMEM;
}

int testutil_history(chat_db *db, const char *session_id, int max_turns, chat_history *out, char *err,
                     size_t errlen)
{
    memset(out, 0, sizeof *out);
    if (!chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    if (max_turns <= 0) return 0;
    if (max_turns > 200) max_turns = 200;
    out->items = calloc(2 * (size_t)max_turns, sizeof *out->items); /* the LIMIT: no row beyond */
    if (!out->items) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    chat_db_param p[] = {CHAT_DB_P_STR(session_id), CHAT_DB_P_INT(2LL * max_turns)};
    int rc = chat_db_run(db,
                         "SELECT role, content FROM (SELECT id, role, content FROM chat_messages WHERE session_id = ?"
                         " ORDER BY id DESC LIMIT ?) t ORDER BY id",
                         p, 2, history_row, out, NULL, NULL, err, errlen);
    if (rc) chat_history_clear(out);
    return rc;
}
