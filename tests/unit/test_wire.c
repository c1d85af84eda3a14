/* The ZeroMQ wire format between broker and workers, over a real inproc socket pair: jobs round-trip
 * field by field (empty and binary fields included), events keep their parts, commands parse, and
 * messages over the part or byte limits are dropped whole without desynchronising the stream. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <string.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_wire.h"

typedef struct pair {
    void *ctx, *a, *b;
} pair;

static int setup(void **state)
{
    static pair p;
    p.ctx = zmq_ctx_new();
    p.a = zmq_socket(p.ctx, ZMQ_PAIR);
    p.b = zmq_socket(p.ctx, ZMQ_PAIR);
    int t = 2000;
    zmq_setsockopt(p.b, ZMQ_RCVTIMEO, &t, sizeof t);
    assert_int_equal(zmq_bind(p.a, "inproc://test-wire"), 0);
    assert_int_equal(zmq_connect(p.b, "inproc://test-wire"), 0);
    *state = &p;
    return 0;
}

static int teardown(void **state)
{
    pair *p = *state;
    zmq_close(p->a);
    zmq_close(p->b);
    zmq_ctx_term(p->ctx);
    return 0;
}

static void test_job_round_trip(void **state)
{
    pair *p = *state;
    static const chat_wire_job jobs[] = {
        {42, CHAT_WIRE_F_PARTIAL, "req-1", "alice", "a@example.com", "Alice", "sess-1", "cust-1001",
         "What is the engine power? \xF0\x9F\x9A\xA4"},
        {18446744073709551615ull, 0, "req-2", "bob", "", "", "", "", "x"}, /* max id, empty optionals */
        {7, 0, "r", "u", NULL, NULL, NULL, NULL, "quote \" and \\ and\nnewline"},
    };
    chat_wire_msg m;
    chat_wire_msg_init(&m);
    for (size_t i = 0; i < CHAT_ARRAY_LEN(jobs); i++) {
        assert_int_equal(chat_wire_send_job(p->a, NULL, 0, &jobs[i], 0), 0);
        assert_int_equal(chat_wire_recv(p->b, &m, 0), 0);
        assert_true(chat_wire_is(&m, 0, CHAT_WIRE_JOB));
        chat_wire_job j;
        assert_int_equal(chat_wire_parse_job(&m, 0, &j), 0);
        assert_true(j.job_id == jobs[i].job_id);
        assert_int_equal(j.flags, jobs[i].flags);
        assert_string_equal(j.request_id, jobs[i].request_id);
        assert_string_equal(j.user_id, jobs[i].user_id);
        assert_string_equal(j.user_email ? j.user_email : "", jobs[i].user_email ? jobs[i].user_email : "");
        assert_string_equal(j.session_id ? j.session_id : "", jobs[i].session_id ? jobs[i].session_id : "");
        assert_string_equal(j.customer_id ? j.customer_id : "", jobs[i].customer_id ? jobs[i].customer_id : "");
        assert_string_equal(j.message, jobs[i].message);
    }
    chat_wire_msg_clear(&m);
}

static void test_events_and_commands(void **state)
{
    pair *p = *state;
    chat_wire_msg m;
    chat_wire_msg_init(&m);
    const char bin[] = {'a', '\0', 'b'}; /* a NUL inside a field survives: len is authoritative */
    chat_wire_part f[3] = {{"response text", 13}, {bin, 3}, {"{\"agent\":\"specs\"}", 17}};
    assert_int_equal(chat_wire_send_event(p->a, 99, CHAT_WIRE_EV_COMPLETE, f, 3, 0), 0);
    assert_int_equal(chat_wire_recv(p->b, &m, 0), 0);
    assert_int_equal(m.n, 6);
    assert_true(chat_wire_is(&m, 0, CHAT_WIRE_EVENT));
    uint64_t id = 0;
    assert_int_equal(chat_wire_u64(&m, 1, &id), 0);
    assert_true(id == 99);
    assert_true(chat_wire_is(&m, 2, CHAT_WIRE_EV_COMPLETE));
    assert_int_equal(m.len[4], 3);
    assert_memory_equal(m.part[4], bin, 3);
    assert_int_equal(chat_wire_send_cmd(p->a, NULL, 0, CHAT_WIRE_CANCEL, "12345", 0), 0);
    assert_int_equal(chat_wire_recv(p->b, &m, 0), 0);
    assert_true(chat_wire_is(&m, 0, CHAT_WIRE_CANCEL));
    assert_int_equal(chat_wire_u64(&m, 1, &id), 0);
    assert_true(id == 12345);
    assert_false(chat_wire_is(&m, 5, CHAT_WIRE_CANCEL)); /* no such part */
    static const char *const bad_ids[] = {"", "-1", "12a", "18446744073709551616", " 1"};
    for (size_t i = 0; i < CHAT_ARRAY_LEN(bad_ids); i++) {
        assert_int_equal(chat_wire_send_cmd(p->a, NULL, 0, CHAT_WIRE_CANCEL, bad_ids[i], 0), 0);
        assert_int_equal(chat_wire_recv(p->b, &m, 0), 0);
        assert_int_equal(chat_wire_u64(&m, 1, &id), CHAT_EINVAL);
    }
    /* a malformed JOB (too few parts) is refused */
    assert_int_equal(chat_wire_send_cmd(p->a, NULL, 0, CHAT_WIRE_JOB, "1", 0), 0);
    assert_int_equal(chat_wire_recv(p->b, &m, 0), 0);
    chat_wire_job j;
    assert_int_equal(chat_wire_parse_job(&m, 0, &j), CHAT_EINVAL);
    chat_wire_msg_clear(&m);
}

static void test_limits(void **state)
{
    pair *p = *state;
    chat_wire_msg m;
    chat_wire_msg_init(&m);
    chat_wire_part many[CHAT_WIRE_MAX_PARTS + 1];
    for (int i = 0; i <= CHAT_WIRE_MAX_PARTS; i++) many[i] = (chat_wire_part){"x", 1};
    assert_int_equal(chat_wire_send(p->a, many, CHAT_WIRE_MAX_PARTS + 1, 0), 0);
    assert_int_equal(chat_wire_send_cmd(p->a, NULL, 0, CHAT_WIRE_HB, NULL, 0), 0);
    assert_int_equal(chat_wire_recv(p->b, &m, 0), CHAT_EINVAL); /* dropped whole ... */
    assert_int_equal(chat_wire_recv(p->b, &m, 0), 0);            /* ... and the next one is intact */
    assert_true(chat_wire_is(&m, 0, CHAT_WIRE_HB));
    assert_int_equal(chat_wire_recv(p->b, &m, ZMQ_DONTWAIT), CHAT_ETIMEOUT);
    chat_wire_msg_clear(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_job_round_trip),
        cmocka_unit_test(test_events_and_commands),
        cmocka_unit_test(test_limits),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
