/*
 * fuzz_bus_frame.c - the bus frame decoder and reader on arbitrary bytes.
 *
 * Properties beyond "no crash, no sanitizer report":
 *  - split independence: the same bytes fed to the streaming decoder whole
 *    and in pieces give the same frames and the same final error;
 *  - round trip: a frame the strict reader accepts, encoded again and read
 *    again, gives the same fields.
 * Limits are small so that the frame and depth limits are reachable.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FRAMES_MAX 32

typedef struct trace {
  int err[FRAMES_MAX];     /* decoder error, then reader result per frame */
  uint64_t digest[FRAMES_MAX];
  size_t n;
  int final_err;
} trace_t;

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
  const uint8_t *b = p;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3u;
  return h;
}

static uint64_t frame_digest(const bus_frame_t *f) {
  uint64_t h = 0xcbf29ce484222325u;
  uint64_t nums[] = {f->type,  f->version,   f->has_id,        f->partition,
                     f->offset, f->attempt, f->stored_ms, f->max_in_flight,
                     f->seq,   (uint64_t)(int64_t)f->code};
  h = fnv(h, nums, sizeof nums);
  const bus_bytes_t *slices[] = {&f->name, &f->topic,   &f->group,
                                 &f->key,  &f->headers, &f->payload, &f->message};
  for (size_t i = 0; i < sizeof slices / sizeof slices[0]; i++) {
    h = fnv(h, &slices[i]->len, sizeof slices[i]->len);
    if (slices[i]->len) h = fnv(h, slices[i]->ptr, slices[i]->len);
  }
  if (f->has_id) h = fnv(h, f->id, sizeof f->id);
  return h;
}

static bool same_bytes(const bus_bytes_t *a, const bus_bytes_t *b) {
  return a->len == b->len && (a->len == 0 || memcmp(a->ptr, b->ptr, a->len) == 0);
}

/* Encodes f and reads it back into *out (whose slices point into buf).
 * Returns the reader's result, or 1 when the encoder refused the frame. */
static int reencode(const bus_frame_t *f, const bus_limits_t *lim, bus_buf_t *buf,
                    bus_frame_t *out) {
  buf->len = 0;
  if (bus_frame_encode(buf, f, lim->frame_bytes_max) != 0) return 1;
  if (buf->len < 4) return -1;
  return bus_frame_decode(buf->data + 4, buf->len - 4, lim, out);
}

/* Encode what was read and read it again. The encoder writes only the
 * fields the frame type uses, so the first round trip may drop fields the
 * reader tolerated; what it keeps must be unchanged (type, topic, key, id,
 * payload), and a second round trip must change nothing at all. */
static void check_round_trip(const bus_frame_t *f, const bus_limits_t *lim) {
  bus_buf_t b1, b2;
  bus_buf_init(&b1, 1u << 20);
  bus_buf_init(&b2, 1u << 20);
  bus_frame_t g, h;
  int rc = reencode(f, lim, &b1, &g);
  if (rc < 0) {
    fprintf(stderr, "an accepted frame, encoded again, is refused (type %d)\n", f->type);
    abort();
  }
  if (rc == 0) {
    bool kept = g.type == f->type && (g.topic.len == 0 || same_bytes(&g.topic, &f->topic)) &&
                (g.key.len == 0 || same_bytes(&g.key, &f->key)) &&
                (g.payload.len == 0 || same_bytes(&g.payload, &f->payload)) &&
                (!g.has_id || memcmp(g.id, f->id, sizeof g.id) == 0);
    if (!kept || reencode(&g, lim, &b2, &h) != 0 || frame_digest(&h) != frame_digest(&g)) {
      fprintf(stderr, "frame read, encoded and read again differs (type %d)\n", f->type);
      abort();
    }
  }
  bus_buf_deinit(&b1);
  bus_buf_deinit(&b2);
}

static void run(const uint8_t *data, size_t size, const uint8_t *cuts, size_t cuts_n,
                trace_t *t) {
  bus_limits_t lim = {.frame_bytes_max = 4096, .depth_max = 4};
  bus_decoder_t d;
  memset(t, 0, sizeof *t);
  bus_decoder_init(&d, &lim);
  size_t off = 0, cut_i = 0;
  for (size_t turns = 0; turns < 4 * size + FRAMES_MAX + 4 && off < size; turns++) {
    size_t piece = size - off;
    if (cuts_n > 0) {
      size_t c = (size_t)cuts[cut_i++ % cuts_n] % 7 + 1;
      if (c < piece) piece = c;
    }
    size_t used = 0;
    bus_bytes_t body = {0};
    int rc = bus_decoder_feed(&d, data + off, piece, &used, &body);
    off += used;
    if (rc < 0) {
      t->final_err = rc;
      break;
    }
    if (body.ptr != NULL && t->n < FRAMES_MAX) {
      bus_frame_t f;
      int frc = bus_frame_decode(body.ptr, body.len, &lim, &f);
      t->err[t->n] = frc;
      t->digest[t->n] = frc == 0 ? frame_digest(&f) : fnv(0, body.ptr, body.len);
      t->n++;
      if (frc == 0) check_round_trip(&f, &lim);
    }
  }
  bus_decoder_deinit(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  trace_t whole, split;
  run(data, size, NULL, 0, &whole);
  run(data, size, data, size < 16 ? size : 16, &split);
  if (whole.n != split.n || whole.final_err != split.final_err ||
      memcmp(whole.err, split.err, sizeof whole.err) != 0 ||
      memcmp(whole.digest, split.digest, sizeof whole.digest) != 0) {
    fprintf(stderr, "bus decoder result depends on how the input is split\n");
    abort();
  }
  return 0;
}
