/*
 * mover.c - money movements in batches: one transaction for many.
 *
 * A movement alone costs a read, a transaction, a commit (one WAL flush)
 * and a NOTIFY. Most of that is the same for ten movements as for one, so
 * each loop thread gathers the movements that arrive while its earlier
 * batches are at the database and sends them as one call of move_batch()
 * (migration 0004), which checks, guards and answers each one on its own.
 *
 * Life of a movement request:
 *   1. account.c checks the body and the Idempotency-Key header, fills the
 *      request's account_move_t and calls account_mover_add(): the request
 *      joins the thread's queue (intrusive, through account_move_t.next:
 *      no allocation; its length is bounded by the requests the thread
 *      takes at once). If no flush is due yet, one is armed: a timer of
 *      ACCOUNT_MOVE_WINDOW ms (0: the top of the next loop iteration, so
 *      every request parsed in this iteration goes in the same batch).
 *   2. The flush takes up to ACCOUNT_MOVE_BATCH_MAX requests off the queue
 *      into a free batch slot, while fewer than ACCOUNT_MOVE_BATCHES
 *      batches are in flight; the rest wait for a slot. So under light
 *      load a movement goes at once, alone; under heavy load the batches
 *      grow by themselves, as in group commit, and the database does one
 *      round of work per batch instead of per movement.
 *   3. The slot's document: one JSON array, an element per movement (ids
 *      and the event made here, in C, as for a movement alone, and its
 *      wave: see number_waves()), written into the slot's own buffer,
 *      sized at start-up for a full batch.
 *   4. The answer: one row per movement, in order. 201 with the body the
 *      database rendered; a refusal with its code (nothing written, no key
 *      claimed, as for a movement alone); insufficient funds (stored under
 *      the key); "duplicate": the key was claimed before, and the request
 *      runs alone (account_move_alone()), which replays what is stored.
 *   5. A batch that failed as a whole: when the server rolled it back
 *      (any SQL error, a deadlock), nothing of it happened and each of its
 *      requests runs alone, so a failure stays with its own movement. When
 *      its outcome is unknown (connection lost, deadline), each is answered
 *      503, as a movement alone would be: a retry with the same key replays.
 *      The slot is free again, and the queue is flushed at once.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account.h"

#define MOVER_ITEM_BYTES 2048 /* one movement's element: ids ~450 B, event ~1 KiB */

_Static_assert(SVC_IDEM_KEY_BYTES_MAX + 2 * SVC_SUBJECT_BYTES_MAX + 1024 < MOVER_ITEM_BYTES,
               "an element fits its share of the document");

static struct {
  uint32_t batch_max; /* movements per batch */
  uint32_t batches;   /* batches in flight per loop thread */
  uint32_t window_ms; /* the longest a movement waits for company */
} cfg;

static int s_batch;

/* Counted on every loop thread, read by /metrics. */
static struct {
  atomic_uint_fast64_t batches;    /* sent */
  atomic_uint_fast64_t movements;  /* in them */
  atomic_uint_fast64_t alone;      /* run alone: duplicates, batches rolled back */
  atomic_uint_fast64_t rolled_back;
} stats;

const svc_stmt_t account_mover_stmts[] = {
    /* $1 the movements (JSON array), $2 the insufficient-funds answer, $3
     * hours a key is kept. Rows: (item, status, code, body). */
    {&s_batch, "SELECT out_i, out_status, out_code, out_body FROM move_batch($1::jsonb, $2, $3::int)",
     3},
};
const size_t account_mover_stmts_count = sizeof account_mover_stmts / sizeof account_mover_stmts[0];

typedef struct mover_batch {
  account_mover_t *m;
  bool busy;
  uint32_t count;
  svc_req_t **reqs;  /* batch_max */
  bool *answered;    /* batch_max: a row came back for it */
  uint32_t *waves;   /* batch_max: each movement's wave (move_batch()) */
  char *doc;         /* batch_max * MOVER_ITEM_BYTES */
  char *ids;         /* batch_max * 37 + 2: its events' ids, "{id,id}" */
  int stmt;          /* move_batch()'s statement in the batch */
  int fetch;         /* the read-back of its outbox rows (svc_pub_fetch) */
} mover_batch_t;

