/* The JSON protocol of the spec (json-c), one table of it for both front ends: the error codes (with
 * their HTTP status and default message), the progress steps and the frame types as X-macro tables, builders for every
 * frame the servers send (and the client frames the tools send), the parser of client frames and the
 * message checks REST shares with it.
 *
 * Builders return a NUL-terminated JSON text the caller frees, or NULL on out of memory. The parser
 * validates shape and sizes so that front ends only dispatch. Everything here is safe from any thread
 * (no state beyond static tables). */
#ifndef CHAT_PROTO_H
#define CHAT_PROTO_H

#include <stdbool.h>
#include <stddef.h>

#include "chat_jwt.h"

/* The error codes of both front ends, each once: name, the HTTP status REST answers it with, and the
 * default client message (used when the caller has nothing more specific). The spec names the first
 * three; the WebSocket and REST share the next ones, and the last group is REST's own (authentication
 * detail, HTTP framing, lighttpd's own errors). Adding a code is adding a row: the enum, the name, the
 * status and the message follow. docs/protocol.md and docs/rest-api.md list where each is used. */
#define CHAT_PROTO_ERRORS(X)                                                                                  \
    X(AUTH_REQUIRED, 401, "Authentication required")                                                           \
    X(EMPTY_MESSAGE, 400, "Message cannot be empty")                                                           \
    X(PROCESSING_ERROR, 500, "Internal error")                                                                 \
    X(INVALID_JSON, 400, "Invalid JSON")                                                                       \
    X(UNKNOWN_TYPE, 400, "Unknown message type")                                                               \
    X(INVALID_REQUEST, 400, "Invalid request") /* a field of the wrong type or format */                       \
    X(MESSAGE_TOO_LONG, 400, "Message too long")                                                               \
    X(SESSION_FORBIDDEN, 403, "You have no session with this id") /* foreign or unknown alike */               \
    X(CUSTOMER_FORBIDDEN, 403, "You may not access this customer's records")                                   \
    X(RATE_LIMITED, 429, "Too many messages, please slow down")                                                \
    X(OVERLOADED, 503, "The server is busy, please retry shortly")                                             \
    /* the answer was generated but its turn could be neither stored nor spooled: not in the history */     \
    X(NOT_STORED, 503, "The answer could not be saved to the conversation, please ask again")                 \
    /* auth_error on WebSocket, 401 on REST: the token was refused */                                         \
    X(INVALID_TOKEN, 401, "Invalid token")                                                                     \
    X(TOKEN_EXPIRED, 401, "Token expired")                                                                     \
    X(USER_MISMATCH, 403, "The token is for another user than this connection's")                             \
    /* REST only: */                                                                                          \
    X(FORBIDDEN, 403, "Forbidden")                                                                             \
    X(NOT_FOUND, 404, "Not found")                                                                             \
    X(METHOD_NOT_ALLOWED, 405, "Method not allowed")                                                           \
    X(REQUEST_TIMEOUT, 408, "Request timeout")                                                                 \
    X(LENGTH_REQUIRED, 411, "Length required")                                                                 \
    X(PAYLOAD_TOO_LARGE, 413, "Request body too large")                                                        \
    X(UNSUPPORTED_MEDIA_TYPE, 415, "Unsupported media type")                                                   \
    X(NOT_IMPLEMENTED, 501, "Not implemented")                                                                 \
    X(HTTP_VERSION_NOT_SUPPORTED, 505, "HTTP version not supported")                                           \
    X(SERVICE_UNAVAILABLE, 503, "Service temporarily unavailable")

typedef enum chat_proto_code {
#define CHAT_PROTO_X_ENUM(name, status, message) CHAT_PROTO_##name,
    CHAT_PROTO_ERRORS(CHAT_PROTO_X_ENUM)
#undef CHAT_PROTO_X_ENUM
    CHAT_PROTO_CODE_COUNT
} chat_proto_code;

