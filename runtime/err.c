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
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
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
static _Atomic size_t err_ranges_count = 1;
static pthread_mutex_t err_ranges_lock = PTHREAD_MUTEX_INITIALIZER;

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

/* Registration may come from several loop threads (a module registering
 * itself on first use): serialised by a mutex, idempotent for the same
 * range and function. Readers see a slot only after its count is
 * published with release order. */
void rt_strerror_register(int lo, int hi, const char *(*fn)(int err)) {
  assert(fn != NULL);
  assert(lo <= hi);
  assert(hi <= ERR_MODULE_HI); /* disjoint from -errno */
  pthread_mutex_lock(&err_ranges_lock);
  size_t n = atomic_load_explicit(&err_ranges_count, memory_order_relaxed);
  for (size_t i = 0; i < n; i++) {
    const err_range_t *r = &err_ranges[i];
    if (r->lo == lo && r->hi == hi && r->fn == fn) {
      pthread_mutex_unlock(&err_ranges_lock);
      return;
    }
    bool disjoint = hi < r->lo || lo > r->hi;
    assert(disjoint);
    (void)disjoint; /* unused when assertions are compiled out */
  }
  assert(n < ERR_RANGES_MAX);
  err_ranges[n] = (err_range_t){.lo = lo, .hi = hi, .fn = fn};
  atomic_store_explicit(&err_ranges_count, n + 1, memory_order_release);
  pthread_mutex_unlock(&err_ranges_lock);
}

const char *rt_strerror(int err) {
  if (err == 0) return "success";
  /* INT_MIN cannot be negated; positive values are not errors. */
  if (err > 0 || err == INT_MIN) return "unknown error";
  size_t n = atomic_load_explicit(&err_ranges_count, memory_order_acquire);
  for (size_t i = 0; i < n; i++) {
    const err_range_t *r = &err_ranges[i];
    if (err >= r->lo && err <= r->hi) {
      const char *s = r->fn(err);
      return s != NULL ? s : "unknown error";
    }
  }
  const char *s = strerrordesc_np(-err);
  return s != NULL ? s : "unknown error";
}

/* ------------------------------------------------------------------------ */
/* NEVER / ALWAYS                                                           */
/* ------------------------------------------------------------------------ */

static _Atomic uint64_t never_hits;

/* Sanitizer builds are the test builds: there the impossible aborts. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define NEVER_ABORTS 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define NEVER_ABORTS 1
#endif
#endif

bool rt__never(const char *expr, const char *file, int line) {
  atomic_fetch_add_explicit(&never_hits, 1, memory_order_relaxed);
  RT_ERROR("impossible condition", RT_LF_STR("expr", expr), RT_LF_STR("file", file),
           RT_LF_INT("line", line));
#ifdef NEVER_ABORTS
  rt_log_flush();
  abort();
#endif
  return true;
}

uint64_t rt_never_count(void) { return atomic_load_explicit(&never_hits, memory_order_relaxed); }
