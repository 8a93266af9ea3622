/*
 * svc_consume.c - the consumer table: each delivered event applied once,
 * in one transaction, then ACKed.
 *
 * Life of a delivery (loop thread 0, which owns the bus client):
 *   1. DELIVER: a context from the fixed pool (its size is the sum of the
 *      subscriptions' windows, so a delivery always finds one); the event
 *      id, key, attempt and trace headers copied in; the payload parsed
 *      once by jansson into the context's own arena (no heap allocation
 *      unless a payload is larger than the arena: counted).
 *   2. A batch: the inbox claim of the event id (claims, scope '#inbox'),
 *      then whatever the handler's apply() adds (with, before its first
 *      event, no NOTIFY for its outbox rows: svc_pub_quiet), then the
 *      read-back of the outbox rows of the events it prepared; submitted.
 *   3. The commit: done() reads the results (applied, or absorbed when no
 *      transition was allowed); the rows read back go to the relay to be
 *      published now (svc_pub_offer); the delivery is ACKed.
 *      A duplicate fails at its claim (statement 0, unique violation):
 *      nothing of it committed; it is only ACKed. A database that is
 *      down or busy (svc_db_transient()) says nothing about the event:
 *      the delivery is kept and tried again here, after a backoff, for as
 *      long as it takes, so an outage never dead-letters good events.
 *      Any other failure is NACKed with its reason, for busd's retry and,
 *      in the end, the dead letter's x-dead-error.
 *   4. The context goes back to the pool; its arena with it (the headers
 *      were copied there too, for apply() to read on a retry).
 *
 * Every log line written on the way carries the event's correlation id.
 * A crash anywhere before the ACK only makes busd deliver it again, and
 * the claim absorbs it.
 *
 * A consumer with apply_many (svc.h) takes steps 2 and 3 for many
 * deliveries at once: they queue; the first to find no batch at the
 * database waits CONSUME_BATCH_WINDOW for others, those that arrive while
 * one is there go when it is back; one transaction for the batch, whose
 * statements claim (a duplicate does not abort the others) and apply;
 * then each is ACKed. A batch the database refuses goes again one
 * delivery at a time, so a poisoned event is NACKed alone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc_internal.h"

#define ARENA_BYTES (16u * 1024u) /* a payload's parse; events are ~0.5 KiB */
#define RETRY_FIRST_MS 100u       /* a transient failure: again after this, */
#define RETRY_MAX_MS 5000u        /* doubling up to this */

typedef struct consume_sub {
  svc_consume_t *c;
  const svc_consumer_t *consumer;
} consume_sub_t;

typedef struct consume_ctx {
  svc_event_t ev;                 /* the handler's view */
  svc_consume_t *c;
  const svc_consumer_t *consumer;
  uint32_t sub;                   /* the bus subscription, for ACK/NACK */
  uint32_t partition;
  uint64_t offset;
  json_t *payload;
  uint8_t *headers_heap;          /* the headers' copy when not in the arena */
  rt_timer_t retry;               /* a transient failure's wait */
  int fetch;                      /* the read-back of the outbox rows of the
                                  * events apply() prepared, -1: none */
  uint32_t retries;
  bool alone;                     /* apply_many: its batch failed, so it
                                  * goes alone from now on */
  struct consume_ctx *waiting_next;
  struct consume_ctx *queue_next; /* apply_many: waiting for a batch */
  size_t arena_used;
  _Alignas(16) unsigned char arena[ARENA_BYTES];
} consume_ctx_t;

/* A transaction of apply_many deliveries. */
typedef struct consume_batch {
  svc_consume_t *c;
  uint32_t n;                     /* 0: free */
  consume_ctx_t *ctx[SVC_CONSUME_BATCH_MAX];
  svc_event_t *evs[SVC_CONSUME_BATCH_MAX];
  int results[SVC_CONSUME_BATCH_MAX];
} consume_batch_t;

struct svc_consume {
  svc_th_t *th;
  rt_pool_t ctxs;
  consume_sub_t subs[SVC_EV_COUNT];
  uint32_t subs_count;
  uint32_t busy;                  /* deliveries being applied */
  consume_ctx_t *waiting;         /* those waiting to be tried again */
  consume_ctx_t *queue_head;      /* apply_many: those waiting for a batch */
  consume_ctx_t *queue_tail;
  consume_batch_t batches[SVC_CONSUME_BATCHES];
  uint32_t queued;
  rt_timer_t window;              /* the first to wait, alone, waits this
                                  * long for company */
  bool stopped;
};

