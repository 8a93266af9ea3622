/*
 * test_http_router.c - patterns, params, static over param, 404 vs 405 with
 * the Allow list, and every fixed limit of the table.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "http.h"
#include "t.h"

/* Distinct handlers, so a match can be told apart by its handler. */
static void h_list(void) {}
static void h_get(void) {}
static void h_new(void) {}
static void h_tx(void) {}
static void h_post(void) {}
static void h_root(void) {}
static void h_slash(void) {}

static http_router_t router; /* ~30 KiB: not on the stack */

static void build_api(void) {
  http_router_init(&router);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/v1/accounts", h_list, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "POST", "/v1/accounts", h_post, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/v1/accounts/{id}", h_get, &router), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/v1/accounts/new", h_new, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/v1/accounts/{id}/transactions", h_tx, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/", h_root, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/v1/accounts/", h_slash, NULL), 0);
}

static void test_params(void) {
  build_api();
  http_route_match_t m;
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/0190-ab/transactions", &m), 0);
  T_CHECK(m.handler == h_tx);
  T_CHECK_STR(m.pattern, "/v1/accounts/{id}/transactions");
  T_REQUIRE(m.params_count == 1);
  T_CHECK_STR(m.params[0].name, "id");
  T_CHECK_STR(m.params[0].value, "0190-ab");
  T_CHECK_EQ_INT(m.params[0].value_len, 7);
  T_CHECK_STR(http_route_param(&m, "id"), "0190-ab");
  T_CHECK(http_route_param(&m, "other") == NULL);

  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/42", &m), 0);
  T_CHECK(m.handler == h_get);
  T_CHECK(m.arg == &router);
  T_CHECK_STR(http_route_param(&m, "id"), "42");

  /* Several params, and a value copied out so the path may go away. */
  http_router_init(&router);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/{x}/b/{y}/{z}", h_get, NULL), 0);
  char path[64];
  snprintf(path, sizeof(path), "/a/1/b/22/333");
  T_CHECK_EQ_INT(http_router_match(&router, "GET", path, &m), 0);
  memset(path, 0, sizeof(path));
  T_CHECK_EQ_INT(m.params_count, 3);
  T_CHECK_STR(http_route_param(&m, "x"), "1");
  T_CHECK_STR(http_route_param(&m, "y"), "22");
  T_CHECK_STR(http_route_param(&m, "z"), "333");
}

static void test_static_over_param(void) {
  build_api();
  http_route_match_t m;
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/new", &m), 0);
  T_CHECK(m.handler == h_new);
  T_CHECK_EQ_INT(m.params_count, 0);
  /* Added the other way round, the static route still wins. */
  http_router_init(&router);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/x/new", h_new, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/x/{id}", h_get, NULL), 0);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/x/new", &m), 0);
  T_CHECK(m.handler == h_new);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/x/old", &m), 0);
  T_CHECK(m.handler == h_get);
  /* The earlier segment decides: /{a}/z loses to /s/{b} for /s/z. */
  http_router_init(&router);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/{a}/z", h_get, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/s/{b}", h_new, NULL), 0);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/s/z", &m), 0);
  T_CHECK(m.handler == h_new);
  T_CHECK_STR(http_route_param(&m, "b"), "z");
}

static void test_exact_segments(void) {
  build_api();
  http_route_match_t m;
  /* The trailing slash is not ignored: its own route, or nothing. */
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/", &m), 0);
  T_CHECK(m.handler == h_slash);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/42/", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/", &m), 0);
  T_CHECK(m.handler == h_root);
  /* A param needs a non-empty segment. */
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts//transactions", &m),
                 HTTP_E_NOT_FOUND);
  /* Static segments match byte for byte: case and encoding matter. */
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/V1/accounts", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/account%73", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "v1/accounts", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "*", &m), HTTP_E_NOT_FOUND);
}

static void test_not_found_vs_method(void) {
  build_api();
  http_route_match_t m;
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v2/accounts", &m), HTTP_E_NOT_FOUND);
  T_CHECK_STR(m.allow, "");
  T_CHECK_EQ_INT(http_router_match(&router, "DELETE", "/v1/accounts", &m), HTTP_E_METHOD);
  T_CHECK_STR(m.allow, "GET, POST");
  T_CHECK(m.handler == NULL);
  /* The Allow list names each method once. */
  http_router_add(&router, "PATCH", "/v1/accounts/{id}", h_post, NULL);
  http_router_add(&router, "PATCH", "/v1/accounts/new", h_post, NULL);
  T_CHECK_EQ_INT(http_router_match(&router, "DELETE", "/v1/accounts/new", &m), HTTP_E_METHOD);
  T_CHECK_STR(m.allow, "GET, PATCH");
  /* Methods are case-sensitive tokens. */
  T_CHECK_EQ_INT(http_router_match(&router, "get", "/v1/accounts", &m), HTTP_E_METHOD);
  /* A method that is a prefix of another is still its own. */
  http_router_init(&router);
  http_router_add(&router, "POSTX", "/p", h_post, NULL);
  http_router_add(&router, "POST", "/p", h_post, NULL);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/p", &m), HTTP_E_METHOD);
  T_CHECK_STR(m.allow, "POSTX, POST");
  /* A param route of the same method wins over a 405 from a static one. */
  http_router_init(&router);
  http_router_add(&router, "POST", "/q/new", h_post, NULL);
  http_router_add(&router, "GET", "/q/{id}", h_get, NULL);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/q/new", &m), 0);
  T_CHECK(m.handler == h_get);
}

