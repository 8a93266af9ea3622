/*
 * test_http_parser.c - the HTTP/1.1 parser: messages, pipelining,
 * keep-alive, the smuggling corpus (corpus/, see its README), limits just
 * under and just over, and responses.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"
#include "t.h"

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

#define GOT_MAX 8
#define GOT_TEXT 256

/* Copies of the messages a run produced (a message dies at next()). */
typedef struct got {
  int count;
  int method[GOT_MAX];
  char method_name[GOT_MAX][16];
  char target[GOT_MAX][GOT_TEXT];
  char path[GOT_MAX][GOT_TEXT];
  char query[GOT_MAX][GOT_TEXT];
  char reason[GOT_MAX][GOT_TEXT];
  char body[GOT_MAX][GOT_TEXT];
  char x_test[GOT_MAX][GOT_TEXT]; /* the X-Test header, or "(none)" */
  size_t body_len[GOT_MAX];
  bool body_nul[GOT_MAX];         /* body[body_len] == 0 */
  int status[GOT_MAX];
  int minor[GOT_MAX];
  bool keep_alive[GOT_MAX];
  bool chunked[GOT_MAX];
  uint32_t headers_count[GOT_MAX];
} got_t;

static void copy_text(char *dst, const char *src) {
  snprintf(dst, GOT_TEXT, "%s", src);
}

static void got_add(got_t *g, const http_msg_t *m) {
  if (g->count == GOT_MAX) return;
  int i = g->count++;
  g->method[i] = m->method;
  snprintf(g->method_name[i], sizeof(g->method_name[i]), "%s", m->method_name);
  copy_text(g->target[i], m->target);
  copy_text(g->path[i], m->path);
  copy_text(g->query[i], m->query);
  copy_text(g->reason[i], m->reason);
  copy_text(g->body[i], m->body);
  const char *x = http_msg_header(m, "x-test");
  copy_text(g->x_test[i], x ? x : "(none)");
  g->body_len[i] = m->body_len;
  g->body_nul[i] = m->body[m->body_len] == '\0';
  g->status[i] = m->status;
  g->minor[i] = m->http_minor;
  g->keep_alive[i] = m->keep_alive;
  g->chunked[i] = m->chunked;
  g->headers_count[i] = m->headers_count;
}

/* Feeds data in pieces of `step` bytes (0: all at once), handing out every
 * message and going on after it, as a connection would. Returns the first
 * error, or 0. */
static int feed_steps(http_parser_t *p, const char *data, size_t len,
                      size_t step, got_t *g) {
  size_t off = 0;
  for (size_t round = 0; round < 2 * len + 16 && off < len; round++) {
    size_t piece = len - off;
    if (step && piece > step) piece = step;
    size_t used = 0;
    http_msg_t *m = NULL;
    int rc = http_parser_feed(p, data + off, piece, &used, &m);
    if (rc) return rc;
    off += used;
    if (m) {
      got_add(g, m);
      http_parser_next(p);
    } else if (used != piece) {
      return -EPROTO; /* no message, yet not everything consumed */
    }
  }
  return off == len ? 0 : -EPROTO;
}

/* One fresh parser over data. */
static int run(http_kind_t kind, const http_limits_t *limits, const char *data,
               size_t len, size_t step, got_t *g) {
  http_parser_t p;
  memset(g, 0, sizeof(*g));
  int rc = http_parser_init(&p, kind, limits);
  if (rc) return rc;
  rc = feed_steps(&p, data, len, step, g);
  http_parser_deinit(&p);
  return rc;
}

