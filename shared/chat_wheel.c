/* The hashed timing wheel (see chat_wheel.h).
 *
 * Each slot is a circular doubly linked list with a sentinel head, so linking and unlinking never test
 * for the ends and a node can be removed from wherever it is (its slot, or the list of nodes being fired)
 * in O(1). chat_wheel_expire first moves every due node to a private list, then fires them one by one:
 * a callback that removes or re-adds nodes (its own or others') never leaves the walk holding a pointer
 * to a node that moved. */
#include "chat_wheel.h"

#include <stdlib.h>

struct chat_wheel {
    chat_wheel_node *slots; /* mask + 1 sentinels */
    size_t mask;
    int64_t next_tick; /* the first tick chat_wheel_expire has not processed */
    size_t count;
};

static void list_init(chat_wheel_node *head)
{
    head->prev = head->next = head;
}

static void link_tail(chat_wheel_node *head, chat_wheel_node *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

static void unlink_node(chat_wheel_node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = NULL;
}

static chat_wheel_node *slot_of(const chat_wheel *w, int64_t tick)
{
    return &w->slots[(size_t)((uint64_t)tick & w->mask)];
}

chat_wheel *chat_wheel_new(size_t nslots, int64_t now)
{
    if (!nslots || (nslots & (nslots - 1))) return NULL;
    chat_wheel *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    w->slots = malloc(nslots * sizeof *w->slots);
    if (!w->slots) {
        free(w);
        return NULL;
    }
    for (size_t i = 0; i < nslots; i++)
        list_init(&w->slots[i]);
    w->mask = nslots - 1;
    w->next_tick = now;
    return w;
}

void chat_wheel_free(chat_wheel *w)
{
    if (!w) return;
    free(w->slots);
    free(w);
}

void chat_wheel_add(chat_wheel *w, chat_wheel_node *n, int64_t due)
{
    chat_wheel_remove(w, n);
    n->due = due;
    link_tail(slot_of(w, due < w->next_tick ? w->next_tick : due), n);
    w->count++;
}

void chat_wheel_remove(chat_wheel *w, chat_wheel_node *n)
{
    if (!chat_wheel_scheduled(n)) return;
    unlink_node(n);
    w->count--;
}

size_t chat_wheel_count(const chat_wheel *w)
{
    return w->count;
}

size_t chat_wheel_expire(chat_wheel *w, int64_t now, void (*fire)(chat_wheel_node *node, void *ud), void *ud)
{
    if (now < w->next_tick) return 0;
    int64_t from = w->next_tick;
    if (now - from > (int64_t)w->mask) from = now - (int64_t)w->mask; /* a long gap: every slot once */
    chat_wheel_node due;
    list_init(&due);
    for (int64_t t = from; t <= now; t++) {
        chat_wheel_node *head = slot_of(w, t);
        for (chat_wheel_node *n = head->next, *next; n != head; n = next) {
            next = n->next;
            if (n->due > now) continue; /* a later turn of the wheel */
            n->prev->next = n->next;
            n->next->prev = n->prev;
            link_tail(&due, n); /* still scheduled: a callback may remove it before it fires */
        }
    }
    w->next_tick = now + 1;
    size_t fired = 0;
    while (due.next != &due) {
        chat_wheel_node *n = due.next;
        chat_wheel_remove(w, n);
        fire(n, ud);
        fired++;
    }
    return fired;
}
