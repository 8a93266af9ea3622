/*
 * test_pool.c - fixed pools: exhaustion, zeroing, reuse, ownership, memory
 * touched only as slots are used, and the assertions that catch misuse
 * (run in a forked child, expected to abort).
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rt.h"
#include "t.h"

/* Exhaustion WARN lines are expected here; they go to /dev/null except in
 * the test that reads them. */
static int quiet_fd = 2;

static bool all_bytes(const void *p, size_t n, unsigned char v) {
  const unsigned char *b = p;
  for (size_t i = 0; i < n; i++) {
    if (b[i] != v) return false;
  }
  return true;
}

static void test_init(void) {
  rt_pool_t p;
  T_CHECK_EQ_INT(rt_pool_init(&p, "zero-size", 0, 4), -EINVAL);
  T_CHECK_EQ_INT(rt_pool_init(&p, "zero-cap", 16, 0), -EINVAL);
  T_CHECK_EQ_INT(rt_pool_init(&p, "huge", SIZE_MAX / 2, 4), -ENOMEM);

  static const size_t asked[] = {1, 16, 17, 24, 64, 100};
  static const size_t got[] = {16, 16, 32, 32, 64, 112};
  for (size_t i = 0; i < sizeof asked / sizeof asked[0]; i++) {
    T_REQUIRE(rt_pool_init(&p, "sizes", asked[i], 3) == 0);
    T_CHECK_EQ_INT(p.obj_bytes, got[i]);
    T_CHECK_EQ_INT((uintptr_t)p.mem % 64, 0);
    T_CHECK_EQ_INT(p.capacity, 3);
    T_CHECK_EQ_INT(p.in_use, 0);
    rt_pool_deinit(&p);
  }
}

static void test_get_until_exhausted(void) {
  enum { CAP = 8 };
  rt_pool_t p;
  T_REQUIRE(rt_pool_init(&p, "objs", 40, CAP) == 0);
  unsigned char *objs[CAP];
  for (int i = 0; i < CAP; i++) {
    objs[i] = rt_pool_get(&p);
    T_REQUIRE(objs[i] != NULL);
    T_CHECK_EQ_INT((uintptr_t)objs[i] % 16, 0);
    T_CHECK(all_bytes(objs[i], 40, 0));
    T_CHECK(rt_pool_owns(&p, objs[i]));
    memset(objs[i], 0xAB, p.obj_bytes); /* dirty: reuse must zero again */
    T_CHECK_EQ_INT(p.in_use, i + 1);
  }
  /* Distinct and non-overlapping. */
  bool distinct = true;
  for (int i = 0; i < CAP; i++) {
    for (int j = i + 1; j < CAP; j++) {
      uintptr_t a = (uintptr_t)objs[i], b = (uintptr_t)objs[j];
      uintptr_t gap = a > b ? a - b : b - a;
      if (gap < p.obj_bytes) distinct = false;
    }
  }
  T_CHECK(distinct);
  T_CHECK(all_bytes(objs[0], p.obj_bytes, 0xAB)); /* neighbours untouched */

  T_CHECK_EQ_INT(p.exhausted_count, 0);
  T_CHECK(rt_pool_get(&p) == NULL);
  T_CHECK_EQ_INT(p.exhausted_count, 1);
  T_CHECK(rt_pool_get(&p) == NULL);
  T_CHECK_EQ_INT(p.exhausted_count, 2);
  T_CHECK_EQ_INT(p.in_use, CAP);
  T_CHECK_EQ_INT(p.in_use_max, CAP);

  /* Put then get hands the same slot back, zeroed. */
  rt_pool_put(&p, objs[3]);
  T_CHECK_EQ_INT(p.in_use, CAP - 1);
  unsigned char *again = rt_pool_get(&p);
  T_CHECK(again == objs[3]);
  T_CHECK(again != NULL && all_bytes(again, p.obj_bytes, 0));
  T_CHECK(rt_pool_get(&p) == NULL);
  T_CHECK_EQ_INT(p.exhausted_count, 3);

  for (int i = 0; i < CAP; i++) rt_pool_put(&p, objs[i]);
  T_CHECK_EQ_INT(p.in_use, 0);
  T_CHECK_EQ_INT(p.in_use_max, CAP);
  rt_pool_deinit(&p);
}

