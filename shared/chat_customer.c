/* Customer context: the customer row, their boats joined with the model name, and their appointments,
 * read with three prepared statements, described in a few plain sentences for prompts, and answered
 * from for the extractive provider.
 *
 * Design choices:
 * - Dates are formatted by the server (DATE_FORMAT "%Y-%m-%d %H:%i") and "upcoming" is decided against the
 *   server's NOW(), the same clock that the appointments were written with.
 * - Upcoming means status 'scheduled' and not yet past, soonest first (at most APPTS_UPCOMING_MAX); then
 *   the last three past appointments, most recent first, so "when was my last service" can be answered
 *   too, and with them each boat's last completed visit when it is older, so "what was done on <boat>
 *   last time" has an answer for every boat (one statement: window functions rank the past visits). A
 *   past appointment still marked 'scheduled' is stale data (neither done nor to come) and is left out,
 *   which also keeps the rule simple for readers of the array: status 'scheduled' = upcoming.
 * - Bounded: at most VEHICLES_MAX boats are loaded; a customer with more is summarised by the first ones.
 * - describe() never includes contact details (email, phone): the text goes into LLM prompts.
 * - The answers (chat_customer_answer) say only what the records hold, plus one inference stated as
 *   such: when a boat has no appointment, when it is due on the engine-hour schedule that all seven
 *   Seawind maintenance guides share (sql/kb/<model>/maintenance.md). */
#include "chat_customer.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
#include "chat_question.h"
#include "chat_util.h"

#define VEHICLES_MAX 20
#define APPTS_UPCOMING_MAX 10
#define APPTS_PAST_MAX 3

typedef struct load_ctx {
    chat_customer *c;
    size_t cap;
    int rc;
} load_ctx;

/* Stops the statement: out of memory. */
static int oom(load_ctx *x)
{
    x->rc = CHAT_ENOMEM;
    return 1;
}

static int customer_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    load_ctx *x = ud;
    x->c->id = chat_strdup0(vals[0]);
    x->c->name = chat_strdup0(vals[1] ? vals[1] : "");
    x->c->email = chat_strdup0(vals[2] ? vals[2] : "");
    return !x->c->id || !x->c->name || !x->c->email ? oom(x) : 0;
}

/* A zeroed entry appended to one of the customer's arrays (arrp: its address, n its count), counted at
 * once so that clear() frees it even half-filled; NULL when out of memory. */
static void *append_entry(load_ctx *x, void *arrp, size_t *n, size_t size)
{
    if (chat_array_reserve(arrp, &x->cap, *n, size)) return NULL;
    char *e = *(char **)arrp + *n * size;
    memset(e, 0, size);
    (*n)++;
    return e;
}

static int vehicle_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    load_ctx *x = ud;
    chat_customer *c = x->c;
    chat_vehicle *v = append_entry(x, &c->vehicles, &c->n_vehicles, sizeof *v);
    if (!v) return oom(x);
    v->id = chat_strdup0(vals[0]);
    v->model_id = chat_strdup0(vals[1]);
    v->model_name = chat_strdup0(vals[2] ? vals[2] : vals[1]);
    v->nickname = vals[3] && *vals[3] ? strdup(vals[3]) : NULL;
    v->hull_id = chat_strdup0(vals[4] ? vals[4] : "");
    v->engine_hours = vals[5] ? atoi(vals[5]) : -1;
    if (!v->id || !v->model_id || !v->model_name || !v->hull_id || (vals[3] && *vals[3] && !v->nickname)) return oom(x);
    return 0;
}

static int appointment_row(void *ud, int ncols, char **vals, unsigned long *lens)
{
    load_ctx *x = ud;
    chat_customer *c = x->c;
    chat_appointment *a = append_entry(x, &c->appointments, &c->n_appointments, sizeof *a);
    if (!a) return oom(x);
    a->scheduled_at = chat_strdup0(vals[0] ? vals[0] : "");
    a->service = chat_strdup0(vals[1] ? vals[1] : "");
    a->location = chat_strdup0(vals[2]);
    a->status = chat_strdup0(vals[3] ? vals[3] : "");
    a->vehicle_id = chat_strdup0(vals[4]);
    a->work_done = vals[5] && *vals[5] ? strdup(vals[5]) : NULL;
    if (!a->scheduled_at || !a->service || !a->status || (vals[2] && !a->location) || (vals[4] && !a->vehicle_id) ||
        (vals[5] && *vals[5] && !a->work_done))
        return oom(x);
    return 0;
}

