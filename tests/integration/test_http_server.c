/*
 * test_http_server.c - bench_httpd as a real process, driven over loopback
 * with plain blocking sockets.
 *
 *   test_http_server PATH_TO_BENCH_HTTPD
 *
 * The server runs with small limits and short timeouts (see the enum below)
 * so that every limit can be crossed by one byte and every timeout observed
 * in well under a second. Covered: the routes, keep-alive, pipelining,
 * chunked bodies, JSON errors, request smuggling, size limits, slow and idle
 * clients, many connections at once, and a graceful stop on SIGTERM.
 *
 * The server is always killed on the way out: atexit() for normal exits, and
 * a SIGALRM watchdog (also SIGINT/SIGTERM) for a test that hangs.
 */
#include "t.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The server's configuration for this test, passed through its environment. */
enum {
  HEADER_TIMEOUT_MS = 300,
  IDLE_TIMEOUT_MS = 1000,
  HEADER_BYTES_MAX = 8192,
  HEADERS_COUNT_MAX = 64,
  URL_BYTES_MAX = 2048,
  BODY_BYTES_MAX = 65536,
};

/* The test's own bounds. Sanitizer builds run several times slower, so waits
 * for an answer are generous; waits that measure a timeout are not. */
enum {
  RECV_TIMEOUT_MS = 5000,  /* any single read */
  START_TIMEOUT_MS = 20000, /* until the server answers /healthz */
  STOP_TIMEOUT_MS = 10000,  /* from SIGTERM to exit */
  TEST_TIMEOUT_S = 150,     /* the whole run; meson's timeout is larger */
  TIMING_SLACK_MS = 1500,   /* how late a server timeout may fire */
  HEAD_BYTES_MAX = 16384,   /* largest response head we accept */
  BODY_READ_MAX = 4 << 20,  /* largest response body we accept */
  MANY_CONNS = 200,
  PIPELINED = 20,
  KEEP_ALIVE_REQUESTS = 10,
};

static pid_t server_pid = -1;
static int server_port;

/* ------------------------------------------------------------------------ */
/* Time and the server process                                               */

static int64_t now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

static void kill_server(void) {
  if (server_pid > 0) {
    kill(server_pid, SIGKILL);
    waitpid(server_pid, NULL, 0);
    server_pid = -1;
  }
}

/* Only async-signal-safe calls here: the test hung or was interrupted. */
static void on_fatal_signal(int sig) {
  static const char msg[] = "test_http_server: timed out or interrupted, killing the server\n";
  if (server_pid > 0) kill(server_pid, SIGKILL);
  (void)!write(STDERR_FILENO, msg, sizeof msg - 1);
  _exit(sig == SIGALRM ? 2 : 1);
}

/* A loopback port nobody listens on right now: bind port 0, read it, close.
 * The server binds it a moment later; another program taking it in between
 * is possible but makes the start-up fail loudly rather than the test lie. */
static int pick_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0) {
    port = ntohs(a.sin_port);
  }
  close(fd);
  return port;
}

static void set_env_int(const char *name, long value) {
  char buf[32];
  snprintf(buf, sizeof buf, "%ld", value);
  setenv(name, buf, 1);
}

static pid_t spawn_server(const char *path) {
  pid_t pid = fork();
  if (pid != 0) return pid;
  /* An ignored signal stays ignored across exec: give the server the
   * default disposition we changed in this process. */
  signal(SIGPIPE, SIG_DFL);
  setenv("HTTPD_HOST", "127.0.0.1", 1);
  set_env_int("HTTPD_PORT", server_port);
  if (!getenv("HTTPD_THREADS")) setenv("HTTPD_THREADS", "1", 1);
  setenv("LOG_LEVEL", "info", 1);
  set_env_int("HTTP_HEADER_TIMEOUT_MS", HEADER_TIMEOUT_MS);
  set_env_int("HTTP_IDLE_TIMEOUT_MS", IDLE_TIMEOUT_MS);
  set_env_int("HTTP_HEADER_BYTES_MAX", HEADER_BYTES_MAX);
  set_env_int("HTTP_HEADERS_COUNT_MAX", HEADERS_COUNT_MAX);
  set_env_int("HTTP_URL_BYTES_MAX", URL_BYTES_MAX);
  set_env_int("HTTP_BODY_BYTES_MAX", BODY_BYTES_MAX);
  const char *conns_max = getenv("TEST_CONNS_MAX");
  set_env_int("HTTP_CONNS_MAX", conns_max ? atol(conns_max) : 10000);
  execl(path, path, (char *)NULL);
  fprintf(stderr, "exec %s: %s\n", path, strerror(errno));
  _exit(127);
}

