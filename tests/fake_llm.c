/* fake-llm: a small local HTTP/1.1 server speaking the OpenAI Chat Completions streaming wire format, for
 * tests only (unit tests of the openai provider and the end-to-end stack). Never for production.
 *
 *   fake-llm --port N     listen on 127.0.0.1:N (0 = any free port); prints "PORT <n>" on stdout.
 *
 * POST .../chat/completions answers according to the request's "model" (unknown models behave like
 * fake-ok):
 *   fake-ok           role chunk, one content chunk per word of "You asked about: <first 5 words of the
 *                     last user message>. ...", a finish_reason chunk, a usage chunk, [DONE]
 *   fake-401          401 with an OpenAI-style error body
 *   fake-429          odd-numbered requests get 429 (Retry-After: 1), even ones fake-ok: a retry succeeds
 *   fake-429-always   429 every time (no Retry-After)
 *   fake-429-first-N  rate-limits, then recovers: of each N + 1 requests for this model name, the first N
 *                     get 429 with Retry-After: 1 and retry-after-ms: 50 (what OpenAI sends; clients that
 *                     know it wait 50 ms), the next one fake-ok. N from 1 to 99.
 *   fake-503-always   503 every time: a provider that is down
 *   fake-500-once     odd-numbered requests get 500, even ones fake-ok
 *   fake-disconnect   drops the connection in the middle of an HTTP chunk after 4 content chunks
 *   fake-stall        3 content chunks, then silence for 30 s
 *   fake-slow-first   silence for 30 s before the first byte
 *   fake-garbage      "data: this is not json"
 *   fake-no-done      3 content chunks, then a clean end of the body: no finish_reason, no [DONE]
 *   fake-length       5 content chunks, finish_reason "length", no usage chunk (like servers that ignore
 *                     stream_options), [DONE]
 *   fake-error-event  2 content chunks, then data: {"error":{"message":"The model is overloaded..."}}
 *   fake-empty        no content at all: the role chunk, finish_reason "stop", usage, [DONE] (a content
 *                     filter, or a reasoning model that spent its tokens thinking)
 *   fake-endless      ignores max_tokens: 5,000 chunks of 100 bytes (500 KB) before it stops
 *   fake-utf8         "Héllo wörld — 日本語 🚤 ok" sent in 2-byte slices, so multi-byte characters are cut
 *                     across chunks (raw bytes inside the JSON strings, as some servers do)
 * Usage reported by fake-ok: prompt_tokens = 3 * messages + content bytes / 4, completion_tokens = the
 * number of content chunks.
 *
 * Faithfulness: "HTTP/1.1 200", Content-Type: text/event-stream, Transfer-Encoding: chunked, keep-alive
 * connections; the bytes are sent in many small TCP writes (TCP_NODELAY plus short pauses) cut at awkward
 * places: inside the chunk-size line, inside "data:", between the CR and LF of CRLF events, several
 * events in one chunk; a ": keep-alive" comment and an OpenRouter-style ": OPENROUTER PROCESSING" line.
 *
 * GET /debug/last returns what the last completion request looked like (whether an Authorization header
 * was present, never its value; its messages' text, up to 256 KB, as "prompt"; the first system message
 * as "system"; "temperature", null when absent; the whole JSON body as "body" and every header but
 * Authorization as "headers", names in lower case), plus request counters, so tests can check the
 * client's request, what the model was told, and retries. GET /health answers "ok". One thread per connection; SIGTERM/SIGINT end the process. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_util.h"

#define MAX_HEAD 65536
#define MAX_BODY (8 * 1024 * 1024)
#define MAX_CONNS 256

enum scenario {
    SC_OK,
    SC_401,
    SC_429,
    SC_429_ALWAYS,
    SC_500_ONCE,
    SC_DISCONNECT,
    SC_STALL,
    SC_SLOW_FIRST,
    SC_GARBAGE,
    SC_NO_DONE,
    SC_LENGTH,
    SC_ERROR_EVENT,
    SC_UTF8,
    SC_EMPTY,
    SC_ENDLESS,
    SC_503_ALWAYS,
    SC_429_FIRST, /* named with its count: fake-429-first-N */
    SC_COUNT
};
static const char *sc_names[SC_COUNT] = {
    "fake-ok",         "fake-401",         "fake-429",        "fake-429-always", "fake-500-once",
    "fake-disconnect", "fake-stall",       "fake-slow-first", "fake-garbage",    "fake-no-done",
    "fake-length",     "fake-error-event", "fake-utf8",       "fake-empty",
    "fake-endless",    "fake-503-always",  "fake-429-first-",
};

