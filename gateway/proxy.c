/*
 * proxy.c - a public request from admission to the service's answer.
 *
 *   per-address rate limit -> bearer token (cache, else full verification)
 *   -> the route's roles -> per-subject rate limit -> pick a healthy
 *   address of the service (round robin) -> forward over a pooled
 *   keep-alive connection, with the client's headers minus ours, a request
 *   id and the signed identity -> relay the answer.
 *
 * Upstream failures: a connection refused or reset gives 503 (after one
 * retry on another address for idempotent methods, since nothing can have
 * been applied twice); no complete answer within the deadline gives 504
 * (never retried: the service may still be working on it); an answer that
 * cannot be parsed gives 502.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "app.h"

typedef struct gw_req {
  gw_thread_t *th;
  http_exchange_t *ex;
  const gw_route_t *route;
  gw_identity_t id;
  bool has_id;
  uint8_t attempts;
  int addr;             /* upstream address index in use */
  uint64_t started_ns;
  gw_rate_state_t rate; /* the limits it was admitted under */
  char rid[40];
} gw_req_t;

size_t gw_proxy_ctx_bytes(void) { return sizeof(gw_req_t); }

#define CTR_ADD(th, field) atomic_fetch_add_explicit(&(th)->counters.field, 1, memory_order_relaxed)

static void forward(gw_req_t *r, int avoid);

/* ------------------------------------------------------------------------ */
/* Answers and the access log                                               */
/* ------------------------------------------------------------------------ */

void gw_access_log(const char *rid, const char *method, const gw_route_t *route, int status,
                   uint64_t started_ns, const gw_identity_t *id, const char *upstream) {
  if (!gw_thread_self()->app->cfg.access_log) return;
  uint64_t us = (rt_now_ns() - started_ns) / 1000u;
  const char *up = upstream != NULL ? upstream : "-";
  rt_log_set_request_id(rid);
  /* The subject is hashed: enough to follow one caller across lines
   * without the log saying who it is. */
  if (id != NULL) {
    RT_INFO("access", RT_LF_STR("method", method), RT_LF_STR("route", route->pattern),
            RT_LF_INT("status", status), RT_LF_INT("latency_us", us), RT_LF_HASH("sub", id->sub),
            RT_LF_STR("upstream", up));
  } else {
    RT_INFO("access", RT_LF_STR("method", method), RT_LF_STR("route", route->pattern),
            RT_LF_INT("status", status), RT_LF_INT("latency_us", us), RT_LF_STR("sub", "-"),
            RT_LF_STR("upstream", up));
  }
  rt_log_set_request_id(NULL);
}

void gw_reply_error(gw_thread_t *th, http_exchange_t *ex, const gw_route_t *route,
                    const gw_identity_t *id, int status, const char *code, const char *message,
                    const char *extra_headers) {
  const http_msg_t *req = http_request(ex);
  char method[16];
  snprintf(method, sizeof method, "%s", req->method_name);
  char rid[40];
  snprintf(rid, sizeof rid, "%s", http_request_id(ex));
  /* Codes and messages are our own constants: no escaping needed. */
  char body[256];
  int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                   message);
  char rate[128], extra[384];
  gw_rate_state_headers(&th->rate, rate, sizeof rate);
  snprintf(extra, sizeof extra, "X-Request-Id: %s\r\n%s%s", rid, rate,
           extra_headers != NULL ? extra_headers : "");
  http_respond(ex, status, "application/json", body, (size_t)n, extra);
  gw_access_log(rid, method, route, status, th->handler_ns, id, NULL);
}

/* Answers a request that went to a service. Latency in the log starts when
 * the gateway's handler first saw the request (the server's own start
 * time is private to it). */
static void reply_error_req(gw_req_t *r, int status, const char *code, const char *message) {
  gw_thread_t *th = r->th;
  char method[16];
  snprintf(method, sizeof method, "%s", http_request(r->ex)->method_name);
  char body[256];
  int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                   message);
  char rate[128], extra[192];
  gw_rate_state_headers(&r->rate, rate, sizeof rate);
  snprintf(extra, sizeof extra, "X-Request-Id: %s\r\n%s", r->rid, rate);
  http_respond(r->ex, status, "application/json", body, (size_t)n, extra);
  gw_access_log(r->rid, method, r->route, status, r->started_ns, r->has_id ? &r->id : NULL,
                gw_service_name(r->route->service));
  rt_pool_put(&th->reqs, r);
}

