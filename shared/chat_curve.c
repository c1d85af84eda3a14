/* CurveZMQ for the broker link: settings, key files, the ZAP handler thread, the two socket set-ups.
 * See chat_curve.h for the design; here only what the code itself decides:
 * - Key files are read through one descriptor: the permission check (fstat) is of the very file read.
 *   Reading follows links (secret stores mount files through them), writing does not.
 * - The ZAP handler never closes its socket before the context ends: libzmq admits every CURVE client
 *   when no handler is bound (ZAP is not enforced by default), so a handler that gave up on an error
 *   would open the door. It leaves its loop only on ETERM.
 * - The handler answers every request, well-formed or not (a REP socket must reply to go on), and
 *   copies nothing but the 32-byte client key out of it. */
#include "chat_curve.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_log.h"
#include "chat_util.h"

#define ZAP_ENDPOINT "inproc://zeromq.zap.01"
#define ZAP_DOMAIN "chat"
#define KEYS_FILE_MAX (1 << 20) /* an allowed file: some 25,000 keys */
#define SECRET_FILE_MAX 4096
#define LOG_WINDOW_MS 60000
#define ZAP_MAX_FRAMES 8 /* version, id, domain, address, identity, mechanism, credentials (+ spare) */

static const char z85_chars[] = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

/* ---------------------------------------------------------------- settings and mode */

static int env_copy(char *dst, size_t cap, const char *name, char *err, size_t errlen)
{
    const char *v = getenv(name);
    if (!v) v = "";
    if (strlen(v) >= cap) return chat_fail(err, errlen, CHAT_EINVAL, "%s is too long (max %zu bytes)", name, cap - 1);
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

int chat_curve_settings_server_keys(chat_curve_settings *s, const char *list, char *err, size_t errlen)
{
    s->n_server_keys = 0;
    size_t len;
    for (const char *at = list, *p; (p = chat_list_next(&at, &len));) {
        if (s->n_server_keys == CHAT_CURVE_MAX_SERVER_KEYS)
            return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_CURVE_SERVER_KEY lists more than %d keys",
                             CHAT_CURVE_MAX_SERVER_KEYS);
        char *key = s->server_key[s->n_server_keys];
        if (len != CHAT_CURVE_KEY_LEN) goto bad;
        memcpy(key, p, len);
        key[len] = '\0';
        if (!chat_curve_key_valid(key)) goto bad;
        s->n_server_keys++;
        continue;
    bad:
        return chat_fail(err, errlen, CHAT_EINVAL,
                         "CHAT_CURVE_SERVER_KEY must be 40-character Z85 public keys, separated by commas");
    }
    return 0;
}

int chat_curve_settings_from_env(chat_curve_settings *s, char *err, size_t errlen)
{
    int rc;
    memset(s, 0, sizeof *s);
    if ((rc = env_copy(s->secret_file, sizeof s->secret_file, "CHAT_CURVE_SECRET_FILE", err, errlen))) return rc;
    if ((rc = env_copy(s->allowed_file, sizeof s->allowed_file, "CHAT_CURVE_ALLOWED", err, errlen))) return rc;
    if ((rc = chat_curve_settings_server_keys(s, getenv("CHAT_CURVE_SERVER_KEY"), err, errlen))) return rc;
    const char *insecure = getenv("CHAT_ZMQ_INSECURE");
    if (insecure && *insecure && strcmp(insecure, "0") && strcmp(insecure, "1"))
        return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_ZMQ_INSECURE must be 0 or 1");
    s->insecure = insecure && !strcmp(insecure, "1");
    return 0;
}

static bool endpoint_local(const char *endpoint)
{
    return !strncmp(endpoint, "ipc://", 6) || !strncmp(endpoint, "inproc://", 9);
}

