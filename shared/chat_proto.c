/* The spec's JSON protocol: client frames in, server frames out.
 *
 * Parsing uses a json_tokener with a depth limit and UTF-8 validation and insists the whole frame was
 * consumed (trailing whitespace aside), so a front end receives either a fully validated chat_in or one
 * CHAT_CODE_* with a client-facing message. Messages are trimmed of whitespace (ASCII and the Unicode
 * spaces), so "only spaces" is empty whatever the client's keyboard.
 *
 * The error codes and the progress steps are X-macro tables in chat_proto.h (CHAT_PROTO_ERRORS,
 * CHAT_PROTO_STEPS): the arrays below are generated from them, so each code and step is spelt once.
 *
 * Builders use json-c except chat_proto_token, which runs once per LLM token on the streamer's hot path
 * and is written by hand: one sizing pass, one malloc, one writing pass. Its escaper emits the short
 * escapes json-c uses (\n \t ...), \u00XX for other control bytes, and passes UTF-8 through untouched;
 * a malformed byte (an LLM token that cut a character in half) becomes U+FFFD so the frame stays valid
 * UTF-8, which a WebSocket text frame must be. Every builder repairs strings the same way. */
#include "chat_proto.h"

#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_agent.h"
#include "chat_common.h"
#include "chat_util.h"

#define PROTO_JSON_DEPTH 16
#define PROTO_TYPE_SHOWN 32
#define TO_STRING_FLAGS (JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE)

static const char REPLACEMENT[3] = {(char)0xEF, (char)0xBF, (char)0xBD}; /* U+FFFD */

/* ---- the tables ---- */

static const struct {
    const char *name; /* first: find_row reads it */
    int status;
    const char *message;
} codes[] = {
#define CODE_ROW(name, status, message) {#name, status, message},
    CHAT_PROTO_ERRORS(CODE_ROW)
#undef CODE_ROW
};

static const struct {
    const char *name; /* first: find_row reads it */
    const char *message;
} steps[] = {
#define STEP_ROW(id, name, message) {name, message},
    CHAT_PROTO_STEPS(STEP_ROW)
#undef STEP_ROW
};

static const char *const frame_names[] = {
#define FRAME_ROW(id, type) [CHAT_FRAME_##id] = type,
    CHAT_PROTO_SERVER_FRAMES(FRAME_ROW)
#undef FRAME_ROW
};

static const char *const in_names[] = {
#define IN_ROW(id, type) [CHAT_IN_##id] = type,
    CHAT_PROTO_CLIENT_FRAMES(IN_ROW)
#undef IN_ROW
};

const char *chat_proto_frame_name(chat_proto_frame f)
{
    return (unsigned)f < CHAT_FRAME_COUNT ? frame_names[f] : "";
}

const char *chat_proto_in_name(chat_in_type t)
{
    return t > CHAT_IN_NONE && (size_t)t < CHAT_ARRAY_LEN(in_names) ? in_names[t] : "";
}

/* A server frame's type (a table row: a name not in it does not compile). */
#define TYPE(id) frame_names[CHAT_FRAME_##id]
/* A client frame's type. */
#define IN_TYPE(id) in_names[CHAT_IN_##id]

/* The row of a code or step; an out-of-range value reads as the fallback row the header promises. */
#define CODE_AT(c) codes[(unsigned)(c) < CHAT_PROTO_CODE_COUNT ? (c) : CHAT_PROTO_PROCESSING_ERROR]
#define STEP_AT(s) steps[(unsigned)(s) < CHAT_STEP_COUNT ? (s) : CHAT_STEP_STARTING]

/* The row of table (n rows of stride bytes, each starting with its name) named name, or -1. */
static int find_row(const void *table, size_t n, size_t stride, const char *name)
{
    for (size_t i = 0; name && i < n; i++)
        if (!strcmp(name, *(const char *const *)((const char *)table + i * stride))) return (int)i;
    return -1;
}

const char *chat_proto_code_name(chat_proto_code c) { return CODE_AT(c).name; }
int chat_proto_code_status(chat_proto_code c) { return CODE_AT(c).status; }
const char *chat_proto_code_message(chat_proto_code c) { return CODE_AT(c).message; }

bool chat_proto_code_lookup(const char *name, chat_proto_code *out)
{
    int i = find_row(codes, CHAT_ARRAY_LEN(codes), sizeof codes[0], name);
    if (i >= 0 && out) *out = (chat_proto_code)i;
    return i >= 0;
}

