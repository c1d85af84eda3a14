/* Process and network helpers for end-to-end tests (see e2eutil.h).
 *
 * Children are spawned with fork + execve so the environment is built explicitly (the test's own
 * environment with overrides), never by mutating the test's. Each child gets its own process group, so
 * stopping a supervisor with SIGKILL also reaches its workers. */
#include "e2eutil.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <json-c/json.h>

#include "testutil.h"

extern char **environ;

void e2e_curl_result(CURL *c, long *status, char *content_type, size_t len)
{
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, status);
    char *ct = NULL;
    curl_easy_getinfo(c, CURLINFO_CONTENT_TYPE, &ct);
    snprintf(content_type, len, "%s", ct ? ct : "");
}

static char *stack_secret(const char *var)
{
    const char *env = getenv("JWT_SECRET");
    if (env && *env) return strdup(env);
    char path[1100];
    snprintf(path, sizeof path, "%s/jwt-secret", var);
    size_t len = 0;
    char *secret = testutil_read_file(path, &len);
    while (secret && len && strchr(" \r\n\t", secret[len - 1]))
        secret[--len] = '\0';
    return secret;
}

int e2e_stack_open(e2e_stack *s, const char *prog)
{
    const char *port = getenv("CHAT_PORT"), *var = getenv("CHAT_VAR");
    if (!port || !*port) port = "8000";
    snprintf(s->base, sizeof s->base, "http://127.0.0.1:%s", port);
    snprintf(s->ws_base, sizeof s->ws_base, "ws://127.0.0.1:%s", port);
    snprintf(s->var, sizeof s->var, "%s", var && *var ? var : testutil_path("var/test"));
    s->secret = stack_secret(s->var);
    if (s->secret) return 0;
    fprintf(stderr, "%s: no JWT secret (JWT_SECRET or %s/jwt-secret): is the stack started?\n", prog, s->var);
    return -1;
}

void e2e_stack_close(e2e_stack *s)
{
    free(s->secret);
    s->secret = NULL;
}

chat_wsc *e2e_stack_ws(const e2e_stack *s, const char *token, struct json_object **auth, char *err, size_t errlen)
{
    char url[4096];
    snprintf(url, sizeof url, "%s/ws/chat?token=%s", s->ws_base, token);
    int http_status = 0;
    char why[256];
    chat_wsc *c = chat_wsc_connect(url, NULL, &http_status, why, sizeof why);
    if (!c) {
        snprintf(err, errlen, "%s (HTTP %d)", why, http_status);
        return NULL;
    }
    struct json_object *o = NULL;
    int rc = chat_wsc_recv_type(c, 5000, "auth_success", &o);
    if (rc) {
        snprintf(err, errlen, "no auth_success (%d)", rc);
        chat_wsc_close(c, 1000, NULL);
        return NULL;
    }
    if (auth)
        *auth = o;
    else
        json_object_put(o);
    return c;
}

long long e2e_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void e2e_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
    }
}

/* The name part of "NAME=value" or "NAME". */
static size_t name_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

static bool overridden(const char *kv, const char *const env[])
{
    size_t n = name_len(kv);
    for (size_t i = 0; env && env[i]; i++)
        if (name_len(env[i]) == n && !strncmp(env[i], kv, n)) return true;
    return false;
}

pid_t e2e_spawn(const char *const argv[], const char *const env[], const char *log_path)
{
    size_t n_env = 0, n_over = 0;
    while (environ[n_env])
        n_env++;
    while (env && env[n_over])
        n_over++;
    char **envp = calloc(n_env + n_over + 1, sizeof *envp);
    if (!envp) return -1;
    size_t k = 0;
    for (size_t i = 0; i < n_env; i++)
        if (!overridden(environ[i], env)) envp[k++] = environ[i];
    for (size_t i = 0; i < n_over; i++) {
        if (!strchr(env[i], '=')) continue; /* an unset */
        bool later = false;                 /* the last mention of a name wins */
        for (size_t j = i + 1; j < n_over && !later; j++)
            later = name_len(env[j]) == name_len(env[i]) && !strncmp(env[j], env[i], name_len(env[i]));
        if (!later) envp[k++] = (char *)env[i];
    }
    envp[k] = NULL;

    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        free(envp);
        return -1;
    }
    if (pid == 0) {
        setpgid(0, 0);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        int fd = open(log_path ? log_path : "/dev/null", O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            if (fd > 2) close(fd);
        }
        int devnull = open("/dev/null", O_RDONLY);
        if (devnull >= 0) {
            dup2(devnull, 0);
            if (devnull > 0) close(devnull);
        }
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGPIPE, SIG_DFL);
        execve(argv[0], (char *const *)argv, envp);
        _exit(127);
    }
    setpgid(pid, pid); /* also from the parent, so the group exists before we might signal it */
    free(envp);
    return pid;
}

