/*
 * http_router.c - method + path pattern routing with {params}.
 *
 * A fixed table, filled at start-up and then only read, so a match needs
 * no allocation and no lock. Patterns are split into segments once, at add
 * time; a path is split once per match, then compared with every route of
 * the same segment count (at most HTTP_ROUTES_MAX of them). That is a
 * linear scan by design: the table is small and the scan is predictable.
 *
 * Precedence: where several patterns match a path, the one whose first
 * differing segment is static wins ("/accounts/new" over "/accounts/{id}").
 * A route's static mask, with segment 0 as the most significant bit,
 * orders routes exactly that way, so the best match is the largest mask.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "http.h"

_Static_assert(HTTP_ROUTE_SEGMENTS_MAX <= 32, "segment masks are uint32_t");
_Static_assert(HTTP_ROUTE_PATTERN_BYTES_MAX <= 256, "offsets are uint8_t");

/* A slice of the path being matched. */
typedef struct path_seg {
  const char *at;
  size_t len;
} path_seg_t;

typedef struct path_split {
  path_seg_t segs[HTTP_ROUTE_SEGMENTS_MAX];
  uint32_t count;
} path_split_t;

void http_router_init(http_router_t *r) { memset(r, 0, sizeof(*r)); }

/* ------------------------------------------------------------------------ */
/* Adding                                                                   */
/* ------------------------------------------------------------------------ */

static bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  if (c >= '0' && c <= '9') return true;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool method_ok(const char *m) {
  size_t n = strnlen(m, HTTP_ROUTE_METHOD_BYTES_MAX);
  if (n == 0 || n >= HTTP_ROUTE_METHOD_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    if (!is_tchar(m[i])) return false;
  }
  return true;
}

static bool param_name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '_';
}

/* A segment "{name}": returns 1 when it is a valid param, 0 when it is
 * static text, HTTP_E_PATTERN when it is neither (braces elsewhere, bad or
 * too long name). */
static int segment_kind(const char *s, size_t n) {
  bool has_brace = memchr(s, '{', n) || memchr(s, '}', n);
  if (!has_brace) return 0;
  if (n < 3 || s[0] != '{' || s[n - 1] != '}') return HTTP_E_PATTERN;
  if (n - 2 >= HTTP_ROUTE_PARAM_NAME_BYTES_MAX) return HTTP_E_PATTERN;
  for (size_t i = 1; i + 1 < n; i++) {
    if (!param_name_char(s[i])) return HTTP_E_PATTERN;
  }
  return 1;
}

/* Two params of one pattern with the same name would make one of them
 * unreachable by name. */
static bool param_name_repeated(const http_route_t *rt, uint32_t seg) {
  const char *name = rt->pattern + rt->seg_off[seg];
  for (uint32_t i = 0; i < seg; i++) {
    if (!(rt->param_mask & (1u << i))) continue;
    if (rt->seg_len[i] == rt->seg_len[seg] &&
        memcmp(rt->pattern + rt->seg_off[i], name, rt->seg_len[seg]) == 0) {
      return true;
    }
  }
  return false;
}

/* Splits rt->pattern (already copied, starts with '/') into segments. */
static int pattern_split(http_route_t *rt) {
  size_t len = strlen(rt->pattern);
  uint32_t params = 0;
  size_t start = 1;
  for (size_t i = 1; i <= len; i++) { /* bounded by the pattern length */
    if (i < len && rt->pattern[i] != '/') continue;
    if (rt->segs_count == HTTP_ROUTE_SEGMENTS_MAX) return HTTP_E_LIMIT;
    size_t n = i - start;
    if (n == 0 && i < len) return HTTP_E_PATTERN; /* "//": empty inside */
    if (memchr(rt->pattern + start, '?', n) || memchr(rt->pattern + start, '#', n)) {
      return HTTP_E_PATTERN;
    }
    uint32_t seg = rt->segs_count++;
    rt->seg_off[seg] = (uint8_t)start;
    rt->seg_len[seg] = (uint8_t)n;
    int kind = segment_kind(rt->pattern + start, n);
    if (kind < 0) return kind;
    if (kind == 1) {
      if (++params > HTTP_ROUTE_PARAMS_MAX) return HTTP_E_LIMIT;
      rt->param_mask |= 1u << seg;
      if (param_name_repeated(rt, seg)) return HTTP_E_PATTERN;
    }
    start = i + 1;
  }
  return 0;
}

/* Same method and same shape: params in the same places (whatever their
 * names) and equal static segments. The second route could never match. */
static bool route_conflicts(const http_route_t *a, const http_route_t *b) {
  if (strcmp(a->method, b->method) != 0) return false;
  if (a->segs_count != b->segs_count || a->param_mask != b->param_mask) {
    return false;
  }
  for (uint32_t i = 0; i < a->segs_count; i++) {
    if (a->param_mask & (1u << i)) continue;
    if (a->seg_len[i] != b->seg_len[i]) return false;
    if (memcmp(a->pattern + a->seg_off[i], b->pattern + b->seg_off[i],
               a->seg_len[i]) != 0) {
      return false;
    }
  }
  return true;
}

