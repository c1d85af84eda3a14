/* The agent table (shared/chat_agent.h): every row complete and consistent, the schema's agent columns
 * accepting every row, and the code reading the rows rather than names of its own, checked row by row:
 * the classifier (score index, tie-break rank, built-in signals, fallback), retrieval (front-matter and
 * path rules at import, the retrieval rule favouring the agent's passages) and the extractive answer
 * (the intro, small talk for the fallback only, a guide read from its opening for a folder of guides). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_agent.h"
#include "chat_classify.h"
#include "chat_common.h"
#include "chat_extractive.h"
#include "chat_kb.h"
#include "chat_llm.h"
#include "testutil.h"

_Static_assert(sizeof(((chat_route *)0)->scores) / sizeof(double) == CHAT_AGENT_COUNT,
               "chat_route.scores has one entry per agent");

static chat_db *agent_db;

/* A database with the schema only, made on first use (the table's own tests need none); each test adds
 * its rows. */
static chat_db *schema_db(void)
{
    if (!agent_db) agent_db = testutil_db_fresh("agent", TESTUTIL_SCHEMA);
    return agent_db;
}

static int teardown(void **state)
{
    (void)state;
    chat_db_free(agent_db);
    return 0;
}

/* ---- the table itself ------------------------------------------------------------------------------ */

static void test_rows_complete(void **state)
{
    int fallbacks = 0, rank_seen[CHAT_AGENT_COUNT] = {0};
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent *a = &chat_agents[i];
        assert_int_equal(a->id, i);
        assert_non_null(a->name);
        size_t n = strlen(a->name);
        if (n < 1 || n > CHAT_AGENT_NAME_MAX) fail_msg("row %d: name of %zu bytes", i, n);
        for (size_t k = 0; k < n; k++)
            if (!((a->name[k] >= 'a' && a->name[k] <= 'z') || a->name[k] == '_'))
                fail_msg("row %d: '%s' is not a lower-case identifier (SQL ENUM, front matter)", i, a->name);
        for (int j = 0; j < i; j++)
            if (!strcmp(chat_agents[j].name, a->name)) fail_msg("rows %d and %d are both '%s'", j, i, a->name);
        if (a->rank < 0 || a->rank >= CHAT_AGENT_COUNT || rank_seen[a->rank]++)
            fail_msg("%s: rank %d is not one of 0..%d, each once", a->name, a->rank, CHAT_AGENT_COUNT - 1);
        if (a->routing & ~(unsigned)(CHAT_AGENT_FAULT_CODES | CHAT_AGENT_MODEL_MENTIONS | CHAT_AGENT_FALLBACK))
            fail_msg("%s: unknown routing flags %#x", a->name, a->routing);
        fallbacks += (a->routing & CHAT_AGENT_FALLBACK) != 0;
        assert_true(a->kb == CHAT_AGENT_KB_OWN || a->kb == CHAT_AGENT_KB_ANY);
        /* path rules name an owner's passages: a folder ends with '/', a file is markdown */
        if (a->kb == CHAT_AGENT_KB_ANY && (a->kb_dir || a->kb_file))
            fail_msg("%s owns no passages but has path rules", a->name);
        if (a->kb_dir) assert_true(strlen(a->kb_dir) > 1 && a->kb_dir[strlen(a->kb_dir) - 1] == '/');
        if (a->kb_file) assert_true(strlen(a->kb_file) > 3 && !strcmp(a->kb_file + strlen(a->kb_file) - 3, ".md"));
        /* the intro opens the answer: empty, or words ending with a space before the first sentence */
        assert_non_null(a->intro);
        if (a->intro[0] && a->intro[strlen(a->intro) - 1] != ' ')
            fail_msg("%s: intro does not end with a space", a->name);
        if (a->kb == CHAT_AGENT_KB_OWN && !a->intro[0]) fail_msg("%s owns passages but has no voice", a->name);
    }
    assert_int_equal(fallbacks, 1);
    assert_true(chat_agent_fallback()->routing & CHAT_AGENT_FALLBACK);
}

