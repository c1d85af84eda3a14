/* A hashed timing wheel: timers in O(1) for very many objects (the streamer's 50,000 connections, each
 * told shortly before its token expires), where a sorted timer list (lws's) costs O(n) per insertion.
 *
 * Time is an integer tick chosen by the caller (the streamer: seconds of the wall clock, the clock of a
 * token's exp). A node waits in slot (due mod nslots), a circular list; chat_wheel_expire walks the slots
 * of the ticks since its last call and takes the nodes that are due, passing over the ones due a later
 * turn of the wheel. A node is thus looked at once per turn until it fires: a timer hours away on a wheel
 * of 1024 one-second slots costs a few visits in its lifetime, and a sweep about n/1024 visits.
 * Nodes live inside the caller's objects: no allocation per timer.
 * Threads: one thread owns a wheel and its nodes. */
#ifndef CHAT_WHEEL_H
#define CHAT_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct chat_wheel_node {
    struct chat_wheel_node *prev, *next; /* NULL while not scheduled (a zeroed node is not) */
    int64_t due;
} chat_wheel_node;

typedef struct chat_wheel chat_wheel;

/* A wheel of nslots slots (a power of two) whose first tick to process is now. NULL when out of memory
 * or nslots is not a power of two. */
chat_wheel *chat_wheel_new(size_t nslots, int64_t now);
/* Frees the wheel, not the nodes (theirs are the caller's objects). Accepts NULL. */
void chat_wheel_free(chat_wheel *w);

/* Schedules n at tick due, rescheduling it when it is scheduled already. A due already past fires at
 * the next chat_wheel_expire. */
void chat_wheel_add(chat_wheel *w, chat_wheel_node *n, int64_t due);
/* Unschedules n; nothing when it is not scheduled. */
void chat_wheel_remove(chat_wheel *w, chat_wheel_node *n);
static inline bool chat_wheel_scheduled(const chat_wheel_node *n)
{
    return n->next != NULL;
}
/* Nodes scheduled. */
size_t chat_wheel_count(const chat_wheel *w);

/* Calls fire(node, ud) for every node due at or before now, each unscheduled before its call; fire may
 * add or remove any node, itself included (one added with a due <= now fires at the next call). Ticks
 * before the last call's are not looked at again. Returns how many fired. */
size_t chat_wheel_expire(chat_wheel *w, int64_t now, void (*fire)(chat_wheel_node *node, void *ud), void *ud);

#endif
