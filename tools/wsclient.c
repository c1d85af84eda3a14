/* RFC 6455 WebSocket client over a plain TCP socket (see wsclient.h).
 *
 * Design choices:
 * - The fd is non-blocking and every wait is a poll() with a deadline, so one code path serves blocking
 *   callers (tests, the CLI) and callers that poll() thousands of fds themselves and call recv with
 *   timeout 0 (the load generator).
 * - The receive side is a resumable state machine (frame header -> payload -> message), so a timeout in
 *   the middle of a frame loses nothing. Bytes are read into a small read buffer; a data payload larger
 *   than that buffer is read straight into the message buffer, so a big message is copied once.
 * - Memory is lazy: the read buffer appears on the first read, the message buffer grows to the message
 *   and is released at the next recv when it went over 64 KB, and both are released when recv times
 *   out with nothing pending, so idle connections cost only their struct.
 * - Mask keys come from a per-thread pool refilled with getrandom(): masks only need to be unpredictable
 *   to intermediaries, and one syscall per frame would show in a load test. The handshake key uses
 *   getrandom() directly.
 * - Writes use MSG_NOSIGNAL so a dropped peer is an error code, not SIGPIPE. */
#include "wsclient.h"

#include <arpa/inet.h>
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_util.h"

#define WSC_DEFAULT_TIMEOUT_MS 5000
#define WSC_MAX_URL 8192
#define WSC_MAX_RESPONSE_HEADERS 16384
#define WSC_RBUF_CAP 4096                  /* read buffer; >= largest control frame (2 + 125 bytes) */
#define WSC_MAX_MESSAGE (16u * 1024 * 1024) /* reassembled message bound */
#define WSC_KEEP_MSG_CAP (64u * 1024)      /* message buffers above this are released after use */
#define WSC_SEND_CHUNK 16384               /* header + masked payload assembled per send() */

struct chat_wsc {
    int fd;
    int io_timeout_ms; /* longest a send may stall */
    /* read buffer: bytes [rpos, rlen) are received and not yet parsed */
    unsigned char *rbuf;
    size_t rpos, rlen, rcap;
    /* message being assembled; delivered = the caller holds it, reset at the next recv */
    unsigned char *msg;
    size_t mlen, mcap;
    int msg_opcode; /* opcode of the message in progress, 0 = none */
    bool delivered;
    /* data frame in progress: its header is parsed, frame_left payload bytes still to come */
    bool in_frame, frame_fin;
    uint64_t frame_left;
    /* lifecycle */
    bool close_sent; /* this side sent a close */
    bool done;       /* nothing more to read: close received, failed, EOF or I/O error */
    int close_code;
    char *close_reason;
    unsigned pongs;
    bool empty_pongs; /* pongs without the ping's payload (opts) */
};

/* ---- small helpers ---- */

static int64_t deadline_after(int timeout_ms) { return timeout_ms < 0 ? -1 : chat_now_ms() + timeout_ms; }

/* Milliseconds left until deadline for poll(): -1 = forever, 0 = expired. */
static int ms_left(int64_t deadline)
{
    if (deadline < 0) return -1;
    int64_t left = deadline - chat_now_ms();
    if (left <= 0) return 0;
    return left > INT_MAX ? INT_MAX : (int)left;
}

/* Waits for events on the fd: 1 ready, 0 timed out, CHAT_ERR on a poll failure. */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = events};
        int n = poll(&p, 1, ms_left(deadline));
        if (n > 0) return 1;
        if (n == 0) return 0;
        if (errno != EINTR) return CHAT_ERR;
    }
}

static _Thread_local unsigned char rnd_pool[256];
static _Thread_local size_t rnd_pos = sizeof rnd_pool;

static int fill_random(void *out, size_t n)
{
    unsigned char *p = out;
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR) continue;
            return CHAT_ERR;
        }
        got += (size_t)r;
    }
    return 0;
}

static int mask_key(unsigned char key[4])
{
    if (rnd_pos + 4 > sizeof rnd_pool) {
        if (fill_random(rnd_pool, sizeof rnd_pool)) return CHAT_ERR;
        rnd_pos = 0;
    }
    memcpy(key, rnd_pool + rnd_pos, 4);
    rnd_pos += 4;
    return 0;
}

static void set_reason(chat_wsc *c, const char *s, size_t n)
{
    free(c->close_reason);
    c->close_reason = malloc(n + 1);
    if (!c->close_reason) return;
    if (n) memcpy(c->close_reason, s, n);
    c->close_reason[n] = '\0';
}