static const char utf8_text[] =
    "H\xC3\xA9llo w\xC3\xB6rld \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E \xF0\x9F\x9A\xA4 ok";

static volatile sig_atomic_t g_stop;
static atomic_int g_conns;
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static long g_requests;         /* completion requests, all models */
/* The scenarios that answer with an HTTP error, as OpenAI-compatible servers do: `first` of every first + 1
 * requests of the scenario fail, beginning with its first request (0: every request; 1: every other one;
 * -1: the N of fake-429-first-N), the others are answered. */
typedef struct http_failure {
    int sc, first, status;
    const char *message, *type, *headers;
} http_failure;

static const http_failure FAILURES[] = {
    {SC_401, 0, 401, "Incorrect API key provided", "invalid_request_error", NULL},
    {SC_429, 1, 429, "Rate limit reached, retry later", "rate_limit_error", "Retry-After: 1\r\n"},
    {SC_429_ALWAYS, 0, 429, "Rate limit reached", "rate_limit_error", NULL},
    {SC_429_FIRST, -1, 429, "Rate limit reached, retry later", "rate_limit_error",
     "Retry-After: 1\r\nretry-after-ms: 50\r\n"},
    {SC_503_ALWAYS, 0, 503, "The engine is currently overloaded", "server_error", NULL},
    {SC_500_ONCE, 1, 500, "The server had an error", "server_error", NULL},
};

static const http_failure *failure_of(int sc)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(FAILURES); i++)
        if (FAILURES[i].sc == sc) return &FAILURES[i];
    return NULL;
}

static long g_counts[SC_COUNT]; /* per scenario, drives the "once" scenarios */
static struct {
    char model[128];
    long n;
} g_named[64]; /* requests per model name, for the scenarios whose name carries a count */
static int g_n_named;
static struct {
    bool authorization_present, accept_event_stream, content_type_json, stream, include_usage;
    int max_tokens, messages;
    char model[128];
    char path[256];
    char *prompt; /* the messages' contents, each after "role: ", one per line; bounded by MAX_PROMPT */
    char *system; /* the first system message's content, NULL when none */
    json_object *temperature; /* NULL when the request had none */
    json_object *body;        /* the whole request body */
    json_object *headers;     /* name (lower case) -> value, every header but Authorization */
} g_last;

#define MAX_PROMPT (256 * 1024)

typedef struct request {
    char method[16];
    char path[256];
    bool auth, accept_sse, json_ct, expect_continue, close;
    size_t content_length;
    char *body;
    json_object *headers; /* name (lower case) -> value, Authorization left out */
} request;

/* What the completion handler needs from the request body. */
typedef struct completion {
    char model[128];
    enum scenario sc;
    long nth; /* this request's number within its scenario (fake-429-first-N: its model name), from 1 */
    int first_n; /* fake-429-first-N: N */
    int messages;
    size_t content_bytes;
    char words[256]; /* first five words of the last user message */
    bool stream;
} completion;

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void pause_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ---- writing: many small, awkwardly cut TCP writes ---- */

typedef struct writer {
    int fd;
    unsigned n; /* counter that picks the cut positions, deterministic per connection */
    bool dead;
} writer;

static void wr_send(writer *w, const char *p, size_t len)
{
    while (!w->dead && len) {
        ssize_t n = send(w->fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            w->dead = true;
            return;
        }
        p += n, len -= (size_t)n;
    }
}

/* Sends bytes in one or two writes with a pause between, so the reader sees two separate reads. */
static void wr_raw(writer *w, const char *p, size_t len)
{
    unsigned k = w->n++;
    if (len < 4 || k % 3 == 0) {
        wr_send(w, p, len);
        return;
    }
    size_t a = 1 + (k * 7u) % (len - 2);
    wr_send(w, p, a);
    pause_ms(1);
    wr_send(w, p + a, len - a);
}