static void test_lookups(void **state)
{
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        assert_ptr_equal(chat_agent_find(chat_agents[i].name), &chat_agents[i]);
        assert_int_equal(chat_agent_by_rank(i)->rank, i);
        const char *filter = chat_agent_kb_filter(&chat_agents[i]);
        if (chat_agents[i].kb == CHAT_AGENT_KB_OWN)
            assert_string_equal(filter, chat_agents[i].name);
        else
            assert_null(filter);
    }
    static const char *const unknown[] = {"", "Specs", "sales", "any", "specs ", "general\n"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(unknown); i++)
        assert_null(chat_agent_find(unknown[i]));
    assert_null(chat_agent_find(NULL));
    assert_null(chat_agent_by_rank(-1));
    assert_null(chat_agent_by_rank(CHAT_AGENT_COUNT));
    assert_null(chat_agent_kb_filter(NULL));
    /* the constants that tests and tools use are the rows' names */
    static const struct {
        const char *constant;
        chat_agent_id id;
    } named[] = {{CHAT_AGENT_SPECS, CHAT_AGENT_ID_SPECS},
                 {CHAT_AGENT_MAINTENANCE, CHAT_AGENT_ID_MAINTENANCE},
                 {CHAT_AGENT_TROUBLESHOOTING, CHAT_AGENT_ID_TROUBLESHOOTING},
                 {CHAT_AGENT_GENERAL, CHAT_AGENT_ID_GENERAL}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(named); i++)
        assert_string_equal(named[i].constant, chat_agents[named[i].id].name);
}

/* ---- the schema ------------------------------------------------------------------------------------ */

static int text_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    snprintf(ud, 512, "%s", v[0] ? v[0] : "");
    return 0;
}

/* The column's ENUM values as "'a','b'" (COLUMN_TYPE without "enum(" and ")"). */
static void enum_values(const char *table, const char *column, char out[512])
{
    chat_db_param p[] = {CHAT_DB_P_STR(table), CHAT_DB_P_STR(column)};
    char err[256];
    out[0] = '\0';
    assert_int_equal(
        chat_db_run(schema_db(),
                    "SELECT SUBSTRING(COLUMN_TYPE, 6, LENGTH(COLUMN_TYPE) - 6) FROM information_schema.columns"
                    " WHERE table_schema = DATABASE() AND table_name = ? AND column_name = ?",
                    p, 2, text_row, out, NULL, NULL, err, sizeof err),
        0);
    assert_true(out[0] == '\'');
}

static bool enum_has(const char *values, const char *name)
{
    char quoted[CHAT_AGENT_NAME_MAX + 3];
    snprintf(quoted, sizeof quoted, "'%s'", name);
    return strstr(values, quoted) != NULL;
}

/* Every row fits the agent columns (a new agent needs a migration, which this catches), and every value
 * the columns allow is a row (an agent removed from the table would still be routable by SQL). */
static void test_schema_accepts_every_agent(void **state)
{
    char terms[512], passages[512];
    enum_values("classifier_terms", "agent", terms);
    enum_values("kb_documents", "agent", passages);
    size_t in_terms = 0, in_passages = 0;
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent *a = &chat_agents[i];
        if (!enum_has(terms, a->name)) fail_msg("classifier_terms.agent (%s) lacks '%s'", terms, a->name);
        in_terms++;
        bool owns = a->kb == CHAT_AGENT_KB_OWN;
        if (enum_has(passages, a->name) != owns)
            fail_msg("kb_documents.agent (%s) %s '%s'", passages, owns ? "lacks" : "should not allow", a->name);
        in_passages += owns;
    }
    size_t n_terms = 1, n_passages = 1; /* values: commas + 1 */
    for (const char *c = terms; *c; c++)
        n_terms += *c == ',';
    for (const char *c = passages; *c; c++)
        n_passages += *c == ',';
    assert_int_equal(n_terms, in_terms);
    assert_int_equal(n_passages, in_passages);
}