int chat_curve_mode_for(const chat_curve_settings *s, const char *endpoint, bool server, chat_curve_mode *mode,
                        char *err, size_t errlen)
{
    if (!*s->secret_file) {
        if (*s->allowed_file || s->n_server_keys)
            return chat_fail(err, errlen, CHAT_EINVAL, "%s is set but CHAT_CURVE_SECRET_FILE is not",
                             *s->allowed_file ? "CHAT_CURVE_ALLOWED" : "CHAT_CURVE_SERVER_KEY");
        if (endpoint_local(endpoint)) {
            *mode = CHAT_CURVE_OFF;
            return 0;
        }
        if (s->insecure) {
            *mode = CHAT_CURVE_INSECURE;
            return 0;
        }
        return chat_fail(err, errlen, CHAT_EINVAL,
                         "CHAT_ZMQ_ENDPOINT %s is a network endpoint: set CHAT_CURVE_SECRET_FILE and %s (keys from "
                         "chat-keys), or CHAT_ZMQ_INSECURE=1 on a network you trust",
                         endpoint, server ? "CHAT_CURVE_ALLOWED" : "CHAT_CURVE_SERVER_KEY");
    }
    if (server && !*s->allowed_file)
        return chat_fail(err, errlen, CHAT_EINVAL,
                         "CHAT_CURVE_SECRET_FILE is set but CHAT_CURVE_ALLOWED (the workers' public keys) is not");
    *mode = CHAT_CURVE_ON;
    return 0;
}

/* ---------------------------------------------------------------- keys and key files */

bool chat_curve_key_valid(const char *z85)
{
    if (!z85 || strlen(z85) != CHAT_CURVE_KEY_LEN || strspn(z85, z85_chars) != CHAT_CURVE_KEY_LEN) return false;
    uint8_t raw[32];
    return zmq_z85_decode(raw, z85) != NULL;
}

int chat_curve_keypair_new(chat_curve_keypair *kp, char *err, size_t errlen)
{
    if (zmq_curve_keypair(kp->public_key, kp->secret_key))
        return chat_fail(err, errlen, CHAT_ERR, "cannot make a key pair: %s (libzmq without CURVE?)",
                         zmq_strerror(errno));
    return 0;
}

int chat_curve_secret_write(const char *path, const chat_curve_keypair *kp, bool replace, char *err, size_t errlen)
{
    int flags = O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC | (replace ? O_TRUNC : O_EXCL);
    int fd = open(path, flags, 0600);
    if (fd < 0)
        return chat_fail(err, errlen, errno == EEXIST ? CHAT_ECONFLICT : CHAT_ERR, "cannot create %s: %s", path,
                         errno == EEXIST ? "it exists (--force replaces it)" : strerror(errno));
    char text[512];
    int n = snprintf(text, sizeof text,
                     "#   CurveZMQ key pair of one chat streamer or worker (chat-keys).\n"
                     "#   Secret: keep this file mode 0600; give others only the public key.\n"
                     "\n"
                     "curve\n"
                     "    public-key = \"%s\"\n"
                     "    secret-key = \"%s\"\n",
                     kp->public_key, kp->secret_key);
    int rc = 0;
    if (fchmod(fd, 0600) || write(fd, text, (size_t)n) != n || fsync(fd))
        rc = chat_fail(err, errlen, CHAT_ERR, "cannot write %s: %s", path, strerror(errno));
    if (close(fd) && !rc) rc = chat_fail(err, errlen, CHAT_ERR, "cannot write %s: %s", path, strerror(errno));
    explicit_bzero(text, sizeof text);
    return rc;
}

/* The whole file at path, read through one descriptor whose mode must have none of the bits in forbid.
 * 0 with *out (caller frees; NUL-terminated), or a CHAT_E* code with err. */
static int read_checked(const char *path, mode_t forbid, size_t max, const char *who, char **out, char *err,
                        size_t errlen)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return chat_fail(err, errlen, CHAT_ENOTFOUND, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    char *buf = NULL;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode)) {
        rc = chat_fail(err, errlen, CHAT_EFORBIDDEN, "%s is not a regular file", path);
    } else if (st.st_mode & forbid) {
        rc = chat_fail(err, errlen, CHAT_EFORBIDDEN, "%s is mode %03o: %s (chmod %s it)", path,
                       (unsigned)(st.st_mode & 0777), who, forbid == 077 ? "600" : "644");
    } else if ((size_t)st.st_size > max) {
        rc = chat_fail(err, errlen, CHAT_EINVAL, "%s is larger than %zu bytes", path, max);
    } else if (!(buf = malloc((size_t)st.st_size + 1))) {
        rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    } else {
        size_t got = 0;
        ssize_t n;
        while (got < (size_t)st.st_size && (n = read(fd, buf + got, (size_t)st.st_size - got)) > 0)
            got += (size_t)n;
        buf[got] = '\0';
    }
    close(fd);
    *out = buf;
    return rc;
}

