/*
 * test_bus_crash.c - no acknowledged event is lost when busd is killed.
 *
 * A publisher sends N unique events with confirms (100 unconfirmed at
 * most) while busd is killed with SIGKILL several times and restarted at
 * once; the client reconnects and re-sends what was not confirmed. Then a
 * consumer drains the topic (busd is killed once more half-way through).
 * Asserts: every PUB_ACKed event is delivered (lost = 0), nothing that was
 * never published is delivered (unexpected = 0), busd was really killed
 * and restarted, and a final SIGTERM exits 0. Duplicates are counted and
 * printed; at-least-once allows them.
 *
 * usage: test_bus_crash BUSD [N]
 */
#include "harness.h"
#include "t.h"

#define KILLS_PUBLISHING 4
#define WINDOW 100

typedef struct run {
  busd_proc_t busd;
  rt_loop_t *loop;
  bus_client_t *pub;
  bus_client_t *sub;
  uint32_t n;
  uint32_t next;             /* next index to publish */
  uint32_t confirmed_count;
  uint32_t failed_count;
  uint8_t *confirmed;        /* per index */
  uint32_t *delivered;       /* per index: times delivered */
  uint32_t unique;
  uint64_t deliveries;
  uint64_t unexpected;
  uint32_t kills;
  uint32_t kill_at[KILLS_PUBLISHING + 1];
  rt_timer_t kill_timer;
  uint64_t last_delivery_ns;
} run_t;

/* Event i: id = 8 random bytes + index, payload = "event-<i>" padded. */
static void event_id(uint32_t i, uint64_t salt, uint8_t id[16]) {
  memcpy(id, &salt, 8);
  memset(id + 8, 0, 4);
  memcpy(id + 12, &i, 4);
}

static uint64_t salt;

static void publish_more(run_t *r) {
  while (r->next < r->n) {
    char payload[200];
    memset(payload, '.', sizeof payload);
    int len = snprintf(payload, sizeof payload, "event-%u", r->next);
    payload[len] = '.';
    bus_pub_t p;
    memset(&p, 0, sizeof p);
    p.topic = "crash";
    char key[16];
    snprintf(key, sizeof key, "k%u", r->next % 97);
    p.key = key;
    p.key_len = (uint32_t)strlen(key);
    event_id(r->next, salt, p.id);
    p.payload = payload;
    p.payload_len = sizeof payload;
    int rc = bus_publish(r->pub, &p, (void *)(uintptr_t)r->next);
    if (rc == BUS_E_FULL) return;
    if (rc < 0) {
      fprintf(stderr, "publish failed: %s\n", bus_strerror(rc));
      return;
    }
    r->next++;
  }
}

/* SIGKILL, then a new busd at once (the client finds it when it retries). */
static void kill_and_restart(rt_timer_t *t) {
  run_t *r = t->ctx;
  busd_stop(&r->busd, SIGKILL);
  r->kills++;
  if (busd_start(&r->busd, false) < 0) fprintf(stderr, "cannot restart busd\n");
}

static void on_confirm(void *arg, const uint8_t id[16], int err, void *ctx) {
  run_t *r = arg;
  uint32_t i = (uint32_t)(uintptr_t)ctx;
  if (err != 0) {
    r->failed_count++;
    fprintf(stderr, "confirm of %u failed: %s\n", i, bus_strerror(err));
    return;
  }
  if (!r->confirmed[i]) r->confirmed_count++;
  r->confirmed[i] = 1;
  if (r->kills < KILLS_PUBLISHING && r->confirmed_count == r->kill_at[r->kills] &&
      !rt_timer_armed(&r->kill_timer))
    rt_timer_start(r->loop, &r->kill_timer, 0, 0);
  publish_more(r);
}

static void on_state(void *arg, bool up) {
  if (up) publish_more(arg);
}

static bool all_confirmed(void *arg) {
  run_t *r = arg;
  return r->confirmed_count + r->failed_count == r->n;
}

static void on_deliver(void *arg, bus_client_t *c, const bus_delivery_t *d) {
  run_t *r = arg;
  r->deliveries++;
  r->last_delivery_ns = rt_now_ns();
  uint32_t i;
  memcpy(&i, d->id + 12, 4);
  uint8_t want[16];
  char prefix[32];
  int n = i < r->n ? snprintf(prefix, sizeof prefix, "event-%u.", i) : 0;
  if (i < r->n) event_id(i, salt, want);
  if (i >= r->n || memcmp(want, d->id, 16) != 0 || d->payload.len != 200 ||
      memcmp(d->payload.ptr, prefix, (size_t)n) != 0) {
    r->unexpected++;
  } else if (r->delivered[i]++ == 0) {
    r->unique++;
  }
  bus_ack(c, d->sub, d->partition, d->offset);
  if (r->kills == KILLS_PUBLISHING && r->unique == r->n / 2 && !rt_timer_armed(&r->kill_timer))
    rt_timer_start(r->loop, &r->kill_timer, 0, 0);
}

