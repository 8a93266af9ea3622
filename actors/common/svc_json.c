/*
 * svc_json.c - strict request bodies, the checks of money and ids.
 *
 * A request body is one JSON object whose fields the route lists; anything
 * else is refused before a handler sees it, with the field named, so a
 * client never has a typo silently ignored (a `balance` in an account
 * creation, say).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc.h"

/* ISO 4217 codes of currencies in circulation (funds, precious metals and
 * the test codes left out), sorted for bsearch. */
static const char *const currencies[] = {
    "AED", "AFN", "ALL", "AMD", "ANG", "AOA", "ARS", "AUD", "AWG", "AZN", "BAM", "BBD",
    "BDT", "BGN", "BHD", "BIF", "BMD", "BND", "BOB", "BRL", "BSD", "BTN", "BWP", "BYN",
    "BZD", "CAD", "CDF", "CHF", "CLP", "CNY", "COP", "CRC", "CUP", "CVE", "CZK", "DJF",
    "DKK", "DOP", "DZD", "EGP", "ERN", "ETB", "EUR", "FJD", "FKP", "GBP", "GEL", "GHS",
    "GIP", "GMD", "GNF", "GTQ", "GYD", "HKD", "HNL", "HTG", "HUF", "IDR", "ILS", "INR",
    "IQD", "IRR", "ISK", "JMD", "JOD", "JPY", "KES", "KGS", "KHR", "KMF", "KPW", "KRW",
    "KWD", "KYD", "KZT", "LAK", "LBP", "LKR", "LRD", "LSL", "LYD", "MAD", "MDL", "MGA",
    "MKD", "MMK", "MNT", "MOP", "MRU", "MUR", "MVR", "MWK", "MXN", "MYR", "MZN", "NAD",
    "NGN", "NIO", "NOK", "NPR", "NZD", "OMR", "PAB", "PEN", "PGK", "PHP", "PKR", "PLN",
    "PYG", "QAR", "RON", "RSD", "RUB", "RWF", "SAR", "SBD", "SCR", "SDG", "SEK", "SGD",
    "SHP", "SLE", "SOS", "SRD", "SSP", "STN", "SVC", "SYP", "SZL", "THB", "TJS", "TMT",
    "TND", "TOP", "TRY", "TTD", "TWD", "TZS", "UAH", "UGX", "USD", "UYU", "UZS", "VES",
    "VND", "VUV", "WST", "XAF", "XCD", "XOF", "XPF", "YER", "ZAR", "ZMW", "ZWL",
};

static int cmp_code(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

bool svc_currency_valid(const char *code) {
  if (code == NULL || strlen(code) != 3) return false;
  return bsearch(&code, currencies, sizeof currencies / sizeof currencies[0],
                 sizeof currencies[0], cmp_code) != NULL;
}

const char *const *svc_currencies(size_t *count) {
  *count = sizeof currencies / sizeof currencies[0];
  return currencies;
}

bool svc_uuid_valid(const char *s) {
  if (s == NULL || strlen(s) != 36) return false;
  for (int i = 0; i < 36; i++) {
    char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'))) {
      return false;
    }
  }
  return true;
}

bool svc_uuid_canon(const char *s, char out[37]) {
  if (!svc_uuid_valid(s)) return false;
  for (int i = 0; i < 36; i++) out[i] = (s[i] >= 'A' && s[i] <= 'F') ? (char)(s[i] - 'A' + 'a') : s[i];
  out[36] = '\0';
  return true;
}

const char *svc_param_id(svc_req_t *req, const char *name) {
  return svc_uuid_canon(svc_param(req, name), req->param_id) ? req->param_id : NULL;
}

__attribute__((format(printf, 4, 5)))
static int fail(svc_json_error_t *err, int status, const char *code, const char *fmt, ...) {
  err->status = status;
  snprintf(err->code, sizeof err->code, "%s", code);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof err->message, fmt, ap);
  va_end(ap);
  return -1;
}

