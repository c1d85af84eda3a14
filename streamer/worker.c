/* One chat-worker process: a DEALER to the streamer's broker, and a job thread running chat_pipeline.
 *
 * Design choices:
 * - Two threads. The main thread owns the DEALER and never blocks for long: it heartbeats every
 *   CHAT_WIRE_HEARTBEAT_MS even while a job runs, so the broker can tell a busy worker from a dead one,
 *   and it receives CANCEL while the pipeline is busy. The job thread owns the pipeline (one database
 *   connection, one LLM client) and runs one job at a time.
 * - ZeroMQ sockets belong to one thread, so the job thread does not write to the DEALER: it sends its
 *   events, already in wire format, on an inproc PAIR that the main thread forwards verbatim. A slow
 *   broker back-pressures the pipeline through the PAIR's high-water mark instead of growing a queue.
 * - After every run the job thread sends an internal DONE. If the pipeline ever returned without a
 *   terminal event, the main thread supplies a PROCESSING_ERROR, so the broker never waits forever.
 * - Paranoid Pirate on this side: a broker silent for CHAT_WIRE_DEAD_MS is presumed gone and the socket
 *   is recreated; one that answers RESET has restarted and does not know us. Either way READY is sent
 *   again once no job runs: a job in flight is cancelled first, its client was on the old broker.
 * - The pipeline's own "starting" progress is not forwarded: the streamer sent it when the message was
 *   accepted. Cancel both sets the pipeline's atomic flag and makes the token callback ask to stop. */
#include "worker.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_log.h"
#include "chat_pipeline.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "chat_wire.h"

#define EVENTS_ENDPOINT "inproc://chat-worker-events"
#define DONE_CMD "DONE"
#define TOKENS_CMD "TOK" /* tokens are waiting in the worker's token buffer */
#define STOP_GIVE_UP_MS 5000 /* after the grace period and a cancel, exit anyway */

typedef struct worker {
    chat_config cfg;
    void *zctx;
    chat_pipeline *pipeline;

    /* job hand-off, main -> job thread */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool has_job;
    bool quit;
    chat_wire_msg job_msg; /* the JOB message; job's strings point into it */
    chat_wire_job job;
    atomic_int cancel;

    /* main thread */
    bool busy;
    uint64_t job_id;
    bool terminal_sent;
    int64_t job_started_ms;
    /* The broker counts a worker free at the terminal event, which the job thread's DONE follows a
     * moment later: a JOB arriving in between waits here and starts on DONE. */
    chat_wire_msg next_msg;
    bool has_next;

    /* Tokens, job thread -> main thread. The job thread appends and wakes the main thread only when the
     * buffer was empty; the main thread sends everything waiting as one event. A model that streams
     * slowly gets one event per token; a fast one gets batches, with no timer and no added latency. */
    pthread_mutex_t tok_mu;
    chat_buf tok_buf;
} worker;

typedef struct sink_ctx {
    worker *w;
    void *pair;
    uint64_t job_id;
    atomic_int *cancel;
} sink_ctx;

/* ---------------------------------------------------------------- job thread */

static chat_wire_part part(const char *s)
{
    return (chat_wire_part){s ? s : "", s ? strlen(s) : 0};
}

static void on_progress(void *ud, const char *step, const char *message)
{
    sink_ctx *c = ud;
    if (!strcmp(step, "starting")) return; /* the streamer sent it already */
    chat_wire_part f[2] = {part(step), part(message)};
    chat_wire_send_event(c->pair, c->job_id, CHAT_WIRE_EV_PROGRESS, f, 2, 0);
}

static int on_token(void *ud, const char *text, size_t len)
{
    sink_ctx *c = ud;
    pthread_mutex_lock(&c->w->tok_mu);
    bool was_empty = c->w->tok_buf.len == 0;
    int rc = chat_buf_append(&c->w->tok_buf, text, len);
    pthread_mutex_unlock(&c->w->tok_mu);
    if (rc) return 1;
    if (was_empty) {
        char id[24];
        snprintf(id, sizeof id, "%" PRIu64, c->job_id);
        chat_wire_send_cmd(c->pair, NULL, 0, TOKENS_CMD, id, 0);
    }
    return atomic_load(c->cancel) ? 1 : 0;
}

