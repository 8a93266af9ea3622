/*
 * test_bus_retention.c - segments go only when every group has passed them
 * and they are older than the retention age.
 *
 * busd with 4 KiB segments and a 500 ms retention: 300 events make many
 * segments. Group "fast" consumes everything; group "slow" exists (it
 * subscribed once) but has done nothing: no segment may be deleted, however
 * old. Once "slow" catches up, old segments are deleted (metric and files),
 * the last segment stays, and a new group starts at the oldest retained
 * record, in order.
 *
 * usage: test_bus_retention BUSD
 */
#include <dirent.h>

#include "harness.h"
#include "t.h"

#define EVENTS 300

static busd_proc_t busd;
static rt_loop_t *loop;
static uint32_t confirmed;

typedef struct consumer {
  uint32_t count;
  uint64_t first_offset;
  uint64_t next_offset;
  uint32_t out_of_order;
} consumer_t;

static void on_confirm(void *arg, const uint8_t id[16], int err, void *ctx) {
  if (err == 0) confirmed++;
}

static void on_deliver(void *arg, bus_client_t *c, const bus_delivery_t *d) {
  consumer_t *k = arg;
  if (k->count == 0) k->first_offset = d->offset;
  if (k->count > 0 && d->offset != k->next_offset) k->out_of_order++;
  k->next_offset = d->offset + 1;
  k->count++;
  bus_ack(c, d->sub, d->partition, d->offset);
}

static bus_client_t *client(void) {
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = busd.port;
  cfg.on_confirm = on_confirm;
  cfg.pending_max = 1000;
  bus_client_t *c = NULL;
  if (bus_client_create(&c, loop, &cfg) < 0 || bus_client_start(c) < 0) return NULL;
  return c;
}

static bool all_confirmed(void *arg) { return confirmed >= EVENTS; }
static uint32_t expect;
static bool confirmed_upto(void *arg) { return confirmed >= expect; }
static uint32_t want;
static bool got(void *arg) { return ((consumer_t *)arg)->count >= want; }
static bool connected(void *arg) { return bus_client_connected(arg); }

static int segments(void) {
  char dir[256];
  snprintf(dir, sizeof dir, "%s/topics/ret/0", busd.dir);
  DIR *d = opendir(dir);
  if (d == NULL) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) n += strstr(e->d_name, ".log") != NULL;
  closedir(d);
  return n;
}

static int indexes(void) {
  char dir[256];
  snprintf(dir, sizeof dir, "%s/topics/ret/0", busd.dir);
  DIR *d = opendir(dir);
  if (d == NULL) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) n += strstr(e->d_name, ".idx") != NULL;
  closedir(d);
  return n;
}

/* Subscribes a group and consumes until `n` deliveries (or a timeout). */
static consumer_t consume(const char *group, uint32_t n) {
  consumer_t k;
  memset(&k, 0, sizeof k);
  bus_client_t *c = client();
  if (c == NULL) return k;
  bus_subscribe(c, "ret", group, 100, on_deliver, &k);
  want = n;
  run_until(loop, got, &k, 10000);
  run_for(loop, 300); /* the acks land, offsets are committed */
  bus_client_destroy(c);
  run_for(loop, 20);
  return k;
}

static void test_retention(void) {
  /* "slow" subscribes and leaves before anything is published. */
  bus_client_t *s = client();
  T_REQUIRE(s != NULL);
  consumer_t none = {0};
  T_REQUIRE(bus_subscribe(s, "ret", "slow", 1, on_deliver, &none) == 0);
  T_REQUIRE(run_until(loop, connected, s, 5000));
  run_for(loop, 200);
  bus_client_destroy(s);

  bus_client_t *p = client();
  T_REQUIRE(p != NULL);
  /* Ten at a time: a batch lands in one segment, so segments stay small. */
  for (uint32_t i = 0; i < EVENTS; i++) {
    if (i % 10 == 0) {
      expect = i;
      run_until(loop, confirmed_upto, NULL, 5000);
    }
    char payload[200];
    memset(payload, 'r', sizeof payload);
    bus_pub_t pub;
    memset(&pub, 0, sizeof pub);
    pub.topic = "ret";
    bus_uuid_v7(pub.id);
    pub.payload = payload;
    pub.payload_len = sizeof payload;
    T_CHECK_EQ_INT(bus_publish(p, &pub, NULL), 0);
  }
  T_REQUIRE(run_until(loop, all_confirmed, NULL, 10000));
  bus_client_destroy(p);
  int before = segments();
  printf("segments after %d events: %d\n", EVENTS, before);
  T_CHECK(before >= 10);

  consumer_t fast = consume("fast", EVENTS);
  T_CHECK_EQ_INT(fast.count, EVENTS);
  run_for(loop, 2000); /* older than retention, checked every second */
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_segments_deleted_total"), 0);
  T_CHECK_EQ_INT(segments(), before); /* "slow" still needs them */

  consumer_t slow = consume("slow", EVENTS);
  T_CHECK_EQ_INT(slow.count, EVENTS);
  run_for(loop, 2000);
  double deleted = busd_metric(&busd, "busd_segments_deleted_total");
  int after = segments();
  printf("segments deleted: %.0f, left: %d\n", deleted, after);
  T_CHECK(deleted >= before - 1);
  T_CHECK_EQ_INT(after, before - (int)deleted);
  T_CHECK(after >= 1); /* the segment appended to stays */
  T_CHECK_EQ_INT(indexes(), after); /* index files go with their segments */

  consumer_t late = consume("late", 1);
  run_for(loop, 300);
  T_CHECK(late.count >= 1 && late.count < EVENTS);
  T_CHECK(late.first_offset > 0);
  T_CHECK(late.first_offset + late.count == EVENTS);
  T_CHECK_EQ_INT(late.out_of_order, 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_bus_retention BUSD\n");
    return 2;
  }
  rt_log_init("test_bus_retention", RT_LOG_ERROR, NULL, 0);
  if (busd_init(&busd, argv[1]) < 0 || rt_loop_create(&loop, NULL) < 0) return 1;
  busd.env[0] = "BUSD_PARTITIONS=1";
  busd.env[1] = "BUSD_SEGMENT_BYTES=4096";
  busd.env[2] = "BUSD_RETENTION_MS=500";
  busd.env[3] = "BUSD_COMMIT_INTERVAL_MS=50";
  if (busd_start(&busd, true) < 0) {
    fprintf(stderr, "busd did not start\n");
    busd_cleanup(&busd);
    return 1;
  }
  T_RUN(test_retention);
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  busd_cleanup(&busd);
  rt_loop_destroy(loop);
  return t_done();
}
