/*
 * forward.c - what reaches a service: the client's headers minus those the
 * gateway owns, a request id, and the caller's identity signed with the
 * key the services share (the format is the services' own, defined in
 * actors/common/svc.h).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <bearssl.h>

#include "gw.h"
#include "internal.h"

/* Request headers never passed on as the client sent them. */
static const char *const stripped[] = {
    /* hop-by-hop (RFC 9110 7.6.1) and framing: ours, not the client's */
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "proxy-authorization", "proxy-authenticate", "content-length", "host",
    /* replaced by the identity headers and our request id */
    "authorization", "x-request-id",
    /* proxies' headers a client could use to pretend to be elsewhere */
    "forwarded", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip",
};

/* Response headers of a service that the gateway writes itself or that
 * only concern the hop to the gateway. */
static const char *const dropped[] = {
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding",
    "upgrade", "content-length", "content-type", "date", "server",
    "strict-transport-security",
};

static bool in_list(const char *const *list, size_t n, const char *name, size_t len) {
  for (size_t i = 0; i < n; i++)
    if (strlen(list[i]) == len && strncasecmp(list[i], name, len) == 0) return true;
  return false;
}

bool gw_header_stripped(const char *name, size_t len) {
  /* Every X-Auth-* name, not just the four in use today: a header the
   * services may trust tomorrow must not be forgeable today. */
  if (len >= 7 && strncasecmp(name, "x-auth-", 7) == 0) return true;
  return in_list(stripped, sizeof stripped / sizeof stripped[0], name, len);
}

bool gw_response_header_dropped(const char *name, size_t len) {
  return in_list(dropped, sizeof dropped / sizeof dropped[0], name, len);
}

static bool roles_ok(const char *s) {
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || *s == ',')) return false;
  return true;
}

int gw_identity_headers(http_buf_t *out, const char *subject, const char *roles,
                        const char *method, const char *target, const gw_hmac_key_t *key,
                        int64_t now_s) {
  if (!gw__subject_ok(subject) || roles[0] == '\0' || !roles_ok(roles)) return -EINVAL;
  char ts[24];
  snprintf(ts, sizeof ts, "%lld", (long long)now_s);
  char hex[65];
  http_identity_sign(key->bytes, key->len, subject, roles, method, target,
                     strcspn(target, "?"), ts, hex);
  return http_buf_appendf(out,
                          "X-Auth-Subject: %s\r\nX-Auth-Roles: %s\r\nX-Auth-Timestamp: %s\r\n"
                          "X-Auth-Signature: %s\r\n",
                          subject, roles, ts, hex);
}

int gw_forward_headers(http_buf_t *out, const http_msg_t *req, const char *method,
                       const char *target, const char *request_id, const gw_identity_t *id,
                       const gw_hmac_key_t *key, int64_t now_s) {
  int rc = 0;
  for (uint32_t i = 0; i < req->headers_count && rc == 0; i++) {
    const http_header_t *h = &req->headers[i];
    if (gw_header_stripped(h->name, h->name_len)) continue;
    rc = http_buf_appendf(out, "%s: %s\r\n", h->name, h->value);
  }
  if (rc == 0) rc = http_buf_appendf(out, "X-Request-Id: %s\r\n", request_id);
  if (rc == 0 && id != NULL) {
    char roles[64];
    gw_roles_format(id->roles, roles, sizeof roles);
    rc = gw_identity_headers(out, id->sub, roles, method, target, key, now_s);
  }
  return rc;
}
