/*
 * The route table and role checks: the table says what the design's API
 * table says (transcribed here by hand, independently of the generator),
 * every route x every caller gives the expected decision, the wire router
 * built from the table matches paths to the right pattern, unknown paths
 * are 404, and extra routes parse strictly.
 */
#include "gw.h"
#include "t.h"

#define NONE 0u
#define C GW_ROLE_CUSTOMER
#define O GW_ROLE_OPERATOR
#define AU GW_ROLE_AUDITOR
#define AD GW_ROLE_ADMIN

/* The design's table, section 6: method, path, who may (as roles), and
 * whether anyone may call without a token. */
static const struct {
  const char *method;
  const char *pattern;
  gw_service_t service;
  uint32_t roles;
  bool anonymous;
} expected[] = {
    {"POST", "/v1/auth/token", GW_SVC_LOCAL, C | O | AU | AD, true},
    {"POST", "/v1/customers", GW_SVC_PROFILE, C | O | AU | AD, true},
    {"GET", "/v1/customers/{id}", GW_SVC_PROFILE, C | O, false},
    {"PATCH", "/v1/customers/{id}", GW_SVC_PROFILE, C | O, false},
    {"POST", "/v1/accounts", GW_SVC_ACCOUNT, C | O, false},
    {"GET", "/v1/accounts/{id}", GW_SVC_ACCOUNT, C | O, false},
    {"GET", "/v1/accounts", GW_SVC_ACCOUNT, C | O, false},
    {"GET", "/v1/accounts/{id}/transactions", GW_SVC_ACCOUNT, C | O | AU, false},
    {"POST", "/v1/accounts/{id}/topups", GW_SVC_ACCOUNT, C | O, false},
    {"POST", "/v1/accounts/{id}/withdrawals", GW_SVC_ACCOUNT, C | O, false},
    {"POST", "/v1/transfers", GW_SVC_ACCOUNT, C, false},
    {"POST", "/v1/payments", GW_SVC_PAYMENT, C, false},
    {"GET", "/v1/payments/{id}", GW_SVC_PAYMENT, C | O, false},
    {"GET", "/v1/events", GW_SVC_EVENT, AU | AD, false},
    /* Beyond the design's table. */
    {"PATCH", "/v1/accounts/{id}", GW_SVC_ACCOUNT, O, false},
    {"GET", "/v1/payments", GW_SVC_PAYMENT, C | O, false},
    {"GET", "/v1/dead-letters", GW_SVC_EVENT, O | AD, false},
    {"POST", "/v1/dead-letters/{id}/redrive", GW_SVC_EVENT, O | AD, false},
    {"POST", "/v1/dead-letters/redrive", GW_SVC_EVENT, O | AD, false},
    {"GET", "/v1/events/verify", GW_SVC_EVENT, AU | AD, false},
    {"GET", "/v1/events/checkpoints", GW_SVC_EVENT, AU | AD, false},
    {"GET", "/v1/projections/account-daily", GW_SVC_EVENT, O | AU | AD, false},
    {"GET", "/v1/projections/payment-volume", GW_SVC_EVENT, O | AU | AD, false},
    {"GET", "/v1/projections/payments", GW_SVC_EVENT, O | AU | AD, false},
    {"GET", "/v1/projections/payment-states", GW_SVC_EVENT, O | AU | AD, false},
    {"POST", "/v1/projections/{name}/rebuild", GW_SVC_EVENT, AD, false},
    {"POST", "/v1/reconciliation", GW_SVC_EVENT, AD, false},
};
#define EXPECTED_COUNT (sizeof expected / sizeof expected[0])

static const gw_route_t *find(const char *method, const char *pattern) {
  for (size_t i = 0; i < gw_routes_count; i++)
    if (strcmp(gw_routes[i].method, method) == 0 && strcmp(gw_routes[i].pattern, pattern) == 0)
      return &gw_routes[i];
  return NULL;
}

static void test_table_matches_design(void) {
  T_CHECK_EQ_INT(gw_routes_count, EXPECTED_COUNT);
  for (size_t i = 0; i < EXPECTED_COUNT; i++) {
    const gw_route_t *r = find(expected[i].method, expected[i].pattern);
    if (r == NULL) fprintf(stderr, "missing %s %s\n", expected[i].method, expected[i].pattern);
    T_REQUIRE(r != NULL);
    T_CHECK_EQ_INT(r->service, expected[i].service);
    T_CHECK_EQ_INT(r->roles, expected[i].roles);
    T_CHECK_EQ_INT(r->anonymous, expected[i].anonymous);
  }
}

