/* The OpenAI wire format of the assistant's API: requests in, completions, chunks and errors out.
 *
 * Design choices:
 * - The question goes through chat_proto_message_fields, the validator the WebSocket and REST use, so
 *   every front door refuses an empty or oversized question with the same code and words. Only the shape
 *   of OpenAI's request (model, messages, stream, stream_options, n) is checked here.
 * - Unknown fields are ignored, as OpenAI-compatible servers do: clients send sampling settings, tools
 *   and vendor fields the assistant has no use for, and refusing them would refuse those clients.
 * - Builders assemble json-c objects with obj()/arr(), which take their values' ownership and fail as a
 *   whole when any value is NULL (out of memory), so no builder hands out a half-built answer. Strings
 *   and the pipeline's metadata come through the protocol's own helpers (chat_proto_json_string,
 *   chat_proto_metadata_object): repaired and parsed the one way.
 * - A chunk per token runs json-c on REST's path, not the streamer's hot path: a few microseconds beside
 *   the flush that follows it. */
#include "chat_openai_api.h"

#include <json-c/json.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_util.h"

#define TO_STRING_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)
#define MODEL_SHOWN 64 /* characters of an unknown model id repeated in the refusal */

/* ---- building ---- */

/* A marker for an explicit JSON null among obj()'s values (NULL itself means out of memory). */
static char null_marker;
#define JNULL ((json_object *)&null_marker)

static void put_value(json_object *v)
{
    if (v != JNULL) json_object_put(v);
}

/* Adds key: v to o, taking both: o, or NULL (both freed) when either is NULL or the insertion fails. */
static json_object *with(json_object *o, const char *key, json_object *v)
{
    if (o && v && json_object_object_add(o, key, v == JNULL ? NULL : v) == 0) return o;
    put_value(v);
    json_object_put(o);
    return NULL;
}

/* An object of n (key, value) pairs, given as const char *, json_object * arguments. Takes every value;
 * NULL when the object or any value is NULL (all freed). */
static json_object *obj(int n, ...)
{
    json_object *o = json_object_new_object();
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        const char *key = va_arg(ap, const char *);
        o = with(o, key, va_arg(ap, json_object *));
    }
    va_end(ap);
    return o;
}

/* An array of n values, owned as obj() owns them. */
static json_object *arr(int n, ...)
{
    json_object *a = json_object_new_array();
    bool ok = a != NULL;
    va_list ap;
    va_start(ap, n);
    for (int i = 0; i < n; i++) {
        json_object *v = va_arg(ap, json_object *);
        if (ok && v && json_object_array_add(a, v == JNULL ? NULL : v) == 0) continue;
        put_value(v);
        ok = false;
    }
    va_end(ap);
    if (ok) return a;
    json_object_put(a);
    return NULL;
}

static json_object *str(const char *s)
{
    return chat_proto_json_string(s, s ? strlen(s) : 0);
}

/* A string, or JSON null for NULL. */
static json_object *str_or_null(const char *s)
{
    return s ? str(s) : JNULL;
}

/* The text of o, which the caller gives up; NULL for NULL or out of memory. */
static char *text_of(json_object *o)
{
    const char *s = o ? json_object_to_json_string_ext(o, TO_STRING_FLAGS) : NULL;
    char *out = s ? strdup(s) : NULL;
    json_object_put(o);
    return out;
}

/* ---- reading the metadata ---- */

static json_object *field(json_object *o, const char *key)
{
    json_object *v = NULL;
    return json_object_object_get_ex(o, key, &v) ? v : NULL;
}

static int int_field(json_object *o, const char *key)
{
    json_object *v = field(o, key);
    return json_object_is_type(v, json_type_int) ? json_object_get_int(v) : 0;
}

static const char *finish_of(json_object *meta)
{
    static const char *const known[] = {"stop", "length", "cancelled", "error"};
    json_object *v = field(meta, "finish_reason");
    const char *s = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : "";
    for (size_t i = 0; i < CHAT_ARRAY_LEN(known); i++)
        if (!strcmp(s, known[i])) return known[i];
    return "stop";
}

const char *chat_oai_finish_reason(const char *metadata_json)
{
    json_object *meta = chat_proto_metadata_object(metadata_json);
    const char *f = finish_of(meta);
    json_object_put(meta);
    return f;
}

/* {prompt_tokens, completion_tokens, total_tokens} from the metadata's usage. */
static json_object *usage_of(json_object *meta)
{
    json_object *u = field(meta, "usage");
    int in = int_field(u, "prompt_tokens"), out = int_field(u, "completion_tokens");
    return obj(3, "prompt_tokens", json_object_new_int(in), "completion_tokens", json_object_new_int(out),
               "total_tokens", json_object_new_int(in + out));
}