const char *chat_proto_step_name(chat_proto_step step) { return STEP_AT(step).name; }
const char *chat_proto_step_message(chat_proto_step step) { return STEP_AT(step).message; }

bool chat_proto_step_lookup(const char *name, chat_proto_step *out)
{
    int i = find_row(steps, CHAT_ARRAY_LEN(steps), sizeof steps[0], name);
    if (i >= 0 && out) *out = (chat_proto_step)i;
    return i >= 0;
}

/* ---- UTF-8 ---- */

/* Length (1..4) of the well-formed UTF-8 character at p, 0 when malformed or cut short: the escaper
 * and the trimmer replace or stop at anything that is not a whole character. */
static size_t utf8_len(const unsigned char *p, size_t avail)
{
    size_t n = chat_utf8_char((const char *)p, avail);
    return n == CHAT_UTF8_CUT ? 0 : n;
}

static unsigned long utf8_decode(const unsigned char *p, size_t n)
{
    if (n == 1) return p[0];
    unsigned long cp = p[0] & (0x7F >> n);
    for (size_t i = 1; i < n; i++)
        cp = (cp << 6) | (p[i] & 0x3F);
    return cp;
}

/* Whitespace code points: ASCII separators and the Unicode space characters. */
static bool is_space_cp(unsigned long cp)
{
    return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

/* Trims whitespace at both ends of valid UTF-8 s[0..n); returns the kept range. */
const char *chat_proto_trim(const char *s, size_t n, size_t *outlen)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t b = 0, e = n;
    while (b < e) {
        size_t k = utf8_len(p + b, e - b);
        if (!k || !is_space_cp(utf8_decode(p + b, k))) break;
        b += k;
    }
    while (e > b) {
        size_t start = e - 1;
        while (start > b && (p[start] & 0xC0) == 0x80 && e - start < 4)
            start--;
        size_t k = utf8_len(p + start, e - start);
        if (k != e - start || !is_space_cp(utf8_decode(p + start, k))) break;
        e = start;
    }
    *outlen = e - b;
    return s + b;
}

/* ---- the escaper ---- */

/* Writes the JSON string body (no quotes) for s[0..n) to out when out is non-NULL; returns its length
 * either way, so a caller sizes with out = NULL and then writes. */
size_t chat_proto_escape(const char *s, size_t n, char *out)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0, i = 0;
    while (i < n) {
        size_t run = i;
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            if (out) memcpy(out + o, p + i, run - i);
            o += run - i;
            i = run;
            if (i == n) break;
        }
        unsigned char c = p[i];
        if (c >= 0x80) {
            size_t k = utf8_len(p + i, n - i);
            if (k) {
                if (out) memcpy(out + o, p + i, k);
                o += k, i += k;
            } else {
                if (out) memcpy(out + o, REPLACEMENT, 3);
                o += 3, i++;
            }
            continue;
        }
        char short_esc = 0;
        switch (c) {
        case '"': short_esc = '"'; break;
        case '\\': short_esc = '\\'; break;
        case '\n': short_esc = 'n'; break;
        case '\r': short_esc = 'r'; break;
        case '\t': short_esc = 't'; break;
        case '\b': short_esc = 'b'; break;
        case '\f': short_esc = 'f'; break;
        default: break;
        }
        if (short_esc) {
            if (out) out[o] = '\\', out[o + 1] = short_esc;
            o += 2;
        } else {
            if (out) {
                memcpy(out + o, "\\u00", 4);
                out[o + 4] = hex[c >> 4];
                out[o + 5] = hex[c & 0xF];
            }
            o += 6;
        }
        i++;
    }
    return o;
}

/* ---- builders ---- */

/* A json-c string from s[0..n), with malformed UTF-8 replaced by U+FFFD (NULL gives ""). */
json_object *chat_proto_json_string(const char *s, size_t n)
{
    if (!s) s = "", n = 0;
    if (chat_utf8_valid(s, n)) return json_object_new_string_len(s, (int)(n > INT_MAX ? INT_MAX : n));
    chat_buf b;
    chat_buf_init(&b);
    const unsigned char *p = (const unsigned char *)s;
    for (size_t i = 0; i < n;) {
        size_t k = utf8_len(p + i, n - i);
        int rc = k ? chat_buf_append(&b, p + i, k) : chat_buf_append(&b, REPLACEMENT, 3);
        if (rc) {
            chat_buf_free(&b);
            return NULL;
        }
        i += k ? k : 1;
    }
    json_object *o = b.len <= INT_MAX ? json_object_new_string_len(b.data, (int)b.len) : NULL;
    chat_buf_free(&b);
    return o;
}

