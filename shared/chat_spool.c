/* The spool of turns the database could not take (see chat_spool.h).
 *
 * Design choices:
 * - A turn is spooled after one failed attempt, not held in memory for retries first: the answer's
 *   complete can then say at once, and truthfully, that the turn is kept ("stored": false), nothing
 *   holds a stage thread, and a process that dies a moment later loses nothing. One fdatasync per
 *   spooled turn is nothing beside an outage; the bound is the spool's size (CHAT_SPOOL_MAX_MB), not a
 *   time: a turn waits as long as the database is away, across restarts.
 * - Lines of JSON (json-c escapes every newline inside a string), each appended with one write() on an
 *   O_APPEND descriptor: a crash can only cut the last line, which a reader knows by its missing
 *   newline. A failed append truncates the file back, so a process's own file never holds a torn line.
 * - The bytes below the replay's snapshot of the file's end never change: the replay reads them with
 *   pread and stores them without the mutex, so appends go on meanwhile; the file is truncated to zero
 *   only under the mutex, once everything in it is handled.
 * - Ownership by flock: the lock dies with its process however it dies (kill -9 included), so a spool
 *   nobody can lock is a live process's and one that can be locked is an orphan. A new file is created
 *   under a name the take-over ignores (.new) and linked under its real name once locked, so no process
 *   ever takes a file whose owner has not locked it yet, and no existing file is ever replaced. An
 *   orphan's whole lines are appended to this process's file (synced) before the orphan is removed: a
 *   crash in between leaves the turns twice, which the idempotent replay stores once.
 * - The file name starts with the database's name: processes of different databases (the test suite's
 *   programs) may share a directory without replaying each other's turns into the wrong one.
 * - Nothing here logs message text: turns are named by session and request id. */
#include "chat_spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <limits.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_log.h"
#include "chat_memory.h"
#include "chat_util.h"

#define SPOOL_VERSION 1
#define RETRY_MIN_MS 100          /* the replayer's first wait after a failure, doubling */
#define READ_CHUNK ((size_t)1 << 20) /* a replay reads this much at a time (more for a longer line) */
#define LOG_EVERY_MS 60000        /* while the database stays away, the waiting turns are logged this often */
#define STALE_NEW_S 60            /* a .new file this old belongs to a process that died while creating it */

struct chat_spool {
    chat_config cfg;
    char dir[512];
    char name[256];   /* the file's name in dir */
    char prefix[80];  /* "<database>-": the spools this process may take over */
    int fd;
    size_t max_bytes;

    pthread_mutex_t mu;  /* everything below, and every write to fd */
    off_t size;          /* the file's length */
    off_t done;          /* bytes handled by replays (stored, refused or skipped) */
    size_t waiting;      /* turns in [done, size) */
    int64_t next_try_ms; /* the replayer's next attempt (chat_now_ms; 0: at once) */
    pthread_cond_t cv;
    atomic_bool quit;

    pthread_mutex_t replay_mu; /* one replay at a time */
    pthread_t thread;
    bool started;
    chat_db *db; /* the replayer's connection */
};

/* ---------------------------------------------------------------- files */

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w, n -= (size_t)w;
    }
    return 0;
}

/* The directory's entries (a file created, renamed or removed) made durable. */
static void sync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return;
    if (fsync(fd)) chat_log_warn("spool: cannot sync %s: %s", dir, strerror(errno));
    close(fd);
}

/* mkdir -p, each missing level 0700. */
static int make_dir(const char *dir, char *err, size_t errlen)
{
    if (!dir[0]) return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_SPOOL_DIR is empty");
    char path[512];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1;; p++) {
        if (*p && *p != '/') continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0700) && errno != EEXIST)
            return chat_fail(err, errlen, CHAT_ERR, "cannot create %s: %s", path, strerror(errno));
        if (!c) return 0;
        *p = c;
    }
}

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

/* Whether name in dfd is still the file open on fd (not removed or replaced since it was opened). */
static bool same_file(int dfd, const char *name, int fd, struct stat *st)
{
    struct stat by_name;
    return !fstat(fd, st) && !fstatat(dfd, name, &by_name, AT_SYMLINK_NOFOLLOW) && st->st_ino == by_name.st_ino &&
           st->st_dev == by_name.st_dev;
}

/* ---------------------------------------------------------------- lines */

static int add(json_object *o, const char *key, json_object *v)
{
    if (v && !json_object_object_add(o, key, v)) return 0;
    json_object_put(v);
    return 1;
}

static int add_str(json_object *o, const char *key, const char *s) { return s ? add(o, key, json_object_new_string(s)) : 1; }

