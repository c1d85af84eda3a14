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
    chat_vehicle *vehicles;
    size_t n_vehicles;
    chat_appointment *appointments; /* upcoming (scheduled, from now on) first by date, then the last 3 past */
    size_t n_appointments;
} chat_customer;

/* Returns 0, CHAT_ENOTFOUND or CHAT_EDB. Caller clears out. */
int chat_customer_load(chat_db *db, const char *customer_id, chat_customer *out, char *err, size_t errlen);
void chat_customer_clear(chat_customer *c);
/* A short plain-text description for prompts and the extractive answer. Caller frees. */
char *chat_customer_describe(const chat_customer *c);

#endif
