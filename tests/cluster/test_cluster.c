/* The protocol check of the cluster test (tests/cluster/cluster.sh runs it inside the client's network
 * namespace, against streamers on other "hosts" whose workers are on others still): CLUSTER_CONNS
 * connections ask a question each, CLUSTER_ROUNDS times over, all in flight at once, and every answer
 * must arrive whole, exactly once: the four progress steps before the first token, every token's
 * partial_response the text so far, the complete's response equal to the tokens, finish_reason stop,
 * and nothing but that one complete per question. Then, when the primary database is given (CHAT_DB_*),
 * every answer must be stored exactly once, with the text the client received.
 *
 * Design choices:
 * - Connection i starts on the i-th URL of CLUSTER_URL (a comma-separated list, round robin) and asks in
 *   a conversation of its own, CLUSTER_TAG-i, so that the stored rows of one run are found by name.
 * - A connection that breaks mid-answer (its streamer's host was killed) or that drops itself
 *   (CLUSTER_DROP_TOKENS=k: after k tokens of its first answer) reconnects to the next URL and resumes
 *   with the session, the answer id and the last seq it saw; the text across the drop must still be the
 *   answer exactly once. That is how a client of the resume protocol (docs/protocol.md) behaves.
 * - CLUSTER_KILL_CMD is run (system(3)) in round CLUSTER_KILL_ROUND (default 0) once every connection has
 *   its first token: something dies with every answer in flight. An answer whose worker died with it
 *   cannot be finished by anyone (the text so far died with the worker): it ends in PROCESSING_ERROR,
 *   and with CLUSTER_MAY_LOSE=1 that is allowed once per answer, must not be stored, and the question is
 *   asked again, which must then arrive whole. Without CLUSTER_MAY_LOSE any error fails. With
 *   CLUSTER_KILL_STAGGER=1 only the even connections ask before the kill and the odd ones right after it
 *   (a replica that dies between two retrievals a moment apart).
 * - CLUSTER_QUESTION replaces the built-in questions; the sources each complete cites are printed
 *   ("# sources: ..."), so the script can see which documents retrieval found.
 * Output: cmocka's lines and "# " lines with the counts (whole, resumed, lost and asked again). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_common.h"
#include "chat_config.h"
#include "chat_db.h"
#include "chat_jwt.h"
#include "chat_util.h"
#include "e2eutil.h"
#include "wsclient.h"

#define MAX_CONNS 64
#define MAX_URLS 8
#define MAX_ROUNDS 16
#define ANSWER_MS 30000
#define RECONNECT_MS 15000        /* a streamer to resume on: the front door may still be restarting one */
#define IDLE_AFTER_RESUME_MS 3000 /* "resumed" with nothing in flight and nothing more: the answer is lost */

static const char *const questions[] = {
    "What does fault code E42 mean?",
    "How often should the impeller be replaced?",
    "Which engine does the Seawind 220 have?",
};

static struct {
    char *urls[MAX_URLS];
    int nurls;
    const char *secret, *tag, *question, *kill_cmd;
    int drop_tokens, kill_round;
    bool may_lose, stagger;
    int whole, resumed, lost;
} K;

/* One connection's current question and what came back for it. */
typedef struct turn {
    chat_wsc *c;
    int url;      /* index of the URL it is connected to */
    int n;        /* its number */
    char sid[64]; /* its conversation */
    char answer_id[64];
    long long seq;
    chat_buf tokens;
    int steps, events;
    bool order_ok; /* no step after the first token, every partial_response the text so far */
    bool dropped;  /* dropped itself once already (CLUSTER_DROP_TOKENS) */
    char *response, finish[16], error[48], sources[256];
    char *stored[MAX_ROUNDS]; /* the responses received whole, in order */
    int nstored;
} turn;

