/* Unit tests of the streamer's listeners (streamer/streamer_listen.c): CHAT_STREAMER_LISTEN's list is
 * parsed entry by entry and bad lists are refused; a TCP listener sl_create_vhosts opens is shared
 * (SO_REUSEPORT): a second listener on its port, of a second lws context as a second streamer process
 * would have, opens too, and a plain socket with SO_REUSEPORT can bind the port while both listen. A
 * Unix listener opens beside it on the same context. sl_close_listeners (a drain's start) removes the
 * Unix socket's file (only its own: a file put in its place stays), serves the connection that waited
 * in its queue instead of resetting it, and stops listening on its TCP port (a connect is refused). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "chat_common.h"
#include "streamer_listen.h"
#include "testutil.h"

static void test_parse(void **state)
{
    (void)state;
    sl_listener l[SL_MAX_LISTENERS];
    assert_int_equal(sl_parse("unix:/run/chat/streamer.sock", l, SL_MAX_LISTENERS), 1);
    assert_true(l[0].unix_sock);
    assert_string_equal(l[0].host, "/run/chat/streamer.sock");
    assert_int_equal(sl_parse("unix:/a.sock,127.0.0.1:8001,[::1]:8002,:8003", l, SL_MAX_LISTENERS), 4);
    assert_true(l[0].unix_sock);
    assert_false(l[1].unix_sock);
    assert_string_equal(l[1].host, "127.0.0.1");
    assert_int_equal(l[1].port, 8001);
    assert_string_equal(l[1].spec, "127.0.0.1:8001");
    assert_string_equal(l[2].host, "::1");
    assert_int_equal(l[2].port, 8002);
    assert_string_equal(l[3].host, "");
    assert_int_equal(l[3].port, 8003);
    assert_int_equal(sl_parse("localhost:9,*:10,0.0.0.0:11", l, SL_MAX_LISTENERS), 3);
    assert_string_equal(l[0].host, "127.0.0.1");
    assert_string_equal(l[1].host, "");
    assert_string_equal(l[2].host, "");
    static const char *bad[] = {"",   ",",   "unix:",   "unix:/a,", ",unix:/a",           "h",
                                "h:", "h:x", "h:70000", "h:-1",     "a:1,b:2,c:3,d:4,e:5"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad); i++)
        if (sl_parse(bad[i], l, SL_MAX_LISTENERS) >= 0) fail_msg("accepted \"%s\"", bad[i]);
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
    close(s);
    return ntohs(a.sin_port);
}

static int cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len)
{
    (void)wsi, (void)reason, (void)user, (void)in, (void)len;
    return 0;
}

static struct lws_context *context(struct lws_context_creation_info *info, const struct lws_protocols *protocols)
{
    memset(info, 0, sizeof *info);
    info->protocols = protocols;
    info->gid = -1, info->uid = -1;
    info->options = LWS_SERVER_OPTION_EXPLICIT_VHOSTS | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
    return lws_create_context(info);
}

static const struct lws_protocols protocols[] = {{.name = "t", .callback = cb}, {.name = NULL}};

/* A test's listeners: a new folder holding a Unix socket s.sock (and, with t_sock, a second one t.sock
 * after the TCP entry), a TCP listener on a free loopback port, parsed into l and all opened on one
 * context c. */
typedef struct {
    char dir[40];
    int port, n;
    sl_listener l[SL_MAX_LISTENERS];
    struct lws_context_creation_info info;
    struct lws_context *c;
} listeners;

