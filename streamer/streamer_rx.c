/* The streamer's view of the bytes lws reads from WebSockets (see streamer_rx.h).
 *
 * Why: the keepalive needs to know that a client answered a ping, and lws 4.1.6's API does not say so
 * for pongs with an empty payload: lib/roles/ws/ops-ws.c (lws_ws_rx_sm) jumps past the user callback
 * when a PONG has no payload, so LWS_CALLBACK_RECEIVE_PONG never comes for it. The streamer's pings
 * are empty and clients echo the ping's payload, so every browser's and python-websockets' answer was
 * lost and a client that only answered pings was dropped as silent (~70 s with the default settings),
 * in the middle of an answer too. lws exposes no raw input hook and no "pong seen" state. Every byte it
 * reads from a socket goes through recv(fd, buf, len, 0) (lws_ssl_capable_read_no_ssl; TLS would go
 * through OpenSSL, but lighttpd terminates TLS), so this file defines recv(): the executable's
 * definition binds before libc's for the shared libraries too (the linker exports it because
 * libwebsockets references it), and srx_init checks that it does.
 *
 * Design choices:
 * - Only attached fds are looked at: a WebSocket from ESTABLISHED to CLOSED (before lws closes the fd).
 *   Any other recv (the HTTP phase, ZeroMQ's I/O threads) costs one relaxed atomic load from a table
 *   indexed by fd.
 * - The bytes are never altered and recv's result is passed through. */
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

static struct {
    _Atomic(srx_conn *) *table; /* fd -> attached connection; set before other threads exist */
    size_t cap;
    srx_hook hook;
} R;

/* Every recv of the process: libc's, then a look at what an attached WebSocket delivered. */
ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    ssize_t n = recvfrom(fd, buf, len, flags, NULL, NULL);
    if (n <= 0 || !R.table || fd < 0 || (size_t)fd >= R.cap || (flags & MSG_PEEK)) return n;
    srx_conn *c = atomic_load_explicit(&R.table[fd], memory_order_relaxed);
    if (!c) return n;
    int saved = errno;
    R.hook(c->ud);
    errno = saved;
    return n;
}

int srx_init(srx_hook hook, char *err, size_t errlen)
{
    if (dlsym(RTLD_DEFAULT, "recv") != (void *)recv)
        return chat_fail(err, errlen, CHAT_ERR, "the streamer's recv() is not the one the process uses "
                                                "(linked statically?): empty pongs would go unseen");
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
