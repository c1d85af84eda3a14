/* The trickling-request rule of guard_track.h. State is one entry per connection, kept sorted by socket
 * inode so that each poll is a sort of the new list plus a binary search per connection: a few
 * thousand proxied WebSockets cost microseconds a second. */
#include "guard_track.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"

typedef struct track_entry {
    uint64_t inode;
    int64_t window_start_ms; /* first seen, or the server's last send */
    uint64_t sent_at_start;  /* the server's byte count then */
    bool named;              /* already returned as a victim */
} track_entry;

struct guard_track {
    int64_t timeout_ms;
    track_entry *entries; /* sorted by inode */
    size_t n;
};

guard_track *guard_track_new(int64_t timeout_ms)
{
    guard_track *t = calloc(1, sizeof *t);
    if (t) t->timeout_ms = timeout_ms;
    return t;
}

void guard_track_free(guard_track *t)
{
    if (!t) return;
    free(t->entries);
    free(t);
}

size_t guard_track_count(const guard_track *t)
{
    return t->n;
}

static const track_entry *find_entry(const guard_track *t, uint64_t inode)
{
    size_t lo = 0, hi = t->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (t->entries[mid].inode == inode) return &t->entries[mid];
        if (t->entries[mid].inode < inode)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int by_inode(const void *a, const void *b)
{
    uint64_t x = ((const track_entry *)a)->inode, y = ((const track_entry *)b)->inode;
    return (x > y) - (x < y);
}

/* The rule itself: e's window is old enough and the client sent in its second half. */
static bool trickling(const guard_track *t, const track_entry *e, const guard_sock *s, int64_t now_ms)
{
    int64_t last_recv_at = now_ms - (int64_t)s->last_recv_ms;
    return now_ms - e->window_start_ms >= t->timeout_ms && last_recv_at >= e->window_start_ms + t->timeout_ms / 2;
}

int guard_track_update(guard_track *t, const guard_sock *socks, size_t n, int64_t now_ms, size_t *victims)
{
    track_entry *next = n ? malloc(n * sizeof *next) : NULL;
    if (n && !next) return CHAT_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        const track_entry *old = find_entry(t, socks[i].inode);
        next[i] = old ? *old
                      : (track_entry){
                            .inode = socks[i].inode, .window_start_ms = now_ms, .sent_at_start = socks[i].bytes_sent};
        if (socks[i].bytes_sent != next[i].sent_at_start) { /* the server answered: a new window */
            next[i].window_start_ms = now_ms;
            next[i].sent_at_start = socks[i].bytes_sent;
            next[i].named = false;
        }
    }
    int nvictims = 0;
    for (size_t i = 0; i < n; i++) {
        if (next[i].named || !trickling(t, &next[i], &socks[i], now_ms)) continue;
        next[i].named = true;
        victims[nvictims++] = i;
    }
    qsort(next, n, sizeof *next, by_inode);
    free(t->entries);
    t->entries = next;
    t->n = n;
    return nvictims;
}
