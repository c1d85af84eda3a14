/* A small RFC 6455 WebSocket client for the project's tests and tools (no libwebsockets on the client
 * side, so tests exercise the server with an independent implementation). Its framing is ws_frame.c,
 * which the load generator's event engine shares.
 *
 * Blocking API over one TCP or Unix socket (ws:// and ws+unix:; the stack terminates TLS in front if
 * needed).
 * Client frames are masked; server pings are answered transparently; fragmented messages are
 * reassembled. Raw frame sending exists so tests can send what a broken client would.
 *
 * Threads: one chat_wsc is used by one thread at a time; different connections may be used from different
 * threads concurrently. Memory: a connection costs ~120 bytes, plus while receiving a 4 KB read buffer
 * and the current message (a buffer above 64 KB is released at the next recv; both are released when
 * recv returns CHAT_ETIMEOUT with nothing partly received), so a load generator can hold tens of
 * thousands. The fd is non-blocking internally; every call blocks with poll() timeouts, and
 * recv with timeout 0 never blocks (for callers that poll() many chat_wsc_fd()s themselves). */
#ifndef CHAT_WSCLIENT_H
#define CHAT_WSCLIENT_H

#include <stdbool.h>
#include <stddef.h>

#include "ws_frame.h" /* CHAT_WS_* opcodes */

struct json_object;

typedef struct chat_wsc chat_wsc;


typedef struct chat_wsc_opts {
    const char *origin;      /* Origin header, NULL = none */
    const char *source_addr; /* bind to this local IPv4 address first (e.g. 127.0.0.2), NULL = any */
    int timeout_ms;          /* connect + handshake, default 5000 (<= 0 = default); also the longest a send
                              * may stall on a full socket buffer */
    const char *extra_headers; /* raw "Name: value\r\n" lines, NULL = none */
    bool empty_pongs;          /* answer pings with an empty pong instead of one echoing the payload
                                * (tests: what a client that ignores the ping's payload sends) */
} chat_wsc_opts;

/* url: ws://host[:port]/path[?query]; host is a name ("localhost"), an IPv4 address or a bracketed IPv6
 * literal ("[::1]"); port defaults to 80. Or ws+unix:/path.sock[:/path[?query]], a Unix socket (a
 * streamer's own; Host: localhost; source_addr ignored). wss:// is refused. opts may be NULL.
 * Sends the RFC 6455 upgrade (Host, Upgrade, Connection, random Sec-WebSocket-Key, Version 13, Origin,
 * extra headers), requires "101" with Upgrade: websocket, Connection: upgrade, the right
 * Sec-WebSocket-Accept and no Sec-WebSocket-Extensions. Bytes the server sent after the response headers
 * are kept as the start of the first frame. Response headers are bounded to 16 KB.
 * On failure NULL, err says why; *http_status (may be NULL) receives the status code of the HTTP
 * response when one was read (e.g. 403 or 404 for a refused handshake, 101 when the upgrade response was
 * invalid, e.g. a wrong Sec-WebSocket-Accept), or 0 when none was (DNS, connect, timeout, bad url).
 * On success *http_status = 101. */
chat_wsc *chat_wsc_connect(const char *url, const chat_wsc_opts *opts, int *http_status, char *err, size_t errlen);
/* Sends a close frame (code, reason: truncated to 123 bytes; NULL = none), waits up to 1 s for the
 * server's close or EOF (discarding data messages meanwhile), closes the socket, frees. Accepts NULL.
 * code 0 = just drop the TCP connection. Nothing is sent when the connection is already closed (close
 * received, failed, or dropped). */
void chat_wsc_close(chat_wsc *c, int code, const char *reason);

/* One unfragmented, masked text frame with exactly these bytes (not checked for UTF-8). 0, CHAT_EINVAL
 * (c NULL), CHAT_ERR when the connection is closed (close sent or received, or dropped) or the write
 * failed, CHAT_ETIMEOUT when the socket buffer stayed full for timeout_ms. A failed or timed-out write
 * may have sent part of the frame, so the connection is then marked dropped (close code 1006). */
