/*
 * bus_proto.c - frame bodies: a strict bounded reader and the encoder.
 *
 * Why our own reader rather than msgpack_unpack() into a zone: our frames
 * have fixed schemas, and a reader that knows them can check every declared
 * length against the bytes actually left in the body *before* using it, keep
 * slices into the body instead of copying (a DELIVER payload goes from the
 * log to the socket without a decode/encode round), and allocate nothing at
 * all, so a hostile header ("bin32 of 4 GiB" in a 20-byte frame) costs one
 * comparison. Unknown fields are skipped by the same rules (lengths and
 * counts checked against what is left, nesting bounded by depth_max), so
 * every loop here consumes at least one byte per turn and the work per frame
 * is bounded by its length. Encoding uses msgpack-c's packer (msgpack_pack_*)
 * with a write callback into our capped buffer; unit tests cross-check it
 * with msgpack-c's own unpacker.
 */
#include <errno.h>
#include <string.h>

#include <msgpack.h>

#include "bus.h"

/* ------------------------------------------------------------------------ */
/* Reader                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct rd {
  const uint8_t *p;
  const uint8_t *end;
} rd_t;

static size_t rd_left(const rd_t *r) { return (size_t)(r->end - r->p); }

static uint64_t be_read(const uint8_t *p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; i++) v = v << 8 | p[i];
  return v;
}

/* Reads an n-byte big-endian field after the type byte. */
static int rd_fixed(rd_t *r, int n, uint64_t *v) {
  if (rd_left(r) < (size_t)n) return BUS_E_TRUNCATED;
  *v = be_read(r->p, n);
  r->p += n;
  return 0;
}

/* Any integer encoding; *neg tells a negative value, *v holds its bits. */
static int rd_integer(rd_t *r, uint64_t *v, bool *neg) {
  if (rd_left(r) < 1) return BUS_E_TRUNCATED;
  uint8_t t = *r->p++;
  *neg = false;
  if (t <= 0x7f) {
    *v = t;
    return 0;
  }
  if (t >= 0xe0) {
    *v = (uint64_t)(int64_t)(int8_t)t;
    *neg = true;
    return 0;
  }
  int rc;
  switch (t) {
  case 0xcc: return rd_fixed(r, 1, v);
  case 0xcd: return rd_fixed(r, 2, v);
  case 0xce: return rd_fixed(r, 4, v);
  case 0xcf: return rd_fixed(r, 8, v);
  case 0xd0: rc = rd_fixed(r, 1, v); *v = (uint64_t)(int64_t)(int8_t)*v; break;
  case 0xd1: rc = rd_fixed(r, 2, v); *v = (uint64_t)(int64_t)(int16_t)*v; break;
  case 0xd2: rc = rd_fixed(r, 4, v); *v = (uint64_t)(int64_t)(int32_t)*v; break;
  case 0xd3: rc = rd_fixed(r, 8, v); break;
  default: return BUS_E_TYPE;
  }
  *neg = (int64_t)*v < 0;
  return rc;
}

static int rd_uint(rd_t *r, uint64_t max, uint64_t *v) {
  bool neg;
  int rc = rd_integer(r, v, &neg);
  if (rc < 0) return rc;
  if (neg || *v > max) return BUS_E_LIMIT;
  return 0;
}

static int rd_int32(rd_t *r, int32_t *out) {
  uint64_t v;
  bool neg;
  int rc = rd_integer(r, &v, &neg);
  if (rc < 0) return rc;
  int64_t s = (int64_t)v;
  if (!neg && v > INT32_MAX) return BUS_E_LIMIT;
  if (neg && s < INT32_MIN) return BUS_E_LIMIT;
  *out = (int32_t)s;
  return 0;
}

enum { RAW_STR = 1, RAW_BIN = 2 };

/* Reads a str/bin header; kind says which are acceptable. The declared
 * length is checked against the bytes left before anything else. */