static const char *member(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

static void note_sources(turn *t, json_object *meta)
{
    json_object *ctx, *src;
    t->sources[0] = '\0';
    if (!json_object_object_get_ex(meta, "context", &ctx) || !json_object_object_get_ex(ctx, "sources", &src)) return;
    size_t used = 0;
    for (size_t i = 0; i < json_object_array_length(src) && used < sizeof t->sources; i++)
        used += (size_t)snprintf(t->sources + used, sizeof t->sources - used, "%s%s", i ? "," : "",
                                 json_object_get_string(json_object_array_get_idx(src, i)));
}

/* One event of t's answer: false once it was the last (complete or error). */
static bool take_event(turn *t, json_object *o)
{
    const char *type = member(o, "type");
    t->events++;
    if (member(o, "answer_id")) snprintf(t->answer_id, sizeof t->answer_id, "%s", member(o, "answer_id"));
    if (!type) {
        t->order_ok = false;
    } else if (!strcmp(type, "progress")) {
        t->steps++;
        if (t->tokens.len) t->order_ok = false;
    } else if (!strcmp(type, "token")) {
        json_object *seq;
        chat_buf_puts(&t->tokens, member(o, "token") ? member(o, "token") : "");
        const char *partial = member(o, "partial_response");
        if (!partial || strcmp(partial, t->tokens.data)) t->order_ok = false;
        if (json_object_object_get_ex(o, "seq", &seq)) {
            if (json_object_get_int64(seq) <= t->seq) t->order_ok = false;
            t->seq = json_object_get_int64(seq);
        }
    } else if (!strcmp(type, "complete")) {
        json_object *meta;
        t->response = strdup(member(o, "response") ? member(o, "response") : "");
        if (json_object_object_get_ex(o, "metadata", &meta)) {
            if (member(meta, "finish_reason"))
                snprintf(t->finish, sizeof t->finish, "%s", member(meta, "finish_reason"));
            note_sources(t, meta);
        }
        return false;
    } else if (!strcmp(type, "error")) {
        snprintf(t->error, sizeof t->error, "%s", member(o, "code") ? member(o, "code") : "?");
        return false;
    }
    return true;
}

/* A connection to url number u, authenticated; NULL with err filled. */
static chat_wsc *connect_to(int u, int n, char *err, size_t errlen)
{
    char sub[32], full[4096];
    snprintf(sub, sizeof sub, "cluster-user-%d", n);
    char *token = chat_jwt_mint_hs256(K.secret, sub, NULL, NULL, time(NULL), 3600);
    if (!token) return snprintf(err, errlen, "no token"), NULL;
    snprintf(full, sizeof full, "%s?token=%s", K.urls[u], token);
    free(token);
    chat_wsc_opts o = {.timeout_ms = 5000};
    chat_wsc *c = chat_wsc_connect(full, &o, NULL, err, errlen);
    if (!c) return NULL;
    json_object *auth = NULL;
    if (chat_wsc_recv_json(c, 5000, &auth) ||
        strcmp(member(auth, "type") ? member(auth, "type") : "", "auth_success")) {
        snprintf(err, errlen, "no auth_success from %s", K.urls[u]);
        json_object_put(auth);
        chat_wsc_close(c, 0, NULL);
        return NULL;
    }
    json_object_put(auth);
    return c;
}

static void ask(turn *t, const char *question)
{
    chat_buf_reset(&t->tokens);
    free(t->response);
    t->response = NULL;
    t->steps = t->events = 0;
    t->seq = 0;
    t->order_ok = true;
    t->finish[0] = t->error[0] = t->answer_id[0] = '\0';
    json_object *m = json_object_new_object();
    json_object_object_add(m, "type", json_object_new_string("message"));
    json_object_object_add(m, "message", json_object_new_string(question));
    json_object_object_add(m, "session_id", json_object_new_string(t->sid));
    const char *s = json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN);
    assert_int_equal(chat_wsc_send_text(t->c, s, strlen(s)), 0);
    json_object_put(m);
}

/* The connection broke (or dropped itself): a new one on the next URL, and the resume of the answer from
 * the last piece seen. Fails when no streamer takes it or the resume is refused; false when the resumed
 * answer is known to be over with nothing more to come (in_flight false). */
