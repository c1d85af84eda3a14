/* Knowledge-base retrieval and import over kb_documents.
 *
 * Retrieval uses FULLTEXT indexes in natural-language mode: those of kb_search, the Aria copy of the
 * InnoDB table that triggers and chat_kb_sync keep in step (migration 006; half the search cost), or
 * of kb_documents itself (schema.sql says why InnoDB) where the copy cannot be kept or is behind a
 * commit. The question is sanitised first: only word tokens survive, so the boolean-mode operators
 * (+ - ~ * " ( ) @ <>) never reach the parser and the text is a bound parameter anyway. Fault codes take
 * a separate exact path first (boolean "+E42", the code being validated as letter+digits), because a
 * symptom guide mentioning many codes must not outrank the section that is about this one. A customer's
 * model boosts its passages and damps other models'.
 * Every read of kb_documents for a question asks for MariaDB's query cache (SQL_CACHE; the server caches
 * only what asks with query_cache_type=2; the word sample, read rarely and large, does not): a question
 * asked before is answered from memory, and any write to the table
 * empties the table's entries at its commit, so an admin's committed edit is visible to the next question
 * and an uncommitted or rolled-back one never is. Without a query cache the keyword does nothing.
 * Import splits a markdown file into one passage per "## " section and replaces the source's rows in one
 * transaction; everything that can be refused (UTF-8, agent, sizes) is checked before it starts.
 * The server's innodb_ft_* settings decide whether short tokens (V6, E42) are indexed at all:
 * chat_kb_fulltext_check judges them, for the processes' start and /health. */
#include "chat_kb.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "chat_agent.h"
#include "chat_common.h"
#include "chat_log.h"
#include "chat_util.h"

#define KB_MAX_TERMS 48
#define KB_MAX_TERM_BYTES 84
/* Front matter "agent: any" means what no agent line means: a passage for every agent. */
#define KB_ANY_AGENT "any"

/* A byte that belongs to a word: ASCII letters/digits, or part of a valid multi-byte UTF-8 sequence. */
static size_t word_char_len(const unsigned char *s, size_t avail)
{
    if (s[0] < 0x80) return isalnum(s[0]) ? 1 : 0;
    for (size_t n = 2; n <= 4 && n <= avail; n++)
        if (chat_utf8_valid((const char *)s, n)) return n;
    return 0;
}

/* English function words: with the server's stopword list off (so "hp", "V6" and "E42" stay
 * searchable), the question's own glue words would otherwise match every passage. Sorted for bsearch. */
static const char *const STOPWORDS[] = {
    "a", "about", "all", "am", "an", "and", "any", "are", "as", "at", "be", "been", "but", "by", "can", "could",
    "did", "do", "does", "for", "from", "get", "give", "had", "has", "have", "hello", "hey", "hi", "how", "i",
    "if", "in", "into", "is", "it", "its", "just", "know", "let", "like", "me", "mean", "means", "much", "my",
    "of", "on", "or", "our", "please", "say", "should", "so", "tell", "than", "that", "the", "their", "them",
    "then", "there", "these", "they", "this", "those", "to", "us", "was", "we", "were", "what", "whats", "when",
    "where", "which", "who", "why", "will", "with", "would", "you", "your",
};

static int cmp_stop(const void *key, const void *elem) { return strcmp(key, *(const char *const *)elem); }

static bool is_stopword(const char *w)
{
    if (w[0] && !w[1] && !isdigit((unsigned char)w[0])) return true; /* lone letters: "t" of "won't" */
    return bsearch(w, STOPWORDS, CHAT_ARRAY_LEN(STOPWORDS), sizeof STOPWORDS[0], cmp_stop) != NULL;
}

/* The next word of s[*i..len), lower-case and NUL-terminated, into word; its length, 0 at the end.
 * Words over KB_MAX_TERM_BYTES are skipped. The one tokeniser of questions and of the word sample. */
static size_t next_word(const unsigned char *s, size_t len, size_t *i, char word[KB_MAX_TERM_BYTES + 1])
{
    while (*i < len) {
        size_t start = *i, n;
        while (*i < len && (n = word_char_len(s + *i, len - *i)) > 0) *i += n;
        size_t wlen = *i - start;
        if (wlen == 0) {
            ++*i; /* separator or invalid byte */
            continue;
        }
        if (wlen > KB_MAX_TERM_BYTES) continue;
        for (size_t k = 0; k < wlen; k++) word[k] = (char)tolower(s[start + k]);
        word[wlen] = '\0';
        return wlen;
    }
    return 0;
}

char *chat_kb_sanitize(const char *text, size_t max_terms)
{
    chat_buf out;
    chat_buf_init(&out);
    if (!text) return chat_buf_take(&out);
    const unsigned char *p = (const unsigned char *)text;
    size_t len = strlen(text), i = 0, terms = 0;
    if (max_terms == 0 || max_terms > KB_MAX_TERMS) max_terms = KB_MAX_TERMS;
    char word[KB_MAX_TERM_BYTES + 1];
    size_t wlen;
    while (terms < max_terms && (wlen = next_word(p, len, &i, word)) > 0) {
        if (is_stopword(word)) continue;
        /* skip duplicates: they only inflate the query */
        bool dup = false;
        if (out.len) {
            const char *q = out.data;
            while (q && *q) {
                const char *sp = strchr(q, ' ');
                size_t ql = sp ? (size_t)(sp - q) : strlen(q);
                if (ql == wlen && !memcmp(q, word, wlen)) {
                    dup = true;
                    break;
                }
                q = sp ? sp + 1 : NULL;
            }
        }
        if (dup) continue;
        if ((out.len && chat_buf_puts(&out, " ")) || chat_buf_append(&out, word, wlen)) {
            chat_buf_free(&out);
            return NULL;
        }
        terms++;
    }
    return chat_buf_take(&out);
}

int chat_kb_find_fault_code(const char *text, char out[16])
{
    if (!text) return 0;
    for (const char *p = text; *p; p++) {
        char c = (char)toupper((unsigned char)*p);
        if (c != 'E' && c != 'P' && c != 'F') continue;
        if (p > text && isalnum((unsigned char)p[-1])) continue;
        const char *d = p + 1;
        if (*d == '-') d++;
        size_t nd = 0;
        while (isdigit((unsigned char)d[nd])) nd++;
        if (nd < 1 || nd > 4 || isalnum((unsigned char)d[nd])) continue;
        out[0] = c;
        memcpy(out + 1, d, nd);
        out[1 + nd] = '\0';
        return 1;
    }
    return 0;
}

static void passage_free(chat_kb_passage *p)
{
    free(p->source), free(p->title), free(p->agent), free(p->model_id), free(p->body);
}

void chat_kb_result_clear(chat_kb_result *r)
{
    if (!r) return;
    for (size_t i = 0; i < r->n; i++) passage_free(&r->items[i]);
    free(r->items);
    memset(r, 0, sizeof *r);
}

typedef struct collect_ctx {
    chat_kb_result *out;
    size_t cap;
    int pending; /* the derived table's ninth column: 1 = changes waiting, 0 = none, -1 = no row read */
} collect_ctx;

/* Columns: id, source, title, agent, model_id, body, score, raw (and pending from kb_search). Skips ids
 * already collected. */
