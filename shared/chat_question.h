/* What a chat message asks, read with word tables: the figure it asks for (fuel tank, top speed, ...),
 * whether it compares models (and which way: the biggest or the smallest), whether it asks what is
 * covered or what a service includes, what it asks about the customer's own records, and the models it
 * names. The extractive provider composes its answer from this, and the pipeline shapes retrieval with
 * it (the words that state the figure in the spec sheets, every model's section for a comparison, what
 * an elliptical follow-up leaves out). Pure functions of the text: thread-safe, no allocation except
 * chat_question_search_text. */
#ifndef CHAT_QUESTION_H
#define CHAT_QUESTION_H

#include <stdbool.h>
#include <stddef.h>

#include "chat_customer.h"
#include "chat_memory.h"

/* The figures and facts a question can ask for, one X per row:
 *   X(id, noun, question cues, sentence cue, unit, the largest, the smallest, unless)
 * question cues: '|'-separated phrases (whole words, any case) that ask for it; the first row that
 *   matches wins, so the more specific rows come first ("cruise speed" before "speed"). A sentence cue
 *   made of words asks for it too.
 * sentence cue: how the knowledge base states it; its figure follows the cue ("fuel tank capacity of
 *   450 L") or just precedes it ("a 300 L fresh water tank").
 * unit: written after the figure (before it for "$"); "" = a fact in words, never compared.
 * the largest / the smallest: what the winner of a comparison does ("has the biggest fuel tank").
 * unless: '|'-separated words that mean the cue is about something else ("how long is the warranty"). */
