/* Process-shared metrics (see chat_metrics.h).
 *
 * Layout: every metric owns a run of 64-bit slots, one cell per label value; a counter or gauge cell is
 * one slot, a histogram cell is its buckets (not cumulative: one increment per observation), then the
 * sum in microseconds, then the count. The offsets are computed from the tables at init, the same in
 * every process of one build; a hash of the tables in each file's header keeps a reader from summing a
 * file of another build. Writers only ever do relaxed atomic adds and stores on their own file, so a
 * reader may see a histogram's count a moment before its bucket: a scrape is a sample, not a snapshot. */
#include "chat_metrics.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat_agent.h"
#include "chat_common.h"
#include "chat_llm.h"
#include "chat_proto.h"

#define METRICS_MAGIC "CHATMET1"
#define METRICS_SUFFIX ".metrics"
#define METRICS_OTHER "other"
#define HIST_WIDTH (CHAT_METRIC_NBUCKETS + 3) /* buckets, +Inf, sum (us), count */

typedef enum { K_COUNTER, K_GAUGE_SUM, K_GAUGE_MAX, K_HISTOGRAM } metric_kind;

typedef struct metric_def {
    metric_kind kind;
    chat_metric_label_dim dim;
    const char *name, *help;
} metric_def;

static const metric_def METRICS[CHAT_METRIC_COUNT] = {
#define X(id, kind, label, name, help) {K_##kind, CHAT_METRIC_LABEL_##label, name, help},
    CHAT_METRICS(X)
#undef X
};

/* The values of each label come from the table that defines them (agents, providers, error codes), so
 * a new row there is a new label value here; "other" follows the last. */
static const char *const FINISHES[] = {"stop", "length", "cancelled", "error"};
static const char *const STATUSES[] = {"200", "400", "401", "403", "404", "405", "408", "411",
                                       "413", "415", "429", "431", "500", "503"};

static const char *agent_at(unsigned i) { return i < CHAT_AGENT_COUNT ? chat_agents[i].name : NULL; }
static const char *provider_at(unsigned i) { return chat_llm_provider_name_at(i); }
static const char *code_at(unsigned i) { return i < CHAT_PROTO_CODE_COUNT ? chat_proto_code_name((chat_proto_code)i) : NULL; }
static const char *finish_at(unsigned i) { return i < CHAT_ARRAY_LEN(FINISHES) ? FINISHES[i] : NULL; }
static const char *status_at(unsigned i) { return i < CHAT_ARRAY_LEN(STATUSES) ? STATUSES[i] : NULL; }

/* "provider,outcome" for every provider of the table and every outcome, built once. */
#define ATTEMPT_VALUES_MAX 128
static char attempt_values[ATTEMPT_VALUES_MAX][48];
static unsigned n_attempt_values;
static pthread_once_t attempt_once = PTHREAD_ONCE_INIT;

static void attempt_build(void)
{
    const char *p;
    for (size_t i = 0; (p = chat_llm_provider_name_at(i)); i++)
        for (int o = 0; o < CHAT_LLM_OUTCOME_COUNT && n_attempt_values < ATTEMPT_VALUES_MAX; o++)
            snprintf(attempt_values[n_attempt_values++], sizeof attempt_values[0], "%s,%s", p,
                     chat_llm_outcome_name((chat_llm_outcome)o));
}

static const char *attempt_at(unsigned i)
{
    pthread_once(&attempt_once, attempt_build);
    return i < n_attempt_values ? attempt_values[i] : NULL;
}

typedef struct label_set {
    const char *name;
    const char *(*value_at)(unsigned i); /* NULL past the last value */
} label_set;

static const label_set LABELS[CHAT_METRIC_LABEL_COUNT] = {
#define X(id, name, values) [CHAT_METRIC_LABEL_##id] = {name, values},
    CHAT_METRIC_LABELS(X)
#undef X
};

static unsigned label_count(chat_metric_label_dim dim)
{
    unsigned n = 0;
    while (LABELS[dim].value_at && LABELS[dim].value_at(n)) n++;
    return n;
}

static const double BUCKETS[CHAT_METRIC_NBUCKETS] = {CHAT_METRIC_BUCKETS};

typedef struct file_header {
    char magic[8];
    uint64_t layout_hash;
    int64_t pid;
    uint64_t nslots;
    char kind[32];
} file_header;

