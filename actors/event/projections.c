/*
 * projections.c - read models from the audited events, and their rebuild.
 *
 * The projections live in this service's database (migration 0005) and
 * are written by one SQL function, proj_apply(), called in the
 * transaction that audits each event (event.c) and, for a rebuild, for
 * every audited event in log order (proj_rebuild()). So a rebuilt
 * projection is made by the very code that made the live one.
 *
 *   GET  /v1/projections/account-daily     ?account_id= (required), from=,
 *                                          to= (days), cursor by day
 *   GET  /v1/projections/payment-volume    ?from=, to= (days), currency=
 *   GET  /v1/projections/payments          ?state=, cursor by payment id;
 *                                          each with its age
 *   GET  /v1/projections/payment-states    per state: how many, oldest age
 *   POST /v1/projections/{name}/rebuild    admin: empty it, replay the log
 *
 * Reads: operator, auditor, admin; on the read pool (svc_batch_read()):
 * projections lag the log anyway. `event rebuild NAME` is the command.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

static int s_daily, s_volume, s_payments, s_states, s_rebuild;

static const char *const names[] = {"account-daily", "payment-volume", "payments", "balances"};

const svc_stmt_t event_proj_stmts[] = {
    /* $1 account, $2 from, $3 to, $4 cursor (day), $5 limit + 1 */
    {&s_daily,
     "SELECT day::text, json_build_object('account_id', account_id, 'day', day, 'currency',"
     " currency, 'movements', movements, 'money_in', money_in, 'money_out', money_out)::text"
     " FROM proj_account_daily WHERE account_id = $1::uuid"
     " AND ($2::date IS NULL OR day >= $2::date) AND ($3::date IS NULL OR day <= $3::date)"
     " AND ($4::date IS NULL OR day > $4::date) ORDER BY day, currency LIMIT $5::int",
     5},
    /* $1 from, $2 to (default: the last 31 days), $3 currency */
    {&s_volume,
     "SELECT coalesce(json_agg(json_build_object('day', day, 'currency', currency, 'state', state,"
     " 'payments', payments, 'amount', amount) ORDER BY day, currency, state), '[]')::text"
     " FROM proj_payment_volume"
     " WHERE day >= coalesce($1::date, (now() AT TIME ZONE 'UTC')::date - 30)"
     " AND day <= coalesce($2::date, (now() AT TIME ZONE 'UTC')::date)"
     " AND ($3::text IS NULL OR currency = $3)",
     3},
    /* $1 state, $2 cursor, $3 limit + 1 */
    {&s_payments,
     "SELECT payment_id::text, json_build_object('payment_id', payment_id, 'state', state,"
     " 'amount', amount, 'currency', currency, 'customer_id', customer_id, 'created_at',"
     " created_at, 'updated_at', updated_at, 'age_seconds',"
     " round(extract(epoch FROM now() - coalesce(created_at, updated_at)), 3))::text"
     " FROM proj_payments WHERE ($1::text IS NULL OR state = $1)"
     " AND ($2::uuid IS NULL OR payment_id > $2::uuid) ORDER BY payment_id LIMIT $3::int",
     3},
    {&s_states,
     "SELECT coalesce(json_agg(x ORDER BY x.state), '[]')::text FROM (SELECT state,"
     " count(*) AS payments, round(extract(epoch FROM now() - min(coalesce(created_at,"
     " updated_at))), 3) AS oldest_age_seconds FROM proj_payments GROUP BY state) x",
     0},
    {&s_rebuild, "SELECT proj_rebuild($1)", 1},
};

const size_t event_proj_stmts_count = sizeof event_proj_stmts / sizeof event_proj_stmts[0];

bool event_proj_known(const char *name) {
  for (size_t i = 0; name != NULL && i < sizeof names / sizeof names[0]; i++)
    if (strcmp(names[i], name) == 0) return true;
  return false;
}

int event_proj_rebuild_stmt(void) { return s_rebuild; }

/* ?name=YYYY-MM-DD into out; 0 absent, 1 present, -1 malformed (answered). */
static int day_query(svc_req_t *req, const char *name, char out[16]) {
  int n = svc_query(req, name, out, 16);
  if (n == -ENOENT) return 0;
  bool ok = n == 10;
  for (int i = 0; ok && i < 10; i++)
    ok = (i == 4 || i == 7) ? out[i] == '-' : (out[i] >= '0' && out[i] <= '9');
  if (!ok) {
    svc_reply_error(req, 422, "invalid_day", "days are YYYY-MM-DD");
    return -1;
  }
  return 1;
}