/* Every confirmed event seen, and quiet for a moment (late duplicates). */
static bool drained(void *arg) {
  run_t *r = arg;
  return r->unique >= r->confirmed_count &&
         rt_now_ns() - r->last_delivery_ns > 300 * 1000000ull;
}

static bus_client_t *client(run_t *r, const char *name) {
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = r->busd.port;
  cfg.name = name;
  cfg.pending_max = WINDOW;
  cfg.reconnect_min_ms = 20;
  cfg.reconnect_max_ms = 200;
  cfg.ping_interval_ms = 1000;
  cfg.on_confirm = on_confirm;
  cfg.confirm_arg = r;
  cfg.on_state = on_state;
  cfg.state_arg = r;
  bus_client_t *c = NULL;
  if (bus_client_create(&c, r->loop, &cfg) < 0) return NULL;
  return c;
}

static run_t run;

static void test_kill9_loses_nothing(void) {
  run_t *r = &run;
  uint64_t t0 = rt_now_ns();
  r->pub = client(r, "crash-publisher");
  T_REQUIRE(r->pub != NULL);
  T_REQUIRE(bus_client_start(r->pub) == 0);
  publish_more(r);
  T_CHECK(run_until(r->loop, all_confirmed, r, 40000));
  bus_client_stats_t st;
  bus_client_stats(r->pub, &st);
  double pub_s = (double)(rt_now_ns() - t0) / 1e9;
  printf("published %u: confirmed %u, failed %u, resent %llu, reconnects %llu, kills %u, %.2f s\n",
         r->n, r->confirmed_count, r->failed_count, (unsigned long long)st.resent,
         (unsigned long long)st.connects, r->kills, pub_s);
  T_CHECK_EQ_INT(r->confirmed_count, r->n);
  T_CHECK_EQ_INT(r->failed_count, 0);
  T_CHECK_EQ_INT(r->kills, KILLS_PUBLISHING);
  T_CHECK(st.connects >= 2); /* it did reconnect */

  r->sub = client(r, "crash-consumer");
  T_REQUIRE(r->sub != NULL);
  T_REQUIRE(bus_subscribe(r->sub, "crash", "drain", 1000, on_deliver, r) == 0);
  T_REQUIRE(bus_client_start(r->sub) == 0);
  r->last_delivery_ns = rt_now_ns();
  T_CHECK(run_until(r->loop, drained, r, 40000));
  uint32_t lost = 0, dup = 0;
  for (uint32_t i = 0; i < r->n; i++) {
    if (r->confirmed[i] && r->delivered[i] == 0) lost++;
    if (r->delivered[i] > 1) dup += r->delivered[i] - 1;
  }
  printf("delivered %llu: unique %u, lost %u, duplicates %u, unexpected %llu, kills %u\n",
         (unsigned long long)r->deliveries, r->unique, lost, dup,
         (unsigned long long)r->unexpected, r->kills);
  T_CHECK_EQ_INT(lost, 0);
  T_CHECK_EQ_INT(r->unexpected, 0);
  T_CHECK_EQ_INT(r->unique, r->n);
  T_CHECK_EQ_INT(r->kills, KILLS_PUBLISHING + 1);
  T_CHECK(r->busd.starts == KILLS_PUBLISHING + 2);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_bus_crash BUSD [N]\n");
    return 2;
  }
  run_t *r = &run;
  r->n = argc > 2 ? (uint32_t)atoi(argv[2]) : 20000;
  uint8_t fresh[16];
  bus_uuid_v7(fresh);
  memcpy(&salt, fresh + 8, 8); /* the random half: ids differ per run */
  r->confirmed = calloc(r->n, 1);
  r->delivered = calloc(r->n, sizeof *r->delivered);
  for (int k = 0; k < KILLS_PUBLISHING; k++) r->kill_at[k] = r->n / (KILLS_PUBLISHING + 1) * (uint32_t)(k + 1);
  rt_log_init("test_bus_crash", RT_LOG_ERROR, NULL, 0);
  if (busd_init(&r->busd, argv[1]) < 0 || rt_loop_create(&r->loop, NULL) < 0) return 1;
  r->busd.env[0] = "BUSD_PARTITIONS=4";
  rt_timer_init(&r->kill_timer, kill_and_restart, r);
  if (busd_start(&r->busd, true) < 0) {
    fprintf(stderr, "busd did not start\n");
    busd_cleanup(&r->busd);
    return 1;
  }
  T_RUN(test_kill9_loses_nothing);
  bus_client_destroy(r->pub);
  bus_client_destroy(r->sub);
  run_for(r->loop, 50);
  T_CHECK_EQ_INT(busd_stop(&r->busd, SIGTERM), 0); /* graceful exit after all that */
  busd_cleanup(&r->busd);
  rt_loop_destroy(r->loop);
  free(r->confirmed);
  free(r->delivered);
  return t_done();
}
