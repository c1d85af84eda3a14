/* The agent classifier: weighted vocabulary matching over a normalised, tokenised message.
 *
 * Design choices:
 * - One normaliser for terms and messages (ASCII lower case, UTF-8 bytes kept as word bytes, apostrophes
 *   folded away so "won't", "won’t" and "wont" are one word, a digit-to-letter boundary splits "250hp"),
 *   so a term matches whatever spelling its normal form shares with the message.
 * - Terms live in one open-addressing hash table keyed by a word: single words and the first word of
 *   phrases share the "exact" keys, prefixes ("overheat*") have their own keys, looked up with an FNV
 *   hash computed incrementally along each token (a bit mask of prefix lengths skips useless probes).
 *   Per message that is a couple of probes per word: a few microseconds for a typical question.
 * - A light plural fold ("alarms" -> "alarm", "batteries" -> "battery") is tried only when the word itself
 *   is not a term, so admins need not list both forms.
 * - Each term counts once per message. Fault codes (E42, e-42, P0300) and model mentions ("seawind 250",
 *   "the 280" when 280 is a known model) are built-in signals, scored for the agents whose chat_agents[]
 *   row asks for them; ethanol blends (E10/E15/E85 next to fuel words) are not fault codes.
 * - Agents are chat_agents[] rows: scores are indexed by their id, ties go to the lower rank, a message
 *   without signal goes to the fallback row. Nothing here names an agent.
 * - chat_classify never writes to the classifier: concurrent readers are safe. Loading (add_term,
 *   load_db) is a writer and needs the caller's exclusion; load_db builds the new table aside and swaps
 *   it in only on success, so a failed reload keeps the previous vocabulary.
 * - Input is bounded: only the first CLASSIFY_MAX_BYTES of a message are looked at. */
#include "chat_classify.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_log.h"
#include "chat_util.h"

#define A_N CHAT_AGENT_COUNT

#define TERM_MAX_BYTES 64  /* classifier_terms.term is VARCHAR(64) */
#define TERM_MAX_WORDS 8
#define PREFIX_MIN 3       /* "ov*" would match half the language */
#define CLASSIFY_MAX_BYTES 16384
#define CLASSIFY_MAX_TOKENS 4096
#define WEIGHT_LIMIT 100.0 /* an admin's typo (3000 for 3.0) is refused, not allowed to own routing */

/* Routing tuning. The seeded weights (sql/classifier_terms.sql) run from 0.3 for ambiguous words to 3.5
 * for decisive ones; these are on the same scale. */
/* A fault code ("E42") is as decisive as the strongest terms: nobody quotes one except to ask about it. */
#define FAULT_CODE_WEIGHT 3.0
/* A model mention only tips a message that has no better signal: owners name their boat in every kind of
 * question, but a bare "seawind 250" is most often a spec question. */
#define MODEL_WEIGHT 0.5
/* Below this winning score the message has no usable signal (one ambiguous word at 0.3 does not decide)
 * and goes to the fallback agent with NO_SIGNAL_CONFIDENCE. */
#define NO_SIGNAL 0.3
#define NO_SIGNAL_CONFIDENCE 0.3
/* confidence = share x (1 - exp(-score / CONFIDENCE_SCALE)): the winner's share of the total, damped
 * while its score is small. 2.0: one decisive term (3.0) gives 78 % of the share, two give 95 %. */
#define CONFIDENCE_SCALE 2.0
/* Confidence stays within these: never certain, never nothing (the metadata reports two decimals). */
#define CONFIDENCE_MIN 0.05
#define CONFIDENCE_MAX 0.99
/* Scores closer than this are a tie (sums of doubles in another order differ in the last bits). */
#define TIE_EPSILON 1e-9

typedef struct term {
    char *display; /* as given, for explain */
    char *norm;    /* normalised words separated by one space, without '*' */
    uint16_t woff[TERM_MAX_WORDS], wlen[TERM_MAX_WORDS];
    int nwords;
    bool prefix; /* the last word is a prefix */
    int agent;
    double weight;
} term;

typedef struct slot {
    const char *key; /* points into a term's norm; NULL = empty slot */
    uint32_t klen;
    uint32_t hash;
    bool prefix;
    size_t *terms;
    size_t nterms, cap;
} slot;