int svc_json_parse(const char *body, size_t len, json_t **out, svc_json_error_t *err) {
  json_error_t je;
  *out = NULL;
  if (len == 0) return fail(err, 400, "malformed_json", "%s", "request body must be a JSON object");
  json_t *root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
  if (root == NULL) {
    enum json_error_code code = json_error_code(&je);
    if (code == json_error_numeric_overflow) {
      return fail(err, 422, "out_of_range", "%s", "a number is beyond the 64-bit integer range");
    }
    if (code == json_error_duplicate_key) {
      return fail(err, 400, "malformed_json", "%s", "duplicate key in the object");
    }
    return fail(err, 400, "malformed_json", "%s", "request body is not valid JSON");
  }
  if (!json_is_object(root)) {
    json_decref(root);
    return fail(err, 400, "malformed_json", "%s", "request body must be a JSON object");
  }
  *out = root;
  return 0;
}

static const svc_field_t *field_find(const svc_field_t *fields, size_t n, const char *name) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(fields[i].name, name) == 0) return &fields[i];
  return NULL;
}

static bool utf8_string_ok(const json_t *v, size_t max) {
  size_t len = json_string_length(v);
  return len > 0 && len <= max;
}

static int check_value(const svc_field_t *f, json_t *v, svc_json_error_t *err) {
  switch (f->type) {
  case SVC_T_STRING:
  case SVC_T_CURRENCY:
  case SVC_T_UUID:
    if (!json_is_string(v)) return fail(err, 400, "invalid_type", "field '%s' must be a string", f->name);
    break;
  case SVC_T_INT64:
  case SVC_T_AMOUNT:
    if (!json_is_integer(v)) return fail(err, 400, "invalid_type", "field '%s' must be an integer", f->name);
    break;
  case SVC_T_BOOL:
    if (!json_is_boolean(v)) return fail(err, 400, "invalid_type", "field '%s' must be true or false", f->name);
    break;
  }
  switch (f->type) {
  case SVC_T_STRING:
    if (!utf8_string_ok(v, f->max_bytes ? f->max_bytes : 256))
      return fail(err, 422, "invalid_field", "field '%s' is empty or too long", f->name);
    break;
  case SVC_T_CURRENCY:
    if (!svc_currency_valid(json_string_value(v)))
      return fail(err, 422, "invalid_currency", "field '%s' is not a supported ISO 4217 code", f->name);
    break;
  case SVC_T_UUID: {
    char canon[37];
    if (!svc_uuid_canon(json_string_value(v), canon))
      return fail(err, 422, "invalid_field", "field '%s' is not a UUID", f->name);
    if (json_string_set(v, canon) != 0)
      return fail(err, 400, "invalid_field", "field '%s' cannot be read", f->name);
    break;
  }
  case SVC_T_AMOUNT:
    if (json_integer_value(v) <= 0)
      return fail(err, 422, "invalid_amount", "field '%s' must be a positive number of minor units", f->name);
    break;
  default:
    break;
  }
  return 0;
}

int svc_json_check(json_t *obj, const svc_field_t *fields, size_t n,
                   svc_json_error_t *err) {
  const char *key;
  json_t *v;
  json_object_foreach(obj, key, v) {
    if (field_find(fields, n, key) == NULL) {
      /* The name is the client's own text: cut, and quoted by jansson when
       * the error is rendered. */
      char name[48];
      snprintf(name, sizeof name, "%s", key);
      return fail(err, 400, "unknown_field", "unknown field '%s'", name);
    }
  }
  for (size_t i = 0; i < n; i++) {
    json_t *val = json_object_get(obj, fields[i].name);
    if (val == NULL || json_is_null(val)) {
      if (fields[i].required)
        return fail(err, 422, "missing_field", "field '%s' is required", fields[i].name);
      if (val != NULL)
        return fail(err, 400, "invalid_type", "field '%s' must not be null", fields[i].name);
      continue;
    }
    if (check_value(&fields[i], val, err) < 0) return -1;
  }
  return 0;
}

void svc_reply_json_error(svc_req_t *req, const svc_json_error_t *err) {
  svc_reply_error(req, err->status, err->code, err->message);
}

