/*
 * test_bus_ring.c - a partition's records in its fixed ring (log.c): a
 * ring so small that records wrap around it every few appends and
 * writes go in two pieces, and that a burst fills with records not yet
 * durable.
 *
 * busd runs with BUSD_CACHE_BYTES=0 and BUSD_FRAME_BYTES_MAX=4096, so its
 * ring holds two of the largest records (about 8 KiB), and one partition.
 * A live consumer is subscribed before a burst of events of every size
 * from 1 byte to 3000 is published at once. Asserts: the burst is
 * refused in part for a full ring (BUS_E_OVERLOADED, counted) and sent
 * again by the client until every event is confirmed; the live consumer
 * and, after a restart, a new group reading the log from disk each get
 * every event with its exact payload; no record fails its checksum.
 *
 * usage: test_bus_ring BUSD
 */
#include "harness.h"
#include "t.h"

#define N 600
#define PAYLOAD_MAX 3000

static busd_proc_t busd;
static rt_loop_t *loop;
static uint64_t salt;
static uint32_t confirmed, failed;

typedef struct reader {
  uint32_t seen[N];
  uint32_t unique;
  uint32_t wrong;
} reader_t;

static uint32_t payload_len(uint32_t i) { return 1 + (i * 977u) % PAYLOAD_MAX; }

static void payload_fill(uint32_t i, uint8_t *out) {
  for (uint32_t j = 0; j < payload_len(i); j++) out[j] = (uint8_t)(i * 31u + j);
}

static void event_id(uint32_t i, uint8_t id[16]) {
  memcpy(id, &salt, 8);
  memset(id + 8, 0, 4);
  memcpy(id + 12, &i, 4);
}

static void on_confirm(void *arg, const uint8_t id[16], int err, void *ctx) {
  if (err == 0) {
    confirmed++;
  } else {
    failed++;
  }
}

static void on_deliver(void *arg, bus_client_t *c, const bus_delivery_t *d) {
  reader_t *r = arg;
  uint32_t i;
  memcpy(&i, d->id + 12, 4);
  uint8_t want_id[16];
  static uint8_t want[PAYLOAD_MAX];
  bool ok = i < N;
  if (ok) {
    event_id(i, want_id);
    payload_fill(i, want);
    ok = memcmp(want_id, d->id, 16) == 0 && d->payload.len == payload_len(i) &&
         memcmp(d->payload.ptr, want, d->payload.len) == 0;
  }
  if (!ok) {
    r->wrong++;
  } else if (r->seen[i]++ == 0) {
    r->unique++;
  }
  bus_ack(c, d->sub, d->partition, d->offset);
}

static bus_client_t *client(const char *name) {
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = busd.port;
  cfg.name = name;
  cfg.frame_bytes_max = 4096;
  cfg.reconnect_min_ms = 20;
  cfg.reconnect_max_ms = 200;
  cfg.on_confirm = on_confirm;
  bus_client_t *c = NULL;
  if (bus_client_create(&c, loop, &cfg) < 0 || bus_client_start(c) < 0) return NULL;
  return c;
}

static bool is_connected(void *arg) { return bus_client_connected(arg); }
static bool all_confirmed(void *arg) { return confirmed + failed == N; }
static bool all_read(void *arg) { return ((reader_t *)arg)->unique == N; }

static reader_t live, cold;

static void test_burst_through_a_small_ring(void) {
  bus_client_t *sub = client("ring-live");
  T_REQUIRE(sub != NULL && run_until(loop, is_connected, sub, 5000));
  T_REQUIRE(bus_subscribe(sub, "ring", "live", 64, on_deliver, &live) == 0);
  run_for(loop, 100); /* the group exists before the first record */
  bus_client_t *pub = client("ring-publisher");
  T_REQUIRE(pub != NULL && run_until(loop, is_connected, pub, 5000));
  static uint8_t payload[PAYLOAD_MAX];
  int accepted = 0;
  for (uint32_t i = 0; i < N; i++) {
    bus_pub_t p;
    memset(&p, 0, sizeof p);
    p.topic = "ring";
    event_id(i, p.id);
    payload_fill(i, payload);
    p.payload = payload;
    p.payload_len = payload_len(i);
    accepted += bus_publish(pub, &p, NULL) == 0;
  }
  T_CHECK_EQ_INT(accepted, N);
  T_CHECK(run_until(loop, all_confirmed, NULL, 60000));
  T_CHECK_EQ_INT(confirmed, N);
  T_CHECK_EQ_INT(failed, 0);
  bus_client_stats_t st;
  bus_client_stats(pub, &st);
  printf("published %u: refused for now %llu, resent %llu; busd refused %.0f\n", N,
         (unsigned long long)st.refused, (unsigned long long)st.resent,
         busd_metric(&busd, "busd_pub_refused_total"));
  /* A burst of ~900 KiB into a ring of ~8 KiB cannot all be taken. */
  T_CHECK(st.refused > 0);
  T_CHECK(busd_metric(&busd, "busd_pub_refused_total") > 0);
  T_CHECK(busd_metric(&busd, "busd_ring_full_total") > 0);
  T_CHECK(run_until(loop, all_read, &live, 30000));
  T_CHECK_EQ_INT(live.unique, N);
  T_CHECK_EQ_INT(live.wrong, 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_corrupt_records_total"), 0);
  bus_client_destroy(pub);
  bus_client_destroy(sub);
  run_for(loop, 50);
}

/* After a restart nothing is in memory: a new group reads all of it back
 * from the segments the two-piece writes made. */
static void test_read_back_from_disk(void) {
  T_REQUIRE(busd_stop(&busd, SIGTERM) == 0);
  T_REQUIRE(busd_start(&busd, true) == 0);
  bus_client_t *sub = client("ring-cold");
  T_REQUIRE(sub != NULL && run_until(loop, is_connected, sub, 5000));
  T_REQUIRE(bus_subscribe(sub, "ring", "cold", 64, on_deliver, &cold) == 0);
  T_CHECK(run_until(loop, all_read, &cold, 30000));
  T_CHECK_EQ_INT(cold.unique, N);
  T_CHECK_EQ_INT(cold.wrong, 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_corrupt_records_total"), 0);
  T_CHECK(busd_metric(&busd, "busd_cache_misses_total") > 0);
  bus_client_destroy(sub);
  run_for(loop, 50);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_bus_ring BUSD\n");
    return 2;
  }
  uint8_t fresh[16];
  bus_uuid_v7(fresh);
  memcpy(&salt, fresh + 8, 8);
  rt_log_init("test_bus_ring", RT_LOG_ERROR, NULL, 0);
  if (busd_init(&busd, argv[1]) < 0 || rt_loop_create(&loop, NULL) < 0) return 1;
  busd.env[0] = "BUSD_PARTITIONS=1";
  busd.env[1] = "BUSD_CACHE_BYTES=0";
  busd.env[2] = "BUSD_FRAME_BYTES_MAX=4096";
  if (busd_start(&busd, true) < 0) {
    fprintf(stderr, "busd did not start\n");
    busd_cleanup(&busd);
    return 1;
  }
  T_RUN(test_burst_through_a_small_ring);
  T_RUN(test_read_back_from_disk);
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  busd_cleanup(&busd);
  rt_loop_destroy(loop);
  return t_done();
}
