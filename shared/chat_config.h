/* Configuration from the environment, read once at start-up into a plain struct.
 *
 * Every setting of every process lives here so that deploy/chat.env.example documents one list.
 * Strings are fixed-size arrays: the struct can be copied and needs no free. A value too long for its
 * field is an error, never silently cut (a cut secret or URL would fail far from its cause). */
#ifndef CHAT_CONFIG_H
#define CHAT_CONFIG_H

#include <stddef.h>

typedef struct chat_config {
    /* MariaDB: a socket wins over host/port when both are set. */
    char db_host[256];
    int db_port;
    char db_socket[512];
    char db_user[128];
    char db_password[256];
    char db_name[128];

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
    int token_delay_ms; /* extractive and replay pacing, 0 = as fast as possible */
    char llm_replay_file[512]; /* the replay provider's recording: one JSON string per line */

    /* Pipeline. */
    int history_turns;
    int kb_top_k;
    int kb_common_pct; /* words in more than this % of a large knowledge base are left out of queries */
    int max_message_bytes;
    /* Who may name a customer_id: "own" (the token's email is the customer's email) or "any"
     * (every authenticated user: staff desks, demos). */
    char customer_access[8];

    /* Streamer and workers. */
    char zmq_endpoint[512];   /* where the streamer's ROUTER binds and workers connect */
    char streamer_listen[512]; /* "unix:/path" or "host:port" */
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
