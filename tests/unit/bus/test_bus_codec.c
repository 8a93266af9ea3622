/*
 * test_bus_codec.c - frames: round trips of every type through the encoder,
 * the streaming decoder and the strict reader (whole, byte by byte, split at
 * every offset), a cross-check with msgpack-c's own unpacker, the corpus of
 * malformed and oversized frames (corpus/, see its README), decoder memory
 * bounds, headers, ids and error strings.
 */
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "bus.h"
#include "t.h"

static bus_bytes_t bytes_of(const char *s) {
  return (bus_bytes_t){.ptr = (const uint8_t *)s, .len = (uint32_t)strlen(s)};
}

static bool bytes_eq(bus_bytes_t a, bus_bytes_t b) {
  return a.len == b.len && (a.len == 0 || memcmp(a.ptr, b.ptr, a.len) == 0);
}

/* One sample frame of each type, every field its type uses set. */
static void sample(bus_frame_type_t type, bus_frame_t *f, bus_buf_t *hdr) {
  memset(f, 0, sizeof *f);
  f->type = type;
  for (int i = 0; i < BUS_ID_BYTES; i++) f->id[i] = (uint8_t)(i * 7 + type);
  static const char payload[] = "\x00\x01 binary \xff payload";
  switch (type) {
  case BUS_HELLO:
    f->version = BUS_PROTOCOL_VERSION;
    f->name = bytes_of("payment-svc");
    break;
  case BUS_PUB:
  case BUS_DELIVER:
    f->topic = bytes_of("payment.requested");
    if (type == BUS_DELIVER) f->group = bytes_of("ledger");
    f->key = bytes_of("acct-42");
    f->headers = (bus_bytes_t){.ptr = hdr->data, .len = (uint32_t)hdr->len};
    f->payload = (bus_bytes_t){.ptr = (const uint8_t *)payload, .len = sizeof payload - 1};
    f->partition = type == BUS_DELIVER ? 3 : 0;
    f->offset = type == BUS_DELIVER ? 0x1234567890ull : 0;
    f->attempt = type == BUS_DELIVER ? 2 : 0;
    f->stored_ms = type == BUS_DELIVER ? 1700000000123ull : 0;
    break;
  case BUS_PUB_ACK:
    f->partition = 7;
    f->offset = 99;
    break;
  case BUS_SUB:
    f->topic = bytes_of("orders");
    f->group = bytes_of("billing");
    f->max_in_flight = 100;
    break;
  case BUS_ACK:
  case BUS_NACK:
    f->topic = bytes_of("orders");
    f->group = bytes_of("billing");
    f->partition = 1;
    f->offset = UINT64_MAX - 1;
    break;
  case BUS_PING:
  case BUS_PONG:
    f->seq = 77;
    break;
  case BUS_ERR:
    f->code = BUS_E_OVERLOADED;
    f->message = bytes_of("slow down");
    break;
  }
  f->has_id = type == BUS_PUB || type == BUS_PUB_ACK || type == BUS_DELIVER || type == BUS_ERR;
  if (!f->has_id) memset(f->id, 0, sizeof f->id);
}

static void check_same(const bus_frame_t *a, const bus_frame_t *b) {
  T_CHECK_EQ_INT(a->type, b->type);
  T_CHECK_EQ_INT(a->version, b->version);
  T_CHECK(bytes_eq(a->name, b->name));
  T_CHECK(bytes_eq(a->topic, b->topic));
  T_CHECK(bytes_eq(a->group, b->group));
  T_CHECK(bytes_eq(a->key, b->key));
  T_CHECK_EQ_INT(a->has_id, b->has_id);
  if (a->has_id) T_CHECK(memcmp(a->id, b->id, BUS_ID_BYTES) == 0);
  T_CHECK(bytes_eq(a->headers, b->headers));
  T_CHECK(bytes_eq(a->payload, b->payload));
  T_CHECK_EQ_INT(a->partition, b->partition);
  T_CHECK(a->offset == b->offset);
  T_CHECK_EQ_INT(a->attempt, b->attempt);
  T_CHECK(a->stored_ms == b->stored_ms);
  T_CHECK_EQ_INT(a->max_in_flight, b->max_in_flight);
  T_CHECK(a->seq == b->seq);
  T_CHECK_EQ_INT(a->code, b->code);
  T_CHECK(bytes_eq(a->message, b->message));
}