static int collect_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    collect_ctx *c = ud;
    if (ncols > 8 && v[8]) c->pending = atoi(v[8]) != 0;
    long long id = atoll(v[0]);
    for (size_t i = 0; i < c->out->n; i++)
        if (c->out->items[i].id == id) return 0;
    if (c->out->n == c->cap) return 0;
    chat_kb_passage *p = &c->out->items[c->out->n];
    memset(p, 0, sizeof *p);
    p->id = id;
    p->source = chat_strdup0(v[1]);
    p->title = chat_strdup0(v[2]);
    p->agent = chat_strdup0(v[3]);
    p->model_id = chat_strdup0(v[4]);
    p->body = chat_strdup0(v[5]);
    p->score = v[6] ? atof(v[6]) : 0;
    double raw = v[7] ? atof(v[7]) : 0;
    if (!p->source || !p->title || !p->body || (v[3] && !p->agent) || (v[4] && !p->model_id)) {
        passage_free(p);
        return CHAT_ENOMEM;
    }
    if (raw > c->out->top_raw) c->out->top_raw = raw;
    c->out->n++;
    return 0;
}

/* Retrieval tuning, spelled as SQL literals (doubles: see below) so that the statements' text, and with
 * it the prepared-statement and query-cache keys, stays one constant string. */
/* A passage of the model in question counts double, another model's half: a question about the 250
 * must not be answered from the 340's specs, yet a passage about no model (agent-wide) is unaffected. */
#define KB_OWN_MODEL_FACTOR "2e0"
#define KB_OTHER_MODEL_FACTOR "5e-1"
/* Another agent's passage counts 0.6: the route is a preference, not a filter, so a misrouted question
 * still finds its answer when nothing of the agent's own matches better. */
#define KB_OTHER_AGENT_FACTOR "6e-1"
/* The title's own relevance counts half (see below). */
#define KB_TITLE_WEIGHT "5e-1"
/* The bound on a relevance, far above any real one, so the products stay finite. */
#define KB_RELEVANCE_MAX "1e6"
/* Fault-code hits come first in a result and score KB_FAULT_BASE plus their relevance, above the text
 * matches after them; a passage whose title names the code (the section about it) counts
 * KB_FAULT_TITLE_FACTOR times. Their raw relevance, for confidence, is KB_FAULT_RAW: a sure match (the
 * pipeline's strength 96 %). */
#define KB_FAULT_BASE "100"
#define KB_FAULT_TITLE_FACTOR "3"
#define KB_FAULT_RAW "20"
#define KB_K_MAX 50 /* passages a search returns at most (chat_kb_query.k) */

/* Passages that name the fault code (boolean "+E42"); the code was validated as letter + digits. */
#define SQL_FAULT_IN(TABLE, PENDING)                                                                     \
    "SELECT SQL_CACHE id, source, title, agent, model_id, body,"                                          \
    " " KB_FAULT_BASE " + LEAST(MATCH(title, body) AGAINST (? IN BOOLEAN MODE), " KB_RELEVANCE_MAX ")"    \
    " * (CASE WHEN title LIKE ? THEN " KB_FAULT_TITLE_FACTOR " ELSE 1 END) AS score,"                     \
    " " KB_FAULT_RAW " AS raw" PENDING                                                                     \
    " FROM " TABLE " WHERE MATCH(title, body) AGAINST (? IN BOOLEAN MODE)"                                \
    " ORDER BY score DESC, id LIMIT ?"

/* Ranking runs over (id, agent, model_id) only and the bodies of the k winners are fetched by key
 * afterwards: sorting thousands of matches with their bodies attached made MariaDB spill a temporary
 * table to disk for every question. The relevance is the passage's plus half its title's (the title
 * index weighs words by how rare they are among titles: "Engine and Power" beats an overview that
 * repeats the model name; at full weight, exact title words like "Capacity" outranked better bodies).
 * LEAST() bounds the relevance, so the products never overflow whatever an engine reports.
 *
 * Only the KB_CANDIDATES most relevant matches are re-ranked (the model and agent factors, the title's
 * relevance). A natural-language MATCH in WHERE hands its rows over in relevance order, so the LIMIT
 * stops reading there: a question whose words are in 2,000 passages used to read, score and sort all
 * 2,000 rows (2.3 ms of MariaDB's CPU at 10,000 passages), and now reads 200 (1.0 ms) with the same
 * winners. Boolean mode has no such order, so its fallback statement reads every match. The factors
 * are doubles (1e0, not 1.0): a DECIMAL literal made MariaDB multiply in decimal arithmetic per row. */
#define KB_CANDIDATES "200"
#define SQL_TEXT_IN(MODE, CANDIDATES, TABLE, PENDING)                                                      \
    "SELECT SQL_CACHE k.id, k.source, k.title, k.agent, k.model_id, k.body, r.score, r.raw" PENDING " FROM" \
    " (SELECT id, raw * (CASE WHEN ? IS NULL OR model_id IS NULL THEN 1e0 WHEN model_id = ? THEN "          \
    KB_OWN_MODEL_FACTOR " ELSE " KB_OTHER_MODEL_FACTOR " END)"                                              \
    "             * (CASE WHEN ? IS NULL OR agent IS NULL OR agent = ? THEN 1e0 ELSE " KB_OTHER_AGENT_FACTOR  \
    " END) AS score, raw"                                                                                   \
    "  FROM (SELECT id, agent, model_id, LEAST(MATCH(title, body) AGAINST (? IN " MODE ")"                  \
    "                                        + " KB_TITLE_WEIGHT " * MATCH(title) AGAINST (? IN " MODE "), " \
    KB_RELEVANCE_MAX ") AS raw"                                                                             \
    "        FROM " TABLE " WHERE MATCH(title, body) AGAINST (? IN " MODE ") " CANDIDATES ") m"             \
    "  ORDER BY score DESC, id LIMIT ?) r"                                                                  \
    " JOIN " TABLE " k ON k.id = r.id ORDER BY r.score DESC, r.id"
#define SQL_TEXT_NL(TABLE, PENDING) SQL_TEXT_IN("NATURAL LANGUAGE MODE", "LIMIT " KB_CANDIDATES, TABLE, PENDING)

/* The same in boolean mode (any of the words), for when the natural-language search found nothing.
 * MyISAM's and Aria's natural-language search ignores a word found in more than half of the passages,
 * so in a knowledge base of a few passages a question made of their common words got no context at
 * all; boolean mode has no such rule. InnoDB's natural-language search has none either, so on the
 * InnoDB table (migration 004) this finds nothing the first search did not: it stays for a table an
 * admin keeps in another engine, and costs a statement only when the first search found nothing. */
#define SQL_TEXT_ANY(TABLE, PENDING) SQL_TEXT_IN("BOOLEAN MODE", "", TABLE, PENDING)

/* Where a question is searched (migration 006): kb_search, the derived Aria copy whose full-text search
 * costs about half of InnoDB's, or kb_documents itself. The copy's statements carry a ninth column,
 * whether kb_changes has a row: an edit committed to kb_documents that the copy has not taken yet. The
 * query cache keeps that answer right too, since a commit that writes kb_changes empties the entries
 * that read it. */
#define KB_PENDING ", (SELECT COUNT(*) FROM (SELECT 1 FROM kb_changes LIMIT 1) c) AS pending"
typedef struct kb_source {
    const char *fault, *text, *any;
} kb_source;
static const kb_source KB_DIRECT = {SQL_FAULT_IN("kb_documents", ""), SQL_TEXT_NL("kb_documents", ""),
                                    SQL_TEXT_ANY("kb_documents", "")};
static const kb_source KB_DERIVED = {SQL_FAULT_IN("kb_search", KB_PENDING), SQL_TEXT_NL("kb_search", KB_PENDING),
                                     SQL_TEXT_ANY("kb_search", KB_PENDING)};

