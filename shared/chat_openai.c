/* The "openai" LLM provider: POST {base_url}/chat/completions with stream: true, the response read
 * through chat_sse, each data payload parsed by chat_openai_parse_chunk, text handed to the caller as it
 * arrives.
 *
 * Why the libcurl multi API rather than curl_easy_perform: the easy API blocks a thread per answer and
 * only lets us look at the clock and the cancel flag from the progress callback, which libcurl calls about
 * once a second while the server is silent; a user pressing "stop" while the model thinks would wait up to
 * a second, and the first-token and stall timers would be as coarse. With the multi API the caller's event
 * loop (chat_llm_loop, in chat_llm.c) drives every transfer: the provider's per-loop state (oai_loop) is
 * one multi handle shared by all generations of the loop, so one thread streams any number of answers, and
 * the multi's connection and DNS caches keep the TLS connection to the provider alive between generations
 * (a worker answers many messages).
 *
 * The loop knows nothing of libcurl: it polls the sockets and waits for the timer this file hands it
 * (libcurl's socket interface, CURLMOPT_SOCKETFUNCTION and CURLMOPT_TIMERFUNCTION, keeps both up to
 * date) and calls oai_loop_work, which gives libcurl the ready sockets and the expired timer with
 * curl_multi_socket_action. Only the sockets that moved cost anything, unlike curl_multi_perform, which
 * visits every transfer on every wake.
 *
 * A generation is therefore a state machine rather than a blocking function: pending (request built,
 * nothing sent; transfers are only ever added to the multi from oai_gen_step, never from inside a libcurl
 * callback, where libcurl forbids it) -> transfer -> finished. The loop calls
 * oai_gen_step when oai_gen_deadline is due or the cancel flag is up; when curl_multi_info_read reports a
 * transfer's end (the generation found through CURLOPT_PRIVATE), oai_loop_work ends the attempt and tells
 * the loop through the generation's resched hook that its deadline moved (to at once when it finished),
 * so the loop, not libcurl's stack, calls the done callback. A transfer cut short (cancel, timeout, the
 * [DONE] grace) is removed from the multi, which closes its connection.
 *
 * Timers: connect (CURLOPT_CONNECTTIMEOUT_MS, libcurl's own), first token (no content within
 * llm_first_token_timeout_ms of sending the request; keep-alive comments do not count) and stall (once
 * text has started, no byte at all for llm_stall_timeout_ms). Before the first token only the first-token
 * timer applies, because servers loading a model often send their headers and then nothing for a while.
 * The deadline the loop keeps may be early (the stall deadline moves with every byte): a step that finds
 * nothing due just gives a later one.
 *
 * One generation is one attempt: retries and fallbacks are the chain's (chat_llm.c), which reads the
 * attempt's class (gen_attempt: 429 rate_limited, 500/502/503/504 and a refused or cut connection
 * unavailable, 401/403 auth_error...) and the wait the server asked for (Retry-After in seconds, or
 * OpenAI's and Azure's retry-after-ms), and rewinds the generation (gen_rewind) to send the same body
 * again.
 *
 * Extra request fields and headers (cfg->llm_extra_body, cfg->llm_extra_headers: JSON objects, checked
 * when the provider opens) serve OpenRouter's HTTP-Referer / X-Title, Ollama's keep_alive and options
 * and the like: the body's fields are merged under the ones this file sets (model, messages, stream,
 * stream_options, max_tokens, temperature win), the headers go after the fixed ones; headers that frame
 * the request (Content-Type, Content-Length, Accept, Host, Transfer-Encoding, Expect) and Authorization
 * (the key's own setting) are refused. Header values may be secrets: they are never logged.
 *
 * Text is emitted only in whole UTF-8 characters: a chunk that ends inside a multi-byte character keeps
 * the cut bytes until the next chunk completes them; invalid bytes become U+FFFD so the caller always
 * gets valid UTF-8. The API key goes only into the Authorization header; it is never logged, and a
 * provider error message that happens to contain it is replaced by a generic one. */
#include "chat_openai.h"

#include <ctype.h>
#include <curl/curl.h>
#include <json-c/json.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat_common.h"
#include "chat_llm_provider.h"
#include "chat_list.h"
#include "chat_log.h"
#include "chat_sse.h"
#include "chat_util.h"

#define OAI_MAX_EVENT_BYTES (1 << 20)
#define OAI_MAX_ERRBODY 16384 /* kept of a non-2xx body, to quote the provider's message */
#define OAI_DONE_GRACE_MS 500 /* after [DONE], how long to wait for the body to end cleanly */
#define OAI_RETRY_AFTER_MAX_MS 600000 /* a longer Retry-After is read as this (the chain caps its wait anyway) */
#define OAI_EXTRA_MAX 32             /* extra headers */
#define OAI_MSG_MAX 200 /* provider messages quoted in err are cut to this */

struct chat_openai {
    char url[600];
    char key[512];
    char model[256];
    int connect_ms, first_ms, stall_ms, max_tokens;
    char *extra_body;                  /* a JSON object's text, NULL for none: parsed per request (json-c
                                        * objects are not shared across threads) */
    char *extra_headers[OAI_EXTRA_MAX]; /* "Name: value" lines */
    size_t n_extra_headers;
};