struct chat_classifier {
    term *terms;
    size_t nterms, tcap;
    slot *slots;
    size_t nslots, nused; /* nslots is 0 or a power of two */
    uint64_t prefix_lens; /* bit L: some prefix key has length L */
    int *models;          /* the numbers of the models table's models, any number of them */
    size_t nmodels, mcap;
};

typedef struct tok {
    uint32_t off, len;
} tok;

/* ---- normalisation ---------------------------------------------------------------------------------- */

static bool is_ascii_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}
static bool is_digit(unsigned char c) { return c >= '0' && c <= '9'; }

/* Normalises in[0..n) into out (capacity 2n + 2: a split "250hp" gains a byte) and splits it into tokens. Never reads past n, whatever
 * the bytes are: invalid UTF-8 is just more word bytes. Returns the number of tokens. */
static size_t normalise(const char *in, size_t n, char *out, tok *toks, size_t maxtok)
{
    const unsigned char *s = (const unsigned char *)in;
    size_t o = 0, nt = 0;
    bool inword = false;
    size_t start = 0;
#define END_WORD()                                                                                             \
    do {                                                                                                       \
        if (inword) {                                                                                          \
            if (nt < maxtok) toks[nt++] = (tok){(uint32_t)start, (uint32_t)(o - start)};                       \
            out[o++] = ' ';                                                                                    \
            inword = false;                                                                                    \
        }                                                                                                      \
    } while (0)
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        /* apostrophes fold away without breaking the word: ' ` U+2018 U+2019 U+02BC */
        if (c == '\'' || c == '`') continue;
        if (c == 0xE2 && i + 2 < n && s[i + 1] == 0x80 && (s[i + 2] == 0x98 || s[i + 2] == 0x99)) {
            i += 2;
            continue;
        }
        if (c == 0xCA && i + 1 < n && s[i + 1] == 0xBC) {
            i += 1;
            continue;
        }
        /* Unicode punctuation that separates words: U+2000..U+203F (dashes, quotes, spaces, ellipsis) and
         * U+00A0..U+00BF (no-break space, inverted marks, guillemets, degree sign). */
        if (c == 0xE2 && i + 2 < n && s[i + 1] == 0x80 && s[i + 2] >= 0x80 && s[i + 2] <= 0xBF) {
            END_WORD();
            i += 2;
            continue;
        }
        if (c == 0xC2 && i + 1 < n && s[i + 1] >= 0xA0 && s[i + 1] <= 0xBF) {
            END_WORD();
            i += 1;
            continue;
        }
        /* "e-42" is written like the code E42 */
        if (c == '-' && inword && o - start == 1 && (out[start] == 'e' || out[start] == 'p') && i + 1 < n &&
            is_digit(s[i + 1]))
            continue;
        if (is_ascii_alnum(c) || c >= 0x80) {
            /* "250hp", "100hr": a number glued to its unit is two words */
            if (inword && c < 0x80 && !is_digit(c) && is_digit((unsigned char)out[o - 1])) END_WORD();
            if (!inword) {
                inword = true;
                start = o;
            }
            out[o++] = (char)((c >= 'A' && c <= 'Z') ? c + 32 : c);
            continue;
        }
        END_WORD();
    }
    END_WORD();
#undef END_WORD
    out[o] = '\0';
    return nt;
}

/* ---- hash table ------------------------------------------------------------------------------------- */

#define FNV_OFFSET 2166136261u
#define FNV_PRIME 16777619u

static uint32_t fnv_step(uint32_t h, unsigned char c) { return (h ^ c) * FNV_PRIME; }

static uint32_t fnv(const char *s, size_t n)
{
    uint32_t h = FNV_OFFSET;
    for (size_t i = 0; i < n; i++) h = fnv_step(h, (unsigned char)s[i]);
    return h;
}

static const slot *find_slot(const chat_classifier *c, const char *key, size_t klen, uint32_t h, bool prefix)
{
    if (!c->nslots) return NULL;
    size_t mask = c->nslots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        const slot *sl = &c->slots[i];
        if (!sl->key) return NULL;
        if (sl->hash == h && sl->prefix == prefix && sl->klen == klen && !memcmp(sl->key, key, klen)) return sl;
    }
}