/* The process's figures: slots in its own file's mapping (or private memory). */
static struct {
    unsigned nvalues[CHAT_METRIC_LABEL_COUNT]; /* values of each label, without "other" */
    size_t offset[CHAT_METRIC_COUNT]; /* first slot of each metric */
    size_t nslots;
    uint64_t hash;
    void *map;
    size_t map_len;
    _Atomic uint64_t *slots; /* NULL: not initialised, updates do nothing */
    char path[512];
} G;

static unsigned cells(chat_metric_id m) { return METRICS[m].dim == CHAT_METRIC_LABEL_NONE ? 1 : G.nvalues[METRICS[m].dim] + 1; }
static unsigned width(chat_metric_id m) { return METRICS[m].kind == K_HISTOGRAM ? HIST_WIDTH : 1; }

static uint64_t fnv(uint64_t h, const char *s)
{
    for (; s && *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return (h ^ 0xff) * 0x100000001b3ull;
}

/* Offsets and the layout hash, from the tables alone. */
static void compute_layout(void)
{
    uint64_t h = 0xcbf29ce484222325ull;
    size_t at = 0;
    for (int d = 0; d < CHAT_METRIC_LABEL_COUNT; d++) G.nvalues[d] = label_count(d);
    for (int m = 0; m < CHAT_METRIC_COUNT; m++) {
        chat_metric_label_dim d = METRICS[m].dim;
        G.offset[m] = at;
        at += (size_t)cells(m) * width(m);
        h = fnv(h, METRICS[m].name);
        h = fnv(h, LABELS[d].name);
        for (unsigned v = 0; v < G.nvalues[d]; v++) h = fnv(h, LABELS[d].value_at(v));
    }
    G.nslots = at;
    G.hash = h ^ CHAT_METRIC_NBUCKETS;
}

static size_t file_len(size_t nslots) { return sizeof(file_header) + nslots * sizeof(uint64_t); }

/* A new file for this process, mapped; its header says whose it is. */
static int map_file(const char *dir, const char *kind, char *err, size_t errlen)
{
    if (mkdir(dir, 0700) && errno != EEXIST) return chat_fail(err, errlen, CHAT_ERR, "metrics: cannot create %s", dir);
    int n = snprintf(G.path, sizeof G.path, "%s/%s-%ld%s", dir, kind, (long)getpid(), METRICS_SUFFIX);
    if (n < 0 || (size_t)n >= sizeof G.path) return chat_fail(err, errlen, CHAT_EINVAL, "metrics: folder name too long");
    int fd = open(G.path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return chat_fail(err, errlen, CHAT_ERR, "metrics: cannot create %s", G.path);
    size_t len = file_len(G.nslots);
    void *map = MAP_FAILED;
    if (ftruncate(fd, (off_t)len) == 0) map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        unlink(G.path);
        return chat_fail(err, errlen, CHAT_ERR, "metrics: cannot map %s", G.path);
    }
    file_header *fh = map;
    memcpy(fh->magic, METRICS_MAGIC, sizeof fh->magic);
    fh->layout_hash = G.hash;
    fh->pid = getpid();
    fh->nslots = G.nslots;
    snprintf(fh->kind, sizeof fh->kind, "%s", kind);
    G.map = map, G.map_len = len;
    G.slots = (_Atomic uint64_t *)((char *)map + sizeof(file_header));
    return 0;
}

int chat_metrics_init(const char *dir, const char *kind, char *err, size_t errlen)
{
    if (G.map) munmap(G.map, G.map_len); /* a forked child's copy of its parent's mapping: not its own */
    G.map = NULL, G.slots = NULL, G.path[0] = '\0';
    compute_layout();
    if (dir && *dir) return map_file(dir, kind && *kind ? kind : "process", err, errlen);
    size_t len = G.nslots * sizeof(uint64_t);
    void *map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED) return chat_fail(err, errlen, CHAT_ENOMEM, "metrics: out of memory");
    G.map = map, G.map_len = len;
    G.slots = map;
    return 0;
}

void chat_metrics_shutdown(void)
{
    if (!G.slots) return;
    for (int m = 0; m < CHAT_METRIC_COUNT; m++)
        if (METRICS[m].kind == K_GAUGE_SUM || METRICS[m].kind == K_GAUGE_MAX)
            for (unsigned c = 0; c < cells(m); c++) atomic_store_explicit(&G.slots[G.offset[m] + c], 0, memory_order_relaxed);
    G.slots = NULL;
    munmap(G.map, G.map_len);
    G.map = NULL;
}

