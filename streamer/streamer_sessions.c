/* The attachment registry (see streamer_sessions.h): groups of members per (user, session), in a chained
 * hash table on "user\0session". The session id compares as the database compares it (chat_id_equal,
 * chat_id_hash: case-folded), the user byte for byte. */
#include "streamer_sessions.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_list.h"
#include "chat_util.h"

typedef struct ss_group {
    struct ss_group *hnext;
    ss_member *members;
    size_t n;
    uint64_t hash;
    size_t ulen, slen; /* key: user, NUL, session, NUL */
    char key[];
} ss_group;

struct ss_member {
    ss_group *group;
    ss_member *prev, *next;
    void *conn;
};

struct ss_registry {
    ss_group **buckets;
    size_t nbuckets; /* a power of two */
    size_t ngroups;
};

static uint64_t key_hash(const char *user, const char *session)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over user, a separator, session */
    for (const char *p = user; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h = (h ^ 0xff) * 1099511628211ull;
    return chat_id_hash(h, session);
}

ss_registry *ss_new(void)
{
    ss_registry *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->nbuckets = 256;
    r->buckets = calloc(r->nbuckets, sizeof *r->buckets);
    if (!r->buckets) {
        free(r);
        return NULL;
    }
    return r;
}

void ss_free(ss_registry *r)
{
    if (!r) return;
    for (size_t b = 0; b < r->nbuckets; b++) {
        for (ss_group *g = r->buckets[b], *gn; g; g = gn) {
            gn = g->hnext;
            for (ss_member *m = g->members, *mn; m; m = mn)
                mn = m->next, free(m);
            free(g);
        }
    }
    free(r->buckets);
    free(r);
}

static ss_group *find(const ss_registry *r, const char *user, const char *session, uint64_t h)
{
    size_t ul = strlen(user), sl = strlen(session);
    for (ss_group *g = r->buckets[h & (r->nbuckets - 1)]; g; g = g->hnext)
        if (g->hash == h && g->ulen == ul && g->slen == sl && !memcmp(g->key, user, ul) &&
            chat_id_equal(g->key + ul + 1, session))
            return g;
    return NULL;
}

/* Doubles the table when it holds more groups than buckets (a failed grow only costs longer chains). */
static void grow(ss_registry *r)
{
    if (r->ngroups <= r->nbuckets) return;
    size_t nb = r->nbuckets * 2;
    ss_group **nbk = calloc(nb, sizeof *nbk);
    if (!nbk) return;
    for (size_t b = 0; b < r->nbuckets; b++) {
        for (ss_group *g = r->buckets[b], *gn; g; g = gn) {
            gn = g->hnext;
            g->hnext = nbk[g->hash & (nb - 1)];
            nbk[g->hash & (nb - 1)] = g;
        }
    }
    free(r->buckets);
    r->buckets = nbk;
    r->nbuckets = nb;
}

static ss_group *group_get(ss_registry *r, const char *user, const char *session)
{
    uint64_t h = key_hash(user, session);
    ss_group *g = find(r, user, session, h);
    if (g) return g;
    size_t ul = strlen(user), sl = strlen(session);
    g = calloc(1, sizeof *g + ul + sl + 2);
    if (!g) return NULL;
    g->hash = h;
    g->ulen = ul, g->slen = sl;
    memcpy(g->key, user, ul + 1);
    memcpy(g->key + ul + 1, session, sl + 1);
    g->hnext = r->buckets[h & (r->nbuckets - 1)];
    r->buckets[h & (r->nbuckets - 1)] = g;
    r->ngroups++;
    grow(r);
    return g;
}

static void group_drop_if_empty(ss_registry *r, ss_group *g)
{
    if (g->members) return;
    ss_group **pp = &r->buckets[g->hash & (r->nbuckets - 1)];
    while (*pp && *pp != g)
        pp = &(*pp)->hnext;
    if (*pp) *pp = g->hnext;
    r->ngroups--;
    free(g);
}

void ss_detach(ss_registry *r, ss_member **mp)
{
    ss_member *m = *mp;
    if (!m) return;
    ss_group *g = m->group;
    CHAT_DLIST_UNLINK(g->members, m);
    g->n--;
    group_drop_if_empty(r, g);
    free(m);
    *mp = NULL;
}

int ss_attach(ss_registry *r, ss_member **mp, const char *user_id, const char *session_id, void *conn)
{
    ss_member *m = *mp;
    if (m) {
        const ss_group *g = m->group;
        if (!strcmp(g->key, user_id) && chat_id_equal(g->key + g->ulen + 1, session_id)) return 0;
        ss_detach(r, mp);
    }
    ss_group *g = group_get(r, user_id, session_id);
    m = g ? calloc(1, sizeof *m) : NULL;
    if (!m) {
        if (g) group_drop_if_empty(r, g);
        return CHAT_ENOMEM;
    }
    m->group = g;
    m->conn = conn;
    m->next = g->members;
    if (g->members) g->members->prev = m;
    g->members = m;
    g->n++;
    *mp = m;
    return 0;
}

const char *ss_session(const ss_member *m)
{
    return m ? m->group->key + m->group->ulen + 1 : NULL;
}

size_t ss_each(ss_registry *r, const char *user_id, const char *session_id, const void *skip,
               void (*fn)(void *conn, void *ud), void *ud)
{
    ss_group *g = find(r, user_id, session_id, key_hash(user_id, session_id));
    size_t n = 0;
    for (ss_member *m = g ? g->members : NULL; m; m = m->next) {
        if (m->conn == skip) continue;
        fn(m->conn, ud);
        n++;
    }
    return n;
}

size_t ss_groups(const ss_registry *r)
{
    return r->ngroups;
}