/* Feeds `len` bytes in chunks of `step` (0: whole) and decodes the frames
 * found, up to `max`. Returns the count or the first error. */
static int feed_all(const uint8_t *data, size_t len, size_t step, const bus_limits_t *lim,
                    bus_frame_t *frames, int max, bus_decoder_t *d) {
  int count = 0;
  size_t pos = 0;
  while (pos < len) {
    size_t n = step == 0 || len - pos < step ? len - pos : step;
    size_t off = 0;
    while (off < n) {
      size_t used = 0;
      bus_bytes_t body;
      int rc = bus_decoder_feed(d, data + pos + off, n - off, &used, &body);
      if (rc < 0) return rc;
      off += used;
      if (body.ptr == NULL) break;
      if (count == max) return count;
      rc = bus_frame_decode(body.ptr, body.len, lim, &frames[count]);
      if (rc < 0) return rc;
      count++;
    }
    pos += n;
  }
  return count;
}

static void test_round_trip_every_type(void) {
  bus_buf_t hdr;
  bus_buf_init(&hdr, 4096);
  bus_header_t h[2] = {
      {.name = "trace", .name_len = 5, .value = "abc", .value_len = 3},
      {.name = "bin", .name_len = 3, .value = "\x00\xff", .value_len = 2},
  };
  T_REQUIRE(bus_headers_pack(&hdr, h, 2) == 0);
  for (int type = BUS_HELLO; type <= BUS_ERR; type++) {
    bus_frame_t in, out[1];
    sample((bus_frame_type_t)type, &in, &hdr);
    bus_buf_t wire;
    bus_buf_init(&wire, 1 << 20);
    T_REQUIRE(bus_frame_encode(&wire, &in, BUS_FRAME_BYTES_MAX_DEFAULT) == 0);
    for (size_t step = 0; step <= 1; step++) {
      /* The decoded slices point into the stream or the decoder: keep the
       * decoder alive while comparing. */
      bus_decoder_t d;
      bus_decoder_init(&d, NULL);
      int n = feed_all(wire.data, wire.len, step, NULL, out, 1, &d);
      T_CHECK_EQ_INT(n, 1);
      if (n == 1) check_same(&in, &out[0]);
      bus_decoder_deinit(&d);
    }
    bus_buf_deinit(&wire);
  }
  bus_buf_deinit(&hdr);
}

/* Three frames back to back, split at every byte offset: the decoder must
 * find the same three frames whatever the split. */
static void test_split_everywhere(void) {
  bus_buf_t wire;
  bus_buf_init(&wire, 1 << 20);
  bus_frame_t f;
  bus_buf_t hdr;
  bus_buf_init(&hdr, 16);
  sample(BUS_PUB, &f, &hdr);
  T_REQUIRE(bus_frame_encode(&wire, &f, BUS_FRAME_BYTES_MAX_DEFAULT) == 0);
  sample(BUS_ACK, &f, &hdr);
  T_REQUIRE(bus_frame_encode(&wire, &f, BUS_FRAME_BYTES_MAX_DEFAULT) == 0);
  sample(BUS_PING, &f, &hdr);
  T_REQUIRE(bus_frame_encode(&wire, &f, BUS_FRAME_BYTES_MAX_DEFAULT) == 0);
  int bad = 0;
  for (size_t cut = 1; cut < wire.len; cut++) {
    bus_decoder_t d;
    bus_decoder_init(&d, NULL);
    bus_frame_t out[3];
    int got = 0;
    const uint8_t *parts[2] = {wire.data, wire.data + cut};
    size_t lens[2] = {cut, wire.len - cut};
    for (int p = 0; p < 2; p++) {
      size_t off = 0;
      for (int guard = 0; off < lens[p] && guard < 10; guard++) {
        size_t used;
        bus_bytes_t body;
        if (bus_decoder_feed(&d, parts[p] + off, lens[p] - off, &used, &body) < 0) break;
        off += used;
        if (body.ptr != NULL && got < 3 &&
            bus_frame_decode(body.ptr, body.len, NULL, &out[got]) == 0)
          got++;
      }
    }
    if (got != 3 || out[0].type != BUS_PUB || out[2].type != BUS_PING) bad++;
    T_CHECK(bus_decoder_idle(&d));
    bus_decoder_deinit(&d);
  }
  T_CHECK_EQ_INT(bad, 0);
  bus_buf_deinit(&wire);
  bus_buf_deinit(&hdr);
}