/* Which words are common: read from a sample of the passages, not counted per word.
 *
 * Counting one word's passages is a full-text search of its whole posting list, and on InnoDB a row
 * read per match as well (a COUNT(*) under MATCH examines every matching row): 13-50 ms for a word in
 * 13,000-45,000 of 100,000 passages, once per new word of a question, which made the 100,000-passage
 * p99 (docs/benchmarks.md). Whether a word is common is a property of the text as a whole, so it is
 * read once per process and STATS_SAMPLE_TTL_MS: about STATS_SAMPLE_ROWS passages at evenly spaced ids
 * (every passage when they are fewer), tokenised here as a question is, and the words found in more
 * than common_pct % of them kept. A question then runs no statement for its words. At the default 5 %
 * of 4,096 rows a word at the threshold is in about 205 +- 14 of them; single passages spread over the
 * whole table, not blocks of neighbours, so the words of one document or one model cannot reach that.
 * The sample costs about 20 ms at 100,000 passages (4,096 reads by key). */
#define STATS_MIN_PASSAGES 1000    /* smaller knowledge bases are searched with every word */
#define STATS_TOTAL_TTL_MS 60000
#define STATS_SAMPLE_TTL_MS 600000 /* and sooner when the passage count moved by a quarter */
#define STATS_SAMPLE_ROWS 4096

typedef struct stats_word {
    char *term;
    double share; /* of the sampled passages that have it */
} stats_word;

struct chat_kb_stats {
    pthread_mutex_t mu; /* over everything below; never held across a statement */
    pthread_cond_t sampled; /* a sampling ended: for the threads that wait for the first sample */
    int common_pct;
    long long total;
    int64_t total_at_ms;
    stats_word *common; /* the common words of the last sample, sorted by term */
    size_t ncommon;
    long long sample_total; /* total when sampled */
    int64_t sample_at_ms;   /* 0 = never sampled */
    bool sampling;          /* a thread is reading a new sample; the others use the old one */
};

chat_kb_stats *chat_kb_stats_new(int common_pct)
{
    chat_kb_stats *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->sampled, NULL);
    s->common_pct = common_pct;
    return s;
}

static void stats_words_free(stats_word *w, size_t n)
{
    for (size_t i = 0; i < n; i++) free(w[i].term);
    free(w);
}

void chat_kb_stats_free(chat_kb_stats *s)
{
    if (!s) return;
    stats_words_free(s->common, s->ncommon);
    pthread_cond_destroy(&s->sampled);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

static int count_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    *(long long *)ud = v[0] ? atoll(v[0]) : 0;
    return 0;
}

/* The sample's words while it is read: an open-addressing table, each word counted once per passage. */
typedef struct sample_slot {
    char *term;
    unsigned count, last_row;
} sample_slot;

typedef struct sample_ctx {
    sample_slot *slot;
    size_t cap, used; /* cap: a power of two */
    unsigned rows;
} sample_ctx;

static uint32_t term_hash(const char *t, size_t n)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)t[i]) * 16777619u;
    return h;
}

static int sample_grow(sample_ctx *c)
{
    size_t cap = c->cap ? c->cap * 2 : 8192;
    sample_slot *slot = calloc(cap, sizeof *slot);
    if (!slot) return CHAT_ENOMEM;
    for (size_t i = 0; i < c->cap; i++) {
        if (!c->slot[i].term) continue;
        size_t j = term_hash(c->slot[i].term, strlen(c->slot[i].term)) & (cap - 1);
        while (slot[j].term) j = (j + 1) & (cap - 1);
        slot[j] = c->slot[i];
    }
    free(c->slot);
    c->slot = slot, c->cap = cap;
    return 0;
}

static int sample_add(sample_ctx *c, const char *w, size_t n)
{
    if ((c->used + 1) * 2 > c->cap && sample_grow(c)) return CHAT_ENOMEM;
    size_t j = term_hash(w, n) & (c->cap - 1);
    while (c->slot[j].term && strcmp(c->slot[j].term, w)) j = (j + 1) & (c->cap - 1);
    sample_slot *sl = &c->slot[j];
    if (!sl->term) {
        if (!(sl->term = strdup(w))) return CHAT_ENOMEM;
        c->used++;
    } else if (sl->last_row == c->rows) {
        return 0; /* this passage counted already */
    }
    sl->count++;
    sl->last_row = c->rows;
    return 0;
}

/* Columns: title, body. */
static int sample_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    sample_ctx *c = ud;
    c->rows++; /* rows count from 1: last_row 0 is no passage */
    for (int col = 0; col < ncols && col < 2; col++) {
        if (!v[col]) continue;
        size_t i = 0, n;
        char word[KB_MAX_TERM_BYTES + 1];
        while ((n = next_word((const unsigned char *)v[col], lens[col], &i, word)) > 0)
            if (!is_stopword(word) && sample_add(c, word, n)) return CHAT_ENOMEM;
    }
    return 0;
}

static int cmp_word(const void *a, const void *b)
{
    return strcmp(((const stats_word *)a)->term, ((const stats_word *)b)->term);
}

typedef struct id_span {
    long long lo, hi;
} id_span;

static int span_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    id_span *s = ud;
    s->lo = v[0] ? atoll(v[0]) : 0;
    s->hi = v[1] ? atoll(v[1]) : -1;
    return 0;
}

/* The sample's passages by key: ids lo, lo + step, lo + 2 step, ... (n of them, at most 65,536 from
 * four 16-row digits), so it is spread evenly over the table. Plain SQL: no sequence engine needed. */
#define SAMPLE_DIGITS                                                                                       \
    "SELECT 0 UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 UNION ALL SELECT 4 UNION ALL SELECT 5" \
    " UNION ALL SELECT 6 UNION ALL SELECT 7 UNION ALL SELECT 8 UNION ALL SELECT 9 UNION ALL SELECT 10"       \
    " UNION ALL SELECT 11 UNION ALL SELECT 12 UNION ALL SELECT 13 UNION ALL SELECT 14 UNION ALL SELECT 15"
#define STATS_SAMPLE_MAX_KEYS 65536
static const char SQL_SAMPLE[] =
    "WITH d(n) AS (" SAMPLE_DIGITS "),"
    " s(n) AS (SELECT a.n * 4096 + b.n * 256 + c.n * 16 + e.n FROM d a, d b, d c, d e WHERE a.n <= ?)"
    " SELECT k.title, k.body FROM s JOIN kb_documents k ON k.id = ? + s.n * ? WHERE s.n < ?";

/* Reads a sample of about STATS_SAMPLE_ROWS of the total passages and returns its common words (*out
 * sorted by term, *n of them; caller frees). Ids with gaps (rows deleted or replaced) get more keys
 * looked up, up to STATS_SAMPLE_MAX_KEYS. */
