/* Configuration from the environment, read once at start-up into a plain struct.
 *
 * Every setting of every process lives here so that deploy/chat.env.example documents one list.
 * Strings are fixed-size arrays: the struct can be copied and needs no free. A value too long for its
 * field is an error, never silently cut (a cut secret or URL would fail far from its cause). */
#ifndef CHAT_CONFIG_H
#define CHAT_CONFIG_H

#include <stddef.h>

#define CHAT_LLM_MAX_FALLBACKS 3

/* A provider of the chain after the first (CHAT_LLM_FALLBACK=openai:https://other/v1,extractive), with
 * its own LLM_FALLBACK_<n>_API_KEY, _MODEL, _EXTRA_HEADERS and _EXTRA_BODY (n from 1). */
typedef struct chat_llm_fallback {
    char provider[32];
    char base_url[512]; /* what follows "openai:" */
    char api_key[512];
    char model[256]; /* LLM_MODEL when unset */
    char extra_headers[1024];
    char extra_body[1024];
} chat_llm_fallback;

typedef struct chat_config {
    /* MariaDB: a socket wins over host/port when both are set. */
    char db_host[256];
    int db_port;
    char db_socket[512];
    char db_user[128];
    char db_password[256];
    char db_name[128];
    /* A read replica for reads that may be slightly stale (retrieval, classifier terms, customer
     * context); none when db_read_host and db_read_socket are both empty. User and password default to
     * the primary's. A replica more than db_read_max_lag_s behind (or down) is skipped. */
    char db_read_host[256];
    int db_read_port;
    char db_read_socket[512];
    char db_read_user[128];
    char db_read_password[256];
    int db_read_max_lag_s;

    /* JWT verification. alg is pinned: HS256 (secret), RS256 or ES256 (public key file). */
    char jwt_alg[16];
    char jwt_secret[1024];
    char jwt_public_key_file[512];
    char jwt_issuer[256];   /* checked when non-empty */
    char jwt_audience[256]; /* checked when non-empty */
    int jwt_leeway_s;

    /* LLM provider: a name in chat_llm's provider table ("openai", "extractive"...). */
    char llm_provider[32];
    char llm_base_url[512];
    char llm_api_key[512];
    char llm_model[256];
    int llm_connect_timeout_ms;
    int llm_first_token_timeout_ms;
    int llm_stall_timeout_ms;
    int llm_max_tokens;
    char llm_extra_headers[1024]; /* openai: a JSON object of headers added to every request, "" = none */
    char llm_extra_body[1024];    /* openai: a JSON object merged into every request body, "" = none */
    /* The chain (chat_llm.h): attempts per provider before its first token (0 = 2), the first retry's wait
     * (doubling; 0 = 300 ms) and the longest wait, Retry-After included (0 = 2000 ms); then the fallbacks
     * of CHAT_LLM_FALLBACK, each with settings of its own in place of the llm_* ones above. */
    int llm_max_attempts;
    int llm_retry_backoff_ms;
    int llm_retry_max_ms;
    chat_llm_fallback llm_fallback[CHAT_LLM_MAX_FALLBACKS];
    int n_llm_fallback;
    int token_delay_ms; /* extractive and replay pacing, 0 = as fast as possible */
    char metrics_dir[512];     /* where each process keeps its metrics file (chat_metrics.h); empty = in memory */
    char llm_replay_file[512]; /* the replay provider's recording: one JSON string per line */
    char prompts_dir[512];     /* each agent's prompt and model settings (chat_agent_cfg.h); "" = default */

    /* Pipeline. */
    int history_turns;
    int kb_top_k;
    int kb_common_pct; /* words in more than this % of a large knowledge base are left out of queries */
    int kb_derived;    /* 1: questions search the derived table kb_search where the server allows (chat_kb.h) */
    int max_message_bytes;
    /* Who may name a customer_id: "own" (the token's email is the customer's email) or "any"
     * (every authenticated user: staff desks, demos). */
    char customer_access[8];

    /* Streamer and workers. */
    char zmq_endpoint[512];   /* where the streamer's ROUTER binds and workers connect */
    char streamer_listen[512]; /* comma-separated "unix:/path" or "host:port" listeners */
    /* Every streamer of the host, comma-separated Unix sockets: /health probes each (empty: the first
     * listener of streamer_listen). */
    char streamer_sockets[4096];
    char allowed_origins[1024]; /* besides the page's own origin (chat_origin.h); empty = no other */
    int workers;
    int worker_slots;    /* answers one worker process streams at once (no thread each) */
    int worker_db_conns; /* stage threads of one worker process, each with its database connection */
    int token_flush_ms;  /* a worker sends an answer's later tokens in batches this often (0 = each at once) */
    int rate_limit_per_min;
    int idle_timeout_s;
    int ping_interval_s;
    int shutdown_grace_s;
    int max_queue_per_conn;
    int max_outbound_bytes;

    /* Answers that outlive connections (workers). */
    int resume_retention_s; /* a completed answer stays resumable this long (0: not at all) */
    int resume_max_answers; /* completed answers one worker process keeps at most (the oldest go first) */
    char orphan_policy[8];  /* an answer nobody follows any more: "finish" it, or "cancel" it after the grace */
    int orphan_grace_s;

    /* Turns the database could not take (chat_spool.h): where each process keeps them until it can,
     * how large one process's spool may grow (MiB; 0 = no spool: such a turn ends with NOT_STORED),
     * and the longest wait between two attempts to replay it. */
    char spool_dir[512];
    int spool_max_mb;
    int spool_retry_ms;
} chat_config;

/* Fills cfg with defaults, then applies the environment. Returns 0, or CHAT_EINVAL with a message
 * naming the variable (never its value). */
int chat_config_from_env(chat_config *cfg, char *err, size_t errlen);
/* The same for a server process: the message goes to the log ("configuration: ..."), the servers' one
 * way of refusing a bad environment. */
int chat_config_load(chat_config *cfg);

/* A process-specific integer setting outside chat_config (e.g. a streamer tuning knob): the value of
 * env var name when it is an integer in [min, max], else dflt with a warning naming the variable. */
int chat_config_env_int(const char *name, int dflt, int min, int max);

#endif
