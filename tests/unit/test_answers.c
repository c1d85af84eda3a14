/* Answers a customer can trust, measured on tests/data/answers_labelled.tsv: every question runs through
 * the whole pipeline (the sample database, the extractive provider; follow-ups in one session), and an
 * answer is right when it holds the fact the row names and not the claim it must not make. Reported per
 * category and per part: the tuned part (T), that the rules may be tuned against, and the held-out part
 * (H), that they never are (its failures are printed only with ANSWERS_SHOW_HELDOUT=1, so that
 * nobody tunes against them by accident; ANSWERS_SHOW_ALL=1 prints the right answers too). Fails when a category of the tuned part, or the held-out part
 * as a whole, is right less than 85 % of the time, and when confidence is not calibrated on the tuned
 * part: answers with confidence >= 0.7 must be right at least 90 % of the time, and every wrong answer and
 * every unanswerable or clarifying one must be below 0.5. The held-out calibration is reported. And the
 * openai provider, against the fake LLM server, is given the same grounding in its prompt. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "chat_common.h"
#include "chat_pipeline.h"
#include "chat_util.h"
#include "testutil.h"

#define MAX_ROWS 400
#define MAX_CATEGORIES 16
#define MAX_SESSIONS 64

typedef struct row {
    char *category, *part, *session, *customer, *question, *must, *must_not;
} row;

typedef struct outcome {
    char *response;
    char session_id[80];
    double confidence;
    bool terminal_ok;
} outcome;

static chat_pipeline *pipe_;
static chat_user staff = {"user-staff", "staff@example.com", "Staff", 0};

static int setup(void **state)
{
    pipe_ = testutil_pipeline_sample("answers"); /* a staff desk: the set names many customers */
    return 0;
}

static int teardown(void **state)
{
    chat_pipeline_free(pipe_);
    return 0;
}

static void on_complete(void *ud, const char *response, const char *session_id, const char *metadata)
{
    outcome *o = ud;
    o->response = strdup(response);
    snprintf(o->session_id, sizeof o->session_id, "%s", session_id);
    json_object *m = json_tokener_parse(metadata), *v;
    if (m && json_object_object_get_ex(m, "confidence", &v)) o->confidence = json_object_get_double(v);
    json_object_put(m);
    o->terminal_ok = true;
}

static void on_error(void *ud, const char *code, const char *message) { (void)ud, (void)code, (void)message; }

static void ask_on(chat_pipeline *p, const char *question, const char *session, const char *customer, outcome *o)
{
    memset(o, 0, sizeof *o);
    chat_request req = {.message = question, .session_id = session, .customer_id = customer, .user = &staff};
    chat_sink sink = {o, NULL, NULL, on_complete, on_error};
    assert_int_equal(chat_pipeline_run(p, &req, &sink, NULL), 0);
    assert_true(o->terminal_ok);
}

static void ask(const char *question, const char *session, const char *customer, outcome *o)
{
    ask_on(pipe_, question, session, customer, o);
}

/* "a && b": every part; each part "x|y": any of them; case-insensitive. */
static bool holds(const char *answer, const char *spec)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *part = strtok_r(buf, "&", &save); part; part = strtok_r(NULL, "&", &save)) {
        while (*part == ' ') part++;
        char *end = part + strlen(part);
        while (end > part && end[-1] == ' ') *--end = '\0';
        if (!*part) continue;
        bool any = false;
        char *save2 = NULL;
        for (char *alt = strtok_r(part, "|", &save2); alt && !any; alt = strtok_r(NULL, "|", &save2))
            any = chat_strcasestr(answer, alt) != NULL;
        if (!any) return false;
    }
    return true;
}

static bool claims(const char *answer, const char *spec)
{
    if (!strcmp(spec, "-")) return false;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    char *save = NULL;
    for (char *alt = strtok_r(buf, "|", &save); alt; alt = strtok_r(NULL, "|", &save))
        if (chat_strcasestr(answer, alt)) return true;
    return false;
}

/* The rows of the labelled set; they point into tsv. */
static int parse_rows(testutil_tsv *tsv, row *rows, int max)
{
    int n = 0;
    char *f[7];
    for (int nf; (nf = testutil_tsv_next(tsv, f, 7));) {
        if (nf != 7) fail_msg("tests/data/answers_labelled.tsv: %d fields in a row of '%s'", nf, f[0]);
        assert_true(n < max);
        rows[n++] = (row){f[0], f[1], f[2], f[3], f[4], f[5], f[6]};
    }
    return n;
}

