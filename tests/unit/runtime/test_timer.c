/*
 * Timers: order, periodic firing, cancellation, re-arming from a callback,
 * and the heap's fixed capacity.
 */
#include <stdlib.h>

#include "rt.h"
#include "t.h"

static rt_loop_t *loop;

/* ---- many one-shot timers fire in deadline order ------------------------ */

enum { ORDER_N = 500 };
static uint32_t fired_order[ORDER_N];
static uint32_t fired_count;

static void order_cb(rt_timer_t *t) {
  fired_order[fired_count++] = (uint32_t)(uintptr_t)t->ctx;
  if (fired_count == ORDER_N) rt_loop_stop(loop);
}

static void test_order(void) {
  static rt_timer_t timers[ORDER_N];
  /* Arm in a scrambled order: deadline of timer i is (i * 7919 % 50) ms. */
  for (uint32_t k = 0; k < ORDER_N; k++) {
    uint32_t i = (k * 337u) % ORDER_N;
    rt_timer_init(&timers[i], order_cb, (void *)(uintptr_t)i);
    T_CHECK_EQ_INT(rt_timer_start(loop, &timers[i], (i * 7919u) % 50u, 0), 0);
  }
  uint64_t t0 = rt_now_ns();
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  uint64_t elapsed_ms = (rt_now_ns() - t0) / 1000000u;
  T_CHECK_EQ_INT(fired_count, ORDER_N);
  uint32_t inversions = 0;
  for (uint32_t k = 1; k < ORDER_N; k++) {
    uint32_t a = (fired_order[k - 1] * 7919u) % 50u;
    uint32_t b = (fired_order[k] * 7919u) % 50u;
    if (a > b) inversions++;
  }
  T_CHECK_EQ_INT(inversions, 0);
  /* The latest deadline is 49 ms: the loop cannot have finished earlier. */
  T_CHECK(elapsed_ms >= 45);
  for (uint32_t i = 0; i < ORDER_N; i++) T_CHECK(!rt_timer_armed(&timers[i]));
}

/* ---- periodic, cancel, re-arm ------------------------------------------ */

static uint32_t periodic_fires, cancelled_fires, rearm_fires;
static rt_timer_t periodic, cancelled, rearm, stopper;

static void periodic_cb(rt_timer_t *t) {
  if (++periodic_fires == 5) rt_timer_stop(loop, t);
}
static void cancelled_cb(rt_timer_t *t) { cancelled_fires++; }
static void rearm_cb(rt_timer_t *t) {
  if (++rearm_fires < 3) rt_timer_start(loop, t, 2, 0);
}
static void stopper_cb(rt_timer_t *t) { rt_loop_stop(loop); }

static void test_periodic_cancel_rearm(void) {
  rt_timer_init(&periodic, periodic_cb, NULL);
  rt_timer_init(&cancelled, cancelled_cb, NULL);
  rt_timer_init(&rearm, rearm_cb, NULL);
  rt_timer_init(&stopper, stopper_cb, NULL);
  T_CHECK_EQ_INT(rt_timer_start(loop, &periodic, 1, 3), 0);
  T_CHECK_EQ_INT(rt_timer_start(loop, &cancelled, 10, 0), 0);
  T_CHECK_EQ_INT(rt_timer_start(loop, &rearm, 1, 0), 0);
  T_CHECK_EQ_INT(rt_timer_start(loop, &stopper, 60, 0), 0);
  T_CHECK(rt_timer_armed(&cancelled));
  rt_timer_stop(loop, &cancelled);
  rt_timer_stop(loop, &cancelled); /* harmless twice */
  T_CHECK(!rt_timer_armed(&cancelled));
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(periodic_fires, 5);
  T_CHECK_EQ_INT(cancelled_fires, 0);
  T_CHECK_EQ_INT(rearm_fires, 3);
  T_CHECK(!rt_timer_armed(&periodic));
}

/* ---- restarting an armed timer moves it rather than adding it twice ----- */

static uint32_t moved_fires;
static void moved_cb(rt_timer_t *t) { moved_fires++; }

