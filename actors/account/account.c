/*
 * account.c - the account service: accounts, balances, the double-entry
 * ledger, top-ups, withdrawals and transfers.
 *
 *   POST /v1/accounts                       the customer, operator
 *   GET  /v1/accounts                       own (customer); any (operator)
 *   GET  /v1/accounts/{id}                  the owner, operator
 *   GET  /v1/accounts/{id}/transactions     the owner, operator, auditor
 *   POST /v1/accounts/{id}/topups           the owner, operator
 *   POST /v1/accounts/{id}/withdrawals      the owner, operator
 *   POST /v1/transfers                      the owner of the source
 *
 * Opening an account asks the profile service (REST) whether the customer
 * exists and is active; no answer means 503, never an account for nobody.
 *
 * A movement (top-up, withdrawal, transfer) goes to the database in a
 * batch with the others that arrive meanwhile: one call of move_batch()
 * (migration 0004, mover.c), which checks, guards and answers each one on
 * its own in one transaction. What a batch cannot settle (a key claimed
 * before, a batch rolled back as a whole) runs alone, in two round trips:
 *   1. a read of both accounts: existence, ownership, currency, status;
 *      these never change under us (owner and currency are fixed; closing
 *      is re-checked by the guards), so checking them first is safe and
 *      gives precise errors;
 *   2. one transaction, pipelined as one batch:
 *        [claim the Idempotency-Key]
 *        lock both rows in id order (SELECT ... ORDER BY id FOR UPDATE), so
 *          concurrent movements in opposite directions cannot deadlock
 *        move: one statement of CTEs: the guarded debit (UPDATE ... WHERE
 *          balance >= amount - overdraft_limit RETURNING), the credit only
 *          if the debit happened, the transaction row, both ledger lines,
 *          the outbox event, and the stored response of the key
 *        [finish the key: store the failure response if nothing moved]
 *      No balance is ever read into C and written back.
 * Top-ups and withdrawals are the same movement against the system
 * account of the currency.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "account.h"
#include "account_bodies.h"

extern const svc_migration_t account_migrations[];
extern const size_t account_migrations_count;

static svc_peer_t profile_peer; /* PROFILE_ADDR, PROFILE_TIMEOUT */

static int s_open, s_get, s_list, s_owner, s_ledger, s_precheck, s_move, s_internal, s_status,
    s_balances;
int account_stmt_lock;

#define TS_JSON(col) ACCOUNT_TS_JSON(col)

#define ACCOUNT_JSON                                                            \
  "json_build_object('id', id, 'customer_id', customer_id, 'currency', currency," \
  " 'balance', balance, 'held', held, 'overdraft_limit', overdraft_limit, 'status', status,"  \
  " 'created_at', " TS_JSON("created_at") ")::text"

