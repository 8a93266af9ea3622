/*
 * svc_http.c - requests: dispatch, answers, parameters, database trips.
 *
 * Life of a request:
 *   http server -> svc_http_dispatch (a svc_req_t from the thread's fixed
 *   pool; identity, role and body checks) -> the route's handler -> zero
 *   or more svc_db() / svc_work() / svc_park() / HTTP client round trips,
 *   each resuming the handler's code in a callback on the same thread ->
 *   exactly one svc_reply_*(), which answers the exchange (echoing its
 *   X-Request-Id) and gives the svc_req_t back.
 *
 * Every log line written while a request is handled carries its request
 * id, which is also the correlation id of the events it causes.
 */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "svc_internal.h"

/* ------------------------------------------------------------------------ */
/* Answers                                                                  */
/* ------------------------------------------------------------------------ */

void svc_req_release(svc_req_t *req) {
  svc_th_t *th = (svc_th_t *)req->th;
  assert(th->inflight > 0);
  assert(req->park == NULL); /* answered while parked: unparked first */
  assert(!req->work.req.in_flight); /* answered only once its work is done */
  if (req->body != NULL) json_decref(req->body);
  th->inflight--;
  atomic_store_explicit(&th->inflight_gauge, th->inflight, memory_order_relaxed);
  rt_pool_put(&th->reqs, req);
  if (th->draining) svc_drain_step(th);
}

static void req_log(const svc_req_t *req, int status) {
  uint64_t us = (rt_now_ns() - req->started_ns) / 1000u;
  const char *pattern = req->route ? req->route->pattern : "";
  rt_log(status >= 500 ? RT_LOG_WARN : RT_LOG_DEBUG, "request",
         (const rt_log_field_t[]){RT_LF_STR("method", req->msg->method_name),
                                  RT_LF_STR("route", pattern), RT_LF_INT("status", status),
                                  RT_LF_INT("us", us)},
         4);
}

/* What every answer does before it is written: leave the parking, give up
 * a two-phase claim whose work never started, log. Returns the extra
 * header lines (X-Request-Id, then `extra`) in buf. */
static const char *reply_begin(svc_req_t *req, int status, const char *extra, char *buf,
                               size_t buf_bytes) {
  if (req->park != NULL) svc_unpark(req);
  if (req->idem != NULL && req->idem->reserved && !req->idem->reopened) svc_idem__abandon(req);
  rt_log_set_request_id(http_request_id(req->ex));
  req_log(req, status);
  int n = snprintf(buf, buf_bytes, "X-Request-Id: %s\r\n%s", http_request_id(req->ex),
                   extra ? extra : "");
  /* The buffer is sized for both. */
  if (NEVER(n < 0) || NEVER((size_t)n >= buf_bytes)) return extra;
  return buf;
}

static void reply_end(svc_req_t *req) {
  rt_log_set_request_id(NULL);
  svc_req_release(req);
}

void svc_reply_json(svc_req_t *req, int status, json_t *body) {
  if (body == NULL) {
    svc_reply_error(req, 500, "internal", "response could not be built");
    return;
  }
  char hdr[256];
  const char *extra = reply_begin(req, status, NULL, hdr, sizeof hdr);
  http_respond_json(req->ex, status, body, extra);
  json_decref(body);
  reply_end(req);
}

void svc_reply_raw(svc_req_t *req, int status, const char *body, size_t len,
                   const char *extra_headers) {
  char hdr[512];
  const char *extra = reply_begin(req, status, extra_headers, hdr, sizeof hdr);
  http_respond(req->ex, status, "application/json", body, len, extra);
  reply_end(req);
}

void svc_reply_error(svc_req_t *req, int status, const char *code, const char *message) {
  json_t *body = json_pack("{s:{s:s, s:s}}", "error", "code", code, "message", message);
  char hdr[256];
  const char *extra = reply_begin(req, status, NULL, hdr, sizeof hdr);
  if (body != NULL) {
    http_respond_json(req->ex, status, body, extra);
    json_decref(body);
  } else {
    http_respond_error(req->ex, status, code, message);
  }
  reply_end(req);
}

bool svc_db_transient(int err) {
  switch (err) {
  case RT_PG_E_POOL_FULL:
  case RT_PG_E_UNAVAILABLE:
  case RT_PG_E_CONN_LOST:
  case RT_PG_E_TIMEOUT:
  case RT_PG_E_STATEMENT_TIMEOUT:
  case RT_PG_E_CLOSED:
  case RT_PG_E_SERIALIZATION:
  case RT_PG_E_DEADLOCK:
  case RT_E_LIMIT:
    return true;
  default:
    return false;
  }
}

