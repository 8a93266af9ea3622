/*
 * The HTTP client against our HTTP server, both on one loop over loopback:
 * keep-alive reuse, a bounded pool under concurrency, upstream down,
 * request deadline, an upstream that closed an idle connection, a full
 * queue, a byte filter with a handshake of its own on both sides, and
 * /metrics pages served whole or refused whole.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"
#include "t.h"

static rt_loop_t *loop;
static http_router_t router;
static http_server_t *server;
static http_exchange_t *parked; /* a request the server never answers */

static void on_echo(http_exchange_t *ex, void *arg) {
  const http_msg_t *req = http_request(ex);
  http_respond(ex, 200, "application/octet-stream", req->body, req->body_len, NULL);
}

static void on_hello(http_exchange_t *ex, void *arg) {
  http_respond(ex, 200, "text/plain", "hello", 5, NULL);
}

static void on_never(http_exchange_t *ex, void *arg) { parked = ex; }

/* Runs the loop for a moment so closes started by a destroy complete. */
static rt_timer_t settle_timer;
static void settle_stop(rt_timer_t *t) { rt_loop_stop(loop); }
static void destroy_and_settle(http_client_t *c) {
  http_client_destroy(c);
  rt_timer_init(&settle_timer, settle_stop, NULL);
  rt_timer_start(loop, &settle_timer, 50, 0);
  rt_loop_run(loop);
}

/* ---- sequential keep-alive ---------------------------------------------- */

static http_client_t *client;
static uint32_t seq_done, seq_ok;

static void seq_cb(void *ctx, int err, const http_msg_t *resp) {
  seq_done++;
  if (err == 0 && resp->status == 200 && resp->body_len == 5 &&
      memcmp(resp->body, "hello", 5) == 0)
    seq_ok++;
  if (seq_done < 10) {
    http_client_request(client, "GET", "/hello", NULL, NULL, 0, seq_cb, NULL);
  } else {
    rt_loop_stop(loop);
  }
}