int e2e_free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    int port = 0;
    if (!bind(fd, (struct sockaddr *)&a, sizeof a) && !getsockname(fd, (struct sockaddr *)&a, &len))
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

static int tcp_connect(const char *host, int port, int timeout_ms)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) {
        close(fd);
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        if (errno != EINPROGRESS) {
            close(fd);
            return -1;
        }
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int err = 0;
        socklen_t el = sizeof err;
        if (poll(&p, 1, timeout_ms) != 1 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) || err) {
            close(fd);
            return -1;
        }
    }
    return fd;
}

int e2e_wait_exit(pid_t pid, int timeout_ms, int *status)
{
    long long deadline = e2e_now_ms() + timeout_ms;
    for (;;) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid) {
            if (status) *status = st;
            return 0;
        }
        if (r < 0 && errno == ECHILD) {
            if (status) *status = 0;
            return 0;
        }
        if (e2e_now_ms() >= deadline) return -1;
        e2e_sleep_ms(10);
    }
}

int e2e_wait_port(const char *host, int port, int timeout_ms, pid_t pid)
{
    long long deadline = e2e_now_ms() + timeout_ms;
    for (;;) {
        int fd = tcp_connect(host, port, 200);
        if (fd >= 0) {
            close(fd);
            return 0;
        }
        if (pid > 0 && waitpid(pid, NULL, WNOHANG) == pid) return -1;
        if (e2e_now_ms() >= deadline) return -1;
        e2e_sleep_ms(20);
    }
}

int e2e_wait_path(const char *path, int timeout_ms)
{
    long long deadline = e2e_now_ms() + timeout_ms;
    struct stat st;
    while (stat(path, &st) != 0) {
        if (e2e_now_ms() >= deadline) return -1;
        e2e_sleep_ms(20);
    }
    return 0;
}

int e2e_stop(pid_t pid, int sig, int timeout_ms, int *status)
{
    if (pid <= 0) return 0;
    kill(pid, sig);
    if (e2e_wait_exit(pid, timeout_ms, status) == 0) return 0;
    kill(-pid, SIGKILL);
    kill(pid, SIGKILL);
    waitpid(pid, status, 0);
    return -1;
}

int e2e_children(pid_t parent, pid_t *out, int max)
{
    DIR *d = opendir("/proc");
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while (n < max && (de = readdir(d))) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0) continue;
        char path[64], buf[512];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        /* pid (comm) state ppid ...; comm may hold spaces and parentheses: parse after the last ')' */
        char *rp = strrchr(buf, ')');
        char state;
        long ppid;
        if (rp && sscanf(rp + 1, " %c %ld", &state, &ppid) == 2 && ppid == parent && state != 'Z')
            out[n++] = (pid_t)pid;
    }
    closedir(d);
    return n;
}

long e2e_rss_kb(pid_t pid)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long kb = -1;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, "VmRSS:", 6)) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

int e2e_http_get(const char *host, int port, const char *path, const char *extra_headers, char *body, size_t bodylen,
                 int timeout_ms)
{
    int fd = tcp_connect(host, port, timeout_ms);
    if (fd < 0) return -1;
    char req[2048];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n%s\r\n", path, host, port,
                     extra_headers ? extra_headers : "");
    if (n < 0 || (size_t)n >= sizeof req || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return -1;
    }
    size_t cap = 65536, len = 0;
    char *resp = malloc(cap);
    if (!resp) {
        close(fd);
        return -1;
    }
    long long deadline = e2e_now_ms() + timeout_ms;
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        long long left = deadline - e2e_now_ms();
        if (left <= 0 || poll(&p, 1, (int)left) != 1) break;
        ssize_t r = recv(fd, resp + len, cap - 1 - len, 0);
        if (r <= 0) break;
        len += (size_t)r;
        if (len == cap - 1) break;
        /* A response with Content-Length is complete once the body is in (the peer may keep it open). */
        resp[len] = '\0';
        char *hend = strstr(resp, "\r\n\r\n");
        const char *cl = hend ? strcasestr(resp, "\r\ncontent-length:") : NULL;
        if (hend && cl && cl < hend && len >= (size_t)(hend + 4 - resp) + strtoul(cl + 17, NULL, 10)) break;
    }
    close(fd);
    resp[len] = '\0';
    int status = -1;
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1) status = -1;
    if (body && bodylen) {
        char *b = strstr(resp, "\r\n\r\n");
        snprintf(body, bodylen, "%s", b ? b + 4 : "");
    }
    free(resp);
    return status;
}

const char *e2e_tmpdir(const char *prefix)
{
    static char path[PATH_MAX];
    snprintf(path, sizeof path, "/tmp/%s.XXXXXX", prefix);
    return mkdtemp(path);
}

void e2e_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* ---------------------------------------------------------------- the proxy */

#define PROXY_PAIRS 64

