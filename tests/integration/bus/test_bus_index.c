/*
 * test_bus_index.c - start-up through segment index files.
 *
 * busd with two partitions, 256 KiB segments and no record cache (so every
 * delivery is read back from disk through the index) takes 3000 confirmed
 * events: many segments, each with its index file. After a clean restart
 * no index is rebuilt and start-up reads at most a stride and a record of
 * log per partition; a new group gets every event exactly once, in offset
 * order from 0. Then, busd stopped, one index file is damaged and another
 * deleted: the next start says so in its log, rebuilds both, and a new
 * group again gets every event exactly once. Last, busd is killed with
 * SIGKILL while events are being published: after a restart every
 * confirmed event is there, once.
 *
 * usage: test_bus_index BUSD
 */
#include <dirent.h>
#include <sys/stat.h>

#include "harness.h"
#include "t.h"

#define EVENTS 3000
#define MORE 1500
#define PAYLOAD 1000
#define PARTS 2
#define STRIDE (64 * 1024) /* busd.h: BUSD_INDEX_STRIDE */

static busd_proc_t busd;
static rt_loop_t *loop;
static char log_path[192];
static uint32_t confirmed;
static uint8_t confirmed_ev[EVENTS + MORE];

typedef struct consumer {
  uint32_t count;
  uint64_t next_offset[PARTS];
  uint32_t out_of_order;
  uint32_t unknown;
  uint8_t seen[EVENTS + MORE];
} consumer_t;

static void on_confirm(void *arg, const uint8_t id[16], int err, void *ctx) {
  if (err != 0) return;
  confirmed++;
  confirmed_ev[(uintptr_t)ctx - 1] = 1;
}

/* The payload starts with the event's number. */
static void on_deliver(void *arg, bus_client_t *c, const bus_delivery_t *d) {
  consumer_t *k = arg;
  if (d->partition >= PARTS || d->offset != k->next_offset[d->partition]) {
    k->out_of_order++;
  } else {
    k->next_offset[d->partition]++;
  }
  unsigned n = EVENTS + MORE;
  if (d->payload.len < 8 || sscanf((const char *)d->payload.ptr, "%8u", &n) != 1 ||
      n >= EVENTS + MORE) {
    k->unknown++;
  } else if (k->seen[n] < 255) {
    k->seen[n]++;
  }
  k->count++;
  bus_ack(c, d->sub, d->partition, d->offset);
}

static bus_client_t *client(void) {
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = busd.port;
  cfg.on_confirm = on_confirm;
  cfg.pending_max = 500;
  bus_client_t *c = NULL;
  if (bus_client_create(&c, loop, &cfg) < 0 || bus_client_start(c) < 0) return NULL;
  return c;
}

static uint32_t want;
static bool confirmed_enough(void *arg) { return confirmed >= want; }

/* Publishes events [from, to), waiting for room when the window is full. */
static void publish(bus_client_t *c, uint32_t from, uint32_t to) {
  static char payload[PAYLOAD];
  for (uint32_t i = from; i < to; i++) {
    memset(payload, 'a' + (int)(i % 26), sizeof payload);
    snprintf(payload, 9, "%08u", i);
    bus_pub_t p;
    memset(&p, 0, sizeof p);
    p.topic = "idx";
    bus_uuid_v7(p.id);
    p.payload = payload;
    p.payload_len = sizeof payload;
    /* Bounded: each turn waits for a confirm, or gives up after 10 s. */
    for (int tries = 0; bus_publish(c, &p, (void *)(uintptr_t)(i + 1)) == BUS_E_FULL; tries++) {
      if (tries == 1000) return;
      run_for(loop, 10);
    }
  }
}

static uint32_t want_count;
static bool got_enough(void *arg) { return ((consumer_t *)arg)->count >= want_count; }

