/* The ZeroMQ wire format between broker and workers, over real inproc sockets: every message kind
 * round-trips through the socket pair it travels on (a worker's DEALER and the broker's ROUTER), with its
 * exact parts on the wire (the format is pinned, byte for byte); owned copies of a job and an event
 * outlive the message they came from; malformed messages are refused with CHAT_EINVAL; messages over the
 * part or byte limits are dropped whole without desynchronising the stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_wire.h"
#include "testutil.h"

#define WORKER_ID "worker-1"

typedef struct fixture {
    void *ctx;
    void *a, *b;           /* a PAIR: raw messages without envelope */
    void *router, *dealer; /* the broker's ROUTER and a worker's DEALER with identity WORKER_ID */
    chat_wire_msg m;
} fixture;

static void *socket_with_timeout(void *ctx, int type)
{
    void *s = zmq_socket(ctx, type);
    int t = 2000, zero = 0;
    zmq_setsockopt(s, ZMQ_RCVTIMEO, &t, sizeof t);
    zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof zero);
    return s;
}

static int setup(void **state)
{
    static fixture f;
    f.ctx = zmq_ctx_new();
    f.a = socket_with_timeout(f.ctx, ZMQ_PAIR);
    f.b = socket_with_timeout(f.ctx, ZMQ_PAIR);
    assert_int_equal(zmq_bind(f.a, "inproc://test-wire"), 0);
    assert_int_equal(zmq_connect(f.b, "inproc://test-wire"), 0);
    f.router = socket_with_timeout(f.ctx, ZMQ_ROUTER);
    f.dealer = socket_with_timeout(f.ctx, ZMQ_DEALER);
    zmq_setsockopt(f.dealer, ZMQ_ROUTING_ID, WORKER_ID, strlen(WORKER_ID));
    assert_int_equal(zmq_bind(f.router, "inproc://test-wire-router"), 0);
    assert_int_equal(zmq_connect(f.dealer, "inproc://test-wire-router"), 0);
    chat_wire_msg_init(&f.m);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    chat_wire_msg_clear(&f->m);
    zmq_close(f->a);
    zmq_close(f->b);
    zmq_close(f->router);
    zmq_close(f->dealer);
    zmq_ctx_term(f->ctx);
    return 0;
}

/* ---------------------------------------------------------------- comparing */

#define S(lit) {lit, sizeof(lit) - 1}

static void assert_str(chat_wire_str want, chat_wire_str got)
{
    assert_int_equal(got.len, want.len);
    assert_memory_equal(got.s, want.s, want.len);
    assert_int_equal(got.s[got.len], '\0'); /* parsed strings are terminated */
}

static void assert_job(const chat_wire_job *want, const chat_wire_job *got)
{
    assert_true(got->job_id == want->job_id);
    assert_int_equal(got->flags, want->flags);
#define X(field, required)                                                                                   \
    assert_non_null(got->field);                                                                             \
    assert_string_equal(got->field, want->field ? want->field : "");
    CHAT_WIRE_JOB_STRINGS(X)
#undef X
}

static void assert_event(const chat_wire_event *want, const chat_wire_event *got)
{
    assert_true(got->job_id == want->job_id);
    assert_int_equal(got->kind, want->kind);
    switch (want->kind) {
    case CHAT_WIRE_EV_PROGRESS:
        assert_str(want->progress.step, got->progress.step);
        assert_str(want->progress.message, got->progress.message);
        break;
    case CHAT_WIRE_EV_TOKEN:
        assert_str(want->token.text, got->token.text);
        assert_str(want->token.piece_lens, got->token.piece_lens);
        break;
    case CHAT_WIRE_EV_COMPLETE:
        assert_str(want->complete.response, got->complete.response);
        assert_str(want->complete.session_id, got->complete.session_id);
        assert_str(want->complete.metadata_json, got->complete.metadata_json);
        break;
    case CHAT_WIRE_EV_ERROR:
        assert_str(want->error.code, got->error.code);
        assert_str(want->error.message, got->error.message);
        break;
    }
}