static void test_in_use_max(void) {
  rt_pool_t p;
  T_REQUIRE(rt_pool_init(&p, "hwm", 16, 10) == 0);
  void *a = rt_pool_get(&p), *b = rt_pool_get(&p), *c = rt_pool_get(&p);
  T_CHECK_EQ_INT(p.in_use_max, 3);
  rt_pool_put(&p, b);
  rt_pool_put(&p, a);
  T_CHECK_EQ_INT(p.in_use, 1);
  T_CHECK_EQ_INT(p.in_use_max, 3);
  a = rt_pool_get(&p);
  T_CHECK_EQ_INT(p.in_use_max, 3);
  rt_pool_put(&p, a);
  rt_pool_put(&p, c);
  rt_pool_deinit(&p);
}

static void test_owns(void) {
  rt_pool_t p;
  T_REQUIRE(rt_pool_init(&p, "owns", 32, 4) == 0);
  unsigned char *o = rt_pool_get(&p);
  T_REQUIRE(o != NULL);
  unsigned char *mem = p.mem;
  size_t end = p.obj_bytes * p.capacity;
  T_CHECK(rt_pool_owns(&p, mem));
  T_CHECK(rt_pool_owns(&p, mem + p.obj_bytes));
  T_CHECK(rt_pool_owns(&p, mem + end - p.obj_bytes)); /* the last slot */
  T_CHECK(!rt_pool_owns(&p, mem + end));              /* one past the end */
  T_CHECK(!rt_pool_owns(&p, (void *)((uintptr_t)mem - p.obj_bytes)));
  T_CHECK(!rt_pool_owns(&p, o + 1));
  T_CHECK(!rt_pool_owns(&p, o + 16)); /* 16-aligned, but mid-object */
  T_CHECK(!rt_pool_owns(&p, NULL));
  int on_stack;
  T_CHECK(!rt_pool_owns(&p, &on_stack));

  rt_pool_t q;
  T_REQUIRE(rt_pool_init(&q, "other", 32, 4) == 0);
  T_CHECK(!rt_pool_owns(&q, o));
  rt_pool_deinit(&q);

  rt_pool_put(&p, o);
  rt_pool_deinit(&p);
  T_CHECK(!rt_pool_owns(&p, o));
}

/* Random gets and puts against a shadow list. */
static void test_churn(void) {
  enum { CAP = 64, OPS = 20000 };
  rt_pool_t p;
  T_REQUIRE(rt_pool_init(&p, "churn", 48, CAP) == 0);
  uint64_t *held[CAP];
  uint32_t held_count = 0, max_seen = 0, empties = 0;
  uint32_t seed = 12345;
  bool ok = true;
  for (int op = 0; op < OPS; op++) {
    seed = seed * 1103515245u + 12345u;
    bool get = ((seed >> 16) % 100) < 55;
    if (get) {
      uint64_t *o = rt_pool_get(&p);
      if (held_count == CAP) {
        ok = ok && o == NULL;
        empties++;
        continue;
      }
      if (o == NULL || !all_bytes(o, 48, 0)) {
        ok = false;
        continue;
      }
      o[0] = (uint64_t)(uintptr_t)o; /* a stamp only this holder writes */
      o[5] = ~o[0];
      held[held_count++] = o;
      if (held_count > max_seen) max_seen = held_count;
    } else if (held_count > 0) {
      uint32_t k = (seed >> 8) % held_count;
      uint64_t *o = held[k];
      ok = ok && o[0] == (uint64_t)(uintptr_t)o && o[5] == ~o[0];
      held[k] = held[--held_count];
      rt_pool_put(&p, o);
    }
    ok = ok && p.in_use == held_count;
  }
  T_CHECK(ok);
  T_CHECK_EQ_INT(p.in_use_max, max_seen);
  T_CHECK_EQ_INT(p.exhausted_count, empties);
  while (held_count > 0) rt_pool_put(&p, held[--held_count]);
  rt_pool_deinit(&p);
}

