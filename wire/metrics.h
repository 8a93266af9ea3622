/*
 * metrics.h - Prometheus text exposition (format 0.0.4), written into a
 * buffer the caller owns.
 *
 * Life of a /metrics page:
 *   1. The handler has a buffer of some size and calls wire_metrics_init()
 *      over it. Nothing here allocates: the page can be rendered on any
 *      loop thread, at any time, with a budget the caller chose.
 *   2. For each metric it calls wire_metrics_family() (the # HELP and
 *      # TYPE lines, and the family that the following samples belong to),
 *      then one wire_metrics_u64() or wire_metrics_f64() per sample, with
 *      the sample's labels. wire_metrics_counter() and wire_metrics_gauge()
 *      do both for the common metric with a single unlabelled sample.
 *   3. Every call writes whole lines or nothing. A call whose lines do not
 *      fit leaves the buffer as it was and marks the page truncated, and
 *      every later call does nothing, so a renderer writes its list without
 *      checking each line and asks once, at the end, with wire_metrics_end().
 *      The page is never cut in the middle of a line, and never overflows.
 *   4. A truncated page is not served: http_respond_metrics() answers 500
 *      rather than a page that silently lacks metrics.
 *
 * Samples follow their family's header, as the format requires, because a
 * sample can only be written for the family opened last. Metric and label
 * names are ours (string constants) and are asserted to be valid; label
 * values and help texts may come from data (topic names, host names) and
 * are escaped as the format says: backslash, double quote (label values
 * only) and newline.
 *
 * A wire_metrics_t belongs to one thread; the values it is given are read
 * by the caller, which decides how (relaxed atomic loads, as a rule).
 */
#ifndef WIRE_METRICS_H
#define WIRE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rt.h"

/* Longest metric name, prefix included (a bound, not a format limit). */
#define WIRE_METRICS_NAME_BYTES_MAX 128
/* Most labels on one sample. */
#define WIRE_METRICS_LABELS_MAX 8

typedef enum wire_metrics_type {
  WIRE_METRICS_COUNTER,
  WIRE_METRICS_GAUGE,
} wire_metrics_type_t;

/* One label of a sample: a name of ours, a value from anywhere. */
typedef struct wire_metrics_label {
  const char *name;
  const char *value;
} wire_metrics_label_t;

/* A page being written. Read data and len once wire_metrics_end() said 0. */
typedef struct wire_metrics {
  char *data;   /* the caller's buffer, kept NUL-terminated */
  size_t len;   /* bytes written, without the NUL */
  size_t bytes; /* size of data, the NUL included */
  bool truncated;
  char family[WIRE_METRICS_NAME_BYTES_MAX]; /* the family opened last */
} wire_metrics_t;

/* The labels of a sample as the two arguments a sample call takes:
 * WIRE_METRICS_LABELS({"topic", name}, {"partition", "0"}). */
#define WIRE_METRICS_LABELS(...)                     \
  (const wire_metrics_label_t[]){__VA_ARGS__},       \
      sizeof((const wire_metrics_label_t[]){__VA_ARGS__}) / sizeof(wire_metrics_label_t)

/* Starts an empty page over buf, which holds `bytes` bytes (NUL included;
 * at least 1). */
void wire_metrics_init(wire_metrics_t *m, char *buf, size_t bytes);

/* Writes the # HELP and # TYPE lines of the metric `name` and opens it for
 * the samples that follow. */
void wire_metrics_family(wire_metrics_t *m, const char *name, wire_metrics_type_t type,
                         const char *help);

/* Writes one sample of the family opened last: its name, the labels (NULL
 * and 0 for none) and the value. */
void wire_metrics_u64(wire_metrics_t *m, const wire_metrics_label_t *labels,
                      size_t labels_count, uint64_t value);

/* As wire_metrics_u64(), for a value that is not a whole number (seconds,
 * say). Written in the fewest digits that read back as the same double;
 * NaN and infinities as NaN, +Inf and -Inf. */
void wire_metrics_f64(wire_metrics_t *m, const wire_metrics_label_t *labels,
                      size_t labels_count, double value);

/* A counter with one unlabelled sample: family and sample in one call. */
void wire_metrics_counter(wire_metrics_t *m, const char *name, const char *help, uint64_t value);

/* A gauge with one unlabelled sample: family and sample in one call. */
void wire_metrics_gauge(wire_metrics_t *m, const char *name, const char *help, uint64_t value);

/* The fixed tables of `count` loops (rt_loop_limits(), any thread),
 * summed over them: for timers, messages and provided recv buffers, the
 * capacity, what is in use and the most that was (timers and messages),
 * and how often one was wanted when none was left. A program writes its
 * loops' on its page, so that a limit that is hit shows. */
void wire_metrics_loops(wire_metrics_t *m, rt_loop_t *const *loops, uint32_t count);

/* Returns 0 when every line was written, -ENOBUFS when the page was
 * truncated (it then holds the whole lines written before the first that
 * did not fit). */
int wire_metrics_end(const wire_metrics_t *m);

#endif /* WIRE_METRICS_H */
