/* uint64 -> pointer map for the streamer (see streamer_map.h). Backward-shift deletion keeps probe
 * sequences short without tombstones, so a long-running process with constant churn never degrades. */
#include "streamer_map.h"

#include <stdlib.h>

#include "chat_common.h"

#define SM_MIN_CAP 16

static size_t sm_hash(uint64_t k)
{
    /* splitmix64 finaliser: job ids are sequential, the mix spreads them over the table. */
    k ^= k >> 30;
    k *= 0xbf58476d1ce4e5b9ULL;
    k ^= k >> 27;
    k *= 0x94d049bb133111ebULL;
    k ^= k >> 31;
    return (size_t)k;
}

void sm_init(sm_map *m)
{
    m->slots = NULL, m->cap = 0, m->n = 0;
}

void sm_free(sm_map *m)
{
    free(m->slots);
    sm_init(m);
}

static int sm_resize(sm_map *m, size_t cap)
{
    sm_slot *slots = calloc(cap, sizeof *slots);
    if (!slots) return CHAT_ENOMEM;
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->slots[i].key) continue;
        size_t j = sm_hash(m->slots[i].key) & (cap - 1);
        while (slots[j].key)
            j = (j + 1) & (cap - 1);
        slots[j] = m->slots[i];
    }
    free(m->slots);
    m->slots = slots, m->cap = cap;
    return 0;
}

int sm_put(sm_map *m, uint64_t key, void *val)
{
    if (!key) return CHAT_EINVAL;
    if ((m->n + 1) * 4 > m->cap * 3 && sm_resize(m, m->cap ? m->cap * 2 : SM_MIN_CAP)) return CHAT_ENOMEM;
    size_t i = sm_hash(key) & (m->cap - 1);
    while (m->slots[i].key && m->slots[i].key != key)
        i = (i + 1) & (m->cap - 1);
    if (!m->slots[i].key) m->n++;
    m->slots[i].key = key, m->slots[i].val = val;
    return 0;
}

static size_t sm_find(const sm_map *m, uint64_t key)
{
    if (!m->cap || !key) return SIZE_MAX;
    size_t i = sm_hash(key) & (m->cap - 1);
    while (m->slots[i].key) {
        if (m->slots[i].key == key) return i;
        i = (i + 1) & (m->cap - 1);
    }
    return SIZE_MAX;
}

void *sm_get(const sm_map *m, uint64_t key)
{
    size_t i = sm_find(m, key);
    return i == SIZE_MAX ? NULL : m->slots[i].val;
}

void *sm_del(sm_map *m, uint64_t key)
{
    size_t i = sm_find(m, key);
    if (i == SIZE_MAX) return NULL;
    void *val = m->slots[i].val;
    size_t mask = m->cap - 1;
    /* Shift back the following entries of the cluster that would no longer be reachable. */
    size_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (!m->slots[j].key) break;
        size_t home = sm_hash(m->slots[j].key) & mask;
        /* Entry j may move to i when its home is not in the cyclic range (i, j]. */
        if ((j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j))) {
            m->slots[i] = m->slots[j];
            i = j;
        }
    }
    m->slots[i].key = 0, m->slots[i].val = NULL;
    m->n--;
    if (m->cap > SM_MIN_CAP && m->n * 8 < m->cap) sm_resize(m, m->cap / 2); /* failure keeps the old table */
    return val;
}
