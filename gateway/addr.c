/*
 * addr.c - client addresses as 16-byte keys, IPv4 mapped into IPv6, so the
 * per-address tables need one key type for both families.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "gw.h"

int gw_addr_from_sockaddr(gw_addr_t *out, const struct sockaddr *sa) {
  memset(out, 0, sizeof *out);
  if (sa->sa_family == AF_INET) {
    const struct sockaddr_in *in4 = (const struct sockaddr_in *)sa;
    out->bytes[10] = 0xff;
    out->bytes[11] = 0xff;
    memcpy(out->bytes + 12, &in4->sin_addr, 4);
    return 0;
  }
  if (sa->sa_family == AF_INET6) {
    const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
    memcpy(out->bytes, &in6->sin6_addr, 16);
    return 0;
  }
  return -EAFNOSUPPORT;
}

int gw_addr_of_peer(gw_addr_t *out, int fd) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof ss;
  if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0) return -errno;
  return gw_addr_from_sockaddr(out, (const struct sockaddr *)&ss);
}

static bool addr_is_v4_mapped(const gw_addr_t *a) {
  static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return memcmp(a->bytes, prefix, sizeof prefix) == 0;
}

void gw_addr_format(const gw_addr_t *a, char *out, size_t out_bytes) {
  char text[INET6_ADDRSTRLEN];
  const char *s = addr_is_v4_mapped(a) ? inet_ntop(AF_INET, a->bytes + 12, text, sizeof text)
                                       : inet_ntop(AF_INET6, a->bytes, text, sizeof text);
  snprintf(out, out_bytes, "%s", s != NULL ? s : "?");
}
