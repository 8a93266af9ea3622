/*
 * event.c - the event service: the audit log of every event on the bus.
 *
 * It consumes every event type of the registry (actors/common/events.def)
 * as consumer group "event", through the skeleton's consumer table: each
 * delivery is claimed in the inbox and appended to audit_log in one
 * transaction, then ACKed, so a redelivered event changes nothing. Exactly
 * one row per event id, with the event's headers.
 *
 *   GET /v1/events   auditor, admin; filters topic, correlation_id, since,
 *                    until (busd's store time, RFC 3339, since inclusive,
 *                    until exclusive); cursor pagination in log order
 *   /v1/dead-letters operator, admin: dead.c
 *
 * plus /healthz, /readyz and /metrics from the skeleton.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

extern const svc_migration_t event_migrations[];
extern const size_t event_migrations_count;

#define EVENT_TIME_BYTES_MAX 40
#define HEADERS_JSON_BYTES_MAX 4096

static int s_append, s_list;

static const svc_stmt_t stmts[] = {
    /* $1 event id, $2 topic, $3 key, $4 payload, $5 partition, $6 offset,
     * $7 busd's store time in Unix ms, $8 headers. After the inbox claim
     * of the id. */
    {&s_append,
     "INSERT INTO audit_log (event_id, topic, key, payload, bus_partition, bus_offset, stored_at,"
     " headers)"
     " VALUES ($1::uuid, $2, $3, $4::jsonb, $5::int, $6::bigint, to_timestamp($7::bigint / 1000.0),"
     " $8::jsonb)",
     8},
    /* $1 topic, $2 since, $3 until, $4 cursor (the seq of the last item
     * shown), $5 limit + 1, $6 correlation id. */
    {&s_list,
     "SELECT seq::text, json_build_object('seq', seq, 'event_id', event_id, 'topic', topic,"
     " 'key', key, 'headers', headers, 'payload', payload, 'partition', bus_partition,"
     " 'offset', bus_offset, 'stored_at', stored_at, 'received_at', received_at)::text"
     " FROM audit_log WHERE ($1::text IS NULL OR topic = $1)"
     " AND ($2::timestamptz IS NULL OR stored_at >= $2::timestamptz)"
     " AND ($3::timestamptz IS NULL OR stored_at < $3::timestamptz)"
     " AND ($4::bigint IS NULL OR seq > $4::bigint)"
     " AND ($6::text IS NULL OR correlation_id = $6)"
     " ORDER BY seq LIMIT $5::int",
     6},
};

/* ------------------------------------------------------------------------ */
/* Consuming: every event type, one handler                                 */
/* ------------------------------------------------------------------------ */

/* The event's headers as one JSON object (names and values as strings). */
static char *headers_json(const svc_event_t *ev) {
  json_t *obj = json_object();
  bus_header_iter_t it;
  bus_header_iter_init(&it, ev->headers);
  bus_bytes_t name, value;
  for (uint32_t n = 0; obj != NULL && n < BUS_HEADERS_MAX && bus_header_next(&it, &name, &value);
       n++) {
    char key[BUS_HEADER_NAME_BYTES_MAX + 1];
    memcpy(key, name.ptr, name.len);
    key[name.len] = '\0';
    json_t *v = json_stringn((const char *)value.ptr, value.len); /* NULL when not UTF-8 */
    if (v != NULL) json_object_set_new(obj, key, v);
  }
  char *text = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
  json_decref(obj);
  return text;
}

static int audit_apply(svc_event_t *ev, rt_pg_batch_t *b) {
  char partition[16], offset[24], stored[24];
  snprintf(partition, sizeof partition, "%" PRIu32, ev->partition);
  snprintf(offset, sizeof offset, "%" PRIu64, ev->offset);
  snprintf(stored, sizeof stored, "%" PRIu64, ev->stored_ms);
  char *payload = json_dumps(ev->payload, JSON_COMPACT);
  char *headers = headers_json(ev);
  int rc = payload != NULL && headers != NULL ? 0 : -ENOMEM;
  if (rc == 0) {
    const char *vals[] = {ev->id, ev->def->topic, ev->key, payload, partition, offset, stored,
                          headers};
    rc = rt_pg_add(b, s_append, 8, vals);
  }
  free(payload);
  free(headers);
  return rc < 0 ? rc : 0;
}

/* Every type of the registry, filled in main(). */
static svc_consumer_t consumers[SVC_EV_COUNT];

static void consumers_fill(void) {
  for (int t = 0; t < SVC_EV_COUNT; t++)
    consumers[t] = (svc_consumer_t){.type = (svc_event_type_t)t, .apply = audit_apply};
}

/* ------------------------------------------------------------------------ */
/* GET /v1/events                                                           */
/* ------------------------------------------------------------------------ */