/* The extension: the metadata object (taken) with the session id added. */
static json_object *extension(json_object *meta, const char *session_id)
{
    return with(meta, "session_id", str_or_null(session_id && *session_id ? session_id : NULL));
}

/* ---- answers ---- */

chat_oai_ctx chat_oai_ctx_make(const char *request_id, long long created, bool include_usage)
{
    chat_oai_ctx c = {.created = created, .include_usage = include_usage};
    snprintf(c.id, sizeof c.id, "chatcmpl-%s", request_id ? request_id : "");
    return c;
}

/* The fields every answer starts with, and its choices (taken). */
static json_object *answer(const chat_oai_ctx *c, const char *object, json_object *choices)
{
    return obj(5, "id", str(c->id), "object", str(object), "created", json_object_new_int64(c->created), "model",
               str(CHAT_OAI_MODEL), "choices", choices);
}

char *chat_oai_completion(const chat_oai_ctx *c, const char *response, const char *session_id,
                          const char *metadata_json)
{
    json_object *meta = chat_proto_metadata_object(metadata_json);
    if (!meta) return NULL;
    json_object *message = obj(2, "role", str("assistant"), "content", str(response));
    json_object *choice =
        obj(3, "index", json_object_new_int(0), "message", message, "finish_reason", str(finish_of(meta)));
    json_object *usage = usage_of(meta);
    json_object *o = with(answer(c, "chat.completion", arr(1, choice)), "usage", usage);
    return text_of(with(o, CHAT_OAI_EXT, extension(meta, session_id)));
}

/* A chunk with one choice: delta (taken) and finish_reason (NULL: null); "usage": null when the stream
 * ends with a usage chunk, as OpenAI sends it. */
static json_object *chunk(const chat_oai_ctx *c, json_object *delta, const char *finish)
{
    json_object *choice = obj(3, "index", json_object_new_int(0), "delta", delta, "finish_reason", str_or_null(finish));
    json_object *o = answer(c, "chat.completion.chunk", arr(1, choice));
    return c->include_usage ? with(o, "usage", JNULL) : o;
}

char *chat_oai_chunk_role(const chat_oai_ctx *c)
{
    return text_of(chunk(c, obj(2, "role", str("assistant"), "content", str("")), NULL));
}

char *chat_oai_chunk_content(const chat_oai_ctx *c, const char *text, size_t len)
{
    return text_of(chunk(c, obj(1, "content", chat_proto_json_string(text, len)), NULL));
}

char *chat_oai_chunk_finish(const chat_oai_ctx *c, const char *session_id, const char *metadata_json)
{
    json_object *meta = chat_proto_metadata_object(metadata_json);
    if (!meta) return NULL;
    const char *finish = finish_of(meta); /* a static string: outlives meta */
    return text_of(with(chunk(c, obj(0), finish), CHAT_OAI_EXT, extension(meta, session_id)));
}

char *chat_oai_chunk_usage(const chat_oai_ctx *c, const char *metadata_json)
{
    json_object *meta = chat_proto_metadata_object(metadata_json);
    if (!meta) return NULL;
    json_object *usage = usage_of(meta);
    json_object_put(meta);
    return text_of(with(answer(c, "chat.completion.chunk", arr(0)), "usage", usage));
}

/* ---- errors ---- */

static const struct {
    int status;
    const char *type;
} error_types[] = {
    {401, "authentication_error"},
    {403, "permission_error"},
    {404, "not_found_error"},
    {429, "rate_limit_error"},
};

const char *chat_oai_error_type(int status)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(error_types); i++)
        if (error_types[i].status == status) return error_types[i].type;
    return status >= 500 ? "server_error" : "invalid_request_error";
}

char *chat_oai_error(chat_proto_code code, const char *message, const char *param)
{
    json_object *e = obj(4, "message", str(message ? message : chat_proto_code_message(code)), "type",
                         str(chat_oai_error_type(chat_proto_code_status(code))), "param", str_or_null(param), "code",
                         str(chat_proto_code_name(code)));
    return text_of(obj(1, "error", e));
}

const char chat_oai_error_oom[] = "{\"error\":{\"message\":\"Internal "
                                  "error\",\"type\":\"server_error\",\"param\":null,\"code\":\"PROCESSING_ERROR\"}}";

/* ---- models ---- */

static json_object *model_object(void)
{
    return obj(4, "id", str(CHAT_OAI_MODEL), "object", str("model"), "created",
               json_object_new_int64(CHAT_OAI_MODEL_CREATED), "owned_by", str(CHAT_OAI_OWNER));
}