static void test_bad_patterns(void) {
  http_router_init(&router);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "a/b", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a//b", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/{}", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/x{id}", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/{id", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/{i-d}", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/{id}/{id}", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a?b", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "", "/a", h_get, NULL), -EINVAL);
  T_CHECK_EQ_INT(http_router_add(&router, "G T", "/a", h_get, NULL), -EINVAL);
  T_CHECK_EQ_INT(http_router_add(&router, "VERYLONGMETHODXX", "/a", h_get, NULL), -EINVAL);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a", NULL, NULL), -EINVAL);
  T_CHECK_EQ_INT(router.routes_count, 0); /* nothing half-added */
  /* Same method and shape twice: the second could never match. */
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/{id}", h_get, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/{other}", h_get, NULL), HTTP_E_PATTERN);
  T_CHECK_EQ_INT(http_router_add(&router, "POST", "/a/{other}", h_get, NULL), 0);
  T_CHECK_EQ_INT(router.routes_count, 2);
}

static void test_too_many_routes(void) {
  http_router_init(&router);
  char pattern[32];
  for (int i = 0; i < HTTP_ROUTES_MAX; i++) {
    snprintf(pattern, sizeof(pattern), "/r%d", i);
    T_CHECK_EQ_INT(http_router_add(&router, "GET", pattern, h_get, NULL), 0);
  }
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/one-more", h_get, NULL), HTTP_E_LIMIT);
  http_route_match_t m;
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/r127", &m), 0);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/one-more", &m), HTTP_E_NOT_FOUND);
}

static void test_too_many_params_and_segments(void) {
  http_router_init(&router);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", h_get, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", h_get, NULL),
                 HTTP_E_LIMIT);
  http_route_match_t m;
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/1/2/3/4/5/6/7/8", &m), 0);
  T_CHECK_EQ_INT(m.params_count, HTTP_ROUTE_PARAMS_MAX);
  T_CHECK_STR(http_route_param(&m, "h"), "8");
  /* 16 segments fit, 17 do not, in patterns and in paths. */
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", h_get, NULL), 0);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", h_get, NULL),
                 HTTP_E_LIMIT);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p", &m), 0);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q", &m),
                 HTTP_E_NOT_FOUND);
}

static void test_long_segments(void) {
  http_router_init(&router);
  T_CHECK_EQ_INT(http_router_add(&router, "GET", "/i/{id}", h_get, NULL), 0);
  http_route_match_t m;
  char path[HTTP_ROUTE_PATH_BYTES_MAX + 16];
  /* The longest value that fits the buffer, with its NUL. */
  size_t fit = HTTP_ROUTE_PARAM_VALUE_BYTES_MAX - 1;
  memcpy(path, "/i/", 3);
  memset(path + 3, 'v', fit);
  path[3 + fit] = '\0';
  T_CHECK_EQ_INT(http_router_match(&router, "GET", path, &m), 0);
  T_CHECK_EQ_INT(m.params[0].value_len, fit);
  T_CHECK_EQ_INT(strlen(http_route_param(&m, "id")), fit);
  /* One more does not match rather than being cut. */
  path[3 + fit] = 'v';
  path[4 + fit] = '\0';
  T_CHECK_EQ_INT(http_router_match(&router, "GET", path, &m), HTTP_E_NOT_FOUND);
  /* A path longer than any pattern could accept is refused unread. */
  memset(path, 'x', sizeof(path) - 1);
  path[0] = '/';
  path[sizeof(path) - 1] = '\0';
  T_CHECK_EQ_INT(http_router_match(&router, "GET", path, &m), HTTP_E_NOT_FOUND);
  /* Pattern and param-name lengths. */
  char pattern[HTTP_ROUTE_PATTERN_BYTES_MAX + 8];
  pattern[0] = '/';
  memset(pattern + 1, 's', HTTP_ROUTE_PATTERN_BYTES_MAX - 2);
  pattern[HTTP_ROUTE_PATTERN_BYTES_MAX - 1] = '\0';
  T_CHECK_EQ_INT(http_router_add(&router, "GET", pattern, h_get, NULL), 0);
  pattern[HTTP_ROUTE_PATTERN_BYTES_MAX - 1] = 's';
  pattern[HTTP_ROUTE_PATTERN_BYTES_MAX] = '\0';
  T_CHECK_EQ_INT(http_router_add(&router, "GET", pattern, h_get, NULL), HTTP_E_LIMIT);
  char name_pattern[64];
  snprintf(name_pattern, sizeof(name_pattern), "/n/{%031d}", 0); /* 31 chars: fits */
  T_CHECK_EQ_INT(http_router_add(&router, "GET", name_pattern, h_get, NULL), 0);
  snprintf(name_pattern, sizeof(name_pattern), "/m/{%032d}", 0); /* 32: too long */
  T_CHECK_EQ_INT(http_router_add(&router, "GET", name_pattern, h_get, NULL), HTTP_E_PATTERN);
}

int main(void) {
  T_RUN(test_params);
  T_RUN(test_static_over_param);
  T_RUN(test_exact_segments);
  T_RUN(test_not_found_vs_method);
  T_RUN(test_bad_patterns);
  T_RUN(test_too_many_routes);
  T_RUN(test_too_many_params_and_segments);
  T_RUN(test_long_segments);
  return t_done();
}
