/*
 * Mailbox and cross-thread actor messaging under concurrent producers:
 * every message is delivered exactly once, and in order per sender.
 */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "rt.h"
#include "t.h"

enum { PRODUCERS = 4, PER_PRODUCER = 100000 };

typedef struct payload {
  uint32_t sender;
  uint32_t seq;
} payload_t;

/* ---- raw mailbox: four writers, one reader, no loop --------------------- */

static rt_mailbox_t raw_mb;
static rt_msg_t *raw_msgs[PRODUCERS];
static atomic_bool raw_go;

static rt_msg_t *raw_msg(uint32_t sender, uint32_t seq) {
  size_t stride = sizeof(rt_msg_t) + sizeof(payload_t);
  stride = (stride + 15u) & ~(size_t)15u;
  return (rt_msg_t *)((unsigned char *)raw_msgs[sender] + stride * seq);
}

static void *raw_producer(void *arg) {
  uint32_t sender = (uint32_t)(uintptr_t)arg;
  while (!atomic_load(&raw_go)) sched_yield();
  for (uint32_t i = 0; i < PER_PRODUCER; i++) {
    rt_msg_t *m = raw_msg(sender, i);
    payload_t p = {sender, i};
    memcpy(m->data, &p, sizeof p);
    rt_mailbox_push(&raw_mb, m);
  }
  return NULL;
}

static void test_raw_mailbox_many_writers(void) {
  size_t stride = sizeof(rt_msg_t) + sizeof(payload_t);
  stride = (stride + 15u) & ~(size_t)15u;
  for (int s = 0; s < PRODUCERS; s++) raw_msgs[s] = aligned_alloc(16, stride * PER_PRODUCER);
  rt_mailbox_init(&raw_mb);
  T_CHECK(rt_mailbox_pop(&raw_mb) == NULL);
  T_CHECK(!rt_mailbox_maybe_nonempty(&raw_mb));

  pthread_t tids[PRODUCERS];
  for (int s = 0; s < PRODUCERS; s++)
    pthread_create(&tids[s], NULL, raw_producer, (void *)(uintptr_t)s);
  atomic_store(&raw_go, true);

  uint32_t next_seq[PRODUCERS] = {0};
  uint64_t received = 0, out_of_order = 0, spins = 0;
  const uint64_t total = (uint64_t)PRODUCERS * PER_PRODUCER;
  while (received < total && spins < 2000000000u) {
    rt_msg_t *m = rt_mailbox_pop(&raw_mb);
    if (m == NULL) {
      spins++;
      continue;
    }
    payload_t p;
    memcpy(&p, m->data, sizeof p);
    if (p.sender >= PRODUCERS || p.seq != next_seq[p.sender]) out_of_order++;
    if (p.sender < PRODUCERS) next_seq[p.sender] = p.seq + 1;
    received++;
  }
  for (int s = 0; s < PRODUCERS; s++) pthread_join(tids[s], NULL);
  T_CHECK_EQ_INT(received, total);
  T_CHECK_EQ_INT(out_of_order, 0);
  T_CHECK(rt_mailbox_pop(&raw_mb) == NULL);
  T_CHECK(!rt_mailbox_maybe_nonempty(&raw_mb));
  for (int s = 0; s < PRODUCERS; s++) {
    T_CHECK_EQ_INT(next_seq[s], PER_PRODUCER);
    free(raw_msgs[s]);
  }
}

/* ---- actors: producers on their own loops send to an actor on another --- */

typedef struct sink {
  rt_actor_t actor;
  uint32_t next_seq[PRODUCERS];
  uint64_t received;
  uint64_t out_of_order;
  rt_loop_t *loop;
} sink_t;

static sink_t sink;
static atomic_bool actor_go;
static atomic_uint_fast64_t pool_retries;

static int sink_handler(rt_actor_t *self, rt_msg_t *msg) {
  sink_t *s = self->state;
  payload_t p;
  memcpy(&p, msg->data, sizeof p);
  if (p.sender >= PRODUCERS || p.seq != s->next_seq[p.sender]) s->out_of_order++;
  if (p.sender < PRODUCERS) s->next_seq[p.sender] = p.seq + 1;
  if (++s->received == (uint64_t)PRODUCERS * PER_PRODUCER) rt_loop_stop(s->loop);
  return 0;
}

static void *actor_producer(void *arg) {
  uint32_t sender = (uint32_t)(uintptr_t)arg;
  /* A small pool so messages freed by the sink's thread are recycled many
   * times through the remote-free path. */
  rt_loop_config_t cfg = {.msgs_count = 256, .bufs_count = 16, .buf_bytes = 1024,
                          .sq_entries = 16, .timers_count = 16};
  rt_loop_t *loop = NULL;
  if (rt_loop_create(&loop, &cfg) < 0) return (void *)1;
  /* A sender from another thread holds the sink's loop while it sends. */
  rt_loop_hold(sink.loop);
  while (!atomic_load(&actor_go)) sched_yield();
  for (uint32_t i = 0; i < PER_PRODUCER; i++) {
    payload_t p = {sender, i};
    rt_msg_t *m;
    while ((m = rt_msg_new(RT_MSG_USER, sizeof p)) == NULL) {
      atomic_fetch_add(&pool_retries, 1);
      sched_yield();
    }
    memcpy(m->data, &p, sizeof p);
    rt_actor_send(&sink.actor, m);
  }
  rt_loop_release(sink.loop);
  /* Every message comes back before the pool may go (rt_loop_destroy()
   * asserts it): wait up to 10 s for the sink's thread to free them. */
  rt_loop_stats_t st;
  uint64_t deadline_ns = rt_now_ns() + 10000000000u;
  for (;;) {
    rt_loop_stats(loop, &st);
    if (st.msgs_in_use == 0 || rt_now_ns() > deadline_ns) break;
    sched_yield();
  }
  uintptr_t leaked = st.msgs_in_use;
  if (leaked == 0) rt_loop_destroy(loop); /* else kept: the test fails */
  return (void *)leaked;
}

static void test_actor_cross_thread_order(void) {
  rt_loop_t *loop = NULL;
  T_REQUIRE(rt_loop_create(&loop, NULL) == 0);
  memset(&sink, 0, sizeof sink);
  sink.loop = loop;
  rt_actor_init(&sink.actor, loop, "sink", sink_handler, &sink);

  pthread_t tids[PRODUCERS];
  for (int s = 0; s < PRODUCERS; s++)
    pthread_create(&tids[s], NULL, actor_producer, (void *)(uintptr_t)s);
  atomic_store(&actor_go, true);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  uintptr_t leaked_total = 0;
  for (int s = 0; s < PRODUCERS; s++) {
    void *ret;
    pthread_join(tids[s], &ret);
    leaked_total += (uintptr_t)ret;
  }
  T_CHECK_EQ_INT(sink.received, (uint64_t)PRODUCERS * PER_PRODUCER);
  T_CHECK_EQ_INT(sink.out_of_order, 0);
  T_CHECK_EQ_INT(leaked_total, 0);
  /* 100000 messages through 256 slots per producer: every slot was freed
   * by the sink's thread and reused many times over. */
  rt_loop_stats_t st;
  rt_loop_stats(loop, &st);
  T_CHECK_EQ_INT(st.msgs_handled, (uint64_t)PRODUCERS * PER_PRODUCER);
  rt_loop_destroy(loop);
}

int main(void) {
  rt_log_init("test_mailbox", RT_LOG_WARN, NULL, 0);
  T_RUN(test_raw_mailbox_many_writers);
  T_RUN(test_actor_cross_thread_order);
  return t_done();
}
