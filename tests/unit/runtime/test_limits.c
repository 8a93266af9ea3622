/*
 * A loop's fixed tables as limits: sized from a count of receivers
 * (rt_loop_bufs_for), refused in words when they cannot be made, and,
 * once hit, counted where another thread (a /metrics page) can read them.
 */
#include <pthread.h>
#include <string.h>

#include "rt.h"
#include "t.h"

/* ---- rt_loop_bufs_for ---------------------------------------------------- */

static void test_bufs_for(void) {
  rt_loop_config_t c = {0}; /* sq_entries 0: the default 1024, a CQ of 4096 */
  T_CHECK_EQ_INT(rt_loop_bufs_for(&c, 0), 16);
  T_CHECK_EQ_INT(rt_loop_bufs_for(&c, 16), 16);
  T_CHECK_EQ_INT(rt_loop_bufs_for(&c, 17), 32);
  T_CHECK_EQ_INT(rt_loop_bufs_for(&c, 1025), 2048);
  /* More receivers than the CQ holds completions: the CQ bounds it. */
  T_CHECK_EQ_INT(rt_loop_bufs_for(&c, 10000), 4096);
  c.sq_entries = 64;
  T_CHECK_EQ_INT(rt_loop_bufs_for(&c, 10000), 256);
  c.sq_entries = 32768;
  T_CHECK_EQ_INT(rt_loop_bufs_for(&c, UINT64_MAX), RT_LOOP_BUFS_MAX);
}

/* A count the kernel's buffer ring cannot take is refused at creation. */
static void test_bad_bufs_refused(void) {
  rt_loop_config_t c = {.bufs_count = 48, .sq_entries = 16};
  rt_loop_t *loop = NULL;
  T_CHECK_EQ_INT(rt_loop_create(&loop, &c), RT_E_CONFIG);
  T_CHECK(loop == NULL);
  c.bufs_count = 2 * RT_LOOP_BUFS_MAX;
  T_CHECK_EQ_INT(rt_loop_create(&loop, &c), RT_E_CONFIG);
}

/* ---- limits hit, seen from the loop and from elsewhere -------------------- */

enum { TIMERS = 4, MSGS = 4 };

static void noop_cb(rt_timer_t *t) {}

static void stop_cb(rt_timer_t *t) { rt_loop_stop(t->ctx); }

typedef struct seen {
  rt_loop_t *loop;
  rt_loop_limits_t limits;
} seen_t;

static void *read_limits(void *arg) {
  seen_t *s = arg;
  rt_loop_limits(s->loop, &s->limits);
  return NULL;
}

/* Another thread's view of the loop's limits. */
static rt_loop_limits_t limits_elsewhere(rt_loop_t *loop) {
  seen_t s = {.loop = loop};
  pthread_t tid;
  if (pthread_create(&tid, NULL, read_limits, &s) == 0) pthread_join(tid, NULL);
  return s.limits;
}

static void test_limits_counted(void) {
  rt_loop_config_t c = {.timers_count = TIMERS, .msgs_count = MSGS, .msg_bytes = 16,
                        .bufs_count = 16, .sq_entries = 16};
  rt_loop_t *loop = NULL;
  T_REQUIRE(rt_loop_create(&loop, &c) == 0);
  rt_timer_t ts[TIMERS + 1];
  rt_timer_t stopper;
  for (int i = 0; i < TIMERS - 1; i++) {
    rt_timer_init(&ts[i], noop_cb, NULL);
    T_CHECK_EQ_INT(rt_timer_start(loop, &ts[i], 60000, 0), 0);
  }
  rt_timer_init(&stopper, stop_cb, loop);
  T_CHECK_EQ_INT(rt_timer_start(loop, &stopper, 0, 0), 0);
  rt_timer_init(&ts[TIMERS], noop_cb, NULL);
  T_CHECK_EQ_INT(rt_timer_start(loop, &ts[TIMERS], 60000, 0), RT_E_LIMIT);
  rt_msg_t *msgs[MSGS + 1];
  for (int i = 0; i < MSGS; i++) T_CHECK((msgs[i] = rt_msg_new(RT_MSG_USER, 8)) != NULL);
  T_CHECK(rt_msg_new(RT_MSG_USER, 8) == NULL);

  /* On the loop's thread: the numbers of now. */
  rt_loop_limits_t l;
  rt_loop_limits(loop, &l);
  T_CHECK_EQ_INT(l.timers_capacity, TIMERS);
  T_CHECK_EQ_INT(l.timers_armed, TIMERS);
  T_CHECK_EQ_INT(l.timers_armed_max, TIMERS);
  T_CHECK_EQ_INT(l.timers_refused, 1);
  T_CHECK_EQ_INT(l.msgs_capacity, MSGS);
  T_CHECK_EQ_INT(l.msgs_in_use, MSGS);
  T_CHECK_EQ_INT(l.msgs_refused, 1);
  T_CHECK_EQ_INT(l.bufs_capacity, 16);

  /* Elsewhere: what the loop published, once it has run. */
  T_CHECK_EQ_INT(limits_elsewhere(loop).timers_refused, 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  l = limits_elsewhere(loop);
  T_CHECK_EQ_INT(l.timers_capacity, TIMERS);
  T_CHECK_EQ_INT(l.timers_armed, TIMERS - 1); /* the stopper fired */
  T_CHECK_EQ_INT(l.timers_armed_max, TIMERS);
  T_CHECK_EQ_INT(l.timers_refused, 1);
  T_CHECK_EQ_INT(l.msgs_in_use, MSGS);
  T_CHECK_EQ_INT(l.msgs_in_use_max, MSGS);
  T_CHECK_EQ_INT(l.msgs_refused, 1);

  /* Given back: in use drops, the high-water marks stay. */
  for (int i = 0; i < MSGS; i++) rt_msg_free(msgs[i]);
  for (int i = 0; i < TIMERS - 1; i++) rt_timer_stop(loop, &ts[i]);
  T_CHECK_EQ_INT(rt_timer_start(loop, &stopper, 0, 0), 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  l = limits_elsewhere(loop);
  T_CHECK_EQ_INT(l.timers_armed, 0);
  T_CHECK_EQ_INT(l.timers_armed_max, TIMERS);
  T_CHECK_EQ_INT(l.msgs_in_use, 0);
  T_CHECK_EQ_INT(l.msgs_in_use_max, MSGS);
  rt_loop_destroy(loop);
}

int main(void) {
  rt_log_init("test_limits", RT_LOG_ERROR, NULL, 0);
  T_RUN(test_bufs_for);
  T_RUN(test_bad_bufs_refused);
  T_RUN(test_limits_counted);
  return t_done();
}
