/* What the database knows about a customer: their boats (with model) and appointments, upcoming and
 * past with the work done. The agents use it to focus retrieval on the customer's own model, the
 * prompt carries its description, and the extractive provider answers "which boats do I own", "when is
 * my next service", "what was done on <boat> last time" from it (chat_customer_answer). */
#ifndef CHAT_CUSTOMER_H
#define CHAT_CUSTOMER_H

#include <stddef.h>

#include "chat_db.h"
#include "chat_util.h"

typedef struct chat_vehicle {
    char *id;
    char *model_id;
    char *model_name;
    char *nickname; /* may be NULL */
    char *hull_id;
    int engine_hours; /* -1 when unknown */
} chat_vehicle;

typedef struct chat_appointment {
    char *scheduled_at; /* "YYYY-MM-DD HH:MM" */
    char *service;
    char *location; /* may be NULL */
    char *status;
    char *vehicle_id; /* may be NULL */
    char *work_done;  /* what the work order says was done; NULL when not recorded */
} chat_appointment;

typedef struct chat_customer {
    char *id;
    char *name;
    char *email; /* for the access check only; never put in prompts */
    chat_vehicle *vehicles; /* at most 20, by purchase date */
    size_t n_vehicles;
    /* upcoming (status scheduled, from now on; at most 10) soonest first; then past ones (not scheduled),
     * most recent first: the last 3, and each boat's last completed visit when it is older */
    chat_appointment *appointments;
    size_t n_appointments;
} chat_customer;

/* Returns 0, CHAT_ENOTFOUND (also for a malformed id, without a query), CHAT_EDB or CHAT_ENOMEM. Caller
 * clears out after success; after an error it is empty already. */
int chat_customer_load(chat_db *db, const char *customer_id, chat_customer *out, char *err, size_t errlen);
/* Frees everything and empties c; accepts NULL. */
void chat_customer_clear(chat_customer *c);
/* A short plain-text description for prompts and the extractive answer: name, boats, appointments, no
 * contact details. Caller frees; NULL when out of memory. */
char *chat_customer_describe(const chat_customer *c);

/* The customer's boat that text names by its nickname ("my Little Tern", "Reel Deal's"), ignoring case;
 * else the only one of their boats of a model text names ("Seawind 190", "the 190"); else NULL. */
const chat_vehicle *chat_customer_vehicle_named(const chat_customer *c, const char *text);

/* The soonest upcoming appointment, of boat v (NULL: of any boat); NULL when none. */
const chat_appointment *chat_customer_next(const chat_customer *c, const chat_vehicle *v);
/* The most recent completed visit, of boat v (NULL: of any boat); NULL when none. */
const chat_appointment *chat_customer_last_visit(const chat_customer *c, const chat_vehicle *v);

/* When boat v is next due on the engine-hour schedule every Seawind maintenance guide gives (break-in
 * at 20 hours, a routine service every 100 and a major one every 300): the hours, with what (a static
 * string, "100-hour service") set; -1 when its engine hours are unknown. */
int chat_vehicle_next_service_hours(const chat_vehicle *v, const char **what);

/* Appends to out a plain answer to what asks (CHAT_ASK_* bits of chat_question.h) from the records,
 * about boat only (NULL: all the customer's boats). Returns 0, or CHAT_ENOMEM. */
int chat_customer_answer(const chat_customer *c, int asks, const chat_vehicle *only, chat_buf *out);

#endif
