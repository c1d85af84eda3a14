/* The knowledge base: full-text retrieval over kb_documents (or its derived copy kb_search, below), and
 * the markdown importer.
 *
 * Chat text is not a query language: the question is reduced to plain word tokens (letters and digits,
 * any script) before it reaches MATCH ... AGAINST, always as a bound parameter, so operators, quotes and
 * invalid UTF-8 can only change what is found, never cause an SQL error. */
#ifndef CHAT_KB_H
#define CHAT_KB_H

#include <stdbool.h>
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

/* Which words are common, from a sample of the passages. With it, chat_kb_search drops the words that
 * occur in a large share of a large knowledge base ("engine" in half of 100,000 passages): they barely
 * change the ranking but make the server score every passage that contains them. Below 1,000 passages
 * nothing is dropped. The sample (about 4,096 passages spread over the table, every passage of a smaller
 * one) is read on the caller's connection at the first search and every 10 minutes, or when the
 * passage count moved by a quarter; a search itself runs no statement for its words. Thread-safe: the
 * threads of a process share one, so the sample is read once per process, not once per connection
 * (outside its lock; while one thread reads a new sample the others use the old one). */
typedef struct chat_kb_stats chat_kb_stats;
/* common_pct: a word in more than this percentage of the passages is dropped (0 = never). */
chat_kb_stats *chat_kb_stats_new(int common_pct);
void chat_kb_stats_free(chat_kb_stats *s);

typedef struct chat_kb_query {
    const char *question;
    const char *agent;      /* favour this agent's passages and agent-NULL ones over other agents' (the
                             * agent's chat_agent_kb_filter); NULL = every passage alike */
    const char *model_id;   /* favour passages of this model over other models'; NULL = none */
    const char *fault_code; /* e.g. "E42": the passages naming it first; NULL = none */
    size_t k;               /* max passages, clamped to 1..50 */
    chat_kb_stats *stats;   /* NULL = search with every word */
    chat_db *sync_db;       /* search the derived table kb_search (migration 006), brought up to date on
                             * this connection (the primary: it writes); NULL = search kb_documents */
} chat_kb_query;

/* Searches; out is filled (possibly with n = 0), best first. Caller clears out with chat_kb_result_clear
 * (also after an error: out is then empty). Returns 0, CHAT_EDB or CHAT_ENOMEM. Any thread, with the
 * caller's connection. */
int chat_kb_search(chat_db *db, const chat_kb_query *q, chat_kb_result *out, char *err, size_t errlen);
void chat_kb_result_clear(chat_kb_result *r);

/* The derived search table. kb_search is an Aria copy of kb_documents' searchable columns; triggers
 * write each edited passage's id into kb_changes in the editor's own transaction. A search with sync_db
 * reads kb_search and, in the same statement, whether kb_changes has a row; when it has, the copy is
 * behind a commit, so that search brings up to CHAT_KB_SYNC_BATCH changes over (chat_kb_sync, one
 * batch) and answers from kb_documents itself. So a committed edit is seen by the next question and a
 * rolled-back one never, as with a direct search.
 *
 * chat_kb_sync copies up to max_batches batches of `batch` committed changes, each in its own
 * transaction, and returns how many change rows it took (0: the copy is up to date), CHAT_ECONFLICT when another
 * connection is copying (never waits for it), or CHAT_EDB. Any thread, with the caller's connection
 * outside a transaction. Needs INSERT and DELETE on kb_search and kb_changes.
 *
 * chat_kb_derived_usable says whether this server can keep the copy: not a Galera node (Galera does
 * not replicate Aria, and one node's copier would take every node's change rows), and Aria's full-text
 * settings index short words as InnoDB's do (ft_min_word_len <= 2, no built-in stopword list). 1 yes,
 * 0 no (why in err), or CHAT_EDB (also when migration 006 is missing: the table kb_changes). */
