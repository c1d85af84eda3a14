/* Knowledge base against the real private MariaDB: schema and migrations, import and idempotent
 * re-import, ranking on the sample knowledge base, hostile inputs, admin edits visible after COMMIT,
 * and a server restart in the middle of a run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_kb.h"
#include "chat_util.h"
#include "testutil.h"

static chat_db *db; /* the sample knowledge base, shared by the read-only tests */

static long long count_sql(chat_db *d, const char *sql) { return testutil_count(d, sql, NULL); }

static int setup_sample(void **state)
{
    *state = db = testutil_db_fresh("kb", TESTUTIL_SAMPLE);
    return 0;
}

static void test_sample_loaded(void **state)
{
    assert_true(count_sql(db, "SELECT COUNT(*) FROM kb_documents") >= 60);
    assert_true(count_sql(db, "SELECT COUNT(DISTINCT model_id) FROM kb_documents WHERE agent = 'specs'") >= 6);
    assert_true(count_sql(db, "SELECT COUNT(*) FROM kb_documents WHERE agent IS NULL") > 0);
    assert_true(count_sql(db, "SELECT COUNT(*) FROM customers") >= 10);
}

static void test_migrations(void **state)
{
    /* A fresh database, then a migration folder with two numbered files: applied once, in order. */
    chat_db *d = testutil_db_fresh("kb_migrate", TESTUTIL_SCHEMA);
    char dir[] = "/tmp/chat-migrations-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/110_second.sql", dir);
    FILE *f = fopen(path, "w");
    fputs("ALTER TABLE t_mig ADD COLUMN IF NOT EXISTS b INT NOT NULL DEFAULT 7;\n", f);
    fclose(f);
    snprintf(path, sizeof path, "%s/100_first.sql", dir);
    f = fopen(path, "w");
    fputs("CREATE TABLE t_mig (a INT);\nINSERT INTO t_mig (a) VALUES (1);\n", f);
    fclose(f);
    char err[512], schema[1024];
    snprintf(schema, sizeof schema, "%s", testutil_path("sql/schema.sql"));
    int version = 0;
    int before = count_sql(d, "SELECT COUNT(*) FROM schema_version"); /* the baseline and sql/migrations */
    assert_true(before >= 1);
    assert_true(count_sql(d, "SELECT MAX(version) FROM schema_version") < 100);
    assert_int_equal(chat_db_migrate(d, schema, dir, &version, err, sizeof err), 0);
    assert_int_equal(version, 110);
    assert_int_equal(count_sql(d, "SELECT SUM(b) FROM t_mig"), 7);
    /* again: nothing re-applied (the INSERT would add a row) */
    assert_int_equal(chat_db_migrate(d, schema, dir, &version, err, sizeof err), 0);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM t_mig"), 1);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM schema_version"), before + 2);
    unlink(path);
    snprintf(path, sizeof path, "%s/110_second.sql", dir);
    unlink(path);
    rmdir(dir);
    chat_db_free(d);
}

/* chat_kb_search, which must succeed. */
/* Whether searches read the derived table kb_search (as the pipeline does) or kb_documents: the tests
 * of edits and ranking run both ways (the _derived twins below). */
static bool derived;

static void search_ok(chat_db *d, const chat_kb_query *q, chat_kb_result *r)
{
    char err[256];
    chat_kb_query dq = *q;
    if (derived) dq.sync_db = d;
    int rc = chat_kb_search(d, &dq, r, err, sizeof err);
    if (rc) fail_msg("search '%s': %s (%s)", q->question, chat_strerror(rc), err);
}

/* The k best passages for a question, with no other part of a query. */
static void search_for(chat_db *d, const char *question, size_t k, chat_kb_result *r)
{
    chat_kb_query q = {.question = question, .k = k};
    search_ok(d, &q, r);
}

static int top_is(chat_db *d, const char *question, const char *source)
{
    chat_kb_result r;
    search_for(d, question, 1, &r);
    int yes = r.n && !strcmp(r.items[0].source, source);
    chat_kb_result_clear(&r);
    return yes;
}

static long long kb_engine_is(chat_db *d, const char *engine)
{
    return testutil_count(d,
                          "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE()"
                          " AND table_name = 'kb_documents' AND engine = ?",
                          engine);
}

/* A database of schema version 3 (kb_documents an Aria table, as migration 002 made it) is converted by
 * the project's own migrations to InnoDB, both FULLTEXT indexes and every passage kept and searchable,
 * and the table then rolls back. */
static void test_migration_004_innodb(void **state)
{
    chat_db *d = testutil_db_fresh("kb_m004", TESTUTIL_SAMPLE);
    int passages = count_sql(d, "SELECT COUNT(*) FROM kb_documents");
    assert_true(passages > 100);
    testutil_sql(d, "ALTER TABLE kb_documents ENGINE=Aria TRANSACTIONAL=1;"
                    "DELETE FROM schema_version WHERE version >= 4;");
    assert_int_equal(kb_engine_is(d, "Aria"), 1);
    char err[512], schema[1024], migrations[1024];
    snprintf(schema, sizeof schema, "%s", testutil_path("sql/schema.sql"));
    snprintf(migrations, sizeof migrations, "%s", testutil_path("sql/migrations"));
    int version = 0;
    if (chat_db_migrate(d, schema, migrations, &version, err, sizeof err)) fail_msg("migrate: %s", err);
    assert_true(version >= 4);
    assert_int_equal(kb_engine_is(d, "InnoDB"), 1);
    assert_int_equal(count_sql(d, "SELECT COUNT(DISTINCT index_name) FROM information_schema.statistics"
                                  " WHERE table_schema = DATABASE() AND table_name = 'kb_documents'"
                                  " AND index_type = 'FULLTEXT'"),
                     2);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM kb_documents"), passages);
    assert_true(top_is(d, "Seawind 250 engine power", "seawind-250/specs.md"));
    testutil_sql(d, "START TRANSACTION; DELETE FROM kb_documents; ROLLBACK;");
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM kb_documents"), passages);
    chat_db_free(d);
}