static void on_complete(void *ud, const char *response, const char *session_id, const char *metadata_json)
{
    sink_ctx *c = ud;
    chat_wire_part f[3] = {part(response), part(session_id), part(metadata_json)};
    chat_wire_send_event(c->pair, c->job_id, CHAT_WIRE_EV_COMPLETE, f, 3, 0);
}

static void on_error(void *ud, const char *code, const char *message)
{
    sink_ctx *c = ud;
    chat_wire_part f[2] = {part(code), part(message)};
    chat_wire_send_event(c->pair, c->job_id, CHAT_WIRE_EV_ERROR, f, 2, 0);
}

static void *job_thread(void *arg)
{
    worker *w = arg;
    void *pair = zmq_socket(w->zctx, ZMQ_PAIR);
    int hwm = 10000;
    if (pair) zmq_setsockopt(pair, ZMQ_SNDHWM, &hwm, sizeof hwm);
    if (!pair || zmq_connect(pair, EVENTS_ENDPOINT)) {
        chat_log_error("worker: job thread cannot reach the main thread: %s", zmq_strerror(errno));
        if (pair) zmq_close(pair);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&w->mu);
        while (!w->has_job && !w->quit)
            pthread_cond_wait(&w->cv, &w->mu);
        if (w->quit) {
            pthread_mutex_unlock(&w->mu);
            break;
        }
        chat_wire_job job = w->job; /* job_msg stays untouched until DONE is seen */
        pthread_mutex_unlock(&w->mu);

        chat_user user;
        memset(&user, 0, sizeof user);
        snprintf(user.id, sizeof user.id, "%s", job.user_id);
        snprintf(user.email, sizeof user.email, "%s", job.user_email);
        snprintf(user.name, sizeof user.name, "%s", job.user_name);
        chat_request req = {
            .message = job.message,
            .session_id = job.session_id[0] ? job.session_id : NULL,
            .customer_id = job.customer_id[0] ? job.customer_id : NULL,
            .user = &user,
            .request_id = job.request_id[0] ? job.request_id : NULL,
        };
        sink_ctx c = {.w = w, .pair = pair, .job_id = job.job_id, .cancel = &w->cancel};
        chat_sink sink = {
            .ud = &c, .progress = on_progress, .token = on_token, .complete = on_complete, .error = on_error};
        int rc = chat_pipeline_run(w->pipeline, &req, &sink, &w->cancel);
        if (rc) chat_log_debug("worker: job %" PRIu64 " ended with %s", job.job_id, chat_strerror(rc));

        pthread_mutex_lock(&w->mu);
        w->has_job = false;
        pthread_mutex_unlock(&w->mu);
        char id[24];
        snprintf(id, sizeof id, "%" PRIu64, job.job_id);
        chat_wire_send_cmd(pair, NULL, 0, DONE_CMD, id, 0);
    }
    zmq_close(pair);
    return NULL;
}

/* ---------------------------------------------------------------- main thread */

static void *dealer_open(worker *w)
{
    void *d = zmq_socket(w->zctx, ZMQ_DEALER);
    if (!d) return NULL;
    int zero = 0, hwm = 100000, ivl = 100, ivl_max = 1000;
    zmq_setsockopt(d, ZMQ_LINGER, &zero, sizeof zero);
    zmq_setsockopt(d, ZMQ_SNDHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d, ZMQ_RCVHWM, &hwm, sizeof hwm);
    zmq_setsockopt(d, ZMQ_RECONNECT_IVL, &ivl, sizeof ivl);
    zmq_setsockopt(d, ZMQ_RECONNECT_IVL_MAX, &ivl_max, sizeof ivl_max);
    if (zmq_connect(d, w->cfg.zmq_endpoint)) {
        chat_log_error("worker: cannot connect to %s: %s", w->cfg.zmq_endpoint, zmq_strerror(errno));
        zmq_close(d);
        return NULL;
    }
    return d;
}