/* The code's name as a string literal, e.g. CHAT_CODE(NOT_FOUND) is "NOT_FOUND": a name that is not a
 * row of the table does not compile (the enum constant is part of the expression, multiplied by 0 so
 * the result stays an address constant, usable in static initialisers). */
#define CHAT_CODE(name) (&(#name)[0 * CHAT_PROTO_##name])

/* The names the library has always used, kept for the modules that pass codes as strings. */
#define CHAT_CODE_AUTH_REQUIRED CHAT_CODE(AUTH_REQUIRED)
#define CHAT_CODE_EMPTY_MESSAGE CHAT_CODE(EMPTY_MESSAGE)
#define CHAT_CODE_PROCESSING_ERROR CHAT_CODE(PROCESSING_ERROR)
#define CHAT_CODE_INVALID_JSON CHAT_CODE(INVALID_JSON)
#define CHAT_CODE_UNKNOWN_TYPE CHAT_CODE(UNKNOWN_TYPE)
#define CHAT_CODE_MESSAGE_TOO_LONG CHAT_CODE(MESSAGE_TOO_LONG)
#define CHAT_CODE_SESSION_FORBIDDEN CHAT_CODE(SESSION_FORBIDDEN)
#define CHAT_CODE_CUSTOMER_FORBIDDEN CHAT_CODE(CUSTOMER_FORBIDDEN)
#define CHAT_CODE_RATE_LIMITED CHAT_CODE(RATE_LIMITED)
#define CHAT_CODE_OVERLOADED CHAT_CODE(OVERLOADED)
#define CHAT_CODE_INVALID_REQUEST CHAT_CODE(INVALID_REQUEST)
#define CHAT_CODE_INVALID_TOKEN CHAT_CODE(INVALID_TOKEN)
#define CHAT_CODE_TOKEN_EXPIRED CHAT_CODE(TOKEN_EXPIRED)
#define CHAT_CODE_USER_MISMATCH CHAT_CODE(USER_MISMATCH)

/* A code's name, HTTP status and default client message. An out-of-range value reads as
 * PROCESSING_ERROR, so a caller always has something to send. Static strings; any thread. */
const char *chat_proto_code_name(chat_proto_code c);
int chat_proto_code_status(chat_proto_code c);
const char *chat_proto_code_message(chat_proto_code c);
/* The code named name (exact, case-sensitive): true and *out set, or false for NULL or an unknown name. */
bool chat_proto_code_lookup(const char *name, chat_proto_code *out);

/* The progress steps of an answer, in the order they are sent, each once: the name in the progress
 * frame and its default message. The streamer sends STARTING when it accepts a message; the pipeline
 * reaches the others. */
#define CHAT_PROTO_STEPS(X)                                                                                   \
    X(STARTING, "starting", "Processing your message...")                                                      \
    X(AGENT_ROUTING, "agent_routing", "Routing to appropriate agent...")                                       \
    X(RAG_RETRIEVAL, "rag_retrieval", "Searching knowledge base...")                                           \
    X(GENERATING, "generating", "Generating response...")

typedef enum chat_proto_step {
#define CHAT_PROTO_X_STEP(id, name, message) CHAT_STEP_##id,
    CHAT_PROTO_STEPS(CHAT_PROTO_X_STEP)
#undef CHAT_PROTO_X_STEP
    CHAT_STEP_COUNT
} chat_proto_step;

/* A step's name and default message (static strings; an out-of-range value reads as STARTING). */
const char *chat_proto_step_name(chat_proto_step step);
const char *chat_proto_step_message(chat_proto_step step);
/* The step named name: true and *out set, or false for NULL or an unknown name. */
bool chat_proto_step_lookup(const char *name, chat_proto_step *out);

/* The frames' types, each once: X(ID, type). The client's (chat_in_type is generated from them: what
 * the parser accepts) and the servers' (what the builders write). */
