/*
 * payment.c - the payment service: payments as a choreography saga.
 *
 *   POST /v1/payments          the owner of the source account; 202
 *   GET  /v1/payments/{id}     the owner, operator; ?wait=MS long-polls
 *                              (at most 30 s) until the payment is final
 *   GET  /v1/payments          own payments (customer), all (operator);
 *                              ?state=, cursor-paginated by id
 *
 * Life of a payment (migration 0001 draws the states):
 *   1. POST: the body checked; the Idempotency-Key (required) claimed in
 *      two phases, since the account service is asked first whether the
 *      caller owns the source account (and its currency); then one
 *      transaction: the payment (pending), its first history line, the
 *      event payment.requested, the stored answer. 202.
 *   2. account.funds_reserved: the limits (PAYMENT_MAX_AMOUNT per payment,
 *      PAYMENT_DAILY_MAX per customer, day and currency, taken by one
 *      guarded upsert) decide: authorized (payment.authorized) or
 *      cancelled with limit_exceeded (payment.cancelled, whose release of
 *      the hold is the compensation).
 *      account.funds_rejected: failed with the account's reason.
 *   3. account.payment_settled: completed (payment.completed).
 *      account.settlement_failed, account.funds_released: failed
 *      (payment.failed), the day's authorized amount given back.
 * Every step is one guarded transition in the transaction that claims the
 * event id, after the payment's row is locked; an event that finds the
 * payment in another state is absorbed. Final transitions wake the
 * long-polls of that payment on every loop thread.
 *
 * Thread 0 also reports payments not final after SAGA_STUCK_AFTER
 * (metrics payment_stuck, and one log line per payment).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "payment_bodies.h"
#include "svc.h"

extern const svc_migration_t payment_migrations[];
extern const size_t payment_migrations_count;

#define WAIT_MS_MAX 30000
#define STUCK_CHECK_MS 5000
#define STUCK_LOG_MAX 20

static struct {
  svc_peer_t account; /* ACCOUNT_ADDR, ACCOUNT_TIMEOUT */
  uint32_t stuck_after_ms;
  char max_amount[24];
  char daily_max[24];
} cfg;

/* The stuck-saga detector's findings, read by /metrics on any thread. */
static struct {
  _Atomic uint64_t count;
  _Atomic uint64_t oldest_s;
  rt_timer_t timer;
  svc_thread_t *th;
  bool checking;
  char logged_until[40]; /* created_at of the newest one logged */
} stuck;

static int s_insert, s_get, s_list, s_lock, s_authorize, s_complete, s_fail, s_stuck;

/* RFC 3339, UTC, milliseconds; colons escaped, as in the account service. */
#define TS(col) "to_char(" col " AT TIME ZONE 'UTC', E'YYYY-MM-DD\"T\"HH24\\x3aMI\\x3aSS.MS\"Z\"')"

#define PAYMENT_FIELDS(p)                                                      \
  "'id', " p ".id, 'state', " p ".state, 'reason', " p ".reason,"                            \
  " 'from_account_id', " p ".from_account_id, 'to_account_id', " p ".to_account_id,"           \
  " 'amount', " p ".amount, 'currency', " p ".currency, 'reference', " p ".reference,"         \
  " 'created_at', " TS(p ".created_at") ", 'updated_at', " TS(p ".updated_at") ","             \
  " 'final_at', " TS(p ".final_at")
#define PAYMENT_JSON(p) "json_build_object(" PAYMENT_FIELDS(p) ")"

