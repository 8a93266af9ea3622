/*
 * svc_work.c - worker threads for CPU-heavy work (password hashing) that
 * must not run on a loop thread.
 *
 * Life of a job: svc_work() on the loop thread takes a message from that
 * loop's pool (the reply, so a full pool is found before anything starts)
 * and queues the job; a worker runs work(arg), then sends the message back
 * to the loop thread's actor, the only thing it does with the loop's
 * objects; there done(req, arg) runs and the job is freed.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>

#include "svc_internal.h"

#define WORKERS_MAX 16

typedef struct svc_job {
  struct svc_job *next;
  svc_req_t *req;
  svc_th_t *th;
  void (*work)(void *arg);
  void (*done)(svc_req_t *req, void *arg);
  void *arg;
  rt_msg_t *msg; /* taken on the loop thread, sent back by the worker */
} svc_job_t;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  svc_job_t *head;
  svc_job_t *tail;
  uint32_t queued;
  bool stop;
  pthread_t tids[WORKERS_MAX];
  uint32_t started;
} work_q = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER};

static void *worker_main(void *arg) {
  (void)arg;
  pthread_mutex_lock(&work_q.mu);
  for (;;) {
    while (work_q.head == NULL && !work_q.stop) pthread_cond_wait(&work_q.cv, &work_q.mu);
    if (work_q.head == NULL) break;
    svc_job_t *job = work_q.head;
    work_q.head = job->next;
    if (work_q.head == NULL) work_q.tail = NULL;
    work_q.queued--;
    pthread_mutex_unlock(&work_q.mu);
    job->work(job->arg);
    rt_actor_send(&job->th->actor, job->msg);
    pthread_mutex_lock(&work_q.mu);
  }
  pthread_mutex_unlock(&work_q.mu);
  return NULL;
}

int svc_work(svc_req_t *req, void (*work)(void *arg), void (*done)(svc_req_t *req, void *arg),
             void *arg) {
  svc_th_t *th = (svc_th_t *)req->th;
  svc_job_t *job = calloc(1, sizeof *job);
  rt_msg_t *msg = job ? rt_msg_new(SVC_MSG_WORK_DONE, 0) : NULL;
  if (job == NULL || msg == NULL) {
    free(job);
    svc_reply_error(req, 503, "overloaded", "out of memory");
    return -ENOMEM;
  }
  *job = (svc_job_t){.req = req, .th = th, .work = work, .done = done, .arg = arg, .msg = msg};
  msg->ptr = job;
  pthread_mutex_lock(&work_q.mu);
  bool full = work_q.queued >= svc_g.work_queue_max;
  if (!full) {
    if (work_q.tail != NULL) {
      work_q.tail->next = job;
    } else {
      work_q.head = job;
    }
    work_q.tail = job;
    work_q.queued++;
    pthread_cond_signal(&work_q.cv);
  }
  pthread_mutex_unlock(&work_q.mu);
  if (full) {
    rt_msg_free(msg);
    free(job);
    atomic_fetch_add_explicit(&th->overloaded, 1, memory_order_relaxed);
    svc_reply_error(req, 503, "overloaded", "too much work queued");
    return SVC_E_BUSY;
  }
  return 0;
}

void svc_work_done(rt_msg_t *msg) {
  svc_job_t *job = msg->ptr;
  svc_req_t *req = job->req;
  rt_log_set_request_id(http_request_id(req->ex));
  job->done(req, job->arg);
  rt_log_set_request_id(NULL);
  free(job);
}

int svc_workers_start(uint32_t count) {
  if (count > WORKERS_MAX) count = WORKERS_MAX;
  for (uint32_t i = 0; i < count; i++) {
    int rc = -pthread_create(&work_q.tids[i], NULL, worker_main, NULL);
    if (rc < 0) return rc;
    work_q.started++;
  }
  return 0;
}

void svc_workers_stop(void) {
  pthread_mutex_lock(&work_q.mu);
  work_q.stop = true;
  pthread_cond_broadcast(&work_q.cv);
  pthread_mutex_unlock(&work_q.mu);
  for (uint32_t i = 0; i < work_q.started; i++) pthread_join(work_q.tids[i], NULL);
  /* Jobs left by a drain that hit its deadline: their loops are gone. */
  while (work_q.head != NULL) {
    svc_job_t *job = work_q.head;
    work_q.head = job->next;
    free(job);
  }
}
