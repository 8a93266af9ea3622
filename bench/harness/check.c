/*
 * check.c - the invariant check at the end of a run.
 *
 * Through the API, on the loop, in stages (each up to CHECK_SLOTS requests
 * at once):
 *   replay    every operation whose outcome stayed unknown is sent again
 *             with its Idempotency-Key: the answer is the first one's, or
 *             the operation happens now; either way it is applied once
 *             and the model learns which.
 *   payments  payments given up during the run are polled until final.
 *   accounts  every account is read back (balance, held, overdraft).
 *   outbox    each service's /metrics, until outbox_pending is 0.
 *   audit     GET /v1/events/verify, as an auditor.
 * Then, with the loop stopped, the databases directly (libpq, blocking:
 * no loop runs any more), when their URLs are known.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "harness.h"

#define CHECK_SLOTS 16
#define REPLAY_ATTEMPTS 25
#define RETRY_MS 200
#define OUTBOX_POLL_MS 250

enum { CS_REPLAY = 1, CS_PAYMENTS, CS_ACCOUNTS, CS_OUTBOX, CS_AUDIT, CS_END };

typedef struct slot {
  bench_t *b;
  bool busy;
  uint32_t item;
  uint32_t attempts;
  bool polling;             /* a replayed payment: waiting for it to be final */
  char pay_id[ID_BYTES];
  char target[PATH_BYTES];
  char body[512];
  rt_timer_t timer;
} slot_t;

/* Sized at start-up: the check phase never has more requests at once. */
static slot_t slots[CHECK_SLOTS];
static uint32_t unknown_left;          /* replays that did not resolve */
static int64_t outbox_pending[UP_COUNT]; /* -1: not asked or no answer */
static bool outbox_seen[UP_COUNT];
static rt_timer_t stage_timer;

static void stage_next(bench_t *b);
static void slot_start(slot_t *s);

void bench_check_add(bench_t *b, const char *name, check_status_t status, const char *fmt, ...) {
  if (b->checks_count == CHECKS_MAX) return;
  check_t *c = &b->checks[b->checks_count++];
  snprintf(c->name, sizeof c->name, "%s", name);
  c->status = status;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(c->detail, sizeof c->detail, fmt, ap);
  va_end(ap);
}

static uint32_t stage_items(const bench_t *b) {
  switch (b->check_stage) {
  case CS_REPLAY: return b->unknowns_count;
  case CS_PAYMENTS: return b->unfinished_count;
  case CS_ACCOUNTS: return b->accounts_count;
  default: return 0;
  }
}

/* A slot is done with its item: take the next, or end the stage. */
static void slot_next(slot_t *s) {
  bench_t *b = s->b;
  s->busy = false;
  if (b->check_cursor < stage_items(b)) {
    s->item = b->check_cursor++;
    s->attempts = 0;
    s->polling = false;
    slot_start(s);
    return;
  }
  assert(b->check_pending > 0);
  if (--b->check_pending == 0) stage_next(b);
}

static void slot_retry_fire(rt_timer_t *t) { slot_start(t->ctx); }

static void slot_retry(slot_t *s, uint32_t ms) {
  rt_timer_init(&s->timer, slot_retry_fire, s);
  (void)bench_timer_start(s->b, &s->timer, ms, 0);
}

static bool past_deadline(const bench_t *b) { return rt_now_ns() >= b->check_deadline_ns; }

/* ---- replays ------------------------------------------------------------ */

static void replay_unresolved(slot_t *s) {
  bench_t *b = s->b;
  const unknown_t *u = &b->unknowns[s->item];
  unknown_left++;
  b->accounts[u->src].unverifiable = true;
  if (u->kind != KIND_TOPUP) b->accounts[u->dst].unverifiable = true;
  slot_next(s);
}

