/*
 * inject.c - fixed header lines added to every response of a stream.
 *
 * The TLS filter sees what the wire server sends as one byte stream of
 * responses. Every response our writers produce is a status line, header
 * lines, an empty line, then exactly Content-Length bytes of body (none
 * for 1xx, 204 and 304), so the stream can be followed without buffering:
 * heads byte by byte (they are small), bodies skipped in one step. The
 * lines go right after each status line, where they cannot end the head
 * early nor land in a body.
 */
#include <ctype.h>
#include <string.h>

#include "gw.h"

enum { S_STATUS = 0, S_FIELDS, S_BODY };

static const char cl_name[] = "content-length:";
#define CL_NAME_LEN (sizeof cl_name - 1)
_Static_assert(CL_NAME_LEN <= sizeof(((gw_inject_t *)0)->line_start), "line_start fits the name");

void gw_inject_init(gw_inject_t *in, const char *lines) {
  *in = (gw_inject_t){.lines = lines, .lines_len = lines != NULL ? strlen(lines) : 0};
}

static bool bodyless(unsigned status) {
  return status < 200 || status == 204 || status == 304;
}

/* A byte of the status line "HTTP/1.1 200 OK": the code is at 9..11. */
static void status_byte(gw_inject_t *in, char c) {
  if (in->line_len >= 9 && in->line_len < 12 && isdigit((unsigned char)c)) {
    in->status = (uint16_t)(in->status * 10 + (c - '0'));
    in->status_digits++;
  }
  in->line_len++;
}

/* The empty line: the body (if any) follows. Returns 0 or GW_E_TLS. */
static int head_end(gw_inject_t *in) {
  if (in->status_digits != 3 || in->cl_bad) return GW_E_TLS;
  in->body_left = bodyless(in->status) ? 0 : in->content_length;
  in->state = in->body_left > 0 ? S_BODY : S_STATUS;
  in->status = 0;
  in->status_digits = 0;
  in->content_length = 0;
  in->line_len = 0;
  return 0;
}

/* A byte of a header line; remembers Content-Length's value. */
static int field_byte(gw_inject_t *in, char c) {
  if (c == '\n') {
    bool empty = in->line_len == 0 || (in->line_len == 1 && in->line_start[0] == '\r');
    in->line_len = 0;
    in->cl_line = false;
    return empty ? head_end(in) : 0;
  }
  if (in->line_len < CL_NAME_LEN) {
    in->line_start[in->line_len] = (char)tolower((unsigned char)c);
    if (in->line_len + 1 == CL_NAME_LEN && memcmp(in->line_start, cl_name, CL_NAME_LEN) == 0) {
      in->cl_line = true;
      in->content_length = 0;
    }
  } else if (in->cl_line && isdigit((unsigned char)c)) {
    if (in->content_length > UINT64_MAX / 10 - 10) in->cl_bad = true;
    in->content_length = in->content_length * 10 + (uint64_t)(c - '0');
  } else if (in->cl_line && c != ' ' && c != '\t' && c != '\r') {
    in->cl_bad = true;
  }
  if (in->line_len < UINT32_MAX) in->line_len++;
  return 0;
}

int gw_inject_push(gw_inject_t *in, const char *data, size_t len, gw_sink_fn sink,
                   void *ctx) {
  size_t start = 0; /* first byte not yet handed to the sink */
  size_t i = 0;
  int rc = 0;
  while (i < len && rc == 0) { /* each turn consumes at least one byte */
    if (in->state == S_BODY) {
      size_t n = len - i < in->body_left ? len - i : (size_t)in->body_left;
      i += n;
      in->body_left -= n;
      if (in->body_left == 0) in->state = S_STATUS;
      continue;
    }
    char c = data[i++];
    if (in->state == S_FIELDS) {
      rc = field_byte(in, c);
      continue;
    }
    status_byte(in, c);
    if (c != '\n') continue;
    in->state = S_FIELDS;
    in->line_len = 0;
    in->cl_bad = false;
    rc = sink(ctx, data + start, i - start);
    if (rc == 0 && in->lines_len > 0) rc = sink(ctx, in->lines, in->lines_len);
    start = i;
  }
  if (rc == 0 && start < len) rc = sink(ctx, data + start, len - start);
  return rc;
}