static pthread_once_t oai_once = PTHREAD_ONCE_INIT;
static CURLcode oai_global_rc = CURLE_OK;
static void oai_global_init(void)
{
    oai_global_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- small helpers ---- */

/* Copies a provider-supplied message into out: control characters become spaces, the length is cut at
 * a UTF-8 boundary, and the message is dropped entirely if it contains the API key. */
static void oai_safe_msg(char *out, size_t outlen, const char *msg, size_t len, const char *key)
{
    if (!outlen) return;
    out[0] = '\0';
    if (!msg) return;
    if (key && *key && len >= strlen(key) && memmem(msg, len, key, strlen(key))) {
        snprintf(out, outlen, "(message withheld)");
        return;
    }
    size_t max = outlen - 1 < OAI_MSG_MAX ? outlen - 1 : OAI_MSG_MAX;
    size_t n = chat_utf8_prefix(msg, len, max);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)msg[i];
        out[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    out[n] = '\0';
}

/* Finds a human message in an error JSON: {"error":{"message":..}}, {"error":".."}, {"message":..},
 * {"detail":..}. Returns a pointer into root (valid while root lives) or NULL. */
static const char *oai_error_message(json_object *root, size_t *len)
{
    json_object *e = NULL, *m = NULL;
    if (!json_object_is_type(root, json_type_object)) return NULL;
    if (json_object_object_get_ex(root, "error", &e) && e) {
        if (json_object_is_type(e, json_type_string))
            m = e;
        else if (json_object_is_type(e, json_type_object) && json_object_object_get_ex(e, "message", &m) &&
                 !json_object_is_type(m, json_type_string))
            m = NULL;
    }
    if (!m && json_object_object_get_ex(root, "message", &m) && !json_object_is_type(m, json_type_string)) m = NULL;
    if (!m && json_object_object_get_ex(root, "detail", &m) && !json_object_is_type(m, json_type_string)) m = NULL;
    if (!m) return NULL;
    *len = (size_t)json_object_get_string_len(m);
    return json_object_get_string(m);
}

/* Parses exactly [data, data+len) as one JSON value (trailing whitespace allowed). */
static json_object *oai_parse_json(const char *data, size_t len)
{
    if (len == 0 || len > INT_MAX) return NULL;
    json_tokener *tok = json_tokener_new();
    if (!tok) return NULL;
    json_object *root = json_tokener_parse_ex(tok, data, (int)len);
    if (root && json_tokener_get_error(tok) == json_tokener_success) {
        for (size_t i = json_tokener_get_parse_end(tok); i < len; i++) {
            if (!isspace((unsigned char)data[i])) {
                json_object_put(root);
                root = NULL;
                break;
            }
        }
    } else if (root) {
        json_object_put(root);
        root = NULL;
    }
    json_tokener_free(tok);
    return root;
}

static int oai_append_text(char **text, const char *s, size_t n)
{
    size_t old = *text ? strlen(*text) : 0;
    char *p = realloc(*text, old + n + 1);
    if (!p) return CHAT_ENOMEM;
    size_t k = old;
    for (size_t i = 0; i < n; i++)
        if (s[i]) p[k++] = s[i]; /* a NUL would silently cut a C string further down */
    p[k] = '\0';
    *text = p;
    return 0;
}

int chat_openai_parse_chunk(const char *data, size_t len, char **text, char finish_reason[16], int *prompt_tokens,
                            int *completion_tokens, char *err, size_t errlen)
{
    json_object *root = data ? oai_parse_json(data, len) : NULL;
    if (!root || !json_object_is_type(root, json_type_object)) {
        json_object_put(root);
        return chat_fail(err, errlen, CHAT_EINVAL, "LLM sent an invalid response");
    }
    int rc = 0;
    json_object *e = NULL, *choices = NULL, *usage = NULL;
    if (json_object_object_get_ex(root, "error", &e) && e && !json_object_is_type(e, json_type_null)) {
        size_t mlen = 0;
        const char *m = oai_error_message(root, &mlen);
        char safe[OAI_MSG_MAX + 1];
        oai_safe_msg(safe, sizeof safe, m, mlen, NULL);
        rc = chat_fail(err, errlen, CHAT_EINVAL, "LLM provider error: %s", safe[0] ? safe : "unspecified");
        goto cleanup;
    }

    if (json_object_object_get_ex(root, "choices", &choices) && choices &&
        !json_object_is_type(choices, json_type_null)) {
        if (!json_object_is_type(choices, json_type_array)) {
            rc = chat_fail(err, errlen, CHAT_EINVAL, "LLM sent an invalid response");
            goto cleanup;
        }
        json_object *c0 = json_object_array_length(choices) ? json_object_array_get_idx(choices, 0) : NULL;
        if (c0 && json_object_is_type(c0, json_type_object)) {
            json_object *delta = NULL, *content = NULL, *fr = NULL;
            /* delta.content for chat chunks; message.content (a non-streamed answer) and text (the legacy
             * completions shape) are accepted too, since some servers fall back to them */
            if ((json_object_object_get_ex(c0, "delta", &delta) || json_object_object_get_ex(c0, "message", &delta)) &&
                json_object_is_type(delta, json_type_object))
                json_object_object_get_ex(delta, "content", &content);
            else
                json_object_object_get_ex(c0, "text", &content);
            if (content && json_object_is_type(content, json_type_string) && text) {
                rc =
                    oai_append_text(text, json_object_get_string(content), (size_t)json_object_get_string_len(content));
                if (rc) goto cleanup;
            }
            if (json_object_object_get_ex(c0, "finish_reason", &fr) && json_object_is_type(fr, json_type_string) &&
                finish_reason) {
                const char *s = json_object_get_string(fr);
                if (*s) snprintf(finish_reason, 16, "%s", s);
            }
        }
    }

    if (json_object_object_get_ex(root, "usage", &usage) && json_object_is_type(usage, json_type_object)) {
        json_object *v = NULL;
        if (prompt_tokens && json_object_object_get_ex(usage, "prompt_tokens", &v) &&
            json_object_is_type(v, json_type_int))
            *prompt_tokens = json_object_get_int(v);
        if (completion_tokens && json_object_object_get_ex(usage, "completion_tokens", &v) &&
            json_object_is_type(v, json_type_int))
            *completion_tokens = json_object_get_int(v);
    }
cleanup:
    json_object_put(root);
    return rc;
}

/* ---- lifecycle ---- */

/* Headers the request's own framing and key set: LLM_EXTRA_HEADERS may not name them. */
static const char *const OAI_OWN_HEADERS[] = {"content-type", "content-length", "transfer-encoding", "accept",
                                              "host",         "expect",         "authorization"};

/* An HTTP token (RFC 9110 tchar), not one of OAI_OWN_HEADERS. */
static bool oai_header_name_ok(const char *name)
{
    if (!*name) return false;
    for (const char *c = name; *c; c++)
        if (!isalnum((unsigned char)*c) && !strchr("!#$%&'*+-.^_`|~", *c)) return false;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(OAI_OWN_HEADERS); i++)
        if (!strcasecmp(name, OAI_OWN_HEADERS[i])) return false;
    return true;
}