/* A new group reads the whole topic; returns what it saw. */
static consumer_t *drain(const char *group, uint32_t expect) {
  static consumer_t k;
  memset(&k, 0, sizeof k);
  bus_client_t *c = client();
  if (c == NULL) return &k;
  bus_subscribe(c, "idx", group, 500, on_deliver, &k);
  want_count = expect;
  run_until(loop, got_enough, &k, 30000);
  run_for(loop, 300); /* nothing more may come */
  bus_client_destroy(c);
  run_for(loop, 20);
  return &k;
}

/* Events [0, n) each seen exactly once; nothing else. */
static void check_once(const consumer_t *k, uint32_t n, const char *what) {
  uint32_t missing = 0, twice = 0;
  for (uint32_t i = 0; i < n; i++) {
    missing += k->seen[i] == 0;
    twice += k->seen[i] > 1;
  }
  printf("%s: %u delivered, %u missing, %u duplicated\n", what, k->count, missing, twice);
  T_CHECK_EQ_INT(missing, 0);
  T_CHECK_EQ_INT(twice, 0);
  T_CHECK_EQ_INT(k->count, n);
  T_CHECK_EQ_INT(k->out_of_order, 0);
  T_CHECK_EQ_INT(k->unknown, 0);
}

/* Counts files of a partition ending in `ext`; the first one's path. */
static int files(uint32_t part, const char *ext, char *first, size_t cap) {
  char dir[256];
  snprintf(dir, sizeof dir, "%s/topics/idx/%u", busd.dir, part);
  DIR *d = opendir(dir);
  if (d == NULL) return -1;
  int n = 0;
  char best[64] = "";
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    size_t len = strlen(e->d_name);
    if (len < 4 || strcmp(e->d_name + len - 4, ext) != 0) continue;
    n++;
    if (best[0] == '\0' || strcmp(e->d_name, best) < 0) snprintf(best, sizeof best, "%s", e->d_name);
  }
  closedir(d);
  if (first != NULL) snprintf(first, cap, "%s/%s", dir, best);
  return n;
}

static bool log_has(const char *text) {
  FILE *f = fopen(log_path, "r");
  if (f == NULL) return false;
  char line[4096];
  bool found = false;
  while (!found && fgets(line, sizeof line, f) != NULL) found = strstr(line, text) != NULL;
  fclose(f);
  return found;
}

static void restart(void) {
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  unlink(log_path);
  T_REQUIRE(busd_start(&busd, true) == 0);
}

static void test_clean_restart(void) {
  bus_client_t *c = client();
  T_REQUIRE(c != NULL);
  publish(c, 0, EVENTS);
  want = EVENTS;
  T_REQUIRE(run_until(loop, confirmed_enough, NULL, 30000));
  bus_client_destroy(c);
  run_for(loop, 20);
  for (uint32_t p = 0; p < PARTS; p++) {
    int logs = files(p, ".log", NULL, 0), idxs = files(p, ".idx", NULL, 0);
    printf("partition %u: %d segments, %d index files\n", p, logs, idxs);
    T_CHECK(logs >= 3);
    T_CHECK_EQ_INT(idxs, logs);
  }
  restart();
  T_CHECK(log_has("recovery done"));
  T_CHECK(!log_has("rebuilt from the log"));
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_index_rebuilt_total"), 0);
  double read = busd_metric(&busd, "busd_start_read_bytes_total");
  printf("log bytes read at start-up: %.0f\n", read);
  T_CHECK(read >= 0 && read < PARTS * (STRIDE + 2 * (PAYLOAD + 100)));
  check_once(drain("g1", EVENTS), EVENTS, "after a clean restart");
  T_CHECK(busd_metric(&busd, "busd_cache_misses_total") > 0);
}

