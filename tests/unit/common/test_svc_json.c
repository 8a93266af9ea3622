/*
 * Strict request bodies (svc_json.c): what is refused with which status
 * and code, and ids canonicalised to lower case.
 */
#include "svc.h"
#include "t.h"

static int parse_status(const char *body) {
  json_t *obj = NULL;
  svc_json_error_t err;
  int rc = svc_json_parse(body, strlen(body), &obj, &err);
  json_decref(obj);
  return rc == 0 ? 0 : err.status;
}

static void test_parse(void) {
  T_CHECK_EQ_INT(parse_status("{\"a\":1}"), 0);
  T_CHECK_EQ_INT(parse_status(""), 400);
  T_CHECK_EQ_INT(parse_status("{\"a\":"), 400);
  T_CHECK_EQ_INT(parse_status("[1]"), 400);
  T_CHECK_EQ_INT(parse_status("\"x\""), 400);
  T_CHECK_EQ_INT(parse_status("{\"a\":1,\"a\":2}"), 400);
  T_CHECK_EQ_INT(parse_status("{\"a\":1} {}"), 400);
  T_CHECK_EQ_INT(parse_status("{\"a\":9223372036854775808}"), 422);
}

static const svc_field_t fields[] = {
    {"id", SVC_T_UUID, true, 0},
    {"amount", SVC_T_AMOUNT, true, 0},
    {"currency", SVC_T_CURRENCY, true, 0},
    {"note", SVC_T_STRING, false, 8},
    {"flag", SVC_T_BOOL, false, 0},
};

/* The status and code of checking body against the fields above. */
static int check_body(const char *body, const char **code) {
  static char last[32];
  json_t *obj = NULL;
  svc_json_error_t err;
  if (svc_json_parse(body, strlen(body), &obj, &err) < 0) return -1;
  int rc = svc_json_check(obj, fields, 5, &err);
  json_decref(obj);
  snprintf(last, sizeof last, "%s", rc == 0 ? "" : err.code);
  *code = last;
  return rc == 0 ? 0 : err.status;
}

#define GOOD_ID "\"id\":\"0190c0de-0000-7000-8000-000000000001\""

static void test_check(void) {
  const char *code;
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"EUR\"}", &code), 0);
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"EUR\",\"x\":1}", &code), 400);
  T_CHECK_STR(code, "unknown_field");
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"currency\":\"EUR\"}", &code), 422);
  T_CHECK_STR(code, "missing_field");
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":0,\"currency\":\"EUR\"}", &code), 422);
  T_CHECK_STR(code, "invalid_amount");
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":-1,\"currency\":\"EUR\"}", &code), 422);
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":1.5,\"currency\":\"EUR\"}", &code), 400);
  T_CHECK_STR(code, "invalid_type");
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":\"5\",\"currency\":\"EUR\"}", &code), 400);
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"eur\"}", &code), 422);
  T_CHECK_STR(code, "invalid_currency");
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"XXX\"}", &code), 422);
  T_CHECK_EQ_INT(check_body("{\"id\":\"nope\",\"amount\":5,\"currency\":\"EUR\"}", &code), 422);
  T_CHECK_STR(code, "invalid_field");
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"EUR\",\"note\":\"123456789\"}",
                            &code),
                 422);
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"EUR\",\"note\":\"\"}", &code),
                 422);
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"EUR\",\"flag\":1}", &code),
                 400);
  T_CHECK_EQ_INT(check_body("{" GOOD_ID ",\"amount\":5,\"currency\":\"EUR\",\"flag\":null}", &code),
                 400);
}

static void test_uuid_canonical(void) {
  json_t *obj = json_pack("{s:s, s:i, s:s}", "id", "0190C0DE-ABCD-7000-8000-00000000BEEF", "amount",
                          5, "currency", "EUR");
  svc_json_error_t err;
  T_REQUIRE(svc_json_check(obj, fields, 5, &err) == 0);
  T_CHECK_STR(svc_json_str(obj, "id"), "0190c0de-abcd-7000-8000-00000000beef");
  json_decref(obj);
  char out[37];
  T_CHECK(svc_uuid_canon("0190C0DE-ABCD-7000-8000-00000000BEEF", out));
  T_CHECK_STR(out, "0190c0de-abcd-7000-8000-00000000beef");
  T_CHECK(!svc_uuid_canon("0190c0de-abcd-7000-8000-00000000beeg", out));
  T_CHECK(!svc_uuid_canon("0190c0de-abcd-7000-8000-00000000bee", out));
  T_CHECK(!svc_uuid_canon("0190c0deXabcd-7000-8000-00000000beef", out));
  T_CHECK(!svc_uuid_canon(NULL, out));
}

static void test_currencies(void) {
  T_CHECK(svc_currency_valid("EUR"));
  T_CHECK(svc_currency_valid("JPY"));
  T_CHECK(!svc_currency_valid("EURO"));
  T_CHECK(!svc_currency_valid("XTS"));
  T_CHECK(!svc_currency_valid(NULL));
  size_t n = 0;
  const char *const *all = svc_currencies(&n);
  T_CHECK(n > 100);
  for (size_t i = 1; i < n; i++) T_CHECK(strcmp(all[i - 1], all[i]) < 0); /* sorted: bsearch */
}

int main(void) {
  T_RUN(test_parse);
  T_RUN(test_check);
  T_RUN(test_uuid_canonical);
  T_RUN(test_currencies);
  return t_done();
}