/* line (leading blanks skipped) is `name = "KEY"` (quotes optional): 1 with key copied, 0 when the line
 * is about something else, -1 when it names name but the value is not a key. */
static int key_assignment(const char *line, const char *name, chat_curve_key key)
{
    size_t nl = strlen(name);
    if (strncmp(line, name, nl) || (line[nl] != ' ' && line[nl] != '\t' && line[nl] != '=')) return 0;
    const char *p = line + nl + strspn(line + nl, " \t");
    if (*p++ != '=') return -1;
    p += strspn(p, " \t");
    bool quoted = *p == '"';
    p += quoted;
    if (strspn(p, z85_chars) != CHAT_CURVE_KEY_LEN) return -1;
    const char *end = p + CHAT_CURVE_KEY_LEN;
    if (quoted && *end++ != '"') return -1;
    if (end[strspn(end, " \t\r")] != '\0') return -1;
    memcpy(key, p, CHAT_CURVE_KEY_LEN);
    key[CHAT_CURVE_KEY_LEN] = '\0';
    return chat_curve_key_valid(key) ? 1 : -1;
}

/* The secret-file text into kp: 0 or CHAT_EINVAL. text is modified (split into lines). */
static int secret_parse(char *text, const char *path, chat_curve_keypair *kp, char *err, size_t errlen)
{
    chat_curve_key listed_public = "";
    kp->secret_key[0] = '\0';
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        line += strspn(line, " \t");
        int pub = key_assignment(line, "public-key", listed_public);
        int sec = key_assignment(line, "secret-key", kp->secret_key);
        if (pub < 0 || sec < 0)
            return chat_fail(err, errlen, CHAT_EINVAL, "%s: the %s is not a 40-character Z85 key", path,
                             pub < 0 ? "public-key" : "secret-key");
    }
    if (!kp->secret_key[0]) return chat_fail(err, errlen, CHAT_EINVAL, "%s has no secret-key line", path);
    if (zmq_curve_public(kp->public_key, kp->secret_key))
        return chat_fail(err, errlen, CHAT_EINVAL, "%s: cannot derive the public key: %s", path, zmq_strerror(errno));
    if (listed_public[0] && strcmp(listed_public, kp->public_key))
        return chat_fail(err, errlen, CHAT_EINVAL, "%s: its public-key is not the pair of its secret-key", path);
    return 0;
}

int chat_curve_secret_read(const char *path, chat_curve_keypair *kp, char *err, size_t errlen)
{
    char *text = NULL;
    memset(kp, 0, sizeof *kp);
    int rc =
        read_checked(path, 077, SECRET_FILE_MAX, "a secret key must be readable by its owner only", &text, err, errlen);
    if (!rc) rc = secret_parse(text, path, kp, err, errlen);
    if (text) {
        explicit_bzero(text, strlen(text));
        free(text);
    }
    if (rc) explicit_bzero(kp, sizeof *kp);
    return rc;
}

static int keys_add(chat_curve_keys *k, const char *z85)
{
    if (chat_curve_keys_has(k, z85)) return 0;
    if (chat_array_reserve(&k->key, &k->cap, k->n, sizeof *k->key)) return CHAT_ENOMEM;
    memcpy(k->key[k->n++], z85, CHAT_CURVE_KEY_LEN + 1);
    return 0;
}

/* One line of an allowed file (NUL-terminated, no newline): 1 with key filled, 0 for a blank or comment
 * line, -1 when bad. */
