/*
 * reconcile.c - the account service's balances against the audit log.
 *
 * The balances projection (migration 0005) is what the audited events say
 * every account holds: top-ups, withdrawals, transfers, holds taken,
 * settled and released, summed per account into balance and held. The
 * account service keeps its own figures. Reconciliation compares the two,
 * account by account:
 *
 *   1. a page of the account service's accounts, in id order
 *      (GET /internal/balances, as the service "event");
 *   2. the projection's rows in the same id range;
 *   3. every account whose balance or held differs, on either side
 *      (missing on one side counts as zero), is a difference: both figures
 *      and by how much;
 *   then the next page; at the end the projection's rows past the last id.
 *
 * Run it when the platform is quiet (events in flight are differences
 * until they are audited). POST /v1/reconciliation (admin) and
 * `event reconcile` run it; both report and log the differences.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "event.h"

#define PAGE 100
#define DIFFS_KEPT 100

static int s_range;

const svc_stmt_t event_reconcile_stmts[] = {
    /* The projection in (after, upto]; upto NULL: to the end. */
    {&s_range,
     "SELECT account_id::text, currency, balance, held FROM proj_balances"
     " WHERE ($1::uuid IS NULL OR account_id > $1::uuid)"
     " AND ($2::uuid IS NULL OR account_id <= $2::uuid) ORDER BY account_id",
     2},
};

const size_t event_reconcile_stmts_count = sizeof event_reconcile_stmts / sizeof event_reconcile_stmts[0];

static void fetch_page(event_reconcile_t *r);

static void finish(event_reconcile_t *r, int err) {
  json_decref(r->page);
  r->page = NULL;
  r->err = err;
  if (err == 0 && r->differences > 0) {
    RT_WARN("reconciliation: the account service and the audit log differ",
            RT_LF_INT("accounts", r->checked), RT_LF_INT("differences", r->differences));
  } else if (err == 0) {
    RT_INFO("reconciliation: no difference", RT_LF_INT("accounts", r->checked));
  }
  r->done(r);
}

static void add_diff(event_reconcile_t *r, const char *id, const char *currency, int64_t ab,
                     int64_t ah, int64_t eb, int64_t eh) {
  r->differences++;
  if (json_array_size(r->diffs) >= DIFFS_KEPT) return;
  json_array_append_new(
      r->diffs, json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I}", "account_id", id, "currency",
                          currency ? currency : "", "account_balance", (json_int_t)ab,
                          "audit_balance", (json_int_t)eb, "balance_difference",
                          (json_int_t)(ab - eb), "account_held", (json_int_t)ah, "audit_held",
                          (json_int_t)eh, "held_difference", (json_int_t)(ah - eh)));
}

/* Merges the page of the account service with the projection's rows of
 * the same id range (both in id order). */
static void range_done(rt_pg_batch_t *b, int err, void *ctx) {
  event_reconcile_t *r = ctx;
  if (err != 0) {
    finish(r, err);
    return;
  }
  json_t *items = json_object_get(r->page, "items");
  size_t n = json_array_size(items), i = 0;
  int rows = rt_pg_rows(b, 0), k = 0;
  /* Bounded by the page and the range. */
  while (i < n || k < rows) {
    json_t *a = i < n ? json_array_get(items, i) : NULL;
    const char *aid = a ? json_string_value(json_object_get(a, "id")) : NULL;
    const char *eid = k < rows ? rt_pg_value(b, 0, k, 0) : NULL;
    int cmp = aid == NULL ? 1 : eid == NULL ? -1 : strcmp(aid, eid);
    int64_t ab = 0, ah = 0, eb = 0, eh = 0;
    const char *cur = NULL;
    if (cmp <= 0) {
      ab = (int64_t)json_integer_value(json_object_get(a, "balance"));
      ah = (int64_t)json_integer_value(json_object_get(a, "held"));
      cur = json_string_value(json_object_get(a, "currency"));
      r->checked++;
      i++;
    }
    if (cmp >= 0) {
      rt_pg_int64(b, 0, k, 2, &eb);
      rt_pg_int64(b, 0, k, 3, &eh);
      if (cur == NULL) cur = rt_pg_value(b, 0, k, 1);
      k++;
    }
    if (ab != eb || ah != eh) add_diff(r, cmp <= 0 ? aid : eid, cur, ab, ah, eb, eh);
  }
  if (r->last_page) {
    finish(r, 0);
    return;
  }
  fetch_page(r);
}

static void page_answer(void *ctx, int err, const http_msg_t *resp) {
  event_reconcile_t *r = ctx;
  if (err != 0 || resp == NULL || resp->status != 200) {
    RT_WARN("reconciliation: the account service did not answer",
            RT_LF_STR("error", err ? rt_strerror(err) : "status"),
            RT_LF_INT("status", resp ? resp->status : 0));
    finish(r, err ? err : -EPROTO);
    return;
  }
  json_decref(r->page);
  r->page = json_loadb(resp->body, resp->body_len, 0, NULL);
  json_t *items = json_object_get(r->page, "items");
  const char *next = json_string_value(json_object_get(r->page, "next_cursor"));
  if (!json_is_array(items)) {
    finish(r, -EPROTO);
    return;
  }
  r->last_page = next == NULL;
  /* The projection's rows of (previous cursor, this page's last id], or
   * to the end after the last page. */
  char upto[40] = "";
  size_t n = json_array_size(items);
  if (!r->last_page && n > 0)
    snprintf(upto, sizeof upto, "%s", json_string_value(json_object_get(json_array_get(items, n - 1), "id")));
  rt_pg_batch_t *b = rt_pg_batch_new(r->pool);
  if (b == NULL) {
    finish(r, RT_PG_E_POOL_FULL);
    return;
  }
  const char *vals[] = {r->cursor[0] ? r->cursor : NULL, upto[0] ? upto : NULL};
  rt_pg_add(b, s_range, 2, vals);
  if (next != NULL) snprintf(r->cursor, sizeof r->cursor, "%s", next);
  int rc = rt_pg_submit(b, 0, range_done, r);
  if (rc < 0) finish(r, rc);
}

static void fetch_page(event_reconcile_t *r) {
  char path[128], headers[512];
  snprintf(path, sizeof path, "/internal/balances?limit=%d%s%s", PAGE, r->cursor[0] ? "&cursor=" : "",
           r->cursor);
  const svc_config_t *c = svc_config();
  int n = svc_auth_sign(headers, sizeof headers, c->auth_key, c->auth_key_bytes, "event",
                        "service", "GET", path, (int64_t)time(NULL));
  int rc = n < 0 ? n
                 : http_client_request(r->client, "GET", path, headers, NULL, 0, page_answer, r);
  if (rc < 0) finish(r, rc);
}

int event_reconcile_start(event_reconcile_t *r) {
  r->diffs = json_array();
  if (r->diffs == NULL) return -ENOMEM;
  r->cursor[0] = '\0';
  fetch_page(r);
  return 0;
}

json_t *event_reconcile_json(const event_reconcile_t *r) {
  return json_pack("{s:b, s:I, s:I, s:O}", "ok", r->differences == 0, "accounts",
                   (json_int_t)r->checked, "differences", (json_int_t)r->differences, "items",
                   r->diffs);
}

void event_reconcile_free(event_reconcile_t *r) {
  json_decref(r->diffs);
  json_decref(r->page);
  r->diffs = r->page = NULL;
}
