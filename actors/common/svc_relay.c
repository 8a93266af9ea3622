/*
 * svc_relay.c - the outbox relay: rows of the outbox table to the bus.
 *
 * One relay per process, on loop thread 0, with the bus transport it owns
 * (svc_bus.h: busd, or RabbitMQ where BUS_URL says so; "PUB_ACK" below is
 * RabbitMQ's publisher confirm there).
 * It works in rounds, one at a time:
 *
 *   scan     SELECT the oldest RELAY_BATCH_ROWS unpublished rows (id order)
 *   publish  bus_publish() each; the client keeps them until PUB_ACK and
 *            re-sends them itself after a reconnect
 *   confirm  wait until every row of the round was PUB_ACKed
 *   mark     UPDATE ... SET published_at = now() for exactly those ids
 *
 * then scans again at once when the round was full or a NOTIFY came in
 * meanwhile, else sleeps until the next NOTIFY or tick. So at most
 * RELAY_BATCH_ROWS publishes are in flight, and while busd is down the
 * round simply waits for the client's reconnect (its own back-off); no
 * rows are read meanwhile. Rows are marked only after their PUB_ACK, so a
 * crash (ours, busd's, the database's) at any point leaves them unmarked
 * and they are sent again: at-least-once, duplicates absorbed by the
 * consumers' inbox. A failed scan or mark ends the round; the next tick
 * starts a new one, with a back-off that doubles while failures last.
 *
 * Wake-ups: the thread's database pool keeps a listener connection on
 * channel svc_outbox (rt_pg_listen; common migration 0003 notifies at
 * every commit that inserted outbox rows); each notification, and each
 * time the LISTEN takes effect again after a reconnect, starts a round.
 * When it is down the periodic tick still finds every row, only later.
 *
 * Each row is published with the event's headers (svc.h), read from the
 * row's headers column as fixed columns, so no JSON is parsed here.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc.h"
#include "svc_internal.h"

#define RELAY_BATCH_ROWS 256       /* publishes in flight, at most */
#define RELAY_TICK_MS 1000         /* fallback scan period */
#define RELAY_BACKOFF_MAX_MS 10000 /* after repeated failures */
#define RELAY_DEADLINE_MS 30000    /* per scan or mark transaction */
#define RELAY_CHANNEL "svc_outbox"
#define RELAY_COUNT_TICKS 5        /* backlog count every 5 ticks */

_Static_assert(RELAY_BATCH_ROWS <= 1024, "the bus client keeps 1024 unconfirmed publishes");

svc_bus_stats_t svc_bus_stats;

static int stmt_scan, stmt_mark, stmt_count;

/* The headers the outbox keeps (svc.h), in the order of the scan's
 * columns 4.. */
static const char *const header_names[] = {"event-id",    "type",           "schema-version",
                                           "occurred-at", "correlation-id", "causation-id"};
#define HEADERS_COUNT (sizeof header_names / sizeof header_names[0])

static const svc_stmt_t stmts[] = {
    /* A round: the oldest unpublished rows (UUID v7 ids: time order). */
    {&stmt_scan,
     "SELECT id::text, topic, key, payload::text, headers->>'event-id', headers->>'type',"
     " headers->>'schema-version', headers->>'occurred-at', headers->>'correlation-id',"
     " headers->>'causation-id'"
     " FROM outbox WHERE published_at IS NULL ORDER BY id LIMIT $1::int",
     1},
    {&stmt_mark,
     "UPDATE outbox SET published_at = now()"
     " WHERE id = ANY($1::uuid[]) AND published_at IS NULL",
     1},
    /* The backlog and its age for /metrics, now and then (it reads the
     * whole backlog). */
    {&stmt_count,
     "SELECT count(*), coalesce((extract(epoch FROM now() - min(created_at)) * 1000)::bigint, 0)"
     " FROM outbox WHERE published_at IS NULL",
     0},
};

const svc_stmt_table_t svc_relay_stmts = {stmts, sizeof stmts / sizeof stmts[0]};

typedef enum relay_state {
  RELAY_IDLE = 0,
  RELAY_SCANNING,
  RELAY_PUBLISHING, /* waiting for PUB_ACKs */
  RELAY_MARKING,
  RELAY_STOPPED,
} relay_state_t;

typedef struct relay_row {
  uint8_t id[BUS_ID_BYTES];
  bool confirmed;
} relay_row_t;