static void wr_chunk(writer *w, const char *p, size_t len)
{
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_printf(&b, "%zx\r\n", len);
    chat_buf_append(&b, p, len);
    chat_buf_append(&b, "\r\n", 2);
    wr_raw(w, b.data, b.len);
    chat_buf_free(&b);
}

/* SSE bytes as one or two HTTP chunks: cut between a CR and its LF when there is one, else somewhere
 * inside (often inside "data:" or the JSON). */
static void wr_sse(writer *w, const char *p, size_t len)
{
    unsigned k = w->n++;
    const char *crlf = memmem(p, len, "\r\n", 2);
    size_t cut = 0;
    if (crlf && k % 2 == 0)
        cut = (size_t)(crlf - p) + 1;
    else if (len > 8 && k % 3 != 0)
        cut = 3 + (k * 13u) % (len - 6);
    if (cut && cut < len) {
        wr_chunk(w, p, cut);
        pause_ms(1);
        wr_chunk(w, p + cut, len - cut);
    } else {
        wr_chunk(w, p, len);
    }
}

static void wr_end(writer *w)
{
    wr_raw(w, "0\r\n\r\n", 5);
}

static void json_escape(chat_buf *b, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            chat_buf_append(b, "\\", 1);
            chat_buf_append(b, &s[i], 1);
        } else if (c < 0x20) {
            chat_buf_printf(b, "\\u%04x", c);
        } else {
            chat_buf_append(b, &s[i], 1); /* bytes >= 0x80 raw, even a cut UTF-8 sequence */
        }
    }
}

/* style 0: "data: x\n\n", 1: "data: x\r\n\r\n", 2: "data:x\n\n" */
static void ev_begin(chat_buf *b, int style)
{
    chat_buf_puts(b, style == 2 ? "data:" : "data: ");
}
static void ev_end(chat_buf *b, int style)
{
    chat_buf_puts(b, style == 1 ? "\r\n\r\n" : "\n\n");
}

