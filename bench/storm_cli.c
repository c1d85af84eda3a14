/* chat-storm: the reconnect storm. N streaming clients, each its own user, ask a question; once every
 * answer is streaming (each client holds at least --drop-after token frames, or --drop-by seconds
 * passed), every TCP connection is dropped at once, without a close frame, as when a proxy or a
 * streamer dies. Each client then reconnects, authenticates, resumes its conversation from the last seq it
 * received ({"type":"resume",...}), and reads until its complete. Reports how long until every client
 * had its answer, and how many answers were lost (no complete within --timeout) or not exactly once
 * (the text received before and after the drop is not the complete's response: a duplicate or a gap).
 *
 * Design: T threads (--threads), each owning N/T clients in a poll loop over the blocking client of
 * tools/wsclient.c (chat_wsc_recv with timeout 0 after poll says readable). Every client connects and
 * authenticates first, then all ask at once, so that all N answers stream together when the drop comes
 * (the server needs N free worker slots: CHAT_WORKERS x CHAT_WORKER_SLOTS). Reconnects, auths and resumes
 * are done one after another within a thread, T at a time across threads: the resume wave takes as long
 * as a real one from T places, not an idealised burst. The phases meet at barriers; the main thread only
 * decides when to drop and prints the report.
 *
 * Not measured here: that each turn is stored once (the e2e tests check it per scenario; a benchmark
 * has no database access of its own). */
#include <errno.h>
#include <json-c/json.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench_stats.h"
#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "cli.h"
#include "wsclient.h"

enum { C_NEW, C_STREAMING, C_DONE_EARLY, C_RESUMING, C_DONE, C_FAILED };

typedef struct client {
    chat_wsc *ws;
    int state;
    int resume_tries;
    char session_id[CHAT_ID_MAX + 1], answer_id[CHAT_ID_MAX + 1];
    unsigned long long seq; /* the last token's */
    unsigned frames;        /* token frames received */
    chat_buf text;          /* every token's text, before and after the drop */
    int64_t done_us;
    bool duplicated, gap;
    char why[48];
} client;

typedef struct storm {
    const char *url, *resume_url, *secret, *question; /* resume_url: where clients reconnect */
    long conns;
    int threads, drop_after;
    double drop_by, timeout;
    client *c;
    pthread_barrier_t bar;
    atomic_long streaming; /* clients with at least drop_after token frames (or done) */
    atomic_int drop;       /* set by the main thread: drop every connection now */
    int64_t t_drop_us;
} storm;

typedef struct worker_arg {
    storm *s;
    long first, count;
} worker_arg;

static void fail(client *c, const char *why)
{
    c->state = C_FAILED;
    snprintf(c->why, sizeof c->why, "%s", why);
}

static const char *jstr(json_object *o, const char *k)
{
    json_object *v;
    return json_object_object_get_ex(o, k, &v) && json_object_is_type(v, json_type_string) ? json_object_get_string(v)
                                                                                             : NULL;
}

/* The ids the answer's frames carry. */
static void note_ids(client *c, json_object *o)
{
    const char *sid = jstr(o, "session_id"), *aid = jstr(o, "answer_id");
    if (sid) snprintf(c->session_id, sizeof c->session_id, "%s", sid);
    if (aid) snprintf(c->answer_id, sizeof c->answer_id, "%s", aid);
}

