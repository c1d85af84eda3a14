/* Logging to stderr, one line per event: time, level, program, message. CHAT_LOG_FORMAT=json (read by
 * chat_log_init; default text) writes each line as one JSON object instead: {"time" (RFC 3339 UTC, ms),
 * "level", "process" (program name), "pid", "request_id"?, "session_id"? (the thread's context, when
 * set), "event" (the message)}.
 *
 * Policy (a security property, not a style): no JWT, API key, password or chat text is ever passed to
 * these functions. Log ids, sizes, codes and durations instead. Thread-safe (one write(2) per line). */
#ifndef CHAT_LOG_H
#define CHAT_LOG_H

enum { CHAT_LOG_DEBUG = 0, CHAT_LOG_INFO = 1, CHAT_LOG_WARN = 2, CHAT_LOG_ERROR = 3 };

/* Sets the program name and minimum level (CHAT_LOG_LEVEL=debug|info|warn|error overrides level).
 * With CHAT_LOG_FILE set, stderr becomes that file (appended), and SIGHUP reopens it, so a log moved
 * away by logrotate is followed by a new file. SIGHUP never ends the process (it is handled even
 * without CHAT_LOG_FILE). Call it first in main, before any thread exists. */
void chat_log_init(const char *program, int level);

/* Also runs hook on each SIGHUP, after the log's reopen: SIGHUP is the one "reload" signal, and a second
 * handler installed for it elsewhere would replace the reopen. hook runs in the signal handler, so it
 * must be async-signal-safe (set a flag, bump an atomic). One hook per process; NULL removes it. Installs
 * the handler too, so it works with or without chat_log_init. */
void chat_log_on_sighup(void (*hook)(void));
void chat_log(int level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The longest request or session id a context keeps (longer ones are cut). */
#define CHAT_LOG_ID_MAX 64

/* Names the request and/or session the calling thread serves (NULL or "" for none), so that its JSON
 * lines carry them until chat_log_context_clear; text lines are unchanged. Thread-local: set it where a
 * thread starts serving one request and clear it when done. Ids only, never a token. */
void chat_log_context_set(const char *request_id, const char *session_id);
void chat_log_context_clear(void);

#define chat_log_debug(...) chat_log(CHAT_LOG_DEBUG, __VA_ARGS__)
#define chat_log_info(...) chat_log(CHAT_LOG_INFO, __VA_ARGS__)
#define chat_log_warn(...) chat_log(CHAT_LOG_WARN, __VA_ARGS__)
#define chat_log_error(...) chat_log(CHAT_LOG_ERROR, __VA_ARGS__)

#endif
