/*
 * err.c - one message for any negative return of the project.
 *
 * Codes are -errno or a module code from a range the module owns (runtime
 * -1000..-1099, wire -2000.., ...). Each range has its own strerror function,
 * registered at start-up into a small fixed table; the runtime's range is in
 * the table from the start so overlap checks cover it too. Everything else
 * is looked up as an errno with strerrordesc_np(), which returns a pointer
 * into glibc's constant table: no shared buffer, so it is thread-safe, unlike
 * strerror().
 */
#include <assert.h>
#include <limits.h>
#include <stddef.h>
#include <string.h>

#include "rt.h"

/* Ranges registered at once: the runtime plus a handful of modules. */
#define ERR_RANGES_MAX 16

/* Module codes start here; everything above is left to -errno. */
#define ERR_MODULE_HI (-1000)

typedef struct err_range {
  int lo;
  int hi;
  const char *(*fn)(int err);
} err_range_t;

static const char *rt_err_own(int err);

/* Written only by rt_strerror_register() before threads start, read-only
 * afterwards: no lock is needed. */
static err_range_t err_ranges[ERR_RANGES_MAX] = {
    {.lo = -1099, .hi = -1000, .fn = rt_err_own},
};
static size_t err_ranges_count = 1;

static const char *rt_err_own(int err) {
  switch (err) {
  case RT_E_POOL_EMPTY: return "pool exhausted";
  case RT_E_CLOSED: return "closed";
  case RT_E_TIMEOUT: return "timed out";
  case RT_E_LIMIT: return "limit reached";
  case RT_E_PROTO: return "protocol error";
  case RT_E_CONFIG: return "bad configuration";
  case RT_E_STOPPED: return "actor stopped";
  default: return "unknown runtime error";
  }
}

void rt_strerror_register(int lo, int hi, const char *(*fn)(int err)) {
  assert(fn != NULL);
  assert(lo <= hi);
  assert(hi <= ERR_MODULE_HI); /* disjoint from -errno */
  assert(err_ranges_count < ERR_RANGES_MAX);
  for (size_t i = 0; i < err_ranges_count; i++) {
    const err_range_t *r = &err_ranges[i];
    bool disjoint = hi < r->lo || lo > r->hi;
    assert(disjoint);
    (void)disjoint; /* unused when assertions are compiled out */
  }
  err_ranges[err_ranges_count++] = (err_range_t){.lo = lo, .hi = hi, .fn = fn};
}

const char *rt_strerror(int err) {
  if (err == 0) return "success";
  /* INT_MIN cannot be negated; positive values are not errors. */
  if (err > 0 || err == INT_MIN) return "unknown error";
  for (size_t i = 0; i < err_ranges_count; i++) {
    const err_range_t *r = &err_ranges[i];
    if (err >= r->lo && err <= r->hi) {
      const char *s = r->fn(err);
      return s != NULL ? s : "unknown error";
    }
  }
  const char *s = strerrordesc_np(-err);
  return s != NULL ? s : "unknown error";
}