/* msgpack-c's unpacker, an independent reader, sees our frames as one map
 * with the right entry count and "t". */
static void test_msgpack_c_reads_ours(void) {
  bus_buf_t hdr;
  bus_buf_init(&hdr, 16);
  for (int type = BUS_HELLO; type <= BUS_ERR; type++) {
    bus_frame_t f;
    sample((bus_frame_type_t)type, &f, &hdr);
    bus_buf_t wire;
    bus_buf_init(&wire, 1 << 20);
    T_REQUIRE(bus_frame_encode(&wire, &f, BUS_FRAME_BYTES_MAX_DEFAULT) == 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    size_t off = 0;
    msgpack_unpack_return ret =
        msgpack_unpack_next(&u, (const char *)wire.data + 4, wire.len - 4, &off);
    T_CHECK_EQ_INT(ret, MSGPACK_UNPACK_SUCCESS);
    T_CHECK_EQ_INT(off, wire.len - 4);
    T_CHECK_EQ_INT(u.data.type, MSGPACK_OBJECT_MAP);
    bool t_ok = false;
    for (uint32_t i = 0; u.data.type == MSGPACK_OBJECT_MAP && i < u.data.via.map.size; i++) {
      const msgpack_object_kv *kv = &u.data.via.map.ptr[i];
      if (kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size == 1 &&
          kv->key.via.str.ptr[0] == 't')
        t_ok = kv->val.type == MSGPACK_OBJECT_POSITIVE_INTEGER && kv->val.via.u64 == (uint64_t)type;
    }
    T_CHECK(t_ok);
    msgpack_unpacked_destroy(&u);
    bus_buf_deinit(&wire);
  }
  bus_buf_deinit(&hdr);
}

/* Frames written by msgpack-c's packer directly (not our encoder) are read
 * by our strict reader, including an integer written in a signed form. */
static void test_ours_reads_msgpack_c(void) {
  msgpack_sbuffer sb;
  msgpack_sbuffer_init(&sb);
  msgpack_packer pk;
  msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
  msgpack_pack_map(&pk, 5);
  msgpack_pack_str_with_body(&pk, "t", 1);
  msgpack_pack_int64(&pk, BUS_ACK); /* int64 encoding of a small value */
  msgpack_pack_str_with_body(&pk, "topic", 5);
  msgpack_pack_str_with_body(&pk, "orders", 6);
  msgpack_pack_str_with_body(&pk, "group", 5);
  msgpack_pack_str_with_body(&pk, "g1", 2);
  msgpack_pack_str_with_body(&pk, "p", 1);
  msgpack_pack_uint8(&pk, 2);
  msgpack_pack_str_with_body(&pk, "off", 3);
  msgpack_pack_uint64(&pk, 1ull << 40);
  bus_frame_t f;
  T_CHECK_EQ_INT(bus_frame_decode((const uint8_t *)sb.data, sb.size, NULL, &f), 0);
  T_CHECK_EQ_INT(f.type, BUS_ACK);
  T_CHECK_EQ_INT(f.partition, 2);
  T_CHECK(f.offset == 1ull << 40);
  T_CHECK(bytes_eq(f.group, bytes_of("g1")));
  msgpack_sbuffer_destroy(&sb);
}

/* ------------------------------------------------------------------------ */
/* Corpus                                                                   */
/* ------------------------------------------------------------------------ */

static const struct {
  const char *name;
  int code;
} error_names[] = {
    {"ok", 0},
    {"BUS_E_FRAME_TOO_LARGE", BUS_E_FRAME_TOO_LARGE},
    {"BUS_E_MALFORMED", BUS_E_MALFORMED},
    {"BUS_E_LENGTH", BUS_E_LENGTH},
    {"BUS_E_TRUNCATED", BUS_E_TRUNCATED},
    {"BUS_E_TOO_DEEP", BUS_E_TOO_DEEP},
    {"BUS_E_TYPE", BUS_E_TYPE},
    {"BUS_E_MISSING", BUS_E_MISSING},
    {"BUS_E_UNKNOWN_FRAME", BUS_E_UNKNOWN_FRAME},
    {"BUS_E_LIMIT", BUS_E_LIMIT},
    {"BUS_E_NAME", BUS_E_NAME},
};

static int error_code(const char *name, int *code) {
  for (size_t i = 0; i < sizeof error_names / sizeof error_names[0]; i++) {
    if (strcmp(error_names[i].name, name) == 0) {
      *code = error_names[i].code;
      return 0;
    }
  }
  return -1;
}

typedef struct corpus_case {
  int expect;
  bus_limits_t limits;
  uint8_t data[8192];
  size_t len;
} corpus_case_t;

static int hexval(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Parses a comment line: the directives and nothing else. */
static int corpus_directive(const char *line, corpus_case_t *c, bool *have_expect) {
  char word[64];
  unsigned long v;
  if (sscanf(line, "# expect: %63s", word) == 1) {
    *have_expect = true;
    return error_code(word, &c->expect);
  }
  if (sscanf(line, "# frame_bytes_max: %lu", &v) == 1) c->limits.frame_bytes_max = (uint32_t)v;
  if (sscanf(line, "# depth_max: %lu", &v) == 1) c->limits.depth_max = (uint32_t)v;
  return 0;
}

static int corpus_load(const char *path, corpus_case_t *c) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  bus_limits_defaults(&c->limits);
  c->len = 0;
  bool have_expect = false;
  char line[512];
  int rc = 0;
  while (rc == 0 && fgets(line, sizeof line, f) != NULL) {
    if (line[0] == '#') {
      rc = corpus_directive(line, c, &have_expect);
      continue;
    }
    for (char *p = line; *p != '\0' && *p != '\n' && rc == 0; p++) {
      if (*p == ' ') continue;
      int hi = hexval(p[0]), lo = hexval(p[1]);
      if (hi < 0 || lo < 0 || c->len == sizeof c->data) {
        rc = -1;
      } else {
        c->data[c->len++] = (uint8_t)(hi * 16 + lo);
        p++;
      }
    }
  }
  fclose(f);
  return rc == 0 && have_expect ? 0 : -1;
}

/* The outcome of a stream: the first error, or 0 when at least one frame
 * decoded, or 1 when no frame completed. */
static int corpus_outcome(const corpus_case_t *c, size_t step) {
  bus_decoder_t d;
  bus_decoder_init(&d, &c->limits);
  bus_frame_t out[1];
  int n = feed_all(c->data, c->len, step, &c->limits, out, 1, &d);
  bus_decoder_deinit(&d);
  if (n < 0) return n;
  return n == 1 ? 0 : 1;
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_corpus(void) {
  const char *dir = getenv("BUS_CORPUS_DIR");
  T_REQUIRE(dir != NULL);
  DIR *dp = opendir(dir);
  T_REQUIRE(dp != NULL);
  char *names[256];
  size_t count = 0;
  struct dirent *e;
  while ((e = readdir(dp)) != NULL && count < 256) {
    size_t n = strlen(e->d_name);
    if (n > 4 && strcmp(e->d_name + n - 4, ".hex") == 0) names[count++] = strdup(e->d_name);
  }
  closedir(dp);
  qsort(names, count, sizeof names[0], name_cmp);
  T_CHECK(count >= 50); /* the corpus is there, not silently empty */
  size_t refused = 0;
  static corpus_case_t c;
  for (size_t i = 0; i < count; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    T_CHECK_EQ_INT(corpus_load(path, &c), 0);
    int whole = corpus_outcome(&c, 0);
    int bytewise = corpus_outcome(&c, 1);
    if (whole != c.expect || bytewise != c.expect) {
      fprintf(stderr, "corpus %s: expected %d (%s), whole %d, bytewise %d\n", names[i],
              c.expect, bus_strerror(c.expect), whole, bytewise);
    }
    T_CHECK_EQ_INT(whole, c.expect);
    T_CHECK_EQ_INT(bytewise, c.expect);
    if (c.expect != 0) refused++;
    free(names[i]);
  }
  T_CHECK(refused >= 40);
}

/* ------------------------------------------------------------------------ */
/* Limits and memory                                                        */
/* ------------------------------------------------------------------------ */

/* The length prefix alone decides: nothing is allocated for an oversized
 * frame, and the error is sticky. */
static void test_prefix_checked_first(void) {
  bus_decoder_t d;
  bus_limits_t lim;
  bus_limits_defaults(&lim);
  lim.frame_bytes_max = 100;
  bus_decoder_init(&d, &lim);
  const uint8_t prefix[4] = {0, 0, 0, 101};
  size_t used;
  bus_bytes_t body;
  T_CHECK_EQ_INT(bus_decoder_feed(&d, prefix, 4, &used, &body), BUS_E_FRAME_TOO_LARGE);
  T_CHECK(d.buf == NULL);
  T_CHECK_EQ_INT(bus_decoder_feed(&d, prefix, 1, &used, &body), BUS_E_FRAME_TOO_LARGE);
  bus_decoder_deinit(&d);
}

/* A peer announcing a 1 MiB frame and trickling bytes holds memory in
 * proportion to what it sent (at most doubling), never the declared size
 * up front, and never more than the frame. */
static void test_memory_follows_bytes(void) {
  bus_decoder_t d;
  bus_decoder_init(&d, NULL);
  const uint8_t prefix[4] = {0, 0x10, 0, 0}; /* exactly 1 MiB: allowed */
  size_t used;
  bus_bytes_t body;
  T_REQUIRE(bus_decoder_feed(&d, prefix, 4, &used, &body) == 0);
  uint8_t chunk[1000];
  memset(chunk, 0x80, sizeof chunk);
  T_REQUIRE(bus_decoder_feed(&d, chunk, sizeof chunk, &used, &body) == 0);
  T_CHECK(d.buf_cap <= 4096);
  for (int i = 0; i < 100; i++) bus_decoder_feed(&d, chunk, sizeof chunk, &used, &body);
  T_CHECK(d.buf_cap <= 2 * 101 * sizeof chunk);
  T_CHECK(d.buf_cap <= (1u << 20));
  T_CHECK(!bus_decoder_idle(&d));
  bus_decoder_deinit(&d);
}

static void test_encode_limits(void) {
  bus_buf_t out;
  bus_buf_init(&out, 1 << 20);
  static uint8_t big[2000];
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = BUS_PUB;
  f.topic = bytes_of("t");
  f.payload = (bus_bytes_t){.ptr = big, .len = sizeof big};
  T_CHECK_EQ_INT(bus_frame_encode(&out, &f, 1000), BUS_E_FRAME_TOO_LARGE);
  T_CHECK_EQ_INT(out.len, 0); /* rolled back */
  bus_buf_t small;
  bus_buf_init(&small, 64);
  T_CHECK_EQ_INT(bus_frame_encode(&small, &f, 1 << 20), BUS_E_LIMIT);
  T_CHECK_EQ_INT(small.len, 0);
  f.type = (bus_frame_type_t)42;
  T_CHECK_EQ_INT(bus_frame_encode(&out, &f, 1 << 20), BUS_E_UNKNOWN_FRAME);
  bus_buf_deinit(&out);
  bus_buf_deinit(&small);
}

/* ------------------------------------------------------------------------ */
/* Headers, names, ids, errors                                              */
/* ------------------------------------------------------------------------ */

static void test_headers(void) {
  bus_buf_t b;
  bus_buf_init(&b, 1 << 16);
  bus_header_t h[3] = {
      {.name = "a", .name_len = 1, .value = "1", .value_len = 1},
      {.name = "trace-id", .name_len = 8, .value = "xyz", .value_len = 3},
      {.name = "empty", .name_len = 5, .value = "", .value_len = 0},
  };
  T_REQUIRE(bus_headers_pack(&b, h, 3) == 0);
  bus_bytes_t all = {.ptr = b.data, .len = (uint32_t)b.len};
  bus_bytes_t v;
  T_CHECK(bus_header_get(all, "trace-id", &v) && bytes_eq(v, bytes_of("xyz")));
  T_CHECK(bus_header_get(all, "empty", &v) && v.len == 0);
  T_CHECK(!bus_header_get(all, "nope", &v));
  bus_header_iter_t it;
  bus_header_iter_init(&it, all);
  bus_bytes_t k;
  int n = 0;
  while (bus_header_next(&it, &k, &v)) n++;
  T_CHECK_EQ_INT(n, 3);
  bus_header_iter_init(&it, (bus_bytes_t){0});
  T_CHECK(!bus_header_next(&it, &k, &v));
  bus_header_t many[BUS_HEADERS_MAX + 1];
  for (int i = 0; i <= BUS_HEADERS_MAX; i++) many[i] = h[0];
  size_t before = b.len;
  T_CHECK_EQ_INT(bus_headers_pack(&b, many, BUS_HEADERS_MAX + 1), BUS_E_LIMIT);
  T_CHECK_EQ_INT(b.len, before);
  bus_buf_deinit(&b);
}

static void test_names(void) {
  T_CHECK(bus_name_valid((const uint8_t *)"payment.requested", 17));
  T_CHECK(bus_name_valid((const uint8_t *)"a-b_C.9", 7));
  T_CHECK(!bus_name_valid((const uint8_t *)".hidden", 7));
  T_CHECK(!bus_name_valid((const uint8_t *)"a/b", 3));
  T_CHECK(!bus_name_valid((const uint8_t *)"", 0));
  char long_name[BUS_NAME_BYTES_MAX + 1];
  memset(long_name, 'a', sizeof long_name);
  T_CHECK(bus_name_valid((const uint8_t *)long_name, BUS_NAME_BYTES_MAX));
  T_CHECK(!bus_name_valid((const uint8_t *)long_name, BUS_NAME_BYTES_MAX + 1));
}

static void test_uuid(void) {
  uint8_t a[16], b[16];
  bus_uuid_v7(a);
  bus_uuid_v7(b);
  T_CHECK(memcmp(a, b, 16) != 0);
  T_CHECK_EQ_INT(a[6] >> 4, 7);
  T_CHECK_EQ_INT(a[8] >> 6, 2);
  char text[37];
  bus_uuid_format(a, text);
  T_CHECK_EQ_INT(strlen(text), 36);
  T_CHECK(text[8] == '-' && text[13] == '-' && text[14] == '7');
}

static void test_strerror(void) {
  bus_strerror_init();
  bus_strerror_init(); /* twice is harmless */
  for (int code = BUS_E_SHUTDOWN; code <= BUS_E_FRAME_TOO_LARGE; code++) {
    T_CHECK(strcmp(bus_strerror(code), "unknown bus error") != 0);
    T_CHECK(strcmp(rt_strerror(code), bus_strerror(code)) == 0);
  }
  T_CHECK(strcmp(bus_strerror(-ENOMEM), rt_strerror(-ENOMEM)) == 0);
  T_CHECK_STR(bus_frame_type_name(BUS_DELIVER), "DELIVER");
  T_CHECK_STR(bus_frame_type_name(99), "?");
}

int main(void) {
  T_RUN(test_round_trip_every_type);
  T_RUN(test_split_everywhere);
  T_RUN(test_msgpack_c_reads_ours);
  T_RUN(test_ours_reads_msgpack_c);
  T_RUN(test_corpus);
  T_RUN(test_prefix_checked_first);
  T_RUN(test_memory_follows_bytes);
  T_RUN(test_encode_limits);
  T_RUN(test_headers);
  T_RUN(test_names);
  T_RUN(test_uuid);
  T_RUN(test_strerror);
  return t_done();
}
