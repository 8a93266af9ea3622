/*
 * test_log.c - JSON-lines logging: every line is parsed back with jansson.
 *
 * Output goes to a memfd (or a pipe where pipe semantics matter) through
 * rt_log_set_fd(); each test starts from an empty capture.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "rt.h"
#include "t.h"

/* RFC 4231 test case 2: HMAC-SHA256("Jefe", "what do ya want for nothing?")
 * = 5bdcc146bf60754e6a04..., of which the log keeps the first 8 bytes. */
static const uint8_t KEY_JEFE[] = {'J', 'e', 'f', 'e'};

static int cap_fd = -1;

/* Points the log at a fresh, empty memfd. */
static void cap_reset(void) {
  if (cap_fd < 0) {
    cap_fd = memfd_create("log", 0);
    if (cap_fd < 0) abort();
  }
  if (ftruncate(cap_fd, 0) != 0) abort();
  if (lseek(cap_fd, 0, SEEK_SET) != 0) abort();
  rt_log_set_fd(cap_fd);
}

/* Everything written since cap_reset(), NUL-terminated; free() it. */
static char *cap_text(size_t *len_out) {
  off_t size = lseek(cap_fd, 0, SEEK_END);
  char *buf = malloc((size_t)size + 1);
  if (buf == NULL) abort();
  ssize_t n = pread(cap_fd, buf, (size_t)size, 0);
  if (n != size) abort();
  buf[size] = '\0';
  if (len_out != NULL) *len_out = (size_t)size;
  return buf;
}

/* Splits text into lines and parses each; lines[i] is NULL for a line that
 * is not one valid JSON object. Returns the line count (at most max). A
 * final line without '\n' counts as invalid. */
static size_t parse_lines(const char *text, size_t len, json_t **lines,
                          size_t max) {
  size_t count = 0;
  const char *p = text, *end = text + len;
  while (p < end && count < max) {
    const char *nl = memchr(p, '\n', (size_t)(end - p));
    json_t *j = NULL;
    if (nl != NULL) {
      json_error_t err;
      j = json_loadb(p, (size_t)(nl - p), JSON_REJECT_DUPLICATES, &err);
      if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
      }
      if (j == NULL) {
        fprintf(stderr, "bad line: %.*s (%s)\n", (int)(nl - p > 200 ? 200 : nl - p),
                p, err.text);
      }
    }
    lines[count++] = j;
    p = nl != NULL ? nl + 1 : end;
  }
  return count;
}

static void free_lines(json_t **lines, size_t n) {
  for (size_t i = 0; i < n; i++) json_decref(lines[i]);
}

/* The keys of obj in order, joined by commas. */
static void keys_of(json_t *obj, char *out, size_t out_bytes) {
  out[0] = '\0';
  for (void *it = json_object_iter(obj); it != NULL;
       it = json_object_iter_next(obj, it)) {
    if (out[0] != '\0') strncat(out, ",", out_bytes - strlen(out) - 1);
    strncat(out, json_object_iter_key(it), out_bytes - strlen(out) - 1);
  }
}

static const char *str_of(json_t *obj, const char *key) {
  return json_string_value(json_object_get(obj, key));
}

/* Captures exactly one line and returns it parsed (or NULL). */
static json_t *one_line(char **raw_out) {
  size_t len;
  char *text = cap_text(&len);
  json_t *lines[4];
  size_t n = parse_lines(text, len, lines, 4);
  json_t *j = NULL;
  if (n == 1) {
    j = lines[0];
  } else {
    fprintf(stderr, "expected one line, got %zu: %s\n", n, text);
    free_lines(lines, n);
  }
  if (raw_out != NULL) {
    *raw_out = text;
  } else {
    free(text);
  }
  return j;
}

