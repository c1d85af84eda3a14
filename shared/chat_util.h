/* Small utilities every module needs: a growable byte buffer, UUIDs, UTF-8 validation, monotonic time.
 * No allocation failures are ignored: chat_buf functions return CHAT_ENOMEM and leave the buffer valid. */
#ifndef CHAT_UTIL_H
#define CHAT_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct chat_buf {
    char *data; /* always NUL-terminated when len > 0 or after any append */
    size_t len;
    size_t cap;
} chat_buf;

void chat_buf_init(chat_buf *b);
void chat_buf_free(chat_buf *b); /* releases memory; the buffer is reusable (empty) afterwards */
void chat_buf_reset(chat_buf *b); /* len = 0, keeps capacity */
int chat_buf_append(chat_buf *b, const void *data, size_t len);
int chat_buf_puts(chat_buf *b, const char *s);
int chat_buf_printf(chat_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Hands the data to the caller (caller frees; never NULL unless out of memory) and empties b. */
char *chat_buf_take(chat_buf *b);

/* Makes room for element n of a growable array: arrp points at the array pointer (T **), *cap is its
 * capacity in elements, doubled as needed. Returns 0 or CHAT_ENOMEM (the array is then unchanged). */
int chat_array_reserve(void *arrp, size_t *cap, size_t n, size_t elem_size);

/* Random version-4 UUID, 36 chars + NUL, from the OS CSPRNG. Returns 0 or CHAT_ERR. */
int chat_uuid4(char out[37]);
/* Version-7 UUID (RFC 9562): the Unix time in milliseconds first, then 74 random bits. Ids made a
 * millisecond or more apart sort (as strings) in the order they were made: the streamer names answers
 * with them, so that a resuming client's answer id says whether an answer is older or newer. */
int chat_uuid7(char out[37]);

/* Length (1..4) of the UTF-8 character at s, 0 when malformed, CHAT_UTF8_CUT when the avail bytes are
 * a well-formed beginning of a longer character (a stream holds them until the rest arrives).
 * RFC 3629 ranges: no overlongs, no surrogates, nothing above U+10FFFF. avail must be > 0. */
#define CHAT_UTF8_CUT ((size_t)-1)
size_t chat_utf8_char(const char *s, size_t avail);

/* True when [s, s+len) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
bool chat_utf8_valid(const char *s, size_t len);
/* Length of the longest prefix of s (at most max bytes) that does not cut a UTF-8 sequence. */
size_t chat_utf8_prefix(const char *s, size_t len, size_t max);

/* The whole file, NUL-terminated (caller frees); *len (may be NULL) gets its size. NULL on failure with
 * errno set; EFBIG when it is larger than max bytes (max 0 = no limit). */
char *chat_read_file(const char *path, size_t max, size_t *len);

/* Writes v in decimal at out (room for 20 digits; no NUL) and returns its length; out NULL: only the
 * length. Cheaper than snprintf on the paths that number every event. */
size_t chat_u64_dec(char *out, uint64_t v);

/* Monotonic clock in milliseconds / microseconds. */
int64_t chat_now_ms(void);
/* Sleeps ms milliseconds; a signal ends it early (EINTR), so that a loop around it sees its stop flag. */
void chat_sleep_ms(int ms);

/* For a program's main: handler on SIGTERM and SIGINT, without SA_RESTART, so that blocking calls
 * (accept, poll, zmq_poll, waitpid) return EINTR and the loop sees the flag the handler sets; SIGPIPE
 * ignored, so that a peer gone away is an error return of write or send, not the end of the process. */
void chat_handle_stop_signals(void (*handler)(int));
int64_t chat_now_us(void);

/* Identifier check for session and customer ids: 1..CHAT_ID_MAX chars of [A-Za-z0-9._:-]. */
#define CHAT_ID_MAX 64
bool chat_id_valid(const char *s);

/* Session ids compare as the database compares them: its utf8mb4_unicode_ci over [A-Za-z0-9._:-] is
 * ASCII case folding, so "Trip-1" and "trip-1" name one conversation (as a UUID is one whatever its
 * case). Every table kept in memory by session id (a worker's held answers, the streamer's followers and
 * jobs) compares with chat_id_equal and hashes with chat_id_hash, so it agrees with the history. */
bool chat_id_equal(const char *a, const char *b);
/* FNV-1a step over the case-folded id, from h (the running hash of what comes before it). */
uint64_t chat_id_hash(uint64_t h, const char *id);

/* Case-insensitive ASCII substring search; NULL when absent. */
const char *chat_strcasestr(const char *hay, const char *needle);

/* strdup that returns NULL for NULL. */
char *chat_strdup0(const char *s);

/* Comma-separated lists (settings such as CHAT_ZMQ_ENDPOINT or CHAT_LLM_FALLBACK): the item at *at, up to
 * the next comma or the end, and its length; *at moves past it and its comma. NULL once *at is at the
 * end (or is NULL), so a trailing comma adds nothing; an empty item ("a,,b") has length 0. */
const char *chat_list_next(const char **at, size_t *len);

#endif