int http_router_add(http_router_t *r, const char *method, const char *pattern,
                    http_handler_fn handler, void *arg) {
  if (handler == NULL || !method_ok(method)) return -EINVAL;
  size_t len = strnlen(pattern, HTTP_ROUTE_PATTERN_BYTES_MAX);
  if (len >= HTTP_ROUTE_PATTERN_BYTES_MAX) return HTTP_E_LIMIT;
  if (len == 0 || pattern[0] != '/') return HTTP_E_PATTERN;
  if (r->routes_count == HTTP_ROUTES_MAX) return HTTP_E_LIMIT;
  http_route_t *rt = &r->routes[r->routes_count];
  memset(rt, 0, sizeof(*rt));
  memcpy(rt->method, method, strlen(method) + 1);
  memcpy(rt->pattern, pattern, len + 1);
  rt->handler = handler;
  rt->arg = arg;
  int rc = pattern_split(rt);
  for (uint32_t i = 0; rc == 0 && i < r->routes_count; i++) {
    if (route_conflicts(&r->routes[i], rt)) rc = HTTP_E_PATTERN;
  }
  if (rc) {
    memset(rt, 0, sizeof(*rt));
    return rc;
  }
  r->routes_count++;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Matching                                                                 */
/* ------------------------------------------------------------------------ */

/* Splits the path the way patterns are split. Returns false when it cannot
 * match any pattern: not starting with '/', too long, too many segments. */
static bool path_split(const char *path, path_split_t *out) {
  size_t len = strnlen(path, HTTP_ROUTE_PATH_BYTES_MAX);
  if (len == 0 || len == HTTP_ROUTE_PATH_BYTES_MAX || path[0] != '/') {
    return false;
  }
  out->count = 0;
  size_t start = 1;
  for (size_t i = 1; i <= len; i++) { /* bounded by the path length */
    if (i < len && path[i] != '/') continue;
    if (out->count == HTTP_ROUTE_SEGMENTS_MAX) return false;
    out->segs[out->count].at = path + start;
    out->segs[out->count].len = i - start;
    out->count++;
    start = i + 1;
  }
  return true;
}

/* Whether rt's pattern matches the split path. A param needs a non-empty
 * segment that fits the value buffer. */
static bool route_matches_path(const http_route_t *rt, const path_split_t *ps) {
  if (rt->segs_count != ps->count) return false;
  for (uint32_t i = 0; i < ps->count; i++) {
    const path_seg_t *seg = &ps->segs[i];
    if (rt->param_mask & (1u << i)) {
      if (seg->len == 0 || seg->len >= HTTP_ROUTE_PARAM_VALUE_BYTES_MAX) {
        return false;
      }
    } else if (seg->len != rt->seg_len[i] ||
               memcmp(seg->at, rt->pattern + rt->seg_off[i], seg->len) != 0) {
      return false;
    }
  }
  return true;
}

/* Segment 0 is the most significant bit: see the top of the file. */
static uint32_t static_rank(const http_route_t *rt) {
  uint32_t rank = 0;
  for (uint32_t i = 0; i < rt->segs_count; i++) {
    if (!(rt->param_mask & (1u << i))) {
      rank |= 1u << (HTTP_ROUTE_SEGMENTS_MAX - 1 - i);
    }
  }
  return rank;
}

/* Adds method to the Allow list unless it is there already. A full list
 * is cut rather than overrun; with 15-byte methods that takes 8 methods. */
static void allow_add(char *allow, const char *method) {
  size_t n = strlen(method);
  const char *p = allow;
  while ((p = strstr(p, method)) != NULL) { /* bounded by the list length */
    bool starts = p == allow || p[-1] == ' ';
    if (starts && (p[n] == ',' || p[n] == '\0')) return;
    p += n;
  }
  size_t used = strlen(allow);
  size_t need = (used ? 2 : 0) + n;
  if (used + need >= HTTP_ROUTE_ALLOW_BYTES_MAX) return;
  snprintf(allow + used, HTTP_ROUTE_ALLOW_BYTES_MAX - used, "%s%s",
           used ? ", " : "", method);
}

static void params_copy(const http_route_t *rt, const path_split_t *ps,
                        http_route_match_t *out) {
  out->params_count = 0;
  for (uint32_t i = 0; i < rt->segs_count; i++) {
    if (!(rt->param_mask & (1u << i))) continue;
    http_route_param_t *prm = &out->params[out->params_count++];
    size_t name_len = (size_t)rt->seg_len[i] - 2; /* without the braces */
    memcpy(prm->name, rt->pattern + rt->seg_off[i] + 1, name_len);
    prm->name[name_len] = '\0';
    memcpy(prm->value, ps->segs[i].at, ps->segs[i].len);
    prm->value[ps->segs[i].len] = '\0';
    prm->value_len = ps->segs[i].len;
  }
}

int http_router_match(const http_router_t *r, const char *method,
                      const char *path, http_route_match_t *out) {
  memset(out, 0, sizeof(*out));
  path_split_t ps;
  if (!path_split(path, &ps)) return HTTP_E_NOT_FOUND;
  const http_route_t *best = NULL;
  uint32_t best_rank = 0;
  bool path_known = false;
  for (uint32_t i = 0; i < r->routes_count; i++) {
    const http_route_t *rt = &r->routes[i];
    if (!route_matches_path(rt, &ps)) continue;
    path_known = true;
    if (strcmp(rt->method, method) != 0) {
      allow_add(out->allow, rt->method);
      continue;
    }
    uint32_t rank = static_rank(rt);
    if (best == NULL || rank > best_rank) {
      best = rt;
      best_rank = rank;
    }
  }
  if (best == NULL) return path_known ? HTTP_E_METHOD : HTTP_E_NOT_FOUND;
  out->allow[0] = '\0';
  out->handler = best->handler;
  out->arg = best->arg;
  out->pattern = best->pattern;
  params_copy(best, &ps, out);
  return 0;
}

const char *http_route_param(const http_route_match_t *m, const char *name) {
  for (uint32_t i = 0; i < m->params_count && i < HTTP_ROUTE_PARAMS_MAX; i++) {
    if (strcmp(m->params[i].name, name) == 0) return m->params[i].value;
  }
  return NULL;
}
