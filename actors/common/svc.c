/*
 * svc.c - the service skeleton: configuration, start-up, loop threads,
 * request dispatch, answers, database plumbing, worker threads, metrics
 * and graceful drain.
 *
 * Life of a request:
 *   http server -> svc_dispatch (a svc_req_t from the thread's fixed pool;
 *   identity, role and body checks) -> the route's handler -> zero or more
 *   svc_db() / svc_work() / HTTP client round trips, each resuming the
 *   handler's code in a callback on the same thread -> exactly one
 *   svc_reply_*(), which answers the exchange and gives the svc_req_t back.
 *
 * Drain, per loop thread: the HTTP server stops accepting (its own hook);
 * ours waits until no request is in flight, closes the database pool, lets
 * the service close its clients, and reports after a short grace period in
 * which their close operations complete.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc.h"
#include "svc_internal.h"

#define THREADS_MAX 64
#define WORKERS_MAX 16
#define DRAIN_DEADLINE_MS 15000
#define DRAIN_GRACE_MS 50   /* for close ops of the service's own clients */
#define READY_DEADLINE_MS 1000
#define PRUNE_PERIOD_MS (10u * 60u * 1000u)

enum { SVC_MSG_WORK_DONE = RT_MSG_USER + 1 };

/* The loop thread's state; the public part first. */
typedef struct svc_th {
  svc_thread_t pub;
  rt_pool_t reqs;
  uint32_t inflight;
  bool draining;
  int drain_stage;        /* 0 serving, 1 pool closing, 2 grace */
  rt_actor_t actor;       /* receives worker completions */
  rt_timer_t grace_timer;
  rt_timer_t prune_timer;
  svc_relay_t *relay;     /* thread 0 with BUS_ADDR on */
  _Atomic uint64_t requests;
  _Atomic uint64_t auth_rejected;
  _Atomic uint64_t overloaded;
  _Atomic uint32_t inflight_gauge;
} svc_th_t;

static struct {
  const svc_def_t *def;
  svc_config_t cfg;
  http_server_config_t http;
  rt_pg_config_t pg;
  http_router_t router;
  uint32_t reqs_max;
  uint32_t workers;
  uint32_t work_queue_max;
  uint32_t db_wait_ms;
  svc_th_t *threads[THREADS_MAX];
  /* Set by each loop thread once it is fully set up; threads finish their
   * set-up in any order, so metrics look at the ready ones only. */
  _Atomic(svc_th_t *) ready[THREADS_MAX];
} g;

static _Thread_local svc_th_t *tls_th;

/* Statements of the skeleton itself, registered before the service's. */
int svc_stmt_idem_claim, svc_stmt_idem_finish, svc_stmt_outbox;
int svc_stmt_relay_scan, svc_stmt_relay_mark, svc_stmt_relay_count;
static int stmt_ready, stmt_prune;

static const svc_stmt_t own_stmts[] = {
    {&svc_stmt_idem_claim,
     "INSERT INTO idempotency_keys (scope, key, request_hash, status, response_body, created_at)"
     " SELECT $1, $2, $3, 0, '', now() WHERE $2::text IS NOT NULL"
     " ON CONFLICT (scope, key) DO NOTHING",
     3},
    /* The UPDATE's rows are visible only through its RETURNING (a CTE's
     * changes are not seen by the rest of its statement), hence the union. */
    {&svc_stmt_idem_finish,
     "WITH u AS (UPDATE idempotency_keys SET status = $3::int, response_body = $4"
     "  WHERE scope = $1 AND key = $2 AND status = 0"
     "  RETURNING status, response_body, request_hash)"
     " SELECT status, response_body, request_hash FROM u"
     " UNION ALL"
     " SELECT k.status, k.response_body, k.request_hash FROM idempotency_keys k"
     "  WHERE k.scope = $1 AND k.key = $2 AND NOT EXISTS (SELECT 1 FROM u)",
     4},
    {&svc_stmt_outbox,
     "INSERT INTO outbox (id, topic, key, payload, created_at)"
     " VALUES ($1::uuid, $2, $3, $4::jsonb, now())",
     4},
    {&stmt_ready, "SELECT 1", 0},
    {&stmt_prune,
     "DELETE FROM idempotency_keys WHERE ctid IN (SELECT ctid FROM idempotency_keys"
     " WHERE created_at < now() - make_interval(hours => $1::int) LIMIT 1000)",
     1},
    /* The relay's round (svc_relay.c): the oldest unpublished rows. */
    {&svc_stmt_relay_scan,
     "SELECT id::text, topic, key, payload::text"
     " FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1::int",
     1},
    /* The backlog for /metrics, now and then (it reads the whole backlog). */
    {&svc_stmt_relay_count, "SELECT count(*) FROM outbox WHERE published_at IS NULL", 0},
    {&svc_stmt_relay_mark,
     "UPDATE outbox SET published_at = now()"
     " WHERE id = ANY($1::uuid[]) AND published_at IS NULL",
     1},
};

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

const char *svc_strerror(int err) {
  switch (err) {
  case SVC_E_AUTH_MISSING: return "identity missing";
  case SVC_E_AUTH_BAD: return "identity invalid";
  case SVC_E_MIGRATION: return "migration failed";
  case SVC_E_DB_WAIT: return "database not reachable at start-up";
  case SVC_E_BUSY: return "worker queue full";
  default: return "unknown service error";
  }
}

