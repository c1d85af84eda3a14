/* Conversation memory: each user's sessions and their turns in MariaDB.
 *
 * Design choices:
 * - A session is keyed by (user_id, id) (migration 005), and every statement names both: another user's
 *   session id is another conversation, which the user opens as new, so no answer differs for an id in
 *   use by somebody else (which would let a client probe for ids) and no statement can reach another
 *   user's rows. user_id is a binary column (utf8mb4_nopad_bin): "Alice" is not "alice", nor "alice "
 *   (a PAD SPACE collation would ignore that trailing space). Session ids keep the case-insensitive
 *   collation, so "ABC" and "abc" are one session of a user. The user read back is compared again in
 *   C, byte for byte, as a second guard.
 * - Opening an unknown id inserts it with INSERT IGNORE and then re-reads it: two requests of the same
 *   user racing to create one id end in the same session.
 * - Round trips are the cost of a turn (each is a parse, a plan and a context switch in MariaDB), so an
 *   existing session costs two statements: one SELECT for its row and its history together, and one
 *   INSERT of the turn; a new conversation's row can be written with its first turn
 *   (chat_memory_open_session's defer_create), so its answer starts with no round trip at all. The
 *   turn's two rows go in one autocommit multi-row INSERT: stored entirely or not at all; the foreign
 *   key refuses a session the user does not have; the unique key (user_id, session_id, request_id,
 *   role) makes a retried request a no-op ("ON DUPLICATE KEY UPDATE id = id" rather than INSERT IGNORE,
 *   which would also silence truncation errors).
 * - chat_sessions.updated_at is the last activity to CHAT_MEMORY_TOUCH_S: the SELECT reports whether it
 *   is older than that, and only then does storing a turn refresh it, with a third statement.
 * - Texts must be valid UTF-8 and fit MEDIUMTEXT; the front ends cap messages far lower (8 KB), but
 *   memory stores what it is given within the column's limit rather than imposing a second policy.
 * - Nothing here logs message content; errors name ids and codes only. */
#include "chat_memory.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <mysqld_error.h>
#include <time.h>

#include "chat_common.h"
#include "chat_util.h"

#define USER_ID_MAX 255                 /* chat_sessions.user_id VARCHAR(255) */
#define TEXT_MAX ((size_t)16777215)     /* MEDIUMTEXT */
#define HISTORY_TURNS_MAX 200
#define MESSAGES_JSON_MAX 1000          /* the REST history returns at most the last 1000 messages */
#define TURN_PARAMS 9                   /* a turn's two rows in an INSERT */
#define TURN_ROWS "(?, ?, ?, 'user', ?, NULL), (?, ?, ?, 'assistant', ?, ?)"
#define TURN_INSERT "INSERT INTO chat_messages (user_id, session_id, request_id, role, content, metadata) VALUES "
#define TURN_UPSERT " ON DUPLICATE KEY UPDATE id = id"

static bool user_ok(const char *user_id)
{
    if (!user_id || !*user_id) return false;
    size_t n = strnlen(user_id, USER_ID_MAX + 1);
    return n <= USER_ID_MAX && chat_utf8_valid(user_id, n);
}

/* The user's session's newest messages joined to its row: one round trip per turn for both the session
 * and its history (the session row is a constant to the optimizer, so the messages are read newest first
 * straight off (user_id, session_id, id); this costs about half of a UNION of the two and little more than the
 * history alone). A session without messages yields no row: then its row alone is read. The rows
 * arrive newest first and are reversed here. */
typedef struct session_ctx {
    bool found;
    char user[USER_ID_MAX + 1];
    bool has_customer;
    bool touch_due;
    chat_history *h; /* NULL: owner only */
    size_t cap;
} session_ctx;

static int session_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    session_ctx *o = ud;
    if (!o->found) {
        o->found = true;
        snprintf(o->user, sizeof o->user, "%s", vals[0] ? vals[0] : "");
        o->has_customer = vals[1] != NULL;
        o->touch_due = vals[2] && atoi(vals[2]) != 0;
    }
    chat_history *h = o->h;
    if (!h || ncols < 5 || !vals[3]) return 0;
    if (chat_array_reserve(&h->items, &o->cap, h->n, sizeof *h->items)) return CHAT_ENOMEM;
    chat_turn *t = &h->items[h->n];
    t->role = strdup(vals[3]);
    t->content = malloc(lens[4] + 1);
    if (!t->role || !t->content) {
        free(t->role), free(t->content);
        return CHAT_ENOMEM;
    }
    if (vals[4]) memcpy(t->content, vals[4], lens[4]);
    t->content[vals[4] ? lens[4] : 0] = '\0';
    h->n++;
    return 0;
}

