/* Tests for chat_jwt: the algorithm pin, claims, limits and hostile input.
 *
 * Hostile tokens are crafted by hand (base64url of header and payload JSON, HMAC-SHA256 with libcrypto)
 * so that the tests do not depend on libjwt to build what libjwt is being guarded against. RS256 and
 * ES256 key pairs are generated at test time with the OpenSSL 3 EVP API; the public halves are written
 * to temporary files, exactly as a deployment's JWT_PUBLIC_KEY_FILE. All times are relative to NOW. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jwt.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_util.h"
#include "testutil.h"

#define NOW 1700000000L
#define LEEWAY 30
#define SECRET "0123456789abcdef0123456789abcdef-test-secret"
#define OTHER_SECRET "fedcba9876543210fedcba9876543210-other-secret"

/* ---- crafting ---- */

static char *b64url(const void *data, size_t n)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const unsigned char *p = data;
    char *out = malloc(n * 4 / 3 + 4);
    assert_non_null(out);
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = abc[v >> 18], out[o++] = abc[(v >> 12) & 63], out[o++] = abc[(v >> 6) & 63], out[o++] = abc[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = abc[v >> 18], out[o++] = abc[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = abc[v >> 18], out[o++] = abc[(v >> 12) & 63], out[o++] = abc[(v >> 6) & 63];
    }
    out[o] = '\0';
    return out;
}

/* "b64(header).b64(payload)" */
static char *signing_input(const char *header, const char *payload)
{
    char *h = b64url(header, strlen(header)), *p = b64url(payload, strlen(payload));
    chat_buf b;
    chat_buf_init(&b);
    assert_int_equal(chat_buf_printf(&b, "%s.%s", h, p), 0);
    free(h);
    free(p);
    return chat_buf_take(&b);
}

static char *with_signature(char *input, const char *sig)
{
    chat_buf b;
    chat_buf_init(&b);
    assert_int_equal(chat_buf_printf(&b, "%s.%s", input, sig), 0);
    free(input);
    return chat_buf_take(&b);
}

/* HS256 over header/payload with key (any bytes: a secret or a PEM). */
static char *craft_hs256(const char *header, const char *payload, const void *key, size_t keylen)
{
    char *input = signing_input(header, payload);
    unsigned char mac[EVP_MAX_MD_SIZE];
    unsigned int maclen = 0;
    assert_non_null(HMAC(EVP_sha256(), key, (int)keylen, (const unsigned char *)input, strlen(input), mac, &maclen));
    char *sig = b64url(mac, maclen);
    char *tok = with_signature(input, sig);
    free(sig);
    return tok;
}

/* ---- keys ---- */

typedef struct keypair {
    char *priv_pem;
    char *pub_pem;
    char path[64]; /* public key file */
} keypair;

static keypair rsa_key, rsa_other, ec_key;

static char *pem_of(EVP_PKEY *k, int private)
{
    BIO *bio = BIO_new(BIO_s_mem());
    assert_non_null(bio);
    int ok = private ? PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL) : PEM_write_bio_PUBKEY(bio, k);
    assert_true(ok);
    char *data = NULL;
    long n = BIO_get_mem_data(bio, &data);
    char *out = strndup(data, (size_t)n);
    BIO_free(bio);
    assert_non_null(out);
    return out;
}

static void make_key(keypair *kp, EVP_PKEY *k)
{
    assert_non_null(k);
    kp->priv_pem = pem_of(k, 1);
    kp->pub_pem = pem_of(k, 0);
    EVP_PKEY_free(k);
    snprintf(kp->path, sizeof kp->path, "/tmp/chat_test_jwt_XXXXXX");
    int fd = mkstemp(kp->path);
    assert_true(fd >= 0);
    size_t n = strlen(kp->pub_pem);
    assert_int_equal(write(fd, kp->pub_pem, n), (ssize_t)n);
    close(fd);
}

static void drop_key(keypair *kp)
{
    if (kp->path[0]) unlink(kp->path);
    free(kp->priv_pem);
    free(kp->pub_pem);
    memset(kp, 0, sizeof *kp);
}

static chat_jwt_verifier *hs_verifier(const char *issuer, const char *audience);

/* HS256 with SECRET and no issuer or audience: the verifier most tests check tokens with (a verifier is
 * read-only once made, so one serves them all). */
static chat_jwt_verifier *hs;

static int group_setup(void **state)
{
    make_key(&rsa_key, EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048));
    make_key(&rsa_other, EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048));
    make_key(&ec_key, EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"));
    hs = hs_verifier(NULL, NULL);
    return 0;
}

