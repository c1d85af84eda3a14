/* The replay provider (see chat_replay.h).
 *
 * The file is parsed once, at open, into the shape chat_paced wants (the pieces back to back plus the
 * end of each), so a bad recording fails at start-up, never in the middle of an answer, and the state is
 * read-only afterwards: any number of generations on any number of loops share it. Each generation
 * takes its own copy of the two arrays because chat_paced owns what it releases; an answer is a few
 * kilobytes, and the copy keeps chat_paced's contract to one rule. A line is parsed as exactly one JSON
 * value (trailing whitespace allowed) so that two strings on one line, or a string and garbage, are
 * errors rather than half a piece. */
#include "chat_replay.h"

#include <ctype.h>
#include <errno.h>
#include <json-c/json.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_paced.h"
#include "chat_util.h"

#define REPLAY_MAX_BYTES (16 << 20) /* a recording larger than this is a mistake, not an answer */

typedef struct replay_state {
    char *text;   /* the pieces back to back */
    size_t *ends; /* where each piece ends in text */
    size_t n, len, ends_cap;
    int delay_ms, max_tokens;
} replay_state;

static void replay_close(void *state)
{
    replay_state *s = state;
    if (!s) return;
    free(s->text);
    free(s->ends);
    free(s);
}

/* The whole file, NUL-terminated (caller frees), or NULL with err. */
static char *replay_read_file(const char *path, size_t *len, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    if (!f) return chat_fail_null(err, errlen, "CHAT_LLM_REPLAY_FILE cannot be opened: %s", strerror(errno));
    chat_buf b;
    chat_buf_init(&b);
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (b.len + n > REPLAY_MAX_BYTES) {
            chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_REPLAY_FILE is larger than %d bytes", REPLAY_MAX_BYTES);
            goto fail;
        }
        if (chat_buf_append(&b, chunk, n)) {
            chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
            goto fail;
        }
    }
    if (ferror(f)) {
        chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_REPLAY_FILE cannot be read");
        goto fail;
    }
    fclose(f);
    *len = b.len;
    return chat_buf_take(&b);
fail:
    fclose(f);
    chat_buf_free(&b);
    return NULL;
}

/* One line, [line, line + len), as exactly one JSON string: its bytes appended to s as the next piece.
 * lineno names the line in err. */
static int replay_add_line(replay_state *s, const char *line, size_t len, size_t lineno, char *err, size_t errlen)
{
    int rc = 0;
    json_tokener *tok = json_tokener_new();
    if (!tok) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    json_object *v = len <= INT_MAX ? json_tokener_parse_ex(tok, line, (int)len) : NULL;
    size_t end = v && json_tokener_get_error(tok) == json_tokener_success ? json_tokener_get_parse_end(tok) : 0;
    while (end && end < len && isspace((unsigned char)line[end])) end++;
    const char *piece = json_object_is_type(v, json_type_string) ? json_object_get_string(v) : NULL;
    size_t plen = piece ? (size_t)json_object_get_string_len(v) : 0;
    if (!piece || end != len) {
        rc = chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_REPLAY_FILE line %zu is not one JSON string", lineno);
    } else if (!plen || strlen(piece) != plen || !chat_utf8_valid(piece, plen)) {
        rc = chat_fail(err, errlen, CHAT_EINVAL,
                       "CHAT_LLM_REPLAY_FILE line %zu is not a piece of text (empty, a NUL or invalid UTF-8)", lineno);
    } else {
        char *t = realloc(s->text, s->len + plen + 1);
        if (t) s->text = t;
        if (!t || chat_array_reserve(&s->ends, &s->ends_cap, s->n, sizeof *s->ends)) {
            rc = chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        } else {
            memcpy(s->text + s->len, piece, plen + 1);
            s->len += plen;
            s->ends[s->n++] = s->len;
        }
    }
    json_object_put(v);
    json_tokener_free(tok);
    return rc;
}

/* Every non-blank line of data (NUL-terminated, len bytes) as a piece. */
static int replay_parse(replay_state *s, const char *data, size_t len, char *err, size_t errlen)
{
    size_t lineno = 0;
    for (const char *p = data, *end = data + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        lineno++;
        const char *q = p;
        while (q < stop && isspace((unsigned char)*q)) q++;
        if (q < stop) {
            int rc = replay_add_line(s, p, (size_t)(stop - p), lineno, err, errlen);
            if (rc) return rc;
        }
        p = nl ? nl + 1 : end;
    }
    if (!s->n) return chat_fail(err, errlen, CHAT_EINVAL, "CHAT_LLM_REPLAY_FILE holds no piece");
    return 0;
}

static int replay_open(const chat_config *cfg, void **state, char *err, size_t errlen)
{
    *state = NULL;
    if (!cfg->llm_replay_file[0])
        return chat_fail(err, errlen, CHAT_EINVAL, "the replay provider needs CHAT_LLM_REPLAY_FILE");
    replay_state *s = calloc(1, sizeof *s);
    if (!s) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    s->delay_ms = cfg->token_delay_ms > 0 ? cfg->token_delay_ms : 0;
    s->max_tokens = cfg->llm_max_tokens > 0 ? cfg->llm_max_tokens : 0;
    size_t len = 0;
    char *data = replay_read_file(cfg->llm_replay_file, &len, err, errlen);
    int rc = data ? replay_parse(s, data, len, err, errlen) : CHAT_EINVAL;
    free(data);
    if (rc) {
        replay_close(s);
        return rc;
    }
    *state = s;
    return 0;
}

static bool replay_instant(const void *state) { return ((const replay_state *)state)->delay_ms == 0; }

static int replay_gen_new(void *state, void *loop_state, const chat_llm_request *req, const chat_llm_gen_ctx *ctx,
                          void **gen, char *err, size_t errlen)
{
    const replay_state *s = state;
    *gen = NULL;
    if (!req || (req->n_messages && !req->messages)) return chat_fail(err, errlen, CHAT_EINVAL, "invalid LLM request");
    char *text = malloc(s->len + 1);
    size_t *ends = malloc(s->n * sizeof *ends);
    if (!text || !ends) {
        free(text);
        free(ends);
        return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    }
    memcpy(text, s->text, s->len + 1);
    memcpy(ends, s->ends, s->n * sizeof *ends);
    size_t prompt_bytes = req->question ? strlen(req->question) : 0;
    for (size_t i = 0; i < req->n_messages; i++)
        prompt_bytes += req->messages[i].content ? strlen(req->messages[i].content) : 0;
    return chat_paced_new(ctx, text, ends, s->n, s->delay_ms, req->max_tokens > 0 ? req->max_tokens : s->max_tokens,
                          (int)(prompt_bytes / 4) + 1, gen, err, errlen);
}

CHAT_LLM_PROVIDER_DEFINE(chat_replay_provider, "replay", replay, chat_llm_loop_none, chat_paced);
