/*
 * The HSTS line goes after the status line of every response in a stream,
 * whatever the bodies hold and however the stream is split; bodyless
 * statuses are followed correctly; what is not a response stream fails.
 */
#include "gw.h"
#include "t.h"

static char got[8192];
static size_t got_len;

static int sink(void *ctx, const char *data, size_t len) {
  if (got_len + len > sizeof got) return -1;
  memcpy(got + got_len, data, len);
  got_len += len;
  return 0;
}

static const char lines[] = "Strict-Transport-Security: max-age=1\r\n";

/* Three responses: a body that looks like a response head, a 204 without
 * a body, and a 200 whose body has an empty line in it. */
static const char stream[] =
    "HTTP/1.1 200 OK\r\nContent-Length: 38\r\nContent-Type: text/plain\r\n\r\n"
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nX-Request-Id: a\r\n\r\n"
    "HTTP/1.1 404 Not Found\r\ncontent-length:  4 \r\n\r\n\r\n\r\n";

static const char want[] =
    "HTTP/1.1 200 OK\r\nStrict-Transport-Security: max-age=1\r\nContent-Length: 38\r\n"
    "Content-Type: text/plain\r\n\r\n"
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
    "HTTP/1.1 204 No Content\r\nStrict-Transport-Security: max-age=1\r\nX-Request-Id: a\r\n\r\n"
    "HTTP/1.1 404 Not Found\r\nStrict-Transport-Security: max-age=1\r\ncontent-length:  4 \r\n"
    "\r\n\r\n\r\n";

static void test_whole_stream(void) {
  gw_inject_t in;
  gw_inject_init(&in, lines);
  got_len = 0;
  T_CHECK_EQ_INT(gw_inject_push(&in, stream, sizeof stream - 1, sink, NULL), 0);
  T_CHECK_EQ_INT(got_len, sizeof want - 1);
  T_CHECK(got_len == sizeof want - 1 && memcmp(got, want, got_len) == 0);
}

static void test_every_split(void) {
  /* Byte by byte, and every two-piece split: the same output. */
  gw_inject_t in;
  gw_inject_init(&in, lines);
  got_len = 0;
  for (size_t i = 0; i < sizeof stream - 1; i++) T_REQUIRE(gw_inject_push(&in, stream + i, 1, sink, NULL) == 0);
  T_CHECK(got_len == sizeof want - 1 && memcmp(got, want, got_len) == 0);
  int bad = 0;
  for (size_t cut = 1; cut < sizeof stream - 1; cut++) {
    gw_inject_init(&in, lines);
    got_len = 0;
    gw_inject_push(&in, stream, cut, sink, NULL);
    gw_inject_push(&in, stream + cut, sizeof stream - 1 - cut, sink, NULL);
    bad += got_len != sizeof want - 1 || memcmp(got, want, got_len) != 0;
  }
  T_CHECK_EQ_INT(bad, 0);
}

static void test_not_a_response(void) {
  gw_inject_t in;
  gw_inject_init(&in, lines);
  got_len = 0;
  const char junk[] = "hello there\r\n\r\n";
  T_CHECK_EQ_INT(gw_inject_push(&in, junk, sizeof junk - 1, sink, NULL), GW_E_TLS);
  gw_inject_init(&in, lines);
  const char bad_cl[] = "HTTP/1.1 200 OK\r\nContent-Length: 1x\r\n\r\n";
  T_CHECK_EQ_INT(gw_inject_push(&in, bad_cl, sizeof bad_cl - 1, sink, NULL), GW_E_TLS);
}

static void test_no_lines(void) {
  gw_inject_t in;
  gw_inject_init(&in, NULL);
  got_len = 0;
  T_CHECK_EQ_INT(gw_inject_push(&in, stream, sizeof stream - 1, sink, NULL), 0);
  T_CHECK(got_len == sizeof stream - 1 && memcmp(got, stream, got_len) == 0);
}

int main(void) {
  T_RUN(test_whole_stream);
  T_RUN(test_every_split);
  T_RUN(test_not_a_response);
  T_RUN(test_no_lines);
  return t_done();
}