static void assert_cmd(const chat_wire_cmd *want, const chat_wire_cmd *got)
{
    assert_int_equal(got->kind, want->kind);
    if (want->kind == CHAT_WIRE_READY) {
        assert_int_equal(got->ready.pid, want->ready.pid);
        assert_int_equal(got->ready.slots, want->ready.slots);
    } else if (want->kind == CHAT_WIRE_EV) {
        assert_event(&want->ev, &got->ev);
    } else if (want->kind == CHAT_WIRE_JOB) {
        assert_job(&want->job, &got->job);
    } else if (want->kind == CHAT_WIRE_CANCEL || want->kind == CHAT_WIRE_DETACH) {
        assert_true(got->job_id == want->job_id);
    } else if (want->kind == CHAT_WIRE_ATTACH) {
        const chat_wire_attach *w = &want->attach, *g = &got->attach;
        assert_true(g->job_id == w->job_id && g->last_seq == w->last_seq);
        assert_int_equal(g->flags, w->flags);
        assert_string_equal(g->session_id, w->session_id);
        assert_string_equal(g->user_id, w->user_id);
        assert_string_equal(g->answer_id, w->answer_id ? w->answer_id : "");
    } else if (want->kind == CHAT_WIRE_ATTACHED) {
        const chat_wire_attached *w = &want->attached, *g = &got->attached;
        assert_true(g->job_id == w->job_id && g->seq == w->seq && g->age_ms == w->age_ms && g->from == w->from);
        assert_true(g->cursor == w->cursor);
        assert_int_equal(g->status, w->status);
        assert_str(w->answer_id, g->answer_id);
        assert_str(w->text, g->text);
        assert_str(w->response, g->response);
        assert_str(w->session_id, g->session_id);
        assert_str(w->metadata_json, g->metadata_json);
    } /* HB, BYE, RESET carry nothing */
}

/* ---------------------------------------------------------------- every kind, both ways */

static const char BIN[] = {'a', '\0', 'b'}; /* a NUL inside a field survives: len is authoritative */
#define EMOJI "What is the engine power? \xF0\x9F\x9A\xA4"

typedef struct round_trip {
    const char *name;
    bool to_worker; /* sent by the broker's ROUTER to the worker, else by the worker's DEALER */
    chat_wire_cmd cmd;
    int n;                               /* parts on the wire, envelope excluded */
    chat_wire_str wire[CHAT_WIRE_MAX_PARTS]; /* exactly what travels */
} round_trip;

