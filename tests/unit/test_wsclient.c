/* Tests of the WebSocket client (tools/wsclient.c) against a tiny, independent RFC 6455 server that runs
 * in a thread of this test: it accepts one connection, answers the handshake as the case asks (or
 * refuses it, or answers it wrongly), then runs a script (echo, fragments with interleaved pings, close,
 * protocol violations...) and records every client frame it read, unmasked, for the checks.
 *
 * The unit-test rule of the Makefile links libchat and libtestutil only, not the tools objects, so the client is
 * compiled into this test by including its source (which also lets parse_url be tested directly).
 * The chat-ws tests run build/bin/chat-ws against the same server playing the streamer. */
#include <arpa/inet.h>
#include <errno.h>
#include <json-c/json.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "chat_common.h"
#include "chat_util.h"
#include "testutil.h"
#include "wsclient.c"

/* ---------------------------------------------------------------- the test server */

#define TS_MAX_FRAMES 64
#define TS_IO_TIMEOUT_MS 5000

typedef struct ts_frame {
    int op;
    bool fin, masked;
    int len_code; /* the 7-bit length field as sent: <= 125, 126 or 127 */
    unsigned char mask[4];
    unsigned char *data; /* unmasked payload, NUL-terminated */
    size_t len;
} ts_frame;

typedef struct ts_srv ts_srv;
typedef void (*ts_fn)(ts_srv *s, int fd);

struct ts_srv {
    int lfd, port;
    bool v6;
    pthread_t th;
    /* handshake: resp_fmt NULL = a correct 101; otherwise a printf format (one %s = the right accept)
     * holding the status line and headers without the closing empty line */
    const char *resp_fmt;
    size_t pad;                /* adds an X-Pad header of this many bytes */
    bool silent;               /* never answer the handshake */
    const void *extra;         /* bytes sent in the same write as the response headers */
    size_t extra_len;
    ts_fn fn;                  /* the script after the handshake */
    const void *arg;
    size_t arg_len;
    /* observations, read by the test after ts_join */
    char request[8192];
    char peer[INET6_ADDRSTRLEN];
    ts_frame frames[TS_MAX_FRAMES];
    int nframes;
    char fail[256];
};

static void ts_failf(ts_srv *s, const char *fmt, ...)
{
    if (s->fail[0]) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->fail, sizeof s->fail, fmt, ap);
    va_end(ap);
}

static int ts_read_exact(int fd, void *buf, size_t n)
{
    unsigned char *p = buf;
    while (n) {
        ssize_t r = read(fd, p, n);
        if (r > 0) {
            p += r, n -= (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR) continue;
        return -1; /* EOF, error or SO_RCVTIMEO */
    }
    return 0;
}

static int ts_write(int fd, const void *buf, size_t n)
{
    const unsigned char *p = buf;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w > 0) {
            p += w, n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR) continue;
        return -1;
    }
    return 0;
}

/* Unmasked server frame, minimal length encoding. */
static int ts_send_frame(int fd, int op, bool fin, const void *data, size_t len)
{
    unsigned char h[10];
    size_t hl = 0;
    h[hl++] = (unsigned char)((fin ? 0x80 : 0) | op);
    if (len < 126) {
        h[hl++] = (unsigned char)len;
    } else if (len < 65536) {
        h[hl++] = 126, h[hl++] = (unsigned char)(len >> 8), h[hl++] = (unsigned char)len;
    } else {
        h[hl++] = 127;
        for (int i = 7; i >= 0; i--) h[hl++] = (unsigned char)((uint64_t)len >> (8 * i));
    }
    if (ts_write(fd, h, hl)) return -1;
    return len ? ts_write(fd, data, len) : 0;
}

static int ts_send_text(int fd, const char *s) { return ts_send_frame(fd, CHAT_WS_TEXT, true, s, strlen(s)); }

static void ts_send_close(int fd, int code, const char *reason)
{
    unsigned char p[125] = {(unsigned char)(code >> 8), (unsigned char)code};
    size_t rl = reason ? strlen(reason) : 0;
    memcpy(p + 2, reason ? reason : "", rl);
    ts_send_frame(fd, CHAT_WS_CLOSE, true, p, code ? 2 + rl : 0);
}

/* Reads one client frame, checks the mask bit, unmasks, records it. NULL on EOF/timeout/overflow. */
static ts_frame *ts_read_frame(ts_srv *s, int fd)
{
    unsigned char h[14];
    if (ts_read_exact(fd, h, 2)) return NULL;
    if (s->nframes == TS_MAX_FRAMES) {
        ts_failf(s, "too many frames");
        return NULL;
    }
    ts_frame *f = &s->frames[s->nframes];
    memset(f, 0, sizeof *f);
    f->op = h[0] & 0x0f, f->fin = h[0] & 0x80, f->masked = h[1] & 0x80, f->len_code = h[1] & 0x7f;
    uint64_t len = (uint64_t)f->len_code;
    if (f->len_code == 126) {
        if (ts_read_exact(fd, h, 2)) return NULL;
        len = ((uint64_t)h[0] << 8) | h[1];
    } else if (f->len_code == 127) {
        if (ts_read_exact(fd, h, 8)) return NULL;
        len = 0;
        for (int i = 0; i < 8; i++) len = (len << 8) | h[i];
    }
    if (len > 64u * 1024 * 1024) {
        ts_failf(s, "client frame of %llu bytes", (unsigned long long)len);
        return NULL;
    }
    if (f->masked && ts_read_exact(fd, f->mask, 4)) return NULL;
    f->data = malloc((size_t)len + 1);
    if (!f->data || (len && ts_read_exact(fd, f->data, (size_t)len))) {
        free(f->data);
        f->data = NULL;
        return NULL;
    }
    for (size_t i = 0; f->masked && i < len; i++) f->data[i] ^= f->mask[i & 3];
    f->data[len] = '\0';
    f->len = (size_t)len;
    s->nframes++;
    return f;
}

static void ts_b64(const unsigned char *in, size_t n, char *out)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < n ? (unsigned)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[(v >> 18) & 63];
        out[o++] = t[(v >> 12) & 63];
        out[o++] = i + 1 < n ? t[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = '\0';
}

/* Decoded length of a base64 text, or -1 when it is not base64. */
static int ts_b64_decoded_len(const char *s, size_t n)
{
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    if (n == 0 || n % 4) return -1;
    size_t pad = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=' && i >= n - 2) {
            pad++;
        } else if (pad || !strchr(t, s[i])) {
            return -1;
        }
    }
    return (int)(n / 4 * 3 - pad);
}

/* The server's own Sec-WebSocket-Accept computation (SHA-1 from libcrypto, base64 above). */
static void ts_accept(const char *key, char out[29])
{
    char in[128];
    int n = snprintf(in, sizeof in, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int ml = 0;
    EVP_Digest(in, (size_t)n, md, &ml, EVP_sha1(), NULL);
    ts_b64(md, ml, out);
}

/* Header value from the recorded request, copied into out ("" when absent). */
static const char *ts_req_header(const ts_srv *s, const char *name, char *out, size_t outlen)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (const char *l = strstr(s->request, "\r\n"); l && l[2]; l = strstr(l + 2, "\r\n")) {
        const char *line = l + 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ') v++;
            size_t vl = strcspn(v, "\r");
            if (vl >= outlen) vl = outlen - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return out;
        }
    }
    return out;
}

