/*
 * tls_pem.c - reading certificates and keys: whole small files, and PEM
 * objects decoded to DER with BearSSL's streaming decoder.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bearssl.h>

#include "tls.h"

int wire_tls_read_file(const char *path, char **out, size_t *out_len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  if (fstat(fd, &st) < 0) {
    int rc = -errno;
    close(fd);
    return rc;
  }
  if (st.st_size < 0 || (uint64_t)st.st_size > WIRE_TLS_FILE_BYTES_MAX) {
    close(fd);
    return -EFBIG;
  }
  size_t size = (size_t)st.st_size;
  char *buf = malloc(size + 1);
  if (buf == NULL) {
    close(fd);
    return -ENOMEM;
  }
  size_t got = 0;
  while (got < size) { /* bounded: every turn reads or ends */
    ssize_t n = read(fd, buf + got, size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got += (size_t)n;
  }
  close(fd);
  buf[got] = '\0';
  *out = buf;
  *out_len = got;
  return 0;
}

static void der_append(void *ctx, const void *data, size_t len) {
  wire_tls_pem_obj_t *o = ctx;
  if (o->failed) return;
  if (o->len + len > o->cap) {
    size_t cap = o->cap ? o->cap * 2 : 1024;
    while (cap < o->len + len) cap *= 2;
    unsigned char *p = realloc(o->der, cap);
    if (p == NULL) {
      o->failed = true;
      return;
    }
    o->der = p;
    o->cap = cap;
  }
  memcpy(o->der + o->len, data, len);
  o->len += len;
}

void wire_tls_pem_free(wire_tls_pem_obj_t *objs, size_t count) {
  for (size_t i = 0; i < count; i++) {
    if (objs[i].der != NULL) explicit_bzero(objs[i].der, objs[i].cap);
    free(objs[i].der);
    objs[i] = (wire_tls_pem_obj_t){0};
  }
}

/* Feeds `len` bytes, handling events. Returns the objects completed so
 * far, or a negative error. */
static int pem_feed(br_pem_decoder_context *pc, const char *text, size_t len,
                    wire_tls_pem_obj_t *objs, size_t max, size_t *n, bool *in_obj) {
  /* Every turn consumes bytes or reports an event that a later turn
   * clears, so 2 * len + 2 turns are enough. */
  const size_t turns_max = 2 * len + 2;
  for (size_t turns = 0; turns < turns_max; turns++) {
    size_t used = br_pem_decoder_push(pc, text, len);
    text += used;
    len -= used;
    switch (br_pem_decoder_event(pc)) {
    case BR_PEM_BEGIN_OBJ:
      if (*n == max) return WIRE_TLS_E_PEM;
      objs[*n] = (wire_tls_pem_obj_t){0};
      snprintf(objs[*n].name, sizeof objs[*n].name, "%s", br_pem_decoder_name(pc));
      br_pem_decoder_setdest(pc, der_append, &objs[*n]);
      *in_obj = true;
      break;
    case BR_PEM_END_OBJ:
      if (objs[*n].failed) return -ENOMEM;
      (*n)++;
      *in_obj = false;
      break;
    case BR_PEM_ERROR:
      return WIRE_TLS_E_PEM;
    default:
      if (len == 0) return 0;
      break;
    }
  }
  return WIRE_TLS_E_PEM;
}

int wire_tls_pem_decode(const char *text, size_t len, wire_tls_pem_obj_t *objs, size_t max) {
  br_pem_decoder_context pc;
  br_pem_decoder_init(&pc);
  size_t n = 0;
  bool in_obj = false;
  int rc = pem_feed(&pc, text, len, objs, max, &n, &in_obj);
  /* The decoder needs a line end after the last END line to report it. */
  if (rc == 0) rc = pem_feed(&pc, "\n", 1, objs, max, &n, &in_obj);
  if (rc == 0 && (in_obj || n == 0)) rc = WIRE_TLS_E_PEM;
  if (rc < 0) {
    wire_tls_pem_free(objs, n + (in_obj ? 1 : 0));
    return rc;
  }
  return (int)n;
}

int wire_tls_pem_read(const char *path, wire_tls_pem_obj_t *objs, size_t max) {
  char *text = NULL;
  size_t len = 0;
  int rc = wire_tls_read_file(path, &text, &len);
  if (rc < 0) return rc;
  rc = wire_tls_pem_decode(text, len, objs, max);
  explicit_bzero(text, len); /* it may hold a key */
  free(text);
  return rc;
}