struct svc_relay {
  svc_thread_t *th;
  svc_bus_t *bus;
  relay_state_t state;
  bool again;              /* a wake-up came during a round */
  bool failing;            /* the last round failed: logged once */
  uint32_t backoff_ms;     /* 0 while rounds succeed */
  uint64_t not_before_ns;  /* no new round before (back-off) */
  uint32_t rows_count;     /* publishes of this round */
  uint32_t confirmed_count;
  bool round_full;         /* the scan returned a full batch */
  relay_row_t rows[RELAY_BATCH_ROWS];
  rt_timer_t tick;
  uint64_t ticks;
  bool counting;           /* a backlog count is in flight */
};

static void relay_round(svc_relay_t *r);

/* ------------------------------------------------------------------------ */
/* Errors and ids                                                           */
/* ------------------------------------------------------------------------ */

static void relay_failed(svc_relay_t *r, const char *what, int err) {
  atomic_fetch_add_explicit(&svc_bus_stats.relay_errors, 1, memory_order_relaxed);
  atomic_store_explicit(&svc_bus_stats.relay_last_error_s, (uint64_t)time(NULL),
                        memory_order_relaxed);
  if (!r->failing) {
    RT_WARN("outbox relay failing", RT_LF_STR("step", what), RT_LF_STR("error", rt_strerror(err)));
  }
  r->failing = true;
  r->backoff_ms = r->backoff_ms == 0 ? 250 : r->backoff_ms * 2;
  if (r->backoff_ms > RELAY_BACKOFF_MAX_MS) r->backoff_ms = RELAY_BACKOFF_MAX_MS;
  r->not_before_ns = rt_loop_now_ns(r->th->loop) + (uint64_t)r->backoff_ms * 1000000u;
}

static void relay_succeeded(svc_relay_t *r) {
  if (r->failing) RT_INFO("outbox relay recovered", RT_LF_INT("backoff_ms", r->backoff_ms));
  r->failing = false;
  r->backoff_ms = 0;
  r->not_before_ns = 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Canonical UUID text to 16 bytes; -EINVAL for anything else. */
static int uuid_parse(const char *s, uint8_t out[BUS_ID_BYTES]) {
  if (s == NULL || strlen(s) != 36) return -EINVAL;
  size_t n = 0;
  for (size_t i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return -EINVAL;
      continue;
    }
    int hi = hexval(s[i]), lo = i + 1 < 36 ? hexval(s[i + 1]) : -1;
    if (hi < 0 || lo < 0 || n >= BUS_ID_BYTES) return -EINVAL;
    out[n++] = (uint8_t)(hi << 4 | lo);
    i++;
  }
  return n == BUS_ID_BYTES ? 0 : -EINVAL;
}

/* ------------------------------------------------------------------------ */
/* Rounds: scan, publish, confirm, mark                                     */
/* ------------------------------------------------------------------------ */

/* Ends a round; starts the next one at once when there is more to do. */
static void round_end(svc_relay_t *r, bool more) {
  if (r->state == RELAY_STOPPED) return;
  r->state = RELAY_IDLE;
  r->rows_count = 0;
  r->confirmed_count = 0;
  if (more || r->again) relay_round(r);
}

static void mark_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_relay_t *r = ctx;
  if (r->state != RELAY_MARKING) return; /* stopped meanwhile */
  if (err != 0) {
    /* The rows stay unmarked: the next round sends them again. */
    relay_failed(r, "mark", err);
    round_end(r, false);
    return;
  }
  atomic_fetch_add_explicit(&svc_bus_stats.relay_published, (uint64_t)rt_pg_affected(b, 0),
                            memory_order_relaxed);
  relay_succeeded(r);
  round_end(r, r->round_full);
}

/* Every publish of the round is durable in busd: mark the rows. */
static void round_mark(svc_relay_t *r) {
  /* "{" + rows * (36 + ",") + "}" */
  char ids[2 + RELAY_BATCH_ROWS * 37];
  size_t len = 0;
  ids[len++] = '{';
  for (uint32_t i = 0; i < r->rows_count; i++) {
    if (i > 0) ids[len++] = ',';
    bus_uuid_format(r->rows[i].id, ids + len);
    len += 36;
  }
  ids[len++] = '}';
  ids[len] = '\0';
  r->state = RELAY_MARKING;
  rt_pg_batch_t *b = rt_pg_batch_new(r->th->pool);
  if (b == NULL) {
    relay_failed(r, "mark", -ENOMEM);
    round_end(r, false);
    return;
  }
  const char *vals[] = {ids};
  rt_pg_add(b, stmt_mark, 1, vals);
  int rc = rt_pg_submit(b, RELAY_DEADLINE_MS, mark_done, r);
  if (rc < 0) {
    relay_failed(r, "mark", rc);
    round_end(r, false);
  }
}

