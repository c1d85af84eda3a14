/* REST routing and handlers of the FastCGI responder (see fcgi_api.h for the routes).
 *
 * Design choices:
 * - Checks run cheapest and most general first: route, method (405), authentication (401), content
 *   type (415), declared size (413, before reading a byte), then the body (400). A request that fails
 *   early costs neither a body read nor a database round trip.
 * - The chat runs the same chat_pipeline as the WebSocket workers, in-process. A whole answer's sink
 *   keeps only the terminal event (`complete` carries the whole response, so nothing is accumulated per
 *   token); a streamed answer's sink (fcgi_stream) writes each event as it comes.
 * - The OpenAI-compatible routes (/v1/) are the same checks and the same pipeline: only the wire format
 *   (chat_openai_api) and the error shape (resp->openai) differ.
 * - The chat body's message is checked by chat_proto_message_fields, the WebSocket parser's own checks,
 *   so REST and WebSocket refuse a message with the same code and words. Every error's status and code
 *   come from the protocol's table (CHAT_PROTO_ERRORS); only lighttpd's own errors keep their status.
 * - Client-facing messages are fixed strings or the pipeline's client-safe ones; database and LLM
 *   detail goes to the log only (never tokens or message text).
 * - Each responder has a spool of its own (chat_spool.h) for the turns the database cannot take: such an
 *   answer is still a 200, its metadata saying "stored": false; a turn neither stored nor spooled is a
 *   503 NOT_STORED with Retry-After, like the database's other failures.
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
#include "chat_kb.h"
#include "chat_log.h"
#include "chat_memory.h"
#include "chat_metrics.h"
#include "chat_openai_api.h"
#include "chat_pipeline.h"
#include "chat_proto.h"
#include "chat_spool.h"
#include "chat_util.h"
#include "fcgi_health.h"

#define DEMO_TOKEN_MAX 8192
#define BEARER_MAX 8192

struct fcgi_api {
    chat_config cfg;
    chat_pipeline *pipeline;
    chat_spool *spool; /* this process's turns the database could not take, or NULL */
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
    chat_kb_fulltext_warn(chat_pipeline_db(api->pipeline), "fcgi");
    /* without a spool the responder still serves: a turn the database cannot take then ends NOT_STORED */
    char serr[256];
    if (chat_spool_open(cfg, "fcgi", true, &api->spool, serr, sizeof serr))
        chat_log_error("no spool for turns the database cannot take: %s", serr);
    if (api->spool) chat_pipeline_use_spool(api->pipeline, api->spool);
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
    chat_spool_free(api->spool);
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

/* The error answer with an explicit status: lighttpd's own errors keep theirs. message NULL: the code's
 * default message. param: the request field at fault, said in OpenAI's shape only (may be NULL). */
static int set_error_full(fcgi_resp *resp, int status, chat_proto_code code, const char *message, const char *param)
{
    chat_metric_inc(CHAT_METRIC_ERRORS, chat_metric_label(CHAT_METRIC_LABEL_CODE, chat_proto_code_name(code)), 1);
    resp->status = status;
    chat_buf_reset(&resp->body);
    if (!message) message = chat_proto_code_message(code);
    char *json = resp->openai ? chat_oai_error(code, message, param)
                              : chat_proto_rest_error(message, chat_proto_code_name(code));
    if (!json || chat_buf_puts(&resp->body, json)) {
        /* Out of memory: a fixed body still tells the client what happened. */
        chat_buf_reset(&resp->body);
        resp->status = 500;
        chat_buf_puts(&resp->body, resp->openai ? chat_oai_error_oom : chat_proto_rest_error_oom);
    }
    free(json);
    return resp->status;
}

static int set_error_status(fcgi_resp *resp, int status, chat_proto_code code, const char *message)
{
    return set_error_full(resp, status, code, message, NULL);
}

/* The error answer for code, with the status the protocol's table gives it. */
static int set_error(fcgi_resp *resp, chat_proto_code code, const char *message)
{
    return set_error_status(resp, chat_proto_code_status(code), code, message);
}

static int method_not_allowed(fcgi_resp *resp, const char *allow)
{
    snprintf(resp->allow, sizeof resp->allow, "%s", allow);
    return set_error(resp, CHAT_PROTO_METHOD_NOT_ALLOWED, NULL);
}

