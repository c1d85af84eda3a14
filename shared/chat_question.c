/* Question analysis: word tables, not a parser.
 *
 * Design choices:
 * - Every rule is a phrase list matched as whole words, ignoring case, so "powers" is not "power" and
 *   "hp" is not found inside "ship". The figure table (CHAT_ATTR_MAP) is ordered from the specific to the
 *   general; its "unless" words keep "how long is the warranty" from being a question about length.
 * - A model is named by its number ("the 310", "Seawind 310"). Numbers that count something ("100-hour",
 *   "300 hours") are not models. Whether a named model exists is not decided here: the extractive
 *   provider knows the passages it was given (and "Seawind 999" is in none of them).
 * - A follow-up is elliptical when it opens like one ("and the 310?", "what about ...") or leans on a
 *   pronoun with at most three words of its own ("can it be transferred?"). Its search text borrows from
 *   the previous question what it leaves out, so retrieval finds the passage the answer is in; the
 *   model the conversation is about comes from the pipeline (context_model).
 * - Everything runs on short texts (a question, a search text): a few hundred phrase searches of a
 *   hundred bytes, a few microseconds. */
#include "chat_question.h"

#include <ctype.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat_common.h"
#include "chat_kb.h"
#include "chat_util.h"

/* Tuning (the rules below say where each counts). */
#define SMALL_TALK_MAX_BYTES 60 /* a longer message is a question, whatever greeting it opens with */
#define ELLIPTICAL_MAX_WORDS 3  /* a pronoun with at most this many words of its own leans on the last question */
#define MODEL_DIGITS_MIN 2      /* a model's number has 2 to 4 digits ("the 310") */
#define MODEL_DIGITS_MAX 4
/* A figure stands within FIGURE_BEFORE_BYTES before its cue ("a 300 L fresh water tank") or within
 * FIGURE_AFTER_BYTES after it ("fuel tank capacity of 450 L"); its conversion in brackets within
 * CONVERSION_MAX_BYTES ("(300 US gallons)"). */
#define FIGURE_BEFORE_BYTES 40
#define FIGURE_AFTER_BYTES 110
#define CONVERSION_MAX_BYTES 40
/* A comparison retrieves at least this many passages: room for the section that states the figure of
 * every model of the line (seven in the sample data) and for the passages that rank between them. */
#define COMPARE_PASSAGES 16

static const struct {
    const char *cues, *cue, *unless;
    chat_attr_info info;
} ATTRS[] = {
#define CHAT_ATTR_ROW(id, noun, cues, cue, unit, more, less, unless) {cues, cue, unless, {noun, cue, unit, more, less}},
    CHAT_ATTR_MAP(CHAT_ATTR_ROW)
#undef CHAT_ATTR_ROW
};

const chat_attr_info *chat_attr_get(chat_attr a)
{
    return a >= 0 && a < CHAT_ATTR_COUNT ? &ATTRS[a].info : NULL;
}

/* Letters, digits and UTF-8 bytes make words (inline: every byte of every question goes through it). */
static inline bool word_byte(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c >= 0x80;
}

bool chat_attr_word(chat_attr a, const char *word)
{
    if (a < 0 || a >= CHAT_ATTR_COUNT || !word) return false;
    size_t wl = strlen(word);
    const char *lists[] = {ATTRS[a].cues, ATTRS[a].cue};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(lists); i++)
        for (const char *p = lists[i]; *p;) {
            size_t n = strcspn(p, "| ");
            if (n == wl && !strncasecmp(p, word, n)) return true;
            p += n + (p[n] ? 1 : 0);
        }
    return false;
}

const char *chat_question_find(const char *text, const char *needle)
{
    size_t n = strlen(needle);
    if (!n) return text;
    /* the first byte is compared inline: a call to strncasecmp per position cost most of a composition */
    unsigned char lo = (unsigned char)tolower((unsigned char)needle[0]), up = (unsigned char)toupper(lo);
    for (const unsigned char *p = (const unsigned char *)text; *p; p++)
        if ((*p == lo || *p == up) && !strncasecmp((const char *)p + 1, needle + 1, n - 1)) return (const char *)p;
    return NULL;
}

