/*
 * bus_client.c - the bus client on the runtime: connect, HELLO, publish
 * with confirms, subscribe, ack and nack, reconnect.
 *
 * Publishing keeps every PUB until its PUB_ACK: the encoded frame sits in a
 * pending table (fixed at creation: pending_max entries, each with room for
 * an event's frame inline; a frame larger than events are is allocated),
 * found by event id when its PUB_ACK arrives (PUB_ACKs of different
 * partitions come in any order) and threaded on a list in publish order.
 * A publish of an event allocates nothing: its frame is encoded in the
 * client's own scratch buffers, made at creation at their largest, and
 * copied to its entry. When the connection is lost every pending PUB
 * counts as unsent; after the next HELLO they are sent again in their
 * original order, then the subscriptions. So a
 * publish is confirmed exactly once (callback), and the event reaches the
 * log at least once: a PUB whose PUB_ACK was lost is stored twice, which
 * consumers absorb (idempotent inbox).
 *
 * A PUB that busd refuses for now (ERR with its id: overloaded, storage,
 * shutting down) stays pending and is sent again after a short back-off;
 * one it can never take (too large, bad name, too many topics) is
 * confirmed with that error.
 *
 * Connection life: IDLE -> CONNECTING (connect, timeout) -> HELLO_WAIT
 * (HELLO sent, timeout) -> UP (pings when idle; three intervals without a
 * byte means dead) -> CLOSING (cancel, wait for ops, close) -> IDLE, then a
 * reconnect after a back-off that doubles from reconnect_min_ms to
 * reconnect_max_ms and resets on a HELLO answer.
 *
 * With a filter (TLS, wire/tls.h) the connection's filter state is made
 * when the connect completes and freed when the connection starts
 * closing. Its first flight goes out with the HELLO, which the filter
 * holds until the handshake is done; received bytes are decrypted before
 * the frame decoder sees them, and the frames gathered in `out` are
 * sealed into records when a send starts. The handshake counts against
 * the connect timeout, like the HELLO.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "bus.h"
#include "http.h"

#define SUBS_MAX 64 /* the event service: every topic and its dead letters */
/* A PUB of an event, its headers included, is about 1 KiB. */
#define PEND_INLINE_BYTES 2048
/* The most a headers map packs to: every header at its longest. */
#define HEADERS_PACKED_BYTES_MAX \
  (5u + BUS_HEADERS_MAX * (5u + BUS_HEADER_NAME_BYTES_MAX + 5u + BUS_HEADER_VALUE_BYTES_MAX))
#define RETRY_REFUSED_MS 100
#define NONE UINT32_MAX

typedef enum conn_state {
  ST_IDLE = 0,   /* not connected; a reconnect may be scheduled */
  ST_CONNECTING,
  ST_HELLO_WAIT,
  ST_UP,
  ST_CLOSING,
} conn_state_t;

typedef struct pend {
  uint8_t id[BUS_ID_BYTES];
  void *ctx;
  uint8_t *frame;          /* inline_buf or allocated */
  uint32_t frame_len;
  uint32_t prev;           /* publish-order list */
  uint32_t next;
  bool refused;            /* busd said "later": re-send on the retry timer */
  uint8_t inline_buf[PEND_INLINE_BYTES];
} pend_t;

typedef struct sub {
  char topic[BUS_NAME_BYTES_MAX + 1];
  char group[BUS_NAME_BYTES_MAX + 1];
  uint32_t topic_len;
  uint32_t group_len;
  uint32_t max_in_flight;
  bus_deliver_fn fn;
  void *arg;
} sub_t;

struct bus_client {
  rt_loop_t *loop;
  bus_client_config_t cfg;
  char host[64];
  char name[BUS_CLIENT_NAME_BYTES_MAX + 1];
  struct sockaddr_storage addr;
  socklen_t addr_len;
  int fd;
  conn_state_t state;
  bool started;
  bool destroyed;
  bool eof;
  rt_op_t connect_op;
  rt_op_t recv_op;
  rt_op_t send_op;
  rt_op_t cancel_op;
  rt_op_t close_op;
  rt_timer_t timer;        /* reconnect back-off, connect/HELLO deadline */
  /* Armed from start to destroy, connected or not: pings while up, and
   * does whatever a full timer heap kept the other two from scheduling
   * (a reconnect, a retry). Being always armed, its re-arm cannot fail. */
  rt_timer_t ping_timer;
  rt_timer_t retry_timer;  /* refused PUBs */
  bool retry_missed;       /* a refusal found no timer: the ping tick retries */
  uint32_t backoff_ms;
  uint64_t last_rx_ns;
  uint64_t ping_seq;
  bus_decoder_t dec;
  bus_buf_t out;
  bus_buf_t sending;
  void *tls;               /* the filter's state while connected, with a filter */
  http_buf_t tls_plain;    /* what one recv decrypted to */
  http_buf_t tls_wire;     /* records waiting to go into `sending` */
  /* Pending publishes. */
  pend_t *pend;
  uint32_t *hash;          /* id -> pend index, linear probing */
  uint32_t hash_mask;
  uint32_t free_head;      /* entries given back, linked through next */
  uint32_t pend_fresh;     /* entries [pend_fresh, pending_max) never used */
  bus_buf_t hdr_scratch;   /* a publish's headers, packed */
  bus_buf_t pub_scratch;   /* a publish's frame, encoded */
  uint32_t order_head;     /* oldest pending */
  uint32_t order_tail;
  uint32_t pending_count;
  size_t pending_bytes;
  sub_t subs[SUBS_MAX];
  uint32_t subs_count;
  bus_client_stats_t stats;
};