static const svc_stmt_t stmts[] = {
    /* $1 id, $2 customer, $3 from, $4 to, $5 amount, $6 currency, $7
     * reference, $8 correlation id, $9/$10 the claim's scope and key,
     * $11/$12/$13 payment.requested, $14 the answer's status. */
    {&s_insert,
     "WITH p AS (INSERT INTO payments (id, customer_id, from_account_id, to_account_id, amount,"
     "  currency, reference, state, transitions, correlation_id, created_at, updated_at)"
     "  SELECT $1::uuid, $2::uuid, $3::uuid, $4::uuid, $5::bigint, $6, $7, 'pending', 1, $8,"
     "  clock_timestamp(), clock_timestamp() WHERE " SVC_IDEM_CLAIMED("9", "10") " RETURNING *),"
     " h AS (INSERT INTO payment_history (payment_id, seq, from_state, to_state, at)"
     "  SELECT id, 1, NULL, 'pending', created_at FROM p RETURNING 1),"
     " o AS (" SVC_OUTBOX_INSERT("p", "11", "12", "p.id::text",
                                 "json_build_object('payment_id', p.id, 'customer_id', p.customer_id,"
                                 " 'from_account_id', p.from_account_id, 'to_account_id',"
                                 " p.to_account_id, 'amount', p.amount, 'currency', p.currency)",
                                 "13") " RETURNING 1),"
     " r AS (SELECT " PAYMENT_JSON("p") "::text AS body FROM p),"
     " k AS (" SVC_IDEM_STORE_OK_SQL("9", "10", "14", "(SELECT body FROM r)") " RETURNING 1)"
     " SELECT body FROM r",
     14},
    /* $1 payment: owner, state, and the payment with its history. */
    {&s_get,
     "SELECT p.customer_id::text, p.state, json_build_object(" PAYMENT_FIELDS("p") ","
     " 'history', (SELECT json_agg(json_build_object('from', h.from_state, 'to', h.to_state,"
     " 'reason', h.reason, 'at', " TS("h.at") ") ORDER BY h.seq)"
     " FROM payment_history h WHERE h.payment_id = p.id))::text"
     " FROM payments p WHERE p.id = $1::uuid",
     1},
    /* $1 customer (NULL: all), $2 cursor, $3 state (NULL: any), $4 limit+1 */
    {&s_list,
     "SELECT p.id::text, " PAYMENT_JSON("p") "::text FROM payments p"
     " WHERE ($1::uuid IS NULL OR p.customer_id = $1::uuid)"
     " AND ($2::uuid IS NULL OR p.id > $2::uuid) AND ($3::text IS NULL OR p.state = $3)"
     " ORDER BY p.id LIMIT $4::int",
     4},
    /* Every transition starts here: one payment at a time. */
    {&s_lock, "SELECT 1 FROM payments WHERE id = $1::uuid FOR UPDATE", 1},
    /* account.funds_reserved. $1 payment, $2 event id, $3 max per payment,
     * $4 daily max, $5/$6/$7 payment.authorized, $8/$9/$10
     * payment.cancelled. */
    {&s_authorize,
     "WITH p AS (SELECT customer_id, currency, amount FROM payments WHERE id = $1::uuid"
     "  AND state = 'pending'),"
     " lim AS (INSERT INTO customer_daily (customer_id, day, currency, amount)"
     "  SELECT p.customer_id, (now() AT TIME ZONE 'UTC')::date, p.currency, p.amount FROM p"
     "  WHERE p.amount <= $3::bigint AND p.amount <= $4::bigint"
     "  ON CONFLICT (customer_id, day, currency) DO UPDATE"
     "  SET amount = customer_daily.amount + EXCLUDED.amount"
     "  WHERE customer_daily.amount + EXCLUDED.amount <= $4::bigint RETURNING day),"
     " u AS (UPDATE payments SET"
     "  state = CASE WHEN EXISTS (SELECT 1 FROM lim) THEN 'authorized' ELSE 'cancelled' END,"
     "  reason = CASE WHEN EXISTS (SELECT 1 FROM lim) THEN NULL ELSE 'limit_exceeded' END,"
     "  limit_day = (SELECT day FROM lim), transitions = transitions + 2,"
     "  updated_at = clock_timestamp()"
     "  WHERE id = $1::uuid AND state = 'pending'"
     "  RETURNING id, state, reason, transitions, from_account_id, to_account_id, amount, currency,"
     "  updated_at),"
     " h AS (INSERT INTO payment_history (payment_id, seq, from_state, to_state, reason, event_id, at)"
     "  SELECT u.id, u.transitions - 1, 'pending', 'reserved', NULL, $2::uuid, u.updated_at FROM u"
     "  UNION ALL SELECT u.id, u.transitions, 'reserved', u.state, u.reason, $2::uuid, u.updated_at"
     "  FROM u RETURNING 1),"
     " o AS (INSERT INTO outbox (id, topic, key, payload, headers, created_at)"
     "  SELECT CASE WHEN u.state = 'authorized' THEN $5 ELSE $8 END::uuid,"
     "  CASE WHEN u.state = 'authorized' THEN $6 ELSE $9 END, u.id::text,"
     "  json_build_object('payment_id', u.id, 'from_account_id', u.from_account_id,"
     "  'to_account_id', u.to_account_id, 'amount', u.amount, 'currency', u.currency,"
     "  'reason', u.reason)::jsonb,"
     "  CASE WHEN u.state = 'authorized' THEN $7 ELSE $10 END::jsonb, now() FROM u RETURNING 1)"
     " SELECT u.state FROM u",
     10},
    /* account.payment_settled. $1 payment, $2 event id, $3/$4/$5
     * payment.completed. */
    {&s_complete,
     "WITH u AS (UPDATE payments SET state = 'completed', transitions = transitions + 1,"
     "  updated_at = clock_timestamp(), final_at = clock_timestamp()"
     "  WHERE id = $1::uuid AND state = 'authorized'"
     "  RETURNING id, state, transitions, amount, currency, final_at),"
     " h AS (INSERT INTO payment_history (payment_id, seq, from_state, to_state, event_id, at)"
     "  SELECT u.id, u.transitions, 'authorized', 'completed', $2::uuid, u.final_at FROM u"
     "  RETURNING 1),"
     " o AS (" SVC_OUTBOX_INSERT("u", "3", "4", "u.id::text",
                                 "json_build_object('payment_id', u.id, 'amount', u.amount,"
                                 " 'currency', u.currency)",
                                 "5") " RETURNING 1)"
     " SELECT u.state FROM u",
     5},
    /* To failed. $1 payment, $2 event id, $3 the states it may leave
     * (text[]), $4 the reason when the payment has none yet, $5/$6/$7
     * payment.failed. An authorized payment gives its day's amount back. */
    {&s_fail,
     "WITH p AS (SELECT state AS old FROM payments WHERE id = $1::uuid AND state = ANY($3::text[])),"
     " u AS (UPDATE payments SET state = 'failed', reason = coalesce(reason, $4),"
     "  transitions = transitions + 1, updated_at = clock_timestamp(), final_at = clock_timestamp()"
     "  WHERE id = $1::uuid AND state = ANY($3::text[])"
     "  RETURNING id, reason, transitions, customer_id, currency, amount, limit_day, final_at),"
     " h AS (INSERT INTO payment_history (payment_id, seq, from_state, to_state, reason, event_id, at)"
     "  SELECT u.id, u.transitions, p.old, 'failed', u.reason, $2::uuid, u.final_at FROM u, p"
     "  RETURNING 1),"
     " g AS (UPDATE customer_daily d SET amount = d.amount - u.amount FROM u"
     "  WHERE u.limit_day IS NOT NULL AND d.customer_id = u.customer_id AND d.day = u.limit_day"
     "  AND d.currency = u.currency RETURNING 1),"
     " o AS (" SVC_OUTBOX_INSERT("u", "5", "6", "u.id::text",
                                 "json_build_object('payment_id', u.id, 'reason', u.reason,"
                                 " 'amount', u.amount, 'currency', u.currency)", "7")
     "  RETURNING 1)"
     " SELECT 'failed' FROM u",
     7},
    /* $1 stuck after (s), $2 newest already logged: how many, and the
     * oldest ones not logged yet. */
    {&s_stuck,
     "WITH s AS (SELECT id, state, created_at FROM payments"
     "  WHERE state NOT IN ('completed', 'failed')"
     "  AND created_at < now() - make_interval(secs => $1::double precision))"
     " SELECT (SELECT count(*) FROM s),"
     " (SELECT coalesce(extract(epoch FROM now() - min(created_at))::bigint, 0) FROM s),"
     " x.id::text, x.state, extract(epoch FROM now() - x.created_at)::bigint, x.created_at::text"
     " FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT * FROM s WHERE $2::timestamptz IS NULL"
     "  OR s.created_at > $2::timestamptz ORDER BY s.created_at LIMIT 20) x ON true",
     2},
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static bool is_staff(const svc_req_t *req) { return svc_has_role(req, SVC_ROLE_OPERATOR); }

static bool owns(const svc_req_t *req, const char *customer_id) {
  return customer_id != NULL && svc_has_role(req, SVC_ROLE_CUSTOMER) &&
         strcmp(req->who.subject, customer_id) == 0;
}

static void reply_text_json(svc_req_t *req, int status, const char *json) {
  svc_reply_json(req, status, json ? json_loads(json, 0, NULL) : NULL);
}

/* ------------------------------------------------------------------------ */
/* POST /v1/payments                                                        */
/* ------------------------------------------------------------------------ */

typedef struct create_state {
  svc_idem_t idem;
  char id[37];
  char from[37];
  char to[37];
  char currency[4];
  char amount[24];
  int write_index;
  int fetch;        /* the read-back of payment.requested (svc_pub_fetch) */
} create_state_t;

static void create_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  create_state_t *st = SVC_STATE(req, create_state_t);
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  svc_pub_offer(req->th, b, st->fetch); /* payment.requested goes out now */
  int status = 0;
  const char *body = NULL;
  svc_idem_result_t r = svc_idem_outcome(b, &st->idem, &status, &body);
  if (r == SVC_IDEM_NEW && status == 202) {
    RT_INFO("payment requested", RT_LF_STR("payment", st->id), RT_LF_STR("amount", st->amount),
            RT_LF_STR("currency", st->currency));
  }
  svc_idem_reply(req, r, status, body);
}

