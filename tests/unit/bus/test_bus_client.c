/*
 * test_bus_client.c - the client without a broker: the pending table
 * (publish until full, confirm in any order, lookups stay right after
 * every removal, duplicate ids), the frames kept, refusals that need no
 * connection, and destroy confirming every pending publish with
 * BUS_E_CLOSED exactly once.
 * It includes bus_client.c to reach the table's statics.
 */
#include "../../../wire/bus_client.c"

#include "t.h"

#define N 1000

static rt_loop_t *loop;
static uint32_t confirms[N + 2];
static int last_err;
static uint32_t confirm_calls;

static void on_confirm(void *arg, const uint8_t id[BUS_ID_BYTES], int err, void *ctx) {
  uintptr_t i = (uintptr_t)ctx;
  if (i < N + 2) confirms[i]++;
  last_err = err;
  confirm_calls++;
}

static void ignore_delivery(void *arg, bus_client_t *c, const bus_delivery_t *d) {}

static bus_client_t *make(uint32_t pending_max, uint32_t frame_max) {
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = "127.0.0.1";
  cfg.port = 9; /* never started: nothing connects */
  cfg.pending_max = pending_max;
  cfg.frame_bytes_max = frame_max;
  cfg.on_confirm = on_confirm;
  bus_client_t *c = NULL;
  return bus_client_create(&c, loop, &cfg) == 0 ? c : NULL;
}

static void id_of(uint32_t i, uint8_t id[16]) {
  memset(id, 0, 16);
  memcpy(id + 3, &i, 4); /* similar ids: they collide in the hash */
}

static int publish(bus_client_t *c, uint32_t i, const char *topic, uint32_t payload_len) {
  static uint8_t payload[70000];
  bus_pub_t p;
  memset(&p, 0, sizeof p);
  p.topic = topic;
  id_of(i, p.id);
  p.payload = payload;
  p.payload_len = payload_len;
  return bus_publish(c, &p, (void *)(uintptr_t)i);
}

static uint32_t findable(bus_client_t *c, const uint8_t *alive) {
  uint32_t bad = 0;
  for (uint32_t i = 0; i < N; i++) {
    uint8_t id[16];
    id_of(i, id);
    bool found = hash_find(c, id) != NONE;
    if (found != (alive[i] != 0)) bad++;
  }
  return bad;
}

static void test_pending_table(void) {
  memset(confirms, 0, sizeof confirms);
  bus_client_t *c = make(N, 0);
  T_REQUIRE(c != NULL);
  static uint8_t alive[N];
  for (uint32_t i = 0; i < N; i++) {
    T_CHECK_EQ_INT(publish(c, i, "t", i % 3 == 0 ? 3000 : 10), 0); /* some not inline */
    alive[i] = 1;
  }
  T_CHECK_EQ_INT(publish(c, N, "t", 10), BUS_E_FULL);
  bus_client_stats_t st;
  bus_client_stats(c, &st);
  T_CHECK_EQ_INT(st.unconfirmed, N);
  T_CHECK_EQ_INT(findable(c, alive), 0);
  /* Confirm in a scrambled order; check every lookup along the way. */
  uint32_t bad = 0;
  for (uint32_t k = 0; k < N; k++) {
    uint32_t i = (k * 7919u) % N;
    uint8_t id[16];
    id_of(i, id);
    pend_confirm(c, id, 0);
    alive[i] = 0;
    if (k % 50 == 0) bad += findable(c, alive);
  }
  T_CHECK_EQ_INT(bad, 0);
  uint32_t once = 0;
  for (uint32_t i = 0; i < N; i++) once += confirms[i] == 1;
  T_CHECK_EQ_INT(once, N);
  bus_client_stats(c, &st);
  T_CHECK_EQ_INT(st.unconfirmed, 0);
  T_CHECK_EQ_INT(st.confirmed, N);
  T_CHECK_EQ_INT(c->pending_bytes, 0);
  /* The free list is whole again. */
  for (uint32_t i = 0; i < N; i++) T_CHECK_EQ_INT(publish(c, i, "t", 10), 0);
  T_CHECK_EQ_INT(publish(c, N, "t", 10), BUS_E_FULL);
  confirm_calls = 0;
  bus_client_destroy(c); /* fails all of them, once each */
  T_CHECK_EQ_INT(confirm_calls, N);
  T_CHECK_EQ_INT(last_err, BUS_E_CLOSED);
}

