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
/* Files and PEM (pem.c)                                                    */
/* ------------------------------------------------------------------------ */

#define GW__PEM_OBJS_MAX 8
#define GW__FILE_BYTES_MAX (1u << 20) /* certificates and keys are far smaller */

/* One decoded PEM object: its label ("CERTIFICATE") and DER bytes. */
typedef struct gw__pem_obj {
  char name[128]; /* as long as BearSSL's decoder keeps */
  unsigned char *der;
  size_t len;
  size_t cap;
  bool failed; /* an allocation failed while decoding */
} gw__pem_obj_t;

/* Reads a whole (small) file into a malloc'd, NUL-terminated buffer.
 * Returns 0, -errno, or -EFBIG above GW__FILE_BYTES_MAX. */
int gw__read_file(const char *path, char **out, size_t *out_len);

/* Decodes every PEM object of `text` into objs (at most max). Returns the
 * count, or GW_E_PEM (malformed, too many, none) or -ENOMEM. On error
 * nothing needs freeing. */
int gw__pem_decode(const char *text, size_t len, gw__pem_obj_t *objs, size_t max);

/* Frees the DER buffers of `count` objects (and wipes them: keys). */
void gw__pem_free(gw__pem_obj_t *objs, size_t count);
