/*
 * The JSON member scanner: top-level members only (nested ones with the
 * same name are skipped), strings with escapes, integers at their limits,
 * booleans, and malformed text refused rather than read past its end.
 */
#include <errno.h>
#include <string.h>

#include "bench.h"
#include "t.h"

static const char doc[] =
    "{\"history\":[{\"state\":\"pending\",\"id\":\"x\"},{\"to\":\"}\"}],"
    " \"meta\": {\"id\": \"nested\"}, \"id\":\"0193-ab\\\"c\", \"state\" : \"completed\","
    "\"balance\":-9223372036854775808,\"held\":0,\"ok\":true,\"bad\":false}";

static void test_members(void) {
  char out[64];
  size_t n = strlen(doc);
  T_CHECK_EQ_INT(bench_json_str(doc, n, "state", out, sizeof out), 9);
  T_CHECK_STR(out, "completed");
  T_CHECK(bench_json_str(doc, n, "id", out, sizeof out) > 0);
  T_CHECK_STR(out, "0193-ab\"c");
  int64_t v = 1;
  T_CHECK_EQ_INT(bench_json_i64(doc, n, "balance", &v), 0);
  T_CHECK(v == INT64_MIN);
  T_CHECK_EQ_INT(bench_json_i64(doc, n, "held", &v), 0);
  T_CHECK_EQ_INT(v, 0);
  bool b = false;
  T_CHECK_EQ_INT(bench_json_bool(doc, n, "ok", &b), 0);
  T_CHECK(b);
  T_CHECK_EQ_INT(bench_json_bool(doc, n, "bad", &b), 0);
  T_CHECK(!b);
  T_CHECK_EQ_INT(bench_json_str(doc, n, "to", out, sizeof out), -ENOENT); /* nested only */
  T_CHECK_EQ_INT(bench_json_i64(doc, n, "state", &v), -ENOENT);          /* not a number */
  T_CHECK_EQ_INT(bench_json_str(doc, n, "state", out, 4), -ENOSPC);
}

static void test_malformed(void) {
  char out[16];
  int64_t v;
  const char *cut = "{\"a\":\"unterminated";
  T_CHECK_EQ_INT(bench_json_str(cut, strlen(cut), "b", out, sizeof out), -EINVAL);
  const char *arr = "[1,2]";
  T_CHECK_EQ_INT(bench_json_str(arr, strlen(arr), "a", out, sizeof out), -EINVAL);
  const char *big = "{\"n\":9223372036854775808}";
  T_CHECK_EQ_INT(bench_json_i64(big, strlen(big), "n", &v), -ERANGE);
  const char *frac = "{\"n\":1.5}";
  T_CHECK_EQ_INT(bench_json_i64(frac, strlen(frac), "n", &v), -ENOENT);
  /* The length bounds the scan, whatever follows in memory. */
  const char *longer = "{\"a\":1}{\"b\":2}";
  T_CHECK_EQ_INT(bench_json_i64(longer, 7, "b", &v), -ENOENT);
}

int main(void) {
  T_RUN(test_members);
  T_RUN(test_malformed);
  return t_done();
}
