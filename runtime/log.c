/*
 * log.c - JSON lines, one object per line, sensitive fields redacted.
 *
 *   {"ts":"2026-11-23T22:30:01.123Z","level":"info","proc":"gateway",
 *    "rid":"r-42","msg":"listening","port":8080}
 *
 * Each thread formats straight into its own buffer (no lock, no malloc on
 * the hot path). A loop thread turns buffering on and flushes once per
 * iteration; other threads, and ERROR lines, are written at once.
 *
 * Lines never exceed LOG_LINE_BYTES_MAX: a string that does not fit is cut
 * at a UTF-8 boundary, fields that do not fit are left out, and the line
 * ends with "trunc":true. Space for that ending is reserved up front, so a
 * line under construction can always be closed into valid JSON.
 *
 * Writes go out as runs of whole lines of at most PIPE_BUF bytes: a pipe
 * writes those atomically, so lines from several threads never interleave.
 * A non-blocking fd that says EAGAIN keeps its lines in the buffer for the
 * next flush; when the buffer must make room, they are dropped and counted,
 * never waited for.
 */
#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <bearssl.h>

#include "rt.h"

#define LOG_BUF_BYTES (64 * 1024)
#define LOG_LINE_BYTES_MAX 4096
#define LOG_NAME_BYTES_MAX 63 /* process name and request id */
#define LOG_HASH_BYTES 8      /* HMAC-SHA256 truncated to 64 bits */

/* The ending of a cut line, always kept free while a line is built. */
static const char LOG_TRUNC_TAIL[] = ",\"trunc\":true}\n";
#define LOG_TAIL_BYTES (sizeof(LOG_TRUNC_TAIL) - 1)

_Static_assert(LOG_LINE_BYTES_MAX <= PIPE_BUF,
               "a line must fit in one atomic pipe write");
_Static_assert(LOG_BUF_BYTES >= 4 * LOG_LINE_BYTES_MAX,
               "the buffer should hold several lines");
/* The header (ts, level, proc and rid escaped at 6 bytes per byte at worst)
 * must always fit, so only msg and fields can ever be cut. */
_Static_assert(64 + 12 * LOG_NAME_BYTES_MAX + LOG_TAIL_BYTES <
                   LOG_LINE_BYTES_MAX,
               "the line header must always fit");

/* ------------------------------------------------------------------------ */
/* Process-wide settings: written by rt_log_init() before threads start.    */
/* ------------------------------------------------------------------------ */

static char log_proc[LOG_NAME_BYTES_MAX + 1] = "-";
static size_t log_proc_len = 1;
static rt_log_level_t log_level_min = RT_LOG_INFO;
static br_hmac_key_context log_hash_key;
static pthread_once_t log_once = PTHREAD_ONCE_INIT;
static pthread_key_t log_exit_key;
static atomic_int log_fd = 2;
static atomic_uint_least64_t log_dropped;

static const char *const log_level_names[] = {"debug", "info", "warn",
                                              "error"};

/* ------------------------------------------------------------------------ */
/* Per-thread state                                                         */
/* ------------------------------------------------------------------------ */

typedef struct log_tls {
  size_t len;          /* bytes waiting in buf, whole lines but maybe the 1st */
  bool head_partial;   /* the first line in buf was partly written already */
  bool buffered;       /* a loop runs on this thread and flushes */
  bool exit_hooked;    /* the thread-exit flush is registered */
  uint8_t rid_len;
  char rid[LOG_NAME_BYTES_MAX + 1];
  time_t ts_sec;       /* second whose text is cached in ts_text */
  char ts_text[20];    /* "YYYY-MM-DDTHH:MM:SS" */
  char buf[LOG_BUF_BYTES];
} log_tls_t;

/* Zero-initialised (so it lives in .tbss, not copied per thread); ts_sec 0
 * never matches the clock, so the first line fills ts_text. */
static _Thread_local log_tls_t log_tls;

