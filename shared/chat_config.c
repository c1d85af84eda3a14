/* Environment → chat_config. Defaults are chosen so that a bare `make run` works offline: the
 * extractive provider, the private MariaDB socket set by deploy/stack.sh, HS256 JWTs. */
#include "chat_config.h"

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_llm.h"
#include "chat_log.h"
#include "chat_util.h"

static int set_str(char *dst, size_t cap, const char *name, const char *dflt, char *err, size_t errlen)
{
    const char *v = getenv(name);
    if (!v || !*v) v = dflt;
    if (strlen(v) >= cap) return chat_fail(err, errlen, CHAT_EINVAL, "%s is too long (max %zu bytes)", name, cap - 1);
    memcpy(dst, v, strlen(v) + 1);
    return 0;
}

static int set_int(int *dst, const char *name, int dflt, int min, int max, char *err, size_t errlen)
{
    const char *v = getenv(name);
    *dst = dflt;
    if (!v || !*v) return 0;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (errno || *end || n < min || n > max)
        return chat_fail(err, errlen, CHAT_EINVAL, "%s must be an integer in [%d, %d]", name, min, max);
    *dst = (int)n;
    return 0;
}

/* name is one of chat_llm's providers; the message names var and lists them (never the value given). */
static int check_provider(const char *var, const char *name, char *err, size_t errlen)
{
    char list[128] = "";
    const char *p;
    for (size_t i = 0; (p = chat_llm_provider_name_at(i)); i++) {
        if (!strcmp(p, name)) return 0;
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", p);
    }
    return chat_fail(err, errlen, CHAT_EINVAL, "%s must be one of: %s", var, list);
}

/* Copies [s, s+n) into dst (cap bytes) with the surrounding spaces trimmed; CHAT_EINVAL when too long. */
static int copy_trimmed(char *dst, size_t cap, const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t')) s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t')) n--;
    if (n >= cap) return CHAT_EINVAL;
    memcpy(dst, s, n);
    dst[n] = '\0';
    return 0;
}

/* Fallback n (from 1): "name" or "openai:URL", and its LLM_FALLBACK_<n>_* settings. */
static int parse_fallback(chat_config *cfg, chat_llm_fallback *fb, int n, const char *item, size_t len, char *err,
                          size_t errlen)
{
    const char *colon = memchr(item, ':', len);
    size_t nl = colon ? (size_t)(colon - item) : len;
    int rc = 0;
    if (copy_trimmed(fb->provider, sizeof fb->provider, item, nl) ||
        (colon && copy_trimmed(fb->base_url, sizeof fb->base_url, colon + 1, len - nl - 1)))
        return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_FALLBACK has an entry too long");
    if ((rc = check_provider("each entry of CHAT_LLM_FALLBACK", fb->provider, err, errlen))) return rc;
    bool openai = !strcmp(fb->provider, "openai");
    if (openai != (fb->base_url[0] != '\0'))
        return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_FALLBACK: openai takes a URL (openai:https://host/v1), "
                                                   "the other providers none");
    char name[64];
#define FB_STR(field, suffix, dflt)                                                                                    \
    do {                                                                                                               \
        snprintf(name, sizeof name, "LLM_FALLBACK_%d_%s", n, suffix);                                                 \
        if ((rc = set_str(fb->field, sizeof fb->field, name, dflt, err, errlen))) return rc;                         \
    } while (0)
    FB_STR(api_key, "API_KEY", "");
    FB_STR(model, "MODEL", cfg->llm_model);
    FB_STR(extra_headers, "EXTRA_HEADERS", "");
    FB_STR(extra_body, "EXTRA_BODY", "");
#undef FB_STR
    return 0;
}

/* CHAT_LLM_FALLBACK: comma-separated providers tried after cfg->llm_provider, in order. */
static int parse_fallbacks(chat_config *cfg, char *err, size_t errlen)
{
    const char *v = getenv("CHAT_LLM_FALLBACK");
    cfg->n_llm_fallback = 0;
    size_t len;
    for (const char *at = v, *p; (p = chat_list_next(&at, &len));) {
        if (cfg->n_llm_fallback == CHAT_LLM_MAX_FALLBACKS)
            return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_FALLBACK names more than %d providers",
                             CHAT_LLM_MAX_FALLBACKS);
        int n = cfg->n_llm_fallback + 1;
        int rc = parse_fallback(cfg, &cfg->llm_fallback[n - 1], n, p, len, err, errlen);
        if (rc) return rc;
        cfg->n_llm_fallback = n;
    }
    return 0;
}