/* sql/classifier_terms.sql seeds routing terms for every agent (the fallback too: greetings, warranty). */
static void test_every_agent_has_seeded_terms(void **state)
{
    testutil_sql_file(schema_db(), "sql/classifier_terms.sql");
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        long long n =
            testutil_count(schema_db(), "SELECT COUNT(*) FROM classifier_terms WHERE agent = ?", chat_agents[i].name);
        if (n < 10) fail_msg("%s: %lld seeded terms", chat_agents[i].name, n);
    }
}

/* ---- the classifier -------------------------------------------------------------------------------- */

/* Each row's own term routes to it, scored at its index; the explain names it. */
static void test_classifier_routes_to_each_row(void **state)
{
    chat_classifier *c = chat_classifier_new();
    char term[64];
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        snprintf(term, sizeof term, "zq%sterm", chat_agents[i].name);
        assert_int_equal(chat_classifier_add_term(c, chat_agents[i].name, term, 2.0 + i), 0);
    }
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        chat_route r;
        snprintf(term, sizeof term, "what about zq%sterm", chat_agents[i].name);
        chat_classify(c, term, &r);
        assert_string_equal(r.agent, chat_agents[i].name);
        for (int k = 0; k < CHAT_AGENT_COUNT; k++)
            assert_true(fabs(r.scores[k] - (k == i ? 2.0 + i : 0.0)) < 1e-9);
        assert_int_equal(strncmp(r.explain, chat_agents[i].name, strlen(chat_agents[i].name)), 0);
        assert_int_equal(r.explain[strlen(chat_agents[i].name)], ':');
    }
    assert_int_equal(chat_classifier_add_term(c, "nobody", "zqterm", 1.0), CHAT_EINVAL);
    chat_classifier_free(c);
}

/* Of two agents with the same score, the one of lower rank wins, for every pair. */
static void test_classifier_ties_follow_rank(void **state)
{
    for (int a = 0; a < CHAT_AGENT_COUNT; a++)
        for (int b = 0; b < CHAT_AGENT_COUNT; b++) {
            if (a == b) continue;
            chat_classifier *c = chat_classifier_new();
            assert_int_equal(chat_classifier_add_term(c, chat_agents[a].name, "tied", 2.0), 0);
            assert_int_equal(chat_classifier_add_term(c, chat_agents[b].name, "tied", 2.0), 0);
            chat_route r;
            chat_classify(c, "tied", &r);
            const chat_agent *want = chat_agents[a].rank < chat_agents[b].rank ? &chat_agents[a] : &chat_agents[b];
            if (strcmp(r.agent, want->name))
                fail_msg("%s vs %s: %s won, want %s (rank %d)", chat_agents[a].name, chat_agents[b].name, r.agent,
                         want->name, want->rank);
            chat_classifier_free(c);
        }
}

/* The built-in signals score for the rows that ask for them, and only those; nothing goes to the fallback. */
static void test_classifier_signals_follow_rows(void **state)
{
    static const struct {
        const char *text;
        unsigned flag;
    } cases[] = {{"what does E42 mean", CHAT_AGENT_FAULT_CODES},
                 {"tell me about the seawind 250", CHAT_AGENT_MODEL_MENTIONS}};
    chat_classifier *c = chat_classifier_new(); /* no terms: the signals alone */
    for (size_t k = 0; k < CHAT_ARRAY_LEN(cases); k++) {
        chat_route r;
        chat_classify(c, cases[k].text, &r);
        const chat_agent *best = NULL;
        for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
            bool flagged = chat_agents[i].routing & cases[k].flag;
            if (flagged != (r.scores[i] > 0))
                fail_msg("'%s': %s scored %.2f", cases[k].text, chat_agents[i].name, r.scores[i]);
            if (flagged && (!best || chat_agents[i].rank < best->rank)) best = &chat_agents[i];
        }
        assert_non_null(best);
        assert_string_equal(r.agent, best->name);
    }
    chat_route r;
    chat_classify(c, "", &r);
    assert_string_equal(r.agent, chat_agent_fallback()->name);
    assert_int_equal(strncmp(r.explain, chat_agent_fallback()->name, strlen(chat_agent_fallback()->name)), 0);
    chat_classifier_free(c);
}

