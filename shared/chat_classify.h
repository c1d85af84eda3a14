/* The classifier that routes a message to one of the agents of chat_agent.h.
 *
 * Deterministic and explainable: each agent's score is the sum of the weights of its terms found in the
 * normalised message (words, prefixes "impell*", phrases "won't start"), plus the built-in signals its
 * table row asks for (fault-code shapes such as E42, model mentions). Confidence is the winner's share
 * of the total score, damped when the winning score is small, so a message with no signal goes to the
 * fallback agent with a low confidence. The terms live in the classifier_terms table so admins can tune
 * routing with SQL; sql/classifier_terms.sql seeds it. */
#ifndef CHAT_CLASSIFY_H
#define CHAT_CLASSIFY_H

#include <stddef.h>

#include "chat_agent.h"
#include "chat_db.h"

typedef struct chat_route {
    const char *agent;   /* the winner's chat_agents[] name (static) */
    double confidence;   /* 0.05..0.99 */
    double scores[CHAT_AGENT_COUNT]; /* per agent, indexed by chat_agent_id */
    char explain[256];   /* the terms that decided, for the pipeline's debug log */
} chat_route;

typedef struct chat_classifier chat_classifier;

/* An empty classifier (every message goes to the fallback agent until terms are added); NULL when out
 * of memory. free accepts NULL. */
chat_classifier *chat_classifier_new(void);
void chat_classifier_free(chat_classifier *c);
/* agent: a chat_agents[] name; term: a word, a prefix ending in '*' or a phrase of up to 8 words, any
 * case. The same normal form for the same agent again replaces its weight. Returns 0, CHAT_EINVAL or
 * CHAT_ENOMEM. A writer: not concurrently with chat_classify or another writer. Public on purpose: a
 * vocabulary without a database (chat_classifier_load_db adds each row with it; tests build small ones). */
int chat_classifier_add_term(chat_classifier *c, const char *agent, const char *term, double weight);
/* Replaces all terms with the classifier_terms table's (malformed rows skipped) and the model numbers
 * with the models table's. On failure the previous vocabulary stays. A writer, like add_term. */
int chat_classifier_load_db(chat_classifier *c, chat_db *db, char *err, size_t errlen);
/* The number of distinct terms (0 for NULL). Public on purpose: what a load kept (malformed rows skipped,
 * one normal form once) shows nowhere else; the loader's tests check it. */
size_t chat_classifier_term_count(const chat_classifier *c);
/* Routes text (NULL: ""; only its first 16 KB are read) with c (NULL: no terms). Pure function of the
 * terms and text; thread-safe for concurrent readers. */
void chat_classify(const chat_classifier *c, const char *text, chat_route *out);

#endif