/* One server frame for a client that is streaming or resuming. */
static void on_frame(storm *s, client *c, json_object *o)
{
    const char *type = jstr(o, "type");
    if (!type) return fail(c, "frame without a type");
    note_ids(c, o);
    if (!strcmp(type, "token")) {
        json_object *seq;
        unsigned long long n =
            json_object_object_get_ex(o, "seq", &seq) ? (unsigned long long)json_object_get_int64(seq) : 0;
        if (n && n <= c->seq) c->duplicated = true; /* a piece seen already */
        if (n) c->seq = n;
        chat_buf_puts(&c->text, jstr(o, "token") ? jstr(o, "token") : "");
        if (++c->frames == (unsigned)s->drop_after && c->state == C_STREAMING) atomic_fetch_add(&s->streaming, 1);
    } else if (!strcmp(type, "complete")) {
        const char *resp = jstr(o, "response");
        if (!resp) return fail(c, "complete without a response");
        size_t got = c->text.len, want = strlen(resp);
        if (got != want || memcmp(c->text.data ? c->text.data : "", resp, want)) {
            if (got > want) c->duplicated = true;
            else c->gap = true;
        }
        c->done_us = chat_now_us();
        if (c->state == C_STREAMING) {
            if ((unsigned)s->drop_after > c->frames) atomic_fetch_add(&s->streaming, 1);
            c->state = C_DONE_EARLY;
        } else {
            c->state = C_DONE;
        }
    } else if (!strcmp(type, "error")) {
        const char *code = jstr(o, "code");
        if (c->state == C_RESUMING && code && !strcmp(code, "OVERLOADED") && ++c->resume_tries < 20) {
            usleep(50000); /* no worker can answer yet: ask again, as chat-client.js does */
            char *f = chat_proto_client_resume(c->session_id, c->seq, c->answer_id[0] ? c->answer_id : NULL);
            if (!f || chat_wsc_send_text(c->ws, f, strlen(f))) fail(c, "resume send failed");
            free(f);
            return;
        }
        fail(c, code ? code : "error");
        if (c->state == C_FAILED && s->drop == 0) atomic_fetch_add(&s->streaming, 1);
    } /* progress, resumed, user_message: nothing to count */
}

/* Connects to url and authenticates c; 0, or -1 with c failed. */
static int open_client(storm *s, client *c, long i, const char *url)
{
    char err[256];
    int status = 0;
    chat_wsc_opts wo = {0};
    c->ws = chat_wsc_connect(url, &wo, &status, err, sizeof err);
    if (!c->ws) return fail(c, "connect failed"), -1;
    char sub[48], email[80];
    snprintf(sub, sizeof sub, "storm-user-%ld", i);
    snprintf(email, sizeof email, "storm-user-%ld@bench.example", i);
    char *tok = chat_jwt_mint_hs256(s->secret, sub, email, "Storm User", time(NULL), 3600);
    char *auth = tok ? chat_proto_client_auth(tok) : NULL;
    json_object *o = NULL;
    int rc = auth && !chat_wsc_send_text(c->ws, auth, strlen(auth)) ? chat_wsc_recv_type(c->ws, 30000, "auth_success", &o)
                                                                     : CHAT_ERR;
    json_object_put(o);
    free(auth);
    free(tok);
    if (rc) return fail(c, "auth failed"), -1;
    return 0;
}

/* Reads what is readable on every open client of [first, first+count) for up to ms. */
static void pump(storm *s, client *cs, long count, int ms)
{
    struct pollfd *p = calloc((size_t)count, sizeof *p);
    long *idx = calloc((size_t)count, sizeof *idx);
    if (!p || !idx) goto out;
    nfds_t n = 0;
    for (long i = 0; i < count; i++) {
        client *c = &cs[i];
        if (c->state != C_STREAMING && c->state != C_RESUMING) continue;
        p[n].fd = chat_wsc_fd(c->ws);
        p[n].events = POLLIN;
        idx[n++] = i;
    }
    if (!n) {
        usleep((useconds_t)ms * 1000);
        goto out;
    }
    if (poll(p, n, ms) <= 0) goto out;
    for (nfds_t k = 0; k < n; k++) {
        if (!p[k].revents) continue;
        client *c = &cs[idx[k]];
        for (;;) {
            json_object *o = NULL;
            int rc = chat_wsc_recv_json(c->ws, 0, &o);
            if (rc == CHAT_ETIMEOUT) break;
            if (rc == CHAT_EINVAL) continue;
            if (rc) {
                if (!s->drop || c->state == C_RESUMING) fail(c, "connection lost");
                break;
            }
            on_frame(s, c, o);
            json_object_put(o);
            if (c->state != C_STREAMING && c->state != C_RESUMING) break;
        }
    }
out:
    free(p);
    free(idx);
}

static bool any_active(const client *cs, long count, int state)
{
    for (long i = 0; i < count; i++)
        if (cs[i].state == state) return true;
    return false;
}

