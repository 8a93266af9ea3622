/*
 * svc_metrics.c - /healthz (the process is up), /readyz (a round trip to
 * the database), /metrics (Prometheus text: HTTP, database pool, requests,
 * outbox relay, consumers per event type, and the service's own).
 */
#include <stdio.h>
#include <string.h>

#include "svc_internal.h"

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

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
  rt_pg_add(b, svc_stmt_ready, 0, NULL);
  svc_db(req, b, ready_done);
}

typedef struct pg_sum {
  uint64_t batches, ok, failed, statements, full, down, timeouts, lost, connects,
      connect_failures, flushes, latency_us;
  uint64_t up, queued, in_flight;
} pg_sum_t;

/* The primary pools' counters summed over threads, or the read pools'. */
static void pg_sum(pg_sum_t *s, svc_th_t *const *ths, uint32_t n, bool read) {
  memset(s, 0, sizeof *s);
  for (uint32_t i = 0; i < n; i++) {
    const rt_pg_pool_t *pool = read ? ths[i]->pub.read_pool : ths[i]->pub.pool;
    if (pool == NULL) continue;
    const rt_pg_stats_t *st = rt_pg_pool_stats(pool);
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

/* Per event type: transitions made and events absorbed. */
static int metrics_events(http_buf_t *out) {
  int rc = http_buf_appendf(out, "# HELP svc_events_total Events consumed, by type and outcome"
                                 " (absorbed: no transition allowed, nothing changed).\n"
                                 "# TYPE svc_events_total counter\n");
  for (size_t i = 0; i < svc_g.def->consumers_count && rc == 0; i++) {
    svc_event_type_t t = svc_g.def->consumers[i].type;
    const char *topic = svc_event_def(t)->topic;
    rc = http_buf_appendf(out, "svc_events_total{type=\"%s\",outcome=\"applied\"} %llu\n"
                               "svc_events_total{type=\"%s\",outcome=\"absorbed\"} %llu\n",
                          topic, (unsigned long long)LOAD(svc_bus_stats.inbox_applied[t]), topic,
                          (unsigned long long)LOAD(svc_bus_stats.inbox_absorbed[t]));
  }
  return rc;
}

static int metrics_render(http_buf_t *out) {
  svc_th_t *ths[SVC_THREADS_MAX];
  http_server_t *servers[SVC_THREADS_MAX];
  uint32_t n = 0;
  for (uint32_t i = 0; i < SVC_THREADS_MAX; i++) {
    svc_th_t *th = atomic_load(&svc_g.ready[i]);
    if (th == NULL) continue;
    ths[n] = th;
    servers[n++] = th->pub.server;
  }
  int rc = http_server_metrics(out, "http_", servers, n);
  pg_sum_t s, r;
  pg_sum(&s, ths, n, false);
  pg_sum(&r, ths, n, true);
  uint64_t requests = 0, auth = 0, overloaded = 0, inflight = 0, applied = 0, fallbacks = 0;
  for (size_t t = 0; t < SVC_EV_COUNT; t++)
    applied += LOAD(svc_bus_stats.inbox_applied[t]) + LOAD(svc_bus_stats.inbox_absorbed[t]);
  for (uint32_t i = 0; i < n; i++) {
    requests += LOAD(ths[i]->requests);
    auth += LOAD(ths[i]->auth_rejected);
    overloaded += LOAD(ths[i]->overloaded);
    inflight += LOAD(ths[i]->inflight_gauge);
    fallbacks += LOAD(ths[i]->read_fallbacks);
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
      {"pg_read_batches_total", "counter",
       "Stale-tolerant reads submitted to the read pool (<SVC>_DB_READ_URL).", NULL,
       (double)r.batches},
      {"pg_read_batches_done_total", "counter", "Read pool batches answered, by outcome.",
       "{outcome=\"ok\"}", (double)r.ok},
      {"pg_read_batches_done_total", NULL, NULL, "{outcome=\"error\"}", (double)r.failed},
      {"pg_read_connections_up", "gauge", "Read pool connections ready.", NULL, (double)r.up},
      {"pg_read_fallbacks_total", "counter",
       "Stale-tolerant reads sent to the primary because the read pool had no connection.",
       NULL, (double)fallbacks},
      {"outbox_published_total", "counter", "Outbox rows published and marked.", NULL,
       (double)LOAD(svc_bus_stats.relay_published)},
      {"outbox_sent_total", "counter", "Outbox rows handed to the bus client (re-sends included).",
       NULL, (double)LOAD(svc_bus_stats.relay_sent)},
      {"outbox_pending", "gauge", "Unpublished outbox rows at the relay's last count.", NULL,
       (double)LOAD(svc_bus_stats.relay_pending)},
      {"outbox_oldest_age_seconds", "gauge",
       "Age of the oldest unpublished outbox row at the last count (0: none).", NULL,
       (double)LOAD(svc_bus_stats.relay_oldest_ms) / 1e3},
      {"outbox_errors_total", "counter", "Relay scans, marks or publishes that failed.", NULL,
       (double)LOAD(svc_bus_stats.relay_errors)},
      {"outbox_last_error_timestamp_seconds", "gauge", "When the relay last failed (0: never).",
       NULL, (double)LOAD(svc_bus_stats.relay_last_error_s)},
      {"outbox_notifies_total", "counter", "Outbox NOTIFYs received by the relay.", NULL,
       (double)LOAD(svc_bus_stats.relay_notifies)},
      {"inbox_events_total", "counter", "Delivered events, by outcome.",
       "{outcome=\"applied\"}", (double)applied},
      {"inbox_events_total", NULL, NULL, "{outcome=\"duplicate\"}",
       (double)LOAD(svc_bus_stats.inbox_duplicates)},
      {"inbox_events_total", NULL, NULL, "{outcome=\"failed\"}",
       (double)LOAD(svc_bus_stats.inbox_failed)},
      {"inbox_retries_total", "counter",
       "Deliveries tried again because the database was down or busy (not NACKed).", NULL,
       (double)LOAD(svc_bus_stats.inbox_retried)},
      {"inbox_arena_spills_total", "counter",
       "Event payloads too large for their pooled arena (parsed on the heap).", NULL,
       (double)LOAD(svc_bus_stats.inbox_arena_spills)},
      {"svc_impossible_total", "counter", "NEVER/ALWAYS conditions that fired.", NULL,
       (double)rt_never_count()},
  };
  for (size_t i = 0; i < sizeof m / sizeof m[0] && rc == 0; i++)
    rc = metric(out, m[i].name, m[i].type, m[i].help, m[i].labels, m[i].v);
  if (rc == 0) rc = metrics_events(out);
  if (rc == 0 && svc_g.def->metrics != NULL) rc = svc_g.def->metrics(out);
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
    svc_req_release(req);
  }
  http_buf_deinit(&out);
}

const svc_route_t svc_health_routes[] = {
    {"GET", "/healthz", on_healthz, SVC_AUTH_NONE, 0, false},
    {"GET", "/readyz", on_readyz, SVC_AUTH_NONE, 0, false},
    {"GET", "/metrics", on_metrics, SVC_AUTH_NONE, 0, false},
};

const size_t svc_health_routes_count = 3;