static void svc_relay_on_confirm(void *arg, const uint8_t id[BUS_ID_BYTES], int err, void *ctx) {
  svc_relay_t *r = arg;
  uintptr_t index = (uintptr_t)ctx;
  /* BUS_E_CLOSED: the client is being destroyed at drain; the row stays
   * unmarked and is sent again by the next run. */
  if (err != 0 || r->state != RELAY_PUBLISHING) return;
  if (index >= r->rows_count || memcmp(r->rows[index].id, id, BUS_ID_BYTES) != 0) {
    RT_WARN("outbox relay: confirm for an unknown publish", RT_LF_INT("index", index));
    return;
  }
  if (r->rows[index].confirmed) return;
  r->rows[index].confirmed = true;
  r->confirmed_count++;
  if (r->confirmed_count == r->rows_count) {
    svc_fault("relay_before_mark");
    round_mark(r);
  }
}

/* Publishes row i of the scan as publish number r->rows_count. Returns 0,
 * 1 when the row can never be sent (skipped, logged), or BUS_E_FULL. */
static int publish_row(svc_relay_t *r, rt_pg_batch_t *b, int i) {
  const char *id = rt_pg_value(b, 0, i, 0);
  const char *topic = rt_pg_value(b, 0, i, 1);
  const char *key = rt_pg_value(b, 0, i, 2);
  const char *payload = rt_pg_value(b, 0, i, 3);
  bus_header_t hdr[HEADERS_COUNT];
  uint32_t nh = 0;
  for (uint32_t k = 0; k < HEADERS_COUNT; k++) {
    const char *v = rt_pg_value(b, 0, i, 4 + (int)k);
    if (v == NULL) continue; /* rows written before headers existed */
    hdr[nh++] = (bus_header_t){.name = header_names[k], .name_len = (uint32_t)strlen(header_names[k]),
                               .value = v, .value_len = (uint32_t)strlen(v)};
  }
  bus_pub_t pub = {
      .topic = topic,
      .key = key,
      .key_len = key ? (uint32_t)strlen(key) : 0,
      .headers = hdr,
      .headers_count = nh,
      .payload = payload,
      .payload_len = payload ? (uint32_t)strlen(payload) : 0,
  };
  relay_row_t *row = &r->rows[r->rows_count];
  int rc = uuid_parse(id, pub.id);
  if (rc == 0 && topic == NULL) rc = -EINVAL;
  if (rc == 0) rc = svc_bus_publish(r->bus, &pub, (void *)(uintptr_t)r->rows_count);
  if (rc == BUS_E_FULL) return rc;
  if (rc < 0) {
    /* A row busd can never take (bad topic, too large): it stays in the
     * outbox for an operator, and does not hold up the rows after it. */
    atomic_fetch_add_explicit(&svc_bus_stats.relay_errors, 1, memory_order_relaxed);
    RT_ERROR("outbox row cannot be published", RT_LF_STR("id", id ? id : ""),
             RT_LF_STR("topic", topic ? topic : ""), RT_LF_STR("error", rt_strerror(rc)));
    return 1;
  }
  memcpy(row->id, pub.id, BUS_ID_BYTES);
  row->confirmed = false;
  r->rows_count++;
  atomic_fetch_add_explicit(&svc_bus_stats.relay_sent, 1, memory_order_relaxed);
  return 0;
}

static void scan_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_relay_t *r = ctx;
  if (r->state != RELAY_SCANNING) return; /* stopped meanwhile */
  if (err != 0) {
    relay_failed(r, "scan", err);
    round_end(r, false);
    return;
  }
  int n = rt_pg_rows(b, 0);
  if (n > 0) svc_fault("relay_before_publish");
  r->round_full = n >= RELAY_BATCH_ROWS;
  r->state = RELAY_PUBLISHING;
  r->rows_count = 0;
  r->confirmed_count = 0;
  bool full = false;
  for (int i = 0; i < n && i < RELAY_BATCH_ROWS; i++) {
    int rc = publish_row(r, b, i);
    if (rc == BUS_E_FULL) {
      full = true;
      break;
    }
  }
  if (full) {
    /* The client holds too many bytes: send what was taken, the rest
     * comes with the next round. */
    r->round_full = true;
  }
  if (r->rows_count == 0) {
    if (n > 0) relay_failed(r, "publish", full ? BUS_E_FULL : -EINVAL);
    else relay_succeeded(r);
    round_end(r, false);
  }
  /* Otherwise the round goes on in svc_relay_on_confirm(). */
}

