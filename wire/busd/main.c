/*
 * main.c - busd: configuration, start-up recovery, run, shutdown.
 *
 * Start-up happens on the main thread, where blocking is fine: read the
 * configuration, recover the data directory (segments through their index
 * files, the last one of each partition read to its end and a torn tail
 * cut, load committed offsets), start the I/O threads. Then rt_run()
 * runs one loop thread until SIGTERM/SIGINT and its drain; afterwards the
 * I/O threads are joined and everything is freed.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busd.h"

static busd_t broker;

static void usage(FILE *f) {
  fprintf(f,
          "usage: busd [--help]\n"
          "\n"
          "The event bus broker: MessagePack-framed TCP (wire/BUS_PROTOCOL.md), a\n"
          "durable log per topic partition (CRC32C per record, group commit, PUB_ACK\n"
          "only after fdatasync), consumer groups with at-least-once delivery,\n"
          "redelivery and dead letters. HTTP: /healthz, /readyz, /metrics.\n"
          "\n"
          "Environment:\n"
          "  BUSD_HOST                  listen address (both ports)    (127.0.0.1)\n"
          "  BUSD_PORT                  bus port                       (7400)\n"
          "  BUSD_HTTP_PORT             health and metrics port        (7401)\n"
          "  BUSD_DATA_DIR              where the log lives            (./data/busd)\n"
          "  BUSD_PARTITIONS            partitions of new topics       (4)\n"
          "  BUSD_FRAME_BYTES_MAX       largest frame body             (1048576)\n"
          "  BUSD_ACK_TIMEOUT_MS        redeliver when not acked       (30s)\n"
          "  BUSD_MAX_ATTEMPTS          deliveries before <topic>.dead (5)\n"
          "  BUSD_RETRY_BACKOFF_MS      first NACK back-off, doubling  (200ms)\n"
          "  BUSD_RETRY_BACKOFF_MAX_MS  longest NACK back-off          (30s)\n"
          "  BUSD_RETENTION_MS          keep segments at least         (7 days)\n"
          "  BUSD_SEGMENT_BYTES         roll segments past             (67108864)\n"
          "  BUSD_CACHE_BYTES           durable records kept in memory\n"
          "                             per partition                  (8388608)\n"
          "                             (a partition's ring holds these and\n"
          "                             two of the largest records more; PUBs\n"
          "                             are refused for now, BUS_E_OVERLOADED,\n"
          "                             while it holds only unsynced ones)\n"
          "  BUSD_CONNS_MAX             connections                    (1024)\n"
          "  BUSD_SUBS_MAX              subscriptions (group members)  (4096)\n"
          "  BUSD_TOPICS_MAX            topics                         (256)\n"
          "  BUSD_GROUPS_MAX            consumer groups, all topics    (1024)\n"
          "  BUSD_WINDOW_MAX            in-flight offsets per group\n"
          "                             and partition (power of 2)     (4096)\n"
          "  BUSD_IO_THREADS            threads for file I/O           (4)\n"
          "  BUSD_PENDING_BYTES_MAX     unsynced bytes before PUBs are\n"
          "                             refused (BUS_E_OVERLOADED)     (67108864)\n"
          "  BUSD_OUT_BYTES_MAX         queued output per connection   (16777216)\n"
          "  BUSD_COMMIT_INTERVAL_MS    how often offsets are stored   (200ms)\n"
          "  BUSD_IDLE_TIMEOUT_MS       close silent connections       (60s)\n"
          "  BUSD_DRAIN_MS              graceful shutdown deadline     (10s)\n"
          "  TLS_CA                     the platform CA (PEM): the bus port then\n"
          "                             takes only clients showing a certificate\n"
          "                             it signed (mutual TLS)  (unset: plain TCP)\n"
          "  TLS_CERT, TLS_KEY          busd's certificate and key, signed by TLS_CA\n"
          "                             (required with it; the HTTP port stays plain)\n"
          "  LOG_LEVEL                  debug|info|warn|error          (info)\n"
          "\n"
          "Durations take ms, s or m suffixes. SIGTERM or SIGINT: stop accepting,\n"
          "finish writes in flight, send their PUB_ACKs, store offsets, exit 0.\n");
}

static uint32_t pow2_ceil(uint32_t v) {
  uint32_t p = 1;
  while (p < v && p < (1u << 31)) p <<= 1;
  return p;
}

int busd_config_load(busd_config_t *c) {
  int rc = 0;
  c->host = rt_env_str("BUSD_HOST", "127.0.0.1");
  c->data_dir = rt_env_str("BUSD_DATA_DIR", "./data/busd");
  rc |= rt_env_u32("BUSD_PORT", 7400, 0, 65535, &c->port);
  rc |= rt_env_u32("BUSD_HTTP_PORT", 7401, 0, 65535, &c->http_port);
  rc |= rt_env_u32("BUSD_PARTITIONS", 4, 1, BUSD_PARTITIONS_MAX, &c->partitions);
  rc |= rt_env_u32("BUSD_FRAME_BYTES_MAX", BUS_FRAME_BYTES_MAX_DEFAULT, 4096, 64u << 20,
                   &c->frame_bytes_max);
  rc |= rt_env_ms("BUSD_ACK_TIMEOUT_MS", 30000, &c->ack_timeout_ms);
  rc |= rt_env_u32("BUSD_MAX_ATTEMPTS", 5, 1, 1000, &c->max_attempts);
  rc |= rt_env_ms("BUSD_RETRY_BACKOFF_MS", 200, &c->retry_backoff_ms);
  rc |= rt_env_ms("BUSD_RETRY_BACKOFF_MAX_MS", 30000, &c->retry_backoff_max_ms);
  rc |= rt_env_ms("BUSD_RETENTION_MS", 7u * 24 * 3600 * 1000, &c->retention_ms);
  rc |= rt_env_u32("BUSD_SEGMENT_BYTES", 64u << 20, 4096, 1u << 30, &c->segment_bytes);
  rc |= rt_env_u32("BUSD_CACHE_BYTES", 8u << 20, 0, 1u << 30, &c->cache_bytes);
  rc |= rt_env_u32("BUSD_CONNS_MAX", 1024, 1, 1000000, &c->conns_max);
  rc |= rt_env_u32("BUSD_SUBS_MAX", 4096, 1, 1000000, &c->subs_max);
  rc |= rt_env_u32("BUSD_TOPICS_MAX", 256, 1, 100000, &c->topics_max);
  rc |= rt_env_u32("BUSD_GROUPS_MAX", 1024, 1, 100000, &c->groups_max);
  rc |= rt_env_u32("BUSD_WINDOW_MAX", 4096, 1, 1u << 20, &c->window_max);
  rc |= rt_env_u32("BUSD_IO_THREADS", 4, 1, BUSD_IO_THREADS_MAX, &c->io_threads);
  rc |= rt_env_u32("BUSD_PENDING_BYTES_MAX", 64u << 20, 1u << 20, 1u << 31,
                   &c->pending_bytes_max);
  rc |= rt_env_u32("BUSD_OUT_BYTES_MAX", 16u << 20, 1u << 20, 1u << 31, &c->out_bytes_max);
  rc |= rt_env_ms("BUSD_COMMIT_INTERVAL_MS", 200, &c->commit_interval_ms);
  rc |= rt_env_ms("BUSD_IDLE_TIMEOUT_MS", 60000, &c->idle_timeout_ms);
  rc |= rt_env_ms("BUSD_DRAIN_MS", 10000, &c->drain_ms);
  c->tls_ca = rt_env_str("TLS_CA", NULL);
  c->tls_cert = rt_env_str("TLS_CERT", NULL);
  c->tls_key = rt_env_str("TLS_KEY", NULL);
  if (c->tls_ca != NULL && c->tls_ca[0] == '\0') c->tls_ca = NULL;
  if ((c->tls_ca != NULL) != (c->tls_cert != NULL) || (c->tls_cert != NULL) != (c->tls_key != NULL)) {
    RT_ERROR("TLS_CA, TLS_CERT and TLS_KEY go together", RT_LF_BOOL("ca", c->tls_ca != NULL));
    rc = RT_E_CONFIG;
  }
  int level = rt_log_level_parse(rt_env_str("LOG_LEVEL", "info"));
  c->log_level = level < 0 ? RT_LOG_INFO : (rt_log_level_t)level;
  if (rc < 0) return RT_E_CONFIG;
  c->window_max = pow2_ceil(c->window_max);
  /* A connection must hold a full DELIVER above the delivery high water. */
  if (c->out_bytes_max < 2 * c->frame_bytes_max + BUSD_CONN_OUT_HIGH_WATER) {
    RT_ERROR("BUSD_OUT_BYTES_MAX must be at least 2 x BUSD_FRAME_BYTES_MAX + 1 MiB",
             RT_LF_INT("out_bytes_max", c->out_bytes_max),
             RT_LF_INT("frame_bytes_max", c->frame_bytes_max));
    return RT_E_CONFIG;
  }
  if (c->retry_backoff_max_ms < c->retry_backoff_ms) c->retry_backoff_max_ms = c->retry_backoff_ms;
  if (c->ack_timeout_ms == 0) c->ack_timeout_ms = 1;
  return 0;
}

