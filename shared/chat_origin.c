/* The Origin check of the WebSocket handshake (see chat_origin.h for the rules).
 *
 * Everything is parsed into (scheme, host, port) before it is compared, never matched as raw text, so
 * "https://chat.example.com.evil" cannot pass for chat.example.com and "evil-example.com" cannot pass for
 * *.example.com: a glob matches only whole labels in front of its domain. Names are compared in lower
 * case (browsers serialise them so, but a Host header may not be), IPv6 literals as addresses
 * ([0:0::1] is [::1]). Anything that does not parse is refused, never guessed at. */
#include "chat_origin.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "chat_common.h"

#define ORIGIN_ENTRY_SHOWN 100 /* how much of a bad allowlist entry an error message repeats */

typedef struct origin_parts {
    char scheme[16]; /* lower case; "" when an allowlist entry names none */
    char host[256];  /* lower case; an IPv6 literal keeps its brackets; "*.domain" in an allowlist entry */
    int port;        /* the explicit port, -1 when none */
} origin_parts;

static int default_port(const char *scheme)
{
    if (!strcmp(scheme, "http") || !strcmp(scheme, "ws")) return 80;
    if (!strcmp(scheme, "https") || !strcmp(scheme, "wss")) return 443;
    return -1;
}

/* The port a connection to p uses when its scheme is scheme. */
static int effective_port(const origin_parts *p, const char *scheme)
{
    return p->port >= 0 ? p->port : default_port(scheme);
}

static bool ipv6_literal(const char *s, size_t n, struct in6_addr *addr)
{
    char tmp[INET6_ADDRSTRLEN + 1];
    if (n < 3 || s[0] != '[' || s[n - 1] != ']' || n - 2 >= sizeof tmp) return false;
    memcpy(tmp, s + 1, n - 2);
    tmp[n - 2] = '\0';
    return inet_pton(AF_INET6, tmp, addr) == 1;
}

/* A host name: labels of letters, digits, '-' and '_' separated by single dots (a final dot allowed);
 * with glob, the first label may be "*". */
static bool host_name(const char *s, size_t n, bool glob)
{
    if (glob && n > 2 && s[0] == '*' && s[1] == '.') s += 2, n -= 2;
    if (!n || s[0] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '.' ? (i + 1 < n && s[i + 1] == '.') : !(isalnum(c) || c == '-' || c == '_')) return false;
    }
    return true;
}

/* host[:port] from s[0..n) into o->host and o->port. */
static bool parse_hostport(const char *s, size_t n, bool glob, origin_parts *o)
{
    size_t hl = 0;
    struct in6_addr a6;
    if (n && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        hl = close ? (size_t)(close - s) + 1 : 0;
        if (!hl || !ipv6_literal(s, hl, &a6)) return false;
    } else {
        while (hl < n && s[hl] != ':')
            hl++;
        if (!host_name(s, hl, glob)) return false;
    }
    if (hl >= sizeof o->host) return false;
    for (size_t i = 0; i < hl; i++)
        o->host[i] = (char)tolower((unsigned char)s[i]);
    o->host[hl] = '\0';
    o->port = -1;
    if (hl == n) return true;
    if (s[hl] != ':' || n - hl - 1 < 1 || n - hl - 1 > 5) return false;
    int port = 0;
    for (size_t i = hl + 1; i < n; i++) {
        if (!isdigit((unsigned char)s[i])) return false;
        port = port * 10 + (s[i] - '0');
    }
    if (port > 65535) return false;
    o->port = port;
    return true;
}