/* An RFC 3339 time, loosely: digits and the separators it uses. The
 * database parses it; what it refuses is answered 422. */
static int time_query(svc_req_t *req, const char *name, char out[EVENT_TIME_BYTES_MAX]) {
  int n = svc_query(req, name, out, EVENT_TIME_BYTES_MAX);
  if (n == -ENOENT) return 0;
  if (n <= 0) return -1;
  for (int i = 0; i < n; i++) {
    char c = out[i];
    if (!((c >= '0' && c <= '9') || c == '-' || c == ':' || c == '.' || c == '+' || c == 'T' ||
          c == 'Z' || c == 'z' || c == 't'))
      return -1;
  }
  return n;
}

static void list_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err == RT_PG_E_DATA) {
    svc_reply_error(req, 422, "invalid_time", "since and until must be RFC 3339 times");
    return;
  }
  svc_page_done(req, b, err);
}

static void on_list(svc_req_t *req) {
  int limit;
  char cursor[SVC_CURSOR_BYTES];
  char topic[BUS_NAME_BYTES_MAX + 1], since[EVENT_TIME_BYTES_MAX], until[EVENT_TIME_BYTES_MAX];
  char corr[SVC_TRACE_ID_BYTES];
  if (svc_page(req, SVC_CURSOR_SEQ, &limit, cursor) < 0) return;
  int tn = svc_query(req, "topic", topic, sizeof topic);
  if (tn == -EINVAL || (tn >= 0 && !bus_name_valid((const uint8_t *)topic, (size_t)tn))) {
    svc_reply_error(req, 422, "invalid_topic", "topic is not a valid topic name");
    return;
  }
  int cn = svc_query(req, "correlation_id", corr, sizeof corr);
  if (cn == -EINVAL || cn == 0) {
    svc_reply_error(req, 422, "invalid_correlation_id", "correlation_id is too long or empty");
    return;
  }
  int sn = time_query(req, "since", since), un = time_query(req, "until", until);
  if (sn < 0 || un < 0) {
    svc_reply_error(req, 422, "invalid_time", "since and until must be RFC 3339 times");
    return;
  }
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {tn > 0 ? topic : NULL, sn > 0 ? since : NULL, un > 0 ? until : NULL,
                        cursor[0] ? cursor : NULL, lim, cn > 0 ? corr : NULL};
  rt_pg_add(b, s_list, 6, vals);
  svc_db(req, b, list_done);
}

static const svc_route_t routes[] = {
    {"GET", "/v1/events", on_list, SVC_AUTH_REQUIRED, SVC_ROLE_AUDITOR | SVC_ROLE_ADMIN, false},
    {"GET", "/v1/dead-letters", event_on_dead_list, SVC_AUTH_REQUIRED,
     SVC_ROLE_OPERATOR | SVC_ROLE_ADMIN, false},
    {"POST", "/v1/dead-letters/{id}/redrive", event_on_redrive, SVC_AUTH_REQUIRED,
     SVC_ROLE_OPERATOR | SVC_ROLE_ADMIN, false},
    {"POST", "/v1/dead-letters/redrive", event_on_redrive_all, SVC_AUTH_REQUIRED,
     SVC_ROLE_OPERATOR | SVC_ROLE_ADMIN, false},
};

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static const svc_event_type_t produces[] = {SVC_EV_DEAD_LETTER_REDRIVEN};

static int thread_init(svc_thread_t *th) { return th->index == 0 ? event_dead_start(th) : 0; }

static void thread_drain(svc_thread_t *th) {
  if (th->index == 0) event_dead_stop(th);
}

/* The audit log's statements and the dead letters', as one table. */
static svc_stmt_t all_stmts[sizeof stmts / sizeof stmts[0] + 8];

static size_t stmts_merge(void) {
  size_t n = 0;
  for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++) all_stmts[n++] = stmts[i];
  for (size_t i = 0; i < event_dead_stmts_count; i++) all_stmts[n++] = event_dead_stmts[i];
  return n;
}

int main(int argc, char **argv) {
  consumers_fill();
  svc_def_t def = {
      .name = "event",
      .env_prefix = "EVENT",
      .default_port = 7004,
      .routes = routes,
      .routes_count = sizeof routes / sizeof routes[0],
      .stmts = all_stmts,
      .stmts_count = stmts_merge(),
      .migrations = event_migrations,
      .migrations_count = event_migrations_count,
      .produces = produces,
      .produces_count = sizeof produces / sizeof produces[0],
      .consumers = consumers,
      .consumers_count = SVC_EV_COUNT,
      .thread_init = thread_init,
      .thread_drain = thread_drain,
      .bus_init = event_dead_subscribe,
      .metrics = event_dead_metrics,
  };
  return svc_main(argc, argv, &def);
}
