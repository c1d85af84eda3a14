/* The OpenAI wire format of the assistant's own API (POST /v1/chat/completions, GET /v1/models): the
 * request parser and the builders of every answer, chunk and error it sends. Not the provider client
 * (chat_openai.h speaks the same format the other way round, to a model).
 *
 * What maps to what (docs/rest-api.md says it for clients):
 * - The question is the last "user" message (its text, or its text parts joined by "\n"), held to the
 *   protocol's message rules (chat_proto_message_fields: empty, too long, UTF-8). The conversation is the
 *   stored session the extension field "session_id" names (created for the caller when unknown, as the
 *   WebSocket and REST do); earlier messages in "messages" are checked for shape but not used: the
 *   assistant keeps its own memory. "customer_id" is the other extension field; "user", "temperature",
 *   "max_tokens" and the other sampling fields are accepted and ignored.
 * - The assistant is one model, CHAT_OAI_MODEL; routing picks its agent per question.
 * - The assistant's metadata rides in the extension field CHAT_OAI_EXT of a chat.completion and of the
 *   last chunk of a stream (the one with finish_reason): the complete event's metadata object (agent,
 *   confidence, context.sources, finish_reason, usage, timings, provider) with "session_id" added.
 * - Errors are {"error":{"message","type","param","code"}}: code is the protocol table's name
 *   (CHAT_PROTO_ERRORS), type follows from its HTTP status (chat_oai_error_type).
 *
 * Builders return a NUL-terminated JSON text the caller frees, or NULL on out of memory. Strings are
 * repaired as the protocol's builders repair them (malformed UTF-8 becomes U+FFFD). No state: any thread. */
#ifndef CHAT_OPENAI_API_H
#define CHAT_OPENAI_API_H

#include <stdbool.h>
#include <stddef.h>

#include "chat_proto.h"

#define CHAT_OAI_MODEL "seawind-assistant"
#define CHAT_OAI_OWNER "seawind-marine"
/* When the model id was published (GET /v1/models "created"): a fixed date, 2026-01-01T00:00:00Z. */
#define CHAT_OAI_MODEL_CREATED 1767225600LL
/* The extension field that carries the assistant's metadata in answers. */
#define CHAT_OAI_EXT "seawind"
/* JSON nesting accepted in a request: messages of content parts, plus room for the fields clients send
 * and the assistant ignores (tools with JSON schemas). */
#define CHAT_OAI_JSON_DEPTH 32
/* The data of the event that ends a stream. */
#define CHAT_OAI_DONE "[DONE]"

typedef struct chat_oai_request {
    chat_in in;         /* message (the question, trimmed), session_id and customer_id; type and partial unused */
    bool stream;        /* "stream": true */
    bool include_usage; /* "stream_options": {"include_usage": true}, with stream */
} chat_oai_request;

/* Why a request was refused: the protocol's code (its status is the answer's), the request field at
 * fault (a static string, or NULL) and the client-facing message. */
typedef struct chat_oai_refusal {
    chat_proto_code code;
    const char *param;
    char message[192];
} chat_oai_refusal;

/* Parses a request body (the whole of body[0..len), one JSON object; trailing whitespace allowed).
 * Returns 0 with out filled (free with chat_oai_request_clear), CHAT_EINVAL with why filled (INVALID_JSON,
 * INVALID_REQUEST, NOT_FOUND for another model, or the message rules' EMPTY_MESSAGE / MESSAGE_TOO_LONG),
 * or CHAT_ENOMEM (why says PROCESSING_ERROR). out holds nothing on failure. */
int chat_oai_parse_request(const char *body, size_t len, size_t max_message_bytes, chat_oai_request *out,
                           chat_oai_refusal *why);
void chat_oai_request_clear(chat_oai_request *r);

/* What every answer and chunk of one request repeats. */
typedef struct chat_oai_ctx {
    char id[80];        /* "chatcmpl-" + the request id */
    long long created;  /* Unix seconds */
    bool include_usage; /* streams: a usage chunk before [DONE], and "usage": null on every other chunk */
} chat_oai_ctx;

/* request_id: the pipeline's request id (an Idempotency-Key or a UUID), at most 64 characters. */
chat_oai_ctx chat_oai_ctx_make(const char *request_id, long long created, bool include_usage);

/* The finish reason of the pipeline's metadata, as a static string: "stop", "length", "cancelled" or
 * "error" (the model failed after some text); anything else reads as "stop". */
const char *chat_oai_finish_reason(const char *metadata_json);

/* A chat.completion: choices[0].message {role "assistant", content response}, finish_reason, usage from
 * the metadata's usage, and the CHAT_OAI_EXT extension. */
char *chat_oai_completion(const chat_oai_ctx *c, const char *response, const char *session_id,
                          const char *metadata_json);

/* The chat.completion.chunk of a stream: the first (delta {role "assistant", content ""}), one per piece
 * of text (delta {content}), the last (delta {}, finish_reason, the CHAT_OAI_EXT extension) and, with
 * include_usage, the usage chunk (choices [], usage) after it. */
char *chat_oai_chunk_role(const chat_oai_ctx *c);
char *chat_oai_chunk_content(const chat_oai_ctx *c, const char *text, size_t len);
char *chat_oai_chunk_finish(const chat_oai_ctx *c, const char *session_id, const char *metadata_json);
char *chat_oai_chunk_usage(const chat_oai_ctx *c, const char *metadata_json);

/* The error body for code: message NULL means the code's default message; param NULL is JSON null. In a
 * stream the same object is the data of an event (OpenAI's clients raise it as an APIError). */
char *chat_oai_error(chat_proto_code code, const char *message, const char *param);
/* The OpenAI error type for an HTTP status: invalid_request_error (400, 405, 408, 411, 413, 415 and other
 * 4xx), authentication_error (401), permission_error (403), not_found_error (404), rate_limit_error
 * (429), server_error (5xx). Static strings. */
const char *chat_oai_error_type(int status);
/* The error body for out of memory, a static text for when even building one fails. */
extern const char chat_oai_error_oom[];

/* GET /v1/models: {"object":"list","data":[model]}; GET /v1/models/CHAT_OAI_MODEL: the model object
 * {"id","object":"model","created","owned_by"}. */
char *chat_oai_models(void);
char *chat_oai_model(void);

#endif