static void *worker_main(void *arg)
{
    worker_arg *w = arg;
    storm *s = w->s;
    client *cs = s->c + w->first;
    for (long i = 0; i < w->count; i++) /* phase 1: connect and authenticate every client */
        open_client(s, &cs[i], w->first + i, s->url);
    pthread_barrier_wait(&s->bar);
    char *m = chat_proto_client_message(s->question, NULL, NULL, true);
    for (long i = 0; i < w->count; i++) { /* then every client asks, at once */
        client *c = &cs[i];
        if (c->state == C_NEW && m && !chat_wsc_send_text(c->ws, m, strlen(m))) c->state = C_STREAMING;
        else if (c->state == C_NEW) fail(c, "send failed");
        if (c->state == C_FAILED) atomic_fetch_add(&s->streaming, 1);
    }
    free(m);
    pthread_barrier_wait(&s->bar);
    while (!atomic_load(&s->drop)) pump(s, cs, w->count, 20); /* phase 2: stream until the drop */
    for (long i = 0; i < w->count; i++) { /* phase 3: every connection dropped, no close frame */
        chat_wsc_close(cs[i].ws, 0, NULL);
        cs[i].ws = NULL;
    }
    pthread_barrier_wait(&s->bar);
    pthread_barrier_wait(&s->bar); /* the main thread took t_drop */
    for (long i = 0; i < w->count; i++) { /* phase 4: reconnect and resume */
        client *c = &cs[i];
        if (c->state != C_STREAMING) continue;
        if (!c->session_id[0]) {
            fail(c, "no session id before the drop");
            continue;
        }
        if (open_client(s, c, w->first + i, s->resume_url)) continue;
        char *f = chat_proto_client_resume(c->session_id, c->seq, c->answer_id[0] ? c->answer_id : NULL);
        if (!f || chat_wsc_send_text(c->ws, f, strlen(f))) fail(c, "resume send failed");
        else c->state = C_RESUMING;
        free(f);
        pump(s, cs, i + 1, 0); /* keep reading the resumed ones meanwhile */
    }
    int64_t end = s->t_drop_us + (int64_t)(s->timeout * 1e6);
    while (any_active(cs, w->count, C_RESUMING) && chat_now_us() < end) pump(s, cs, w->count, 20);
    for (long i = 0; i < w->count; i++) {
        if (cs[i].state == C_RESUMING) fail(&cs[i], "no complete in time");
        chat_wsc_close(cs[i].ws, 1000, NULL);
        cs[i].ws = NULL;
    }
    return NULL;
}

