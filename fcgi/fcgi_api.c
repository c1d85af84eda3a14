/* REST routing and handlers of the FastCGI responder (see fcgi_api.h for the routes).
 *
 * Design choices:
 * - Checks run cheapest and most general first: route, method (405), authentication (401), content
 *   type (415), declared size (413, before reading a byte), then the body (400). A request that fails
 *   early costs neither a body read nor a database round trip.
 * - The chat runs the same chat_pipeline as the WebSocket workers, in-process, with a sink that keeps
 *   only the terminal event: REST has no use for progress or tokens, and `complete` carries the whole
 *   response, so nothing is accumulated per token.
 * - Client-facing messages are fixed strings or the pipeline's client-safe ones; database and LLM
 *   detail goes to the log only (never tokens or message text).
 * - The session id in /api/v1/sessions/{id}/messages is percent-decoded here (REQUEST_URI is raw) and
 *   then held to chat_id_valid, the same rule as everywhere else. */
#include "fcgi_api.h"

#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_log.h"
#include "chat_memory.h"
#include "chat_pipeline.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "fcgi_health.h"

#define DEMO_TOKEN_MAX 8192
#define BEARER_MAX 8192

struct fcgi_api {
    chat_config cfg;
    chat_pipeline *pipeline;
    chat_jwt_verifier *jwt;
    fcgi_health *health;
    size_t max_body;
    char demo_token_file[512];
};

void fcgi_resp_init(fcgi_resp *r)
{
    memset(r, 0, sizeof *r);
    chat_buf_init(&r->body);
}

void fcgi_resp_clear(fcgi_resp *r)
{
    if (!r) return;
    chat_buf_free(&r->body);
    memset(r, 0, sizeof *r);
    chat_buf_init(&r->body);
}

fcgi_api *fcgi_api_new(const chat_config *cfg, char *err, size_t errlen)
{
    fcgi_api *api = calloc(1, sizeof *api);
    if (!api) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    api->cfg = *cfg;
    api->max_body = FCGI_API_MAX_BODY_DEFAULT;
    const char *mb = getenv("CHAT_API_MAX_BODY_BYTES");
    if (mb && *mb) {
        char *end;
        errno = 0;
        long v = strtol(mb, &end, 10);
        if (errno || *end || v < 1024 || v > 16L * 1024 * 1024) {
            chat_fail(err, errlen, CHAT_EINVAL, "CHAT_API_MAX_BODY_BYTES must be an integer in [1024, 16777216]");
            goto fail;
        }
        api->max_body = (size_t)v;
    }
    const char *demo = getenv("CHAT_DEMO_TOKEN_FILE");
    if (demo && *demo) {
        if (strlen(demo) >= sizeof api->demo_token_file) {
            chat_fail(err, errlen, CHAT_EINVAL, "CHAT_DEMO_TOKEN_FILE is too long");
            goto fail;
        }
        snprintf(api->demo_token_file, sizeof api->demo_token_file, "%s", demo);
    }
    api->jwt = chat_jwt_verifier_new(cfg, err, errlen);
    if (!api->jwt) goto fail;
    api->pipeline = chat_pipeline_new(cfg, err, errlen);
    if (!api->pipeline) goto fail;
    api->health = fcgi_health_new(cfg);
    if (!api->health) {
        chat_fail(err, errlen, CHAT_ENOMEM, "cannot create the health checker");
        goto fail;
    }
    return api;
fail:
    fcgi_api_free(api);
    return NULL;
}

void fcgi_api_free(fcgi_api *api)
{
    if (!api) return;
    fcgi_health_free(api->health);
    chat_pipeline_free(api->pipeline);
    chat_jwt_verifier_free(api->jwt);
    free(api);
}

/* ---- small helpers ---- */

static size_t path_len(const char *uri)
{
    return strcspn(uri, "?#");
}

