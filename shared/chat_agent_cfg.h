/* Each agent's model settings and system prompt, from files, reloaded on SIGHUP.
 *
 * The folder (CHAT_PROMPTS_DIR; unset: $CHAT_ROOT/prompts, else prompts/ of the tree the program was
 * built in, else ./prompts) holds, for every row of the agent table (chat_agent.h):
 *   <agent>.txt   the agent's system prompt: what the model is told ahead of the customer's records and
 *                 the retrieved passages, which the pipeline appends. Required, UTF-8, at most 64 KB.
 *   agents.conf   optional: `[default]` and `[<agent>]` sections of `key = value` lines, keys
 *                 model (what the first provider of the chain is asked for; unset: LLM_MODEL),
 *                 temperature (0..2; unset: not sent, the provider's default) and max_tokens
 *                 (1..100000; unset: LLM_MAX_TOKENS). An agent's own section wins over [default].
 * The repository's prompts/ holds the defaults. Why files and not the environment: a running process
 * never sees a changed environment, and changing a prompt or a model without a restart is the point;
 * why one folder: one setting moves the whole set (a staging copy, a test's own).
 *
 * Reload: chat_agent_cfg_request_reload (what the SIGHUP handler of chat_agent_cfg_install_sighup calls)
 * counts a request process-wide; each chat_agent_cfg reloads at its next chat_agent_cfg_get after one,
 * on its caller's thread, so the settings never change under a request being prepared and need no lock.
 * A load is all or nothing: a reload that fails keeps the previous settings, logs why and waits for the
 * next request. A chat_agent_cfg is used by one thread at a time (a pipeline owns one). */
#ifndef CHAT_AGENT_CFG_H
#define CHAT_AGENT_CFG_H

#include <stdbool.h>
#include <stddef.h>

#define CHAT_AGENT_CFG_FILE "agents.conf"
#define CHAT_AGENT_PROMPT_MAX (64 * 1024)

typedef struct chat_agent_settings {
    const char *prompt; /* the system prompt, trailing whitespace removed; never empty */
    char model[256];    /* "": the provider's own (LLM_MODEL) */
    int max_tokens;     /* 0: LLM_MAX_TOKENS */
    bool has_temperature;
    double temperature; /* 0..2, when has_temperature */
} chat_agent_settings;

typedef struct chat_agent_cfg chat_agent_cfg;

/* Loads every agent's settings from dir ("" or NULL: the default folder above). NULL with err naming the
 * file (and line) at fault. Any thread. */
chat_agent_cfg *chat_agent_cfg_new(const char *dir, char *err, size_t errlen);
void chat_agent_cfg_free(chat_agent_cfg *c); /* accepts NULL */
/* The folder it reads (the default resolved). */
const char *chat_agent_cfg_dir(const chat_agent_cfg *c);

/* Reads the folder again: 0 with the new settings in place, or a negative code with err and the
 * previous settings kept. Invalidates what chat_agent_cfg_get returned before. */
int chat_agent_cfg_reload(chat_agent_cfg *c, char *err, size_t errlen);

/* The settings of the agent of that name (an unknown name gets the fallback agent's), after a reload if
 * one was requested since the last load (a failure is logged, the previous settings stay). Valid until
 * the next call on c. */
const chat_agent_settings *chat_agent_cfg_get(chat_agent_cfg *c, const char *agent);

/* Asks every chat_agent_cfg of the process to reload at its next use. Async-signal-safe. */
void chat_agent_cfg_request_reload(void);
/* How many reloads were requested in this process so far (a supervisor forwards each to its children). */
unsigned chat_agent_cfg_reload_requests(void);
/* Makes SIGHUP request a reload, through chat_log's SIGHUP handler (chat_log_on_sighup), which also
 * reopens the log when there is one: one signal for both, as daemons do (SA_RESTART). Returns 0. A
 * forked child keeps it. */
int chat_agent_cfg_install_sighup(void);

#endif
