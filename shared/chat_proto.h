/* The JSON protocol of the spec (json-c): parse client frames, build server frames.
 *
 * Builders return a NUL-terminated JSON text the caller frees, or NULL on out of memory. The parser
 * validates shape and sizes so that front ends only dispatch. */
#ifndef CHAT_PROTO_H
#define CHAT_PROTO_H

#include <stdbool.h>
#include <stddef.h>

#include "chat_jwt.h"

/* Error codes of the protocol (the spec's three plus the ones it leaves implicit). */
#define CHAT_CODE_AUTH_REQUIRED "AUTH_REQUIRED"
#define CHAT_CODE_EMPTY_MESSAGE "EMPTY_MESSAGE"
#define CHAT_CODE_PROCESSING_ERROR "PROCESSING_ERROR"
#define CHAT_CODE_INVALID_JSON "INVALID_JSON"
#define CHAT_CODE_UNKNOWN_TYPE "UNKNOWN_TYPE"
#define CHAT_CODE_MESSAGE_TOO_LONG "MESSAGE_TOO_LONG"
#define CHAT_CODE_SESSION_FORBIDDEN "SESSION_FORBIDDEN"
#define CHAT_CODE_CUSTOMER_FORBIDDEN "CUSTOMER_FORBIDDEN" /* customer_id names someone else's records */
#define CHAT_CODE_RATE_LIMITED "RATE_LIMITED"
#define CHAT_CODE_OVERLOADED "OVERLOADED"
#define CHAT_CODE_INVALID_REQUEST "INVALID_REQUEST" /* a field of the wrong type or format */
/* auth_error only: the token was refused (REST answers 401 with the same codes) */
#define CHAT_CODE_INVALID_TOKEN "INVALID_TOKEN"
#define CHAT_CODE_TOKEN_EXPIRED "TOKEN_EXPIRED"
#define CHAT_CODE_USER_MISMATCH "USER_MISMATCH" /* a token for another user than the connection's */

typedef enum { CHAT_IN_AUTH = 1, CHAT_IN_MESSAGE, CHAT_IN_CANCEL, CHAT_IN_PING } chat_in_type;

typedef struct chat_in {
    chat_in_type type;
    char *token;       /* auth */
    char *message;     /* message: trimmed text, never empty when parse succeeded */
    char *session_id;  /* optional, validated with chat_id_valid */
    char *customer_id; /* optional, validated with chat_id_valid */
    bool partial;      /* message: send partial_response with tokens (default true) */
} chat_in;

/* Parses one client frame. On success returns 0 and fills in (free with chat_in_clear).
 * On failure returns CHAT_EINVAL and sets *code to one of the CHAT_CODE_* strings and err to the
 * client-facing message; in holds nothing but in->type, set when the frame named a known type (an
 * auth frame without a valid token is still answered as an auth), 0 otherwise. max_message_bytes bounds
 * the "message" field (MESSAGE_TOO_LONG). */
int chat_proto_parse(const char *json, size_t len, size_t max_message_bytes, chat_in *in, const char **code,
                     char *err, size_t errlen);
void chat_in_clear(chat_in *in);

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

/* The message text without leading and trailing whitespace (ASCII and the Unicode spaces): returns a pointer into s and its length in *outlen. Both front ends use it,
 * so a message is empty, or too long, the same way over WebSocket and REST. */
const char *chat_proto_trim(const char *s, size_t n, size_t *outlen);

char *chat_proto_auth_success(const chat_user *user);
/* code: one of the CHAT_CODE_* strings, so that a client can tell a refused token (INVALID_TOKEN,
 * TOKEN_EXPIRED) from a refused frame (MESSAGE_TOO_LONG, INVALID_JSON, INVALID_REQUEST, RATE_LIMITED...);
 * NULL omits the field (the spec's exact shape). */
char *chat_proto_auth_error(const char *message, const char *code);
/* {"type":"auth_expiring","expires_in":N}: the connection's token expires in N seconds; an auth message
 * with a fresh token for the same user keeps the connection going. */
char *chat_proto_auth_expiring(long long expires_in);
char *chat_proto_progress(const char *step); /* message text chosen per step */
char *chat_proto_progress_msg(const char *step, const char *message);
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
/* metadata_json is a JSON object text (from the pipeline); embedded as an object, not a string. */
char *chat_proto_complete(const char *response, const char *session_id, const char *metadata_json);
char *chat_proto_error(const char *message, const char *code);

/* {"error": message, "code": code} for REST. */
char *chat_proto_rest_error(const char *message, const char *code);

#endif
