/*
 * loop.c - one io_uring per thread.
 *
 * An iteration: fire due timers, run the after-callbacks of work finished
 * on worker threads, take actors scheduled from other threads, run ready
 * actors, move overflowed ops into the SQ, flush logs, then submit
 * everything with one system call and wait (unless actors are still ready)
 * until a completion or the next timer. Completions are first copied out of
 * the CQ into a batch, the CQ is advanced, and only then are callbacks run:
 * a callback may submit new ops without ever seeing a half-consumed CQ.
 *
 * user_data is the address of the caller's rt_op_t; nothing else is encoded
 * in it. A multishot op stays in flight until a completion arrives without
 * IORING_CQE_F_MORE.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "loop_internal.h"

/* Completions copied out per pass; a pass repeats while the CQ is full. */
#define RT_CQE_BATCH 256

static _Thread_local rt_loop_t *tls_loop;

uint64_t rt_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

rt_loop_t *rt_loop_current(void) { return tls_loop; }

uint64_t rt_loop_now_ns(const rt_loop_t *loop) { return loop->now_ns; }

bool rt_op_more(uint32_t flags) { return (flags & IORING_CQE_F_MORE) != 0; }

void rt_loop_config_defaults(rt_loop_config_t *c) {
  if (c->sq_entries == 0) c->sq_entries = 1024;
  if (c->bufs_count == 0) c->bufs_count = 1024;
  if (c->buf_bytes == 0) c->buf_bytes = 16384;
  if (c->msgs_count == 0) c->msgs_count = 65536;
  if (c->msg_bytes == 0) c->msg_bytes = 192;
  if (c->actor_budget == 0) c->actor_budget = 64;
  if (c->timers_count == 0) c->timers_count = 65536;
  if (c->batch_wait_us == 0) c->batch_wait_us = 50;
  if (c->batch_wait_max == 0) c->batch_wait_max = 32;
}

uint32_t rt_loop_bufs_for(const rt_loop_config_t *c, uint64_t receivers) {
  uint64_t sq = c->sq_entries != 0 ? c->sq_entries : 1024;
  uint64_t want = receivers < 4 * sq ? receivers : 4 * sq;
  uint32_t n = 16;
  while (n < want && n < RT_LOOP_BUFS_MAX) n *= 2;
  return n;
}

/* A configuration the loop cannot be made with, said in words: the caller
 * computed it from its own, and should learn which number is wrong. */
static int config_check(const rt_loop_config_t *c) {
  uint32_t n = c->bufs_count;
  if (n > RT_LOOP_BUFS_MAX || (n & (n - 1)) != 0) {
    RT_ERROR("loop: bufs_count must be a power of 2 up to 32768",
             RT_LF_INT("bufs_count", n));
    return RT_E_CONFIG;
  }
  return 0;
}

int rt_loop_config_from_env(rt_loop_config_t *c) {
  const char *v = rt_env_str("RT_BATCH_WAIT_US", NULL);
  if (v != NULL && strcmp(v, "off") == 0) {
    c->batch_wait_us = UINT32_MAX;
  } else if (rt_env_u32("RT_BATCH_WAIT_US", 50, 1, 10000, &c->batch_wait_us) < 0) {
    return RT_E_CONFIG;
  }
  return rt_env_u32("RT_BATCH_WAIT_MAX", 32, 1, 1024, &c->batch_wait_max);
}

/* SINGLE_ISSUER + DEFER_TASKRUN keep completion work on our thread and run
 * it only when we ask for events; older kernels refuse them, so fall back. */
static int ring_init(rt_loop_t *loop) {
  struct io_uring_params p;
  memset(&p, 0, sizeof p);
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
            IORING_SETUP_SUBMIT_ALL;
  p.flags |= IORING_SETUP_CQSIZE;
  p.cq_entries = loop->config.sq_entries * 4;
  int rc = io_uring_queue_init_params(loop->config.sq_entries, &loop->ring, &p);
  if (rc == -EINVAL) {
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_CQSIZE;
    p.cq_entries = loop->config.sq_entries * 4;
    rc = io_uring_queue_init_params(loop->config.sq_entries, &loop->ring, &p);
  }
  /* A registered ring fd spares the kernel an fd lookup on every enter;
   * optional, so a refusal is not an error. */
  if (rc == 0) (void)io_uring_register_ring_fd(&loop->ring);
  return rc;
}