/* Starts a round when none is running and the back-off allows. */
static void relay_round(svc_relay_t *r) {
  if (r->state != RELAY_IDLE) {
    if (r->state != RELAY_STOPPED) r->again = true;
    return;
  }
  if (rt_loop_now_ns(r->th->loop) < r->not_before_ns) return; /* the tick retries */
  r->again = false;
  rt_pg_batch_t *b = rt_pg_batch_new(r->th->pool);
  if (b == NULL) {
    relay_failed(r, "scan", -ENOMEM);
    return;
  }
  char limit[16];
  snprintf(limit, sizeof limit, "%d", RELAY_BATCH_ROWS);
  const char *vals[] = {limit};
  rt_pg_add(b, stmt_scan, 1, vals);
  r->state = RELAY_SCANNING;
  int rc = rt_pg_submit(b, RELAY_DEADLINE_MS, scan_done, r);
  if (rc < 0) {
    r->state = RELAY_IDLE;
    relay_failed(r, "scan", rc);
  }
}

static void count_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_relay_t *r = ctx;
  int64_t n = 0, age_ms = 0;
  if (err == 0 && rt_pg_int64(b, 0, 0, 0, &n) == 0 && rt_pg_int64(b, 0, 0, 1, &age_ms) == 0) {
    atomic_store_explicit(&svc_bus_stats.relay_pending, (uint64_t)n, memory_order_relaxed);
    atomic_store_explicit(&svc_bus_stats.relay_oldest_ms, (uint64_t)(age_ms > 0 ? age_ms : 0),
                          memory_order_relaxed);
  }
  r->counting = false;
}

/* The backlog gauge: one count every RELAY_COUNT_TICKS ticks, never two at
 * once. */
static void relay_count(svc_relay_t *r) {
  if (r->counting || ++r->ticks % RELAY_COUNT_TICKS != 0) return;
  rt_pg_batch_t *b = rt_pg_batch_new(r->th->pool);
  if (b == NULL) return;
  rt_pg_add(b, stmt_count, 0, NULL);
  if (rt_pg_submit(b, RELAY_DEADLINE_MS, count_done, r) == 0) r->counting = true;
}

static void relay_tick(rt_timer_t *t) {
  svc_relay_t *r = t->ctx;
  relay_count(r);
  relay_round(r);
}

/* The pool's listener: a notification, or LISTEN (again) in effect, after
 * which rows committed while it was down are looked for. */
static void relay_notified(void *arg, rt_pg_notify_t what) {
  svc_relay_t *r = arg;
  if (what == RT_PG_NOTIFIED)
    atomic_fetch_add_explicit(&svc_bus_stats.relay_notifies, 1, memory_order_relaxed);
  relay_round(r);
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                               */
/* ------------------------------------------------------------------------ */

int svc_relay_create(svc_relay_t **out, svc_thread_t *th, const svc_bus_config_t *bus_cfg) {
  svc_relay_t *r = calloc(1, sizeof *r);
  if (r == NULL) return -ENOMEM;
  r->th = th;
  rt_timer_init(&r->tick, relay_tick, r);
  svc_bus_config_t cfg = *bus_cfg;
  cfg.on_confirm = svc_relay_on_confirm;
  cfg.confirm_arg = r;
  int rc = rt_pg_listen(th->pool, RELAY_CHANNEL, relay_notified, r);
  if (rc == 0) rc = svc_bus_create(&r->bus, th->loop, &cfg);
  if (rc < 0) {
    free(r);
    return rc;
  }
  th->bus = r->bus;
  rc = rt_timer_start(th->loop, &r->tick, RELAY_TICK_MS, RELAY_TICK_MS);
  if (rc < 0) {
    svc_bus_free(r->bus);
    th->bus = NULL;
    free(r);
    return rc;
  }
  *out = r;
  return 0;
}

void svc_relay_stop(svc_relay_t *r) {
  if (r == NULL) return;
  r->state = RELAY_STOPPED;
  rt_timer_stop(r->th->loop, &r->tick);
}

void svc_relay_close(svc_relay_t *r) {
  if (r == NULL || r->bus == NULL) return;
  svc_relay_stop(r);
  svc_bus_close(r->bus);
  r->th->bus = NULL;
}

void svc_relay_free(svc_relay_t *r) {
  if (r == NULL) return;
  svc_bus_free(r->bus);
  free(r);
}
