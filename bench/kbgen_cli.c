/* chat-kbgen: a synthetic knowledge base at benchmark scale, and the retrieval benchmark over it.
 *
 *   chat-kbgen --passages N [--seed S] [--no-optimize]
 *       replaces the synthetic passages (sources "gen/...") of the database named by CHAT_DB_* with N new
 *       ones, and the synthetic models (category "gen/...") of the models table with theirs, so the
 *       pipeline recognises them in questions as it does a real line; brings the derived search table
 *       kb_search up to date (chat_kb_sync_all), then OPTIMIZE TABLE kb_documents, kb_search. The
 *       hand-written knowledge base (sql/kb) and models stay.
 *   chat-kbgen --questions N [--seed S]
 *       prints N realistic questions, one per line, about what the database holds (for chat-bench).
 *   chat-kbgen --retrieval-bench Q [--seed S] [-k K] [--warmup W]
 *       runs Q such questions through chat_kb_search (as the pipeline calls it) and prints the latency
 *       percentiles, overall and per kind of question, plus how often the top hit is the right one.
 *
 * Why synthetic text must look real: full-text cost depends on the posting-list lengths of the
 * query's words. A generator that repeats a few sentences gives every word a huge posting list (slow,
 * pessimistic); random strings give tiny ones (fast, optimistic). So the text is built the way the real
 * knowledge base is: the same section structure per model (specs, maintenance), fault-code guides,
 * policies and locations; consistent facts per model (its engine, power and capacities recur across its
 * passages); a shared domain vocabulary in varied sentence templates; and a long tail of proper nouns
 * (brands, part families, places) drawn from a Zipf distribution, as names are in real documents.
 * Everything is a deterministic function of the seed and N.
 *
 * Rows go in through chat_db_run (prepared, ROWS_PER_INSERT rows per INSERT), ROWS_PER_TXN rows per
 * transaction; the models in one INSERT of their own, in the first transaction. The database must already have the
 * schema (chat-kb setup). */
#include <ctype.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_stats.h"
#include "chat_common.h"
#include "chat_config.h"
#include "chat_db.h"
#include "chat_kb.h"
#include "chat_log.h"
#include "chat_util.h"
#include "cli.h"

#define GEN_PREFIX "gen/"
#define ROWS_PER_INSERT 100 /* the table is Aria: every statement syncs its log, so few big ones */
#define ROWS_PER_TXN 500
#define LEXICON_SIZE 6000
#define MAX_PASSAGES 2000000
#define MAX_QUESTIONS 10000000

/* ------------------------------------------------------------------ vocabulary */

static const char *const ONSETS[] = {"b",  "br", "c",  "ch", "cl", "d",  "dr", "f",  "fl", "g",  "gr", "h",
                                     "k",  "kr", "l",  "m",  "n",  "p",  "pr", "r",  "s",  "sk", "sl", "st",
                                     "t",  "tr", "v",  "w",  "z",  "th", "sh", "qu", "gl", "bl", "sp", "j"};
static const char *const VOWELS[] = {"a", "e", "i", "o", "u", "ai", "ea", "ou", "y", "ie", "oa", "au"};
static const char *const CODAS[] = {"", "", "", "n", "r", "l", "s", "x", "t", "m", "nd", "rk", "st", "ck", "ll", "rn"};

static const char *const CATEGORIES[] = {"bowrider",      "center console", "pontoon",     "cabin cruiser",
                                         "deck boat",     "ski boat",       "trawler",     "catamaran",
                                         "walkaround",    "jet boat",       "sport cruiser", "bay boat",
                                         "express cruiser", "aluminum fishing boat", "wake boat"};
static const char *const SUFFIXES[] = {"", " XL", " Sport", " LX"};

static const char *const PARTS[] = {
    "water pump impeller", "thermostat",        "fuel filter",         "oil filter",        "spark plugs",
    "anodes",              "gear lube",         "trim fluid",          "steering fluid",    "drive belt",
    "raw water strainer",  "heat exchanger",    "fuel/water separator", "propeller",        "bilge pump",
    "battery terminals",   "shift cable",       "throttle cable",      "bellows",           "gimbal bearing",
    "exhaust elbow",       "seacocks",          "through-hull fittings", "hull zincs",      "coolant",
    "air filter",          "fuel lines",        "trailer bearings",    "winch strap",       "hydraulic hoses",
};

static const char *const SYSTEMS[] = {"engine",   "fuel",     "cooling",    "electrical", "charging",
                                      "steering", "trim",     "navigation", "bilge",      "exhaust",
                                      "ignition", "transmission", "hydraulics", "propulsion", "sensors"};

static const char *const COMPONENTS[] = {
    "oil pressure sender",      "coolant temperature sensor", "crankshaft position sensor", "camshaft sensor",
    "knock sensor",             "fuel pressure regulator",    "low-pressure fuel pump",     "high-pressure fuel pump",
    "fuel injector",            "water-in-fuel sensor",       "throttle position sensor",   "idle air control valve",
    "manifold pressure sensor", "exhaust temperature sensor", "raw water pump",             "thermostat housing sensor",
    "alternator",               "voltage regulator",          "starter solenoid",           "battery isolator",
    "trim sender",              "trim pump motor",            "steering actuator",          "helm pump",
    "shift actuator",           "neutral safety switch",      "gear lube pressure switch",  "bilge float switch",
    "anchor windlass motor",    "chartplotter",               "NMEA 2000 backbone",         "GPS antenna",
    "depth transducer",         "autopilot drive unit",       "ignition coil",              "engine control module",
    "oxygen sensor",            "fuel level sender",          "seawater pressure sensor",   "exhaust riser sensor",
    "tachometer signal",        "key switch circuit",         "lanyard stop switch",        "trim tab actuator",
};

static const char *const FAILURES[] = {
    "Open Circuit",  "Short to Ground",      "Signal High",      "Signal Low",     "Intermittent Signal",
    "Communication Lost", "Overtemperature", "Low Voltage",      "High Voltage",   "Calibration Error",
    "Stuck Closed",  "Implausible Reading",  "Overcurrent",      "Slow Response",  "Supply Fault",
};

static const char *const SYMPTOMS[] = {
    "Engine Will Not Start",        "Engine Stalls at Idle",      "Loss of Power at Full Throttle",
    "Rough Idle and Misfire",       "Excessive Vibration",        "Steering Feels Stiff",
    "Trim Will Not Move",           "Battery Drains Overnight",   "Chartplotter Will Not Boot",
    "Bilge Pump Runs Constantly",   "White Smoke From Exhaust",   "Fuel Smell in the Bilge",
    "Boat Will Not Plane",          "Shifting Is Hard",           "Gauges Read Zero",
    "Water in the Fuel",            "Overheating at Cruise",      "Alarm With No Fault Code",
};

static const char *const POLICY_TOPICS[] = {"warranty", "returns", "financing", "service-plans", "appointments",
                                            "insurance", "parts", "trade-ins", "delivery", "storage"};

static const char *const REGIONS[] = {"northern", "southern", "coastal", "lake", "river", "island", "eastern", "western"};

/* ------------------------------------------------------------------ the world */

typedef struct model {
    char id[64];
    char name[64];
    char brand[24];
    char engine[48];
    const char *category;
    int number, year, hp, rpm, torque, fuel_l, water_l, persons, weight_kg, top_kn, cruise_kn, range_nm, deadrise;
    double length_m, beam_m, draft_m, oil_l;
} model;

typedef struct world {
    uint64_t rng;
    char (*lex)[20];  /* pseudo-words, most frequent first */
    double *zipf_cdf; /* cumulative, LEXICON_SIZE entries */
    model *models;
    int nmodels;
    char (*towns)[40];
    int ntowns;
} world;

static void pseudo_word(uint64_t *r, char *out, size_t cap, int syllables)
{
    size_t n = 0;
    out[0] = '\0';
    for (int s = 0; s < syllables; s++) {
        const char *parts[3] = {ONSETS[bench_rand_below(r, CHAT_ARRAY_LEN(ONSETS))],
                                VOWELS[bench_rand_below(r, CHAT_ARRAY_LEN(VOWELS))],
                                s == syllables - 1 ? CODAS[bench_rand_below(r, CHAT_ARRAY_LEN(CODAS))] : ""};
        for (int k = 0; k < 3; k++) {
            size_t l = strlen(parts[k]);
            if (n + l + 1 >= cap) return;
            memcpy(out + n, parts[k], l + 1);
            n += l;
        }
    }
}

static void capitalize(char *s)
{
    if (*s) *s = (char)toupper((unsigned char)*s);
}