static int rd_raw(rd_t *r, int kind, bus_bytes_t *out) {
  if (rd_left(r) < 1) return BUS_E_TRUNCATED;
  uint8_t t = *r->p++;
  uint64_t n;
  int rc = 0;
  int got;
  if (t >= 0xa0 && t <= 0xbf) {
    n = t & 0x1f;
    got = RAW_STR;
  } else if (t == 0xd9 || t == 0xda || t == 0xdb) {
    rc = rd_fixed(r, 1 << (t - 0xd9), &n);
    got = RAW_STR;
  } else if (t == 0xc4 || t == 0xc5 || t == 0xc6) {
    rc = rd_fixed(r, 1 << (t - 0xc4), &n);
    got = RAW_BIN;
  } else {
    return t == 0xc1 ? BUS_E_MALFORMED : BUS_E_TYPE;
  }
  if (rc < 0) return rc;
  if (!(got & kind)) return BUS_E_TYPE;
  if (n > rd_left(r)) return BUS_E_LENGTH;
  out->ptr = r->p;
  out->len = (uint32_t)n;
  r->p += n;
  return 0;
}

/* Reads a map header. Each entry takes at least two bytes, so a count that
 * cannot fit in what is left is refused before any entry is looked at. */
static int rd_map(rd_t *r, uint32_t *count) {
  if (rd_left(r) < 1) return BUS_E_TRUNCATED;
  uint8_t t = *r->p++;
  uint64_t n;
  int rc = 0;
  if (t >= 0x80 && t <= 0x8f) {
    n = t & 0x0f;
  } else if (t == 0xde || t == 0xdf) {
    rc = rd_fixed(r, t == 0xde ? 2 : 4, &n);
  } else {
    return t == 0xc1 ? BUS_E_MALFORMED : BUS_E_TYPE;
  }
  if (rc < 0) return rc;
  if (n > rd_left(r) / 2) return BUS_E_LENGTH;
  *count = (uint32_t)n;
  return 0;
}

static int rd_skip(rd_t *r, uint32_t depth, uint32_t depth_max);

/* Skips a fixed-width value of n bytes after its type byte. */
static int rd_skip_fixed_count(rd_t *r, size_t n) {
  if (rd_left(r) < n) return BUS_E_TRUNCATED;
  r->p += n;
  return 0;
}

/* Skips `items` objects of a container at `depth`. */
static int rd_skip_items(rd_t *r, uint64_t items, uint32_t depth, uint32_t depth_max) {
  if (depth > depth_max) return BUS_E_TOO_DEEP;
  if (items > rd_left(r)) return BUS_E_LENGTH; /* each item is >= 1 byte */
  for (uint64_t i = 0; i < items; i++) {
    int rc = rd_skip(r, depth, depth_max);
    if (rc < 0) return rc;
  }
  return 0;
}

/* Skips n raw bytes whose length was declared by the peer. */
static int rd_skip_bytes(rd_t *r, uint64_t n) {
  if (n > rd_left(r)) return BUS_E_LENGTH;
  r->p += n;
  return 0;
}

/* Skips one object found at nesting `depth` (the frame map's values are at
 * depth 1; a container there opens depth 2). Recursion is bounded by
 * depth_max, each turn consumes at least one byte. */
static int rd_skip(rd_t *r, uint32_t depth, uint32_t depth_max) {
  if (rd_left(r) < 1) return BUS_E_TRUNCATED;
  uint8_t t = *r->p++;
  uint64_t n = 0;
  int rc = 0;
  if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) return 0;
  if (t >= 0xa0 && t <= 0xbf) return rd_skip_bytes(r, t & 0x1f);
  if (t >= 0x80 && t <= 0x8f) return rd_skip_items(r, 2u * (t & 0x0f), depth + 1, depth_max);
  if (t >= 0x90 && t <= 0x9f) return rd_skip_items(r, t & 0x0f, depth + 1, depth_max);
  switch (t) {
  case 0xc4: case 0xc5: case 0xc6:
    rc = rd_fixed(r, 1 << (t - 0xc4), &n);
    return rc < 0 ? rc : rd_skip_bytes(r, n);
  case 0xd9: case 0xda: case 0xdb:
    rc = rd_fixed(r, 1 << (t - 0xd9), &n);
    return rc < 0 ? rc : rd_skip_bytes(r, n);
  case 0xc7: case 0xc8: case 0xc9: /* ext: length, type byte, data */
    rc = rd_fixed(r, 1 << (t - 0xc7), &n);
    return rc < 0 ? rc : rd_skip_bytes(r, n + 1);
  case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext */
    if (rd_left(r) < 1 + ((size_t)1 << (t - 0xd4))) return BUS_E_TRUNCATED;
    r->p += 1 + ((size_t)1 << (t - 0xd4));
    return 0;
  case 0xca: return rd_skip_fixed_count(r, 4);
  case 0xcb: return rd_skip_fixed_count(r, 8);
  case 0xcc: case 0xd0: return rd_skip_fixed_count(r, 1);
  case 0xcd: case 0xd1: return rd_skip_fixed_count(r, 2);
  case 0xce: case 0xd2: return rd_skip_fixed_count(r, 4);
  case 0xcf: case 0xd3: return rd_skip_fixed_count(r, 8);
  case 0xdc: case 0xdd:
    rc = rd_fixed(r, t == 0xdc ? 2 : 4, &n);
    return rc < 0 ? rc : rd_skip_items(r, n, depth + 1, depth_max);
  case 0xde: case 0xdf:
    rc = rd_fixed(r, t == 0xde ? 2 : 4, &n);
    return rc < 0 ? rc : rd_skip_items(r, 2 * n, depth + 1, depth_max);
  default:
    return BUS_E_MALFORMED; /* 0xc1: never used */
  }
}