/* The connection is unusable without a close (EOF, I/O error, partial write). */
static int mark_dropped(chat_wsc *c)
{
    c->done = true;
    if (!c->close_code) c->close_code = 1006;
    return CHAT_ERR;
}

/* ---- sending ---- */

static int send_all(chat_wsc *c, const void *data, size_t len)
{
    const unsigned char *p = data;
    int64_t deadline = deadline_after(c->io_timeout_ms);
    while (len > 0) {
        ssize_t n = send(c->fd, p, len, MSG_NOSIGNAL);
        if (n > 0) {
            p += n, len -= (size_t)n;
            deadline = deadline_after(c->io_timeout_ms); /* the limit is on a stall, not on the total */
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(c->fd, POLLOUT, deadline);
            if (w > 0) continue;
            mark_dropped(c);
            return w == 0 ? CHAT_ETIMEOUT : CHAT_ERR;
        }
        return mark_dropped(c);
    }
    return 0;
}

/* One masked frame; header and the first payload chunk go out in one send() so a small frame is one
 * TCP segment (TCP_NODELAY is on). */
static int write_frame(chat_wsc *c, int opcode, bool fin, const void *data, size_t len)
{
    unsigned char buf[WSC_SEND_CHUNK];
    unsigned char key[4];
    if (mask_key(key)) return CHAT_ERR;
    size_t h = chat_wsf_client_header(buf, opcode, fin, len, key);
    size_t off = 0;
    do {
        size_t n = len - off;
        if (n > sizeof buf - h) n = sizeof buf - h;
        chat_wsf_mask(buf + h, (const unsigned char *)data + off, n, key, off);
        int rc = send_all(c, buf, h + n);
        if (rc) return rc;
        off += n;
        h = 0;
    } while (off < len);
    return 0;
}

/* Close frame: 2-byte code + reason cut to 123 bytes at a UTF-8 boundary. */
static int write_close(chat_wsc *c, int code, const char *reason)
{
    unsigned char p[125];
    size_t n = 0;
    if (code > 0) {
        p[n++] = (unsigned char)((code >> 8) & 0xff);
        p[n++] = (unsigned char)(code & 0xff);
        if (reason) {
            size_t rl = chat_utf8_prefix(reason, strlen(reason), sizeof p - 2);
            memcpy(p + 2, reason, rl);
            n += rl;
        }
    }
    c->close_sent = true;
    return write_frame(c, CHAT_WS_CLOSE, true, p, n);
}

int chat_wsc_send_frame(chat_wsc *c, int opcode, bool fin, const void *data, size_t len)
{
    if (!c || opcode < 0 || opcode > 15 || (!data && len)) return CHAT_EINVAL;
    if (c->fd < 0 || (c->done && c->close_code == 1006)) return CHAT_ERR;
    if (opcode == CHAT_WS_CLOSE) c->close_sent = true;
    return write_frame(c, opcode, fin, data, len);
}

int chat_wsc_send_text(chat_wsc *c, const char *data, size_t len)
{
    if (!c || (!data && len)) return CHAT_EINVAL;
    if (c->fd < 0 || c->done || c->close_sent) return CHAT_ERR;
    return write_frame(c, CHAT_WS_TEXT, true, data, len);
}

int chat_wsc_send_raw(chat_wsc *c, const void *bytes, size_t len)
{
    if (!c || (!bytes && len)) return CHAT_EINVAL;
    if (c->fd < 0 || (c->done && c->close_code == 1006)) return CHAT_ERR;
    return send_all(c, bytes, len);
}

/* ---- receiving ---- */

/* Fails the connection for a server violation: close with code, remember code and description. */
static int fail_conn(chat_wsc *c, int code, const char *why)
{
    if (!c->close_sent && !c->done) write_close(c, code, NULL);
    c->done = true;
    c->close_code = code;
    set_reason(c, why, strlen(why));
    return CHAT_ERR;
}

static int msg_reserve(chat_wsc *c, size_t need)
{
    if (need + 1 <= c->mcap) return 0;
    size_t cap = c->mcap ? c->mcap : 256;
    while (cap < need + 1) cap *= 2;
    unsigned char *p = realloc(c->msg, cap);
    if (!p) return CHAT_ENOMEM;
    c->msg = p, c->mcap = cap;
    return 0;
}