#define STR(field, name, dflt)                                                                     \
    do {                                                                                           \
        if ((rc = set_str(cfg->field, sizeof cfg->field, name, dflt, err, errlen))) return rc;     \
    } while (0)
#define INT(field, name, dflt, min, max)                                                           \
    do {                                                                                           \
        if ((rc = set_int(&cfg->field, name, dflt, min, max, err, errlen))) return rc;             \
    } while (0)

int chat_config_from_env(chat_config *cfg, char *err, size_t errlen)
{
    int rc;
    memset(cfg, 0, sizeof *cfg);

    STR(db_host, "CHAT_DB_HOST", "localhost");
    INT(db_port, "CHAT_DB_PORT", 3306, 1, 65535);
    STR(db_socket, "CHAT_DB_SOCKET", "");
    STR(db_user, "CHAT_DB_USER", "chat");
    STR(db_password, "CHAT_DB_PASSWORD", "");
    STR(db_name, "CHAT_DB_NAME", "chat");
    STR(db_read_host, "CHAT_DB_READ_HOST", "");
    INT(db_read_port, "CHAT_DB_READ_PORT", 3306, 1, 65535);
    STR(db_read_socket, "CHAT_DB_READ_SOCKET", "");
    STR(db_read_user, "CHAT_DB_READ_USER", cfg->db_user);
    STR(db_read_password, "CHAT_DB_READ_PASSWORD", cfg->db_password);
    INT(db_read_max_lag_s, "CHAT_DB_READ_MAX_LAG_S", 5, 0, 86400);

    STR(jwt_alg, "JWT_ALGORITHM", "HS256");
    STR(jwt_secret, "JWT_SECRET", "");
    STR(jwt_public_key_file, "JWT_PUBLIC_KEY_FILE", "");
    STR(jwt_issuer, "JWT_ISSUER", "");
    STR(jwt_audience, "JWT_AUDIENCE", "");
    INT(jwt_leeway_s, "JWT_LEEWAY", 30, 0, 600);

    /* Provider choice: explicit, else OpenRouter when its key is set, else any configured endpoint,
     * else the offline extractive provider. */
    const char *openrouter = getenv("OPENROUTER_API_KEY");
    const char *base = getenv("LLM_BASE_URL");
    const char *dflt_provider = "extractive";
    const char *dflt_base = "";
    const char *dflt_model = "";
    const char *key_var = "LLM_API_KEY";
    if (base && *base) {
        dflt_provider = "openai";
    } else if (openrouter && *openrouter) {
        dflt_provider = "openai";
        dflt_base = "https://openrouter.ai/api/v1";
        dflt_model = "openai/gpt-4o-mini";
        key_var = "OPENROUTER_API_KEY";
    }
    STR(llm_provider, "CHAT_LLM_PROVIDER", dflt_provider);
    STR(llm_base_url, "LLM_BASE_URL", dflt_base);
    STR(llm_api_key, "LLM_API_KEY", "");
    if (!cfg->llm_api_key[0]) STR(llm_api_key, key_var, "");
    STR(llm_model, "LLM_MODEL", dflt_model[0] ? dflt_model : "default");
    INT(llm_connect_timeout_ms, "LLM_CONNECT_TIMEOUT_MS", 5000, 100, 600000);
    INT(llm_first_token_timeout_ms, "LLM_FIRST_TOKEN_TIMEOUT_MS", 30000, 100, 600000);
    INT(llm_stall_timeout_ms, "LLM_STALL_TIMEOUT_MS", 15000, 100, 600000);
    INT(llm_max_tokens, "LLM_MAX_TOKENS", 512, 1, 100000);
    STR(llm_extra_headers, "LLM_EXTRA_HEADERS", "");
    STR(llm_extra_body, "LLM_EXTRA_BODY", "");
    INT(llm_max_attempts, "LLM_MAX_ATTEMPTS", 2, 1, 5);
    INT(llm_retry_backoff_ms, "LLM_RETRY_BACKOFF_MS", 300, 1, 60000);
    INT(llm_retry_max_ms, "LLM_RETRY_MAX_MS", 2000, 1, 600000);
    INT(token_delay_ms, "CHAT_TOKEN_DELAY_MS", 0, 0, 10000);
    STR(llm_replay_file, "CHAT_LLM_REPLAY_FILE", "");
    STR(metrics_dir, "CHAT_METRICS_DIR", "");
    STR(prompts_dir, "CHAT_PROMPTS_DIR", "");

    INT(history_turns, "CHAT_HISTORY_TURNS", 6, 0, 100);
    INT(kb_top_k, "CHAT_KB_TOP_K", 4, 1, 50);
    INT(kb_common_pct, "CHAT_KB_COMMON_PCT", 5, 0, 100);
    INT(kb_derived, "CHAT_KB_DERIVED", 1, 0, 1);
    INT(max_message_bytes, "CHAT_MAX_MESSAGE_BYTES", 8192, 16, 1 << 20);
    STR(customer_access, "CHAT_CUSTOMER_ACCESS", "own");

    STR(zmq_endpoint, "CHAT_ZMQ_ENDPOINT", "ipc://var/run/chat-workers.ipc");
    STR(streamer_listen, "CHAT_STREAMER_LISTEN", "127.0.0.1:8001");
    STR(streamer_sockets, "CHAT_STREAMER_SOCKETS", "");
    STR(allowed_origins, "CHAT_ALLOWED_ORIGINS", "");
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    INT(workers, "CHAT_WORKERS", ncpu > 0 ? (int)ncpu : 2, 0, 1024);
    INT(worker_slots, "CHAT_WORKER_SLOTS", 256, 1, 16384);
    INT(worker_db_conns, "CHAT_WORKER_DB_CONNS", 4, 1, 1024);
    INT(token_flush_ms, "CHAT_TOKEN_FLUSH_MS", 2, 0, 1000);
    INT(rate_limit_per_min, "CHAT_RATE_LIMIT_PER_MIN", 120, 1, 1000000);
    INT(idle_timeout_s, "CHAT_IDLE_TIMEOUT_S", 300, 5, 86400);
    INT(ping_interval_s, "CHAT_PING_INTERVAL_S", 30, 1, 3600);
    INT(shutdown_grace_s, "CHAT_SHUTDOWN_GRACE_S", 10, 0, 600);
    INT(max_queue_per_conn, "CHAT_MAX_QUEUE", 8, 1, 1000);
    INT(max_outbound_bytes, "CHAT_MAX_OUTBOUND_BYTES", 1 << 20, 4096, 1 << 30);
    INT(resume_retention_s, "CHAT_RESUME_RETENTION_S", 300, 0, 86400);
    INT(resume_max_answers, "CHAT_RESUME_MAX_ANSWERS", 10000, 0, 10000000);
    STR(orphan_policy, "CHAT_ORPHAN_POLICY", "finish");
    INT(orphan_grace_s, "CHAT_ORPHAN_GRACE_S", 30, 0, 86400);

    /* the spool lives with the rest of the state: $CHAT_VAR/spool */
    const char *var = getenv("CHAT_VAR");
    char spool_dflt[sizeof cfg->spool_dir];
    if (snprintf(spool_dflt, sizeof spool_dflt, "%s/spool", var && *var ? var : "var") >= (int)sizeof spool_dflt)
        return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_VAR is too long for the spool directory");
    STR(spool_dir, "CHAT_SPOOL_DIR", spool_dflt);
    INT(spool_max_mb, "CHAT_SPOOL_MAX_MB", 64, 0, 1 << 20);
    INT(spool_retry_ms, "CHAT_SPOOL_RETRY_MS", 1000, 50, 600000);

    if (strcmp(cfg->orphan_policy, "finish") && strcmp(cfg->orphan_policy, "cancel"))
        return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_ORPHAN_POLICY must be finish or cancel");

    if (strcmp(cfg->customer_access, "own") && strcmp(cfg->customer_access, "any"))
        return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_CUSTOMER_ACCESS must be own or any");
    if ((rc = check_provider("CHAT_LLM_PROVIDER", cfg->llm_provider, err, errlen))) return rc;
    if ((rc = parse_fallbacks(cfg, err, errlen))) return rc;
    if (!strcmp(cfg->llm_provider, "openai") && !cfg->llm_base_url[0])
        return chat_fail(err, errlen, CHAT_EINVAL, "the openai provider needs LLM_BASE_URL or OPENROUTER_API_KEY");
    return 0;
}

int chat_config_load(chat_config *cfg)
{
    char err[512];
    int rc = chat_config_from_env(cfg, err, sizeof err);
    if (rc) chat_log_error("configuration: %s", err);
    return rc;
}

int chat_config_env_int(const char *name, int dflt, int min, int max)
{
    int v;
    if (set_int(&v, name, dflt, min, max, NULL, 0)) {
        chat_log_warn("%s must be an integer in [%d, %d]; using %d", name, min, max, dflt);
        return dflt;
    }
    return v;
}