static json_object *new_str(const char *s)
{
    return chat_proto_json_string(s, s ? strlen(s) : 0);
}

/* Adds val under key; on failure (val NULL or insertion failed) frees val and returns -1. */
static int add(json_object *obj, const char *key, json_object *val)
{
    if (!val) return -1;
    if (json_object_object_add(obj, key, val) != 0) {
        json_object_put(val);
        return -1;
    }
    return 0;
}

static int add_str(json_object *obj, const char *key, const char *s)
{
    return add(obj, key, new_str(s));
}

/* Adds a string, or JSON null when s is NULL or empty. */
static int add_str_or_null(json_object *obj, const char *key, const char *s)
{
    if (!s || !*s) return json_object_object_add(obj, key, NULL) == 0 ? 0 : -1;
    return add_str(obj, key, s);
}

/* Serialises obj into a malloc'd string and releases obj. */
static char *finish(json_object *obj, int failed)
{
    char *out = NULL;
    if (obj && !failed) {
        const char *s = json_object_to_json_string_ext(obj, TO_STRING_FLAGS);
        if (s) out = strdup(s);
    }
    json_object_put(obj);
    return out;
}

char *chat_proto_auth_success(const chat_user *user)
{
    static const chat_user nobody;
    if (!user) user = &nobody;
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", TYPE(AUTH_SUCCESS)) || add_str(o, "message", "Authentication successful");
    json_object *u = failed ? NULL : json_object_new_object();
    if (!u) return finish(o, 1);
    if (add_str(u, "id", user->id) || add_str_or_null(u, "email", user->email) ||
        add_str_or_null(u, "name", user->name)) {
        json_object_put(u);
        return finish(o, 1);
    }
    return finish(o, add(o, "user", u));
}

char *chat_proto_auth_error(const char *message, const char *code)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", TYPE(AUTH_ERROR)) || add_str(o, "message", message ? message : "Invalid token") ||
                 (code && add_str(o, "code", code));
    return finish(o, failed);
}

char *chat_proto_auth_expiring(long long expires_in)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", TYPE(AUTH_EXPIRING)) || add(o, "expires_in", json_object_new_int64(expires_in));
    return finish(o, failed);
}

char *chat_proto_progress(const char *step)
{
    chat_proto_step id;
    return chat_proto_progress_msg(step, chat_proto_step_lookup(step, &id) ? steps[id].message : "Processing...");
}

char *chat_proto_progress_step(chat_proto_step step)
{
    return chat_proto_progress_msg(chat_proto_step_name(step), chat_proto_step_message(step));
}

char *chat_proto_progress_msg(const char *step, const char *message)
{
    return chat_proto_progress_of(NULL, step, message);
}

/* The answer's fields of a frame: session_id (when given), answer_id and seq (when set). */
static int add_ref(json_object *o, const chat_proto_ref *ref)
{
    if (!ref) return 0;
    return (ref->session_id && add_str(o, "session_id", ref->session_id)) ||
           (ref->answer_id && *ref->answer_id && add_str(o, "answer_id", ref->answer_id)) ||
           (ref->seq && add(o, "seq", json_object_new_int64((int64_t)(ref->seq > INT64_MAX ? INT64_MAX : ref->seq))));
}

char *chat_proto_progress_of(const chat_proto_ref *ref, const char *step, const char *message)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", TYPE(PROGRESS)) || add_str(o, "step", step) || add_str(o, "message", message) ||
                 add_ref(o, ref);
    return finish(o, failed);
}