#define APPT_COLUMNS "DATE_FORMAT(scheduled_at, '%Y-%m-%d %H:%i'), service, location, status, vehicle_id, work_done"

/* The last APPTS_PAST_MAX past visits, and each boat's last completed one (n_boat = 1) when older. */
static const char SQL_PAST[] =
    "SELECT d, service, location, status, vehicle_id, work_done FROM"
    " (SELECT DATE_FORMAT(scheduled_at, '%Y-%m-%d %H:%i') AS d, service, location, status, vehicle_id, work_done,"
    "  scheduled_at AS at, id AS aid, ROW_NUMBER() OVER (ORDER BY scheduled_at DESC, id DESC) AS n_all,"
    "  ROW_NUMBER() OVER (PARTITION BY vehicle_id, status ORDER BY scheduled_at DESC, id DESC) AS n_boat"
    "  FROM appointments WHERE customer_id = ? AND scheduled_at < NOW() AND status <> 'scheduled') p"
    " WHERE n_all <= ? OR (n_boat = 1 AND status = 'completed' AND vehicle_id IS NOT NULL)"
    " ORDER BY at DESC, aid DESC LIMIT ?";

int chat_customer_load(chat_db *db, const char *customer_id, chat_customer *out, char *err, size_t errlen)
{
    if (!out) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    memset(out, 0, sizeof *out);
    if (!db) return chat_fail(err, errlen, CHAT_EINVAL, "missing argument");
    /* an id that cannot exist is simply unknown: no query needed */
    if (!chat_id_valid(customer_id)) return chat_fail(err, errlen, CHAT_ENOTFOUND, "no such customer");
    chat_db_param id = CHAT_DB_P_STR(customer_id);
    load_ctx x = {.c = out};
    int rc = chat_db_run(db, "SELECT id, name, email FROM customers WHERE id = ?", &id, 1, customer_row, &x, NULL, NULL,
                         err, errlen);
    if (rc == 0 && !out->id && !x.rc) return chat_fail(err, errlen, CHAT_ENOTFOUND, "no such customer");

    if (rc == 0) {
        x.cap = 0;
        chat_db_param p[] = {id, CHAT_DB_P_INT(VEHICLES_MAX)};
        rc = chat_db_run(db,
                         "SELECT v.id, v.model_id, m.name, v.nickname, v.hull_id, v.engine_hours FROM vehicles v "
                         "LEFT JOIN models m ON m.id = v.model_id WHERE v.customer_id = ? "
                         "ORDER BY v.purchase_date IS NULL, v.purchase_date, v.id LIMIT ?",
                         p, 2, vehicle_row, &x, NULL, NULL, err, errlen);
    }
    if (rc == 0) {
        x.cap = 0;
        chat_db_param p[] = {id, CHAT_DB_P_INT(APPTS_UPCOMING_MAX)};
        rc = chat_db_run(db,
                         "SELECT " APPT_COLUMNS " FROM appointments WHERE customer_id = ? AND status = 'scheduled' "
                         "AND scheduled_at >= NOW() ORDER BY scheduled_at, id LIMIT ?",
                         p, 2, appointment_row, &x, NULL, NULL, err, errlen);
        if (rc == 0) {
            chat_db_param q[] = {id, CHAT_DB_P_INT(APPTS_PAST_MAX), CHAT_DB_P_INT(APPTS_PAST_MAX + VEHICLES_MAX)};
            rc = chat_db_run(db, SQL_PAST, q, 3, appointment_row, &x, NULL, NULL, err, errlen);
        }
    }
    if (rc == 1 || x.rc) rc = x.rc ? x.rc : CHAT_ERR;
    if (rc) {
        chat_customer_clear(out);
        if (rc == CHAT_ENOMEM) chat_fail(err, errlen, CHAT_ENOMEM, "out of memory loading a customer");
        return rc;
    }
    return 0;
}