bool chat_question_has(const char *text, const char *phrase)
{
    size_t n = strlen(phrase);
    if (!text || !n) return false;
    for (const char *h = chat_question_find(text, phrase); h; h = chat_question_find(h + 1, phrase)) {
        bool before = h == text || !word_byte((unsigned char)h[-1]) || !word_byte((unsigned char)phrase[0]);
        bool after = !word_byte((unsigned char)h[n]) || !word_byte((unsigned char)phrase[n - 1]);
        if (before && after) return true;
    }
    return false;
}

bool chat_question_has_any(const char *text, const char *phrases)
{
    char one[64];
    for (const char *p = phrases; p && *p;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);
        if (len && len < sizeof one) {
            memcpy(one, p, len);
            one[len] = '\0';
            if (chat_question_has(text, one)) return true;
        }
        p += len + (bar ? 1 : 0);
    }
    return false;
}

/* ---- the rules' phrases ----
 *
 * Every phrase list of the rules is one X below (the figure table's three lists per row come from
 * CHAT_ATTR_MAP). On first use they are indexed once, by their first word, for the whole process
 * (pthread_once); a question is split into lower-case words and each word looks up the phrases that
 * begin with it, so a parse costs a few lookups per word however many phrases there are: it runs several
 * times per chat turn. Apostrophes split words, in phrases and questions alike ("what's" is "what s",
 * "Deal's" is "deal s"). */
#define RULE_LISTS(X)                                                                                               \
    X(MORE, "biggest|largest|most|more|longest|longer|fastest|faster|quickest|quicker|heaviest|heavier|widest|"   \
            "wider|deepest|deeper|highest|greatest|bigger|larger|farthest|furthest")                              \
    X(LESS, "smallest|least|less|fewest|fewer|shortest|shorter|slowest|slower|lightest|lighter|narrowest|"        \
            "narrower|shallowest|shallower|lowest|smaller")                                                       \
    X(COMPARE, "compare|comparison|difference between|differ|versus|vs|than")                                     \
    X(COVERAGE, "cover|covers|covered|coverage|excluded|excludes|exclude|excluding")                              \
    X(TASKS, "include|includes|included|involve|involves|what is done|what s done|what gets done|what happens at|"\
             "what happens during|what do you do|what is checked|what gets checked|what does the technician")     \
    X(WHAT_DOES, "what does")                                                                                      \
    X(CHANGES, "replace|change|check")                                                                             \
    X(HOWTO, "how do i|how should i|how can i|how to|how do you|what should i do|what do i do|what can i do|"     \
             "what should i check|what to do|what do i check|what should i look")                                 \
    X(MINE, "my|mine|i own|i have|do i own|do i have|our")                                                        \
    X(SMALL_TALK, "hello|hi|hey|thanks|thank you|good morning|good evening|who are you|what can you do|help")     \
    X(PRONOUN, "it|its|that|this|they|them|those|one")                                                            \
    X(ASK_BOATS, "which boats|what boats|what boat|which boat do|boats do i|boat do i|do i own|i own|my boats|"   \
                 "registered to me|boats on file|boat on file|my fleet|boats i have|boats have i")                \
    X(ASK_DUE, "due for service|due for a service|due for their|due for its|are they due|is it due|"              \
               "when are they|service due")                                                                       \
    X(ASK_LAST, "last service|last time|last visit|previous service|most recent service|was done|were done|"      \
                "what work|was fixed|were fixed|last bring|last brought|last in|last serviced|last repair|"       \
                "did you do|did you fix")                                                                         \
    X(ASK_HISTORY, "service history|past services|past visits|history|services have i|been serviced")             \
    X(ASK_HOURS, "engine hours|hours are on|hours on my|how many hours does|hours does my")                       \
    X(ASK_NEXT, "next appointment|next service|upcoming|booked in|my next")                                       \
    X(WHEN, "when|what time|what date|which day|do i have|is there")                                              \
    X(APPOINTMENT, "appointment|appointments|booked|scheduled|service")

