/* The extractive provider: answers from what the pipeline knows when no language model is configured.
 *
 * It is deliberately simple and honest. The question is read with chat_question (the figure it asks
 * for, a comparison, a coverage or task question, the customer's records, the models it names), then
 * the first of these that applies answers:
 *   - a greeting or thanks gets the assistant's introduction (small talk is the fallback agent's: an
 *     agent that owns passages answers from them);
 *   - a question about the customer's own records (boats, appointments, past visits and the work done,
 *     engine hours) is answered from them;
 *   - a model the knowledge base does not know ("Seawind 999") gets "I have no information about ...";
 *   - a fault code gets the opening sentences of its passage (meaning, symptoms, first steps);
 *   - a comparison reads the asked figure off each model's passage and names the winner;
 *   - otherwise the passages are split into sentences, scored by the question's words (weighted by how
 *     rare they are among the candidates, with a few domain synonyms), the asked-for figure, the task
 *     list or the exclusion asked about, and the model in question; the best few are kept in document
 *     order. When the answer depends on a model nobody named, it asks which; when the best sentences
 *     leave the question's own words uncovered, it says it does not know instead of guessing.
 * An answer from passages opens with the agent's intro from the agent table (chat_agent.h); the library
 * names no agent. Each answer comes with its confidence (chat_extractive.h says how it is computed), and
 * cites its sources. The tuning constants below say how each score is weighed.
 *
 * Output streams word by word. The whole answer is composed when the generation starts (it is cheap and
 * needs the request, which the caller may free at once) and cut into tokens (a word with the whitespace
 * after it); chat_paced then releases them on the caller's chat_llm_loop, one per token_delay_ms on the
 * loop's timers (all at once on the loop's next run with no delay), so one thread paces any number of
 * answers without sleeping. */
#include "chat_extractive.h"

#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat_agent.h"
#include "chat_common.h"
#include "chat_customer.h"
#include "chat_llm_provider.h"
#include "chat_paced.h"
#include "chat_question.h"
#include "chat_util.h"

#define MAX_TERMS 32 /* bits of a sentence's hits (uint32_t) */
#define MAX_SENTENCES 384
/* The retrieval's best passages are read: as many as a comparison retrieves (chat_question_passages), so
 * every model's spec sheet is seen; for other questions retrieval returns fewer. */
#define MAX_PASSAGES 16
#define MAX_SENTENCE_BYTES 2048
#define SENTENCE_MIN_BYTES 12 /* shorter fragments ("See below.") are not sentences worth quoting */
#define MAX_BOATS_SEEN 8      /* the customer's boats whose model brands count as brands (is_brand) */

/* Word matching: two words match when one is a stem of the other, the shorter of at least STEM_MIN
 * bytes and the longer at most STEM_SLACK bytes longer (STEM_SLACK_LONG when the shorter has STEM_LONG
 * bytes or more): "overheat" and "overheats", "cancel" and "cancellation", not "oil" and "oils". */
#define STEM_MIN 4
#define STEM_SLACK 3
#define STEM_LONG 6
#define STEM_SLACK_LONG 6

/* Sentence scores (sentence_score). Each question word a sentence contains adds its weight (1 for the
 * question's own words, SYNONYM_WEIGHT for a synonym: weaker evidence than the word asked) times its
 * rarity (idf); then what the question's intent asks for adds a bonus, large enough to outweigh a word
 * or two more without it: */
#define SYNONYM_WEIGHT 0.6
#define FIGURE_FOUND_BONUS 3.0 /* the figure asked for, in its unit after its cue ("fuel tank capacity of 450 L") */
#define FIGURE_CUE_BONUS 1.0   /* the figure's cue without the figure */
#define FACT_CUE_BONUS 1.5     /* the cue of a fact asked for in words ("recommended oil") */
/* a sentence with any number, for a question that asks for one: 0.75 lets it beat a sentence with one
 * more question word but no number */
#define NUMBER_BONUS 0.75
#define INSTRUCTION_BONUS 2.5 /* an instruction ("Check that ..."), for a how-to question */
#define EXCLUSION_BONUS 3.0   /* a negation about the item asked ("excludes grounding"), for a coverage one */
#define SCOPE_EXCLUSION_FACTOR 0.4 /* an exclusion, when the coverage question asks what is covered */
#define SCOPE_LIST_BONUS 2.0       /* a list ("has four parts: a ..., a ..."), when it asks what is covered */
/* Retrieval's order counts: PASSAGE_RANK_BONUS / (1 + the passage's rank), less ORDER_PENALTY per
 * sentence into the passage (openings state the main fact). Small: they only break near-ties. */
#define PASSAGE_RANK_BONUS 0.5
#define ORDER_PENALTY 0.02
#define OFF_TARGET_FACTOR 0.15 /* a sentence from a passage about another model than the one in question */

/* Sentences picked: up to MAX_PICK, each at least one question word's worth (PICK_MIN_SCORE) and
 * PICK_SHARE_OF_BEST of the best one, so a weak fragment does not trail a good answer. */
#define MAX_PICK 3
#define PICK_MIN_SCORE 1.0
#define PICK_SHARE_OF_BEST 0.7
/* The fault code's passage answers with its opening: up to FAULT_OPENING_SENTENCES (meaning, symptoms,
 * first steps). */
#define FAULT_OPENING_SENTENCES 4
/* "Which model do you mean?" when the sentences within CANDIDATE_SHARE of the best one come from
 * passages about several models. */
#define CANDIDATE_SHARE 0.6
/* A guide whose section title names more than GUIDE_TITLE_SHARE of the question's words (by idf) is read
 * from its opening; a task list is taken from a section whose title names more than TASKS_TITLE_SHARE:
 * up to MAX_TASK_SENTENCES sentences of at least LIST_MIN_COMMAS commas. */
#define GUIDE_TITLE_SHARE 0.6
#define TASKS_TITLE_SHARE 0.5
#define MAX_TASK_SENTENCES 2
#define LIST_MIN_COMMAS 3

/* The confidence of each kind of answer, and the share of the question's words an answer must cover
 * (chat_extractive.h explains them). An answer from sentences, or a task list, has BASE + SPAN x how
 * well it covers the question. */
#define CONF_RECORDS 0.9
#define CONF_CODE 0.9
#define CONF_COMPARE 0.85
#define CONF_COMPARE_PART 0.6
#define CONF_GREETING 0.5
#define CONF_CLARIFY 0.3
#define CONF_NONE 0.1
#define COVER_MIN 0.5
#define CONF_FIGURE_BASE 0.55 /* a figure asked for and found */
#define CONF_FIGURE_SPAN 0.35
#define CONF_NO_FIGURE_BASE 0.2 /* a figure asked for and not found: at most 0.45 */
#define CONF_NO_FIGURE_SPAN 0.25
#define CONF_FACT_BASE 0.45 /* a fact in words asked for and found */
#define CONF_FACT_SPAN 0.45
#define CONF_WORDS_BASE 0.25 /* anything else, by the coverage squared */
#define CONF_WORDS_SPAN 0.6
#define CONF_TASKS_BASE 0.55 /* a task list, by its title's share of the question */
#define CONF_TASKS_SPAN 0.35

static const char GREETING[] =
    "Hello! I am the Seawind Marine assistant. I can answer questions about our boats' specifications, "
    "maintenance schedules and your service appointments, and help you troubleshoot fault codes and "
    "symptoms. What would you like to know?";
static const char NOT_FOUND[] =
    "I could not find an answer to that in the Seawind Marine knowledge base. Could you rephrase it, or "
    "name the model or fault code you are asking about? For anything urgent, your nearest Seawind Marine "
    "service center can help.";

typedef struct term {
    char w[48];
    size_t len;
    double weight; /* 1 for the question's own words, SYNONYM_WEIGHT for a synonym */
    double idf;    /* 1 + ln((N + 1) / (df + 1)) over the N candidate sentences */
    int key;       /* the question word it stands for (its own index for one), -1: counts for none */
} term;

