/*
 * t.h - the smallest test harness that does the job.
 *
 * Each unit test is one executable: T_CHECK() records a failure and goes on,
 * T_REQUIRE() records it and returns from the test function, and t_done()
 * prints "N passed, N failed" and gives the exit code meson expects.
 */
#ifndef T_H
#define T_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int t_checks_passed;
static int t_checks_failed;

#define T_CHECK(cond)                                                        \
  do {                                                                       \
    if (cond) {                                                              \
      t_checks_passed++;                                                     \
    } else {                                                                 \
      t_checks_failed++;                                                     \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
    }                                                                        \
  } while (0)

#define T_REQUIRE(cond)                                                      \
  do {                                                                       \
    if (!(cond)) {                                                           \
      t_checks_failed++;                                                     \
      fprintf(stderr, "%s:%d: required: %s\n", __FILE__, __LINE__, #cond);   \
      return;                                                                \
    }                                                                        \
    t_checks_passed++;                                                       \
  } while (0)

#define T_CHECK_EQ_INT(a, b)                                                 \
  do {                                                                       \
    long long t_a_ = (long long)(a), t_b_ = (long long)(b);                  \
    if (t_a_ == t_b_) {                                                      \
      t_checks_passed++;                                                     \
    } else {                                                                 \
      t_checks_failed++;                                                     \
      fprintf(stderr, "%s:%d: %s == %s failed: %lld != %lld\n", __FILE__,   \
              __LINE__, #a, #b, t_a_, t_b_);                                 \
    }                                                                        \
  } while (0)

#define T_CHECK_STR(a, b)                                                    \
  do {                                                                       \
    const char *t_a_ = (a), *t_b_ = (b);                                     \
    if (t_a_ && t_b_ && strcmp(t_a_, t_b_) == 0) {                           \
      t_checks_passed++;                                                     \
    } else {                                                                 \
      t_checks_failed++;                                                     \
      fprintf(stderr, "%s:%d: %s == %s failed: \"%s\" != \"%s\"\n",         \
              __FILE__, __LINE__, #a, #b, t_a_ ? t_a_ : "(null)",            \
              t_b_ ? t_b_ : "(null)");                                       \
    }                                                                        \
  } while (0)

#define T_RUN(fn)                                                            \
  do {                                                                       \
    int t_before_ = t_checks_failed;                                         \
    fn();                                                                    \
    fprintf(stderr, "%s %s\n", t_checks_failed == t_before_ ? "ok  " : "FAIL", #fn); \
  } while (0)

static inline int t_done(void) {
  printf("%d passed, %d failed\n", t_checks_passed, t_checks_failed);
  if (t_checks_passed == 0) return 1; /* a test that checked nothing fails */
  return t_checks_failed == 0 ? 0 : 1;
}

#endif /* T_H */