static int sample_common(chat_db *db, int common_pct, long long total, stats_word **out, size_t *n, char *err,
                         size_t errlen)
{
    *out = NULL, *n = 0;
    id_span span = {0, -1};
    int rc = chat_db_run(db, "SELECT MIN(id), MAX(id) FROM kb_documents", NULL, 0, span_row, &span, NULL, NULL, err,
                         errlen);
    if (rc || span.hi < span.lo || total < 1) return rc;
    long long ids = span.hi - span.lo + 1;
    long long keys = (long long)((double)STATS_SAMPLE_ROWS * (double)ids / (double)total);
    if (keys < STATS_SAMPLE_ROWS) keys = STATS_SAMPLE_ROWS;
    if (keys > STATS_SAMPLE_MAX_KEYS) keys = STATS_SAMPLE_MAX_KEYS;
    long long step = ids / keys;
    if (step < 1) step = 1, keys = ids;
    /* (keys - 1) / 4096: the cross join stops at the digits it needs, 4,096 rows for 4,096 keys */
    chat_db_param p[] = {CHAT_DB_P_INT((keys - 1) / 4096), CHAT_DB_P_INT(span.lo), CHAT_DB_P_INT(step),
                         CHAT_DB_P_INT(keys)};
    sample_ctx c = {0};
    rc = chat_db_run(db, SQL_SAMPLE, p, 4, sample_row, &c, NULL, NULL, err, errlen);
    if (rc == CHAT_ENOMEM) chat_fail(err, errlen, rc, "out of memory");
    size_t keep = 0;
    for (size_t i = 0; !rc && i < c.cap; i++)
        if (c.slot[i].term && (long long)c.slot[i].count * 100 > (long long)c.rows * common_pct) keep++;
    stats_word *w = keep ? calloc(keep, sizeof *w) : NULL;
    if (keep && !w) rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    for (size_t i = 0; i < c.cap; i++) {
        sample_slot *sl = &c.slot[i];
        if (!rc && sl->term && (long long)sl->count * 100 > (long long)c.rows * common_pct) {
            w[*n].term = sl->term, w[*n].share = (double)sl->count / c.rows;
            ++*n;
            sl->term = NULL; /* moved */
        }
        free(sl->term);
    }
    free(c.slot);
    if (rc) {
        stats_words_free(w, *n);
        *n = 0;
        return rc;
    }
    if (*n) qsort(w, *n, sizeof *w, cmp_word);
    *out = w;
    return 0;
}

/* Brings st's passage count and sample up to date (on db, without st's lock held); *total gets the
 * count. With a sample in hand, one thread reads the next while the others go on with the old one;
 * without, the others wait for the first. */
static int stats_refresh(chat_db *db, chat_kb_stats *st, long long *total, char *err, size_t errlen)
{
    int64_t now = chat_now_ms();
    pthread_mutex_lock(&st->mu);
    *total = st->total;
    bool stale = !st->total_at_ms || now - st->total_at_ms > STATS_TOTAL_TTL_MS;
    pthread_mutex_unlock(&st->mu);
    if (stale) {
        int rc = chat_db_run(db, "SELECT SQL_CACHE COUNT(*) FROM kb_documents", NULL, 0, count_row, total, NULL, NULL,
                             err, errlen);
        if (rc) return rc;
        pthread_mutex_lock(&st->mu);
        st->total = *total;
        st->total_at_ms = now;
        pthread_mutex_unlock(&st->mu);
    }
    if (*total < STATS_MIN_PASSAGES) return 0;
    pthread_mutex_lock(&st->mu);
    for (;;) {
        bool have = st->sample_at_ms != 0;
        bool due = !have || now - st->sample_at_ms > STATS_SAMPLE_TTL_MS ||
                   llabs(*total - st->sample_total) * 4 > st->sample_total;
        if (!due || (have && st->sampling)) { /* up to date, or another thread reads the next one */
            pthread_mutex_unlock(&st->mu);
            return 0;
        }
        if (!st->sampling) break;
        /* the first sample is being read (by every stage thread at once, at a worker's start, it cost
         * each of them the whole read): wait for it; should it fail, this thread tries itself */
        pthread_cond_wait(&st->sampled, &st->mu);
    }
    st->sampling = true;
    pthread_mutex_unlock(&st->mu);
    stats_word *w, *old = NULL;
    size_t n, nold = 0;
    int rc = sample_common(db, st->common_pct, *total, &w, &n, err, errlen);
    pthread_mutex_lock(&st->mu);
    st->sampling = false;
    pthread_cond_broadcast(&st->sampled);
    if (!rc) {
        old = st->common, nold = st->ncommon;
        st->common = w, st->ncommon = n;
        st->sample_total = *total;
        st->sample_at_ms = now;
    }
    pthread_mutex_unlock(&st->mu);
    stats_words_free(old, nold);
    return rc;
}

/* The share of the sampled passages that have term, 0 when it is not common (under st->mu). */
static double stats_share(const chat_kb_stats *st, const char *term)
{
    stats_word key = {(char *)term, 0};
    const stats_word *w = st->ncommon ? bsearch(&key, st->common, st->ncommon, sizeof key, cmp_word) : NULL;
    return w ? w->share : 0;
}

/* The sanitised terms without the common ones (at least the rarest one stays). Caller frees. */
static char *drop_common_terms(chat_db *db, chat_kb_stats *st, const char *terms, char *err, size_t errlen)
{
    if (st->common_pct <= 0) return strdup(terms);
    long long total;
    if (stats_refresh(db, st, &total, err, errlen)) return NULL;
    if (total < STATS_MIN_PASSAGES) return strdup(terms);
    chat_buf out;
    chat_buf_init(&out);
    char rarest[KB_MAX_TERM_BYTES + 1] = "";
    double rarest_share = 2;
    const char *p = terms;
    pthread_mutex_lock(&st->mu);
    while (*p) {
        const char *sp = strchr(p, ' ');
        size_t len = sp ? (size_t)(sp - p) : strlen(p);
        char term[KB_MAX_TERM_BYTES + 1];
        memcpy(term, p, len);
        term[len] = '\0';
        p += len + (sp ? 1 : 0);
        double share = stats_share(st, term);
        if (share < rarest_share) rarest_share = share, snprintf(rarest, sizeof rarest, "%s", term);
        /* codes that mix letters and digits (E42, V6) are specific even when frequent */
        if (share > 0 && !(strpbrk(term, "0123456789") && strpbrk(term, "abcdefghijklmnopqrstuvwxyz"))) continue;
        if (out.len) chat_buf_puts(&out, " ");
        chat_buf_puts(&out, term);
    }
    pthread_mutex_unlock(&st->mu);
    if (!out.len && rarest[0]) chat_buf_puts(&out, rarest);
    return chat_buf_take(&out);
}

/* The passages that name the fault code, best first. */
static int search_fault_code(chat_db *db, const kb_source *src, const char *code, collect_ctx *ctx, char *err,
                             size_t errlen)
{
    char boolean[24], like[24];
    snprintf(boolean, sizeof boolean, "+%s", code);
    snprintf(like, sizeof like, "%%%s%%", code);
    chat_db_param p[] = {CHAT_DB_P_STR(boolean), CHAT_DB_P_STR(like), CHAT_DB_P_STR(boolean),
                         CHAT_DB_P_INT((long long)ctx->cap)};
    return chat_db_run(db, src->fault, p, 4, collect_row, ctx, NULL, NULL, err, errlen);
}

/* The question's search words: sanitised, without the common ones when stats are given. Caller frees;
 * NULL with err on failure (*rc set). */
