/*
 * http_server.c - HTTP/1.1 connections on the runtime.
 *
 * One server instance per loop thread, each with its own SO_REUSEPORT
 * listener, connection pool and counters. A connection is an actor: other
 * actors may send it messages, and a connection that fails (protocol error,
 * limit, I/O error) is torn down alone.
 *
 * Life of a request on a connection:
 *   bytes arrive (multishot recv, provided buffers) -> fed to the parser
 *   -> one complete request pauses the parser -> routed -> the handler
 *   answers now or later through its exchange -> the response is appended
 *   to the output buffer -> parsing resumes with the bytes already held.
 * Exactly one request is handled at a time per connection, so responses to
 * pipelined requests come out in order by construction; when handlers
 * answer at once, every response of a pipelined batch goes out in one send.
 *
 * Teardown: cancel the recv, wait for every op and for a pending handler,
 * close the fd, give the connection back to the pool. After an error
 * response the write side is shut down first and input is drained for a
 * moment (a lingering close), so the client reads the error instead of a
 * reset.
 */
#include <assert.h>
#include <stddef.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include "http.h"

#define LINGER_MS 500
#define OUT_HIGH_WATER (256 * 1024) /* stop parsing while more is unsent */
#define IN_HELD_MAX (64 * 1024)     /* unparsed bytes kept while paused */

typedef enum conn_state {
  CONN_OPEN,     /* reading and answering requests */
  CONN_FLUSHING, /* last response queued: send it, then linger */
  CONN_LINGER,   /* write side shut: discarding input until EOF or timer */
  CONN_CLOSING,  /* waiting for ops to finish before closing the fd */
} conn_state_t;

typedef enum timer_mode {
  TIMER_NONE,
  TIMER_IDLE,    /* keep-alive wait between requests */
  TIMER_REQUEST, /* a request has begun and must be read completely */
  TIMER_LINGER,
} timer_mode_t;

struct http_exchange {
  http_conn_t *conn;
  const http_msg_t *req;
  http_route_match_t match;
  uint64_t started_ns;
  bool pending;   /* handed to a handler, not yet answered */
  bool in_handler; /* the handler is on the stack: don't re-enter parsing */
  bool orphaned;  /* the connection died while the handler was busy */
  char request_id[40];
};

struct http_conn {
  rt_actor_t actor;
  http_server_t *server;
  int fd;
  conn_state_t state;
  timer_mode_t timer_mode;
  uint64_t deadline_ns;    /* when the current mode's timeout is due */
  uint64_t timer_armed_ns; /* when the timer will actually fire */
  rt_timer_t timer;
  rt_op_t recv_op;
  rt_op_t send_op;
  rt_op_t cancel_op;
  rt_op_t close_op;
  http_parser_t parser;
  http_exchange_t ex;
  http_buf_t out;      /* responses waiting to be sent */
  http_buf_t sending;  /* the buffer the kernel is reading from */
  void *filter_state;  /* the filter's, when the server has one */
  http_buf_t wire;     /* filter output not yet sent */
  http_buf_t plain;    /* filter input decoded, being parsed */
  char *held;          /* received bytes not yet parsed (while paused) */
  uint32_t held_len;
  uint32_t held_cap;
  bool keep_alive;     /* false once a response said Connection: close */
  bool eof;            /* the peer closed its side or recv failed */
  http_conn_t *next;   /* server's list of live connections */
  http_conn_t *prev;
};

struct http_server {
  rt_loop_t *loop;
  http_server_config_t config;
  const http_router_t *router;
  int listen_fd;
  rt_op_t accept_op;
  rt_op_t accept_cancel_op;
  rt_op_t listen_close_op;
  rt_pool_t conns;
  rt_pool_t heads;  /* parsers' head storage, lent while a request is on */
  http_conn_t *live;
  bool draining;
  bool accepting;
  http_server_stats_t stats;
};

static void conn_pump(http_conn_t *c);
static void conn_close(http_conn_t *c);
static void conn_maybe_free(http_conn_t *c);
static void conn_send(http_conn_t *c);

/* Counters are written by the owning thread and read by /metrics on any
 * thread: relaxed atomics, which cost a plain add on x86. */
#define STAT_ADD(s, field, n)                                                  \
  atomic_store_explicit(&(s)->field,                                           \
                        atomic_load_explicit(&(s)->field, memory_order_relaxed) + (n), \
                        memory_order_relaxed)

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */
/* ------------------------------------------------------------------------ */

void http_server_config_defaults(http_server_config_t *c) {
  if (c->host == NULL) c->host = "127.0.0.1";
  if (c->conns_max == 0) c->conns_max = 10000;
  if (c->header_timeout_ms == 0) c->header_timeout_ms = 10000;
  if (c->idle_timeout_ms == 0) c->idle_timeout_ms = 60000;
  if (c->out_bytes_max == 0) c->out_bytes_max = 4u * 1024 * 1024 + 65536;
  if (c->limits.header_bytes_max == 0) http_limits_defaults(&c->limits);
}