static void on_replay(void *ctx, int err, const http_msg_t *resp) {
  slot_t *s = ctx;
  bench_t *b = s->b;
  const unknown_t *u = &b->unknowns[s->item];
  if (s->polling) {
    char state[32] = "";
    if (err == 0 && resp->status == 200)
      bench_json_str(resp->body, resp->body_len, "state", state, sizeof state);
    if (strcmp(state, "completed") == 0) bench_model_apply(b, KIND_PAYMENT, u->src, u->dst, u->amount);
    if (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0) {
      slot_next(s);
    } else if (past_deadline(b)) {
      replay_unresolved(s);
    } else {
      slot_retry(s, state[0] ? 0 : RETRY_MS);
    }
    return;
  }
  if (err == 0 && resp->status / 100 == 2) {
    if (u->kind != KIND_PAYMENT) {
      bench_model_apply(b, u->kind, u->src, u->dst, u->amount);
      slot_next(s);
      return;
    }
    if (bench_json_str(resp->body, resp->body_len, "id", s->pay_id, sizeof s->pay_id) < 0) {
      replay_unresolved(s);
      return;
    }
    s->polling = true;
    slot_start(s);
    return;
  }
  if (err == 0 && resp->status >= 400 && resp->status < 500 && resp->status != 409 &&
      resp->status != 408 && resp->status != 429) {
    slot_next(s); /* refused: it never happened */
    return;
  }
  if (++s->attempts < REPLAY_ATTEMPTS && !past_deadline(b)) {
    slot_retry(s, RETRY_MS);
    return;
  }
  replay_unresolved(s);
}

static int send_replay(slot_t *s) {
  bench_t *b = s->b;
  const unknown_t *u = &b->unknowns[s->item];
  uint32_t owner = b->accounts[u->src].customer;
  if (s->polling) {
    snprintf(s->target, sizeof s->target, "/v1/payments/%s?wait=%u", s->pay_id,
             b->cfg->payment_wait_ms);
    return bench_request(b, bench_api_upstream(b, UP_PAYMENT), owner, NULL, "GET", s->target,
                         NULL, NULL, on_replay, s);
  }
  bench_money_request(b, u->kind, u->src, u->dst, u->amount, s->target, sizeof s->target,
                      s->body, sizeof s->body);
  upstream_t up = u->kind == KIND_PAYMENT ? UP_PAYMENT : UP_ACCOUNT;
  return bench_request(b, bench_api_upstream(b, up), owner, NULL, "POST", s->target, u->key,
                       s->body, on_replay, s);
}

/* ---- payments given up during the run ------------------------------------ */

static void on_payment(void *ctx, int err, const http_msg_t *resp) {
  slot_t *s = ctx;
  bench_t *b = s->b;
  unfinished_t *u = &b->unfinished[s->item];
  char state[32] = "";
  if (err == 0 && resp->status == 200)
    bench_json_str(resp->body, resp->body_len, "state", state, sizeof state);
  if (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0) {
    u->final = true;
    if (state[0] == 'c') bench_model_apply(b, KIND_PAYMENT, u->src, u->dst, u->amount);
    slot_next(s);
    return;
  }
  if (past_deadline(b)) {
    b->accounts[u->src].unverifiable = true;
    b->accounts[u->dst].unverifiable = true;
    slot_next(s);
    return;
  }
  slot_retry(s, state[0] ? 0 : RETRY_MS);
}

static int send_payment(slot_t *s) {
  bench_t *b = s->b;
  const unfinished_t *u = &b->unfinished[s->item];
  snprintf(s->target, sizeof s->target, "/v1/payments/%s?wait=%u", u->id, b->cfg->payment_wait_ms);
  return bench_request(b, bench_api_upstream(b, UP_PAYMENT), b->accounts[u->src].customer, NULL,
                       "GET", s->target, NULL, NULL, on_payment, s);
}

/* ---- accounts ------------------------------------------------------------ */