struct e2e_proxy {
    int listen_fd, wake[2];
    char target[108];
    atomic_bool up, quit;
    pthread_t thread;
    int pair[PROXY_PAIRS][2]; /* client, server; -1 when free */
};

static int unix_socket_at(const char *path, bool listening)
{
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    if (strlen(path) >= sizeof a.sun_path) return -1;
    strcpy(a.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    if (listening) unlink(path);
    int rc = listening ? bind(fd, (struct sockaddr *)&a, sizeof a) || listen(fd, 64)
                       : connect(fd, (struct sockaddr *)&a, sizeof a);
    if (rc) {
        close(fd);
        return -1;
    }
    return fd;
}

static void pair_close(e2e_proxy *p, int i)
{
    if (p->pair[i][0] < 0) return;
    close(p->pair[i][0]);
    close(p->pair[i][1]);
    p->pair[i][0] = p->pair[i][1] = -1;
}

/* A connection accepted: paired with a new one to the target while up, else closed at once. */
static void proxy_accept(e2e_proxy *p)
{
    int c = accept4(p->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (c < 0) return;
    int s = atomic_load(&p->up) ? unix_socket_at(p->target, false) : -1;
    for (int i = 0; s >= 0 && i < PROXY_PAIRS; i++)
        if (p->pair[i][0] < 0) {
            p->pair[i][0] = c, p->pair[i][1] = s;
            return;
        }
    close(c);
    if (s >= 0) close(s);
}

ssize_t e2e_pass(int from, int to, char *buf, size_t size)
{
    ssize_t n = read(from, buf, size);
    if (n <= 0) return n;
    for (ssize_t off = 0; off < n;) {
        ssize_t w = write(to, buf + off, (size_t)(n - off));
        if (w <= 0) return -1;
        off += w;
    }
    return n;
}

/* Moves what fd from has to its peer; false when the pair is over. */
static bool proxy_pass(int from, int to)
{
    char buf[65536];
    return e2e_pass(from, to, buf, sizeof buf) > 0;
}

static void *proxy_main(void *arg)
{
    e2e_proxy *p = arg;
    while (!atomic_load(&p->quit)) {
        struct pollfd fds[2 + 2 * PROXY_PAIRS];
        int at[2 + 2 * PROXY_PAIRS], n = 0;
        fds[n++] = (struct pollfd){.fd = p->wake[0], .events = POLLIN};
        fds[n++] = (struct pollfd){.fd = p->listen_fd, .events = POLLIN};
        for (int i = 0; i < PROXY_PAIRS; i++)
            for (int k = 0; p->pair[i][0] >= 0 && k < 2; k++)
                at[n] = i * 2 + k, fds[n++] = (struct pollfd){.fd = p->pair[i][k], .events = POLLIN};
        if (poll(fds, (nfds_t)n, 1000) <= 0) continue;
        if (fds[0].revents) {
            char b[16];
            if (read(p->wake[0], b, sizeof b) < 0) continue;
            for (int i = 0; !atomic_load(&p->up) && i < PROXY_PAIRS; i++) pair_close(p, i);
            continue; /* the pairs polled may be closed */
        }
        if (fds[1].revents) proxy_accept(p);
        for (int j = 2; j < n; j++) {
            int i = at[j] / 2, k = at[j] % 2;
            if (fds[j].revents && p->pair[i][0] >= 0 && !proxy_pass(p->pair[i][k], p->pair[i][1 - k])) pair_close(p, i);
        }
    }
    return NULL;
}

e2e_proxy *e2e_proxy_start(const char *path, const char *target)
{
    e2e_proxy *p = calloc(1, sizeof *p);
    if (!p || !target || strlen(target) >= sizeof p->target) {
        free(p);
        return NULL;
    }
    snprintf(p->target, sizeof p->target, "%s", target);
    for (int i = 0; i < PROXY_PAIRS; i++) p->pair[i][0] = p->pair[i][1] = -1;
    atomic_init(&p->up, true);
    atomic_init(&p->quit, false);
    p->listen_fd = unix_socket_at(path, true);
    if (p->listen_fd < 0 || pipe2(p->wake, O_CLOEXEC)) goto fail;
    if (pthread_create(&p->thread, NULL, proxy_main, p)) goto fail;
    return p;
fail:
    if (p->listen_fd >= 0) close(p->listen_fd);
    free(p);
    return NULL;
}

void e2e_proxy_set_up(e2e_proxy *p, bool up)
{
    atomic_store(&p->up, up);
    if (write(p->wake[1], "w", 1) < 0) return;
}

void e2e_proxy_stop(e2e_proxy *p)
{
    if (!p) return;
    atomic_store(&p->quit, true);
    e2e_proxy_set_up(p, false);
    pthread_join(p->thread, NULL);
    close(p->listen_fd);
    close(p->wake[0]);
    close(p->wake[1]);
    free(p);
}