/* The answer status with the JSON text as its body. Takes text; NULL (out of memory) gives a 500. */
static int set_body(fcgi_resp *resp, int status, char *text)
{
    chat_buf_reset(&resp->body);
    int failed = !text || chat_buf_puts(&resp->body, text);
    free(text);
    if (failed) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    resp->status = status;
    return status;
}

static int set_json(fcgi_resp *resp, int status, json_object *o)
{
    const char *text = json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    return set_body(resp, status, text ? strdup(text) : NULL);
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
        return set_error(resp, CHAT_PROTO_AUTH_REQUIRED, NULL);
    }
    const char *tok = h + 7;
    while (*tok == ' ' || *tok == '\t')
        tok++;
    size_t n = strlen(tok);
    while (n && (tok[n - 1] == ' ' || tok[n - 1] == '\t'))
        n--;
    if (!n) {
        snprintf(resp->www_auth, sizeof resp->www_auth, "Bearer realm=\"chat\"");
        return set_error(resp, CHAT_PROTO_AUTH_REQUIRED, NULL);
    }
    snprintf(resp->www_auth, sizeof resp->www_auth, "Bearer realm=\"chat\", error=\"invalid_token\"");
    if (n > BEARER_MAX) return set_error(resp, CHAT_PROTO_INVALID_TOKEN, NULL);
    char *token = strndup(tok, n);
    if (!token) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    char msg[128] = "", detail[256] = "";
    int rc = chat_jwt_verify(api->jwt, token, time(NULL), user, msg, sizeof msg, detail, sizeof detail);
    free(token);
    if (rc == 0) {
        resp->www_auth[0] = '\0';
        return 0;
    }
    chat_log_info("auth refused: %s", detail[0] ? detail : chat_strerror(rc));
    if (rc == CHAT_EEXPIRED) return set_error(resp, CHAT_PROTO_TOKEN_EXPIRED, NULL);
    return set_error(resp, CHAT_PROTO_INVALID_TOKEN, NULL);
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

/* Reads the body into b. 0, 413 (over max bytes), 400 (read error / short body) or 500. */
static int read_body(const fcgi_req *req, size_t max, chat_buf *b)
{
    char tmp[8192];
    for (;;) {
        if (!req->read_body) break;
        long n = req->read_body(req->body_ud, tmp, sizeof tmp);
        if (n < 0) return 400;
        if (n == 0) break;
        if (b->len + (size_t)n > max) return 413;
        if (chat_buf_append(b, tmp, (size_t)n)) return 500;
    }
    if (req->content_length >= 0 && (long long)b->len != req->content_length) return 400;
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

/* The pipeline's failure as an answer: its code (with the table's status) and its client-safe message
 * (its error event's, either may be ""). */
static int chat_failed(fcgi_resp *resp, int rc, const char *code_name, const char *message)
{
    chat_proto_code code;
    bool named = chat_proto_code_lookup(code_name, &code);
    if (named && code == CHAT_PROTO_NOT_STORED) { /* answered, but neither stored nor spooled */
        snprintf(resp->retry_after, sizeof resp->retry_after, "5");
        return set_error(resp, CHAT_PROTO_NOT_STORED, NULL);
    }
    if (rc == CHAT_EDB) {
        snprintf(resp->retry_after, sizeof resp->retry_after, "5");
        return set_error(resp, CHAT_PROTO_SERVICE_UNAVAILABLE, NULL);
    }
    if (rc == CHAT_EFORBIDDEN || (named && code == CHAT_PROTO_SESSION_FORBIDDEN))
        return set_error(resp, named ? code : CHAT_PROTO_SESSION_FORBIDDEN, message[0] ? message : NULL);
    if (rc == CHAT_EINVAL)
        return set_error(resp, named ? code : CHAT_PROTO_INVALID_REQUEST, message[0] ? message : NULL);
    return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, "An error occurred while processing your message");
}

/* A chat message chat_proto_message_fields refused: its code and words, as the WebSocket gives them. */
static int message_refused(fcgi_resp *resp, const char *code, const char *err)
{
    chat_proto_code c = CHAT_PROTO_INVALID_REQUEST;
    chat_proto_code_lookup(code, &c);
    return set_error(resp, c, c == CHAT_PROTO_PROCESSING_ERROR || !err[0] ? NULL : err);
}

/* The checks before the body is read, cheapest first: method, authentication, content type, declared
 * size (at most max bytes). 0 with user filled, or the error status already in resp. */
