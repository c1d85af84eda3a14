/* Options and usage of the command-line programs (tools/ and bench/): one table per program instead of a
 * getopt switch with a parse-and-range-check per case.
 *
 * A program lists its options in chat_cli_opt rows: the long name, a short letter or none, what kind of
 * value it takes and where the value goes, the accepted range, and the words printed when a value is
 * refused. chat_cli_parse runs getopt_long over the table. Every refusal follows the one convention of
 * these programs: "<prog>: <problem>" and the usage text on stderr, exit status 2.
 *
 * Single-threaded (getopt's globals); the table and the values it points at belong to the caller. */
#ifndef CHAT_CLI_H
#define CHAT_CLI_H

#include <stdbool.h>
#include <stddef.h>
#include <unistd.h> /* optind: the first positional argument after chat_cli_parse */

#include "chat_config.h"

typedef enum chat_cli_kind {
    CHAT_CLI_FLAG,   /* no value: *(bool *)dst = true */
    CHAT_CLI_STR,    /* *(const char **)dst = the value (argv's string) */
    CHAT_CLI_LIST,   /* appended to the array (const char **)dst, *count of at most max elements */
    CHAT_CLI_LONG,   /* *(long *)dst, lo..hi */
    CHAT_CLI_INT,    /* *(int *)dst, lo..hi */
    CHAT_CLI_DOUBLE, /* *(double *)dst, lo..hi */
    CHAT_CLI_CHOICE, /* *(int *)dst = the value's index in choices */
    CHAT_CLI_HELP,   /* no value: the usage text, and chat_cli_parse says exit with status 0 */
} chat_cli_kind;

typedef struct chat_cli_opt {
    const char *name; /* long name, without "--"; NULL for a letter only */
    int letter;       /* short option letter, 0 for none */
    chat_cli_kind kind;
    void *dst;
    double lo, hi;         /* LONG, INT, DOUBLE: the accepted range */
    const char *problem;   /* printed when the value is refused (a LIST: when it is full) */
    int *count;            /* LIST: the elements so far */
    int max;               /* LIST: the array's capacity */
    const char *const *choices; /* CHOICE: the accepted values, NULL-terminated */
} chat_cli_opt;

/* Rows of a table by kind (the fields a kind does not use stay zero). A row without a long name (a
 * letter only) is written out: {.letter = 'k', .kind = CHAT_CLI_LONG, ...}. */
#define CHAT_CLI_FLAG_OPT(n, d) {.name = (n), .kind = CHAT_CLI_FLAG, .dst = (d)}
#define CHAT_CLI_STR_OPT(n, d) {.name = (n), .kind = CHAT_CLI_STR, .dst = (d)}
#define CHAT_CLI_LIST_OPT(n, d, cnt, mx, why)                                                                    \
    {.name = (n), .kind = CHAT_CLI_LIST, .dst = (d), .count = (cnt), .max = (mx), .problem = (why)}
#define CHAT_CLI_NUM_OPT(k, n, d, l, h, why)                                                                     \
    {.name = (n), .kind = (k), .dst = (d), .lo = (l), .hi = (h), .problem = (why)}
#define CHAT_CLI_CHOICE_OPT(n, d, ch, why)                                                                       \
    {.name = (n), .kind = CHAT_CLI_CHOICE, .dst = (d), .choices = (ch), .problem = (why)}
#define CHAT_CLI_HELP_OPT(l) {.name = "help", .letter = (l), .kind = CHAT_CLI_HELP}

typedef struct chat_cli {
    const char *prog;  /* "chat-bench": the prefix of messages */
    const char *usage; /* the whole usage text */
    /* false: getopt reports an unknown option or a missing value itself, then the usage text follows;
     * true: "<prog>: unknown option" / "<prog>: an option is missing its value" and the usage text. */
    bool own_messages;
    bool help_on_stdout; /* a CHAT_CLI_HELP option prints the usage text on stdout (else stderr) */
} chat_cli;

enum { CHAT_CLI_USAGE_ERROR = 2 }; /* the exit status after a refused command line */

/* "<prog>: <problem>" (when problem is non-NULL) and the usage text on stderr; returns
 * CHAT_CLI_USAGE_ERROR, so that a program says `return chat_cli_usage(&cli, "...")`. */
int chat_cli_usage(const chat_cli *cli, const char *problem);

/* Parses the options of argv[first..argc) with the n rows of opts (getopt permutes: the positional
 * arguments end up from optind on). True when the program goes on; false when it is to exit with
 * *status: 0 after a CHAT_CLI_HELP option (the usage text printed), CHAT_CLI_USAGE_ERROR after a
 * refused option (reported with chat_cli_usage). Options are applied in command-line order: a repeated
 * option keeps its last value (a LIST gets each one). */
bool chat_cli_parse(const chat_cli *cli, const chat_cli_opt *opts, size_t n, int argc, char **argv, int first,
                    int *status);

/* The configuration from the environment (chat_config_from_env); false after "<prog>: <why>" on stderr
 * (the exit status is the program's: its own convention for a bad environment). With no CHAT_DB_SOCKET
 * nor CHAT_DB_HOST, the private MariaDB of the stack ($CHAT_VAR, else var/) when its socket exists. */
bool chat_cli_config(const char *prog, chat_config *cfg);

/* s as a whole decimal number within lo..hi into *out (unchanged when false). */
bool chat_cli_long(const char *s, long lo, long hi, long *out);
/* s as a whole floating-point number within lo..hi into *out (unchanged when false). */
bool chat_cli_double(const char *s, double lo, double hi, double *out);

#endif