/* Newest first -> oldest first. */
static void reverse(chat_history *h)
{
    for (size_t i = 0, j = h->n ? h->n - 1 : 0; i < j; i++, j--) {
        chat_turn t = h->items[i];
        h->items[i] = h->items[j], h->items[j] = t;
    }
}

static int read_session(chat_db *db, const char *user_id, const char *session_id, int max_turns, session_ctx *o,
                        chat_history *h, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    if (h) chat_history_clear(h);
    if (h && max_turns > 0) o->h = h;
    int rc = 0;
    if (o->h) {
        chat_db_param p[] = {CHAT_DB_P_INT(CHAT_MEMORY_TOUCH_S), CHAT_DB_P_STR(user_id), CHAT_DB_P_STR(session_id),
                             CHAT_DB_P_INT(2LL * max_turns)};
        rc = chat_db_run(db,
                         "SELECT s.user_id, s.customer_id, s.updated_at < NOW() - INTERVAL ? SECOND,"
                         " m.role, m.content"
                         " FROM chat_messages m JOIN chat_sessions s ON s.user_id = m.user_id AND s.id = m.session_id"
                         " WHERE m.user_id = ? AND m.session_id = ? ORDER BY m.id DESC LIMIT ?",
                         p, 4, session_row, o, NULL, NULL, err, errlen);
    }
    if (!rc && !o->found) { /* no history asked for, or none yet: the session row alone */
        chat_db_param p[] = {CHAT_DB_P_INT(CHAT_MEMORY_TOUCH_S), CHAT_DB_P_STR(user_id), CHAT_DB_P_STR(session_id)};
        rc = chat_db_run(db,
                         "SELECT user_id, customer_id, updated_at < NOW() - INTERVAL ? SECOND"
                         " FROM chat_sessions WHERE user_id = ? AND id = ?",
                         p, 3, session_row, o, NULL, NULL, err, errlen);
    }
    if (!rc && o->found && strcmp(o->user, user_id)) { /* the second guard: not byte for byte the user */
        o->found = false;
        if (o->h) chat_history_clear(o->h);
    }
    if (!rc && o->h) reverse(o->h);
    if (rc) {
        if (o->h) chat_history_clear(o->h);
        if (rc == CHAT_ENOMEM) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory reading history");
        return rc;
    }
    return 0;
}

