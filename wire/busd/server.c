/*
 * server.c - busd's connections: accept, frames in, frames out.
 *
 * A connection is an actor with a multishot recv into the loop's provided
 * buffers. Bytes go through the streaming decoder (length checked first)
 * and the strict reader; each frame is handled at once on the loop thread.
 * Output frames (PUB_ACK, DELIVER, PONG, ERR) are appended to `out`; sends
 * start at the end of the event (busd_conns_flush), so everything one event
 * produced for a connection leaves in one send, and while a send is in
 * flight the next frames gather in the other buffer.
 *
 * A peer that breaks the protocol gets one ERR frame with the reason, then
 * the write side is shut and input discarded for a moment (so the ERR is
 * read, not lost to a reset), then the connection is closed. Closing is
 * never done from inside a write: a connection whose output overflows is
 * marked and closed at the next flush, so delivery loops never see a
 * member disappear under them.
 *
 * With TLS (TLS_CA), each connection also holds the TLS filter's state
 * (wire/tls.h, server side: the client must show a certificate of the
 * platform CA). Received bytes are decrypted into `tls_plain` before the
 * decoder sees them; at send time the frames gathered in `out` are sealed
 * into records in `tls_wire`, together with what the handshake has to
 * say, and those go to `sending`. A client the filter refuses gets the
 * engine's alert, if any, and is closed: it never said a frame.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "busd.h"

#define LINGER_MS 1000

static void conn_close(busd_conn_t *c);
static void conn_send(busd_conn_t *c);
static void conn_linger(busd_conn_t *c);
static void conn_on_bytes(busd_conn_t *c, const uint8_t *data, size_t len);

/* ------------------------------------------------------------------------ */
/* Output                                                                   */
/* ------------------------------------------------------------------------ */

bool busd_conn_writable(const busd_conn_t *c) {
  return c->state == BUSD_CONN_OPEN && !c->overflow &&
         c->out.len + c->sending.len < BUSD_CONN_OUT_HIGH_WATER;
}

static void flush_queue(busd_conn_t *c) {
  if (c->flush_queued) return;
  c->flush_queued = true;
  c->flush_next = c->b->flush_head;
  c->b->flush_head = c;
}

bool busd_conn_waiter_done(busd_conn_t *c) {
  assert(c->waiters > 0);
  c->waiters--;
  if (c->state == BUSD_CONN_CLOSING) {
    if (c->waiters == 0) flush_queue(c); /* the flush finishes closing it */
    return false;
  }
  return c->state == BUSD_CONN_OPEN;
}

void busd_conn_write(busd_conn_t *c, const bus_frame_t *f) {
  if (c->state == BUSD_CONN_CLOSING || c->overflow) return;
  int rc = bus_frame_encode(&c->out, f, UINT32_MAX);
  if (rc < 0) {
    /* A peer that does not read: drop it at the next flush. */
    RT_WARN("connection output full, closing", RT_LF_STR("client", c->name),
            RT_LF_INT("queued_bytes", (int64_t)(c->out.len + c->sending.len)),
            RT_LF_STR("error", rt_strerror(rc)));
    c->overflow = true;
  }
  flush_queue(c);
}

void busd_conns_flush(busd_t *b) {
  /* Bounded: each connection is on the list at most once. */
  while (b->flush_head != NULL) {
    busd_conn_t *c = b->flush_head;
    b->flush_head = c->flush_next;
    c->flush_next = NULL;
    c->flush_queued = false;
    if (c->overflow || c->state == BUSD_CONN_CLOSING) {
      conn_close(c);
    } else {
      conn_send(c);
    }
  }
}

/* ------------------------------------------------------------------------ */
/* TLS                                                                      */
/* ------------------------------------------------------------------------ */

static bool has_output(const busd_conn_t *c) { return c->out.len > 0 || c->tls_wire.len > 0; }

