/*
 * The HTTP server on a loop whose timer heap is tiny: a connection that
 * cannot have a deadline armed is not kept open. Two moments are tried:
 * at accept (refused, counted in conns_rejected) and after a response,
 * when the idle deadline has to be armed anew (closed once the response
 * is out). The client is a plain blocking socket in the same thread.
 */
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "http.h"
#include "t.h"

/* watchdog + step + one connection's deadline + one filler */
enum { TIMERS = 4, FILLERS = TIMERS };

static rt_loop_t *loop;
static http_router_t router;
static http_server_t *server;
static http_exchange_t *parked;
static rt_timer_t watchdog, step, fillers[FILLERS];

static void on_never(http_exchange_t *ex, void *arg) { parked = ex; }
static void stop_loop(rt_timer_t *t) { rt_loop_stop(loop); }
static void noop(rt_timer_t *t) {}

/* Fills every free slot of the heap; returns how many it took. */
static int fill_heap(void) {
  int n = 0;
  for (int i = 0; i < FILLERS; i++) {
    if (rt_timer_armed(&fillers[i])) continue;
    if (rt_timer_start(loop, &fillers[i], 60000, 0) < 0) break;
    n++;
  }
  return n;
}

static int client_connect(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(http_server_port(server)),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  struct timeval tv = {.tv_sec = 2};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  return fd;
}

/* Reads until EOF (true) or a timeout/error (false); what came is in buf. */
static bool read_to_eof(int fd, char *buf, size_t cap) {
  size_t len = 0;
  for (int turns = 0; turns < 64; turns++) {
    ssize_t n = recv(fd, buf + len, cap - 1 - len, 0);
    if (n == 0) {
      buf[len] = '\0';
      return true;
    }
    if (n < 0) break;
    len += (size_t)n;
    if (len == cap - 1) break;
  }
  buf[len] = '\0';
  return false;
}

/* ---- after a response: the idle deadline finds no timer ------------------ */

static void answer_with_heap_full(rt_timer_t *t) {
  /* By now the connection's deadline fired while the handler held the
   * request (mode none), so its timer is disarmed. */
  T_CHECK(parked != NULL);
  T_CHECK(fill_heap() > 0);
  if (parked != NULL) http_respond(parked, 200, "text/plain", "late", 4, NULL);
  parked = NULL;
}

static void test_no_idle_deadline_closes_after_response(void) {
  int fd = client_connect();
  T_REQUIRE(fd >= 0);
  static const char req[] = "GET /never HTTP/1.1\r\nHost: x\r\n\r\n";
  T_REQUIRE(send(fd, req, sizeof req - 1, 0) == (ssize_t)(sizeof req - 1));
  rt_timer_init(&step, answer_with_heap_full, NULL);
  T_REQUIRE(rt_timer_start(loop, &step, 150, 0) == 0);
  T_REQUIRE(rt_timer_start(loop, &watchdog, 400, 0) == 0);
  rt_loop_stats_t before, after;
  rt_loop_stats(loop, &before);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  rt_loop_stats(loop, &after);
  T_CHECK(after.timers_exhausted > before.timers_exhausted);
  char buf[512];
  T_CHECK(read_to_eof(fd, buf, sizeof buf)); /* closed, not left open */
  T_CHECK(strncmp(buf, "HTTP/1.1 200", 12) == 0); /* the answer went out first */
  T_CHECK_EQ_INT(atomic_load(&http_server_stats(server)->conns_active), 0);
  close(fd);
}

/* ---- at accept: no deadline, no connection ------------------------------- */

static void test_no_deadline_refused_at_accept(void) {
  /* Room for the watchdog, then nothing else. */
  rt_timer_stop(loop, &fillers[0]);
  T_REQUIRE(rt_timer_start(loop, &watchdog, 200, 0) == 0);
  (void)fill_heap();
  T_CHECK_EQ_INT(rt_timer_start(loop, &step, 10, 0), RT_E_LIMIT);
  uint64_t rejected = atomic_load(&http_server_stats(server)->conns_rejected);
  int fd = client_connect();
  T_REQUIRE(fd >= 0);
  T_CHECK_EQ_INT(rt_loop_run(loop), 0);
  char buf[256];
  T_CHECK(read_to_eof(fd, buf, sizeof buf));
  T_CHECK_EQ_INT(atomic_load(&http_server_stats(server)->conns_rejected), rejected + 1);
  T_CHECK_EQ_INT(atomic_load(&http_server_stats(server)->conns_active), 0);
  close(fd);
}

int main(void) {
  rt_log_init("test_http_server_timers", RT_LOG_ERROR, NULL, 0);
  rt_loop_config_t lcfg = {.timers_count = TIMERS, .bufs_count = 16, .msgs_count = 64,
                           .sq_entries = 64};
  if (rt_loop_create(&loop, &lcfg) != 0) return 1;
  rt_timer_init(&watchdog, stop_loop, NULL);
  for (int i = 0; i < FILLERS; i++) rt_timer_init(&fillers[i], noop, NULL);
  http_router_init(&router);
  http_router_add(&router, "GET", "/never", HTTP_HANDLER(on_never), NULL);
  http_server_config_t scfg = {.host = "127.0.0.1", .idle_timeout_ms = 50,
                               .header_timeout_ms = 50, .conns_max = 4};
  if (http_server_create(&server, loop, &scfg, &router) != 0) return 1;
  if (http_server_start(server) != 0) return 1;
  T_RUN(test_no_idle_deadline_closes_after_response);
  T_RUN(test_no_deadline_refused_at_accept);
  rt_timer_stop(loop, &watchdog);
  for (int i = 0; i < FILLERS; i++) rt_timer_stop(loop, &fillers[i]);
  rt_loop_destroy(loop);
  http_server_destroy(server);
  return t_done();
}
