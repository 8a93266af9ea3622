/*
 * holds.c - the account's part of the payment saga.
 *
 *   payment.requested -> reserve: balance -> held on the payer, a hold
 *                        with an expiry; account.funds_reserved, or
 *                        account.funds_rejected with the reason
 *   payment.authorized -> settle: the payer's held -> the payee's balance;
 *                        account.payment_settled; or, when the hold has
 *                        expired, the payee is closed, frozen or missing,
 *                        or its currency differs: release the hold and
 *                        account.settlement_failed with the reason
 *   payment.cancelled  -> release: held -> balance; account.funds_released
 *   the sweeper        -> releases expired holds; account.funds_released
 *                        with reason "expired"
 *
 * Every step is one guarded transition of the hold's state, inside the
 * transaction that claims the event id (the consumer table does that):
 * 'new' -> 'held' | 'rejected', 'held' -> 'settled' | 'released'. The
 * guard `state = 'held'` under the row lock is what makes each hold
 * resolve exactly once when a settlement, a cancellation and the sweeper
 * race. A release that finds no hold at all (it overtook its reservation)
 * leaves a 'released' tombstone, and the reservation that comes later
 * finds it and does nothing.
 *
 * Locks: the accounts involved first, in id order (account_stmt_lock),
 * then the hold; so these transactions, transfers and the sweeper never
 * wait for each other in a cycle. Money moves only in the statements
 * below, each guarded, never read into C and written back.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "account.h"

static struct {
  uint32_t ttl_ms;
  uint32_t sweep_ms;
} cfg;

#define SWEEP_BATCH 64 /* expired holds released per scan */

static int s_hold_new, s_reserve, s_settle, s_release, s_sweep_scan;

#define TS(col) ACCOUNT_TS_JSON(col)

