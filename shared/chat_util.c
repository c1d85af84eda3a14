/* Byte buffers, UUIDs, UTF-8 checks, clocks and the stop signals of a main. The UTF-8 validator follows
 * RFC 3629 table 3-7 byte ranges, so overlongs and surrogates are rejected without decoding. */
#include "chat_util.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "chat_common.h"

void chat_buf_init(chat_buf *b) { b->data = NULL, b->len = 0, b->cap = 0; }

void chat_buf_free(chat_buf *b)
{
    free(b->data);
    chat_buf_init(b);
}

void chat_buf_reset(chat_buf *b)
{
    b->len = 0;
    if (b->data) b->data[0] = '\0';
}

static int buf_reserve(chat_buf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap) return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->len + extra + 1) {
        if (cap > SIZE_MAX / 2) return CHAT_ENOMEM;
        cap *= 2;
    }
    char *p = realloc(b->data, cap);
    if (!p) return CHAT_ENOMEM;
    b->data = p, b->cap = cap;
    return 0;
}

int chat_buf_append(chat_buf *b, const void *data, size_t len)
{
    if (buf_reserve(b, len)) return CHAT_ENOMEM;
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int chat_buf_puts(chat_buf *b, const char *s) { return chat_buf_append(b, s, strlen(s)); }

int chat_buf_printf(chat_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0) return CHAT_ERR;
    if (buf_reserve(b, (size_t)n)) return CHAT_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

char *chat_buf_take(chat_buf *b)
{
    char *p = b->data;
    if (!p) p = calloc(1, 1);
    chat_buf_init(b);
    return p;
}

int chat_array_reserve(void *arrp, size_t *cap, size_t n, size_t elem_size)
{
    if (n < *cap) return 0;
    size_t ncap = *cap ? *cap : 8;
    while (ncap <= n) {
        if (ncap > SIZE_MAX / 2 / elem_size) return CHAT_ENOMEM;
        ncap *= 2;
    }
    void *old;
    memcpy(&old, arrp, sizeof old);
    void *p = realloc(old, ncap * elem_size);
    if (!p) return CHAT_ENOMEM;
    memcpy(arrp, &p, sizeof p);
    *cap = ncap;
    return 0;
}

static int random_bytes(unsigned char *r, size_t len)
{
    size_t got = 0;
    while (got < len) {
        ssize_t n = getrandom(r + got, len - got, 0);
        if (n < 0) return CHAT_ERR;
        got += (size_t)n;
    }
    return 0;
}

static void uuid_format(const unsigned char r[16], char out[37])
{
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0], r[1], r[2],
             r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]);
}

size_t chat_u64_dec(char *out, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; out && i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

int chat_uuid4(char out[37])
{
    unsigned char r[16];
    if (random_bytes(r, sizeof r)) return CHAT_ERR;
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    uuid_format(r, out);
    return 0;
}

int chat_uuid7(char out[37])
{
    unsigned char r[16];
    if (random_bytes(r, sizeof r)) return CHAT_ERR;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t ms = (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
    for (int i = 0; i < 6; i++)
        r[i] = (unsigned char)(ms >> (40 - 8 * i));
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x70);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    uuid_format(r, out);
    return 0;
}

size_t chat_utf8_char(const char *str, size_t avail)
{
    const unsigned char *s = (const unsigned char *)str;
    unsigned char c = s[0];
    if (c < 0x80) return 1;
    size_t n;
    unsigned char lo = 0x80, hi = 0xBF; /* the allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) n = 2;
    else if (c == 0xE0) n = 3, lo = 0xA0;
    else if (c == 0xED) n = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) n = 3;
    else if (c == 0xF0) n = 4, lo = 0x90;
    else if (c >= 0xF1 && c <= 0xF3) n = 4;
    else if (c == 0xF4) n = 4, hi = 0x8F;
    else return 0;
    for (size_t i = 1; i < n; i++) {
        if (i >= avail) return CHAT_UTF8_CUT;
        unsigned char l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
        if (s[i] < l || s[i] > h) return 0;
    }
    return n;
}

bool chat_utf8_valid(const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        size_t n = chat_utf8_char((const char *)p + i, len - i);
        if (n == 0 || n == CHAT_UTF8_CUT) return false;
        i += n;
    }
    return true;
}

size_t chat_utf8_prefix(const char *s, size_t len, size_t max)
{
    if (len <= max) return len;
    size_t i = max;
    /* step back over continuation bytes to the start of the cut sequence */
    while (i > 0 && ((unsigned char)s[i] & 0xC0) == 0x80) i--;
    return i;
}

char *chat_read_file(const char *path, size_t max, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    chat_buf b;
    chat_buf_init(&b);
    char tmp[8192];
    size_t n;
    int saved = 0;
    while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) {
        if (max && b.len + n > max) {
            saved = EFBIG;
            break;
        }
        if (chat_buf_append(&b, tmp, n)) {
            saved = ENOMEM;
            break;
        }
    }
    if (!saved && ferror(f)) saved = EIO;
    fclose(f);
    if (saved) {
        chat_buf_free(&b);
        errno = saved;
        return NULL;
    }
    if (len) *len = b.len;
    return chat_buf_take(&b);
}

int64_t chat_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t chat_now_ms(void) { return chat_now_us() / 1000; }

void chat_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

bool chat_id_valid(const char *s)
{
    if (!s) return false;
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char c = (unsigned char)s[n];
        if (!(isalnum(c) || c == '.' || c == '_' || c == ':' || c == '-')) return false;
        if (n >= CHAT_ID_MAX) return false;
    }
    return n > 0;
}

const char *chat_strcasestr(const char *hay, const char *needle)
{
    size_t n = strlen(needle);
    if (!n) return hay;
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0) return hay;
    return NULL;
}

bool chat_id_equal(const char *a, const char *b) { return strcasecmp(a, b) == 0; }

uint64_t chat_id_hash(uint64_t h, const char *id)
{
    for (const char *p = id; *p; p++)
        h = (h ^ (unsigned char)tolower((unsigned char)*p)) * 1099511628211ull;
    return h;
}

char *chat_strdup0(const char *s) { return s ? strdup(s) : NULL; }

void chat_handle_stop_signals(void (*handler)(int))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = handler;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

const char *chat_list_next(const char **at, size_t *len)
{
    const char *item = *at;
    if (!item || !*item) return NULL;
    *len = strcspn(item, ",");
    *at = item + *len + (item[*len] == ',');
    return item;
}