const svc_config_t *svc_config(void) { return &g.cfg; }

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static void drain_step(svc_th_t *th);

static void req_release(svc_req_t *req) {
  svc_th_t *th = (svc_th_t *)req->th;
  if (req->body != NULL) json_decref(req->body);
  th->inflight--;
  atomic_store_explicit(&th->inflight_gauge, th->inflight, memory_order_relaxed);
  rt_pool_put(&th->reqs, req);
  if (th->draining) drain_step(th);
}

static void req_log(const svc_req_t *req, int status) {
  uint64_t us = (rt_now_ns() - req->started_ns) / 1000u;
  const char *pattern = req->route ? req->route->pattern : "";
  rt_log(status >= 500 ? RT_LOG_WARN : RT_LOG_DEBUG, "request",
         (const rt_log_field_t[]){RT_LF_STR("method", req->msg->method_name),
                                  RT_LF_STR("route", pattern), RT_LF_INT("status", status),
                                  RT_LF_INT("us", us)},
         4);
}

void svc_reply_json(svc_req_t *req, int status, json_t *body) {
  if (body == NULL) {
    svc_reply_error(req, 500, "internal", "response could not be built");
    return;
  }
  rt_log_set_request_id(http_request_id(req->ex));
  req_log(req, status);
  http_respond_json(req->ex, status, body, NULL);
  json_decref(body);
  rt_log_set_request_id(NULL);
  req_release(req);
}

void svc_reply_raw(svc_req_t *req, int status, const char *body, size_t len,
                   const char *extra_headers) {
  rt_log_set_request_id(http_request_id(req->ex));
  req_log(req, status);
  http_respond(req->ex, status, "application/json", body, len, extra_headers);
  rt_log_set_request_id(NULL);
  req_release(req);
}

void svc_reply_error(svc_req_t *req, int status, const char *code,
                     const char *message) {
  rt_log_set_request_id(http_request_id(req->ex));
  req_log(req, status);
  http_respond_error(req->ex, status, code, message);
  rt_log_set_request_id(NULL);
  req_release(req);
}

void svc_reply_db_error(svc_req_t *req, int err, const rt_pg_batch_t *batch) {
  switch (err) {
  case RT_PG_E_POOL_FULL:
  case RT_PG_E_UNAVAILABLE:
  case RT_PG_E_CONN_LOST:
  case RT_PG_E_TIMEOUT:
  case RT_PG_E_STATEMENT_TIMEOUT:
  case RT_PG_E_CLOSED:
  case RT_PG_E_SERIALIZATION:
  case RT_PG_E_DEADLOCK:
  case RT_E_LIMIT:
    svc_reply_error(req, 503, "unavailable", rt_strerror(err));
    return;
  default:
    break;
  }
  /* SQLSTATE and constraint only: messages may quote the data. */
  const rt_pg_error_t *e = batch ? rt_pg_error(batch) : NULL;
  rt_log_set_request_id(http_request_id(req->ex));
  RT_ERROR("database error", RT_LF_STR("route", req->route ? req->route->pattern : ""),
           RT_LF_STR("error", rt_strerror(err)), RT_LF_STR("sqlstate", e ? e->sqlstate : ""),
           RT_LF_STR("constraint", e ? e->constraint : ""),
           RT_LF_INT("stmt", e ? e->stmt_index : -1));
  svc_reply_error(req, 500, "internal", "internal error");
}

const char *svc_param(const svc_req_t *req, const char *name) {
  return http_param(req->ex, name);
}

const char *svc_header(const svc_req_t *req, const char *name) {
  return http_msg_header(req->msg, name);
}