static const round_trip ROUND_TRIPS[] = {
    {"ready", false, {.kind = CHAT_WIRE_READY, .ready = {4242, 256}}, 4,
     {S("READY"), S(CHAT_WIRE_VERSION), S("4242"), S("256")}},
    {"hb from a worker", false, {.kind = CHAT_WIRE_HB}, 1, {S("HB")}},
    {"hb to a worker", true, {.kind = CHAT_WIRE_HB}, 1, {S("HB")}},
    {"bye", false, {.kind = CHAT_WIRE_BYE}, 1, {S("BYE")}},
    {"progress",
     false,
     {.kind = CHAT_WIRE_EV,
      .ev = {.job_id = 7, .kind = CHAT_WIRE_EV_PROGRESS, .progress = {S("rag_retrieval"), S("Searching...")}}},
     5,
     {S("EV"), S("7"), S("progress"), S("rag_retrieval"), S("Searching...")}},
    {"token",
     false,
     {.kind = CHAT_WIRE_EV, .ev = {.job_id = 7, .kind = CHAT_WIRE_EV_TOKEN, .token = {S("The engine "), S("")}}},
     5,
     {S("EV"), S("7"), S("token"), S("The engine "), S("")}},
    {"token pieces",
     false,
     {.kind = CHAT_WIRE_EV,
      .ev = {.job_id = 8, .kind = CHAT_WIRE_EV_TOKEN, .token = {S("The engine "), S("\4\0\0\0\7\0\0\0")}}},
     5,
     {S("EV"), S("8"), S("token"), S("The engine "), S("\4\0\0\0\7\0\0\0")}},
    {"complete",
     false,
     {.kind = CHAT_WIRE_EV,
      .ev = {.job_id = 99,
             .kind = CHAT_WIRE_EV_COMPLETE,
             .complete = {S("response text"), {BIN, 3}, S("{\"agent\":\"specs\"}")}}},
     6,
     {S("EV"), S("99"), S("complete"), S("response text"), {BIN, 3}, S("{\"agent\":\"specs\"}")}},
    {"complete, empty fields",
     false,
     {.kind = CHAT_WIRE_EV, .ev = {.job_id = 0, .kind = CHAT_WIRE_EV_COMPLETE, .complete = {S(""), S(""), S("")}}},
     6,
     {S("EV"), S("0"), S("complete"), S(""), S(""), S("")}},
    {"error",
     false,
     {.kind = CHAT_WIRE_EV,
      .ev = {.job_id = 18446744073709551615ull,
             .kind = CHAT_WIRE_EV_ERROR,
             .error = {S("PROCESSING_ERROR"), S("Error during message processing")}}},
     5,
     {S("EV"), S("18446744073709551615"), S("error"), S("PROCESSING_ERROR"), S("Error during message processing")}},
    {"job",
     true,
     {.kind = CHAT_WIRE_JOB,
      .job = {42, CHAT_WIRE_F_PARTIAL, "req-1", "alice", "a@example.com", "Alice", "sess-1", "cust-1001", EMOJI}},
     10,
     {S("JOB"), S("42"), S("1"), S("req-1"), S("alice"), S("a@example.com"), S("Alice"), S("sess-1"), S("cust-1001"),
      S(EMOJI)}},
    {"job, max id and empty optionals",
     true,
     {.kind = CHAT_WIRE_JOB, .job = {18446744073709551615ull, 0, "req-2", "bob", "", "", "", "", "x"}},
     10,
     {S("JOB"), S("18446744073709551615"), S("0"), S("req-2"), S("bob"), S(""), S(""), S(""), S(""), S("x")}},
    {"job, NULL optionals",
     true,
     {.kind = CHAT_WIRE_JOB, .job = {7, 0, NULL, "u", NULL, NULL, NULL, NULL, "quote \" and \\ and\nnewline"}},
     10,
     {S("JOB"), S("7"), S("0"), S(""), S("u"), S(""), S(""), S(""), S(""), S("quote \" and \\ and\nnewline")}},
    {"cancel", true, {.kind = CHAT_WIRE_CANCEL, .job_id = 12345}, 2, {S("CANCEL"), S("12345")}},
    {"reset", true, {.kind = CHAT_WIRE_RESET}, 1, {S("RESET")}},
    {"attach",
     true,
     {.kind = CHAT_WIRE_ATTACH, .attach = {77, CHAT_WIRE_A_CHECK_OWNER, "sess-1", "alice", "req-1", 12}},
     7,
     {S("ATTACH"), S("77"), S("1"), S("sess-1"), S("alice"), S("req-1"), S("12")}},
    {"attach to the session's latest answer",
     true,
     {.kind = CHAT_WIRE_ATTACH, .attach = {78, 0, "sess-1", "alice", NULL, 0}},
     7,
     {S("ATTACH"), S("78"), S("0"), S("sess-1"), S("alice"), S(""), S("0")}},
    {"attached in flight",
     false,
     {.kind = CHAT_WIRE_ATTACHED,
      .attached = {77, CHAT_WIRE_ATT_IN_FLIGHT, S("req-1"), 3, 1, 0, 4, S("The engine "), S(""), S(""), S("")}},
     12,
     {S("ATTACHED"), S("77"), S("in_flight"), S("req-1"), S("3"), S("1"), S("0"), S("4"), S("The engine "), S(""),
      S(""), S("")}},
    {"attached finished",
     false,
     {.kind = CHAT_WIRE_ATTACHED,
      .attached = {79, CHAT_WIRE_ATT_FINISHED, S("req-2"), 2, 3, 1500, 3, {BIN, 3}, {BIN, 3}, S("sess-1"),
                   S("{\"agent\":\"specs\"}")}},
     12,
     {S("ATTACHED"), S("79"), S("finished"), S("req-2"), S("2"), S("3"), S("1500"), S("3"), {BIN, 3}, {BIN, 3},
      S("sess-1"), S("{\"agent\":\"specs\"}")}},
    {"attached forbidden",
     false,
     {.kind = CHAT_WIRE_ATTACHED,
      .attached = {80, CHAT_WIRE_ATT_FORBIDDEN, S(""), 0, 0, 0, 0, S(""), S(""), S(""), S("")}},
     12,
     {S("ATTACHED"), S("80"), S("forbidden"), S(""), S("0"), S("0"), S("0"), S("0"), S(""), S(""), S(""), S("")}},
    {"detach", true, {.kind = CHAT_WIRE_DETACH, .job_id = 81}, 2, {S("DETACH"), S("81")}},
};