static void tls_failed(busd_conn_t *c, int rc) {
  RT_INFO("TLS refused or failed, closing", RT_LF_STR("client", c->name),
          RT_LF_STR("error", rt_strerror(rc)));
  c->b->stats.tls_failed++;
  busd_group_conn_gone(c->b, c);
  /* The engine's alert, when it made one, goes out before the close. */
  c->state = BUSD_CONN_FLUSHING;
  if (c->tls_wire.len > 0) flush_queue(c);
  else conn_linger(c);
}

/* Decrypts what one recv brought and decodes its frames. */
static void conn_on_records(busd_conn_t *c, const uint8_t *data, size_t len) {
  const http_filter_t *f = wire_tls_filter_http(c->b->tls);
  http_buf_reset(&c->tls_plain);
  int rc = f->input(c->tls, (const char *)data, len, &c->tls_plain, &c->tls_wire);
  if (c->tls_wire.len > 0) flush_queue(c); /* handshake replies */
  if (rc < 0) {
    tls_failed(c, rc);
    return;
  }
  if (c->tls_plain.len > 0)
    conn_on_bytes(c, (const uint8_t *)c->tls_plain.data, c->tls_plain.len);
}

static void conn_linger(busd_conn_t *c) {
  shutdown(c->fd, SHUT_WR);
  c->state = BUSD_CONN_LINGER;
  c->linger_until_ms = busd_now_ms(c->b) + LINGER_MS;
  if (c->eof) conn_close(c);
}

static void conn_sent(rt_op_t *op, int res, uint32_t flags) {
  busd_conn_t *c = op->ctx;
  busd_t *b = c->b;
  c->sending.len = 0;
  if (res < 0) {
    c->eof = true;
    conn_close(c);
  } else if (has_output(c)) {
    conn_send(c);
  } else if (c->state == BUSD_CONN_FLUSHING) {
    conn_linger(c);
  } else if (c->state == BUSD_CONN_CLOSING) {
    conn_close(c); /* retries the free now that the send is done */
  }
  if (busd_conn_writable(c)) busd_groups_conn_writable(c);
  busd_after_event(b);
}

static void conn_send(busd_conn_t *c) {
  if (c->send_op.in_flight || !has_output(c) || c->state == BUSD_CONN_CLOSING) return;
  const http_filter_t *filter = c->tls != NULL ? wire_tls_filter_http(c->b->tls) : NULL;
  int rc = bus_buf_take_output(&c->out, &c->sending, filter, c->tls, &c->tls_wire);
  if (rc < 0) {
    RT_WARN("connection output not sealed, closing", RT_LF_STR("client", c->name),
            RT_LF_STR("error", rt_strerror(rc)));
    c->eof = true;
    conn_close(c);
    return;
  }
  if (c->sending.len == 0) return;
  rt_send(c->b->loop, &c->send_op, c->fd, c->sending.data, (uint32_t)c->sending.len, conn_sent,
          c);
}

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

static void err_frame(bus_frame_t *f, int code, const char *msg, const uint8_t *id) {
  memset(f, 0, sizeof *f);
  f->type = BUS_ERR;
  f->code = code;
  f->message = (bus_bytes_t){.ptr = (const uint8_t *)msg, .len = (uint32_t)strlen(msg)};
  if (id != NULL) {
    memcpy(f->id, id, BUS_ID_BYTES);
    f->has_id = true;
  }
}

/* The peer broke the protocol: one ERR, then close after it is read. */
static void conn_fail(busd_conn_t *c, int code, const char *detail) {
  if (c->state != BUSD_CONN_OPEN) return;
  c->b->stats.proto_errors++;
  RT_WARN("protocol error, closing", RT_LF_STR("client", c->name),
          RT_LF_STR("error", bus_strerror(code)), RT_LF_STR("detail", detail));
  bus_frame_t f;
  err_frame(&f, code, detail[0] ? detail : bus_strerror(code), NULL);
  busd_conn_write(c, &f);
  busd_group_conn_gone(c->b, c);
  c->state = BUSD_CONN_FLUSHING;
}