void fcgi_api_log_path(const char *uri, char *out, size_t cap)
{
    if (!cap) return;
    size_t n = uri ? path_len(uri) : 0;
    if (n >= cap) n = cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)uri[i];
        out[i] = (c < 0x20 || c >= 0x7f) ? '?' : (char)c;
    }
    out[n] = '\0';
}

static int set_error(fcgi_resp *resp, int status, const char *code, const char *message)
{
    resp->status = status;
    chat_buf_reset(&resp->body);
    char *json = chat_proto_rest_error(message, code);
    if (!json || chat_buf_puts(&resp->body, json)) {
        /* Out of memory: a fixed body still tells the client what happened. */
        chat_buf_reset(&resp->body);
        resp->status = 500;
        chat_buf_puts(&resp->body, "{\"error\":\"Internal error\",\"code\":\"PROCESSING_ERROR\"}");
    }
    free(json);
    return resp->status;
}

static int method_not_allowed(fcgi_resp *resp, const char *allow)
{
    snprintf(resp->allow, sizeof resp->allow, "%s", allow);
    return set_error(resp, 405, FCGI_CODE_METHOD_NOT_ALLOWED, "Method not allowed");
}

static int set_json(fcgi_resp *resp, int status, json_object *o)
{
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    chat_buf_reset(&resp->body);
    if (!text || chat_buf_puts(&resp->body, text))
        return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
    resp->status = status;
    return status;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Percent-decodes [s, s+n) into out (cap bytes). -1 on a bad escape, %00, or overflow. */
static int pct_decode(const char *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%') {
            if (i + 2 >= n) return -1;
            int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = (char)(hi * 16 + lo);
            if (!c) return -1;
            i += 2;
        }
        if (o + 1 >= cap) return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return 0;
}

static bool is_method(const fcgi_req *req, const char *m)
{
    return req->method && !strcmp(req->method, m);
}
static bool is_get(const fcgi_req *req)
{
    return is_method(req, "GET") || is_method(req, "HEAD");
}

/* ---- authentication ---- */

/* 0 and user filled, or the 401 is already in resp (returns 401). */
static int authenticate(fcgi_api *api, const fcgi_req *req, chat_user *user, fcgi_resp *resp)
{
    const char *h = req->authorization;
    while (h && (*h == ' ' || *h == '\t'))
        h++;
    if (!h || strncasecmp(h, "Bearer", 6) || (h[6] != ' ' && h[6] != '\t')) {
        snprintf(resp->www_auth, sizeof resp->www_auth, "Bearer realm=\"chat\"");
        return set_error(resp, 401, CHAT_CODE_AUTH_REQUIRED, "Authentication required");
    }
    const char *tok = h + 7;
    while (*tok == ' ' || *tok == '\t')
        tok++;
    size_t n = strlen(tok);
    while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    if (!n) {
        snprintf(resp->www_auth, sizeof resp->www_auth, "Bearer realm=\"chat\"");
        return set_error(resp, 401, CHAT_CODE_AUTH_REQUIRED, "Authentication required");
    }
    snprintf(resp->www_auth, sizeof resp->www_auth, "Bearer realm=\"chat\", error=\"invalid_token\"");
    if (n > BEARER_MAX) return set_error(resp, 401, FCGI_CODE_INVALID_TOKEN, "Invalid token");
    char *token = strndup(tok, n);
    if (!token) return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
    char msg[128] = "", detail[256] = "";
    int rc = chat_jwt_verify(api->jwt, token, time(NULL), user, msg, sizeof msg, detail, sizeof detail);
    free(token);
    if (rc == 0) {
        resp->www_auth[0] = '\0';
        return 0;
    }
    chat_log_info("auth refused: %s", detail[0] ? detail : chat_strerror(rc));
    if (rc == CHAT_EEXPIRED) return set_error(resp, 401, FCGI_CODE_TOKEN_EXPIRED, "Token expired");
    return set_error(resp, 401, FCGI_CODE_INVALID_TOKEN, "Invalid token");
}

