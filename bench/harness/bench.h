/*
 * bench.h - the load harness (bench/run): the pieces with a contract of
 * their own, each unit-tested on its own.
 *
 *   errors      BENCH_E_* in the bench range, bench_strerror()
 *   histogram   log-linear latency buckets with a bounded relative error
 *   scheduler   open-loop send times at a fixed or stepping rate, late
 *               sends counted (no coordinated omission)
 *   json scan   one top-level field of a JSON object, without allocating
 *
 * The harness itself (harness.h) drives the platform with these.
 */
#ifndef BENCH_H
#define BENCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* The bench range, -6000..-6099, disjoint from -errno and the other
 * modules' ranges (rt.h). */
enum {
  BENCH_E_CA = -6000,      /* the CA file cannot be read or holds no certificate */
  BENCH_E_TLS = -6001,     /* the TLS engine failed or the server was not trusted */
  BENCH_E_USAGE = -6002,   /* a flag or its value is wrong */
  BENCH_E_SETUP = -6003,   /* the platform refused to set up customers or accounts */
  BENCH_E_RESPONSE = -6004, /* a response lacks a field the harness needs */
};
#define BENCH_E_RANGE_LO (-6099)
#define BENCH_E_RANGE_HI (-6000)

/* A message for a BENCH_E_* code; registered with rt_strerror_register()
 * by bench_errors_register(). */
const char *bench_strerror(int err);

/* Makes rt_strerror() know the bench range. Idempotent. */
void bench_errors_register(void);

/* ------------------------------------------------------------------------ */
/* Histogram                                                                */
/* ------------------------------------------------------------------------ */

/*
 * Log-linear buckets (as HdrHistogram): values below 2^sub_bits have a
 * bucket each; above, every power of two is cut into 2^sub_bits buckets of
 * equal width. A bucket is at most 1/2^sub_bits of its lower bound wide,
 * and a percentile is reported as its bucket's midpoint, so the relative
 * error is at most 1/2^(sub_bits+1): 0.39% with 7 bits. Values are in ns
 * up to BENCH_HIST_VALUE_MAX (larger ones are recorded as that).
 * Allocated once at init; recording never allocates.
 */
#define BENCH_HIST_SUB_BITS_MAX 10
#define BENCH_HIST_EXP_MAX 40 /* 2^41 - 1 ns, about 36 minutes */
#define BENCH_HIST_VALUE_MAX ((UINT64_C(1) << (BENCH_HIST_EXP_MAX + 1)) - 1)

typedef struct bench_hist {
  uint64_t *counts;
  uint32_t sub_bits;
  uint32_t buckets_count;
  uint64_t count;
  uint64_t min; /* exact; UINT64_MAX when empty */
  uint64_t max; /* exact */
  uint64_t sum; /* exact, for the mean */
} bench_hist_t;

/* Allocates the buckets (sub_bits 1..BENCH_HIST_SUB_BITS_MAX). Returns 0,
 * -EINVAL or -ENOMEM. */
int bench_hist_init(bench_hist_t *h, uint32_t sub_bits);

/* Frees the buckets. Safe on a zeroed histogram. */
void bench_hist_deinit(bench_hist_t *h);

/* Forgets every value, keeps the memory. */
void bench_hist_reset(bench_hist_t *h);

/* Counts one value (ns). */
void bench_hist_record(bench_hist_t *h, uint64_t value);

/* Adds every value of src to dst; both must have the same sub_bits.
 * Returns 0 or -EINVAL. */
int bench_hist_merge(bench_hist_t *dst, const bench_hist_t *src);

/* The value at percentile q (0 < q <= 100): the smallest recorded value
 * such that at least q% of the values are at or below it, within the
 * stated error; clamped to the exact min and max. 0 when empty. */
uint64_t bench_hist_percentile(const bench_hist_t *h, double q);

/* The mean, exact; 0 when empty. */
double bench_hist_mean(const bench_hist_t *h);

/* The worst relative error of a percentile with these sub_bits. */
double bench_hist_error_bound(uint32_t sub_bits);