/* ------------------------------------------------------------------------ */
/* Fields                                                                   */
/* ------------------------------------------------------------------------ */

enum field {
  F_T, F_V, F_NAME, F_TOPIC, F_GROUP, F_KEY, F_ID, F_HDR, F_DATA,
  F_P, F_OFF, F_N, F_TS, F_MAX, F_SEQ, F_CODE, F_MSG, F_COUNT,
};

#define B(f) (1u << (f))
_Static_assert(F_COUNT <= 32, "field masks are 32 bits");

/* The wire names of the fields, indexed by enum field. */
static const char *const field_names[F_COUNT] = {
    "t", "v", "name", "topic", "group", "key", "id", "hdr", "data",
    "p", "off", "n", "ts", "max", "seq", "code", "msg",
};

/* Fields each frame type must carry (indexed by type). */
static const uint32_t required_fields[] = {
    [BUS_HELLO] = B(F_T) | B(F_V) | B(F_NAME),
    [BUS_PUB] = B(F_T) | B(F_TOPIC) | B(F_ID) | B(F_DATA),
    [BUS_PUB_ACK] = B(F_T) | B(F_ID),
    [BUS_SUB] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_MAX),
    [BUS_DELIVER] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_P) | B(F_OFF) | B(F_ID) | B(F_N) |
                    B(F_DATA),
    [BUS_ACK] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_P) | B(F_OFF),
    [BUS_NACK] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_P) | B(F_OFF),
    [BUS_PING] = B(F_T),
    [BUS_PONG] = B(F_T),
    [BUS_ERR] = B(F_T) | B(F_CODE),
};

/* Fields the encoder writes for each type, besides optional ones that are
 * written only when set (key, hdr, id of ERR). */
static const uint32_t encoded_fields[] = {
    [BUS_HELLO] = B(F_T) | B(F_V) | B(F_NAME),
    [BUS_PUB] = B(F_T) | B(F_TOPIC) | B(F_ID) | B(F_DATA),
    [BUS_PUB_ACK] = B(F_T) | B(F_ID) | B(F_P) | B(F_OFF),
    [BUS_SUB] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_MAX),
    [BUS_DELIVER] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_P) | B(F_OFF) | B(F_ID) |
                    B(F_N) | B(F_TS) | B(F_DATA),
    [BUS_ACK] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_P) | B(F_OFF),
    [BUS_NACK] = B(F_T) | B(F_TOPIC) | B(F_GROUP) | B(F_P) | B(F_OFF),
    [BUS_PING] = B(F_T) | B(F_SEQ),
    [BUS_PONG] = B(F_T) | B(F_SEQ),
    [BUS_ERR] = B(F_T) | B(F_CODE) | B(F_MSG),
};

#define FRAME_TYPE_MAX BUS_ERR

static int field_lookup(bus_bytes_t key) {
  for (int i = 0; i < F_COUNT; i++) {
    size_t n = strlen(field_names[i]);
    if (n == key.len && memcmp(field_names[i], key.ptr, n) == 0) return i;
  }
  return -1;
}

static int rd_name(rd_t *r, bus_bytes_t *out) {
  int rc = rd_raw(r, RAW_STR, out);
  if (rc < 0) return rc;
  return bus_name_valid(out->ptr, out->len) ? 0 : BUS_E_NAME;
}