/* Question word -> words that state the answer in the knowledge base. */
static const struct {
    const char *word;
    const char *expands;
} SYNONYMS[] = {
    {"power", "hp kw horsepower delivering rated"},
    {"horsepower", "hp kw power"},
    {"hp", "horsepower kw power"},
    {"torque", "nm lb"},
    {"long", "length loa ft m"},
    {"length", "loa ft m"},
    {"wide", "beam"},
    {"width", "beam"},
    {"heavy", "weight kg lbs dry"},
    {"weigh", "weight kg lbs dry"},
    {"weight", "kg lbs dry"},
    {"fast", "speed knots mph top"},
    {"speed", "knots mph"},
    {"fuel", "tank l gallons"},
    {"capacity", "l gallons persons"},
    {"people", "persons passengers"},
    {"passengers", "persons people"},
    {"engine", "outboard inboard sterndrive powered"},
    {"motor", "engine outboard"},
    {"oil", "sae litres quarts"},
    {"range", "nautical nm miles"},
    {"warranty", "covered coverage years"},
    {"appointment", "appointments scheduled booked"},
    {"service", "hours"},
    {"open", "hours opening"},
    {"aground", "grounding"},
    {"grounding", "aground"},
    {"cost", "price fee costs"},
    {"price", "cost costs"},
    {"fee", "charge charged"},
    {"flat", "drains dead"},
    {"dead", "flat"},
    {"frozen", "freeze freezing"},
    {"freeze", "freezing frozen"},
    {"winter", "winterization winterize winterizing frost"},
    {"winterize", "winterization frost"},
    {"loan", "loans financing finance"},
    {"loans", "financing finance"},
    {"finance", "financing"},
    {"rate", "apr percent"},
    {"refundable", "refund refunded"},
    {"transferred", "transfer"},
    {"down", "payment"},
    {"hit", "collision grounding"},
    {"rock", "grounding"},
    {"rocks", "grounding"},
    {"crash", "collision"},
    {"change", "replace replaced replacing replacement changed"},
    {"changed", "replace replaced replacing replacement"},
    {"changing", "replace replaced replacing replacement"},
    {"replace", "replaced replacing replacement change changed"},
    {"swap", "replace replaced replacement"},
};

/* Words that carry no meaning of their own in a question (sorted, for bsearch). */
static const char *const STOP[] = {
    "a", "about", "an", "and", "any", "are", "as", "at", "be", "boat", "but", "by", "can", "could", "do",
    "does", "for", "from", "get", "give", "had", "has", "have", "hi", "how", "i", "if", "in", "is", "it",
    "its", "know", "me", "mean", "much", "my", "need", "of", "on", "or", "our", "please", "seawind", "should",
    "so", "tell", "than", "that", "the", "their", "there", "this", "to", "us", "was", "we", "what", "whats",
    "when", "where", "which", "who", "why", "will", "with", "would", "you", "your",
};

/* Words that help find the answer but that an answer need not contain ("how often", "what kind"). */
static const char KEY_GLUE[] = "long|often|many|big|kind|type|sort|want|like|also|just|really|ok|one|them|they|"
                               "these|those|then|take|make|use|go|going|any|boats|model|models|info|information|"
                               "put|check|happens|happen|ready|prepare|good|best|right|proper|properly|correct|"
                               "correctly|way|needed|must|exactly|normally|usually|include|includes|included|"
                               "involve|involves";

static int cmp_word(const void *key, const void *elem) { return strcmp(key, *(const char *const *)elem); }

static bool is_stop(const char *w) /* STOP is sorted */
{
    return bsearch(w, STOP, CHAT_ARRAY_LEN(STOP), sizeof STOP[0], cmp_word) != NULL;
}

static int add_term(term *t, int *n, const char *w, size_t len, double weight, int key)
{
    if (*n >= MAX_TERMS || len == 0 || len >= sizeof t[0].w) return -1;
    for (int i = 0; i < *n; i++)
        if (strlen(t[i].w) == len && !strncmp(t[i].w, w, len)) return -1;
    memcpy(t[*n].w, w, len);
    t[*n].w[len] = '\0';
    t[*n].len = len;
    t[*n].weight = weight;
    t[*n].idf = 1.0;
    t[*n].key = key;
    return (*n)++;
}

/* The lower-case form of a byte that belongs to a word (letters, digits, UTF-8), 0 for a separator.
 * Inline and without <ctype.h> calls: every sentence of every passage goes through it. */
static inline unsigned char word_lower(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return (unsigned char)(ch + 32);
    return (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch >= 0x80 ? ch : 0;
}

/* Lower-cased words of s[0..len), one callback each. */
static void each_word(const char *s, size_t len, void (*fn)(void *, const char *, size_t), void *ud)
{
    char w[48];
    size_t n = 0;
    for (size_t i = 0; i <= len; i++) {
        unsigned char ch = i < len ? word_lower((unsigned char)s[i]) : 0;
        if (ch) {
            if (n < sizeof w - 1) w[n++] = (char)ch;
            continue;
        }
        if (n) fn(ud, w, n);
        n = 0;
    }
}

typedef struct sentence {
    const char *s;
    size_t len;
    int passage;
    int order;
    double score;
    uint32_t hits;   /* bit i: term i is in it */
    bool other_code; /* names a fault code other than the one asked about */
    bool has_number;
} sentence;

/* One composition: the request, what the question asks, and the answer being written. */
typedef struct compose {
    const chat_llm_request *req;
    const chat_agent *agent; /* req->agent's row; NULL: no agent, or one the table does not know */
    const chat_kb_result *kb;
    size_t np;            /* passages used */
    const char *text;     /* the search text: the message and what the pipeline added to it */
    const char *typed;    /* the message as the user typed it */
    chat_question q, tq;  /* of text, of typed */
    const chat_customer *cust;
    term t[MAX_TERMS];
    int nt;
    uint32_t by_first[256]; /* bit i: term i starts with that byte */
    sentence *s;
    int ns;
    char code[16];
    bool has_code;
    bool asks_scope;                            /* a coverage question that names no item (asks_scope()) */
    char targets[CHAT_QUESTION_MAX_MODELS][16]; /* the models the answer is about, by number */
    int ntargets;
    chat_buf out;
    double conf;
} compose;

/* ---- words ---- */

/* Whether a sentence word w matches term t: the same word, or one a stem of the other ("overheats" and
 * "overheat", "cancel" and "cancellation"). */
static bool word_matches(const char *t, size_t tl, const char *w, size_t len)
{
    if (tl == len) return !strncmp(t, w, len);
    size_t shorter = tl < len ? tl : len, longer = tl < len ? len : tl;
    if (shorter < STEM_MIN || longer - shorter > (shorter >= STEM_LONG ? STEM_SLACK_LONG : STEM_SLACK)) return false;
    return !strncmp(t, w, shorter);
}

static bool word_in_list(const char *w, const char *list)
{
    size_t wl = strlen(w);
    for (const char *p = list; *p;) {
        size_t n = strcspn(p, "| ");
        if (n == wl && !strncmp(p, w, n)) return true;
        p += n + (p[n] ? 1 : 0);
    }
    return false;
}

typedef struct qctx {
    compose *c;
    bool added; /* words the pipeline added to the message, not the user's */
} qctx;

static bool is_nickname_word(const compose *c, const char *w)
{
    for (size_t i = 0; c->cust && i < c->cust->n_vehicles; i++) {
        const char *nick = c->cust->vehicles[i].nickname;
        if (nick && chat_question_has(nick, w)) return true;
    }
    return false;
}

static bool is_model_number(const compose *c, const char *w)
{
    for (int i = 0; i < c->q.n_models; i++)
        if (!strcmp(c->q.models[i], w)) return true;
    return false;
}

static bool is_brand(const compose *c, const char *w, size_t len);

static void question_word(void *ud, const char *w, size_t len)
{
    qctx *x = ud;
    compose *c = x->c;
    char word[48];
    memcpy(word, w, len);
    word[len] = '\0';
    if (is_stop(word) || (len == 1 && !isdigit((unsigned char)w[0]))) return;
    for (int i = 0; i < c->nt; i++) /* the typed words come again in the search text */
        if (c->t[i].len == len && !memcmp(c->t[i].w, w, len)) return;
    /* the answer must cover what the user asked: their words, and for an elliptical follow-up the
     * previous question's, not the words retrieval was given besides */
    bool key = !is_model_number(c, word) && !is_nickname_word(c, word) && !word_in_list(word, KEY_GLUE) &&
               !is_brand(c, word, len) &&
               (!x->added || (c->tq.elliptical && !chat_question_added_word(word)));
    int self = add_term(c->t, &c->nt, w, len, 1.0, -1);
    if (self < 0) return;
    if (key) c->t[self].key = self;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(SYNONYMS); i++) {
        if (SYNONYMS[i].word[0] != word[0] || strcmp(SYNONYMS[i].word, word)) continue;
        for (const char *e = SYNONYMS[i].expands; *e;) {
            size_t l = strcspn(e, " ");
            add_term(c->t, &c->nt, e, l, SYNONYM_WEIGHT, c->t[self].key);
            e += l + (e[l] ? 1 : 0);
        }
    }
}

