/* What the database knows about a customer: their boats (with model) and appointments. The agents use
 * it to focus retrieval on the customer's own model and to answer "when is my next service". */
#ifndef CHAT_CUSTOMER_H
#define CHAT_CUSTOMER_H

#include <stddef.h>

#include "chat_db.h"

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
} chat_appointment;

typedef struct chat_customer {
    char *id;
    char *name;
    char *email; /* for the access check only; never put in prompts */
    chat_vehicle *vehicles; /* at most 20, by purchase date */
    size_t n_vehicles;
    /* upcoming (status scheduled, from now on; at most 10) soonest first, then the last 3 past ones (not
     * scheduled) most recent first */
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

#endif
