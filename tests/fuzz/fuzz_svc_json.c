/*
 * fuzz_svc_json.c - the services' strict request bodies on arbitrary bytes.
 *
 * The first byte picks one of the body schemas the services check
 * (actors/<service>/<service>_bodies.h); the rest is the body, parsed by
 * svc_json_parse() and checked by svc_json_check() as svc_http.c and the
 * handlers do. Properties beyond "no crash, no sanitizer report":
 *  - a refusal says 400 or 422 with a code, as svc.h documents;
 *  - an accepted body has nothing but the schema's fields, each of its
 *    type and within its bounds: the handlers rely on that (an amount
 *    they assert positive, ids they put in SQL as uuid, fixed buffers
 *    sized by max_bytes);
 *  - acceptance is a fixed point: the accepted object, written out by
 *    jansson and read again, is accepted and written out the same (the
 *    UUIDs already in the lowercase form the check rewrites them to).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account_bodies.h"
#include "payment_bodies.h"
#include "profile_bodies.h"
#include "svc.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct schema {
  const char *route;
  const svc_field_t *fields;
  size_t fields_count;
} schema_t;

static const schema_t schemas[] = {
    {"POST /v1/customers", SVC_FIELDS(profile_create_fields)},
    {"PATCH /v1/customers/{id}", SVC_FIELDS(profile_patch_fields)},
    {"POST /internal/credentials/verify", SVC_FIELDS(profile_verify_fields)},
    {"POST /v1/accounts", SVC_FIELDS(account_open_fields)},
    {"POST /v1/accounts/{id}/topups", SVC_FIELDS(account_amount_fields)},
    {"POST /v1/transfers", SVC_FIELDS(account_transfer_fields)},
    {"PATCH /v1/accounts/{id}", SVC_FIELDS(account_status_fields)},
    {"POST /v1/payments", SVC_FIELDS(payment_create_fields)},
};
#define SCHEMAS_COUNT (sizeof schemas / sizeof schemas[0])

static void fail(const schema_t *s, const char *what) {
  fprintf(stderr, "%s: %s\n", s->route, what);
  abort();
}

static void check_refusal(const schema_t *s, const svc_json_error_t *err) {
  if (err->status != 400 && err->status != 422) fail(s, "a refusal is neither 400 nor 422");
  if (err->code[0] == '\0') fail(s, "a refusal has no code");
  if (memchr(err->code, '\0', sizeof err->code) == NULL ||
      memchr(err->message, '\0', sizeof err->message) == NULL)
    fail(s, "a refusal's code or message is not terminated");
}

static bool lowercase_uuid(const char *v) {
  if (!svc_uuid_valid(v)) return false;
  for (const char *p = v; *p; p++)
    if (*p >= 'A' && *p <= 'F') return false;
  return true;
}

/* One accepted field's value against its declaration. */
static bool value_ok(const svc_field_t *f, const json_t *v) {
  switch (f->type) {
  case SVC_T_STRING: {
    size_t max = f->max_bytes ? f->max_bytes : 256;
    return json_is_string(v) && json_string_length(v) > 0 && json_string_length(v) <= max;
  }
  case SVC_T_CURRENCY:
    return json_is_string(v) && svc_currency_valid(json_string_value(v));
  case SVC_T_UUID:
    return json_is_string(v) && lowercase_uuid(json_string_value(v));
  case SVC_T_INT64:
    return json_is_integer(v);
  case SVC_T_AMOUNT:
    return json_is_integer(v) && json_integer_value(v) > 0;
  case SVC_T_BOOL:
    return json_is_boolean(v);
  }
  return false;
}

static void check_accepted(const schema_t *s, json_t *obj) {
  size_t known = 0;
  for (size_t i = 0; i < s->fields_count; i++) {
    const svc_field_t *f = &s->fields[i];
    json_t *v = json_object_get(obj, f->name);
    if (v == NULL) {
      if (f->required) fail(s, "a required field is missing from an accepted body");
      continue;
    }
    known++;
    if (!value_ok(f, v)) fail(s, "an accepted field breaks its declaration");
  }
  if (json_object_size(obj) != known) fail(s, "an accepted body has a field not in the schema");
}

/* Parses and checks; 0 with *out, or -1 (refusal checked). */
static int parse_and_check(const schema_t *s, const char *body, size_t len, json_t **out) {
  svc_json_error_t err;
  memset(&err, 0x55, sizeof err); /* a refusal must write every part it is read by */
  json_t *obj = NULL;
  int rc = svc_json_parse(body, len, &obj, &err);
  if (rc == 0 && obj == NULL) fail(s, "parsed without an object");
  if (rc == 0) rc = svc_json_check(obj, s->fields, s->fields_count, &err);
  if (rc < 0) {
    check_refusal(s, &err);
    json_decref(obj);
    return -1;
  }
  check_accepted(s, obj);
  *out = obj;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0) return 0;
  const schema_t *s = &schemas[data[0] % SCHEMAS_COUNT];
  json_t *obj = NULL;
  if (parse_and_check(s, (const char *)data + 1, size - 1, &obj) < 0) return 0;
  char *once = json_dumps(obj, JSON_COMPACT);
  json_decref(obj);
  if (once == NULL) fail(s, "an accepted body cannot be written out");
  json_t *again = NULL;
  if (parse_and_check(s, once, strlen(once), &again) < 0)
    fail(s, "an accepted body, written out, is refused");
  char *twice = json_dumps(again, JSON_COMPACT);
  json_decref(again);
  if (twice == NULL || strcmp(once, twice) != 0) fail(s, "an accepted body is not a fixed point");
  free(once);
  free(twice);
  return 0;
}