static bool reconnect_and_resume(turn *t)
{
    chat_wsc_close(t->c, 0, NULL);
    t->c = NULL;
    char err[256] = "";
    for (long long deadline = e2e_now_ms() + RECONNECT_MS; !t->c;) {
        t->url = (t->url + 1) % K.nurls;
        t->c = connect_to(t->url, t->n, err, sizeof err);
        if (!t->c && e2e_now_ms() > deadline) fail_msg("connection %d: no streamer to resume on: %s", t->n, err);
        if (!t->c) e2e_sleep_ms(200);
    }
    char msg[256];
    snprintf(msg, sizeof msg, "{\"type\":\"resume\",\"session_id\":\"%s\",\"last_seq\":%lld%s%s%s}", t->sid, t->seq,
             t->answer_id[0] ? ",\"answer_id\":\"" : "", t->answer_id, t->answer_id[0] ? "\"" : "");
    assert_int_equal(chat_wsc_send_text(t->c, msg, strlen(msg)), 0);
    json_object *o = NULL;
    if (chat_wsc_recv_json(t->c, 5000, &o)) fail_msg("connection %d: no answer to resume on %s", t->n, K.urls[t->url]);
    if (strcmp(member(o, "type") ? member(o, "type") : "", "resumed"))
        fail_msg("connection %d: not resumed: %s", t->n, json_object_to_json_string(o));
    json_object *inflight;
    bool live = json_object_object_get_ex(o, "in_flight", &inflight) && json_object_get_boolean(inflight);
    json_object_put(o);
    K.resumed++;
    return live;
}

/* Reads t's events until its answer is over, resuming on another streamer when the connection breaks. */
static void read_answer(turn *t)
{
    bool live = true;
    for (long long deadline = e2e_now_ms() + ANSWER_MS;;) {
        json_object *o = NULL;
        long long left = deadline - e2e_now_ms();
        if (left <= 0) fail_msg("connection %d: no end of answer after %d events", t->n, t->events);
        int rc = chat_wsc_recv_json(t->c, live ? (int)left : IDLE_AFTER_RESUME_MS, &o);
        if (rc == CHAT_ETIMEOUT && !live) { /* resumed, nothing in flight, nothing more: it died */
            snprintf(t->error, sizeof t->error, "LOST");
            return;
        }
        if (rc) {
            live = reconnect_and_resume(t);
            continue;
        }
        bool more = take_event(t, o);
        json_object_put(o);
        if (!more) return;
        if (K.drop_tokens && !t->dropped && t->tokens.len && t->seq >= K.drop_tokens) {
            t->dropped = true; /* the client's own drop, then the resume on the next URL */
            live = reconnect_and_resume(t);
        }
    }
}

/* The answer read is whole, or (CLUSTER_MAY_LOSE) lost with its worker: false then, to ask again. */
static bool expect_whole(turn *t)
{
    read_answer(t);
    if (t->error[0] && K.may_lose && (!strcmp(t->error, "PROCESSING_ERROR") || !strcmp(t->error, "LOST"))) {
        K.lost++;
        return false;
    }
    if (t->error[0]) fail_msg("connection %d: error %s", t->n, t->error);
    if (t->steps != 4 || !t->order_ok || !t->tokens.len || strcmp(t->response, t->tokens.data) ||
        strcmp(t->finish, "stop"))
        fail_msg("connection %d: not whole (%d steps, order %d, %zu token bytes, response %s tokens, finish %s)", t->n,
                 t->steps, t->order_ok, t->tokens.len, strcmp(t->response, t->tokens.data) ? "!=" : "==", t->finish);
    /* Nothing more for this question: a second complete or a stray token would be read here. */
    json_object *extra = NULL;
    if (chat_wsc_recv_json(t->c, 0, &extra) == 0)
        fail_msg("connection %d: more after complete: %s", t->n, json_object_to_json_string(extra));
    assert_true(t->nstored < MAX_ROUNDS);
    t->stored[t->nstored++] = strdup(t->response);
    K.whole++;
    return true;
}