char *chat_oai_models(void)
{
    return text_of(obj(2, "object", str("list"), "data", arr(1, model_object())));
}

char *chat_oai_model(void)
{
    return text_of(model_object());
}

/* ---- the request ---- */

static int refuse(chat_oai_refusal *why, chat_proto_code code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int refuse(chat_oai_refusal *why, chat_proto_code code, const char *param, const char *fmt, ...)
{
    why->code = code;
    why->param = param;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why->message, sizeof why->message, fmt, ap);
    va_end(ap);
    return code == CHAT_PROTO_PROCESSING_ERROR ? CHAT_ENOMEM : CHAT_EINVAL;
}

/* The whole body as one JSON value (trailing whitespace allowed), or NULL. */
static json_object *parse_json(const char *body, size_t len)
{
    if (!body || !len || len > INT_MAX) return NULL;
    json_tokener *tok = json_tokener_new_ex(CHAT_OAI_JSON_DEPTH);
    if (!tok) return NULL;
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *root = json_tokener_parse_ex(tok, body, (int)len);
    size_t end = json_tokener_get_parse_end(tok);
    bool whole = root && json_tokener_get_error(tok) == json_tokener_success;
    json_tokener_free(tok);
    while (whole && end < len && strchr(" \t\r\n", body[end]))
        end++;
    if (whole && end == len) return root;
    json_object_put(root);
    return NULL;
}

/* An optional member: absent and null read as absent (NULL); present with another type than want: -1. */
static int member(json_object *root, const char *key, json_type want, json_object **out)
{
    *out = field(root, key);
    if (!*out) return 0;
    return json_object_is_type(*out, want) ? 0 : -1;
}

static int check_model(json_object *root, chat_oai_refusal *why)
{
    json_object *m;
    if (member(root, "model", json_type_string, &m))
        return refuse(why, CHAT_PROTO_INVALID_REQUEST, "model", "model must be a string");
    if (!m) return refuse(why, CHAT_PROTO_INVALID_REQUEST, "model", "model is required");
    const char *id = json_object_get_string(m);
    if (!strcmp(id, CHAT_OAI_MODEL)) return 0;
    char shown[MODEL_SHOWN + 1];
    size_t i = 0;
    for (; i < MODEL_SHOWN && id[i]; i++)
        shown[i] = (id[i] >= 0x20 && id[i] < 0x7f && id[i] != '"' && id[i] != '\\') ? id[i] : '?';
    shown[i] = '\0';
    return refuse(why, CHAT_PROTO_NOT_FOUND, "model", "The model '%s' does not exist (GET /v1/models lists %s)", shown,
                  CHAT_OAI_MODEL);
}

static bool role_known(const char *role)
{
    static const char *const roles[] = {"system", "developer", "user", "assistant", "tool", "function"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(roles); i++)
        if (!strcmp(role, roles[i])) return true;
    return false;
}

/* A message's content as text: a string, or an array of {"type":"text","text"} parts joined by "\n".
 * Into text (when not NULL); -1 for any other shape (image parts included: the assistant reads text). */
static int content_text(json_object *content, chat_buf *text)
{
    if (json_object_is_type(content, json_type_string))
        return text
                   ? chat_buf_append(text, json_object_get_string(content), (size_t)json_object_get_string_len(content))
                   : 0;
    if (!json_object_is_type(content, json_type_array)) return -1;
    size_t n = json_object_array_length(content);
    for (size_t i = 0; i < n; i++) {
        json_object *part = json_object_array_get_idx(content, i), *type, *t;
        if (member(part, "type", json_type_string, &type) || !type || strcmp(json_object_get_string(type), "text") ||
            member(part, "text", json_type_string, &t) || !t)
            return -1;
        if (text && ((i && chat_buf_puts(text, "\n")) ||
                     chat_buf_append(text, json_object_get_string(t), (size_t)json_object_get_string_len(t))))
            return CHAT_ENOMEM;
    }
    return 0;
}