/* One extra header as libcurl takes it ("Name;" sends an empty value, "Name:" would remove it). */
static int oai_add_header(chat_openai *o, const char *name, json_object *val, char *err, size_t errlen)
{
    static const char bad[] = "LLM_EXTRA_HEADERS must be a JSON object of header names and string values, "
                              "without the request's own headers (Content-Type, Accept, Authorization...)";
    if (!oai_header_name_ok(name) || !json_object_is_type(val, json_type_string))
        return chat_fail(err, errlen, CHAT_EINVAL, "%s", bad);
    const char *v = json_object_get_string(val);
    size_t vlen = (size_t)json_object_get_string_len(val);
    if (vlen != strlen(v) || strpbrk(v, "\r\n")) return chat_fail(err, errlen, CHAT_EINVAL, "%s", bad);
    if (o->n_extra_headers == OAI_EXTRA_MAX)
        return chat_fail(err, errlen, CHAT_EINVAL, "LLM_EXTRA_HEADERS has more than %d headers", OAI_EXTRA_MAX);
    char *line = NULL;
    if (asprintf(&line, vlen ? "%s: %s" : "%s;", name, v) < 0)
        return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    o->extra_headers[o->n_extra_headers++] = line;
    return 0;
}

/* cfg's extra headers and body: "" or JSON objects, checked here so that a bad one stops the start. */
static int oai_extras(chat_openai *o, const chat_config *cfg, char *err, size_t errlen)
{
    int rc = 0;
    if (cfg->llm_extra_headers[0]) {
        json_object *h = oai_parse_json(cfg->llm_extra_headers, strlen(cfg->llm_extra_headers));
        if (!json_object_is_type(h, json_type_object))
            rc = chat_fail(err, errlen, CHAT_EINVAL, "LLM_EXTRA_HEADERS must be a JSON object");
        else
            for (struct json_object_iterator it = json_object_iter_begin(h), end = json_object_iter_end(h);
                 !rc && !json_object_iter_equal(&it, &end); json_object_iter_next(&it))
                rc = oai_add_header(o, json_object_iter_peek_name(&it), json_object_iter_peek_value(&it), err, errlen);
        json_object_put(h);
    }
    if (!rc && cfg->llm_extra_body[0]) {
        json_object *b = oai_parse_json(cfg->llm_extra_body, strlen(cfg->llm_extra_body));
        if (!json_object_is_type(b, json_type_object))
            rc = chat_fail(err, errlen, CHAT_EINVAL, "LLM_EXTRA_BODY must be a JSON object");
        else if (!(o->extra_body = strdup(cfg->llm_extra_body)))
            rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        json_object_put(b);
    }
    return rc;
}

chat_openai *chat_openai_new(const chat_config *cfg, char *err, size_t errlen)
{
    if (!cfg) return chat_fail_null(err, errlen, "no configuration");
    size_t blen = strlen(cfg->llm_base_url);
    while (blen && cfg->llm_base_url[blen - 1] == '/')
        blen--;
    if (!blen) return chat_fail_null(err, errlen, "the openai provider needs LLM_BASE_URL");
    if (strncmp(cfg->llm_base_url, "http://", 7) && strncmp(cfg->llm_base_url, "https://", 8)) return chat_fail_null(err, errlen, "LLM_BASE_URL must start with http:// or https://");
    pthread_once(&oai_once, oai_global_init);
    if (oai_global_rc != CURLE_OK) return chat_fail_null(err, errlen, "libcurl initialisation failed");
    chat_openai *o = calloc(1, sizeof *o);
    if (!o) return chat_fail_null(err, errlen, "out of memory");
    int n = snprintf(o->url, sizeof o->url, "%.*s/chat/completions", (int)blen, cfg->llm_base_url);
    if (n < 0 || (size_t)n >= sizeof o->url) {
        free(o);
        chat_fail(err, errlen, CHAT_EINVAL, "LLM_BASE_URL is too long");
        return NULL;
    }
    snprintf(o->key, sizeof o->key, "%s", cfg->llm_api_key);
    snprintf(o->model, sizeof o->model, "%s", cfg->llm_model[0] ? cfg->llm_model : "default");
    o->connect_ms = cfg->llm_connect_timeout_ms > 0 ? cfg->llm_connect_timeout_ms : 5000;
    o->first_ms = cfg->llm_first_token_timeout_ms > 0 ? cfg->llm_first_token_timeout_ms : 30000;
    o->stall_ms = cfg->llm_stall_timeout_ms > 0 ? cfg->llm_stall_timeout_ms : 15000;
    o->max_tokens = cfg->llm_max_tokens;
    if (oai_extras(o, cfg, err, errlen)) {
        chat_openai_free(o);
        return NULL;
    }
    return o;
}

void chat_openai_free(chat_openai *o)
{
    if (!o) return;
    explicit_bzero(o->key, sizeof o->key);
    for (size_t i = 0; i < o->n_extra_headers; i++) {
        explicit_bzero(o->extra_headers[i], strlen(o->extra_headers[i])); /* may hold a secret */
        free(o->extra_headers[i]);
    }
    free(o->extra_body);
    free(o);
}

/* ---- one generation ---- */

enum oai_state { OAI_PENDING, OAI_TRANSFER, OAI_FINISHED };

/* The provider's state on one chat_llm_loop: the multi handle every generation of the loop shares, the
 * sockets libcurl asked to watch (CURLMOPT_SOCKETFUNCTION; each socket's index + 1 is its
 * curl_multi_assign pointer, so an update is O(1)) and libcurl's timer (CURLMOPT_TIMERFUNCTION). */
typedef struct oai_loop {
    CURLM *multi;
    struct pollfd *fds;
    size_t nfds, cap;
    int64_t timer_due;           /* when curl_multi_socket_action(CURL_SOCKET_TIMEOUT) is due; INT64_MAX: never */
    struct chat_openai_gen *gens; /* every generation of the loop, for a multi that fails as a whole */
} oai_loop;

