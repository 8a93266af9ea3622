/*
 * svc_auth.c - the caller's identity, as signed by the gateway.
 *
 * The gateway authenticates the client (JWT), then tells the service who
 * it is with four headers and an HMAC-SHA256 over them, the request method
 * and path, keyed by a secret the two share (AUTH_HMAC_KEY). The service
 * trusts nothing else: a header set that does not verify, or that was
 * signed too long ago, is refused with 401.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <bearssl.h>

#include "svc.h"

static const struct {
  const char *name;
  uint32_t bit;
} role_names[] = {SVC_ROLE_NAMES};

const char *svc_role_name(uint32_t bit) {
  for (size_t i = 0; i < sizeof role_names / sizeof role_names[0]; i++)
    if (role_names[i].bit == bit) return role_names[i].name;
  return NULL;
}

int svc_roles_parse(const char *csv, uint32_t *out) {
  uint32_t roles = 0;
  const char *p = csv;
  if (p == NULL || *p == '\0') return -EINVAL;
  /* Bound: one name per comma, at most 64 of them. */
  for (int n = 0; n < 64; n++) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    uint32_t bit = 0;
    for (size_t i = 0; i < sizeof role_names / sizeof role_names[0]; i++) {
      if (strlen(role_names[i].name) == len && strncmp(role_names[i].name, p, len) == 0)
        bit = role_names[i].bit;
    }
    if (bit == 0) return -EINVAL;
    roles |= bit;
    if (end == NULL) {
      *out = roles;
      return 0;
    }
    p = end + 1;
  }
  return -EINVAL;
}

/* Compares without an early exit, so timing says nothing about where the
 * strings differ. */
static bool equal_ct(const char *a, const char *b, size_t n) {
  unsigned char diff = 0;
  for (size_t i = 0; i < n; i++) diff |= (unsigned char)(a[i] ^ b[i]);
  return diff == 0;
}

static bool timestamp_parse(const char *s, int64_t *out) {
  if (s == NULL || *s == '\0' || strlen(s) > 12) return false;
  int64_t v = 0;
  for (const char *p = s; *p; p++) {
    if (*p < '0' || *p > '9') return false;
    v = v * 10 + (*p - '0');
  }
  *out = v;
  return true;
}

int svc_auth_verify(const http_msg_t *msg, const uint8_t *key, size_t key_bytes,
                    uint32_t max_skew_s, int64_t now_s, svc_identity_t *out) {
  memset(out, 0, sizeof *out);
  const char *subject = http_msg_header(msg, "x-auth-subject");
  const char *roles = http_msg_header(msg, "x-auth-roles");
  const char *ts = http_msg_header(msg, "x-auth-timestamp");
  const char *sig = http_msg_header(msg, "x-auth-signature");
  if (!subject && !roles && !ts && !sig) return SVC_E_AUTH_MISSING;
  if (!subject || !roles || !ts || !sig) return SVC_E_AUTH_BAD;
  if (!http_identity_subject_ok(subject) || strlen(sig) != 64) return SVC_E_AUTH_BAD;
  uint32_t bits = 0;
  if (svc_roles_parse(roles, &bits) < 0) return SVC_E_AUTH_BAD;
  int64_t t = 0;
  if (!timestamp_parse(ts, &t)) return SVC_E_AUTH_BAD;
  if (t > now_s + (int64_t)max_skew_s || t < now_s - (int64_t)max_skew_s) return SVC_E_AUTH_BAD;
  char want[65];
  http_identity_sign(key, key_bytes, subject, roles, msg->method_name, msg->path,
                     strlen(msg->path), ts, want);
  if (!equal_ct(want, sig, 64)) return SVC_E_AUTH_BAD;
  out->present = true;
  snprintf(out->subject, sizeof out->subject, "%s", subject);
  out->roles = bits;
  return 0;
}

int svc_auth_sign(char *out, size_t out_bytes, const uint8_t *key, size_t key_bytes,
                  const char *subject, const char *roles, const char *method,
                  const char *path, int64_t now_s) {
  uint32_t bits;
  if (!http_identity_subject_ok(subject) || svc_roles_parse(roles, &bits) < 0) return -EINVAL;
  char ts[24];
  snprintf(ts, sizeof ts, "%lld", (long long)now_s);
  char sig[65];
  http_identity_sign(key, key_bytes, subject, roles, method, path, strcspn(path, "?"), ts, sig);
  int n = snprintf(out, out_bytes,
                   "X-Auth-Subject: %s\r\nX-Auth-Roles: %s\r\nX-Auth-Timestamp: %s\r\n"
                   "X-Auth-Signature: %s\r\n",
                   subject, roles, ts, sig);
  if (n < 0 || (size_t)n >= out_bytes) return -ENOSPC;
  return n;
}
