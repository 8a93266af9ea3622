/*
 * Headers to services: a client can never send identity headers (any
 * X-Auth-*), a token, hop-by-hop or framing fields; the gateway's request
 * id and signed identity are added in the services' format, checked here
 * against an HMAC computed independently.
 */
#include <errno.h>

#include <bearssl.h>

#include "gw.h"
#include "t.h"

static void test_stripped_names(void) {
  const char *stripped[] = {"Authorization", "authorization", "X-Auth-Subject", "x-auth-roles",
                            "X-AUTH-SIGNATURE", "X-Auth-Timestamp", "X-Auth-Anything-New",
                            "Host", "Content-Length", "Transfer-Encoding", "Connection",
                            "Keep-Alive", "TE", "Upgrade", "X-Request-Id", "X-Forwarded-For",
                            "Forwarded", "Proxy-Authorization"};
  const char *kept[] = {"Content-Type", "Accept", "Idempotency-Key", "User-Agent", "X-Auth",
                        "X-Authority"};
  for (size_t i = 0; i < sizeof stripped / sizeof stripped[0]; i++)
    T_CHECK(gw_header_stripped(stripped[i], strlen(stripped[i])));
  for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
    T_CHECK(!gw_header_stripped(kept[i], strlen(kept[i])));
  T_CHECK(gw_response_header_dropped("Strict-Transport-Security", 25));
  T_CHECK(gw_response_header_dropped("Transfer-Encoding", 17));
  T_CHECK(!gw_response_header_dropped("Location", 8));
  T_CHECK(!gw_response_header_dropped("Idempotent-Replayed", 19));
}

static const char raw[] =
    "POST /v1/transfers?dry=1 HTTP/1.1\r\n"
    "Host: gw.example\r\n"
    "Authorization: Bearer eyJhbGciOi.secret.token\r\n"
    "X-Auth-Subject: admin\r\n"
    "X-Auth-Roles: admin,service\r\n"
    "x-auth-signature: deadbeefspoof\r\n"
    "X-Request-Id: client-chosen\r\n"
    "Connection: keep-alive\r\n"
    "Idempotency-Key: k-123\r\n"
    "Content-Type: application/json\r\n"
    "Content-Length: 2\r\n"
    "\r\n{}";

/* hex(HMAC-SHA256(key, text)), computed here without the gateway. */
static void expected_signature(const gw_hmac_key_t *key, const char *text, char out[65]) {
  br_hmac_key_context kc;
  br_hmac_context hc;
  uint8_t mac[32];
  br_hmac_key_init(&kc, &br_sha256_vtable, key->bytes, key->len);
  br_hmac_init(&hc, &kc, 0);
  br_hmac_update(&hc, text, strlen(text));
  br_hmac_out(&hc, mac);
  for (int i = 0; i < 32; i++) snprintf(out + 2 * i, 3, "%02x", mac[i]);
}

static void test_forward_headers(void) {
  http_parser_t p;
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_REQUEST, NULL) == 0);
  size_t used = 0;
  http_msg_t *msg = NULL;
  T_REQUIRE(http_parser_feed(&p, raw, sizeof raw - 1, &used, &msg) == 0 && msg != NULL);
  gw_hmac_key_t key = {.len = 32};
  memcpy(key.bytes, "0123456789abcdef0123456789abcdef", 32);
  gw_identity_t id = {.sub = "0190c0de-0000-7000-8000-000000000001",
                      .roles = GW_ROLE_CUSTOMER | GW_ROLE_OPERATOR, .exp = 1};
  http_buf_t out;
  T_REQUIRE(http_buf_init(&out, 0, 0) == 0);
  T_REQUIRE(gw_forward_headers(&out, msg, "POST", msg->target, "rid-1", &id, &key,
                               1700000000) == 0);
  const char *h = out.data;
  T_CHECK(strstr(h, "Bearer") == NULL);
  T_CHECK(strstr(h, "X-Auth-Subject: admin") == NULL);
  T_CHECK(strstr(h, "admin,service") == NULL);
  T_CHECK(strstr(h, "deadbeefspoof") == NULL);
  T_CHECK(strstr(h, "client-chosen") == NULL);
  T_CHECK(strstr(h, "Connection") == NULL);
  T_CHECK(strstr(h, "Host") == NULL);
  T_CHECK(strstr(h, "Content-Length") == NULL);
  T_CHECK(strstr(h, "Idempotency-Key: k-123\r\n") != NULL);
  T_CHECK(strstr(h, "Content-Type: application/json\r\n") != NULL);
  T_CHECK(strstr(h, "X-Request-Id: rid-1\r\n") != NULL);
  T_CHECK(strstr(h, "X-Auth-Subject: 0190c0de-0000-7000-8000-000000000001\r\n") != NULL);
  T_CHECK(strstr(h, "X-Auth-Roles: customer,operator\r\n") != NULL);
  T_CHECK(strstr(h, "X-Auth-Timestamp: 1700000000\r\n") != NULL);
  /* The signature covers the path without its query. */
  char want[65], line[100];
  expected_signature(&key,
                     "0190c0de-0000-7000-8000-000000000001|customer,operator|POST|/v1/transfers|"
                     "1700000000",
                     want);
  snprintf(line, sizeof line, "X-Auth-Signature: %s\r\n", want);
  T_CHECK(strstr(h, line) != NULL);
  /* Exactly one of each identity header. */
  const char *first = strstr(h, "X-Auth-Subject");
  T_CHECK(first != NULL && strstr(first + 1, "X-Auth-Subject") == NULL);
  /* Without an identity, none at all. */
  http_buf_reset(&out);
  T_REQUIRE(gw_forward_headers(&out, msg, "POST", msg->target, "rid-2", NULL, &key, 1) == 0);
  T_CHECK(strstr(out.data, "X-Auth-") == NULL);
  http_buf_deinit(&out);
  http_parser_deinit(&p);
}

static void test_identity_refusals(void) {
  gw_hmac_key_t key = {.len = 32};
  http_buf_t out;
  T_REQUIRE(http_buf_init(&out, 0, 0) == 0);
  T_CHECK_EQ_INT(gw_identity_headers(&out, "bad subject", "customer", "GET", "/", &key, 1), -EINVAL);
  T_CHECK_EQ_INT(gw_identity_headers(&out, "a\r\nX-Auth-Roles: admin", "customer", "GET", "/",
                                     &key, 1),
                 -EINVAL);
  T_CHECK_EQ_INT(gw_identity_headers(&out, "gateway", "", "GET", "/", &key, 1), -EINVAL);
  T_CHECK_EQ_INT(gw_identity_headers(&out, "gateway", "service\r\n", "GET", "/", &key, 1), -EINVAL);
  T_CHECK_EQ_INT(out.len, 0);
  T_CHECK_EQ_INT(gw_identity_headers(&out, "gateway", "service", "POST", "/internal/x", &key, 5), 0);
  T_CHECK(strncmp(out.data, "X-Auth-Subject: gateway\r\nX-Auth-Roles: service\r\n", 48) == 0);
  http_buf_deinit(&out);
}

int main(void) {
  T_RUN(test_stripped_names);
  T_RUN(test_forward_headers);
  T_RUN(test_identity_refusals);
  return t_done();
}
