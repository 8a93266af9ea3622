/*
 * http.c - busd's HTTP port: /healthz, /readyz, /metrics.
 *
 * The handlers run on the broker's loop thread (the HTTP server shares the
 * loop), so they read broker state directly, without locks or copies.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "busd.h"

static busd_t *broker;

static void on_healthz(http_exchange_t *ex, void *arg) {
  http_respond(ex, 200, "text/plain", "ok\n", 3, NULL);
}

/* Ready: recovered, listening, not draining, and every partition can take
 * writes (a failed fdatasync makes a partition refuse PUBs until restart). */
static void on_readyz(http_exchange_t *ex, void *arg) {
  busd_t *b = broker;
  const char *why = NULL;
  if (!b->ready) why = b->draining ? "draining" : "starting";
  for (uint32_t i = 0; i < b->topics_count && why == NULL; i++) {
    const busd_topic_t *t = &b->topics[i];
    if (t->state == BUSD_TOPIC_FAILED) why = "a topic could not be created";
    for (uint32_t p = 0; p < t->parts_count && why == NULL; p++)
      if (t->parts[p].failed) why = "a partition failed to write";
  }
  if (why != NULL) {
    http_respond_error(ex, 503, "not_ready", why);
    return;
  }
  static const char body[] = "{\"ready\":true}";
  http_respond(ex, 200, "application/json", body, sizeof body - 1, NULL);
}

#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

#define S(field) offsetof(busd_stats_t, field)
static const struct counter_def {
  const char *name;
  const char *help;
  size_t offset;
} counter_defs[] = {
    {"busd_published_total", "PUBs appended to the log.", S(published)},
    {"busd_pub_acked_total", "PUB_ACKs sent (records durable).", S(pub_acked)},
    {"busd_pub_refused_total", "PUBs answered with ERR (not stored).", S(pub_refused)},
    {"busd_delivered_total", "DELIVERs sent, redeliveries included.", S(delivered)},
    {"busd_redelivered_total", "DELIVERs with attempt > 1.", S(redelivered)},
    {"busd_acked_total", "ACKs that completed a delivery.", S(acked)},
    {"busd_nacked_total", "NACKs that scheduled a redelivery.", S(nacked)},
    {"busd_ack_timeouts_total", "Deliveries not acknowledged in time.", S(ack_timeouts)},
    {"busd_dead_letters_total", "Events moved to <topic>.dead.", S(dead_letters)},
    {"busd_batches_total", "Group commits (one fdatasync each).", S(batches)},
    {"busd_batch_records_total", "Records written by group commits.", S(batch_records)},
    {"busd_cache_misses_total", "Deliveries that had to read the disk.", S(cache_misses)},
    {"busd_ring_full_total", "Appends refused for now: the partition's ring held only records"
     " not yet durable.", S(ring_full)},
    {"busd_corrupt_records_total", "Records skipped: checksum failed on read.", S(corrupt)},
    {"busd_retention_skipped_total", "Offsets a group skipped after retention.", S(retention_lost)},
    {"busd_segments_deleted_total", "Segments deleted by retention.", S(segments_deleted)},
    {"busd_torn_bytes_cut_total", "Bytes of torn tails cut at start-up.", S(torn_bytes_cut)},
    {"busd_start_read_bytes_total", "Log bytes read at start-up.", S(start_read_bytes)},
    {"busd_index_rebuilt_total", "Segment indexes missing or damaged, rebuilt.", S(idx_rebuilt)},
    {"busd_index_errors_total", "Segment index files that could not be written.", S(idx_errors)},
    {"busd_connections_accepted_total", "Connections accepted.", S(conns_accepted)},
    {"busd_connections_rejected_total", "Connections refused over the limit.", S(conns_rejected)},
    {"busd_protocol_errors_total", "Connections closed for a protocol error.", S(proto_errors)},
    {"busd_tls_failed_total", "Connections closed by TLS: peer refused, or a bad record.",
     S(tls_failed)},
};
#undef S

static void metrics_broker(wire_metrics_t *m, const busd_t *b) {
  for (size_t i = 0; i < sizeof counter_defs / sizeof counter_defs[0]; i++) {
    const uint64_t *v = (const uint64_t *)((const char *)&b->stats + counter_defs[i].offset);
    wire_metrics_counter(m, counter_defs[i].name, counter_defs[i].help, *v);
  }
  const busd_io_t *io = &b->io;
  wire_metrics_counter(m, "busd_fsyncs_total", "fdatasync calls on segments.", LOAD(io->fsyncs));
  wire_metrics_family(m, "busd_fsync_seconds_total", WIRE_METRICS_COUNTER,
                      "Time spent in fdatasync.");
  wire_metrics_f64(m, NULL, 0, (double)LOAD(io->fsync_ns) / 1e9);
  wire_metrics_counter(m, "busd_written_bytes_total", "Bytes written to segments.",
                       LOAD(io->written_bytes));
  wire_metrics_counter(m, "busd_read_bytes_total", "Bytes read back from segments.",
                       LOAD(io->read_bytes));
  wire_metrics_counter(m, "busd_io_errors_total", "Failed file operations.", LOAD(io->errors));
  rt_work_stats_t ws;
  rt_work_pool_stats(io->pool, &ws);
  wire_metrics_gauge(m, "busd_io_jobs_queued", "File jobs waiting for an I/O thread.", ws.queued);
  wire_metrics_gauge(m, "busd_io_jobs_queued_max", "Most file jobs ever waiting at once.",
                     ws.queued_max);
  wire_metrics_counter(m, "busd_io_jobs_refused_total",
                       "File jobs refused: queue full, tried later.", ws.rejected);
  wire_metrics_gauge(m, "busd_connections", "Connections open now.", b->conns_count);
  wire_metrics_gauge(m, "busd_pending_bytes", "Bytes appended and not yet durable.",
                     b->pending_bytes);
  wire_metrics_gauge(m, "busd_topics", "Topics.", b->topics_count);
  wire_metrics_gauge(m, "busd_start_ms", "Milliseconds start-up took recovering the data directory.",
                     b->stats.start_ms);
}

