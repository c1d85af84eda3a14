/* Error codes shared by every module of the chat library.
 *
 * One convention everywhere: functions return int 0 on success or one of these negative codes, pointer
 * functions return NULL on failure, and a caller-supplied `err` buffer (may be NULL) receives a human
 * message fit for logs. Messages never contain tokens, passwords or chat text. */
#ifndef CHAT_COMMON_H
#define CHAT_COMMON_H

#include <stdarg.h>
#include <stddef.h>

enum {
    CHAT_OK = 0,
    CHAT_ERR = -1,        /* generic failure, see err */
    CHAT_ENOMEM = -2,
    CHAT_EINVAL = -3,     /* bad input from the caller */
    CHAT_EDB = -4,        /* database unavailable or failed */
    CHAT_EFORBIDDEN = -5, /* e.g. a session owned by another user */
    CHAT_ECANCELLED = -6,
    CHAT_ETIMEOUT = -7,
    CHAT_ELLM = -8,       /* the LLM provider failed */
    CHAT_ENOTFOUND = -9,
    CHAT_EAUTH = -10,     /* invalid token */
    CHAT_EEXPIRED = -11,  /* expired token */
    CHAT_ECONFLICT = -12, /* the thing to create exists already */
};

/* Static string naming a code, e.g. "CHAT_EDB". */
const char *chat_strerror(int code);

/* snprintf into err when err is non-NULL; returns code so callers can `return chat_fail(...)`. */
int chat_fail(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* The same with a va_list (for functions that take their own format). */
int chat_vfail(char *err, size_t errlen, int code, const char *fmt, va_list ap) __attribute__((format(printf, 4, 0)));
/* The same for functions returning a pointer: fills err and returns NULL, so that a constructor says
 * `return chat_fail_null(err, errlen, "...")`. */
void *chat_fail_null(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define CHAT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