static void test_damaged_and_missing(void) {
  char damaged[320], missing[320];
  T_REQUIRE(files(0, ".idx", damaged, sizeof damaged) > 0);
  T_REQUIRE(files(1, ".idx", missing, sizeof missing) > 0);
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  /* An entry's checksum broken in the first (closed) segment of p0. */
  int fd = open(damaged, O_RDWR);
  T_REQUIRE(fd >= 0);
  uint8_t byte = 0;
  T_CHECK(pread(fd, &byte, 1, 32 + 10) == 1);
  byte ^= 0x5a;
  T_CHECK(pwrite(fd, &byte, 1, 32 + 10) == 1);
  close(fd);
  T_CHECK(unlink(missing) == 0);
  unlink(log_path);
  T_REQUIRE(busd_start(&busd, true) == 0);
  T_CHECK(log_has("segment index damaged: rebuilt"));
  T_CHECK(log_has("segment index missing: rebuilt"));
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_index_rebuilt_total"), 2);
  struct stat st;
  T_CHECK(stat(missing, &st) == 0); /* written again */
  check_once(drain("g2", EVENTS), EVENTS, "after rebuilding two indexes");
  /* Rebuilt indexes are trusted at the next start. */
  restart();
  T_CHECK(!log_has("rebuilt from the log"));
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_index_rebuilt_total"), 0);
}

static void test_kill_while_writing(void) {
  bus_client_t *c = client();
  T_REQUIRE(c != NULL);
  uint32_t before = confirmed;
  publish(c, EVENTS, EVENTS + MORE);
  want = before + MORE / 3;
  run_until(loop, confirmed_enough, NULL, 20000);
  busd_stop(&busd, SIGKILL); /* writes in flight */
  bus_client_destroy(c);
  run_for(loop, 20);
  unlink(log_path);
  T_REQUIRE(busd_start(&busd, true) == 0);
  uint32_t acked = 0;
  for (uint32_t i = EVENTS; i < EVENTS + MORE; i++) acked += confirmed_ev[i];
  printf("confirmed before the kill: %u of %u\n", acked, MORE);
  T_CHECK(acked >= MORE / 3);
  /* Every confirmed event comes back once; unconfirmed ones may too. */
  double stored = 0;
  for (uint32_t p = 0; p < PARTS; p++) {
    char name[64];
    snprintf(name, sizeof name, "busd_partition_end_offset{topic=\"idx\",partition=\"%u\"}", p);
    stored += busd_metric(&busd, name);
  }
  T_CHECK(stored >= EVENTS + acked);
  consumer_t *k = drain("g3", (uint32_t)stored);
  uint32_t lost = 0, twice = 0;
  for (uint32_t i = 0; i < EVENTS + MORE; i++) {
    lost += (i < EVENTS || confirmed_ev[i]) && k->seen[i] == 0;
    twice += k->seen[i] > 1;
  }
  printf("after SIGKILL: %u delivered of %.0f stored, %u lost, %u duplicated\n", k->count,
         stored, lost, twice);
  T_CHECK_EQ_INT(lost, 0);
  T_CHECK_EQ_INT(twice, 0);
  T_CHECK_EQ_INT(k->count, (uint32_t)stored);
  T_CHECK_EQ_INT(k->out_of_order, 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_bus_index BUSD\n");
    return 2;
  }
  rt_log_init("test_bus_index", RT_LOG_ERROR, NULL, 0);
  if (busd_init(&busd, argv[1]) < 0 || rt_loop_create(&loop, NULL) < 0) return 1;
  snprintf(log_path, sizeof log_path, "%s.log", busd.dir);
  busd.log_path = log_path;
  busd.env[0] = "BUSD_PARTITIONS=2";
  busd.env[1] = "BUSD_SEGMENT_BYTES=262144";
  busd.env[2] = "BUSD_CACHE_BYTES=0";
  busd.env[3] = "LOG_LEVEL=info";
  if (busd_start(&busd, true) < 0) {
    fprintf(stderr, "busd did not start\n");
    busd_cleanup(&busd);
    return 1;
  }
  T_RUN(test_clean_restart);
  T_RUN(test_damaged_and_missing);
  T_RUN(test_kill_while_writing);
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  busd_cleanup(&busd);
  unlink(log_path);
  rt_loop_destroy(loop);
  return t_done();
}