static int bufs_init(rt_loop_t *loop) {
  uint32_t n = loop->config.bufs_count;
  if (n == 0 || n > 32768 || (n & (n - 1)) != 0) return RT_E_CONFIG;
  size_t ring_bytes = (size_t)n * sizeof(struct io_uring_buf);
  void *ring_mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE,
                        MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (ring_mem == MAP_FAILED) return -errno;
  loop->buf_ring = ring_mem;
  loop->buf_ring_bytes = ring_bytes;
  loop->bufs = aligned_alloc(4096, (size_t)n * loop->config.buf_bytes);
  if (loop->bufs == NULL) return -ENOMEM;
  loop->buf_group = 0;

  struct io_uring_buf_reg reg;
  memset(&reg, 0, sizeof reg);
  reg.ring_addr = (uint64_t)(uintptr_t)ring_mem;
  reg.ring_entries = n;
  reg.bgid = loop->buf_group;
  int rc = io_uring_register_buf_ring(&loop->ring, &reg, 0);
  if (rc < 0) return rc;

  io_uring_buf_ring_init(loop->buf_ring);
  int mask = io_uring_buf_ring_mask(n);
  for (uint32_t i = 0; i < n; i++) {
    io_uring_buf_ring_add(loop->buf_ring,
                          loop->bufs + (size_t)i * loop->config.buf_bytes,
                          loop->config.buf_bytes, (unsigned short)i, mask, (int)i);
  }
  io_uring_buf_ring_advance(loop->buf_ring, (int)n);
  return 0;
}

static void wake_armed(rt_op_t *op, int res, uint32_t flags);

static void wake_arm(rt_loop_t *loop) {
  rt_read(loop, &loop->wake_op, loop->wake_fd, &loop->wake_value,
          sizeof loop->wake_value, wake_armed, loop);
}

/* The eventfd fired: let the next writer wake us again, then keep a read
 * armed. Remote actors are collected at the top of every iteration. */
static void wake_armed(rt_op_t *op, int res, uint32_t flags) {
  rt_loop_t *loop = op->ctx;
  atomic_store_explicit(&loop->wake_pending, false, memory_order_seq_cst);
  if (res < 0 && res != -EINTR && res != -ECANCELED) {
    RT_ERROR("wake read failed", RT_LF_STR("error", rt_strerror(res)));
  }
  wake_arm(loop);
}

void rt__wake(rt_loop_t *loop) {
  if (atomic_exchange_explicit(&loop->wake_pending, true, memory_order_seq_cst))
    return;
  uint64_t one = 1;
  ssize_t n;
  do {
    n = write(loop->wake_fd, &one, sizeof one);
  } while (n < 0 && errno == EINTR);
}

int rt_loop_create(rt_loop_t **out, const rt_loop_config_t *config) {
  rt_loop_t *loop = calloc(1, sizeof *loop);
  if (loop == NULL) return -ENOMEM;
  if (config != NULL) loop->config = *config;
  rt_loop_config_defaults(&loop->config);
  loop->wake_fd = -1;
  loop->now_ns = rt_now_ns();

  int rc = config_check(&loop->config);
  if (rc == 0) rc = ring_init(loop);
  if (rc < 0) {
    free(loop);
    return rc;
  }
  loop->timers = calloc(loop->config.timers_count, sizeof *loop->timers);
  if (loop->timers == NULL) rc = -ENOMEM;
  if (rc == 0) rc = bufs_init(loop);
  if (rc == 0) rc = rt__msgs_init(loop);
  if (rc == 0) {
    loop->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (loop->wake_fd < 0) rc = -errno;
  }
  if (rc < 0) {
    rt_loop_destroy(loop);
    return rc;
  }
  tls_loop = loop;
  wake_arm(loop);
  *out = loop;
  return 0;
}

void rt_loop_stop(rt_loop_t *loop) {
  atomic_store(&loop->stop_requested, true);
  if (rt_loop_current() != loop) rt__wake(loop);
}

void rt__submit(rt_loop_t *loop, rt_op_t *op);

