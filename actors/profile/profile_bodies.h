/*
 * profile_bodies.h - the request bodies the profile service takes, as
 * svc_json_check() schemas. Kept apart from profile.c so that the body
 * fuzzer (tests/fuzz/fuzz_svc_json.c) checks bodies against the very
 * tables the service uses.
 */
#ifndef PROFILE_BODIES_H
#define PROFILE_BODIES_H

#include "svc.h"

#define PROFILE_PASSWORD_BYTES_MAX 128

/* POST /v1/customers */
static const svc_field_t profile_create_fields[] = {
    {"name", SVC_T_STRING, true, 200},
    {"email", SVC_T_STRING, true, 254},
    {"phone", SVC_T_STRING, false, 16},
    {"password", SVC_T_STRING, true, PROFILE_PASSWORD_BYTES_MAX},
};

/* PATCH /v1/customers/{id} */
static const svc_field_t profile_patch_fields[] = {
    {"name", SVC_T_STRING, false, 200},
    {"email", SVC_T_STRING, false, 254},
    {"phone", SVC_T_STRING, false, 16},
    {"status", SVC_T_STRING, false, 16},
};

/* POST /internal/credentials/verify */
static const svc_field_t profile_verify_fields[] = {
    {"email", SVC_T_STRING, true, 254},
    {"password", SVC_T_STRING, true, PROFILE_PASSWORD_BYTES_MAX},
};

#endif /* PROFILE_BODIES_H */