static void test_import_idempotent(void **state)
{
    chat_db *d = testutil_db_fresh("kb_import", TESTUTIL_SCHEMA);
    const char *doc = "---\ntitle: Test Boat Specs\nagent: specs\nmodel: test-1\n---\n# Test Boat\nIntro line.\n"
                      "## Engine\nThe Test Boat has 99 hp.\n## Hull\nThe hull is blue.\n";
    char err[256];
    chat_kb_import_stats st = {0, 0};
    assert_int_equal(chat_kb_import_text(d, "test/specs.md", doc, strlen(doc), &st, err, sizeof err), 0);
    assert_int_equal(st.passages, 3);
    assert_int_equal(chat_kb_import_text(d, "test/specs.md", doc, strlen(doc), &st, err, sizeof err), 0);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM kb_documents"), 3);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM kb_documents WHERE title = 'Test Boat Specs - Engine'"
                                  " AND agent = 'specs' AND model_id = 'test-1'"),
                     1);
    /* a shorter new version replaces the old rows */
    const char *v2 = "---\ntitle: Test Boat Specs\n---\n## Engine\nNow 120 hp.\n";
    assert_int_equal(chat_kb_import_text(d, "test/specs.md", v2, strlen(v2), &st, err, sizeof err), 0);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM kb_documents"), 1);
    /* agent from the path when the front matter has none */
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM kb_documents WHERE agent = 'specs'"), 1);
    /* invalid UTF-8 and unknown agents are refused, and the previous rows stay */
    const char bad[] = "## X\nbad \xff\xfe bytes\n";
    assert_int_equal(chat_kb_import_text(d, "test/specs.md", bad, strlen(bad), &st, err, sizeof err), CHAT_EINVAL);
    const char *badagent = "---\nagent: sales\n---\n## X\ntext\n";
    assert_int_equal(chat_kb_import_text(d, "test/specs.md", badagent, strlen(badagent), &st, err, sizeof err),
                     CHAT_EINVAL);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM kb_documents"), 1);
    chat_db_free(d);
}

static void test_reimport_sample_dir(void **state)
{
    long long before = count_sql(db, "SELECT COUNT(*) FROM kb_documents");
    char err[256];
    chat_kb_import_stats st = {0, 0};
    assert_int_equal(chat_kb_import_dir(db, testutil_path("sql/kb"), &st, err, sizeof err), 0);
    assert_int_equal(st.passages, before);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_documents"), before);
}

/* A row of tests/data/kb_ranking.tsv: the expected source, then the question; true when it comes first. */
static bool ranking_row(char **row, void *ud)
{
    const char *expected = row[0], *question = row[1];
    char code[16];
    chat_kb_query q = {.question = question, .k = 3};
    if (chat_kb_find_fault_code(question, code)) q.fault_code = code;
    chat_kb_result r;
    search_ok(db, &q, &r);
    bool first = r.n && !strcmp(r.items[0].source, expected);
    if (!first)
        print_message("ranking miss: %s -> %s (expected %s)\n", question, r.n ? r.items[0].source : "-", expected);
    chat_kb_result_clear(&r);
    return first;
}

/* The right document first for each realistic question of tests/data/kb_ranking.tsv. */
static void test_ranking(void **state)
{
    testutil_tsv_score("tests/data/kb_ranking.tsv", "ranking (first)", 2, ranking_row, NULL, 25, 90);
}