static void prep(struct io_uring_sqe *sqe, rt_loop_t *loop, rt_op_t *op) {
  switch (op->opcode) {
  case RT_OPC_ACCEPT_MULTI:
    io_uring_prep_multishot_accept(sqe, op->fd, NULL, NULL, SOCK_CLOEXEC);
    break;
  case RT_OPC_RECV_MULTI:
    io_uring_prep_recv_multishot(sqe, op->fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = loop->buf_group;
    break;
  case RT_OPC_RECV:
    io_uring_prep_recv(sqe, op->fd, op->buf, op->len, 0);
    break;
  case RT_OPC_SEND:
    io_uring_prep_send(sqe, op->fd, (const char *)op->buf + op->done,
                       op->len - op->done, MSG_NOSIGNAL);
    break;
  case RT_OPC_CONNECT:
    io_uring_prep_connect(sqe, op->fd, op->addr, (socklen_t)op->arg);
    break;
  case RT_OPC_CLOSE:
    io_uring_prep_close(sqe, op->fd);
    break;
  case RT_OPC_POLL:
    io_uring_prep_poll_add(sqe, op->fd, (unsigned)op->arg);
    break;
  case RT_OPC_POLL_MULTI:
    io_uring_prep_poll_multishot(sqe, op->fd, (unsigned)op->arg);
    break;
  case RT_OPC_CANCEL:
    io_uring_prep_cancel(sqe, op->buf, 0);
    break;
  case RT_OPC_READ:
    io_uring_prep_read(sqe, op->fd, op->buf, op->len, (uint64_t)-1);
    break;
  case RT_OPC_WRITE:
    io_uring_prep_write(sqe, op->fd, op->buf, op->len, (uint64_t)-1);
    break;
  default:
    assert(!"unknown opcode");
  }
  io_uring_sqe_set_data(sqe, op);
}

void rt__submit(rt_loop_t *loop, rt_op_t *op) {
  op->in_flight = true;
  op->next = NULL;
  /* Keep submission order: once anything has overflowed, queue behind it. */
  struct io_uring_sqe *sqe =
      loop->overflow_head == NULL ? io_uring_get_sqe(&loop->ring) : NULL;
  if (sqe != NULL) {
    prep(sqe, loop, op);
    return;
  }
  loop->stats.overflowed++;
  if (loop->overflow_tail != NULL) {
    loop->overflow_tail->next = op;
  } else {
    loop->overflow_head = op;
  }
  loop->overflow_tail = op;
}

/* Moves queued ops into the SQ while it has room. */
static void overflow_flush(rt_loop_t *loop) {
  while (loop->overflow_head != NULL) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(&loop->ring);
    if (sqe == NULL) {
      /* Submit what is in the SQ to make room, then try once more. */
      int n = io_uring_submit(&loop->ring);
      if (n > 0) loop->stats.submitted += (uint64_t)n;
      sqe = io_uring_get_sqe(&loop->ring);
      if (sqe == NULL) return;
    }
    rt_op_t *op = loop->overflow_head;
    loop->overflow_head = op->next;
    if (loop->overflow_head == NULL) loop->overflow_tail = NULL;
    op->next = NULL;
    prep(sqe, loop, op);
  }
}

typedef struct rt_cqe_copy {
  rt_op_t *op;
  int res;
  uint32_t flags;
} rt_cqe_copy_t;

/* A send that wrote less than asked is resubmitted for the rest; the
 * caller's callback sees one completion for the whole buffer. */
static bool send_continues(rt_loop_t *loop, rt_op_t *op, int res) {
  if (op->opcode != RT_OPC_SEND || res <= 0) return false;
  op->done += (uint32_t)res;
  if (op->done >= op->len) return false;
  rt__submit(loop, op);
  return true;
}

static void dispatch(rt_loop_t *loop, const rt_cqe_copy_t *c) {
  rt_op_t *op = c->op;
  int res = c->res;
  if (op == NULL) return; /* a cancel without a callback, or a no-op */
  if (send_continues(loop, op, res)) return;
  if (op->opcode == RT_OPC_SEND && res > 0) res = (int)op->done;
  if (op->opcode == RT_OPC_SEND && res == 0 && op->len > 0) res = -EPIPE;
  if (!(c->flags & IORING_CQE_F_MORE)) op->in_flight = false;
  if (res == -ENOBUFS && op->opcode == RT_OPC_RECV_MULTI) {
    /* Reported at 1, 2, 4, 8, ... occurrences: visible, never a flood. */
    uint64_t n = ++loop->stats.bufs_exhausted;
    if ((n & (n - 1)) == 0) {
      RT_WARN("provided recv buffers exhausted", RT_LF_INT("count", n),
              RT_LF_INT("buffers", loop->config.bufs_count));
    }
  }
  if (op->cb != NULL) op->cb(op, res, c->flags);
}

/* Copies completions out, advances the CQ, then runs callbacks. */
static uint32_t reap(rt_loop_t *loop) {
  rt_cqe_copy_t batch[RT_CQE_BATCH];
  uint32_t total = 0;
  for (;;) {
    uint32_t n = 0;
    unsigned head;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(&loop->ring, head, cqe) {
      batch[n].op = io_uring_cqe_get_data(cqe);
      batch[n].res = cqe->res;
      batch[n].flags = cqe->flags;
      if (++n == RT_CQE_BATCH) break;
    }
    io_uring_cq_advance(&loop->ring, n);
    loop->now_ns = rt_now_ns();
    for (uint32_t i = 0; i < n; i++) dispatch(loop, &batch[i]);
    total += n;
    if (n < RT_CQE_BATCH) break;
  }
  loop->stats.completions += total;
  return total;
}

