/* Intrusive linked lists, the two shapes the servers use: a FIFO queue (head, tail, a forward link) and
 * a doubly-linked list with a head pointer. The nodes are the caller's own structs and the link fields
 * are named by the caller (next, onext, newer...), so one object can sit in several lists; these macros
 * only spell the pointer updates once. They are macros rather than functions because the node types
 * differ; every argument is a plain lvalue, evaluated more than once.
 * Threads: none of their own; the caller holds whatever lock guards the list. */
#ifndef CHAT_LIST_H
#define CHAT_LIST_H

/* Appends the non-empty chain first..last (already linked, last's link NULL) at the tail of the queue
 * head..tail. */
#define CHAT_QUEUE_CONCAT(head, tail, first, last, link)                                                     \
    do {                                                                                                     \
        if (tail)                                                                                            \
            (tail)->link = (first);                                                                          \
        else                                                                                                 \
            (head) = (first);                                                                                \
        (tail) = (last);                                                                                     \
    } while (0)

/* Appends node at the tail of the queue head..tail; node's link must already be NULL (a calloc'd node,
 * or one just taken off a list). */
#define CHAT_QUEUE_APPEND(head, tail, node, link) CHAT_QUEUE_CONCAT(head, tail, node, node, link)

/* Takes node out of the doubly-linked list that starts at head (fields prev and next). A node without a
 * prev that is not the head is in no list: head is left alone. node's own links are left as they were. */
#define CHAT_DLIST_UNLINK(head, node)                                                                        \
    do {                                                                                                     \
        if ((node)->prev)                                                                                    \
            (node)->prev->next = (node)->next;                                                               \
        else if ((head) == (node))                                                                           \
            (head) = (node)->next;                                                                           \
        if ((node)->next) (node)->next->prev = (node)->prev;                                                 \
    } while (0)

#endif