static int run_str(const char *s, size_t step, got_t *g) {
  return run(HTTP_KIND_REQUEST, NULL, s, strlen(s), step, g);
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

static void test_simple_get(void) {
  got_t g;
  int rc = run_str("GET /v1/accounts/42?limit=10&cursor=ab HTTP/1.1\r\n"
                   "Host: api.example\r\nX-Test:  spaced  \r\n\r\n", 0, &g);
  T_CHECK_EQ_INT(rc, 0);
  T_REQUIRE(g.count == 1);
  T_CHECK_EQ_INT(g.method[0], HTTP_GET);
  T_CHECK_STR(g.method_name[0], "GET");
  T_CHECK_STR(g.target[0], "/v1/accounts/42?limit=10&cursor=ab");
  T_CHECK_STR(g.path[0], "/v1/accounts/42");
  T_CHECK_STR(g.query[0], "limit=10&cursor=ab");
  T_CHECK_STR(g.x_test[0], "spaced"); /* OWS trimmed both sides */
  T_CHECK_EQ_INT(g.headers_count[0], 2);
  T_CHECK_EQ_INT(g.body_len[0], 0);
  T_CHECK_STR(g.body[0], "");
  T_CHECK(g.keep_alive[0]);
  T_CHECK(!g.chunked[0]);
  T_CHECK_EQ_INT(g.minor[0], 1);
  T_CHECK_EQ_INT(g.status[0], 0);
}

static void test_query_forms(void) {
  got_t g;
  T_CHECK_EQ_INT(run_str("GET /a HTTP/1.1\r\nHost: a\r\n\r\n", 0, &g), 0);
  T_CHECK_STR(g.query[0], "");
  T_CHECK_STR(g.path[0], "/a");
  T_CHECK_EQ_INT(run_str("GET /a? HTTP/1.1\r\nHost: a\r\n\r\n", 0, &g), 0);
  T_CHECK_STR(g.path[0], "/a");
  T_CHECK_STR(g.query[0], "");
  /* Not decoded: the router and handlers see what the client sent. */
  T_CHECK_EQ_INT(run_str("GET /a%2Fb?x=%20 HTTP/1.1\r\nHost: a\r\n\r\n", 0, &g), 0);
  T_CHECK_STR(g.path[0], "/a%2Fb");
  T_CHECK_STR(g.query[0], "x=%20");
  T_CHECK_EQ_INT(run_str("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", 0, &g), 0);
  T_CHECK_STR(g.path[0], "*");
}

static void test_header_lookup(void) {
  http_parser_t p;
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_REQUEST, NULL) == 0);
  const char *req = "GET / HTTP/1.1\r\nHost: a\r\nContent-TYPE: text/plain\r\n"
                    "X-Empty:\r\nX-Dup: 1\r\nx-dup: 2\r\n\r\n";
  size_t used = 0;
  http_msg_t *m = NULL;
  T_CHECK_EQ_INT(http_parser_feed(&p, req, strlen(req), &used, &m), 0);
  T_REQUIRE(m != NULL);
  T_CHECK_STR(http_msg_header(m, "content-type"), "text/plain");
  T_CHECK_STR(http_msg_header(m, "CONTENT-TYPE"), "text/plain");
  T_CHECK_STR(http_msg_header(m, "x-empty"), "");
  T_CHECK_STR(http_msg_header(m, "X-Dup"), "1"); /* the first one */
  T_CHECK(http_msg_header(m, "x-absent") == NULL);
  T_CHECK(http_msg_header(m, "content-typ") == NULL);
  T_CHECK_EQ_INT(m->headers[1].name_len, 12);
  T_CHECK_STR(m->headers[1].name, "Content-TYPE");
  T_CHECK_EQ_INT(m->headers[1].value_len, 10);
  http_parser_deinit(&p);
}

static void test_post_content_length(void) {
  got_t g;
  const char *req = "POST /v1/transfers HTTP/1.1\r\nHost: a\r\n"
                    "Content-Length: 13\r\n\r\n{\"amount\":10}";
  size_t steps[] = {0, 1, 2, 5, 13};
  for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
    T_CHECK_EQ_INT(run_str(req, steps[i], &g), 0);
    T_REQUIRE(g.count == 1);
    T_CHECK_EQ_INT(g.method[0], HTTP_POST);
    T_CHECK_STR(g.body[0], "{\"amount\":10}");
    T_CHECK_EQ_INT(g.body_len[0], 13);
    T_CHECK(g.body_nul[0]);
    T_CHECK(!g.chunked[0]);
  }
}

static void test_chunked_small_feeds(void) {
  const char *req = "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
                    "X-Test: head\r\n\r\n"
                    "5\r\nhello\r\n1;name=val\r\n \r\n"
                    "6\r\nworld!\r\n0\r\nX-Test: trailer\r\n\r\n";
  for (size_t step = 0; step <= 9; step++) { /* 0 = all at once, 1 = bytewise */
    got_t g;
    T_CHECK_EQ_INT(run_str(req, step, &g), 0);
    T_REQUIRE(g.count == 1);
    T_CHECK_STR(g.body[0], "hello world!");
    T_CHECK_EQ_INT(g.body_len[0], 12);
    T_CHECK(g.body_nul[0]);
    T_CHECK(g.chunked[0]);
    T_CHECK(g.keep_alive[0]);
    /* Trailers are checked and counted but never join the headers. */
    T_CHECK_STR(g.x_test[0], "head");
    T_CHECK_EQ_INT(g.headers_count[0], 3);
  }
}

