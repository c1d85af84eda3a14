/* chat-ws: admin/debugging client for the streamer's WebSocket endpoint (built on tools/wsclient.c).
 *
 * Connects, authenticates with an auth message, sends each message of the command line (or each line of
 * stdin when there are none: an interactive chat) and waits for its complete or error event. Every
 * server event is printed to stdout as one JSON line, or with --raw only the answer text, streamed token
 * by token. Diagnostics go to stderr. The token is read from --token or, better (not visible in ps),
 * --token-file, and is never printed. When no --session is given, follow-up messages reuse the
 * session_id the first complete event named, so a stdin chat is one conversation.
 * Exit status: 0 all answered, 1 an error event, auth failure, timeout or connection failure, 2 usage. */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <json-c/json.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chat_common.h"
#include "chat_proto.h"
#include "chat_util.h"
#include "wsclient.h"

#define DEFAULT_URL "ws://127.0.0.1:$CHAT_PORT/ws/chat" /* as the usage says it; default_url() builds it */
#define MAX_TOKEN 16384
#define MAX_LINE (1024 * 1024)

typedef struct cli {
    chat_wsc *c;
    bool raw;
    int timeout_ms;
    char *session; /* --session, or the one the server named */
    const char *customer;
} cli;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: chat-ws [--url URL] [--token T | --token-file F] [--origin O] [--session S]\n"
            "               [--customer C] [--raw] [--timeout SEC] [message ...]\n"
            "  --url URL        WebSocket endpoint (default $CHAT_WS_URL, else " DEFAULT_URL ",\n"
            "                   the stack's own port: CHAT_PORT, 8000 when unset), or\n"
            "                   ws+unix:/path.sock:/ws/chat (a streamer's own socket)\n"
            "  --token T        JWT sent in an auth message (visible to ps: prefer --token-file)\n"
            "  --token-file F   read the JWT from the first line of F\n"
            "  --origin O       Origin header\n"
            "  --session S      session_id of the messages (default: the one the server assigns)\n"
            "  --customer C     customer_id of the messages\n"
            "  --raw            print only the answer text, streamed, instead of one JSON line per event\n"
            "  --timeout SEC    longest wait for each answer (default 120)\n"
            "With no message arguments, each line of stdin is sent as a message.\n"
            "Exit status: 0 success, 1 error event or failure, 2 usage error.\n");
}

/* First line of path, trimmed, into a malloc'd string; NULL when unreadable, empty or too long. */
static char *read_token_file(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char *buf = malloc(MAX_TOKEN + 2);
    size_t n = buf ? fread(buf, 1, MAX_TOKEN + 1, f) : 0;
    fclose(f);
    if (!buf) return NULL;
    buf[n] = '\0';
    buf[strcspn(buf, "\r\n")] = '\0';
    size_t l = strlen(buf);
    while (l && isspace((unsigned char)buf[l - 1])) buf[--l] = '\0';
    char *s = buf;
    while (isspace((unsigned char)*s)) s++;
    if (!*s || l > MAX_TOKEN) {
        free(buf);
        return NULL;
    }
    memmove(buf, s, strlen(s) + 1);
    return buf;
}

static const char *jstr(json_object *o, const char *key)
{
    json_object *v;
    if (!json_object_object_get_ex(o, key, &v) || !json_object_is_type(v, json_type_string)) return NULL;
    return json_object_get_string(v);
}

static void print_event(const cli *k, json_object *o)
{
    if (k->raw) return;
    puts(json_object_to_json_string_ext(o, JSON_C_TO_STRING_PLAIN | JSON_C_TO_STRING_NOSLASHESCAPE));
    fflush(stdout);
}

/* Sends a frame from chat_proto's builders (takes it; NULL is out of memory). */
static int send_frame(cli *k, char *frame)
{
    int rc = frame ? chat_wsc_send_text(k->c, frame, strlen(frame)) : CHAT_ENOMEM;
    if (rc) fprintf(stderr, "chat-ws: send failed (%s)\n", chat_strerror(rc));
    free(frame);
    return rc;
}

