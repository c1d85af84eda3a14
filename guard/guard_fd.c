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

static bool holds(pid_t pid, uint64_t inode)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (!d) return false;
    bool found = false;
    for (struct dirent *e; !found && (e = readdir(d));)
        found = e->d_name[0] != '.' && socket_inode(dirfd(d), e->d_name) == inode;
    closedir(d);
    return found;
}

int guard_fd_holders(uint64_t inode, pid_t *pids, size_t max, size_t *n)
{
    *n = 0;
    DIR *proc = opendir("/proc");
    if (!proc) return 0;
    for (struct dirent *e; *n < max && (e = readdir(proc));) {
        if (!isdigit((unsigned char)e->d_name[0])) continue;
        pid_t pid = (pid_t)atoi(e->d_name);
        if (pid != getpid() && holds(pid, inode)) pids[(*n)++] = pid;
    }
    closedir(proc);
    return 0;
}

static bool listed(const uint64_t *inodes, size_t n, uint64_t inode)
{
    for (size_t i = 0; i < n; i++)
        if (inodes[i] == inode) return true;
    return false;
}

int guard_fd_shutdown(pid_t pid, const uint64_t *inodes, size_t n, char *err, size_t errlen)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/fd", (int)pid);
    int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0) return chat_fail(err, errlen, CHAT_ERR, "pidfd_open(%d): %s", (int)pid, strerror(errno));
    DIR *d = opendir(path);
    if (!d) {
        int e = errno;
        close(pidfd);
        return chat_fail(err, errlen, CHAT_ERR, "%s: %s", path, strerror(e));
    }
    int shut = 0, denied = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.' || !listed(inodes, n, socket_inode(dirfd(d), e->d_name))) continue;
        int dup = (int)syscall(SYS_pidfd_getfd, pidfd, atoi(e->d_name), 0);
        if (dup < 0) {
            denied = errno;
            continue;
        }
        if (shutdown(dup, SHUT_RDWR) == 0) shut++;
        close(dup);
    }
    closedir(d);
    close(pidfd);
    if (!shut && denied)
        return chat_fail(err, errlen, CHAT_ERR, "pidfd_getfd on process %d: %s (the guard needs ptrace access to it)",
                         (int)pid, strerror(denied));
    return shut;
}