static void test_pipelining(void) {
  const char *reqs = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
                     "POST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc"
                     "GET /3 HTTP/1.1\r\nHost: a\r\nX-Test: three\r\n\r\n";
  size_t steps[] = {0, 1, 7};
  for (size_t i = 0; i < 3; i++) {
    got_t g;
    T_CHECK_EQ_INT(run_str(reqs, steps[i], &g), 0);
    T_REQUIRE(g.count == 3);
    T_CHECK_STR(g.path[0], "/1");
    T_CHECK_STR(g.path[1], "/2");
    T_CHECK_STR(g.body[1], "abc");
    T_CHECK_STR(g.path[2], "/3");
    T_CHECK_STR(g.body[2], ""); /* the body buffer was reused and reset */
    T_CHECK_STR(g.x_test[2], "three");
    T_CHECK_STR(g.x_test[0], "(none)");
  }
}

/* One message per feed: feed stops right after the first one. */
static void test_pipelining_consumed(void) {
  const char *first = "GET /1 HTTP/1.1\r\nHost: a\r\n\r\n";
  char buf[256];
  snprintf(buf, sizeof(buf), "%sGET /2 HTTP/1.1\r\nHost: a\r\n\r\n", first);
  http_parser_t p;
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_REQUEST, NULL) == 0);
  size_t used = 0;
  http_msg_t *m = NULL;
  T_CHECK_EQ_INT(http_parser_feed(&p, buf, strlen(buf), &used, &m), 0);
  T_REQUIRE(m != NULL);
  T_CHECK_EQ_INT(used, strlen(first));
  T_CHECK_STR(m->path, "/1");
  /* Feeding again without next() is a caller bug, reported as such. */
  size_t used2 = 0;
  http_msg_t *m2 = NULL;
  T_CHECK_EQ_INT(http_parser_feed(&p, buf + used, strlen(buf) - used, &used2, &m2),
                 HTTP_E_STATE);
  T_CHECK(m2 == NULL);
  http_parser_next(&p);
  T_CHECK(http_parser_idle(&p));
  T_CHECK_EQ_INT(http_parser_feed(&p, buf + used, strlen(buf) - used, &used2, &m2), 0);
  T_REQUIRE(m2 != NULL);
  T_CHECK_STR(m2->path, "/2");
  T_CHECK_EQ_INT(used + used2, strlen(buf));
  http_parser_deinit(&p);
}

