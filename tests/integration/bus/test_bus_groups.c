/*
 * test_bus_groups.c - consumer groups against a real busd.
 *
 *   crash before ack: a busctl consumer (a separate process) receives an
 *     event and is killed with SIGKILL before acking; the other member of
 *     the group receives the same event, attempt 2.
 *   ack timeout: an event neither acked nor nacked comes again after the
 *     ack timeout, attempt 2, and not before.
 *   poison: an event that is always NACKed is delivered max_attempts (3)
 *     times, then appears in "<topic>.dead" with the same id and x-dead-*
 *     headers; the good events around it are delivered once; /metrics
 *     counts the dead letter and the group has no lag left.
 *
 * usage: test_bus_groups BUSD BUSCTL
 */
#include <poll.h>

#include "harness.h"
#include "t.h"

#define ACK_TIMEOUT_MS 1500
#define MAX_ATTEMPTS 3

typedef struct got {
  uint32_t count;
  uint8_t id[16];
  uint32_t attempt;
  uint32_t sub;
  uint32_t partition;
  uint64_t offset;
  char payload[64];
  bus_bytes_t headers;
  uint8_t hdr_copy[1024];
  uint64_t at_ns;
} got_t;

static busd_proc_t busd;
static const char *busctl;
static rt_loop_t *loop;
static uint32_t confirmed;

static void on_confirm(void *arg, const uint8_t id[16], int err, void *ctx) {
  if (err == 0) confirmed++;
}

static bus_client_t *client(const char *name) {
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = busd.port;
  cfg.name = name;
  cfg.on_confirm = on_confirm;
  bus_client_t *c = NULL;
  if (bus_client_create(&c, loop, &cfg) < 0 || bus_client_start(c) < 0) return NULL;
  return c;
}

static bool connected(void *arg) { return bus_client_connected(arg); }

static uint32_t want_confirmed;
static bool all_confirmed(void *arg) { return confirmed >= want_confirmed; }

static void publish(bus_client_t *c, const char *topic, const char *payload, uint8_t id[16]) {
  bus_pub_t p;
  memset(&p, 0, sizeof p);
  p.topic = topic;
  bus_uuid_v7(p.id);
  memcpy(id, p.id, 16);
  p.payload = payload;
  p.payload_len = (uint32_t)strlen(payload);
  if (bus_publish(c, &p, NULL) == 0) want_confirmed++;
  run_until(loop, all_confirmed, NULL, 10000);
}

/* Records the last delivery; acks unless told otherwise by `ack`. */
typedef struct consumer {
  got_t last;
  uint32_t count;
  bool ack;
  bool nack_poison;
  uint32_t poison_seen;
  uint32_t poison_attempts[8];
  uint32_t good_seen;
} consumer_t;

static void on_deliver(void *arg, bus_client_t *c, const bus_delivery_t *d) {
  consumer_t *k = arg;
  got_t *g = &k->last;
  k->count++;
  g->count++;
  memcpy(g->id, d->id, 16);
  g->attempt = d->attempt;
  g->sub = d->sub;
  g->partition = d->partition;
  g->offset = d->offset;
  g->at_ns = rt_now_ns();
  size_t n = d->payload.len < sizeof g->payload - 1 ? d->payload.len : sizeof g->payload - 1;
  memcpy(g->payload, d->payload.ptr, n);
  g->payload[n] = '\0';
  size_t h = d->headers.len < sizeof g->hdr_copy ? d->headers.len : 0;
  if (h > 0) memcpy(g->hdr_copy, d->headers.ptr, h);
  g->headers = (bus_bytes_t){.ptr = g->hdr_copy, .len = (uint32_t)h};
  bool poison = strcmp(g->payload, "poison") == 0;
  if (k->nack_poison && poison) {
    if (k->poison_seen < 8) k->poison_attempts[k->poison_seen] = d->attempt;
    k->poison_seen++;
    bus_nack(c, d->sub, d->partition, d->offset);
    return;
  }
  if (!poison) k->good_seen++;
  if (k->ack) bus_ack(c, d->sub, d->partition, d->offset);
}

static uint32_t want_count;
static bool count_reached(void *arg) { return ((consumer_t *)arg)->count >= want_count; }

/* Reads lines from the child's stdout until one contains `needle`. */
static bool child_printed(int fd, const char *needle, char *line, size_t cap, int timeout_ms) {
  size_t len = 0;
  uint64_t deadline = rt_now_ns() + (uint64_t)timeout_ms * 1000000u;
  while (rt_now_ns() < deadline && len + 1 < cap) {
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 50) <= 0) continue;
    ssize_t n = read(fd, line + len, cap - 1 - len);
    if (n <= 0) return false;
    len += (size_t)n;
    line[len] = '\0';
    if (strstr(line, needle) != NULL) return true;
  }
  return false;
}