int http_server_config_from_env(http_server_config_t *c) {
  int rc = 0;
  http_limits_defaults(&c->limits);
  rc |= rt_env_u32("HTTP_HEADER_TIMEOUT_MS", 10000, 1, 3600000, &c->header_timeout_ms);
  rc |= rt_env_u32("HTTP_IDLE_TIMEOUT_MS", 60000, 1, 3600000, &c->idle_timeout_ms);
  rc |= rt_env_u32("HTTP_HEADER_BYTES_MAX", c->limits.header_bytes_max, 256, 1 << 20,
                   &c->limits.header_bytes_max);
  rc |= rt_env_u32("HTTP_HEADERS_COUNT_MAX", c->limits.headers_count_max, 1, 1024,
                   &c->limits.headers_count_max);
  rc |= rt_env_u32("HTTP_URL_BYTES_MAX", c->limits.url_bytes_max, 16, 1 << 20,
                   &c->limits.url_bytes_max);
  rc |= rt_env_u32("HTTP_BODY_BYTES_MAX", c->limits.body_bytes_max, 0, 1u << 30,
                   &c->limits.body_bytes_max);
  rc |= rt_env_u32("HTTP_CONNS_MAX", 10000, 1, 1000000, &c->conns_max);
  rc |= rt_env_bool("HTTP_ACCESS_LOG", false, &c->access_log);
  return rc < 0 ? RT_E_CONFIG : 0;
}

/* ------------------------------------------------------------------------ */
/* Timers                                                                   */
/* ------------------------------------------------------------------------ */

/* One timer per connection, re-armed lazily: changing mode only records a
 * new deadline, and the heap is touched when the deadline moves earlier
 * than where the timer is armed. A keep-alive request therefore costs no
 * timer operation at all; the timer fires at the old deadline, sees the
 * connection was active since, and re-arms for the rest. */
static uint64_t mode_timeout_ms(const http_conn_t *c, timer_mode_t mode) {
  switch (mode) {
  case TIMER_IDLE: return c->server->config.idle_timeout_ms;
  case TIMER_REQUEST: return c->server->config.header_timeout_ms;
  case TIMER_LINGER: return LINGER_MS;
  case TIMER_NONE: break;
  }
  return 0;
}

/* Returns 0 or RT_E_LIMIT (no timer to be had; the timer is not armed). */
static int conn_timer_arm(http_conn_t *c, uint64_t deadline_ns) {
  uint64_t now = rt_loop_now_ns(c->server->loop);
  uint64_t after_ms = deadline_ns > now ? (deadline_ns - now + 999999u) / 1000000u : 0;
  c->timer_armed_ns = deadline_ns;
  return rt_timer_start(c->server->loop, &c->timer, after_ms, 0);
}

/* No deadline: the armed timer, if any, will find nothing to do. */
static void conn_timer_clear(http_conn_t *c) { c->timer_mode = TIMER_NONE; }

/* Enters a mode with a deadline. Moving a deadline earlier re-arms an
 * armed timer, which cannot fail; arming a disarmed one can. */
static int conn_timer_set(http_conn_t *c, timer_mode_t mode) {
  assert(mode != TIMER_NONE);
  c->timer_mode = mode;
  c->deadline_ns = rt_loop_now_ns(c->server->loop) + mode_timeout_ms(c, mode) * 1000000u;
  if (rt_timer_armed(&c->timer) && c->timer_armed_ns <= c->deadline_ns) return 0;
  return conn_timer_arm(c, c->deadline_ns);
}

/* A connection without a deadline is the slowloris case: it may not stay
 * open. Returns false when it was closed for want of a timer. */
static bool conn_timer_keep(http_conn_t *c, timer_mode_t mode) {
  if (conn_timer_set(c, mode) == 0) return true;
  conn_close(c);
  return false;
}

static void conn_fail_response(http_conn_t *c, int status, const char *code,
                               const char *message);

