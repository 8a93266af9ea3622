/*
 * sched.c - open-loop send times (the life of one is told in bench.h).
 *
 * Each due time is computed from its step's start and its index in the
 * step, never by adding intervals, so no rounding error accumulates over a
 * long run.
 */
#include <assert.h>
#include <errno.h>
#include <math.h>

#include "bench.h"

#define NS_PER_S 1e9

/* The j-th due time of the current step. */
static uint64_t due_in_step(const bench_sched_t *s, uint64_t j) {
  double rate = bench_sched_rate_of(s, s->step);
  return s->step_start_ns + (uint64_t)((double)j * NS_PER_S / rate);
}

/* Moves next_ns to the next due time, crossing into later steps while the
 * current one has no more. */
static void advance(bench_sched_t *s) {
  for (uint32_t guard = 0; guard < UINT32_MAX; guard++) {
    uint64_t t = due_in_step(s, s->in_step);
    uint64_t step_end = s->step_ns == 0 ? s->end_ns : s->step_start_ns + s->step_ns;
    if (step_end > s->end_ns) step_end = s->end_ns;
    if (t < step_end) {
      s->next_ns = t;
      return;
    }
    if (step_end >= s->end_ns) {
      s->next_ns = s->end_ns;
      return;
    }
    s->step++;
    s->step_start_ns = step_end;
    s->in_step = 0;
  }
  s->next_ns = s->end_ns;
}

int bench_sched_init(bench_sched_t *s, uint64_t start_ns, uint64_t duration_ns, double rate,
                     double step_rate, uint64_t step_ns, uint64_t late_ns) {
  if (!(rate > 0.0) || !(step_rate >= 0.0) || duration_ns == 0) return -EINVAL;
  if (step_rate > 0.0 && step_ns == 0) return -EINVAL;
  if (step_rate == 0.0) step_ns = 0; /* a fixed rate is one step, whatever its length */
  *s = (bench_sched_t){.start_ns = start_ns,
                       .end_ns = start_ns + duration_ns,
                       .step_ns = step_ns,
                       .rate = rate,
                       .step_rate = step_rate,
                       .late_ns = late_ns,
                       .step_start_ns = start_ns};
  advance(s);
  return 0;
}

int bench_sched_next(bench_sched_t *s, uint64_t now_ns, uint64_t *intended_ns) {
  if (s->next_ns >= s->end_ns) return -1;
  *intended_ns = s->next_ns;
  if (s->next_ns > now_ns) return 0;
  uint64_t lateness = now_ns - s->next_ns;
  if (lateness > s->late_ns) s->late++;
  if (lateness > s->lateness_max_ns) s->lateness_max_ns = lateness;
  s->issued++;
  s->in_step++;
  advance(s);
  assert(s->next_ns >= *intended_ns);
  return 1;
}

uint64_t bench_sched_abandon(bench_sched_t *s, uint64_t now_ns) {
  uint64_t n = 0;
  while (s->next_ns < s->end_ns && s->next_ns <= now_ns) {
    n++;
    s->in_step++;
    advance(s);
  }
  s->abandoned += n;
  s->next_ns = s->end_ns;
  return n;
}

uint32_t bench_sched_step_of(const bench_sched_t *s, uint64_t t_ns) {
  if (s->step_ns == 0 || t_ns <= s->start_ns) return 0;
  uint64_t k = (t_ns - s->start_ns) / s->step_ns;
  uint32_t last = bench_sched_steps(s) - 1;
  return k > last ? last : (uint32_t)k;
}

double bench_sched_rate_of(const bench_sched_t *s, uint32_t step) {
  return s->rate + s->step_rate * (double)step;
}

uint32_t bench_sched_steps(const bench_sched_t *s) {
  if (s->step_ns == 0) return 1;
  uint64_t d = s->end_ns - s->start_ns;
  return (uint32_t)((d + s->step_ns - 1) / s->step_ns);
}
