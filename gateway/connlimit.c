/*
 * connlimit.c - open connections per client address, for all threads.
 *
 * A fixed open-addressing table (linear probing, backward-shift deletion)
 * behind one mutex. It is touched when a connection opens and when it
 * closes, never per request, and a TLS handshake costs a thousand times
 * more than the lock, so one lock is enough.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "gw.h"
#include "internal.h"

typedef struct slot {
  gw_addr_t addr;
  uint32_t count; /* 0: empty */
} slot_t;

struct gw_connlimit {
  pthread_mutex_t mu;
  slot_t *slots;
  uint32_t mask;
  uint32_t used;
  uint32_t used_max; /* keep the table at most 3/4 full: probes stay short */
  uint32_t per_addr_max;
  uint64_t key;
};

int gw_connlimit_create(gw_connlimit_t **out, uint32_t per_addr_max, uint32_t slots) {
  gw_connlimit_t *cl = calloc(1, sizeof *cl);
  if (cl == NULL) return -ENOMEM;
  uint32_t n = gw__pow2(slots < 16 ? 16 : slots);
  cl->slots = calloc(n, sizeof *cl->slots);
  if (cl->slots == NULL) {
    free(cl);
    return -ENOMEM;
  }
  pthread_mutex_init(&cl->mu, NULL);
  cl->mask = n - 1;
  cl->used_max = n / 4 * 3;
  cl->per_addr_max = per_addr_max;
  cl->key = gw__random_u64();
  *out = cl;
  return 0;
}

void gw_connlimit_destroy(gw_connlimit_t *cl) {
  if (cl == NULL) return;
  pthread_mutex_destroy(&cl->mu);
  free(cl->slots);
  free(cl);
}

/* The slot holding `a`, or the empty slot where it would go. The table is
 * never full (used_max), so the probe ends. */
static uint32_t find(const gw_connlimit_t *cl, const gw_addr_t *a) {
  uint32_t i = (uint32_t)gw__hash(a->bytes, sizeof a->bytes, cl->key) & cl->mask;
  while (cl->slots[i].count != 0 &&
         memcmp(cl->slots[i].addr.bytes, a->bytes, sizeof a->bytes) != 0)
    i = (i + 1) & cl->mask;
  return i;
}

int gw_connlimit_acquire(gw_connlimit_t *cl, const gw_addr_t *a) {
  if (cl->per_addr_max == 0) return 0;
  int rc = 0;
  pthread_mutex_lock(&cl->mu);
  uint32_t i = find(cl, a);
  slot_t *s = &cl->slots[i];
  if (s->count >= cl->per_addr_max) {
    rc = GW_E_LIMIT;
  } else if (s->count == 0 && cl->used >= cl->used_max) {
    rc = GW_E_FULL;
  } else {
    if (s->count == 0) {
      s->addr = *a;
      cl->used++;
    }
    s->count++;
  }
  pthread_mutex_unlock(&cl->mu);
  return rc;
}

/* Backward-shift deletion: moves later entries of the probe run into the
 * hole so that lookups never stop early at it. */
static void remove_at(gw_connlimit_t *cl, uint32_t hole) {
  uint32_t i = hole;
  for (uint32_t n = 0; n <= cl->mask; n++) {
    i = (i + 1) & cl->mask;
    if (cl->slots[i].count == 0) break;
    uint32_t home = (uint32_t)gw__hash(cl->slots[i].addr.bytes, 16, cl->key) & cl->mask;
    /* Entry i may fill the hole when its home is not in (hole, i]. */
    bool between = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
    if (!between) {
      cl->slots[hole] = cl->slots[i];
      hole = i;
    }
  }
  cl->slots[hole].count = 0;
}

void gw_connlimit_release(gw_connlimit_t *cl, const gw_addr_t *a) {
  if (cl->per_addr_max == 0) return;
  pthread_mutex_lock(&cl->mu);
  uint32_t i = find(cl, a);
  if (cl->slots[i].count > 0 && --cl->slots[i].count == 0) {
    cl->used--;
    remove_at(cl, i);
  }
  pthread_mutex_unlock(&cl->mu);
}

uint32_t gw_connlimit_count(gw_connlimit_t *cl, const gw_addr_t *a) {
  pthread_mutex_lock(&cl->mu);
  uint32_t n = cl->slots[find(cl, a)].count;
  pthread_mutex_unlock(&cl->mu);
  return n;
}