static slot *probe_for_insert(slot *slots, size_t nslots, const char *key, size_t klen, uint32_t h, bool prefix)
{
    size_t mask = nslots - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        slot *sl = &slots[i];
        if (!sl->key) return sl;
        if (sl->hash == h && sl->prefix == prefix && sl->klen == klen && !memcmp(sl->key, key, klen)) return sl;
    }
}

static int grow_table(chat_classifier *c)
{
    size_t n = c->nslots ? c->nslots * 2 : 256;
    slot *ns = calloc(n, sizeof *ns);
    if (!ns) return CHAT_ENOMEM;
    for (size_t i = 0; i < c->nslots; i++) {
        slot *old = &c->slots[i];
        if (!old->key) continue;
        *probe_for_insert(ns, n, old->key, old->klen, old->hash, old->prefix) = *old;
    }
    free(c->slots);
    c->slots = ns;
    c->nslots = n;
    return 0;
}

static int index_term(chat_classifier *c, size_t ti)
{
    if ((c->nused + 1) * 2 > c->nslots && grow_table(c)) return CHAT_ENOMEM;
    const term *t = &c->terms[ti];
    bool prefix = t->prefix && t->nwords == 1;
    const char *key = t->norm + t->woff[0];
    size_t klen = t->wlen[0];
    uint32_t h = fnv(key, klen);
    slot *sl = probe_for_insert(c->slots, c->nslots, key, klen, h, prefix);
    if (chat_array_reserve(&sl->terms, &sl->cap, sl->nterms, sizeof *sl->terms)) return CHAT_ENOMEM;
    if (!sl->key) {
        sl->key = key, sl->klen = (uint32_t)klen, sl->hash = h, sl->prefix = prefix;
        c->nused++;
        if (prefix) c->prefix_lens |= (uint64_t)1 << klen;
    }
    sl->terms[sl->nterms++] = ti;
    return 0;
}

/* ---- lifecycle and terms ---------------------------------------------------------------------------- */

chat_classifier *chat_classifier_new(void) { return calloc(1, sizeof(chat_classifier)); }

static void release(chat_classifier *c)
{
    for (size_t i = 0; i < c->nterms; i++) free(c->terms[i].display), free(c->terms[i].norm);
    free(c->terms);
    for (size_t i = 0; i < c->nslots; i++) free(c->slots[i].terms);
    free(c->slots);
    free(c->models);
    memset(c, 0, sizeof *c);
}

void chat_classifier_free(chat_classifier *c)
{
    if (!c) return;
    release(c);
    free(c);
}

size_t chat_classifier_term_count(const chat_classifier *c) { return c ? c->nterms : 0; }

