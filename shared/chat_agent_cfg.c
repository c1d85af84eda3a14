/* Per-agent settings from the prompts folder (see chat_agent_cfg.h).
 *
 * A load reads everything into a fresh snapshot and swaps it in only when every file was good, so a
 * half-edited folder never mixes old and new settings. The reload request is one process-wide atomic
 * counter: a signal handler may bump it, and each holder compares it with the count it last applied,
 * so any number of pipelines in a process follow one SIGHUP without knowing of each other. agents.conf
 * is a small INI file rather than JSON so that operators can comment it and edit it by hand. */
#include "chat_agent_cfg.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_agent.h"
#include "chat_common.h"
#include "chat_log.h"
#include "chat_util.h"

#define CONF_MAX (64 * 1024)
#define DEFAULT_SECTION CHAT_AGENT_COUNT /* the [default] section's index among the sections */
#define TEMPERATURE_MAX 2.0
#define MAX_TOKENS_MAX 100000

_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "the reload counter must be lock-free to be bumped from a signal handler");
static atomic_uint reload_requests;

typedef struct snapshot {
    chat_agent_settings a[CHAT_AGENT_COUNT]; /* indexed by chat_agent_id */
    char *prompts[CHAT_AGENT_COUNT];         /* a[i].prompt, owned */
} snapshot;

struct chat_agent_cfg {
    char dir[PATH_MAX];
    snapshot cur;
    unsigned applied; /* reload requests seen at the last load or reload attempt */
};

static void snapshot_clear(snapshot *s)
{
    for (int i = 0; i < CHAT_AGENT_COUNT; i++)
        free(s->prompts[i]);
    memset(s, 0, sizeof *s);
}

/* ---- the folder ---- */

/* $CHAT_ROOT/prompts, else prompts/ two levels above the executable (build/bin/..), else ./prompts. */
static void default_dir(char *out, size_t cap)
{
    const char *root = getenv("CHAT_ROOT");
    if (root && *root) {
        snprintf(out, cap, "%s/prompts", root);
        return;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = n > 0 ? (exe[n] = '\0', strrchr(exe, '/')) : NULL;
    if (slash) {
        *slash = '\0';
        int w = snprintf(out, cap, "%s/../../prompts", exe);
        if (w > 0 && (size_t)w < cap && access(out, R_OK) == 0) return;
    }
    snprintf(out, cap, "prompts");
}

/* dir/name into path; CHAT_EINVAL when it does not fit. */
static int file_path(char *path, size_t cap, const char *dir, const char *name, const char *ext, char *err,
                     size_t errlen)
{
    int n = snprintf(path, cap, "%s/%s%s", dir, name, ext);
    if (n < 0 || (size_t)n >= cap) return chat_fail(err, errlen, CHAT_EINVAL, "prompts folder path too long");
    return 0;
}

/* The whole text file at path: NUL-free UTF-8, at most max bytes. NULL with err (ENOENT in *missing when
 * missing is not NULL and the file does not exist: then err is not set). */
static char *read_text(const char *path, size_t max, bool *missing, char *err, size_t errlen)
{
    size_t len = 0;
    char *text = chat_read_file(path, max, &len);
    if (!text) {
        if (missing && errno == ENOENT) {
            *missing = true;
            return NULL;
        }
        if (errno == EFBIG)
            chat_fail(err, errlen, CHAT_EINVAL, "%s is larger than %zu bytes", path, max);
        else
            chat_fail(err, errlen, CHAT_EINVAL, "cannot read %s: %s", path, strerror(errno));
        return NULL;
    }
    if (strlen(text) != len || !chat_utf8_valid(text, len)) {
        free(text);
        chat_fail(err, errlen, CHAT_EINVAL, "%s is not UTF-8 text", path);
        return NULL;
    }
    return text;
}

static int load_prompts(const char *dir, snapshot *s, char *err, size_t errlen)
{
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        char path[PATH_MAX + 64];
        int rc = file_path(path, sizeof path, dir, chat_agents[i].name, ".txt", err, errlen);
        if (rc) return rc;
        char *text = read_text(path, CHAT_AGENT_PROMPT_MAX, NULL, err, errlen);
        if (!text) return CHAT_EINVAL;
        size_t n = strlen(text);
        while (n && isspace((unsigned char)text[n - 1]))
            n--;
        text[n] = '\0';
        if (!n) {
            free(text);
            return chat_fail(err, errlen, CHAT_EINVAL, "%s is empty", path);
        }
        s->prompts[i] = text;
        s->a[i].prompt = text;
    }
    return 0;
}