/* ------------------------------------------------------------------------ */
/* One-time set-up: a default random hash key, flush at thread and process  */
/* exit so buffered lines are not lost.                                     */
/* ------------------------------------------------------------------------ */

static void log_tls_flush(log_tls_t *t);

static void log_thread_exit(void *arg) { log_tls_flush(arg); }

static void log_process_exit(void) { log_tls_flush(&log_tls); }

static void log_random(uint8_t *out, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = getrandom(out + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    /* getrandom exists on every kernel with io_uring; a failure here would
     * leave hashes unkeyed and reversible by dictionary. */
    assert(r > 0);
    got += (size_t)r;
  }
}

static void log_once_init(void) {
  uint8_t key[32];
  log_random(key, sizeof key);
  br_hmac_key_init(&log_hash_key, &br_sha256_vtable, key, sizeof key);
  memset(key, 0, sizeof key);
  int rc = pthread_key_create(&log_exit_key, log_thread_exit);
  assert(rc == 0);
  (void)rc;
  atexit(log_process_exit);
}

/* Length of s cut to at most max bytes without splitting a UTF-8 sequence. */
static size_t utf8_cut(const char *s, size_t max) {
  size_t n = strnlen(s, max + 1);
  if (n <= max) return n;
  n = max;
  while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80) n--;
  return n;
}

void rt_log_init(const char *process, rt_log_level_t level_min,
                 const uint8_t *hash_key, size_t hash_key_bytes) {
  assert(level_min >= RT_LOG_DEBUG);
  assert(level_min <= RT_LOG_ERROR);
  pthread_once(&log_once, log_once_init);
  if (process == NULL || process[0] == '\0') process = "-";
  log_proc_len = utf8_cut(process, LOG_NAME_BYTES_MAX);
  memcpy(log_proc, process, log_proc_len);
  log_proc[log_proc_len] = '\0';
  log_level_min = level_min;
  /* An empty key would make hashes unkeyed: keep the random one instead. */
  if (hash_key != NULL && hash_key_bytes > 0) {
    br_hmac_key_init(&log_hash_key, &br_sha256_vtable, hash_key,
                     hash_key_bytes);
  }
}

int rt_log_level_parse(const char *name) {
  if (name == NULL) return -1;
  for (int i = RT_LOG_DEBUG; i <= RT_LOG_ERROR; i++) {
    if (strcasecmp(name, log_level_names[i]) == 0) return i;
  }
  return -1;
}

void rt_log_set_fd(int fd) { atomic_store(&log_fd, fd); }

uint64_t rt_log_dropped_count(void) { return atomic_load(&log_dropped); }

void rt_log_set_request_id(const char *request_id) {
  log_tls_t *t = &log_tls;
  if (request_id == NULL) {
    t->rid_len = 0;
    return;
  }
  size_t n = utf8_cut(request_id, LOG_NAME_BYTES_MAX);
  memcpy(t->rid, request_id, n);
  t->rid[n] = '\0';
  t->rid_len = (uint8_t)n;
}

void rt_log_hash(const char *value, size_t value_bytes, char out[19]) {
  static const char hex[] = "0123456789abcdef";
  assert(value != NULL || value_bytes == 0);
  pthread_once(&log_once, log_once_init);
  br_hmac_context hc;
  uint8_t mac[LOG_HASH_BYTES];
  br_hmac_init(&hc, &log_hash_key, sizeof mac);
  if (value_bytes > 0) br_hmac_update(&hc, value, value_bytes);
  size_t n = br_hmac_out(&hc, mac);
  assert(n == sizeof mac);
  (void)n;
  out[0] = 'h';
  out[1] = ':';
  for (size_t i = 0; i < sizeof mac; i++) {
    out[2 + 2 * i] = hex[mac[i] >> 4];
    out[3 + 2 * i] = hex[mac[i] & 15];
  }
  out[18] = '\0';
}