/* The turn as one line of JSON with its newline (*len bytes); NULL when out of memory or a required
 * field is missing. Caller frees. */
static char *turn_line(const chat_spool_turn *t, size_t *len)
{
    json_object *o = json_object_new_object();
    if (!o) return NULL;
    int failed = add(o, "v", json_object_new_int(SPOOL_VERSION)) || add_str(o, "session_id", t->session_id) ||
                 add_str(o, "request_id", t->request_id) || add_str(o, "user_id", t->user_id) ||
                 (t->customer_id && *t->customer_id && add_str(o, "customer_id", t->customer_id)) ||
                 add(o, "new_session", json_object_new_boolean(t->new_session)) ||
                 add(o, "touch_session", json_object_new_boolean(t->touch_session)) ||
                 add_str(o, "user_text", t->user_text) || add_str(o, "assistant_text", t->assistant_text) ||
                 (t->metadata_json && add_str(o, "metadata", t->metadata_json));
    const char *s = failed ? NULL : json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE);
    char *line = NULL;
    if (s) {
        size_t n = strlen(s);
        line = malloc(n + 2);
        if (line) {
            memcpy(line, s, n);
            line[n] = '\n', line[n + 1] = '\0';
            *len = n + 1;
        }
    }
    json_object_put(o);
    return line;
}

static const char *get_str(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                                            : NULL;
}

static bool get_bool(json_object *o, const char *key)
{
    json_object *v;
    return json_object_object_get_ex(o, key, &v) && json_object_is_type(v, json_type_boolean) && json_object_get_boolean(v);
}

/* The turn of one line (without its newline): its strings point into the returned object (caller puts),
 * or NULL when the line is not a whole turn (torn, or damaged). */
static json_object *parse_line(const char *line, size_t len, chat_spool_turn *t)
{
    if (len > INT_MAX) return NULL;
    json_tokener *tok = json_tokener_new();
    json_object *o = tok ? json_tokener_parse_ex(tok, line, (int)len) : NULL;
    bool ok = o && json_tokener_get_error(tok) == json_tokener_success && json_object_is_type(o, json_type_object);
    json_tokener_free(tok);
    if (ok) {
        *t = (chat_spool_turn){
            .session_id = get_str(o, "session_id"),
            .request_id = get_str(o, "request_id"),
            .user_id = get_str(o, "user_id"),
            .customer_id = get_str(o, "customer_id"),
            .new_session = get_bool(o, "new_session"),
            .touch_session = get_bool(o, "touch_session"),
            .user_text = get_str(o, "user_text"),
            .assistant_text = get_str(o, "assistant_text"),
            .metadata_json = get_str(o, "metadata"),
        };
        ok = t->session_id && t->request_id && t->user_id && t->user_text && t->assistant_text;
    }
    if (ok) return o;
    json_object_put(o);
    return NULL;
}

static int start_replayer(chat_spool *s, char *err, size_t errlen);

/* ---------------------------------------------------------------- open and take over */

/* The database's name as a file-name prefix: letters, digits and '_' kept, anything else '_'. */
static void db_prefix(const char *db_name, char *out, size_t cap)
{
    size_t n = 0;
    for (const char *p = db_name; *p && n + 2 < cap && n < 64; p++) {
        char c = *p;
        bool keep = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
        out[n++] = keep ? c : '_';
    }
    out[n++] = '-';
    out[n] = '\0';
}

/* This process's file, created empty under a name the take-over ignores, locked, then linked under its
 * own name (link, not rename: an existing file of that name is never replaced). */
static int create_locked(chat_spool *s, char *err, size_t errlen)
{
    char tmp[PATH_MAX], path[PATH_MAX];
    snprintf(tmp, sizeof tmp, "%s/%s.new", s->dir, s->name);
    snprintf(path, sizeof path, "%s/%s", s->dir, s->name);
    s->fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (s->fd < 0) return chat_fail(err, errlen, CHAT_ERR, "cannot create %s: %s", tmp, strerror(errno));
    /* blocking: another process's take-over scan may hold the new file's lock for a moment (it never
     * takes a .new file over) */
    int rc = flock(s->fd, LOCK_EX) || link(tmp, path) ? -1 : 0;
    int e = errno;
    unlink(tmp);
    if (rc) return chat_fail(err, errlen, CHAT_ERR, "cannot set up %s: %s", path, strerror(e));
    sync_dir(s->dir);
    return 0;
}

/* Appends the whole lines of an orphan (fd, locked) to this process's file, synced. 0, or -1 (logged):
 * the orphan is then left for a later start. */