/* One PUB refused, the connection kept: the client re-sends later. */
static void conn_refuse(busd_conn_t *c, int code, const uint8_t *id) {
  bus_frame_t f;
  err_frame(&f, code, bus_strerror(code), id);
  busd_conn_write(c, &f);
  c->b->stats.pub_refused++;
}

/* ------------------------------------------------------------------------ */
/* Frames                                                                   */
/* ------------------------------------------------------------------------ */

static void on_hello(busd_conn_t *c, const bus_frame_t *f) {
  if (c->hello) {
    conn_fail(c, BUS_E_STATE, "HELLO twice");
    return;
  }
  if (f->version != BUS_PROTOCOL_VERSION) {
    conn_fail(c, BUS_E_VERSION, "this busd speaks protocol version 1");
    return;
  }
  c->hello = true;
  memcpy(c->name, f->name.ptr, f->name.len);
  c->name[f->name.len] = '\0';
  bus_frame_t r;
  memset(&r, 0, sizeof r);
  r.type = BUS_HELLO;
  r.version = BUS_PROTOCOL_VERSION;
  r.name = (bus_bytes_t){.ptr = (const uint8_t *)"busd", .len = 4};
  busd_conn_write(c, &r);
}

static void on_pub(busd_conn_t *c, const bus_frame_t *f) {
  busd_t *b = c->b;
  /* The DELIVER (or dead letter) of this event must fit the same limit. */
  size_t body = (size_t)f->key.len + f->headers.len + f->payload.len + f->topic.len;
  if (body + BUS_DELIVER_OVERHEAD_BYTES > b->cfg.frame_bytes_max) {
    conn_refuse(c, BUS_E_FRAME_TOO_LARGE, f->id);
    return;
  }
  if (b->draining) {
    conn_refuse(c, BUS_E_SHUTDOWN, f->id);
    return;
  }
  busd_topic_t *t = busd_topic_get(b, f->topic.ptr, f->topic.len);
  if (t == NULL) {
    conn_refuse(c, BUS_E_LIMIT, f->id);
    return;
  }
  if (b->pending_bytes + busd_rec_size(f->key.len, f->headers.len, f->payload.len) >
      b->cfg.pending_bytes_max) {
    conn_refuse(c, BUS_E_OVERLOADED, f->id);
    return;
  }
  busd_part_t *part = &t->parts[busd_topic_partition(t, f->key, f->id)];
  busd_waiter_t w = {.conn = c};
  int64_t rc = busd_part_append(part, f->id, f->key, f->headers, f->payload, &w);
  if (rc < 0) {
    conn_refuse(c, rc == -ENOMEM ? BUS_E_OVERLOADED : (int)rc, f->id);
    return;
  }
  c->waiters++;
  b->stats.published++;
}

static void on_sub(busd_conn_t *c, const bus_frame_t *f) {
  busd_t *b = c->b;
  if (b->draining) {
    conn_fail(c, BUS_E_SHUTDOWN, "shutting down");
    return;
  }
  busd_topic_t *t = busd_topic_get(b, f->topic.ptr, f->topic.len);
  busd_group_t *g = t == NULL ? NULL : busd_group_get(b, t, f->group.ptr, f->group.len);
  if (g == NULL) {
    conn_fail(c, BUS_E_LIMIT, "too many topics or groups");
    return;
  }
  int rc = busd_group_join(b, c, g, f->max_in_flight);
  if (rc < 0) conn_fail(c, BUS_E_LIMIT, "too many subscriptions");
}

/* ACK and NACK for a group the broker does not know are ignored, as are
 * stale offsets: acknowledging twice is harmless. */