int chat_wsc_send_text(chat_wsc *c, const char *data, size_t len);
/* Raw frame: any opcode 0..15, fin flag, payload of any length, masked with a fresh random key, nothing
 * validated (tests send invalid UTF-8, fragments, oversized control frames, reserved opcodes). Works
 * until the connection is dropped, also after a close was sent. Sending CHAT_WS_CLOSE here counts as
 * this side's close (no second close is sent later). Returns as send_text; CHAT_EINVAL on a bad opcode. */
int chat_wsc_send_frame(chat_wsc *c, int opcode, bool fin, const void *data, size_t len);
/* Raw bytes straight onto the socket, no framing or masking (tests: unmasked frames, a header that
 * announces a huge length without its payload, a frame split across writes). Returns as send_text. */
int chat_wsc_send_raw(chat_wsc *c, const void *bytes, size_t len);

/* Next complete text (or binary) message, fragments reassembled. Returns 0 with *msg and *len (either may be
 * NULL) valid until the next chat_wsc_recv* or chat_wsc_close on c (sends leave it alone); the message is
 * NUL-terminated (the NUL not counted in *len) and may contain NULs if the server sent them.
 * CHAT_ETIMEOUT after timeout_ms (-1 = forever, 0 = only what is already readable): a partly received
 * message is kept and the next call goes on with it. CHAT_ERR when the connection closed or broke (the
 * close code from chat_wsc_close_code), and on every call after that. CHAT_EINVAL when c is NULL.
 * Meanwhile: pings are answered with a pong carrying the same payload (an empty one with
 * opts.empty_pongs), pongs are counted, a close is
 * recorded and answered with a close echoing its code. Server violations fail the connection (a close
 * is sent, CHAT_ERR returned, the code recorded as below): masked or RSV-flagged frames, unknown opcodes,
 * fragmented or > 125-byte control frames, continuation without a start, a new message inside a
 * fragmented one, a 1-byte close payload (1002); text that is not UTF-8 (1007); a message over 16 MB
 * (1009, detected from the frame header, before any payload is buffered). */
int chat_wsc_recv(chat_wsc *c, int timeout_ms, const char **msg, size_t *len);
/* The close code: the one the server sent (1000, 1001, 1008, 1009...; 1005 for a close without a
 * payload); the one this client sent when it failed the connection for a server violation (1002, 1007,
 * 1009, see recv); 1006 when the TCP connection dropped or an I/O error occurred without a close; 0 while
 * open (also after this side alone sent a close). */
int chat_wsc_close_code(const chat_wsc *c);
/* The server's close reason ("" when none or while open); for a violation detected here, a short
 * description of it. Valid until chat_wsc_close. */
const char *chat_wsc_close_reason(const chat_wsc *c);
int chat_wsc_fd(const chat_wsc *c);
/* Number of pong frames received so far (tests: send a CHAT_WS_PING frame, recv, check the count). */
unsigned chat_wsc_pong_count(const chat_wsc *c);

/* JSON convenience for tests (json-c). chat_wsc_recv_json: the next message parsed as JSON; 0 with *out
 * set (caller json_object_put()s), CHAT_EINVAL when the message is not JSON (the connection stays usable,
 * the message is consumed), otherwise as chat_wsc_recv (*out = NULL). */
int chat_wsc_recv_json(chat_wsc *c, int timeout_ms, struct json_object **out);
/* Skips messages until a JSON object whose "type" string equals type; timeout_ms bounds the whole wait,
 * not each message. Returns as chat_wsc_recv_json, including CHAT_EINVAL on a non-JSON message. */
int chat_wsc_recv_type(chat_wsc *c, int timeout_ms, const char *type, struct json_object **out);

#endif