struct account_mover {
  svc_thread_t *th;
  rt_timer_t flush;
  bool flush_armed;
  svc_req_t *head, *tail; /* waiting for a batch, oldest first */
  uint32_t queued;
  uint32_t in_flight;
  mover_batch_t *slots;   /* cfg.batches */
};

int account_mover_config(void) {
  int rc = rt_env_u32("ACCOUNT_MOVE_BATCH_MAX", 128, 1, 1024, &cfg.batch_max);
  if (rc == 0) rc = rt_env_u32("ACCOUNT_MOVE_BATCHES", 2, 1, 64, &cfg.batches);
  if (rc == 0) rc = rt_env_ms("ACCOUNT_MOVE_WINDOW", 0, &cfg.window_ms);
  /* A full batch's document must fit what one batch may carry. */
  if (rc == 0 && (uint64_t)cfg.batch_max * MOVER_ITEM_BYTES > RT_PG_BATCH_BYTES_MAX) {
    RT_ERROR("ACCOUNT_MOVE_BATCH_MAX too large for one database batch",
             RT_LF_INT("batch_max", cfg.batch_max),
             RT_LF_INT("max", RT_PG_BATCH_BYTES_MAX / MOVER_ITEM_BYTES));
    rc = RT_E_CONFIG;
  }
  return rc;
}

/* ------------------------------------------------------------------------ */
/* The document                                                             */
/* ------------------------------------------------------------------------ */

/* "name":"value" or "name":null. Every string written here is an id, a
 * code or a subject or key of a checked alphabet (no quote, no
 * backslash), or JSON made by this service. */
static size_t put_str(char *out, size_t cap, const char *name, const char *value) {
  int n = value == NULL ? snprintf(out, cap, ",\"%s\":null", name)
                        : snprintf(out, cap, ",\"%s\":\"%s\"", name, value);
  assert(n > 0);
  assert((size_t)n < cap); /* each element's size is bounded: MOVER_ITEM_BYTES */
  return (size_t)n;
}

static bool plain(const char *s) { return s == NULL || strpbrk(s, "\"\\") == NULL; }

/* Appends movement i of the batch; returns its length, or 0 when it does
 * not fit, which cannot happen: the element's size is bounded above
 * (MOVER_ITEM_BYTES), and the caller treats 0 with NEVER. */
static size_t put_item(char *out, size_t cap, uint32_t i, uint32_t wave, svc_req_t *req,
                       char event_id[37]) {
  account_move_t *mv = SVC_STATE(req, account_move_t);
  const char *debit = mv->kind == ACCOUNT_MOVE_TOPUP ? mv->other : mv->account;
  const char *credit = mv->kind == ACCOUNT_MOVE_TOPUP ? mv->account : mv->other;
  assert(i < cfg.batch_max); /* the row index names a movement of the batch */
  assert(mv->amount > 0);    /* validated before it was queued */
  char tx[37], e1[37], e2[37], payload[400];
  svc_uuid7(tx);
  svc_uuid7(e1);
  svc_uuid7(e2);
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit_t ev;
  svc_emit_prepare(&ev, account_move_event(mv->kind), &trace);
  memcpy(event_id, ev.id, sizeof ev.id);
  account_move_payload(mv, tx, payload, sizeof payload);
  const char *owner = account_move_owner(req, mv);
  const char *scope = svc_idem_scope(&mv->idem), *key = svc_idem_key(&mv->idem);
  assert(plain(owner));
  assert(plain(scope));
  assert(plain(key));
  size_t len = 0;
  int n = snprintf(out, cap,
                   "{\"i\":%" PRIu32 ",\"w\":%" PRIu32 ",\"amount\":%" PRId64
                   ",\"payload\":%s,\"headers\":%s",
                   i, wave, mv->amount, payload, ev.headers);
  if (n < 0 || (size_t)n >= cap) return 0;
  len = (size_t)n;
  len += put_str(out + len, cap - len, "kind", account_move_kind_name(mv->kind));
  len += put_str(out + len, cap - len, "tx", tx);
  len += put_str(out + len, cap - len, "debit", debit);
  len += put_str(out + len, cap - len, "credit", credit);
  len += put_str(out + len, cap - len, "currency", mv->currency);
  len += put_str(out + len, cap - len, "owner", owner);
  len += put_str(out + len, cap - len, "mine", mv->account);
  len += put_str(out + len, cap - len, "other", mv->other);
  len += put_str(out + len, cap - len, "scope", scope);
  len += put_str(out + len, cap - len, "key", key);
  len += put_str(out + len, cap - len, "hash", key != NULL ? mv->idem.hash : NULL);
  len += put_str(out + len, cap - len, "e1", e1);
  len += put_str(out + len, cap - len, "e2", e2);
  len += put_str(out + len, cap - len, "event", ev.id);
  len += put_str(out + len, cap - len, "topic", ev.topic);
  if (len + 2 > cap) return 0;
  out[len++] = '}';
  out[len] = '\0';
  return len;
}