int chat_classifier_add_term(chat_classifier *c, const char *agent, const char *termtext, double weight)
{
    const chat_agent *row = chat_agent_find(agent);
    int a = row ? (int)row->id : -1;
    if (!c || a < 0 || !termtext || !isfinite(weight) || fabs(weight) > WEIGHT_LIMIT) return CHAT_EINVAL;
    size_t n = strlen(termtext);
    if (n == 0 || n > TERM_MAX_BYTES) return CHAT_EINVAL;
    bool prefix = termtext[n - 1] == '*';
    size_t body = prefix ? n - 1 : n;
    if (memchr(termtext, '*', body)) return CHAT_EINVAL;

    char norm[2 * TERM_MAX_BYTES + 2];
    tok toks[TERM_MAX_WORDS + 1];
    size_t nw = normalise(termtext, body, norm, toks, TERM_MAX_WORDS + 1);
    if (nw == 0 || nw > TERM_MAX_WORDS) return CHAT_EINVAL;
    unsigned char last = body ? (unsigned char)termtext[body - 1] : 0;
    if (prefix && !is_ascii_alnum(last) && last < 0x80) return CHAT_EINVAL; /* "x *": '*' must end a word */
    if (prefix && (toks[nw - 1].len < PREFIX_MIN || toks[nw - 1].len > 63)) return CHAT_EINVAL;
    size_t normlen = toks[nw - 1].off + toks[nw - 1].len;
    norm[normlen] = '\0'; /* drop the trailing separator */

    /* The same normal form for the same agent is one term: the last weight wins. Candidates share the
     * first word's slot. */
    bool key_prefix = prefix && nw == 1;
    const slot *same = find_slot(c, norm + toks[0].off, toks[0].len, fnv(norm + toks[0].off, toks[0].len), key_prefix);
    for (size_t k = 0; same && k < same->nterms; k++) {
        term *t = &c->terms[same->terms[k]];
        if (t->agent == a && t->prefix == prefix && !strcmp(t->norm, norm)) {
            t->weight = weight;
            return 0;
        }
    }
    if (chat_array_reserve(&c->terms, &c->tcap, c->nterms, sizeof *c->terms)) return CHAT_ENOMEM;
    term *t = &c->terms[c->nterms];
    memset(t, 0, sizeof *t);
    t->display = strdup(termtext);
    t->norm = strdup(norm);
    if (!t->display || !t->norm) {
        free(t->display), free(t->norm);
        return CHAT_ENOMEM;
    }
    for (size_t i = 0; i < nw; i++) t->woff[i] = (uint16_t)toks[i].off, t->wlen[i] = (uint16_t)toks[i].len;
    t->nwords = (int)nw;
    t->prefix = prefix;
    t->agent = a;
    t->weight = weight;
    c->nterms++;
    if (index_term(c, c->nterms - 1)) {
        c->nterms--;
        free(t->display), free(t->norm);
        return CHAT_ENOMEM;
    }
    return 0;
}

typedef struct load_ctx {
    chat_classifier *c;
    int rc;
    size_t skipped;
} load_ctx;

static int term_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    load_ctx *l = ud;
    if (ncols < 3 || !vals[0] || !vals[1] || !vals[2]) return 0;
    int rc = chat_classifier_add_term(l->c, vals[0], vals[1], strtod(vals[2], NULL));
    if (rc == CHAT_ENOMEM) {
        l->rc = rc;
        return 1;
    }
    if (rc) l->skipped++; /* a malformed admin row must not take routing down */
    return 0;
}

static int model_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    chat_classifier *c = ud;
    if (ncols < 1 || !vals[0]) return 0;
    /* the model number is the first run of 2-4 digits in the slug: seawind-250 -> 250 */
    for (const char *p = vals[0]; *p; p++) {
        if (!is_digit((unsigned char)*p)) continue;
        size_t nd = 0;
        while (is_digit((unsigned char)p[nd])) nd++;
        if (nd < 2 || nd > 4) break;
        if (chat_array_reserve(&c->models, &c->mcap, c->nmodels, sizeof *c->models)) return 1;
        c->models[c->nmodels++] = atoi(p);
        break;
    }
    return 0;
}

int chat_classifier_load_db(chat_classifier *c, chat_db *db, char *err, size_t errlen)
{
    if (!c || !db) return chat_fail(err, errlen, CHAT_EINVAL, "classifier or database missing");
    chat_classifier fresh;
    memset(&fresh, 0, sizeof fresh);
    load_ctx l = {.c = &fresh};
    int rc = chat_db_run(db, "SELECT agent, term, weight FROM classifier_terms ORDER BY agent, term", NULL, 0,
                         term_row, &l, NULL, NULL, err, errlen);
    if (rc == 1) rc = l.rc;
    if (!rc) {
        /* Model numbers make "the 280" a model mention; without the table only "seawind 280" is one. */
        char merr[128];
        if (chat_db_run(db, "SELECT id FROM models ORDER BY id", NULL, 0, model_row, &fresh, NULL, NULL, merr,
                        sizeof merr))
            fresh.nmodels = 0; /* no model numbers (no table, no memory): names still count */
    }
    if (rc) {
        release(&fresh);
        if (rc == CHAT_ENOMEM) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory loading terms");
        return rc;
    }
    release(c);
    *c = fresh;
    if (l.skipped) chat_log_warn("classifier: %zu malformed rows of classifier_terms skipped", l.skipped);
    return 0;
}

/* ---- classification --------------------------------------------------------------------------------- */