static pid_t spawn_busctl_no_ack(int *out_fd) {
  int fds[2];
  if (pipe(fds) < 0) return -1;
  pid_t pid = fork();
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    dup2(fds[1], 1);
    close(fds[0]);
    char port[16];
    snprintf(port, sizeof port, "%u", busd.port);
    execl(busctl, busctl, "--port", port, "sub", "--topic", "work", "--group", "workers",
          "--no-ack", (char *)NULL);
    _exit(127);
  }
  close(fds[1]);
  *out_fd = fds[0];
  return pid;
}

static bool members_are(uint32_t n) {
  for (int i = 0; i < 500; i++) {
    if (busd_metric(&busd, "busd_group_members{topic=\"work\",group=\"workers\"}") == n) return true;
    run_for(loop, 10);
  }
  return false;
}

static void test_crash_before_ack(void) {
  int out_fd = -1;
  pid_t child = spawn_busctl_no_ack(&out_fd);
  T_REQUIRE(child > 0);
  /* The child joins first, so it owns the only partition. */
  T_REQUIRE(members_are(1));
  consumer_t other = {.ack = true};
  bus_client_t *c2 = client("member-2");
  T_REQUIRE(c2 != NULL);
  T_REQUIRE(bus_subscribe(c2, "work", "workers", 10, on_deliver, &other) == 0);
  T_REQUIRE(members_are(2));
  bus_client_t *pub = client("publisher");
  T_REQUIRE(pub != NULL && run_until(loop, connected, pub, 5000));
  uint8_t id[16];
  publish(pub, "work", "job-1", id);
  char text[37], line[4096];
  bus_uuid_format(id, text);
  T_CHECK(child_printed(out_fd, text, line, sizeof line, 5000));
  T_CHECK(strstr(line, " 1 ") != NULL); /* attempt 1, in the child */
  run_for(loop, 100);
  T_CHECK_EQ_INT(other.count, 0);        /* not delivered twice while held */
  kill(child, SIGKILL);
  waitpid(child, NULL, 0);
  close(out_fd);
  want_count = 1;
  T_CHECK(run_until(loop, count_reached, &other, 5000));
  T_CHECK_EQ_INT(other.count, 1);
  T_CHECK(memcmp(other.last.id, id, 16) == 0);
  T_CHECK_EQ_INT(other.last.attempt, 2);
  T_CHECK_STR(other.last.payload, "job-1");
  run_for(loop, 200); /* the ack is in */
  T_CHECK(busd_metric(&busd, "busd_redelivered_total") >= 1);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_group_lag{topic=\"work\",group=\"workers\",partition=\"0\"}"), 0);
  bus_client_destroy(c2);
  bus_client_destroy(pub);
  run_for(loop, 50);
}

static void test_ack_timeout(void) {
  consumer_t k = {.ack = false};
  bus_client_t *c = client("slow");
  T_REQUIRE(c != NULL);
  T_REQUIRE(bus_subscribe(c, "slow", "g", 10, on_deliver, &k) == 0);
  T_REQUIRE(run_until(loop, connected, c, 5000));
  run_for(loop, 100);
  uint8_t id[16];
  publish(c, "slow", "late", id);
  want_count = 1;
  T_REQUIRE(run_until(loop, count_reached, &k, 5000));
  uint64_t first = k.last.at_ns;
  T_CHECK_EQ_INT(k.last.attempt, 1);
  want_count = 2;
  T_CHECK(run_until(loop, count_reached, &k, ACK_TIMEOUT_MS + 3000));
  double waited_ms = (double)(k.last.at_ns - first) / 1e6;
  printf("redelivered after %.0f ms (ack timeout %d ms)\n", waited_ms, ACK_TIMEOUT_MS);
  T_CHECK(waited_ms >= ACK_TIMEOUT_MS - 100);
  T_CHECK_EQ_INT(k.last.attempt, 2);
  T_CHECK(memcmp(k.last.id, id, 16) == 0);
  bus_ack(c, k.last.sub, k.last.partition, k.last.offset);
  run_for(loop, 200);
  T_CHECK(busd_metric(&busd, "busd_ack_timeouts_total") >= 1);
  bus_client_destroy(c);
  run_for(loop, 50);
}

static bool header_is(bus_bytes_t headers, const char *name, const char *value) {
  bus_bytes_t v;
  return bus_header_get(headers, name, &v) && v.len == strlen(value) &&
         memcmp(v.ptr, value, v.len) == 0;
}

