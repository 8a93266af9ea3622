/*
 * test_bus_proto.c - busd's answers to hostile or wrong frames, over raw
 * sockets: each gets one ERR with the right code, then the connection is
 * closed (EOF after the ERR, not a reset); busd stays ready and counts the
 * errors. Also HELLO's answer and PING/PONG.
 *
 * usage: test_bus_proto BUSD
 */
#include <netinet/in.h>
#include <sys/socket.h>

#include "harness.h"
#include "t.h"

static busd_proc_t busd;

static int dial(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(busd.port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    close(fd);
    return -1;
  }
  return fd;
}

static void send_frame(int fd, const bus_frame_t *f) {
  bus_buf_t b;
  bus_buf_init(&b, 1 << 20);
  if (bus_frame_encode(&b, f, 1 << 20) == 0) (void)!write(fd, b.data, b.len);
  bus_buf_deinit(&b);
}

static void send_hello(int fd, uint32_t version) {
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = BUS_HELLO;
  f.version = version;
  f.name = (bus_bytes_t){.ptr = (const uint8_t *)"raw", .len = 3};
  send_frame(fd, &f);
}

/* One connection's reader: bytes read but not yet decoded, and the decoder. */
typedef struct reader {
  int fd;
  uint8_t buf[65536];
  size_t have;
  size_t used;
  bus_decoder_t dec;
} reader_t;

static reader_t *reader_open(void) {
  static reader_t r;
  bus_decoder_deinit(&r.dec);
  memset(&r, 0, sizeof r);
  r.fd = dial();
  bus_decoder_init(&r.dec, NULL);
  return r.fd >= 0 ? &r : NULL;
}

static void reader_close(reader_t *r) {
  bus_decoder_deinit(&r->dec);
  close(r->fd);
}

/* Reads frames until one of `type` arrives (decoded into *out, whose
 * slices point into the reader). False on EOF, error or timeout. */
static bool read_frame(reader_t *r, bus_frame_type_t type, bus_frame_t *out) {
  for (int turns = 0; turns < 100; turns++) {
    while (r->used < r->have) {
      size_t n;
      bus_bytes_t body;
      if (bus_decoder_feed(&r->dec, r->buf + r->used, r->have - r->used, &n, &body) < 0)
        return false;
      r->used += n;
      if (body.ptr != NULL && bus_frame_decode(body.ptr, body.len, NULL, out) == 0 &&
          out->type == type)
        return true;
    }
    r->have = r->used = 0;
    ssize_t got = read(r->fd, r->buf, sizeof r->buf);
    if (got <= 0) return false;
    r->have = (size_t)got;
  }
  return false;
}

/* After an ERR busd closes: the next read is a clean EOF. */
static bool closed_cleanly(int fd) {
  uint8_t b[4096];
  for (int i = 0; i < 100; i++) {
    ssize_t r = read(fd, b, sizeof b);
    if (r == 0) return true;
    if (r < 0) return false;
  }
  return false;
}

static int expect_err(reader_t *r) {
  bus_frame_t f;
  if (!read_frame(r, BUS_ERR, &f)) return 0;
  return f.code;
}

static void test_hello_and_ping(void) {
  reader_t *r = reader_open();
  T_REQUIRE(r != NULL);
  int fd = r->fd;
  send_hello(fd, BUS_PROTOCOL_VERSION);
  bus_frame_t f;
  T_REQUIRE(read_frame(r, BUS_HELLO, &f));
  T_CHECK_EQ_INT(f.version, BUS_PROTOCOL_VERSION);
  T_CHECK(f.name.len == 4 && memcmp(f.name.ptr, "busd", 4) == 0);
  bus_frame_t ping;
  memset(&ping, 0, sizeof ping);
  ping.type = BUS_PING;
  ping.seq = 424242;
  send_frame(fd, &ping);
  T_REQUIRE(read_frame(r, BUS_PONG, &f));
  T_CHECK(f.seq == 424242);
  reader_close(r);
}

