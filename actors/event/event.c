/*
 * event.c - the event service: the audit log of every event on the bus.
 *
 * On loop thread 0 it subscribes, as consumer group "event", to every
 * topic the services publish (EVENT_TOPICS), and appends each delivery to
 * audit_log through the inbox (svc_inbox_apply()): the row and the event
 * id commit together, then the delivery is ACKed, so a redelivered event
 * is recognised and only ACKed again. Exactly one row per event id.
 *
 *   GET /v1/events   auditor, admin; filters topic, since, until (busd's
 *                    store time, RFC 3339, since inclusive, until
 *                    exclusive); cursor pagination in arrival order
 *
 * plus /healthz, /readyz and /metrics from the skeleton (the inbox
 * counters there say how many duplicates were absorbed).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc.h"

extern const svc_migration_t event_migrations[];
extern const size_t event_migrations_count;

#define EVENT_TOPICS_DEFAULT                                                   \
  "customer.created,customer.updated,account.opened,account.topped_up,"        \
  "account.withdrawn,account.transferred"
#define EVENT_GROUP "event"
#define EVENT_TOPICS_MAX 32
#define EVENT_IN_FLIGHT 64 /* unacked deliveries per topic */
#define EVENT_TIME_BYTES_MAX 40

static struct {
  char topics_buf[EVENT_TOPICS_MAX * (BUS_NAME_BYTES_MAX + 1)];
  const char *topics[EVENT_TOPICS_MAX];
  uint32_t topics_count;
} cfg;

static int s_append, s_list;

static const svc_stmt_t stmts[] = {
    /* $1 event id, $2 topic (the inbox's), $3 key, $4 payload, $5 partition,
     * $6 offset, $7 busd's store time in Unix ms. A row only when the id
     * is new. */
    {&s_append,
     SVC_INBOX_CTE
     " INSERT INTO audit_log (event_id, topic, key, payload, bus_partition, bus_offset, stored_at)"
     " SELECT event_id, $2, $3, $4::jsonb, $5::int, $6::bigint,"
     " to_timestamp($7::bigint / 1000.0) FROM inbox_new RETURNING seq",
     7},
    /* $1 topic, $2 since, $3 until, $4 cursor (event id of the last item
     * shown; unknown: nothing), $5 limit + 1. */
    {&s_list,
     "SELECT event_id::text, json_build_object('event_id', event_id, 'topic', topic,"
     " 'key', key, 'payload', payload, 'partition', bus_partition, 'offset', bus_offset,"
     " 'stored_at', stored_at, 'received_at', received_at)::text"
     " FROM audit_log WHERE ($1::text IS NULL OR topic = $1)"
     " AND ($2::timestamptz IS NULL OR stored_at >= $2::timestamptz)"
     " AND ($3::timestamptz IS NULL OR stored_at < $3::timestamptz)"
     " AND ($4::uuid IS NULL OR seq > (SELECT a.seq FROM audit_log a WHERE a.event_id = $4::uuid))"
     " ORDER BY seq LIMIT $5::int",
     5},
};

/* ------------------------------------------------------------------------ */
/* Consuming                                                                */
/* ------------------------------------------------------------------------ */

static void on_deliver(void *arg, bus_client_t *client, const bus_delivery_t *d) {
  (void)client;
  svc_thread_t *th = arg;
  /* The slices are not NUL-terminated: copy key and payload. */
  char *key = malloc((size_t)d->key.len + 1);
  char *payload = malloc((size_t)d->payload.len + 1);
  char partition[16], offset[24], stored[24];
  const char *vals[5] = {key, payload, partition, offset, stored};
  if (key != NULL && payload != NULL) {
    if (d->key.len > 0) memcpy(key, d->key.ptr, d->key.len);
    key[d->key.len] = '\0';
    if (d->payload.len > 0) memcpy(payload, d->payload.ptr, d->payload.len);
    payload[d->payload.len] = '\0';
    snprintf(partition, sizeof partition, "%" PRIu32, d->partition);
    snprintf(offset, sizeof offset, "%" PRIu64, d->offset);
    snprintf(stored, sizeof stored, "%" PRIu64, d->stored_ms);
    svc_inbox_apply(th, d, s_append, 5, vals);
  } else {
    RT_WARN("event: out of memory for a delivery", RT_LF_INT("offset", d->offset));
    bus_nack(th->bus, d->sub, d->partition, d->offset);
  }
  free(key);
  free(payload);
}

static int bus_init(svc_thread_t *th, bus_client_t *bus) {
  for (uint32_t i = 0; i < cfg.topics_count; i++) {
    int rc = bus_subscribe(bus, cfg.topics[i], EVENT_GROUP, EVENT_IN_FLIGHT, on_deliver, th);
    if (rc < 0) {
      RT_ERROR("cannot subscribe", RT_LF_STR("topic", cfg.topics[i]),
               RT_LF_STR("error", rt_strerror(rc)));
      return rc;
    }
  }
  RT_INFO("subscribed", RT_LF_INT("topics", cfg.topics_count), RT_LF_STR("group", EVENT_GROUP));
  return 0;
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
  if (svc_page(req, SVC_CURSOR_UUID, &limit, cursor) < 0) return;
  int tn = svc_query(req, "topic", topic, sizeof topic);
  if (tn == -EINVAL || (tn >= 0 && !bus_name_valid((const uint8_t *)topic, (size_t)tn))) {
    svc_reply_error(req, 422, "invalid_topic", "topic is not a valid topic name");
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
                        cursor[0] ? cursor : NULL, lim};
  rt_pg_add(b, s_list, 5, vals);
  svc_db(req, b, list_done);
}

static const svc_route_t routes[] = {
    {"GET", "/v1/events", on_list, SVC_AUTH_REQUIRED, SVC_ROLE_AUDITOR | SVC_ROLE_ADMIN, false},
};

/* ------------------------------------------------------------------------ */
/* Configuration and main                                                   */
/* ------------------------------------------------------------------------ */

static int load_topics(void) {
  const char *list = rt_env_str("EVENT_TOPICS", EVENT_TOPICS_DEFAULT);
  if (strlen(list) >= sizeof cfg.topics_buf) {
    fprintf(stderr, "EVENT_TOPICS is too long\n");
    return RT_E_CONFIG;
  }
  memcpy(cfg.topics_buf, list, strlen(list) + 1);
  char *save = NULL;
  for (char *t = strtok_r(cfg.topics_buf, ",", &save); t != NULL; t = strtok_r(NULL, ",", &save)) {
    if (cfg.topics_count == EVENT_TOPICS_MAX || !bus_name_valid((const uint8_t *)t, strlen(t))) {
      fprintf(stderr, "EVENT_TOPICS: bad or too many topics at '%s'\n", t);
      return RT_E_CONFIG;
    }
    cfg.topics[cfg.topics_count++] = t;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (load_topics() < 0) return 2;
  svc_def_t def = {
      .name = "event",
      .env_prefix = "EVENT",
      .default_port = 7004,
      .routes = routes,
      .routes_count = sizeof routes / sizeof routes[0],
      .stmts = stmts,
      .stmts_count = sizeof stmts / sizeof stmts[0],
      .migrations = event_migrations,
      .migrations_count = event_migrations_count,
      .bus_init = bus_init,
      .usage_env = "  EVENT_TOPICS          topics to audit, comma-separated\n"
                   "                        (" EVENT_TOPICS_DEFAULT ")\n",
  };
  return svc_main(argc, argv, &def);
}