static void test_fields_in_order(void) {
  rt_log_init("test-proc", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  RT_INFO("hello", RT_LF_STR("a", "x"), RT_LF_INT("b", -42), RT_LF_BOOL("c", true),
          RT_LF_DBL("d", 0.1), RT_LF_STR("n", NULL), RT_LF_BOOL("f", false));
  char *raw;
  json_t *j = one_line(&raw);
  T_REQUIRE(j != NULL);
  char keys[256];
  keys_of(j, keys, sizeof keys);
  T_CHECK_STR(keys, "ts,level,proc,msg,a,b,c,d,n,f");
  T_CHECK_STR(str_of(j, "level"), "info");
  T_CHECK_STR(str_of(j, "proc"), "test-proc");
  T_CHECK_STR(str_of(j, "msg"), "hello");
  T_CHECK_STR(str_of(j, "a"), "x");
  T_CHECK_EQ_INT(json_integer_value(json_object_get(j, "b")), -42);
  T_CHECK(json_is_true(json_object_get(j, "c")));
  T_CHECK(json_is_false(json_object_get(j, "f")));
  T_CHECK(json_real_value(json_object_get(j, "d")) == 0.1);
  T_CHECK(json_is_null(json_object_get(j, "n")));
  T_CHECK(raw[strlen(raw) - 1] == '\n');
  T_CHECK(strstr(raw, "\"trunc\"") == NULL);

  /* No fields at all. */
  cap_reset();
  rt_log(RT_LOG_WARN, "bare", NULL, 0);
  json_t *k = one_line(NULL);
  T_REQUIRE(k != NULL);
  keys_of(k, keys, sizeof keys);
  T_CHECK_STR(keys, "ts,level,proc,msg");
  T_CHECK_STR(str_of(k, "level"), "warn");
  json_decref(k);
  json_decref(j);
  free(raw);
}

static void test_timestamp(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  /* The same clock as the logger: time() reads the kernel's coarse clock,
   * which can still show the previous second for a tick after
   * CLOCK_REALTIME has passed into the next one. */
  struct timespec ts_before, ts_after;
  clock_gettime(CLOCK_REALTIME, &ts_before);
  RT_ERROR("ts", RT_LF_INT("x", 1));
  clock_gettime(CLOCK_REALTIME, &ts_after);
  time_t before = ts_before.tv_sec, after = ts_after.tv_sec;
  json_t *j = one_line(NULL);
  T_REQUIRE(j != NULL);
  const char *ts = str_of(j, "ts");
  T_REQUIRE(ts != NULL);
  T_CHECK_EQ_INT(strlen(ts), 24);
  const char *pattern = "dddd-dd-ddTdd:dd:dd.dddZ";
  bool shape = true;
  for (size_t i = 0; i < 24 && ts[i] != '\0'; i++) {
    bool digit = ts[i] >= '0' && ts[i] <= '9';
    if (pattern[i] == 'd' ? !digit : ts[i] != pattern[i]) shape = false;
  }
  T_CHECK(shape);
  struct tm tm = {0};
  T_REQUIRE(strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm) != NULL);
  time_t t = timegm(&tm);
  T_CHECK(t >= before);
  T_CHECK(t <= after);
  T_CHECK_STR(str_of(j, "level"), "error");
  json_decref(j);
}