static const svc_stmt_t stmts[] = {
    {&s_open,
     "INSERT INTO accounts (id, customer_id, currency, overdraft_limit)"
     " VALUES ($1::uuid, $2::uuid, $3, $4::bigint) RETURNING " ACCOUNT_JSON,
     4},
    {&s_get,
     "SELECT customer_id, " ACCOUNT_JSON " FROM accounts WHERE id = $1::uuid AND kind = 'customer'",
     1},
    {&s_list,
     "SELECT id, " ACCOUNT_JSON " FROM accounts WHERE kind = 'customer'"
     " AND ($1::uuid IS NULL OR customer_id = $1::uuid)"
     " AND ($2::uuid IS NULL OR id > $2::uuid) ORDER BY id LIMIT $3::int",
     3},
    {&s_owner, "SELECT customer_id FROM accounts WHERE id = $1::uuid AND kind = 'customer'", 1},
    /* $1 account, $2 cursor (the seq of the last line shown), $3 limit + 1. */
    {&s_ledger,
     "SELECT e.seq::text, json_build_object('id', e.id, 'seq', e.seq,"
     " 'transaction_id', e.transaction_id, 'bucket', e.bucket, 'payment_id', t.payment_id,"
     " 'kind', t.kind, 'amount', e.amount, 'currency', e.currency,"
     " 'balance_after', e.balance_after, 'counterparty_account_id',"
     " CASE WHEN e.amount < 0 THEN t.credit_account_id ELSE t.debit_account_id END,"
     " 'created_at', " TS_JSON("e.created_at") ")::text"
     " FROM ledger_entries e JOIN transactions t ON t.id = e.transaction_id"
     " WHERE e.account_id = $1::uuid AND ($2::bigint IS NULL OR e.seq > $2::bigint)"
     " ORDER BY e.seq LIMIT $3::int",
     3},
    {&s_precheck,
     "SELECT id, customer_id, currency, status, kind FROM accounts"
     " WHERE id = $1::uuid OR id = $2::uuid",
     2},
    {&account_stmt_lock,
     "SELECT id FROM accounts WHERE id = $1::uuid OR id = $2::uuid ORDER BY id FOR UPDATE", 2},
    /* For other services (the payment service's check of a payer). */
    {&s_internal,
     "SELECT json_build_object('id', id, 'customer_id', customer_id, 'currency', currency,"
     " 'status', status, 'kind', kind)::text FROM accounts WHERE id = $1::uuid",
     1},
    /* Every customer account's balance and held amount, by id, for the
     * event service's reconciliation. $1 cursor, $2 limit + 1. */
    {&s_balances,
     "SELECT id::text, json_build_object('id', id, 'currency', currency, 'balance', balance,"
     " 'held', held)::text FROM accounts WHERE kind = 'customer'"
     " AND ($1::uuid IS NULL OR id > $1::uuid) ORDER BY id LIMIT $2::int",
     2},
    /* $1 account, $2 new status, $3/$4/$5 the event. Closing needs an
     * empty account: nothing left in balance or held. */
    {&s_status,
     "WITH u AS (UPDATE accounts SET status = $2, updated_at = GREATEST(updated_at, clock_timestamp())"
     "  WHERE id = $1::uuid AND kind = 'customer'"
     "  AND ($2 <> 'closed' OR (balance = 0 AND held = 0)) RETURNING *),"
     " o AS (" SVC_OUTBOX_INSERT("u", "3", "4", "u.id::text",
                                 "json_build_object('account_id', u.id, 'status', u.status)", "5")
     "  RETURNING 1)"
     " SELECT " ACCOUNT_JSON " FROM u",
     5},
    /* $1 transaction id, $2 kind, $3 debit account, $4 credit account,
     * $5 amount, $6 currency, $7 key scope, $8 key, $9/$10 ledger line
     * ids, $11 event id, $12 topic, $13 event key, $14 event payload, $15
     * status of the success answer, $16 the account the answer names, $17
     * the event's headers. The batch's claim of the Idempotency-Key (when
     * there is one) came first: a duplicate never gets here.
     *
     * Each guarded UPDATE takes its account's next entry number and time
     * under the row lock (migration 0002), and the answer is rendered here
     * from what was written, so it names the time the ledger shows. */
    {&s_move,
     "WITH d AS (UPDATE accounts SET balance = balance - $5::bigint,"
     "  entries_count = entries_count + 1, updated_at = GREATEST(updated_at, clock_timestamp())"
     "  WHERE id = $3::uuid AND currency = $6 AND status = 'open'"
     "  AND balance >= $5::bigint - overdraft_limit"
     "  RETURNING id, balance, entries_count, updated_at),"
     " c AS (UPDATE accounts SET balance = balance + $5::bigint,"
     "  entries_count = entries_count + 1, updated_at = GREATEST(updated_at, clock_timestamp())"
     "  WHERE id = $4::uuid AND currency = $6 AND status = 'open' AND EXISTS (SELECT 1 FROM d)"
     "  RETURNING id, balance, entries_count, updated_at),"
     " t AS (INSERT INTO transactions (id, kind, debit_account_id, credit_account_id, amount,"
     "  currency, created_at)"
     "  SELECT $1::uuid, $2, $3::uuid, $4::uuid, $5::bigint, $6, d.updated_at FROM d, c"
     "  RETURNING id, created_at),"
     " e AS (INSERT INTO ledger_entries (id, transaction_id, account_id, seq, amount, currency,"
     "  balance_after, created_at)"
     "  SELECT $9::uuid, t.id, d.id, d.entries_count, -$5::bigint, $6, d.balance, d.updated_at"
     "  FROM t, d"
     "  UNION ALL"
     "  SELECT $10::uuid, t.id, c.id, c.entries_count, $5::bigint, $6, c.balance, c.updated_at"
     "  FROM t, c"
     "  RETURNING 1),"
     " o AS (" SVC_OUTBOX_INSERT("t", "11", "12", "$13", "$14::jsonb", "17") " RETURNING 1),"
     " r AS (SELECT CASE WHEN $2 = 'transfer' THEN json_build_object('id', t.id, 'kind', $2::text,"
     "  'from_account_id', $3::uuid, 'to_account_id', $4::uuid, 'amount', $5::bigint,"
     "  'currency', $6::text, 'created_at', " TS_JSON("t.created_at") ")"
     "  ELSE json_build_object('id', t.id, 'kind', $2::text, 'account_id', $16::uuid,"
     "  'amount', $5::bigint, 'currency', $6::text, 'created_at', " TS_JSON("t.created_at") ")"
     "  END::text AS body FROM t),"
     " k AS (" SVC_IDEM_STORE_OK_SQL("7", "8", "15", "(SELECT body FROM r)")
     "  AND EXISTS (SELECT 1 FROM t) RETURNING 1)"
     " SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM o), (SELECT count(*) FROM k),"
     " r.body FROM r",
     17},
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

/* The system account of a currency: a fixed id, created at start-up. */
static void system_account(const char *currency, char out[37]) {
  snprintf(out, 37, "00000000-0000-7000-8000-000000%02x%02x%02x", (unsigned char)currency[0],
           (unsigned char)currency[1], (unsigned char)currency[2]);
}

static bool is_staff(const svc_req_t *req) { return svc_has_role(req, SVC_ROLE_OPERATOR); }

static bool owns(const svc_req_t *req, const char *customer_id) {
  return customer_id != NULL && svc_has_role(req, SVC_ROLE_CUSTOMER) &&
         strcmp(req->who.subject, customer_id) == 0;
}

/* A JSON document rendered by the database, answered compact. */
static void reply_text_json(svc_req_t *req, int status, const char *json) {
  svc_reply_json(req, status, json ? json_loads(json, 0, NULL) : NULL);
}

static bool id_param(svc_req_t *req, const char **id) {
  *id = svc_param_id(req, "id");
  if (*id == NULL) {
    svc_reply_error(req, 404, "account_not_found", "no such account");
    return false;
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* POST /v1/accounts                                                        */
/* ------------------------------------------------------------------------ */

typedef struct open_state {
  char customer_id[37];
  char currency[4];
  char overdraft[24];
  char id[37];
} open_state_t;

static void open_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  open_state_t *st = SVC_STATE(req, open_state_t);
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  RT_INFO("account opened", RT_LF_STR("account", st->id), RT_LF_STR("currency", st->currency));
  reply_text_json(req, 201, rt_pg_value(b, 0, 0, 0));
}

static void open_insert(svc_req_t *req) {
  open_state_t *st = SVC_STATE(req, open_state_t);
  svc_uuid7(st->id);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {st->id, st->customer_id, st->currency, st->overdraft};
  rt_pg_add(b, s_open, 4, vals);
  char payload[192];
  snprintf(payload, sizeof payload,
           "{\"account_id\":\"%.36s\",\"customer_id\":\"%.36s\",\"currency\":\"%.3s\"}",
           st->id, st->customer_id, st->currency);
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit(b, SVC_EV_ACCOUNT_OPENED, st->id, payload, &trace);
  svc_db(req, b, open_done);
}

/* The profile service's answer: exists and active? */
static void open_checked(void *ctx, int err, const http_msg_t *resp) {
  svc_req_t *req = ctx;
  if (err != 0 || resp == NULL) {
    RT_WARN("profile service unreachable", RT_LF_STR("error", rt_strerror(err)));
    svc_reply_error(req, 503, "profile_unavailable", "cannot confirm the customer now; retry");
    return;
  }
  if (resp->status == 404) {
    svc_reply_error(req, 422, "customer_not_found", "no such customer");
    return;
  }
  if (resp->status != 200) {
    RT_WARN("profile service answered", RT_LF_INT("status", resp->status));
    svc_reply_error(req, 503, "profile_unavailable", "cannot confirm the customer now; retry");
    return;
  }
  json_t *body = json_loadb(resp->body, resp->body_len, 0, NULL);
  const char *status = svc_json_str(body, "status");
  bool active = status != NULL && strcmp(status, "active") == 0;
  json_decref(body);
  if (!active) {
    svc_reply_error(req, 422, "customer_inactive", "the customer is not active");
    return;
  }
  open_insert(req);
}

static void on_open(svc_req_t *req) {
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(account_open_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  open_state_t *st = SVC_STATE(req, open_state_t);
  const char *customer = svc_json_str(req->body, "customer_id");
  json_t *od = json_object_get(req->body, "overdraft_limit");
  if (!is_staff(req)) {
    /* A customer opens accounts for itself, without overdraft. */
    if (customer != NULL && strcmp(customer, req->who.subject) != 0) {
      svc_reply_error(req, 403, "forbidden", "customers open accounts for themselves only");
      return;
    }
    if (od != NULL) {
      svc_reply_error(req, 403, "forbidden", "only operators may set an overdraft limit");
      return;
    }
    customer = req->who.subject;
    if (!svc_uuid_valid(customer)) {
      svc_reply_error(req, 403, "forbidden", "the caller is not a customer");
      return;
    }
  } else if (customer == NULL) {
    svc_reply_error(req, 422, "missing_field", "field 'customer_id' is required");
    return;
  }
  int64_t limit = od ? (int64_t)json_integer_value(od) : 0;
  if (limit < 0) {
    svc_reply_error(req, 422, "invalid_field", "field 'overdraft_limit' must not be negative");
    return;
  }
  snprintf(st->customer_id, sizeof st->customer_id, "%.36s", customer);
  snprintf(st->currency, sizeof st->currency, "%s", svc_json_str(req->body, "currency"));
  snprintf(st->overdraft, sizeof st->overdraft, "%" PRId64, limit);
  char path[96], headers[512];
  snprintf(path, sizeof path, "/internal/customers/%.36s", st->customer_id);
  const svc_config_t *c = svc_config();
  int n = svc_auth_sign(headers, sizeof headers, c->auth_key, c->auth_key_bytes, "account",
                        "service", "GET", path, (int64_t)time(NULL));
  http_client_t *profile = ((account_thread_t *)req->th->user)->profile;
  int rc = n < 0 ? n
                 : http_client_request(profile, "GET", path, headers, NULL, 0, open_checked, req);
  if (rc < 0) svc_reply_error(req, 503, "profile_unavailable", "cannot confirm the customer now; retry");
}

/* ------------------------------------------------------------------------ */
/* GET /v1/accounts/{id}, GET /v1/accounts                                  */
/* ------------------------------------------------------------------------ */

static void get_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  if (rt_pg_rows(b, 0) == 0 || (!is_staff(req) && !owns(req, rt_pg_value(b, 0, 0, 0)))) {
    svc_reply_error(req, 404, "account_not_found", "no such account");
    return;
  }
  reply_text_json(req, 200, rt_pg_value(b, 0, 0, 1));
}

static void on_get(svc_req_t *req) {
  const char *id;
  if (!id_param(req, &id)) return;
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {id};
  rt_pg_add(b, s_get, 1, vals);
  svc_db(req, b, get_done);
}

static void on_list(svc_req_t *req) {
  int limit;
  char cursor[SVC_CURSOR_BYTES], customer[40];
  if (svc_page(req, SVC_CURSOR_UUID, &limit, cursor) < 0) return;
  int n = svc_query(req, "customer_id", customer, sizeof customer);
  if (n == -EINVAL || (n >= 0 && !svc_uuid_canon(customer, customer))) {
    svc_reply_error(req, 422, "invalid_field", "customer_id is not a UUID");
    return;
  }
  const char *who = n >= 0 ? customer : NULL;
  if (!is_staff(req)) who = req->who.subject; /* customers see their own */
  if (who != NULL && !svc_uuid_valid(who)) {
    svc_reply_json(req, 200, json_pack("{s:[], s:n}", "items", "next_cursor"));
    return;
  }
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  /* A list may lag the primary a little: the read pool. */
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *vals[] = {who, cursor[0] ? cursor : NULL, lim};
  rt_pg_add(b, s_list, 3, vals);
  svc_db(req, b, svc_page_done);
}

/* ------------------------------------------------------------------------ */
/* GET /v1/accounts/{id}/transactions                                       */
/* ------------------------------------------------------------------------ */

static void ledger_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  bool staff = svc_has_role(req, SVC_ROLE_OPERATOR | SVC_ROLE_AUDITOR);
  if (rt_pg_rows(b, 0) == 0 || (!staff && !owns(req, rt_pg_value(b, 0, 0, 0)))) {
    svc_reply_error(req, 404, "account_not_found", "no such account");
    return;
  }
  svc_reply_json(req, 200, svc_page_json(b, 1, *SVC_STATE(req, int)));
}

static void on_ledger(svc_req_t *req) {
  const char *id;
  int limit;
  char cursor[SVC_CURSOR_BYTES];
  if (!id_param(req, &id)) return;
  if (svc_page(req, SVC_CURSOR_SEQ, &limit, cursor) < 0) return;
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  /* Ledger pages may lag the primary a little (the cursor still shows each
   * line once): the read pool. Ownership never changes, so checking it
   * there is as good as on the primary. */
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *owner[] = {id};
  const char *vals[] = {id, cursor[0] ? cursor : NULL, lim};
  /* Ownership is checked on the first result before the lines are shown. */
  rt_pg_add(b, s_owner, 1, owner);
  rt_pg_add(b, s_ledger, 3, vals);
  svc_db(req, b, ledger_done);
}

/* ------------------------------------------------------------------------ */
/* Movements                                                                */
/* ------------------------------------------------------------------------ */

static const struct {
  const char *kind;
  svc_event_type_t event;
} move_names[] = {
    [ACCOUNT_MOVE_TOPUP] = {"topup", SVC_EV_ACCOUNT_TOPPED_UP},
    [ACCOUNT_MOVE_WITHDRAWAL] = {"withdrawal", SVC_EV_ACCOUNT_WITHDRAWN},
    [ACCOUNT_MOVE_TRANSFER] = {"transfer", SVC_EV_ACCOUNT_TRANSFERRED},
};

#define MOVE_KINDS_COUNT (sizeof move_names / sizeof move_names[0])

const char *account_move_kind_name(account_move_kind_t kind) {
  assert((size_t)kind < MOVE_KINDS_COUNT);
  return move_names[kind].kind;
}

svc_event_type_t account_move_event(account_move_kind_t kind) {
  assert((size_t)kind < MOVE_KINDS_COUNT);
  return move_names[kind].event;
}

const char account_insufficient_body[] =
    "{\"error\":{\"code\":\"insufficient_funds\",\"message\":\"the balance (with its "
    "overdraft limit) does not cover the amount\"}}";

/* Staff may move money on any customer's account, except by transfer. */
static bool staff_may(const svc_req_t *req, const account_move_t *mv) {
  return mv->kind != ACCOUNT_MOVE_TRANSFER && is_staff(req);
}

const char *account_move_owner(const svc_req_t *req, const account_move_t *mv) {
  if (staff_may(req, mv)) return NULL;
  return svc_has_role(req, SVC_ROLE_CUSTOMER) ? req->who.subject : "";
}

static void move_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  account_move_t *st = SVC_STATE(req, account_move_t);
  if (err == RT_PG_E_OUT_OF_RANGE) {
    svc_reply_error(req, 422, "amount_out_of_range", "the resulting balance would overflow");
    return;
  }
  /* The statement's guard refuses an overdraft before the CHECK could. */
  if (NEVER(err == RT_PG_E_CHECK)) {
    svc_reply_error(req, 422, "insufficient_funds", "the balance does not cover the amount");
    return;
  }
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  int status = 0;
  const char *body = NULL;
  svc_idem_result_t r = svc_idem_outcome(b, &st->idem, &status, &body);
  if (r == SVC_IDEM_UNKEYED) {
    assert(st->move_index >= 0); /* added in move_write() to this batch */
    assert(st->move_index < rt_pg_count(b));
    bool moved = rt_pg_rows(b, st->move_index) == 1;
    status = moved ? 201 : 422;
    body = moved ? rt_pg_value(b, st->move_index, 0, 3) : account_insufficient_body;
    r = SVC_IDEM_NEW;
  }
  if (r == SVC_IDEM_NEW && status == 201) {
    RT_DEBUG("money moved", RT_LF_STR("kind", move_names[st->kind].kind),
             RT_LF_STR("account", st->account), RT_LF_INT("amount", st->amount));
  }
  svc_idem_reply(req, r, status, body);
}