/* ------------------------------------------------------------------------ */
/* Writing                                                                  */
/* ------------------------------------------------------------------------ */

static size_t count_lines(const char *p, size_t n) {
  size_t lines = 0;
  const char *end = p + n;
  while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
    lines++;
    p++;
  }
  return lines;
}

/* The longest run of whole lines at p that fits in one atomic write. The
 * buffer holds only whole lines (the first maybe already partly written),
 * each at most LOG_LINE_BYTES_MAX, so a newline always falls in range. */
static size_t write_chunk(const char *p, size_t n) {
  size_t span = n < LOG_LINE_BYTES_MAX ? n : LOG_LINE_BYTES_MAX;
  const char *nl = memrchr(p, '\n', span);
  assert(nl != NULL);
  return (size_t)(nl - p) + 1;
}

/* Writes what the fd takes; keeps the rest in the buffer on EAGAIN, drops
 * it on any other error. Leaves errno as it found it: callers log between a
 * failing call and their look at errno. */
static void log_tls_flush(log_tls_t *t) {
  int saved_errno = errno;
  int fd = atomic_load(&log_fd);
  size_t off = 0;
  while (off < t->len) {
    ssize_t n = write(fd, t->buf + off, write_chunk(t->buf + off, t->len - off));
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
    /* A closed or broken fd (or a write of 0 bytes, which would spin). */
    atomic_fetch_add(&log_dropped, count_lines(t->buf + off, t->len - off));
    off = t->len;
  }
  errno = saved_errno;
  if (off == 0) return;
  t->head_partial = off < t->len && t->buf[off - 1] != '\n';
  memmove(t->buf, t->buf + off, t->len - off);
  t->len -= off;
}

/* Makes room for one more line: flushes, and when the fd still does not
 * take enough, drops waiting lines. A partly written first line is kept so
 * the output goes on with the rest of that line, not in the middle of it. */
static void log_make_room(log_tls_t *t) {
  if (LOG_BUF_BYTES - t->len >= LOG_LINE_BYTES_MAX) return;
  log_tls_flush(t);
  if (LOG_BUF_BYTES - t->len >= LOG_LINE_BYTES_MAX) return;
  size_t keep = 0;
  if (t->head_partial) {
    const char *nl = memchr(t->buf, '\n', t->len);
    assert(nl != NULL);
    keep = (size_t)(nl - t->buf) + 1;
  }
  atomic_fetch_add(&log_dropped, count_lines(t->buf + keep, t->len - keep));
  t->len = keep;
  assert(LOG_BUF_BYTES - t->len >= LOG_LINE_BYTES_MAX);
}

void rt_log_flush(void) { log_tls_flush(&log_tls); }

static void log_hook_exit(log_tls_t *t) {
  if (t->exit_hooked) return;
  pthread_once(&log_once, log_once_init);
  pthread_setspecific(log_exit_key, t);
  t->exit_hooked = true;
}

void rt_log_set_buffered(bool on) {
  log_tls_t *t = &log_tls;
  if (on) log_hook_exit(t);
  if (!on) log_tls_flush(t);
  t->buffered = on;
}

/* ------------------------------------------------------------------------ */
/* Formatting one line                                                      */
/* ------------------------------------------------------------------------ */

/* A line being built at p. Content stays within `limit`, which keeps
 * LOG_TAIL_BYTES free for the ending. Once something did not fit, `trunc`
 * is set and nothing more is appended. */
typedef struct line {
  char *p;
  size_t len;
  size_t limit;
  bool trunc;
} line_t;

static bool put_raw(line_t *l, const char *s, size_t n) {
  if (l->trunc) return false;
  if (n > l->limit - l->len) {
    l->trunc = true;
    return false;
  }
  memcpy(l->p + l->len, s, n);
  l->len += n;
  return true;
}

#define PUT_LIT(l, lit) put_raw((l), (lit), sizeof(lit) - 1)