/* The exhaustion WARN: one line per burst, a burst ends with a put. */
static void test_exhaustion_logged_once_per_burst(void) {
  int fd = memfd_create("log", 0);
  T_REQUIRE(fd >= 0);
  rt_log_init("test", RT_LOG_DEBUG, NULL, 0);
  rt_log_set_fd(fd);
  rt_pool_t p;
  T_REQUIRE(rt_pool_init(&p, "conns", 16, 2) == 0);
  void *a = rt_pool_get(&p), *b = rt_pool_get(&p);
  for (int i = 0; i < 5; i++) T_CHECK(rt_pool_get(&p) == NULL);
  rt_pool_put(&p, a);
  a = rt_pool_get(&p);
  for (int i = 0; i < 3; i++) T_CHECK(rt_pool_get(&p) == NULL);
  T_CHECK_EQ_INT(p.exhausted_count, 8);
  rt_log_set_fd(quiet_fd);

  char text[4096];
  ssize_t n = pread(fd, text, sizeof text - 1, 0);
  T_REQUIRE(n > 0);
  text[n] = '\0';
  int lines = 0;
  for (char *line = strtok(text, "\n"); line != NULL; line = strtok(NULL, "\n")) {
    json_t *j = json_loads(line, 0, NULL);
    T_REQUIRE(j != NULL);
    T_CHECK_STR(json_string_value(json_object_get(j, "level")), "warn");
    T_CHECK_STR(json_string_value(json_object_get(j, "pool")), "conns");
    T_CHECK_EQ_INT(json_integer_value(json_object_get(j, "capacity")), 2);
    json_decref(j);
    lines++;
  }
  T_CHECK_EQ_INT(lines, 2);
  close(fd);
  rt_pool_put(&p, a);
  rt_pool_put(&p, b);
  rt_pool_deinit(&p);
}

/* Pages of a range that are in memory, by mincore(); -1 on error. */
static long resident_pages(const void *from, size_t bytes) {
  long page = sysconf(_SC_PAGESIZE);
  uintptr_t lo = ((uintptr_t)from + (uintptr_t)page - 1) & ~((uintptr_t)page - 1);
  uintptr_t hi = ((uintptr_t)from + bytes) & ~((uintptr_t)page - 1);
  if (hi <= lo) return 0;
  size_t n = (hi - lo) / (size_t)page;
  unsigned char *vec = malloc(n);
  if (vec == NULL || mincore((void *)lo, hi - lo, vec) != 0) {
    free(vec);
    return -1;
  }
  long in = 0;
  for (size_t i = 0; i < n; i++) in += vec[i] & 1;
  free(vec);
  return in;
}

/* A pool sized for far more than it serves costs memory only for what it
 * has handed out: a slot is first written when first taken. Objects given
 * back are taken again before any slot never used. */
static void test_untouched_until_used(void) {
  enum { CAP = 4096, OBJ = 4096 };
  rt_pool_t p;
  T_REQUIRE(rt_pool_init(&p, "lazy", OBJ, CAP) == 0);
  void *a = rt_pool_get(&p);
  void *b = rt_pool_get(&p);
  T_REQUIRE(a != NULL && b != NULL);
  T_CHECK(a == p.mem);
  T_CHECK((unsigned char *)b == p.mem + OBJ); /* in address order */
  rt_pool_put(&p, a);
  T_CHECK(rt_pool_get(&p) == a); /* given back: taken first */
  T_CHECK_EQ_INT(p.fresh, 2);
  /* 16 MiB asked for, two slots used: beyond the first 4 MiB (a huge
   * page or two may have come with the first touch), nothing resident. */
  size_t skip = 4u << 20;
  T_CHECK_EQ_INT(resident_pages(p.mem + skip, (size_t)CAP * OBJ - skip), 0);
  rt_pool_put(&p, a);
  rt_pool_put(&p, b);
  rt_pool_deinit(&p);
}

