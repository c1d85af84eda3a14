/* chat_origin: the WebSocket handshake's Origin rules, one table of (Origin, Host, allowlist) -> verdict,
 * and the start-up check of CHAT_ALLOWED_ORIGINS. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>

#include "chat_common.h"
#include "chat_origin.h"
#include "testutil.h"

static void test_allowed_table(void **state)
{
    (void)state;
    static const struct {
        const char *name, *origin, *host, *list;
        bool allowed;
    } cases[] = {
        /* no Origin: not a browser */
        {"no origin", NULL, "chat.example.com", NULL, true},
        {"empty origin", "", "chat.example.com", NULL, true},
        {"no origin, no host", NULL, NULL, NULL, true},
        /* the page's own origin */
        {"same origin", "https://chat.example.com", "chat.example.com", NULL, true},
        {"same origin with port", "http://127.0.0.1:8000", "127.0.0.1:8000", NULL, true},
        {"foreign origin", "https://evil.example", "chat.example.com", NULL, false},
        {"other port", "http://127.0.0.1:9000", "127.0.0.1:8000", NULL, false},
        {"origin port, host none", "http://chat.example.com:8000", "chat.example.com", NULL, false},
        {"host port, origin none", "http://chat.example.com", "chat.example.com:8000", NULL, false},
        {"http default port in host", "http://chat.example.com", "chat.example.com:80", NULL, true},
        {"https default port in host", "https://chat.example.com", "chat.example.com:443", NULL, true},
        {"https default port in origin", "https://chat.example.com:443", "chat.example.com", NULL, true},
        {"https origin, host :80", "https://chat.example.com", "chat.example.com:80", NULL, false},
        {"case of host", "https://Chat.Example.COM", "chat.example.com", NULL, true},
        {"case of Host header", "https://chat.example.com", "CHAT.example.com", NULL, true},
        {"case of scheme", "HTTPS://chat.example.com", "chat.example.com", NULL, true},
        {"suffix of host", "https://chat.example.com.evil", "chat.example.com", NULL, false},
        {"prefix of host", "https://evilchat.example.com", "chat.example.com", NULL, false},
        {"no host header", "https://chat.example.com", NULL, NULL, false},
        {"empty host header", "https://chat.example.com", "", NULL, false},
        {"ipv6 same", "http://[::1]:8000", "[::1]:8000", NULL, true},
        {"ipv6 other spelling", "http://[0:0::1]:8000", "[::1]:8000", NULL, true},
        {"ipv6 case", "http://[FE80::1]", "[fe80::1]", NULL, true},
        {"ipv6 other address", "http://[::2]:8000", "[::1]:8000", NULL, false},
        {"ipv6 other port", "http://[::1]:8001", "[::1]:8000", NULL, false},
        {"ipv6 vs name", "http://[::1]:8000", "localhost:8000", NULL, false},
        {"malformed ipv6", "http://[::g]:8000", "[::g]:8000", NULL, false},
        /* malformed Origins are never the page's own */
        {"null origin", "null", "null", NULL, false},
        {"no scheme", "chat.example.com", "chat.example.com", NULL, false},
        {"path", "https://chat.example.com/", "chat.example.com", NULL, false},
        {"userinfo", "https://user@chat.example.com", "chat.example.com", NULL, false},
        {"bad port", "http://chat.example.com:99999", "chat.example.com:99999", NULL, false},
        {"empty port", "http://chat.example.com:", "chat.example.com:", NULL, false},
        {"star in origin", "https://*.example.com", "*.example.com", NULL, false},
        /* the allowlist: exact origins */
        {"listed", "https://app.example.org", "chat.example.com", "https://app.example.org", true},
        {"listed among others", "https://b.example", "chat.example.com", "https://a.example, https://b.example ,", true},
        {"listed, case", "https://APP.example.org", "chat.example.com", "HTTPS://app.EXAMPLE.org", true},
        {"listed, other scheme", "http://app.example.org", "chat.example.com", "https://app.example.org", false},
        {"listed, other port", "https://app.example.org:8443", "x", "https://app.example.org", false},
        {"listed with port", "https://app.example.org:8443", "x", "https://app.example.org:8443", true},
        {"listed default port", "https://app.example.org", "x", "https://app.example.org:443", true},
        {"listed, longer origin", "https://app.example.org.evil", "x", "https://app.example.org", false},
        {"scheme-less entry, http", "http://app.example.org", "x", "app.example.org", true},
        {"scheme-less entry, https", "https://app.example.org", "x", "app.example.org", true},
        {"scheme-less entry, port", "https://app.example.org:8443", "x", "app.example.org", false},
        {"listed ipv6", "http://[::1]:3000", "x", "http://[0::1]:3000", true},
        /* globs */
        {"glob one label", "https://app.domain.com", "x", "*.domain.com", true},
        {"glob two labels", "https://a.b.domain.com", "x", "https://*.domain.com", true},
        {"glob, the domain itself", "https://domain.com", "x", "*.domain.com", false},
        {"glob, evil-domain.com", "https://evil-domain.com", "x", "*.domain.com", false},
        {"glob, domain.com.evil", "https://app.domain.com.evil", "x", "*.domain.com", false},
        {"glob, domain.com.evil bare", "https://domain.com.evil", "x", "*.domain.com", false},
        {"glob, xdomain.com", "https://xdomain.com", "x", "*.domain.com", false},
        {"glob, scheme", "http://app.domain.com", "x", "https://*.domain.com", false},
        {"glob, port", "https://app.domain.com:8443", "x", "*.domain.com:8443", true},
        {"glob, wrong port", "https://app.domain.com:8443", "x", "*.domain.com", false},
        {"glob, case", "https://APP.Domain.COM", "x", "*.DOMAIN.com", true},
        /* the opaque origin and the wildcard */
        {"null listed", "null", "x", "null", true},
        {"null not listed", "null", "x", "https://app.example.org", false},
        {"star", "https://evil.example", "x", "*", true},
        {"star among others", "https://evil.example", "x", "https://a.example,*", true},
        {"star admits null", "null", "x", "*", true},
        {"malformed entries ignored", "https://evil.example", "x", "https://, *., **.example, evil", false},
        {"a malformed origin never matches an entry", "https://evil.example/", "x", "https://evil.example", false},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        bool got = chat_origin_allowed(cases[i].origin, cases[i].host, cases[i].list);
        if (got != cases[i].allowed)
            fail_msg("%s: Origin %s, Host %s, list %s: %s", cases[i].name, cases[i].origin ? cases[i].origin : "-",
                     cases[i].host ? cases[i].host : "-", cases[i].list ? cases[i].list : "-",
                     got ? "allowed" : "refused");
    }
}

