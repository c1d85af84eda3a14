/* Tests of the client-side RFC 6455 framing shared by chat_wsc and the load generator (tools/ws_frame.c):
 * header encodings at the length boundaries, masking in chunks, every server-frame violation, and the
 * handshake's accept value against the RFC's own example. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "chat_common.h"
#include "testutil.h"
#include "ws_frame.h"

static const unsigned char KEY[4] = {0x37, 0xfa, 0x21, 0x3d};

static void test_client_header_lengths(void **state)
{
    static const struct {
        uint64_t len;
        size_t header_len;
        unsigned char second; /* the MASK bit and the 7-bit length field */
    } cases[] = {
        {0, 6, 0x80}, {125, 6, 0x80 | 125}, {126, 8, 0x80 | 126}, {65535, 8, 0x80 | 126},
        {65536, 14, 0x80 | 127}, {(uint64_t)1 << 40, 14, 0x80 | 127},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char h[CHAT_WSF_MAX_HEADER];
        size_t n = chat_wsf_client_header(h, CHAT_WS_TEXT, true, cases[i].len, KEY);
        assert_int_equal(n, cases[i].header_len);
        assert_int_equal(h[0], 0x81);
        assert_int_equal(h[1], cases[i].second);
        assert_memory_equal(h + n - 4, KEY, 4);
        uint64_t decoded = cases[i].len < 126 ? (uint64_t)(h[1] & 0x7f) : 0;
        for (size_t b = 2; b < n - 4; b++) decoded = (decoded << 8) | h[b];
        assert_true(decoded == cases[i].len);
    }
    unsigned char h[CHAT_WSF_MAX_HEADER];
    chat_wsf_client_header(h, CHAT_WS_CONT, false, 3, KEY);
    assert_int_equal(h[0], 0x00); /* no FIN, continuation */
}

static void test_mask_in_chunks_equals_mask_whole(void **state)
{
    unsigned char src[37], whole[37], chunked[37];
    for (size_t i = 0; i < sizeof src; i++) src[i] = (unsigned char)(i * 7 + 1);
    chat_wsf_mask(whole, src, sizeof src, KEY, 0);
    chat_wsf_mask(chunked, src, 5, KEY, 0);
    chat_wsf_mask(chunked + 5, src + 5, 14, KEY, 5);
    chat_wsf_mask(chunked + 19, src + 19, 18, KEY, 19);
    assert_memory_equal(whole, chunked, sizeof src);
    chat_wsf_mask(whole, whole, sizeof src, KEY, 0); /* in place, and its own inverse */
    assert_memory_equal(whole, src, sizeof src);
}

static void test_parse_server_header(void **state)
{
    static const struct {
        const char *name;
        unsigned char bytes[10];
        size_t n;
        int rc;
        uint64_t len;
        size_t header_len;
    } cases[] = {
        {"short text", {0x81, 5}, 2, 1, 5, 2},
        {"one byte only", {0x81}, 1, 0, 0, 0},
        {"16-bit length", {0x82, 126, 0x01, 0x00}, 4, 1, 256, 4},
        {"16-bit length, partial", {0x82, 126, 0x01}, 3, 0, 0, 0},
        {"64-bit length", {0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0}, 10, 1, (uint64_t)1 << 32, 10},
        {"64-bit high bit", {0x81, 127, 0x80, 0, 0, 0, 0, 0, 0, 0}, 10, CHAT_EINVAL, 0, 0},
        {"reserved bits", {0xc1, 0}, 2, CHAT_EINVAL, 0, 0},
        {"masked", {0x81, 0x85}, 2, CHAT_EINVAL, 0, 0},
        {"reserved data opcode", {0x83, 0}, 2, CHAT_EINVAL, 0, 0},
        {"reserved control opcode", {0x8b, 0}, 2, CHAT_EINVAL, 0, 0},
        {"fragmented ping", {0x09, 0}, 2, CHAT_EINVAL, 0, 0},
        {"close over 125", {0x88, 126, 0, 200}, 4, CHAT_EINVAL, 0, 0},
        {"ping of 125", {0x89, 125}, 2, 1, 125, 2},
        {"continuation", {0x00, 3}, 2, 1, 3, 2},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        chat_wsf_header h = {0};
        const char *why = NULL;
        int rc = chat_wsf_parse_server_header(cases[i].bytes, cases[i].n, &h, &why);
        print_message("%s\n", cases[i].name);
        assert_int_equal(rc, cases[i].rc);
        if (rc == 1) {
            assert_true(h.len == cases[i].len);
            assert_int_equal(h.header_len, cases[i].header_len);
            assert_int_equal(h.opcode, cases[i].bytes[0] & 0x0f);
        }
        if (rc < 0) assert_non_null(why);
    }
}

static void test_accept_matches_rfc_example(void **state)
{
    char out[CHAT_WSF_ACCEPT_LEN + 1];
    assert_int_equal(chat_wsf_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, out), 0);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    char long_key[80];
    memset(long_key, 'A', sizeof long_key);
    assert_int_equal(chat_wsf_accept(long_key, sizeof long_key, out), CHAT_EINVAL);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_client_header_lengths),
              cmocka_unit_test(test_mask_in_chunks_equals_mask_whole),
              cmocka_unit_test(test_parse_server_header),
              cmocka_unit_test(test_accept_matches_rfc_example))
