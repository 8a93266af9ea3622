/*
 * test_http_response.c - output buffers, exact response and request bytes,
 * JSON bodies and errors read back with jansson and with our own parser,
 * refusals of header injection, and the hard cap.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "http.h"
#include "t.h"

static void test_buf_basics(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 0, 64) == 0);
  T_CHECK(b.data == NULL);
  T_CHECK_EQ_INT(http_buf_append_str(&b, "hello"), 0);
  T_CHECK_EQ_INT(http_buf_appendf(&b, " %d-%s", 42, "x"), 0);
  T_CHECK_STR(b.data, "hello 42-x");
  T_CHECK_EQ_INT(b.len, 10);
  http_buf_consume(&b, 6);
  T_CHECK_STR(b.data, "42-x");
  http_buf_consume(&b, 100);
  T_CHECK_EQ_INT(b.len, 0);
  T_CHECK_STR(b.data, "");
  http_buf_reset(&b);
  T_CHECK_EQ_INT(http_buf_append(&b, "\0a", 2), 0); /* bytes, not strings */
  T_CHECK_EQ_INT(b.len, 2);
  http_buf_deinit(&b);
  http_buf_deinit(&b); /* twice is harmless */
  T_CHECK_EQ_INT(http_buf_init(&b, 65, 64), -EINVAL);
  T_CHECK_EQ_INT(http_buf_init(&b, 0, 0), 0);
  T_CHECK_EQ_INT(b.cap_max, HTTP_BUF_BYTES_MAX_DEFAULT);
  http_buf_deinit(&b);
}

static void test_buf_cap(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 16, 100) == 0);
  char block[100];
  memset(block, 'a', sizeof(block));
  T_CHECK_EQ_INT(http_buf_append(&b, block, 60), 0);
  /* Over the cap: refused, and nothing of it was written. */
  T_CHECK_EQ_INT(http_buf_append(&b, block, 41), HTTP_E_OVERFLOW);
  T_CHECK_EQ_INT(b.len, 60);
  T_CHECK_EQ_INT(http_buf_appendf(&b, "%041d", 7), HTTP_E_OVERFLOW);
  T_CHECK_EQ_INT(b.len, 60);
  T_CHECK_EQ_INT(http_buf_append(&b, block, 40), 0); /* exactly to the cap */
  T_CHECK_EQ_INT(b.len, 100);
  T_CHECK(b.cap <= 100);
  T_CHECK_EQ_INT(http_buf_append(&b, "x", 1), HTTP_E_OVERFLOW);
  T_CHECK_EQ_INT(http_buf_reserve(&b, (size_t)-1), HTTP_E_OVERFLOW);
  http_buf_deinit(&b);
}

/* Responses carry a Date line; check its shape, then cut it out so the rest
 * can be compared byte for byte. */
static void strip_date(http_buf_t *b) {
  char *d = strstr(b->data, "\r\nDate: ");
  T_REQUIRE(d != NULL);
  d += 2;
  char *end = strstr(d, "\r\n");
  T_REQUIRE(end != NULL);
  /* "Date: Mon, 23 Nov 2026 22:42:15 GMT" */
  T_CHECK_EQ_INT(end - d, 35);
  T_CHECK(strncmp(end - 4, " GMT", 4) == 0);
  memmove(d, end + 2, strlen(end + 2) + 1);
  b->len = strlen(b->data);
}

static void test_simple_response_bytes(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 0, 0) == 0);
  T_CHECK_EQ_INT(http_write_response(&b, 200, "text/plain", NULL, "hi", 2, true), 0);
  strip_date(&b);
  T_CHECK_STR(b.data, "HTTP/1.1 200 OK\r\n"
                      "Content-Length: 2\r\n"
                      "Content-Type: text/plain\r\n"
                      "\r\n"
                      "hi");
  http_buf_reset(&b);
  T_CHECK_EQ_INT(http_write_response(&b, 404, NULL, "X-Request-Id: r1\r\nX-B: 2\r\n",
                                     NULL, 0, false), 0);
  strip_date(&b);
  T_CHECK_STR(b.data, "HTTP/1.1 404 Not Found\r\n"
                      "Content-Length: 0\r\n"
                      "Connection: close\r\n"
                      "X-Request-Id: r1\r\n"
                      "X-B: 2\r\n"
                      "\r\n");
  /* No Content-Length, no body, where the status forbids one. */
  http_buf_reset(&b);
  T_CHECK_EQ_INT(http_write_response(&b, 204, NULL, NULL, NULL, 0, true), 0);
  strip_date(&b);
  T_CHECK_STR(b.data, "HTTP/1.1 204 No Content\r\n\r\n");
  /* Responses append: two in a row for pipelined requests. */
  T_CHECK_EQ_INT(http_write_response(&b, 599, NULL, NULL, "", 0, true), 0);
  strip_date(&b);
  T_CHECK_STR(b.data, "HTTP/1.1 204 No Content\r\n\r\n"
                      "HTTP/1.1 599 Unknown\r\nContent-Length: 0\r\n\r\n");
  http_buf_deinit(&b);
}