/* A complete control frame (payload in place). 0 to go on, CHAT_ERR when the connection ended. */
static int on_control(chat_wsc *c, int op, const unsigned char *p, size_t n)
{
    if (op == CHAT_WS_PING) {
        if (c->close_sent) return 0; /* no pongs after our close (RFC 6455 5.5.1) */
        return write_frame(c, CHAT_WS_PONG, true, p, c->empty_pongs ? 0 : n) ? CHAT_ERR : 0;
    }
    if (op == CHAT_WS_PONG) {
        c->pongs++;
        return 0;
    }
    /* close */
    if (n == 1) return fail_conn(c, 1002, "close frame with a 1-byte payload");
    int code = n >= 2 ? (p[0] << 8) | p[1] : 1005;
    set_reason(c, n > 2 ? (const char *)p + 2 : "", n > 2 ? n - 2 : 0);
    if (!c->close_sent) write_close(c, n >= 2 ? code : 0, NULL);
    c->done = true;
    c->close_code = code;
    return CHAT_ERR;
}

/* Parses what the read buffer holds. 1 = a message is complete, 0 = more bytes needed, CHAT_ERR = the
 * connection ended (closed, failed). */
static int parse_buffered(chat_wsc *c)
{
    for (;;) {
        size_t avail = c->rlen - c->rpos;
        const unsigned char *b = c->rbuf ? c->rbuf + c->rpos : NULL;
        if (!c->in_frame) {
            if (avail < 2) return 0;
            chat_wsf_header fh;
            const char *why = NULL;
            int hr = chat_wsf_parse_server_header(b, avail, &fh, &why);
            if (hr < 0) return fail_conn(c, 1002, why);
            if (hr == 0) return 0;
            bool fin = fh.fin;
            int op = fh.opcode;
            uint64_t plen = fh.len;
            size_t hlen = fh.header_len;
            if (op >= CHAT_WS_CLOSE) {
                if (avail < hlen + plen) return 0;
                c->rpos += hlen + (size_t)plen;
                if (on_control(c, op, b + hlen, (size_t)plen)) return CHAT_ERR;
                continue;
            }
            if (op == CHAT_WS_CONT) {
                if (!c->msg_opcode) return fail_conn(c, 1002, "continuation frame without a message");
            } else {
                if (c->msg_opcode) return fail_conn(c, 1002, "new message inside a fragmented message");
                c->msg_opcode = op;
            }
            if (plen > WSC_MAX_MESSAGE - c->mlen) return fail_conn(c, 1009, "message over 16 MB");
            if (msg_reserve(c, c->mlen + (size_t)plen)) return fail_conn(c, 1009, "out of memory");
            c->rpos += hlen;
            c->in_frame = true, c->frame_fin = fin, c->frame_left = plen;
            avail -= hlen;
            b += hlen;
        }
        size_t take = c->frame_left < avail ? (size_t)c->frame_left : avail;
        if (take) memcpy(c->msg + c->mlen, b, take);
        c->rpos += take, c->mlen += take, c->frame_left -= take;
        if (c->frame_left) return 0;
        c->in_frame = false;
        if (!c->frame_fin) continue;
        c->msg[c->mlen] = '\0';
        if (c->msg_opcode == CHAT_WS_TEXT && !chat_utf8_valid((const char *)c->msg, c->mlen))
            return fail_conn(c, 1007, "text message is not UTF-8");
        c->msg_opcode = 0;
        c->delivered = true;
        return 1;
    }
}

/* One read() into the read buffer or, for a big payload with nothing buffered, into the message.
 * 1 = got bytes, 0 = would block, CHAT_ERR = EOF or error (connection marked dropped). */