typedef struct match_ctx {
    const chat_classifier *c;
    const char *norm;
    const tok *toks;
    size_t ntok;
    unsigned char *matched; /* per term */
    size_t *hits;           /* matched term indices, in match order */
    size_t nhits;
    double scores[A_N];
} match_ctx;

static void mark(match_ctx *m, size_t ti)
{
    if (m->matched[ti]) return;
    m->matched[ti] = 1;
    m->hits[m->nhits++] = ti;
    m->scores[m->c->terms[ti].agent] += m->c->terms[ti].weight;
}

/* Plural fold: "alarms" -> "alarm", "batteries" -> "battery". Writes into buf; returns the new length,
 * or 0 when the word has no plural form to fold. */
static size_t fold_plural(const char *w, size_t n, char *buf, size_t cap)
{
    if (n < 4 || n > cap) return 0;
    if (n >= 5 && !memcmp(w + n - 3, "ies", 3)) {
        memcpy(buf, w, n - 3);
        buf[n - 3] = 'y';
        return n - 2;
    }
    if (w[n - 1] == 's' && w[n - 2] != 's' && w[n - 2] != 'u' && w[n - 2] != 'i') {
        memcpy(buf, w, n - 1);
        return n - 1;
    }
    return 0;
}

static bool word_eq(const match_ctx *m, size_t ti, const term *t, int wi)
{
    const char *w = t->norm + t->woff[wi];
    size_t wl = t->wlen[wi];
    const char *s = m->norm + m->toks[ti].off;
    size_t sl = m->toks[ti].len;
    if (t->prefix && wi == t->nwords - 1) return sl >= wl && !memcmp(s, w, wl);
    if (sl == wl && !memcmp(s, w, wl)) return true;
    char buf[TERM_MAX_BYTES];
    size_t fl = fold_plural(s, sl, buf, sizeof buf);
    return fl == wl && !memcmp(buf, w, wl);
}

/* The phrase's first word already matched token i; checks the rest. */
static bool phrase_at(const match_ctx *m, const term *t, size_t i)
{
    if (i + (size_t)t->nwords > m->ntok) return false;
    for (int w = 1; w < t->nwords; w++)
        if (!word_eq(m, i + (size_t)w, t, w)) return false;
    return true;
}

/* Terms keyed by the word at token i. words_too: single-word terms count (false for the plural fold when
 * the word itself was a term, so "hours" does not also count as "hour"). */
static bool apply_slot(match_ctx *m, const slot *sl, size_t i, bool words_too)
{
    bool word_hit = false;
    for (size_t k = 0; k < sl->nterms; k++) {
        size_t ti = sl->terms[k];
        const term *t = &m->c->terms[ti];
        if (t->nwords == 1) {
            word_hit = true;
            if (words_too) mark(m, ti);
        } else if (phrase_at(m, t, i)) {
            mark(m, ti);
        }
    }
    return word_hit;
}

static bool tok_is(const match_ctx *m, size_t i, const char *w)
{
    size_t n = strlen(w);
    return i < m->ntok && m->toks[i].len == n && !memcmp(m->norm + m->toks[i].off, w, n);
}

static bool all_digits(const char *s, size_t n, size_t lo, size_t hi)
{
    if (n < lo || n > hi) return false;
    for (size_t i = 0; i < n; i++)
        if (!is_digit((unsigned char)s[i])) return false;
    return true;
}

static bool fuel_context(const match_ctx *m)
{
    static const char *const words[] = {"fuel", "gas", "gasoline", "petrol", "ethanol", "octane", "unleaded"};
    for (size_t i = 0; i < m->ntok; i++)
        for (size_t w = 0; w < CHAT_ARRAY_LEN(words); w++)
            if (tok_is(m, i, words[w])) return true;
    return false;
}

static bool is_fault_code(const match_ctx *m, size_t i, int *fuel)
{
    const char *s = m->norm + m->toks[i].off;
    size_t n = m->toks[i].len;
    if (n < 2 || (s[0] != 'e' && s[0] != 'p') || !all_digits(s + 1, n - 1, 1, 4)) return false;
    if (s[0] == 'e' && n == 3 && (!memcmp(s, "e10", 3) || !memcmp(s, "e15", 3) || !memcmp(s, "e85", 3))) {
        if (*fuel < 0) *fuel = fuel_context(m);
        if (*fuel) return false; /* an ethanol blend, not a fault */
    }
    return true;
}

