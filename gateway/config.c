/*
 * config.c - the gateway's configuration, all from the environment, with
 * defaults for a developer's machine (loopback, files under .run/certs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"

static const char *const service_env[GW_SVC_COUNT] = {
    NULL, "PROFILE_URL", "ACCOUNT_URL", "PAYMENT_URL", "EVENT_URL"};
static const char *const service_default[GW_SVC_COUNT] = {
    NULL, "http://127.0.0.1:7001", "http://127.0.0.1:7002", "http://127.0.0.1:7003",
    "http://127.0.0.1:7004"};

void gw_config_usage(FILE *f) {
  fprintf(f,
      "usage: gateway [--help] [--routes]\n"
      "\n"
      "The platform's HTTPS entry point: TLS 1.2 (BearSSL), JWT authentication,\n"
      "role checks per route, rate limits, and proxying to the services.\n"
      "  --routes   print the route table as JSON lines and exit\n"
      "\n"
      "Environment (default):\n"
      "  GW_HOST, GW_PORT               HTTPS listener          (127.0.0.1, 8443)\n"
      "  GW_ADMIN_HOST, GW_ADMIN_PORT   /healthz /readyz /metrics, plain HTTP\n"
      "                                                         (127.0.0.1, 8444)\n"
      "  GW_THREADS                     loop threads            (number of CPUs)\n"
      "  GW_TLS_CERT, GW_TLS_KEY        PEM chain and key, ECDSA P-256 or RSA\n"
      "                                 (.run/certs/tls-ecdsa.crt, .key)\n"
      "  GW_TLS_CERT_RSA, GW_TLS_KEY_RSA\n"
      "                                 a second chain and key, RSA (>= 2048 bits),\n"
      "                                 for clients without ECDSA; the first pair is\n"
      "                                 then ECDSA, and clients that can verify it\n"
      "                                 get it (unset: one pair only)\n"
      "  GW_TLS_SESSION_CACHE           resumable sessions kept, 0: none (16384)\n"
      "  GW_TLS_SESSION_LIFETIME        session resumption window (60m)\n"
      "  GW_TLS_HANDSHAKE_TIMEOUT       handshake, and any one record (10s)\n"
      "  GW_TLS_EC                      auto: libcrypto's curve arithmetic when built\n"
      "                                 in (fast handshakes); bearssl: BearSSL's (auto)\n"
      "  GW_HSTS                        Strict-Transport-Security value\n"
      "                                 (max-age=31536000; includeSubDomains)\n"
      "  GW_JWT_KEYS_DIR                <kid>.pub.pem [+ <kid>.pem] (.run/certs/jwt)\n"
      "  GW_JWT_KEYS                    kid=pub.pem[:key.pem],... (instead of the dir)\n"
      "  GW_JWT_SIGN_KID                signing kid (greatest kid with a private key)\n"
      "  GW_JWT_ISS, GW_JWT_AUD         issuer, audience        (paycore, paycore-api)\n"
      "  GW_JWT_TTL, GW_JWT_LEEWAY      token lifetime, clock skew (15m, 30s)\n"
      "  GW_TOKEN_CACHE                 verified tokens kept per thread (16384)\n"
      "  GW_RATE_ADDR_RPS, _BURST       requests per client address (200, 400)\n"
      "  GW_RATE_SUBJECT_RPS, _BURST    requests per token subject  (100, 200)\n"
      "  GW_RATE_LOGIN_RPS, _BURST      POST /v1/auth/token per address (1, 10)\n"
      "                                 (0 = no limit; 429 with Retry-After)\n"
      "  GW_CONNS_PER_ADDR              open connections per client address (256)\n"
      "  PROFILE_URL ACCOUNT_URL        service addresses, comma-separated lists\n"
      "  PAYMENT_URL EVENT_URL          (http://127.0.0.1:7001 .. :7004)\n"
      "  GW_UPSTREAM_CONNS              keep-alive connections per thread and\n"
      "                                 upstream address (32)\n"
      "  GW_UPSTREAM_TIMEOUT            whole upstream request; then 504 (5s)\n"
      "  GW_UPSTREAM_CONNECT_TIMEOUT    (1s)\n"
      "  GW_UPSTREAM_FAILS, _BACKOFF    failures that mark an address down, and\n"
      "                                 for how long                (3, 2s)\n");
  fprintf(f,
      "  TLS_CA                         the platform CA (PEM): with it the services\n"
      "                                 are reached over mutual TLS, each checked\n"
      "                                 to be the service asked for (unset: plain)\n"
      "  TLS_CERT, TLS_KEY              the gateway's certificate and key for it,\n"
      "                                 signed by TLS_CA (required with TLS_CA)\n"
      "  GW_HEALTH_INTERVAL             upstream /healthz probes (1s)\n"
      "  GW_PROFILE_VERIFY_PATH         profile's credential check\n"
      "                                 (/internal/credentials/verify)\n"
      "  GW_EXTRA_ROUTES                \"GET /path service role+role;...\" added to\n"
      "                                 the table (benchmarks, staged roll-outs)\n"
      "  AUTH_HMAC_KEY                  key of the identity headers (required,\n"
      "                                 32..256 bytes, shared with the services)\n"
      "  HTTP_HEADER_TIMEOUT_MS  HTTP_IDLE_TIMEOUT_MS  HTTP_HEADER_BYTES_MAX\n"
      "  HTTP_HEADERS_COUNT_MAX  HTTP_URL_BYTES_MAX    HTTP_BODY_BYTES_MAX\n"
      "  HTTP_CONNS_MAX (per thread)   as for every server of the platform\n"
      "  GW_ACCESS_LOG                  one JSON line per public request (on)\n"
      "  LOG_LEVEL                      debug|info|warn|error (info)\n"
      "  LOG_HASH_KEY                   key of hashed log fields (random per run)\n"
      "\n"
      "SIGHUP: read the TLS pairs (both at once) and the JWT keys again; new\n"
      "  handshakes and tokens use them, open connections keep theirs.\n"
      "SIGTERM or SIGINT: stop accepting, finish requests in flight, exit 0.\n");
}

static int load_rate(const char *rps_name, const char *burst_name, uint32_t rps,
                     uint32_t burst, gw_rate_t *out) {
  int rc = rt_env_u32(rps_name, rps, 0, 10000000, &out->per_s);
  rc |= rt_env_u32(burst_name, burst, 1, 100000000, &out->burst);
  return rc;
}

/* TLS_CA, TLS_CERT and TLS_KEY: all three, or none. */
static int load_inner_tls(gw_config_t *c) {
  c->inner_ca = rt_env_str("TLS_CA", NULL);
  c->inner_cert = rt_env_str("TLS_CERT", NULL);
  c->inner_key = rt_env_str("TLS_KEY", NULL);
  if (c->inner_ca != NULL && c->inner_ca[0] == '\0') c->inner_ca = NULL;
  bool any = c->inner_ca != NULL || c->inner_cert != NULL || c->inner_key != NULL;
  bool all = c->inner_ca != NULL && c->inner_cert != NULL && c->inner_key != NULL;
  if (any && !all) {
    RT_ERROR("TLS_CA, TLS_CERT and TLS_KEY go together", RT_LF_BOOL("ca", c->inner_ca != NULL),
             RT_LF_BOOL("cert", c->inner_cert != NULL), RT_LF_BOOL("key", c->inner_key != NULL));
    return RT_E_CONFIG;
  }
  return 0;
}

