/*
 * test_env.c - configuration from the environment: every accepted and
 * rejected spelling, and the ERROR line that names a bad variable.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "rt.h"
#include "t.h"

#define VAR "PAYCORE_TEST_VAR"

static int log_fd = -1;

static void log_reset(void) {
  if (ftruncate(log_fd, 0) != 0) abort();
  if (lseek(log_fd, 0, SEEK_SET) != 0) abort(); /* writes use the offset */
}

/* The single line logged since log_reset(), parsed; NULL if not one line. */
static json_t *logged_line(void) {
  char text[8192];
  ssize_t n = pread(log_fd, text, sizeof text - 1, 0);
  if (n <= 0) return NULL;
  text[n] = '\0';
  char *nl = strchr(text, '\n');
  if (nl == NULL || nl[1] != '\0') return NULL;
  return json_loads(text, 0, NULL);
}

static void test_str(void) {
  unsetenv(VAR);
  T_CHECK_STR(rt_env_str(VAR, "dflt"), "dflt");
  T_CHECK(rt_env_str(VAR, NULL) == NULL);
  setenv(VAR, "", 1);
  T_CHECK_STR(rt_env_str(VAR, "dflt"), "dflt");
  setenv(VAR, "postgres://db", 1);
  T_CHECK_STR(rt_env_str(VAR, "dflt"), "postgres://db");
  setenv(VAR, " ", 1);
  T_CHECK_STR(rt_env_str(VAR, "dflt"), " ");
}

/* Sets VAR (NULL: unsets) and parses it as a u32. */
static int u32(const char *value, uint32_t min, uint32_t max, uint32_t *out) {
  if (value != NULL) {
    setenv(VAR, value, 1);
  } else {
    unsetenv(VAR);
  }
  *out = 777777;
  return rt_env_u32(VAR, 5, min, max, out);
}

static void test_u32_accepted(void) {
  static const struct {
    const char *in;
    uint32_t want;
  } ok[] = {
      {NULL, 5}, {"", 5}, {"0", 0}, {"1", 1}, {"42", 42}, {"007", 7},
      {"4294967295", UINT32_MAX}, {"0004294967295", UINT32_MAX},
      {"000000000000000000000000001", 1},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    uint32_t v;
    int rc = u32(ok[i].in, 0, UINT32_MAX, &v);
    T_CHECK_EQ_INT(rc, 0);
    T_CHECK_EQ_INT(v, ok[i].want);
    if (rc != 0) fprintf(stderr, "  rejected \"%s\"\n", ok[i].in);
  }
  uint32_t v;
  T_CHECK_EQ_INT(u32("10", 10, 20, &v), 0);
  T_CHECK_EQ_INT(v, 10);
  T_CHECK_EQ_INT(u32("20", 10, 20, &v), 0);
  T_CHECK_EQ_INT(v, 20);
  /* The fallback is not range-checked against what the env may say. */
  T_CHECK_EQ_INT(u32(NULL, 10, 20, &v), 0);
  T_CHECK_EQ_INT(v, 5);
}

static void test_u32_rejected(void) {
  static const char *const bad[] = {
      "4294967296", "99999999999999999999999", "-1", "+1", "-0", " 1", "1 ",
      "1x", "x1", "0x10", "1.5", "1e3", "abc", "1,000", "1_000", "\t7",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint32_t v;
    int rc = u32(bad[i], 0, UINT32_MAX, &v);
    T_CHECK_EQ_INT(rc, RT_E_CONFIG);
    T_CHECK_EQ_INT(v, 777777); /* untouched on error */
    if (rc != RT_E_CONFIG) fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
  }
  uint32_t v;
  T_CHECK_EQ_INT(u32("9", 10, 20, &v), RT_E_CONFIG);
  T_CHECK_EQ_INT(u32("21", 10, 20, &v), RT_E_CONFIG);
  T_CHECK_EQ_INT(u32("0", 1, 20, &v), RT_E_CONFIG);
}

static void test_u32_error_is_logged(void) {
  log_reset();
  uint32_t v;
  T_CHECK_EQ_INT(u32("12x", 10, 20, &v), RT_E_CONFIG);
  json_t *j = logged_line();
  T_REQUIRE(j != NULL);
  T_CHECK_STR(json_string_value(json_object_get(j, "level")), "error");
  T_CHECK_STR(json_string_value(json_object_get(j, "var")), VAR);
  T_CHECK_STR(json_string_value(json_object_get(j, "value")), "12x");
  T_CHECK_EQ_INT(json_integer_value(json_object_get(j, "min")), 10);
  T_CHECK_EQ_INT(json_integer_value(json_object_get(j, "max")), 20);
  json_decref(j);

  /* Success and fallback log nothing. */
  log_reset();
  T_CHECK_EQ_INT(u32("15", 10, 20, &v), 0);
  T_CHECK_EQ_INT(u32(NULL, 10, 20, &v), 0);
  T_CHECK_EQ_INT(lseek(log_fd, 0, SEEK_END), 0);
}

static int boolean(const char *value, bool fallback, bool *out) {
  if (value != NULL) {
    setenv(VAR, value, 1);
  } else {
    unsetenv(VAR);
  }
  return rt_env_bool(VAR, fallback, out);
}