static bool is_model_mention(const match_ctx *m, size_t i)
{
    const char *s = m->norm + m->toks[i].off;
    size_t n = m->toks[i].len;
    if (n >= 7 && !memcmp(s, "seawind", 7)) {
        if (all_digits(s + 7, n - 7, 2, 4)) return true; /* seawind250 */
        if (n == 7 && i + 1 < m->ntok)
            return all_digits(m->norm + m->toks[i + 1].off, m->toks[i + 1].len, 2, 4);
        return false;
    }
    if (!m->c->nmodels || i == 0 || !all_digits(s, n, 2, 4)) return false;
    static const char *const determiners[] = {"the", "my", "our", "your", "a", "an", "this", "that", "his", "her"};
    bool det = false;
    for (size_t k = 0; k < CHAT_ARRAY_LEN(determiners) && !det; k++) det = tok_is(m, i - 1, determiners[k]);
    if (!det) return false;
    int num = atoi(s);
    for (size_t k = 0; k < m->c->nmodels; k++)
        if (m->c->models[k] == num) return true;
    return false;
}

static int cmp_hits_desc(const void *a, const void *b, void *ud)
{
    const chat_classifier *c = ud;
    double wa = fabs(c->terms[*(const size_t *)a].weight), wb = fabs(c->terms[*(const size_t *)b].weight);
    return wa < wb ? 1 : wa > wb ? -1 : 0;
}

static void build_explain(const match_ctx *m, int win, bool fault, bool model, bool no_signal, char *out,
                          size_t cap)
{
    size_t o = 0;
#define APPEND(...)                                                                                            \
    do {                                                                                                       \
        if (o < cap) {                                                                                         \
            int w_ = snprintf(out + o, cap - o, __VA_ARGS__);                                                  \
            if (w_ > 0) o += (size_t)w_;                                                                       \
        }                                                                                                      \
    } while (0)
    unsigned signals = chat_agents[win].routing;
    APPEND("%s:", chat_agents[win].name);
    if (no_signal) APPEND(" no signal");
    if (fault && (signals & CHAT_AGENT_FAULT_CODES)) APPEND(" fault-code(%.1f)", FAULT_CODE_WEIGHT);
    if (model && (signals & CHAT_AGENT_MODEL_MENTIONS)) APPEND(" model(%.1f)", MODEL_WEIGHT);
    for (size_t k = 0; k < m->nhits; k++) {
        const term *t = &m->c->terms[m->hits[k]];
        if (t->agent == win) APPEND(" %s(%.1f)", t->display, t->weight);
    }
    for (int k = 0; k < A_N; k++) {
        int a = (int)chat_agent_by_rank(k)->id;
        if (a != win && m->scores[a] != 0.0) APPEND(" | %s %.1f", chat_agents[a].name, m->scores[a]);
    }
#undef APPEND
    if (o >= cap && cap >= 4) memcpy(out + cap - 4, "...", 4);
}

static void route_no_signal(chat_route *out, const char *why)
{
    out->agent = chat_agent_fallback()->name;
    out->confidence = NO_SIGNAL_CONFIDENCE;
    snprintf(out->explain, sizeof out->explain, "%s: %s", out->agent, why);
}

/* The terms keyed by token i: the word itself, its plural fold, and the prefixes it starts with. */
static void match_token(match_ctx *m, size_t i)
{
    const chat_classifier *c = m->c;
    const char *s = m->norm + m->toks[i].off;
    size_t len = m->toks[i].len;
    if (!c->nterms || len > TERM_MAX_BYTES) return;
    const slot *sl = find_slot(c, s, len, fnv(s, len), false);
    bool word_hit = sl ? apply_slot(m, sl, i, true) : false;
    char fb[TERM_MAX_BYTES];
    size_t fl = fold_plural(s, len, fb, sizeof fb);
    if (fl) {
        const slot *fs = find_slot(c, fb, fl, fnv(fb, fl), false);
        if (fs) apply_slot(m, fs, i, !word_hit);
    }
    if (!c->prefix_lens) return;
    uint32_t h = FNV_OFFSET;
    for (size_t l = 1; l <= len && l < 64; l++) {
        h = fnv_step(h, (unsigned char)s[l - 1]);
        if (l < PREFIX_MIN || !(c->prefix_lens & ((uint64_t)1 << l))) continue;
        const slot *ps = find_slot(c, s, l, h, true);
        if (ps)
            for (size_t k = 0; k < ps->nterms; k++) mark(m, ps->terms[k]);
    }
}

