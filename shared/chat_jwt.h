/* JWT verification for both front ends, on top of libjwt 1.10.
 *
 * libjwt 1.10 checks the signature only: it neither pins the algorithm nor looks at exp/nbf. This module
 * does both: the header's alg must equal the configured one exactly (so "none", "None", "NONE" and an
 * HS256 token signed with the RSA public key as secret are refused), exp is required, nbf and iat
 * honoured (neither in the future), with a small leeway, and iss/aud checked when configured.
 * Thread-safe after creation. */
#ifndef CHAT_JWT_H
#define CHAT_JWT_H

#include <stddef.h>
#include <time.h>

#include "chat_config.h"

typedef struct chat_user {
    char id[256]; /* the sub claim */
    char email[256];
    char name[256];
    long long exp; /* the exp claim (seconds since the epoch): long-lived connections re-check it */
} chat_user;

typedef struct chat_jwt_verifier chat_jwt_verifier;

/* From cfg: jwt_alg, jwt_secret (HS256, at least 32 bytes), jwt_public_key_file (RS256/ES256),
 * jwt_issuer, jwt_audience, jwt_leeway_s. NULL with a message in err on a bad configuration. */
chat_jwt_verifier *chat_jwt_verifier_new(const chat_config *cfg, char *err, size_t errlen);
void chat_jwt_verifier_free(chat_jwt_verifier *v); /* accepts NULL */

/* Verifies token at time now. Returns 0 and fills user; CHAT_EEXPIRED ("Token expired"); CHAT_EAUTH for
 * every other failure. err receives the client-facing message ("Invalid token", "Token expired");
 * detail for logs goes to detail (may be NULL) and never contains the token. */
int chat_jwt_verify(const chat_jwt_verifier *v, const char *token, time_t now, chat_user *user, char *err,
                    size_t errlen, char *detail, size_t detail_len);

/* Mints an HS256 token (for `make token`, the demo token and tests). Caller frees. exp = now + ttl_s.
 * email/name may be NULL. NULL on failure. */
char *chat_jwt_mint_hs256(const char *secret, const char *sub, const char *email, const char *name, time_t now,
                          long ttl_s);

#endif
