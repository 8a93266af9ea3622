/*
 * token.c - POST /v1/auth/token: email and password in, a signed JWT out.
 *
 * The gateway never sees a password hash: it asks the profile service,
 * which owns credentials, through its internal check (a REST call on the
 * pooled client, so the loop thread never blocks), as the "service" role.
 * Unknown email and wrong password get the same 401, so the endpoint does
 * not tell which emails exist. Logins have their own, stricter per-address
 * rate limit (credential stuffing). Neither the email, the password nor
 * the token is ever logged.
 */
#include <assert.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "app.h"

#define EMAIL_BYTES_MAX 254
#define PASSWORD_BYTES_MAX 1024

typedef struct login {
  gw_thread_t *th;
  http_exchange_t *ex;
  const gw_route_t *route;
  uint64_t started_ns;
  gw_rate_state_t rate; /* the limits it was admitted under */
  char rid[40];
} login_t;

size_t gw_token_ctx_bytes(void) { return sizeof(login_t); }

static void login_error(login_t *l, int status, const char *code, const char *message) {
  gw_thread_t *th = l->th;
  char body[192];
  int n = snprintf(body, sizeof body, "{\"error\":{\"code\":\"%s\",\"message\":\"%s\"}}", code,
                   message);
  char rate[128], extra[224];
  gw_rate_state_headers(&l->rate, rate, sizeof rate);
  snprintf(extra, sizeof extra, "X-Request-Id: %s\r\nCache-Control: no-store\r\n%s", l->rid,
           rate);
  http_respond(l->ex, status, "application/json", body, (size_t)n, extra);
  gw_access_log(l->rid, "POST", l->route, status, l->started_ns, NULL,
                gw_service_name(GW_SVC_PROFILE));
  rt_pool_put(&th->logins, l);
}

/* The subject and roles of profile's answer: {"customer_id"|"subject"|
 * "id": "...", "roles": ["customer", ...]} (roles default to customer). */
static int parse_verified(const http_msg_t *resp, char *sub, size_t sub_bytes, uint32_t *roles) {
  json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
  const char *keys[] = {"customer_id", "subject", "id"};
  const char *s = NULL;
  for (size_t i = 0; i < 3 && s == NULL && j != NULL; i++)
    s = json_string_value(json_object_get(j, keys[i]));
  json_t *r = json_object_get(j, "roles");
  *roles = json_is_array(r) ? 0 : GW_ROLE_CUSTOMER;
  size_t i;
  json_t *v;
  json_array_foreach(r, i, v) {
    if (json_is_string(v)) *roles |= gw_role_parse(json_string_value(v), json_string_length(v));
  }
  int rc = s != NULL && s[0] != '\0' && strlen(s) < sub_bytes && *roles != 0 ? 0 : -1;
  if (rc == 0) snprintf(sub, sub_bytes, "%s", s);
  json_decref(j);
  return rc;
}

static void issue(login_t *l, const http_msg_t *resp) {
  gw_app_t *app = l->th->app;
  char sub[GW_SUB_BYTES_MAX];
  uint32_t roles = 0;
  if (parse_verified(resp, sub, sizeof sub, &roles) < 0) {
    login_error(l, 502, "bad_gateway", "the profile service sent an invalid answer");
    return;
  }
  /* parse_verified() accepted only a subject and a role we know. */
  assert(sub[0] != '\0');
  assert(roles != 0);
  char *token = NULL;
  if (gw_jwt_sign(atomic_load(&app->keys), &app->cfg.jwt, sub, roles, (int64_t)time(NULL), &token) < 0) {
    login_error(l, 500, "internal", "the token could not be signed");
    return;
  }
  assert(token != NULL);
  json_t *body = json_pack("{s:s, s:s, s:i}", "access_token", token, "token_type", "Bearer",
                           "expires_in", (json_int_t)app->cfg.jwt.ttl_s);
  explicit_bzero(token, strlen(token));
  free(token);
  char rate[128], extra[224];
  gw_rate_state_headers(&l->rate, rate, sizeof rate);
  snprintf(extra, sizeof extra, "X-Request-Id: %s\r\nCache-Control: no-store\r\n%s", l->rid,
           rate);
  atomic_fetch_add_explicit(&l->th->counters.tokens_issued, 1, memory_order_relaxed);
  gw_thread_t *th = l->th;
  gw_identity_t who = {0};
  snprintf(who.sub, sizeof who.sub, "%s", sub);
  http_respond_json(l->ex, 200, body, extra);
  gw_access_log(l->rid, "POST", l->route, 200, l->started_ns, &who,
                gw_service_name(GW_SVC_PROFILE));
  json_decref(body);
  rt_pool_put(&th->logins, l);
}

/* True when profile refused the gateway itself (its identity headers),
 * not the user's credentials: a configuration fault (AUTH_HMAC_KEY or
 * clocks), which the user must not be told is a wrong password. */
static bool gateway_refused(const http_msg_t *resp) {
  if (resp->status != 401 && resp->status != 403) return false;
  json_t *j = json_loadb(resp->body, resp->body_len, 0, NULL);
  const char *code = json_string_value(json_object_get(json_object_get(j, "error"), "code"));
  bool ours = code != NULL && strcmp(code, "invalid_credentials") != 0;
  json_decref(j);
  return ours;
}

