/*
 * svc_relay.c - the outbox relay: rows of the outbox table to busd.
 *
 * One relay per process, on loop thread 0, with the bus client it owns.
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
 * Wake-ups: a dedicated libpq connection LISTENs on channel svc_outbox
 * (common migration 0003 notifies at every commit that inserted outbox
 * rows). It connects with PQconnectStart()/PQconnectPoll() and is watched
 * with one-shot polls on the loop, so nothing here blocks. When it is down
 * the periodic tick still finds every row, only later.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "svc.h"
#include "svc_internal.h"

#define RELAY_BATCH_ROWS 256       /* publishes in flight, at most */
#define RELAY_TICK_MS 1000         /* fallback scan period */
#define RELAY_BACKOFF_MAX_MS 10000 /* after repeated failures */
#define RELAY_LISTEN_RETRY_MIN_MS 200
#define RELAY_LISTEN_RETRY_MAX_MS 5000
#define RELAY_DEADLINE_MS 30000    /* per scan or mark transaction */
#define RELAY_CHANNEL "svc_outbox"
#define RELAY_COUNT_TICKS 5        /* backlog count every 5 ticks */

_Static_assert(RELAY_BATCH_ROWS <= 1024, "the bus client keeps 1024 unconfirmed publishes");

svc_bus_stats_t svc_bus_stats;

typedef enum relay_state {
  RELAY_IDLE = 0,
  RELAY_SCANNING,
  RELAY_PUBLISHING, /* waiting for PUB_ACKs */
  RELAY_MARKING,
  RELAY_STOPPED,
} relay_state_t;

typedef enum listen_phase {
  LISTEN_DOWN = 0,
  LISTEN_CONNECTING,
  LISTEN_UP,
} listen_phase_t;

typedef struct relay_row {
  uint8_t id[BUS_ID_BYTES];
  bool confirmed;
} relay_row_t;

struct svc_relay {
  svc_thread_t *th;
  bus_client_t *bus;
  const char *db_url;
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
  /* The LISTEN connection. */
  PGconn *lconn;
  listen_phase_t lphase;
  bool closing;
  rt_op_t lpoll;
  rt_op_t lcancel;
  rt_timer_t lretry;
  uint32_t lretry_ms;
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
  rt_pg_add(b, svc_stmt_relay_mark, 1, vals);
  int rc = rt_pg_submit(b, RELAY_DEADLINE_MS, mark_done, r);
  if (rc < 0) {
    relay_failed(r, "mark", rc);
    round_end(r, false);
  }
}

void svc_relay_on_confirm(void *arg, const uint8_t id[BUS_ID_BYTES], int err, void *ctx) {
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
  if (r->confirmed_count == r->rows_count) round_mark(r);
}

/* Publishes row i of the scan as publish number r->rows_count. Returns 0,
 * 1 when the row can never be sent (skipped, logged), or BUS_E_FULL. */
static int publish_row(svc_relay_t *r, rt_pg_batch_t *b, int i) {
  const char *id = rt_pg_value(b, 0, i, 0);
  const char *topic = rt_pg_value(b, 0, i, 1);
  const char *key = rt_pg_value(b, 0, i, 2);
  const char *payload = rt_pg_value(b, 0, i, 3);
  bus_pub_t pub = {
      .topic = topic,
      .key = key,
      .key_len = key ? (uint32_t)strlen(key) : 0,
      .payload = payload,
      .payload_len = payload ? (uint32_t)strlen(payload) : 0,
  };
  relay_row_t *row = &r->rows[r->rows_count];
  int rc = uuid_parse(id, pub.id);
  if (rc == 0 && topic == NULL) rc = -EINVAL;
  if (rc == 0) rc = bus_publish(r->bus, &pub, (void *)(uintptr_t)r->rows_count);
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
  rt_pg_add(b, svc_stmt_relay_scan, 1, vals);
  r->state = RELAY_SCANNING;
  int rc = rt_pg_submit(b, RELAY_DEADLINE_MS, scan_done, r);
  if (rc < 0) {
    r->state = RELAY_IDLE;
    relay_failed(r, "scan", rc);
  }
}