const char *svc_json_str(const json_t *obj, const char *name) {
  return json_string_value(json_object_get(obj, name));
}

int64_t svc_json_int(const json_t *obj, const char *name) {
  return (int64_t)json_integer_value(json_object_get(obj, name));
}

/* A cursor of the list's kind, canonicalised into out; false when bad. */
static bool cursor_ok(svc_cursor_kind_t kind, const char *in, size_t len,
                      char out[SVC_CURSOR_BYTES]) {
  if (kind == SVC_CURSOR_UUID) return svc_uuid_canon(in, out);
  if (kind == SVC_CURSOR_DATE) {
    if (len != 10) return false;
    for (size_t i = 0; i < 10; i++) {
      bool ok = (i == 4 || i == 7) ? in[i] == '-' : (in[i] >= '0' && in[i] <= '9');
      if (!ok) return false;
    }
    memcpy(out, in, 11);
    return true;
  }
  if (NEVER(kind != SVC_CURSOR_SEQ)) return false;
  if (len == 0 || len > 19) return false;
  for (size_t i = 0; i < len; i++)
    if (in[i] < '0' || in[i] > '9') return false;
  errno = 0;
  char *end = NULL;
  long long v = strtoll(in, &end, 10);
  if (errno != 0 || *end != '\0' || v < 0) return false;
  snprintf(out, SVC_CURSOR_BYTES, "%lld", v);
  return true;
}

int svc_page(svc_req_t *req, svc_cursor_kind_t kind, int *limit,
             char cursor[SVC_CURSOR_BYTES]) {
  char buf[SVC_CURSOR_BYTES + 8];
  *limit = 50;
  cursor[0] = '\0';
  int n = svc_query(req, "limit", buf, sizeof buf);
  if (n >= 0) {
    char *end = NULL;
    long v = strtol(buf, &end, 10);
    if (n == 0 || *end != '\0' || v < 1 || v > SVC_PAGE_LIMIT_MAX) n = -EINVAL;
    *limit = (int)v;
  }
  if (n == -EINVAL) {
    svc_reply_error(req, 422, "invalid_limit", "limit must be 1 to 100");
    return -1;
  }
  n = svc_query(req, "cursor", buf, sizeof buf);
  if (n == -EINVAL || (n >= 0 && !cursor_ok(kind, buf, (size_t)n, cursor))) {
    cursor[0] = '\0';
    svc_reply_error(req, 422, "invalid_cursor", "cursor is not valid");
    return -1;
  }
  return 0;
}

json_t *svc_page_json(const rt_pg_batch_t *b, int stmt, int limit) {
  int rows = rt_pg_rows(b, stmt);
  json_t *items = json_array();
  for (int i = 0; i < rows && i < limit; i++) {
    json_t *item = json_loads(rt_pg_value(b, stmt, i, 1), 0, NULL);
    if (item != NULL) json_array_append_new(items, item);
  }
  const char *next = rows > limit ? rt_pg_value(b, stmt, limit - 1, 0) : NULL;
  return json_pack("{s:o, s:s?}", "items", items, "next_cursor", next);
}

void svc_page_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  svc_reply_json(req, 200, svc_page_json(b, 0, *SVC_STATE(req, int)));
}

static void list_page(svc_req_t *req, svc_cursor_kind_t kind, int stmt, svc_db_fn done,
                      bool stale_ok) {
  int limit;
  char cursor[SVC_CURSOR_BYTES];
  if (svc_page(req, kind, &limit, cursor) < 0) return;
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  rt_pg_batch_t *b = stale_ok ? svc_batch_read(req) : svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {cursor[0] ? cursor : NULL, lim};
  rt_pg_add(b, stmt, 2, vals);
  svc_db(req, b, done != NULL ? done : svc_page_done);
}

void svc_list_page(svc_req_t *req, svc_cursor_kind_t kind, int stmt, svc_db_fn done) {
  list_page(req, kind, stmt, done, false);
}

void svc_list_page_read(svc_req_t *req, svc_cursor_kind_t kind, int stmt, svc_db_fn done) {
  list_page(req, kind, stmt, done, true);
}
