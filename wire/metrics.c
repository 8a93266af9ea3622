/*
 * metrics.c - the Prometheus text renderer (see metrics.h for the life of
 * a page).
 *
 * Each public call remembers where the page ended, appends its lines piece
 * by piece, and if any piece did not fit puts the end back and marks the
 * page truncated: that is the whole of "whole lines or nothing". The
 * buffer is kept NUL-terminated so that a page can be used as a string.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

/* Longest number written: a u64 is 20 digits, a %.17g double 24 bytes. */
#define NUMBER_BYTES 32

/* Metric names: [a-zA-Z_:][a-zA-Z0-9_:]*; label names: the same without
 * the colon. Ours, so asserted rather than escaped. */
#define NAME_CHARS "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_0123456789"
static bool name_ok(const char *s, bool colon) {
  size_t n = strlen(s);
  if (n == 0 || (s[0] >= '0' && s[0] <= '9')) return false;
  return strspn(s, colon ? NAME_CHARS ":" : NAME_CHARS) == n;
}

static void put(wire_metrics_t *m, const char *s, size_t n) {
  if (m->truncated) return;
  if (n >= m->bytes - m->len) { /* the NUL needs a byte too */
    m->truncated = true;
    return;
  }
  memcpy(m->data + m->len, s, n);
  m->len += n;
}

static void put_str(wire_metrics_t *m, const char *s) { put(m, s, strlen(s)); }

/* Appends s with \ and newline escaped, and " too when `quote` (label
 * values; help texts keep their quotes). */
static void put_escaped(wire_metrics_t *m, const char *s, bool quote) {
  size_t run = 0; /* bytes of s copied as they are, not yet put */
  for (size_t i = 0; s[i] != '\0'; i++) {
    const char *esc = NULL;
    if (s[i] == '\\') esc = "\\\\";
    else if (s[i] == '\n') esc = "\\n";
    else if (s[i] == '"' && quote) esc = "\\\"";
    if (esc == NULL) continue;
    put(m, s + run, i - run);
    put(m, esc, 2);
    run = i + 1;
  }
  put_str(m, s + run);
}

/* Every public call: note where the page ends now... */
static size_t line_begin(const wire_metrics_t *m) {
  assert(m->len < m->bytes);
  return m->len;
}

/* ...and if a piece did not fit, go back there. */
static void line_end(wire_metrics_t *m, size_t start) {
  if (m->truncated) m->len = start;
  m->data[m->len] = '\0';
}

void wire_metrics_init(wire_metrics_t *m, char *buf, size_t bytes) {
  assert(buf != NULL);
  assert(bytes >= 1);
  *m = (wire_metrics_t){.data = buf, .bytes = bytes};
  buf[0] = '\0';
}

void wire_metrics_family(wire_metrics_t *m, const char *name, wire_metrics_type_t type,
                         const char *help) {
  assert(name_ok(name, true));
  assert(type == WIRE_METRICS_COUNTER || type == WIRE_METRICS_GAUGE);
  size_t name_bytes = strlen(name) + 1;
  assert(name_bytes <= sizeof m->family);
  memcpy(m->family, name, name_bytes);
  if (m->truncated) return;
  size_t start = line_begin(m);
  put_str(m, "# HELP ");
  put_str(m, name);
  put_str(m, " ");
  put_escaped(m, help, false);
  put_str(m, "\n# TYPE ");
  put_str(m, name);
  put_str(m, type == WIRE_METRICS_COUNTER ? " counter\n" : " gauge\n");
  line_end(m, start);
}

/* A sample line, its value already written out as text. */
static void sample(wire_metrics_t *m, const wire_metrics_label_t *labels, size_t labels_count,
                   const char *value) {
  assert(m->family[0] != '\0'); /* a family was opened */
  assert(labels_count <= WIRE_METRICS_LABELS_MAX);
  assert(labels != NULL || labels_count == 0);
  if (m->truncated) return;
  size_t start = line_begin(m);
  put_str(m, m->family);
  for (size_t i = 0; i < labels_count; i++) {
    assert(name_ok(labels[i].name, false));
    put_str(m, i == 0 ? "{" : ",");
    put_str(m, labels[i].name);
    put_str(m, "=\"");
    put_escaped(m, labels[i].value, true);
    put_str(m, "\"");
  }
  put_str(m, labels_count > 0 ? "} " : " ");
  put_str(m, value);
  put_str(m, "\n");
  line_end(m, start);
}

