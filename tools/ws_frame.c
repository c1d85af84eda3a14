/* RFC 6455 client-side framing (see ws_frame.h). The rules of sections 5.2 and 5.5 are checked in the
 * order the header reveals them, so a client fails a bad frame as soon as its first bytes arrive. */
#include "ws_frame.h"

#include <openssl/evp.h>
#include <string.h>

#include "chat_common.h"

#define WSF_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

size_t chat_wsf_client_header(unsigned char out[CHAT_WSF_MAX_HEADER], int opcode, bool fin, uint64_t len,
                              const unsigned char key[4])
{
    size_t h = 0;
    out[h++] = (unsigned char)((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (len < 126) {
        out[h++] = (unsigned char)(0x80 | len);
    } else if (len <= 0xffff) {
        out[h++] = 0x80 | 126;
        out[h++] = (unsigned char)(len >> 8);
        out[h++] = (unsigned char)len;
    } else {
        out[h++] = 0x80 | 127;
        for (int i = 7; i >= 0; i--) out[h++] = (unsigned char)(len >> (8 * i));
    }
    memcpy(out + h, key, 4);
    return h + 4;
}

void chat_wsf_mask(unsigned char *dst, const unsigned char *src, size_t n, const unsigned char key[4],
                   uint64_t offset)
{
    for (size_t i = 0; i < n; i++) dst[i] = src[i] ^ key[(offset + i) & 3];
}

static bool is_control(int op) { return op >= 8; }
static bool known_opcode(int op) { return op <= CHAT_WS_BINARY || (op >= CHAT_WS_CLOSE && op <= CHAT_WS_PONG); }

int chat_wsf_parse_server_header(const unsigned char *b, size_t avail, chat_wsf_header *h, const char **why)
{
    if (avail < 2) return 0;
    int op = b[0] & 0x0f;
    uint64_t len = b[1] & 0x7f;
    size_t hlen = 2 + (len == 126 ? 2 : len == 127 ? 8 : 0);
    if (b[0] & 0x70) return *why = "reserved bits set in a server frame", CHAT_EINVAL;
    if (b[1] & 0x80) return *why = "masked server frame", CHAT_EINVAL;
    if (!known_opcode(op)) return *why = is_control(op) ? "reserved control opcode" : "reserved data opcode", CHAT_EINVAL;
    if (is_control(op) && !(b[0] & 0x80)) return *why = "fragmented control frame", CHAT_EINVAL;
    if (is_control(op) && len > CHAT_WSF_MAX_CONTROL) return *why = "control frame over 125 bytes", CHAT_EINVAL;
    if (avail < hlen) return 0;
    if (len == 126) {
        len = ((uint64_t)b[2] << 8) | b[3];
    } else if (len == 127) {
        len = 0;
        for (int i = 0; i < 8; i++) len = (len << 8) | b[2 + i];
        if (len >> 63) return *why = "64-bit frame length with the high bit set", CHAT_EINVAL;
    }
    *h = (chat_wsf_header){.fin = b[0] & 0x80, .opcode = op, .len = len, .header_len = hlen};
    return 1;
}

int chat_wsf_accept(const char *key, size_t key_len, char out[CHAT_WSF_ACCEPT_LEN + 1])
{
    char in[64 + sizeof WSF_GUID];
    if (key_len > 64) return CHAT_EINVAL;
    memcpy(in, key, key_len);
    memcpy(in + key_len, WSF_GUID, sizeof WSF_GUID - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(in, key_len + sizeof WSF_GUID - 1, md, &mdlen, EVP_sha1(), NULL) != 1 || mdlen != 20)
        return CHAT_EINVAL;
    EVP_EncodeBlock((unsigned char *)out, md, 20);
    return 0;
}
