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
 *
 * Record buffers: BearSSL reads records into, and builds them in, buffers
 * of 16.7 + 4.1 KiB, which an idle keep-alive connection does not need:
 * between two requests its engine holds no byte of any record. So the
 * buffers are lent, not owned. The life of a pair:
 *   1. The filter keeps one spare pair, lent to whichever connection a
 *      call (open, input, output) is for, unless that connection holds
 *      its own.
 *   2. At the end of the call the engine is looked at. Quiet (no byte of
 *      an incoming record received, no outgoing record built or unsent:
 *      engine_quiet()), the pair goes back: the spare to the filter, an
 *      own pair to the pool.
 *   3. Not quiet (a record partly received, which is how large bodies and
 *      slow clients arrive), the connection keeps the pair it has; if it
 *      was the spare, the filter takes a new spare from the pool. With
 *      none left the connection is closed and counted: buffers are a
 *      configured limit like connections (records_max).
 *   4. A connection freed while holding a pair gives it back to the pool.
 * Output never needs a pair of its own: a response is pushed through the
 * engine and its records drained to the wire buffer within one call, so
 * an answer given later, to a connection now idle, always finds the
 * spare. Between calls an idle engine points at no buffer at all, so a
 * use that these rules missed faults at once instead of reading another
 * connection's bytes.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "tls_internal.h"

#define SWEEP_MS_MAX 250
/* BearSSL's header-sized first read of a record (ssl_engine.c). */
#define RECORD_HEADER_BYTES 5

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
  rt_pool_t bufs;              /* record buffers held past a call, and the spare */
  gw__tls_bufs_t *spare;       /* lent to the connection of the current call */
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
/* Record buffers                                                           */
/* ------------------------------------------------------------------------ */

/* True when the engine's buffers hold nothing it will read again, so that
 * they may be taken away and others of the same sizes put in their place.
 * BearSSL (ssl_engine.c) keeps offsets into its buffers, never data
 * elsewhere about them: with ixa = ixb = 0 and ixc = 5 it waits for the
 * first header byte of a record (make_ready_in), with oxa = oxc < oxb it
 * has an empty record open for payload (make_ready_out). The handshake's
 * pointers into the buffers are taken afresh each time it runs. A closed
 * engine reads nothing more. Called with the buffers in place. */
static bool engine_quiet(const br_ssl_engine_context *eng) {
  if (br_ssl_engine_current_state(eng) == BR_SSL_CLOSED) return true;
  bool in_empty = eng->ixa == 0 && eng->ixb == 0 && eng->ixc == RECORD_HEADER_BYTES;
  bool out_empty = eng->oxa == eng->oxc && eng->oxa < eng->oxb;
  return in_empty && out_empty;
}

static void bufs_attach(gw_tls_conn_t *c, gw__tls_bufs_t *b) {
  br_ssl_engine_context *eng = &c->sc.eng;
  assert(c->bufs == NULL);
  assert(eng->ibuf == NULL); /* idle: no buffer at all */
  c->bufs = b;
  eng->ibuf = b->in;
  eng->obuf = b->out;
}

static gw__tls_bufs_t *bufs_detach(gw_tls_conn_t *c) {
  gw__tls_bufs_t *b = c->bufs;
  assert(b != NULL);
  c->bufs = NULL;
  c->sc.eng.ibuf = NULL;
  c->sc.eng.obuf = NULL;
  return b;
}

/* Start of a call: the connection's engine gets buffers, its own or the
 * spare. A call never runs inside another (each returns before the server
 * makes the next), so the spare is always there. */
static void bufs_lend(gw_tls_filter_t *f, gw_tls_conn_t *c) {
  if (c->bufs != NULL) return;
  assert(f->spare != NULL);
  bufs_attach(c, f->spare);
  f->spare = NULL;
}

/* End of a call (life steps 2 and 3 above). Returns 0, or RT_E_LIMIT when
 * the connection must keep its buffers and none is left to replace the
 * spare: it has then given the spare back and is failed. */
static int bufs_settle(gw_tls_filter_t *f, gw_tls_conn_t *c) {
  bool lent = f->spare == NULL; /* c has the spare */
  assert(c->bufs != NULL);
  if (c->failed || engine_quiet(&c->sc.eng)) {
    gw__tls_bufs_t *b = bufs_detach(c);
    if (lent) f->spare = b;
    else rt_pool_put(&f->bufs, b);
    return 0;
  }
  if (!lent) return 0;
  f->spare = rt_pool_get(&f->bufs); /* counted and logged by the pool when empty */
  if (f->spare != NULL) return 0;
  atomic_fetch_add_explicit(&f->tls->stats.bufs_exhausted, 1, memory_order_relaxed);
  c->failed = true; /* its partial record goes with the buffers */
  f->spare = bufs_detach(c);
  return RT_E_LIMIT;
}

/* The end of every call: buffers settled, a failure remembered so that
 * the engine is never run again on buffers that may not be its own. */
