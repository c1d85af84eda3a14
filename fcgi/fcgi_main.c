/* chat-fcgi: the FastCGI REST responder that lighttpd spawns (fastcgi.server bin-path, max-procs).
 *
 * One process serves one request at a time with the FCGX_* API (FCGX_Accept_r loop on the listening
 * socket lighttpd passes as fd 0; or on CHAT_FCGI_LISTEN, "path" or ":port", when run by hand or by
 * another process manager). Each process owns one fcgi_api: one chat pipeline with its own lazy
 * database connection, a JWT verifier and the /health cache. Concurrency comes from max-procs.
 *
 * A streamed answer (SSE: /v1/chat/completions with "stream": true, /api/v1/chat with Accept:
 * text/event-stream) is written while the pipeline runs, each event flushed to lighttpd with FCGX_FFlush
 * as it comes (lighttpd streams it on: server.stream-response-body); a failed write or flush means
 * lighttpd dropped the connection because its client went away, and fcgi_stream cancels the generation.
 *
 * SIGTERM (what lighttpd sends on shutdown) finishes the request in progress and those already queued
 * on the listening socket (lighttpd connected them before it stopped: they would be lost), then exits.
 * Spawned by lighttpd, SIGINT is ignored: lighttpd's graceful stop sends SIGINT to its whole process group,
 * and the responders must go on serving the requests queued to them until lighttpd sends SIGTERM.
 * SIGHUP makes the pipeline reload the agents' prompts and model settings before its next answer
 * (chat_agent_cfg.h), and reopens the log.
 * The log line per request holds method, path without query, status and duration; never a token,
 * a header value or message text. /health lines (and /health/live, /health/ready) are debug-level: they
 * come thousands per second, and fcgi_health logs the changes of state that matter. */
#include <curl/curl.h>
#include <fcgiapp.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_agent_cfg.h"
#include "chat_common.h"
#include "chat_config.h"
#include "chat_log.h"
#include "chat_metrics.h"
#include "chat_util.h"
#include "fcgi_api.h"

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1; /* a blocked accept returns (FCGI_FAIL_ACCEPT_ON_INTR); the loop then drains the backlog */
}

static const char *reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 411: return "Length Required";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    default: return status >= 500 ? "Internal Server Error" : "Error";
    }
}

static long read_stdin(void *ud, char *buf, size_t len)
{
    FCGX_Stream *in = ud;
    int n = FCGX_GetStr(buf, len > 65536 ? 65536 : (int)len, in);
    return n < 0 ? -1 : n;
}

/* A non-negative decimal parameter, -1 when absent or malformed. */
static long long param_count(const char *s)
{
    if (!s || !*s) return -1;
    char *end;
    long long v = strtoll(s, &end, 10);
    return (*end || v < 0) ? -1 : v;
}

static int redirect_status(const char *s)
{
    long long v = param_count(s);
    return v >= 100 && v <= 999 ? (int)v : 0;
}

