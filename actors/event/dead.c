/*
 * dead.c - dead letters: what the consumer groups gave up on, for
 * operators to see and redrive.
 *
 *   GET  /v1/dead-letters                 operator, admin; ?topic=, ?state=
 *                                         (dead, redriven), cursor by seq
 *   POST /v1/dead-letters/{id}/redrive    operator, admin; one
 *   POST /v1/dead-letters/redrive         operator, admin; every one still
 *                                         dead (?topic=), 100 per call
 *
 * busd appends an event that a group failed BUSD_MAX_ATTEMPTS times to
 * "<topic>.dead" (on RabbitMQ, its dead-letter exchange does, and the
 * transport names the x-dead-* headers the same) with x-dead-* headers (group, attempts, the consumer's
 * last reason). This service subscribes to the dead topic of every event
 * type and keeps one row per event and group. A redrive, in one
 * transaction: the row marked redriven (by whom, when), the event written
 * to this service's outbox again (same id, topic, key, headers, payload;
 * the groups that applied it absorb it as a duplicate, the one that
 * failed gets it anew), and an event.dead_letter_redriven event, which the
 * audit log keeps like any other.
 *
 * Dead-letter depth per topic is counted every few seconds for /metrics.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

#define DEAD_GROUP "event"
#define DEAD_IN_FLIGHT 16
#define DEAD_COUNT_MS 5000
#define REDRIVE_ALL_MAX 100

static int s_dead_put, s_dead_list, s_redrive, s_redrive_all, s_dead_count;

#define DEAD_JSON(d)                                                           \
  "json_build_object('id', " d ".id, 'event_id', " d ".event_id, 'topic', " d ".topic,"       \
  " 'consumer_group', " d ".consumer_group, 'key', " d ".key, 'attempts', " d ".attempts,"     \
  " 'last_error', " d ".last_error, 'state', " d ".state, 'dead_at', " d ".dead_at,"           \
  " 'redriven_at', " d ".redriven_at, 'redriven_by', " d ".redriven_by, 'headers', "          \
  d ".headers, 'payload', " d ".payload)"

/* The original event again, through the outbox: same id, once even when
 * several groups gave up on it; a second redrive of the same event
 * publishes it once more. */
#define REPUBLISH(FROM)                                                        \
  "INSERT INTO outbox (id, topic, key, payload, headers, created_at)"          \
  " SELECT r.event_id, r.topic, r.key, r.payload, r.headers, now()"            \
  " FROM (SELECT DISTINCT ON (event_id) * FROM " FROM " ORDER BY event_id) r"  \
  " ON CONFLICT (id) DO UPDATE SET published_at = NULL, created_at = now()"

