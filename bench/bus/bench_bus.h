/*
 * bench_bus.h - what the three bus benchmark clients share (ours, RabbitMQ,
 * NATS JetStream), so that they measure the same thing the same way.
 *
 * One publisher and one consumer run at once, each on its own thread and
 * connection. The publisher keeps `window` publishes unconfirmed at most
 * (confirmed = the broker says the message is stored) and stamps each
 * payload with a sequence number and the time it was handed to the client
 * library. The consumer acknowledges every message and records its
 * publish-to-deliver latency. Messages published during the first `warmup`
 * seconds are not measured; publishing stops after warmup + `seconds`.
 *
 *   msgs/s   = measured messages / (from the start of the measured window
 *              until the later of its end and the delivery of its last
 *              message): what went end to end, consumer lag included.
 *   p50, p99 = publish-to-deliver latency of the measured messages.
 *
 * Every client prints one JSON line on stdout:
 *   {"system":..,"messages":..,"seconds":..,"msgs_per_s":..,"p50_us":..,
 *    "p99_us":..,"confirm_per_s":..,"duplicates":..,"lost":..}
 *
 * Environment: BENCH_BUS_SECONDS (10), BENCH_BUS_WARMUP (2),
 * BENCH_BUS_WINDOW (100), BENCH_BUS_SIZE (200 bytes),
 * BENCH_BUS_MESSAGES_MAX (20000000, a cap on what is published).
 */
#ifndef BENCH_BUS_H
#define BENCH_BUS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_HIST_US 1000000u /* 1 us buckets up to 1 s; above: one bucket */

typedef struct bench_cfg {
  double seconds;
  double warmup;
  uint32_t window;
  uint32_t size;
  uint64_t messages_max;
} bench_cfg_t;

/* Shared between the publisher and the consumer thread. */
typedef struct bench {
  bench_cfg_t cfg;
  uint64_t t0_ns;              /* start of publishing */
  uint64_t measure_from_ns;
  uint64_t measure_to_ns;
  _Atomic uint64_t published;  /* handed to the client library */
  _Atomic uint64_t confirmed;
  _Atomic uint64_t confirmed_measured;
  _Atomic bool publish_done;   /* publishing stopped and all confirmed */
  /* Consumer side: written by its thread only; the two counters are also
   * read by the thread that decides when to stop. */
  _Atomic uint64_t received;
  _Atomic uint64_t duplicates;
  uint64_t measured;
  uint64_t last_measured_ns;
  uint8_t *seen;               /* a bit per sequence number */
  uint32_t *hist;
  uint64_t hist_over;
  uint64_t max_ns;
} bench_t;

static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline double bench_env_f(const char *name, double fallback) {
  const char *v = getenv(name);
  return v != NULL && *v != '\0' ? atof(v) : fallback;
}

static inline int bench_init(bench_t *b) {
  memset(b, 0, sizeof *b);
  b->cfg.seconds = bench_env_f("BENCH_BUS_SECONDS", 10);
  b->cfg.warmup = bench_env_f("BENCH_BUS_WARMUP", 2);
  b->cfg.window = (uint32_t)bench_env_f("BENCH_BUS_WINDOW", 100);
  b->cfg.size = (uint32_t)bench_env_f("BENCH_BUS_SIZE", 200);
  b->cfg.messages_max = (uint64_t)bench_env_f("BENCH_BUS_MESSAGES_MAX", 20000000);
  if (b->cfg.size < 16 || b->cfg.window == 0 || b->cfg.seconds <= 0) return -1;
  b->seen = calloc(b->cfg.messages_max / 8 + 1, 1);
  b->hist = calloc(BENCH_HIST_US, sizeof *b->hist);
  return b->seen == NULL || b->hist == NULL ? -1 : 0;
}

/* Marks the start of publishing and the measured window. */
static inline void bench_start(bench_t *b) {
  b->t0_ns = bench_now_ns();
  b->measure_from_ns = b->t0_ns + (uint64_t)(b->cfg.warmup * 1e9);
  b->measure_to_ns = b->measure_from_ns + (uint64_t)(b->cfg.seconds * 1e9);
}

/* True while the publisher should go on. */
static inline bool bench_publishing(const bench_t *b) {
  return bench_now_ns() < b->measure_to_ns &&
         atomic_load_explicit(&b->published, memory_order_relaxed) < b->cfg.messages_max;
}

/* Fills a payload: sequence number, publish time, then filler. */
static inline void bench_payload(const bench_t *b, uint8_t *buf, uint64_t seq, uint64_t t_ns) {
  memcpy(buf, &seq, 8);
  memcpy(buf + 8, &t_ns, 8);
  for (uint32_t i = 16; i < b->cfg.size; i++) buf[i] = (uint8_t)('a' + i % 26);
}

