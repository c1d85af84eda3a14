/* Tests for chat_openai_api: a table of request bodies with what the parser makes of each (the question,
 * the extension fields, the stream options, or the refusal's code, param and words), a table of every
 * builder's exact text for one answer, the error types per status, and the finish reasons read from the
 * pipeline's metadata. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_openai_api.h"
#include "chat_proto.h"
#include "testutil.h"

#define MAX_MSG 40
#define M "\"model\":\"seawind-assistant\","
#define U(text) "\"messages\":[{\"role\":\"user\",\"content\":\"" text "\"}]"

/* ---- the request ---- */

static const struct parse_case {
    const char *name, *body;
    int rc;
    /* on success */
    const char *message, *session_id, *customer_id;
    bool stream, include_usage;
    /* on failure */
    chat_proto_code code;
    const char *param, *error; /* error: the start of the message */
} parse_cases[] = {
#define OK(n, b, m, s, c, st, u)                                                                                       \
    {                                                                                                                  \
        .name = n, .body = b, .message = m, .session_id = s, .customer_id = c, .stream = st, .include_usage = u        \
    }
#define BAD(n, b, c, p, e)                                                                                             \
    {                                                                                                                  \
        .name = n, .body = b, .rc = CHAT_EINVAL, .code = CHAT_PROTO_##c, .param = p, .error = e                        \
    }
    OK("minimal", "{" M U("What is the engine power?") "}", "What is the engine power?", NULL, NULL, false, false),
    OK("trailing whitespace", "{" M U("hi") "} \r\n", "hi", NULL, NULL, false, false),
    OK("the last user message is the question",
       "{" M "\"messages\":[{\"role\":\"system\",\"content\":\"Be brief\"},{\"role\":\"user\",\"content\":\"first\"},"
       "{\"role\":\"assistant\",\"content\":\"answer\"},{\"role\":\"user\",\"content\":\"  second \"}]}",
       "second", NULL, NULL, false, false),
    OK("an assistant message after it",
       "{" M "\"messages\":[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":null}]}", "q",
       NULL, NULL, false, false),
    OK("text parts joined",
       "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
       "{\"type\":\"text\",\"text\":\"b\"}]}]}",
       "a\nb", NULL, NULL, false, false),
    OK("extension ids", "{" M U("hi") ",\"session_id\":\"s-1\",\"customer_id\":\"cust-1001\",\"user\":\"u\"}", "hi",
       "s-1", "cust-1001", false, false),
    OK("null ids", "{" M U("hi") ",\"session_id\":null,\"customer_id\":\"\"}", "hi", NULL, NULL, false, false),
    OK("stream", "{" M U("hi") ",\"stream\":true}", "hi", NULL, NULL, true, false),
    OK("stream with usage", "{" M U("hi") ",\"stream\":true,\"stream_options\":{\"include_usage\":true}}", "hi", NULL,
       NULL, true, true),
    OK("usage without stream", "{" M U("hi") ",\"stream_options\":{\"include_usage\":true}}", "hi", NULL, NULL, false,
       false),
    OK("ignored fields",
       "{" M U("hi") ",\"temperature\":0.2,\"max_tokens\":5,\"n\":1,\"stream\":null,"
                     "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":"
                     "\"object\"}}}]}",
       "hi", NULL, NULL, false, false),

    BAD("not JSON", "{\"model\":", INVALID_JSON, NULL, "The request body is not"),
    BAD("empty body", "", INVALID_JSON, NULL, "The request body is not"),
    BAD("two values", "{} {}", INVALID_JSON, NULL, "The request body is not"),
    BAD("array", "[1]", INVALID_REQUEST, NULL, "The request body must be"),
    BAD("no model", "{" U("hi") "}", INVALID_REQUEST, "model", "model is required"),
    BAD("model not a string", "{\"model\":7," U("hi") "}", INVALID_REQUEST, "model", "model must be a string"),
    BAD("another model", "{\"model\":\"gpt-4o\"," U("hi") "}", NOT_FOUND, "model", "The model 'gpt-4o' does not exist"),
    BAD("another model, shown harmless", "{\"model\":\"<b>\\n\"," U("hi") "}", NOT_FOUND, "model",
        "The model '<b>?' does not exist"),
    BAD("no messages", "{" M "\"stream\":true}", INVALID_REQUEST, "messages", "messages must be an array"),
    BAD("messages not an array", "{" M "\"messages\":{}}", INVALID_REQUEST, "messages", "messages must be an array"),
    BAD("empty messages", "{" M "\"messages\":[]}", INVALID_REQUEST, "messages", "messages must not be empty"),
    BAD("message not an object", "{" M "\"messages\":[\"hi\"]}", INVALID_REQUEST, "messages",
        "messages[0] must be an object"),
    BAD("unknown role", "{" M "\"messages\":[{\"role\":\"robot\",\"content\":\"hi\"}]}", INVALID_REQUEST, "messages",
        "messages[0].role must be one of"),
    BAD("no role", "{" M "\"messages\":[{\"content\":\"hi\"}]}", INVALID_REQUEST, "messages",
        "messages[0].role must be one of"),
    BAD("user content missing", "{" M "\"messages\":[{\"role\":\"user\"}]}", INVALID_REQUEST, "messages",
        "messages[0].content must be"),
    BAD("image part",
        "{" M "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{}}]}]}",
        INVALID_REQUEST, "messages", "messages[0].content must be"),
    BAD("content a number",
        "{" M "\"messages\":[{\"role\":\"system\",\"content\":1},{\"role\":\"user\",\"content\":\"x\"}]}",
        INVALID_REQUEST, "messages", "messages[0].content must be"),
    BAD("no user message", "{" M "\"messages\":[{\"role\":\"system\",\"content\":\"x\"}]}", INVALID_REQUEST, "messages",
        "messages must hold a user message"),
    BAD("blank question", "{" M U(" \\n ") "}", EMPTY_MESSAGE, "messages", "Message cannot be empty"),
    BAD("question too long", "{" M U("0123456789012345678901234567890123456789x") "}", MESSAGE_TOO_LONG, "messages",
        "Message too long (maximum 40 bytes)"),
    BAD("NUL in the question", "{" M U("a\\u0000b") "}", INVALID_REQUEST, "messages", "Message must not contain NUL"),
    BAD("bad session id", "{" M U("hi") ",\"session_id\":\"has space\"}", INVALID_REQUEST, "session_id",
        "Invalid session_id"),
    BAD("bad customer id", "{" M U("hi") ",\"customer_id\":5}", INVALID_REQUEST, "customer_id", "Invalid customer_id"),
    BAD("stream not a boolean", "{" M U("hi") ",\"stream\":\"yes\"}", INVALID_REQUEST, "stream",
        "stream must be a boolean"),
    BAD("stream_options not an object", "{" M U("hi") ",\"stream\":true,\"stream_options\":true}", INVALID_REQUEST,
        "stream_options", "stream_options must be an object"),
    BAD("include_usage not a boolean", "{" M U("hi") ",\"stream\":true,\"stream_options\":{\"include_usage\":1}}",
        INVALID_REQUEST, "stream_options", "stream_options.include_usage must be a boolean"),
    BAD("n of 2", "{" M U("hi") ",\"n\":2}", INVALID_REQUEST, "n", "Only n = 1 is supported"),