static void count_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_relay_t *r = ctx;
  int64_t n = 0;
  if (err == 0 && rt_pg_int64(b, 0, 0, 0, &n) == 0)
    atomic_store_explicit(&svc_bus_stats.relay_pending, (uint64_t)n, memory_order_relaxed);
  r->counting = false;
}

/* The backlog gauge: one count every RELAY_COUNT_TICKS ticks, never two at
 * once. */
static void relay_count(svc_relay_t *r) {
  if (r->counting || ++r->ticks % RELAY_COUNT_TICKS != 0) return;
  rt_pg_batch_t *b = rt_pg_batch_new(r->th->pool);
  if (b == NULL) return;
  rt_pg_add(b, svc_stmt_relay_count, 0, NULL);
  if (rt_pg_submit(b, RELAY_DEADLINE_MS, count_done, r) == 0) r->counting = true;
}

static void relay_tick(rt_timer_t *t) {
  svc_relay_t *r = t->ctx;
  relay_count(r);
  relay_round(r);
}

/* ------------------------------------------------------------------------ */
/* LISTEN connection                                                        */
/* ------------------------------------------------------------------------ */

static void listen_connect(svc_relay_t *r);
static void on_lpoll(rt_op_t *op, int res, uint32_t flags);

static void listen_wait(svc_relay_t *r, uint32_t events) {
  int fd = PQsocket(r->lconn);
  int rc = fd < 0 ? -EBADF : rt_poll(r->th->loop, &r->lpoll, fd, events, on_lpoll, r);
  if (rc < 0) {
    RT_WARN("outbox relay: cannot watch its LISTEN connection", RT_LF_STR("error", rt_strerror(rc)));
    PQfinish(r->lconn);
    r->lconn = NULL;
    r->lphase = LISTEN_DOWN;
    rt_timer_start(r->th->loop, &r->lretry, r->lretry_ms, 0);
  }
}

/* The connection failed: drop it, retry later, and scan meanwhile in case
 * a notification was lost with it. */
static void listen_fail(svc_relay_t *r, const char *what) {
  if (r->lphase == LISTEN_UP || r->lretry_ms >= RELAY_LISTEN_RETRY_MAX_MS) {
    char msg[160];
    snprintf(msg, sizeof msg, "%s", r->lconn ? PQerrorMessage(r->lconn) : "out of memory");
    msg[strcspn(msg, "\n")] = '\0';
    RT_WARN("outbox relay: LISTEN connection down", RT_LF_STR("step", what),
            RT_LF_STR("error", msg));
  }
  PQfinish(r->lconn);
  r->lconn = NULL;
  r->lphase = LISTEN_DOWN;
  if (r->closing) return;
  rt_timer_start(r->th->loop, &r->lretry, r->lretry_ms, 0);
  r->lretry_ms *= 2;
  if (r->lretry_ms > RELAY_LISTEN_RETRY_MAX_MS) r->lretry_ms = RELAY_LISTEN_RETRY_MAX_MS;
  relay_round(r);
}

static void listen_connecting(svc_relay_t *r) {
  switch (PQconnectPoll(r->lconn)) {
  case PGRES_POLLING_READING: listen_wait(r, POLLIN); return;
  case PGRES_POLLING_WRITING: listen_wait(r, POLLOUT); return;
  case PGRES_POLLING_OK: break;
  default: listen_fail(r, "connect"); return;
  }
  if (PQsetnonblocking(r->lconn, 1) != 0 || PQsendQuery(r->lconn, "LISTEN " RELAY_CHANNEL) != 1) {
    listen_fail(r, "listen");
    return;
  }
  r->lphase = LISTEN_UP;
  r->lretry_ms = RELAY_LISTEN_RETRY_MIN_MS;
  /* Rows committed before LISTEN took effect were not notified. */
  relay_round(r);
  int f = PQflush(r->lconn);
  if (f < 0) listen_fail(r, "listen");
  else listen_wait(r, f == 1 ? POLLIN | POLLOUT : POLLIN);
}