enum {
#define RULE_ENUM(id, list) RULE_##id,
    RULE_LISTS(RULE_ENUM)
#undef RULE_ENUM
        RULE_ATTRS, /* then per attribute: its question cues, its sentence cue, its unless words */
    RULE_COUNT = RULE_ATTRS + 3 * CHAT_ATTR_COUNT
};

static const char *const RULE_TEXT[RULE_ATTRS] = {
#define RULE_TEXT_ROW(id, list) list,
    RULE_LISTS(RULE_TEXT_ROW)
#undef RULE_TEXT_ROW
};

/* A sentence cue doubles as a question cue when it is made of words ("dry weight", not "$"). */
static bool cue_is_words(const char *cue) { return isalpha((unsigned char)cue[0]); }

#define MAX_PHRASES 1024
#define MAX_WORDS 96

typedef struct phrase {
    const char *p;           /* the phrase's words, up to e */
    const char *e;
    unsigned short first;    /* length of its first word */
    unsigned short rule;
} phrase;

static phrase phrases[MAX_PHRASES];
static size_t n_phrases;
static pthread_once_t phrases_once = PTHREAD_ONCE_INIT;

/* [p, e) with leading separators skipped; the length of its first word. */
static size_t first_word(const char **p, const char *e)
{
    while (*p < e && !word_byte((unsigned char)**p)) (*p)++;
    size_t n = 0;
    while (*p + n < e && word_byte((unsigned char)(*p)[n])) n++;
    return n;
}

static int cmp_key(const char *a, size_t al, const char *b, size_t bl)
{
    int c = memcmp(a, b, al < bl ? al : bl);
    return c ? c : (al > bl) - (al < bl);
}

static int cmp_phrase(const void *a, const void *b)
{
    const phrase *x = a, *y = b;
    return cmp_key(x->p, x->first, y->p, y->first);
}

static void add_list(const char *list, int rule)
{
    for (const char *p = list; *p;) {
        const char *bar = strchr(p, '|'), *e = bar ? bar : p + strlen(p), *w = p;
        size_t first = first_word(&w, e);
        if (first && n_phrases < MAX_PHRASES) phrases[n_phrases++] = (phrase){w, e, (unsigned short)first, (unsigned short)rule};
        p = bar ? bar + 1 : e;
    }
}

static void index_phrases(void)
{
    for (int r = 0; r < RULE_ATTRS; r++) add_list(RULE_TEXT[r], r);
    for (int a = 0; a < CHAT_ATTR_COUNT; a++) {
        add_list(ATTRS[a].cues, RULE_ATTRS + 3 * a);
        if (cue_is_words(ATTRS[a].cue)) add_list(ATTRS[a].cue, RULE_ATTRS + 3 * a + 1);
        add_list(ATTRS[a].unless, RULE_ATTRS + 3 * a + 2);
    }
    qsort(phrases, n_phrases, sizeof phrases[0], cmp_phrase);
}

typedef struct words {
    char buf[1024]; /* the words, NUL-separated; a longer text is read up to here */
    const char *w[MAX_WORDS];
    unsigned char len[MAX_WORDS];
    int n;
} words;

