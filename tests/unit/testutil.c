/* Test helpers that need no database. */
#include "testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chat_util.h"

const char *testutil_root(void)
{
    const char *r = getenv("CHAT_ROOT");
    return r && *r ? r : ".";
}

const char *testutil_path(const char *rel)
{
    static char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s/%s", testutil_root(), rel);
    return buf;
}

char *testutil_read_file(const char *path, size_t *len) { return chat_read_file(path, 0, len); }

int testutil_tsv_open(testutil_tsv *t, const char *rel)
{
    t->save = NULL;
    t->data = testutil_read_file(testutil_path(rel), NULL);
    return t->data ? 0 : -1;
}

int testutil_tsv_next(testutil_tsv *t, char **fields, int max)
{
    char *line;
    do {
        line = strtok_r(t->save ? NULL : t->data, "\n", &t->save);
        if (!line) return 0;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r') line[len - 1] = '\0';
    } while (!line[0] || line[0] == '#');
    int n = 0;
    fields[n++] = line;
    for (char *tab; n < max && (tab = strchr(fields[n - 1], '\t'));) *tab = '\0', fields[n++] = tab + 1;
    return n;
}

void testutil_tsv_close(testutil_tsv *t)
{
    free(t->data);
    t->data = t->save = NULL;
}

void testutil_tsv_score(const char *rel, const char *what, int n, bool (*check)(char **row, void *ud), void *ud,
                        int min_rows, int min_pct)
{
    testutil_tsv t;
    char *row[8];
    if (n < 1 || n > (int)(sizeof row / sizeof row[0])) fail_msg("testutil_tsv_score: %d fields", n);
    if (testutil_tsv_open(&t, rel)) fail_msg("cannot read %s", rel);
    int total = 0, good = 0;
    for (int got; (got = testutil_tsv_next(&t, row, n));) {
        if (got != n) fail_msg("%s: a row of %d fields, want %d: %.60s", rel, got, n, row[0]);
        total++;
        if (check(row, ud)) good++;
    }
    testutil_tsv_close(&t);
    print_message("%s: %d/%d\n", what, good, total);
    if (total < min_rows) fail_msg("%s: %d rows, want at least %d", rel, total, min_rows);
    if (good * 100 < total * min_pct) fail_msg("%s: %d/%d held, want %d %%", rel, good, total, min_pct);
}

pid_t testutil_fake_llm_start(int *port)
{
    const char *bin = testutil_path("build/bin/fake-llm");
    if (access(bin, X_OK)) {
        fprintf(stderr, "%s missing (make build/bin/fake-llm)\n", bin);
        return -1;
    }
    int fds[2];
    if (pipe(fds)) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return -1;
    }
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        close(fds[0]);
        close(fds[1]);
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, STDERR_FILENO);
        execl(bin, "fake-llm", "--port", "0", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[64] = "";
    size_t n = 0;
    int64_t deadline = chat_now_ms() + 5000;
    while (n < sizeof line - 1 && !memchr(line, '\n', n) && chat_now_ms() < deadline) {
        struct pollfd p = {fds[0], POLLIN, 0};
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t r = read(fds[0], line + n, sizeof line - 1 - n);
        if (r <= 0) break;
        n += (size_t)r;
        line[n] = '\0';
    }
    close(fds[0]);
    if (sscanf(line, "PORT %d", port) != 1 || *port <= 0) {
        fprintf(stderr, "fake-llm did not report its port\n");
        testutil_fake_llm_stop(pid);
        return -1;
    }
    return pid;
}

void testutil_fake_llm_stop(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}