static void test_short_tokens_and_codes(void **state)
{
    static const struct {
        const char *question;
        const char *must_contain; /* in the top passage's title or body */
    } cases[] = {
        {"V6", "V6"}, {"hp", "hp"}, {"E42", "E42"}, {"what does e42 mean", "E42"}, {"fault E-42", "E42"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char code[16];
        chat_kb_query q = {.question = cases[i].question, .k = 3};
        if (chat_kb_find_fault_code(cases[i].question, code)) q.fault_code = code;
        chat_kb_result r;
        search_ok(db, &q, &r);
        assert_true(r.n > 0);
        assert_true(strstr(r.items[0].body, cases[i].must_contain) || strstr(r.items[0].title, cases[i].must_contain));
        chat_kb_result_clear(&r);
    }
}

static void test_hostile_inputs(void **state)
{
    char *big = malloc(10 * 1024 + 1);
    for (int i = 0; i < 10 * 1024; i++)
        big[i] = "abc (+*~\"' OR 1=1 -- "[i % 21];
    big[10 * 1024] = '\0';
    const char *inputs[] = {
        "C++",
        "foo@bar.com",
        "*",
        "+",
        "~",
        "(((",
        "' OR 1=1 --",
        "\"unterminated",
        "-engine +power",
        "@distance 3",
        "🚤🚤🚤 engine",
        "发动机功率是多少",
        "\xff\xfe\xfd invalid \xc3\x28 utf8",
        "",
        "   ",
        "%",
        "_",
        "\\",
        big,
        "a' UNION SELECT password FROM mysql.user --",
        "MATCH(title) AGAINST('x')",
        "E",
        "E12345",
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(inputs); i++) {
        char code[16];
        chat_kb_query q = {.question = inputs[i], .k = 5, .agent = (i % 2) ? "specs" : NULL};
        if (chat_kb_find_fault_code(inputs[i], code)) q.fault_code = code;
        chat_kb_result r;
        char err[256] = "";
        int rc = chat_kb_search(db, &q, &r, err, sizeof err);
        if (rc) fail_msg("input %zu gave an error: %s", i, err);
        assert_true(r.n <= 5);
        chat_kb_result_clear(&r);
    }
    free(big);
    /* the sanitised query never contains an operator */
    char *s = chat_kb_sanitize("+a -b ~c \"d\" (e) f* <g> @3 h", 0);
    assert_non_null(s);
    assert_null(strpbrk(s, "+-~\"()*<>@"));
    free(s);
}

static void test_fault_code_parse(void **state)
{
    static const struct {
        const char *text;
        const char *code; /* NULL = none */
    } cases[] = {
        {"what does E42 mean", "E42"},
        {"e42?", "E42"},
        {"code E-7 shows", "E7"},
        {"P0300 misfire", "P0300"},
        {"HE42 is not one", NULL},
        {"E12345", NULL},
        {"no code here", NULL},
        {"E", NULL},
        {"E42x", NULL},
        {"(E88)", "E88"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char out[16];
        int found = chat_kb_find_fault_code(cases[i].text, out);
        if (cases[i].code) {
            assert_int_equal(found, 1);
            assert_string_equal(out, cases[i].code);
        } else {
            assert_int_equal(found, 0);
        }
    }
}

/* An admin's INSERT/UPDATE/DELETE with plain SQL is visible to the very next search (COMMIT included,
 * which admins used to InnoDB write and which is harmless here). */
static void test_admin_edits_visible(void **state)
{
    chat_config cfg = testutil_config("kb");
    chat_db *admin = chat_db_new(&cfg);
    testutil_sql(admin, "START TRANSACTION;"
                        "INSERT INTO kb_documents (source, title, agent, body) VALUES ('admin/new.md',"
                        " 'Zanzibar dock etiquette', NULL, 'Quixotic flamingos moor at the zanzibar dock.');"
                        "COMMIT;");
    static const char hits_sql[] =
        "SELECT variable_value FROM information_schema.global_status WHERE variable_name = 'QCACHE_HITS'";
    long long hits = count_sql(admin, hits_sql);
    /* The same question four times: answered by the query cache by the fourth at the latest (the private
     * server runs with query_cache_type=2; the first read after another connection's write to an Aria
     * table is not stored, and with the derived table the first search reads kb_documents and copies
     * the edit into kb_search). */
    for (int i = 0; i < 4; i++)
        assert_true(top_is(db, "zanzibar flamingos", "admin/new.md"));
    assert_true(count_sql(admin, hits_sql) > hits);
    testutil_sql(admin, "UPDATE kb_documents SET body = 'Renamed to the xylophone pier.' WHERE source = 'admin/new.md';"
                        "COMMIT;");
    /* the same question again: the edit emptied the cache, the new body comes back, not the cached one */
    chat_kb_result r;
    search_for(db, "zanzibar flamingos", 1, &r);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.items[0].body, "Renamed to the xylophone pier.");
    chat_kb_result_clear(&r);
    assert_true(top_is(db, "xylophone pier", "admin/new.md"));
    assert_false(top_is(db, "flamingos", "admin/new.md"));
    testutil_sql(admin, "DELETE FROM kb_documents WHERE source = 'admin/new.md'; COMMIT;");
    assert_false(top_is(db, "xylophone pier", "admin/new.md"));
    chat_db_free(admin);
}

/* The body retrieval returns as the top passage for question, or "" (copied into out). */
static const char *top_body(chat_db *d, const char *question, char *out, size_t cap)
{
    chat_kb_result r;
    search_for(d, question, 1, &r);
    snprintf(out, cap, "%s", r.n ? r.items[0].body : "");
    chat_kb_result_clear(&r);
    return out;
}

/* An admin's edit is a transaction: an UPDATE is never seen by retrieval while it is open nor after its
 * ROLLBACK (an Aria table kept it: warning 1196), a DELETE and INSERT replacing a passage are never seen
 * half done, and the committed UPDATE is seen by the very next search. */
static void test_admin_edits_transactional(void **state)
{
    chat_config cfg = testutil_config("kb");
    chat_db *admin = chat_db_new(&cfg);
    char body[512];
    testutil_sql(admin, "INSERT INTO kb_documents (source, title, agent, body) VALUES ('admin/tx.md',"
                        " 'Quokka slipway hours', NULL, 'The quokka slipway opens at dawn.');");
    assert_string_equal(top_body(db, "quokka slipway", body, sizeof body), "The quokka slipway opens at dawn.");
    testutil_sql(admin, "START TRANSACTION;"
                        "UPDATE kb_documents SET body = 'The quokka slipway is closed for good.'"
                        " WHERE source = 'admin/tx.md';");
    assert_string_equal(top_body(db, "quokka slipway", body, sizeof body), "The quokka slipway opens at dawn.");
    testutil_sql(admin, "ROLLBACK;");
    assert_string_equal(top_body(db, "quokka slipway", body, sizeof body), "The quokka slipway opens at dawn.");
    assert_string_equal(top_body(db, "quokka slipway closed good", body, sizeof body),
                        "The quokka slipway opens at dawn.");
    /* a replacement in two statements: while open, the old passage is still found, never none */
    testutil_sql(admin, "START TRANSACTION; DELETE FROM kb_documents WHERE source = 'admin/tx.md';");
    assert_string_equal(top_body(db, "quokka slipway", body, sizeof body), "The quokka slipway opens at dawn.");
    testutil_sql(admin, "ROLLBACK;");
    /* committed: the very next search sees it */
    testutil_sql(admin, "START TRANSACTION;"
                        "UPDATE kb_documents SET body = 'The quokka slipway opens at noon.' WHERE source = 'admin/tx.md';"
                        "COMMIT;");
    assert_string_equal(top_body(db, "quokka slipway", body, sizeof body), "The quokka slipway opens at noon.");
    testutil_sql(admin, "DELETE FROM kb_documents WHERE source = 'admin/tx.md';");
    assert_false(top_is(db, "quokka slipway", "admin/tx.md"));
    chat_db_free(admin);
}

/* The full-text settings check: what it says for the server's values (table), and on the private test
 * server, whose settings are right, then with InnoDB's stopword list switched on for a moment. */
static void test_fulltext_settings(void **state)
{
    static const struct {
        long long min_token;
        bool default_stopwords;
        const char *setting; /* "" = ok */
    } cases[] = {
        {1, false, ""},
        {2, false, ""},
        {3, false, "innodb_ft_min_token_size=1"}, /* InnoDB's default: V6 and hp unfindable */
        {4, false, "innodb_ft_min_token_size=1"}, /* MyISAM's default: E42 too */
        {84, true, "innodb_ft_min_token_size=1"}, /* the token size first: it needs a restart */
        {1, true, "innodb_ft_enable_stopword=0"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_kb_fulltext ft;
        chat_kb_fulltext_judge(cases[i].min_token, cases[i].default_stopwords, &ft);
        assert_int_equal(ft.ok, !cases[i].setting[0]);
        assert_string_equal(ft.setting, cases[i].setting);
        assert_int_equal(!ft.problem[0], ft.ok);
    }
    chat_kb_fulltext ft;
    char err[256];
    assert_int_equal(chat_kb_fulltext_check(db, &ft, err, sizeof err), 0);
    assert_true(ft.ok);
    testutil_sql(db, "SET GLOBAL innodb_ft_enable_stopword = 1;");
    int rc = chat_kb_fulltext_check(db, &ft, err, sizeof err);
    testutil_sql(db, "SET GLOBAL innodb_ft_enable_stopword = 0;");
    assert_int_equal(rc, 0);
    assert_false(ft.ok);
    assert_string_equal(ft.setting, "innodb_ft_enable_stopword=0");
}

/* An order-free fingerprint of every passage. */
static long long kb_fingerprint(chat_db *d)
{
    return count_sql(d, "SELECT COALESCE(SUM(CRC32(CONCAT_WS(':', id, source, title, body))), 0) FROM kb_documents");
}

/* Every ```sql block of sql/README.md runs as written, in order, on the sample database; a block that
 * ends in ROLLBACK leaves the knowledge base as it was (an Aria table kept its UPDATE), one that ends in
 * COMMIT after an edit changes it. */
static void test_sql_readme_runs(void **state)
{
    chat_db *d = testutil_db_fresh("kb_readme", TESTUTIL_SAMPLE);
    size_t len = 0;
    char *text = chat_read_file(testutil_path("sql/README.md"), 1 << 20, &len);
    assert_non_null(text);
    int blocks = 0, rollbacks = 0;
    for (char *p = text; (p = strstr(p, "\n```sql\n"));) {
        char *start = p + 8, *end = strstr(start, "\n```");
        assert_non_null(end);
        *end = '\0';
        long long before = kb_fingerprint(d);
        testutil_sql(d, start);
        bool rollback = strstr(start, "ROLLBACK;") != NULL;
        if (rollback) {
            if (kb_fingerprint(d) != before) fail_msg("sql/README.md: a block ending in ROLLBACK changed kb_documents:\n%s", start);
            rollbacks++;
        }
        blocks++;
        p = end + 1;
    }
    assert_true(blocks >= 5);
    assert_true(rollbacks >= 1);
    /* the blocks before added the winter-storage policy and then retired it */
    assert_int_equal(testutil_count(d, "SELECT COUNT(*) FROM kb_documents WHERE source = ?", "policies/winter-storage.md"),
                     0);
    free(text);
    chat_db_free(d);
}

/* The server restarts under a live connection: the next call reconnects; while down, a clear error. */
static void test_restart_mid_run(void **state)
{
    assert_true(top_is(db, "Seawind 250 engine power", "seawind-250/specs.md"));
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "bash %s stop >/dev/null 2>&1", testutil_path("deploy/mariadb.sh"));
    assert_int_equal(system(cmd), 0);
    chat_kb_query q = {.question = "engine power", .k = 1};
    chat_kb_result r;
    char err[256] = "";
    assert_int_equal(chat_kb_search(db, &q, &r, err, sizeof err), CHAT_EDB);
    assert_non_null(strstr(err, "unavailable"));
    snprintf(cmd, sizeof cmd, "bash %s start >/dev/null 2>&1", testutil_path("deploy/mariadb.sh"));
    assert_int_equal(system(cmd), 0);
    assert_true(top_is(db, "Seawind 250 engine power", "seawind-250/specs.md"));
}

/* A transaction cut by a server restart fails as a whole: nothing carries on in autocommit. */
static void test_transaction_lost(void **state)
{
    chat_db *d = testutil_db_fresh("kb_tx", TESTUTIL_SCHEMA);
    char err[256], cmd[1024];
    testutil_sql(d, "CREATE TABLE t (a INT)");
    assert_int_equal(chat_db_begin(d, err, sizeof err), 0);
    chat_db_param one = CHAT_DB_P_INT(1), two = CHAT_DB_P_INT(2);
    assert_int_equal(chat_db_run(d, "INSERT INTO t VALUES (?)", &one, 1, NULL, NULL, NULL, NULL, err, sizeof err), 0);
    snprintf(cmd, sizeof cmd, "bash %s restart >/dev/null 2>&1", testutil_path("deploy/mariadb.sh"));
    assert_int_equal(system(cmd), 0);
    assert_int_equal(chat_db_run(d, "INSERT INTO t VALUES (?)", &two, 1, NULL, NULL, NULL, NULL, err, sizeof err),
                     CHAT_EDB);
    assert_int_equal(chat_db_run(d, "INSERT INTO t VALUES (?)", &two, 1, NULL, NULL, NULL, NULL, err, sizeof err),
                     CHAT_EDB);
    assert_int_equal(chat_db_commit(d, err, sizeof err), CHAT_EDB);
    chat_db_rollback(d);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM t"), 0);
    chat_db_free(d);
}

/* A statement with more parameters than the stack's 32 binds (bulk inserts): all bound, all stored. */
static void test_many_parameters(void **state)
{
    chat_db *d = testutil_db_fresh("kb_params", TESTUTIL_SCHEMA);
    testutil_sql(d, "CREATE TABLE t_params (a INT, b VARCHAR(16))");
    enum { ROWS = 300 };
    chat_db_param p[ROWS * 2];
    char sql[ROWS * 8 + 64] = "INSERT INTO t_params (a, b) VALUES ";
    char labels[ROWS][16];
    for (int i = 0; i < ROWS; i++) {
        strcat(sql, i ? ",(?,?)" : "(?,?)");
        snprintf(labels[i], sizeof labels[i], "row-%d", i);
        p[2 * i] = CHAT_DB_P_INT(i);
        p[2 * i + 1] = CHAT_DB_P_STR(labels[i]);
    }
    char err[256];
    long long affected = 0;
    assert_int_equal(chat_db_run(d, sql, p, ROWS * 2, NULL, NULL, &affected, NULL, err, sizeof err), 0);
    assert_int_equal(affected, ROWS);
    assert_int_equal(count_sql(d, "SELECT COUNT(*) FROM t_params WHERE b = CONCAT('row-', a)"), ROWS);
    assert_int_equal(count_sql(d, "SELECT SUM(a) FROM t_params"), ROWS * (ROWS - 1) / 2);
    chat_db_free(d);
}

/* 1,200 filler passages: "ubiquitous" in 30 % of them (common for a 12 % threshold, yet under the 50 %
 * beyond which the server's natural-language search ignores a word by itself), "zyxwvut" in two. */
/* A fresh chat_t_<name> with the schema and n generated passages, gen/<seq>.md titled "Filler <seq>",
 * whose bodies are the SQL expression body (of seq); then the statements of more. */
static chat_db *filler_kb(const char *name, int n, const char *body, const char *more)
{
    chat_db *d = testutil_db_fresh(name, TESTUTIL_SCHEMA);
    char sql[1024];
    snprintf(sql, sizeof sql,
             "INSERT INTO kb_documents (source, title, body) SELECT CONCAT('gen/', seq, '.md'),"
             " CONCAT('Filler ', seq), %s FROM seq_1_to_%d;%s",
             body, n, more);
    testutil_sql(d, sql);
    return d;
}

static chat_db *common_words_kb(const char *name)
{
    return filler_kb(name, 1200, "CONCAT(IF(seq % 10 < 3, 'ubiquitous ', ''), 'filler passage ', seq)",
                     "UPDATE kb_documents SET body = CONCAT(body, ' zyxwvut') WHERE id IN (7, 8);"
                     "OPTIMIZE TABLE kb_documents;");
}

/* In a large knowledge base, a word found in most passages is left out of the query when stats are
 * given: only the passages with the rare word come back, where every "common" passage used to fill up
 * the k results. A query of common words only keeps its rarest word. */
static void test_common_words_dropped(void **state)
{
    chat_db *d = common_words_kb("kb_common");
    chat_kb_result r;
    chat_kb_query q = {.question = "ubiquitous zyxwvut", .k = 10};
    search_ok(d, &q, &r);
    assert_int_equal(r.n, 10); /* every word: the common one fills the results */
    chat_kb_result_clear(&r);
    q.stats = chat_kb_stats_new(12);
    search_ok(d, &q, &r);
    assert_int_equal(r.n, 2);
    assert_true(strstr(r.items[0].body, "zyxwvut") && strstr(r.items[1].body, "zyxwvut"));
    chat_kb_result_clear(&r);
    q.question = "ubiquitous filler";
    search_ok(d, &q, &r);
    assert_int_equal(r.n, 10);
    chat_kb_result_clear(&r);
    chat_kb_stats *off = chat_kb_stats_new(0); /* CHAT_KB_COMMON_PCT=0: never drop */
    chat_kb_stats_free(q.stats);
    q.stats = off;
    q.question = "ubiquitous zyxwvut";
    search_ok(d, &q, &r);
    assert_int_equal(r.n, 10);
    chat_kb_result_clear(&r);
    chat_kb_stats_free(off);
    chat_db_free(d);
}

static int count_row_ll(void *ud, int ncols, char **v, unsigned long *lens)
{
    (void)ncols, (void)lens;
    *(long long *)ud = v[1] ? atoll(v[1]) : 0;
    return 0;
}

/* Statements this connection ran so far (its session's Com_select). */
static long long selects_run(chat_db *d)
{
    long long n = -1;
    char err[256];
    if (chat_db_run(d, "SHOW SESSION STATUS LIKE 'Com_select'", NULL, 0, count_row_ll, &n, NULL, NULL, err, sizeof err))
        fail_msg("status: %s", err);
    return n;
}

/* One chat_kb_stats shared by the threads of a process: a word counted on one connection is not counted
 * again on another, and searches from several threads at once stay right. */
typedef struct stats_thread {
    chat_db *db;
    chat_kb_stats *stats;
    int bad;
} stats_thread;

static void *stats_searches(void *arg)
{
    stats_thread *t = arg;
    for (int i = 0; i < 40; i++) {
        chat_kb_query q = {.question = i % 2 ? "ubiquitous zyxwvut" : "zyxwvut filler", .k = 10, .stats = t->stats};
        chat_kb_result r;
        char err[256];
        if (chat_kb_search(t->db, &q, &r, err, sizeof err) || r.n != 2) t->bad++;
        chat_kb_result_clear(&r);
    }
    return NULL;
}

static void test_stats_shared(void **state)
{
    chat_db *d = common_words_kb("kb_shared");
    chat_config cfg = testutil_config("kb_shared");
    chat_db *d2 = chat_db_new(&cfg);
    assert_non_null(d2);
    chat_kb_stats *shared = chat_kb_stats_new(12);
    chat_kb_query q = {.question = "ubiquitous zyxwvut", .k = 10, .stats = shared};
    chat_kb_result r;
    search_ok(d, &q, &r);
    assert_int_equal(r.n, 2); /* "ubiquitous" dropped: in 30 % of the passages */
    chat_kb_result_clear(&r);
    long long before = selects_run(d2);
    search_ok(d2, &q, &r);
    assert_int_equal(r.n, 2);
    chat_kb_result_clear(&r);
    /* the search itself only: the passage count and the common words came from the shared stats (a
     * fresh chat_kb_stats would count the passages and read the sample first: 4 statements) */
    assert_int_equal(selects_run(d2) - before, 1);

    stats_thread t[2] = {{d, shared, 0}, {d2, shared, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_create(&th[i], NULL, stats_searches, &t[i]), 0);
    for (int i = 0; i < 2; i++) assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(t[0].bad + t[1].bad, 0);
    chat_kb_stats_free(shared);
    chat_db_free(d2);
    chat_db_free(d);
}

/* Which words are common comes from one sample of the passages, not from a count per word (each count
 * was a full-text search of the word's whole posting list plus a row read per match: 13-50 ms at
 * 100,000 passages): once the sample is read, a question of words never seen before runs its search
 * alone. */
static void test_no_statement_per_word(void **state)
{
    chat_db *d = common_words_kb("kb_words");
    chat_kb_stats *st = chat_kb_stats_new(12);
    chat_kb_query q = {.question = "zyxwvut", .k = 10, .stats = st};
    chat_kb_result r;
    search_ok(d, &q, &r); /* the passage count and the sample */
    assert_int_equal(r.n, 2);
    chat_kb_result_clear(&r);
    long long before = selects_run(d);
    /* "filler" and "passage" are in every passage, "ubiquitous" in 30 %: left out; "quixotic" in none */
    q.question = "ubiquitous filler passage quixotic zyxwvut";
    search_ok(d, &q, &r);
    assert_int_equal(selects_run(d) - before, 1);
    assert_int_equal(r.n, 2);
    chat_kb_result_clear(&r);
    chat_kb_stats_free(st);
    chat_db_free(d);
}

/* A knowledge base larger than the sample, with gaps in its ids, and its common word only in the later
 * half of the table: the sample is spread over all of it, so the word is still found common (30 % of
 * the passages) and left out. A sample of the first rows would have kept it: 10 results, not 2. */
static void test_common_words_sampled(void **state)
{
    chat_db *d = filler_kb("kb_sampled", 12000,
                           "CONCAT(IF(seq > 6000 AND seq % 10 < 6, 'ubiquitous ', ''), 'filler passage ', seq)",
                           "DELETE FROM kb_documents WHERE id % 4 = 1;"
                           "UPDATE kb_documents SET body = CONCAT(body, ' zyxwvut') WHERE id IN (8, 11998);"
                           "OPTIMIZE TABLE kb_documents;");
    chat_kb_stats *st = chat_kb_stats_new(12);
    chat_kb_query q = {.question = "ubiquitous zyxwvut", .k = 10};
    chat_kb_result r;
    search_ok(d, &q, &r);
    assert_int_equal(r.n, 10); /* every word */
    chat_kb_result_clear(&r);
    q.stats = st;
    search_ok(d, &q, &r);
    assert_int_equal(r.n, 2);
    assert_true(strstr(r.items[0].body, "zyxwvut") && strstr(r.items[1].body, "zyxwvut"));
    chat_kb_result_clear(&r);
    chat_kb_stats_free(st);
    chat_db_free(d);
}

/* Only the most relevant matches are re-ranked (KB_CANDIDATES, 200): that relies on the natural-language
 * search handing its rows over in relevance order. 400 weak matches come first in the table and the
 * strongest passage last, so a search that took the first 200 rows in table order would miss it. */
static void test_candidates_by_relevance(void **state)
{
    chat_db *d = filler_kb("kb_candidates", 1000,
                           "CONCAT('filler passage ', seq, IF(seq % 5 < 2,"
                           " ' mentions the bilge once among many other words about hulls, decks and cabins', ''))",
                           "INSERT INTO kb_documents (source, title, body) VALUES ('pump.md', 'Bilge pump',"
                           " 'The bilge pump empties the bilge: test the bilge float switch monthly.');");
    chat_kb_result r;
    search_for(d, "bilge", 3, &r);
    assert_int_equal(r.n, 3);
    assert_string_equal(r.items[0].source, "pump.md");
    assert_true(r.items[0].score > r.items[1].score);
    chat_kb_result_clear(&r);
    chat_db_free(d);
}

/* A knowledge base of a few passages: the server's natural-language search ignores a word found in more
 * than half of them, so a question whose words are in every passage would find nothing; retrieval then
 * falls back to a boolean search and still answers. */
static void test_tiny_knowledge_base(void **state)
{
    chat_db *d = testutil_db_fresh("kb_tiny", TESTUTIL_SCHEMA);
    testutil_sql(d, "INSERT INTO kb_documents (source, title, body) VALUES"
                    " ('a.md', 'Anchor care', 'How to stow the anchor winch.'),"
                    " ('b.md', 'Winch service', 'Grease the anchor winch every season.');");
    static const struct {
        const char *question;
        size_t n;
        const char *first; /* source of the first hit, NULL: any */
    } cases[] = {
        {"anchor winch", 2, NULL},       /* both words in both passages */
        {"grease the winch", 2, "b.md"}, /* "grease" only in b */
        {"stow", 1, "a.md"},
        {"propeller", 0, NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_kb_query q = {.question = cases[i].question, .k = 4};
        chat_kb_result r;
        search_ok(d, &q, &r);
        if (r.n != cases[i].n) fail_msg("'%s': %zu hits, expected %zu", cases[i].question, r.n, cases[i].n);
        if (cases[i].first) assert_string_equal(r.items[0].source, cases[i].first);
        chat_kb_result_clear(&r);
    }
    chat_db_free(d);
}

/* ---- the derived search table (migration 006) ---- */

#define DERIVED_TWIN(name)                                                                                 \
    static void name##_derived(void **state)                                                               \
    {                                                                                                      \
        derived = true;                                                                                    \
        name(state);                                                                                       \
        derived = false;                                                                                   \
    }
DERIVED_TWIN(test_ranking)
DERIVED_TWIN(test_short_tokens_and_codes)
DERIVED_TWIN(test_admin_edits_visible)
DERIVED_TWIN(test_admin_edits_transactional)

static long long pending_changes(chat_db *d) { return count_sql(d, "SELECT COUNT(*) FROM kb_changes"); }

/* The editor deletes the passages matching `where`; the next search no longer finds source for question. */
static void retire(chat_db *editor, const char *where, const char *question, const char *source)
{
    char sql[256];
    snprintf(sql, sizeof sql, "DELETE FROM kb_documents WHERE %s;", where);
    testutil_sql(editor, sql);
    assert_false(top_is(db, question, source));
}

/* The private server can keep the copy, and it starts complete (the migration filled it). */
static void test_derived_usable(void **state)
{
    char why[256] = "";
    int ok = chat_kb_derived_usable(db, why, sizeof why);
    if (ok != 1) fail_msg("derived table not usable here: %d %s", ok, why);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search"), count_sql(db, "SELECT COUNT(*) FROM kb_documents"));
    assert_int_equal(pending_changes(db), 0);
}

/* A committed edit leaves a change row; the next derived search answers it (from kb_documents) and
 * brings the copy forward, so kb_search then holds the edit and no change is left. An edit rolled back
 * leaves no change row at all. */
static void test_derived_follows_commits(void **state)
{
    chat_config cfg = testutil_config("kb");
    chat_db *admin = chat_db_new(&cfg);
    testutil_sql(admin, "START TRANSACTION; INSERT INTO kb_documents (source, title, body) VALUES ('admin/rb.md',"
                        " 'Wombat moorings', 'Wombat moorings are free.'); ROLLBACK;");
    assert_int_equal(pending_changes(db), 0);
    testutil_sql(admin, "INSERT INTO kb_documents (source, title, body) VALUES ('admin/d.md', 'Narwhal berths',"
                        " 'Narwhal berths cost extra.');");
    assert_int_equal(pending_changes(db), 1);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source = 'admin/d.md'"), 0);
    derived = true;
    assert_true(top_is(db, "narwhal berths", "admin/d.md"));
    assert_int_equal(pending_changes(db), 0);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source = 'admin/d.md'"), 1);
    assert_true(top_is(db, "narwhal berths", "admin/d.md")); /* now from the copy */
    testutil_sql(admin, "UPDATE kb_documents SET source = 'admin/d2.md' WHERE source = 'admin/d.md';");
    assert_true(top_is(db, "narwhal berths", "admin/d2.md"));
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source = 'admin/d2.md'"), 1);
    retire(admin, "source = 'admin/d2.md'", "narwhal berths", "admin/d2.md");
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source LIKE 'admin/d%'"), 0);
    derived = false;
    assert_int_equal(pending_changes(db), 0);
    chat_db_free(admin);
}

/* While another connection is copying (it holds the copier's lock), a search never waits for it and
 * still sees the committed edit: it answers from kb_documents and leaves the change for later. */
static void test_derived_busy_copier(void **state)
{
    chat_config cfg = testutil_config("kb");
    chat_db *admin = chat_db_new(&cfg), *copier = chat_db_new(&cfg);
    assert_int_equal(count_sql(copier, "SELECT GET_LOCK(CONCAT(DATABASE(), '.kb_search'), 0)"), 1);
    testutil_sql(admin, "INSERT INTO kb_documents (source, title, body) VALUES ('admin/busy.md', 'Axolotl slips',"
                        " 'Axolotl slips are heated.');");
    derived = true;
    int64_t t0 = chat_now_ms();
    assert_true(top_is(db, "axolotl slips", "admin/busy.md"));
    assert_true(chat_now_ms() - t0 < 2000);
    assert_int_equal(pending_changes(db), 1);
    char err[256];
    assert_int_equal(chat_kb_sync(db, CHAT_KB_SYNC_BATCH, 1, err, sizeof err), CHAT_ECONFLICT);
    assert_int_equal(count_sql(copier, "SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.kb_search'))"), 1);
    assert_true(top_is(db, "axolotl slips", "admin/busy.md"));
    assert_int_equal(pending_changes(db), 0);
    retire(admin, "source = 'admin/busy.md'", "axolotl slips", "admin/busy.md");
    derived = false;
    chat_db_free(copier);
    chat_db_free(admin);
}

/* An editor that took its change id first but commits last: the copier passes over its open change
 * (never waiting for it) and takes it after the commit, so the copy is never left without it. */
static void test_derived_late_commit(void **state)
{
    chat_config cfg = testutil_config("kb");
    chat_db *slow = chat_db_new(&cfg), *fast = chat_db_new(&cfg);
    testutil_sql(slow, "START TRANSACTION; INSERT INTO kb_documents (source, title, body) VALUES ('admin/slow.md',"
                       " 'Pelican ramps', 'Pelican ramps close at six.');");
    testutil_sql(fast, "INSERT INTO kb_documents (source, title, body) VALUES ('admin/fast.md', 'Heron ramps',"
                       " 'Heron ramps close at nine.');");
    derived = true;
    int64_t t0 = chat_now_ms();
    assert_true(top_is(db, "heron ramps", "admin/fast.md"));
    assert_true(chat_now_ms() - t0 < 2000); /* the open change was skipped, not waited for */
    assert_false(top_is(db, "pelican ramps", "admin/slow.md"));
    testutil_sql(slow, "COMMIT;");
    assert_true(top_is(db, "pelican ramps", "admin/slow.md"));
    assert_int_equal(pending_changes(db), 0);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source IN ('admin/slow.md', 'admin/fast.md')"),
                     2);
    retire(fast, "source IN ('admin/slow.md', 'admin/fast.md')", "pelican ramps", "admin/slow.md");
    derived = false;
    chat_db_free(fast);
    chat_db_free(slow);
}

/* An import leaves the copy up to date (chat_kb_sync_all), not to the questions after it. */
static void test_derived_import_synced(void **state)
{
    static const char doc[] = "---\ntitle: Tapir guide\n---\n## Tapir lockers\nTapir lockers are by the gate.\n";
    char err[256];
    assert_int_equal(chat_kb_import_text(db, "admin/tapir.md", doc, sizeof doc - 1, NULL, err, sizeof err), 0);
    assert_int_equal(chat_kb_sync_all(db, err, sizeof err), 0);
    assert_int_equal(pending_changes(db), 0);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source = 'admin/tapir.md'"),
                     count_sql(db, "SELECT COUNT(*) FROM kb_documents WHERE source = 'admin/tapir.md'"));
    testutil_sql(db, "DELETE FROM kb_documents WHERE source = 'admin/tapir.md';");
    assert_int_equal(chat_kb_sync_all(db, err, sizeof err), 0);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source = 'admin/tapir.md'"), 0);
}

/* A bulk load (more than 2,000 changes) is copied by building a new copy and swapping it in; the
 * copy then matches kb_documents row for row, and later edits are followed as before. */
static void test_derived_bulk_rebuild(void **state)
{
    testutil_sql(db, "INSERT INTO kb_documents (source, title, body) SELECT CONCAT('bulk/', seq, '.md'),"
                     " CONCAT('Bulk passage ', seq), CONCAT('Capybara dock number ', seq) FROM seq_1_to_2100;");
    assert_true(pending_changes(db) >= 2000);
    char err[256];
    assert_int_equal(chat_kb_sync_all(db, err, sizeof err), 0);
    assert_int_equal(pending_changes(db), 0);
    static const char same[] = "SELECT COUNT(*) FROM kb_search s JOIN kb_documents d ON d.id = s.id AND"
                               " d.source = s.source AND d.title = s.title AND d.body = s.body";
    assert_int_equal(count_sql(db, same), count_sql(db, "SELECT COUNT(*) FROM kb_documents"));
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search"), count_sql(db, "SELECT COUNT(*) FROM kb_documents"));
    derived = true;
    assert_true(top_is(db, "capybara dock 1234", "bulk/1234.md"));
    testutil_sql(db, "DELETE FROM kb_documents WHERE source LIKE 'bulk/%';");
    assert_false(top_is(db, "capybara dock 1234", "bulk/1234.md"));
    derived = false;
    assert_int_equal(chat_kb_sync_all(db, err, sizeof err), 0);
    assert_int_equal(count_sql(db, "SELECT COUNT(*) FROM kb_search WHERE source LIKE 'bulk/%'"), 0);
}

TESTUTIL_MAIN(setup_sample, testutil_db_teardown,
              cmocka_unit_test(test_sample_loaded),          cmocka_unit_test(test_migrations),
              cmocka_unit_test(test_migration_004_innodb),   cmocka_unit_test(test_import_idempotent),
              cmocka_unit_test(test_reimport_sample_dir),    cmocka_unit_test(test_ranking),
              cmocka_unit_test(test_short_tokens_and_codes), cmocka_unit_test(test_hostile_inputs),
              cmocka_unit_test(test_fault_code_parse),       cmocka_unit_test(test_admin_edits_visible),
              cmocka_unit_test(test_restart_mid_run),        cmocka_unit_test(test_transaction_lost),
              cmocka_unit_test(test_common_words_dropped),   cmocka_unit_test(test_tiny_knowledge_base),
              cmocka_unit_test(test_many_parameters),        cmocka_unit_test(test_candidates_by_relevance),
              cmocka_unit_test(test_stats_shared),           cmocka_unit_test(test_admin_edits_transactional),
              cmocka_unit_test(test_no_statement_per_word),  cmocka_unit_test(test_common_words_sampled),
              cmocka_unit_test(test_fulltext_settings),        cmocka_unit_test(test_sql_readme_runs),
              cmocka_unit_test(test_ranking_derived),          cmocka_unit_test(test_short_tokens_and_codes_derived),
              cmocka_unit_test(test_admin_edits_visible_derived),
              cmocka_unit_test(test_admin_edits_transactional_derived), cmocka_unit_test(test_derived_usable),
              cmocka_unit_test(test_derived_follows_commits), cmocka_unit_test(test_derived_busy_copier),
              cmocka_unit_test(test_derived_late_commit),     cmocka_unit_test(test_derived_import_synced),
              cmocka_unit_test(test_derived_bulk_rebuild))