size_t chat_proto_token_frame(char *out, const char *token_esc, size_t token_esc_len, const char *partial_esc,
                              size_t partial_esc_len, unsigned long long seq, const char *session_id)
{
    static const char head[] = "{\"type\":\"token\",\"token\":\""; /* TYPE(TOKEN), written out: per token */
    static const char mid[] = "\",\"partial_response\":\"";
    static const char seq_key[] = "\",\"seq\":";
    static const char sid_key[] = ",\"session_id\":\"";
    size_t sl = session_id ? strlen(session_id) : 0;
    size_t tail = seq ? sizeof seq_key - 1 + chat_u64_dec(NULL, seq) + (session_id ? sizeof sid_key - 1 + sl + 1 : 0) + 1
                      : 2; /* "} or ",...} */
    size_t total = sizeof head - 1 + token_esc_len + (partial_esc ? sizeof mid - 1 + partial_esc_len : 0) + tail;
    if (!out) return total;
    char *w = out;
    memcpy(w, head, sizeof head - 1), w += sizeof head - 1;
    if (token_esc_len) memcpy(w, token_esc, token_esc_len), w += token_esc_len;
    if (partial_esc) {
        memcpy(w, mid, sizeof mid - 1), w += sizeof mid - 1;
        if (partial_esc_len) memcpy(w, partial_esc, partial_esc_len), w += partial_esc_len;
    }
    if (!seq) {
        memcpy(w, "\"}", 2);
        return total;
    }
    memcpy(w, seq_key, sizeof seq_key - 1), w += sizeof seq_key - 1;
    w += chat_u64_dec(w, seq);
    if (session_id) {
        memcpy(w, sid_key, sizeof sid_key - 1), w += sizeof sid_key - 1;
        if (sl) memcpy(w, session_id, sl), w += sl;
        *w++ = '"';
    }
    *w = '}';
    return total;
}

size_t chat_proto_token_escaped(char *out, const char *token_esc, size_t token_esc_len, const char *partial_esc,
                                size_t partial_esc_len)
{
    return chat_proto_token_frame(out, token_esc, token_esc_len, partial_esc, partial_esc_len, 0, NULL);
}

char *chat_proto_token(const char *token, size_t token_len, const char *partial, size_t partial_len)
{
    if (!token) token_len = 0, token = "";
    size_t tl = chat_proto_escape(token, token_len, NULL);
    size_t pl = partial ? chat_proto_escape(partial, partial_len, NULL) : 0;
    char *esc = malloc(tl + pl + 1);
    if (!esc) return NULL;
    chat_proto_escape(token, token_len, esc);
    if (partial) chat_proto_escape(partial, partial_len, esc + tl);
    size_t total = chat_proto_token_escaped(NULL, esc, tl, partial ? esc + tl : NULL, pl);
    char *out = malloc(total + 1);
    if (out) {
        chat_proto_token_escaped(out, esc, tl, partial ? esc + tl : NULL, pl);
        out[total] = '\0';
    }
    free(esc);
    return out;
}

/* The pipeline's metadata as an object; {} when absent or not a JSON object. */
json_object *chat_proto_metadata_object(const char *text)
{
    json_object *m = NULL;
    size_t n = text ? strlen(text) : 0;
    if (n && n <= INT_MAX) {
        json_tokener *tok = json_tokener_new_ex(PROTO_JSON_DEPTH);
        if (tok) {
            json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
            m = json_tokener_parse_ex(tok, text, (int)n);
            if (!m || json_tokener_get_parse_end(tok) != n || !json_object_is_type(m, json_type_object)) {
                json_object_put(m);
                m = NULL;
            }
            json_tokener_free(tok);
        }
    }
    return m ? m : json_object_new_object();
}

char *chat_proto_complete(const char *response, const char *session_id, const char *metadata_json)
{
    chat_proto_ref ref = {session_id, NULL, 0};
    return chat_proto_complete_of(&ref, response, metadata_json);
}

/* The answer_id and seq of a complete (its session_id goes where the spec puts it). */
static int add_answer_of(json_object *o, const chat_proto_ref *ref)
{
    chat_proto_ref rest = {NULL, ref->answer_id, ref->seq};
    return add_ref(o, &rest);
}

char *chat_proto_complete_of(const chat_proto_ref *ref, const char *response, const char *metadata_json)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", TYPE(COMPLETE)) || add_str(o, "response", response) ||
                 add_str_or_null(o, "session_id", ref->session_id) || add(o, "metadata", chat_proto_metadata_object(metadata_json)) ||
                 add_answer_of(o, ref);
    return finish(o, failed);
}

/* {key: val}; NULL on failure (val is freed). */
static json_object *obj1(const char *key, json_object *val)
{
    json_object *o = json_object_new_object();
    if (!o) {
        json_object_put(val);
        return NULL;
    }
    if (add(o, key, val)) {
        json_object_put(o);
        return NULL;
    }
    return o;
}