static void *ts_main(void *arg)
{
    ts_srv *s = arg;
    struct pollfd pf = {.fd = s->lfd, .events = POLLIN};
    if (poll(&pf, 1, 10000) <= 0) {
        ts_failf(s, "no client connected");
        return NULL;
    }
    struct sockaddr_storage peer;
    socklen_t pl = sizeof peer;
    int fd = accept(s->lfd, (struct sockaddr *)&peer, &pl);
    if (fd < 0) {
        ts_failf(s, "accept: %s", strerror(errno));
        return NULL;
    }
    if (peer.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&peer)->sin_addr, s->peer, sizeof s->peer);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&peer)->sin6_addr, s->peer, sizeof s->peer);
    struct timeval tv = {.tv_sec = TS_IO_TIMEOUT_MS / 1000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

    size_t got = 0;
    while (!strstr(s->request, "\r\n\r\n")) {
        if (got + 1 >= sizeof s->request) {
            ts_failf(s, "request too long");
            goto out;
        }
        ssize_t r = read(fd, s->request + got, 1); /* byte by byte: nothing past the headers is consumed */
        if (r <= 0) {
            ts_failf(s, "request incomplete");
            goto out;
        }
        got++;
    }
    if (s->silent) { /* until the client gives up */
        char b;
        while (read(fd, &b, 1) > 0) {}
        goto out;
    }
    char key[128], acc[29];
    ts_req_header(s, "Sec-WebSocket-Key", key, sizeof key);
    ts_accept(key, acc);
    chat_buf resp;
    chat_buf_init(&resp);
    if (s->resp_fmt)
        chat_buf_printf(&resp, s->resp_fmt, acc);
    else
        chat_buf_printf(&resp,
                        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Accept: %s\r\n",
                        acc);
    if (s->pad) {
        chat_buf_puts(&resp, "X-Pad: ");
        for (size_t i = 0; i < s->pad; i++) chat_buf_append(&resp, "p", 1);
        chat_buf_puts(&resp, "\r\n");
    }
    chat_buf_puts(&resp, "\r\n");
    if (s->extra_len) chat_buf_append(&resp, s->extra, s->extra_len);
    ts_write(fd, resp.data, resp.len);
    chat_buf_free(&resp);
    if (s->fn) s->fn(s, fd);
out:
    close(fd);
    return NULL;
}

static void ts_start(ts_srv *s)
{
    s->lfd = socket(s->v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    assert_true(s->lfd >= 0);
    int one = 1;
    setsockopt(s->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_storage a;
    memset(&a, 0, sizeof a);
    socklen_t al;
    if (s->v6) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&a;
        a6->sin6_family = AF_INET6;
        a6->sin6_addr = in6addr_loopback;
        al = sizeof *a6;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&a;
        a4->sin_family = AF_INET;
        a4->sin_addr.s_addr = htonl(INADDR_ANY); /* INADDR_ANY: the source-address case connects from .2 */
        al = sizeof *a4;
    }
    assert_int_equal(bind(s->lfd, (struct sockaddr *)&a, al), 0);
    assert_int_equal(listen(s->lfd, 4), 0);
    al = sizeof a;
    getsockname(s->lfd, (struct sockaddr *)&a, &al);
    s->port = ntohs(s->v6 ? ((struct sockaddr_in6 *)&a)->sin6_port : ((struct sockaddr_in *)&a)->sin_port);
    assert_int_equal(pthread_create(&s->th, NULL, ts_main, s), 0);
}

/* Joins the thread and checks the server saw nothing wrong. Frames stay readable until ts_free. */
static void ts_join(ts_srv *s)
{
    pthread_join(s->th, NULL);
    close(s->lfd);
    if (s->fail[0]) fail_msg("test server: %s", s->fail);
}

static void ts_free(ts_srv *s)
{
    for (int i = 0; i < s->nframes; i++) free(s->frames[i].data);
    s->nframes = 0;
}

static const char *ts_url(const ts_srv *s, const char *path, char *buf, size_t n)
{
    snprintf(buf, n, "ws://%s:%d%s", s->v6 ? "[::1]" : "127.0.0.1", s->port, path);
    return buf;
}

static chat_wsc *ts_connect(const ts_srv *s, const chat_wsc_opts *o)
{
    char url[128], err[256] = "";
    int st = -1;
    chat_wsc *c = chat_wsc_connect(ts_url(s, "/ws/chat", url, sizeof url), o, &st, err, sizeof err);
    if (!c) fail_msg("connect: %s", err);
    assert_int_equal(st, 101);
    return c;
}

/* The test's session with s: the script started and a client connected (ts_open); then the client
 * closed normally, the script ended and s freed (ts_done). */
static chat_wsc *ts_open(ts_srv *s)
{
    ts_start(s);
    return ts_connect(s, NULL);
}

static void ts_done(ts_srv *s, chat_wsc *c)
{
    chat_wsc_close(c, 1000, NULL);
    ts_join(s);
    ts_free(s);
}

/* Starts s, connects, and expects the first recv (waiting at most ms) to fail the connection with close
 * code `code` (what: the case, in messages); then closes the client and waits for the server script to
 * end. reason (may be NULL) gets the close reason. The caller checks what the server got and frees s. */
static void expect_client_fails(ts_srv *s, const char *what, int ms, int code, char *reason, size_t cap)
{
    chat_wsc *c = ts_open(s);
    int rc = chat_wsc_recv(c, ms, NULL, NULL);
    if (rc != CHAT_ERR) fail_msg("%s: recv %d", what, rc);
    if (chat_wsc_close_code(c) != code) fail_msg("%s: close code %d, want %d", what, chat_wsc_close_code(c), code);
    if (reason) snprintf(reason, cap, "%s", chat_wsc_close_reason(c));
    chat_wsc_close(c, 1000, NULL);
    ts_join(s);
}

/* ---- server scripts ---- */

/* Reads client frames until a close (answered with the same payload), EOF or timeout. */
static void fn_wait_close(ts_srv *s, int fd)
{
    ts_frame *f;
    while ((f = ts_read_frame(s, fd)))
        if (f->op == CHAT_WS_CLOSE) {
            ts_send_frame(fd, CHAT_WS_CLOSE, true, f->data, f->len);
            return;
        }
}

/* Echoes data frames as single frames of the same opcode; pings get pongs; a close ends it. */
static void fn_echo(ts_srv *s, int fd)
{
    ts_frame *f;
    while ((f = ts_read_frame(s, fd))) {
        if (f->op == CHAT_WS_CLOSE) {
            ts_send_frame(fd, CHAT_WS_CLOSE, true, f->data, f->len);
            return;
        }
        ts_send_frame(fd, f->op == CHAT_WS_PING ? CHAT_WS_PONG : f->op, true, f->data, f->len);
    }
}

/* Sends arg verbatim, then waits for the client's close. */
static void fn_send_then_wait(ts_srv *s, int fd)
{
    ts_write(fd, s->arg, s->arg_len);
    fn_wait_close(s, fd);
}

/* Sends arg verbatim, then drops the TCP connection. */
static void fn_send_then_drop(ts_srv *s, int fd) { ts_write(fd, s->arg, s->arg_len); }

/* ---------------------------------------------------------------- tests */

static void pattern(unsigned char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) p[i] = (unsigned char)(0x20 + (i * 31 + seed) % 95); /* printable ASCII */
}

static int close_code_of(const ts_frame *f) { return f->len >= 2 ? (f->data[0] << 8) | f->data[1] : 0; }

