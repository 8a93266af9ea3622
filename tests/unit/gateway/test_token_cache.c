/*
 * The verified-token cache: a hit returns the identity, an entry leaves at
 * its token's exp, the size never passes the capacity, and a full window
 * gives up the entry closest to expiry.
 */
#include "gw.h"
#include "t.h"

static gw_identity_t ident(const char *sub, int64_t exp) {
  gw_identity_t id = {.roles = GW_ROLE_CUSTOMER, .exp = exp};
  snprintf(id.sub, sizeof id.sub, "%s", sub);
  return id;
}

static void test_hit_and_expiry(void) {
  gw_token_cache_t *tc = NULL;
  T_REQUIRE(gw_token_cache_create(&tc, 64) == 0);
  const char *token = "header.payload.signature";
  uint8_t d[32];
  gw_token_digest(token, strlen(token), d);
  gw_identity_t out;
  T_CHECK(!gw_token_cache_get(tc, d, 1000, &out));
  gw_identity_t id = ident("alice", 1100);
  gw_token_cache_put(tc, d, &id, 1000);
  T_CHECK(gw_token_cache_get(tc, d, 1099, &out));
  T_CHECK_STR(out.sub, "alice");
  T_CHECK_EQ_INT(out.exp, 1100);
  /* At exp the entry is gone, and stays gone. */
  T_CHECK(!gw_token_cache_get(tc, d, 1100, &out));
  T_CHECK(!gw_token_cache_get(tc, d, 1050, &out));
  gw_token_cache_stats_t st;
  gw_token_cache_stats(tc, &st);
  T_CHECK_EQ_INT(st.hits, 1);
  T_CHECK_EQ_INT(st.misses, 3);
  T_CHECK_EQ_INT(st.size, 0);
  /* A token already expired is not stored at all. */
  id = ident("bob", 900);
  gw_token_cache_put(tc, d, &id, 1000);
  gw_token_cache_stats(tc, &st);
  T_CHECK_EQ_INT(st.size, 0);
  /* A different token text is a different key. */
  id = ident("carol", 2000);
  gw_token_cache_put(tc, d, &id, 1000);
  uint8_t d2[32];
  gw_token_digest("header.payload.signaturf", 24, d2);
  T_CHECK(!gw_token_cache_get(tc, d2, 1000, &out));
  gw_token_cache_destroy(tc);
}

static void test_bounded(void) {
  gw_token_cache_t *tc = NULL;
  T_REQUIRE(gw_token_cache_create(&tc, 100) == 0);
  gw_token_cache_stats_t st;
  gw_token_cache_stats(tc, &st);
  T_CHECK_EQ_INT(st.capacity, 128);
  char tok[32];
  for (int i = 0; i < 10000; i++) {
    snprintf(tok, sizeof tok, "token-%d", i);
    uint8_t d[32];
    gw_token_digest(tok, strlen(tok), d);
    gw_identity_t id = ident("x", 5000 + i);
    gw_token_cache_put(tc, d, &id, 1000);
  }
  gw_token_cache_stats(tc, &st);
  T_CHECK(st.size <= st.capacity);
  T_CHECK(st.size > st.capacity / 2);
  T_CHECK_EQ_INT(st.inserts, 10000);
  T_CHECK(st.evictions >= 10000 - st.capacity);
  /* The newest token is there: it was inserted last, and lives longest. */
  uint8_t d[32];
  gw_token_digest("token-9999", 10, d);
  gw_identity_t out;
  T_CHECK(gw_token_cache_get(tc, d, 1000, &out));
  gw_token_cache_destroy(tc);
}

/* Nine digests with one home slot: the ninth replaces the soonest-expiring
 * of the eight already in its window. */
static void test_evicts_closest_to_expiry(void) {
  gw_token_cache_t *tc = NULL;
  T_REQUIRE(gw_token_cache_create(&tc, 16) == 0);
  uint8_t d[9][32];
  for (int i = 0; i < 9; i++) {
    memset(d[i], 0, 32);
    d[i][31] = (uint8_t)(i + 1);
    int64_t exp = i == 3 ? 1200 : 1500 + i; /* entry 3 expires first */
    gw_identity_t id = ident("x", exp);
    gw_token_cache_put(tc, d[i], &id, 1000);
  }
  gw_identity_t out;
  T_CHECK(!gw_token_cache_get(tc, d[3], 1000, &out));
  for (int i = 0; i < 9; i++)
    if (i != 3) T_CHECK(gw_token_cache_get(tc, d[i], 1000, &out));
  gw_token_cache_stats_t st;
  gw_token_cache_stats(tc, &st);
  T_CHECK_EQ_INT(st.evictions, 1);
  T_CHECK_EQ_INT(st.size, 8);
  gw_token_cache_destroy(tc);
}

int main(void) {
  T_RUN(test_hit_and_expiry);
  T_RUN(test_bounded);
  T_RUN(test_evicts_closest_to_expiry);
  return t_done();
}
