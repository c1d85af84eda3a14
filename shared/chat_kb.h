/* The knowledge base: full-text retrieval over kb_documents, and the markdown importer.
 *
 * Chat text is not a query language: the question is reduced to plain word tokens (letters and digits,
 * any script) before it reaches MATCH ... AGAINST, always as a bound parameter, so operators, quotes and
 * invalid UTF-8 can only change what is found, never cause an SQL error. */
#ifndef CHAT_KB_H
#define CHAT_KB_H

#include <stddef.h>

#include "chat_db.h"

typedef struct chat_kb_passage {
    long long id;
    char *source;   /* e.g. "seawind-250/specs.md" */
    char *title;
    char *agent;    /* NULL = any agent */
    char *model_id; /* NULL = not model-specific */
    char *body;
    double score;   /* higher is better; comparable within one result only */
} chat_kb_passage;

typedef struct chat_kb_result {
    chat_kb_passage *items;
    size_t n;
    double top_raw; /* raw relevance of the best hit, for confidence: 0 when nothing matched */
} chat_kb_result;

/* Document frequencies of query words, cached. With it, chat_kb_search drops the words that occur in a
 * large share of a large knowledge base ("engine" in half of 100,000 passages): they barely change the
 * ranking but make the server score every passage that contains them. Below 1,000 passages nothing is
 * dropped. Thread-safe: the threads of a process share one, so a word is counted once per process and
 * not once per connection (the counting is done outside its lock, on the caller's connection). */
typedef struct chat_kb_stats chat_kb_stats;
/* common_pct: a word in more than this percentage of the passages is dropped (0 = never). */
chat_kb_stats *chat_kb_stats_new(int common_pct);
void chat_kb_stats_free(chat_kb_stats *s);

typedef struct chat_kb_query {
    const char *question;
    const char *agent;    /* restrict to this agent's passages plus agent-NULL ones; NULL = all */
    const char *model_id; /* boost passages of this model; NULL = none */
    const char *fault_code; /* e.g. "E42": exact match first; NULL = none */
    size_t k;             /* max passages, 1..50 */
    chat_kb_stats *stats; /* NULL = search with every word */
} chat_kb_query;

/* Searches; out is filled (possibly with n = 0). Caller clears out with chat_kb_result_clear.
 * Returns 0 or CHAT_EDB. */
int chat_kb_search(chat_db *db, const chat_kb_query *q, chat_kb_result *out, char *err, size_t errlen);
void chat_kb_result_clear(chat_kb_result *r);

/* Turns free text into the boolean-safe search string used by chat_kb_search ("c++ E42 (((" -> "c E42").
 * Caller frees. Exposed for tests and `chat-kb search --explain`. */
char *chat_kb_sanitize(const char *text, size_t max_terms);

/* Finds the first fault code (a letter E/P/F followed by 1-4 digits, as a whole word, any case) in text;
 * writes it upper-cased into out. Returns 1 when found, 0 otherwise. */
int chat_kb_find_fault_code(const char *text, char out[16]);

/* Import statistics. */
typedef struct chat_kb_import_stats {
    int files;
    int passages;
} chat_kb_import_stats;

/* Imports one markdown text as source `source`: front matter (title, agent, model) then one passage per
 * "## " section. Replaces the source's rows in one transaction. agent_hint/model_hint (may be NULL)
 * apply when the front matter has none. */
int chat_kb_import_text(chat_db *db, const char *source, const char *text, size_t len, chat_kb_import_stats *stats,
                        char *err, size_t errlen);
/* Imports every *.md below dir (recursively); source = path relative to dir. */
int chat_kb_import_dir(chat_db *db, const char *dir, chat_kb_import_stats *stats, char *err, size_t errlen);

#endif
