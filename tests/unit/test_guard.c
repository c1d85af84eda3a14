/* Unit tests of chat-guard's modules (guard/): the trickling-request rule of guard_track on made-up
 * counters, one connection's life a poll a second (table-driven), and the kernel side on real loopback
 * sockets: guard_diag lists a connection with its byte counters, guard_fd finds the process holding a
 * socket and shuts a connection down so that its client sees the end. (tests/ops/slowloris.sh runs the
 * program itself against lighttpd.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "guard_diag.h"
#include "guard_fd.h"
#include "guard_track.h"
#include "testutil.h"

#define TIMEOUT_MS 6000
#define POLLS 21 /* t = 0, 1, ..., 20 s */

/* One connection seen at each poll: what the server has sent by then, and when the client last sent. */
typedef struct poll_case {
    const char *name;
    uint64_t (*sent)(int t_s);    /* the server's byte count at t */
    int (*last_recv_at)(int t_s); /* the client's last data, in ms since the connection (<= t) */
    int named_at;                 /* the poll (second) it is closed at, -1 for never */
} poll_case;

static uint64_t never_answered(int t)
{
    (void)t;
    return 0;
}
static uint64_t answered_at_3(int t)
{
    return t >= 3 ? 500 : 0;
}
static uint64_t ping_every_10(int t)
{
    return 129 + (uint64_t)(t / 10) * 6;
} /* the 101, then a ping each 10 s */
static uint64_t answered_at_9(int t)
{
    return t >= 9 ? 900 : 0;
}
static int every_second(int t)
{
    return t * 1000;
}
static int only_at_start(int t)
{
    (void)t;
    return 0;
}
static int until_1s(int t)
{
    return t >= 1 ? 900 : t * 1000;
}
static int pong_after_ping(int t)
{
    return (t / 10) * 10000 + 10;
}

static const poll_case POLL_CASES[] = {
    {"a head trickled a byte a second: closed once, at the bound", never_answered, every_second, 6},
    {"a request sent whole, then a slow answer: never", answered_at_9, only_at_start, -1},
    {"caught mid-send at the first poll, then waiting: never", never_answered, until_1s, -1},
    {"answered, then the next request trickles (keep-alive): its own bound", answered_at_3, every_second, 9},
    {"a WebSocket with the server's pings and the client's pongs: never", ping_every_10, pong_after_ping, -1},
};

static void test_track_table(void **state)
{
    (void)state;
    for (size_t c = 0; c < sizeof POLL_CASES / sizeof POLL_CASES[0]; c++) {
        const poll_case *pc = &POLL_CASES[c];
        guard_track *t = guard_track_new(TIMEOUT_MS);
        assert_non_null(t);
        int named = 0, first = -1;
        for (int s = 0; s < POLLS; s++) {
            int64_t now = 1000000 + (int64_t)s * 1000;
            guard_sock sock = {.inode = 42, .bytes_sent = pc->sent(s), .bytes_received = 100 + (uint64_t)s};
            sock.last_recv_ms = (uint32_t)(s * 1000 - pc->last_recv_at(s));
            size_t victims[1];
            int nv = guard_track_update(t, &sock, 1, now, victims);
            assert_true(nv == 0 || nv == 1);
            if (nv == 1 && first < 0) first = s;
            named += nv;
        }
        if (first != pc->named_at || named != (pc->named_at < 0 ? 0 : 1))
            fail_msg("%s: named at %d (%d times), want %d", pc->name, first, named, pc->named_at);
        guard_track_free(t);
    }
}

/* Many connections at once, in any order: only the trickling ones are named, by their index; a
 * connection gone is forgotten, and the same inode seen again later starts a new window. */
static void test_track_many(void **state)
{
    (void)state;
    guard_track *t = guard_track_new(TIMEOUT_MS);
    assert_non_null(t);
    guard_sock socks[3] = {{.inode = 30}, {.inode = 10}, {.inode = 20}};
    size_t victims[3];
    for (int s = 0; s <= 6; s++) {
        for (int i = 0; i < 3; i++)
            socks[i].last_recv_ms = i == 1 ? (uint32_t)s * 1000 : 0; /* 10 is quiet */
        int nv = guard_track_update(t, socks, 3, (int64_t)s * 1000, victims);
        assert_int_equal(nv, s < 6 ? 0 : 2);
    }
    assert_true((victims[0] == 0 && victims[1] == 2) || (victims[0] == 2 && victims[1] == 0));
    assert_int_equal(guard_track_count(t), 3);
    assert_int_equal(guard_track_update(t, &socks[1], 1, 7000, victims), 0); /* 30 and 20 are gone */
    assert_int_equal(guard_track_count(t), 1);
    socks[0].last_recv_ms = 0;
    assert_int_equal(guard_track_update(t, &socks[0], 1, 8000, victims), 0); /* 30 again: a new window */
    guard_track_free(t);
    guard_track_free(NULL);
}