static int stmt_inbox_claim;

static const svc_stmt_t stmts[] = {
    /* $1 event id, $2 topic, $3 seconds to keep it. A second claim of the
     * id violates the key and rolls its transaction back. */
    {&stmt_inbox_claim,
     "INSERT INTO claims (scope, key, request_hash, status, response_body, created_at, expires_at)"
     " VALUES ('" SVC_INBOX_SCOPE "', $1, $2, 1, '', now(),"
     " now() + make_interval(secs => $3::double precision))",
     3},
};

uint32_t svc_inbox_keep_s(void) { return svc_g.inbox_keep_s; }

const svc_stmt_table_t svc_consume_stmts = {stmts, sizeof stmts / sizeof stmts[0]};

/* ------------------------------------------------------------------------ */
/* jansson in the delivery's arena                                          */
/* ------------------------------------------------------------------------ */

/*
 * jansson takes one allocator for the whole process. Ours hands out the
 * current delivery's arena while its payload is parsed (tls_arena set on
 * the parsing thread only) and the heap otherwise; free() ignores arena
 * addresses, which lie in the context pool's one allocation, and the
 * arena is reset when its context goes back to the pool. The range is
 * published once; a thread that reads it before that never holds an
 * arena address anyway.
 */
static _Thread_local consume_ctx_t *tls_arena;
static _Atomic uintptr_t arena_lo, arena_hi;

static void *json_alloc(size_t n) {
  consume_ctx_t *x = tls_arena;
  if (x != NULL) {
    size_t at = (x->arena_used + 15u) & ~(size_t)15u;
    if (at <= ARENA_BYTES && n <= ARENA_BYTES - at) {
      x->arena_used = at + n;
      return x->arena + at;
    }
    atomic_fetch_add_explicit(&svc_bus_stats.inbox_arena_spills, 1, memory_order_relaxed);
  }
  return malloc(n);
}

static void json_free(void *p) {
  uintptr_t a = (uintptr_t)p;
  if (a >= atomic_load_explicit(&arena_lo, memory_order_relaxed) &&
      a < atomic_load_explicit(&arena_hi, memory_order_relaxed))
    return;
  free(p);
}

void svc_consume_init_json(void) { json_set_alloc_funcs(json_alloc, json_free); }

/* ------------------------------------------------------------------------ */
/* Payload and headers                                                      */
/* ------------------------------------------------------------------------ */

const char *svc_event_str(const svc_event_t *ev, const char *name) {
  return json_string_value(json_object_get(ev->payload, name));
}

int svc_event_int(const svc_event_t *ev, const char *name, int64_t *out) {
  json_t *v = json_object_get(ev->payload, name);
  if (!json_is_integer(v)) return SVC_E_EVENT;
  *out = (int64_t)json_integer_value(v);
  return 0;
}

/* The correlation id of the cause, when it is one of ours (request ids
 * and uuids: letters, digits, - _ .). */
static void read_trace(consume_ctx_t *x, const bus_delivery_t *d) {
  svc_trace_t *tr = &x->ev.trace;
  tr->correlation_id[0] = '\0';
  bus_bytes_t v;
  if (bus_header_get(d->headers, "correlation-id", &v) && v.len < sizeof tr->correlation_id) {
    bool ok = true;
    for (uint32_t i = 0; i < v.len && ok; i++) {
      uint8_t ch = v.ptr[i];
      ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
           ch == '-' || ch == '_' || ch == '.';
    }
    if (ok) {
      memcpy(tr->correlation_id, v.ptr, v.len);
      tr->correlation_id[v.len] = '\0';
    }
  }
  /* Events this one causes name it as their cause. */
  snprintf(tr->causation_id, sizeof tr->causation_id, "%s", x->ev.id);
}

/* ------------------------------------------------------------------------ */
/* Deliveries                                                               */
/* ------------------------------------------------------------------------ */

static void ctx_release(consume_ctx_t *x) {
  svc_consume_t *c = x->c;
  if (x->payload != NULL) json_decref(x->payload); /* arena: nothing to free */
  free(x->headers_heap);
  rt_pool_put(&c->ctxs, x);
  assert(c->busy > 0);
  c->busy--;
  if (c->th->draining) svc_drain_step(c->th);
}

