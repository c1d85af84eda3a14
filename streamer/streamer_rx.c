/* The streamer's view of the bytes lws reads from WebSockets (see streamer_rx.h).
 *
 * Why: two things the streamer needs are invisible through lws 4.1.6's API.
 * - Pongs with an empty payload: lib/roles/ws/ops-ws.c (lws_ws_rx_sm) jumps past the user callback
 *   when a PONG has no payload, so LWS_CALLBACK_RECEIVE_PONG never comes for it. The streamer's pings
 *   are empty and clients echo the ping's payload, so every browser's and python-websockets' answer
 *   was lost and a client that only answered pings was dropped as silent (~70 s with the default
 *   settings), in the middle of an answer too.
 * - The mask bit: the server state machine records it and unmasks accordingly, but never refuses an
 *   unmasked client frame (RFC 6455 section 5.1: the server MUST close; lws added the check in 4.3).
 * lws exposes no raw input hook, no frame header and no "pong seen" state. Every byte it reads from
 * a socket goes through recv(fd, buf, len, 0) (lws_ssl_capable_read_no_ssl; TLS would go through
 * OpenSSL, but lighttpd terminates TLS), so this file defines recv(): the executable's definition binds
 * before libc's for the shared libraries too (the linker exports it because libwebsockets references
 * it), and srx_init checks that it does.
 *
 * Design choices:
 * - Only attached fds are looked at: a WebSocket from ESTABLISHED (the bytes lws reads next start a
 *   frame) to CLOSED (before lws closes the fd). Any other recv (the HTTP phase, ZeroMQ's I/O threads)
 *   costs one relaxed atomic load from a table indexed by fd.
 * - The scanner follows frame headers only: a payload is skipped by its length, never looked at, so a
 *   read costs O(frames in it). Once a frame is unmasked, scanning stops (the connection is closed).
 * - The bytes are never altered and recv's result is passed through: lws parses an unmasked frame
 *   correctly, the hook has marked the connection for closing before lws hands the frame to the
 *   protocol callback, and the callback ignores everything from a connection being closed.
 * - Limit: bytes lws read together with the request head (frames sent before the 101, which section
 *   4.1 forbids) are not seen; the scanner then starts at the first read after the upgrade. */
#include "streamer_rx.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "chat_common.h"

#define SRX_MAX_FDS (1u << 24)

enum { SRX_HDR0 = 0, SRX_HDR1, SRX_LEN, SRX_SKIP }; /* 0: a zeroed srx_conn waits for a frame */

static struct {
    _Atomic(srx_conn *) *table; /* fd -> attached connection; set before other threads exist */
    size_t cap;
    srx_hook hook;
} R;

bool srx_scan(srx_conn *c, const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n && !c->unmasked) {
        unsigned char b = p[i];
        switch (c->state) {
        case SRX_HDR0: /* FIN, RSV, opcode: lws checks them */
            c->state = SRX_HDR1;
            i++;
            break;
        case SRX_HDR1:
            i++;
            if (!(b & 0x80)) {
                c->unmasked = true;
                return true;
            }
            c->need = (b & 0x7f) == 126 ? 2 : (b & 0x7f) == 127 ? 8 : 0;
            c->left = c->need ? 0 : (uint64_t)(b & 0x7f) + 4; /* + the mask key */
            c->state = c->need ? SRX_LEN : SRX_SKIP;
            break;
        case SRX_LEN:
            i++;
            c->left = c->left << 8 | b;
            if (--c->need == 0) {
                c->left = c->left > UINT64_MAX - 4 ? UINT64_MAX : c->left + 4; /* lws refuses such a length */
                c->state = SRX_SKIP;
            }
            break;
        default: { /* SRX_SKIP: the mask key and the payload */
            size_t k = n - i < c->left ? n - i : (size_t)c->left;
            i += k;
            c->left -= k;
            if (!c->left) c->state = SRX_HDR0;
            break;
        }
        }
    }
    return false;
}

/* Every recv of the process: libc's, then a look at what an attached WebSocket delivered. */
ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    ssize_t n = recvfrom(fd, buf, len, flags, NULL, NULL);
    if (n <= 0 || !R.table || fd < 0 || (size_t)fd >= R.cap || (flags & MSG_PEEK)) return n;
    srx_conn *c = atomic_load_explicit(&R.table[fd], memory_order_relaxed);
    if (!c) return n;
    int saved = errno;
    bool unmasked = srx_scan(c, buf, (size_t)n);
    R.hook(c->ud, unmasked);
    errno = saved;
    return n;
}

int srx_init(srx_hook hook, char *err, size_t errlen)
{
    if (dlsym(RTLD_DEFAULT, "recv") != (void *)recv)
        return chat_fail(err, errlen, CHAT_ERR,
                         "the streamer's recv() is not the one the process uses "
                         "(linked statically?): empty pongs and unmasked frames would go unseen");
    struct rlimit rl;
    size_t cap = 65536;
    if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur != RLIM_INFINITY) cap = (size_t)rl.rlim_cur;
    if (cap > SRX_MAX_FDS) cap = SRX_MAX_FDS;
    R.table = calloc(cap, sizeof *R.table); /* untouched pages stay unmapped zero pages */
    if (!R.table) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    R.cap = cap;
    R.hook = hook;
    return 0;
}

void srx_free(void)
{
    free(R.table);
    R.table = NULL;
    R.cap = 0;
}

void srx_attach(srx_conn *c, int fd, void *ud)
{
    c->fd = -1;
    if (!R.table || fd < 0 || (size_t)fd >= R.cap) return;
    c->ud = ud;
    c->fd = fd;
    atomic_store_explicit(&R.table[fd], c, memory_order_relaxed);
}

void srx_detach(srx_conn *c)
{
    if (!c->ud || c->fd < 0 || !R.table) return;
    srx_conn *expected = c;
    atomic_compare_exchange_strong_explicit(&R.table[c->fd], &expected, NULL, memory_order_relaxed,
                                            memory_order_relaxed);
    c->ud = NULL;
    c->fd = -1;
}
