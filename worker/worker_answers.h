/* What a worker keeps of its answers so that they outlive the connection, and the streamer, that asked
 * for them: the text each answer sent so far with its pieces (wa_text, one per slot), the streamers that
 * follow it (wa_subs), and the completed answers of the last CHAT_RESUME_RETENTION_S seconds, one per
 * (user, session) (wa_store: a session is its user's own, chat_memory.h). A client that resumes after a
 * drop, or another tab of the conversation, ATTACHes to the session (chat_wire.h): wa_attached answers it
 * from what is kept.
 *
 * Design choices:
 * - The text is what went out on the wire, appended as each token event is sent (wa_text_append on the
 *   main thread, after the send): what an ATTACH is told it missed and what follows it under its id are
 *   then cut at the same point, so the client gets every piece exactly once. Appending is a memcpy into
 *   a buffer that grows by doubling; the pieces' lengths are kept as they travel (4 bytes each) to find
 *   the byte offset of any piece.
 * - A client's cursor (answer_id, last_seq) may be of another answer of the session. Answer ids are
 *   version-7 UUIDs (chat_uuid7: they sort by time), so the cursor says which is older: a newer answer
 *   (a tab asked something while the client was away) is all missed; an older one the client is past.
 *   Without an answer_id, a last_seq this answer cannot have produced is an earlier answer's: all
 *   missed. A cursor past the answer with its own answer_id is a client's mistake: nothing missed
 *   (wa_cursor documents every case).
 * - The store is bounded twice: by age (retention) and by count (the oldest go first), so a worker doing
 *   thousands of turns a second keeps minutes of answers at most, never all of them. The slot's buffers
 *   move into the store (no copy); the slot starts its next answer with empty ones.
 *
 * Threads: everything here belongs to the worker's main thread. */
#ifndef WORKER_ANSWERS_H
#define WORKER_ANSWERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "chat_util.h"
#include "chat_wire.h"

/* ---------------------------------------------------------------- an answer's text */

typedef struct wa_text {
    chat_buf text; /* the pieces sent so far, one after another */
    chat_buf lens; /* each piece's length, 4 bytes little-endian (chat_wire_token_piece_put) */
    uint64_t seq;  /* pieces sent so far */
} wa_text;

void wa_text_init(wa_text *t);
void wa_text_reset(wa_text *t); /* empty, keeps the memory */
void wa_text_free(wa_text *t);  /* empty, frees the memory */
/* Appends a token event's pieces: text and piece_lens as on the wire (piece_lens empty: text is one
 * piece; empty text: nothing). 0, or CHAT_ENOMEM with t unchanged. */
int wa_text_append(wa_text *t, chat_wire_str text, chat_wire_str piece_lens);
/* The byte offset after piece n (0: 0; n >= seq: the text's length). */
size_t wa_text_offset(const wa_text *t, uint64_t n);

/* Where a client stands in an answer whose pieces are seq and whose id is answer_id, given the cursor it
 * sent (its answer_id, "" when it gave none, and last_seq): 0 .. seq + 1, where seq + 1 means it has
 * the complete too (finished answers only; in flight the most is seq).
 *   - an answer_id that sorts before answer_id (an older answer's): 0 (it has nothing of this one);
 *   - an answer_id that sorts after it (a newer answer's): the end (it is past this one);
 *   - last_seq past the end with this answer_id: the end (nothing missed);
 *   - last_seq past the end without answer_id: 0 (a cursor of an earlier answer of the session);
 *   - otherwise last_seq. */
uint64_t wa_cursor(uint64_t seq, bool finished, const char *answer_id, const char *client_answer_id,
                   uint64_t last_seq);

/* ---------------------------------------------------------------- followers */

/* The ids under which an answer's events also go out (subscriptions: streamers that ATTACHed), each with
 * the tag of the broker it came from (a worker may serve several streamers: their ids are their own). */
typedef struct wa_sub {
    uint64_t id;
    int tag;
} wa_sub;

typedef struct wa_subs {
    wa_sub *at;
    size_t n, cap;
} wa_subs;

void wa_subs_free(wa_subs *s); /* empty, frees the memory */
int wa_subs_add(wa_subs *s, uint64_t id, int tag); /* 0 or CHAT_ENOMEM; one there already is not added again */
bool wa_subs_remove(wa_subs *s, uint64_t id, int tag); /* true when it was there */
bool wa_subs_has(const wa_subs *s, uint64_t id, int tag);
void wa_subs_drop_tag(wa_subs *s, int tag); /* every subscription of that broker (it is gone) */

/* ---------------------------------------------------------------- completed answers */

typedef struct wa_kept {
    struct wa_kept *hnext;        /* hash chain */
    struct wa_kept *older, *newer; /* in completion order */
    char *session_id, *user_id, *answer_id; /* in this allocation */
    wa_text text;
    chat_wire_event *complete; /* owned copy */
    int64_t finished_ms;
} wa_kept;

typedef struct wa_store wa_store;

/* retention_ms: how long a completed answer is kept (0: not at all); max_kept: how many at most. NULL on
 * out of memory. */
wa_store *wa_store_new(int64_t retention_ms, size_t max_kept);
void wa_store_free(wa_store *s); /* accepts NULL */
/* Keeps the completed answer of user_id's session_id, replacing that session's previous one (another
 * user's session of the same id is another session): t's buffers move in (t is left empty and usable;
 * with retention 0 it is only emptied), complete is copied. 0, or CHAT_ENOMEM (nothing kept, t
 * unchanged). */
int wa_store_put(wa_store *s, const char *user_id, const char *session_id, const char *answer_id, wa_text *t,
                 const chat_wire_event *complete, int64_t now_ms);
/* user_id's session's kept answer, or NULL (answers older than the retention go first). */
const wa_kept *wa_store_find(wa_store *s, const char *user_id, const char *session_id, int64_t now_ms);
void wa_store_expire(wa_store *s, int64_t now_ms);
size_t wa_store_count(const wa_store *s);

/* ---------------------------------------------------------------- answering an ATTACH */

/* Fills *out (strings pointing into t, answer_id and complete) for a held answer: IN_FLIGHT when complete
 * is NULL, else FINISHED with its fields; age_ms as given. Finding the user's own answer is the
 * caller's. */
void wa_attached(const chat_wire_attach *req, const wa_text *t, const char *answer_id,
                 const chat_wire_event *complete, int64_t age_ms, chat_wire_attached *out);

#endif
