/* Error code names and the err-buffer helper behind the library's single error convention. */
#include "chat_common.h"

#include <stdarg.h>
#include <stdio.h>

const char *chat_strerror(int code)
{
    switch (code) {
    case CHAT_OK: return "CHAT_OK";
    case CHAT_ERR: return "CHAT_ERR";
    case CHAT_ENOMEM: return "CHAT_ENOMEM";
    case CHAT_EINVAL: return "CHAT_EINVAL";
    case CHAT_EDB: return "CHAT_EDB";
    case CHAT_EFORBIDDEN: return "CHAT_EFORBIDDEN";
    case CHAT_ECANCELLED: return "CHAT_ECANCELLED";
    case CHAT_ETIMEOUT: return "CHAT_ETIMEOUT";
    case CHAT_ELLM: return "CHAT_ELLM";
    case CHAT_ENOTFOUND: return "CHAT_ENOTFOUND";
    case CHAT_EAUTH: return "CHAT_EAUTH";
    case CHAT_EEXPIRED: return "CHAT_EEXPIRED";
    case CHAT_ECONFLICT: return "CHAT_ECONFLICT";
    default: return "CHAT_E?";
    }
}

int chat_vfail(char *err, size_t errlen, int code, const char *fmt, va_list ap)
{
    if (err && errlen) vsnprintf(err, errlen, fmt, ap);
    return code;
}

int chat_fail(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    chat_vfail(err, errlen, code, fmt, ap);
    va_end(ap);
    return code;
}

void *chat_fail_null(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    chat_vfail(err, errlen, CHAT_ERR, fmt, ap);
    va_end(ap);
    return NULL;
}