typedef struct sctx {
    const compose *c;
    uint32_t hits;
    bool has_number;
} sctx;

static void sentence_word(void *ud, const char *w, size_t len)
{
    sctx *x = ud;
    if (isdigit((unsigned char)w[0])) x->has_number = true;
    for (uint32_t m = x->c->by_first[(unsigned char)w[0]] & ~x->hits; m; m &= m - 1) {
        int i = __builtin_ctz(m);
        if (word_matches(x->c->t[i].w, x->c->t[i].len, w, len)) x->hits |= 1u << i;
    }
}

/* ---- models ---- */

/* "seawind-310" and "310": the passage is about model 310. */
static bool model_is(const char *model_id, const char *num)
{
    if (!model_id) return false;
    const char *dash = strrchr(model_id, '-');
    return !strcmp(dash ? dash + 1 : model_id, num);
}

/* "seawind-310" -> "Seawind 310". */
static void model_display(const char *model_id, char *out, size_t n)
{
    snprintf(out, n, "%s", model_id ? model_id : "");
    for (char *p = out; *p; p++) {
        if (*p == '-') *p = ' ';
        if (p == out || p[-1] == ' ') *p = (char)toupper((unsigned char)*p);
    }
}

static bool model_known(const compose *c, const char *num)
{
    for (size_t i = 0; i < c->np; i++)
        if (model_is(c->kb->items[i].model_id, num)) return true;
    for (size_t i = 0; c->cust && i < c->cust->n_vehicles; i++)
        if (model_is(c->cust->vehicles[i].model_id, num)) return true;
    return false;
}

/* The brand part of a model id ("seawind" of "seawind-310") matches w. */
static bool is_brand(const compose *c, const char *w, size_t len)
{
    const char *ids[MAX_PASSAGES + MAX_BOATS_SEEN];
    size_t n = 0;
    for (size_t i = 0; i < c->np; i++) ids[n++] = c->kb->items[i].model_id;
    for (size_t i = 0; c->cust && i < c->cust->n_vehicles && n < CHAT_ARRAY_LEN(ids); i++)
        ids[n++] = c->cust->vehicles[i].model_id;
    for (size_t i = 0; i < n; i++) {
        const char *dash = ids[i] ? strrchr(ids[i], '-') : NULL;
        if (dash && (size_t)(dash - ids[i]) == len && !strncasecmp(ids[i], w, len)) return true;
    }
    return false;
}

/* The models the answer is about: those the search text names that exist. */
static void find_targets(compose *c)
{
    for (int i = 0; i < c->q.n_models; i++)
        if (model_known(c, c->q.models[i])) snprintf(c->targets[c->ntargets++], sizeof c->targets[0], "%s", c->q.models[i]);
}

static bool passage_on_target(const compose *c, int passage)
{
    const char *m = c->kb->items[passage].model_id;
    if (!c->ntargets || !m) return true;
    for (int i = 0; i < c->ntargets; i++)
        if (model_is(m, c->targets[i])) return true;
    return false;
}

/* ---- sentences ---- */

/* Splits body into sentences at ". ", "? ", "! " and line breaks (list items stay whole). */
static int split_sentences(const char *body, int passage, sentence *out, int n, int max)
{
    const char *p = body, *start = body;
    int order = 0;
    while (n < max) {
        bool end = !*p || *p == '\n' ||
                   ((*p == '.' || *p == '?' || *p == '!') && (p[1] == ' ' || p[1] == '\n' || !p[1]) &&
                    !(p > body && isdigit((unsigned char)p[-1]) && isdigit((unsigned char)p[1])));
        if (end) {
            const char *e = (*p && *p != '\n') ? p + 1 : p;
            while (start < e && (isspace((unsigned char)*start) || *start == '-' || *start == '*')) start++;
            if (e - start > SENTENCE_MIN_BYTES) {
                memset(&out[n], 0, sizeof out[n]);
                out[n].s = start;
                out[n].len = (size_t)(e - start);
                out[n].passage = passage;
                out[n].order = order++;
                n++;
            }
            if (!*p) break;
            start = p + 1;
        }
        p++;
    }
    return n;
}

/* A NUL-terminated copy of sentence x in buf (cut at MAX_SENTENCE_BYTES). */
static const char *sentence_text(const sentence *x, char *buf)
{
    size_t l = x->len < MAX_SENTENCE_BYTES - 1 ? x->len : MAX_SENTENCE_BYTES - 1;
    memcpy(buf, x->s, l);
    buf[l] = '\0';
    return buf;
}

static int cmp_score(const void *a, const void *b)
{
    const sentence *x = a, *y = b;
    if (x->score != y->score) return x->score < y->score ? 1 : -1;
    if (x->passage != y->passage) return x->passage - y->passage;
    return x->order - y->order;
}

static int cmp_position(const void *a, const void *b)
{
    const sentence *x = a, *y = b;
    if (x->passage != y->passage) return x->passage - y->passage;
    return x->order - y->order;
}

static bool word_byte(unsigned char ch) { return word_lower(ch) != 0; }

/* ---- scoring ---- */

static const char NEGATION[] = "not|excludes|exclude|excluded|excluding|except|never";
/* Words of a coverage question that name the policy, not the item asked about. */
static const char COVER_WORDS[] = "warranty|cover|covers|covered|coverage|plan|seawind|limited";

static bool asks_for_figure(const char *q)
{
    static const char CUES[] = "how much|how many|how long|how heavy|how fast|how big|what is the|what's the|power|"
                               "torque|capacity|speed|length|weight|beam|draft|size|hp|range";
    return chat_question_has_any(q, CUES);
}

/* A sentence that lists things: "The technician changes ..., checks ..., and reads ...". */
static bool is_list(const char *s)
{
    int commas = 0;
    for (const char *p = s; *p; p++) commas += *p == ',';
    return commas >= LIST_MIN_COMMAS;
}

typedef struct tctx {
    const compose *c;
    uint32_t keys; /* bit k: key word k is in the title */
} tctx;

static void title_word(void *ud, const char *w, size_t len)
{
    tctx *x = ud;
    for (int k = 0; k < x->c->nt; k++)
        if (x->c->t[k].key >= 0 && x->c->t[k].w[0] == w[0] && word_matches(x->c->t[k].w, x->c->t[k].len, w, len))
            x->keys |= 1u << x->c->t[k].key;
}

/* The share of the question's key words (by idf) the passage's section title names ("20-Hour Break-In
 * Service", "Engine Won't Start"). */
static double title_share(const compose *c, int passage)
{
    const char *title = c->kb->items[passage].title;
    static const char SEP[] = " - "; /* "Seawind 250 Maintenance Guide - 20-Hour Break-In Service" */
    const char *dash = strstr(title, SEP);
    const char *sec = dash ? dash + strlen(SEP) : title;
    tctx x = {c, 0};
    each_word(sec, strlen(sec), title_word, &x);
    double total = 0, named = 0;
    for (int k = 0; k < c->nt; k++) {
        if (c->t[k].key != k) continue;
        total += c->t[k].idf;
        if ((x.keys >> k) & 1) named += c->t[k].idf;
    }
    return total > 0 ? named / total : 0;
}

/* The sentence has a key word of the question other than the policy's own ("aground", not "warranty"). */
static bool item_hit(const compose *c, const sentence *x)
{
    for (int k = 0; k < c->nt; k++)
        if ((x->hits & (1u << k)) && c->t[k].key >= 0 && !word_in_list(c->t[c->t[k].key].w, COVER_WORDS)) return true;
    return false;
}

/* An instruction: "To flush the Seawind 250, connect ...", "Check that ...", "What to do: ...". */
static bool is_instruction(const char *s)
{
    static const char VERBS[] = "to|check|make|turn|connect|drain|stop|switch|run|reduce|release|wait|try|hold|"
                                "remove|keep|book|call|use|fill|open|close|set|look|listen|grease|tighten|clean|"
                                "rinse|fit|never|always|first|restart|replace|slow|steer|put|tilt|throttle|trim|"
                                "disconnect|inspect|flush|add|top";
    char first[16];
    size_t n = 0;
    while (n < sizeof first - 1 && isalpha((unsigned char)s[n])) first[n] = (char)tolower((unsigned char)s[n]), n++;
    first[n] = '\0';
    return word_in_list(first, VERBS) || chat_question_find(s, "what to do:");
}