static void test_escaping(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  const char *in =
      "q\"b\\n\nt\tc\x01\x1f d\x7f|"
      "\xff|\xc3(|\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|" /* bad, bad, é€😀 */
      "\xc0\xaf|\xed\xa0\x80|\xf4\x90\x80\x80|end\xe2\x82"; /* overlong,
                                                surrogate, > U+10FFFF, cut */
#define FFFD "\xef\xbf\xbd"
  const char *want =
      "q\"b\\n\nt\tc\x01\x1f d\x7f|" FFFD "|" FFFD "(|\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80|"
      FFFD FFFD "|" FFFD FFFD FFFD "|" FFFD FFFD FFFD FFFD "|end" FFFD FFFD;
#undef FFFD
  RT_INFO(in, RT_LF_STR("v", in), RT_LF_STR("k\"ey\n", "x"));
  char *raw;
  json_t *j = one_line(&raw);
  T_REQUIRE(j != NULL);
  T_CHECK_STR(str_of(j, "msg"), want);
  T_CHECK_STR(str_of(j, "v"), want);
  T_CHECK_STR(str_of(j, "k\"ey\n"), "x");
  /* Control characters as \u00XX; only the final newline is raw. */
  T_CHECK(strstr(raw, "\\u0001") != NULL);
  T_CHECK(strstr(raw, "\\u001f") != NULL);
  T_CHECK(strstr(raw, "\\u000a") != NULL);
  T_CHECK(strstr(raw, "\\u0009") != NULL);
  T_CHECK(strstr(raw, "q\\\"b\\\\n") != NULL);
  size_t ctl = 0;
  for (const char *p = raw; *p != '\0'; p++) ctl += (unsigned char)*p < 0x20;
  T_CHECK_EQ_INT(ctl, 1);
  json_decref(j);
  free(raw);
}

static void test_mask(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  RT_INFO("login", RT_LF_MASK("password", "s3cr3t-Value"),
          RT_LF_MASK("token", NULL), RT_LF_MASK("empty", ""));
  char *raw;
  json_t *j = one_line(&raw);
  T_REQUIRE(j != NULL);
  T_CHECK_STR(str_of(j, "password"), "***");
  T_CHECK_STR(str_of(j, "token"), "***");
  T_CHECK_STR(str_of(j, "empty"), "***");
  T_CHECK(strstr(raw, "s3cr3t") == NULL);
  json_decref(j);
  free(raw);
}

static bool hash_shape(const char *h) {
  if (h == NULL || strlen(h) != 18 || strncmp(h, "h:", 2) != 0) return false;
  for (size_t i = 2; i < 18; i++) {
    bool hex = (h[i] >= '0' && h[i] <= '9') || (h[i] >= 'a' && h[i] <= 'f');
    if (!hex) return false;
  }
  return true;
}

static void test_hash(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  char h[19];
  const char *rfc = "what do ya want for nothing?";
  rt_log_hash(rfc, strlen(rfc), h);
  T_CHECK_STR(h, "h:5bdcc146bf60754e");

  cap_reset();
  RT_INFO("h", RT_LF_HASH("e1", "alice@example.com"),
          RT_LF_HASH("e2", "alice@example.com"),
          RT_LF_HASH("e3", "alice@example.con"), RT_LF_HASH("e4", NULL));
  char *raw;
  json_t *j = one_line(&raw);
  T_REQUIRE(j != NULL);
  const char *e1 = str_of(j, "e1"), *e2 = str_of(j, "e2"), *e3 = str_of(j, "e3");
  T_CHECK(hash_shape(e1));
  T_CHECK(hash_shape(e3));
  T_CHECK_STR(e1, e2);
  T_CHECK(e1 != NULL && e3 != NULL && strcmp(e1, e3) != 0);
  T_CHECK(json_is_null(json_object_get(j, "e4")));
  T_CHECK(strstr(raw, "alice") == NULL);
  T_CHECK(strstr(raw, "example") == NULL);
  rt_log_hash("alice@example.com", 17, h);
  T_CHECK_STR(e1, h);
  json_decref(j);
  free(raw);

  /* Another key, another hash; no key: a random one, still well formed. */
  const uint8_t other[] = "another key";
  rt_log_init("p", RT_LOG_DEBUG, other, sizeof other - 1);
  char h2[19];
  rt_log_hash(rfc, strlen(rfc), h2);
  T_CHECK(hash_shape(h2));
  T_CHECK(strcmp(h2, "h:5bdcc146bf60754e") != 0);
  rt_log_init("p", RT_LOG_DEBUG, NULL, 0);
  rt_log_hash(rfc, strlen(rfc), h2);
  T_CHECK(hash_shape(h2));
  rt_log_hash("", 0, h2);
  T_CHECK(hash_shape(h2));
}

