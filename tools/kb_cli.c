/* chat-kb: the knowledge-base admin tool.
 *   chat-kb setup            create the database if missing, apply the schema and migrations, load the
 *                            sample data and knowledge base when the tables are empty (idempotent)
 *   chat-kb migrate          schema + migrations only
 *   chat-kb check            exit 0 when the schema is in place and every migration applied (read-only:
 *                            the services' least-privilege account can run it; setup and migrate need DDL);
 *                            warns on stderr when the server's full-text settings lose short words
 *   chat-kb import DIR       import every *.md below DIR (each file replaces its source's rows atomically)
 *   chat-kb load-sql FILE    run a trusted SQL file (sample data, classifier terms)
 *   chat-kb search [--agent A] [--model M] [-k N] QUESTION
 *                            print what the assistant would retrieve, with scores
 * Database settings come from CHAT_DB_*; SQL files from $CHAT_SQL_DIR, else <repo>/sql next to the binary. */
#include <dirent.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_config.h"
#include "chat_db.h"
#include "chat_kb.h"
#include "chat_log.h"
#include "chat_util.h"
#include "cli.h"

static char sql_dir[PATH_MAX];

static void find_sql_dir(void)
{
    const char *env = getenv("CHAT_SQL_DIR");
    if (env && *env) {
        snprintf(sql_dir, sizeof sql_dir, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *d = dirname(exe); /* build/bin */
        snprintf(sql_dir, sizeof sql_dir, "%s/../../sql", d);
        if (access(sql_dir, R_OK) == 0) return;
    }
    snprintf(sql_dir, sizeof sql_dir, "sql");
}

static int usage(void)
{
    fprintf(stderr, "usage: chat-kb setup | migrate | check | import DIR | load-sql FILE |"
                    " search [--agent A] [--model M] [-k N] QUESTION\n");
    return 2;
}

static int load_sql(chat_db *db, const char *path)
{
    size_t len;
    char *sql = chat_read_file(path, 0, &len);
    if (!sql) {
        fprintf(stderr, "chat-kb: cannot read %s\n", path);
        return 1;
    }
    char err[512];
    int rc = chat_db_exec_script(db, sql, len, err, sizeof err);
    free(sql);
    if (rc) {
        fprintf(stderr, "chat-kb: %s: %s\n", path, err);
        return 1;
    }
    return 0;
}

static int count_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    *(long long *)ud = v[0] ? atoll(v[0]) : 0;
    return 0;
}

/* The single number sql selects; -1 (and the reason on stderr) when it fails. */
static long long count(chat_db *db, const char *sql)
{
    long long n = -1;
    char err[256];
    if (chat_db_run(db, sql, NULL, 0, count_row, &n, NULL, NULL, err, sizeof err)) {
        fprintf(stderr, "chat-kb: %s\n", err);
        return -1;
    }
    return n;
}

static int migrate(chat_db *db, bool create)
{
    char err[512], schema[PATH_MAX + 32], migrations[PATH_MAX + 32];
    if (create && chat_db_create_database(db, err, sizeof err)) {
        fprintf(stderr, "chat-kb: %s\n", err);
        return 1;
    }
    snprintf(schema, sizeof schema, "%s/schema.sql", sql_dir);
    snprintf(migrations, sizeof migrations, "%s/migrations", sql_dir);
    int version = 0;
    if (chat_db_migrate(db, schema, migrations, &version, err, sizeof err)) {
        fprintf(stderr, "chat-kb: migrate: %s\n", err);
        return 1;
    }
    printf("schema version %d\n", version);
    return 0;
}

/* The highest NNN of sql/migrations/NNN_*.sql, 0 when there is none. */
static int latest_migration(void)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/migrations", sql_dir);
    DIR *d = opendir(path);
    int latest = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        size_t l = strlen(e->d_name);
        int v = atoi(e->d_name);
        if (l > 4 && !strcmp(e->d_name + l - 4, ".sql") && v > latest) latest = v;
    }
    if (d) closedir(d);
    return latest;
}

/* Read-only: what `make start` asks before it decides whether the admin step (setup) must run. */
static int check(chat_db *db)
{
    long long version = -1;
    char err[512];
    if (chat_db_run(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version", NULL, 0, count_row, &version, NULL,
                    NULL, err, sizeof err)) {
        fprintf(stderr, "chat-kb: no usable schema (%s): run chat-kb setup or migrate with an admin account\n", err);
        return 1;
    }
    int latest = latest_migration();
    printf("schema version %lld, latest migration %d\n", version, latest);
    if (version < latest) {
        fprintf(stderr, "chat-kb: the schema is out of date: run chat-kb migrate with an admin account\n");
        return 1;
    }
    /* a warning, not a failure: the services answer (worse) on such a server, and say so too */
    chat_kb_fulltext ft;
    if (!chat_kb_fulltext_check(db, &ft, err, sizeof err) && !ft.ok)
        fprintf(stderr, "chat-kb: warning: change %s: %s\n", ft.setting, ft.problem);
    return 0;
}