const svc_stmt_t event_dead_stmts[] = {
    /* $1 id, $2 event id, $3 topic, $4 group, $5 key, $6 headers, $7
     * payload, $8 attempts, $9 last error, $10 partition, $11 offset, $12
     * stored ms. A redelivered copy changes nothing; a later dead-lettering
     * of an event that was redriven opens it again. */
    {&s_dead_put,
     "INSERT INTO dead_letters (id, event_id, topic, consumer_group, key, headers, payload,"
     " attempts, last_error, dead_partition, dead_offset, dead_at)"
     " VALUES ($1::uuid, $2::uuid, $3, $4, $5, $6::jsonb, $7::jsonb, $8::int, $9, $10::int,"
     " $11::bigint, to_timestamp($12::bigint / 1000.0))"
     " ON CONFLICT (event_id, consumer_group) DO UPDATE SET state = 'dead',"
     " attempts = EXCLUDED.attempts, last_error = EXCLUDED.last_error,"
     " dead_partition = EXCLUDED.dead_partition, dead_offset = EXCLUDED.dead_offset,"
     " dead_at = EXCLUDED.dead_at, redriven_at = NULL, redriven_by = NULL"
     " WHERE dead_letters.state = 'redriven' AND (EXCLUDED.dead_partition,"
     " EXCLUDED.dead_offset) IS DISTINCT FROM (dead_letters.dead_partition,"
     " dead_letters.dead_offset) AND EXCLUDED.dead_at >= dead_letters.redriven_at",
     12},
    /* $1 topic, $2 state, $3 cursor (seq), $4 limit + 1 */
    {&s_dead_list,
     "SELECT seq::text, " DEAD_JSON("d") "::text FROM dead_letters d"
     " WHERE ($1::text IS NULL OR topic = $1) AND ($2::text IS NULL OR state = $2)"
     " AND ($3::bigint IS NULL OR seq > $3::bigint) ORDER BY seq LIMIT $4::int",
     4},
    /* $1 dead letter id, $2 operator, $3/$4/$5 the audit event. */
    {&s_redrive,
     "WITH d AS (UPDATE dead_letters SET state = 'redriven', redriven_at = now(),"
     "  redriven_by = $2 WHERE id = $1::uuid AND state = 'dead' RETURNING *),"
     " o1 AS (" REPUBLISH("d") " RETURNING 1),"
     " o2 AS (" SVC_OUTBOX_INSERT("d", "3", "4", "d.event_id::text",
                                  "json_build_object('dead_letter_id', d.id, 'event_id', d.event_id,"
                                  " 'topic', d.topic, 'consumer_group', d.consumer_group,"
                                  " 'attempts', d.attempts, 'redriven_by', $2)",
                                  "5") " RETURNING 1)"
     " SELECT " DEAD_JSON("d") "::text FROM d",
     5},
    /* $1 topic (NULL: all), $2 operator, $3 the audit event's topic, $4
     * correlation id. The audit events get their ids here: uuid_v7()
     * (migration 0003). */
    {&s_redrive_all,
     "WITH d AS (UPDATE dead_letters SET state = 'redriven', redriven_at = now(), redriven_by = $2::text"
     "  WHERE id IN (SELECT id FROM dead_letters WHERE state = 'dead'"
     "  AND ($1::text IS NULL OR topic = $1) ORDER BY seq LIMIT " "100"
     "  FOR UPDATE SKIP LOCKED) RETURNING *),"
     " o1 AS (" REPUBLISH("d") " RETURNING 1),"
     " a AS (SELECT uuid_v7() AS aid, d.* FROM d),"
     " o2 AS (INSERT INTO outbox (id, topic, key, payload, headers, created_at)"
     "  SELECT a.aid, $3::text, a.event_id::text, json_build_object('dead_letter_id', a.id,"
     "  'event_id', a.event_id, 'topic', a.topic, 'consumer_group', a.consumer_group,"
     "  'attempts', a.attempts, 'redriven_by', $2::text)::jsonb,"
     "  jsonb_build_object('event-id', a.aid, 'type', $3::text, 'schema-version', '1',"
     "  'occurred-at', now(), 'correlation-id', $4::text, 'causation-id', a.event_id), now()"
     "  FROM a RETURNING 1)"
     " SELECT count(*) FROM d",
     4},
    {&s_dead_count, "SELECT topic, count(*) FROM dead_letters WHERE state = 'dead' GROUP BY topic",
     0},
};

const size_t event_dead_stmts_count = sizeof event_dead_stmts / sizeof event_dead_stmts[0];

_Static_assert(REDRIVE_ALL_MAX == 100, "the redrive-all statement says 100");

/* ------------------------------------------------------------------------ */
/* Consuming the dead topics (thread 0)                                     */
/* ------------------------------------------------------------------------ */

typedef struct dead_ack {
  svc_thread_t *th;
  uint32_t sub;
  uint32_t partition;
  uint64_t offset;
} dead_ack_t;

static void dead_put_done(rt_pg_batch_t *b, int err, void *ctx) {
  dead_ack_t *a = ctx;
  if (a->th->bus != NULL) {
    if (err == 0) {
      svc_bus_ack(a->th->bus, a->sub, a->partition, a->offset);
    } else {
      RT_WARN("dead letter not kept now: retried", RT_LF_STR("error", rt_strerror(err)));
      svc_bus_nack(a->th->bus, a->sub, a->partition, a->offset, rt_strerror(err));
    }
  }
  free(a);
  (void)b;
}

/* The header's value as text (at most out_bytes - 1), "" when absent. */
static void header_text(bus_bytes_t headers, const char *name, char *out, size_t out_bytes) {
  bus_bytes_t v;
  out[0] = '\0';
  if (!bus_header_get(headers, name, &v)) return;
  size_t n = v.len < out_bytes - 1 ? v.len : out_bytes - 1;
  memcpy(out, v.ptr, n);
  out[n] = '\0';
}

/* The event's own headers as JSON: every one but x-dead-*. */
static char *own_headers_json(bus_bytes_t headers) {
  json_t *obj = json_object();
  bus_header_iter_t it;
  bus_header_iter_init(&it, headers);
  bus_bytes_t name, value;
  for (uint32_t n = 0; obj != NULL && n < BUS_HEADERS_MAX && bus_header_next(&it, &name, &value);
       n++) {
    if (name.len >= 7 && memcmp(name.ptr, "x-dead-", 7) == 0) continue;
    char key[BUS_HEADER_NAME_BYTES_MAX + 1];
    memcpy(key, name.ptr, name.len);
    key[name.len] = '\0';
    json_t *v = json_stringn((const char *)value.ptr, value.len);
    if (v != NULL) json_object_set_new(obj, key, v);
  }
  char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
  json_decref(obj);
  return text;
}