void chat_customer_clear(chat_customer *c)
{
    if (!c) return;
    for (size_t i = 0; i < c->n_vehicles; i++) {
        chat_vehicle *v = &c->vehicles[i];
        free(v->id), free(v->model_id), free(v->model_name), free(v->nickname), free(v->hull_id);
    }
    for (size_t i = 0; i < c->n_appointments; i++) {
        chat_appointment *a = &c->appointments[i];
        free(a->scheduled_at), free(a->service), free(a->location), free(a->status), free(a->vehicle_id);
        free(a->work_done);
    }
    free(c->vehicles), free(c->appointments), free(c->id), free(c->name), free(c->email);
    memset(c, 0, sizeof *c);
}

static const chat_vehicle *vehicle_by_id(const chat_customer *c, const char *id)
{
    for (size_t i = 0; id && i < c->n_vehicles; i++)
        if (!strcmp(c->vehicles[i].id, id)) return &c->vehicles[i];
    return NULL;
}

/* "2026-12-03 09:00 100-hour service at Harbor Point Marina (for "Blue Heron")" */
static void describe_appointment(chat_buf *b, const chat_customer *c, const chat_appointment *a, bool past)
{
    chat_buf_printf(b, "%s %s", a->scheduled_at, a->service);
    if (a->location && *a->location) chat_buf_printf(b, " at %s", a->location);
    const chat_vehicle *v = c->n_vehicles > 1 ? vehicle_by_id(c, a->vehicle_id) : NULL;
    if (v && v->nickname) chat_buf_printf(b, " for \"%s\"", v->nickname);
    else if (v) chat_buf_printf(b, " for the %s", v->model_name);
    if (past && a->work_done) {
        size_t n = strlen(a->work_done); /* inside the brackets without its full stop */
        if (n && a->work_done[n - 1] == '.') n--;
        chat_buf_printf(b, " (%s; work done: %.*s)", a->status, (int)n, a->work_done);
    } else if (past) {
        chat_buf_printf(b, " (%s)", a->status);
    }
}

char *chat_customer_describe(const chat_customer *c)
{
    if (!c) return NULL;
    chat_buf b;
    chat_buf_init(&b);
    chat_buf_printf(&b, "Customer: %s.", c->name && *c->name ? c->name : "(name unknown)");
    if (!c->n_vehicles) {
        chat_buf_puts(&b, " Boats: none on file.");
    } else {
        chat_buf_puts(&b, " Boats: ");
        for (size_t i = 0; i < c->n_vehicles; i++) {
            const chat_vehicle *v = &c->vehicles[i];
            if (i) chat_buf_puts(&b, "; ");
            chat_buf_puts(&b, v->model_name);
            if (v->nickname) chat_buf_printf(&b, " \"%s\"", v->nickname);
            chat_buf_printf(&b, " (hull %s", v->hull_id);
            if (v->engine_hours >= 0) chat_buf_printf(&b, ", %d engine hours", v->engine_hours);
            chat_buf_puts(&b, ")");
        }
        chat_buf_puts(&b, ".");
    }
    size_t upcoming = 0, past = 0;
    while (upcoming < c->n_appointments && !strcmp(c->appointments[upcoming].status, "scheduled")) upcoming++;
    past = c->n_appointments - upcoming;
    chat_buf_puts(&b, " Upcoming appointments: ");
    if (!upcoming) chat_buf_puts(&b, "none");
    for (size_t i = 0; i < upcoming; i++) {
        if (i) chat_buf_puts(&b, "; ");
        describe_appointment(&b, c, &c->appointments[i], false);
    }
    chat_buf_puts(&b, ".");
    if (past) {
        chat_buf_puts(&b, " Recent past appointments: ");
        for (size_t i = upcoming; i < c->n_appointments; i++) {
            if (i > upcoming) chat_buf_puts(&b, "; ");
            describe_appointment(&b, c, &c->appointments[i], true);
        }
        chat_buf_puts(&b, ".");
    }
    /* chat_buf keeps the text valid after a failed append; an empty result means out of memory */
    if (!b.data) return NULL;
    return chat_buf_take(&b);
}

/* ---- answers from the records ---- */

const chat_vehicle *chat_customer_vehicle_named(const chat_customer *c, const char *text)
{
    if (!c || !text) return NULL;
    for (size_t i = 0; i < c->n_vehicles; i++)
        if (c->vehicles[i].nickname && chat_question_has(text, c->vehicles[i].nickname)) return &c->vehicles[i];
    const chat_vehicle *only = NULL;
    for (size_t i = 0; i < c->n_vehicles; i++) {
        const char *name = c->vehicles[i].model_name, *num = strrchr(name, ' ');
        if (!chat_question_has(text, name) && !(num && chat_question_has(text, num + 1))) continue;
        if (only && strcmp(only->model_id, c->vehicles[i].model_id)) return NULL; /* two models named */
        if (only) return NULL; /* two boats of that model: not one of them */
        only = &c->vehicles[i];
    }
    return only;
}

