/* chat-token: prints an HS256 JWT for development and demos (`make token`).
 *   chat-token [--sub ID] [--email E] [--name N] [--ttl SECONDS] [--secret-file PATH]
 * The secret comes from --secret-file (its first line) or else $JWT_SECRET; it must be at least 32 bytes,
 * as the verifier requires. Exit status: 0 token printed, 1 no usable secret or minting failed, 2 bad
 * arguments. The token goes to stdout alone so that scripts can capture it; nothing else is printed. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chat_common.h"
#include "chat_jwt.h"
#include "chat_util.h"
#include "cli.h"

#define MIN_SECRET 32
#define MAX_SECRET 1023    /* what JWT_SECRET can hold in chat_config */
#define MAX_TTL 315360000L /* ten years: anything longer is a typo */
#define MAX_CLAIM 255

static const chat_cli TOKEN_CLI = {
    .prog = "chat-token",
    .usage =
        "usage: chat-token [--sub ID] [--email E] [--name N] [--ttl SECONDS] [--secret-file PATH]\n"
        "  --sub ID            subject (user id), default demo-user\n"
        "  --email E           email claim, default demo@example.com\n"
        "  --name N            name claim, default \"Demo User\"\n"
        "  --ttl SECONDS       lifetime, 1..315360000, default 86400\n"
        "  --secret-file PATH  read the HS256 secret from the first line of PATH (else $JWT_SECRET)\n",
    .own_messages = true,
    .help_on_stdout = true,
};

static int usage(const char *problem) { return chat_cli_usage(&TOKEN_CLI, problem); }

/* First line of path, without its line ending, into out. The secret is never echoed in messages. */
static int read_secret_file(const char *path, char *out, size_t outlen)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "chat-token: cannot read secret file %s\n", path);
        return -1;
    }
    int rc = 0;
    if (!fgets(out, (int)outlen, f)) {
        out[0] = '\0'; /* an empty file: reported as a missing secret below */
    } else {
        size_t n = strlen(out);
        if (n == outlen - 1 && out[n - 1] != '\n' && !feof(f)) {
            fprintf(stderr, "chat-token: the secret in %s is longer than %d bytes\n", path, MAX_SECRET);
            rc = -1;
        }
        out[strcspn(out, "\r\n")] = '\0';
    }
    fclose(f);
    return rc;
}

static int claim_ok(const char *what, const char *v, int required)
{
    size_t n = strlen(v);
    if ((required && n == 0) || n > MAX_CLAIM || !chat_utf8_valid(v, n)) {
        char msg[96];
        snprintf(msg, sizeof msg, "%s must be %sUTF-8 text of at most %d bytes", what, required ? "non-empty " : "",
                 MAX_CLAIM);
        usage(msg);
        return 0;
    }
    return 1;
}

int main(int argc, char **argv)
{
    const char *sub = "demo-user", *email = "demo@example.com", *name = "Demo User", *secret_file = NULL;
    long ttl = 86400;
    const chat_cli_opt table[] = {
        CHAT_CLI_STR_OPT("sub", &sub),
        CHAT_CLI_STR_OPT("email", &email),
        CHAT_CLI_STR_OPT("name", &name),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "ttl", &ttl, 1, MAX_TTL,
                         "--ttl must be a whole number of seconds between 1 and 315360000"),
        CHAT_CLI_STR_OPT("secret-file", &secret_file),
        CHAT_CLI_HELP_OPT('h'),
    };
    int status;
    if (!chat_cli_parse(&TOKEN_CLI, table, CHAT_ARRAY_LEN(table), argc, argv, 1, &status)) return status;
    if (optind < argc) return usage("unexpected argument");
    if (!claim_ok("--sub", sub, 1) || !claim_ok("--email", email, 0) || !claim_ok("--name", name, 0)) return 2;

    char secret[MAX_SECRET + 2] = "";
    if (secret_file) {
        if (read_secret_file(secret_file, secret, sizeof secret)) {
            explicit_bzero(secret, sizeof secret);
            return 1;
        }
    } else {
        const char *env = getenv("JWT_SECRET");
        if (env && strlen(env) > MAX_SECRET) {
            fprintf(stderr, "chat-token: JWT_SECRET is longer than %d bytes\n", MAX_SECRET);
            return 1;
        }
        snprintf(secret, sizeof secret, "%s", env ? env : "");
    }
    int rc = 1;
    if (!secret[0]) {
        fprintf(stderr, "chat-token: no secret: set JWT_SECRET or pass --secret-file PATH\n");
    } else if (strlen(secret) < MIN_SECRET) {
        fprintf(stderr, "chat-token: the secret is too short: HS256 needs at least %d bytes\n", MIN_SECRET);
    } else {
        char *tok = chat_jwt_mint_hs256(secret, sub, *email ? email : NULL, *name ? name : NULL, time(NULL), ttl);
        if (!tok) {
            fprintf(stderr, "chat-token: could not create the token\n");
        } else {
            printf("%s\n", tok);
            free(tok);
            rc = fflush(stdout) == 0 ? 0 : 1;
        }
    }
    explicit_bzero(secret, sizeof secret);
    return rc;
}