bool svc_has_role(const svc_req_t *req, uint32_t roles) {
  return req->who.present && (req->who.roles & roles) != 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

int svc_query(const svc_req_t *req, const char *name, char *out, size_t out_bytes) {
  const char *q = req->msg->query;
  size_t name_len = strlen(name);
  while (q != NULL && *q != '\0') {
    const char *amp = strchr(q, '&');
    size_t part = amp ? (size_t)(amp - q) : strlen(q);
    if (part > name_len && strncmp(q, name, name_len) == 0 && q[name_len] == '=') {
      const char *v = q + name_len + 1, *end = q + part;
      size_t n = 0;
      for (; v < end; v++) {
        char ch = *v;
        if (ch == '+') {
          ch = ' ';
        } else if (ch == '%') {
          if (end - v < 3 || hexval(v[1]) < 0 || hexval(v[2]) < 0) return -EINVAL;
          ch = (char)(hexval(v[1]) * 16 + hexval(v[2]));
          v += 2;
        }
        if (ch == '\0' || n + 1 >= out_bytes) return -EINVAL;
        out[n++] = ch;
      }
      out[n] = '\0';
      return (int)n;
    }
    q = amp ? amp + 1 : NULL;
  }
  return -ENOENT;
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static bool req_authorise(svc_req_t *req) {
  const svc_route_t *route = req->route;
  if (route->auth == SVC_AUTH_NONE) return true;
  svc_th_t *th = (svc_th_t *)req->th;
  int rc = svc_auth_verify(req->msg, g.cfg.auth_key, g.cfg.auth_key_bytes,
                           g.cfg.auth_max_skew_s, (int64_t)time(NULL), &req->who);
  if (rc == SVC_E_AUTH_MISSING && route->auth == SVC_AUTH_OPTIONAL) {
    memset(&req->who, 0, sizeof req->who);
    return true;
  }
  if (rc < 0) {
    atomic_fetch_add_explicit(&th->auth_rejected, 1, memory_order_relaxed);
    RT_INFO("identity refused", RT_LF_STR("route", route->pattern),
            RT_LF_STR("why", svc_strerror(rc)));
    svc_reply_error(req, 401, "unauthenticated",
                    rc == SVC_E_AUTH_MISSING ? "identity headers missing"
                                             : "identity headers invalid or expired");
    return false;
  }
  if (route->roles != 0 && (req->who.roles & route->roles) == 0) {
    svc_reply_error(req, 403, "forbidden", "role not allowed");
    return false;
  }
  return true;
}

static void svc_dispatch(http_exchange_t *ex, void *arg) {
  const svc_route_t *route = arg;
  svc_th_t *th = tls_th;
  atomic_fetch_add_explicit(&th->requests, 1, memory_order_relaxed);
  svc_req_t *req = rt_pool_get(&th->reqs); /* zeroed */
  if (req == NULL) {
    atomic_fetch_add_explicit(&th->overloaded, 1, memory_order_relaxed);
    http_respond_error(ex, 503, "overloaded", "too many requests in flight");
    return;
  }
  th->inflight++;
  atomic_store_explicit(&th->inflight_gauge, th->inflight, memory_order_relaxed);
  req->ex = ex;
  req->th = &th->pub;
  req->msg = http_request(ex);
  req->route = route;
  req->started_ns = rt_now_ns();
  if (!req_authorise(req)) return;
  if (route->json_body) {
    svc_json_error_t err;
    if (svc_json_parse(req->msg->body, req->msg->body_len, &req->body, &err) < 0) {
      svc_reply_json_error(req, &err);
      return;
    }
  }
  route->fn(req);
}

/* ------------------------------------------------------------------------ */
/* Database                                                                 */
/* ------------------------------------------------------------------------ */

rt_pg_batch_t *svc_batch(svc_req_t *req) {
  rt_pg_batch_t *b = rt_pg_batch_new(req->th->pool);
  if (b == NULL) svc_reply_error(req, 503, "unavailable", "too many database requests");
  return b;
}

static void db_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_req_t *req = ctx;
  rt_log_set_request_id(http_request_id(req->ex));
  svc_db_fn fn = req->db_fn;
  req->db_fn = NULL;
  fn(req, b, err);
  rt_log_set_request_id(NULL);
}

void svc_db(svc_req_t *req, rt_pg_batch_t *b, svc_db_fn fn) {
  req->db_fn = fn;
  int rc = rt_pg_submit(b, 0, db_done, req);
  if (rc < 0) svc_reply_db_error(req, rc, NULL);
}

/* ------------------------------------------------------------------------ */
/* Worker threads                                                           */
/* ------------------------------------------------------------------------ */

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
    /* The message was allocated on the loop thread: sending it back is
     * the only thing this thread does with the loop's objects. */
    rt_actor_send(&job->th->actor, job->msg);
    pthread_mutex_lock(&work_q.mu);
  }
  pthread_mutex_unlock(&work_q.mu);
  return NULL;
}

int svc_work(svc_req_t *req, void (*work)(void *arg),
             void (*done)(svc_req_t *req, void *arg), void *arg) {
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
  bool full = work_q.queued >= g.work_queue_max;
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

static int th_actor(rt_actor_t *self, rt_msg_t *msg) {
  if (msg->type != SVC_MSG_WORK_DONE) return 0;
  svc_job_t *job = msg->ptr;
  svc_req_t *req = job->req;
  rt_log_set_request_id(http_request_id(req->ex));
  job->done(req, job->arg);
  rt_log_set_request_id(NULL);
  free(job);
  return 0;
}

static int workers_start(void) {
  for (uint32_t i = 0; i < g.workers; i++) {
    int rc = -pthread_create(&work_q.tids[i], NULL, worker_main, NULL);
    if (rc < 0) return rc;
    work_q.started++;
  }
  return 0;
}

static void workers_stop(void) {
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

/* ------------------------------------------------------------------------ */
/* Health, readiness, metrics                                               */
/* ------------------------------------------------------------------------ */

static void on_healthz(svc_req_t *req) {
  svc_reply_raw(req, 200, "{\"status\":\"up\"}", 15, NULL);
}

static void ready_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_error(req, 503, "db_unavailable", rt_strerror(err));
    return;
  }
  svc_reply_raw(req, 200, "{\"ready\":true}", 14, NULL);
}