static int rd_str_max(rd_t *r, int kind, uint32_t max, bus_bytes_t *out) {
  int rc = rd_raw(r, kind, out);
  if (rc < 0) return rc;
  return out->len <= max ? 0 : BUS_E_LIMIT;
}

/* The headers map: at most BUS_HEADERS_MAX entries of str name -> str or
 * bin value, each within its limit. The slice covers the whole map. */
static int rd_headers(rd_t *r, const bus_limits_t *lim, bus_bytes_t *out) {
  if (lim->depth_max < 2) return BUS_E_TOO_DEEP;
  const uint8_t *start = r->p;
  uint32_t n;
  int rc = rd_map(r, &n);
  if (rc < 0) return rc;
  if (n > BUS_HEADERS_MAX) return BUS_E_LIMIT;
  for (uint32_t i = 0; i < n; i++) {
    bus_bytes_t name, value;
    rc = rd_str_max(r, RAW_STR, BUS_HEADER_NAME_BYTES_MAX, &name);
    if (rc == 0) rc = rd_str_max(r, RAW_STR | RAW_BIN, BUS_HEADER_VALUE_BYTES_MAX, &value);
    if (rc < 0) return rc;
  }
  out->ptr = start;
  out->len = (uint32_t)(r->p - start);
  return 0;
}

static int rd_id(rd_t *r, uint8_t id[BUS_ID_BYTES]) {
  bus_bytes_t b;
  int rc = rd_raw(r, RAW_BIN, &b);
  if (rc < 0) return rc;
  if (b.len != BUS_ID_BYTES) return BUS_E_LIMIT;
  memcpy(id, b.ptr, BUS_ID_BYTES);
  return 0;
}

/* Reads the value of one known field into the frame. */
static int rd_field(rd_t *r, int field, const bus_limits_t *lim, bus_frame_t *f,
                    uint32_t *type) {
  uint64_t v = 0;
  int rc;
  switch (field) {
  case F_T: rc = rd_uint(r, UINT32_MAX, &v); *type = (uint32_t)v; return rc;
  case F_V: rc = rd_uint(r, UINT32_MAX, &v); f->version = (uint32_t)v; return rc;
  case F_NAME: return rd_str_max(r, RAW_STR, BUS_CLIENT_NAME_BYTES_MAX, &f->name);
  case F_TOPIC: return rd_name(r, &f->topic);
  case F_GROUP: return rd_name(r, &f->group);
  case F_KEY: return rd_str_max(r, RAW_STR | RAW_BIN, BUS_KEY_BYTES_MAX, &f->key);
  case F_ID: f->has_id = true; return rd_id(r, f->id);
  case F_HDR: return rd_headers(r, lim, &f->headers);
  case F_DATA: return rd_raw(r, RAW_BIN, &f->payload);
  case F_P: rc = rd_uint(r, UINT32_MAX, &v); f->partition = (uint32_t)v; return rc;
  case F_OFF: return rd_uint(r, UINT64_MAX, &f->offset);
  case F_N: rc = rd_uint(r, UINT32_MAX, &v); f->attempt = (uint32_t)v; return rc;
  case F_TS: return rd_uint(r, UINT64_MAX, &f->stored_ms);
  case F_MAX:
    rc = rd_uint(r, BUS_MAX_IN_FLIGHT_MAX, &v);
    if (rc == 0 && v == 0) rc = BUS_E_LIMIT;
    f->max_in_flight = (uint32_t)v;
    return rc;
  case F_SEQ: return rd_uint(r, UINT64_MAX, &f->seq);
  case F_CODE: return rd_int32(r, &f->code);
  case F_MSG: return rd_str_max(r, RAW_STR, BUS_ERR_MSG_BYTES_MAX, &f->message);
  default: return BUS_E_MALFORMED;
  }
}

/* One key/value pair of the frame map. */
static int rd_entry(rd_t *r, const bus_limits_t *lim, bus_frame_t *f, uint32_t *seen,
                    uint32_t *type) {
  bus_bytes_t key;
  int rc = rd_raw(r, RAW_STR, &key);
  if (rc < 0) return rc;
  int field = field_lookup(key);
  if (field < 0) return rd_skip(r, 1, lim->depth_max); /* unknown: skip */
  if (*seen & B(field)) return BUS_E_MALFORMED; /* a field twice: ambiguous */
  *seen |= B(field);
  return rd_field(r, field, lim, f, type);
}

