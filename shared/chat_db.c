/* MariaDB access: lazy connection, transparent reconnect, a per-connection prepared-statement cache, and
 * results delivered as text rows.
 *
 * Results are fetched with STMT_ATTR_UPDATE_MAX_LENGTH so every column buffer is sized exactly once per
 * result; a column that still comes back truncated is re-fetched with mysql_stmt_fetch_column. Statements
 * are cached by SQL text (the library uses a fixed set of statements), and dropped with the connection. */
#include "chat_db.h"

#include <dirent.h>
#include <errno.h>
#include <errmsg.h>
#include <mysql.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_util.h"

#define STMT_CACHE_MAX 48

typedef struct stmt_entry {
    char *sql;
    MYSQL_STMT *stmt;
} stmt_entry;

struct chat_db {
    chat_config cfg;
    MYSQL *conn;
    stmt_entry cache[STMT_CACHE_MAX];
    int n_cached;
    /* Between begin and commit/rollback. A connection lost meanwhile took the transaction with it, so
     * nothing may reconnect and carry on in autocommit: every call fails until rollback. */
    bool in_tx;
    unsigned int last_errno; /* server error number of the last failed chat_db_run, 0 after a success */
    /* A read replica's routing state: checked at most every CHAT_DB_REPLICA_CHECK_MS. */
    bool is_replica, replica_ok;
    int64_t replica_checked_ms; /* 0 = never */
};

/* The connector's global state must exist before threads open connections concurrently. */
static pthread_once_t library_once = PTHREAD_ONCE_INIT;
static void library_init(void) { mysql_library_init(0, NULL, NULL); }

chat_db *chat_db_new(const chat_config *cfg)
{
    pthread_once(&library_once, library_init);
    chat_db *db = calloc(1, sizeof *db);
    if (!db) return NULL;
    db->cfg = *cfg;
    return db;
}

static void drop_connection(chat_db *db)
{
    for (int i = 0; i < db->n_cached; i++) {
        mysql_stmt_close(db->cache[i].stmt);
        free(db->cache[i].sql);
    }
    db->n_cached = 0;
    if (db->conn) {
        mysql_close(db->conn);
        chat_metric_gauge_add(CHAT_METRIC_DB_CONNECTIONS, 0, -1);
    }
    db->conn = NULL;
}

void chat_db_free(chat_db *db)
{
    if (!db) return;
    drop_connection(db);
    free(db);
}

static bool is_connection_error(unsigned int e)
{
    return e == CR_SERVER_GONE_ERROR || e == CR_SERVER_LOST || e == CR_CONNECTION_ERROR || e == CR_CONN_HOST_ERROR ||
           e == CR_SERVER_LOST_EXTENDED || e == 4031 /* ER_CLIENT_INTERACTION_TIMEOUT */ || e == ER_CONNECTION_KILLED ||
           e == ER_SERVER_SHUTDOWN || e == CR_COMMANDS_OUT_OF_SYNC;
}

