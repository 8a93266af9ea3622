/*
 * tls_filter.c - TLS under the wire HTTP server, one filter per loop thread.
 *
 * The server hands us ciphertext as it arrives and plaintext responses to
 * send (http_filter_t); BearSSL's engine sits in between with its own
 * buffers. Input: push ciphertext into the engine's record buffer, pull
 * decrypted application data out, and pull any records the engine wants
 * to send (handshake, alerts). Output: push plaintext into the engine's
 * application buffer, flush, pull the records. Both loops are bounded by
 * the bytes they move: a turn that moves nothing ends them.
 *
 * Timeouts the wire server cannot see: it re-arms its idle timer whenever
 * a read yields no plaintext, so a client sending a handshake, or empty
 * records, a byte at a time would be held forever. We keep connections
 * whose input has produced no plaintext yet on a list ordered by when that
 * started; a periodic sweep shuts down those past the handshake timeout
 * (shutdown(2) makes the server's recv see end of stream, and the server
 * then closes the connection the normal way).
 */
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "tls_internal.h"

#define SWEEP_MS_MAX 250

typedef struct binding {
  const rt_actor_t *actor; /* NULL: empty */
  gw_tls_conn_t *conn;
} binding_t;

struct gw_tls_filter {
  http_filter_t http;
  gw_tls_t *tls;
  rt_loop_t *loop;
  gw_connlimit_t *connlimit;
  rt_pool_t conns;
  gw_tls_conn_t *stalled_head; /* ordered by stall_since_ns */
  gw_tls_conn_t *stalled_tail;
  gw_tls_conn_t *current;      /* the connection whose bytes were decoded last */
  rt_timer_t sweep;
  binding_t *bindings;         /* actor -> connection, linear probing */
  uint32_t bindings_mask;
  uint64_t hash_key;
};

static void tls_free(void *state);

/* ------------------------------------------------------------------------ */
/* Stalled connections                                                      */
/* ------------------------------------------------------------------------ */

static bool stalled_linked(const gw_tls_filter_t *f, const gw_tls_conn_t *c) {
  return c->prev != NULL || f->stalled_head == c;
}

static void stall_start(gw_tls_filter_t *f, gw_tls_conn_t *c, uint64_t now) {
  if (stalled_linked(f, c)) return;
  c->stall_since_ns = now;
  c->next = NULL;
  c->prev = f->stalled_tail;
  if (f->stalled_tail != NULL) f->stalled_tail->next = c;
  else f->stalled_head = c;
  f->stalled_tail = c;
}

static void stall_end(gw_tls_filter_t *f, gw_tls_conn_t *c) {
  if (!stalled_linked(f, c)) return;
  if (c->prev != NULL) c->prev->next = c->next;
  else f->stalled_head = c->next;
  if (c->next != NULL) c->next->prev = c->prev;
  else f->stalled_tail = c->prev;
  c->next = c->prev = NULL;
  c->stall_since_ns = 0;
}

/* Shuts down every connection stalled for longer than the timeout. The
 * list is in stall order, so the walk stops at the first one not due. */
static void sweep(rt_timer_t *t) {
  gw_tls_filter_t *f = t->ctx;
  uint64_t now = rt_loop_now_ns(f->loop);
  uint64_t limit_ns = (uint64_t)f->tls->handshake_timeout_ms * 1000000u;
  for (uint32_t n = 0; n < f->conns.capacity && f->stalled_head != NULL; n++) {
    gw_tls_conn_t *c = f->stalled_head;
    if (now - c->stall_since_ns < limit_ns) break;
    stall_end(f, c);
    atomic_fetch_add_explicit(&f->tls->stats.stalled, 1, memory_order_relaxed);
    shutdown(c->fd, SHUT_RDWR);
  }
}

/* ------------------------------------------------------------------------ */
/* Actor bindings                                                           */
/* ------------------------------------------------------------------------ */

