/* The extractive provider: answers from the knowledge base itself when no language model is configured.
 *
 * It is deliberately simple and honest: split the top passages into sentences, score each sentence by
 * the question's content words it contains (with a few domain synonyms: "power" finds "hp" and "kW"),
 * favour sentences with figures for spec questions (and sentences about the model in question, whose
 * name the pipeline adds to a question that names none), then keep the best few in document order,
 * opened by the agent's intro from the agent table. The answer says where it comes from and, when
 * nothing scores, says it does not know instead of guessing; small talk gets a greeting from the
 * fallback agent. The tuning constants below say how each score is weighed.
 *
 * Output streams word by word. The whole answer is composed when the generation starts (it is cheap and
 * needs the request, which the caller may free at once) and cut into tokens (a word with the whitespace
 * after it); chat_paced then releases them on the caller's chat_llm_loop, one per token_delay_ms on the
 * loop's timers (all at once on the loop's next run with no delay), so one thread paces any number of
 * answers without sleeping. */
#include "chat_extractive.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_agent.h"
#include "chat_common.h"
#include "chat_llm_provider.h"
#include "chat_paced.h"
#include "chat_util.h"

#define MAX_TERMS 32
#define MAX_SENTENCES 256
#define MAX_PASSAGES 4 /* the retrieval's best passages are read; the rest rarely hold a better sentence */

/* Sentence choice. A sentence scores 1 per question word it contains and SYNONYM_WEIGHT per synonym;
 * a synonym ("kw" for "power") is weaker evidence than the word asked. */
#define SYNONYM_WEIGHT 0.6
/* A sentence with a figure, for a question that asks for one ("how much", "torque"): 0.75 lets it beat a
 * sentence with one more question word but no number. */
#define FIGURE_BONUS 0.75
/* Retrieval's order counts: PASSAGE_RANK_BONUS / (1 + the passage's rank), less ORDER_PENALTY per
 * sentence into the passage (openings state the main fact). Small: they only break near-ties. */
#define PASSAGE_RANK_BONUS 0.5
#define ORDER_PENALTY 0.02
/* A picked sentence contains at least one question word's worth (PICK_MIN_SCORE) and scores at least
 * PICK_SHARE_OF_BEST of the best one, so a weak fragment does not trail a good answer. */
#define PICK_MIN_SCORE 1.0
#define PICK_SHARE_OF_BEST 0.7
/* Sentences picked: MAX_PICK in general; a fault code's opening (meaning, symptoms, first steps) has
 * up to FAULT_OPENING_SENTENCES; next to an appointment, one supporting sentence at most. */
#define MAX_PICK 3
#define MAX_PICK_FAULT_CODE 4
#define MAX_PICK_APPOINTMENT 1
#define FAULT_OPENING_SENTENCES 4
/* The fault passage's opening sentences score FAULT_OPENING_SCORE less their position: above any pick
 * threshold, and in document order. */
#define FAULT_OPENING_SCORE 10.0
#define SENTENCE_MIN_BYTES 12  /* shorter fragments ("See below.") are not sentences worth quoting */
#define SMALL_TALK_MAX_BYTES 60 /* a longer message is a question, whatever greeting it opens with */

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
    double weight;
} term;

/* Question word -> words that state the answer in spec sheets. */
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
    {"service", "hours interval"},
    {"open", "hours opening"},
};

static const char *const STOP[] = {
    "a", "about", "an", "and", "any", "are", "as", "at", "be", "boat", "but", "by", "can", "could", "do",
    "does", "for", "from", "get", "give", "had", "has", "have", "hi", "how", "i", "if", "in", "is", "it",
    "its", "know", "me", "mean", "much", "my", "need", "of", "on", "or", "our", "please", "seawind", "should",
    "so", "tell", "than", "that", "the", "their", "there", "this", "to", "us", "was", "we", "what", "whats",
    "when", "where", "which", "who", "why", "will", "with", "would", "you", "your",
};

static bool is_stop(const char *w)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(STOP); i++)
        if (!strcmp(STOP[i], w)) return true;
    return false;
}

static void add_term(term *t, int *n, const char *w, size_t len, double weight)
{
    if (*n >= MAX_TERMS || len == 0 || len >= sizeof t[0].w) return;
    for (int i = 0; i < *n; i++)
        if (strlen(t[i].w) == len && !strncmp(t[i].w, w, len)) return;
    memcpy(t[*n].w, w, len);
    t[*n].w[len] = '\0';
    t[*n].weight = weight;
    (*n)++;
}

/* Lower-cased words of s, one callback each. */
static void each_word(const char *s, void (*fn)(void *, const char *, size_t), void *ud)
{
    char w[48];
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s;; p++) {
        if (*p && (isalnum(*p) || *p >= 0x80)) {
            if (n < sizeof w - 1) w[n++] = (char)tolower(*p);
            continue;
        }
        if (n) fn(ud, w, n);
        n = 0;
        if (!*p) break;
    }
}

typedef struct qctx {
    term *t;
    int n;
} qctx;

