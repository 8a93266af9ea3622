/*
 * svc_main.c - the service's process: arguments, configuration,
 * migrations, loop threads and their set-up, drain.
 *
 * Set-up of loop thread i (rt_run calls thread_setup on each):
 *   request pool, actor (notifies, calls), parking table
 *   -> database pool with every statement prepared (the skeleton's tables
 *   first, then the service's); with <SVC>_DB_READ_URL, a second pool on
 *   it with the same statements, for reads that may be slightly stale
 *   -> thread 0 with the bus on: the outbox relay and its bus transport
 *   (busd or RabbitMQ, svc_bus.h; the pool's listener wakes it on NOTIFY)
 *   -> pool started -> HTTP server listening (SO_REUSEPORT) -> drain hook
 *   -> the service's thread_init -> thread 0: the consumer table's
 *   subscriptions, the service's extra ones, then the bus client connects.
 *
 * Drain, per loop thread: the HTTP server stops accepting (its own hook);
 * ours wakes parked requests, stops the relay and the consumers, waits
 * until no request and no delivery is in flight, closes the database
 * pool (then the read pool), lets the service close its clients, closes
 * the bus client, and
 * reports after a short grace period in which their close operations
 * complete.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "svc_internal.h"

#define DRAIN_DEADLINE_MS 15000
#define DRAIN_GRACE_MS 50   /* for close ops of the service's own clients */
#define PRUNE_PERIOD_MS (10u * 60u * 1000u)

svc_global_t svc_g;

static _Thread_local svc_th_t *tls_th;

svc_th_t *svc_th_current(void) { return tls_th; }

int svc_stmt_ready, svc_stmt_prune, svc_stmt_lazy_commit;

static const svc_stmt_t own_stmts[] = {
    {&svc_stmt_ready, "SELECT 1", 0},
    /* SET LOCAL, as a statement the pipeline can carry (svc_commit_lazily). */
    {&svc_stmt_lazy_commit, "SELECT set_config('synchronous_commit', 'off', true)", 0},
    /* Claims past their keeping time, a thousand at a time. */
    {&svc_stmt_prune,
     "DELETE FROM claims WHERE ctid IN (SELECT ctid FROM claims WHERE expires_at < now()"
     " LIMIT 1000)",
     0},
};

const svc_stmt_table_t svc_main_stmts = {own_stmts, sizeof own_stmts / sizeof own_stmts[0]};

void svc_commit_lazily(rt_pg_batch_t *b) {
  assert(rt_pg_count(b) == 0);
  rt_pg_add(b, svc_stmt_lazy_commit, 0, NULL);
}

/* Registered on every pool in this order, so that ids agree across
 * threads; then the service's own statements. */
static const svc_stmt_table_t *const stmt_tables[] = {
    &svc_main_stmts, &svc_idem_stmts, &svc_events_stmts, &svc_relay_stmts, &svc_consume_stmts,
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
  case SVC_E_EVENT: return "event payload not as its schema says";
  default: return "unknown service error";
  }
}

const svc_config_t *svc_config(void) { return &svc_g.cfg; }

/* ------------------------------------------------------------------------ */
/* Fault injection                                                          */
/* ------------------------------------------------------------------------ */

static struct {
  char point[64];
  uint32_t nth;
  _Atomic uint32_t seen;
} fault;

void svc_fault_init(void) {
  const char *v = rt_env_str("FAULT_POINT", NULL);
  if (v == NULL) return;
  const char *colon = strchr(v, ':');
  size_t n = colon ? (size_t)(colon - v) : strlen(v);
  if (n == 0 || n >= sizeof fault.point) return;
  memcpy(fault.point, v, n);
  fault.point[n] = '\0';
  fault.nth = colon ? (uint32_t)strtoul(colon + 1, NULL, 10) : 1;
  if (fault.nth == 0) fault.nth = 1;
  RT_WARN("fault injection armed", RT_LF_STR("point", fault.point), RT_LF_INT("nth", fault.nth));
}

void svc_fault(const char *point) {
  if (fault.point[0] == '\0' || strcmp(point, fault.point) != 0) return;
  if (atomic_fetch_add(&fault.seen, 1) + 1 != fault.nth) return;
  RT_WARN("fault injected: exiting now", RT_LF_STR("point", point));
  rt_log_flush();
  _exit(86);
}

/* ------------------------------------------------------------------------ */
/* The loop thread's actor                                                  */
/* ------------------------------------------------------------------------ */

