/*
 * svc_relay.c - the outbox relay: rows of the outbox table to the bus.
 *
 * One relay per process, on loop thread 0, with the bus transport it owns
 * (svc_bus.h: busd, or RabbitMQ where BUS_URL says so; "PUB_ACK" below is
 * RabbitMQ's publisher confirm there).
 * A row's way out, with up to RELAY_INFLIGHT_MAX rows on it at once:
 *
 *   scan     SELECT the oldest unpublished rows (id order) that are not
 *            already on their way, as many as there are free slots
 *   publish  bus_publish() each into a slot; the client keeps them until
 *            PUB_ACK and re-sends them itself after a reconnect
 *   confirm  the slot is PUB_ACKed
 *   mark     UPDATE ... SET published_at = now() for the confirmed slots,
 *            committed without waiting for its flush (svc_commit_lazily:
 *            the next hop of a saga commits at the same moment and would
 *            wait behind it); once it commits, the slots are free
 *
 * The steps overlap: a scan may run while earlier rows wait for their
 * PUB_ACK or their mark, so a row committed meanwhile does not wait for
 * the round before it. One scan and one mark at a time; a wake-up during
 * a scan, or a scan that filled every free slot, scans again when it
 * ends. A scan excludes the ids in the slots. Rows also enter slots at
 * their commit (svc_pub_offer: the transaction read its own rows back), which a scan already in flight may return as well: while
 * that can be, the scan's rows are looked up in the slots and those
 * found skipped, so no row is published twice by one relay. While busd is down the
 * slots fill and the relay waits for the client's reconnect (its own
 * back-off); no rows are read meanwhile.
 *
 * Rows are marked only after their PUB_ACK, so a crash (ours, busd's, the
 * database's) at any point leaves them unmarked and they are sent again:
 * at-least-once, duplicates absorbed by the consumers' inbox. A failed
 * scan or mark frees what it held (a failed mark's rows are sent again by
 * a later scan); scans resume at the next tick, with a back-off that
 * doubles while failures last.
 *
 * Wake-ups: the thread's database pool keeps a listener connection on
 * channel svc_outbox (rt_pg_listen; common migration 0003 notifies at
 * every commit that inserted outbox rows); each notification, and each
 * time the LISTEN takes effect again after a reconnect, starts a scan.
 * (Scanning at once when a transaction of this thread commits, without
 * waiting for the notification, was measured slower: the extra scans
 * cost more than the wake-up they save.)
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

#define RELAY_INFLIGHT_MAX 256     /* rows published and not yet marked */
#define RELAY_TICK_MS 1000         /* fallback scan period */
#define RELAY_BACKOFF_MAX_MS 10000 /* after repeated failures */
#define RELAY_DEADLINE_MS 30000    /* per scan or mark transaction */
#define RELAY_CHANNEL "svc_outbox"
#define RELAY_COUNT_TICKS 5        /* backlog count every 5 ticks */
#define RELAY_IDS_BYTES (2 + RELAY_INFLIGHT_MAX * 37) /* "{" + ids * (36 + ",") + "}" */

_Static_assert(RELAY_INFLIGHT_MAX <= 1024, "the bus client keeps 1024 unconfirmed publishes");
_Static_assert(RELAY_INFLIGHT_MAX <= UINT16_MAX, "slot numbers are 16-bit");

svc_bus_stats_t svc_bus_stats;

static int stmt_scan, stmt_fetch, stmt_quiet, stmt_notify, stmt_mark, stmt_count;

/* The headers the outbox keeps (svc.h), in the order of the scan's
 * columns 4.. */
static const char *const header_names[] = {"event-id",    "type",           "schema-version",
                                           "occurred-at", "correlation-id", "causation-id"};
#define HEADERS_COUNT (sizeof header_names / sizeof header_names[0])

/* What publishing a row needs, in the order publish_row() reads. */
#define RELAY_COLUMNS                                                                             \
  "id::text, topic, key, payload::text, headers->>'event-id', headers->>'type',"                  \
  " headers->>'schema-version', headers->>'occurred-at', headers->>'correlation-id',"              \
  " headers->>'causation-id'"

