/*
 * admin.c - the plain-HTTP admin port (loopback by default): /healthz,
 * /readyz and /metrics, and the upstream health probes behind /readyz.
 *
 * Thread 0 runs both: one admin listener is enough, and probing every
 * address from one thread keeps the probe rate independent of the number
 * of threads. Probe results go into the health every thread reads.
 */
#include <stdio.h>
#include <string.h>

#include "app.h"

/* ------------------------------------------------------------------------ */
/* Health probes                                                            */
/* ------------------------------------------------------------------------ */

typedef struct probe {
  gw_thread_t *th;
  gw_service_t svc;
  int addr;
  bool in_flight;
} probe_t;

static probe_t probes[GW_SVC_COUNT][GW_UPSTREAM_ADDRS_MAX];

static void on_probe(void *ctx, int err, const http_msg_t *resp) {
  probe_t *p = ctx;
  gw_config_t *cfg = &p->th->app->cfg;
  p->in_flight = false;
  bool ok = err == 0 && resp->status == 200;
  gw_upstream_report(&cfg->services[p->svc].addrs[p->addr], ok, cfg->upstream_fails,
                     cfg->upstream_backoff_ms, rt_loop_now_ns(p->th->loop));
}

static void probe_all(rt_timer_t *t) {
  gw_thread_t *th = t->ctx;
  gw_config_t *cfg = &th->app->cfg;
  if (th->draining) return;
  for (int s = GW_SVC_PROFILE; s < GW_SVC_COUNT; s++) {
    for (uint32_t i = 0; i < cfg->services[s].count; i++) {
      probe_t *p = &probes[s][i];
      if (p->in_flight) continue;
      *p = (probe_t){.th = th, .svc = (gw_service_t)s, .addr = (int)i};
      p->in_flight = http_client_request(th->clients[s][i], "GET", "/healthz", NULL, NULL, 0,
                                         on_probe, p) == 0;
    }
  }
}

int gw_health_start(gw_thread_t *th) {
  rt_timer_init(&th->probe_timer, probe_all, th);
  uint32_t every = th->app->cfg.health_interval_ms;
  return rt_timer_start(th->loop, &th->probe_timer, 1, every);
}

/* ------------------------------------------------------------------------ */
/* Handlers                                                                 */
/* ------------------------------------------------------------------------ */

static void on_healthz(http_exchange_t *ex, void *arg) {
  http_respond(ex, 200, "text/plain", "ok\n", 3, NULL);
}

/* Ready when every service has an address that answered and is not
 * marked down: a gateway that cannot reach a service should not get
 * traffic that would only meet 503s. */