/* [scheme://]host[:port] from s[0..n). need_scheme: an Origin (always has one); glob: an allowlist entry. */
static bool parse_origin(const char *s, size_t n, bool need_scheme, bool glob, origin_parts *o)
{
    memset(o, 0, sizeof *o);
    const char *sep = NULL;
    for (size_t i = 0; i + 3 <= n && !sep; i++)
        if (!memcmp(s + i, "://", 3)) sep = s + i;
    if (!sep) return !need_scheme && parse_hostport(s, n, glob, o);
    size_t sl = (size_t)(sep - s);
    if (!sl || sl >= sizeof o->scheme || !isalpha((unsigned char)s[0])) return false;
    for (size_t i = 0; i < sl; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!isalnum(c) && c != '+' && c != '-' && c != '.') return false;
        o->scheme[i] = (char)tolower(c);
    }
    return parse_hostport(sep + 3, n - sl - 3, glob, o);
}

static bool same_host(const char *a, const char *b)
{
    struct in6_addr x, y;
    if (a[0] == '[' && b[0] == '[')
        return ipv6_literal(a, strlen(a), &x) && ipv6_literal(b, strlen(b), &y) && !memcmp(&x, &y, sizeof x);
    return !strcmp(a, b);
}

/* The page's own origin: the Origin's host and port are the Host's. */
static bool same_origin(const origin_parts *o, const char *host)
{
    origin_parts h;
    memset(&h, 0, sizeof h);
    return parse_hostport(host, strlen(host), false, &h) && same_host(o->host, h.host) &&
           effective_port(o, o->scheme) == effective_port(&h, o->scheme);
}

static bool entry_matches(const origin_parts *e, const origin_parts *o)
{
    if (e->scheme[0] && strcmp(e->scheme, o->scheme)) return false;
    if (effective_port(e, o->scheme) != effective_port(o, o->scheme)) return false;
    if (e->host[0] == '*') { /* "*.domain": one or more labels, then ".domain" */
        size_t sl = strlen(e->host + 1), hl = strlen(o->host);
        return o->host[0] != '[' && hl > sl && !strcmp(o->host + hl - sl, e->host + 1);
    }
    return same_host(e->host, o->host);
}

/* The next comma-separated entry of *p, blanks trimmed: its start, and its length in *n. NULL at the end. */
static const char *next_entry(const char **p, size_t *n)
{
    const char *s = *p;
    while (*s == ' ' || *s == '\t' || *s == ',')
        s++;
    if (!*s) return NULL;
    const char *e = s;
    while (*e && *e != ',')
        e++;
    *p = e;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
        e--;
    *n = (size_t)(e - s);
    return s;
}

static bool is_word(const char *s, size_t n, const char *word)
{
    return n == strlen(word) && !strncasecmp(s, word, n);
}

bool chat_origin_allowed(const char *origin, const char *host, const char *allowlist)
{
    if (!origin || !*origin) return true; /* not a browser */
    origin_parts o, e;
    bool parsed = parse_origin(origin, strlen(origin), true, false, &o);
    if (parsed && host && same_origin(&o, host)) return true;
    const char *p = allowlist ? allowlist : "", *s;
    size_t n;
    while ((s = next_entry(&p, &n))) {
        if (is_word(s, n, "*")) return true;
        if (is_word(s, n, "null")) {
            if (!strcasecmp(origin, "null")) return true;
        } else if (parsed && parse_origin(s, n, false, true, &e) && entry_matches(&e, &o)) {
            return true;
        }
    }
    return false;
}

int chat_origin_list_check(const char *allowlist, bool *any, char *err, size_t errlen)
{
    if (any) *any = false;
    const char *p = allowlist ? allowlist : "", *s;
    size_t n;
    origin_parts e;
    while ((s = next_entry(&p, &n))) {
        if (is_word(s, n, "*")) {
            if (any) *any = true;
        } else if (!is_word(s, n, "null") && !parse_origin(s, n, false, true, &e)) {
            return chat_fail(err, errlen, CHAT_EINVAL,
                             "CHAT_ALLOWED_ORIGINS: \"%.*s\" is not an origin (scheme://host[:port], host[:port], "
                             "*.domain, null or *)",
                             (int)(n > ORIGIN_ENTRY_SHOWN ? ORIGIN_ENTRY_SHOWN : n), s);
        }
    }
    return 0;
}