static void words_of(const char *text, words *t)
{
    t->n = 0;
    size_t at = 0;
    for (const unsigned char *p = (const unsigned char *)text; *p && t->n < MAX_WORDS;) {
        if (!word_byte(*p)) {
            p++;
            continue;
        }
        size_t start = at;
        while (word_byte(*p) && at < sizeof t->buf - 1 && at - start < 255) {
            unsigned char ch = *p++;
            t->buf[at++] = (char)(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
        }
        if (at >= sizeof t->buf - 1) break;
        t->buf[at++] = '\0';
        t->w[t->n] = t->buf + start;
        t->len[t->n++] = (unsigned char)(at - 1 - start);
        while (word_byte(*p)) p++; /* a word longer than 255 bytes: the rest is dropped */
    }
}

/* The phrase [p, e) matches the words from i on. */
static bool match_at(const words *t, int i, const char *p, const char *e)
{
    for (;;) {
        size_t n = first_word(&p, e);
        if (!n) return true;
        if (i >= t->n || t->len[i] != n || memcmp(t->w[i], p, n)) return false;
        i++, p += n;
    }
}

/* The rules whose phrases the text has (bit r of bits[r / 64]); opening: those it opens with. */
typedef struct matched {
    uint64_t bits[(RULE_COUNT + 63) / 64];
} matched;

static bool rule(const matched *m, int r) { return m->bits[r / 64] >> (r % 64) & 1; }

static void match_rules(const words *t, matched *m)
{
    pthread_once(&phrases_once, index_phrases);
    memset(m, 0, sizeof *m);
    for (int i = 0; i < t->n; i++) {
        size_t lo = 0, hi = n_phrases; /* the first phrase whose first word is not below this word */
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (cmp_key(phrases[mid].p, phrases[mid].first, t->w[i], t->len[i]) < 0) lo = mid + 1;
            else hi = mid;
        }
        for (size_t k = lo; k < n_phrases && !cmp_key(phrases[k].p, phrases[k].first, t->w[i], t->len[i]); k++)
            if (!rule(m, phrases[k].rule) && match_at(t, i, phrases[k].p, phrases[k].e))
                m->bits[phrases[k].rule / 64] |= 1ull << (phrases[k].rule % 64);
    }
}

static chat_attr find_attr(const matched *m)
{
    for (int a = 0; a < CHAT_ATTR_COUNT; a++) {
        int r = RULE_ATTRS + 3 * a;
        if ((rule(m, r) || rule(m, r + 1)) && !rule(m, r + 2)) return (chat_attr)a;
    }
    return CHAT_ATTR_NONE;
}

/* Words after a number that make it a quantity rather than a model ("300 hours", "10 years"). */
static const char QUANTITY_WORDS[] = "hour|hours|hr|hrs|year|years|day|days|month|months|week|weeks|minute|minutes|hp|"
                                     "kw|l|liters|litres|gallons|kg|lb|lbs|m|ft|feet|knots|mph|nm|percent|rpm|v|a|ah|"
                                     "persons|people|miles|km|am|pm";

static bool in_list(const char *w, size_t wl, const char *list)
{
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, "|");
        if (n == wl && !strncasecmp(p, w, n)) return true;
        p += n + (p[n] ? 1 : 0);
    }
    return false;
}

static bool quantity_follows(const char *p)
{
    while (*p == ' ') p++;
    size_t n = 0;
    while (isalpha((unsigned char)p[n])) n++;
    return n && in_list(p, n, QUANTITY_WORDS);
}

/* Numbers of MODEL_DIGITS_MIN to MODEL_DIGITS_MAX digits standing alone as words: "the 310", "Seawind 310", "310's". */
static void find_models(const char *text, chat_question *q)
{
    for (const char *p = text; *p; p++) {
        if (!isdigit((unsigned char)*p) || (p > text && (word_byte((unsigned char)p[-1]) || p[-1] == '-' ||
                                                         p[-1] == '.' || p[-1] == ',' || p[-1] == '$')))
            continue;
        size_t n = 0;
        while (isdigit((unsigned char)p[n])) n++;
        const char *e = p + n;
        bool joined = *e == '-' || *e == '.' || *e == ',' || *e == ':' || *e == '%' || (word_byte((unsigned char)*e) && *e != 's');
        if (n >= MODEL_DIGITS_MIN && n <= MODEL_DIGITS_MAX && !joined && !quantity_follows(e) && q->n_models < CHAT_QUESTION_MAX_MODELS) {
            bool dup = false;
            for (int i = 0; i < q->n_models; i++) dup |= strlen(q->models[i]) == n && !strncmp(q->models[i], p, n);
            if (!dup) {
                memcpy(q->models[q->n_models], p, n);
                q->models[q->n_models++][n] = '\0';
            }
        }
        p = e - 1;
    }
}