#define CHAT_PROTO_CLIENT_FRAMES(X)                                                                           \
    X(AUTH, "auth")                                                                                            \
    X(MESSAGE, "message")                                                                                      \
    X(CANCEL, "cancel")                                                                                        \
    X(PING, "ping")                                                                                            \
    X(RESUME, "resume") /* follow a conversation, from a cursor */
#define CHAT_PROTO_SERVER_FRAMES(X)                                                                           \
    X(AUTH_SUCCESS, "auth_success")                                                                            \
    X(AUTH_ERROR, "auth_error")                                                                                \
    X(AUTH_EXPIRING, "auth_expiring") /* the token expires soon: send a fresh one */                          \
    X(PROGRESS, "progress")                                                                                    \
    X(TOKEN, "token")                                                                                          \
    X(COMPLETE, "complete")                                                                                    \
    X(ERROR, "error")                                                                                          \
    X(PONG, "pong")                                                                                            \
    X(RESUMED, "resumed")           /* the answer to a resume */                                               \
    X(USER_MESSAGE, "user_message") /* another connection of the user asked, in a conversation followed */

typedef enum chat_in_type {
    CHAT_IN_NONE = 0,
#define CHAT_PROTO_X_IN(id, type) CHAT_IN_##id,
    CHAT_PROTO_CLIENT_FRAMES(CHAT_PROTO_X_IN)
#undef CHAT_PROTO_X_IN
} chat_in_type;

typedef enum chat_proto_frame {
#define CHAT_PROTO_X_FRAME(id, type) CHAT_FRAME_##id,
    CHAT_PROTO_SERVER_FRAMES(CHAT_PROTO_X_FRAME)
#undef CHAT_PROTO_X_FRAME
    CHAT_FRAME_COUNT
} chat_proto_frame;

/* A frame type's name (static; "" when out of range). */
const char *chat_proto_frame_name(chat_proto_frame f);
const char *chat_proto_in_name(chat_in_type t);

typedef struct chat_in {
    chat_in_type type;
    char *token;       /* auth */
    char *message;     /* message: trimmed text, never empty when parse succeeded */
    char *session_id;  /* message: optional, validated with chat_id_valid */
    char *customer_id; /* optional, validated with chat_id_valid */
    bool partial;      /* message, resume: send partial_response with tokens (default true) */
    /* resume: the conversation to follow (required); cancel: the conversation whose answer to stop
     * (optional: without it, the answer this connection follows). Validated with chat_id_valid. */
    char *attach_session;
    char *answer_id;        /* resume: the answer last_seq counts pieces of (optional) */
    unsigned long long last_seq; /* resume: the seq of the last event received of it (default 0) */
} chat_in;

/* Parses one client frame. On success returns 0 and fills in (free with chat_in_clear).
 * On failure returns CHAT_EINVAL and sets *code to one of the CHAT_CODE_* strings and err to the
 * client-facing message; in holds nothing but in->type, set when the frame named a known type (an
 * auth frame without a valid token is still answered as an auth), 0 otherwise. max_message_bytes bounds
 * the "message" field (MESSAGE_TOO_LONG). */
int chat_proto_parse(const char *json, size_t len, size_t max_message_bytes, chat_in *in, const char **code,
                     char *err, size_t errlen);
void chat_in_clear(chat_in *in);

struct json_object;
/* The checks of a chat message, shared by the WebSocket's message frame and REST's chat body, so both
 * refuse the same things in the same order with the same words: message present (else EMPTY_MESSAGE), a
 * string without NUL and valid UTF-8 (INVALID_REQUEST), not empty once trimmed (EMPTY_MESSAGE), at most
 * max_message_bytes ("Message too long (maximum N bytes)", MESSAGE_TOO_LONG); then session_id and
 * customer_id (absent, null and "" mean none, else chat_id_valid) and partial (a boolean, default true),
 * INVALID_REQUEST. Other fields are ignored. On success fills in's message (trimmed copy), session_id,
 * customer_id and partial (free with chat_in_clear) and returns 0; on failure returns CHAT_EINVAL with
 * *code and err as chat_proto_parse does, and in holds nothing. obj is borrowed. */
