/*
 * When a loop may be destroyed (the rule above rt_loop_destroy() in rt.h):
 * a hold still taken or a message still out aborts; messages sent to a
 * loop that never ran them go back to their pools when it is destroyed;
 * rt_run() tears down loops that message one another, even while one
 * still sends to another that has already stopped; and after a drain cut
 * short, what is still out is counted instead of asserted.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "loop_internal.h" /* rt__drain_overran_set(), to cut a drain short */
#include "rt.h"
#include "t.h"

static const rt_loop_config_t small = {.msgs_count = 1024, .bufs_count = 16,
                                       .buf_bytes = 1024, .sq_entries = 16,
                                       .timers_count = 64};

static void sleep_ms(long ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0) {
  }
}

/* Runs fn in a child with stderr silenced; returns its wait status. */
static int in_child(void (*fn)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 2);
    fn();
    _exit(0);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) != pid) return -1;
  return status;
}

static bool aborted(int status) { return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT; }

static uint32_t msgs_in_use(rt_loop_t *loop) {
  rt_loop_stats_t st;
  rt_loop_stats(loop, &st);
  return st.msgs_in_use;
}

/* ---- what rt_loop_destroy() asserts ------------------------------------ */

static void destroy_held(void) {
  rt_loop_t *loop = NULL;
  if (rt_loop_create(&loop, &small) != 0) _exit(3);
  rt_loop_hold(loop);
  rt_loop_destroy(loop);
}

static void destroy_with_message_out(void) {
  rt_loop_t *loop = NULL;
  if (rt_loop_create(&loop, &small) != 0) _exit(3);
  if (rt_msg_new(RT_MSG_USER, 8) == NULL) _exit(3);
  rt_loop_destroy(loop);
}

static void destroy_after_release(void) {
  rt_loop_t *loop = NULL;
  if (rt_loop_create(&loop, &small) != 0) _exit(3);
  rt_loop_hold(loop);
  rt_loop_hold(loop);
  rt_loop_release(loop);
  rt_loop_release(loop);
  rt_msg_free(rt_msg_new(RT_MSG_USER, 8));
  rt_loop_destroy(loop);
}

static void test_destroy_asserts_the_rule(void) {
  T_CHECK_EQ_INT(in_child(destroy_after_release), 0); /* tells them apart */
  T_CHECK(aborted(in_child(destroy_held)));
  T_CHECK(aborted(in_child(destroy_with_message_out)));
}

/* ---- messages a loop never ran go home ---------------------------------- */

static int never_fn(rt_actor_t *self, rt_msg_t *msg) {
  (void)self;
  (void)msg;
  return -1; /* never runs: its loop never does */
}

static void test_unhandled_messages_go_home(void) {
  /* Both loops on this thread; the one created last is current, so
   * rt_msg_new() takes from `from`'s pool. */
  rt_loop_t *to = NULL, *from = NULL;
  T_REQUIRE(rt_loop_create(&to, &small) == 0);
  T_REQUIRE(rt_loop_create(&from, &small) == 0);
  T_REQUIRE(rt_loop_current() == from);
  rt_actor_t actor;
  rt_actor_init(&actor, to, "never", never_fn, NULL);
  for (int i = 0; i < 10; i++) T_CHECK_EQ_INT(rt_actor_tell(&actor, RT_MSG_USER, &i, sizeof i), 0);
  T_CHECK_EQ_INT(msgs_in_use(from), 10);
  rt_loop_destroy(to); /* frees the ten into from's pool, which still exists */
  T_CHECK_EQ_INT(msgs_in_use(from), 0);
  rt_loop_destroy(from); /* and finds its pool whole */
}

/* ---- rt_run() with loops that keep messaging each other ------------------ */

/* Thread 0 drains at once; thread 1 takes 100 ms more, all the while sending
 * to thread 0's actor, which has stopped: those messages are only freed by
 * the teardown, and thread 1's loop is destroyed only after they are. */
enum { XF_THREADS = 2, XF_BURST = 32 };

typedef struct xf_thread {
  rt_actor_t actor;
  rt_timer_t tick;
  rt_timer_t drain_timer;
  rt_loop_t *loop;
  _Atomic uint64_t handled;
  _Atomic uint64_t sent;      /* by the other thread, to this one */
  _Atomic uint64_t sent_late; /* ... after this one stopped */
  atomic_bool stopped;
} xf_thread_t;

static xf_thread_t xf[XF_THREADS];
static _Atomic(xf_thread_t *) xf_ready[XF_THREADS];

static int xf_fn(rt_actor_t *self, rt_msg_t *msg) {
  xf_thread_t *t = self->state;
  atomic_fetch_add(&t->handled, 1);
  return 0;
}