static void raise_nofile(long need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    rlim_t want = (rlim_t)need + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

/* The figures, as lines a person reads and one BENCH line bench.sh parses. */
static int report(const storm *s)
{
    long early = 0, done = 0, failed = 0, dup = 0, gap = 0;
    bench_hist h;
    bh_init(&h);
    int64_t last = 0;
    char why[64] = "";
    for (long i = 0; i < s->conns; i++) {
        const client *c = &s->c[i];
        if (c->state == C_DONE_EARLY) early++;
        if (c->state == C_DONE) {
            done++;
            bh_add(&h, c->done_us - s->t_drop_us);
            if (c->done_us > last) last = c->done_us;
        }
        if (c->state == C_FAILED) {
            failed++;
            if (!why[0]) snprintf(why, sizeof why, "%s", c->why);
        }
        if (c->duplicated) dup++;
        if (c->gap) gap++;
    }
    double all_s = last ? (double)(last - s->t_drop_us) / 1e6 : 0;
    printf("storm: %ld clients, %ld answered before the drop, %ld dropped mid-answer and answered after resuming\n",
           s->conns, early, done);
    printf("storm: every resumed answer complete %.2f s after the drop (p50 %.2f s, p99 %.2f s)\n", all_s,
           (double)bh_quantile(&h, 0.50) / 1e6, (double)bh_quantile(&h, 0.99) / 1e6);
    printf("storm: lost %ld%s%s%s, duplicated %ld, with a gap %ld\n", failed, why[0] ? " (first: " : "",
           why, why[0] ? ")" : "", dup, gap);
    printf("BENCH mode=storm conns=%ld early=%ld resumed=%ld lost=%ld duplicated=%ld gaps=%ld all_s=%.3f p50_s=%.3f "
           "p99_s=%.3f\n",
           s->conns, early, done, failed, dup, gap, all_s, (double)bh_quantile(&h, 0.50) / 1e6,
           (double)bh_quantile(&h, 0.99) / 1e6);
    return failed || dup || gap ? 1 : 0;
}

static const chat_cli STORM_CLI = {
    .prog = "chat-storm",
    .usage = "usage: chat-storm --url ws://HOST:PORT/ws/chat [options]   (JWT_SECRET from the environment)\n"
             "  --url URL        ws://HOST:PORT/ws/chat or ws+unix:/path.sock:/ws/chat\n"
             "  --resume-url URL where the clients reconnect and resume (default --url): another\n"
             "                   streamer's socket resumes every answer on another streamer\n"
             "  --conns N        streaming clients, each its own user (default 5000)\n"
             "  --threads T      client threads (default 8)\n"
             "  --drop-after K   drop once every client holds K token frames (default 3)\n"
             "  --drop-by S      ... or S seconds after the questions were sent (default 20)\n"
             "  --timeout S      seconds after the drop for every answer to complete (default 120)\n"
             "  --question TEXT  what every client asks\n",
    .own_messages = true,
};

int main(int argc, char **argv)
{
    storm s = {.conns = 5000, .threads = 8, .drop_after = 3, .drop_by = 20, .timeout = 120,
               .question = "What is the engine power of the Seawind 250 and how often is it serviced?"};
    const chat_cli_opt table[] = {
        CHAT_CLI_STR_OPT("url", &s.url),
        CHAT_CLI_STR_OPT("resume-url", &s.resume_url),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "conns", &s.conns, 1, 200000, "--conns: 1..200000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_INT, "threads", &s.threads, 1, 64, "--threads: 1..64"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_INT, "drop-after", &s.drop_after, 1, 1000, "--drop-after: 1..1000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "drop-by", &s.drop_by, 0.1, 3600, "--drop-by: 0.1..3600"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_DOUBLE, "timeout", &s.timeout, 1, 3600, "--timeout: 1..3600"),
        CHAT_CLI_STR_OPT("question", &s.question),
        CHAT_CLI_HELP_OPT('h'),
    };
    int rc;
    if (!chat_cli_parse(&STORM_CLI, table, CHAT_ARRAY_LEN(table), argc, argv, 1, &rc)) return rc;
    s.secret = getenv("JWT_SECRET");
    if (!s.url) return chat_cli_usage(&STORM_CLI, "--url is required");
    if (!s.resume_url) s.resume_url = s.url;
    if (!s.secret || !*s.secret) return chat_cli_usage(&STORM_CLI, "JWT_SECRET is not set");
    if (s.threads > s.conns) s.threads = (int)s.conns;
    raise_nofile(s.conns * 2);
    s.c = calloc((size_t)s.conns, sizeof *s.c);
    worker_arg *wa = calloc((size_t)s.threads, sizeof *wa);
    pthread_t *th = calloc((size_t)s.threads, sizeof *th);
    if (!s.c || !wa || !th || pthread_barrier_init(&s.bar, NULL, (unsigned)s.threads + 1)) return 1;
    for (int t = 0; t < s.threads; t++) {
        wa[t] = (worker_arg){&s, s.conns * t / s.threads, s.conns * (t + 1) / s.threads - s.conns * t / s.threads};
        if (pthread_create(&th[t], NULL, worker_main, &wa[t])) return 1;
    }
    pthread_barrier_wait(&s.bar); /* every client connected */
    printf("storm: %ld clients connected and authenticated\n", s.conns);
    pthread_barrier_wait(&s.bar); /* every question sent */
    int64_t asked = chat_now_us();
    while (atomic_load(&s.streaming) < s.conns && chat_now_us() - asked < (int64_t)(s.drop_by * 1e6)) usleep(5000);
    printf("storm: %ld of %ld clients streaming (or done) %.2f s after the questions: dropping all\n",
           atomic_load(&s.streaming), s.conns, (double)(chat_now_us() - asked) / 1e6);
    atomic_store(&s.drop, 1);
    pthread_barrier_wait(&s.bar); /* every connection dropped */
    s.t_drop_us = chat_now_us();
    pthread_barrier_wait(&s.bar);
    for (int t = 0; t < s.threads; t++) pthread_join(th[t], NULL);
    rc = report(&s);
    for (long i = 0; i < s.conns; i++) chat_buf_free(&s.c[i].text);
    free(s.c);
    free(wa);
    free(th);
    pthread_barrier_destroy(&s.bar);
    return rc;
}