static int take_over(chat_spool *s, int fd, const struct stat *st, const char *name)
{
    size_t n = (size_t)st->st_size, got = 0;
    char *buf = malloc(n ? n : 1);
    if (!buf) return -1;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    size_t whole = 0, turns = 0;
    for (size_t i = 0; i < got; i++)
        if (buf[i] == '\n') whole = i + 1, turns++;
    pthread_mutex_lock(&s->mu);
    int rc = whole && (write_all(s->fd, buf, whole) || fdatasync(s->fd)) ? -1 : 0;
    if (rc) {
        chat_log_error("spool: cannot take over %s: %s", name, strerror(errno));
        if (ftruncate(s->fd, s->size)) chat_log_error("spool: cannot truncate %s: %s", s->name, strerror(errno));
    } else {
        s->size += (off_t)whole;
        s->waiting += turns;
    }
    pthread_mutex_unlock(&s->mu);
    free(buf);
    if (!rc && (turns || got > whole))
        chat_log_warn("spool: took over %zu turns from %s, left by a process that ended before storing them%s", turns,
                      name, got > whole ? " (its incomplete last line skipped)" : "");
    return rc;
}

/* Takes over every spool of this database that no process holds any more, and removes it. */
static void adopt_orphans(chat_spool *s)
{
    DIR *d = opendir(s->dir);
    if (!d) return;
    int dfd = dirfd(d);
    size_t plen = strlen(s->prefix);
    bool removed = false;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *n = de->d_name;
        bool is_new = ends_with(n, ".spool.new");
        if (strncmp(n, s->prefix, plen) || !strcmp(n, s->name) || (!is_new && !ends_with(n, ".spool"))) continue;
        int fd = openat(dfd, n, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd < 0) continue;
        struct stat st;
        /* locked: its process lives; a .new file is empty, and young it may be a process starting now */
        if (!flock(fd, LOCK_EX | LOCK_NB) && same_file(dfd, n, fd, &st) &&
            (is_new ? time(NULL) - st.st_mtime > STALE_NEW_S : !take_over(s, fd, &st, n)) && !unlinkat(dfd, n, 0))
            removed = true;
        close(fd);
    }
    closedir(d);
    if (removed) sync_dir(s->dir);
}

int chat_spool_open(const chat_config *cfg, const char *role, bool replayer, chat_spool **out, char *err,
                    size_t errlen)
{
    *out = NULL;
    if (cfg->spool_max_mb <= 0) return 0;
    chat_spool *s = calloc(1, sizeof *s);
    if (!s) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->fd = -1;
    s->max_bytes = (size_t)cfg->spool_max_mb << 20;
    atomic_init(&s->quit, false);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->replay_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* chat_now_ms's clock */
    pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    snprintf(s->dir, sizeof s->dir, "%s", cfg->spool_dir);
    db_prefix(cfg->db_name, s->prefix, sizeof s->prefix);
    /* unique: the pid, the time, and a count for the spools one process opens (tests open several) */
    static atomic_uint opened;
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now);
    snprintf(s->name, sizeof s->name, "%s%.32s-%d-%lld-%u.spool", s->prefix, role, (int)getpid(),
             (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000, atomic_fetch_add(&opened, 1));
    int rc = make_dir(s->dir, err, errlen);
    if (!rc) rc = create_locked(s, err, errlen);
    if (rc) {
        chat_spool_free(s);
        return rc;
    }
    adopt_orphans(s);
    if (replayer && (rc = start_replayer(s, err, errlen))) {
        chat_spool_free(s); /* its file stays when it took turns over: the next process has them */
        return rc;
    }
    *out = s;
    return 0;
}

/* ---------------------------------------------------------------- append */

bool chat_spool_pending(chat_spool *s)
{
    pthread_mutex_lock(&s->mu);
    bool pending = s->size > s->done;
    pthread_mutex_unlock(&s->mu);
    return pending;
}