/* ------------------------------------------------------------------------ */
/* Answers                                                                  */
/* ------------------------------------------------------------------------ */

static void answer(svc_req_t *req, int status, const char *code, const char *body) {
  rt_log_set_request_id(http_request_id(req->ex));
  if (status == 201 && body != NULL) {
    svc_reply_raw(req, 201, body, strlen(body), NULL);
  } else if (strcmp(code, "duplicate") == 0) {
    atomic_fetch_add_explicit(&stats.alone, 1, memory_order_relaxed);
    account_move_alone(req); /* the stored answer, replayed */
  } else if (strcmp(code, "insufficient_funds") == 0) {
    svc_reply_raw(req, 422, account_insufficient_body, strlen(account_insufficient_body), NULL);
  } else if (strcmp(code, "account_not_found") == 0) {
    svc_reply_error(req, 404, "account_not_found", "no such account");
  } else if (strcmp(code, "destination_not_found") == 0) {
    svc_reply_error(req, 404, "account_not_found", "no such destination account");
  } else if (strcmp(code, "currency_mismatch") == 0) {
    svc_reply_error(req, 422, "currency_mismatch", "the currency differs from the account's");
  } else if (strcmp(code, "account_closed") == 0) {
    svc_reply_error(req, 422, "account_closed", "the account is not open (closed or frozen)");
  } else if (strcmp(code, "amount_out_of_range") == 0) {
    svc_reply_error(req, 422, "amount_out_of_range", "the resulting balance would overflow");
  } else {
    RT_ERROR("movement batch: unknown outcome", RT_LF_STR("code", code),
             RT_LF_INT("status", status));
    svc_reply_error(req, 500, "internal", "internal error");
  }
  rt_log_set_request_id(NULL);
}

/* The server rolled the batch back: nothing of it happened. */
static bool rolled_back(int err) {
  return err <= RT_PG_E_UNIQUE && err >= RT_PG_E_SQL && err != RT_PG_E_STATEMENT_TIMEOUT;
}

static void mover_kick(account_mover_t *m);

/* Answers every request of the slot with err (503 and friends, as a
 * movement alone would be) and frees the slot. */
static void fail_batch(mover_batch_t *bt, int err) {
  for (uint32_t i = 0; i < bt->count; i++) {
    rt_log_set_request_id(http_request_id(bt->reqs[i]->ex));
    svc_reply_db_error(bt->reqs[i], err, NULL);
    rt_log_set_request_id(NULL);
  }
  bt->busy = false;
  bt->count = 0;
}