static void create_write(svc_req_t *req) {
  create_state_t *st = SVC_STATE(req, create_state_t);
  svc_uuid7(st->id);
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_PAYMENT_REQUESTED, &trace);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  svc_idem_add_reopen(b, &st->idem);
  bool quiet = svc_pub_quiet(req->th, b);
  const char *vals[] = {st->id,
                        req->who.subject,
                        st->from,
                        st->to,
                        st->amount,
                        st->currency,
                        svc_json_str(req->body, "reference"),
                        trace.correlation_id,
                        svc_idem_scope(&st->idem),
                        svc_idem_key(&st->idem),
                        e.id,
                        e.topic,
                        e.headers,
                        "202"};
  st->write_index = rt_pg_add(b, s_insert, 14, vals);
  svc_idem_add_finish(b, &st->idem, 500,
                      "{\"error\":{\"code\":\"internal\",\"message\":\"payment not recorded\"}}");
  char ids[40];
  snprintf(ids, sizeof ids, "{%s}", e.id);
  st->fetch = svc_pub_fetch(req->th, b, ids, quiet);
  svc_db(req, b, create_done);
}

/* The account service's answer about the source account. */
static void create_checked(void *ctx, int err, const http_msg_t *resp) {
  svc_req_t *req = ctx;
  create_state_t *st = SVC_STATE(req, create_state_t);
  rt_log_set_request_id(http_request_id(req->ex));
  if (err != 0 || resp == NULL || (resp->status != 200 && resp->status != 404)) {
    RT_WARN("account service unavailable", RT_LF_STR("error", err ? rt_strerror(err) : "status"));
    svc_reply_error(req, 503, "account_unavailable", "cannot check the account now; retry");
    return;
  }
  json_t *acc = resp->status == 200 ? json_loadb(resp->body, resp->body_len, 0, NULL) : NULL;
  const char *owner = svc_json_str(acc, "customer_id");
  const char *kind = svc_json_str(acc, "kind");
  const char *currency = svc_json_str(acc, "currency");
  const char *status = svc_json_str(acc, "status");
  if (acc == NULL || kind == NULL || strcmp(kind, "customer") != 0 || !owns(req, owner)) {
    svc_reply_error(req, 404, "account_not_found", "no such source account");
  } else if (currency == NULL || strcmp(currency, st->currency) != 0) {
    svc_reply_error(req, 422, "currency_mismatch", "the currency differs from the account's");
  } else if (status == NULL || strcmp(status, "open") != 0) {
    svc_reply_error(req, 422, "account_closed", "the source account is not open");
  } else {
    create_write(req);
  }
  json_decref(acc);
  rt_log_set_request_id(NULL);
}