/* Every step-th connection has its first token. */
static void wait_first_tokens(turn *t, int conns, int step)
{
    for (int i = 0; i < conns; i += step) {
        while (!t[i].tokens.len && t[i].events < 64) {
            json_object *o = NULL;
            if (chat_wsc_recv_json(t[i].c, ANSWER_MS, &o)) fail_msg("connection %d: no first token", i);
            bool more = take_event(&t[i], o);
            json_object_put(o);
            if (!more) fail_msg("connection %d: over before its first token (%s)", i, t[i].error);
        }
    }
}

/* ---------------------------------------------------------------- stored exactly once */

typedef struct rows {
    char *content[2 * MAX_ROUNDS + 2];
    int n, nuser;
} rows;

static int row(void *ud, int ncols, char **v, unsigned long *lens)
{
    (void)ncols, (void)lens;
    rows *r = ud;
    if (!strcmp(v[0], "user")) {
        r->nuser++;
        return 0;
    }
    if (r->n < (int)CHAT_ARRAY_LEN(r->content)) r->content[r->n] = strdup(v[1] ? v[1] : "");
    r->n++;
    return 0;
}

static void rows_clear(rows *r)
{
    for (int i = 0; i < r->n && i < (int)CHAT_ARRAY_LEN(r->content); i++)
        free(r->content[i]);
    memset(r, 0, sizeof *r);
}

/* The primary holds exactly one user and one assistant row per whole answer of t's conversation, the
 * assistant's the text t received, in order (and nothing of a lost answer). Waits for the storing. */
static void expect_stored(chat_db *db, const turn *t)
{
    rows r = {0};
    char err[256];
    chat_db_param p = CHAT_DB_P_STR(t->sid);
    for (long long deadline = e2e_now_ms() + 15000;;) {
        rows_clear(&r);
        if (chat_db_run(db, "SELECT role, content FROM chat_messages WHERE session_id = ? ORDER BY id", &p, 1, row, &r,
                        NULL, NULL, err, sizeof err))
            fail_msg("primary: %s", err);
        if (r.n >= t->nstored || e2e_now_ms() > deadline) break;
        e2e_sleep_ms(200);
    }
    if (r.n != t->nstored || r.nuser != t->nstored)
        fail_msg("conversation %s: %d answers and %d questions stored, %d answers received whole", t->sid, r.n, r.nuser,
                 t->nstored);
    for (int i = 0; i < r.n; i++)
        if (strcmp(r.content[i], t->stored[i]))
            fail_msg("conversation %s: stored answer %d differs from the one received", t->sid, i);
    rows_clear(&r);
}

static void check_stored(turn *t, int conns)
{
    if (!getenv("CHAT_DB_HOST") && !getenv("CHAT_DB_SOCKET")) return;
    chat_config cfg;
    char err[256];
    if (chat_config_from_env(&cfg, err, sizeof err)) fail_msg("database settings: %s", err);
    chat_db *db = chat_db_new(&cfg);
    assert_non_null(db);
    e2e_sleep_ms(500); /* a duplicate would be stored after the first: give it the time to show */
    int rows_total = 0;
    for (int i = 0; i < conns; i++) {
        expect_stored(db, &t[i]);
        rows_total += t[i].nstored;
    }
    chat_db_free(db);
    printf("# %d answers stored exactly once in the primary, as received\n", rows_total);
}

/* ---------------------------------------------------------------- the test */

