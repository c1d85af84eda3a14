/* Environment → chat_config. Defaults are chosen so that a bare `make run` works offline: the
 * extractive provider, the private MariaDB socket set by deploy/stack.sh, HS256 JWTs. */
#include "chat_config.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_llm.h"
#include "chat_log.h"

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

/* name is one of chat_llm's providers; the message lists them (never the value given). */
static int check_provider(const char *name, char *err, size_t errlen)
{
    char list[128] = "";
    const char *p;
    for (size_t i = 0; (p = chat_llm_provider_name_at(i)); i++) {
        if (!strcmp(p, name)) return 0;
        size_t used = strlen(list);
        snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", p);
    }
    return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_PROVIDER must be one of: %s", list);
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
    INT(token_delay_ms, "CHAT_TOKEN_DELAY_MS", 0, 0, 10000);
    STR(llm_replay_file, "CHAT_LLM_REPLAY_FILE", "");

    INT(history_turns, "CHAT_HISTORY_TURNS", 6, 0, 100);
    INT(kb_top_k, "CHAT_KB_TOP_K", 4, 1, 50);
    INT(kb_common_pct, "CHAT_KB_COMMON_PCT", 5, 0, 100);
    INT(max_message_bytes, "CHAT_MAX_MESSAGE_BYTES", 8192, 16, 1 << 20);
    STR(customer_access, "CHAT_CUSTOMER_ACCESS", "own");

    STR(zmq_endpoint, "CHAT_ZMQ_ENDPOINT", "ipc://var/run/chat-workers.ipc");
    STR(streamer_listen, "CHAT_STREAMER_LISTEN", "127.0.0.1:8001");
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

    if (strcmp(cfg->customer_access, "own") && strcmp(cfg->customer_access, "any"))
        return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_CUSTOMER_ACCESS must be own or any");
    if ((rc = check_provider(cfg->llm_provider, err, errlen))) return rc;
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