static int keys_line(const char *line, chat_curve_key key)
{
    line += strspn(line, " \t");
    size_t tok = strcspn(line, " \t\r");
    if (tok == CHAT_CURVE_KEY_LEN) {
        memcpy(key, line, CHAT_CURVE_KEY_LEN);
        key[CHAT_CURVE_KEY_LEN] = '\0';
        const char *rest = line + tok + strspn(line + tok, " \t\r");
        if (chat_curve_key_valid(key) && (*rest == '\0' || *rest == '#')) return 1;
    }
    if (*line == '#' || line[strspn(line, "\r")] == '\0') return 0;
    return -1;
}

int chat_curve_keys_parse(const char *text, chat_curve_keys *out, char *err, size_t errlen)
{
    int lineno = 0;
    for (const char *p = text; *p;) {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[256];
        chat_curve_key key;
        lineno++;
        int kind = -1;
        if (len < sizeof line) {
            memcpy(line, p, len);
            line[len] = '\0';
            kind = keys_line(line, key);
        }
        if (kind < 0)
            return chat_fail(err, errlen, CHAT_EINVAL,
                             "line %d is not a 40-character Z85 public key (comments start with '#')", lineno);
        if (kind > 0 && keys_add(out, key)) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        p += len + (nl != NULL);
    }
    return 0;
}

int chat_curve_keys_read(const char *path, chat_curve_keys *out, char *err, size_t errlen)
{
    char *text = NULL;
    int rc = read_checked(path, 022, KEYS_FILE_MAX, "whoever may write it decides who is let in", &text, err, errlen);
    if (!rc) {
        char why[200];
        rc = chat_curve_keys_parse(text, out, why, sizeof why);
        if (rc) chat_fail(err, errlen, rc, "%s: %s", path, why);
    }
    free(text);
    return rc;
}

bool chat_curve_keys_has(const chat_curve_keys *k, const char *z85)
{
    for (size_t i = 0; i < k->n; i++)
        if (!strcmp(k->key[i], z85)) return true;
    return false;
}

void chat_curve_keys_clear(chat_curve_keys *k)
{
    free(k->key);
    memset(k, 0, sizeof *k);
}

/* ---------------------------------------------------------------- the ZAP handler */

struct chat_curve_zap {
    pthread_t thread;
    void *rep; /* bound at ZAP_ENDPOINT; the thread's from its start */
    void *mon; /* the monitored socket's events, or NULL */
    chat_curve_keys allowed;
    atomic_ullong refused, failed;
    /* Thread only: the refusal log's rate limit. The first line of each kind in a window is always
     * written, so a flood of one failure cannot hide another. */
    int64_t window_ms;
    int lines;
    unsigned long long unlogged;
    const char *kinds_seen[8]; /* static reason texts logged in this window */
    int n_kinds;
};

/* True when a refusal of this kind (a static text) may be logged now: the first of its kind in the
 * window, then up to CHAT_CURVE_LOG_BURST a minute in all; says how many were not. */
static bool log_allowed(chat_curve_zap *z, const char *kind)
{
    int64_t now = chat_now_ms();
    if (now - z->window_ms >= LOG_WINDOW_MS) {
        if (z->unlogged) chat_log_warn("curve: %llu more refused or failed handshakes in the last minute", z->unlogged);
        z->window_ms = now;
        z->lines = 0;
        z->unlogged = 0;
        z->n_kinds = 0;
    }
    bool new_kind = true;
    for (int i = 0; i < z->n_kinds; i++) new_kind = new_kind && z->kinds_seen[i] != kind;
    if (new_kind && z->n_kinds < (int)CHAT_ARRAY_LEN(z->kinds_seen)) {
        z->kinds_seen[z->n_kinds++] = kind;
        z->lines++;
        return true;
    }
    if (z->lines < CHAT_CURVE_LOG_BURST) {
        z->lines++;
        return true;
    }
    z->unlogged++;
    return false;
}

static bool frame_is(zmq_msg_t *m, const char *s)
{
    return zmq_msg_size(m) == strlen(s) && !memcmp(zmq_msg_data(m), s, strlen(s));
}

