/*
 * Identity headers (svc_auth.c): what the service signs, it verifies;
 * anything changed, stale or unknown is refused.
 */
#include <errno.h>

#include "svc.h"
#include "t.h"

static const uint8_t key[] = "unit-test-key-0123456789abcdef0123456789";
#define KEY_BYTES (sizeof key - 1)

typedef struct fake {
  http_header_t headers[8];
  char store[8][160];
  http_msg_t msg;
} fake_t;

/* A request for method and path with the header lines of svc_auth_sign(). */
static void fake_from_lines(fake_t *f, const char *method, const char *path, const char *lines) {
  memset(f, 0, sizeof *f);
  uint32_t n = 0;
  const char *p = lines;
  while (*p != '\0' && n < 8) {
    const char *eol = strstr(p, "\r\n");
    const char *colon = strchr(p, ':');
    if (eol == NULL || colon == NULL || colon > eol) break;
    snprintf(f->store[n], sizeof f->store[n], "%.*s", (int)(eol - p), p);
    char *c = strchr(f->store[n], ':');
    *c = '\0';
    f->headers[n] = (http_header_t){.name = f->store[n], .value = c + 2,
                                    .name_len = (uint32_t)strlen(f->store[n]),
                                    .value_len = (uint32_t)strlen(c + 2)};
    n++;
    p = eol + 2;
  }
  f->msg.method_name = method;
  f->msg.path = path;
  f->msg.headers = f->headers;
  f->msg.headers_count = n;
  f->msg.body = "";
}

static void test_roundtrip(void) {
  char lines[512];
  int64_t now = 1800000000;
  T_REQUIRE(svc_auth_sign(lines, sizeof lines, key, KEY_BYTES, "0190c0de-0000-7000-8000-000000000001",
                          "customer,auditor", "GET", "/v1/accounts?limit=5", now) > 0);
  fake_t f;
  fake_from_lines(&f, "GET", "/v1/accounts", lines);
  svc_identity_t who;
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now + 30, &who), 0);
  T_CHECK(who.present);
  T_CHECK_STR(who.subject, "0190c0de-0000-7000-8000-000000000001");
  T_CHECK_EQ_INT(who.roles, SVC_ROLE_CUSTOMER | SVC_ROLE_AUDITOR);
  /* Stale, and from the future. */
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now + 61, &who), SVC_E_AUTH_BAD);
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now - 61, &who), SVC_E_AUTH_BAD);
  /* Another key, another method, another path. */
  static const uint8_t other[] = "another-key-0123456789abcdef0123456789ab";
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, other, sizeof other - 1, 60, now, &who), SVC_E_AUTH_BAD);
  f.msg.method_name = "POST";
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now, &who), SVC_E_AUTH_BAD);
  f.msg.method_name = "GET";
  f.msg.path = "/v1/accounts/x";
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now, &who), SVC_E_AUTH_BAD);
  T_CHECK(!who.present);
}

static void test_tampered(void) {
  char lines[512];
  int64_t now = 1800000000;
  T_REQUIRE(svc_auth_sign(lines, sizeof lines, key, KEY_BYTES, "cust-1", "customer", "GET",
                          "/v1/x", now) > 0);
  fake_t f;
  fake_from_lines(&f, "GET", "/v1/x", lines);
  svc_identity_t who;
  /* Roles raised after signing. */
  snprintf(f.store[1] + strlen(f.store[1]) + 1, 100, " operator");
  f.headers[1].value = "operator";
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now, &who), SVC_E_AUTH_BAD);
  /* One header missing, all missing. */
  fake_from_lines(&f, "GET", "/v1/x", lines);
  f.msg.headers_count = 3;
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now, &who), SVC_E_AUTH_BAD);
  f.msg.headers_count = 0;
  T_CHECK_EQ_INT(svc_auth_verify(&f.msg, key, KEY_BYTES, 60, now, &who), SVC_E_AUTH_MISSING);
}

static void test_roles(void) {
  uint32_t r = 0;
  T_CHECK_EQ_INT(svc_roles_parse("customer", &r), 0);
  T_CHECK_EQ_INT(r, SVC_ROLE_CUSTOMER);
  T_CHECK_EQ_INT(svc_roles_parse("admin,service", &r), 0);
  T_CHECK_EQ_INT(r, SVC_ROLE_ADMIN | SVC_ROLE_SERVICE);
  T_CHECK(svc_roles_parse("", &r) < 0);
  T_CHECK(svc_roles_parse("customer,", &r) < 0);
  T_CHECK(svc_roles_parse("superuser", &r) < 0);
  T_CHECK(svc_roles_parse("Customer", &r) < 0);
  char lines[512];
  T_CHECK(svc_auth_sign(lines, sizeof lines, key, KEY_BYTES, "bad subject", "customer", "GET", "/",
                        1) < 0);
  T_CHECK(svc_auth_sign(lines, 16, key, KEY_BYTES, "cust-1", "customer", "GET", "/", 1) == -ENOSPC);
}

int main(void) {
  T_RUN(test_roundtrip);
  T_RUN(test_tampered);
  T_RUN(test_roles);
  return t_done();
}