static void answer(consume_ctx_t *x, bool ok, const char *why) {
  svc_bus_t *bus = x->c->th->pub.bus;
  if (bus == NULL) return; /* closed: the bus delivers it again */
  int rc = ok ? svc_bus_ack(bus, x->sub, x->partition, x->offset)
              : svc_bus_nack(bus, x->sub, x->partition, x->offset, why);
  if (rc < 0 && rc != BUS_E_CLOSED) {
    RT_WARN("cannot answer a delivery", RT_LF_BOOL("ack", ok), RT_LF_STR("error", rt_strerror(rc)));
  }
}

/* Not applied: NACKed, so busd tries again later. */
static void fail(consume_ctx_t *x, const char *why) {
  atomic_fetch_add_explicit(&svc_bus_stats.inbox_failed, 1, memory_order_relaxed);
  RT_WARN("event not applied, NACKed", RT_LF_STR("type", x->ev.def->topic),
          RT_LF_STR("event", x->ev.id), RT_LF_INT("attempt", x->ev.attempt),
          RT_LF_STR("why", why));
  answer(x, false, why);
}

static void attempt(consume_ctx_t *x);

static void waiting_unlink(consume_ctx_t *x) {
  for (consume_ctx_t **p = &x->c->waiting; *p != NULL; p = &(*p)->waiting_next) {
    if (*p == x) {
      *p = x->waiting_next;
      break;
    }
  }
  x->waiting_next = NULL;
}

static void on_retry(rt_timer_t *t) {
  consume_ctx_t *x = t->ctx;
  waiting_unlink(x);
  attempt(x);
}

/* The database is down or busy: the same delivery again later. */
static void retry_later(consume_ctx_t *x, int err) {
  svc_consume_t *c = x->c;
  uint32_t ms = RETRY_FIRST_MS << (x->retries < 6 ? x->retries : 6);
  if (ms > RETRY_MAX_MS) ms = RETRY_MAX_MS;
  rt_timer_init(&x->retry, on_retry, x);
  if (c->stopped || rt_timer_start(c->th->pub.loop, &x->retry, ms, 0) < 0) {
    answer(x, false, c->stopped ? "consumer draining" : rt_strerror(err));
    ctx_release(x);
    return;
  }
  x->retries++;
  x->waiting_next = c->waiting;
  c->waiting = x;
  atomic_fetch_add_explicit(&svc_bus_stats.inbox_retried, 1, memory_order_relaxed);
  if (x->retries == 1)
    RT_WARN("event not applied: database unavailable, trying again", RT_LF_STR("type",
            x->ev.def->topic), RT_LF_STR("event", x->ev.id), RT_LF_STR("error", rt_strerror(err)));
}

static void consume_done(rt_pg_batch_t *b, int err, void *ctx) {
  consume_ctx_t *x = ctx;
  rt_log_set_request_id(x->ev.trace.correlation_id);
  if (err != 0 && svc_db_transient(err)) {
    retry_later(x, err);
    rt_log_set_request_id(NULL);
    return;
  }
  if (err == RT_PG_E_UNIQUE && rt_pg_error(b)->stmt_index == 0) {
    atomic_fetch_add_explicit(&svc_bus_stats.inbox_duplicates, 1, memory_order_relaxed);
    RT_DEBUG("duplicate event absorbed", RT_LF_STR("type", x->ev.def->topic),
             RT_LF_STR("event", x->ev.id));
    answer(x, true, NULL);
  } else if (err != 0) {
    const rt_pg_error_t *e = rt_pg_error(b);
    char why[160];
    snprintf(why, sizeof why, "%s (sqlstate %s, statement %d)", rt_strerror(err), e->sqlstate,
             e->stmt_index);
    fail(x, why);
  } else {
    int r = x->consumer->done != NULL ? x->consumer->done(&x->ev, b) : SVC_APPLIED;
    svc_event_type_t t = x->ev.def->type;
    if (r == SVC_ABSORBED) {
      atomic_fetch_add_explicit(&svc_bus_stats.inbox_absorbed[t], 1, memory_order_relaxed);
      RT_INFO("event absorbed: no transition allowed", RT_LF_STR("type", x->ev.def->topic),
              RT_LF_STR("event", x->ev.id), RT_LF_STR("key", x->ev.key));
    } else {
      atomic_fetch_add_explicit(&svc_bus_stats.inbox_applied[t], 1, memory_order_relaxed);
      RT_DEBUG("event applied", RT_LF_STR("type", x->ev.def->topic), RT_LF_STR("event", x->ev.id),
               RT_LF_INT("attempt", x->ev.attempt));
    }
    svc_pub_offer(&x->c->th->pub, b, x->fetch);
    svc_fault("consume_before_ack");
    answer(x, true, NULL);
  }
  rt_log_set_request_id(NULL);
  ctx_release(x);
}