/* Reads what the server sent: the LISTEN's own result, notifications. */
static void listen_readable(svc_relay_t *r) {
  int f = PQflush(r->lconn);
  if (f < 0 || PQconsumeInput(r->lconn) != 1) {
    listen_fail(r, "read");
    return;
  }
  /* Bounded: libpq holds only what this read brought in. */
  while (!PQisBusy(r->lconn)) {
    PGresult *res = PQgetResult(r->lconn);
    if (res == NULL) break;
    bool bad = PQresultStatus(res) == PGRES_FATAL_ERROR;
    PQclear(res);
    if (bad) {
      listen_fail(r, "listen");
      return;
    }
  }
  bool woken = false;
  PGnotify *n;
  while ((n = PQnotifies(r->lconn)) != NULL) {
    PQfreemem(n);
    woken = true;
    atomic_fetch_add_explicit(&svc_bus_stats.relay_notifies, 1, memory_order_relaxed);
  }
  if (woken) relay_round(r);
  listen_wait(r, f == 1 ? POLLIN | POLLOUT : POLLIN);
}

static void on_lpoll(rt_op_t *op, int res, uint32_t flags) {
  (void)flags;
  svc_relay_t *r = op->ctx;
  if (r->closing) {
    PQfinish(r->lconn);
    r->lconn = NULL;
    r->lphase = LISTEN_DOWN;
    return;
  }
  if (res < 0) {
    listen_fail(r, "poll");
  } else if (r->lphase == LISTEN_CONNECTING) {
    listen_connecting(r);
  } else {
    listen_readable(r);
  }
}

static void listen_connect(svc_relay_t *r) {
  if (r->closing || r->lconn != NULL) return;
  r->lconn = PQconnectStart(r->db_url);
  if (r->lconn == NULL || PQstatus(r->lconn) == CONNECTION_BAD) {
    listen_fail(r, "connect");
    return;
  }
  r->lphase = LISTEN_CONNECTING;
  listen_wait(r, POLLOUT);
}

static void lretry_fire(rt_timer_t *t) { listen_connect(t->ctx); }

/* ------------------------------------------------------------------------ */
/* Life cycle                                                               */
/* ------------------------------------------------------------------------ */

int svc_relay_create(svc_relay_t **out, svc_thread_t *th, const bus_client_config_t *bus_cfg,
                     const char *db_url) {
  svc_relay_t *r = calloc(1, sizeof *r);
  if (r == NULL) return -ENOMEM;
  r->th = th;
  r->db_url = db_url;
  r->lretry_ms = RELAY_LISTEN_RETRY_MIN_MS;
  rt_timer_init(&r->tick, relay_tick, r);
  rt_timer_init(&r->lretry, lretry_fire, r);
  bus_client_config_t cfg = *bus_cfg;
  cfg.on_confirm = svc_relay_on_confirm;
  cfg.confirm_arg = r;
  int rc = bus_client_create(&r->bus, th->loop, &cfg);
  if (rc < 0) {
    free(r);
    return rc;
  }
  th->bus = r->bus;
  rc = rt_timer_start(th->loop, &r->tick, RELAY_TICK_MS, RELAY_TICK_MS);
  if (rc < 0) {
    bus_client_destroy(r->bus);
    th->bus = NULL;
    free(r);
    return rc;
  }
  listen_connect(r);
  *out = r;
  return 0;
}

void svc_relay_stop(svc_relay_t *r) {
  if (r == NULL) return;
  r->state = RELAY_STOPPED;
  rt_timer_stop(r->th->loop, &r->tick);
  rt_timer_stop(r->th->loop, &r->lretry);
}

void svc_relay_close(svc_relay_t *r) {
  if (r == NULL || r->closing) return;
  svc_relay_stop(r);
  r->closing = true;
  if (r->bus != NULL) {
    bus_client_destroy(r->bus);
    r->bus = NULL;
    r->th->bus = NULL;
  }
  if (r->lpoll.in_flight) {
    /* on_lpoll finishes the connection once the poll is cancelled. */
    rt_cancel(r->th->loop, &r->lcancel, &r->lpoll, NULL, r);
  } else {
    PQfinish(r->lconn);
    r->lconn = NULL;
  }
}

void svc_relay_free(svc_relay_t *r) {
  if (r == NULL) return;
  PQfinish(r->lconn);
  free(r);
}
