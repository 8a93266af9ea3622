/*
 * test_metrics.c - the Prometheus text renderer: exact pages, escaping of
 * label values and help texts, numbers, and truncation that keeps whole
 * lines and never writes past the buffer.
 */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "metrics.h"
#include "t.h"

static void test_page(void) {
  char buf[1024];
  wire_metrics_t m;
  wire_metrics_init(&m, buf, sizeof buf);
  wire_metrics_counter(&m, "x_requests_total", "Requests received.", 42);
  wire_metrics_gauge(&m, "x_connections", "Connections open now.", 0);
  wire_metrics_family(&m, "x_responses_total", WIRE_METRICS_COUNTER, "Responses by class.");
  wire_metrics_u64(&m, WIRE_METRICS_LABELS({"code", "2xx"}), 7);
  wire_metrics_u64(&m, WIRE_METRICS_LABELS({"code", "5xx"}), UINT64_MAX);
  wire_metrics_family(&m, "x_lag", WIRE_METRICS_GAUGE, "Lag.");
  wire_metrics_u64(&m, WIRE_METRICS_LABELS({"topic", "a.b"}, {"group", "g-1"}, {"partition", "3"}),
                   5);
  T_CHECK_EQ_INT(wire_metrics_end(&m), 0);
  T_CHECK_STR(buf, "# HELP x_requests_total Requests received.\n"
                   "# TYPE x_requests_total counter\n"
                   "x_requests_total 42\n"
                   "# HELP x_connections Connections open now.\n"
                   "# TYPE x_connections gauge\n"
                   "x_connections 0\n"
                   "# HELP x_responses_total Responses by class.\n"
                   "# TYPE x_responses_total counter\n"
                   "x_responses_total{code=\"2xx\"} 7\n"
                   "x_responses_total{code=\"5xx\"} 18446744073709551615\n"
                   "# HELP x_lag Lag.\n"
                   "# TYPE x_lag gauge\n"
                   "x_lag{topic=\"a.b\",group=\"g-1\",partition=\"3\"} 5\n");
  T_CHECK_EQ_INT(m.len, strlen(buf));
}

static void test_escaping(void) {
  char buf[512];
  wire_metrics_t m;
  wire_metrics_init(&m, buf, sizeof buf);
  /* Help: backslash and newline escaped, quotes kept. */
  wire_metrics_family(&m, "x_up", WIRE_METRICS_GAUGE, "Up \"now\"\\here\nthere.");
  /* Label values: backslash, quote and newline escaped; the rest as is. */
  wire_metrics_u64(&m, WIRE_METRICS_LABELS({"address", "a\"b\\c\nd"}), 1);
  wire_metrics_u64(&m, WIRE_METRICS_LABELS({"address", ""}, {"service", "h:80 {x}"}), 0);
  wire_metrics_u64(&m, WIRE_METRICS_LABELS({"address", "\\\\"}), 2);
  T_CHECK_EQ_INT(wire_metrics_end(&m), 0);
  T_CHECK_STR(buf, "# HELP x_up Up \"now\"\\\\here\\nthere.\n"
                   "# TYPE x_up gauge\n"
                   "x_up{address=\"a\\\"b\\\\c\\nd\"} 1\n"
                   "x_up{address=\"\",service=\"h:80 {x}\"} 0\n"
                   "x_up{address=\"\\\\\\\\\"} 2\n");
}

static void test_doubles(void) {
  char buf[512];
  wire_metrics_t m;
  wire_metrics_init(&m, buf, sizeof buf);
  wire_metrics_family(&m, "x_seconds", WIRE_METRICS_COUNTER, "Seconds.");
  wire_metrics_f64(&m, NULL, 0, 0.1);
  wire_metrics_f64(&m, NULL, 0, 1.5);
  wire_metrics_f64(&m, NULL, 0, 3.0);
  wire_metrics_f64(&m, NULL, 0, 123456 / 1e6);
  wire_metrics_f64(&m, NULL, 0, 0.1 + 0.2); /* needs all 17 digits */
  wire_metrics_f64(&m, NULL, 0, -2.5e-7);
  wire_metrics_f64(&m, NULL, 0, NAN);
  wire_metrics_f64(&m, NULL, 0, INFINITY);
  wire_metrics_f64(&m, WIRE_METRICS_LABELS({"le", "x"}), -INFINITY);
  T_CHECK_EQ_INT(wire_metrics_end(&m), 0);
  T_CHECK_STR(buf, "# HELP x_seconds Seconds.\n"
                   "# TYPE x_seconds counter\n"
                   "x_seconds 0.1\n"
                   "x_seconds 1.5\n"
                   "x_seconds 3\n"
                   "x_seconds 0.123456\n"
                   "x_seconds 0.30000000000000004\n"
                   "x_seconds -2.5e-07\n"
                   "x_seconds NaN\n"
                   "x_seconds +Inf\n"
                   "x_seconds{le=\"x\"} -Inf\n");
}

