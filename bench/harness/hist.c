/*
 * hist.c - log-linear latency histogram (see bench.h for the error bound).
 *
 * Bucket index of a value v, with S = 2^sub_bits:
 *   v < S:   v itself (exact)
 *   v >= S:  e = floor(log2 v) >= sub_bits, shift = e - sub_bits,
 *            index = S + shift * S + ((v >> shift) - S)
 * so bucket `index` covers [(S + sub) << shift, (S + sub + 1) << shift),
 * a width of 2^shift over a lower bound of at least S * 2^shift.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"

static uint32_t sub_count(const bench_hist_t *h) { return UINT32_C(1) << h->sub_bits; }

static uint32_t bucket_of(const bench_hist_t *h, uint64_t v) {
  uint32_t s = sub_count(h);
  if (v < s) return (uint32_t)v;
  uint32_t e = 63u - (uint32_t)__builtin_clzll(v);
  uint32_t shift = e - h->sub_bits;
  uint32_t index = s + shift * s + (uint32_t)((v >> shift) - s);
  assert(index < h->buckets_count);
  return index;
}

/* The midpoint of a bucket: within half a width of any value in it. */
static uint64_t bucket_value(const bench_hist_t *h, uint32_t index) {
  uint32_t s = sub_count(h);
  if (index < s) return index;
  uint32_t k = index - s;
  uint32_t shift = k / s;
  uint64_t low = (uint64_t)(s + k % s) << shift;
  return low + ((UINT64_C(1) << shift) - 1) / 2;
}

int bench_hist_init(bench_hist_t *h, uint32_t sub_bits) {
  memset(h, 0, sizeof *h);
  if (sub_bits < 1 || sub_bits > BENCH_HIST_SUB_BITS_MAX) return -EINVAL;
  _Static_assert(BENCH_HIST_SUB_BITS_MAX < BENCH_HIST_EXP_MAX, "octaves above the linear part");
  uint32_t s = UINT32_C(1) << sub_bits;
  h->sub_bits = sub_bits;
  /* The linear part, then one row of S buckets per power of two from
   * 2^sub_bits up to 2^BENCH_HIST_EXP_MAX. */
  h->buckets_count = s + (BENCH_HIST_EXP_MAX - sub_bits + 1) * s;
  h->counts = calloc(h->buckets_count, sizeof *h->counts);
  if (h->counts == NULL) return -ENOMEM;
  h->min = UINT64_MAX;
  return 0;
}

void bench_hist_deinit(bench_hist_t *h) {
  free(h->counts);
  h->counts = NULL;
}

void bench_hist_reset(bench_hist_t *h) {
  assert(h->counts != NULL);
  memset(h->counts, 0, h->buckets_count * sizeof *h->counts);
  h->count = 0;
  h->min = UINT64_MAX;
  h->max = 0;
  h->sum = 0;
}

void bench_hist_record(bench_hist_t *h, uint64_t value) {
  assert(h->counts != NULL);
  if (value > BENCH_HIST_VALUE_MAX) value = BENCH_HIST_VALUE_MAX;
  h->counts[bucket_of(h, value)]++;
  h->count++;
  h->sum += value;
  if (value < h->min) h->min = value;
  if (value > h->max) h->max = value;
}

int bench_hist_merge(bench_hist_t *dst, const bench_hist_t *src) {
  if (dst->sub_bits != src->sub_bits) return -EINVAL;
  assert(dst->buckets_count == src->buckets_count);
  for (uint32_t i = 0; i < src->buckets_count; i++) dst->counts[i] += src->counts[i];
  dst->count += src->count;
  dst->sum += src->sum;
  if (src->min < dst->min) dst->min = src->min;
  if (src->max > dst->max) dst->max = src->max;
  return 0;
}

uint64_t bench_hist_percentile(const bench_hist_t *h, double q) {
  if (h->count == 0) return 0;
  if (q >= 100.0) return h->max;
  if (q < 0.0) q = 0.0;
  uint64_t rank = (uint64_t)ceil(q / 100.0 * (double)h->count);
  if (rank == 0) rank = 1;
  uint64_t seen = 0;
  for (uint32_t i = 0; i < h->buckets_count; i++) {
    seen += h->counts[i];
    if (seen < rank) continue;
    uint64_t v = bucket_value(h, i);
    if (v < h->min) v = h->min;
    if (v > h->max) v = h->max;
    return v;
  }
  return h->max; /* cannot happen: the counts add up to count */
}

double bench_hist_mean(const bench_hist_t *h) {
  return h->count == 0 ? 0.0 : (double)h->sum / (double)h->count;
}

double bench_hist_error_bound(uint32_t sub_bits) {
  return 1.0 / (double)(UINT64_C(1) << (sub_bits + 1));
}