static void test_keep_alive(void) {
  got_t g;
  T_CHECK_EQ_INT(run_str("GET / HTTP/1.1\r\nHost: a\r\n\r\n", 0, &g), 0);
  T_CHECK(g.keep_alive[0]);
  T_CHECK_EQ_INT(run_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", 0, &g), 0);
  T_CHECK(!g.keep_alive[0]);
  T_CHECK_EQ_INT(run_str("GET / HTTP/1.0\r\n\r\n", 0, &g), 0);
  T_CHECK(!g.keep_alive[0]);
  T_CHECK_EQ_INT(g.minor[0], 0);
  T_CHECK_EQ_INT(run_str("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 0, &g), 0);
  T_CHECK(g.keep_alive[0]);
  T_CHECK_EQ_INT(run_str("GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, Close\r\n\r\n", 0, &g), 0);
  T_CHECK(!g.keep_alive[0]);
  /* Nothing after a closing request becomes a message (loose llhttp drops
   * the bytes, strict llhttp refuses them); the server closes anyway. */
  int rc = run_str("GET /1 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
                   "GET /2 HTTP/1.1\r\nHost: a\r\n\r\n", 0, &g);
  T_CHECK(rc == 0 || rc == HTTP_E_BAD_REQUEST);
  T_CHECK_EQ_INT(g.count, 1);
  T_CHECK_STR(g.path[0], "/1");
}

/* We never switch protocols: the Upgrade is ignored and the connection goes
 * on as HTTP/1.1 (RFC 9110 7.8). */
static void test_upgrade_ignored(void) {
  got_t g;
  const char *reqs = "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                     "Upgrade: websocket\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
  for (size_t step = 0; step <= 1; step++) {
    T_CHECK_EQ_INT(run_str(reqs, step, &g), 0);
    T_REQUIRE(g.count == 2);
    T_CHECK_STR(g.path[0], "/ws");
    T_CHECK_STR(g.path[1], "/next");
  }
}

static void test_states(void) {
  http_parser_t p;
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_REQUEST, NULL) == 0);
  T_CHECK(http_parser_idle(&p));
  T_CHECK(!http_parser_in_headers(&p));
  size_t used = 0;
  http_msg_t *m = NULL;
  const char *head = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n";
  T_CHECK_EQ_INT(http_parser_feed(&p, head, strlen(head), &used, &m), 0);
  T_CHECK(m == NULL);
  T_CHECK_EQ_INT(used, strlen(head));
  T_CHECK(!http_parser_idle(&p));
  T_CHECK(http_parser_in_headers(&p));
  T_CHECK_EQ_INT(http_parser_feed(&p, "\r\nh", 3, &used, &m), 0);
  T_CHECK(!http_parser_in_headers(&p)); /* in the body now */
  T_CHECK(!http_parser_idle(&p));
  T_CHECK_EQ_INT(http_parser_feed(&p, "i", 1, &used, &m), 0);
  T_REQUIRE(m != NULL);
  T_CHECK_STR(m->body, "hi");
  http_parser_next(&p);
  T_CHECK(http_parser_idle(&p));
  /* An error sticks: the connection is dead. */
  T_CHECK_EQ_INT(http_parser_feed(&p, "GET / HTTP/1.1\n", 15, &used, &m), HTTP_E_BAD_REQUEST);
  T_CHECK(m == NULL);
  T_CHECK(strlen(http_parser_error_reason(&p)) > 0);
  T_CHECK_EQ_INT(http_parser_feed(&p, "GET / HTTP/1.1\r\n", 16, &used, &m), HTTP_E_BAD_REQUEST);
  http_parser_deinit(&p);
}

static void test_init_and_status(void) {
  http_parser_t p;
  http_limits_t l;
  http_limits_defaults(&l);
  T_CHECK_EQ_INT(l.header_bytes_max, 8192);
  T_CHECK_EQ_INT(l.headers_count_max, 64);
  T_CHECK_EQ_INT(l.url_bytes_max, 2048);
  T_CHECK_EQ_INT(l.body_bytes_max, 1 << 20);
  l.headers_count_max = 0;
  T_CHECK_EQ_INT(http_parser_init(&p, HTTP_KIND_REQUEST, &l), -EINVAL);
  T_CHECK_EQ_INT(http_parser_init(&p, (http_kind_t)7, NULL), -EINVAL);
  http_parser_deinit(&p); /* safe after a failed init */
  T_CHECK_EQ_INT(http_parser_error_status(HTTP_E_BAD_REQUEST), 400);
  T_CHECK_EQ_INT(http_parser_error_status(HTTP_E_BODY_TOO_LARGE), 413);
  T_CHECK_EQ_INT(http_parser_error_status(HTTP_E_URL_TOO_LONG), 414);
  T_CHECK_EQ_INT(http_parser_error_status(HTTP_E_HEADERS_TOO_LARGE), 431);
  T_CHECK_EQ_INT(http_parser_error_status(HTTP_E_HEADERS_TOO_MANY), 431);
  T_CHECK_EQ_INT(http_parser_error_status(HTTP_E_UNSUPPORTED), 501);
  T_CHECK_EQ_INT(http_parser_error_status(HTTP_E_VERSION), 505);
  T_CHECK_EQ_INT(http_parser_error_status(-ENOMEM), 503);
  T_CHECK(strstr(http_strerror(HTTP_E_URL_TOO_LONG), "too long") != NULL);
  T_CHECK(strcmp(http_strerror(-ENOMEM), strerror(ENOMEM)) == 0);
}

/* ------------------------------------------------------------------------ */
/* Smuggling corpus                                                         */
/* ------------------------------------------------------------------------ */

static int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Decodes the escaped request text of a corpus file (see corpus/README).
 * Returns the decoded length, or -1 when the file is malformed. */
static long corpus_decode(const char *src, size_t n, char *out, size_t cap) {
  size_t o = 0;
  for (size_t i = 0; i < n && o < cap; i++) {
    char c = src[i];
    if (c == '\n' || c == '\r') continue;
    if (c != '\\') {
      out[o++] = c;
      continue;
    }
    if (++i == n) return -1;
    switch (src[i]) {
      case 'r': out[o++] = '\r'; break;
      case 'n': out[o++] = '\n'; break;
      case 't': out[o++] = '\t'; break;
      case '0': out[o++] = '\0'; break;
      case '\\': out[o++] = '\\'; break;
      case 'x': {
        if (i + 2 >= n) return -1;
        int hi = hex_digit(src[i + 1]), lo = hex_digit(src[i + 2]);
        if (hi < 0 || lo < 0) return -1;
        out[o++] = (char)(hi * 16 + lo);
        i += 2;
        break;
      }
      default: return -1;
    }
  }
  return (long)o;
}

/* The status the parser leads to: its error's, or 200 for exactly one
 * clean message. */
static int status_of(const char *data, size_t len, size_t step) {
  got_t g;
  int rc = run(HTTP_KIND_REQUEST, NULL, data, len, step, &g);
  if (rc) return http_parser_error_status(rc);
  return g.count == 1 ? 200 : 0;
}

/* Reads one corpus file; returns 0 and sets *expect and the request. */
static int corpus_load(const char *path, int *expect, char *req, size_t cap,
                       size_t *req_len) {
  char raw[8192];
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -1;
  size_t n = fread(raw, 1, sizeof(raw) - 1, f);
  fclose(f);
  raw[n] = '\0';
  *expect = 0;
  size_t i = 0;
  while (i < n && raw[i] == '#') { /* comment lines, one of them "expect" */
    const char *line = raw + i;
    const char *e = strstr(line, "# expect: ");
    const char *eol = strchr(line, '\n');
    if (eol == NULL) return -1;
    if (e == line) *expect = atoi(line + strlen("# expect: "));
    i = (size_t)(eol - raw) + 1;
  }
  long len = corpus_decode(raw + i, n - i, req, cap);
  if (len <= 0 || *expect == 0) return -1;
  *req_len = (size_t)len;
  return 0;
}

static int name_cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_corpus(void) {
  const char *dir = getenv("HTTP_CORPUS_DIR");
  T_REQUIRE(dir != NULL);
  DIR *d = opendir(dir);
  T_REQUIRE(d != NULL);
  char *names[256];
  size_t count = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL && count < 256) {
    size_t n = strlen(e->d_name);
    if (n > 4 && strcmp(e->d_name + n - 4, ".txt") == 0) names[count++] = strdup(e->d_name);
  }
  closedir(d);
  qsort(names, count, sizeof(names[0]), name_cmp);
  T_CHECK(count >= 50); /* the corpus is there, not silently empty */
  size_t refused = 0;
  for (size_t i = 0; i < count; i++) {
    char path[1024], req[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
    int expect = 0;
    size_t len = 0;
    int ok = corpus_load(path, &expect, req, sizeof(req), &len);
    T_CHECK_EQ_INT(ok, 0);
    int whole = status_of(req, len, 0);
    int bytewise = status_of(req, len, 1);
    if (whole != expect || bytewise != expect) {
      fprintf(stderr, "corpus %s: expected %d, whole %d, bytewise %d\n",
              names[i], expect, whole, bytewise);
    }
    T_CHECK_EQ_INT(whole, expect);
    T_CHECK_EQ_INT(bytewise, expect);
    if (expect != 200) refused++;
    free(names[i]);
  }
  T_CHECK(refused >= 45);
}

/* ------------------------------------------------------------------------ */
/* Limits                                                                   */
/* ------------------------------------------------------------------------ */

static http_limits_t small_limits(void) {
  http_limits_t l;
  http_limits_defaults(&l);
  l.header_bytes_max = 100;
  l.body_bytes_max = 1000;
  return l;
}

/* Counted bytes: method, target, version ("1.1"), names, values.
 * "GET /x HTTP/1.1", "Host: a", "X-Pad: <pad>" count 3+2+3 + 4+1 + 5+pad. */
static int header_bytes_case(uint32_t pad) {
  http_limits_t l = small_limits();
  char req[512], fill[256];
  memset(fill, 'p', pad);
  fill[pad] = '\0';
  snprintf(req, sizeof(req), "GET /x HTTP/1.1\r\nHost: a\r\nX-Pad: %s\r\n\r\n", fill);
  got_t g;
  int rc = run(HTTP_KIND_REQUEST, &l, req, strlen(req), 0, &g);
  return rc ? rc : g.count;
}

static void test_limit_header_bytes(void) {
  T_CHECK_EQ_INT(header_bytes_case(82), 1); /* exactly 100 */
  T_CHECK_EQ_INT(header_bytes_case(83), HTTP_E_HEADERS_TOO_LARGE);
  T_CHECK_EQ_INT(http_parser_error_status(header_bytes_case(83)), 431);
}

/* A huge header is refused while it streams, long before its end. */
static void test_limit_header_streaming(void) {
  http_parser_t p;
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_REQUEST, NULL) == 0);
  size_t used = 0;
  http_msg_t *m = NULL;
  const char *start = "GET / HTTP/1.1\r\nHost: a\r\nX-Big: ";
  T_CHECK_EQ_INT(http_parser_feed(&p, start, strlen(start), &used, &m), 0);
  char chunk[1024];
  memset(chunk, 'a', sizeof(chunk));
  int rc = 0;
  int rounds = 0;
  while (rc == 0 && rounds < 1000) {
    rc = http_parser_feed(&p, chunk, sizeof(chunk), &used, &m);
    rounds++;
  }
  T_CHECK_EQ_INT(rc, HTTP_E_HEADERS_TOO_LARGE);
  T_CHECK(rounds <= 9); /* 8 KiB of limit, 1 KiB per feed */
  http_parser_deinit(&p);
}

