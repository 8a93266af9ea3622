/*
 * rmq_bench.c - RabbitMQ under bench_bus.h's measurement, with the same
 * promise as ours: a durable classic queue, persistent messages
 * (delivery_mode 2), publisher confirms (RabbitMQ confirms a persistent
 * message on a durable queue once it is written to disk) with at most
 * BENCH_BUS_WINDOW unconfirmed, a consumer with prefetch BENCH_BUS_WINDOW
 * and a manual ack per message. librabbitmq is synchronous, so each side
 * has its own thread and connection.
 *
 * usage: rmq_bench HOST PORT
 */
#include <pthread.h>
#include <sys/time.h>
#include <unistd.h>

#include <amqp.h>
#include <amqp_tcp_socket.h>

#include "bench_bus.h"

#define CHANNEL 1

typedef struct side {
  bench_t *b;
  const char *host;
  int port;
  char queue[64];
  int rc;
} side_t;

static int rpc_ok(amqp_connection_state_t c, const char *what) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(c);
  if (r.reply_type == AMQP_RESPONSE_NORMAL) return 0;
  fprintf(stderr, "rmq_bench: %s failed (reply type %d)\n", what, (int)r.reply_type);
  return -1;
}

static amqp_connection_state_t rmq_connect(const side_t *s) {
  amqp_connection_state_t c = amqp_new_connection();
  amqp_socket_t *sock = amqp_tcp_socket_new(c);
  if (sock == NULL || amqp_socket_open(sock, s->host, s->port) != AMQP_STATUS_OK) {
    fprintf(stderr, "rmq_bench: cannot connect to %s:%d\n", s->host, s->port);
    return NULL;
  }
  amqp_rpc_reply_t r = amqp_login(c, "/", 0, 131072, 0, AMQP_SASL_METHOD_PLAIN, "guest", "guest");
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    fprintf(stderr, "rmq_bench: login failed\n");
    return NULL;
  }
  amqp_channel_open(c, CHANNEL);
  return rpc_ok(c, "channel.open") == 0 ? c : NULL;
}

static void rmq_close(amqp_connection_state_t c) {
  amqp_channel_close(c, CHANNEL, AMQP_REPLY_SUCCESS);
  amqp_connection_close(c, AMQP_REPLY_SUCCESS);
  amqp_destroy_connection(c);
}

/* A durable classic queue, declared explicitly as classic. */
static int declare_queue(amqp_connection_state_t c, const char *queue) {
  amqp_table_entry_t e = {.key = amqp_cstring_bytes("x-queue-type")};
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_cstring_bytes("classic");
  amqp_table_t args = {.num_entries = 1, .entries = &e};
  amqp_queue_declare(c, CHANNEL, amqp_cstring_bytes(queue), 0, 1, 0, 0, args);
  return rpc_ok(c, "queue.declare");
}

/* ------------------------------------------------------------------------ */
/* Publisher                                                                */
/* ------------------------------------------------------------------------ */

/* Outstanding delivery tags and their publish times, a ring of `window`. */
typedef struct pending {
  uint64_t *t_pub;
  uint64_t lowest;      /* lowest unconfirmed tag */
  uint64_t next_tag;    /* tag of the next publish */
  uint8_t *acked;
  uint32_t window;
} pending_t;

static void confirm_upto(bench_t *b, pending_t *p, uint64_t tag, bool multiple) {
  if (tag < p->lowest || tag >= p->next_tag) return;
  if (multiple) {
    for (uint64_t t = p->lowest; t <= tag; t++) p->acked[t % p->window] = 1;
  } else {
    p->acked[tag % p->window] = 1;
  }
  /* Bounded by the window: each turn retires one tag. */
  while (p->lowest < p->next_tag && p->acked[p->lowest % p->window]) {
    p->acked[p->lowest % p->window] = 0;
    bench_confirmed(b, p->t_pub[p->lowest % p->window]);
    p->lowest++;
  }
}

/* Reads one frame (waiting up to timeout_us) and handles a basic.ack. */
static int read_confirm(amqp_connection_state_t c, bench_t *b, pending_t *p, long timeout_us) {
  amqp_frame_t f;
  struct timeval tv = {.tv_sec = timeout_us / 1000000, .tv_usec = timeout_us % 1000000};
  int rc = amqp_simple_wait_frame_noblock(c, &f, &tv);
  if (rc == AMQP_STATUS_TIMEOUT) return 0;
  if (rc != AMQP_STATUS_OK) return -1;
  if (f.frame_type != AMQP_FRAME_METHOD) return 0;
  if (f.payload.method.id == AMQP_BASIC_ACK_METHOD) {
    const amqp_basic_ack_t *a = f.payload.method.decoded;
    confirm_upto(b, p, a->delivery_tag, a->multiple);
  } else if (f.payload.method.id == AMQP_BASIC_NACK_METHOD) {
    fprintf(stderr, "rmq_bench: publish nacked\n");
    return -1;
  }
  return 0;
}

