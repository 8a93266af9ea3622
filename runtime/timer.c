/*
 * timer.c - a binary min-heap of timers ordered by deadline.
 *
 * The loop sleeps in io_uring until the earliest deadline, so timers cost no
 * SQEs. Each timer records its heap index, which makes stop O(log n). The
 * heap's capacity is fixed at start-up (config.timers_count).
 */
#include <assert.h>

#include "loop_internal.h"

#define NOT_ARMED UINT32_MAX

void rt_timer_init(rt_timer_t *timer, rt_timer_cb cb, void *ctx) {
  timer->deadline_ns = 0;
  timer->period_ns = 0;
  timer->heap_index = NOT_ARMED;
  timer->cb = cb;
  timer->ctx = ctx;
}

bool rt_timer_armed(const rt_timer_t *timer) {
  return timer->heap_index != NOT_ARMED;
}

static bool earlier(const rt_timer_t *a, const rt_timer_t *b) {
  return a->deadline_ns < b->deadline_ns;
}

static void place(rt_loop_t *loop, uint32_t i, rt_timer_t *t) {
  loop->timers[i] = t;
  t->heap_index = i;
}

static void sift_up(rt_loop_t *loop, uint32_t i) {
  rt_timer_t *t = loop->timers[i];
  while (i > 0) {
    uint32_t parent = (i - 1) / 2;
    if (!earlier(t, loop->timers[parent])) break;
    place(loop, i, loop->timers[parent]);
    i = parent;
  }
  place(loop, i, t);
}

static void sift_down(rt_loop_t *loop, uint32_t i) {
  rt_timer_t *t = loop->timers[i];
  uint32_t n = loop->timers_len;
  for (;;) {
    uint32_t child = 2 * i + 1;
    if (child >= n) break;
    if (child + 1 < n && earlier(loop->timers[child + 1], loop->timers[child]))
      child++;
    if (!earlier(loop->timers[child], t)) break;
    place(loop, i, loop->timers[child]);
    i = child;
  }
  place(loop, i, t);
}

static void heap_remove(rt_loop_t *loop, rt_timer_t *t) {
  uint32_t i = t->heap_index;
  assert(i < loop->timers_len);
  assert(loop->timers[i] == t);
  t->heap_index = NOT_ARMED;
  loop->timers_len--;
  if (i == loop->timers_len) return;
  place(loop, i, loop->timers[loop->timers_len]);
  sift_down(loop, i);
  sift_up(loop, loop->timers[i]->heap_index);
}

static int heap_insert(rt_loop_t *loop, rt_timer_t *t) {
  assert(loop->timers_len <= loop->config.timers_count);
  if (loop->timers_len == loop->config.timers_count) return RT_E_LIMIT;
  place(loop, loop->timers_len++, t);
  if (loop->timers_len > loop->timers_len_max) loop->timers_len_max = loop->timers_len;
  sift_up(loop, t->heap_index);
  return 0;
}

/* Delays are bounded well below the point where ms * 10^6 overflows: a
 * caller passing such a value has mixed up units or signs. */
#define AFTER_MS_MAX (UINT64_C(1) << 40) /* about 35 years */

int rt_timer_start(rt_loop_t *loop, rt_timer_t *timer, uint64_t after_ms,
                   uint64_t period_ms) {
  /* Programmer errors, not limits: a timer never initialised (its fire
   * would call NULL), one armed on another loop, an absurd delay. */
  assert(timer->cb != NULL);
  assert(after_ms < AFTER_MS_MAX);
  assert(period_ms < AFTER_MS_MAX);
  assert(!rt_timer_armed(timer) || timer->heap_index < loop->timers_len);
  assert(!rt_timer_armed(timer) || loop->timers[timer->heap_index] == timer);
  /* Re-arming an armed timer gives back its own slot first, so only a
   * timer that was not armed can find the heap full. */
  if (rt_timer_armed(timer)) heap_remove(loop, timer);
  /* A fresh clock read: the cached loop time can be stale when a timer is
   * armed outside a loop iteration or after a long handler. */
  timer->deadline_ns = rt_now_ns() + after_ms * 1000000u;
  timer->period_ns = period_ms * 1000000u;
  int rc = heap_insert(loop, timer);
  if (rc < 0) {
    /* Counted always, logged at 1, 2, 4, 8, ...: a full heap comes in
     * floods, and each caller reports its own consequence. */
    uint64_t n = ++loop->stats.timers_exhausted;
    if ((n & (n - 1)) == 0) {
      RT_ERROR("timer heap full", RT_LF_INT("capacity", loop->config.timers_count),
               RT_LF_INT("count", n));
    }
  }
  return rc;
}

void rt_timer_stop(rt_loop_t *loop, rt_timer_t *timer) {
  if (rt_timer_armed(timer)) heap_remove(loop, timer);
}

/* Fires what is due. A callback may arm or stop any timer, itself included;
 * the count of timers taken per call is bounded by the heap size at entry, so
 * a timer re-armed for "now" waits for the next iteration. */
void rt__timers_run(rt_loop_t *loop) {
  uint32_t budget = loop->timers_len;
  while (budget-- > 0 && loop->timers_len > 0) {
    rt_timer_t *t = loop->timers[0];
    if (t->deadline_ns > loop->now_ns) break;
    heap_remove(loop, t);
    assert(!rt_timer_armed(t));
    if (t->period_ns > 0) {
      t->deadline_ns += t->period_ns;
      /* After a long stall fire once, not once per missed period. */
      if (t->deadline_ns <= loop->now_ns) t->deadline_ns = loop->now_ns + t->period_ns;
      /* Its own slot, freed just above. */
      if (NEVER(heap_insert(loop, t) < 0)) t->period_ns = 0;
    }
    t->cb(t);
  }
}

uint64_t rt__timers_next_ns(const rt_loop_t *loop) {
  if (loop->timers_len == 0) return UINT64_MAX;
  uint64_t next = loop->timers[0]->deadline_ns;
  uint64_t now = rt_now_ns(); /* handlers may have run long since now_ns */
  return next > now ? next - now : 0;
}