/* "What does the warranty cover?": a coverage question that names no item and no exclusion asks what
 * is covered, which an exclusion ("does not cover normal wear items") does not say. */
static bool asks_scope(const compose *c)
{
    if (!c->q.coverage || chat_question_has_any(c->typed, NEGATION)) return false;
    for (int k = 0; k < c->nt; k++)
        if (c->t[k].key == k && !word_in_list(c->t[k].w, COVER_WORDS)) return false;
    return true;
}

static double sentence_score(const compose *c, const sentence *x, bool figure_q)
{
    if (x->other_code) return 0;
    double score = 0;
    for (int k = 0; k < c->nt; k++)
        if (x->hits & (1u << k)) score += c->t[k].weight * c->t[k].idf;
    char buf[MAX_SENTENCE_BYTES];
    const char *txt = sentence_text(x, buf);
    if (score <= 0) return 0;
    const chat_attr_info *a = chat_attr_get(c->q.attr);
    chat_figure f;
    if (a && a->unit[0] && chat_attr_figure(txt, c->q.attr, &f)) score += FIGURE_FOUND_BONUS;
    else if (a && a->unit[0] && strcmp(a->unit, "$") && chat_question_find(txt, a->cue)) score += FIGURE_CUE_BONUS;
    else if (a && !a->unit[0] && chat_question_has(txt, a->cue)) score += FACT_CUE_BONUS;
    if (figure_q && x->has_number) score += NUMBER_BONUS;
    if (c->q.howto && is_instruction(txt)) score += INSTRUCTION_BONUS;
    if (c->q.coverage && chat_question_has_any(txt, NEGATION) && item_hit(c, x)) score += EXCLUSION_BONUS;
    if (c->asks_scope && chat_question_has_any(txt, NEGATION))
        score *= SCOPE_EXCLUSION_FACTOR;
    else if (c->asks_scope && is_list(txt))
        score += SCOPE_LIST_BONUS;
    score += PASSAGE_RANK_BONUS / (1 + x->passage) - ORDER_PENALTY * x->order;
    if (!passage_on_target(c, x->passage)) score *= OFF_TARGET_FACTOR;
    return score > 0 ? score : 0;
}

/* Splits the passages and scores every sentence (in place: the order stays the passages'). */
static void score_sentences(compose *c)
{
    for (size_t i = 0; i < c->np; i++) c->ns = split_sentences(c->kb->items[i].body, (int)i, c->s, c->ns, MAX_SENTENCES);
    int df[MAX_TERMS] = {0};
    char buf[MAX_SENTENCE_BYTES];
    for (int i = 0; i < c->ns; i++) {
        sentence *x = &c->s[i];
        sctx sc = {c, 0, false};
        each_word(x->s, x->len, sentence_word, &sc);
        x->hits = sc.hits;
        x->has_number = sc.has_number;
        for (int k = 0; k < c->nt; k++) df[k] += (x->hits >> k) & 1;
        char other[16];
        /* a question about E42 is not answered by the sentence about E63 */
        x->other_code = c->has_code && chat_kb_find_fault_code(sentence_text(x, buf), other) && strcmp(other, c->code);
    }
    /* a word found in few of the candidate sentences says more about which one answers */
    for (int k = 0; k < c->nt; k++) c->t[k].idf = 1.0 + log((c->ns + 1.0) / (df[k] + 1.0));
    bool figure_q = asks_for_figure(c->text);
    c->asks_scope = asks_scope(c);
    for (int i = 0; i < c->ns; i++) c->s[i].score = sentence_score(c, &c->s[i], figure_q);
}

/* The share of the question's key words (weighted by idf) that hits (a union of sentences' hits) has; a
 * figure found for the asked attribute covers the words that asked for it ("how heavy" by "dry weight"). */
static double coverage(const compose *c, uint32_t hits, bool figure_found)
{
    double total = 0, covered = 0;
    for (int k = 0; k < c->nt; k++) {
        if (c->t[k].key != k) continue;
        bool hit = false;
        for (int j = 0; j < c->nt && !hit; j++) hit = c->t[j].key == k && ((hits >> j) & 1);
        if (!hit && figure_found) hit = chat_attr_word(c->q.attr, c->t[k].w);
        total += c->t[k].idf;
        if (hit) covered += c->t[k].idf;
    }
    return total > 0 ? covered / total : 1.0;
}

/* ---- writing ---- */

/* The agent's opening words, from its row ("" for no agent, or one the table does not know). */
static const char *agent_intro(const compose *c) { return c->agent ? c->agent->intro : ""; }

/* "\n\nSources: a, b." for the passages listed, each source once. */
static void put_sources(compose *c, const int *passages, int n)
{
    int cited = 0;
    for (int i = 0; i < n; i++) {
        bool dup = false;
        for (int j = 0; j < i; j++)
            dup |= passages[j] == passages[i] || !strcmp(c->kb->items[passages[j]].source, c->kb->items[passages[i]].source);
        if (dup) continue;
        chat_buf_printf(&c->out, "%s%s", cited++ ? ", " : "\n\nSources: ", c->kb->items[passages[i]].source);
    }
    if (cited) chat_buf_puts(&c->out, ".");
}

static bool yes_no_question(const char *typed)
{
    while (*typed == ' ') typed++;
    static const char OPENERS[] = "is|are|does|do|has|have|can|will|would|was";
    size_t n = strcspn(typed, " ");
    char w[16];
    if (n >= sizeof w) return false;
    for (size_t i = 0; i < n; i++) w[i] = (char)tolower((unsigned char)typed[i]);
    w[n] = '\0';
    return word_in_list(w, OPENERS);
}

/* ---- the kinds of answer, tried in order ---- */

static bool answer_greeting(compose *c)
{
    /* "thanks!" must not be answered with the one passage that happens to contain "thanks": small talk is
     * the fallback agent's (or no agent's) */
    bool fallback = !c->req->agent || (c->agent && (c->agent->routing & CHAT_AGENT_FALLBACK));
    if (!fallback || !c->tq.small_talk || c->tq.attr != CHAT_ATTR_NONE || c->tq.customer || c->has_code) return false;
    chat_buf_puts(&c->out, GREETING);
    c->conf = CONF_GREETING;
    return true;
}

/* Without the records, the description's "Upcoming appointments" sentence (callers that have text only). */
static bool answer_records_text(compose *c)
{
    const char *appt = c->req->customer_context && (c->tq.customer & CHAT_ASK_NEXT)
                           ? chat_question_find(c->req->customer_context, "Upcoming appointment")
                           : NULL;
    if (!appt) return false;
    const char *end = strstr(appt, ". ");
    const char *nl = strchr(appt, '\n');
    if (!end || (nl && nl < end)) end = nl;
    size_t l = end ? (size_t)(end - appt) : strlen(appt);
    chat_buf_puts(&c->out, "Here is what I have on file for you. ");
    chat_buf_append(&c->out, appt, l);
    if (l && appt[l - 1] != '.') chat_buf_puts(&c->out, ".");
    c->conf = CONF_RECORDS;
    return true;
}

static bool answer_records(compose *c)
{
    if (!c->tq.customer || c->tq.compare) return false;
    if (!c->cust) return answer_records_text(c);
    const chat_vehicle *only = chat_customer_vehicle_named(c->cust, c->typed);
    if (!c->tq.mine && !only && c->tq.n_models) return false; /* about a model, not their records */
    chat_customer_answer(c->cust, c->tq.customer, only, &c->out);
    c->conf = CONF_RECORDS;
    return true;
}

/* The word before whole-word num in text, or NULL; *len its length. */
static const char *word_before(const char *text, const char *num, size_t *len)
{
    size_t nl = strlen(num);
    for (const char *h = strstr(text, num); h; h = strstr(h + 1, num)) {
        if ((h > text && word_byte((unsigned char)h[-1])) || word_byte((unsigned char)h[nl])) continue;
        const char *e = h;
        while (e > text && e[-1] == ' ') e--;
        const char *b = e;
        while (b > text && isalpha((unsigned char)b[-1])) b--;
        *len = (size_t)(e - b);
        return *len ? b : NULL;
    }
    return NULL;
}