static void on_verified(void *ctx, int err, const http_msg_t *resp) {
  login_t *l = ctx;
  if (err == 0 && gateway_refused(resp)) {
    RT_ERROR("profile refused the gateway's identity: check AUTH_HMAC_KEY and clocks",
             RT_LF_INT("status", resp->status));
    login_error(l, 503, "upstream_unavailable", "the profile service is unavailable");
  } else if (err == HTTP_E_UPSTREAM_TIMEOUT) {
    login_error(l, 504, "upstream_timeout", "the profile service did not answer in time");
  } else if (err < 0) {
    login_error(l, 503, "upstream_unavailable", "the profile service is unavailable");
  } else if (resp->status == 200) {
    issue(l, resp);
  } else if (resp->status == 401 || resp->status == 403 || resp->status == 404) {
    atomic_fetch_add_explicit(&l->th->counters.logins_failed, 1, memory_order_relaxed);
    login_error(l, 401, "invalid_credentials", "email or password is wrong");
  } else if (resp->status == 429) {
    login_error(l, 429, "rate_limited", "too many attempts");
  } else {
    login_error(l, 503, "upstream_unavailable", "the profile service is unavailable");
  }
}

/* The body {"email": "...", "password": "..."}, re-encoded with only those
 * two fields so nothing else of the client's reaches the service. */
static char *credentials_body(const http_msg_t *req) {
  json_t *j = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, NULL);
  json_t *e = json_object_get(j, "email");
  json_t *p = json_object_get(j, "password");
  char *out = NULL;
  if (json_is_object(j) && json_is_string(e) && json_is_string(p) &&
      json_string_length(e) > 0 && json_string_length(e) <= EMAIL_BYTES_MAX &&
      json_string_length(p) > 0 && json_string_length(p) <= PASSWORD_BYTES_MAX) {
    json_t *o = json_pack("{s:O, s:O}", "email", e, "password", p);
    out = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
  }
  json_decref(j);
  return out;
}

static int ask_profile(login_t *l, const char *body) {
  gw_thread_t *th = l->th;
  gw_config_t *cfg = &th->app->cfg;
  int i = gw_service_pick(&cfg->services[GW_SVC_PROFILE], &th->rr[GW_SVC_PROFILE], -1,
                          rt_loop_now_ns(th->loop));
  if (i < 0) return HTTP_E_UPSTREAM_DOWN;
  http_buf_reset(&th->scratch);
  int rc = http_buf_appendf(&th->scratch, "Content-Type: application/json\r\nX-Request-Id: %s\r\n",
                            l->rid);
  if (rc == 0)
    rc = gw_identity_headers(&th->scratch, "gateway", "service", "POST", cfg->verify_path,
                             &cfg->hmac, (int64_t)time(NULL));
  if (rc == 0)
    rc = http_client_request(gw_upstream_client(th, GW_SVC_PROFILE, i), "POST",
                             cfg->verify_path, th->scratch.data, body, strlen(body), on_verified,
                             l);
  return rc;
}

void gw_token_handle(http_exchange_t *ex, void *arg) {
  const gw_route_t *route = arg;
  gw_thread_t *th = gw_thread_self();
  gw_identity_t id;
  bool has_id = false;
  if (!gw_admit(th, ex, route, &id, &has_id)) return;
  gw_tls_conn_t *conn = gw_tls_filter_conn_of(th->filter, http_exchange_actor(ex));
  uint32_t retry_s = 0;
  gw_rate_state_t login_rate = {0};
  int limited = conn != NULL ? gw_ratelimit_take(th->app->rl_login, gw_tls_conn_peer(conn)->bytes,
                                                 16, rt_loop_now_ns(th->loop), &retry_s,
                                                 &login_rate)
                             : 0;
  gw_rate_state_merge(&th->rate, &login_rate);
  if (limited < 0) {
    char extra[48];
    snprintf(extra, sizeof extra, "Retry-After: %u\r\n", retry_s);
    atomic_fetch_add_explicit(&th->counters.rate_limited, 1, memory_order_relaxed);
    gw_reply_error(th, ex, route, NULL, 429, "rate_limited", "too many login attempts", extra);
    return;
  }
  char *body = credentials_body(http_request(ex));
  if (body == NULL) {
    gw_reply_error(th, ex, route, NULL, 400, "bad_request",
                   "expected {\\\"email\\\": string, \\\"password\\\": string}", NULL);
    return;
  }
  login_t *l = rt_pool_get(&th->logins);
  int rc = l != NULL ? 0 : RT_E_POOL_EMPTY;
  if (l != NULL) {
    *l = (login_t){.th = th, .ex = ex, .route = route, .started_ns = th->handler_ns,
                   .rate = th->rate};
    snprintf(l->rid, sizeof l->rid, "%s", http_request_id(ex));
    rc = ask_profile(l, body);
  }
  explicit_bzero(body, strlen(body));
  free(body);
  if (rc < 0 && l != NULL) {
    login_error(l, 503, "upstream_unavailable", "the profile service is unavailable");
  } else if (rc < 0) {
    gw_reply_error(th, ex, route, NULL, 503, "overloaded", "too many logins in flight",
                   "Retry-After: 1\r\n");
  }
}
