/*
 * probe.c - a service of the skeleton's own integration tests: the
 * smallest saga participant, built on the consumer table like the real
 * ones. It consumes two event types keyed by payment id into a state
 * machine of guarded transitions:
 *
 *   (none)    --payment.requested--> requested
 *   requested --payment.cancelled--> cancelled   (emits payment.failed)
 *   (none)    --payment.cancelled--> cancelled   (a tombstone: a late
 *                                                  requested is absorbed)
 *
 * Each transition writes one probe_effects row, so a test can count
 * effects per event. PROBE_FAIL_TYPE=<topic> makes that type's handler
 * fail every time (NACK), to drive an event into its dead letter.
 *
 *   GET /probe/items/{id}   {"state": ..., "effects": n}; with ?wait=MS
 *                           it waits (parked, svc_park) until the item is
 *                           cancelled or MS pass: the long-poll of the
 *                           cross-thread notify, which done() sends
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc.h"

extern const svc_migration_t probe_migrations[];
extern const size_t probe_migrations_count;

static int s_requested, s_cancelled, s_item;
static const char *fail_type;

static const svc_stmt_t stmts[] = {
    /* $1 payment id, $2 event id */
    {&s_requested,
     "WITH s AS (INSERT INTO probe_items (id, state) VALUES ($1, 'requested')"
     "  ON CONFLICT (id) DO NOTHING RETURNING id),"
     " e AS (INSERT INTO probe_effects (item, event_id, kind)"
     "  SELECT id, $2::uuid, 'requested' FROM s RETURNING 1)"
     " SELECT count(*) FROM s, e",
     2},
    /* $1 payment id, $2 event id, $3/$4/$5 the follow-up's id, topic and
     * headers */
    {&s_cancelled,
     "WITH s AS (INSERT INTO probe_items (id, state) VALUES ($1, 'cancelled')"
     "  ON CONFLICT (id) DO UPDATE SET state = 'cancelled' WHERE probe_items.state = 'requested'"
     "  RETURNING id),"
     " e AS (INSERT INTO probe_effects (item, event_id, kind)"
     "  SELECT id, $2::uuid, 'cancelled' FROM s RETURNING 1),"
     " o AS (" SVC_OUTBOX_INSERT("s", "3", "4", "s.id",
                                 "json_build_object('payment_id', s.id, 'reason', 'probe')", "5")
     "  RETURNING 1)"
     " SELECT count(*) FROM s, e, o",
     5},
    {&s_item,
     "SELECT json_build_object('state', i.state, 'effects',"
     " (SELECT count(*) FROM probe_effects e WHERE e.item = i.id))::text"
     " FROM probe_items i WHERE i.id = $1",
     1},
};

/* The handler's one statement: one row with count 1 when the transition
 * was made. */
static int transition_done(svc_event_t *ev, const rt_pg_batch_t *b) {
  const char *n = rt_pg_value(b, ev->apply_last, 0, 0);
  if (n == NULL || strcmp(n, "1") != 0) return SVC_ABSORBED;
  svc_notify(ev->key); /* long-polls on any thread look again */
  return SVC_APPLIED;
}

static int failing(const svc_event_t *ev) {
  return fail_type != NULL && strcmp(fail_type, ev->def->topic) == 0;
}

static int on_requested(svc_event_t *ev, rt_pg_batch_t *b) {
  const char *id = svc_event_str(ev, "payment_id");
  if (id == NULL || failing(ev)) return SVC_E_EVENT;
  const char *vals[] = {id, ev->id};
  return rt_pg_add(b, s_requested, 2, vals) < 0 ? SVC_E_EVENT : 0;
}

static int on_cancelled(svc_event_t *ev, rt_pg_batch_t *b) {
  const char *id = svc_event_str(ev, "payment_id");
  if (id == NULL || failing(ev)) return SVC_E_EVENT;
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_PAYMENT_FAILED, &ev->trace);
  const char *vals[] = {id, ev->id, e.id, e.topic, e.headers};
  return rt_pg_add(b, s_cancelled, 5, vals) < 0 ? SVC_E_EVENT : 0;
}

/* A type that only ever fails when PROBE_FAIL_TYPE names it. */
static int on_other(svc_event_t *ev, rt_pg_batch_t *b) {
  (void)b;
  return failing(ev) ? SVC_E_EVENT : 0;
}

static const svc_consumer_t consumers[] = {
    {SVC_EV_PAYMENT_REQUESTED, on_requested, transition_done},
    {SVC_EV_PAYMENT_CANCELLED, on_cancelled, transition_done},
    {SVC_EV_PAYMENT_AUTHORIZED, on_other, NULL},
};

static const svc_event_type_t produces[] = {SVC_EV_PAYMENT_FAILED};

static void item_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  const char *v = rt_pg_value(b, 0, 0, 0);
  bool final = v != NULL && strstr(v, "\"cancelled\"") != NULL;
  if (err == 0 && !final && svc_poll_again(req)) return;
  if (err != 0) {
    svc_reply_db_error(req, err, b);
  } else if (v == NULL) {
    svc_reply_error(req, 404, "not_found", "no such item");
  } else {
    svc_reply_raw(req, 200, v, strlen(v), NULL);
  }
}

static void item_read(svc_req_t *req) {
  const char *id = svc_param(req, "id");
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {id};
  rt_pg_add(b, s_item, 1, vals);
  svc_db(req, b, item_done);
}

static void on_item(svc_req_t *req) {
  char wait[16];
  uint32_t wait_ms = 0;
  if (svc_query(req, "wait", wait, sizeof wait) > 0) wait_ms = (uint32_t)strtoul(wait, NULL, 10);
  if (wait_ms > 30000) wait_ms = 30000;
  svc_poll_start(req, svc_param(req, "id"), wait_ms, item_read);
}

static const svc_route_t routes[] = {
    {"GET", "/probe/items/{id}", on_item, SVC_AUTH_NONE, 0, false},
};

int main(int argc, char **argv) {
  fail_type = getenv("PROBE_FAIL_TYPE");
  svc_def_t def = {
      .name = "probe",
      .env_prefix = "PROBE",
      .default_port = 7099,
      .routes = routes,
      .routes_count = sizeof routes / sizeof routes[0],
      .stmts = stmts,
      .stmts_count = sizeof stmts / sizeof stmts[0],
      .migrations = probe_migrations,
      .migrations_count = probe_migrations_count,
      .produces = produces,
      .produces_count = sizeof produces / sizeof produces[0],
      .consumers = consumers,
      .consumers_count = sizeof consumers / sizeof consumers[0],
      .usage_env = "  PROBE_FAIL_TYPE       a topic whose handler always fails (tests)\n",
  };
  return svc_main(argc, argv, &def);
}