static const svc_stmt_t stmts[] = {
    /* The oldest unpublished rows (UUID v7 ids: time order) not already
     * on their way ($2, the ids in the relay's slots). */
    {&stmt_scan,
     "SELECT " RELAY_COLUMNS
     " FROM outbox WHERE published_at IS NULL AND id <> ALL($2::uuid[])"
     " ORDER BY id LIMIT $1::int",
     2},
    /* A transaction's own rows, read back as its last statement
     * (svc_pub_fetch): $1 the ids of the events it may have written. */
    {&stmt_fetch,
     "SELECT " RELAY_COLUMNS
     " FROM outbox WHERE id = ANY($1::uuid[]) AND published_at IS NULL ORDER BY id",
     1},
    /* No NOTIFY from this transaction's outbox rows (common migration
     * 0007); and the one it then owes after all. */
    {&stmt_quiet, "SELECT set_config('svc.outbox_notify', 'off', true)", 0},
    {&stmt_notify, "SELECT pg_notify('" RELAY_CHANNEL "', '')", 0},
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

/* A slot's life: FREE -> SENT (published) -> CONFIRMED (PUB_ACKed) ->
 * MARKING (in the mark in flight) -> FREE, or MARKED -> FREE when a scan
 * that began before its row was offered is still in flight. */
typedef enum slot_state {
  SLOT_FREE = 0,
  SLOT_SENT,
  SLOT_CONFIRMED,
  SLOT_MARKING,
  SLOT_MARKED,   /* marked, kept until the scan in flight ends: it began
                  * before the row was offered and may return it */
} slot_state_t;

typedef struct relay_slot {
  uint8_t id[BUS_ID_BYTES];
  slot_state_t state;
} relay_slot_t;

struct svc_relay {
  svc_thread_t *th;
  svc_bus_t *bus;
  bool stopped;
  bool scanning;           /* a scan is in flight */
  bool marking;            /* a mark is in flight */
  bool again;              /* scan again when the scan in flight ends */
  uint32_t scan_limit;     /* rows the scan in flight asked for */
  bool failing;            /* the last scan or mark failed: logged once */
  uint32_t backoff_ms;     /* 0 while scans and marks succeed */
  uint64_t not_before_ns;  /* no scan before (back-off) */
  uint32_t confirmed;      /* slots CONFIRMED */
  uint32_t free_count;     /* slots FREE: free_stack[0 .. free_count) */
  uint16_t free_stack[RELAY_INFLIGHT_MAX];
  relay_slot_t slots[RELAY_INFLIGHT_MAX];
  rt_timer_t tick;
  uint64_t ticks;
  bool counting;           /* a backlog count is in flight */
  bool offered;            /* rows taken at their commit since the last scan
                            * began: its rows may be on their way already */
};

static void relay_scan(svc_relay_t *r);
static void relay_mark(svc_relay_t *r);

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
/* Slots                                                                    */
/* ------------------------------------------------------------------------ */

static void slots_init(svc_relay_t *r) {
  for (uint32_t i = 0; i < RELAY_INFLIGHT_MAX; i++) {
    r->slots[i].state = SLOT_FREE;
    r->free_stack[i] = (uint16_t)(RELAY_INFLIGHT_MAX - 1 - i);
  }
  r->free_count = RELAY_INFLIGHT_MAX;
  r->confirmed = 0;
}

static void slot_free(svc_relay_t *r, uint32_t i) {
  assert(i < RELAY_INFLIGHT_MAX);
  assert(r->slots[i].state != SLOT_FREE);
  assert(r->free_count < RELAY_INFLIGHT_MAX);
  if (r->slots[i].state == SLOT_CONFIRMED) r->confirmed--;
  r->slots[i].state = SLOT_FREE;
  r->free_stack[r->free_count++] = (uint16_t)i;
}

static bool slot_taken(slot_state_t st) { return st != SLOT_FREE; }
static bool slot_confirmed(slot_state_t st) { return st == SLOT_CONFIRMED; }

/* The ids of the slots whose state `pick` accepts, as a PostgreSQL array
 * literal. Returns how many. */
static uint32_t slots_ids(const svc_relay_t *r, bool (*pick)(slot_state_t),
                          char out[RELAY_IDS_BYTES]) {
  size_t len = 0;
  uint32_t n = 0;
  out[len++] = '{';
  for (uint32_t i = 0; i < RELAY_INFLIGHT_MAX; i++) {
    if (!pick(r->slots[i].state)) continue;
    if (n++ > 0) out[len++] = ',';
    bus_uuid_format(r->slots[i].id, out + len);
    len += 36;
  }
  out[len++] = '}';
  out[len] = '\0';
  assert(len < RELAY_IDS_BYTES);
  return n;
}

/* ------------------------------------------------------------------------ */
/* Mark: confirmed slots to published rows                                  */
/* ------------------------------------------------------------------------ */

static void mark_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_relay_t *r = ctx;
  if (r->stopped) return;
  assert(r->marking);
  r->marking = false;
  if (err != 0) {
    /* The rows stay unmarked: once their slots are free, a later scan
     * sends them again. */
    relay_failed(r, "mark", err);
  } else {
    atomic_fetch_add_explicit(&svc_bus_stats.relay_published, (uint64_t)rt_pg_affected(b, 1),
                              memory_order_relaxed);
    relay_succeeded(r);
  }
  for (uint32_t i = 0; i < RELAY_INFLIGHT_MAX; i++) {
    if (r->slots[i].state != SLOT_MARKING) continue;
    if (r->scanning && r->offered)
      r->slots[i].state = SLOT_MARKED;
    else
      slot_free(r, i);
  }
  if (r->confirmed > 0) relay_mark(r);
  /* Slots came free: rows a full scan left behind may be waiting. */
  if (r->again) relay_scan(r);
}