/* Sends one reply: version, the request id (echoed), status code and text, user id, no metadata. */
static void zap_reply(void *rep, zmq_msg_t *id, const char *code, const char *text, const char *user)
{
    zmq_send(rep, "1.0", 3, ZMQ_SNDMORE);
    zmq_send(rep, id ? zmq_msg_data(id) : "", id ? zmq_msg_size(id) : 0, ZMQ_SNDMORE);
    zmq_send(rep, code, strlen(code), ZMQ_SNDMORE);
    zmq_send(rep, text, strlen(text), ZMQ_SNDMORE);
    zmq_send(rep, user, strlen(user), ZMQ_SNDMORE);
    zmq_send(rep, "", 0, 0);
}

/* The request in f[0..n): 200 with the client's key, or 400 (counted, logged within the rate limit). */
static void zap_decide(chat_curve_zap *z, zmq_msg_t *f, int n)
{
    chat_curve_key key = "";
    const char *why = NULL;
    if (n < 7 || !frame_is(&f[0], "1.0"))
        why = "malformed ZAP request";
    else if (!frame_is(&f[5], "CURVE"))
        why = "mechanism is not CURVE";
    else if (zmq_msg_size(&f[6]) != 32 || !zmq_z85_encode(key, zmq_msg_data(&f[6]), 32))
        why = "malformed client key";
    else if (!chat_curve_keys_has(&z->allowed, key))
        why = "public key not in CHAT_CURVE_ALLOWED";
    char addr[64] = "?";
    if (n > 3)
        snprintf(addr, sizeof addr, "%.*s", (int)(zmq_msg_size(&f[3]) < 63 ? zmq_msg_size(&f[3]) : 63),
                 (const char *)zmq_msg_data(&f[3]));
    if (!why) {
        chat_log_info("curve: admitted a peer from %s (public key %.*s...)", addr, CHAT_CURVE_KEY_SHOWN, key);
        zap_reply(z->rep, &f[1], "200", "OK", key);
        return;
    }
    atomic_fetch_add(&z->refused, 1);
    if (log_allowed(z, why))
        chat_log_warn("curve: refused a peer from %s (public key %.*s...): %s", addr, key[0] ? CHAT_CURVE_KEY_SHOWN : 1,
                      key[0] ? key : "-", why);
    zap_reply(z->rep, n > 1 ? &f[1] : NULL, "400", why, "");
}

/* Receives one request (all its frames) and answers it. -1 on ETERM. */
static int zap_serve_one(chat_curve_zap *z)
{
    zmq_msg_t f[ZAP_MAX_FRAMES];
    int n = 0, more = 1, rc = 0;
    while (more) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, z->rep, 0) < 0) {
            zmq_msg_close(&m);
            if (errno == EINTR) continue;
            rc = -1; /* ETERM (nothing else fails on an inproc REP) */
            break;
        }
        more = zmq_msg_more(&m);
        if (n < ZAP_MAX_FRAMES)
            f[n++] = m;
        else
            zmq_msg_close(&m);
    }
    if (!rc) zap_decide(z, f, n);
    for (int i = 0; i < n; i++)
        zmq_msg_close(&f[i]);
    return rc;
}

static const char *protocol_error_text(uint32_t value)
{
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH) return "the peer does not use CURVE";
    if (value == ZMQ_PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC) return "the peer expects another server key";
    return "protocol error";
}

/* One monitor event: a failed handshake is counted and logged (within the rate limit). */
static void monitor_one(chat_curve_zap *z)
{
    zmq_msg_t ev, addr;
    zmq_msg_init(&ev);
    zmq_msg_init(&addr);
    if (zmq_msg_recv(&ev, z->mon, 0) >= 0 && zmq_msg_more(&ev) && zmq_msg_recv(&addr, z->mon, 0) >= 0 &&
        zmq_msg_size(&ev) == 6) {
        uint16_t event;
        uint32_t value;
        memcpy(&event, zmq_msg_data(&ev), 2);
        memcpy(&value, (const char *)zmq_msg_data(&ev) + 2, 4);
        atomic_fetch_add(&z->failed, 1);
        const char *why = event == ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL ? protocol_error_text(value) : "no detail";
        if (log_allowed(z, why)) chat_log_warn("curve: a handshake failed (%s, 0x%x)", why, (unsigned)value);
    }
    zmq_msg_close(&ev);
    zmq_msg_close(&addr);
}