typedef struct chat_openai_gen {
    chat_openai *o;
    oai_loop *loop;
    struct chat_openai_gen *prev, *next; /* loop->gens */
    CURL *easy; /* the current attempt's transfer, in loop->multi; NULL outside OAI_TRANSFER */
    void (*resched)(void *loop_gen);
    void *priv; /* resched's argument */
    chat_sse *sse;
    chat_llm_token_fn fn;
    void *ud;
    const atomic_int *cancel;
    enum oai_state state;
    char *body;
    size_t body_len, prompt_bytes;
    char model[256]; /* what the request asks for: the request's own, else the configured one */
    struct curl_slist *headers; /* holds the Authorization header */
    int attempts;
    int64_t t0, attempt_t0;
    int rc; /* when finished */
    chat_llm_outcome outcome; /* when finished */
    chat_llm_result res;
    char err[512];
    /* the current attempt */
    chat_buf hold;    /* text not yet emitted: the start of a cut UTF-8 character */
    chat_buf out;     /* scratch for the piece being emitted */
    chat_buf errbody; /* body of a non-2xx answer, bounded */
    long status;
    int64_t last_byte_ms, done_ms;
    long retry_after_ms;    /* -1 when absent */
    bool retry_after_exact; /* it came from retry-after-ms */
    size_t body_bytes;
    bool got_content, done, any_event, user_stop;
    char finish[16];
    int usage_prompt, usage_completion; /* -1 when the stream gave none */
    int fail_code;                      /* set by a callback: abort with this error */
    char fail_msg[256];
} chat_openai_gen;

/* Emits the whole characters held in s->hold; with final, a cut character left at the end becomes
 * U+FFFD. Returns non-zero when the caller's callback asked to stop. */
static int oai_emit(chat_openai_gen *s, bool final)
{
    if (!s->hold.len) return 0; /* nothing held (hold.data may not even be allocated) */
    const unsigned char *h = (const unsigned char *)s->hold.data;
    size_t i = 0;
    chat_buf_reset(&s->out);
    while (i < s->hold.len) {
        size_t n = chat_utf8_char((const char *)h + i, s->hold.len - i);
        if (n == CHAT_UTF8_CUT && !final) break;
        if (n == 0 || n == CHAT_UTF8_CUT) {
            if (chat_buf_append(&s->out, "\xEF\xBF\xBD", 3)) return CHAT_ENOMEM;
            if (n == CHAT_UTF8_CUT)
                i = s->hold.len;
            else
                i++;
            continue;
        }
        if (chat_buf_append(&s->out, h + i, n)) return CHAT_ENOMEM;
        i += n;
    }
    memmove(s->hold.data, s->hold.data + i, s->hold.len - i);
    s->hold.len -= i;
    s->hold.data[s->hold.len] = '\0';
    if (!s->out.len || !s->fn) return 0;
    s->res.tokens_emitted++;
    if (s->fn(s->ud, s->out.data, s->out.len)) {
        s->user_stop = true;
        return 1;
    }
    return 0;
}

static int oai_fail(chat_openai_gen *s, int code, const char *msg)
{
    if (!s->fail_code) {
        s->fail_code = code;
        snprintf(s->fail_msg, sizeof s->fail_msg, "%s", msg);
    }
    return 1;
}

static int oai_on_event(void *ud, const char *event, const char *data, size_t len)
{
    chat_openai_gen *s = ud;
    if (s->done) return 0;
    s->any_event = true;
    while (len && isspace((unsigned char)*data))
        data++, len--;
    while (len && isspace((unsigned char)data[len - 1]))
        len--;
    if (!len) return 0; /* an empty data: line carries nothing */
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        s->done = true;
        s->done_ms = chat_now_ms();
        if (s->resched) s->resched(s->priv); /* the [DONE] grace replaces the other timers */
        return oai_emit(s, true);
    }
    char *text = NULL;
    char err[256];
    int rc =
        chat_openai_parse_chunk(data, len, &text, s->finish, &s->usage_prompt, &s->usage_completion, err, sizeof err);
    if (rc == 0 && !strcmp(event, "error")) rc = chat_fail(err, sizeof err, CHAT_EINVAL, "LLM provider error");
    if (rc) {
        free(text);
        /* a provider that echoes the request's key in its error text must not get it logged or shown */
        if (s->o->key[0] && strstr(err, s->o->key)) snprintf(err, sizeof err, "LLM provider error (message withheld)");
        return oai_fail(s, CHAT_ELLM, rc == CHAT_ENOMEM ? "out of memory" : err);
    }
    if (text && *text) {
        if (!s->got_content) {
            s->got_content = true;
            if (s->resched) s->resched(s->priv); /* the stall timer replaces the first-token one */
        }
        rc = chat_buf_puts(&s->hold, text);
        free(text);
        if (rc) return oai_fail(s, CHAT_ENOMEM, "out of memory");
        rc = oai_emit(s, false);
        if (rc < 0) return oai_fail(s, CHAT_ENOMEM, "out of memory");
        return rc;
    }
    free(text);
    return 0;
}

static size_t oai_write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
    chat_openai_gen *s = ud;
    size_t n = size * nmemb;
    s->last_byte_ms = chat_now_ms();
    if (!s->status) curl_easy_getinfo(s->easy, CURLINFO_RESPONSE_CODE, &s->status);
    if (s->status < 200 || s->status >= 300) {
        size_t room = s->errbody.len < OAI_MAX_ERRBODY ? OAI_MAX_ERRBODY - s->errbody.len : 0;
        if (room && chat_buf_append(&s->errbody, ptr, n < room ? n : room)) return 0;
        return n;
    }
    if (s->done) return n; /* the body after [DONE] is only read to keep the connection reusable */
    s->body_bytes += n;
    int rc = chat_sse_feed(s->sse, ptr, n);
    if (rc == CHAT_EINVAL)
        oai_fail(s, CHAT_ELLM, "LLM sent an invalid response");
    else if (rc == CHAT_ENOMEM)
        oai_fail(s, CHAT_ENOMEM, "out of memory");
    return rc ? 0 : n;
}

/* The non-negative integer value of header line ptr (n bytes) when its name is name: -1 otherwise (an
 * HTTP-date Retry-After is not worth parsing for a wait the chain caps at seconds: its default applies). */
static long oai_header_number(const char *ptr, size_t n, const char *name)
{
    size_t nl = strlen(name);
    if (n <= nl || strncasecmp(ptr, name, nl) || ptr[nl] != ':') return -1;
    char v[32];
    size_t k = 0;
    for (size_t i = nl + 1; i < n && k + 1 < sizeof v; i++)
        if (!isspace((unsigned char)ptr[i])) v[k++] = ptr[i];
    v[k] = '\0';
    char *end = NULL;
    long x = strtol(v, &end, 10);
    return k && end && !*end && x >= 0 ? x : -1;
}

