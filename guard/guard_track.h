/* Which front-door connections are trickling a request: the policy of chat-guard, apart from how sockets
 * are listed (guard_diag.h) or closed (guard_fd.h), so that it can be tested with made-up counters.
 *
 * lighttpd (1.4.69, and upstream to date) bounds a request head only by the pause between two reads
 * (server.max-read-idle, CHAT_HEAD_IDLE_S) and by its size: a client sending one byte every few
 * seconds holds a connection for hours (slowloris). The rule here bounds the whole request:
 *
 *   A connection is closed when, for CHAT_HEAD_TIMEOUT_S, the server has sent it nothing while the
 *   client kept sending: its "window" starts when the connection is first seen and again each time the
 *   server sends a byte, and it is closed once the window is timeout_ms old and the client's last data
 *   came in the window's second half.
 *
 * What that leaves alone, and why:
 * - A request that arrived whole and waits for its answer (a REST answer from a slow model): the
 *   client sends nothing while it waits, so its last data is at the window's start.
 * - A WebSocket after its handshake: the server sent the 101, then frames and pings (every
 *   CHAT_PING_INTERVAL_S); each restarts the window, and a client's pong follows at once.
 * - Keep-alive: each response restarts the window, so every request on the connection gets its own
 *   bound.
 * A trickled head is closed between timeout and timeout + CHAT_HEAD_IDLE_S (lighttpd closes it itself
 * if it pauses longer) plus one poll. A request body sent slower than that is closed too: /api/ bodies
 * are a few KB. Not thread-safe: one guard_track per polling loop. */
#ifndef GUARD_TRACK_H
#define GUARD_TRACK_H

#include <stddef.h>
#include <stdint.h>

#include "guard_diag.h"

typedef struct guard_track guard_track;

/* A tracker closing after timeout_ms (> 0). NULL when out of memory. */
guard_track *guard_track_new(int64_t timeout_ms);
void guard_track_free(guard_track *t); /* accepts NULL */

/* One poll: socks are the connections open now (any order), now_ms a monotonic clock. Forgets the
 * connections gone, starts windows for the new ones, and writes to victims (room for n) the indices in
 * socks of those to close; each connection is named once, at the first poll that finds it trickling.
 * Returns the number of victims, or CHAT_ENOMEM (the tracker is then unchanged). */
int guard_track_update(guard_track *t, const guard_sock *socks, size_t n, int64_t now_ms, size_t *victims);

/* Connections tracked after the last update (for tests and the log). */
size_t guard_track_count(const guard_track *t);

#endif
