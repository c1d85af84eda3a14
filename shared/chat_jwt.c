/* JWT verification on top of libjwt 1.10, which only checks signatures.
 *
 * Design: everything libjwt does not do happens here, and the dangerous part happens BEFORE libjwt sees
 * the token. We split and base64url-decode the header ourselves (strict alphabet, no padding, canonical
 * trailing bits) and require its alg to equal the configured algorithm byte for byte. That single check
 * is what defeats "alg":"none" (in any case: libjwt's jwt_str_alg is case-insensitive) and the HS256/RS256
 * confusion where an attacker HMACs a token with the public key PEM as the secret. Only then does
 * jwt_decode verify the signature, and we re-check jwt_get_alg afterwards as a second lock.
 *
 * Claims are read from our own json-c parse of the payload (the signed bytes, so the same data libjwt
 * verified), because libjwt's grant getters cannot tell a missing exp from exp = 0 or a string. Every
 * structural check runs before the expiry check so that "Token expired" is only ever said about a token
 * that would otherwise be valid. Detail strings for logs name the reason and never echo the token. */
#include "chat_jwt.h"

#include <json-c/json.h>
#include <jwt.h>
#include <math.h>
#include <stdarg.h>
#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat_common.h"
#include "chat_util.h"

#define JWT_MAX_TOKEN 8192     /* bytes of the compact token */
#define JWT_MAX_KEY_FILE 65536 /* a PEM public key is a few KB at most */
#define JWT_MIN_SECRET 32      /* HS256: 256 bits, as RFC 7518 3.2 requires */
#define JWT_JSON_DEPTH 16
#define JWT_MAX_SUB 255

#define MSG_INVALID "Invalid token"
#define MSG_EXPIRED "Token expired"

struct chat_jwt_verifier {
    jwt_alg_t alg;
    const char *alg_name; /* "HS256", "RS256" or "ES256": compared byte for byte with the header */
    unsigned char *key;   /* HS256 secret or public key PEM; wiped on free */
    size_t key_len;
    char issuer[256];
    char audience[256];
    int64_t leeway;
};

/* ---- configuration ---- */

static unsigned char *read_key_file(const char *path, size_t *len, char *err, size_t errlen)
{
    char *buf = chat_read_file(path, JWT_MAX_KEY_FILE, len);
    if (!buf || *len == 0) {
        free(buf);
        chat_fail(err, errlen, CHAT_EINVAL, "JWT_PUBLIC_KEY_FILE is unreadable, empty or larger than %d bytes",
                  JWT_MAX_KEY_FILE);
        return NULL;
    }
    return (unsigned char *)buf;
}

/* Parses the PEM with libcrypto at start-up so that a wrong key type or a private key given by mistake is
 * a configuration error now, not a stream of "Invalid token" later. */
static int check_public_key(const unsigned char *pem, size_t len, jwt_alg_t alg, char *err, size_t errlen)
{
    BIO *bio = BIO_new_mem_buf(pem, (int)len);
    if (!bio) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory parsing JWT_PUBLIC_KEY_FILE");
    EVP_PKEY *pk = PEM_read_bio_PUBKEY(bio, NULL, NULL, NULL);
    BIO_free(bio);
    if (!pk)
        return chat_fail(err, errlen, CHAT_EINVAL,
                         "JWT_PUBLIC_KEY_FILE does not hold a PEM public key (\"BEGIN PUBLIC KEY\")");
    int rc = 0;
    if (alg == JWT_ALG_RS256) {
        if (!EVP_PKEY_is_a(pk, "RSA"))
            rc = chat_fail(err, errlen, CHAT_EINVAL, "JWT_PUBLIC_KEY_FILE is not an RSA key (JWT_ALGORITHM=RS256)");
        else if (EVP_PKEY_get_bits(pk) < 2048)
            rc = chat_fail(err, errlen, CHAT_EINVAL, "JWT_PUBLIC_KEY_FILE: RSA key shorter than 2048 bits");
    } else {
        char group[64] = "";
        size_t glen = 0;
        if (!EVP_PKEY_is_a(pk, "EC") || !EVP_PKEY_get_group_name(pk, group, sizeof group, &glen) ||
            (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0))
            rc = chat_fail(err, errlen, CHAT_EINVAL, "JWT_PUBLIC_KEY_FILE is not a P-256 EC key (JWT_ALGORITHM=ES256)");
    }
    EVP_PKEY_free(pk);
    return rc;
}