/* Zipf(s = 1.07) over the lexicon: a handful of names recur everywhere, most appear a few times. */
static int zipf_pick(world *w)
{
    double u = (double)(bench_rand(&w->rng) >> 11) / (double)(1ull << 53);
    int lo = 0, hi = LEXICON_SIZE - 1;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (w->zipf_cdf[mid] < u) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

static int world_init(world *w, uint64_t seed, int nmodels, int ntowns)
{
    memset(w, 0, sizeof *w);
    w->rng = seed * 0x2545F4914F6CDD1Dull + 1;
    w->lex = calloc(LEXICON_SIZE, sizeof *w->lex);
    w->zipf_cdf = calloc(LEXICON_SIZE, sizeof *w->zipf_cdf);
    w->models = calloc((size_t)(nmodels > 0 ? nmodels : 1), sizeof *w->models);
    w->towns = calloc((size_t)(ntowns > 0 ? ntowns : 1), sizeof *w->towns);
    if (!w->lex || !w->zipf_cdf || !w->models || !w->towns) return CHAT_ENOMEM;
    double total = 0;
    for (int i = 0; i < LEXICON_SIZE; i++) {
        pseudo_word(&w->rng, w->lex[i], sizeof w->lex[i], 2 + (int)bench_rand_below(&w->rng, 2));
        total += 1.0 / pow((double)(i + 1), 1.07);
        w->zipf_cdf[i] = total;
    }
    for (int i = 0; i < LEXICON_SIZE; i++) w->zipf_cdf[i] /= total;

    /* Brands: 80 names; a model is a unique (brand, number, suffix). */
    enum { NBRANDS = 80, NNUM = 45, NSUF = 4 };
    char brands[NBRANDS][24];
    for (int b = 0; b < NBRANDS; b++) {
        pseudo_word(&w->rng, brands[b], sizeof brands[b], 2);
        capitalize(brands[b]);
    }
    int slots = NBRANDS * NNUM * NSUF;
    if (nmodels > slots) nmodels = slots;
    unsigned char *used = calloc((size_t)slots, 1);
    if (!used) return CHAT_ENOMEM;
    for (int m = 0; m < nmodels; m++) {
        int s;
        do s = (int)bench_rand_below(&w->rng, (uint32_t)slots);
        while (used[s]);
        used[s] = 1;
        int b = s / (NNUM * NSUF), num = 160 + 10 * ((s / NSUF) % NNUM), suf = s % NSUF;
        model *md = &w->models[m];
        snprintf(md->brand, sizeof md->brand, "%s", brands[b]);
        snprintf(md->name, sizeof md->name, "%s %d%s", md->brand, num, SUFFIXES[suf]);
        snprintf(md->id, sizeof md->id, "%s-%d%s", md->brand, num, suf ? "-" : "");
        if (suf) snprintf(md->id + strlen(md->id), sizeof md->id - strlen(md->id), "%s", SUFFIXES[suf] + 1);
        for (char *p = md->id; *p; p++) *p = (char)tolower((unsigned char)*p);
        md->number = num;
        md->category = CATEGORIES[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(CATEGORIES))];
        md->year = 2019 + (int)bench_rand_below(&w->rng, 7);
        double ft = num / 10.0 + (double)bench_rand_below(&w->rng, 10) / 10.0;
        md->length_m = ft * 0.3048;
        md->beam_m = 1.9 + ft * 0.045 + (double)bench_rand_below(&w->rng, 30) / 100.0;
        md->draft_m = 0.3 + ft * 0.012 + (double)bench_rand_below(&w->rng, 20) / 100.0;
        md->hp = ((int)(ft * ft * 0.35) / 5) * 5 + 50 + 25 * (int)bench_rand_below(&w->rng, 8);
        md->rpm = 5000 + 100 * (int)bench_rand_below(&w->rng, 12);
        md->torque = md->hp * 13 / 10 + (int)bench_rand_below(&w->rng, 60);
        md->fuel_l = ((int)(ft * ft * 0.6) / 10) * 10 + 40;
        md->water_l = 20 + 10 * (int)bench_rand_below(&w->rng, 20);
        md->persons = 4 + (int)(ft / 4) + (int)bench_rand_below(&w->rng, 4);
        md->weight_kg = ((int)(ft * ft * ft * 0.09) / 10) * 10 + 300;
        md->top_kn = 28 + (int)bench_rand_below(&w->rng, 30);
        md->cruise_kn = md->top_kn * 2 / 3;
        md->range_nm = 120 + (int)bench_rand_below(&w->rng, 250);
        md->deadrise = 12 + (int)bench_rand_below(&w->rng, 14);
        md->oil_l = 4.0 + (double)bench_rand_below(&w->rng, 80) / 10.0;
        char eng[20];
        snprintf(eng, sizeof eng, "%s", w->lex[bench_rand_below(&w->rng, 200)]);
        capitalize(eng);
        snprintf(md->engine, sizeof md->engine, "%s %c%c%d", eng, 'A' + (char)bench_rand_below(&w->rng, 26),
                 'A' + (char)bench_rand_below(&w->rng, 26), md->hp);
    }
    free(used);
    w->nmodels = nmodels;
    for (int t = 0; t < ntowns; t++) {
        static const char *const TAILS[] = {" Harbor", " Bay", " Point", " Lake", " Landing", " Cove", " Falls", ""};
        char base[20];
        pseudo_word(&w->rng, base, sizeof base, 2 + (int)bench_rand_below(&w->rng, 2));
        capitalize(base);
        snprintf(w->towns[t], sizeof w->towns[t], "%s%s", base, TAILS[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(TAILS))]);
    }
    w->ntowns = ntowns;
    return 0;
}

static void world_free(world *w)
{
    free(w->lex), free(w->zipf_cdf), free(w->models), free(w->towns);
    memset(w, 0, sizeof *w);
}

/* ------------------------------------------------------------------ templates
 * {m} model name, {brand}, {cat}, {eng}, {hp} {kw} {rpm} {nm} {len} {ft} {beam} {draft} {fuel} {gal} {water}
 * {pers} {wt} {lb} {top} {cruise} {range} {year} {dr} {oil}; {n:A:B} integer, {d:A:B} one decimal;
 * {w} / {W} a Zipf-distributed proper noun (lower / capitalised); {part} {sys} {comp} {fail} {code}
 * {town} {region}; {pick:a|b|c}. */

typedef struct gen_ctx {
    world *w;
    const model *m;
    const char *code, *comp, *fail, *sys, *town;
} gen_ctx;

static void put_int(chat_buf *b, long v)
{
    /* thousands separators as in the hand-written passages: 2,270 kg */
    if (v >= 10000 || v <= -10000) chat_buf_printf(b, "%ld,%03ld", v / 1000, labs(v % 1000));
    else chat_buf_printf(b, "%ld", v);
}

/* A model's whole-number placeholders: the int field at off, converted where times (a factor) or per (a
 * divisor) is set, printed with put_int. */
typedef struct model_int {
    const char *key;
    size_t off;
    double times, per;
} model_int;

static const model_int MODEL_INTS[] = {
    {"hp", offsetof(model, hp), 0, 0},          {"kw", offsetof(model, hp), 0.7457, 0},
    {"rpm", offsetof(model, rpm), 0, 0},        {"nm", offsetof(model, torque), 0, 0},
    {"fuel", offsetof(model, fuel_l), 0, 0},    {"gal", offsetof(model, fuel_l), 0, 3.785},
    {"water", offsetof(model, water_l), 0, 0},  {"pers", offsetof(model, persons), 0, 0},
    {"wt", offsetof(model, weight_kg), 0, 0},   {"lb", offsetof(model, weight_kg), 2.2046, 0},
    {"top", offsetof(model, top_kn), 0, 0},     {"cruise", offsetof(model, cruise_kn), 0, 0},
    {"range", offsetof(model, range_nm), 0, 0}, {"year", offsetof(model, year), 0, 0},
    {"dr", offsetof(model, deadrise), 0, 0},
};

/* A model's measurements: the double field at off with that many decimals. */
static const struct {
    const char *key;
    size_t off;
    int decimals;
} MODEL_REALS[] = {
    {"len", offsetof(model, length_m), 2},
    {"beam", offsetof(model, beam_m), 2},
    {"draft", offsetof(model, draft_m), 2},
    {"oil", offsetof(model, oil_l), 1},
};

/* The placeholders of the model's own facts; false for a key that is none of them. */
static bool expand_model_key(chat_buf *out, const char *key, const model *m)
{
    for (size_t i = 0; i < CHAT_ARRAY_LEN(MODEL_INTS); i++) {
        const model_int *k = &MODEL_INTS[i];
        if (strcmp(key, k->key)) continue;
        int v;
        memcpy(&v, (const char *)m + k->off, sizeof v);
        put_int(out, k->times ? (long)(v * k->times) : k->per ? (long)(v / k->per) : v);
        return true;
    }
    for (size_t i = 0; i < CHAT_ARRAY_LEN(MODEL_REALS); i++)
        if (!strcmp(key, MODEL_REALS[i].key)) {
            double v;
            memcpy(&v, (const char *)m + MODEL_REALS[i].off, sizeof v);
            chat_buf_printf(out, "%.*f", MODEL_REALS[i].decimals, v);
            return true;
        }
    if (!strcmp(key, "m")) chat_buf_puts(out, m->name);
    else if (!strcmp(key, "brand")) chat_buf_puts(out, m->brand);
    else if (!strcmp(key, "cat")) chat_buf_puts(out, m->category);
    else if (!strcmp(key, "eng")) chat_buf_puts(out, m->engine);
    else if (!strcmp(key, "ft"))
        chat_buf_printf(out, "%d ft %d in", (int)(m->length_m / 0.3048), (int)(m->length_m / 0.0254) % 12);
    else return false;
    return true;
}

