/*
 * pool.c - fixed pools of equally sized objects.
 *
 * One allocation at init, aligned to a cache line; object sizes are rounded
 * up to 16 bytes so every object is 16-aligned (enough for any scalar and
 * for rt_msg_t's payload). A slot is first written when it is first handed
 * out: objects are taken from the free list, else from the slots never
 * used (`fresh` onwards, in address order). So a pool sized for the worst
 * case costs address space up front and memory only as far as it is ever
 * used: its pages are not touched at init. Objects given back form an
 * intrusive singly linked list through their first bytes:
 *
 *   offset 0  next free object (or NULL)
 *   offset 8  free_tag(pool): says "this object is probably free"
 *
 * The tag makes double puts cheap to catch: a put that finds the tag walks
 * the free list to confirm (a live object could hold the same bytes by
 * chance, so the tag alone proves nothing); a put without the tag costs
 * nothing extra. rt_pool_get() zeroes the whole object, tag included.
 *
 * Under AddressSanitizer free objects are also poisoned, so a use after
 * rt_pool_put() is reported like a use after free().
 *
 * rt_pool_deinit() is the leak check: after a clean drain every object is
 * back, and one that is not aborts (TigerBeetle's shutdown check). Only a
 * drain cut short may leave objects out; they are logged and counted.
 */
#include <assert.h>
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"

#define POOL_ALIGN 64
#define POOL_OBJ_ALIGN 16

/* The free-list header must fit in the smallest object. */
_Static_assert(sizeof(void *) + sizeof(uintptr_t) <= POOL_OBJ_ALIGN,
               "free-list header larger than the object alignment");
_Static_assert(POOL_ALIGN % POOL_OBJ_ALIGN == 0, "alignments must nest");

#if defined(__SANITIZE_ADDRESS__)
#define POOL_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define POOL_ASAN 1
#endif
#endif

#ifdef POOL_ASAN
#include <sanitizer/asan_interface.h>
static void obj_poison(const rt_pool_t *p, void *obj) {
  ASAN_POISON_MEMORY_REGION(obj, p->obj_bytes);
}
static void obj_unpoison(const rt_pool_t *p, void *obj) {
  ASAN_UNPOISON_MEMORY_REGION(obj, p->obj_bytes);
}
#else
static void obj_poison(const rt_pool_t *p, void *obj) {
  (void)p;
  (void)obj;
}
static void obj_unpoison(const rt_pool_t *p, void *obj) {
  (void)p;
  (void)obj;
}
#endif

typedef struct free_hdr {
  void *next;
  uintptr_t tag;
} free_hdr_t;

/* Differs per pool so an object moved between pools by mistake does not
 * look free in the wrong one. */
static uintptr_t free_tag(const rt_pool_t *p) {
  return (uintptr_t)p ^ (uintptr_t)0x5afef2eeb10c0de5ull;
}

static size_t round_up(size_t n, size_t to) { return (n + to - 1) / to * to; }

int rt_pool_init(rt_pool_t *pool, const char *name, size_t obj_bytes,
                 uint32_t capacity) {
  assert(pool != NULL);
  *pool = (rt_pool_t){.name = name != NULL ? name : "?"};
  if (obj_bytes == 0 || capacity == 0) return -EINVAL;
  if (obj_bytes > SIZE_MAX - POOL_OBJ_ALIGN) return -EINVAL;
  size_t slot = round_up(obj_bytes, POOL_OBJ_ALIGN);
  if (slot > (SIZE_MAX - POOL_ALIGN) / capacity) return -ENOMEM;
  /* aligned_alloc wants a size that is a multiple of the alignment. */
  unsigned char *mem = aligned_alloc(POOL_ALIGN,
                                     round_up(slot * capacity, POOL_ALIGN));
  if (mem == NULL) return -ENOMEM;

  pool->mem = mem;
  pool->obj_bytes = slot;
  pool->capacity = capacity;
  pool->free_head = NULL;
  pool->fresh = 0;
#ifdef POOL_ASAN
  /* Every slot is free: poisoned (shadow memory only, not the pages). */
  ASAN_POISON_MEMORY_REGION(mem, slot * (size_t)capacity);
#endif
  return 0;
}