/* ------------------------------------------------------------------------ */
/* Admission                                                                */
/* ------------------------------------------------------------------------ */

static bool rate_ok(gw_thread_t *th, http_exchange_t *ex, const gw_route_t *route,
                    const gw_identity_t *id, gw_ratelimit_t *rl, const void *key, size_t len) {
  uint32_t retry_s = 0;
  gw_rate_state_t state;
  int rc = gw_ratelimit_take(rl, key, len, rt_loop_now_ns(th->loop), &retry_s, &state);
  gw_rate_state_merge(&th->rate, &state);
  if (rc == 0) return true;
  CTR_ADD(th, rate_limited);
  char extra[48];
  snprintf(extra, sizeof extra, "Retry-After: %u\r\n", retry_s);
  gw_reply_error(th, ex, route, id, 429, "rate_limited", "too many requests", extra);
  return false;
}

/* The token of "Authorization: Bearer <token>", or an error. */
static int bearer(const http_msg_t *req, const char **tok, size_t *len) {
  const char *h = http_msg_header(req, "authorization");
  if (h == NULL) return GW_E_TOKEN_MISSING;
  if (strncasecmp(h, "bearer ", 7) != 0) return GW_E_TOKEN_MALFORMED;
  h += 7;
  while (*h == ' ') h++;
  *tok = h;
  *len = strlen(h);
  return *len > 0 ? 0 : GW_E_TOKEN_MALFORMED;
}

/* Verifies through the thread's cache of verified tokens. */
static int verify(gw_thread_t *th, const char *tok, size_t len, gw_identity_t *id) {
  gw_app_t *app = th->app;
  int64_t now_s = (int64_t)time(NULL);
  /* New keys: what was verified under the old ones is verified again (a
   * token of a removed key must fail at once). */
  unsigned gen = atomic_load(&app->keys_gen);
  if (gen != th->keys_gen) {
    gw_token_cache_clear(th->tokens);
    th->keys_gen = gen;
  }
  uint8_t digest[32];
  gw_token_digest(tok, len, digest);
  if (gw_token_cache_get(th->tokens, digest, now_s, id)) {
    CTR_ADD(th, token_cache_hits);
    return 0;
  }
  CTR_ADD(th, token_cache_misses);
  int rc = gw_jwt_verify(atomic_load(&app->keys), &app->cfg.jwt, tok, len, now_s, id);
  /* Cached only if no reload came between: else the keys it passed may be gone. */
  if (rc == 0 && atomic_load(&app->keys_gen) == gen)
    gw_token_cache_put(th->tokens, digest, id, now_s);
  return rc;
}

static void reply_401(gw_thread_t *th, http_exchange_t *ex, const gw_route_t *route, int err) {
  CTR_ADD(th, auth_failed);
  /* RFC 6750: a bad token says invalid_token; a missing one says nothing
   * more than the scheme. The reason goes to the debug log only. */
  bool missing = err == GW_E_TOKEN_MISSING;
  RT_DEBUG("token refused", RT_LF_STR("reason", gw_strerror(err)));
  gw_reply_error(th, ex, route, NULL, 401, missing ? "unauthenticated" : "invalid_token",
                 missing ? "a bearer token is required" : "the token is not valid",
                 missing ? "WWW-Authenticate: Bearer\r\n"
                         : "WWW-Authenticate: Bearer error=\"invalid_token\"\r\n");
}