/* The fixture's accept computation against RFC 6455 section 1.3's example. */
static void test_server_accept_matches_rfc(void **state)
{
    char out[29];
    ts_accept("dGhlIHNhbXBsZSBub25jZQ==", out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    /* and the client's own */
    char mine[29];
    assert_int_equal(chat_wsf_accept("dGhlIHNhbXBsZSBub25jZQ==", 24, mine), 0);
    assert_string_equal(mine, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}

static void test_url_parse(void **state)
{
    static const struct {
        const char *url, *host, *port, *hostport, *resource;
    } ok[] = {
        {"ws://localhost", "localhost", "80", "localhost", "/"},
        {"ws://127.0.0.1:8000/ws/chat", "127.0.0.1", "8000", "127.0.0.1:8000", "/ws/chat"},
        {"WS://h:8000?token=a.b.c", "h", "8000", "h:8000", "/?token=a.b.c"},
        {"ws://h:80/p?q=1&r=2", "h", "80", "h", "/p?q=1&r=2"},
        {"ws://[::1]:9/x", "::1", "9", "[::1]:9", "/x"},
        {"ws://[::1]", "::1", "80", "[::1]", "/"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(ok); i++) {
        wsc_url u;
        char err[128] = "";
        int rc = parse_url(ok[i].url, &u, err, sizeof err);
        if (rc) fail_msg("%s: %s", ok[i].url, err);
        assert_string_equal(u.host, ok[i].host);
        assert_string_equal(u.port, ok[i].port);
        assert_string_equal(u.hostport, ok[i].hostport);
        assert_string_equal(u.resource, ok[i].resource);
        assert_null(u.unix_path);
    }
    static const struct {
        const char *url, *path, *resource;
    } unix_ok[] = {
        {"ws+unix:/run/s.sock:/ws/chat", "/run/s.sock", "/ws/chat"},
        {"WS+UNIX:/run/s.sock", "/run/s.sock", "/"},
        {"ws+unix:rel.sock:/ws/chat?token=a.b", "rel.sock", "/ws/chat?token=a.b"},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(unix_ok); i++) {
        wsc_url u;
        char err[128] = "";
        if (parse_url(unix_ok[i].url, &u, err, sizeof err)) fail_msg("%s: %s", unix_ok[i].url, err);
        assert_non_null(u.unix_path);
        assert_string_equal(u.unix_path, unix_ok[i].path);
        assert_string_equal(u.resource, unix_ok[i].resource);
        assert_string_equal(u.hostport, "localhost");
    }
}

static void test_url_errors(void **state)
{
    static const char *bad[] = {
        "",          "http://127.0.0.1/", "wss://127.0.0.1/", "ws://",          "ws://:80/",        "ws://h:0/",
        "ws://h:65536/", "ws://h:8x/",    "ws://h:/",         "ws://[::1/",     "ws://[::1]x/",     "ws://a b/",
        "ws://u@h/", "ws://h/#frag",      "ws://h/\r\nX: 1",  "127.0.0.1:80",
        "ws+unix:",  "ws+unix::/ws/chat", "ws+unix:/s.sock:ws/chat",
        "ws+unix:/nonexistent-dir-of-the-test/s.sock:/ws/chat", /* parses; the connect fails */
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad); i++) {
        char err[128] = "";
        int st = -1;
        chat_wsc *c = chat_wsc_connect(bad[i], NULL, &st, err, sizeof err);
        if (c) fail_msg("accepted bad url '%s'", bad[i]);
        assert_int_equal(st, 0);
        assert_true(err[0] != '\0');
    }
    char err[128] = "";
    assert_null(chat_wsc_connect(NULL, NULL, NULL, err, sizeof err));
}

static void test_connect_refused(void **state)
{
    /* a port that was just free: bind, read the port, close */
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    assert_int_equal(bind(s, (struct sockaddr *)&a, al), 0);
    getsockname(s, (struct sockaddr *)&a, &al);
    close(s);
    char url[64], err[256] = "";
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/", ntohs(a.sin_port));
    int st = -1;
    assert_null(chat_wsc_connect(url, NULL, &st, err, sizeof err));
    assert_int_equal(st, 0);
    assert_non_null(strstr(err, "connect"));
}

static void test_handshake_request(void **state)
{
    ts_srv s = {.fn = fn_wait_close};
    ts_start(&s);
    chat_wsc_opts o = {.origin = "http://o.example", .extra_headers = "X-Test: 1\r\nX-Other: two"};
    char url[128], err[256] = "";
    int st = -1;
    snprintf(url, sizeof url, "ws://127.0.0.1:%d/ws/chat?x=1", s.port);
    chat_wsc *c = chat_wsc_connect(url, &o, &st, err, sizeof err);
    if (!c) fail_msg("connect: %s", err);
    assert_int_equal(st, 101);
    assert_int_equal(chat_wsc_close_code(c), 0);
    assert_true(chat_wsc_fd(c) >= 0);
    int64_t t0 = chat_now_ms();
    chat_wsc_close(c, 1000, "bye");
    assert_true(chat_now_ms() - t0 < 500); /* the server answered the close: no 1 s wait */
    ts_join(&s);

    assert_true(strncmp(s.request, "GET /ws/chat?x=1 HTTP/1.1\r\n", 27) == 0);
    char v[256], host[64];
    snprintf(host, sizeof host, "127.0.0.1:%d", s.port);
    assert_string_equal(ts_req_header(&s, "Host", v, sizeof v), host);
    assert_string_equal(ts_req_header(&s, "Upgrade", v, sizeof v), "websocket");
    assert_string_equal(ts_req_header(&s, "Connection", v, sizeof v), "Upgrade");
    assert_string_equal(ts_req_header(&s, "Sec-WebSocket-Version", v, sizeof v), "13");
    assert_string_equal(ts_req_header(&s, "Origin", v, sizeof v), "http://o.example");
    assert_string_equal(ts_req_header(&s, "X-Test", v, sizeof v), "1");
    assert_string_equal(ts_req_header(&s, "X-Other", v, sizeof v), "two");
    ts_req_header(&s, "Sec-WebSocket-Key", v, sizeof v);
    assert_int_equal(ts_b64_decoded_len(v, strlen(v)), 16);

    assert_int_equal(s.nframes, 1);
    assert_int_equal(s.frames[0].op, CHAT_WS_CLOSE);
    assert_true(s.frames[0].masked);
    assert_int_equal(close_code_of(&s.frames[0]), 1000);
    assert_string_equal((char *)s.frames[0].data + 2, "bye");
    ts_free(&s);
}

/* Two connections get different keys. */
static void test_handshake_keys_random(void **state)
{
    char keys[2][64];
    for (int i = 0; i < 2; i++) {
        ts_srv s = {0};
        chat_wsc *c = ts_open(&s);
        chat_wsc_close(c, 0, NULL);
        ts_join(&s);
        ts_req_header(&s, "Sec-WebSocket-Key", keys[i], sizeof keys[i]);
        assert_int_equal(strlen(keys[i]), 24);
    }
    assert_string_not_equal(keys[0], keys[1]);
}

static void test_handshake_responses(void **state)
{
    static const struct {
        const char *name, *fmt;
        size_t pad;
        bool ok;
        int status;
        const char *err;
    } cases[] = {
        {"403", "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n", 0, false, 403, "HTTP 403"},
        {"404", "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n", 0, false, 404, "HTTP 404"},
        {"400", "HTTP/1.0 400 Bad Request\r\n", 0, false, 400, "HTTP 400"},
        {"200", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n", 0, false, 200, "HTTP 200"},
        {"wrong accept",
         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n",
         0, false, 101, "Sec-WebSocket-Accept"},
        {"no accept", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n", 0, false,
         101, "Sec-WebSocket-Accept"},
        {"accept with junk",
         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: %sx\r\n",
         0, false, 101, "Sec-WebSocket-Accept"},
        {"no upgrade", "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n", 0,
         false, 101, "Upgrade"},
        {"upgrade h2c",
         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n", 0,
         false, 101, "Upgrade"},
        {"no connection", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: %s\r\n", 0,
         false, 101, "Connection"},
        {"extension",
         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Extensions: permessage-deflate\r\n",
         0, false, 101, "extension"},
        {"garbage status", "SSH-2.0-OpenSSH\r\n", 0, false, 0, "status"},
        {"headers over 16 KB", NULL, 17000, false, 101, "16384"},
        {"lower-case names, token list",
         "HTTP/1.1 101 Switching Protocols\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n"
         "sec-websocket-accept:%s\r\nServer: test\r\n",
         0, true, 101, NULL},
        {"headers near 16 KB", NULL, 15000, true, 101, NULL},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        ts_srv s = {.resp_fmt = cases[i].fmt, .pad = cases[i].pad, .fn = fn_wait_close};
        ts_start(&s);
        char url[128], err[256] = "";
        int st = -1;
        chat_wsc *c = chat_wsc_connect(ts_url(&s, "/", url, sizeof url), NULL, &st, err, sizeof err);
        if (cases[i].ok) {
            if (!c) fail_msg("%s: %s", cases[i].name, err);
        } else {
            if (c) fail_msg("%s: accepted", cases[i].name);
            if (!strstr(err, cases[i].err)) fail_msg("%s: err '%s' lacks '%s'", cases[i].name, err, cases[i].err);
        }
        if (st != cases[i].status) fail_msg("%s: http_status %d, want %d", cases[i].name, st, cases[i].status);
        ts_done(&s, c);
    }
}

static void test_handshake_timeout(void **state)
{
    ts_srv s = {.silent = true};
    ts_start(&s);
    chat_wsc_opts o = {.timeout_ms = 300};
    char url[128], err[256] = "";
    int st = -1;
    int64_t t0 = chat_now_ms();
    assert_null(chat_wsc_connect(ts_url(&s, "/", url, sizeof url), &o, &st, err, sizeof err));
    int64_t dt = chat_now_ms() - t0;
    assert_true(dt >= 250 && dt < 1500);
    assert_int_equal(st, 0);
    assert_non_null(strstr(err, "timed out"));
    ts_join(&s);
}

/* Frames sent in the same write as the 101 must not be lost with the header read. */
static void test_leftover_after_headers(void **state)
{
    static const unsigned char extra[] = {0x81, 5, 'f', 'i', 'r', 's', 't', 0x81, 6, 's', 'e', 'c', 'o', 'n', 'd',
                                          0x81, 5, 't', 'h'}; /* the third frame is cut */
    static const unsigned char rest[] = {'i', 'r', 'd'};
    ts_srv s = {.extra = extra, .extra_len = sizeof extra, .fn = fn_send_then_wait, .arg = rest, .arg_len = sizeof rest};
    chat_wsc *c = ts_open(&s);
    const char *m;
    size_t n;
    assert_int_equal(chat_wsc_recv(c, 0, &m, &n), 0); /* already buffered: no waiting */
    assert_int_equal(n, 5);
    assert_string_equal(m, "first");
    assert_int_equal(chat_wsc_recv(c, 0, &m, &n), 0);
    assert_string_equal(m, "second");
    assert_int_equal(chat_wsc_recv(c, 2000, &m, &n), 0); /* its start came with the headers */
    assert_string_equal(m, "third");
    assert_int_equal(chat_wsc_send_raw(c, NULL, 0), 0);
    ts_done(&s, c);
}

/* Every length form, both directions: the server unmasks what it gets and echoes it. */
static void test_echo_lengths(void **state)
{
    static const struct {
        size_t len;
        int len_code;
    } cases[] = {{0, 0}, {1, 1}, {125, 125}, {126, 126}, {127, 126}, {65535, 126}, {65536, 127}, {1 << 20, 127}};
    ts_srv s = {.fn = fn_echo};
    chat_wsc *c = ts_open(&s);
    unsigned char *p = malloc(1 << 20);
    assert_non_null(p);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        pattern(p, cases[i].len, (unsigned)i);
        assert_int_equal(chat_wsc_send_text(c, (const char *)p, cases[i].len), 0);
        const char *m;
        size_t n;
        int rc = chat_wsc_recv(c, 5000, &m, &n);
        if (rc) fail_msg("len %zu: recv %d", cases[i].len, rc);
        assert_int_equal(n, cases[i].len);
        assert_memory_equal(m, p, n);
        assert_int_equal(m[n], '\0');
    }
    chat_wsc_close(c, 1000, NULL);
    ts_join(&s);
    assert_int_equal(s.nframes, (int)CHAT_ARRAY_LEN(cases) + 1);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        const ts_frame *f = &s.frames[i];
        assert_int_equal(f->op, CHAT_WS_TEXT);
        assert_true(f->fin);
        assert_true(f->masked);
        if (f->len_code != cases[i].len_code) fail_msg("len %zu sent with code %d", cases[i].len, f->len_code);
        pattern(p, cases[i].len, (unsigned)i);
        assert_int_equal(f->len, cases[i].len);
        assert_memory_equal(f->data, p, f->len);
        for (size_t j = 0; j < i; j++) /* 2^-32 per pair to collide by chance */
            if (!memcmp(f->mask, s.frames[j].mask, 4)) fail_msg("frames %zu and %zu share a mask", i, j);
    }
    free(p);
    ts_free(&s);
}

/* A message whose UTF-8 is cut at its end is invalid even though every fragment arrived (1007); the ping
 * between its fragments is still answered first. */
static void fn_fragments_bad_utf8(ts_srv *s, int fd)
{
    ts_send_frame(fd, CHAT_WS_TEXT, false, "Hel", 3);
    ts_send_frame(fd, CHAT_WS_PING, true, "p0", 2);
    ts_send_frame(fd, CHAT_WS_CONT, true, "lo w\xc3", 5);
    fn_wait_close(s, fd);
}

static void test_fragmented_invalid_utf8(void **state)
{
    ts_srv s = {.fn = fn_fragments_bad_utf8};
    expect_client_fails(&s, "cut UTF-8", 2000, 1007, NULL, 0);
    assert_int_equal(s.nframes, 2);
    assert_int_equal(s.frames[0].op, CHAT_WS_PONG);
    assert_string_equal((char *)s.frames[0].data, "p0");
    assert_int_equal(s.frames[1].op, CHAT_WS_CLOSE);
    assert_int_equal(close_code_of(&s.frames[1]), 1007);
    ts_free(&s);
}

static void fn_fragments_ok(ts_srv *s, int fd)
{
    ts_send_frame(fd, CHAT_WS_TEXT, false, "Hel", 3);
    ts_send_frame(fd, CHAT_WS_PING, true, "p1", 2);
    ts_send_frame(fd, CHAT_WS_CONT, false, "lo w\xc3", 5);
    ts_send_frame(fd, CHAT_WS_PONG, true, "unsolicited", 11);
    ts_send_frame(fd, CHAT_WS_CONT, false, "", 0);
    ts_send_frame(fd, CHAT_WS_PING, true, "", 0);
    ts_send_frame(fd, CHAT_WS_CONT, true, "\xa9rld", 4); /* é split across fragments */
    unsigned char big[125];
    pattern(big, sizeof big, 3);
    ts_send_frame(fd, CHAT_WS_BINARY, false, "a\0", 2);
    ts_send_frame(fd, CHAT_WS_PING, true, big, sizeof big);
    ts_send_frame(fd, CHAT_WS_CONT, true, "\xff", 1);
    fn_wait_close(s, fd);
}

static void test_reassembly_with_control_frames(void **state)
{
    ts_srv s = {.fn = fn_fragments_ok};
    chat_wsc *c = ts_open(&s);
    const char *m;
    size_t n;
    int rc = chat_wsc_recv(c, 2000, &m, &n);
    if (rc) fail_msg("recv %d: close %d %s", rc, chat_wsc_close_code(c), chat_wsc_close_reason(c));
    assert_int_equal(n, strlen("Hello w\xc3\xa9rld"));
    assert_string_equal(m, "Hello w\xc3\xa9rld");
    assert_int_equal(chat_wsc_recv(c, 2000, &m, &n), 0); /* binary: not checked for UTF-8 */
    assert_int_equal(n, 3);
    assert_memory_equal(m, "a\0\xff", 3);
    assert_int_equal(chat_wsc_pong_count(c), 1);
    chat_wsc_close(c, 1000, NULL);
    ts_join(&s);
    /* the three pings answered in order with their payloads, then our close */
    assert_int_equal(s.nframes, 4);
    unsigned char big[125];
    pattern(big, sizeof big, 3);
    static const size_t lens[] = {2, 0, 125};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s.frames[i].op, CHAT_WS_PONG);
        assert_true(s.frames[i].fin && s.frames[i].masked);
        assert_int_equal(s.frames[i].len, lens[i]);
    }
    assert_memory_equal(s.frames[0].data, "p1", 2);
    assert_memory_equal(s.frames[2].data, big, 125);
    assert_int_equal(s.frames[3].op, CHAT_WS_CLOSE);
    ts_free(&s);
}

