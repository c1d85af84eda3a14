/* The streamer's listeners: CHAT_STREAMER_LISTEN parsed into a list, and one lws vhost per entry.
 *
 * A TCP listener is shared: several streamer processes of a host listen on one port (SO_REUSEPORT) and
 * the kernel spreads the connections between them, so a load balancer in front needs one address per
 * host. libwebsockets 4.1 sets SO_REUSEPORT only for a context of several service threads (its
 * LWS_SERVER_OPTION_ALLOW_LISTEN_SHARE is for Windows), so this module defines bind(), as streamer_rx.c
 * defines recv(): while sl_create_vhosts opens a TCP listener, the socket gets SO_REUSEPORT before libc's
 * bind runs. Every other bind of the process (ZeroMQ's) is passed through untouched.
 *
 * Threads: sl_parse anywhere; sl_create_vhosts on the thread that owns the lws context, while no other
 * thread binds a socket (the broker's ZeroMQ bind happens before, in st_init, and passes through). */
#ifndef STREAMER_LISTEN_H
#define STREAMER_LISTEN_H

#include <libwebsockets.h>
#include <stdbool.h>

#define SL_MAX_LISTENERS 4

typedef struct sl_listener {
    char spec[600]; /* as written, for messages */
    char host[512]; /* the socket's path, or the interface ("" = every one) */
    int port;
    bool unix_sock;
} sl_listener;

/* spec: a comma-separated list of "unix:/path", "host:port", "[v6]:port" or ":port" (up to max).
 * Returns the number of listeners, or CHAT_EINVAL. */
int sl_parse(const char *spec, sl_listener *out, int max);

/* One vhost per listener on ctx, from info (its port, iface and options are set per listener, then
 * restored). 0, or CHAT_ERR with the listener that failed logged. */
int sl_create_vhosts(struct lws_context *ctx, struct lws_context_creation_info *info, const sl_listener *ls, int n);

#endif