static void on_account(void *ctx, int err, const http_msg_t *resp) {
  slot_t *s = ctx;
  account_t *a = &s->b->accounts[s->item];
  if (err == 0 && resp->status == 200 &&
      bench_json_i64(resp->body, resp->body_len, "balance", &a->seen_balance) == 0 &&
      bench_json_i64(resp->body, resp->body_len, "held", &a->seen_held) == 0) {
    if (bench_json_i64(resp->body, resp->body_len, "overdraft_limit", &a->overdraft) < 0)
      a->overdraft = 0;
    a->seen = true;
    slot_next(s);
    return;
  }
  if (++s->attempts < REPLAY_ATTEMPTS && !past_deadline(s->b)) {
    slot_retry(s, RETRY_MS);
    return;
  }
  slot_next(s);
}

static int send_account(slot_t *s) {
  bench_t *b = s->b;
  account_t *a = &b->accounts[s->item];
  snprintf(s->target, sizeof s->target, "/v1/accounts/%s", a->id);
  return bench_request(b, bench_api_upstream(b, UP_ACCOUNT), a->customer, NULL, "GET", s->target,
                       NULL, NULL, on_account, s);
}

static void slot_start(slot_t *s) {
  bench_t *b = s->b;
  s->busy = true;
  int rc;
  switch (b->check_stage) {
  case CS_REPLAY: rc = send_replay(s); break;
  case CS_PAYMENTS: rc = send_payment(s); break;
  case CS_ACCOUNTS: rc = send_account(s); break;
  default: rc = -EINVAL; break;
  }
  if (rc < 0) {
    /* Could not even be sent (a full queue): try again shortly. */
    if (++s->attempts < REPLAY_ATTEMPTS && !past_deadline(b)) {
      slot_retry(s, RETRY_MS);
      return;
    }
    if (b->check_stage == CS_REPLAY) {
      replay_unresolved(s);
      return;
    }
    slot_next(s);
  }
}

/* Runs a stage over its items with up to CHECK_SLOTS at once. */
static void stage_items_start(bench_t *b) {
  b->check_cursor = 0;
  b->check_pending = 0;
  uint32_t n = stage_items(b);
  for (uint32_t i = 0; i < CHECK_SLOTS && i < n; i++) {
    slot_t *s = &slots[i];
    *s = (slot_t){.b = b, .item = b->check_cursor++};
    b->check_pending++;
    slot_start(s);
  }
  if (b->check_pending == 0) stage_next(b);
}

/* ---- outbox metrics --------------------------------------------------- */

/* The sum of every outbox_pending sample on a /metrics page; -1: none. */
static int64_t metric_sum(const char *text, size_t len, const char *name) {
  size_t nl = strlen(name);
  int64_t sum = -1;
  const char *p = text, *end = text + len;
  while (p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    if (eol == NULL) eol = end;
    if ((size_t)(eol - p) > nl && memcmp(p, name, nl) == 0 && (p[nl] == ' ' || p[nl] == '{')) {
      const char *v = memchr(p, ' ', (size_t)(eol - p));
      if (v != NULL) {
        long long x = strtoll(v + 1, NULL, 10);
        sum = (sum < 0 ? 0 : sum) + x;
      }
    }
    p = eol + 1;
  }
  return sum;
}

static uint32_t outbox_waiting;

static void outbox_round(bench_t *b);

static void on_metrics(void *ctx, int err, const http_msg_t *resp) {
  upstream_t u = (upstream_t)(uintptr_t)ctx;
  bench_t *b = slots[0].b;
  if (err == 0 && resp->status == 200) {
    outbox_seen[u] = true;
    outbox_pending[u] = metric_sum(resp->body, resp->body_len, "outbox_pending");
  }
  if (--outbox_waiting > 0) return;
  bool all_zero = true;
  for (int i = UP_PROFILE; i < UP_COUNT; i++)
    if (outbox_seen[i] && outbox_pending[i] != 0) all_zero = false;
  if (all_zero || past_deadline(b)) {
    stage_next(b);
    return;
  }
  (void)bench_timer_start(b, &stage_timer, OUTBOX_POLL_MS, 0);
}

static void outbox_fire(rt_timer_t *t) { outbox_round(t->ctx); }