/* Client ping -> the server's pong is counted; recv meanwhile times out. */
static void test_client_ping(void **state)
{
    ts_srv s = {.fn = fn_echo};
    chat_wsc *c = ts_open(&s);
    assert_int_equal(chat_wsc_pong_count(c), 0);
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_PING, true, "cp", 2), 0);
    assert_int_equal(chat_wsc_recv(c, 300, NULL, NULL), CHAT_ETIMEOUT);
    assert_int_equal(chat_wsc_pong_count(c), 1);
    chat_wsc_close(c, 1000, NULL);
    ts_join(&s);
    assert_int_equal(s.frames[0].op, CHAT_WS_PING);
    assert_string_equal((char *)s.frames[0].data, "cp");
    ts_free(&s);
}

static void fn_ping_then_text(ts_srv *s, int fd)
{
    ts_send_frame(fd, CHAT_WS_PING, true, "p1", 2);
    ts_send_text(fd, "done");
    fn_wait_close(s, fd);
}

/* A ping's pong echoes its payload, or is empty with opts.empty_pongs. */
static void test_pong_payload(void **state)
{
    static const struct {
        bool empty;
        size_t len;
    } cases[] = {{false, 2}, {true, 0}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        ts_srv s = {.fn = fn_ping_then_text};
        ts_start(&s);
        chat_wsc_opts o = {.empty_pongs = cases[i].empty};
        chat_wsc *c = ts_connect(&s, &o);
        const char *m;
        assert_int_equal(chat_wsc_recv(c, 2000, &m, NULL), 0);
        assert_string_equal(m, "done");
        chat_wsc_close(c, 1000, NULL);
        ts_join(&s);
        assert_int_equal(s.nframes, 2);
        assert_int_equal(s.frames[0].op, CHAT_WS_PONG);
        assert_true(s.frames[0].masked);
        assert_int_equal(s.frames[0].len, cases[i].len);
        if (cases[i].len) assert_memory_equal(s.frames[0].data, "p1", 2);
        assert_int_equal(s.frames[1].op, CHAT_WS_CLOSE);
        ts_free(&s);
    }
}

