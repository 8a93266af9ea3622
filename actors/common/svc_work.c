/*
 * svc_work.c - CPU-heavy work (password hashing) that must not run on a
 * loop thread, on the runtime's worker threads (rt_work).
 *
 * Life of a job: svc_work() on the loop thread fills the request's own
 * work slot and submits it; nothing is allocated, so the only refusals
 * are a full queue (SVC_WORK_QUEUE_MAX waiting jobs, shared by every loop
 * thread) and workers that are stopping, both answered 503 at once. A
 * worker runs work(arg), touching only what arg carries; then done(req,
 * arg) runs back on the request's loop thread, with its request id in the
 * log lines.
 *
 * The workers stop after rt_run() has returned. A loop that stops with
 * jobs still in flight (a drain past its deadline) takes them with it as
 * it is destroyed: the runtime waits for the running ones and drops the
 * queued ones, so no worker reaches a loop or request that is gone.
 */
#include <errno.h>

#include "svc_internal.h"

/* On a worker thread. */
static void work_run(rt_work_t *w) {
  svc_req_t *req = w->ctx;
  req->work.fn(req->work.arg);
}

/* Back on the request's loop thread. */
static void work_after(rt_work_t *w, int status) {
  svc_req_t *req = w->ctx;
  rt_log_set_request_id(http_request_id(req->ex));
  if (status < 0) {
    svc_reply_error(req, 503, "unavailable", "shutting down");
  } else {
    req->work.done(req, req->work.arg);
  }
  rt_log_set_request_id(NULL);
}

int svc_work(svc_req_t *req, void (*work)(void *arg), void (*done)(svc_req_t *req, void *arg),
             void *arg) {
  svc_th_t *th = (svc_th_t *)req->th;
  req->work.fn = work;
  req->work.done = done;
  req->work.arg = arg;
  int rc = rt_work_submit(th->pub.loop, svc_g.work_pool, &req->work.req, work_run, work_after,
                          req);
  if (rc == RT_E_LIMIT) {
    atomic_fetch_add_explicit(&th->overloaded, 1, memory_order_relaxed);
    svc_reply_error(req, 503, "overloaded", "too much work queued");
    return SVC_E_BUSY;
  }
  if (rc < 0) {
    svc_reply_error(req, 503, "unavailable", "shutting down");
    return rc;
  }
  return 0;
}

int svc_workers_start(uint32_t count) {
  return rt_work_pool_start(&svc_g.work_pool, "svc_work", count, svc_g.work_queue_max);
}

void svc_workers_stop(void) {
  rt_work_pool_stop(svc_g.work_pool);
  svc_g.work_pool = NULL;
}
