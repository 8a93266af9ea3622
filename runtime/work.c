/*
 * work.c - worker threads: work_cb there, after_cb back on the loop.
 *
 * The life of a request is written in rt.h ("Work"); this is how it is
 * kept.
 *
 * A pool is one allocation made at start-up: the pool with its worker
 * slots. The queue is intrusive (through rt_work_t.next) and bounded by a
 * count, so a submit allocates nothing. One mutex guards the queue, the
 * `stopping` flag and each worker's `loop` (the loop of the request it
 * runs, NULL when idle). One condition wakes idle workers (`work_cv`); a
 * second tells a loop being destroyed that a worker let go of a request
 * (`idle_cv`).
 *
 * The way back. A finished request is pushed on its loop's `work_done`
 * stack with a CAS and the loop is woken with rt__wake(), as actor.c does
 * for actors scheduled from another thread. The push, the take, and the
 * exchange and clearing of the loop's `wake_pending` are all seq_cst, so
 * they fall in one total order. A worker pushes, then exchanges
 * wake_pending; the loop clears wake_pending (wake_armed, loop.c), then
 * takes the stack at the top of its next iteration. A worker that finds
 * wake_pending set made its exchange before that clearing, so its push
 * comes before the take and is seen by it; a worker that finds it clear
 * writes the eventfd itself. No finished request waits without a wake-up.
 *
 * A worker forgets the request once it is pushed: after_cb may resubmit or
 * free it at once. The worker keeps only the loop's address, under the
 * mutex, and a hold on the loop (rt_loop_hold()), until it has also woken
 * that loop: that is what rt__work_forget() waits for before the loop is
 * freed. It must wait even when the loop counts no request in flight any
 * more: a loop awake for another reason takes the pushed request and runs
 * its after_cb before the worker's wake-up, and may then stop and be
 * destroyed while that wake-up is still to come.
 *
 * Every pool is on a process-wide list so that a loop being destroyed can
 * find each pool that may still hold its requests. Lock order: the list's
 * mutex, then a pool's.
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "loop_internal.h"

typedef struct rt_worker {
  rt_work_pool_t *pool;
  pthread_t tid;
  rt_loop_t *loop; /* of the request being run; NULL when idle (under mu) */
} rt_worker_t;

struct rt_work_pool {
  const char *name;
  pthread_mutex_t mu;
  pthread_cond_t work_cv; /* a request was queued, or the pool is stopping */
  pthread_cond_t idle_cv; /* a worker let go of a request */
  rt_work_t *head;
  rt_work_t *tail;
  uint32_t queued;
  uint32_t queue_max;
  uint32_t queued_max;
  uint64_t done;
  uint64_t rejected;
  bool stopping;
  rt_work_pool_t *pools_next; /* the process-wide list (under pools_mu) */
  uint32_t threads_count;
  rt_worker_t workers[RT_WORK_THREADS_MAX];
};

static pthread_mutex_t pools_mu = PTHREAD_MUTEX_INITIALIZER;
static rt_work_pool_t *pools_head;

/* ------------------------------------------------------------------------ */
/* The queue (under the pool's mutex)                                       */
/* ------------------------------------------------------------------------ */

static void queue_push(rt_work_pool_t *pool, rt_work_t *req) {
  req->next = NULL;
  if (pool->tail != NULL) {
    pool->tail->next = req;
  } else {
    pool->head = req;
  }
  pool->tail = req;
  pool->queued++;
  if (pool->queued > pool->queued_max) pool->queued_max = pool->queued;
}

static rt_work_t *queue_pop(rt_work_pool_t *pool) {
  rt_work_t *req = pool->head;
  if (req == NULL) return NULL;
  pool->head = req->next;
  if (pool->head == NULL) pool->tail = NULL;
  req->next = NULL;
  assert(pool->queued > 0);
  pool->queued--;
  return req;
}

/* ------------------------------------------------------------------------ */
/* Worker threads                                                           */
/* ------------------------------------------------------------------------ */

/* Step 4: hands req back to its loop. The worker's last touch of req; the
 * caller holds the loop until this returns. */
static void complete(rt_work_t *req, int status) {
  rt_loop_t *loop = req->loop;
  req->status = status;
  rt_work_t *head = atomic_load_explicit(&loop->work_done, memory_order_relaxed);
  do {
    atomic_store_explicit(&req->done_next, head, memory_order_relaxed);
  } while (!atomic_compare_exchange_weak_explicit(&loop->work_done, &head, req,
                                                  memory_order_seq_cst,
                                                  memory_order_relaxed));
  rt__wake(loop);
}