static void test_round_trip(void **state)
{
    fixture *f = *state;
    chat_wire_str to = S(WORKER_ID);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(ROUND_TRIPS); i++) {
        const round_trip *t = &ROUND_TRIPS[i];
        print_message("%s\n", t->name);
        if (t->to_worker) {
            assert_int_equal(chat_wire_send(f->router, &to, &t->cmd, 0), 0);
            assert_int_equal(chat_wire_recv(f->dealer, &f->m, 0), 0);
        } else if (t->cmd.kind == CHAT_WIRE_EV) { /* a worker's events have their own builder */
            assert_int_equal(chat_wire_send_event(f->dealer, &t->cmd.ev, 0), 0);
            assert_int_equal(chat_wire_recv(f->router, &f->m, 0), 0);
        } else {
            assert_int_equal(chat_wire_send(f->dealer, NULL, &t->cmd, 0), 0);
            assert_int_equal(chat_wire_recv(f->router, &f->m, 0), 0);
        }
        int env = t->to_worker ? 0 : 1; /* the ROUTER receives the sender's identity first */
        assert_int_equal(f->m.n, t->n + env);
        for (int k = 0; k < t->n; k++) assert_str(t->wire[k], (chat_wire_str){f->m.part[env + k], f->m.len[env + k]});

        chat_wire_cmd got;
        chat_wire_str from = {"junk", 4};
        char err[128] = "";
        assert_int_equal(chat_wire_parse(&f->m, t->to_worker ? NULL : &from, &got, err, sizeof err), 0);
        if (!t->to_worker) assert_str(to, from);
        assert_cmd(&t->cmd, &got);
    }
}

static void test_event_terminal(void **state)
{
    (void)state;
    assert_false(chat_wire_event_terminal(CHAT_WIRE_EV_PROGRESS));
    assert_false(chat_wire_event_terminal(CHAT_WIRE_EV_TOKEN));
    assert_true(chat_wire_event_terminal(CHAT_WIRE_EV_COMPLETE));
    assert_true(chat_wire_event_terminal(CHAT_WIRE_EV_ERROR));
    assert_false(chat_wire_event_terminal((chat_wire_event_kind)99));
}

/* ---------------------------------------------------------------- owned copies */

/* Fills m with another message, longer than any before, so its buffer moves and is overwritten. */
static void overwrite(fixture *f)
{
    static char big[64 * 1024];
    memset(big, 'z', sizeof big);
    chat_wire_str p[2] = {S("HB"), {big, sizeof big}};
    assert_int_equal(chat_wire_send_parts(f->a, p, 2, 0), 0);
    assert_int_equal(chat_wire_recv(f->b, &f->m, 0), 0);
}

/* Sends cmd over the PAIR and parses what arrives into *got (pointing into f->m). */
static void pass_over(fixture *f, const chat_wire_cmd *cmd, chat_wire_cmd *got)
{
    assert_int_equal(chat_wire_send(f->a, NULL, cmd, 0), 0);
    assert_int_equal(chat_wire_recv(f->b, &f->m, 0), 0);
    assert_int_equal(chat_wire_parse(&f->m, NULL, got, NULL, 0), 0);
}

static void test_owned_copies_outlive_message(void **state)
{
    fixture *f = *state;
    for (size_t i = 0; i < CHAT_ARRAY_LEN(ROUND_TRIPS); i++) {
        const round_trip *t = &ROUND_TRIPS[i];
        if (t->cmd.kind != CHAT_WIRE_JOB && t->cmd.kind != CHAT_WIRE_EV) continue;
        print_message("%s\n", t->name);
        chat_wire_cmd got;
        pass_over(f, &t->cmd, &got);
        chat_wire_job *job = t->cmd.kind == CHAT_WIRE_JOB ? chat_wire_job_dup(&got.job) : NULL;
        chat_wire_event *ev = t->cmd.kind == CHAT_WIRE_EV ? chat_wire_event_dup(&got.ev) : NULL;
        assert_true(job || ev);
        overwrite(f);
        chat_wire_msg_clear(&f->m);
        chat_wire_cmd copy = {.kind = t->cmd.kind};
        if (job)
            copy.job = *job;
        else
            copy.ev = *ev;
        assert_cmd(&t->cmd, &copy);
        pass_over(f, &copy, &got); /* the copy travels like the original */
        assert_cmd(&t->cmd, &got);
        chat_wire_job_free(job);
        chat_wire_event_free(ev);
    }
    chat_wire_job_free(NULL);
    chat_wire_event_free(NULL);
    /* a job built by hand (NULL fields) copies to "" fields */
    chat_wire_job spec = {.job_id = 5, .user_id = "u", .message = "m"};
    chat_wire_job *copy = chat_wire_job_dup(&spec);
    assert_non_null(copy);
    assert_job(&spec, copy);
    chat_wire_job_free(copy);
    chat_wire_event bad = {.kind = (chat_wire_event_kind)99};
    assert_null(chat_wire_event_dup(&bad));
}