static int group_teardown(void **state)
{
    drop_key(&rsa_key);
    drop_key(&rsa_other);
    drop_key(&ec_key);
    chat_jwt_verifier_free(hs);
    return 0;
}

/* Signs payload JSON with libjwt and a private key PEM (RS256/ES256); libjwt is trusted to sign. */
static char *sign_with_libjwt(jwt_alg_t alg, const char *priv_pem, const char *payload)
{
    jwt_t *jwt = NULL;
    assert_int_equal(jwt_new(&jwt), 0);
    assert_int_equal(jwt_add_grants_json(jwt, payload), 0);
    assert_int_equal(jwt_set_alg(jwt, alg, (const unsigned char *)priv_pem, (int)strlen(priv_pem)), 0);
    char *tok = jwt_encode_str(jwt);
    assert_non_null(tok);
    jwt_free(jwt);
    return tok;
}

/* ---- verifier helpers ---- */

static chat_config base_config(const char *alg)
{
    chat_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.jwt_alg, sizeof cfg.jwt_alg, "%s", alg);
    cfg.jwt_leeway_s = LEEWAY;
    return cfg;
}

static chat_jwt_verifier *hs_verifier(const char *issuer, const char *audience)
{
    chat_config cfg = base_config("HS256");
    snprintf(cfg.jwt_secret, sizeof cfg.jwt_secret, "%s", SECRET);
    snprintf(cfg.jwt_issuer, sizeof cfg.jwt_issuer, "%s", issuer ? issuer : "");
    snprintf(cfg.jwt_audience, sizeof cfg.jwt_audience, "%s", audience ? audience : "");
    char err[256] = "";
    chat_jwt_verifier *v = chat_jwt_verifier_new(&cfg, err, sizeof err);
    if (!v) fail_msg("HS256 verifier: %s", err);
    return v;
}

static chat_jwt_verifier *key_verifier(const char *alg, const char *path)
{
    chat_config cfg = base_config(alg);
    snprintf(cfg.jwt_public_key_file, sizeof cfg.jwt_public_key_file, "%s", path);
    char err[256] = "";
    chat_jwt_verifier *v = chat_jwt_verifier_new(&cfg, err, sizeof err);
    if (!v) fail_msg("%s verifier: %s", alg, err);
    return v;
}

/* Verifies and checks the outcome, the client-facing message, and that the detail never echoes the
 * token. Returns rc so callers can check the user. */
static int expect_verify(const chat_jwt_verifier *v, const char *name, const char *token, int want, chat_user *u)
{
    char err[64] = "?", detail[256] = "?";
    chat_user tmp;
    if (!u) u = &tmp;
    int rc = chat_jwt_verify(v, token, NOW, u, err, sizeof err, detail, sizeof detail);
    if (rc != want)
        fail_msg("case '%s': rc %s, want %s (detail: %s)", name, chat_strerror(rc), chat_strerror(want), detail);
    if (want == CHAT_EEXPIRED) assert_string_equal(err, "Token expired");
    if (want == CHAT_EAUTH) assert_string_equal(err, "Invalid token");
    if (want != 0) {
        if (!detail[0]) fail_msg("case '%s': no detail for the log", name);
        if (token && strlen(token) > 8 && strstr(detail, token)) fail_msg("case '%s': detail echoes the token", name);
        if (u->id[0]) fail_msg("case '%s': user filled on failure", name);
    }
    return rc;
}

/* ---- HS256 table ---- */

#define HDR "{\"alg\":\"HS256\",\"typ\":\"JWT\"}"
#define CLAIMS_OK                                                                                                      \
    "{\"sub\":\"user-1\",\"email\":\"a@example.com\",\"name\":\"Alice\",\"iat\":1700000000,\"exp\":1700003600}"

enum sign_mode { SIGN_SECRET, SIGN_OTHER_SECRET, SIGN_EMPTY, SIGN_SHORT_JUNK };

