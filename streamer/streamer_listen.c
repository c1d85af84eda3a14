/* The streamer's listeners (see streamer_listen.h): parsing CHAT_STREAMER_LISTEN, a vhost per listener,
 * SO_REUSEPORT on the TCP ones, and closing them all when a drain starts.
 *
 * Design choices:
 * - bind() is interposed rather than the listening socket made here and handed to lws: lws 4.1 cannot
 *   adopt a listening socket, and accepting ourselves would duplicate its accept path (header tables,
 *   the FILTER_NETWORK_CONNECTION callback). The interposed bind acts only while sl_create_vhosts runs (a
 *   flag): it notes the descriptor (lws does not expose its listeners' sockets, and the drain needs them
 *   to empty their queues) and, for TCP sockets, sets SO_REUSEPORT; then libc's bind.
 * - SO_REUSEPORT admits only sockets of the same user, so another account cannot join the port. Two
 *   streamers given one port by mistake share it instead of the second failing to start: that is the
 *   point of the option, and each streamer's log names its listeners. */
#include "streamer_listen.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_log.h"

static _Thread_local bool creating; /* sl_create_vhosts is opening a listener on this thread */
static _Thread_local int bound_fd;  /* the socket it bound */

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
    if (creating && addr) {
        bound_fd = fd;
        int one = 1;
        if ((addr->sa_family == AF_INET || addr->sa_family == AF_INET6) &&
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one))
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

/* A TCP port shared with SO_REUSEPORT loses, when one of its listeners closes (a drain), the handshakes
 * then in flight to it, unless the kernel moves them to another listener (net.ipv4.tcp_migrate_req,
 * Linux 5.14+). Said once at start (info: the streamer cannot tell whether others share the port); a
 * kernel without the setting says nothing. */
#define SL_MIGRATE_REQ "/proc/sys/net/ipv4/tcp_migrate_req"
static void note_unmigrated(const sl_listener *l)
{
    FILE *f = fopen(SL_MIGRATE_REQ, "r");
    if (!f) return;
    int v = fgetc(f);
    fclose(f);
    if (v == '0')
        chat_log_info("streamer: net.ipv4.tcp_migrate_req is 0: if other streamers share %s, a connection whose "
                      "handshake is in flight when one of them drains is reset; set it to 1 (deploy/README.md, "
                      "section 7)",
                      l->spec);
}

int sl_create_vhosts(struct lws_context *ctx, struct lws_context_creation_info *info, sl_listener *ls, int n)
{
    uint64_t base = info->options;
    int rc = 0;
    bool noted = false;
    for (int i = 0; i < n && !rc; i++) {
        info->port = ls[i].port;
        info->iface = ls[i].host[0] ? ls[i].host : NULL;
        info->options = base;
        if (ls[i].unix_sock)
            info->options |= LWS_SERVER_OPTION_UNIX_SOCK;
        else if (ls[i].host[0] && strchr(ls[i].host, '.'))
            info->options |= LWS_SERVER_OPTION_DISABLE_IPV6;
        creating = true;
        bound_fd = -1;
        struct lws_vhost *vh = lws_create_vhost(ctx, info);
        creating = false;
        ls[i].vh = vh;
        ls[i].fd = vh ? bound_fd : -1;
        ls[i].dev = 0;
        ls[i].ino = 0;
        struct stat st;
        if (vh && ls[i].unix_sock && !stat(ls[i].host, &st)) {
            ls[i].dev = st.st_dev;
            ls[i].ino = st.st_ino;
        }
        if (!vh) {
            chat_log_error("streamer: cannot listen on %s", ls[i].spec);
            rc = CHAT_ERR;
        } else if (!ls[i].unix_sock && !noted) {
            note_unmigrated(&ls[i]);
            noted = true;
        }
    }
    info->options = base;
    info->port = 0;
    info->iface = NULL;
    return rc;
}

/* Removes the Unix socket's file if it is still the one this listener bound (same device and inode): a
 * successor may already listen on the path. */
static void unlink_own(const sl_listener *l)
{
    struct stat st;
    if (!l->ino || stat(l->host, &st) || st.st_dev != l->dev || st.st_ino != l->ino) return;
    if (unlink(l->host)) chat_log_warn("streamer: cannot remove %s: %s", l->host, strerror(errno));
}

/* Accepts what waits in l's queue and hands it to lws as its own accept would have. */
static int adopt_queued(sl_listener *l)
{
    int n = 0;
    /* lws's listeners may block (it accepts only after poll says so): this loop must stop at empty */
    int fl = fcntl(l->fd, F_GETFL);
    if (fl < 0 || fcntl(l->fd, F_SETFL, fl | O_NONBLOCK)) return 0;
    for (;;) {
        int c = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            return n; /* EAGAIN: the queue is empty */
        }
        int one = 1;
        if (!l->unix_sock) (void)setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (lws_adopt_socket_vhost(l->vh, c)) n++; /* on failure lws has closed it */
    }
}

/* Closes l's listening socket under lws: dup2 puts a descriptor that is never readable (an eventfd) in
 * its place, which drops the socket's last reference (the kernel stops listening, and epoll forgets it)
 * while lws's listen wsi keeps a valid descriptor to watch and to close at exit. */
static int close_under_lws(sl_listener *l)
{
    int ph = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (ph < 0) return CHAT_ERR;
    int rc = dup3(ph, l->fd, O_CLOEXEC) < 0 ? CHAT_ERR : 0;
    close(ph);
    return rc;
}

int sl_close_listeners(sl_listener *ls, int n)
{
    int adopted = 0;
    /* The files first: a connect() that finds no file goes elsewhere, one that found it is queued. */
    for (int i = 0; i < n; i++)
        if (ls[i].unix_sock && ls[i].fd >= 0) unlink_own(&ls[i]);
    for (int i = 0; i < n; i++) {
        if (ls[i].fd < 0 || !ls[i].vh) continue;
        adopted += adopt_queued(&ls[i]);
        if (close_under_lws(&ls[i]))
            chat_log_warn("streamer: cannot close the listener %s: %s", ls[i].spec, strerror(errno));
        ls[i].fd = -1;
    }
    return adopted;
}