/* Fills the handler's view of the delivery. False when its payload is
 * not a JSON object. */
static bool ctx_fill(consume_ctx_t *x, const bus_delivery_t *d) {
  x->ev.th = &x->c->th->pub;
  x->ev.def = svc_event_def(x->consumer->type);
  bus_uuid_format(d->id, x->ev.id);
  uint32_t klen = d->key.len < SVC_EVENT_KEY_BYTES - 1 ? d->key.len : SVC_EVENT_KEY_BYTES - 1;
  if (klen > 0) memcpy(x->ev.key, d->key.ptr, klen);
  x->ev.key[klen] = '\0';
  x->ev.attempt = d->attempt;
  x->ev.stored_ms = d->stored_ms;
  x->sub = d->sub;
  x->partition = d->partition;
  x->offset = d->offset;
  x->ev.partition = d->partition;
  x->ev.offset = d->offset;
  read_trace(x, d);
  /* The headers' bytes outlive the delivery: apply() may run again. */
  x->ev.headers = (bus_bytes_t){0};
  if (d->headers.len > 0) {
    uint8_t *copy = d->headers.len <= ARENA_BYTES ? x->arena : NULL;
    if (copy != NULL) {
      x->arena_used = (d->headers.len + 15u) & ~(size_t)15u;
    } else {
      copy = x->headers_heap = malloc(d->headers.len);
      atomic_fetch_add_explicit(&svc_bus_stats.inbox_arena_spills, 1, memory_order_relaxed);
    }
    if (copy == NULL) return false;
    memcpy(copy, d->headers.ptr, d->headers.len);
    x->ev.headers = (bus_bytes_t){copy, d->headers.len};
  }
  tls_arena = x;
  x->payload = json_loadb((const char *)d->payload.ptr, d->payload.len, JSON_REJECT_DUPLICATES,
                          NULL);
  tls_arena = NULL;
  x->ev.payload = x->payload;
  return json_is_object(x->payload);
}

static void on_deliver(void *arg, const bus_delivery_t *d) {
  consume_sub_t *s = arg;
  svc_consume_t *c = s->c;
  if (c->stopped) {
    svc_bus_nack(c->th->pub.bus, d->sub, d->partition, d->offset, "consumer draining");
    return;
  }
  consume_ctx_t *x = rt_pool_get(&c->ctxs); /* zeroed */
  if (NEVER(x == NULL)) { /* the pool holds every subscription's window */
    svc_bus_nack(c->th->pub.bus, d->sub, d->partition, d->offset, "consumer busy");
    return;
  }
  c->busy++;
  x->c = c;
  x->consumer = s->consumer;
  bool ok = ctx_fill(x, d);
  if (!ok) {
    rt_log_set_request_id(x->ev.trace.correlation_id);
    fail(x, "payload is not a JSON object");
    rt_log_set_request_id(NULL);
    ctx_release(x);
    return;
  }
  attempt(x);
}

/* ------------------------------------------------------------------------ */
/* Many deliveries, one transaction (apply_many)                            */
/* ------------------------------------------------------------------------ */

uint32_t svc_batch_places(const char *array_text, uint32_t n, int *results) {
  uint32_t applied = 0;
  for (uint32_t i = 0; i < n; i++) results[i] = SVC_DUPLICATE;
  for (const char *p = array_text; p != NULL && *p != '\0';) {
    char *end;
    unsigned long place = strtoul(p, &end, 10);
    if (end != p && place >= 1 && place <= n && results[place - 1] != SVC_APPLIED) {
      results[place - 1] = SVC_APPLIED;
      applied++;
    }
    p = *end != '\0' ? end + 1 : end; /* past '{', ',' and '}' */
  }
  return applied;
}