static void *worker_main(void *arg) {
  rt_worker_t *w = arg;
  rt_work_pool_t *pool = w->pool;
  pthread_mutex_lock(&pool->mu);
  for (;;) {
    while (pool->head == NULL && !pool->stopping) pthread_cond_wait(&pool->work_cv, &pool->mu);
    rt_work_t *req = queue_pop(pool);
    if (req == NULL) break; /* stopping, and nothing is queued */
    rt_loop_t *loop = req->loop;
    w->loop = loop;
    rt_loop_hold(loop);
    pthread_mutex_unlock(&pool->mu);
    req->work_cb(req);
    complete(req, 0);
    rt_loop_release(loop);
    pthread_mutex_lock(&pool->mu);
    w->loop = NULL;
    pool->done++;
    pthread_cond_broadcast(&pool->idle_cv);
  }
  pthread_mutex_unlock(&pool->mu);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Start and stop                                                           */
/* ------------------------------------------------------------------------ */

static void pools_add(rt_work_pool_t *pool) {
  pthread_mutex_lock(&pools_mu);
  pool->pools_next = pools_head;
  pools_head = pool;
  pthread_mutex_unlock(&pools_mu);
}

static void pools_remove(rt_work_pool_t *pool) {
  pthread_mutex_lock(&pools_mu);
  rt_work_pool_t **link = &pools_head;
  while (*link != NULL && *link != pool) link = &(*link)->pools_next;
  if (ALWAYS(*link == pool)) *link = pool->pools_next;
  pthread_mutex_unlock(&pools_mu);
}

int rt_work_pool_start(rt_work_pool_t **out, const char *name, uint32_t threads,
                       uint32_t queue_max) {
  assert(out != NULL);
  *out = NULL;
  if (threads == 0 || threads > RT_WORK_THREADS_MAX || queue_max == 0) return RT_E_CONFIG;
  rt_work_pool_t *pool = calloc(1, sizeof *pool);
  if (pool == NULL) return -ENOMEM;
  pool->name = name != NULL ? name : "?";
  pool->queue_max = queue_max;
  pthread_mutex_init(&pool->mu, NULL);
  pthread_cond_init(&pool->work_cv, NULL);
  pthread_cond_init(&pool->idle_cv, NULL);
  pools_add(pool);
  for (uint32_t i = 0; i < threads; i++) {
    rt_worker_t *w = &pool->workers[i];
    w->pool = pool;
    int rc = pthread_create(&w->tid, NULL, worker_main, w);
    if (rc != 0) {
      rt_work_pool_stop(pool);
      return -rc;
    }
    pool->threads_count++;
  }
  *out = pool;
  return 0;
}

void rt_work_pool_stop(rt_work_pool_t *pool) {
  if (pool == NULL) return;
  pthread_mutex_lock(&pool->mu);
  pool->stopping = true;
  uint32_t cancelled = 0;
  rt_work_t *req;
  while ((req = queue_pop(pool)) != NULL) {
    /* Under the mutex, which rt__work_forget() takes before it lets the
     * loop go: the hold is only there for the check. */
    rt_loop_t *loop = req->loop;
    rt_loop_hold(loop);
    complete(req, -ECANCELED);
    rt_loop_release(loop);
    cancelled++;
  }
  pthread_cond_broadcast(&pool->work_cv);
  pthread_mutex_unlock(&pool->mu);
  for (uint32_t i = 0; i < pool->threads_count; i++) pthread_join(pool->workers[i].tid, NULL);
  pools_remove(pool);
  if (cancelled > 0) {
    RT_INFO("work cancelled at stop", RT_LF_STR("pool", pool->name),
            RT_LF_INT("count", cancelled));
  }
  /* Every request went back to its loop; no worker holds one. */
  assert(pool->head == NULL);
  assert(pool->queued == 0);
  for (uint32_t i = 0; i < pool->threads_count; i++) assert(pool->workers[i].loop == NULL);
  pthread_cond_destroy(&pool->idle_cv);
  pthread_cond_destroy(&pool->work_cv);
  pthread_mutex_destroy(&pool->mu);
  free(pool);
}

void rt_work_pool_stats(rt_work_pool_t *pool, rt_work_stats_t *out) {
  pthread_mutex_lock(&pool->mu);
  *out = (rt_work_stats_t){
      .threads = pool->threads_count,
      .queued = pool->queued,
      .queued_max = pool->queued_max,
      .done = pool->done,
      .rejected = pool->rejected,
  };
  pthread_mutex_unlock(&pool->mu);
}

/* ------------------------------------------------------------------------ */
/* The loop's side                                                          */
/* ------------------------------------------------------------------------ */

int rt_work_submit(rt_loop_t *loop, rt_work_pool_t *pool, rt_work_t *req,
                   rt_work_cb work_cb, rt_after_work_cb after_cb, void *ctx) {
  assert(loop != NULL);
  assert(loop == rt_loop_current()); /* after_cb will run on this thread */
  assert(work_cb != NULL);
  assert(after_cb != NULL);
  bool twice = req->in_flight;
  assert(!twice); /* submitted again before its after_cb ran */
  (void)twice;
  int rc = 0;
  pthread_mutex_lock(&pool->mu);
  if (pool->stopping) {
    rc = RT_E_CLOSED;
  } else if (pool->queued >= pool->queue_max) {
    pool->rejected++;
    rc = RT_E_LIMIT;
  } else {
    req->work_cb = work_cb;
    req->after_cb = after_cb;
    req->ctx = ctx;
    req->loop = loop;
    req->status = 0;
    req->in_flight = true;
    atomic_store_explicit(&req->done_next, NULL, memory_order_relaxed);
    queue_push(pool, req);
    pthread_cond_signal(&pool->work_cv);
  }
  pthread_mutex_unlock(&pool->mu);
  if (rc == 0) loop->work_in_flight++;
  return rc;
}

/* Takes the finished stack whole and puts it back in completion order. */
static rt_work_t *take_done(rt_loop_t *loop) {
  rt_work_t *list = atomic_exchange_explicit(&loop->work_done, NULL, memory_order_seq_cst);
  rt_work_t *reversed = NULL;
  while (list != NULL) {
    rt_work_t *next = atomic_load_explicit(&list->done_next, memory_order_relaxed);
    atomic_store_explicit(&list->done_next, reversed, memory_order_relaxed);
    reversed = list;
    list = next;
  }
  return reversed;
}

/* Step 5. */
void rt__work_run(rt_loop_t *loop) {
  if (loop->work_in_flight == 0) return;
  if (atomic_load_explicit(&loop->work_done, memory_order_seq_cst) == NULL) return;
  rt_work_t *req = take_done(loop);
  while (req != NULL) {
    /* Read before after_cb, which may submit req again. */
    rt_work_t *next = atomic_load_explicit(&req->done_next, memory_order_relaxed);
    assert(req->in_flight);
    assert(req->loop == loop);
    assert(loop->work_in_flight > 0);
    req->in_flight = false;
    loop->work_in_flight--;
    req->after_cb(req, req->status);
    req = next;
  }
}

static void forget_one(rt_loop_t *loop, rt_work_t *req) {
  assert(req->in_flight);
  assert(loop->work_in_flight > 0);
  req->in_flight = false;
  loop->work_in_flight--;
}

static bool pool_runs_for(const rt_work_pool_t *pool, const rt_loop_t *loop) {
  for (uint32_t i = 0; i < pool->threads_count; i++)
    if (pool->workers[i].loop == loop) return true;
  return false;
}

/* Takes loop's queued requests out of pool and waits until no worker runs
 * one of its requests. */
static void pool_forget(rt_work_pool_t *pool, rt_loop_t *loop) {
  pthread_mutex_lock(&pool->mu);
  rt_work_t **link = &pool->head;
  pool->tail = NULL;
  while (*link != NULL) {
    rt_work_t *req = *link;
    if (req->loop == loop) {
      *link = req->next;
      req->next = NULL;
      pool->queued--;
      forget_one(loop, req);
    } else {
      pool->tail = req;
      link = &req->next;
    }
  }
  while (pool_runs_for(pool, loop)) pthread_cond_wait(&pool->idle_cv, &pool->mu);
  pthread_mutex_unlock(&pool->mu);
}

/* Walks every pool even when no request of ours is in flight: a worker
 * may have handed ours back and not yet woken us (see the top). */
void rt__work_forget(rt_loop_t *loop) {
  uint32_t in_flight = loop->work_in_flight;
  pthread_mutex_lock(&pools_mu);
  for (rt_work_pool_t *pool = pools_head; pool != NULL; pool = pool->pools_next)
    pool_forget(pool, loop);
  pthread_mutex_unlock(&pools_mu);
  /* No worker holds one of ours now: what is left was pushed back. */
  rt_work_t *req = take_done(loop);
  while (req != NULL) {
    rt_work_t *next = atomic_load_explicit(&req->done_next, memory_order_relaxed);
    forget_one(loop, req);
    req = next;
  }
  assert(loop->work_in_flight == 0);
  if (in_flight > 0) rt_leftovers_add("work requests", in_flight);
}