static void on_dead(void *arg, const bus_delivery_t *d) {
  svc_thread_t *th = arg;
  char topic[BUS_NAME_BYTES_MAX + 1], group[BUS_NAME_BYTES_MAX + 1], attempts[16];
  char why[BUS_NACK_WHY_BYTES_MAX + 1], id[37], event_id[37], part[16], off[24], stored[24];
  char key[BUS_KEY_BYTES_MAX + 1];
  header_text(d->headers, "x-dead-topic", topic, sizeof topic);
  header_text(d->headers, "x-dead-group", group, sizeof group);
  header_text(d->headers, "x-dead-attempts", attempts, sizeof attempts);
  header_text(d->headers, "x-dead-error", why, sizeof why);
  memcpy(key, d->key.ptr, d->key.len);
  key[d->key.len] = '\0';
  svc_uuid7(id);
  bus_uuid_format(d->id, event_id);
  snprintf(part, sizeof part, "%" PRIu32, d->partition);
  snprintf(off, sizeof off, "%" PRIu64, d->offset);
  snprintf(stored, sizeof stored, "%" PRIu64, d->stored_ms);
  /* The payload is the original event's: JSON from our producers; kept
   * as a JSON string when it is not. */
  json_t *payload = json_loadb((const char *)d->payload.ptr, d->payload.len, 0, NULL);
  if (payload == NULL) payload = json_stringn((const char *)d->payload.ptr, d->payload.len);
  char *payload_text = payload ? json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
  json_decref(payload);
  char *headers = own_headers_json(d->headers);
  dead_ack_t *a = malloc(sizeof *a);
  rt_pg_batch_t *b = a && payload_text && headers ? rt_pg_batch_new(th->pool) : NULL;
  int rc = b == NULL ? -ENOMEM : 0;
  if (rc == 0) {
    *a = (dead_ack_t){.th = th, .sub = d->sub, .partition = d->partition, .offset = d->offset};
    const char *vals[] = {id,      event_id,     topic[0] ? topic : "unknown", group[0] ? group : "unknown",
                          key,     headers,      payload_text, attempts[0] ? attempts : "0",
                          why,     part,         off,          stored};
    rt_pg_add(b, s_dead_put, 12, vals);
    rc = rt_pg_submit(b, 0, dead_put_done, a);
  }
  free(payload_text);
  free(headers);
  if (rc < 0) {
    free(a);
    svc_bus_nack(th->bus, d->sub, d->partition, d->offset, rt_strerror(rc));
    return;
  }
  RT_WARN("dead letter received", RT_LF_STR("topic", topic), RT_LF_STR("group", group),
          RT_LF_STR("event", event_id), RT_LF_STR("attempts", attempts), RT_LF_STR("why", why));
}

