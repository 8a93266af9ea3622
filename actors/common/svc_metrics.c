/*
 * svc_metrics.c - /healthz (the process is up), /readyz (a round trip to
 * the database), /metrics (Prometheus text: HTTP, the loops' limits,
 * database pool, requests, outbox relay, consumers per event type, and
 * the service's own).
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
  uint64_t batches, ok, failed, statements, full, down, large, timeouts, lost, connects,
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
    s->large += LOAD(st->rejected_large);
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

static void sample_by(wire_metrics_t *m, const char *label, const char *value, uint64_t v) {
  wire_metrics_u64(m, WIRE_METRICS_LABELS({label, value}), v);
}

static void metrics_requests(wire_metrics_t *m, svc_th_t *const *ths, uint32_t n) {
  uint64_t requests = 0, auth = 0, overloaded = 0, inflight = 0;
  for (uint32_t i = 0; i < n; i++) {
    requests += LOAD(ths[i]->requests);
    auth += LOAD(ths[i]->auth_rejected);
    overloaded += LOAD(ths[i]->overloaded);
    inflight += LOAD(ths[i]->inflight_gauge);
  }
  wire_metrics_counter(m, "svc_requests_total", "Requests routed to handlers.", requests);
  wire_metrics_gauge(m, "svc_requests_in_flight", "Requests being handled.", inflight);
  wire_metrics_counter(m, "svc_auth_rejected_total", "Requests refused with 401.", auth);
  wire_metrics_counter(m, "svc_overloaded_total", "Requests refused with 503 for lack of room.",
                       overloaded);
}

static void metrics_pg(wire_metrics_t *m, svc_th_t *const *ths, uint32_t n) {
  pg_sum_t s, r;
  pg_sum(&s, ths, n, false);
  pg_sum(&r, ths, n, true);
  uint64_t fallbacks = 0;
  for (uint32_t i = 0; i < n; i++) fallbacks += LOAD(ths[i]->read_fallbacks);
  wire_metrics_counter(m, "pg_batches_total", "Database batches (transactions) submitted.",
                       s.batches);
  wire_metrics_family(m, "pg_batches_done_total", WIRE_METRICS_COUNTER,
                      "Database batches answered, by outcome.");
  sample_by(m, "outcome", "ok", s.ok);
  sample_by(m, "outcome", "error", s.failed);
  wire_metrics_counter(m, "pg_statements_total", "Statements sent.", s.statements);
  wire_metrics_family(m, "pg_rejected_total", WIRE_METRICS_COUNTER,
                      "Batches refused: queue full, database down, no large arena left.");
  sample_by(m, "reason", "full", s.full);
  sample_by(m, "reason", "down", s.down);
  sample_by(m, "reason", "large", s.large);
  wire_metrics_counter(m, "pg_timeouts_total", "Batch deadlines that passed.", s.timeouts);
  wire_metrics_counter(m, "pg_conn_lost_total", "Batches lost with their connection.", s.lost);
  wire_metrics_counter(m, "pg_connects_total", "Connections made.", s.connects);
  wire_metrics_counter(m, "pg_connect_failures_total", "Connection attempts that failed.",
                       s.connect_failures);
  wire_metrics_counter(m, "pg_writes_total", "Pipeline writes (round trips shared by batches).",
                       s.flushes);
  wire_metrics_family(m, "pg_batch_seconds_sum", WIRE_METRICS_COUNTER,
                      "Time from submission to answer, summed.");
  wire_metrics_f64(m, NULL, 0, (double)s.latency_us / 1e6);
  wire_metrics_gauge(m, "pg_connections_up", "Connections ready.", s.up);
  wire_metrics_gauge(m, "pg_queued", "Batches waiting for a pipeline.", s.queued);
  wire_metrics_gauge(m, "pg_in_flight", "Batches in pipelines.", s.in_flight);
  wire_metrics_counter(m, "pg_read_batches_total",
                       "Stale-tolerant reads submitted to the read pool (<SVC>_DB_READ_URL).",
                       r.batches);
  wire_metrics_family(m, "pg_read_batches_done_total", WIRE_METRICS_COUNTER,
                      "Read pool batches answered, by outcome.");
  sample_by(m, "outcome", "ok", r.ok);
  sample_by(m, "outcome", "error", r.failed);
  wire_metrics_gauge(m, "pg_read_connections_up", "Read pool connections ready.", r.up);
  wire_metrics_counter(
      m, "pg_read_fallbacks_total",
      "Stale-tolerant reads sent to the primary because the read pool had no connection.",
      fallbacks);
}

static void metrics_outbox(wire_metrics_t *m) {
  const svc_bus_stats_t *b = &svc_bus_stats;
  wire_metrics_counter(m, "outbox_published_total", "Outbox rows published and marked.",
                       LOAD(b->relay_published));
  wire_metrics_counter(m, "outbox_sent_total",
                       "Outbox rows handed to the bus client (re-sends included).",
                       LOAD(b->relay_sent));
  wire_metrics_counter(m, "outbox_sent_at_commit_total",
                       "Of those, rows handed over when their transaction committed, not by a scan.",
                       LOAD(b->relay_direct));
  wire_metrics_gauge(m, "outbox_pending", "Unpublished outbox rows at the relay's last count.",
                     LOAD(b->relay_pending));
  wire_metrics_family(m, "outbox_oldest_age_seconds", WIRE_METRICS_GAUGE,
                      "Age of the oldest unpublished outbox row at the last count (0: none).");
  wire_metrics_f64(m, NULL, 0, (double)LOAD(b->relay_oldest_ms) / 1e3);
  wire_metrics_counter(m, "outbox_errors_total", "Relay scans, marks or publishes that failed.",
                       LOAD(b->relay_errors));
  wire_metrics_gauge(m, "outbox_last_error_timestamp_seconds",
                     "When the relay last failed (0: never).", LOAD(b->relay_last_error_s));
  wire_metrics_counter(m, "outbox_notifies_total", "Outbox NOTIFYs received by the relay.",
                       LOAD(b->relay_notifies));
}

static void metrics_inbox(wire_metrics_t *m) {
  const svc_bus_stats_t *b = &svc_bus_stats;
  uint64_t applied = 0;
  for (size_t t = 0; t < SVC_EV_COUNT; t++)
    applied += LOAD(b->inbox_applied[t]) + LOAD(b->inbox_absorbed[t]);
  wire_metrics_family(m, "inbox_events_total", WIRE_METRICS_COUNTER,
                      "Delivered events, by outcome.");
  sample_by(m, "outcome", "applied", applied);
  sample_by(m, "outcome", "duplicate", LOAD(b->inbox_duplicates));
  sample_by(m, "outcome", "failed", LOAD(b->inbox_failed));
  wire_metrics_counter(
      m, "inbox_retries_total",
      "Deliveries tried again because the database was down or busy (not NACKed).",
      LOAD(b->inbox_retried));
  wire_metrics_counter(m, "inbox_arena_spills_total",
                       "Event payloads too large for their pooled arena (parsed on the heap).",
                       LOAD(b->inbox_arena_spills));
}

/* Per event type: transitions made and events absorbed. */
static void metrics_events(wire_metrics_t *m) {
  wire_metrics_family(m, "svc_events_total", WIRE_METRICS_COUNTER,
                      "Events consumed, by type and outcome"
                      " (absorbed: no transition allowed, nothing changed).");
  for (size_t i = 0; i < svc_g.def->consumers_count; i++) {
    svc_event_type_t t = svc_g.def->consumers[i].type;
    const char *topic = svc_event_def(t)->topic;
    wire_metrics_u64(m, WIRE_METRICS_LABELS({"type", topic}, {"outcome", "applied"}),
                     LOAD(svc_bus_stats.inbox_applied[t]));
    wire_metrics_u64(m, WIRE_METRICS_LABELS({"type", topic}, {"outcome", "absorbed"}),
                     LOAD(svc_bus_stats.inbox_absorbed[t]));
  }
}

