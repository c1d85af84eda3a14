/* The REST API of the FastCGI responder, independent of FastCGI itself.
 *
 * fcgi_main.c turns each FastCGI request into an fcgi_req and writes the fcgi_resp back; everything
 * between (routing, authentication, validation, the chat pipeline, status codes) lives here, so the
 * rules are in one place and could be driven by any transport.
 *
 * Routes:
 *   POST /api/v1/chat                     Bearer JWT, JSON {"message","session_id"?,"customer_id"?}; with
 *                                         Accept: text/event-stream the protocol's events as SSE (fcgi_stream.h)
 *   GET  /api/v1/sessions/{id}/messages   Bearer JWT, the session's owner only
 *   GET  /api/v1/demo-token               the demo token when CHAT_DEMO_TOKEN_FILE names a readable file
 *   POST /v1/chat/completions             Bearer JWT, OpenAI's request (chat_openai_api.h); "stream": true
 *                                         for chat.completion.chunk events
 *   GET  /v1/models, /v1/models/{id}      Bearer JWT, the one model (CHAT_OAI_MODEL)
 *   GET  /health, /health/ready           see fcgi_health.h
 *   GET  /health/live                     the process answers; no dependency is checked
 * Every error is JSON {"error","code"} (chat_proto_rest_error), under /v1/ OpenAI's {"error":{"message",
 * "type","param","code"}} (chat_oai_error), its status and code from the protocol's table
 * (CHAT_PROTO_ERRORS in chat_proto.h), including the errors lighttpd itself raises on these paths: its
 * server.error-handler re-enters here with REDIRECT_STATUS (and the original REQUEST_URI), which is
 * answered as that status in JSON. See docs/rest-api.md.
 *
 * Thread context: an fcgi_api is used by one thread (one FastCGI process = one request at a time). */
#ifndef FCGI_API_H
#define FCGI_API_H

#include <stdbool.h>
#include <stddef.h>

#include "chat_config.h"
#include "chat_util.h"
#include "fcgi_stream.h"

/* Default request body limit (CHAT_API_MAX_BODY_BYTES overrides). lighttpd's server.max-request-size
 * for /api/ is set above it, so an oversized body still gets this JSON 413 rather than lighttpd's page. */
#define FCGI_API_MAX_BODY_DEFAULT (64 * 1024)
/* The body limit of /v1/chat/completions: OpenAI's clients send the whole conversation every time.
 * lighttpd's server.max-request-size for /v1/ is set above it. */
#define FCGI_API_V1_MAX_BODY (1024 * 1024)
/* JSON nesting accepted in a request body: the body is flat, so anything deeper is hostile. */
#define FCGI_API_JSON_DEPTH 8

/* One request. Strings are borrowed from the caller for the duration of fcgi_api_handle. */
typedef struct fcgi_req {
    const char *method;          /* REQUEST_METHOD */
    const char *uri;             /* REQUEST_URI: raw path, query string included (never logged) */
    const char *content_type;    /* CONTENT_TYPE or NULL */
    long long content_length;    /* CONTENT_LENGTH, -1 when absent or malformed */
    const char *authorization;   /* HTTP_AUTHORIZATION or NULL */
    const char *idempotency_key; /* HTTP_IDEMPOTENCY_KEY or NULL: becomes the pipeline's request id */
    int redirect_status;         /* REDIRECT_STATUS: >= 400 when lighttpd's server.error-handler sent an
                                    error of its own here (e.g. its 413), else 0 */
    const char *accept;          /* HTTP_ACCEPT or NULL */
    /* Reads up to len body bytes; returns the count (0 at the end) or -1 on error. */
    long (*read_body)(void *ud, char *buf, size_t len);
    void *body_ud;
    /* Where a streamed answer goes (required for the streaming routes): the handler writes it while the
     * pipeline runs and sets resp->streamed. */
    fcgi_stream_out stream;
} fcgi_req;

/* The answer. body is JSON (or empty for HEAD, which the transport handles by not writing it). */
typedef struct fcgi_resp {
    int status;
    char allow[64];      /* Allow header value for 405, else empty */
    char www_auth[128];  /* WWW-Authenticate value for 401, else empty */
    char retry_after[8]; /* Retry-After value for 503, else empty */
    char content_type[48]; /* empty: application/json */
    bool openai;         /* errors in OpenAI's shape (the /v1/ routes) */
    bool streamed;       /* the answer went out through req->stream: the transport writes nothing more */
    chat_buf body;
} fcgi_resp;

void fcgi_resp_init(fcgi_resp *r);
void fcgi_resp_clear(fcgi_resp *r);

typedef struct fcgi_api fcgi_api;

/* Builds the pipeline (no database connection yet), the JWT verifier and the health checker from cfg.
 * NULL with err on a configuration error (e.g. no JWT secret): the process should then exit. */
fcgi_api *fcgi_api_new(const chat_config *cfg, char *err, size_t errlen);
void fcgi_api_free(fcgi_api *api);

/* Handles one request to its response (always fills resp, even on out-of-memory: a 500).
 * Returns resp->status. */
int fcgi_api_handle(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp);

/* The request path without its query, cut to cap bytes (for the access line in the log). */
void fcgi_api_log_path(const char *uri, char *out, size_t cap);

#endif