/* Explains a failed receive on stderr. */
/* The next JSON event from the server; a message that is not JSON is reported and skipped. */
static int next_event(cli *k, json_object **o)
{
    for (;;) {
        int rc = chat_wsc_recv_json(k->c, k->timeout_ms, o);
        if (rc != CHAT_EINVAL) return rc;
        fprintf(stderr, "chat-ws: ignoring a non-JSON message from the server\n");
    }
}

static void report_recv(const cli *k, int rc, const char *waiting_for)
{
    if (rc == CHAT_ETIMEOUT)
        fprintf(stderr, "chat-ws: no %s within %d s\n", waiting_for, k->timeout_ms / 1000);
    else if (rc == CHAT_ERR)
        fprintf(stderr, "chat-ws: connection closed (code %d%s%s)\n", chat_wsc_close_code(k->c),
                *chat_wsc_close_reason(k->c) ? ": " : "", chat_wsc_close_reason(k->c));
    else
        fprintf(stderr, "chat-ws: receive failed (%s)\n", chat_strerror(rc));
}

/* 0 authenticated, 1 refused or failed. */
static int authenticate(cli *k, const char *token)
{
    int rc = send_frame(k, chat_proto_client_auth(token));
    if (rc) return 1;
    for (;;) {
        json_object *o;
        rc = next_event(k, &o);
        if (rc) {
            report_recv(k, rc, "auth answer");
            return 1;
        }
        print_event(k, o);
        const char *type = jstr(o, "type");
        int res = -1;
        if (type && !strcmp(type, "auth_success")) {
            res = 0;
        } else if (type && (!strcmp(type, "auth_error") || !strcmp(type, "error"))) {
            if (k->raw) {
                const char *m = jstr(o, "message");
                fprintf(stderr, "chat-ws: authentication failed: %s\n", m ? m : jstr(o, "error") ? jstr(o, "error") : "");
            }
            res = 1;
        }
        json_object_put(o);
        if (res >= 0) return res;
    }
}

/* Sends one message and prints events until its complete or error. 0 complete, 1 error event, -1 the
 * connection is gone (stop). */
static int chat_one(cli *k, const char *text)
{
    int rc = send_frame(k, chat_proto_client_message(text, k->session, k->customer, true));
    if (rc) return -1;
    bool streamed = false;
    for (;;) {
        json_object *o;
        rc = next_event(k, &o);
        if (rc) {
            if (streamed) putchar('\n');
            report_recv(k, rc, "answer");
            return -1;
        }
        print_event(k, o);
        const char *type = jstr(o, "type");
        int res = -2;
        if (type && !strcmp(type, "token")) {
            const char *t = jstr(o, "token");
            if (k->raw && t) {
                fputs(t, stdout);
                fflush(stdout);
                streamed = true;
            }
        } else if (type && !strcmp(type, "complete")) {
            if (k->raw) {
                const char *r = jstr(o, "response");
                if (!streamed && r) fputs(r, stdout);
                putchar('\n');
                fflush(stdout);
            }
            const char *sid = jstr(o, "session_id");
            if (!k->session && sid && chat_id_valid(sid)) k->session = strdup(sid);
            res = 0;
        } else if (type && (!strcmp(type, "error") || !strcmp(type, "auth_error"))) {
            if (k->raw) {
                if (streamed) putchar('\n');
                const char *e = jstr(o, "error"), *code = jstr(o, "code");
                fprintf(stderr, "chat-ws: error %s: %s\n", code ? code : "-", e ? e : jstr(o, "message") ? jstr(o, "message") : "");
            }
            res = 1;
        }
        json_object_put(o);
        if (res != -2) return res;
    }
}

/* The stack this shell talks to: CHAT_WS_URL, else the front door on CHAT_PORT (8000 when unset), as
 * deploy/stack.sh starts it. */