static json_object *zero_usage(void)
{
    json_object *u = obj1("prompt_tokens", json_object_new_int(0));
    if (u && add(u, "completion_tokens", json_object_new_int(0))) {
        json_object_put(u);
        return NULL;
    }
    return u;
}

/* The metadata of a cancelled answer that produced nothing measurable. Each part is built only when the
 * parts before it were added (||), so a failure leaks nothing. */
static json_object *cancelled_metadata(void)
{
    json_object *m = json_object_new_object();
    if (!m) return NULL;
    int failed = add_str(m, "agent", chat_agent_fallback()->name) || add(m, "confidence", json_object_new_int(0)) ||
                 add(m, "context", obj1("sources", json_object_new_array())) ||
                 add_str(m, "finish_reason", "cancelled") || add(m, "usage", zero_usage()) ||
                 add(m, "timings", json_object_new_object());
    if (!failed) return m;
    json_object_put(m);
    return NULL;
}

char *chat_proto_complete_cancelled(const char *response, const char *session_id)
{
    chat_proto_ref ref = {session_id, NULL, 0};
    return chat_proto_complete_cancelled_of(&ref, response);
}

char *chat_proto_complete_cancelled_of(const chat_proto_ref *ref, const char *response)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", TYPE(COMPLETE)) || add_str(o, "response", response) ||
                 add_str_or_null(o, "session_id", ref->session_id) || add(o, "metadata", cancelled_metadata()) ||
                 add_answer_of(o, ref);
    return finish(o, failed);
}

char *chat_proto_resumed(const chat_proto_ref *ref, bool in_flight, bool complete_follows)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    chat_proto_ref answer = {NULL, ref->answer_id, ref->answer_id && *ref->answer_id ? ref->seq : 0};
    int failed = add_str(o, "type", TYPE(RESUMED)) || add_str(o, "session_id", ref->session_id) ||
                 add(o, "in_flight", json_object_new_boolean(in_flight)) ||
                 add(o, "complete_follows", json_object_new_boolean(complete_follows)) || add_ref(o, &answer);
    if (!failed && answer.answer_id && !answer.seq) failed = add(o, "seq", json_object_new_int(0));
    return finish(o, failed);
}

char *chat_proto_user_message(const chat_proto_ref *ref, const char *message)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    chat_proto_ref ids = {ref->session_id, ref->answer_id, 0};
    int failed = add_str(o, "type", TYPE(USER_MESSAGE)) || add_ref(o, &ids) || add_str(o, "message", message);
    return finish(o, failed);
}

char *chat_proto_rest_answer(const char *response, const char *session_id, const char *metadata_json)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "response", response) || add_str(o, "session_id", session_id) ||
                 add(o, "metadata", chat_proto_metadata_object(metadata_json));
    return finish(o, failed);
}

char *chat_proto_pong(void)
{
    return finish(obj1("type", new_str(TYPE(PONG))), 0);
}

const char chat_proto_error_oom[] = "{\"type\":\"error\",\"error\":\"Out of memory\",\"code\":\"PROCESSING_ERROR\"}";

char *chat_proto_error(const char *message, const char *code)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", TYPE(ERROR)) || add_str(o, "error", message) ||
                 add_str(o, "code", code ? code : CHAT_CODE_PROCESSING_ERROR);
    return finish(o, failed);
}

char *chat_proto_rest_error(const char *message, const char *code)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "error", message) || add_str(o, "code", code ? code : CHAT_CODE_PROCESSING_ERROR);
    return finish(o, failed);
}

const char chat_proto_rest_error_oom[] = "{\"error\":\"Internal error\",\"code\":\"PROCESSING_ERROR\"}";

/* ---- client frames ---- */

char *chat_proto_client_auth(const char *token)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    return finish(o, add_str(o, "type", IN_TYPE(AUTH)) || add_str(o, "token", token));
}

/* The fields of a chat request; the optional ids only when given. */
static int add_request(json_object *o, const char *message, const char *session_id, const char *customer_id)
{
    return add_str(o, "message", message) || (session_id && add_str(o, "session_id", session_id)) ||
           (customer_id && add_str(o, "customer_id", customer_id));
}

