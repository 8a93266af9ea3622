/*
 * main.c - the gateway process: configuration, start-up, one HTTPS server
 * per loop thread (SO_REUSEPORT) with the TLS filter, the admin server on
 * thread 0, and an orderly drain on SIGTERM.
 */
#include <assert.h>
#include <getopt.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app.h"

#define DRAIN_DEADLINE_MS 15000
#define DRAIN_POLL_MS 10
#define DRAIN_SETTLE_TICKS 5 /* polls after the clients closed: their closes complete */

static gw_app_t app;
static _Thread_local gw_thread_t *self;

gw_thread_t *gw_thread_self(void) { return self; }

/* ------------------------------------------------------------------------ */
/* Routes                                                                   */
/* ------------------------------------------------------------------------ */

static int add_route(const gw_route_t *r) {
  if (app.routes_count == GW_ROUTES_MAX) return GW_E_FULL;
  http_exchange_fn fn = gw_proxy_handle;
  if (r->service == GW_SVC_LOCAL) {
    /* The only route the gateway answers itself. */
    if (strcmp(r->method, "POST") != 0 || strcmp(r->pattern, "/v1/auth/token") != 0)
      return GW_E_CONFIG;
    fn = gw_token_handle;
  }
  app.routes[app.routes_count++] = r;
  return http_router_add(&app.router, r->method, r->pattern, HTTP_HANDLER(fn), (void *)r);
}

/* The headers of the gateway's public documents: the request id, as on
 * every other answer, and a cache lifetime. */
static void public_headers(http_exchange_t *ex, char *out, size_t out_bytes) {
  int n = snprintf(out, out_bytes, "X-Request-Id: %s\r\nCache-Control: public, max-age=300\r\n",
                   http_request_id(ex));
  assert(n > 0 && (size_t)n < out_bytes);
}

/* GET /.well-known/jwks.json: the token-verification public keys, so that
 * other verifiers need no copy of them. Public, like any JWKS. */
static void on_jwks(http_exchange_t *ex, void *arg) {
  (void)arg;
  const char *jwks = atomic_load(&app.jwks);
  const char *body = jwks != NULL ? jwks : "{\"keys\":[]}";
  char extra[96];
  public_headers(ex, extra, sizeof extra);
  http_respond(ex, 200, "application/jwk-set+json", body, strlen(body), extra);
}

/* GET /v1/openapi.json: the API's contract, the file the build embedded.
 * Public: a client reads it before it has a token. */
static void on_openapi(http_exchange_t *ex, void *arg) {
  (void)arg;
  char extra[96];
  public_headers(ex, extra, sizeof extra);
  http_respond(ex, 200, "application/json", gw_openapi_json, gw_openapi_json_len, extra);
}

static int build_routes(void) {
  http_router_init(&app.router);
  int rc = http_router_add(&app.router, "GET", "/.well-known/jwks.json", HTTP_HANDLER(on_jwks),
                           NULL);
  if (rc == 0)
    rc = http_router_add(&app.router, "GET", "/v1/openapi.json", HTTP_HANDLER(on_openapi), NULL);
  for (size_t i = 0; i < gw_routes_count && rc == 0; i++) rc = add_route(&gw_routes[i]);
  for (size_t i = 0; i < app.cfg.extra_count && rc == 0; i++) rc = add_route(&app.cfg.extra[i]);
  if (rc < 0) RT_ERROR("cannot build the route table", RT_LF_STR("error", rt_strerror(rc)));
  return rc;
}

/* --routes: the table as JSON lines, for tests and operators. */
static void print_routes(void) {
  for (size_t i = 0; i < app.routes_count; i++) {
    const gw_route_t *r = app.routes[i];
    json_t *roles = json_array();
    for (uint32_t b = 0; b < GW_ROLES_COUNT; b++)
      if (r->roles & (1u << b)) json_array_append_new(roles, json_string(gw_role_name(1u << b)));
    json_t *j = json_pack("{s:s, s:s, s:s, s:o, s:b}", "method", r->method, "pattern",
                          r->pattern, "service", gw_service_name(r->service), "roles", roles,
                          "anonymous", r->anonymous);
    char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
    if (s != NULL) printf("%s\n", s);
    free(s);
    json_decref(j);
  }
}