/* ---- request body ---- */

/* "application/json", any case, optionally with parameters; a charset, if given, must be UTF-8. */
static bool content_type_ok(const char *ct)
{
    if (!ct) return false;
    while (*ct == ' ')
        ct++;
    static const char want[] = "application/json";
    if (strncasecmp(ct, want, sizeof want - 1)) return false;
    const char *p = ct + sizeof want - 1;
    while (*p == ' ' || *p == '\t')
        p++;
    if (!*p) return true;
    if (*p != ';') return false;
    const char *cs = chat_strcasestr(p, "charset=");
    if (!cs) return true;
    cs += 8;
    if (*cs == '"') cs++;
    return !strncasecmp(cs, "utf-8", 5) || !strncasecmp(cs, "utf8", 4);
}

/* Reads the body into b. 0, 413 (over max_body) or 400 (read error / short body). */
static int read_body(fcgi_api *api, const fcgi_req *req, chat_buf *b)
{
    char tmp[8192];
    for (;;) {
        if (!req->read_body) break;
        long n = req->read_body(req->body_ud, tmp, sizeof tmp);
        if (n < 0) return 400;
        if (n == 0) break;
        if (b->len + (size_t)n > api->max_body) return 413;
        if (chat_buf_append(b, tmp, (size_t)n)) return 500;
    }
    if (req->content_length >= 0 && (long long)b->len != req->content_length) return 400;
    return 0;
}

/* Optional string field: absent/null/"" -> *out NULL. -1 when present with another type. */
static int opt_string(json_object *root, const char *key, const char **out)
{
    json_object *v;
    *out = NULL;
    if (!json_object_object_get_ex(root, key, &v) || !v) return 0;
    if (!json_object_is_type(v, json_type_string)) return -1;
    const char *s = json_object_get_string(v);
    if ((size_t)json_object_get_string_len(v) != strlen(s)) return -1; /* embedded NUL */
    *out = *s ? s : NULL;
    return 0;
}

/* ---- the chat ---- */

typedef struct chat_result {
    bool completed;
    char *response;
    char session_id[CHAT_SESSION_ID_MAX + 1];
    char *metadata;
    char code[40];
    char message[256];
} chat_result;

static void sink_progress(void *ud, const char *step, const char *message)
{
    (void)ud, (void)step, (void)message;
}
static int sink_token(void *ud, const char *text, size_t len)
{
    (void)ud, (void)text, (void)len;
    return 0;
}

static void sink_complete(void *ud, const char *response, const char *session_id, const char *metadata_json)
{
    chat_result *r = ud;
    free(r->response);
    free(r->metadata);
    r->response = strdup(response ? response : "");
    r->metadata = strdup(metadata_json ? metadata_json : "{}");
    snprintf(r->session_id, sizeof r->session_id, "%s", session_id ? session_id : "");
    r->completed = r->response && r->metadata;
}

static void sink_error(void *ud, const char *code, const char *message)
{
    chat_result *r = ud;
    snprintf(r->code, sizeof r->code, "%s", code ? code : "");
    snprintf(r->message, sizeof r->message, "%s", message ? message : "");
}

static int chat_failed(fcgi_resp *resp, int rc, const chat_result *r)
{
    const char *code = r->code;
    if (rc == CHAT_EDB) {
        snprintf(resp->retry_after, sizeof resp->retry_after, "5");
        return set_error(resp, 503, FCGI_CODE_SERVICE_UNAVAILABLE, "Service temporarily unavailable");
    }
    if (rc == CHAT_EFORBIDDEN || !strcmp(code, CHAT_CODE_SESSION_FORBIDDEN))
        return set_error(resp, 403, code[0] ? code : CHAT_CODE_SESSION_FORBIDDEN,
                         r->message[0] ? r->message : "This session belongs to another user");
    if (rc == CHAT_EINVAL)
        return set_error(resp, 400, code[0] ? code : CHAT_CODE_INVALID_REQUEST,
                         r->message[0] ? r->message : "Invalid request");
    return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "An error occurred while processing your message");
}

