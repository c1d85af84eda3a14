/* A small uint64 -> pointer hash map (open addressing, linear probing, backward-shift deletion).
 *
 * Used by the streamer for job id -> session on the lws thread and job id -> job in the broker (both on the lws thread).
 * Keys are never 0. Not thread-safe: each map belongs to one thread. Capacity grows by doubling and
 * shrinks when mostly empty, so a map that once held many jobs does not keep their memory. */
#ifndef STREAMER_MAP_H
#define STREAMER_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct sm_slot {
    uint64_t key; /* 0 = empty */
    void *val;
} sm_slot;

typedef struct sm_map {
    sm_slot *slots;
    size_t cap; /* power of two or 0 */
    size_t n;
} sm_map;

void sm_init(sm_map *m);
void sm_free(sm_map *m);
/* Inserts or replaces. 0 or CHAT_ENOMEM. */
int sm_put(sm_map *m, uint64_t key, void *val);
void *sm_get(const sm_map *m, uint64_t key);
/* Removes key; returns its value or NULL. */
void *sm_del(sm_map *m, uint64_t key);

#endif