static int call_end(gw_tls_conn_t *c, int rc) {
  if (rc < 0) c->failed = true;
  int src = bufs_settle(c->filter, c);
  return rc < 0 ? rc : src;
}

/* ------------------------------------------------------------------------ */
/* Engine pumping                                                           */
/* ------------------------------------------------------------------------ */

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

/* Runs the engine over `len` bytes of ciphertext (wire/tls's pump). */
static int engine_input(gw_tls_conn_t *c, const char *data, size_t len, http_buf_t *plain,
                        http_buf_t *wire) {
  bool sendapp_seen = false;
  int rc = wire_tls_engine_input(&c->sc.eng, data, len, plain, wire, &sendapp_seen);
  if (sendapp_seen && !c->handshake_done) handshake_finished(c);
  return rc == WIRE_TLS_CLOSED ? engine_closed(c) : rc;
}

static int tls_input(void *state, const char *data, size_t len, http_buf_t *plain,
                     http_buf_t *wire) {
  gw_tls_conn_t *c = state;
  gw_tls_filter_t *f = c->filter;
  if (c->failed) return GW_E_TLS;
  f->current = c;
  size_t plain_before = plain->len;
  bool handshaking = !c->handshake_done;
  bufs_lend(f, c);
  int rc = call_end(c, engine_input(c, data, len, plain, wire));
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
  int rc = wire_tls_engine_push(&s->conn->sc.eng, data, len, s->wire);
  if (rc == WIRE_TLS_CLOSED) return engine_closed(s->conn);
  return rc == WIRE_TLS_E_ENGINE ? GW_E_TLS : rc; /* no handshake yet: nothing may be sent */
}

/* Pushes plaintext through the engine and drains every record it makes. */
static int engine_output(gw_tls_conn_t *c, const char *data, size_t len, http_buf_t *wire) {
  sink_ctx_t s = {.conn = c, .wire = wire};
  int rc = gw_inject_push(&c->inject, data, len, engine_sink, &s);
  if (rc < 0) return rc;
  /* Send the partly filled record now rather than waiting for more. */
  return wire_tls_engine_flush(&c->sc.eng, wire);
}

static int tls_output(void *state, const char *data, size_t len, http_buf_t *wire) {
  gw_tls_conn_t *c = state;
  if (c->failed) return GW_E_TLS;
  bufs_lend(c->filter, c);
  return call_end(c, engine_output(c, data, len, wire));
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
  bufs_lend(f, c);
  int rc = gw__tls_engine_init(f->tls, c) < 0 ? GW_E_TLS : 0;
  if (call_end(c, rc) < 0) {
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
  /* Between calls a connection holds buffers only mid-record: its own. */
  if (c->bufs != NULL) rt_pool_put(&f->bufs, bufs_detach(c));
  /* The engine holds the session keys. */
  explicit_bzero(&c->sc, sizeof c->sc);
  rt_pool_put(&f->conns, c);
}

/* ------------------------------------------------------------------------ */
/* The filter                                                               */
/* ------------------------------------------------------------------------ */

static void filter_free(gw_tls_filter_t *f) {
  if (f->spare != NULL) rt_pool_put(&f->bufs, f->spare);
  f->spare = NULL;
  if (f->bufs.mem != NULL) rt_pool_deinit(&f->bufs);
  if (f->conns.mem != NULL) rt_pool_deinit(&f->conns);
  free(f->bindings);
  free(f);
}

int gw_tls_filter_create(gw_tls_filter_t **out, gw_tls_t *tls, rt_loop_t *loop,
                         gw_connlimit_t *connlimit, uint32_t conns_max, uint32_t records_max) {
  assert(conns_max > 0);
  assert(records_max <= conns_max); /* more could never be held */
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
  /* The spare is one of the pool's. */
  if (rc == 0)
    rc = rt_pool_init(&f->bufs, "tls_record_buffers", sizeof(gw__tls_bufs_t), records_max + 1);
  if (rc == 0) f->spare = rt_pool_get(&f->bufs);
  f->http = (http_filter_t){
      .open = tls_open, .input = tls_input, .output = tls_output, .free = tls_free, .ctx = f};
  uint32_t period = tls->handshake_timeout_ms / 4;
  if (period > SWEEP_MS_MAX) period = SWEEP_MS_MAX;
  if (period == 0) period = 1;
  rt_timer_init(&f->sweep, sweep, f);
  /* The sweep is what ends stalled handshakes: no sweep, no filter. */
  if (rc == 0) rc = rt_timer_start(loop, &f->sweep, period, period);
  if (rc < 0) {
    filter_free(f);
    return rc;
  }
  *out = f;
  return 0;
}

void gw_tls_filter_stop(gw_tls_filter_t *f) { rt_timer_stop(f->loop, &f->sweep); }

void gw_tls_filter_destroy(gw_tls_filter_t *f) {
  if (f == NULL) return;
  filter_free(f);
}

const http_filter_t *gw_tls_filter_http(gw_tls_filter_t *f) { return &f->http; }