void wire_metrics_u64(wire_metrics_t *m, const wire_metrics_label_t *labels,
                      size_t labels_count, uint64_t value) {
  char text[NUMBER_BYTES];
  snprintf(text, sizeof text, "%" PRIu64, value);
  sample(m, labels, labels_count, text);
}

/* The shortest of %.15g, %.16g and %.17g that reads back as v: 0.1 stays
 * 0.1 rather than 0.10000000000000001, and nothing is lost. */
static void format_f64(char *text, size_t bytes, double v) {
  if (isnan(v)) {
    snprintf(text, bytes, "NaN");
    return;
  }
  if (isinf(v)) {
    snprintf(text, bytes, v > 0 ? "+Inf" : "-Inf");
    return;
  }
  for (int digits = 15; digits < 17; digits++) {
    snprintf(text, bytes, "%.*g", digits, v);
    if (strtod(text, NULL) == v) return;
  }
  snprintf(text, bytes, "%.17g", v);
}

void wire_metrics_f64(wire_metrics_t *m, const wire_metrics_label_t *labels,
                      size_t labels_count, double value) {
  char text[NUMBER_BYTES];
  format_f64(text, sizeof text, value);
  sample(m, labels, labels_count, text);
}

void wire_metrics_counter(wire_metrics_t *m, const char *name, const char *help, uint64_t value) {
  wire_metrics_family(m, name, WIRE_METRICS_COUNTER, help);
  wire_metrics_u64(m, NULL, 0, value);
}

void wire_metrics_gauge(wire_metrics_t *m, const char *name, const char *help, uint64_t value) {
  wire_metrics_family(m, name, WIRE_METRICS_GAUGE, help);
  wire_metrics_u64(m, NULL, 0, value);
}

static void loops_sample(wire_metrics_t *m, const char *resource, uint64_t v) {
  wire_metrics_u64(m, WIRE_METRICS_LABELS({"resource", resource}), v);
}

void wire_metrics_loops(wire_metrics_t *m, rt_loop_t *const *loops, uint32_t count) {
  rt_loop_limits_t sum = {0};
  for (uint32_t i = 0; i < count; i++) {
    rt_loop_limits_t l;
    rt_loop_limits(loops[i], &l);
    sum.timers_capacity += l.timers_capacity;
    sum.timers_armed += l.timers_armed;
    sum.timers_armed_max += l.timers_armed_max;
    sum.timers_refused += l.timers_refused;
    sum.msgs_capacity += l.msgs_capacity;
    sum.msgs_in_use += l.msgs_in_use;
    sum.msgs_in_use_max += l.msgs_in_use_max;
    sum.msgs_refused += l.msgs_refused;
    sum.bufs_capacity += l.bufs_capacity;
    sum.bufs_exhausted += l.bufs_exhausted;
  }
  wire_metrics_family(m, "rt_loop_capacity", WIRE_METRICS_GAUGE,
                      "Fixed tables of the event loops, summed over loop threads.");
  loops_sample(m, "timers", sum.timers_capacity);
  loops_sample(m, "messages", sum.msgs_capacity);
  loops_sample(m, "recv_buffers", sum.bufs_capacity);
  wire_metrics_family(m, "rt_loop_in_use", WIRE_METRICS_GAUGE,
                      "Armed timers and pooled messages out, summed over loop threads.");
  loops_sample(m, "timers", sum.timers_armed);
  loops_sample(m, "messages", sum.msgs_in_use);
  wire_metrics_family(m, "rt_loop_in_use_max", WIRE_METRICS_GAUGE,
                      "The most in use at once on each loop thread since start, summed.");
  loops_sample(m, "timers", sum.timers_armed_max);
  loops_sample(m, "messages", sum.msgs_in_use_max);
  wire_metrics_family(m, "rt_loop_exhausted_total", WIRE_METRICS_COUNTER,
                      "Timers and messages refused, and receives that found no buffer,"
                      " for lack of room.");
  loops_sample(m, "timers", sum.timers_refused);
  loops_sample(m, "messages", sum.msgs_refused);
  loops_sample(m, "recv_buffers", sum.bufs_exhausted);
}

int wire_metrics_end(const wire_metrics_t *m) { return m->truncated ? -ENOBUFS : 0; }