static void on_ack(busd_conn_t *c, const bus_frame_t *f) {
  busd_topic_t *t = busd_topic_find(c->b, f->topic.ptr, f->topic.len);
  if (t == NULL) return;
  for (busd_group_t *g = t->groups; g != NULL; g = g->next) {
    if (g->name_len != f->group.len || memcmp(g->name, f->group.ptr, f->group.len) != 0) continue;
    if (f->type == BUS_ACK) {
      busd_group_ack(g, f->partition, f->offset);
    } else {
      busd_group_nack(g, f->partition, f->offset, f->message);
    }
    return;
  }
}

static void on_ping(busd_conn_t *c, const bus_frame_t *f) {
  bus_frame_t r;
  memset(&r, 0, sizeof r);
  r.type = BUS_PONG;
  r.seq = f->seq;
  busd_conn_write(c, &r);
}

static void on_frame(busd_conn_t *c, const bus_frame_t *f) {
  if (!c->hello && f->type != BUS_HELLO) {
    conn_fail(c, BUS_E_STATE, "HELLO first");
    return;
  }
  switch (f->type) {
  case BUS_HELLO: on_hello(c, f); break;
  case BUS_PUB: on_pub(c, f); break;
  case BUS_SUB: on_sub(c, f); break;
  case BUS_ACK:
  case BUS_NACK: on_ack(c, f); break;
  case BUS_PING: on_ping(c, f); break;
  case BUS_PONG: break;
  case BUS_ERR:
    RT_WARN("client sent an error, closing", RT_LF_STR("client", c->name),
            RT_LF_INT("code", f->code));
    conn_close(c);
    break;
  default: conn_fail(c, BUS_E_STATE, "frame only busd sends"); break;
  }
}

/* Decodes and handles every frame in `data`. */
static void conn_on_bytes(busd_conn_t *c, const uint8_t *data, size_t len) {
  c->last_rx_ms = busd_now_ms(c->b);
  size_t used = 0;
  /* Bounded: each turn consumes bytes or returns one frame of >= 5 bytes. */
  for (size_t turn = 0; turn <= len && c->state == BUSD_CONN_OPEN; turn++) {
    size_t n = 0;
    bus_bytes_t body;
    int rc = bus_decoder_feed(&c->dec, data + used, len - used, &n, &body);
    used += n;
    if (rc < 0) {
      conn_fail(c, rc, "");
      return;
    }
    if (body.ptr == NULL) return;
    bus_frame_t f;
    bus_limits_t lim = c->dec.limits;
    rc = bus_frame_decode(body.ptr, body.len, &lim, &f);
    if (rc < 0) {
      conn_fail(c, rc, "");
      return;
    }
    on_frame(c, &f);
  }
}

static void conn_recv(rt_op_t *op, int res, uint32_t flags) {
  busd_conn_t *c = op->ctx;
  busd_t *b = c->b;
  if (res > 0) {
    if (c->state == BUSD_CONN_OPEN && c->tls != NULL) {
      conn_on_records(c, rt_recv_buffer(b->loop, flags), (size_t)res);
    } else if (c->state == BUSD_CONN_OPEN) {
      conn_on_bytes(c, rt_recv_buffer(b->loop, flags), (size_t)res);
    }
    rt_recv_buffer_release(b->loop, flags);
  } else if (res != -ENOBUFS) {
    c->eof = true;
  }
  if (!rt_op_more(flags)) {
    if (!c->eof && c->state != BUSD_CONN_CLOSING) {
      rt_recv_multishot(b->loop, &c->recv_op, c->fd, conn_recv, c);
    } else if (c->state != BUSD_CONN_FLUSHING || c->eof) {
      conn_close(c);
    }
  }
  busd_after_event(b);
}

/* ------------------------------------------------------------------------ */
/* Connection lifetime                                                      */
/* ------------------------------------------------------------------------ */

static void conn_free_bufs(busd_conn_t *c) {
  if (c->tls != NULL) wire_tls_filter_http(c->b->tls)->free(c->tls);
  c->tls = NULL;
  http_buf_deinit(&c->tls_plain);
  http_buf_deinit(&c->tls_wire);
  bus_decoder_deinit(&c->dec);
  bus_buf_deinit(&c->out);
  bus_buf_deinit(&c->sending);
}