/* The claim is ours: ask the account service about the source. */
static void create_ask(svc_req_t *req) {
  create_state_t *st = SVC_STATE(req, create_state_t);
  char path[96], headers[512];
  snprintf(path, sizeof path, "/internal/accounts/%s", st->from);
  const svc_config_t *c = svc_config();
  int n = svc_auth_sign(headers, sizeof headers, c->auth_key, c->auth_key_bytes, "payment",
                        "service", "GET", path, (int64_t)time(NULL));
  int rc = n < 0 ? n
                 : http_client_request(req->th->user, "GET", path, headers, NULL, 0,
                                       create_checked, req);
  if (rc < 0) svc_reply_error(req, 503, "account_unavailable", "cannot check the account now; retry");
}

static void on_create(svc_req_t *req) {
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(payment_create_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  create_state_t *st = SVC_STATE(req, create_state_t);
  if (!svc_uuid_valid(req->who.subject)) {
    svc_reply_error(req, 403, "forbidden", "the caller is not a customer");
    return;
  }
  snprintf(st->from, sizeof st->from, "%s", svc_json_str(req->body, "from_account_id"));
  snprintf(st->to, sizeof st->to, "%s", svc_json_str(req->body, "to_account_id"));
  snprintf(st->currency, sizeof st->currency, "%s", svc_json_str(req->body, "currency"));
  snprintf(st->amount, sizeof st->amount, "%" PRId64, svc_json_int(req->body, "amount"));
  if (strcmp(st->from, st->to) == 0) {
    svc_reply_error(req, 422, "same_account", "source and destination are the same account");
    return;
  }
  if (svc_idem_begin(req, &st->idem, true) < 0) return;
  svc_idem_reserve(req, &st->idem, create_ask);
}

/* ------------------------------------------------------------------------ */
/* GET /v1/payments/{id}                                                    */
/* ------------------------------------------------------------------------ */

static void get_read(svc_req_t *req);

static bool state_final(const char *state) {
  return state != NULL && (strcmp(state, "completed") == 0 || strcmp(state, "failed") == 0);
}

static void get_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  if (rt_pg_rows(b, 0) == 0 || (!is_staff(req) && !owns(req, rt_pg_value(b, 0, 0, 0)))) {
    svc_reply_error(req, 404, "payment_not_found", "no such payment");
    return;
  }
  if (!state_final(rt_pg_value(b, 0, 0, 1)) && svc_poll_again(req)) return;
  reply_text_json(req, 200, rt_pg_value(b, 0, 0, 2));
}