void account_move_payload(const account_move_t *st, const char *txid, char *payload,
                          size_t payload_bytes) {
  int n;
  if (st->kind == ACCOUNT_MOVE_TRANSFER) {
    n = snprintf(payload, payload_bytes,
                 "{\"transaction_id\":\"%s\",\"from_account_id\":\"%s\",\"to_account_id\":\"%s\","
                 "\"amount\":%" PRId64 ",\"currency\":\"%s\"}",
                 txid, st->account, st->other, st->amount, st->currency);
  } else {
    n = snprintf(payload, payload_bytes,
                 "{\"transaction_id\":\"%s\",\"account_id\":\"%s\",\"amount\":%" PRId64
                 ",\"currency\":\"%s\"}",
                 txid, st->account, st->amount, st->currency);
  }
  assert(n > 0);
  assert((size_t)n < payload_bytes);
}

/* The write: one batch, one transaction. */
static void move_write(svc_req_t *req) {
  account_move_t *st = SVC_STATE(req, account_move_t);
  const char *debit = st->kind == ACCOUNT_MOVE_TOPUP ? st->other : st->account;
  const char *credit = st->kind == ACCOUNT_MOVE_TOPUP ? st->account : st->other;
  char txid[37], e1[37], e2[37], amount[24], payload[400];
  /* Validated in move_start(): money moves by a positive amount, between
   * two different accounts. */
  assert(st->amount > 0);
  assert(strcmp(debit, credit) != 0);
  svc_uuid7(txid);
  svc_uuid7(e1);
  svc_uuid7(e2);
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit_t ev;
  svc_emit_prepare(&ev, account_move_event(st->kind), &trace);
  snprintf(amount, sizeof amount, "%" PRId64, st->amount);
  account_move_payload(st, txid, payload, sizeof payload);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *scope = svc_idem_scope(&st->idem), *key = svc_idem_key(&st->idem);
  svc_idem_add_claim(b, &st->idem);
  const char *lock[] = {debit, credit};
  rt_pg_add(b, account_stmt_lock, 2, lock);
  const char *move[] = {txid,  move_names[st->kind].kind, debit, credit, amount, st->currency,
                        scope, key, e1, e2, ev.id, ev.topic, st->account, payload, "201",
                        st->account, ev.headers};
  st->move_index = rt_pg_add(b, s_move, 17, move);
  svc_idem_add_finish(b, &st->idem, 422, account_insufficient_body);
  svc_db(req, b, move_done);
}