static size_t oai_header_cb(char *ptr, size_t size, size_t nitems, void *ud)
{
    chat_openai_gen *s = ud;
    size_t n = size * nitems;
    s->last_byte_ms = chat_now_ms();
    if (n >= 5 && !strncmp(ptr, "HTTP/", 5)) {
        s->retry_after_ms = -1; /* a new response (after a 100 Continue, say) */
        s->retry_after_exact = false;
        return n;
    }
    long ms = oai_header_number(ptr, n, "retry-after-ms"), secs = oai_header_number(ptr, n, "Retry-After");
    if (ms >= 0) { /* wins over Retry-After, as in OpenAI's SDKs */
        s->retry_after_ms = ms;
        s->retry_after_exact = true;
    } else if (secs >= 0 && !s->retry_after_exact) {
        s->retry_after_ms = secs > OAI_RETRY_AFTER_MAX_MS / 1000 ? OAI_RETRY_AFTER_MAX_MS : secs * 1000;
    }
    if (s->retry_after_ms > OAI_RETRY_AFTER_MAX_MS) s->retry_after_ms = OAI_RETRY_AFTER_MAX_MS;
    return n;
}

/* Maps an HTTP status to the client-safe message and the attempt's class. */
static int oai_http_error(chat_openai_gen *s, char *err, size_t errlen, chat_llm_outcome *outcome)
{
    long st = s->status;
    bool gone = st == 500 || st == 502 || st == 503 || st == 504; /* others of 5xx will not change on a retry */
    *outcome = st == 429 ? CHAT_LLM_OUTCOME_RATE_LIMITED
               : gone    ? CHAT_LLM_OUTCOME_UNAVAILABLE
               : st == 401 || st == 403 ? CHAT_LLM_OUTCOME_AUTH
               : st >= 400 && st < 500  ? CHAT_LLM_OUTCOME_REFUSED
                                        : CHAT_LLM_OUTCOME_ERROR;
    if (st == 401 || st == 403) return chat_fail(err, errlen, CHAT_ELLM, "LLM provider rejected the API key");
    if (st == 429) return chat_fail(err, errlen, CHAT_ELLM, "LLM provider rate limit reached");
    if (st >= 500) return chat_fail(err, errlen, CHAT_ELLM, "LLM provider unavailable (HTTP %ld)", st);
    char msg[OAI_MSG_MAX + 1] = "";
    json_object *root = oai_parse_json(s->errbody.data, s->errbody.len);
    if (root) {
        size_t mlen = 0;
        const char *m = oai_error_message(root, &mlen);
        oai_safe_msg(msg, sizeof msg, m, mlen, s->o->key);
        json_object_put(root);
    }
    if (st >= 400)
        return chat_fail(err, errlen, CHAT_ELLM, "LLM provider refused the request (HTTP %ld)%s%s", st,
                         msg[0] ? ": " : "", msg);
    return chat_fail(err, errlen, CHAT_ELLM, "LLM provider answered HTTP %ld", st);
}

/* Maps a transfer's failure to the client-safe message and the attempt's class. */
static int oai_curl_error(chat_openai *o, CURLcode cc, char *err, size_t errlen, chat_llm_outcome *outcome)
{
    *outcome = CHAT_LLM_OUTCOME_ERROR;
    switch (cc) {
    case CURLE_COULDNT_CONNECT:
        *outcome = CHAT_LLM_OUTCOME_UNAVAILABLE;
        return chat_fail(err, errlen, CHAT_ELLM, "could not connect to the LLM provider");
    case CURLE_OPERATION_TIMEDOUT:
        *outcome = CHAT_LLM_OUTCOME_TIMEOUT;
        return chat_fail(err, errlen, CHAT_ETIMEOUT, "could not connect to the LLM provider within %d ms",
                         o->connect_ms);
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
        return chat_fail(err, errlen, CHAT_ELLM, "could not resolve the LLM provider's host name");
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        *outcome = CHAT_LLM_OUTCOME_UNAVAILABLE;
        return chat_fail(err, errlen, CHAT_ELLM, "LLM stream ended unexpectedly");
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE: return chat_fail(err, errlen, CHAT_ELLM, "TLS error talking to the LLM provider");
    default: return chat_fail(err, errlen, CHAT_ELLM, "LLM request failed: %s", curl_easy_strerror(cc));
    }
}

static void oai_stream_reset(chat_openai_gen *s)
{
    chat_sse_reset(s->sse);
    chat_buf_reset(&s->hold);
    chat_buf_reset(&s->errbody);
    s->status = 0;
    s->last_byte_ms = s->done_ms = 0;
    s->retry_after_ms = -1;
    s->retry_after_exact = false;
    s->body_bytes = 0;
    s->got_content = s->done = s->any_event = s->user_stop = false;
    s->finish[0] = '\0';
    s->usage_prompt = s->usage_completion = -1;
    s->fail_code = 0;
    s->fail_msg[0] = '\0';
}

/* The fixed headers, the extra ones, then Authorization when there is a key. */
static struct curl_slist *oai_headers(const chat_openai *o)
{
    const char *key = o->key;
    /* "Expect:" turns off libcurl's 100-continue round trip for large prompts */
    static const char *fixed[] = {"Content-Type: application/json", "Accept: text/event-stream", "Expect:"};
    struct curl_slist *l = NULL, *t;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(fixed); i++) {
        if (!(t = curl_slist_append(l, fixed[i]))) goto fail;
        l = t;
    }
    for (size_t i = 0; i < o->n_extra_headers; i++) {
        if (!(t = curl_slist_append(l, o->extra_headers[i]))) goto fail;
        l = t;
    }
    if (key[0]) {
        char auth[600];
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", key);
        t = curl_slist_append(l, auth);
        explicit_bzero(auth, sizeof auth);
        if (!t) goto fail;
        l = t;
    }
    return l;
fail:
    curl_slist_free_all(l);
    return NULL;
}