static void batch_done(rt_pg_batch_t *b, int err, void *ctx) {
  mover_batch_t *bt = ctx;
  account_mover_t *m = bt->m;
  assert(bt->busy);
  if (err != 0 && !rolled_back(err)) {
    fail_batch(bt, err); /* its outcome is unknown */
  } else if (err != 0) {
    atomic_fetch_add_explicit(&stats.rolled_back, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&stats.alone, bt->count, memory_order_relaxed);
    const rt_pg_error_t *e = rt_pg_error(b);
    RT_WARN("movement batch rolled back: its movements run alone",
            RT_LF_STR("error", rt_strerror(err)), RT_LF_STR("sqlstate", e ? e->sqlstate : ""),
            RT_LF_INT("movements", bt->count));
    for (uint32_t i = 0; i < bt->count; i++) {
      rt_log_set_request_id(http_request_id(bt->reqs[i]->ex));
      account_move_alone(bt->reqs[i]);
      rt_log_set_request_id(NULL);
    }
  } else {
    /* Its events go out now, before the answers. */
    svc_pub_offer(m->th, b, bt->fetch);
    bool *answered = bt->answered;
    memset(answered, 0, bt->count * sizeof *answered);
    int st = bt->stmt;
    int rows = rt_pg_rows(b, st);
    for (int r = 0; r < rows; r++) {
      int64_t i = -1, status = 0;
      if (rt_pg_int64(b, st, r, 0, &i) != 0 || i < 0 || (uint64_t)i >= bt->count ||
          answered[i] || rt_pg_int64(b, st, r, 1, &status) != 0) {
        RT_ERROR("movement batch: a row that names no movement", RT_LF_INT("row", r));
        continue;
      }
      answered[i] = true;
      const char *code = rt_pg_value(b, st, r, 2);
      answer(bt->reqs[i], (int)status, code != NULL ? code : "", rt_pg_value(b, st, r, 3));
    }
    for (uint32_t i = 0; i < bt->count; i++) {
      if (answered[i]) continue;
      RT_ERROR("movement batch: a movement got no row", RT_LF_INT("item", i));
      answer(bt->reqs[i], 500, "", NULL);
    }
  }
  bt->busy = false;
  bt->count = 0;
  assert(m->in_flight > 0);
  m->in_flight--;
  mover_kick(m);
}

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

static bool shares_account(const account_move_t *a, const account_move_t *b) {
  return strcmp(a->account, b->account) == 0 || strcmp(a->account, b->other) == 0 ||
         strcmp(a->other, b->account) == 0 || strcmp(a->other, b->other) == 0;
}

/* Numbers the waves: one more than the last wave of an earlier movement
 * that touches either account. No account twice in a wave; an account's
 * movements in arrival order. O(n^2) over at most batch_max movements,
 * a few microseconds against the batch's round trip. */
static void number_waves(mover_batch_t *bt) {
  for (uint32_t i = 0; i < bt->count; i++) {
    const account_move_t *mi = SVC_STATE(bt->reqs[i], account_move_t);
    uint32_t w = 1;
    for (uint32_t j = 0; j < i; j++) {
      if (bt->waves[j] >= w && shares_account(mi, SVC_STATE(bt->reqs[j], account_move_t))) {
        w = bt->waves[j] + 1;
      }
    }
    bt->waves[i] = w;
  }
}

/* Sends the slot's requests as one call. */
static void batch_send(account_mover_t *m, mover_batch_t *bt) {
  size_t cap = (size_t)cfg.batch_max * MOVER_ITEM_BYTES, len = 0;
  assert(bt->busy);
  assert(bt->count > 0);
  assert(bt->count <= cfg.batch_max);
  number_waves(bt);
  size_t at = 0;
  bt->doc[len++] = '[';
  bt->ids[at++] = '{';
  for (uint32_t i = 0; i < bt->count; i++) {
    if (i > 0) bt->doc[len++] = ',';
    if (i > 0) bt->ids[at++] = ',';
    size_t n = put_item(bt->doc + len, cap - len - 1, i, bt->waves[i], bt->reqs[i], bt->ids + at);
    if (NEVER(n == 0)) { /* bounded by MOVER_ITEM_BYTES per movement */
      fail_batch(bt, -ENOSPC);
      return;
    }
    len += n;
    at += 36;
  }
  bt->doc[len++] = ']';
  bt->doc[len] = '\0';
  bt->ids[at++] = '}';
  bt->ids[at] = '\0';
  assert(at <= (size_t)cfg.batch_max * 37 + 1);
  rt_pg_batch_t *b = rt_pg_batch_new(m->th->pool);
  if (b == NULL) {
    fail_batch(bt, RT_PG_E_POOL_FULL);
    return;
  }
  char hours[16];
  snprintf(hours, sizeof hours, "%d", SVC_IDEM_KEEP_HOURS);
  /* Its events are published at the commit (svc_pub_*): no NOTIFY. */
  bool quiet = svc_pub_quiet(m->th, b);
  const char *vals[] = {bt->doc, account_insufficient_body, hours};
  bt->stmt = rt_pg_add(b, s_batch, 3, vals);
  bt->fetch = svc_pub_fetch(m->th, b, bt->ids, quiet);
  m->in_flight++;
  atomic_fetch_add_explicit(&stats.batches, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&stats.movements, bt->count, memory_order_relaxed);
  int rc = rt_pg_submit(b, 0, batch_done, bt); /* frees b on error */
  if (rc < 0) {
    m->in_flight--;
    fail_batch(bt, rc);
  }
}