static bool answer_unknown_model(compose *c)
{
    for (int i = 0; i < c->tq.n_models; i++) {
        const char *num = c->tq.models[i];
        size_t bl = 0;
        const char *brand = word_before(c->typed, num, &bl);
        if (model_known(c, num) || !brand || !is_brand(c, brand, bl)) continue;
        char name[64];
        snprintf(name, sizeof name, "%.*s %s", (int)bl, brand, num);
        name[0] = (char)toupper((unsigned char)name[0]);
        bool mentioned = false;
        for (size_t p = 0; p < c->np && !mentioned; p++) mentioned = chat_question_has(c->kb->items[p].body, name);
        if (mentioned) continue;
        chat_buf_printf(&c->out, "I have no information about the %s: it is not a model in the Seawind Marine "
                                 "knowledge base. Ask me about any model of the current line and I will look it up.",
                        name);
        c->conf = CONF_NONE;
        return true;
    }
    return false;
}

/* The passage about the fault code asked for is the answer: its opening sentences in order (meaning,
 * symptoms, first steps) read better than the best-scoring fragments. */
static bool answer_code(compose *c)
{
    if (!c->has_code) return false;
    bool anywhere = false;
    for (size_t i = 0; i < c->np && !anywhere; i++)
        anywhere = chat_question_has(c->kb->items[i].title, c->code) || chat_question_has(c->kb->items[i].body, c->code);
    if (!anywhere) {
        chat_buf_printf(&c->out, "I have no information about fault code %s in the Seawind Marine knowledge base. "
                                 "Please note the code and what the boat does, and call your nearest Seawind Marine "
                                 "service center.", c->code);
        c->conf = CONF_NONE;
        return true;
    }
    if (!c->np || !chat_question_has(c->kb->items[0].title, c->code)) return false;
    chat_buf_puts(&c->out, agent_intro(c));
    int n = 0, used = 0;
    for (int i = 0; i < c->ns && n < FAULT_OPENING_SENTENCES; i++) {
        const sentence *x = &c->s[i];
        if (x->passage != 0 || x->order >= FAULT_OPENING_SENTENCES || x->other_code) continue;
        if (n++) chat_buf_puts(&c->out, " ");
        chat_buf_append(&c->out, x->s, x->len);
    }
    put_sources(c, &used, 1);
    c->conf = CONF_CODE;
    return true;
}

/* ---- comparisons ---- */

typedef struct model_figure {
    char num[16];
    const chat_vehicle *boat; /* the customer's boat of that model, for its name */
    chat_figure f;
    int passage;
    bool found;
} model_figure;

/* The models to compare: those named (two or more), else the customer's boats when they ask about
 * theirs, else every model the passages are about. */
static int compare_targets(const compose *c, model_figure *m, int max)
{
    int n = 0;
    if (c->ntargets >= 2) {
        for (int i = 0; i < c->ntargets && n < max; i++) {
            snprintf(m[n].num, sizeof m[0].num, "%s", c->targets[i]);
            for (size_t v = 0; c->tq.mine && c->cust && v < c->cust->n_vehicles; v++)
                if (model_is(c->cust->vehicles[v].model_id, m[n].num)) m[n].boat = &c->cust->vehicles[v];
            n++;
        }
        return n;
    }
    if (c->tq.mine && c->cust && c->cust->n_vehicles >= 2) { /* their boats */
        for (size_t i = 0; i < c->cust->n_vehicles && n < max; i++) {
            const char *dash = strrchr(c->cust->vehicles[i].model_id, '-');
            snprintf(m[n].num, sizeof m[0].num, "%s", dash ? dash + 1 : c->cust->vehicles[i].model_id);
            m[n++].boat = &c->cust->vehicles[i];
        }
        return n;
    }
    for (size_t p = 0; p < c->np && n < max; p++) {
        const char *id = c->kb->items[p].model_id, *dash = id ? strrchr(id, '-') : NULL;
        if (!id) continue;
        bool seen = false;
        for (int i = 0; i < n; i++) seen |= model_is(id, m[i].num);
        if (!seen) snprintf(m[n++].num, sizeof m[0].num, "%s", dash ? dash + 1 : id);
    }
    return n;
}

/* The first figure for attr in a passage of model m (sentences in the passages' order). */
static bool figure_of(const compose *c, chat_attr attr, model_figure *m)
{
    char buf[MAX_SENTENCE_BYTES];
    for (int i = 0; i < c->ns; i++) {
        const sentence *x = &c->s[i];
        if (!model_is(c->kb->items[x->passage].model_id, m->num)) continue;
        if (chat_attr_figure(sentence_text(x, buf), attr, &m->f)) {
            m->passage = x->passage;
            return m->found = true;
        }
    }
    return m->found = false;
}

static void put_model(compose *c, const model_figure *m)
{
    char name[64];
    snprintf(name, sizeof name, "seawind-%s", m->num);
    for (size_t p = 0; p < c->np; p++)
        if (model_is(c->kb->items[p].model_id, m->num)) {
            snprintf(name, sizeof name, "%s", c->kb->items[p].model_id);
            break;
        }
    char shown[64];
    model_display(name, shown, sizeof shown);
    if (m->boat && m->boat->nickname) chat_buf_printf(&c->out, "\"%s\" (%s)", m->boat->nickname, shown);
    else if (m->boat) chat_buf_printf(&c->out, "your %s", shown);
    else chat_buf_printf(&c->out, "the %s", shown);
}

static int cmp_more(const void *a, const void *b)
{
    const model_figure *x = a, *y = b;
    if (x->found != y->found) return x->found ? -1 : 1;
    return x->f.value < y->f.value ? 1 : x->f.value > y->f.value ? -1 : 0;
}

static int cmp_less(const void *a, const void *b)
{
    const model_figure *x = a, *y = b;
    if (x->found != y->found) return x->found ? -1 : 1;
    return x->f.value > y->f.value ? 1 : x->f.value < y->f.value ? -1 : 0;
}

/* "Yes. Of the Seawind 280 and the Seawind 250, the Seawind 280 is the heaviest: 3,540 kg (7,800 lb). For
 * comparison: the Seawind 250 2,270 kg (5,000 lb)." m is sorted, the found ones first. */
static void write_ranking(compose *c, const model_figure *m, int n, int found, const chat_attr_info *a, bool less)
{
    if (yes_no_question(c->typed) && c->tq.n_models)
        chat_buf_puts(&c->out, !strcmp(m[0].num, c->tq.models[0]) ? "Yes. " : "No. ");
    if (n == 2) {
        chat_buf_puts(&c->out, "Of ");
        put_model(c, &m[0]);
        chat_buf_puts(&c->out, " and ");
        put_model(c, &m[1]);
        chat_buf_puts(&c->out, ", ");
    } else if (m[0].boat) {
        chat_buf_puts(&c->out, "Of your boats, ");
    } else {
        chat_buf_printf(&c->out, "Of the %d models I have figures for, ", found);
    }
    put_model(c, &m[0]);
    chat_buf_printf(&c->out, " %s: %s.", less ? a->less : a->more, m[0].f.shown);
    for (int i = 1; i < found; i++) {
        chat_buf_puts(&c->out, i == 1 ? " For comparison: " : "; ");
        put_model(c, &m[i]);
        chat_buf_printf(&c->out, ": %s", m[i].f.shown);
    }
    if (found > 1) chat_buf_puts(&c->out, ".");
    for (int i = found; i < n; i++) {
        chat_buf_printf(&c->out, i == found ? " I have no %s figure for " : " or ", a->noun);
        put_model(c, &m[i]);
        if (i == n - 1) chat_buf_puts(&c->out, ".");
    }
}

static bool answer_compare_figure(compose *c)
{
    const chat_attr_info *a = chat_attr_get(c->q.attr);
    if (!a || !a->unit[0] || !strcmp(a->unit, "$")) return false;
    model_figure m[CHAT_QUESTION_MAX_MODELS];
    memset(m, 0, sizeof m);
    int n = compare_targets(c, m, (int)CHAT_ARRAY_LEN(m)), found = 0;
    for (int i = 0; i < n; i++) found += figure_of(c, c->q.attr, &m[i]);
    if (found < 2) return false;
    bool less = c->q.extreme < 0;
    qsort(m, (size_t)n, sizeof m[0], less ? cmp_less : cmp_more);
    write_ranking(c, m, n, found, a, less);
    int used[CHAT_QUESTION_MAX_MODELS], nu = 0;
    for (int i = 0; i < found; i++) used[nu++] = m[i].passage;
    put_sources(c, used, nu);
    c->conf = found == n ? CONF_COMPARE : CONF_COMPARE_PART;
    return true;
}