/* The read before the write: both accounts as they are. */
static void move_checked(svc_req_t *req, rt_pg_batch_t *b, int err) {
  account_move_t *st = SVC_STATE(req, account_move_t);
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  int mine = -1, other = -1;
  for (int i = 0; i < rt_pg_rows(b, 0); i++) {
    const char *id = rt_pg_value(b, 0, i, 0);
    if (strcmp(id, st->account) == 0) mine = i;
    if (strcmp(id, st->other) == 0) other = i;
  }
  bool staff_ok = staff_may(req, st);
  if (mine < 0 || strcmp(rt_pg_value(b, 0, mine, 4), "customer") != 0 ||
      (!staff_ok && !owns(req, rt_pg_value(b, 0, mine, 1)))) {
    svc_reply_error(req, 404, "account_not_found", "no such account");
    return;
  }
  if (other < 0 || (st->kind == ACCOUNT_MOVE_TRANSFER && strcmp(rt_pg_value(b, 0, other, 4), "customer") != 0)) {
    svc_reply_error(req, 404, "account_not_found", "no such destination account");
    return;
  }
  if (strcmp(rt_pg_value(b, 0, mine, 2), st->currency) != 0 ||
      strcmp(rt_pg_value(b, 0, other, 2), st->currency) != 0) {
    svc_reply_error(req, 422, "currency_mismatch", "the currency differs from the account's");
    return;
  }
  if (strcmp(rt_pg_value(b, 0, mine, 3), "open") != 0 ||
      strcmp(rt_pg_value(b, 0, other, 3), "open") != 0) {
    svc_reply_error(req, 422, "account_closed", "the account is not open (closed or frozen)");
    return;
  }
  move_write(req);
}