/* ---- agents.conf ---- */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    size_t n = strlen(s);
    while (n && isspace((unsigned char)s[n - 1]))
        s[--n] = '\0';
    return s;
}

/* One key = value into v. 0, or CHAT_EINVAL with the reason in msg. */
static int conf_value(const char *key, const char *val, chat_agent_settings *v, char *msg, size_t msglen)
{
    char *end = NULL;
    errno = 0;
    if (!strcmp(key, "model")) {
        for (const char *c = val; *c; c++)
            if ((unsigned char)*c <= ' ' || *c == 0x7f)
                return chat_fail(msg, msglen, CHAT_EINVAL, "model has a space or control character");
        if (strlen(val) >= sizeof v->model) return chat_fail(msg, msglen, CHAT_EINVAL, "model is too long");
        snprintf(v->model, sizeof v->model, "%s", val);
    } else if (!strcmp(key, "temperature")) {
        double t = strtod(val, &end);
        if (errno || *end || !isfinite(t) || t < 0 || t > TEMPERATURE_MAX)
            return chat_fail(msg, msglen, CHAT_EINVAL, "temperature must be a number in [0, %g]", TEMPERATURE_MAX);
        v->has_temperature = true;
        v->temperature = t;
    } else if (!strcmp(key, "max_tokens")) {
        long n = strtol(val, &end, 10);
        if (errno || *end || n < 1 || n > MAX_TOKENS_MAX)
            return chat_fail(msg, msglen, CHAT_EINVAL, "max_tokens must be an integer in [1, %d]", MAX_TOKENS_MAX);
        v->max_tokens = (int)n;
    } else {
        return chat_fail(msg, msglen, CHAT_EINVAL, "unknown key \"%.40s\" (model, temperature or max_tokens)", key);
    }
    return 0;
}

/* One line: a comment, a [section] (its index in *section) or a key = value of the current section. */
static int conf_line(char *line, int *section, chat_agent_settings *vals, char *msg, size_t msglen)
{
    line = trim(line);
    if (!*line || *line == '#' || *line == ';') return 0;
    size_t n = strlen(line);
    if (*line == '[') {
        if (line[n - 1] != ']') return chat_fail(msg, msglen, CHAT_EINVAL, "a section line ends with ]");
        line[n - 1] = '\0';
        const char *name = trim(line + 1);
        const chat_agent *a = chat_agent_find(name);
        if (!a && strcmp(name, "default"))
            return chat_fail(msg, msglen, CHAT_EINVAL, "unknown section [%.40s] (an agent's name or default)", name);
        *section = a ? (int)a->id : DEFAULT_SECTION;
        return 0;
    }
    char *eq = strchr(line, '=');
    if (!eq) return chat_fail(msg, msglen, CHAT_EINVAL, "expected key = value");
    if (*section < 0) return chat_fail(msg, msglen, CHAT_EINVAL, "key before the first [section]");
    *eq = '\0';
    const char *key = trim(line), *val = trim(eq + 1);
    if (!*val) return chat_fail(msg, msglen, CHAT_EINVAL, "%.40s has no value", key);
    return conf_value(key, val, &vals[*section], msg, msglen);
}

