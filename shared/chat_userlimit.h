/* chat_userlimit: per-user limits shared by every streamer process of one host.
 *
 * Two limits, held across processes rather than per connection: at most max_answers answers of one user
 * in progress at once, and at most rate_per_min messages of one user per minute. The state is a small
 * table in an mmap'ed file (MAP_SHARED; every process of the host opens the same path), in buckets hashed
 * by user id: users whose ids share a bucket share its limits (4096 buckets: a collision makes a limit
 * stricter, never looser).
 *
 * Counts never leak when a process dies: each process owns one slot (a row of answer counters, claimed
 * by its pid, zeroed when claimed) and writes only its own row; a reader sums the rows of the slots whose
 * owner is alive (kill(pid, 0)), so a streamer killed with -9 stops counting at once, and its restart
 * claims a fresh row. The message rate is a fixed one-minute window per bucket (a count stamped with its
 * minute, reset by the first message of the next minute): a dead process's messages age out by
 * themselves.
 *
 * All operations are lock-free (relaxed atomics on the shared words, a compare-and-swap for the rate
 * window and the slot claim); a check and its increment are not one atomic step across processes, so
 * two streamers admitting the same user in the same instant may both pass the last unit of a limit: the
 * limit is exact per process and at most one over per other process. Not thread-safe within a process
 * beyond that (the streamer calls it from its lws thread only). */
#ifndef CHAT_USERLIMIT_H
#define CHAT_USERLIMIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct chat_userlimit chat_userlimit;

/* Why a message was refused. */
typedef enum { CHAT_UL_OK = 0, CHAT_UL_RATE, CHAT_UL_ANSWERS } chat_ul_verdict;

/* Opens (creating if needed) the table at path and claims this process's slot. path NULL or "": a table
 * private to this process (the limits then hold per process only). max_answers / rate_per_min <= 0: that
 * limit is off. NULL on failure (err says why). */
chat_userlimit *chat_userlimit_new(const char *path, int max_answers, int rate_per_min, char *err, size_t errlen);
/* Releases the slot (its counts stop counting) and unmaps. NULL is accepted. */
void chat_userlimit_free(chat_userlimit *ul);

/* One message of user at now_s (seconds, wall clock): counts it against the rate, then checks the
 * answers in progress. CHAT_UL_OK: admitted, and the rate counted it (call chat_userlimit_begin when its
 * answer starts). A refusal counts nothing. */
chat_ul_verdict chat_userlimit_admit(chat_userlimit *ul, const char *user, int64_t now_s);
/* An answer of user starts / ends in this process: begin returns false (counting nothing) when the user
 * has max_answers in progress across the host. Every successful begin takes exactly one end. */
bool chat_userlimit_begin(chat_userlimit *ul, const char *user);
void chat_userlimit_end(chat_userlimit *ul, const char *user);

/* The answers of user in progress across the host's live processes (tests, status). */
int chat_userlimit_answers(const chat_userlimit *ul, const char *user);

/* Test hook: marks this process's slot as owned by pid (a pid that is not alive makes it look like a
 * dead streamer's). */
void chat_userlimit_set_owner(chat_userlimit *ul, int32_t pid);

#endif
