/* RFC 6455 framing for the client side, shared by the project's two client engines: chat_wsc
 * (tools/wsclient.c: blocking calls, one connection per call, for chat-ws and the e2e tests) and the load
 * generator's epoll engine (bench/bench_cli.c: tens of thousands of connections in one loop). The
 * engines differ in how they wait and buffer; what goes on the wire is written and checked here only.
 *
 * Pure functions over byte buffers: no I/O, no allocation, no state, any thread. */
#ifndef CHAT_WS_FRAME_H
#define CHAT_WS_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum { CHAT_WS_CONT = 0, CHAT_WS_TEXT = 1, CHAT_WS_BINARY = 2, CHAT_WS_CLOSE = 8, CHAT_WS_PING = 9, CHAT_WS_PONG = 10 };

#define CHAT_WSF_MAX_HEADER 14      /* 2 + 8 (64-bit length) + 4 (mask key) */
#define CHAT_WSF_MAX_CONTROL 125    /* longest control-frame payload */
#define CHAT_WSF_ACCEPT_LEN 28      /* base64 of a SHA-1 digest */

/* Writes the header of a masked client frame (FIN flag, opcode, payload length, mask key) to out and
 * returns its length (6, 8 or 14). opcode is taken modulo 16 so tests can send reserved ones. */
size_t chat_wsf_client_header(unsigned char out[CHAT_WSF_MAX_HEADER], int opcode, bool fin, uint64_t len,
                              const unsigned char key[4]);

/* dst[i] = src[i] ^ key[(offset + i) % 4]: masks (or unmasks) n payload bytes that start offset bytes
 * into the payload, so a payload may be masked in chunks. dst may equal src. */
void chat_wsf_mask(unsigned char *dst, const unsigned char *src, size_t n, const unsigned char key[4],
                   uint64_t offset);

typedef struct chat_wsf_header {
    bool fin;
    int opcode;
    uint64_t len;      /* payload length */
    size_t header_len; /* bytes before the payload */
} chat_wsf_header;

/* Parses the header of a frame a server sent, from the avail bytes at b. Returns 1 with *h filled, 0 when
 * more bytes are needed, or CHAT_EINVAL with *why (a static text) for a violation the client must answer
 * with close 1002: reserved bits, a masked frame, a 64-bit length with the high bit set, a reserved
 * opcode, a fragmented control frame or one over 125 bytes. The message-level rules (continuations,
 * sizes, UTF-8) are the engine's, which knows what it has reassembled. */
int chat_wsf_parse_server_header(const unsigned char *b, size_t avail, chat_wsf_header *h, const char **why);

/* The Sec-WebSocket-Accept a server must answer for the handshake key (base64 of SHA-1 of key + the RFC's
 * GUID), NUL-terminated in out. 0, or CHAT_EINVAL for a key longer than 64 bytes. */
int chat_wsf_accept(const char *key, size_t key_len, char out[CHAT_WSF_ACCEPT_LEN + 1]);

#endif