static void conn_timer_fired(rt_timer_t *t) {
  http_conn_t *c = t->ctx;
  timer_mode_t mode = c->timer_mode;
  if (mode == TIMER_NONE) return;
  if (rt_loop_now_ns(c->server->loop) < c->deadline_ns) {
    /* Activity since: not due yet. The first start from our own callback
     * takes the slot this timer left, so it cannot fail. */
    if (NEVER(conn_timer_arm(c, c->deadline_ns) < 0)) conn_close(c);
    return;
  }
  c->timer_mode = TIMER_NONE;
  switch (mode) {
  case TIMER_IDLE:
    STAT_ADD(&c->server->stats, idle_closed, 1);
    conn_close(c);
    break;
  case TIMER_REQUEST:
    STAT_ADD(&c->server->stats, request_timeouts, 1);
    conn_fail_response(c, 408, "request_timeout",
                       "the request was not received in time");
    break;
  case TIMER_LINGER:
  case TIMER_NONE:
    conn_close(c);
    break;
  }
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

static void conn_linger(http_conn_t *c);

static void conn_sent(rt_op_t *op, int res, uint32_t flags) {
  http_conn_t *c = op->ctx;
  c->sending.len = 0;
  if (res < 0) {
    c->eof = true;
    c->out.len = 0;
    conn_close(c);
    return;
  }
  STAT_ADD(&c->server->stats, bytes_sent, (uint64_t)res);
  if (c->out.len > 0 || c->wire.len > 0) {
    conn_send(c);
    return;
  }
  if (c->state == CONN_FLUSHING) {
    conn_linger(c);
    return;
  }
  if (c->state == CONN_CLOSING) {
    conn_maybe_free(c);
    return;
  }
  conn_pump(c); /* parsing may have paused on the high-water mark */
}

/* The last response is out: half-close, and read (discarding) what the
 * client still sends for a moment so it sees our answer, not a reset. */
static void conn_linger(http_conn_t *c) {
  shutdown(c->fd, SHUT_WR);
  c->state = CONN_LINGER;
  if (!conn_timer_keep(c, TIMER_LINGER)) return;
  if (c->eof && !c->recv_op.in_flight) conn_close(c);
}

/* With a filter, responses are encoded into `wire` first; what goes to the
 * kernel is then the wire buffer rather than the plain one. */
static int conn_encode(http_conn_t *c) {
  const http_filter_t *f = c->server->config.filter;
  if (f == NULL || c->out.len == 0) return 0;
  int rc = f->output(c->filter_state, c->out.data, c->out.len, &c->wire);
  c->out.len = 0;
  return rc;
}

static void conn_send(http_conn_t *c) {
  if (c->send_op.in_flight) return;
  if (c->close_op.in_flight) return; /* the fd is going: nothing more on it */
  if (conn_encode(c) < 0) {
    conn_close(c);
    return;
  }
  http_buf_t *next = c->server->config.filter != NULL ? &c->wire : &c->out;
  if (next->len == 0) return;
  http_buf_t t = c->sending;
  c->sending = *next;
  *next = t;
  next->len = 0;
  int rc = rt_send(c->server->loop, &c->send_op, c->fd, c->sending.data,
                   (uint32_t)c->sending.len, conn_sent, c);
  assert(rc == 0);
  (void)rc;
}

/* ------------------------------------------------------------------------ */
/* Exchanges: the handler's side                                            */
/* ------------------------------------------------------------------------ */

static void count_status(http_server_t *s, int status) {
  if (status < 200) return;
  if (status < 300) STAT_ADD(&s->stats, responses_2xx, 1);
  else if (status < 400) STAT_ADD(&s->stats, responses_3xx, 1);
  else if (status < 500) STAT_ADD(&s->stats, responses_4xx, 1);
  else STAT_ADD(&s->stats, responses_5xx, 1);
}

/* The route pattern, not the path, is logged: paths carry ids, and the
 * pattern is what one aggregates on. */
static void access_log(const http_exchange_t *ex, int status) {
  const http_conn_t *c = ex->conn;
  uint64_t us = (rt_now_ns() - ex->started_ns) / 1000u;
  const char *route = ex->match.pattern != NULL ? ex->match.pattern : "-";
  /* The request id is on the line already: the thread's current rid. */
  RT_INFO("request", RT_LF_STR("method", ex->req != NULL ? ex->req->method_name : "-"),
          RT_LF_STR("route", route), RT_LF_INT("status", status),
          RT_LF_INT("latency_us", us), RT_LF_BOOL("keep_alive", c->keep_alive));
}

/* Called after a response has been appended: leave the request, resume. */
static void exchange_finish(http_exchange_t *ex, int status) {
  http_conn_t *c = ex->conn;
  if (c->server->config.access_log) access_log(ex, status);
  ex->pending = false;
  ex->req = NULL;
  count_status(c->server, status);
  if (ex->orphaned) {
    ex->orphaned = false;
    c->out.len = 0;
    conn_maybe_free(c);
    return;
  }
  if (!c->keep_alive || c->server->draining) c->state = CONN_FLUSHING;
  http_parser_next(&c->parser);
  /* An answer given inside the handler returns to conn_feed(), which goes
   * on with the next request; a later answer restarts the pump itself. */
  if (!ex->in_handler) conn_pump(c);
}

static bool exchange_keep_alive(const http_exchange_t *ex) {
  const http_conn_t *c = ex->conn;
  return c->keep_alive && ex->req != NULL && ex->req->keep_alive &&
         !c->server->draining;
}

static void exchange_after_write(http_exchange_t *ex, int rc, int status) {
  if (rc < 0) {
    /* The response could not be buffered (too large): answer 500 instead. */
    RT_ERROR("response too large for the output buffer",
             RT_LF_INT("status", status));
    ex->conn->keep_alive = false;
    http_write_error(&ex->conn->out, 500, "internal", "response too large", false);
    status = 500;
  }
  if (!exchange_keep_alive(ex)) ex->conn->keep_alive = false;
  exchange_finish(ex, status);
}

void http_respond(http_exchange_t *ex, int status, const char *content_type,
                  const void *body, size_t body_len, const char *extra_headers) {
  assert(ex->pending);
  bool ka = exchange_keep_alive(ex);
  int rc = ex->orphaned ? 0
                        : http_write_response(&ex->conn->out, status, content_type,
                                              extra_headers, body, body_len, ka);
  exchange_after_write(ex, rc, status);
}

void http_respond_json(http_exchange_t *ex, int status, const json_t *body,
                       const char *extra_headers) {
  assert(ex->pending);
  bool ka = exchange_keep_alive(ex);
  int rc = ex->orphaned ? 0
                        : http_write_json(&ex->conn->out, status, body, ka, extra_headers);
  exchange_after_write(ex, rc, status);
}

void http_respond_error(http_exchange_t *ex, int status, const char *code,
                        const char *message) {
  assert(ex->pending);
  bool ka = exchange_keep_alive(ex);
  int rc = ex->orphaned ? 0
                        : http_write_error(&ex->conn->out, status, code, message, ka);
  exchange_after_write(ex, rc, status);
}

const http_msg_t *http_request(const http_exchange_t *ex) { return ex->req; }

const char *http_param(const http_exchange_t *ex, const char *name) {
  for (uint32_t i = 0; i < ex->match.params_count; i++) {
    if (strcmp(ex->match.params[i].name, name) == 0) return ex->match.params[i].value;
  }
  return NULL;
}

bool http_exchange_orphaned(const http_exchange_t *ex) { return ex->orphaned; }

rt_actor_t *http_exchange_actor(http_exchange_t *ex) { return &ex->conn->actor; }

const char *http_request_id(const http_exchange_t *ex) { return ex->request_id; }

/* ------------------------------------------------------------------------ */
/* Input                                                                    */
/* ------------------------------------------------------------------------ */

/* A protocol error or timeout: answer once, then close after flushing. */
static void conn_fail_response(http_conn_t *c, int status, const char *code,
                               const char *message) {
  if (c->state != CONN_OPEN || c->ex.pending) {
    conn_close(c);
    return;
  }
  c->keep_alive = false;
  http_write_error(&c->out, status, code, message, false);
  count_status(c->server, status);
  c->state = CONN_FLUSHING;
  conn_timer_clear(c);
  conn_send(c);
}

static void make_request_id(http_conn_t *c) {
  const char *rid = http_msg_header(c->ex.req, "x-request-id");
  if (rid != NULL && rid[0] != '\0' && strlen(rid) < sizeof c->ex.request_id) {
    /* Only ids made of safe characters are echoed back and logged. */
    bool ok = true;
    for (const char *p = rid; *p && ok; p++)
      ok = (*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'z') ||
           (*p >= 'A' && *p <= 'Z') || *p == '-' || *p == '_' || *p == '.';
    if (ok) {
      snprintf(c->ex.request_id, sizeof c->ex.request_id, "%s", rid);
      return;
    }
  }
  /* Generated: a per-thread sequence mixed with the thread's start time,
   * 5 bits per letter from an alphabet without digits, formatted by hand
   * (this runs per request). No digits, so a request id can never look
   * like a card number to a log scanner. */
  static _Thread_local uint64_t seq;
  static _Thread_local uint64_t base;
  if (base == 0) base = rt_now_ns() << 20 ^ (uint64_t)(uintptr_t)&seq;
  uint64_t v = base + ++seq;
  static const char letters[] = "abcdefghijklmnopqrstuvwxyzABCDEF";
  _Static_assert(sizeof letters - 1 == 32, "5 bits per letter");
  for (int i = 12; i >= 0; i--) {
    c->ex.request_id[i] = letters[v & 31u];
    v >>= 5;
  }
  c->ex.request_id[13] = '\0';
}

static void dispatch(http_conn_t *c, const http_msg_t *req) {
  http_server_t *s = c->server;
  http_exchange_t *ex = &c->ex;
  ex->req = req;
  ex->pending = true;
  ex->match.pattern = NULL;
  ex->started_ns = rt_loop_now_ns(s->loop);
  STAT_ADD(&s->stats, requests, 1);
  make_request_id(c);
  rt_log_set_request_id(ex->request_id);
  ex->in_handler = true;
  int rc = http_router_match(s->router, req->method_name, req->path, &ex->match);
  if (rc == HTTP_E_NOT_FOUND) {
    http_respond_error(ex, 404, "not_found", "no such route");
  } else if (rc == HTTP_E_METHOD) {
    char allow[160];
    snprintf(allow, sizeof allow, "Allow: %s\r\n", ex->match.allow);
    bool ka = exchange_keep_alive(ex);
    http_buf_t *out = &c->out;
    /* 405 carries the methods the path does accept. */
    char body[256];
    int n = snprintf(body, sizeof body,
                     "{\"error\":{\"code\":\"method_not_allowed\",\"message\":"
                     "\"allowed: %s\"}}",
                     ex->match.allow);
    int wrc = http_write_response(out, 405, "application/json", allow, body,
                                  (size_t)n, ka);
    exchange_after_write(ex, wrc, 405);
  } else if (rc < 0) {
    http_respond_error(ex, 500, "internal", "routing failed");
  } else {
    http_exchange_fn fn = (http_exchange_fn)ex->match.handler;
    fn(ex, ex->match.arg);
  }
  ex->in_handler = false;
  rt_log_set_request_id(NULL);
}

/* Feeds bytes to the parser until they are used up or the connection must
 * wait (handler pending, output over the high-water mark, or closing).
 * Returns the number of bytes consumed. */
/*
 * Head storage (the parser's scratch for the request line and fields, and
 * its field table, 12 KiB with the default limits) is lent from the
 * server's pool from a request's first byte until the connection is idle
 * again (answered, nothing held, between messages): an idle keep-alive
 * connection holds none. The pool has one per connection allowed, so a
 * connection always finds one; its slots are touched only as far as
 * requests run at once, and the last given back is the next lent.
 */
static bool conn_head(http_conn_t *c) {
  if (http_parser_has_head(&c->parser)) return true;
  void *head = rt_pool_take(&c->server->heads);
  if (NEVER(head == NULL)) return false;
  http_parser_lend(&c->parser, head);
  STAT_ADD(&c->server->stats, heads_lent, 1);
  return true;
}

static void conn_head_back(http_conn_t *c) {
  void *head = http_parser_take_back(&c->parser);
  if (head == NULL) return;
  rt_pool_put(&c->server->heads, head);
  STAT_ADD(&c->server->stats, heads_lent, (uint64_t)-1);
}

static size_t conn_feed(http_conn_t *c, const char *data, size_t len) {
  size_t used = 0;
  /* Bound: each turn consumes bytes or completes a request. */
  for (uint32_t turns = 0; turns < 100000; turns++) {
    if (c->state != CONN_OPEN || c->ex.pending) break;
    if (c->out.len + c->sending.len + c->wire.len > OUT_HIGH_WATER) break;
    if (!conn_head(c)) {
      conn_fail_response(c, 503, "overloaded", "no request head storage");
      return len;
    }
    bool was_idle = http_parser_idle(&c->parser);
    size_t consumed = 0;
    http_msg_t *msg = NULL;
    int rc = http_parser_feed(&c->parser, data + used, len - used, &consumed, &msg);
    used += consumed;
    if (rc < 0) {
      STAT_ADD(&c->server->stats, parse_errors, 1);
      int status = http_parser_error_status(rc);
      conn_fail_response(c, status, status == 400 ? "bad_request" : "limit_exceeded",
                         http_strerror(rc));
      return len; /* the rest is discarded */
    }
    if (msg != NULL) {
      conn_timer_clear(c);
      dispatch(c, msg);
      continue;
    }
    if (was_idle && !http_parser_idle(&c->parser) && !conn_timer_keep(c, TIMER_REQUEST)) break;
    if (used == len) break;
  }
  return used;
}

static int held_append(http_conn_t *c, const char *data, size_t len) {
  if (len == 0) return 0;
  if (c->held_len + len > IN_HELD_MAX) return RT_E_LIMIT;
  if (c->held_len + len > c->held_cap) {
    uint32_t cap = c->held_cap ? c->held_cap : 4096;
    while (cap < c->held_len + len) cap *= 2;
    char *p = realloc(c->held, cap);
    if (p == NULL) return -ENOMEM;
    c->held = p;
    c->held_cap = cap;
  }
  memcpy(c->held + c->held_len, data, len);
  c->held_len += (uint32_t)len;
  return 0;
}

/* Parses held bytes, then arms the idle timer when nothing is going on. */
static void conn_pump(http_conn_t *c) {
  if (c->held_len > 0) {
    size_t used = conn_feed(c, c->held, c->held_len);
    memmove(c->held, c->held + used, c->held_len - used);
    c->held_len -= (uint32_t)used;
  }
  conn_send(c);
  if (c->state == CONN_FLUSHING && !c->send_op.in_flight) conn_linger(c);
  if (c->state != CONN_OPEN || c->ex.pending) return;
  if (c->eof) {
    conn_close(c);
    return;
  }
  if (c->held_len == 0 && http_parser_idle(&c->parser)) {
    conn_head_back(c); /* idle: the next request borrows one again */
    if (c->server->draining && c->out.len == 0 && c->wire.len == 0 &&
        !c->send_op.in_flight) {
      conn_close(c);
      return;
    }
    (void)conn_timer_keep(c, TIMER_IDLE);
  }
}

/* Plain bytes: parse what can be parsed now, hold the rest. */
static void conn_on_plain(http_conn_t *c, const char *data, size_t len) {
  size_t used = 0;
  if (c->held_len == 0) used = conn_feed(c, data, len);
  if (c->state == CONN_OPEN && held_append(c, data + used, len - used) < 0) {
    /* A client pipelining far ahead of slow handlers: stop it here. */
    conn_fail_response(c, 503, "overloaded", "too many pipelined requests");
    return;
  }
  conn_pump(c);
}

static void conn_on_bytes(http_conn_t *c, const char *data, size_t len) {
  STAT_ADD(&c->server->stats, bytes_received, len);
  if (c->state != CONN_OPEN) return; /* flushing or lingering: discard */
  const http_filter_t *f = c->server->config.filter;
  if (f == NULL) {
    conn_on_plain(c, data, len);
    return;
  }
  /* Handshake bytes count against the request deadline, not the (longer)
   * idle one, so a slow handshake cannot hold a connection for long. */
  if (c->timer_mode == TIMER_IDLE && !conn_timer_keep(c, TIMER_REQUEST)) return;
  c->plain.len = 0;
  if (f->input(c->filter_state, data, len, &c->plain, &c->wire) < 0) {
    STAT_ADD(&c->server->stats, parse_errors, 1);
    /* What the filter still has to say (a TLS alert) goes out first. */
    if (c->wire.len > 0 && !c->ex.pending) {
      c->keep_alive = false;
      c->state = CONN_FLUSHING;
      conn_send(c);
      return;
    }
    conn_close(c);
    return;
  }
  if (c->plain.len > 0) {
    conn_on_plain(c, c->plain.data, c->plain.len);
  } else {
    conn_pump(c);
  }
}

static void conn_recv(rt_op_t *op, int res, uint32_t flags) {
  http_conn_t *c = op->ctx;
  rt_loop_t *loop = c->server->loop;
  if (res > 0) {
    conn_on_bytes(c, rt_recv_buffer(loop, flags), (size_t)res);
    rt_recv_buffer_release(loop, flags);
  } else if (res != -ENOBUFS) {
    c->eof = true;
  }
  if (rt_op_more(flags)) return;
  /* The multishot recv ended: re-arm unless the connection is going away. */
  if (!c->eof && c->state != CONN_CLOSING) {
    rt_recv_multishot(loop, &c->recv_op, c->fd, conn_recv, c);
    return;
  }
  if (c->state == CONN_OPEN && c->eof) {
    if (c->ex.pending) return; /* the handler's answer will find eof */
    conn_close(c);
    return;
  }
  if (c->state == CONN_LINGER) {
    conn_close(c);
    return;
  }
  conn_maybe_free(c);
}

/* ------------------------------------------------------------------------ */
/* Connection lifetime                                                      */
/* ------------------------------------------------------------------------ */

static void server_maybe_drained(http_server_t *s);

/* Frees what a connection owns besides its pool slot. */
static void conn_release(http_conn_t *c) {
  const http_filter_t *f = c->server->config.filter;
  if (f != NULL && c->filter_state != NULL) f->free(c->filter_state);
  c->filter_state = NULL;
  conn_head_back(c);
  http_parser_deinit(&c->parser);
  http_buf_deinit(&c->out);
  http_buf_deinit(&c->sending);
  http_buf_deinit(&c->wire);
  http_buf_deinit(&c->plain);
  free(c->held);
  c->held = NULL;
}

static void conn_closed(rt_op_t *op, int res, uint32_t flags) {
  http_conn_t *c = op->ctx;
  http_server_t *s = c->server;
  if (c->prev != NULL) c->prev->next = c->next;
  else s->live = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  conn_release(c);
  STAT_ADD(&s->stats, conns_active, (uint64_t)-1);
  rt_pool_put(&s->conns, c);
  server_maybe_drained(s);
}

/* Closes the fd once no op and no handler refers to the connection. */
static void conn_maybe_free(http_conn_t *c) {
  if (c->state != CONN_CLOSING) return;
  if (c->recv_op.in_flight || c->send_op.in_flight || c->cancel_op.in_flight) return;
  if (c->close_op.in_flight) return;
  if (c->ex.pending) {
    c->ex.orphaned = true; /* freed when the handler answers */
    return;
  }
  rt_close(c->server->loop, &c->close_op, c->fd, conn_closed, c);
}

static void conn_cancel_done(rt_op_t *op, int res, uint32_t flags) {
  conn_maybe_free(op->ctx);
}

static void conn_close(http_conn_t *c) {
  if (c->state == CONN_CLOSING) return;
  c->state = CONN_CLOSING;
  conn_timer_clear(c);
  rt_timer_stop(c->server->loop, &c->timer);
  if (c->recv_op.in_flight && !c->cancel_op.in_flight)
    rt_cancel(c->server->loop, &c->cancel_op, &c->recv_op, conn_cancel_done, c);
  conn_maybe_free(c);
}

/* Messages to a connection actor: none are defined yet beyond the
 * runtime's own; unknown ones are a programming error, failing this
 * connection only. */
static int conn_actor(rt_actor_t *self, rt_msg_t *msg) {
  return RT_E_PROTO;
}

static void conn_actor_stopped(rt_actor_t *self, int reason) {
  conn_close(self->state);
}

static void conn_start(http_server_t *s, int fd) {
  (void)rt_tcp_nodelay(fd); /* best effort: only latency depends on it */
  http_conn_t *c = rt_pool_get(&s->conns);
  if (c == NULL) {
    /* Over the connection limit: say so and close, without a pool slot. */
    static const char busy[] =
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        "Content-Length: 64\r\nConnection: close\r\n\r\n"
        "{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections\"}}";
    _Static_assert(sizeof "{\"error\":{\"code\":\"overloaded\",\"message\":\"too many connections\"}}" - 1 == 64,
                   "Content-Length of the canned 503");
    /* Under a filter (TLS) plain text would be garbage: just close. */
    if (s->config.filter == NULL)
      (void)!send(fd, busy, sizeof busy - 1, MSG_DONTWAIT | MSG_NOSIGNAL);
    close(fd);
    STAT_ADD(&s->stats, conns_rejected, 1);
    return;
  }
  c->server = s;
  c->fd = fd;
  c->state = CONN_OPEN;
  c->keep_alive = true;
  c->timer_mode = TIMER_NONE;
  c->ex.conn = c;
  rt_timer_init(&c->timer, conn_timer_fired, c);
  rt_actor_init(&c->actor, s->loop, "http_conn", conn_actor, c);
  c->actor.on_stop = conn_actor_stopped;
  int rc = http_parser_init_lent(&c->parser, HTTP_KIND_REQUEST, &s->config.limits);
  if (rc == 0) rc = http_buf_init(&c->out, 0, s->config.out_bytes_max);
  if (rc == 0) rc = http_buf_init(&c->sending, 0, s->config.out_bytes_max);
  if (rc == 0) rc = http_buf_init(&c->wire, 0, s->config.out_bytes_max + 65536);
  if (rc == 0) rc = http_buf_init(&c->plain, 0, 65536);
  if (rc == 0 && s->config.filter != NULL) {
    c->filter_state = s->config.filter->open(s->config.filter->ctx, fd);
    if (c->filter_state == NULL) rc = RT_E_LIMIT;
  }
  /* Its first deadline, before it counts as open: no timer, no connection. */
  if (rc == 0) rc = conn_timer_set(c, TIMER_IDLE);
  if (rc < 0) {
    /* Refusals come in floods (a filter's per-address limit): counted
     * always, logged at 1, 2, 4, 8, ... */
    uint64_t n = atomic_load_explicit(&s->stats.conns_rejected, memory_order_relaxed) + 1;
    if ((n & (n - 1)) == 0) {
      RT_WARN("connection refused at set-up", RT_LF_STR("error", rt_strerror(rc)),
              RT_LF_INT("refused_total", n));
    }
    conn_release(c);
    rt_pool_put(&s->conns, c);
    close(fd);
    STAT_ADD(&s->stats, conns_rejected, 1);
    return;
  }
  c->next = s->live;
  if (s->live != NULL) s->live->prev = c;
  s->live = c;
  STAT_ADD(&s->stats, conns_accepted, 1);
  STAT_ADD(&s->stats, conns_active, 1);
  rt_recv_multishot(s->loop, &c->recv_op, fd, conn_recv, c);
}

/* ------------------------------------------------------------------------ */
/* Listening and draining                                                   */
/* ------------------------------------------------------------------------ */

static void on_accept(rt_op_t *op, int res, uint32_t flags) {
  http_server_t *s = op->ctx;
  if (res >= 0) {
    if (s->draining) {
      close(res);
    } else {
      conn_start(s, res);
    }
  } else if (res != -ECANCELED) {
    RT_WARN("accept failed", RT_LF_STR("error", rt_strerror(res)));
  }
  if (rt_op_more(flags)) return;
  if (!s->draining && s->accepting) {
    rt_accept_multishot(s->loop, &s->accept_op, s->listen_fd, on_accept, s);
  } else if (s->listen_fd >= 0) {
    rt_close(s->loop, &s->listen_close_op, s->listen_fd, NULL, NULL);
    s->listen_fd = -1;
    server_maybe_drained(s);
  }
}

static void server_maybe_drained(http_server_t *s) {
  if (!s->draining || s->live != NULL || s->accept_op.in_flight) return;
  if (s->listen_fd >= 0) return;
  RT_INFO("http server drained", RT_LF_INT("port", s->config.port));
  s->draining = false; /* report once */
  s->accepting = false;
  rt_loop_drained(s->loop);
}

static void server_drain(rt_loop_t *loop, void *arg) {
  http_server_t *s = arg;
  s->draining = true;
  if (s->accept_op.in_flight) {
    rt_cancel(loop, &s->accept_cancel_op, &s->accept_op, NULL, NULL);
  } else if (s->listen_fd >= 0) {
    rt_close(loop, &s->listen_close_op, s->listen_fd, NULL, NULL);
    s->listen_fd = -1;
  }
  /* Idle connections go now; busy ones after their current response. */
  http_conn_t *next;
  for (http_conn_t *c = s->live; c != NULL; c = next) {
    next = c->next;
    if (c->state == CONN_OPEN && !c->ex.pending && http_parser_idle(&c->parser) &&
        c->held_len == 0 && c->out.len == 0 && !c->send_op.in_flight) {
      conn_close(c);
    }
  }
  server_maybe_drained(s);
}

int http_server_create(http_server_t **out, rt_loop_t *loop,
                       const http_server_config_t *config,
                       const http_router_t *router) {
  http_server_t *s = calloc(1, sizeof *s);
  if (s == NULL) return -ENOMEM;
  s->loop = loop;
  s->config = *config;
  http_server_config_defaults(&s->config);
  s->router = router;
  s->listen_fd = -1;
  int rc = rt_pool_init(&s->conns, "http_conns", sizeof(http_conn_t), s->config.conns_max);
  if (rc == 0) {
    rc = rt_pool_init(&s->heads, "http_heads", http_parser_head_bytes(&s->config.limits),
                      s->config.conns_max);
    if (rc < 0) rt_pool_deinit(&s->conns);
  }
  if (rc < 0) {
    free(s);
    return rc;
  }
  *out = s;
  return 0;
}

int http_server_start(http_server_t *s) {
  int fd = rt_tcp_listen(s->config.host, s->config.port, 4096, true);
  if (fd < 0) return fd;
  s->listen_fd = fd;
  int port = rt_tcp_local_port(fd);
  if (port > 0) s->config.port = (uint16_t)port;
  s->accepting = true;
  int rc = rt_accept_multishot(s->loop, &s->accept_op, fd, on_accept, s);
  if (rc == 0) rc = rt_loop_on_drain(s->loop, server_drain, s);
  return rc;
}

uint16_t http_server_port(const http_server_t *s) { return s->config.port; }

const http_server_stats_t *http_server_stats(const http_server_t *s) {
  return &s->stats;
}

void http_server_destroy(http_server_t *s) {
  if (s == NULL) return;
  /* Connections still live at this point belong to a loop that stopped at
   * its drain deadline; the ring is gone, so release them directly. */
  while (s->live != NULL) {
    http_conn_t *c = s->live;
    s->live = c->next;
    close(c->fd);
    conn_release(c);
    rt_pool_put(&s->conns, c);
  }
  if (s->listen_fd >= 0) close(s->listen_fd);
  rt_pool_deinit(&s->conns);
  rt_pool_deinit(&s->heads);
  free(s);
}

/* ------------------------------------------------------------------------ */
/* Metrics                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct metric_def {
  const char *name; /* after the prefix; NULL: another sample of the last */
  wire_metrics_type_t type;
  const char *help;
  size_t offset;
  const char *code; /* status class label, or NULL */
} metric_def_t;

