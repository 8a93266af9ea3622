/*
 * account_bodies.h - the request bodies the account service takes, as
 * svc_json_check() schemas. Kept apart from account.c so that the body
 * fuzzer (tests/fuzz/fuzz_svc_json.c) checks bodies against the very
 * tables the service uses.
 */
#ifndef ACCOUNT_BODIES_H
#define ACCOUNT_BODIES_H

#include "svc.h"

/* POST /v1/accounts */
static const svc_field_t account_open_fields[] = {
    {"currency", SVC_T_CURRENCY, true, 0},
    {"customer_id", SVC_T_UUID, false, 0},
    {"overdraft_limit", SVC_T_INT64, false, 0},
};

/* POST /v1/accounts/{id}/topups and /withdrawals */
static const svc_field_t account_amount_fields[] = {
    {"amount", SVC_T_AMOUNT, true, 0},
    {"currency", SVC_T_CURRENCY, true, 0},
};

/* POST /v1/transfers */
static const svc_field_t account_transfer_fields[] = {
    {"from_account_id", SVC_T_UUID, true, 0},
    {"to_account_id", SVC_T_UUID, true, 0},
    {"amount", SVC_T_AMOUNT, true, 0},
    {"currency", SVC_T_CURRENCY, true, 0},
};

/* PATCH /v1/accounts/{id} (status) */
static const svc_field_t account_status_fields[] = {
    {"status", SVC_T_STRING, true, 16},
};

#endif /* ACCOUNT_BODIES_H */