chat_jwt_verifier *chat_jwt_verifier_new(const chat_config *cfg, char *err, size_t errlen)
{
    if (!cfg) return chat_fail_null(err, errlen, "no configuration");
    jwt_alg_t alg;
    const char *alg_name;
    if (strcmp(cfg->jwt_alg, "HS256") == 0)
        alg = JWT_ALG_HS256, alg_name = "HS256";
    else if (strcmp(cfg->jwt_alg, "RS256") == 0)
        alg = JWT_ALG_RS256, alg_name = "RS256";
    else if (strcmp(cfg->jwt_alg, "ES256") == 0)
        alg = JWT_ALG_ES256, alg_name = "ES256";
    else return chat_fail_null(err, errlen, "JWT_ALGORITHM must be HS256, RS256 or ES256");

    chat_jwt_verifier *v = calloc(1, sizeof *v);
    if (!v) return chat_fail_null(err, errlen, "out of memory");
    v->alg = alg;
    v->alg_name = alg_name;
    v->leeway = cfg->jwt_leeway_s > 0 ? cfg->jwt_leeway_s : 0;
    snprintf(v->issuer, sizeof v->issuer, "%s", cfg->jwt_issuer);
    snprintf(v->audience, sizeof v->audience, "%s", cfg->jwt_audience);

    if (alg == JWT_ALG_HS256) {
        size_t n = strnlen(cfg->jwt_secret, sizeof cfg->jwt_secret);
        if (n == 0) {
            chat_fail(err, errlen, CHAT_EINVAL, "JWT_SECRET is not set (required for JWT_ALGORITHM=HS256)");
            goto fail;
        }
        if (n < JWT_MIN_SECRET) {
            chat_fail(err, errlen, CHAT_EINVAL, "JWT_SECRET is too short: HS256 needs at least %d bytes",
                      JWT_MIN_SECRET);
            goto fail;
        }
        v->key = malloc(n + 1);
        if (!v->key) {
            chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
            goto fail;
        }
        memcpy(v->key, cfg->jwt_secret, n);
        v->key[n] = '\0';
        v->key_len = n;
    } else {
        if (!cfg->jwt_public_key_file[0]) {
            chat_fail(err, errlen, CHAT_EINVAL, "JWT_PUBLIC_KEY_FILE is required for JWT_ALGORITHM=%s", v->alg_name);
            goto fail;
        }
        v->key = read_key_file(cfg->jwt_public_key_file, &v->key_len, err, errlen);
        if (!v->key) goto fail;
        if (check_public_key(v->key, v->key_len, alg, err, errlen)) goto fail;
    }
    return v;

fail:
    chat_jwt_verifier_free(v);
    return NULL;
}

void chat_jwt_verifier_free(chat_jwt_verifier *v)
{
    if (!v) return;
    if (v->key) {
        explicit_bzero(v->key, v->key_len);
        free(v->key);
    }
    free(v);
}

/* ---- parsing helpers ---- */

static int b64url_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Strict base64url (RFC 7515 2): no padding, no whitespace, unused trailing bits zero, so every value
 * has exactly one encoding. out must hold n * 3 / 4 + 1 bytes and is NUL-terminated; out = NULL only
 * validates. */
static int b64url_decode(const char *s, size_t n, unsigned char *out, size_t *outlen)
{
    if (n % 4 == 1) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int d = b64url_value((unsigned char)s[i]);
        if (d < 0) return -1;
        acc = (acc << 6) | (uint32_t)d;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (out) out[o] = (unsigned char)(acc >> bits);
            o++;
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) return -1; /* non-canonical: leftover bits must be zero */
    if (out) out[o] = '\0';
    if (outlen) *outlen = o;
    return 0;
}

/* Decodes one part and parses it as a JSON object (valid UTF-8, bounded depth, nothing trailing). */
static json_object *decode_json_part(const char *s, size_t n, const char **why)
{
    unsigned char *raw = malloc(n * 3 / 4 + 1);
    if (!raw) {
        *why = "out of memory";
        return NULL;
    }
    size_t rlen = 0;
    json_object *obj = NULL;
    if (b64url_decode(s, n, raw, &rlen)) {
        *why = "bad base64url";
        goto done;
    }
    json_tokener *tok = json_tokener_new_ex(JWT_JSON_DEPTH);
    if (!tok) {
        *why = "out of memory";
        goto done;
    }
    json_tokener_set_flags(tok, JSON_TOKENER_STRICT | JSON_TOKENER_VALIDATE_UTF8);
    obj = json_tokener_parse_ex(tok, (const char *)raw, (int)rlen);
    bool ok = obj && json_tokener_get_error(tok) == json_tokener_success && json_tokener_get_parse_end(tok) == rlen;
    json_tokener_free(tok);
    if (!ok) {
        *why = "not valid JSON";
        json_object_put(obj);
        obj = NULL;
    } else if (!json_object_is_type(obj, json_type_object)) {
        *why = "not a JSON object";
        json_object_put(obj);
        obj = NULL;
    }
done:
    free(raw);
    return obj;
}

