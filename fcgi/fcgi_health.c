/* /health probes with a one-second per-process cache.
 *
 * Why cache: the benchmark drives /health at ~10,000 req/s through lighttpd; without the cache every
 * request would cost a database round trip and an HTTP request to the streamer. With it, each of the
 * FastCGI processes probes once a second and otherwise copies a ready string.
 * The streamer probe reuses one libcurl easy handle (keep-alive on the Unix socket or loopback) and is
 * bounded by FCGI_HEALTH_STREAMER_TIMEOUT_MS so a hung streamer cannot stall the API.
 * The database's full-text settings (chat_kb_fulltext_check) are reported, not failed: a server that
 * cannot find "V6" still answers, worse, and every responder shares it, so a 503 would take the whole
 * service out of its load balancer for a configuration matter; "fulltext" names the setting instead,
 * and the log says so when the verdict changes. */
#include "fcgi_health.h"

#include <curl/curl.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_kb.h"
#include "chat_log.h"
#include "chat_util.h"

#define STATUS_MAX_BYTES 16384 /* the streamer's /status is a few dozen bytes; anything bigger is wrong */

/* One streamer's /status. */
typedef struct health_target {
    CURL *curl; /* kept: keep-alive on its socket */
    char url[600];
    char unix_path[512]; /* empty for TCP */
} health_target;

struct fcgi_health {
    health_target st[FCGI_HEALTH_MAX_STREAMERS];
    int n_st;
    chat_buf cached;
    int cached_status;
    long long cached_at_ms;          /* 0 = nothing cached */
    bool ok_db, ok_streamer, ok_workers; /* what the cached answer says */
    bool db_was_ok;                  /* to log state changes once, not every second */
    int streamers_up_was;            /* likewise */
    char fulltext_was[64];           /* the setting last logged as wrong ("" = none) */
    chat_db *replica;                /* CHAT_DB_READ_*, NULL without one */
    bool replica_ok;                 /* reported in ready; a skipped replica does not make it 503 */
    long long replica_lag_s;
};

typedef struct streamer_state {
    bool ok;
    long long connections, workers_live, workers_busy, jobs_queued;
} streamer_state;

/* A target for "unix:/path" or "host:port" (len bytes of spec); false when it does not fit. */
static bool add_target(fcgi_health *h, const char *spec, size_t len)
{
    if (h->n_st == FCGI_HEALTH_MAX_STREAMERS || !len) return false;
    health_target *t = &h->st[h->n_st];
    if (len > 5 && !strncmp(spec, "unix:", 5)) {
        if (len - 5 >= sizeof t->unix_path) return false;
        snprintf(t->unix_path, sizeof t->unix_path, "%.*s", (int)(len - 5), spec + 5);
        snprintf(t->url, sizeof t->url, "http://localhost/status");
    } else {
        if (len + 16 >= sizeof t->url) return false;
        snprintf(t->url, sizeof t->url, "http://%.*s/status", (int)len, spec);
    }
    t->curl = curl_easy_init();
    if (!t->curl) return false;
    h->n_st++;
    return true;
}

/* CHAT_STREAMER_SOCKETS (every streamer of the host), else the first listener of CHAT_STREAMER_LISTEN. */
static bool add_targets(fcgi_health *h, const chat_config *cfg)
{
    const char *list = cfg->streamer_sockets;
    if (!list[0]) return add_target(h, cfg->streamer_listen, strcspn(cfg->streamer_listen, ","));
    size_t len;
    for (const char *at = list, *p; (p = chat_list_next(&at, &len));) {
        char spec[600];
        if (len && len + 5 < sizeof spec) {
            snprintf(spec, sizeof spec, "unix:%.*s", (int)len, p);
            if (!add_target(h, spec, strlen(spec))) return false;
        }
    }
    return h->n_st > 0;
}

fcgi_health *fcgi_health_new(const chat_config *cfg)
{
    fcgi_health *h = calloc(1, sizeof *h);
    if (!h) return NULL;
    chat_buf_init(&h->cached);
    h->db_was_ok = true;
    h->replica = chat_db_new_read(cfg);
    if (!add_targets(h, cfg)) {
        chat_log_error("health: CHAT_STREAMER_SOCKETS lists more than %d streamers, or a path too long",
                       FCGI_HEALTH_MAX_STREAMERS);
        fcgi_health_free(h);
        return NULL;
    }
    h->streamers_up_was = h->n_st;
    return h;
}

void fcgi_health_free(fcgi_health *h)
{
    if (!h) return;
    for (int i = 0; i < h->n_st; i++) curl_easy_cleanup(h->st[i].curl);
    chat_db_free(h->replica);
    chat_buf_free(&h->cached);
    free(h);
}

void fcgi_health_invalidate(fcgi_health *h)
{
    h->cached_at_ms = 0;
}

static size_t collect(char *data, size_t size, size_t nmemb, void *ud)
{
    chat_buf *b = ud;
    size_t n = size * nmemb;
    if (b->len + n > STATUS_MAX_BYTES) return 0; /* aborts the transfer */
    return chat_buf_append(b, data, n) ? 0 : n;
}

