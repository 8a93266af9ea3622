/*
 * fuzz_http_parser.c - the HTTP parser on arbitrary bytes.
 *
 * Beyond "no crash, no sanitizer report", a differential property: the
 * same bytes fed whole and fed in pieces (split points derived from the
 * input) must give the same messages, and end in an error in both cases or
 * in neither. A parser whose verdict depends on how TCP cut the stream is
 * a smuggling bug. Which status a refusal gets may differ (a bad request
 * line can be caught as 400 by the framing scan or as 505 by the version
 * check, whichever sees its bytes first); that is not a framing ambiguity.
 * Both request and response parsing are exercised, with small limits so
 * that every limit is reachable.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUTCOMES_MAX 64

typedef struct outcome {
  int err;         /* 0 for a message */
  int method;
  int status;
  size_t body_len;
  uint64_t digest; /* of path, query, headers and body */
  bool keep_alive;
} outcome_t;

typedef struct trace {
  outcome_t o[OUTCOMES_MAX];
  size_t n;
} trace_t;

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3u;
  return h;
}

static uint64_t digest(const http_msg_t *m) {
  uint64_t h = 0xcbf29ce484222325u;
  if (m->path) h = fnv(h, m->path, strlen(m->path));
  if (m->query) h = fnv(h, m->query, strlen(m->query));
  for (uint32_t i = 0; i < m->headers_count; i++) {
    h = fnv(h, m->headers[i].name, m->headers[i].name_len);
    h = fnv(h, m->headers[i].value, m->headers[i].value_len);
  }
  return fnv(h, m->body, m->body_len);
}

static void record(trace_t *t, int err, const http_msg_t *m) {
  if (t->n == OUTCOMES_MAX) return;
  outcome_t *o = &t->o[t->n++];
  memset(o, 0, sizeof *o);
  o->err = err < 0 ? -1 : err; /* refused, whatever the status */
  if (m != NULL) {
    o->method = m->method;
    o->status = m->status;
    o->body_len = m->body_len;
    o->digest = digest(m);
    o->keep_alive = m->keep_alive;
  }
}

/* Feeds data in pieces of the given sizes (cycled); 0 means whole. */
static void run(http_kind_t kind, const uint8_t *data, size_t size, const uint8_t *cuts,
                size_t cuts_n, trace_t *t) {
  http_limits_t lim = {.header_bytes_max = 512, .headers_count_max = 8,
                       .url_bytes_max = 128, .body_bytes_max = 1024};
  http_parser_t p;
  memset(t, 0, sizeof *t);
  if (http_parser_init(&p, kind, &lim) != 0) abort();
  size_t off = 0, cut_i = 0;
  /* Bound: every turn consumes a byte, yields a message or stops. */
  for (size_t turns = 0; turns < 4 * size + OUTCOMES_MAX + 4 && off < size; turns++) {
    size_t piece = size - off;
    if (cuts_n > 0) {
      size_t c = (size_t)cuts[cut_i++ % cuts_n] % 7 + 1;
      if (c < piece) piece = c;
    }
    size_t used = 0;
    http_msg_t *msg = NULL;
    int rc = http_parser_feed(&p, (const char *)data + off, piece, &used, &msg);
    if (rc < 0) {
      record(t, rc, NULL);
      break;
    }
    off += used;
    if (msg != NULL) {
      record(t, 0, msg);
      http_parser_next(&p);
    }
  }
  if (t->n == 0 || t->o[t->n - 1].err == 0) {
    http_msg_t *msg = NULL;
    int rc = http_parser_finish(&p, &msg);
    record(t, rc, msg);
  }
  http_parser_deinit(&p);
}

static void check(http_kind_t kind, const uint8_t *data, size_t size) {
  trace_t whole, split;
  run(kind, data, size, NULL, 0, &whole);
  size_t cuts_n = size < 16 ? size : 16;
  run(kind, data, size, data, cuts_n, &split);
  if (whole.n != split.n || memcmp(whole.o, split.o, whole.n * sizeof whole.o[0]) != 0) {
    fprintf(stderr, "parser verdict depends on how the input is split (kind %d)\n", kind);
    for (size_t i = 0; i < whole.n || i < split.n; i++) {
      const outcome_t *a = i < whole.n ? &whole.o[i] : NULL;
      const outcome_t *b = i < split.n ? &split.o[i] : NULL;
      fprintf(stderr, "  %zu: whole err=%d len=%zu st=%d | split err=%d len=%zu st=%d\n", i,
              a ? a->err : 1, a ? a->body_len : 0, a ? a->status : 0, b ? b->err : 1,
              b ? b->body_len : 0, b ? b->status : 0);
    }
    fprintf(stderr, "  input (%zu bytes): ", size);
    for (size_t i = 0; i < size && i < 400; i++) {
      unsigned char c = data[i];
      if (c >= 32 && c < 127 && c != '\\') fputc(c, stderr);
      else fprintf(stderr, "\\x%02x", c);
    }
    fputc('\n', stderr);
    abort();
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  check(HTTP_KIND_REQUEST, data, size);
  check(HTTP_KIND_RESPONSE, data, size);
  return 0;
}