static int load_services(gw_config_t *c) {
  for (int s = GW_SVC_PROFILE; s < GW_SVC_COUNT; s++) {
    const char *v = rt_env_str(service_env[s], service_default[s]);
    if (gw_service_addrs_parse(&c->services[s], v) < 0) {
      RT_ERROR("bad upstream list", RT_LF_STR("variable", service_env[s]), RT_LF_STR("value", v));
      return RT_E_CONFIG;
    }
  }
  return 0;
}

static int load_hmac(gw_config_t *c) {
  const char *k = rt_env_str("AUTH_HMAC_KEY", NULL);
  if (k == NULL || strlen(k) < 32 || strlen(k) > sizeof c->hmac.bytes) {
    RT_ERROR("AUTH_HMAC_KEY must be set, 32 to 256 bytes", RT_LF_BOOL("set", k != NULL));
    return RT_E_CONFIG;
  }
  c->hmac.len = strlen(k);
  memcpy(c->hmac.bytes, k, c->hmac.len);
  return 0;
}

/* The second pair: both variables or neither (empty counts as unset). */
static int load_tls_rsa(gw_config_t *c) {
  const char *cert = rt_env_str("GW_TLS_CERT_RSA", NULL);
  const char *key = rt_env_str("GW_TLS_KEY_RSA", NULL);
  if (cert != NULL && cert[0] == '\0') cert = NULL;
  if (key != NULL && key[0] == '\0') key = NULL;
  if ((cert == NULL) != (key == NULL)) {
    RT_ERROR("GW_TLS_CERT_RSA and GW_TLS_KEY_RSA go together",
             RT_LF_BOOL("cert_set", cert != NULL), RT_LF_BOOL("key_set", key != NULL));
    return RT_E_CONFIG;
  }
  c->tls.rsa_cert_path = cert;
  c->tls.rsa_key_path = key;
  return 0;
}

