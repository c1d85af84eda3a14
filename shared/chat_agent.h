/* The agents a message is routed to, in one table: everything the library keys on an agent's name.
 *
 * Each row is X(ID, name, rank, routing, kb, kb_dir, kb_file, intro):
 *   ID       CHAT_AGENT_ID_<ID>, the row's index: chat_route.scores[] is in row order.
 *   name     the agent's name on the wire (metadata "agent"), in SQL (classifier_terms.agent,
 *            kb_documents.agent) and in knowledge-base front matter ("agent: specs").
 *   rank     the tie-break order of the classifier: of two agents with the same score, the lower rank
 *            wins (the more specific, actionable agent). Ranks are 0..CHAT_AGENT_COUNT-1, each once.
 *   routing  where the agent's routing score comes from: always its classifier_terms rows (agent = name,
 *            seeded by sql/classifier_terms.sql), plus the built-in signals flagged here
 *            (CHAT_AGENT_FAULT_CODES: "E42" in the message; CHAT_AGENT_MODEL_MENTIONS: "seawind 250",
 *            "the 280"). CHAT_AGENT_FALLBACK: the one agent a message without a usable signal goes to;
 *            it answers small talk, and a weak route to it lets a follow-up keep the previous topic.
 *   kb       the retrieval rule: CHAT_AGENT_KB_OWN, the agent owns passages (kb_documents.agent = name)
 *            and retrieval favours them over other agents' (shared passages, agent NULL, count as its
 *            own); CHAT_AGENT_KB_ANY, it owns none and retrieval ranks every passage alike.
 *   kb_dir, kb_file
 *            for a KB_OWN agent, which imported markdown is its own when the front matter names no
 *            agent: a source under this folder ("troubleshooting/") or a file of this name ("specs.md");
 *            NULL for none. Folder rules are tried before file rules.
 *   intro    the extractive answer's opening words in the agent's voice ("" for none).
 *
 * Adding an agent is adding a row, its terms in sql/classifier_terms.sql, and its name in the agent
 * ENUMs of the schema (a migration: classifier_terms.agent always, kb_documents.agent for a KB_OWN
 * agent); tests/unit/test_agent.c checks that the schema accepts every row. The library names no agent
 * itself: it reads the row. */
#ifndef CHAT_AGENT_H
#define CHAT_AGENT_H

#include <stdbool.h>

/* clang-format off */
#define CHAT_AGENT_MAP(X)                                                                                       \
    X(SPECS,           "specs",           2, CHAT_AGENT_MODEL_MENTIONS, CHAT_AGENT_KB_OWN, NULL,               \
      "specs.md",       "Here is what the specification sheet says. ")                                        \
    X(MAINTENANCE,     "maintenance",     1, 0,                         CHAT_AGENT_KB_OWN, NULL,               \
      "maintenance.md", "From our service documentation: ")                                                   \
    X(TROUBLESHOOTING, "troubleshooting", 0, CHAT_AGENT_FAULT_CODES,    CHAT_AGENT_KB_OWN, "troubleshooting/", \
      NULL,             "Here is what our troubleshooting guide says. ")                                      \
    X(GENERAL,         "general",         3, CHAT_AGENT_FALLBACK,       CHAT_AGENT_KB_ANY, NULL,               \
      NULL,             "")
/* clang-format on */

typedef enum chat_agent_id {
#define CHAT_AGENT_X_ID(ID, ...) CHAT_AGENT_ID_##ID,
    CHAT_AGENT_MAP(CHAT_AGENT_X_ID)
#undef CHAT_AGENT_X_ID
    CHAT_AGENT_COUNT
} chat_agent_id;

/* The seeded agents' names, for tests and tools that name one (tests/unit/test_agent.c checks that they
 * are the rows' names). Library code uses the table. */
#define CHAT_AGENT_SPECS "specs"
#define CHAT_AGENT_MAINTENANCE "maintenance"
#define CHAT_AGENT_TROUBLESHOOTING "troubleshooting"
#define CHAT_AGENT_GENERAL "general"

enum { /* chat_agent.routing */
    CHAT_AGENT_FAULT_CODES = 1 << 0,
    CHAT_AGENT_MODEL_MENTIONS = 1 << 1,
    CHAT_AGENT_FALLBACK = 1 << 2,
};

typedef enum chat_agent_kb { CHAT_AGENT_KB_OWN, CHAT_AGENT_KB_ANY } chat_agent_kb;

#define CHAT_AGENT_NAME_MAX 31 /* bytes of a name (front matter is read into a buffer of this size) */

typedef struct chat_agent {
    chat_agent_id id;
    const char *name;
    int rank;
    unsigned routing; /* CHAT_AGENT_FAULT_CODES | CHAT_AGENT_MODEL_MENTIONS | CHAT_AGENT_FALLBACK */
    chat_agent_kb kb;
    const char *kb_dir, *kb_file; /* NULL: no such rule */
    const char *intro;
} chat_agent;

/* The table, indexed by chat_agent_id. Static and read-only: safe from any thread. */
extern const chat_agent chat_agents[CHAT_AGENT_COUNT];

/* The row of that name (exact, case-sensitive), or NULL. */
const chat_agent *chat_agent_find(const char *name);
/* The row with routing CHAT_AGENT_FALLBACK. */
const chat_agent *chat_agent_fallback(void);
/* The row of that tie-break rank (0..CHAT_AGENT_COUNT-1), or NULL. */
const chat_agent *chat_agent_by_rank(int rank);
/* The agent restriction of a retrieval for this agent (chat_kb_query.agent): its name for a KB_OWN
 * agent, NULL (every passage alike) for a KB_ANY one or NULL. */
const char *chat_agent_kb_filter(const chat_agent *a);

#endif