/* Feeds `start` once, then `unit` until the parser refuses (at most 1000
 * times); returns the error and the number of repeats. */
static int flood(const char *start, const char *unit, int *repeats) {
  http_parser_t p;
  if (http_parser_init(&p, HTTP_KIND_REQUEST, NULL) != 0) return -ENOMEM;
  size_t used = 0;
  http_msg_t *m = NULL;
  int rc = http_parser_feed(&p, start, strlen(start), &used, &m);
  for (*repeats = 0; rc == 0 && *repeats < 1000; (*repeats)++) {
    rc = http_parser_feed(&p, unit, strlen(unit), &used, &m);
  }
  http_parser_deinit(&p);
  return rc;
}

/* Bytes that are not content (leading OWS, empty lines before the request
 * line) are not counted by header_bytes_max, but they cannot stream forever:
 * a line is at most header_bytes_max, the raw head at most
 * 2 * 8192 + 4 * 64 + 16 = 16656 bytes. */
static void test_limit_raw_head(void) {
  static char spaces[1025];
  memset(spaces, ' ', 1024);
  int n = 0;
  /* One endless run of whitespace: the line limit. */
  T_CHECK_EQ_INT(flood("GET / HTTP/1.1\r\nHost: a\r\nX-Ws:", spaces, &n),
                 HTTP_E_HEADERS_TOO_LARGE);
  T_CHECK(n <= 9);
  /* Empty lines before the request line, which llhttp skips forever. */
  const char *crlf16 = "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n"
                       "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";
  T_CHECK_EQ_INT(flood("", crlf16, &n), HTTP_E_HEADERS_TOO_LARGE);
  T_CHECK_EQ_INT(n, 521); /* 32 * 521 > 16656 >= 32 * 520 */
  /* Short field lines padded with whitespace: each line is fine, the head
   * is not. */
  static char padded[1100];
  snprintf(padded, sizeof(padded), "X-P:%sv\r\n", spaces);
  T_CHECK_EQ_INT(flood("GET / HTTP/1.1\r\nHost: a\r\n", padded, &n),
                 HTTP_E_HEADERS_TOO_LARGE);
  T_CHECK(n >= 15 && n <= 17);
}