/* Provided buffers of 8 KiB: a PUB or a DELIVER is about 1 KiB, so a
 * buffer carries a few of a burst, and one frame larger than it spans
 * buffers (the decoder keeps what it needs). */
#define BUSD_BUF_BYTES 8192

/* The loop thread's tables, from the configuration: what may use each at
 * once. */
static void loop_config(const busd_config_t *c, rt_loop_config_t *out) {
  uint64_t timers =
      BUSD_HTTP_CONNS_MAX   /* an HTTP connection's idle or request deadline */
      + 1                   /* the tick: acks, redeliveries, commits, retention */
      + 2;                  /* the drain's deadline, ours and the loop's */
  uint64_t receivers =
      (uint64_t)c->conns_max  /* a bus connection, which may send at any time */
      + BUSD_HTTP_CONNS_MAX;  /* an HTTP connection */
  *out = (rt_loop_config_t){
      .timers_count = (uint32_t)timers,
      /* busd's actors (its connections) are sent no messages: a few for
       * the runtime's sake, counted like any other should they run out. */
      .msgs_count = 16,
      .buf_bytes = BUSD_BUF_BYTES,
  };
  out->bufs_count = rt_loop_bufs_for(out, receivers);
}

static void log_config(const busd_config_t *c) {
  RT_INFO("busd starting", RT_LF_STR("data_dir", c->data_dir),
          RT_LF_INT("partitions", c->partitions), RT_LF_INT("frame_bytes_max", c->frame_bytes_max),
          RT_LF_INT("ack_timeout_ms", c->ack_timeout_ms),
          RT_LF_INT("max_attempts", c->max_attempts),
          RT_LF_INT("retention_ms", c->retention_ms),
          RT_LF_INT("segment_bytes", c->segment_bytes), RT_LF_INT("io_threads", c->io_threads),
          RT_LF_INT("window_max", c->window_max));
}