/* Marks every confirmed slot, unless a mark is in flight (its end marks
 * what was confirmed meanwhile). */
static void relay_mark(svc_relay_t *r) {
  if (r->marking || r->stopped || r->confirmed == 0) return;
  char ids[RELAY_IDS_BYTES];
  slots_ids(r, slot_confirmed, ids);
  rt_pg_batch_t *b = rt_pg_batch_new(r->th->pool);
  if (b == NULL) {
    /* The slots stay confirmed: the next confirm or tick tries again. */
    relay_failed(r, "mark", -ENOMEM);
    return;
  }
  /* Lazily: a mark lost in a crash only sends its rows again. */
  svc_commit_lazily(b);
  const char *vals[] = {ids};
  rt_pg_add(b, stmt_mark, 1, vals);
  svc_fault("relay_before_mark");
  int rc = rt_pg_submit(b, RELAY_DEADLINE_MS, mark_done, r);
  if (rc < 0) {
    relay_failed(r, "mark", rc);
    return;
  }
  r->marking = true;
  for (uint32_t i = 0; i < RELAY_INFLIGHT_MAX; i++) {
    if (r->slots[i].state == SLOT_CONFIRMED) r->slots[i].state = SLOT_MARKING;
  }
  r->confirmed = 0;
}

static void svc_relay_on_confirm(void *arg, const uint8_t id[BUS_ID_BYTES], int err, void *ctx) {
  svc_relay_t *r = arg;
  uintptr_t i = (uintptr_t)ctx;
  /* BUS_E_CLOSED: the client is being destroyed at drain; the row stays
   * unmarked and is sent again by the next run. */
  if (r->stopped || err == BUS_E_CLOSED) return;
  if (i >= RELAY_INFLIGHT_MAX || r->slots[i].state != SLOT_SENT ||
      memcmp(r->slots[i].id, id, BUS_ID_BYTES) != 0) {
    RT_WARN("outbox relay: confirm for an unknown publish", RT_LF_INT("slot", i));
    return;
  }
  if (err != 0) {
    /* Refused for good: the row stays unmarked; a later scan sends it
     * again. */
    relay_failed(r, "publish", err);
    slot_free(r, (uint32_t)i);
    return;
  }
  r->slots[i].state = SLOT_CONFIRMED;
  r->confirmed++;
  relay_mark(r);
}

/* ------------------------------------------------------------------------ */
/* Scan and publish                                                         */
/* ------------------------------------------------------------------------ */

/* Whether a row with this id is in a slot (on its way). */
static bool slot_holds(const svc_relay_t *r, const uint8_t id[BUS_ID_BYTES]) {
  for (uint32_t i = 0; i < RELAY_INFLIGHT_MAX; i++) {
    if (r->slots[i].state != SLOT_FREE && memcmp(r->slots[i].id, id, BUS_ID_BYTES) == 0)
      return true;
  }
  return false;
}

