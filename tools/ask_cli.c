/* chat-ask: runs the orchestration pipeline once and prints its events as JSON lines, exactly as the
 * WebSocket streamer would send them. For admins checking what the assistant answers, and for debugging.
 *   chat-ask "QUESTION" [--customer ID] [--session ID] [--user SUB] [--no-tokens]
 * Database and provider settings come from the environment (CHAT_DB_*, CHAT_LLM_PROVIDER, ...).
 * --customer names any customer, whatever CHAT_CUSTOMER_ACCESS says: the admin running this reads the
 * same tables directly, and its user has no email that could own one.
 * Exit status: 0 on complete, 1 on an error event or any other failure, 2 on usage errors. */
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_config.h"
#include "chat_log.h"
#include "chat_pipeline.h"
#include "chat_proto.h"
#include "cli.h"

static atomic_int cancel_flag;
static bool print_tokens = true;
static bool failed;

static void on_sigint(int sig) { atomic_store(&cancel_flag, 1); }

static void emit(char *json)
{
    if (json) {
        puts(json);
        fflush(stdout);
        free(json);
    }
}

static void on_progress(void *ud, const char *step, const char *message)
{
    emit(chat_proto_progress_msg(step, message));
}

static int on_token(void *ud, const char *text, size_t len)
{
    if (print_tokens) emit(chat_proto_token(text, len, NULL, 0));
    return 0;
}

static void on_complete(void *ud, const char *response, const char *session_id, const char *metadata)
{
    emit(chat_proto_complete(response, session_id, metadata));
}

static void on_error(void *ud, const char *code, const char *message)
{
    failed = true;
    emit(chat_proto_error(message, code));
}

static int usage(void)
{
    fprintf(stderr, "usage: chat-ask \"QUESTION\" [--customer ID] [--session ID] [--user SUB] [--no-tokens]\n");
    return 2;
}

int main(int argc, char **argv)
{
    chat_log_init("chat-ask", CHAT_LOG_WARN);
    const char *question = NULL, *customer = NULL, *session = NULL, *user_id = "chat-ask";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--customer") && i + 1 < argc) customer = argv[++i];
        else if (!strcmp(argv[i], "--session") && i + 1 < argc) session = argv[++i];
        else if (!strcmp(argv[i], "--user") && i + 1 < argc) user_id = argv[++i];
        else if (!strcmp(argv[i], "--no-tokens")) print_tokens = false;
        else if (argv[i][0] == '-' && argv[i][1]) return usage();
        else if (!question) question = argv[i];
        else return usage();
    }
    if (!question || !*question) return usage();

    chat_config cfg;
    if (!chat_cli_config("chat-ask", &cfg)) return 2;
    snprintf(cfg.customer_access, sizeof cfg.customer_access, "any");
    char err[512];
    chat_pipeline *p = chat_pipeline_new(&cfg, err, sizeof err);
    if (!p) {
        fprintf(stderr, "chat-ask: %s\n", err);
        return 1;
    }
    signal(SIGINT, on_sigint);
    chat_user user = {0};
    snprintf(user.id, sizeof user.id, "%s", user_id);
    snprintf(user.name, sizeof user.name, "chat-ask");
    chat_request req = {.message = question, .session_id = session, .customer_id = customer, .user = &user};
    chat_sink sink = {NULL, on_progress, on_token, on_complete, on_error};
    int rc = chat_pipeline_run(p, &req, &sink, &cancel_flag);
    chat_pipeline_free(p);
    return rc || failed ? 1 : 0;
}