static int header_count_case(int extra) {
  char req[8192];
  int n = snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: a\r\n");
  for (int i = 0; i < extra; i++) {
    n += snprintf(req + n, sizeof(req) - (size_t)n, "X-H%02d: v\r\n", i);
  }
  snprintf(req + n, sizeof(req) - (size_t)n, "\r\n");
  got_t g;
  int rc = run(HTTP_KIND_REQUEST, NULL, req, strlen(req), 0, &g);
  return rc ? rc : (int)g.headers_count[0];
}

static void test_limit_header_count(void) {
  T_CHECK_EQ_INT(header_count_case(63), 64); /* Host + 63 = the limit */
  T_CHECK_EQ_INT(header_count_case(64), HTTP_E_HEADERS_TOO_MANY);
  T_CHECK_EQ_INT(http_parser_error_status(header_count_case(64)), 431);
}

static int url_case(size_t len) {
  static char req[4096];
  char target[3000];
  target[0] = '/';
  memset(target + 1, 'u', len - 1);
  target[len] = '\0';
  snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", target);
  got_t g;
  int rc = run(HTTP_KIND_REQUEST, NULL, req, strlen(req), 0, &g);
  if (rc) return rc;
  return strlen(g.target[0]) == (len < GOT_TEXT ? len : GOT_TEXT - 1) ? g.count : -1;
}

static void test_limit_url(void) {
  T_CHECK_EQ_INT(url_case(2048), 1);
  T_CHECK_EQ_INT(url_case(2049), HTTP_E_URL_TOO_LONG);
  T_CHECK_EQ_INT(http_parser_error_status(url_case(2049)), 414);
}

static int body_cl_case(size_t len, bool send_body) {
  static char req[1200];
  int n = snprintf(req, sizeof(req), "POST / HTTP/1.1\r\nHost: a\r\n"
                                     "Content-Length: %zu\r\n\r\n", len);
  size_t total = (size_t)n;
  if (send_body) {
    memset(req + n, 'b', len);
    total += len;
  }
  http_limits_t l = small_limits();
  l.header_bytes_max = 8192;
  got_t g;
  int rc = run(HTTP_KIND_REQUEST, &l, req, total, 0, &g);
  if (rc) return rc;
  return g.count == 1 ? (int)g.body_len[0] : 0;
}

