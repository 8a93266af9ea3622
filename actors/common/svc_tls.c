/*
 * svc_tls.c - a service's inner TLS (wire/tls.h): with TLS_CA, TLS_CERT
 * and TLS_KEY set, its HTTP port accepts only clients that show a
 * certificate of the platform's CA (the gateway, other services, the
 * harness), and its own clients (peer services, the bus) connect with
 * TLS, show its certificate and check the peer's process name.
 *
 * The credentials are read once, before the loop threads start, and
 * shared by every filter. Filters are per loop thread (each is a pool of
 * engines): a server one per thread, a client one per peer client. The
 * client filters are kept on a list so that they outlive their clients,
 * whose connections may close during the drain, and are freed with the
 * credentials when the process ends.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "svc_internal.h"

#define CLIENT_FILTERS_MAX 64 /* threads (16) x peers and the bus (3), and commands */

static struct {
  wire_tls_creds_t *creds; /* NULL: plain TCP */
  uint32_t conns_max;      /* TLS connections per server thread */
  pthread_mutex_t mu;      /* the list below; loop threads set up at once */
  wire_tls_filter_t *clients[CLIENT_FILTERS_MAX];
  uint32_t clients_count;
} tls = {.mu = PTHREAD_MUTEX_INITIALIZER};

int svc_tls_config(void) {
  const char *ca = rt_env_str("TLS_CA", NULL);
  const char *cert = rt_env_str("TLS_CERT", NULL);
  const char *key = rt_env_str("TLS_KEY", NULL);
  int rc = rt_env_u32("TLS_CONNS_MAX", 1024, 1, 1u << 20, &tls.conns_max);
  if (rc < 0) return rc;
  if (ca == NULL || ca[0] == '\0') {
    if (cert == NULL && key == NULL) return 0;
    RT_ERROR("TLS_CERT and TLS_KEY need TLS_CA (the platform CA)", RT_LF_BOOL("ca", false));
    return RT_E_CONFIG;
  }
  if (cert == NULL || key == NULL) {
    RT_ERROR("TLS_CA needs TLS_CERT and TLS_KEY: this process's certificate and key",
             RT_LF_BOOL("cert", cert != NULL), RT_LF_BOOL("key", key != NULL));
    return RT_E_CONFIG;
  }
  rc = wire_tls_creds_load(&tls.creds, ca, cert, key);
  if (rc < 0) return RT_E_CONFIG; /* logged with the file */
  RT_INFO("inner TLS on: peers must show a certificate of the platform CA",
          RT_LF_STR("ca", ca), RT_LF_STR("cert", cert));
  return 0;
}

bool svc_tls_on(void) { return tls.creds != NULL; }

int svc_tls_server(svc_th_t *th, uint32_t conns_max, const http_filter_t **out) {
  *out = NULL;
  if (tls.creds == NULL) return 0;
  uint32_t n = conns_max < tls.conns_max ? conns_max : tls.conns_max;
  int rc = wire_tls_server_create(&th->tls_server, tls.creds, n > 0 ? n : 1);
  if (rc == 0) *out = wire_tls_filter_http(th->tls_server);
  return rc;
}

int svc_tls_client(const char *peer, uint32_t conns_max, const http_filter_t **out) {
  *out = NULL;
  if (tls.creds == NULL) return 0;
  wire_tls_filter_t *f = NULL;
  int rc = wire_tls_client_create(&f, tls.creds, peer, conns_max > 0 ? conns_max : 1);
  if (rc < 0) return rc;
  pthread_mutex_lock(&tls.mu);
  bool room = tls.clients_count < CLIENT_FILTERS_MAX;
  if (room) tls.clients[tls.clients_count++] = f;
  pthread_mutex_unlock(&tls.mu);
  if (!room) {
    wire_tls_filter_destroy(f);
    RT_ERROR("too many TLS client filters", RT_LF_INT("max", CLIENT_FILTERS_MAX));
    return RT_E_LIMIT;
  }
  *out = wire_tls_filter_http(f);
  return 0;
}

void svc_tls_free(void) {
  for (uint32_t i = 0; i < tls.clients_count; i++) wire_tls_filter_destroy(tls.clients[i]);
  tls.clients_count = 0;
  wire_tls_creds_free(tls.creds);
  tls.creds = NULL;
}
