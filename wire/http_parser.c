/*
 * http_parser.c - strict HTTP/1.1 request and response parsing on llhttp.
 *
 * llhttp does the grammar; this file adds what a payment front door needs
 * on top of it:
 *   - limits checked while bytes stream in, so nothing is buffered past them;
 *   - one message at a time: on_message_complete pauses llhttp, so pipelined
 *     requests come out in order and the caller decides when to go on;
 *   - smuggling defences llhttp lacks. Even with LLHTTP_STRICT_MODE,
 *     llhttp 8.1 accepts: a bare LF after the request line and as the
 *     empty line ending the head, obs-fold (also inside Transfer-Encoding),
 *     Transfer-Encoding on HTTP/1.0, "identity, chunked" and ",chunked" (as
 *     chunked), an empty header name, HTTP/0.9 and HTTP/2.0 request lines,
 *     "RTSP/1.0" as a protocol, controls and LF in a reason phrase, a bare
 *     CR or LF between messages. Our build compiles llhttp without strict
 *     mode, which also lets through chunk data not followed by CRLF, a bare
 *     CR in a reason phrase and raw UTF-8 in the target. All are refused
 *     here, and tests/unit/wire/ has a test for each (corpus/ for requests).
 *
 * The framing scanner. Every byte llhttp consumes that is not body (the
 * head, chunk-size lines, trailers) goes through scan_byte(): CR must be
 * followed by LF, LF must follow CR, no control bytes, no line may start
 * with whitespace (obs-fold), chunk data must be followed by CRLF. The scan
 * runs lazily (the gaps between body spans in on_body, and the rest after
 * llhttp_execute returns), but always before a message is handed out, so a
 * message that breaks these rules is never seen by the caller.
 *
 * Memory: one scratch area for the target, names and values, sized from
 * the limits at init; one header array; one body buffer that grows up to
 * body_bytes_max + 1 and is kept between messages.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

const char *http_strerror(int err) {
  switch (err) {
    case HTTP_E_BAD_REQUEST: return "http: malformed or ambiguous message";
    case HTTP_E_BODY_TOO_LARGE: return "http: body too large";
    case HTTP_E_URL_TOO_LONG: return "http: request target too long";
    case HTTP_E_HEADERS_TOO_LARGE: return "http: header section too large";
    case HTTP_E_HEADERS_TOO_MANY: return "http: too many header fields";
    case HTTP_E_UNSUPPORTED: return "http: not implemented";
    case HTTP_E_VERSION: return "http: version not supported";
    case HTTP_E_EOF: return "http: connection closed in mid-message";
    case HTTP_E_STATE: return "http: call made in the wrong state";
    case HTTP_E_NOT_FOUND: return "http: no route for the path";
    case HTTP_E_METHOD: return "http: method not allowed for the path";
    case HTTP_E_LIMIT: return "http: router limit reached";
    case HTTP_E_PATTERN: return "http: bad or conflicting route pattern";
    case HTTP_E_OVERFLOW: return "http: output buffer limit reached";
    default: break;
  }
  if (err < 0 && err > -4096) return strerror(-err);
  return "http: unknown error";
}

int http_parser_error_status(int err) {
  switch (err) {
    case HTTP_E_BODY_TOO_LARGE: return 413;
    case HTTP_E_URL_TOO_LONG: return 414;
    case HTTP_E_HEADERS_TOO_LARGE: return 431;
    case HTTP_E_HEADERS_TOO_MANY: return 431;
    case HTTP_E_UNSUPPORTED: return 501;
    case HTTP_E_VERSION: return 505;
    case -ENOMEM: return 503;
    default: return 400;
  }
}

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
}

/* Case-insensitive equality of s[0..n) and the NUL-terminated lowercase
 * literal `lit`. Locale-free on purpose: header names are ASCII. */
static bool ascii_ieq(const char *s, size_t n, const char *lit) {
  size_t lit_len = strlen(lit);
  if (n != lit_len) return false;
  for (size_t i = 0; i < n; i++) {
    if (ascii_lower(s[i]) != lit[i]) return false;
  }
  return true;
}

static http_parser_t *parser_of(llhttp_t *llh) { return llh->data; }