/* Fills free slots from the queue, oldest first. */
static void mover_kick(account_mover_t *m) {
  for (uint32_t s = 0; s < cfg.batches && m->queued > 0; s++) {
    mover_batch_t *bt = &m->slots[s];
    if (bt->busy) continue;
    bt->busy = true;
    while (m->head != NULL && bt->count < cfg.batch_max) {
      svc_req_t *req = m->head;
      account_move_t *mv = SVC_STATE(req, account_move_t);
      m->head = mv->next;
      mv->next = NULL;
      m->queued--;
      bt->reqs[bt->count++] = req;
    }
    if (m->head == NULL) m->tail = NULL;
    batch_send(m, bt);
  }
}

static void on_flush(rt_timer_t *t) {
  account_mover_t *m = t->ctx;
  m->flush_armed = false;
  mover_kick(m);
}

void account_mover_add(account_mover_t *m, svc_req_t *req) {
  account_move_t *mv = SVC_STATE(req, account_move_t);
  assert(mv->amount > 0);
  mv->next = NULL;
  if (m->tail != NULL) SVC_STATE(m->tail, account_move_t)->next = req;
  else m->head = req;
  m->tail = req;
  m->queued++;
  if (m->flush_armed || m->in_flight >= cfg.batches) return; /* a completion flushes */
  if (rt_timer_start(m->th->loop, &m->flush, cfg.window_ms, 0) == 0) {
    m->flush_armed = true;
  } else {
    mover_kick(m); /* no timer to be had: no waiting for company either */
  }
}

void account_mover_metrics(wire_metrics_t *m) {
  wire_metrics_counter(m, "account_move_batches_total", "Movement batches sent to the database.",
                       atomic_load(&stats.batches));
  wire_metrics_counter(m, "account_move_batched_total", "Movements sent in those batches.",
                       atomic_load(&stats.movements));
  wire_metrics_counter(m, "account_move_alone_total",
                       "Movements run alone after their batch: keys claimed before, batches"
                       " rolled back.",
                       atomic_load(&stats.alone));
  wire_metrics_counter(m, "account_move_batches_rolled_back_total",
                       "Batches the database rolled back as a whole.",
                       atomic_load(&stats.rolled_back));
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                               */
/* ------------------------------------------------------------------------ */

account_mover_t *account_mover_create(svc_thread_t *th) {
  account_mover_t *m = calloc(1, sizeof *m);
  if (m == NULL) return NULL;
  m->th = th;
  rt_timer_init(&m->flush, on_flush, m);
  m->slots = calloc(cfg.batches, sizeof *m->slots);
  if (m->slots == NULL) {
    free(m);
    return NULL;
  }
  for (uint32_t s = 0; s < cfg.batches; s++) {
    m->slots[s].m = m;
    m->slots[s].reqs = calloc(cfg.batch_max, sizeof *m->slots[s].reqs);
    m->slots[s].answered = calloc(cfg.batch_max, sizeof *m->slots[s].answered);
    m->slots[s].waves = calloc(cfg.batch_max, sizeof *m->slots[s].waves);
    m->slots[s].doc = malloc((size_t)cfg.batch_max * MOVER_ITEM_BYTES + 2);
    m->slots[s].ids = malloc((size_t)cfg.batch_max * 37 + 2);
    if (m->slots[s].reqs == NULL || m->slots[s].answered == NULL || m->slots[s].waves == NULL ||
        m->slots[s].doc == NULL || m->slots[s].ids == NULL) {
      account_mover_free(m);
      return NULL;
    }
  }
  return m;
}

void account_mover_free(account_mover_t *m) {
  if (m == NULL) return;
  assert(m->queued == 0);
  assert(m->in_flight == 0);
  if (m->flush_armed) rt_timer_stop(m->th->loop, &m->flush);
  for (uint32_t s = 0; s < cfg.batches && m->slots != NULL; s++) {
    free(m->slots[s].reqs);
    free(m->slots[s].answered);
    free(m->slots[s].waves);
    free(m->slots[s].doc);
    free(m->slots[s].ids);
  }
  free(m->slots);
  free(m);
}