static void move_start(svc_req_t *req, account_move_kind_t kind, const char *account, const char *other) {
  account_move_t *st = SVC_STATE(req, account_move_t);
  st->kind = kind;
  snprintf(st->account, sizeof st->account, "%s", account);
  snprintf(st->currency, sizeof st->currency, "%s", svc_json_str(req->body, "currency"));
  st->amount = svc_json_int(req->body, "amount");
  assert(st->amount > 0); /* SVC_T_AMOUNT: svc_json_check() refused the rest */
  if (other != NULL) {
    snprintf(st->other, sizeof st->other, "%s", other);
  } else {
    system_account(st->currency, st->other);
  }
  /* A top-up or withdrawal naming a system account is answered by the
   * read below like any account the caller does not own: 404. */
  if (kind == ACCOUNT_MOVE_TRANSFER && strcmp(st->account, st->other) == 0) {
    svc_reply_error(req, 422, "same_account", "source and destination are the same account");
    return;
  }
  if (svc_idem_begin(req, &st->idem, false) < 0) return;
  account_thread_t *t = req->th->user;
  account_mover_add(t->mover, req);
}

void account_move_alone(svc_req_t *req) {
  account_move_t *st = SVC_STATE(req, account_move_t);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {st->account, st->other};
  rt_pg_add(b, s_precheck, 2, vals);
  svc_db(req, b, move_checked);
}