/* A listening socket on a free loopback port; *port gets it. */
static int listen_loopback(uint16_t *port)
{
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(l >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(l, (struct sockaddr *)&a, sizeof a), 0);
    assert_int_equal(listen(l, 4), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(l, (struct sockaddr *)&a, &len), 0);
    *port = ntohs(a.sin_port);
    return l;
}

static int connect_loopback(uint16_t port)
{
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(c, (struct sockaddr *)&a, sizeof a), 0);
    return c;
}

static uint64_t inode_of(int fd)
{
    struct stat st;
    assert_int_equal(fstat(fd, &st), 0);
    return (uint64_t)st.st_ino;
}

/* A loopback connection: *l the listener (on *port), *c the client's side, *s the server's. */
static void connect_pair(uint16_t *port, int *l, int *c, int *s)
{
    *l = listen_loopback(port);
    *c = connect_loopback(*port);
    *s = accept(*l, NULL, NULL);
    assert_true(*s >= 0);
}

/* The kernel lists the server side of a connection on the port, with what each side sent; the
 * client's own socket (another local port) and the listener are not in an ESTABLISHED list. */
static void test_diag_lists_counters(void **state)
{
    (void)state;
    uint16_t port;
    int l, c, s;
    connect_pair(&port, &l, &c, &s);
    assert_int_equal(write(c, "GET / HTT", 9), 9);
    assert_int_equal(write(s, "ab", 2), 2);
    usleep(50 * 1000);
    guard_sock *list = NULL;
    size_t n = 0;
    char err[256];
    assert_int_equal(guard_diag_list(port, GUARD_DIAG_ESTABLISHED, &list, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].inode, inode_of(s));
    assert_int_equal(list[0].bytes_received, 9);
    assert_int_equal(list[0].bytes_sent, 2);
    assert_true(list[0].last_recv_ms < 5000);
    assert_non_null(strstr(list[0].peer, "127.0.0.1:"));
    free(list);
    assert_int_equal(guard_diag_list(port, GUARD_DIAG_LISTEN, &list, &n, err, sizeof err), 0);
    assert_int_equal(n, 1);
    assert_int_equal(list[0].inode, inode_of(l));
    free(list);
    close(c);
    close(s);
    close(l);
    assert_int_equal(guard_diag_list(port, GUARD_DIAG_LISTEN, &list, &n, err, sizeof err), 0);
    assert_int_equal(n, 0);
    assert_null(list);
}

/* A child holds the accepted connection (as lighttpd would): guard_fd finds the child by the listener
 * it inherited, shuts the connection down through it, and the client reads the end. */
static void test_fd_shuts_another_process_socket(void **state)
{
    (void)state;
    uint16_t port;
    int l, c, s;
    connect_pair(&port, &l, &c, &s);
    uint64_t victim = inode_of(s);
    pid_t kid = fork();
    if (kid == 0) {
        pause(); /* holds l and s until killed */
        _exit(0);
    }
    close(s); /* only the child holds the connection now */
    pid_t pids[4];
    size_t n = 0;
    for (int i = 0; i < 100 && n == 0; i++, usleep(10 * 1000))
        n = guard_fd_holders(inode_of(l), pids, 4);
    assert_int_equal(n, 1); /* the child: this process, which holds it too, is never listed */
    assert_int_equal(pids[0], kid);
    char err[256];
    assert_int_equal(guard_fd_shutdown(kid, &victim, 1, err, sizeof err), 1);
    char b;
    struct timeval tv = {2, 0};
    setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    assert_int_equal(read(c, &b, 1), 0); /* the end, not a timeout */
    kill(kid, SIGKILL);
    waitpid(kid, NULL, 0);
    assert_true(guard_fd_shutdown(kid, &victim, 1, err, sizeof err) < 0); /* gone: an error that says so */
    assert_true(err[0] != '\0');
    close(c);
    close(l);
}

TESTUTIL_MAIN(NULL, NULL, cmocka_unit_test(test_track_table), cmocka_unit_test(test_track_many),
              cmocka_unit_test(test_diag_lists_counters), cmocka_unit_test(test_fd_shuts_another_process_socket))