int bus_frame_decode(const uint8_t *body, size_t len, const bus_limits_t *limits,
                     bus_frame_t *out) {
  bus_limits_t defaults;
  if (limits == NULL) {
    bus_limits_defaults(&defaults);
    limits = &defaults;
  }
  memset(out, 0, sizeof *out);
  if (len > limits->frame_bytes_max) return BUS_E_FRAME_TOO_LARGE;
  if (limits->depth_max < 1) return BUS_E_TOO_DEEP;
  rd_t r = {.p = body, .end = body + len};
  if (len == 0 || !((body[0] >= 0x80 && body[0] <= 0x8f) || body[0] == 0xde || body[0] == 0xdf))
    return BUS_E_MALFORMED; /* the body must be one map */
  uint32_t count = 0, seen = 0, type = 0;
  int rc = rd_map(&r, &count);
  for (uint32_t i = 0; i < count && rc == 0; i++) rc = rd_entry(&r, limits, out, &seen, &type);
  if (rc < 0) return rc;
  if (r.p != r.end) return BUS_E_MALFORMED; /* bytes after the map */
  if (!(seen & B(F_T))) return BUS_E_MISSING;
  if (type < BUS_HELLO || type > FRAME_TYPE_MAX) return BUS_E_UNKNOWN_FRAME;
  out->type = (bus_frame_type_t)type;
  uint32_t need = required_fields[type];
  return (seen & need) == need ? 0 : BUS_E_MISSING;
}

/* ------------------------------------------------------------------------ */
/* Encoder                                                                  */
/* ------------------------------------------------------------------------ */

/* The packer's write callback: appends to a capped buffer and remembers the
 * first failure (the packer only sees "non-zero"). */
typedef struct wr {
  bus_buf_t *buf;
  int err;
} wr_t;

static int wr_cb(void *data, const char *bytes, size_t len) {
  wr_t *w = data;
  int rc = bus_buf_append(w->buf, bytes, len);
  if (rc < 0) {
    if (w->err == 0) w->err = rc;
    return -1;
  }
  return 0;
}

static void pk_key(msgpack_packer *pk, int field) {
  msgpack_pack_str_with_body(pk, field_names[field], strlen(field_names[field]));
}

static void pk_str(msgpack_packer *pk, bus_bytes_t b) {
  msgpack_pack_str_with_body(pk, b.ptr, b.len);
}

static void pk_bin(msgpack_packer *pk, const void *p, size_t n) {
  msgpack_pack_bin_with_body(pk, p, n);
}

/* Writes one field's value. The packer keeps going after a failed write;
 * wr_t.err records it and the frame is rolled back by the caller. */
static void pk_field(msgpack_packer *pk, wr_t *w, int field, const bus_frame_t *f) {
  pk_key(pk, field);
  switch (field) {
  case F_T: msgpack_pack_uint32(pk, (uint32_t)f->type); break;
  case F_V: msgpack_pack_uint32(pk, f->version); break;
  case F_NAME: pk_str(pk, f->name); break;
  case F_TOPIC: pk_str(pk, f->topic); break;
  case F_GROUP: pk_str(pk, f->group); break;
  case F_KEY: pk_bin(pk, f->key.ptr, f->key.len); break;
  case F_ID: pk_bin(pk, f->id, BUS_ID_BYTES); break;
  case F_HDR: wr_cb(w, (const char *)f->headers.ptr, f->headers.len); break;
  case F_DATA: pk_bin(pk, f->payload.ptr, f->payload.len); break;
  case F_P: msgpack_pack_uint32(pk, f->partition); break;
  case F_OFF: msgpack_pack_uint64(pk, f->offset); break;
  case F_N: msgpack_pack_uint32(pk, f->attempt); break;
  case F_TS: msgpack_pack_uint64(pk, f->stored_ms); break;
  case F_MAX: msgpack_pack_uint32(pk, f->max_in_flight); break;
  case F_SEQ: msgpack_pack_uint64(pk, f->seq); break;
  case F_CODE: msgpack_pack_int32(pk, f->code); break;
  case F_MSG: pk_str(pk, f->message); break;
  default: break;
  }
}

