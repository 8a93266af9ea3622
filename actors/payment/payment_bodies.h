/*
 * payment_bodies.h - the request bodies the payment service takes, as
 * svc_json_check() schemas. Kept apart from payment.c so that the body
 * fuzzer (tests/fuzz/fuzz_svc_json.c) checks bodies against the very
 * tables the service uses.
 */
#ifndef PAYMENT_BODIES_H
#define PAYMENT_BODIES_H

#include "svc.h"

/* POST /v1/payments */
static const svc_field_t payment_create_fields[] = {
    {"from_account_id", SVC_T_UUID, true, 0},
    {"to_account_id", SVC_T_UUID, true, 0},
    {"amount", SVC_T_AMOUNT, true, 0},
    {"currency", SVC_T_CURRENCY, true, 0},
    {"reference", SVC_T_STRING, false, 140},
};

#endif /* PAYMENT_BODIES_H */
