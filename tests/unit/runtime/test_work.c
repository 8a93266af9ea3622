/*
 * Work requests: every after-callback runs exactly once, on the loop
 * thread, with work_cb run on another; a full queue is refused with
 * RT_E_LIMIT and the refused request's callbacks never run; stopping the
 * pool cancels what is queued, lets what runs finish and refuses new
 * requests; a loop destroyed with requests in flight drops them; a request
 * submitted twice aborts.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "rt.h"
#include "t.h"

static rt_loop_t *loop;
static pthread_t loop_thread;

typedef struct job {
  rt_work_t req;
  atomic_int works;        /* work_cb calls */
  int afters;              /* after_cb calls */
  int status;              /* the last after_cb's */
  bool work_off_loop;      /* work_cb ran on another thread */
  bool after_on_loop;      /* after_cb ran on the loop thread */
  uint32_t rounds;         /* submissions left, resubmitted from after_cb */
} job_t;

#define JOBS 32

static job_t jobs[JOBS];
static uint32_t afters_total;
static uint32_t afters_wanted;

static void sleep_ms(long ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* A loop that never sees what it waits for stops after 10 s, failing. */
static rt_timer_t watchdog;
static bool watchdog_fired;
static void watchdog_cb(rt_timer_t *t) {
  watchdog_fired = true;
  rt_loop_stop(loop);
}

static void run_until_afters(uint32_t wanted) {
  afters_wanted = wanted;
  watchdog_fired = false;
  rt_timer_init(&watchdog, watchdog_cb, NULL);
  rt_timer_start(loop, &watchdog, 10000, 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  rt_timer_stop(loop, &watchdog);
  T_CHECK(!watchdog_fired);
}

static void reset_jobs(void) {
  memset(jobs, 0, sizeof jobs);
  afters_total = 0;
}

static void work_count(rt_work_t *req) {
  job_t *j = req->ctx;
  j->work_off_loop = !pthread_equal(pthread_self(), loop_thread);
  atomic_fetch_add(&j->works, 1);
}

static rt_work_pool_t *pool;

static void after_count(rt_work_t *req, int status) {
  job_t *j = req->ctx;
  j->afters++;
  j->status = status;
  j->after_on_loop = pthread_equal(pthread_self(), loop_thread) && rt_loop_current() == loop;
  afters_total++;
  /* The request is ours again: submit it anew from its own callback. */
  if (j->rounds > 0 && --j->rounds > 0) {
    T_CHECK_EQ_INT(rt_work_submit(loop, pool, req, work_count, after_count, j), 0);
  }
  if (afters_total == afters_wanted) rt_loop_stop(loop);
}

/* ---- every after-callback once, on the loop ---------------------------- */

static void test_after_once_on_loop(void) {
  reset_jobs();
  T_REQUIRE(rt_work_pool_start(&pool, "test", 4, JOBS) == 0);
  const uint32_t rounds = 3;
  for (uint32_t i = 0; i < JOBS; i++) {
    jobs[i].rounds = rounds;
    T_CHECK_EQ_INT(rt_work_submit(loop, pool, &jobs[i].req, work_count, after_count, &jobs[i]), 0);
  }
  run_until_afters(JOBS * rounds);
  for (uint32_t i = 0; i < JOBS; i++) {
    T_CHECK_EQ_INT(atomic_load(&jobs[i].works), rounds);
    T_CHECK_EQ_INT(jobs[i].afters, rounds);
    T_CHECK_EQ_INT(jobs[i].status, 0);
    T_CHECK(jobs[i].work_off_loop);
    T_CHECK(jobs[i].after_on_loop);
    T_CHECK(!jobs[i].req.in_flight);
  }
  /* Nothing more arrives later: run the loop briefly and count again. */
  rt_timer_init(&watchdog, watchdog_cb, NULL);
  rt_timer_start(loop, &watchdog, 50, 0);
  rt_loop_run(loop);
  T_CHECK_EQ_INT(afters_total, JOBS * rounds);
  rt_work_stats_t st;
  rt_work_pool_stats(pool, &st);
  T_CHECK_EQ_INT(st.done, JOBS * rounds);
  T_CHECK_EQ_INT(st.queued, 0);
  T_CHECK_EQ_INT(st.rejected, 0);
  rt_work_pool_stop(pool);
  pool = NULL;
}

/* ---- a gate that holds the first job on its worker --------------------- */

static atomic_bool gate_open;
static atomic_bool gate_entered;

static void work_gated(rt_work_t *req) {
  atomic_store(&gate_entered, true);
  for (int i = 0; i < 10000 && !atomic_load(&gate_open); i++) sleep_ms(1);
  work_count(req);
}

static void gate_reset(void) {
  atomic_store(&gate_open, false);
  atomic_store(&gate_entered, false);
}

static void wait_gate_entered(void) {
  for (int i = 0; i < 10000 && !atomic_load(&gate_entered); i++) sleep_ms(1);
}

/* ---- a full queue ------------------------------------------------------ */

static void test_queue_full(void) {
  reset_jobs();
  gate_reset();
  T_REQUIRE(rt_work_pool_start(&pool, "test", 1, 2) == 0);
  T_REQUIRE(rt_work_submit(loop, pool, &jobs[0].req, work_gated, after_count, &jobs[0]) == 0);
  wait_gate_entered(); /* the worker holds job 0: the queue is empty */
  T_CHECK_EQ_INT(rt_work_submit(loop, pool, &jobs[1].req, work_count, after_count, &jobs[1]), 0);
  T_CHECK_EQ_INT(rt_work_submit(loop, pool, &jobs[2].req, work_count, after_count, &jobs[2]), 0);
  T_CHECK_EQ_INT(rt_work_submit(loop, pool, &jobs[3].req, work_count, after_count, &jobs[3]),
                 RT_E_LIMIT);
  T_CHECK(!jobs[3].req.in_flight);
  rt_work_stats_t st;
  rt_work_pool_stats(pool, &st);
  T_CHECK_EQ_INT(st.queued, 2);
  T_CHECK_EQ_INT(st.rejected, 1);
  atomic_store(&gate_open, true);
  run_until_afters(3);
  /* The refused request: neither callback ran. */
  T_CHECK_EQ_INT(atomic_load(&jobs[3].works), 0);
  T_CHECK_EQ_INT(jobs[3].afters, 0);
  for (int i = 0; i < 3; i++) T_CHECK_EQ_INT(jobs[i].afters, 1);
  /* Room again once the queue drained. */
  T_CHECK_EQ_INT(rt_work_submit(loop, pool, &jobs[3].req, work_count, after_count, &jobs[3]), 0);
  run_until_afters(4);
  T_CHECK_EQ_INT(jobs[3].afters, 1);
  T_CHECK_EQ_INT(atomic_load(&jobs[3].works), 1);
  rt_work_pool_stop(pool);
  pool = NULL;
}

/* ---- stopping the pool with jobs queued -------------------------------- */

#define QUEUED 5

static job_t late;
static int late_rc;

static void *stopper_main(void *arg) {
  rt_work_pool_stop(arg);
  return NULL;
}

/* Cancelled jobs arrive while job 0 still runs: then let it finish. */
static void after_stop(rt_work_t *req, int status) {
  after_count(req, status);
  if (status == -ECANCELED && req != &late.req) {
    int cancelled = 0;
    for (int i = 1; i <= QUEUED; i++) cancelled += jobs[i].afters;
    if (cancelled == 1) {
      /* The pool is stopping, not gone (it waits for job 0). */
      late_rc = rt_work_submit(loop, pool, &late.req, work_count, after_count, &late);
    }
    if (cancelled == QUEUED) atomic_store(&gate_open, true);
  }
}

static void test_stop_with_jobs_queued(void) {
  reset_jobs();
  gate_reset();
  memset(&late, 0, sizeof late);
  T_REQUIRE(rt_work_pool_start(&pool, "test", 1, 16) == 0);
  T_REQUIRE(rt_work_submit(loop, pool, &jobs[0].req, work_gated, after_stop, &jobs[0]) == 0);
  wait_gate_entered();
  for (int i = 1; i <= QUEUED; i++)
    T_REQUIRE(rt_work_submit(loop, pool, &jobs[i].req, work_count, after_stop, &jobs[i]) == 0);
  pthread_t stopper;
  T_REQUIRE(pthread_create(&stopper, NULL, stopper_main, pool) == 0);
  run_until_afters(1 + QUEUED);
  pthread_join(stopper, NULL);
  pool = NULL;
  /* The running job finished; the queued ones were cancelled unrun. */
  T_CHECK_EQ_INT(jobs[0].status, 0);
  T_CHECK_EQ_INT(atomic_load(&jobs[0].works), 1);
  T_CHECK_EQ_INT(jobs[0].afters, 1);
  for (int i = 1; i <= QUEUED; i++) {
    T_CHECK_EQ_INT(jobs[i].status, -ECANCELED);
    T_CHECK_EQ_INT(atomic_load(&jobs[i].works), 0);
    T_CHECK_EQ_INT(jobs[i].afters, 1);
    T_CHECK(jobs[i].after_on_loop);
  }
  /* Submitted while stopping: refused, and never called. */
  T_CHECK_EQ_INT(late_rc, RT_E_CLOSED);
  T_CHECK_EQ_INT(late.afters, 0);
  T_CHECK_EQ_INT(atomic_load(&late.works), 0);
}

/* ---- a loop destroyed with requests in flight -------------------------- */

static void after_never(rt_work_t *req, int status) {
  job_t *j = req->ctx;
  j->afters++;
}

static atomic_bool doomed_submitted;

static void *doomed_loop_main(void *arg) {
  rt_loop_t *own;
  if (rt_loop_create(&own, NULL) != 0) return NULL;
  if (rt_work_submit(own, pool, &jobs[0].req, work_gated, after_never, &jobs[0]) == 0) {
    wait_gate_entered();
    for (int i = 1; i <= QUEUED; i++)
      rt_work_submit(own, pool, &jobs[i].req, work_count, after_never, &jobs[i]);
  }
  atomic_store(&doomed_submitted, true);
  /* Blocks until job 0 has left its worker; the rest are dropped. */
  rt_loop_destroy(own);
  return arg;
}

static void test_loop_destroyed_with_work(void) {
  reset_jobs();
  gate_reset();
  atomic_store(&doomed_submitted, false);
  T_REQUIRE(rt_work_pool_start(&pool, "test", 1, 16) == 0);
  pthread_t th;
  static int token;
  T_REQUIRE(pthread_create(&th, NULL, doomed_loop_main, &token) == 0);
  /* Open the gate only once rt_loop_destroy() has taken the queued
   * requests out: until then the worker is held by job 0. */
  for (int i = 0; i < 10000 && !atomic_load(&doomed_submitted); i++) sleep_ms(1);
  rt_work_stats_t st;
  for (int i = 0; i < 10000; i++) {
    rt_work_pool_stats(pool, &st);
    if (st.queued == 0) break;
    sleep_ms(1);
  }
  atomic_store(&gate_open, true);
  void *ret = NULL;
  pthread_join(th, &ret);
  T_CHECK(ret == &token);
  T_CHECK_EQ_INT(atomic_load(&jobs[0].works), 1);
  for (int i = 0; i <= QUEUED; i++) {
    T_CHECK_EQ_INT(jobs[i].afters, 0);
    T_CHECK(!jobs[i].req.in_flight);
  }
  for (int i = 1; i <= QUEUED; i++) T_CHECK_EQ_INT(atomic_load(&jobs[i].works), 0);
  rt_work_pool_stats(pool, &st);
  T_CHECK_EQ_INT(st.queued, 0);
  /* The pool goes on serving other loops. */
  T_CHECK_EQ_INT(rt_work_submit(loop, pool, &jobs[6].req, work_count, after_count, &jobs[6]), 0);
  run_until_afters(1);
  T_CHECK_EQ_INT(jobs[6].afters, 1);
  rt_work_pool_stop(pool);
  pool = NULL;
}

/* ---- a request submitted twice ----------------------------------------- */

static void test_submit_twice_aborts(void) {
  reset_jobs();
  gate_reset();
  T_REQUIRE(rt_work_pool_start(&pool, "test", 1, 4) == 0);
  T_REQUIRE(rt_work_submit(loop, pool, &jobs[0].req, work_gated, after_count, &jobs[0]) == 0);
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    rt_work_submit(loop, pool, &jobs[0].req, work_count, after_count, &jobs[0]);
    _exit(0); /* not reached: the assert aborts */
  }
  T_REQUIRE(pid > 0);
  int wstatus = 0;
  T_CHECK(waitpid(pid, &wstatus, 0) == pid);
  T_CHECK(WIFSIGNALED(wstatus) && WTERMSIG(wstatus) == SIGABRT);
  atomic_store(&gate_open, true);
  run_until_afters(1);
  T_CHECK_EQ_INT(jobs[0].afters, 1);
  rt_work_pool_stop(pool);
  pool = NULL;
}

int main(void) {
  rt_log_init("test_work", RT_LOG_ERROR, NULL, 0);
  loop_thread = pthread_self();
  if (rt_loop_create(&loop, NULL) != 0) return 1;
  T_RUN(test_after_once_on_loop);
  T_RUN(test_queue_full);
  T_RUN(test_stop_with_jobs_queued);
  T_RUN(test_loop_destroyed_with_work);
  T_RUN(test_submit_twice_aborts);
  rt_loop_destroy(loop);
  return t_done();
}