static void test_limit_body_content_length(void) {
  T_CHECK_EQ_INT(body_cl_case(1000, true), 1000);
  /* Refused on the head alone, before a byte of the body arrives. */
  T_CHECK_EQ_INT(body_cl_case(1001, false), HTTP_E_BODY_TOO_LARGE);
  T_CHECK_EQ_INT(http_parser_error_status(body_cl_case(1001, false)), 413);
}

static void test_limit_body_chunked(void) {
  http_limits_t l = small_limits();
  l.header_bytes_max = 8192;
  char data[600];
  memset(data, 'c', sizeof(data));
  const char *head = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
  char req[2400];
  /* 600 + 400 = 1000: accepted. */
  int n = snprintf(req, sizeof(req), "%s258\r\n%.600s\r\n190\r\n%.400s\r\n0\r\n\r\n",
                   head, data, data);
  got_t g;
  T_CHECK_EQ_INT(run(HTTP_KIND_REQUEST, &l, req, (size_t)n, 0, &g), 0);
  T_CHECK_EQ_INT(g.body_len[0], 1000);
  /* 600 + 401: refused at the second chunk's size line, before its data. */
  n = snprintf(req, sizeof(req), "%s258\r\n%.600s\r\n191\r\n", head, data);
  T_CHECK_EQ_INT(run(HTTP_KIND_REQUEST, &l, req, (size_t)n, 0, &g), HTTP_E_BODY_TOO_LARGE);
  /* The same, one byte at a time. */
  T_CHECK_EQ_INT(run(HTTP_KIND_REQUEST, &l, req, (size_t)n, 1, &g), HTTP_E_BODY_TOO_LARGE);
}

/* The default 1 MiB limit, with a body that really is that big. */
static void test_limit_body_default(void) {
  size_t max = 1u << 20;
  char *req = malloc(max + 256);
  T_REQUIRE(req != NULL);
  int n = snprintf(req, 256, "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %zu\r\n\r\n", max);
  memset(req + n, 'z', max);
  got_t g;
  T_CHECK_EQ_INT(run(HTTP_KIND_REQUEST, NULL, req, (size_t)n + max, 0, &g), 0);
  T_CHECK_EQ_INT(g.body_len[0], max);
  T_CHECK(g.body_nul[0]);
  /* Content-Length one more: 413 before the body. */
  n = snprintf(req, 256, "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: %zu\r\n\r\n", max + 1);
  T_CHECK_EQ_INT(run(HTTP_KIND_REQUEST, NULL, req, (size_t)n, 0, &g), HTTP_E_BODY_TOO_LARGE);
  free(req);
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                */
/* ------------------------------------------------------------------------ */

static int run_resp(const char *s, size_t step, got_t *g) {
  return run(HTTP_KIND_RESPONSE, NULL, s, strlen(s), step, g);
}

static void test_response_content_length(void) {
  got_t g;
  const char *resp = "HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
                     "X-Test: r\r\nContent-Length: 11\r\n\r\n{\"id\":\"a\"}\n";
  for (size_t step = 0; step <= 1; step++) {
    T_CHECK_EQ_INT(run_resp(resp, step, &g), 0);
    T_REQUIRE(g.count == 1);
    T_CHECK_EQ_INT(g.status[0], 201);
    T_CHECK_STR(g.reason[0], "Created");
    T_CHECK_STR(g.x_test[0], "r");
    T_CHECK_STR(g.body[0], "{\"id\":\"a\"}\n");
    T_CHECK_EQ_INT(g.headers_count[0], 3);
    T_CHECK(g.keep_alive[0]);
    T_CHECK_STR(g.method_name[0], "");
  }
}

static void test_response_chunked(void) {
  got_t g;
  const char *resp = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                     "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
  for (size_t step = 0; step <= 3; step++) {
    T_CHECK_EQ_INT(run_resp(resp, step, &g), 0);
    T_REQUIRE(g.count == 2);
    T_CHECK_STR(g.body[0], "abcde");
    T_CHECK(g.chunked[0]);
    T_CHECK_EQ_INT(g.status[1], 404);
    T_CHECK_EQ_INT(g.body_len[1], 0);
  }
}

static void test_response_eof(void) {
  http_parser_t p;
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_RESPONSE, NULL) == 0);
  const char *resp = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end";
  size_t used = 0;
  http_msg_t *m = NULL;
  T_CHECK_EQ_INT(http_parser_feed(&p, resp, strlen(resp), &used, &m), 0);
  T_CHECK(m == NULL); /* the body has no end but the connection's */
  T_CHECK_EQ_INT(used, strlen(resp));
  T_CHECK_EQ_INT(http_parser_finish(&p, &m), 0);
  T_REQUIRE(m != NULL);
  T_CHECK_STR(m->body, "until the end");
  T_CHECK(!m->keep_alive);
  http_parser_deinit(&p);

  /* EOF in the middle of a Content-Length body is a truncation. */
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_RESPONSE, NULL) == 0);
  resp = "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort";
  T_CHECK_EQ_INT(http_parser_feed(&p, resp, strlen(resp), &used, &m), 0);
  T_CHECK_EQ_INT(http_parser_finish(&p, &m), HTTP_E_EOF);
  T_CHECK(m == NULL);
  http_parser_deinit(&p);

  /* EOF between messages is clean. */
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_RESPONSE, NULL) == 0);
  resp = "HTTP/1.1 204 No Content\r\n\r\n";
  T_CHECK_EQ_INT(http_parser_feed(&p, resp, strlen(resp), &used, &m), 0);
  T_REQUIRE(m != NULL);
  T_CHECK_EQ_INT(m->status, 204);
  http_parser_next(&p);
  T_CHECK_EQ_INT(http_parser_finish(&p, &m), 0);
  T_CHECK(m == NULL);
  http_parser_deinit(&p);
}