static void *zap_main(void *arg)
{
    chat_curve_zap *z = arg;
    for (;;) {
        zmq_pollitem_t items[2] = {{z->rep, 0, ZMQ_POLLIN, 0}, {z->mon, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, z->mon ? 2 : 1, -1) < 0) {
            if (errno == ETERM) break;
            continue; /* EINTR: never leave the loop but for ETERM (see the top of this file) */
        }
        if ((items[0].revents & ZMQ_POLLIN) && zap_serve_one(z)) break;
        if (z->mon && (items[1].revents & ZMQ_POLLIN)) monitor_one(z);
    }
    zmq_close(z->rep);
    if (z->mon) zmq_close(z->mon);
    return NULL;
}

/* A PAIR connected to monitored's failed-handshake events (on an inproc endpoint named after z). */
static void *monitor_open(void *zctx, void *monitored, const chat_curve_zap *z)
{
    char ep[64];
    snprintf(ep, sizeof ep, "inproc://chat-curve-monitor-%p", (const void *)z);
    if (zmq_socket_monitor(monitored, ep, ZMQ_EVENT_HANDSHAKE_FAILED_NO_DETAIL | ZMQ_EVENT_HANDSHAKE_FAILED_PROTOCOL))
        return NULL;
    void *pair = zmq_socket(zctx, ZMQ_PAIR);
    int zero = 0;
    if (pair && (zmq_setsockopt(pair, ZMQ_LINGER, &zero, sizeof zero) || zmq_connect(pair, ep))) {
        zmq_close(pair);
        pair = NULL;
    }
    if (!pair) zmq_socket_monitor(monitored, NULL, 0);
    return pair;
}

static void zap_release(chat_curve_zap *z)
{
    chat_curve_keys_clear(&z->allowed);
    free(z);
}

chat_curve_zap *chat_curve_zap_start(void *zctx, const chat_curve_keys *allowed, void *monitored, char *err,
                                     size_t errlen)
{
    chat_curve_zap *z = calloc(1, sizeof *z);
    if (!z) goto oom;
    for (size_t i = 0; i < allowed->n; i++)
        if (keys_add(&z->allowed, allowed->key[i])) goto oom;
    int zero = 0;
    z->rep = zmq_socket(zctx, ZMQ_REP);
    if (!z->rep || zmq_setsockopt(z->rep, ZMQ_LINGER, &zero, sizeof zero) || zmq_bind(z->rep, ZAP_ENDPOINT)) {
        chat_fail(err, errlen, CHAT_ERR, "cannot bind the ZAP handler: %s", zmq_strerror(errno));
        goto fail;
    }
    if (monitored && !(z->mon = monitor_open(zctx, monitored, z))) {
        chat_fail(err, errlen, CHAT_ERR, "cannot monitor the socket's handshakes: %s", zmq_strerror(errno));
        goto fail;
    }
    if (pthread_create(&z->thread, NULL, zap_main, z)) { /* from here the sockets are the thread's */
        chat_fail(err, errlen, CHAT_ERR, "cannot start the ZAP handler thread");
        goto fail;
    }
    return z;
oom:
    chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
fail:
    if (z && z->mon) {
        zmq_socket_monitor(monitored, NULL, 0);
        zmq_close(z->mon);
    }
    if (z && z->rep) zmq_close(z->rep);
    if (z) zap_release(z);
    return NULL;
}

void chat_curve_zap_free(chat_curve_zap *z)
{
    if (!z) return;
    pthread_join(z->thread, NULL);
    zap_release(z);
}

void chat_curve_zap_stats(const chat_curve_zap *z, chat_curve_stats *out)
{
    out->refused = z ? atomic_load(&z->refused) : 0;
    out->handshakes_failed = z ? atomic_load(&z->failed) : 0;
}

