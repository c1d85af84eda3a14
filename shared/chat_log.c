/* stderr logging: one formatted line per call, written with a single write(2) so lines from threads
 * and processes sharing a log file never interleave. CHAT_LOG_FILE makes stderr a file the process
 * reopens itself on SIGHUP: the handler only calls open, dup2 and close (async-signal-safe), and a line
 * being written meanwhile lands whole in the old file or the new one. */
#include "chat_log.h"

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

void chat_log(int level, const char *fmt, ...)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level < log_level) return;
    if (level < 0 || level > CHAT_LOG_ERROR) level = CHAT_LOG_ERROR;
    char line[1024];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s[%d] %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (long)(tv.tv_usec / 1000),
                     log_program, (int)getpid(), names[level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : ((size_t)m < sizeof line - (size_t)n - 1 ? (size_t)m : sizeof line - (size_t)n - 2));
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}