static char *query_terms(chat_db *db, const chat_kb_query *q, int *rc, char *err, size_t errlen)
{
    char *terms = chat_kb_sanitize(q->question, KB_MAX_TERMS);
    if (!terms) {
        *rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    if (!q->stats || !terms[0]) return terms;
    char *kept = drop_common_terms(db, q->stats, terms, err, errlen);
    free(terms);
    if (!kept) *rc = CHAT_EDB;
    return kept;
}

/* The text matches, ranked with the model and agent factors; in boolean mode when natural-language
 * mode found nothing. */
static int search_text(chat_db *db, const kb_source *src, const chat_kb_query *q, const char *terms,
                       collect_ctx *ctx, char *err, size_t errlen)
{
    chat_db_param model = q->model_id && *q->model_id ? CHAT_DB_P_STR(q->model_id) : CHAT_DB_P_NULL();
    chat_db_param agent = q->agent && *q->agent ? CHAT_DB_P_STR(q->agent) : CHAT_DB_P_NULL();
    chat_db_param t = CHAT_DB_P_STR(terms);
    chat_db_param p[] = {model, model, agent, agent, t, t, t, CHAT_DB_P_INT((long long)ctx->cap)};
    size_t before = ctx->out->n;
    int rc = chat_db_run(db, src->text, p, 8, collect_row, ctx, NULL, NULL, err, errlen);
    if (!rc && ctx->out->n == before)
        rc = chat_db_run(db, src->any, p, 8, collect_row, ctx, NULL, NULL, err, errlen);
    return rc;
}

/* One search in src; *pending as collect_ctx's (0 when no statement ran: nothing to search anywhere). */
static int search_in(chat_db *db, const kb_source *src, const chat_kb_query *q, chat_kb_result *out, int *pending,
                     char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    size_t k = q->k < 1 ? 1 : q->k > KB_K_MAX ? KB_K_MAX : q->k;
    out->items = calloc(k, sizeof *out->items);
    if (!out->items) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    collect_ctx ctx = {out, k, 0};
    int rc = 0;
    char code[16];
    if (q->fault_code && chat_kb_find_fault_code(q->fault_code, code)) {
        ctx.pending = -1;
        rc = search_fault_code(db, src, code, &ctx, err, errlen);
    }
    if (!rc && out->n < k) {
        char *terms = query_terms(db, q, &rc, err, errlen);
        if (terms && terms[0]) {
            if (ctx.pending == 0) ctx.pending = -1;
            rc = search_text(db, src, q, terms, &ctx, err, errlen);
        }
        free(terms);
    }
    *pending = ctx.pending;
    if (rc) chat_kb_result_clear(out);
    return rc;
}

static int pending_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    (void)ncols, (void)v, (void)lens;
    *(int *)ud = 1;
    return 0;
}

int chat_kb_search(chat_db *db, const chat_kb_query *q, chat_kb_result *out, char *err, size_t errlen)
{
    int pending = 0;
    int rc = search_in(db, q->sync_db ? &KB_DERIVED : &KB_DIRECT, q, out, &pending, err, errlen);
    if (rc || !q->sync_db) return rc;
    if (pending < 0) { /* no row said: ask on its own */
        pending = 0;
        rc = chat_db_run(db, "SELECT 1 FROM kb_changes LIMIT 1", NULL, 0, pending_row, &pending, NULL, NULL, err,
                         errlen);
    }
    if (!rc && pending) { /* the copy is behind a commit: bring it forward, answer this one from the source */
        char serr[256];
        int n = chat_kb_sync(q->sync_db, CHAT_KB_SYNC_BATCH, 1, serr, sizeof serr);
        if (n < 0 && n != CHAT_ECONFLICT) chat_log_debug("kb_search not brought up to date: %s", serr);
        chat_kb_result_clear(out);
        rc = search_in(db, &KB_DIRECT, q, out, &pending, err, errlen);
    }
    if (rc) chat_kb_result_clear(out);
    return rc;
}

/* The server's full-text settings, InnoDB's (kb_documents) and Aria's (kb_search), and whether it is a
 * Galera node: the global values, what a new session, and so the next index build (migration,
 * OPTIMIZE), uses. */
typedef struct server_vars {
    int seen;
    long long innodb_min_token_size;
    bool innodb_stopword_on, innodb_stopword_table;
    long long aria_min_word_len;
    bool aria_builtin_stopwords;
    bool wsrep;
} server_vars;

static bool var_on(const char *v) { return !strcasecmp(v, "ON") || !strcmp(v, "1"); }

static int server_var_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    (void)lens;
    server_vars *d = ud;
    if (ncols < 2 || !v[0]) return 0;
    const char *val = v[1] ? v[1] : "";
    d->seen++;
    if (!strcasecmp(v[0], "innodb_ft_min_token_size")) d->innodb_min_token_size = atoll(val);
    else if (!strcasecmp(v[0], "innodb_ft_enable_stopword")) d->innodb_stopword_on = var_on(val);
    else if (!strcasecmp(v[0], "innodb_ft_server_stopword_table")) d->innodb_stopword_table = val[0] != 0;
    else if (!strcasecmp(v[0], "ft_min_word_len")) d->aria_min_word_len = atoll(val);
    else if (!strcasecmp(v[0], "ft_stopword_file")) d->aria_builtin_stopwords = !strcmp(val, "(built-in)");
    else if (!strcasecmp(v[0], "wsrep_on")) d->wsrep = var_on(val);
    return 0;
}

static int read_server_vars(chat_db *db, server_vars *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int rc = chat_db_run(db,
                         "SELECT VARIABLE_NAME, VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES"
                         " WHERE VARIABLE_NAME IN ('INNODB_FT_MIN_TOKEN_SIZE', 'INNODB_FT_ENABLE_STOPWORD',"
                         " 'INNODB_FT_SERVER_STOPWORD_TABLE', 'FT_MIN_WORD_LEN', 'FT_STOPWORD_FILE', 'WSREP_ON')",
                         NULL, 0, server_var_row, out, NULL, NULL, err, errlen);
    if (!rc && !out->seen) rc = chat_fail(err, errlen, CHAT_EDB, "no full-text settings returned");
    return rc;
}

/* ---- the derived search table (migration 006) ---- */

#define KB_SYNC_BULK 2000     /* change rows a batch of chat_kb_sync_all takes */
#define KB_SYNC_WAIT_MS 30000 /* how long chat_kb_sync_all waits for another copier */
#define KB_REBUILD_MIN 2000   /* changes from which chat_kb_sync_all builds a new copy instead */

/* One batch of change rows: their ids and their passages' (without repeats), as statement parameters. */
typedef struct change_batch {
    chat_db_param *ids, *docs;
    int n, ndocs, cap;
    char *sql; /* room for a statement with cap placeholders */
    size_t sql_cap;
} change_batch;

static void batch_free(change_batch *b)
{
    free(b->ids), free(b->docs), free(b->sql);
}

static int batch_init(change_batch *b, int cap)
{
    memset(b, 0, sizeof *b);
    b->cap = cap;
    b->sql_cap = 256 + 3 * (size_t)cap;
    b->ids = calloc((size_t)cap, sizeof *b->ids);
    b->docs = calloc((size_t)cap, sizeof *b->docs);
    b->sql = malloc(b->sql_cap);
    if (b->ids && b->docs && b->sql) return 0;
    batch_free(b);
    return CHAT_ENOMEM;
}

static int change_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    (void)lens;
    change_batch *b = ud;
    if (ncols < 2 || !v[0] || !v[1] || b->n == b->cap) return 0;
    b->ids[b->n++] = CHAT_DB_P_INT(atoll(v[0]));
    long long doc = atoll(v[1]);
    for (int i = 0; i < b->ndocs; i++)
        if (b->docs[i].i == doc) return 0;
    b->docs[b->ndocs++] = CHAT_DB_P_INT(doc);
    return 0;
}

static int lock_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    (void)lens;
    *(int *)ud = ncols > 0 && v[0] && atoi(v[0]) == 1;
    return 0;
}

/* "PREFIX(?, ?, ...)" with n placeholders into the batch's statement buffer. */
static const char *in_list(change_batch *b, const char *prefix, int n)
{
    size_t len = (size_t)snprintf(b->sql, b->sql_cap, "%s(", prefix);
    for (int i = 0; i < n && len + 4 < b->sql_cap; i++)
        len += (size_t)snprintf(b->sql + len, b->sql_cap - len, i ? ", ?" : "?");
    snprintf(b->sql + len, b->sql_cap - len, ")");
    return b->sql;
}