/* ---------------------------------------------------------------- set-ups */

static int sockopt_key(void *sock, int opt, const char *z85, const char *what, char *err, size_t errlen)
{
    if (zmq_setsockopt(sock, opt, z85, CHAT_CURVE_KEY_LEN + 1))
        return chat_fail(err, errlen, CHAT_ERR, "cannot set the %s: %s", what, zmq_strerror(errno));
    return 0;
}

/* Both sides' first steps: 0 when no keys are wanted (plain; a warning when insecure), 1 with kp and the
 * allowed file's keys (if one is set) loaded, the caller to wipe and clear them, or a CHAT_E* code. */
static int load_keys(const chat_curve_settings *s, const char *endpoint, bool server, chat_curve_keypair *kp,
                     chat_curve_keys *allowed, char *err, size_t errlen)
{
    chat_curve_mode mode;
    int rc = chat_curve_mode_for(s, endpoint, server, &mode, err, errlen);
    if (rc || mode == CHAT_CURVE_OFF) return rc;
    if (mode == CHAT_CURVE_INSECURE) {
        chat_log_warn("curve: %s is plain ZeroMQ (CHAT_ZMQ_INSECURE=1): %s", endpoint,
                      server ? "anyone who reaches it can join as a worker and read the questions"
                             : "questions and answers cross the network in clear text");
        return 0;
    }
    if ((rc = chat_curve_secret_read(s->secret_file, kp, err, errlen))) return rc;
    if (*s->allowed_file && (rc = chat_curve_keys_read(s->allowed_file, allowed, err, errlen))) {
        explicit_bzero(kp, sizeof *kp);
        return rc;
    }
    return 1;
}

int chat_curve_server_setup(const chat_curve_settings *s, void *zctx, void *sock, const char *endpoint,
                            chat_curve_zap **zap, char *err, size_t errlen)
{
    chat_curve_keypair kp;
    chat_curve_keys allowed = {0};
    *zap = NULL;
    int one = 1, rc = load_keys(s, endpoint, true, &kp, &allowed, err, errlen);
    if (rc <= 0) return rc;
    rc = 0;
    if (!allowed.n) {
        rc = chat_fail(err, errlen, CHAT_EINVAL, "%s lists no key: no worker could join", s->allowed_file);
        goto out;
    }
    if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) ||
        zmq_setsockopt(sock, ZMQ_ZAP_DOMAIN, ZAP_DOMAIN, strlen(ZAP_DOMAIN))) {
        rc = chat_fail(err, errlen, CHAT_ERR, "cannot make the socket a CURVE server: %s", zmq_strerror(errno));
        goto out;
    }
    if ((rc = sockopt_key(sock, ZMQ_CURVE_SECRETKEY, kp.secret_key, "secret key", err, errlen))) goto out;
    if (!(*zap = chat_curve_zap_start(zctx, &allowed, sock, err, errlen))) {
        rc = CHAT_ERR;
        goto out;
    }
    chat_log_info("curve: %s with CURVE, %zu worker keys allowed, this streamer's public key %.*s...", endpoint,
                  allowed.n, CHAT_CURVE_KEY_SHOWN, kp.public_key);
out:
    chat_curve_keys_clear(&allowed);
    explicit_bzero(&kp, sizeof kp);
    return rc;
}

int chat_curve_server(void *zctx, void *sock, const char *endpoint, chat_curve_zap **zap, char *err, size_t errlen)
{
    chat_curve_settings s;
    *zap = NULL;
    int rc = chat_curve_settings_from_env(&s, err, errlen);
    return rc ? rc : chat_curve_server_setup(&s, zctx, sock, endpoint, zap, err, errlen);
}

/* The streamer key a worker uses for the index-th endpoint (see CHAT_CURVE_SERVER_KEY in chat_curve.h)
 * into key: 0 or CHAT_EINVAL. */