const svc_stmt_t account_holds_stmts[] = {
    /* $1 payment, $2 payer, $3 payee, $4 amount, $5 currency, $6 ttl in
     * seconds, $7 correlation id. Takes the payment's key: a tombstone
     * there means the payment was cancelled first. */
    {&s_hold_new,
     "INSERT INTO holds (payment_id, account_id, payee_account_id, amount, currency, state,"
     " expires_at, correlation_id)"
     " VALUES ($1::uuid, $2::uuid, $3::uuid, $4::bigint, $5, 'new',"
     " now() + make_interval(secs => $6::double precision), $7)"
     " ON CONFLICT (payment_id) DO NOTHING",
     7},
    /* $1 payment, $2 payer, $3 amount, $4 currency, $5 transaction id,
     * $6/$7 ledger line ids, $8/$9/$10 the reserved event (id, topic,
     * headers), $11/$12/$13 the rejected one. The guarded debit of the
     * available balance decides; the hold follows it. */
    {&s_reserve,
     "WITH h0 AS (SELECT payment_id FROM holds WHERE payment_id = $1::uuid AND state = 'new'),"
     " a AS (SELECT kind, status, currency FROM accounts WHERE id = $2::uuid),"
     " why AS (SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM a WHERE kind = 'customer'"
     "  AND status = 'open') THEN 'account_closed'"
     "  WHEN EXISTS (SELECT 1 FROM a WHERE currency <> $4) THEN 'currency_mismatch'"
     "  ELSE 'insufficient_funds' END AS reason),"
     " d AS (UPDATE accounts SET balance = balance - $3::bigint, held = held + $3::bigint,"
     "  entries_count = entries_count + 2, updated_at = GREATEST(updated_at, clock_timestamp())"
     "  WHERE id = $2::uuid AND kind = 'customer' AND currency = $4 AND status = 'open'"
     "  AND balance >= $3::bigint - overdraft_limit AND EXISTS (SELECT 1 FROM h0)"
     "  RETURNING id, balance, held, entries_count, updated_at),"
     " h AS (UPDATE holds SET state = CASE WHEN EXISTS (SELECT 1 FROM d) THEN 'held' ELSE 'rejected' END,"
     "  reason = CASE WHEN EXISTS (SELECT 1 FROM d) THEN NULL ELSE (SELECT reason FROM why) END,"
     "  resolved_at = CASE WHEN EXISTS (SELECT 1 FROM d) THEN NULL ELSE now() END"
     "  WHERE payment_id = $1::uuid AND state = 'new' RETURNING state, reason, expires_at),"
     " t AS (INSERT INTO transactions (id, kind, debit_account_id, credit_account_id, amount, currency,"
     "  created_at, payment_id)"
     "  SELECT $5::uuid, 'hold', d.id, d.id, $3::bigint, $4, d.updated_at, $1::uuid FROM d RETURNING id),"
     " e AS (INSERT INTO ledger_entries (id, transaction_id, account_id, seq, amount, currency,"
     "  balance_after, created_at, bucket)"
     "  SELECT $6::uuid, t.id, d.id, d.entries_count - 1, -$3::bigint, $4, d.balance, d.updated_at,"
     "  'balance' FROM t, d"
     "  UNION ALL SELECT $7::uuid, t.id, d.id, d.entries_count, $3::bigint, $4, d.held, d.updated_at,"
     "  'held' FROM t, d RETURNING 1),"
     " o AS (INSERT INTO outbox (id, topic, key, payload, headers, created_at)"
     "  SELECT CASE WHEN h.state = 'held' THEN $8 ELSE $11 END::uuid,"
     "  CASE WHEN h.state = 'held' THEN $9 ELSE $12 END, $1::text,"
     "  CASE WHEN h.state = 'held' THEN json_build_object('payment_id', $1::uuid, 'account_id',"
     "  $2::uuid, 'amount', $3::bigint, 'currency', $4, 'expires_at', " TS("h.expires_at") ")"
     "  ELSE json_build_object('payment_id', $1::uuid, 'account_id', $2::uuid, 'reason', h.reason)"
     "  END::jsonb, CASE WHEN h.state = 'held' THEN $10 ELSE $13 END::jsonb, now() FROM h"
     "  RETURNING 1)"
     " SELECT h.state, h.reason FROM h",
     13},
    /* $1 payment, $2 transaction id, $3/$4/$5 ledger line ids, $6/$7/$8
     * the settled event, $9/$10/$11 the settlement-failed one. The payer
     * and payee rows are locked already (account_stmt_lock). */
    {&s_settle,
     "WITH c AS (SELECT h.payment_id, CASE WHEN h.expires_at <= now() THEN 'hold_expired'"
     "  WHEN p.id IS NULL OR p.kind <> 'customer' OR p.status <> 'open' THEN 'payee_unavailable'"
     "  WHEN p.currency <> h.currency THEN 'currency_mismatch' END AS fail"
     "  FROM holds h LEFT JOIN accounts p ON p.id = h.payee_account_id"
     "  WHERE h.payment_id = $1::uuid AND h.state = 'held' FOR UPDATE OF h),"
     " h AS (UPDATE holds SET state = CASE WHEN c.fail IS NULL THEN 'settled' ELSE 'released' END,"
     "  reason = c.fail, resolved_at = now() FROM c WHERE holds.payment_id = c.payment_id"
     "  RETURNING holds.payment_id, holds.account_id, holds.payee_account_id, holds.amount,"
     "  holds.currency, c.fail),"
     " pr AS (UPDATE accounts a SET held = a.held - h.amount,"
     "  balance = a.balance + CASE WHEN h.fail IS NULL THEN 0 ELSE h.amount END,"
     "  entries_count = a.entries_count + CASE WHEN h.fail IS NULL THEN 1 ELSE 2 END,"
     "  updated_at = GREATEST(a.updated_at, clock_timestamp())"
     "  FROM h WHERE a.id = h.account_id RETURNING a.id, a.balance, a.held, a.entries_count,"
     "  a.updated_at),"
     " pe AS (UPDATE accounts a SET balance = a.balance + h.amount, entries_count = a.entries_count + 1,"
     "  updated_at = GREATEST(a.updated_at, clock_timestamp())"
     "  FROM h WHERE a.id = h.payee_account_id AND h.fail IS NULL"
     "  RETURNING a.id, a.balance, a.entries_count, a.updated_at),"
     " t AS (INSERT INTO transactions (id, kind, debit_account_id, credit_account_id, amount, currency,"
     "  created_at, payment_id)"
     "  SELECT $2::uuid, CASE WHEN h.fail IS NULL THEN 'payment' ELSE 'release' END, h.account_id,"
     "  CASE WHEN h.fail IS NULL THEN h.payee_account_id ELSE h.account_id END, h.amount, h.currency,"
     "  pr.updated_at, h.payment_id FROM h, pr RETURNING id, kind),"
     " e AS (INSERT INTO ledger_entries (id, transaction_id, account_id, seq, amount, currency,"
     "  balance_after, created_at, bucket)"
     "  SELECT $3::uuid, t.id, pr.id, CASE WHEN t.kind = 'payment' THEN pr.entries_count"
     "  ELSE pr.entries_count - 1 END, -h.amount, h.currency, pr.held, pr.updated_at, 'held'"
     "  FROM t, pr, h"
     "  UNION ALL SELECT $4::uuid, t.id, pe.id, pe.entries_count, h.amount, h.currency, pe.balance,"
     "  pe.updated_at, 'balance' FROM t, pe, h"
     "  UNION ALL SELECT $5::uuid, t.id, pr.id, pr.entries_count, h.amount, h.currency, pr.balance,"
     "  pr.updated_at, 'balance' FROM t, pr, h WHERE t.kind = 'release' RETURNING 1),"
     " o AS (INSERT INTO outbox (id, topic, key, payload, headers, created_at)"
     "  SELECT CASE WHEN h.fail IS NULL THEN $6 ELSE $9 END::uuid,"
     "  CASE WHEN h.fail IS NULL THEN $7 ELSE $10 END, $1::text,"
     "  CASE WHEN h.fail IS NULL THEN json_build_object('payment_id', h.payment_id,"
     "  'from_account_id', h.account_id, 'to_account_id', h.payee_account_id, 'amount', h.amount,"
     "  'currency', h.currency, 'transaction_id', t.id)"
     "  ELSE json_build_object('payment_id', h.payment_id, 'reason', h.fail, 'account_id',"
     "  h.account_id, 'amount', h.amount, 'currency', h.currency) END::jsonb,"
     "  CASE WHEN h.fail IS NULL THEN $8 ELSE $11 END::jsonb, now() FROM h, t RETURNING 1)"
     " SELECT coalesce(h.fail, 'settled') FROM h",
     11},
    /* $1 payment, $2 payer, $3 payee, $4 currency, $5 reason, $6 true: only
     * an expired hold (the sweeper, no tombstone), $7 transaction id,
     * $8/$9 ledger line ids, $10/$11/$12 the released event. */
    {&s_release,
     "WITH tomb AS (INSERT INTO holds (payment_id, account_id, payee_account_id, amount, currency,"
     "  state, reason, expires_at, resolved_at)"
     "  SELECT $1::uuid, $2::uuid, $3::uuid, 0, $4, 'released', 'cancelled_before_reserve', now(),"
     "  now() WHERE NOT $6::bool"
     "  ON CONFLICT (payment_id) DO NOTHING RETURNING payment_id, account_id, amount),"
     " h AS (UPDATE holds SET state = 'released', reason = $5, resolved_at = now()"
     "  WHERE payment_id = $1::uuid AND state = 'held' AND (NOT $6::bool OR expires_at <= now())"
     "  RETURNING payment_id, account_id, amount, currency),"
     " pr AS (UPDATE accounts a SET held = a.held - h.amount, balance = a.balance + h.amount,"
     "  entries_count = a.entries_count + 2, updated_at = GREATEST(a.updated_at, clock_timestamp())"
     "  FROM h WHERE a.id = h.account_id RETURNING a.id, a.balance, a.held, a.entries_count,"
     "  a.updated_at),"
     " t AS (INSERT INTO transactions (id, kind, debit_account_id, credit_account_id, amount, currency,"
     "  created_at, payment_id)"
     "  SELECT $7::uuid, 'release', h.account_id, h.account_id, h.amount, h.currency, pr.updated_at,"
     "  h.payment_id FROM h, pr RETURNING id),"
     " e AS (INSERT INTO ledger_entries (id, transaction_id, account_id, seq, amount, currency,"
     "  balance_after, created_at, bucket)"
     "  SELECT $8::uuid, t.id, pr.id, pr.entries_count - 1, -h.amount, h.currency, pr.held,"
     "  pr.updated_at, 'held' FROM t, pr, h"
     "  UNION ALL SELECT $9::uuid, t.id, pr.id, pr.entries_count, h.amount, h.currency, pr.balance,"
     "  pr.updated_at, 'balance' FROM t, pr, h RETURNING 1),"
     " r AS (SELECT payment_id, account_id, amount FROM h UNION ALL"
     "  SELECT payment_id, account_id, amount FROM tomb),"
     " o AS (" SVC_OUTBOX_INSERT("r", "10", "11", "$1::text",
                                 "json_build_object('payment_id', r.payment_id, 'account_id',"
                                 " r.account_id, 'amount', r.amount, 'currency', $4::text,"
                                 " 'reason', $5)",
                                 "12") " RETURNING 1)"
     " SELECT count(*) FROM r",
     12},
    /* Expired holds, oldest first, with what their release needs. */
    {&s_sweep_scan,
     "SELECT payment_id::text, account_id::text, currency, coalesce(correlation_id, '')"
     " FROM holds WHERE state = 'held' AND expires_at <= now() ORDER BY expires_at LIMIT $1::int",
     1},
};