static int handle_chat(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    if (!is_method(req, "POST")) return method_not_allowed(resp, "POST");
    chat_user user;
    if (authenticate(api, req, &user, resp)) return resp->status;
    if (!content_type_ok(req->content_type))
        return set_error(resp, 415, FCGI_CODE_UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    if (req->content_length > (long long)api->max_body)
        return set_error(resp, 413, FCGI_CODE_PAYLOAD_TOO_LARGE, "Request body too large");

    chat_buf body;
    chat_buf_init(&body);
    json_tokener *tok = NULL;
    json_object *root = NULL;
    chat_result result = {0};
    int status;

    int rc = read_body(api, req, &body);
    if (rc == 413) {
        status = set_error(resp, 413, FCGI_CODE_PAYLOAD_TOO_LARGE, "Request body too large");
        goto cleanup;
    }
    if (rc) {
        status = rc == 500 ? set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error")
                           : set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "Incomplete request body");
        goto cleanup;
    }
    tok = json_tokener_new_ex(FCGI_API_JSON_DEPTH);
    if (!tok) {
        status = set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
        goto cleanup;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    root = body.len ? json_tokener_parse_ex(tok, body.data, (int)body.len) : NULL;
    if (root) {
        size_t end = json_tokener_get_parse_end(tok);
        while (end < body.len && strchr(" \t\r\n", body.data[end]))
            end++;
        if (end != body.len) {
            json_object_put(root);
            root = NULL;
        }
    }
    if (!root || json_tokener_get_error(tok) != json_tokener_success) {
        status = set_error(resp, 400, CHAT_CODE_INVALID_JSON, "Invalid JSON");
        goto cleanup;
    }
    if (!json_object_is_type(root, json_type_object)) {
        status = set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "The request body must be a JSON object");
        goto cleanup;
    }

    json_object *jm;
    if (!json_object_object_get_ex(root, "message", &jm) || !jm) {
        status = set_error(resp, 400, CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty");
        goto cleanup;
    }
    if (!json_object_is_type(jm, json_type_string) ||
        (size_t)json_object_get_string_len(jm) != strlen(json_object_get_string(jm))) {
        status = set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "message must be a string");
        goto cleanup;
    }
    size_t mlen;
    const char *msg = chat_proto_trim(json_object_get_string(jm), strlen(json_object_get_string(jm)), &mlen);
    if (!chat_utf8_valid(msg, mlen)) { /* json-c lets overlongs and encoded surrogates through */
        status = set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "message must be valid UTF-8");
        goto cleanup;
    }
    if (!mlen) {
        status = set_error(resp, 400, CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty");
        goto cleanup;
    }
    if (mlen > (size_t)api->cfg.max_message_bytes) {
        status = set_error(resp, 400, CHAT_CODE_MESSAGE_TOO_LONG, "Message is too long");
        goto cleanup;
    }
    const char *sid, *cid;
    if (opt_string(root, "session_id", &sid) || (sid && !chat_id_valid(sid))) {
        status = set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "Invalid session_id");
        goto cleanup;
    }
    if (opt_string(root, "customer_id", &cid) || (cid && !chat_id_valid(cid))) {
        status = set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "Invalid customer_id");
        goto cleanup;
    }
    const char *request_id = NULL;
    if (req->idempotency_key && *req->idempotency_key) {
        if (!chat_id_valid(req->idempotency_key)) {
            status = set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "Invalid Idempotency-Key");
            goto cleanup;
        }
        request_id = req->idempotency_key;
    }

    char *text = strndup(msg, mlen);
    if (!text) {
        status = set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
        goto cleanup;
    }
    chat_request creq = {
        .message = text, .session_id = sid, .customer_id = cid, .user = &user, .request_id = request_id};
    chat_sink sink = {
        .ud = &result, .progress = sink_progress, .token = sink_token, .complete = sink_complete, .error = sink_error};
    rc = chat_pipeline_run(api->pipeline, &creq, &sink, NULL);
    free(text);
    if (rc == CHAT_EDB) fcgi_health_invalidate(api->health); /* /health should say so right away */
    if (rc || !result.completed) {
        if (!rc) rc = CHAT_ERR;
        chat_log_warn("chat failed: %s (%s)", chat_strerror(rc), result.code[0] ? result.code : "no code");
        status = chat_failed(resp, rc, &result);
        goto cleanup;
    }

    json_object *out = json_object_new_object();
    json_object *meta = json_tokener_parse(result.metadata);
    if (!out) {
        json_object_put(meta);
        status = set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
        goto cleanup;
    }
    json_object_object_add(out, "response", json_object_new_string(result.response));
    json_object_object_add(out, "session_id", json_object_new_string(result.session_id));
    json_object_object_add(out, "metadata", meta ? meta : json_object_new_object());
    status = set_json(resp, 200, out);
    json_object_put(out);

