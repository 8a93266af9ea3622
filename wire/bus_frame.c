/*
 * bus_frame.c - the bus's byte level: errors, capped buffers, the streaming
 * frame decoder, names and event ids.
 *
 * The decoder's one job is framing: read the 4-byte big-endian length, check
 * it against frame_bytes_max before anything is allocated, then collect
 * exactly that many body bytes. A body that arrives whole in one feed is
 * handed back in place (no copy, no allocation): with multishot recv and
 * small frames that is nearly every frame. A body split across feeds is
 * gathered in a buffer that grows with the bytes actually received (at most
 * doubling, never past the declared length), so a peer that announces a
 * large frame and then trickles costs memory only for what it has sent, and
 * never more than the frame limit. What is inside the body is the strict
 * reader's business (bus_proto.c).
 */
#include <assert.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "bus.h"
#include "http.h"

/* A partial-frame buffer above this size is freed once its frame is done,
 * so an idle connection does not keep a large frame's memory. */
#define DECODER_KEEP_BYTES (64u * 1024)
#define DECODER_MIN_BYTES 4096u

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

const char *bus_strerror(int err) {
  switch (err) {
  case BUS_E_FRAME_TOO_LARGE: return "frame larger than the limit";
  case BUS_E_MALFORMED: return "malformed frame";
  case BUS_E_LENGTH: return "a length in the frame runs past its end";
  case BUS_E_TRUNCATED: return "frame ends inside a value";
  case BUS_E_TOO_DEEP: return "frame nested too deeply";
  case BUS_E_TYPE: return "field of the wrong type";
  case BUS_E_MISSING: return "required field missing";
  case BUS_E_UNKNOWN_FRAME: return "unknown frame type";
  case BUS_E_LIMIT: return "field over its limit";
  case BUS_E_NAME: return "invalid topic or group name";
  case BUS_E_VERSION: return "protocol version not supported";
  case BUS_E_STATE: return "frame not allowed in this state";
  case BUS_E_OVERLOADED: return "broker overloaded, publish again later";
  case BUS_E_STORAGE: return "broker storage failure";
  case BUS_E_CLOSED: return "connection closed";
  case BUS_E_FULL: return "too many unconfirmed publishes";
  case BUS_E_CORRUPT: return "log record fails its checksum";
  case BUS_E_SHUTDOWN: return "broker shutting down";
  default: break;
  }
  if (err > BUS_E_RANGE_HI || err < BUS_E_RANGE_LO) return rt_strerror(err);
  return "unknown bus error";
}

static pthread_once_t strerror_once = PTHREAD_ONCE_INIT;

static void strerror_register(void) {
  rt_strerror_register(BUS_E_RANGE_LO, BUS_E_RANGE_HI, bus_strerror);
}

void bus_strerror_init(void) { pthread_once(&strerror_once, strerror_register); }

/* ------------------------------------------------------------------------ */
/* Buffers                                                                  */
/* ------------------------------------------------------------------------ */

void bus_buf_init(bus_buf_t *b, size_t cap_max) {
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
  b->cap_max = cap_max;
}