/* Within the caller's READ COMMITTED transaction: takes up to b->cap committed change rows (SKIP LOCKED:
 * an open transaction's are not committed, so not ours to take, and are never waited for), replaces
 * their passages' copies by the rows committed now (no copy when the passage is gone), and deletes the
 * rows taken. Returns how many it took. */
static int sync_batch(chat_db *db, change_batch *b, char *err, size_t errlen)
{
    b->n = b->ndocs = 0;
    chat_db_param lim = CHAT_DB_P_INT(b->cap);
    int rc = chat_db_run(db, "SELECT id, doc_id FROM kb_changes ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED", &lim, 1,
                         change_row, b, NULL, NULL, err, errlen);
    if (rc || !b->n) return rc;
    rc = chat_db_run(db, in_list(b, "DELETE FROM kb_search WHERE id IN ", b->ndocs), b->docs, b->ndocs, NULL, NULL,
                     NULL, NULL, err, errlen);
    /* REPLACE, not INSERT: it never runs as a concurrent insert, so a search statement, which holds
     * kb_search's read lock to its end, sees the copy before this batch or after it, never between; and
     * this batch's commit, which empties kb_changes, cannot fall inside that statement either. */
    if (!rc)
        rc = chat_db_run(db,
                         in_list(b,
                                 "REPLACE INTO kb_search (id, source, title, agent, model_id, body)"
                                 " SELECT id, source, title, agent, model_id, body FROM kb_documents WHERE id IN ",
                                 b->ndocs),
                         b->docs, b->ndocs, NULL, NULL, NULL, NULL, err, errlen);
    if (!rc)
        rc = chat_db_run(db, in_list(b, "DELETE FROM kb_changes WHERE id IN ", b->n), b->ids, b->n, NULL, NULL, NULL,
                         NULL, err, errlen);
    return rc ? rc : b->n;
}

/* One copier per database: two copying one passage's rows of different moments could leave the older.
 * 0 when this connection holds the lock, CHAT_ECONFLICT when another does, or CHAT_EDB. */
static int copier_lock(chat_db *db, char *err, size_t errlen)
{
    int got = 0;
    int rc = chat_db_run(db, "SELECT GET_LOCK(CONCAT(DATABASE(), '.kb_search'), 0)", NULL, 0, lock_row, &got, NULL,
                         NULL, err, errlen);
    if (!rc && !got) rc = chat_fail(err, errlen, CHAT_ECONFLICT, "another connection is updating kb_search");
    return rc;
}

static void copier_unlock(chat_db *db)
{
    char ignore[64];
    chat_db_run(db, "SELECT RELEASE_LOCK(CONCAT(DATABASE(), '.kb_search'))", NULL, 0, NULL, NULL, NULL, NULL, ignore,
                sizeof ignore);
}

static int sync_locked(chat_db *db, change_batch *b, int max_batches, char *err, size_t errlen)
{
    int total = 0, rc = 0;
    for (int i = 0; i < max_batches && !rc; i++) {
        /* READ COMMITTED: the passages' reads see the latest commit and lock nothing an editor holds */
        rc = chat_db_run(db, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", NULL, 0, NULL, NULL, NULL, NULL, err,
                         errlen);
        if (!rc) rc = chat_db_begin(db, err, errlen);
        if (rc) break;
        int n = sync_batch(db, b, err, errlen);
        if (n < 0) {
            chat_db_rollback(db);
            rc = n;
            break;
        }
        rc = chat_db_commit(db, err, errlen);
        if (!rc) total += n;
        if (n < b->cap) break;
    }
    return rc ? rc : total;
}

int chat_kb_sync(chat_db *db, int batch, int max_batches, char *err, size_t errlen)
{
    change_batch b;
    if (batch_init(&b, batch < 1 ? 1 : batch)) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    int rc = copier_lock(db, err, errlen);
    if (!rc) {
        rc = sync_locked(db, &b, max_batches, err, errlen);
        copier_unlock(db);
    }
    batch_free(&b);
    return rc;
}

#define ER_NO_SUCH_TABLE 1146

typedef struct id_list {
    long long *v;
    size_t n, cap;
    bool oom;
} id_list;

static int id_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    (void)lens;
    id_list *l = ud;
    if (ncols < 1 || !v[0] || l->oom) return 0;
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 4096;
        long long *nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) {
            l->oom = true;
            return 0;
        }
        l->v = nv, l->cap = cap;
    }
    l->v[l->n++] = atoll(v[0]);
    return 0;
}

/* A new copy built whole and swapped in: for a bulk load, where copying row by row into the Aria
 * full-text indexes costs about 2 ms a passage (20 s for 10,000) and a build with the keys disabled a
 * fraction of that. The change rows committed before the build are deleted after the swap, by id: the
 * build read kb_documents after their commits. Later ones stay for the next copy. Needs CREATE, ALTER,
 * DROP (an admin's tools: import, chat-kbgen). The copier's lock is held. */
static int rebuild_locked(chat_db *db, change_batch *b, char *err, size_t errlen)
{
    id_list ids = {0};
    int rc = chat_db_run(db, "SELECT id FROM kb_changes", NULL, 0, id_row, &ids, NULL, NULL, err, errlen);
    if (!rc && ids.oom) rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    static const char build[] = "DROP TABLE IF EXISTS kb_search_new;"
                                "CREATE TABLE kb_search_new LIKE kb_search;"
                                "ALTER TABLE kb_search_new DISABLE KEYS;";
    static const char swap[] = "ALTER TABLE kb_search_new ENABLE KEYS;"
                               "RENAME TABLE kb_search TO kb_search_old, kb_search_new TO kb_search;"
                               "DROP TABLE kb_search_old;";
    if (!rc) rc = chat_db_exec_script(db, build, sizeof build - 1, err, errlen);
    if (!rc) /* READ COMMITTED: the statement's reads lock nothing an editor holds */
        rc = chat_db_run(db, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED", NULL, 0, NULL, NULL, NULL, NULL, err,
                         errlen);
    if (!rc)
        rc = chat_db_run(db,
                         "INSERT INTO kb_search_new (id, source, title, agent, model_id, body)"
                         " SELECT id, source, title, agent, model_id, body FROM kb_documents",
                         NULL, 0, NULL, NULL, NULL, NULL, err, errlen);
    if (!rc) rc = chat_db_exec_script(db, swap, sizeof swap - 1, err, errlen);
    for (size_t i = 0; !rc && i < ids.n; i += (size_t)b->cap) {
        int n = ids.n - i < (size_t)b->cap ? (int)(ids.n - i) : b->cap;
        for (int j = 0; j < n; j++) b->ids[j] = CHAT_DB_P_INT(ids.v[i + (size_t)j]);
        rc = chat_db_run(db, in_list(b, "DELETE FROM kb_changes WHERE id IN ", n), b->ids, n, NULL, NULL, NULL, NULL,
                         err, errlen);
    }
    free(ids.v);
    return rc;
}