static uint32_t binding_home(const gw_tls_filter_t *f, const rt_actor_t *a) {
  uintptr_t p = (uintptr_t)a;
  return (uint32_t)gw__hash(&p, sizeof p, f->hash_key) & f->bindings_mask;
}

static uint32_t binding_find(const gw_tls_filter_t *f, const rt_actor_t *a) {
  uint32_t i = binding_home(f, a);
  while (f->bindings[i].actor != NULL && f->bindings[i].actor != a)
    i = (i + 1) & f->bindings_mask;
  return i;
}

/* Backward-shift deletion keeps every probe run unbroken. */
static void binding_remove(gw_tls_filter_t *f, const rt_actor_t *a) {
  uint32_t hole = binding_find(f, a);
  if (f->bindings[hole].actor == NULL) return;
  uint32_t i = hole;
  for (uint32_t n = 0; n <= f->bindings_mask; n++) {
    i = (i + 1) & f->bindings_mask;
    if (f->bindings[i].actor == NULL) break;
    uint32_t home = binding_home(f, f->bindings[i].actor);
    bool between = hole <= i ? (home > hole && home <= i) : (home > hole || home <= i);
    if (!between) {
      f->bindings[hole] = f->bindings[i];
      hole = i;
    }
  }
  f->bindings[hole] = (binding_t){0};
}

gw_tls_conn_t *gw_tls_filter_conn_of(gw_tls_filter_t *f, const rt_actor_t *actor) {
  uint32_t i = binding_find(f, actor);
  if (f->bindings[i].actor != NULL) return f->bindings[i].conn;
  gw_tls_conn_t *c = f->current;
  /* A connection is bound once, to the actor of its first request. */
  if (c == NULL || c->bound_actor != NULL) return NULL;
  c->bound_actor = actor;
  f->bindings[i] = (binding_t){.actor = actor, .conn = c};
  return c;
}

const gw_addr_t *gw_tls_conn_peer(const gw_tls_conn_t *c) { return &c->peer; }

const char *gw_tls_conn_suite(const gw_tls_conn_t *c) {
  return gw__tls_suite_name(c->sc.eng.session.cipher_suite);
}

/* ------------------------------------------------------------------------ */
/* Engine pumping                                                           */
/* ------------------------------------------------------------------------ */

/* Moves the records the engine wants to send into `wire`. */
static int drain_records(br_ssl_engine_context *eng, http_buf_t *wire) {
  size_t n = 0;
  unsigned char *p = br_ssl_engine_sendrec_buf(eng, &n);
  if (p == NULL || n == 0) return 0;
  int rc = http_buf_append(wire, p, n);
  if (rc == 0) br_ssl_engine_sendrec_ack(eng, n);
  return rc;
}

/* The engine closed: cleanly (close_notify) or on an error. Either way the
 * connection ends; errors are counted. */
static int engine_closed(gw_tls_conn_t *c) {
  int err = br_ssl_engine_last_error(&c->sc.eng);
  if (err != BR_ERR_OK) {
    atomic_fetch_add_explicit(&c->filter->tls->stats.failed, 1, memory_order_relaxed);
    RT_DEBUG("tls connection failed", RT_LF_INT("bearssl_error", err),
             RT_LF_BOOL("handshake_done", c->handshake_done));
  }
  return GW_E_TLS;
}

static void handshake_finished(gw_tls_conn_t *c) {
  c->handshake_done = true;
  gw_tls_stats_t *st = &c->filter->tls->stats;
  atomic_fetch_add_explicit(&st->handshakes, 1, memory_order_relaxed);
  if (c->resumed) atomic_fetch_add_explicit(&st->resumed, 1, memory_order_relaxed);
}