static void outbox_round(bench_t *b) {
  outbox_waiting = 1; /* held until every request is out */
  for (int u = UP_PROFILE; u < UP_COUNT; u++) {
    if (b->client[u] == NULL) continue;
    outbox_waiting++;
    if (bench_request(b, (upstream_t)u, UINT32_MAX, NULL, "GET", "/metrics", NULL, NULL, on_metrics,
                      (void *)(uintptr_t)u) < 0)
      outbox_waiting--;
  }
  on_metrics((void *)(uintptr_t)UP_GATEWAY, -1, NULL);
}

/* ---- audit chain -------------------------------------------------------- */

static void on_audit_mark(void *ctx, int err, const http_msg_t *resp) {
  bench_t *b = ctx;
  if (err != 0 || resp->status != 200) return; /* the check verifies it all */
  int64_t n = metric_sum(resp->body, resp->body_len, "audit_chain_length");
  b->audit_from = n > 1 ? n : 0;
}

void bench_check_mark_audit(bench_t *b) {
  b->audit_from = 0;
  if (b->client[UP_EVENT] == NULL) return;
  (void)bench_request(b, UP_EVENT, UINT32_MAX, NULL, "GET", "/metrics", NULL, NULL,
                      on_audit_mark, b);
}

static void on_audit(void *ctx, int err, const http_msg_t *resp) {
  bench_t *b = ctx;
  const char *name = b->audit_from > 0
                         ? "audit chain verifies from before the run (GET /v1/events/verify?from=)"
                         : "audit chain verifies (GET /v1/events/verify)";
  if (err != 0) {
    bench_check_add(b, name, CHECK_SKIP, "event service unreachable: %s", rt_strerror(err));
  } else if (resp->status == 404) {
    bench_check_add(b, name, CHECK_SKIP, "not available (404)");
  } else if (resp->status == 200) {
    bool v = true, bad = false;
    const char *keys[] = {"ok", "valid", "verified"};
    for (int i = 0; i < 3; i++)
      if (bench_json_bool(resp->body, resp->body_len, keys[i], &v) == 0 && !v) bad = true;
    bench_check_add(b, name, bad ? CHECK_FAIL : CHECK_PASS, "%.200s", resp->body);
  } else {
    bench_check_add(b, name, CHECK_FAIL, "status %d: %.200s", resp->status, resp->body);
  }
  stage_next(b);
}

static void audit_start(bench_t *b) {
  const char *name = "audit chain verifies (GET /v1/events/verify)";
  if (b->client[UP_EVENT] == NULL || b->cfg->hmac_key[0] == '\0') {
    bench_check_add(b, name, CHECK_SKIP,
                    "no auditor identity: needs the event service's address and AUTH_HMAC_KEY");
    stage_next(b);
    return;
  }
  char target[64];
  if (b->audit_from > 0)
    snprintf(target, sizeof target, "/v1/events/verify?from=%" PRId64, b->audit_from);
  else
    snprintf(target, sizeof target, "/v1/events/verify");
  if (bench_request(b, UP_EVENT, UINT32_MAX, "auditor", "GET", target, NULL, NULL, on_audit,
                    b) < 0) {
    bench_check_add(b, name, CHECK_SKIP, "could not ask the event service");
    stage_next(b);
  }
}

/* ---- verdicts of the API stages --------------------------------------- */

