/* Test helpers that need no database. */
#include "testutil.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <curl/curl.h>
#include <errno.h>
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <json-c/json.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chat_util.h"

void testutil_filter_from_env(void)
{
    const char *filter = getenv("CMOCKA_TEST_FILTER");
    if (filter && *filter) cmocka_set_test_filter(filter);
}

double testutil_metric(const char *text, const char *series)
{
    size_t n = strlen(series);
    for (const char *p = text; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
        if (!strncmp(p, series, n) && p[n] == ' ') return atof(p + n + 1);
    return -1;
}

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

int testutil_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    size_t n = strlen(text);
    bool ok = fwrite(text, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

/* Calls fn(dir, name, ud) for every entry of dir but . and ..; stops at a non-zero return, which it returns. */
static int each_file(const char *dir, int (*fn)(const char *dir, const char *name, void *ud), void *ud)
{
    DIR *d = opendir(dir);
    if (!d) return -1;
    int rc = 0;
    for (struct dirent *e; !rc && (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) rc = fn(dir, e->d_name, ud);
    closedir(d);
    return rc;
}

static int copy_one(const char *dir, const char *name, void *to)
{
    char from[PATH_MAX + 256], dst[PATH_MAX + 256];
    snprintf(from, sizeof from, "%s/%s", dir, name);
    snprintf(dst, sizeof dst, "%s/%s", (const char *)to, name);
    char *text = testutil_read_file(from, NULL);
    int rc = text ? testutil_write_file(dst, text) : -1;
    free(text);
    return rc;
}

const char *testutil_copy_dir(const char *rel, const char *prefix)
{
    static char dir[PATH_MAX];
    char src[PATH_MAX];
    snprintf(src, sizeof src, "%s", testutil_path(rel));
    snprintf(dir, sizeof dir, "/tmp/chat_test_%s.XXXXXX", prefix);
    if (!mkdtemp(dir)) return NULL;
    if (each_file(src, copy_one, dir)) {
        testutil_rmdir(dir);
        return NULL;
    }
    return dir;
}

static int remove_one(const char *dir, const char *name, void *ud)
{
    char p[PATH_MAX + 256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    unlink(p);
    return 0;
}

void testutil_rmdir(const char *dir)
{
    each_file(dir, remove_one, NULL);
    rmdir(dir);
}

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

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)st, (void)type, (void)ftw;
    return remove(path) && errno != ENOENT ? -1 : 0;
}

const char *testutil_fresh_dir(const char *name)
{
    static char dir[PATH_MAX];
    const char *var = getenv("CHAT_VAR");
    char parent[PATH_MAX - 128];
    if (var && *var)
        snprintf(parent, sizeof parent, "%.3900s/tmp", var);
    else
        snprintf(parent, sizeof parent, "%.3900s", testutil_path("build/tests/tmp"));
    snprintf(dir, sizeof dir, "%s/%.64s", parent, name);
    if (nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) && errno != ENOENT) fail_msg("cannot empty %s", dir);
    if ((mkdir(parent, 0700) && errno != EEXIST) || mkdir(dir, 0700)) fail_msg("cannot create %s", dir);
    return dir;
}

void testutil_fake_llm_stop(pid_t pid)
{
    if (pid <= 0) return;
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
}

static size_t collect_body(char *p, size_t size, size_t n, void *ud)
{
    return chat_buf_append(ud, p, size * n) ? 0 : size * n;
}

json_object *testutil_fake_llm_last(int port)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/debug/last", port);
    chat_buf b;
    chat_buf_init(&b);
    CURL *c = curl_easy_init();
    if (!c) return NULL;
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
    CURLcode rc = curl_easy_perform(c);
    curl_easy_cleanup(c);
    json_object *o = rc == CURLE_OK && b.data ? json_tokener_parse(b.data) : NULL;
    chat_buf_free(&b);
    return o;
}

long testutil_fake_llm_requests(int port)
{
    json_object *o = testutil_fake_llm_last(port), *v;
    long n = o && json_object_object_get_ex(o, "requests", &v) ? (long)json_object_get_int64(v) : -1;
    json_object_put(o);
    return n;
}
