/* Options and usage of the command-line programs (cli.h): the table is turned into getopt_long's
 * struct option array (long-only options get values from 256 up, so they never clash with a letter),
 * and each value is checked and stored by its row's kind. */
#include "cli.h"

#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CLI_MAX_OPTS 48
#define CLI_LONG_BASE 256

int chat_cli_usage(const chat_cli *cli, const char *problem)
{
    if (problem) fprintf(stderr, "%s: %s\n", cli->prog, problem);
    fputs(cli->usage, stderr);
    return CHAT_CLI_USAGE_ERROR;
}

static bool env_set(const char *name)
{
    const char *v = getenv(name);
    return v && *v;
}

/* With no server named (CHAT_DB_SOCKET, CHAT_DB_HOST), an admin tool in a shell next to `make start`
 * talks to that stack's private MariaDB, $CHAT_VAR/run/mariadb.sock (var/ by default), as the admin
 * account that server gives your login (unix_socket, deploy/mariadb.sh), instead of the system's
 * default socket where no server runs. */
static void private_db_default(chat_config *cfg)
{
    if (env_set("CHAT_DB_SOCKET") || env_set("CHAT_DB_HOST")) return;
    const char *var = getenv("CHAT_VAR");
    char sock[sizeof cfg->db_socket];
    int n = snprintf(sock, sizeof sock, "%s/run/mariadb.sock", var && *var ? var : "var");
    if (n < 0 || (size_t)n >= sizeof sock || access(sock, F_OK) != 0) return;
    memcpy(cfg->db_socket, sock, (size_t)n + 1);
    if (env_set("CHAT_DB_USER")) return;
    const struct passwd *pw = getpwuid(geteuid());
    if (!pw || strlen(pw->pw_name) >= sizeof cfg->db_user) return;
    strcpy(cfg->db_user, pw->pw_name);
    cfg->db_password[0] = '\0';
}

bool chat_cli_config(const char *prog, chat_config *cfg)
{
    char err[512];
    if (!chat_config_from_env(cfg, err, sizeof err)) {
        private_db_default(cfg);
        return true;
    }
    fprintf(stderr, "%s: %s\n", prog, err);
    return false;
}

bool chat_cli_long(const char *s, long lo, long hi, long *out)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

bool chat_cli_double(const char *s, double lo, double hi, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (!*s || *end || v < lo || v > hi) return false;
    *out = v;
    return true;
}

/* Stores arg by the row's kind: true, or false when the value is refused. */
static bool take(const chat_cli_opt *o, const char *arg)
{
    long l;
    switch (o->kind) {
    case CHAT_CLI_FLAG: *(bool *)o->dst = true; return true;
    case CHAT_CLI_STR: *(const char **)o->dst = arg; return true;
    case CHAT_CLI_LIST:
        if (*o->count >= o->max) return false;
        ((const char **)o->dst)[(*o->count)++] = arg;
        return true;
    case CHAT_CLI_LONG: return chat_cli_long(arg, (long)o->lo, (long)o->hi, (long *)o->dst);
    case CHAT_CLI_INT:
        if (!chat_cli_long(arg, (long)o->lo, (long)o->hi, &l)) return false;
        *(int *)o->dst = (int)l;
        return true;
    case CHAT_CLI_DOUBLE: return chat_cli_double(arg, o->lo, o->hi, (double *)o->dst);
    case CHAT_CLI_CHOICE:
        for (int i = 0; o->choices[i]; i++)
            if (!strcmp(arg, o->choices[i])) {
                *(int *)o->dst = i;
                return true;
            }
        return false;
    case CHAT_CLI_HELP: return true;
    }
    return false;
}

static bool takes_value(chat_cli_kind k) { return k != CHAT_CLI_FLAG && k != CHAT_CLI_HELP; }

/* What getopt_long returns for row i: its letter, else a value above every letter. */
static int opt_val(const chat_cli_opt *opts, size_t i)
{
    return opts[i].letter ? opts[i].letter : CLI_LONG_BASE + (int)i;
}

/* getopt_long's view of the table: the long options (lo, ending in a zero row) and the letters. */
static void getopt_tables(const chat_cli *cli, const chat_cli_opt *opts, size_t n, struct option *lo, char *shorts)
{
    size_t nl = 0, ns = 0;
    if (cli->own_messages) shorts[ns++] = ':'; /* a missing value returns ':' rather than '?' */
    for (size_t i = 0; i < n; i++) {
        bool value = takes_value(opts[i].kind);
        if (opts[i].name)
            lo[nl++] = (struct option){opts[i].name, value ? required_argument : no_argument, NULL, opt_val(opts, i)};
        if (opts[i].letter) {
            shorts[ns++] = (char)opts[i].letter;
            if (value) shorts[ns++] = ':';
        }
    }
    lo[nl] = (struct option){NULL, 0, NULL, 0};
    shorts[ns] = '\0';
}

bool chat_cli_parse(const chat_cli *cli, const chat_cli_opt *opts, size_t n, int argc, char **argv, int first,
                    int *status)
{
    struct option lo[CLI_MAX_OPTS + 1];
    char shorts[2 * CLI_MAX_OPTS + 2];
    *status = CHAT_CLI_USAGE_ERROR;
    if (n > CLI_MAX_OPTS) {
        chat_cli_usage(cli, "internal error: too many options");
        return false;
    }
    getopt_tables(cli, opts, n, lo, shorts);
    opterr = !cli->own_messages;
    optind = first;
    int c;
    while ((c = getopt_long(argc, argv, shorts, lo, NULL)) != -1) {
        const chat_cli_opt *o = NULL;
        for (size_t i = 0; i < n && !o; i++)
            if (c == opt_val(opts, i)) o = &opts[i];
        if (!o) {
            const char *why = c == ':' ? "an option is missing its value" : "unknown option";
            chat_cli_usage(cli, cli->own_messages ? why : NULL);
            return false;
        }
        if (!take(o, optarg)) {
            chat_cli_usage(cli, o->problem);
            return false;
        }
        if (o->kind == CHAT_CLI_HELP) {
            fputs(cli->usage, cli->help_on_stdout ? stdout : stderr);
            *status = 0;
            return false;
        }
    }
    return true;
}