void bus_buf_deinit(bus_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

int bus_buf_reserve(bus_buf_t *b, size_t n) {
  if (n > b->cap_max || b->len > b->cap_max - n) return BUS_E_LIMIT;
  size_t need = b->len + n;
  if (need <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2;
  if (cap > b->cap_max) cap = b->cap_max;
  uint8_t *p = realloc(b->data, cap);
  if (p == NULL) return -ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int bus_buf_append(bus_buf_t *b, const void *data, size_t n) {
  if (n == 0) return 0;
  int rc = bus_buf_reserve(b, n);
  if (rc < 0) return rc;
  memcpy(b->data + b->len, data, n);
  b->len += n;
  return 0;
}

void bus_buf_consume(bus_buf_t *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

int bus_buf_take_output(bus_buf_t *out, bus_buf_t *sending, const struct http_filter *filter,
                        void *state, struct http_buf *wire) {
  assert(sending->len == 0);
  if (filter == NULL) {
    bus_buf_t t = *sending;
    *sending = *out;
    *out = t;
    out->len = 0;
    return 0;
  }
  int rc = 0;
  if (out->len > 0) rc = filter->output(state, (const char *)out->data, out->len, wire);
  out->len = 0;
  if (rc == 0) rc = bus_buf_append(sending, wire->data, wire->len);
  http_buf_reset(wire);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Streaming decoder                                                        */
/* ------------------------------------------------------------------------ */

void bus_limits_defaults(bus_limits_t *l) {
  l->frame_bytes_max = BUS_FRAME_BYTES_MAX_DEFAULT;
  l->depth_max = BUS_DEPTH_MAX_DEFAULT;
}

void bus_decoder_init(bus_decoder_t *d, const bus_limits_t *limits) {
  memset(d, 0, sizeof *d);
  if (limits != NULL) {
    d->limits = *limits;
  } else {
    bus_limits_defaults(&d->limits);
  }
}

void bus_decoder_deinit(bus_decoder_t *d) {
  free(d->buf);
  d->buf = NULL;
  d->buf_cap = 0;
  d->buf_len = 0;
}

bool bus_decoder_idle(const bus_decoder_t *d) {
  return d->ready || (d->prefix_len == 0 && d->buf_len == 0);
}

/* Forgets the frame just returned. */
static void decoder_reset(bus_decoder_t *d) {
  d->ready = false;
  d->prefix_len = 0;
  d->body_len = 0;
  d->buf_len = 0;
  if (d->buf_cap > DECODER_KEEP_BYTES) bus_decoder_deinit(d);
}

static int decoder_fail(bus_decoder_t *d, int err) {
  d->err = err;
  return err;
}

/* Checks a complete length prefix: the limit is enforced here, before any
 * byte of the body is stored. */
static int decoder_take_prefix(bus_decoder_t *d) {
  uint32_t n = (uint32_t)d->prefix[0] << 24 | (uint32_t)d->prefix[1] << 16 |
               (uint32_t)d->prefix[2] << 8 | (uint32_t)d->prefix[3];
  if (n == 0) return decoder_fail(d, BUS_E_MALFORMED); /* no map at all */
  if (n > d->limits.frame_bytes_max) return decoder_fail(d, BUS_E_FRAME_TOO_LARGE);
  d->body_len = n;
  return 0;
}

/* Grows the partial-frame buffer for `more` bytes: at most doubling what is
 * held, never past the declared body length. */
static int decoder_grow(bus_decoder_t *d, uint32_t more) {
  uint32_t need = d->buf_len + more;
  if (need <= d->buf_cap) return 0;
  uint32_t cap = d->buf_cap ? d->buf_cap : DECODER_MIN_BYTES;
  while (cap < need) cap = cap > UINT32_MAX / 2 ? UINT32_MAX : cap * 2;
  if (cap > d->body_len) cap = d->body_len;
  uint8_t *p = realloc(d->buf, cap);
  if (p == NULL) return decoder_fail(d, -ENOMEM);
  d->buf = p;
  d->buf_cap = cap;
  return 0;
}

int bus_decoder_feed(bus_decoder_t *d, const uint8_t *data, size_t len,
                     size_t *consumed, bus_bytes_t *body) {
  body->ptr = NULL;
  body->len = 0;
  *consumed = 0;
  if (d->err != 0) return d->err;
  if (d->ready) decoder_reset(d);
  size_t used = 0;
  while (d->prefix_len < 4 && used < len) d->prefix[d->prefix_len++] = data[used++];
  if (d->prefix_len < 4) {
    *consumed = used;
    return 0;
  }
  if (d->body_len == 0) {
    int rc = decoder_take_prefix(d);
    if (rc < 0) return rc;
  }
  size_t avail = len - used;
  if (d->buf_len == 0 && avail >= d->body_len) {
    /* The whole body is in this feed: hand it back in place. */
    body->ptr = data + used;
    body->len = d->body_len;
    d->ready = true;
    *consumed = used + d->body_len;
    return 0;
  }
  uint32_t want = d->body_len - d->buf_len;
  uint32_t take = avail < want ? (uint32_t)avail : want;
  int rc = decoder_grow(d, take);
  if (rc < 0) return rc;
  if (take > 0) memcpy(d->buf + d->buf_len, data + used, take);
  d->buf_len += take;
  *consumed = used + take;
  if (d->buf_len == d->body_len) {
    body->ptr = d->buf;
    body->len = d->body_len;
    d->ready = true;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Names and ids                                                            */
/* ------------------------------------------------------------------------ */

bool bus_name_valid(const uint8_t *name, size_t len) {
  if (name == NULL || len == 0 || len > BUS_NAME_BYTES_MAX) return false;
  if (name[0] == '.') return false; /* no hidden files, no "." or ".." */
  for (size_t i = 0; i < len; i++) {
    uint8_t c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
              (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

/* xorshift128+: fast, per thread, seeded from the kernel once. Ids need to
 * be unique, not secret. */
static _Thread_local uint64_t rng_s[2];

static uint64_t rng_next(void) {
  if (rng_s[0] == 0 && rng_s[1] == 0) {
    if (getrandom(rng_s, sizeof rng_s, 0) != (ssize_t)sizeof rng_s) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      rng_s[0] = (uint64_t)ts.tv_nsec ^ 0x9e3779b97f4a7c15u;
      rng_s[1] = (uint64_t)ts.tv_sec ^ (uint64_t)(uintptr_t)&rng_s;
    }
    rng_s[0] |= 1;
  }
  uint64_t s1 = rng_s[0];
  const uint64_t s0 = rng_s[1];
  rng_s[0] = s0;
  s1 ^= s1 << 23;
  rng_s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
  return rng_s[1] + s0;
}

void bus_uuid_v7(uint8_t out[BUS_ID_BYTES]) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  uint64_t r1 = rng_next(), r2 = rng_next();
  for (int i = 0; i < 6; i++) out[i] = (uint8_t)(ms >> (40 - 8 * i));
  for (int i = 0; i < 2; i++) out[6 + i] = (uint8_t)(r1 >> (8 * i));
  for (int i = 0; i < 8; i++) out[8 + i] = (uint8_t)(r2 >> (8 * i));
  out[6] = (uint8_t)(0x70 | (out[6] & 0x0f)); /* version 7 */
  out[8] = (uint8_t)(0x80 | (out[8] & 0x3f)); /* variant 10 */
}

void bus_uuid_format(const uint8_t id[BUS_ID_BYTES], char out[37]) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (int i = 0; i < BUS_ID_BYTES; i++) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[o++] = '-';
    out[o++] = hex[id[i] >> 4];
    out[o++] = hex[id[i] & 15];
  }
  out[o] = '\0';
}

const char *bus_frame_type_name(uint32_t type) {
  static const char *const names[] = {
      "?", "HELLO", "PUB", "PUB_ACK", "SUB", "DELIVER",
      "ACK", "NACK", "PING", "PONG", "ERR",
  };
  return type < sizeof names / sizeof names[0] ? names[type] : "?";
}
