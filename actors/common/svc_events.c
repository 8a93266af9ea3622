/*
 * svc_events.c - the event registry, traces, and writing events to the
 * outbox.
 *
 * The registry is events.def expanded into a table; a topic is looked up
 * by a linear scan of a few dozen names, which is what a delivery costs
 * once. An event's headers are rendered here once, as the JSON object the
 * outbox keeps and the relay publishes header by header.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "svc_internal.h"

static const svc_event_def_t registry[SVC_EV_COUNT] = {
#define SVC_EVENT(NAME, topic, key, version, producer)                         \
  [SVC_EV_##NAME] = {SVC_EV_##NAME, topic, key, version, producer},
#include "events.def"
#undef SVC_EVENT
};

const svc_event_def_t *svc_event_def(svc_event_type_t type) {
  if (NEVER((unsigned)type >= SVC_EV_COUNT)) return &registry[0];
  return &registry[type];
}

const svc_event_def_t *svc_event_by_topic(const char *topic, size_t len) {
  for (size_t i = 0; i < SVC_EV_COUNT; i++) {
    if (strlen(registry[i].topic) == len && memcmp(registry[i].topic, topic, len) == 0)
      return &registry[i];
  }
  return NULL;
}

int svc_stmt_outbox;

static const svc_stmt_t stmts[] = {
    {&svc_stmt_outbox,
     "INSERT INTO outbox (id, topic, key, payload, headers, created_at)"
     " VALUES ($1::uuid, $2, $3, $4::jsonb, $5::jsonb, now())",
     5},
};

const svc_stmt_table_t svc_events_stmts = {stmts, sizeof stmts / sizeof stmts[0]};

/* ------------------------------------------------------------------------ */
/* Traces                                                                   */
/* ------------------------------------------------------------------------ */

void svc_trace_of_request(const svc_req_t *req, svc_trace_t *out) {
  const char *rid = http_request_id(req->ex);
  snprintf(out->correlation_id, sizeof out->correlation_id, "%s", rid ? rid : "");
  out->causation_id[0] = '\0';
}

/* The request id alphabet of the HTTP server and of uuids: nothing to
 * escape in JSON, nothing a log scanner could mistake. */
static bool trace_id_ok(const char *s) {
  for (; *s != '\0'; s++) {
    char c = *s;
    bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

static void now_rfc3339(char out[32]) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, 32 - n, ".%03dZ", (int)(ts.tv_nsec / 1000000L));
}

static _Thread_local svc_emits_t *tls_emits;

void svc_emits_collect(svc_emits_t *e) { tls_emits = e; }

void svc_emit_prepare(svc_emit_t *e, svc_event_type_t type, const svc_trace_t *trace) {
  const svc_event_def_t *def = svc_event_def(type);
  svc_uuid7(e->id);
  svc_emits_t *note = tls_emits;
  if (note != NULL) {
    if (note->n == 0 && !note->overflow) note->quiet = svc_pub_quiet(note->th, note->batch);
    if (note->n < SVC_EMITS_MAX)
      memcpy(note->ids[note->n++], e->id, sizeof e->id);
    else
      note->overflow = true;
  }
  e->topic = def->topic;
  char at[32];
  now_rfc3339(at);
  const char *corr = trace != NULL && trace_id_ok(trace->correlation_id) ? trace->correlation_id : "";
  const char *cause = trace != NULL && trace_id_ok(trace->causation_id) ? trace->causation_id : "";
  int n = snprintf(e->headers, sizeof e->headers,
                   "{\"event-id\":\"%s\",\"type\":\"%s\",\"schema-version\":\"%d\","
                   "\"occurred-at\":\"%s\",\"correlation-id\":\"%s\",\"causation-id\":\"%s\"}",
                   e->id, def->topic, def->version, at, corr, cause);
  /* Every part is bounded: the topic by the registry, the ids by their
   * buffers. */
  assert(n > 0);
  assert((size_t)n < sizeof e->headers);
}

int svc_emit(rt_pg_batch_t *b, svc_event_type_t type, const char *key, const char *payload_json,
             const svc_trace_t *trace) {
  svc_emit_t e;
  svc_emit_prepare(&e, type, trace);
  const char *vals[] = {e.id, e.topic, key, payload_json, e.headers};
  return rt_pg_add(b, svc_stmt_outbox, 5, vals);
}