#undef OK
#undef BAD
};

static void check_str(const char *what, const char *want, const char *got)
{
    if (!want && !got) return;
    if (!want || !got || strcmp(want, got))
        fail_msg("%s: want '%s', got '%s'", what, want ? want : "(null)", got ? got : "(null)");
}

static void test_parse_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(parse_cases); i++) {
        const struct parse_case *c = &parse_cases[i];
        chat_oai_request r;
        chat_oai_refusal why;
        int rc = chat_oai_parse_request(c->body, strlen(c->body), MAX_MSG, &r, &why);
        if (rc != c->rc) fail_msg("%s: rc %d, want %d (%s)", c->name, rc, c->rc, why.message);
        if (rc == 0) {
            check_str(c->name, c->message, r.in.message);
            check_str(c->name, c->session_id, r.in.session_id);
            check_str(c->name, c->customer_id, r.in.customer_id);
            if (r.stream != c->stream || r.include_usage != c->include_usage) fail_msg("%s: stream options", c->name);
        } else {
            if (why.code != c->code)
                fail_msg("%s: code %s, want %s", c->name, chat_proto_code_name(why.code),
                         chat_proto_code_name(c->code));
            check_str(c->name, c->param, why.param);
            if (strncmp(why.message, c->error, strlen(c->error)))
                fail_msg("%s: message '%s', want it to start with '%s'", c->name, why.message, c->error);
            assert_null(r.in.message); /* nothing is held after a refusal */
        }
        chat_oai_request_clear(&r);
    }
}

