/* Helpers shared by the cmocka tests: the repository root, files, and fresh databases on the private
 * test MariaDB that tests/run.sh starts (CHAT_DB_SOCKET etc. in the environment). */
#ifndef TESTUTIL_H
#define TESTUTIL_H

#include <stddef.h>
#include <sys/types.h>

#include "chat_config.h"
#include "chat_db.h"

/* Repository root: $CHAT_ROOT, else the current directory. */
const char *testutil_root(void);
/* root-relative path into a static buffer (valid until the next call). */
const char *testutil_path(const char *rel);
/* Whole file, NUL-terminated; caller frees; NULL when unreadable. */
char *testutil_read_file(const char *path, size_t *len);

/* build/bin/fake-llm on a free loopback port, read from its "PORT n" line (within 5 s); its stderr goes
 * to /dev/null. The pid, or -1 (with a message on stderr). Stop it with testutil_fake_llm_stop. */
pid_t testutil_fake_llm_start(int *port);
void testutil_fake_llm_stop(pid_t pid); /* SIGTERM and wait; accepts -1 */
/* GET /debug/last of the fake LLM server on port: what its last completion request looked like, as a
 * JSON object (caller puts; "prompt" is what the model was told); NULL when it cannot be read. */
struct json_object *testutil_fake_llm_last(int port);

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

/* A fresh chat_t_<name> with the sample data, and a pipeline on it with the extractive provider that may
 * read any customer's records (a staff desk); fails the test on error. Caller frees. */
struct chat_pipeline *testutil_pipeline_sample(const char *name);

/* Runs a trusted SQL text on db; fails the test on error. */
void testutil_sql(chat_db *db, const char *sql);

#endif