bool gw_admit(gw_thread_t *th, http_exchange_t *ex, const gw_route_t *route,
              gw_identity_t *id, bool *has_id) {
  gw_app_t *app = th->app;
  th->handler_ns = rt_now_ns();
  th->rate = (gw_rate_state_t){0};
  CTR_ADD(th, requests);
  gw_tls_conn_t *conn = gw_tls_filter_conn_of(th->filter, http_exchange_actor(ex));
  if (conn != NULL) {
    const gw_addr_t *peer = gw_tls_conn_peer(conn);
    if (!rate_ok(th, ex, route, NULL, app->rl_addr, peer->bytes, sizeof peer->bytes))
      return false;
  }
  /* Two credentials are one too many: which one would a proxy or a
   * service behind us pick? Refuse instead of guessing. */
  if (http_msg_header_count(http_request(ex), "authorization") > 1) {
    CTR_ADD(th, auth_failed);
    gw_reply_error(th, ex, route, NULL, 400, "ambiguous_credentials",
                   "more than one Authorization header", NULL);
    return false;
  }
  const char *tok = NULL;
  size_t len = 0;
  int rc = bearer(http_request(ex), &tok, &len);
  if (rc == 0) rc = verify(th, tok, len, id);
  if (rc < 0 && rc != GW_E_TOKEN_MISSING) {
    reply_401(th, ex, route, rc);
    return false;
  }
  *has_id = rc == 0;
  if (*has_id) CTR_ADD(th, auth_ok);
  gw_authz_t az = gw_authorize(route, *has_id ? id : NULL);
  if (az == GW_AUTHZ_UNAUTHENTICATED) {
    reply_401(th, ex, route, GW_E_TOKEN_MISSING);
    return false;
  }
  if (az == GW_AUTHZ_FORBIDDEN) {
    CTR_ADD(th, forbidden);
    gw_reply_error(th, ex, route, id, 403, "forbidden", "this role may not use this route", NULL);
    return false;
  }
  if (*has_id && !rate_ok(th, ex, route, id, app->rl_subject, id->sub, strlen(id->sub)))
    return false;
  return true;
}

/* ------------------------------------------------------------------------ */
/* Relaying the service's answer                                            */
/* ------------------------------------------------------------------------ */

static bool idempotent(const char *m) {
  return strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0 || strcmp(m, "PUT") == 0 ||
         strcmp(m, "DELETE") == 0 || strcmp(m, "OPTIONS") == 0;
}

static void relay(gw_req_t *r, const http_msg_t *resp) {
  gw_thread_t *th = r->th;
  if (resp->status < 200 || resp->status > 599) {
    CTR_ADD(th, upstream_502);
    reply_error_req(r, 502, "bad_gateway", "the service sent an invalid answer");
    return;
  }
  http_buf_t *h = &th->scratch;
  http_buf_reset(h);
  int rc = 0;
  for (uint32_t i = 0; i < resp->headers_count && rc == 0; i++) {
    const http_header_t *f = &resp->headers[i];
    if (gw_response_header_dropped(f->name, f->name_len) ||
        (f->name_len == 12 && strncasecmp(f->name, "x-request-id", 12) == 0))
      continue;
    rc = http_buf_appendf(h, "%s: %s\r\n", f->name, f->value);
  }
  if (rc == 0) rc = http_buf_appendf(h, "X-Request-Id: %s\r\n", r->rid);
  if (rc == 0 && r->rate.set) {
    char rate[128];
    gw_rate_state_headers(&r->rate, rate, sizeof rate);
    rc = http_buf_appendf(h, "%s", rate);
  }
  if (rc < 0) {
    CTR_ADD(th, upstream_502);
    reply_error_req(r, 502, "bad_gateway", "the service's headers are too large");
    return;
  }
  char method[16];
  snprintf(method, sizeof method, "%s", http_request(r->ex)->method_name);
  CTR_ADD(th, upstream_ok);
  http_respond(r->ex, resp->status, http_msg_header(resp, "content-type"), resp->body,
               resp->body_len, h->data);
  gw_access_log(r->rid, method, r->route, resp->status, r->started_ns,
                r->has_id ? &r->id : NULL, gw_service_name(r->route->service));
  rt_pool_put(&th->reqs, r);
}

/* Whether an outcome says something about the address's health: busy
 * (our own queue) and closed (shutting down) do not. */
