/*
 * Upstream addresses: URL lists, round robin, skipping addresses marked
 * down after repeated failures, trying them again after the back-off.
 */
#include "gw.h"
#include "t.h"

#define MS 1000000ull

static void test_parse(void) {
  gw_service_addrs_t s;
  T_REQUIRE(gw_service_addrs_parse(&s, "http://127.0.0.1:7001, http://10.0.0.2:80/,http://[::1]:9") == 0);
  T_CHECK_EQ_INT(s.count, 3);
  T_CHECK_STR(s.addrs[0].host, "127.0.0.1");
  T_CHECK_EQ_INT(s.addrs[0].port, 7001);
  T_CHECK_STR(s.addrs[1].host, "10.0.0.2");
  T_CHECK_STR(s.addrs[2].host, "::1");
  T_CHECK_EQ_INT(s.addrs[2].port, 9);
  const char *bad[] = {"", "127.0.0.1:7001", "https://a:1", "http://a", "http://a:0",
                       "http://a:70000", "http://a:1,,http://b:2", "http://:80"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    T_CHECK_EQ_INT(gw_service_addrs_parse(&s, bad[i]), GW_E_CONFIG);
}

static void test_round_robin_and_health(void) {
  gw_service_addrs_t s;
  T_REQUIRE(gw_service_addrs_parse(&s, "http://a:1,http://b:2,http://c:3") == 0);
  uint32_t cur = 0;
  uint64_t now = 1000 * MS;
  T_CHECK_EQ_INT(gw_service_pick(&s, &cur, -1, now), 0);
  T_CHECK_EQ_INT(gw_service_pick(&s, &cur, -1, now), 1);
  T_CHECK_EQ_INT(gw_service_pick(&s, &cur, -1, now), 2);
  T_CHECK_EQ_INT(gw_service_pick(&s, &cur, -1, now), 0);
  /* Two failures of b: still used; the third marks it down. */
  gw_upstream_report(&s.addrs[1], false, 3, 500, now);
  gw_upstream_report(&s.addrs[1], false, 3, 500, now);
  T_CHECK(gw_upstream_healthy(&s.addrs[1], now));
  gw_upstream_report(&s.addrs[1], false, 3, 500, now);
  T_CHECK(!gw_upstream_healthy(&s.addrs[1], now));
  int seen_b = 0;
  for (int i = 0; i < 10; i++) seen_b += gw_service_pick(&s, &cur, -1, now) == 1;
  T_CHECK_EQ_INT(seen_b, 0);
  /* A retry avoids the address that just failed. */
  T_CHECK_EQ_INT(gw_service_pick(&s, &cur, 0, now) != 0, 1);
  /* After the back-off it is tried again; a success clears it. */
  T_CHECK(gw_upstream_healthy(&s.addrs[1], now + 500 * MS));
  gw_upstream_report(&s.addrs[1], true, 3, 500, now + 501 * MS);
  T_CHECK_EQ_INT(atomic_load(&s.addrs[1].fails), 0);
  T_CHECK(atomic_load(&s.addrs[1].last_ok_ns) != 0);
  /* Everything down: no address. */
  for (int i = 0; i < 3; i++)
    for (int k = 0; k < 3; k++) gw_upstream_report(&s.addrs[i], false, 3, 500, now);
  T_CHECK_EQ_INT(gw_service_pick(&s, &cur, -1, now + 1), -1);
}

int main(void) {
  T_RUN(test_parse);
  T_RUN(test_round_robin_and_health);
  return t_done();
}