#define M(field) offsetof(http_server_stats_t, field)
#define COUNTER WIRE_METRICS_COUNTER
static const metric_def_t metric_defs[] = {
    {"connections_accepted_total", COUNTER, "Connections accepted.", M(conns_accepted), NULL},
    {"connections_active", WIRE_METRICS_GAUGE, "Connections open now.", M(conns_active), NULL},
    {"connections_rejected_total", COUNTER, "Connections refused over the limit.", M(conns_rejected), NULL},
    {"requests_total", COUNTER, "Requests received.", M(requests), NULL},
    {"responses_total", COUNTER, "Responses by status class.", M(responses_2xx), "2xx"},
    {NULL, COUNTER, NULL, M(responses_3xx), "3xx"},
    {NULL, COUNTER, NULL, M(responses_4xx), "4xx"},
    {NULL, COUNTER, NULL, M(responses_5xx), "5xx"},
    {"parse_errors_total", COUNTER, "Requests refused by the parser.", M(parse_errors), NULL},
    {"request_timeouts_total", COUNTER, "Requests not received in time (408).", M(request_timeouts), NULL},
    {"idle_closed_total", COUNTER, "Keep-alive connections closed when idle.", M(idle_closed), NULL},
    {"received_bytes_total", COUNTER, "Bytes received.", M(bytes_received), NULL},
    {"sent_bytes_total", COUNTER, "Bytes sent.", M(bytes_sent), NULL},
    {"request_heads_lent", WIRE_METRICS_GAUGE,
     "Connections holding request head storage now (reading or handling a request).",
     M(heads_lent), NULL},
};
#undef COUNTER
#undef M