/* "Compare the 250 and the 310": the main figures of each, side by side. */
static bool answer_compare_table(compose *c)
{
    static const chat_attr ROWS[] = {CHAT_ATTR_LENGTH, CHAT_ATTR_POWER, CHAT_ATTR_TOP_SPEED, CHAT_ATTR_FUEL_TANK,
                                     CHAT_ATTR_PERSONS};
    if (c->ntargets < 2) return false;
    model_figure m[CHAT_QUESTION_MAX_MODELS];
    memset(m, 0, sizeof m);
    int n = compare_targets(c, m, (int)CHAT_ARRAY_LEN(m)), rows = 0, used[64], nu = 0;
    for (size_t r = 0; r < CHAT_ARRAY_LEN(ROWS); r++) {
        int found = 0;
        for (int i = 0; i < n; i++) found += figure_of(c, ROWS[r], &m[i]);
        if (found < 2) continue;
        if (!rows++) chat_buf_puts(&c->out, "Here is how they compare, from their specification sheets:");
        const chat_attr_info *a = chat_attr_get(ROWS[r]);
        chat_buf_printf(&c->out, "\n- %c%s: ", toupper((unsigned char)a->noun[0]), a->noun + 1);
        for (int i = 0, k = 0; i < n; i++) {
            if (!m[i].found) continue;
            if (k++) chat_buf_puts(&c->out, "; ");
            put_model(c, &m[i]);
            chat_buf_printf(&c->out, ": %s", m[i].f.shown);
            if (nu < (int)CHAT_ARRAY_LEN(used)) used[nu++] = m[i].passage;
        }
        chat_buf_puts(&c->out, ".");
    }
    if (!rows) return false;
    put_sources(c, used, nu);
    c->conf = CONF_COMPARE;
    return true;
}

static bool answer_compare(compose *c)
{
    if (!c->q.compare) return false;
    return c->q.attr == CHAT_ATTR_NONE ? answer_compare_table(c) : answer_compare_figure(c);
}

/* ---- sentences that answer ---- */

static int cmp_str(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

/* The models of the sentences that score nearly as well as the best: more than one, and nobody said
 * which model, means the answer depends on it. s is sorted by score. */
static int candidate_models(const compose *c, const char **ids, int max)
{
    int n = 0;
    for (int i = 0; i < c->ns && c->s[i].score >= CANDIDATE_SHARE * c->s[0].score && c->s[i].score > 0; i++) {
        const char *m = c->kb->items[c->s[i].passage].model_id;
        bool seen = !m;
        for (int k = 0; k < n && !seen; k++) seen = !strcmp(ids[k], m);
        if (!seen && n < max) ids[n++] = m;
    }
    return n;
}

/* The request's line of models (chat_llm_request.line_models) into line (room for max ids of 64 bytes):
 * how many, or 0 without one (or one that does not fit). */
static int line_of_models(const compose *c, char line[][64], int max)
{
    const char *p = c->req->line_models;
    int n = 0;
    while (p && *p) {
        size_t len = strcspn(p, " ");
        if (n == max || len == 0 || len >= 64) return 0;
        memcpy(line[n], p, len);
        line[n++][len] = '\0';
        p += len + (p[len] == ' ');
    }
    return n;
}

static bool in_line(char line[][64], int n, const char *id)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(line[i], id)) return true;
    return false;
}

/* "Which model do you mean?": the answer depends on a model nobody named. The models named are the
 * whole line when the request carries it and the retrieved passages' models are all in it (the few
 * passages retrieved are about some of the models only: naming just those told the owner of another
 * that there is nothing for theirs); otherwise the passages' models, the ones it is known to have. */
static bool answer_which_model(compose *c)
{
    if (c->ntargets || c->q.compare || !c->ns || !c->kb->items[c->s[0].passage].model_id) return false;
    const char *ids[CHAT_LLM_LINE_MAX];
    int n = candidate_models(c, ids, (int)CHAT_ARRAY_LEN(ids));
    if (n < 2) return false;
    char line[CHAT_LLM_LINE_MAX][64];
    int nline = line_of_models(c, line, CHAT_LLM_LINE_MAX);
    bool whole = nline >= n;
    for (int i = 0; i < n && whole; i++)
        whole = in_line(line, nline, ids[i]);
    if (whole) {
        n = nline;
        for (int i = 0; i < n; i++)
            ids[i] = line[i];
    }
    qsort(ids, (size_t)n, sizeof ids[0], cmp_str);
    chat_buf_puts(&c->out, whole ? "Which model do you mean? The answer depends on the model: "
                                 : "Which model do you mean? The answer depends on the model, and I have it for ");
    for (int i = 0; i < n; i++) {
        char name[64];
        model_display(ids[i], name, sizeof name);
        chat_buf_printf(&c->out, "%s%s",
                        i == 0       ? "the "
                        : i == n - 1 ? (whole ? " or the " : " and the ")
                                     : ", the ",
                        name);
    }
    chat_buf_puts(&c->out, whole ? "?" : ".");
    c->conf = CONF_CLARIFY;
    return true;
}

/* A boat of the customer's named in the conversation before this message. */
static bool boat_in_history(const compose *c)
{
    const chat_llm_request *r = c->req;
    for (size_t i = 0; i + 1 < r->n_messages; i++)
        if (strcmp(r->messages[i].role, "system") && chat_customer_vehicle_named(c->cust, r->messages[i].content))
            return true;
    return false;
}

/* "my boat" from a customer with several, none of them named: the model decides the answer. */
static bool answer_which_boat(compose *c)
{
    const chat_customer *cu = c->cust;
    if (!cu || cu->n_vehicles < 2 || !c->tq.mine || c->tq.n_models || c->q.compare || !c->ns ||
        !c->kb->items[c->s[0].passage].model_id || chat_customer_vehicle_named(cu, c->typed) || boat_in_history(c))
        return false;
    chat_buf_puts(&c->out, "Which of your boats do you mean: ");
    for (size_t i = 0; i < cu->n_vehicles; i++) {
        const chat_vehicle *v = &cu->vehicles[i];
        chat_buf_puts(&c->out, i == 0 ? "" : i + 1 == cu->n_vehicles ? " or " : ", ");
        if (v->nickname) chat_buf_printf(&c->out, "\"%s\" (%s)", v->nickname, v->model_name);
        else chat_buf_printf(&c->out, "your %s", v->model_name);
    }
    chat_buf_puts(&c->out, "? The answer depends on the model.");
    c->conf = CONF_CLARIFY;
    return true;
}

static bool picks_have_figure(const compose *c, int pick)
{
    const chat_attr_info *a = chat_attr_get(c->q.attr);
    if (!a) return false;
    char buf[MAX_SENTENCE_BYTES];
    for (int i = 0; i < pick; i++) {
        const sentence *x = &c->s[i];
        if (!passage_on_target(c, x->passage)) continue;
        const char *txt = sentence_text(x, buf);
        chat_figure f;
        if (a->unit[0] ? chat_attr_figure(txt, c->q.attr, &f) : chat_question_has(txt, a->cue)) return true;
    }
    return false;
}

/* The confidence of an answer made of sentences: how much of the question they cover and, when a
 * figure was asked for, whether it is there. */
static double sentences_confidence(const compose *c, double cov, bool figure_found)
{
    const chat_attr_info *a = chat_attr_get(c->q.attr);
    if (a && a->unit[0])
        return figure_found ? CONF_FIGURE_BASE + CONF_FIGURE_SPAN * cov : CONF_NO_FIGURE_BASE + CONF_NO_FIGURE_SPAN * cov;
    if (a && figure_found) return CONF_FACT_BASE + CONF_FACT_SPAN * cov;
    return CONF_WORDS_BASE + CONF_WORDS_SPAN * cov * cov;
}

/* Words that make a sentence lean on the one before it when they are its subject: "It replaces the six
 * spark plugs" names nothing quoted alone. BACK_CLAUSE_BYTES: how far into the sentence an opening
 * clause may run before the subject ("In addition to the 100-hour items, it replaces ..."). */
static const char BACK_REFERENCE[] = "it|its|this|these|they|their|those";
#define BACK_CLAUSE_BYTES 60

/* The word at p, lower-cased as each_word reads words, in w (cut at cap - 1 bytes); its length. */
static size_t word_at(const char *p, const char *end, char *w, size_t cap)
{
    size_t n = 0;
    for (unsigned char ch; p + n < end && n + 1 < cap && (ch = word_lower((unsigned char)p[n])); n++) w[n] = (char)ch;
    w[n] = '\0';
    return n;
}