static inline bool bench_measured(const bench_t *b, uint64_t t_pub_ns) {
  return t_pub_ns >= b->measure_from_ns && t_pub_ns < b->measure_to_ns;
}

/* Publisher side: a confirm for a message published at t_pub_ns. */
static inline void bench_confirmed(bench_t *b, uint64_t t_pub_ns) {
  atomic_fetch_add_explicit(&b->confirmed, 1, memory_order_relaxed);
  if (bench_measured(b, t_pub_ns))
    atomic_fetch_add_explicit(&b->confirmed_measured, 1, memory_order_relaxed);
}

/* Consumer side: one delivered message. */
static inline void bench_delivered(bench_t *b, const uint8_t *payload, size_t len) {
  if (len < 16) return;
  uint64_t seq, t_pub, now = bench_now_ns();
  memcpy(&seq, payload, 8);
  memcpy(&t_pub, payload + 8, 8);
  atomic_fetch_add_explicit(&b->received, 1, memory_order_relaxed);
  if (seq >= b->cfg.messages_max) return;
  if (b->seen[seq / 8] & (1u << (seq % 8))) {
    atomic_fetch_add_explicit(&b->duplicates, 1, memory_order_relaxed);
    return;
  }
  b->seen[seq / 8] |= (uint8_t)(1u << (seq % 8));
  if (!bench_measured(b, t_pub)) return;
  uint64_t lat = now > t_pub ? now - t_pub : 0;
  uint64_t us = lat / 1000;
  if (us < BENCH_HIST_US) {
    b->hist[us]++;
  } else {
    b->hist_over++;
  }
  if (lat > b->max_ns) b->max_ns = lat;
  b->measured++;
  b->last_measured_ns = now;
}

/* The consumer is done once every published message arrived (after the
 * publisher finished), or `grace_s` after that at the latest. */
static inline bool bench_consumer_done(const bench_t *b, uint64_t *done_since_ns, double grace_s) {
  if (!atomic_load(&b->publish_done)) return false;
  uint64_t unique = atomic_load(&b->received) - atomic_load(&b->duplicates);
  if (unique >= atomic_load(&b->published)) return true;
  uint64_t now = bench_now_ns();
  if (*done_since_ns == 0) *done_since_ns = now;
  return now - *done_since_ns > (uint64_t)(grace_s * 1e9);
}

static inline double bench_percentile_us(const bench_t *b, double p) {
  uint64_t total = b->measured, want = (uint64_t)(p * (double)total + 0.5), seen = 0;
  if (want == 0) want = 1;
  for (uint32_t us = 0; us < BENCH_HIST_US; us++) {
    seen += b->hist[us];
    if (seen >= want) return us;
  }
  return (double)b->max_ns / 1000.0;
}

static inline void bench_report(const bench_t *b, const char *system, const char *durability) {
  uint64_t end = b->last_measured_ns > b->measure_to_ns ? b->last_measured_ns : b->measure_to_ns;
  double span = (double)(end - b->measure_from_ns) / 1e9;
  double rate = span > 0 ? (double)b->measured / span : 0;
  uint64_t published = atomic_load(&b->published);
  uint64_t dup = atomic_load(&b->duplicates);
  uint64_t unique = atomic_load(&b->received) - dup;
  uint64_t lost = published > unique ? published - unique : 0;
  double confirm_rate = (double)atomic_load(&b->confirmed_measured) / b->cfg.seconds;
  double p50 = bench_percentile_us(b, 0.50), p99 = bench_percentile_us(b, 0.99);
  printf("{\"system\":\"%s\",\"durability\":\"%s\",\"messages\":%llu,\"seconds\":%.3f,"
         "\"msgs_per_s\":%.1f,\"p50_us\":%.0f,\"p99_us\":%.0f,\"max_us\":%.0f,"
         "\"confirm_per_s\":%.1f,\"published\":%llu,\"duplicates\":%llu,\"lost\":%llu,"
         "\"window\":%u,\"size\":%u}\n",
         system, durability, (unsigned long long)b->measured, span, rate, p50, p99,
         (double)b->max_ns / 1000.0, confirm_rate, (unsigned long long)published,
         (unsigned long long)dup, (unsigned long long)lost, b->cfg.window, b->cfg.size);
  fflush(stdout);
  fprintf(stderr, "%s: %.0f msgs/s, p50 %.0f us, p99 %.0f us (%llu measured, %llu lost, %llu dup)\n",
          system, rate, p50, p99, (unsigned long long)b->measured, (unsigned long long)lost,
          (unsigned long long)dup);
}

static inline void bench_free(bench_t *b) {
  free(b->seen);
  free(b->hist);
}

#endif /* BENCH_BUS_H */