static void api_verdicts(bench_t *b) {
  uint32_t unseen = 0, wrong = 0, held = 0, below = 0, unverifiable = 0;
  int64_t total = 0;
  char first[200] = "";
  for (uint32_t i = 0; i < b->accounts_count; i++) {
    const account_t *a = &b->accounts[i];
    if (!a->seen) {
      unseen++;
      continue;
    }
    total += a->seen_balance + a->seen_held;
    if (a->seen_held != 0) held++;
    if (a->seen_balance < -a->overdraft) below++;
    if (a->unverifiable) {
      unverifiable++;
      continue;
    }
    if (a->seen_balance != a->expected) {
      if (wrong++ == 0)
        snprintf(first, sizeof first, "; first: %s expected %" PRId64 ", service says %" PRId64,
                 a->id, a->expected, a->seen_balance);
    }
  }
  bench_check_add(b, "each balance equals the harness's own model (API)",
                  wrong || unseen ? CHECK_FAIL : CHECK_PASS,
                  "%u accounts: %u differ, %u unreadable, %u not verifiable (outcome unknown)%s",
                  b->accounts_count, wrong, unseen, unverifiable, first);
  bench_check_add(b, "money unchanged by transfers and payments (API, the run's accounts)",
                  total == b->topups_total && !unseen && !unknown_left ? CHECK_PASS : CHECK_FAIL,
                  "balance + held = %" PRId64 ", funded and topped up %" PRId64, total,
                  b->topups_total);
  bench_check_add(b, "every acknowledged operation applied exactly once (unknown outcomes replayed)",
                  unknown_left || b->unknowns_overflow ? CHECK_FAIL : CHECK_PASS,
                  "%u unknown outcomes replayed, %u unresolved%s", b->unknowns_count, unknown_left,
                  b->unknowns_overflow ? ", more than could be kept" : "");
  uint32_t open = 0;
  for (uint32_t i = 0; i < b->unfinished_count; i++)
    if (!b->unfinished[i].final) open++;
  bench_check_add(b, "every payment final (API)", open ? CHECK_FAIL : CHECK_PASS,
                  "%" PRIu64 " completed, %" PRIu64 " failed, %u given up during the run, %u still open",
                  b->payments_completed, b->payments_failed, b->unfinished_count, open);
  bench_check_add(b, "no open holds on the run's accounts (API)", held ? CHECK_FAIL : CHECK_PASS,
                  "%u accounts with money held", held);
  bench_check_add(b, "no account below its overdraft (API)", below ? CHECK_FAIL : CHECK_PASS,
                  "%u below", below);
  char per[256] = "";
  size_t len = 0;
  bool any = false, bad = false;
  for (int u = UP_PROFILE; u < UP_COUNT; u++) {
    if (!outbox_seen[u]) continue;
    any = true;
    if (outbox_pending[u] > 0) bad = true;
    len += (size_t)snprintf(per + len, sizeof per - len, "%s%s %" PRId64, len ? ", " : "",
                            bench_up_names[u], outbox_pending[u]);
    if (len >= sizeof per) len = sizeof per - 1;
  }
  bench_check_add(b, "outbox drained in every service (metrics outbox_pending)",
                  !any ? CHECK_SKIP : bad ? CHECK_FAIL : CHECK_PASS, "%s",
                  any ? per : "no service /metrics reachable");
}

static void stage_fire(rt_timer_t *t) { stage_next(t->ctx); }

static void stage_next(bench_t *b) {
  b->check_stage++;
  switch (b->check_stage) {
  case CS_REPLAY:
  case CS_PAYMENTS:
  case CS_ACCOUNTS:
    stage_items_start(b);
    return;
  case CS_OUTBOX:
    rt_timer_init(&stage_timer, outbox_fire, b);
    outbox_round(b);
    return;
  case CS_AUDIT:
    audit_start(b);
    return;
  default:
    api_verdicts(b);
    bench_check_done(b);
    return;
  }
}

void bench_check_start(bench_t *b) {
  for (int u = 0; u < UP_COUNT; u++) outbox_pending[u] = -1;
  slots[0].b = b;
  b->check_stage = 0;
  b->check_deadline_ns = rt_now_ns() + (uint64_t)b->cfg->drain_timeout_ms * 1000000u +
                         (uint64_t)b->cfg->payment_timeout_ms * 1000000u;
  /* From a callback of its own, so that a stage never starts inside the
   * completion that ended the previous one's caller. */
  rt_timer_init(&stage_timer, stage_fire, b);
  (void)bench_timer_start(b, &stage_timer, 0, 0);
}

/* ------------------------------------------------------------------------ */
/* SQL                                                                      */
/* ------------------------------------------------------------------------ */