char *chat_proto_client_message(const char *message, const char *session_id, const char *customer_id, bool partial)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", IN_TYPE(MESSAGE)) || add_request(o, message, session_id, customer_id) ||
                 (!partial && add(o, "partial", json_object_new_boolean(0)));
    return finish(o, failed);
}

char *chat_proto_client_resume(const char *session_id, unsigned long long last_seq, const char *answer_id)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add_str(o, "type", IN_TYPE(RESUME)) || add_str(o, "session_id", session_id) ||
                 (last_seq && add(o, "last_seq", json_object_new_int64((int64_t)(last_seq > INT64_MAX ? INT64_MAX : last_seq)))) ||
                 (answer_id && add_str(o, "answer_id", answer_id));
    return finish(o, failed);
}

char *chat_proto_rest_request(const char *message, const char *session_id, const char *customer_id)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    return finish(o, add_request(o, message, session_id, customer_id));
}

/* ---- parser ---- */

static int bad(const char **code, const char *c, char *err, size_t errlen, const char *msg)
{
    if (code) *code = c;
    return chat_fail(err, errlen, CHAT_EINVAL, "%s", msg);
}

/* An optional identifier: absent, null and "" (what form-built clients send for "none") leave *dst NULL;
 * a string must pass chat_id_valid; anything else is an error. */
static int optional_id(json_object *root, const char *key, char **dst)
{
    json_object *o;
    *dst = NULL;
    if (!json_object_object_get_ex(root, key, &o) || !o) return 0;
    if (!json_object_is_type(o, json_type_string)) return CHAT_EINVAL;
    const char *s = json_object_get_string(o);
    if ((size_t)json_object_get_string_len(o) != strlen(s)) return CHAT_EINVAL;
    if (!*s) return 0;
    if (!chat_id_valid(s)) return CHAT_EINVAL;
    *dst = strdup(s);
    return *dst ? 0 : CHAT_ENOMEM;
}

/* A required string member and how its problems are worded: missing (absent, null or ""), not a
 * string, or with a NUL byte inside. */
typedef struct string_rule {
    const char *key;
    const char *missing_code, *missing;
    const char *not_string, *nul;
} string_rule;

static const string_rule TOKEN_RULE = {"token", CHAT_CODE_INVALID_REQUEST, "Missing token", "Token must be a string",
                                       "Token must be a string"};
static const string_rule MESSAGE_RULE = {"message", CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty",
                                         "Message must be a string", "Message must not contain NUL"};

/* The member's string into *s (valid while root lives) and *n, or the rule's error. */
static int string_member(json_object *root, const string_rule *r, const char **s, size_t *n, const char **code,
                         char *err, size_t errlen)
{
    json_object *o;
    if (!json_object_object_get_ex(root, r->key, &o) || !o) return bad(code, r->missing_code, err, errlen, r->missing);
    if (!json_object_is_type(o, json_type_string))
        return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, r->not_string);
    *s = json_object_get_string(o);
    *n = (size_t)json_object_get_string_len(o);
    if (strlen(*s) != *n) return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, r->nul);
    if (*n == 0) return bad(code, r->missing_code, err, errlen, r->missing);
    return 0;
}

static int parse_auth(json_object *root, chat_in *in, const char **code, char *err, size_t errlen)
{
    const char *s;
    size_t n;
    int rc = string_member(root, &TOKEN_RULE, &s, &n, code, err, errlen);
    if (!rc && !(in->token = strdup(s))) rc = bad(code, CHAT_CODE_PROCESSING_ERROR, err, errlen, "Out of memory");
    return rc;
}

static int check_message(json_object *root, size_t max_bytes, chat_in *in, const char **code, char *err, size_t errlen)
{
    const char *s;
    size_t n;
    int rc = string_member(root, &MESSAGE_RULE, &s, &n, code, err, errlen);
    if (rc) return rc;
    if (!chat_utf8_valid(s, n)) return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "Message must be UTF-8");
    size_t kept;
    const char *t = chat_proto_trim(s, n, &kept);
    if (kept == 0) return bad(code, CHAT_CODE_EMPTY_MESSAGE, err, errlen, "Message cannot be empty");
    if (kept > max_bytes) {
        if (code) *code = CHAT_CODE_MESSAGE_TOO_LONG;
        return chat_fail(err, errlen, CHAT_EINVAL, "Message too long (maximum %zu bytes)", max_bytes);
    }

    rc = optional_id(root, "session_id", &in->session_id);
    if (rc == CHAT_EINVAL) return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "Invalid session_id");
    if (rc == 0) rc = optional_id(root, "customer_id", &in->customer_id);
    if (rc == CHAT_EINVAL) return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "Invalid customer_id");
    if (rc) return bad(code, CHAT_CODE_PROCESSING_ERROR, err, errlen, "Out of memory");

    in->partial = true;
    json_object *o;
    if (json_object_object_get_ex(root, "partial", &o) && o) {
        if (!json_object_is_type(o, json_type_boolean))
            return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "partial must be a boolean");
        in->partial = json_object_get_boolean(o);
    }

    in->message = strndup(t, kept);
    if (!in->message) return bad(code, CHAT_CODE_PROCESSING_ERROR, err, errlen, "Out of memory");
    return 0;
}