/* A re-sent event has the same id twice: each PUB_ACK removes one. */
static void test_duplicate_ids(void) {
  memset(confirms, 0, sizeof confirms);
  bus_client_t *c = make(8, 0);
  T_REQUIRE(c != NULL);
  T_CHECK_EQ_INT(publish(c, 5, "t", 10), 0);
  T_CHECK_EQ_INT(publish(c, 5, "t", 10), 0);
  uint8_t id[16];
  id_of(5, id);
  pend_confirm(c, id, 0);
  T_CHECK_EQ_INT(c->pending_count, 1);
  T_CHECK(hash_find(c, id) != NONE);
  pend_confirm(c, id, 0);
  T_CHECK_EQ_INT(c->pending_count, 0);
  T_CHECK(hash_find(c, id) == NONE);
  pend_confirm(c, id, 0); /* a third PUB_ACK: nothing pending, ignored */
  T_CHECK_EQ_INT(confirms[5], 2);
  bus_client_destroy(c);
}

/* An event's frame is kept in its entry, a larger one in an allocation
 * of its own; either way the bytes kept are the frame encoded. */
static const pend_t *pending(bus_client_t *c, uint32_t i) {
  uint8_t id[16];
  id_of(i, id);
  return &c->pend[c->hash[hash_find(c, id)]];
}

static uint32_t payload_len_kept(const pend_t *p) {
  bus_frame_t f;
  bus_limits_t lim;
  bus_limits_defaults(&lim);
  if (p->frame_len < 4 || bus_frame_decode(p->frame + 4, p->frame_len - 4, &lim, &f) != 0 ||
      f.type != BUS_PUB)
    return UINT32_MAX;
  return f.payload.len;
}

static void test_frames_kept(void) {
  bus_client_t *c = make(8, 0);
  T_REQUIRE(c != NULL);
  T_CHECK_EQ_INT(publish(c, 1, "t", 1200), 0);
  T_CHECK_EQ_INT(publish(c, 2, "t", 3000), 0);
  const pend_t *a = pending(c, 1), *b = pending(c, 2);
  T_CHECK(a->frame == a->inline_buf);
  T_CHECK(b->frame != b->inline_buf);
  T_CHECK_EQ_INT(payload_len_kept(a), 1200);
  T_CHECK_EQ_INT(payload_len_kept(b), 3000);
  T_CHECK_EQ_INT(c->pend_fresh, 2); /* entries taken in order, once each */
  bus_client_destroy(c);
}

static void test_refusals(void) {
  bus_client_t *c = make(8, 4096);
  T_REQUIRE(c != NULL);
  T_CHECK_EQ_INT(publish(c, 1, "bad topic", 10), BUS_E_NAME);
  T_CHECK_EQ_INT(publish(c, 1, "", 10), BUS_E_NAME);
  T_CHECK_EQ_INT(publish(c, 1, "t", 4096 - BUS_DELIVER_OVERHEAD_BYTES), BUS_E_FRAME_TOO_LARGE);
  T_CHECK_EQ_INT(publish(c, 1, "t", 4096 - BUS_DELIVER_OVERHEAD_BYTES - 1), 0);
  bus_pub_t p;
  memset(&p, 0, sizeof p);
  p.topic = "t";
  static uint8_t key[BUS_KEY_BYTES_MAX + 1];
  p.key = key;
  p.key_len = sizeof key;
  T_CHECK_EQ_INT(bus_publish(c, &p, NULL), BUS_E_LIMIT);
  T_CHECK_EQ_INT(c->pending_count, 1); /* refusals left nothing behind */
  T_CHECK_EQ_INT(bus_subscribe(c, "t", "../g", 10, ignore_delivery, NULL), BUS_E_NAME);
  T_CHECK_EQ_INT(bus_subscribe(c, "t", "g", 0, ignore_delivery, NULL), BUS_E_LIMIT);
  T_CHECK_EQ_INT(bus_subscribe(c, "t", "g", 10, NULL, NULL), BUS_E_LIMIT);
  int subs = 0;
  for (int i = 0; i < SUBS_MAX + 4; i++)
    subs += bus_subscribe(c, "t", "g", 10, ignore_delivery, NULL) >= 0;
  T_CHECK_EQ_INT(subs, SUBS_MAX);
  T_CHECK_EQ_INT(bus_ack(c, 0, 0, 0), BUS_E_CLOSED); /* not connected */
  T_CHECK_EQ_INT(bus_ack(c, 99, 0, 0), -EINVAL);
  T_CHECK(!bus_client_connected(c));
  bus_client_destroy(c);
  T_CHECK_EQ_INT(last_err, BUS_E_CLOSED);
}

int main(void) {
  rt_log_init("test_bus_client", RT_LOG_ERROR, NULL, 0);
  if (rt_loop_create(&loop, NULL) < 0) return 1;
  T_RUN(test_pending_table);
  T_RUN(test_duplicate_ids);
  T_RUN(test_frames_kept);
  T_RUN(test_refusals);
  rt_loop_destroy(loop);
  return t_done();
}