static void test_bool(void) {
  static const char *const yes[] = {"1", "true", "yes", "on", "TRUE", "Yes", "ON"};
  static const char *const no[] = {"0", "false", "no", "off", "FALSE", "No", "Off"};
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    bool b = false;
    T_CHECK_EQ_INT(boolean(yes[i], false, &b), 0);
    T_CHECK(b);
  }
  for (size_t i = 0; i < sizeof no / sizeof no[0]; i++) {
    bool b = true;
    T_CHECK_EQ_INT(boolean(no[i], true, &b), 0);
    T_CHECK(!b);
  }
  bool b = false;
  T_CHECK_EQ_INT(boolean(NULL, true, &b), 0);
  T_CHECK(b);
  T_CHECK_EQ_INT(boolean("", true, &b), 0);
  T_CHECK(b);
  T_CHECK_EQ_INT(boolean(NULL, false, &b), 0);
  T_CHECK(!b);

  static const char *const bad[] = {"2", "-1", "y", "n", "t", "f", "yess",
                                    " true", "true ", "enabled", "01", "onn"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    b = true;
    int rc = boolean(bad[i], false, &b);
    T_CHECK_EQ_INT(rc, RT_E_CONFIG);
    T_CHECK(b); /* untouched */
    if (rc != RT_E_CONFIG) fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
  }

  log_reset();
  T_CHECK_EQ_INT(boolean("maybe", false, &b), RT_E_CONFIG);
  json_t *j = logged_line();
  T_REQUIRE(j != NULL);
  T_CHECK_STR(json_string_value(json_object_get(j, "var")), VAR);
  json_decref(j);
}

static int ms(const char *value, uint32_t *out) {
  if (value != NULL) {
    setenv(VAR, value, 1);
  } else {
    unsetenv(VAR);
  }
  *out = 777777;
  return rt_env_ms(VAR, 1500, out);
}

static void test_ms(void) {
  static const struct {
    const char *in;
    uint32_t want;
  } ok[] = {
      {NULL, 1500},       {"", 1500},          {"250ms", 250},
      {"5s", 5000},       {"2m", 120000},      {"250", 250},
      {"0", 0},           {"0s", 0},           {"0ms", 0},
      {"0m", 0},          {"1ms", 1},          {"4294967295", UINT32_MAX},
      {"4294967295ms", UINT32_MAX}, {"4294967s", 4294967000u},
      {"71582m", 4294920000u},      {"0010s", 10000},
  };
  for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
    uint32_t v;
    int rc = ms(ok[i].in, &v);
    T_CHECK_EQ_INT(rc, 0);
    T_CHECK_EQ_INT(v, ok[i].want);
    if (rc != 0) fprintf(stderr, "  rejected \"%s\"\n", ok[i].in);
  }

  static const char *const bad[] = {
      "4294968s", "71583m", "4294967296", "4294967296ms", "5 s", "5S", "5MS",
      "5sec", "5ms ", " 5s", "ms", "s", "m", "-5s", "+5", "1.5s", "5h", "5d",
      "0x5", "5us", "5ns", "5mss", "s5", "five",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    uint32_t v;
    int rc = ms(bad[i], &v);
    T_CHECK_EQ_INT(rc, RT_E_CONFIG);
    T_CHECK_EQ_INT(v, 777777);
    if (rc != RT_E_CONFIG) fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
  }

  log_reset();
  uint32_t v;
  T_CHECK_EQ_INT(ms("3 days", &v), RT_E_CONFIG);
  json_t *j = logged_line();
  T_REQUIRE(j != NULL);
  T_CHECK_STR(json_string_value(json_object_get(j, "var")), VAR);
  T_CHECK_EQ_INT(json_integer_value(json_object_get(j, "max")), UINT32_MAX);
  json_decref(j);
}

static void test_addr(void) {
  char host[16];
  uint16_t port;
  unsetenv(VAR);
  T_CHECK_EQ_INT(rt_env_addr(VAR, "127.0.0.1:7002", host, sizeof host, &port), 0);
  T_CHECK_STR(host, "127.0.0.1");
  T_CHECK_EQ_INT(port, 7002);
  setenv(VAR, "localhost:65535", 1);
  T_CHECK_EQ_INT(rt_env_addr(VAR, "127.0.0.1:7002", host, sizeof host, &port), 0);
  T_CHECK_STR(host, "localhost");
  T_CHECK_EQ_INT(port, 65535);
  static const char *const bad[] = {
      "127.0.0.1", ":7002", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:+7",
      "127.0.0.1:7002 ", "127.0.0.1:0x10", "a-very-long-host-name:1",
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    setenv(VAR, bad[i], 1);
    strcpy(host, "kept");
    port = 9;
    int rc = rt_env_addr(VAR, "127.0.0.1:7002", host, sizeof host, &port);
    T_CHECK_EQ_INT(rc, RT_E_CONFIG);
    T_CHECK_STR(host, "kept");
    T_CHECK_EQ_INT(port, 9);
    if (rc != RT_E_CONFIG) fprintf(stderr, "  accepted \"%s\"\n", bad[i]);
  }
}

int main(void) {
  log_fd = memfd_create("log", 0);
  if (log_fd < 0) return 1;
  rt_log_init("test-env", RT_LOG_DEBUG, NULL, 0);
  rt_log_set_fd(log_fd);
  T_RUN(test_str);
  T_RUN(test_u32_accepted);
  T_RUN(test_u32_rejected);
  T_RUN(test_u32_error_is_logged);
  T_RUN(test_bool);
  T_RUN(test_ms);
  T_RUN(test_addr);
  unsetenv(VAR);
  return t_done();
}
