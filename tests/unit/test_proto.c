/* Tests for chat_proto: every parser outcome and error code, every builder's exact shape (parsed back
 * with json-c and checked field by field), and the hand-written escaper behind chat_proto_token, which
 * is checked both by round trip and byte for byte against json-c's own serialisation. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "testutil.h"

#define MAX_MSG 40

/* ---- parser table ---- */

static const struct parse_case {
    const char *name;
    const char *json;
    size_t len; /* 0: strlen(json) */
    int want_rc;
    const char *want_code; /* on failure */
    const char *want_err;  /* on failure, exact */
    chat_in_type type;     /* on success */
    const char *token, *message, *session_id, *customer_id;
    bool partial;
} parse_cases[] = {
    /* successes */
    {"auth", "{\"type\":\"auth\",\"token\":\"abc.def.ghi\"}", 0, 0, NULL, NULL, CHAT_IN_AUTH, "abc.def.ghi", NULL, NULL,
     NULL, false},
    {"message minimal", "{\"type\":\"message\",\"message\":\"What is the engine power?\"}", 0, 0, NULL, NULL,
     CHAT_IN_MESSAGE, NULL, "What is the engine power?", NULL, NULL, true},
    {"message with ids",
     "{\"type\":\"message\",\"message\":\"hi\",\"session_id\":\"s-1:a.b_c\",\"customer_id\":\"C42\"}", 0, 0, NULL, NULL,
     CHAT_IN_MESSAGE, NULL, "hi", "s-1:a.b_c", "C42", true},
    {"message null ids", "{\"type\":\"message\",\"message\":\"hi\",\"session_id\":null,\"customer_id\":null}", 0, 0,
     NULL, NULL, CHAT_IN_MESSAGE, NULL, "hi", NULL, NULL, true},
    {"message empty-string ids", "{\"type\":\"message\",\"message\":\"hi\",\"session_id\":\"\",\"customer_id\":\"\"}",
     0, 0, NULL, NULL, CHAT_IN_MESSAGE, NULL, "hi", NULL, NULL, true},
    {"partial false", "{\"type\":\"message\",\"message\":\"hi\",\"partial\":false}", 0, 0, NULL, NULL, CHAT_IN_MESSAGE,
     NULL, "hi", NULL, NULL, false},
    {"partial true", "{\"type\":\"message\",\"message\":\"hi\",\"partial\":true}", 0, 0, NULL, NULL, CHAT_IN_MESSAGE,
     NULL, "hi", NULL, NULL, true},
    {"partial null", "{\"type\":\"message\",\"message\":\"hi\",\"partial\":null}", 0, 0, NULL, NULL, CHAT_IN_MESSAGE,
     NULL, "hi", NULL, NULL, true},
    {"trimmed ASCII", "{\"type\":\"message\",\"message\":\" \\t\\n hello  world \\r\\n\"}", 0, 0, NULL, NULL,
     CHAT_IN_MESSAGE, NULL, "hello  world", NULL, NULL, true},
    {"trimmed Unicode spaces", "{\"type\":\"message\",\"message\":\"\\u00a0\\u3000hi\\u2003\\u202f\"}", 0, 0, NULL,
     NULL, CHAT_IN_MESSAGE, NULL, "hi", NULL, NULL, true},
    {"zero-width space is not whitespace", "{\"type\":\"message\",\"message\":\"\\u200b\"}", 0, 0, NULL, NULL,
     CHAT_IN_MESSAGE, NULL, "\xe2\x80\x8b", NULL, NULL, true},
    {"emoji and CJK", "{\"type\":\"message\",\"message\":\" \xf0\x9f\x9a\x97 \xe5\xbc\x95\xe6\x93\x8e \"}", 0, 0, NULL,
     NULL, CHAT_IN_MESSAGE, NULL, "\xf0\x9f\x9a\x97 \xe5\xbc\x95\xe6\x93\x8e", NULL, NULL, true},
    {"escaped surrogate pair", "{\"type\":\"message\",\"message\":\"\\ud83d\\ude00\"}", 0, 0, NULL, NULL,
     CHAT_IN_MESSAGE, NULL, "\xf0\x9f\x98\x80", NULL, NULL, true},
    {"lone surrogate becomes U+FFFD", "{\"type\":\"message\",\"message\":\"\\ud800\"}", 0, 0, NULL, NULL,
     CHAT_IN_MESSAGE, NULL, "\xef\xbf\xbd", NULL, NULL, true},
    {"exactly max bytes", "{\"type\":\"message\",\"message\":\"0123456789012345678901234567890123456789\"}", 0, 0, NULL,
     NULL, CHAT_IN_MESSAGE, NULL, "0123456789012345678901234567890123456789", NULL, NULL, true},
    {"max after trimming", "{\"type\":\"message\",\"message\":\"   0123456789012345678901234567890123456789   \"}", 0,
     0, NULL, NULL, CHAT_IN_MESSAGE, NULL, "0123456789012345678901234567890123456789", NULL, NULL, true},
    {"ping", "{\"type\":\"ping\"}", 0, 0, NULL, NULL, CHAT_IN_PING, NULL, NULL, NULL, NULL, false},
    {"cancel", "{\"type\":\"cancel\",\"session_id\":\"ignored\"}", 0, 0, NULL, NULL, CHAT_IN_CANCEL, NULL, NULL, NULL,
     NULL, false},
    {"surrounding whitespace", " \n{\"type\":\"ping\"}\r\n ", 0, 0, NULL, NULL, CHAT_IN_PING, NULL, NULL, NULL, NULL,
     false},
    {"nested within depth limit", "{\"type\":\"ping\",\"x\":[[[[[[[[[[{}]]]]]]]]]]}", 0, 0, NULL, NULL, CHAT_IN_PING,
     NULL, NULL, NULL, NULL, false},
    {"unknown fields ignored", "{\"type\":\"ping\",\"x\":{\"y\":[1,2,3]}}", 0, 0, NULL, NULL, CHAT_IN_PING, NULL, NULL,
     NULL, NULL, false},

    /* INVALID_JSON */
    {"empty input", "", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL, NULL, false},
    {"not JSON", "hello", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL, NULL, false},
    {"array", "[{\"type\":\"ping\"}]", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL,
     NULL, false},
    {"string", "\"ping\"", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL, NULL, false},
    {"number", "42", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL, NULL, false},
    {"null", "null", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL, NULL, false},
    {"truncated", "{\"type\":\"ping\"", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL,
     NULL, false},
    {"trailing garbage", "{\"type\":\"ping\"} x", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL,
     NULL, NULL, false},
    {"two objects", "{\"type\":\"ping\"}{\"type\":\"ping\"}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0,
     NULL, NULL, NULL, NULL, false},
    {"trailing comma", "{\"type\":\"ping\",}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL,
     NULL, NULL, false},
    {"raw NUL inside", "{\"type\":\"ping\"}\0{}", 18, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL,
     NULL, NULL, NULL, false},
    {"not UTF-8", "{\"type\":\"message\",\"message\":\"caf\xe9\"}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON,
     "Invalid JSON", 0, NULL, NULL, NULL, NULL, false},

    {"too deep", "{\"type\":\"ping\",\"x\":[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_JSON, "Invalid JSON", 0, NULL, NULL, NULL, NULL, false},
    {"missing type", "{\"message\":\"hi\"}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Missing message type", 0, NULL,
     NULL, NULL, NULL, false},
    {"type not a string", "{\"type\":1}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Missing message type", 0, NULL, NULL,
     NULL, NULL, false},
    {"type null", "{\"type\":null}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_JSON, "Missing message type", 0, NULL, NULL,
     NULL, NULL, false},

    /* UNKNOWN_TYPE */
    {"unknown type", "{\"type\":\"hello\"}", 0, CHAT_EINVAL, CHAT_CODE_UNKNOWN_TYPE, "Unknown message type: hello", 0,
     NULL, NULL, NULL, NULL, false},
    {"type is case-sensitive", "{\"type\":\"AUTH\",\"token\":\"x\"}", 0, CHAT_EINVAL, CHAT_CODE_UNKNOWN_TYPE,
     "Unknown message type: AUTH", 0, NULL, NULL, NULL, NULL, false},
    {"empty type", "{\"type\":\"\"}", 0, CHAT_EINVAL, CHAT_CODE_UNKNOWN_TYPE, "Unknown message type: ", 0, NULL, NULL,
     NULL, NULL, false},
    {"type sanitised", "{\"type\":\"<img src=x>\\n\xc3\xa9\"}", 0, CHAT_EINVAL, CHAT_CODE_UNKNOWN_TYPE,
     "Unknown message type: ?img?src?x????", 0, NULL, NULL, NULL, NULL, false},
    {"type truncated", "{\"type\":\"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ\"}", 0, CHAT_EINVAL,
     CHAT_CODE_UNKNOWN_TYPE, "Unknown message type: abcdefghijklmnopqrstuvwxyz012345", 0, NULL, NULL, NULL, NULL,
     false},
    {"type with NUL", "{\"type\":\"ping\\u0000x\"}", 0, CHAT_EINVAL, CHAT_CODE_UNKNOWN_TYPE,
     "Unknown message type: ping?x", 0, NULL, NULL, NULL, NULL, false},

    /* auth */
    {"auth without token", "{\"type\":\"auth\"}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST, "Missing token", 0, NULL,
     NULL, NULL, NULL, false},
    {"auth empty token", "{\"type\":\"auth\",\"token\":\"\"}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST,
     "Missing token", 0, NULL, NULL, NULL, NULL, false},
    {"auth null token", "{\"type\":\"auth\",\"token\":null}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST,
     "Missing token", 0, NULL, NULL, NULL, NULL, false},
    {"auth numeric token", "{\"type\":\"auth\",\"token\":123}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST,
     "Token must be a string", 0, NULL, NULL, NULL, NULL, false},
    {"auth token with NUL", "{\"type\":\"auth\",\"token\":\"a.b.c\\u0000junk\"}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "Token must be a string", 0, NULL, NULL, NULL, NULL, false},

    /* message */
    {"message missing", "{\"type\":\"message\"}", 0, CHAT_EINVAL, CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty", 0,
     NULL, NULL, NULL, NULL, false},
    {"message null", "{\"type\":\"message\",\"message\":null}", 0, CHAT_EINVAL, CHAT_CODE_EMPTY_MESSAGE,
     "Message cannot be empty", 0, NULL, NULL, NULL, NULL, false},
    {"message empty", "{\"type\":\"message\",\"message\":\"\"}", 0, CHAT_EINVAL, CHAT_CODE_EMPTY_MESSAGE,
     "Message cannot be empty", 0, NULL, NULL, NULL, NULL, false},
    {"message whitespace", "{\"type\":\"message\",\"message\":\"  \\t\\r\\n \"}", 0, CHAT_EINVAL,
     CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty", 0, NULL, NULL, NULL, NULL, false},
    {"message Unicode whitespace", "{\"type\":\"message\",\"message\":\"\\u3000\\u00a0\\u2028\"}", 0, CHAT_EINVAL,
     CHAT_CODE_EMPTY_MESSAGE, "Message cannot be empty", 0, NULL, NULL, NULL, NULL, false},
    {"message number", "{\"type\":\"message\",\"message\":42}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST,
     "Message must be a string", 0, NULL, NULL, NULL, NULL, false},
    {"message array", "{\"type\":\"message\",\"message\":[\"hi\"]}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST,
     "Message must be a string", 0, NULL, NULL, NULL, NULL, false},
    {"message bool", "{\"type\":\"message\",\"message\":true}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST,
     "Message must be a string", 0, NULL, NULL, NULL, NULL, false},
    /* json-c's UTF-8 check lets overlongs and encoded surrogates through; ours does not. */
    {"message overlong UTF-8",
     "{\"type\":\"message\",\"message\":\"a\xc0\xaf"
     "b\"}",
     0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST, "Message must be UTF-8", 0, NULL, NULL, NULL, NULL, false},
    {"message raw surrogate", "{\"type\":\"message\",\"message\":\"\xed\xa0\x80\"}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "Message must be UTF-8", 0, NULL, NULL, NULL, NULL, false},
    {"message with NUL", "{\"type\":\"message\",\"message\":\"a\\u0000b\"}", 0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST,
     "Message must not contain NUL", 0, NULL, NULL, NULL, NULL, false},
    {"message too long", "{\"type\":\"message\",\"message\":\"01234567890123456789012345678901234567890\"}", 0,
     CHAT_EINVAL, CHAT_CODE_MESSAGE_TOO_LONG, "Message too long (maximum 40 bytes)", 0, NULL, NULL, NULL, NULL, false},
    {"message too long in bytes",
     "{\"type\":\"message\",\"message\":\"\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95"
     "\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95"
     "\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95\xe5\xbc\x95\"}",
     0, CHAT_EINVAL, CHAT_CODE_MESSAGE_TOO_LONG, "Message too long (maximum 40 bytes)", 0, NULL, NULL, NULL, NULL,
     false},
    {"session_id bad chars", "{\"type\":\"message\",\"message\":\"hi\",\"session_id\":\"a b\"}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "Invalid session_id", 0, NULL, NULL, NULL, NULL, false},
    {"session_id too long",
     "{\"type\":\"message\",\"message\":\"hi\",\"session_id\":"
     "\"0123456789012345678901234567890123456789012345678901234567890123x\"}",
     0, CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST, "Invalid session_id", 0, NULL, NULL, NULL, NULL, false},
    {"session_id number", "{\"type\":\"message\",\"message\":\"hi\",\"session_id\":7}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "Invalid session_id", 0, NULL, NULL, NULL, NULL, false},
    {"session_id injection", "{\"type\":\"message\",\"message\":\"hi\",\"session_id\":\"x' OR 1=1 --\"}", 0,
     CHAT_EINVAL, CHAT_CODE_INVALID_REQUEST, "Invalid session_id", 0, NULL, NULL, NULL, NULL, false},
    {"customer_id bad", "{\"type\":\"message\",\"message\":\"hi\",\"customer_id\":\"<x>\"}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "Invalid customer_id", 0, NULL, NULL, NULL, NULL, false},
    {"customer_id object", "{\"type\":\"message\",\"message\":\"hi\",\"customer_id\":{}}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "Invalid customer_id", 0, NULL, NULL, NULL, NULL, false},
    {"partial string", "{\"type\":\"message\",\"message\":\"hi\",\"partial\":\"yes\"}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "partial must be a boolean", 0, NULL, NULL, NULL, NULL, false},
    {"partial number", "{\"type\":\"message\",\"message\":\"hi\",\"partial\":0}", 0, CHAT_EINVAL,
     CHAT_CODE_INVALID_REQUEST, "partial must be a boolean", 0, NULL, NULL, NULL, NULL, false},
};

static void check_opt_str(const char *name, const char *field, const char *got, const char *want)
{
    if (!want && !got) return;
    if (!want || !got || strcmp(got, want) != 0)
        fail_msg("case '%s': %s is '%s', want '%s'", name, field, got ? got : "(null)", want ? want : "(null)");
}

static void test_parse_table(void **state)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(parse_cases); i++) {
        const struct parse_case *c = &parse_cases[i];
        chat_in in;
        memset(&in, 0x5a, sizeof in); /* garbage: parse must initialise */
        const char *code = "unset";
        char err[128] = "unset";
        size_t len = c->len ? c->len : strlen(c->json);
        int rc = chat_proto_parse(c->json, len, MAX_MSG, &in, &code, err, sizeof err);
        if (rc != c->want_rc) fail_msg("case '%s': rc %d, want %d (%s)", c->name, rc, c->want_rc, err);
        if (rc == 0) {
            if (in.type != c->type) fail_msg("case '%s': type %d, want %d", c->name, in.type, c->type);
            check_opt_str(c->name, "token", in.token, c->token);
            check_opt_str(c->name, "message", in.message, c->message);
            check_opt_str(c->name, "session_id", in.session_id, c->session_id);
            check_opt_str(c->name, "customer_id", in.customer_id, c->customer_id);
            if (c->type == CHAT_IN_MESSAGE && in.partial != c->partial)
                fail_msg("case '%s': partial %d, want %d", c->name, in.partial, c->partial);
        } else {
            check_opt_str(c->name, "code", code, c->want_code);
            check_opt_str(c->name, "err", err, c->want_err);
            if (in.token || in.message || in.session_id || in.customer_id)
                fail_msg("case '%s': fields left allocated after failure", c->name);
        }
        chat_in_clear(&in);
        assert_null(in.message);
        chat_in_clear(&in); /* idempotent */
    }
}

/* The shared validator on the object of every message case of the parser table: the same outcome, the
 * same code, the same words (REST calls it on its body, the WebSocket parser on its frame). */
static void test_message_fields_match_parser(void **state)
{
    int checked = 0;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(parse_cases); i++) {
        const struct parse_case *c = &parse_cases[i];
        size_t len = c->len ? c->len : strlen(c->json);
        json_tokener *tok = json_tokener_new();
        json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
        json_object *o = json_tokener_parse_ex(tok, c->json, (int)len), *t;
        bool whole = o && json_tokener_get_parse_end(tok) == len;
        json_tokener_free(tok);
        if (!whole || !json_object_is_type(o, json_type_object) || !json_object_object_get_ex(o, "type", &t) ||
            !json_object_is_type(t, json_type_string) || strcmp(json_object_get_string(t), "message")) {
            json_object_put(o);
            continue;
        }
        json_object_object_del(o, "type"); /* a REST body has none */
        chat_in in;
        memset(&in, 0, sizeof in);
        const char *code = "unset";
        char err[128] = "unset";
        int rc = chat_proto_message_fields(o, MAX_MSG, &in, &code, err, sizeof err);
        if (rc != c->want_rc) fail_msg("case '%s': rc %d, want %d (%s)", c->name, rc, c->want_rc, err);
        if (rc == 0) {
            check_opt_str(c->name, "message", in.message, c->message);
            check_opt_str(c->name, "session_id", in.session_id, c->session_id);
            check_opt_str(c->name, "customer_id", in.customer_id, c->customer_id);
            if (in.partial != c->partial) fail_msg("case '%s': partial %d, want %d", c->name, in.partial, c->partial);
        } else {
            check_opt_str(c->name, "code", code, c->want_code);
            check_opt_str(c->name, "err", err, c->want_err);
            if (in.message || in.session_id || in.customer_id) fail_msg("case '%s': fields left after failure", c->name);
        }
        chat_in_clear(&in);
        json_object_put(o);
        checked++;
    }
    assert_true(checked >= 30);
}

static void test_parse_edges(void **state)
{
    chat_in in;
    const char *code = NULL;
    char err[64];
    assert_int_equal(chat_proto_parse(NULL, 10, MAX_MSG, &in, &code, err, sizeof err), CHAT_EINVAL);
    assert_string_equal(code, CHAT_CODE_INVALID_JSON);
    assert_int_equal(chat_proto_parse("{\"type\":\"ping\"}", 15, MAX_MSG, NULL, &code, err, sizeof err), CHAT_EINVAL);
    /* NULL code and err are allowed. */
    assert_int_equal(chat_proto_parse("nope", 4, MAX_MSG, &in, NULL, NULL, 0), CHAT_EINVAL);
    /* len bounds the input: the text after len is not read. */
    const char *two = "{\"type\":\"ping\"}{\"type\":\"cancel\"}";
    assert_int_equal(chat_proto_parse(two, 15, MAX_MSG, &in, &code, err, sizeof err), 0);
    assert_int_equal(in.type, CHAT_IN_PING);
    chat_in_clear(&in);
    chat_in_clear(NULL);

    /* A large message within a large limit survives intact. */
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_puts(&b, "{\"type\":\"message\",\"message\":\"");
    for (int i = 0; i < 5000; i++)
        chat_buf_puts(&b, "ab\\\"\xe2\x82\xac");
    chat_buf_puts(&b, "\"}");
    assert_int_equal(chat_proto_parse(b.data, b.len, 100000, &in, &code, err, sizeof err), 0);
    assert_int_equal(strlen(in.message), 5000 * 6);
    assert_int_equal(strncmp(in.message, "ab\"\xe2\x82\xac", 6), 0);
    chat_in_clear(&in);
    assert_int_equal(chat_proto_parse(b.data, b.len, 5000 * 6 - 1, &in, &code, err, sizeof err), CHAT_EINVAL);
    assert_string_equal(code, CHAT_CODE_MESSAGE_TOO_LONG);
    chat_buf_free(&b);
}

/* ---- builders ---- */

/* Parses a builder's output strictly (valid UTF-8, one object, nothing trailing). */
static json_object *parse_out(const char *text)
{
    assert_non_null(text);
    size_t n = strlen(text);
    assert_true(chat_utf8_valid(text, n));
    json_tokener *tok = json_tokener_new();
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    json_object *o = json_tokener_parse_ex(tok, text, (int)n);
    if (!o || json_tokener_get_parse_end(tok) != n) fail_msg("builder output does not parse: %s", text);
    json_tokener_free(tok);
    assert_true(json_object_is_type(o, json_type_object));
    return o;
}

static json_object *field(json_object *o, const char *key)
{
    json_object *v = NULL;
    if (!json_object_object_get_ex(o, key, &v)) fail_msg("field '%s' missing", key);
    return v;
}

static void expect_str(json_object *o, const char *key, const char *want)
{
    json_object *v = field(o, key);
    if (!json_object_is_type(v, json_type_string)) fail_msg("field '%s' is not a string", key);
    assert_string_equal(json_object_get_string(v), want);
}

static void expect_null(json_object *o, const char *key)
{
    json_object *v = (json_object *)1;
    assert_true(json_object_object_get_ex(o, key, &v));
    assert_null(v);
}

/* A builder's frame s: members of them in all (when members >= 0), among them the string members of the
 * key, value list kv (NULL-terminated: FIELDS). Frees s. */
static void expect_frame(char *s, int members, const char *const *kv)
{
    json_object *o = parse_out(s);
    if (members >= 0) assert_int_equal(json_object_object_length(o), members);
    for (; kv[0]; kv += 2) expect_str(o, kv[0], kv[1]);
    json_object_put(o);
    free(s);
}

#define FIELDS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void test_auth_frames(void **state)
{
    chat_user u;
    memset(&u, 0, sizeof u);
    strcpy(u.id, "user-uuid");
    strcpy(u.email, "user@example.com");
    strcpy(u.name, "User \"Name\" \xc3\xa9");
    char *s = chat_proto_auth_success(&u);
    json_object *o = parse_out(s);
    assert_int_equal(json_object_object_length(o), 3);
    expect_str(o, "type", "auth_success");
    expect_str(o, "message", "Authentication successful");
    json_object *user = field(o, "user");
    assert_true(json_object_is_type(user, json_type_object));
    assert_int_equal(json_object_object_length(user), 3);
    expect_str(user, "id", "user-uuid");
    expect_str(user, "email", "user@example.com");
    expect_str(user, "name", "User \"Name\" \xc3\xa9");
    json_object_put(o);
    free(s);

    /* Absent profile claims are null, not "". */
    memset(&u, 0, sizeof u);
    strcpy(u.id, "bare");
    s = chat_proto_auth_success(&u);
    o = parse_out(s);
    user = field(o, "user");
    expect_str(user, "id", "bare");
    expect_null(user, "email");
    expect_null(user, "name");
    json_object_put(o);
    free(s);

    expect_frame(chat_proto_auth_error("Invalid token", NULL), 2,
                 FIELDS("type", "auth_error", "message", "Invalid token"));
    s = chat_proto_auth_error("Token expired", NULL);
    assert_string_equal(s, "{\"type\":\"auth_error\",\"message\":\"Token expired\"}");
    free(s);
}

static const struct {
    const char *step;
    const char *message;
} progress_cases[] = {
    {"starting", "Processing your message..."},
    {"agent_routing", "Routing to appropriate agent..."},
    {"rag_retrieval", "Searching knowledge base..."},
    {"generating", "Generating response..."},
    {"something_else", "Processing..."},
};

static void test_progress_frames(void **state)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(progress_cases); i++)
        expect_frame(chat_proto_progress(progress_cases[i].step), 3,
                     FIELDS("type", "progress", "step", progress_cases[i].step, "message", progress_cases[i].message));
    char *s = chat_proto_progress_msg("rag_retrieval", "Found 3 documents");
    assert_string_equal(s, "{\"type\":\"progress\",\"step\":\"rag_retrieval\",\"message\":\"Found 3 documents\"}");
    free(s);
}

static void test_complete_frames(void **state)
{
    const char *meta = "{\"agent\":\"specs\",\"confidence\":0.95,\"context\":{\"sources\":[\"doc1.md\",\"doc2.md\"]}}";
    char *s = chat_proto_complete("Full \"response\"\nwith a/slash", "session-id", meta);
    assert_non_null(strstr(s, "a/slash")); /* NOSLASHESCAPE */
    json_object *o = parse_out(s);
    assert_int_equal(json_object_object_length(o), 4);
    expect_str(o, "type", "complete");
    expect_str(o, "response", "Full \"response\"\nwith a/slash");
    expect_str(o, "session_id", "session-id");
    json_object *m = field(o, "metadata");
    assert_true(json_object_is_type(m, json_type_object));
    expect_str(m, "agent", "specs");
    assert_true(fabs(json_object_get_double(field(m, "confidence")) - 0.95) < 1e-9);
    json_object *srcs = field(field(m, "context"), "sources");
    assert_int_equal(json_object_array_length(srcs), 2);
    assert_string_equal(json_object_get_string(json_object_array_get_idx(srcs, 1)), "doc2.md");
    json_object_put(o);
    free(s);

    /* Unusable metadata becomes {}; a missing session id is null. */
    static const char *bad_meta[] = {NULL, "", "not json", "[1,2]", "\"str\"", "{\"a\":1} trailing", "{\"a\":"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad_meta); i++) {
        s = chat_proto_complete("r", NULL, bad_meta[i]);
        o = parse_out(s);
        m = field(o, "metadata");
        if (!json_object_is_type(m, json_type_object) || json_object_object_length(m) != 0)
            fail_msg("metadata case %zu: not {}: %s", i, s);
        expect_null(o, "session_id");
        json_object_put(o);
        free(s);
    }
}

static void test_error_frames(void **state)
{
    expect_frame(chat_proto_error("Message cannot be empty", CHAT_CODE_EMPTY_MESSAGE), 3,
                 FIELDS("type", "error", "error", "Message cannot be empty", "code", "EMPTY_MESSAGE"));
    expect_frame(chat_proto_error("boom", NULL), -1, FIELDS("code", "PROCESSING_ERROR"));
    expect_frame(chat_proto_rest_error("Too many requests", CHAT_CODE_RATE_LIMITED), 2,
                 FIELDS("error", "Too many requests", "code", "RATE_LIMITED"));
    /* Malformed UTF-8 handed to a builder never yields an invalid frame. */
    expect_frame(chat_proto_error("bad \xff byte \xe2\x82", "X"), -1,
                 FIELDS("error", "bad \xef\xbf\xbd byte \xef\xbf\xbd\xef\xbf\xbd"));
}

/* The cancelled answer's complete: one builder for the broker and the streamer. */
static void test_cancelled_frames(void **state)
{
    static const struct {
        const char *response, *session_id;
    } cases[] = {{"", "s-1"}, {"The partial \"answer\"", "s-2"}, {"text", NULL}, {"bad \xff", ""}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char *s = chat_proto_complete_cancelled(cases[i].response, cases[i].session_id);
        json_object *o = parse_out(s);
        assert_int_equal(json_object_object_length(o), 4);
        expect_str(o, "type", "complete");
        if (chat_utf8_valid(cases[i].response, strlen(cases[i].response)))
            expect_str(o, "response", cases[i].response);
        if (cases[i].session_id && cases[i].session_id[0])
            expect_str(o, "session_id", cases[i].session_id);
        else
            expect_null(o, "session_id");
        json_object *m = field(o, "metadata");
        assert_true(json_object_is_type(m, json_type_object));
        expect_str(m, "finish_reason", "cancelled");
        expect_str(m, "agent", "general");
        assert_int_equal(json_object_get_int(field(m, "confidence")), 0);
        assert_int_equal(json_object_array_length(field(field(m, "context"), "sources")), 0);
        json_object *usage = field(m, "usage");
        assert_int_equal(json_object_object_length(usage), 2);
        assert_true(json_object_is_type(field(usage, "prompt_tokens"), json_type_int));
        assert_int_equal(json_object_get_int(field(usage, "prompt_tokens")), 0);
        assert_int_equal(json_object_get_int(field(usage, "completion_tokens")), 0);
        assert_true(json_object_is_type(field(m, "timings"), json_type_object));
        json_object_put(o);
        free(s);
    }
}

/* The small frames and the static out-of-memory texts, each the same as its builder's output. */
static void test_other_frames(void **state)
{
    char *s = chat_proto_pong();
    assert_string_equal(s, "{\"type\":\"pong\"}");
    free(s);
    s = chat_proto_error("Out of memory", CHAT_CODE_PROCESSING_ERROR);
    assert_string_equal(chat_proto_error_oom, s);
    free(s);

    s = chat_proto_rest_answer("Answer", "s-9", "{\"agent\":\"specs\"}");
    json_object *o = parse_out(s);
    assert_int_equal(json_object_object_length(o), 3);
    expect_str(o, "response", "Answer");
    expect_str(o, "session_id", "s-9");
    expect_str(field(o, "metadata"), "agent", "specs");
    json_object_put(o);
    free(s);
    s = chat_proto_rest_answer("Answer", "", "not json"); /* REST's session_id is always a string */
    o = parse_out(s);
    expect_str(o, "session_id", "");
    assert_int_equal(json_object_object_length(field(o, "metadata")), 0);
    json_object_put(o);
    free(s);
}

/* Client frames: what the builders write is what the parser reads back. */
static const struct {
    const char *message, *session_id, *customer_id;
    bool partial;
} client_cases[] = {
    {"What is the engine power?", NULL, NULL, true},
    {"with \"quotes\" and\nnewline", "s-1", NULL, true},
    {"both ids", "s-1:a.b_c", "cust-1001", false},
    {"\xe5\xbc\x95\xe6\x93\x8e", NULL, "C42", false},
};

static void test_client_frames(void **state)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(client_cases); i++) {
        char *s = chat_proto_client_message(client_cases[i].message, client_cases[i].session_id,
                                            client_cases[i].customer_id, client_cases[i].partial);
        chat_in in;
        const char *code = NULL;
        char err[128];
        if (chat_proto_parse(s, strlen(s), 1000, &in, &code, err, sizeof err)) fail_msg("case %zu: %s", i, err);
        assert_int_equal(in.type, CHAT_IN_MESSAGE);
        assert_string_equal(in.message, client_cases[i].message);
        check_opt_str("client", "session_id", in.session_id, client_cases[i].session_id);
        check_opt_str("client", "customer_id", in.customer_id, client_cases[i].customer_id);
        assert_int_equal(in.partial, client_cases[i].partial);
        json_object *o = parse_out(s);
        assert_int_equal(json_object_object_get_ex(o, "partial", NULL), !client_cases[i].partial);
        json_object_put(o);
        chat_in_clear(&in);
        free(s);

        s = chat_proto_rest_request(client_cases[i].message, client_cases[i].session_id, client_cases[i].customer_id);
        o = parse_out(s);
        expect_str(o, "message", client_cases[i].message);
        assert_false(json_object_object_get_ex(o, "type", NULL));
        assert_int_equal(json_object_object_length(o),
                         1 + (client_cases[i].session_id != NULL) + (client_cases[i].customer_id != NULL));
        json_object_put(o);
        free(s);
    }
    char *s = chat_proto_client_auth("abc.def.ghi");
    assert_string_equal(s, "{\"type\":\"auth\",\"token\":\"abc.def.ghi\"}");
    free(s);
}

/* ---- the tables ---- */

/* The statuses REST documents (docs/rest-api.md), spelt out here so a changed row is noticed. */
static const struct {
    const char *name;
    int status;
} documented_status[] = {
    {CHAT_CODE_AUTH_REQUIRED, 401},     {"INVALID_TOKEN", 401},           {"TOKEN_EXPIRED", 401},
    {CHAT_CODE_INVALID_JSON, 400},      {CHAT_CODE_INVALID_REQUEST, 400}, {CHAT_CODE_EMPTY_MESSAGE, 400},
    {CHAT_CODE_MESSAGE_TOO_LONG, 400},  {CHAT_CODE_SESSION_FORBIDDEN, 403}, {CHAT_CODE_CUSTOMER_FORBIDDEN, 403},
    {"NOT_FOUND", 404},                 {"METHOD_NOT_ALLOWED", 405},      {"PAYLOAD_TOO_LARGE", 413},
    {"UNSUPPORTED_MEDIA_TYPE", 415},    {"SERVICE_UNAVAILABLE", 503},     {CHAT_CODE_PROCESSING_ERROR, 500},
    {CHAT_CODE_RATE_LIMITED, 429},      {CHAT_CODE_OVERLOADED, 503},      {"NOT_STORED", 503},
};

static void test_code_table(void **state)
{
    for (int i = 0; i < CHAT_PROTO_CODE_COUNT; i++) {
        chat_proto_code c = (chat_proto_code)i, back;
        const char *name = chat_proto_code_name(c), *msg = chat_proto_code_message(c);
        int status = chat_proto_code_status(c);
        assert_non_null(name);
        if (!name[0] || strspn(name, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_") != strlen(name))
            fail_msg("code %d: name '%s' is not an upper-case identifier", i, name);
        if (status < 400 || status > 599) fail_msg("code %s: status %d is not an HTTP error", name, status);
        if (!msg || !msg[0]) fail_msg("code %s: no default message", name);
        if (!chat_proto_code_lookup(name, &back) || back != c) fail_msg("code %s: lookup does not round-trip", name);
        for (int j = 0; j < i; j++)
            if (!strcmp(name, chat_proto_code_name((chat_proto_code)j))) fail_msg("code %s twice", name);
    }
    for (size_t i = 0; i < CHAT_ARRAY_LEN(documented_status); i++) {
        chat_proto_code c;
        if (!chat_proto_code_lookup(documented_status[i].name, &c))
            fail_msg("code %s is not in the table", documented_status[i].name);
        if (chat_proto_code_status(c) != documented_status[i].status)
            fail_msg("code %s: status %d, documented %d", documented_status[i].name, chat_proto_code_status(c),
                     documented_status[i].status);
    }
    /* The legacy names are the table's strings. */
    assert_string_equal(CHAT_CODE_AUTH_REQUIRED, "AUTH_REQUIRED");
    assert_string_equal(CHAT_CODE(NOT_FOUND), chat_proto_code_name(CHAT_PROTO_NOT_FOUND));
    assert_string_equal(chat_proto_code_message(CHAT_PROTO_AUTH_REQUIRED), "Authentication required");
    /* Unknown names and values. */
    chat_proto_code c = CHAT_PROTO_NOT_FOUND;
    assert_false(chat_proto_code_lookup("auth_required", &c));
    assert_false(chat_proto_code_lookup("", &c));
    assert_false(chat_proto_code_lookup(NULL, &c));
    assert_int_equal(c, CHAT_PROTO_NOT_FOUND);
    assert_string_equal(chat_proto_code_name(CHAT_PROTO_CODE_COUNT), "PROCESSING_ERROR");
    assert_int_equal(chat_proto_code_status((chat_proto_code)-1), 500);

    /* The static out-of-memory body is what the builder would have written. */
    char *s = chat_proto_rest_error(chat_proto_code_message(CHAT_PROTO_PROCESSING_ERROR), CHAT_CODE_PROCESSING_ERROR);
    assert_string_equal(chat_proto_rest_error_oom, s);
    free(s);
}

/* The steps in the order the client sees them, as the spec names them. */
static const char *const spec_steps[] = {"starting", "agent_routing", "rag_retrieval", "generating"};

static void test_step_table(void **state)
{
    assert_int_equal(CHAT_STEP_COUNT, CHAT_ARRAY_LEN(spec_steps));
    for (int i = 0; i < CHAT_STEP_COUNT; i++) {
        chat_proto_step step = (chat_proto_step)i, back;
        const char *name = chat_proto_step_name(step), *msg = chat_proto_step_message(step);
        assert_string_equal(name, spec_steps[i]);
        if (!msg || !msg[0]) fail_msg("step %s: no default message", name);
        if (!chat_proto_step_lookup(name, &back) || back != step) fail_msg("step %s: lookup does not round-trip", name);
        expect_frame(chat_proto_progress_step(step), 3, FIELDS("type", "progress", "step", name, "message", msg));
        char *s = chat_proto_progress(name); /* by name: the same frame */
        char *want = chat_proto_progress_step(step);
        assert_string_equal(s, want);
        free(want);
        free(s);
    }
    chat_proto_step step = CHAT_STEP_GENERATING;
    assert_false(chat_proto_step_lookup("Starting", &step));
    assert_false(chat_proto_step_lookup(NULL, &step));
    assert_int_equal(step, CHAT_STEP_GENERATING);
    assert_string_equal(chat_proto_step_name(CHAT_STEP_COUNT), "starting");
}

/* ---- the token frame and its escaper ---- */

static const struct {
    const char *name;
    const char *text;
    size_t len; /* 0: strlen */
} tricky[] = {
    {"plain", "word ", 0},
    {"empty", "", 0},
    {"quotes", "say \"hi\" 'there'", 0},
    {"backslashes", "C:\\path\\to\\ \\\\ \\u0041 \\n", 0},
    {"newlines and tabs", "a\nb\r\nc\td\b\f", 0},
    {"all control bytes",
     "\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10\x11\x12\x13\x14\x15\x16"
     "\x17\x18\x19\x1a\x1b\x1c\x1d\x1e\x1f\x7f",
     0},
    {"embedded NUL", "a\0b", 3},
    {"emoji", "\xf0\x9f\x98\x80\xf0\x9f\x9a\x97 \xf0\x9f\x91\xa8\xe2\x80\x8d\xf0\x9f\x91\xa9", 0},
    {"CJK", "\xe5\xbc\x95\xe6\x93\x8e\xe3\x81\xae\xe5\x87\xba\xe5\x8a\x9b", 0},
    {"slash and script", "</script><b>x</b>", 0},
    {"line separators", "\xe2\x80\xa8\xe2\x80\xa9", 0},
    {"mixed", "\"\xc3\xa9\\\n\xf0\x9f\x98\x80\x1f\"", 0},
};

/* json-c's own rendering of the same frame, for a byte-for-byte comparison. */
static char *json_c_token_frame(const char *tok, size_t tl, const char *partial, size_t pl)
{
    json_object *o = json_object_new_object();
    json_object_object_add(o, "type", json_object_new_string("token"));
    json_object_object_add(o, "token", json_object_new_string_len(tok, (int)tl));
    if (partial) json_object_object_add(o, "partial_response", json_object_new_string_len(partial, (int)pl));
    char *s = strdup(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    json_object_put(o);
    return s;
}

static void expect_str_len(json_object *o, const char *key, const char *want, size_t wlen, const char *name)
{
    json_object *v = field(o, key);
    size_t n = (size_t)json_object_get_string_len(v);
    if (n != wlen || memcmp(json_object_get_string(v), want, n) != 0)
        fail_msg("case '%s': %s does not round-trip (%zu bytes, want %zu)", name, key, n, wlen);
}

static void test_token_frames(void **state)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(tricky); i++) {
        const char *t = tricky[i].text;
        size_t tl = tricky[i].len ? tricky[i].len : strlen(t);
        /* partial: a longer text that contains the token twice */
        chat_buf p;
        chat_buf_init(&p);
        chat_buf_puts(&p, "so far: ");
        chat_buf_append(&p, t, tl);
        chat_buf_append(&p, t, tl);

        char *s = chat_proto_token(t, tl, p.data, p.len);
        json_object *o = parse_out(s);
        assert_int_equal(json_object_object_length(o), 3);
        expect_str(o, "type", "token");
        expect_str_len(o, "token", t, tl, tricky[i].name);
        expect_str_len(o, "partial_response", p.data, p.len, tricky[i].name);
        json_object_put(o);

        char *ref = json_c_token_frame(t, tl, p.data, p.len);
        if (strcmp(s, ref) != 0) fail_msg("case '%s': differs from json-c:\n  %s\n  %s", tricky[i].name, s, ref);
        free(ref);
        free(s);

        /* Without partial the field is omitted. */
        s = chat_proto_token(t, tl, NULL, 0);
        o = parse_out(s);
        assert_int_equal(json_object_object_length(o), 2);
        expect_str_len(o, "token", t, tl, tricky[i].name);
        assert_false(json_object_object_get_ex(o, "partial_response", NULL));
        json_object_put(o);
        free(s);
        chat_buf_free(&p);
    }

    char *s = chat_proto_token("hi", 2, "hi", 2);
    assert_string_equal(s, "{\"type\":\"token\",\"token\":\"hi\",\"partial_response\":\"hi\"}");
    free(s);
    s = chat_proto_token("q\"\n\x01", 4, NULL, 0);
    assert_string_equal(s, "{\"type\":\"token\",\"token\":\"q\\\"\\n\\u0001\"}");
    free(s);
    s = chat_proto_token(NULL, 5, NULL, 0);
    assert_string_equal(s, "{\"type\":\"token\",\"token\":\"\"}");
    free(s);
    /* token_len, not strlen, bounds the token. */
    s = chat_proto_token("abcdef", 3, "abcdef", 4);
    assert_string_equal(s, "{\"type\":\"token\",\"token\":\"abc\",\"partial_response\":\"abcd\"}");
    free(s);
}

/* The streamer's way: each token escaped once, frames built from slices of the escaped answer. For every
 * prefix of an answer made of the tricky texts, the frame equals chat_proto_token's (the same bytes). */
static void test_token_frames_from_escaped_slices(void **state)
{
    chat_buf raw, esc;
    chat_buf_init(&raw);
    chat_buf_init(&esc);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(tricky); i++) {
        const char *t = tricky[i].text;
        size_t tl = tricky[i].len ? tricky[i].len : strlen(t);
        if (!chat_utf8_valid(t, tl)) continue; /* tokens are whole characters (the worker's providers see to it) */
        size_t at = esc.len, el = chat_proto_escape(t, tl, NULL);
        char *e = malloc(el + 1);
        assert_non_null(e);
        assert_int_equal(chat_proto_escape(t, tl, e), el);
        chat_buf_append(&raw, t, tl);
        chat_buf_append(&esc, e, el);
        free(e);
        for (int partial = 0; partial < 2; partial++) {
            char *want = chat_proto_token(t, tl, partial ? raw.data : NULL, raw.len);
            const char *pe = partial ? esc.data : NULL;
            size_t n = chat_proto_token_escaped(NULL, esc.data + at, el, pe, esc.len);
            char *got = calloc(1, n + 1);
            assert_non_null(got);
            assert_int_equal(chat_proto_token_escaped(got, esc.data + at, el, pe, esc.len), n);
            if (strcmp(got, want)) fail_msg("case '%s': %s\n  want %s", tricky[i].name, got, want);
            free(got);
            free(want);
        }
    }
    chat_buf_free(&raw);
    chat_buf_free(&esc);
}

/* The frame tables: every client type parses to its chat_in_type (and a name not in the table is
 * UNKNOWN_TYPE), every server type is named once. */
static void test_frame_tables(void **state)
{
    (void)state;
    static const char *const client[] = {"auth", "message", "cancel", "ping", "resume"};
    static const char *const server[] = {"auth_success", "auth_error", "auth_expiring", "progress",    "token",
                                         "complete",     "error",      "pong",          "resumed",     "user_message"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(client); i++) assert_string_equal(chat_proto_in_name((chat_in_type)(i + 1)), client[i]);
    assert_string_equal(chat_proto_in_name(CHAT_IN_NONE), "");
    assert_string_equal(chat_proto_in_name((chat_in_type)99), "");
    assert_int_equal(CHAT_FRAME_COUNT, CHAT_ARRAY_LEN(server));
    for (size_t i = 0; i < CHAT_ARRAY_LEN(server); i++) assert_string_equal(chat_proto_frame_name((chat_proto_frame)i), server[i]);
    assert_string_equal(chat_proto_frame_name(CHAT_FRAME_COUNT), "");
    chat_in in;
    const char *code = NULL;
    char err[128];
    assert_int_equal(chat_proto_parse("{\"type\":\"resumed\"}", 18, MAX_MSG, &in, &code, err, sizeof err), CHAT_EINVAL);
    assert_string_equal(code, CHAT_CODE_UNKNOWN_TYPE);
}

/* resume and cancel: the conversation they act on, the cursor, and every refusal. */
static void test_parse_resume_and_cancel(void **state)
{
    (void)state;
    static const struct {
        const char *name, *json;
        int rc;
        const char *err; /* on failure: INVALID_REQUEST with this text */
        chat_in_type type;
        const char *session, *answer;
        unsigned long long last_seq;
        bool partial;
    } cases[] = {
        {"resume", "{\"type\":\"resume\",\"session_id\":\"s-1\"}", 0, NULL, CHAT_IN_RESUME, "s-1", NULL, 0, true},
        {"resume with a cursor",
         "{\"type\":\"resume\",\"session_id\":\"s-1\",\"last_seq\":42,\"answer_id\":\"a-1\",\"partial\":false}", 0,
         NULL, CHAT_IN_RESUME, "s-1", "a-1", 42, false},
        {"resume, null cursor", "{\"type\":\"resume\",\"session_id\":\"s\",\"last_seq\":null,\"answer_id\":null}", 0,
         NULL, CHAT_IN_RESUME, "s", NULL, 0, true},
        {"resume, huge last_seq", "{\"type\":\"resume\",\"session_id\":\"s\",\"last_seq\":9007199254740993}", 0, NULL,
         CHAT_IN_RESUME, "s", NULL, 9007199254740993ull, true},
        {"resume without session", "{\"type\":\"resume\",\"last_seq\":1}", CHAT_EINVAL, "Invalid session_id", 0, NULL,
         NULL, 0, false},
        {"resume with an empty session", "{\"type\":\"resume\",\"session_id\":\"\"}", CHAT_EINVAL, "Invalid session_id",
         0, NULL, NULL, 0, false},
        {"resume with a bad session", "{\"type\":\"resume\",\"session_id\":\"a b\"}", CHAT_EINVAL, "Invalid session_id",
         0, NULL, NULL, 0, false},
        {"resume with a negative last_seq", "{\"type\":\"resume\",\"session_id\":\"s\",\"last_seq\":-1}", CHAT_EINVAL,
         "last_seq must be a non-negative integer", 0, NULL, NULL, 0, false},
        {"resume with a fractional last_seq", "{\"type\":\"resume\",\"session_id\":\"s\",\"last_seq\":1.5}",
         CHAT_EINVAL, "last_seq must be a non-negative integer", 0, NULL, NULL, 0, false},
        {"resume with a string last_seq", "{\"type\":\"resume\",\"session_id\":\"s\",\"last_seq\":\"3\"}", CHAT_EINVAL,
         "last_seq must be a non-negative integer", 0, NULL, NULL, 0, false},
        {"resume with a bad answer_id", "{\"type\":\"resume\",\"session_id\":\"s\",\"answer_id\":\"x;y\"}", CHAT_EINVAL,
         "Invalid answer_id", 0, NULL, NULL, 0, false},
        {"resume with a bad partial", "{\"type\":\"resume\",\"session_id\":\"s\",\"partial\":1}", CHAT_EINVAL,
         "partial must be a boolean", 0, NULL, NULL, 0, false},
        {"cancel a conversation", "{\"type\":\"cancel\",\"session_id\":\"s-2\"}", 0, NULL, CHAT_IN_CANCEL, "s-2", NULL, 0,
         false},
        {"plain cancel", "{\"type\":\"cancel\"}", 0, NULL, CHAT_IN_CANCEL, NULL, NULL, 0, false},
        {"cancel with a bad session", "{\"type\":\"cancel\",\"session_id\":\"a/b\"}", CHAT_EINVAL, "Invalid session_id", 0,
         NULL, NULL, 0, false},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_in in;
        const char *code = NULL;
        char err[128] = "";
        int rc = chat_proto_parse(cases[i].json, strlen(cases[i].json), MAX_MSG, &in, &code, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("case '%s': rc %d (%s)", cases[i].name, rc, err);
        if (rc) {
            check_opt_str(cases[i].name, "code", code, CHAT_CODE_INVALID_REQUEST);
            check_opt_str(cases[i].name, "err", err, cases[i].err);
            assert_null(in.attach_session);
            assert_null(in.answer_id);
            continue;
        }
        assert_int_equal(in.type, cases[i].type);
        check_opt_str(cases[i].name, "session", in.attach_session, cases[i].session);
        check_opt_str(cases[i].name, "answer", in.answer_id, cases[i].answer);
        assert_null(in.session_id); /* a message's field only */
        if (in.last_seq != cases[i].last_seq) fail_msg("case '%s': last_seq %llu", cases[i].name, in.last_seq);
        if (in.type == CHAT_IN_RESUME && in.partial != cases[i].partial) fail_msg("case '%s': partial", cases[i].name);
        chat_in_clear(&in);
    }
}

/* The frames of answers that outlive connections: seq and session_id on tokens (built from escaped
 * slices, like the others), answer_id and seq on complete, progress with its answer, resumed,
 * user_message, and the client's resume. */
static void test_answer_frames(void **state)
{
    (void)state;
    char buf[256];
    size_t n = chat_proto_token_frame(buf, "ab", 2, "xab", 3, 7, "s-1");
    assert_int_equal(n, chat_proto_token_frame(NULL, "ab", 2, "xab", 3, 7, "s-1"));
    buf[n] = '\0';
    assert_string_equal(buf, "{\"type\":\"token\",\"token\":\"ab\",\"partial_response\":\"xab\",\"seq\":7,\"session_id\":\"s-1\"}");
    n = chat_proto_token_frame(buf, "ab", 2, NULL, 0, 18446744073709551615ull, NULL);
    buf[n] = '\0';
    assert_string_equal(buf, "{\"type\":\"token\",\"token\":\"ab\",\"seq\":18446744073709551615}");
    n = chat_proto_token_frame(buf, "", 0, NULL, 0, 0, "ignored without seq");
    buf[n] = '\0';
    assert_string_equal(buf, "{\"type\":\"token\",\"token\":\"\"}");

    chat_proto_ref ref = {"s-1", "a-1", 12};
    char *s = chat_proto_complete_of(&ref, "hi", "{\"finish_reason\":\"stop\"}");
    assert_string_equal(s, "{\"type\":\"complete\",\"response\":\"hi\",\"session_id\":\"s-1\",\"metadata\":{\"finish_reason\":"
                           "\"stop\"},\"answer_id\":\"a-1\",\"seq\":12}");
    free(s);
    s = chat_proto_complete_cancelled_of(&ref, "h");
    assert_non_null(strstr(s, "\"finish_reason\":\"cancelled\""));
    assert_non_null(strstr(s, "\"answer_id\":\"a-1\",\"seq\":12}"));
    free(s);
    s = chat_proto_progress_of(&(chat_proto_ref){"s-1", "a-1", 0}, "generating", "Generating response...");
    assert_string_equal(s, "{\"type\":\"progress\",\"step\":\"generating\",\"message\":\"Generating response...\","
                           "\"session_id\":\"s-1\",\"answer_id\":\"a-1\"}");
    free(s);
    s = chat_proto_progress_msg("generating", "Generating response...");
    assert_string_equal(s, "{\"type\":\"progress\",\"step\":\"generating\",\"message\":\"Generating response...\"}");
    free(s);
    s = chat_proto_resumed(&ref, true, true);
    assert_string_equal(s, "{\"type\":\"resumed\",\"session_id\":\"s-1\",\"in_flight\":true,\"complete_follows\":true,"
                           "\"answer_id\":\"a-1\",\"seq\":12}");
    free(s);
    s = chat_proto_resumed(&(chat_proto_ref){"s-1", "a-1", 0}, true, true);
    assert_string_equal(s, "{\"type\":\"resumed\",\"session_id\":\"s-1\",\"in_flight\":true,\"complete_follows\":true,"
                           "\"answer_id\":\"a-1\",\"seq\":0}");
    free(s);
    s = chat_proto_resumed(&(chat_proto_ref){"s-1", NULL, 5}, false, false);
    assert_string_equal(s, "{\"type\":\"resumed\",\"session_id\":\"s-1\",\"in_flight\":false,\"complete_follows\":false}");
    free(s);
    s = chat_proto_user_message(&ref, "What is \"it\"?");
    assert_string_equal(s, "{\"type\":\"user_message\",\"session_id\":\"s-1\",\"answer_id\":\"a-1\",\"message\":\"What is \\\"it\\\"?\"}");
    free(s);
    s = chat_proto_client_resume("s-1", 3, "a-1");
    assert_string_equal(s, "{\"type\":\"resume\",\"session_id\":\"s-1\",\"last_seq\":3,\"answer_id\":\"a-1\"}");
    free(s);
    s = chat_proto_client_resume("s-1", 0, NULL);
    assert_string_equal(s, "{\"type\":\"resume\",\"session_id\":\"s-1\"}");
    free(s);
}

/* An LLM token may cut a character in half: each malformed byte becomes U+FFFD, the frame stays UTF-8. */
static const struct {
    const char *name;
    const char *in;
    const char *out;
} malformed[] = {
    {"lone continuation", "a\x80z", "a\xef\xbf\xbdz"},
    {"cut emoji", "\xf0\x9f\x98", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    {"cut then valid", "\xe2\x82\xe2\x82\xac", "\xef\xbf\xbd\xef\xbf\xbd\xe2\x82\xac"},
    {"overlong slash", "\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},
    {"surrogate", "\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    {"above U+10FFFF", "\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},
    {"0xff", "x\xffy", "x\xef\xbf\xbdy"},
};

static void test_token_malformed_utf8(void **state)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(malformed); i++) {
        char *s = chat_proto_token(malformed[i].in, strlen(malformed[i].in), malformed[i].in, strlen(malformed[i].in));
        json_object *o = parse_out(s);
        expect_str_len(o, "token", malformed[i].out, strlen(malformed[i].out), malformed[i].name);
        expect_str_len(o, "partial_response", malformed[i].out, strlen(malformed[i].out), malformed[i].name);
        json_object_put(o);
        free(s);
    }
}

/* Random bytes: the frame always parses as valid UTF-8, and valid input round-trips exactly. */
static void test_token_random(void **state)
{
    unsigned seed = 4242;
    unsigned char buf[256];
    int valid_seen = 0;
    for (int round = 0; round < 20000; round++) {
        size_t n = (size_t)(rand_r(&seed) % sizeof buf);
        bool ascii_only = round % 2 == 0;
        for (size_t i = 0; i < n; i++) {
            int r = rand_r(&seed);
            buf[i] = ascii_only ? (unsigned char)(r % 128) : (unsigned char)(r % 256);
        }
        char *s = chat_proto_token((const char *)buf, n, (const char *)buf, n / 2);
        json_object *o = parse_out(s);
        if (chat_utf8_valid((const char *)buf, n)) {
            valid_seen++;
            expect_str_len(o, "token", (const char *)buf, n, "random");
        }
        if (chat_utf8_valid((const char *)buf, n / 2))
            expect_str_len(o, "partial_response", (const char *)buf, n / 2, "random");
        json_object_put(o);
        free(s);
    }
    assert_true(valid_seen > 5000);
}

/* ---- auth attempts that cannot be parsed ---- */

static void test_auth_error_codes(void **state)
{
    char *s = chat_proto_auth_error("Message too long", CHAT_CODE_MESSAGE_TOO_LONG);
    assert_string_equal(s, "{\"type\":\"auth_error\",\"message\":\"Message too long\",\"code\":\"MESSAGE_TOO_LONG\"}");
    free(s);
    s = chat_proto_auth_error(NULL, CHAT_CODE_INVALID_TOKEN);
    assert_string_equal(s, "{\"type\":\"auth_error\",\"message\":\"Invalid token\",\"code\":\"INVALID_TOKEN\"}");
    free(s);
    s = chat_proto_auth_expiring(30);
    assert_string_equal(s, "{\"type\":\"auth_expiring\",\"expires_in\":30}");
    free(s);
}

/* A refused frame keeps its type when it named one, so that an auth frame is answered as an auth. */
static void test_parse_failure_keeps_type(void **state)
{
    static const struct {
        const char *json;
        chat_in_type type;
    } cases[] = {
        {"{\"type\":\"auth\"}", CHAT_IN_AUTH},
        {"{\"type\":\"auth\",\"token\":42}", CHAT_IN_AUTH},
        {"{\"type\":\"auth\",\"token\":\"\"}", CHAT_IN_AUTH},
        {"{\"type\":\"message\"}", CHAT_IN_MESSAGE},
        {"{\"type\":\"shout\"}", 0},
        {"{\"type\":\"auth\",", 0}, /* not JSON: chat_proto_scan's job */
        {"[1]", 0},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_in in;
        const char *code = NULL;
        assert_int_equal(chat_proto_parse(cases[i].json, strlen(cases[i].json), MAX_MSG, &in, &code, NULL, 0),
                         CHAT_EINVAL);
        if (in.type != cases[i].type) fail_msg("%s: type %d, want %d", cases[i].json, in.type, cases[i].type);
        assert_null(in.token);
        chat_in_clear(&in);
    }
}

static void test_auth_scan_table(void **state)
{
    static const struct {
        const char *frame;
        bool auth;
    } cases[] = {
        {"{\"type\":\"auth\",\"token\":\"abc", true},                  /* cut short */
        {"{\"token\":\"abc\",\"type\":\"auth\"", true},               /* type after the token */
        {"{ \"type\" :\t\"auth\" ,\"token\":}", true},                  /* blanks */
        {"{\"token\":\"a\\\"b\",\"type\":\"auth\"}xx", true},         /* an escaped quote before it */
        {"{\"type\":\"message\",\"message\":\"x", false},
        {"{\"type\":\"authx\"", false},
        {"{\"type\":\"aut\"", false},
        {"{\"typex\":\"auth\"", false},
        {"{\"xtype\":\"auth\"", false},
        {"{\"type\":\"au\\u0074h\"", false},                           /* escapes are not decoded */
        {"{\"message\":\"\\\"type\\\":\\\"auth\\\"\",", false},     /* inside a string */
        {"{\"x\":{\"type\":\"auth\"}", false},                          /* not at the top level */
        {"[\"type\",\"auth\"]", false},
        {"{\"type\",\"auth\"}", false},
        {"{\"type\"::\"auth\"}", false},
        {"{\"type\":{\"auth\"", false},
        {"not json", false},
        {"", false},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        const char *f = cases[i].frame;
        size_t n = strlen(f);
        chat_proto_scan sc;
        memset(&sc, 0, sizeof sc);
        chat_proto_scan_feed(&sc, f, n);
        if (sc.auth != cases[i].auth) fail_msg("%s: auth %d", f, sc.auth);
        /* Fed a byte at a time, and cut in two at every point, the answer is the same. */
        for (size_t cut = 0; cut <= n; cut++) {
            memset(&sc, 0, sizeof sc);
            chat_proto_scan_feed(&sc, f, cut);
            chat_proto_scan_feed(&sc, f + cut, n - cut);
            if (sc.auth != cases[i].auth) fail_msg("%s cut at %zu: auth %d", f, cut, sc.auth);
        }
        memset(&sc, 0, sizeof sc);
        for (size_t k = 0; k < n; k++)
            chat_proto_scan_feed(&sc, f + k, 1);
        if (sc.auth != cases[i].auth) fail_msg("%s byte by byte: auth %d", f, sc.auth);
    }
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_parse_table),     cmocka_unit_test(test_parse_edges),
              cmocka_unit_test(test_auth_frames),     cmocka_unit_test(test_progress_frames),
              cmocka_unit_test(test_complete_frames), cmocka_unit_test(test_error_frames),
              cmocka_unit_test(test_token_frames),    cmocka_unit_test(test_token_malformed_utf8),
              cmocka_unit_test(test_token_random),
              cmocka_unit_test(test_token_frames_from_escaped_slices),
              cmocka_unit_test(test_frame_tables),
              cmocka_unit_test(test_parse_resume_and_cancel),
              cmocka_unit_test(test_answer_frames),
              cmocka_unit_test(test_code_table),
              cmocka_unit_test(test_step_table),
              cmocka_unit_test(test_cancelled_frames),
              cmocka_unit_test(test_other_frames),
              cmocka_unit_test(test_client_frames),
              cmocka_unit_test(test_message_fields_match_parser),
              cmocka_unit_test(test_auth_error_codes),
              cmocka_unit_test(test_parse_failure_keeps_type),
              cmocka_unit_test(test_auth_scan_table))