size_t chat_spool_waiting(chat_spool *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->waiting;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int chat_spool_append(chat_spool *s, const chat_spool_turn *t, char *err, size_t errlen)
{
    size_t len = 0;
    char *line = turn_line(t, &len);
    if (!line) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory (or a turn without its texts)");
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    if ((size_t)s->size + len > s->max_bytes) {
        rc = chat_fail(err, errlen, CHAT_ERR, "the spool is full (CHAT_SPOOL_MAX_MB=%d)", s->cfg.spool_max_mb);
    } else if (write_all(s->fd, line, len) || fdatasync(s->fd)) {
        rc = chat_fail(err, errlen, CHAT_ERR, "cannot write %s: %s", s->name, strerror(errno));
        if (ftruncate(s->fd, s->size)) chat_log_error("spool: cannot truncate %s: %s", s->name, strerror(errno));
    } else {
        /* the first turn after a drain: the database failed a moment ago, so the replay waits a little */
        if (s->size == s->done) s->next_try_ms = chat_now_ms() + RETRY_MIN_MS;
        s->size += (off_t)len;
        s->waiting++;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    free(line);
    return rc;
}

/* ---------------------------------------------------------------- replay */

bool chat_spool_refused(int rc, const chat_db *db)
{
    switch (rc) {
    case CHAT_EINVAL:     /* malformed or too large */
    case CHAT_ENOTFOUND:  /* the user has no such session (any more) */
    case CHAT_EFORBIDDEN: /* not the user's to write */
    case CHAT_ECONFLICT:  /* its new session's id is taken (by the same user) */
        return true;
    case CHAT_EDB: {
        unsigned int e = chat_db_errno(db);
        return e == ER_DATA_TOO_LONG || e == ER_TRUNCATED_WRONG_VALUE_FOR_FIELD || e == ER_BAD_NULL_ERROR ||
               e == ER_WARN_DATA_OUT_OF_RANGE;
    }
    default:
        return false;
    }
}

/* One turn as the pipeline stores it, idempotently: a new session's row is created unless the user has
 * it already, then the turn (a no-op when it is stored already). */
static int store_turn(chat_db *db, const chat_spool_turn *t, char *err, size_t errlen)
{
    if (t->new_session) {
        chat_session_info info;
        int rc = chat_memory_open_session(db, t->user_id, t->session_id, t->customer_id, false, 0, NULL, &info, err,
                                          errlen);
        if (rc) return rc;
    }
    return chat_memory_store_turn(db, t->user_id, t->session_id, t->request_id, t->user_text, t->assistant_text,
                                  t->metadata_json, t->touch_session, err, errlen);
}

/* One line: 0 when it is handled (stored, refused and dropped, or unreadable and skipped), else the
 * failure that leaves it for the next replay. */
static int replay_line(chat_db *db, const char *line, size_t len, size_t *stored, char *err, size_t errlen)
{
    chat_spool_turn t;
    json_object *o = parse_line(line, len, &t);
    if (!o) {
        chat_log_warn("spool: an unreadable line of %zu bytes skipped", len);
        return 0;
    }
    char why[256] = "";
    int rc = store_turn(db, &t, why, sizeof why);
    if (!rc) {
        (*stored)++;
    } else if (chat_spool_refused(rc, db)) {
        chat_log_error("spool: turn %s of session %s refused by the database (%s): dropped", t.request_id, t.session_id,
                       why);
        rc = 0;
    } else {
        chat_fail(err, errlen, rc, "%s", why);
    }
    json_object_put(o);
    return rc;
}

/* Replays the whole lines of buf[0, n): *used gets the bytes of the lines handled, *turns their count.
 * 0, or the failure that stopped it (at a line not counted). Stops early, with 0, when the spool is
 * being freed. */
static int replay_lines(chat_spool *s, chat_db *db, const char *buf, size_t n, size_t *used, size_t *turns,
                        size_t *stored, char *err, size_t errlen)
{
    *used = *turns = 0;
    while (!atomic_load(&s->quit)) {
        const char *start = buf + *used;
        const char *nl = memchr(start, '\n', n - *used);
        if (!nl) break;
        int rc = replay_line(db, start, (size_t)(nl - start), stored, err, errlen);
        if (rc) return rc;
        *used += (size_t)(nl - start) + 1;
        (*turns)++;
    }
    return 0;
}

/* n bytes of fd at off into *buf (grown to *cap as needed). 0, or -1 (short read, error). */
static int read_at(int fd, off_t off, size_t n, char **buf, size_t *cap)
{
    if (n > *cap) {
        char *nb = realloc(*buf, n);
        if (!nb) return -1;
        *buf = nb, *cap = n;
    }
    for (size_t got = 0; got < n;) {
        ssize_t r = pread(fd, *buf + got, n - got, off + (off_t)got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        got += (size_t)r;
    }
    return 0;
}

int chat_spool_replay(chat_spool *s, chat_db *db, size_t *stored, char *err, size_t errlen)
{
    size_t none;
    if (!stored) stored = &none;
    *stored = 0;
    pthread_mutex_lock(&s->replay_mu);
    pthread_mutex_lock(&s->mu);
    off_t off = s->done, end = s->size;
    pthread_mutex_unlock(&s->mu);
    int rc = 0;
    size_t handled = 0, want = READ_CHUNK, cap = 0;
    char *buf = NULL;
    while (off < end && !rc && !atomic_load(&s->quit)) {
        size_t left = (size_t)(end - off), n = left < want ? left : want, used, turns;
        if (read_at(s->fd, off, n, &buf, &cap)) {
            rc = chat_fail(err, errlen, CHAT_ERR, "cannot read %s: %s", s->name, strerror(errno));
            break;
        }
        rc = replay_lines(s, db, buf, n, &used, &turns, stored, err, errlen);
        off += (off_t)used;
        handled += turns;
        if (rc || used || atomic_load(&s->quit)) {
            want = READ_CHUNK;
        } else if (n == left) { /* no newline up to the end: never written whole */
            chat_log_warn("spool: an incomplete last line of %zu bytes skipped", n);
            off = end;
        } else {
            want *= 2; /* a line longer than the chunk */
        }
    }
    free(buf);
    pthread_mutex_lock(&s->mu);
    s->done = off;
    s->waiting = s->waiting > handled ? s->waiting - handled : 0;
    if (s->done == s->size) { /* everything handled, nothing appended meanwhile */
        if (ftruncate(s->fd, 0) == 0)
            s->size = s->done = 0;
        else
            chat_log_error("spool: cannot empty %s: %s", s->name, strerror(errno));
        s->waiting = 0;
    }
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->replay_mu);
    return rc;
}

/* ---------------------------------------------------------------- the replayer */

/* Under mu: waits until the spool is freed, or turns wait and their attempt is due. */
static void wait_due(chat_spool *s)
{
    while (!atomic_load(&s->quit)) {
        bool pending = s->size > s->done;
        if (pending && chat_now_ms() >= s->next_try_ms) return;
        if (!pending) {
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        struct timespec at = {(time_t)(s->next_try_ms / 1000), (long)(s->next_try_ms % 1000) * 1000000L};
        pthread_cond_timedwait(&s->cv, &s->mu, &at);
    }
}

static void *replayer_main(void *arg)
{
    chat_spool *s = arg;
    int retry_max = s->cfg.spool_retry_ms, backoff = RETRY_MIN_MS < retry_max ? RETRY_MIN_MS : retry_max;
    int64_t failing_since = 0, logged_at = 0;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        wait_due(s);
        if (atomic_load(&s->quit)) break;
        pthread_mutex_unlock(&s->mu);
        char err[256] = "";
        size_t stored = 0;
        int rc = chat_spool_replay(s, s->db, &stored, err, sizeof err);
        int64_t now = chat_now_ms();
        pthread_mutex_lock(&s->mu);
        if (rc) {
            s->next_try_ms = now + backoff;
            backoff = backoff * 2 < retry_max ? backoff * 2 : retry_max;
            if (!failing_since) failing_since = now;
            if (!logged_at || now - logged_at >= LOG_EVERY_MS) {
                chat_log_warn("spool: %zu turns wait for the database (%s)", s->waiting, err);
                logged_at = now;
            }
            if (stored) chat_log_info("spool: %zu turns stored from the spool", stored);
        } else {
            if (stored)
                chat_log_info("spool: %zu turns stored from the spool%s", stored,
                              failing_since ? " now that the database answers again" : "");
            backoff = RETRY_MIN_MS < retry_max ? RETRY_MIN_MS : retry_max;
            failing_since = logged_at = 0;
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int start_replayer(chat_spool *s, char *err, size_t errlen)
{
    s->db = chat_db_new(&s->cfg);
    if (!s->db) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    /* The thread takes no signal (it inherits the mask): a process's SIGTERM must reach its main thread,
     * whose blocking accept() it interrupts (chat-fcgi). */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int e = pthread_create(&s->thread, NULL, replayer_main, s);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (e) return chat_fail(err, errlen, CHAT_ERR, "cannot start the spool's replayer: %s", strerror(e));
    s->started = true;
    return 0;
}

void chat_spool_free(chat_spool *s)
{
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    atomic_store(&s->quit, true);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->started) pthread_join(s->thread, NULL);
    chat_db_free(s->db);
    if (s->fd >= 0) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", s->dir, s->name);
        if (s->size == s->done) {
            unlink(path);
            sync_dir(s->dir);
        } else {
            chat_log_warn("spool: %zu turns left in %s for the next process to store", s->waiting, path);
        }
        close(s->fd); /* the lock goes with it */
    }
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->replay_mu);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
