/* Which web pages may open a WebSocket: the Origin check of the handshake (pure string functions, no
 * I/O, so every rule is unit-tested and any front end can use it).
 *
 * Browsers send Origin on every WebSocket handshake and let any page connect anywhere, so without this
 * check a foreign page could open an authenticated socket with its visitor's credentials. By default
 * only the page's own origin passes (the Origin's host and port equal the request's Host) and clients
 * that send no Origin (non-browser programs, which hold their own tokens). CHAT_ALLOWED_ORIGINS lists
 * other origins. */
#ifndef CHAT_ORIGIN_H
#define CHAT_ORIGIN_H

#include <stdbool.h>
#include <stddef.h>

/* Whether a handshake may proceed. origin: the Origin header (NULL or "" = none sent: allowed). host: the
 * request's Host header (NULL = none; then only the allowlist can admit an Origin). allowlist: comma-
 * separated entries (NULL = none), each one of
 *   *                           any origin (a deliberate choice: chat_origin_list_check reports it)
 *   null                        the opaque origin "null" (sandboxed frames, file: pages)
 *   scheme://host[:port]        exactly that origin (scheme and host case-insensitive)
 *   host[:port]                 that host with any scheme
 * where host may be *.domain: any name ending in ".domain" (not domain itself). An entry without a port
 * matches the scheme's default port only (80 for http/ws, 443 for https/wss). The same-origin rule: the
 * Origin's host equals the Host's (IPv6 literals compared as addresses), and so do the ports, a missing
 * port being the default of the Origin's scheme. A malformed Origin ("null" included) is never the
 * page's own origin. */
bool chat_origin_allowed(const char *origin, const char *host, const char *allowlist);

/* Checks an allowlist once at start-up: 0, or CHAT_EINVAL with err naming the malformed entry.
 * *any (may be NULL) is set when the list contains "*". */
int chat_origin_list_check(const char *allowlist, bool *any, char *err, size_t errlen);

#endif