/* Length of the valid UTF-8 sequence at s (n bytes left), or 0 when the
 * bytes there are not one (overlong, surrogate, above U+10FFFF, cut). */
static size_t utf8_seq(const unsigned char *s, size_t n) {
  unsigned char c = s[0];
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF; /* allowed range of the 2nd byte */
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0; /* no overlongs */
    if (c == 0xED) hi = 0x9F; /* no surrogates */
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90; /* no overlongs */
    if (c == 0xF4) hi = 0x8F; /* nothing above U+10FFFF */
  } else {
    return 0;
  }
  if (n < len) return 0;
  if (s[1] < lo || s[1] > hi) return 0;
  for (size_t i = 2; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
  }
  return len;
}

static bool json_plain(unsigned char c) {
  return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

/* Appends s as a JSON string. Cuts at a character boundary when the line is
 * full, but always closes the quote. Returns false when it was cut or could
 * not even start. */
static bool put_str(line_t *l, const char *str, size_t n) {
  static const char hex[] = "0123456789abcdef";
  const unsigned char *s = (const unsigned char *)str;
  if (l->trunc) return false;
  if (l->limit - l->len < 2) {
    l->trunc = true;
    return false;
  }
  l->p[l->len++] = '"';
  size_t end = l->limit - 1; /* room for the closing quote */
  size_t i = 0;
  while (i < n) {
    size_t run = i;
    while (run < n && json_plain(s[run])) run++;
    if (run > i) {
      size_t take = run - i;
      if (take > end - l->len) {
        take = end - l->len;
        l->trunc = true;
      }
      memcpy(l->p + l->len, s + i, take);
      l->len += take;
      i += take;
      if (l->trunc) break;
      continue;
    }
    char esc[6];
    const char *out = esc;
    size_t out_len = 6, adv = 1;
    if (s[i] == '"' || s[i] == '\\') {
      esc[0] = '\\';
      esc[1] = (char)s[i];
      out_len = 2;
    } else if (s[i] < 0x20) {
      memcpy(esc, "\\u00", 4);
      esc[4] = hex[s[i] >> 4];
      esc[5] = hex[s[i] & 15];
    } else if ((adv = utf8_seq(s + i, n - i)) > 0) {
      out = (const char *)s + i;
      out_len = adv;
    } else {
      memcpy(esc, "\\ufffd", 6);
      adv = 1;
    }
    if (out_len > end - l->len) {
      l->trunc = true;
      break;
    }
    memcpy(l->p + l->len, out, out_len);
    l->len += out_len;
    i += adv;
  }
  l->p[l->len++] = '"';
  return !l->trunc;
}

static bool put_cstr(line_t *l, const char *s) {
  return put_str(l, s, strlen(s));
}

static bool put_i64(line_t *l, int64_t v) {
  char tmp[24];
  size_t pos = sizeof tmp;
  uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
  do {
    tmp[--pos] = (char)('0' + u % 10);
    u /= 10;
  } while (u != 0);
  if (v < 0) tmp[--pos] = '-';
  return put_raw(l, tmp + pos, sizeof tmp - pos);
}

static bool put_double(line_t *l, double d) {
  if (!isfinite(d)) return PUT_LIT(l, "null");
  char tmp[32];
  int n = snprintf(tmp, sizeof tmp, "%.17g", d);
  assert(n > 0 && (size_t)n < sizeof tmp);
  return put_raw(l, tmp, (size_t)n);
}

static bool put_value(line_t *l, const rt_log_field_t *f) {
  switch (f->kind) {
  case RT_LOG_STR:
    return f->v.s != NULL ? put_cstr(l, f->v.s) : PUT_LIT(l, "null");
  case RT_LOG_INT:
    return put_i64(l, f->v.i);
  case RT_LOG_BOOL:
    return f->v.b ? PUT_LIT(l, "true") : PUT_LIT(l, "false");
  case RT_LOG_DOUBLE:
    return put_double(l, f->v.d);
  case RT_LOG_MASK:
    return PUT_LIT(l, "\"***\"");
  case RT_LOG_HASH: {
    if (f->v.s == NULL) return PUT_LIT(l, "null");
    /* Quoted in the buffer first: the value goes in whole or not at all. */
    char h[21];
    rt_log_hash(f->v.s, strlen(f->v.s), h + 1);
    h[0] = '"';
    h[19] = '"';
    return put_raw(l, h, 20);
  }
  }
  assert(false && "unknown log field kind");
  return PUT_LIT(l, "null");
}

/* Appends ,"key":value. A field whose key or scalar value does not fit is
 * taken out whole; a string value that does not fit is kept, cut. */
static void put_field(line_t *l, const rt_log_field_t *f) {
  size_t mark = l->len;
  if (!put_raw(l, ",", 1) || !put_cstr(l, f->key) || !put_raw(l, ":", 1)) {
    l->len = mark;
    return;
  }
  size_t value_mark = l->len;
  if (!put_value(l, f) && l->len == value_mark) l->len = mark;
}

static void put_ts(line_t *l, log_tls_t *t) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (ts.tv_sec != t->ts_sec) {
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    strftime(t->ts_text, sizeof t->ts_text, "%Y-%m-%dT%H:%M:%S", &tm);
    t->ts_sec = ts.tv_sec;
  }
  unsigned ms = (unsigned)(ts.tv_nsec / 1000000);
  char frac[6] = {'.', (char)('0' + ms / 100), (char)('0' + ms / 10 % 10),
                  (char)('0' + ms % 10), 'Z', '"'};
  PUT_LIT(l, "{\"ts\":\"");
  put_raw(l, t->ts_text, strlen(t->ts_text));
  put_raw(l, frac, sizeof frac);
}