static int pick_server_key(const chat_curve_settings *s, const chat_curve_keys *allowed, const char *endpoint,
                           size_t index, chat_curve_key key, char *err, size_t errlen)
{
    if (s->n_server_keys) {
        if (s->n_server_keys > 1 && index >= s->n_server_keys)
            return chat_fail(err, errlen, CHAT_EINVAL,
                             "CHAT_CURVE_SERVER_KEY lists %zu keys, none for endpoint %zu of CHAT_ZMQ_ENDPOINT (%s)",
                             s->n_server_keys, index + 1, endpoint);
        const char *chosen = s->server_key[s->n_server_keys > 1 ? index : 0];
        if (*s->allowed_file && !chat_curve_keys_has(allowed, chosen))
            return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_CURVE_SERVER_KEY is not one of the keys in %s",
                             s->allowed_file);
        memcpy(key, chosen, CHAT_CURVE_KEY_LEN + 1);
        return 0;
    }
    if (allowed->n == 1) {
        memcpy(key, allowed->key[0], CHAT_CURVE_KEY_LEN + 1);
        return 0;
    }
    if (!allowed->n)
        return chat_fail(err, errlen, CHAT_EINVAL,
                         "no streamer key: set CHAT_CURVE_SERVER_KEY, or CHAT_CURVE_ALLOWED to a file with that key");
    return chat_fail(err, errlen, CHAT_EINVAL,
                     "%s lists %zu streamer keys: set CHAT_CURVE_SERVER_KEY to the one of the streamer at %s",
                     s->allowed_file, allowed->n, endpoint);
}

int chat_curve_client_setup(const chat_curve_settings *s, void *sock, const char *endpoint, size_t index, char *err,
                            size_t errlen)
{
    chat_curve_keypair kp;
    chat_curve_keys allowed = {0};
    chat_curve_key server = "";
    int rc = load_keys(s, endpoint, false, &kp, &allowed, err, errlen);
    if (rc <= 0) return rc;
    if ((rc = pick_server_key(s, &allowed, endpoint, index, server, err, errlen))) goto out;
    if (sock && ((rc = sockopt_key(sock, ZMQ_CURVE_SERVERKEY, server, "streamer key", err, errlen)) ||
                 (rc = sockopt_key(sock, ZMQ_CURVE_PUBLICKEY, kp.public_key, "public key", err, errlen)) ||
                 (rc = sockopt_key(sock, ZMQ_CURVE_SECRETKEY, kp.secret_key, "secret key", err, errlen))))
        goto out;
    if (sock)
        chat_log_info("curve: %s with CURVE, streamer key %.*s..., this worker's public key %.*s...", endpoint,
                      CHAT_CURVE_KEY_SHOWN, server, CHAT_CURVE_KEY_SHOWN, kp.public_key);
out:
    chat_curve_keys_clear(&allowed);
    explicit_bzero(&kp, sizeof kp);
    return rc;
}

int chat_curve_client(void *sock, const char *endpoint, size_t index)
{
    chat_curve_settings s;
    char err[512];
    int rc = chat_curve_settings_from_env(&s, err, sizeof err);
    if (!rc) rc = chat_curve_client_setup(&s, sock, endpoint, index, err, sizeof err);
    if (rc) chat_log_error("curve: %s", err);
    return rc;
}

int chat_curve_client_check(const char *endpoints)
{
    chat_curve_settings s;
    char err[512], ep[512];
    int rc = chat_curve_settings_from_env(&s, err, sizeof err);
    size_t n = 0, len;
    for (const char *at = endpoints, *p; !rc && (p = chat_list_next(&at, &len)); n++) {
        snprintf(ep, sizeof ep, "%.*s", (int)(len < sizeof ep ? len : sizeof ep - 1), p);
        rc = chat_curve_client_setup(&s, NULL, ep, n, err, sizeof err);
    }
    if (!rc && s.n_server_keys > 1 && s.n_server_keys != n)
        rc = chat_fail(err, sizeof err, CHAT_EINVAL, "CHAT_CURVE_SERVER_KEY lists %zu keys for %zu endpoints",
                       s.n_server_keys, n);
    if (rc) chat_log_error("curve: %s", err);
    return rc;
}