/* ---- the builders ---- */

#define META                                                                                                           \
    "{\"agent\":\"specs\",\"confidence\":0.8,\"context\":{\"sources\":[\"seawind-250/specs.md\"]},"                    \
    "\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":400,\"completion_tokens\":40}}"
#define HEAD(object)                                                                                                   \
    "{\"id\":\"chatcmpl-r1\",\"object\":\"" object "\",\"created\":1700000000,\"model\":\"seawind-assistant\","
#define EXT                                                                                                            \
    "\"seawind\":{\"agent\":\"specs\",\"confidence\":0.8,\"context\":{\"sources\":[\"seawind-250/specs.md\"]},"        \
    "\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":400,\"completion_tokens\":40},\"session_id\":\"s-1\"}"
#define USAGE "\"usage\":{\"prompt_tokens\":400,\"completion_tokens\":40,\"total_tokens\":440}"

static void test_builders_table(void **state)
{
    (void)state;
    chat_oai_ctx c = chat_oai_ctx_make("r1", 1700000000, false), cu = chat_oai_ctx_make("r1", 1700000000, true);
    assert_string_equal(c.id, "chatcmpl-r1");
    const struct {
        const char *name;
        char *got;
        const char *want;
    } cases[] = {
        {"completion", chat_oai_completion(&c, "It has 250 hp.", "s-1", META),
         HEAD("chat.completion") "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"It has "
                                 "250 hp.\"},\"finish_reason\":\"stop\"}]," USAGE "," EXT "}"},
        {"completion without metadata", chat_oai_completion(&c, "x", NULL, NULL),
         HEAD("chat.completion") "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"x\"},"
                                 "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":0,\"completion_tokens\":0,"
                                 "\"total_tokens\":0},\"seawind\":{\"session_id\":null}}"},
        {"role chunk", chat_oai_chunk_role(&c),
         HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},"
                                       "\"finish_reason\":null}]}"},
        {"content chunk", chat_oai_chunk_content(&c, "a \"b\"\n\xff", 7),
         HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a "
                                       "\\\"b\\\"\\n\xef\xbf\xbd\"},"
                                       "\"finish_reason\":null}]}"},
        {"content chunk, usage to come", chat_oai_chunk_content(&cu, "a", 1),
         HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"},\"finish_reason\":null}"
                                       "],"
                                       "\"usage\":null}"},
        {"finish chunk", chat_oai_chunk_finish(&c, "s-1", META),
         HEAD("chat.completion.chunk") "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]," EXT "}"},
        {"usage chunk", chat_oai_chunk_usage(&cu, META), HEAD("chat.completion.chunk") "\"choices\":[]," USAGE "}"},
        {"error", chat_oai_error(CHAT_PROTO_INVALID_TOKEN, NULL, NULL),
         "{\"error\":{\"message\":\"Invalid token\",\"type\":\"authentication_error\",\"param\":null,\"code\":"
         "\"INVALID_TOKEN\"}}"},
        {"error with param", chat_oai_error(CHAT_PROTO_NOT_FOUND, "No such model", "model"),
         "{\"error\":{\"message\":\"No such model\",\"type\":\"not_found_error\",\"param\":\"model\",\"code\":"
         "\"NOT_FOUND\"}}"},
        {"models", chat_oai_models(),
         "{\"object\":\"list\",\"data\":[{\"id\":\"seawind-assistant\",\"object\":\"model\",\"created\":1767225600,"
         "\"owned_by\":\"seawind-marine\"}]}"},
        {"model", chat_oai_model(),
         "{\"id\":\"seawind-assistant\",\"object\":\"model\",\"created\":1767225600,\"owned_by\":\"seawind-marine\"}"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        if (!cases[i].got) fail_msg("%s: NULL", cases[i].name);
        if (strcmp(cases[i].got, cases[i].want))
            fail_msg("%s:\n got %s\nwant %s", cases[i].name, cases[i].got, cases[i].want);
        free(cases[i].got);
    }
    /* The static out-of-memory body is the same shape. */
    json_object *o = json_tokener_parse(chat_oai_error_oom);
    assert_non_null(o);
    json_object *e = NULL, *v = NULL;
    assert_true(json_object_object_get_ex(o, "error", &e));
    assert_true(json_object_object_get_ex(e, "code", &v));
    assert_string_equal(json_object_get_string(v), "PROCESSING_ERROR");
    json_object_put(o);
}