/* Formats one line at the end of t's buffer; returns its length. */
static size_t log_format(log_tls_t *t, rt_log_level_t level, const char *msg,
                         const rt_log_field_t *fields, size_t fields_count) {
  line_t l = {.p = t->buf + t->len,
              .limit = LOG_LINE_BYTES_MAX - LOG_TAIL_BYTES};
  put_ts(&l, t);
  PUT_LIT(&l, ",\"level\":\"");
  put_raw(&l, log_level_names[level], strlen(log_level_names[level]));
  PUT_LIT(&l, "\",\"proc\":");
  put_str(&l, log_proc, log_proc_len);
  if (t->rid_len > 0) {
    PUT_LIT(&l, ",\"rid\":");
    put_str(&l, t->rid, t->rid_len);
  }
  assert(!l.trunc); /* the header always fits, see the static assert */
  rt_log_field_t msg_field = RT_LF_STR("msg", msg != NULL ? msg : "");
  put_field(&l, &msg_field);
  for (size_t i = 0; i < fields_count && !l.trunc; i++) {
    assert(fields[i].key != NULL);
    put_field(&l, &fields[i]);
  }
  /* The reserved tail: written past `limit` on purpose. */
  if (l.trunc) {
    memcpy(l.p + l.len, LOG_TRUNC_TAIL, LOG_TAIL_BYTES);
    l.len += LOG_TAIL_BYTES;
  } else {
    memcpy(l.p + l.len, "}\n", 2);
    l.len += 2;
  }
  assert(l.len <= LOG_LINE_BYTES_MAX);
  return l.len;
}

void rt_log(rt_log_level_t level, const char *msg, const rt_log_field_t *fields,
            size_t fields_count) {
  assert(level >= RT_LOG_DEBUG);
  assert(level <= RT_LOG_ERROR);
  assert(fields != NULL || fields_count == 0);
  if (level < log_level_min) return;
  log_tls_t *t = &log_tls;
  log_hook_exit(t);
  log_make_room(t);
  t->len += log_format(t, level, msg, fields, fields_count);
  if (level == RT_LOG_ERROR || !t->buffered) log_tls_flush(t);
}