static void conn_closed(rt_op_t *op, int res, uint32_t flags) {
  busd_conn_t *c = op->ctx;
  busd_t *b = c->b;
  assert(c->waiters == 0);
  assert(!c->flush_queued);
  if (c->prev != NULL) {
    c->prev->next = c->next;
  } else {
    b->live = c->next;
  }
  if (c->next != NULL) c->next->prev = c->prev;
  conn_free_bufs(c);
  b->conns_count--;
  rt_pool_put(&b->conns, c);
  busd_after_event(b);
}

static void conn_cancel_done(rt_op_t *op, int res, uint32_t flags) {
  busd_conn_t *c = op->ctx;
  conn_close(c);
}

/* Leaves the groups at once, then closes the fd once no op and no batch
 * waiter refers to the connection. Called again as those finish;
 * idempotent. */
static void conn_close(busd_conn_t *c) {
  busd_t *b = c->b;
  if (c->state != BUSD_CONN_CLOSING) {
    c->state = BUSD_CONN_CLOSING;
    busd_group_conn_gone(b, c);
  }
  if (c->recv_op.in_flight) {
    if (!c->cancel_op.in_flight)
      rt_cancel(b->loop, &c->cancel_op, &c->recv_op, conn_cancel_done, c);
    return;
  }
  if (c->send_op.in_flight || c->cancel_op.in_flight || c->close_op.in_flight) return;
  if (c->flush_queued) return; /* the flush will call us again */
  if (c->waiters > 0) return;   /* batches still point at it */
  rt_close(b->loop, &c->close_op, c->fd, conn_closed, c);
}

static int conn_actor(rt_actor_t *self, rt_msg_t *msg) {
  return RT_E_PROTO; /* no messages are defined for connections */
}

static void conn_actor_stopped(rt_actor_t *self, int reason) { conn_close(self->state); }

static void conn_start(busd_t *b, int fd) {
  busd_conn_t *c = rt_pool_get(&b->conns);
  if (c == NULL) {
    b->stats.conns_rejected++;
    close(fd);
    return;
  }
  if (b->tls != NULL) {
    const http_filter_t *f = wire_tls_filter_http(b->tls);
    c->tls = f->open(f->ctx, fd);
    if (c->tls == NULL) {
      b->stats.conns_rejected++;
      close(fd);
      rt_pool_put(&b->conns, c);
      return;
    }
    /* Records of a full output buffer, with their overhead. */
    size_t wire_max = (size_t)b->cfg.out_bytes_max + b->cfg.out_bytes_max / 64 + 4096;
    http_buf_init(&c->tls_plain, 0, 0);
    http_buf_init(&c->tls_wire, 0, wire_max);
  }
  (void)rt_tcp_nodelay(fd); /* best effort: only latency depends on it */
  c->b = b;
  c->fd = fd;
  c->state = BUSD_CONN_OPEN;
  c->last_rx_ms = busd_now_ms(b);
  snprintf(c->name, sizeof c->name, "fd%d", fd);
  bus_limits_t lim;
  bus_limits_defaults(&lim);
  lim.frame_bytes_max = b->cfg.frame_bytes_max;
  bus_decoder_init(&c->dec, &lim);
  bus_buf_init(&c->out, b->cfg.out_bytes_max);
  bus_buf_init(&c->sending, b->cfg.out_bytes_max);
  rt_actor_init(&c->actor, b->loop, "busd_conn", conn_actor, c);
  c->actor.on_stop = conn_actor_stopped;
  c->next = b->live;
  if (b->live != NULL) b->live->prev = c;
  b->live = c;
  b->conns_count++;
  b->stats.conns_accepted++;
  rt_recv_multishot(b->loop, &c->recv_op, fd, conn_recv, c);
}

