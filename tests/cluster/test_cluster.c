/* The protocol check of the cluster test (tests/cluster/cluster.sh runs it inside the streamer's network
 * namespace, against a streamer whose workers are on other "hosts"): CLUSTER_CONNS connections ask a
 * question each, CLUSTER_ROUNDS times over, all in flight at once, and every answer must arrive whole:
 * the four progress steps before the first token, every token's partial_response the text so far, the
 * complete's response equal to the tokens, finish_reason stop, and nothing but that one complete per
 * question. Settings: CLUSTER_URL (ws://host:port/ws/chat), JWT_SECRET (the streamer's). */
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
#include "chat_jwt.h"
#include "chat_util.h"
#include "e2eutil.h"
#include "wsclient.h"

#define MAX_CONNS 64
#define ANSWER_MS 30000

static const char *const questions[] = {
    "What does fault code E42 mean?",
    "How often should the impeller be replaced?",
    "Which engine does the Seawind 220 have?",
};

/* One connection's current question and what came back for it. */
typedef struct turn {
    chat_wsc *c;
    chat_buf tokens;
    int steps, events;
    bool order_ok; /* no step after the first token, every partial_response the text so far */
    char *response, finish[16], error[48];
} turn;

static const char *member(json_object *o, const char *key)
{
    json_object *v;
    return o && json_object_object_get_ex(o, key, &v) ? json_object_get_string(v) : NULL;
}

/* One event of t's answer: false once it was the last (complete or error). */
static bool take_event(turn *t, json_object *o)
{
    const char *type = member(o, "type");
    t->events++;
    if (!type) {
        t->order_ok = false;
    } else if (!strcmp(type, "progress")) {
        t->steps++;
        if (t->tokens.len) t->order_ok = false;
    } else if (!strcmp(type, "token")) {
        chat_buf_puts(&t->tokens, member(o, "token") ? member(o, "token") : "");
        const char *partial = member(o, "partial_response");
        if (!partial || strcmp(partial, t->tokens.data)) t->order_ok = false;
    } else if (!strcmp(type, "complete")) {
        json_object *meta;
        t->response = strdup(member(o, "response") ? member(o, "response") : "");
        if (json_object_object_get_ex(o, "metadata", &meta) && member(meta, "finish_reason"))
            snprintf(t->finish, sizeof t->finish, "%s", member(meta, "finish_reason"));
        return false;
    } else if (!strcmp(type, "error")) {
        snprintf(t->error, sizeof t->error, "%s", member(o, "code") ? member(o, "code") : "?");
        return false;
    }
    return true;
}

static void ask(turn *t, const char *question)
{
    chat_buf_reset(&t->tokens);
    free(t->response);
    t->response = NULL;
    t->steps = t->events = 0;
    t->order_ok = true;
    t->finish[0] = t->error[0] = '\0';
    json_object *m = json_object_new_object();
    json_object_object_add(m, "type", json_object_new_string("message"));
    json_object_object_add(m, "message", json_object_new_string(question));
    const char *s = json_object_to_json_string_ext(m, JSON_C_TO_STRING_PLAIN);
    assert_int_equal(chat_wsc_send_text(t->c, s, strlen(s)), 0);
    json_object_put(m);
}

/* Reads t's events until its answer is over; fails the test when it is not whole. */
static void expect_whole(turn *t, int n)
{
    for (long long deadline = e2e_now_ms() + ANSWER_MS;;) {
        json_object *o = NULL;
        long long left = deadline - e2e_now_ms();
        if (left <= 0) fail_msg("connection %d: no end of answer after %d events", n, t->events);
        int rc = chat_wsc_recv_json(t->c, (int)left, &o);
        if (rc) fail_msg("connection %d: receive failed (%d, close %d)", n, rc, chat_wsc_close_code(t->c));
        bool more = take_event(t, o);
        json_object_put(o);
        if (!more) break;
    }
    if (t->error[0]) fail_msg("connection %d: error %s", n, t->error);
    if (t->steps != 4 || !t->order_ok || !t->tokens.len || strcmp(t->response, t->tokens.data) ||
        strcmp(t->finish, "stop"))
        fail_msg("connection %d: not whole (%d steps, order %d, %zu token bytes, response %s tokens, finish %s)", n,
                 t->steps, t->order_ok, t->tokens.len, strcmp(t->response, t->tokens.data) ? "!=" : "==", t->finish);
    /* Nothing more for this question: a second complete or a stray token would be read here. */
    json_object *extra = NULL;
    if (chat_wsc_recv_json(t->c, 0, &extra) == 0) fail_msg("connection %d: more after complete", n);
}

static void test_answers_whole(void **state)
{
    (void)state;
    const char *url = getenv("CLUSTER_URL"), *secret = getenv("JWT_SECRET");
    const char *c_env = getenv("CLUSTER_CONNS"), *r_env = getenv("CLUSTER_ROUNDS");
    int conns = c_env ? atoi(c_env) : 8, rounds = r_env ? atoi(r_env) : 3;
    if (!url || !secret) fail_msg("CLUSTER_URL and JWT_SECRET are required");
    assert_true(conns > 0 && conns <= MAX_CONNS && rounds > 0);
    turn t[MAX_CONNS];
    memset(t, 0, sizeof t);
    for (int i = 0; i < conns; i++) {
        char sub[32], full[4096], err[256];
        snprintf(sub, sizeof sub, "cluster-user-%d", i);
        char *token = chat_jwt_mint_hs256(secret, sub, NULL, NULL, time(NULL), 3600);
        assert_non_null(token);
        snprintf(full, sizeof full, "%s?token=%s", url, token);
        free(token);
        chat_wsc_opts o = {.timeout_ms = 5000};
        t[i].c = chat_wsc_connect(full, &o, NULL, err, sizeof err);
        if (!t[i].c) fail_msg("connection %d: %s", i, err);
        json_object *auth = NULL;
        assert_int_equal(chat_wsc_recv_json(t[i].c, 5000, &auth), 0);
        assert_string_equal(member(auth, "type"), "auth_success");
        json_object_put(auth);
        chat_buf_init(&t[i].tokens);
    }
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < conns; i++) /* all in flight at once, spread over the workers */
            ask(&t[i], questions[(size_t)(i + r) % CHAT_ARRAY_LEN(questions)]);
        for (int i = 0; i < conns; i++)
            expect_whole(&t[i], i);
    }
    printf("# %d answers whole on %d connections\n", conns * rounds, conns);
    for (int i = 0; i < conns; i++) {
        chat_wsc_close(t[i].c, 1000, NULL);
        chat_buf_free(&t[i].tokens);
        free(t[i].response);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(test_answers_whole)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