static void ev_chunk(chat_buf *b, const completion *c, bool role, const char *content, size_t clen, const char *finish,
                     int style)
{
    ev_begin(b, style);
    chat_buf_puts(b,
                  "{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"");
    json_escape(b, c->model, strlen(c->model));
    chat_buf_puts(b, "\",\"system_fingerprint\":\"fp_fake\",\"choices\":[{\"index\":0,\"delta\":{");
    if (role) chat_buf_puts(b, "\"role\":\"assistant\",\"content\":\"\"");
    if (content) {
        chat_buf_puts(b, "\"content\":\"");
        json_escape(b, content, clen);
        chat_buf_puts(b, "\"");
    }
    chat_buf_puts(b, "},\"logprobs\":null,\"finish_reason\":");
    if (finish)
        chat_buf_printf(b, "\"%s\"}]}", finish);
    else
        chat_buf_puts(b, "null}]}");
    ev_end(b, style);
}

static void ev_usage(chat_buf *b, const completion *c, int prompt, int completion_tokens)
{
    ev_begin(b, 0);
    chat_buf_puts(b,
                  "{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion.chunk\",\"created\":1700000000,\"model\":\"");
    json_escape(b, c->model, strlen(c->model));
    chat_buf_printf(b,
                    "\",\"choices\":[],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}}",
                    prompt, completion_tokens, prompt + completion_tokens);
    ev_end(b, 0);
}

/* ---- waiting while noticing that the client went away ---- */

/* Waits ms; -1 as soon as the peer closed (or on shutdown), 0 when the time ran out. */
static int wait_closed(int fd, int ms)
{
    int64_t end = chat_now_ms() + ms;
    while (!g_stop) {
        int64_t left = end - chat_now_ms();
        if (left <= 0) return 0;
        struct pollfd p = {fd, POLLIN, 0};
        int r = poll(&p, 1, left < 100 ? (int)left : 100);
        if (r > 0) {
            char c;
            ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return -1;
            if (n > 0) pause_ms(100); /* a pipelined request: not our business yet */
        }
    }
    return -1;
}

/* ---- simple responses ---- */

static void send_simple(int fd, int status, const char *reason, const char *ctype, const char *body,
                        const char *extra_headers)
{
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_printf(&b,
                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: keep-alive\r\n%s\r\n%s",
                    status, reason, ctype, strlen(body), extra_headers ? extra_headers : "", body);
    writer w = {fd, 0, false};
    wr_send(&w, b.data, b.len);
    chat_buf_free(&b);
}

/* The reason phrase of the statuses the server answers with. */
static const char *reason_phrase(int status)
{
    switch (status) {
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 404: return "Not Found";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
    }
}

/* An error response in OpenAI's shape: {"error":{"message","type","param","code"}}. */
static void send_error(int fd, int status, const char *msg, const char *type, const char *extra_headers)
{
    char body[512];
    snprintf(body, sizeof body, "{\"error\":{\"message\":\"%s\",\"type\":\"%s\",\"param\":null,\"code\":%d}}", msg,
             type, status);
    send_simple(fd, status, reason_phrase(status), "application/json", body, extra_headers);
}

/* ---- the completion answer ---- */

typedef struct piece {
    size_t off, len;
} piece;

/* The answer text and its pieces: one per word (with its leading space), or 2-byte slices for fake-utf8. */
static size_t answer_pieces(const completion *c, chat_buf *text, piece *pieces, size_t max)
{
    size_t n = 0;
    if (c->sc == SC_UTF8) {
        chat_buf_puts(text, utf8_text);
        for (size_t off = 0; off < text->len && n < max; off += 2)
            pieces[n++] = (piece){off, text->len - off < 2 ? text->len - off : 2};
        return n;
    }
    chat_buf_printf(text,
                    "You asked about: %s. This is a deterministic answer from the fake model, streamed in small "
                    "pieces so that tests can check every part.",
                    c->words[0] ? c->words : "(nothing)");
    size_t i = 0;
    while (i < text->len && n < max) {
        size_t start = i;
        while (i < text->len && text->data[i] == ' ')
            i++;
        while (i < text->len && text->data[i] != ' ')
            i++;
        pieces[n++] = (piece){start, i - start};
    }
    return n;
}

/* Streams the answer, with the scenario's twist. Returns whether the connection can be kept. */
static bool stream_answer(int fd, const completion *c)
{
    writer w = {fd, 1, false};
    static const char head[] =
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n";
    wr_raw(&w, head, sizeof head - 1);

    chat_buf ev, text;
    chat_buf_init(&ev);
    chat_buf_init(&text);
    piece pieces[64];
    size_t np = answer_pieces(c, &text, pieces, CHAT_ARRAY_LEN(pieces));
    bool keep = true;
    const char *finish = "stop";
    int sent = 0;

    wr_sse(&w, ": OPENROUTER PROCESSING\n\n", 25);
    ev_chunk(&ev, c, true, NULL, 0, NULL, 1);
    wr_sse(&w, ev.data, ev.len);
    chat_buf_reset(&ev);

    if (c->sc == SC_ENDLESS) {
        char hundred[101];
        memset(hundred, 'x', 99), hundred[99] = ' ', hundred[100] = '\0';
        for (int i = 0; i < 5000 && !w.dead; i++) {
            ev_chunk(&ev, c, false, hundred, 100, NULL, 0);
            if (i % 50 == 49) wr_sse(&w, ev.data, ev.len), chat_buf_reset(&ev);
        }
    }
    if (c->sc == SC_GARBAGE) {
        chat_buf_puts(&ev, "data: this is not json\n\n");
        wr_sse(&w, ev.data, ev.len);
        wr_end(&w);
        goto done;
    }
    for (size_t i = 0; i < np && !w.dead; i++) {
        bool twist = (c->sc == SC_DISCONNECT && i == 4) || (c->sc == SC_STALL && i == 3) ||
                     (c->sc == SC_NO_DONE && i == 3) || (c->sc == SC_ERROR_EVENT && i == 2);
        if (twist && ev.len) { /* send what was held back for bundling first */
            wr_sse(&w, ev.data, ev.len);
            chat_buf_reset(&ev);
        }
        if (c->sc == SC_DISCONNECT && i == 4) {
            /* a chunk header promising more than we send, then gone */
            wr_send(&w, "40\r\ndata: {\"choi", 17);
            pause_ms(20);
            keep = false;
            goto done;
        }
        if (c->sc == SC_STALL && i == 3 && wait_closed(fd, 30000) < 0) {
            keep = false;
            goto done;
        }
        if (c->sc == SC_NO_DONE && i == 3) {
            wr_end(&w);
            goto done;
        }
        if (c->sc == SC_ERROR_EVENT && i == 2) {
            chat_buf_puts(&ev, "data: {\"error\":{\"message\":\"The model is overloaded, please retry later\","
                               "\"type\":\"server_error\",\"code\":502}}\n\n");
            wr_sse(&w, ev.data, ev.len);
            wr_end(&w);
            goto done;
        }
        if (c->sc == SC_EMPTY) break;
        if (c->sc == SC_LENGTH && i == 5) {
            finish = "length";
            break;
        }
        ev_chunk(&ev, c, false, text.data + pieces[i].off, pieces[i].len, NULL, (int)(i % 3));
        sent++;
        if (i == 10) chat_buf_puts(&ev, ": keep-alive\n\n");
        if (i % 4 == 3 && i + 1 < np) continue; /* two events in one write now and then */
        wr_sse(&w, ev.data, ev.len);
        chat_buf_reset(&ev);
        pause_ms(3);
    }
    ev_chunk(&ev, c, false, NULL, 0, finish, 0);
    if (c->sc != SC_LENGTH) ev_usage(&ev, c, 3 * c->messages + (int)(c->content_bytes / 4), sent);
    wr_sse(&w, ev.data, ev.len);
    chat_buf_reset(&ev);
    chat_buf_puts(&ev, "data: [DONE]\n\n");
    wr_sse(&w, ev.data, ev.len);
    wr_end(&w);
done:
    chat_buf_free(&ev);
    chat_buf_free(&text);
    return keep && !w.dead;
}

/* A non-streamed answer (stream: false), for completeness. */
static void plain_answer(int fd, const completion *c)
{
    chat_buf text, body;
    chat_buf_init(&text);
    chat_buf_init(&body);
    piece pieces[64];
    size_t np = answer_pieces(c, &text, pieces, CHAT_ARRAY_LEN(pieces));
    chat_buf_puts(&body,
                  "{\"id\":\"chatcmpl-fake\",\"object\":\"chat.completion\",\"created\":1700000000,\"model\":\"");
    json_escape(&body, c->model, strlen(c->model));
    chat_buf_puts(&body, "\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"");
    json_escape(&body, text.data, text.len);
    int prompt = 3 * c->messages + (int)(c->content_bytes / 4);
    chat_buf_printf(&body,
                    "\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%zu,"
                    "\"total_tokens\":%zu}}",
                    prompt, np, (size_t)prompt + np);
    send_simple(fd, 200, "OK", "application/json", body.data, NULL);
    chat_buf_free(&text);
    chat_buf_free(&body);
}

static void first_words(const char *s, char *out, size_t outlen)
{
    size_t k = 0;
    int words = 0;
    out[0] = '\0';
    while (*s && words < 5) {
        while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
            s++;
        if (!*s) break;
        if (words && k + 1 < outlen) out[k++] = ' ';
        while (*s && *s != ' ' && *s != '\t' && *s != '\n' && *s != '\r') {
            if (k + 1 < outlen) out[k++] = *s;
            s++;
        }
        words++;
    }
    while (k && !chat_utf8_valid(out, k))
        k--; /* the cap may have cut a character */
    out[k] = '\0';
}

/* The number of this request among those for model, from 1. Under g_mu. */
static long named_count(const char *model)
{
    for (int i = 0; i < g_n_named; i++)
        if (!strcmp(g_named[i].model, model)) return ++g_named[i].n;
    if (g_n_named == (int)CHAT_ARRAY_LEN(g_named)) return 1;
    snprintf(g_named[g_n_named].model, sizeof g_named[0].model, "%s", model);
    g_named[g_n_named].n = 1;
    return g_named[g_n_named++].n;
}

/* Returns whether the connection can be kept. */
static bool handle_completion(int fd, const request *r)
{
    completion c;
    memset(&c, 0, sizeof c);
    json_object *root = r->body ? json_tokener_parse(r->body) : NULL;
    json_object *v = NULL, *msgs = NULL;
    if (!root || !json_object_is_type(root, json_type_object) || !json_object_object_get_ex(root, "messages", &msgs) ||
        !json_object_is_type(msgs, json_type_array)) {
        json_object_put(root);
        send_error(fd, 400, "expected a JSON body with messages", "invalid_request_error", NULL);
        return true;
    }
    const char *model = json_object_object_get_ex(root, "model", &v) && json_object_is_type(v, json_type_string)
                            ? json_object_get_string(v)
                            : "fake-ok";
    snprintf(c.model, sizeof c.model, "%s", model);
    c.sc = SC_OK;
    for (int i = 0; i < SC_COUNT; i++)
        if (!strcmp(model, sc_names[i])) c.sc = (enum scenario)i;
    size_t plen = strlen(sc_names[SC_429_FIRST]);
    if (!strncmp(model, sc_names[SC_429_FIRST], plen) && atoi(model + plen) > 0 && atoi(model + plen) < 100)
        c.sc = SC_429_FIRST, c.first_n = atoi(model + plen);
    c.stream = json_object_object_get_ex(root, "stream", &v) && json_object_get_boolean(v);
    int max_tokens = json_object_object_get_ex(root, "max_tokens", &v) ? json_object_get_int(v) : 0;
    json_object *so = NULL;
    bool include_usage = json_object_object_get_ex(root, "stream_options", &so) &&
                         json_object_object_get_ex(so, "include_usage", &v) && json_object_get_boolean(v);
    json_object *temperature = NULL;
    json_object_object_get_ex(root, "temperature", &temperature);
    c.messages = (int)json_object_array_length(msgs);
    const char *last_user = NULL, *system = NULL;
    chat_buf prompt;
    chat_buf_init(&prompt);
    for (int i = 0; i < c.messages; i++) {
        json_object *m = json_object_array_get_idx(msgs, (size_t)i), *role = NULL, *content = NULL;
        if (json_object_object_get_ex(m, "content", &content) && json_object_is_type(content, json_type_string)) {
            c.content_bytes += (size_t)json_object_get_string_len(content);
            bool has_role = json_object_object_get_ex(m, "role", &role);
            if (has_role && !strcmp(json_object_get_string(role), "user")) last_user = json_object_get_string(content);
            if (has_role && !strcmp(json_object_get_string(role), "system") && !system)
                system = json_object_get_string(content);
            if (prompt.len < MAX_PROMPT)
                chat_buf_printf(&prompt, "%s: %.*s\n", has_role ? json_object_get_string(role) : "?",
                                (int)(MAX_PROMPT - prompt.len), json_object_get_string(content));
        }
    }
    first_words(last_user ? last_user : "", c.words, sizeof c.words);

    pthread_mutex_lock(&g_mu);
    g_requests++;
    c.nth = ++g_counts[c.sc];
    if (c.sc == SC_429_FIRST) c.nth = named_count(c.model);
    g_last.authorization_present = r->auth;
    g_last.accept_event_stream = r->accept_sse;
    g_last.content_type_json = r->json_ct;
    g_last.stream = c.stream;
    g_last.include_usage = include_usage;
    g_last.max_tokens = max_tokens;
    g_last.messages = c.messages;
    snprintf(g_last.model, sizeof g_last.model, "%s", c.model);
    snprintf(g_last.path, sizeof g_last.path, "%s", r->path);
    free(g_last.prompt);
    g_last.prompt = chat_buf_take(&prompt);
    free(g_last.system);
    g_last.system = system ? strdup(system) : NULL;
    json_object_put(g_last.temperature);
    g_last.temperature = json_object_get(temperature);
    json_object_put(g_last.body);
    g_last.body = json_object_get(root);
    json_object_put(g_last.headers);
    g_last.headers = json_object_get(r->headers);
    pthread_mutex_unlock(&g_mu);
    json_object_put(root);

    const http_failure *f = failure_of(c.sc);
    if (f) {
        int first = f->first < 0 ? c.first_n : f->first;
        if (f->first == 0 || (c.nth - 1) % (first + 1) < first) {
            send_error(fd, f->status, f->message, f->type, f->headers);
            return true;
        }
    }
    if (c.sc == SC_SLOW_FIRST && wait_closed(fd, 30000) < 0) return false;
    if (!c.stream) {
        plain_answer(fd, &c);
        return true;
    }
    return stream_answer(fd, &c);
}

static void handle_debug_last(int fd)
{
    json_object *o = json_object_new_object();
    pthread_mutex_lock(&g_mu);
    json_object_object_add(o, "authorization_present", json_object_new_boolean(g_last.authorization_present));
    json_object_object_add(o, "accept_event_stream", json_object_new_boolean(g_last.accept_event_stream));
    json_object_object_add(o, "content_type_json", json_object_new_boolean(g_last.content_type_json));
    json_object_object_add(o, "stream", json_object_new_boolean(g_last.stream));
    json_object_object_add(o, "include_usage", json_object_new_boolean(g_last.include_usage));
    json_object_object_add(o, "max_tokens", json_object_new_int(g_last.max_tokens));
    json_object_object_add(o, "model", json_object_new_string(g_last.model));
    json_object_object_add(o, "path", json_object_new_string(g_last.path));
    json_object_object_add(o, "messages", json_object_new_int(g_last.messages));
    json_object_object_add(o, "prompt", json_object_new_string(g_last.prompt ? g_last.prompt : ""));
    json_object_object_add(o, "system", g_last.system ? json_object_new_string(g_last.system) : NULL);
    json_object_object_add(o, "temperature", json_object_get(g_last.temperature));
    json_object_object_add(o, "body", json_object_get(g_last.body));
    json_object_object_add(o, "headers", json_object_get(g_last.headers));
    json_object_object_add(o, "requests", json_object_new_int64(g_requests));
    pthread_mutex_unlock(&g_mu);
    send_simple(fd, 200, "OK", "application/json", json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN), NULL);
    json_object_put(o);
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static bool handle(int fd, const request *r)
{
    char path[256];
    snprintf(path, sizeof path, "%s", r->path);
    path[strcspn(path, "?")] = '\0';
    if (!strcmp(r->method, "POST") && ends_with(path, "/chat/completions")) return handle_completion(fd, r);
    if (!strcmp(r->method, "GET") && !strcmp(path, "/debug/last"))
        handle_debug_last(fd);
    else if (!strcmp(r->method, "GET") && !strcmp(path, "/health"))
        send_simple(fd, 200, "OK", "text/plain", "ok\n", NULL);
    else if (!strcmp(r->method, "GET") && ends_with(path, "/models"))
        send_simple(fd, 200, "OK", "application/json",
                    "{\"object\":\"list\",\"data\":[{\"id\":\"fake-ok\",\"object\":\"model\",\"owned_by\":\"fake\"}]}",
                    NULL);
    else
        send_error(fd, 404, "no such endpoint", "invalid_request_error", NULL);
    return true;
}

/* ---- reading requests ---- */

static bool header_is(const char *line, size_t len, const char *name, const char **value, size_t *vlen)
{
    size_t n = strlen(name);
    if (len <= n || strncasecmp(line, name, n) || line[n] != ':') return false;
    const char *v = line + n + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    *value = v, *vlen = (size_t)(end - v);
    return true;
}

/* Adds "Name: value" to headers as name (lower case) -> value, except Authorization (never shown). */
static void record_header(json_object *headers, const char *line, size_t len)
{
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line || colon - line >= 64) return;
    char name[64];
    size_t n = (size_t)(colon - line);
    for (size_t i = 0; i < n; i++) name[i] = (char)tolower((unsigned char)line[i]);
    name[n] = '\0';
    if (!strcmp(name, "authorization")) return;
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t')) v++;
    json_object_object_add(headers, name, json_object_new_string_len(v, (int)(end - v)));
}

/* Reads one request from fd (in holds bytes already read). 1 = got one, 0 = connection done (the
 * request's headers are freed then; otherwise by the caller, with the body). */
static int read_request(int fd, chat_buf *in, request *r)
{
    memset(r, 0, sizeof *r);
    r->headers = json_object_new_object();
    char tmp[8192];
    char *end;
    while (!(end = in->len ? memmem(in->data, in->len, "\r\n\r\n", 4) : NULL)) {
        if (in->len > MAX_HEAD) return 0;
        ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        chat_buf_append(in, tmp, (size_t)n);
    }
    size_t head_len = (size_t)(end - in->data) + 4;
    const char *line = in->data, *head_end = in->data + head_len - 2;
    const char *eol = memmem(line, (size_t)(head_end - line), "\r\n", 2);
    char first[512];
    snprintf(first, sizeof first, "%.*s", (int)(eol - line), line);
    if (sscanf(first, "%15s %255s", r->method, r->path) != 2) return 0;
    for (line = eol + 2; line < head_end; line = eol + 2) {
        eol = memmem(line, (size_t)(head_end - line), "\r\n", 2);
        if (!eol) break;
        size_t len = (size_t)(eol - line), vlen;
        const char *v;
        record_header(r->headers, line, len);
        if (header_is(line, len, "Content-Length", &v, &vlen))
            r->content_length = strtoul(v, NULL, 10);
        else if (header_is(line, len, "Authorization", &v, &vlen))
            r->auth = vlen > 0;
        else if (header_is(line, len, "Accept", &v, &vlen))
            r->accept_sse = memmem(v, vlen, "text/event-stream", 17) != NULL;
        else if (header_is(line, len, "Content-Type", &v, &vlen))
            r->json_ct = memmem(v, vlen, "application/json", 16) != NULL;
        else if (header_is(line, len, "Expect", &v, &vlen))
            r->expect_continue = vlen == 12 && !strncasecmp(v, "100-continue", 12);
        else if (header_is(line, len, "Connection", &v, &vlen))
            r->close = vlen == 5 && !strncasecmp(v, "close", 5);
    }
    if (r->content_length > MAX_BODY) return 0;
    if (r->expect_continue && in->len < head_len + r->content_length) {
        writer w = {fd, 0, false};
        wr_send(&w, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    while (in->len < head_len + r->content_length) {
        ssize_t n = recv(fd, tmp, sizeof tmp, 0);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return 0;
        chat_buf_append(in, tmp, (size_t)n);
    }
    r->body = malloc(r->content_length + 1);
    if (!r->body) return 0;
    memcpy(r->body, in->data + head_len, r->content_length);
    r->body[r->content_length] = '\0';
    size_t used = head_len + r->content_length;
    memmove(in->data, in->data + used, in->len - used);
    in->len -= used;
    in->data[in->len] = '\0';
    return 1;
}

static void *conn_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    chat_buf in;
    chat_buf_init(&in);
    request r;
    memset(&r, 0, sizeof r);
    while (!g_stop && read_request(fd, &in, &r) == 1) {
        bool keep = handle(fd, &r) && !r.close;
        free(r.body);
        json_object_put(r.headers);
        r.headers = NULL;
        if (!keep) break;
    }
    json_object_put(r.headers); /* a request cut short */
    chat_buf_free(&in);
    close(fd);
    atomic_fetch_sub(&g_conns, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    int port = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) {
            port = atoi(argv[++i]);
        } else {
            fprintf(stderr, "usage: fake-llm --port N   (0 = any free port, printed as PORT <n>)\n");
            return 2;
        }
    }
    if (port < 0 || port > 65535) {
        fprintf(stderr, "fake-llm: bad port\n");
        return 2;
    }
    chat_handle_stop_signals(on_signal); /* poll() returns to look at g_stop */

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("fake-llm: socket");
        return 1;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons((uint16_t)port);
    socklen_t alen = sizeof addr;
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) || listen(lfd, 64) ||
        getsockname(lfd, (struct sockaddr *)&addr, &alen)) {
        perror("fake-llm: bind");
        close(lfd);
        return 1;
    }
    printf("PORT %d\n", ntohs(addr.sin_port));
    fflush(stdout);
    fprintf(stderr, "fake-llm: listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));

    while (!g_stop) {
        struct pollfd p = {lfd, POLLIN, 0};
        if (poll(&p, 1, 200) <= 0) continue;
        int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) continue;
        if (atomic_fetch_add(&g_conns, 1) >= MAX_CONNS) {
            atomic_fetch_sub(&g_conns, 1);
            close(fd);
            continue;
        }
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &at, conn_main, (void *)(intptr_t)fd)) {
            atomic_fetch_sub(&g_conns, 1);
            close(fd);
        }
        pthread_attr_destroy(&at);
    }
    close(lfd);
    fprintf(stderr, "fake-llm: stopped\n");
    return 0;
}