unsigned chat_metric_label(chat_metric_label_dim dim, const char *value)
{
    if ((unsigned)dim >= CHAT_METRIC_LABEL_COUNT) return 0;
    if (!G.nslots) compute_layout();
    unsigned n = G.nvalues[dim];
    for (unsigned i = 0; value && i < n; i++)
        if (!strcmp(LABELS[dim].value_at(i), value)) return i;
    return n;
}

/* The slot of cell label of metric m, or NULL when there is none (no init, a bad label). */
static _Atomic uint64_t *cell(chat_metric_id m, unsigned label)
{
    _Atomic uint64_t *s = G.slots;
    if (!s || (unsigned)m >= CHAT_METRIC_COUNT) return NULL;
    if (label >= cells(m)) label = cells(m) - 1;
    return s + G.offset[m] + (size_t)label * width(m);
}

void chat_metric_inc(chat_metric_id m, unsigned label, uint64_t n)
{
    _Atomic uint64_t *c = cell(m, label);
    if (c) atomic_fetch_add_explicit(c, n, memory_order_relaxed);
}

void chat_metric_gauge_add(chat_metric_id m, unsigned label, int64_t delta)
{
    _Atomic uint64_t *c = cell(m, label);
    if (c) atomic_fetch_add_explicit(c, (uint64_t)delta, memory_order_relaxed);
}

void chat_metric_gauge_set(chat_metric_id m, unsigned label, int64_t value)
{
    _Atomic uint64_t *c = cell(m, label);
    if (c) atomic_store_explicit(c, (uint64_t)value, memory_order_relaxed);
}

