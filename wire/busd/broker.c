/*
 * broker.c - the broker on its loop thread: the periodic tick, deferred
 * work after each event (an I/O job's completion included), start-up of
 * the listeners, and the graceful drain.
 *
 * Drain (SIGTERM), in order, each step waiting for the one before:
 *   1. stop accepting; PUBs are refused with BUS_E_SHUTDOWN (the client
 *      re-sends them elsewhere or after the restart);
 *   2. every partition's appended records are written and fsynced and
 *      their PUB_ACKs queued;
 *   3. the groups' committed offsets are stored;
 *   4. connections close once their output has been sent;
 *   5. no I/O job is left: the loop stops.
 * Past 3/4 of the deadline whatever is left is closed hard; what was not
 * PUB_ACKed is simply not acknowledged, so the guarantee holds either way.
 */
#include <errno.h>
#include <string.h>

#include "busd.h"

#define TICK_MS 50
#define RETENTION_EVERY_MS 1000

uint64_t busd_now_ms(const busd_t *b) { return rt_loop_now_ns(b->loop) / 1000000u; }

static void drain_step(busd_t *b);

void busd_after_event(busd_t *b) {
  busd_log_kick(b);
  busd_conns_flush(b);
  if (b->draining && !b->drained) {
    drain_step(b);
    busd_conns_flush(b);
  }
}

/* ------------------------------------------------------------------------ */
/* Tick                                                                     */
/* ------------------------------------------------------------------------ */

static void partitions_tick(busd_t *b, bool retention) {
  uint64_t wall = busd_wall_ms();
  for (uint32_t i = 0; i < b->topics_count; i++) {
    busd_topic_t *t = &b->topics[i];
    for (uint32_t p = 0; p < t->parts_count; p++) {
      busd_part_t *part = &t->parts[p];
      busd_part_kick(part); /* a write whose submit failed goes now */
      if (retention) busd_part_retention(part, busd_groups_min_committed(t, p), wall);
    }
  }
}

static void on_tick(rt_timer_t *timer) {
  busd_t *b = timer->ctx;
  uint64_t now = busd_now_ms(b);
  busd_groups_tick(b, now);
  bool retention = now >= b->last_retention_ms + RETENTION_EVERY_MS && !b->draining;
  if (retention) b->last_retention_ms = now;
  partitions_tick(b, retention);
  busd_store_retry(b);
  if (now >= b->last_commit_ms + b->cfg.commit_interval_ms) {
    b->last_commit_ms = now;
    busd_store_commit(b, false);
  }
  busd_server_tick(b, now);
  busd_after_event(b);
}

/* ------------------------------------------------------------------------ */
/* Drain                                                                    */
/* ------------------------------------------------------------------------ */

static bool partitions_idle(busd_t *b) {
  for (uint32_t i = 0; i < b->topics_count; i++) {
    busd_topic_t *t = &b->topics[i];
    if (t->state == BUSD_TOPIC_CREATING) return false;
    for (uint32_t p = 0; p < t->parts_count; p++) {
      const busd_part_t *part = &t->parts[p];
      if (!busd_part_idle(part) && !part->failed && t->state == BUSD_TOPIC_READY) return false;
    }
  }
  return true;
}

static void drain_finish(busd_t *b, const char *how) {
  b->drained = true;
  rt_timer_stop(b->loop, &b->tick);
  rt_timer_stop(b->loop, &b->drain_timer);
  RT_INFO("busd drained", RT_LF_STR("how", how), RT_LF_INT("io_jobs_left", b->io.queued));
  rt_loop_drained(b->loop);
}

static void drain_step(busd_t *b) {
  if (!partitions_idle(b)) return;
  if (!b->drain_committed) {
    b->drain_committed = true;
    busd_store_commit(b, true);
  }
  if (!busd_store_idle(b)) return;
  if (!b->drain_closing) {
    b->drain_closing = true;
    busd_server_close_all(b, false);
  }
  if (!busd_server_idle(b) || b->io.queued > 0) return;
  drain_finish(b, "clean");
}

static void drain_deadline(rt_timer_t *timer) {
  busd_t *b = timer->ctx;
  if (b->drained) return;
  RT_WARN("drain taking too long: closing what is left",
          RT_LF_INT("io_jobs_left", b->io.queued), RT_LF_INT("connections", b->conns_count));
  busd_server_close_all(b, true);
  drain_finish(b, "deadline");
}

static void on_drain(rt_loop_t *loop, void *arg) {
  busd_t *b = arg;
  RT_INFO("draining", RT_LF_INT("pending_bytes", (int64_t)b->pending_bytes),
          RT_LF_INT("connections", b->conns_count));
  b->draining = true;
  b->ready = false;
  busd_server_stop_listening(b);
  rt_timer_init(&b->drain_timer, drain_deadline, b);
  if (rt_timer_start(loop, &b->drain_timer, (uint64_t)b->cfg.drain_ms * 3 / 4, 0) < 0) {
    /* The loop's own drain deadline still ends it, without our last
     * word to the connections left. */
    RT_WARN("drain: no timer for busd's own deadline", RT_LF_INT("drain_ms", b->cfg.drain_ms));
  }
  busd_after_event(b);
}

/* ------------------------------------------------------------------------ */
/* Start-up on the loop thread                                              */
/* ------------------------------------------------------------------------ */

static int http_start(busd_t *b) {
  http_server_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = b->cfg.host;
  cfg.port = (uint16_t)b->cfg.http_port;
  cfg.conns_max = BUSD_HTTP_CONNS_MAX;
  int rc = busd_http_routes(b);
  if (rc == 0) rc = http_server_create(&b->http, b->loop, &cfg, &b->router);
  if (rc == 0) rc = http_server_start(b->http);
  return rc;
}

int busd_thread_setup(rt_loop_t *loop, uint32_t index, void *arg) {
  busd_t *b = arg;
  b->loop = loop;
  int rc = busd_server_start(b);
  if (rc < 0) {
    RT_ERROR("cannot listen", RT_LF_STR("host", b->cfg.host), RT_LF_INT("port", b->cfg.port),
             RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  rc = http_start(b);
  if (rc < 0) {
    RT_ERROR("cannot listen (http)", RT_LF_STR("host", b->cfg.host),
             RT_LF_INT("port", b->cfg.http_port), RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  rc = rt_loop_on_drain(loop, on_drain, b);
  if (rc < 0) return rc;
  rt_timer_init(&b->tick, on_tick, b);
  rc = rt_timer_start(loop, &b->tick, TICK_MS, TICK_MS);
  if (rc < 0) return rc;
  b->last_commit_ms = b->last_retention_ms = busd_now_ms(b);
  b->ready = true;
  RT_INFO("busd listening", RT_LF_STR("host", b->cfg.host),
          RT_LF_INT("port", rt_tcp_local_port(b->listen_fd)),
          RT_LF_INT("http_port", http_server_port(b->http)),
          RT_LF_STR("data_dir", b->cfg.data_dir), RT_LF_INT("topics", b->topics_count),
          RT_LF_INT("io_threads", b->cfg.io_threads));
  return 0;
}