static void on_topup_or_withdrawal(svc_req_t *req, account_move_kind_t kind) {
  const char *id;
  if (!id_param(req, &id)) return;
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(account_amount_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  move_start(req, kind, id, NULL);
}

static void on_topup(svc_req_t *req) { on_topup_or_withdrawal(req, ACCOUNT_MOVE_TOPUP); }

static void on_withdrawal(svc_req_t *req) { on_topup_or_withdrawal(req, ACCOUNT_MOVE_WITHDRAWAL); }

static void on_transfer(svc_req_t *req) {
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(account_transfer_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  move_start(req, ACCOUNT_MOVE_TRANSFER, svc_json_str(req->body, "from_account_id"),
             svc_json_str(req->body, "to_account_id"));
}

/* ------------------------------------------------------------------------ */
/* GET /internal/accounts/{id}, PATCH /v1/accounts/{id}                      */
/* ------------------------------------------------------------------------ */

static void internal_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
  } else if (rt_pg_rows(b, 0) == 0) {
    svc_reply_error(req, 404, "account_not_found", "no such account");
  } else {
    reply_text_json(req, 200, rt_pg_value(b, 0, 0, 0));
  }
}

/* Another service asks what an account is: owner, currency, status. */
static void on_internal(svc_req_t *req) {
  const char *id;
  if (!id_param(req, &id)) return;
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {id};
  rt_pg_add(b, s_internal, 1, vals);
  svc_db(req, b, internal_done);
}

