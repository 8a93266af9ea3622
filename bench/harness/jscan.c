/*
 * jscan.c - one top-level member of a JSON object, found without parsing
 * the document into a tree: the harness reads an id or a state from every
 * response, and a tree per response would allocate on the hot path.
 *
 * The scanner trusts nothing: every loop is bounded by the text's length,
 * and nesting is tracked only by counting brackets outside strings.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "bench.h"

typedef struct cur {
  const char *p;
  const char *end;
} cur_t;

static void skip_ws(cur_t *c) {
  while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
    c->p++;
}

/* At an opening quote: moves past the closing one. Sets *start and *len
 * to the raw contents. */
static int skip_string(cur_t *c, const char **start, size_t *len) {
  if (c->p >= c->end || *c->p != '"') return -EINVAL;
  const char *s = ++c->p;
  while (c->p < c->end && *c->p != '"') c->p += *c->p == '\\' ? 2 : 1;
  if (c->p >= c->end) return -EINVAL;
  *start = s;
  *len = (size_t)(c->p - s);
  c->p++;
  return 0;
}

/* Skips one value of any kind. */
static int skip_value(cur_t *c) {
  skip_ws(c);
  if (c->p >= c->end) return -EINVAL;
  if (*c->p == '"') {
    const char *s;
    size_t n;
    return skip_string(c, &s, &n);
  }
  if (*c->p != '{' && *c->p != '[') {
    while (c->p < c->end && *c->p != ',' && *c->p != '}' && *c->p != ']') c->p++;
    return 0;
  }
  int depth = 0;
  while (c->p < c->end) {
    char ch = *c->p;
    if (ch == '"') {
      const char *s;
      size_t n;
      if (skip_string(c, &s, &n) < 0) return -EINVAL;
      continue;
    }
    if (ch == '{' || ch == '[') depth++;
    if (ch == '}' || ch == ']') depth--;
    c->p++;
    if (depth == 0) return 0;
  }
  return -EINVAL;
}

/* Leaves the cursor at the value of `key`. */
static int find(const char *text, size_t len, const char *key, cur_t *c) {
  c->p = text;
  c->end = text + len;
  skip_ws(c);
  if (c->p >= c->end || *c->p != '{') return -EINVAL;
  c->p++;
  size_t key_len = strlen(key);
  while (c->p < c->end) {
    skip_ws(c);
    if (c->p < c->end && *c->p == '}') return -ENOENT;
    const char *k;
    size_t kn;
    if (skip_string(c, &k, &kn) < 0) return -EINVAL;
    skip_ws(c);
    if (c->p >= c->end || *c->p != ':') return -EINVAL;
    c->p++;
    skip_ws(c);
    if (kn == key_len && memcmp(k, key, kn) == 0) return 0;
    if (skip_value(c) < 0) return -EINVAL;
    skip_ws(c);
    if (c->p < c->end && *c->p == ',') c->p++;
  }
  return -EINVAL;
}

int bench_json_str(const char *text, size_t len, const char *key, char *out,
                   size_t out_bytes) {
  cur_t c;
  int rc = find(text, len, key, &c);
  if (rc < 0) return rc;
  if (c.p >= c.end || *c.p != '"') return -ENOENT;
  const char *s;
  size_t n;
  if (skip_string(&c, &s, &n) < 0) return -EINVAL;
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char ch = s[i];
    if (ch == '\\') {
      if (i + 1 >= n) return -EINVAL;
      ch = s[++i];
      if (ch != '"' && ch != '\\' && ch != '/') return -EINVAL; /* not needed here */
    }
    if (o + 1 >= out_bytes) return -ENOSPC;
    out[o++] = ch;
  }
  if (out_bytes == 0) return -ENOSPC;
  out[o] = '\0';
  return (int)o;
}

int bench_json_i64(const char *text, size_t len, const char *key, int64_t *out) {
  cur_t c;
  int rc = find(text, len, key, &c);
  if (rc < 0) return rc;
  bool neg = c.p < c.end && *c.p == '-';
  if (neg) c.p++;
  if (c.p >= c.end || *c.p < '0' || *c.p > '9') return -ENOENT;
  uint64_t v = 0;
  for (; c.p < c.end && *c.p >= '0' && *c.p <= '9'; c.p++) {
    uint64_t d = (uint64_t)(*c.p - '0');
    if (v > ((uint64_t)INT64_MAX + 1 - d) / 10) return -ERANGE;
    v = v * 10 + d;
  }
  if (c.p < c.end && (*c.p == '.' || *c.p == 'e' || *c.p == 'E')) return -ENOENT;
  if (!neg && v > (uint64_t)INT64_MAX) return -ERANGE;
  *out = neg ? (int64_t)(0 - v) : (int64_t)v;
  return 0;
}

int bench_json_bool(const char *text, size_t len, const char *key, bool *out) {
  cur_t c;
  int rc = find(text, len, key, &c);
  if (rc < 0) return rc;
  size_t left = (size_t)(c.end - c.p);
  if (left >= 4 && memcmp(c.p, "true", 4) == 0) {
    *out = true;
    return 0;
  }
  if (left >= 5 && memcmp(c.p, "false", 5) == 0) {
    *out = false;
    return 0;
  }
  return -ENOENT;
}