static int cmp_word(const void *key, const void *elem) { return strcmp(key, *(const char *const *)elem); }

/* Words of its own a message has, besides glue words and pronouns. */
static int content_words(const words *t)
{
    static const char *const GLUE[] = { /* sorted, for bsearch */
        "a", "about", "also", "an", "and", "any", "are", "be", "can", "could", "did", "do", "does", "for", "how", "i",
        "in", "is", "it", "its", "many", "me", "much", "my", "of", "on", "one", "or", "s", "should", "so", "that",
        "the", "them", "then", "there", "they", "this", "those", "to", "was", "what", "when", "where", "which", "who",
        "why", "will", "with", "would", "you", "your",
    };
    int n = 0;
    for (int i = 0; i < t->n; i++) n += !bsearch(t->w[i], GLUE, CHAT_ARRAY_LEN(GLUE), sizeof GLUE[0], cmp_word);
    return n;
}

static bool opens_with_any(const words *t, const char *list)
{
    for (const char *p = list; *p;) {
        const char *bar = strchr(p, '|'), *e = bar ? bar : p + strlen(p);
        if (t->n && match_at(t, 0, p, e)) return true;
        p = bar ? bar + 1 : e;
    }
    return false;
}

static bool is_elliptical(const words *t, const matched *m)
{
    return opens_with_any(t, "and|also|what about|how about|same for|then|what of") ||
           (rule(m, RULE_PRONOUN) && content_words(t) <= ELLIPTICAL_MAX_WORDS);
}

static int customer_asks(const matched *m)
{
    int ask = 0;
    if (rule(m, RULE_ASK_BOATS)) ask |= CHAT_ASK_BOATS;
    if (rule(m, RULE_ASK_DUE)) ask |= CHAT_ASK_DUE;
    if (rule(m, RULE_ASK_LAST)) ask |= CHAT_ASK_LAST;
    if (rule(m, RULE_ASK_HISTORY)) ask |= CHAT_ASK_HISTORY;
    if (rule(m, RULE_ASK_HOURS)) ask |= CHAT_ASK_HOURS;
    if (rule(m, RULE_ASK_NEXT) || (rule(m, RULE_WHEN) && rule(m, RULE_APPOINTMENT))) ask |= CHAT_ASK_NEXT;
    if (ask & CHAT_ASK_LAST) ask &= ~CHAT_ASK_NEXT; /* "when was my last service" is not about the next one */
    return ask;
}

void chat_question_parse(const char *text, chat_question *q)
{
    memset(q, 0, sizeof *q);
    q->attr = CHAT_ATTR_NONE;
    if (!text) return;
    words t;
    words_of(text, &t);
    matched m;
    match_rules(&t, &m);
    q->attr = find_attr(&m);
    q->extreme = rule(&m, RULE_MORE) ? 1 : rule(&m, RULE_LESS) ? -1 : 0;
    find_models(text, q);
    const chat_attr_info *a = chat_attr_get(q->attr);
    bool figure = a && a->unit[0] && strcmp(a->unit, "$");
    q->compare = (figure && q->extreme) || (rule(&m, RULE_COMPARE) && (q->n_models >= 2 || figure));
    q->coverage = rule(&m, RULE_COVERAGE);
    q->tasks = rule(&m, RULE_TASKS) || (rule(&m, RULE_WHAT_DOES) && rule(&m, RULE_CHANGES));
    q->howto = rule(&m, RULE_HOWTO);
    q->mine = rule(&m, RULE_MINE);
    q->small_talk = strlen(text) <= SMALL_TALK_MAX_BYTES && rule(&m, RULE_SMALL_TALK);
    q->elliptical = is_elliptical(&t, &m);
    q->customer = customer_asks(&m);
}

/* ---- figures in sentences: "fuel tank capacity of 1,135 L (300 US gallons)" ---- */