const size_t account_holds_stmts_count = sizeof account_holds_stmts / sizeof account_holds_stmts[0];

/* ------------------------------------------------------------------------ */
/* Consumers                                                                */
/* ------------------------------------------------------------------------ */

/* The payload's fields every handler needs; SVC_E_EVENT when one lacks. */
typedef struct pay_fields {
  const char *payment, *from, *to, *currency;
  char amount[24];
} pay_fields_t;

static int read_fields(const svc_event_t *ev, pay_fields_t *f, bool need_to, bool need_amount) {
  int64_t amount = 0;
  f->payment = svc_event_str(ev, "payment_id");
  f->from = svc_event_str(ev, "from_account_id");
  f->to = svc_event_str(ev, "to_account_id");
  f->currency = svc_event_str(ev, "currency");
  if (!svc_uuid_valid(f->payment) || !svc_uuid_valid(f->from) || f->currency == NULL)
    return SVC_E_EVENT;
  if (need_to && !svc_uuid_valid(f->to)) return SVC_E_EVENT;
  if (need_amount && (svc_event_int(ev, "amount", &amount) < 0 || amount <= 0)) return SVC_E_EVENT;
  assert(!need_amount || amount > 0); /* a hold is for a positive amount */
  int n = snprintf(f->amount, sizeof f->amount, "%" PRId64, amount);
  assert(n > 0);
  assert((size_t)n < sizeof f->amount);
  return 0;
}