/* ------------------------------------------------------------------------ */
/* Shared state                                                             */
/* ------------------------------------------------------------------------ */

/* A key set from GW_JWT_KEYS or GW_JWT_KEYS_DIR, its signer chosen, and
 * its JWKS. */
static int make_keys(gw_jwt_keys_t **out, char **jwks) {
  gw_config_t *c = &app.cfg;
  gw_jwt_keys_t *keys = NULL;
  int rc = gw_jwt_keys_create(&keys);
  if (rc == 0)
    rc = c->jwt_keys_list != NULL ? gw_jwt_keys_load_list(keys, c->jwt_keys_list)
                                  : gw_jwt_keys_load_dir(keys, c->jwt_keys_dir);
  if (rc == 0) rc = GW_E_KEY; /* no key at all */
  if (rc < 0) {
    RT_ERROR("cannot load JWT keys",
             RT_LF_STR("from", c->jwt_keys_list != NULL ? "GW_JWT_KEYS" : c->jwt_keys_dir),
             RT_LF_STR("error", rt_strerror(rc)));
    gw_jwt_keys_destroy(keys);
    return rc;
  }
  if (gw_jwt_keys_set_signer(keys, c->jwt_sign_kid) < 0) {
    /* Verifying without signing is a valid set-up (another instance
     * issues tokens), but it must be a visible choice. */
    RT_WARN("no signing key: POST /v1/auth/token will fail",
            RT_LF_STR("GW_JWT_SIGN_KID", c->jwt_sign_kid != NULL ? c->jwt_sign_kid : "-"));
  }
  if ((*jwks = gw_jwt_keys_jwks(keys)) == NULL) {
    char kids[512];
    gw_jwt_keys_describe(keys, kids, sizeof kids);
    RT_ERROR("cannot publish the JWT keys as a JWKS", RT_LF_STR("keys", kids));
    gw_jwt_keys_destroy(keys);
    return -ENOMEM;
  }
  *out = keys;
  return 0;
}

/* SIGHUP, on the main thread: the key files are read again and the new set
 * replaces the old one whole; a set that cannot be loaded changes nothing.
 * Threads load the pointer once per verification or signature and never
 * keep it across a callback, so the old set is freed at the next reload,
 * at least RELOAD_GAP_MS later. Each thread drops its cache of verified
 * tokens when it sees the generation move: a token of a removed key fails
 * from then on, and one of a kept key passes as before. */
#define RELOAD_GAP_MS 1000

/* The TLS certificate and key files, read again: new handshakes use them,
 * open connections keep theirs (gw_tls_reload()). A pair that cannot be
 * loaded changes nothing. */
static void reload_tls(void) {
  int rc = gw_tls_reload(app.tls);
  if (rc < 0) {
    RT_ERROR("SIGHUP: the TLS certificate was not reloaded; the one in use stays",
             RT_LF_STR("cert", app.cfg.tls.cert_path), RT_LF_STR("key", app.cfg.tls.key_path),
             RT_LF_STR("error", rt_strerror(rc)));
    return;
  }
  RT_INFO("SIGHUP: TLS certificate reloaded", RT_LF_STR("cert", app.cfg.tls.cert_path),
          RT_LF_STR("cert_key", gw_tls_key_desc(app.tls)),
          RT_LF_STR("cert_sha256", gw_tls_cert_sha256(app.tls)));
}

