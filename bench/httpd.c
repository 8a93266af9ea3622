/*
 * httpd.c - a minimal HTTP server on the runtime, for benchmarks and for
 * exercising the HTTP stack end to end: /healthz, /readyz, /metrics,
 * /hello (a fixed small body) and POST /echo.
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "tls.h"

#define THREADS_MAX 64

typedef struct app {
  http_router_t router;
  http_server_config_t http;
  const char *host;
  uint32_t port;
  uint32_t threads;
  /* One server per loop thread, published as each thread finishes set-up;
   * /metrics may run on one thread while another is still starting. */
  _Atomic(http_server_t *) servers[THREADS_MAX];
  _Atomic(rt_loop_t *) loops[THREADS_MAX];
  /* With TLS_CA: mutual TLS as a service of the platform serves it (the
   * inner TLS's cost is measured against this server). */
  wire_tls_creds_t *tls_creds;
  wire_tls_filter_t *tls[THREADS_MAX];
} app_t;

static app_t app;

static void on_healthz(http_exchange_t *ex, void *arg) {
  http_respond(ex, 200, "text/plain", "ok\n", 3, NULL);
}

static void on_readyz(http_exchange_t *ex, void *arg) {
  static const char body[] = "{\"ready\":true}";
  http_respond(ex, 200, "application/json", body, sizeof body - 1, NULL);
}

static void on_hello(http_exchange_t *ex, void *arg) {
  static const char body[] = "hello, world\n";
  http_respond(ex, 200, "text/plain", body, sizeof body - 1, NULL);
}

static void on_echo(http_exchange_t *ex, void *arg) {
  const http_msg_t *req = http_request(ex);
  http_respond(ex, 200, "application/octet-stream", req->body, req->body_len, NULL);
}

static void metrics_render(wire_metrics_t *m, void *arg) {
  http_server_t *servers[THREADS_MAX];
  rt_loop_t *loops[THREADS_MAX];
  uint32_t n = 0, nl = 0;
  for (uint32_t i = 0; i < THREADS_MAX; i++) {
    http_server_t *s = atomic_load(&app.servers[i]);
    if (s != NULL) servers[n++] = s;
    rt_loop_t *l = atomic_load(&app.loops[i]);
    if (l != NULL) loops[nl++] = l;
  }
  http_server_metrics(m, "http_", servers, n);
  wire_metrics_loops(m, loops, nl);
  rt_loop_stats_t st;
  rt_loop_stats(rt_loop_current(), &st);
  wire_metrics_counter(m, "rt_loop_iterations_total", "Loop iterations of this thread.",
                       st.iterations);
  wire_metrics_counter(m, "rt_sq_overflow_total", "Ops queued because the SQ was full.",
                       st.overflowed);
}

static void on_metrics(http_exchange_t *ex, void *arg) {
  http_respond_metrics(ex, metrics_render, NULL, 1 << 20);
}

static int thread_setup(rt_loop_t *loop, uint32_t index, void *arg) {
  http_server_t *server = NULL;
  http_server_config_t cfg = app.http;
  cfg.host = app.host;
  cfg.port = (uint16_t)app.port;
  int rc = 0;
  if (app.tls_creds != NULL) {
    rc = wire_tls_server_create(&app.tls[index], app.tls_creds, cfg.conns_max);
    if (rc < 0) return rc;
    cfg.filter = wire_tls_filter_http(app.tls[index]);
  }
  rc = http_server_create(&server, loop, &cfg, &app.router);
  if (rc < 0) return rc;
  rc = http_server_start(server);
  if (rc < 0) {
    RT_ERROR("cannot listen", RT_LF_STR("host", app.host), RT_LF_INT("port", app.port),
             RT_LF_STR("error", rt_strerror(rc)));
    http_server_destroy(server);
    return rc;
  }
  atomic_store(&app.servers[index], server);
  atomic_store(&app.loops[index], loop);
  if (index == 0) {
    RT_INFO("listening", RT_LF_STR("host", app.host),
            RT_LF_INT("port", http_server_port(server)),
            RT_LF_INT("threads", app.threads));
  }
  return 0;
}

static void usage(FILE *f) {
  fprintf(f,
          "usage: bench_httpd [--host ADDR] [--port N] [--threads N]\n"
          "\n"
          "A minimal HTTP/1.1 server on the io_uring actor runtime.\n"
          "Routes: GET /healthz, GET /readyz, GET /metrics, GET /hello, POST /echo.\n"
          "\n"
          "Environment (flags win):\n"
          "  HTTPD_HOST              listen address          (127.0.0.1)\n"
          "  HTTPD_PORT              listen port             (7080)\n"
          "  HTTPD_THREADS           loop threads            (1)\n"
          "  HTTP_HEADER_TIMEOUT_MS  request read deadline   (10000)\n"
          "  HTTP_IDLE_TIMEOUT_MS    keep-alive idle close   (60000)\n"
          "  HTTP_HEADER_BYTES_MAX   431 above               (8192)\n"
          "  HTTP_HEADERS_COUNT_MAX  431 above               (64)\n"
          "  HTTP_URL_BYTES_MAX      414 above               (2048)\n"
          "  HTTP_BODY_BYTES_MAX     413 above               (1048576)\n"
          "  HTTP_CONNS_MAX          per thread, 503 above   (10000)\n"
          "  TLS_CA, TLS_CERT, TLS_KEY\n"
          "                          mutual TLS as the platform's services serve it:\n"
          "                          clients must show a certificate of TLS_CA\n"
          "                          (unset: plain TCP)\n"
          "  LOG_LEVEL               debug|info|warn|error   (info)\n"
          "  RT_BATCH_WAIT_US        wait for batches, us    (50, or off)\n"
          "  RT_BATCH_WAIT_MAX       completions to wait for (32)\n"
          "\n"
          "SIGTERM or SIGINT: stop accepting, finish requests in flight, exit 0.\n");
}