static void test_request_id(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  rt_log_set_request_id("req-\"1\"");
  RT_INFO("with", RT_LF_INT("x", 1));
  json_t *j = one_line(NULL);
  T_REQUIRE(j != NULL);
  char keys[128];
  keys_of(j, keys, sizeof keys);
  T_CHECK_STR(keys, "ts,level,proc,rid,msg,x");
  T_CHECK_STR(str_of(j, "rid"), "req-\"1\"");
  json_decref(j);

  cap_reset();
  rt_log_set_request_id(NULL);
  RT_INFO("without", RT_LF_INT("x", 1));
  j = one_line(NULL);
  T_REQUIRE(j != NULL);
  T_CHECK(json_object_get(j, "rid") == NULL);
  json_decref(j);

  /* At most 63 bytes kept, cut between characters (é is 2 bytes). */
  char long_id[128];
  memset(long_id, 'r', 62);
  strcpy(long_id + 62, "\xc3\xa9tail");
  cap_reset();
  rt_log_set_request_id(long_id);
  RT_INFO("long", RT_LF_INT("x", 1));
  rt_log_set_request_id(NULL);
  j = one_line(NULL);
  T_REQUIRE(j != NULL);
  const char *rid = str_of(j, "rid");
  T_REQUIRE(rid != NULL);
  T_CHECK_EQ_INT(strlen(rid), 62);
  T_CHECK(strncmp(rid, long_id, 62) == 0);
  json_decref(j);
}

