/* The worker's answer registry (see worker_answers.h): answers' texts, their followers, and the completed
 * answers kept per session for a retention window.
 *
 * The store is a chained hash table on (user, session id) (buckets sized once for max_kept, so a lookup
 * stays O(1) at the bound) threaded on one list in completion order: expiry and eviction take from its
 * old end, a session's newer answer replaces its older one. Keyed by the user too, as the sessions are
 * (chat_memory.h): another user's answer in a session of the same id neither replaces nor is found for
 * this user's. Session ids compare as the database compares them (chat_id_equal): case-folded. */
#include "worker_answers.h"

#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_list.h"

/* ---------------------------------------------------------------- text */

void wa_text_init(wa_text *t)
{
    chat_buf_init(&t->text);
    chat_buf_init(&t->lens);
    t->seq = 0;
}

void wa_text_reset(wa_text *t)
{
    chat_buf_reset(&t->text);
    chat_buf_reset(&t->lens);
    t->seq = 0;
}

void wa_text_free(wa_text *t)
{
    chat_buf_free(&t->text);
    chat_buf_free(&t->lens);
    t->seq = 0;
}

int wa_text_append(wa_text *t, chat_wire_str text, chat_wire_str piece_lens)
{
    if (!text.len) return 0;
    unsigned char one[4];
    if (!piece_lens.len) { /* the whole text is one piece */
        chat_wire_token_piece_put(one, (uint32_t)text.len);
        piece_lens = (chat_wire_str){(const char *)one, sizeof one};
    }
    size_t tl = t->text.len;
    if (chat_buf_append(&t->text, text.s, text.len)) return CHAT_ENOMEM;
    if (chat_buf_append(&t->lens, piece_lens.s, piece_lens.len)) {
        t->text.len = tl; /* both or neither */
        return CHAT_ENOMEM;
    }
    t->seq += piece_lens.len / 4;
    return 0;
}

size_t wa_text_offset(const wa_text *t, uint64_t n)
{
    if (n >= t->seq) return t->text.len;
    chat_wire_str lens = {t->lens.data, t->lens.len};
    size_t at = 0;
    for (uint64_t i = 0; i < n; i++)
        at += chat_wire_token_piece_len(&lens, (size_t)i);
    return at;
}

uint64_t wa_cursor(uint64_t seq, bool finished, const char *answer_id, const char *client_answer_id,
                   uint64_t last_seq)
{
    bool named = client_answer_id && *client_answer_id;
    uint64_t end = finished ? seq + 1 : seq;
    int order = named ? strcmp(answer_id ? answer_id : "", client_answer_id) : 0;
    if (order) return order > 0 ? 0 : end; /* newer: it missed all of it; older: it is past it */
    if (last_seq > end) return named ? end : 0;
    return last_seq;
}

/* ---------------------------------------------------------------- followers */

void wa_subs_free(wa_subs *s)
{
    free(s->at);
    s->at = NULL;
    s->n = s->cap = 0;
}

bool wa_subs_has(const wa_subs *s, uint64_t id, int tag)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->at[i].id == id && s->at[i].tag == tag) return true;
    return false;
}

int wa_subs_add(wa_subs *s, uint64_t id, int tag)
{
    if (wa_subs_has(s, id, tag)) return 0;
    if (chat_array_reserve(&s->at, &s->cap, s->n, sizeof *s->at)) return CHAT_ENOMEM;
    s->at[s->n++] = (wa_sub){id, tag};
    return 0;
}

bool wa_subs_remove(wa_subs *s, uint64_t id, int tag)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->at[i].id != id || s->at[i].tag != tag) continue;
        s->at[i] = s->at[--s->n]; /* order does not matter */
        return true;
    }
    return false;
}

void wa_subs_drop_tag(wa_subs *s, int tag)
{
    for (size_t i = 0; i < s->n;)
        if (s->at[i].tag == tag)
            s->at[i] = s->at[--s->n];
        else
            i++;
}

/* ---------------------------------------------------------------- the store */

struct wa_store {
    int64_t retention_ms;
    size_t max_kept;
    wa_kept **buckets;
    size_t nbuckets; /* a power of two */
    size_t n;
    wa_kept *oldest, *newest;
};

static uint64_t hash(const char *user_id, const char *session_id)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over user, a NUL, session (case-folded: chat_id_hash) */
    for (const char *s = user_id; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    h *= 1099511628211ull;
    return chat_id_hash(h, session_id);
}

wa_store *wa_store_new(int64_t retention_ms, size_t max_kept)
{
    wa_store *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->retention_ms = retention_ms;
    s->max_kept = max_kept;
    s->nbuckets = 64;
    while (s->nbuckets < max_kept && s->nbuckets < ((size_t)1 << 20))
        s->nbuckets *= 2;
    s->buckets = calloc(s->nbuckets, sizeof *s->buckets);
    if (!s->buckets) {
        free(s);
        return NULL;
    }
    return s;
}