static bool of_vehicle(const chat_appointment *a, const chat_vehicle *v)
{
    return !v || (a->vehicle_id && !strcmp(a->vehicle_id, v->id));
}

const chat_appointment *chat_customer_next(const chat_customer *c, const chat_vehicle *v)
{
    for (size_t i = 0; c && i < c->n_appointments; i++) /* upcoming ones come first, soonest first */
        if (!strcmp(c->appointments[i].status, "scheduled") && of_vehicle(&c->appointments[i], v))
            return &c->appointments[i];
    return NULL;
}

const chat_appointment *chat_customer_last_visit(const chat_customer *c, const chat_vehicle *v)
{
    for (size_t i = 0; c && i < c->n_appointments; i++) /* past ones follow, most recent first */
        if (!strcmp(c->appointments[i].status, "completed") && of_vehicle(&c->appointments[i], v))
            return &c->appointments[i];
    return NULL;
}

int chat_vehicle_next_service_hours(const chat_vehicle *v, const char **what)
{
    if (!v || v->engine_hours < 0) return -1;
    if (v->engine_hours < 20) {
        *what = "20-hour break-in service";
        return 20;
    }
    int next = (v->engine_hours / 100 + 1) * 100;
    *what = next % 300 ? "100-hour service" : "300-hour service";
    return next;
}

/* "\"Little Tern\" (Seawind 190)", or "your Seawind 190" for a boat without a name. */
static void put_boat(chat_buf *b, const chat_vehicle *v)
{
    if (v->nickname) chat_buf_printf(b, "\"%s\" (%s)", v->nickname, v->model_name);
    else chat_buf_printf(b, "your %s", v->model_name);
}

/* "the 100-hour service on 2026-12-03 09:00 at Harbor Point", with the boat when there are several. */
static void put_visit(chat_buf *b, const chat_customer *c, const chat_appointment *a, bool with_boat)
{
    chat_buf_printf(b, "%s on %s", a->service, a->scheduled_at);
    if (a->location && *a->location) chat_buf_printf(b, " at %s", a->location);
    const chat_vehicle *v = with_boat && c->n_vehicles > 1 ? vehicle_by_id(c, a->vehicle_id) : NULL;
    if (v) {
        chat_buf_puts(b, " for ");
        put_boat(b, v);
    }
}

static void put_work(chat_buf *b, const chat_appointment *a)
{
    if (!a->work_done) return;
    size_t n = strlen(a->work_done);
    chat_buf_printf(b, " Work done: %s%s", a->work_done, n && a->work_done[n - 1] == '.' ? "" : ".");
}

/* When boat v is due: its next appointment, else the engine-hour schedule. */
static void put_due(chat_buf *b, const chat_customer *c, const chat_vehicle *v)
{
    const chat_appointment *a = chat_customer_next(c, v);
    if (a) {
        chat_buf_puts(b, "booked for ");
        put_visit(b, c, a, false);
        return;
    }
    const char *what = NULL;
    int due = chat_vehicle_next_service_hours(v, &what);
    if (due < 0) chat_buf_puts(b, "no appointment booked");
    else
        chat_buf_printf(b, "no appointment booked; at %d engine hours its next %s is due at %d hours, or sooner if "
                           "its annual service comes first", v->engine_hours, what, due);
}

static void answer_boats(chat_buf *b, const chat_customer *c, int asks)
{
    if (!c->n_vehicles) {
        chat_buf_puts(b, " You have no boats on file.");
        return;
    }
    if (c->n_vehicles == 1) chat_buf_puts(b, " You have one boat on file: ");
    else chat_buf_printf(b, " You have %zu boats on file: ", c->n_vehicles);
    for (size_t i = 0; i < c->n_vehicles; i++) {
        const chat_vehicle *v = &c->vehicles[i];
        if (i) chat_buf_puts(b, "; ");
        put_boat(b, v);
        chat_buf_printf(b, ", hull %s", v->hull_id);
        if (v->engine_hours >= 0) chat_buf_printf(b, ", %d engine hours", v->engine_hours);
        if (asks & (CHAT_ASK_DUE | CHAT_ASK_NEXT)) {
            chat_buf_puts(b, ": ");
            put_due(b, c, v);
        }
    }
    chat_buf_puts(b, ".");
}