/* Publishes row i of statement st (RELAY_COLUMNS) into a free slot.
 * Returns 0, 1 when the row can never be sent (skipped, logged), 2 when
 * check is set and the row is on its way already, or BUS_E_FULL. */
static int publish_row(svc_relay_t *r, const rt_pg_batch_t *b, int st, int i, bool check) {
  assert(r->free_count > 0);
  const char *id = rt_pg_value(b, st, i, 0);
  const char *topic = rt_pg_value(b, st, i, 1);
  const char *key = rt_pg_value(b, st, i, 2);
  const char *payload = rt_pg_value(b, st, i, 3);
  bus_header_t hdr[HEADERS_COUNT];
  uint32_t nh = 0;
  for (uint32_t k = 0; k < HEADERS_COUNT; k++) {
    const char *v = rt_pg_value(b, st, i, 4 + (int)k);
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
  uint32_t slot = r->free_stack[r->free_count - 1];
  int rc = uuid_parse(id, pub.id);
  if (rc == 0 && check && slot_holds(r, pub.id)) return 2;
  if (rc == 0 && topic == NULL) rc = -EINVAL;
  if (rc == 0) rc = svc_bus_publish(r->bus, &pub, (void *)(uintptr_t)slot);
  if (rc == BUS_E_FULL) return rc;
  if (rc < 0) {
    /* A row busd can never take (bad topic, too large): it stays in the
     * outbox for an operator, and does not hold up the rows after it. */
    atomic_fetch_add_explicit(&svc_bus_stats.relay_errors, 1, memory_order_relaxed);
    RT_ERROR("outbox row cannot be published", RT_LF_STR("id", id ? id : ""),
             RT_LF_STR("topic", topic ? topic : ""), RT_LF_STR("error", rt_strerror(rc)));
    return 1;
  }
  r->free_count--;
  memcpy(r->slots[slot].id, pub.id, BUS_ID_BYTES);
  r->slots[slot].state = SLOT_SENT;
  atomic_fetch_add_explicit(&svc_bus_stats.relay_sent, 1, memory_order_relaxed);
  return 0;
}

/* The scan that might have returned their rows has ended. */
static void marked_free(svc_relay_t *r) {
  for (uint32_t i = 0; i < RELAY_INFLIGHT_MAX; i++) {
    if (r->slots[i].state == SLOT_MARKED) slot_free(r, i);
  }
}

static void scan_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_relay_t *r = ctx;
  if (r->stopped) return;
  assert(r->scanning);
  r->scanning = false;
  if (err != 0) {
    marked_free(r);
    relay_failed(r, "scan", err);
    return; /* the tick scans again after the back-off */
  }
  int n = rt_pg_rows(b, 0);
  if (n > 0) svc_fault("relay_before_publish");
  /* The scan asked for at most scan_limit rows, as many as were free
   * then; rows taken at their commit meanwhile may have used some, and
   * may be among these. */
  assert(n >= 0);
  assert((uint32_t)n <= r->scan_limit);
  bool check = r->offered;
  uint32_t sent = 0, dups = 0;
  bool full = false;
  for (int i = 0; i < n; i++) {
    if (r->free_count == 0) {
      full = true; /* the rest with the scan after the next mark */
      break;
    }
    int rc = publish_row(r, b, 0, i, check);
    if (rc == 2) dups++;
    if (rc == BUS_E_FULL) {
      /* The client holds too many bytes: the rest comes with a later
       * scan, once confirms free some. */
      full = true;
      break;
    }
    if (rc == 0) sent++;
  }
  marked_free(r);
  if (n > 0 && sent == 0 && (full || dups < (uint32_t)n)) {
    relay_failed(r, "publish", full ? BUS_E_FULL : -EINVAL);
    return;
  }
  relay_succeeded(r);
  /* A scan that returned all it asked for may have left rows. */
  if (full || (uint32_t)n == r->scan_limit) r->again = true;
  if (r->again) relay_scan(r);
}

/* Starts a scan when none is in flight, a slot is free and the back-off
 * allows; otherwise remembers to scan again when the one in flight, or
 * the mark that frees slots, ends. */
