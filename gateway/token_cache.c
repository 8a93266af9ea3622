/*
 * token_cache.c - verified tokens, so that a signature is checked once per
 * token and thread rather than once per request.
 *
 * Keyed by the SHA-256 of the token text: the table never holds a token,
 * and a lookup needs no comparison of secrets. Open addressing over a
 * fixed array, probing a short window; an entry lives until its token's
 * exp. When the window is full the entry closest to expiry is replaced,
 * which is the one that would have left soonest anyway.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <bearssl.h>

#include "gw.h"
#include "internal.h"

#define WINDOW 8

typedef struct entry {
  uint8_t digest[32];
  gw_identity_t id; /* id.exp == 0: empty */
} entry_t;

struct gw_token_cache {
  entry_t *entries;
  uint32_t mask;
  gw_token_cache_stats_t stats;
};

int gw_token_cache_create(gw_token_cache_t **out, uint32_t capacity) {
  gw_token_cache_t *tc = calloc(1, sizeof *tc);
  if (tc == NULL) return -ENOMEM;
  uint32_t n = gw__pow2(capacity < 16 ? 16 : capacity);
  tc->entries = calloc(n, sizeof *tc->entries);
  if (tc->entries == NULL) {
    free(tc);
    return -ENOMEM;
  }
  tc->mask = n - 1;
  tc->stats.capacity = n;
  *out = tc;
  return 0;
}

void gw_token_cache_destroy(gw_token_cache_t *tc) {
  if (tc == NULL) return;
  free(tc->entries);
  free(tc);
}

void gw_token_cache_clear(gw_token_cache_t *tc) {
  memset(tc->entries, 0, (size_t)(tc->mask + 1) * sizeof *tc->entries);
  tc->stats.size = 0;
}

void gw_token_digest(const char *token, size_t token_len, uint8_t out[32]) {
  br_sha256_context h;
  br_sha256_init(&h);
  br_sha256_update(&h, token, token_len);
  br_sha256_out(&h, out);
}

/* The digest is uniformly random: its first bytes are a fine index. */
static uint32_t home(const gw_token_cache_t *tc, const uint8_t d[32]) {
  uint32_t v;
  memcpy(&v, d, sizeof v);
  return v & tc->mask;
}

static void remove_entry(gw_token_cache_t *tc, entry_t *e) {
  assert(e->id.exp != 0);
  assert(tc->stats.size > 0);
  *e = (entry_t){0};
  tc->stats.size--;
}

/* Entries are never moved, so a lookup scans the whole window: an empty
 * slot does not end a probe run here. */
bool gw_token_cache_get(gw_token_cache_t *tc, const uint8_t digest[32], int64_t now_s,
                        gw_identity_t *out) {
  uint32_t start = home(tc, digest);
  for (uint32_t k = 0; k < WINDOW; k++) {
    entry_t *e = &tc->entries[(start + k) & tc->mask];
    if (e->id.exp == 0 || memcmp(e->digest, digest, 32) != 0) continue;
    if (now_s >= e->id.exp) {
      remove_entry(tc, e);
      break;
    }
    /* Only verified identities go in, subject terminated in its field. */
    assert(memchr(e->id.sub, '\0', sizeof e->id.sub) != NULL);
    assert(e->id.sub[0] != '\0');
    *out = e->id;
    tc->stats.hits++;
    return true;
  }
  tc->stats.misses++;
  return false;
}

void gw_token_cache_put(gw_token_cache_t *tc, const uint8_t digest[32], const gw_identity_t *id,
                        int64_t now_s) {
  if (id->exp <= now_s) return;
  assert(id->sub[0] != '\0');
  assert(memchr(id->sub, '\0', sizeof id->sub) != NULL);
  uint32_t start = home(tc, digest);
  entry_t *victim = NULL;
  for (uint32_t k = 0; k < WINDOW; k++) {
    entry_t *e = &tc->entries[(start + k) & tc->mask];
    if (e->id.exp != 0 && now_s >= e->id.exp) remove_entry(tc, e); /* expired: free room */
    if (e->id.exp != 0 && memcmp(e->digest, digest, 32) == 0) return;  /* already there */
    if (e->id.exp == 0) {
      if (victim == NULL || victim->id.exp != 0) victim = e;
    } else if (victim == NULL || (victim->id.exp != 0 && e->id.exp < victim->id.exp)) {
      victim = e;
    }
  }
  assert(victim != NULL); /* a window of at least one slot */
  if (victim->id.exp != 0) {
    tc->stats.evictions++;
    tc->stats.size--;
  }
  memcpy(victim->digest, digest, 32);
  victim->id = *id;
  tc->stats.size++;
  assert(tc->stats.size <= (uint64_t)tc->mask + 1);
  tc->stats.inserts++;
}

void gw_token_cache_stats(const gw_token_cache_t *tc, gw_token_cache_stats_t *out) {
  *out = tc->stats;
}
