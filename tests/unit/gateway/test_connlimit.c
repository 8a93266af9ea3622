/*
 * Connections per client address: the cap per address, addresses apart,
 * release and reuse, a full table refusing new addresses, and counts that
 * stay right when entries are removed from the middle of probe runs.
 */
#include <arpa/inet.h>
#include <netinet/in.h>

#include "gw.h"
#include "t.h"

static gw_addr_t v4(uint32_t host_order) {
  struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(host_order)};
  gw_addr_t a;
  gw_addr_from_sockaddr(&a, (struct sockaddr *)&sin);
  return a;
}

static void test_cap_per_address(void) {
  gw_connlimit_t *cl = NULL;
  T_REQUIRE(gw_connlimit_create(&cl, 2, 64) == 0);
  gw_addr_t a = v4(0x7f000001), b = v4(0x0a000001);
  T_CHECK_EQ_INT(gw_connlimit_acquire(cl, &a), 0);
  T_CHECK_EQ_INT(gw_connlimit_acquire(cl, &a), 0);
  T_CHECK_EQ_INT(gw_connlimit_acquire(cl, &a), GW_E_LIMIT);
  T_CHECK_EQ_INT(gw_connlimit_acquire(cl, &b), 0);
  T_CHECK_EQ_INT(gw_connlimit_count(cl, &a), 2);
  gw_connlimit_release(cl, &a);
  T_CHECK_EQ_INT(gw_connlimit_acquire(cl, &a), 0);
  gw_connlimit_release(cl, &a);
  gw_connlimit_release(cl, &a);
  gw_connlimit_release(cl, &b);
  T_CHECK_EQ_INT(gw_connlimit_count(cl, &a), 0);
  T_CHECK_EQ_INT(gw_connlimit_count(cl, &b), 0);
  gw_connlimit_destroy(cl);
}

static void test_table_full(void) {
  gw_connlimit_t *cl = NULL;
  T_REQUIRE(gw_connlimit_create(&cl, 10, 16) == 0); /* 16 slots, 12 usable */
  int ok = 0;
  for (uint32_t i = 0; i < 20; i++) {
    gw_addr_t a = v4(0x0a000000 + i);
    int rc = gw_connlimit_acquire(cl, &a);
    ok += rc == 0;
    if (rc != 0) T_CHECK_EQ_INT(rc, GW_E_FULL);
  }
  T_CHECK_EQ_INT(ok, 12);
  /* A known address still gets more connections when the table is full. */
  gw_addr_t first = v4(0x0a000000);
  T_CHECK_EQ_INT(gw_connlimit_acquire(cl, &first), 0);
  gw_connlimit_release(cl, &first);
  gw_connlimit_destroy(cl);
}

static void test_churn(void) {
  gw_connlimit_t *cl = NULL;
  T_REQUIRE(gw_connlimit_create(&cl, 1000, 256) == 0);
  /* 150 addresses with i % 5 + 1 connections each, released in an order
   * unrelated to insertion; counts checked all along. */
  for (uint32_t i = 0; i < 150; i++) {
    gw_addr_t a = v4(0xc0a80000 + i * 7919u);
    for (uint32_t k = 0; k <= i % 5; k++) T_REQUIRE(gw_connlimit_acquire(cl, &a) == 0);
  }
  int wrong = 0;
  for (uint32_t step = 0; step < 150; step++) {
    uint32_t i = (step * 37) % 150;
    gw_addr_t a = v4(0xc0a80000 + i * 7919u);
    for (uint32_t k = 0; k <= i % 5; k++) gw_connlimit_release(cl, &a);
    wrong += gw_connlimit_count(cl, &a) != 0;
    for (uint32_t j = 0; j < 150; j++) {
      bool gone = false;
      for (uint32_t s = 0; s <= step && !gone; s++) gone = (s * 37) % 150 == j;
      gw_addr_t b = v4(0xc0a80000 + j * 7919u);
      wrong += gw_connlimit_count(cl, &b) != (gone ? 0 : j % 5 + 1);
    }
  }
  T_CHECK_EQ_INT(wrong, 0);
  gw_connlimit_destroy(cl);
}

static void test_unlimited_and_format(void) {
  gw_connlimit_t *cl = NULL;
  T_REQUIRE(gw_connlimit_create(&cl, 0, 16) == 0);
  gw_addr_t a = v4(0x7f000001);
  for (int i = 0; i < 100; i++) T_CHECK_EQ_INT(gw_connlimit_acquire(cl, &a), 0);
  gw_connlimit_destroy(cl);
  char text[64];
  gw_addr_format(&a, text, sizeof text);
  T_CHECK_STR(text, "127.0.0.1");
  struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
  T_CHECK_EQ_INT(gw_addr_from_sockaddr(&a, (struct sockaddr *)&s6), 0);
  gw_addr_format(&a, text, sizeof text);
  T_CHECK_STR(text, "::1");
}

int main(void) {
  T_RUN(test_cap_per_address);
  T_RUN(test_table_full);
  T_RUN(test_churn);
  T_RUN(test_unlimited_and_format);
  return t_done();
}