int chat_memory_create_session(chat_db *db, const char *session_id, const char *user_id, const char *customer_id,
                               char *err, size_t errlen)
{
    if (!db) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!user_ok(user_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid user id");
    if (!chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    if (customer_id && !*customer_id) customer_id = NULL;
    if (customer_id && !chat_id_valid(customer_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid customer id");
    chat_db_param p[] = {CHAT_DB_P_STR(session_id), CHAT_DB_P_STR(user_id),
                         customer_id ? CHAT_DB_P_STR(customer_id) : CHAT_DB_P_NULL()};
    int rc = chat_db_run(db, "INSERT INTO chat_sessions (id, user_id, customer_id) VALUES (?, ?, ?)", p, 3, NULL, NULL,
                         NULL, NULL, err, errlen);
    if (rc == CHAT_EDB && chat_db_errno(db) == ER_DUP_ENTRY)
        return chat_fail(err, errlen, CHAT_ECONFLICT, "the user's session %s exists already", session_id);
    return rc;
}

/* Inserts the user's session row unless the user has that id already (INSERT IGNORE); *inserted says
 * which. */
static int insert_session(chat_db *db, const char *id, const char *user_id, chat_db_param cust, bool *inserted,
                          char *err, size_t errlen)
{
    chat_db_param p[] = {CHAT_DB_P_STR(id), CHAT_DB_P_STR(user_id), cust};
    long long affected = 0;
    int rc = chat_db_run(db, "INSERT IGNORE INTO chat_sessions (id, user_id, customer_id) VALUES (?, ?, ?)", p, 3, NULL,
                         NULL, &affected, NULL, err, errlen);
    *inserted = affected == 1;
    return rc;
}

/* A new session with a fresh UUID: its row now, or (defer) when its first turn is stored. */
static int create_new(chat_db *db, const char *user_id, chat_db_param cust, bool defer, chat_session_info *out,
                      char *err, size_t errlen)
{
    /* a collision is astronomically unlikely, but never silently share a session: up to 3 tries */
    for (int attempt = 0; attempt < 3; attempt++) {
        char uuid[37];
        if (chat_uuid4(uuid)) return chat_fail(err, errlen, CHAT_ERR, "no randomness for a session id");
        bool inserted = defer;
        int rc = defer ? 0 : insert_session(db, uuid, user_id, cust, &inserted, err, errlen);
        if (rc) return rc;
        if (inserted) {
            snprintf(out->id, sizeof out->id, "%s", uuid);
            out->created = true;
            out->deferred = defer;
            return 0;
        }
    }
    return chat_fail(err, errlen, CHAT_EDB, "could not create a session");
}

/* The user's session of a requested id: read with its history, created when the user has none of that
 * id, tied to the customer named first. */
static int open_requested(chat_db *db, const char *user_id, const char *requested_id, const char *customer_id,
                          int max_turns, chat_history *history, chat_session_info *out, char *err, size_t errlen)
{
    if (!chat_id_valid(requested_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    chat_db_param cust = customer_id ? CHAT_DB_P_STR(customer_id) : CHAT_DB_P_NULL();
    session_ctx o;
    int rc = read_session(db, user_id, requested_id, max_turns, &o, history, err, errlen);
    if (rc) return rc;
    if (!o.found) {
        bool inserted;
        rc = insert_session(db, requested_id, user_id, cust, &inserted, err, errlen);
        if (rc) return rc;
        if (inserted) {
            snprintf(out->id, sizeof out->id, "%s", requested_id);
            out->created = true;
            return 0;
        }
        /* another request of the user created it between our SELECT and INSERT: read it */
        rc = read_session(db, user_id, requested_id, max_turns, &o, history, err, errlen);
        if (rc) return rc;
        if (!o.found) return chat_fail(err, errlen, CHAT_EDB, "session %s vanished while opening", requested_id);
    }
    if (customer_id && !o.has_customer) {
        /* the first message that names a customer ties the session to it; later ones do not re-tie it */
        chat_db_param p[] = {cust, CHAT_DB_P_STR(user_id), CHAT_DB_P_STR(requested_id)};
        rc = chat_db_run(
            db, "UPDATE chat_sessions SET customer_id = ? WHERE user_id = ? AND id = ? AND customer_id IS NULL", p, 3,
            NULL, NULL, NULL, NULL, err, errlen);
        if (rc) {
            if (history) chat_history_clear(history);
            return rc;
        }
    }
    snprintf(out->id, sizeof out->id, "%s", requested_id);
    out->touch_due = o.touch_due;
    return 0;
}

int chat_memory_new_session(const char *session_id, chat_session_info *out, char *err, size_t errlen)
{
    if (!out) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    memset(out, 0, sizeof *out);
    if (!session_id || !chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    snprintf(out->id, sizeof out->id, "%s", session_id);
    out->created = out->deferred = true;
    return 0;
}

int chat_memory_session_exists(chat_db *db, const char *user_id, const char *session_id, char *err, size_t errlen)
{
    if (!db || !user_ok(user_id)) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!session_id || !chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    session_ctx o;
    int rc = read_session(db, user_id, session_id, 0, &o, NULL, err, errlen);
    if (rc) return rc;
    if (!o.found) return chat_fail(err, errlen, CHAT_ENOTFOUND, "the user has no session %s", session_id);
    return 0;
}

int chat_memory_open_session(chat_db *db, const char *user_id, const char *requested_id, const char *customer_id,
                             bool defer_create, int max_turns, chat_history *history, chat_session_info *out,
                             char *err, size_t errlen)
{
    if (!out) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    memset(out, 0, sizeof *out);
    if (history) memset(history, 0, sizeof *history);
    if (!db) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!user_ok(user_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid user id");
    if (customer_id && !*customer_id) customer_id = NULL;
    if (customer_id && !chat_id_valid(customer_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid customer id");
    if (max_turns > HISTORY_TURNS_MAX) max_turns = HISTORY_TURNS_MAX;
    if (!requested_id || !*requested_id) {
        chat_db_param cust = customer_id ? CHAT_DB_P_STR(customer_id) : CHAT_DB_P_NULL();
        return create_new(db, user_id, cust, defer_create, out, err, errlen);
    }
    return open_requested(db, user_id, requested_id, customer_id, max_turns, history, out, err, errlen);
}

void chat_history_clear(chat_history *h)
{
    if (!h) return;
    for (size_t i = 0; i < h->n; i++) free(h->items[i].role), free(h->items[i].content);
    free(h->items);
    h->items = NULL;
    h->n = 0;
}

/* Checks a turn and fills its TURN_PARAMS parameters (user row, then assistant row). */
static int turn_params(const chat_memory_turn *t, chat_db_param p[TURN_PARAMS], char *err, size_t errlen)
{
    if (!t->user_text || !t->assistant_text) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!user_ok(t->user_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid user id");
    if (!chat_id_valid(t->session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    if (!chat_id_valid(t->request_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid request id");
    size_t ul = strnlen(t->user_text, TEXT_MAX + 1), al = strnlen(t->assistant_text, TEXT_MAX + 1);
    size_t ml = t->metadata_json ? strnlen(t->metadata_json, TEXT_MAX + 1) : 0;
    if (ul > TEXT_MAX || al > TEXT_MAX || ml > TEXT_MAX)
        return chat_fail(err, errlen, CHAT_EINVAL, "turn too large (limit %zu bytes per text)", TEXT_MAX);
    if (!chat_utf8_valid(t->user_text, ul) || !chat_utf8_valid(t->assistant_text, al) ||
        (t->metadata_json && !chat_utf8_valid(t->metadata_json, ml)))
        return chat_fail(err, errlen, CHAT_EINVAL, "turn is not valid UTF-8");
    p[0] = CHAT_DB_P_STR(t->user_id);
    p[1] = CHAT_DB_P_STR(t->session_id);
    p[2] = CHAT_DB_P_STR(t->request_id);
    p[3] = CHAT_DB_P_STRN(t->user_text, ul);
    p[4] = CHAT_DB_P_STR(t->user_id);
    p[5] = CHAT_DB_P_STR(t->session_id);
    p[6] = CHAT_DB_P_STR(t->request_id);
    p[7] = CHAT_DB_P_STRN(t->assistant_text, al);
    p[8] = t->metadata_json ? CHAT_DB_P_STRN(t->metadata_json, ml) : CHAT_DB_P_NULL();
    return 0;
}

int chat_memory_store_turn(chat_db *db, const char *user_id, const char *session_id, const char *request_id,
                           const char *user_text, const char *assistant_text, const char *metadata_json,
                           bool touch_session, char *err, size_t errlen)
{
    if (!db) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    chat_memory_turn t = {user_id, session_id, request_id, user_text, assistant_text, metadata_json};
    /* One autocommit statement, atomic by itself: both rows or neither. The foreign key refuses rows for
     * a session the user does not have (ER_NO_REFERENCED_ROW_2); the unique key makes a retried request
     * a no-op. */
    chat_db_param p[TURN_PARAMS];
    int rc = turn_params(&t, p, err, errlen);
    if (rc) return rc;
    long long affected = 0;
    rc = chat_db_run(db, TURN_INSERT TURN_ROWS TURN_UPSERT, p, TURN_PARAMS, NULL, NULL, &affected, NULL, err, errlen);
    if (rc == CHAT_EDB && chat_db_errno(db) == ER_NO_REFERENCED_ROW_2)
        return chat_fail(err, errlen, CHAT_ENOTFOUND, "session %s does not exist", session_id);
    if (rc || !touch_session || affected <= 0) return rc;
    /* the session's last activity, to CHAT_MEMORY_TOUCH_S; informational, so outside the insert's
     * atomicity */
    return chat_memory_touch_session(db, user_id, session_id, err, errlen);
}

int chat_memory_touch_session(chat_db *db, const char *user_id, const char *session_id, char *err, size_t errlen)
{
    if (!db || !user_ok(user_id)) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    chat_db_param p[] = {CHAT_DB_P_STR(user_id), CHAT_DB_P_STR(session_id)};
    return chat_db_run(db, "UPDATE chat_sessions SET updated_at = CURRENT_TIMESTAMP WHERE user_id = ? AND id = ?", p,
                       2, NULL, NULL, NULL, NULL, err, errlen);
}

int chat_memory_store_turns(chat_db *db, const chat_memory_turn *turns, size_t n, char *err, size_t errlen)
{
    if (!db || !turns || n < 1 || n > CHAT_MEMORY_BATCH_MAX) return chat_fail(err, errlen, CHAT_EINVAL, "invalid batch");
    chat_db_param p[TURN_PARAMS * CHAT_MEMORY_BATCH_MAX];
    char sql[sizeof TURN_INSERT + sizeof TURN_UPSERT + (sizeof TURN_ROWS + 2) * CHAT_MEMORY_BATCH_MAX] = TURN_INSERT;
    size_t np = 0;
    for (size_t i = 0; i < n; i++, np += TURN_PARAMS) {
        int rc = turn_params(&turns[i], p + np, err, errlen);
        if (rc) return rc;
        strcat(sql, i ? ", " TURN_ROWS : TURN_ROWS);
    }
    strcat(sql, TURN_UPSERT);
    /* one autocommit statement: every row or none, like chat_memory_store_turn's two */
    return chat_db_run(db, sql, p, (int)np, NULL, NULL, NULL, NULL, err, errlen);
}

/* ---- the REST history ------------------------------------------------------------------------------- */

typedef struct json_ctx {
    json_object *messages;
    int rc;
} json_ctx;

/* created_at arrives as UNIX_TIMESTAMP with milliseconds: formatted as UTC ISO 8601 whatever the server's
 * time zone. */
static void iso_time(const char *unix_ts, char out[32])
{
    double t = unix_ts ? strtod(unix_ts, NULL) : 0;
    time_t secs = (time_t)t;
    int ms = (int)((t - (double)secs) * 1000.0 + 0.5);
    if (ms >= 1000) secs++, ms -= 1000;
    if (ms < 0 || ms > 999) ms = 0;
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03uZ", (unsigned)ms % 1000u);
}

static int message_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    json_ctx *x = ud;
    json_object *m = json_object_new_object();
    if (!m) goto oom;
    char ts[32];
    iso_time(vals[2], ts);
    if (json_object_object_add(m, "role", json_object_new_string(vals[0] ? vals[0] : "")) ||
        json_object_object_add(m, "content", json_object_new_string_len(vals[1] ? vals[1] : "", (int)lens[1])) ||
        json_object_object_add(m, "created_at", json_object_new_string(ts)))
        goto oom;
    if (vals[3]) {
        /* metadata is ours (the pipeline's JSON); a row that does not parse is left out, not passed raw */
        json_object *meta = json_tokener_parse(vals[3]);
        if (meta && json_object_object_add(m, "metadata", meta)) goto oom;
    }
    if (json_object_array_add(x->messages, m)) goto oom;
    return 0;
oom:
    json_object_put(m);
    x->rc = CHAT_ENOMEM;
    return 1;
}

int chat_memory_messages_json(chat_db *db, const char *user_id, const char *session_id, char **json, char *err,
                              size_t errlen)
{
    if (json) *json = NULL;
    if (!db || !json) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!user_ok(user_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid user id");
    if (!chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    session_ctx o;
    int rc = read_session(db, user_id, session_id, 0, &o, NULL, err, errlen);
    if (rc) return rc;
    if (!o.found) return chat_fail(err, errlen, CHAT_ENOTFOUND, "the user has no such session");

    json_object *root = json_object_new_object();
    json_ctx x = {.messages = json_object_new_array()};
    if (!root || !x.messages || json_object_object_add(root, "session_id", json_object_new_string(session_id))) {
        json_object_put(x.messages);
        rc = CHAT_ENOMEM;
        goto out;
    }
    if (json_object_object_add(root, "messages", x.messages)) {
        json_object_put(x.messages);
        rc = CHAT_ENOMEM;
        goto out;
    }
    chat_db_param p[] = {CHAT_DB_P_STR(user_id), CHAT_DB_P_STR(session_id), CHAT_DB_P_INT(MESSAGES_JSON_MAX)};
    rc = chat_db_run(db,
                     "SELECT role, content, UNIX_TIMESTAMP(created_at), metadata FROM (SELECT id, role, content, "
                     "created_at, metadata FROM chat_messages WHERE user_id = ? AND session_id = ? ORDER BY id DESC "
                     "LIMIT ?) t ORDER BY id ASC",
                     p, 3, message_row, &x, NULL, NULL, err, errlen);
    if (rc == 1) rc = x.rc;
    if (rc) goto out;
    const char *s = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    *json = s ? strdup(s) : NULL;
    if (!*json) rc = CHAT_ENOMEM;
out:
    json_object_put(root);
    if (rc == CHAT_ENOMEM) chat_fail(err, errlen, CHAT_ENOMEM, "out of memory building the history");
    return rc;
}
