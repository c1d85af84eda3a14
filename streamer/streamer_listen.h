/* The streamer's listeners: CHAT_STREAMER_LISTEN parsed into a list, and one lws vhost per entry.
 *
 * A TCP listener is shared: several streamer processes of a host listen on one port (SO_REUSEPORT) and
 * the kernel spreads the connections between them, so a load balancer in front needs one address per
 * host. libwebsockets 4.1 sets SO_REUSEPORT only for a context of several service threads (its
 * LWS_SERVER_OPTION_ALLOW_LISTEN_SHARE is for Windows), so this module defines bind(), as streamer_rx.c
 * defines recv(): while sl_create_vhosts opens a TCP listener, the socket gets SO_REUSEPORT before libc's
 * bind runs. Every other bind of the process (ZeroMQ's) is passed through untouched.
 *
 * Draining (sl_close_listeners, at the start of a graceful shutdown) closes every listener at once while
 * the established connections go on: the kernel then gives the shared port's new connections to the
 * other streamers, and lighttpd, finding the Unix socket gone (ENOENT), sends the request to another
 * backend of its balance. lws 4.1 has no usable call that closes a listener and keeps the connections:
 * lws_vhost_destroy closes them too, and lws_context_deprecate (every listener, nothing else) reads the
 * listen wsi after freeing it (4.1.6, lib/core-net/vhost.c), which crashed the streamer now and then. So
 * the socket is closed beneath lws: dup2 replaces the listener's descriptor with one that is never
 * readable, which closes the socket in the kernel while lws keeps watching (and at exit closes) a valid
 * descriptor. Before that, the Unix socket's file is removed (if it is still this process's: a successor may have
 * bound the path) and the connections already queued on each listener are accepted and adopted, so that
 * none is reset by the close: a connection the kernel queued before the close is served like the others
 * (and closed with 1001 when the drain ends). On TCP a handshake still in flight at the close is reset
 * unless the host sets net.ipv4.tcp_migrate_req = 1 (Linux 5.14: the kernel moves it to another
 * listener of the port).
 *
 * Threads: sl_parse anywhere; sl_create_vhosts and sl_close_listeners on the thread that owns the lws
 * context, while no other thread binds a socket (the broker's ZeroMQ bind happens before, in st_init, and
 * passes through). */
#ifndef STREAMER_LISTEN_H
#define STREAMER_LISTEN_H

#include <libwebsockets.h>
#include <stdbool.h>
#include <sys/types.h>

#define SL_MAX_LISTENERS 4

typedef struct sl_listener {
    char spec[600]; /* as written, for messages */
    char host[512]; /* the socket's path, or the interface ("" = every one) */
    int port;
    bool unix_sock;
    /* set by sl_create_vhosts */
    struct lws_vhost *vh;
    int fd;            /* the listening socket (lws's), -1 once closed */
    dev_t dev;         /* the Unix socket's file, to remove it only while it is this listener's */
    ino_t ino;
} sl_listener;

/* spec: a comma-separated list of "unix:/path", "host:port", "[v6]:port" or ":port" (up to max).
 * Returns the number of listeners, or CHAT_EINVAL. */
int sl_parse(const char *spec, sl_listener *out, int max);

/* One vhost per listener on ctx, from info (its port, iface and options are set per listener, then
 * restored); each listener's vh, fd, dev and ino are filled in. 0, or CHAT_ERR with the listener that
 * failed logged. */
int sl_create_vhosts(struct lws_context *ctx, struct lws_context_creation_info *info, sl_listener *ls, int n);

/* Stops listening, keeping every established connection: removes the Unix sockets' files (those still
 * this process's), accepts and adopts into lws the connections waiting in the listeners' queues, then
 * closes each listener. Returns the number of connections adopted. */
int sl_close_listeners(sl_listener *ls, int n);

#endif