static int parse_args(int argc, char **argv) {
  static const struct option opts[] = {
      {"host", required_argument, NULL, 'h'},
      {"port", required_argument, NULL, 'p'},
      {"threads", required_argument, NULL, 't'},
      {"help", no_argument, NULL, '?'},
      {NULL, 0, NULL, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    char *end = NULL;
    switch (c) {
    case 'h':
      app.host = optarg;
      break;
    case 'p':
      app.port = (uint32_t)strtoul(optarg, &end, 10);
      if (*end != '\0' || app.port > 65535) return -1;
      break;
    case 't':
      app.threads = (uint32_t)strtoul(optarg, &end, 10);
      if (*end != '\0' || app.threads == 0 || app.threads > THREADS_MAX) return -1;
      break;
    default:
      return 1;
    }
  }
  return optind == argc ? 0 : -1;
}

static int load_config(void) {
  app.host = rt_env_str("HTTPD_HOST", "127.0.0.1");
  int rc = rt_env_u32("HTTPD_PORT", 7080, 0, 65535, &app.port);
  if (rc == 0) rc = rt_env_u32("HTTPD_THREADS", 1, 1, THREADS_MAX, &app.threads);
  if (rc == 0) rc = http_server_config_from_env(&app.http);
  const char *ca = rt_env_str("TLS_CA", NULL);
  if (rc == 0 && ca != NULL && ca[0] != '\0')
    rc = wire_tls_creds_load(&app.tls_creds, ca, rt_env_str("TLS_CERT", NULL),
                             rt_env_str("TLS_KEY", NULL));
  if (rc == 0 && app.tls_creds != NULL && rt_env_str("TLS_CERT", NULL) == NULL) rc = -EINVAL;
  return rc;
}

/* Provided buffers of 4 KiB: what a benchmark sends is small (GET /hello,
 * an echo of a few KiB); a larger body spans buffers. */
#define HTTPD_BUF_BYTES 4096

/* Each loop's tables, from the configuration: what may use each at once. */
static void loop_config(rt_loop_config_t *lc) {
  http_server_config_t http = app.http;
  http_server_config_defaults(&http);
  uint64_t timers =
      (uint64_t)http.conns_max  /* a connection's idle or request deadline */
      + 1;                      /* the loop's drain */
  *lc = (rt_loop_config_t){
      .timers_count = (uint32_t)timers,
      .msgs_count = 16, /* none are sent: a few, counted should they run out */
      .buf_bytes = HTTPD_BUF_BYTES,
  };
  /* A buffer per connection that may be sending a request. */
  lc->bufs_count = rt_loop_bufs_for(lc, http.conns_max);
}

static int build_routes(void) {
  http_router_init(&app.router);
  int rc = http_router_add(&app.router, "GET", "/healthz", HTTP_HANDLER(on_healthz), NULL);
  if (rc == 0) rc = http_router_add(&app.router, "GET", "/readyz", HTTP_HANDLER(on_readyz), NULL);
  if (rc == 0) rc = http_router_add(&app.router, "GET", "/metrics", HTTP_HANDLER(on_metrics), NULL);
  if (rc == 0) rc = http_router_add(&app.router, "GET", "/hello", HTTP_HANDLER(on_hello), NULL);
  if (rc == 0) rc = http_router_add(&app.router, "POST", "/echo", HTTP_HANDLER(on_echo), NULL);
  return rc;
}

int main(int argc, char **argv) {
  int level = rt_log_level_parse(rt_env_str("LOG_LEVEL", "info"));
  rt_log_init("bench_httpd", level < 0 ? RT_LOG_INFO : (rt_log_level_t)level, NULL, 0);
  rt_strerror_register(HTTP_E_RANGE_LO, HTTP_E_RANGE_HI, http_strerror);
  if (load_config() < 0) return 2;
  int rc = parse_args(argc, argv);
  if (rc != 0) {
    usage(rc > 0 ? stdout : stderr);
    return rc > 0 ? 0 : 2;
  }
  if (build_routes() < 0) return 1;
  rt_loop_config_t loop_cfg;
  loop_config(&loop_cfg);
  if (rt_loop_config_from_env(&loop_cfg) < 0) return 2;
  rc = rt_run(app.threads, &loop_cfg, thread_setup, NULL, 10000);
  for (uint32_t i = 0; i < THREADS_MAX; i++) http_server_destroy(atomic_load(&app.servers[i]));
  for (uint32_t i = 0; i < THREADS_MAX; i++) wire_tls_filter_destroy(app.tls[i]);
  wire_tls_creds_free(app.tls_creds);
  RT_INFO("stopped", RT_LF_INT("status", rc < 0 ? 1 : 0));
  rt_log_flush();
  return rc < 0 ? 1 : 0;
}