static long long json_int(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_int)) return -1;
    return (long long)json_object_get_int64(v);
}

static streamer_state probe_streamer(health_target *t)
{
    streamer_state s = {.ok = false, .connections = -1, .workers_live = -1, .workers_busy = -1, .jobs_queued = -1};
    chat_buf body;
    chat_buf_init(&body);
    CURL *c = t->curl;
    curl_easy_reset(c);
    curl_easy_setopt(c, CURLOPT_URL, t->url);
    if (t->unix_path[0]) curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, t->unix_path);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)FCGI_HEALTH_STREAMER_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)FCGI_HEALTH_STREAMER_TIMEOUT_MS);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    if (rc != CURLE_OK || code != 200) {
        chat_log_debug("health: streamer /status failed (%s, HTTP %ld)", curl_easy_strerror(rc), code);
        goto cleanup;
    }
    json_object *o = json_tokener_parse(body.data ? body.data : "");
    if (!o || !json_object_is_type(o, json_type_object)) {
        json_object_put(o);
        chat_log_debug("health: streamer /status is not a JSON object");
        goto cleanup;
    }
    s.ok = true;
    s.connections = json_int(o, "connections");
    s.workers_live = json_int(o, "workers_live");
    s.workers_busy = json_int(o, "workers_busy");
    s.jobs_queued = json_int(o, "jobs_queued");
    json_object_put(o);
cleanup:
    chat_buf_free(&body);
    return s;
}

/* Every streamer's /status, added up: ok when every one answers, connections and queued jobs summed
 * (each streamer has its own). The workers are one shared pool each streamer sees for itself: "live" is
 * the fewest any streamer sees (a streamer just restarted has none until the workers reconnect, and
 * cannot answer meanwhile), "busy" the most. */
static streamer_state probe_streamers(fcgi_health *h, int *up)
{
    streamer_state all = {.ok = true, .connections = -1, .workers_live = -1, .workers_busy = -1, .jobs_queued = -1};
    *up = 0;
    for (int i = 0; i < h->n_st; i++) {
        streamer_state s = probe_streamer(&h->st[i]);
        if (!s.ok) {
            all.ok = false;
            continue;
        }
        ++*up;
        if (s.connections >= 0) all.connections = (all.connections < 0 ? 0 : all.connections) + s.connections;
        if (s.jobs_queued >= 0) all.jobs_queued = (all.jobs_queued < 0 ? 0 : all.jobs_queued) + s.jobs_queued;
        if (s.workers_live >= 0 && (all.workers_live < 0 || s.workers_live < all.workers_live))
            all.workers_live = s.workers_live;
        if (s.workers_busy > all.workers_busy) all.workers_busy = s.workers_busy;
    }
    return all;
}

static json_object *int_or_null(long long v)
{
    return v < 0 ? NULL : json_object_new_int64(v);
}

/* The full-text verdict as {"ok":bool|null,"setting":"...","problem":"..."} (ok null: not checked, the
 * database being down); a change of the setting to fix is logged once. */
static json_object *probe_fulltext(fcgi_health *h, chat_db *db, bool db_ok)
{
    chat_kb_fulltext ft;
    char err[256];
    bool known = db_ok && chat_kb_fulltext_check(db, &ft, err, sizeof err) == 0;
    if (known && strcmp(ft.setting, h->fulltext_was)) {
        if (!ft.ok) chat_log_warn("health: the database's full-text settings lose short words: %s", ft.problem);
        snprintf(h->fulltext_was, sizeof h->fulltext_was, "%s", ft.setting);
    }
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    json_object_object_add(o, "ok", known ? json_object_new_boolean(ft.ok) : NULL);
    if (known && !ft.ok) {
        json_object_object_add(o, "setting", json_object_new_string(ft.setting));
        json_object_object_add(o, "problem", json_object_new_string(ft.problem));
    }
    return o;
}