static int load_tls(gw_config_t *c) {
  uint32_t lifetime_ms = 0;
  c->tls.cert_path = rt_env_str("GW_TLS_CERT", ".run/certs/tls-ecdsa.crt");
  c->tls.key_path = rt_env_str("GW_TLS_KEY", ".run/certs/tls-ecdsa.key");
  if (load_tls_rsa(c) < 0) return RT_E_CONFIG;
  c->tls.hsts = rt_env_str("GW_HSTS", "max-age=31536000; includeSubDomains");
  const char *ec = rt_env_str("GW_TLS_EC", "auto");
  if (strcmp(ec, "auto") != 0 && strcmp(ec, "bearssl") != 0) {
    RT_ERROR("GW_TLS_EC must be auto or bearssl", RT_LF_STR("value", ec));
    return RT_E_CONFIG;
  }
  c->tls.ec_bearssl = strcmp(ec, "bearssl") == 0;
  int rc = rt_env_u32("GW_TLS_SESSION_CACHE", 16384, 0, 10000000, &c->tls.session_cache_entries);
  rc |= rt_env_ms("GW_TLS_SESSION_LIFETIME", 3600000, &lifetime_ms);
  rc |= rt_env_ms("GW_TLS_HANDSHAKE_TIMEOUT", 10000, &c->tls.handshake_timeout_ms);
  c->tls.session_lifetime_s = lifetime_ms / 1000 > 0 ? lifetime_ms / 1000 : 1;
  if (c->tls.handshake_timeout_ms == 0) c->tls.handshake_timeout_ms = 1;
  return rc;
}

static int load_jwt(gw_config_t *c) {
  uint32_t ttl_ms = 0, leeway_ms = 0;
  c->jwt_keys_dir = rt_env_str("GW_JWT_KEYS_DIR", ".run/certs/jwt");
  c->jwt_keys_list = rt_env_str("GW_JWT_KEYS", NULL);
  c->jwt_sign_kid = rt_env_str("GW_JWT_SIGN_KID", NULL);
  c->jwt.iss = rt_env_str("GW_JWT_ISS", "paycore");
  c->jwt.aud = rt_env_str("GW_JWT_AUD", "paycore-api");
  int rc = rt_env_ms("GW_JWT_TTL", 15 * 60000, &ttl_ms);
  rc |= rt_env_ms("GW_JWT_LEEWAY", 30000, &leeway_ms);
  rc |= rt_env_u32("GW_TOKEN_CACHE", 16384, 16, 1u << 24, &c->token_cache_entries);
  c->jwt.ttl_s = ttl_ms / 1000 > 0 ? ttl_ms / 1000 : 1;
  c->jwt.leeway_s = leeway_ms / 1000;
  return rc;
}