cleanup:
    free(result.response);
    free(result.metadata);
    json_object_put(root);
    if (tok) json_tokener_free(tok);
    chat_buf_free(&body);
    return status;
}

/* ---- history ---- */

static int handle_history(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp, const char *raw_id, size_t raw_len)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    chat_user user;
    if (authenticate(api, req, &user, resp)) return resp->status;
    char sid[CHAT_SESSION_ID_MAX + 1];
    if (pct_decode(raw_id, raw_len, sid, sizeof sid) || !chat_id_valid(sid))
        return set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "Invalid session id");
    char *json = NULL, err[256] = "";
    int rc = chat_memory_messages_json(chat_pipeline_db(api->pipeline), user.id, sid, &json, err, sizeof err);
    if (rc == 0 && json) {
        chat_buf_reset(&resp->body);
        int r = chat_buf_puts(&resp->body, json);
        free(json);
        if (r) return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
        resp->status = 200;
        return 200;
    }
    free(json);
    switch (rc) {
    case CHAT_ENOTFOUND: return set_error(resp, 404, FCGI_CODE_NOT_FOUND, "Session not found");
    case CHAT_EFORBIDDEN:
        return set_error(resp, 403, CHAT_CODE_SESSION_FORBIDDEN, "This session belongs to another user");
    case CHAT_EDB:
        chat_log_warn("history: %s", err);
        fcgi_health_invalidate(api->health);
        snprintf(resp->retry_after, sizeof resp->retry_after, "5");
        return set_error(resp, 503, FCGI_CODE_SERVICE_UNAVAILABLE, "Service temporarily unavailable");
    default:
        chat_log_error("history: %s", err[0] ? err : chat_strerror(rc));
        return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
    }
}

/* ---- demo token ---- */

static bool jwt_charset(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.'))
            return false;
    }
    return n > 0;
}