static const char *default_url(char *buf, size_t cap)
{
    const char *url = getenv("CHAT_WS_URL");
    if (url && *url) return url;
    const char *port = getenv("CHAT_PORT");
    long p = port && *port ? strtol(port, NULL, 10) : 8000;
    if (p <= 0 || p > 65535) p = 8000;
    snprintf(buf, cap, "ws://127.0.0.1:%ld/ws/chat", p);
    return buf;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"url", required_argument, NULL, 'u'},      {"token", required_argument, NULL, 't'},
        {"token-file", required_argument, NULL, 'f'}, {"origin", required_argument, NULL, 'o'},
        {"session", required_argument, NULL, 's'},  {"customer", required_argument, NULL, 'c'},
        {"raw", no_argument, NULL, 'r'},            {"timeout", required_argument, NULL, 'T'},
        {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
    };
    char url_buf[128];
    const char *url = default_url(url_buf, sizeof url_buf), *token_arg = NULL, *token_file = NULL, *origin = NULL, *session = NULL;
    cli k = {.timeout_ms = 120 * 1000};
    int opt;
    /* Options may follow the messages (getopt permutes); "--" ends them for a message starting with "-". */
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'u': url = optarg; break;
        case 't': token_arg = optarg; break;
        case 'f': token_file = optarg; break;
        case 'o': origin = optarg; break;
        case 's': session = optarg; break;
        case 'c': k.customer = optarg; break;
        case 'r': k.raw = true; break;
        case 'T': {
            char *end;
            errno = 0;
            long v = strtol(optarg, &end, 10);
            if (errno || *end || v < 1 || v > 3600) {
                fprintf(stderr, "chat-ws: --timeout takes 1..3600 seconds\n");
                return 2;
            }
            k.timeout_ms = (int)v * 1000;
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (token_arg && token_file) {
        fprintf(stderr, "chat-ws: give --token or --token-file, not both\n");
        return 2;
    }
    if (strncmp(url, "ws://", 5) != 0 && strncmp(url, "ws+unix:", 8) != 0) {
        fprintf(stderr, "chat-ws: --url must be a ws:// or ws+unix:/path.sock:/ws/chat URL\n");
        return 2;
    }
    if (session && !chat_id_valid(session)) {
        fprintf(stderr, "chat-ws: --session must be 1..64 characters of [A-Za-z0-9._:-]\n");
        return 2;
    }
    if (k.customer && !chat_id_valid(k.customer)) {
        fprintf(stderr, "chat-ws: --customer must be 1..64 characters of [A-Za-z0-9._:-]\n");
        return 2;
    }
    char *token = NULL;
    if (token_file) {
        token = read_token_file(token_file);
        if (!token) {
            fprintf(stderr, "chat-ws: cannot read a token from --token-file\n");
            return 2;
        }
    } else if (token_arg) {
        if (!*token_arg) {
            fprintf(stderr, "chat-ws: empty --token\n");
            return 2;
        }
        token = strdup(token_arg);
    }
    if (session) k.session = strdup(session);

    int status = 0;
    char err[256] = "";
    int http = 0;
    chat_wsc_opts opts = {.origin = origin};
    k.c = chat_wsc_connect(url, &opts, &http, err, sizeof err);
    if (!k.c) {
        fprintf(stderr, "chat-ws: %s\n", err);
        status = 1;
        goto out;
    }
    if (token && authenticate(&k, token)) {
        status = 1;
        goto out;
    }
    if (optind < argc) {
        for (int i = optind; i < argc; i++) {
            int rc = chat_one(&k, argv[i]);
            if (rc) status = 1;
            if (rc < 0) break;
        }
    } else {
        bool tty = isatty(STDIN_FILENO);
        char *line = NULL;
        size_t cap = 0;
        ssize_t n;
        for (;;) {
            if (tty) fputs("> ", stderr);
            if ((n = getline(&line, &cap, stdin)) < 0) break;
            while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = '\0';
            if (n == 0) continue;
            if (n > MAX_LINE) {
                fprintf(stderr, "chat-ws: line over %d bytes skipped\n", MAX_LINE);
                status = 1;
                continue;
            }
            int rc = chat_one(&k, line);
            if (rc) status = 1;
            if (rc < 0) break;
        }
        free(line);
    }
out:
    chat_wsc_close(k.c, 1000, NULL);
    if (token) {
        explicit_bzero(token, strlen(token));
        free(token);
    }
    free(k.session);
    return status;
}