static void send_ready(void *dealer)
{
    char pid[16];
    snprintf(pid, sizeof pid, "%d", (int)getpid());
    chat_wire_part p[3] = {part(CHAT_WIRE_READY), part(CHAT_WIRE_VERSION), part(pid)};
    chat_wire_send(dealer, p, 3, ZMQ_DONTWAIT);
}

static void send_job_error(void *dealer, uint64_t id, const char *code, const char *message)
{
    chat_wire_part f[2] = {part(code), part(message)};
    chat_wire_send_event(dealer, id, CHAT_WIRE_EV_ERROR, f, 2, ZMQ_DONTWAIT);
}

/* A JOB from the broker: hand it to the job thread (the message buffer moves with it). */
static void start_job(worker *w, void *dealer, chat_wire_msg *m, bool stopping)
{
    chat_wire_job job;
    if (chat_wire_parse_job(m, 0, &job)) {
        chat_log_warn("worker: malformed JOB ignored");
        return;
    }
    if (w->busy && w->terminal_sent && !w->has_next && !stopping) {
        chat_wire_msg tmp = w->next_msg;
        w->next_msg = *m;
        *m = tmp;
        w->has_next = true;
        return;
    }
    if (w->busy || stopping) { /* the broker should never do this; answer rather than strand the client */
        send_job_error(dealer, job.job_id, CHAT_CODE_OVERLOADED, "The worker is busy, please retry");
        return;
    }
    pthread_mutex_lock(&w->mu);
    chat_wire_msg tmp = w->job_msg;
    w->job_msg = *m;
    *m = tmp;
    chat_wire_parse_job(&w->job_msg, 0, &w->job);
    atomic_store(&w->cancel, 0);
    w->has_job = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    w->busy = true;
    w->job_id = job.job_id;
    w->terminal_sent = false;
    w->job_started_ms = chat_now_ms();
    chat_log_debug("worker: job %" PRIu64 " started", job.job_id);
}

static void handle_broker(worker *w, void *dealer, chat_wire_msg *m, bool stopping, bool *reset)
{
    if (chat_wire_is(m, 0, CHAT_WIRE_HB)) return;
    if (chat_wire_is(m, 0, CHAT_WIRE_JOB)) {
        start_job(w, dealer, m, stopping);
        return;
    }
    if (chat_wire_is(m, 0, CHAT_WIRE_CANCEL)) {
        uint64_t id;
        if (!chat_wire_u64(m, 1, &id) && w->busy && id == w->job_id) {
            atomic_store(&w->cancel, 1);
            chat_log_debug("worker: job %" PRIu64 " cancelled", id);
        }
        return;
    }
    if (chat_wire_is(m, 0, CHAT_WIRE_RESET)) *reset = true;
}

/* Sends the tokens waiting in the buffer as one event (main thread). */
static void flush_tokens(worker *w, void *dealer, uint64_t job_id)
{
    chat_buf out;
    pthread_mutex_lock(&w->tok_mu);
    out = w->tok_buf;
    chat_buf_init(&w->tok_buf);
    pthread_mutex_unlock(&w->tok_mu);
    if (out.len) {
        chat_wire_part f[1] = {{out.data, out.len}};
        /* Blocking send: at the high-water mark the pipeline waits rather than losing a token. */
        if (chat_wire_send_event(dealer, job_id, CHAT_WIRE_EV_TOKEN, f, 1, 0))
            chat_log_warn("worker: tokens not sent: %s", zmq_strerror(errno));
    }
    chat_buf_free(&out);
}