static void xf_tick(rt_timer_t *timer) {
  xf_thread_t *t = timer->ctx;
  xf_thread_t *other = atomic_load(&xf_ready[t == &xf[0] ? 1 : 0]);
  if (other == NULL) return;
  for (int i = 0; i < XF_BURST; i++) {
    if (rt_actor_tell(&other->actor, RT_MSG_USER, NULL, 0) != 0) break;
    atomic_fetch_add(&other->sent, 1);
    if (atomic_load(&other->stopped)) atomic_fetch_add(&other->sent_late, 1);
  }
}

static void xf_drained(rt_timer_t *timer) {
  xf_thread_t *t = timer->ctx;
  rt_loop_drained(t->loop);
}

static void xf_drain(rt_loop_t *loop, void *arg) {
  xf_thread_t *t = arg;
  if (t == &xf[0] || rt_timer_start(loop, &t->drain_timer, 100, 0) < 0) {
    atomic_store(&t->stopped, true);
    rt_loop_drained(loop);
  }
}

static int xf_setup(rt_loop_t *loop, uint32_t index, void *arg) {
  (void)arg;
  xf_thread_t *t = &xf[index];
  t->loop = loop;
  rt_actor_init(&t->actor, loop, "xf", xf_fn, t);
  rt_timer_init(&t->tick, xf_tick, t);
  rt_timer_init(&t->drain_timer, xf_drained, t);
  int rc = rt_timer_start(loop, &t->tick, 1, 1);
  if (rc == 0) rc = rt_loop_on_drain(loop, xf_drain, t);
  if (rc == 0) atomic_store(&xf_ready[index], t);
  return rc;
}

/* Sends SIGTERM once both actors have handled a good many messages. */
static void *xf_signaller(void *arg) {
  (void)arg;
  for (int i = 0; i < 10000; i++) {
    if (atomic_load(&xf[0].handled) > 1000 && atomic_load(&xf[1].handled) > 1000) break;
    sleep_ms(1);
  }
  kill(getpid(), SIGTERM);
  return NULL;
}

static void test_run_teardown_with_crossfire(void) {
  rt_signals_block(); /* the signaller inherits it: SIGTERM reaches rt_run */
  pthread_t tid;
  T_REQUIRE(pthread_create(&tid, NULL, xf_signaller, NULL) == 0);
  int rc = rt_run(XF_THREADS, &small, xf_setup, NULL, 5000);
  pthread_join(tid, NULL);
  T_CHECK_EQ_INT(rc, 0);
  T_CHECK(!rt_drain_overran());
  T_CHECK_EQ_INT(rt_leftovers_count(), 0);
  /* Thread 1 did send to thread 0 after it had stopped... */
  T_CHECK(atomic_load(&xf[0].sent_late) > 0);
  /* ...and some of those were never handled; yet every pool was whole
   * when its loop was destroyed, or rt_loop_destroy() would have aborted. */
  T_CHECK(atomic_load(&xf[0].handled) < atomic_load(&xf[0].sent));
  T_CHECK(atomic_load(&xf[1].handled) <= atomic_load(&xf[1].sent));
}

/* ---- a drain cut short counts, instead of asserting --------------------- */

static void cut_short(void) {
  rt__drain_overran_set();
  rt_loop_t *loop = NULL;
  if (rt_loop_create(&loop, &small) != 0) _exit(3);
  if (rt_msg_new(RT_MSG_USER, 8) == NULL) _exit(3);
  rt_loop_destroy(loop); /* one message out: kept, counted */
  rt_pool_t pool;
  if (rt_pool_init(&pool, "cut", 32, 4) != 0) _exit(3);
  (void)rt_pool_get(&pool);
  (void)rt_pool_get(&pool);
  rt_pool_deinit(&pool); /* two objects out: counted */
  _exit(rt_drain_overran() && rt_leftovers_count() == 3 ? 0 : 4);
}

static void test_cut_short_drain_counts(void) {
  T_CHECK(!rt_drain_overran());
  T_CHECK_EQ_INT(in_child(cut_short), 0);
  T_CHECK_EQ_INT(rt_leftovers_count(), 0); /* the child's, not ours */
}

int main(void) {
  rt_log_init("test_teardown", RT_LOG_ERROR, NULL, 0);
  T_RUN(test_destroy_asserts_the_rule);
  T_RUN(test_unhandled_messages_go_home);
  T_RUN(test_cut_short_drain_counts);
  T_RUN(test_run_teardown_with_crossfire); /* last: it blocks SIGTERM */
  return t_done();
}