/* A string field that holds no NUL and is valid UTF-8. NULL when absent, not a string, or unsafe. */
static const char *clean_string(json_object *o, size_t *len)
{
    if (!o || !json_object_is_type(o, json_type_string)) return NULL;
    const char *s = json_object_get_string(o);
    size_t n = (size_t)json_object_get_string_len(o);
    if (strlen(s) != n || !chat_utf8_valid(s, n)) return NULL;
    *len = n;
    return s;
}

/* Copies a printable excerpt of an untrusted header value into a log detail. */
static void sanitize(const char *s, char *out, size_t outlen)
{
    size_t o = 0;
    for (; s && *s && o + 1 < outlen && o < 16; s++)
        out[o++] = (*s >= 0x21 && *s <= 0x7e && *s != '\'') ? *s : '?';
    out[o] = '\0';
}

#define TIME_LIMIT ((int64_t)1 << 52) /* far beyond any real date, keeps arithmetic free of overflow */

/* NumericDate claim: 0 absent, 1 present (in *out), -1 wrong type. Fractions round towards the
 * stricter side: exp down, nbf and iat up. */
static int claim_time(json_object *payload, const char *name, bool round_up, int64_t *out)
{
    json_object *o;
    if (!json_object_object_get_ex(payload, name, &o)) return 0;
    int64_t t;
    if (json_object_is_type(o, json_type_int)) {
        t = json_object_get_int64(o);
    } else if (json_object_is_type(o, json_type_double)) {
        double d = json_object_get_double(o);
        if (!isfinite(d)) return -1;
        d = round_up ? ceil(d) : floor(d);
        if (d > (double)TIME_LIMIT) d = (double)TIME_LIMIT;
        if (d < -(double)TIME_LIMIT) d = -(double)TIME_LIMIT;
        t = (int64_t)d;
    } else {
        return -1;
    }
    if (t > TIME_LIMIT) t = TIME_LIMIT;
    if (t < -TIME_LIMIT) t = -TIME_LIMIT;
    *out = t;
    return 1;
}

static bool aud_matches(json_object *aud, const char *want)
{
    size_t n;
    if (json_object_is_type(aud, json_type_string)) {
        const char *s = clean_string(aud, &n);
        return s && strcmp(s, want) == 0;
    }
    if (!json_object_is_type(aud, json_type_array)) return false;
    size_t count = json_object_array_length(aud);
    for (size_t i = 0; i < count; i++) {
        const char *s = clean_string(json_object_array_get_idx(aud, i), &n);
        if (s && strcmp(s, want) == 0) return true;
    }
    return false;
}

/* Optional profile claim: absent or null gives "", a clean string is copied whole or cut at a UTF-8
 * boundary, anything else fails. */
static int copy_profile(json_object *payload, const char *name, char *dst, size_t dstlen)
{
    dst[0] = '\0';
    json_object *o;
    if (!json_object_object_get_ex(payload, name, &o) || o == NULL) return 0;
    size_t n;
    const char *s = clean_string(o, &n);
    if (!s) return -1;
    size_t keep = chat_utf8_prefix(s, n, dstlen - 1);
    memcpy(dst, s, keep);
    dst[keep] = '\0';
    return 0;
}

/* ---- verification ---- */