static void get_read(svc_req_t *req) {
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {req->param_id};
  rt_pg_add(b, s_get, 1, vals);
  svc_db(req, b, get_done);
}

static void on_get(svc_req_t *req) {
  const char *id = svc_param_id(req, "id");
  if (id == NULL) {
    svc_reply_error(req, 404, "payment_not_found", "no such payment");
    return;
  }
  char wait[16];
  uint32_t wait_ms = 0;
  int n = svc_query(req, "wait", wait, sizeof wait);
  if (n >= 0) {
    char *end = NULL;
    unsigned long v = strtoul(wait, &end, 10);
    if (n == 0 || *end != '\0' || v > WAIT_MS_MAX) {
      svc_reply_error(req, 422, "invalid_wait", "wait must be 0 to 30000 milliseconds");
      return;
    }
    wait_ms = (uint32_t)v;
  } else if (n == -EINVAL) {
    svc_reply_error(req, 422, "invalid_wait", "wait must be 0 to 30000 milliseconds");
    return;
  }
  svc_poll_start(req, id, wait_ms, get_read);
}

/* ------------------------------------------------------------------------ */
/* GET /v1/payments                                                         */
/* ------------------------------------------------------------------------ */

static void on_list(svc_req_t *req) {
  int limit;
  char cursor[SVC_CURSOR_BYTES], state[16];
  if (svc_page(req, SVC_CURSOR_UUID, &limit, cursor) < 0) return;
  int sn = svc_query_enum(req, "state", state, sizeof state, svc_payment_states,
                          svc_payment_states_count, "invalid_state", "state is not a payment state");
  if (sn < 0) return;
  const char *who = is_staff(req) ? NULL : req->who.subject;
  if (who != NULL && !svc_uuid_valid(who)) {
    svc_reply_json(req, 200, json_pack("{s:[], s:n}", "items", "next_cursor"));
    return;
  }
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  /* A list may lag the primary a little: the read pool. GET /v1/payments/{id}
   * stays on the primary: its long-poll is woken by commits there. */
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *vals[] = {who, cursor[0] ? cursor : NULL, sn > 0 ? state : NULL, lim};
  rt_pg_add(b, s_list, 4, vals);
  svc_db(req, b, svc_page_done);
}