static void test_list_check(void **state)
{
    (void)state;
    static const struct {
        const char *list;
        int rc;
        bool any;
    } cases[] = {
        {NULL, 0, false},
        {"", 0, false},
        {" , ", 0, false},
        {"https://a.example, http://b.example:8080, *.c.example, d.example, null", 0, false},
        {"https://[::1]:8000", 0, false},
        {"*", 0, true},
        {"https://a.example, *", 0, true},
        {"https://a.example/", CHAT_EINVAL, false},
        {"https://", CHAT_EINVAL, false},
        {"*.", CHAT_EINVAL, false},
        {"a.*.example", CHAT_EINVAL, false},
        {"https://a.example:http", CHAT_EINVAL, false},
        {"https://[nope]", CHAT_EINVAL, false},
        {"https://a..example", CHAT_EINVAL, false},
    };
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        bool any = !cases[i].any;
        char err[256] = "";
        int rc = chat_origin_list_check(cases[i].list, &any, err, sizeof err);
        if (rc != cases[i].rc) fail_msg("%s: rc %d (%s)", cases[i].list ? cases[i].list : "NULL", rc, err);
        if (rc == 0 && any != cases[i].any) fail_msg("%s: any %d", cases[i].list, any);
        if (rc) assert_non_null(strstr(err, "CHAT_ALLOWED_ORIGINS"));
    }
    assert_int_equal(chat_origin_list_check("*", NULL, NULL, 0), 0); /* NULL any and err are allowed */
}

TESTUTIL_MAIN(NULL, NULL,
              cmocka_unit_test(test_allowed_table),
              cmocka_unit_test(test_list_check))