/* The built-in signals, added to the agents whose row asks for them. */
static void add_signals(match_ctx *m, bool fault, bool model)
{
    for (int a = 0; a < A_N; a++) {
        if (fault && (chat_agents[a].routing & CHAT_AGENT_FAULT_CODES)) m->scores[a] += FAULT_CODE_WEIGHT;
        if (model && (chat_agents[a].routing & CHAT_AGENT_MODEL_MENTIONS)) m->scores[a] += MODEL_WEIGHT;
    }
}

/* The highest score; of equal ones the lowest rank's. */
static int winner(const match_ctx *m)
{
    int win = (int)chat_agent_by_rank(0)->id;
    for (int k = 1; k < A_N; k++) {
        int a = (int)chat_agent_by_rank(k)->id;
        if (m->scores[a] > m->scores[win] + TIE_EPSILON) win = a;
    }
    return win;
}

static void decide(match_ctx *m, bool fault, bool model, chat_route *out)
{
    int win = winner(m);
    double total = 0;
    for (int a = 0; a < A_N; a++) {
        out->scores[a] = m->scores[a];
        if (m->scores[a] > 0) total += m->scores[a];
    }
    if (m->nhits > 1) qsort_r(m->hits, m->nhits, sizeof m->hits[0], cmp_hits_desc, (void *)m->c);
    if (m->scores[win] < NO_SIGNAL) {
        route_no_signal(out, "no signal");
        if (m->nhits || fault || model)
            build_explain(m, (int)chat_agent_fallback()->id, fault, model, true, out->explain, sizeof out->explain);
        return;
    }
    double share = m->scores[win] / total;
    double conf = share * (1.0 - exp(-m->scores[win] / CONFIDENCE_SCALE));
    out->agent = chat_agents[win].name;
    out->confidence = conf < CONFIDENCE_MIN ? CONFIDENCE_MIN : conf > CONFIDENCE_MAX ? CONFIDENCE_MAX : conf;
    build_explain(m, win, fault, model, false, out->explain, sizeof out->explain);
}

void chat_classify(const chat_classifier *c, const char *text, chat_route *out)
{
    static const chat_classifier empty;
    memset(out, 0, sizeof *out);
    if (!c) c = &empty;
    if (!text) text = "";
    size_t n = strnlen(text, CLASSIFY_MAX_BYTES);
    size_t nterms = c->nterms;

    /* one allocation per message: normalised text, tokens, per-term flags and the hit list */
    size_t sz_norm = 2 * n + 2, sz_toks = CLASSIFY_MAX_TOKENS * sizeof(tok);
    size_t sz_hits = (nterms ? nterms : 1) * sizeof(size_t);
    size_t sz_norm_al = (sz_norm + 15) & ~(size_t)15;
    char *work = malloc(sz_norm_al + sz_toks + sz_hits + nterms + 1);
    if (!work) {
        route_no_signal(out, "out of memory");
        return;
    }
    match_ctx m = {.c = c, .norm = work};
    tok *toks = (tok *)(work + sz_norm_al);
    m.hits = (size_t *)((char *)toks + sz_toks);
    m.matched = (unsigned char *)m.hits + sz_hits;
    memset(m.matched, 0, nterms + 1);
    m.ntok = normalise(text, n, work, toks, CLASSIFY_MAX_TOKENS);
    m.toks = toks;

    bool fault = false, model = false;
    int fuel = -1;
    for (size_t i = 0; i < m.ntok; i++) {
        if (!fault && is_fault_code(&m, i, &fuel)) fault = true;
        if (!model && is_model_mention(&m, i)) model = true;
        match_token(&m, i);
    }
    add_signals(&m, fault, model);
    decide(&m, fault, model, out);
    free(work);
}