static int handle_demo_token(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    if (!api->demo_token_file[0]) return set_error(resp, 404, FCGI_CODE_NOT_FOUND, "Not found");
    int fd = open(api->demo_token_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return set_error(resp, 404, FCGI_CODE_NOT_FOUND, "Not found");
    char buf[DEMO_TOKEN_MAX + 1];
    size_t n = 0;
    for (;;) {
        ssize_t r = read(fd, buf + n, sizeof buf - 1 - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
        if (n == sizeof buf - 1) break;
    }
    close(fd);
    while (n && strchr(" \t\r\n", buf[n - 1]))
        n--;
    buf[n] = '\0';
    if (!jwt_charset(buf, n)) {
        chat_log_warn("demo token file does not hold a token");
        return set_error(resp, 404, FCGI_CODE_NOT_FOUND, "Not found");
    }
    json_object *o = json_object_new_object();
    if (!o) return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
    json_object_object_add(o, "token", json_object_new_string_len(buf, (int)n));
    int status = set_json(resp, 200, o);
    json_object_put(o);
    return status;
}

/* ---- health ---- */

static int handle_health(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    int st = fcgi_health_get(api->health, chat_pipeline_db(api->pipeline), &resp->body);
    if (st < 0) return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
    if (st == 503) snprintf(resp->retry_after, sizeof resp->retry_after, "5");
    resp->status = st;
    return st;
}

/* ---- lighttpd's own errors (server.error-handler) ---- */

static int handle_server_error(fcgi_resp *resp, int status)
{
    switch (status) {
    case 400: return set_error(resp, 400, CHAT_CODE_INVALID_REQUEST, "Bad request");
    case 403: return set_error(resp, 403, "FORBIDDEN", "Forbidden");
    case 404: return set_error(resp, 404, FCGI_CODE_NOT_FOUND, "Not found");
    case 405: return set_error(resp, 405, FCGI_CODE_METHOD_NOT_ALLOWED, "Method not allowed");
    case 408: return set_error(resp, 408, "REQUEST_TIMEOUT", "Request timeout");
    case 411: return set_error(resp, 411, "LENGTH_REQUIRED", "Length required");
    case 413: return set_error(resp, 413, FCGI_CODE_PAYLOAD_TOO_LARGE, "Request body too large");
    case 415: return set_error(resp, 415, FCGI_CODE_UNSUPPORTED_MEDIA_TYPE, "Unsupported media type");
    case 431: return set_error(resp, 431, CHAT_CODE_INVALID_REQUEST, "Request headers too large");
    case 501: return set_error(resp, 501, "NOT_IMPLEMENTED", "Not implemented");
    case 505: return set_error(resp, 505, "HTTP_VERSION_NOT_SUPPORTED", "HTTP version not supported");
    case 502:
    case 503:
    case 504:
        snprintf(resp->retry_after, sizeof resp->retry_after, "5");
        return set_error(resp, 503, FCGI_CODE_SERVICE_UNAVAILABLE, "Service temporarily unavailable");
    default:
        if (status >= 400 && status < 500) return set_error(resp, status, CHAT_CODE_INVALID_REQUEST, "Bad request");
        return set_error(resp, 500, CHAT_CODE_PROCESSING_ERROR, "Internal error");
    }
}

/* ---- routing ---- */

static bool path_is(const char *p, size_t n, const char *lit)
{
    return strlen(lit) == n && !memcmp(p, lit, n);
}

int fcgi_api_handle(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    resp->status = 0;
    resp->allow[0] = resp->www_auth[0] = resp->retry_after[0] = '\0';
    chat_buf_reset(&resp->body);
    if (req->redirect_status >= 400 && req->redirect_status <= 599)
        return handle_server_error(resp, req->redirect_status);
    const char *p = req->uri ? req->uri : "";
    size_t n = path_len(p);

    if (path_is(p, n, "/health")) return handle_health(api, req, resp);
    if (path_is(p, n, "/api/v1/chat")) return handle_chat(api, req, resp);
    if (path_is(p, n, "/api/v1/demo-token")) return handle_demo_token(api, req, resp);

    static const char pre[] = "/api/v1/sessions/", suf[] = "/messages";
    size_t lp = sizeof pre - 1, ls = sizeof suf - 1;
    if (n > lp + ls && !memcmp(p, pre, lp) && !memcmp(p + n - ls, suf, ls)) {
        const char *id = p + lp;
        size_t idlen = n - lp - ls;
        if (!memchr(id, '/', idlen)) return handle_history(api, req, resp, id, idlen);
    }
    return set_error(resp, 404, FCGI_CODE_NOT_FOUND, "Not found");
}