/* An event from the job thread: forward it, note terminal events, finish on DONE. */
static void handle_job_event(worker *w, void *dealer, chat_wire_msg *m)
{
    if (chat_wire_is(m, 0, TOKENS_CMD)) {
        uint64_t id = 0;
        chat_wire_u64(m, 1, &id);
        flush_tokens(w, dealer, id);
        return;
    }
    if (chat_wire_is(m, 0, DONE_CMD)) {
        uint64_t id = 0;
        chat_wire_u64(m, 1, &id);
        flush_tokens(w, dealer, id);
        if (!w->terminal_sent) {
            chat_log_error("worker: the pipeline ended job %" PRIu64 " without a terminal event", id);
            send_job_error(dealer, id, CHAT_CODE_PROCESSING_ERROR, "Error during message processing");
        }
        chat_log_info("worker: job %" PRIu64 " done in %" PRId64 " ms%s", id, chat_now_ms() - w->job_started_ms,
                      atomic_load(&w->cancel) ? " (cancelled)" : "");
        w->busy = false;
        w->job_id = 0;
        if (w->has_next) {
            w->has_next = false;
            start_job(w, dealer, &w->next_msg, false);
        }
        return;
    }
    /* EV job_id kind ...: the kind is part 2 here (the broker sees it at 3, after the envelope). */
    if (chat_wire_is(m, 2, CHAT_WIRE_EV_COMPLETE) || chat_wire_is(m, 2, CHAT_WIRE_EV_ERROR)) {
        w->terminal_sent = true;
        flush_tokens(w, dealer, w->job_id); /* nothing may follow the terminal event */
    }
    chat_wire_part p[CHAT_WIRE_MAX_PARTS];
    for (int i = 0; i < m->n; i++)
        p[i] = (chat_wire_part){m->part[i], m->len[i]};
    /* Blocking send: at the high-water mark the pipeline waits rather than losing a token. */
    if (chat_wire_send(dealer, p, m->n, 0)) chat_log_warn("worker: event not sent: %s", zmq_strerror(errno));
}

