/* Test helpers that need no database. */
#include "testutil.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_util.h"

const char *testutil_root(void)
{
    const char *r = getenv("CHAT_ROOT");
    return r && *r ? r : ".";
}

const char *testutil_path(const char *rel)
{
    static char buf[PATH_MAX];
    snprintf(buf, sizeof buf, "%s/%s", testutil_root(), rel);
    return buf;
}

char *testutil_read_file(const char *path, size_t *len) { return chat_read_file(path, 0, len); }