static void test_response_refusals(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 0, 0) == 0);
  T_CHECK_EQ_INT(http_buf_append_str(&b, "keep"), 0);
  /* Anything that could split the response or end its head early. */
  T_CHECK_EQ_INT(http_write_response(&b, 200, "text/plain\r\nX-Evil: 1", NULL, "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 200, NULL, "X-A: 1\r\n\r\nbody", "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 200, NULL, "X-A: 1\n", "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 200, NULL, "X-A: 1", "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 200, NULL, "X-A: 1\rX-B: 2\r\n", "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 200, NULL, "Bad Name: 1\r\n", "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 200, NULL, ": 1\r\n", "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 99, NULL, NULL, "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 600, NULL, NULL, "", 0, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 204, NULL, NULL, "x", 1, true), -EINVAL);
  T_CHECK_EQ_INT(http_write_response(&b, 200, NULL, NULL, NULL, 3, true), -EINVAL);
  T_CHECK_STR(b.data, "keep");
  http_buf_deinit(&b);
}

/* A response that does not fit leaves the buffer as it was. */
static void test_response_overflow(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 0, 256) == 0);
  T_CHECK_EQ_INT(http_buf_append_str(&b, "earlier"), 0);
  char body[300];
  memset(body, 'b', sizeof(body));
  T_CHECK_EQ_INT(http_write_response(&b, 200, "text/plain", NULL, body, 200, true),
                 HTTP_E_OVERFLOW);
  T_CHECK_STR(b.data, "earlier");
  T_CHECK_EQ_INT(http_write_error(&b, 500, "internal", "x", true), 0); /* still room */
  json_t *big = json_array();
  for (int i = 0; i < 100; i++) json_array_append_new(big, json_integer(123456789));
  size_t before = b.len;
  T_CHECK_EQ_INT(http_write_json(&b, 200, big, true, NULL), HTTP_E_OVERFLOW);
  T_CHECK_EQ_INT(b.len, before);
  json_decref(big);
  http_buf_deinit(&b);
}

/* Parses what a writer produced with our own parser, as the client will. */
static http_msg_t *parse_back(http_parser_t *p, http_kind_t kind, const http_buf_t *b) {
  if (http_parser_init(p, kind, NULL) != 0) return NULL;
  size_t used = 0;
  http_msg_t *m = NULL;
  if (http_parser_feed(p, b->data, b->len, &used, &m) != 0 || used != b->len) return NULL;
  return m;
}

static void test_json_body(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 0, 0) == 0);
  json_t *body = json_pack("{s:s, s:I, s:[i,i]}", "id", "a1", "amount", (json_int_t)1050, "x", 1, 2);
  T_REQUIRE(body != NULL);
  T_CHECK_EQ_INT(http_write_json(&b, 201, body, true, "Location: /v1/a1\r\n"), 0);
  json_decref(body);
  http_parser_t p;
  http_msg_t *m = parse_back(&p, HTTP_KIND_RESPONSE, &b);
  T_REQUIRE(m != NULL);
  T_CHECK_EQ_INT(m->status, 201);
  T_CHECK_STR(http_msg_header(m, "content-type"), "application/json");
  T_CHECK_STR(http_msg_header(m, "location"), "/v1/a1");
  T_CHECK_STR(m->body, "{\"id\":\"a1\",\"amount\":1050,\"x\":[1,2]}"); /* compact */
  http_parser_deinit(&p);
  T_CHECK_EQ_INT(http_write_json(&b, 200, NULL, true, NULL), -EINVAL);
  http_buf_deinit(&b);
}