typedef struct tally {
    char category[32];
    int right[2], total[2]; /* [0] tuned, [1] held out */
} tally;

typedef struct calib {
    int confident, confident_right; /* confidence >= 0.7 */
    int low_total, low_ok;          /* wrong, unanswerable and clarifying answers: below 0.5? */
} calib;

static tally *tally_for(tally *t, int *n, const char *category)
{
    for (int i = 0; i < *n; i++)
        if (!strcmp(t[i].category, category)) return &t[i];
    assert_true(*n < MAX_CATEGORIES);
    memset(&t[*n], 0, sizeof t[*n]);
    snprintf(t[*n].category, sizeof t[*n].category, "%s", category);
    return &t[(*n)++];
}

static void test_labelled_answers(void **state)
{
    testutil_tsv tsv;
    assert_int_equal(testutil_tsv_open(&tsv, "tests/data/answers_labelled.tsv"), 0);
    static row rows[MAX_ROWS];
    int n = parse_rows(&tsv, rows, MAX_ROWS);
    assert_true(n >= 100);
    bool show_held = getenv("ANSWERS_SHOW_HELDOUT") != NULL, show_all = getenv("ANSWERS_SHOW_ALL") != NULL;
    struct {
        char tag[16];
        char id[80];
    } sessions[MAX_SESSIONS];
    memset(sessions, 0, sizeof sessions);
    int nsessions = 0;
    tally cats[MAX_CATEGORIES];
    int ncats = 0;
    calib cal[2] = {{0}};
    for (int i = 0; i < n; i++) {
        const row *r = &rows[i];
        int part = !strcmp(r->part, "H");
        const char *sid = NULL;
        int s = -1;
        if (strcmp(r->session, "-")) {
            for (int k = 0; k < nsessions; k++)
                if (!strcmp(sessions[k].tag, r->session)) s = k;
            if (s < 0) {
                assert_true(nsessions < MAX_SESSIONS);
                s = nsessions++;
                snprintf(sessions[s].tag, sizeof sessions[s].tag, "%s", r->session);
                sessions[s].id[0] = '\0';
            }
            sid = sessions[s].id[0] ? sessions[s].id : NULL;
        }
        outcome o;
        ask(r->question, sid, strcmp(r->customer, "-") ? r->customer : NULL, &o);
        if (s >= 0) snprintf(sessions[s].id, sizeof sessions[s].id, "%s", o.session_id);
        bool right = holds(o.response, r->must) && !claims(o.response, r->must_not);
        tally *t = tally_for(cats, &ncats, r->category);
        t->total[part]++;
        t->right[part] += right;
        bool declines = !strcmp(r->category, "unanswerable") || !strcmp(r->category, "clarify");
        if (o.confidence >= 0.7) cal[part].confident++, cal[part].confident_right += right;
        if (!right || declines) cal[part].low_total++, cal[part].low_ok += o.confidence < 0.5;
        bool miscalibrated = (!right || declines) ? o.confidence >= 0.5 : false;
        if ((!right || miscalibrated || show_all) && (!part || show_held))
            print_message("%s [%s %s] %s%s (confidence %.2f)\n  Q: %s\n  must: %s   must not: %s\n  A: %s\n",
                          !right ? "WRONG" : miscalibrated ? "MISCALIBRATED" : "RIGHT", r->category, r->part, r->session,
                          strcmp(r->customer, "-") ? r->customer : "", o.confidence, r->question, r->must,
                          r->must_not, o.response);
        free(o.response);
    }
    int right[2] = {0}, total[2] = {0};
    bool below = false;
    print_message("%-16s %12s %12s\n", "category", "tuned", "held out");
    for (int i = 0; i < ncats; i++) {
        const tally *t = &cats[i];
        char a[32], b[32];
        snprintf(a, sizeof a, "%d/%d %3.0f%%", t->right[0], t->total[0], t->total[0] ? 100.0 * t->right[0] / t->total[0] : 0);
        snprintf(b, sizeof b, "%d/%d %3.0f%%", t->right[1], t->total[1], t->total[1] ? 100.0 * t->right[1] / t->total[1] : 0);
        print_message("%-16s %12s %12s\n", t->category, a, b);
        for (int p = 0; p < 2; p++) right[p] += t->right[p], total[p] += t->total[p];
        if (t->total[0] && t->right[0] * 100 < 85 * t->total[0]) below = true;
    }
    for (int p = 0; p < 2; p++)
        print_message("%s: %d/%d right (%.0f%%); confidence >= 0.7: %d answers, %d right (%.0f%%); wrong, "
                      "unanswerable or clarifying: %d, %d of them below 0.5\n",
                      p ? "held out" : "tuned", right[p], total[p], total[p] ? 100.0 * right[p] / total[p] : 0,
                      cal[p].confident, cal[p].confident_right,
                      cal[p].confident ? 100.0 * cal[p].confident_right / cal[p].confident : 0, cal[p].low_total,
                      cal[p].low_ok);
    testutil_tsv_close(&tsv);
    if (below) fail_msg("a category of the tuned part is below 85%%");
    if (right[1] * 100 < 85 * total[1]) fail_msg("the held-out part is below 85%%");
    if (cal[0].confident_right * 10 < 9 * cal[0].confident) fail_msg("confidence >= 0.7 is right less than 90%% of the time");
    if (cal[0].low_ok < cal[0].low_total) fail_msg("a wrong, unanswerable or clarifying answer has confidence >= 0.5");
}

