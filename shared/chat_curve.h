/* CurveZMQ between the streamer's broker and its workers: key files, the ZAP handler that admits only
 * listed workers, and the one-call set-up of each side's socket (the zguide's "Ironhouse" pattern).
 *
 * Design choices:
 * - libzmq's own CURVE (ZMQ_CURVE_SERVER on the broker's ROUTER, ZMQ_CURVE_SERVERKEY on a worker's
 *   DEALER): every byte after the ZMTP greeting is encrypted and authenticated, and a worker that does not
 *   know the streamer's public key cannot even finish the handshake, so a worker talks only to the
 *   streamer it lists. The streamer lists the workers it admits: its ZAP handler (a thread of this
 *   module, on inproc://zeromq.zap.01 in the broker's context) answers 200 only for those public keys.
 * - Who needs keys is decided in one place (chat_curve_mode_for): keys configured means CURVE on any
 *   transport; without keys a local endpoint (ipc://, inproc://) stays plain as it always was, and any
 *   other (tcp://...) refuses to start unless CHAT_ZMQ_INSECURE=1 says so (then a warning is logged).
 * - Settings beyond chat_config, read here from the environment (like the broker's own tuning knobs):
 *   CHAT_CURVE_SECRET_FILE   this process's key pair (written by chat-keys; mode 0600, refused when the
 *                            group or others may read it);
 *   CHAT_CURVE_ALLOWED       a file of public keys, one Z85 key a line: on a streamer the workers it
 *                            admits, on a worker the streamers it may talk to;
 *   CHAT_CURVE_SERVER_KEY    a worker's choice of the streamer key for CHAT_ZMQ_ENDPOINT: required when
 *                            its CHAT_CURVE_ALLOWED lists several keys (it must then be one of them);
 *                            with exactly one listed key it may be left out. Streamers with key pairs
 *                            of their own (one per host): a comma-separated list, key i for endpoint i
 *                            of CHAT_ZMQ_ENDPOINT (Z85 has no comma); one key serves every endpoint;
 *   CHAT_ZMQ_INSECURE=1      plain ZeroMQ over a network endpoint (a private network you trust).
 * - Key files: the secret file is the czmq certificate layout (lines `public-key = "..."` and
 *   `secret-key = "..."`; other lines and '#' comments ignored; the public key, when present, must be
 *   the secret key's), so czmq-made certificates work too. The allowed file: per line a 40-character Z85
 *   key, optionally followed by whitespace and a '#' comment; blank lines; comment lines start with '#'
 *   (Z85 has '#' among its digits, but never as a key's first: that digit would overflow 32 bits). A bad
 *   line is an error naming its number.
 * - Logs carry at most a public key's first CHAT_CURVE_KEY_SHOWN characters; secret keys never, and the
 *   copies of secret keys this module makes are wiped once handed to libzmq. Refusals are logged at most
 *   CHAT_CURVE_LOG_BURST times a minute (a worker with a wrong key retries every second), counted always.
 *
 * Threads: the ZAP handler runs on its own thread; everything else runs on the caller's thread. */
#ifndef CHAT_CURVE_H
#define CHAT_CURVE_H

#include <stdbool.h>
#include <stddef.h>

#define CHAT_CURVE_KEY_LEN 40   /* Z85 text of a 32-byte key */
#define CHAT_CURVE_MAX_SERVER_KEYS 16 /* as many as a worker has endpoints */
#define CHAT_CURVE_KEY_SHOWN 8  /* characters of a public key that logs may show */
#define CHAT_CURVE_LOG_BURST 10 /* refusal lines per minute, the rest only counted */

typedef char chat_curve_key[CHAT_CURVE_KEY_LEN + 1]; /* NUL-terminated Z85 */

typedef struct chat_curve_keypair {
    chat_curve_key public_key;
    chat_curve_key secret_key;
} chat_curve_keypair;

/* A list of public keys (CHAT_CURVE_ALLOWED). Zero-initialise; clear with chat_curve_keys_clear. */
typedef struct chat_curve_keys {
    chat_curve_key *key;
    size_t n, cap;
} chat_curve_keys;

typedef struct chat_curve_settings {
    char secret_file[512];
    char allowed_file[512];
    chat_curve_key server_key[CHAT_CURVE_MAX_SERVER_KEYS]; /* CHAT_CURVE_SERVER_KEY's, in order */
    size_t n_server_keys;                                   /* 0 when unset */
    bool insecure;
} chat_curve_settings;

typedef enum {
    CHAT_CURVE_OFF,      /* a local endpoint without keys: plain, as ever */
    CHAT_CURVE_ON,       /* keys configured */
    CHAT_CURVE_INSECURE, /* a network endpoint without keys, allowed by CHAT_ZMQ_INSECURE=1 */
} chat_curve_mode;

/* The CHAT_CURVE_* and CHAT_ZMQ_INSECURE variables. 0, or CHAT_EINVAL naming the variable (a path too
 * long, a server key that is not 40 Z85 characters, CHAT_ZMQ_INSECURE other than 0 or 1). */
/* Sets s's streamer keys from a CHAT_CURVE_SERVER_KEY value: one key, or keys separated by commas (one
 * per endpoint). NULL or "" sets none. 0, or CHAT_EINVAL (a key that is not 40 Z85 characters, more than
 * CHAT_CURVE_MAX_SERVER_KEYS). */
int chat_curve_settings_server_keys(chat_curve_settings *s, const char *list, char *err, size_t errlen);
int chat_curve_settings_from_env(chat_curve_settings *s, char *err, size_t errlen);