/* ---------------------------------------------------------------- malformed messages */

typedef struct malformed {
    const char *name;
    bool enveloped; /* parsed as the ROUTER would (first part: identity) */
    int n;
    chat_wire_str parts[CHAT_WIRE_MAX_PARTS];
} malformed;

#define JOB_OK S("1"), S("0"), S("r"), S("u"), S(""), S(""), S(""), S(""), S("m")

static const malformed MALFORMED[] = {
    {"empty command", false, 1, {S("")}},
    {"unknown command", false, 1, {S("HELLO")}},
    {"command in lower case", false, 1, {S("hb")}},
    {"hb with a field", false, 2, {S("HB"), S("x")}},
    {"bye with a field", false, 2, {S("BYE"), S("x")}},
    {"reset with a field", false, 2, {S("RESET"), S("")}},
    {"cancel without id", false, 1, {S("CANCEL")}},
    {"cancel with empty id", false, 2, {S("CANCEL"), S("")}},
    {"cancel with negative id", false, 2, {S("CANCEL"), S("-1")}},
    {"cancel with junk after the id", false, 2, {S("CANCEL"), S("12a")}},
    {"cancel with id over uint64", false, 2, {S("CANCEL"), S("18446744073709551616")}},
    {"cancel with a space", false, 2, {S("CANCEL"), S(" 1")}},
    {"cancel with two ids", false, 3, {S("CANCEL"), S("1"), S("2")}},
    {"ready without pid", false, 2, {S("READY"), S(CHAT_WIRE_VERSION)}},
    {"ready of another version", false, 4, {S("READY"), S("chatwire/1"), S("1"), S("1")}},
    {"ready with bad pid", false, 4, {S("READY"), S(CHAT_WIRE_VERSION), S("p1"), S("1")}},
    {"ready with 0 slots", false, 4, {S("READY"), S(CHAT_WIRE_VERSION), S("1"), S("0")}},
    {"ready with too many slots", false, 4, {S("READY"), S(CHAT_WIRE_VERSION), S("1"), S("65537")}},
    {"ready with negative slots", false, 4, {S("READY"), S(CHAT_WIRE_VERSION), S("1"), S("-4")}},
    {"ready with empty slots", false, 4, {S("READY"), S(CHAT_WIRE_VERSION), S("1"), S("")}},
    {"ready with junk slots", false, 4, {S("READY"), S(CHAT_WIRE_VERSION), S("1"), S("8x")}},
    {"ready with a part too many", false, 5, {S("READY"), S(CHAT_WIRE_VERSION), S("1"), S("1"), S("1")}},
    {"ev without kind", false, 2, {S("EV"), S("1")}},
    {"ev with bad id", false, 5, {S("EV"), S("x"), S("token"), S("t"), S("")}},
    {"ev of an unknown kind", false, 5, {S("EV"), S("1"), S("tokens"), S("t"), S("")}},
    {"token without text", false, 3, {S("EV"), S("1"), S("token")}},
    {"token without piece lengths", false, 4, {S("EV"), S("1"), S("token"), S("t")}},
    {"token with a part too many", false, 6, {S("EV"), S("1"), S("token"), S("t"), S(""), S("u")}},
    {"token pieces short of the text", false, 5, {S("EV"), S("1"), S("token"), S("abc"), S("\2\0\0\0")}},
    {"token pieces beyond the text", false, 5, {S("EV"), S("1"), S("token"), S("abc"), S("\4\0\0\0")}},
    {"token piece of length 0", false, 5, {S("EV"), S("1"), S("token"), S("abc"), S("\0\0\0\0\3\0\0\0")}},
    {"token piece lengths cut", false, 5, {S("EV"), S("1"), S("token"), S("abc"), S("\3\0\0")}},
    {"progress without message", false, 4, {S("EV"), S("1"), S("progress"), S("generating")}},
    {"complete without metadata", false, 5, {S("EV"), S("1"), S("complete"), S("r"), S("s")}},
    {"error with a part too many", false, 6, {S("EV"), S("1"), S("error"), S("C"), S("m"), S("x")}},
    {"job with a part too few", false, 9, {S("JOB"), S("1"), S("0"), S("r"), S("u"), S(""), S(""), S(""), S("")}},
    {"job with a part too many", false, 11, {S("JOB"), JOB_OK, S("extra")}},
    {"job with bad id", false, 10, {S("JOB"), S("one"), S("0"), S("r"), S("u"), S(""), S(""), S(""), S(""), S("m")}},
    {"job with bad flags", false, 10, {S("JOB"), S("1"), S("-1"), S("r"), S("u"), S(""), S(""), S(""), S(""), S("m")}},
    {"job with flags over 32 bits",
     false,
     10,
     {S("JOB"), S("1"), S("4294967296"), S("r"), S("u"), S(""), S(""), S(""), S(""), S("m")}},
    {"job without user", false, 10, {S("JOB"), S("1"), S("0"), S("r"), S(""), S(""), S(""), S(""), S(""), S("m")}},
    {"job without message", false, 10, {S("JOB"), S("1"), S("0"), S("r"), S("u"), S(""), S(""), S(""), S(""), S("")}},
    {"attach with a part too few", false, 6, {S("ATTACH"), S("1"), S("0"), S("s"), S("u"), S("")}},
    {"attach without session", false, 7, {S("ATTACH"), S("1"), S("0"), S(""), S("u"), S(""), S("0")}},
    {"attach without user", false, 7, {S("ATTACH"), S("1"), S("0"), S("s"), S(""), S(""), S("0")}},
    {"attach with bad last_seq", false, 7, {S("ATTACH"), S("1"), S("0"), S("s"), S("u"), S(""), S("-1")}},
    {"attached of an unknown status",
     false,
     12,
     {S("ATTACHED"), S("1"), S("gone"), S(""), S("0"), S("0"), S("0"), S("0"), S(""), S(""), S(""), S("")}},
    {"attached from beyond the text",
     false,
     12,
     {S("ATTACHED"), S("1"), S("in_flight"), S(""), S("1"), S("0"), S("0"), S("4"), S("abc"), S(""), S(""), S("")}},
    {"attached cursor beyond the complete",
     false,
     12,
     {S("ATTACHED"), S("1"), S("in_flight"), S(""), S("1"), S("3"), S("0"), S("0"), S("abc"), S(""), S(""), S("")}},
    {"attached with a part too many",
     false,
     13,
     {S("ATTACHED"), S("1"), S("none"), S(""), S("0"), S("0"), S("0"), S("0"), S(""), S(""), S(""), S(""), S("")}},
    {"detach without id", false, 1, {S("DETACH")}},
    {"evs without a batch", false, 1, {S("EVS")}},
    {"evs with two batches", false, 3, {S("EVS"), S(""), S("")}},
    {"evs record head cut", false, 2, {S("EVS"), S("\1\0\0\0\0\0\0\0")}},
    {"evs of an unknown kind", false, 2, {S("EVS"), S("\1\0\0\0\0\0\0\0\7\0\0\0\0\0\0\0\0\0\0")}},
    {"evs field beyond the batch", false, 2, {S("EVS"), S("\1\0\0\0\0\0\0\0\1\5\0\0\0abc")}},
    {"evs field without its nul", false, 2, {S("EVS"), S("\1\0\0\0\0\0\0\0\1\1\0\0\0ab\0\0\0\0\0")}},
    {"evs record a field short", false, 2, {S("EVS"), S("\1\0\0\0\0\0\0\0\1\1\0\0\0a\0")}},
    {"evs token pieces short of the text",
     false,
     2,
     {S("EVS"), S("\1\0\0\0\0\0\0\0\1\3\0\0\0abc\0\4\0\0\0\2\0\0\0\0")}},
    {"evs second record malformed",
     false,
     2,
     {S("EVS"), S("\1\0\0\0\0\0\0\0\1\1\0\0\0a\0\0\0\0\0\0"
                  "\2\0\0\0\0\0\0\0\1\11\0\0\0b\0\0\0\0\0\0")}},
    {"envelope only", true, 1, {S(WORKER_ID)}},
    {"empty envelope", true, 2, {S(""), S("HB")}},
};

