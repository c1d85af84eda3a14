/* MariaDB access for the whole library: one connection per chat_db, used by one thread at a time.
 *
 * Every statement that carries data from outside runs as a prepared statement through chat_db_run;
 * chat_db_exec_script is for trusted SQL files (schema, migrations, sample data) only.
 * The connection is opened lazily and re-opened when the server went away (restart, idle timeout):
 * a call made while the server is down fails fast with CHAT_EDB and the next one tries again. */
#ifndef CHAT_DB_H
#define CHAT_DB_H

#include <stddef.h>
#include <string.h>

#include "chat_config.h"

typedef struct chat_db chat_db;

enum { CHAT_DB_NULL = 0, CHAT_DB_STR, CHAT_DB_INT, CHAT_DB_DOUBLE };

typedef struct chat_db_param {
    int type;
    const char *s; /* CHAT_DB_STR: bytes, len below (len 0 with s NULL = empty string) */
    size_t len;
    long long i;
    double d;
} chat_db_param;

static inline chat_db_param chat_db_p_str(const char *s)
{
    chat_db_param p = {.type = CHAT_DB_STR, .s = s, .len = s ? strlen(s) : 0};
    return p;
}
#define CHAT_DB_P_STR(str) chat_db_p_str(str)
#define CHAT_DB_P_STRN(str, n) ((chat_db_param){.type = CHAT_DB_STR, .s = (str), .len = (n)})
#define CHAT_DB_P_INT(v) ((chat_db_param){.type = CHAT_DB_INT, .i = (v)})
#define CHAT_DB_P_DOUBLE(v) ((chat_db_param){.type = CHAT_DB_DOUBLE, .d = (v)})
#define CHAT_DB_P_NULL() ((chat_db_param){.type = CHAT_DB_NULL})

/* One result row: vals[i] is NUL-terminated text, or NULL for SQL NULL; valid only during the call.
 * Return non-zero to stop fetching (chat_db_run then returns that value). */
typedef int (*chat_db_row_fn)(void *ud, int ncols, char **vals, unsigned long *lens);

/* Copies cfg; does not connect. NULL on out of memory. */
chat_db *chat_db_new(const chat_config *cfg);
void chat_db_free(chat_db *db);

/* Connects if needed. 0, or CHAT_EDB with a message (no password in it). */
int chat_db_connect(chat_db *db, char *err, size_t errlen);
/* Cheap liveness check used by /health: 0 when the server answers. */
int chat_db_ping(chat_db *db, char *err, size_t errlen);

/* Prepares (cached per SQL text), binds params, executes, calls fn for each row.
 * affected (may be NULL) receives the affected-row count for writes; last_id (may be NULL) the insert id.
 * Retries once on a lost connection when no row was delivered yet. Returns 0, CHAT_EDB, or fn's value. */
int chat_db_run(chat_db *db, const char *sql, const chat_db_param *params, int nparams, chat_db_row_fn fn,
                void *ud, long long *affected, long long *last_id, char *err, size_t errlen);

/* The server's error number (ER_*) behind the last chat_db_run that returned CHAT_EDB, 0 after a
 * success: for callers that turn one specific failure (a foreign key, a duplicate) into their own code. */
unsigned int chat_db_errno(const chat_db *db);

/* Runs a multi-statement SQL text (trusted input only: schema and data files). */
int chat_db_exec_script(chat_db *db, const char *sql, size_t len, char *err, size_t errlen);

/* Transactions on this connection. */
int chat_db_begin(chat_db *db, char *err, size_t errlen);
int chat_db_commit(chat_db *db, char *err, size_t errlen);
void chat_db_rollback(chat_db *db);

/* Applies schema_file (idempotent baseline) then every migrations_dir/NNN_*.sql with NNN above the
 * recorded version, in order, recording each in schema_version. migrations_dir may be NULL. */
int chat_db_migrate(chat_db *db, const char *schema_file, const char *migrations_dir, int *version_out, char *err,
                    size_t errlen);

/* Creates the configured database if missing (CREATE DATABASE needs no prepared statement: the name is
 * validated as [A-Za-z0-9_]). Used by set-up tools and tests. */
int chat_db_create_database(chat_db *db, char *err, size_t errlen);

/* Read replica (CHAT_DB_READ_*): a second chat_db for reads that may be slightly stale.
 * chat_db_new_read: NULL when no replica is configured (or out of memory: reads then use the primary).
 * chat_db_read_route: the handle a stale-tolerant read uses, the replica while it answers and lags at
 * most db_read_max_lag_s, else primary; the replica's state is re-checked (SHOW SLAVE STATUS) at most
 * every CHAT_DB_REPLICA_CHECK_MS, not per query. Same thread rules as the handles themselves. */
#define CHAT_DB_REPLICA_CHECK_MS 2000
chat_db *chat_db_new_read(const chat_config *cfg);
chat_db *chat_db_read_route(chat_db *replica, chat_db *primary);
/* A read through used (what chat_db_read_route returned) failed: when used is the replica, it is
 * marked skipped until its next check (CHAT_DB_REPLICA_CHECK_MS from now) and the primary is returned,
 * for the caller to run the read again there; NULL when used was the primary already (nothing to retry).
 * So a replica that dies between two checks costs no answer, only one failed attempt per handle. */
chat_db *chat_db_read_failed(chat_db *replica, chat_db *used, chat_db *primary);
/* Checks the replica now: 0 when usable; CHAT_EDB when down, not replicating or lagging (err says
 * which). lag_s (may be NULL) gets Seconds_Behind_Master, -1 when unknown. */
int chat_db_replica_check(chat_db *replica, long long *lag_s, char *err, size_t errlen);

#endif
