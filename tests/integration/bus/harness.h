/*
 * harness.h - helpers for the bus integration tests: real busd processes on
 * free loopback ports with private data directories, their metrics over
 * HTTP, and running a test's loop until a condition holds.
 *
 * busd children get PR_SET_PDEATHSIG, so they die with the test even if it
 * is killed; busd_stop() and rm_rf() run on every normal exit path.
 */
#ifndef BUS_HARNESS_H
#define BUS_HARNESS_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"

typedef struct busd_proc {
  const char *bin;
  pid_t pid;
  uint16_t port;
  uint16_t http_port;
  char dir[128];
  const char *env[16]; /* extra "NAME=value" entries, NULL-terminated */
  const char *log_path; /* when set, busd's output is appended there */
  int starts;
} busd_proc_t;

static inline uint16_t free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
    if (fd >= 0) close(fd);
    return 0;
  }
  close(fd);
  return ntohs(a.sin_port);
}

static inline void sleep_ms(long ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

/* Prepares ports and a private data directory; set p->env after. */
static inline int busd_init(busd_proc_t *p, const char *bin) {
  memset(p, 0, sizeof *p);
  p->bin = bin;
  p->pid = -1;
  p->port = free_port();
  p->http_port = free_port();
  while (p->http_port == p->port) p->http_port = free_port();
  snprintf(p->dir, sizeof p->dir, "/tmp/busd-test.XXXXXX");
  if (mkdtemp(p->dir) == NULL || p->port == 0 || p->http_port == 0) return -1;
  return 0;
}

static inline int http_get(uint16_t port, const char *path, char *out, size_t cap);

/* Ready means /readyz answers 200: an open port alone could be a TCP
 * self-connect (free ports lie in the ephemeral range) or another process. */
static inline bool busd_ready(const busd_proc_t *p) {
  char body[512];
  return http_get(p->http_port, "/readyz", body, sizeof body) == 200;
}

/* Starts busd; waits until it is ready when `wait` (up to 10 s). */
static inline int busd_start(busd_proc_t *p, bool wait) {
  pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    char port[32], http[32], dir[160];
    snprintf(port, sizeof port, "BUSD_PORT=%u", p->port);
    snprintf(http, sizeof http, "BUSD_HTTP_PORT=%u", p->http_port);
    snprintf(dir, sizeof dir, "BUSD_DATA_DIR=%s", p->dir);
    putenv(port);
    putenv(http);
    putenv(dir);
    if (getenv("LOG_LEVEL") == NULL) putenv("LOG_LEVEL=warn");
    for (int i = 0; i < 16 && p->env[i] != NULL; i++) putenv((char *)p->env[i]);
    if (p->log_path != NULL) {
      int fd = open(p->log_path, O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
    }
    execl(p->bin, p->bin, (char *)NULL);
    _exit(127);
  }
  p->pid = pid;
  p->starts++;
  for (int i = 0; wait && i < 1000; i++) {
    if (busd_ready(p)) return 0;
    if (waitpid(pid, NULL, WNOHANG) == pid) {
      p->pid = -1;
      return -1;
    }
    sleep_ms(10);
  }
  return wait ? -1 : 0;
}

/* Sends `sig` and reaps busd. Returns its exit status (or 128 + signal). */
static inline int busd_stop(busd_proc_t *p, int sig) {
  if (p->pid <= 0) return -1;
  kill(p->pid, sig);
  int status = 0;
  for (int i = 0; i < 3000; i++) { /* up to 30 s, then SIGKILL */
    if (waitpid(p->pid, &status, WNOHANG) == p->pid) {
      p->pid = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    sleep_ms(10);
  }
  kill(p->pid, SIGKILL);
  waitpid(p->pid, &status, 0);
  p->pid = -1;
  return 128 + SIGKILL;
}

static inline int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
  return remove(path);
}

static inline void rm_rf(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

static inline void busd_cleanup(busd_proc_t *p) {
  busd_stop(p, SIGKILL);
  if (p->dir[0] != '\0') rm_rf(p->dir);
}

/* GET http://127.0.0.1:port/path into out (body only, NUL-terminated). */
static inline int http_get(uint16_t port, const char *path, char *out, size_t cap) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  struct timeval tv = {.tv_sec = 5};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) < 0) {
    if (fd >= 0) close(fd);
    return -1;
  }
  char req[256];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", path);
  if (write(fd, req, (size_t)n) != n) {
    close(fd);
    return -1;
  }
  size_t got = 0;
  ssize_t r;
  while (got + 1 < cap && (r = read(fd, out + got, cap - 1 - got)) > 0) got += (size_t)r;
  close(fd);
  out[got] = '\0';
  char *body = strstr(out, "\r\n\r\n");
  int status = got > 12 ? atoi(out + 9) : -1;
  if (body != NULL) memmove(out, body + 4, strlen(body + 4) + 1);
  return status;
}

/* The value of a metric line that starts with `name` (labels included). */
static inline double metric(const char *text, const char *name) {
  size_t n = strlen(name);
  for (const char *line = text; line != NULL && *line != '\0';) {
    if (strncmp(line, name, n) == 0 && line[n] == ' ') return atof(line + n + 1);
    line = strchr(line, '\n');
    if (line != NULL) line++;
  }
  return -1;
}

static inline double busd_metric(const busd_proc_t *p, const char *name) {
  static char buf[1 << 20];
  if (http_get(p->http_port, "/metrics", buf, sizeof buf) != 200) return -1;
  return metric(buf, name);
}

/* ------------------------------------------------------------------------ */
/* Running a loop until a condition                                         */
/* ------------------------------------------------------------------------ */

typedef struct waiter {
  rt_loop_t *loop;
  bool (*done)(void *arg);
  void *arg;
  uint64_t deadline_ns;
  rt_timer_t timer;
  bool timed_out;
} waiter_t;

static inline void waiter_tick(rt_timer_t *t) {
  waiter_t *w = t->ctx;
  if (w->done(w->arg)) {
    rt_loop_stop(w->loop);
  } else if (rt_now_ns() > w->deadline_ns) {
    w->timed_out = true;
    rt_loop_stop(w->loop);
  }
}

/* Runs the loop until done(arg) or timeout_ms; returns done(arg). */
static inline bool run_until(rt_loop_t *loop, bool (*done)(void *), void *arg, uint32_t timeout_ms) {
  waiter_t w = {.loop = loop, .done = done, .arg = arg,
                .deadline_ns = rt_now_ns() + (uint64_t)timeout_ms * 1000000u};
  rt_timer_init(&w.timer, waiter_tick, &w);
  rt_timer_start(loop, &w.timer, 2, 2);
  if (!done(arg)) rt_loop_run(loop);
  rt_timer_stop(loop, &w.timer);
  return done(arg);
}

static inline bool never(void *arg) { return false; }

/* Runs the loop for ms milliseconds. */
static inline void run_for(rt_loop_t *loop, uint32_t ms) { run_until(loop, never, NULL, ms); }

#endif /* BUS_HARNESS_H */