static void add_lock(rt_pg_batch_t *b, const char *a, const char *c) {
  const char *vals[] = {a, c};
  rt_pg_add(b, account_stmt_lock, 2, vals);
}

/* payment.requested: reserve. */
static int on_requested(svc_event_t *ev, rt_pg_batch_t *b) {
  pay_fields_t f;
  if (read_fields(ev, &f, true, true) < 0) return SVC_E_EVENT;
  char ttl[24], txid[37], l1[37], l2[37];
  snprintf(ttl, sizeof ttl, "%.3f", cfg.ttl_ms / 1000.0);
  svc_uuid7(txid);
  svc_uuid7(l1);
  svc_uuid7(l2);
  svc_emit_t ok, no;
  svc_emit_prepare(&ok, SVC_EV_ACCOUNT_FUNDS_RESERVED, &ev->trace);
  svc_emit_prepare(&no, SVC_EV_ACCOUNT_FUNDS_REJECTED, &ev->trace);
  add_lock(b, f.from, f.from);
  const char *hold[] = {f.payment, f.from, f.to, f.amount, f.currency, ttl,
                        ev->trace.correlation_id};
  rt_pg_add(b, s_hold_new, 7, hold);
  const char *vals[] = {f.payment, f.from, f.amount,  f.currency, txid,   l1,        l2,
                        ok.id,     ok.topic, ok.headers, no.id,  no.topic, no.headers};
  int rc = rt_pg_add(b, s_reserve, 13, vals);
  return rc < 0 ? rc : 0;
}

