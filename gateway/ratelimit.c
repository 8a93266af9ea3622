/*
 * ratelimit.c - token buckets, alone and in a table keyed by address or
 * subject that every loop thread shares.
 *
 * A client's connections land on any thread (SO_REUSEPORT), so per-thread
 * buckets would multiply its rate by the thread count: the table is
 * shared, split into stripes with a lock each so that threads rarely meet
 * on one lock. Within a stripe, entries live in a fixed array probed over a
 * short window; a key that finds no room replaces the entry idle longest.
 * Entries are identified by a keyed 64-bit hash of the key: two keys would
 * share a bucket only on a 64-bit collision.
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#include "gw.h"
#include "internal.h"

#define MICRO 1000000
#define STRIPES 64
#define WINDOW 8

_Static_assert((STRIPES & (STRIPES - 1)) == 0, "stripes: a power of two");

int gw_bucket_take(gw_bucket_t *b, const gw_rate_t *rate, uint64_t now_ns,
                   uint32_t *retry_after_s) {
  if (rate->per_s == 0) return 0;
  uint32_t burst = rate->burst > 0 ? rate->burst : 1;
  int64_t cap = (int64_t)burst * MICRO;
  if (!b->started) {
    b->started = true;
    b->micro_tokens = cap;
    b->last_ns = now_ns;
  } else if (now_ns > b->last_ns) {
    /* per_s tokens a second is per_s / 1000 micro-tokens a nanosecond.
     * Past the time a refill from empty takes, the bucket is full; below
     * it dt * per_s < burst * 1e9 + per_s, which fits in 64 bits. */
    uint64_t dt = now_ns - b->last_ns;
    uint64_t fill_ns = (uint64_t)burst * 1000000000u / rate->per_s + 1;
    int64_t t = dt >= fill_ns ? cap : b->micro_tokens + (int64_t)(dt * rate->per_s / 1000u);
    b->micro_tokens = t > cap ? cap : t;
    b->last_ns = now_ns;
  }
  if (b->micro_tokens >= MICRO) {
    b->micro_tokens -= MICRO;
    return 0;
  }
  uint64_t deficit = (uint64_t)(MICRO - b->micro_tokens);
  uint64_t wait_ns = deficit * 1000u / rate->per_s;
  uint64_t s = (wait_ns + 999999999u) / 1000000000u;
  *retry_after_s = s < 1 ? 1 : (uint32_t)s;
  return GW_E_LIMIT;
}

void gw_bucket_state(const gw_bucket_t *b, const gw_rate_t *rate, gw_rate_state_t *out) {
  *out = (gw_rate_state_t){0};
  if (rate->per_s == 0) return;
  uint32_t burst = rate->burst > 0 ? rate->burst : 1;
  int64_t cap = (int64_t)burst * MICRO;
  int64_t have = b->started ? b->micro_tokens : cap;
  if (have < 0) have = 0;
  uint64_t missing = (uint64_t)(cap - (have > cap ? cap : have));
  uint64_t full_ns = missing * 1000u / rate->per_s;
  out->set = true;
  out->limit = burst;
  out->remaining = (uint32_t)(have / MICRO);
  out->reset_s = (uint32_t)((full_ns + 999999999u) / 1000000000u);
}

void gw_rate_state_merge(gw_rate_state_t *into, const gw_rate_state_t *other) {
  if (!other->set) return;
  if (!into->set || other->remaining < into->remaining ||
      (other->remaining == into->remaining && other->reset_s > into->reset_s))
    *into = *other;
}

void gw_rate_state_headers(const gw_rate_state_t *s, char *out, size_t out_bytes) {
  if (out_bytes == 0) return;
  out[0] = '\0';
  if (!s->set) return;
  snprintf(out, out_bytes,
           "RateLimit-Limit: %" PRIu32 "\r\nRateLimit-Remaining: %" PRIu32
           "\r\nRateLimit-Reset: %" PRIu32 "\r\n",
           s->limit, s->remaining, s->reset_s);
}

typedef struct entry {
  uint64_t hash; /* 0: empty */
  gw_bucket_t bucket;
} entry_t;

/* One cache line per stripe, so that two threads on two stripes do not
 * bounce a line between them. */
typedef struct stripe {
  _Alignas(64) pthread_mutex_t mu;
  entry_t *entries;
} stripe_t;

struct gw_ratelimit {
  gw_rate_t rate;
  uint32_t mask;  /* entries per stripe - 1 */
  uint64_t key;
  stripe_t stripes[STRIPES];
};

int gw_ratelimit_create(gw_ratelimit_t **out, const gw_rate_t *rate, uint32_t slots) {
  size_t bytes = (sizeof(gw_ratelimit_t) + 63) / 64 * 64;
  gw_ratelimit_t *rl = aligned_alloc(64, bytes);
  if (rl == NULL) return -ENOMEM;
  memset(rl, 0, bytes);
  rl->rate = *rate;
  uint32_t per = gw__pow2(slots / STRIPES < WINDOW ? WINDOW : slots / STRIPES);
  rl->mask = per - 1;
  rl->key = gw__random_u64();
  for (uint32_t i = 0; i < STRIPES; i++) {
    pthread_mutex_init(&rl->stripes[i].mu, NULL);
    rl->stripes[i].entries = calloc(per, sizeof(entry_t));
    if (rl->stripes[i].entries == NULL) {
      gw_ratelimit_destroy(rl);
      return -ENOMEM;
    }
  }
  *out = rl;
  return 0;
}

void gw_ratelimit_destroy(gw_ratelimit_t *rl) {
  if (rl == NULL) return;
  for (uint32_t i = 0; i < STRIPES; i++) {
    pthread_mutex_destroy(&rl->stripes[i].mu);
    free(rl->stripes[i].entries);
  }
  free(rl);
}

/* The entry for hash h in the stripe: its own, the first empty one of the
 * window, or the one idle longest (reset, so it starts full). */
static entry_t *stripe_entry(gw_ratelimit_t *rl, stripe_t *s, uint64_t h) {
  uint32_t start = (uint32_t)(h >> 6) & rl->mask;
  entry_t *victim = NULL;
  for (uint32_t k = 0; k < WINDOW; k++) {
    entry_t *e = &s->entries[(start + k) & rl->mask];
    if (e->hash == h) return e;
    if (e->hash == 0) {
      victim = e;
      break;
    }
    if (victim == NULL || e->bucket.last_ns < victim->bucket.last_ns) victim = e;
  }
  victim->hash = h;
  victim->bucket = (gw_bucket_t){0};
  return victim;
}

int gw_ratelimit_take(gw_ratelimit_t *rl, const void *key, size_t key_bytes,
                      uint64_t now_ns, uint32_t *retry_after_s, gw_rate_state_t *state) {
  if (state != NULL) *state = (gw_rate_state_t){0};
  if (rl == NULL || rl->rate.per_s == 0) return 0;
  uint64_t h = gw__hash(key, key_bytes, rl->key);
  if (h == 0) h = 1;
  stripe_t *s = &rl->stripes[h & (STRIPES - 1)];
  pthread_mutex_lock(&s->mu);
  gw_bucket_t *b = &stripe_entry(rl, s, h)->bucket;
  int rc = gw_bucket_take(b, &rl->rate, now_ns, retry_after_s);
  if (state != NULL) gw_bucket_state(b, &rl->rate, state);
  pthread_mutex_unlock(&s->mu);
  return rc;
}