#define CHAT_KB_SYNC_BATCH 64 /* change rows a search copies when it finds the copy behind */
int chat_kb_sync(chat_db *db, int batch, int max_batches, char *err, size_t errlen);
/* Copies every committed change (after a bulk load: an import, chat-kbgen), waiting up to 30 s for
 * another copier. 0 or a negative code. */
int chat_kb_sync_all(chat_db *db, char *err, size_t errlen);
int chat_kb_derived_usable(chat_db *db, char *err, size_t errlen);

/* Turns free text into the boolean-safe search string used by chat_kb_search: lower-case word tokens,
 * without English function words, lone letters, repeats and words over 84 bytes, at most max_terms of
 * them (0 or above 48: 48) ("c++ E42 (((" -> "e42"). Caller frees; NULL when out of memory. Exposed for
 * tests and `chat-kb search`, which prints it. */
char *chat_kb_sanitize(const char *text, size_t max_terms);

/* Finds the first fault code (a letter E/P/F followed by 1-4 digits, or by a hyphen and 1-4 digits, as a
 * whole word, any case: "E42", "e-42", "P0300") in text; writes it upper-cased without the hyphen into
 * out ("E42"). Returns 1 when found, 0 otherwise. */
int chat_kb_find_fault_code(const char *text, char out[16]);

/* Import statistics. */
typedef struct chat_kb_import_stats {
    int files;
    int passages;
} chat_kb_import_stats;

/* Imports one markdown text as source `source`: front matter (title, agent, model) then one passage per
 * "## " section. Replaces the source's rows. Without an agent in the front matter, the agent table's
 * kb_dir/kb_file rules decide from the source's path (chat_agent.h); "agent: any", or an agent that owns
 * no passages, stores NULL (every agent's). Refuses (CHAT_EINVAL, before touching a row) invalid UTF-8,
 * an unknown agent, a source name over 255 bytes or a text over 16 MB; else 0 or CHAT_EDB. stats (may
 * be NULL) counts the file and its passages. chat_kb_import_dir's step per file, public on purpose for
 * a text that is no file (the tests import texts built in memory). */
int chat_kb_import_text(chat_db *db, const char *source, const char *text, size_t len, chat_kb_import_stats *stats,
                        char *err, size_t errlen);
/* Imports every *.md below dir (recursively, in name order, README.md files left out); source = path
 * relative to dir. Stops at the first failure (each file is one transaction: the files before it stay
 * imported). Ends with OPTIMIZE TABLE kb_documents. */
int chat_kb_import_dir(chat_db *db, const char *dir, chat_kb_import_stats *stats, char *err, size_t errlen);

/* The server's full-text settings, judged: short tokens ("V6", "E42") are findable only when InnoDB
 * indexes words of 1-2 characters and drops none through its built-in stopword list. */
typedef struct chat_kb_fulltext {
    bool ok;           /* nothing below to change */
    char setting[64];  /* the exact setting to change, "innodb_ft_min_token_size=1"; "" when ok */
    char problem[384]; /* why, with the server's current value; "" when ok */
} chat_kb_fulltext;

/* Judges the values of innodb_ft_min_token_size and innodb_ft_enable_stopword (default_stopwords: that
 * setting on with no innodb_ft_server_stopword_table of the admin's own). Pure; exposed for tests. */
void chat_kb_fulltext_judge(long long min_token_size, bool default_stopwords, chat_kb_fulltext *out);
/* Reads the server's global values on db and judges them. 0 or CHAT_EDB (out then says ok). Needs no
 * privilege (the services' least-privilege account runs it). Any thread, with the caller's connection. */
int chat_kb_fulltext_check(chat_db *db, chat_kb_fulltext *out, char *err, size_t errlen);
/* At a process's start: logs a warning naming the setting to change when the check finds a problem
 * (who names the process in the line); a check that cannot run is logged at debug level and skipped
 * (the database may come later). */
void chat_kb_fulltext_warn(chat_db *db, const char *who);

#endif
