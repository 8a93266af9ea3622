/*
 * bus_bench.c - our bus under bench_bus.h's measurement: one publisher with
 * confirms (PUB_ACK = fsynced; at most BENCH_BUS_WINDOW unconfirmed) and one
 * consumer (max in flight BENCH_BUS_WINDOW, ACK per message), each on its
 * own loop thread with its own connection to busd.
 *
 * usage: bus_bench HOST PORT
 *
 * With TLS_CA, TLS_CERT and TLS_KEY set, both connections speak mutual TLS
 * to busd (wire/tls.h), as the platform's services do.
 */
#include <pthread.h>
#include <unistd.h>

#include "bench_bus.h"
#include "bus.h"
#include "tls.h"

typedef struct side {
  bench_t *b;
  const char *host;
  uint16_t port;
  rt_loop_t *loop;
  bus_client_t *client;
  rt_timer_t timer;
  char topic[64];
  uint8_t *payload;
  uint64_t done_since_ns;
  int rc;
} side_t;

/* ------------------------------------------------------------------------ */
/* Publisher                                                                */
/* ------------------------------------------------------------------------ */

static void pub_fill(side_t *s) {
  bench_t *b = s->b;
  /* Bounded by the window: bus_publish says FULL when it is used up. */
  while (bench_publishing(b)) {
    uint64_t seq = atomic_load_explicit(&b->published, memory_order_relaxed);
    uint64_t now = bench_now_ns();
    bench_payload(b, s->payload, seq, now);
    bus_pub_t p;
    memset(&p, 0, sizeof p);
    p.topic = s->topic;
    bus_uuid_v7(p.id);
    p.payload = s->payload;
    p.payload_len = b->cfg.size;
    if (bus_publish(s->client, &p, (void *)(uintptr_t)now) != 0) return;
    atomic_fetch_add_explicit(&b->published, 1, memory_order_relaxed);
  }
}

static void on_confirm(void *arg, const uint8_t id[BUS_ID_BYTES], int err, void *ctx) {
  side_t *s = arg;
  if (err == 0) bench_confirmed(s->b, (uint64_t)(uintptr_t)ctx);
  pub_fill(s);
}

static void on_pub_state(void *arg, bool up) {
  if (up) pub_fill(arg);
}

static void pub_tick(rt_timer_t *t) {
  side_t *s = t->ctx;
  bench_t *b = s->b;
  if (bench_publishing(b)) return;
  bus_client_stats_t st;
  bus_client_stats(s->client, &st);
  if (st.unconfirmed == 0) {
    atomic_store(&b->publish_done, true);
    rt_loop_stop(s->loop);
  }
}

/* ------------------------------------------------------------------------ */
/* Consumer                                                                 */
/* ------------------------------------------------------------------------ */

static void on_deliver(void *arg, bus_client_t *c, const bus_delivery_t *d) {
  side_t *s = arg;
  bench_delivered(s->b, d->payload.ptr, d->payload.len);
  bus_ack(c, d->sub, d->partition, d->offset);
}

static void sub_tick(rt_timer_t *t) {
  side_t *s = t->ctx;
  if (bench_consumer_done(s->b, &s->done_since_ns, 30)) rt_loop_stop(s->loop);
}

/* ------------------------------------------------------------------------ */
/* Threads                                                                  */
/* ------------------------------------------------------------------------ */

static wire_tls_creds_t *tls_creds; /* TLS_CA, TLS_CERT, TLS_KEY; NULL: plain */

static void *side_main(void *arg, bool publisher) {
  side_t *s = arg;
  bench_t *b = s->b;
  s->rc = rt_loop_create(&s->loop, NULL);
  if (s->rc < 0) return NULL;
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = s->host;
  cfg.port = s->port;
  cfg.name = publisher ? "bench-publisher" : "bench-consumer";
  cfg.pending_max = b->cfg.window;
  if (publisher) {
    cfg.on_confirm = on_confirm;
    cfg.confirm_arg = s;
    cfg.on_state = on_pub_state;
    cfg.state_arg = s;
  }
  /* With TLS_CA: mutual TLS to busd, as the services speak it. */
  wire_tls_filter_t *tls = NULL;
  if (tls_creds != NULL) {
    s->rc = wire_tls_client_create(&tls, tls_creds, "busd", 1);
    if (s->rc < 0) return NULL;
    cfg.filter = wire_tls_filter_http(tls);
  }
  s->rc = bus_client_create(&s->client, s->loop, &cfg);
  if (s->rc == 0 && !publisher)
    s->rc = bus_subscribe(s->client, s->topic, "bench", b->cfg.window, on_deliver, s);
  if (s->rc >= 0) s->rc = bus_client_start(s->client);
  if (s->rc < 0) return NULL;
  rt_timer_init(&s->timer, publisher ? pub_tick : sub_tick, s);
  s->rc = rt_timer_start(s->loop, &s->timer, 5, 5);
  if (s->rc == 0) rt_loop_run(s->loop);
  rt_timer_stop(s->loop, &s->timer);
  bus_client_destroy(s->client);
  rt_loop_destroy(s->loop);
  wire_tls_filter_destroy(tls); /* the client gave its state back when destroyed */
  return NULL;
}

static void *pub_main(void *arg) { return side_main(arg, true); }
static void *sub_main(void *arg) { return side_main(arg, false); }

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: bus_bench HOST PORT\n");
    return 2;
  }
  static bench_t b;
  if (bench_init(&b) < 0) return 2;
  rt_log_init("bus_bench", RT_LOG_WARN, NULL, 0);
  const char *ca = getenv("TLS_CA");
  if (ca != NULL && ca[0] != '\0' &&
      wire_tls_creds_load(&tls_creds, ca, getenv("TLS_CERT"), getenv("TLS_KEY")) < 0)
    return 2;
  side_t pub = {.b = &b, .host = argv[1], .port = (uint16_t)atoi(argv[2])};
  side_t sub = pub;
  snprintf(pub.topic, sizeof pub.topic, "bench-%d", (int)getpid());
  memcpy(sub.topic, pub.topic, sizeof pub.topic);
  pub.payload = calloc(1, b.cfg.size);
  /* The consumer joins first, so that nothing waits to be read back. */
  pthread_t st, pt;
  pthread_create(&st, NULL, sub_main, &sub);
  struct timespec settle = {.tv_nsec = 200 * 1000000L};
  nanosleep(&settle, NULL);
  bench_start(&b);
  pthread_create(&pt, NULL, pub_main, &pub);
  pthread_join(pt, NULL);
  pthread_join(st, NULL);
  if (pub.rc < 0 || sub.rc < 0) {
    fprintf(stderr, "bus_bench: %s\n", bus_strerror(pub.rc < 0 ? pub.rc : sub.rc));
    return 1;
  }
  bench_report(&b, "ours", "PUB_ACK after fdatasync; ACK per message");
  free(pub.payload);
  bench_free(&b);
  wire_tls_creds_free(tls_creds);
  return 0;
}