void chat_metric_observe(chat_metric_id m, unsigned label, double seconds)
{
    _Atomic uint64_t *c = cell(m, label);
    if (!c || METRICS[m].kind != K_HISTOGRAM) return;
    if (!(seconds >= 0)) seconds = 0; /* NaN and clock steps backwards */
    unsigned b = 0;
    while (b < CHAT_METRIC_NBUCKETS && seconds > BUCKETS[b]) b++;
    atomic_fetch_add_explicit(&c[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&c[CHAT_METRIC_NBUCKETS + 1], (uint64_t)llround(seconds * 1e6), memory_order_relaxed);
    atomic_fetch_add_explicit(&c[CHAT_METRIC_NBUCKETS + 2], 1, memory_order_relaxed);
}

/* ---- rendering ---- */

typedef struct totals {
    uint64_t *sum;   /* counters, histograms, SUM gauges (as int64 bit patterns) */
    int64_t *max;    /* MAX gauges */
    bool *seen;      /* a live process reported the MAX gauge */
} totals;

static bool process_alive(int64_t pid)
{
    if (pid <= 0) return false;
    if (pid == getpid()) return true;
    return kill((pid_t)pid, 0) == 0 || errno == EPERM;
}

static void add_slots(totals *t, const _Atomic uint64_t *slots, bool alive)
{
    for (int m = 0; m < CHAT_METRIC_COUNT; m++) {
        bool gauge = METRICS[m].kind == K_GAUGE_SUM || METRICS[m].kind == K_GAUGE_MAX;
        if (gauge && !alive) continue;
        size_t n = (size_t)cells(m) * width(m), at = G.offset[m];
        for (size_t i = at; i < at + n; i++) {
            uint64_t v = atomic_load_explicit(&slots[i], memory_order_relaxed);
            if (METRICS[m].kind != K_GAUGE_MAX) {
                t->sum[i] += v;
            } else if (!t->seen[i] || (int64_t)v > t->max[i]) {
                t->max[i] = (int64_t)v, t->seen[i] = true;
            }
        }
    }
}

/* Adds one file's figures when it is a metrics file of this build. */
static void add_file(totals *t, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st;
    size_t len = file_len(G.nslots);
    void *map = MAP_FAILED;
    if (fstat(fd, &st) == 0 && (size_t)st.st_size == len) map = mmap(NULL, len, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map == MAP_FAILED) return;
    const file_header *fh = map;
    if (!memcmp(fh->magic, METRICS_MAGIC, sizeof fh->magic) && fh->layout_hash == G.hash && fh->nslots == G.nslots)
        add_slots(t, (const _Atomic uint64_t *)((const char *)map + sizeof(file_header)), process_alive(fh->pid));
    munmap(map, len);
}

static void add_dir(totals *t, const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    char path[1024];
    size_t sl = strlen(METRICS_SUFFIX);
    while ((e = readdir(d))) {
        size_t n = strlen(e->d_name);
        if (n <= sl || strcmp(e->d_name + n - sl, METRICS_SUFFIX)) continue;
        if (snprintf(path, sizeof path, "%s/%s", dir, e->d_name) < (int)sizeof path) add_file(t, path);
    }
    closedir(d);
}

static const char *kind_name(metric_kind k)
{
    return k == K_COUNTER ? "counter" : k == K_HISTOGRAM ? "histogram" : "gauge";
}

static const char *label_value(chat_metric_id m, unsigned c)
{
    chat_metric_label_dim d = METRICS[m].dim;
    return c < G.nvalues[d] ? LABELS[d].value_at(c) : METRICS_OTHER;
}

/* `{label="value"` plus `,` or `}` as the caller continues; nothing for an unlabelled metric. A name
 * "a,b" gives a="..",b="..", from the value's parts ("other", with no comma, is every label's). */
static int label_open(chat_buf *out, chat_metric_id m, unsigned c, bool more)
{
    const char *name = LABELS[METRICS[m].dim].name;
    if (!name) return more ? chat_buf_puts(out, "{") : 0;
    const char *value = label_value(m, c);
    int rc = chat_buf_puts(out, "{");
    for (;;) {
        size_t nl = strcspn(name, ","), vl = strcspn(value, ",");
        rc = rc || chat_buf_printf(out, "%.*s=\"%.*s\"", (int)nl, name, (int)vl, value);
        if (!name[nl]) break;
        name += nl + 1;
        if (value[vl]) value += vl + 1;
        rc = rc || chat_buf_puts(out, ",");
    }
    return rc || chat_buf_puts(out, more ? "," : "}") ? CHAT_ENOMEM : 0;
}

static int render_histogram(chat_buf *out, chat_metric_id m, unsigned c, const uint64_t *v)
{
    const char *name = METRICS[m].name;
    uint64_t cum = 0;
    int rc = 0;
    for (unsigned b = 0; b <= CHAT_METRIC_NBUCKETS && !rc; b++) {
        cum += v[b];
        rc = chat_buf_printf(out, "%s_bucket", name) || label_open(out, m, c, true);
        if (!rc && b < CHAT_METRIC_NBUCKETS) rc = chat_buf_printf(out, "le=\"%g\"} %" PRIu64 "\n", BUCKETS[b], cum);
        else if (!rc) rc = chat_buf_printf(out, "le=\"+Inf\"} %" PRIu64 "\n", cum);
    }
    if (!rc) rc = chat_buf_printf(out, "%s_sum", name) || label_open(out, m, c, false) ||
                  chat_buf_printf(out, " %.6f\n", (double)v[CHAT_METRIC_NBUCKETS + 1] / 1e6);
    if (!rc) rc = chat_buf_printf(out, "%s_count", name) || label_open(out, m, c, false) ||
                  chat_buf_printf(out, " %" PRIu64 "\n", v[CHAT_METRIC_NBUCKETS + 2]);
    return rc;
}

static int render_metric(chat_buf *out, chat_metric_id m, const totals *t)
{
    const metric_def *d = &METRICS[m];
    int rc = chat_buf_printf(out, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help, d->name, kind_name(d->kind));
    for (unsigned c = 0; c < cells(m) && !rc; c++) {
        size_t at = G.offset[m] + (size_t)c * width(m);
        if (d->kind == K_HISTOGRAM) {
            rc = render_histogram(out, m, c, t->sum + at);
            continue;
        }
        rc = chat_buf_puts(out, d->name) || label_open(out, m, c, false);
        if (rc) break;
        if (d->kind == K_COUNTER) rc = chat_buf_printf(out, " %" PRIu64 "\n", t->sum[at]);
        else if (d->kind == K_GAUGE_SUM) rc = chat_buf_printf(out, " %" PRId64 "\n", (int64_t)t->sum[at]);
        else rc = chat_buf_printf(out, " %" PRId64 "\n", t->seen[at] ? t->max[at] : 0);
    }
    return rc ? CHAT_ENOMEM : 0;
}

int chat_metrics_render(const char *dir, chat_buf *out)
{
    if (!G.nslots) compute_layout();
    totals t = {calloc(G.nslots, sizeof *t.sum), calloc(G.nslots, sizeof *t.max), calloc(G.nslots, sizeof *t.seen)};
    int rc = CHAT_ENOMEM;
    if (!t.sum || !t.max || !t.seen) goto done;
    if (dir && *dir) add_dir(&t, dir);
    else if (G.slots) add_slots(&t, G.slots, true);
    rc = 0;
    for (int m = 0; m < CHAT_METRIC_COUNT && !rc; m++) rc = render_metric(out, m, &t);
done:
    free(t.seen);
    free(t.max);
    free(t.sum);
    return rc;
}
