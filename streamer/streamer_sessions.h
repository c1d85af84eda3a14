/* The attachment registry of one streamer: which connections follow which conversation, keyed by
 * (user, session). A connection follows one conversation at a time (a tab shows one): the one it
 * resumed or last sent a message in. When an answer of a conversation starts, every other connection
 * following it is told (the user's other tabs and devices show the message and stream the answer).
 *
 * Design choices:
 * - Keyed by the user as well as the session: a connection can only ever be found under its own user,
 *   so naming somebody else's session (refused by the worker's ownership check) cannot make it receive
 *   a single event of that session, whatever the check's timing.
 * - A member is a small allocation per attached connection, none for the others; a conversation's group
 *   exists while somebody follows it. Chained hash table on the key, grown by doubling.
 *
 * Threads: the lws service thread only. */
#ifndef STREAMER_SESSIONS_H
#define STREAMER_SESSIONS_H

#include <stddef.h>

typedef struct ss_registry ss_registry;
typedef struct ss_member ss_member; /* one connection's attachment */

ss_registry *ss_new(void); /* NULL on out of memory */
/* Frees the registry and every member left (their connections' pointers then dangle: call it last). */
void ss_free(ss_registry *r);

/* Attaches conn to (user_id, session_id), leaving the conversation *m followed (if any): *m is the
 * connection's member (NULL when not attached), updated in place. 0, or CHAT_ENOMEM (*m is then
 * detached). Attaching to the conversation it follows already changes nothing. */
int ss_attach(ss_registry *r, ss_member **m, const char *user_id, const char *session_id, void *conn);
/* Detaches *m (NULL: nothing) and sets it to NULL. */
void ss_detach(ss_registry *r, ss_member **m);
/* The session a member follows, NULL for NULL. */
const char *ss_session(const ss_member *m);

/* Calls fn(conn, ud) for every connection following (user_id, session_id) but skip (may be NULL);
 * fn must not attach or detach anyone. Returns how many were called. */
size_t ss_each(ss_registry *r, const char *user_id, const char *session_id, const void *skip,
               void (*fn)(void *conn, void *ud), void *ud);
/* Conversations followed by at least one connection. */
size_t ss_groups(const ss_registry *r);

#endif
