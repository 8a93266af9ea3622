/*
 * http_identity.c - the signed identity headers between the gateway and the
 * services.
 *
 * The gateway authenticates a client (JWT) and passes who it is to a
 * service in X-Auth-Subject, X-Auth-Roles and X-Auth-Timestamp, signed in
 * X-Auth-Signature with a key only the two share. Both sides must compute
 * exactly the same thing, so the computation lives here once.
 */
#include <string.h>

#include <bearssl.h>

#include "http.h"

bool http_identity_subject_ok(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > HTTP_IDENTITY_SUBJECT_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '@' || c == '-';
    if (!ok) return false;
  }
  return true;
}

void http_identity_sign(const uint8_t *key, size_t key_bytes, const char *subject,
                        const char *roles, const char *method, const char *path,
                        size_t path_len, const char *ts, char out[65]) {
  br_hmac_key_context kc;
  br_hmac_context hc;
  br_hmac_key_init(&kc, &br_sha256_vtable, key, key_bytes);
  br_hmac_init(&hc, &kc, 0);
  const char *parts[] = {subject, roles, method};
  for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
    br_hmac_update(&hc, parts[i], strlen(parts[i]));
    br_hmac_update(&hc, "|", 1);
  }
  br_hmac_update(&hc, path, path_len);
  br_hmac_update(&hc, "|", 1);
  br_hmac_update(&hc, ts, strlen(ts));
  uint8_t mac[32];
  br_hmac_out(&hc, mac);
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 32; i++) {
    out[2 * i] = hex[mac[i] >> 4];
    out[2 * i + 1] = hex[mac[i] & 15];
  }
  out[64] = '\0';
}