/* The request's JSON body for model; *prompt_bytes gets the prompt's size (the usage estimate). */
static char *oai_request_body(chat_openai *o, const chat_llm_request *req, const char *model, size_t *len,
                              size_t *prompt_bytes)
{
    char *out = NULL;
    /* the extra fields first: the ones set below replace any of the same name */
    json_object *root = o->extra_body ? json_tokener_parse(o->extra_body) : json_object_new_object();
    json_object *msgs = json_object_new_array();
    json_object *opts = json_object_new_object();
    if (!root || !msgs || !opts) goto cleanup;
    *prompt_bytes = 0;
    for (size_t i = 0; i < req->n_messages; i++) {
        const chat_llm_message *m = &req->messages[i];
        const char *content = m->content ? m->content : "";
        *prompt_bytes += strlen(content);
        json_object *jm = json_object_new_object();
        if (!jm) goto cleanup;
        json_object_object_add(jm, "role", json_object_new_string(m->role ? m->role : "user"));
        json_object_object_add(jm, "content", json_object_new_string(content));
        json_object_array_add(msgs, jm);
    }
    int max_tokens = req->max_tokens > 0 ? req->max_tokens : o->max_tokens;
    json_object_object_add(root, "model", json_object_new_string(model));
    json_object_object_add(root, "messages", msgs);
    msgs = NULL;
    json_object_object_add(root, "stream", json_object_new_boolean(1));
    if (max_tokens > 0) json_object_object_add(root, "max_tokens", json_object_new_int(max_tokens));
    if (req->has_temperature) {
        char t[32]; /* "0.2", not json-c's 17 digits */
        snprintf(t, sizeof t, "%g", req->temperature);
        json_object_object_add(root, "temperature", json_object_new_double_s(req->temperature, t));
    }
    json_object_object_add(opts, "include_usage", json_object_new_boolean(1));
    json_object_object_add(root, "stream_options", opts);
    opts = NULL;
    size_t n = 0;
    const char *s =
        json_object_to_json_string_length(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE, &n);
    if (s && (out = malloc(n + 1))) {
        memcpy(out, s, n + 1);
        *len = n;
    }
cleanup:
    json_object_put(opts);
    json_object_put(msgs);
    json_object_put(root);
    return out;
}

/* ---- the state machine ---- */

static bool oai_cancelled(const chat_openai_gen *s)
{
    return s->cancel && atomic_load(s->cancel);
}

/* The end of a generation: finish_reason, token counts, the outcome's class (s->outcome as the attempt
 * found it, ERROR unless set, for a failure), the log line. */
static void oai_finish(chat_openai_gen *s, int rc)
{
    chat_llm_result *res = &s->res;
    s->rc = rc;
    s->state = OAI_FINISHED;
    if (rc == 0) s->outcome = CHAT_LLM_OUTCOME_OK;
    else if (rc == CHAT_ECANCELLED) s->outcome = CHAT_LLM_OUTCOME_CANCELLED;
    if (rc == 0) {
        s->err[0] = '\0';
        if (!strcmp(s->finish, "length"))
            snprintf(res->finish_reason, sizeof res->finish_reason, "length");
        else
            snprintf(res->finish_reason, sizeof res->finish_reason, "stop"); /* stop, content_filter, eos... */
    } else if (rc == CHAT_ECANCELLED) {
        snprintf(res->finish_reason, sizeof res->finish_reason, "cancelled");
    }
    res->prompt_tokens = s->usage_prompt >= 0 ? s->usage_prompt : (int)(s->prompt_bytes / 4);
    res->completion_tokens = s->usage_completion >= 0 ? s->usage_completion : res->tokens_emitted;
    if (rc == 0 || rc == CHAT_ECANCELLED)
        chat_log_info("openai: model=%s status=%ld attempts=%d duration_ms=%lld tokens=%d finish=%s", s->model,
                      s->status, s->attempts, (long long)(chat_now_ms() - s->t0), res->tokens_emitted,
                      res->finish_reason);
    else
        chat_log_warn("openai: model=%s status=%ld attempts=%d duration_ms=%lld tokens=%d failed: %s (%s)", s->model,
                      s->status, s->attempts, (long long)(chat_now_ms() - s->t0), res->tokens_emitted, s->err,
                      chat_strerror(rc));
}

/* Starts an attempt: a new transfer in the multi. On failure the generation finishes. */
static void oai_begin_attempt(chat_openai_gen *s)
{
    chat_openai *o = s->o;
    oai_stream_reset(s);
    s->attempts++;
    s->t0 = chat_now_ms(); /* the log's duration is the attempt's: a fallback's generation waited its turn */
    CURL *e = curl_easy_init();
    if (!e) {
        oai_finish(s, chat_fail(s->err, sizeof s->err, CHAT_ENOMEM, "out of memory"));
        return;
    }
    curl_easy_setopt(e, CURLOPT_URL, o->url);
    curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(e, CURLOPT_POST, 1L);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, s->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->body_len);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, s->headers);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "chat-backend/1");
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)o->connect_ms);
    curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, oai_write_cb);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, oai_header_cb);
    curl_easy_setopt(e, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(e, CURLOPT_PRIVATE, s);
    s->attempt_t0 = chat_now_ms();
    if (curl_multi_add_handle(s->loop->multi, e) != CURLM_OK) {
        curl_easy_cleanup(e);
        oai_finish(s, chat_fail(s->err, sizeof s->err, CHAT_ERR, "libcurl could not start the request"));
        return;
    }
    s->easy = e;
    s->state = OAI_TRANSFER;
}

/* Ends the attempt (completed: libcurl finished the transfer with cc; otherwise it was cut short,
 * cancelled or timed out, timeout_kind 1 first token, 2 stall): its rc, message and class. */