/* What an endpoint needs with these settings, for a server (the broker) or a client (a worker).
 * CHAT_EINVAL with err for a network endpoint without keys or CHAT_ZMQ_INSECURE=1, and for keys half
 * configured (CHAT_CURVE_ALLOWED or CHAT_CURVE_SERVER_KEY without CHAT_CURVE_SECRET_FILE; a server
 * without CHAT_CURVE_ALLOWED). Whether a client has its server key is checked at set-up (it may come
 * from the allowed file). */
int chat_curve_mode_for(const chat_curve_settings *s, const char *endpoint, bool server, chat_curve_mode *mode,
                        char *err, size_t errlen);

/* True when z85 is exactly CHAT_CURVE_KEY_LEN characters that decode to a key. */
bool chat_curve_key_valid(const char *z85);

/* A fresh key pair (zmq_curve_keypair). 0, or CHAT_ERR (libzmq built without CURVE). */
int chat_curve_keypair_new(chat_curve_keypair *kp, char *err, size_t errlen);
/* Writes kp to path in the secret-file layout, mode 0600 whatever the umask. An existing file is
 * CHAT_ECONFLICT unless replace; links are not followed. 0, or a CHAT_E* code with err. */
int chat_curve_secret_write(const char *path, const chat_curve_keypair *kp, bool replace, char *err, size_t errlen);
/* Reads a secret file into kp (the public key derived from the secret one when the file has none).
 * CHAT_EFORBIDDEN when the group or others have any access to it (or it is not a regular file),
 * CHAT_EINVAL for no or a malformed secret key or a public key that is not its pair, CHAT_ENOTFOUND when
 * it cannot be opened. The caller wipes kp after use (explicit_bzero). */
int chat_curve_secret_read(const char *path, chat_curve_keypair *kp, char *err, size_t errlen);

/* Appends the keys of an allowed-file text to out. CHAT_EINVAL naming the first bad line (out then
 * holds the keys before it), CHAT_ENOMEM. */
int chat_curve_keys_parse(const char *text, chat_curve_keys *out, char *err, size_t errlen);
/* Reads and parses an allowed file. CHAT_EFORBIDDEN when the group or others may write it (they could
 * add keys), CHAT_ENOTFOUND when unreadable, else as chat_curve_keys_parse. */
int chat_curve_keys_read(const char *path, chat_curve_keys *out, char *err, size_t errlen);
bool chat_curve_keys_has(const chat_curve_keys *k, const char *z85);
void chat_curve_keys_clear(chat_curve_keys *k); /* frees; k is empty and reusable afterwards */

/* ---------------------------------------------------------------- the ZAP handler */

typedef struct chat_curve_zap chat_curve_zap;

typedef struct chat_curve_stats {
    unsigned long long refused;           /* handshakes whose client key is not allowed (ZAP said 400) */
    unsigned long long handshakes_failed; /* handshakes that failed before ZAP: no CURVE, another server key */
} chat_curve_stats;

/* Binds inproc://zeromq.zap.01 in zctx (one handler per context) and answers its requests on a thread of
 * its own: 200 for mechanism CURVE with a key in allowed (copied), 400 for anything else. When monitored
 * is not NULL (a socket of zctx, on the caller's thread), its failed handshakes are counted and logged
 * too. NULL with err on failure.
 * Lifecycle: the thread ends when zctx is terminated, so free the handler after zmq_ctx_term(zctx)
 * (before it, chat_curve_zap_free would wait forever). */
chat_curve_zap *chat_curve_zap_start(void *zctx, const chat_curve_keys *allowed, void *monitored, char *err,
                                     size_t errlen);
void chat_curve_zap_free(chat_curve_zap *z); /* joins the thread; accepts NULL */
/* The counters (any thread); zeros for NULL. */
void chat_curve_zap_stats(const chat_curve_zap *z, chat_curve_stats *out);

/* ---------------------------------------------------------------- one call per side */

/* The broker's ROUTER before it binds endpoint: per the mode, nothing, a warning (insecure), or
 * ZMQ_CURVE_SERVER with this process's key pair and a ZAP handler admitting the CHAT_CURVE_ALLOWED keys
 * (*zap, NULL otherwise; free it after zmq_ctx_term). 0, or a CHAT_E* code with err; on failure nothing
 * is left running. */
int chat_curve_server_setup(const chat_curve_settings *s, void *zctx, void *sock, const char *endpoint,
                            chat_curve_zap **zap, char *err, size_t errlen);
/* The same with the settings from the environment. */
int chat_curve_server(void *zctx, void *sock, const char *endpoint, chat_curve_zap **zap, char *err, size_t errlen);

/* A worker's DEALER before it connects to endpoint, the index-th of CHAT_ZMQ_ENDPOINT (from 0): nothing, a
 * warning, or this process's key pair and the chosen streamer key (ZMQ_CURVE_SERVERKEY; see
 * CHAT_CURVE_SERVER_KEY above). sock NULL only checks the settings (a supervisor before it forks). 0, or
 * a CHAT_E* code with err. */
int chat_curve_client_setup(const chat_curve_settings *s, void *sock, const char *endpoint, size_t index, char *err,
                            size_t errlen);
/* The same with the settings from the environment; logs why it failed. */
int chat_curve_client(void *sock, const char *endpoint, size_t index);
/* Checks the settings for every endpoint of a comma-separated list (CHAT_ZMQ_ENDPOINT), and that a list
 * of streamer keys has one key per endpoint; logs why it failed. 0 or a CHAT_E* code. */
int chat_curve_client_check(const char *endpoints);

#endif
