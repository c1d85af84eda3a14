/* What the streamer sees of the bytes libwebsockets reads from a WebSocket, before lws parses them:
 * that bytes arrived (keepalive) and whether a client frame came unmasked (RFC 6455 section 5.1).
 *
 * libwebsockets 4.1.6 (Debian 12) hides both: a pong with an empty payload never reaches the protocol
 * callback, and the mask bit of a client frame is not checked. So recv() is interposed (streamer_rx.c
 * says how and why that is safe); a connection attached here reports each read to the hook given to
 * srx_init.
 *
 * Threads: srx_init/srx_free before and after every other thread; srx_attach, srx_detach and the hook
 * on the lws service thread. recv() itself may be called by any thread. */
#ifndef STREAMER_RX_H
#define STREAMER_RX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Per connection, embedded in the session (zeroed = not attached). */
typedef struct srx_conn {
    uint64_t left; /* bytes of the current frame still to skip (mask key + payload) */
    void *ud;      /* given back to the hook; NULL when not attached */
    int fd;        /* attached to this fd */
    uint8_t state; /* where the frame-header scanner is (0: before a frame) */
    uint8_t need;  /* extended-length bytes still to read */
    bool unmasked; /* an unmasked frame was seen: scanning stopped */
} srx_conn;

/* Called for each read of an attached connection that returned bytes, on the thread that read them
 * (the lws thread), before lws parses them. unmasked: these bytes hold the connection's first
 * unmasked frame (said once). */
typedef void (*srx_hook)(void *ud, bool unmasked);

/* Allocates the fd table (sized by RLIMIT_NOFILE, which the caller has raised) and checks that the
 * interposed recv() is the one the process uses. 0, CHAT_ENOMEM, or CHAT_ERR with err (not in effect,
 * e.g. a static link). */
int srx_init(srx_hook hook, char *err, size_t errlen);
void srx_free(void);
/* Starts watching fd for c (a WebSocket after its upgrade: the next byte read starts a frame). An fd
 * outside the table is not watched. */
void srx_attach(srx_conn *c, int fd, void *ud);
/* Stops watching; before the fd is closed. Accepts a connection never attached. */
void srx_detach(srx_conn *c);
/* The frame-header scanner alone: feeds n bytes of a client's frame stream; true when they hold the
 * first unmasked frame header (later calls then return false). */
bool srx_scan(srx_conn *c, const unsigned char *p, size_t n);

#endif
