/*
 * app.h - the gateway process: its configuration, the state every thread
 * shares, and each loop thread's own. Private to the gateway's program
 * files (main.c, config.c, proxy.c, token.c, admin.c); the reusable parts
 * are behind gw.h.
 */
#ifndef GW_APP_H
#define GW_APP_H

#include <stdatomic.h>

#include "gw.h"
#include "tls.h"

#define GW_THREADS_MAX 64
#define GW_EXTRA_ROUTES_MAX 32
#define GW_ROUTES_MAX 64

typedef struct gw_config {
  const char *host;
  uint32_t port;
  const char *admin_host;
  uint32_t admin_port;
  uint32_t threads;
  http_server_config_t http;   /* wire limits: HTTP_* variables */
  gw_tls_config_t tls;
  const char *jwt_keys_dir;
  const char *jwt_keys_list;
  const char *jwt_sign_kid;
  gw_jwt_policy_t jwt;
  uint32_t token_cache_entries;
  gw_rate_t rate_addr;
  gw_rate_t rate_subject;
  gw_rate_t rate_login;        /* POST /v1/auth/token, per address */
  uint32_t rate_slots;
  uint32_t conns_per_addr;
  gw_service_addrs_t services[GW_SVC_COUNT];
  uint32_t upstream_conns;
  uint32_t upstream_timeout_ms;
  uint32_t upstream_connect_timeout_ms;
  uint32_t upstream_fails;
  uint32_t upstream_backoff_ms;
  const char *inner_ca;        /* TLS_CA: mutual TLS to the services; NULL: plain */
  const char *inner_cert;      /* TLS_CERT, TLS_KEY: what the gateway shows them */
  const char *inner_key;
  uint32_t health_interval_ms;
  const char *verify_path;     /* profile's credential check */
  bool access_log;             /* one line per public request */
  gw_hmac_key_t hmac;
  gw_route_t extra[GW_EXTRA_ROUTES_MAX];
  size_t extra_count;
  char extra_storage[2048];
} gw_config_t;

/* Counters of one thread; written by it, summed by /metrics. */
typedef struct gw_counters {
  _Atomic uint64_t requests;
  _Atomic uint64_t auth_ok;         /* requests with a valid token */
  _Atomic uint64_t auth_failed;     /* 401 */
  _Atomic uint64_t forbidden;       /* 403 */
  _Atomic uint64_t rate_limited;    /* 429 */
  _Atomic uint64_t token_cache_hits;
  _Atomic uint64_t token_cache_misses;
  _Atomic uint64_t tokens_issued;
  _Atomic uint64_t logins_failed;
  _Atomic uint64_t upstream_ok;
  _Atomic uint64_t upstream_retries;
  _Atomic uint64_t upstream_502;
  _Atomic uint64_t upstream_503;
  _Atomic uint64_t upstream_504;
} gw_counters_t;

typedef struct gw_app gw_app_t;

/* A loop thread. */
typedef struct gw_thread {
  gw_app_t *app;
  uint32_t index;
  rt_loop_t *loop;
  http_server_t *server;
  http_server_t *admin;        /* thread 0 only */
  gw_tls_filter_t *filter;
  gw_token_cache_t *tokens;
  http_client_t *clients[GW_SVC_COUNT][GW_UPSTREAM_ADDRS_MAX];
  wire_tls_filter_t *inner[GW_SVC_COUNT]; /* under clients[s][*], with TLS_CA */
  uint32_t rr[GW_SVC_COUNT];   /* round-robin cursors */
  rt_pool_t reqs;              /* proxied requests in flight */
  rt_pool_t logins;            /* token requests waiting for profile */
  uint64_t handler_ns;         /* when the current handler was entered */
  gw_rate_state_t rate;        /* the current request's limits (gw_admit) */
  unsigned keys_gen;           /* app->keys_gen its token cache was filled under */
  http_buf_t scratch;          /* headers being built; used within one call */
  rt_timer_t probe_timer;      /* thread 0: upstream health probes */
  rt_timer_t drain_timer;
  uint32_t drain_ticks;
  bool draining;
  gw_counters_t counters;
} gw_thread_t;

struct gw_app {
  gw_config_t cfg;
  gw_tls_t *tls;
  wire_tls_creds_t *inner_tls; /* TLS_CA and the gateway's pair; NULL: plain */
  /* The JWT keys and their JWKS, replaced whole on SIGHUP (reload.c's
   * rules): loaded once per use, never held across a callback. */
  _Atomic(gw_jwt_keys_t *) keys;
  _Atomic(char *) jwks;        /* GET /.well-known/jwks.json, made from keys */
  atomic_uint keys_gen;        /* +1 at each reload: threads drop their token caches */
  gw_jwt_keys_t *keys_retired; /* the set before the last reload (main thread) */
  char *jwks_retired;
  uint64_t reloaded_ns;
  gw_connlimit_t *connlimit;
  gw_ratelimit_t *rl_addr;
  gw_ratelimit_t *rl_subject;
  gw_ratelimit_t *rl_login;
  http_router_t router;
  http_router_t admin_router;
  const gw_route_t *routes[GW_ROUTES_MAX]; /* built-in then extra */
  size_t routes_count;
  gw_thread_t threads[GW_THREADS_MAX];
  /* Published once each thread is set up; /metrics reads them from
   * thread 0 while others may still be starting. */
  _Atomic(http_server_t *) servers[GW_THREADS_MAX];
};

/* config.c: reads the environment into cfg (logging what is wrong). */
int gw_config_load(gw_config_t *cfg);
void gw_config_usage(FILE *f);

/* proxy.c: the handler of every proxied route (arg: the gw_route_t), and
 * the size of its per-request state. */
void gw_proxy_handle(http_exchange_t *ex, void *arg);
size_t gw_proxy_ctx_bytes(void);

/* Checks limits, the token and the route's roles. Returns true when the
 * request may go on (*id_out set, *has_id when a token was given); false
 * when it has been answered (401/403/429). Used by every public route. */
bool gw_admit(gw_thread_t *th, http_exchange_t *ex, const gw_route_t *route,
              gw_identity_t *id_out, bool *has_id);

/* Answers with a JSON error and the gateway's extra headers; logs. */
void gw_reply_error(gw_thread_t *th, http_exchange_t *ex, const gw_route_t *route,
                    const gw_identity_t *id, int status, const char *code,
                    const char *message, const char *extra_headers);

/* One access-log line (request id, route, status, latency, hashed subject). */
void gw_access_log(const char *rid, const char *method, const gw_route_t *route, int status,
                   uint64_t started_ns, const gw_identity_t *id, const char *upstream);

/* The thread's client for address i of a service. */
http_client_t *gw_upstream_client(gw_thread_t *th, gw_service_t svc, int i);

/* token.c: POST /v1/auth/token; its per-request state's size. */
void gw_token_handle(http_exchange_t *ex, void *arg);
size_t gw_token_ctx_bytes(void);

/* admin.c: the admin router, the health probes (thread 0), metrics. */
int gw_admin_routes(gw_app_t *app);
/* Arms the periodic health probes. Returns 0 or RT_E_LIMIT (no timer). */
int gw_health_start(gw_thread_t *th);

/* The OpenAPI document (gateway/openapi.json, embedded at build time by
 * embed_text.py), served at GET /v1/openapi.json. */
extern const char gw_openapi_json[];
extern const size_t gw_openapi_json_len;

/* The thread running the calling code. */
gw_thread_t *gw_thread_self(void);

#endif /* GW_APP_H */