static void conn_drop(bus_client_t *c);
static void conn_send(bus_client_t *c);
static void client_maybe_free(bus_client_t *c);

/* ------------------------------------------------------------------------ */
/* Pending table                                                            */
/* ------------------------------------------------------------------------ */

static uint32_t id_hash(const uint8_t id[BUS_ID_BYTES]) {
  uint64_t a, b;
  memcpy(&a, id, 8);
  memcpy(&b, id + 8, 8);
  uint64_t h = a ^ (b * 0x9e3779b97f4a7c15u);
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdu;
  h ^= h >> 33;
  return (uint32_t)h;
}

static void hash_insert(bus_client_t *c, uint32_t index) {
  uint32_t i = id_hash(c->pend[index].id) & c->hash_mask;
  while (c->hash[i] != NONE) i = (i + 1) & c->hash_mask;
  c->hash[i] = index;
}

/* The hash slot of the oldest pending entry with this id, or NONE. The
 * table is at least twice the entries, so every probe ends at a hole. */
static uint32_t hash_find(const bus_client_t *c, const uint8_t id[BUS_ID_BYTES]) {
  uint32_t i = id_hash(id) & c->hash_mask;
  for (uint32_t n = 0; n <= c->hash_mask && c->hash[i] != NONE; n++) {
    if (memcmp(c->pend[c->hash[i]].id, id, BUS_ID_BYTES) == 0) return i;
    i = (i + 1) & c->hash_mask;
  }
  return NONE;
}

/* Removes slot i, shifting later entries of the probe run back so that
 * lookups never need tombstones. */
static void hash_remove(bus_client_t *c, uint32_t i) {
  uint32_t mask = c->hash_mask;
  c->hash[i] = NONE;
  uint32_t j = i;
  for (uint32_t n = 0; n <= mask; n++) {
    j = (j + 1) & mask;
    if (c->hash[j] == NONE) return;
    uint32_t home = id_hash(c->pend[c->hash[j]].id) & mask;
    /* Move j back to i unless its home lies cyclically in (i, j]. */
    bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
    if (!stays) {
      c->hash[i] = c->hash[j];
      c->hash[j] = NONE;
      i = j;
    }
  }
}

static void order_unlink(bus_client_t *c, uint32_t index) {
  pend_t *p = &c->pend[index];
  if (p->prev != NONE) {
    c->pend[p->prev].next = p->next;
  } else {
    c->order_head = p->next;
  }
  if (p->next != NONE) {
    c->pend[p->next].prev = p->prev;
  } else {
    c->order_tail = p->prev;
  }
}

static void order_append(bus_client_t *c, uint32_t index) {
  pend_t *p = &c->pend[index];
  p->prev = c->order_tail;
  p->next = NONE;
  if (c->order_tail != NONE) {
    c->pend[c->order_tail].next = index;
  } else {
    c->order_head = index;
  }
  c->order_tail = index;
}

static void pend_release(bus_client_t *c, uint32_t index) {
  pend_t *p = &c->pend[index];
  order_unlink(c, index);
  c->pending_bytes -= p->frame_len;
  c->pending_count--;
  if (p->frame != p->inline_buf) free(p->frame);
  p->frame = NULL;
  p->next = c->free_head;
  c->free_head = index;
}

/* Removes the pending publish with this id (the oldest, when re-sent
 * twice) and confirms it. */
static void pend_confirm(bus_client_t *c, const uint8_t id[BUS_ID_BYTES], int err) {
  uint32_t slot = hash_find(c, id);
  if (slot == NONE) return; /* a duplicate PUB_ACK after a re-send */
  uint32_t index = c->hash[slot];
  void *ctx = c->pend[index].ctx;
  hash_remove(c, slot);
  pend_release(c, index);
  if (err == 0) c->stats.confirmed++;
  if (c->cfg.on_confirm != NULL) c->cfg.on_confirm(c->cfg.confirm_arg, id, err, ctx);
}

/* The pending table, and the scratch buffers a publish is encoded in,
 * made now at their largest. Entries are first touched when first used. */