static void kept_free(wa_kept *k)
{
    wa_text_free(&k->text);
    chat_wire_event_free(k->complete);
    free(k);
}

/* Unlinks k from its chain and from the completion list, and frees it. */
static void kept_remove(wa_store *s, wa_kept *k)
{
    wa_kept **pp = &s->buckets[hash(k->user_id, k->session_id) & (s->nbuckets - 1)];
    while (*pp && *pp != k)
        pp = &(*pp)->hnext;
    if (*pp) *pp = k->hnext;
    if (k->older)
        k->older->newer = k->newer;
    else
        s->oldest = k->newer;
    if (k->newer)
        k->newer->older = k->older;
    else
        s->newest = k->older;
    s->n--;
    kept_free(k);
}

void wa_store_free(wa_store *s)
{
    if (!s) return;
    while (s->oldest)
        kept_remove(s, s->oldest);
    free(s->buckets);
    free(s);
}

void wa_store_expire(wa_store *s, int64_t now_ms)
{
    while (s->oldest && now_ms - s->oldest->finished_ms >= s->retention_ms)
        kept_remove(s, s->oldest);
}

static wa_kept *lookup(wa_store *s, const char *user_id, const char *session_id)
{
    for (wa_kept *k = s->buckets[hash(user_id, session_id) & (s->nbuckets - 1)]; k; k = k->hnext)
        if (chat_id_equal(k->session_id, session_id) && !strcmp(k->user_id, user_id)) return k;
    return NULL;
}

const wa_kept *wa_store_find(wa_store *s, const char *user_id, const char *session_id, int64_t now_ms)
{
    wa_store_expire(s, now_ms);
    return lookup(s, user_id, session_id);
}

size_t wa_store_count(const wa_store *s)
{
    return s->n;
}

int wa_store_put(wa_store *s, const char *user_id, const char *session_id, const char *answer_id, wa_text *t,
                 const chat_wire_event *complete, int64_t now_ms)
{
    wa_store_expire(s, now_ms);
    if (s->retention_ms <= 0 || s->max_kept == 0) { /* keeping nothing: t keeps its memory for the next answer */
        wa_text_reset(t);
        return 0;
    }
    size_t ls = strlen(session_id) + 1, lu = strlen(user_id) + 1, la = strlen(answer_id) + 1;
    wa_kept *k = calloc(1, sizeof *k + ls + lu + la);
    chat_wire_event *copy = complete ? chat_wire_event_dup(complete) : NULL;
    if (!k || (complete && !copy)) {
        free(k);
        chat_wire_event_free(copy);
        return CHAT_ENOMEM;
    }
    char *p = (char *)(k + 1);
    k->session_id = memcpy(p, session_id, ls);
    k->user_id = memcpy(p + ls, user_id, lu);
    k->answer_id = memcpy(p + ls + lu, answer_id, la);
    k->complete = copy;
    k->finished_ms = now_ms;
    k->text = *t;
    wa_text_init(t);
    wa_kept *old = lookup(s, user_id, session_id);
    if (old) kept_remove(s, old);
    while (s->n >= s->max_kept && s->oldest)
        kept_remove(s, s->oldest);
    size_t b = hash(user_id, session_id) & (s->nbuckets - 1);
    k->hnext = s->buckets[b];
    s->buckets[b] = k;
    k->older = s->newest;
    CHAT_QUEUE_APPEND(s->oldest, s->newest, k, newer);
    s->n++;
    return 0;
}

/* ---------------------------------------------------------------- ATTACHED */

void wa_attached(const chat_wire_attach *req, const wa_text *t, const char *answer_id,
                 const chat_wire_event *complete, int64_t age_ms, chat_wire_attached *out)
{
    bool finished = complete != NULL;
    uint64_t cursor = wa_cursor(t->seq, finished, answer_id, req->answer_id, req->last_seq);
    *out = (chat_wire_attached){
        .job_id = req->job_id,
        .status = finished ? CHAT_WIRE_ATT_FINISHED : CHAT_WIRE_ATT_IN_FLIGHT,
        .answer_id = chat_wire_cstr(answer_id),
        .seq = t->seq,
        .cursor = cursor,
        .age_ms = finished && age_ms > 0 ? (uint64_t)age_ms : 0,
        .from = wa_text_offset(t, cursor),
        .text = {t->text.data ? t->text.data : "", t->text.len},
    };
    if (finished) {
        out->response = complete->complete.response;
        out->session_id = complete->complete.session_id;
        out->metadata_json = complete->complete.metadata_json;
    }
}