static void test_wrong_version(void) {
  reader_t *r = reader_open();
  T_REQUIRE(r != NULL);
  int fd = r->fd;
  send_hello(fd, 2);
  T_CHECK_EQ_INT(expect_err(r), BUS_E_VERSION);
  T_CHECK(closed_cleanly(fd));
  reader_close(r);
}

static void test_pub_before_hello(void) {
  reader_t *r = reader_open();
  T_REQUIRE(r != NULL);
  int fd = r->fd;
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = BUS_PUB;
  f.topic = (bus_bytes_t){.ptr = (const uint8_t *)"t", .len = 1};
  f.has_id = true;
  f.payload = (bus_bytes_t){.ptr = (const uint8_t *)"x", .len = 1};
  send_frame(fd, &f);
  T_CHECK_EQ_INT(expect_err(r), BUS_E_STATE);
  T_CHECK(closed_cleanly(fd));
  reader_close(r);
}

static void test_prefix_over_limit(void) {
  reader_t *r = reader_open();
  T_REQUIRE(r != NULL);
  int fd = r->fd;
  send_hello(fd, BUS_PROTOCOL_VERSION);
  const uint8_t huge[4] = {0x7f, 0xff, 0xff, 0xff};
  T_REQUIRE(write(fd, huge, 4) == 4);
  T_CHECK_EQ_INT(expect_err(r), BUS_E_FRAME_TOO_LARGE);
  T_CHECK(closed_cleanly(fd));
  reader_close(r);
}

/* A PUB whose data is a bin32 claiming 4 GiB, inside a 40-byte frame. */
static void test_bin_4gib(void) {
  reader_t *r = reader_open();
  T_REQUIRE(r != NULL);
  int fd = r->fd;
  send_hello(fd, BUS_PROTOCOL_VERSION);
  static const uint8_t body[] = {
      0x84, 0xa1, 't', 0x02, 0xa5, 't', 'o', 'p', 'i', 'c', 0xa1, 'x',
      0xa2, 'i', 'd', 0xc4, 0x10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
      0xa4, 'd', 'a', 't', 'a', 0xc6, 0xff, 0xff, 0xff, 0xff, 'z'};
  uint8_t frame[4 + sizeof body] = {0, 0, 0, (uint8_t)sizeof body};
  memcpy(frame + 4, body, sizeof body);
  T_REQUIRE(write(fd, frame, sizeof frame) == (ssize_t)sizeof frame);
  T_CHECK_EQ_INT(expect_err(r), BUS_E_LENGTH);
  T_CHECK(closed_cleanly(fd));
  reader_close(r);
}

static void test_still_ready(void) {
  char body[256];
  T_CHECK_EQ_INT(http_get(busd.http_port, "/readyz", body, sizeof body), 200);
  T_CHECK_EQ_INT(http_get(busd.http_port, "/healthz", body, sizeof body), 200);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_protocol_errors_total"), 4);
  T_CHECK_EQ_INT(busd_metric(&busd, "busd_published_total"), 0);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_bus_proto BUSD\n");
    return 2;
  }
  rt_log_init("test_bus_proto", RT_LOG_ERROR, NULL, 0);
  bus_strerror_init();
  if (busd_init(&busd, argv[1]) < 0) return 1;
  if (busd_start(&busd, true) < 0) {
    fprintf(stderr, "busd did not start\n");
    busd_cleanup(&busd);
    return 1;
  }
  T_RUN(test_hello_and_ping);
  T_RUN(test_wrong_version);
  T_RUN(test_pub_before_hello);
  T_RUN(test_prefix_over_limit);
  T_RUN(test_bin_4gib);
  T_RUN(test_still_ready);
  T_CHECK_EQ_INT(busd_stop(&busd, SIGTERM), 0);
  busd_cleanup(&busd);
  return t_done();
}