/* Records the first error (later ones are consequences) and returns the
 * value that makes llhttp stop; feed then reports p->err. */
static int fail(http_parser_t *p, int err, const char *reason) {
  if (p->err == 0) {
    p->err = err;
    p->err_reason = reason;
  }
  return HPE_USER;
}

/* Raw head bytes allowed, separators included. The limit the caller set
 * counts only start line, names and values; this backstop also bounds what
 * they do not count (":", SP, CRLF, leading empty lines, runs of
 * whitespace), so a peer cannot stream a head forever:
 *   2 * header_bytes_max          content, with as much again of slack
 * + 4 * headers_count_max         ": " and CRLF of each field line
 * + 16                            start line separators and the empty line */
static uint32_t head_raw_max(const http_parser_t *p) {
  uint64_t n = 2ull * p->limits.header_bytes_max +
               4ull * p->limits.headers_count_max + 16u;
  return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

/* ------------------------------------------------------------------------ */
/* Storage                                                                  */
/* ------------------------------------------------------------------------ */

/* Counts bytes of the head against header_bytes_max, as they stream in. */
static int count_head(http_parser_t *p, size_t n) {
  if (n > p->limits.header_bytes_max - p->header_bytes) {
    return fail(p, HTTP_E_HEADERS_TOO_LARGE, "header bytes above limit");
  }
  p->header_bytes += (uint32_t)n;
  return 0;
}

/* Appends to the scratch area. The area is sized so that the limits are
 * always hit first; running out here means our sizing is wrong. */
static int scratch_put(http_parser_t *p, const char *at, size_t n) {
  if (n > p->scratch_cap - p->scratch_len) {
    return fail(p, HTTP_E_HEADERS_TOO_LARGE, "scratch area full");
  }
  memcpy(p->scratch + p->scratch_len, at, n);
  p->scratch_len += (uint32_t)n;
  return 0;
}

static int scratch_nul(http_parser_t *p) { return scratch_put(p, "", 1); }

/* Makes room for `need` body bytes plus the NUL, doubling up to the
 * limit so a stream of small chunks costs few reallocations. */
static int body_reserve(http_parser_t *p, size_t need) {
  size_t want = need + 1;
  if (want <= p->body_cap) return 0;
  size_t cap_max = (size_t)p->limits.body_bytes_max + 1;
  size_t cap = p->body_cap ? p->body_cap : 4096;
  while (cap < want && cap < cap_max) cap *= 2; /* at most 64 rounds */
  if (cap > cap_max) cap = cap_max;
  char *mem = realloc(p->body, cap);
  if (mem == NULL) return fail(p, -ENOMEM, "out of memory for the body");
  p->body = mem;
  p->body_cap = cap;
  return 0;
}

/* Forgets the message, keeping the memory; the stream state (llhttp's) is
 * not touched. */
static void message_reset(http_parser_t *p) {
  p->scratch_len = 0;
  p->field_start = 0;
  p->value_start = 0;
  p->reason_start = 0;
  p->body_len = 0;
  if (p->body) p->body[0] = '\0';
  p->chunk_left = 0;
  p->header_bytes = 0;
  p->url_bytes = 0;
  p->field_len = 0;
  p->fields_count = 0;
  p->cl_count = 0;
  p->te_count = 0;
  p->host_count = 0;
  p->begun = false;
  p->headers_done = false;
  p->msg_ready = false;
  memset(&p->msg, 0, sizeof(p->msg));
  p->msg.method_name = "";
  p->msg.target = "";
  p->msg.path = "";
  p->msg.query = "";
  p->msg.reason = "";
  p->msg.body = "";
  p->msg.headers = p->headers;
  memset(&p->scan, 0, sizeof(p->scan));
  p->scan.line_start = true;
  p->scan.in_head = true;
}

/* ------------------------------------------------------------------------ */
/* Framing scanner                                                          */
/* ------------------------------------------------------------------------ */

/* A line of framing ended (its CRLF was seen). An empty line after at least
 * one non-empty one ends the head; empty lines before the start line are
 * tolerated (RFC 9112 2.2) but still counted in head_bytes. */
static int scan_line_end(http_parser_t *p, const char **why) {
  http_scan_t *s = &p->scan;
  if (s->in_head && s->line_bytes == 0 && s->line_index > 0) {
    s->in_head = false;
  } else if (s->in_head && s->line_bytes > 0) {
    if (s->line_index == 0 && p->kind == HTTP_KIND_REQUEST &&
        memcmp(s->start_tail, " HTTP/", 6) != 0) {
      /* llhttp takes "RTSP/1.0" and "ICE/1.0" as versions too. */
      *why = "request line protocol is not HTTP";
      return HTTP_E_BAD_REQUEST;
    }
    s->line_index++;
  }
  s->line_bytes = 0;
  s->line_start = true;
  s->prev_sp = false;
  return 0;
}

/* Request line: single SP separators, no HTAB, and its last 9 bytes kept
 * so that scan_line_end can check the protocol name. */
static int scan_request_line(http_scan_t *s, unsigned char c,
                             const char **why) {
  if (c == '\t' || (c == ' ' && s->prev_sp)) {
    *why = "request line separator not a single SP";
    return HTTP_E_BAD_REQUEST;
  }
  s->prev_sp = (c == ' ');
  memmove(s->start_tail, s->start_tail + 1, sizeof(s->start_tail) - 1);
  s->start_tail[sizeof(s->start_tail) - 1] = (char)c;
  return 0;
}

/* A byte inside a line: no controls, no whitespace at the start of a line
 * (obs-fold, or a line indented to hide it), and bounded line length. */
static int scan_line_byte(http_parser_t *p, unsigned char c, const char **why) {
  http_scan_t *s = &p->scan;
  if ((c < 0x20 && c != '\t') || c == 0x7f) {
    *why = "control byte in framing";
    return HTTP_E_BAD_REQUEST;
  }
  if (s->line_start && (c == ' ' || c == '\t')) {
    *why = "line starts with whitespace (obs-fold)";
    return HTTP_E_BAD_REQUEST;
  }
  s->line_start = false;
  if (s->in_head && s->line_index == 0 && p->kind == HTTP_KIND_REQUEST) {
    int rc = scan_request_line(s, c, why);
    if (rc) return rc;
  }
  if (++s->line_bytes > p->limits.header_bytes_max) {
    *why = "framing line too long";
    return s->in_head ? HTTP_E_HEADERS_TOO_LARGE : HTTP_E_BAD_REQUEST;
  }
  return 0;
}

/* One byte of framing; see the comment at the top of the file. Line ends
 * are CRLF and nothing else. Returns 0 or an error with *why set. */
static int scan_byte(http_parser_t *p, unsigned char c, const char **why) {
  http_scan_t *s = &p->scan;
  if (s->in_head && ++s->head_bytes > head_raw_max(p)) {
    *why = "raw head bytes above limit";
    return HTTP_E_HEADERS_TOO_LARGE;
  }
  if (s->cr_pending) {
    s->cr_pending = false;
    *why = "bare CR";
    return c == '\n' ? scan_line_end(p, why) : HTTP_E_BAD_REQUEST;
  }
  if (s->chunk_crlf_due && c != '\r') {
    *why = "chunk data not followed by CRLF";
    return HTTP_E_BAD_REQUEST;
  }
  s->chunk_crlf_due = false;
  if (c == '\r') {
    s->cr_pending = true;
    return 0;
  }
  if (c == '\n') {
    *why = "bare LF";
    return HTTP_E_BAD_REQUEST;
  }
  return scan_line_byte(p, c, why);
}

/* Scans framing bytes [from, to); the loop is bounded by the feed. */
static int scan_range(http_parser_t *p, const char *from, const char *to) {
  for (const char *c = from; c < to; c++) {
    const char *why = "";
    int rc = scan_byte(p, (unsigned char)*c, &why);
    if (rc) return fail(p, rc, why);
  }
  p->scan.pos = to;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Header checks                                                            */
/* ------------------------------------------------------------------------ */

/* Codings we recognise but do not implement: they earn 501, not 400. */
static bool te_known_coding(const char *s, size_t n) {
  return ascii_ieq(s, n, "gzip") || ascii_ieq(s, n, "x-gzip") ||
         ascii_ieq(s, n, "deflate") || ascii_ieq(s, n, "compress") ||
         ascii_ieq(s, n, "x-compress");
}

static bool is_tchar(char c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  if (c >= '0' && c <= '9') return true;
  return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Transfer-Encoding: only exactly "chunked" is accepted. A clean list of
 * known codings ending in chunked is 501; anything else (unknown codings,
 * parameters, empty elements, chunked not last, odd bytes) is 400, because
 * any two parsers might read it differently. */
static int te_check(const char *v, size_t n) {
  if (ascii_ieq(v, n, "chunked")) return 0;
  size_t i = 0;
  bool last_chunked = false;
  while (i < n) { /* each round eats one element: bounded by n */
    size_t start = i;
    while (i < n && is_tchar(v[i])) i++;
    if (i == start) return HTTP_E_BAD_REQUEST;
    last_chunked = ascii_ieq(v + start, i - start, "chunked");
    if (!last_chunked && !te_known_coding(v + start, i - start)) {
      return HTTP_E_BAD_REQUEST;
    }
    while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
    if (i == n) break;
    if (v[i] != ',' || last_chunked) return HTTP_E_BAD_REQUEST;
    i++;
    while (i < n && (v[i] == ' ' || v[i] == '\t')) i++;
    if (i == n) return HTTP_E_BAD_REQUEST; /* trailing comma */
  }
  return last_chunked ? HTTP_E_UNSUPPORTED : HTTP_E_BAD_REQUEST;
}

/* Per-field rules llhttp does not enforce (or might not, in another
 * build): one Content-Length, one Transfer-Encoding, one Host. */
static int header_check(http_parser_t *p, const http_header_t *h) {
  if (ascii_ieq(h->name, h->name_len, "content-length")) {
    if (++p->cl_count > 1) {
      return fail(p, HTTP_E_BAD_REQUEST, "duplicate Content-Length");
    }
  } else if (ascii_ieq(h->name, h->name_len, "transfer-encoding")) {
    if (++p->te_count > 1) {
      return fail(p, HTTP_E_BAD_REQUEST, "duplicate Transfer-Encoding");
    }
    int rc = te_check(h->value, h->value_len);
    if (rc) return fail(p, rc, "Transfer-Encoding other than chunked");
  } else if (ascii_ieq(h->name, h->name_len, "host")) {
    if (++p->host_count > 1) return fail(p, HTTP_E_BAD_REQUEST, "duplicate Host");
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* llhttp callbacks                                                         */
/* ------------------------------------------------------------------------ */

static int on_message_begin(llhttp_t *llh) {
  parser_of(llh)->begun = true;
  return 0;
}

static int on_method(llhttp_t *llh, const char *at, size_t n) {
  return count_head(parser_of(llh), n);
}

static int on_version(llhttp_t *llh, const char *at, size_t n) {
  return count_head(parser_of(llh), n);
}

static int on_url(llhttp_t *llh, const char *at, size_t n) {
  http_parser_t *p = parser_of(llh);
  /* The URL limit first: a long target is 414 even when it is also more
   * than the header bytes allow. */
  if (n > p->limits.url_bytes_max - p->url_bytes) {
    return fail(p, HTTP_E_URL_TOO_LONG, "request target above limit");
  }
  p->url_bytes += (uint32_t)n;
  for (size_t i = 0; i < n; i++) {
    /* The target is ASCII (RFC 3986); loose llhttp lets UTF-8 through. */
    if ((unsigned char)at[i] >= 0x80 || at[i] == '#') {
      return fail(p, HTTP_E_BAD_REQUEST, "non-ASCII or fragment in target");
    }
  }
  int rc = count_head(p, n);
  return rc ? rc : scratch_put(p, at, n);
}

/* The target is at the start of the scratch area; a copy of its path part
 * follows it, so both are NUL-terminated and nothing is decoded. */
static int on_url_complete(llhttp_t *llh) {
  http_parser_t *p = parser_of(llh);
  uint32_t len = p->url_bytes;
  int rc = scratch_nul(p);
  if (rc) return rc;
  const char *target = p->scratch;
  if (llh->method == HTTP_CONNECT) {
    return fail(p, HTTP_E_UNSUPPORTED, "CONNECT is not supported");
  }
  bool asterisk = len == 1 && target[0] == '*' && llh->method == HTTP_OPTIONS;
  if (len == 0 || (target[0] != '/' && !asterisk)) {
    /* Origin-form only: we are not a proxy, so absolute-form and
     * authority-form (CONNECT) have no meaning here. */
    return fail(p, HTTP_E_BAD_REQUEST, "target not in origin-form");
  }
  const char *q = memchr(target, '?', len);
  uint32_t path_len = q ? (uint32_t)(q - target) : len;
  uint32_t path_start = p->scratch_len;
  rc = scratch_put(p, target, path_len);
  if (rc == 0) rc = scratch_nul(p);
  if (rc) return rc;
  p->msg.target = target;
  p->msg.path = p->scratch + path_start;
  p->msg.query = q ? q + 1 : target + len;
  return 0;
}

static int on_status(llhttp_t *llh, const char *at, size_t n) {
  http_parser_t *p = parser_of(llh);
  int rc = count_head(p, n);
  return rc ? rc : scratch_put(p, at, n);
}

static int on_status_complete(llhttp_t *llh) {
  http_parser_t *p = parser_of(llh);
  int rc = scratch_nul(p);
  if (rc) return rc;
  p->msg.reason = p->scratch + p->reason_start;
  return 0;
}

/* Trailers (after a chunked body) are counted against the limits but not
 * stored: letting them add to the headers would let a peer set fields
 * after the body, past any check made on the head. */
static int on_header_field(llhttp_t *llh, const char *at, size_t n) {
  http_parser_t *p = parser_of(llh);
  if (p->field_len == 0) p->field_start = p->scratch_len;
  p->field_len += (uint32_t)n;
  int rc = count_head(p, n);
  if (rc || p->headers_done) return rc;
  return scratch_put(p, at, n);
}

static int on_header_field_complete(llhttp_t *llh) {
  http_parser_t *p = parser_of(llh);
  if (++p->fields_count > p->limits.headers_count_max) {
    return fail(p, HTTP_E_HEADERS_TOO_MANY, "too many header fields");
  }
  if (p->field_len == 0) return fail(p, HTTP_E_BAD_REQUEST, "empty header name");
  if (p->headers_done) return 0;
  int rc = scratch_nul(p);
  p->value_start = p->scratch_len;
  return rc;
}

static int on_header_value(llhttp_t *llh, const char *at, size_t n) {
  http_parser_t *p = parser_of(llh);
  int rc = count_head(p, n);
  if (rc || p->headers_done) return rc;
  return scratch_put(p, at, n);
}

/* The value is complete: drop trailing whitespace (llhttp already skips the
 * leading one), NUL-terminate it and record the field. */
static int on_header_value_complete(llhttp_t *llh) {
  http_parser_t *p = parser_of(llh);
  uint32_t field_len = p->field_len;
  p->field_len = 0;
  if (p->headers_done) return 0;
  uint32_t value_len = p->scratch_len - p->value_start;
  const char *value = p->scratch + p->value_start;
  while (value_len > 0 &&
         (value[value_len - 1] == ' ' || value[value_len - 1] == '\t')) {
    value_len--;
  }
  p->scratch_len = p->value_start + value_len;
  int rc = scratch_nul(p);
  if (rc) return rc;
  assert(p->msg.headers_count < p->limits.headers_count_max);
  http_header_t *h = &p->headers[p->msg.headers_count++];
  h->name = p->scratch + p->field_start;
  h->name_len = field_len;
  h->value = value;
  h->value_len = value_len;
  return header_check(p, h);
}

/* Whole-head rules. Returns 1 to tell llhttp there is no body (a response
 * to HEAD), 0 to go on, or an error. */
static int on_headers_complete(llhttp_t *llh) {
  http_parser_t *p = parser_of(llh);
  p->headers_done = true;
  if (llh->http_major != 1 || llh->http_minor > 1) {
    return fail(p, HTTP_E_VERSION, "HTTP version other than 1.0 and 1.1");
  }
  if (p->te_count > 0 && llh->http_minor == 0) {
    /* An HTTP/1.0 peer cannot mean chunked: RFC 9112 6.1. */
    return fail(p, HTTP_E_BAD_REQUEST, "Transfer-Encoding on HTTP/1.0");
  }
  if (p->kind == HTTP_KIND_REQUEST) {
    if (llh->http_minor == 1 && p->host_count == 0) {
      return fail(p, HTTP_E_BAD_REQUEST, "HTTP/1.1 request without Host");
    }
  } else if (llh->upgrade) {
    return fail(p, HTTP_E_UNSUPPORTED, "protocol upgrade in a response");
  }
  if ((llh->flags & F_CONTENT_LENGTH) &&
      llh->content_length > p->limits.body_bytes_max) {
    /* Refused before a byte of the body is read. */
    return fail(p, HTTP_E_BODY_TOO_LARGE, "Content-Length above limit");
  }
  return p->no_body ? 1 : 0;
}

static int on_chunk_header(llhttp_t *llh) {
  http_parser_t *p = parser_of(llh);
  if (llh->content_length > p->limits.body_bytes_max - p->body_len) {
    /* Refused as soon as the chunk is announced, before its data. */
    return fail(p, HTTP_E_BODY_TOO_LARGE, "chunked body above limit");
  }
  p->chunk_left = llh->content_length;
  return 0;
}

/* Body bytes are not framing: scan the framing before them, skip them,
 * and note when a chunk's data ends so its CRLF is checked. */
static int on_body(llhttp_t *llh, const char *at, size_t n) {
  http_parser_t *p = parser_of(llh);
  int rc = scan_range(p, p->scan.pos, at);
  if (rc) return rc;
  if (p->scan.cr_pending) return fail(p, HTTP_E_BAD_REQUEST, "CR before body");
  p->scan.line_start = false;
  p->scan.pos = at + n;
  if (n > p->limits.body_bytes_max - p->body_len) {
    return fail(p, HTTP_E_BODY_TOO_LARGE, "body above limit");
  }
  rc = body_reserve(p, p->body_len + n);
  if (rc) return rc;
  memcpy(p->body + p->body_len, at, n);
  p->body_len += n;
  p->body[p->body_len] = '\0';
  if (llh->flags & F_CHUNKED) {
    if (n > p->chunk_left) return fail(p, HTTP_E_BAD_REQUEST, "chunk overrun");
    p->chunk_left -= n;
    if (p->chunk_left == 0) p->scan.chunk_crlf_due = true;
  }
  return 0;
}

/* The message is whole: fill in msg and pause, so feed can hand it out
 * before llhttp reads a byte of the next one. */
static int on_message_complete(llhttp_t *llh) {
  http_parser_t *p = parser_of(llh);
  http_msg_t *m = &p->msg;
  if (p->kind == HTTP_KIND_REQUEST) {
    m->method = llh->method;
    m->method_name = llhttp_method_name((llhttp_method_t)llh->method);
  } else {
    m->status = llh->status_code;
  }
  m->headers = p->headers;
  m->body = p->body ? p->body : "";
  m->body_len = p->body_len;
  m->keep_alive = llhttp_should_keep_alive(llh) != 0;
  m->chunked = (llh->flags & F_CHUNKED) != 0;
  m->http_minor = llh->http_minor;
  p->msg_ready = true;
  p->no_body = false;
  return HPE_PAUSED;
}

static const llhttp_settings_t http_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_status,
    .on_method = on_method,
    .on_version = on_version,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
    .on_url_complete = on_url_complete,
    .on_status_complete = on_status_complete,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value_complete = on_header_value_complete,
    .on_chunk_header = on_chunk_header,
};

/* ------------------------------------------------------------------------ */
/* Life cycle                                                               */
/* ------------------------------------------------------------------------ */

void http_limits_defaults(http_limits_t *limits) {
  limits->header_bytes_max = 8192;
  limits->headers_count_max = 64;
  limits->url_bytes_max = 2048;
  limits->body_bytes_max = 1u << 20;
}

/* Scratch bytes needed by the limits: the counted head (target, reason,
 * names, values), a second copy of the path (at most the target), and the
 * NULs: target, path, reason, and name + value of each field. */
static uint64_t scratch_bytes(const http_limits_t *l) {
  uint64_t path_copy = l->url_bytes_max < l->header_bytes_max
                           ? l->url_bytes_max : l->header_bytes_max;
  return (uint64_t)l->header_bytes_max + path_copy + 3u +
         2ull * l->headers_count_max;
}

size_t http_parser_head_bytes(const http_limits_t *limits) {
  http_limits_t d;
  if (limits == NULL) {
    http_limits_defaults(&d);
    limits = &d;
  }
  return (size_t)limits->headers_count_max * sizeof(http_header_t) + scratch_bytes(limits);
}

/* Limits, kind and llhttp; no head storage yet. */
static int parser_setup(http_parser_t *p, http_kind_t kind, const http_limits_t *limits) {
  memset(p, 0, sizeof(*p));
  if (limits) {
    p->limits = *limits;
  } else {
    http_limits_defaults(&p->limits);
  }
  const http_limits_t *l = &p->limits;
  if (l->header_bytes_max == 0 || l->headers_count_max == 0 ||
      l->url_bytes_max == 0 || l->body_bytes_max == 0) {
    return -EINVAL;
  }
  if (kind != HTTP_KIND_REQUEST && kind != HTTP_KIND_RESPONSE) return -EINVAL;
  uint64_t cap = scratch_bytes(l);
  if (cap > UINT32_MAX) return -EINVAL;
  p->scratch_cap = (uint32_t)cap;
  p->kind = kind;
  llhttp_init(&p->llh, kind == HTTP_KIND_REQUEST ? HTTP_REQUEST : HTTP_RESPONSE,
              &http_settings);
  p->llh.data = p;
  message_reset(p);
  return 0;
}

int http_parser_init(http_parser_t *p, http_kind_t kind,
                     const http_limits_t *limits) {
  int rc = parser_setup(p, kind, limits);
  if (rc < 0) return rc;
  p->scratch = malloc(p->scratch_cap);
  p->headers = calloc(p->limits.headers_count_max, sizeof(*p->headers));
  if (p->scratch == NULL || p->headers == NULL) {
    http_parser_deinit(p);
    return -ENOMEM;
  }
  p->msg.headers = p->headers;
  return 0;
}

int http_parser_init_lent(http_parser_t *p, http_kind_t kind,
                          const http_limits_t *limits) {
  int rc = parser_setup(p, kind, limits);
  p->head_lent = true;
  return rc;
}

void http_parser_lend(http_parser_t *p, void *head) {
  assert(p->head_lent && p->scratch == NULL && head != NULL);
  assert(http_parser_idle(p) && !p->msg_ready);
  p->headers = head;
  p->scratch = (char *)head + (size_t)p->limits.headers_count_max * sizeof(http_header_t);
  p->msg.headers = p->headers;
}

void *http_parser_take_back(http_parser_t *p) {
  assert(p->head_lent);
  void *head = p->headers;
  p->headers = NULL;
  p->scratch = NULL;
  p->msg.headers = NULL;
  return head;
}

bool http_parser_has_head(const http_parser_t *p) { return p->scratch != NULL; }

void http_parser_deinit(http_parser_t *p) {
  if (!p->head_lent) {
    free(p->scratch);
    free(p->headers);
  }
  free(p->body);
  p->scratch = NULL;
  p->headers = NULL;
  p->body = NULL;
  p->scratch_cap = 0;
  p->body_cap = 0;
}

/* ------------------------------------------------------------------------ */
/* Feeding                                                                  */
/* ------------------------------------------------------------------------ */

/* The first error wins and sticks. llhttp's own errors are all 400: they
 * are grammar errors, and its reason string goes to the log. */
static int set_error(http_parser_t *p, llhttp_errno_t e) {
  if (p->err == 0) {
    p->err = HTTP_E_BAD_REQUEST;
    p->err_reason = llhttp_get_error_reason(&p->llh);
    if (e == HPE_PAUSED_UPGRADE) p->err_reason = "unexpected upgrade pause";
  }
  return p->err;
}

/* One llhttp_execute over data, then the framing scan of what it consumed.
 * Returns HPE_OK, HPE_PAUSED (a message is ready), HPE_PAUSED_UPGRADE, or
 * a negative error. *used is the number of bytes consumed. */
static int execute(http_parser_t *p, const char *data, size_t len,
                   size_t *used) {
  p->scan.pos = data;
  llhttp_errno_t e = llhttp_execute(&p->llh, data, len);
  const char *end = data + len;
  if (e != HPE_OK) end = llhttp_get_error_pos(&p->llh);
  *used = (size_t)(end - data);
  if (p->err) return p->err;
  if (e != HPE_OK && e != HPE_PAUSED && e != HPE_PAUSED_UPGRADE) {
    return set_error(p, e);
  }
  if (scan_range(p, p->scan.pos, end) != 0) return p->err;
  return (int)e;
}

/* llhttp pauses after a request that asked for an Upgrade (CONNECT was
 * refused earlier). We never switch protocols, which RFC 9110 7.8 allows:
 * the connection simply goes on as HTTP/1.1. */
static int resume_after_upgrade(http_parser_t *p) {
  if (p->kind != HTTP_KIND_REQUEST) return set_error(p, HPE_PAUSED_UPGRADE);
  llhttp_resume_after_upgrade(&p->llh);
  return 0;
}

int http_parser_feed(http_parser_t *p, const char *data, size_t len,
                     size_t *consumed, http_msg_t **msg_out) {
  *consumed = 0;
  *msg_out = NULL;
  assert(p->scratch != NULL); /* a lent head is lent before feeding */
  if (p->err) return p->err;
  if (p->msg_ready) return HTTP_E_STATE;
  if (len == 0) return 0;
  size_t used = 0;
  int rc = execute(p, data, len, &used);
  if (rc == HPE_PAUSED_UPGRADE) {
    /* Only right after the upgrading message, so at most once per feed:
     * the next message, if any, pauses before another upgrade could. */
    rc = resume_after_upgrade(p);
    size_t more = 0;
    if (rc == 0) rc = execute(p, data + used, len - used, &more);
    used += more;
    if (rc == HPE_PAUSED_UPGRADE) rc = set_error(p, HPE_PAUSED_UPGRADE);
  }
  *consumed = used;
  if (rc < 0) return rc;
  if (rc == HPE_PAUSED) {
    assert(p->msg_ready);
    *msg_out = &p->msg;
  }
  return 0;
}

void http_parser_next(http_parser_t *p) {
  if (!p->msg_ready) return;
  message_reset(p);
  llhttp_resume(&p->llh);
}

int http_parser_finish(http_parser_t *p, http_msg_t **msg_out) {
  *msg_out = NULL;
  if (p->err) return p->err;
  if (p->msg_ready) return HTTP_E_STATE;
  /* Between messages: llhttp may still think it is in the last one, as our
   * pause kept it from running its own end-of-message step. */
  if (!p->begun) return 0;
  llhttp_errno_t e = llhttp_finish(&p->llh);
  if (p->err) return p->err;
  if (e == HPE_PAUSED && p->msg_ready) {
    *msg_out = &p->msg; /* a body delimited by the end of the connection */
    return 0;
  }
  if (e == HPE_INVALID_EOF_STATE || e == HPE_OK) {
    p->err = HTTP_E_EOF;
    p->err_reason = "connection closed in mid-message";
    return p->err;
  }
  if (e != HPE_OK) return set_error(p, e);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Queries                                                                  */
/* ------------------------------------------------------------------------ */

void http_parser_expect_no_body(http_parser_t *p) { p->no_body = true; }

bool http_parser_in_headers(const http_parser_t *p) {
  return p->begun && !p->headers_done;
}

bool http_parser_idle(const http_parser_t *p) { return !p->begun; }

const char *http_parser_error_reason(const http_parser_t *p) {
  return p->err_reason ? p->err_reason : "";
}

static bool header_is(const http_header_t *h, const char *name, size_t n) {
  if (h->name_len != n) return false;
  uint32_t j = 0;
  while (j < n && ascii_lower(h->name[j]) == ascii_lower(name[j])) j++;
  return j == n;
}

const char *http_msg_header(const http_msg_t *msg, const char *name) {
  size_t n = strlen(name);
  for (uint32_t i = 0; i < msg->headers_count; i++)
    if (header_is(&msg->headers[i], name, n)) return msg->headers[i].value;
  return NULL;
}

uint32_t http_msg_header_count(const http_msg_t *msg, const char *name) {
  size_t n = strlen(name);
  uint32_t count = 0;
  for (uint32_t i = 0; i < msg->headers_count; i++)
    if (header_is(&msg->headers[i], name, n)) count++;
  return count;
}
