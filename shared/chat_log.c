/* stderr logging: one formatted line per call, written with a single write(2) so lines from threads
 * and processes sharing a log file never interleave. Two shapes of the same line: text (the default)
 * and, with CHAT_LOG_FORMAT=json, one JSON object per line for log collectors; the JSON strings are
 * escaped by chat_proto_escape, the one JSON escaper of shared/. The request/session id a thread is
 * serving lives in thread-local storage (chat_log_context_set), so callers name it once, not per line. CHAT_LOG_FILE makes stderr a file the process
 * reopens itself on SIGHUP: the handler only calls open, dup2 and close (async-signal-safe), and a line
 * being written meanwhile lands whole in the old file or the new one. */
#include "chat_log.h"

#include "chat_proto.h"
#include "chat_util.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static char log_program[32] = "chat";
static int log_level = CHAT_LOG_INFO;
static char log_path[1024]; /* CHAT_LOG_FILE, "" = plain stderr */
static void (*volatile log_hup_hook)(void); /* chat_log_on_sighup */
static bool log_json;                        /* CHAT_LOG_FORMAT=json */
/* what this thread is serving (chat_log_context_set); "" = nothing */
static _Thread_local char ctx_request[CHAT_LOG_ID_MAX + 1], ctx_session[CHAT_LOG_ID_MAX + 1];

/* Points stderr at log_path (created when missing): 0, or -1 with errno (stderr unchanged). */
static int log_reopen(void)
{
    int fd = open(log_path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) return -1;
    if (fd != STDERR_FILENO) {
        dup2(fd, STDERR_FILENO);
        close(fd);
    }
    return 0;
}

static void on_hup(int sig)
{
    (void)sig;
    int saved = errno;
    if (log_path[0]) log_reopen();
    void (*hook)(void) = log_hup_hook;
    if (hook) hook();
    errno = saved;
}

/* The one SIGHUP handler of the process (idempotent). */
static void install_hup(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_hup;
    sa.sa_flags = SA_RESTART; /* a reopen must not make a blocking call fail with EINTR */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGHUP, &sa, NULL);
}

void chat_log_init(const char *program, int level)
{
    snprintf(log_program, sizeof log_program, "%s", program ? program : "chat");
    const char *file = getenv("CHAT_LOG_FILE");
    int open_err = 0;
    if (file && *file && strlen(file) < sizeof log_path) {
        memcpy(log_path, file, strlen(file) + 1);
        if (log_reopen()) open_err = errno;
    }
    install_hup();
    log_level = level;
    const char *format = getenv("CHAT_LOG_FORMAT");
    log_json = format && !strcasecmp(format, "json");
    const char *env = getenv("CHAT_LOG_LEVEL");
    if (env) {
        if (!strcasecmp(env, "debug")) log_level = CHAT_LOG_DEBUG;
        else if (!strcasecmp(env, "info")) log_level = CHAT_LOG_INFO;
        else if (!strcasecmp(env, "warn")) log_level = CHAT_LOG_WARN;
        else if (!strcasecmp(env, "error")) log_level = CHAT_LOG_ERROR;
    }
    if (open_err) chat_log_warn("CHAT_LOG_FILE cannot be opened (%s): logging to stderr", strerror(open_err));
}

void chat_log_on_sighup(void (*hook)(void))
{
    log_hup_hook = hook;
    install_hup(); /* also without chat_log_init (a test, a library user): SIGHUP must not kill */
}

static void ctx_copy(char *dst, const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n > CHAT_LOG_ID_MAX) n = chat_utf8_prefix(id, n, CHAT_LOG_ID_MAX);
    memcpy(dst, id ? id : "", n);
    dst[n] = '\0';
}

void chat_log_context_set(const char *request_id, const char *session_id)
{
    ctx_copy(ctx_request, request_id);
    ctx_copy(ctx_session, session_id);
}

void chat_log_context_clear(void)
{
    ctx_request[0] = ctx_session[0] = '\0';
}

/* Appends ,"key":"escaped value" when value is not empty; room is checked by the caller's sizes. */
static size_t json_field(char *out, const char *key, const char *value)
{
    if (!value[0]) return 0;
    size_t n = (size_t)sprintf(out, ",\"%s\":\"", key);
    n += chat_proto_escape(value, strlen(value), out + n);
    out[n++] = '"';
    return n;
}

/* The JSON line for msg (len bytes) into line, which has room for 6 * len + 6 * 2 * CHAT_LOG_ID_MAX +
 * 256 bytes (an escape is at most 6 bytes per input byte). Returns its length, newline included. */
static size_t json_line(char *line, const char *stamp, const char *level, const char *msg, size_t len)
{
    size_t n = (size_t)sprintf(line, "{\"time\":\"%s\",\"level\":\"%s\",\"process\":\"", stamp, level);
    n += chat_proto_escape(log_program, strlen(log_program), line + n);
    n += (size_t)sprintf(line + n, "\",\"pid\":%d", (int)getpid());
    n += json_field(line + n, "request_id", ctx_request);
    n += json_field(line + n, "session_id", ctx_session);
    n += (size_t)sprintf(line + n, ",\"event\":\"");
    n += chat_proto_escape(msg, len, line + n);
    memcpy(line + n, "\"}\n", 3);
    return n + 3;
}

void chat_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < log_level) return;
    if (level < 0 || level > CHAT_LOG_ERROR) level = CHAT_LOG_ERROR;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char stamp[64];
    snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000));
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t len = m < 0 ? 0 : ((size_t)m < sizeof msg ? (size_t)m : sizeof msg - 1);
    if (log_json) {
        char line[6 * sizeof msg + 12 * CHAT_LOG_ID_MAX + 256];
        ssize_t w = write(STDERR_FILENO, line, json_line(line, stamp, names[level], msg, len));
        (void)w;
        return;
    }
    char line[1024]; /* a text line is at most this long, newline included, as it always was */
    int n = snprintf(line, sizeof line, "%s %s[%d] %s: ", stamp, log_program, (int)getpid(), names[level]);
    if (len > sizeof line - (size_t)n - 2) len = sizeof line - (size_t)n - 2;
    memcpy(line + n, msg, len);
    line[(size_t)n + len] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n + len + 1);
    (void)w;
}