static int pend_init(bus_client_t *c) {
  uint32_t n = c->cfg.pending_max;
  uint32_t size = 16;
  while (size < 2 * n) size *= 2;
  c->pend = calloc(n, sizeof *c->pend);
  c->hash = malloc(size * sizeof *c->hash);
  if (c->pend == NULL || c->hash == NULL) return -ENOMEM;
  memset(c->hash, 0xff, size * sizeof *c->hash);
  c->hash_mask = size - 1;
  c->free_head = NONE;
  c->pend_fresh = 0;
  c->order_head = c->order_tail = NONE;
  size_t frame_max = (size_t)c->cfg.frame_bytes_max + 4;
  bus_buf_init(&c->hdr_scratch, HEADERS_PACKED_BYTES_MAX);
  bus_buf_init(&c->pub_scratch, frame_max);
  int rc = bus_buf_reserve(&c->hdr_scratch, HEADERS_PACKED_BYTES_MAX);
  if (rc == 0) rc = bus_buf_reserve(&c->pub_scratch, frame_max);
  return rc;
}

/* The entry a publish would take: one given back, else one never used;
 * NONE when all are pending. */
static uint32_t pend_next(const bus_client_t *c) {
  if (c->free_head != NONE) return c->free_head;
  return c->pend_fresh < c->cfg.pending_max ? c->pend_fresh : NONE;
}

/* Takes the entry pend_next() said. */
static void pend_take(bus_client_t *c, uint32_t index) {
  if (index == c->free_head) {
    c->free_head = c->pend[index].next;
  } else {
    assert(index == c->pend_fresh);
    c->pend_fresh++;
  }
}

static void pend_deinit(bus_client_t *c) {
  free(c->pend);
  free(c->hash);
  c->pend = NULL;
  c->hash = NULL;
  bus_buf_deinit(&c->hdr_scratch);
  bus_buf_deinit(&c->pub_scratch);
}

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

static void sent_cb(rt_op_t *op, int res, uint32_t flags) {
  bus_client_t *c = op->ctx;
  c->sending.len = 0;
  if (c->state == ST_CLOSING || c->destroyed) {
    conn_drop(c);
    return;
  }
  if (res < 0) {
    conn_drop(c);
    return;
  }
  conn_send(c);
}

static void conn_send(bus_client_t *c) {
  if (c->send_op.in_flight || (c->out.len == 0 && c->tls_wire.len == 0)) return;
  if (c->state != ST_UP && c->state != ST_HELLO_WAIT) return;
  const http_filter_t *filter = c->tls != NULL ? c->cfg.filter : NULL;
  int rc = bus_buf_take_output(&c->out, &c->sending, filter, c->tls, &c->tls_wire);
  if (rc < 0) {
    RT_WARN("bus output not sealed", RT_LF_STR("error", rt_strerror(rc)));
    conn_drop(c);
    return;
  }
  if (c->sending.len == 0) return; /* held by the filter until its handshake is done */
  rt_send(c->loop, &c->send_op, c->fd, c->sending.data, (uint32_t)c->sending.len, sent_cb, c);
}

/* Queues a frame for the current connection. A connection whose output
 * cannot take it is dropped (and will be reconnected). */
static int write_frame(bus_client_t *c, const bus_frame_t *f) {
  int rc = bus_frame_encode(&c->out, f, c->cfg.frame_bytes_max);
  if (rc == BUS_E_LIMIT) conn_drop(c);
  return rc;
}