static void test_malformed(void **state)
{
    fixture *f = *state;
    /* the well-formed neighbours of the cases above pass, so each case fails for its own reason */
    chat_wire_str ok[] = {S("JOB"), JOB_OK};
    assert_int_equal(chat_wire_send_parts(f->a, ok, (int)CHAT_ARRAY_LEN(ok), 0), 0);
    assert_int_equal(chat_wire_recv(f->b, &f->m, 0), 0);
    chat_wire_cmd c;
    assert_int_equal(chat_wire_parse(&f->m, NULL, &c, NULL, 0), 0);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(MALFORMED); i++) {
        const malformed *t = &MALFORMED[i];
        print_message("%s\n", t->name);
        assert_int_equal(chat_wire_send_parts(f->a, t->parts, t->n, 0), 0);
        assert_int_equal(chat_wire_recv(f->b, &f->m, 0), 0);
        char err[128] = "";
        chat_wire_str from;
        assert_int_equal(chat_wire_parse(&f->m, t->enveloped ? &from : NULL, &c, err, sizeof err), CHAT_EINVAL);
        assert_true(err[0] != '\0'); /* a reason for the log */
    }
}

/* A token event's pieces: counted and measured as the worker encoded them; no lengths is one piece. */
static void test_token_pieces(void **state)
{
    (void)state;
    static const uint32_t lens[] = {4, 1, 70000, 3};
    unsigned char enc[4 * 4];
    for (size_t i = 0; i < 4; i++) chat_wire_token_piece_put(enc + 4 * i, lens[i]);
    chat_wire_event ev = {.kind = CHAT_WIRE_EV_TOKEN, .token = {S("x"), {(const char *)enc, sizeof enc}}};
    assert_int_equal(chat_wire_token_pieces(&ev), 4);
    for (size_t i = 0; i < 4; i++) assert_int_equal(chat_wire_token_piece_len(&ev.token.piece_lens, i), lens[i]);
    chat_wire_event one = {.kind = CHAT_WIRE_EV_TOKEN, .token = {S("The engine "), S("")}};
    assert_int_equal(chat_wire_token_pieces(&one), 1);
    chat_wire_event progress = {.kind = CHAT_WIRE_EV_PROGRESS};
    assert_int_equal(chat_wire_token_pieces(&progress), 0);
}