static void expand(chat_buf *out, const char *tpl, gen_ctx *c);

/* {pick:a|b|c}: one of the alternatives. */
static void expand_pick(chat_buf *out, const char *alts, world *w)
{
    int n = 1;
    for (const char *s = alts; *s; s++) n += *s == '|';
    int k = (int)bench_rand_below(&w->rng, (uint32_t)n);
    const char *s = alts;
    while (k-- > 0) s = strchr(s, '|') + 1;
    const char *e = strchr(s, '|');
    chat_buf_append(out, s, e ? (size_t)(e - s) : strlen(s));
}

/* {n:A:B} an integer, {d:A:B} a number with one decimal, in A..B. */
static void expand_number(chat_buf *out, const char *key, world *w)
{
    long a = strtol(key + 2, NULL, 10);
    const char *colon = strchr(key + 2, ':');
    long bnd = colon ? strtol(colon + 1, NULL, 10) : a;
    long v = a + (bnd > a ? (long)bench_rand_below(&w->rng, (uint32_t)(bnd - a + 1)) : 0);
    if (key[0] == 'n') put_int(out, v);
    else chat_buf_printf(out, "%ld.%u", v, bench_rand_below(&w->rng, 10));
}

/* One placeholder (the list above the templates); an unknown one expands to nothing. */
static void expand_key(chat_buf *out, const char *key, gen_ctx *c)
{
    world *w = c->w;
    if (!strncmp(key, "pick:", 5)) {
        expand_pick(out, key + 5, w);
    } else if (!strncmp(key, "n:", 2) || !strncmp(key, "d:", 2)) {
        expand_number(out, key, w);
    } else if (!strcmp(key, "w") || !strcmp(key, "W")) {
        char word[20];
        snprintf(word, sizeof word, "%s", w->lex[zipf_pick(w)]);
        if (key[0] == 'W') capitalize(word);
        chat_buf_puts(out, word);
    } else if (!strcmp(key, "part")) chat_buf_puts(out, PARTS[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(PARTS))]);
    else if (!strcmp(key, "region")) chat_buf_puts(out, REGIONS[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(REGIONS))]);
    else if (!strcmp(key, "code")) chat_buf_puts(out, c->code ? c->code : "E10");
    else if (!strcmp(key, "comp")) chat_buf_puts(out, c->comp ? c->comp : "sensor");
    else if (!strcmp(key, "fail")) {
        char f[64];
        snprintf(f, sizeof f, "%s", c->fail ? c->fail : "fault");
        for (char *s = f; *s; s++) *s = (char)tolower((unsigned char)*s);
        chat_buf_puts(out, f);
    } else if (!strcmp(key, "sys")) chat_buf_puts(out, c->sys ? c->sys : "engine");
    else if (!strcmp(key, "town")) chat_buf_puts(out, c->town ? c->town : w->towns[bench_rand_below(&w->rng, (uint32_t)w->ntowns)]);
    else if (!c->m) {
        /* a model placeholder outside a model's passage: pick any model */
        gen_ctx c2 = *c;
        c2.m = &w->models[bench_rand_below(&w->rng, (uint32_t)w->nmodels)];
        char t[272];
        snprintf(t, sizeof t, "{%s}", key);
        expand(out, t, &c2);
    } else {
        expand_model_key(out, key, c->m);
    }
}

static void expand(chat_buf *out, const char *tpl, gen_ctx *c)
{
    for (const char *p = tpl; *p;) {
        if (*p != '{') {
            const char *q = strchr(p, '{');
            size_t n = q ? (size_t)(q - p) : strlen(p);
            chat_buf_append(out, p, n);
            p += n;
            continue;
        }
        const char *end = strchr(p, '}');
        if (!end) break;
        char key[256];
        size_t kl = (size_t)(end - p - 1);
        if (kl >= sizeof key) kl = sizeof key - 1;
        memcpy(key, p + 1, kl);
        key[kl] = '\0';
        p = end + 1;
        expand_key(out, key, c);
    }
}

typedef struct section_def {
    const char *title; /* a template too */
    const char *lead;  /* always the first sentence */
    const char *const *more;
    size_t nmore;
} section_def;

#define SECTION(t, l, ...)                                                                                            \
    {t, l, (const char *const[]){__VA_ARGS__}, sizeof((const char *const[]){__VA_ARGS__}) / sizeof(const char *)}

static const section_def SPEC_SECTIONS[] = {
    SECTION("Overview", "The {m} is a {ft} {cat} built by {brand} Boats for the {year} model year.",
            "The {m} has a {dr}-degree {pick:deep-V|modified-V|planing|stepped} hull designed for {pick:offshore runs|lake cruising|day trips with the family|fishing in open water|watersports}.",
            "Owners choose the {m} for its {pick:dry ride|stable platform|roomy cockpit|easy handling|fuel economy} and its {W} {pick:interior|helm|console|seating} package.",
            "The {m} is certified CE Category {pick:B|C|D} and is sold through {brand} dealers in the {region} region.",
            "Compared with the previous generation, the {m} gained a wider beam and a redesigned {pick:T-top|hardtop|bimini|windshield}.",
            "The {W} {pick:edition|package|trim} of the {m} adds {pick:teak accents|a premium stereo|upgraded upholstery|a fishing kit}.",
            "The {m} shares its hull mold with the {W} {n:16:48} from the {w} yard, but has a different deck layout.",
            "More than {n:200:4000} units of the {m} have been delivered since production started in {year}."),
    SECTION("Engine and Power", "The {m} is powered by the {eng} engine with {hp} hp ({kw} kW) at {rpm} rpm.",
            "Peak torque of the {eng} is {nm} Nm at {n:3200:4800} rpm, so the {m} gets on plane quickly.",
            "The {eng} is a {pick:V6|V8|inline four|inline six|twin-turbo V6} with electronic fuel injection and a {n:40:120} A alternator.",
            "The engine of the {m} runs on {pick:unleaded gasoline with a minimum of 89 AKI|unleaded gasoline with a minimum of 87 AKI|marine diesel} fuel.",
            "A {pick:three|four|five}-blade {pick:stainless steel|aluminum} propeller with {n:13:23}-inch pitch is standard on the {m}.",
            "The engine power of the {m} can be upgraded to {n:150:600} hp with the optional {W} package.",
            "The {eng} uses a {pick:closed|raw water} cooling system with a {W} heat exchanger.",
            "Engine data from the {eng} is shown on the {W} helm display over NMEA 2000."),
    SECTION("Dimensions and Weight", "The overall length of the {m} is {len} m ({ft}) and its beam is {beam} m.",
            "The draft of the {m} is {draft} m with the drive down.",
            "The dry weight of the {m} is {wt} kg ({lb} lb) including the engine.",
            "The {m} has a deadrise of {dr} degrees at the transom.",
            "The height of the {m} on its trailer is {d:2:4} m, so it fits under most garage doors only with the {pick:T-top|bimini|arch} folded.",
            "A trailer for the {m} must be rated for at least {n:1200:9000} kg.",
            "The cockpit of the {m} is {d:1:3} m deep and the freeboard at the bow is {d:0:1} m."),
    SECTION("Capacities", "The {m} has a fuel tank capacity of {fuel} L ({gal} US gallons).",
            "The fresh water tank of the {m} holds {water} L and the holding tank {n:20:120} L.",
            "The {m} is rated for a maximum of {pers} persons and a maximum load of {n:500:2500} kg.",
            "There is a {n:40:200} L livewell and {n:2:6} insulated fish boxes in the deck of the {m}.",
            "Storage on the {m} includes a {n:50:300} L {pick:anchor locker|console compartment|ski locker|cabin locker}.",
            "The fuel fill of the {m} is on the {pick:port|starboard} gunwale with a {W} vent fitting."),
    SECTION("Performance", "The top speed of the {m} is {top} knots with a light load.",
            "The best cruise speed of the {m} is {cruise} knots at {n:3500:4800} rpm, burning about {n:20:140} L per hour.",
            "The range of the {m} is approximately {range} nautical miles at cruise speed with a 10 percent reserve.",
            "In a {d:0:2} m chop the {m} stays dry thanks to its {pick:high bow flare|spray rails|reverse chines}.",
            "Time to plane on the {m} is about {n:3:7} seconds with four people aboard.",
            "The {m} holds a tight turn at {n:20:35} knots without ventilating the propeller."),
    SECTION("Electrical", "The {m} has a 12 V DC electrical system with {pick:two|three} {pick:AGM|lithium|flooded} batteries.",
            "An automatic charging relay joins the house and starting batteries of the {m}.",
            "The helm of the {m} has a digital switching panel, LED navigation lights and {n:2:6} USB-C ports.",
            "Two automatic bilge pumps rated {n:1500:4000} GPH each protect the {m}.",
            "Shore power on the {m} is a {pick:30|50} A inlet with a {n:20:60} A battery charger.",
            "The {W} wiring harness of the {m} uses tinned marine-grade copper throughout."),
    SECTION("Standard Equipment", "The {m} comes standard with a {W} {n:7:16}-inch touchscreen chartplotter with sonar.",
            "Standard equipment on the {m} includes hydraulic steering, a fixed-mount VHF radio and a {W} stereo.",
            "A {pick:bow cushion set|mooring cover|swim ladder|raw water washdown} is included with every {m}.",
            "The {m} has {n:4:20} rod holders and a leaning post with tackle storage.",
            "Every {m} is delivered with a safety kit: life jackets, a fire extinguisher and flares."),
    SECTION("Options", "Popular options for the {m} include an anchor windlass, a radar dome and an autopilot.",
            "The {m} can be ordered with a {W} {pick:tower|hardtop|arch} and underwater LED lights.",
            "A tandem-axle trailer with disc brakes is available for the {m}.",
            "The {pick:fishing|watersports|cruising} package for the {m} adds a {w} {pick:rocket launcher|tow pylon|cockpit table}.",
            "Dealers in the {region} region often fit the {m} with a {W} bottom paint system."),
};