static void fn_close_1001(ts_srv *s, int fd)
{
    ts_send_text(fd, "before");
    ts_send_close(fd, 1001, "going away");
    ts_read_frame(s, fd); /* the client's answer */
}

static void fn_close_empty(ts_srv *s, int fd)
{
    ts_send_close(fd, 0, NULL);
    ts_read_frame(s, fd);
}

static void test_close_from_server(void **state)
{
    static const struct {
        ts_fn fn;
        int code;
        const char *reason;
        bool before;
        size_t answer_len;
    } cases[] = {{fn_close_1001, 1001, "going away", true, 2}, {fn_close_empty, 1005, "", false, 0}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        ts_srv s = {.fn = cases[i].fn};
        chat_wsc *c = ts_open(&s);
        const char *m;
        size_t n;
        if (cases[i].before) { /* a message before the close is still delivered */
            assert_int_equal(chat_wsc_recv(c, 2000, &m, &n), 0);
            assert_string_equal(m, "before");
        }
        assert_int_equal(chat_wsc_recv(c, 2000, &m, &n), CHAT_ERR);
        assert_null(m);
        assert_int_equal(chat_wsc_close_code(c), cases[i].code);
        assert_string_equal(chat_wsc_close_reason(c), cases[i].reason);
        assert_int_equal(chat_wsc_recv(c, 0, &m, &n), CHAT_ERR); /* and stays closed */
        assert_int_equal(chat_wsc_send_text(c, "x", 1), CHAT_ERR);
        ts_join(&s); /* the server got the close answer before the client's own close */
        int64_t t0 = chat_now_ms();
        chat_wsc_close(c, 1000, "late");
        assert_true(chat_now_ms() - t0 < 200);
        assert_int_equal(s.nframes, 1); /* one close, echoing the code */
        assert_int_equal(s.frames[0].op, CHAT_WS_CLOSE);
        assert_int_equal(s.frames[0].len, cases[i].answer_len);
        if (cases[i].answer_len) assert_int_equal(close_code_of(&s.frames[0]), cases[i].code);
        ts_free(&s);
    }
}

static void test_abrupt_drop(void **state)
{
    static const unsigned char half[] = {0x81, 10, 'a', 'b'};
    static const struct {
        const void *bytes;
        size_t len;
    } cases[] = {{NULL, 0}, {half, sizeof half}, {half, 1}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        ts_srv s = {.fn = fn_send_then_drop, .arg = cases[i].bytes, .arg_len = cases[i].len};
        chat_wsc *c = ts_open(&s);
        assert_int_equal(chat_wsc_recv(c, 2000, NULL, NULL), CHAT_ERR);
        assert_int_equal(chat_wsc_close_code(c), 1006);
        assert_string_equal(chat_wsc_close_reason(c), "");
        ts_join(&s);
        int64_t t0 = chat_now_ms();
        chat_wsc_close(c, 1000, NULL);
        assert_true(chat_now_ms() - t0 < 200);
        ts_free(&s);
    }
}