/* Runs the engine over `len` bytes of ciphertext. */
static int engine_input(gw_tls_conn_t *c, const char *data, size_t len, http_buf_t *plain,
                        http_buf_t *wire) {
  br_ssl_engine_context *eng = &c->sc.eng;
  size_t off = 0;
  int rc = 0;
  /* Each turn moves bytes somewhere, or the loop ends: the bound is the
   * bytes in plus the records and plaintext they can turn into. */
  for (size_t turns = 0; turns < 2 * len + 64 && rc == 0; turns++) {
    unsigned st = br_ssl_engine_current_state(eng);
    if (st & BR_SSL_CLOSED) return engine_closed(c);
    if (!c->handshake_done && (st & BR_SSL_SENDAPP)) handshake_finished(c);
    if (st & BR_SSL_SENDREC) {
      rc = drain_records(eng, wire);
    } else if (st & BR_SSL_RECVAPP) {
      size_t n = 0;
      unsigned char *p = br_ssl_engine_recvapp_buf(eng, &n);
      rc = http_buf_append(plain, p, n);
      if (rc == 0) br_ssl_engine_recvapp_ack(eng, n);
    } else if ((st & BR_SSL_RECVREC) && off < len) {
      size_t n = 0;
      unsigned char *p = br_ssl_engine_recvrec_buf(eng, &n);
      size_t m = len - off < n ? len - off : n;
      memcpy(p, data + off, m);
      br_ssl_engine_recvrec_ack(eng, m);
      off += m;
    } else {
      break;
    }
  }
  return rc;
}

static int tls_input(void *state, const char *data, size_t len, http_buf_t *plain,
                     http_buf_t *wire) {
  gw_tls_conn_t *c = state;
  gw_tls_filter_t *f = c->filter;
  f->current = c;
  size_t plain_before = plain->len;
  bool handshaking = !c->handshake_done;
  int rc = engine_input(c, data, len, plain, wire);
  if (rc < 0) return rc;
  /* Plaintext, or the end of the handshake, ends a stall; bytes that made
   * neither start one (or let the running one go on). */
  if (plain->len > plain_before || (handshaking && c->handshake_done)) {
    stall_end(f, c);
  } else {
    stall_start(f, c, rt_loop_now_ns(f->loop));
  }
  return 0;
}

typedef struct sink_ctx {
  gw_tls_conn_t *conn;
  http_buf_t *wire;
} sink_ctx_t;

/* Pushes plaintext into the engine, moving full records out as the
 * application buffer fills. */
static int engine_sink(void *ctx, const char *data, size_t len) {
  sink_ctx_t *s = ctx;
  br_ssl_engine_context *eng = &s->conn->sc.eng;
  int rc = 0;
  const size_t turns_max = 2 * len + 64; /* each turn moves bytes */
  for (size_t turns = 0; len > 0 && rc == 0; turns++) {
    if (turns == turns_max) return GW_E_TLS;
    unsigned st = br_ssl_engine_current_state(eng);
    if (st & BR_SSL_CLOSED) return engine_closed(s->conn);
    if (st & BR_SSL_SENDREC) {
      rc = drain_records(eng, s->wire);
    } else if (st & BR_SSL_SENDAPP) {
      size_t n = 0;
      unsigned char *p = br_ssl_engine_sendapp_buf(eng, &n);
      size_t m = len < n ? len : n;
      memcpy(p, data, m);
      br_ssl_engine_sendapp_ack(eng, m);
      data += m;
      len -= m;
    } else {
      return GW_E_TLS; /* no handshake yet: nothing may be sent */
    }
  }
  return rc;
}