int event_dead_subscribe(svc_thread_t *th, svc_bus_t *bus) {
  for (int t = 0; t < SVC_EV_COUNT; t++) {
    char dead[BUS_NAME_BYTES_MAX + 1];
    snprintf(dead, sizeof dead, "%s.dead", svc_event_def((svc_event_type_t)t)->topic);
    int rc = svc_bus_subscribe(bus, dead, DEAD_GROUP, DEAD_IN_FLIGHT, on_dead, th);
    if (rc < 0) {
      RT_ERROR("cannot subscribe", RT_LF_STR("topic", dead), RT_LF_STR("error", rt_strerror(rc)));
      return rc;
    }
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Depth per topic, for /metrics                                            */
/* ------------------------------------------------------------------------ */

static struct {
  _Atomic uint64_t depth[SVC_EV_COUNT];
  rt_timer_t timer;
  svc_thread_t *th;
  bool counting;
} depth;

static void count_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  depth.counting = false;
  if (err != 0) return;
  uint64_t seen[SVC_EV_COUNT] = {0};
  for (int i = 0; i < rt_pg_rows(b, 0); i++) {
    const char *topic = rt_pg_value(b, 0, i, 0);
    const svc_event_def_t *def = topic ? svc_event_by_topic(topic, strlen(topic)) : NULL;
    int64_t n = 0;
    if (def != NULL && rt_pg_int64(b, 0, i, 1, &n) == 0) seen[def->type] = (uint64_t)n;
  }
  for (int t = 0; t < SVC_EV_COUNT; t++) atomic_store(&depth.depth[t], seen[t]);
}

static void count_tick(rt_timer_t *t) {
  (void)t;
  if (depth.counting || !rt_pg_pool_up(depth.th->pool)) return;
  rt_pg_batch_t *b = rt_pg_batch_new(depth.th->pool);
  if (b == NULL) return;
  rt_pg_add(b, s_dead_count, 0, NULL);
  if (rt_pg_submit(b, 0, count_done, NULL) == 0) depth.counting = true;
}

int event_dead_start(svc_thread_t *th) {
  depth.th = th;
  rt_timer_init(&depth.timer, count_tick, NULL);
  return rt_timer_start(th->loop, &depth.timer, 100, DEAD_COUNT_MS);
}

void event_dead_stop(svc_thread_t *th) { rt_timer_stop(th->loop, &depth.timer); }

void event_dead_metrics(wire_metrics_t *m) {
  wire_metrics_family(m, "dead_letters", WIRE_METRICS_GAUGE,
                      "Events given up on and not redriven, by topic.");
  for (int t = 0; t < SVC_EV_COUNT; t++) {
    wire_metrics_u64(m, WIRE_METRICS_LABELS({"topic", svc_event_def((svc_event_type_t)t)->topic}),
                     atomic_load(&depth.depth[t]));
  }
}

/* ------------------------------------------------------------------------ */
/* The API                                                                  */
/* ------------------------------------------------------------------------ */

static int topic_query(svc_req_t *req, char *topic, size_t bytes) {
  int n = svc_query(req, "topic", topic, bytes);
  if (n == -ENOENT) return 0;
  if (n <= 0 || svc_event_by_topic(topic, (size_t)n) == NULL) {
    svc_reply_error(req, 422, "invalid_topic", "topic is not an event type's topic");
    return -1;
  }
  return n;
}

void event_on_dead_list(svc_req_t *req) {
  int limit;
  char cursor[SVC_CURSOR_BYTES], topic[BUS_NAME_BYTES_MAX + 1], state[16];
  if (svc_page(req, SVC_CURSOR_SEQ, &limit, cursor) < 0) return;
  int tn = topic_query(req, topic, sizeof topic);
  if (tn < 0) return;
  static const char *const states[] = {"dead", "redriven"};
  int sn = svc_query_enum(req, "state", state, sizeof state, states, 2, "invalid_state",
                          "state must be dead or redriven");
  if (sn < 0) return;
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *vals[] = {tn > 0 ? topic : NULL, sn > 0 ? state : NULL, cursor[0] ? cursor : NULL,
                        lim};
  rt_pg_add(b, s_dead_list, 4, vals);
  svc_db(req, b, svc_page_done);
}

static void redrive_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
  } else if (rt_pg_rows(b, 0) == 0) {
    svc_reply_error(req, 409, "not_redrivable", "no such dead letter, or already redriven");
  } else {
    RT_WARN("dead letter redriven", RT_LF_STR("dead_letter", req->param_id),
            RT_LF_STR("by", req->who.subject));
    const char *v = rt_pg_value(b, 0, 0, 0);
    svc_reply_json(req, 200, json_loads(v, 0, NULL));
  }
}

void event_on_redrive(svc_req_t *req) {
  const char *id = svc_param_id(req, "id");
  if (id == NULL) {
    svc_reply_error(req, 404, "dead_letter_not_found", "no such dead letter");
    return;
  }
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit_t e;
  svc_emit_prepare(&e, SVC_EV_DEAD_LETTER_REDRIVEN, &trace);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {id, req->who.subject, e.id, e.topic, e.headers};
  rt_pg_add(b, s_redrive, 5, vals);
  svc_db(req, b, redrive_done);
}

static void redrive_all_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  int64_t n = 0;
  if (err != 0 || rt_pg_int64(b, 0, 0, 0, &n) != 0) {
    svc_reply_db_error(req, err ? err : RT_PG_E_SQL, b);
    return;
  }
  if (n > 0) {
    RT_WARN("dead letters redriven", RT_LF_INT("count", n), RT_LF_STR("by", req->who.subject));
  }
  svc_reply_json(req, 200, json_pack("{s:I, s:b}", "redriven", (json_int_t)n, "more",
                                     n == REDRIVE_ALL_MAX));
}

void event_on_redrive_all(svc_req_t *req) {
  char topic[BUS_NAME_BYTES_MAX + 1];
  int tn = topic_query(req, topic, sizeof topic);
  if (tn < 0) return;
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {tn > 0 ? topic : NULL, req->who.subject,
                        svc_event_def(SVC_EV_DEAD_LETTER_REDRIVEN)->topic, trace.correlation_id};
  rt_pg_add(b, s_redrive_all, 4, vals);
  svc_db(req, b, redrive_all_done);
}
