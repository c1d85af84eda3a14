/* The pipeline's events as Server-Sent Events (see fcgi_stream.h for the commit and the cancel).
 *
 * Design choices:
 * - Every frame is built by the wire format's own module: the protocol's events by chat_proto (the very
 *   frames the WebSocket sends), OpenAI's chunks by chat_openai_api, the SSE framing by chat_sse_write.
 *   This file only decides what goes out when.
 * - One write (and flush) per event: a token reaches the client when it is generated, which is the point;
 *   lighttpd passes it on at once (server.stream-response-body for these routes).
 * - A stream that cannot build a frame (out of memory) ends as if its client had gone: a cut answer the
 *   client can tell (no complete, no [DONE]) rather than one with a hole in it. */
#include "fcgi_stream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_log.h"
#include "chat_proto.h"
#include "chat_sse.h"

/* The client is gone (or the stream cannot go on): stop writing and stop the generation. */
static void stop(fcgi_stream *s, const char *why)
{
    if (!s->gone) chat_log_info("stream: %s: generation cancelled", why);
    s->gone = true;
    atomic_store(&s->cancel, 1);
}

static void send_buf(fcgi_stream *s, const chat_buf *b)
{
    if (!s->gone && b->len && s->out.write(s->out.ud, b->data, b->len)) stop(s, "the client went away");
}

/* One event: event NULL for a data-only one; text is taken (NULL: out of memory). Held before the commit,
 * written at once after it. */
static void put(fcgi_stream *s, const char *event, char *text)
{
    if (!s->gone && !text) stop(s, "out of memory");
    if (s->gone) {
        free(text);
        return;
    }
    chat_buf *to = s->committed ? &s->frame : &s->held;
    if (s->committed) chat_buf_reset(&s->frame);
    int rc = chat_sse_write(to, event, text, strlen(text));
    free(text);
    if (rc)
        stop(s, "out of memory");
    else if (s->committed)
        send_buf(s, &s->frame);
}

/* Sends the head, the held events and, for OpenAI, the first chunk (the assistant's role). */
static void commit(fcgi_stream *s)
{
    if (s->committed) return;
    s->committed = true;
    if (s->gone) return;
    if (s->out.head(s->out.ud, 200, "text/event-stream; charset=utf-8")) {
        stop(s, "the client went away");
        return;
    }
    send_buf(s, &s->held);
    chat_buf_free(&s->held);
    if (s->kind == FCGI_STREAM_OPENAI) put(s, NULL, chat_oai_chunk_role(&s->oai));
}

static void on_progress(void *ud, const char *step, const char *message)
{
    fcgi_stream *s = ud;
    chat_proto_step id = CHAT_STEP_STARTING;
    if (!chat_proto_step_lookup(step, &id) || id != CHAT_STEP_STARTING) commit(s);
    if (s->kind == FCGI_STREAM_EVENTS) put(s, "progress", chat_proto_progress_msg(step, message));
}

static int on_token(void *ud, const char *text, size_t len)
{
    fcgi_stream *s = ud;
    commit(s);
    if (s->kind == FCGI_STREAM_OPENAI) {
        put(s, NULL, chat_oai_chunk_content(&s->oai, text, len));
    } else if (!s->partial) {
        put(s, "token", chat_proto_token(text, len, NULL, 0));
    } else if (chat_buf_append(&s->answer, text, len)) {
        stop(s, "out of memory");
    } else {
        put(s, "token", chat_proto_token(text, len, s->answer.data, s->answer.len));
    }
    return s->gone;
}

static void done(fcgi_stream *s)
{
    put(s, NULL, strdup(CHAT_OAI_DONE));
}

/* OpenAI's end of a stream: the last chunk (finish_reason, the assistant's metadata), the usage chunk
 * when asked for, [DONE]. A model that failed after some text ends with an error event instead of a
 * finish_reason OpenAI's clients do not know. */
static void openai_complete(fcgi_stream *s, const char *session_id, const char *metadata_json)
{
    if (!strcmp(chat_oai_finish_reason(metadata_json), "error")) {
        put(s, NULL, chat_oai_error(CHAT_PROTO_PROCESSING_ERROR, "The language model failed during the answer", NULL));
    } else {
        put(s, NULL, chat_oai_chunk_finish(&s->oai, session_id, metadata_json));
        if (s->oai.include_usage) put(s, NULL, chat_oai_chunk_usage(&s->oai, metadata_json));
    }
    done(s);
}

static void on_complete(void *ud, const char *response, const char *session_id, const char *metadata_json)
{
    fcgi_stream *s = ud;
    commit(s);
    if (s->kind == FCGI_STREAM_OPENAI)
        openai_complete(s, session_id, metadata_json);
    else
        put(s, "complete", chat_proto_complete(response, session_id, metadata_json));
}

static void on_error(void *ud, const char *code, const char *message)
{
    fcgi_stream *s = ud;
    if (!s->committed) { /* the caller answers it whole, with its status */
        snprintf(s->code, sizeof s->code, "%s", code ? code : "");
        snprintf(s->message, sizeof s->message, "%s", message ? message : "");
        return;
    }
    if (s->kind == FCGI_STREAM_EVENTS) {
        put(s, "error", chat_proto_error(message, code));
        return;
    }
    chat_proto_code c = CHAT_PROTO_PROCESSING_ERROR;
    chat_proto_code_lookup(code, &c);
    put(s, NULL, chat_oai_error(c, message, NULL));
    done(s);
}

void fcgi_stream_init(fcgi_stream *s, fcgi_stream_kind kind, const fcgi_stream_out *out, bool partial,
                      const chat_oai_ctx *oai)
{
    memset(s, 0, sizeof *s);
    atomic_init(&s->cancel, 0);
    s->kind = kind;
    s->out = *out;
    s->partial = partial;
    if (oai) s->oai = *oai;
    chat_buf_init(&s->held);
    chat_buf_init(&s->frame);
    chat_buf_init(&s->answer);
    s->sink =
        (chat_sink){.ud = s, .progress = on_progress, .token = on_token, .complete = on_complete, .error = on_error};
}

void fcgi_stream_clear(fcgi_stream *s)
{
    if (!s) return;
    chat_buf_free(&s->held);
    chat_buf_free(&s->frame);
    chat_buf_free(&s->answer);
}
