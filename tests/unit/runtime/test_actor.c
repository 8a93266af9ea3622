/*
 * Actors: the per-turn budget keeps one busy actor from starving another,
 * a failing actor is stopped and restarted by its supervisor with back-off,
 * a clean stop is not restarted, and messages to a stopped actor are freed.
 */
#include <errno.h>
#include <string.h>

#include "rt.h"
#include "t.h"

static rt_loop_t *loop;

/* ---- fairness ---------------------------------------------------------- */

typedef struct counter {
  rt_actor_t actor;
  uint32_t handled;
} counter_t;

static counter_t busy, quiet;
static uint32_t busy_handled_when_quiet_ran;

static int busy_fn(rt_actor_t *self, rt_msg_t *msg) {
  busy.handled++;
  if (busy.handled == 1000) rt_loop_stop(loop);
  return 0;
}

static int quiet_fn(rt_actor_t *self, rt_msg_t *msg) {
  quiet.handled++;
  busy_handled_when_quiet_ran = busy.handled;
  return 0;
}

static void test_budget_fairness(void) {
  rt_actor_init(&busy.actor, loop, "busy", busy_fn, &busy);
  rt_actor_init(&quiet.actor, loop, "quiet", quiet_fn, &quiet);
  for (int i = 0; i < 1000; i++) T_REQUIRE(rt_actor_tell(&busy.actor, RT_MSG_USER, NULL, 0) == 0);
  T_REQUIRE(rt_actor_tell(&quiet.actor, RT_MSG_USER, NULL, 0) == 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(busy.handled, 1000);
  T_CHECK_EQ_INT(quiet.handled, 1);
  /* Default budget 64: quiet ran after busy's first turn, not after 1000. */
  T_CHECK(busy_handled_when_quiet_ran <= 64);
}

/* ---- supervision ------------------------------------------------------- */

typedef struct flaky {
  rt_actor_t actor;
  uint32_t starts;
  uint32_t stops;
  int last_stop_reason;
} flaky_t;

static flaky_t flaky;
static rt_sup_t sup;
static uint64_t start_times_ns[8];

static int flaky_fn(rt_actor_t *self, rt_msg_t *msg) {
  if (msg->type == RT_MSG_USER + 1) return -EIO; /* crash on request */
  return 0;
}

static void flaky_stopped(rt_actor_t *self, int reason) {
  flaky.stops++;
  flaky.last_stop_reason = reason;
}

static int flaky_start(rt_actor_t *child, rt_loop_t *l, void *arg) {
  if (flaky.starts < 8) start_times_ns[flaky.starts] = rt_now_ns();
  flaky.starts++;
  child->on_stop = flaky_stopped;
  /* Crash again right away on the first three starts. */
  if (flaky.starts <= 3) rt_actor_tell(child, RT_MSG_USER + 1, NULL, 0);
  if (flaky.starts == 4) rt_actor_tell(child, RT_MSG_STOP, NULL, 0);
  return 0;
}

static rt_timer_t stopper;
static void stopper_cb(rt_timer_t *t) { rt_loop_stop(loop); }

static void test_supervisor_restarts(void) {
  rt_sup_init(&sup, loop, "sup");
  rt_actor_init(&flaky.actor, loop, "flaky", flaky_fn, &flaky);
  rt_child_spec_t spec = {.name = "flaky", .start = flaky_start,
                          .backoff_min_ms = 10, .backoff_max_ms = 40,
                          .stable_ms = 10000};
  T_CHECK_EQ_INT(rt_sup_start_child(&sup, &flaky.actor, &spec), 0);
  rt_timer_init(&stopper, stopper_cb, NULL);
  rt_timer_start(loop, &stopper, 300, 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  /* Started once, crashed three times, restarted three times; the fourth
   * start stopped cleanly and was not restarted. */
  T_CHECK_EQ_INT(flaky.starts, 4);
  T_CHECK_EQ_INT(flaky.stops, 4);
  T_CHECK_EQ_INT(flaky.last_stop_reason, 0);
  T_CHECK_EQ_INT(sup.children[0].restarts, 3);
  /* Back-off doubles: about 10, 20, 40 ms between starts. */
  uint64_t gap1 = (start_times_ns[1] - start_times_ns[0]) / 1000000u;
  uint64_t gap2 = (start_times_ns[2] - start_times_ns[1]) / 1000000u;
  uint64_t gap3 = (start_times_ns[3] - start_times_ns[2]) / 1000000u;
  T_CHECK(gap1 >= 10);
  T_CHECK(gap2 >= 20);
  T_CHECK(gap3 >= 40);
  T_CHECK(flaky.actor.stopped);
}

/* ---- messages to a stopped actor --------------------------------------- */

static void test_send_to_stopped(void) {
  rt_loop_stats_t before, after;
  rt_loop_stats(loop, &before);
  T_CHECK_EQ_INT(rt_actor_tell(&flaky.actor, RT_MSG_USER, NULL, 0), RT_E_STOPPED);
  rt_loop_stats(loop, &after);
  T_CHECK_EQ_INT(after.msgs_in_use, before.msgs_in_use);
}

int main(void) {
  rt_log_init("test_actor", RT_LOG_ERROR, NULL, 0);
  if (rt_loop_create(&loop, NULL) != 0) return 1;
  T_RUN(test_budget_fairness);
  T_RUN(test_supervisor_restarts);
  T_RUN(test_send_to_stopped);
  rt_loop_stats_t st;
  rt_loop_stats(loop, &st);
  T_CHECK_EQ_INT(st.msgs_in_use, 0);
  rt_loop_destroy(loop);
  return t_done();
}