static void batches_flush(svc_consume_t *c);
static void batches_send(svc_consume_t *c);

static void queue_push(svc_consume_t *c, consume_ctx_t *x) {
  c->queued++;
  x->queue_next = NULL;
  if (c->queue_tail != NULL)
    c->queue_tail->queue_next = x;
  else
    c->queue_head = x;
  c->queue_tail = x;
}

/* A failed batch's deliveries go back to the front, in their order, each
 * to be tried alone. */
static void batch_split(consume_batch_t *bt) {
  svc_consume_t *c = bt->c;
  for (uint32_t i = bt->n; i-- > 0;) {
    consume_ctx_t *x = bt->ctx[i];
    x->alone = true;
    c->queued++;
    x->queue_next = c->queue_head;
    c->queue_head = x;
    if (c->queue_tail == NULL) c->queue_tail = x;
  }
}

/* A batch that did not commit (b NULL: not even submitted): waits and goes
 * again when the database is down or busy; else each of its deliveries
 * goes again alone, and one that fails alone is NACKed with the reason. */
static void batch_failed(consume_batch_t *bt, int err, const rt_pg_batch_t *b) {
  const rt_pg_error_t *e = b != NULL ? rt_pg_error(b) : NULL;
  if (svc_db_transient(err)) {
    for (uint32_t i = 0; i < bt->n; i++) retry_later(bt->ctx[i], err);
  } else if (bt->n > 1) {
    RT_WARN("event batch refused, its events go again one by one", RT_LF_INT("events", bt->n),
            RT_LF_STR("error", rt_strerror(err)), RT_LF_STR("sqlstate", e ? e->sqlstate : ""));
    batch_split(bt);
  } else {
    consume_ctx_t *x = bt->ctx[0];
    char why[160];
    if (e != NULL)
      snprintf(why, sizeof why, "%s (sqlstate %s, statement %d)", rt_strerror(err), e->sqlstate,
               e->stmt_index);
    else
      snprintf(why, sizeof why, "%s", rt_strerror(err));
    rt_log_set_request_id(x->ev.trace.correlation_id);
    fail(x, why);
    ctx_release(x);
    rt_log_set_request_id(NULL);
  }
}

static void batch_done(rt_pg_batch_t *b, int err, void *arg) {
  consume_batch_t *bt = arg;
  svc_consume_t *c = bt->c;
  uint32_t n = bt->n;
  if (err == 0) {
    for (uint32_t i = 0; i < n; i++) bt->results[i] = SVC_APPLIED;
    bt->ctx[0]->consumer->done_many(bt->evs, n, b, bt->results);
    svc_fault("consume_before_ack");
    for (uint32_t i = 0; i < n; i++) {
      consume_ctx_t *x = bt->ctx[i];
      svc_event_type_t t = x->ev.def->type;
      rt_log_set_request_id(x->ev.trace.correlation_id);
      if (bt->results[i] == SVC_DUPLICATE) {
        atomic_fetch_add_explicit(&svc_bus_stats.inbox_duplicates, 1, memory_order_relaxed);
        RT_DEBUG("duplicate event absorbed", RT_LF_STR("type", x->ev.def->topic),
                 RT_LF_STR("event", x->ev.id));
      } else if (bt->results[i] == SVC_ABSORBED) {
        atomic_fetch_add_explicit(&svc_bus_stats.inbox_absorbed[t], 1, memory_order_relaxed);
      } else {
        atomic_fetch_add_explicit(&svc_bus_stats.inbox_applied[t], 1, memory_order_relaxed);
        RT_DEBUG("event applied", RT_LF_STR("type", x->ev.def->topic),
                 RT_LF_STR("event", x->ev.id), RT_LF_INT("attempt", x->ev.attempt),
                 RT_LF_INT("batch", n));
      }
      answer(x, true, NULL);
      ctx_release(x);
    }
  } else {
    batch_failed(bt, err, b);
  }
  rt_log_set_request_id(NULL);
  bt->n = 0;
  if (c->stopped)
    batches_flush(c);
  else
    batches_send(c); /* they waited for this one: no window */
}

/* Fills bt from the queue's front: one delivery that goes alone, or up to
 * SVC_CONSUME_BATCH_MAX of the others. */