static int import(chat_db *db, const char *dir)
{
    char err[512];
    chat_kb_import_stats st = {0, 0};
    int rc = chat_kb_import_dir(db, dir, &st, err, sizeof err);
    printf("imported %d files, %d passages from %s\n", st.files, st.passages, dir);
    if (rc) {
        fprintf(stderr, "chat-kb: import: %s\n", err);
        return 1;
    }
    return 0;
}

static int setup(chat_db *db)
{
    if (migrate(db, true)) return 1;
    char path[PATH_MAX + 32];
    long long models = count(db, "SELECT COUNT(*) FROM models");
    if (models < 0) return 1;
    if (models == 0) {
        snprintf(path, sizeof path, "%s/sample_data.sql", sql_dir);
        if (load_sql(db, path)) return 1;
        printf("sample data loaded\n");
    }
    snprintf(path, sizeof path, "%s/classifier_terms.sql", sql_dir);
    if (access(path, R_OK) == 0 && load_sql(db, path)) return 1;
    long long passages = count(db, "SELECT COUNT(*) FROM kb_documents");
    if (passages < 0) return 1;
    if (passages == 0) {
        snprintf(path, sizeof path, "%s/kb", sql_dir);
        if (import(db, path)) return 1;
    }
    passages = count(db, "SELECT COUNT(*) FROM kb_documents");
    long long terms = count(db, "SELECT COUNT(*) FROM classifier_terms");
    if (passages < 0 || terms < 0) return 1;
    printf("knowledge base: %lld passages, %lld classifier terms\n", passages, terms);
    return 0;
}

static void print_snippet(const char *body)
{
    size_t n = chat_utf8_prefix(body, strlen(body), 110);
    for (size_t i = 0; i < n; i++) putchar(body[i] == '\n' ? ' ' : body[i]);
    if (n < strlen(body)) fputs("...", stdout);
    putchar('\n');
}

static int search(chat_db *db, const chat_config *cfg, int argc, char **argv)
{
    chat_kb_stats *stats = chat_kb_stats_new(cfg->kb_common_pct); /* the assistant's query, exactly */
    chat_kb_query q = {.k = 5, .stats = stats};
    int i = 0;
    for (; i < argc - 1; i++) {
        if (!strcmp(argv[i], "--agent")) q.agent = argv[++i];
        else if (!strcmp(argv[i], "--model")) q.model_id = argv[++i];
        else if (!strcmp(argv[i], "-k")) q.k = (size_t)atoi(argv[++i]);
        else break;
    }
    if (i != argc - 1) return usage();
    /* A question whose words are all dropped queries nothing: the knowledge base must still be there. */
    if (count(db, "SELECT COUNT(*) FROM kb_documents") < 0) {
        chat_kb_stats_free(stats);
        return 1;
    }
    q.question = argv[i];
    char why[256];
    if (cfg->kb_derived && chat_kb_derived_usable(db, why, sizeof why) > 0) q.sync_db = db; /* as the pipeline */
    char code[16];
    if (chat_kb_find_fault_code(q.question, code)) q.fault_code = code;
    char *terms = chat_kb_sanitize(q.question, 0);
    printf("query terms: %s%s%s\n", terms ? terms : "", q.fault_code ? "  fault code: " : "",
           q.fault_code ? q.fault_code : "");
    free(terms);
    chat_kb_result r;
    char err[512];
    int64_t t0 = chat_now_us();
    if (chat_kb_search(db, &q, &r, err, sizeof err)) {
        fprintf(stderr, "chat-kb: search: %s\n", err);
        chat_kb_stats_free(stats);
        return 1;
    }
    int64_t t1 = chat_now_us();
    for (size_t k = 0; k < r.n; k++) {
        chat_kb_passage *p = &r.items[k];
        printf("%zu. %8.3f  %s  [%s]  %s\n    ", k + 1, p->score, p->source, p->agent ? p->agent : "any", p->title);
        print_snippet(p->body);
    }
    if (!r.n) printf("no passage matched\n");
    printf("(%zu results in %.2f ms)\n", r.n, (double)(t1 - t0) / 1000.0);
    chat_kb_result_clear(&r);
    chat_kb_stats_free(stats);
    return 0;
}

int main(int argc, char **argv)
{
    chat_log_init("chat-kb", CHAT_LOG_WARN);
    if (argc < 2) return usage();
    find_sql_dir();
    chat_config cfg;
    if (!chat_cli_config("chat-kb", &cfg)) return 1;
    chat_db *db = chat_db_new(&cfg);
    if (!db) return 1;
    int rc;
    const char *cmd = argv[1];
    if (!strcmp(cmd, "setup") && argc == 2) rc = setup(db);
    else if (!strcmp(cmd, "migrate") && argc == 2) rc = migrate(db, true);
    else if (!strcmp(cmd, "check") && argc == 2) rc = check(db);
    else if (!strcmp(cmd, "import") && argc == 3) rc = import(db, argv[2]);
    else if (!strcmp(cmd, "load-sql") && argc == 3) rc = load_sql(db, argv[2]);
    else if (!strcmp(cmd, "search") && argc >= 3) rc = search(db, &cfg, argc - 2, argv + 2);
    else rc = usage();
    chat_db_free(db);
    return rc;
}