static void oai_end_attempt(chat_openai_gen *s, bool completed, CURLcode cc, bool was_cancelled, int timeout_kind)
{
    chat_openai *o = s->o;
    char *err = s->err;
    size_t errlen = sizeof s->err;
    chat_llm_outcome outcome = CHAT_LLM_OUTCOME_ERROR;
    int rc = 0;
    CURL *e = s->easy;
    if (!s->status) curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &s->status);
    curl_multi_remove_handle(s->loop->multi, e); /* closes the connection when the transfer was cut short */
    curl_easy_cleanup(e);
    s->easy = NULL;

    bool ok2xx = s->status >= 200 && s->status < 300;
    if (s->user_stop || was_cancelled) {
        rc = chat_fail(err, errlen, CHAT_ECANCELLED, "generation cancelled");
    } else if (s->fail_code) {
        rc = chat_fail(err, errlen, s->fail_code, "%s", s->fail_msg);
        if (s->fail_code == CHAT_ELLM && s->body_bytes) outcome = CHAT_LLM_OUTCOME_INVALID;
    } else if (timeout_kind == 1) {
        rc = chat_fail(err, errlen, CHAT_ETIMEOUT, "LLM did not start answering within %d ms", o->first_ms);
        outcome = CHAT_LLM_OUTCOME_TIMEOUT;
    } else if (timeout_kind == 2) {
        rc = chat_fail(err, errlen, CHAT_ETIMEOUT, "LLM stream stalled (no data for %d ms)", o->stall_ms);
        outcome = CHAT_LLM_OUTCOME_TIMEOUT;
    } else if (s->status && !ok2xx) {
        rc = oai_http_error(s, err, errlen, &outcome);
    } else if (s->done || s->finish[0]) {
        rc = 0; /* complete, even if the connection then broke before the body's last byte */
    } else if (completed && cc != CURLE_OK) {
        rc = oai_curl_error(o, cc, err, errlen, &outcome);
    } else if (s->body_bytes && !s->any_event) {
        rc = chat_fail(err, errlen, CHAT_ELLM, "LLM sent an invalid response");
        outcome = CHAT_LLM_OUTCOME_INVALID;
    } else {
        rc = chat_fail(err, errlen, CHAT_ELLM, "LLM stream ended unexpectedly");
    }
    if (rc == 0) {
        int erc = oai_emit(s, true); /* a character still cut at the very end */
        if (erc > 0 || s->user_stop)
            rc = chat_fail(err, errlen, CHAT_ECANCELLED, "generation cancelled");
        else if (erc < 0)
            rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    }
    if (rc) chat_log_debug("openai: attempt failed: curl=%d status=%ld", (int)cc, s->status);
    s->outcome = outcome;
    oai_finish(s, rc);
}

static void oai_gen_free(void *gen)
{
    chat_openai_gen *s = gen;
    if (!s) return;
    if (s->easy) {
        curl_multi_remove_handle(s->loop->multi, s->easy);
        curl_easy_cleanup(s->easy);
    }
    CHAT_DLIST_UNLINK(s->loop->gens, s);
    curl_slist_free_all(s->headers); /* the Authorization entry is freed with it */
    free(s->body);
    chat_sse_free(s->sse);
    chat_buf_free(&s->hold);
    chat_buf_free(&s->out);
    chat_buf_free(&s->errbody);
    free(s);
}

/* Builds the request; nothing is sent before the first step (transfers are added to the multi only
 * there, never from inside a libcurl callback). */
static int oai_gen_new(void *state, void *loop_state, const chat_llm_request *req, const chat_llm_gen_ctx *ctx,
                       void **out, char *err, size_t errlen)
{
    chat_openai *o = state;
    *out = NULL;
    if (!o || !loop_state || !req || (req->n_messages && !req->messages))
        return chat_fail(err, errlen, CHAT_EINVAL, "invalid LLM request");
    chat_openai_gen *s = calloc(1, sizeof *s);
    if (!s) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    chat_buf_init(&s->hold);
    chat_buf_init(&s->out);
    chat_buf_init(&s->errbody);
    s->o = o, s->loop = loop_state;
    s->fn = ctx->fn, s->ud = ctx->ud, s->cancel = ctx->cancel, s->resched = ctx->resched, s->priv = ctx->loop_gen;
    s->next = s->loop->gens;
    if (s->next) s->next->prev = s;
    s->loop->gens = s;
    s->usage_prompt = s->usage_completion = -1;
    s->retry_after_ms = -1;
    s->outcome = CHAT_LLM_OUTCOME_ERROR;
    s->t0 = chat_now_ms();
    s->state = OAI_PENDING;
    snprintf(s->res.finish_reason, sizeof s->res.finish_reason, "error");
    /* cancelled before it began: no request is built, the first step reports it */
    if (!oai_cancelled(s)) {
        snprintf(s->model, sizeof s->model, "%s", req->model && *req->model ? req->model : o->model);
        s->body = oai_request_body(o, req, s->model, &s->body_len, &s->prompt_bytes);
        s->sse = chat_sse_new(oai_on_event, s, OAI_MAX_EVENT_BYTES);
        s->headers = s->body && s->sse ? oai_headers(o) : NULL;
        if (!s->headers) {
            oai_gen_free(s);
            return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        }
    }
    *out = s;
    return 0;
}

/* The first-token, stall or [DONE]-grace timer of a transfer. */
static int64_t oai_gen_deadline(const void *gen)
{
    const chat_openai_gen *s = gen;
    switch (s->state) {
    case OAI_TRANSFER:
        if (s->done) return s->done_ms + OAI_DONE_GRACE_MS;
        if (!s->got_content) return s->attempt_t0 + s->o->first_ms;
        return s->last_byte_ms + s->o->stall_ms;
    case OAI_PENDING:
    case OAI_FINISHED: break;
    }
    return INT64_MIN;
}

/* Starts the attempt, applies the cancel flag and the timers. */
static bool oai_gen_step(void *gen, int64_t now)
{
    chat_openai_gen *s = gen;
    switch (s->state) {
    case OAI_PENDING:
        if (oai_cancelled(s))
            oai_finish(s, chat_fail(s->err, sizeof s->err, CHAT_ECANCELLED, "generation cancelled"));
        else
            oai_begin_attempt(s);
        break;
    case OAI_TRANSFER:
        if (s->fail_code || s->user_stop) /* the transfer's abort is normally reported by info_read first */
            oai_end_attempt(s, false, CURLE_OK, false, 0);
        else if (oai_cancelled(s))
            oai_end_attempt(s, false, CURLE_OK, true, 0);
        else if (s->done) {
            if (now - s->done_ms >= OAI_DONE_GRACE_MS) oai_end_attempt(s, false, CURLE_OK, false, 0);
        } else if (!s->got_content && now - s->attempt_t0 >= s->o->first_ms)
            oai_end_attempt(s, false, CURLE_OK, false, 1);
        else if (s->got_content && now - s->last_byte_ms >= s->o->stall_ms)
            oai_end_attempt(s, false, CURLE_OK, false, 2);
        break;
    case OAI_FINISHED: break;
    }
    return s->state == OAI_FINISHED;
}

/* The transfer ended (CURLMSG_DONE with cc), or, with !completed, the multi handle failed: the
 * generation finishes, and the loop hears that its deadline moved. */
static void oai_transfer_done(chat_openai_gen *s, bool completed, CURLcode cc)
{
    if (s->state != OAI_TRANSFER) return;
    if (!completed) oai_fail(s, CHAT_ELLM, "LLM transfer failed");
    oai_end_attempt(s, completed, cc, false, 0);
    if (s->resched) s->resched(s->priv);
}