static PGconn *db_open(const bench_t *b, upstream_t u) {
  const char *url = b->cfg->db_url[u];
  if (url[0] == '\0') return NULL;
  PGconn *c = PQconnectdb(url);
  if (PQstatus(c) != CONNECTION_OK) {
    fprintf(stderr, "bench: cannot connect to the %s database: %s", bench_up_names[u],
            PQerrorMessage(c));
    PQfinish(c);
    return NULL;
  }
  return c;
}

/* One integer from a query; INT64_MIN on failure. */
static int64_t db_int(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  int64_t v = INT64_MIN;
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return v;
}

static void sleep_ms(uint32_t ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* A count of rows written since `since` (the query's $1); INT64_MIN on
 * failure. */
static int64_t db_count_since(PGconn *c, const char *sql, const char *since) {
  const char *vals[] = {since[0] ? since : "-infinity"};
  PGresult *r = PQexecParams(c, sql, 1, NULL, vals, NULL, NULL, 0);
  int64_t v = INT64_MIN;
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 && !PQgetisnull(r, 0, 0))
    v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
  PQclear(r);
  return v;
}

/* Polls a count until it is 0 or the deadline passes; returns the last. */
static int64_t db_until_zero(PGconn *c, const char *sql, const char *since,
                             uint64_t deadline_ns) {
  for (;;) {
    int64_t v = db_count_since(c, sql, since);
    if (v == 0 || v == INT64_MIN || rt_now_ns() >= deadline_ns) return v;
    sleep_ms(200);
  }
}

/* Customers' and system accounts' money in the run's currency. */
static bool money_sums(const bench_t *b, PGconn *c, int64_t *customers, int64_t *system) {
  const char *vals[] = {b->cfg->currency};
  PGresult *r = PQexecParams(
      c,
      "SELECT coalesce(sum(balance + held) FILTER (WHERE kind = 'customer'), 0),"
      " coalesce(sum(balance + held) FILTER (WHERE kind = 'system'), 0)"
      " FROM accounts WHERE currency = $1",
      1, NULL, vals, NULL, NULL, 0);
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
  if (ok) {
    *customers = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    *system = strtoll(PQgetvalue(r, 0, 1), NULL, 10);
  }
  PQclear(r);
  return ok;
}

/* Each database's own clock at the start: the checks of outboxes, holds
 * and payments look at rows written since, so leftovers of other work in
 * a shared database (a service once run without the bus) are not the
 * run's to answer for. */
static void sql_mark_start(bench_t *b, upstream_t u, PGconn *c) {
  PGresult *r = PQexec(c, "SELECT now()::text");
  if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
    snprintf(b->sql_since[u], sizeof b->sql_since[u], "%s", PQgetvalue(r, 0, 0));
  PQclear(r);
}

void bench_sql_start(bench_t *b) {
  for (int u = UP_PROFILE; u < UP_COUNT; u++) {
    PGconn *c = db_open(b, (upstream_t)u);
    if (c == NULL) continue;
    sql_mark_start(b, (upstream_t)u, c);
    if (u == UP_ACCOUNT)
      b->sql_snapshot = money_sums(b, c, &b->sql_start_customer, &b->sql_start_system);
    PQfinish(c);
  }
}

static void sql_money(bench_t *b, PGconn *c) {
  int64_t off = db_int(c, "SELECT count(*) FROM (SELECT currency FROM accounts GROUP BY currency"
                          " HAVING sum(balance + held) <> 0) x");
  bench_check_add(b, "balance + held sums to zero per currency, system accounts included (SQL)",
                  off == 0 ? CHECK_PASS : CHECK_FAIL, "%" PRId64 " currencies off", off);
  int64_t cust = 0, sys = 0;
  if (!b->sql_snapshot || !money_sums(b, c, &cust, &sys)) return;
  int64_t dc = cust - b->sql_start_customer, ds = sys - b->sql_start_system;
  bool ok = dc == b->topups_total && ds == -b->topups_total;
  bench_check_add(b, "money moved only by top-ups: customers +top-ups, system -top-ups (SQL)",
                  ok ? CHECK_PASS : CHECK_FAIL,
                  "%s customers %+" PRId64 ", system %+" PRId64 ", the run's top-ups %" PRId64
                  "%s",
                  b->cfg->currency, dc, ds, b->topups_total,
                  ok ? "" : " (other writers during the run would also make this differ)");
}

static void sql_accounts(bench_t *b, PGconn *c, uint64_t deadline) {
  int64_t below = db_int(c, "SELECT count(*) FROM accounts WHERE kind = 'customer' AND"
                            " (balance < -overdraft_limit OR held < 0)");
  bench_check_add(b, "no account below its overdraft, no negative held (SQL)",
                  below == 0 ? CHECK_PASS : CHECK_FAIL, "%" PRId64 " accounts", below);
  int64_t holds = db_until_zero(
      c, "SELECT count(*) FROM holds WHERE state IN ('held', 'new') AND created_at >= $1",
      b->sql_since[UP_ACCOUNT], deadline);
  bench_check_add(b, "no open holds since the run began (SQL, state held or new)",
                  holds == 0 ? CHECK_PASS : CHECK_FAIL, "%" PRId64 " open", holds);
  /* The model against the rows themselves. */
  uint32_t wrong = 0, missing = 0;
  char first[200] = "";
  for (uint32_t i = 0; i < b->accounts_count; i++) {
    const account_t *a = &b->accounts[i];
    if (a->unverifiable) continue;
    const char *vals[] = {a->id};
    PGresult *r = PQexecParams(c, "SELECT balance, held FROM accounts WHERE id = $1", 1, NULL,
                               vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1) {
      missing++;
    } else if (strtoll(PQgetvalue(r, 0, 0), NULL, 10) != a->expected) {
      if (wrong++ == 0)
        snprintf(first, sizeof first, "; first: %s expected %" PRId64 ", row has %s", a->id,
                 a->expected, PQgetvalue(r, 0, 0));
    }
    PQclear(r);
  }
  bench_check_add(b, "each balance equals the harness's own model (SQL)",
                  wrong || missing ? CHECK_FAIL : CHECK_PASS, "%u differ, %u missing%s", wrong,
                  missing, first);
}

void bench_sql_check(bench_t *b) {
  uint64_t deadline = rt_now_ns() + (uint64_t)b->cfg->drain_timeout_ms * 1000000u;
  PGconn *c = db_open(b, UP_PAYMENT);
  if (c != NULL) {
    int64_t open = db_until_zero(c,
                                 "SELECT count(*) FROM payments WHERE state NOT IN"
                                 " ('completed', 'failed') AND created_at >= $1",
                                 b->sql_since[UP_PAYMENT], deadline);
    bench_check_add(b, "every payment since the run began final (SQL)", open == 0 ? CHECK_PASS : CHECK_FAIL,
                    "%" PRId64 " not final", open);
    PQfinish(c);
  }
  c = db_open(b, UP_ACCOUNT);
  if (c != NULL) {
    sql_money(b, c);
    sql_accounts(b, c, deadline);
    PQfinish(c);
  }
  char per[256] = "";
  size_t len = 0;
  bool any = false, bad = false;
  for (int u = UP_PROFILE; u < UP_COUNT; u++) {
    c = db_open(b, (upstream_t)u);
    if (c == NULL) continue;
    any = true;
    int64_t n = db_until_zero(
        c, "SELECT count(*) FROM outbox WHERE published_at IS NULL AND created_at >= $1",
        b->sql_since[u], deadline);
    if (n != 0) bad = true;
    len += (size_t)snprintf(per + len, sizeof per - len, "%s%s %" PRId64, len ? ", " : "",
                            bench_up_names[u], n);
    if (len >= sizeof per) len = sizeof per - 1;
    PQfinish(c);
  }
  if (any)
    bench_check_add(b, "outbox drained in every service database since the run began (SQL)",
                    bad ? CHECK_FAIL : CHECK_PASS, "unpublished rows: %s", per);
}