static void test_poison_to_dead_letters(void) {
  consumer_t k = {.ack = true, .nack_poison = true};
  bus_client_t *c = client("ledger");
  T_REQUIRE(c != NULL);
  T_REQUIRE(bus_subscribe(c, "payments", "ledger", 10, on_deliver, &k) == 0);
  T_REQUIRE(run_until(loop, connected, c, 5000));
  run_for(loop, 100);
  uint8_t good1[16], poison[16], good2[16];
  publish(c, "payments", "good-1", good1);
  publish(c, "payments", "poison", poison);
  publish(c, "payments", "good-2", good2);
  want_count = 2 + MAX_ATTEMPTS;
  T_CHECK(run_until(loop, count_reached, &k, 10000));
  run_for(loop, 500); /* no fourth attempt may follow */
  T_CHECK_EQ_INT(k.poison_seen, MAX_ATTEMPTS);
  for (uint32_t i = 0; i < MAX_ATTEMPTS && i < 8; i++) T_CHECK_EQ_INT(k.poison_attempts[i], i + 1);
  T_CHECK_EQ_INT(k.good_seen, 2);

  consumer_t dead = {.ack = true};
  bus_client_t *d = client("auditor");
  T_REQUIRE(d != NULL);
  T_REQUIRE(bus_subscribe(d, "payments.dead", "audit", 10, on_deliver, &dead) == 0);
  want_count = 1;
  T_CHECK(run_until(loop, count_reached, &dead, 5000));
  T_CHECK_EQ_INT(dead.count, 1);
  T_CHECK(memcmp(dead.last.id, poison, 16) == 0);
  T_CHECK_STR(dead.last.payload, "poison");
  T_CHECK(header_is(dead.last.headers, "x-dead-topic", "payments"));
  T_CHECK(header_is(dead.last.headers, "x-dead-group", "ledger"));
  T_CHECK(header_is(dead.last.headers, "x-dead-attempts", "3"));
  T_CHECK(header_is(dead.last.headers, "x-dead-partition", "0"));
  run_for(loop, 300);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_dead_letters_total"), 1);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_group_dead_letters_total{topic=\"payments\",group=\"ledger\"}"), 1);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_group_lag{topic=\"payments\",group=\"ledger\",partition=\"0\"}"), 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_nacked_total"), MAX_ATTEMPTS);
  bus_client_destroy(c);
  bus_client_destroy(d);
  run_for(loop, 50);
}

/* A publisher that disconnects while its PUBs are being written: busd
 * keeps the connection's memory until those writes are done, then frees
 * it (under ASan a use of the freed connection would kill busd here). The
 * events are stored all the same, and busd carries on. */
static void test_publisher_gone_mid_write(void) {
  bus_client_t *p = client("hit-and-run");
  T_REQUIRE(p != NULL && run_until(loop, connected, p, 5000));
  for (uint32_t round = 0; round < 5; round++) {
    for (uint32_t i = 0; i < 500; i++) {
      char payload[64];
      snprintf(payload, sizeof payload, "gone-%u-%u", round, i);
      bus_pub_t pub;
      memset(&pub, 0, sizeof pub);
      pub.topic = "gone";
      bus_uuid_v7(pub.id);
      pub.payload = payload;
      pub.payload_len = (uint32_t)strlen(payload);
      if (bus_publish(p, &pub, NULL) != 0) break;
    }
    run_for(loop, 1); /* out on the wire, not yet confirmed */
    bus_client_destroy(p);
    run_for(loop, 20);
    p = client("hit-and-run");
    T_REQUIRE(p != NULL && run_until(loop, connected, p, 5000));
  }
  bus_client_destroy(p);
  run_for(loop, 300);
  char body[256];
  T_CHECK_EQ_INT(http_get(busd.http_port, "/readyz", body, sizeof body), 200);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_connections"), 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_pending_bytes"), 0);
  /* Its loop, sized from its configuration, ran short of nothing. */
  double timers = busd_metric(&busd, "rt_loop_capacity{resource=\"timers\"}");
  T_CHECK(timers > 0 && timers < 65536);
  T_CHECK_EQ_INT(busd_metric(&busd, "rt_loop_exhausted_total{resource=\"timers\"}"), 0);
  T_CHECK_EQ_INT(busd_metric(&busd, "rt_loop_exhausted_total{resource=\"messages\"}"), 0);
  double stored = busd_metric(&busd, "busd_published_total");
  printf("stored while their publishers left: %.0f\n", stored);
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: test_bus_groups BUSD BUSCTL\n");
    return 2;
  }
  busctl = argv[2];
  rt_log_init("test_bus_groups", RT_LOG_ERROR, NULL, 0);
  if (busd_init(&busd, argv[1]) < 0 || rt_loop_create(&loop, NULL) < 0) return 1;
  static char timeout[64], attempts[64];
  snprintf(timeout, sizeof timeout, "BUSD_ACK_TIMEOUT_MS=%d", ACK_TIMEOUT_MS);
  snprintf(attempts, sizeof attempts, "BUSD_MAX_ATTEMPTS=%d", MAX_ATTEMPTS);
  busd.env[0] = "BUSD_PARTITIONS=1";
  busd.env[1] = timeout;
  busd.env[2] = attempts;
  busd.env[3] = "BUSD_RETRY_BACKOFF_MS=50";
  if (busd_start(&busd, true) < 0) {
    fprintf(stderr, "busd did not start\n");
    busd_cleanup(&busd);
    return 1;
  }
  T_RUN(test_crash_before_ack);
  T_RUN(test_ack_timeout);
  T_RUN(test_poison_to_dead_letters);
  T_RUN(test_publisher_gone_mid_write);
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  busd_cleanup(&busd);
  rt_loop_destroy(loop);
  return t_done();
}