/* resume: session_id (required), last_seq (a non-negative integer), answer_id, partial. */
static int parse_resume(json_object *root, chat_in *in, const char **code, char *err, size_t errlen)
{
    int rc = optional_id(root, "session_id", &in->attach_session);
    if (rc == CHAT_ENOMEM) return bad(code, CHAT_CODE_PROCESSING_ERROR, err, errlen, "Out of memory");
    if (rc || !in->attach_session) return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "Invalid session_id");
    rc = optional_id(root, "answer_id", &in->answer_id);
    if (rc == CHAT_ENOMEM) return bad(code, CHAT_CODE_PROCESSING_ERROR, err, errlen, "Out of memory");
    if (rc) return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "Invalid answer_id");
    json_object *o;
    if (json_object_object_get_ex(root, "last_seq", &o) && o) {
        if (!json_object_is_type(o, json_type_int) || json_object_get_int64(o) < 0)
            return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "last_seq must be a non-negative integer");
        in->last_seq = (unsigned long long)json_object_get_int64(o);
    }
    in->partial = true;
    if (json_object_object_get_ex(root, "partial", &o) && o) {
        if (!json_object_is_type(o, json_type_boolean))
            return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "partial must be a boolean");
        in->partial = json_object_get_boolean(o);
    }
    return 0;
}

int chat_proto_message_fields(json_object *obj, size_t max_message_bytes, chat_in *in, const char **code, char *err,
                              size_t errlen)
{
    if (code) *code = NULL;
    in->message = in->session_id = in->customer_id = NULL;
    if (!json_object_is_type(obj, json_type_object))
        return bad(code, CHAT_CODE_INVALID_REQUEST, err, errlen, "The request must be a JSON object");
    int rc = check_message(obj, max_message_bytes, in, code, err, errlen);
    if (rc) {
        free(in->message);
        free(in->session_id);
        free(in->customer_id);
        in->message = in->session_id = in->customer_id = NULL;
    }
    return rc;
}

/* "Unknown message type: X" with X cut to 32 bytes and reduced to a harmless alphabet, so a client
 * cannot smuggle markup or control bytes into a message that may be displayed or logged. */