static void answer_next(chat_buf *b, const chat_customer *c, const chat_vehicle *only)
{
    const chat_appointment *a = chat_customer_next(c, only);
    if (a) {
        chat_buf_puts(b, " Your next appointment is the ");
        put_visit(b, c, a, true);
        chat_buf_puts(b, ".");
        return;
    }
    chat_buf_puts(b, " You have no upcoming appointments on file");
    if (only) {
        chat_buf_puts(b, " for ");
        put_boat(b, only);
    }
    chat_buf_puts(b, ".");
}

/* What a per-boat answer says of one boat, after the boat's name. */
typedef void boat_sentence(chat_buf *b, const chat_customer *c, const chat_vehicle *v);

/* One sentence for each boat asked about: the one named, or every boat on file. */
static void per_boat(chat_buf *b, const chat_customer *c, const chat_vehicle *only, boat_sentence *say)
{
    for (size_t i = 0; i < c->n_vehicles; i++) {
        const chat_vehicle *v = &c->vehicles[i];
        if (only && v != only) continue;
        chat_buf_puts(b, " ");
        put_boat(b, v);
        say(b, c, v);
    }
}

static void due_sentence(chat_buf *b, const chat_customer *c, const chat_vehicle *v)
{
    chat_buf_puts(b, ": ");
    put_due(b, c, v);
    chat_buf_puts(b, ".");
}

static void hours_sentence(chat_buf *b, const chat_customer *c, const chat_vehicle *v)
{
    (void)c;
    if (v->engine_hours >= 0) chat_buf_printf(b, " has %d engine hours on record.", v->engine_hours);
    else chat_buf_puts(b, " has no engine hours on record.");
}

static void answer_due(chat_buf *b, const chat_customer *c, const chat_vehicle *only)
{
    per_boat(b, c, only, due_sentence);
}

static void answer_last(chat_buf *b, const chat_customer *c, const chat_vehicle *only)
{
    const chat_appointment *a = chat_customer_last_visit(c, only);
    if (!a) {
        chat_buf_puts(b, " I have no completed service visits on file");
        if (only) {
            chat_buf_puts(b, " for ");
            put_boat(b, only);
        }
        chat_buf_puts(b, ".");
        return;
    }
    chat_buf_puts(b, " Your last service visit was the ");
    put_visit(b, c, a, true);
    chat_buf_puts(b, ".");
    put_work(b, a);
}

static void answer_history(chat_buf *b, const chat_customer *c, const chat_vehicle *only)
{
    int n = 0;
    for (size_t i = 0; i < c->n_appointments; i++) {
        const chat_appointment *a = &c->appointments[i];
        if (!strcmp(a->status, "scheduled") || !of_vehicle(a, only)) continue;
        if (!n++) chat_buf_puts(b, " Your past service visits on file:");
        chat_buf_puts(b, "\n- ");
        put_visit(b, c, a, !only);
        chat_buf_printf(b, " (%s).", a->status);
        put_work(b, a);
    }
    if (!n) chat_buf_puts(b, " I have no past service visits on file.");
}

static void answer_hours(chat_buf *b, const chat_customer *c, const chat_vehicle *only)
{
    per_boat(b, c, only, hours_sentence);
    if (!c->n_vehicles) chat_buf_puts(b, " You have no boats on file.");
}

int chat_customer_answer(const chat_customer *c, int asks, const chat_vehicle *only, chat_buf *out)
{
    if (!c || !out) return CHAT_EINVAL;
    chat_buf_puts(out, "Here is what I have on file for you.");
    if (asks & CHAT_ASK_BOATS) answer_boats(out, c, asks);
    else if (asks & CHAT_ASK_DUE) answer_due(out, c, only);
    else if (asks & CHAT_ASK_NEXT) answer_next(out, c, only);
    if (asks & CHAT_ASK_HISTORY) answer_history(out, c, only);
    else if (asks & CHAT_ASK_LAST) answer_last(out, c, only);
    if (asks & CHAT_ASK_HOURS && !(asks & CHAT_ASK_BOATS)) answer_hours(out, c, only);
    return out->data ? 0 : CHAT_ENOMEM;
}
