/* The agent table (chat_agent.h says what each column means) and its look-ups.
 *
 * The table is expanded from CHAT_AGENT_MAP once, here, so every consumer reads the same rows. Look-ups
 * are linear: there are a handful of agents, and a classification already costs microseconds. */
#include "chat_agent.h"

#include <stddef.h>
#include <string.h>

const chat_agent chat_agents[CHAT_AGENT_COUNT] = {
#define CHAT_AGENT_X_ROW(ID, name, rank, routing, kb, kb_dir, kb_file, intro) \
    [CHAT_AGENT_ID_##ID] = {CHAT_AGENT_ID_##ID, name, rank, routing, kb, kb_dir, kb_file, intro},
    CHAT_AGENT_MAP(CHAT_AGENT_X_ROW)
#undef CHAT_AGENT_X_ROW
};

const chat_agent *chat_agent_find(const char *name)
{
    for (int i = 0; name && i < CHAT_AGENT_COUNT; i++)
        if (!strcmp(name, chat_agents[i].name)) return &chat_agents[i];
    return NULL;
}

const chat_agent *chat_agent_fallback(void)
{
    for (int i = 0; i < CHAT_AGENT_COUNT; i++)
        if (chat_agents[i].routing & CHAT_AGENT_FALLBACK) return &chat_agents[i];
    return &chat_agents[CHAT_AGENT_COUNT - 1]; /* unreachable with a valid table (test_agent checks) */
}

const chat_agent *chat_agent_by_rank(int rank)
{
    for (int i = 0; i < CHAT_AGENT_COUNT; i++)
        if (chat_agents[i].rank == rank) return &chat_agents[i];
    return NULL;
}

const char *chat_agent_kb_filter(const chat_agent *a) { return a && a->kb == CHAT_AGENT_KB_OWN ? a->name : NULL; }
