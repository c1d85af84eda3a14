/* chat-streamer: the /ws/chat WebSocket endpoint on libwebsockets, fed by chat-worker processes over
 * ZeroMQ. This header joins main (process set-up, signals) and the lws side (streamer_ws.c).
 *
 * Threads: st_run runs the lws service loop on the calling thread, the only thread that touches lws,
 * sessions or the broker (streamer_broker.c, served on the same loop). st_request_shutdown is
 * async-signal-safe. */
#ifndef STREAMER_H
#define STREAMER_H

#include <signal.h>
#include <stddef.h>

#include "chat_config.h"

/* Close codes the streamer sends (RFC 6455 section 7.4.1). */
enum {
    ST_CLOSE_NORMAL = 1000,      /* idle timeout */
    ST_CLOSE_GOING_AWAY = 1001,  /* server shutting down */
    ST_CLOSE_PROTOCOL = 1002,    /* an unmasked client frame */
    ST_CLOSE_UNSUPPORTED = 1003, /* binary frame */
    ST_CLOSE_BAD_DATA = 1007,    /* invalid UTF-8 (sent by lws) */
    ST_CLOSE_POLICY = 1008,      /* slow consumer */
    ST_CLOSE_TOO_BIG = 1009,     /* absurd frame or message */
    ST_CLOSE_INTERNAL = 1011,    /* out of memory */
};

/* Frames and messages above this are closed with 1009 instead of skipped with MESSAGE_TOO_LONG. */
#define ST_ABSURD_BYTES (1u << 20)

/* Prepares everything that can fail before listening: JWT verifier, broker socket. 0 or negative code
 * with err. cfg is copied. */
int st_init(const chat_config *cfg, char *err, size_t errlen);
/* Listens, serves until a shutdown completes. Returns the process exit code. Once listening, the
 * signals in unblock (blocked by the caller so that ZeroMQ's threads inherit the block) are unblocked
 * on the calling thread. */
int st_run(const sigset_t *unblock);
/* Frees what st_init/st_run left. */
void st_cleanup(void);
/* Begins a graceful shutdown (from a signal handler). */
void st_request_shutdown(void);

#endif