/* Probes and rebuilds the cached answer. */
static int refresh(fcgi_health *h, chat_db *db)
{
    char err[256] = "";
    long long t0 = chat_now_us();
    bool db_ok = db && chat_db_ping(db, err, sizeof err) == 0;
    double db_ms = (double)(chat_now_us() - t0) / 1000.0;
    int up;
    streamer_state st = probe_streamers(h, &up);
    bool workers_ok = up > 0 && st.workers_live > 0;

    if (db_ok != h->db_was_ok) {
        if (db_ok)
            chat_log_info("health: database reachable again");
        else
            chat_log_warn("health: database unreachable: %s", err[0] ? err : "no connection");
        h->db_was_ok = db_ok;
    }
    if (up != h->streamers_up_was) {
        if (st.ok)
            chat_log_info("health: every streamer reachable again (%d)", up);
        else
            chat_log_warn("health: %d of %d streamers' /status unreachable", h->n_st - up, h->n_st);
        h->streamers_up_was = up;
    }

    json_object *root = json_object_new_object();
    json_object *failing = json_object_new_array();
    json_object *jdb = json_object_new_object();
    json_object *jst = json_object_new_object();
    json_object *jwk = json_object_new_object();
    json_object *jft = probe_fulltext(h, db, db_ok);
    int rc = CHAT_ENOMEM;
    if (!root || !failing || !jdb || !jst || !jwk || !jft) {
        json_object_put(jft);
        json_object_put(failing);
        json_object_put(jdb);
        json_object_put(jst);
        json_object_put(jwk);
        goto cleanup;
    }
    bool all_ok = db_ok && st.ok && workers_ok;
    json_object_object_add(root, "status", json_object_new_string(all_ok ? "ok" : "degraded"));
    if (!db_ok) json_object_array_add(failing, json_object_new_string("database"));
    if (!st.ok) json_object_array_add(failing, json_object_new_string("streamer"));
    if (!workers_ok) json_object_array_add(failing, json_object_new_string("workers"));
    json_object_object_add(root, "failing", failing);

    json_object_object_add(jdb, "ok", json_object_new_boolean(db_ok));
    if (db_ok) {
        char ms[32];
        snprintf(ms, sizeof ms, "%.3f", db_ms); /* as printed, not 1.1879999999999999 */
        json_object_object_add(jdb, "latency_ms", json_object_new_double_s(db_ms, ms));
    }
    json_object_object_add(root, "database", jdb);

    json_object_object_add(jst, "ok", json_object_new_boolean(st.ok));
    json_object_object_add(jst, "up", json_object_new_int(up));
    json_object_object_add(jst, "of", json_object_new_int(h->n_st));
    json_object_object_add(jst, "connections", int_or_null(st.connections));
    json_object_object_add(jst, "jobs_queued", int_or_null(st.jobs_queued));
    json_object_object_add(root, "streamer", jst);

    json_object_object_add(jwk, "ok", json_object_new_boolean(workers_ok));
    json_object_object_add(jwk, "live", int_or_null(st.workers_live));
    json_object_object_add(jwk, "busy", int_or_null(st.workers_busy));
    json_object_object_add(root, "workers", jwk);
    json_object_object_add(root, "fulltext", jft);

    const char *text = json_object_to_json_string_ext(root, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    if (!text) goto cleanup;
    chat_buf_reset(&h->cached);
    if (chat_buf_puts(&h->cached, text)) goto cleanup;
    h->cached_status = all_ok ? 200 : 503;
    h->ok_db = db_ok, h->ok_streamer = st.ok, h->ok_workers = workers_ok;
    if (h->replica) h->replica_ok = chat_db_replica_check(h->replica, &h->replica_lag_s, err, sizeof err) == 0;
    h->cached_at_ms = chat_now_ms();
    rc = 0;
cleanup:
    json_object_put(root);
    return rc;
}

/* Probes when the cached answer is older than FCGI_HEALTH_TTL_MS (or there is none). */
static int fresh(fcgi_health *h, chat_db *db)
{
    long long now = chat_now_ms();
    if (!h->cached_at_ms || now - h->cached_at_ms >= FCGI_HEALTH_TTL_MS || now < h->cached_at_ms) return refresh(h, db);
    return 0;
}

int fcgi_health_get(fcgi_health *h, chat_db *db, chat_buf *out)
{
    int rc = fresh(h, db);
    if (rc) return rc;
    chat_buf_reset(out);
    if (chat_buf_append(out, h->cached.data, h->cached.len)) return CHAT_ENOMEM;
    return h->cached_status;
}

int fcgi_health_ready(fcgi_health *h, chat_db *db, chat_buf *out)
{
    int rc = fresh(h, db);
    if (rc) return rc;
    const struct {
        const char *name;
        bool ok;
    } parts[] = {{"database", h->ok_db}, {"streamer", h->ok_streamer}, {"workers", h->ok_workers}};
    bool ready = h->ok_db && h->ok_streamer && h->ok_workers, first = true;
    chat_buf_reset(out);
    rc = chat_buf_printf(out, "{\"status\":\"%s\",\"failing\":[", ready ? "ready" : "not_ready");
    for (size_t i = 0; i < CHAT_ARRAY_LEN(parts); i++) {
        if (parts[i].ok) continue;
        rc |= chat_buf_printf(out, "%s\"%s\"", first ? "" : ",", parts[i].name);
        first = false;
    }
    rc |= chat_buf_puts(out, "]");
    for (size_t i = 0; i < CHAT_ARRAY_LEN(parts); i++)
        rc |= chat_buf_printf(out, ",\"%s\":%s", parts[i].name, parts[i].ok ? "true" : "false");
    /* Reads fall back to the primary, so a skipped replica is reported without failing readiness. */
    if (h->replica)
        rc |= chat_buf_printf(out, ",\"replica\":{\"ok\":%s,\"lag_s\":%lld}", h->replica_ok ? "true" : "false",
                              h->replica_lag_s);
    rc |= chat_buf_puts(out, "}");
    return rc ? CHAT_ENOMEM : ready ? 200 : 503;
}

int fcgi_health_live(chat_buf *out)
{
    chat_buf_reset(out);
    return chat_buf_puts(out, "{\"status\":\"ok\"}") ? CHAT_ENOMEM : 200;
}
