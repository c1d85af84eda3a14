/* The pipeline's events as Server-Sent Events (see fcgi_stream.h for the commit and the cancel).
 *
 * Design choices:
 * - Every frame is built by the wire format's own module: OpenAI's chunks by chat_openai_api, the SSE
 *   framing by chat_sse_write. This file only decides what goes out when.
 * - One write (and flush) per event: a token reaches the client when it is generated, which is the point;
 *   lighttpd passes it on at once (server.stream-response-body for this route).
 * - A stream that cannot build a frame (out of memory) ends as if its client had gone: a cut answer the
 *   client can tell (no [DONE]) rather than one with a hole in it. */
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

/* One data-only event, written at once; text is taken (NULL: out of memory). */
static void put(fcgi_stream *s, char *text)
{
    if (!s->gone && !text) stop(s, "out of memory");
    if (s->gone) {
        free(text);
        return;
    }
    chat_buf_reset(&s->frame);
    int rc = chat_sse_write(&s->frame, NULL, text, strlen(text));
    free(text);
    if (rc)
        stop(s, "out of memory");
    else if (s->out.write(s->out.ud, s->frame.data, s->frame.len))
        stop(s, "the client went away");
}

/* Sends the head and the first chunk (the assistant's role). */
static void commit(fcgi_stream *s)
{
    if (s->committed) return;
    s->committed = true;
    if (s->gone) return;
    if (s->out.head(s->out.ud, 200, "text/event-stream; charset=utf-8")) {
        stop(s, "the client went away");
        return;
    }
    put(s, chat_oai_chunk_role(&s->oai));
}

static void on_progress(void *ud, const char *step, const char *message)
{
    (void)message;
    chat_proto_step id = CHAT_STEP_STARTING;
    if (!chat_proto_step_lookup(step, &id) || id != CHAT_STEP_STARTING) commit(ud);
}

static int on_token(void *ud, const char *text, size_t len)
{
    fcgi_stream *s = ud;
    commit(s);
    put(s, chat_oai_chunk_content(&s->oai, text, len));
    return s->gone;
}

static void done(fcgi_stream *s)
{
    put(s, strdup(CHAT_OAI_DONE));
}

/* The end of a stream: the last chunk (finish_reason, the assistant's metadata), the usage chunk when
 * asked for, [DONE]. A model that failed after some text ends with an error event instead of a
 * finish_reason OpenAI's clients do not know. */
static void on_complete(void *ud, const char *response, const char *session_id, const char *metadata_json)
{
    fcgi_stream *s = ud;
    (void)response; /* the client has it, chunk by chunk */
    commit(s);
    if (!strcmp(chat_oai_finish_reason(metadata_json), "error")) {
        put(s, chat_oai_error(CHAT_PROTO_PROCESSING_ERROR, "The language model failed during the answer", NULL));
    } else {
        put(s, chat_oai_chunk_finish(&s->oai, session_id, metadata_json));
        if (s->oai.include_usage) put(s, chat_oai_chunk_usage(&s->oai, metadata_json));
    }
    done(s);
}

static void on_error(void *ud, const char *code, const char *message)
{
    fcgi_stream *s = ud;
    if (!s->committed) { /* the caller answers it whole, with its status */
        snprintf(s->code, sizeof s->code, "%s", code ? code : "");
        snprintf(s->message, sizeof s->message, "%s", message ? message : "");
        return;
    }
    chat_proto_code c = CHAT_PROTO_PROCESSING_ERROR;
    chat_proto_code_lookup(code, &c);
    put(s, chat_oai_error(c, message, NULL));
    done(s);
}

void fcgi_stream_init(fcgi_stream *s, const fcgi_stream_out *out, const chat_oai_ctx *oai)
{
    memset(s, 0, sizeof *s);
    atomic_init(&s->cancel, 0);
    s->out = *out;
    s->oai = *oai;
    chat_buf_init(&s->frame);
    s->sink =
        (chat_sink){.ud = s, .progress = on_progress, .token = on_token, .complete = on_complete, .error = on_error};
}

void fcgi_stream_clear(fcgi_stream *s)
{
    if (!s) return;
    chat_buf_free(&s->frame);
}
