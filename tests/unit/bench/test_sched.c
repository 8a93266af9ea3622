/*
 * The open-loop scheduler: send times fixed by the schedule whatever the
 * server does; a slow server (a few slots, long answers) makes sends late,
 * and they are counted, and the latency measured from the intended time
 * shows the backlog (no coordinated omission); stepping rates; the end.
 * Time is simulated: no clock, no sleeping.
 */
#include <errno.h>
#include <math.h>
#include <stdint.h>

#include "bench.h"
#include "t.h"

#define MS 1000000ull
#define S 1000000000ull

static void test_fast_server_on_time(void) {
  bench_sched_t s;
  T_REQUIRE(bench_sched_init(&s, 5 * S, S, 1000.0, 0, 0, 5 * MS) == 0);
  uint64_t due = 0, prev = 0, n = 0;
  /* Ask exactly at each due time: everything goes on time. */
  for (uint64_t now = 5 * S; n < 2000; n++) {
    int rc = bench_sched_next(&s, now, &due);
    if (rc < 0) break;
    if (rc == 0) {
      now = due;
      continue;
    }
    T_CHECK(due == 5 * S + s.issued * MS - MS); /* the i-th at start + i ms */
    if (s.issued > 1) T_CHECK(due - prev == MS);
    prev = due;
  }
  T_CHECK_EQ_INT(s.issued, 1000);
  T_CHECK_EQ_INT(s.late, 0);
  T_CHECK_EQ_INT(bench_sched_next(&s, 7 * S, &due), -1);
}

/* 1000/s for one second against a server with 4 slots that answers in
 * 50 ms: it can do 80/s, so the backlog grows and sends go late. */
static void test_slow_server_counts_late(void) {
  enum { SLOTS = 4 };
  const uint64_t service = 50 * MS;
  bench_sched_t s;
  T_REQUIRE(bench_sched_init(&s, 0, S, 1000.0, 0, 0, 5 * MS) == 0);
  uint64_t busy_until[SLOTS] = {0};
  uint64_t sent = 0, max_from_intended = 0, max_from_send = 0, wrong_time = 0;
  bench_hist_t from_intended;
  T_REQUIRE(bench_hist_init(&from_intended, 7) == 0);
  uint64_t now = 0;
  for (int guard = 0; guard < 100000 && now < S; guard++) {
    /* Every free slot takes the oldest due operation. */
    for (int i = 0; i < SLOTS; i++) {
      if (busy_until[i] > now) continue;
      uint64_t due = 0;
      if (bench_sched_next(&s, now, &due) != 1) break;
      if (due != s.issued * MS - MS) wrong_time++;
      busy_until[i] = now + service;
      uint64_t lat_intended = busy_until[i] - due, lat_send = busy_until[i] - now;
      bench_hist_record(&from_intended, lat_intended);
      if (lat_intended > max_from_intended) max_from_intended = lat_intended;
      if (lat_send > max_from_send) max_from_send = lat_send;
      sent++;
    }
    /* The next event: a slot frees, or (with a slot free) the next
     * operation falls due. */
    uint64_t next = UINT64_MAX;
    bool slot_free = false;
    for (int i = 0; i < SLOTS; i++) {
      if (busy_until[i] <= now) slot_free = true;
      else if (busy_until[i] < next) next = busy_until[i];
    }
    if (slot_free && s.next_ns < s.end_ns && s.next_ns < next) next = s.next_ns;
    now = next == UINT64_MAX ? now + MS : next;
  }
  uint64_t abandoned = bench_sched_abandon(&s, S);
  T_CHECK_EQ_INT(wrong_time, 0);               /* due times never moved */
  T_CHECK_EQ_INT(sent, 4 * (S / service));     /* what 4 slots of 50 ms can do in 1 s */
  T_CHECK_EQ_INT(sent + abandoned, 1000);      /* nothing silently dropped */
  T_CHECK_EQ_INT(s.late, sent - 4);            /* all but the first four went late */
  T_CHECK(s.lateness_max_ns > 800 * MS);        /* the 80th: sent at 950 ms, due at 76 ms */
  T_CHECK_EQ_INT(max_from_send, service);      /* what a closed loop would report */
  T_CHECK(max_from_intended > 900 * MS);       /* what the users waited */
  T_CHECK(bench_hist_percentile(&from_intended, 50) > 400 * MS);
  uint64_t after = 0;
  T_CHECK_EQ_INT(bench_sched_next(&s, 2 * S, &after), -1);
  bench_hist_deinit(&from_intended);
}

static void test_stepping(void) {
  bench_sched_t s;
  /* 100/s, +100/s every second, three seconds: 100 + 200 + 300. */
  T_REQUIRE(bench_sched_init(&s, 0, 3 * S, 100.0, 100.0, S, 5 * MS) == 0);
  T_CHECK_EQ_INT(bench_sched_steps(&s), 3);
  uint64_t per_step[3] = {0}, due = 0;
  for (int guard = 0; guard < 10000; guard++) {
    int rc = bench_sched_next(&s, 3 * S, &due);
    if (rc != 1) break;
    per_step[bench_sched_step_of(&s, due)]++;
  }
  T_CHECK_EQ_INT(per_step[0], 100);
  T_CHECK_EQ_INT(per_step[1], 200);
  T_CHECK_EQ_INT(per_step[2], 300);
  T_CHECK(fabs(bench_sched_rate_of(&s, 2) - 300.0) < 1e-9);
  T_CHECK_EQ_INT(bench_sched_step_of(&s, S + 1), 1);
  T_CHECK_EQ_INT(bench_sched_step_of(&s, 10 * S), 2);
  /* Handed out at once at 3 s: all late but the very last few. */
  T_CHECK(s.late > 590);
}

static void test_not_due_yet_and_bad_input(void) {
  bench_sched_t s;
  uint64_t due = 0;
  T_REQUIRE(bench_sched_init(&s, 100, S, 10.0, 0, 0, 0) == 0);
  T_CHECK_EQ_INT(bench_sched_next(&s, 100, &due), 1);
  T_CHECK_EQ_INT(bench_sched_next(&s, 101, &due), 0);
  T_CHECK_EQ_INT(due, 100 + S / 10); /* when the next will be due */
  /* A fixed rate given a step length is still one step. */
  T_REQUIRE(bench_sched_init(&s, 0, 10 * S, 50.0, 0, 5 * S, 0) == 0);
  T_CHECK_EQ_INT(bench_sched_steps(&s), 1);
  T_CHECK_EQ_INT(bench_sched_step_of(&s, 9 * S), 0);
  T_CHECK_EQ_INT(bench_sched_init(&s, 0, S, 0.0, 0, 0, 0), -EINVAL);
  T_CHECK_EQ_INT(bench_sched_init(&s, 0, S, 10.0, 5.0, 0, 0), -EINVAL);
  T_CHECK_EQ_INT(bench_sched_init(&s, 0, 0, 10.0, 0, 0, 0), -EINVAL);
}

int main(void) {
  T_RUN(test_fast_server_on_time);
  T_RUN(test_slow_server_counts_late);
  T_RUN(test_stepping);
  T_RUN(test_not_due_yet_and_bad_input);
  return t_done();
}
