/*
 * http.c - busd's HTTP port: /healthz, /readyz, /metrics.
 *
 * The handlers run on the broker's loop thread (the HTTP server shares the
 * loop), so they read broker state directly, without locks or copies.
 */
#include <inttypes.h>
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

#define COUNTER(name, help, value)                                                       \
  http_buf_appendf(out, "# HELP busd_" name " " help "\n# TYPE busd_" name " counter\n" \
                        "busd_" name " %" PRIu64 "\n", (uint64_t)(value))
#define GAUGE(name, help, value)                                                         \
  http_buf_appendf(out, "# HELP busd_" name " " help "\n# TYPE busd_" name " gauge\n"   \
                        "busd_" name " %" PRIu64 "\n", (uint64_t)(value))

static int metrics_broker(http_buf_t *out, const busd_t *b) {
  const busd_stats_t *s = &b->stats;
  const busd_io_t *io = &b->io;
  int rc = 0;
  rc |= COUNTER("published_total", "PUBs appended to the log.", s->published);
  rc |= COUNTER("pub_acked_total", "PUB_ACKs sent (records durable).", s->pub_acked);
  rc |= COUNTER("pub_refused_total", "PUBs answered with ERR (not stored).", s->pub_refused);
  rc |= COUNTER("delivered_total", "DELIVERs sent, redeliveries included.", s->delivered);
  rc |= COUNTER("redelivered_total", "DELIVERs with attempt > 1.", s->redelivered);
  rc |= COUNTER("acked_total", "ACKs that completed a delivery.", s->acked);
  rc |= COUNTER("nacked_total", "NACKs that scheduled a redelivery.", s->nacked);
  rc |= COUNTER("ack_timeouts_total", "Deliveries not acknowledged in time.", s->ack_timeouts);
  rc |= COUNTER("dead_letters_total", "Events moved to <topic>.dead.", s->dead_letters);
  rc |= COUNTER("batches_total", "Group commits (one fdatasync each).", s->batches);
  rc |= COUNTER("batch_records_total", "Records written by group commits.", s->batch_records);
  rc |= COUNTER("fsyncs_total", "fdatasync calls on segments.",
                atomic_load_explicit(&io->fsyncs, memory_order_relaxed));
  rc |= http_buf_appendf(out,
                         "# HELP busd_fsync_seconds_total Time spent in fdatasync.\n"
                         "# TYPE busd_fsync_seconds_total counter\n"
                         "busd_fsync_seconds_total %.6f\n",
                         (double)atomic_load_explicit(&io->fsync_ns, memory_order_relaxed) / 1e9);
  rc |= COUNTER("written_bytes_total", "Bytes written to segments.",
                atomic_load_explicit(&io->written_bytes, memory_order_relaxed));
  rc |= COUNTER("read_bytes_total", "Bytes read back from segments.",
                atomic_load_explicit(&io->read_bytes, memory_order_relaxed));
  rc |= COUNTER("io_errors_total", "Failed file operations.",
                atomic_load_explicit(&io->errors, memory_order_relaxed));
  rt_work_stats_t ws;
  rt_work_pool_stats(io->pool, &ws);
  rc |= GAUGE("io_jobs_queued", "File jobs waiting for an I/O thread.", ws.queued);
  rc |= GAUGE("io_jobs_queued_max", "Most file jobs ever waiting at once.", ws.queued_max);
  rc |= COUNTER("io_jobs_refused_total", "File jobs refused: queue full, tried later.",
                ws.rejected);
  rc |= COUNTER("cache_misses_total", "Deliveries that had to read the disk.", s->cache_misses);
  rc |= COUNTER("corrupt_records_total", "Records skipped: checksum failed on read.", s->corrupt);
  rc |= COUNTER("retention_skipped_total", "Offsets a group skipped after retention.",
                s->retention_lost);
  rc |= COUNTER("segments_deleted_total", "Segments deleted by retention.", s->segments_deleted);
  rc |= COUNTER("torn_bytes_cut_total", "Bytes of torn tails cut at start-up.", s->torn_bytes_cut);
  rc |= COUNTER("connections_accepted_total", "Connections accepted.", s->conns_accepted);
  rc |= COUNTER("connections_rejected_total", "Connections refused over the limit.",
                s->conns_rejected);
  rc |= COUNTER("protocol_errors_total", "Connections closed for a protocol error.",
                s->proto_errors);
  rc |= GAUGE("connections", "Connections open now.", b->conns_count);
  rc |= GAUGE("pending_bytes", "Bytes appended and not yet durable.", b->pending_bytes);
  rc |= GAUGE("topics", "Topics.", b->topics_count);
  return rc;
}