static const section_def MAINT_SECTIONS[] = {
    SECTION("Maintenance Schedule Overview", "The maintenance schedule of the {m} is based on the engine hours of its {eng}.",
            "The {m} needs a break-in service at {n:10:30} hours, a routine service every {pick:50|100|150} hours and an annual service each season.",
            "Engine hours are shown on the {W} display at the helm of the {m}.",
            "Owners who run the {m} in salt water should flush the engine after every trip.",
            "Skipping scheduled maintenance on the {m} can void the {brand} engine warranty."),
    SECTION("{pick:20|25|30}-Hour Break-In Service", "The break-in service of the {m} includes an oil and filter change and a check of the {part}.",
            "During break-in the {m} should be run at varied speeds below {n:3500:4500} rpm.",
            "The technician reads the engine computer of the {eng} for stored fault codes.",
            "The propeller nut torque and engine mounting bolts are checked at the break-in service.",
            "The break-in service on a {m} takes about {n:1:3} hours of shop time."),
    SECTION("{pick:100|150|200}-Hour Service", "The routine service of the {m} replaces the engine oil, the oil filter and the {part}.",
            "The technician also greases the steering, inspects the {part} and tests the batteries.",
            "The {pick:100|150|200}-hour service on the {m} takes about {n:2:5} hours of shop time.",
            "Parts for this service come as a {W} kit from {brand} dealers.",
            "If the {m} is used for {pick:trolling|towing|commercial charters}, halve the service interval."),
    SECTION("Engine Oil Type and Capacity", "The {eng} of the {m} takes {oil} L of engine oil with a filter change.",
            "The recommended oil is {pick:10W-30|10W-40|25W-40|15W-40} marine oil certified to NMMA FC-W.",
            "Check the oil level on the dipstick before every trip with the engine level.",
            "The gear case of the {m} takes {d:0:3} L of SAE 90 marine gear lube.",
            "Using automotive oil in the {eng} can cause {pick:foaming|bearing wear|sludge} and is not covered."),
    SECTION("Water Pump Impeller", "The water pump impeller of the {m} must be replaced every {n:2:4} years or {pick:200|300|400} hours.",
            "If the telltale stream weakens, stop the engine and check the intake for debris.",
            "Running the {eng} with a failed impeller quickly overheats the engine.",
            "Replace the impeller more often when the {m} is run in sandy or silty water.",
            "The impeller kit for the {m} is part {W}-{n:1000:9999}."),
    SECTION("Fuel System Care", "The {m} has a {n:10:30}-micron fuel/water separator filter that should be replaced every season.",
            "Use fuel stabilizer if the {m} sits for more than {n:2:8} weeks.",
            "Ethanol blends above E10 are not approved for the {eng}.",
            "Drain water from the separator bowl of the {m} whenever the water-in-fuel alarm sounds.",
            "Fuel lines on the {m} should be inspected for cracks every {n:1:3} years."),
    SECTION("Winterization", "To winterize the {m}, book a winterization service before the first frost.",
            "Winterization of the {m} includes stabilizing the fuel, fogging the {eng} and draining the cooling system.",
            "Fresh water lines, the livewell and the washdown of the {m} are blown out and filled with antifreeze.",
            "Batteries should be removed or kept on a trickle charger over the winter.",
            "Indoor winter storage for the {m} is available at the {town} service center."),
    SECTION("Hull and Bottom Care", "Wash the hull of the {m} with fresh water after every trip.",
            "Bottom paint on the {m} should be renewed every {n:1:3} seasons if the boat stays in the water.",
            "Inspect the {part} and the hull for blisters during the annual haul-out.",
            "Wax the gelcoat of the {m} twice a year to protect it from UV damage.",
            "The {W} hull coating on the {m} must not be sanded."),
    SECTION("Batteries and Charging", "The batteries of the {m} should be load tested at every annual service.",
            "Keep the battery terminals of the {m} clean and coated with dielectric grease.",
            "A healthy fully charged battery reads about 12.7 V with everything off.",
            "Replace the batteries of the {m} every {n:3:6} years or when they no longer hold a charge.",
            "The {m} supports lithium house batteries only with the {W} charge controller."),
};

static const section_def CODE_SECTION = SECTION(
    "{code}: {Comp} {Fail}", "Fault code {code} means that the engine computer has detected a {fail} condition in the {comp} circuit.",
    "When {code} is active, the helm display shows a {pick:yellow|red|flashing} warning and the alarm {pick:sounds once|sounds continuously|beeps every ten seconds}.",
    "With {code}, the engine may {pick:run in limp mode|limit speed to {n:1500:3000} rpm|refuse to start|stall at idle|run rough}.",
    "Likely causes of {code} are a corroded connector, a damaged wire in the {sys} harness or a failed {comp}.",
    "What to do: check that the {comp} connector is firmly seated and free of corrosion, then clear the code and restart.",
    "Call service if {code} returns after a restart, because the {comp} must be tested with a diagnostic tool.",
    "On boats with the {W} harness, {code} can also be caused by a chafed wire near the {pick:transom|engine mount|helm|bilge}.",
    "{code} is stored in the engine computer for {n:20:200} engine hours even after the fault is gone.",
    "Do not ignore {code} on a long passage; reduce speed and head for port.",
    "Technicians read {code} with the {W} diagnostic interface and check the {comp} resistance against the service manual.");

static const section_def SYMPTOM_SECTION = SECTION(
    "{Symptom}", "If you notice this on your boat, first check the {part} and the {sys} system.",
    "Common causes are a clogged {part}, a loose connection or old fuel.",
    "Look at the helm display for a fault code; many {sys} problems also set a code.",
    "On the {m}, this is often caused by the {part}, which wears faster in {pick:salt water|warm water|sandy water}.",
    "If the problem persists after these checks, book a diagnostic appointment at the {town} service center.",
    "Never continue at full throttle while the problem is present.",
    "The {W} service bulletin describes a fix for some {year} boats.",
    "Technicians charge a diagnostic fee that is credited toward the repair.");

static const section_def POLICY_SECTIONS[] = {
    SECTION("{Topic} - {Region} Region", "This policy on {topic} applies to customers of dealers in the {region} region.",
            "Questions about {topic} can be sent to the {town} office by email or phone.",
            "The {topic} terms were last revised for the {n:2020:2025} season.",
            "Exceptions to this {topic} policy need the written approval of the {W} regional manager.",
            "Customers with a {W} membership get priority handling.",
            "Documents must be provided within {n:7:60} days.",
            "Fees under this policy are charged at {n:50:250} dollars per hour of shop time."),
    SECTION("{Town} Service Center", "The {town} service center is at {n:1:900} {W} {pick:Road|Drive|Way|Quay|Street}, {town}, phone +1 555-{n:1000:9999}.",
            "The {town} service center is open Monday to Friday from {n:7:9}:00 to {n:16:19}:00 and Saturday until {n:12:16}:00.",
            "The {town} location has a {n:10:80}-ton travel lift, a fuel dock and indoor storage.",
            "The {town} location specializes in {pick:pontoons|center consoles|cabin cruisers|sailboats|jet boats} and offers demo rides by appointment.",
            "Mobile service from {town} covers marinas within {n:20:120} km.",
            "Parking for trailers is available behind the {town} showroom."),
};

/* A title template may use {Comp}, {Fail}, {Symptom}, {Topic}, {Region}, {Town}: the capitalised forms of
 * the passage's own subject. */
static void expand_title(chat_buf *out, const char *tpl, gen_ctx *c, const char *symptom, const char *topic,
                         const char *region)
{
    char t[512];
    size_t n = 0;
    for (const char *p = tpl; *p && n + 80 < sizeof t; p++) {
        const char *rep = NULL;
        size_t skip = 0;
        if (!strncmp(p, "{Comp}", 6)) rep = c->comp, skip = 6;
        else if (!strncmp(p, "{Fail}", 6)) rep = c->fail, skip = 6;
        else if (!strncmp(p, "{Symptom}", 9)) rep = symptom, skip = 9;
        else if (!strncmp(p, "{Topic}", 7)) rep = topic, skip = 7;
        else if (!strncmp(p, "{Region}", 8)) rep = region, skip = 8;
        else if (!strncmp(p, "{Town}", 6)) rep = c->town, skip = 6;
        if (skip) {
            size_t start = n;
            n += (size_t)snprintf(t + n, sizeof t - n, "%s", rep ? rep : "");
            if (n > start) t[start] = (char)toupper((unsigned char)t[start]);
            p += skip - 1;
        } else {
            t[n++] = *p;
        }
    }
    t[n] = '\0';
    expand(out, t, c);
}