int worker_run(const chat_config *cfg, chat_pipeline_pool *pool, volatile sig_atomic_t *stop)
{
    worker *w = calloc(1, sizeof *w);
    if (!w) return 1;
    int rc = 1;
    void *pair = NULL, *dealer = NULL;
    pthread_t thread;
    bool thread_started = false;
    chat_wire_msg m;
    chat_wire_msg_init(&m);
    w->cfg = *cfg;
    pthread_mutex_init(&w->mu, NULL);
    pthread_mutex_init(&w->tok_mu, NULL);
    chat_buf_init(&w->tok_buf);
    pthread_cond_init(&w->cv, NULL);
    chat_wire_msg_init(&w->job_msg);
    chat_wire_msg_init(&w->next_msg);

    char err[256];
    w->pipeline = chat_pipeline_new_pooled(cfg, pool, err, sizeof err);
    if (!w->pipeline) {
        chat_log_error("worker: %s", err);
        goto out;
    }
    w->zctx = zmq_ctx_new();
    if (!w->zctx) goto out;
    pair = zmq_socket(w->zctx, ZMQ_PAIR);
    if (!pair || zmq_bind(pair, EVENTS_ENDPOINT)) {
        chat_log_error("worker: inproc socket: %s", zmq_strerror(errno));
        goto out;
    }
    if (pthread_create(&thread, NULL, job_thread, w)) goto out;
    thread_started = true;
    dealer = dealer_open(w);
    if (!dealer) goto out;
    send_ready(dealer);
    chat_log_info("worker: ready, connected to %s", cfg->zmq_endpoint);

    int64_t now = chat_now_ms(), last_broker = now, next_hb = now + CHAT_WIRE_HEARTBEAT_MS;
    int64_t stop_at = 0;
    bool bye_sent = false, cancelled_for_stop = false, announce = false;
    for (;;) {
        now = chat_now_ms();
        if (*stop && !stop_at) stop_at = now;
        if (stop_at) {
            if (!bye_sent) {
                chat_wire_send_cmd(dealer, NULL, 0, CHAT_WIRE_BYE, NULL, ZMQ_DONTWAIT);
                bye_sent = true;
                chat_log_info("worker: stopping%s", w->busy ? " after the job in flight" : "");
            }
            if (!w->busy) break;
            int64_t grace = (int64_t)cfg->shutdown_grace_s * 1000;
            if (!cancelled_for_stop && now - stop_at >= grace) {
                chat_log_warn("worker: grace period over, cancelling job %" PRIu64, w->job_id);
                atomic_store(&w->cancel, 1);
                cancelled_for_stop = true;
            }
            if (now - stop_at >= grace + STOP_GIVE_UP_MS) {
                chat_log_error("worker: job %" PRIu64 " did not stop, exiting anyway", w->job_id);
                break;
            }
        }
        long timeout = next_hb > now ? (long)(next_hb - now) : 0;
        if (stop_at && timeout > 100) timeout = 100;
        zmq_pollitem_t items[2] = {{dealer, 0, ZMQ_POLLIN, 0}, {pair, 0, ZMQ_POLLIN, 0}};
        if (zmq_poll(items, 2, timeout) < 0 && errno != EINTR) {
            chat_log_error("worker: zmq_poll: %s", zmq_strerror(errno));
            break;
        }
        now = chat_now_ms();
        bool reset = false;
        while (chat_wire_recv(dealer, &m, ZMQ_DONTWAIT) == 0) {
            last_broker = now;
            handle_broker(w, dealer, &m, stop_at != 0, &reset);
        }
        while (chat_wire_recv(pair, &m, ZMQ_DONTWAIT) == 0)
            handle_job_event(w, dealer, &m);
        /* A silent broker: new socket (new identity). RESET: the broker restarted and does not know us.
         * Either way announce again, but only once idle, so that no job is offered while one still runs:
         * the job in flight is cancelled, its client was on the old broker. */
        if (now - last_broker > CHAT_WIRE_DEAD_MS) {
            chat_log_warn("worker: the broker is silent, reconnecting");
            zmq_close(dealer);
            dealer = dealer_open(w);
            if (!dealer) break;
            last_broker = now;
            announce = true;
        } else if (reset && !announce) {
            chat_log_warn("worker: the broker does not know us (restarted?), announcing again");
            announce = true;
        }
        if (announce && w->busy) {
            atomic_store(&w->cancel, 1);
        } else if (announce) {
            if (bye_sent)
                chat_wire_send_cmd(dealer, NULL, 0, CHAT_WIRE_BYE, NULL, ZMQ_DONTWAIT);
            else
                send_ready(dealer);
            announce = false;
        }
        if (now >= next_hb) {
            chat_wire_send_cmd(dealer, NULL, 0, CHAT_WIRE_HB, NULL, ZMQ_DONTWAIT);
            next_hb = now + CHAT_WIRE_HEARTBEAT_MS;
        }
    }
    rc = 0;
out:
    if (thread_started) {
        pthread_mutex_lock(&w->mu);
        w->quit = true;
        atomic_store(&w->cancel, 1);
        pthread_cond_signal(&w->cv);
        pthread_mutex_unlock(&w->mu);
        /* A job still running after the give-up delay holds the thread; do not wait for it. */
        if (!w->busy)
            pthread_join(thread, NULL);
        else
            pthread_detach(thread);
    }
    if (dealer) zmq_close(dealer);
    if (pair) zmq_close(pair);
    chat_wire_msg_clear(&m);
    if (!thread_started || !w->busy) {
        if (w->zctx) zmq_ctx_term(w->zctx);
        chat_pipeline_free(w->pipeline);
        chat_wire_msg_clear(&w->job_msg);
        chat_wire_msg_clear(&w->next_msg);
        pthread_cond_destroy(&w->cv);
        pthread_mutex_destroy(&w->mu);
        pthread_mutex_destroy(&w->tok_mu);
        chat_buf_free(&w->tok_buf);
        free(w);
    }
    return rc;
}