/* rt_pool_take() leaves a buffer's bytes as they were, but for the
 * free-list header; rt_pool_get() zeroes them all. */
static void test_take_does_not_zero(void) {
  rt_pool_t p;
  T_REQUIRE(rt_pool_init(&p, "bufs", 256, 2) == 0);
  unsigned char *a = rt_pool_take(&p);
  T_REQUIRE(a != NULL);
  memset(a, 0xAB, 256);
  rt_pool_put(&p, a);
  unsigned char *b = rt_pool_take(&p);
  T_REQUIRE(b == a);
  T_CHECK(all_bytes(b, 16, 0));
  T_CHECK(all_bytes(b + 16, 256 - 16, 0xAB));
  T_CHECK_EQ_INT(p.in_use, 1);
  rt_pool_put(&p, b);
  unsigned char *c = rt_pool_get(&p);
  T_REQUIRE(c == a);
  T_CHECK(all_bytes(c, 256, 0));
  rt_pool_put(&p, c);
  rt_pool_deinit(&p);
}

/* Runs fn in a child; true when the child died of SIGABRT (a failed
 * assert). The child's stderr is silenced: the message is expected. */
static bool aborts(void (*fn)(void)) {
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    int null = open("/dev/null", O_WRONLY);
    if (null >= 0) dup2(null, 2);
    fn();
    _exit(0);
  }
  int status;
  if (waitpid(pid, &status, 0) != pid) return false;
  return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static void double_put(void) {
  rt_pool_t p;
  rt_pool_init(&p, "dp", 32, 4);
  void *a = rt_pool_get(&p);
  void *b = rt_pool_get(&p);
  (void)b;
  rt_pool_put(&p, a);
  rt_pool_put(&p, a);
}

static void foreign_put(void) {
  rt_pool_t p, q;
  rt_pool_init(&p, "p", 32, 4);
  rt_pool_init(&q, "q", 32, 4);
  void *a = rt_pool_get(&p);
  (void)rt_pool_get(&q);
  rt_pool_put(&q, a);
}

static void misaligned_put(void) {
  rt_pool_t p;
  rt_pool_init(&p, "p", 32, 4);
  unsigned char *a = rt_pool_get(&p);
  rt_pool_put(&p, a + 16);
}

static void never_taken_put(void) {
  rt_pool_t p;
  rt_pool_init(&p, "p", 32, 4);
  unsigned char *a = rt_pool_get(&p);
  rt_pool_put(&p, a + 2 * 32);
}

static void leak_at_deinit(void) {
  rt_pool_t p;
  rt_pool_init(&p, "leak", 32, 4);
  (void)rt_pool_get(&p);
  rt_pool_deinit(&p);
}

static void clean_cycle(void) {
  rt_pool_t p;
  rt_pool_init(&p, "clean", 32, 4);
  void *a = rt_pool_get(&p);
  rt_pool_put(&p, a);
  rt_pool_deinit(&p);
}

static void test_misuse_aborts(void) {
  T_CHECK(!aborts(clean_cycle)); /* the harness itself tells them apart */
  T_CHECK(aborts(double_put));
  T_CHECK(aborts(foreign_put));
  T_CHECK(aborts(misaligned_put));
  T_CHECK(aborts(never_taken_put));
  T_CHECK(aborts(leak_at_deinit));
}

int main(void) {
  quiet_fd = open("/dev/null", O_WRONLY);
  if (quiet_fd < 0) return 1;
  rt_log_set_fd(quiet_fd);
  T_RUN(test_init);
  T_RUN(test_get_until_exhausted);
  T_RUN(test_in_use_max);
  T_RUN(test_owns);
  T_RUN(test_churn);
  T_RUN(test_exhaustion_logged_once_per_burst);
  T_RUN(test_untouched_until_used);
  T_RUN(test_take_does_not_zero);
  T_RUN(test_misuse_aborts);
  return t_done();
}
