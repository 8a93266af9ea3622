/*
 * The latency histogram against exact percentiles of known distributions
 * (uniform, exponential, log-normal, two modes): every percentile within
 * the stated relative error; exact min and max; merging; small values.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "bench.h"
#include "t.h"

enum { N = 200000 };
static uint64_t values[N];
static uint64_t rng_state = 88172645463325252u;

static double uniform01(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return ((double)(rng_state >> 11) + 0.5) / 9007199254740992.0;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The exact q-th percentile: the smallest value with at least q% at or
 * below it, the definition the histogram follows. */
static uint64_t exact(const uint64_t *sorted, size_t n, double q) {
  size_t rank = (size_t)ceil(q / 100.0 * (double)n);
  if (rank == 0) rank = 1;
  return sorted[rank - 1];
}

static void check_distribution(const char *name, double (*draw)(void)) {
  bench_hist_t h;
  T_REQUIRE(bench_hist_init(&h, 7) == 0);
  for (size_t i = 0; i < N; i++) {
    values[i] = (uint64_t)draw();
    bench_hist_record(&h, values[i]);
  }
  qsort(values, N, sizeof values[0], cmp_u64);
  const double qs[] = {1, 10, 25, 50, 75, 90, 99, 99.9, 99.99};
  double bound = bench_hist_error_bound(7);
  T_CHECK(bound <= 0.01); /* what the report promises */
  for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
    double want = (double)exact(values, N, qs[i]);
    double got = (double)bench_hist_percentile(&h, qs[i]);
    double err = fabs(got - want) / want;
    if (err > bound) fprintf(stderr, "%s p%g: %.0f vs exact %.0f (%.4f%%)\n", name, qs[i], got, want, err * 100);
    T_CHECK(err <= bound);
  }
  T_CHECK_EQ_INT(bench_hist_percentile(&h, 100), values[N - 1]);
  T_CHECK_EQ_INT(h.min, values[0]);
  T_CHECK_EQ_INT(h.max, values[N - 1]);
  T_CHECK_EQ_INT(h.count, N);
  bench_hist_deinit(&h);
}

static double d_uniform(void) { return 1000.0 + uniform01() * 100e6; }         /* 1 us .. 100 ms */
static double d_exponential(void) { return 50000.0 - 2e6 * log(uniform01()); } /* mean ~2 ms */
static double d_lognormal(void) {
  double z = sqrt(-2 * log(uniform01())) * cos(2 * M_PI * uniform01());
  return exp(log(1.5e6) + 0.8 * z); /* median 1.5 ms, a long tail */
}
static double d_bimodal(void) {
  return uniform01() < 0.97 ? 800e3 + uniform01() * 400e3 : 40e6 + uniform01() * 20e6;
}

static void test_distributions(void) {
  check_distribution("uniform", d_uniform);
  check_distribution("exponential", d_exponential);
  check_distribution("lognormal", d_lognormal);
  check_distribution("bimodal", d_bimodal);
}

static void test_small_values_exact(void) {
  bench_hist_t h;
  T_REQUIRE(bench_hist_init(&h, 7) == 0);
  for (uint64_t v = 1; v <= 100; v++) bench_hist_record(&h, v);
  T_CHECK_EQ_INT(bench_hist_percentile(&h, 50), 50);
  T_CHECK_EQ_INT(bench_hist_percentile(&h, 99), 99);
  T_CHECK_EQ_INT(bench_hist_percentile(&h, 1), 1);
  T_CHECK(fabs(bench_hist_mean(&h) - 50.5) < 1e-9);
  bench_hist_reset(&h);
  T_CHECK_EQ_INT(h.count, 0);
  T_CHECK_EQ_INT(bench_hist_percentile(&h, 99), 0);
  bench_hist_deinit(&h);
}

static void test_huge_values_clamped(void) {
  bench_hist_t h;
  T_REQUIRE(bench_hist_init(&h, 7) == 0);
  bench_hist_record(&h, UINT64_MAX);
  T_CHECK_EQ_INT(h.max, BENCH_HIST_VALUE_MAX);
  T_CHECK_EQ_INT(bench_hist_percentile(&h, 50), BENCH_HIST_VALUE_MAX);
  bench_hist_deinit(&h);
}

static void test_merge(void) {
  bench_hist_t a, b, all;
  T_REQUIRE(bench_hist_init(&a, 7) == 0);
  T_REQUIRE(bench_hist_init(&b, 7) == 0);
  T_REQUIRE(bench_hist_init(&all, 7) == 0);
  for (int i = 0; i < 10000; i++) {
    uint64_t v = (uint64_t)d_exponential();
    bench_hist_record(i % 3 ? &a : &b, v);
    bench_hist_record(&all, v);
  }
  T_CHECK_EQ_INT(bench_hist_merge(&a, &b), 0);
  T_CHECK_EQ_INT(a.count, all.count);
  T_CHECK_EQ_INT(a.sum, all.sum);
  T_CHECK_EQ_INT(bench_hist_percentile(&a, 99), bench_hist_percentile(&all, 99));
  T_CHECK_EQ_INT(bench_hist_percentile(&a, 50), bench_hist_percentile(&all, 50));
  bench_hist_t coarse;
  T_REQUIRE(bench_hist_init(&coarse, 5) == 0);
  T_CHECK_EQ_INT(bench_hist_merge(&a, &coarse), -EINVAL); /* other precision */
  bench_hist_t bad;
  T_CHECK_EQ_INT(bench_hist_init(&bad, 0), -EINVAL);
  bench_hist_deinit(&a);
  bench_hist_deinit(&b);
  bench_hist_deinit(&all);
  bench_hist_deinit(&coarse);
}

int main(void) {
  T_RUN(test_distributions);
  T_RUN(test_small_values_exact);
  T_RUN(test_huge_values_clamped);
  T_RUN(test_merge);
  return t_done();
}