static void shuffle_idx(uint64_t *r, int *idx, int n)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int)bench_rand_below(r, (uint32_t)(i + 1));
        int t = idx[i];
        idx[i] = idx[j], idx[j] = t;
    }
}

/* Lead sentence plus 3..all of the others, shuffled, then 0..2 filler sentences with rare names. */
static void expand_body(chat_buf *out, const section_def *s, gen_ctx *c)
{
    expand(out, s->lead, c);
    int idx[16], n = (int)s->nmore;
    for (int i = 0; i < n; i++) idx[i] = i;
    shuffle_idx(&c->w->rng, idx, n);
    int take = 3 + (int)bench_rand_below(&c->w->rng, (uint32_t)(n - 2));
    if (take > n) take = n;
    for (int i = 0; i < take; i++) {
        chat_buf_puts(out, " ");
        expand(out, s->more[idx[i]], c);
    }
    int filler = (int)bench_rand_below(&c->w->rng, 3);
    static const char *const FILLERS[] = {
        "The {W} {w} supplied by {W} is compatible with this setup.",
        "Ask for part number {W}-{n:100:9999} at the parts counter.",
        "Some owners in {town} report that the {W} upgrade helps here.",
        "See also the {W} bulletin from {n:2018:2025} for background.",
    };
    for (int i = 0; i < filler; i++) {
        chat_buf_puts(out, " ");
        expand(out, FILLERS[bench_rand_below(&c->w->rng, CHAT_ARRAY_LEN(FILLERS))], c);
    }
}

/* ------------------------------------------------------------------ insertion */

typedef struct row {
    char source[128];
    int no;
    char title[256];
    const char *agent;
    char model_id[64];
    chat_buf body;
} row;

typedef struct inserter {
    chat_db *db;
    row rows[ROWS_PER_INSERT];
    int n;
    long long total, in_txn;
    char err[512];
} inserter;

static int flush_rows(inserter *ins)
{
    if (!ins->n) return 0;
    chat_db_param p[ROWS_PER_INSERT * 6];
    char sql[ROWS_PER_INSERT * 16 + 128] = "INSERT INTO kb_documents (source, passage_no, title, agent, model_id, body) VALUES ";
    for (int i = 0; i < ins->n; i++) {
        row *r = &ins->rows[i];
        strcat(sql, i ? ",(?,?,?,?,?,?)" : "(?,?,?,?,?,?)");
        p[i * 6 + 0] = CHAT_DB_P_STR(r->source);
        p[i * 6 + 1] = CHAT_DB_P_INT(r->no);
        p[i * 6 + 2] = CHAT_DB_P_STR(r->title);
        p[i * 6 + 3] = r->agent ? CHAT_DB_P_STR(r->agent) : CHAT_DB_P_NULL();
        p[i * 6 + 4] = r->model_id[0] ? CHAT_DB_P_STR(r->model_id) : CHAT_DB_P_NULL();
        p[i * 6 + 5] = CHAT_DB_P_STRN(r->body.data ? r->body.data : "", r->body.len);
    }
    int rc = chat_db_run(ins->db, sql, p, ins->n * 6, NULL, NULL, NULL, NULL, ins->err, sizeof ins->err);
    if (rc) return rc;
    ins->total += ins->n;
    ins->in_txn += ins->n;
    ins->n = 0;
    if (ins->in_txn >= ROWS_PER_TXN) {
        rc = chat_db_commit(ins->db, ins->err, sizeof ins->err);
        if (!rc) rc = chat_db_begin(ins->db, ins->err, sizeof ins->err);
        ins->in_txn = 0;
    }
    return rc;
}

/* Takes the next free row slot (flushing when full); NULL on a database error. */
static row *next_row(inserter *ins)
{
    if (ins->n == ROWS_PER_INSERT && flush_rows(ins)) return NULL;
    row *r = &ins->rows[ins->n++];
    chat_buf_reset(&r->body);
    r->model_id[0] = '\0';
    return r;
}

static int emit(inserter *ins, const char *source, int no, const char *agent, const model *m, const char *doc_title,
                const section_def *s, gen_ctx *c, const char *symptom, const char *topic, const char *region)
{
    row *r = next_row(ins);
    if (!r) return CHAT_EDB;
    snprintf(r->source, sizeof r->source, "%s", source);
    r->no = no;
    r->agent = agent;
    if (m) snprintf(r->model_id, sizeof r->model_id, "%s", m->id);
    chat_buf t;
    chat_buf_init(&t);
    chat_buf_printf(&t, "%s - ", doc_title);
    expand_title(&t, s->title, c, symptom, topic, region);
    size_t tl = chat_utf8_prefix(t.data, t.len, sizeof r->title - 1);
    memcpy(r->title, t.data, tl);
    r->title[tl] = '\0';
    chat_buf_free(&t);
    expand_body(&r->body, s, c);
    return r->body.data ? 0 : CHAT_ENOMEM;
}

static int count_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    *(long long *)ud = v[0] ? atoll(v[0]) : 0;
    return 0;
}

static int ignore_rows(void *ud, int ncols, char **v, unsigned long *lens) { return 0; }

/* Removes the gen/ passages of an earlier run. Many of them: the other rows are copied to a new table
 * that replaces the old one, because deleting row by row from an Aria full-text index costs about a
 * millisecond per passage (10,000 took 11 s). */
static int remove_generated(chat_db *db, long long *deleted, char *err, size_t errlen)
{
    chat_db_param like = CHAT_DB_P_STR(GEN_PREFIX "%");
    long long n = 0;
    int rc = chat_db_run(db, "SELECT COUNT(*) FROM kb_documents WHERE source LIKE ?", &like, 1, count_row, &n, NULL,
                         NULL, err, errlen);
    if (rc || n == 0) return rc;
    if (n < 1000)
        return chat_db_run(db, "DELETE FROM kb_documents WHERE source LIKE ?", &like, 1, NULL, NULL, deleted, NULL, err,
                           errlen);
    /* The hand-written passages are set aside, the table emptied at once and they are put back: the
     * table itself stays, with the triggers that keep kb_search (migration 006; a swap of tables by
     * RENAME would drop them with the old table). TRUNCATE fires no trigger, so the copy is emptied
     * too and takes the passages put back from their change rows (finish_kb). */
    static const char swap[] = "DROP TABLE IF EXISTS kb_documents_kbgen_keep;"
                               "CREATE TABLE kb_documents_kbgen_keep LIKE kb_documents;"
                               "INSERT INTO kb_documents_kbgen_keep SELECT * FROM kb_documents WHERE source NOT LIKE 'gen/%';"
                               "TRUNCATE TABLE kb_documents;"
                               "DELETE FROM kb_search;"
                               "INSERT INTO kb_documents SELECT * FROM kb_documents_kbgen_keep;"
                               "DROP TABLE kb_documents_kbgen_keep;";
    rc = chat_db_exec_script(db, swap, sizeof swap - 1, err, errlen);
    if (!rc) *deleted = n;
    return rc;
}

/* How n passages divide as in the hand-written knowledge base: mostly model documents (17 per model: 8
 * specs + 9 maintenance), then troubleshooting (what does not make a whole model goes to fault codes),
 * then policies (one third of them location pages). */
typedef struct kb_plan {
    long n_trouble, n_policy;
    int nmodels, ntowns;
} kb_plan;

static kb_plan plan_passages(long n_passages)
{
    kb_plan p = {.n_trouble = n_passages / 4, .n_policy = n_passages / 10};
    long n_model_passages = n_passages - p.n_trouble - p.n_policy;
    int per_model = (int)(CHAT_ARRAY_LEN(SPEC_SECTIONS) + CHAT_ARRAY_LEN(MAINT_SECTIONS));
    p.nmodels = (int)(n_model_passages / per_model);
    if (p.nmodels < 1 && n_passages >= per_model) p.nmodels = 1;
    p.n_trouble += n_model_passages - (long)p.nmodels * per_model;
    p.ntowns = (int)(p.n_policy / 3) + 4;
    return p;
}

/* The world's models as rows of the models table, in the load's first transaction, the category marked
 * GEN_PREFIX so that the next run removes them (begin_load). One statement: four parameters a model. */