static void batch_fill(svc_consume_t *c, consume_batch_t *bt) {
  bt->c = c;
  bt->n = 0;
  while (c->queue_head != NULL && bt->n < SVC_CONSUME_BATCH_MAX) {
    consume_ctx_t *x = c->queue_head;
    if (x->alone && bt->n > 0) break;
    c->queue_head = x->queue_next;
    if (c->queue_head == NULL) c->queue_tail = NULL;
    x->queue_next = NULL;
    c->queued--;
    bt->ctx[bt->n] = x;
    bt->evs[bt->n] = &x->ev;
    bt->n++;
    if (x->alone) break;
  }
}

static void batch_submit(svc_consume_t *c, consume_batch_t *bt) {
  const svc_consumer_t *con = bt->ctx[0]->consumer;
  rt_pg_batch_t *b = rt_pg_batch_new(c->th->pub.pool);
  int rc = b == NULL ? RT_PG_E_POOL_FULL : con->apply_many(bt->evs, bt->n, b);
  if (rc < 0 && b != NULL) rt_pg_batch_free(b);
  if (rc == 0) rc = rt_pg_submit(b, 0, batch_done, bt); /* frees b on error */
  if (rc == 0) return;
  batch_failed(bt, rc, NULL);
  bt->n = 0;
}

static bool batch_busy(const svc_consume_t *c) {
  for (uint32_t i = 0; i < SVC_CONSUME_BATCHES; i++)
    if (c->batches[i].n > 0) return true;
  return false;
}

static void on_window(rt_timer_t *t) { batches_send(t->ctx); }

/* Sends what waits in as many batches as are free. While none is at the
 * database, the first delivery to wait waits CONSUME_BATCH_WINDOW for
 * others (unless a batch is full); those that arrive while one is there
 * go as soon as it is back, having waited already. */
static void batches_flush(svc_consume_t *c) {
  if (c->stopped) {
    rt_timer_stop(c->th->pub.loop, &c->window);
    while (c->queue_head != NULL) {
      consume_ctx_t *x = c->queue_head;
      c->queue_head = x->queue_next;
      c->queued--;
      answer(x, false, "consumer draining");
      ctx_release(x);
    }
    c->queue_tail = NULL;
    return;
  }
  if (c->queue_head == NULL) return;
  if (rt_timer_armed(&c->window)) {
    if (c->queued < SVC_CONSUME_BATCH_MAX) return; /* it sends them */
    rt_timer_stop(c->th->pub.loop, &c->window);
  } else if (!batch_busy(c) && c->queued < SVC_CONSUME_BATCH_MAX && svc_g.consume_window_ms > 0 &&
             !c->queue_head->alone &&
             rt_timer_start(c->th->pub.loop, &c->window, svc_g.consume_window_ms, 0) == 0) {
    return; /* no timer: they go now */
  }
  batches_send(c);
}

static void batches_send(svc_consume_t *c) {
  /* Ends: a batch that cannot go either takes its slot (submitted) or
   * leaves the queue shorter (waits, NACKed) or made of deliveries that
   * go alone (split). */
  while (c->queue_head != NULL) {
    consume_batch_t *bt = NULL;
    for (uint32_t i = 0; i < SVC_CONSUME_BATCHES && bt == NULL; i++)
      if (c->batches[i].n == 0) bt = &c->batches[i];
    if (bt == NULL) return; /* the next to finish sends the rest */
    batch_fill(c, bt);
    batch_submit(c, bt);
  }
}

/* One try: the claim and the handler's statements, as one transaction;
 * or, for apply_many, a place in the next batch. */