/* EVS: one message for events of several jobs, as a worker's flush builds it; the bytes on the wire are
 * pinned, and each record reads back as the EV it stands for, its fields NUL-terminated in place. */
static void test_events_batch(void **state)
{
    fixture *f = *state;
    unsigned char two[8];
    chat_wire_token_piece_put(two, 4);
    chat_wire_token_piece_put(two + 4, 2);
    const chat_wire_event evs[] = {
        {.job_id = 7, .kind = CHAT_WIRE_EV_TOKEN, .token = {S("The engine"), S("")}},
        {.job_id = 1ull << 40, .kind = CHAT_WIRE_EV_PROGRESS, .progress = {S("retrieving"), S("Searching")}},
        {.job_id = 9, .kind = CHAT_WIRE_EV_TOKEN, .token = {S("abcdef"), {(const char *)two, sizeof two}}},
        {.job_id = 9, .kind = CHAT_WIRE_EV_COMPLETE, .complete = {S("abcdef"), S("s-1"), S("{}")}},
        {.job_id = 3, .kind = CHAT_WIRE_EV_ERROR, .error = {S("OVERLOADED"), S("")}},
    };
    chat_buf batch;
    chat_buf_init(&batch);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(evs); i++) assert_int_equal(chat_wire_events_add(&batch, &evs[i]), 0);
    chat_wire_event bad = {.kind = (chat_wire_event_kind)99};
    size_t before = batch.len;
    assert_int_equal(chat_wire_events_add(&batch, &bad), CHAT_EINVAL);
    assert_int_equal(batch.len, before);
    static const char first[] = "\7\0\0\0\0\0\0\0\1\12\0\0\0The engine\0\0\0\0\0\0";
    assert_memory_equal(batch.data, first, sizeof first - 1);

    chat_wire_cmd cmd = {.kind = CHAT_WIRE_EVS, .events = {{batch.data, batch.len}, 0}};
    assert_int_equal(chat_wire_send(f->dealer, NULL, &cmd, 0), 0);
    assert_int_equal(chat_wire_recv(f->router, &f->m, 0), 0);
    chat_wire_cmd got;
    chat_wire_str from;
    char err[128] = "";
    assert_int_equal(chat_wire_parse(&f->m, &from, &got, err, sizeof err), 0);
    assert_int_equal(got.kind, CHAT_WIRE_EVS);
    assert_int_equal(got.events.count, CHAT_ARRAY_LEN(evs));
    size_t at = 0, n = 0;
    chat_wire_event ev;
    while (chat_wire_events_next(&got.events, &at, &ev)) {
        assert_true(n < CHAT_ARRAY_LEN(evs));
        assert_event(&evs[n], &ev);
        n++;
    }
    assert_int_equal(n, CHAT_ARRAY_LEN(evs));
    /* an empty batch is a valid message with no record */
    cmd.events.batch = (chat_wire_str){"", 0};
    assert_int_equal(chat_wire_send(f->dealer, NULL, &cmd, 0), 0);
    assert_int_equal(chat_wire_recv(f->router, &f->m, 0), 0);
    assert_int_equal(chat_wire_parse(&f->m, &from, &got, err, sizeof err), 0);
    at = 0;
    assert_int_equal(got.events.count, 0);
    assert_false(chat_wire_events_next(&got.events, &at, &ev));
    chat_buf_free(&batch);
}