static int insert_model_rows(inserter *ins, const world *w)
{
    if (!w->nmodels) return 0;
    chat_buf sql;
    chat_buf_init(&sql);
    chat_buf_puts(&sql, "INSERT INTO models (id, name, category, model_year) VALUES ");
    chat_db_param *p = calloc((size_t)w->nmodels * 4, sizeof *p);
    char(*cats)[64] = calloc((size_t)w->nmodels, sizeof *cats);
    int rc = CHAT_ENOMEM;
    if (!p || !cats) goto out;
    for (int i = 0; i < w->nmodels; i++) {
        const model *m = &w->models[i];
        snprintf(cats[i], sizeof cats[i], GEN_PREFIX "%s", m->category);
        p[i * 4] = CHAT_DB_P_STR(m->id), p[i * 4 + 1] = CHAT_DB_P_STR(m->name);
        p[i * 4 + 2] = CHAT_DB_P_STR(cats[i]), p[i * 4 + 3] = CHAT_DB_P_INT(m->year);
        chat_buf_puts(&sql, i ? ",(?,?,?,?)" : "(?,?,?,?)");
    }
    if (!sql.data) goto out;
    rc = chat_db_run(ins->db, sql.data, p, w->nmodels * 4, NULL, NULL, NULL, NULL, ins->err, sizeof ins->err);
out:
    if (rc == CHAT_ENOMEM) snprintf(ins->err, sizeof ins->err, "out of memory");
    free(cats), free(p);
    chat_buf_free(&sql);
    return rc;
}

/* Each model's row in the models table, specification sheet and maintenance guide. */
static int gen_models(inserter *ins, world *w)
{
    char source[128], title[200];
    int rc = insert_model_rows(ins, w);
    for (int mi = 0; !rc && mi < w->nmodels; mi++) {
        const model *m = &w->models[mi];
        gen_ctx c = {.w = w, .m = m};
        snprintf(source, sizeof source, GEN_PREFIX "%s/specs.md", m->id);
        snprintf(title, sizeof title, "%s Specifications", m->name);
        for (size_t s = 0; !rc && s < CHAT_ARRAY_LEN(SPEC_SECTIONS); s++)
            rc = emit(ins, source, (int)s, "specs", m, title, &SPEC_SECTIONS[s], &c, NULL, NULL, NULL);
        snprintf(source, sizeof source, GEN_PREFIX "%s/maintenance.md", m->id);
        snprintf(title, sizeof title, "%s Maintenance Guide", m->name);
        for (size_t s = 0; !rc && s < CHAT_ARRAY_LEN(MAINT_SECTIONS); s++)
            rc = emit(ins, source, (int)s, "maintenance", m, title, &MAINT_SECTIONS[s], &c, NULL, NULL, NULL);
    }
    return rc;
}

enum { CODE_SPACE = 3 * 9990 }; /* fault codes E10..E9999, P10.., F10.. */

/* Passage i of the troubleshooting guides (25 per file): a unique fault code while i < n_codes, else a
 * symptom guide about a random model. used marks the codes already taken. */
static int gen_trouble_passage(inserter *ins, world *w, long i, long n_codes, unsigned char *used)
{
    char source[128], title[200];
    const char *sys = SYSTEMS[(i / 25) % CHAT_ARRAY_LEN(SYSTEMS)];
    snprintf(source, sizeof source, GEN_PREFIX "troubleshooting/%s-%ld.md", sys, i / 25 + 1);
    char sys_title[64];
    snprintf(sys_title, sizeof sys_title, "%s", sys);
    capitalize(sys_title);
    snprintf(title, sizeof title, "%s Troubleshooting Guide %ld", sys_title, i / 25 + 1);
    gen_ctx c = {.w = w, .sys = sys};
    if (i < n_codes) {
        int slot;
        do slot = (int)bench_rand_below(&w->rng, CODE_SPACE);
        while (used[slot]);
        used[slot] = 1;
        char code[16];
        snprintf(code, sizeof code, "%c%d", "EPF"[slot / 9990], 10 + slot % 9990);
        c.code = code;
        c.comp = COMPONENTS[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(COMPONENTS))];
        c.fail = FAILURES[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(FAILURES))];
        return emit(ins, source, (int)(i % 25), "troubleshooting", NULL, title, &CODE_SECTION, &c, NULL, NULL, NULL);
    }
    const char *symptom = SYMPTOMS[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(SYMPTOMS))];
    const model *m = w->nmodels ? &w->models[bench_rand_below(&w->rng, (uint32_t)w->nmodels)] : NULL;
    c.m = m;
    char st[160];
    snprintf(st, sizeof st, "%s on the %s", symptom, m ? m->name : "Boat");
    return emit(ins, source, (int)(i % 25), "troubleshooting", m, title, &SYMPTOM_SECTION, &c, st, NULL, NULL);
}

/* Troubleshooting: 80 % fault codes (unique letter + number), 20 % symptom guides. */
static int gen_troubleshooting(inserter *ins, world *w, long n_trouble)
{
    long n_codes = n_trouble * 4 / 5;
    if (n_codes > CODE_SPACE) n_codes = CODE_SPACE;
    unsigned char *used = calloc(CODE_SPACE, 1);
    int rc = used ? 0 : CHAT_ENOMEM;
    for (long i = 0; !rc && i < n_trouble; i++) rc = gen_trouble_passage(ins, w, i, n_codes, used);
    free(used);
    return rc;
}

/* Policies: one third location pages (one per town), the rest topic x region policy pages. */
static int gen_policies(inserter *ins, world *w, long n_policy)
{
    char source[128];
    int rc = 0;
    for (long i = 0; !rc && i < n_policy; i++) {
        gen_ctx c = {.w = w};
        if (i % 3 == 0 && i / 3 < w->ntowns) {
            c.town = w->towns[i / 3];
            snprintf(source, sizeof source, GEN_PREFIX "policies/locations-%ld.md", i / 60 + 1);
            rc = emit(ins, source, (int)(i / 3 % 20), NULL, NULL, "Dealer Locations and Opening Hours",
                      &POLICY_SECTIONS[1], &c, NULL, NULL, NULL);
        } else {
            const char *topic = POLICY_TOPICS[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(POLICY_TOPICS))];
            const char *region = REGIONS[bench_rand_below(&w->rng, CHAT_ARRAY_LEN(REGIONS))];
            snprintf(source, sizeof source, GEN_PREFIX "policies/%s-%ld.md", topic, i / 20 + 1);
            char dt[96], tp[48];
            snprintf(tp, sizeof tp, "%s", topic);
            for (char *p = tp; *p; p++)
                if (*p == '-') *p = ' ';
            snprintf(dt, sizeof dt, "Customer Policies: %s", tp);
            rc = emit(ins, source, (int)(i % 20), NULL, NULL, dt, &POLICY_SECTIONS[0], &c, NULL, tp, region);
        }
    }
    return rc;
}

/* Before the rows: the earlier run's passages go, the keys are disabled, a transaction begins and the
 * earlier run's models go in it. Index
 * maintenance row by row costs about 1.5 ms per passage in an Aria full-text index; with the keys
 * disabled the rows go in alone and ENABLE KEYS builds the indexes once, by sorting. */
static int begin_load(inserter *ins, long long *deleted)
{
    int rc = remove_generated(ins->db, deleted, ins->err, sizeof ins->err);
    static const char disable[] = "ALTER TABLE kb_documents DISABLE KEYS";
    if (!rc) rc = chat_db_exec_script(ins->db, disable, sizeof disable - 1, ins->err, sizeof ins->err);
    if (!rc) rc = chat_db_begin(ins->db, ins->err, sizeof ins->err);
    chat_db_param gen = CHAT_DB_P_STR(GEN_PREFIX "%");
    if (!rc)
        rc = chat_db_run(ins->db, "DELETE FROM models WHERE category LIKE ?", &gen, 1, NULL, NULL, NULL, NULL, ins->err,
                         sizeof ins->err);
    return rc;
}

/* After the rows: the last ones flushed and committed (rolled back after an error), the keys enabled in
 * either case. Returns rc, or the first error of these steps. */
static int end_load(inserter *ins, int rc)
{
    if (!rc) rc = flush_rows(ins);
    if (!rc) rc = chat_db_commit(ins->db, ins->err, sizeof ins->err);
    else chat_db_rollback(ins->db);
    static const char enable[] = "ALTER TABLE kb_documents ENABLE KEYS";
    char enable_err[256];
    if (chat_db_exec_script(ins->db, enable, sizeof enable - 1, enable_err, sizeof enable_err)) {
        fprintf(stderr, "chat-kbgen: ENABLE KEYS failed: %s\n", enable_err);
        if (!rc) {
            rc = CHAT_EDB;
            snprintf(ins->err, sizeof ins->err, "%s", enable_err);
        }
    }
    return rc;
}

/* OPTIMIZE TABLE after the load (t1: its end), then the BENCH line. 0 or 1. */
static int finish_kb(chat_db *db, bool optimize, int64_t t0, int64_t t1)
{
    char err[512];
    /* the derived search table takes the load at once, as chat-kb import does */
    if (chat_kb_sync_all(db, err, sizeof err)) {
        fprintf(stderr, "chat-kbgen: kb_search not brought up to date: %s\n", err);
        return 1;
    }
    int64_t t2 = chat_now_us();
    printf("kb_search copy: %.1f s\n", (double)(t2 - t1) / 1e6);
    if (optimize) {
        /* A rebuild: the full-text index is written anew from sorted input, with no deleted-doc list. */
        int rc = chat_db_run(db, "OPTIMIZE TABLE kb_documents, kb_search", NULL, 0, ignore_rows, NULL, NULL, NULL, err,
                             sizeof err);
        int64_t t3 = chat_now_us();
        if (rc) {
            fprintf(stderr, "chat-kbgen: OPTIMIZE TABLE failed: %s\n", err);
            return 1;
        }
        printf("OPTIMIZE TABLE kb_documents, kb_search: %.1f s\n", (double)(t3 - t2) / 1e6);
    }
    long long total = -1;
    chat_db_run(db, "SELECT COUNT(*) FROM kb_documents", NULL, 0, count_row, &total, NULL, NULL, err, sizeof err);
    printf("BENCH kb_passages=%lld insert_s=%.2f\n", total, (double)(t1 - t0) / 1e6);
    return 0;
}