static int load_upstreams(gw_config_t *c) {
  int rc = load_services(c);
  rc |= rt_env_u32("GW_UPSTREAM_CONNS", 32, 1, 4096, &c->upstream_conns);
  rc |= rt_env_ms("GW_UPSTREAM_TIMEOUT", 5000, &c->upstream_timeout_ms);
  rc |= rt_env_ms("GW_UPSTREAM_CONNECT_TIMEOUT", 1000, &c->upstream_connect_timeout_ms);
  rc |= rt_env_u32("GW_UPSTREAM_FAILS", 3, 1, 1000, &c->upstream_fails);
  rc |= rt_env_ms("GW_UPSTREAM_BACKOFF", 2000, &c->upstream_backoff_ms);
  rc |= rt_env_ms("GW_HEALTH_INTERVAL", 1000, &c->health_interval_ms);
  c->verify_path = rt_env_str("GW_PROFILE_VERIFY_PATH", "/internal/credentials/verify");
  if (c->upstream_timeout_ms == 0) c->upstream_timeout_ms = 1;
  if (c->upstream_connect_timeout_ms == 0) c->upstream_connect_timeout_ms = 1;
  if (c->health_interval_ms == 0) c->health_interval_ms = 1000;
  return rc;
}

static int load_limits(gw_config_t *c) {
  int rc = load_rate("GW_RATE_ADDR_RPS", "GW_RATE_ADDR_BURST", 200, 400, &c->rate_addr);
  rc |= load_rate("GW_RATE_SUBJECT_RPS", "GW_RATE_SUBJECT_BURST", 100, 200, &c->rate_subject);
  rc |= load_rate("GW_RATE_LOGIN_RPS", "GW_RATE_LOGIN_BURST", 1, 10, &c->rate_login);
  rc |= rt_env_u32("GW_RATE_TABLE", 65536, 64, 1u << 24, &c->rate_slots);
  rc |= rt_env_u32("GW_CONNS_PER_ADDR", 256, 0, 1000000, &c->conns_per_addr);
  return rc;
}

static int load_extra_routes(gw_config_t *c) {
  const char *spec = rt_env_str("GW_EXTRA_ROUTES", NULL);
  if (spec == NULL) return 0;
  int n = gw_routes_parse_extra(spec, c->extra, GW_EXTRA_ROUTES_MAX, c->extra_storage,
                                sizeof c->extra_storage);
  if (n < 0) {
    RT_ERROR("bad GW_EXTRA_ROUTES", RT_LF_STR("value", spec));
    return RT_E_CONFIG;
  }
  c->extra_count = (size_t)n;
  return 0;
}

int gw_config_load(gw_config_t *c) {
  long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  uint32_t nproc = cpus > 0 && cpus < GW_THREADS_MAX ? (uint32_t)cpus : 1;
  c->host = rt_env_str("GW_HOST", "127.0.0.1");
  c->admin_host = rt_env_str("GW_ADMIN_HOST", "127.0.0.1");
  int rc = rt_env_u32("GW_PORT", 8443, 0, 65535, &c->port);
  rc |= rt_env_u32("GW_ADMIN_PORT", 8444, 0, 65535, &c->admin_port);
  rc |= rt_env_u32("GW_THREADS", nproc, 1, GW_THREADS_MAX, &c->threads);
  rc |= rt_env_bool("GW_ACCESS_LOG", true, &c->access_log);
  rc |= http_server_config_from_env(&c->http);
  rc |= load_tls(c);
  rc |= load_jwt(c);
  rc |= load_limits(c);
  rc |= load_upstreams(c);
  rc |= load_inner_tls(c);
  rc |= load_extra_routes(c);
  rc |= load_hmac(c);
  return rc != 0 ? RT_E_CONFIG : 0;
}