static void settings(void)
{
    const char *url = getenv("CLUSTER_URL");
    K.secret = getenv("JWT_SECRET");
    if (!url || !K.secret) fail_msg("CLUSTER_URL and JWT_SECRET are required");
    char *list = strdup(url), *save = NULL;
    for (char *u = strtok_r(list, ",", &save); u && K.nurls < MAX_URLS; u = strtok_r(NULL, ",", &save))
        K.urls[K.nurls++] = strdup(u);
    free(list);
    assert_true(K.nurls > 0);
    K.tag = getenv("CLUSTER_TAG") ? getenv("CLUSTER_TAG") : "cluster";
    K.question = getenv("CLUSTER_QUESTION");
    K.kill_cmd = getenv("CLUSTER_KILL_CMD");
    K.drop_tokens = getenv("CLUSTER_DROP_TOKENS") ? atoi(getenv("CLUSTER_DROP_TOKENS")) : 0;
    K.kill_round = getenv("CLUSTER_KILL_ROUND") ? atoi(getenv("CLUSTER_KILL_ROUND")) : 0;
    K.may_lose = getenv("CLUSTER_MAY_LOSE") && !strcmp(getenv("CLUSTER_MAY_LOSE"), "1");
    K.stagger = getenv("CLUSTER_KILL_STAGGER") && !strcmp(getenv("CLUSTER_KILL_STAGGER"), "1");
}

static void test_answers_whole(void **state)
{
    (void)state;
    settings();
    const char *c_env = getenv("CLUSTER_CONNS"), *r_env = getenv("CLUSTER_ROUNDS");
    int conns = c_env ? atoi(c_env) : 8, rounds = r_env ? atoi(r_env) : 3;
    assert_true(conns > 0 && conns <= MAX_CONNS && rounds > 0 && rounds <= MAX_ROUNDS / 2);
    static turn t[MAX_CONNS];
    memset(t, 0, sizeof t);
    for (int i = 0; i < conns; i++) {
        char err[256];
        t[i].n = i;
        t[i].url = i % K.nurls;
        snprintf(t[i].sid, sizeof t[i].sid, "%s-%d", K.tag, i);
        t[i].c = connect_to(t[i].url, i, err, sizeof err);
        if (!t[i].c) fail_msg("connection %d: %s", i, err);
        chat_buf_init(&t[i].tokens);
    }
    for (int r = 0; r < rounds; r++) {
        bool kill = K.kill_cmd && r == K.kill_round, stagger = kill && K.stagger;
        for (int i = 0; i < conns; i += stagger ? 2 : 1) /* all in flight at once, spread over the workers */
            ask(&t[i], K.question ? K.question : questions[(size_t)(i + r) % CHAT_ARRAY_LEN(questions)]);
        if (kill) {
            wait_first_tokens(t, conns, stagger ? 2 : 1);
            printf("# %s in flight: %s\n", stagger ? "half the answers" : "every answer", K.kill_cmd);
            fflush(stdout);
            if (system(K.kill_cmd) != 0) fail_msg("the kill command failed");
        }
        for (int i = 1; stagger && i < conns; i += 2) /* the other half asked right after the death */
            ask(&t[i], K.question ? K.question : questions[(size_t)(i + r) % CHAT_ARRAY_LEN(questions)]);
        bool again[MAX_CONNS] = {false};
        for (int i = 0; i < conns; i++)
            again[i] = !expect_whole(&t[i]);
        for (int i = 0; i < conns; i++) { /* lost with its worker: asked again, now whole */
            if (!again[i]) continue;
            ask(&t[i], K.question ? K.question : questions[(size_t)(i + r) % CHAT_ARRAY_LEN(questions)]);
            if (!expect_whole(&t[i])) fail_msg("connection %d: lost again", i);
        }
        for (int i = 0; conns == 1 && i < conns; i++)
            printf("# sources: %s\n", t[i].sources);
    }
    printf("# %d answers whole on %d connections, %d resumed on another streamer, %d lost with their worker and "
           "asked again\n",
           K.whole, conns, K.resumed, K.lost);
    check_stored(t, conns);
    for (int i = 0; i < conns; i++) {
        chat_wsc_close(t[i].c, 1000, NULL);
        chat_buf_free(&t[i].tokens);
        free(t[i].response);
        for (int j = 0; j < t[i].nstored; j++)
            free(t[i].stored[j]);
    }
    for (int u = 0; u < K.nurls; u++)
        free(K.urls[u]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_answers_whole)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