static void attempt(consume_ctx_t *x) {
  svc_consume_t *c = x->c;
  if (x->consumer->apply_many != NULL && !c->stopped) {
    queue_push(c, x);
    batches_flush(c);
    return;
  }
  rt_log_set_request_id(x->ev.trace.correlation_id);
  if (c->stopped) {
    answer(x, false, "consumer draining");
    ctx_release(x);
    rt_log_set_request_id(NULL);
    return;
  }
  rt_pg_batch_t *b = rt_pg_batch_new(c->th->pub.pool);
  int rc = b == NULL ? RT_PG_E_POOL_FULL : 0;
  if (rc == 0) {
    char keep[16];
    snprintf(keep, sizeof keep, "%u", svc_g.inbox_keep_s);
    const char *vals[] = {x->ev.id, x->ev.def->topic, keep};
    rt_pg_add(b, stmt_inbox_claim, 3, vals);
    svc_emits_t emits = {.th = &c->th->pub, .batch = b};
    svc_emits_collect(&emits);
    rc = x->consumer->apply(&x->ev, b);
    svc_emits_collect(NULL);
    x->ev.apply_last = rt_pg_count(b) - 1;
    /* The events it wrote, read back to be published at the commit. */
    x->fetch = rc == 0 ? svc_emits_fetch(&emits) : -1;
    if (rc < 0) rt_pg_batch_free(b);
  }
  if (rc == 0) rc = rt_pg_submit(b, 0, consume_done, x); /* frees b on error */
  if (rc < 0 && svc_db_transient(rc)) {
    retry_later(x, rc);
  } else if (rc < 0) {
    fail(x, rt_strerror(rc));
    ctx_release(x);
  }
  rt_log_set_request_id(NULL);
}

/* ------------------------------------------------------------------------ */
/* Life cycle                                                               */
/* ------------------------------------------------------------------------ */

/* One context per delivery the bus may have outstanding:
 *   consumers_count subscriptions x CONSUME_IN_FLIGHT each. */
uint64_t svc_consume_deliveries_max(void) {
  return (uint64_t)svc_g.def->consumers_count * svc_g.consume_in_flight;
}

int svc_consume_create(svc_consume_t **out, svc_th_t *th) {
  const svc_def_t *def = svc_g.def;
  assert(th->pub.bus != NULL);
  assert(def->consumers_count <= SVC_EV_COUNT);
  svc_consume_t *c = calloc(1, sizeof *c);
  if (c == NULL) return -ENOMEM;
  c->th = th;
  rt_timer_init(&c->window, on_window, c);
  uint64_t cap = svc_consume_deliveries_max();
  int rc = cap > UINT32_MAX ? RT_E_CONFIG
                            : rt_pool_init(&c->ctxs, "svc_deliveries", sizeof(consume_ctx_t),
                                           (uint32_t)cap);
  if (rc < 0) {
    free(c);
    return rc;
  }
  atomic_store_explicit(&arena_lo, (uintptr_t)c->ctxs.mem, memory_order_relaxed);
  atomic_store_explicit(&arena_hi, (uintptr_t)c->ctxs.mem + (uintptr_t)(cap * c->ctxs.obj_bytes),
                        memory_order_relaxed);
  for (size_t i = 0; i < def->consumers_count && rc >= 0; i++) {
    const svc_consumer_t *con = &def->consumers[i];
    c->subs[i] = (consume_sub_t){.c = c, .consumer = con};
    rc = svc_bus_subscribe(th->pub.bus, svc_event_def(con->type)->topic, def->name,
                           svc_g.consume_in_flight, on_deliver, &c->subs[i]);
    if (rc < 0) {
      RT_ERROR("cannot subscribe", RT_LF_STR("topic", svc_event_def(con->type)->topic),
               RT_LF_STR("error", rt_strerror(rc)));
    }
    c->subs_count++;
  }
  if (rc < 0) {
    svc_consume_free(c);
    return rc;
  }
  RT_INFO("consuming", RT_LF_INT("topics", c->subs_count), RT_LF_STR("group", def->name),
          RT_LF_INT("in_flight", svc_g.consume_in_flight));
  *out = c;
  return 0;
}

void svc_consume_stop(svc_consume_t *c) {
  if (c == NULL) return;
  c->stopped = true;
  batches_flush(c); /* those queued for a batch go back to busd */
  /* Those waiting for the database go back to busd now. */
  while (c->waiting != NULL) {
    consume_ctx_t *x = c->waiting;
    c->waiting = x->waiting_next;
    rt_timer_stop(c->th->pub.loop, &x->retry);
    answer(x, false, "consumer draining");
    ctx_release(x);
  }
}

bool svc_consume_idle(const svc_consume_t *c) { return c == NULL || c->busy == 0; }

void svc_consume_free(svc_consume_t *c) {
  if (c == NULL) return;
  rt_pool_deinit(&c->ctxs); /* the leak check; counted after a cut-short drain */
  atomic_store_explicit(&arena_lo, 0, memory_order_relaxed);
  atomic_store_explicit(&arena_hi, 0, memory_order_relaxed);
  free(c);
}