static void listeners_open(listeners *ls, bool t_sock)
{
    lws_set_log_level(0, NULL);
    snprintf(ls->dir, sizeof ls->dir, "/tmp/test_streamer_listen.XXXXXX");
    assert_non_null(mkdtemp(ls->dir));
    ls->port = free_port();
    char spec[600];
    int len = snprintf(spec, sizeof spec, "unix:%s/s.sock,127.0.0.1:%d", ls->dir, ls->port);
    if (t_sock) snprintf(spec + len, sizeof spec - (size_t)len, ",unix:%s/t.sock", ls->dir);
    ls->n = sl_parse(spec, ls->l, SL_MAX_LISTENERS);
    assert_int_equal(ls->n, t_sock ? 3 : 2);
    ls->c = context(&ls->info, protocols);
    assert_non_null(ls->c);
    assert_int_equal(sl_create_vhosts(ls->c, &ls->info, ls->l, ls->n), 0);
}

/* Destroys the context, removes what is left of the Unix sockets' files, then the folder. */
static void listeners_close(listeners *ls)
{
    lws_context_destroy(ls->c);
    for (int i = 0; i < ls->n; i++)
        if (ls->l[i].unix_sock) unlink(ls->l[i].host);
    rmdir(ls->dir);
}

static void test_tcp_listener_is_shared(void **state)
{
    (void)state;
    listeners ls = {0};
    listeners_open(&ls, false);
    sl_listener *l = ls.l;
    int port = ls.port;
    assert_int_equal(access(l[0].host, F_OK), 0); /* the Unix socket exists */

    struct lws_context_creation_info i2;
    struct lws_context *c2 = context(&i2, protocols);
    assert_non_null(c2);
    assert_int_equal(sl_create_vhosts(c2, &i2, &l[1], 1), 0); /* a second "streamer" on the same port */

    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    assert_int_equal(setsockopt(s, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one), 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    close(s);

    lws_context_destroy(c2);
    listeners_close(&ls);
}

static int connect_unix(const char *path)
{
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (connect(s, (struct sockaddr *)&a, sizeof a)) {
        int e = errno;
        close(s);
        errno = e;
        return -1;
    }
    return s;
}

static int connect_tcp(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {
        .sin_family = AF_INET, .sin_port = htons((uint16_t)port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int rc = connect(s, (struct sockaddr *)&a, sizeof a);
    int e = errno;
    close(s);
    errno = e;
    return rc;
}

static void test_close_listeners(void **state)
{
    (void)state;
    listeners ls = {0};
    listeners_open(&ls, true);
    sl_listener *l = ls.l;
    int port = ls.port, n = ls.n;
    assert_int_equal(connect_tcp(port), 0); /* queued on the TCP listener (then closed by its client) */
    for (int i = 0; i < n; i++)
        assert_true(l[i].fd >= 0);

    /* a connection waits in the first listener's queue (nothing serviced the context yet) */
    int queued = connect_unix(l[0].host);
    assert_true(queued >= 0);
    /* the second socket's path is taken over by someone else's file */
    assert_int_equal(unlink(l[2].host), 0);
    int f = open(l[2].host, O_CREAT | O_WRONLY, 0600);
    assert_true(f >= 0);
    close(f);

    assert_int_equal(sl_close_listeners(l, n), 2); /* the queued connections, adopted */
    for (int i = 0; i < n; i++)
        assert_int_equal(l[i].fd, -1);
    struct stat st;
    assert_int_equal(stat(l[0].host, &st), -1); /* its own file removed... */
    assert_int_equal(errno, ENOENT);
    assert_int_equal(connect_unix(l[0].host), -1);
    assert_int_equal(stat(l[2].host, &st), 0); /* ...another's kept */
    assert_true(S_ISREG(st.st_mode));
    /* the queued connection is open (lws holds it), not reset by the close */
    char b;
    assert_int_equal(recv(queued, &b, 1, MSG_DONTWAIT), -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    /* the TCP port: nobody listens any more (the other streamers of a shared port take its connections) */
    assert_int_equal(connect_tcp(port), -1);
    assert_int_equal(errno, ECONNREFUSED);

    close(queued);
    listeners_close(&ls);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_parse),
              cmocka_unit_test(test_tcp_listener_is_shared),
              cmocka_unit_test(test_close_listeners))