static void metrics_render(wire_metrics_t *m, void *ctx) {
  svc_th_t *ths[SVC_THREADS_MAX];
  http_server_t *servers[SVC_THREADS_MAX];
  rt_loop_t *loops[SVC_THREADS_MAX];
  uint32_t n = 0;
  for (uint32_t i = 0; i < SVC_THREADS_MAX; i++) {
    svc_th_t *th = atomic_load(&svc_g.ready[i]);
    if (th == NULL) continue;
    ths[n] = th;
    loops[n] = th->pub.loop;
    servers[n++] = th->pub.server;
  }
  http_server_metrics(m, "http_", servers, n);
  wire_metrics_loops(m, loops, n);
  metrics_requests(m, ths, n);
  metrics_pg(m, ths, n);
  metrics_outbox(m);
  metrics_inbox(m);
  wire_metrics_counter(m, "svc_impossible_total", "NEVER/ALWAYS conditions that fired.",
                       rt_never_count());
  metrics_events(m);
  if (svc_g.def->metrics != NULL) svc_g.def->metrics(m);
}

/* Answered as the gateway and busd answer theirs, under the request's id
 * for any line logged on the way. */
static void on_metrics(svc_req_t *req) {
  rt_log_set_request_id(http_request_id(req->ex));
  http_respond_metrics(req->ex, metrics_render, NULL, 1 << 20);
  rt_log_set_request_id(NULL);
  svc_req_release(req);
}

const svc_route_t svc_health_routes[] = {
    {"GET", "/healthz", on_healthz, SVC_AUTH_NONE, 0, false},
    {"GET", "/readyz", on_readyz, SVC_AUTH_NONE, 0, false},
    {"GET", "/metrics", on_metrics, SVC_AUTH_NONE, 0, false},
};

const size_t svc_health_routes_count = 3;
