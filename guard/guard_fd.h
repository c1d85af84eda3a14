/* Closing a connection that another process (lighttpd) holds: find the processes holding a socket by
 * its inode (/proc/PID/fd), take a duplicate of the descriptor with pidfd_getfd(2) and shut the socket
 * down through it. shutdown(2) acts on the socket, not on the descriptor, so lighttpd sees the
 * connection end (a read of 0) and frees it the way it frees any closed connection; nothing of
 * lighttpd's state is touched from outside.
 *
 * Privilege: pidfd_getfd needs ptrace access to the holder (the same user, or CAP_SYS_PTRACE; with
 * Yama's ptrace_scope 1 only the latter), the reason deploy/systemd/chat-guard.service grants it. */
#ifndef GUARD_FD_H
#define GUARD_FD_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Writes to pids (room for max) the processes that hold a descriptor of the socket `inode` and returns
 * how many (0 when none). Processes it may not read are skipped. */
size_t guard_fd_holders(uint64_t inode, pid_t *pids, size_t max);

/* Shuts down every socket of process pid whose inode is in inodes (n of them, any order). Returns how
 * many were shut, or CHAT_ERR with err set when pid's descriptors cannot be reached at all (gone, or
 * no ptrace access: err says which). */
int guard_fd_shutdown(pid_t pid, const uint64_t *inodes, size_t n, char *err, size_t errlen);

#endif
