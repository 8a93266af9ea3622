/*
 * http_response.c - output buffers, responses, JSON bodies and errors, and
 * requests for the client.
 *
 * Every writer appends one whole message or nothing: on any error the
 * buffer's length is put back, so a half-written response never reaches a
 * socket. Every header text that comes from a caller is checked for CR, LF
 * and other controls, because one stray CRLF there is response splitting.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

/* ------------------------------------------------------------------------ */
/* Buffers                                                                  */
/* ------------------------------------------------------------------------ */

/* Sets cap to at least `cap` usable bytes (one more is kept for the NUL). */
static int buf_grow_to(http_buf_t *b, size_t cap) {
  char *mem = realloc(b->data, cap + 1);
  if (mem == NULL) return -ENOMEM;
  if (b->data == NULL) mem[0] = '\0';
  b->data = mem;
  b->cap = cap;
  return 0;
}

int http_buf_init(http_buf_t *b, size_t cap_initial, size_t cap_max) {
  memset(b, 0, sizeof(*b));
  b->cap_max = cap_max ? cap_max : HTTP_BUF_BYTES_MAX_DEFAULT;
  if (cap_initial > b->cap_max) return -EINVAL;
  return cap_initial ? buf_grow_to(b, cap_initial) : 0;
}

void http_buf_deinit(http_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = 0;
  b->cap = 0;
}

void http_buf_reset(http_buf_t *b) {
  b->len = 0;
  if (b->data) b->data[0] = '\0';
}

int http_buf_reserve(http_buf_t *b, size_t n) {
  if (n > b->cap_max - b->len) return HTTP_E_OVERFLOW;
  size_t need = b->len + n;
  if (need <= b->cap && b->data != NULL) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < need) cap *= 2; /* at most 64 rounds */
  if (cap > b->cap_max) cap = b->cap_max;
  return buf_grow_to(b, cap);
}

int http_buf_append(http_buf_t *b, const void *data, size_t n) {
  int rc = http_buf_reserve(b, n);
  if (rc) return rc;
  if (n) memcpy(b->data + b->len, data, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

int http_buf_append_str(http_buf_t *b, const char *s) {
  return http_buf_append(b, s, strlen(s));
}

int http_buf_appendf(http_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return -EINVAL;
  int rc = http_buf_reserve(b, (size_t)n);
  if (rc) return rc;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void http_buf_consume(http_buf_t *b, size_t n) {
  if (n >= b->len) {
    http_buf_reset(b);
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
  b->data[b->len] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Status reasons                                                           */
/* ------------------------------------------------------------------------ */

const char *http_status_reason(int status) {
  switch (status) {
    case 100: return "Continue";
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 206: return "Partial Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 303: return "See Other";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 402: return "Payment Required";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 406: return "Not Acceptable";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 416: return "Range Not Satisfiable";
    case 417: return "Expectation Failed";
    case 421: return "Misdirected Request";
    case 422: return "Unprocessable Content";
    case 423: return "Locked";
    case 425: return "Too Early";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 451: return "Unavailable For Legal Reasons";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
  }
}

/* ------------------------------------------------------------------------ */
/* Checks of caller text                                                    */
/* ------------------------------------------------------------------------ */

static bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  if (c >= '0' && c <= '9') return true;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool is_token(const char *s) {
  if (s == NULL || *s == '\0') return false;
  for (; *s; s++) {
    if (!is_tchar(*s)) return false;
  }
  return true;
}

/* A header value: visible ASCII, SP, HTAB, obs-text; no CR, LF, NUL. */
static bool is_field_value(const char *s) {
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c < 0x20 && c != '\t') || c == 0x7f) return false;
  }
  return true;
}

/* One "Name: value\r\n" line at s; returns its length, or 0 if malformed. */
static size_t field_line_len(const char *s) {
  size_t i = 0;
  while (is_tchar(s[i])) i++;
  if (i == 0 || s[i] != ':') return 0;
  for (i++; s[i] != '\r'; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '\0' || c == '\n' || (c < 0x20 && c != '\t') || c == 0x7f) return 0;
  }
  return s[i + 1] == '\n' ? i + 2 : 0;
}

/* extra_headers: NULL, or whole field lines each ending CRLF. An empty line
 * inside would end the head early and smuggle the rest into the body. */
static bool extra_headers_ok(const char *s) {
  if (s == NULL) return true;
  while (*s) { /* each round eats one line: bounded by the string */
    size_t n = field_line_len(s);
    if (n == 0) return false;
    s += n;
  }
  return true;
}

/* An origin-form target (or "*"): visible ASCII only. */
static bool target_ok(const char *t) {
  if (t == NULL || (t[0] != '/' && strcmp(t, "*") != 0)) return false;
  for (; *t; t++) {
    unsigned char c = (unsigned char)*t;
    if (c <= 0x20 || c >= 0x7f || c == '#') return false;
  }
  return true;
}

/* A Host value: reg-name or IP literal with an optional port. */
static bool host_ok(const char *h) {
  if (h == NULL || *h == '\0') return false;
  for (; *h; h++) {
    unsigned char c = (unsigned char)*h;
    if (c <= 0x20 || c >= 0x7f || c == '/' || c == '?' || c == '#' || c == '@') {
      return false;
    }
  }
  return true;
}

/* ------------------------------------------------------------------------ */
/* Responses                                                                */
/* ------------------------------------------------------------------------ */

/* 1xx, 204 and 304 never carry a body nor (here) a Content-Length. */
static bool status_bodyless(int status) {
  return status < 200 || status == 204 || status == 304;
}

/* The head of a response, up to and including the empty line. */
/* Decimal digits of v into buf (at least 20 bytes); returns the count. */
static size_t u64_dec(char *buf, uint64_t v) {
  char tmp[20];
  size_t n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v != 0 && n < sizeof tmp);
  for (size_t i = 0; i < n; i++) buf[i] = tmp[n - 1 - i];
  return n;
}

