/*
 * Token buckets: burst, refill, the cap, Retry-After, unlimited rates,
 * clocks going backwards; what a client is told (RateLimit-* headers); the
 * shared table: keys apart, keys together, eviction, and exact counts
 * under four threads.
 */
#include <pthread.h>

#include "gw.h"
#include "t.h"

#define MS 1000000ull
#define S 1000000000ull

static void test_bucket_burst_and_refill(void) {
  gw_rate_t rate = {.per_s = 10, .burst = 5};
  gw_bucket_t b = {0};
  uint32_t retry = 0;
  uint64_t t0 = 5 * S;
  for (int i = 0; i < 5; i++) T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, t0, &retry), 0);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, t0, &retry), GW_E_LIMIT);
  T_CHECK_EQ_INT(retry, 1); /* 100 ms away: rounded up to whole seconds */
  /* 99 ms: not quite one token; 100 ms: exactly one. */
  T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, t0 + 99 * MS, &retry), GW_E_LIMIT);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, t0 + 100 * MS, &retry), 0);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, t0 + 100 * MS, &retry), GW_E_LIMIT);
  /* An hour later: full, but never above the burst. */
  int ok = 0;
  for (int i = 0; i < 20; i++) ok += gw_bucket_take(&b, &rate, t0 + 3600 * S, &retry) == 0;
  T_CHECK_EQ_INT(ok, 5);
}

static void test_bucket_retry_after(void) {
  gw_rate_t slow = {.per_s = 1, .burst = 1};
  gw_bucket_t b = {0};
  uint32_t retry = 0;
  T_CHECK_EQ_INT(gw_bucket_take(&b, &slow, S, &retry), 0);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &slow, S, &retry), GW_E_LIMIT);
  T_CHECK_EQ_INT(retry, 1);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &slow, S + 400 * MS, &retry), GW_E_LIMIT);
  T_CHECK_EQ_INT(retry, 1); /* 600 ms left: still "1" */
  T_CHECK_EQ_INT(gw_bucket_take(&b, &slow, 2 * S, &retry), 0);
  /* Time going backwards refills nothing (and does not crash). */
  T_CHECK_EQ_INT(gw_bucket_take(&b, &slow, S, &retry), GW_E_LIMIT);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &slow, 3 * S, &retry), 0);
}

static void test_bucket_unlimited_and_huge(void) {
  gw_rate_t none = {.per_s = 0, .burst = 0};
  gw_bucket_t b = {0};
  uint32_t retry = 0;
  for (int i = 0; i < 1000; i++) T_CHECK_EQ_INT(gw_bucket_take(&b, &none, 0, &retry), 0);
  /* Large rate and burst, a long idle time: no overflow. */
  gw_rate_t big = {.per_s = 10000000, .burst = 100000000};
  gw_bucket_t c = {0};
  T_CHECK_EQ_INT(gw_bucket_take(&c, &big, S, &retry), 0);
  T_CHECK_EQ_INT(gw_bucket_take(&c, &big, UINT64_MAX / 2, &retry), 0);
  T_CHECK(c.micro_tokens <= (int64_t)100000000 * 1000000);
}