/* --passages: the synthetic knowledge base of n_passages passages replaces the earlier one. */
static int generate(chat_db *db, long n_passages, uint64_t seed, bool optimize)
{
    kb_plan plan = plan_passages(n_passages);
    world w;
    int rc = world_init(&w, seed, plan.nmodels, plan.ntowns);
    if (rc) {
        fprintf(stderr, "chat-kbgen: out of memory\n");
        world_free(&w);
        return 1;
    }
    inserter ins = {.db = db};
    for (int i = 0; i < ROWS_PER_INSERT; i++) chat_buf_init(&ins.rows[i].body);
    int64_t t0 = chat_now_us();
    long long deleted = 0;
    rc = begin_load(&ins, &deleted);
    if (!rc) rc = gen_models(&ins, &w);
    if (!rc) rc = gen_troubleshooting(&ins, &w, plan.n_trouble);
    if (!rc) rc = gen_policies(&ins, &w, plan.n_policy);
    rc = end_load(&ins, rc);
    int64_t t1 = chat_now_us();
    int nmodels = w.nmodels;
    for (int i = 0; i < ROWS_PER_INSERT; i++) chat_buf_free(&ins.rows[i].body);
    world_free(&w);
    if (rc) {
        fprintf(stderr, "chat-kbgen: insert failed after %lld rows: %s\n", ins.total, ins.err);
        return 1;
    }
    printf("removed %lld old synthetic passages; inserted %lld (%d models, %ld troubleshooting, %ld policy) in %.1f s"
           " (%.0f rows/s)\n",
           deleted, ins.total, nmodels, plan.n_trouble, plan.n_policy, (double)(t1 - t0) / 1e6,
           (double)ins.total / ((double)(t1 - t0) / 1e6));
    return finish_kb(db, optimize, t0, t1);
}

/* ------------------------------------------------------------------ questions */

enum { Q_SPECS, Q_MAINT, Q_CODE, Q_SYMPTOM, Q_POLICY, Q_MISS, Q_KINDS };
static const char *const Q_KIND_NAMES[Q_KINDS] = {"specs", "maintenance", "fault code", "symptom", "policy", "off-topic"};

typedef struct names {
    char (*models)[64];
    int nmodels;
    char (*codes)[16];
    int ncodes;
    char (*towns)[48];
    int ntowns;
    int cap_models, cap_codes, cap_towns;
} names;

static int model_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    names *n = ud;
    if (v[0] && n->nmodels < n->cap_models) snprintf(n->models[n->nmodels++], sizeof n->models[0], "%s", v[0]);
    return 0;
}

static int code_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    names *n = ud;
    if (!v[0] || n->ncodes >= n->cap_codes) return 0;
    const char *t = strstr(v[0], " - ");
    if (chat_kb_find_fault_code(t ? t + 3 : v[0], n->codes[n->ncodes])) n->ncodes++;
    return 0;
}

static int town_row(void *ud, int ncols, char **v, unsigned long *lens)
{
    names *n = ud;
    if (!v[0] || n->ntowns >= n->cap_towns) return 0;
    const char *t = strstr(v[0], " - ");
    if (!t) return 0;
    snprintf(n->towns[n->ntowns], sizeof n->towns[0], "%s", t + 3);
    char *sc = strstr(n->towns[n->ntowns], " Service Center");
    if (sc) *sc = '\0';
    n->ntowns++;
    return 0;
}

static void names_free(names *n)
{
    free(n->models), free(n->codes), free(n->towns);
    memset(n, 0, sizeof *n);
}

/* What the database holds: model ids, fault codes, towns (bounded samples). */
static int names_load(chat_db *db, names *n, char *err, size_t errlen)
{
    memset(n, 0, sizeof *n);
    n->cap_models = 20000, n->cap_codes = 40000, n->cap_towns = 5000;
    n->models = calloc((size_t)n->cap_models, sizeof *n->models);
    n->codes = calloc((size_t)n->cap_codes, sizeof *n->codes);
    n->towns = calloc((size_t)n->cap_towns, sizeof *n->towns);
    if (!n->models || !n->codes || !n->towns) return chat_fail(err, errlen, CHAT_ENOMEM, "out of memory");
    int rc = chat_db_run(db, "SELECT DISTINCT model_id FROM kb_documents WHERE model_id IS NOT NULL", NULL, 0,
                         model_row, n, NULL, NULL, err, errlen);
    if (!rc)
        rc = chat_db_run(db, "SELECT title FROM kb_documents WHERE agent = 'troubleshooting'", NULL, 0, code_row, n,
                         NULL, NULL, err, errlen);
    if (!rc)
        rc = chat_db_run(db, "SELECT title FROM kb_documents WHERE source LIKE 'gen/policies/locations%'", NULL, 0,
                         town_row, n, NULL, NULL, err, errlen);
    return rc;
}

/* "harbel-320-sport" -> "Harbel 320 Sport" */
static void model_display(const char *id, char *out, size_t cap)
{
    snprintf(out, cap, "%s", id);
    bool start = true;
    for (char *p = out; *p; p++) {
        if (*p == '-') *p = ' ', start = true;
        else if (start) *p = (char)toupper((unsigned char)*p), start = false;
    }
}

typedef struct question {
    int kind;
    char text[256];
    char model_id[64]; /* the model asked about, "" = none */
    char code[16];     /* the fault code asked about, "" = none */
    const char *agent; /* what the classifier would route to */
} question;

static void make_question(uint64_t *r, const names *n, question *q)
{
    static const char *const SPEC_Q[] = {
        "What is the engine power of the %s?",      "How much fuel does the %s hold?",
        "What is the top speed of the %s?",         "How long is the %s?",
        "How heavy is the %s?",                     "What is the range of the %s at cruise speed?",
        "What engine does the %s have?",            "How many people can the %s carry?",
        "What is the beam and draft of the %s?",    "What options are available for the %s?",
        "What comes standard on the %s?",           "What batteries does the %s use?",
    };
    static const char *const MAINT_Q[] = {
        "How often should I service the %s?",             "What oil does the %s take and how much?",
        "When should the impeller be replaced on the %s?", "How do I winterize my %s?",
        "What is included in the break-in service of the %s?", "How do I care for the hull of my %s?",
        "How often should I change the fuel filter on the %s?", "When should I replace the batteries of my %s?",
    };
    static const char *const CODE_Q[] = {
        "What does fault code %s mean?",       "My display shows %s, what should I do?",
        "I got an %s alarm on the water, is it safe to continue?", "How do I fix error %s?",
    };
    static const char *const SYMPTOM_Q[] = {
        "My engine will not start, what should I check?",  "The engine stalls at idle and runs rough.",
        "Why does my boat not get on plane?",               "The steering feels stiff, what could it be?",
        "The battery drains overnight, why?",               "There is white smoke from the exhaust.",
        "The bilge pump keeps running all the time.",       "I smell fuel in the bilge, what do I do?",
        "The trim will not move up or down.",               "My engine overheats at cruise speed.",
    };
    static const char *const POLICY_Q[] = {
        "What does the warranty cover?",                 "Can I return parts I did not use?",
        "Do you offer financing for a new boat?",        "How do I book a service appointment?",
        "What service plans do you have?",               "Can I trade in my old boat?",
        "Do you offer winter storage?",                  "What are the opening hours of the %s service center?",
        "Where is the %s service center?",               "Does the %s location offer mobile service?",
    };
    static const char *const MISS_Q[] = {
        "Hello!", "Thanks, that helps.", "Do you sell motorcycles?", "What is the weather tomorrow?",
        "Can you recommend a restaurant near the marina?", "Tell me a joke about sailors.",
    };
    memset(q, 0, sizeof *q);
    uint32_t roll = bench_rand_below(r, 100);
    q->kind = roll < 35 ? Q_SPECS : roll < 60 ? Q_MAINT : roll < 75 ? Q_CODE : roll < 85 ? Q_SYMPTOM : roll < 95 ? Q_POLICY : Q_MISS;
    if ((q->kind == Q_SPECS || q->kind == Q_MAINT) && !n->nmodels) q->kind = Q_POLICY;
    if (q->kind == Q_CODE && !n->ncodes) q->kind = Q_SYMPTOM;
    char disp[64];
    switch (q->kind) {
    case Q_SPECS:
    case Q_MAINT: {
        const char *id = n->models[bench_rand_below(r, (uint32_t)n->nmodels)];
        snprintf(q->model_id, sizeof q->model_id, "%s", id);
        model_display(id, disp, sizeof disp);
        const char *fmt = q->kind == Q_SPECS ? SPEC_Q[bench_rand_below(r, CHAT_ARRAY_LEN(SPEC_Q))]
                                             : MAINT_Q[bench_rand_below(r, CHAT_ARRAY_LEN(MAINT_Q))];
        snprintf(q->text, sizeof q->text, fmt, disp);
        q->agent = q->kind == Q_SPECS ? "specs" : "maintenance";
        break;
    }
    case Q_CODE:
        snprintf(q->code, sizeof q->code, "%s", n->codes[bench_rand_below(r, (uint32_t)n->ncodes)]);
        snprintf(q->text, sizeof q->text, CODE_Q[bench_rand_below(r, CHAT_ARRAY_LEN(CODE_Q))], q->code);
        q->agent = "troubleshooting";
        break;
    case Q_SYMPTOM:
        snprintf(q->text, sizeof q->text, "%s", SYMPTOM_Q[bench_rand_below(r, CHAT_ARRAY_LEN(SYMPTOM_Q))]);
        q->agent = "troubleshooting";
        break;
    case Q_POLICY: {
        const char *fmt = POLICY_Q[bench_rand_below(r, CHAT_ARRAY_LEN(POLICY_Q))];
        const char *town = n->ntowns ? n->towns[bench_rand_below(r, (uint32_t)n->ntowns)] : "Port Alden";
        if (strstr(fmt, "%s")) snprintf(q->text, sizeof q->text, fmt, town);
        else snprintf(q->text, sizeof q->text, "%s", fmt);
        break;
    }
    default:
        snprintf(q->text, sizeof q->text, "%s", MISS_Q[bench_rand_below(r, CHAT_ARRAY_LEN(MISS_Q))]);
        break;
    }
}