/* apply()'s last statement returns a row when the transition was
 * made here (a claim, a lock and the hold insert may come before it). */
static int last_done(svc_event_t *ev, const rt_pg_batch_t *b) {
  return rt_pg_rows(b, ev->apply_last) > 0 ? SVC_APPLIED : SVC_ABSORBED;
}

static int release_done(svc_event_t *ev, const rt_pg_batch_t *b) {
  int64_t n = 0;
  return rt_pg_int64(b, ev->apply_last, 0, 0, &n) == 0 && n > 0 ? SVC_APPLIED : SVC_ABSORBED;
}

/* payment.authorized: settle, or refuse and release. */
static int on_authorized(svc_event_t *ev, rt_pg_batch_t *b) {
  pay_fields_t f;
  if (read_fields(ev, &f, true, false) < 0) return SVC_E_EVENT;
  char txid[37], l1[37], l2[37], l3[37];
  svc_uuid7(txid);
  svc_uuid7(l1);
  svc_uuid7(l2);
  svc_uuid7(l3);
  svc_emit_t ok, no;
  svc_emit_prepare(&ok, SVC_EV_ACCOUNT_PAYMENT_SETTLED, &ev->trace);
  svc_emit_prepare(&no, SVC_EV_ACCOUNT_SETTLEMENT_FAILED, &ev->trace);
  add_lock(b, f.from, f.to);
  const char *vals[] = {f.payment, txid,  l1,         l2,    l3,       ok.id,
                        ok.topic,  ok.headers, no.id, no.topic, no.headers};
  int rc = rt_pg_add(b, s_settle, 11, vals);
  return rc < 0 ? rc : 0;
}

/* Adds the release of a payment's hold (and a tombstone when there is
 * none, unless only_expired). */
static int add_release(rt_pg_batch_t *b, const char *payment, const char *payer, const char *payee,
                       const char *currency, const char *reason, bool only_expired,
                       const svc_trace_t *trace) {
  /* The only reasons a hold is released for (its `reason` column). */
  assert(strcmp(reason, "cancelled") == 0 || strcmp(reason, "expired") == 0);
  /* Only the sweeper may insist that the hold be expired. */
  assert(!only_expired || strcmp(reason, "expired") == 0);
  char txid[37], l1[37], l2[37];
  svc_uuid7(txid);
  svc_uuid7(l1);
  svc_uuid7(l2);
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_ACCOUNT_FUNDS_RELEASED, trace);
  add_lock(b, payer, payer);
  const char *vals[] = {payment, payer, payee, currency, reason, only_expired ? "true" : "false",
                        txid,    l1,    l2,    e.id,     e.topic, e.headers};
  int rc = rt_pg_add(b, s_release, 12, vals);
  return rc < 0 ? rc : 0;
}

/* payment.cancelled: release. */
static int on_cancelled(svc_event_t *ev, rt_pg_batch_t *b) {
  pay_fields_t f;
  if (read_fields(ev, &f, true, false) < 0) return SVC_E_EVENT;
  return add_release(b, f.payment, f.from, f.to, f.currency, "cancelled", false, &ev->trace);
}

const svc_consumer_t account_consumers[] = {
    {.type = SVC_EV_PAYMENT_REQUESTED, .apply = on_requested, .done = last_done},
    {.type = SVC_EV_PAYMENT_AUTHORIZED, .apply = on_authorized, .done = last_done},
    {.type = SVC_EV_PAYMENT_CANCELLED, .apply = on_cancelled, .done = release_done},
};

const size_t account_consumers_count = sizeof account_consumers / sizeof account_consumers[0];

/* ------------------------------------------------------------------------ */
/* The expiry sweeper (loop thread 0)                                       */
/* ------------------------------------------------------------------------ */

/*
 * Every HOLD_SWEEP_INTERVAL: one scan for expired holds, then one
 * transaction per hold (lock the payer, release only if still held and
 * expired), all in flight together; the next scan waits until they are
 * back. A hold settled or released meanwhile is simply not released
 * again; a timeout firing after the payment is final changes nothing.
 */