static void test_restart_moves(void) {
  static rt_timer_t moved;
  rt_timer_init(&moved, moved_cb, NULL);
  rt_timer_start(loop, &moved, 1000, 0);
  rt_timer_start(loop, &moved, 1, 0);
  rt_timer_init(&stopper, stopper_cb, NULL);
  rt_timer_start(loop, &stopper, 20, 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(moved_fires, 1);
  T_CHECK(!rt_timer_armed(&moved));
}

/* ---- capacity ---------------------------------------------------------- */

static void noop_cb(rt_timer_t *t) {}

static void test_capacity(void) {
  rt_loop_config_t cfg = {.timers_count = 8, .bufs_count = 16, .msgs_count = 16,
                          .sq_entries = 16};
  rt_loop_t *small = NULL;
  T_REQUIRE(rt_loop_create(&small, &cfg) == 0);
  rt_timer_t ts[9];
  for (int i = 0; i < 8; i++) {
    rt_timer_init(&ts[i], noop_cb, NULL);
    T_CHECK_EQ_INT(rt_timer_start(small, &ts[i], 100, 0), 0);
  }
  rt_timer_init(&ts[8], noop_cb, NULL);
  rt_loop_stats_t st;
  rt_loop_stats(small, &st);
  T_CHECK_EQ_INT(st.timers_exhausted, 0);
  T_CHECK_EQ_INT(rt_timer_start(small, &ts[8], 100, 0), RT_E_LIMIT);
  T_CHECK(!rt_timer_armed(&ts[8]));
  rt_loop_stats(small, &st);
  T_CHECK_EQ_INT(st.timers_exhausted, 1); /* reported, not only refused */
  /* Full, yet an armed timer can always be moved: it gives its slot back. */
  T_CHECK_EQ_INT(rt_timer_start(small, &ts[0], 50, 0), 0);
  T_CHECK(rt_timer_armed(&ts[0]));
  rt_timer_stop(small, &ts[3]);
  T_CHECK_EQ_INT(rt_timer_start(small, &ts[8], 100, 0), 0);
  for (int i = 0; i < 9; i++) rt_timer_stop(small, &ts[i]);
  rt_loop_destroy(small);
}

/* ---- a one-shot's callback always finds one slot ------------------------ */

static rt_loop_t *full;
static rt_timer_t full_ts[4], full_other;
static int full_rc_own = 1, full_rc_next = 1;

static void full_fire(rt_timer_t *t) {
  /* The heap was full when this timer fired: its own slot is the only one. */
  full_rc_own = rt_timer_start(full, &full_other, 1000, 0);
  full_rc_next = rt_timer_start(full, t, 1000, 0);
  rt_loop_stop(full);
}

static void test_full_callback_slot(void) {
  rt_loop_config_t cfg = {.timers_count = 4, .bufs_count = 16, .msgs_count = 16,
                          .sq_entries = 16};
  T_REQUIRE(rt_loop_create(&full, &cfg) == 0);
  rt_timer_init(&full_ts[0], full_fire, NULL);
  T_CHECK_EQ_INT(rt_timer_start(full, &full_ts[0], 1, 0), 0);
  for (int i = 1; i < 4; i++) {
    rt_timer_init(&full_ts[i], noop_cb, NULL);
    T_CHECK_EQ_INT(rt_timer_start(full, &full_ts[i], 60000, 0), 0);
  }
  rt_timer_init(&full_other, noop_cb, NULL);
  T_CHECK_EQ_INT(rt_loop_run(full), 0);
  T_CHECK_EQ_INT(full_rc_own, 0);             /* the first start takes the slot */
  T_CHECK_EQ_INT(full_rc_next, RT_E_LIMIT);   /* and there is no second one */
  T_CHECK(!rt_timer_armed(&full_ts[0]));
  for (int i = 0; i < 4; i++) rt_timer_stop(full, &full_ts[i]);
  rt_timer_stop(full, &full_other);
  rt_loop_destroy(full);
}

int main(void) {
  rt_log_init("test_timer", RT_LOG_ERROR, NULL, 0);
  T_RUN(test_capacity);
  T_RUN(test_full_callback_slot);
  if (rt_loop_create(&loop, NULL) != 0) return 1;
  T_RUN(test_order);
  T_RUN(test_periodic_cancel_rearm);
  T_RUN(test_restart_moves);
  rt_loop_destroy(loop);
  return t_done();
}