static int read_some(chat_wsc *c)
{
    unsigned char *dst;
    size_t room;
    bool direct = c->in_frame && c->rpos == c->rlen && c->frame_left >= WSC_RBUF_CAP;
    if (direct) {
        dst = c->msg + c->mlen;
        room = c->frame_left > SSIZE_MAX ? SSIZE_MAX : (size_t)c->frame_left;
    } else {
        if (c->rpos == c->rlen) c->rpos = c->rlen = 0;
        if (c->rpos == 0 && c->rlen == 0 && c->rcap > WSC_RBUF_CAP) { /* the handshake leftover was big */
            free(c->rbuf);
            c->rbuf = NULL, c->rcap = 0;
        }
        if (!c->rbuf) {
            c->rbuf = malloc(WSC_RBUF_CAP);
            if (!c->rbuf) return fail_conn(c, 1011, "out of memory");
            c->rcap = WSC_RBUF_CAP;
        }
        if (c->rlen == c->rcap) { /* compact: the unparsed tail moves to the front */
            memmove(c->rbuf, c->rbuf + c->rpos, c->rlen - c->rpos);
            c->rlen -= c->rpos, c->rpos = 0;
        }
        dst = c->rbuf + c->rlen;
        room = c->rcap - c->rlen;
        if (room == 0) return fail_conn(c, 1002, "frame header does not fit the read buffer"); /* cannot happen */
    }
    for (;;) {
        ssize_t n = recv(c->fd, dst, room, 0);
        if (n > 0) {
            if (direct) {
                c->mlen += (size_t)n, c->frame_left -= (uint64_t)n;
            } else {
                c->rlen += (size_t)n;
            }
            return 1;
        }
        if (n == 0) return mark_dropped(c);
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        return mark_dropped(c);
    }
}

/* Nothing pending: give both buffers back, so an idle connection costs only its struct. */
static void release_idle(chat_wsc *c)
{
    if (c->rpos == c->rlen) {
        free(c->rbuf);
        c->rbuf = NULL, c->rcap = c->rpos = c->rlen = 0;
    }
    if (c->mlen == 0 && !c->in_frame && !c->msg_opcode) {
        free(c->msg);
        c->msg = NULL, c->mcap = 0;
    }
}

int chat_wsc_recv(chat_wsc *c, int timeout_ms, const char **msg, size_t *len)
{
    if (msg) *msg = NULL;
    if (len) *len = 0;
    if (!c) return CHAT_EINVAL;
    if (c->delivered) {
        c->delivered = false;
        c->mlen = 0;
        if (c->mcap > WSC_KEEP_MSG_CAP) {
            free(c->msg);
            c->msg = NULL, c->mcap = 0;
        }
    }
    if (c->done || c->fd < 0) return CHAT_ERR;
    int64_t deadline = deadline_after(timeout_ms);
    for (;;) {
        int rc = parse_buffered(c);
        if (rc < 0) return CHAT_ERR;
        if (rc == 1) {
            if (msg) *msg = (const char *)c->msg;
            if (len) *len = c->mlen;
            return 0;
        }
        rc = read_some(c);
        if (rc < 0) return CHAT_ERR;
        if (rc > 0) continue;
        int w = wait_fd(c->fd, POLLIN, deadline);
        if (w == 0) {
            release_idle(c);
            return CHAT_ETIMEOUT;
        }
        if (w < 0) return mark_dropped(c);
    }
}

int chat_wsc_recv_json(chat_wsc *c, int timeout_ms, struct json_object **out)
{
    *out = NULL;
    const char *m;
    size_t n;
    int rc = chat_wsc_recv(c, timeout_ms, &m, &n);
    if (rc) return rc;
    if (n > INT_MAX) return CHAT_EINVAL;
    json_tokener *tok = json_tokener_new();
    if (!tok) return CHAT_ENOMEM;
    json_object *o = json_tokener_parse_ex(tok, m, (int)n);
    bool whole = o && json_tokener_get_error(tok) == json_tokener_success && json_tokener_get_parse_end(tok) == n;
    json_tokener_free(tok);
    if (!whole) {
        json_object_put(o);
        return CHAT_EINVAL;
    }
    *out = o;
    return 0;
}

int chat_wsc_recv_type(chat_wsc *c, int timeout_ms, const char *type, struct json_object **out)
{
    *out = NULL;
    int64_t deadline = deadline_after(timeout_ms);
    for (;;) {
        json_object *o;
        int left = ms_left(deadline);
        int rc = chat_wsc_recv_json(c, left, &o);
        if (rc) return rc;
        json_object *t;
        if (json_object_is_type(o, json_type_object) && json_object_object_get_ex(o, "type", &t) &&
            json_object_is_type(t, json_type_string) && strcmp(json_object_get_string(t), type) == 0) {
            *out = o;
            return 0;
        }
        json_object_put(o);
    }
}

int chat_wsc_close_code(const chat_wsc *c) { return c ? c->close_code : 0; }
const char *chat_wsc_close_reason(const chat_wsc *c) { return c && c->close_reason ? c->close_reason : ""; }
int chat_wsc_fd(const chat_wsc *c) { return c ? c->fd : -1; }
unsigned chat_wsc_pong_count(const chat_wsc *c) { return c ? c->pongs : 0; }