static int chat_precheck(fcgi_api *api, const fcgi_req *req, size_t max, chat_user *user, fcgi_resp *resp)
{
    if (!is_method(req, "POST")) return method_not_allowed(resp, "POST");
    if (authenticate(api, req, user, resp)) return resp->status;
    if (!content_type_ok(req->content_type))
        return set_error(resp, CHAT_PROTO_UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json");
    if (req->content_length > (long long)max) return set_error(resp, CHAT_PROTO_PAYLOAD_TOO_LARGE, NULL);
    return 0;
}

/* Reads the body (at most max bytes) into b: 0, or the error status already in resp. */
static int read_body_or_fail(const fcgi_req *req, size_t max, chat_buf *b, fcgi_resp *resp)
{
    int rc = read_body(req, max, b);
    if (rc == 413) return set_error(resp, CHAT_PROTO_PAYLOAD_TOO_LARGE, NULL);
    if (rc == 500) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    if (rc) return set_error(resp, CHAT_PROTO_INVALID_REQUEST, "Incomplete request body");
    return 0;
}

/* The whole of body as one JSON value (trailing whitespace allowed) in *root: 0, CHAT_EINVAL when it is
 * not JSON, CHAT_ENOMEM. */
static int parse_body(const chat_buf *body, json_object **root)
{
    *root = NULL;
    if (!body->len) return CHAT_EINVAL;
    json_tokener *tok = json_tokener_new_ex(FCGI_API_JSON_DEPTH);
    if (!tok) return CHAT_ENOMEM;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *o = json_tokener_parse_ex(tok, body->data, (int)body->len);
    size_t end = json_tokener_get_parse_end(tok);
    bool ok = o && json_tokener_get_error(tok) == json_tokener_success;
    json_tokener_free(tok);
    while (ok && end < body->len && strchr(" \t\r\n", body->data[end]))
        end++;
    if (!ok || end != body->len) {
        json_object_put(o);
        return CHAT_EINVAL;
    }
    *root = o;
    return 0;
}

/* Reads the body and parses it into a JSON object (*root, the caller puts it). 0, or the error status
 * already in resp. */
static int read_json_object(fcgi_api *api, const fcgi_req *req, json_object **root, fcgi_resp *resp)
{
    *root = NULL;
    chat_buf body;
    chat_buf_init(&body);
    int status = read_body_or_fail(req, api->max_body, &body, resp);
    int prc = status ? 0 : parse_body(&body, root);
    chat_buf_free(&body);
    if (status) return status;
    if (prc == CHAT_ENOMEM) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    if (prc) return set_error(resp, CHAT_PROTO_INVALID_JSON, NULL);
    if (!json_object_is_type(*root, json_type_object))
        return set_error(resp, CHAT_PROTO_INVALID_REQUEST, "The request body must be a JSON object");
    return 0;
}

/* The Idempotency-Key header, when given, becomes the pipeline's request id (*out, borrowed from req).
 * 0, or the error status already in resp. */
static int idempotency_key(const fcgi_req *req, const char **out, fcgi_resp *resp)
{
    *out = NULL;
    if (!req->idempotency_key || !*req->idempotency_key) return 0;
    if (!chat_id_valid(req->idempotency_key))
        return set_error(resp, CHAT_PROTO_INVALID_REQUEST, "Invalid Idempotency-Key");
    *out = req->idempotency_key;
    return 0;
}

/* Runs the request through the pipeline to its terminal event, kept in result (the caller frees its
 * texts). Returns 0 when result holds the complete, else the negative code to answer. */
static int run_whole(fcgi_api *api, const chat_request *creq, chat_result *result)
{
    chat_sink sink = {
        .ud = result, .progress = sink_progress, .token = sink_token, .complete = sink_complete, .error = sink_error};
    int rc = chat_pipeline_run(api->pipeline, creq, &sink, NULL);
    if (rc == CHAT_EDB) fcgi_health_invalidate(api->health); /* /health should say so right away */
    if (!rc && !result->completed) rc = CHAT_ERR;
    if (rc) chat_log_warn("chat failed: %s (%s)", chat_strerror(rc), result->code[0] ? result->code : "no code");
    return rc;
}

/* Runs the request with its events streamed as they come (fcgi_stream.h). A failure before the stream
 * was committed is answered whole, as run_whole's would be. */
static int run_stream(fcgi_api *api, const chat_request *creq, fcgi_stream_kind kind, bool partial,
                      const chat_oai_ctx *oai, const fcgi_req *req, fcgi_resp *resp)
{
    fcgi_stream s;
    fcgi_stream_init(&s, kind, &req->stream, partial, oai);
    int rc = chat_pipeline_run(api->pipeline, creq, &s.sink, &s.cancel);
    if (rc == CHAT_EDB) fcgi_health_invalidate(api->health);
    int status;
    if (s.committed) {
        resp->streamed = true;
        status = resp->status = 200;
    } else {
        if (!rc) rc = CHAT_ERR;
        chat_log_warn("chat failed: %s (%s)", chat_strerror(rc), s.code[0] ? s.code : "no code");
        status = chat_failed(resp, rc, s.code, s.message);
    }
    fcgi_stream_clear(&s);
    return status;
}

/* Accept names text/event-stream (any case, parameters allowed) among its media ranges. */
static bool wants_event_stream(const char *accept)
{
    static const char want[] = "text/event-stream";
    for (const char *p = accept; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        size_t n = strcspn(p, ",;");
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        if (n == sizeof want - 1 && !strncasecmp(p, want, n)) return true;
        p += strcspn(p, ",");
    }
    return false;
}

/* Runs the validated message through the pipeline and answers with its complete or its failure; with
 * Accept: text/event-stream, streams the protocol's events. */
static int run_chat(fcgi_api *api, const chat_in *in, const chat_user *user, const char *request_id,
                    const fcgi_req *req, fcgi_resp *resp)
{
    chat_request creq = {.message = in->message,
                         .session_id = in->session_id,
                         .customer_id = in->customer_id,
                         .user = user,
                         .request_id = request_id};
    if (wants_event_stream(req->accept))
        return run_stream(api, &creq, FCGI_STREAM_EVENTS, in->partial, NULL, req, resp);
    chat_result result = {0};
    int rc = run_whole(api, &creq, &result);
    int status = rc ? chat_failed(resp, rc, result.code, result.message)
                    : set_body(resp, 200, chat_proto_rest_answer(result.response, result.session_id, result.metadata));
    free(result.response);
    free(result.metadata);
    return status;
}

static int handle_chat(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    chat_user user;
    json_object *root = NULL;
    chat_in in = {0};
    const char *code = NULL, *request_id = NULL;
    char err[128];
    int status = chat_precheck(api, req, api->max_body, &user, resp);
    if (!status) status = read_json_object(api, req, &root, resp);
    if (!status && chat_proto_message_fields(root, (size_t)api->cfg.max_message_bytes, &in, &code, err, sizeof err))
        status = message_refused(resp, code, err);
    if (!status) status = idempotency_key(req, &request_id, resp);
    if (!status) status = run_chat(api, &in, &user, request_id, req, resp);
    chat_in_clear(&in);
    json_object_put(root);
    return status;
}

/* ---- the OpenAI-compatible API ---- */

/* Runs an accepted completion request: streamed as chunks, or answered whole as a chat.completion. The
 * request id (the Idempotency-Key, else a UUID) names the stored turn and the completion ("chatcmpl-"). */
static int run_completion(fcgi_api *api, const chat_oai_request *o, const chat_user *user, const char *key,
                          const fcgi_req *req, fcgi_resp *resp)
{
    char uuid[37];
    if (!key) {
        if (chat_uuid4(uuid)) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
        key = uuid;
    }
    chat_oai_ctx ctx = chat_oai_ctx_make(key, (long long)time(NULL), o->include_usage);
    chat_request creq = {.message = o->in.message,
                         .session_id = o->in.session_id,
                         .customer_id = o->in.customer_id,
                         .user = user,
                         .request_id = key};
    if (o->stream) return run_stream(api, &creq, FCGI_STREAM_OPENAI, false, &ctx, req, resp);
    chat_result result = {0};
    int rc = run_whole(api, &creq, &result);
    int status;
    if (rc)
        status = chat_failed(resp, rc, result.code, result.message);
    else if (!strcmp(chat_oai_finish_reason(result.metadata), "error")) /* the model failed mid-answer */
        status = set_error(resp, CHAT_PROTO_PROCESSING_ERROR, "The language model failed during the answer");
    else
        status = set_body(resp, 200, chat_oai_completion(&ctx, result.response, result.session_id, result.metadata));
    free(result.response);
    free(result.metadata);
    return status;
}

static int handle_completions(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    chat_user user;
    chat_buf body;
    chat_buf_init(&body);
    chat_oai_request o = {0};
    chat_oai_refusal why;
    const char *key = NULL;
    int status = chat_precheck(api, req, FCGI_API_V1_MAX_BODY, &user, resp);
    if (!status) status = read_body_or_fail(req, FCGI_API_V1_MAX_BODY, &body, resp);
    if (!status && chat_oai_parse_request(body.data, body.len, (size_t)api->cfg.max_message_bytes, &o, &why))
        status = set_error_full(resp, chat_proto_code_status(why.code), why.code, why.message, why.param);
    chat_buf_free(&body);
    if (!status) status = idempotency_key(req, &key, resp);
    if (!status) status = run_completion(api, &o, &user, key, req, resp);
    chat_oai_request_clear(&o);
    return status;
}

/* GET /v1/models, or /v1/models/{id} when id is not NULL. */
static int handle_models(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp, const char *id, size_t idlen)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    chat_user user;
    if (authenticate(api, req, &user, resp)) return resp->status;
    if (!id) return set_body(resp, 200, chat_oai_models());
    if (idlen == strlen(CHAT_OAI_MODEL) && !memcmp(id, CHAT_OAI_MODEL, idlen))
        return set_body(resp, 200, chat_oai_model());
    return set_error_full(resp, 404, CHAT_PROTO_NOT_FOUND, "The model does not exist (GET /v1/models lists them)",
                          "model");
}

