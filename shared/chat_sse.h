/* Server-Sent Events (the WHATWG event-stream format): an incremental parser for the streams
 * OpenAI-compatible servers send, and the writer of the streams the REST API sends.
 *
 * The parser: Bytes may arrive split anywhere, even inside a CRLF or a UTF-8 sequence; lines end
 * in LF, CR or CRLF; ':' lines are comments; several data: lines join with '\n'; an event is dispatched
 * at a blank line; an unfinished event at end of stream is dropped. */
#ifndef CHAT_SSE_H
#define CHAT_SSE_H

#include <stddef.h>

#include "chat_util.h"

/* event is "message" when the stream named none. data is NUL-terminated, valid only during the call.
 * Return non-zero to stop: chat_sse_feed then returns that value. */
typedef int (*chat_sse_event_fn)(void *ud, const char *event, const char *data, size_t data_len);

typedef struct chat_sse chat_sse;

chat_sse *chat_sse_new(chat_sse_event_fn fn, void *ud, size_t max_event_bytes);
void chat_sse_free(chat_sse *p);
/* Returns 0, the callback's non-zero value, or CHAT_EINVAL when an event exceeds max_event_bytes. */
int chat_sse_feed(chat_sse *p, const char *buf, size_t len);
/* Resets to the start-of-stream state (for a retried request). */
void chat_sse_reset(chat_sse *p);

/* The writer: appends one event to out, "event: NAME\n" when event is not NULL, then the data as one
 * "data: " line per line of it (LF, CR and CRLF each end a line, as the parser reads them), then the blank
 * line that dispatches it; empty data is one empty "data:" line. event must hold no line break (CHAT_EINVAL).
 * Returns 0, or CHAT_ENOMEM with out holding part of the event (the caller resets it). Any thread. */
int chat_sse_write(chat_buf *out, const char *event, const char *data, size_t len);

#endif