int chat_kb_sync_all(chat_db *db, char *err, size_t errlen)
{
    server_vars v;
    if (!read_server_vars(db, &v, err, errlen) && v.wsrep) {
        /* Galera: no node searches the copy (chat_kb_derived_usable), and a commit that writes Aria
         * beside InnoDB is refused; the change rows are dropped, on every node alike */
        int rc = chat_db_run(db, "DELETE FROM kb_changes", NULL, 0, NULL, NULL, NULL, NULL, err, errlen);
        return rc == CHAT_EDB && chat_db_errno(db) == ER_NO_SUCH_TABLE ? 0 : rc;
    }
    change_batch b;
    if (batch_init(&b, KB_SYNC_BULK)) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    int rc;
    for (int waited_ms = 0;; waited_ms += 50) {
        rc = copier_lock(db, err, errlen);
        if (rc != CHAT_ECONFLICT || waited_ms >= KB_SYNC_WAIT_MS) break;
        chat_sleep_ms(50);
    }
    if (!rc) {
        long long pending = 0;
        rc = chat_db_run(db, "SELECT COUNT(*) FROM kb_changes", NULL, 0, count_row, &pending, NULL, NULL, err, errlen);
        if (!rc && pending >= KB_REBUILD_MIN && rebuild_locked(db, &b, err, errlen)) /* e.g. no DDL rights */
            chat_log_warn("kb_search not rebuilt (%s): copying %lld changes one by one", err, pending);
        if (!rc) rc = sync_locked(db, &b, INT_MAX, err, errlen);
        copier_unlock(db);
    }
    batch_free(&b);
    if (rc == CHAT_EDB && chat_db_errno(db) == ER_NO_SUCH_TABLE) return 0; /* before migration 006 */
    return rc < 0 ? rc : 0;
}

/* ---- import ---- */

typedef struct front_matter {
    char title[256];
    char agent[CHAT_AGENT_NAME_MAX + 1];
    char model[64];
} front_matter;

static void trim_copy(char *dst, size_t cap, const char *s, size_t n)
{
    while (n && isspace((unsigned char)*s)) s++, n--;
    while (n && isspace((unsigned char)s[n - 1])) n--;
    if (n >= 2 && ((s[0] == '"' && s[n - 1] == '"') || (s[0] == '\'' && s[n - 1] == '\''))) s++, n -= 2;
    n = chat_utf8_prefix(s, n, cap - 1);
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* Parses an optional "---" front-matter block; returns the offset where the body starts. */
static size_t parse_front_matter(const char *text, size_t len, front_matter *fm)
{
    if (len < 4 || strncmp(text, "---", 3) || (text[3] != '\n' && text[3] != '\r')) return 0;
    size_t i = text[3] == '\r' ? 5 : 4;
    while (i < len) {
        const char *line = text + i;
        const char *nl = memchr(line, '\n', len - i);
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        size_t next = i + ll + (nl ? 1 : 0);
        if (ll >= 3 && !strncmp(line, "---", 3)) return next;
        const char *colon = memchr(line, ':', ll);
        if (colon) {
            size_t kl = (size_t)(colon - line);
            const char *val = colon + 1;
            size_t vl = ll - kl - 1;
            if (kl == 5 && !strncmp(line, "title", 5)) trim_copy(fm->title, sizeof fm->title, val, vl);
            else if (kl == 5 && !strncmp(line, "agent", 5)) trim_copy(fm->agent, sizeof fm->agent, val, vl);
            else if (kl == 5 && !strncmp(line, "model", 5)) trim_copy(fm->model, sizeof fm->model, val, vl);
        }
        i = next;
    }
    return 0; /* unterminated: treat the whole text as body */
}

static bool blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isspace((unsigned char)s[i])) return false;
    return true;
}

static int insert_passage(chat_db *db, const char *source, int no, const front_matter *fm, const char *heading,
                          size_t hlen, const char *body, size_t blen, char *err, size_t errlen)
{
    while (blen && isspace((unsigned char)*body)) body++, blen--;
    while (blen && isspace((unsigned char)body[blen - 1])) blen--;
    char title[512];
    if (heading && hlen) {
        char h[200];
        trim_copy(h, sizeof h, heading, hlen);
        snprintf(title, sizeof title, "%s - %s", fm->title, h);
    } else {
        snprintf(title, sizeof title, "%s", fm->title);
    }
    size_t tl = chat_utf8_prefix(title, strlen(title), 255);
    title[tl] = '\0';
    chat_db_param p[] = {
        CHAT_DB_P_STR(source),
        CHAT_DB_P_INT(no),
        CHAT_DB_P_STR(title),
        fm->agent[0] ? CHAT_DB_P_STR(fm->agent) : CHAT_DB_P_NULL(),
        fm->model[0] ? CHAT_DB_P_STR(fm->model) : CHAT_DB_P_NULL(),
        CHAT_DB_P_STRN(body, blen),
    };
    return chat_db_run(db,
                       "INSERT INTO kb_documents (source, passage_no, title, agent, model_id, body)"
                       " VALUES (?, ?, ?, ?, ?, ?)",
                       p, 6, NULL, NULL, NULL, NULL, err, errlen);
}

/* The agent of a source whose front matter names none, by the rows' kb_dir and kb_file rules (folder
 * rules first): "troubleshooting/fuel.md", "seawind-250/specs.md". */
static void agent_from_path(const char *source, char *agent, size_t cap)
{
    const char *base = strrchr(source, '/');
    base = base ? base + 1 : source;
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const char *dir = chat_agents[i].kb_dir;
        if (dir && !strncmp(source, dir, strlen(dir))) {
            snprintf(agent, cap, "%s", chat_agents[i].name);
            return;
        }
    }
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const char *file = chat_agents[i].kb_file;
        if (file && !strcmp(base, file)) {
            snprintf(agent, cap, "%s", chat_agents[i].name);
            return;
        }
    }
}

/* The front matter's agent as stored: a KB_OWN agent's name; "" (every agent's) for a KB_ANY agent or
 * KB_ANY_AGENT; CHAT_EINVAL for a name that is no agent. */
static int passage_agent(const char *source, char *agent, char *err, size_t errlen)
{
    if (!agent[0]) return 0;
    const chat_agent *a = chat_agent_find(agent);
    if (!a && strcmp(agent, KB_ANY_AGENT))
        return chat_fail(err, errlen, CHAT_EINVAL, "%s: unknown agent '%s'", source, agent);
    if (!chat_agent_kb_filter(a)) agent[0] = '\0';
    return 0;
}

/* One passage per "## " section of text[0..len) (the body after the front matter), and one for the text
 * before the first section unless blank; *no counts them. "# " lines are the document title: a leading
 * one is dropped from the intro. */
static int insert_sections(chat_db *db, const char *source, const front_matter *fm, const char *text, size_t len,
                           int *no, char *err, size_t errlen)
{
    int rc = 0;
    const char *heading = NULL;
    size_t hlen = 0, body_start = 0;
    /* Walk lines; each "## " line closes the previous passage. */
    size_t i = 0;
    while (!rc && i <= len) {
        const char *line = text + i;
        const char *nl = i < len ? memchr(line, '\n', len - i) : NULL;
        size_t ll = nl ? (size_t)(nl - line) : len - i;
        bool at_end = i >= len;
        bool h2 = !at_end && ll >= 3 && !strncmp(line, "## ", 3);
        if (h2 || at_end) {
            size_t blen = i - body_start;
            const char *body = text + body_start;
            /* drop a leading "# Title" line from the intro */
            if (!heading && blen >= 2 && body[0] == '#' && body[1] == ' ') {
                const char *e = memchr(body, '\n', blen);
                size_t skip = e ? (size_t)(e - body) + 1 : blen;
                body += skip, blen -= skip;
            }
            if (!blank(body, blen)) {
                rc = insert_passage(db, source, (*no)++, fm, heading, hlen, body, blen, err, errlen);
            }
            if (h2) {
                heading = line + 3, hlen = ll - 3;
                body_start = i + ll + (nl ? 1 : 0);
            }
        }
        if (at_end) break;
        i += ll + (nl ? 1 : 0);
        if (!nl) i = len; /* last line without newline: next iteration closes */
    }
    return rc;
}