static void status_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
  } else if (rt_pg_rows(b, 1) == 0) {
    svc_reply_error(req, 404, "account_not_found", "no such account");
  } else if (rt_pg_rows(b, 2) == 0) {
    svc_reply_error(req, 409, "account_not_empty",
                    "the account still holds money (balance or held) and cannot be closed");
  } else {
    RT_INFO("account status changed", RT_LF_STR("account", req->param_id),
            RT_LF_STR("status", svc_json_str(req->body, "status")));
    reply_text_json(req, 200, rt_pg_value(b, 2, 0, 0));
  }
}

/* GET /internal/balances: every customer account's money, a page at a
 * time (up to SVC_PAGE_LIMIT_MAX). */
static void on_balances(svc_req_t *req) { svc_list_page(req, SVC_CURSOR_UUID, s_balances, NULL); }

/* An operator freezes, reopens or closes an account. */
static void on_status(svc_req_t *req) {
  const char *id;
  if (!id_param(req, &id)) return;
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(account_status_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  const char *status = svc_json_str(req->body, "status");
  if (strcmp(status, "open") != 0 && strcmp(status, "frozen") != 0 &&
      strcmp(status, "closed") != 0) {
    svc_reply_error(req, 422, "invalid_field", "field 'status' must be open, frozen or closed");
    return;
  }
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_ACCOUNT_STATUS_CHANGED, &trace);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *lock[] = {id, id};
  rt_pg_add(b, account_stmt_lock, 2, lock);
  const char *system[] = {id}; /* a system account is nobody's: 404 via no rows */
  rt_pg_add(b, s_owner, 1, system);
  const char *vals[] = {id, status, e.id, e.topic, e.headers};
  rt_pg_add(b, s_status, 5, vals);
  svc_db(req, b, status_done);
}

/* ------------------------------------------------------------------------ */
/* Definition                                                               */
/* ------------------------------------------------------------------------ */

/* The public routes take their roles from wire/api/api.table (svc.h). */
static const svc_route_t routes[] = {
    {SVC_API_POST_ACCOUNTS, .fn = on_open, .json_body = true},
    {SVC_API_GET_ACCOUNTS, .fn = on_list},
    {SVC_API_GET_ACCOUNTS_ID, .fn = on_get},
    {SVC_API_GET_ACCOUNTS_ID_TRANSACTIONS, .fn = on_ledger},
    {SVC_API_POST_ACCOUNTS_ID_TOPUPS, .fn = on_topup, .json_body = true},
    {SVC_API_POST_ACCOUNTS_ID_WITHDRAWALS, .fn = on_withdrawal, .json_body = true},
    {SVC_API_POST_TRANSFERS, .fn = on_transfer, .json_body = true},
    {SVC_API_PATCH_ACCOUNTS_ID, .fn = on_status, .json_body = true},
    {"GET", "/internal/accounts/{id}", on_internal, SVC_AUTH_REQUIRED, SVC_ROLE_SERVICE, false},
    {"GET", "/internal/balances", on_balances, SVC_AUTH_REQUIRED, SVC_ROLE_SERVICE, false},
};

/* Main thread, after migrations: one system account per currency. */
static int setup(PGconn *conn) {
  size_t n = 0;
  const char *const *codes = svc_currencies(&n);
  char list[2048];
  size_t len = 0;
  list[len++] = '{';
  for (size_t i = 0; i < n && len + 5 < sizeof list; i++) {
    memcpy(list + len, codes[i], 3);
    len += 3;
    if (i + 1 < n) list[len++] = ',';
  }
  list[len++] = '}';
  list[len] = '\0';
  const char *vals[] = {list};
  PGresult *r = PQexecParams(
      conn,
      "INSERT INTO accounts (id, customer_id, kind, currency, overdraft_limit)"
      " SELECT ('00000000-0000-7000-8000-000000' || encode(convert_to(c, 'UTF8'), 'hex'))::uuid,"
      " NULL, 'system', c, 9223372036854775807 FROM unnest($1::text[]) AS c"
      " ON CONFLICT DO NOTHING",
      1, NULL, vals, NULL, NULL, 0);
  int rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : SVC_E_MIGRATION;
  if (rc < 0) RT_ERROR("cannot create the system accounts", RT_LF_STR("error", PQresultErrorMessage(r)));
  PQclear(r);
  return rc;
}