/* Each agent's own section over [default]. */
static void conf_merge(snapshot *s, const chat_agent_settings *vals)
{
    const chat_agent_settings *d = &vals[DEFAULT_SECTION];
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent_settings *own = &vals[i];
        chat_agent_settings *a = &s->a[i];
        snprintf(a->model, sizeof a->model, "%s", own->model[0] ? own->model : d->model);
        a->max_tokens = own->max_tokens ? own->max_tokens : d->max_tokens;
        a->has_temperature = own->has_temperature || d->has_temperature;
        a->temperature = own->has_temperature ? own->temperature : d->temperature;
    }
}

static int load_conf(const char *dir, snapshot *s, char *err, size_t errlen)
{
    char path[PATH_MAX + 64];
    int rc = file_path(path, sizeof path, dir, CHAT_AGENT_CFG_FILE, "", err, errlen);
    if (rc) return rc;
    bool missing = false;
    char *text = read_text(path, CONF_MAX, &missing, err, errlen);
    if (!text) return missing ? 0 : CHAT_EINVAL; /* no file: every agent on the global settings */
    chat_agent_settings vals[CHAT_AGENT_COUNT + 1];
    memset(vals, 0, sizeof vals);
    int section = -1, lineno = 0;
    char msg[160];
    for (char *p = text, *line; (line = strsep(&p, "\n"));) {
        lineno++;
        if (conf_line(line, &section, vals, msg, sizeof msg)) {
            rc = chat_fail(err, errlen, CHAT_EINVAL, "%s line %d: %s", path, lineno, msg);
            break;
        }
    }
    free(text);
    if (!rc) conf_merge(s, vals);
    return rc;
}

static int load(const char *dir, snapshot *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int rc = load_prompts(dir, out, err, errlen);
    if (!rc) rc = load_conf(dir, out, err, errlen);
    if (rc) snapshot_clear(out);
    return rc;
}

/* ---- the holder ---- */

chat_agent_cfg *chat_agent_cfg_new(const char *dir, char *err, size_t errlen)
{
    chat_agent_cfg *c = calloc(1, sizeof *c);
    if (!c) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    if (dir && *dir)
        snprintf(c->dir, sizeof c->dir, "%s", dir);
    else
        default_dir(c->dir, sizeof c->dir);
    c->applied = atomic_load(&reload_requests);
    if (load(c->dir, &c->cur, err, errlen)) {
        free(c);
        return NULL;
    }
    return c;
}

void chat_agent_cfg_free(chat_agent_cfg *c)
{
    if (!c) return;
    snapshot_clear(&c->cur);
    free(c);
}

const char *chat_agent_cfg_dir(const chat_agent_cfg *c)
{
    return c->dir;
}

int chat_agent_cfg_reload(chat_agent_cfg *c, char *err, size_t errlen)
{
    snapshot next;
    int rc = load(c->dir, &next, err, errlen);
    if (rc) return rc;
    snapshot_clear(&c->cur);
    c->cur = next;
    return 0;
}

const chat_agent_settings *chat_agent_cfg_get(chat_agent_cfg *c, const char *agent)
{
    unsigned want = atomic_load(&reload_requests);
    if (want != c->applied) {
        c->applied = want; /* a failure waits for the next request, not the next message */
        char err[512];
        if (chat_agent_cfg_reload(c, err, sizeof err))
            chat_log_warn("agent settings: reload failed, the previous settings stay: %s", err);
        else
            chat_log_info("agent settings: reloaded from %s", c->dir);
    }
    const chat_agent *a = chat_agent_find(agent);
    return &c->cur.a[(a ? a : chat_agent_fallback())->id];
}

/* ---- the reload request ---- */

void chat_agent_cfg_request_reload(void)
{
    atomic_fetch_add(&reload_requests, 1);
}

unsigned chat_agent_cfg_reload_requests(void)
{
    return atomic_load(&reload_requests);
}

int chat_agent_cfg_install_sighup(void)
{
    chat_log_on_sighup(chat_agent_cfg_request_reload); /* chat_log's handler also reopens the log */
    return 0;
}
