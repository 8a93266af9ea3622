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
 * effects per event. payment.completed is consumed many to a transaction
 * (apply_many): one effect per new event. PROBE_FAIL_TYPE=<topic> makes that type's handler
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

static int s_requested, s_cancelled, s_item, s_completed;
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
    /* Many at once (apply_many): $1 a JSON array of {id, item, n}, $2 the
     * inbox scope. Each claimed without aborting the others, one effect
     * for each new one; n must be an integer: an event whose n is not
     * makes the whole batch fail (the poison of the batch test). The
     * places of the new ones. */
    {&s_completed,
     "WITH x AS (SELECT e.ord::int AS i, e.v->>'id' AS id, e.v->>'item' AS item,"
     "  (e.v->>'n')::int AS n FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS e(v, ord)),"
     " c AS (INSERT INTO claims (scope, key, request_hash, status, response_body, created_at,"
     "  expires_at) SELECT $2, x.id, 'payment.completed', 1, '', now(), now() + interval '1 day'"
     "  FROM x ORDER BY x.id ON CONFLICT DO NOTHING RETURNING key),"
     " y AS (SELECT DISTINCT ON (x.id) x.* FROM x JOIN c ON c.key = x.id ORDER BY x.id, x.i),"
     " e AS (INSERT INTO probe_effects (item, event_id, kind)"
     "  SELECT y.item, y.id::uuid, 'completed' FROM y RETURNING 1)"
     " SELECT coalesce(array_agg(y.i ORDER BY y.i), '{}')::text FROM y",
     2},
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

static int on_completed_many(svc_event_t *const *evs, uint32_t n, rt_pg_batch_t *b) {
  json_t *arr = json_array();
  for (uint32_t i = 0; i < n && arr != NULL; i++) {
    const char *item = svc_event_str(evs[i], "payment_id");
    json_t *num = json_object_get(evs[i]->payload, "n");
    json_t *e = json_pack("{s:s, s:s?, s:O?}", "id", evs[i]->id, "item", item, "n", num);
    if (e == NULL || json_array_append_new(arr, e) < 0) {
      json_decref(arr);
      arr = NULL;
    }
  }
  char *text = arr != NULL ? json_dumps(arr, JSON_COMPACT) : NULL;
  json_decref(arr);
  if (text == NULL) return SVC_E_EVENT;
  const char *vals[] = {text, SVC_INBOX_SCOPE};
  int rc = rt_pg_add(b, s_completed, 2, vals);
  free(text);
  return rc < 0 ? rc : 0;
}

static void completed_done(svc_event_t *const *evs, uint32_t n, const rt_pg_batch_t *b,
                           int *results) {
  (void)evs;
  svc_batch_places(rt_pg_value(b, 0, 0, 0), n, results);
}

static const svc_consumer_t consumers[] = {
    {.type = SVC_EV_PAYMENT_REQUESTED, .apply = on_requested, .done = transition_done},
    {.type = SVC_EV_PAYMENT_CANCELLED, .apply = on_cancelled, .done = transition_done},
    {.type = SVC_EV_PAYMENT_AUTHORIZED, .apply = on_other, .done = NULL},
    {.type = SVC_EV_PAYMENT_COMPLETED, .apply_many = on_completed_many,
     .done_many = completed_done},
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