static void *pub_main(void *arg) {
  side_t *s = arg;
  bench_t *b = s->b;
  amqp_connection_state_t c = rmq_connect(s);
  if (c == NULL) {
    s->rc = -1;
    atomic_store(&b->publish_done, true);
    return NULL;
  }
  amqp_confirm_select(c, CHANNEL);
  pending_t p = {.window = b->cfg.window, .lowest = 1, .next_tag = 1};
  p.t_pub = calloc(p.window, sizeof *p.t_pub);
  p.acked = calloc(p.window, 1);
  uint8_t *body = calloc(1, b->cfg.size);
  amqp_basic_properties_t props = {._flags = AMQP_BASIC_DELIVERY_MODE_FLAG,
                                   .delivery_mode = AMQP_DELIVERY_PERSISTENT};
  int rc = rpc_ok(c, "confirm.select");
  while (rc == 0 && (bench_publishing(b) || p.lowest < p.next_tag)) {
    while (bench_publishing(b) && p.next_tag - p.lowest < p.window) {
      uint64_t seq = atomic_load(&b->published), now = bench_now_ns();
      bench_payload(b, body, seq, now);
      amqp_bytes_t msg = {.len = b->cfg.size, .bytes = body};
      if (amqp_basic_publish(c, CHANNEL, amqp_empty_bytes, amqp_cstring_bytes(s->queue), 0, 0,
                             &props, msg) != AMQP_STATUS_OK) {
        rc = -1;
        break;
      }
      p.t_pub[p.next_tag % p.window] = now;
      p.next_tag++;
      atomic_fetch_add(&b->published, 1);
    }
    if (rc == 0) rc = read_confirm(c, b, &p, 100000);
  }
  s->rc = rc;
  atomic_store(&b->publish_done, true);
  rmq_close(c);
  free(p.t_pub);
  free(p.acked);
  free(body);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Consumer                                                                 */
/* ------------------------------------------------------------------------ */

static void *sub_main(void *arg) {
  side_t *s = arg;
  bench_t *b = s->b;
  amqp_connection_state_t c = rmq_connect(s);
  if (c == NULL) {
    s->rc = -1;
    return NULL;
  }
  amqp_basic_qos(c, CHANNEL, 0, (uint16_t)b->cfg.window, 0);
  s->rc = rpc_ok(c, "basic.qos");
  amqp_basic_consume(c, CHANNEL, amqp_cstring_bytes(s->queue), amqp_empty_bytes, 0, 0, 0,
                     amqp_empty_table);
  if (s->rc == 0) s->rc = rpc_ok(c, "basic.consume");
  uint64_t done_since = 0;
  while (s->rc == 0 && !bench_consumer_done(b, &done_since, 30)) {
    amqp_maybe_release_buffers(c);
    amqp_envelope_t env;
    struct timeval tv = {.tv_sec = 0, .tv_usec = 100000};
    amqp_rpc_reply_t r = amqp_consume_message(c, &env, &tv, 0);
    if (r.reply_type != AMQP_RESPONSE_NORMAL) {
      if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
        continue;
      s->rc = -1;
      break;
    }
    bench_delivered(b, env.message.body.bytes, env.message.body.len);
    amqp_basic_ack(c, CHANNEL, env.delivery_tag, 0);
    amqp_destroy_envelope(&env);
  }
  rmq_close(c);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: rmq_bench HOST PORT\n");
    return 2;
  }
  static bench_t b;
  if (bench_init(&b) < 0) return 2;
  side_t pub = {.b = &b, .host = argv[1], .port = atoi(argv[2])};
  snprintf(pub.queue, sizeof pub.queue, "bench-%d", (int)getpid());
  side_t sub = pub;
  amqp_connection_state_t admin = rmq_connect(&pub);
  if (admin == NULL || declare_queue(admin, pub.queue) < 0) return 1;
  pthread_t st, pt;
  pthread_create(&st, NULL, sub_main, &sub);
  struct timespec settle = {.tv_nsec = 200 * 1000000L};
  nanosleep(&settle, NULL);
  bench_start(&b);
  pthread_create(&pt, NULL, pub_main, &pub);
  pthread_join(pt, NULL);
  pthread_join(st, NULL);
  amqp_queue_delete(admin, CHANNEL, amqp_cstring_bytes(pub.queue), 0, 0);
  rmq_close(admin);
  if (pub.rc < 0 || sub.rc < 0) return 1;
  bench_report(&b, "rabbitmq", "confirm after persisting; durable classic queue; manual ack");
  bench_free(&b);
  return 0;
}
