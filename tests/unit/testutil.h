/* Helpers shared by the cmocka tests: the repository root, files, and fresh databases on the private
 * test MariaDB that tests/run.sh starts (CHAT_DB_SOCKET etc. in the environment). */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "chat_config.h"
#include "chat_db.h"
#include "chat_memory.h"

/* Applies $CMOCKA_TEST_FILTER (a glob of test names, e.g. "*resume*"), when set, to the cmocka run that
 * follows: one test of a program while debugging. */
void testutil_filter_from_env(void);

/* The main() of a test program: its tests (the cmocka_unit_test... entries given after teardown) run as
 * one group with the group setup and teardown (NULL for none), after testutil_filter_from_env; the exit
 * status is cmocka's (non-zero when a test failed). The program includes cmocka.h. */
#define TESTUTIL_MAIN(setup, teardown, ...)                                                                    \
    int main(void)                                                                                             \
    {                                                                                                          \
        const struct CMUnitTest tests[] = {__VA_ARGS__};                                                       \
        testutil_filter_from_env();                                                                            \
        return cmocka_run_group_tests(tests, setup, teardown);                                                 \
    }

/* The value of the sample `series` (the whole series name with its labels) in a Prometheus text
 * exposition, or -1 when it has no such line. */
double testutil_metric(const char *text, const char *series);

/* Repository root: $CHAT_ROOT, else the current directory. */
const char *testutil_root(void);
/* root-relative path into a static buffer (valid until the next call). */
const char *testutil_path(const char *rel);
/* Whole file, NUL-terminated; caller frees; NULL when unreadable. */
char *testutil_read_file(const char *path, size_t *len);

/* Writes text to path (created or truncated): 0, or -1. */
int testutil_write_file(const char *path, const char *text);
/* A new directory /tmp/chat_test_<prefix>.XXXXXX holding a copy of every file of the root-relative folder
 * rel (not of its subfolders): static buffer valid until the next call, NULL on failure. */
const char *testutil_copy_dir(const char *rel, const char *prefix);
/* Removes the files of dir (not recursive), then dir. */
void testutil_rmdir(const char *dir);

/* A tab-separated data file (the labelled sets of tests/data), read row by row: blank lines and '#'
 * comments left out, a trailing '\r' dropped. */
typedef struct testutil_tsv {
    char *data, *save;
} testutil_tsv;
/* Opens a root-relative file: 0, or -1 when it cannot be read. */
int testutil_tsv_open(testutil_tsv *t, const char *rel);
/* The next row, split at its first max - 1 tabs into fields (the last field keeps any further tab): the
 * number of fields, or 0 after the last row. The fields point into t, valid until testutil_tsv_close. */
int testutil_tsv_next(testutil_tsv *t, char **fields, int max);
void testutil_tsv_close(testutil_tsv *t);
/* Scores a labelled set: check(row, ud) on every row of the root-relative file rel, true when the row's
 * expectation holds (the fields are valid during the call). Prints "<what>: good/total" and fails the
 * test unless the file is readable, each row has exactly n fields (at most 8), there are at least
 * min_rows rows and at least min_pct percent of them held. */
void testutil_tsv_score(const char *rel, const char *what, int n, bool (*check)(char **row, void *ud), void *ud,
                        int min_rows, int min_pct);

/* build/bin/fake-llm on a free loopback port, read from its "PORT n" line (within 5 s); its stderr goes
 * to /dev/null. The pid, or -1 (with a message on stderr). Stop it with testutil_fake_llm_stop. */
pid_t testutil_fake_llm_start(int *port);
void testutil_fake_llm_stop(pid_t pid); /* SIGTERM and wait; accepts -1 */
/* GET /debug/last of the fake LLM server on port: what its last completion request looked like, as a
 * JSON object (caller puts; "prompt" is what the model was told); NULL when it cannot be read. */
struct json_object *testutil_fake_llm_last(int port);
/* Its "requests": how many completion requests it has answered so far; -1 when it cannot be read. */
long testutil_fake_llm_requests(int port);

/* An empty directory for a test's files, $CHAT_VAR/tmp/<name> (build/tests/tmp/<name> without CHAT_VAR):
 * removed with everything in it first, then created (mode 0700). The path in a static buffer (valid until
 * the next call); fails the test when it cannot be made. */
const char *testutil_fresh_dir(const char *name);

/* Configuration from the environment with the database name set to "chat_t_<name>". */
chat_config testutil_config(const char *name);
/* The same with the openai provider on the fake LLM server at port, asking for model (a fake-* scenario). */
chat_config testutil_config_fake_llm(const char *name, int port, const char *model);

enum {
    TESTUTIL_SCHEMA = 1,  /* sql/schema.sql and migrations */
    TESTUTIL_SAMPLE = 2,  /* + sql/sample_data.sql, sql/classifier_terms.sql and the sql/kb import */
};
/* Drops and re-creates database chat_t_<name>, applies what flags ask; fails the test on error.
 * Caller frees with chat_db_free. */
chat_db *testutil_db_fresh(const char *name, int flags);
/* A cmocka group teardown for the programs whose group setup makes their database and puts it in *state:
 * frees it. */
int testutil_db_teardown(void **state);
/* Drops database chat_t_<name> on db's server (the library has no DROP DATABASE: only tests throw a
 * database away); fails the test on error. db stays usable for another database after
 * chat_db_create_database. */
void testutil_db_drop(chat_db *db, const char *name);

/* A fresh chat_t_<name> with the sample data, and a pipeline on it with the extractive provider that may
 * read any customer's records (a staff desk); fails the test on error. Caller frees. */
struct chat_pipeline *testutil_pipeline_sample(const char *name);

/* Runs a trusted SQL text on db; fails the test on error. */
void testutil_sql(chat_db *db, const char *sql);
/* The same for a root-relative SQL file ("sql/classifier_terms.sql"). */
void testutil_sql_file(chat_db *db, const char *rel);
/* The number in the first column of the first row of sql ("SELECT COUNT(*) ..."), run with one string
 * parameter, or none when param is NULL: -1 for SQL NULL or no row. Fails the test on error. */
long long testutil_count(chat_db *db, const char *sql, const char *param);

/* The session's stored turns, read with plain SQL: the last max_turns turns (2 messages each, at most
 * 200 turns), oldest first; none for an unknown session or max_turns <= 0. CHAT_EINVAL (out empty) for a
 * malformed session id, CHAT_EDB or CHAT_ENOMEM with err. Caller clears out with chat_history_clear. */
int testutil_history(chat_db *db, const char *session_id, int max_turns, chat_history *out, char *err,
                     size_t errlen);

#endif
