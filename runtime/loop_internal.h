/*
 * loop_internal.h - the loop's private state, shared by the runtime's own
 * files only. Nothing outside runtime/ includes this.
 */
#ifndef RT_LOOP_INTERNAL_H
#define RT_LOOP_INTERNAL_H

#include <liburing.h>

#include "rt.h"

#define RT_DRAIN_HOOKS_MAX 8

typedef struct rt_drain_hook {
  rt_drain_fn fn;
  void *arg;
} rt_drain_hook_t;

struct rt_loop {
  struct io_uring ring;
  rt_loop_config_t config;
  uint64_t now_ns;
  atomic_bool stop_requested;
  bool running; /* inside rt_loop_run() (loop thread only) */

  /* Holds of other threads (rt_loop_hold()); zero before the loop is
   * freed. Taken and given back with acq_rel, so that everything a holder
   * did to the loop happens before the free that finds the count at 0. */
  atomic_uint holds;

  /* Ops that found the SQ full, submitted in order when room comes back. */
  rt_op_t *overflow_head;
  rt_op_t *overflow_tail;

  /* Provided buffers for multishot recv: one ring, one group. */
  struct io_uring_buf_ring *buf_ring;
  size_t buf_ring_bytes;
  unsigned char *bufs;
  uint16_t buf_group;

  /* Timer min-heap ordered by deadline. */
  rt_timer_t **timers;
  uint32_t timers_len;
  uint32_t timers_len_max; /* high-water mark */

  /* Actors ready to run (this thread only), FIFO. */
  rt_actor_t *run_head;
  rt_actor_t *run_tail;
  /* Actors scheduled from other threads: a LIFO stack pushed with CAS and
   * taken whole by the loop, then reversed so they run in arrival order. */
  _Atomic(rt_actor_t *) remote_actors;

  /* Cross-thread wake-up: an eventfd whose read stays armed in the ring.
   * wake_pending limits writers to one write(2) per wake-up. */
  int wake_fd;
  rt_op_t wake_op;
  uint64_t wake_value;
  atomic_bool wake_pending;

  /* Pooled messages. Frees from other threads land on remote_free and are
   * taken back in one exchange when the local list runs dry. */
  unsigned char *msgs_mem;
  size_t msg_stride;
  rt_mlink_t *msgs_free;
  _Atomic(rt_mlink_t *) msgs_remote_free;
  atomic_uint msgs_remote_freed;
  uint32_t msgs_taken; /* handed out minus freed locally */
  uint32_t msgs_in_use_max; /* seen at the ends of iterations */

  /* Work requests submitted here whose after_cb has not run yet (loop
   * thread only), and those a worker has finished: a LIFO stack pushed
   * with CAS and taken whole by the loop, like remote_actors (work.c). */
  uint32_t work_in_flight;
  _Atomic(rt_work_t *) work_done;

  /* Graceful drain. */
  rt_drain_hook_t drain_hooks[RT_DRAIN_HOOKS_MAX];
  uint32_t drain_hooks_count;
  uint32_t drain_pending;
  atomic_bool drain_requested;
  atomic_uint drain_deadline_ms;
  bool draining;
  rt_timer_t drain_timer;

  uint32_t last_reaped; /* completions of the last pass, for batching */
  rt_loop_stats_t stats;

  /* rt_loop_limits() for other threads: copied from the fields above by
   * the loop before it waits (rt_loop_run), read with relaxed loads. A
   * reader wants each number, not a consistent set of them. */
  struct {
    _Atomic uint32_t timers_armed;
    _Atomic uint32_t timers_armed_max;
    _Atomic uint64_t timers_refused;
    _Atomic uint32_t msgs_in_use;
    _Atomic uint32_t msgs_in_use_max;
    _Atomic uint64_t msgs_refused;
    _Atomic uint64_t bufs_exhausted;
  } published;
};

/* loop.c: queue an op for submission (or the overflow queue). */
void rt__submit(rt_loop_t *loop, rt_op_t *op);

/* loop.c: wake a loop from another thread. */
void rt__wake(rt_loop_t *loop);

/* timer.c: fire due timers. */
void rt__timers_run(rt_loop_t *loop);

/* timer.c: ns from the loop's now until the next deadline (0 when due),
 * or UINT64_MAX when no timer is armed. */
uint64_t rt__timers_next_ns(const rt_loop_t *loop);

/* actor.c: run ready actors once each. Returns true if any remain ready. */
bool rt__actors_run(rt_loop_t *loop);

/* actor.c: on a stopped loop, frees unhandled the messages its actors were
 * sent and never ran (logged), and unschedules them. Returns how many. */
uint32_t rt__actors_drop(rt_loop_t *loop);

/* threads.c: start draining when asked to (called once per iteration). */
void rt__drain_check(rt_loop_t *loop);

/* work.c: run the after_cb of finished work requests. */
void rt__work_run(rt_loop_t *loop);

/* work.c: before a loop is freed, take its requests out of every pool and
 * wait until no worker holds the loop; after_cb of what was in flight
 * never runs. */
void rt__work_forget(rt_loop_t *loop);

/* msg.c: set up and tear down a loop's message pool. The teardown returns
 * false when messages were still out (after a drain cut short): their
 * memory, and the loop, must then be kept. */
int rt__msgs_init(rt_loop_t *loop);
bool rt__msgs_deinit(rt_loop_t *loop);
uint32_t rt__msgs_in_use(rt_loop_t *loop);

/* threads.c: marks the process's drain as cut short (rt_drain_overran()). */
void rt__drain_overran_set(void);

#endif /* RT_LOOP_INTERNAL_H */