/* "Date: <IMF-fixdate>\r\n", which an origin server must send (RFC 9110
 * 6.6.1). Formatted once per second per thread; time() is a vDSO read. */
static const char *date_line(size_t *len) {
  static _Thread_local time_t cached_sec = -1;
  static _Thread_local char line[48];
  static _Thread_local size_t line_len;
  time_t now = time(NULL);
  if (now != cached_sec) {
    struct tm tm;
    gmtime_r(&now, &tm);
    line_len = strftime(line, sizeof line, "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
    cached_sec = now;
  }
  *len = line_len;
  return line;
}

/* The head, formatted by hand: this runs for every response, and printf
 * was a visible share of a small response's cost. */
static int write_head(http_buf_t *out, int status, const char *content_type,
                      const char *extra_headers, size_t body_len,
                      bool keep_alive) {
  const char *reason = http_status_reason(status);
  size_t reason_len = strlen(reason);
  size_t ct_len = content_type ? strlen(content_type) : 0;
  size_t extra_len = extra_headers ? strlen(extra_headers) : 0;
  size_t date_len;
  const char *date = date_line(&date_len);
  /* Upper bound of everything below, reserved once. */
  size_t need = 9 + 3 + 1 + reason_len + 2 + date_len + 16 + 20 + 2 + 14 + ct_len + 2 +
                19 + extra_len + 2;
  int rc = http_buf_reserve(out, need);
  if (rc) return rc;
  char *p = out->data + out->len;
  memcpy(p, "HTTP/1.1 ", 9);
  p += 9;
  p[0] = (char)('0' + status / 100);
  p[1] = (char)('0' + status / 10 % 10);
  p[2] = (char)('0' + status % 10);
  p[3] = ' ';
  p += 4;
  memcpy(p, reason, reason_len);
  p += reason_len;
  memcpy(p, "\r\n", 2);
  p += 2;
  memcpy(p, date, date_len);
  p += date_len;
  if (!status_bodyless(status)) {
    memcpy(p, "Content-Length: ", 16);
    p += 16;
    p += u64_dec(p, body_len);
    memcpy(p, "\r\n", 2);
    p += 2;
  }
  if (content_type) {
    memcpy(p, "Content-Type: ", 14);
    p += 14;
    memcpy(p, content_type, ct_len);
    p += ct_len;
    memcpy(p, "\r\n", 2);
    p += 2;
  }
  if (!keep_alive) {
    memcpy(p, "Connection: close\r\n", 19);
    p += 19;
  }
  if (extra_len) {
    memcpy(p, extra_headers, extra_len);
    p += extra_len;
  }
  memcpy(p, "\r\n", 2);
  p += 2;
  out->len = (size_t)(p - out->data);
  out->data[out->len] = '\0';
  return 0;
}

static int response_args_ok(int status, const char *content_type,
                            const char *extra_headers, const void *body,
                            size_t body_len) {
  if (status < 100 || status > 599) return -EINVAL;
  if (content_type && (*content_type == '\0' || !is_field_value(content_type))) {
    return -EINVAL;
  }
  if (!extra_headers_ok(extra_headers)) return -EINVAL;
  if (body == NULL && body_len > 0) return -EINVAL;
  if (status_bodyless(status) && body_len > 0) return -EINVAL;
  return 0;
}

/* Puts the buffer back as it was before a failed writer. */
static int rollback(http_buf_t *out, size_t len, int rc) {
  out->len = len;
  if (out->data) out->data[len] = '\0';
  return rc;
}

int http_write_response(http_buf_t *out, int status, const char *content_type,
                        const char *extra_headers, const void *body,
                        size_t body_len, bool keep_alive) {
  int rc = response_args_ok(status, content_type, extra_headers, body, body_len);
  if (rc) return rc;
  size_t len0 = out->len;
  rc = write_head(out, status, content_type, extra_headers, body_len, keep_alive);
  if (rc == 0 && body_len > 0) rc = http_buf_append(out, body, body_len);
  return rc ? rollback(out, len0, rc) : 0;
}

int http_write_json(http_buf_t *out, int status, const json_t *body,
                    bool keep_alive, const char *extra_headers) {
  const size_t flags = JSON_COMPACT | JSON_ENCODE_ANY;
  size_t n = body ? json_dumpb(body, NULL, 0, flags) : 0;
  if (n == 0) return -EINVAL;
  int rc = response_args_ok(status, "application/json", extra_headers, body, n);
  if (rc) return rc;
  size_t len0 = out->len;
  rc = write_head(out, status, "application/json", extra_headers, n, keep_alive);
  if (rc == 0) rc = http_buf_reserve(out, n);
  /* The same value dumped twice gives the same length. */
  if (rc == 0 && NEVER(json_dumpb(body, out->data + out->len, n, flags) != n)) rc = -EINVAL;
  if (rc) return rollback(out, len0, rc);
  out->len += n;
  out->data[out->len] = '\0';
  return 0;
}

/* json_string() refuses invalid UTF-8; fall back to a safe text then. */
static json_t *json_string_or(const char *s, const char *fallback) {
  json_t *j = s ? json_string(s) : NULL;
  return j ? j : json_string(fallback);
}

int http_write_error(http_buf_t *out, int status, const char *code,
                     const char *message, bool keep_alive) {
  json_t *err = json_object();
  json_t *root = json_object();
  int rc = -ENOMEM;
  if (err && root &&
      json_object_set_new(err, "code", json_string_or(code, "error")) == 0 &&
      json_object_set_new(err, "message",
                          json_string_or(message, http_status_reason(status))) == 0 &&
      json_object_set(root, "error", err) == 0) {
    rc = http_write_json(out, status, root, keep_alive, NULL);
  }
  json_decref(err);
  json_decref(root);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

/* A body-less POST, PUT or PATCH still says Content-Length: 0, or a server
 * may wait for a body or answer 411. */
static bool method_wants_length(const char *m) {
  return strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0 ||
         strcmp(m, "PATCH") == 0;
}

int http_write_request(http_buf_t *out, const char *method, const char *host,
                       const char *target, const char *extra_headers,
                       const void *body, size_t body_len) {
  if (!is_token(method) || !host_ok(host) || !target_ok(target)) return -EINVAL;
  if (!extra_headers_ok(extra_headers)) return -EINVAL;
  if (body == NULL && body_len > 0) return -EINVAL;
  size_t len0 = out->len;
  int rc = http_buf_appendf(out, "%s %s HTTP/1.1\r\nHost: %s\r\n", method,
                            target, host);
  if (rc == 0 && (body_len > 0 || method_wants_length(method))) {
    rc = http_buf_appendf(out, "Content-Length: %zu\r\n", body_len);
  }
  if (rc == 0 && extra_headers) rc = http_buf_append_str(out, extra_headers);
  if (rc == 0) rc = http_buf_append(out, "\r\n", 2);
  if (rc == 0 && body_len > 0) rc = http_buf_append(out, body, body_len);
  return rc ? rollback(out, len0, rc) : 0;
}
