/*
 * routes.c - the route table of the public API and the role check.
 *
 * The table itself is routes.def, generated from the design's API table,
 * so that what the gateway enforces and what the design promises cannot
 * drift apart silently. Deny by default: a route names the roles it
 * allows, nothing else passes; a path that is not in the table is 404.
 */
#include <stdio.h>
#include <string.h>

#include "gw.h"

#define GW_ROUTE(m, p, svc, roles, anon) {(m), (p), (svc), (roles), (anon)},
const gw_route_t gw_routes[] = {
#include "routes.def"
};
#undef GW_ROUTE
const size_t gw_routes_count = sizeof gw_routes / sizeof gw_routes[0];

static const char *const service_names[GW_SVC_COUNT] = {"gateway", "profile", "account",
                                                        "payment", "event"};

const char *gw_service_name(gw_service_t s) {
  return (unsigned)s < GW_SVC_COUNT ? service_names[s] : NULL;
}

int gw_service_parse(const char *name) {
  for (int i = 0; i < GW_SVC_COUNT; i++)
    if (strcmp(service_names[i], name) == 0) return i;
  return -1;
}

gw_authz_t gw_authorize(const gw_route_t *route, const gw_identity_t *id) {
  if (id == NULL) return route->anonymous ? GW_AUTHZ_ALLOW : GW_AUTHZ_UNAUTHENTICATED;
  return (id->roles & route->roles) != 0 ? GW_AUTHZ_ALLOW : GW_AUTHZ_FORBIDDEN;
}

/* Copies a token of `s` (up to a separator) into storage. */
static const char *take(const char **s, const char *seps, char **storage, size_t *left) {
  while (**s == ' ') (*s)++;
  size_t n = strcspn(*s, seps);
  if (n == 0 || n + 1 > *left) return NULL;
  char *out = *storage;
  memcpy(out, *s, n);
  out[n] = '\0';
  *storage += n + 1;
  *left -= n + 1;
  *s += n;
  return out;
}

/* Roles "customer+operator" or "anonymous"; false for an unknown name. */
static bool parse_roles(const char *text, gw_route_t *r) {
  const char *p = text;
  for (int n = 0; n < GW_ROLES_COUNT + 1 && *p; n++) {
    size_t len = strcspn(p, "+");
    uint32_t bit = gw_role_parse(p, len);
    if (len == 9 && memcmp(p, "anonymous", 9) == 0) {
      r->anonymous = true;
    } else if (bit == 0) {
      return false;
    }
    r->roles |= bit;
    p += len;
    if (*p == '+') p++;
  }
  return *p == '\0';
}

static int parse_one(const char **s, gw_route_t *r, char **storage, size_t *left) {
  *r = (gw_route_t){0};
  r->method = take(s, " ;", storage, left);
  r->pattern = take(s, " ;", storage, left);
  const char *svc = take(s, " ;", storage, left);
  const char *roles = take(s, " ;", storage, left);
  if (r->method == NULL || r->pattern == NULL || svc == NULL || roles == NULL) return GW_E_CONFIG;
  int sv = gw_service_parse(svc);
  if (sv <= GW_SVC_LOCAL || r->pattern[0] != '/' || !parse_roles(roles, r)) return GW_E_CONFIG;
  r->service = (gw_service_t)sv;
  while (**s == ' ') (*s)++;
  if (**s != ';' && **s != '\0') return GW_E_CONFIG;
  if (**s == ';') (*s)++;
  return 0;
}

int gw_routes_parse_extra(const char *spec, gw_route_t *out, size_t out_max, char *storage,
                          size_t storage_bytes) {
  size_t n = 0;
  const char *s = spec != NULL ? spec : "";
  while (*s == ' ' || *s == ';') s++;
  while (*s != '\0') { /* each turn consumes a route or fails */
    if (n == out_max) return GW_E_CONFIG;
    int rc = parse_one(&s, &out[n], &storage, &storage_bytes);
    if (rc < 0) return rc;
    n++;
    while (*s == ' ' || *s == ';') s++;
  }
  return (int)n;
}
