/* Conversation memory in MariaDB: each user's sessions, and their turns.
 *
 * A session is keyed by (user, session id): a session id names a conversation of one user only (JWT
 * sub, compared byte for byte). Another user's id is simply another, new, conversation of this user:
 * nothing here answers differently for an id somebody else uses, so no answer tells which ids exist,
 * and two users' conversations of the same id never mix. A turn (user message + assistant answer) is
 * keyed by a request id within its session, so a retried request is stored once. All functions run on
 * the caller's thread with the caller's chat_db. */
#ifndef CHAT_MEMORY_H
#define CHAT_MEMORY_H

#include <stdbool.h>
#include <stddef.h>

#include "chat_db.h"

#define CHAT_SESSION_ID_MAX 64
/* chat_sessions.updated_at is kept to this many seconds (see chat_memory_open_session). */
#define CHAT_MEMORY_TOUCH_S 60

typedef struct chat_turn {
    char *role;    /* "user" or "assistant" */
    char *content;
} chat_turn;

typedef struct chat_history {
    chat_turn *items; /* oldest first */
    size_t n;
} chat_history;

typedef struct chat_session_info {
    char id[CHAT_SESSION_ID_MAX + 1];
    bool created;   /* the session was created by this call (it has no history) */
    bool deferred;  /* created, but its row is not written yet: chat_memory_create_session before a turn */
    bool touch_due; /* its updated_at is older than CHAT_MEMORY_TOUCH_S: pass it to store_turn */
} chat_session_info;

/* Opens user_id's session requested_id, creating it when the user has none of that id (whoever else
 * may have one), and tying it to customer_id when it has no customer yet; with requested_id NULL or
 * empty, creates a new session with a UUID. out->id receives the session id. When history is not NULL
 * and max_turns > 0 (at most 200), history gets the user's session's last max_turns turns (2 messages
 * each), oldest first, in the same round trip as reading the session. Returns 0, CHAT_EINVAL (malformed
 * user, session or customer id), CHAT_EDB, or CHAT_ENOMEM / CHAT_ERR (no memory, no randomness).
 * history is left empty on every error; caller clears it. defer_create: a new session
 * without a requested id gets its UUID with no round trip at all (out->deferred); the caller writes the
 * row with chat_memory_create_session before storing a turn, so the first answer of a conversation
 * starts one database round trip sooner. requested_id must not point into out (out is cleared first). */
int chat_memory_open_session(chat_db *db, const char *user_id, const char *requested_id, const char *customer_id,
                             bool defer_create, int max_turns, chat_history *history, chat_session_info *out,
                             char *err, size_t errlen);

/* A new session whose id the caller chose (a fresh UUID: the streamer names a conversation before its
 * first answer, so that every event can carry it): *out as chat_memory_open_session's defer_create
 * gives it, with no round trip; the row is written with the first turn (chat_memory_create_session,
 * which refuses an id the user has already, so a chosen id can never join an earlier conversation). 0,
 * or CHAT_EINVAL for a malformed id. */
int chat_memory_new_session(const char *session_id, chat_session_info *out, char *err, size_t errlen);

/* Whether user_id has a session session_id, without reading its history: 0 when so, CHAT_ENOTFOUND when
 * not (whether or not another user has one of that id), CHAT_EINVAL or CHAT_EDB. */
int chat_memory_session_exists(chat_db *db, const char *user_id, const char *session_id, char *err, size_t errlen);

/* Writes the row of user_id's deferred session. CHAT_ECONFLICT when the user has that id already (a UUID
 * collision: a new conversation must not join an earlier one). */
int chat_memory_create_session(chat_db *db, const char *session_id, const char *user_id, const char *customer_id,
                               char *err, size_t errlen);

/* Frees the turns and empties h; accepts NULL and an empty history. */
void chat_history_clear(chat_history *h);

/* Stores one turn of user_id's session idempotently (request_id unique within the session).
 * metadata_json may be NULL. touch_session: also refresh the session's updated_at
 * (chat_session_info.touch_due). CHAT_ENOTFOUND when the user has no such session. */
int chat_memory_store_turn(chat_db *db, const char *user_id, const char *session_id, const char *request_id,
                           const char *user_text, const char *assistant_text, const char *metadata_json,
                           bool touch_session, char *err, size_t errlen);

/* Refreshes the session's updated_at (for a turn stored with chat_memory_store_turns). */
int chat_memory_touch_session(chat_db *db, const char *user_id, const char *session_id, char *err, size_t errlen);

/* A turn for chat_memory_store_turns. */
typedef struct chat_memory_turn {
    const char *user_id, *session_id, *request_id, *user_text, *assistant_text;
    const char *metadata_json; /* may be NULL */
} chat_memory_turn;

#define CHAT_MEMORY_BATCH_MAX 8 /* turns per statement (each count is its own prepared statement) */

/* Stores up to CHAT_MEMORY_BATCH_MAX turns in one statement, all or none: under load the worker ends
 * several answers at once, and one INSERT costs MariaDB about half of what as many single ones do.
 * Touches no session. Any failure (a session that does not exist, an invalid turn...) stores nothing:
 * the caller then stores the turns one by one, each with its own outcome. */
int chat_memory_store_turns(chat_db *db, const chat_memory_turn *turns, size_t n, char *err, size_t errlen);

/* user_id's session's messages as a JSON text {"session_id":..., "messages":[{"role","content",
 * "created_at","metadata"?}...]}. Caller frees *json. CHAT_ENOTFOUND (the user has no such session,
 * whoever else may), CHAT_EINVAL or CHAT_EDB. */
int chat_memory_messages_json(chat_db *db, const char *user_id, const char *session_id, char **json, char *err,
                              size_t errlen);

#endif