static void test_levels(void) {
  T_CHECK_EQ_INT(rt_log_level_parse("debug"), RT_LOG_DEBUG);
  T_CHECK_EQ_INT(rt_log_level_parse("info"), RT_LOG_INFO);
  T_CHECK_EQ_INT(rt_log_level_parse("warn"), RT_LOG_WARN);
  T_CHECK_EQ_INT(rt_log_level_parse("error"), RT_LOG_ERROR);
  T_CHECK_EQ_INT(rt_log_level_parse("ERROR"), RT_LOG_ERROR);
  T_CHECK_EQ_INT(rt_log_level_parse("warning"), -1);
  T_CHECK_EQ_INT(rt_log_level_parse(""), -1);
  T_CHECK_EQ_INT(rt_log_level_parse("info "), -1);
  T_CHECK_EQ_INT(rt_log_level_parse(NULL), -1);

  rt_log_init("p", RT_LOG_WARN, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  RT_DEBUG("d", RT_LF_INT("x", 1));
  RT_INFO("i", RT_LF_INT("x", 1));
  RT_WARN("w", RT_LF_INT("x", 1));
  RT_ERROR("e", RT_LF_INT("x", 1));
  size_t len;
  char *text = cap_text(&len);
  json_t *lines[8];
  size_t n = parse_lines(text, len, lines, 8);
  T_CHECK_EQ_INT(n, 2);
  if (n == 2 && lines[0] != NULL && lines[1] != NULL) {
    T_CHECK_STR(str_of(lines[0], "msg"), "w");
    T_CHECK_STR(str_of(lines[1], "msg"), "e");
    T_CHECK_STR(str_of(lines[0], "level"), "warn");
    T_CHECK_STR(str_of(lines[1], "level"), "error");
  }
  free_lines(lines, n);
  free(text);
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
}

static void test_numbers(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  RT_INFO("n", RT_LF_INT("min", INT64_MIN), RT_LF_INT("max", INT64_MAX),
          RT_LF_INT("zero", 0), RT_LF_DBL("third", 1.0 / 3.0),
          RT_LF_DBL("big", -1.5e300), RT_LF_DBL("tiny", 4.9e-324),
          RT_LF_DBL("nan", NAN), RT_LF_DBL("inf", INFINITY),
          RT_LF_DBL("ninf", -INFINITY), RT_LF_DBL("whole", 3.0));
  json_t *j = one_line(NULL);
  T_REQUIRE(j != NULL);
  T_CHECK(json_integer_value(json_object_get(j, "min")) == INT64_MIN);
  T_CHECK(json_integer_value(json_object_get(j, "max")) == INT64_MAX);
  T_CHECK(json_is_integer(json_object_get(j, "zero")));
  T_CHECK(json_number_value(json_object_get(j, "third")) == 1.0 / 3.0);
  T_CHECK(json_number_value(json_object_get(j, "big")) == -1.5e300);
  T_CHECK(json_number_value(json_object_get(j, "tiny")) == 4.9e-324);
  T_CHECK(json_is_null(json_object_get(j, "nan")));
  T_CHECK(json_is_null(json_object_get(j, "inf")));
  T_CHECK(json_is_null(json_object_get(j, "ninf")));
  T_CHECK(json_number_value(json_object_get(j, "whole")) == 3.0);
  json_decref(j);
}

/* Logs msg (plus a field after it) and checks the cut line. */
static void check_cut(const char *msg, size_t msg_len, bool msg_cut) {
  cap_reset();
  RT_INFO(msg, RT_LF_STR("after", "field"));
  char *raw;
  json_t *j = one_line(&raw);
  T_REQUIRE(j != NULL);
  T_CHECK(strlen(raw) <= 4096);
  T_CHECK(json_is_true(json_object_get(j, "trunc")));
  const char *m = str_of(j, "msg");
  T_REQUIRE(m != NULL);
  if (msg_cut) {
    T_CHECK(strlen(m) < msg_len);
    T_CHECK(strlen(m) > 3000 / 6);
    T_CHECK(strncmp(m, msg, strlen(m)) == 0); /* a prefix, whole chars */
    T_CHECK(json_object_get(j, "after") == NULL);
  }
  char keys[128];
  keys_of(j, keys, sizeof keys);
  T_CHECK(strncmp(keys, "ts,level,proc,msg", 17) == 0);
  T_CHECK(strcmp(keys + strlen(keys) - 5, "trunc") == 0);
  json_decref(j);
  free(raw);
}

static void test_truncation(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  enum { BIG = 10 * 1024 };
  char *msg = malloc(BIG + 1);
  T_REQUIRE(msg != NULL);

  memset(msg, 'a', BIG);
  msg[BIG] = '\0';
  check_cut(msg, BIG, true);

  for (size_t i = 0; i + 2 <= BIG; i += 2) memcpy(msg + i, "\xc3\xa9", 2);
  check_cut(msg, BIG, true); /* é: the cut must fall between characters */

  for (size_t i = 0; i + 3 <= BIG; i += 3) memcpy(msg + i, "\xe2\x82\xac", 3);
  msg[BIG - BIG % 3] = '\0';
  check_cut(msg, strlen(msg), true);

  memset(msg, '\x01', BIG); /* each byte takes 6 as \u0001 */
  msg[BIG] = '\0';
  cap_reset();
  RT_INFO(msg, RT_LF_INT("x", 1));
  char *raw;
  json_t *j = one_line(&raw);
  T_REQUIRE(j != NULL);
  T_CHECK(strlen(raw) <= 4096);
  T_CHECK(json_is_true(json_object_get(j, "trunc")));
  json_decref(j);
  free(raw);

  /* Many fields: the cut falls between fields or inside a value. */
  enum { FIELDS = 400 };
  rt_log_field_t fields[FIELDS];
  char keys[FIELDS][16];
  for (size_t i = 0; i < FIELDS; i++) {
    snprintf(keys[i], sizeof keys[i], "key%zu", i);
    fields[i] = i % 3 == 0   ? RT_LF_INT(keys[i], i)
                : i % 3 == 1 ? RT_LF_HASH(keys[i], "someone@example.com")
                             : RT_LF_STR(keys[i], "value \"quoted\"");
  }
  for (size_t skip = 0; skip < 3; skip++) {
    cap_reset();
    rt_log(RT_LOG_INFO, "many", fields + skip, FIELDS - skip);
    j = one_line(&raw);
    T_REQUIRE(j != NULL);
    T_CHECK(strlen(raw) <= 4096);
    T_CHECK(strlen(raw) > 4000);
    T_CHECK(json_is_true(json_object_get(j, "trunc")));
    json_decref(j);
    free(raw);
  }

  /* A short line has no "trunc". */
  cap_reset();
  msg[100] = '\0';
  memset(msg, 'b', 100);
  RT_INFO(msg, RT_LF_INT("x", 1));
  j = one_line(NULL);
  T_REQUIRE(j != NULL);
  T_CHECK(json_object_get(j, "trunc") == NULL);
  json_decref(j);
  free(msg);
}

static size_t cap_size(void) { return (size_t)lseek(cap_fd, 0, SEEK_END); }

static void test_buffered(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  rt_log_set_buffered(true);
  RT_INFO("one", RT_LF_INT("i", 1));
  RT_WARN("two", RT_LF_INT("i", 2));
  T_CHECK_EQ_INT(cap_size(), 0);
  rt_log_flush();
  size_t after_flush = cap_size();
  T_CHECK(after_flush > 0);
  RT_INFO("three", RT_LF_INT("i", 3));
  T_CHECK_EQ_INT(cap_size(), after_flush);
  RT_ERROR("four", RT_LF_INT("i", 4)); /* ERROR goes out at once, in order */
  size_t len;
  char *text = cap_text(&len);
  json_t *lines[8];
  size_t n = parse_lines(text, len, lines, 8);
  T_CHECK_EQ_INT(n, 4);
  for (size_t i = 0; i < n; i++) {
    T_CHECK(lines[i] != NULL &&
            json_integer_value(json_object_get(lines[i], "i")) == (int)i + 1);
  }
  free_lines(lines, n);
  free(text);

  /* A full buffer is written without waiting for a flush. */
  cap_reset();
  char pad[201];
  memset(pad, 'p', 200);
  pad[200] = '\0';
  enum { COUNT = 1000 };
  for (int i = 0; i < COUNT; i++) RT_INFO(pad, RT_LF_INT("i", i));
  size_t written = cap_size();
  T_CHECK(written > 0);
  rt_log_set_buffered(false); /* turning it off flushes */
  text = cap_text(&len);
  T_CHECK(len > written);             /* some lines were still waiting */
  T_CHECK(len - written <= 64 * 1024); /* no more than one buffer's worth */
  json_t **all = calloc(COUNT + 1, sizeof *all);
  T_REQUIRE(all != NULL);
  n = parse_lines(text, len, all, COUNT + 1);
  T_CHECK_EQ_INT(n, COUNT);
  bool in_order = true;
  for (size_t i = 0; i < n; i++) {
    if (all[i] == NULL ||
        json_integer_value(json_object_get(all[i], "i")) != (json_int_t)i) {
      in_order = false;
    }
  }
  T_CHECK(in_order);
  free_lines(all, n);
  free(all);
  free(text);

  /* Unbuffered again: every line at once. */
  cap_reset();
  RT_INFO("now", RT_LF_INT("i", 0));
  T_CHECK(cap_size() > 0);
}

static void *exit_without_flush(void *arg) {
  (void)arg;
  rt_log_set_buffered(true);
  RT_INFO("before exit", RT_LF_INT("i", 1));
  RT_INFO("before exit", RT_LF_INT("i", 2));
  return NULL;
}

static void test_thread_exit_flushes(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  cap_reset();
  pthread_t th;
  T_REQUIRE(pthread_create(&th, NULL, exit_without_flush, NULL) == 0);
  pthread_join(th, NULL);
  size_t len;
  char *text = cap_text(&len);
  json_t *lines[4];
  size_t n = parse_lines(text, len, lines, 4);
  T_CHECK_EQ_INT(n, 2);
  T_CHECK(n == 2 && lines[0] != NULL && lines[1] != NULL);
  free_lines(lines, n);
  free(text);
}

/* Several threads at once, into a pipe (where writes above PIPE_BUF could
 * interleave), some buffered and some not, lines up to ~3 KiB. */
enum { WRITERS = 8, PER_WRITER = 1500 };

static char writer_pad[3001]; /* filled by test_threads() */

typedef struct writer_arg {
  int index;
} writer_arg_t;

static void *writer(void *p) {
  writer_arg_t *a = p;
  char rid[16];
  snprintf(rid, sizeof rid, "w%d", a->index);
  rt_log_set_request_id(rid);
  bool buffered = a->index % 2 == 0;
  if (buffered) rt_log_set_buffered(true);
  uint32_t seed = (uint32_t)a->index * 2654435761u + 1;
  for (int i = 0; i < PER_WRITER; i++) {
    seed = seed * 1103515245u + 12345u;
    size_t len = (seed >> 8) % 3000;
    RT_INFO(writer_pad + 3000 - len, RT_LF_INT("w", a->index), RT_LF_INT("seq", i),
            RT_LF_HASH("who", rid));
    if (buffered && i % 37 == 0) rt_log_flush();
  }
  if (buffered) rt_log_set_buffered(false);
  return NULL;
}

typedef struct reader_arg {
  int fd;
  char *buf;
  size_t len;
  size_t cap;
} reader_arg_t;

static void *reader(void *p) {
  reader_arg_t *r = p;
  for (;;) {
    if (r->cap - r->len < 65536) {
      r->cap = r->cap * 2 + 65536;
      r->buf = realloc(r->buf, r->cap);
      if (r->buf == NULL) abort();
    }
    ssize_t n = read(r->fd, r->buf + r->len, r->cap - r->len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r->len += (size_t)n;
  }
  return NULL;
}

static void test_threads(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  memset(writer_pad, 'x', 3000);
  int fds[2];
  T_REQUIRE(pipe(fds) == 0);
  rt_log_set_fd(fds[1]);
  reader_arg_t r = {.fd = fds[0]};
  pthread_t rth, wth[WRITERS];
  writer_arg_t wa[WRITERS];
  T_REQUIRE(pthread_create(&rth, NULL, reader, &r) == 0);
  for (int i = 0; i < WRITERS; i++) {
    wa[i].index = i;
    if (pthread_create(&wth[i], NULL, writer, &wa[i]) != 0) abort();
  }
  for (int i = 0; i < WRITERS; i++) pthread_join(wth[i], NULL);
  close(fds[1]);
  pthread_join(rth, NULL);
  close(fds[0]);
  cap_reset();

  size_t max = WRITERS * PER_WRITER + 1;
  json_t **lines = calloc(max, sizeof *lines);
  T_REQUIRE(lines != NULL);
  size_t n = parse_lines(r.buf, r.len, lines, max);
  T_CHECK_EQ_INT(n, WRITERS * PER_WRITER);
  size_t bad = 0, out_of_order = 0, wrong_rid = 0;
  int next_seq[WRITERS] = {0};
  for (size_t i = 0; i < n; i++) {
    if (lines[i] == NULL) {
      bad++;
      continue;
    }
    json_int_t w = json_integer_value(json_object_get(lines[i], "w"));
    json_int_t seq = json_integer_value(json_object_get(lines[i], "seq"));
    if (w < 0 || w >= WRITERS) {
      bad++;
      continue;
    }
    if (seq != next_seq[w]) out_of_order++;
    next_seq[w] = (int)seq + 1;
    char rid[16];
    snprintf(rid, sizeof rid, "w%d", (int)w);
    const char *got = str_of(lines[i], "rid");
    if (got == NULL || strcmp(got, rid) != 0) wrong_rid++;
  }
  T_CHECK_EQ_INT(bad, 0);
  T_CHECK_EQ_INT(out_of_order, 0);
  T_CHECK_EQ_INT(wrong_rid, 0);
  for (int w = 0; w < WRITERS; w++) T_CHECK_EQ_INT(next_seq[w], PER_WRITER);
  free_lines(lines, n);
  free(lines);
  free(r.buf);
}

/* Reads whatever the non-blocking pipe holds; returns bytes read. */
static size_t drain(int fd, char **buf, size_t *len, size_t *cap) {
  size_t got = 0;
  for (;;) {
    if (*cap - *len < 8192) {
      *cap = *cap * 2 + 8192;
      *buf = realloc(*buf, *cap);
      if (*buf == NULL) abort();
    }
    ssize_t n = read(fd, *buf + *len, *cap - *len);
    if (n <= 0) break;
    *len += (size_t)n;
    got += (size_t)n;
  }
  return got;
}

static void test_full_fd_drops_whole_lines(void) {
  rt_log_init("p", RT_LOG_DEBUG, KEY_JEFE, sizeof KEY_JEFE);
  int fds[2];
  T_REQUIRE(pipe2(fds, O_NONBLOCK) == 0);
  fcntl(fds[1], F_SETPIPE_SZ, 4096);
  rt_log_set_fd(fds[1]);
  uint64_t dropped_before = rt_log_dropped_count();
  char pad[301];
  memset(pad, 'z', 300);
  pad[300] = '\0';
  enum { COUNT = 1000 };
  for (int i = 0; i < COUNT; i++) RT_INFO(pad, RT_LF_INT("i", i)); /* no reader */
  uint64_t dropped = rt_log_dropped_count() - dropped_before;
  T_CHECK(dropped > 0);
  T_CHECK(dropped < COUNT);

  /* What was kept comes out once the reader catches up. */
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (int idle = 0, rounds = 0; idle < 3 && rounds < 10000; rounds++) {
    idle = drain(fds[0], &buf, &len, &cap) == 0 ? idle + 1 : 0;
    rt_log_flush();
  }
  cap_reset();
  close(fds[0]);
  close(fds[1]);
  json_t **lines = calloc(COUNT + 1, sizeof *lines);
  T_REQUIRE(lines != NULL);
  size_t n = parse_lines(buf, len, lines, COUNT + 1);
  T_CHECK_EQ_INT(n + dropped, COUNT);
  size_t bad = 0;
  json_int_t last = -1;
  for (size_t i = 0; i < n; i++) {
    json_int_t v = lines[i] != NULL ? json_integer_value(json_object_get(lines[i], "i")) : -1;
    if (lines[i] == NULL || v <= last) bad++;
    last = v;
  }
  T_CHECK_EQ_INT(bad, 0);
  free_lines(lines, n);
  free(lines);
  free(buf);

  /* A broken fd drops and counts every line. */
  int dead = dup(2);
  close(dead);
  rt_log_set_fd(dead);
  dropped_before = rt_log_dropped_count();
  RT_INFO("lost", RT_LF_INT("i", 1));
  RT_ERROR("lost", RT_LF_INT("i", 2));
  T_CHECK_EQ_INT(rt_log_dropped_count() - dropped_before, 2);
  errno = ENOENT; /* a failed write must not leak its EBADF to the caller */
  RT_ERROR("lost", RT_LF_INT("i", 3));
  T_CHECK_EQ_INT(errno, ENOENT);
  cap_reset();
}

int main(void) {
  T_RUN(test_fields_in_order);
  T_RUN(test_timestamp);
  T_RUN(test_escaping);
  T_RUN(test_mask);
  T_RUN(test_hash);
  T_RUN(test_request_id);
  T_RUN(test_levels);
  T_RUN(test_numbers);
  T_RUN(test_truncation);
  T_RUN(test_buffered);
  T_RUN(test_thread_exit_flushes);
  T_RUN(test_threads);
  T_RUN(test_full_fd_drops_whole_lines);
  return t_done();
}