/* Whether x opens with a word of BACK_REFERENCE, or with a short clause and then one. */
static bool refers_back(const sentence *x)
{
    const char *end = x->s + x->len;
    char w[16];
    if (word_at(x->s, end, w, sizeof w) && word_in_list(w, BACK_REFERENCE)) return true;
    const char *comma = memchr(x->s, ',', x->len < BACK_CLAUSE_BYTES ? x->len : BACK_CLAUSE_BYTES);
    if (!comma) return false;
    const char *p = comma + 1;
    while (p < end && *p == ' ') p++;
    return word_at(p, end, w, sizeof w) && word_in_list(w, BACK_REFERENCE);
}

/* The sentence before x in its passage when x leans on it and it is not among the n picked: quoted
 * first, so that the answer says what "it" is. NULL otherwise. */
static const sentence *antecedent(const compose *c, const sentence *x, int n)
{
    if (!x->order || !refers_back(x)) return NULL;
    const sentence *prev = NULL;
    for (int i = 0; i < c->ns && !prev; i++)
        if (c->s[i].passage == x->passage && c->s[i].order == x->order - 1) prev = &c->s[i];
    if (!prev || prev->s[0] == '#') return NULL;
    for (int i = 0; i < n; i++)
        if (&c->s[i] == prev) return NULL;
    return prev;
}

/* Writes the first n sentences of c->s in document order (after the first one when lead: the one that
 * answers "no"), each after the sentence it leans on (antecedent), with the intro and the sources. */
static void write_sentences(compose *c, int n, const char *intro, bool lead)
{
    qsort(c->s + lead, (size_t)(n - lead), sizeof *c->s, cmp_position);
    chat_buf_puts(&c->out, intro);
    int used[MAX_PICK + 1];
    for (int i = 0; i < n; i++) {
        const sentence *prev = antecedent(c, &c->s[i], n);
        if (i) chat_buf_puts(&c->out, " ");
        if (prev) {
            chat_buf_append(&c->out, prev->s, prev->len);
            chat_buf_puts(&c->out, " ");
        }
        chat_buf_append(&c->out, c->s[i].s, c->s[i].len);
        used[i] = c->s[i].passage;
    }
    put_sources(c, used, n);
}

/* A symptom guide ("Engine Won't Start") reads best from its beginning: when the agent's own passages
 * are a folder of guides (its row has a kb_dir: the troubleshooting guides) and the title of one of the
 * passages about no model names most of what was asked, its opening sentences (what it means, the
 * checks in order) are the answer. Moves them to the front of c->s; returns how many. */
static int opening_of_guide(compose *c)
{
    if (!c->agent || !c->agent->kb_dir || c->has_code) return 0;
    int p = -1;
    double best = GUIDE_TITLE_SHARE;
    for (size_t i = 0; i < c->np; i++) {
        double share = c->kb->items[i].model_id ? 0 : title_share(c, (int)i);
        if (share > best) best = share, p = (int)i;
    }
    if (p < 0) return 0;
    qsort(c->s, (size_t)c->ns, sizeof *c->s, cmp_position);
    int n = 0;
    for (int i = 0; i < c->ns && n <= MAX_PICK; i++)
        if (c->s[i].passage == p && c->s[i].order <= MAX_PICK && !c->s[i].other_code) {
            sentence tmp = c->s[n];
            c->s[n++] = c->s[i];
            c->s[i] = tmp;
        }
    return n;
}

/* The passage whose section title names most of the question (on the model in question), or -1 when
 * none names at least min of it. */
static int passage_titled(const compose *c, double min, double *share)
{
    int p = -1;
    *share = min;
    for (size_t i = 0; i < c->np; i++) {
        double sh = passage_on_target(c, (int)i) ? title_share(c, (int)i) : 0;
        if (sh > *share) *share = sh, p = (int)i;
    }
    return p;
}

/* "What does the break-in service include?": the list in the passage that the question names ("The
 * technician changes ..., checks ..., and reads ..."), in words the question need not use. */
static bool answer_tasks(compose *c)
{
    double share;
    int p = c->q.tasks ? passage_titled(c, TASKS_TITLE_SHARE, &share) : -1;
    if (p < 0) return false;
    qsort(c->s, (size_t)c->ns, sizeof *c->s, cmp_position);
    char buf[MAX_SENTENCE_BYTES];
    int n = 0;
    for (int i = 0; i < c->ns && n < MAX_TASK_SENTENCES; i++)
        if (c->s[i].passage == p && is_list(sentence_text(&c->s[i], buf))) {
            sentence tmp = c->s[n];
            c->s[n++] = c->s[i];
            c->s[i] = tmp;
        }
    if (!n) return false;
    c->conf = CONF_TASKS_BASE + CONF_TASKS_SPAN * share;
    write_sentences(c, n, agent_intro(c), false);
    return true;
}

/* "How do I flush ...": when no pick says what to do, the best instruction of the top pick's passage
 * takes the last place. s is sorted by score. */
static int add_instruction(compose *c, int pick)
{
    char buf[MAX_SENTENCE_BYTES];
    for (int i = 0; i < pick; i++)
        if (is_instruction(sentence_text(&c->s[i], buf))) return pick;
    for (int i = pick; i < c->ns; i++)
        if (c->s[i].passage == c->s[0].passage && c->s[i].score > 0 && is_instruction(sentence_text(&c->s[i], buf))) {
            int at = pick < MAX_PICK ? pick++ : pick - 1;
            sentence tmp = c->s[at];
            c->s[at] = c->s[i];
            c->s[i] = tmp;
            break;
        }
    return pick;
}

/* Moves c->s[from] to c->s[to] (to <= from), the sentences between one place on, in their order. */
static void move_sentence(compose *c, int from, int to)
{
    sentence x = c->s[from];
    memmove(&c->s[to + 1], &c->s[to], (size_t)(from - to) * sizeof *c->s);
    c->s[to] = x;
}

/* The near-best sentences (s sorted by score): those a pick could be, whatever MAX_PICK. */
static int near_best(const compose *c)
{
    int n = 0;
    while (n < c->ns && c->s[n].score >= PICK_MIN_SCORE && c->s[n].score >= c->s[0].score * PICK_SHARE_OF_BEST)
        n++;
    return n;
}

/* What the near-best sentences of passage p cover of the question (coverage, no figure counted). */
static double passage_coverage(const compose *c, int near, int p)
{
    uint32_t hits = 0;
    for (int j = 0; j < near; j++)
        if (c->s[j].passage == p) hits |= c->s[j].hits;
    return coverage(c, hits, false);
}

/* The best sentence's passage may answer too little of the question while another near-best one
 * answers it: "How often should the spark plugs be changed on the Seawind 220?" scores highest on "The
 * gimbal bearing ... is greased at every 100-hour service ... needs replacement" (the interval's cue and a
 * synonym of "changed"), which says nothing of spark plugs: the answer was "could not find", though "it
 * replaces the six spark plugs" was a near-best sentence. So when the best sentence's
 * passage covers less than COVER_MIN, the passage whose near-best sentences cover the most (at least
 * COVER_MIN) leads: its sentence that covers most alone first, then its other near-best ones, up to
 * MAX_PICK. Returns the picks so led, or 0 when the best passage covers enough or none does (s unchanged). */
static int lead_by_coverage(compose *c)
{
    int near = near_best(c);
    if (!near || passage_coverage(c, near, c->s[0].passage) >= COVER_MIN) return 0;
    int p = -1;
    double best = COVER_MIN;
    for (int i = 1; i < near; i++) {
        double cov = passage_coverage(c, near, c->s[i].passage);
        if (cov > best || (p < 0 && cov >= best)) p = c->s[i].passage, best = cov;
    }
    if (p < 0) return 0;
    int lead = -1;
    double lead_cov = -1;
    for (int i = 0; i < near; i++) {
        double cov = c->s[i].passage == p ? coverage(c, c->s[i].hits, false) : -1;
        if (cov > lead_cov) lead = i, lead_cov = cov;
    }
    move_sentence(c, lead, 0);
    int pick = 1;
    for (int i = 1; i < near && pick < MAX_PICK; i++)
        if (c->s[i].passage == p) move_sentence(c, i, pick++);
    return pick;
}

