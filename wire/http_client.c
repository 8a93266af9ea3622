/*
 * http_client.c - pooled keep-alive HTTP/1.1 client for one upstream.
 *
 * Requests wait in a FIFO until a connection is free; at most conns_max
 * connections are open, and idle ones are kept for the next request. A
 * connection always has one recv posted while open, so an upstream that
 * closes an idle connection is noticed at once rather than on the next
 * send. Each request has one deadline covering queueing, connecting and
 * the exchange; when it passes, the request fails with
 * HTTP_E_UPSTREAM_TIMEOUT and its connection (if any) is closed, since a
 * late response would otherwise be taken for the next request's.
 *
 * Request and connection objects are pools sized from the config.
 *
 * With a byte filter (TLS), the life of a connection's bytes:
 *   1. connected: the filter opens and is asked (output, len 0) for what it
 *      says first; that goes to `wire_next`.
 *   2. a request: its bytes go through output into `wire_next`.
 *   3. received bytes go through input: the plain ones to `plain`, then to
 *      the parser; what the filter answers (handshake records, held-back
 *      requests) to `wire_next`.
 *   4. after each of these, `wire_next` becomes `wire_out` and is sent,
 *      unless a send is in flight: the kernel reads `wire_out` until the
 *      send completes, so it is never appended to (a growing buffer may
 *      move); its completion sends what gathered in `wire_next` meanwhile.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "http.h"

#define RECV_BYTES 16384

typedef struct client_conn client_conn_t;

typedef struct client_req {
  http_client_t *client;
  struct client_req *next; /* queue link */
  client_conn_t *conn;     /* while assigned */
  http_buf_t bytes;        /* the serialised request */
  http_client_cb cb;
  void *ctx;
  rt_timer_t deadline;
  bool idempotent;
  bool head;
  uint8_t attempts;
} client_req_t;

typedef enum conn_state {
  CC_CONNECTING,
  CC_IDLE,
  CC_BUSY,
  CC_CLOSING,
} conn_state_t;

struct client_conn {
  http_client_t *client;
  client_conn_t *next; /* list of open connections */
  client_conn_t *prev;
  conn_state_t state;
  int fd;
  rt_op_t connect_op;
  rt_op_t send_op;
  rt_op_t recv_op;
  rt_op_t cancel_op;
  rt_op_t close_op;
  rt_timer_t connect_timer;
  http_parser_t parser;
  void *filter_state;     /* the filter's, once connected */
  http_buf_t plain;       /* filter: decoded input, being parsed */
  http_buf_t wire_out;    /* filter: bytes being sent */
  http_buf_t wire_next;   /* filter: bytes waiting for the send to finish */
  client_req_t *req;
  uint32_t served;        /* responses completed on this connection */
  bool in_callback;       /* its response's callback is running */
  bool got_bytes;         /* response bytes seen for the current request */
  char in[RECV_BYTES];
};

struct http_client {
  rt_loop_t *loop;
  http_client_config_t config;
  char host_header[80];
  struct sockaddr_storage addr;
  socklen_t addr_len;
  rt_pool_t reqs;
  rt_pool_t conns;
  client_req_t *queue_head;
  client_req_t *queue_tail;
  client_conn_t *open;
  http_client_stats_t stats;
  bool destroying;
};

static void pump(http_client_t *c);
static void conn_close(client_conn_t *cc);
static void conn_recv_arm(client_conn_t *cc);
static void client_maybe_free(http_client_t *c);