#define CHAT_ATTR_MAP(X)                                                                                          \
    X(FUEL_BURN, "fuel consumption", "burn|burns|consumption|fuel per hour|fuel economy|fuel efficient",         \
      "burn", "L", "burns the most fuel", "burns the least fuel", "")                                      \
    X(FRESH_WATER, "fresh water tank", "fresh water|freshwater tank|water tank", "fresh water tank", "L",         \
      "has the biggest fresh water tank", "has the smallest fresh water tank", "flush|flushing")                  \
    X(HOLDING_TANK, "holding tank", "holding tank", "holding tank", "L", "has the biggest holding tank",           \
      "has the smallest holding tank", "pump|pumped")                                                             \
    X(FUEL_TANK, "fuel tank",                                                                                     \
      "fuel tank|fuel tanks|fuel capacity|tank capacity|fuel does it hold|fuel it holds|how much fuel|"          \
      "gallons of fuel|liters of fuel|litres of fuel|tank",                                                       \
      "fuel tank capacity", "L", "has the biggest fuel tank", "has the smallest fuel tank",                       \
      "gauge|vent|sender|smell")                                                                                  \
    X(RANGE, "range", "range|how far|farthest|furthest", "range of", "nautical miles", "has the longest range",   \
      "has the shortest range", "price|financing|loan|term|terms")                                                \
    X(CRUISE_SPEED, "cruise speed", "cruise speed|cruising speed|cruise|cruising", "cruise speed", "knots",       \
      "cruises fastest", "cruises slowest", "burn|burns|range")                                                   \
    X(TOP_SPEED, "top speed", "top speed|speed|how fast|fastest|faster|slowest|slower|quickest|quicker",          \
      "top speed", "knots", "is the fastest", "is the slowest", "")                                               \
    X(TORQUE, "peak torque", "torque", "torque", "Nm", "has the most torque", "has the least torque", "")          \
    X(POWER, "engine power", "power|horsepower|hp|powerful|kw", "engine power", "hp", "is the most powerful",     \
      "is the least powerful", "shore|steering|trim")                                                             \
    X(DISPLACEMENT, "engine displacement", "displacement|cc|cubic", "displacement", "liters",                     \
      "has the biggest engine", "has the smallest engine", "")                                                    \
    X(ENGINE, "engine", "what engine|which engine|engine does|engines|motor|motors|powered by|powers|outboard",  \
      "powered by", "", "", "", "oil|impeller|overheat|overheats|start|alarm|stall|stalls")                       \
    X(LENGTH, "overall length",                                                                                   \
      "length|long is|longest|longer|shortest|shorter|in feet|feet long|biggest boat|largest boat|smallest boat|" \
      "bigger|larger|smaller",                                                                                    \
      "overall length", "m", "is the longest", "is the shortest",                                                 \
      "warranty|valid|take|takes|last|lasts|service|plan|approval|loan|term|wait|offer|deposit|hours|days|"      \
      "tank|fee|trip")                                                                                            \
    X(BEAM, "beam", "beam|wide|width|widest|wider|narrowest|narrower", "beam", "m", "is the widest",              \
      "is the narrowest", "")                                                                                     \
    X(DRAFT, "draft", "draft|draught|shallow|shallowest|shallower|deepest", "draft", "m", "has the deepest draft", \
      "has the shallowest draft", "")                                                                             \
    X(WEIGHT, "dry weight", "weigh|weighs|weight|heavy|heavier|heaviest|lightest|lighter", "dry weight", "kg",    \
      "is the heaviest", "is the lightest", "")                                                                   \
    X(MAX_LOAD, "maximum load", "maximum load|max load|payload|load capacity", "maximum load", "kg",              \
      "takes the biggest load", "takes the smallest load", "")                                                    \
    X(SLEEPS, "berths", "sleep|sleeps|berths", "sleep", "", "", "", "")                                            \
    X(PERSONS, "passenger capacity", "people|persons|passengers|carry", "maximum of", "persons",                   \
      "carries the most people", "carries the fewest people", "")                                                 \
    X(OIL_TYPE, "recommended oil", "what oil|which oil|oil should|kind of oil|type of oil|oil grade|oil type",     \
      "recommended oil", "", "", "", "")                                                                          \
    X(GEAR_LUBE, "gear lube", "gear lube|gear oil|lower unit|outdrive oil", "gear lube", "L",                      \
      "takes the most gear lube", "takes the least gear lube", "")                                                \
    X(OIL, "engine oil capacity",                                                                                 \
      "oil capacity|how much oil|much engine oil|oil does|liters of oil|litres of oil|quarts|oil change",         \
      "of engine oil", "L", "takes the most engine oil", "takes the least engine oil", "pressure")               \
    X(OCTANE, "octane rating", "octane|gasoline|petrol", "octane", "AKI", "needs the highest octane",             \
      "needs the lowest octane", "")                                                                              \
    X(SHOP_TIME, "shop time", "how long does|how long will|shop time|how many hours does", "shop time", "hours",  \
      "takes the longest", "takes the shortest", "warranty|valid|approval|diagnose")                              \
    X(INTERVAL, "service interval", "how often|how frequently|interval|when should", "every", "", "", "", "")     \
    X(DUE, "due", "due", "due", "", "", "", "")                                                                   \
    X(RATE, "interest rate", "interest rate|interest|apr", "percent", "", "", "", "")                             \
    X(PRICE, "price", "cost|costs|price|prices|priced|fee|fees|charge|charged|labor rate|hourly rate|how much is", \
      "$", "$", "", "", "")

typedef enum chat_attr {
    CHAT_ATTR_NONE = -1,
#define CHAT_ATTR_ENUM(id, noun, cues, cue, unit, more, less, unless) CHAT_ATTR_##id,
    CHAT_ATTR_MAP(CHAT_ATTR_ENUM)
#undef CHAT_ATTR_ENUM
        CHAT_ATTR_COUNT
} chat_attr;

typedef struct chat_attr_info {
    const char *noun;       /* "fuel tank" */
    const char *cue;        /* "fuel tank capacity" */
    const char *unit;       /* "L"; "" = not a figure */
    const char *more, *less; /* "has the biggest fuel tank", "has the smallest fuel tank" */
} chat_attr_info;

/* The row of a (valid) attribute; NULL for CHAT_ATTR_NONE. */
const chat_attr_info *chat_attr_get(chat_attr a);
/* True when word (lower case) is one of the words that ask for a ("heavy" for the dry weight). */
bool chat_attr_word(chat_attr a, const char *word);