static int write_raw(bus_client_t *c, const uint8_t *frame, uint32_t len) {
  int rc = bus_buf_append(&c->out, frame, len);
  if (rc == BUS_E_LIMIT) conn_drop(c);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Frames in                                                                */
/* ------------------------------------------------------------------------ */

static void send_subscriptions(bus_client_t *c) {
  for (uint32_t i = 0; i < c->subs_count && c->state == ST_UP; i++) {
    const sub_t *s = &c->subs[i];
    bus_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = BUS_SUB;
    f.topic = (bus_bytes_t){.ptr = (const uint8_t *)s->topic, .len = s->topic_len};
    f.group = (bus_bytes_t){.ptr = (const uint8_t *)s->group, .len = s->group_len};
    f.max_in_flight = s->max_in_flight;
    write_frame(c, &f);
  }
}

/* After a HELLO answer: every pending publish again, oldest first. */
static void resend_pending(bus_client_t *c) {
  uint32_t i = c->order_head;
  for (uint32_t n = 0; n < c->pending_count && i != NONE && c->state == ST_UP; n++) {
    pend_t *p = &c->pend[i];
    p->refused = false;
    if (write_raw(c, p->frame, p->frame_len) == 0) c->stats.resent++;
    i = p->next;
  }
}

static void on_hello(bus_client_t *c, const bus_frame_t *f) {
  if (c->state != ST_HELLO_WAIT || f->version != BUS_PROTOCOL_VERSION) {
    conn_drop(c);
    return;
  }
  c->state = ST_UP;
  c->backoff_ms = 0;
  c->stats.connects++;
  rt_timer_stop(c->loop, &c->timer);
  /* Re-armed, so that the first ping is a full interval away. */
  assert(rt_timer_armed(&c->ping_timer));
  if (NEVER(rt_timer_start(c->loop, &c->ping_timer, c->cfg.ping_interval_ms,
                           c->cfg.ping_interval_ms) < 0)) {
    conn_drop(c);
    return;
  }
  RT_INFO("bus connected", RT_LF_STR("host", c->host), RT_LF_INT("port", c->cfg.port),
          RT_LF_INT("unconfirmed", c->pending_count));
  send_subscriptions(c);
  resend_pending(c);
  if (c->cfg.on_state != NULL) c->cfg.on_state(c->cfg.state_arg, true);
}

static void on_deliver(bus_client_t *c, const bus_frame_t *f) {
  for (uint32_t i = 0; i < c->subs_count; i++) {
    const sub_t *s = &c->subs[i];
    if (s->topic_len != f->topic.len || memcmp(s->topic, f->topic.ptr, f->topic.len) != 0) continue;
    if (s->group_len != f->group.len || memcmp(s->group, f->group.ptr, f->group.len) != 0) continue;
    bus_delivery_t d = {
        .sub = i, .topic = f->topic, .group = f->group, .partition = f->partition,
        .offset = f->offset, .attempt = f->attempt, .stored_ms = f->stored_ms,
        .key = f->key, .headers = f->headers, .payload = f->payload,
    };
    memcpy(d.id, f->id, BUS_ID_BYTES);
    c->stats.delivered++;
    s->fn(s->arg, c, &d);
    return;
  }
}

static bool err_retryable(int code) {
  return code == BUS_E_OVERLOADED || code == BUS_E_STORAGE || code == BUS_E_SHUTDOWN;
}

static void on_err(bus_client_t *c, const bus_frame_t *f) {
  if (!f->has_id) {
    RT_WARN("bus error from busd", RT_LF_INT("code", f->code),
            RT_LF_STR("error", bus_strerror(f->code)));
    conn_drop(c);
    return;
  }
  c->stats.refused++;
  if (!err_retryable(f->code)) {
    pend_confirm(c, f->id, f->code < 0 ? f->code : BUS_E_MALFORMED);
    return;
  }
  uint32_t slot = hash_find(c, f->id);
  if (slot == NONE) return;
  c->pend[c->hash[slot]].refused = true;
  if (rt_timer_armed(&c->retry_timer)) return;
  if (rt_timer_start(c->loop, &c->retry_timer, RETRY_REFUSED_MS, 0) < 0) c->retry_missed = true;
}

static void on_frame(bus_client_t *c, const bus_frame_t *f) {
  switch (f->type) {
  case BUS_HELLO: on_hello(c, f); break;
  case BUS_PUB_ACK: pend_confirm(c, f->id, 0); break;
  case BUS_DELIVER: on_deliver(c, f); break;
  case BUS_ERR: on_err(c, f); break;
  case BUS_PING: {
    bus_frame_t r;
    memset(&r, 0, sizeof r);
    r.type = BUS_PONG;
    r.seq = f->seq;
    write_frame(c, &r);
    break;
  }
  case BUS_PONG: break;
  default: conn_drop(c); break; /* busd never sends the others */
  }
}

static void on_bytes(bus_client_t *c, const uint8_t *data, size_t len) {
  c->last_rx_ns = rt_loop_now_ns(c->loop);
  size_t used = 0;
  /* Bounded: each turn consumes bytes or returns one frame of >= 5 bytes. */
  for (size_t turn = 0; turn <= len; turn++) {
    if (c->state != ST_UP && c->state != ST_HELLO_WAIT) return;
    size_t n = 0;
    bus_bytes_t body;
    int rc = bus_decoder_feed(&c->dec, data + used, len - used, &n, &body);
    used += n;
    bus_frame_t f;
    if (rc == 0 && body.ptr != NULL) rc = bus_frame_decode(body.ptr, body.len, &c->dec.limits, &f);
    if (rc < 0) {
      RT_WARN("bad frame from busd", RT_LF_STR("error", bus_strerror(rc)));
      conn_drop(c);
      return;
    }
    if (body.ptr == NULL) return;
    on_frame(c, &f);
  }
}

/* With a filter: decrypts what one recv brought, then decodes its frames.
 * A server the filter refuses (not busd, or not of our CA) drops the
 * connection; the client reconnects with back-off as for any other loss. */
static void on_records(bus_client_t *c, const uint8_t *data, size_t len) {
  if (c->state != ST_UP && c->state != ST_HELLO_WAIT) return;
  http_buf_reset(&c->tls_plain);
  int rc = c->cfg.filter->input(c->tls, (const char *)data, len, &c->tls_plain, &c->tls_wire);
  if (rc < 0) {
    RT_WARN("bus TLS failed (busd not trusted, or a bad record)", RT_LF_STR("host", c->host),
            RT_LF_INT("port", c->cfg.port), RT_LF_STR("error", rt_strerror(rc)));
    conn_drop(c);
    return;
  }
  if (c->tls_plain.len > 0) on_bytes(c, (const uint8_t *)c->tls_plain.data, c->tls_plain.len);
}

static void recv_cb(rt_op_t *op, int res, uint32_t flags) {
  bus_client_t *c = op->ctx;
  if (res > 0) {
    if (!c->destroyed && c->tls != NULL) {
      on_records(c, rt_recv_buffer(c->loop, flags), (size_t)res);
    } else if (!c->destroyed) {
      on_bytes(c, rt_recv_buffer(c->loop, flags), (size_t)res);
    }
    rt_recv_buffer_release(c->loop, flags);
  } else if (res != -ENOBUFS) {
    c->eof = true;
  }
  if (rt_op_more(flags)) {
    conn_send(c);
    return;
  }
  if (!c->eof && (c->state == ST_UP || c->state == ST_HELLO_WAIT) && !c->destroyed) {
    rt_recv_multishot(c->loop, &c->recv_op, c->fd, recv_cb, c);
    conn_send(c);
    return;
  }
  conn_drop(c);
}

/* ------------------------------------------------------------------------ */
/* Connection lifetime                                                      */
/* ------------------------------------------------------------------------ */

static void connect_start(bus_client_t *c);

static void reconnect_later(bus_client_t *c) {
  uint32_t next = c->backoff_ms == 0 ? c->cfg.reconnect_min_ms : c->backoff_ms * 2;
  c->backoff_ms = next > c->cfg.reconnect_max_ms ? c->cfg.reconnect_max_ms : next;
  /* Without a timer the next ping tick reconnects (see ping_cb). */
  if (rt_timer_start(c->loop, &c->timer, c->backoff_ms, 0) < 0)
    RT_WARN("bus reconnect left to the ping tick: timer heap full", RT_LF_INT("port", c->cfg.port));
}

static void closed_cb(rt_op_t *op, int res, uint32_t flags) {
  bus_client_t *c = op->ctx;
  c->fd = -1;
  c->state = ST_IDLE;
  if (c->destroyed) {
    client_maybe_free(c);
    return;
  }
  reconnect_later(c);
}

static void cancel_cb(rt_op_t *op, int res, uint32_t flags) { conn_drop(op->ctx); }

/* The filter's state goes with the connection: no call reaches it once
 * the connection is closing. */
static void tls_end(bus_client_t *c) {
  if (c->tls != NULL) c->cfg.filter->free(c->tls);
  c->tls = NULL;
  http_buf_reset(&c->tls_plain);
  http_buf_reset(&c->tls_wire);
}

/* Leaves the connection (any state): cancel the recv, wait for the ops,
 * close the fd; closed_cb then schedules the reconnect. Idempotent. */
static void conn_drop(bus_client_t *c) {
  if (c->state == ST_IDLE) return;
  if (c->state != ST_CLOSING) {
    bool was_up = c->state == ST_UP;
    c->state = ST_CLOSING;
    rt_timer_stop(c->loop, &c->timer);
    c->out.len = 0;
    tls_end(c);
    if (was_up && !c->destroyed) {
      c->stats.disconnects++;
      RT_WARN("bus connection lost", RT_LF_STR("host", c->host), RT_LF_INT("port", c->cfg.port),
              RT_LF_INT("unconfirmed", c->pending_count));
      if (c->cfg.on_state != NULL && !c->destroyed) c->cfg.on_state(c->cfg.state_arg, false);
    }
  }
  if (c->recv_op.in_flight) {
    if (!c->cancel_op.in_flight) rt_cancel(c->loop, &c->cancel_op, &c->recv_op, cancel_cb, c);
    return;
  }
  if (c->connect_op.in_flight) {
    if (!c->cancel_op.in_flight) rt_cancel(c->loop, &c->cancel_op, &c->connect_op, cancel_cb, c);
    return;
  }
  if (c->send_op.in_flight || c->cancel_op.in_flight || c->close_op.in_flight) return;
  if (c->fd < 0) {
    closed_cb(&c->close_op, 0, 0);
    return;
  }
  rt_close(c->loop, &c->close_op, c->fd, closed_cb, c);
}

/* Connecting to a loopback port nobody listens on can succeed against
 * itself when the kernel picks that same port as the source (TCP
 * simultaneous open); such a "connection" is dropped and retried. */
static bool self_connected(int fd) {
  struct sockaddr_storage a, b;
  socklen_t al = sizeof a, bl = sizeof b;
  if (getsockname(fd, (struct sockaddr *)&a, &al) < 0 || getpeername(fd, (struct sockaddr *)&b, &bl) < 0)
    return false;
  return al == bl && memcmp(&a, &b, al) == 0;
}

/* A connection's filter state, and its first flight (the ClientHello).
 * HELLO, written next, waits in the filter until the handshake is done. */
static int tls_begin(bus_client_t *c) {
  const http_filter_t *f = c->cfg.filter;
  c->tls = f->open(f->ctx, c->fd);
  if (c->tls == NULL) {
    RT_WARN("bus TLS state not available", RT_LF_INT("port", c->cfg.port));
    return -ENOMEM;
  }
  return f->output(c->tls, NULL, 0, &c->tls_wire);
}

static void connected_cb(rt_op_t *op, int res, uint32_t flags) {
  bus_client_t *c = op->ctx;
  if (c->state != ST_CONNECTING || c->destroyed) {
    conn_drop(c);
    return;
  }
  if (res == 0 && self_connected(c->fd)) res = -ECONNREFUSED;
  if (res < 0) {
    RT_DEBUG("bus connect failed", RT_LF_STR("error", rt_strerror(res)));
    conn_drop(c);
    return;
  }
  c->state = ST_HELLO_WAIT;
  c->eof = false;
  c->last_rx_ns = rt_loop_now_ns(c->loop);
  bus_decoder_deinit(&c->dec);
  bus_limits_t lim;
  bus_limits_defaults(&lim);
  lim.frame_bytes_max = c->cfg.frame_bytes_max;
  bus_decoder_init(&c->dec, &lim);
  if (c->cfg.filter != NULL && tls_begin(c) < 0) {
    conn_drop(c);
    return;
  }
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = BUS_HELLO;
  f.version = BUS_PROTOCOL_VERSION;
  f.name = (bus_bytes_t){.ptr = (const uint8_t *)c->name, .len = (uint32_t)strlen(c->name)};
  write_frame(c, &f);
  rt_recv_multishot(c->loop, &c->recv_op, c->fd, recv_cb, c);
  conn_send(c);
}

static void connect_start(bus_client_t *c) {
  if (c->destroyed || c->state != ST_IDLE) return;
  int fd = rt_tcp_socket(c->addr.ss_family);
  if (fd < 0) {
    RT_WARN("bus socket failed", RT_LF_STR("error", rt_strerror(fd)));
    reconnect_later(c);
    return;
  }
  /* A connect without a deadline may not be attempted: the next ping
   * tick tries again. */
  if (rt_timer_start(c->loop, &c->timer, c->cfg.connect_timeout_ms, 0) < 0) {
    close(fd);
    return;
  }
  c->fd = fd;
  c->state = ST_CONNECTING;
  rt_connect(c->loop, &c->connect_op, fd, (const struct sockaddr *)&c->addr, c->addr_len,
             connected_cb, c);
}

/* One timer for the reconnect back-off and the connect/HELLO deadline. */
static void timer_cb(rt_timer_t *t) {
  bus_client_t *c = t->ctx;
  if (c->state == ST_IDLE) {
    connect_start(c);
  } else if (c->state == ST_CONNECTING || c->state == ST_HELLO_WAIT) {
    RT_DEBUG("bus connect timed out", RT_LF_INT("port", c->cfg.port));
    conn_drop(c);
  }
}

static void retry_cb(rt_timer_t *t);

static void ping_cb(rt_timer_t *t) {
  bus_client_t *c = t->ctx;
  if (c->state == ST_IDLE && !rt_timer_armed(&c->timer)) {
    connect_start(c); /* a reconnect no timer could be had for */
    return;
  }
  if (c->state != ST_UP) return;
  if (c->retry_missed) {
    c->retry_missed = false;
    retry_cb(&c->retry_timer);
    if (c->state != ST_UP) return;
  }
  uint64_t idle_ns = rt_loop_now_ns(c->loop) - c->last_rx_ns;
  if (idle_ns > 3ull * c->cfg.ping_interval_ms * 1000000u) {
    RT_WARN("bus silent for three ping intervals: reconnecting", RT_LF_INT("port", c->cfg.port));
    conn_drop(c);
    return;
  }
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = BUS_PING;
  f.seq = ++c->ping_seq;
  if (write_frame(c, &f) == 0) conn_send(c);
}

/* Refused publishes are sent again, oldest first. */
static void retry_cb(rt_timer_t *t) {
  bus_client_t *c = t->ctx;
  if (c->state != ST_UP) return; /* a reconnect re-sends everything anyway */
  uint32_t i = c->order_head;
  for (uint32_t n = 0; n < c->pending_count && i != NONE; n++) {
    pend_t *p = &c->pend[i];
    if (p->refused && write_raw(c, p->frame, p->frame_len) == 0) {
      p->refused = false;
      c->stats.resent++;
    }
    if (c->state != ST_UP) return;
    i = p->next;
  }
  conn_send(c);
}

/* ------------------------------------------------------------------------ */
/* Public API                                                               */
/* ------------------------------------------------------------------------ */

static void config_defaults(bus_client_config_t *cfg) {
  if (cfg->name == NULL) cfg->name = "bus_client";
  if (cfg->frame_bytes_max == 0) cfg->frame_bytes_max = BUS_FRAME_BYTES_MAX_DEFAULT;
  if (cfg->pending_max == 0) cfg->pending_max = 1024;
  if (cfg->pending_bytes_max == 0) cfg->pending_bytes_max = 64u << 20;
  if (cfg->reconnect_min_ms == 0) cfg->reconnect_min_ms = 50;
  if (cfg->reconnect_max_ms < cfg->reconnect_min_ms) cfg->reconnect_max_ms = 2000;
  if (cfg->connect_timeout_ms == 0) cfg->connect_timeout_ms = 2000;
  if (cfg->ping_interval_ms == 0) cfg->ping_interval_ms = 5000;
}

int bus_client_create(bus_client_t **out, rt_loop_t *loop, const bus_client_config_t *config) {
  bus_strerror_init();
  if (config == NULL || config->host == NULL || strlen(config->host) >= 64) return -EINVAL;
  bus_client_t *c = calloc(1, sizeof *c);
  if (c == NULL) return -ENOMEM;
  c->loop = loop;
  c->cfg = *config;
  config_defaults(&c->cfg);
  snprintf(c->host, sizeof c->host, "%s", c->cfg.host);
  snprintf(c->name, sizeof c->name, "%s", c->cfg.name);
  c->cfg.host = c->host;
  c->cfg.name = c->name;
  c->fd = -1;
  int rc = rt_tcp_addr(c->host, c->cfg.port, &c->addr, &c->addr_len);
  if (rc == 0) rc = pend_init(c);
  if (rc < 0) {
    pend_deinit(c);
    free(c);
    return rc;
  }
  /* Output holds a full frame beyond whatever is being re-sent. */
  size_t out_max = (size_t)c->cfg.pending_bytes_max + 4u * c->cfg.frame_bytes_max;
  bus_buf_init(&c->out, out_max);
  /* With TLS, the records of a full output, with their overhead. */
  size_t wire_max = out_max + out_max / 64 + 4096;
  bus_buf_init(&c->sending, c->cfg.filter != NULL ? wire_max : out_max);
  http_buf_init(&c->tls_plain, 0, 0);
  http_buf_init(&c->tls_wire, 0, wire_max);
  rt_timer_init(&c->timer, timer_cb, c);
  rt_timer_init(&c->ping_timer, ping_cb, c);
  rt_timer_init(&c->retry_timer, retry_cb, c);
  *out = c;
  return 0;
}

int bus_client_start(bus_client_t *c) {
  if (c->destroyed) return BUS_E_CLOSED;
  if (c->started) return 0;
  /* The ping tick is armed for the client's whole life (see its field). */
  int rc = rt_timer_start(c->loop, &c->ping_timer, c->cfg.ping_interval_ms,
                          c->cfg.ping_interval_ms);
  if (rc < 0) return rc;
  c->started = true;
  connect_start(c);
  return 0;
}

/* Encodes a PUB in the scratch buffer, then keeps it in the entry: inline
 * when it fits, else in an allocation of its own. */
static int pend_encode(bus_client_t *c, pend_t *p, const bus_frame_t *f) {
  bus_buf_t *b = &c->pub_scratch;
  b->len = 0;
  int rc = bus_frame_encode(b, f, c->cfg.frame_bytes_max);
  if (rc < 0) return rc;
  /* Made to hold the largest frame: encoding never grows it. */
  assert(b->cap == (size_t)c->cfg.frame_bytes_max + 4);
  uint8_t *dst = p->inline_buf;
  if (b->len > PEND_INLINE_BYTES) {
    dst = malloc(b->len);
    if (dst == NULL) return -ENOMEM;
  }
  memcpy(dst, b->data, b->len);
  p->frame = dst;
  p->frame_len = (uint32_t)b->len;
  return 0;
}

/* What can be refused before encoding anything. */
static int pub_check(const bus_pub_t *pub) {
  if (pub->topic == NULL || !bus_name_valid((const uint8_t *)pub->topic, strlen(pub->topic)))
    return BUS_E_NAME;
  if (pub->key_len > 0 && pub->key == NULL) return -EINVAL;
  if (pub->key_len > BUS_KEY_BYTES_MAX) return BUS_E_LIMIT;
  if (pub->payload_len > 0 && pub->payload == NULL) return -EINVAL;
  return 0;
}

int bus_publish(bus_client_t *c, const bus_pub_t *pub, void *ctx) {
  if (c->destroyed) return BUS_E_CLOSED;
  int rc = pub_check(pub);
  if (rc < 0) return rc;
  uint32_t index = pend_next(c);
  if (index == NONE || c->pending_bytes >= c->cfg.pending_bytes_max) return BUS_E_FULL;
  bus_buf_t *hdr = &c->hdr_scratch;
  hdr->len = 0;
  rc = pub->headers_count > 0 ? bus_headers_pack(hdr, pub->headers, pub->headers_count) : 0;
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = BUS_PUB;
  f.topic = (bus_bytes_t){.ptr = (const uint8_t *)pub->topic, .len = (uint32_t)strlen(pub->topic)};
  f.key = (bus_bytes_t){.ptr = pub->key, .len = pub->key_len};
  memcpy(f.id, pub->id, BUS_ID_BYTES);
  f.has_id = true;
  f.headers = (bus_bytes_t){.ptr = hdr->data, .len = (uint32_t)hdr->len};
  f.payload = (bus_bytes_t){.ptr = pub->payload, .len = pub->payload_len};
  if (rc == 0 && f.topic.len + f.key.len + f.headers.len + f.payload.len + BUS_DELIVER_OVERHEAD_BYTES >
                     c->cfg.frame_bytes_max)
    rc = BUS_E_FRAME_TOO_LARGE;
  pend_t *p = &c->pend[index];
  if (rc == 0) rc = pend_encode(c, p, &f);
  if (rc < 0) return rc;
  pend_take(c, index);
  memcpy(p->id, pub->id, BUS_ID_BYTES);
  p->ctx = ctx;
  p->refused = false;
  order_append(c, index);
  hash_insert(c, index);
  c->pending_count++;
  c->pending_bytes += p->frame_len;
  c->stats.published++;
  if (c->state == ST_UP && write_raw(c, p->frame, p->frame_len) == 0) conn_send(c);
  return 0;
}

int bus_subscribe(bus_client_t *c, const char *topic, const char *group, uint32_t max_in_flight,
                  bus_deliver_fn fn, void *arg) {
  if (c->destroyed) return BUS_E_CLOSED;
  size_t tl = topic ? strlen(topic) : 0, gl = group ? strlen(group) : 0;
  if (!bus_name_valid((const uint8_t *)topic, tl) || !bus_name_valid((const uint8_t *)group, gl))
    return BUS_E_NAME;
  if (c->subs_count == SUBS_MAX || fn == NULL || max_in_flight == 0 ||
      max_in_flight > BUS_MAX_IN_FLIGHT_MAX)
    return BUS_E_LIMIT;
  uint32_t i = c->subs_count++;
  sub_t *s = &c->subs[i];
  memcpy(s->topic, topic, tl + 1);
  memcpy(s->group, group, gl + 1);
  s->topic_len = (uint32_t)tl;
  s->group_len = (uint32_t)gl;
  s->max_in_flight = max_in_flight;
  s->fn = fn;
  s->arg = arg;
  if (c->state == ST_UP) {
    bus_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = BUS_SUB;
    f.topic = (bus_bytes_t){.ptr = (const uint8_t *)s->topic, .len = s->topic_len};
    f.group = (bus_bytes_t){.ptr = (const uint8_t *)s->group, .len = s->group_len};
    f.max_in_flight = max_in_flight;
    if (write_frame(c, &f) == 0) conn_send(c);
  }
  return (int)i;
}

static int ack_frame(bus_client_t *c, bus_frame_type_t type, uint32_t sub, uint32_t partition,
                     uint64_t offset, const char *why) {
  if (sub >= c->subs_count || sub >= SUBS_MAX) return -EINVAL;
  if (c->state != ST_UP) return BUS_E_CLOSED;
  const sub_t *s = &c->subs[sub];
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = type;
  f.topic = (bus_bytes_t){.ptr = (const uint8_t *)s->topic, .len = s->topic_len};
  f.group = (bus_bytes_t){.ptr = (const uint8_t *)s->group, .len = s->group_len};
  f.partition = partition;
  f.offset = offset;
  if (why != NULL) {
    size_t n = strlen(why);
    f.message = (bus_bytes_t){.ptr = (const uint8_t *)why,
                              .len = (uint32_t)(n < BUS_NACK_WHY_BYTES_MAX ? n : BUS_NACK_WHY_BYTES_MAX)};
  }
  int rc = write_frame(c, &f);
  if (rc == 0) conn_send(c);
  return rc;
}

int bus_ack(bus_client_t *c, uint32_t sub, uint32_t partition, uint64_t offset) {
  return ack_frame(c, BUS_ACK, sub, partition, offset, NULL);
}

int bus_nack(bus_client_t *c, uint32_t sub, uint32_t partition, uint64_t offset) {
  return ack_frame(c, BUS_NACK, sub, partition, offset, NULL);
}

int bus_nack_why(bus_client_t *c, uint32_t sub, uint32_t partition, uint64_t offset,
                 const char *why) {
  return ack_frame(c, BUS_NACK, sub, partition, offset, why);
}

bool bus_client_connected(const bus_client_t *c) { return c->state == ST_UP; }

void bus_client_stats(const bus_client_t *c, bus_client_stats_t *out) {
  *out = c->stats;
  out->unconfirmed = c->pending_count;
}

static void client_maybe_free(bus_client_t *c) {
  if (!c->destroyed || c->state != ST_IDLE) return;
  if (c->recv_op.in_flight || c->send_op.in_flight || c->connect_op.in_flight ||
      c->cancel_op.in_flight || c->close_op.in_flight)
    return;
  tls_end(c);
  http_buf_deinit(&c->tls_plain);
  http_buf_deinit(&c->tls_wire);
  bus_decoder_deinit(&c->dec);
  bus_buf_deinit(&c->out);
  bus_buf_deinit(&c->sending);
  pend_deinit(c);
  free(c);
}

void bus_client_destroy(bus_client_t *c) {
  if (c == NULL || c->destroyed) return;
  c->destroyed = true;
  rt_timer_stop(c->loop, &c->timer);
  rt_timer_stop(c->loop, &c->ping_timer);
  rt_timer_stop(c->loop, &c->retry_timer);
  /* Bounded by pending_max: each turn confirms (removes) one entry. */
  while (c->order_head != NONE) {
    uint8_t id[BUS_ID_BYTES];
    memcpy(id, c->pend[c->order_head].id, BUS_ID_BYTES);
    pend_confirm(c, id, BUS_E_CLOSED);
  }
  if (c->state == ST_IDLE) {
    client_maybe_free(c);
  } else {
    conn_drop(c);
  }
}