static void list_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err == RT_PG_E_DATA) {
    svc_reply_error(req, 422, "invalid_field", "a day or id is not valid");
    return;
  }
  svc_page_done(req, b, err);
}

void event_on_proj_daily(svc_req_t *req) {
  int limit;
  char cursor[SVC_CURSOR_BYTES], account[40], from[16], to[16];
  if (svc_page(req, SVC_CURSOR_DATE, &limit, cursor) < 0) return;
  int an = svc_query(req, "account_id", account, sizeof account);
  if (an <= 0 || !svc_uuid_canon(account, account)) {
    svc_reply_error(req, 422, "invalid_field", "account_id (a UUID) is required");
    return;
  }
  int fn = day_query(req, "from", from), tn = fn < 0 ? -1 : day_query(req, "to", to);
  if (fn < 0 || tn < 0) return;
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *vals[] = {account, fn ? from : NULL, tn ? to : NULL, cursor[0] ? cursor : NULL, lim};
  rt_pg_add(b, s_daily, 5, vals);
  svc_db(req, b, list_done);
}

static void rows_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err == RT_PG_E_DATA) {
    svc_reply_error(req, 422, "invalid_field", "a day is not valid");
    return;
  }
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  json_t *items = json_loads(rt_pg_value(b, 0, 0, 0), 0, NULL);
  svc_reply_json(req, 200, items ? json_pack("{s:o}", "items", items) : NULL);
}

void event_on_proj_volume(svc_req_t *req) {
  char from[16], to[16], currency[8];
  int fn = day_query(req, "from", from), tn = fn < 0 ? -1 : day_query(req, "to", to);
  if (fn < 0 || tn < 0) return;
  int cn = svc_query(req, "currency", currency, sizeof currency);
  if (cn == -EINVAL || cn == 0 || (cn > 0 && !svc_currency_valid(currency))) {
    svc_reply_error(req, 422, "invalid_currency", "currency is not a supported ISO 4217 code");
    return;
  }
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *vals[] = {fn ? from : NULL, tn ? to : NULL, cn > 0 ? currency : NULL};
  rt_pg_add(b, s_volume, 3, vals);
  svc_db(req, b, rows_done);
}

void event_on_proj_payments(svc_req_t *req) {
  int limit;
  char cursor[SVC_CURSOR_BYTES], state[16];
  if (svc_page(req, SVC_CURSOR_UUID, &limit, cursor) < 0) return;
  int sn = svc_query_enum(req, "state", state, sizeof state, svc_payment_states,
                          svc_payment_states_count, "invalid_state", "state is not a payment state");
  if (sn < 0) return;
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *vals[] = {sn > 0 ? state : NULL, cursor[0] ? cursor : NULL, lim};
  rt_pg_add(b, s_payments, 3, vals);
  svc_db(req, b, list_done);
}

void event_on_proj_states(svc_req_t *req) {
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  rt_pg_add(b, s_states, 0, NULL);
  svc_db(req, b, rows_done);
}

static void rebuild_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  int64_t n = 0;
  if (err != 0 || rt_pg_int64(b, 0, 0, 0, &n) != 0) {
    svc_reply_db_error(req, err ? err : RT_PG_E_SQL, b);
    return;
  }
  const char *name = svc_param(req, "name");
  RT_WARN("projection rebuilt", RT_LF_STR("projection", name), RT_LF_INT("events", n),
          RT_LF_STR("by", req->who.subject));
  svc_reply_json(req, 200, json_pack("{s:s, s:I}", "projection", name, "replayed", (json_int_t)n));
}

void event_on_proj_rebuild(svc_req_t *req) {
  const char *name = svc_param(req, "name");
  if (!event_proj_known(name)) {
    svc_reply_error(req, 404, "projection_not_found",
                    "projections: account-daily, payment-volume, payments, balances");
    return;
  }
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {name};
  rt_pg_add(b, s_rebuild, 1, vals);
  svc_db(req, b, rebuild_done);
}