/* ---- history ---- */

static int handle_history(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp, const char *raw_id, size_t raw_len)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    chat_user user;
    if (authenticate(api, req, &user, resp)) return resp->status;
    char sid[CHAT_SESSION_ID_MAX + 1];
    if (pct_decode(raw_id, raw_len, sid, sizeof sid) || !chat_id_valid(sid))
        return set_error(resp, CHAT_PROTO_INVALID_REQUEST, "Invalid session id");
    char *json = NULL, err[256] = "";
    int rc = chat_memory_messages_json(chat_pipeline_db(api->pipeline), user.id, sid, &json, err, sizeof err);
    if (rc == 0 && json) return set_body(resp, 200, json);
    free(json);
    switch (rc) {
    case CHAT_ENOTFOUND: /* the user has no such session, whoever else may: nothing tells which ids exist */
        return set_error(resp, CHAT_PROTO_SESSION_FORBIDDEN, NULL);
    case CHAT_EDB:
        chat_log_warn("history: %s", err);
        fcgi_health_invalidate(api->health);
        snprintf(resp->retry_after, sizeof resp->retry_after, "5");
        return set_error(resp, CHAT_PROTO_SERVICE_UNAVAILABLE, NULL);
    default:
        chat_log_error("history: %s", err[0] ? err : chat_strerror(rc));
        return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
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
    if (!api->demo_token_file[0]) return set_error(resp, CHAT_PROTO_NOT_FOUND, NULL);
    int fd = open(api->demo_token_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return set_error(resp, CHAT_PROTO_NOT_FOUND, NULL);
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
        return set_error(resp, CHAT_PROTO_NOT_FOUND, NULL);
    }
    json_object *o = json_object_new_object();
    if (!o) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    json_object_object_add(o, "token", json_object_new_string_len(buf, (int)n));
    int status = set_json(resp, 200, o);
    json_object_put(o);
    return status;
}