void svc_reply_db_error(svc_req_t *req, int err, const rt_pg_batch_t *batch) {
  if (svc_db_transient(err)) {
    svc_reply_error(req, 503, "unavailable", rt_strerror(err));
    return;
  }
  /* SQLSTATE and constraint only: messages may quote the data. */
  const rt_pg_error_t *e = batch ? rt_pg_error(batch) : NULL;
  rt_log_set_request_id(http_request_id(req->ex));
  RT_ERROR("database error", RT_LF_STR("route", req->route ? req->route->pattern : ""),
           RT_LF_STR("error", rt_strerror(err)), RT_LF_STR("sqlstate", e ? e->sqlstate : ""),
           RT_LF_STR("constraint", e ? e->constraint : ""),
           RT_LF_INT("stmt", e ? e->stmt_index : -1));
  svc_reply_error(req, 500, "internal", "internal error");
}

/* ------------------------------------------------------------------------ */
/* Parameters                                                               */
/* ------------------------------------------------------------------------ */

const char *svc_param(const svc_req_t *req, const char *name) {
  return http_param(req->ex, name);
}

const char *svc_header(const svc_req_t *req, const char *name) {
  return http_msg_header(req->msg, name);
}

bool svc_has_role(const svc_req_t *req, uint32_t roles) {
  return req->who.present && (req->who.roles & roles) != 0;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

const char *const svc_payment_states[] = {"pending", "authorized", "cancelled", "completed",
                                          "failed"};
const size_t svc_payment_states_count = sizeof svc_payment_states / sizeof svc_payment_states[0];

int svc_query_enum(svc_req_t *req, const char *name, char *out, size_t out_bytes,
                   const char *const *values, size_t count, const char *code,
                   const char *message) {
  int n = svc_query(req, name, out, out_bytes);
  if (n == -ENOENT) return 0;
  for (size_t i = 0; n > 0 && i < count; i++)
    if (strcmp(out, values[i]) == 0) return n;
  svc_reply_error(req, 422, code, message);
  return -1;
}

int svc_query(const svc_req_t *req, const char *name, char *out, size_t out_bytes) {
  const char *q = req->msg->query;
  size_t name_len = strlen(name);
  /* Bounded by the URL limit: each turn consumes one parameter. */
  while (q != NULL && *q != '\0') {
    const char *amp = strchr(q, '&');
    size_t part = amp ? (size_t)(amp - q) : strlen(q);
    if (part > name_len && strncmp(q, name, name_len) == 0 && q[name_len] == '=') {
      const char *v = q + name_len + 1, *end = q + part;
      size_t n = 0;
      for (; v < end; v++) {
        char ch = *v;
        if (ch == '+') {
          ch = ' ';
        } else if (ch == '%') {
          if (end - v < 3 || hexval(v[1]) < 0 || hexval(v[2]) < 0) return -EINVAL;
          ch = (char)(hexval(v[1]) * 16 + hexval(v[2]));
          v += 2;
        }
        if (ch == '\0' || n + 1 >= out_bytes) return -EINVAL;
        out[n++] = ch;
      }
      out[n] = '\0';
      return (int)n;
    }
    q = amp ? amp + 1 : NULL;
  }
  return -ENOENT;
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static bool req_authorise(svc_req_t *req) {
  const svc_route_t *route = req->route;
  if (route->auth == SVC_AUTH_NONE) return true;
  svc_th_t *th = (svc_th_t *)req->th;
  int rc = svc_auth_verify(req->msg, svc_g.cfg.auth_key, svc_g.cfg.auth_key_bytes,
                           svc_g.cfg.auth_max_skew_s, (int64_t)time(NULL), &req->who);
  if (rc == SVC_E_AUTH_MISSING && route->auth == SVC_AUTH_OPTIONAL) {
    memset(&req->who, 0, sizeof req->who);
    return true;
  }
  if (rc < 0) {
    atomic_fetch_add_explicit(&th->auth_rejected, 1, memory_order_relaxed);
    RT_INFO("identity refused", RT_LF_STR("route", route->pattern),
            RT_LF_STR("why", svc_strerror(rc)));
    svc_reply_error(req, 401, "unauthenticated",
                    rc == SVC_E_AUTH_MISSING ? "identity headers missing"
                                             : "identity headers invalid or expired");
    return false;
  }
  if (route->roles != 0 && (req->who.roles & route->roles) == 0) {
    svc_reply_error(req, 403, "forbidden", "role not allowed");
    return false;
  }
  return true;
}

void svc_http_dispatch(http_exchange_t *ex, void *arg) {
  const svc_route_t *route = arg;
  svc_th_t *th = svc_th_current();
  assert(th != NULL);
  atomic_fetch_add_explicit(&th->requests, 1, memory_order_relaxed);
  svc_req_t *req = rt_pool_get(&th->reqs); /* zeroed */
  if (req == NULL) {
    atomic_fetch_add_explicit(&th->overloaded, 1, memory_order_relaxed);
    http_respond_error(ex, 503, "overloaded", "too many requests in flight");
    return;
  }
  th->inflight++;
  atomic_store_explicit(&th->inflight_gauge, th->inflight, memory_order_relaxed);
  req->ex = ex;
  req->th = &th->pub;
  req->msg = http_request(ex);
  req->route = route;
  req->started_ns = rt_now_ns();
  if (!req_authorise(req)) return;
  if (route->json_body) {
    svc_json_error_t err;
    if (svc_json_parse(req->msg->body, req->msg->body_len, &req->body, &err) < 0) {
      svc_reply_json_error(req, &err);
      return;
    }
  }
  route->fn(req);
}

/* ------------------------------------------------------------------------ */
/* Database                                                                 */
/* ------------------------------------------------------------------------ */

rt_pg_batch_t *svc_batch(svc_req_t *req) {
  rt_pg_batch_t *b = rt_pg_batch_new(req->th->pool);
  if (b == NULL) svc_reply_error(req, 503, "unavailable", "too many database requests");
  return b;
}

rt_pg_pool_t *svc_read_pool(svc_thread_t *th) {
  if (th->read_pool == NULL) return th->pool;
  if (rt_pg_pool_up(th->read_pool)) return th->read_pool;
  svc_th_t *own = (svc_th_t *)th;
  atomic_fetch_add_explicit(&own->read_fallbacks, 1, memory_order_relaxed);
  return th->pool;
}

rt_pg_batch_t *svc_batch_read(svc_req_t *req) {
  rt_pg_batch_t *b = rt_pg_batch_new(svc_read_pool(req->th));
  if (b == NULL) svc_reply_error(req, 503, "unavailable", "too many database requests");
  return b;
}

static void db_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_req_t *req = ctx;
  rt_log_set_request_id(http_request_id(req->ex));
  svc_db_fn fn = req->db_fn;
  req->db_fn = NULL;
  assert(fn != NULL);
  if (svc_idem__is_duplicate(req, b, err)) {
    /* The key was claimed before: nothing of this batch happened. */
    svc_idem__replay(req);
  } else {
    fn(req, b, err);
  }
  rt_log_set_request_id(NULL);
}

void svc_db(svc_req_t *req, rt_pg_batch_t *b, svc_db_fn fn) {
  assert(req->db_fn == NULL); /* one round trip at a time */
  req->db_fn = fn;
  int rc = rt_pg_submit(b, 0, db_done, req);
  if (rc < 0) {
    req->db_fn = NULL;
    svc_reply_db_error(req, rc, NULL);
  }
}

/* ------------------------------------------------------------------------ */
/* Peers                                                                    */
/* ------------------------------------------------------------------------ */

int svc_peer_config(svc_peer_t *p, const char *name, const char *addr, uint32_t timeout_ms) {
  *p = (svc_peer_t){0};
  snprintf(p->name, sizeof p->name, "%s", name);
  char env[32];
  size_t n = 0;
  for (; name[n] != '\0' && n < 16; n++) env[n] = (char)toupper((unsigned char)name[n]);
  snprintf(env + n, sizeof env - n, "_ADDR");
  int rc = rt_env_addr(env, addr, p->host, sizeof p->host, &p->port);
  snprintf(env + n, sizeof env - n, "_TIMEOUT");
  if (rc == 0) rc = rt_env_ms(env, timeout_ms, &p->timeout_ms);
  return rc;
}

http_client_t *svc_peer_client(const svc_peer_t *p, rt_loop_t *loop, uint32_t conns_max,
                               uint32_t queue_max) {
  http_client_config_t hc = {
      .host = p->host,
      .port = p->port,
      .conns_max = conns_max,
      .queue_max = queue_max,
      .connect_timeout_ms = 1000,
      .request_timeout_ms = p->timeout_ms,
  };
  http_client_t *client = NULL;
  int rc = svc_tls_client(p->name, conns_max, &hc.filter);
  if (rc == 0) rc = http_client_create(&client, loop, &hc);
  if (rc < 0) {
    RT_ERROR("no client for a peer service", RT_LF_STR("peer", p->name),
             RT_LF_STR("host", p->host), RT_LF_INT("port", p->port),
             RT_LF_STR("error", rt_strerror(rc)));
    return NULL;
  }
  return client;
}
