/* The front door's connections as the kernel sees them: one NETLINK_SOCK_DIAG dump of the established
 * TCP sockets (IPv4 and IPv6) whose local port is the front door's, each with the byte counters of its
 * tcp_info. It reads no process's memory and needs no privilege: the kernel answers any user for the
 * sockets of its network namespace.
 *
 * Design choices:
 * - The port filter runs in the kernel (an inet_diag bytecode "source port equals"), so a host with
 *   100,000 connections elsewhere (the streamers' direct port) costs the dump nothing.
 * - Only counters are read, never data: what the client sent and what the server answered, in bytes,
 *   and how long ago the client last sent. guard_track.h decides from those. */
#ifndef GUARD_DIAG_H
#define GUARD_DIAG_H

#include <stddef.h>
#include <stdint.h>

typedef struct guard_sock {
    uint64_t inode;          /* the socket's inode: /proc/PID/fd/N links to "socket:[inode]" */
    uint64_t bytes_sent;     /* by the server on this connection (tcpi_bytes_sent) */
    uint64_t bytes_received; /* from the client (tcpi_bytes_received) */
    uint32_t last_recv_ms;   /* since the client last sent data (tcpi_last_data_recv) */
    char peer[64];           /* "address:port" of the client, for the log */
} guard_sock;

/* Which sockets guard_diag_list reports (a mask). */
enum { GUARD_DIAG_ESTABLISHED = 1 << 1, GUARD_DIAG_LISTEN = 1 << 10 }; /* 1 << the kernel's TCP state */

/* Lists the TCP sockets in the states of `states` with local port `port` into *out (malloc'd, the caller frees it;
 * NULL with *n = 0 when there are none). Returns 0, or CHAT_ERR with err set (netlink refused or the
 * reply was malformed); *out is NULL then. Any thread; blocking for the length of one dump. */
int guard_diag_list(uint16_t port, unsigned states, guard_sock **out, size_t *n, char *err, size_t errlen);

#endif