static void thread_free(account_thread_t *t) {
  if (t == NULL) return;
  if (t->profile != NULL) http_client_destroy(t->profile);
  account_mover_free(t->mover);
  free(t);
}

static int thread_init(svc_thread_t *th) {
  account_thread_t *t = calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  t->profile = svc_peer_client(&profile_peer, th->loop, 16, 1024);
  t->mover = account_mover_create(th);
  if (t->profile == NULL || t->mover == NULL) {
    int rc = t->profile == NULL ? RT_E_CONFIG : -ENOMEM;
    thread_free(t);
    return rc;
  }
  th->user = t;
  return th->index == 0 ? account_holds_start(th) : 0;
}

static void thread_drain(svc_thread_t *th) {
  if (th->index == 0) account_holds_stop(th);
  thread_free(th->user);
  th->user = NULL;
}

static int load_config(void) {
  int rc = svc_peer_config(&profile_peer, "profile", "127.0.0.1:7001", 2000);
  if (rc == 0) rc = account_holds_config();
  if (rc == 0) rc = account_mover_config();
  return rc;
}

static const svc_event_type_t produces[] = {
    SVC_EV_ACCOUNT_OPENED,         SVC_EV_ACCOUNT_TOPPED_UP,      SVC_EV_ACCOUNT_WITHDRAWN,
    SVC_EV_ACCOUNT_TRANSFERRED,    SVC_EV_ACCOUNT_STATUS_CHANGED, SVC_EV_ACCOUNT_FUNDS_RESERVED,
    SVC_EV_ACCOUNT_FUNDS_REJECTED, SVC_EV_ACCOUNT_PAYMENT_SETTLED, SVC_EV_ACCOUNT_SETTLEMENT_FAILED,
    SVC_EV_ACCOUNT_FUNDS_RELEASED,
};

/* The service's statements and the saga's, registered as one table. */
static svc_stmt_t all_stmts[sizeof stmts / sizeof stmts[0] + 17];

static size_t stmts_merge(void) {
  size_t n = 0;
  for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) all_stmts[n++] = stmts[i];
  assert(n + account_holds_stmts_count <= sizeof all_stmts / sizeof all_stmts[0]);
  for (size_t i = 0; i < account_holds_stmts_count; i++) all_stmts[n++] = account_holds_stmts[i];
  assert(n + account_mover_stmts_count <= sizeof all_stmts / sizeof all_stmts[0]);
  for (size_t i = 0; i < account_mover_stmts_count; i++) all_stmts[n++] = account_mover_stmts[i];
  return n;
}

int main(int argc, char **argv) {
  if (load_config() < 0) return 2;
  svc_def_t def = {
      .name = "account",
      .env_prefix = "ACCOUNT",
      .default_port = 7002,
      .routes = routes,
      .routes_count = sizeof routes / sizeof routes[0],
      .stmts = all_stmts,
      .stmts_count = stmts_merge(),
      .migrations = account_migrations,
      .migrations_count = account_migrations_count,
      .setup = setup,
      .thread_init = thread_init,
      .thread_drain = thread_drain,
      .usage_env = "  PROFILE_ADDR          the profile service, host:port (127.0.0.1:7001)\n"
                   "  PROFILE_TIMEOUT       its answer, at most          (2s)\n"
                   "  HOLD_TTL              a payment's hold expires after (5m)\n"
                   "  HOLD_SWEEP_INTERVAL   expired holds released every (1s)\n"
                   "  ACCOUNT_MOVE_BATCH_MAX  movements per database batch (128)\n"
                   "  ACCOUNT_MOVE_BATCHES  batches in flight per loop thread (2)\n"
                   "  ACCOUNT_MOVE_WINDOW   longest wait for a batch to fill (0: none)\n",
      .produces = produces,
      .produces_count = sizeof produces / sizeof produces[0],
      .consumers = account_consumers,
      .consumers_count = account_consumers_count,
      .metrics = account_mover_metrics,
  };
  return svc_main(argc, argv, &def);
}