static uint32_t fields_to_encode(const bus_frame_t *f) {
  uint32_t mask = encoded_fields[f->type];
  if ((f->type == BUS_PUB || f->type == BUS_DELIVER) && f->key.len > 0) mask |= B(F_KEY);
  if ((f->type == BUS_PUB || f->type == BUS_DELIVER) && f->headers.len > 0) mask |= B(F_HDR);
  if (f->type == BUS_ERR && f->has_id) mask |= B(F_ID);
  if (f->type == BUS_NACK && f->message.len > 0) mask |= B(F_MSG); /* why it failed */
  return mask;
}

int bus_frame_encode(bus_buf_t *out, const bus_frame_t *f, uint32_t frame_bytes_max) {
  if (f->type < BUS_HELLO || f->type > FRAME_TYPE_MAX) return BUS_E_UNKNOWN_FRAME;
  size_t start = out->len;
  static const uint8_t prefix[4] = {0};
  int rc = bus_buf_append(out, prefix, sizeof prefix);
  if (rc < 0) return rc;
  wr_t w = {.buf = out, .err = 0};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &w, wr_cb);
  uint32_t mask = fields_to_encode(f);
  msgpack_pack_map(&pk, (size_t)__builtin_popcount(mask));
  for (int field = 0; field < F_COUNT && w.err == 0; field++) {
    if (mask & B(field)) pk_field(&pk, &w, field, f);
  }
  size_t body = out->len - start - sizeof prefix;
  rc = w.err;
  if (rc == 0 && body > frame_bytes_max) rc = BUS_E_FRAME_TOO_LARGE;
  if (rc < 0) {
    out->len = start;
    return rc;
  }
  uint8_t *p = out->data + start;
  p[0] = (uint8_t)(body >> 24);
  p[1] = (uint8_t)(body >> 16);
  p[2] = (uint8_t)(body >> 8);
  p[3] = (uint8_t)body;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Headers                                                                  */
/* ------------------------------------------------------------------------ */

int bus_headers_pack(bus_buf_t *out, const bus_header_t *h, uint32_t count) {
  if (count > BUS_HEADERS_MAX) return BUS_E_LIMIT;
  for (uint32_t i = 0; i < count; i++) {
    if (h[i].name_len > BUS_HEADER_NAME_BYTES_MAX) return BUS_E_LIMIT;
    if (h[i].value_len > BUS_HEADER_VALUE_BYTES_MAX) return BUS_E_LIMIT;
  }
  size_t start = out->len;
  wr_t w = {.buf = out, .err = 0};
  msgpack_packer pk;
  msgpack_packer_init(&pk, &w, wr_cb);
  msgpack_pack_map(&pk, count);
  for (uint32_t i = 0; i < count && w.err == 0; i++) {
    msgpack_pack_str_with_body(&pk, h[i].name, h[i].name_len);
    msgpack_pack_bin_with_body(&pk, h[i].value, h[i].value_len);
  }
  if (w.err < 0) out->len = start;
  return w.err;
}

void bus_header_iter_init(bus_header_iter_t *it, bus_bytes_t headers) {
  it->pos = headers.ptr;
  it->end = headers.ptr + headers.len;
  it->left = 0;
  if (headers.len == 0) return;
  rd_t r = {.p = headers.ptr, .end = it->end};
  uint32_t n;
  if (rd_map(&r, &n) < 0) return;
  it->pos = r.p;
  it->left = n;
}

bool bus_header_next(bus_header_iter_t *it, bus_bytes_t *name, bus_bytes_t *value) {
  if (it->left == 0) return false;
  rd_t r = {.p = it->pos, .end = it->end};
  if (rd_raw(&r, RAW_STR, name) < 0 || rd_raw(&r, RAW_STR | RAW_BIN, value) < 0) {
    it->left = 0;
    return false;
  }
  it->pos = r.p;
  it->left--;
  return true;
}

bool bus_header_get(bus_bytes_t headers, const char *name, bus_bytes_t *value) {
  bus_header_iter_t it;
  bus_header_iter_init(&it, headers);
  size_t n = strlen(name);
  bus_bytes_t k;
  /* Bounded: each step consumes bytes, at most BUS_HEADERS_MAX entries. */
  while (bus_header_next(&it, &k, value)) {
    if (k.len == n && memcmp(k.ptr, name, n) == 0) return true;
  }
  return false;
}