/* A number at p ("1,135", "0.81", "6.49"), not glued to a word before it ("D6-380", "E42"). */
static bool number_at(const char *start, const char *p, double *v, const char **end)
{
    if (!isdigit((unsigned char)*p) || (p > start && (word_byte((unsigned char)p[-1]) || p[-1] == '-' || p[-1] == '.')))
        return false;
    char digits[32] = "";
    size_t n = 0;
    bool point = false;
    const char *q = p;
    for (; n < sizeof digits - 1; q++) {
        if (isdigit((unsigned char)*q)) digits[n++] = *q;
        else if (*q == ',' && isdigit((unsigned char)q[1]) && isdigit((unsigned char)q[2]) && isdigit((unsigned char)q[3])) continue;
        else if (*q == '.' && isdigit((unsigned char)q[1]) && !point) digits[n++] = '.', point = true;
        else break;
    }
    digits[n] = '\0';
    *v = strtod(digits, NULL);
    *end = q;
    return true;
}

/* The unit right after a number ("1,135 L", "42 knots"): returns its end, or NULL. */
static const char *unit_at(const char *p, const char *unit)
{
    if (*p == ' ') p++;
    size_t n = strlen(unit);
    if (strncasecmp(p, unit, n) || word_byte((unsigned char)p[n])) return NULL;
    return p + n;
}

static void figure_shown(chat_figure *f, const char *from, const char *to)
{
    const char *e = to;
    if (e[0] == ' ' && e[1] == '(') { /* the conversion in brackets: "(300 US gallons)" */
        const char *close = strchr(e, ')');
        if (close && close - e < CONVERSION_MAX_BYTES) e = close + 1;
    }
    snprintf(f->shown, sizeof f->shown, "%.*s", (int)(e - from), from);
}

bool chat_attr_figure(const char *s, chat_attr attr, chat_figure *f)
{
    const chat_attr_info *a = chat_attr_get(attr);
    if (!a || !a->unit[0] || !s) return false;
    if (!strcmp(a->unit, "$")) {
        const char *d = strchr(s, '$');
        const char *end;
        if (!d || !number_at(s, d + 1, &f->value, &end)) return false;
        figure_shown(f, d, end);
        return true;
    }
    const char *cue = chat_question_find(s, a->cue);
    if (!cue) return false;
    /* "a 300 L fresh water tank": the figure right before the cue is its own (the one after it may be the
     * next item's: "..., a 110 L holding tank") */
    for (const char *p = cue - 1; p >= s && cue - p < FIGURE_BEFORE_BYTES; p--) {
        double v;
        const char *end, *ue;
        if (number_at(s, p, &v, &end) && (ue = unit_at(end, a->unit)) && cue - ue <= 1) {
            f->value = v;
            figure_shown(f, p, ue);
            return true;
        }
    }
    bool largest = chat_question_find(s, "combined") != NULL;
    bool found = false;
    const char *limit = cue + strlen(a->cue) + FIGURE_AFTER_BYTES;
    for (const char *p = cue + strlen(a->cue); *p && p < limit; p++) {
        double v;
        const char *end, *ue;
        if (!number_at(s, p, &v, &end) || !(ue = unit_at(end, a->unit))) continue;
        if (!found || (largest && v > f->value)) {
            f->value = v;
            figure_shown(f, p, ue);
        }
        found = true;
        if (!largest) break;
        p = ue - 1;
    }
    for (const char *p = cue - 1; !found && p >= s && cue - p < FIGURE_BEFORE_BYTES; p--) { /* "1.05 L of SAE 90 marine gear lube" */
        double v;
        const char *end, *ue;
        if (!number_at(s, p, &v, &end) || !(ue = unit_at(end, a->unit))) continue;
        f->value = v;
        figure_shown(f, p, ue);
        found = true;
    }
    return found;
}

/* ---- retrieval shaping ---- */

/* The previous user questions in hist, most recent first (up to max). */
static size_t previous_questions(const chat_history *hist, const char **out, size_t max)
{
    size_t n = 0;
    for (size_t i = hist ? hist->n : 0; i > 0 && n < max; i--)
        if (!strcmp(hist->items[i - 1].role, "user")) out[n++] = hist->items[i - 1].content;
    return n;
}

