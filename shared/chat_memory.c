/* Conversation memory: sessions (owned by one user) and their turns in MariaDB.
 *
 * Design choices:
 * - Ownership is checked in C with an exact byte comparison of user ids: the column collation is
 *   case-insensitive, and "Alice" must not read "alice"'s history. Session ids are looked up through the
 *   same collation, so "ABC" and "abc" are one session with one owner.
 * - Opening an unknown id inserts it with INSERT IGNORE and then re-reads the owner: of two users racing
 *   for the same new id exactly one wins and the other gets CHAT_EFORBIDDEN.
 * - A turn is ONE autocommit INSERT ... SELECT of the user and the assistant rows, joined to the session
 *   row so that nothing is stored for a session that does not exist: the pair is stored entirely or not
 *   at all, in one round trip (the updated_at touch follows as a second, informational one). The unique
 *   key (session_id, request_id, role) makes a retried request a no-op ("ON DUPLICATE KEY UPDATE id = id"
 *   rather than INSERT IGNORE, which would also silence truncation errors).
 * - Texts must be valid UTF-8 and fit MEDIUMTEXT; the front ends cap messages far lower (8 KB), but
 *   memory stores what it is given within the column's limit rather than imposing a second policy.
 * - Nothing here logs message content; errors name ids and codes only. */
#include "chat_memory.h"

#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_common.h"
#include "chat_util.h"

#define USER_ID_MAX 255                 /* chat_sessions.user_id VARCHAR(255) */
#define TEXT_MAX ((size_t)16777215)     /* MEDIUMTEXT */
#define HISTORY_TURNS_MAX 200
#define MESSAGES_JSON_MAX 1000          /* the REST history returns at most the last 1000 messages */

static bool user_ok(const char *user_id)
{
    if (!user_id || !*user_id) return false;
    size_t n = strnlen(user_id, USER_ID_MAX + 1);
    return n <= USER_ID_MAX && chat_utf8_valid(user_id, n);
}

typedef struct owner_ctx {
    bool found;
    char user[USER_ID_MAX + 1];
    bool has_customer;
} owner_ctx;

static int owner_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    owner_ctx *o = ud;
    o->found = true;
    snprintf(o->user, sizeof o->user, "%s", vals[0] ? vals[0] : "");
    o->has_customer = ncols > 1 && vals[1] != NULL;
    return 0;
}

static int read_owner(chat_db *db, const char *session_id, owner_ctx *o, char *err, size_t errlen)
{
    memset(o, 0, sizeof *o);
    chat_db_param p = CHAT_DB_P_STR(session_id);
    return chat_db_run(db, "SELECT user_id, customer_id FROM chat_sessions WHERE id = ?", &p, 1, owner_row, o, NULL,
                       NULL, err, errlen);
}