/* ------------------------------------------------------------------------ */
/* Open-loop scheduler                                                      */
/* ------------------------------------------------------------------------ */

/*
 * The life of an intended send time:
 *   1. The schedule fixes it in advance: in step k (0, 1, ...), which
 *      starts at start + k * step_ns, the j-th operation is due at
 *      step start + j / rate_k, with rate_k = rate + k * step_rate. It
 *      never depends on how fast the server answers.
 *   2. The driver asks bench_sched_next() whenever it could send (it has
 *      a free slot): every due time is handed out in order, one per call.
 *      A time handed out more than late_ns after it was due is counted
 *      late: the driver could not keep up (all slots busy).
 *   3. The driver measures latency from the intended time, not from when
 *      it sent, so a slow server's backlog shows in the latency instead of
 *      silently lowering the load (no coordinated omission).
 *   4. At the end, due times never handed out are counted by
 *      bench_sched_abandon() as not sent.
 * Pure arithmetic on the times given: no clock, no allocation.
 */
typedef struct bench_sched {
  uint64_t start_ns;
  uint64_t end_ns;      /* no operation is due at or after this */
  uint64_t step_ns;     /* 0: one step, the whole run */
  double rate;          /* operations per second in step 0 */
  double step_rate;     /* added at every step */
  uint64_t late_ns;
  uint32_t step;        /* the step of the next due time */
  uint64_t step_start_ns;
  uint64_t in_step;     /* due times of this step handed out */
  uint64_t next_ns;     /* the next due time; end_ns when done */
  uint64_t issued;      /* due times handed out */
  uint64_t late;        /* of those, handed out late */
  uint64_t abandoned;   /* due but never handed out */
  uint64_t lateness_max_ns;
} bench_sched_t;

/* Sets up a schedule from start_ns for duration_ns. rate > 0; step_rate
 * >= 0 (0 with step_ns 0 for a fixed rate). Returns 0 or -EINVAL. */
int bench_sched_init(bench_sched_t *s, uint64_t start_ns, uint64_t duration_ns,
                     double rate, double step_rate, uint64_t step_ns, uint64_t late_ns);

/* At now_ns: returns 1 and sets *intended_ns to the oldest due time not
 * handed out yet (counting it late when due more than late_ns ago); 0
 * when the next is not due yet (*intended_ns is when it will be); -1 when
 * the schedule has no more. */
int bench_sched_next(bench_sched_t *s, uint64_t now_ns, uint64_t *intended_ns);

/* Counts every due time at or before now_ns not handed out as abandoned
 * (the run ended first) and ends the schedule. Returns how many. */
uint64_t bench_sched_abandon(bench_sched_t *s, uint64_t now_ns);

/* The step a time falls in (0 for a fixed rate). */
uint32_t bench_sched_step_of(const bench_sched_t *s, uint64_t t_ns);

/* The rate of step k. */
double bench_sched_rate_of(const bench_sched_t *s, uint32_t step);

/* How many steps the schedule has (1 for a fixed rate). */
uint32_t bench_sched_steps(const bench_sched_t *s);

/* ------------------------------------------------------------------------ */
/* JSON scan                                                                */
/* ------------------------------------------------------------------------ */

/* Finds the top-level member `key` of the JSON object in text[0..len)
 * (nested objects and arrays are skipped whole) and copies its string
 * value, unescaped only for \" \\ \/, into out (NUL-terminated). Returns
 * the length, -ENOENT when absent or not a string, -EINVAL when the text
 * is not an object, -ENOSPC when out is too small. Never allocates. */
int bench_json_str(const char *text, size_t len, const char *key, char *out,
                   size_t out_bytes);

/* As bench_json_str for an integer member. Returns 0, -ENOENT, -EINVAL or
 * -ERANGE. */
int bench_json_i64(const char *text, size_t len, const char *key, int64_t *out);

/* As bench_json_str for true/false. Returns 0, -ENOENT or -EINVAL. */
int bench_json_bool(const char *text, size_t len, const char *key, bool *out);

#endif /* BENCH_H */