/* with_db false: connect without selecting the database (to create it). */
static int connect_db(chat_db *db, bool with_db, char *err, size_t errlen)
{
    if (db->conn) return 0;
    MYSQL *c = mysql_init(NULL);
    if (!c) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    unsigned int timeout = 3, rw_timeout = 30;
    mysql_options(c, MYSQL_OPT_CONNECT_TIMEOUT, &timeout);
    mysql_options(c, MYSQL_OPT_READ_TIMEOUT, &rw_timeout);
    mysql_options(c, MYSQL_OPT_WRITE_TIMEOUT, &rw_timeout);
    mysql_options(c, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    const chat_config *cfg = &db->cfg;
    const char *sock = cfg->db_socket[0] ? cfg->db_socket : NULL;
    const char *host = sock ? "localhost" : cfg->db_host;
    if (!mysql_real_connect(c, host, cfg->db_user, cfg->db_password, NULL, (unsigned)cfg->db_port, sock, 0)) {
        chat_fail(err, errlen, CHAT_EDB, "database unavailable (%u: %s)", mysql_errno(c), mysql_error(c));
        mysql_close(c);
        return CHAT_EDB;
    }
    if (with_db && mysql_select_db(c, cfg->db_name)) {
        chat_fail(err, errlen, CHAT_EDB, "database '%s' unavailable (%u)", cfg->db_name, mysql_errno(c));
        mysql_close(c);
        return CHAT_EDB;
    }
    db->conn = c;
    chat_metric_gauge_add(CHAT_METRIC_DB_CONNECTIONS, 0, 1);
    return 0;
}

int chat_db_connect(chat_db *db, char *err, size_t errlen) { return connect_db(db, true, err, errlen); }

int chat_db_ping(chat_db *db, char *err, size_t errlen)
{
    int rc = chat_db_connect(db, err, errlen);
    if (rc) return rc;
    if (mysql_ping(db->conn)) {
        drop_connection(db);
        rc = chat_db_connect(db, err, errlen);
        if (rc) return rc;
    }
    return 0;
}

static MYSQL_STMT *cached_stmt(chat_db *db, const char *sql, char *err, size_t errlen, unsigned int *errnum)
{
    for (int i = 0; i < db->n_cached; i++)
        if (!strcmp(db->cache[i].sql, sql)) return db->cache[i].stmt;
    MYSQL_STMT *st = mysql_stmt_init(db->conn);
    if (!st) return chat_fail_null(err, errlen, "out of memory");
    if (mysql_stmt_prepare(st, sql, strlen(sql))) {
        *errnum = mysql_stmt_errno(st);
        chat_fail(err, errlen, CHAT_EDB, "prepare failed (%u: %s)", *errnum, mysql_stmt_error(st));
        mysql_stmt_close(st);
        return NULL;
    }
    if (db->n_cached == STMT_CACHE_MAX) { /* evict the oldest */
        mysql_stmt_close(db->cache[0].stmt);
        free(db->cache[0].sql);
        memmove(db->cache, db->cache + 1, sizeof db->cache[0] * (STMT_CACHE_MAX - 1));
        db->n_cached--;
    }
    char *copy = strdup(sql);
    if (!copy) {
        mysql_stmt_close(st);
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    db->cache[db->n_cached].sql = copy;
    db->cache[db->n_cached].stmt = st;
    db->n_cached++;
    return st;
}

/* Binds params (up to 65,535: a multi-row INSERT of a bulk import has thousands) and executes. The
 * binds live on the stack for the usual handful, on the heap beyond. Non-zero on a statement error. */
static int bind_and_execute(MYSQL_STMT *st, const chat_db_param *params, int nparams)
{
    MYSQL_BIND pb_small[32];
    unsigned long lens_small[32];
    MYSQL_BIND *pb = pb_small;
    unsigned long *lens = lens_small;
    if (nparams > 32) {
        pb = calloc((size_t)nparams, sizeof *pb);
        lens = calloc((size_t)nparams, sizeof *lens);
        if (!pb || !lens) {
            free(pb), free(lens);
            return -1;
        }
    } else {
        memset(pb_small, 0, sizeof pb_small);
    }
    my_bool is_null = 1;
    for (int i = 0; i < nparams; i++) {
        const chat_db_param *p = &params[i];
        switch (p->type) {
        case CHAT_DB_STR:
            lens[i] = (unsigned long)p->len;
            pb[i].buffer_type = MYSQL_TYPE_STRING;
            pb[i].buffer = (void *)(p->s ? p->s : "");
            pb[i].buffer_length = lens[i];
            pb[i].length = &lens[i];
            break;
        case CHAT_DB_INT:
            pb[i].buffer_type = MYSQL_TYPE_LONGLONG;
            pb[i].buffer = (void *)&p->i;
            break;
        case CHAT_DB_DOUBLE:
            pb[i].buffer_type = MYSQL_TYPE_DOUBLE;
            pb[i].buffer = (void *)&p->d;
            break;
        default:
            pb[i].buffer_type = MYSQL_TYPE_NULL;
            pb[i].is_null = &is_null;
            break;
        }
    }
    chat_metric_gauge_add(CHAT_METRIC_DB_BUSY, 0, 1);
    int bad = (nparams && mysql_stmt_bind_param(st, pb)) || mysql_stmt_execute(st);
    chat_metric_gauge_add(CHAT_METRIC_DB_BUSY, 0, -1);
    if (pb != pb_small) free(pb), free(lens);
    return bad;
}

/* One attempt. *delivered tells the caller whether rows reached fn (then no retry is safe). */
static int run_once(chat_db *db, const char *sql, const chat_db_param *params, int nparams, chat_db_row_fn fn,
                    void *ud, long long *affected, long long *last_id, bool *delivered, unsigned int *errnum,
                    char *err, size_t errlen)
{
    if (db->in_tx && !db->conn) return chat_fail(err, errlen, CHAT_EDB, "connection lost during a transaction");
    int rc = chat_db_connect(db, err, errlen);
    if (rc) {
        *errnum = CR_CONNECTION_ERROR;
        return rc;
    }
    MYSQL_STMT *st = cached_stmt(db, sql, err, errlen, errnum);
    if (!st) return *errnum ? CHAT_EDB : CHAT_ENOMEM;

    if (bind_and_execute(st, params, nparams)) goto stmt_error;
    if (affected) *affected = (long long)mysql_stmt_affected_rows(st);
    if (last_id) *last_id = (long long)mysql_stmt_insert_id(st);

    MYSQL_RES *meta = mysql_stmt_result_metadata(st);
    if (!meta) return 0;
    my_bool update_max = 1;
    mysql_stmt_attr_set(st, STMT_ATTR_UPDATE_MAX_LENGTH, &update_max);
    if (mysql_stmt_store_result(st)) {
        mysql_free_result(meta);
        goto stmt_error;
    }
    int ncols = (int)mysql_num_fields(meta);
    MYSQL_FIELD *fields = mysql_fetch_fields(meta);
    MYSQL_BIND *rb = calloc((size_t)ncols, sizeof *rb);
    char **vals = calloc((size_t)ncols, sizeof *vals);
    char **bufs = calloc((size_t)ncols, sizeof *bufs);
    unsigned long *rlens = calloc((size_t)ncols, sizeof *rlens);
    unsigned long *caps = calloc((size_t)ncols, sizeof *caps);
    my_bool *nulls = calloc((size_t)ncols, sizeof *nulls);
    my_bool *errs = calloc((size_t)ncols, sizeof *errs);
    rc = 0;
    if (!rb || !vals || !bufs || !rlens || !caps || !nulls || !errs) {
        rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 0; i < ncols; i++) {
        unsigned long cap = fields[i].max_length + 1;
        if (cap < 72) cap = 72; /* numbers and dates converted to text */
        bufs[i] = malloc(cap);
        if (!bufs[i]) {
            rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
            goto out;
        }
        caps[i] = cap;
        rb[i].buffer_type = MYSQL_TYPE_STRING;
        rb[i].buffer = bufs[i];
        rb[i].buffer_length = cap - 1;
        rb[i].length = &rlens[i];
        rb[i].is_null = &nulls[i];
        rb[i].error = &errs[i];
    }
    if (mysql_stmt_bind_result(st, rb)) {
        *errnum = mysql_stmt_errno(st);
        rc = chat_fail(err, errlen, CHAT_EDB, "bind result failed (%u)", *errnum);
        goto out;
    }
    for (;;) {
        int f = mysql_stmt_fetch(st);
        if (f == MYSQL_NO_DATA) break;
        if (f == 1) {
            *errnum = mysql_stmt_errno(st);
            rc = chat_fail(err, errlen, CHAT_EDB, "fetch failed (%u)", *errnum);
            break;
        }
        for (int i = 0; i < ncols; i++) {
            if (nulls[i]) {
                vals[i] = NULL;
                continue;
            }
            if (rlens[i] >= caps[i]) { /* truncated: grow and fetch the column again */
                char *nb = realloc(bufs[i], rlens[i] + 1);
                if (!nb) {
                    rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
                    goto out;
                }
                bufs[i] = nb, caps[i] = rlens[i] + 1;
                MYSQL_BIND one = rb[i];
                one.buffer = nb;
                one.buffer_length = caps[i] - 1;
                if (mysql_stmt_fetch_column(st, &one, (unsigned)i, 0)) {
                    rc = chat_fail(err, errlen, CHAT_EDB, "fetch column failed");
                    goto out;
                }
                rb[i].buffer = nb, rb[i].buffer_length = caps[i] - 1;
                mysql_stmt_bind_result(st, rb);
            }
            bufs[i][rlens[i]] = '\0';
            vals[i] = bufs[i];
        }
        *delivered = true;
        if (fn && (rc = fn(ud, ncols, vals, rlens)) != 0) break;
    }
out:
    mysql_stmt_free_result(st);
    mysql_free_result(meta);
    if (bufs)
        for (int i = 0; i < ncols; i++) free(bufs[i]);
    free(rb), free(vals), free(bufs), free(rlens), free(caps), free(nulls), free(errs);
    return rc;

stmt_error:
    *errnum = mysql_stmt_errno(st);
    return chat_fail(err, errlen, CHAT_EDB, "statement failed (%u: %s)", *errnum, mysql_stmt_error(st));
}

int chat_db_run(chat_db *db, const char *sql, const chat_db_param *params, int nparams, chat_db_row_fn fn,
                void *ud, long long *affected, long long *last_id, char *err, size_t errlen)
{
    for (int attempt = 0;; attempt++) {
        bool delivered = false;
        unsigned int errnum = 0;
        int rc = run_once(db, sql, params, nparams, fn, ud, affected, last_id, &delivered, &errnum, err, errlen);
        db->last_errno = rc == CHAT_EDB ? errnum : 0;
        if (rc != CHAT_EDB || !is_connection_error(errnum)) return rc;
        drop_connection(db); /* the server went away: the next call (or this retry) reconnects */
        if (delivered || attempt > 0 || db->in_tx) return rc;
    }
}

unsigned int chat_db_errno(const chat_db *db) { return db ? db->last_errno : 0; }

static int simple_query(chat_db *db, const char *sql, char *err, size_t errlen)
{
    if (mysql_query(db->conn, sql)) {
        unsigned int e = mysql_errno(db->conn);
        chat_fail(err, errlen, CHAT_EDB, "query failed (%u: %s)", e, mysql_error(db->conn));
        if (is_connection_error(e)) drop_connection(db);
        return CHAT_EDB;
    }
    MYSQL_RES *r = mysql_store_result(db->conn);
    if (r) mysql_free_result(r);
    return 0;
}

int chat_db_exec_script(chat_db *db, const char *sql, size_t len, char *err, size_t errlen)
{
    int rc = chat_db_connect(db, err, errlen);
    if (rc) return rc;
    mysql_set_server_option(db->conn, MYSQL_OPTION_MULTI_STATEMENTS_ON);
    rc = 0;
    if (mysql_real_query(db->conn, sql, (unsigned long)len)) {
        rc = chat_fail(err, errlen, CHAT_EDB, "script failed (%u: %s)", mysql_errno(db->conn), mysql_error(db->conn));
    } else {
        for (;;) {
            MYSQL_RES *r = mysql_store_result(db->conn);
            if (r) mysql_free_result(r);
            int next = mysql_next_result(db->conn);
            if (next == -1) break;
            if (next > 0) {
                rc = chat_fail(err, errlen, CHAT_EDB, "script failed (%u: %s)", mysql_errno(db->conn),
                               mysql_error(db->conn));
                break;
            }
        }
    }
    if (db->conn) mysql_set_server_option(db->conn, MYSQL_OPTION_MULTI_STATEMENTS_OFF);
    if (rc) drop_connection(db); /* the connection may be mid-result after a failed script */
    return rc;
}

int chat_db_begin(chat_db *db, char *err, size_t errlen)
{
    db->in_tx = false;
    int rc = chat_db_ping(db, err, errlen);
    if (!rc) rc = simple_query(db, "START TRANSACTION", err, errlen);
    db->in_tx = rc == 0;
    return rc;
}

int chat_db_commit(chat_db *db, char *err, size_t errlen)
{
    bool was = db->in_tx;
    db->in_tx = false;
    if (!db->conn || !was) return chat_fail(err, errlen, CHAT_EDB, "connection lost before commit");
    return simple_query(db, "COMMIT", err, errlen);
}

void chat_db_rollback(chat_db *db)
{
    db->in_tx = false;
    if (db->conn && mysql_query(db->conn, "ROLLBACK")) drop_connection(db);
}

static bool db_name_ok(const char *s)
{
    if (!*s || strlen(s) > 64) return false;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_'))
            return false;
    return true;
}

int chat_db_create_database(chat_db *db, char *err, size_t errlen)
{
    if (!db_name_ok(db->cfg.db_name)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid database name");
    drop_connection(db);
    int rc = connect_db(db, false, err, errlen);
    if (rc) return rc;
    char sql[256];
    snprintf(sql, sizeof sql, "CREATE DATABASE IF NOT EXISTS `%s` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
             db->cfg.db_name);
    rc = simple_query(db, sql, err, errlen);
    if (!rc && mysql_select_db(db->conn, db->cfg.db_name))
        rc = chat_fail(err, errlen, CHAT_EDB, "select database failed");
    if (rc) drop_connection(db);
    return rc;
}

static int version_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    *(int *)ud = vals[0] ? atoi(vals[0]) : 0;
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return atoi(*(char *const *)a) - atoi(*(char *const *)b);
}

int chat_db_migrate(chat_db *db, const char *schema_file, const char *migrations_dir, int *version_out, char *err,
                    size_t errlen)
{
    size_t len;
    char *sql = chat_read_file(schema_file, 0, &len);
    if (!sql) return chat_fail(err, errlen, CHAT_ERR, "cannot read %s: %s", schema_file, strerror(errno));
    int rc = chat_db_exec_script(db, sql, len, err, errlen);
    free(sql);
    if (rc) return rc;
    int version = 0;
    rc = chat_db_run(db, "SELECT COALESCE(MAX(version), 0) FROM schema_version", NULL, 0, version_row, &version,
                     NULL, NULL, err, errlen);
    if (rc) return rc;

    DIR *d = migrations_dir ? opendir(migrations_dir) : NULL;
    char *names[512] = {0};
    int n = 0;
    if (d) {
        struct dirent *e;
        while ((e = readdir(d)) && n < (int)CHAT_ARRAY_LEN(names)) {
            size_t l = strlen(e->d_name);
            if (l > 4 && e->d_name[0] >= '0' && e->d_name[0] <= '9' && !strcmp(e->d_name + l - 4, ".sql"))
                names[n++] = strdup(e->d_name);
        }
        closedir(d);
    }
    qsort(names, (size_t)n, sizeof names[0], cmp_names);
    for (int i = 0; i < n && !rc; i++) {
        int v = atoi(names[i]);
        if (v <= version) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", migrations_dir, names[i]);
        sql = chat_read_file(path, 0, &len);
        if (!sql) {
            rc = chat_fail(err, errlen, CHAT_ERR, "cannot read %s", path);
            break;
        }
        rc = chat_db_exec_script(db, sql, len, err, errlen);
        free(sql);
        if (rc) break;
        chat_db_param p = CHAT_DB_P_INT(v);
        rc = chat_db_run(db, "INSERT IGNORE INTO schema_version (version) VALUES (?)", &p, 1, NULL, NULL, NULL,
                         NULL, err, errlen);
        if (!rc) {
            chat_log_info("migration %d applied (%s)", v, names[i]);
            version = v;
        }
    }
    for (int i = 0; i < n; i++) free(names[i]);
    if (version_out) *version_out = version;
    return rc;
}

/* ---- read replica ---- */

chat_db *chat_db_new_read(const chat_config *cfg)
{
    if (!cfg->db_read_host[0] && !cfg->db_read_socket[0]) return NULL;
    chat_config rc = *cfg;
    snprintf(rc.db_host, sizeof rc.db_host, "%s", cfg->db_read_host);
    rc.db_port = cfg->db_read_port;
    snprintf(rc.db_socket, sizeof rc.db_socket, "%s", cfg->db_read_socket);
    if (cfg->db_read_user[0]) snprintf(rc.db_user, sizeof rc.db_user, "%s", cfg->db_read_user);
    snprintf(rc.db_password, sizeof rc.db_password, "%s", cfg->db_read_password);
    chat_db *db = chat_db_new(&rc);
    if (db) db->is_replica = true;
    return db;
}

/* Seconds_Behind_Master of the first SHOW SLAVE STATUS row: -1 when NULL (a thread stopped), -2 when
 * the server is not a replica (a Galera node or a plain server: usable, it has no lag to report). */
static long long replica_lag(MYSQL_RES *res)
{
    MYSQL_ROW row = mysql_fetch_row(res);
    if (!row) return -2;
    unsigned int n = mysql_num_fields(res);
    MYSQL_FIELD *f = mysql_fetch_fields(res);
    for (unsigned int i = 0; i < n; i++)
        if (!strcmp(f[i].name, "Seconds_Behind_Master")) return row[i] ? atoll(row[i]) : -1;
    return -1;
}

int chat_db_replica_check(chat_db *replica, long long *lag_s, char *err, size_t errlen)
{
    long long lag = -1;
    int rc = chat_db_ping(replica, err, errlen);
    /* A constant statement without parameters: SHOW is not among what every server version prepares. */
    if (!rc && mysql_query(replica->conn, "SHOW SLAVE STATUS")) {
        rc = chat_fail(err, errlen, CHAT_EDB, "replica status unavailable (%u)", mysql_errno(replica->conn));
        drop_connection(replica);
    }
    if (!rc) {
        MYSQL_RES *res = mysql_store_result(replica->conn);
        lag = res ? replica_lag(res) : -1;
        mysql_free_result(res);
        if (lag == -1)
            rc = chat_fail(err, errlen, CHAT_EDB, "replica not replicating");
        else if (lag > replica->cfg.db_read_max_lag_s)
            rc = chat_fail(err, errlen, CHAT_EDB, "replica lags %llds", lag);
        if (lag == -2) lag = 0;
    }
    chat_metric_gauge_set(CHAT_METRIC_DB_REPLICA_LAG, 0, rc && lag < 0 ? -1 : lag);
    if (lag_s) *lag_s = lag;
    return rc;
}

chat_db *chat_db_read_route(chat_db *replica, chat_db *primary)
{
    if (!replica) return primary;
    int64_t now = chat_now_ms();
    if (!replica->replica_checked_ms || now - replica->replica_checked_ms >= CHAT_DB_REPLICA_CHECK_MS ||
        now < replica->replica_checked_ms) {
        char err[160];
        bool ok = chat_db_replica_check(replica, NULL, err, sizeof err) == 0;
        if (ok != replica->replica_ok || !replica->replica_checked_ms) {
            if (ok)
                chat_log_info("read replica usable");
            else
                chat_log_warn("read replica skipped, reads go to the primary: %s", err);
        }
        replica->replica_ok = ok;
        replica->replica_checked_ms = now ? now : 1;
    }
    return replica->replica_ok ? replica : primary;
}

chat_db *chat_db_read_failed(chat_db *replica, chat_db *used, chat_db *primary)
{
    if (!replica || used != replica || used == primary) return NULL;
    if (replica->replica_ok) chat_log_warn("read replica skipped, reads go to the primary: a read on it failed");
    replica->replica_ok = false;
    int64_t now = chat_now_ms();
    replica->replica_checked_ms = now ? now : 1;
    chat_metric_gauge_set(CHAT_METRIC_DB_REPLICA_LAG, 0, -1);
    return primary;
}