int chat_memory_open(chat_db *db, const char *user_id, const char *requested_id, const char *customer_id,
                     char out_id[CHAT_SESSION_ID_MAX + 1], int *created, char *err, size_t errlen)
{
    if (created) *created = 0;
    if (out_id) out_id[0] = '\0';
    if (!db || !out_id) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!user_ok(user_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid user id");
    if (customer_id && !*customer_id) customer_id = NULL;
    if (customer_id && !chat_id_valid(customer_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid customer id");
    chat_db_param cust = customer_id ? CHAT_DB_P_STR(customer_id) : CHAT_DB_P_NULL();
    static const char *const insert_sql =
        "INSERT IGNORE INTO chat_sessions (id, user_id, customer_id) VALUES (?, ?, ?)";

    if (!requested_id || !*requested_id) {
        /* A fresh UUID: a collision is astronomically unlikely, but never silently share a session. */
        for (int attempt = 0; attempt < 3; attempt++) {
            char uuid[37];
            if (chat_uuid4(uuid)) return chat_fail(err, errlen, CHAT_ERR, "no randomness for a session id");
            chat_db_param p[] = {CHAT_DB_P_STR(uuid), CHAT_DB_P_STR(user_id), cust};
            long long affected = 0;
            int rc = chat_db_run(db, insert_sql, p, 3, NULL, NULL, &affected, NULL, err, errlen);
            if (rc) return rc;
            if (affected == 1) {
                snprintf(out_id, CHAT_SESSION_ID_MAX + 1, "%s", uuid);
                if (created) *created = 1;
                return 0;
            }
        }
        return chat_fail(err, errlen, CHAT_EDB, "could not create a session");
    }

    if (!chat_id_valid(requested_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    owner_ctx o;
    int rc = read_owner(db, requested_id, &o, err, errlen);
    if (rc) return rc;
    if (!o.found) {
        chat_db_param p[] = {CHAT_DB_P_STR(requested_id), CHAT_DB_P_STR(user_id), cust};
        long long affected = 0;
        rc = chat_db_run(db, insert_sql, p, 3, NULL, NULL, &affected, NULL, err, errlen);
        if (rc) return rc;
        if (affected == 1) {
            snprintf(out_id, CHAT_SESSION_ID_MAX + 1, "%s", requested_id);
            if (created) *created = 1;
            return 0;
        }
        /* somebody created it between our SELECT and INSERT: their row decides */
        rc = read_owner(db, requested_id, &o, err, errlen);
        if (rc) return rc;
        if (!o.found) return chat_fail(err, errlen, CHAT_EDB, "session %s vanished while opening", requested_id);
    }
    if (strcmp(o.user, user_id)) return chat_fail(err, errlen, CHAT_EFORBIDDEN, "session belongs to another user");
    if (customer_id && !o.has_customer) {
        /* the first message that names a customer ties the session to it; later ones do not re-tie it */
        chat_db_param p[] = {cust, CHAT_DB_P_STR(requested_id)};
        rc = chat_db_run(db, "UPDATE chat_sessions SET customer_id = ? WHERE id = ? AND customer_id IS NULL", p, 2,
                         NULL, NULL, NULL, NULL, err, errlen);
        if (rc) return rc;
    }
    snprintf(out_id, CHAT_SESSION_ID_MAX + 1, "%s", requested_id);
    return 0;
}

void chat_history_clear(chat_history *h)
{
    if (!h) return;
    for (size_t i = 0; i < h->n; i++) free(h->items[i].role), free(h->items[i].content);
    free(h->items);
    h->items = NULL;
    h->n = 0;
}

typedef struct history_ctx {
    chat_history *h;
    size_t cap;
} history_ctx;

static int history_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    history_ctx *x = ud;
    chat_history *h = x->h;
    if (chat_array_reserve(&h->items, &x->cap, h->n, sizeof *h->items)) return CHAT_ENOMEM;
    chat_turn *t = &h->items[h->n];
    t->role = strdup(vals[0] ? vals[0] : "");
    t->content = malloc(lens[1] + 1);
    if (!t->role || !t->content) {
        free(t->role), free(t->content);
        return CHAT_ENOMEM;
    }
    if (vals[1]) memcpy(t->content, vals[1], lens[1]);
    t->content[vals[1] ? lens[1] : 0] = '\0';
    h->n++;
    return 0;
}

int chat_memory_history(chat_db *db, const char *session_id, int max_turns, chat_history *out, char *err,
                        size_t errlen)
{
    if (!out) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    memset(out, 0, sizeof *out);
    if (!db || !chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    if (max_turns <= 0) return 0;
    if (max_turns > HISTORY_TURNS_MAX) max_turns = HISTORY_TURNS_MAX;
    /* the newest 2N rows, returned oldest first; ids grow with insertion and a turn is inserted user first */
    chat_db_param p[] = {CHAT_DB_P_STR(session_id), CHAT_DB_P_INT(2LL * max_turns)};
    history_ctx x = {.h = out};
    int rc = chat_db_run(db,
                         "SELECT role, content FROM (SELECT id, role, content FROM chat_messages WHERE session_id = ? "
                         "ORDER BY id DESC LIMIT ?) t ORDER BY id ASC",
                         p, 2, history_row, &x, NULL, NULL, err, errlen);
    if (rc) {
        chat_history_clear(out);
        if (rc == CHAT_ENOMEM) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory reading history");
        return rc;
    }
    return 0;
}

static int exists_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    *(bool *)ud = true;
    return 0;
}

int chat_memory_store_turn(chat_db *db, const char *session_id, const char *request_id, const char *user_text,
                           const char *assistant_text, const char *metadata_json, char *err, size_t errlen)
{
    if (!db || !user_text || !assistant_text) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    if (!chat_id_valid(session_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid session id");
    if (!chat_id_valid(request_id)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid request id");
    size_t ul = strnlen(user_text, TEXT_MAX + 1), al = strnlen(assistant_text, TEXT_MAX + 1);
    size_t ml = metadata_json ? strnlen(metadata_json, TEXT_MAX + 1) : 0;
    if (ul > TEXT_MAX || al > TEXT_MAX || ml > TEXT_MAX)
        return chat_fail(err, errlen, CHAT_EINVAL, "turn too large (limit %zu bytes per text)", TEXT_MAX);
    if (!chat_utf8_valid(user_text, ul) || !chat_utf8_valid(assistant_text, al) ||
        (metadata_json && !chat_utf8_valid(metadata_json, ml)))
        return chat_fail(err, errlen, CHAT_EINVAL, "turn is not valid UTF-8");

    /* One autocommit statement, atomic by itself: both rows or neither, and only when the session
     * exists (the SELECT yields no row otherwise). A retried request finds its rows and adds nothing. */
    chat_db_param p[] = {
        CHAT_DB_P_STR(request_id), CHAT_DB_P_STRN(user_text, ul), CHAT_DB_P_STRN(assistant_text, al),
        metadata_json ? CHAT_DB_P_STRN(metadata_json, ml) : CHAT_DB_P_NULL(), CHAT_DB_P_STR(session_id),
    };
    long long affected = 0;
    int rc = chat_db_run(db,
                         "INSERT INTO chat_messages (session_id, request_id, role, content, metadata)"
                         " SELECT s.id, ?, t.role, t.content, t.metadata FROM chat_sessions s"
                         " JOIN (SELECT 1 AS n, 'user' AS role, ? AS content, NULL AS metadata"
                         "       UNION ALL SELECT 2, 'assistant', ?, ?) t"
                         " WHERE s.id = ? ORDER BY t.n"
                         " ON DUPLICATE KEY UPDATE id = chat_messages.id",
                         p, 5, NULL, NULL, &affected, NULL, err, errlen);
    chat_db_param sp = CHAT_DB_P_STR(session_id);
    if (rc) return rc;
    if (affected > 0) /* the session's last activity; informational, so outside the insert's atomicity */
        return chat_db_run(db, "UPDATE chat_sessions SET updated_at = CURRENT_TIMESTAMP WHERE id = ?", &sp, 1, NULL,
                           NULL, NULL, NULL, err, errlen);
    /* Nothing inserted: a retry of a stored turn, or no such session. */
    bool exists = false;
    rc = chat_db_run(db, "SELECT 1 FROM chat_sessions WHERE id = ?", &sp, 1, exists_row, &exists, NULL, NULL, err,
                     errlen);
    if (rc) return rc;
    return exists ? 0 : chat_fail(err, errlen, CHAT_ENOTFOUND, "session %s does not exist", session_id);
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
    owner_ctx o;
    int rc = read_owner(db, session_id, &o, err, errlen);
    if (rc) return rc;
    if (!o.found) return chat_fail(err, errlen, CHAT_ENOTFOUND, "no such session");
    if (strcmp(o.user, user_id)) return chat_fail(err, errlen, CHAT_EFORBIDDEN, "session belongs to another user");

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
    chat_db_param p[] = {CHAT_DB_P_STR(session_id), CHAT_DB_P_INT(MESSAGES_JSON_MAX)};
    rc = chat_db_run(db,
                     "SELECT role, content, UNIX_TIMESTAMP(created_at), metadata FROM (SELECT id, role, content, "
                     "created_at, metadata FROM chat_messages WHERE session_id = ? ORDER BY id DESC LIMIT ?) t "
                     "ORDER BY id ASC",
                     p, 2, message_row, &x, NULL, NULL, err, errlen);
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