/* ---- retrieval ------------------------------------------------------------------------------------- */

static void stored_agent(const char *source, char out[512])
{
    chat_db_param p = CHAT_DB_P_STR(source);
    char err[256];
    snprintf(out, 512, "(no row)");
    assert_int_equal(chat_db_run(schema_db(), "SELECT IFNULL(agent, '(null)') FROM kb_documents WHERE source = ?", &p,
                                 1, text_row, out, NULL, NULL, err, sizeof err),
                     0);
}

static void import_ok(const char *source, const char *text)
{
    char err[256];
    int rc = chat_kb_import_text(schema_db(), source, text, strlen(text), NULL, err, sizeof err);
    if (rc) fail_msg("import %s: %s", source, err);
}

/* The front matter's agent is stored for an owner, NULL (every agent's) otherwise; each path rule gives
 * its agent to a document whose front matter names none. */
static void test_import_follows_rows(void **state)
{
    char source[128], text[256], got[512];
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent *a = &chat_agents[i];
        const char *want = a->kb == CHAT_AGENT_KB_OWN ? a->name : "(null)";
        snprintf(source, sizeof source, "probe/front-%s.md", a->name);
        snprintf(text, sizeof text, "---\ntitle: Probe\nagent: %s\n---\n## Part\nProbe passage for %s.\n", a->name,
                 a->name);
        import_ok(source, text);
        stored_agent(source, got);
        assert_string_equal(got, want);
        if (a->kb_dir) {
            snprintf(source, sizeof source, "%sprobe-%s.md", a->kb_dir, a->name);
            import_ok(source, "## Part\nA passage under the agent's folder.\n");
            stored_agent(source, got);
            assert_string_equal(got, a->name);
        }
        if (a->kb_file) {
            snprintf(source, sizeof source, "probe-%s/%s", a->name, a->kb_file);
            import_ok(source, "## Part\nA passage in the agent's file.\n");
            stored_agent(source, got);
            assert_string_equal(got, a->name);
        }
    }
    import_ok("probe/any.md", "---\nagent: any\n---\n## Part\nFor everybody.\n");
    stored_agent("probe/any.md", got);
    assert_string_equal(got, "(null)");
    import_ok("probe/none.md", "## Part\nNo agent anywhere.\n");
    stored_agent("probe/none.md", got);
    assert_string_equal(got, "(null)");
    const char *unknown = "---\nagent: nobody\n---\n## Part\nRefused.\n";
    char err[256];
    assert_int_equal(
        chat_kb_import_text(schema_db(), "probe/unknown.md", unknown, strlen(unknown), NULL, err, sizeof err),
        CHAT_EINVAL);
    testutil_sql(schema_db(), "DELETE FROM kb_documents WHERE source LIKE 'probe%' OR source LIKE '%/probe-%'");
}

/* The same passage once per owner: a search with an owner's retrieval rule ranks its own first; with the
 * fallback's (every passage alike) the order is the table's (by id). */
static void test_retrieval_favours_own(void **state)
{
    char source[64], text[256];
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        if (chat_agents[i].kb != CHAT_AGENT_KB_OWN) continue;
        snprintf(source, sizeof source, "same/%s.md", chat_agents[i].name);
        snprintf(text, sizeof text, "---\nagent: %s\n---\n## Quagga\nThe quagga valve needs a zebra gasket.\n",
                 chat_agents[i].name);
        import_ok(source, text);
    }
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent *a = &chat_agents[i];
        chat_kb_query q = {
            .question = "quagga valve zebra gasket", .agent = chat_agent_kb_filter(a), .k = CHAT_AGENT_COUNT};
        chat_kb_result r;
        char err[256];
        assert_int_equal(chat_kb_search(schema_db(), &q, &r, err, sizeof err), 0);
        assert_true(r.n >= 1);
        if (a->kb == CHAT_AGENT_KB_OWN) {
            assert_string_equal(r.items[0].agent, a->name);
            if (r.n > 1) assert_true(r.items[0].score > r.items[1].score);
        } else {
            for (size_t k = 1; k < r.n; k++)
                assert_true(fabs(r.items[k].score - r.items[0].score) < 1e-9);
        }
        chat_kb_result_clear(&r);
    }
    testutil_sql(schema_db(), "DELETE FROM kb_documents WHERE source LIKE 'same/%'");
}