/* A figure as a sentence states it. */
typedef struct chat_figure {
    double value;   /* 1135 */
    char shown[96]; /* "1,135 L (300 US gallons)": as written, with the bracketed conversion after it */
} chat_figure;

/* The figure of attribute a in sentence s (NUL-terminated): the first with a's unit after its cue ("fuel
 * tank capacity of 1,135 L"), else the one just before the cue ("a 300 L fresh water tank"); with
 * "combined" in the sentence (twin engines), the largest after the cue. False when there is none, or a
 * states no figure. */
bool chat_attr_figure(const char *s, chat_attr a, chat_figure *f);

/* What the question asks of the customer's records (bits). */
enum {
    CHAT_ASK_BOATS = 1,    /* which boats they own */
    CHAT_ASK_NEXT = 2,     /* their next appointment */
    CHAT_ASK_LAST = 4,     /* their last visit and what was done */
    CHAT_ASK_HISTORY = 8,  /* their past visits */
    CHAT_ASK_HOURS = 16,   /* engine hours */
    CHAT_ASK_DUE = 32,     /* when each boat is due for service */
};

#define CHAT_QUESTION_MAX_MODELS 8

typedef struct chat_question {
    chat_attr attr;   /* the figure or fact asked for, or CHAT_ATTR_NONE */
    int extreme;      /* +1: the largest ("biggest", "faster", "more"), -1: the smallest, 0: neither */
    bool compare;     /* compares models: a superlative or comparative of a figure, "compare", "vs", ... */
    bool coverage;    /* asks what is covered ("does the warranty cover ...") */
    bool tasks;       /* asks what a service includes, replaces or does */
    bool howto;       /* asks what to do: "how do I", "what should I check" */
    bool mine;        /* about the customer's own boat(s): "my", "I own" */
    bool small_talk;  /* a greeting or thanks and nothing else */
    bool elliptical;  /* leans on the previous question: "and the 310?", "can it be transferred?" */
    int customer;     /* CHAT_ASK_* bits */
    /* the models it names, as their numbers ("190"), in order; and unknown brand-and-number names
     * ("Seawind 999") are in it too: the caller decides which exist */
    char models[CHAT_QUESTION_MAX_MODELS][16];
    int n_models;
} chat_question;

void chat_question_parse(const char *text, chat_question *q);

/* The first place text holds needle, ignoring ASCII case; NULL when nowhere. */
const char *chat_question_find(const char *text, const char *needle);
/* True when text contains phrase as whole words, ignoring case. */
bool chat_question_has(const char *text, const char *phrase);
/* True when text contains any of the '|'-separated phrases as whole words. */
bool chat_question_has_any(const char *text, const char *phrases);

/* The text to search the knowledge base with for message: the message itself, then the words that state
 * its figure in the knowledge base ("how heavy" -> "dry weight"); for an elliptical follow-up, what it
 * leaves out of the previous user question in hist (its figure and the models it named, or all its
 * words when the follow-up asks no figure of its own: "can it be transferred?" after the hull warranty);
 * then context_model (the model the conversation or the customer's boat is about; NULL: none), or, for a
 * comparison of "my boats", the models of all of cust's boats. hist and cust may be NULL. Caller frees;
 * NULL when out of memory. */
char *chat_question_search_text(const char *message, const chat_history *hist, const char *context_model,
                                const chat_customer *cust);

/* True when chat_question_search_text may add word (lower case) for retrieval ("winterization" for
 * "winter", "dry weight" for "how heavy"): words the user did not say. */
bool chat_question_added_word(const char *word);

/* How many passages to retrieve for text (a search text): k, or enough for every model's section when it
 * compares models, because the answer must see each model's figure; *compares (may be NULL) is set when
 * it does: retrieval should then favour none of them. */
size_t chat_question_passages(const char *text, size_t k, bool *compares);

#endif