static void metrics_partitions(wire_metrics_t *m, const busd_t *b) {
  wire_metrics_family(m, "busd_partition_end_offset", WIRE_METRICS_GAUGE,
                      "Offset after the last durable record.");
  for (uint32_t i = 0; i < b->topics_count; i++) {
    const busd_topic_t *t = &b->topics[i];
    for (uint32_t p = 0; p < t->parts_count; p++) {
      char part[12];
      snprintf(part, sizeof part, "%" PRIu32, p);
      wire_metrics_u64(m, WIRE_METRICS_LABELS({"topic", t->name}, {"partition", part}),
                       t->parts[p].durable);
    }
  }
}

/* The metrics of a group: per partition, or one for the whole group. */
static uint64_t group_lag(const busd_group_t *g, uint32_t p) {
  const busd_gp_t *gp = &g->gps[p];
  return gp->part->durable > gp->committed ? gp->part->durable - gp->committed : 0;
}
static uint64_t group_in_flight(const busd_group_t *g, uint32_t p) { return g->gps[p].in_flight; }
static uint64_t group_dead(const busd_group_t *g, uint32_t p) { return g->dead; }
static uint64_t group_delivered(const busd_group_t *g, uint32_t p) { return g->delivered; }
static uint64_t group_redelivered(const busd_group_t *g, uint32_t p) { return g->redelivered; }
static uint64_t group_members(const busd_group_t *g, uint32_t p) { return g->members_count; }

#define GAUGE WIRE_METRICS_GAUGE
#define COUNTER WIRE_METRICS_COUNTER
static const struct group_def {
  const char *name;
  wire_metrics_type_t type;
  const char *help;
  bool per_partition;
  uint64_t (*value)(const busd_group_t *g, uint32_t p);
} group_defs[] = {
    {"busd_group_lag", GAUGE, "Durable records the group has not completed.", true, group_lag},
    {"busd_group_in_flight", GAUGE, "Deliveries waiting for ACK.", true, group_in_flight},
    {"busd_group_dead_letters_total", COUNTER, "Events the group sent to <topic>.dead.", false,
     group_dead},
    {"busd_group_delivered_total", COUNTER, "DELIVERs sent to the group.", false, group_delivered},
    {"busd_group_redelivered_total", COUNTER, "Redeliveries to the group.", false, group_redelivered},
    {"busd_group_members", GAUGE, "Members (subscriptions) now.", false, group_members},
};
#undef GAUGE
#undef COUNTER

static void metrics_groups(wire_metrics_t *m, const busd_t *b) {
  for (size_t d = 0; d < sizeof group_defs / sizeof group_defs[0]; d++) {
    const struct group_def *def = &group_defs[d];
    wire_metrics_family(m, def->name, def->type, def->help);
    for (uint32_t i = 0; i < b->topics_count; i++) {
      const busd_topic_t *t = &b->topics[i];
      uint32_t parts = def->per_partition ? t->parts_count : 1;
      for (const busd_group_t *g = t->groups; g != NULL; g = g->next) {
        for (uint32_t p = 0; p < parts; p++) {
          char part[12];
          snprintf(part, sizeof part, "%" PRIu32, p);
          const wire_metrics_label_t labels[] = {
              {"topic", t->name}, {"group", g->name}, {"partition", part}};
          wire_metrics_u64(m, labels, def->per_partition ? 3 : 2, def->value(g, p));
        }
      }
    }
  }
}

static void metrics_render(wire_metrics_t *m, void *arg) {
  metrics_broker(m, broker);
  metrics_partitions(m, broker);
  metrics_groups(m, broker);
  http_server_metrics(m, "busd_http_", &broker->http, 1);
  wire_metrics_loops(m, &broker->loop, 1);
}

static void on_metrics(http_exchange_t *ex, void *arg) {
  http_respond_metrics(ex, metrics_render, NULL, 8u << 20);
}

int busd_http_routes(busd_t *b) {
  broker = b;
  http_router_init(&b->router);
  int rc = http_router_add(&b->router, "GET", "/healthz", HTTP_HANDLER(on_healthz), NULL);
  if (rc == 0) rc = http_router_add(&b->router, "GET", "/readyz", HTTP_HANDLER(on_readyz), NULL);
  if (rc == 0) rc = http_router_add(&b->router, "GET", "/metrics", HTTP_HANDLER(on_metrics), NULL);
  return rc;
}