void chat_wsc_close(chat_wsc *c, int code, const char *reason)
{
    if (!c) return;
    if (code != 0 && c->fd >= 0 && !c->done) {
        int rc = c->close_sent ? 0 : write_close(c, code, reason);
        int64_t deadline = deadline_after(1000);
        while (rc == 0 && !c->done) rc = chat_wsc_recv(c, ms_left(deadline), NULL, NULL);
    }
    if (c->fd >= 0) close(c->fd);
    free(c->rbuf);
    free(c->msg);
    free(c->close_reason);
    free(c);
}

/* ---- connecting ---- */

typedef struct wsc_url {
    char buf[WSC_MAX_URL];
    const char *host;     /* without brackets, for getaddrinfo */
    const char *hostport; /* for the Host header: as written, with ":port" unless 80 */
    const char *resource; /* path and query, "/" at least */
    const char *unix_path; /* ws+unix: the socket's path; NULL for TCP */
    char port[8];
    char hostport_buf[300];
} wsc_url;

static bool url_char_ok(unsigned char ch) { return ch > 0x20 && ch < 0x7f; }

/* "/path.sock[:/resource]" (after "ws+unix:"): buf holds path '\0' resource '\0'; Host is localhost. */
static int parse_unix_url(const char *a, wsc_url *u, char *err, size_t errlen)
{
    size_t pl = strcspn(a, ":");
    const char *res = a[pl] ? a + pl + 1 : "/";
    if (!pl || pl >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return chat_fail(err, errlen, CHAT_EINVAL, "ws+unix: socket path empty or too long");
    if (res[0] != '/') return chat_fail(err, errlen, CHAT_EINVAL, "ws+unix: the path after the socket must start with /");
    memcpy(u->buf, a, pl);
    u->buf[pl] = '\0';
    char *r = u->buf + pl + 1;
    strcpy(r, res);
    u->unix_path = u->buf;
    u->resource = r;
    u->host = "localhost";
    snprintf(u->port, sizeof u->port, "0");
    snprintf(u->hostport_buf, sizeof u->hostport_buf, "localhost");
    u->hostport = u->hostport_buf;
    return 0;
}

static int parse_url(const char *url, wsc_url *u, char *err, size_t errlen)
{
    size_t n = url ? strlen(url) : 0;
    if (!url || n >= sizeof u->buf) return chat_fail(err, errlen, CHAT_EINVAL, "url missing or too long");
    for (size_t i = 0; i < n; i++)
        if (!url_char_ok((unsigned char)url[i]))
            return chat_fail(err, errlen, CHAT_EINVAL, "url contains a space or control character");
    if (strncasecmp(url, "wss://", 6) == 0)
        return chat_fail(err, errlen, CHAT_EINVAL, "wss:// is not supported (terminate TLS in front)");
    u->unix_path = NULL;
    if (strncasecmp(url, "ws+unix:", 8) == 0) return parse_unix_url(url + 8, u, err, errlen);
    if (strncasecmp(url, "ws://", 5) != 0) return chat_fail(err, errlen, CHAT_EINVAL, "url must start with ws://");
    const char *a = url + 5;
    size_t alen = strcspn(a, "/?#");
    const char *rest = a + alen;
    if (*rest == '#') return chat_fail(err, errlen, CHAT_EINVAL, "url fragment not allowed");
    /* buf holds: host '\0' resource '\0' */
    const char *hs, *he, *ps = NULL;
    if (alen && a[0] == '[') {
        const char *close = memchr(a, ']', alen);
        if (!close) return chat_fail(err, errlen, CHAT_EINVAL, "unterminated [ in url host");
        hs = a + 1, he = close;
        if (close + 1 < a + alen) {
            if (close[1] != ':') return chat_fail(err, errlen, CHAT_EINVAL, "junk after ] in url host");
            ps = close + 2;
        }
    } else {
        hs = a;
        const char *colon = memchr(a, ':', alen);
        he = colon ? colon : a + alen;
        if (colon) ps = colon + 1;
    }
    size_t hl = (size_t)(he - hs);
    if (hl == 0 || hl > 253) return chat_fail(err, errlen, CHAT_EINVAL, "url host empty or too long");
    if (memchr(hs, '@', hl)) return chat_fail(err, errlen, CHAT_EINVAL, "user info in url not supported");
    unsigned long port = 80;
    if (ps) {
        size_t pl = (size_t)(a + alen - ps);
        if (pl == 0 || pl > 5 || strspn(ps, "0123456789") < pl)
            return chat_fail(err, errlen, CHAT_EINVAL, "bad port in url");
        port = strtoul(ps, NULL, 10);
        if (port == 0 || port > 65535) return chat_fail(err, errlen, CHAT_EINVAL, "port out of range in url");
    }
    snprintf(u->port, sizeof u->port, "%lu", port);
    memcpy(u->buf, hs, hl);
    u->buf[hl] = '\0';
    u->host = u->buf;
    char *res = u->buf + hl + 1;
    if (*rest == '/') {
        strcpy(res, rest);
    } else { /* "ws://h" or "ws://h?q" */
        res[0] = '/';
        strcpy(res + 1, rest);
    }
    u->resource = res;
    bool v6 = a[0] == '[';
    if (port == 80)
        snprintf(u->hostport_buf, sizeof u->hostport_buf, "%s%s%s", v6 ? "[" : "", u->host, v6 ? "]" : "");
    else
        snprintf(u->hostport_buf, sizeof u->hostport_buf, "%s%s%s:%lu", v6 ? "[" : "", u->host, v6 ? "]" : "",
                 port);
    u->hostport = u->hostport_buf;
    return 0;
}

static bool has_ctl(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return true;
    return false;
}

/* A Unix socket: a local connect is immediate (or refused), then the fd is made non-blocking. */
static int open_unix_socket(const wsc_url *u, char *err, size_t errlen)
{
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", u->unix_path);
    int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) < 0 || fcntl(s, F_SETFL, O_NONBLOCK) < 0) {
        chat_fail(err, errlen, CHAT_ERR, "connect to %s: %s", u->unix_path, strerror(errno));
        if (s >= 0) close(s);
        return -1;
    }
    return s;
}