/* Checks every message's shape and leaves the index of the last user message in *last (-1: none). */
static int check_messages(json_object *msgs, long *last, chat_oai_refusal *why)
{
    size_t n = json_object_array_length(msgs);
    if (!n) return refuse(why, CHAT_PROTO_INVALID_REQUEST, "messages", "messages must not be empty");
    *last = -1;
    for (size_t i = 0; i < n; i++) {
        json_object *m = json_object_array_get_idx(msgs, i), *role, *content;
        if (!json_object_is_type(m, json_type_object))
            return refuse(why, CHAT_PROTO_INVALID_REQUEST, "messages", "messages[%zu] must be an object", i);
        if (member(m, "role", json_type_string, &role) || !role || !role_known(json_object_get_string(role)))
            return refuse(why, CHAT_PROTO_INVALID_REQUEST, "messages",
                          "messages[%zu].role must be one of system, developer, user, assistant, tool, function", i);
        bool user = !strcmp(json_object_get_string(role), "user");
        content = field(m, "content");
        if ((content || user) && content_text(content, NULL))
            return refuse(why, CHAT_PROTO_INVALID_REQUEST, "messages",
                          "messages[%zu].content must be a string or an array of text parts", i);
        if (user) *last = (long)i;
    }
    if (*last < 0) return refuse(why, CHAT_PROTO_INVALID_REQUEST, "messages", "messages must hold a user message");
    return 0;
}

/* stream, stream_options.include_usage and n. */
static int check_options(json_object *root, chat_oai_request *out, chat_oai_refusal *why)
{
    json_object *v, *opts;
    if (member(root, "stream", json_type_boolean, &v))
        return refuse(why, CHAT_PROTO_INVALID_REQUEST, "stream", "stream must be a boolean");
    out->stream = v && json_object_get_boolean(v);
    if (member(root, "stream_options", json_type_object, &opts))
        return refuse(why, CHAT_PROTO_INVALID_REQUEST, "stream_options", "stream_options must be an object");
    if (opts && member(opts, "include_usage", json_type_boolean, &v))
        return refuse(why, CHAT_PROTO_INVALID_REQUEST, "stream_options",
                      "stream_options.include_usage must be a boolean");
    out->include_usage = out->stream && opts && v && json_object_get_boolean(v);
    if (member(root, "n", json_type_int, &v) || (v && json_object_get_int64(v) != 1))
        return refuse(why, CHAT_PROTO_INVALID_REQUEST, "n", "Only n = 1 is supported");
    return 0;
}

/* The question (the text of the last user message) with the extension fields, through the protocol's
 * message rules. */
static int check_question(json_object *root, json_object *msg, size_t max_bytes, chat_oai_request *out,
                          chat_oai_refusal *why)
{
    chat_buf text;
    chat_buf_init(&text);
    int rc = content_text(field(msg, "content"), &text);
    json_object *q = rc ? NULL : with(json_object_new_object(), "message", chat_proto_json_string(text.data, text.len));
    chat_buf_free(&text);
    static const char *const ext[] = {"session_id", "customer_id"};
    for (size_t i = 0; q && i < CHAT_ARRAY_LEN(ext); i++) {
        json_object *v = field(root, ext[i]);
        if (v) q = with(q, ext[i], json_object_get(v));
    }
    if (!q) return refuse(why, CHAT_PROTO_PROCESSING_ERROR, NULL, "Out of memory");
    const char *code = NULL;
    rc = chat_proto_message_fields(q, max_bytes, &out->in, &code, why->message, sizeof why->message);
    json_object_put(q);
    if (!rc) return 0;
    if (!chat_proto_code_lookup(code, &why->code)) why->code = CHAT_PROTO_INVALID_REQUEST;
    why->param = strstr(why->message, "session_id")    ? "session_id"
                 : strstr(why->message, "customer_id") ? "customer_id"
                                                       : "messages";
    return rc;
}

int chat_oai_parse_request(const char *body, size_t len, size_t max_message_bytes, chat_oai_request *out,
                           chat_oai_refusal *why)
{
    memset(out, 0, sizeof *out);
    memset(why, 0, sizeof *why);
    json_object *root = parse_json(body, len), *msgs;
    int rc;
    if (!root)
        rc = refuse(why, CHAT_PROTO_INVALID_JSON, NULL, "The request body is not valid JSON");
    else if (!json_object_is_type(root, json_type_object))
        rc = refuse(why, CHAT_PROTO_INVALID_REQUEST, NULL, "The request body must be a JSON object");
    else if ((rc = check_model(root, why)) == 0 && (rc = check_options(root, out, why)) == 0) {
        long last = -1;
        if (member(root, "messages", json_type_array, &msgs) || !msgs)
            rc = refuse(why, CHAT_PROTO_INVALID_REQUEST, "messages", "messages must be an array");
        else if ((rc = check_messages(msgs, &last, why)) == 0)
            rc = check_question(root, json_object_array_get_idx(msgs, (size_t)last), max_message_bytes, out, why);
    }
    json_object_put(root);
    if (rc) chat_oai_request_clear(out);
    return rc;
}

void chat_oai_request_clear(chat_oai_request *r)
{
    if (!r) return;
    chat_in_clear(&r->in);
    r->stream = r->include_usage = false;
}