/* ------------------------------------------------------------------------ */
/* The saga: consumers                                                      */
/* ------------------------------------------------------------------------ */

/* The payment id of an event, for the lock and the transition. */
static const char *event_payment(const svc_event_t *ev) {
  const char *id = svc_event_str(ev, "payment_id");
  return svc_uuid_valid(id) ? id : NULL;
}

static void add_lock(rt_pg_batch_t *b, const char *payment) {
  const char *vals[] = {payment};
  rt_pg_add(b, s_lock, 1, vals);
}

/* The transition is apply()'s last statement: a row when it was made
 * here. Then the payment's long-polls look again. */
static int transition_done(svc_event_t *ev, const rt_pg_batch_t *b) {
  if (rt_pg_rows(b, ev->apply_last) == 0) return SVC_ABSORBED;
  const char *state = rt_pg_value(b, ev->apply_last, 0, 0);
  const char *id = event_payment(ev);
  RT_INFO("payment moved", RT_LF_STR("payment", id ? id : ""), RT_LF_STR("state", state),
          RT_LF_STR("on", ev->def->topic));
  /* Long-polls wait for a final state: a step on the way wakes no one. */
  if (id != NULL && state_final(state)) svc_notify(id);
  return SVC_APPLIED;
}

static int on_reserved(svc_event_t *ev, rt_pg_batch_t *b) {
  const char *id = event_payment(ev);
  if (id == NULL) return SVC_E_EVENT;
  svc_emit_t ok, no;
  svc_emit_prepare(&ok, SVC_EV_PAYMENT_AUTHORIZED, &ev->trace);
  svc_emit_prepare(&no, SVC_EV_PAYMENT_CANCELLED, &ev->trace);
  add_lock(b, id);
  const char *vals[] = {id,    ev->id,   cfg.max_amount, cfg.daily_max, ok.id,
                        ok.topic, ok.headers, no.id,     no.topic,      no.headers};
  int rc = rt_pg_add(b, s_authorize, 10, vals);
  return rc < 0 ? rc : 0;
}

static int on_settled(svc_event_t *ev, rt_pg_batch_t *b) {
  const char *id = event_payment(ev);
  if (id == NULL) return SVC_E_EVENT;
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_PAYMENT_COMPLETED, &ev->trace);
  add_lock(b, id);
  const char *vals[] = {id, ev->id, e.id, e.topic, e.headers};
  int rc = rt_pg_add(b, s_complete, 5, vals);
  return rc < 0 ? rc : 0;
}

/* The reasons a payment fails with. */
static bool reason_known(const char *r) {
  static const char *const reasons[] = {"insufficient_funds", "limit_exceeded", "payee_unavailable",
                                        "currency_mismatch",  "hold_expired",   "account_closed"};
  for (size_t i = 0; r != NULL && i < sizeof reasons / sizeof reasons[0]; i++)
    if (strcmp(r, reasons[i]) == 0) return true;
  return false;
}

static int add_fail(svc_event_t *ev, rt_pg_batch_t *b, const char *from_states,
                    const char *reason) {
  const char *id = event_payment(ev);
  if (id == NULL) return SVC_E_EVENT;
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_PAYMENT_FAILED, &ev->trace);
  add_lock(b, id);
  const char *vals[] = {id, ev->id, from_states, reason, e.id, e.topic, e.headers};
  int rc = rt_pg_add(b, s_fail, 7, vals);
  return rc < 0 ? rc : 0;
}

