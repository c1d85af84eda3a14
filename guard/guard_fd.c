/* /proc walks and pidfd_getfd for guard_fd.h. The descriptor links of /proc/PID/fd read
 * "socket:[INODE]" for sockets; nothing else of /proc is needed. */
#include "guard_fd.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "chat_common.h"

/* fd's link -> its socket inode, or 0 when it is not a socket. */
static uint64_t socket_inode(int dirfd, const char *name)
{
    char link[64];
    ssize_t len = readlinkat(dirfd, name, link, sizeof link - 1);
    if (len <= 0) return 0;
    link[len] = '\0';
    uint64_t inode = 0;
    return sscanf(link, "socket:[%" SCNu64 "]", &inode) == 1 ? inode : 0;
}

static bool listed(const uint64_t *inodes, size_t n, uint64_t inode)
{
    for (size_t i = 0; i < n; i++)
        if (inodes[i] == inode) return true;
    return false;
}

/* Calls found(fd number, ctx) for each descriptor of pid that is one of the n sockets inodes, until
 * found returns false. CHAT_ERR with errno set when pid's descriptors cannot be listed. */
static int each_socket_of(pid_t pid, const uint64_t *inodes, size_t n, bool (*found)(int fd, void *ctx), void *ctx)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return CHAT_ERR;
    for (struct dirent *e; (e = readdir(d));)
        if (e->d_name[0] != '.' && listed(inodes, n, socket_inode(dirfd(d), e->d_name)) && !found(atoi(e->d_name), ctx))
            break;
    closedir(d);
    return 0;
}

static bool stop_at_first(int fd, void *ctx)
{
    (void)fd;
    *(bool *)ctx = true;
    return false;
}

size_t guard_fd_holders(uint64_t inode, pid_t *pids, size_t max)
{
    size_t n = 0;
    DIR *proc = opendir("/proc");
    if (!proc) return 0;
    for (struct dirent *e; n < max && (e = readdir(proc));) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        bool holds = false;
        if (pid != getpid() && each_socket_of(pid, &inode, 1, stop_at_first, &holds) == 0 && holds) pids[n++] = pid;
    }
    closedir(proc);
    return n;
}

typedef struct shut_ctx {
    int pidfd;
    int shut;   /* sockets shut down */
    int denied; /* errno of the last refused pidfd_getfd, or 0 */
} shut_ctx;

static bool shut_one(int fd, void *ctx)
{
    shut_ctx *c = ctx;
    int dup = (int)syscall(SYS_pidfd_getfd, c->pidfd, fd, 0);
    if (dup < 0) {
        c->denied = errno;
        return true;
    }
    if (shutdown(dup, SHUT_RDWR) == 0) c->shut++;
    close(dup);
    return true;
}

int guard_fd_shutdown(pid_t pid, const uint64_t *inodes, size_t n, char *err, size_t errlen)
{
    shut_ctx c = {.pidfd = (int)syscall(SYS_pidfd_open, pid, 0)};
    if (c.pidfd < 0) return chat_fail(err, errlen, CHAT_ERR, "pidfd_open(%d): %s", (int)pid, strerror(errno));
    int rc = each_socket_of(pid, inodes, n, shut_one, &c);
    int listing_errno = errno;
    close(c.pidfd);
    if (rc) return chat_fail(err, errlen, CHAT_ERR, "/proc/%d/fd: %s", (int)pid, strerror(listing_errno));
    if (!c.shut && c.denied)
        return chat_fail(err, errlen, CHAT_ERR, "pidfd_getfd on process %d: %s (the guard needs ptrace access to it)",
                         (int)pid, strerror(c.denied));
    return c.shut;
}
