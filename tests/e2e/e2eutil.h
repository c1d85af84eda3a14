/* Helpers for end-to-end tests: spawning the project's programs with an environment of their own,
 * waiting for them to listen, signalling and reaping them, and small probes (free ports, RSS, a plain
 * HTTP GET, child processes, what a libcurl transfer answered), a proxy that makes a server unreachable
 * at will, and where the suite's stack listens (with its JWT secret).
 *
 * No cmocka dependency: functions return errors, callers assert. Children are started in their own
 * process group and, with PR_SET_PDEATHSIG, get SIGKILL if the test dies, so a failed test never leaves a
 * stack running. Not thread-safe (tests are single-threaded; the proxy's thread is its own). */
#ifndef E2EUTIL_H
#define E2EUTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include <curl/curl.h>

#include "wsclient.h"

/* Starts argv[0] (a path) with the test's environment changed by env: "NAME=value" sets, "NAME" alone
 * unsets, the last mention of a name wins; NULL-terminated, env may be NULL. stdout and stderr go to log_path
 * (appended; NULL = /dev/null). Returns the pid, or -1 with errno. */
pid_t e2e_spawn(const char *const argv[], const char *const env[], const char *log_path);

/* A TCP port on 127.0.0.1 that was free a moment ago. 0 on failure. */
int e2e_free_port(void);

/* Polls until host:port accepts a TCP connection: 0, or -1 after timeout_ms. A pid > 0 that exits
 * meanwhile ends the wait early with -1. */
int e2e_wait_port(const char *host, int port, int timeout_ms, pid_t pid);

/* Polls path until it exists: 0, or -1 after timeout_ms. */
int e2e_wait_path(const char *path, int timeout_ms);

/* Waits for pid to exit: 0 with *status (may be NULL) filled, or -1 after timeout_ms (still running). */
int e2e_wait_exit(pid_t pid, int timeout_ms, int *status);

/* Sends sig and waits up to timeout_ms; if still alive, SIGKILLs its process group and reaps it.
 * Returns 0 when it exited by itself within the timeout (status filled), -1 when it had to be killed.
 * pid <= 0 is ignored (returns 0). */
int e2e_stop(pid_t pid, int sig, int timeout_ms, int *status);

/* Direct children of parent (from /proc). Returns how many were written to out (at most max). */
int e2e_children(pid_t parent, pid_t *out, int max);

/* Resident set size of pid in KiB (VmRSS), -1 when unknown. */
long e2e_rss_kb(pid_t pid);

/* GET http://host:port/path with optional extra header lines ("Name: v\r\n"). Returns the HTTP status
 * (and the body, NUL-terminated and cut to bodylen-1, when body is not NULL), or -1. */
int e2e_http_get(const char *host, int port, const char *path, const char *extra_headers, char *body, size_t bodylen,
                 int timeout_ms);

/* After curl_easy_perform on c: the response's HTTP status, and its Content-Type cut to len-1 ("" when
 * it has none). */
void e2e_curl_result(CURL *c, long *status, char *content_type, size_t len);

/* A fresh directory /tmp/<prefix>.XXXXXX (static buffer valid until the next call), NULL on failure. */
const char *e2e_tmpdir(const char *prefix);
/* Removes the files in dir (not recursive) and dir itself. */
void e2e_rmdir(const char *dir);

/* A Unix-socket proxy on a thread of its own, to make a server unreachable for one client (a worker's
 * database): it listens at path and, while up, forwards each connection to the socket target; set down,
 * it cuts every connection and closes new ones as soon as they are accepted. Starts up; NULL on
 * failure. e2e_proxy_stop accepts NULL. */
typedef struct e2e_proxy e2e_proxy;
/* One read from fd from into buf (size bytes at most), written whole to fd to: the bytes moved (they
 * stay in buf), 0 at end of file, -1 on an error of either side. A proxy's step. */
ssize_t e2e_pass(int from, int to, char *buf, size_t size);
e2e_proxy *e2e_proxy_start(const char *path, const char *target);
void e2e_proxy_set_up(e2e_proxy *p, bool up);
void e2e_proxy_stop(e2e_proxy *p);

/* The stack tests/run.sh started, as the front-door tests reach it: the bases on CHAT_PORT (default
 * 8000), its folder CHAT_VAR (default var/test of the checkout) and its JWT secret, to mint tokens
 * (JWT_SECRET when set, else $var/jwt-secret without its trailing white space). */
typedef struct e2e_stack {
    char base[128];    /* http://127.0.0.1:PORT */
    char ws_base[128]; /* ws://127.0.0.1:PORT */
    char var[1024];
    char *secret; /* owned */
} e2e_stack;
/* Fills s: 0, or -1 with a line on stderr naming prog when there is no secret. e2e_stack_close frees
 * what it holds (either way). */
int e2e_stack_open(e2e_stack *s, const char *prog);
void e2e_stack_close(e2e_stack *s);
/* A WebSocket to the stack's /ws/chat with token in the query (the front door's way), its auth_success
 * read within 5 s (the frame in *auth when auth is not NULL, the caller puts it). NULL, with the reason
 * in err, when the upgrade fails or auth_success does not come. */
chat_wsc *e2e_stack_ws(const e2e_stack *s, const char *token, struct json_object **auth, char *err, size_t errlen);

/* Milliseconds since an arbitrary start (monotonic). */
long long e2e_now_ms(void);
void e2e_sleep_ms(int ms);

#endif