/* A free object: the last one given back, else a slot never used. */
static free_hdr_t *take(rt_pool_t *pool) {
  free_hdr_t *h = pool->free_head;
  if (h != NULL) {
    obj_unpoison(pool, h);
    pool->free_head = h->next;
    return h;
  }
  if (pool->fresh == pool->capacity) return NULL;
  h = (free_hdr_t *)(pool->mem + (size_t)pool->fresh++ * pool->obj_bytes);
  obj_unpoison(pool, h);
  return h;
}

void *rt_pool_take(rt_pool_t *pool) {
  free_hdr_t *h = take(pool);
  if (h == NULL) {
    pool->exhausted_count++;
    if (!pool->exhausted_logged) {
      pool->exhausted_logged = true;
      RT_WARN("pool exhausted", RT_LF_STR("pool", pool->name),
              RT_LF_INT("capacity", pool->capacity));
    }
    return NULL;
  }
  /* The free-list header is the only thing known of a slot's bytes: no
   * longer true once handed out, and a later put must not think so. */
  memset(h, 0, sizeof *h);
  pool->in_use++;
  if (pool->in_use > pool->in_use_max) pool->in_use_max = pool->in_use;
  return h;
}

void *rt_pool_get(rt_pool_t *pool) {
  void *obj = rt_pool_take(pool);
  if (obj != NULL) memset(obj, 0, pool->obj_bytes);
  return obj;
}

/* True when obj is on the free list. O(free objects): only called when the
 * cheap tag check says it might be. */
static bool pool_is_free(rt_pool_t *pool, const void *obj) {
  free_hdr_t *h = pool->free_head;
  while (h != NULL) {
    obj_unpoison(pool, h);
    free_hdr_t *next = h->next;
    obj_poison(pool, h);
    if (h == obj) return true;
    h = next;
  }
  return false;
}

#ifdef POOL_ASAN
/* A poisoned slot is a free one: only this file poisons pool memory. */
static bool obj_poisoned(const void *obj) {
  return __asan_address_is_poisoned(obj) != 0;
}
#else
static bool obj_poisoned(const void *obj) {
  (void)obj;
  return false;
}
#endif

void rt_pool_put(rt_pool_t *pool, void *obj) {
  bool owned = rt_pool_owns(pool, obj);
  assert(owned);
  assert(pool->in_use > 0);
  /* A slot never handed out cannot come back. */
  bool handed_out = (size_t)((unsigned char *)obj - pool->mem) / pool->obj_bytes < pool->fresh;
  assert(handed_out);
  (void)handed_out;
  bool double_put = obj_poisoned(obj);
  assert(!double_put);
  free_hdr_t *h = obj;
  if (h->tag == free_tag(pool)) {
    double_put = pool_is_free(pool, obj);
    assert(!double_put);
  }
  (void)owned;
  (void)double_put;

  h->next = pool->free_head;
  h->tag = free_tag(pool);
  obj_poison(pool, h);
  pool->free_head = h;
  pool->in_use--;
  pool->exhausted_logged = false; /* the next exhaustion is a new burst */
}

bool rt_pool_owns(const rt_pool_t *pool, const void *obj) {
  if (pool->mem == NULL || obj == NULL) return false;
  /* Compared as integers: relational operators on pointers into different
   * objects are undefined. */
  uintptr_t p = (uintptr_t)obj;
  uintptr_t lo = (uintptr_t)pool->mem;
  uintptr_t bytes = (uintptr_t)pool->obj_bytes * pool->capacity;
  if (p < lo || p - lo >= bytes) return false;
  return (p - lo) % pool->obj_bytes == 0;
}

void rt_pool_deinit(rt_pool_t *pool) {
  if (pool->in_use > 0) {
    /* Every pooled object came back: a leak here is a bug in its owner.
     * Only a drain cut short may leave objects out; they are counted. */
    bool cut_short = rt_drain_overran();
    assert(cut_short);
    (void)cut_short;
    rt_leftovers_add(pool->name, pool->in_use);
    pool->in_use = 0;
  }
  if (pool->mem != NULL) {
#ifdef POOL_ASAN
    ASAN_UNPOISON_MEMORY_REGION(pool->mem,
                                pool->obj_bytes * (size_t)pool->capacity);
#endif
    free(pool->mem);
  }
  pool->mem = NULL;
  pool->free_head = NULL;
  pool->capacity = 0;
  pool->fresh = 0;
}