static bool answer_sentences(compose *c)
{
    qsort(c->s, (size_t)c->ns, sizeof *c->s, cmp_score);
    double best = c->ns ? c->s[0].score : 0;
    int pick = 0;
    while (pick < c->ns && pick < MAX_PICK && c->s[pick].score >= PICK_MIN_SCORE &&
           c->s[pick].score >= best * PICK_SHARE_OF_BEST)
        pick++;
    if (!pick) return false;
    int led = lead_by_coverage(c);
    if (led)
        pick = led;
    else if (picks_have_figure(c, 1)) { /* the figure asked for is found: what follows it comes from its passage */
        int k = 1;
        for (int i = 1; i < pick; i++)
            if (c->s[i].passage == c->s[0].passage) {
                sentence tmp = c->s[k];
                c->s[k++] = c->s[i];
                c->s[i] = tmp;
            }
        pick = k;
    }
    int opening = opening_of_guide(c);
    if (opening) pick = opening;
    else if (c->q.howto) pick = add_instruction(c, pick);
    /* what the answer covers: the sentences from the best one's passage (a coherent answer) */
    uint32_t hits = 0;
    for (int i = 0; i < pick; i++)
        if (c->s[i].passage == c->s[0].passage) hits |= c->s[i].hits;
    bool fig = picks_have_figure(c, pick);
    double cov = coverage(c, hits, fig);
    if (cov < COVER_MIN) return false;
    if (answer_which_boat(c) || answer_which_model(c)) return true;
    c->conf = sentences_confidence(c, cov, fig);
    /* "does the warranty cover running aground?" answered by the exclusion */
    char buf[MAX_SENTENCE_BYTES];
    bool excluded = c->q.coverage && yes_no_question(c->typed) && item_hit(c, &c->s[0]) &&
                    chat_question_has_any(sentence_text(&c->s[0], buf), NEGATION);
    write_sentences(c, pick, excluded ? "No. " : agent_intro(c), excluded);
    return true;
}

static void answer_dont_know(compose *c)
{
    chat_buf_reset(&c->out);
    chat_buf_puts(&c->out, NOT_FOUND);
    c->conf = CONF_NONE;
}

/* ---- one composition ---- */

/* The message as the user typed it: the last user message of the prompt, else the question. */
static const char *typed_message(const chat_llm_request *req)
{
    for (size_t i = req->n_messages; req->messages && i > 0; i--)
        if (!strcmp(req->messages[i - 1].role, "user") && req->messages[i - 1].content) return req->messages[i - 1].content;
    return req->question ? req->question : "";
}

static int compose_init(compose *c, const chat_llm_request *req)
{
    memset(c, 0, sizeof *c);
    chat_buf_init(&c->out);
    c->req = req;
    c->agent = chat_agent_find(req->agent);
    c->kb = req->passages;
    c->np = c->kb ? (c->kb->n < MAX_PASSAGES ? c->kb->n : MAX_PASSAGES) : 0;
    c->text = req->question ? req->question : "";
    c->typed = typed_message(req);
    c->cust = req->customer;
    chat_question_parse(c->typed, &c->tq);
    if (strcmp(c->text, c->typed)) chat_question_parse(c->text, &c->q);
    else c->q = c->tq;
    if (!c->tq.elliptical) { /* what the pipeline added to the message names models, it asks nothing */
        c->q.attr = c->tq.attr, c->q.extreme = c->tq.extreme, c->q.compare = c->tq.compare;
        c->q.coverage = c->tq.coverage, c->q.tasks = c->tq.tasks, c->q.howto = c->tq.howto;
    }
    c->has_code = chat_kb_find_fault_code(c->text, c->code);
    qctx x = {c, false};
    each_word(c->typed, strlen(c->typed), question_word, &x);
    x.added = true;
    each_word(c->text, strlen(c->text), question_word, &x);
    for (int k = 0; k < c->nt; k++) c->by_first[(unsigned char)c->t[k].w[0]] |= 1u << k;
    find_targets(c);
    c->s = malloc(MAX_SENTENCES * sizeof *c->s); /* split_sentences fills each one it uses */
    return c->s ? 0 : CHAT_ENOMEM;
}

static void compose_answer(compose *c)
{
    if (answer_greeting(c) || answer_records(c) || answer_unknown_model(c)) return;
    score_sentences(c);
    if (answer_code(c) || answer_compare(c) || answer_tasks(c) || answer_sentences(c)) return;
    c->tq.small_talk = c->tq.small_talk && c->tq.attr == CHAT_ATTR_NONE;
    if (c->tq.small_talk && answer_greeting(c)) return;
    answer_dont_know(c);
}

/* ---- the answer of the turn, composed once ----
 *
 * The pipeline asks for the confidence of the request it then hands to the provider, so the answer is
 * composed there and travels with the request (prepared_answer): the generation, on the worker's
 * generator thread or wherever it runs, streams it as it is. Composing is a pure function of the
 * request, so the copy is the answer the provider would have composed; a caller that changes the
 * request afterwards must drop it. */

/* Composes req's answer into c (c->out, c->conf). Returns 0 or CHAT_ENOMEM. */
static int compose_request(compose *c, const chat_llm_request *req)
{
    int rc = compose_init(c, req);
    if (!rc) compose_answer(c);
    free(c->s);
    c->s = NULL;
    if (!rc && !c->out.data) rc = CHAT_ENOMEM;
    return rc;
}

char *chat_extractive_compose(const chat_llm_request *req)
{
    if (req->prepared_answer) return strdup(req->prepared_answer);
    compose c;
    if (compose_request(&c, req)) {
        chat_buf_free(&c.out);
        return NULL;
    }
    return chat_buf_take(&c.out);
}

double chat_extractive_confidence(const chat_llm_request *req, char **answer)
{
    compose c;
    double conf = 0;
    if (answer) *answer = NULL;
    if (!compose_request(&c, req)) {
        conf = c.conf;
        if (answer) *answer = chat_buf_take(&c.out);
    }
    chat_buf_free(&c.out);
    return conf;
}

/* ---- the provider: the answer composed at the start, released by chat_paced ---- */

#define PROMPT_BYTES_PER_TOKEN 4 /* a model's token is about 4 bytes of English text */

typedef struct ext_state {
    int delay_ms; /* cfg->token_delay_ms */
} ext_state;

static int ext_open(const chat_config *cfg, void **state, char *err, size_t errlen)
{
    ext_state *s = malloc(sizeof *s);
    if (!s) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    s->delay_ms = cfg->token_delay_ms > 0 ? cfg->token_delay_ms : 0;
    *state = s;
    return 0;
}

static void ext_close(void *state) { free(state); }

static bool ext_instant(const void *state) { return ((const ext_state *)state)->delay_ms == 0; }

/* Where each token of text ends, a token being a word with the whitespace that follows it (caller
 * frees; NULL when out of memory). */
static size_t *ext_split(const char *text, size_t *n)
{
    size_t cap = 1;
    for (const char *c = text; *c; c++) cap += isspace((unsigned char)*c) != 0;
    size_t *ends = malloc(cap * sizeof *ends);
    if (!ends) return NULL;
    *n = 0;
    for (const char *e = text; *e;) {
        while (*e && !isspace((unsigned char)*e)) e++;
        while (*e && isspace((unsigned char)*e)) e++;
        ends[(*n)++] = (size_t)(e - text);
    }
    return ends;
}

static int ext_gen_new(void *state, void *loop_state, const chat_llm_request *req, const chat_llm_gen_ctx *ctx,
                       void **gen, char *err, size_t errlen)
{
    const ext_state *s = state;
    *gen = NULL;
    if (!req) return chat_fail(err, errlen, CHAT_EINVAL, "invalid LLM request");
    size_t n = 0;
    char *text = chat_extractive_compose(req);
    size_t *ends = text ? ext_split(text, &n) : NULL;
    if (!ends) {
        free(text);
        return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    }
    /* the prompt it read: the question and the passages a composition reads */
    size_t prompt_bytes = req->question ? strlen(req->question) : 0;
    if (req->passages)
        for (size_t i = 0; i < req->passages->n && i < MAX_PASSAGES; i++)
            prompt_bytes += strlen(req->passages->items[i].body);
    return chat_paced_new(ctx, text, ends, n, s->delay_ms, req->max_tokens,
                          (int)(prompt_bytes / PROMPT_BYTES_PER_TOKEN) + 1, gen, err, errlen);
}

CHAT_LLM_PROVIDER_DEFINE(chat_extractive_provider, "extractive", ext, chat_llm_loop_none, chat_paced);