/* account.funds_rejected: no hold was taken. */
static int on_rejected(svc_event_t *ev, rt_pg_batch_t *b) {
  const char *reason = svc_event_str(ev, "reason");
  if (!reason_known(reason)) return SVC_E_EVENT;
  return add_fail(ev, b, "{pending}", reason);
}

/* account.settlement_failed: the hold was released by the account. */
static int on_settlement_failed(svc_event_t *ev, rt_pg_batch_t *b) {
  const char *reason = svc_event_str(ev, "reason");
  if (!reason_known(reason)) return SVC_E_EVENT;
  return add_fail(ev, b, "{authorized}", reason);
}

/* account.funds_released: the end of a cancellation (the payment keeps
 * its reason), or an expired hold, which may overtake the reservation
 * it undoes (then the payment is still pending, and fails at once). */
static int on_released(svc_event_t *ev, rt_pg_batch_t *b) {
  const char *why = svc_event_str(ev, "reason");
  if (why == NULL) return SVC_E_EVENT;
  if (strcmp(why, "expired") == 0)
    return add_fail(ev, b, "{pending,reserved,authorized,cancelled}", "hold_expired");
  /* "cancelled": the answer to our own payment.cancelled. */
  return add_fail(ev, b, "{cancelled}", "limit_exceeded");
}

static const svc_consumer_t consumers[] = {
    {.type = SVC_EV_ACCOUNT_FUNDS_RESERVED, .apply = on_reserved, .done = transition_done},
    {.type = SVC_EV_ACCOUNT_FUNDS_REJECTED, .apply = on_rejected, .done = transition_done},
    {.type = SVC_EV_ACCOUNT_PAYMENT_SETTLED, .apply = on_settled, .done = transition_done},
    {.type = SVC_EV_ACCOUNT_SETTLEMENT_FAILED, .apply = on_settlement_failed, .done = transition_done},
    {.type = SVC_EV_ACCOUNT_FUNDS_RELEASED, .apply = on_released, .done = transition_done},
};

static const svc_event_type_t produces[] = {
    SVC_EV_PAYMENT_REQUESTED, SVC_EV_PAYMENT_AUTHORIZED, SVC_EV_PAYMENT_CANCELLED,
    SVC_EV_PAYMENT_COMPLETED, SVC_EV_PAYMENT_FAILED,
};

/* ------------------------------------------------------------------------ */
/* Stuck sagas (thread 0)                                                   */
/* ------------------------------------------------------------------------ */

static void stuck_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  stuck.checking = false;
  if (err != 0) return;
  int64_t count = 0, oldest = 0;
  rt_pg_int64(b, 0, 0, 0, &count);
  rt_pg_int64(b, 0, 0, 1, &oldest);
  atomic_store(&stuck.count, (uint64_t)count);
  atomic_store(&stuck.oldest_s, (uint64_t)oldest);
  for (int i = 0; i < rt_pg_rows(b, 0) && i < STUCK_LOG_MAX; i++) {
    const char *id = rt_pg_value(b, 0, i, 2);
    if (id == NULL) break; /* none new */
    int64_t age = 0;
    rt_pg_int64(b, 0, i, 4, &age);
    RT_WARN("payment stuck: not final", RT_LF_STR("payment", id),
            RT_LF_STR("state", rt_pg_value(b, 0, i, 3)), RT_LF_INT("age_s", age));
    snprintf(stuck.logged_until, sizeof stuck.logged_until, "%s", rt_pg_value(b, 0, i, 5));
  }
}

static void stuck_tick(rt_timer_t *t) {
  (void)t;
  if (stuck.checking || !rt_pg_pool_up(stuck.th->pool)) return;
  rt_pg_batch_t *b = rt_pg_batch_new(stuck.th->pool);
  if (b == NULL) return;
  char after[24];
  snprintf(after, sizeof after, "%.3f", cfg.stuck_after_ms / 1000.0);
  const char *vals[] = {after, stuck.logged_until[0] ? stuck.logged_until : NULL};
  rt_pg_add(b, s_stuck, 2, vals);
  if (rt_pg_submit(b, 0, stuck_done, NULL) == 0) stuck.checking = true;
}

