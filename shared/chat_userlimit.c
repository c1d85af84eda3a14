/* Per-user limits shared by the streamers of a host (see chat_userlimit.h).
 *
 * File layout: a header (magic, geometry), UL_SLOTS slot owners (pids), UL_SLOTS rows of UL_BUCKETS
 * answer counters (one row per process, written only by its owner), and UL_BUCKETS rate windows (minute
 * in the high 32 bits, count in the low 32, updated by compare-and-swap). The file's size is fixed by the
 * geometry; a file of another geometry is recreated. */
#include "chat_userlimit.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chat_common.h"

#define UL_MAGIC 0x43484c3155534c31ULL /* "CHL1USL1" */
enum { UL_SLOTS = 64, UL_BUCKETS = 4096 };

typedef struct ul_table {
    uint64_t magic;
    uint32_t slots, buckets;
    _Atomic int32_t owner[UL_SLOTS];
    _Atomic int32_t answers[UL_SLOTS][UL_BUCKETS];
    _Atomic uint64_t rate[UL_BUCKETS];
} ul_table;

struct chat_userlimit {
    ul_table *t;
    size_t len;
    bool shared;
    int slot;
    int max_answers, rate_per_min;
};

static unsigned bucket_of(const char *user)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)(user ? user : ""); *p; p++) h = (h ^ *p) * 16777619u;
    return h % UL_BUCKETS;
}

static bool owner_alive(int32_t pid)
{
    return pid > 0 && (kill(pid, 0) == 0 || errno != ESRCH);
}

/* Maps the file at path (under an flock while the header is checked, so that two processes starting
 * together agree on one initialised table). */
static ul_table *map_file(const char *path, size_t len, char *err, size_t errlen)
{
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        chat_fail(err, errlen, CHAT_ERR, "userlimit: cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    ul_table *t = NULL;
    struct stat st;
    if (flock(fd, LOCK_EX) == 0 && fstat(fd, &st) == 0) {
        bool fresh = (size_t)st.st_size != len;
        if (!fresh || (ftruncate(fd, 0) == 0 && ftruncate(fd, (off_t)len) == 0)) {
            void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
            t = m == MAP_FAILED ? NULL : m;
        }
        if (t && (t->magic != UL_MAGIC || t->slots != UL_SLOTS || t->buckets != UL_BUCKETS)) {
            memset(t, 0, len);
            t->slots = UL_SLOTS, t->buckets = UL_BUCKETS;
            t->magic = UL_MAGIC;
        }
    }
    if (!t) chat_fail(err, errlen, CHAT_ERR, "userlimit: cannot map %s: %s", path, strerror(errno));
    flock(fd, LOCK_UN); /* explicitly: the mapping holds the open file, and the lock with it, past close */
    close(fd);
    return t;
}

/* Claims a free slot, or one whose owner died, and zeroes its row (the dead owner's counts end here). */
static int claim_slot(ul_table *t, int32_t me)
{
    for (int i = 0; i < UL_SLOTS; i++) {
        int32_t cur = atomic_load_explicit(&t->owner[i], memory_order_relaxed);
        if (cur == me || owner_alive(cur)) continue;
        if (!atomic_compare_exchange_strong(&t->owner[i], &cur, -me)) continue; /* negative: being reset */
        for (int b = 0; b < UL_BUCKETS; b++) atomic_store_explicit(&t->answers[i][b], 0, memory_order_relaxed);
        atomic_store(&t->owner[i], me);
        return i;
    }
    return -1;
}

chat_userlimit *chat_userlimit_new(const char *path, int max_answers, int rate_per_min, char *err, size_t errlen)
{
    chat_userlimit *ul = calloc(1, sizeof *ul);
    if (!ul) return NULL;
    ul->len = sizeof(ul_table);
    ul->max_answers = max_answers;
    ul->rate_per_min = rate_per_min;
    ul->shared = path && *path;
    if (ul->shared) {
        ul->t = map_file(path, ul->len, err, errlen);
    } else {
        void *m = mmap(NULL, ul->len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ul->t = m == MAP_FAILED ? NULL : m;
        if (!ul->t) chat_fail(err, errlen, CHAT_ENOMEM, "userlimit: out of memory");
    }
    if (!ul->t) goto fail;
    ul->slot = claim_slot(ul->t, (int32_t)getpid());
    if (ul->slot < 0) {
        chat_fail(err, errlen, CHAT_ERR, "userlimit: all %d slots of %s are taken", UL_SLOTS, path);
        goto fail;
    }
    return ul;
fail:
    if (ul->t) munmap(ul->t, ul->len);
    free(ul);
    return NULL;
}

void chat_userlimit_free(chat_userlimit *ul)
{
    if (!ul) return;
    int32_t me = atomic_load(&ul->t->owner[ul->slot]);
    atomic_compare_exchange_strong(&ul->t->owner[ul->slot], &me, 0);
    munmap(ul->t, ul->len);
    free(ul);
}

int chat_userlimit_answers(const chat_userlimit *ul, const char *user)
{
    unsigned b = bucket_of(user);
    int n = 0;
    for (int i = 0; i < UL_SLOTS; i++) {
        int32_t pid = atomic_load_explicit(&ul->t->owner[i], memory_order_relaxed);
        if (i != ul->slot && !owner_alive(pid)) continue;
        n += atomic_load_explicit(&ul->t->answers[i][b], memory_order_relaxed);
    }
    return n;
}

/* Counts one message in the bucket's window of minute now_s / 60; false (counting nothing) when full. */
static bool rate_take(chat_userlimit *ul, unsigned b, int64_t now_s)
{
    if (ul->rate_per_min <= 0) return true;
    uint64_t minute = (uint64_t)(now_s / 60) & 0xffffffffu;
    _Atomic uint64_t *w = &ul->t->rate[b];
    uint64_t cur = atomic_load_explicit(w, memory_order_relaxed);
    for (;;) {
        uint64_t count = (cur >> 32) == minute ? (cur & 0xffffffffu) : 0;
        if (count >= (uint64_t)ul->rate_per_min) return false;
        if (atomic_compare_exchange_weak(w, &cur, minute << 32 | (count + 1))) return true;
    }
}

chat_ul_verdict chat_userlimit_admit(chat_userlimit *ul, const char *user, int64_t now_s)
{
    if (ul->max_answers > 0 && chat_userlimit_answers(ul, user) >= ul->max_answers) return CHAT_UL_ANSWERS;
    return rate_take(ul, bucket_of(user), now_s) ? CHAT_UL_OK : CHAT_UL_RATE;
}

bool chat_userlimit_begin(chat_userlimit *ul, const char *user)
{
    if (ul->max_answers > 0 && chat_userlimit_answers(ul, user) >= ul->max_answers) return false;
    atomic_fetch_add_explicit(&ul->t->answers[ul->slot][bucket_of(user)], 1, memory_order_relaxed);
    return true;
}

void chat_userlimit_end(chat_userlimit *ul, const char *user)
{
    _Atomic int32_t *c = &ul->t->answers[ul->slot][bucket_of(user)];
    if (atomic_fetch_sub_explicit(c, 1, memory_order_relaxed) <= 0) atomic_fetch_add(c, 1); /* unpaired end */
}

void chat_userlimit_set_owner(chat_userlimit *ul, int32_t pid)
{
    atomic_store(&ul->t->owner[ul->slot], pid);
}
