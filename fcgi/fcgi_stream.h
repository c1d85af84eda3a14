/* A chat answer streamed as Server-Sent Events while the pipeline generates it: the protocol's own
 * events (POST /api/v1/chat with Accept: text/event-stream) or OpenAI's chat.completion.chunk (POST
 * /v1/chat/completions with "stream": true). An fcgi_stream is the pipeline's sink; the transport gives
 * it a head and a write function, and every event leaves as soon as the pipeline emits it.
 *
 * The commit: the head (200, text/event-stream) goes out when the request has been accepted, that is at
 * the progress step after "starting" (agent_routing: the customer and the session were checked), or at
 * the first token or complete. An error before that is no stream at all: the caller answers it whole with
 * its HTTP status (403 for somebody else's session, 503 with the database down), as it would without
 * streaming. Events before the commit (the starting progress) are held and go out first.
 *
 * The cancel: when a write fails the client has gone (lighttpd closes the FastCGI connection when its
 * client disconnects): the stream sets its cancel flag, which the caller hands to chat_pipeline_run, so
 * the generation stops and the turn is stored with finish_reason "cancelled"; nothing more is written,
 * the token callback asks the pipeline to stop, and the responder's log says "client went away".
 *
 * Thread context: the thread that runs the pipeline (the flag may be read by any). */
#ifndef FCGI_STREAM_H
#define FCGI_STREAM_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "chat_openai_api.h"
#include "chat_pipeline.h"
#include "chat_util.h"

/* The transport's side of a streamed answer. head sends the status line and headers (content type, no
 * length); write sends bytes and flushes them to the client. Both return 0, or -1 once the client is gone. */
typedef struct fcgi_stream_out {
    void *ud;
    int (*head)(void *ud, int status, const char *content_type);
    int (*write)(void *ud, const char *data, size_t len);
} fcgi_stream_out;

typedef enum fcgi_stream_kind {
    FCGI_STREAM_EVENTS, /* "event: <type>" and the WebSocket frame as its data; ends after complete or error */
    FCGI_STREAM_OPENAI, /* data-only chat.completion.chunk events (or an error object), then data: [DONE] */
} fcgi_stream_kind;

typedef struct fcgi_stream {
    chat_sink sink;    /* for chat_pipeline_run, with &cancel */
    atomic_int cancel; /* set when a write failed */
    bool committed;    /* the head went out: the stream is the answer */
    bool gone;         /* a write failed */
    char code[40];     /* the error event that came before the commit (the caller answers it) */
    char message[256];
    /* the rest is the stream's own */
    fcgi_stream_kind kind;
    fcgi_stream_out out;
    bool partial;     /* EVENTS: tokens carry partial_response */
    chat_oai_ctx oai; /* OPENAI: the chunks' id, created and include_usage */
    chat_buf held;    /* events before the commit */
    chat_buf frame;   /* the event being written */
    chat_buf answer;  /* EVENTS with partial: the text so far */
} fcgi_stream;

/* out is copied; oai is read for FCGI_STREAM_OPENAI only (may be NULL otherwise). */
void fcgi_stream_init(fcgi_stream *s, fcgi_stream_kind kind, const fcgi_stream_out *out, bool partial,
                      const chat_oai_ctx *oai);
/* Frees the buffers (accepts NULL). */
void fcgi_stream_clear(fcgi_stream *s);

#endif