static void on_readyz(svc_req_t *req) {
  svc_th_t *th = (svc_th_t *)req->th;
  if (th->draining) {
    svc_reply_error(req, 503, "draining", "shutting down");
    return;
  }
  rt_pg_batch_t *b = rt_pg_batch_new(th->pub.pool);
  if (b == NULL) {
    svc_reply_error(req, 503, "db_unavailable", "database pool exhausted");
    return;
  }
  rt_pg_add(b, stmt_ready, 0, NULL);
  req->db_fn = ready_done;
  int rc = rt_pg_submit(b, READY_DEADLINE_MS, db_done, req);
  if (rc < 0) svc_reply_error(req, 503, "db_unavailable", rt_strerror(rc));
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

typedef struct pg_sum {
  uint64_t batches, ok, failed, statements, full, down, timeouts, lost, connects,
      connect_failures, flushes, latency_us;
  uint64_t up, queued, in_flight;
} pg_sum_t;

static void pg_sum(pg_sum_t *s, svc_th_t *const *ths, uint32_t n) {
  memset(s, 0, sizeof *s);
  for (uint32_t i = 0; i < n; i++) {
    const rt_pg_stats_t *st = rt_pg_pool_stats(ths[i]->pub.pool);
    s->batches += LOAD(st->batches);
    s->ok += LOAD(st->batches_ok);
    s->failed += LOAD(st->batches_failed);
    s->statements += LOAD(st->statements);
    s->full += LOAD(st->rejected_full);
    s->down += LOAD(st->rejected_down);
    s->timeouts += LOAD(st->timeouts);
    s->lost += LOAD(st->conn_lost);
    s->connects += LOAD(st->connects);
    s->connect_failures += LOAD(st->connect_failures);
    s->flushes += LOAD(st->flushes);
    s->latency_us += LOAD(st->latency_us_sum);
    s->up += LOAD(st->conns_up);
    s->queued += LOAD(st->queued);
    s->in_flight += LOAD(st->in_flight);
  }
}

static int metric(http_buf_t *out, const char *name, const char *type,
                  const char *help, const char *labels, double value) {
  int rc = 0;
  if (type != NULL) rc = http_buf_appendf(out, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
  if (rc == 0) rc = http_buf_appendf(out, "%s%s %.17g\n", name, labels ? labels : "", value);
  return rc;
}

static int metrics_render(http_buf_t *out) {
  svc_th_t *ths[THREADS_MAX];
  http_server_t *servers[THREADS_MAX];
  uint32_t n = 0;
  for (uint32_t i = 0; i < THREADS_MAX; i++) {
    svc_th_t *th = atomic_load(&g.ready[i]);
    if (th == NULL) continue;
    ths[n] = th;
    servers[n++] = th->pub.server;
  }
  int rc = http_server_metrics(out, "http_", servers, n);
  pg_sum_t s;
  pg_sum(&s, ths, n);
  uint64_t requests = 0, auth = 0, overloaded = 0, inflight = 0;
  for (uint32_t i = 0; i < n; i++) {
    requests += LOAD(ths[i]->requests);
    auth += LOAD(ths[i]->auth_rejected);
    overloaded += LOAD(ths[i]->overloaded);
    inflight += LOAD(ths[i]->inflight_gauge);
  }
  struct {
    const char *name, *type, *help, *labels;
    double v;
  } m[] = {
      {"svc_requests_total", "counter", "Requests routed to handlers.", NULL, (double)requests},
      {"svc_requests_in_flight", "gauge", "Requests being handled.", NULL, (double)inflight},
      {"svc_auth_rejected_total", "counter", "Requests refused with 401.", NULL, (double)auth},
      {"svc_overloaded_total", "counter", "Requests refused with 503 for lack of room.", NULL,
       (double)overloaded},
      {"pg_batches_total", "counter", "Database batches (transactions) submitted.", NULL,
       (double)s.batches},
      {"pg_batches_done_total", "counter", "Database batches answered, by outcome.",
       "{outcome=\"ok\"}", (double)s.ok},
      {"pg_batches_done_total", NULL, NULL, "{outcome=\"error\"}", (double)s.failed},
      {"pg_statements_total", "counter", "Statements sent.", NULL, (double)s.statements},
      {"pg_rejected_total", "counter", "Batches refused at submission.", "{reason=\"full\"}",
       (double)s.full},
      {"pg_rejected_total", NULL, NULL, "{reason=\"down\"}", (double)s.down},
      {"pg_timeouts_total", "counter", "Batch deadlines that passed.", NULL, (double)s.timeouts},
      {"pg_conn_lost_total", "counter", "Batches lost with their connection.", NULL,
       (double)s.lost},
      {"pg_connects_total", "counter", "Connections made.", NULL, (double)s.connects},
      {"pg_connect_failures_total", "counter", "Connection attempts that failed.", NULL,
       (double)s.connect_failures},
      {"pg_writes_total", "counter", "Pipeline writes (round trips shared by batches).", NULL,
       (double)s.flushes},
      {"pg_batch_seconds_sum", "counter", "Time from submission to answer, summed.", NULL,
       (double)s.latency_us / 1e6},
      {"pg_connections_up", "gauge", "Connections ready.", NULL, (double)s.up},
      {"pg_queued", "gauge", "Batches waiting for a pipeline.", NULL, (double)s.queued},
      {"pg_in_flight", "gauge", "Batches in pipelines.", NULL, (double)s.in_flight},
      {"outbox_published_total", "counter", "Outbox rows published and marked.", NULL,
       (double)LOAD(svc_bus_stats.relay_published)},
      {"outbox_sent_total", "counter", "Outbox rows handed to the bus client (re-sends included).",
       NULL, (double)LOAD(svc_bus_stats.relay_sent)},
      {"outbox_pending", "gauge", "Unpublished outbox rows at the relay's last scan.", NULL,
       (double)LOAD(svc_bus_stats.relay_pending)},
      {"outbox_errors_total", "counter", "Relay scans, marks or publishes that failed.", NULL,
       (double)LOAD(svc_bus_stats.relay_errors)},
      {"outbox_last_error_timestamp_seconds", "gauge", "When the relay last failed (0: never).",
       NULL, (double)LOAD(svc_bus_stats.relay_last_error_s)},
      {"outbox_notifies_total", "counter", "Outbox NOTIFYs received by the relay.", NULL,
       (double)LOAD(svc_bus_stats.relay_notifies)},
      {"inbox_events_total", "counter", "Delivered events, by outcome.", "{outcome=\"applied\"}",
       (double)LOAD(svc_bus_stats.inbox_applied)},
      {"inbox_events_total", NULL, NULL, "{outcome=\"duplicate\"}",
       (double)LOAD(svc_bus_stats.inbox_duplicates)},
      {"inbox_events_total", NULL, NULL, "{outcome=\"failed\"}",
       (double)LOAD(svc_bus_stats.inbox_failed)},
  };
  for (size_t i = 0; i < sizeof m / sizeof m[0] && rc == 0; i++)
    rc = metric(out, m[i].name, m[i].type, m[i].help, m[i].labels, m[i].v);
  return rc;
}

static void on_metrics(svc_req_t *req) {
  http_buf_t out;
  if (http_buf_init(&out, 8192, 1 << 20) < 0) {
    svc_reply_error(req, 503, "overloaded", "out of memory");
    return;
  }
  int rc = metrics_render(&out);
  if (rc < 0) {
    svc_reply_error(req, 500, "internal", "metrics too large");
  } else {
    rt_log_set_request_id(http_request_id(req->ex));
    http_respond(req->ex, 200, "text/plain; version=0.0.4", out.data, out.len, NULL);
    rt_log_set_request_id(NULL);
    req_release(req);
  }
  http_buf_deinit(&out);
}

static const svc_route_t health_routes[] = {
    {"GET", "/healthz", on_healthz, SVC_AUTH_NONE, 0, false},
    {"GET", "/readyz", on_readyz, SVC_AUTH_NONE, 0, false},
    {"GET", "/metrics", on_metrics, SVC_AUTH_NONE, 0, false},
};

/* ------------------------------------------------------------------------ */
/* Idempotency keys: pruning                                                */
/* ------------------------------------------------------------------------ */

static void prune_done(rt_pg_batch_t *b, int err, void *ctx) {
  if (err != 0) {
    RT_WARN("idempotency key pruning failed", RT_LF_STR("error", rt_strerror(err)));
  } else if (rt_pg_affected(b, 0) > 0) {
    RT_INFO("idempotency keys pruned", RT_LF_INT("rows", rt_pg_affected(b, 0)));
  }
}

static void prune_tick(rt_timer_t *t) {
  svc_th_t *th = t->ctx;
  if (th->draining || !rt_pg_pool_up(th->pub.pool)) return;
  rt_pg_batch_t *b = rt_pg_batch_new(th->pub.pool);
  if (b == NULL) return;
  char hours[16];
  snprintf(hours, sizeof hours, "%d", SVC_IDEM_KEEP_HOURS);
  const char *vals[] = {hours};
  rt_pg_add(b, stmt_prune, 1, vals);
  rt_pg_submit(b, 30000, prune_done, th);
}

/* ------------------------------------------------------------------------ */
/* Threads and drain                                                        */
/* ------------------------------------------------------------------------ */

static void drain_grace(rt_timer_t *t) {
  svc_th_t *th = t->ctx;
  rt_loop_drained(th->pub.loop);
}

static void pool_closed(void *arg) {
  svc_th_t *th = arg;
  th->drain_stage = 2;
  if (g.def->thread_drain != NULL) g.def->thread_drain(&th->pub);
  svc_relay_close(th->relay);
  rt_timer_start(th->pub.loop, &th->grace_timer, DRAIN_GRACE_MS, 0);
}

static void drain_step(svc_th_t *th) {
  if (!th->draining || th->inflight > 0 || th->drain_stage != 0) return;
  th->drain_stage = 1;
  rt_pg_pool_close(th->pub.pool, pool_closed, th);
}

static void on_drain(rt_loop_t *loop, void *arg) {
  svc_th_t *th = arg;
  th->draining = true;
  rt_timer_stop(loop, &th->prune_timer);
  svc_relay_stop(th->relay);
  drain_step(th);
}

static int pool_setup(svc_th_t *th) {
  rt_pg_config_t cfg = g.pg;
  cfg.url = g.cfg.db_url;
  cfg.name = g.def->name;
  int rc = rt_pg_pool_create(&th->pub.pool, th->pub.loop, &cfg);
  for (size_t i = 0; rc == 0 && i < sizeof own_stmts / sizeof own_stmts[0]; i++) {
    rc = rt_pg_prepare(th->pub.pool, own_stmts[i].sql, own_stmts[i].nparams);
    if (rc >= 0) *own_stmts[i].id = rc, rc = 0;
  }
  for (size_t i = 0; rc == 0 && i < g.def->stmts_count; i++) {
    rc = rt_pg_prepare(th->pub.pool, g.def->stmts[i].sql, g.def->stmts[i].nparams);
    if (rc >= 0) *g.def->stmts[i].id = rc, rc = 0;
  }
  if (rc == 0) rc = rt_pg_pool_start(th->pub.pool);
  return rc;
}

/* Thread 0: the bus client, the outbox relay on it, the service's
 * subscriptions; then connect. */
static int bus_setup(svc_th_t *th) {
  bus_client_config_t bc = {
      .host = g.cfg.bus_host,
      .port = g.cfg.bus_port,
      .name = g.def->name,
  };
  int rc = svc_relay_create(&th->relay, &th->pub, &bc, g.cfg.db_url);
  if (rc == 0 && g.def->bus_init != NULL) rc = g.def->bus_init(&th->pub, th->pub.bus);
  if (rc == 0) rc = bus_client_start(th->pub.bus);
  if (rc < 0) {
    RT_ERROR("bus set-up failed", RT_LF_STR("error", rt_strerror(rc)));
  } else {
    RT_INFO("outbox relay started", RT_LF_STR("bus_host", g.cfg.bus_host),
            RT_LF_INT("bus_port", g.cfg.bus_port));
  }
  return rc;
}

static int thread_setup(rt_loop_t *loop, uint32_t index, void *arg) {
  svc_th_t *th = calloc(1, sizeof *th);
  if (th == NULL) return -ENOMEM;
  th->pub.index = index;
  th->pub.loop = loop;
  g.threads[index] = th; /* freed by svc_main after rt_run */
  tls_th = th;
  int rc = rt_pool_init(&th->reqs, "svc_reqs", sizeof(svc_req_t), g.reqs_max);
  if (rc < 0) return rc;
  rt_actor_init(&th->actor, loop, "svc", th_actor, th);
  rt_timer_init(&th->grace_timer, drain_grace, th);
  rt_timer_init(&th->prune_timer, prune_tick, th);
  rc = pool_setup(th);
  if (rc < 0) {
    RT_ERROR("database pool set-up failed", RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  http_server_config_t hc = g.http;
  hc.host = g.cfg.host;
  hc.port = (uint16_t)g.cfg.port;
  rc = http_server_create(&th->pub.server, loop, &hc, &g.router);
  if (rc == 0) rc = http_server_start(th->pub.server);
  if (rc < 0) {
    RT_ERROR("cannot listen", RT_LF_STR("host", g.cfg.host), RT_LF_INT("port", g.cfg.port),
             RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  /* After the server's own hook: it stops accepting first. */
  rc = rt_loop_on_drain(loop, on_drain, th);
  if (rc == 0 && g.def->thread_init != NULL) rc = g.def->thread_init(&th->pub);
  if (rc == 0 && index == 0 && g.cfg.bus_on) rc = bus_setup(th);
  if (rc < 0) return rc;
  if (index == 0) rt_timer_start(loop, &th->prune_timer, 60000, PRUNE_PERIOD_MS);
  atomic_store(&g.ready[index], th);
  if (index == 0) {
    RT_INFO("listening", RT_LF_STR("host", g.cfg.host),
            RT_LF_INT("port", http_server_port(th->pub.server)),
            RT_LF_INT("threads", g.cfg.threads));
  }
  return 0;
}

static void threads_free(void) {
  for (uint32_t i = 0; i < THREADS_MAX; i++) {
    svc_th_t *th = g.threads[i];
    if (th == NULL) continue;
    atomic_store(&g.ready[i], NULL);
    http_server_destroy(th->pub.server);
    svc_relay_free(th->relay);
    rt_pg_pool_destroy(th->pub.pool);
    if (th->reqs.mem != NULL) {
      /* A drain that hit its deadline leaves requests behind. */
      if (th->reqs.in_use == 0) {
        rt_pool_deinit(&th->reqs);
      } else {
        RT_WARN("requests still in flight at exit", RT_LF_INT("count", th->reqs.in_use));
        free(th->reqs.mem);
      }
    }
    free(th);
    g.threads[i] = NULL;
  }
}

/* ------------------------------------------------------------------------ */
/* Configuration and main                                                   */
/* ------------------------------------------------------------------------ */

static void usage(FILE *f, const svc_def_t *def) {
  const char *P = def->env_prefix;
  fprintf(f,
          "usage: %s [--migrate] [--statements] [--help]\n"
          "\n"
          "The %s service. Applies its database migrations, then serves HTTP.\n"
          "  --migrate      apply the migrations and exit\n"
          "  --statements   print the prepared statements (id, parameters, SQL) and exit\n"
          "\n"
          "Environment:\n"
          "  %s_HOST               listen address              (127.0.0.1)\n"
          "  %s_PORT               listen port                 (%u)\n"
          "  %s_THREADS            loop threads                (1)\n"
          "  %s_DB_URL             PostgreSQL URL              (required)\n"
          "  AUTH_HMAC_KEY         key of the identity headers (required, >= 32 bytes)\n"
          "  AUTH_MAX_SKEW         identity timestamp window   (60s)\n"
          "  DB_CONNS              connections per thread      (4)\n"
          "  DB_PIPELINE_DEPTH     transactions in flight per connection (64)\n"
          "  DB_QUEUE_MAX          waiting transactions per thread, 503 above (1024)\n"
          "  DB_STATEMENT_TIMEOUT  server-side, per statement  (5s)\n"
          "  DB_DEADLINE           per transaction, client side (10s)\n"
          "  DB_CONNECT_TIMEOUT    (5s)\n"
          "  DB_WAIT               wait for the database at start-up (30s)\n"
          "  SVC_REQUESTS_MAX      requests in flight per thread, 503 above (4096)\n"
          "  SVC_WORKERS           worker threads for CPU-heavy work (2)\n"
          "  BUS_ADDR              busd, host:port, or off     (127.0.0.1:7400)\n"
          "  LOG_LEVEL             debug|info|warn|error       (info)\n"
          "  LOG_HASH_KEY          key of hashed log fields    (random per run)\n"
          "  HTTP_*                server limits, as bench_httpd --help lists\n"
          "%s"
          "\n"
          "Routes: GET /healthz (up), GET /readyz (database reachable), GET /metrics.\n"
          "SIGTERM or SIGINT: stop accepting, finish requests in flight, exit 0.\n",
          def->name, def->name, P, P, def->default_port, P, P, def->usage_env ? def->usage_env : "");
}

static const char *env_name(const char *suffix) {
  static char name[96];
  snprintf(name, sizeof name, "%s_%s", g.def->env_prefix, suffix);
  return name;
}

/* BUS_ADDR: "off", or host:port with a numeric host (no blocking name
 * look-up on the loop) or localhost. */
static int bus_config(void) {
  const char *addr = rt_env_str("BUS_ADDR", "127.0.0.1:7400");
  if (strcmp(addr, "off") == 0) {
    g.cfg.bus_on = false;
    return 0;
  }
  const char *colon = strrchr(addr, ':');
  char *end = NULL;
  unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
  if (colon == NULL || colon == addr || (size_t)(colon - addr) >= sizeof g.cfg.bus_host ||
      *end != '\0' || port == 0 || port > 65535) {
    RT_ERROR("BUS_ADDR must be host:port or off", RT_LF_STR("value", addr));
    return RT_E_CONFIG;
  }
  snprintf(g.cfg.bus_host, sizeof g.cfg.bus_host, "%.*s", (int)(colon - addr), addr);
  g.cfg.bus_port = (uint16_t)port;
  g.cfg.bus_on = true;
  return 0;
}

static int load_config(void) {
  g.cfg.host = rt_env_str(env_name("HOST"), "127.0.0.1");
  int rc = rt_env_u32(env_name("PORT"), g.def->default_port, 0, 65535, &g.cfg.port);
  if (rc == 0) rc = rt_env_u32(env_name("THREADS"), 1, 1, THREADS_MAX, &g.cfg.threads);
  g.cfg.db_url = rt_env_str(env_name("DB_URL"), NULL);
  if (rc == 0 && g.cfg.db_url == NULL) {
    RT_ERROR("database URL not set", RT_LF_STR("variable", env_name("DB_URL")));
    rc = RT_E_CONFIG;
  }
  const char *key = rt_env_str("AUTH_HMAC_KEY", NULL);
  if (rc == 0 && (key == NULL || strlen(key) < 32)) {
    RT_ERROR("AUTH_HMAC_KEY must be set to at least 32 bytes", RT_LF_BOOL("set", key != NULL));
    rc = RT_E_CONFIG;
  }
  if (rc == 0) {
    g.cfg.auth_key = (const uint8_t *)key;
    g.cfg.auth_key_bytes = strlen(key);
  }
  uint32_t skew_ms = 0;
  if (rc == 0) rc = rt_env_ms("AUTH_MAX_SKEW", 60000, &skew_ms);
  g.cfg.auth_max_skew_s = skew_ms / 1000u;
  if (rc == 0) rc = rt_env_u32("SVC_REQUESTS_MAX", 4096, 16, 1u << 20, &g.reqs_max);
  if (rc == 0) rc = rt_env_u32("SVC_WORKERS", 2, 1, WORKERS_MAX, &g.workers);
  if (rc == 0) rc = rt_env_u32("SVC_WORK_QUEUE_MAX", 256, 1, 1u << 16, &g.work_queue_max);
  if (rc == 0) rc = rt_env_ms("DB_WAIT", 30000, &g.db_wait_ms);
  if (rc == 0) rc = bus_config();
  if (rc == 0) rc = rt_pg_config_from_env(&g.pg, "DB");
  if (rc == 0) rc = http_server_config_from_env(&g.http);
  return rc;
}

static int build_router(void) {
  http_router_init(&g.router);
  int rc = 0;
  for (size_t i = 0; rc == 0 && i < sizeof health_routes / sizeof health_routes[0]; i++)
    rc = http_router_add(&g.router, health_routes[i].method, health_routes[i].pattern,
                         HTTP_HANDLER(svc_dispatch), (void *)(uintptr_t)&health_routes[i]);
  for (size_t i = 0; rc == 0 && i < g.def->routes_count; i++) {
    const svc_route_t *r = &g.def->routes[i];
    rc = http_router_add(&g.router, r->method, r->pattern, HTTP_HANDLER(svc_dispatch),
                         (void *)(uintptr_t)r);
    if (rc < 0) {
      RT_ERROR("bad route", RT_LF_STR("method", r->method), RT_LF_STR("pattern", r->pattern),
               RT_LF_STR("error", rt_strerror(rc)));
    }
  }
  return rc;
}

static void sleep_ms(long ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* Notices ("already exists, skipping") are not errors; libpq would print
 * them on stderr, outside the log format. */
static void notice_ignore(void *arg, const char *message) {}

/* A blocking connection for start-up work, retried until DB_WAIT. */
static PGconn *connect_blocking(void) {
  uint64_t deadline = rt_now_ns() + (uint64_t)g.db_wait_ms * 1000000u;
  bool warned = false;
  for (;;) {
    PGconn *conn = PQconnectdb(g.cfg.db_url);
    if (conn != NULL && PQstatus(conn) == CONNECTION_OK) {
      PQsetNoticeProcessor(conn, notice_ignore, NULL);
      return conn;
    }
    char msg[200];
    snprintf(msg, sizeof msg, "%s", conn ? PQerrorMessage(conn) : "out of memory");
    msg[strcspn(msg, "\n")] = '\0';
    PQfinish(conn);
    if (rt_now_ns() > deadline) {
      RT_ERROR("database not reachable", RT_LF_STR("error", msg),
               RT_LF_INT("waited_ms", g.db_wait_ms));
      return NULL;
    }
    if (!warned) {
      RT_WARN("waiting for the database", RT_LF_STR("error", msg),
              RT_LF_INT("up_to_ms", g.db_wait_ms));
      warned = true;
    }
    sleep_ms(200);
  }
}

static int start_up_db(void) {
  PGconn *conn = connect_blocking();
  if (conn == NULL) return SVC_E_DB_WAIT;
  int rc = svc_migrate(conn, "common", svc_common_migrations, svc_common_migrations_count);
  if (rc == 0) rc = svc_migrate(conn, g.def->name, g.def->migrations, g.def->migrations_count);
  if (rc == 0 && g.def->setup != NULL) rc = g.def->setup(conn);
  PQfinish(conn);
  return rc;
}

/* One line per prepared statement: id, parameter count, SQL (the texts
 * are single lines). For tools that must run exactly the service's SQL,
 * such as bench/transfer. */
static void print_statements(const svc_def_t *def) {
  size_t n = 0;
  for (size_t i = 0; i < sizeof own_stmts / sizeof own_stmts[0]; i++, n++)
    printf("%zu\t%d\t%s\n", n, own_stmts[i].nparams, own_stmts[i].sql);
  for (size_t i = 0; i < def->stmts_count; i++, n++)
    printf("%zu\t%d\t%s\n", n, def->stmts[i].nparams, def->stmts[i].sql);
}

enum { ARGS_RUN = 0, ARGS_HELP = 1, ARGS_STATEMENTS = 2 };

static int parse_args(int argc, char **argv, bool *migrate_only) {
  static const struct option opts[] = {
      {"migrate", no_argument, NULL, 'm'},
      {"statements", no_argument, NULL, 's'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  int c, rc = ARGS_RUN;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (c == 'm') {
      *migrate_only = true;
    } else if (c == 's') {
      rc = ARGS_STATEMENTS;
    } else {
      return c == 'h' ? ARGS_HELP : -1;
    }
  }
  return optind == argc ? rc : -1;
}

int svc_main(int argc, char **argv, const svc_def_t *def) {
  g.def = def;
  bool migrate_only = false;
  int rc = parse_args(argc, argv, &migrate_only);
  if (rc == ARGS_STATEMENTS) {
    print_statements(def);
    return 0;
  }
  if (rc != ARGS_RUN) {
    usage(rc > 0 ? stdout : stderr, def);
    return rc > 0 ? 0 : 2;
  }
  int level = rt_log_level_parse(rt_env_str("LOG_LEVEL", "info"));
  const char *hash_key = rt_env_str("LOG_HASH_KEY", NULL);
  rt_log_init(def->name, level < 0 ? RT_LOG_INFO : (rt_log_level_t)level,
              (const uint8_t *)hash_key, hash_key ? strlen(hash_key) : 0);
  rt_strerror_register(HTTP_E_RANGE_LO, HTTP_E_RANGE_HI, http_strerror);
  rt_strerror_register(RT_PG_E_RANGE_LO, RT_PG_E_RANGE_HI, rt_pg_strerror);
  rt_strerror_register(SVC_E_RANGE_LO, SVC_E_RANGE_HI, svc_strerror);
  if (load_config() < 0) return 2;
  rc = start_up_db();
  if (rc < 0) {
    RT_ERROR("start-up failed", RT_LF_STR("error", rt_strerror(rc)));
    rt_log_flush();
    return 1;
  }
  if (migrate_only) {
    RT_INFO("migrations applied", RT_LF_STR("service", def->name));
    rt_log_flush();
    return 0;
  }
  if (build_router() < 0) return 1;
  rc = workers_start();
  rt_loop_config_t loop_cfg = {0};
  if (rc == 0) rc = rt_run(g.cfg.threads, &loop_cfg, thread_setup, NULL, DRAIN_DEADLINE_MS);
  workers_stop();
  threads_free();
  RT_INFO("stopped", RT_LF_INT("status", rc < 0 ? 1 : 0));
  rt_log_flush();
  return rc < 0 ? 1 : 0;
}