static void question_word(void *ud, const char *w, size_t len)
{
    qctx *q = ud;
    char word[48];
    memcpy(word, w, len);
    word[len] = '\0';
    if (is_stop(word) || (len == 1 && !isdigit((unsigned char)w[0]))) return;
    add_term(q->t, &q->n, w, len, 1.0);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(SYNONYMS); i++) {
        if (strcmp(SYNONYMS[i].word, word)) continue;
        const char *e = SYNONYMS[i].expands;
        while (*e) {
            const char *sp = strchr(e, ' ');
            size_t l = sp ? (size_t)(sp - e) : strlen(e);
            add_term(q->t, &q->n, e, l, SYNONYM_WEIGHT);
            e += l + (sp ? 1 : 0);
        }
    }
}

typedef struct sentence {
    const char *s;
    size_t len;
    int passage;
    int order;
    double score;
    bool other_code; /* names a fault code other than the one asked about */
} sentence;

typedef struct sctx {
    const term *t;
    int n;
    bool seen[MAX_TERMS];
    double score;
    bool has_number;
} sctx;

static void sentence_word(void *ud, const char *w, size_t len)
{
    sctx *c = ud;
    if (isdigit((unsigned char)w[0])) c->has_number = true;
    for (int i = 0; i < c->n; i++) {
        size_t tl = strlen(c->t[i].w);
        /* prefix match on stems: "overheats" matches "overheat", "engines" matches "engine" */
        bool hit = tl == len ? !strncmp(c->t[i].w, w, len)
                             : (tl >= 4 && len > tl && len <= tl + 3 && !strncmp(c->t[i].w, w, tl));
        if (hit && !c->seen[i]) {
            c->seen[i] = true;
            c->score += c->t[i].weight;
        }
    }
}

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
                out[n].s = start;
                out[n].len = (size_t)(e - start);
                out[n].passage = passage;
                out[n].order = order++;
                out[n].score = 0;
                n++;
            }
            if (!*p) break;
            start = p + 1;
        }
        p++;
    }
    return n;
}

static bool asks_for_figure(const char *q)
{
    static const char *const cues[] = {"how much", "how many", "how long", "how heavy", "how fast", "how big",
                                       "what is the", "what's the", "power", "torque", "capacity", "speed",
                                       "length", "weight", "beam", "draft", "size", "hp", "range"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cues); i++)
        if (chat_strcasestr(q, cues[i])) return true;
    return false;
}

static bool asks_for_appointment(const char *q)
{
    static const char *const cues[] = {"appointment", "next service", "booked", "scheduled", "when is my",
                                       "my service", "my next"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cues); i++)
        if (chat_strcasestr(q, cues[i])) return true;
    return false;
}

/* Greetings, thanks and "who are you": short messages with no question about the boats. */
static bool is_small_talk(const char *q)
{
    static const char *const cues[] = {"hello", "hi", "hey", "thanks", "thank you", "good morning",
                                       "good evening", "who are you", "what can you do", "help"};
    if (strlen(q) > SMALL_TALK_MAX_BYTES) return false;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cues); i++) {
        const char *h = chat_strcasestr(q, cues[i]);
        size_t n = strlen(cues[i]);
        if (h && (h == q || !isalnum((unsigned char)h[-1])) && !isalnum((unsigned char)h[n])) return true;
    }
    return false;
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

/* The sentences of the first MAX_PASSAGES passages, in passage then document order. */
static int collect_sentences(const chat_llm_request *req, sentence *s, size_t *np)
{
    int ns = 0;
    *np = req->passages ? req->passages->n : 0;
    if (*np > MAX_PASSAGES) *np = MAX_PASSAGES;
    for (size_t i = 0; i < *np; i++) ns = split_sentences(req->passages->items[i].body, (int)i, s, ns, MAX_SENTENCES);
    return ns;
}

/* Scores each sentence by the question's words it contains (code: the fault code asked about, or NULL). */
static void score_sentences(sentence *s, int ns, const term *terms, int nterms, const char *question, const char *code)
{
    bool figure = asks_for_figure(question);
    for (int i = 0; i < ns; i++) {
        char tmp[2048];
        size_t l = s[i].len < sizeof tmp - 1 ? s[i].len : sizeof tmp - 1;
        memcpy(tmp, s[i].s, l);
        tmp[l] = '\0';
        sctx c = {terms, nterms, {false}, 0, false};
        each_word(tmp, sentence_word, &c);
        double score = c.score;
        /* a question about E42 is not answered by the sentence about E63 */
        char other[16];
        s[i].other_code = code && chat_kb_find_fault_code(tmp, other) && strcmp(other, code);
        if (s[i].other_code) score = 0;
        if (score > 0 && figure && c.has_number) score += FIGURE_BONUS;
        if (score > 0) score += PASSAGE_RANK_BONUS / (1 + s[i].passage) - ORDER_PENALTY * s[i].order;
        s[i].score = score;
    }
    qsort(s, (size_t)ns, sizeof *s, cmp_score);
}

/* The passage about the fault code asked for is the answer: its opening sentences in order (meaning,
 * symptoms, first steps) read better than the best-scoring fragments. Keeps only those; returns how many. */
