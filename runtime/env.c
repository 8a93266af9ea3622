/*
 * env.c - configuration from environment variables.
 *
 * Read once at start-up, before threads (getenv is not safe against a
 * concurrent setenv). A variable that is unset or empty takes its fallback;
 * one that is set but malformed is an error, logged with the variable's name
 * and what would have been accepted, so a typo never silently becomes a
 * default. On error *out is left untouched.
 */
#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "rt.h"

static const char *env_get(const char *name) {
  assert(name != NULL);
  const char *v = getenv(name);
  return v != NULL && v[0] != '\0' ? v : NULL;
}

const char *rt_env_str(const char *name, const char *fallback) {
  const char *v = env_get(name);
  return v != NULL ? v : fallback;
}

/* Parses the decimal digits s[0..n) into *out. Rejects an empty string,
 * anything but digits (signs, spaces, "0x") and values above UINT32_MAX;
 * the check after every digit keeps the sum within 64 bits whatever the
 * length. */
static bool parse_u32(const char *s, size_t n, uint32_t *out) {
  if (n == 0) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < n; i++) {
    if (s[i] < '0' || s[i] > '9') return false;
    v = v * 10 + (uint64_t)(s[i] - '0');
    if (v > UINT32_MAX) return false;
  }
  *out = (uint32_t)v;
  return true;
}

static int env_invalid(const char *name, const char *value,
                       const char *expected, int64_t min, int64_t max) {
  RT_ERROR("invalid environment variable", RT_LF_STR("var", name),
           RT_LF_STR("value", value), RT_LF_STR("expected", expected),
           RT_LF_INT("min", min), RT_LF_INT("max", max));
  return RT_E_CONFIG;
}

int rt_env_u32(const char *name, uint32_t fallback, uint32_t min, uint32_t max,
               uint32_t *out) {
  assert(min <= max);
  const char *v = env_get(name);
  if (v == NULL) {
    *out = fallback;
    return 0;
  }
  uint32_t x;
  if (!parse_u32(v, strlen(v), &x) || x < min || x > max) {
    return env_invalid(name, v, "unsigned integer in [min, max]", min, max);
  }
  *out = x;
  return 0;
}

int rt_env_bool(const char *name, bool fallback, bool *out) {
  static const char *const yes[] = {"1", "true", "yes", "on"};
  static const char *const no[] = {"0", "false", "no", "off"};
  const char *v = env_get(name);
  if (v == NULL) {
    *out = fallback;
    return 0;
  }
  for (size_t i = 0; i < sizeof yes / sizeof yes[0]; i++) {
    if (strcasecmp(v, yes[i]) == 0) {
      *out = true;
      return 0;
    }
    if (strcasecmp(v, no[i]) == 0) {
      *out = false;
      return 0;
    }
  }
  return env_invalid(name, v, "1/0, true/false, yes/no or on/off", 0, 1);
}

int rt_env_ms(const char *name, uint32_t fallback_ms, uint32_t *out) {
  const char *v = env_get(name);
  if (v == NULL) {
    *out = fallback_ms;
    return 0;
  }
  size_t digits = strspn(v, "0123456789");
  const char *unit = v + digits;
  uint64_t scale;
  if (strcmp(unit, "") == 0 || strcmp(unit, "ms") == 0) {
    scale = 1;
  } else if (strcmp(unit, "s") == 0) {
    scale = 1000;
  } else if (strcmp(unit, "m") == 0) {
    scale = 60 * 1000;
  } else {
    scale = 0;
  }
  uint32_t x;
  if (scale == 0 || !parse_u32(v, digits, &x) ||
      (uint64_t)x * scale > UINT32_MAX) {
    return env_invalid(name, v, "milliseconds: N, Nms, Ns or Nm", 0,
                       UINT32_MAX);
  }
  *out = (uint32_t)((uint64_t)x * scale);
  return 0;
}

int rt_env_addr(const char *name, const char *fallback, char *host, size_t host_cap,
                uint16_t *port) {
  assert(host_cap > 0);
  const char *v = rt_env_str(name, fallback);
  const char *colon = v != NULL ? strrchr(v, ':') : NULL;
  uint32_t p = 0;
  if (colon == NULL || colon == v || (size_t)(colon - v) >= host_cap ||
      !parse_u32(colon + 1, strlen(colon + 1), &p) || p == 0 || p > 65535)
    return env_invalid(name, v != NULL ? v : "", "host:port", 1, 65535);
  memcpy(host, v, (size_t)(colon - v));
  host[colon - v] = '\0';
  *port = (uint16_t)p;
  return 0;
}
