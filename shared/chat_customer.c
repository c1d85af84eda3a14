/* Customer context: the customer row, their boats joined with the model name, and their appointments,
 * read with three prepared statements and described in a few plain sentences for prompts.
 *
 * Design choices:
 * - Dates are formatted by the server (DATE_FORMAT "%Y-%m-%d %H:%i") and "upcoming" is decided against the
 *   server's NOW(), the same clock that the appointments were written with.
 * - Upcoming means status 'scheduled' and not yet past, soonest first (at most APPTS_UPCOMING_MAX); then
 *   the last three past appointments, most recent first, so "when was my last service" can be answered
 *   too. A past appointment still marked 'scheduled' is stale data (neither done nor to come) and is left
 *   out, which also keeps the rule simple for readers of the array: status 'scheduled' = upcoming.
 * - Bounded: at most VEHICLES_MAX boats are loaded; a customer with more is summarised by the first ones.
 * - describe() never includes contact details (email, phone): the text goes into LLM prompts. */
#include "chat_customer.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat_common.h"
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
    if (!a->scheduled_at || !a->service || !a->status || (vals[2] && !a->location) || (vals[4] && !a->vehicle_id))
        return oom(x);
    return 0;
}

#define APPT_COLUMNS "DATE_FORMAT(scheduled_at, '%Y-%m-%d %H:%i'), service, location, status, vehicle_id"

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
            chat_db_param q[] = {id, CHAT_DB_P_INT(APPTS_PAST_MAX)};
            rc = chat_db_run(db,
                             "SELECT " APPT_COLUMNS " FROM appointments WHERE customer_id = ? AND scheduled_at < NOW() "
                             "AND status <> 'scheduled' ORDER BY scheduled_at DESC, id DESC LIMIT ?",
                             q, 2, appointment_row, &x, NULL, NULL, err, errlen);
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
    if (past) chat_buf_printf(b, " (%s)", a->status);
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