/* ---- the extractive answer ------------------------------------------------------------------------- */

static char *compose_for(const chat_agent *a, const char *question, const char *body)
{
    chat_kb_passage p = {1, "probe/a.md", "Probe", NULL, NULL, (char *)body, 5.0};
    chat_kb_result kb = {&p, 1, 5.0};
    chat_llm_request req = {.question = question, .agent = a->name, .passages = &kb};
    char *answer = chat_extractive_compose(&req);
    assert_non_null(answer);
    return answer;
}

/* The answer opens with the row's intro; small talk gets the greeting from the fallback agent only (an
 * owner answers from its passage). */
static void test_extractive_follows_rows(void **state)
{
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent *a = &chat_agents[i];
        char *answer = compose_for(a, "How much does the zebra gasket weigh?",
                                   "The zebra gasket weighs 12 kg when dry. The hull is painted white.");
        size_t n = strlen(a->intro);
        if (strncmp(answer, a->intro, n) || strncmp(answer + n, "The zebra gasket weighs 12 kg", 29))
            fail_msg("%s: answer does not open with its intro \"%s\": %s", a->name, a->intro, answer);
        free(answer);

        answer = compose_for(a, "hello there", "Say hello there to the harbour master when you arrive at the dock.");
        bool fallback = a->routing & CHAT_AGENT_FALLBACK;
        if (fallback != (strstr(answer, "Sources:") == NULL))
            fail_msg("%s: small talk answered %s: %s", a->name, fallback ? "from a passage" : "with the greeting",
                     answer);
        free(answer);
    }
}

/* A guide reads from its opening for an agent whose own passages are a folder of guides (a row with
 * kb_dir): the checks in order, though the second and third name nothing the question says. */
static void test_guide_opening_follows_rows(void **state)
{
    chat_kb_passage p = {1, "probe/guide.md", "Probe Guide - Engine Won't Start", NULL, NULL,
                         "If the engine won't start, work through these checks in order. Check that the kill switch "
                         "lanyard is clipped on. Check that the battery switch is on. An engine that will not start "
                         "after a winter ashore may need a new starting battery.",
                         5.0};
    chat_kb_result kb = {&p, 1, 5.0};
    for (int i = 0; i < CHAT_AGENT_COUNT; i++) {
        const chat_agent *a = &chat_agents[i];
        chat_llm_request req = {.question = "My engine won't start", .agent = a->name, .passages = &kb};
        char *answer = chat_extractive_compose(&req);
        assert_non_null(answer);
        if ((a->kb_dir != NULL) != (strstr(answer, "kill switch lanyard") != NULL))
            fail_msg("%s: %s: %s", a->name, a->kb_dir ? "the guide not read from its opening" : "read from its opening",
                     answer);
        free(answer);
    }
}

TESTUTIL_MAIN(NULL, teardown,
              cmocka_unit_test(test_rows_complete),
              cmocka_unit_test(test_lookups),
              cmocka_unit_test(test_schema_accepts_every_agent),
              cmocka_unit_test(test_every_agent_has_seeded_terms),
              cmocka_unit_test(test_classifier_routes_to_each_row),
              cmocka_unit_test(test_classifier_ties_follow_rank),
              cmocka_unit_test(test_classifier_signals_follow_rows),
              cmocka_unit_test(test_import_follows_rows),
              cmocka_unit_test(test_retrieval_favours_own),
              cmocka_unit_test(test_extractive_follows_rows),
              cmocka_unit_test(test_guide_opening_follows_rows))