static int keep_fault_opening(sentence *s, int ns)
{
    int k = 0;
    for (int i = 0; i < ns; i++)
        if (s[i].passage == 0 && s[i].order < FAULT_OPENING_SENTENCES && !s[i].other_code) s[k++] = s[i];
    for (int i = 0; i < k; i++) s[i].score = FAULT_OPENING_SCORE - s[i].order;
    qsort(s, (size_t)k, sizeof *s, cmp_score);
    return k;
}

/* How many of the best sentences (sorted by score) answer: up to max, each one scoring at least
 * PICK_MIN_SCORE and PICK_SHARE_OF_BEST of the best. */
static int pick_count(const sentence *s, int ns, int max)
{
    double best = ns ? s[0].score : 0;
    int pick = 0;
    while (pick < ns && pick < max && s[pick].score >= PICK_MIN_SCORE && s[pick].score >= best * PICK_SHARE_OF_BEST)
        pick++;
    return pick;
}

/* "Here is what I have on file for you. " and the upcoming appointment, up to the end of its sentence. */
static void write_appointment(chat_buf *out, const char *appt, bool more)
{
    const char *end = strstr(appt, ". ");
    const char *nl = strchr(appt, '\n');
    if (!end || (nl && nl < end)) end = nl;
    size_t l = end ? (size_t)(end - appt) : strlen(appt);
    chat_buf_puts(out, "Here is what I have on file for you. ");
    chat_buf_append(out, appt, l);
    if (l && appt[l - 1] != '.') chat_buf_puts(out, ".");
    if (more) chat_buf_puts(out, "\n\n");
}

/* The agent's intro, the picked sentences (in document order) and each passage used, cited once. */
static void write_sentences(chat_buf *out, const chat_llm_request *req, const chat_agent *agent, const sentence *s,
                            int pick)
{
    chat_buf_puts(out, agent ? agent->intro : "");
    for (int i = 0; i < pick; i++) {
        if (i) chat_buf_puts(out, " ");
        chat_buf_append(out, s[i].s, s[i].len);
    }
    chat_buf_puts(out, "\n\nSources: ");
    int cited = 0;
    for (int i = 0; i < pick; i++) {
        bool dup = false;
        for (int j = 0; j < i; j++)
            dup |= s[j].passage == s[i].passage ||
                   !strcmp(req->passages->items[s[j].passage].source, req->passages->items[s[i].passage].source);
        if (dup) continue;
        chat_buf_printf(out, "%s%s", cited++ ? ", " : "", req->passages->items[s[i].passage].source);
    }
    chat_buf_puts(out, ".");
}

char *chat_extractive_compose(const chat_llm_request *req)
{
    const char *question = req->question ? req->question : "";
    const chat_agent *agent = chat_agent_find(req->agent); /* NULL: no agent, or one the table does not know */
    term terms[MAX_TERMS];
    qctx q = {terms, 0};
    each_word(question, question_word, &q);

    /* The customer's appointments answer "when is my next service" better than any document. */
    const char *appt = NULL;
    if (req->customer_context && asks_for_appointment(question))
        appt = chat_strcasestr(req->customer_context, "Upcoming appointment");

    sentence *s = calloc(MAX_SENTENCES, sizeof *s);
    if (!s) return NULL;
    size_t np;
    int ns = collect_sentences(req, s, &np);
    char code[16];
    bool has_code = chat_kb_find_fault_code(question, code);
    score_sentences(s, ns, terms, q.n, question, has_code ? code : NULL);
    if (has_code && np && chat_strcasestr(req->passages->items[0].title, code)) ns = keep_fault_opening(s, ns);
    int pick = pick_count(s, ns, appt ? MAX_PICK_APPOINTMENT : has_code ? MAX_PICK_FAULT_CODE : MAX_PICK);
    /* "thanks!" must not be answered with the one passage that happens to contain "thanks": small talk is
     * the fallback agent's */
    bool small_talk = is_small_talk(question);
    if ((!req->agent || (agent && (agent->routing & CHAT_AGENT_FALLBACK))) && small_talk) pick = 0;
    qsort(s, (size_t)pick, sizeof *s, cmp_position);

    chat_buf out;
    chat_buf_init(&out);
    if (appt) write_appointment(&out, appt, pick > 0);
    if (pick) write_sentences(&out, req, agent, s, pick);
    else if (!appt && small_talk) chat_buf_puts(&out, GREETING);
    else if (!appt) chat_buf_puts(&out, NOT_FOUND);
    free(s);
    return chat_buf_take(&out);
}

/* ---- the provider: the answer composed at the start, released by chat_paced ---- */

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
    size_t prompt_bytes = req->question ? strlen(req->question) : 0;
    if (req->passages)
        for (size_t i = 0; i < req->passages->n && i < 4; i++) prompt_bytes += strlen(req->passages->items[i].body);
    return chat_paced_new(ctx, text, ends, n, s->delay_ms, req->max_tokens, (int)(prompt_bytes / 4) + 1, gen, err,
                          errlen);
}

CHAT_LLM_PROVIDER_DEFINE(chat_extractive_provider, "extractive", ext, chat_llm_loop_none, chat_paced);