static void metrics(wire_metrics_t *m) {
  wire_metrics_gauge(m, "payment_stuck", "Payments not final after SAGA_STUCK_AFTER.",
                     atomic_load(&stuck.count));
  wire_metrics_gauge(m, "payment_stuck_oldest_seconds", "Age of the oldest of them.",
                     atomic_load(&stuck.oldest_s));
}

/* ------------------------------------------------------------------------ */
/* Definition                                                               */
/* ------------------------------------------------------------------------ */

/* The public routes take their roles from wire/api/api.table (svc.h). */
static const svc_route_t routes[] = {
    {SVC_API_POST_PAYMENTS, .fn = on_create, .json_body = true},
    {SVC_API_GET_PAYMENTS, .fn = on_list},
    {SVC_API_GET_PAYMENTS_ID, .fn = on_get},
};

static int thread_init(svc_thread_t *th) {
  th->user = svc_peer_client(&cfg.account, th->loop, 16, 1024);
  int rc = th->user != NULL ? 0 : RT_E_CONFIG;
  if (rc == 0 && th->index == 0) {
    stuck.th = th;
    rt_timer_init(&stuck.timer, stuck_tick, NULL);
    rc = rt_timer_start(th->loop, &stuck.timer, STUCK_CHECK_MS, STUCK_CHECK_MS);
  }
  return rc;
}

static void thread_drain(svc_thread_t *th) {
  if (th->index == 0) rt_timer_stop(th->loop, &stuck.timer);
  http_client_destroy(th->user);
  th->user = NULL;
}

static int load_config(void) {
  int rc = svc_peer_config(&cfg.account, "account", "127.0.0.1:7002", 2000);
  if (rc == 0) rc = rt_env_ms("SAGA_STUCK_AFTER", 60000, &cfg.stuck_after_ms);
  const char *max = rt_env_str("PAYMENT_MAX_AMOUNT", "100000000");
  const char *daily = rt_env_str("PAYMENT_DAILY_MAX", "1000000000");
  char *e1 = NULL, *e2 = NULL;
  long long m = strtoll(max, &e1, 10), d = strtoll(daily, &e2, 10);
  if (rc == 0 && (*e1 != '\0' || *e2 != '\0' || m <= 0 || d <= 0)) {
    fprintf(stderr, "PAYMENT_MAX_AMOUNT and PAYMENT_DAILY_MAX must be positive integers\n");
    rc = RT_E_CONFIG;
  }
  snprintf(cfg.max_amount, sizeof cfg.max_amount, "%lld", m);
  snprintf(cfg.daily_max, sizeof cfg.daily_max, "%lld", d);
  return rc;
}

int main(int argc, char **argv) {
  if (load_config() < 0) return 2;
  svc_def_t def = {
      .name = "payment",
      .env_prefix = "PAYMENT",
      .default_port = 7003,
      .routes = routes,
      .routes_count = sizeof routes / sizeof routes[0],
      .stmts = stmts,
      .stmts_count = sizeof stmts / sizeof stmts[0],
      .migrations = payment_migrations,
      .migrations_count = payment_migrations_count,
      .thread_init = thread_init,
      .thread_drain = thread_drain,
      .usage_env = "  ACCOUNT_ADDR          the account service, host:port (127.0.0.1:7002)\n"
                   "  ACCOUNT_TIMEOUT       its answer, at most          (2s)\n"
                   "  PAYMENT_MAX_AMOUNT    most one payment may move, minor units (100000000)\n"
                   "  PAYMENT_DAILY_MAX     most a customer may have authorized per day and\n"
                   "                        currency, minor units  (1000000000)\n"
                   "  SAGA_STUCK_AFTER      a payment not final after this is reported (60s)\n",
      .produces = produces,
      .produces_count = sizeof produces / sizeof produces[0],
      .consumers = consumers,
      .consumers_count = sizeof consumers / sizeof consumers[0],
      .metrics = metrics,
  };
  return svc_main(argc, argv, &def);
}