/* Headers are formatted with snprintf: libfcgi's FCGX_FPrintF has its own printf that lacks %zu. */
static void write_response(FCGX_Request *r, const char *method, const fcgi_resp *resp)
{
    char head[768];
    int n = snprintf(head, sizeof head,
                     "Status: %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "%s%s%s"
                     "%s%s%s"
                     "%s%s%s"
                     "\r\n",
                     resp->status, reason(resp->status), resp->content_type[0] ? resp->content_type : "application/json",
                     resp->body.len, resp->allow[0] ? "Allow: " : "", resp->allow,
                     resp->allow[0] ? "\r\n" : "", resp->www_auth[0] ? "WWW-Authenticate: " : "", resp->www_auth,
                     resp->www_auth[0] ? "\r\n" : "", resp->retry_after[0] ? "Retry-After: " : "", resp->retry_after,
                     resp->retry_after[0] ? "\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof head) n = 0; /* cannot happen: every field above is bounded */
    FCGX_PutStr(head, n, r->out);
    if (strcmp(method, "HEAD") && resp->body.len) FCGX_PutStr(resp->body.data, (int)resp->body.len, r->out);
}

/* The streamed answer's writes: each one flushed, so the event leaves now. 0, or -1 once the stream has
 * failed (libfcgi keeps the error: every later write fails too). */
static int stream_write(void *ud, const char *data, size_t len)
{
    FCGX_Request *r = ud;
    if (len > INT_MAX || FCGX_PutStr(data, (int)len, r->out) != (int)len) return -1;
    return FCGX_FFlush(r->out) ? -1 : 0;
}

static int stream_head(void *ud, int status, const char *content_type)
{
    char head[320];
    int n = snprintf(head, sizeof head,
                     "Status: %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Cache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "X-Accel-Buffering: no\r\n"
                     "\r\n",
                     status, reason(status), content_type);
    if (n < 0 || (size_t)n >= sizeof head) return -1;
    return stream_write(ud, head, (size_t)n);
}

static bool is_health(const char *path)
{
    return !strcmp(path, "/health") || !strcmp(path, "/health/live") || !strcmp(path, "/health/ready");
}

/* Method for the log: letters only, bounded. */
static void log_method(const char *m, char *out, size_t cap)
{
    size_t i = 0;
    for (; m && m[i] && i + 1 < cap; i++)
        out[i] = (m[i] >= 'A' && m[i] <= 'Z') ? m[i] : '?';
    out[i] = '\0';
}

int main(void)
{
    chat_log_init("chat-fcgi", CHAT_LOG_INFO);
    int exit_code = 1;
    fcgi_api *api = NULL;
    fcgi_resp resp;
    fcgi_resp_init(&resp);

    chat_handle_stop_signals(on_term); /* accept() returns, so the loop can end */
    chat_agent_cfg_install_sighup();

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        chat_log_error("curl_global_init failed");
        return 1;
    }
    chat_config cfg;
    char err[512];
    if (chat_config_from_env(&cfg, err, sizeof err)) {
        chat_log_error("configuration: %s", err);
        goto cleanup;
    }
    if (chat_metrics_init(cfg.metrics_dir, "fcgi", err, sizeof err)) chat_log_warn("%s", err);
    api = fcgi_api_new(&cfg, err, sizeof err);
    if (!api) {
        chat_log_error("start-up: %s", err);
        goto cleanup;
    }
    if (FCGX_Init()) {
        chat_log_error("FCGX_Init failed");
        goto cleanup;
    }
    int listen_fd = 0; /* lighttpd's bin-path spawning hands us the listening socket as stdin */
    const char *listen_at = getenv("CHAT_FCGI_LISTEN");
    if (!listen_at || !*listen_at) signal(SIGINT, SIG_IGN);
    if (listen_at && *listen_at) {
        listen_fd = FCGX_OpenSocket(listen_at, 1024);
        if (listen_fd < 0) {
            chat_log_error("cannot listen on CHAT_FCGI_LISTEN");
            goto cleanup;
        }
    }
    FCGX_Request req;
    if (FCGX_InitRequest(&req, listen_fd, FCGI_FAIL_ACCEPT_ON_INTR)) {
        chat_log_error("FCGX_InitRequest failed");
        goto cleanup;
    }
    chat_log_info("ready (llm provider %s)", cfg.llm_provider);

    bool draining = false;
    for (;;) {
        if (stopping && !draining) {
            /* From now on accept only what is already queued: a non-blocking accept fails when none is. */
            draining = true;
            fcntl(listen_fd, F_SETFL, fcntl(listen_fd, F_GETFL) | O_NONBLOCK);
        }
        if (FCGX_Accept_r(&req) < 0) {
            if (stopping && !draining) continue;
            break;
        }
        int64_t t0 = chat_now_us();
        const char *method = FCGX_GetParam("REQUEST_METHOD", req.envp);
        const char *uri = FCGX_GetParam("REQUEST_URI", req.envp);
        if (!method) method = "";
        fcgi_req in = {
            .method = method,
            .uri = uri ? uri : "",
            .content_type = FCGX_GetParam("CONTENT_TYPE", req.envp),
            .content_length = param_count(FCGX_GetParam("CONTENT_LENGTH", req.envp)),
            .authorization = FCGX_GetParam("HTTP_AUTHORIZATION", req.envp),
            .idempotency_key = FCGX_GetParam("HTTP_IDEMPOTENCY_KEY", req.envp),
            .accept = FCGX_GetParam("HTTP_ACCEPT", req.envp),
            .redirect_status = redirect_status(FCGX_GetParam("REDIRECT_STATUS", req.envp)),
            .read_body = read_stdin,
            .body_ud = req.in,
            .stream = {.ud = &req, .head = stream_head, .write = stream_write},
        };
        int status = fcgi_api_handle(api, &in, &resp);
        char st[8];
        snprintf(st, sizeof st, "%d", status);
        chat_metric_inc(CHAT_METRIC_REST_REQUESTS, chat_metric_label(CHAT_METRIC_LABEL_STATUS, st), 1);
        if (!resp.streamed) write_response(&req, method, &resp);
        /* Copied before FCGX_Finish_r, which frees the parameters they point into. */
        char path[160], m[16];
        fcgi_api_log_path(in.uri, path, sizeof path);
        log_method(method, m, sizeof m);
        FCGX_Finish_r(&req);

        double ms = (double)(chat_now_us() - t0) / 1000.0;
        chat_log(is_health(path) ? CHAT_LOG_DEBUG : CHAT_LOG_INFO, "%s %s %d %.1fms", m, path, status, ms);
        /* Keep a big answer's buffer from living on between requests. */
        if (resp.body.cap > 256 * 1024) chat_buf_free(&resp.body);
    }
    exit_code = 0;
    chat_log_info("shutting down");

cleanup:
    fcgi_resp_clear(&resp);
    fcgi_api_free(api);
    chat_metrics_shutdown();
    curl_global_cleanup();
    return exit_code;
}