int chat_proto_message_fields(struct json_object *obj, size_t max_message_bytes, chat_in *in, const char **code,
                              char *err, size_t errlen);

/* Recognises an auth attempt in a frame the parser cannot take (not JSON, or too long to be parsed), so
 * that it too is answered with auth_error: the frame has the member "type": "auth" at its top level
 * (any position, blanks allowed; escapes inside the two strings are not decoded). Fed in pieces, for a
 * frame that arrives in fragments: zero the struct at the frame's start, then call chat_proto_scan_feed
 * on each piece; auth is set once the member has been seen. O(1) memory. */
typedef struct chat_proto_scan {
    unsigned char depth; /* nesting of objects and arrays (saturating) */
    unsigned char len;   /* bytes of the current string so far (saturating at 5) */
    unsigned char seq;   /* 0; 1 after a top-level "type"; 2 after "type": */
    bool in_str, esc;
    bool is_type, is_auth; /* the current string is so far a prefix of "type" / "auth" */
    bool auth;
} chat_proto_scan;
void chat_proto_scan_feed(chat_proto_scan *sc, const char *data, size_t len);

/* The message text without leading and trailing whitespace (ASCII and the Unicode spaces): returns a
 * pointer into s and its length in *outlen. chat_proto_message_fields trims with it, so a message is
 * empty, or too long, the same way over WebSocket and REST. */
const char *chat_proto_trim(const char *s, size_t n, size_t *outlen);

/* The answer a frame belongs to: its conversation, its id (the request id its turn is stored under) and,
 * for token and complete frames, its seq (a token's: its last piece's number, counting from 1; the
 * complete's: one more than its last token's, so that a client holding it resumes past it). NULL or 0
 * fields are left out. */
typedef struct chat_proto_ref {
    const char *session_id;
    const char *answer_id;
    unsigned long long seq;
} chat_proto_ref;

char *chat_proto_auth_success(const chat_user *user);
/* code: one of the CHAT_CODE_* strings, so that a client can tell a refused token (INVALID_TOKEN,
 * TOKEN_EXPIRED) from a refused frame (MESSAGE_TOO_LONG, INVALID_JSON, INVALID_REQUEST, RATE_LIMITED...);
 * NULL omits the field (the spec's exact shape). */
char *chat_proto_auth_error(const char *message, const char *code);
/* {"type":"auth_expiring","expires_in":N}: the connection's token expires in N seconds; an auth message
 * with a fresh token for the same user keeps the connection going. */
char *chat_proto_auth_expiring(long long expires_in);
char *chat_proto_progress(const char *step); /* the step's default message ("Processing..." if unknown) */
char *chat_proto_progress_step(chat_proto_step step);
char *chat_proto_progress_msg(const char *step, const char *message);
/* progress with the answer's session_id and answer_id (ref may be NULL). */
char *chat_proto_progress_of(const chat_proto_ref *ref, const char *step, const char *message);
/* partial may be NULL: the field is then omitted (client opted out). */
char *chat_proto_token(const char *token, size_t token_len, const char *partial, size_t partial_len);
/* The JSON string body of s[0..n) (no quotes; invalid UTF-8 becomes U+FFFD), written to out when out is
 * not NULL; returns its length either way. Escaping goes character by character, so the escape of text
 * made of whole UTF-8 characters pieces is the concatenation of the pieces' escapes: the streamer
 * escapes each token once as it arrives and builds every frame from slices of the escaped answer. */
size_t chat_proto_escape(const char *s, size_t n, char *out);
/* The token frame from escaped text (chat_proto_escape), written to out when not NULL (no NUL added);
 * returns its length either way. partial_esc NULL: no partial_response. */