/* What a broken server sends -> the close code the client fails the connection with. */
static void test_server_violations(void **state)
{
    static const unsigned char masked[] = {0x81, 0x82, 1, 2, 3, 4, 'a' ^ 1, 'b' ^ 2};
    static const unsigned char rsv1[] = {0xc1, 0};
    static const unsigned char rsv3[] = {0x91, 0};
    static const unsigned char op3[] = {0x83, 0};
    static const unsigned char opb[] = {0x8b, 0};
    static const unsigned char cont[] = {0x80, 1, 'x'};
    static const unsigned char frag_ping[] = {0x09, 0};
    static const unsigned char new_in_frag[] = {0x01, 1, 'a', 0x81, 1, 'b'};
    static const unsigned char close1[] = {0x88, 1, 3};
    static const unsigned char bad_utf8[] = {0x81, 2, 0xc3, 0x28};
    static const unsigned char surrogate[] = {0x81, 3, 0xed, 0xa0, 0x80};
    static const unsigned char too_big[] = {0x82, 127, 0, 0, 0, 0, 1, 0, 0, 1}; /* 16 MB + 1 */
    static const unsigned char huge[] = {0x82, 127, 0x40, 0, 0, 0, 0, 0, 0, 0};  /* 2^62 */
    static const unsigned char high_bit[] = {0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0};
    unsigned char big_ping[4 + 126] = {0x89, 126, 0, 126};
    static const struct {
        const char *name;
        const unsigned char *bytes;
        size_t len;
        int code;
    } fixed[] = {
        {"masked", masked, sizeof masked, 1002},          {"rsv1", rsv1, sizeof rsv1, 1002},
        {"rsv3", rsv3, sizeof rsv3, 1002},                {"opcode 3", op3, sizeof op3, 1002},
        {"opcode 11", opb, sizeof opb, 1002},             {"lone continuation", cont, sizeof cont, 1002},
        {"fragmented ping", frag_ping, sizeof frag_ping, 1002},
        {"new message in fragments", new_in_frag, sizeof new_in_frag, 1002},
        {"1-byte close", close1, sizeof close1, 1002},    {"invalid utf-8", bad_utf8, sizeof bad_utf8, 1007},
        {"surrogate", surrogate, sizeof surrogate, 1007}, {"16 MB + 1", too_big, sizeof too_big, 1009},
        {"2^62", huge, sizeof huge, 1009},                {"length high bit", high_bit, sizeof high_bit, 1002},
        {"126-byte ping", NULL, 0, 1002},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(fixed); i++) {
        const unsigned char *b = fixed[i].bytes ? fixed[i].bytes : big_ping;
        size_t bl = fixed[i].bytes ? fixed[i].len : sizeof big_ping;
        ts_srv s = {.fn = fn_send_then_wait, .arg = b, .arg_len = bl};
        char reason[128];
        expect_client_fails(&s, fixed[i].name, 2000, fixed[i].code, reason, sizeof reason);
        assert_true(reason[0] != '\0');
        if (s.nframes != 1 || s.frames[0].op != CHAT_WS_CLOSE || close_code_of(&s.frames[0]) != fixed[i].code)
            fail_msg("%s: the server did not get a close %d", fixed[i].name, fixed[i].code);
        ts_free(&s);
    }
}

/* 10 MB of fragment, then a continuation announcing 7 MB: over the 16 MB bound before its payload. */
static void fn_big_fragments(ts_srv *s, int fd)
{
    size_t n = 10u << 20;
    char *p = malloc(n);
    memset(p, 'a', n);
    ts_send_frame(fd, CHAT_WS_TEXT, false, p, n);
    free(p);
    unsigned char h[] = {0x80, 127, 0, 0, 0, 0, 0, 0x70, 0, 0};
    ts_write(fd, h, sizeof h);
    fn_wait_close(s, fd);
}

static void test_fragments_over_bound(void **state)
{
    ts_srv s = {.fn = fn_big_fragments};
    expect_client_fails(&s, "fragments over the bound", 5000, 1009, NULL, 0);
    assert_int_equal(close_code_of(&s.frames[0]), 1009);
    ts_free(&s);
}

static void test_recv_timeout(void **state)
{
    ts_srv s = {.fn = fn_wait_close};
    chat_wsc *c = ts_open(&s);
    static const int timeouts[] = {100, 0, 250};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(timeouts); i++) {
        int64_t t0 = chat_now_ms();
        assert_int_equal(chat_wsc_recv(c, timeouts[i], NULL, NULL), CHAT_ETIMEOUT);
        int64_t dt = chat_now_ms() - t0;
        if (dt < timeouts[i] - 5 || dt > timeouts[i] + 150) fail_msg("timeout %d took %lld ms", timeouts[i], (long long)dt);
    }
    assert_int_equal(chat_wsc_close_code(c), 0);
    ts_done(&s, c);
}

/* A frame arriving in three pieces, the first two separated by waits longer than recv's timeout. */
static void fn_slow_frame(ts_srv *s, int fd)
{
    static const unsigned char f[] = {0x81, 126, 0, 200};
    unsigned char p[200];
    pattern(p, sizeof p, 9);
    ts_write(fd, f, 1);
    usleep(200 * 1000);
    ts_write(fd, f + 1, 3);
    ts_write(fd, p, 50);
    usleep(200 * 1000);
    ts_write(fd, p + 50, 150);
    fn_wait_close(s, fd);
}

static void test_partial_frame_survives_timeout(void **state)
{
    ts_srv s = {.fn = fn_slow_frame};
    chat_wsc *c = ts_open(&s);
    const char *m;
    size_t n;
    assert_int_equal(chat_wsc_recv(c, 50, &m, &n), CHAT_ETIMEOUT);
    usleep(250 * 1000);
    assert_int_equal(chat_wsc_recv(c, 0, &m, &n), CHAT_ETIMEOUT); /* header and 50 bytes buffered */
    assert_int_equal(chat_wsc_recv(c, 2000, &m, &n), 0);
    unsigned char p[200];
    pattern(p, sizeof p, 9);
    assert_int_equal(n, 200);
    assert_memory_equal(m, p, 200);
    ts_done(&s, c);
}

/* Raw frames reach the server exactly as told; raw bytes unchanged. */
static void test_raw_frames(void **state)
{
    ts_srv s = {.fn = fn_wait_close};
    chat_wsc *c = ts_open(&s);
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_TEXT, false, "ab", 2), 0);
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_CONT, true, "cd", 2), 0);
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_TEXT, true, "\xff\xfe", 2), 0);
    assert_int_equal(chat_wsc_send_frame(c, 3, true, NULL, 0), 0);
    assert_int_equal(chat_wsc_send_text(c, "", 0), 0);
    static const unsigned char unmasked[] = {0x81, 2, 'h', 'i'};
    assert_int_equal(chat_wsc_send_raw(c, unmasked, sizeof unmasked), 0);
    assert_int_equal(chat_wsc_send_frame(c, 16, true, NULL, 0), CHAT_EINVAL);
    assert_int_equal(chat_wsc_send_frame(c, -1, true, NULL, 0), CHAT_EINVAL);
    assert_int_equal(chat_wsc_send_frame(NULL, 1, true, NULL, 0), CHAT_EINVAL);
    assert_int_equal(chat_wsc_send_text(NULL, "", 0), CHAT_EINVAL);
    /* a close sent by hand counts as ours: chat_wsc_close then only waits for the answer */
    assert_int_equal(chat_wsc_send_frame(c, CHAT_WS_CLOSE, true, "\x03\xe8", 2), 0);
    assert_int_equal(chat_wsc_send_text(c, "x", 1), CHAT_ERR);
    chat_wsc_close(c, 1001, NULL);
    ts_join(&s);
    static const struct {
        int op;
        bool fin, masked;
        const char *data;
        size_t len;
    } want[] = {{1, false, true, "ab", 2}, {0, true, true, "cd", 2}, {1, true, true, "\xff\xfe", 2},
                {3, true, true, "", 0},    {1, true, true, "", 0},   {1, true, false, "hi", 2},
                {8, true, true, "\x03\xe8", 2}};
    assert_int_equal(s.nframes, (int)CHAT_ARRAY_LEN(want));
    for (size_t i = 0; i < CHAT_ARRAY_LEN(want); i++) {
        assert_int_equal(s.frames[i].op, want[i].op);
        assert_int_equal(s.frames[i].fin, want[i].fin);
        assert_int_equal(s.frames[i].masked, want[i].masked);
        assert_int_equal(s.frames[i].len, want[i].len);
        assert_memory_equal(s.frames[i].data, want[i].data, want[i].len);
    }
    ts_free(&s);
}

/* The server never answers the close: chat_wsc_close gives up after about 1 s. */
static void fn_ignore_close(ts_srv *s, int fd)
{
    ts_read_frame(s, fd);
    usleep(1600 * 1000);
}