int chat_kb_import_text(chat_db *db, const char *source, const char *text, size_t len, chat_kb_import_stats *stats,
                        char *err, size_t errlen)
{
    if (!source || !*source || strlen(source) > 255)
        return chat_fail(err, errlen, CHAT_EINVAL, "invalid source name");
    if (len > 16777215) /* a passage is at most the whole text: MEDIUMTEXT */
        return chat_fail(err, errlen, CHAT_EINVAL, "%s: larger than 16 MB", source);
    if (!chat_utf8_valid(text, len)) return chat_fail(err, errlen, CHAT_EINVAL, "%s: not valid UTF-8", source);
    front_matter fm = {{0}, {0}, {0}};
    size_t pos = parse_front_matter(text, len, &fm);
    if (!fm.agent[0]) agent_from_path(source, fm.agent, sizeof fm.agent);
    int rc = passage_agent(source, fm.agent, err, errlen);
    if (rc) return rc;
    if (!fm.title[0]) snprintf(fm.title, sizeof fm.title, "%s", source);

    rc = chat_db_begin(db, err, errlen);
    if (rc) return rc;
    chat_db_param sp = CHAT_DB_P_STR(source);
    rc = chat_db_run(db, "DELETE FROM kb_documents WHERE source = ?", &sp, 1, NULL, NULL, NULL, NULL, err, errlen);
    int no = 0;
    if (!rc) rc = insert_sections(db, source, &fm, text + pos, len - pos, &no, err, errlen);
    if (rc) {
        chat_db_rollback(db);
        return rc;
    }
    rc = chat_db_commit(db, err, errlen);
    if (rc) return rc;
    if (stats) stats->files++, stats->passages += no;
    return 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int import_walk(chat_db *db, const char *root, const char *rel, chat_kb_import_stats *stats, int depth,
                       char *err, size_t errlen)
{
    if (depth > 16) return 0;
    char dir[4096];
    snprintf(dir, sizeof dir, "%s%s%s", root, rel[0] ? "/" : "", rel);
    DIR *d = opendir(dir);
    if (!d) return chat_fail(err, errlen, CHAT_ERR, "cannot open %s: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        if (chat_array_reserve(&names, &cap, n, sizeof *names)) {
            rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
            break;
        }
        if (!(names[n] = strdup(e->d_name))) {
            rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
            break;
        }
        n++;
    }
    closedir(d);
    if (names) qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n && !rc; i++) {
        char relpath[4096], full[8192];
        snprintf(relpath, sizeof relpath, "%s%s%s", rel, rel[0] ? "/" : "", names[i]);
        snprintf(full, sizeof full, "%s/%s", root, relpath);
        struct stat st;
        if (stat(full, &st)) continue;
        if (S_ISDIR(st.st_mode)) {
            rc = import_walk(db, root, relpath, stats, depth + 1, err, errlen);
        } else if (S_ISREG(st.st_mode) && strlen(names[i]) > 3 && !strcmp(names[i] + strlen(names[i]) - 3, ".md")) {
            if (!strcmp(names[i], "README.md")) continue;
            size_t len;
            char *text = chat_read_file(full, 0, &len);
            if (!text) {
                rc = chat_fail(err, errlen, CHAT_ERR, "cannot read %s", relpath);
                break;
            }
            rc = chat_kb_import_text(db, relpath, text, len, stats, err, errlen);
            free(text);
        }
    }
    for (size_t i = 0; i < n; i++) free(names[i]);
    free(names);
    return rc;
}

/* A bulk import ends with OPTIMIZE TABLE: it sorts the index pages and drops the space of replaced rows,
 * so a knowledge base re-imported many times searches as fast as a fresh one. */
int chat_kb_import_dir(chat_db *db, const char *dir, chat_kb_import_stats *stats, char *err, size_t errlen)
{
    int rc = import_walk(db, dir, "", stats, 0, err, errlen);
    if (!rc) rc = chat_kb_sync_all(db, err, errlen); /* the copy takes the import now, not question by question */
    if (rc) return rc;
    static const char optimize[] = "OPTIMIZE TABLE kb_documents, kb_search";
    return chat_db_exec_script(db, optimize, sizeof optimize - 1, err, errlen);
}

/* ---- the server's full-text settings ---- */

/* The longest token the knowledge base needs indexed: "V6", "hp" (fault codes like "E42" are three). */
#define KB_SHORT_TOKEN 2

void chat_kb_fulltext_judge(long long min_token_size, bool default_stopwords, chat_kb_fulltext *out)
{
    memset(out, 0, sizeof *out);
    if (min_token_size > KB_SHORT_TOKEN) {
        snprintf(out->setting, sizeof out->setting, "innodb_ft_min_token_size=1");
        snprintf(out->problem, sizeof out->problem,
                 "innodb_ft_min_token_size is %lld: words shorter than that (V6, hp%s) are not indexed, so no "
                 "question finds them; set it to 1 in the server's configuration, restart, then run "
                 "OPTIMIZE TABLE kb_documents",
                 min_token_size, min_token_size > 3 ? ", E42" : "");
    } else if (default_stopwords) {
        snprintf(out->setting, sizeof out->setting, "innodb_ft_enable_stopword=0");
        snprintf(out->problem, sizeof out->problem,
                 "innodb_ft_enable_stopword is on with InnoDB's built-in list: words such as 'a', 'i', 'in' and "
                 "'to' are not indexed; set it to 0 in the server's configuration (or name a stopword table "
                 "of your own in innodb_ft_server_stopword_table), then run OPTIMIZE TABLE kb_documents");
    }
    out->ok = !out->setting[0];
}

int chat_kb_fulltext_check(chat_db *db, chat_kb_fulltext *out, char *err, size_t errlen)
{
    chat_kb_fulltext_judge(0, false, out);
    server_vars v;
    int rc = read_server_vars(db, &v, err, errlen);
    if (rc) return rc;
    chat_kb_fulltext_judge(v.innodb_min_token_size, v.innodb_stopword_on && !v.innodb_stopword_table, out);
    return 0;
}

void chat_kb_fulltext_warn(chat_db *db, const char *who)
{
    chat_kb_fulltext ft;
    char err[256];
    if (chat_kb_fulltext_check(db, &ft, err, sizeof err))
        chat_log_debug("%s: full-text settings not checked: %s", who, err);
    else if (!ft.ok)
        chat_log_warn("%s: the database's full-text settings lose short words: change %s (%s)", who, ft.setting,
                      ft.problem);
}

/* ---- whether the derived table can be kept ---- */

int chat_kb_derived_usable(chat_db *db, char *err, size_t errlen)
{
    server_vars d;
    int rc = chat_db_run(db, "SELECT 1 FROM kb_changes LIMIT 0", NULL, 0, NULL, NULL, NULL, NULL, err, errlen);
    if (!rc) rc = read_server_vars(db, &d, err, errlen);
    if (rc) return rc;
    if (d.wsrep) {
        snprintf(err, errlen, "a Galera node (wsrep_on): Galera does not replicate the Aria copy");
        return 0;
    }
    if (d.aria_min_word_len > KB_SHORT_TOKEN) {
        snprintf(err, errlen, "ft_min_word_len is %lld: set it to 1 for the Aria copy to index V6 and hp",
                 d.aria_min_word_len);
        return 0;
    }
    if (d.aria_builtin_stopwords) {
        snprintf(err, errlen, "ft_stopword_file is the built-in list: set it to '' (empty)");
        return 0;
    }
    return 1;
}