static void test_error_types(void **state)
{
    (void)state;
    static const struct {
        int status;
        const char *type;
    } cases[] = {
        {400, "invalid_request_error"}, {401, "authentication_error"},  {403, "permission_error"},
        {404, "not_found_error"},       {405, "invalid_request_error"}, {413, "invalid_request_error"},
        {415, "invalid_request_error"}, {429, "rate_limit_error"},      {500, "server_error"},
        {503, "server_error"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++)
        check_str("type", cases[i].type, chat_oai_error_type(cases[i].status));
    /* Every code of the protocol's table builds an error whose type matches its status. */
    for (int c = 0; c < CHAT_PROTO_CODE_COUNT; c++) {
        char *s = chat_oai_error((chat_proto_code)c, NULL, NULL);
        assert_non_null(s);
        assert_non_null(strstr(s, chat_oai_error_type(chat_proto_code_status((chat_proto_code)c))));
        assert_non_null(strstr(s, chat_proto_code_name((chat_proto_code)c)));
        free(s);
    }
}

static void test_finish_reasons(void **state)
{
    (void)state;
    static const struct {
        const char *meta, *want;
    } cases[] = {
        {"{\"finish_reason\":\"stop\"}", "stop"},
        {"{\"finish_reason\":\"length\"}", "length"},
        {"{\"finish_reason\":\"cancelled\"}", "cancelled"},
        {"{\"finish_reason\":\"error\"}", "error"},
        {"{\"finish_reason\":\"other\"}", "stop"},
        {"{\"finish_reason\":3}", "stop"},
        {"{}", "stop"},
        {"not json", "stop"},
        {NULL, "stop"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++)
        check_str(cases[i].meta ? cases[i].meta : "NULL", cases[i].want, chat_oai_finish_reason(cases[i].meta));
    /* The finish chunk says the same. */
    chat_oai_ctx c = chat_oai_ctx_make("r", 1, false);
    char *s = chat_oai_chunk_finish(&c, NULL, "{\"finish_reason\":\"length\"}");
    assert_non_null(strstr(s, "\"finish_reason\":\"length\""));
    free(s);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_parse_table),
              cmocka_unit_test(test_builders_table),
              cmocka_unit_test(test_error_types),
              cmocka_unit_test(test_finish_reasons))