/* Under load, waking for every single completion costs a context switch
 * and a system call per request. When the last pass reaped a batch, wait
 * for about half as many again, but never longer than batch_wait_us: the
 * latency added is bounded and only paid when traffic is heavy. */
static uint32_t batch_wait_nr(const rt_loop_t *loop) {
  if (loop->config.batch_wait_us == UINT32_MAX) return 1;
  uint32_t n = loop->last_reaped / 2;
  if (n < 4) return 1;
  return n > loop->config.batch_wait_max ? loop->config.batch_wait_max : n;
}

/* Submits and, unless work is ready, waits for completions or the next
 * timer deadline. */
static int submit_and_wait(rt_loop_t *loop, bool ready, uint64_t timer_ns) {
  int rc;
  uint32_t wait_nr = batch_wait_nr(loop);
  uint64_t batch_ns = (uint64_t)loop->config.batch_wait_us * 1000u;
  if (wait_nr > 1 && timer_ns > batch_ns) timer_ns = batch_ns;
  if (ready || atomic_load_explicit(&loop->stop_requested, memory_order_relaxed)) {
    rc = io_uring_submit_and_get_events(&loop->ring);
  } else if (timer_ns == UINT64_MAX) {
    rc = io_uring_submit_and_wait(&loop->ring, 1);
  } else {
    struct __kernel_timespec ts = {
        .tv_sec = (long long)(timer_ns / 1000000000u),
        .tv_nsec = (long long)(timer_ns % 1000000000u),
    };
    struct io_uring_cqe *cqe = NULL;
    rc = io_uring_submit_and_wait_timeout(&loop->ring, &cqe, wait_nr, &ts, NULL);
    if (rc == -ETIME) rc = 0;
  }
  if (rc == -EINTR || rc == -EAGAIN || rc == -EBUSY) rc = 0;
  if (rc > 0) loop->stats.submitted += (uint64_t)rc;
  return rc < 0 ? rc : 0;
}

/* The limits as the loop's own thread sees them now. The high-water mark
 * of messages is taken here, at the end of iterations: messages come back
 * from other threads at any time, so an exact one would cost every free. */
static void limits_now(rt_loop_t *loop, rt_loop_limits_t *out) {
  uint32_t msgs = rt__msgs_in_use(loop);
  if (msgs > loop->msgs_in_use_max) loop->msgs_in_use_max = msgs;
  *out = (rt_loop_limits_t){
      .timers_capacity = loop->config.timers_count,
      .timers_armed = loop->timers_len,
      .timers_armed_max = loop->timers_len_max,
      .timers_refused = loop->stats.timers_exhausted,
      .msgs_capacity = loop->config.msgs_count,
      .msgs_in_use = msgs,
      .msgs_in_use_max = loop->msgs_in_use_max,
      .msgs_refused = loop->stats.msgs_exhausted,
      .bufs_capacity = loop->config.bufs_count,
      .bufs_exhausted = loop->stats.bufs_exhausted,
  };
}

#define PUBLISH(loop, l, field) \
  atomic_store_explicit(&(loop)->published.field, (l).field, memory_order_relaxed)
#define PUBLISHED(loop, field) \
  atomic_load_explicit(&(loop)->published.field, memory_order_relaxed)

/* Copies what rt_loop_limits() tells other threads. */
static void limits_publish(rt_loop_t *loop) {
  rt_loop_limits_t l;
  limits_now(loop, &l);
  PUBLISH(loop, l, timers_armed);
  PUBLISH(loop, l, timers_armed_max);
  PUBLISH(loop, l, timers_refused);
  PUBLISH(loop, l, msgs_in_use);
  PUBLISH(loop, l, msgs_in_use_max);
  PUBLISH(loop, l, msgs_refused);
  PUBLISH(loop, l, bufs_exhausted);
}

void rt_loop_limits(const rt_loop_t *loop, rt_loop_limits_t *out) {
  if (rt_loop_current() == loop) {
    limits_now((rt_loop_t *)loop, out); /* only a high-water mark moves */
    return;
  }
  *out = (rt_loop_limits_t){
      .timers_capacity = loop->config.timers_count,
      .timers_armed = PUBLISHED(loop, timers_armed),
      .timers_armed_max = PUBLISHED(loop, timers_armed_max),
      .timers_refused = PUBLISHED(loop, timers_refused),
      .msgs_capacity = loop->config.msgs_count,
      .msgs_in_use = PUBLISHED(loop, msgs_in_use),
      .msgs_in_use_max = PUBLISHED(loop, msgs_in_use_max),
      .msgs_refused = PUBLISHED(loop, msgs_refused),
      .bufs_capacity = loop->config.bufs_count,
      .bufs_exhausted = PUBLISHED(loop, bufs_exhausted),
  };
}