/* A language model gets the same grounding: the prompt the fake LLM server received holds the
 * customer's records (boats, the work done) and the passages with the facts (every model's tank for a
 * comparison, the weight for a follow-up), and the confidence is the grounding's. */
static void test_llm_grounding(void **state)
{
    int port = 0;
    pid_t pid = testutil_fake_llm_start(&port);
    assert_true(pid > 0);
    chat_config cfg = testutil_config_fake_llm("answers", port, "fake-ok");
    snprintf(cfg.customer_access, sizeof cfg.customer_access, "any");
    char err[256];
    chat_pipeline *p = chat_pipeline_new(&cfg, err, sizeof err);
    assert_non_null(p);
    static const struct {
        const char *customer, *question;
        bool follow_up; /* in the session of the row before */
        const char *prompt[3];
        double conf_min, conf_max;
    } cases[] = {
        {"cust-1005", "What was done on my Little Tern last time?", false,
         {"\"Little Tern\"", "work done: Replaced the water pump impeller", NULL}, 0.7, 1},
        {NULL, "Which of your boats has the biggest fuel tank?", false, {"1,135 L", "114 L", "760 L"}, 0.7, 1},
        {NULL, "Tell me about the engines of the Seawind 340", false, {"Stormvik D6-380", NULL, NULL}, 0.7, 1},
        {NULL, "how much does it weigh?", true, {"7,850 kg", NULL, NULL}, 0.7, 1},
        {"cust-1013", "Which boats do I own and when are they due for service?", false,
         {"\"Midnight Sun\"", "\"Wave Dancer\"", "20-hour break-in service"}, 0.7, 1},
        {NULL, "Does the warranty cover running aground?", false, {"damage from grounding", NULL, NULL}, 0, 1},
        {NULL, "Do you sell jet skis?", false, {NULL, NULL, NULL}, 0, 0.49},
    };
    char session[80] = "";
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        outcome o;
        ask_on(p, cases[i].question, cases[i].follow_up ? session : NULL, cases[i].customer, &o);
        snprintf(session, sizeof session, "%s", o.session_id);
        assert_non_null(strstr(o.response, "You asked about:")); /* the fake model answered */
        json_object *last = testutil_fake_llm_last(port), *prompt;
        assert_non_null(last);
        assert_true(json_object_object_get_ex(last, "prompt", &prompt));
        const char *text = json_object_get_string(prompt);
        for (size_t k = 0; k < 3 && cases[i].prompt[k]; k++)
            if (!strstr(text, cases[i].prompt[k])) fail_msg("'%s': the prompt lacks '%s':\n%s", cases[i].question, cases[i].prompt[k], text);
        if (o.confidence < cases[i].conf_min || o.confidence > cases[i].conf_max)
            fail_msg("'%s': confidence %.2f, want %.2f..%.2f", cases[i].question, o.confidence, cases[i].conf_min,
                     cases[i].conf_max);
        json_object_put(last);
        free(o.response);
    }
    chat_pipeline_free(p);
    testutil_fake_llm_stop(pid);
}

TESTUTIL_MAIN(setup, teardown,
              cmocka_unit_test(test_labelled_answers),
              cmocka_unit_test(test_llm_grounding))