static void reload(void *arg) {
  (void)arg;
  uint64_t since = rt_now_ns() - app.reloaded_ns;
  if (app.reloaded_ns != 0 && since < RELOAD_GAP_MS * 1000000ull) {
    struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)(RELOAD_GAP_MS * 1000000ull - since)};
    nanosleep(&ts, NULL);
  }
  reload_tls();
  gw_jwt_keys_t *keys = NULL;
  char *jwks = NULL;
  if (make_keys(&keys, &jwks) < 0) {
    RT_ERROR("SIGHUP: the keys were not reloaded; the ones in use stay", RT_LF_INT("keys_gen",
             atomic_load(&app.keys_gen)));
    return;
  }
  gw_jwt_keys_destroy(app.keys_retired);
  free(app.jwks_retired);
  app.keys_retired = atomic_exchange(&app.keys, keys);
  app.jwks_retired = atomic_exchange(&app.jwks, jwks);
  unsigned gen = atomic_fetch_add(&app.keys_gen, 1) + 1;
  app.reloaded_ns = rt_now_ns();
  char kids[512];
  gw_jwt_keys_describe(keys, kids, sizeof kids);
  const char *signer = gw_jwt_keys_signer(keys);
  RT_INFO("SIGHUP: JWT keys reloaded", RT_LF_STR("jwt_keys", kids),
          RT_LF_STR("jwt_signer", signer != NULL ? signer : "-"), RT_LF_INT("keys_gen", gen));
}