static int reject(int code, char *err, size_t errlen, char *detail, size_t detail_len, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static int reject(int code, char *err, size_t errlen, char *detail, size_t detail_len, const char *fmt, ...)
{
    chat_fail(err, errlen, code, "%s", code == CHAT_EEXPIRED ? MSG_EXPIRED : MSG_INVALID);
    va_list ap;
    va_start(ap, fmt);
    chat_vfail(detail, detail_len, code, fmt, ap);
    va_end(ap);
    return code;
}

/* Where a verification's messages go: the client-facing err and the log's detail. */
typedef struct jwt_out {
    char *err;
    size_t errlen;
    char *detail;
    size_t detail_len;
} jwt_out;

#define FAIL(...) reject(CHAT_EAUTH, o->err, o->errlen, o->detail, o->detail_len, __VA_ARGS__)

/* Compact serialization: at most JWT_MAX_TOKEN bytes, exactly three parts, none empty (an empty
 * signature is "alg":"none"), the signature canonical base64url. Sets the part lengths. */
static int split_token(const jwt_out *o, const char *token, size_t *len, size_t *hlen, size_t *plen)
{
    *len = strnlen(token, JWT_MAX_TOKEN + 1);
    if (*len == 0) return FAIL("empty token");
    if (*len > JWT_MAX_TOKEN) return FAIL("token longer than %d bytes", JWT_MAX_TOKEN);
    const char *d1 = memchr(token, '.', *len);
    const char *d2 = d1 ? memchr(d1 + 1, '.', *len - (size_t)(d1 + 1 - token)) : NULL;
    if (!d1 || !d2 || memchr(d2 + 1, '.', *len - (size_t)(d2 + 1 - token)))
        return FAIL("not three dot-separated parts");
    size_t slen = *len - (size_t)(d2 + 1 - token);
    *hlen = (size_t)(d1 - token), *plen = (size_t)(d2 - d1 - 1);
    if (!*hlen || !*plen || !slen) return FAIL("empty %s part", !*hlen ? "header" : !*plen ? "payload" : "signature");
    if (b64url_decode(d2 + 1, slen, NULL, NULL)) return FAIL("signature is not canonical base64url");
    return 0;
}

/* The algorithm pin, before any cryptography: alg exactly the configured one, typ JWT when present, no
 * crit extensions. */
static int check_header(const jwt_out *o, const chat_jwt_verifier *v, json_object *header)
{
    json_object *m;
    if (!json_object_object_get_ex(header, "alg", &m) || !json_object_is_type(m, json_type_string))
        return FAIL("header has no alg string");
    const char *alg = json_object_get_string(m);
    if ((size_t)json_object_get_string_len(m) != strlen(alg) || strcmp(alg, v->alg_name) != 0) {
        char shown[20];
        sanitize(alg, shown, sizeof shown);
        return FAIL("alg '%s' refused, configured %s", shown, v->alg_name);
    }
    if (json_object_object_get_ex(header, "typ", &m)) {
        size_t n;
        const char *typ = clean_string(m, &n);
        if (!typ || strcasecmp(typ, "JWT") != 0) return FAIL("typ is not JWT");
    }
    if (json_object_object_get_ex(header, "crit", &m)) return FAIL("crit header present: no extensions are supported");
    return 0;
}

/* The time claims, read (exp required, numbers all) before anything else of the payload and compared
 * with the clock after everything else. */
typedef struct jwt_times {
    int64_t exp, nbf, iat;
    int has_nbf, has_iat;
} jwt_times;

static int read_times(const jwt_out *o, json_object *payload, jwt_times *t)
{
    memset(t, 0, sizeof *t);
    int has_exp = claim_time(payload, "exp", false, &t->exp);
    if (has_exp <= 0) return FAIL(has_exp == 0 ? "exp claim missing" : "exp claim is not a number");
    t->has_nbf = claim_time(payload, "nbf", true, &t->nbf);
    t->has_iat = claim_time(payload, "iat", true, &t->iat);
    if (t->has_nbf < 0 || t->has_iat < 0) return FAIL("%s claim is not a number", t->has_nbf < 0 ? "nbf" : "iat");
    return 0;
}

/* Who: sub (required, no control characters), the profile claims, iss and aud when configured. */
static int read_identity(const jwt_out *o, const chat_jwt_verifier *v, json_object *payload, chat_user *u)
{
    json_object *m;
    size_t sublen = 0;
    const char *sub = json_object_object_get_ex(payload, "sub", &m) ? clean_string(m, &sublen) : NULL;
    if (!sub || sublen == 0 || sublen > JWT_MAX_SUB)
        return FAIL("sub claim missing, empty, longer than %d bytes or not valid UTF-8", JWT_MAX_SUB);
    for (size_t i = 0; i < sublen; i++)
        if ((unsigned char)sub[i] < 0x20 || sub[i] == 0x7f) return FAIL("sub claim contains control characters");
    memcpy(u->id, sub, sublen);
    u->id[sublen] = '\0';
    if (copy_profile(payload, "email", u->email, sizeof u->email) ||
        copy_profile(payload, "name", u->name, sizeof u->name))
        return FAIL("email or name claim is not a valid string");
    if (v->issuer[0]) {
        size_t n;
        const char *iss = json_object_object_get_ex(payload, "iss", &m) ? clean_string(m, &n) : NULL;
        if (!iss || strcmp(iss, v->issuer) != 0) return FAIL("iss claim missing or not the configured issuer");
    }
    if (v->audience[0] && (!json_object_object_get_ex(payload, "aud", &m) || !aud_matches(m, v->audience)))
        return FAIL("aud claim missing or does not include the configured audience");
    return 0;
}

/* The clock, with the leeway: not before nbf, iat not in the future, before exp (CHAT_EEXPIRED). */
static int check_times(const jwt_out *o, const chat_jwt_verifier *v, const jwt_times *tm, time_t now)
{
    int64_t t = (int64_t)now;
    if (tm->has_nbf && t + v->leeway < tm->nbf)
        return FAIL("not valid yet (nbf %lld s ahead)", (long long)(tm->nbf - t));
    if (tm->has_iat && tm->iat > t + v->leeway) return FAIL("iat %lld s in the future", (long long)(tm->iat - t));
    if (t - v->leeway >= tm->exp)
        return reject(CHAT_EEXPIRED, o->err, o->errlen, o->detail, o->detail_len, "expired %lld s ago",
                      (long long)(t - tm->exp));
    return 0;
}

/* The signature, with the pinned key only; libjwt takes a NUL-terminated token, which split_token's
 * length bound guarantees. */
static int check_signature(const jwt_out *o, const chat_jwt_verifier *v, const char *token)
{
    jwt_t *jwt = NULL;
    int rc = 0;
    if (jwt_decode(&jwt, token, v->key, (int)v->key_len) != 0 || !jwt) rc = FAIL("signature verification failed");
    else if (jwt_get_alg(jwt) != v->alg) rc = FAIL("libjwt reports a different alg than the pinned one");
    jwt_free(jwt);
    return rc;
}

/* In order: the token's form, the header (the algorithm pin), the payload's JSON, the signature, then
 * the claims (structure first, time last). */
int chat_jwt_verify(const chat_jwt_verifier *v, const char *token, time_t now, chat_user *user, char *err,
                    size_t errlen, char *detail, size_t detail_len)
{
    const jwt_out out = {err, errlen, detail, detail_len}, *o = &out;
    json_object *header = NULL, *payload = NULL;
    chat_user u;
    memset(&u, 0, sizeof u);
    if (user) memset(user, 0, sizeof *user);
    if (detail && detail_len) detail[0] = '\0';
    if (!v || !token) return FAIL("no verifier or no token");

    size_t len = 0, hlen = 0, plen = 0;
    const char *why = NULL;
    int rc = split_token(o, token, &len, &hlen, &plen);
    if (!rc && !(header = decode_json_part(token, hlen, &why))) rc = FAIL("header: %s", why);
    if (!rc) rc = check_header(o, v, header);
    if (!rc && !(payload = decode_json_part(token + hlen + 1, plen, &why))) rc = FAIL("payload: %s", why);
    if (!rc) rc = check_signature(o, v, token);
    jwt_times tm;
    if (!rc) rc = read_times(o, payload, &tm);
    if (!rc) rc = read_identity(o, v, payload, &u);
    if (!rc) rc = check_times(o, v, &tm, now);
    if (!rc) {
        u.exp = (long long)tm.exp;
        if (user) *user = u;
        if (err && errlen) err[0] = '\0';
    }
    json_object_put(payload);
    json_object_put(header);
    return rc;
}

/* ---- minting ---- */

char *chat_jwt_mint_hs256(const char *secret, const char *sub, const char *email, const char *name, time_t now,
                          long ttl_s)
{
    if (!secret || strlen(secret) < JWT_MIN_SECRET || !sub || !*sub || strlen(sub) > JWT_MAX_SUB) return NULL;
    jwt_t *jwt = NULL;
    char *out = NULL;
    if (jwt_new(&jwt) != 0 || !jwt) return NULL;
    if (jwt_add_grant(jwt, "sub", sub) || (email && jwt_add_grant(jwt, "email", email)) ||
        (name && jwt_add_grant(jwt, "name", name)) || jwt_add_grant_int(jwt, "iat", (long)now) ||
        jwt_add_grant_int(jwt, "exp", (long)now + ttl_s))
        goto cleanup;
    if (jwt_set_alg(jwt, JWT_ALG_HS256, (const unsigned char *)secret, (int)strlen(secret))) goto cleanup;
    out = jwt_encode_str(jwt); /* libjwt 1.10 allocates with malloc: the caller's free() matches */
cleanup:
    jwt_free(jwt);
    return out;
}