void http_server_metrics(wire_metrics_t *m, const char *prefix,
                         http_server_t *const *servers, uint32_t servers_count) {
  for (size_t i = 0; i < sizeof metric_defs / sizeof metric_defs[0]; i++) {
    const metric_def_t *d = &metric_defs[i];
    uint64_t sum = 0;
    for (uint32_t k = 0; k < servers_count; k++) {
      const _Atomic uint64_t *v =
          (const _Atomic uint64_t *)((const char *)&servers[k]->stats + d->offset);
      sum += atomic_load_explicit(v, memory_order_relaxed);
    }
    if (d->name != NULL) {
      char name[WIRE_METRICS_NAME_BYTES_MAX];
      int n = snprintf(name, sizeof name, "%s%s", prefix, d->name);
      assert(n > 0);
      assert((size_t)n < sizeof name);
      wire_metrics_family(m, name, d->type, d->help);
    }
    if (d->code != NULL) {
      wire_metrics_u64(m, WIRE_METRICS_LABELS({"code", d->code}), sum);
    } else {
      wire_metrics_u64(m, NULL, 0, sum);
    }
  }
}

void http_respond_metrics(http_exchange_t *ex, http_metrics_render_fn *render, void *ctx,
                          size_t bytes_max) {
  /* Allocated whole and written from the front: the kernel backs only the
   * pages the text reaches, so a generous bound costs address space. */
  char *page = malloc(bytes_max);
  if (page == NULL) {
    http_respond_error(ex, 503, "overloaded", "out of memory");
    return;
  }
  wire_metrics_t m;
  wire_metrics_init(&m, page, bytes_max);
  render(&m, ctx);
  if (wire_metrics_end(&m) < 0) {
    http_respond_error(ex, 500, "internal", "metrics too large");
  } else {
    http_respond(ex, 200, "text/plain; version=0.0.4", m.data, m.len, NULL);
  }
  free(page);
}