static void relay_scan(svc_relay_t *r) {
  if (r->stopped) return;
  if (r->scanning || r->free_count == 0) {
    r->again = true;
    return;
  }
  if (rt_loop_now_ns(r->th->loop) < r->not_before_ns) return; /* the tick retries */
  r->again = false;
  char ids[RELAY_IDS_BYTES];
  slots_ids(r, slot_taken, ids);
  char limit[16];
  snprintf(limit, sizeof limit, "%u", r->free_count);
  rt_pg_batch_t *b = rt_pg_batch_new(r->th->pool);
  if (b == NULL) {
    relay_failed(r, "scan", -ENOMEM);
    return;
  }
  const char *vals[] = {limit, ids};
  rt_pg_add(b, stmt_scan, 2, vals);
  int rc = rt_pg_submit(b, RELAY_DEADLINE_MS, scan_done, r);
  if (rc < 0) {
    relay_failed(r, "scan", rc);
    return;
  }
  r->scanning = true;
  r->scan_limit = r->free_count;
  r->offered = false;
}

/* ------------------------------------------------------------------------ */
/* Publishing at the commit                                                 */
/* ------------------------------------------------------------------------ */

static svc_relay_t *thread_relay(svc_thread_t *th) {
  return th != NULL ? ((svc_th_t *)th)->relay : NULL;
}

bool svc_pub_quiet(svc_thread_t *th, rt_pg_batch_t *b) {
  svc_relay_t *r = thread_relay(th);
  if (r == NULL || r->stopped) return false;
  return rt_pg_add(b, stmt_quiet, 0, NULL) >= 0;
}

int svc_pub_fetch(svc_thread_t *th, rt_pg_batch_t *b, const char *ids, bool quiet) {
  svc_relay_t *r = thread_relay(th);
  int i = r == NULL || r->stopped || ids == NULL ? -1 : rt_pg_add(b, stmt_fetch, 1, &ids);
  /* Left to a scan, which the quiet transaction must still wake. */
  if (i < 0 && quiet) rt_pg_add(b, stmt_notify, 0, NULL);
  return i < 0 ? -1 : i;
}

int svc_emits_fetch(const svc_emits_t *e) {
  if (e->n == 0 && !e->overflow) return -1; /* wrote no event */
  if (e->overflow) return svc_pub_fetch(e->th, e->batch, NULL, e->quiet);
  char ids[2 + SVC_EMITS_MAX * 37];
  size_t at = 0;
  ids[at++] = '{';
  for (uint32_t i = 0; i < e->n; i++) {
    if (i > 0) ids[at++] = ',';
    memcpy(ids + at, e->ids[i], 36);
    at += 36;
  }
  ids[at++] = '}';
  ids[at] = '\0';
  assert(at < sizeof ids);
  return svc_pub_fetch(e->th, e->batch, ids, e->quiet);
}

void svc_pub_offer(svc_thread_t *th, const rt_pg_batch_t *b, int stmt) {
  svc_relay_t *r = thread_relay(th);
  if (r == NULL || r->stopped || stmt < 0) return;
  int n = rt_pg_rows(b, stmt);
  if (n <= 0) return;
  /* Backing off after failures: the scan's turn. */
  if (r->backoff_ms > 0) {
    relay_scan(r);
    return;
  }
  svc_fault("relay_before_publish");
  for (int i = 0; i < n; i++) {
    int rc = r->free_count > 0 ? publish_row(r, b, stmt, i, true) : BUS_E_FULL;
    if (rc == BUS_E_FULL) {
      relay_scan(r); /* the rest: now, or after the next mark frees slots */
      return;
    }
    if (rc == 0) {
      r->offered = true;
      atomic_fetch_add_explicit(&svc_bus_stats.relay_direct, 1, memory_order_relaxed);
    }
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
  relay_mark(r);
  relay_scan(r);
}

/* The pool's listener: a notification, or LISTEN (again) in effect, after
 * which rows committed while it was down are looked for. */
static void relay_notified(void *arg, rt_pg_notify_t what) {
  svc_relay_t *r = arg;
  if (what == RT_PG_NOTIFIED)
    atomic_fetch_add_explicit(&svc_bus_stats.relay_notifies, 1, memory_order_relaxed);
  relay_scan(r);
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                               */
/* ------------------------------------------------------------------------ */

int svc_relay_create(svc_relay_t **out, svc_thread_t *th, const svc_bus_config_t *bus_cfg) {
  svc_relay_t *r = calloc(1, sizeof *r);
  if (r == NULL) return -ENOMEM;
  r->th = th;
  slots_init(r);
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
  r->stopped = true;
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