/* Question words the knowledge base says differently: full-text search matches words, not stems. */
static const struct {
    const char *word, *kb;
} KB_WORDS[] = {
    {"winter", "winterization winterize"}, {"aground", "grounding"}, {"flat", "drains dead"},
    {"loan", "financing"},                 {"loans", "financing"},  {"finance", "financing"},
    {"freeze", "freezing winterization"},  {"frozen", "freezing"},  {"costs", "cost price"},
};

static const char COMPARE_WORDS[] = "overall length engine power top speed fuel tank capacity";

static void put_kb_words(chat_buf *b, const char *message)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(KB_WORDS); i++)
        if (chat_question_has(message, KB_WORDS[i].word)) chat_buf_printf(b, " %s", KB_WORDS[i].kb);
}

static void put_attr_words(chat_buf *b, chat_attr attr)
{
    const chat_attr_info *a = chat_attr_get(attr);
    if (!a) return;
    if (cue_is_words(a->cue)) chat_buf_printf(b, " %s", a->cue);
    if (isalpha((unsigned char)a->unit[0])) chat_buf_printf(b, " %s", a->unit);
}

static void put_models(chat_buf *b, const chat_question *q)
{
    for (int i = 0; i < q->n_models; i++) chat_buf_printf(b, " %s", q->models[i]);
}

bool chat_question_added_word(const char *word)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(KB_WORDS); i++)
        if (chat_question_has(KB_WORDS[i].kb, word)) return true;
    for (int a = 0; a < CHAT_ATTR_COUNT; a++)
        if (chat_question_has(ATTRS[a].cue, word) || chat_question_has(ATTRS[a].info.unit, word)) return true;
    return chat_question_has(COMPARE_WORDS, word);
}

char *chat_question_search_text(const char *message, const chat_history *hist, const char *context_model,
                                const chat_customer *cust)
{
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_puts(&b, message ? message : "");
    chat_question q;
    chat_question_parse(message, &q);
    char code[16];
    bool has_code = chat_kb_find_fault_code(message, code);
    put_attr_words(&b, q.attr);
    put_kb_words(&b, message);
    if (q.compare && q.attr == CHAT_ATTR_NONE) /* "compare the 250 and the 310": the main figures */
        chat_buf_printf(&b, " %s", COMPARE_WORDS);
    const char *prev[2];
    size_t np = q.elliptical ? previous_questions(hist, prev, q.compare ? 2 : 1) : 0;
    for (size_t i = 0; i < np; i++) {
        chat_question pq;
        chat_question_parse(prev[i], &pq);
        if (i == 0 && q.attr == CHAT_ATTR_NONE && !has_code && pq.attr == CHAT_ATTR_NONE) {
            chat_buf_printf(&b, " %s", prev[i]); /* "can it be transferred?": the whole topic */
            continue;
        }
        if (i == 0 && q.attr == CHAT_ATTR_NONE) put_attr_words(&b, pq.attr); /* "and the 310?" */
        if (!q.n_models || q.compare) put_models(&b, &pq);
        if (i == 0 && !has_code && chat_kb_find_fault_code(prev[i], code)) chat_buf_printf(&b, " %s", code);
    }
    if (q.compare && q.mine && !q.n_models && cust && cust->n_vehicles > 1) /* "which of my boats ..." */
        for (size_t i = 0; i < cust->n_vehicles; i++) chat_buf_printf(&b, " %s", cust->vehicles[i].model_name);
    else if (context_model && *context_model)
        chat_buf_printf(&b, " %s", context_model);
    if (!b.data) return NULL;
    return chat_buf_take(&b);
}

size_t chat_question_passages(const char *text, size_t k, bool *compares)
{
    chat_question q;
    chat_question_parse(text, &q);
    if (compares) *compares = q.compare;
    return q.compare && k < COMPARE_PASSAGES ? COMPARE_PASSAGES : k;
}