static int th_actor(rt_actor_t *self, rt_msg_t *msg) {
  svc_th_t *th = self->state;
  switch (msg->type) {
  case SVC_MSG_NOTIFY: svc_parking_on_notify(th, msg); break;
  case SVC_MSG_CALL: svc_on_call(th, msg); break;
  default: (void)NEVER(true); break;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Claims: pruning                                                          */
/* ------------------------------------------------------------------------ */

static void prune_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  if (err != 0) {
    RT_WARN("claim pruning failed", RT_LF_STR("error", rt_strerror(err)));
  } else if (rt_pg_affected(b, 0) > 0) {
    RT_INFO("expired claims pruned", RT_LF_INT("rows", rt_pg_affected(b, 0)));
  }
}

static void prune_tick(rt_timer_t *t) {
  svc_th_t *th = t->ctx;
  if (th->draining || !rt_pg_pool_up(th->pub.pool)) return;
  rt_pg_batch_t *b = rt_pg_batch_new(th->pub.pool);
  if (b == NULL) return;
  rt_pg_add(b, svc_stmt_prune, 0, NULL);
  rt_pg_submit(b, 30000, prune_done, th);
}

/* ------------------------------------------------------------------------ */
/* Threads and drain                                                        */
/* ------------------------------------------------------------------------ */

static void drain_grace(rt_timer_t *t) {
  svc_th_t *th = t->ctx;
  rt_loop_drained(th->pub.loop);
}

static void pools_closed(void *arg) {
  svc_th_t *th = arg;
  th->drain_stage = 2;
  if (svc_g.def->thread_drain != NULL) svc_g.def->thread_drain(&th->pub);
  svc_relay_close(th->relay);
  if (rt_timer_start(th->pub.loop, &th->grace_timer, DRAIN_GRACE_MS, 0) < 0)
    rt_loop_drained(th->pub.loop);
}

/* The primary is closed; the read pool, when there is one, next. */
static void pool_closed(void *arg) {
  svc_th_t *th = arg;
  if (th->pub.read_pool != NULL) {
    rt_pg_pool_close(th->pub.read_pool, pools_closed, th);
  } else {
    pools_closed(th);
  }
}

void svc_drain_step(svc_th_t *th) {
  if (!th->draining || th->inflight > 0 || th->drain_stage != 0) return;
  if (th->consume != NULL && !svc_consume_idle(th->consume)) return;
  th->drain_stage = 1;
  rt_pg_pool_close(th->pub.pool, pool_closed, th);
}

static void on_drain(rt_loop_t *loop, void *arg) {
  svc_th_t *th = arg;
  th->draining = true;
  rt_timer_stop(loop, &th->prune_timer);
  /* A drain that hits its deadline stops the loop before the bus is
   * closed: the RabbitMQ bridge must not reach the loop after that. */
  if (th->pub.bus != NULL) svc_bus_quiesce(th->pub.bus);
  svc_relay_stop(th->relay);
  svc_consume_stop(th->consume);
  svc_parking_wake_all(th->parking);
  svc_drain_step(th);
}

/* Statement ids are the order of registration, the skeleton's tables
 * first, then the service's: given once, on the main thread before any
 * loop thread starts, since every thread's pools use them. */
static void stmt_ids_assign(void) {
  int id = 0;
  for (size_t t = 0; t < sizeof stmt_tables / sizeof stmt_tables[0]; t++) {
    for (size_t i = 0; i < stmt_tables[t]->count; i++) *stmt_tables[t]->stmts[i].id = id++;
  }
  for (size_t i = 0; i < svc_g.def->stmts_count; i++) *svc_g.def->stmts[i].id = id++;
}

/* Registers one statement; its id must be the one given above. */
static int prepare_one(rt_pg_pool_t *pool, const svc_stmt_t *s) {
  int rc = rt_pg_prepare(pool, s->sql, s->nparams);
  if (rc < 0) return rc;
  assert(rc == *s->id);
  return 0;
}

/* Every statement, in the order of stmt_ids_assign(). The read pool
 * registers the same list, so a statement has one id on both (statements
 * are prepared lazily: a write is never parsed on a replica). */
static int pool_setup_prepared(rt_pg_pool_t *pool) {
  int rc = 0;
  for (size_t t = 0; rc == 0 && t < sizeof stmt_tables / sizeof stmt_tables[0]; t++) {
    for (size_t i = 0; rc == 0 && i < stmt_tables[t]->count; i++)
      rc = prepare_one(pool, &stmt_tables[t]->stmts[i]);
  }
  for (size_t i = 0; rc == 0 && i < svc_g.def->stmts_count; i++)
    rc = prepare_one(pool, &svc_g.def->stmts[i]);
  return rc;
}

/* The read pool is named "<service>-read", which is also its
 * application_name: pg_stat_activity on a replica shows who reads there. */
static int pool_setup(svc_th_t *th) {
  rt_pg_config_t cfg = svc_g.pg;
  cfg.url = svc_g.cfg.db_url;
  cfg.name = svc_g.def->name;
  int rc = rt_pg_pool_create(&th->pub.pool, th->pub.loop, &cfg);
  if (rc == 0) rc = pool_setup_prepared(th->pub.pool);
  if (rc == 0 && svc_g.cfg.db_read_url != NULL) {
    char name[32];
    snprintf(name, sizeof name, "%s-read", svc_g.def->name);
    cfg.url = svc_g.cfg.db_read_url;
    cfg.name = name;
    rc = rt_pg_pool_create(&th->pub.read_pool, th->pub.loop, &cfg);
    if (rc == 0) rc = pool_setup_prepared(th->pub.read_pool);
  }
  return rc;
}

/* Thread 0, before the pool starts: the relay and its bus transport. */
static int relay_setup(svc_th_t *th) {
  svc_bus_config_t bc = {
      .url = svc_g.cfg.bus_url,
      .name = svc_g.def->name,
      .delivery_limit = svc_g.cfg.bus_max_attempts - 1,
      .heartbeat_s = svc_g.cfg.bus_heartbeat_s,
  };
  int rc = 0;
  /* busd over mutual TLS with the platform CA; RabbitMQ is reached as its
   * URL says. */
  if (svc_g.cfg.bus_url.kind == SVC_BUS_BUSD) rc = svc_tls_client("busd", 1, &bc.filter);
  if (rc == 0) rc = svc_relay_create(&th->relay, &th->pub, &bc);
  if (rc < 0) RT_ERROR("outbox relay set-up failed", RT_LF_STR("error", rt_strerror(rc)));
  return rc;
}

/* Thread 0, last: subscriptions, then connect. */
static int bus_setup(svc_th_t *th) {
  int rc = 0;
  if (svc_g.def->consumers_count > 0) rc = svc_consume_create(&th->consume, th);
  if (rc == 0 && svc_g.def->bus_init != NULL) rc = svc_g.def->bus_init(&th->pub, th->pub.bus);
  if (rc == 0) rc = svc_bus_start(th->pub.bus);
  if (rc < 0) {
    RT_ERROR("bus set-up failed", RT_LF_STR("error", rt_strerror(rc)));
  } else {
    char url[512];
    svc_bus_url_format(&svc_g.cfg.bus_url, url, sizeof url);
    RT_INFO("bus client started", RT_LF_STR("bus", url),
            RT_LF_STR("transport", svc_bus_kind_name(th->pub.bus)),
            RT_LF_INT("consumes", svc_g.def->consumers_count),
            RT_LF_INT("produces", svc_g.def->produces_count));
  }
  return rc;
}

/* With the inner TLS on, the service's port takes only our own processes
 * (mutual TLS); probes that cannot show a certificate use the plain
 * health port, which serves nothing but the health routes. */
static int http_setup(svc_th_t *th) {
  http_server_config_t hc = svc_g.http;
  hc.host = svc_g.cfg.host;
  hc.port = (uint16_t)svc_g.cfg.port;
  int rc = svc_tls_server(th, hc.conns_max, &hc.filter);
  if (rc == 0) rc = http_server_create(&th->pub.server, th->pub.loop, &hc, &svc_g.router);
  if (rc == 0) rc = http_server_start(th->pub.server);
  if (rc < 0) {
    RT_ERROR("cannot listen", RT_LF_STR("host", svc_g.cfg.host), RT_LF_INT("port", svc_g.cfg.port),
             RT_LF_STR("error", rt_strerror(rc)));
  }
  return rc;
}

/* Thread 0 with <SVC>_HEALTH_PORT: /healthz, /readyz, /metrics in plain
 * HTTP, for probes. */
static int health_setup(svc_th_t *th) {
  http_server_config_t hc = svc_g.http;
  hc.host = svc_g.cfg.host;
  hc.port = (uint16_t)svc_g.cfg.health_port;
  hc.conns_max = 64;
  hc.filter = NULL;
  int rc = http_server_create(&th->health, th->pub.loop, &hc, &svc_g.health_router);
  if (rc == 0) rc = http_server_start(th->health);
  if (rc < 0) {
    RT_ERROR("cannot listen for probes", RT_LF_INT("port", svc_g.cfg.health_port),
             RT_LF_STR("error", rt_strerror(rc)));
  }
  return rc;
}

static int thread_setup(rt_loop_t *loop, uint32_t index, void *arg) {
  (void)arg;
  svc_th_t *th = calloc(1, sizeof *th);
  if (th == NULL) return -ENOMEM;
  th->pub.index = index;
  th->pub.loop = loop;
  svc_g.threads[index] = th; /* freed by svc_main after rt_run */
  tls_th = th;
  bool bus0 = index == 0 && svc_g.cfg.bus_on;
  int rc = rt_pool_init(&th->reqs, "svc_reqs", sizeof(svc_req_t), svc_g.reqs_max);
  if (rc == 0) rc = svc_parking_create(&th->parking, th, svc_g.parked_max);
  if (rc < 0) return rc;
  rt_actor_init(&th->actor, loop, "svc", th_actor, th);
  rt_timer_init(&th->grace_timer, drain_grace, th);
  rt_timer_init(&th->prune_timer, prune_tick, th);
  rc = pool_setup(th);
  if (rc == 0 && bus0) rc = relay_setup(th);
  if (rc == 0) rc = rt_pg_pool_start(th->pub.pool);
  if (rc == 0 && th->pub.read_pool != NULL) rc = rt_pg_pool_start(th->pub.read_pool);
  if (rc < 0) {
    RT_ERROR("database pool set-up failed", RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  rc = http_setup(th);
  if (rc == 0 && index == 0 && svc_g.cfg.health_port != 0) rc = health_setup(th);
  /* After the server's own hook: it stops accepting first. */
  if (rc == 0) rc = rt_loop_on_drain(loop, on_drain, th);
  if (rc == 0 && svc_g.def->thread_init != NULL) rc = svc_g.def->thread_init(&th->pub);
  if (rc == 0 && bus0) rc = bus_setup(th);
  if (rc == 0 && index == 0) rc = rt_timer_start(loop, &th->prune_timer, 60000, PRUNE_PERIOD_MS);
  if (rc < 0) return rc;
  atomic_store(&svc_g.ready[index], th);
  if (index == 0) {
    RT_INFO("listening", RT_LF_STR("host", svc_g.cfg.host),
            RT_LF_INT("port", http_server_port(th->pub.server)),
            RT_LF_INT("threads", svc_g.cfg.threads));
  }
  return 0;
}

static void threads_free(void) {
  for (uint32_t i = 0; i < SVC_THREADS_MAX; i++) {
    svc_th_t *th = svc_g.threads[i];
    if (th == NULL) continue;
    atomic_store(&svc_g.ready[i], NULL);
    http_server_destroy(th->pub.server);
    http_server_destroy(th->health);
    wire_tls_filter_destroy(th->tls_server);
    svc_consume_free(th->consume);
    svc_relay_free(th->relay);
    rt_pg_pool_destroy(th->pub.pool);
    rt_pg_pool_destroy(th->pub.read_pool);
    svc_parking_free(th->parking);
    /* The leak check: after a clean drain every request came back; after
     * one that hit its deadline, those left behind are counted. */
    rt_pool_deinit(&th->reqs);
    free(th);
    svc_g.threads[i] = NULL;
  }
}

/* ------------------------------------------------------------------------ */
/* Configuration and main                                                   */
/* ------------------------------------------------------------------------ */

/* --events: what this binary writes and what it consumes. */
static void print_events(const svc_def_t *def) {
  printf("%s produces:\n", def->name);
  for (size_t i = 0; i < def->produces_count; i++) {
    const svc_event_def_t *e = svc_event_def(def->produces[i]);
    printf("  %-28s key %-16s schema v%d\n", e->topic, e->key_field, e->version);
  }
  if (def->produces_count == 0) printf("  (nothing)\n");
  printf("%s consumes (consumer group \"%s\"):\n", def->name, def->name);
  for (size_t i = 0; i < def->consumers_count; i++) {
    const svc_event_def_t *e = svc_event_def(def->consumers[i].type);
    printf("  %-28s from %s\n", e->topic, e->producer);
  }
  if (def->consumers_count == 0) printf("  (nothing)\n");
}

/* --routes: the service's own routes as JSON lines, for the check that
 * they agree with wire/api/api.table, and for operators. */
static void print_routes(const svc_def_t *def) {
  static const char *const auth_names[] = {"required", "optional", "none"};
  for (size_t i = 0; i < def->routes_count; i++) {
    const svc_route_t *r = &def->routes[i];
    assert((unsigned)r->auth < sizeof auth_names / sizeof auth_names[0]);
    json_t *roles = json_array();
    for (uint32_t b = 0; b < 32; b++)
      if (r->roles & (1u << b)) json_array_append_new(roles, json_string(svc_role_name(1u << b)));
    json_t *j = json_pack("{s:s, s:s, s:s, s:o, s:b}", "method", r->method, "pattern", r->pattern,
                          "auth", auth_names[r->auth], "roles", roles, "json_body", r->json_body);
    char *s = j != NULL ? json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    if (s != NULL) printf("%s\n", s);
    free(s);
    json_decref(j);
  }
}

static void usage(FILE *f, const svc_def_t *def) {
  const char *P = def->env_prefix;
  fprintf(f,
          "usage: %s [--migrate] [--statements] [--events] [--routes] [--help] [COMMAND ARGS]\n"
          "\n"
          "The %s service. Applies its database migrations, then serves HTTP.\n"
          "  --migrate      apply the migrations and exit\n"
          "  --statements   print the prepared statements (id, parameters, SQL) and exit\n"
          "  --events       print the events it produces and consumes, and exit\n"
          "  --routes       print its routes (JSON lines: method, pattern, auth, roles), and exit\n"
          "\n"
          "Environment:\n"
          "  %s_HOST               listen address              (127.0.0.1)\n"
          "  %s_PORT               listen port                 (%u)\n"
          "  %s_THREADS            loop threads                (1)\n"
          "  %s_DB_URL             PostgreSQL URL              (required)\n"
          "  %s_DB_READ_URL        PostgreSQL URL for reads that may be slightly stale:\n"
          "                        lists, ledger pages, audit queries; a replica, or\n"
          "                        several hosts with target_session_attrs=prefer-standby\n"
          "                        (unset: the primary; also while it has no connection)\n"
          "  AUTH_HMAC_KEY         key of the identity headers (required, >= 32 bytes)\n"
          "  AUTH_MAX_SKEW         identity timestamp window   (60s)\n"
          "  DB_CONNS              connections per thread      (4)\n"
          "  DB_PIPELINE_DEPTH     transactions in flight per connection (64)\n"
          "  DB_QUEUE_MAX          waiting transactions per thread, 503 above (1024)\n"
          "  DB_LARGE_BATCHES      transactions with over 2 KiB of parameters at once\n"
          "                        per thread, 503 above (16)\n"
          "  DB_STATEMENT_TIMEOUT  server-side, per statement  (5s)\n"
          "  DB_DEADLINE           per transaction, client side (10s)\n"
          "  DB_CONNECT_TIMEOUT    (5s)\n"
          "  DB_WAIT               wait for the database at start-up (30s)\n"
          "  SVC_REQUESTS_MAX      requests in flight per thread, 503 above (4096)\n"
          "  SVC_WORKERS           worker threads for CPU-heavy work (2)\n"
          "  BUS_URL               the bus: busd://host:port, amqp://user:pass@host:port[,host:port...]/vhost\n"
          "                        (RabbitMQ quorum queues), or off; unset: BUS_ADDR\n"
          "  BUS_ADDR              busd, host:port, or off     (127.0.0.1:7400)\n"
          "  AMQP_MAX_ATTEMPTS     amqp: deliveries before the dead letter (5)\n"
          "  AMQP_HEARTBEAT        amqp: connection heartbeat (10s; 0 none)\n"
          "  CONSUME_IN_FLIGHT     deliveries applied at once per topic (64)\n"
          "  CONSUME_BATCH_WINDOW  a batch of deliveries (event) waits this long for company (10ms)\n"
          "  INBOX_KEEP            how long event ids are kept (30d; > busd retention)\n"
          "  SVC_PARKED_MAX        long-polls parked per thread, 503 above (4096)\n"
          "  FAULT_POINT           tests only: exit at this step (name[:n])\n"
          "  LOG_LEVEL             debug|info|warn|error       (info)\n"
          "  LOG_HASH_KEY          key of hashed log fields    (random per run)\n"
          "  HTTP_*                server limits, as bench_httpd --help lists\n"
          "  TLS_CA                the platform CA (PEM): with it, the port takes only\n"
          "                        clients showing a certificate it signed (mutual TLS),\n"
          "                        and peer services and busd are reached over TLS,\n"
          "                        checked to be the process asked for (unset: plain TCP)\n"
          "  TLS_CERT, TLS_KEY     this process's certificate (chain) and key, signed by\n"
          "                        TLS_CA; shown as server and as client (with TLS_CA)\n"
          "  TLS_CONNS_MAX         TLS connections per thread, refused above (1024)\n"
          "  %s_HEALTH_PORT        plain HTTP port for probes: /healthz /readyz /metrics\n"
          "                        only, on thread 0 (0: none)\n"
          "%s"
          "\n"
          "Routes: GET /healthz (up), GET /readyz (database reachable), GET /metrics.\n"
          "SIGTERM or SIGINT: stop accepting, finish requests in flight, exit 0.\n",
          def->name, def->name, P, P, def->default_port, P, P, P, P,
          def->usage_env ? def->usage_env : "");
  if (def->commands_count > 0) fprintf(f, "\nCommands (instead of serving):\n");
  for (size_t i = 0; i < def->commands_count; i++) fprintf(f, "%s", def->commands[i].help);
}

static const char *env_name(const char *suffix) {
  static char name[96];
  snprintf(name, sizeof name, "%s_%s", svc_g.def->env_prefix, suffix);
  return name;
}

/* BUS_URL when set (busd://host:port, amqp://..., off), else BUS_ADDR:
 * "off", or host:port with a numeric host (no blocking name look-up on
 * the loop) or localhost. */
static int bus_config(void) {
  const char *url = rt_env_str("BUS_URL", NULL);
  const char *var = url != NULL ? "BUS_URL" : "BUS_ADDR";
  if (url == NULL) url = rt_env_str("BUS_ADDR", "127.0.0.1:7400");
  if (svc_bus_url_parse(url, &svc_g.cfg.bus_url) < 0) {
    RT_ERROR("bad bus address: busd://host:port, amqp://user:pass@host:port[,host:port...]/vhost,"
             " host:port or off (numeric hosts or localhost)", RT_LF_STR("variable", var));
    return RT_E_CONFIG;
  }
  svc_g.cfg.bus_on = svc_g.cfg.bus_url.kind != SVC_BUS_OFF;
  uint32_t hb_ms = 0;
  int rc = rt_env_u32("AMQP_MAX_ATTEMPTS", 5, 1, 1000, &svc_g.cfg.bus_max_attempts);
  if (rc == 0) rc = rt_env_ms("AMQP_HEARTBEAT", 10000, &hb_ms);
  svc_g.cfg.bus_heartbeat_s = hb_ms / 1000u;
  return rc;
}

static int load_config(void) {
  svc_g.cfg.host = rt_env_str(env_name("HOST"), "127.0.0.1");
  int rc = rt_env_u32(env_name("PORT"), svc_g.def->default_port, 0, 65535, &svc_g.cfg.port);
  if (rc == 0) rc = rt_env_u32(env_name("THREADS"), 1, 1, SVC_THREADS_MAX, &svc_g.cfg.threads);
  svc_g.cfg.db_url = rt_env_str(env_name("DB_URL"), NULL);
  if (rc == 0 && svc_g.cfg.db_url == NULL) {
    RT_ERROR("database URL not set", RT_LF_STR("variable", env_name("DB_URL")));
    rc = RT_E_CONFIG;
  }
  svc_g.cfg.db_read_url = rt_env_str(env_name("DB_READ_URL"), NULL);
  if (svc_g.cfg.db_read_url != NULL && svc_g.cfg.db_read_url[0] == '\0') svc_g.cfg.db_read_url = NULL;
  const char *key = rt_env_str("AUTH_HMAC_KEY", NULL);
  if (rc == 0 && (key == NULL || strlen(key) < 32)) {
    RT_ERROR("AUTH_HMAC_KEY must be set to at least 32 bytes", RT_LF_BOOL("set", key != NULL));
    rc = RT_E_CONFIG;
  }
  if (rc == 0) {
    svc_g.cfg.auth_key = (const uint8_t *)key;
    svc_g.cfg.auth_key_bytes = strlen(key);
  }
  uint32_t skew_ms = 0;
  if (rc == 0) rc = rt_env_ms("AUTH_MAX_SKEW", 60000, &skew_ms);
  svc_g.cfg.auth_max_skew_s = skew_ms / 1000u;
  if (rc == 0) rc = rt_env_u32("SVC_REQUESTS_MAX", 4096, 16, 1u << 20, &svc_g.reqs_max);
  if (rc == 0) rc = rt_env_u32("SVC_WORKERS", 2, 1, 16, &svc_g.workers);
  if (rc == 0) rc = rt_env_u32("SVC_WORK_QUEUE_MAX", 256, 1, 1u << 16, &svc_g.work_queue_max);
  if (rc == 0) rc = rt_env_ms("DB_WAIT", 30000, &svc_g.db_wait_ms);
  uint32_t keep_ms = 0;
  if (rc == 0) rc = rt_env_ms("INBOX_KEEP", 30u * 24u * 3600u * 1000u, &keep_ms);
  svc_g.inbox_keep_s = keep_ms / 1000u;
  if (rc == 0 && svc_g.inbox_keep_s < 3600u) {
    RT_ERROR("INBOX_KEEP must be at least 1h, and longer than busd keeps events",
             RT_LF_INT("seconds", svc_g.inbox_keep_s));
    rc = RT_E_CONFIG;
  }
  if (rc == 0) rc = rt_env_u32("CONSUME_IN_FLIGHT", 64, 1, 4096, &svc_g.consume_in_flight);
  if (rc == 0) rc = rt_env_ms("CONSUME_BATCH_WINDOW", 10, &svc_g.consume_window_ms);
  if (rc == 0) rc = rt_env_u32("SVC_PARKED_MAX", 4096, 1, 1u << 20, &svc_g.parked_max);
  if (rc == 0) rc = bus_config();
  if (rc == 0) rc = rt_pg_config_from_env(&svc_g.pg, "DB");
  if (rc == 0) rc = http_server_config_from_env(&svc_g.http);
  if (rc == 0) rc = rt_env_u32(env_name("HEALTH_PORT"), 0, 0, 65535, &svc_g.cfg.health_port);
  if (rc == 0) rc = svc_tls_config();
  return rc;
}

static int build_router(void) {
  http_router_init(&svc_g.router);
  int rc = 0;
  http_router_init(&svc_g.health_router);
  for (size_t i = 0; rc == 0 && i < svc_health_routes_count; i++) {
    rc = http_router_add(&svc_g.router, svc_health_routes[i].method, svc_health_routes[i].pattern,
                         HTTP_HANDLER(svc_http_dispatch), (void *)(uintptr_t)&svc_health_routes[i]);
    if (rc == 0)
      rc = http_router_add(&svc_g.health_router, svc_health_routes[i].method,
                           svc_health_routes[i].pattern, HTTP_HANDLER(svc_http_dispatch),
                           (void *)(uintptr_t)&svc_health_routes[i]);
  }
  for (size_t i = 0; rc == 0 && i < svc_g.def->routes_count; i++) {
    const svc_route_t *r = &svc_g.def->routes[i];
    rc = http_router_add(&svc_g.router, r->method, r->pattern, HTTP_HANDLER(svc_http_dispatch),
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
  uint64_t deadline = rt_now_ns() + (uint64_t)svc_g.db_wait_ms * 1000000u;
  bool warned = false;
  for (;;) {
    PGconn *conn = PQconnectdb(svc_g.cfg.db_url);
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
               RT_LF_INT("waited_ms", svc_g.db_wait_ms));
      return NULL;
    }
    if (!warned) {
      RT_WARN("waiting for the database", RT_LF_STR("error", msg),
              RT_LF_INT("up_to_ms", svc_g.db_wait_ms));
      warned = true;
    }
    sleep_ms(200);
  }
}

static int start_up_db(void) {
  PGconn *conn = connect_blocking();
  if (conn == NULL) return SVC_E_DB_WAIT;
  int rc = svc_migrate(conn, "common", svc_common_migrations, svc_common_migrations_count);
  if (rc == 0) rc = svc_migrate(conn, svc_g.def->name, svc_g.def->migrations, svc_g.def->migrations_count);
  if (rc == 0 && svc_g.def->setup != NULL) rc = svc_g.def->setup(conn);
  PQfinish(conn);
  return rc;
}

/* One line per prepared statement: id, parameter count, SQL (the texts
 * are single lines). For tools that must run exactly the service's SQL,
 * such as bench/transfer. */
static void print_statements(const svc_def_t *def) {
  size_t n = 0;
  for (size_t t = 0; t < sizeof stmt_tables / sizeof stmt_tables[0]; t++) {
    for (size_t i = 0; i < stmt_tables[t]->count; i++, n++)
      printf("%zu\t%d\t%s\n", n, stmt_tables[t]->stmts[i].nparams, stmt_tables[t]->stmts[i].sql);
  }
  for (size_t i = 0; i < def->stmts_count; i++, n++)
    printf("%zu\t%d\t%s\n", n, def->stmts[i].nparams, def->stmts[i].sql);
}

enum { ARGS_RUN = 0, ARGS_HELP = 1, ARGS_STATEMENTS = 2, ARGS_EVENTS = 3, ARGS_COMMAND = 4,
       ARGS_ROUTES = 5 };

static const svc_def_t *g_def_for_args;

/* ------------------------------------------------------------------------ */
/* Loop sizing                                                              */
/* ------------------------------------------------------------------------ */

/* The service's own timers on a loop thread, beyond those of its requests:
 * its periodic ticks (account: sweeper, mover; payment: stuck check;
 * event: chainer, dead-letter count) and the connect deadlines of its
 * peer clients (svc_peer_client(): 16 connections each at most today).
 * One more than this is refused and reported like any other. */
#define SVC_OWN_TIMERS 64

/* Provided buffers of a service's loops: requests to a service and the
 * events delivered to it are small (about 1 KiB), and a larger one spans
 * buffers at the cost of a completion each. */
#define SVC_BUF_BYTES 4096

/* Past these a loop's tables would take more memory than the work they
 * serve could ever use: the configuration is wrong. */
#define SVC_LOOP_TIMERS_MAX (1u << 24)
#define SVC_LOOP_MSGS_MAX (1u << 20)

/* The loop of each serving thread, from the configuration, as the sum of
 * what may use it at once; `serving` false: a command's (svc_cmd_t), with
 * its database pool and nothing else. All loop threads get the same,
 * sized for thread 0, which has the bus as well. */
static int loop_config(rt_loop_config_t *lc, bool serving) {
  http_server_config_t http = svc_g.http;
  http_server_config_defaults(&http);
  rt_pg_config_t pg = svc_g.pg;
  rt_pg_config_defaults(&pg);
  uint64_t pools = serving && svc_g.cfg.db_read_url != NULL ? 2 : 1;
  uint64_t bus = serving && svc_g.cfg.bus_on ? 1 : 0;
  uint64_t deliveries = bus != 0 ? svc_consume_deliveries_max() : 0;
  uint64_t conns = serving ? http.conns_max : 0;
  uint64_t reqs = serving ? svc_g.reqs_max : 0;
  uint64_t threads = serving ? svc_g.cfg.threads : 1;
  uint64_t timers =
      conns                             /* a connection's idle or request deadline */
      + reqs                            /* a request's own wait: its long-poll's deadline
                                         * or its call to a peer service, one at a time */
      + pools * rt_pg_pool_timers(&pg)  /* batch deadlines, connects, stalls, restarts */
      + deliveries                      /* a delivery waiting to be tried again */
      + bus * 5                         /* the bus client's three, the relay's tick,
                                         * the consumer's batch window */
      + 3                               /* drain grace, claim pruning, the loop's drain */
      + SVC_OWN_TIMERS;                 /* the service's own, and a command's waits */
  uint64_t msgs =
      2 * deliveries * threads          /* an applied delivery wakes the long-polls on its
                                         * key on every thread (svc_notify), handled there
                                         * an iteration later: two iterations' worth */
      + pools * (pg.conns_count + 1)    /* a connection down tells its supervisor */
      + 1;                              /* svc_thread_call(): the one caller, the event
                                         * chainer's wake-up, keeps one in flight */
  uint64_t receivers =
      (conns < reqs ? conns : reqs)     /* connections with a request on its way: past
                                         * reqs_max, requests are answered 503 anyway */
      + bus;                            /* the bus client */
  if (timers > SVC_LOOP_TIMERS_MAX) {
    RT_ERROR("loop sizing: too many timers per thread; lower HTTP_CONNS_MAX, SVC_REQUESTS_MAX,"
             " DB_QUEUE_MAX, DB_CONNS x DB_PIPELINE_DEPTH or CONSUME_IN_FLIGHT",
             RT_LF_INT("timers", timers), RT_LF_INT("max", SVC_LOOP_TIMERS_MAX));
    return RT_E_CONFIG;
  }
  if (msgs > SVC_LOOP_MSGS_MAX) {
    RT_ERROR("loop sizing: too many messages per thread; lower CONSUME_IN_FLIGHT or the threads",
             RT_LF_INT("messages", msgs), RT_LF_INT("max", SVC_LOOP_MSGS_MAX));
    return RT_E_CONFIG;
  }
  *lc = (rt_loop_config_t){
      .timers_count = (uint32_t)timers,
      .msgs_count = (uint32_t)msgs,
      .msg_bytes = SVC_MSG_BYTES,
      .buf_bytes = SVC_BUF_BYTES,
  };
  lc->bufs_count = rt_loop_bufs_for(lc, receivers);
  if (serving) {
    RT_INFO("loop sized", RT_LF_INT("timers", lc->timers_count),
            RT_LF_INT("messages", lc->msgs_count), RT_LF_INT("recv_buffers", lc->bufs_count),
            RT_LF_INT("buffer_bytes", lc->buf_bytes));
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Commands                                                                 */
/* ------------------------------------------------------------------------ */

void svc_cmd_finish(svc_cmd_t *cmd, int status) {
  cmd->status = status;
  cmd->done = true;
  rt_loop_stop(cmd->loop);
}

typedef struct cmd_wait {
  svc_cmd_t *cmd;
  bool (*cond)(svc_cmd_t *cmd);
  uint64_t deadline_ns;
} cmd_wait_t;

static void cmd_wait_tick(rt_timer_t *t) {
  cmd_wait_t *w = t->ctx;
  if (w->cond(w->cmd) || rt_now_ns() > w->deadline_ns) rt_loop_stop(w->cmd->loop);
}

/* Runs the loop until cond holds (checked every 10 ms) or timeout_ms. */
static bool cmd_run_until(svc_cmd_t *cmd, bool (*cond)(svc_cmd_t *), uint32_t timeout_ms) {
  if (cond(cmd)) return true;
  cmd_wait_t w = {cmd, cond, rt_now_ns() + (uint64_t)timeout_ms * 1000000u};
  rt_timer_t t;
  rt_timer_init(&t, cmd_wait_tick, &w);
  if (rt_timer_start(cmd->loop, &t, 10, 10) < 0) return false;
  rt_loop_run(cmd->loop);
  rt_timer_stop(cmd->loop, &t);
  return cond(cmd);
}

static bool cmd_pool_up(svc_cmd_t *cmd) { return rt_pg_pool_up(cmd->pool); }
static bool cmd_done(svc_cmd_t *cmd) { return cmd->done; }
static bool cmd_closed(svc_cmd_t *cmd) { return cmd->user == cmd; }
static void cmd_pool_closed(void *arg) {
  svc_cmd_t *cmd = arg;
  cmd->user = cmd; /* a mark: the command's own is gone by now */
}

static int run_command(const svc_command_t *c, int argc, char **argv) {
  svc_cmd_t cmd = {.argc = argc, .argv = argv};
  rt_loop_config_t lc;
  int rc = loop_config(&lc, false);
  if (rc == 0) rc = rt_loop_create(&cmd.loop, &lc);
  rt_pg_config_t pc = svc_g.pg;
  pc.url = svc_g.cfg.db_url;
  pc.name = svc_g.def->name;
  if (rc == 0) rc = rt_pg_pool_create(&cmd.pool, cmd.loop, &pc);
  if (rc == 0) rc = pool_setup_prepared(cmd.pool);
  if (rc == 0) rc = rt_pg_pool_start(cmd.pool);
  if (rc == 0 && !cmd_run_until(&cmd, cmd_pool_up, svc_g.db_wait_ms)) rc = SVC_E_DB_WAIT;
  int status = 1;
  if (rc < 0) {
    fprintf(stderr, "%s %s: %s\n", svc_g.def->name, c->name, rt_strerror(rc));
  } else {
    status = c->start(&cmd);
    if (status == 0) {
      cmd_run_until(&cmd, cmd_done, UINT32_MAX);
      status = cmd.status;
    }
  }
  if (cmd.pool != NULL) {
    cmd.user = NULL;
    rt_pg_pool_close(cmd.pool, cmd_pool_closed, &cmd);
    cmd_run_until(&cmd, cmd_closed, 15000);
  }
  /* The loop first, as after rt_run(): it may still free messages queued
   * for the pool's actors, which live in the pool. */
  if (cmd.loop != NULL) rt_loop_destroy(cmd.loop);
  rt_pg_pool_destroy(cmd.pool);
  return status;
}

static const svc_command_t *command_find(const svc_def_t *def, const char *name) {
  for (size_t i = 0; i < def->commands_count; i++)
    if (strcmp(def->commands[i].name, name) == 0) return &def->commands[i];
  return NULL;
}

static int parse_args(int argc, char **argv, bool *migrate_only) {
  static const struct option opts[] = {
      {"migrate", no_argument, NULL, 'm'},
      {"statements", no_argument, NULL, 's'},
      {"events", no_argument, NULL, 'e'},
      {"routes", no_argument, NULL, 'r'},
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  int c, rc = ARGS_RUN;
  while ((c = getopt_long(argc, argv, "+", opts, NULL)) != -1) {
    if (c == 'm') {
      *migrate_only = true;
    } else if (c == 's') {
      rc = ARGS_STATEMENTS;
    } else if (c == 'e') {
      rc = ARGS_EVENTS;
    } else if (c == 'r') {
      rc = ARGS_ROUTES;
    } else {
      return c == 'h' ? ARGS_HELP : -1;
    }
  }
  if (optind < argc) return rc == ARGS_RUN && command_find(g_def_for_args, argv[optind]) ? ARGS_COMMAND : -1;
  return rc;
}

int svc_main(int argc, char **argv, const svc_def_t *def) {
  svc_g.def = def;
  g_def_for_args = def;
  bool migrate_only = false;
  int rc = parse_args(argc, argv, &migrate_only);
  if (rc == ARGS_STATEMENTS) {
    print_statements(def);
    return 0;
  }
  if (rc == ARGS_EVENTS) {
    print_events(def);
    return 0;
  }
  if (rc == ARGS_ROUTES) {
    print_routes(def);
    return 0;
  }
  bool command = rc == ARGS_COMMAND;
  if (rc != ARGS_RUN && !command) {
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
  bus_strerror_init();
  svc_consume_init_json();
  svc_fault_init();
  stmt_ids_assign();
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
  if (command) {
    int status = run_command(command_find(def, argv[optind]), argc - optind, argv + optind);
    svc_tls_free();
    rt_log_flush();
    return status;
  }
  if (build_router() < 0) return 1;
  rt_signals_block(); /* before the workers, which inherit it */
  rt_loop_config_t loop_cfg;
  rc = loop_config(&loop_cfg, true);
  if (rc == 0) rc = svc_workers_start(svc_g.workers);
  if (rc == 0) rc = rt_run(svc_g.cfg.threads, &loop_cfg, thread_setup, NULL, DRAIN_DEADLINE_MS);
  svc_workers_stop();
  threads_free();
  svc_tls_free();
  rt_log_stopped(rc < 0 ? 1 : 0); /* tests fail on its leftovers */
  return rc < 0 ? 1 : 0;
}
