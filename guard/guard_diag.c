/* NETLINK_SOCK_DIAG dump of the front door's established TCP sockets (see guard_diag.h). One request a
 * family, filtered in the kernel by source port; each reply message is an inet_diag_msg followed by its
 * attributes, of which only INET_DIAG_INFO (struct tcp_info) is read. */
#include "guard_diag.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/inet_diag.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/tcp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_util.h"

#define DIAG_RECV_BUF (64 * 1024)

/* The request: the dump header, then one bytecode attribute "source port == port". A bytecode op jumps
 * `yes` bytes when its test holds and `no` when not; landing exactly on the end accepts the socket,
 * one op past it rejects it (the kernel's inet_diag_bc_run). S_EQ carries its port in the next op. */
typedef struct diag_request {
    struct nlmsghdr nlh;
    struct inet_diag_req_v2 req;
    struct rtattr bytecode;
    struct inet_diag_bc_op ops[2];
} diag_request;

static void build_request(diag_request *r, int family, unsigned states, uint16_t port)
{
    memset(r, 0, sizeof *r);
    r->nlh.nlmsg_len = sizeof *r;
    r->nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    r->nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
    r->req.sdiag_family = (uint8_t)family;
    r->req.sdiag_protocol = IPPROTO_TCP;
    r->req.idiag_states = states;
    r->req.idiag_ext = 1u << (INET_DIAG_INFO - 1);
    r->bytecode.rta_type = INET_DIAG_REQ_BYTECODE;
    r->bytecode.rta_len = RTA_LENGTH(sizeof r->ops);
    r->ops[0] = (struct inet_diag_bc_op){
        .code = INET_DIAG_BC_S_EQ, .yes = sizeof r->ops, .no = sizeof r->ops + sizeof r->ops[0]};
    r->ops[1] = (struct inet_diag_bc_op){.no = port};
}

/* One reply message -> s: 0, or CHAT_EINVAL when it is too short to be one. Counters the message does not
 * carry (no tcp_info attribute) stay zero. */
static int parse_message(const struct nlmsghdr *h, guard_sock *s)
{
    if (h->nlmsg_len < NLMSG_LENGTH(sizeof(struct inet_diag_msg))) return CHAT_EINVAL;
    const struct inet_diag_msg *m = NLMSG_DATA(h);
    int attrlen = (int)(h->nlmsg_len - NLMSG_LENGTH(sizeof *m));
    memset(s, 0, sizeof *s);
    s->inode = m->idiag_inode;
    char addr[INET6_ADDRSTRLEN] = "?";
    inet_ntop(m->idiag_family, m->id.idiag_dst, addr, sizeof addr);
    snprintf(s->peer, sizeof s->peer, m->idiag_family == AF_INET6 ? "[%s]:%u" : "%s:%u", addr,
             ntohs(m->id.idiag_dport));
    for (const struct rtattr *a = (const struct rtattr *)(m + 1); RTA_OK(a, attrlen); a = RTA_NEXT(a, attrlen)) {
        if (a->rta_type != INET_DIAG_INFO) continue;
        /* An older kernel sends a shorter tcp_info: what it lacks stays zero. */
        struct tcp_info ti;
        memset(&ti, 0, sizeof ti);
        size_t len = RTA_PAYLOAD(a) < sizeof ti ? RTA_PAYLOAD(a) : sizeof ti;
        memcpy(&ti, RTA_DATA(a), len);
        bool has_sent = len >= offsetof(struct tcp_info, tcpi_bytes_sent) + sizeof ti.tcpi_bytes_sent;
        s->bytes_sent = has_sent ? ti.tcpi_bytes_sent : ti.tcpi_bytes_acked;
        s->bytes_received = ti.tcpi_bytes_received;
        s->last_recv_ms = ti.tcpi_last_data_recv;
        break;
    }
    return 0;
}

/* Appends every socket of one family's dump to *out. */
static int dump_family(int fd, int family, unsigned states, uint16_t port, guard_sock **out, size_t *n, size_t *cap,
                       char *err, size_t errlen)
{
    diag_request r;
    build_request(&r, family, states, port);
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(fd, &r, sizeof r, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        return chat_fail(err, errlen, CHAT_ERR, "sock_diag request: %s", strerror(errno));
    char buf[DIAG_RECV_BUF] __attribute__((aligned(NLMSG_ALIGNTO)));
    for (;;) {
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got <= 0) return chat_fail(err, errlen, CHAT_ERR, "sock_diag reply: %s", got ? strerror(errno) : "EOF");
        int left = (int)got;
        for (const struct nlmsghdr *h = (const struct nlmsghdr *)buf; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
            if (h->nlmsg_type == NLMSG_DONE) return 0;
            if (h->nlmsg_type == NLMSG_ERROR) {
                const struct nlmsgerr *e = NLMSG_DATA(h);
                /* no IPv6 in this kernel: nothing to list for that family */
                if (family == AF_INET6 && e->error == -EAFNOSUPPORT) return 0;
                return chat_fail(err, errlen, CHAT_ERR, "sock_diag: %s", strerror(-e->error));
            }
            if (chat_array_reserve(out, cap, *n, sizeof **out))
                return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
            if (parse_message(h, &(*out)[*n]) == 0) (*n)++;
        }
    }
}

int guard_diag_list(uint16_t port, unsigned states, guard_sock **out, size_t *n, char *err, size_t errlen)
{
    *out = NULL;
    *n = 0;
    size_t cap = 0;
    int fd = socket(AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    if (fd < 0) return chat_fail(err, errlen, CHAT_ERR, "netlink socket: %s", strerror(errno));
    int rc = dump_family(fd, AF_INET, states, port, out, n, &cap, err, errlen);
    if (rc == 0) rc = dump_family(fd, AF_INET6, states, port, out, n, &cap, err, errlen);
    close(fd);
    if (rc) {
        free(*out);
        *out = NULL;
        *n = 0;
    }
    return rc;
}
