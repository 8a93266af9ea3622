/*
 * upstream.c - the addresses of each service and their health.
 *
 * Health is shared by all threads (plain atomics): one thread seeing an
 * address fail spares the others the wait. After `threshold` consecutive
 * failures an address is skipped for a back-off; when that passes, requests
 * reach it again, and the first success clears it. When every address is
 * down, the least recently failed one is still tried if its back-off is
 * over; otherwise the caller answers 503 at once.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"

/* "http://host:port" with a numeric host or localhost; no path. */
static int parse_url(gw_upstream_addr_t *a, const char *url, size_t len) {
  static const char scheme[] = "http://";
  if (len <= sizeof scheme - 1 || strncmp(url, scheme, sizeof scheme - 1) != 0)
    return GW_E_CONFIG;
  const char *host = url + sizeof scheme - 1;
  const char *end = url + len;
  if (end[-1] == '/') end--;
  const char *colon = NULL;
  for (const char *p = host; p < end; p++)
    if (*p == ':') colon = p;
  if (colon == NULL || colon == host || (size_t)(colon - host) >= sizeof a->host)
    return GW_E_CONFIG;
  char port[8];
  size_t plen = (size_t)(end - colon - 1);
  if (plen == 0 || plen >= sizeof port) return GW_E_CONFIG;
  memcpy(port, colon + 1, plen);
  port[plen] = '\0';
  char *stop = NULL;
  unsigned long p = strtoul(port, &stop, 10);
  if (*stop != '\0' || p == 0 || p > 65535) return GW_E_CONFIG;
  /* IPv6 literals come bracketed: [::1]:7001. */
  if (host[0] == '[' && colon[-1] == ']') {
    snprintf(a->host, sizeof a->host, "%.*s", (int)(colon - host - 2), host + 1);
  } else {
    snprintf(a->host, sizeof a->host, "%.*s", (int)(colon - host), host);
  }
  a->port = (uint16_t)p;
  return 0;
}

int gw_service_addrs_parse(gw_service_addrs_t *s, const char *urls) {
  memset(s, 0, sizeof *s);
  const char *p = urls;
  while (*p != '\0') { /* each turn consumes one URL or fails */
    size_t n = strcspn(p, ",");
    while (n > 0 && *p == ' ') {
      p++;
      n--;
    }
    size_t m = n;
    while (m > 0 && p[m - 1] == ' ') m--;
    if (s->count == GW_UPSTREAM_ADDRS_MAX || m == 0) return GW_E_CONFIG;
    if (parse_url(&s->addrs[s->count], p, m) < 0) return GW_E_CONFIG;
    s->count++;
    p += n;
    if (*p == ',') p++;
  }
  return s->count > 0 ? 0 : GW_E_CONFIG;
}

bool gw_upstream_healthy(const gw_upstream_addr_t *a, uint64_t now_ns) {
  uint64_t until = atomic_load_explicit(&a->down_until_ns, memory_order_relaxed);
  return until == 0 || now_ns >= until;
}

int gw_service_pick(gw_service_addrs_t *s, uint32_t *cursor, int avoid, uint64_t now_ns) {
  for (uint32_t k = 0; k < s->count; k++) {
    uint32_t i = (*cursor + k) % s->count;
    if ((int)i == avoid || !gw_upstream_healthy(&s->addrs[i], now_ns)) continue;
    *cursor = i + 1;
    return (int)i;
  }
  return -1;
}

void gw_upstream_report(gw_upstream_addr_t *a, bool ok, uint32_t threshold, uint32_t backoff_ms,
                        uint64_t now_ns) {
  atomic_fetch_add_explicit(&a->requests, 1, memory_order_relaxed);
  if (ok) {
    atomic_store_explicit(&a->last_ok_ns, now_ns, memory_order_relaxed);
    atomic_store_explicit(&a->fails, 0, memory_order_relaxed);
    atomic_store_explicit(&a->down_until_ns, 0, memory_order_relaxed);
    return;
  }
  atomic_fetch_add_explicit(&a->errors, 1, memory_order_relaxed);
  uint32_t fails = atomic_fetch_add_explicit(&a->fails, 1, memory_order_relaxed) + 1;
  if (fails >= threshold)
    atomic_store_explicit(&a->down_until_ns, now_ns + (uint64_t)backoff_ms * 1000000u,
                          memory_order_relaxed);
}
