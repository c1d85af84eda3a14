/* The streamer's listeners (see streamer_listen.h): parsing CHAT_STREAMER_LISTEN, a vhost per listener,
 * and SO_REUSEPORT on the TCP ones.
 *
 * Design choices:
 * - bind() is interposed rather than the listening socket made here and handed to lws: lws 4.1 cannot
 *   adopt a listening socket, and accepting ourselves would duplicate its accept path (header tables,
 *   the FILTER_NETWORK_CONNECTION refusal while draining). The interposed bind does one thing, only while
 *   sl_create_vhosts runs (a flag), only for TCP sockets: setsockopt(SO_REUSEPORT), then libc's bind.
 * - SO_REUSEPORT admits only sockets of the same user, so another account cannot join the port. Two
 *   streamers given one port by mistake share it instead of the second failing to start: that is the
 *   point of the option, and each streamer's log names its listeners. */
#include "streamer_listen.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "chat_common.h"
#include "chat_log.h"

static _Thread_local bool share_port; /* sl_create_vhosts is opening a TCP listener on this thread */

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
    /* any thread may bind first (ZeroMQ's): the lookup is idempotent, the pointer atomic */
    static _Atomic(bind_fn) real_bind;
    bind_fn f = atomic_load_explicit(&real_bind, memory_order_relaxed);
    if (!f) {
        f = (bind_fn)dlsym(RTLD_NEXT, "bind");
        if (!f) {
            errno = ENOSYS;
            return -1;
        }
        atomic_store_explicit(&real_bind, f, memory_order_relaxed);
    }
    if (share_port && addr && (addr->sa_family == AF_INET || addr->sa_family == AF_INET6)) {
        int one = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one))
            chat_log_warn("streamer: SO_REUSEPORT refused: the port cannot be shared");
    }
    return f(fd, addr, len);
}

/* One entry of len bytes. */
static int parse_one(const char *spec, size_t len, sl_listener *l)
{
    if (!len || len >= sizeof l->spec) return CHAT_EINVAL;
    memcpy(l->spec, spec, len);
    l->spec[len] = '\0';
    spec = l->spec;
    char *host = l->host;
    size_t hostlen = sizeof l->host;
    l->unix_sock = false;
    l->port = 0;
    if (!strncmp(spec, "unix:", 5)) {
        if (!spec[5] || strlen(spec + 5) >= hostlen) return CHAT_EINVAL;
        snprintf(host, hostlen, "%s", spec + 5);
        l->unix_sock = true;
        return 0;
    }
    const char *colon = strrchr(spec, ':');
    if (!colon) return CHAT_EINVAL;
    char *end;
    long p = strtol(colon + 1, &end, 10);
    if (!colon[1] || *end || p < 0 || p > 65535) return CHAT_EINVAL;
    l->port = (int)p;
    const char *h = spec;
    size_t hl = (size_t)(colon - spec);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
    if (hl >= hostlen) return CHAT_EINVAL;
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (!strcmp(host, "localhost")) snprintf(host, hostlen, "127.0.0.1");
    if (!strcmp(host, "*") || !strcmp(host, "0.0.0.0")) host[0] = '\0';
    return 0;
}

int sl_parse(const char *spec, sl_listener *out, int max)
{
    int n = 0;
    for (const char *p = spec;; p++) {
        size_t len = strcspn(p, ",");
        if (n == max || parse_one(p, len, &out[n])) return CHAT_EINVAL;
        n++;
        p += len;
        if (!*p) return n;
    }
}

int sl_create_vhosts(struct lws_context *ctx, struct lws_context_creation_info *info, const sl_listener *ls, int n)
{
    uint64_t base = info->options;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        info->port = ls[i].port;
        info->iface = ls[i].host[0] ? ls[i].host : NULL;
        info->options = base;
        if (ls[i].unix_sock)
            info->options |= LWS_SERVER_OPTION_UNIX_SOCK;
        else if (ls[i].host[0] && strchr(ls[i].host, '.'))
            info->options |= LWS_SERVER_OPTION_DISABLE_IPV6;
        share_port = !ls[i].unix_sock;
        struct lws_vhost *vh = lws_create_vhost(ctx, info);
        share_port = false;
        if (!vh) {
            chat_log_error("streamer: cannot listen on %s", ls[i].spec);
            rc = CHAT_ERR;
        }
    }
    info->options = base;
    info->port = 0;
    info->iface = NULL;
    return rc;
}