static void test_sequential_reuses_one_connection(void) {
  http_client_config_t cfg = {.host = "127.0.0.1", .port = http_server_port(server)};
  T_REQUIRE(http_client_create(&client, loop, &cfg) == 0);
  T_REQUIRE(http_client_request(client, "GET", "/hello", NULL, NULL, 0, seq_cb, NULL) == 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(seq_ok, 10);
  http_client_stats_t st;
  http_client_stats(client, &st);
  T_CHECK_EQ_INT(st.connects, 1);
  T_CHECK_EQ_INT(st.reused, 9);
}

/* ---- concurrency through a small pool ----------------------------------- */

enum { CONCURRENT = 50 };
static uint32_t conc_done, conc_ok;

static void conc_cb(void *ctx, int err, const http_msg_t *resp) {
  char expect[32];
  int n = snprintf(expect, sizeof expect, "body-%u", (unsigned)(uintptr_t)ctx);
  conc_done++;
  if (err == 0 && resp->status == 200 && resp->body_len == (size_t)n &&
      memcmp(resp->body, expect, (size_t)n) == 0)
    conc_ok++;
  if (conc_done == CONCURRENT) rt_loop_stop(loop);
}

static void test_concurrent_small_pool(void) {
  http_client_t *c = NULL;
  http_client_config_t cfg = {.host = "127.0.0.1", .port = http_server_port(server),
                              .conns_max = 4};
  T_REQUIRE(http_client_create(&c, loop, &cfg) == 0);
  for (uint32_t i = 0; i < CONCURRENT; i++) {
    char body[32];
    int n = snprintf(body, sizeof body, "body-%u", i);
    T_CHECK_EQ_INT(http_client_request(c, "POST", "/echo", NULL, body, (size_t)n, conc_cb,
                                       (void *)(uintptr_t)i),
                   0);
  }
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(conc_ok, CONCURRENT);
  http_client_stats_t st;
  http_client_stats(c, &st);
  T_CHECK(st.connects <= 4);
  T_CHECK(st.connects >= 1);
  destroy_and_settle(c);
}

/* ---- failures ----------------------------------------------------------- */

static int last_err;
static uint64_t failed_after_ms;
static uint64_t t_start;

static void fail_cb(void *ctx, int err, const http_msg_t *resp) {
  last_err = err;
  failed_after_ms = (rt_now_ns() - t_start) / 1000000u;
  rt_loop_stop(loop);
}

static void test_upstream_down(void) {
  /* A port that was free a moment ago: nothing listens there. */
  int fd = rt_tcp_listen("127.0.0.1", 0, 1, false);
  T_REQUIRE(fd >= 0);
  uint16_t port = (uint16_t)rt_tcp_local_port(fd);
  close(fd);
  http_client_t *c = NULL;
  http_client_config_t cfg = {.host = "127.0.0.1", .port = port, .request_timeout_ms = 3000};
  T_REQUIRE(http_client_create(&c, loop, &cfg) == 0);
  t_start = rt_now_ns();
  T_REQUIRE(http_client_request(c, "GET", "/x", NULL, NULL, 0, fail_cb, NULL) == 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(last_err, HTTP_E_UPSTREAM_DOWN);
  T_CHECK(failed_after_ms < 1000); /* refused at once, not at the deadline */
  destroy_and_settle(c);
}

static void test_request_deadline(void) {
  http_client_t *c = NULL;
  http_client_config_t cfg = {.host = "127.0.0.1", .port = http_server_port(server),
                              .request_timeout_ms = 200};
  T_REQUIRE(http_client_create(&c, loop, &cfg) == 0);
  t_start = rt_now_ns();
  T_REQUIRE(http_client_request(c, "GET", "/never", NULL, NULL, 0, fail_cb, NULL) == 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(last_err, HTTP_E_UPSTREAM_TIMEOUT);
  T_CHECK(failed_after_ms >= 190);
  T_CHECK(parked != NULL);
  /* The server still owes an answer: give it, though nobody listens. */
  if (parked != NULL) http_respond(parked, 200, "text/plain", "late", 4, NULL);
  parked = NULL;
  destroy_and_settle(c);
}

/* ---- the upstream closed an idle keep-alive connection ------------------- */

static rt_timer_t later;
static uint32_t idle_ok;

static void idle_second_cb(void *ctx, int err, const http_msg_t *resp) {
  if (err == 0 && resp->status == 200) idle_ok++;
  rt_loop_stop(loop);
}

static void idle_later(rt_timer_t *t) {
  http_client_request(client, "GET", "/hello", NULL, NULL, 0, idle_second_cb, NULL);
}

static void idle_first_cb(void *ctx, int err, const http_msg_t *resp) {
  if (err == 0 && resp->status == 200) idle_ok++;
  /* The server's idle timeout is 150 ms: ask again after it has closed. */
  rt_timer_init(&later, idle_later, NULL);
  rt_timer_start(loop, &later, 400, 0);
}

static void test_upstream_closed_idle(void) {
  http_client_stats_t before, after;
  http_client_stats(client, &before);
  T_REQUIRE(http_client_request(client, "GET", "/hello", NULL, NULL, 0, idle_first_cb, NULL) == 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(idle_ok, 2);
  http_client_stats(client, &after);
  /* Each closed idle connection was noticed through its posted recv and
   * replaced: no request failed, none needed a retry. */
  T_CHECK(after.connects >= before.connects + 1);
  T_CHECK_EQ_INT(after.failed, before.failed);
  T_CHECK_EQ_INT(after.retried, before.retried);
}

/* ---- queue full ---------------------------------------------------------- */

static uint32_t busy_done;
static void busy_cb(void *ctx, int err, const http_msg_t *resp) {
  if (++busy_done == 3) rt_loop_stop(loop);
}

static void test_queue_full(void) {
  http_client_t *c = NULL;
  http_client_config_t cfg = {.host = "127.0.0.1", .port = http_server_port(server),
                              .conns_max = 1, .queue_max = 3};
  T_REQUIRE(http_client_create(&c, loop, &cfg) == 0);
  for (int i = 0; i < 3; i++)
    T_CHECK_EQ_INT(http_client_request(c, "GET", "/hello", NULL, NULL, 0, busy_cb, NULL), 0);
  T_CHECK_EQ_INT(http_client_request(c, "GET", "/hello", NULL, NULL, 0, busy_cb, NULL),
                 HTTP_E_UPSTREAM_BUSY);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(busy_done, 3);
  destroy_and_settle(c);
}

/* ---- a byte filter on both sides ---------------------------------------- */

/* A toy protocol with what matters of TLS: the client speaks first
 * ("HELO"), must not send requests before the server's answer ("OLEH"),
 * and every byte after that is encoded (XOR). */
#define XOR_KEY 0x5a
#define HELLO_BYTES 4

typedef struct toy {
  bool server;
  bool ready;         /* handshake done */
  uint32_t hello_seen; /* handshake bytes received so far */
  http_buf_t held;    /* client: plain bytes waiting for the handshake */
} toy_t;

static uint32_t client_opened, client_freed; /* client side states */

static void *toy_open(void *ctx, int fd) {
  toy_t *t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->server = ctx != NULL;
  http_buf_init(&t->held, 0, 0);
  if (!t->server) client_opened++;
  return t;
}

static void toy_free(void *state) {
  toy_t *t = state;
  if (!t->server) client_freed++;
  http_buf_deinit(&t->held);
  free(t);
}

static int xor_append(http_buf_t *out, const char *data, size_t len) {
  for (size_t i = 0; i < len; i++) {
    char c = (char)(data[i] ^ XOR_KEY);
    if (http_buf_append(out, &c, 1) < 0) return -ENOMEM;
  }
  return 0;
}

static int toy_input(void *state, const char *data, size_t len, http_buf_t *plain,
                     http_buf_t *wire) {
  toy_t *t = state;
  const char *expect = t->server ? "HELO" : "OLEH";
  size_t i = 0;
  for (; !t->ready && i < len; i++) {
    if (data[i] != expect[t->hello_seen]) return -EPROTO;
    if (++t->hello_seen < HELLO_BYTES) continue;
    t->ready = true;
    if (t->server && http_buf_append(wire, "OLEH", HELLO_BYTES) < 0) return -ENOMEM;
    if (!t->server && xor_append(wire, t->held.data, t->held.len) < 0) return -ENOMEM;
    http_buf_reset(&t->held);
  }
  return xor_append(plain, data + i, len - i);
}

static int toy_output(void *state, const char *data, size_t len, http_buf_t *wire) {
  toy_t *t = state;
  if (len == 0) return t->server ? 0 : http_buf_append(wire, "HELO", HELLO_BYTES);
  if (!t->ready) return http_buf_append(&t->held, data, len);
  return xor_append(wire, data, len);
}

static int toy_server_tag; /* non-NULL ctx: the server side */
static const http_filter_t toy_server = {toy_open, toy_input, toy_output, toy_free,
                                         &toy_server_tag};
static const http_filter_t toy_client = {toy_open, toy_input, toy_output, toy_free, NULL};

enum { FILTERED = 20, FILTERED_BODY = 100000 };
static uint32_t filt_done, filt_ok;
static char *filt_body;

static void filt_cb(void *ctx, int err, const http_msg_t *resp) {
  filt_done++;
  if (err == 0 && resp->status == 200 && resp->body_len == FILTERED_BODY &&
      memcmp(resp->body, filt_body, FILTERED_BODY) == 0)
    filt_ok++;
  if (filt_done == FILTERED) rt_loop_stop(loop);
}

static http_server_t *fs; /* the filtered server, destroyed at the end */

static void test_filter_both_sides(void) {
  http_server_config_t scfg = {.host = "127.0.0.1", .filter = &toy_server, .conns_max = 8};
  T_REQUIRE(http_server_create(&fs, loop, &scfg, &router) == 0);
  T_REQUIRE(http_server_start(fs) == 0);
  filt_body = malloc(FILTERED_BODY);
  T_REQUIRE(filt_body != NULL);
  for (size_t i = 0; i < FILTERED_BODY; i++) filt_body[i] = (char)('a' + i % 26);
  http_client_t *c = NULL;
  http_client_config_t cfg = {.host = "127.0.0.1", .port = http_server_port(fs),
                              .conns_max = 3, .filter = &toy_client};
  T_REQUIRE(http_client_create(&c, loop, &cfg) == 0);
  for (uint32_t i = 0; i < FILTERED; i++)
    T_CHECK_EQ_INT(http_client_request(c, "POST", "/echo", NULL, filt_body, FILTERED_BODY,
                                       filt_cb, NULL),
                   0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(filt_ok, FILTERED);
  http_client_stats_t st;
  http_client_stats(c, &st);
  T_CHECK(st.connects >= 1 && st.connects <= 3);
  T_CHECK_EQ_INT(st.failed, 0);
  destroy_and_settle(c);
  /* One filter state per connection, each freed with its connection. */
  T_CHECK_EQ_INT(client_opened, st.connects);
  T_CHECK_EQ_INT(client_freed, st.connects);
  free(filt_body);
}

/* A plain server answers the client's "HELO" with a 400 in clear text:
 * the filter refuses those bytes and the request fails as a protocol
 * error, not as a response. */
static void test_filter_refuses_peer(void) {
  http_client_t *c = NULL;
  http_client_config_t cfg = {.host = "127.0.0.1", .port = http_server_port(server),
                              .filter = &toy_client, .request_timeout_ms = 3000};
  T_REQUIRE(http_client_create(&c, loop, &cfg) == 0);
  last_err = 0;
  T_REQUIRE(http_client_request(c, "GET", "/hello", NULL, NULL, 0, fail_cb, NULL) == 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  T_CHECK_EQ_INT(last_err, HTTP_E_UPSTREAM_PROTO);
  destroy_and_settle(c);
}

/* ---- /metrics pages ------------------------------------------------------ */

/* The server's counters, then n samples of one gauge, 25 bytes each from
 * i = 1000 on: 2000 of them (45780 bytes) fit in 64 KiB, 5000 do not. */
static void render_samples(wire_metrics_t *m, void *ctx) {
  uint32_t n = (uint32_t)(uintptr_t)ctx;
  http_server_metrics(m, "t_http_", &server, 1);
  wire_metrics_family(m, "t_sample", WIRE_METRICS_GAUGE, "One per i.");
  for (uint32_t i = 0; i < n; i++) {
    char label[12];
    snprintf(label, sizeof label, "%u", (unsigned)i);
    wire_metrics_u64(m, WIRE_METRICS_LABELS({"i", label}), i);
  }
}

static void on_metrics(http_exchange_t *ex, void *arg) {
  uint32_t n = (uint32_t)strtoul(http_param(ex, "n"), NULL, 10);
  http_respond_metrics(ex, render_samples, (void *)(uintptr_t)n, 64u << 10);
}

static int page_status;
static char page[128u << 10];
static char page_type[64];

static void page_cb(void *ctx, int err, const http_msg_t *resp) {
  page_status = err == 0 ? resp->status : err;
  page[0] = page_type[0] = '\0';
  if (err == 0 && resp->body_len < sizeof page) memcpy(page, resp->body, resp->body_len + 1);
  const char *type = err == 0 ? http_msg_header(resp, "Content-Type") : NULL;
  if (type != NULL) snprintf(page_type, sizeof page_type, "%s", type);
  rt_loop_stop(loop);
}

static void get_page(http_client_t *c, const char *path) {
  page_status = 0;
  T_REQUIRE(http_client_request(c, "GET", path, NULL, NULL, 0, page_cb, NULL) == 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
}

static void test_metrics_pages(void) {
  http_client_t *c = NULL;
  http_client_config_t cfg = {.host = "127.0.0.1", .port = http_server_port(server)};
  T_REQUIRE(http_client_create(&c, loop, &cfg) == 0);

  get_page(c, "/metrics/2000");
  T_CHECK_EQ_INT(page_status, 200);
  T_CHECK_STR(page_type, "text/plain; version=0.0.4");
  T_CHECK(strlen(page) > 45780); /* the samples alone */
  static const char first[] = "# HELP t_http_connections_accepted_total Connections accepted.\n"
                              "# TYPE t_http_connections_accepted_total counter\n";
  T_CHECK(strncmp(page, first, sizeof first - 1) == 0);
  T_CHECK(strstr(page, "\nt_http_responses_total{code=\"2xx\"} ") != NULL);
  T_CHECK(strstr(page, "# HELP t_sample One per i.\n# TYPE t_sample gauge\n"
                       "t_sample{i=\"0\"} 0\nt_sample{i=\"1\"} 1\n") != NULL);
  static const char last[] = "\nt_sample{i=\"1999\"} 1999\n";
  size_t len = strlen(page);
  T_CHECK(len > sizeof last && strcmp(page + len - (sizeof last - 1), last) == 0);

  get_page(c, "/metrics/5000"); /* over 64 KiB: refused whole, not cut */
  T_CHECK_EQ_INT(page_status, 500);
  T_CHECK(strstr(page, "metrics too large") != NULL);

  get_page(c, "/metrics/0");
  T_CHECK_EQ_INT(page_status, 200);
  T_CHECK(strstr(page, "# TYPE t_sample gauge\n") != NULL);
  T_CHECK(strstr(page, "t_sample{") == NULL);
  destroy_and_settle(c);
}

int main(void) {
  rt_log_init("test_http_client", RT_LOG_ERROR, NULL, 0);
  if (rt_loop_create(&loop, NULL) != 0) return 1;
  http_router_init(&router);
  http_router_add(&router, "POST", "/echo", HTTP_HANDLER(on_echo), NULL);
  http_router_add(&router, "GET", "/hello", HTTP_HANDLER(on_hello), NULL);
  http_router_add(&router, "GET", "/never", HTTP_HANDLER(on_never), NULL);
  http_router_add(&router, "GET", "/metrics/{n}", HTTP_HANDLER(on_metrics), NULL);
  http_server_config_t scfg = {.host = "127.0.0.1", .idle_timeout_ms = 150};
  if (http_server_create(&server, loop, &scfg, &router) != 0) return 1;
  if (http_server_start(server) != 0) return 1;
  T_RUN(test_sequential_reuses_one_connection);
  T_RUN(test_concurrent_small_pool);
  T_RUN(test_upstream_down);
  T_RUN(test_request_deadline);
  T_RUN(test_upstream_closed_idle);
  T_RUN(test_queue_full);
  T_RUN(test_filter_both_sides);
  T_RUN(test_filter_refuses_peer);
  T_RUN(test_metrics_pages);
  destroy_and_settle(client);
  rt_loop_destroy(loop);
  http_server_destroy(server);
  if (fs != NULL) http_server_destroy(fs);
  return t_done();
}