static void test_json_error(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 0, 0) == 0);
  const char *msg = "bad \"amount\"\n\\ <tag> \x01 caf\xc3\xa9";
  T_CHECK_EQ_INT(http_write_error(&b, 422, "validation_failed", msg, false), 0);
  /* The escapes are in the bytes, not raw quotes, newlines or controls. */
  T_CHECK(strstr(b.data, "\\\"amount\\\"") != NULL);
  T_CHECK(strstr(b.data, "\\n") != NULL);
  T_CHECK(strstr(b.data, "\\u0001") != NULL);
  http_parser_t p;
  http_msg_t *m = parse_back(&p, HTTP_KIND_RESPONSE, &b);
  T_REQUIRE(m != NULL);
  T_CHECK_EQ_INT(m->status, 422);
  T_CHECK_STR(m->reason, "Unprocessable Content");
  T_CHECK(!m->keep_alive);
  json_error_t jerr;
  json_t *root = json_loadb(m->body, m->body_len, 0, &jerr);
  T_REQUIRE(root != NULL);
  json_t *err = json_object_get(root, "error");
  T_CHECK(json_is_object(err));
  T_CHECK_STR(json_string_value(json_object_get(err, "code")), "validation_failed");
  T_CHECK_STR(json_string_value(json_object_get(err, "message")), msg);
  T_CHECK_EQ_INT(json_object_size(root), 1);
  json_decref(root);
  http_parser_deinit(&p);

  /* NULL code and message, and a message that is not UTF-8. */
  http_buf_reset(&b);
  T_CHECK_EQ_INT(http_write_error(&b, 404, NULL, "\xff\xfe", true), 0);
  const char *json = strstr(b.data, "\r\n\r\n");
  T_REQUIRE(json != NULL);
  T_CHECK_STR(json + 4, "{\"error\":{\"code\":\"error\",\"message\":\"Not Found\"}}");
  http_buf_deinit(&b);
}

static void test_request_bytes(void) {
  http_buf_t b;
  T_REQUIRE(http_buf_init(&b, 0, 0) == 0);
  T_CHECK_EQ_INT(http_write_request(&b, "GET", "account:7002", "/v1/accounts/1?x=y",
                                    "X-Request-Id: r\r\n", NULL, 0), 0);
  T_CHECK_STR(b.data, "GET /v1/accounts/1?x=y HTTP/1.1\r\nHost: account:7002\r\n"
                      "X-Request-Id: r\r\n\r\n");
  http_buf_reset(&b);
  T_CHECK_EQ_INT(http_write_request(&b, "POST", "h", "/p", NULL, NULL, 0), 0);
  T_CHECK_STR(b.data, "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n");
  http_buf_reset(&b);
  T_CHECK_EQ_INT(http_write_request(&b, "PUT", "h", "/p", "Content-Type: application/json\r\n",
                                    "{}", 2), 0);
  T_CHECK_STR(b.data, "PUT /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"
                      "Content-Type: application/json\r\n\r\n{}");
  /* It parses back as the same request. */
  http_parser_t p;
  http_msg_t *m = parse_back(&p, HTTP_KIND_REQUEST, &b);
  T_REQUIRE(m != NULL);
  T_CHECK_EQ_INT(m->method, HTTP_PUT);
  T_CHECK_STR(m->path, "/p");
  T_CHECK_STR(m->body, "{}");
  http_parser_deinit(&p);

  http_buf_reset(&b);
  T_CHECK_EQ_INT(http_write_request(&b, "G T", "h", "/", NULL, NULL, 0), -EINVAL);
  T_CHECK_EQ_INT(http_write_request(&b, "GET", "h\r\nX: y", "/", NULL, NULL, 0), -EINVAL);
  T_CHECK_EQ_INT(http_write_request(&b, "GET", "", "/", NULL, NULL, 0), -EINVAL);
  T_CHECK_EQ_INT(http_write_request(&b, "GET", "h", "/a b", NULL, NULL, 0), -EINVAL);
  T_CHECK_EQ_INT(http_write_request(&b, "GET", "h", "http://h/", NULL, NULL, 0), -EINVAL);
  T_CHECK_EQ_INT(http_write_request(&b, "GET", "h", "/", "X: 1\r\n\r\n", NULL, 0), -EINVAL);
  T_CHECK_EQ_INT(b.len, 0);
  http_buf_deinit(&b);
}

static void test_status_reason(void) {
  T_CHECK_STR(http_status_reason(200), "OK");
  T_CHECK_STR(http_status_reason(405), "Method Not Allowed");
  T_CHECK_STR(http_status_reason(413), "Content Too Large");
  T_CHECK_STR(http_status_reason(431), "Request Header Fields Too Large");
  T_CHECK_STR(http_status_reason(503), "Service Unavailable");
  T_CHECK_STR(http_status_reason(299), "Unknown");
  T_CHECK_STR(http_status_reason(-1), "Unknown");
}

int main(void) {
  T_RUN(test_buf_basics);
  T_RUN(test_buf_cap);
  T_RUN(test_simple_response_bytes);
  T_RUN(test_response_refusals);
  T_RUN(test_response_overflow);
  T_RUN(test_json_body);
  T_RUN(test_json_error);
  T_RUN(test_request_bytes);
  T_RUN(test_status_reason);
  return t_done();
}