/* Every route against no token and each single role. */
static void test_rbac_matrix(void) {
  static const uint32_t callers[] = {NONE, C, O, AU, AD};
  for (size_t i = 0; i < EXPECTED_COUNT; i++) {
    const gw_route_t *r = find(expected[i].method, expected[i].pattern);
    T_REQUIRE(r != NULL);
    for (size_t k = 0; k < sizeof callers / sizeof callers[0]; k++) {
      gw_identity_t id = {.sub = "s", .roles = callers[k], .exp = 1};
      gw_authz_t got = gw_authorize(r, callers[k] == NONE ? NULL : &id);
      gw_authz_t want = callers[k] == NONE
                            ? (expected[i].anonymous ? GW_AUTHZ_ALLOW : GW_AUTHZ_UNAUTHENTICATED)
                            : ((expected[i].roles & callers[k]) ? GW_AUTHZ_ALLOW
                                                                : GW_AUTHZ_FORBIDDEN);
      if (got != want)
        fprintf(stderr, "%s %s caller %u: got %d want %d\n", r->method, r->pattern, callers[k],
                got, want);
      T_CHECK_EQ_INT(got, want);
    }
  }
  /* Spot checks worth saying out loud. */
  gw_identity_t customer = {.sub = "c", .roles = C, .exp = 1};
  gw_identity_t auditor = {.sub = "a", .roles = AU, .exp = 1};
  gw_identity_t multi = {.sub = "m", .roles = C | AU, .exp = 1};
  T_CHECK_EQ_INT(gw_authorize(find("GET", "/v1/events"), &customer), GW_AUTHZ_FORBIDDEN);
  T_CHECK_EQ_INT(gw_authorize(find("GET", "/v1/events"), &multi), GW_AUTHZ_ALLOW);
  T_CHECK_EQ_INT(gw_authorize(find("POST", "/v1/transfers"), &auditor), GW_AUTHZ_FORBIDDEN);
  T_CHECK_EQ_INT(gw_authorize(find("GET", "/v1/accounts/{id}/transactions"), &auditor),
                 GW_AUTHZ_ALLOW);
  T_CHECK_EQ_INT(gw_authorize(find("GET", "/v1/accounts/{id}"), &auditor), GW_AUTHZ_FORBIDDEN);
  T_CHECK_EQ_INT(gw_authorize(find("POST", "/v1/customers"), NULL), GW_AUTHZ_ALLOW);
}

static void dummy(http_exchange_t *ex, void *arg) {}

static void test_router_matching(void) {
  static http_router_t router;
  http_router_init(&router);
  for (size_t i = 0; i < gw_routes_count; i++)
    T_REQUIRE(http_router_add(&router, gw_routes[i].method, gw_routes[i].pattern,
                              HTTP_HANDLER(dummy), (void *)&gw_routes[i]) == 0);
  http_route_match_t m;
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/a1/transactions", &m), 0);
  T_CHECK_STR(((const gw_route_t *)m.arg)->pattern, "/v1/accounts/{id}/transactions");
  T_CHECK_STR(http_route_param(&m, "id"), "a1");
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts", &m), 0);
  T_CHECK_STR(((const gw_route_t *)m.arg)->pattern, "/v1/accounts");
  T_CHECK_EQ_INT(http_router_match(&router, "POST", "/v1/accounts", &m), 0);
  T_CHECK_STR(((const gw_route_t *)m.arg)->method, "POST");
  /* Unknown paths and methods are never proxied. */
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/a1/secret", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/admin", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/internal/credentials/verify", &m),
                 HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/accounts/", &m), HTTP_E_NOT_FOUND);
  T_CHECK_EQ_INT(http_router_match(&router, "DELETE", "/v1/accounts/a1", &m), HTTP_E_METHOD);
  T_CHECK_EQ_INT(http_router_match(&router, "GET", "/v1/transfers", &m), HTTP_E_METHOD);
}

static void test_extra_routes(void) {
  gw_route_t r[4];
  char storage[256];
  int n = gw_routes_parse_extra("GET /hello event customer+anonymous; POST /echo account operator",
                                r, 4, storage, sizeof storage);
  T_REQUIRE(n == 2);
  T_CHECK_STR(r[0].method, "GET");
  T_CHECK_STR(r[0].pattern, "/hello");
  T_CHECK_EQ_INT(r[0].service, GW_SVC_EVENT);
  T_CHECK_EQ_INT(r[0].roles, C);
  T_CHECK(r[0].anonymous);
  T_CHECK_EQ_INT(r[1].service, GW_SVC_ACCOUNT);
  T_CHECK_EQ_INT(r[1].roles, O);
  T_CHECK(!r[1].anonymous);
  T_CHECK_EQ_INT(gw_routes_parse_extra("", r, 4, storage, sizeof storage), 0);
  const char *bad[] = {
      "GET /x nosuch customer",      /* unknown service */
      "GET /x gateway customer",     /* the gateway answers only its own route */
      "GET /x event superuser",      /* unknown role */
      "GET /x event",                /* no roles */
      "GET x event customer",        /* not a path */
      "GET /x event customer extra", /* trailing words */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    T_CHECK_EQ_INT(gw_routes_parse_extra(bad[i], r, 4, storage, sizeof storage), GW_E_CONFIG);
  T_CHECK_EQ_INT(gw_routes_parse_extra("GET /a event admin;GET /b event admin", r, 1, storage,
                                       sizeof storage),
                 GW_E_CONFIG);
}

int main(void) {
  T_RUN(test_table_matches_design);
  T_RUN(test_rbac_matrix);
  T_RUN(test_router_matching);
  T_RUN(test_extra_routes);
  return t_done();
}