/* With TLS_CA: the server side of mutual TLS, one engine per connection. */
static int tls_setup(busd_t *b) {
  const busd_config_t *c = &b->cfg;
  if (c->tls_ca == NULL) return 0;
  int rc = wire_tls_creds_load(&b->tls_creds, c->tls_ca, c->tls_cert, c->tls_key);
  if (rc == 0) rc = wire_tls_server_create(&b->tls, b->tls_creds, c->conns_max);
  if (rc == 0) RT_INFO("bus port: mutual TLS", RT_LF_STR("ca", c->tls_ca));
  return rc;
}

/* Only --help: everything else is configured from the environment. */
static int parse_args(int argc, char **argv) {
  static const struct option opts[] = {
      {"help", no_argument, NULL, 'h'},
      {NULL, 0, NULL, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
    if (c == 'h') return 1;
    return -1;
  }
  return optind == argc ? 0 : -1;
}

static void cleanup(busd_t *b) {
  busd_io_stop(&b->io);
  http_server_destroy(b->http);
  b->http = NULL;
  busd_server_free(b);
  wire_tls_filter_destroy(b->tls);
  wire_tls_creds_free(b->tls_creds);
  busd_store_close(b);
  bus_buf_deinit(&b->dead_hdr);
}

int main(int argc, char **argv) {
  int rc = parse_args(argc, argv);
  if (rc != 0) {
    usage(rc > 0 ? stdout : stderr);
    return rc > 0 ? 0 : 2;
  }
  busd_t *b = &broker;
  rt_log_init("busd", RT_LOG_INFO, NULL, 0);
  if (busd_config_load(&b->cfg) < 0) return 2;
  rt_log_init("busd", b->cfg.log_level, NULL, 0);
  bus_strerror_init();
  rt_strerror_register(HTTP_E_RANGE_LO, HTTP_E_RANGE_HI, http_strerror);
  log_config(&b->cfg);
  b->rec_bytes_max = b->cfg.frame_bytes_max + BUSD_REC_HEADER_BYTES;
  b->listen_fd = -1;
  bus_buf_init(&b->dead_hdr, 64u * 1024);
  rt_signals_block(); /* before the I/O threads, which inherit it */
  uint64_t t0 = rt_now_ns();
  rc = tls_setup(b);
  if (rc == 0) rc = busd_store_open(b);
  b->stats.start_ms = (rt_now_ns() - t0) / 1000000u;
  if (rc == 0) rc = busd_io_start(&b->io, b);
  if (rc < 0) {
    RT_ERROR("start-up failed", RT_LF_STR("error", rt_strerror(rc)));
    cleanup(b);
    rt_log_flush();
    return 1;
  }
  RT_INFO("recovery done", RT_LF_INT("topics", b->topics_count),
          RT_LF_INT("took_ms", (int64_t)b->stats.start_ms),
          RT_LF_INT("segments_trusted", (int64_t)b->stats.segs_trusted),
          RT_LF_INT("segments_read_from_index", (int64_t)b->stats.segs_tail),
          RT_LF_INT("indexes_rebuilt", (int64_t)b->stats.idx_rebuilt),
          RT_LF_INT("log_bytes_read", (int64_t)b->stats.start_read_bytes),
          RT_LF_INT("torn_bytes_cut", (int64_t)b->stats.torn_bytes_cut));
  rt_loop_config_t loop_cfg;
  loop_config(&b->cfg, &loop_cfg);
  rc = rt_run(1, &loop_cfg, busd_thread_setup, b, b->cfg.drain_ms);
  cleanup(b);
  rt_log_stopped(rc < 0 ? 1 : 0); /* tests fail on its leftovers */
  return rc < 0 ? 1 : 0;
}
