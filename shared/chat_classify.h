/* The classifier that routes a message to an agent: specs, maintenance, troubleshooting or general.
 *
 * Deterministic and explainable: each agent's score is the sum of the weights of its terms found in the
 * normalised message (words, prefixes "impell*", phrases "won't start"); fault-code shapes (E42) add
 * to troubleshooting. Confidence is the winner's share of the total score, damped when the total is
 * small, so a message with no signal goes to general with a low confidence. The terms live in the
 * classifier_terms table so admins can tune routing with SQL; sql/classifier_terms.sql seeds it. */
#ifndef CHAT_CLASSIFY_H
#define CHAT_CLASSIFY_H

#include <stddef.h>

#include "chat_db.h"

#define CHAT_AGENT_SPECS "specs"
#define CHAT_AGENT_MAINTENANCE "maintenance"
#define CHAT_AGENT_TROUBLESHOOTING "troubleshooting"
#define CHAT_AGENT_GENERAL "general"

typedef struct chat_route {
    const char *agent;   /* one of the CHAT_AGENT_* strings (static) */
    double confidence;   /* 0..1 */
    double scores[4];    /* specs, maintenance, troubleshooting, general */
    char explain[256];   /* the terms that decided, for logs and chat-ask */
} chat_route;

typedef struct chat_classifier chat_classifier;

chat_classifier *chat_classifier_new(void);
void chat_classifier_free(chat_classifier *c);
/* agent must be one of the four; term lower case. Returns 0, CHAT_EINVAL or CHAT_ENOMEM. */
int chat_classifier_add_term(chat_classifier *c, const char *agent, const char *term, double weight);
/* Replaces all terms with the classifier_terms table's. */
int chat_classifier_load_db(chat_classifier *c, chat_db *db, char *err, size_t errlen);
size_t chat_classifier_term_count(const chat_classifier *c);
/* Pure function of the terms and text; thread-safe for concurrent readers. */
void chat_classify(const chat_classifier *c, const char *text, chat_route *out);

#endif