static void on_readyz(http_exchange_t *ex, void *arg) {
  gw_app_t *app = arg;
  uint64_t now = rt_now_ns();
  json_t *body = json_object();
  json_t *svcs = json_object();
  bool ready = true;
  for (int s = GW_SVC_PROFILE; s < GW_SVC_COUNT; s++) {
    gw_service_addrs_t *sa = &app->cfg.services[s];
    uint32_t up = 0;
    for (uint32_t i = 0; i < sa->count; i++) {
      gw_upstream_addr_t *a = &sa->addrs[i];
      if (atomic_load(&a->last_ok_ns) != 0 && gw_upstream_healthy(a, now)) up++;
    }
    ready = ready && up > 0;
    json_object_set_new(svcs, gw_service_name((gw_service_t)s),
                        json_pack("{s:i, s:i}", "up", (json_int_t)up, "addresses",
                                  (json_int_t)sa->count));
  }
  json_object_set_new(body, "ready", json_boolean(ready));
  json_object_set_new(body, "services", svcs);
  http_respond_json(ex, ready ? 200 : 503, body, NULL);
  json_decref(body);
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct counter_def {
  const char *name;
  const char *help;
  size_t offset;
} counter_def_t;

#define C(f) offsetof(gw_counters_t, f)
static const counter_def_t counter_defs[] = {
    {"gw_requests_total", "Requests to public routes.", C(requests)},
    {"gw_auth_ok_total", "Requests with a valid token.", C(auth_ok)},
    {"gw_auth_failed_total", "Requests refused 401.", C(auth_failed)},
    {"gw_forbidden_total", "Requests refused 403 by role.", C(forbidden)},
    {"gw_rate_limited_total", "Requests refused 429.", C(rate_limited)},
    {"gw_token_cache_hits_total", "Tokens found verified in the cache.", C(token_cache_hits)},
    {"gw_token_cache_misses_total", "Tokens verified in full.", C(token_cache_misses)},
    {"gw_tokens_issued_total", "Tokens signed by POST /v1/auth/token.", C(tokens_issued)},
    {"gw_logins_failed_total", "Logins refused for bad credentials.", C(logins_failed)},
    {"gw_upstream_ok_total", "Answers relayed from services.", C(upstream_ok)},
    {"gw_upstream_retries_total", "Idempotent requests retried on another address.",
     C(upstream_retries)},
    {"gw_upstream_502_total", "Invalid answers from services.", C(upstream_502)},
    {"gw_upstream_503_total", "Services unreachable or busy.", C(upstream_503)},
    {"gw_upstream_504_total", "Services that did not answer in time.", C(upstream_504)},
};
#undef C

static void metrics_counters(wire_metrics_t *m, gw_app_t *app) {
  for (size_t d = 0; d < sizeof counter_defs / sizeof counter_defs[0]; d++) {
    uint64_t sum = 0;
    for (uint32_t t = 0; t < app->cfg.threads; t++) {
      if (atomic_load(&app->servers[t]) == NULL) continue;
      const _Atomic uint64_t *v =
          (const _Atomic uint64_t *)((const char *)&app->threads[t].counters +
                                     counter_defs[d].offset);
      sum += atomic_load_explicit(v, memory_order_relaxed);
    }
    wire_metrics_counter(m, counter_defs[d].name, counter_defs[d].help, sum);
  }
}

static void metrics_tls(wire_metrics_t *m, gw_app_t *app) {
  gw_tls_stats_t *s = gw_tls_stats(app->tls);
  wire_metrics_counter(m, "gw_tls_handshakes_total", "TLS handshakes completed.",
                       atomic_load(&s->handshakes));
  wire_metrics_counter(m, "gw_tls_resumed_total", "Handshakes completed by session resumption.",
                       atomic_load(&s->resumed));
  wire_metrics_counter(m, "gw_tls_failed_total", "Connections closed on a TLS error.",
                       atomic_load(&s->failed));
  wire_metrics_counter(m, "gw_tls_stalled_total",
                       "Connections closed for a slow handshake or record.",
                       atomic_load(&s->stalled));
  wire_metrics_counter(m, "gw_conns_refused_per_addr_total",
                       "Connections over the per-address cap.", atomic_load(&s->refused_per_addr));
  wire_metrics_counter(m, "gw_tls_record_buffers_exhausted_total",
                       "Connections closed mid-record with no record buffer left.",
                       atomic_load(&s->bufs_exhausted));
}

static void metrics_upstreams(wire_metrics_t *m, gw_app_t *app) {
  wire_metrics_family(m, "gw_upstream_up", WIRE_METRICS_GAUGE,
                      "Address usable now (1) or marked down.");
  uint64_t now = rt_now_ns();
  for (int s = GW_SVC_PROFILE; s < GW_SVC_COUNT; s++) {
    gw_service_addrs_t *sa = &app->cfg.services[s];
    for (uint32_t i = 0; i < sa->count; i++) {
      gw_upstream_addr_t *a = &sa->addrs[i];
      char address[sizeof a->host + 8];
      snprintf(address, sizeof address, "%s:%u", a->host, (unsigned)a->port);
      wire_metrics_u64(m, WIRE_METRICS_LABELS({"service", gw_service_name((gw_service_t)s)},
                                              {"address", address}),
                       gw_upstream_healthy(a, now) ? 1 : 0);
    }
  }
}

static void metrics_render(wire_metrics_t *m, void *arg) {
  gw_app_t *app = arg;
  uint32_t threads = 0;
  http_server_t *servers[GW_THREADS_MAX];
  for (uint32_t t = 0; t < app->cfg.threads; t++) {
    http_server_t *s = atomic_load(&app->servers[t]);
    if (s != NULL) servers[threads++] = s;
  }
  http_server_metrics(m, "gw_http_", servers, threads);
  metrics_counters(m, app);
  metrics_tls(m, app);
  metrics_upstreams(m, app);
  wire_metrics_counter(m, "gw_log_dropped_total", "Log lines dropped.", rt_log_dropped_count());
}

static void on_metrics(http_exchange_t *ex, void *arg) {
  http_respond_metrics(ex, metrics_render, arg, 1 << 20);
}

int gw_admin_routes(gw_app_t *app) {
  http_router_t *r = &app->admin_router;
  http_router_init(r);
  int rc = http_router_add(r, "GET", "/healthz", HTTP_HANDLER(on_healthz), app);
  if (rc == 0) rc = http_router_add(r, "GET", "/readyz", HTTP_HANDLER(on_readyz), app);
  if (rc == 0) rc = http_router_add(r, "GET", "/metrics", HTTP_HANDLER(on_metrics), app);
  return rc;
}