static void test_ready_slots(void **state)
{
    fixture *f = *state;
    static const struct {
        const char *slots; /* NULL: no slots part */
        int want;
    } cases[] = {{NULL, 1}, {"1", 1}, {"256", 256}, {"65536", CHAT_WIRE_MAX_SLOTS}, {"007", 7}};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(cases); i++) {
        chat_wire_str p[4] = {S("READY"), S(CHAT_WIRE_VERSION), S("31337"), chat_wire_cstr(cases[i].slots)};
        assert_int_equal(chat_wire_send_parts(f->dealer, p, cases[i].slots ? 4 : 3, 0), 0);
        assert_int_equal(chat_wire_recv(f->router, &f->m, 0), 0);
        chat_wire_str from;
        chat_wire_cmd c;
        assert_int_equal(chat_wire_parse(&f->m, &from, &c, NULL, 0), 0);
        assert_int_equal(c.kind, CHAT_WIRE_READY);
        assert_int_equal(c.ready.pid, 31337);
        assert_int_equal(c.ready.slots, cases[i].want);
    }
}

static void test_limits(void **state)
{
    fixture *f = *state;
    chat_wire_str many[CHAT_WIRE_MAX_PARTS + 1];
    for (int i = 0; i <= CHAT_WIRE_MAX_PARTS; i++) many[i] = (chat_wire_str)S("x");
    assert_int_equal(chat_wire_send_parts(f->a, many, CHAT_WIRE_MAX_PARTS + 1, 0), 0);
    assert_int_equal(chat_wire_send(f->a, NULL, &(chat_wire_cmd){.kind = CHAT_WIRE_HB}, 0), 0);
    assert_int_equal(chat_wire_recv(f->b, &f->m, 0), CHAT_EINVAL); /* dropped whole ... */
    assert_int_equal(chat_wire_recv(f->b, &f->m, 0), 0);            /* ... and the next one is intact */
    chat_wire_cmd c;
    assert_int_equal(chat_wire_parse(&f->m, NULL, &c, NULL, 0), 0);
    assert_int_equal(c.kind, CHAT_WIRE_HB);
    assert_int_equal(chat_wire_recv(f->b, &f->m, ZMQ_DONTWAIT), CHAT_ETIMEOUT);
    /* nothing is sent for a kind the builder does not know */
    assert_int_equal(chat_wire_send(f->a, NULL, &(chat_wire_cmd){.kind = CHAT_WIRE_NONE}, 0), CHAT_EINVAL);
    chat_wire_event bad = {.kind = (chat_wire_event_kind)99};
    assert_int_equal(chat_wire_send_event(f->a, &bad, 0), CHAT_EINVAL);
    assert_int_equal(chat_wire_recv(f->b, &f->m, ZMQ_DONTWAIT), CHAT_ETIMEOUT);
}

TESTUTIL_MAIN(setup, teardown,
              cmocka_unit_test(test_round_trip),
              cmocka_unit_test(test_event_terminal),
              cmocka_unit_test(test_owned_copies_outlive_message),
              cmocka_unit_test(test_malformed),
              cmocka_unit_test(test_token_pieces),
              cmocka_unit_test(test_events_batch),
              cmocka_unit_test(test_ready_slots),
              cmocka_unit_test(test_limits))