static int tls_output(void *state, const char *data, size_t len, http_buf_t *wire) {
  gw_tls_conn_t *c = state;
  sink_ctx_t s = {.conn = c, .wire = wire};
  int rc = gw_inject_push(&c->inject, data, len, engine_sink, &s);
  if (rc < 0) return rc;
  /* Send the partly filled record now rather than waiting for more. */
  br_ssl_engine_flush(&c->sc.eng, 0);
  for (int turns = 0; turns < 4 && rc == 0; turns++) {
    if (!(br_ssl_engine_current_state(&c->sc.eng) & BR_SSL_SENDREC)) break;
    rc = drain_records(&c->sc.eng, wire);
  }
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Connection life                                                          */
/* ------------------------------------------------------------------------ */

static void *tls_open(void *ctx, int fd) {
  gw_tls_filter_t *f = ctx;
  gw_tls_conn_t *c = rt_pool_get(&f->conns);
  if (c == NULL) return NULL;
  c->filter = f;
  c->fd = fd;
  c->creds = NULL;
  if (gw_addr_of_peer(&c->peer, fd) < 0) {
    rt_pool_put(&f->conns, c);
    return NULL;
  }
  if (f->connlimit != NULL) {
    if (gw_connlimit_acquire(f->connlimit, &c->peer) < 0) {
      atomic_fetch_add_explicit(&f->tls->stats.refused_per_addr, 1, memory_order_relaxed);
      rt_pool_put(&f->conns, c);
      return NULL;
    }
    c->limited = true;
  }
  if (gw__tls_engine_init(f->tls, c) < 0) {
    tls_free(c);
    return NULL;
  }
  gw_inject_init(&c->inject, f->tls->inject_lines);
  /* The handshake must be done within the timeout, from the accept on. */
  stall_start(f, c, rt_loop_now_ns(f->loop));
  return c;
}

static void tls_free(void *state) {
  gw_tls_conn_t *c = state;
  gw_tls_filter_t *f = c->filter;
  stall_end(f, c);
  if (c->bound_actor != NULL) binding_remove(f, c->bound_actor);
  if (f->current == c) f->current = NULL;
  if (c->limited) gw_connlimit_release(f->connlimit, &c->peer);
  gw__tls_engine_done(c);
  /* The engine holds the session keys. */
  explicit_bzero(&c->sc, sizeof c->sc);
  rt_pool_put(&f->conns, c);
}

/* ------------------------------------------------------------------------ */
/* The filter                                                               */
/* ------------------------------------------------------------------------ */

int gw_tls_filter_create(gw_tls_filter_t **out, gw_tls_t *tls, rt_loop_t *loop,
                         gw_connlimit_t *connlimit, uint32_t conns_max) {
  gw_tls_filter_t *f = calloc(1, sizeof *f);
  if (f == NULL) return -ENOMEM;
  f->tls = tls;
  f->loop = loop;
  f->connlimit = connlimit;
  f->hash_key = gw__random_u64();
  f->bindings_mask = gw__pow2(conns_max * 2 < 16 ? 16 : conns_max * 2) - 1;
  f->bindings = calloc((size_t)f->bindings_mask + 1, sizeof *f->bindings);
  int rc = f->bindings != NULL ? 0 : -ENOMEM;
  if (rc == 0) rc = rt_pool_init(&f->conns, "tls_conns", sizeof(gw_tls_conn_t), conns_max);
  if (rc < 0) {
    free(f->bindings);
    free(f);
    return rc;
  }
  f->http = (http_filter_t){
      .open = tls_open, .input = tls_input, .output = tls_output, .free = tls_free, .ctx = f};
  uint32_t period = tls->handshake_timeout_ms / 4;
  if (period > SWEEP_MS_MAX) period = SWEEP_MS_MAX;
  if (period == 0) period = 1;
  rt_timer_init(&f->sweep, sweep, f);
  /* The sweep is what ends stalled handshakes: no sweep, no filter. */
  rc = rt_timer_start(loop, &f->sweep, period, period);
  if (rc < 0) {
    rt_pool_deinit(&f->conns);
    free(f->bindings);
    free(f);
    return rc;
  }
  *out = f;
  return 0;
}

void gw_tls_filter_stop(gw_tls_filter_t *f) { rt_timer_stop(f->loop, &f->sweep); }

void gw_tls_filter_destroy(gw_tls_filter_t *f) {
  if (f == NULL) return;
  rt_pool_deinit(&f->conns);
  free(f->bindings);
  free(f);
}

const http_filter_t *gw_tls_filter_http(gw_tls_filter_t *f) { return &f->http; }