/* Non-blocking connect to the first address that answers before the deadline. Returns the fd or -1. */
static int open_socket(const wsc_url *u, const char *source, int64_t deadline, char *err, size_t errlen)
{
    if (u->unix_path) return open_unix_socket(u, err, errlen);
    struct sockaddr_storage src;
    socklen_t srclen = 0;
    int family = AF_UNSPEC;
    memset(&src, 0, sizeof src);
    if (source) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&src;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&src;
        if (inet_pton(AF_INET, source, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET, srclen = sizeof *s4, family = AF_INET;
        } else if (inet_pton(AF_INET6, source, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6, srclen = sizeof *s6, family = AF_INET6;
        } else {
            chat_fail(err, errlen, CHAT_EINVAL, "source address is not an IP address");
            return -1;
        }
    }
    struct addrinfo hints = {.ai_family = family, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(u->host, u->port, &hints, &res);
    if (gai) {
        chat_fail(err, errlen, CHAT_ERR, "cannot resolve %s: %s", u->host, gai_strerror(gai));
        return -1;
    }
    int fd = -1, last_errno = 0;
    bool timed_out = false;
    for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
        int s = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (s < 0) {
            last_errno = errno;
            continue;
        }
        int one = 1;
        if (srclen) {
#ifdef IP_BIND_ADDRESS_NO_PORT
            /* the port is chosen at connect time, per destination: more than 28k connections per source */
            setsockopt(s, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
#endif
            if (bind(s, (struct sockaddr *)&src, srclen) < 0) {
                last_errno = errno;
                close(s);
                continue;
            }
        }
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(s, ai->ai_addr, ai->ai_addrlen) < 0 && errno != EINPROGRESS) {
            last_errno = errno;
            close(s);
            continue;
        }
        int w = wait_fd(s, POLLOUT, deadline);
        int soerr = 0;
        socklen_t sl = sizeof soerr;
        if (w <= 0) {
            if (w == 0) timed_out = true;
            last_errno = w == 0 ? ETIMEDOUT : errno;
            close(s);
            if (timed_out) break;
            continue;
        }
        if (getsockopt(s, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 || soerr) {
            last_errno = soerr ? soerr : errno;
            close(s);
            continue;
        }
        fd = s;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        if (timed_out)
            chat_fail(err, errlen, CHAT_ETIMEOUT, "connect to %s port %s timed out", u->host, u->port);
        else
            chat_fail(err, errlen, CHAT_ERR, "connect to %s port %s: %s", u->host, u->port, strerror(last_errno));
    }
    return fd;
}

/* Value of header `name` in the header block [h, end) (lines after the status line), trimmed; the first
 * occurrence. NULL when absent. */
static const char *find_header(const char *h, const char *end, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *line = memchr(h, '\n', (size_t)(end - h));
    while (line && line < end) {
        line++;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol) eol = end;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon && (size_t)(colon - line) == nl && strncasecmp(line, name, nl) == 0) {
            const char *v = colon + 1, *ve = eol;
            while (v < ve && (*v == ' ' || *v == '\t')) v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        line = eol < end ? eol : NULL;
    }
    return NULL;
}

/* True when the comma-separated list [v, v+n) holds token (case-insensitive). */
static bool list_has_token(const char *v, size_t n, const char *token)
{
    size_t tl = strlen(token);
    const char *end = v + n;
    while (v < end) {
        const char *comma = memchr(v, ',', (size_t)(end - v));
        const char *ie = comma ? comma : end;
        const char *s = v;
        while (s < ie && (*s == ' ' || *s == '\t')) s++;
        const char *e = ie;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t')) e--;
        if ((size_t)(e - s) == tl && strncasecmp(s, token, tl) == 0) return true;
        v = comma ? comma + 1 : end;
    }
    return false;
}

/* "HTTP/1.x NNN": the status code, or -1. */
static int parse_status(const char *r, size_t n)
{
    if (n < 12 || strncmp(r, "HTTP/1.", 7) != 0 || r[8] != ' ') return -1;
    if (r[9] < '0' || r[9] > '9' || r[10] < '0' || r[10] > '9' || r[11] < '0' || r[11] > '9') return -1;
    if (n > 12 && r[12] != ' ' && r[12] != '\r') return -1;
    return (r[9] - '0') * 100 + (r[10] - '0') * 10 + (r[11] - '0');
}

/* Sends the upgrade request and checks the response; leftover bytes go to c's read buffer. */
static int handshake(chat_wsc *c, const wsc_url *u, const chat_wsc_opts *o, int64_t deadline, int *http_status,
                     char *err, size_t errlen)
{
    unsigned char raw_key[16];
    char key[25], want[29];
    if (fill_random(raw_key, sizeof raw_key)) return chat_fail(err, errlen, CHAT_ERR, "getrandom failed");
    EVP_EncodeBlock((unsigned char *)key, raw_key, sizeof raw_key);
    if (chat_wsf_accept(key, strlen(key), want)) return chat_fail(err, errlen, CHAT_ERR, "SHA-1 failed");

    chat_buf req;
    chat_buf_init(&req);
    int rc = chat_buf_printf(&req,
                             "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n",
                             u->resource, u->hostport, key);
    if (!rc && o->origin) rc = chat_buf_printf(&req, "Origin: %s\r\n", o->origin);
    if (!rc && o->extra_headers && *o->extra_headers) {
        size_t el = strlen(o->extra_headers);
        rc = chat_buf_append(&req, o->extra_headers, el);
        if (!rc && (el < 2 || strcmp(o->extra_headers + el - 2, "\r\n") != 0)) rc = chat_buf_puts(&req, "\r\n");
    }
    if (!rc) rc = chat_buf_puts(&req, "\r\n");
    if (rc) {
        chat_buf_free(&req);
        return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    }
    /* the request is small: send with the connect deadline rather than the per-send stall limit */
    size_t off = 0;
    while (off < req.len) {
        ssize_t n = send(c->fd, req.data + off, req.len - off, MSG_NOSIGNAL);
        if (n > 0) {
            off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && wait_fd(c->fd, POLLOUT, deadline) > 0) continue;
        chat_buf_free(&req);
        return chat_fail(err, errlen, CHAT_ERR, "sending the upgrade request failed");
    }
    chat_buf_free(&req);

    char *resp = malloc(WSC_MAX_RESPONSE_HEADERS + 1);
    if (!resp) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    size_t got = 0, hlen = 0;
    int ret = 0;
    while (!hlen) {
        if (got == WSC_MAX_RESPONSE_HEADERS) {
            int st = parse_status(resp, got);
            if (st > 0 && http_status) *http_status = st;
            ret = chat_fail(err, errlen, CHAT_ERR, "response headers over %d bytes", WSC_MAX_RESPONSE_HEADERS);
            goto out;
        }
        ssize_t n = recv(c->fd, resp + got, WSC_MAX_RESPONSE_HEADERS - got, 0);
        if (n > 0) {
            size_t from = got > 3 ? got - 3 : 0;
            got += (size_t)n;
            const char *hend = memmem(resp + from, got - from, "\r\n\r\n", 4);
            if (hend) hlen = (size_t)(hend - resp) + 4;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(c->fd, POLLIN, deadline);
            if (w > 0) continue;
            ret = w == 0 ? chat_fail(err, errlen, CHAT_ETIMEOUT, "timed out waiting for the upgrade response")
                         : chat_fail(err, errlen, CHAT_ERR, "poll failed");
            goto out;
        }
        int st = parse_status(resp, got);
        if (st > 0 && http_status) *http_status = st;
        if (st > 0 && st != 101)
            ret = chat_fail(err, errlen, CHAT_ERR, "handshake refused: HTTP %d", st);
        else
            ret = chat_fail(err, errlen, CHAT_ERR, "connection closed during the handshake");
        goto out;
    }
    resp[got] = '\0';
    int status = parse_status(resp, hlen);
    if (status < 0) {
        ret = chat_fail(err, errlen, CHAT_ERR, "malformed HTTP status line");
        goto out;
    }
    if (http_status) *http_status = status;
    if (status != 101) {
        ret = chat_fail(err, errlen, CHAT_ERR, "handshake refused: HTTP %d", status);
        goto out;
    }
    const char *hdrs_end = resp + hlen - 2; /* the last header line's \r\n stays in range */
    size_t vl = 0;
    const char *v = find_header(resp, hdrs_end, "Upgrade", &vl);
    if (!v || vl != 9 || strncasecmp(v, "websocket", 9) != 0) {
        ret = chat_fail(err, errlen, CHAT_ERR, "101 response without Upgrade: websocket");
        goto out;
    }
    v = find_header(resp, hdrs_end, "Connection", &vl);
    if (!v || !list_has_token(v, vl, "upgrade")) {
        ret = chat_fail(err, errlen, CHAT_ERR, "101 response without Connection: upgrade");
        goto out;
    }
    v = find_header(resp, hdrs_end, "Sec-WebSocket-Accept", &vl);
    if (!v || vl != 28 || memcmp(v, want, 28) != 0) {
        ret = chat_fail(err, errlen, CHAT_ERR, "%s Sec-WebSocket-Accept in the 101 response", v ? "wrong" : "no");
        goto out;
    }
    if (find_header(resp, hdrs_end, "Sec-WebSocket-Extensions", &vl)) {
        ret = chat_fail(err, errlen, CHAT_ERR, "server negotiated an extension that was not offered");
        goto out;
    }
    if (got > hlen) { /* the first frame(s) arrived with the headers */
        size_t extra = got - hlen;
        size_t cap = extra > WSC_RBUF_CAP ? extra : WSC_RBUF_CAP;
        c->rbuf = malloc(cap);
        if (!c->rbuf) {
            ret = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(c->rbuf, resp + hlen, extra);
        c->rcap = cap, c->rlen = extra, c->rpos = 0;
    }
out:
    free(resp);
    return ret;
}

chat_wsc *chat_wsc_connect(const char *url, const chat_wsc_opts *opts, int *http_status, char *err, size_t errlen)
{
    static const chat_wsc_opts no_opts;
    const chat_wsc_opts *o = opts ? opts : &no_opts;
    if (http_status) *http_status = 0;
    int timeout = o->timeout_ms > 0 ? o->timeout_ms : WSC_DEFAULT_TIMEOUT_MS;
    int64_t deadline = deadline_after(timeout);

    if ((o->origin && has_ctl(o->origin)) || (o->source_addr && has_ctl(o->source_addr))) {
        chat_fail(err, errlen, CHAT_EINVAL, "control characters in origin or source address");
        return NULL;
    }
    wsc_url *u = malloc(sizeof *u);
    chat_wsc *c = calloc(1, sizeof *c);
    if (!u || !c) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        goto fail;
    }
    c->fd = -1;
    c->io_timeout_ms = timeout;
    c->empty_pongs = o->empty_pongs;
    if (parse_url(url, u, err, errlen)) goto fail;
    c->fd = open_socket(u, o->source_addr, deadline, err, errlen);
    if (c->fd < 0) goto fail;
    if (handshake(c, u, o, deadline, http_status, err, errlen)) goto fail;
    free(u);
    return c;
fail:
    free(u);
    if (c) {
        if (c->fd >= 0) close(c->fd);
        free(c->rbuf);
        free(c);
    }
    return NULL;
}