static const struct hs_case {
    const char *name;
    const char *header;
    const char *payload;
    enum sign_mode sign;
    int want;
    const char *want_sub;
    const char *want_email;
    const char *want_name;
} hs_cases[] = {
    {"valid", HDR, CLAIMS_OK, SIGN_SECRET, 0, "user-1", "a@example.com", "Alice"},
    {"valid without typ", "{\"alg\":\"HS256\"}", "{\"sub\":\"u\",\"exp\":1700003600}", SIGN_SECRET, 0, "u", "", ""},
    {"typ lowercase jwt", "{\"alg\":\"HS256\",\"typ\":\"jwt\"}", "{\"sub\":\"u\",\"exp\":1700003600}", SIGN_SECRET, 0,
     "u", "", ""},
    {"email and name null", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"email\":null,\"name\":null}", SIGN_SECRET, 0, "u",
     "", ""},
    {"unicode name", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"name\":\"J\\u00fcrgen \xe5\xb1\xb1\xe7\x94\xb0\"}",
     SIGN_SECRET, 0, "u", "", "J\xc3\xbcrgen \xe5\xb1\xb1\xe7\x94\xb0"},
    {"exp fractional", HDR, "{\"sub\":\"u\",\"exp\":1700003600.5}", SIGN_SECRET, 0, "u", "", ""},
    {"expired", HDR, "{\"sub\":\"u\",\"exp\":1699999900}", SIGN_SECRET, CHAT_EEXPIRED, NULL, NULL, NULL},
    {"expired within leeway", HDR, "{\"sub\":\"u\",\"exp\":1699999990}", SIGN_SECRET, 0, "u", "", ""},
    {"expired exactly at leeway", HDR, "{\"sub\":\"u\",\"exp\":1699999970}", SIGN_SECRET, CHAT_EEXPIRED, NULL, NULL,
     NULL},
    {"expired and wrong secret", HDR, "{\"sub\":\"u\",\"exp\":1699999900}", SIGN_OTHER_SECRET, CHAT_EAUTH, NULL, NULL,
     NULL},
    {"expired and no sub", HDR, "{\"exp\":1699999900}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"nbf in future", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"nbf\":1700000100}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL,
     NULL},
    {"nbf within leeway", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"nbf\":1700000010}", SIGN_SECRET, 0, "u", "", ""},
    {"nbf not a number", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"nbf\":\"soon\"}", SIGN_SECRET, CHAT_EAUTH, NULL,
     NULL, NULL},
    {"iat in future", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"iat\":1700000100}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL,
     NULL},
    {"iat within leeway", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"iat\":1700000020}", SIGN_SECRET, 0, "u", "", ""},
    {"no exp", HDR, "{\"sub\":\"u\"}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"exp string", HDR, "{\"sub\":\"u\",\"exp\":\"1700003600\"}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"exp bool", HDR, "{\"sub\":\"u\",\"exp\":true}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"exp null", HDR, "{\"sub\":\"u\",\"exp\":null}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"exp NaN", HDR, "{\"sub\":\"u\",\"exp\":NaN}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"exp huge", HDR, "{\"sub\":\"u\",\"exp\":1e308}", SIGN_SECRET, 0, "u", "", ""},
    {"exp very negative", HDR, "{\"sub\":\"u\",\"exp\":-9223372036854775808}", SIGN_SECRET, CHAT_EEXPIRED, NULL, NULL,
     NULL},
    {"missing sub", HDR, "{\"exp\":1700003600}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"empty sub", HDR, "{\"sub\":\"\",\"exp\":1700003600}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"numeric sub", HDR, "{\"sub\":42,\"exp\":1700003600}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"sub with NUL", HDR, "{\"sub\":\"ad\\u0000min\",\"exp\":1700003600}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"sub with newline", HDR, "{\"sub\":\"a\\nb\",\"exp\":1700003600}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"email not a string", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"email\":[1]}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL,
     NULL},
    {"payload not an object", HDR, "[\"sub\",1700003600]", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"payload trailing data", HDR, "{\"sub\":\"u\",\"exp\":1700003600} {}", SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"payload not UTF-8", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"name\":\"\xff\xfe\"}", SIGN_SECRET, CHAT_EAUTH,
     NULL, NULL, NULL},
    {"payload too deep", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"x\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}",
     SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"payload nested within limit", HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"x\":[[[[[[[[[[1]]]]]]]]]]}", SIGN_SECRET,
     0, "u", "", ""},
    {"wrong secret", HDR, CLAIMS_OK, SIGN_OTHER_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"junk signature", HDR, CLAIMS_OK, SIGN_SHORT_JUNK, CHAT_EAUTH, NULL, NULL, NULL},
    {"empty signature", HDR, CLAIMS_OK, SIGN_EMPTY, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg none", "{\"alg\":\"none\",\"typ\":\"JWT\"}", CLAIMS_OK, SIGN_EMPTY, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg None", "{\"alg\":\"None\",\"typ\":\"JWT\"}", CLAIMS_OK, SIGN_EMPTY, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg NONE", "{\"alg\":\"NONE\",\"typ\":\"JWT\"}", CLAIMS_OK, SIGN_EMPTY, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg nOnE", "{\"alg\":\"nOnE\",\"typ\":\"JWT\"}", CLAIMS_OK, SIGN_EMPTY, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg none with a real MAC", "{\"alg\":\"none\"}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg hs256 lowercase", "{\"alg\":\"hs256\"}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg HS512", "{\"alg\":\"HS512\"}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg with NUL suffix", "{\"alg\":\"HS256\\u0000x\"}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg missing", "{\"typ\":\"JWT\"}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"alg not a string", "{\"alg\":256}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"typ unknown", "{\"alg\":\"HS256\",\"typ\":\"JWE\"}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"typ not a string", "{\"alg\":\"HS256\",\"typ\":1}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"crit header", "{\"alg\":\"HS256\",\"crit\":[\"exp\"]}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"header not an object", "[\"HS256\"]", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"header a string", "\"HS256\"", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"header not JSON", "alg=HS256", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL, NULL},
    {"header not UTF-8", "{\"alg\":\"HS256\",\"kid\":\"\xc0\xaf\"}", CLAIMS_OK, SIGN_SECRET, CHAT_EAUTH, NULL, NULL,
     NULL},
};

static void test_hs256_table(void **state)
{
    const chat_jwt_verifier *v = hs;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(hs_cases); i++) {
        const struct hs_case *c = &hs_cases[i];
        char *tok;
        if (c->sign == SIGN_SECRET)
            tok = craft_hs256(c->header, c->payload, SECRET, strlen(SECRET));
        else if (c->sign == SIGN_OTHER_SECRET)
            tok = craft_hs256(c->header, c->payload, OTHER_SECRET, strlen(OTHER_SECRET));
        else
            tok = with_signature(signing_input(c->header, c->payload), c->sign == SIGN_EMPTY ? "" : "AAAA");
        chat_user u;
        memset(&u, 'x', sizeof u);
        int rc = expect_verify(v, c->name, tok, c->want, &u);
        if (rc == 0) {
            assert_string_equal(u.id, c->want_sub);
            assert_string_equal(u.email, c->want_email);
            assert_string_equal(u.name, c->want_name);
        }
        free(tok);
    }
}

/* Flipping any single character of a valid token must make it invalid: header and payload are covered
 * by the MAC, and the strict base64url decoder leaves no second spelling of the signature. */
static void test_single_char_mutations(void **state)
{
    const chat_jwt_verifier *v = hs;
    char *tok = craft_hs256(HDR, CLAIMS_OK, SECRET, strlen(SECRET));
    expect_verify(v, "unmutated", tok, 0, NULL);
    static const char alternatives[] = "AQgw-_.";
    size_t n = strlen(tok);
    for (size_t i = 0; i < n; i++) {
        char orig = tok[i];
        for (const char *a = alternatives; *a; a++) {
            if (*a == orig) continue;
            tok[i] = *a;
            char name[64];
            snprintf(name, sizeof name, "position %zu -> '%c'", i, *a);
            expect_verify(v, name, tok, CHAT_EAUTH, NULL);
        }
        tok[i] = orig;
    }
    free(tok);
}

/* Tampered payload: a valid signature moved onto a payload claiming another user. */
static void test_tampered_payload(void **state)
{
    const chat_jwt_verifier *v = hs;
    char *good = craft_hs256(HDR, "{\"sub\":\"alice\",\"exp\":1700003600}", SECRET, strlen(SECRET));
    expect_verify(v, "original", good, 0, NULL);
    const char *sig = strrchr(good, '.') + 1;
    char *evil = with_signature(signing_input(HDR, "{\"sub\":\"admin\",\"exp\":1700003600}"), sig);
    expect_verify(v, "payload swapped", evil, CHAT_EAUTH, NULL);
    free(evil);
    char *later = with_signature(signing_input(HDR, "{\"sub\":\"alice\",\"exp\":1900000000}"), sig);
    expect_verify(v, "exp extended", later, CHAT_EAUTH, NULL);
    free(later);
    free(good);
}

/* ---- garbage ---- */

static void test_garbage(void **state)
{
    const chat_jwt_verifier *v = hs;
    char *dots = malloc(10 * 1024 + 1);
    assert_non_null(dots);
    memset(dots, '.', 10 * 1024);
    dots[10 * 1024] = '\0';
    char *valid = craft_hs256(HDR, CLAIMS_OK, SECRET, strlen(SECRET));
    char padded[sizeof "x" + 512];
    snprintf(padded, sizeof padded, "%s=", valid); /* base64 padding is not base64url */
    char spaced[sizeof "x" + 512];
    snprintf(spaced, sizeof spaced, " %s", valid);

    const char *cases[] = {
        "",
        ".",
        "..",
        "...",
        "a",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "a..c",
        ".b.c",
        "a.b.",
        dots,
        "!!!!.????.****",
        "eyJ.eyJ.c2ln",
        "e.e.e",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9.",
        "eyJhbGciOiJIUzI1NiJ9..",
        "eyJhbGciOiJIUzI1NiJ9.e30.",
        "eyJhbGciOiJIUzI1NiJ9.e30.AAAA",
        "Bearer abc.def.ghi",
        "\xff\xfe\xfd.\xfc.\xfb",
        "eyJhbGciOiJIUzI1NiJ9.e30.A\xc3\xa9",
        padded,
        spaced,
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        char name[48];
        snprintf(name, sizeof name, "garbage #%zu", i);
        expect_verify(v, name, cases[i], CHAT_EAUTH, NULL);
    }
    expect_verify(v, "NULL token", NULL, CHAT_EAUTH, NULL);

    /* Pseudo-random bytes with dots sprinkled in: never a crash, never a success. */
    unsigned seed = 12345;
    char buf[600];
    for (int round = 0; round < 3000; round++) {
        size_t n = (size_t)(rand_r(&seed) % (sizeof buf - 1));
        for (size_t i = 0; i < n; i++) {
            int r = rand_r(&seed);
            buf[i] = (r % 7 == 0) ? '.' : (r % 3 == 0) ? "eyJAb_-9"[r % 8] : (char)(1 + r % 255);
        }
        buf[n] = '\0';
        expect_verify(v, "random bytes", buf, CHAT_EAUTH, NULL);
    }
    free(valid);
    free(dots);
}

/* Size limit: a correctly signed token over 8 KB is refused, one under it accepted. */
static void test_size_limit(void **state)
{
    const chat_jwt_verifier *v = hs;
    char pad[6600];
    memset(pad, 'p', sizeof pad - 1);
    pad[sizeof pad - 1] = '\0';
    chat_buf b;
    chat_buf_init(&b);
    assert_int_equal(chat_buf_printf(&b, "{\"sub\":\"u\",\"exp\":1700003600,\"pad\":\"%.5800s\"}", pad), 0);
    char *small = craft_hs256(HDR, b.data, SECRET, strlen(SECRET));
    assert_true(strlen(small) < 8192);
    expect_verify(v, "under 8 KB", small, 0, NULL);
    chat_buf_reset(&b);
    assert_int_equal(chat_buf_printf(&b, "{\"sub\":\"u\",\"exp\":1700003600,\"pad\":\"%s\"}", pad), 0);
    char *big = craft_hs256(HDR, b.data, SECRET, strlen(SECRET));
    assert_true(strlen(big) > 8192);
    expect_verify(v, "over 8 KB", big, CHAT_EAUTH, NULL);
    free(small);
    free(big);
    chat_buf_free(&b);
}

/* sub: 255 bytes accepted, 256 refused; long names cut at a character boundary. */
static void test_claim_lengths(void **state)
{
    const chat_jwt_verifier *v = hs;
    char sub[300];
    chat_buf b;
    chat_buf_init(&b);
    for (size_t len = 255; len <= 256; len++) {
        memset(sub, 's', len);
        sub[len] = '\0';
        chat_buf_reset(&b);
        assert_int_equal(chat_buf_printf(&b, "{\"sub\":\"%s\",\"exp\":1700003600}", sub), 0);
        char *tok = craft_hs256(HDR, b.data, SECRET, strlen(SECRET));
        chat_user u;
        int rc = expect_verify(v, len == 255 ? "sub 255" : "sub 256", tok, len == 255 ? 0 : CHAT_EAUTH, &u);
        if (rc == 0) assert_string_equal(u.id, sub);
        free(tok);
    }

    /* 200 x "é" (2 bytes) = 400 bytes: must be cut to 254 bytes (127 whole characters), not 255. */
    chat_buf_reset(&b);
    chat_buf_puts(&b, "{\"sub\":\"u\",\"exp\":1700003600,\"name\":\"");
    for (int i = 0; i < 200; i++)
        chat_buf_puts(&b, "\xc3\xa9");
    chat_buf_puts(&b, "\",\"email\":\"");
    for (int i = 0; i < 100; i++)
        chat_buf_puts(&b, "\xf0\x9f\x98\x80"); /* 4-byte emoji */
    chat_buf_puts(&b, "\"}");
    char *tok = craft_hs256(HDR, b.data, SECRET, strlen(SECRET));
    chat_user u;
    expect_verify(v, "long name", tok, 0, &u);
    assert_int_equal(strlen(u.name), 254);
    assert_true(chat_utf8_valid(u.name, strlen(u.name)));
    assert_int_equal(strlen(u.email), 252);
    assert_true(chat_utf8_valid(u.email, strlen(u.email)));
    free(tok);
    chat_buf_free(&b);
}

/* ---- iss / aud ---- */

static const struct {
    const char *name;
    const char *payload;
    int want;
} iss_aud_cases[] = {
    {"match, aud string", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\",\"aud\":\"chat-api\"}", 0},
    {"match, aud array",
     "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\",\"aud\":[\"x\",\"chat-api\"]}", 0},
    {"aud array without us", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\",\"aud\":[\"x\",\"y\"]}",
     CHAT_EAUTH},
    {"aud empty array", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\",\"aud\":[]}", CHAT_EAUTH},
    {"aud mismatch", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\",\"aud\":\"chat-api2\"}",
     CHAT_EAUTH},
    {"aud prefix", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\",\"aud\":\"chat\"}", CHAT_EAUTH},
    {"aud number", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\",\"aud\":1}", CHAT_EAUTH},
    {"aud missing", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://id.example\"}", CHAT_EAUTH},
    {"iss mismatch", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://evil.example\",\"aud\":\"chat-api\"}",
     CHAT_EAUTH},
    {"iss case differs", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"https://ID.example\",\"aud\":\"chat-api\"}",
     CHAT_EAUTH},
    {"iss missing", "{\"sub\":\"u\",\"exp\":1700003600,\"aud\":\"chat-api\"}", CHAT_EAUTH},
    {"iss not a string", "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":[\"https://id.example\"],\"aud\":\"chat-api\"}",
     CHAT_EAUTH},
    {"expired but iss wrong",
     "{\"sub\":\"u\",\"exp\":1600000000,\"iss\":\"https://evil.example\",\"aud\":\"chat-api\"}", CHAT_EAUTH},
    {"expired, rest fine", "{\"sub\":\"u\",\"exp\":1600000000,\"iss\":\"https://id.example\",\"aud\":\"chat-api\"}",
     CHAT_EEXPIRED},
};

static void test_iss_aud(void **state)
{
    chat_jwt_verifier *v = hs_verifier("https://id.example", "chat-api");
    for (size_t i = 0; i < CHAT_ARRAY_LEN(iss_aud_cases); i++) {
        char *tok = craft_hs256(HDR, iss_aud_cases[i].payload, SECRET, strlen(SECRET));
        expect_verify(v, iss_aud_cases[i].name, tok, iss_aud_cases[i].want, NULL);
        free(tok);
    }
    /* Without configuration iss and aud are not looked at. */
    char *tok =
        craft_hs256(HDR, "{\"sub\":\"u\",\"exp\":1700003600,\"iss\":\"any\",\"aud\":7}", SECRET, strlen(SECRET));
    expect_verify(hs, "unconfigured iss/aud", tok, 0, NULL);
    free(tok);
    chat_jwt_verifier_free(v);
}

/* ---- RS256 / ES256 ---- */

#define PAYLOAD_OK "{\"sub\":\"rs-user\",\"email\":\"r@example.com\",\"name\":\"Rita\",\"exp\":1700003600}"

/* What every public-key verifier does: it takes a valid token of its algorithm (alg, key k), and refuses
 * one of the other public-key algorithm (other, key ko) and HS256 with its own public key as the secret
 * (the classic confusion). Returns the verifier; *good gets the valid token, u its user (the caller
 * frees both). */
static chat_jwt_verifier *key_basics(const char *alg, jwt_alg_t a, const keypair *k, const char *other, jwt_alg_t oa,
                                     const keypair *ko, chat_user *u, char **good)
{
    chat_jwt_verifier *v = key_verifier(alg, k->path);
    char name[96];
    *good = sign_with_libjwt(a, k->priv_pem, PAYLOAD_OK);
    snprintf(name, sizeof name, "%s valid", alg);
    expect_verify(v, name, *good, 0, u);
    assert_string_equal(u->id, "rs-user");
    char *foreign = sign_with_libjwt(oa, ko->priv_pem, PAYLOAD_OK);
    snprintf(name, sizeof name, "%s token to %s verifier", other, alg);
    expect_verify(v, name, foreign, CHAT_EAUTH, NULL);
    free(foreign);
    char *confused = craft_hs256(HDR, PAYLOAD_OK, k->pub_pem, strlen(k->pub_pem));
    snprintf(name, sizeof name, "HS256 with the %s public key as secret", alg);
    expect_verify(v, name, confused, CHAT_EAUTH, NULL);
    free(confused);
    return v;
}

static void test_rs256(void **state)
{
    chat_user u;
    char *good;
    chat_jwt_verifier *v = key_basics("RS256", JWT_ALG_RS256, &rsa_key, "ES256", JWT_ALG_ES256, &ec_key, &u, &good);
    assert_string_equal(u.email, "r@example.com");
    assert_string_equal(u.name, "Rita");

    char *expired = sign_with_libjwt(JWT_ALG_RS256, rsa_key.priv_pem, "{\"sub\":\"u\",\"exp\":1600000000}");
    expect_verify(v, "RS256 expired", expired, CHAT_EEXPIRED, NULL);

    char *other = sign_with_libjwt(JWT_ALG_RS256, rsa_other.priv_pem, PAYLOAD_OK);
    expect_verify(v, "RS256 signed by another key", other, CHAT_EAUTH, NULL);

    /* The confusion is the attack because raw libjwt accepts it; the pinned verifier does not (above). */
    char *confused = craft_hs256(HDR, PAYLOAD_OK, rsa_key.pub_pem, strlen(rsa_key.pub_pem));
    jwt_t *raw = NULL;
    int raw_rc = jwt_decode(&raw, confused, (const unsigned char *)rsa_key.pub_pem, (int)strlen(rsa_key.pub_pem));
    jwt_free(raw);
    assert_int_equal(raw_rc, 0);

    char *none = with_signature(signing_input("{\"alg\":\"none\"}", PAYLOAD_OK), "");
    expect_verify(v, "alg none to RS256", none, CHAT_EAUTH, NULL);

    /* An RS256 token presented to an HS256 verifier. */
    expect_verify(hs, "RS256 token to HS256 verifier", good, CHAT_EAUTH, NULL);

    free(good);
    free(expired);
    free(other);
    free(confused);
    free(none);
    chat_jwt_verifier_free(v);
}

static void test_es256(void **state)
{
    chat_user u;
    char *good;
    chat_jwt_verifier *v = key_basics("ES256", JWT_ALG_ES256, &ec_key, "RS256", JWT_ALG_RS256, &rsa_key, &u, &good);

    /* The payload of a valid ES256 token swapped: the signature no longer matches. */
    const char *sig = strrchr(good, '.') + 1;
    char *evil = with_signature(
        signing_input("{\"alg\":\"ES256\",\"typ\":\"JWT\"}", "{\"sub\":\"admin\",\"exp\":1700003600}"), sig);
    expect_verify(v, "ES256 tampered", evil, CHAT_EAUTH, NULL);

    free(good);
    free(evil);
    chat_jwt_verifier_free(v);
}

/* ---- configuration ---- */

static void test_verifier_config(void **state)
{
    char err[256];
    chat_config cfg = base_config("HS256");

    memset(cfg.jwt_secret, 'k', 31);
    err[0] = '\0';
    assert_null(chat_jwt_verifier_new(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "at least 32 bytes"));
    assert_null(strstr(err, "kkkk")); /* the message never shows the secret */

    memset(cfg.jwt_secret, 'k', 32);
    chat_jwt_verifier *v = chat_jwt_verifier_new(&cfg, err, sizeof err);
    assert_non_null(v);
    chat_jwt_verifier_free(v);
    chat_jwt_verifier_free(NULL);

    cfg.jwt_secret[0] = '\0';
    assert_null(chat_jwt_verifier_new(&cfg, err, sizeof err));
    assert_non_null(strstr(err, "JWT_SECRET"));

    static const char *bad_algs[] = {"none", "hs256", "HS512", "RS384", "", "HS256 "};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad_algs); i++) {
        chat_config c = base_config(bad_algs[i]);
        snprintf(c.jwt_secret, sizeof c.jwt_secret, "%s", SECRET);
        err[0] = '\0';
        if (chat_jwt_verifier_new(&c, err, sizeof err)) fail_msg("alg '%s' accepted", bad_algs[i]);
        assert_non_null(strstr(err, "JWT_ALGORITHM"));
    }

    /* Public-key algorithms: file required, must exist, hold a public key of the right type. */
    char garbage_path[] = "/tmp/chat_test_jwt_garbage_XXXXXX";
    int fd = mkstemp(garbage_path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "not a key\n", 10), 10);
    close(fd);
    char priv_path[] = "/tmp/chat_test_jwt_priv_XXXXXX";
    fd = mkstemp(priv_path);
    assert_true(fd >= 0);
    size_t n = strlen(rsa_key.priv_pem);
    assert_int_equal(write(fd, rsa_key.priv_pem, n), (ssize_t)n);
    close(fd);

    static const struct {
        const char *alg;
        const char *path; /* NULL: garbage file; "" none; "PRIV": private key file */
    } bad_keys[] = {
        {"RS256", ""}, {"ES256", ""}, {"RS256", "/nonexistent/key.pem"}, {"RS256", NULL}, {"RS256", "PRIV"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad_keys); i++) {
        chat_config c = base_config(bad_keys[i].alg);
        const char *p = bad_keys[i].path ? bad_keys[i].path : garbage_path;
        if (p[0] == 'P') p = priv_path;
        snprintf(c.jwt_public_key_file, sizeof c.jwt_public_key_file, "%s", p);
        err[0] = '\0';
        if (chat_jwt_verifier_new(&c, err, sizeof err)) fail_msg("bad key case %zu accepted", i);
        assert_non_null(strstr(err, "JWT_PUBLIC_KEY_FILE"));
    }
    unlink(garbage_path);
    unlink(priv_path);

    /* Key of the wrong type for the algorithm. */
    chat_config c = base_config("RS256");
    snprintf(c.jwt_public_key_file, sizeof c.jwt_public_key_file, "%s", ec_key.path);
    assert_null(chat_jwt_verifier_new(&c, err, sizeof err));
    c = base_config("ES256");
    snprintf(c.jwt_public_key_file, sizeof c.jwt_public_key_file, "%s", rsa_key.path);
    assert_null(chat_jwt_verifier_new(&c, err, sizeof err));

    assert_null(chat_jwt_verifier_new(NULL, err, sizeof err));
}

/* ---- minting ---- */

static void test_mint(void **state)
{
    const chat_jwt_verifier *v = hs;
    chat_user u;

    char *tok = chat_jwt_mint_hs256(SECRET, "minted", "m@example.com", "Mia", NOW, 3600);
    assert_non_null(tok);
    expect_verify(v, "minted", tok, 0, &u);
    assert_string_equal(u.id, "minted");
    assert_string_equal(u.email, "m@example.com");
    assert_string_equal(u.name, "Mia");
    assert_int_equal(u.exp, (long long)NOW + 3600); /* the streamer re-checks it on open connections */
    free(tok);

    tok = chat_jwt_mint_hs256(SECRET, "bare", NULL, NULL, NOW, 60);
    assert_non_null(tok);
    expect_verify(v, "minted without profile", tok, 0, &u);
    assert_string_equal(u.email, "");
    assert_string_equal(u.name, "");
    free(tok);

    tok = chat_jwt_mint_hs256(SECRET, "old", NULL, NULL, NOW - 7200, 3600);
    assert_non_null(tok);
    expect_verify(v, "minted expired", tok, CHAT_EEXPIRED, NULL);
    free(tok);

    tok = chat_jwt_mint_hs256(OTHER_SECRET, "other", NULL, NULL, NOW, 3600);
    assert_non_null(tok);
    expect_verify(v, "minted with another secret", tok, CHAT_EAUTH, NULL);
    free(tok);

    assert_null(chat_jwt_mint_hs256("short-secret", "u", NULL, NULL, NOW, 60));
    assert_null(chat_jwt_mint_hs256(NULL, "u", NULL, NULL, NOW, 60));
    assert_null(chat_jwt_mint_hs256(SECRET, "", NULL, NULL, NOW, 60));
    assert_null(chat_jwt_mint_hs256(SECRET, NULL, NULL, NULL, NOW, 60));
}

TESTUTIL_MAIN(group_setup, group_teardown,
              cmocka_unit_test(test_hs256_table),
              cmocka_unit_test(test_single_char_mutations),
              cmocka_unit_test(test_tampered_payload),
              cmocka_unit_test(test_garbage),
              cmocka_unit_test(test_size_limit),
              cmocka_unit_test(test_claim_lengths),
              cmocka_unit_test(test_iss_aud),
              cmocka_unit_test(test_rs256),
              cmocka_unit_test(test_es256),
              cmocka_unit_test(test_verifier_config),
              cmocka_unit_test(test_mint))