int rt_loop_run(rt_loop_t *loop) {
  assert(tls_loop == loop);
  assert(!loop->running);
  loop->running = true;
  rt_log_set_buffered(true);
  int rc = 0;
  while (!atomic_load_explicit(&loop->stop_requested, memory_order_acquire)) {
    loop->stats.iterations++;
    loop->now_ns = rt_now_ns();
    rt__drain_check(loop);
    rt__timers_run(loop);
    rt__work_run(loop);
    bool ready = rt__actors_run(loop);
    overflow_flush(loop);
    rt_log_flush();
    limits_publish(loop);
    /* Asked last: actors may have armed timers during their turn. */
    rc = submit_and_wait(loop, ready, rt__timers_next_ns(loop));
    if (rc < 0) {
      RT_ERROR("io_uring wait failed", RT_LF_STR("error", rt_strerror(rc)));
      break;
    }
    loop->last_reaped = reap(loop);
  }
  rt_log_flush();
  rt_log_set_buffered(false);
  /* Consumed: a later rt_loop_run() runs again (tests reuse loops). */
  atomic_store(&loop->stop_requested, false);
  loop->running = false;
  return rc;
}

void *rt_recv_buffer(rt_loop_t *loop, uint32_t flags) {
  assert(flags & IORING_CQE_F_BUFFER);
  uint32_t bid = flags >> IORING_CQE_BUFFER_SHIFT;
  assert(bid < loop->config.bufs_count);
  return loop->bufs + (size_t)bid * loop->config.buf_bytes;
}

/* Returns a provided buffer to the ring so the kernel can fill it again. */
void rt_recv_buffer_release(rt_loop_t *loop, uint32_t flags) {
  assert(flags & IORING_CQE_F_BUFFER);
  uint32_t bid = flags >> IORING_CQE_BUFFER_SHIFT;
  assert(bid < loop->config.bufs_count);
  io_uring_buf_ring_add(loop->buf_ring,
                        loop->bufs + (size_t)bid * loop->config.buf_bytes,
                        loop->config.buf_bytes, (unsigned short)bid,
                        io_uring_buf_ring_mask(loop->config.bufs_count), 0);
  io_uring_buf_ring_advance(loop->buf_ring, 1);
}

void rt_loop_stats(const rt_loop_t *loop, rt_loop_stats_t *out) {
  *out = loop->stats;
  out->msgs_in_use = rt__msgs_in_use((rt_loop_t *)loop);
  out->msgs_capacity = loop->config.msgs_count;
}

void rt_loop_hold(rt_loop_t *loop) {
  uint32_t before = atomic_fetch_add_explicit(&loop->holds, 1, memory_order_acq_rel);
  assert(before < UINT32_MAX);
  (void)before;
}

void rt_loop_release(rt_loop_t *loop) {
  /* release: the holder's touches of the loop come before its free. */
  uint32_t before = atomic_fetch_sub_explicit(&loop->holds, 1, memory_order_acq_rel);
  assert(before > 0);
  (void)before;
}

/* The rule written above rt_loop_destroy() in rt.h, in its order. */
void rt_loop_destroy(rt_loop_t *loop) {
  if (loop == NULL) return;
  assert(!loop->running); /* 1: destroyed from inside its own run */
  /* 2: workers are holders the runtime tracks itself; wait for them. */
  rt__work_forget(loop);
  uint32_t holds = atomic_load_explicit(&loop->holds, memory_order_acquire);
  assert(holds == 0); /* 2: another thread may still reach this loop */
  (void)holds;
  /* 3: what was sent here and never ran goes back to its pools first. */
  rt__actors_drop(loop);
  if (loop->ring.ring_fd >= 0 && loop->buf_ring != NULL)
    io_uring_unregister_buf_ring(&loop->ring, loop->buf_group);
  if (loop->ring.ring_fd > 0) io_uring_queue_exit(&loop->ring);
  if (loop->wake_fd >= 0) close(loop->wake_fd);
  if (loop->buf_ring != NULL) munmap(loop->buf_ring, loop->buf_ring_bytes);
  free(loop->bufs);
  free(loop->timers);
  if (tls_loop == loop) tls_loop = NULL;
  /* 3: with messages still out, their pool and its loop stay allocated. */
  if (rt__msgs_deinit(loop)) free(loop);
}