static void test_close_waits_one_second(void **state)
{
    ts_srv s = {.fn = fn_ignore_close};
    chat_wsc *c = ts_open(&s);
    int64_t t0 = chat_now_ms();
    chat_wsc_close(c, 4000, "a reason longer than it may be: 0123456789012345678901234567890123456789"
                            "0123456789012345678901234567890123456789012345678901234567890123456789");
    int64_t dt = chat_now_ms() - t0;
    if (dt < 950 || dt > 1400) fail_msg("close took %lld ms", (long long)dt);
    ts_join(&s);
    assert_int_equal(s.frames[0].op, CHAT_WS_CLOSE);
    assert_int_equal(s.frames[0].len, 125);
    assert_int_equal(close_code_of(&s.frames[0]), 4000);
    ts_free(&s);
}

static void test_source_addr(void **state)
{
    ts_srv s = {.fn = fn_wait_close};
    ts_start(&s);
    chat_wsc_opts o = {.source_addr = "127.0.0.2"};
    chat_wsc *c = ts_connect(&s, &o);
    chat_wsc_close(c, 1000, NULL);
    ts_join(&s);
    assert_string_equal(s.peer, "127.0.0.2");
    ts_free(&s);

    char err[128] = "";
    int st = -1;
    o.source_addr = "not-an-ip";
    assert_null(chat_wsc_connect("ws://127.0.0.1:9/", &o, &st, err, sizeof err));
    assert_non_null(strstr(err, "source"));
}

static void test_ipv6(void **state)
{
    int probe = socket(AF_INET6, SOCK_STREAM, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool have = probe >= 0 && bind(probe, (struct sockaddr *)&a, sizeof a) == 0;
    if (probe >= 0) close(probe);
    if (!have) skip();
    ts_srv s = {.v6 = true, .fn = fn_echo};
    chat_wsc *c = ts_open(&s);
    const char *m;
    assert_int_equal(chat_wsc_send_text(c, "six", 3), 0);
    assert_int_equal(chat_wsc_recv(c, 2000, &m, NULL), 0);
    assert_string_equal(m, "six");
    chat_wsc_close(c, 1000, NULL);
    ts_join(&s);
    char v[64], want[64];
    snprintf(want, sizeof want, "[::1]:%d", s.port);
    assert_string_equal(ts_req_header(&s, "Host", v, sizeof v), want);
    ts_free(&s);
}

static void fn_json(ts_srv *s, int fd)
{
    ts_send_text(fd, "{\"type\":\"progress\",\"step\":\"starting\"}");
    ts_send_text(fd, "{\"type\":\"token\",\"token\":\"a\"}");
    ts_send_text(fd, "[\"type\",\"complete\"]");
    ts_send_text(fd, "{\"type\":\"complete\",\"response\":\"ok\"}");
    ts_send_text(fd, "not json");
    ts_send_text(fd, "{\"a\":1} trailing");
    ts_send_text(fd, "{\"type\":\"x\"}");
    ts_send_text(fd, "{\"type\":\"token\"}");
    fn_wait_close(s, fd);
}

static void test_recv_json(void **state)
{
    ts_srv s = {.fn = fn_json};
    chat_wsc *c = ts_open(&s);
    json_object *o = NULL, *v;
    assert_int_equal(chat_wsc_recv_type(c, 2000, "complete", &o), 0);
    assert_true(json_object_object_get_ex(o, "response", &v));
    assert_string_equal(json_object_get_string(v), "ok");
    json_object_put(o);
    assert_int_equal(chat_wsc_recv_json(c, 2000, &o), CHAT_EINVAL);
    assert_null(o);
    assert_int_equal(chat_wsc_recv_json(c, 2000, &o), CHAT_EINVAL);
    assert_int_equal(chat_wsc_recv_json(c, 2000, &o), 0);
    assert_true(json_object_object_get_ex(o, "type", &v));
    assert_string_equal(json_object_get_string(v), "x");
    json_object_put(o);
    int64_t t0 = chat_now_ms();
    assert_int_equal(chat_wsc_recv_type(c, 200, "complete", &o), CHAT_ETIMEOUT); /* skips the token */
    assert_null(o);
    assert_true(chat_now_ms() - t0 < 600);
    ts_done(&s, c);
}

/* Memory: a 1 MB message's buffer is released at the next recv; small ones keep theirs. */
static void test_buffers_shrink(void **state)
{
    ts_srv s = {.fn = fn_echo};
    chat_wsc *c = ts_open(&s);
    assert_null(c->rbuf); /* nothing read yet */
    size_t big = 1 << 20;
    char *p = malloc(big);
    pattern((unsigned char *)p, big, 1);
    assert_int_equal(chat_wsc_send_text(c, p, big), 0);
    assert_int_equal(chat_wsc_recv(c, 5000, NULL, NULL), 0);
    assert_true(c->mcap > big);
    assert_true(c->rcap <= WSC_RBUF_CAP);
    assert_int_equal(chat_wsc_send_text(c, "small", 5), 0);
    assert_int_equal(chat_wsc_recv(c, 5000, NULL, NULL), 0);
    assert_true(c->mcap <= WSC_KEEP_MSG_CAP);
    assert_non_null(c->rbuf);
    assert_int_equal(chat_wsc_recv(c, 0, NULL, NULL), CHAT_ETIMEOUT); /* idle: nothing held */
    assert_null(c->rbuf);
    assert_null(c->msg);
    assert_int_equal(chat_wsc_send_text(c, "again", 5), 0); /* and it works on after that */
    const char *m;
    assert_int_equal(chat_wsc_recv(c, 5000, &m, NULL), 0);
    assert_string_equal(m, "again");
    free(p);
    ts_done(&s, c);
}

/* ---- chat-ws ---- */

static const char *cli_path(void) { return testutil_path("build/bin/chat-ws"); }

/* Runs cmd through the shell; returns the exit status and stdout (caller frees). */
static int run_cmd(const char *cmd, char **out)
{
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    chat_buf b;
    chat_buf_init(&b);
    char tmp[4096];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) chat_buf_append(&b, tmp, n);
    int st = pclose(f);
    *out = chat_buf_take(&b);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_cli_usage(void **state)
{
    if (access(cli_path(), X_OK) != 0) skip();
    static const char *bad[] = {
        "--bogus",
        "--token",
        "--token a --token-file /dev/null hi",
        "--url http://127.0.0.1:1/ hi",
        "--url",
        "--session 'bad id' hi",
        "--customer '' hi",
        "--timeout 0 hi",
        "--token-file /nonexistent/file hi",
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad); i++) {
        char cmd[1024], *out;
        snprintf(cmd, sizeof cmd, "%s %s </dev/null 2>/dev/null", cli_path(), bad[i]);
        int rc = run_cmd(cmd, &out);
        if (rc != 2) fail_msg("chat-ws %s: exit %d, want 2", bad[i], rc);
        free(out);
    }
    char cmd[1024], *out;
    snprintf(cmd, sizeof cmd, "%s --help 2>&1", cli_path());
    assert_int_equal(run_cmd(cmd, &out), 0);
    assert_non_null(strstr(out, "--token-file"));
    free(out);
}

#define CLI_TOKEN "secret.jwt.tokenvalue"

/* Plays the streamer: auth, then for each message progress, tokens and complete; a message "fail" gets
 * an error event instead. Records the client's frames. */