/* Reaps the server if it has exited. Returns 1 while it runs. */
static int server_running(void) {
  int status;
  if (server_pid <= 0) return 0;
  pid_t r = waitpid(server_pid, &status, WNOHANG);
  if (r == 0) return 1;
  if (r == server_pid) {
    if (WIFEXITED(status)) {
      fprintf(stderr, "server exited with status %d\n", WEXITSTATUS(status));
    } else if (WIFSIGNALED(status)) {
      fprintf(stderr, "server killed by signal %d\n", WTERMSIG(status));
    }
    server_pid = -1;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Sockets                                                                   */

static void set_rcv_timeout(int fd, int ms) {
  struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

static int conn_open(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)server_port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  struct timeval tv = {.tv_sec = RECV_TIMEOUT_MS / 1000, .tv_usec = 0};
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  set_rcv_timeout(fd, RECV_TIMEOUT_MS);
  if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    close(fd);
    return -1;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static int send_all(int fd, const void *data, size_t len) {
  const char *p = data;
  while (len > 0) {
    ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int send_str(int fd, const char *s) { return send_all(fd, s, strlen(s)); }

/* ------------------------------------------------------------------------ */
/* Reading responses                                                         */

/* Bytes received on one connection and not yet consumed: with pipelining one
 * recv() may hold the end of one response and the start of the next. */
typedef struct {
  int fd;
  char *buf;
  size_t len;
  size_t cap;
} reader_t;

typedef struct {
  int status;
  char head[HEAD_BYTES_MAX + 1]; /* status line and header lines, NUL-ended */
  char *body;                    /* malloc'd, NUL-ended, body_len bytes */
  size_t body_len;
} resp_t;

static void reader_init(reader_t *r, int fd) {
  r->fd = fd;
  r->len = 0;
  r->cap = 64 * 1024;
  r->buf = malloc(r->cap);
}

static void reader_free(reader_t *r) {
  free(r->buf);
  r->buf = NULL;
  r->len = r->cap = 0;
}

static void resp_free(resp_t *resp) {
  free(resp->body);
  resp->body = NULL;
  resp->body_len = 0;
}

/* Receives more bytes. Returns the count, 0 on EOF, -1 on error or timeout. */
static ssize_t reader_fill(reader_t *r) {
  if (r->len == r->cap) {
    if (r->cap >= (size_t)BODY_READ_MAX * 2) return -1;
    r->cap *= 2;
    r->buf = realloc(r->buf, r->cap);
  }
  for (;;) {
    ssize_t n = recv(r->fd, r->buf + r->len, r->cap - r->len, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n > 0) r->len += (size_t)n;
    return n;
  }
}

static void reader_consume(reader_t *r, size_t n) {
  memmove(r->buf, r->buf + n, r->len - n);
  r->len -= n;
}

static char *find_bytes(const char *hay, size_t hay_len, const char *needle) {
  size_t n = strlen(needle);
  for (size_t i = 0; i + n <= hay_len; i++) {
    if (memcmp(hay + i, needle, n) == 0) return (char *)hay + i;
  }
  return NULL;
}

/* Copies the value of header NAME (case-insensitive) into out. Returns 1 if
 * the header is present. */
static int resp_header(const resp_t *resp, const char *name, char *out, size_t out_len) {
  size_t name_len = strlen(name);
  const char *line = strstr(resp->head, "\r\n");
  while (line && line[2] != '\0') {
    line += 2;
    const char *end = strstr(line, "\r\n");
    if (!end) end = line + strlen(line);
    if ((size_t)(end - line) > name_len && line[name_len] == ':' &&
        strncasecmp(line, name, name_len) == 0) {
      const char *v = line + name_len + 1;
      while (*v == ' ' || *v == '\t') v++;
      size_t n = (size_t)(end - v);
      if (n >= out_len) n = out_len - 1;
      memcpy(out, v, n);
      out[n] = '\0';
      return 1;
    }
    line = end;
  }
  return 0;
}

static int body_append(resp_t *resp, const char *data, size_t n) {
  if (resp->body_len + n > BODY_READ_MAX) return -1;
  resp->body = realloc(resp->body, resp->body_len + n + 1);
  memcpy(resp->body + resp->body_len, data, n);
  resp->body_len += n;
  resp->body[resp->body_len] = '\0';
  return 0;
}

/* Makes sure the buffer holds a CRLF-ended line; returns its length without
 * the CRLF, or -1. */
static ssize_t need_line(reader_t *r) {
  for (int rounds = 0; rounds < 1000; rounds++) {
    char *crlf = find_bytes(r->buf, r->len, "\r\n");
    if (crlf) return crlf - r->buf;
    if (r->len > 4096 || reader_fill(r) <= 0) return -1;
  }
  return -1;
}

static int need_bytes(reader_t *r, size_t n) {
  while (r->len < n) {
    if (reader_fill(r) <= 0) return -1;
  }
  return 0;
}

static int read_chunked(reader_t *r, resp_t *resp) {
  for (int chunks = 0; chunks < 100000; chunks++) {
    ssize_t line_len = need_line(r);
    if (line_len < 0) return -1;
    char *end;
    unsigned long size = strtoul(r->buf, &end, 16);
    if (end == r->buf || size > BODY_READ_MAX) return -1;
    reader_consume(r, (size_t)line_len + 2);
    if (size == 0) {
      /* Trailer section: header lines up to an empty line. */
      for (int lines = 0; lines < 100; lines++) {
        line_len = need_line(r);
        if (line_len < 0) return -1;
        reader_consume(r, (size_t)line_len + 2);
        if (line_len == 0) return 0;
      }
      return -1;
    }
    if (need_bytes(r, size + 2) != 0) return -1;
    if (body_append(resp, r->buf, size) != 0) return -1;
    reader_consume(r, size + 2);
  }
  return -1;
}

/* Reads one complete response. Returns 0, or -1 when the connection ended,
 * timed out or sent something that is not HTTP/1.1. Interim 1xx responses
 * are skipped. */
static int read_response(reader_t *r, resp_t *resp) {
  memset(resp, 0, sizeof *resp);
  for (int interim = 0; interim < 10; interim++) {
    char *end;
    while (!(end = find_bytes(r->buf, r->len, "\r\n\r\n"))) {
      if (r->len > HEAD_BYTES_MAX || reader_fill(r) <= 0) return -1;
    }
    size_t head_len = (size_t)(end - r->buf) + 2;
    if (head_len > HEAD_BYTES_MAX) return -1;
    memcpy(resp->head, r->buf, head_len);
    resp->head[head_len] = '\0';
    reader_consume(r, head_len + 2);
    if (sscanf(resp->head, "HTTP/1.1 %d ", &resp->status) != 1) return -1;
    if (resp->status >= 100 && resp->status < 200) continue;
    break;
  }
  resp->body = calloc(1, 1);

  char value[256];
  if (resp->status == 204 || resp->status == 304) return 0;
  if (resp_header(resp, "Transfer-Encoding", value, sizeof value)) {
    return strcasecmp(value, "chunked") == 0 ? read_chunked(r, resp) : -1;
  }
  if (resp_header(resp, "Content-Length", value, sizeof value)) {
    char *end;
    unsigned long n = strtoul(value, &end, 10);
    if (end == value || *end != '\0' || n > BODY_READ_MAX) return -1;
    if (need_bytes(r, n) != 0) return -1;
    if (body_append(resp, r->buf, n) != 0) return -1;
    reader_consume(r, n);
    return 0;
  }
  /* No framing: the body runs to the end of the connection. */
  ssize_t n;
  while ((n = reader_fill(r)) > 0) {
  }
  if (n < 0) return -1;
  int rc = body_append(resp, r->buf, r->len);
  r->len = 0;
  return rc;
}

/* Waits up to timeout_ms for the server to close the connection. Returns 1
 * when it did (EOF or reset) without sending anything more, 0 otherwise. */
static int reader_closed(reader_t *r, int timeout_ms) {
  if (r->len > 0) return 0;
  struct pollfd p = {.fd = r->fd, .events = POLLIN};
  if (poll(&p, 1, timeout_ms) <= 0) return 0;
  char c;
  ssize_t n = recv(r->fd, &c, 1, MSG_DONTWAIT);
  return n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE));
}

/* Removes JSON whitespace so that checks do not depend on formatting. */
static void squeeze(const char *in, char *out, size_t out_len) {
  size_t j = 0;
  for (size_t i = 0; in[i] != '\0' && j + 1 < out_len; i++) {
    if (in[i] != ' ' && in[i] != '\n' && in[i] != '\r' && in[i] != '\t') out[j++] = in[i];
  }
  out[j] = '\0';
}

/* One request on a new connection; returns the status, or -1. */
static int request_once(const char *req, resp_t *resp) {
  int fd = conn_open();
  if (fd < 0) return -1;
  reader_t r;
  reader_init(&r, fd);
  int status = -1;
  if (send_str(fd, req) == 0 && read_response(&r, resp) == 0) status = resp->status;
  reader_free(&r);
  close(fd);
  return status;
}

#define GET(path) "GET " path " HTTP/1.1\r\nHost: test\r\n\r\n"

/* T_CHECK that jumps to label when it fails: a T_REQUIRE for checks made
 * after something was allocated, so that the test still frees it. */
#define T_CHECK_OR(cond, label)                                               \
  do {                                                                        \
    if (cond) {                                                               \
      t_checks_passed++;                                                      \
    } else {                                                                  \
      t_checks_failed++;                                                      \
      fprintf(stderr, "%s:%d: required: %s\n", __FILE__, __LINE__, #cond);    \
      goto label;                                                             \
    }                                                                         \
  } while (0)

/* ------------------------------------------------------------------------ */
/* Tests                                                                     */

static void test_routes(void) {
  resp_t resp = {0};
  char value[256], json[256];

  T_CHECK_EQ_INT(request_once(GET("/healthz"), &resp), 200);
  T_CHECK_STR(resp.body, "ok\n");
  T_CHECK(resp_header(&resp, "Content-Type", value, sizeof value) &&
          strncmp(value, "text/plain", 10) == 0);
  resp_free(&resp);

  T_CHECK_EQ_INT(request_once(GET("/readyz"), &resp), 200);
  squeeze(resp.body ? resp.body : "", json, sizeof json);
  T_CHECK_STR(json, "{\"ready\":true}");
  T_CHECK(resp_header(&resp, "Content-Type", value, sizeof value) &&
          strncmp(value, "application/json", 16) == 0);
  resp_free(&resp);

  T_CHECK_EQ_INT(request_once(GET("/hello"), &resp), 200);
  T_CHECK_STR(resp.body, "hello, world\n");
  resp_free(&resp);

  T_CHECK_EQ_INT(request_once(GET("/metrics"), &resp), 200);
  T_CHECK(resp.body && strstr(resp.body, "http_requests_total") != NULL);
  resp_free(&resp);
}

static void test_keep_alive(void) {
  int fd = conn_open();
  T_REQUIRE(fd >= 0);
  reader_t r;
  reader_init(&r, fd);
  int ok = 0;
  char value[64];
  for (int i = 0; i < KEEP_ALIVE_REQUESTS; i++) {
    resp_t resp = {0};
    if (send_str(fd, GET("/hello")) != 0 || read_response(&r, &resp) != 0) {
      resp_free(&resp);
      break;
    }
    if (resp.status == 200 && strcmp(resp.body, "hello, world\n") == 0 &&
        !(resp_header(&resp, "Connection", value, sizeof value) &&
          strcasecmp(value, "close") == 0)) {
      ok++;
    }
    resp_free(&resp);
  }
  T_CHECK_EQ_INT(ok, KEEP_ALIVE_REQUESTS);
  /* Answered and idle, it holds no request head storage: only the
   * connection asking for /metrics does, while it is answered. */
  resp_t m = {0};
  T_CHECK_EQ_INT(request_once(GET("/metrics"), &m), 200);
  T_CHECK(m.body != NULL && strstr(m.body, "http_request_heads_lent 1\n") != NULL);
  resp_free(&m);
  reader_free(&r);
  close(fd);
}

static void test_pipelining(void) {
  char all[PIPELINED * 128];
  size_t len = 0;
  for (int i = 0; i < PIPELINED; i++) {
    char body[32];
    int n = snprintf(body, sizeof body, "pipelined body %02d", i);
    len += (size_t)snprintf(all + len, sizeof all - len,
                            "POST /echo HTTP/1.1\r\nHost: test\r\n"
                            "Content-Length: %d\r\n\r\n%s",
                            n, body);
  }
  int fd = conn_open();
  T_REQUIRE(fd >= 0);
  /* One send() so that all requests are likely to arrive in one read. */
  ssize_t sent = send(fd, all, len, MSG_NOSIGNAL);
  T_CHECK_EQ_INT(sent, (ssize_t)len);

  reader_t r;
  reader_init(&r, fd);
  int in_order = 0;
  for (int i = 0; i < PIPELINED; i++) {
    char want[32];
    snprintf(want, sizeof want, "pipelined body %02d", i);
    resp_t resp = {0};
    if (read_response(&r, &resp) != 0) {
      fprintf(stderr, "pipelining: response %d missing\n", i);
      resp_free(&resp);
      break;
    }
    if (resp.status == 200 && strcmp(resp.body, want) == 0) {
      in_order++;
    } else {
      fprintf(stderr, "pipelining: response %d: status %d body \"%s\"\n", i, resp.status,
              resp.body);
    }
    resp_free(&resp);
  }
  T_CHECK_EQ_INT(in_order, PIPELINED);
  reader_free(&r);
  close(fd);
}

static void test_echo(void) {
  int fd = conn_open();
  T_REQUIRE(fd >= 0);
  reader_t r;
  reader_init(&r, fd);
  resp_t resp = {0};
  char value[128];

  /* A chunked body, split over several writes. */
  T_CHECK(send_str(fd, "POST /echo HTTP/1.1\r\nHost: test\r\n"
                       "Transfer-Encoding: chunked\r\n\r\n5\r\nhel") == 0);
  sleep_ms(20);
  T_CHECK(send_str(fd, "lo\r\n7;ext=1\r\n, world\r\n") == 0);
  sleep_ms(20);
  T_CHECK(send_str(fd, "1\r\n\n\r\n0\r\n\r\n") == 0);
  T_CHECK_OR(read_response(&r, &resp) == 0, out);
  T_CHECK_EQ_INT(resp.status, 200);
  T_CHECK_STR(resp.body, "hello, world\n");
  T_CHECK(resp_header(&resp, "Content-Type", value, sizeof value) &&
          strcmp(value, "application/octet-stream") == 0);
  resp_free(&resp);

  /* An empty body on the same connection. */
  T_CHECK(send_str(fd, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n") == 0);
  T_CHECK_OR(read_response(&r, &resp) == 0, out);
  T_CHECK_EQ_INT(resp.status, 200);
  T_CHECK_EQ_INT(resp.body_len, 0);
  resp_free(&resp);

  /* Binary bytes, NULs included, come back unchanged. */
  char bin[256];
  for (int i = 0; i < 256; i++) bin[i] = (char)i;
  T_CHECK(send_str(fd, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 256\r\n\r\n") == 0);
  T_CHECK(send_all(fd, bin, sizeof bin) == 0);
  T_CHECK_OR(read_response(&r, &resp) == 0, out);
  T_CHECK_EQ_INT(resp.status, 200);
  T_CHECK(resp.body_len == sizeof bin && memcmp(resp.body, bin, sizeof bin) == 0);

out:
  resp_free(&resp);
  reader_free(&r);
  close(fd);
}

static void test_errors_are_json(void) {
  int fd = conn_open();
  T_REQUIRE(fd >= 0);
  reader_t r;
  reader_init(&r, fd);
  resp_t resp = {0};
  char value[256], json[1024];

  T_CHECK(send_str(fd, GET("/no/such/path")) == 0);
  T_CHECK_OR(read_response(&r, &resp) == 0, out);
  T_CHECK_EQ_INT(resp.status, 404);
  T_CHECK(resp_header(&resp, "Content-Type", value, sizeof value) &&
          strncmp(value, "application/json", 16) == 0);
  squeeze(resp.body, json, sizeof json);
  T_CHECK(strstr(json, "{\"error\":{") == json);
  T_CHECK(strstr(json, "\"code\":\"not_found\"") != NULL);
  T_CHECK(strstr(json, "\"message\":\"") != NULL);
  resp_free(&resp);

  /* The connection survives a 404. */
  T_CHECK(send_str(fd, GET("/hello")) == 0);
  T_CHECK_OR(read_response(&r, &resp) == 0, out);
  T_CHECK_EQ_INT(resp.status, 200);
out:
  resp_free(&resp);
  reader_free(&r);
  close(fd);

  T_CHECK_EQ_INT(request_once(GET("/echo"), &resp), 405);
  T_CHECK(resp_header(&resp, "Allow", value, sizeof value) && strstr(value, "POST") != NULL);
  squeeze(resp.body ? resp.body : "", json, sizeof json);
  T_CHECK(strstr(json, "{\"error\":{") == json);
  T_CHECK(strstr(json, "\"code\":\"") != NULL);
  resp_free(&resp);

  T_CHECK_EQ_INT(request_once("POST /healthz HTTP/1.1\r\nHost: test\r\n"
                              "Content-Length: 0\r\n\r\n",
                              &resp),
                 405);
  T_CHECK(resp_header(&resp, "Allow", value, sizeof value) && strstr(value, "GET") != NULL);
  resp_free(&resp);
}

typedef struct {
  const char *name;
  const char *raw;
  size_t len; /* explicit: some requests hold a NUL */
} raw_request_t;

#define RAW(name, s) {name, s, sizeof(s) - 1}

/* Requests whose framing two parsers could read differently. Each must be
 * answered 400 and the connection closed, since nothing after it can be
 * trusted to start at a request boundary. */
static const raw_request_t smuggling[] = {
  RAW("Content-Length and Transfer-Encoding",
      "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 6\r\n"
      "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"),
  RAW("Transfer-Encoding and Content-Length",
      "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n"
      "Content-Length: 6\r\n\r\n0\r\n\r\nX"),
  RAW("two different Content-Length",
      "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
      "Content-Length: 6\r\n\r\nhello!"),
  RAW("two equal Content-Length",
      "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n"
      "Content-Length: 5\r\n\r\nhello"),
  RAW("Content-Length not a number",
      "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: 5x\r\n\r\nhello"),
  RAW("negative Content-Length",
      "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: -1\r\n\r\nhello"),
  RAW("bare LF line ends", "GET /hello HTTP/1.1\nHost: test\n\n"),
  RAW("bare LF after one header",
      "GET /hello HTTP/1.1\r\nHost: test\nX-Other: 1\r\n\r\n"),
  RAW("space before the colon",
      "GET /hello HTTP/1.1\r\nHost: test\r\nX-Other : 1\r\n\r\n"),
  RAW("Transfer-Encoding not ending in chunked",
      "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked, identity\r\n\r\n"
      "5\r\nhello\r\n0\r\n\r\n"),
  RAW("unknown Transfer-Encoding",
      "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\nhello"),
  RAW("chunk size not hex",
      "POST /echo HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n"
      "zz\r\nhello\r\n0\r\n\r\n"),
  RAW("NUL in a header value",
      "GET /hello HTTP/1.1\r\nHost: test\r\nX-Other: a\0b\r\n\r\n"),
};

static void test_smuggling(void) {
  for (size_t i = 0; i < sizeof smuggling / sizeof smuggling[0]; i++) {
    const raw_request_t *c = &smuggling[i];
    int fd = conn_open();
    T_REQUIRE(fd >= 0);
    reader_t r;
    reader_init(&r, fd);
    resp_t resp = {0};
    int status = -1, closed = 0;
    if (send_all(fd, c->raw, c->len) == 0 && read_response(&r, &resp) == 0) {
      status = resp.status;
      closed = reader_closed(&r, RECV_TIMEOUT_MS);
    }
    resp_free(&resp);
    if (status != 400 || !closed) {
      fprintf(stderr, "smuggling \"%s\": status %d, connection %s\n", c->name, status,
              closed ? "closed" : "left open");
    }
    T_CHECK_EQ_INT(status, 400);
    T_CHECK(closed);
    reader_free(&r);
    close(fd);
  }
}

/* Sends head (and body_len bytes of body) on a new connection; returns the
 * status of the answer, or -1. The answer's body is checked by the caller. */
static int send_and_read(const char *head, const char *body, size_t body_len, resp_t *resp) {
  int fd = conn_open();
  if (fd < 0) return -1;
  reader_t r;
  reader_init(&r, fd);
  int status = -1;
  if (send_str(fd, head) == 0 && (body_len == 0 || send_all(fd, body, body_len) == 0) &&
      read_response(&r, resp) == 0) {
    status = resp->status;
  }
  reader_free(&r);
  close(fd);
  return status;
}

static void test_body_limit(void) {
  char head[256];
  resp_t resp = {0};
  char *body = malloc(BODY_BYTES_MAX + 1);
  T_REQUIRE(body != NULL);
  for (int i = 0; i < BODY_BYTES_MAX + 1; i++) body[i] = (char)('a' + i % 26);

  /* Exactly at the limit: accepted and echoed. */
  snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n",
           BODY_BYTES_MAX);
  T_CHECK_EQ_INT(send_and_read(head, body, BODY_BYTES_MAX, &resp), 200);
  T_CHECK(resp.body_len == BODY_BYTES_MAX && memcmp(resp.body, body, BODY_BYTES_MAX) == 0);
  resp_free(&resp);

  /* One byte over, announced by Content-Length: refused before the body. */
  snprintf(head, sizeof head, "POST /echo HTTP/1.1\r\nHost: test\r\nContent-Length: %d\r\n\r\n",
           BODY_BYTES_MAX + 1);
  T_CHECK_EQ_INT(send_and_read(head, body, 1024, &resp), 413);
  resp_free(&resp);

  /* One byte over in chunks: the limit holds without a Content-Length. */
  int fd = conn_open();
  T_CHECK_OR(fd >= 0, out);
  reader_t r;
  reader_init(&r, fd);
  char size_line[32];
  int half = BODY_BYTES_MAX / 2;
  int rest = BODY_BYTES_MAX + 1 - half;
  int sent_ok = send_str(fd, "POST /echo HTTP/1.1\r\nHost: test\r\n"
                             "Transfer-Encoding: chunked\r\n\r\n") == 0;
  snprintf(size_line, sizeof size_line, "%x\r\n", half);
  sent_ok = sent_ok && send_str(fd, size_line) == 0 && send_all(fd, body, (size_t)half) == 0 &&
            send_str(fd, "\r\n") == 0;
  snprintf(size_line, sizeof size_line, "%x\r\n", rest);
  /* The server may answer and close before taking all of this. */
  if (sent_ok && send_str(fd, size_line) == 0) send_all(fd, body + half, (size_t)rest);
  T_CHECK(read_response(&r, &resp) == 0);
  T_CHECK_EQ_INT(resp.status, 413);
  resp_free(&resp);
  reader_free(&r);
  close(fd);
out:
  free(body);
}

static void test_url_limit(void) {
  char *req = malloc(URL_BYTES_MAX + 128);
  T_REQUIRE(req != NULL);
  resp_t resp = {0};
  /* The request target "/hello?aaa..." is exactly URL_BYTES_MAX bytes. */
  for (int over = 0; over <= 1; over++) {
    int target_len = URL_BYTES_MAX + over;
    int n = sprintf(req, "GET /hello?");
    memset(req + n, 'a', (size_t)(target_len - 7));
    n += target_len - 7;
    n += sprintf(req + n, " HTTP/1.1\r\nHost: test\r\n\r\n");
    int status = request_once(req, &resp);
    if (over) {
      T_CHECK_EQ_INT(status, 414);
    } else {
      T_CHECK(status > 0 && status != 414);
    }
    resp_free(&resp);
  }
  free(req);
}

static void test_header_limits(void) {
  size_t cap = HEADER_BYTES_MAX * 2 + HEADERS_COUNT_MAX * 32 + 256;
  char *req = malloc(cap);
  T_REQUIRE(req != NULL);
  resp_t resp = {0};

  /* HEADERS_COUNT_MAX header lines (Host included) pass; one more does not. */
  for (int extra = 0; extra <= 1; extra++) {
    size_t n = (size_t)sprintf(req, "GET /hello HTTP/1.1\r\nHost: test\r\n");
    for (int i = 1; i < HEADERS_COUNT_MAX + extra; i++) {
      n += (size_t)sprintf(req + n, "X-Header-%d: %d\r\n", i, i);
    }
    sprintf(req + n, "\r\n");
    int status = request_once(req, &resp);
    if (extra) {
      T_CHECK_EQ_INT(status, 431);
    } else {
      T_CHECK_EQ_INT(status, 200);
    }
    resp_free(&resp);
  }

  /* One header whose name and value alone are HEADER_BYTES_MAX + 1 bytes is
   * over the limit however the server counts separators and the request
   * line; half of that is well within it. */
  for (int over = 0; over <= 1; over++) {
    size_t value_len = over ? HEADER_BYTES_MAX + 1 - 5 : HEADER_BYTES_MAX / 2;
    size_t n = (size_t)sprintf(req, "GET /hello HTTP/1.1\r\nHost: test\r\nX-Pad: ");
    memset(req + n, 'p', value_len);
    n += value_len;
    sprintf(req + n, "\r\n\r\n");
    int status = request_once(req, &resp);
    if (over) {
      T_CHECK_EQ_INT(status, 431);
    } else {
      T_CHECK_EQ_INT(status, 200);
    }
    resp_free(&resp);
  }
  free(req);
}

/* A client that sends its request head one byte every 100 ms must be cut off
 * (408, or closed) about HEADER_TIMEOUT_MS after it connected, and must not
 * hold up anyone else meanwhile. */
static void test_slow_client(void) {
  static const char slow_req[] =
      "GET /hello HTTP/1.1\r\nHost: test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
  int fd = conn_open();
  T_REQUIRE(fd >= 0);
  int64_t t0 = now_ms();
  size_t sent = 0;
  int other_status = -1;
  int64_t other_ms = -1;
  int cut_off = 0;
  while (sent < sizeof slow_req - 1 && now_ms() - t0 < HEADER_TIMEOUT_MS + 5000) {
    if (send(fd, slow_req + sent, 1, MSG_NOSIGNAL) != 1) {
      cut_off = 1;
      break;
    }
    sent++;
    if (sent == 2) {
      /* Another client, served while the slow one dribbles. */
      resp_t resp = {0};
      int64_t t1 = now_ms();
      other_status = request_once(GET("/hello"), &resp);
      other_ms = now_ms() - t1;
      resp_free(&resp);
    }
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 100) > 0) {
      cut_off = 1;
      break;
    }
  }
  int64_t elapsed = now_ms() - t0;
  T_CHECK(cut_off);
  T_CHECK(sent < sizeof slow_req - 1);
  T_CHECK_EQ_INT(other_status, 200);
  T_CHECK(other_ms >= 0 && other_ms < 1000);

  reader_t r;
  reader_init(&r, fd);
  resp_t resp = {0};
  if (read_response(&r, &resp) == 0) {
    T_CHECK_EQ_INT(resp.status, 408);
    T_CHECK(reader_closed(&r, RECV_TIMEOUT_MS));
  } else {
    T_CHECK(r.len == 0); /* closed without a partial answer is fine */
  }
  resp_free(&resp);
  fprintf(stderr, "slow client cut off after %lld ms (%zu bytes sent)\n", (long long)elapsed,
          sent);
  T_CHECK(elapsed >= HEADER_TIMEOUT_MS - 100);
  T_CHECK(elapsed <= HEADER_TIMEOUT_MS + TIMING_SLACK_MS);
  reader_free(&r);
  close(fd);
}

/* A keep-alive connection with nothing to do is closed, silently, after
 * IDLE_TIMEOUT_MS: not sooner, and with no 408 sent. */
static void test_idle_close(void) {
  int fd = conn_open();
  T_REQUIRE(fd >= 0);
  reader_t r;
  reader_init(&r, fd);
  resp_t resp = {0};
  T_CHECK(send_str(fd, GET("/hello")) == 0);
  T_CHECK(read_response(&r, &resp) == 0);
  T_CHECK_EQ_INT(resp.status, 200);
  resp_free(&resp);

  int64_t t0 = now_ms();
  int closed = reader_closed(&r, IDLE_TIMEOUT_MS + TIMING_SLACK_MS);
  int64_t elapsed = now_ms() - t0;
  fprintf(stderr, "idle connection closed after %lld ms\n", (long long)elapsed);
  T_CHECK(closed);
  T_CHECK(elapsed >= IDLE_TIMEOUT_MS * 8 / 10);
  reader_free(&r);
  close(fd);
}

/* MANY_CONNS connections open at once, each then sends one request; every
 * one is answered. */
static void test_many_connections(void) {
  static int fds[MANY_CONNS];
  int opened = 0, answered = 0;
  for (int i = 0; i < MANY_CONNS; i++) {
    fds[i] = conn_open();
    if (fds[i] >= 0) opened++;
  }
  T_CHECK_EQ_INT(opened, MANY_CONNS);
  for (int i = 0; i < MANY_CONNS; i++) {
    if (fds[i] >= 0 && send_str(fds[i], GET("/hello")) != 0) {
      close(fds[i]);
      fds[i] = -1;
    }
  }
  int failures = 0;
  for (int i = 0; i < MANY_CONNS && failures < 3; i++) {
    if (fds[i] < 0) continue;
    reader_t r;
    reader_init(&r, fds[i]);
    resp_t resp = {0};
    if (read_response(&r, &resp) == 0 && resp.status == 200 &&
        strcmp(resp.body, "hello, world\n") == 0) {
      answered++;
    } else {
      failures++;
      fprintf(stderr, "many connections: connection %d not answered\n", i);
    }
    resp_free(&resp);
    reader_free(&r);
  }
  T_CHECK_EQ_INT(answered, MANY_CONNS);
  for (int i = 0; i < MANY_CONNS; i++) {
    if (fds[i] >= 0) close(fds[i]);
  }
}

/* Run alone, with TEST_CONNS_MAX=N given to the server as HTTP_CONNS_MAX:
 * N connections are served, the next gets 503 and is closed, the refusal
 * is counted in /metrics, and once one connection closes a new one is
 * served again. */
static void test_conns_limit(int max) {
  int fds[64];
  T_REQUIRE(max > 1 && max < 64);
  for (int i = 0; i < max; i++) {
    fds[i] = conn_open();
    T_REQUIRE(fds[i] >= 0);
    reader_t r;
    reader_init(&r, fds[i]);
    resp_t resp = {0};
    /* Served: proves the connection holds a slot before the next opens. */
    T_CHECK(send_str(fds[i], GET("/hello")) == 0 && read_response(&r, &resp) == 0 &&
            resp.status == 200);
    resp_free(&resp);
    reader_free(&r);
  }
  int extra = conn_open();
  T_REQUIRE(extra >= 0);
  reader_t r;
  reader_init(&r, extra);
  resp_t resp = {0};
  T_CHECK(read_response(&r, &resp) == 0);
  T_CHECK_EQ_INT(resp.status, 503);
  T_CHECK(resp.body != NULL && strstr(resp.body, "\"overloaded\"") != NULL);
  T_CHECK(reader_closed(&r, RECV_TIMEOUT_MS));
  resp_free(&resp);
  reader_free(&r);
  close(extra);

  /* Free one slot; the server notices the close, then serves again. */
  close(fds[0]);
  int served = 0;
  for (int attempt = 0; attempt < 50 && !served; attempt++) {
    sleep_ms(20);
    resp_t again = {0};
    int status = request_once(GET("/metrics"), &again);
    if (status == 200) {
      served = 1;
      T_CHECK(again.body != NULL &&
              strstr(again.body, "http_connections_rejected_total 0") == NULL &&
              strstr(again.body, "http_connections_rejected_total") != NULL);
    }
    resp_free(&again);
  }
  T_CHECK(served);
  for (int i = 1; i < max; i++) close(fds[i]);
  /* Wait (bounded) until the server has seen those closes, so the next
   * test finds free slots: only the /metrics connection itself is open. */
  int settled = 0;
  for (int attempt = 0; attempt < 100 && !settled; attempt++) {
    resp_t m = {0};
    if (request_once(GET("/metrics"), &m) == 200 && m.body != NULL &&
        strstr(m.body, "http_connections_active 1\n") != NULL)
      settled = 1;
    resp_free(&m);
    if (!settled) sleep_ms(20);
  }
  T_CHECK(settled);
  /* The loop was sized from HTTP_CONNS_MAX: a deadline per connection and
   * the drain's, and it ran short of none. */
  char want[64];
  snprintf(want, sizeof want, "rt_loop_capacity{resource=\"timers\"} %d\n", max + 1);
  resp_t m = {0};
  T_CHECK_EQ_INT(request_once(GET("/metrics"), &m), 200);
  T_CHECK(m.body != NULL && strstr(m.body, want) != NULL);
  T_CHECK(m.body != NULL && strstr(m.body, "rt_loop_exhausted_total{resource=\"timers\"} 0\n") != NULL);
  resp_free(&m);
}

/* SIGTERM: a request already in flight is finished, idle connections are
 * closed, and the process exits 0. */
static void test_sigterm(void) {
  int idle = conn_open();
  int busy = conn_open();
  T_REQUIRE(idle >= 0 && busy >= 0);
  reader_t ri, rb;
  reader_init(&ri, idle);
  reader_init(&rb, busy);
  resp_t resp = {0};
  T_CHECK(send_str(idle, GET("/hello")) == 0);
  T_CHECK(read_response(&ri, &resp) == 0 && resp.status == 200);
  resp_free(&resp);

  /* Head and half the body, then the signal, then the other half. */
  T_CHECK(send_str(busy, "POST /echo HTTP/1.1\r\nHost: test\r\n"
                         "Content-Length: 10\r\n\r\nin-fl") == 0);
  sleep_ms(100);
  int64_t t0 = now_ms();
  T_CHECK_OR(kill(server_pid, SIGTERM) == 0, out);
  sleep_ms(50);
  T_CHECK(send_str(busy, "ight") == 0 && send_str(busy, "!") == 0);
  int got = read_response(&rb, &resp) == 0;
  T_CHECK(got);
  if (got) {
    T_CHECK_EQ_INT(resp.status, 200);
    T_CHECK_STR(resp.body, "in-flight!");
  }
  resp_free(&resp);
  T_CHECK(reader_closed(&ri, STOP_TIMEOUT_MS));

  int status = -1;
  pid_t r = 0;
  while ((r = waitpid(server_pid, &status, WNOHANG)) == 0 && now_ms() - t0 < STOP_TIMEOUT_MS) {
    sleep_ms(20);
  }
  T_CHECK_EQ_INT(r, server_pid);
  if (r == server_pid) {
    server_pid = -1;
    fprintf(stderr, "server stopped %lld ms after SIGTERM\n", (long long)(now_ms() - t0));
    T_CHECK(WIFEXITED(status));
    T_CHECK_EQ_INT(WIFEXITED(status) ? WEXITSTATUS(status) : -1, 0);
  }
out:
  reader_free(&ri);
  reader_free(&rb);
  close(idle);
  close(busy);
}

/* ------------------------------------------------------------------------ */

static int wait_until_serving(void) {
  int64_t t0 = now_ms();
  while (now_ms() - t0 < START_TIMEOUT_MS) {
    if (!server_running()) return -1;
    resp_t resp = {0};
    int status = request_once(GET("/healthz"), &resp);
    resp_free(&resp);
    if (status == 200) return 0;
    sleep_ms(20);
  }
  return -1;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s PATH_TO_BENCH_HTTPD\n", argv[0]);
    return 2;
  }
  signal(SIGPIPE, SIG_IGN);
  signal(SIGALRM, on_fatal_signal);
  signal(SIGINT, on_fatal_signal);
  signal(SIGTERM, on_fatal_signal);
  alarm(TEST_TIMEOUT_S);
  atexit(kill_server);

  server_port = pick_free_port();
  if (server_port <= 0) {
    fprintf(stderr, "no free loopback port\n");
    return 1;
  }
  server_pid = spawn_server(argv[1]);
  if (server_pid < 0) {
    fprintf(stderr, "fork: %s\n", strerror(errno));
    return 1;
  }
  fprintf(stderr, "server pid %d on 127.0.0.1:%d\n", (int)server_pid, server_port);
  if (wait_until_serving() != 0) {
    fprintf(stderr, "server did not answer /healthz within %d ms\n", START_TIMEOUT_MS);
    t_checks_failed++;
    return t_done();
  }

  const char *conns_max = getenv("TEST_CONNS_MAX");
  if (conns_max != NULL) {
    int before = t_checks_failed;
    test_conns_limit(atoi(conns_max));
    fprintf(stderr, "%s test_conns_limit\n", t_checks_failed == before ? "ok  " : "FAIL");
    T_RUN(test_sigterm);
    return t_done();
  }

  void (*tests[])(void) = {
      test_routes,        test_keep_alive,      test_pipelining,  test_echo,
      test_errors_are_json, test_smuggling,     test_body_limit,  test_url_limit,
      test_header_limits, test_many_connections, test_slow_client, test_idle_close,
  };
  static const char *names[] = {
      "test_routes",        "test_keep_alive",      "test_pipelining",  "test_echo",
      "test_errors_are_json", "test_smuggling",     "test_body_limit",  "test_url_limit",
      "test_header_limits", "test_many_connections", "test_slow_client", "test_idle_close",
  };
  _Static_assert(sizeof tests / sizeof tests[0] == sizeof names / sizeof names[0],
                 "one name per test");
  for (size_t i = 0; i < sizeof tests / sizeof tests[0]; i++) {
    int before = t_checks_failed;
    tests[i]();
    fprintf(stderr, "%s %s\n", t_checks_failed == before ? "ok  " : "FAIL", names[i]);
    if (!server_running()) {
      fprintf(stderr, "the server died during %s\n", names[i]);
      t_checks_failed++;
      return t_done();
    }
  }
  T_RUN(test_sigterm);
  return t_done();
}