const char *http_client_strerror(int err) {
  switch (err) {
  case HTTP_E_UPSTREAM_DOWN: return "upstream unreachable or closed the connection";
  case HTTP_E_UPSTREAM_TIMEOUT: return "upstream did not answer in time";
  case HTTP_E_UPSTREAM_BUSY: return "too many requests waiting for the upstream";
  case HTTP_E_UPSTREAM_PROTO: return "upstream sent an invalid response";
  case HTTP_E_CLIENT_CLOSED: return "client closed";
  default: return "unknown upstream error";
  }
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static void req_free(client_req_t *r) {
  http_client_t *c = r->client;
  rt_timer_stop(c->loop, &r->deadline);
  /* The serialised request may hold a password (a login): wipe it. */
  if (r->bytes.data != NULL) explicit_bzero(r->bytes.data, r->bytes.len);
  http_buf_deinit(&r->bytes);
  rt_pool_put(&c->reqs, r);
}

/* Calls back once and frees the request. */
static void req_complete(client_req_t *r, int err, const http_msg_t *resp) {
  http_client_t *c = r->client;
  if (err < 0) c->stats.failed++;
  http_client_cb cb = r->cb;
  void *ctx = r->ctx;
  req_free(r);
  cb(ctx, err, resp);
}

static void queue_push(http_client_t *c, client_req_t *r, bool front) {
  c->stats.queued++;
  if (front) {
    r->next = c->queue_head;
    c->queue_head = r;
    if (c->queue_tail == NULL) c->queue_tail = r;
    return;
  }
  r->next = NULL;
  if (c->queue_tail != NULL) c->queue_tail->next = r;
  else c->queue_head = r;
  c->queue_tail = r;
}

static client_req_t *queue_pop(http_client_t *c) {
  client_req_t *r = c->queue_head;
  if (r == NULL) return NULL;
  c->queue_head = r->next;
  if (c->queue_head == NULL) c->queue_tail = NULL;
  r->next = NULL;
  c->stats.queued--;
  return r;
}

static void queue_remove(http_client_t *c, client_req_t *r) {
  client_req_t **pp = &c->queue_head;
  client_req_t *prev = NULL;
  while (*pp != NULL && *pp != r) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  if (*pp == NULL) return;
  *pp = r->next;
  if (c->queue_tail == r) c->queue_tail = prev;
  r->next = NULL;
  c->stats.queued--;
}

static void req_deadline(rt_timer_t *t) {
  client_req_t *r = t->ctx;
  http_client_t *c = r->client;
  if (r->conn != NULL) {
    client_conn_t *cc = r->conn;
    cc->req = NULL;
    r->conn = NULL;
    conn_close(cc);
  } else {
    queue_remove(c, r);
  }
  req_complete(r, HTTP_E_UPSTREAM_TIMEOUT, NULL);
  pump(c);
}

static bool method_idempotent(const char *m) {
  return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "PUT") == 0 ||
         strcmp(m, "DELETE") == 0 || strcmp(m, "OPTIONS") == 0;
}