static void fn_streamer(ts_srv *s, int fd)
{
    ts_frame *f = ts_read_frame(s, fd);
    if (!f) return;
    json_object *o = json_tokener_parse((char *)f->data), *v;
    bool ok = o && json_object_object_get_ex(o, "type", &v) && !strcmp(json_object_get_string(v), "auth") &&
              json_object_object_get_ex(o, "token", &v) && !strcmp(json_object_get_string(v), CLI_TOKEN);
    json_object_put(o);
    if (!ok) {
        ts_send_text(fd, "{\"type\":\"auth_error\",\"message\":\"Invalid token\"}");
        fn_wait_close(s, fd);
        return;
    }
    ts_send_text(fd, "{\"type\":\"auth_success\",\"message\":\"Authentication successful\",\"user\":{\"id\":\"u1\"}}");
    while ((f = ts_read_frame(s, fd))) {
        if (f->op == CHAT_WS_CLOSE) {
            ts_send_frame(fd, CHAT_WS_CLOSE, true, f->data, f->len);
            return;
        }
        if (f->op != CHAT_WS_TEXT) continue; /* the pong */
        o = json_tokener_parse((char *)f->data);
        const char *msg = o && json_object_object_get_ex(o, "message", &v) ? json_object_get_string(v) : "";
        if (!strcmp(msg, "fail")) {
            ts_send_text(fd, "{\"type\":\"error\",\"error\":\"boom\",\"code\":\"PROCESSING_ERROR\"}");
        } else {
            ts_send_text(fd, "{\"type\":\"progress\",\"step\":\"starting\",\"message\":\"Processing...\"}");
            ts_send_text(fd, "{\"type\":\"token\",\"token\":\"Hel\",\"partial_response\":\"Hel\"}");
            ts_send_frame(fd, CHAT_WS_PING, true, "k", 1);
            ts_send_text(fd, "{\"type\":\"token\",\"token\":\"lo\",\"partial_response\":\"Hello\"}");
            ts_send_text(fd, "{\"type\":\"complete\",\"response\":\"Hello\",\"session_id\":\"sess-1\","
                             "\"metadata\":{\"agent\":\"specs\"}}");
        }
        json_object_put(o);
    }
}

/* The i-th client message frame (auth, pongs and close skipped) parsed, or NULL. */
static json_object *cli_sent(const ts_srv *s, int i)
{
    for (int k = 1; k < s->nframes; k++) {
        if (s->frames[k].op != CHAT_WS_TEXT) continue;
        if (i-- == 0) return json_tokener_parse((char *)s->frames[k].data);
    }
    return NULL;
}

static void test_cli_chat(void **state)
{
    if (access(cli_path(), X_OK) != 0) skip();
    char tokfile[] = "/tmp/test_wsclient_tokXXXXXX";
    int tfd = mkstemp(tokfile);
    assert_true(tfd >= 0);
    assert_int_equal(write(tfd, CLI_TOKEN "\n", strlen(CLI_TOKEN) + 1), (ssize_t)strlen(CLI_TOKEN) + 1);
    close(tfd);
    static const struct {
        const char *args, *stdin_text;
        int rc;
        const char *out_has, *out_lacks;
        int lines; /* stdout lines, -1 = not checked */
    } cases[] = {
        {"--session s-9 --customer c1 hi", NULL, 0, "\"type\":\"complete\"", "auth_success\",\"token", 5},
        {"--raw hi", NULL, 0, "Hello\n", "{", 1},
        {"hi fail", NULL, 1, "PROCESSING_ERROR", NULL, 6},
        {"--raw", "hi\n\nagain\n", 0, "Hello\nHello\n", NULL, 2},
        {"--token wrong hi", NULL, 1, "auth_error", NULL, -1},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        ts_srv s = {.fn = fn_streamer};
        ts_start(&s);
        char cmd[2048], *out;
        bool own_token = strstr(cases[i].args, "--token") != NULL;
        snprintf(cmd, sizeof cmd, "%s%s%s | %s --url ws://127.0.0.1:%d/ws/chat %s%s %s 2>/dev/null",
                 cases[i].stdin_text ? "printf '" : "", cases[i].stdin_text ? cases[i].stdin_text : "",
                 cases[i].stdin_text ? "'" : "true", cli_path(), s.port, own_token ? "" : "--token-file ",
                 own_token ? "" : tokfile, cases[i].args);
        int rc = run_cmd(cmd, &out);
        ts_join(&s);
        if (rc != cases[i].rc) fail_msg("case %zu: exit %d, want %d; out:\n%s", i, rc, cases[i].rc, out);
        if (!strstr(out, cases[i].out_has)) fail_msg("case %zu: output lacks %s:\n%s", i, cases[i].out_has, out);
        if (cases[i].out_lacks && strstr(out, cases[i].out_lacks))
            fail_msg("case %zu: output has %s:\n%s", i, cases[i].out_lacks, out);
        assert_null(strstr(out, CLI_TOKEN)); /* never printed */
        if (cases[i].lines >= 0) {
            int lines = 0;
            for (const char *p = out; *p; p++) lines += *p == '\n';
            if (lines != cases[i].lines) fail_msg("case %zu: %d lines, want %d:\n%s", i, lines, cases[i].lines, out);
        }
        if (cases[i].lines > 1 && !strstr(cases[i].args, "--raw")) { /* JSON mode: every line parses */
            for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
                json_object *o = json_tokener_parse(line);
                if (!json_object_is_type(o, json_type_object)) fail_msg("case %zu: not a JSON line: %s", i, line);
                json_object_put(o);
            }
        }
        if (i == 0) { /* the message as the protocol wants it */
            json_object *m = cli_sent(&s, 0), *v;
            assert_non_null(m);
            assert_true(json_object_object_get_ex(m, "type", &v));
            assert_string_equal(json_object_get_string(v), "message");
            assert_true(json_object_object_get_ex(m, "message", &v));
            assert_string_equal(json_object_get_string(v), "hi");
            assert_true(json_object_object_get_ex(m, "session_id", &v));
            assert_string_equal(json_object_get_string(v), "s-9");
            assert_true(json_object_object_get_ex(m, "customer_id", &v));
            assert_string_equal(json_object_get_string(v), "c1");
            json_object_put(m);
            /* the ping between tokens was answered */
            bool pong = false;
            for (int k = 0; k < s.nframes; k++) pong |= s.frames[k].op == CHAT_WS_PONG;
            assert_true(pong);
        }
        if (i == 3) { /* the conversation goes on in the session the server named */
            json_object *m = cli_sent(&s, 1), *v;
            assert_non_null(m);
            assert_true(json_object_object_get_ex(m, "session_id", &v));
            assert_string_equal(json_object_get_string(v), "sess-1");
            json_object_put(m);
        }
        free(out);
        ts_free(&s);
    }
    unlink(tokfile);
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_server_accept_matches_rfc),
              cmocka_unit_test(test_url_parse),
              cmocka_unit_test(test_url_errors),
              cmocka_unit_test(test_connect_refused),
              cmocka_unit_test(test_handshake_request),
              cmocka_unit_test(test_handshake_keys_random),
              cmocka_unit_test(test_handshake_responses),
              cmocka_unit_test(test_handshake_timeout),
              cmocka_unit_test(test_leftover_after_headers),
              cmocka_unit_test(test_echo_lengths),
              cmocka_unit_test(test_fragmented_invalid_utf8),
              cmocka_unit_test(test_reassembly_with_control_frames),
              cmocka_unit_test(test_client_ping),
              cmocka_unit_test(test_pong_payload),
              cmocka_unit_test(test_close_from_server),
              cmocka_unit_test(test_abrupt_drop),
              cmocka_unit_test(test_server_violations),
              cmocka_unit_test(test_fragments_over_bound),
              cmocka_unit_test(test_recv_timeout),
              cmocka_unit_test(test_partial_frame_survives_timeout),
              cmocka_unit_test(test_raw_frames),
              cmocka_unit_test(test_close_waits_one_second),
              cmocka_unit_test(test_source_addr),
              cmocka_unit_test(test_ipv6),
              cmocka_unit_test(test_recv_json),
              cmocka_unit_test(test_buffers_shrink),
              cmocka_unit_test(test_cli_usage),
              cmocka_unit_test(test_cli_chat))