static int metrics_partitions(http_buf_t *out, const busd_t *b) {
  int rc = http_buf_appendf(out,
                            "# HELP busd_partition_end_offset Offset after the last durable record.\n"
                            "# TYPE busd_partition_end_offset gauge\n");
  for (uint32_t i = 0; i < b->topics_count && rc == 0; i++) {
    const busd_topic_t *t = &b->topics[i];
    for (uint32_t p = 0; p < t->parts_count && rc == 0; p++)
      rc = http_buf_appendf(out, "busd_partition_end_offset{topic=\"%s\",partition=\"%u\"} %" PRIu64 "\n",
                            t->name, p, t->parts[p].durable);
  }
  return rc;
}

/* One line per group and partition: lag and in-flight; per group: the
 * counters. Names are [A-Za-z0-9._-], safe inside label quotes. */
static int metrics_groups(http_buf_t *out, const busd_t *b) {
  int rc = http_buf_appendf(out,
                            "# HELP busd_group_lag Durable records the group has not completed.\n"
                            "# TYPE busd_group_lag gauge\n"
                            "# HELP busd_group_in_flight Deliveries waiting for ACK.\n"
                            "# TYPE busd_group_in_flight gauge\n"
                            "# HELP busd_group_dead_letters_total Events the group sent to <topic>.dead.\n"
                            "# TYPE busd_group_dead_letters_total counter\n"
                            "# HELP busd_group_delivered_total DELIVERs sent to the group.\n"
                            "# TYPE busd_group_delivered_total counter\n"
                            "# HELP busd_group_redelivered_total Redeliveries to the group.\n"
                            "# TYPE busd_group_redelivered_total counter\n"
                            "# HELP busd_group_members Members (subscriptions) now.\n"
                            "# TYPE busd_group_members gauge\n");
  for (uint32_t i = 0; i < b->topics_count && rc == 0; i++) {
    const busd_topic_t *t = &b->topics[i];
    for (const busd_group_t *g = t->groups; g != NULL && rc == 0; g = g->next) {
      for (uint32_t p = 0; p < t->parts_count && rc == 0; p++) {
        const busd_gp_t *gp = &g->gps[p];
        uint64_t lag = gp->part->durable > gp->committed ? gp->part->durable - gp->committed : 0;
        rc = http_buf_appendf(out,
                              "busd_group_lag{topic=\"%s\",group=\"%s\",partition=\"%u\"} %" PRIu64 "\n"
                              "busd_group_in_flight{topic=\"%s\",group=\"%s\",partition=\"%u\"} %u\n",
                              t->name, g->name, p, lag, t->name, g->name, p, gp->in_flight);
      }
      if (rc == 0)
        rc = http_buf_appendf(out,
                              "busd_group_dead_letters_total{topic=\"%s\",group=\"%s\"} %" PRIu64 "\n"
                              "busd_group_delivered_total{topic=\"%s\",group=\"%s\"} %" PRIu64 "\n"
                              "busd_group_redelivered_total{topic=\"%s\",group=\"%s\"} %" PRIu64 "\n"
                              "busd_group_members{topic=\"%s\",group=\"%s\"} %u\n",
                              t->name, g->name, g->dead, t->name, g->name, g->delivered, t->name,
                              g->name, g->redelivered, t->name, g->name, g->members_count);
    }
  }
  return rc;
}

static void on_metrics(http_exchange_t *ex, void *arg) {
  http_buf_t out;
  if (http_buf_init(&out, 16384, 8u << 20) < 0) {
    http_respond_error(ex, 503, "overloaded", "out of memory");
    return;
  }
  int rc = metrics_broker(&out, broker);
  if (rc == 0) rc = metrics_partitions(&out, broker);
  if (rc == 0) rc = metrics_groups(&out, broker);
  if (rc == 0) rc = http_server_metrics(&out, "busd_http_", &broker->http, 1);
  if (rc < 0) {
    http_respond_error(ex, 500, "internal", "metrics too large");
  } else {
    http_respond(ex, 200, "text/plain; version=0.0.4", out.data, out.len, NULL);
  }
  http_buf_deinit(&out);
}

int busd_http_routes(busd_t *b) {
  broker = b;
  http_router_init(&b->router);
  int rc = http_router_add(&b->router, "GET", "/healthz", HTTP_HANDLER(on_healthz), NULL);
  if (rc == 0) rc = http_router_add(&b->router, "GET", "/readyz", HTTP_HANDLER(on_readyz), NULL);
  if (rc == 0) rc = http_router_add(&b->router, "GET", "/metrics", HTTP_HANDLER(on_metrics), NULL);
  return rc;
}