/* ---- health ---- */

/* A health check's status (or negative error) with its body in resp. */
static int health_answer(fcgi_resp *resp, int st)
{
    if (st < 0) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    if (st == 503) snprintf(resp->retry_after, sizeof resp->retry_after, "5");
    resp->status = st;
    return st;
}

/* Every process's figures (chat_metrics.h), in Prometheus's text format. Unauthenticated, like /health:
 * the front door decides who may reach it (deploy/README.md). */
static int handle_metrics(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    if (chat_metrics_render(api->cfg.metrics_dir, &resp->body)) return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    snprintf(resp->content_type, sizeof resp->content_type, "text/plain; version=0.0.4; charset=utf-8");
    resp->status = 200;
    return 200;
}

static int handle_health(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    int st = fcgi_health_get(api->health, chat_pipeline_db(api->pipeline), &resp->body);
    return health_answer(resp, st);
}

/* /health/ready: the same probes, a short body; /health/live: the process answers, nothing is probed. */
static int handle_health_probe(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp, bool ready)
{
    if (!is_get(req)) return method_not_allowed(resp, "GET, HEAD");
    int st = ready ? fcgi_health_ready(api->health, chat_pipeline_db(api->pipeline), &resp->body)
                   : fcgi_health_live(&resp->body);
    return health_answer(resp, st);
}

