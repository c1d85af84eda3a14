/* chat_curve: which endpoints need keys (a table), allowed-file lines (a table), secret files (round
 * trip, permissions, malformed files), a worker's choice of streamer key (a table), the ZAP handler's
 * answers to requests sent straight to it (a table), and real CURVE handshakes over loopback TCP: an
 * allowed worker gets through, an unlisted key is refused and counted, a worker expecting another
 * streamer key and a plain one fail their handshakes and are counted too. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_curve.h"
#include "chat_util.h"
#include "testutil.h"

static char dir[64];

/* dir/name, in a static buffer (valid until the next call). */
static const char *at(const char *name)
{
    static char p[128];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    return p;
}

static void write_text(const char *path, const char *text, mode_t mode)
{
    unlink(path);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static void new_pair(chat_curve_keypair *kp, const char *name)
{
    char err[256];
    assert_int_equal(chat_curve_keypair_new(kp, err, sizeof err), 0);
    if (name) assert_int_equal(chat_curve_secret_write(at(name), kp, true, err, sizeof err), 0);
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/chat-curve-unit.XXXXXX");
    return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ---------------------------------------------------------------- settings */

static void test_mode_table(void **state)
{
    (void)state;
    static const struct {
        const char *endpoint, *secret, *allowed, *server_key;
        bool insecure, server;
        int rc;
        chat_curve_mode mode;
        const char *err; /* a piece of the message */
    } cases[] = {
        {"ipc://var/run/w.ipc", "", "", "", false, true, 0, CHAT_CURVE_OFF, NULL},
        {"inproc://x", "", "", "", false, false, 0, CHAT_CURVE_OFF, NULL},
        {"tcp://10.0.0.1:5555", "", "", "", false, true, CHAT_EINVAL, 0, "CHAT_ZMQ_INSECURE=1"},
        {"tcp://10.0.0.1:5555", "", "", "", false, false, CHAT_EINVAL, 0, "CHAT_CURVE_SERVER_KEY"},
        {"tcp://10.0.0.1:5555", "", "", "", true, true, 0, CHAT_CURVE_INSECURE, NULL},
        {"tcp://10.0.0.1:5555", "/k", "/a", "", false, true, 0, CHAT_CURVE_ON, NULL},
        {"tcp://10.0.0.1:5555", "/k", "", "", true, true, CHAT_EINVAL, 0, "CHAT_CURVE_ALLOWED"},
        {"tcp://10.0.0.1:5555", "/k", "", "", false, false, 0, CHAT_CURVE_ON, NULL}, /* key checked at set-up */
        {"ipc://w.ipc", "/k", "/a", "", false, true, 0, CHAT_CURVE_ON, NULL},        /* keys: CURVE on ipc too */
        {"ipc://w.ipc", "", "/a", "", false, true, CHAT_EINVAL, 0, "CHAT_CURVE_SECRET_FILE is not"},
        {"tcp://h:1", "", "", "0000000000000000000000000000000000000000", true, false, CHAT_EINVAL, 0,
         "CHAT_CURVE_SERVER_KEY is set"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_curve_settings s = {.insecure = cases[i].insecure};
        snprintf(s.secret_file, sizeof s.secret_file, "%s", cases[i].secret);
        snprintf(s.allowed_file, sizeof s.allowed_file, "%s", cases[i].allowed);
        assert_int_equal(chat_curve_settings_server_keys(&s, cases[i].server_key, NULL, 0), 0);
        chat_curve_mode mode = (chat_curve_mode)-1;
        char err[512] = "";
        int rc = chat_curve_mode_for(&s, cases[i].endpoint, cases[i].server, &mode, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("case %zu: rc %d (%s)", i, rc, err);
        if (!rc) assert_int_equal(mode, cases[i].mode);
        if (cases[i].err && !strstr(err, cases[i].err)) fail_msg("case %zu: message '%s'", i, err);
    }
}

static void test_settings_from_env(void **state)
{
    (void)state;
    chat_curve_settings s;
    char err[256];
    setenv("CHAT_CURVE_SECRET_FILE", "/etc/chat/w.key", 1);
    setenv("CHAT_ZMQ_INSECURE", "1", 1);
    assert_int_equal(chat_curve_settings_from_env(&s, err, sizeof err), 0);
    assert_string_equal(s.secret_file, "/etc/chat/w.key");
    assert_true(s.insecure);
    setenv("CHAT_ZMQ_INSECURE", "yes", 1);
    assert_int_equal(chat_curve_settings_from_env(&s, err, sizeof err), CHAT_EINVAL);
    unsetenv("CHAT_ZMQ_INSECURE");
    setenv("CHAT_CURVE_SERVER_KEY", "too-short", 1);
    assert_int_equal(chat_curve_settings_from_env(&s, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "CHAT_CURVE_SERVER_KEY"));
    assert_null(strstr(err, "too-short")); /* the value is not echoed */
    unsetenv("CHAT_CURVE_SERVER_KEY");
    unsetenv("CHAT_CURVE_SECRET_FILE");
}

/* ---------------------------------------------------------------- key files */

static void test_keys_parse_table(void **state)
{
    (void)state;
    chat_curve_keypair a, b;
    new_pair(&a, NULL);
    new_pair(&b, NULL);
    char bad_char[41];
    memcpy(bad_char, a.public_key, 41);
    bad_char[7] = '"'; /* not a Z85 digit */
    char overflow[41];
    memset(overflow, '0', 40);
    overflow[0] = '#', overflow[40] = '\0'; /* Z85 digits, but the first group overflows 32 bits */
    char t[16][256];
    const struct {
        const char *text;
        int rc;
        size_t n;
        const char *err;
    } cases[] = {
        {"", 0, 0, NULL},
        {"# workers of host a\n\n   \n", 0, 0, NULL},
        {(snprintf(t[0], 256, "%s\n", a.public_key), t[0]), 0, 1, NULL},
        {(snprintf(t[1], 256, "%s", a.public_key), t[1]), 0, 1, NULL}, /* no final newline */
        {(snprintf(t[2], 256, "  %s   # worker-a, host 10.0.0.2\r\n%s\r\n", a.public_key, b.public_key), t[2]), 0, 2,
         NULL},
        {(snprintf(t[3], 256, "%s\n%s\n", a.public_key, a.public_key), t[3]), 0, 1, NULL}, /* listed twice */
        {(snprintf(t[4], 256, "# ok\n%.39s\n", a.public_key), t[4]), CHAT_EINVAL, 0, "line 2"},
        {(snprintf(t[5], 256, "%s\n%sX\n", a.public_key, b.public_key), t[5]), CHAT_EINVAL, 1, "line 2"},
        {(snprintf(t[6], 256, "%s worker-a\n", a.public_key), t[6]), CHAT_EINVAL, 0, "line 1"}, /* no '#' */
        {(snprintf(t[7], 256, "%s %s\n", a.public_key, b.public_key), t[7]), CHAT_EINVAL, 0, "line 1"},
        {(snprintf(t[8], 256, "%s\n", bad_char), t[8]), CHAT_EINVAL, 0, "line 1"},
        {(snprintf(t[9], 256, "%s\n", overflow), t[9]), 0, 0, NULL}, /* a comment: no key begins with '#' */
        {(snprintf(t[10], 256, "%s#worker\n", a.public_key), t[10]), CHAT_EINVAL, 0, "line 1"},
        {"public-key = \"abc\"\n", CHAT_EINVAL, 0, "line 1"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_curve_keys k = {0};
        char err[256] = "";
        int rc = chat_curve_keys_parse(cases[i].text, &k, err, sizeof err);
        if (rc != cases[i].rc || k.n != cases[i].n) fail_msg("case %zu: rc %d, %zu keys (%s)", i, rc, k.n, err);
        if (cases[i].err && !strstr(err, cases[i].err)) fail_msg("case %zu: message '%s'", i, err);
        if (k.n) assert_true(chat_curve_keys_has(&k, a.public_key));
        assert_false(chat_curve_keys_has(&k, bad_char));
        chat_curve_keys_clear(&k);
    }
}

static void test_keys_read_permissions(void **state)
{
    (void)state;
    chat_curve_keypair a;
    new_pair(&a, NULL);
    char text[64];
    snprintf(text, sizeof text, "%s\n", a.public_key);
    static const struct {
        mode_t mode;
        int rc;
    } cases[] = {{0644, 0}, {0600, 0}, {0444, 0}, {0664, CHAT_EFORBIDDEN}, {0646, CHAT_EFORBIDDEN}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        write_text(at("allowed"), text, cases[i].mode);
        chat_curve_keys k = {0};
        char err[256] = "";
        int rc = chat_curve_keys_read(at("allowed"), &k, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("mode %03o: rc %d (%s)", (unsigned)cases[i].mode, rc, err);
        assert_int_equal(k.n, rc ? 0 : 1);
        chat_curve_keys_clear(&k);
    }
    chat_curve_keys k = {0};
    char err[256];
    assert_int_equal(chat_curve_keys_read(at("missing"), &k, err, sizeof err), CHAT_ENOTFOUND);
    write_text(at("allowed"), "not a key\n", 0644);
    assert_int_equal(chat_curve_keys_read(at("allowed"), &k, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "allowed: line 1"));
}

static void test_secret_round_trip(void **state)
{
    (void)state;
    chat_curve_keypair kp, back;
    char err[256];
    assert_int_equal(chat_curve_keypair_new(&kp, err, sizeof err), 0);
    assert_true(chat_curve_key_valid(kp.public_key) && chat_curve_key_valid(kp.secret_key));
    unlink(at("s.key"));
    mode_t old = umask(0); /* the file is 0600 whatever the umask */
    assert_int_equal(chat_curve_secret_write(at("s.key"), &kp, false, err, sizeof err), 0);
    umask(old);
    struct stat st;
    assert_int_equal(stat(at("s.key"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(chat_curve_secret_read(at("s.key"), &back, err, sizeof err), 0);
    assert_string_equal(back.public_key, kp.public_key);
    assert_string_equal(back.secret_key, kp.secret_key);
    /* An existing file is kept unless replace; a replaced file is 0600 again. */
    assert_int_equal(chat_curve_secret_write(at("s.key"), &kp, false, err, sizeof err), CHAT_ECONFLICT);
    assert_int_equal(chmod(at("s.key"), 0644), 0);
    assert_int_equal(chat_curve_secret_write(at("s.key"), &kp, true, err, sizeof err), 0);
    assert_int_equal(stat(at("s.key"), &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    /* Links are not followed when writing. */
    char target[128];
    snprintf(target, sizeof target, "%s", at("s.key"));
    unlink(at("link.key"));
    assert_int_equal(symlink(target, at("link.key")), 0);
    assert_int_not_equal(chat_curve_secret_write(at("link.key"), &kp, true, err, sizeof err), 0);
}

static void test_secret_permissions(void **state)
{
    (void)state;
    chat_curve_keypair kp, back;
    new_pair(&kp, "p.key");
    static const struct {
        mode_t mode;
        int rc;
    } cases[] = {
        {0600, 0},
        {0400, 0},
        {0700, 0},
        {0640, CHAT_EFORBIDDEN},
        {0604, CHAT_EFORBIDDEN},
        {0644, CHAT_EFORBIDDEN},
        {0620, CHAT_EFORBIDDEN},
        {0601, CHAT_EFORBIDDEN},
    };
    char err[256];
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        assert_int_equal(chmod(at("p.key"), cases[i].mode), 0);
        int rc = chat_curve_secret_read(at("p.key"), &back, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("mode %03o: rc %d", (unsigned)cases[i].mode, rc);
        if (rc) {
            assert_non_null(strstr(err, "chmod 600"));
            assert_null(strstr(err, kp.secret_key));
            assert_int_equal(back.secret_key[0], '\0'); /* nothing left behind */
        }
    }
    assert_int_equal(chat_curve_secret_read(at("nope.key"), &back, err, sizeof err), CHAT_ENOTFOUND);
    assert_int_equal(chat_curve_secret_read(dir, &back, err, sizeof err), CHAT_EFORBIDDEN); /* a directory */
}

static void test_secret_malformed(void **state)
{
    (void)state;
    chat_curve_keypair a, b, back;
    new_pair(&a, NULL);
    new_pair(&b, NULL);
    char t[8][512];
    const struct {
        const char *text;
        int rc;
    } cases[] = {
        /* czmq's layout, public key given or not; unquoted values. */
        {(snprintf(t[0], 512, "#  cert\nmetadata\ncurve\n    public-key = \"%s\"\n    secret-key = \"%s\"\n",
                   a.public_key, a.secret_key),
          t[0]),
         0},
        {(snprintf(t[1], 512, "secret-key = %s\n", a.secret_key), t[1]), 0},
        /* not a pair */
        {(snprintf(t[2], 512, "public-key = \"%s\"\nsecret-key = \"%s\"\n", b.public_key, a.secret_key), t[2]),
         CHAT_EINVAL},
        {(snprintf(t[3], 512, "public-key = \"%s\"\n", a.public_key), t[3]), CHAT_EINVAL}, /* no secret */
        {(snprintf(t[4], 512, "secret-key = \"%.39s\"\n", a.secret_key), t[4]), CHAT_EINVAL},
        {(snprintf(t[5], 512, "secret-key \"%s\"\n", a.secret_key), t[5]), CHAT_EINVAL}, /* no '=' */
        {(snprintf(t[6], 512, "secret-key = \"%s\" trailing\n", a.secret_key), t[6]), CHAT_EINVAL},
        {"", CHAT_EINVAL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        write_text(at("m.key"), cases[i].text, 0600);
        char err[256] = "";
        int rc = chat_curve_secret_read(at("m.key"), &back, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("case %zu: rc %d (%s)", i, rc, err);
        if (!rc) assert_string_equal(back.public_key, a.public_key);
        assert_null(strstr(err, a.secret_key));
    }
}

/* ---------------------------------------------------------------- a worker's streamer key */

static void test_client_server_key_choice(void **state)
{
    (void)state;
    chat_curve_keypair w, s1, s2;
    new_pair(&w, "w.key");
    new_pair(&s1, NULL);
    new_pair(&s2, NULL);
    char one[64], two[128], list[128], three[256];
    snprintf(one, sizeof one, "%s\n", s1.public_key);
    snprintf(two, sizeof two, "%s\n%s\n", s1.public_key, s2.public_key);
    snprintf(list, sizeof list, "%s,%s", s1.public_key, s2.public_key); /* a key per streamer host */
    snprintf(three, sizeof three, "%s,%s,%s", s1.public_key, s2.public_key, s1.public_key);
    const struct {
        const char *allowed; /* file text, NULL = no file */
        const char *server_key;
        size_t index; /* the endpoint's place in CHAT_ZMQ_ENDPOINT */
        int rc;
        const char *chosen; /* the key the DEALER gets */
        const char *err;
    } cases[] = {
        {NULL, s1.public_key, 0, 0, s1.public_key, NULL},
        {NULL, s1.public_key, 3, 0, s1.public_key, NULL}, /* one key serves every endpoint */
        {one, NULL, 0, 0, s1.public_key, NULL},
        {one, s1.public_key, 0, 0, s1.public_key, NULL},
        {two, s2.public_key, 0, 0, s2.public_key, NULL},
        {two, list, 0, 0, s1.public_key, NULL},
        {two, list, 1, 0, s2.public_key, NULL},
        {NULL, list, 1, 0, s2.public_key, NULL},
        {two, list, 2, CHAT_EINVAL, NULL, "none for endpoint 3"},
        {one, list, 1, CHAT_EINVAL, NULL, "not one of the keys"},
        {two, NULL, 0, CHAT_EINVAL, NULL, "lists 2 streamer keys"},
        {one, s2.public_key, 0, CHAT_EINVAL, NULL, "not one of the keys"},
        {"", NULL, 0, CHAT_EINVAL, NULL, "no streamer key"},
        {NULL, NULL, 0, CHAT_EINVAL, NULL, "no streamer key"},
        {NULL, three, 2, 0, s1.public_key, NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_curve_settings s = {0};
        snprintf(s.secret_file, sizeof s.secret_file, "%s", at("w.key"));
        if (cases[i].allowed) {
            write_text(at("streamers"), cases[i].allowed, 0644);
            snprintf(s.allowed_file, sizeof s.allowed_file, "%s", at("streamers"));
        }
        assert_int_equal(chat_curve_settings_server_keys(&s, cases[i].server_key, NULL, 0), 0);
        char err[512] = "";
        void *ctx = zmq_ctx_new(), *d = zmq_socket(ctx, ZMQ_DEALER);
        int rc = chat_curve_client_setup(&s, d, "tcp://10.0.0.1:5555", cases[i].index, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("case %zu: rc %d (%s)", i, rc, err);
        if (cases[i].err && !strstr(err, cases[i].err)) fail_msg("case %zu: message '%s'", i, err);
        if (cases[i].chosen) {
            char got[CHAT_CURVE_KEY_LEN + 1] = "";
            size_t len = sizeof got;
            assert_int_equal(zmq_getsockopt(d, ZMQ_CURVE_SERVERKEY, got, &len), 0);
            if (strcmp(got, cases[i].chosen)) fail_msg("case %zu: the DEALER got another streamer key", i);
        }
        zmq_close(d);
        zmq_ctx_term(ctx);
    }
}

/* CHAT_CURVE_SERVER_KEY's list: keys separated by commas, each checked. */
static void test_server_key_list(void **state)
{
    (void)state;
    chat_curve_keypair a, b;
    new_pair(&a, NULL);
    new_pair(&b, NULL);
    char ok[128], spaced[128], trailing[128], cut[128], many[64 * 41];
    snprintf(ok, sizeof ok, "%s,%s", a.public_key, b.public_key);
    snprintf(spaced, sizeof spaced, "%s, %s", a.public_key, b.public_key);
    snprintf(trailing, sizeof trailing, "%s,", a.public_key);
    snprintf(cut, sizeof cut, "%s,%.39s", a.public_key, b.public_key);
    many[0] = '\0';
    for (int i = 0; i <= CHAT_CURVE_MAX_SERVER_KEYS; i++) {
        strcat(many, i ? "," : "");
        strcat(many, a.public_key);
    }
    const struct {
        const char *value;
        int rc;
        size_t n;
    } cases[] = {
        {NULL, 0, 0}, {"", 0, 0}, {ok, 0, 2}, {a.public_key, 0, 1}, {spaced, CHAT_EINVAL, 0},
        {cut, CHAT_EINVAL, 0}, {many, CHAT_EINVAL, 0}, {trailing, 0, 1},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_curve_settings s = {0};
        char err[256] = "";
        int rc = chat_curve_settings_server_keys(&s, cases[i].value, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("case %zu: rc %d (%s)", i, rc, err);
        if (!rc) assert_int_equal(s.n_server_keys, cases[i].n);
        if (rc) assert_non_null(strstr(err, "CHAT_CURVE_SERVER_KEY"));
    }
}

/* ---------------------------------------------------------------- the ZAP handler */

/* One ZAP request on req; the reply's status code ("" when none came within 2 s). */
static const char *zap_ask(void *req, const char *version, const char *mechanism, const void *cred, size_t credlen)
{
    static char code[64];
    zmq_send(req, version, strlen(version), ZMQ_SNDMORE);
    zmq_send(req, "7", 1, ZMQ_SNDMORE);
    zmq_send(req, "chat", 4, ZMQ_SNDMORE);
    zmq_send(req, "192.0.2.9", 9, ZMQ_SNDMORE);
    zmq_send(req, "", 0, ZMQ_SNDMORE);
    zmq_send(req, mechanism, strlen(mechanism), cred ? ZMQ_SNDMORE : 0);
    if (cred) zmq_send(req, cred, credlen, 0);
    char frames[6][64];
    int n = 0, more = 1;
    while (more && n < 6) {
        int got = zmq_recv(req, frames[n], sizeof frames[n] - 1, 0);
        if (got < 0) return "";
        frames[n][got < 63 ? got : 63] = '\0';
        size_t sz = sizeof more;
        zmq_getsockopt(req, ZMQ_RCVMORE, &more, &sz);
        n++;
    }
    assert_int_equal(n, 6);
    assert_string_equal(frames[0], "1.0");
    assert_string_equal(frames[1], "7"); /* the request id is echoed */
    snprintf(code, sizeof code, "%s", frames[2]);
    return code;
}

static void test_zap_handler(void **state)
{
    (void)state;
    chat_curve_keypair ok, other;
    new_pair(&ok, NULL);
    new_pair(&other, NULL);
    uint8_t ok_raw[32], other_raw[32];
    assert_non_null(zmq_z85_decode(ok_raw, ok.public_key));
    assert_non_null(zmq_z85_decode(other_raw, other.public_key));
    chat_curve_keys allowed = {0};
    char text[64], err[256];
    snprintf(text, sizeof text, "%s\n", ok.public_key);
    assert_int_equal(chat_curve_keys_parse(text, &allowed, err, sizeof err), 0);

    void *ctx = zmq_ctx_new();
    chat_curve_zap *zap = chat_curve_zap_start(ctx, &allowed, NULL, err, sizeof err);
    chat_curve_keys_clear(&allowed); /* the handler keeps a copy */
    assert_non_null(zap);
    assert_null(chat_curve_zap_start(ctx, &allowed, NULL, err, sizeof err)); /* one handler per context */
    void *req = zmq_socket(ctx, ZMQ_REQ);
    int timeout = 2000, zero = 0;
    zmq_setsockopt(req, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(req, ZMQ_LINGER, &zero, sizeof zero);
    assert_int_equal(zmq_connect(req, "inproc://zeromq.zap.01"), 0);
    const struct {
        const char *what, *version, *mechanism;
        const void *cred;
        size_t credlen;
        const char *code;
    } cases[] = {
        {"allowed", "1.0", "CURVE", ok_raw, 32, "200"},
        {"not listed", "1.0", "CURVE", other_raw, 32, "400"},
        {"wrong mechanism", "1.0", "PLAIN", ok_raw, 32, "400"},
        {"no mechanism", "1.0", "NULL", NULL, 0, "400"},
        {"a truncated key", "1.0", "CURVE", ok_raw, 31, "400"},
        {"another ZAP version", "2.0", "CURVE", ok_raw, 32, "400"},
        {"still answering", "1.0", "CURVE", ok_raw, 32, "200"},
    };
    unsigned long long refusals = 0;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        const char *code = zap_ask(req, cases[i].version, cases[i].mechanism, cases[i].cred, cases[i].credlen);
        if (strcmp(code, cases[i].code)) fail_msg("%s: status '%s'", cases[i].what, code);
        refusals += !strcmp(cases[i].code, "400");
        chat_curve_stats st;
        chat_curve_zap_stats(zap, &st);
        assert_int_equal(st.refused, refusals);
    }
    zmq_close(req);
    zmq_ctx_term(ctx); /* ends the handler's thread */
    chat_curve_zap_free(zap);
    chat_curve_stats st;
    chat_curve_zap_stats(NULL, &st);
    assert_int_equal(st.refused + st.handshakes_failed, 0);
}

/* ---------------------------------------------------------------- real handshakes */

typedef struct server {
    void *ctx, *router;
    chat_curve_zap *zap;
    char endpoint[64];
} server;

static void server_start(server *sv, const chat_curve_settings *s)
{
    char err[512];
    sv->ctx = zmq_ctx_new();
    sv->router = zmq_socket(sv->ctx, ZMQ_ROUTER);
    int zero = 0, timeout = 100;
    zmq_setsockopt(sv->router, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(sv->router, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    if (chat_curve_server_setup(s, sv->ctx, sv->router, "tcp://127.0.0.1:*", &sv->zap, err, sizeof err))
        fail_msg("server set-up: %s", err);
    assert_non_null(sv->zap);
    assert_int_equal(zmq_bind(sv->router, "tcp://127.0.0.1:*"), 0);
    size_t len = sizeof sv->endpoint;
    zmq_getsockopt(sv->router, ZMQ_LAST_ENDPOINT, sv->endpoint, &len);
}

static void server_stop(server *sv)
{
    zmq_close(sv->router);
    zmq_ctx_term(sv->ctx);
    chat_curve_zap_free(sv->zap);
}

/* A DEALER set up by chat_curve_client_setup (s NULL: plain) sends "hello"; true when the server got it
 * within about 1.5 s. */
static bool client_gets_through(server *sv, const chat_curve_settings *s)
{
    void *ctx = zmq_ctx_new(), *d = zmq_socket(ctx, ZMQ_DEALER);
    int zero = 0;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    char err[512];
    if (s && chat_curve_client_setup(s, d, sv->endpoint, 0, err, sizeof err)) fail_msg("client set-up: %s", err);
    assert_int_equal(zmq_connect(d, sv->endpoint), 0);
    zmq_send(d, "hello", 5, ZMQ_DONTWAIT);
    bool got = false;
    for (int i = 0; i < 15 && !got; i++) {
        char id[256], body[16];
        if (zmq_recv(sv->router, id, sizeof id, 0) < 0) continue;
        int n = zmq_recv(sv->router, body, sizeof body, 0);
        got = n == 5 && !memcmp(body, "hello", 5);
    }
    zmq_close(d);
    zmq_ctx_term(ctx);
    return got;
}

static void test_handshakes(void **state)
{
    (void)state;
    chat_curve_keypair streamer, worker, stranger, other_streamer;
    new_pair(&streamer, "streamer.key");
    new_pair(&worker, "worker.key");
    new_pair(&stranger, "stranger.key");
    new_pair(&other_streamer, NULL);
    char text[64];
    snprintf(text, sizeof text, "%s\n", worker.public_key);
    write_text(at("workers"), text, 0644);
    chat_curve_settings ss = {0};
    snprintf(ss.secret_file, sizeof ss.secret_file, "%s", at("streamer.key"));
    snprintf(ss.allowed_file, sizeof ss.allowed_file, "%s", at("workers"));
    server sv;
    server_start(&sv, &ss);

    const struct {
        const char *secret; /* NULL: a plain client */
        const char *server_key;
        bool through;
        unsigned long long refused, failed; /* the counters afterwards */
    } cases[] = {
        {"worker.key", streamer.public_key, true, 0, 0},        {"stranger.key", streamer.public_key, false, 1, 0},
        {"worker.key", other_streamer.public_key, false, 1, 1}, {NULL, NULL, false, 1, 2},
        {"worker.key", streamer.public_key, true, 1, 2},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_curve_settings cs = {0};
        if (cases[i].secret) {
            snprintf(cs.secret_file, sizeof cs.secret_file, "%s", at(cases[i].secret));
            assert_int_equal(chat_curve_settings_server_keys(&cs, cases[i].server_key, NULL, 0), 0);
        }
        bool through = client_gets_through(&sv, cases[i].secret ? &cs : NULL);
        if (through != cases[i].through) fail_msg("case %zu: got through: %d", i, through);
        chat_curve_stats st;
        chat_curve_zap_stats(sv.zap, &st);
        /* A refused client may retry its handshake before it is closed: at least once each. */
        if (st.refused < cases[i].refused || st.handshakes_failed < cases[i].failed ||
            (cases[i].refused == 0 && st.refused) || (cases[i].failed == 0 && st.handshakes_failed))
            fail_msg("case %zu: refused %llu, failed %llu", i, st.refused, st.handshakes_failed);
    }
    server_stop(&sv);
}

static void test_server_setup_refusals(void **state)
{
    (void)state;
    chat_curve_keypair streamer;
    new_pair(&streamer, "streamer.key");
    write_text(at("empty"), "# nobody yet\n", 0644);
    void *ctx = zmq_ctx_new(), *r = zmq_socket(ctx, ZMQ_ROUTER);
    chat_curve_zap *zap = (chat_curve_zap *)1;
    char err[512];
    chat_curve_settings s = {0};
    /* A network endpoint without keys: refused, unless insecure (then no handler). */
    assert_int_equal(chat_curve_server_setup(&s, ctx, r, "tcp://0.0.0.0:5555", &zap, err, sizeof err), CHAT_EINVAL);
    assert_null(zap);
    s.insecure = true;
    assert_int_equal(chat_curve_server_setup(&s, ctx, r, "tcp://0.0.0.0:5555", &zap, err, sizeof err), 0);
    assert_null(zap);
    /* An allowed file that lists nobody, a secret file others may read. */
    snprintf(s.secret_file, sizeof s.secret_file, "%s", at("streamer.key"));
    snprintf(s.allowed_file, sizeof s.allowed_file, "%s", at("empty"));
    assert_int_equal(chat_curve_server_setup(&s, ctx, r, "tcp://0.0.0.0:5555", &zap, err, sizeof err), CHAT_EINVAL);
    assert_non_null(strstr(err, "lists no key"));
    assert_int_equal(chmod(at("streamer.key"), 0644), 0);
    assert_int_equal(chat_curve_server_setup(&s, ctx, r, "tcp://0.0.0.0:5555", &zap, err, sizeof err), CHAT_EFORBIDDEN);
    assert_null(zap);
    zmq_close(r);
    zmq_ctx_term(ctx); /* returns: no handler was left running */
}

TESTUTIL_MAIN(setup, teardown,
              cmocka_unit_test(test_mode_table),
              cmocka_unit_test(test_settings_from_env),
              cmocka_unit_test(test_keys_parse_table),
              cmocka_unit_test(test_keys_read_permissions),
              cmocka_unit_test(test_secret_round_trip),
              cmocka_unit_test(test_secret_permissions),
              cmocka_unit_test(test_secret_malformed),
              cmocka_unit_test(test_client_server_key_choice),
              cmocka_unit_test(test_server_key_list),
              cmocka_unit_test(test_zap_handler),
              cmocka_unit_test(test_handshakes),
              cmocka_unit_test(test_server_setup_refusals))