/* names_load, or its error on stderr (and nothing to free): 0 or 1. */
static int names_open(chat_db *db, names *n)
{
    char err[512];
    if (!names_load(db, n, err, sizeof err)) return 0;
    fprintf(stderr, "chat-kbgen: %s\n", err);
    names_free(n);
    return 1;
}

static int print_questions(chat_db *db, long count, uint64_t seed)
{
    names n;
    if (names_open(db, &n)) return 1;
    uint64_t r = seed * 7919 + 17;
    question q;
    for (long i = 0; i < count; i++) {
        make_question(&r, &n, &q);
        puts(q.text);
    }
    names_free(&n);
    return 0;
}

static int retrieval_bench(chat_db *db, long count, long warmup, uint64_t seed, int k)
{
    names n;
    if (names_open(db, &n)) return 1;
    char err[512];
    long long passages = -1;
    chat_db_run(db, "SELECT COUNT(*) FROM kb_documents", NULL, 0, count_row, &passages, NULL, NULL, err, sizeof err);
    bench_hist *all = malloc(sizeof *all), *per = calloc(Q_KINDS, sizeof *per);
    if (!all || !per) {
        free(all), free(per), names_free(&n);
        return 1;
    }
    bh_init(all);
    long matched = 0, relevant = 0, judged = 0, errors = 0, kind_n[Q_KINDS] = {0};
    uint64_t r = seed * 7919 + 17;
    question q;
    chat_kb_stats *stats = chat_kb_stats_new(chat_config_env_int("CHAT_KB_COMMON_PCT", 5, 0, 100)); /* as the pipeline */
    chat_db *sync_db = NULL; /* the table the pipeline would search */
    if (chat_config_env_int("CHAT_KB_DERIVED", 1, 0, 1) && chat_kb_derived_usable(db, err, sizeof err) > 0) sync_db = db;
    printf("searching %s\n", sync_db ? "kb_search (the derived copy)" : "kb_documents");
    for (long i = 0; i < warmup + count; i++) {
        make_question(&r, &n, &q);
        /* The query the pipeline builds (chat_pipeline.c): the routed agent (general -> none), the
         * customer's model (none here: anonymous questions), the fault code found in the text. */
        char code[16];
        chat_kb_query kq = {.question = q.text, .agent = q.agent, .k = (size_t)k, .stats = stats, .sync_db = sync_db};
        if (chat_kb_find_fault_code(q.text, code)) kq.fault_code = code;
        chat_kb_result res;
        int64_t t0 = chat_now_us();
        int rc = chat_kb_search(db, &kq, &res, err, sizeof err);
        int64_t dt = chat_now_us() - t0;
        if (rc) {
            errors++;
            if (errors < 5) fprintf(stderr, "chat-kbgen: search failed: %s\n", err);
            continue;
        }
        if (i >= warmup) {
            bh_add(all, dt);
            bh_add(&per[q.kind], dt);
            kind_n[q.kind]++;
            if (res.n) matched++;
            if (q.model_id[0] || q.code[0]) {
                judged++;
                const chat_kb_passage *top = res.n ? &res.items[0] : NULL;
                if (top && q.model_id[0] && top->model_id && !strcmp(top->model_id, q.model_id)) relevant++;
                else if (top && q.code[0] && strstr(top->title, q.code)) relevant++;
            }
        }
        chat_kb_result_clear(&res);
    }
    printf("retrieval over %lld passages: %ld questions after %ld warm-up, k=%d, one connection, sequential\n",
           passages, count, warmup, k);
    bh_print(stdout, "all questions", all);
    for (int i = 0; i < Q_KINDS; i++)
        if (kind_n[i]) bh_print(stdout, Q_KIND_NAMES[i], &per[i]);
    printf("  matched anything: %.1f %%; top hit is the asked model / fault code: %.1f %% of %ld such questions;"
           " errors: %ld\n",
           count ? 100.0 * (double)matched / (double)count : 0.0, judged ? 100.0 * (double)relevant / (double)judged : 0.0,
           judged, errors);
    printf("BENCH retrieval_passages=%lld retrieval_n=%llu retrieval_p50_us=%llu retrieval_p90_us=%llu"
           " retrieval_p99_us=%llu retrieval_max_us=%llu retrieval_errors=%ld\n",
           passages, (unsigned long long)all->count, (unsigned long long)bh_quantile(all, 0.5),
           (unsigned long long)bh_quantile(all, 0.9), (unsigned long long)bh_quantile(all, 0.99),
           (unsigned long long)all->max, errors);
    free(all), free(per);
    chat_kb_stats_free(stats);
    names_free(&n);
    return errors && errors == count + warmup ? 1 : 0;
}

/* ------------------------------------------------------------------ main */

static const chat_cli KBGEN_CLI = {
    .prog = "chat-kbgen",
    .usage =
        "usage: chat-kbgen --passages N [--seed S] [--no-optimize]\n"
        "       chat-kbgen --questions N [--seed S]\n"
        "       chat-kbgen --retrieval-bench Q [--seed S] [-k K] [--warmup W]\n"
        "Database from CHAT_DB_* (the schema must exist: chat-kb setup). Synthetic rows have sources gen/...\n",
};

static int usage(const char *problem) { return chat_cli_usage(&KBGEN_CLI, problem); }

int main(int argc, char **argv)
{
    chat_log_init("chat-kbgen", CHAT_LOG_WARN);
    long passages = -1, questions = -1, retrieval = -1, seed = 1, warmup = -1, k = 4;
    bool no_optimize = false;
    const chat_cli_opt table[] = {
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "passages", &passages, 0, MAX_PASSAGES, "--passages: 0..2000000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "questions", &questions, 1, MAX_QUESTIONS, "--questions: 1..10000000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "retrieval-bench", &retrieval, 1, MAX_QUESTIONS, "--retrieval-bench: 1..10000000"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "seed", &seed, 0, 1L << 40, "--seed: a non-negative integer"),
        CHAT_CLI_NUM_OPT(CHAT_CLI_LONG, "warmup", &warmup, 0, MAX_QUESTIONS, "--warmup: 0..10000000"),
        {.letter = 'k', .kind = CHAT_CLI_LONG, .dst = &k, .lo = 1, .hi = 50, .problem = "-k: 1..50"},
        CHAT_CLI_FLAG_OPT("no-optimize", &no_optimize),
        CHAT_CLI_HELP_OPT('h'),
    };
    int rc;
    if (!chat_cli_parse(&KBGEN_CLI, table, CHAT_ARRAY_LEN(table), argc, argv, 1, &rc)) return rc;
    if (optind != argc || (passages >= 0) + (questions > 0) + (retrieval > 0) != 1)
        return usage("give exactly one of --passages, --questions, --retrieval-bench");

    chat_config cfg;
    if (!chat_cli_config("chat-kbgen", &cfg)) return 1;
    char err[512];
    chat_db *db = chat_db_new(&cfg);
    if (!db) return 1;
    if (chat_db_connect(db, err, sizeof err)) {
        fprintf(stderr, "chat-kbgen: %s\n", err);
        chat_db_free(db);
        return 1;
    }
    if (passages >= 0) rc = generate(db, passages, (uint64_t)seed, !no_optimize);
    else if (questions > 0) rc = print_questions(db, questions, (uint64_t)seed);
    else rc = retrieval_bench(db, retrieval, warmup >= 0 ? warmup : (retrieval / 10 < 50 ? retrieval / 10 : 50),
                              (uint64_t)seed, (int)k);
    chat_db_free(db);
    return rc;
}