/* ---- lighttpd's own errors (server.error-handler) ---- */

static int handle_server_error(fcgi_resp *resp, int status)
{
    switch (status) {
    case 400: return set_error(resp, CHAT_PROTO_INVALID_REQUEST, "Bad request");
    case 403: return set_error(resp, CHAT_PROTO_FORBIDDEN, NULL);
    case 404: return set_error(resp, CHAT_PROTO_NOT_FOUND, NULL);
    case 405: return set_error(resp, CHAT_PROTO_METHOD_NOT_ALLOWED, NULL);
    case 408: return set_error(resp, CHAT_PROTO_REQUEST_TIMEOUT, NULL);
    case 411: return set_error(resp, CHAT_PROTO_LENGTH_REQUIRED, NULL);
    case 413: return set_error(resp, CHAT_PROTO_PAYLOAD_TOO_LARGE, NULL);
    case 415: return set_error(resp, CHAT_PROTO_UNSUPPORTED_MEDIA_TYPE, NULL);
    case 431: return set_error_status(resp, 431, CHAT_PROTO_INVALID_REQUEST, "Request headers too large");
    case 501: return set_error(resp, CHAT_PROTO_NOT_IMPLEMENTED, NULL);
    case 505: return set_error(resp, CHAT_PROTO_HTTP_VERSION_NOT_SUPPORTED, NULL);
    case 502:
    case 503:
    case 504:
        snprintf(resp->retry_after, sizeof resp->retry_after, "5");
        return set_error(resp, CHAT_PROTO_SERVICE_UNAVAILABLE, NULL);
    default:
        if (status >= 400 && status < 500)
            return set_error_status(resp, status, CHAT_PROTO_INVALID_REQUEST, "Bad request");
        return set_error(resp, CHAT_PROTO_PROCESSING_ERROR, NULL);
    }
}

/* ---- routing ---- */

static bool path_is(const char *p, size_t n, const char *lit)
{
    return strlen(lit) == n && !memcmp(p, lit, n);
}

/* The /v1/ routes (OpenAI's paths). */
static int route_v1(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp, const char *p, size_t n)
{
    static const char models[] = "/v1/models/";
    size_t lm = sizeof models - 1;
    if (path_is(p, n, "/v1/chat/completions")) return handle_completions(api, req, resp);
    if (path_is(p, n, "/v1/models")) return handle_models(api, req, resp, NULL, 0);
    if (n > lm && !memcmp(p, models, lm) && !memchr(p + lm, '/', n - lm))
        return handle_models(api, req, resp, p + lm, n - lm);
    return set_error(resp, CHAT_PROTO_NOT_FOUND, NULL);
}

int fcgi_api_handle(fcgi_api *api, const fcgi_req *req, fcgi_resp *resp)
{
    resp->status = 0;
    resp->allow[0] = resp->www_auth[0] = resp->retry_after[0] = resp->content_type[0] = '\0';
    resp->streamed = false;
    chat_buf_reset(&resp->body);
    const char *p = req->uri ? req->uri : "";
    size_t n = path_len(p);
    resp->openai = n >= 4 && !memcmp(p, "/v1/", 4); /* lighttpd's own errors there too */
    if (req->redirect_status >= 400 && req->redirect_status <= 599)
        return handle_server_error(resp, req->redirect_status);

    if (path_is(p, n, "/health")) return handle_health(api, req, resp);
    if (path_is(p, n, "/metrics")) return handle_metrics(api, req, resp);
    if (path_is(p, n, "/health/live")) return handle_health_probe(api, req, resp, false);
    if (path_is(p, n, "/health/ready")) return handle_health_probe(api, req, resp, true);
    if (resp->openai) return route_v1(api, req, resp, p, n);
    if (path_is(p, n, "/api/v1/chat")) return handle_chat(api, req, resp);
    if (path_is(p, n, "/api/v1/demo-token")) return handle_demo_token(api, req, resp);

    static const char pre[] = "/api/v1/sessions/", suf[] = "/messages";
    size_t lp = sizeof pre - 1, ls = sizeof suf - 1;
    if (n > lp + ls && !memcmp(p, pre, lp) && !memcmp(p + n - ls, suf, ls)) {
        const char *id = p + lp;
        size_t idlen = n - lp - ls;
        if (!memchr(id, '/', idlen)) return handle_history(api, req, resp, id, idlen);
    }
    return set_error(resp, CHAT_PROTO_NOT_FOUND, NULL);
}