int http_client_request(http_client_t *c, const char *method, const char *target,
                        const char *extra_headers, const void *body, size_t body_len,
                        http_client_cb cb, void *ctx) {
  if (c->destroying || cb == NULL) return -EINVAL;
  if (c->stats.queued >= c->config.queue_max) return HTTP_E_UPSTREAM_BUSY;
  client_req_t *r = rt_pool_get(&c->reqs);
  if (r == NULL) return HTTP_E_UPSTREAM_BUSY;
  r->client = c;
  int rc = http_buf_init(&r->bytes, 0, 0);
  if (rc == 0)
    rc = http_write_request(&r->bytes, method, c->host_header, target, extra_headers,
                            body, body_len);
  if (rc < 0) {
    http_buf_deinit(&r->bytes);
    rt_pool_put(&c->reqs, r);
    return rc;
  }
  r->cb = cb;
  r->ctx = ctx;
  r->idempotent = method_idempotent(method);
  r->head = strcmp(method, "HEAD") == 0;
  rt_timer_init(&r->deadline, req_deadline, r);
  if (rt_timer_start(c->loop, &r->deadline, c->config.request_timeout_ms, 0) < 0) {
    /* A request without a deadline could wait for good: refuse it, as
     * when the queue is full. */
    http_buf_deinit(&r->bytes);
    rt_pool_put(&c->reqs, r);
    return HTTP_E_UPSTREAM_BUSY;
  }
  queue_push(c, r, false);
  pump(c);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Connections                                                              */
/* ------------------------------------------------------------------------ */

static void conn_unlink(client_conn_t *cc) {
  http_client_t *c = cc->client;
  if (cc->prev != NULL) cc->prev->next = cc->next;
  else c->open = cc->next;
  if (cc->next != NULL) cc->next->prev = cc->prev;
  c->stats.conns_open--;
}

static void conn_closed(rt_op_t *op, int res, uint32_t flags) {
  client_conn_t *cc = op->ctx;
  http_client_t *c = cc->client;
  http_parser_deinit(&cc->parser);
  if (cc->filter_state != NULL) c->config.filter->free(cc->filter_state);
  cc->filter_state = NULL;
  http_buf_deinit(&cc->plain);
  http_buf_deinit(&cc->wire_out);
  http_buf_deinit(&cc->wire_next);
  conn_unlink(cc);
  rt_pool_put(&c->conns, cc);
  if (c->destroying) {
    client_maybe_free(c);
    return;
  }
  pump(c);
}

static void conn_maybe_free(client_conn_t *cc) {
  if (cc->state != CC_CLOSING) return;
  if (cc->connect_op.in_flight || cc->send_op.in_flight || cc->recv_op.in_flight ||
      cc->cancel_op.in_flight || cc->close_op.in_flight)
    return;
  rt_close(cc->client->loop, &cc->close_op, cc->fd, conn_closed, cc);
}

static void conn_cancel_done(rt_op_t *op, int res, uint32_t flags) {
  conn_maybe_free(op->ctx);
}

/* Closing a connection never calls back its request: callers decide. */
static void conn_close(client_conn_t *cc) {
  if (cc->state == CC_CLOSING) return;
  cc->state = CC_CLOSING;
  rt_timer_stop(cc->client->loop, &cc->connect_timer);
  /* Cancel whatever is in flight; shutdown makes a pending recv return. */
  shutdown(cc->fd, SHUT_RDWR);
  if (cc->connect_op.in_flight)
    rt_cancel(cc->client->loop, &cc->cancel_op, &cc->connect_op, conn_cancel_done, cc);
  conn_maybe_free(cc);
}

/* The connection failed while carrying a request: retry or fail it. */
static void conn_fail(client_conn_t *cc, int err) {
  client_req_t *r = cc->req;
  http_client_t *c = cc->client;
  cc->req = NULL;
  conn_close(cc);
  if (r == NULL) return;
  r->conn = NULL;
  /* A reused connection the upstream had already closed: nothing was
   * processed, so an idempotent request may safely go again. */
  if (cc->served > 0 && !cc->got_bytes && r->idempotent && r->attempts < 2) {
    c->stats.retried++;
    queue_push(c, r, true);
    return;
  }
  req_complete(r, err, NULL);
}

static void conn_sent(rt_op_t *op, int res, uint32_t flags);

/* Filter: sends what gathered in wire_next, unless a send is in flight
 * (its completion comes back here). */
static void wire_flush(client_conn_t *cc) {
  if (cc->send_op.in_flight || cc->wire_next.len == 0) return;
  assert(cc->wire_out.len == 0);
  http_buf_t t = cc->wire_out;
  cc->wire_out = cc->wire_next;
  cc->wire_next = t;
  rt_send(cc->client->loop, &cc->send_op, cc->fd, cc->wire_out.data,
          (uint32_t)cc->wire_out.len, conn_sent, cc);
}

static void conn_sent(rt_op_t *op, int res, uint32_t flags) {
  client_conn_t *cc = op->ctx;
  http_buf_reset(&cc->wire_out);
  if (cc->state == CC_CLOSING) {
    conn_maybe_free(cc);
    return;
  }
  if (res < 0) {
    conn_fail(cc, HTTP_E_UPSTREAM_DOWN);
    return;
  }
  if (cc->client->config.filter != NULL) wire_flush(cc);
}

/* A complete response: the connection is made idle (or marked for close)
 * before the callback runs, so a request issued from inside the callback
 * waits for this connection instead of opening another one. */
static void conn_response(client_conn_t *cc, http_msg_t *msg) {
  client_req_t *r = cc->req;
  http_client_t *c = cc->client;
  bool keep = msg->keep_alive && !c->destroying;
  cc->req = NULL;
  cc->served++;
  cc->state = keep ? CC_IDLE : CC_BUSY;
  cc->in_callback = true;
  if (r != NULL) {
    r->conn = NULL;
    req_complete(r, 0, msg);
  }
  cc->in_callback = false;
  http_parser_next(&cc->parser);
  if (!keep) conn_close(cc);
}

static void conn_on_plain(client_conn_t *cc, const char *data, size_t len);

static void conn_recv(rt_op_t *op, int res, uint32_t flags) {
  client_conn_t *cc = op->ctx;
  if (cc->state == CC_CLOSING) {
    conn_maybe_free(cc);
    return;
  }
  if (res <= 0) {
    http_msg_t *msg = NULL;
    if (res == 0 && cc->state == CC_BUSY && http_parser_finish(&cc->parser, &msg) == 0 &&
        msg != NULL) {
      conn_response(cc, msg); /* a body delimited by the close */
      conn_close(cc);
      return;
    }
    conn_fail(cc, HTTP_E_UPSTREAM_DOWN);
    return;
  }
  const http_filter_t *f = cc->client->config.filter;
  if (f == NULL) {
    conn_on_plain(cc, cc->in, (size_t)res);
    return;
  }
  cc->plain.len = 0;
  int rc = f->input(cc->filter_state, cc->in, (size_t)res, &cc->plain, &cc->wire_next);
  wire_flush(cc);
  if (rc < 0) {
    conn_fail(cc, HTTP_E_UPSTREAM_PROTO);
    return;
  }
  if (cc->plain.len > 0) {
    conn_on_plain(cc, cc->plain.data, cc->plain.len);
    return;
  }
  /* Handshake records only: keep reading. */
  if (!cc->recv_op.in_flight) conn_recv_arm(cc);
}

/* Response bytes, as received or as the filter decoded them. */
static void conn_on_plain(client_conn_t *cc, const char *data, size_t len) {
  if (cc->state != CC_BUSY) {
    /* Bytes nobody asked for: the upstream is confused. Drop it. */
    conn_close(cc);
    return;
  }
  cc->got_bytes = true;
  size_t used = 0;
  http_msg_t *msg = NULL;
  int rc = http_parser_feed(&cc->parser, data, len, &used, &msg);
  if (rc < 0) {
    conn_fail(cc, HTTP_E_UPSTREAM_PROTO);
    return;
  }
  if (msg != NULL) conn_response(cc, msg);
  if (used < len) {
    /* Bytes past the response answer nothing we asked: drop the upstream
     * connection (and fail a request the callback may have put on it). */
    if (cc->req != NULL) {
      conn_fail(cc, HTTP_E_UPSTREAM_PROTO);
    } else {
      conn_close(cc);
    }
    return;
  }
  if (cc->state == CC_CLOSING) return;
  if (!cc->recv_op.in_flight) conn_recv_arm(cc);
  if (cc->state == CC_IDLE) pump(cc->client);
}

static void conn_recv_arm(client_conn_t *cc) {
  rt_recv(cc->client->loop, &cc->recv_op, cc->fd, cc->in, sizeof cc->in, conn_recv, cc);
}

static void conn_send_req(client_conn_t *cc, client_req_t *r) {
  http_client_t *c = cc->client;
  if (cc->served > 0) c->stats.reused++;
  cc->state = CC_BUSY;
  cc->req = r;
  cc->got_bytes = false;
  r->conn = cc;
  r->attempts++;
  if (r->head) http_parser_expect_no_body(&cc->parser);
  if (!cc->recv_op.in_flight) conn_recv_arm(cc);
  const http_filter_t *f = c->config.filter;
  if (f == NULL) {
    rt_send(c->loop, &cc->send_op, cc->fd, r->bytes.data, (uint32_t)r->bytes.len,
            conn_sent, cc);
    return;
  }
  if (f->output(cc->filter_state, r->bytes.data, r->bytes.len, &cc->wire_next) < 0) {
    conn_fail(cc, HTTP_E_UPSTREAM_PROTO);
    return;
  }
  wire_flush(cc);
}

/* Refuses every queued request when the upstream cannot be reached. */
static void fail_queue(http_client_t *c, int err) {
  client_req_t *r;
  uint32_t bound = c->config.queue_max + 1;
  while (bound-- > 0 && (r = queue_pop(c)) != NULL) req_complete(r, err, NULL);
}

/* Filter: opens its state and sends what it says first. */
static int conn_filter_start(client_conn_t *cc) {
  const http_filter_t *f = cc->client->config.filter;
  cc->filter_state = f->open(f->ctx, cc->fd);
  if (cc->filter_state == NULL) return RT_E_LIMIT;
  int rc = f->output(cc->filter_state, NULL, 0, &cc->wire_next);
  if (rc < 0) return rc;
  wire_flush(cc);
  return 0;
}

static void conn_connected(rt_op_t *op, int res, uint32_t flags) {
  client_conn_t *cc = op->ctx;
  http_client_t *c = cc->client;
  rt_timer_stop(c->loop, &cc->connect_timer);
  if (cc->state == CC_CLOSING) {
    conn_maybe_free(cc);
    return;
  }
  if (res < 0) {
    conn_close(cc);
    /* No connection can be made right now: fail fast rather than let every
     * waiting request run into its deadline. */
    if (c->stats.conns_open <= 1) fail_queue(c, HTTP_E_UPSTREAM_DOWN);
    return;
  }
  if (c->config.filter != NULL && conn_filter_start(cc) < 0) {
    conn_close(cc);
    if (c->stats.conns_open <= 1) fail_queue(c, HTTP_E_UPSTREAM_DOWN);
    return;
  }
  cc->state = CC_IDLE;
  conn_recv_arm(cc);
  pump(c);
}

static void conn_connect_timeout(rt_timer_t *t) {
  client_conn_t *cc = t->ctx;
  http_client_t *c = cc->client;
  conn_close(cc);
  if (c->stats.conns_open <= 1) fail_queue(c, HTTP_E_UPSTREAM_DOWN);
}

static int conn_open(http_client_t *c) {
  client_conn_t *cc = rt_pool_get(&c->conns);
  if (cc == NULL) return RT_E_POOL_EMPTY;
  int fd = rt_tcp_socket(c->addr.ss_family);
  if (fd < 0) {
    rt_pool_put(&c->conns, cc);
    return fd;
  }
  int rc = http_parser_init(&cc->parser, HTTP_KIND_RESPONSE, &c->config.limits);
  if (rc < 0) {
    close(fd);
    rt_pool_put(&c->conns, cc);
    return rc;
  }
  /* Filter buffers: nothing is allocated until bytes go through them. */
  http_buf_init(&cc->plain, 0, 0);
  http_buf_init(&cc->wire_out, 0, 0);
  http_buf_init(&cc->wire_next, 0, 0);
  /* A connect without a deadline may not be attempted. */
  rt_timer_init(&cc->connect_timer, conn_connect_timeout, cc);
  rc = rt_timer_start(c->loop, &cc->connect_timer, c->config.connect_timeout_ms, 0);
  if (rc < 0) {
    http_parser_deinit(&cc->parser);
    close(fd);
    rt_pool_put(&c->conns, cc);
    return rc;
  }
  cc->client = c;
  cc->fd = fd;
  cc->state = CC_CONNECTING;
  cc->next = c->open;
  if (c->open != NULL) c->open->prev = cc;
  c->open = cc;
  c->stats.conns_open++;
  c->stats.connects++;
  rt_connect(c->loop, &cc->connect_op, fd, (struct sockaddr *)&c->addr, c->addr_len,
             conn_connected, cc);
  return 0;
}

/* Gives queued requests to idle connections, opening more when allowed. */
static void pump(http_client_t *c) {
  if (c->destroying) return;
  uint32_t connecting = 0;
  for (client_conn_t *cc = c->open; cc != NULL; cc = cc->next) {
    /* Connecting, or about to be idle: either will take a request soon. */
    if (cc->state == CC_CONNECTING || (cc->in_callback && cc->state == CC_IDLE))
      connecting++;
    else if (cc->state == CC_IDLE && c->queue_head != NULL)
      conn_send_req(cc, queue_pop(c));
  }
  /* One new connection per waiting request, minus those already coming. */
  while (c->queue_head != NULL && c->stats.queued > connecting &&
         c->stats.conns_open < c->config.conns_max) {
    int rc = conn_open(c);
    if (rc < 0) {
      RT_WARN("upstream connection failed", RT_LF_STR("error", rt_strerror(rc)));
      if (c->stats.conns_open == 0) fail_queue(c, HTTP_E_UPSTREAM_DOWN);
      return;
    }
    connecting++;
  }
}

/* ------------------------------------------------------------------------ */
/* Client                                                                   */
/* ------------------------------------------------------------------------ */

int http_client_create(http_client_t **out, rt_loop_t *loop,
                       const http_client_config_t *config) {
  rt_strerror_register(HTTP_CLIENT_E_RANGE_LO, HTTP_CLIENT_E_RANGE_HI,
                       http_client_strerror);
  http_client_t *c = calloc(1, sizeof *c);
  if (c == NULL) return -ENOMEM;
  c->loop = loop;
  c->config = *config;
  if (c->config.conns_max == 0) c->config.conns_max = 8;
  if (c->config.queue_max == 0) c->config.queue_max = 1024;
  if (c->config.connect_timeout_ms == 0) c->config.connect_timeout_ms = 1000;
  if (c->config.request_timeout_ms == 0) c->config.request_timeout_ms = 5000;
  if (c->config.limits.header_bytes_max == 0) http_limits_defaults(&c->config.limits);
  int rc = rt_tcp_addr(c->config.host, c->config.port, &c->addr, &c->addr_len);
  if (rc == 0) {
    snprintf(c->host_header, sizeof c->host_header, "%s:%u",
             c->config.host ? c->config.host : "localhost", (unsigned)c->config.port);
    /* Pools: every waiting request plus one in flight per connection. */
    rc = rt_pool_init(&c->reqs, "http_client_reqs", sizeof(client_req_t),
                      c->config.queue_max + c->config.conns_max);
  }
  if (rc == 0)
    rc = rt_pool_init(&c->conns, "http_client_conns", sizeof(client_conn_t),
                      c->config.conns_max);
  if (rc < 0) {
    if (c->reqs.mem != NULL) rt_pool_deinit(&c->reqs);
    free(c);
    return rc;
  }
  *out = c;
  return 0;
}

void http_client_stats(const http_client_t *c, http_client_stats_t *out) {
  *out = c->stats;
}

static void client_maybe_free(http_client_t *c) {
  if (c->open != NULL) return;
  rt_pool_deinit(&c->reqs);
  rt_pool_deinit(&c->conns);
  free(c);
}

void http_client_destroy(http_client_t *c) {
  if (c == NULL || c->destroying) return;
  c->destroying = true;
  fail_queue(c, HTTP_E_CLIENT_CLOSED);
  client_conn_t *next;
  for (client_conn_t *cc = c->open; cc != NULL; cc = next) {
    next = cc->next;
    client_req_t *r = cc->req;
    cc->req = NULL;
    if (r != NULL) {
      r->conn = NULL;
      req_complete(r, HTTP_E_CLIENT_CLOSED, NULL);
    }
    conn_close(cc);
  }
  client_maybe_free(c);
}