static bool health_signal(int err) {
  return err == 0 || err == HTTP_E_UPSTREAM_DOWN || err == HTTP_E_UPSTREAM_TIMEOUT ||
         err == HTTP_E_UPSTREAM_PROTO;
}

static void on_upstream(void *ctx, int err, const http_msg_t *resp) {
  gw_req_t *r = ctx;
  gw_thread_t *th = r->th;
  gw_config_t *cfg = &th->app->cfg;
  gw_upstream_addr_t *a = &cfg->services[r->route->service].addrs[r->addr];
  if (health_signal(err))
    gw_upstream_report(a, err == 0, cfg->upstream_fails, cfg->upstream_backoff_ms,
                       rt_loop_now_ns(th->loop));
  if (err == 0) {
    relay(r, resp);
    return;
  }
  const char *method = http_request(r->ex)->method_name;
  if (err == HTTP_E_UPSTREAM_DOWN && r->attempts < 2 && idempotent(method) &&
      cfg->services[r->route->service].count > 1 && !http_exchange_orphaned(r->ex)) {
    CTR_ADD(th, upstream_retries);
    forward(r, r->addr);
    return;
  }
  if (err == HTTP_E_UPSTREAM_TIMEOUT) {
    CTR_ADD(th, upstream_504);
    reply_error_req(r, 504, "upstream_timeout", "the service did not answer in time");
  } else if (err == HTTP_E_UPSTREAM_PROTO) {
    CTR_ADD(th, upstream_502);
    reply_error_req(r, 502, "bad_gateway", "the service sent an invalid answer");
  } else {
    CTR_ADD(th, upstream_503);
    reply_error_req(r, 503, "upstream_unavailable", "the service is unavailable");
  }
}

/* ------------------------------------------------------------------------ */
/* Forwarding                                                               */
/* ------------------------------------------------------------------------ */

http_client_t *gw_upstream_client(gw_thread_t *th, gw_service_t svc, int i) {
  return th->clients[svc][i];
}

static void forward(gw_req_t *r, int avoid) {
  gw_thread_t *th = r->th;
  gw_config_t *cfg = &th->app->cfg;
  gw_service_t svc = r->route->service;
  const http_msg_t *req = http_request(r->ex);
  int i = gw_service_pick(&cfg->services[svc], &th->rr[svc], avoid, rt_loop_now_ns(th->loop));
  if (i < 0) {
    CTR_ADD(th, upstream_503);
    reply_error_req(r, 503, "upstream_unavailable", "the service is unavailable");
    return;
  }
  r->addr = i;
  r->attempts++;
  http_buf_reset(&th->scratch);
  int rc = gw_forward_headers(&th->scratch, req, req->method_name, req->target, r->rid,
                              r->has_id ? &r->id : NULL, &cfg->hmac, (int64_t)time(NULL));
  if (rc == 0)
    rc = http_client_request(th->clients[svc][i], req->method_name, req->target,
                             th->scratch.data, req->body, req->body_len, on_upstream, r);
  if (rc == HTTP_E_UPSTREAM_BUSY) {
    CTR_ADD(th, upstream_503);
    reply_error_req(r, 503, "overloaded", "too many requests waiting for the service");
  } else if (rc < 0) {
    reply_error_req(r, 400, "bad_request", "the request cannot be forwarded");
  }
}

void gw_proxy_handle(http_exchange_t *ex, void *arg) {
  const gw_route_t *route = arg;
  gw_thread_t *th = gw_thread_self();
  gw_identity_t id;
  bool has_id = false;
  if (!gw_admit(th, ex, route, &id, &has_id)) return;
  gw_req_t *r = rt_pool_get(&th->reqs);
  if (r == NULL) {
    gw_reply_error(th, ex, route, has_id ? &id : NULL, 503, "overloaded",
                   "too many requests in flight", "Retry-After: 1\r\n");
    return;
  }
  r->th = th;
  r->ex = ex;
  r->route = route;
  r->has_id = has_id;
  if (has_id) r->id = id;
  r->started_ns = rt_now_ns();
  r->rate = th->rate;
  snprintf(r->rid, sizeof r->rid, "%s", http_request_id(ex));
  forward(r, -1);
}