static void test_state(void) {
  gw_rate_t rate = {.per_s = 2, .burst = 4};
  gw_bucket_t b = {0};
  gw_rate_state_t st;
  uint32_t retry = 0;
  gw_bucket_state(&b, &rate, &st); /* unused: full */
  T_CHECK(st.set);
  T_CHECK_EQ_INT(st.limit, 4);
  T_CHECK_EQ_INT(st.remaining, 4);
  T_CHECK_EQ_INT(st.reset_s, 0);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, S, &retry), 0);
  gw_bucket_state(&b, &rate, &st);
  T_CHECK_EQ_INT(st.remaining, 3);
  T_CHECK_EQ_INT(st.reset_s, 1); /* one token at 2/s: 500 ms, rounded up */
  for (int i = 0; i < 3; i++) T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, S, &retry), 0);
  T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, S, &retry), GW_E_LIMIT);
  gw_bucket_state(&b, &rate, &st);
  T_CHECK_EQ_INT(st.remaining, 0);
  T_CHECK_EQ_INT(st.reset_s, 2); /* four tokens at 2/s */
  /* Half a second later one is back. */
  T_CHECK_EQ_INT(gw_bucket_take(&b, &rate, S + 500 * MS, &retry), 0);
  gw_bucket_state(&b, &rate, &st);
  T_CHECK_EQ_INT(st.remaining, 0);
  gw_rate_t none = {0};
  gw_bucket_state(&b, &none, &st);
  T_CHECK(!st.set);

  /* The tighter of two limits is the one told. */
  gw_rate_state_t a = {.set = true, .limit = 100, .remaining = 50, .reset_s = 3};
  gw_rate_state_t c = {.set = true, .limit = 5, .remaining = 2, .reset_s = 1};
  gw_rate_state_t into = {0};
  gw_rate_state_merge(&into, &a);
  gw_rate_state_merge(&into, &c);
  T_CHECK_EQ_INT(into.limit, 5);
  gw_rate_state_merge(&into, &(gw_rate_state_t){0}); /* unlimited: no change */
  T_CHECK_EQ_INT(into.remaining, 2);
  char h[128];
  gw_rate_state_headers(&into, h, sizeof h);
  T_CHECK_STR(h, "RateLimit-Limit: 5\r\nRateLimit-Remaining: 2\r\nRateLimit-Reset: 1\r\n");
  gw_rate_state_headers(&(gw_rate_state_t){0}, h, sizeof h);
  T_CHECK_STR(h, "");

  /* Through the table. */
  gw_ratelimit_t *rl = NULL;
  T_REQUIRE(gw_ratelimit_create(&rl, &rate, 64) == 0);
  T_CHECK_EQ_INT(gw_ratelimit_take(rl, "k", 1, S, &retry, &st), 0);
  T_CHECK(st.set && st.limit == 4 && st.remaining == 3);
  gw_ratelimit_destroy(rl);
}

static void test_table_keys(void) {
  gw_rate_t rate = {.per_s = 1, .burst = 2};
  gw_ratelimit_t *rl = NULL;
  T_REQUIRE(gw_ratelimit_create(&rl, &rate, 1024) == 0);
  uint32_t retry = 0;
  T_CHECK_EQ_INT(gw_ratelimit_take(rl, "alice", 5, S, &retry, NULL), 0);
  T_CHECK_EQ_INT(gw_ratelimit_take(rl, "alice", 5, S, &retry, NULL), 0);
  T_CHECK_EQ_INT(gw_ratelimit_take(rl, "alice", 5, S, &retry, NULL), GW_E_LIMIT);
  T_CHECK_EQ_INT(gw_ratelimit_take(rl, "bob", 3, S, &retry, NULL), 0);
  /* Many other keys pass through a small table; alice stays limited as
   * long as her bucket is kept, and comes back full if it was dropped:
   * never a wrong refusal. */
  char key[32];
  int refused = 0;
  for (int i = 0; i < 5000; i++) {
    snprintf(key, sizeof key, "k%d", i);
    refused += gw_ratelimit_take(rl, key, strlen(key), S, &retry, NULL) != 0;
  }
  T_CHECK_EQ_INT(refused, 0);
  gw_ratelimit_destroy(rl);
}

static gw_ratelimit_t *shared;
static _Atomic int allowed;

static void *hammer(void *arg) {
  uint32_t retry;
  for (int i = 0; i < 20000; i++)
    if (gw_ratelimit_take(shared, "hot", 3, 7 * S, &retry, NULL) == 0) atomic_fetch_add(&allowed, 1);
  return NULL;
}

static void test_table_threads(void) {
  gw_rate_t rate = {.per_s = 100, .burst = 1000};
  T_REQUIRE(gw_ratelimit_create(&shared, &rate, 256) == 0);
  pthread_t th[4];
  for (int i = 0; i < 4; i++) pthread_create(&th[i], NULL, hammer, NULL);
  for (int i = 0; i < 4; i++) pthread_join(th[i], NULL);
  /* The clock stood still: exactly the burst got through. */
  T_CHECK_EQ_INT(atomic_load(&allowed), 1000);
  gw_ratelimit_destroy(shared);
}

int main(void) {
  T_RUN(test_bucket_burst_and_refill);
  T_RUN(test_bucket_retry_after);
  T_RUN(test_bucket_unlimited_and_huge);
  T_RUN(test_state);
  T_RUN(test_table_keys);
  T_RUN(test_table_threads);
  return t_done();
}
