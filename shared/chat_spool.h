/* The spool: the turns the database could not take when their answer ended, kept on disk by the
 * process until it can, so that no answer a client was told about is silently lost.
 *
 * One append-only file per process, CHAT_SPOOL_DIR/<database>-<role>-<pid>-<start>-<n>.spool (mode 0600 in
 * a 0700 directory), one JSON line per turn, fdatasync'd before chat_spool_append returns: a spooled
 * turn survives the process. The process replays it into the database (its own thread, which retries with a back-off while the database is away) and empties the file once
 * every turn in it is handled. A replay is idempotent: a turn is keyed by its session and request id
 * (chat_messages' unique key), so a turn written twice (a replay cut short by a crash, a first attempt
 * whose reply was lost with the connection) is stored once. A file is locked (flock) by the process
 * that writes it: at open, every spool of the same database that nobody holds any more (its process
 * died) is taken over, so a crash loses nothing either; a torn last line (the crash cut a write) is
 * skipped. See docs/streamer.md, "Storing turns".
 *
 * Thread context: chat_spool_append and chat_spool_pending from any thread; one replay at a time
 * (chat_spool_replay serialises itself); open, start and free from the thread that owns the spool. */
#ifndef CHAT_SPOOL_H
#define CHAT_SPOOL_H

#include <stdbool.h>
#include <stddef.h>

#include "chat_config.h"
#include "chat_db.h"

/* One turn as the spool keeps it. Strings are borrowed for the call. */
typedef struct chat_spool_turn {
    const char *session_id, *request_id;
    const char *user_id;     /* the session's owner */
    const char *customer_id; /* NULL: none */
    bool new_session;        /* the session's row is written with the turn (chat_memory's defer_create) */
    bool touch_session;      /* refresh the session's updated_at (chat_session_info.touch_due) */
    const char *user_text, *assistant_text;
    const char *metadata_json; /* NULL: none */
} chat_spool_turn;

typedef struct chat_spool chat_spool;

/* Opens this process's spool in cfg->spool_dir (created 0700 when missing) for role (a short name:
 * "worker", "fcgi"), and takes over the spools of the same database that no process holds any more.
 * replayer: also start the thread that replays it, with a database connection of its own, whenever it
 * holds turns: at once after a take-over, then with a back-off from 100 ms doubling to
 * cfg->spool_retry_ms while the database is away (without it the caller replays, chat_spool_replay).
 * 0 with *out set; 0 with *out NULL when the spool is off (CHAT_SPOOL_MAX_MB=0); or a negative code with
 * err (the directory or the file cannot be written, no thread). Does not touch the database itself. */
int chat_spool_open(const chat_config *cfg, const char *role, bool replayer, chat_spool **out, char *err,
                    size_t errlen);

/* Stops the replayer and closes the spool; the file is removed when it holds nothing, else kept for the
 * next process to take over. Accepts NULL. */
void chat_spool_free(chat_spool *s);

/* Whether turns wait in the spool. A turn that ends meanwhile is appended after them rather than
 * written to the database first, so that a session's turns are stored in the order they were answered. */
bool chat_spool_pending(chat_spool *s);

/* The number of turns waiting (for logs and status). */
size_t chat_spool_waiting(chat_spool *s);

/* Appends one turn, durably (written and fdatasync'd) before returning: 0, or a negative code with err
 * when it could not be (the spool would pass CHAT_SPOOL_MAX_MB, a write or sync failed: nothing of the
 * line is left in the file). Wakes the replayer. */
int chat_spool_append(chat_spool *s, const chat_spool_turn *t, char *err, size_t errlen);

/* Replays the waiting turns into db, oldest first, each as chat_memory stores a turn (a new session's row
 * created first, or its owner checked); *stored (may be NULL) counts the turns written. A turn the
 * database refuses for what it is (chat_spool_refused: its session deleted meanwhile, another user's) is
 * dropped with an error in the log; an unreadable line (a torn last line) is skipped. Stops at the first
 * turn that fails otherwise (the database is away): 0 when nothing waits any more (the file is then
 * emptied), or the failure's code with err, the turns from there on kept for the next replay. */
int chat_spool_replay(chat_spool *s, chat_db *db, size_t *stored, char *err, size_t errlen);

/* Whether a failed attempt to store a turn (rc from chat_memory, db the connection it used) would fail
 * the same way however often it is tried: the turn itself is refused (malformed, too large, its session
 * missing or another user's). Such a turn is not spooled. Any other failure (the database unreachable,
 * read-only, a lock lost) may pass later. */
bool chat_spool_refused(int rc, const chat_db *db);

#endif
