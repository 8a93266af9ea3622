/*
 * threads.c - N loop threads, signals and graceful drain.
 *
 * Signals are blocked in every thread and taken synchronously by the main
 * thread with sigtimedwait(), so no handler ever runs on a loop thread. On
 * SIGTERM or SIGINT each loop is asked to drain: its drain hooks stop
 * accepting and finish in-flight work, and the loop stops when all hooks
 * report done or the deadline passes. A second signal stops at once.
 *
 * Teardown follows the rule written above rt_loop_destroy() in rt.h. The
 * loop threads of one run send to one another, so no loop is freed before
 * all have stopped: the main thread holds every loop it may signal, waits
 * until each thread has stopped its loop, then lets each free what its
 * actors were sent and never ran (messages from the other loops' pools go
 * back while those pools still exist), and only when all have done so
 * gives its holds back, upon which each thread destroys its own loop.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loop_internal.h"

/* ------------------------------------------------------------------------ */
/* Drain, per loop                                                          */
/* ------------------------------------------------------------------------ */

int rt_loop_on_drain(rt_loop_t *loop, rt_drain_fn fn, void *arg) {
  if (loop->drain_hooks_count == RT_DRAIN_HOOKS_MAX) return RT_E_LIMIT;
  loop->drain_hooks[loop->drain_hooks_count++] = (rt_drain_hook_t){fn, arg};
  return 0;
}

bool rt_loop_draining(const rt_loop_t *loop) { return loop->draining; }

void rt_loop_drain(rt_loop_t *loop, uint32_t deadline_ms) {
  atomic_store(&loop->drain_deadline_ms, deadline_ms);
  atomic_store(&loop->drain_requested, true);
  if (rt_loop_current() != loop) rt__wake(loop);
}

static void drain_deadline(rt_timer_t *timer) {
  rt_loop_t *loop = timer->ctx;
  RT_WARN("drain deadline passed, stopping with work in flight",
          RT_LF_INT("hooks_pending", loop->drain_pending));
  rt__drain_overran_set();
  rt_loop_stop(loop);
}

void rt_loop_drained(rt_loop_t *loop) {
  if (loop->drain_pending > 0 && --loop->drain_pending == 0) {
    rt_timer_stop(loop, &loop->drain_timer);
    rt_loop_stop(loop);
  }
}

void rt__drain_check(rt_loop_t *loop) {
  if (loop->draining || !atomic_load_explicit(&loop->drain_requested, memory_order_acquire))
    return;
  loop->draining = true;
  loop->drain_pending = loop->drain_hooks_count;
  if (loop->drain_pending == 0) {
    rt_loop_stop(loop);
    return;
  }
  rt_timer_init(&loop->drain_timer, drain_deadline, loop);
  int rc = rt_timer_start(loop, &loop->drain_timer, atomic_load(&loop->drain_deadline_ms), 0);
  /* Hooks may report done from inside the call. */
  uint32_t n = loop->drain_hooks_count;
  for (uint32_t i = 0; i < n; i++) loop->drain_hooks[i].fn(loop, loop->drain_hooks[i].arg);
  /* A drain without a deadline could hang for good: with no timer to be
   * had, the deadline is now, once the hooks have had their one call. */
  if (rc < 0 && loop->drain_pending > 0) drain_deadline(&loop->drain_timer);
}

/* ------------------------------------------------------------------------ */
/* Shutdown accounting                                                      */
/* ------------------------------------------------------------------------ */

static atomic_bool drain_overran;
static _Atomic uint64_t leftovers;

void rt__drain_overran_set(void) { atomic_store(&drain_overran, true); }

bool rt_drain_overran(void) { return atomic_load(&drain_overran); }

void rt_leftovers_add(const char *what, uint64_t count) {
  if (count == 0) return;
  RT_WARN("still out at teardown", RT_LF_STR("what", what), RT_LF_INT("count", count),
          RT_LF_BOOL("drain_overran", rt_drain_overran()));
  atomic_fetch_add(&leftovers, count);
}

uint64_t rt_leftovers_count(void) { return atomic_load(&leftovers); }

