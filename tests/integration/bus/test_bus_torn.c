/*
 * test_bus_torn.c - torn-tail recovery on a real busd data directory.
 *
 * busd (one partition) takes 1000 confirmed events and is killed. With busd
 * stopped, the last segment is truncated in the middle of its last record.
 * After a restart: busd cut exactly that partial record (the metric and the
 * file size say so), every event before it is delivered in order with its
 * id, the torn one is not, and a new event gets the next offset. Then a
 * tail of zeros (what a crash may leave after the size grew but before the
 * data landed) is appended while busd is stopped: it is cut as well and
 * nothing before it is lost.
 *
 * usage: test_bus_torn BUSD
 */
#include <sys/stat.h>

#include "harness.h"
#include "t.h"

#define EVENTS 1000
#define PAYLOAD 100

static busd_proc_t busd;
static rt_loop_t *loop;
static uint8_t ids[EVENTS + 1][16];
static uint32_t confirmed;

typedef struct consumer {
  uint32_t count;
  uint64_t next_offset;
  uint32_t out_of_order;
  uint32_t wrong_id;
  uint8_t last_id[16];
} consumer_t;

static void on_confirm(void *arg, const uint8_t id[16], int err, void *ctx) {
  if (err == 0) confirmed++;
}

static bus_client_t *client(void) {
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = busd.port;
  cfg.on_confirm = on_confirm;
  cfg.pending_max = 2000;
  bus_client_t *c = NULL;
  if (bus_client_create(&c, loop, &cfg) < 0 || bus_client_start(c) < 0) return NULL;
  return c;
}

static uint32_t want;
static bool confirmed_enough(void *arg) { return confirmed >= want; }

static void publish_range(bus_client_t *c, uint32_t from, uint32_t to) {
  for (uint32_t i = from; i < to; i++) {
    char payload[PAYLOAD];
    memset(payload, 'x', sizeof payload);
    snprintf(payload, sizeof payload, "torn-%u", i);
    bus_pub_t p;
    memset(&p, 0, sizeof p);
    p.topic = "torn";
    p.key = "k";
    p.key_len = 1;
    bus_uuid_v7(p.id);
    memcpy(ids[i], p.id, 16);
    p.payload = payload;
    p.payload_len = sizeof payload;
    bus_publish(c, &p, NULL);
  }
  want = confirmed + (to - from);
  run_until(loop, confirmed_enough, NULL, 20000);
}

static void on_deliver(void *arg, bus_client_t *c, const bus_delivery_t *d) {
  consumer_t *k = arg;
  if (d->offset != k->next_offset) k->out_of_order++;
  k->next_offset = d->offset + 1;
  if (d->offset > EVENTS || memcmp(ids[d->offset], d->id, 16) != 0) k->wrong_id++;
  memcpy(k->last_id, d->id, 16);
  k->count++;
  bus_ack(c, d->sub, d->partition, d->offset);
}

static uint32_t want_count;
static bool got_enough(void *arg) { return ((consumer_t *)arg)->count >= want_count; }

static void segment_path(char *out, size_t cap) {
  snprintf(out, cap, "%s/topics/torn/0/00000000000000000000.log", busd.dir);
}

static off_t file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Drains the topic with a new group; returns what it saw. */
static consumer_t drain(const char *group, uint32_t expect) {
  consumer_t k;
  memset(&k, 0, sizeof k);
  bus_client_t *c = client();
  if (c == NULL) return k;
  bus_subscribe(c, "torn", group, 500, on_deliver, &k);
  want_count = expect;
  run_until(loop, got_enough, &k, 20000);
  run_for(loop, 300); /* nothing more may come; acks go out */
  bus_client_destroy(c);
  run_for(loop, 20);
  return k;
}

static void test_truncated_mid_record(void) {
  bus_client_t *c = client();
  T_REQUIRE(c != NULL);
  publish_range(c, 0, EVENTS);
  T_REQUIRE(confirmed == EVENTS);
  bus_client_destroy(c);
  run_for(loop, 20);
  busd_stop(&busd, SIGKILL);

  char path[256];
  segment_path(path, sizeof path);
  off_t size = file_size(path);
  off_t rec = 52 + 1 + PAYLOAD; /* header, key "k", payload */
  T_REQUIRE(size == EVENTS * rec);
  T_REQUIRE(truncate(path, size - 20) == 0); /* inside the last record */

  T_REQUIRE(busd_start(&busd, true) == 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_torn_bytes_cut_total"), rec - 20);
  T_CHECK_EQ_INT(file_size(path), size - rec);
  consumer_t k = drain("g", EVENTS - 1);
  T_CHECK_EQ_INT(k.count, EVENTS - 1);
  T_CHECK_EQ_INT(k.out_of_order, 0);
  T_CHECK_EQ_INT(k.wrong_id, 0);
  T_CHECK(memcmp(k.last_id, ids[EVENTS - 2], 16) == 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_partition_end_offset{topic=\"torn\",partition=\"0\"}"),
                 EVENTS - 1);

  /* The log goes on from the cut: the next event takes offset 999. */
  c = client();
  T_REQUIRE(c != NULL);
  char payload[PAYLOAD];
  memset(payload, 'y', sizeof payload);
  bus_pub_t p;
  memset(&p, 0, sizeof p);
  p.topic = "torn";
  p.key = "k";
  p.key_len = 1;
  bus_uuid_v7(p.id);
  memcpy(ids[EVENTS - 1], p.id, 16);
  p.payload = payload;
  p.payload_len = sizeof payload;
  T_CHECK_EQ_INT(bus_publish(c, &p, NULL), 0);
  want = confirmed + 1;
  T_CHECK(run_until(loop, confirmed_enough, NULL, 5000));
  bus_client_destroy(c);
  run_for(loop, 20);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_partition_end_offset{topic=\"torn\",partition=\"0\"}"),
                 EVENTS);
}

static void test_zero_tail(void) {
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  char path[256];
  segment_path(path, sizeof path);
  off_t size = file_size(path);
  int fd = open(path, O_WRONLY | O_APPEND);
  T_REQUIRE(fd >= 0);
  static const uint8_t zeros[4096];
  T_REQUIRE(write(fd, zeros, sizeof zeros) == (ssize_t)sizeof zeros);
  close(fd);
  T_REQUIRE(busd_start(&busd, true) == 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_torn_bytes_cut_total"), 4096);
  T_CHECK_EQ_INT(file_size(path), size);
  consumer_t k = drain("g2", EVENTS);
  T_CHECK_EQ_INT(k.count, EVENTS); /* 999 old ones and the new one */
  T_CHECK_EQ_INT(k.out_of_order, 0);
  T_CHECK_EQ_INT(k.wrong_id, 0);
  /* Group "g" kept its committed offset across the restarts: only the
   * event published after it left is outstanding. */
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_group_lag{topic=\"torn\",group=\"g\",partition=\"0\"}"), 1);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_bus_torn BUSD\n");
    return 2;
  }
  rt_log_init("test_bus_torn", RT_LOG_ERROR, NULL, 0);
  if (busd_init(&busd, argv[1]) < 0 || rt_loop_create(&loop, NULL) < 0) return 1;
  busd.env[0] = "BUSD_PARTITIONS=1";
  if (busd_start(&busd, true) < 0) {
    fprintf(stderr, "busd did not start\n");
    busd_cleanup(&busd);
    return 1;
  }
  T_RUN(test_truncated_mid_record);
  T_RUN(test_zero_tail);
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  busd_cleanup(&busd);
  rt_loop_destroy(loop);
  return t_done();
}