typedef struct sweeper {
  svc_thread_t *th;
  rt_timer_t timer;
  uint32_t in_flight;
  bool scanning;
  bool stopped;
} sweeper_t;

static sweeper_t sweeper;

static void sweep_release_done(rt_pg_batch_t *b, int err, void *ctx) {
  sweeper_t *s = ctx;
  assert(s->in_flight > 0);
  s->in_flight--;
  if (err != 0) {
    RT_WARN("expired hold not released now: the next sweep retries",
            RT_LF_STR("error", rt_strerror(err)));
    return;
  }
  int64_t n = 0;
  if (rt_pg_int64(b, rt_pg_count(b) - 1, 0, 0, &n) == 0 && n > 0) {
    RT_INFO("expired hold released", RT_LF_INT("released", n));
    svc_fault("sweeper_after_commit");
  }
}

static void sweep_scan_done(rt_pg_batch_t *b, int err, void *ctx) {
  sweeper_t *s = ctx;
  assert(s->scanning);
  assert(s->in_flight == 0); /* a scan starts only once the releases are back */
  s->scanning = false;
  if (err != 0 || s->stopped) return;
  int n = rt_pg_rows(b, 0);
  for (int i = 0; i < n; i++) {
    const char *payment = rt_pg_value(b, 0, i, 0), *payer = rt_pg_value(b, 0, i, 1);
    svc_trace_t trace = {0};
    snprintf(trace.correlation_id, sizeof trace.correlation_id, "%s", rt_pg_value(b, 0, i, 3));
    rt_pg_batch_t *rb = rt_pg_batch_new(s->th->pool);
    if (rb == NULL) return; /* the next sweep */
    rt_log_set_request_id(trace.correlation_id);
    int rc = add_release(rb, payment, payer, payer, rt_pg_value(b, 0, i, 2), "expired", true, &trace);
    rt_log_set_request_id(NULL);
    if (rc < 0) {
      rt_pg_batch_free(rb);
      return;
    }
    if (rt_pg_submit(rb, 0, sweep_release_done, s) == 0) s->in_flight++;
  }
}

static void sweep_tick(rt_timer_t *t) {
  sweeper_t *s = t->ctx;
  if (s->stopped || s->scanning || s->in_flight > 0 || !rt_pg_pool_up(s->th->pool)) return;
  rt_pg_batch_t *b = rt_pg_batch_new(s->th->pool);
  if (b == NULL) return;
  char limit[16];
  snprintf(limit, sizeof limit, "%d", SWEEP_BATCH);
  const char *vals[] = {limit};
  rt_pg_add(b, s_sweep_scan, 1, vals);
  if (rt_pg_submit(b, 0, sweep_scan_done, s) == 0) s->scanning = true;
}

int account_holds_start(svc_thread_t *th) {
  sweeper.th = th;
  rt_timer_init(&sweeper.timer, sweep_tick, &sweeper);
  int rc = rt_timer_start(th->loop, &sweeper.timer, cfg.sweep_ms, cfg.sweep_ms);
  if (rc == 0) {
    RT_INFO("hold sweeper started", RT_LF_INT("hold_ttl_ms", cfg.ttl_ms),
            RT_LF_INT("every_ms", cfg.sweep_ms));
  }
  return rc;
}

void account_holds_stop(svc_thread_t *th) {
  sweeper.stopped = true;
  rt_timer_stop(th->loop, &sweeper.timer);
}

int account_holds_config(void) {
  int rc = rt_env_ms("HOLD_TTL", 5u * 60u * 1000u, &cfg.ttl_ms);
  if (rc == 0) rc = rt_env_ms("HOLD_SWEEP_INTERVAL", 1000, &cfg.sweep_ms);
  if (rc == 0 && (cfg.ttl_ms == 0 || cfg.sweep_ms == 0)) {
    fprintf(stderr, "HOLD_TTL and HOLD_SWEEP_INTERVAL must be positive\n");
    rc = RT_E_CONFIG;
  }
  return rc;
}