void rt_log_stopped(int exit_status) {
  uint64_t left = rt_leftovers_count();
  RT_LOG_(left > 0 ? RT_LOG_WARN : RT_LOG_INFO, "stopped", RT_LF_INT("status", exit_status),
          RT_LF_INT("leftovers", left), RT_LF_BOOL("drain_overran", rt_drain_overran()));
  rt_log_flush();
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct rt_thread {
  pthread_t tid;
  uint32_t index;
  rt_loop_t *_Atomic loop; /* held for main while set (rt_loop_hold()) */
  int setup_rc;
  atomic_bool ready;
  atomic_bool done;        /* the loop has stopped */
  atomic_bool all_stopped; /* main: every loop of the run has stopped */
  atomic_bool dropped;     /* the loop gave back what it was sent */
  const rt_loop_config_t *config;
  rt_thread_setup_fn setup;
  void *arg;
} rt_thread_t;

static void sleep_ms(long ms);

static void *thread_main(void *p) {
  rt_thread_t *t = p;
  rt_loop_t *loop = NULL;
  int rc = rt_loop_create(&loop, t->config);
  if (rc == 0) rc = t->setup(loop, t->index, t->arg);
  t->setup_rc = rc;
  if (rc < 0) {
    RT_ERROR("loop thread start-up failed", RT_LF_INT("thread", t->index),
             RT_LF_STR("error", rt_strerror(rc)));
  }
  /* Main may signal the loop from now on: hold it on main's behalf. */
  if (rc == 0) rt_loop_hold(loop);
  atomic_store(&t->loop, rc == 0 ? loop : NULL);
  atomic_store(&t->ready, true);
  if (rc == 0) rc = rt_loop_run(loop);
  rt_log_flush();
  atomic_store(&t->done, true);
  /* Once no loop of the run sends any more, give back what ours was sent;
   * then wait for main's hold, which it keeps until every loop has. */
  while (!atomic_load(&t->all_stopped)) sleep_ms(1);
  if (loop != NULL) rt__actors_drop(loop);
  atomic_store(&t->dropped, true);
  while (loop != NULL && atomic_load_explicit(&loop->holds, memory_order_acquire) > 0)
    sleep_ms(1);
  rt_loop_destroy(loop);
  rt_log_flush();
  return NULL;
}

static rt_reload_fn reload_fn;
static void *reload_arg;

void rt_on_reload(rt_reload_fn fn, void *arg) {
  reload_fn = fn;
  reload_arg = arg;
}

static void block_signals(sigset_t *set) {
  sigemptyset(set);
  sigaddset(set, SIGTERM);
  sigaddset(set, SIGINT);
  if (reload_fn != NULL) sigaddset(set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, set, NULL);
  signal(SIGPIPE, SIG_IGN); /* sends use MSG_NOSIGNAL; this covers the rest */
}

void rt_signals_block(void) {
  sigset_t set;
  block_signals(&set);
}

static void sleep_ms(long ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

static bool all_done(rt_thread_t *threads, uint32_t n) {
  for (uint32_t i = 0; i < n; i++)
    if (!atomic_load(&threads[i].done)) return false;
  return true;
}

/* The teardown written at the top: all stopped, all dropped, then each
 * loop is released to its thread, which destroys it. */
static void teardown_threads(rt_thread_t *threads, uint32_t n) {
  while (!all_done(threads, n)) sleep_ms(1);
  for (uint32_t i = 0; i < n; i++) atomic_store(&threads[i].all_stopped, true);
  for (uint32_t i = 0; i < n; i++) {
    while (!atomic_load(&threads[i].dropped)) sleep_ms(1);
  }
  for (uint32_t i = 0; i < n; i++) {
    rt_loop_t *loop = atomic_exchange(&threads[i].loop, NULL);
    if (loop != NULL) rt_loop_release(loop);
  }
}

static void for_each_loop(rt_thread_t *threads, uint32_t n, bool drain,
                          uint32_t deadline_ms) {
  for (uint32_t i = 0; i < n; i++) {
    rt_loop_t *loop = atomic_load(&threads[i].loop);
    if (loop == NULL) continue;
    if (drain) {
      rt_loop_drain(loop, deadline_ms);
    } else {
      rt_loop_stop(loop);
    }
  }
}

/* Waits for signals until every thread has finished. */
static void supervise_threads(rt_thread_t *threads, uint32_t n, sigset_t *set,
                              uint32_t deadline_ms) {
  uint32_t signals_seen = 0;
  while (!all_done(threads, n)) {
    struct timespec tick = {.tv_sec = 0, .tv_nsec = 100 * 1000000L};
    int sig = sigtimedwait(set, NULL, &tick);
    if (sig < 0) continue;
    if (sig == SIGHUP) {
      if (signals_seen == 0 && reload_fn != NULL) reload_fn(reload_arg);
      rt_log_flush();
      continue;
    }
    signals_seen++;
    if (signals_seen == 1) {
      RT_INFO("shutting down", RT_LF_STR("signal", sig == SIGTERM ? "SIGTERM" : "SIGINT"),
              RT_LF_INT("deadline_ms", deadline_ms));
      for_each_loop(threads, n, true, deadline_ms);
    } else {
      RT_WARN("second signal, stopping now", RT_LF_INT("signal", sig));
      rt__drain_overran_set();
      for_each_loop(threads, n, false, 0);
    }
    rt_log_flush();
  }
}

int rt_run(uint32_t threads_count, const rt_loop_config_t *config,
           rt_thread_setup_fn setup, void *arg, uint32_t drain_deadline_ms) {
  if (threads_count == 0 || threads_count > 256) return RT_E_CONFIG;
  sigset_t set;
  block_signals(&set);
  rt_thread_t *threads = calloc(threads_count, sizeof *threads);
  if (threads == NULL) return -ENOMEM;
  uint32_t started = 0;
  int rc = 0;
  for (; started < threads_count; started++) {
    rt_thread_t *t = &threads[started];
    t->index = started;
    t->config = config;
    t->setup = setup;
    t->arg = arg;
    rc = -pthread_create(&t->tid, NULL, thread_main, t);
    if (rc < 0) break;
  }
  /* Wait until every thread has set up (or failed to). */
  for (uint32_t i = 0; i < started; i++) {
    while (!atomic_load(&threads[i].ready)) sleep_ms(1);
    if (threads[i].setup_rc < 0 && rc == 0) rc = threads[i].setup_rc;
  }
  if (rc < 0) {
    for_each_loop(threads, started, false, 0);
  } else {
    supervise_threads(threads, started, &set, drain_deadline_ms);
  }
  teardown_threads(threads, started);
  for (uint32_t i = 0; i < started; i++) pthread_join(threads[i].tid, NULL);
  free(threads);
  rt_log_flush();
  return rc;
}
