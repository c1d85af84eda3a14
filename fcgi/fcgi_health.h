/* GET /health and /health/ready: the state of the database, the streamer and the workers, cheap enough
 * to be polled by load balancers and benchmarked at thousands of requests per second; GET /health/live:
 * the process answers (Kubernetes' liveness probe, which must not fail because a dependency did).
 *
 * The probes (chat_db_ping on the process's own connection, a libcurl GET of the streamer's /status
 * with a 200 ms budget, of every streamer of the host) run at most once per FCGI_HEALTH_TTL_MS per
 * process; in between, the cached answer is served. Workers are reported by the streamers (they own
 * the ZeroMQ side). "streamer" is ok when every streamer answers ("up" of "of"); its connections and
 * queued jobs are the sum over them. "workers" is ok when every streamer that answers sees live workers
 * (one shared pool: "live" is the fewest any sees, "busy" the most).
 *
 * Body: {"status":"ok"|"degraded","failing":[...],"database":{"ok":bool,"latency_ms":N},
 *        "streamer":{"ok":bool,"up":N,"of":N,"connections":N,"jobs_queued":N},
 *        "workers":{"ok":bool,"live":N,"busy":N},
 *        "fulltext":{"ok":bool|null,"setting":"innodb_ft_min_token_size=1","problem":"..."}}
 * 200 when everything is ok, 503 otherwise, "failing" naming the parts that are not. "fulltext" is the
 * database's full-text settings (chat_kb_fulltext_check; ok null when the database is down): when they
 * make short words such as "V6" unfindable, "setting" is the exact one to change; answers still work,
 * worse, so it changes neither the status nor "failing".
 * /health/ready, from the same probes: {"status":"ready"|"not_ready","failing":[...],"database":bool,
 * "streamer":bool,"workers":bool}, 200 or 503. /health/live: {"status":"ok"}, always 200.
 * Thread context: one thread per fcgi_health. */
#ifndef FCGI_HEALTH_H
#define FCGI_HEALTH_H

#include <stddef.h>

#include "chat_config.h"
#include "chat_db.h"
#include "chat_util.h"

#define FCGI_HEALTH_TTL_MS 1000
#define FCGI_HEALTH_STREAMER_TIMEOUT_MS 200
#define FCGI_HEALTH_MAX_STREAMERS 64

typedef struct fcgi_health fcgi_health;

/* Where the streamers' /status pages are: cfg->streamer_sockets, every streamer's Unix socket
 * (comma-separated, up to FCGI_HEALTH_MAX_STREAMERS), else the first listener of cfg->streamer_listen
 * ("unix:/path" or "host:port"). NULL when out of memory or the list is too long. */
fcgi_health *fcgi_health_new(const chat_config *cfg);
void fcgi_health_free(fcgi_health *h);

/* Copies the current JSON answer into out and returns its HTTP status (200 or 503), probing first
 * when the cached answer is older than FCGI_HEALTH_TTL_MS. db may be NULL (reported as down).
 * Returns CHAT_ENOMEM if out could not grow. */
int fcgi_health_get(fcgi_health *h, chat_db *db, chat_buf *out);

/* The /health/ready answer into out, probing as fcgi_health_get does (the two share the probes and their
 * cache): 200 or 503, or CHAT_ENOMEM. */
int fcgi_health_ready(fcgi_health *h, chat_db *db, chat_buf *out);

/* The /health/live answer into out: 200, or CHAT_ENOMEM. Checks nothing. */
int fcgi_health_live(chat_buf *out);

/* Forgets the cached answer (the next call probes). */
void fcgi_health_invalidate(fcgi_health *h);

#endif