/* The page that fits exactly, then the same page one byte short. */
static void test_truncation(void) {
  static const char page[] = "# HELP x_a A.\n# TYPE x_a counter\nx_a 1\n"
                             "# HELP x_b B.\n# TYPE x_b gauge\nx_b{k=\"v\"} 2\n";
  static const char last[] = "x_b{k=\"v\"} 2\n";
  char buf[sizeof page + 8];
  for (size_t short_by = 0; short_by < sizeof last; short_by++) {
    size_t bytes = sizeof page - short_by;
    memset(buf, '#', sizeof buf);
    wire_metrics_t m;
    wire_metrics_init(&m, buf, bytes);
    wire_metrics_counter(&m, "x_a", "A.", 1);
    wire_metrics_family(&m, "x_b", WIRE_METRICS_GAUGE, "B.");
    wire_metrics_u64(&m, WIRE_METRICS_LABELS({"k", "v"}), 2);
    if (bytes == sizeof page) {
      T_CHECK_EQ_INT(wire_metrics_end(&m), 0);
      T_CHECK_STR(buf, page);
    } else {
      /* Short: reported, and the last line is left out whole. */
      T_CHECK_EQ_INT(wire_metrics_end(&m), -ENOBUFS);
      T_CHECK_EQ_INT(m.len, sizeof page - sizeof last);
      T_CHECK_EQ_INT(strlen(buf), m.len);
      T_CHECK(strncmp(buf, page, m.len) == 0);
    }
    T_CHECK(buf[bytes] == '#'); /* nothing written past the buffer */
  }
}

/* Once a line did not fit, later ones are not written even if they would:
 * a page with a hole in it would read as a page with fewer metrics. */
static void test_truncation_sticks(void) {
  char buf[48];
  wire_metrics_t m;
  wire_metrics_init(&m, buf, sizeof buf);
  wire_metrics_counter(&m, "x_a", "A.", 1); /* 39 bytes, 9 left */
  size_t len = m.len;
  T_CHECK_EQ_INT(len, 39);
  wire_metrics_family(&m, "x_long_name_that_does_not_fit", WIRE_METRICS_GAUGE, "Long.");
  T_CHECK_EQ_INT(m.len, len);
  wire_metrics_family(&m, "x_b", WIRE_METRICS_GAUGE, ""); /* does not fit */
  wire_metrics_u64(&m, NULL, 0, 1);                      /* 6 bytes would fit */
  T_CHECK_EQ_INT(m.len, len);
  T_CHECK_EQ_INT(wire_metrics_end(&m), -ENOBUFS);
  T_CHECK_STR(buf, "# HELP x_a A.\n# TYPE x_a counter\nx_a 1\n");

  /* A buffer with room for the NUL alone. */
  char one[1] = {'x'};
  wire_metrics_init(&m, one, sizeof one);
  T_CHECK_EQ_INT(one[0], '\0');
  wire_metrics_gauge(&m, "x_c", "C.", 3);
  T_CHECK_EQ_INT(m.len, 0);
  T_CHECK_EQ_INT(wire_metrics_end(&m), -ENOBUFS);
}

/* Two loops, one of which ran out of timers: their tables summed, the
 * refusal on the page. */
static void noop_timer(rt_timer_t *t) {}

static void test_loops(void) {
  rt_loop_config_t c = {.timers_count = 2, .msgs_count = 8, .bufs_count = 16, .sq_entries = 16};
  rt_loop_t *a = NULL, *b = NULL;
  T_REQUIRE(rt_loop_create(&a, &c) == 0);
  T_REQUIRE(rt_loop_create(&b, &c) == 0); /* b is this thread's loop now */
  rt_timer_t ts[3];
  for (int i = 0; i < 3; i++) rt_timer_init(&ts[i], noop_timer, NULL);
  T_CHECK_EQ_INT(rt_timer_start(b, &ts[0], 60000, 0), 0);
  T_CHECK_EQ_INT(rt_timer_start(b, &ts[1], 60000, 0), 0);
  T_CHECK_EQ_INT(rt_timer_start(b, &ts[2], 60000, 0), RT_E_LIMIT);
  rt_loop_t *loops[] = {a, b};
  char buf[2048];
  wire_metrics_t m;
  wire_metrics_init(&m, buf, sizeof buf);
  wire_metrics_loops(&m, loops, 2);
  T_CHECK_EQ_INT(wire_metrics_end(&m), 0);
  T_CHECK(strstr(buf, "# TYPE rt_loop_exhausted_total counter\n") != NULL);
  T_CHECK(strstr(buf, "rt_loop_capacity{resource=\"timers\"} 4\n") != NULL);
  T_CHECK(strstr(buf, "rt_loop_capacity{resource=\"messages\"} 16\n") != NULL);
  T_CHECK(strstr(buf, "rt_loop_capacity{resource=\"recv_buffers\"} 32\n") != NULL);
  T_CHECK(strstr(buf, "rt_loop_in_use{resource=\"timers\"} 2\n") != NULL);
  T_CHECK(strstr(buf, "rt_loop_exhausted_total{resource=\"timers\"} 1\n") != NULL);
  T_CHECK(strstr(buf, "rt_loop_exhausted_total{resource=\"messages\"} 0\n") != NULL);
  rt_timer_stop(b, &ts[0]);
  rt_timer_stop(b, &ts[1]);
  rt_loop_destroy(b);
  rt_loop_destroy(a);
}

int main(void) {
  T_RUN(test_page);
  T_RUN(test_escaping);
  T_RUN(test_doubles);
  T_RUN(test_truncation);
  T_RUN(test_truncation_sticks);
  T_RUN(test_loops);
  return t_done();
}