/* ------------------------------------------------------------------------ */
/* Listening                                                                */
/* ------------------------------------------------------------------------ */

static void on_accept(rt_op_t *op, int res, uint32_t flags) {
  busd_t *b = op->ctx;
  if (res >= 0) {
    if (b->draining) {
      close(res);
    } else {
      conn_start(b, res);
    }
  } else if (res != -ECANCELED) {
    RT_WARN("accept failed", RT_LF_STR("error", rt_strerror(res)));
  }
  if (rt_op_more(flags)) return;
  if (b->accepting && !b->draining) {
    rt_accept_multishot(b->loop, &b->accept_op, b->listen_fd, on_accept, b);
  } else if (b->listen_fd >= 0) {
    rt_close(b->loop, &b->listen_close_op, b->listen_fd, NULL, NULL);
    b->listen_fd = -1;
  }
  busd_after_event(b);
}

int busd_server_start(busd_t *b) {
  int rc = rt_pool_init(&b->conns, "busd_conns", sizeof(busd_conn_t), b->cfg.conns_max);
  if (rc == 0)
    rc = rt_pool_init(&b->members, "busd_members", sizeof(busd_member_t), b->cfg.subs_max);
  if (rc < 0) return rc;
  int fd = rt_tcp_listen(b->cfg.host, (uint16_t)b->cfg.port, 1024, false);
  if (fd < 0) return fd;
  b->listen_fd = fd;
  b->accepting = true;
  return rt_accept_multishot(b->loop, &b->accept_op, fd, on_accept, b);
}

void busd_server_stop_listening(busd_t *b) {
  b->accepting = false;
  if (b->accept_op.in_flight) {
    if (!b->accept_cancel_op.in_flight)
      rt_cancel(b->loop, &b->accept_cancel_op, &b->accept_op, NULL, NULL);
  } else if (b->listen_fd >= 0) {
    rt_close(b->loop, &b->listen_close_op, b->listen_fd, NULL, NULL);
    b->listen_fd = -1;
  }
}

void busd_server_close_all(busd_t *b, bool now) {
  busd_conn_t *next;
  for (busd_conn_t *c = b->live; c != NULL; c = next) {
    next = c->next;
    if (now) {
      conn_close(c);
      continue;
    }
    if (c->state != BUSD_CONN_OPEN) continue;
    /* Gone once their output is out, lingering so that it is read. */
    busd_group_conn_gone(b, c);
    c->state = BUSD_CONN_FLUSHING;
    if (!c->send_op.in_flight && !has_output(c)) {
      conn_linger(c);
    } else {
      flush_queue(c);
    }
  }
}

bool busd_server_idle(const busd_t *b) {
  return b->live == NULL && b->listen_fd < 0 && !b->accept_op.in_flight &&
         !b->listen_close_op.in_flight;
}

void busd_server_tick(busd_t *b, uint64_t now_ms) {
  busd_conn_t *next;
  for (busd_conn_t *c = b->live; c != NULL; c = next) {
    next = c->next;
    if (c->state == BUSD_CONN_LINGER && now_ms >= c->linger_until_ms) {
      conn_close(c);
    } else if (c->state == BUSD_CONN_OPEN && now_ms > c->last_rx_ms + b->cfg.idle_timeout_ms) {
      RT_INFO("closing idle connection", RT_LF_STR("client", c->name));
      conn_close(c);
    }
  }
}

void busd_server_free(busd_t *b) {
  /* Connections still here belong to a loop stopped at its deadline: the
   * ring is gone, so release them directly. */
  while (b->live != NULL) {
    busd_conn_t *c = b->live;
    b->live = c->next;
    close(c->fd);
    conn_free_bufs(c);
    rt_pool_put(&b->conns, c);
  }
  if (b->listen_fd >= 0) close(b->listen_fd);
  if (b->conns.mem != NULL) rt_pool_deinit(&b->conns);
  if (b->members.mem != NULL) rt_pool_deinit(&b->members);
}