static int unknown_type(const char *type, size_t len, const char **code, char *err, size_t errlen)
{
    char shown[PROTO_TYPE_SHOWN + 1];
    size_t i = 0;
    for (; i < len && i < PROTO_TYPE_SHOWN; i++) {
        unsigned char c = (unsigned char)type[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
                  c == '.' || c == ':';
        shown[i] = ok ? (char)c : '?';
    }
    shown[i] = '\0';
    if (code) *code = CHAT_CODE_UNKNOWN_TYPE;
    return chat_fail(err, errlen, CHAT_EINVAL, "Unknown message type: %s", shown);
}

int chat_proto_parse(const char *json, size_t len, size_t max_message_bytes, chat_in *in, const char **code, char *err,
                     size_t errlen)
{
    if (code) *code = NULL;
    if (!in) return bad(code, CHAT_CODE_PROCESSING_ERROR, err, errlen, "Internal error");
    memset(in, 0, sizeof *in);
    if (!json || len == 0 || len > INT_MAX) return bad(code, CHAT_CODE_INVALID_JSON, err, errlen, "Invalid JSON");

    json_tokener *tok = json_tokener_new_ex(PROTO_JSON_DEPTH);
    if (!tok) return bad(code, CHAT_CODE_PROCESSING_ERROR, err, errlen, "Out of memory");
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *root = json_tokener_parse_ex(tok, json, (int)len);
    bool whole = root && json_tokener_get_error(tok) == json_tokener_success && json_tokener_get_parse_end(tok) == len;
    json_tokener_free(tok);

    int rc;
    if (!whole || !json_object_is_type(root, json_type_object)) {
        rc = bad(code, CHAT_CODE_INVALID_JSON, err, errlen, "Invalid JSON");
        goto cleanup;
    }
    json_object *t;
    if (!json_object_object_get_ex(root, "type", &t) || !json_object_is_type(t, json_type_string)) {
        rc = bad(code, CHAT_CODE_INVALID_JSON, err, errlen, "Missing message type");
        goto cleanup;
    }
    const char *type = json_object_get_string(t);
    size_t tlen = (size_t)json_object_get_string_len(t);
    size_t k = CHAT_IN_NONE + 1;
    while (tlen == strlen(type) && k < CHAT_ARRAY_LEN(in_names) && strcmp(type, in_names[k]))
        k++;
    in->type = tlen == strlen(type) && k < CHAT_ARRAY_LEN(in_names) ? (chat_in_type)k : CHAT_IN_NONE;
    switch (in->type) {
    case CHAT_IN_AUTH:
        rc = parse_auth(root, in, code, err, errlen);
        break;
    case CHAT_IN_MESSAGE:
        rc = chat_proto_message_fields(root, max_message_bytes, in, code, err, errlen);
        break;
    case CHAT_IN_CANCEL:
        rc = optional_id(root, "session_id", &in->attach_session);
        if (rc) rc = bad(code, rc == CHAT_ENOMEM ? CHAT_CODE_PROCESSING_ERROR : CHAT_CODE_INVALID_REQUEST, err, errlen,
                         rc == CHAT_ENOMEM ? "Out of memory" : "Invalid session_id");
        break;
    case CHAT_IN_PING:
        rc = 0;
        break;
    case CHAT_IN_RESUME:
        rc = parse_resume(root, in, code, err, errlen);
        break;
    case CHAT_IN_NONE:
    default:
        rc = unknown_type(type, tlen, code, err, errlen);
        break;
    }

cleanup:
    json_object_put(root);
    if (rc) {
        chat_in_type refused = in->type; /* which frame was refused stays known (chat_proto.h) */
        chat_in_clear(in);
        in->type = refused;
    }
    return rc;
}

void chat_in_clear(chat_in *in)
{
    if (!in) return;
    if (in->token) {
        explicit_bzero(in->token, strlen(in->token)); /* a bearer credential: do not leave it in the heap */
        free(in->token);
    }
    free(in->message);
    free(in->session_id);
    free(in->customer_id);
    free(in->attach_session);
    free(in->answer_id);
    memset(in, 0, sizeof *in);
}

/* ---- recognising an auth attempt in a frame that does not parse ---- */

/* A string ended: it may be the member name "type" or, right after "type":, the value "auth". */
static void scan_string_end(chat_proto_scan *sc)
{
    bool four = sc->len == 4;
    if (sc->seq == 2 && four && sc->is_auth) sc->auth = true;
    sc->seq = sc->depth == 1 && four && sc->is_type ? 1 : 0;
}

void chat_proto_scan_feed(chat_proto_scan *sc, const char *data, size_t len)
{
    for (size_t i = 0; i < len && !sc->auth; i++) {
        char c = data[i];
        if (sc->in_str) {
            if (sc->esc || c == '\\') { /* an escape: this string is not spelt plainly "type" or "auth" */
                sc->esc = !sc->esc && c == '\\';
                sc->is_type = sc->is_auth = false;
            } else if (c == '"') {
                sc->in_str = false;
                scan_string_end(sc);
            } else {
                sc->is_type = sc->is_type && sc->len < 4 && c == "type"[sc->len];
                sc->is_auth = sc->is_auth && sc->len < 4 && c == "auth"[sc->len];
                if (sc->len < 5) sc->len++;
            }
        } else if (c == '"') {
            sc->in_str = true;
            sc->len = 0;
            sc->is_type = sc->is_auth = true;
        } else if (c == ':' && sc->seq == 1) {
            sc->seq = 2;
        } else if (c != ' ' && c != '\t' && c != '\n' && c != '\r') {
            if ((c == '{' || c == '[') && sc->depth < 255) sc->depth++;
            if ((c == '}' || c == ']') && sc->depth > 0) sc->depth--;
            sc->seq = 0;
        }
    }
}