static int oai_gen_outcome(const void *gen, const chat_llm_result **res, const char **err)
{
    const chat_openai_gen *s = gen;
    if (res) *res = &s->res;
    if (err) *err = s->err;
    return s->rc;
}

static void oai_gen_attempt(const void *gen, chat_llm_outcome *outcome, const char **model, int64_t *retry_after_ms)
{
    const chat_openai_gen *s = gen;
    *outcome = s->outcome;
    *model = s->model;
    *retry_after_ms = s->retry_after_ms;
}

/* The same body and headers again, from the pending state. */
static int oai_gen_rewind(void *gen)
{
    chat_openai_gen *s = gen;
    if (s->state != OAI_FINISHED || !s->body || s->res.tokens_emitted) return CHAT_EINVAL;
    memset(&s->res, 0, sizeof s->res);
    snprintf(s->res.finish_reason, sizeof s->res.finish_reason, "error");
    s->rc = 0;
    s->err[0] = '\0';
    s->outcome = CHAT_LLM_OUTCOME_ERROR;
    s->state = OAI_PENDING;
    return 0;
}

/* ---- the loop's share: one multi handle, driven through libcurl's socket interface ---- */

/* CURLMOPT_SOCKETFUNCTION: keeps L->fds the set of sockets libcurl waits on, with the events it wants. */
static int oai_socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    oai_loop *L = userp;
    size_t at = (size_t)(uintptr_t)socketp; /* index + 1; 0: not watched yet */
    if (at > L->nfds || (at && L->fds[at - 1].fd != fd)) at = 0;
    if (what == CURL_POLL_REMOVE) {
        if (!at) return 0;
        L->fds[at - 1] = L->fds[--L->nfds]; /* the last one takes its place */
        if (at - 1 < L->nfds) curl_multi_assign(L->multi, L->fds[at - 1].fd, (void *)(uintptr_t)at);
        return 0;
    }
    if (!at) {
        if (chat_array_reserve(&L->fds, &L->cap, L->nfds, sizeof *L->fds)) return -1; /* libcurl fails it */
        at = ++L->nfds;
        L->fds[at - 1].fd = fd;
        curl_multi_assign(L->multi, fd, (void *)(uintptr_t)at);
    }
    L->fds[at - 1].events = (short)((what & CURL_POLL_IN ? POLLIN : 0) | (what & CURL_POLL_OUT ? POLLOUT : 0));
    L->fds[at - 1].revents = 0;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: when libcurl next wants to look at its timeouts (-1: no timer). */
static int oai_timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    oai_loop *L = userp;
    L->timer_due = timeout_ms < 0 ? INT64_MAX : chat_now_ms() + timeout_ms;
    return 0;
}

static int oai_loop_attach(void **loop_state, char *err, size_t errlen)
{
    pthread_once(&oai_once, oai_global_init);
    oai_loop *L = oai_global_rc == CURLE_OK ? calloc(1, sizeof *L) : NULL;
    if (L) L->multi = curl_multi_init();
    if (!L || !L->multi) {
        free(L);
        return chat_fail(err, errlen, CHAT_ERR, "libcurl initialisation failed");
    }
    L->timer_due = INT64_MAX;
    curl_multi_setopt(L->multi, CURLMOPT_SOCKETFUNCTION, oai_socket_cb);
    curl_multi_setopt(L->multi, CURLMOPT_SOCKETDATA, L);
    curl_multi_setopt(L->multi, CURLMOPT_TIMERFUNCTION, oai_timer_cb);
    curl_multi_setopt(L->multi, CURLMOPT_TIMERDATA, L);
    *loop_state = L;
    return 0;
}

static void oai_loop_detach(void *loop_state)
{
    oai_loop *L = loop_state;
    if (!L) return;
    curl_multi_cleanup(L->multi); /* may still report cached connections' sockets closing: fds stay until here */
    free(L->fds);
    free(L);
}

static const struct pollfd *oai_loop_fds(void *loop_state, size_t *n, int64_t *due)
{
    oai_loop *L = loop_state;
    *n = L->nfds;
    *due = L->timer_due;
    return L->fds;
}

/* Every transfer libcurl reports finished (found through CURLOPT_PRIVATE). */
static void oai_loop_reap(oai_loop *L)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(L->multi, &left))) {
        if (msg->msg != CURLMSG_DONE) continue;
        CURLcode cc = msg->data.result; /* msg is gone once the handle is removed */
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        if (priv) oai_transfer_done((chat_openai_gen *)(void *)priv, true, cc);
    }
}

/* The sockets that are ready, then libcurl's timer; token callbacks run in here. */
static void oai_loop_work(void *loop_state, const struct pollfd *fds, size_t n, int64_t now)
{
    oai_loop *L = loop_state;
    int running = 0;
    CURLMcode mc = CURLM_OK;
    for (size_t i = 0; i < n && (mc == CURLM_OK || mc == CURLM_BAD_SOCKET); i++) {
        short r = fds[i].revents;
        if (!r) continue;
        int ev = (r & (POLLIN | POLLHUP) ? CURL_CSELECT_IN : 0) | (r & POLLOUT ? CURL_CSELECT_OUT : 0) |
                 (r & (POLLERR | POLLNVAL) ? CURL_CSELECT_ERR : 0);
        mc = curl_multi_socket_action(L->multi, fds[i].fd, ev, &running);
    }
    if ((mc == CURLM_OK || mc == CURLM_BAD_SOCKET) && L->timer_due <= now) {
        L->timer_due = INT64_MAX; /* the action sets the next one */
        mc = curl_multi_socket_action(L->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    }
    if (mc != CURLM_OK && mc != CURLM_BAD_SOCKET) {
        /* the multi itself failed: every transfer ends with "LLM transfer failed" */
        for (chat_openai_gen *s = L->gens; s; s = s->next) oai_transfer_done(s, false, CURLE_OK);
    }
    oai_loop_reap(L);
}

/* ---- the provider ---- */

static int oai_open(const chat_config *cfg, void **state, char *err, size_t errlen)
{
    *state = chat_openai_new(cfg, err, errlen);
    return *state ? 0 : CHAT_EINVAL;
}

static void oai_close(void *state) { chat_openai_free(state); }

static bool oai_instant(const void *state) { return false; }

CHAT_LLM_PROVIDER_DEFINE(chat_openai_provider, "openai", oai, oai_loop, oai_gen);