static int create_shared(void) {
  gw_config_t *c = &app.cfg;
  int rc = gw_tls_create(&app.tls, &c->tls);
  if (rc < 0) {
    RT_ERROR("cannot load the TLS certificate and key", RT_LF_STR("cert", c->tls.cert_path),
             RT_LF_STR("key", c->tls.key_path), RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  gw_jwt_keys_t *keys = NULL;
  char *jwks = NULL;
  rc = make_keys(&keys, &jwks);
  atomic_store(&app.keys, keys);
  atomic_store(&app.jwks, jwks);
  if (rc == 0 && c->inner_ca != NULL)
    rc = wire_tls_creds_load(&app.inner_tls, c->inner_ca, c->inner_cert, c->inner_key);
  if (rc == 0) rc = gw_connlimit_create(&app.connlimit, c->conns_per_addr, c->rate_slots);
  if (rc == 0) rc = gw_ratelimit_create(&app.rl_addr, &c->rate_addr, c->rate_slots);
  if (rc == 0) rc = gw_ratelimit_create(&app.rl_subject, &c->rate_subject, c->rate_slots);
  if (rc == 0) rc = gw_ratelimit_create(&app.rl_login, &c->rate_login, c->rate_slots);
  return rc;
}

static void destroy_shared(void) {
  gw_ratelimit_destroy(app.rl_login);
  gw_ratelimit_destroy(app.rl_subject);
  gw_ratelimit_destroy(app.rl_addr);
  gw_connlimit_destroy(app.connlimit);
  free(atomic_load(&app.jwks));
  free(app.jwks_retired);
  gw_jwt_keys_destroy(atomic_load(&app.keys));
  gw_jwt_keys_destroy(app.keys_retired);
  gw_tls_destroy(app.tls);
  wire_tls_creds_free(app.inner_tls);
}

static void log_startup(void) {
  gw_config_t *c = &app.cfg;
  char kids[512], upstreams[GW_SVC_COUNT][256];
  gw_jwt_keys_describe(atomic_load(&app.keys), kids, sizeof kids);
  const char *signer = gw_jwt_keys_signer(atomic_load(&app.keys));
  for (int s = GW_SVC_PROFILE; s < GW_SVC_COUNT; s++) {
    size_t n = 0;
    upstreams[s][0] = '\0';
    for (uint32_t i = 0; i < c->services[s].count && n < sizeof upstreams[s]; i++) {
      int w = snprintf(upstreams[s] + n, sizeof upstreams[s] - n, "%s%s:%u", i ? "," : "",
                       c->services[s].addrs[i].host, (unsigned)c->services[s].addrs[i].port);
      if (w > 0) n += (size_t)w;
    }
  }
  RT_INFO("gateway starting", RT_LF_STR("host", c->host), RT_LF_INT("port", c->port),
          RT_LF_STR("admin_host", c->admin_host), RT_LF_INT("admin_port", c->admin_port),
          RT_LF_INT("threads", c->threads), RT_LF_STR("cert", c->tls.cert_path),
          RT_LF_STR("cert_key", gw_tls_key_desc(app.tls)),
          RT_LF_STR("tls_ec", gw_tls_ec_desc(app.tls)),
          RT_LF_STR("cert_sha256", gw_tls_cert_sha256(app.tls)), RT_LF_STR("jwt_keys", kids),
          RT_LF_STR("jwt_signer", signer != NULL ? signer : "-"),
          RT_LF_STR("profile", upstreams[GW_SVC_PROFILE]),
          RT_LF_STR("account", upstreams[GW_SVC_ACCOUNT]),
          RT_LF_STR("payment", upstreams[GW_SVC_PAYMENT]),
          RT_LF_STR("event", upstreams[GW_SVC_EVENT]), RT_LF_INT("routes", app.routes_count));
}

/* ------------------------------------------------------------------------ */
/* Sizing                                                                   */
/* ------------------------------------------------------------------------ */

#define ADMIN_CONNS_MAX 256  /* scrapers and probes on the admin port */
#define RECV_BUFS_MAX 1024   /* provided recv buffers at most, per thread */
#define RECV_BUF_BYTES 4096  /* a page: a typical request arrives whole */

_Static_assert((RECV_BUFS_MAX & (RECV_BUFS_MAX - 1)) == 0, "the buffer ring wants a power of 2");
_Static_assert(RECV_BUFS_MAX <= 32768, "the runtime's largest buffer ring");
_Static_assert(RECV_BUF_BYTES % 4096 == 0, "buffers of whole pages");

/* What each loop thread is sized for, every count the sum of its users
 * and each from the configuration, so that the memory taken at start-up
 * follows the limits an operator sets (HTTP_CONNS_MAX first of all) and
 * nothing else. Filled once by size_threads(), before any thread. */
typedef struct sizes {
  uint32_t conns;            /* HTTPS connections (HTTP_CONNS_MAX) */
  uint32_t upstream_queue;   /* requests one upstream client may hold */
  uint32_t tls_records;      /* connections holding TLS record buffers at once */
  rt_loop_config_t loop;
} sizes_t;

static sizes_t sizes;

static uint32_t pow2_at_least(uint32_t n) {
  uint32_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

/* Fills `sizes` from the configuration. Returns 0, or RT_E_CONFIG when a
 * count would not fit the runtime's 32 bits (logged). */
static int size_threads(const gw_config_t *c) {
  sizes_t *z = &sizes;
  uint64_t conns = c->http.conns_max;
  uint64_t clients = 0; /* an upstream client per service address */
  for (int s = GW_SVC_PROFILE; s < GW_SVC_COUNT; s++) clients += c->services[s].count;
  /* An HTTPS connection has one request at a time, proxied or a login,
   * and any one service may be asked for all of them at once; thread 0
   * adds a health probe per address. */
  uint64_t queue = conns   /* a request per HTTPS connection */
                 + 1;      /* the address's health probe */
  /* A connection holds TLS record buffers (20.9 KiB) only while a record
   * of its is partly received (tls_filter.c): requests that come whole in
   * one read never do; large bodies and slow clients do, for as long as
   * the rest takes, the handshake timeout at most. A quarter of the
   * connections at once; one more is closed and counted
   * (gw_tls_record_buffers_exhausted_total). At start-up the pool touches
   * one page of each buffer (its free list), the rest only when used. */
  uint64_t records = conns / 4 + 1;
  /* Timers armed at once. An upstream client arms one per request it holds
   * (its pool: the queue plus one per connection) and one per connect. */
  uint64_t timers = conns                                   /* HTTPS connections */
                  + ADMIN_CONNS_MAX                         /* admin connections */
                  + 1                                       /* TLS handshake sweep */
                  + clients * (queue + c->upstream_conns)   /* upstream requests */
                  + clients * c->upstream_conns             /* upstream connects */
                  + 1                                       /* health probes */
                  + 1;                                      /* drain poll */
  /* Actor messages: no gateway code sends any, and the one the runtime
   * sends by itself (a stopped actor's notice to its supervisor) has no
   * taker here, connections having no supervisor. A few anyway: code that
   * starts sending them meets the pool's exhaustion warning, not a crash. */
  uint64_t msgs = 64;
  /* Provided recv buffers: the kernel fills one per recv completion and
   * the server gives it back when the completion's callback returns, so
   * they cover one loop iteration's completions: one per connection with
   * bytes waiting, up to RECV_BUFS_MAX. Past that a recv finds none, ends
   * in ENOBUFS and is armed again (counted and logged by the loop): a
   * system call lost, no byte. As the ring turns every buffer is touched:
   * this is resident memory, hence whole pages and no more. */
  uint64_t bufs = conns                   /* HTTPS connections */
                + ADMIN_CONNS_MAX;        /* admin connections */
  if (bufs > RECV_BUFS_MAX) bufs = RECV_BUFS_MAX;
  if (timers > UINT32_MAX || queue > UINT32_MAX) {
    RT_ERROR("the limits need more timers than a loop can have",
             RT_LF_INT("HTTP_CONNS_MAX", conns), RT_LF_INT("upstream_addresses", clients),
             RT_LF_INT("GW_UPSTREAM_CONNS", c->upstream_conns));
    return RT_E_CONFIG;
  }
  z->conns = (uint32_t)conns;
  z->upstream_queue = (uint32_t)queue;
  z->tls_records = (uint32_t)records;
  z->loop = (rt_loop_config_t){
      .timers_count = (uint32_t)timers,
      .msgs_count = (uint32_t)msgs,
      .msg_bytes = 64,
      .bufs_count = pow2_at_least((uint32_t)bufs),
      .buf_bytes = RECV_BUF_BYTES,
      /* Ops going in per iteration: about a send and a recv per
       * connection with bytes waiting, the same bound as the buffers
       * (upstream connections' ops ride along). The loop queues the rest
       * in order, so this sets how many go in one system call, no limit. */
      .sq_entries = pow2_at_least((uint32_t)bufs),
      /* actor_budget and the batch wait keep the loop's defaults: they
       * pace work, they size nothing. */
  };
  /* The relations the rest of the gateway relies on. */
  assert(z->upstream_queue > z->conns);                /* a probe is never refused */
  assert(z->tls_records > 0 && z->tls_records <= z->conns);
  assert(z->loop.timers_count >= z->conns + ADMIN_CONNS_MAX + 3);
  assert(z->loop.bufs_count <= RECV_BUFS_MAX);
  assert(z->loop.sq_entries == z->loop.bufs_count);
  RT_INFO("each loop thread sized", RT_LF_INT("conns", z->conns),
          RT_LF_INT("tls_record_buffers", z->tls_records),
          RT_LF_INT("upstream_queue", z->upstream_queue),
          RT_LF_INT("timers", z->loop.timers_count), RT_LF_INT("msgs", z->loop.msgs_count),
          RT_LF_INT("recv_buffers", z->loop.bufs_count),
          RT_LF_INT("recv_buffer_bytes", z->loop.buf_bytes));
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                  */
/* ------------------------------------------------------------------------ */

/* With TLS_CA, one client-side filter per service on this thread, for
 * all its addresses: each connection checks it reached that service. */
static int create_inner_tls(gw_thread_t *th, int s, const http_filter_t **out) {
  gw_config_t *c = &app.cfg;
  *out = NULL;
  if (app.inner_tls == NULL || c->services[s].count == 0) return 0;
  uint32_t conns = c->upstream_conns * c->services[s].count;
  int rc = wire_tls_client_create(&th->inner[s], app.inner_tls, gw_service_name((gw_service_t)s),
                                  conns);
  if (rc == 0) *out = wire_tls_filter_http(th->inner[s]);
  return rc;
}

static int create_clients(gw_thread_t *th) {
  gw_config_t *c = &app.cfg;
  for (int s = GW_SVC_PROFILE; s < GW_SVC_COUNT; s++) {
    const http_filter_t *filter = NULL;
    int rc = create_inner_tls(th, s, &filter);
    if (rc < 0) return rc;
    for (uint32_t i = 0; i < c->services[s].count; i++) {
      http_client_config_t cc = {
          .host = c->services[s].addrs[i].host,
          .port = c->services[s].addrs[i].port,
          .conns_max = c->upstream_conns,
          .queue_max = sizes.upstream_queue,
          .connect_timeout_ms = c->upstream_connect_timeout_ms,
          .request_timeout_ms = c->upstream_timeout_ms,
          .filter = filter,
      };
      rc = http_client_create(&th->clients[s][i], th->loop, &cc);
      if (rc < 0) return rc;
    }
  }
  return 0;
}

static void destroy_clients(gw_thread_t *th) {
  for (int s = 0; s < GW_SVC_COUNT; s++) {
    for (int i = 0; i < GW_UPSTREAM_ADDRS_MAX; i++) {
      http_client_destroy(th->clients[s][i]);
      th->clients[s][i] = NULL;
    }
  }
}

/* Draining: the servers close their listeners and finish what is in
 * flight; once no connection and no upstream request is left, the
 * upstream clients close, and a few polls later (their closes take a loop
 * turn or two) the thread reports itself drained. */
static void drain_poll(rt_timer_t *t) {
  gw_thread_t *th = t->ctx;
  const http_server_stats_t *st = http_server_stats(th->server);
  if (th->drain_ticks == 0) {
    if (atomic_load(&st->conns_active) > 0 || th->reqs.in_use > 0 || th->logins.in_use > 0)
      return;
    destroy_clients(th);
  }
  if (++th->drain_ticks < DRAIN_SETTLE_TICKS) return;
  rt_timer_stop(th->loop, &th->drain_timer);
  rt_loop_drained(th->loop);
}

static void drain(rt_loop_t *loop, void *arg) {
  gw_thread_t *th = arg;
  th->draining = true;
  rt_timer_stop(loop, &th->probe_timer);
  gw_tls_filter_stop(th->filter);
  rt_timer_init(&th->drain_timer, drain_poll, th);
  /* Without the poll nothing would report this thread drained: report it
   * now rather than hold the process to its drain deadline. */
  if (rt_timer_start(loop, &th->drain_timer, DRAIN_POLL_MS, DRAIN_POLL_MS) < 0)
    rt_loop_drained(loop);
}

static int start_server(gw_thread_t *th) {
  gw_config_t *c = &app.cfg;
  http_server_config_t sc = c->http;
  sc.host = c->host;
  sc.port = (uint16_t)c->port;
  sc.conns_max = sizes.conns;
  sc.filter = gw_tls_filter_http(th->filter);
  int rc = http_server_create(&th->server, th->loop, &sc, &app.router);
  if (rc == 0) rc = http_server_start(th->server);
  if (rc < 0 || th->index != 0) return rc;
  http_server_config_t ac = {.host = c->admin_host, .port = (uint16_t)c->admin_port,
                             .conns_max = ADMIN_CONNS_MAX};
  rc = http_server_create(&th->admin, th->loop, &ac, &app.admin_router);
  if (rc == 0) rc = http_server_start(th->admin);
  if (rc == 0) {
    RT_INFO("listening", RT_LF_STR("host", c->host), RT_LF_INT("port", http_server_port(th->server)),
            RT_LF_STR("admin_host", c->admin_host),
            RT_LF_INT("admin_port", http_server_port(th->admin)), RT_LF_INT("threads", c->threads));
  }
  return rc;
}

static int thread_setup(rt_loop_t *loop, uint32_t index, void *arg) {
  gw_thread_t *th = &app.threads[index];
  gw_config_t *c = &app.cfg;
  th->app = &app;
  th->index = index;
  th->loop = loop;
  self = th;
  /* Both are stopped at drain on every thread, started or not. */
  rt_timer_init(&th->probe_timer, NULL, th);
  rt_timer_init(&th->drain_timer, NULL, th);
  int rc = gw_token_cache_create(&th->tokens, c->token_cache_entries);
  if (rc == 0)
    rc = gw_tls_filter_create(&th->filter, app.tls, loop, app.connlimit, sizes.conns,
                              sizes.tls_records);
  /* One request in flight per connection: pools as large as the server's. */
  if (rc == 0) rc = rt_pool_init(&th->reqs, "gw_reqs", gw_proxy_ctx_bytes(), sizes.conns);
  if (rc == 0) rc = rt_pool_init(&th->logins, "gw_logins", gw_token_ctx_bytes(), sizes.conns);
  if (rc == 0) rc = http_buf_init(&th->scratch, 4096, 256 * 1024);
  if (rc == 0) rc = create_clients(th);
  if (rc == 0) rc = start_server(th);
  if (rc == 0) rc = rt_loop_on_drain(loop, drain, th);
  if (rc == 0 && index == 0) rc = gw_health_start(th);
  if (rc < 0) {
    RT_ERROR("thread start-up failed", RT_LF_INT("thread", index),
             RT_LF_STR("host", c->host), RT_LF_INT("port", c->port),
             RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  atomic_store(&app.servers[index], th->server);
  return 0;
}

static void thread_teardown(gw_thread_t *th) {
  /* Servers first: a connection still open at a drain deadline gives its
   * TLS state back to the filter's pool. */
  http_server_destroy(th->server);
  http_server_destroy(th->admin);
  gw_tls_filter_destroy(th->filter);
  /* The upstream clients were destroyed in the drain and their
   * connections closed since. */
  for (int s = 0; s < GW_SVC_COUNT; s++) wire_tls_filter_destroy(th->inner[s]);
  gw_token_cache_destroy(th->tokens);
  /* The leak check: after a clean drain every request came back; at a
   * drain deadline those still in flight are counted as leftovers. */
  rt_pool_deinit(&th->reqs);
  rt_pool_deinit(&th->logins);
  http_buf_deinit(&th->scratch);
}

/* ------------------------------------------------------------------------ */
/* main                                                                     */
/* ------------------------------------------------------------------------ */

static int parse_args(int argc, char **argv, bool *routes_only) {
  static const struct option opts[] = {
      {"help", no_argument, NULL, 'h'}, {"routes", no_argument, NULL, 'r'}, {NULL, 0, NULL, 0}};
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    if (c == 'r') {
      *routes_only = true;
    } else {
      return c == 'h' ? 1 : -1;
    }
  }
  return optind == argc ? 0 : -1;
}

static void init_logging(void) {
  int level = rt_log_level_parse(rt_env_str("LOG_LEVEL", "info"));
  const char *key = rt_env_str("LOG_HASH_KEY", NULL);
  rt_log_init("gateway", level < 0 ? RT_LOG_INFO : (rt_log_level_t)level, (const uint8_t *)key,
              key != NULL ? strlen(key) : 0);
  rt_strerror_register(HTTP_E_RANGE_LO, HTTP_E_RANGE_HI, http_strerror);
  rt_strerror_register(HTTP_CLIENT_E_RANGE_LO, HTTP_CLIENT_E_RANGE_HI, http_client_strerror);
  gw_register_errors();
}

int main(int argc, char **argv) {
  init_logging();
  bool routes_only = false;
  int rc = parse_args(argc, argv, &routes_only);
  if (rc != 0) {
    gw_config_usage(rc > 0 ? stdout : stderr);
    return rc > 0 ? 0 : 2;
  }
  if (routes_only) {
    /* Only the extra routes' variable matters here. */
    const char *spec = rt_env_str("GW_EXTRA_ROUTES", NULL);
    int n = spec ? gw_routes_parse_extra(spec, app.cfg.extra, GW_EXTRA_ROUTES_MAX,
                                         app.cfg.extra_storage, sizeof app.cfg.extra_storage)
                 : 0;
    app.cfg.extra_count = n > 0 ? (size_t)n : 0;
    if (n < 0 || build_routes() < 0) return 2;
    print_routes();
    return 0;
  }
  if (gw_config_load(&app.cfg) < 0) return 2;
  if (build_routes() < 0 || gw_admin_routes(&app) < 0) return 2;
  if (size_threads(&app.cfg) < 0) return 2;
  if (create_shared() < 0) {
    destroy_shared();
    return 1;
  }
  log_startup();
  rt_on_reload(reload, NULL);
  rc = rt_run(app.cfg.threads, &sizes.loop, thread_setup, NULL, DRAIN_DEADLINE_MS);
  for (uint32_t i = 0; i < app.cfg.threads; i++) thread_teardown(&app.threads[i]);
  destroy_shared();
  rt_log_stopped(rc < 0 ? 1 : 0); /* tests fail on its leftovers */
  return rc < 0 ? 1 : 0;
}