size_t chat_proto_token_escaped(char *out, const char *token_esc, size_t token_esc_len, const char *partial_esc,
                                size_t partial_esc_len);
/* The same with "seq" and "session_id" after the text (seq 0 and session_id NULL: left out, which is
 * chat_proto_token_escaped). session_id must need no escaping (chat_id_valid ids do not). */
size_t chat_proto_token_frame(char *out, const char *token_esc, size_t token_esc_len, const char *partial_esc,
                              size_t partial_esc_len, unsigned long long seq, const char *session_id);
/* metadata_json is a JSON object text (from the pipeline); embedded as an object, not a string. */
char *chat_proto_complete(const char *response, const char *session_id, const char *metadata_json);
/* complete with the answer's answer_id and seq as well (ref->session_id is the frame's session_id). */
char *chat_proto_complete_of(const chat_proto_ref *ref, const char *response, const char *metadata_json);
/* The complete that ends a cancelled answer nothing more is known of (it never reached a worker, or its
 * worker was lost after the cancel): response is the text the client already has, the metadata says
 * finish_reason "cancelled", the agent table's fallback agent (chat_agent.h), no sources and zero
 * usage. */
char *chat_proto_complete_cancelled(const char *response, const char *session_id);
char *chat_proto_complete_cancelled_of(const chat_proto_ref *ref, const char *response);
/* {"type":"resumed","session_id","in_flight","complete_follows"} answering a resume, with answer_id and
 * seq (the answer's pieces so far) when an answer of the session is held. complete_follows: the rest of
 * the answer (its complete at least) follows; false: nothing more of it comes. */
char *chat_proto_resumed(const chat_proto_ref *ref, bool in_flight, bool complete_follows);
/* {"type":"user_message","session_id","answer_id","message"}: a message of the conversation sent from
 * another connection of its user, before the answer to it. */
char *chat_proto_user_message(const chat_proto_ref *ref, const char *message);
char *chat_proto_error(const char *message, const char *code);
/* The error frame for out of memory, a static text for when even building one fails. */
extern const char chat_proto_error_oom[];
char *chat_proto_pong(void);

/* Client frames, for the programs that play the client (chat-ws, chat-bench, tests): the auth frame, and
 * the message frame with session_id / customer_id omitted when NULL and "partial": false only when
 * partial is false (true is the protocol's default). */
char *chat_proto_client_auth(const char *token);
char *chat_proto_client_message(const char *message, const char *session_id, const char *customer_id, bool partial);
/* {"type":"resume","session_id","last_seq"?,"answer_id"?}: last_seq 0 and answer_id NULL are left out. */
char *chat_proto_client_resume(const char *session_id, unsigned long long last_seq, const char *answer_id);
/* The REST chat request body {"message", "session_id"?, "customer_id"?}. */
char *chat_proto_rest_request(const char *message, const char *session_id, const char *customer_id);

/* {"error": message, "code": code} for REST. */
char *chat_proto_rest_error(const char *message, const char *code);
/* REST's chat answer {"response", "session_id", "metadata"}: the complete frame without its type, the
 * session id always a string. metadata_json as for chat_proto_complete. */
char *chat_proto_rest_answer(const char *response, const char *session_id, const char *metadata_json);
/* The REST error body for out of memory, a static text for when even building one fails. */
extern const char chat_proto_rest_error_oom[];

/* For the wire formats built on this protocol's events (the OpenAI-compatible API, chat_openai_api.h):
 * the pipeline's metadata text as a json-c object ({} when absent or not a JSON object), and a json-c
 * string of s[0..n) (NULL: "") repaired as every builder here repairs strings. NULL on out of memory; the
 * caller puts them. */
struct json_object *chat_proto_metadata_object(const char *metadata_json);
struct json_object *chat_proto_json_string(const char *s, size_t n);

#endif
