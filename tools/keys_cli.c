/* chat-keys: makes the CurveZMQ key pair of a streamer or a worker (`make keys`).
 *   chat-keys [--force] SECRET_FILE   writes a new key pair to SECRET_FILE (mode 0600) and prints its
 *                                     public key
 *   chat-keys --public SECRET_FILE    prints the public key of an existing key pair
 * The process points CHAT_CURVE_SECRET_FILE at SECRET_FILE; the public key goes into the other side's
 * CHAT_CURVE_ALLOWED file (or a worker's CHAT_CURVE_SERVER_KEY). Only the public key is printed, alone
 * on stdout, so that scripts can capture it. Exit status: 0 done, 1 failure (the file exists without
 * --force, cannot be written or read, is readable by others), 2 bad arguments. */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "chat_common.h"
#include "chat_curve.h"

static const char usage_text[] = "usage: chat-keys [--force] SECRET_FILE    make a key pair, print its public key\n"
                                 "       chat-keys --public SECRET_FILE     print the public key of a key pair\n";

static int usage(const char *problem)
{
    if (problem) fprintf(stderr, "chat-keys: %s\n", problem);
    fputs(usage_text, stderr);
    return 2;
}

int main(int argc, char **argv)
{
    bool force = false, show = false;
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--force"))
            force = true;
        else if (!strcmp(argv[i], "--public"))
            show = true;
        else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help"))
            return usage(NULL);
        else if (argv[i][0] == '-' || path)
            return usage("unexpected argument");
        else
            path = argv[i];
    }
    if (!path) return usage("SECRET_FILE is missing");
    if (show && force) return usage("--public reads a key pair, --force writes one");
    chat_curve_keypair kp;
    char err[512];
    int rc = show ? chat_curve_secret_read(path, &kp, err, sizeof err) : chat_curve_keypair_new(&kp, err, sizeof err);
    if (!rc && !show) rc = chat_curve_secret_write(path, &kp, force, err, sizeof err);
    if (rc) {
        fprintf(stderr, "chat-keys: %s\n", err);
        return 1;
    }
    printf("%s\n", kp.public_key);
    explicit_bzero(&kp, sizeof kp);
    return 0;
}