static void test_response_to_head(void) {
  http_parser_t p;
  T_REQUIRE(http_parser_init(&p, HTTP_KIND_RESPONSE, NULL) == 0);
  const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"
                     "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
  size_t used = 0, off = 0;
  http_msg_t *m = NULL;
  http_parser_expect_no_body(&p);
  T_CHECK_EQ_INT(http_parser_feed(&p, resp, strlen(resp), &used, &m), 0);
  T_REQUIRE(m != NULL);
  T_CHECK_EQ_INT(m->body_len, 0);
  off += used;
  http_parser_next(&p);
  /* The flag held for one response only. */
  T_CHECK_EQ_INT(http_parser_feed(&p, resp + off, strlen(resp) - off, &used, &m), 0);
  T_REQUIRE(m != NULL);
  T_CHECK_STR(m->body, "ok");
  http_parser_deinit(&p);
}

static void test_response_refusals(void) {
  got_t g;
  T_CHECK_EQ_INT(run_resp("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n"
                          "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 0, &g),
                 HTTP_E_BAD_REQUEST);
  T_CHECK_EQ_INT(run_resp("HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", 0, &g),
                 HTTP_E_BAD_REQUEST);
  T_CHECK_EQ_INT(run_resp("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 0, &g),
                 HTTP_E_BAD_REQUEST);
  T_CHECK_EQ_INT(run_resp("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                          "Upgrade: x\r\n\r\n", 0, &g),
                 HTTP_E_UNSUPPORTED);
  /* Control bytes, bare CR and bare LF in the reason phrase (llhttp takes
   * all three). */
  T_CHECK_EQ_INT(run_resp("HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n", 0, &g),
                 HTTP_E_BAD_REQUEST);
  T_CHECK_EQ_INT(run_resp("HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n", 0, &g),
                 HTTP_E_BAD_REQUEST);
  T_CHECK_EQ_INT(run_resp("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n", 0, &g),
                 HTTP_E_BAD_REQUEST);
  /* A 1xx is a message of its own, then the real response follows. */
  T_CHECK_EQ_INT(run_resp("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"
                          "Content-Length: 0\r\n\r\n", 0, &g), 0);
  T_CHECK_EQ_INT(g.count, 2);
  T_CHECK_EQ_INT(g.status[0], 100);
  T_CHECK_EQ_INT(g.status[1], 200);
}

int main(void) {
  T_RUN(test_simple_get);
  T_RUN(test_query_forms);
  T_RUN(test_header_lookup);
  T_RUN(test_post_content_length);
  T_RUN(test_chunked_small_feeds);
  T_RUN(test_pipelining);
  T_RUN(test_pipelining_consumed);
  T_RUN(test_keep_alive);
  T_RUN(test_upgrade_ignored);
  T_RUN(test_states);
  T_RUN(test_init_and_status);
  T_RUN(test_corpus);
  T_RUN(test_limit_header_bytes);
  T_RUN(test_limit_header_streaming);
  T_RUN(test_limit_raw_head);
  T_RUN(test_limit_header_count);
  T_RUN(test_limit_url);
  T_RUN(test_limit_body_content_length);
  T_RUN(test_limit_body_chunked);
  T_RUN(test_limit_body_default);
  T_RUN(test_response_content_length);
  T_RUN(test_response_chunked);
  T_RUN(test_response_eof);
  T_RUN(test_response_to_head);
  T_RUN(test_response_refusals);
  return t_done();
}
