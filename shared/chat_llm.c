/* Provider dispatch: chat_llm is a tagged union over the two providers so the pipeline holds one
 * pointer and never branches on configuration itself. */
#include "chat_llm.h"

#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_extractive.h"
#include "chat_openai.h"

struct chat_llm {
    chat_config cfg;
    chat_openai *openai; /* NULL for the extractive provider */
};

chat_llm *chat_llm_new(const chat_config *cfg, char *err, size_t errlen)
{
    chat_llm *llm = calloc(1, sizeof *llm);
    if (!llm) {
        chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
        return NULL;
    }
    llm->cfg = *cfg;
    if (!strcmp(cfg->llm_provider, "openai")) {
        llm->openai = chat_openai_new(cfg, err, errlen);
        if (!llm->openai) {
            free(llm);
            return NULL;
        }
    } else if (strcmp(cfg->llm_provider, "extractive")) {
        chat_fail(err, errlen, CHAT_EINVAL, "unknown LLM provider");
        free(llm);
        return NULL;
    }
    return llm;
}

void chat_llm_free(chat_llm *llm)
{
    if (!llm) return;
    chat_openai_free(llm->openai);
    free(llm);
}

const char *chat_llm_provider_name(const chat_llm *llm) { return llm->openai ? "openai" : "extractive"; }

int chat_llm_generate(chat_llm *llm, const chat_llm_request *req, chat_llm_token_fn fn, void *ud,
                      const atomic_int *cancel, chat_llm_result *res, char *err, size_t errlen)
{
    if (llm->openai) return chat_openai_generate(llm->openai, req, fn, ud, cancel, res, err, errlen);
    return chat_extractive_generate(&llm->cfg, req, fn, ud, cancel, res, err, errlen);
}
