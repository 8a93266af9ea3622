/*
 * internal.h - helpers shared by the gateway's own files; not part of its
 * public face (gw.h).
 */
#ifndef GW_INTERNAL_H
#define GW_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/random.h>

#include "gw.h"
#include "tls.h"

/* A keyed 64-bit hash for the in-memory tables (addresses, rate-limit
 * keys). The key is drawn at start-up so that a client cannot choose
 * inputs that collide; it is not a MAC. */
static inline uint64_t gw__mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

static inline uint64_t gw__hash(const void *data, size_t len, uint64_t key) {
  const uint8_t *p = data;
  uint64_t h = gw__mix(key ^ (len * 0x9e3779b97f4a7c15ull));
  while (len >= 8) {
    uint64_t w;
    memcpy(&w, p, 8);
    h = gw__mix(h ^ w) + 0x9e3779b97f4a7c15ull;
    p += 8;
    len -= 8;
  }
  uint64_t tail = 0;
  memcpy(&tail, p, len);
  return gw__mix(h ^ tail ^ ((uint64_t)len << 56));
}

/* A random 64-bit value for table keys; falls back to the address of a
 * stack variable and the time if getrandom fails (it does not on Linux
 * once booted). */
static inline uint64_t gw__random_u64(void) {
  uint64_t v = 0;
  if (getrandom(&v, sizeof v, 0) != (ssize_t)sizeof v) v = (uint64_t)(uintptr_t)&v;
  return v;
}

/* A subject the services accept in X-Auth-Subject (wire/http.h). Tokens
 * with any other sub are refused at verification, so a verified identity
 * can always be passed on. */
static inline bool gw__subject_ok(const char *s) { return http_identity_subject_ok(s); }

/* The smallest power of two >= n (n <= 2^31). */
static inline uint32_t gw__pow2(uint32_t n) {
  uint32_t p = 1;
  while (p < n) p <<= 1;
  return p;
}

#endif /* GW_INTERNAL_H */

/* ------------------------------------------------------------------------ */
/* Files and PEM (wire/tls_pem.c, shared with the platform's inner TLS)     */
/* ------------------------------------------------------------------------ */

#define GW__PEM_OBJS_MAX WIRE_TLS_PEM_OBJS_MAX

typedef wire_tls_pem_obj_t gw__pem_obj_t;

/* As wire_tls_read_file(). */
static inline int gw__read_file(const char *path, char **out, size_t *out_len) {
  return wire_tls_read_file(path, out, out_len);
}

/* As wire_tls_pem_decode(), with the gateway's code for bad PEM. */
static inline int gw__pem_decode(const char *text, size_t len, gw__pem_obj_t *objs,
                                 size_t max) {
  int rc = wire_tls_pem_decode(text, len, objs, max);
  return rc == WIRE_TLS_E_PEM ? GW_E_PEM : rc;
}

/* As wire_tls_pem_free(). */
static inline void gw__pem_free(gw__pem_obj_t *objs, size_t count) {
  wire_tls_pem_free(objs, count);
}
