/*
 * run.c - setup, the measured run and its drain, on one loop thread.
 *
 * The life of an operation (op_t, from a pool sized at start-up):
 *   1. issued: closed loop, when one of the C clients is free (its intended
 *      start is now); open loop, when the scheduler hands out a due time
 *      and fewer than inflight_max operations are under way.
 *   2. a kind is drawn by the weights, accounts and an amount at random;
 *      money movements get a fresh Idempotency-Key.
 *   3. its request goes out on the upstream's pooled keep-alive client;
 *      a payment is a POST (202), then long-polls (GET ?wait=) on a client
 *      of their own until the payment is final or its deadline passes.
 *   4. the answer updates the model: an acknowledged movement moves the
 *      expected balances; a refusal moves nothing; an answer that does not
 *      tell (timeout, 5xx, 409) is kept as an unknown outcome and replayed
 *      with the same key at the end.
 *   5. finished: latency = now - intended start, recorded when it
 *      succeeded; counted ok or as an error by kind and status; the op
 *      goes back to the pool and its slot issues the next one.
 * Setup uses the same ops, one customer at a time per op (sign up, log in
 * through the gateway, open and fund each account), retrying what the
 * platform asks to retry (429, 503, 409) with back-off.
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "harness.h"

#define SETUP_PARALLEL 4      /* customers set up at once (sign-up hashes passwords) */
#define CHECK_PARALLEL 16     /* requests of the check phase at once */
#define SETUP_ATTEMPTS 40
#define RETRY_MS_MAX 2000
#define TICK_MS 1
#define HEADERS_BYTES 2560

const char *const bench_kind_names[KIND_COUNT] = {"topup", "transfer", "payment", "read"};
const char *const bench_up_names[UP_COUNT] = {"gateway", "profile", "account", "payment",
                                              "event"};
const char *const bench_err_names[ERR_COUNT] = {
    "timeout", "upstream_down", "client_busy", "bad_response_bytes", "status",
    "payment_failed", "payment_not_final", "not_sent", "bad_response", "other"};

typedef enum {
  ST_SIGNUP = 1,
  ST_LOGIN,
  ST_OPEN,
  ST_FUND,
  ST_MOVE,      /* top-up or transfer */
  ST_PAY_POST,
  ST_PAY_POLL,
  ST_READ,
} stage_t;

typedef struct op {
  bench_t *b;
  stage_t stage;
  kind_t kind;
  bool setup;
  uint32_t cust;
  uint32_t acct_i;           /* setup: the customer's account being made */
  uint32_t src, dst;
  int64_t amount;
  uint64_t intended_ns;
  uint64_t sent_ns;          /* the current request's */
  uint64_t deadline_ns;      /* payments: give up polling after this */
  uint32_t attempts;
  rt_timer_t retry;
  char key[48];
  char pay_id[ID_BYTES];
  char target[PATH_BYTES];
  char body[512];
} op_t;

/* The pool lives here rather than in bench_t: only run.c touches ops. */
static rt_pool_t ops;

static void op_send(op_t *op);
static void op_http_cb(void *ctx, int err, const http_msg_t *resp);
static void refill(bench_t *b);
static void drain_maybe_done(bench_t *b);

/* ------------------------------------------------------------------------ */
/* Small helpers                                                            */
/* ------------------------------------------------------------------------ */

static uint64_t rnd(bench_t *b) {
  /* xorshift64*: fast, and reproducible from --seed. */
  b->rng ^= b->rng >> 12;
  b->rng ^= b->rng << 25;
  b->rng ^= b->rng >> 27;
  return b->rng * UINT64_C(2685821657736338717);
}

static void fatal(bench_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fatal(bench_t *b, const char *fmt, ...) {
  if (b->fatal) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->fatal_msg, sizeof b->fatal_msg, fmt, ap);
  va_end(ap);
  b->fatal = true;
  rt_loop_stop(b->loop);
}

int bench_timer_start(bench_t *b, rt_timer_t *timer, uint64_t after_ms, uint64_t period_ms) {
  int rc = rt_timer_start(b->loop, timer, after_ms, period_ms);
  if (rc < 0) fatal(b, "no timer could be armed: %s", rt_strerror(rc));
  return rc;
}

static void new_key(bench_t *b, char *out, size_t n) {
  snprintf(out, n, "bench-%s-%" PRIu64, b->run_id, ++b->key_seq);
}

upstream_t bench_api_upstream(const bench_t *b, upstream_t service) {
  return b->cfg->direct ? service : UP_GATEWAY;
}

static const char *body_snippet(const http_msg_t *resp) {
  return resp != NULL && resp->body_len > 0 ? resp->body : "";
}

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

/* The identity headers the gateway would sign, for a service reached
 * directly. */
static int identity_headers(bench_t *b, char *out, size_t n, const char *subject,
                            const char *roles, const char *method, const char *target) {
  const char *q = strchr(target, '?');
  size_t path_len = q != NULL ? (size_t)(q - target) : strlen(target);
  char ts[24];
  snprintf(ts, sizeof ts, "%lld", (long long)time(NULL));
  char sig[65];
  http_identity_sign((const uint8_t *)b->cfg->hmac_key, strlen(b->cfg->hmac_key), subject, roles,
                     method, target, path_len, ts, sig);
  return snprintf(out, n,
                  "X-Auth-Subject: %s\r\nX-Auth-Roles: %s\r\nX-Auth-Timestamp: %s\r\n"
                  "X-Auth-Signature: %s\r\n",
                  subject, roles, ts, sig);
}

int bench_request(bench_t *b, upstream_t up, uint32_t customer, const char *roles,
                  const char *method, const char *target, const char *idem_key,
                  const char *body, http_client_cb cb, void *ctx) {
  http_client_t *client = b->client[up];
  if (client == NULL) return -ENOTCONN;
  char h[HEADERS_BYTES];
  size_t len = 0;
  int n = 0;
  if (customer != UINT32_MAX && up == UP_GATEWAY && b->customers[customer].token[0] != '\0') {
    n = snprintf(h, sizeof h, "Authorization: Bearer %s\r\n", b->customers[customer].token);
  } else if (up != UP_GATEWAY && (customer != UINT32_MAX || roles != NULL)) {
    if (b->cfg->hmac_key[0] == '\0') return -EPERM;
    const char *subject = customer != UINT32_MAX ? b->customers[customer].id : "bench-checker";
    n = identity_headers(b, h, sizeof h, subject, customer != UINT32_MAX ? "customer" : roles,
                         method, target);
  }
  if (n < 0 || (size_t)n >= sizeof h) return -ENOSPC;
  len = (size_t)n;
  if (idem_key != NULL) {
    n = snprintf(h + len, sizeof h - len, "Idempotency-Key: %s\r\n", idem_key);
    if (n < 0 || (size_t)n >= sizeof h - len) return -ENOSPC;
    len += (size_t)n;
  }
  if (body != NULL) {
    n = snprintf(h + len, sizeof h - len, "Content-Type: application/json\r\n");
    if (n < 0 || (size_t)n >= sizeof h - len) return -ENOSPC;
    len += (size_t)n;
  }
  h[len] = '\0';
  b->requests++;
  return http_client_request(client, method, target, len ? h : NULL, body,
                             body ? strlen(body) : 0, cb, ctx);
}

/* ------------------------------------------------------------------------ */
/* Measurements                                                             */
/* ------------------------------------------------------------------------ */

static err_kind_t err_kind_of(int err) {
  switch (err) {
  case HTTP_E_UPSTREAM_TIMEOUT: return ERR_TIMEOUT;
  case HTTP_E_UPSTREAM_DOWN: return ERR_DOWN;
  case HTTP_E_UPSTREAM_BUSY: return ERR_BUSY;
  case HTTP_E_UPSTREAM_PROTO: return ERR_PROTO;
  default: return ERR_OTHER;
  }
}

static uint32_t second_of(const bench_t *b, uint64_t now) {
  uint64_t s = now > b->run_start_ns ? (now - b->run_start_ns) / 1000000000u : 0;
  return s >= b->seconds_count ? b->seconds_count - 1 : (uint32_t)s;
}

static step_stats_t *step_at(bench_t *b, uint64_t t) {
  if (!b->cfg->open_loop) return &b->steps[0];
  uint32_t k = bench_sched_step_of(&b->sched, t);
  if (NEVER(k >= b->steps_count)) k = b->steps_count - 1;
  return &b->steps[k];
}

/* An operation of the run ended: ok, or with an error of `kind` (and
 * `status` when ERR_STATUS). */
static void record(bench_t *b, const op_t *op, bool ok, err_kind_t ek, int status) {
  uint64_t now = rt_now_ns();
  uint64_t latency = now > op->intended_ns ? now - op->intended_ns : 0;
  second_stats_t *sec = &b->seconds[second_of(b, now)];
  step_stats_t *st = step_at(b, op->intended_ns);
  if (ok) {
    bench_hist_record(&b->hist[op->kind], latency);
    bench_hist_record(&b->all, latency);
    bench_hist_record(&sec->hist, latency);
    bench_hist_record(&st->hist, latency);
    b->ok[op->kind]++;
    sec->ok++;
    st->ok++;
    step_at(b, now)->window_ok++;
    return;
  }
  b->errors[op->kind]++;
  sec->errors++;
  st->errors++;
  b->err_kind[ek]++;
  if (ek == ERR_STATUS && status >= 100 && status < 600) b->err_status[status]++;
}

static void remember_unknown(bench_t *b, const op_t *op) {
  if (b->unknowns_count == b->unknowns_cap) {
    b->unknowns_overflow = true;
    if (op->src < b->accounts_count) b->accounts[op->src].unverifiable = true;
    if (op->kind != KIND_TOPUP && op->dst < b->accounts_count)
      b->accounts[op->dst].unverifiable = true;
    return;
  }
  unknown_t *u = &b->unknowns[b->unknowns_count++];
  *u = (unknown_t){.kind = op->kind, .src = op->src, .dst = op->dst, .amount = op->amount};
  snprintf(u->key, sizeof u->key, "%s", op->key);
}

static void remember_unfinished(bench_t *b, const op_t *op) {
  if (b->unfinished_count == b->unfinished_cap) {
    b->accounts[op->src].unverifiable = true;
    b->accounts[op->dst].unverifiable = true;
    return;
  }
  unfinished_t *u = &b->unfinished[b->unfinished_count++];
  *u = (unfinished_t){.src = op->src, .dst = op->dst, .amount = op->amount};
  snprintf(u->id, sizeof u->id, "%s", op->pay_id);
}

void bench_model_apply(bench_t *b, kind_t kind, uint32_t src, uint32_t dst, int64_t amount) {
  assert(src < b->accounts_count);
  assert(amount > 0);
  if (kind == KIND_TOPUP) {
    b->accounts[src].expected += amount;
    b->topups_total += amount;
    return;
  }
  assert(dst < b->accounts_count);
  b->accounts[src].expected -= amount;
  b->accounts[dst].expected += amount;
}

/* ------------------------------------------------------------------------ */
/* Operations of the run                                                    */
/* ------------------------------------------------------------------------ */

static void op_release(op_t *op) {
  bench_t *b = op->b;
  rt_timer_stop(b->loop, &op->retry);
  rt_pool_put(&ops, op);
}

static void op_finish(op_t *op, bool ok, err_kind_t ek, int status) {
  bench_t *b = op->b;
  record(b, op, ok, ek, status);
  op_release(op);
  assert(b->inflight > 0);
  b->inflight--;
  refill(b);
  drain_maybe_done(b);
}

void bench_money_request(const bench_t *b, kind_t kind, uint32_t src, uint32_t dst,
                         int64_t amount, char *target, size_t target_bytes, char *body,
                         size_t body_bytes) {
  const char *cur = b->cfg->currency;
  const char *s = b->accounts[src].id, *d = b->accounts[dst].id;
  assert(kind != KIND_READ);
  if (kind == KIND_TOPUP) {
    snprintf(target, target_bytes, "/v1/accounts/%s/topups", s);
    snprintf(body, body_bytes, "{\"amount\":%" PRId64 ",\"currency\":\"%s\"}", amount, cur);
    return;
  }
  snprintf(target, target_bytes, "%s", kind == KIND_TRANSFER ? "/v1/transfers" : "/v1/payments");
  snprintf(body, body_bytes,
           "{\"from_account_id\":\"%s\",\"to_account_id\":\"%s\",\"amount\":%" PRId64
           ",\"currency\":\"%s\"%s}",
           s, d, amount, cur, kind == KIND_PAYMENT ? ",\"reference\":\"bench\"" : "");
}

static kind_t draw_kind(bench_t *b) {
  uint32_t total = 0;
  for (int k = 0; k < KIND_COUNT; k++) total += b->cfg->weights[k];
  assert(total > 0);
  uint32_t r = (uint32_t)(rnd(b) % total);
  for (int k = 0; k < KIND_COUNT; k++) {
    if (r < b->cfg->weights[k]) return (kind_t)k;
    r -= b->cfg->weights[k];
  }
  return KIND_READ;
}

/* Fills in a run operation: kind, accounts, amount, request. */
static void op_prepare(bench_t *b, op_t *op) {
  const bench_config_t *cfg = b->cfg;
  op->kind = draw_kind(b);
  op->src = (uint32_t)(rnd(b) % b->accounts_count);
  op->dst = (uint32_t)(rnd(b) % (b->accounts_count - 1));
  if (op->dst >= op->src) op->dst++;
  op->cust = b->accounts[op->src].customer;
  op->amount = 1 + (int64_t)(rnd(b) % (uint64_t)cfg->amount_max);
  if (op->kind == KIND_READ) {
    op->stage = ST_READ;
    op->key[0] = '\0';
    op->body[0] = '\0';
    const char *src = b->accounts[op->src].id;
    if (rnd(b) % 2 == 0)
      snprintf(op->target, sizeof op->target, "/v1/accounts/%s", src);
    else
      snprintf(op->target, sizeof op->target, "/v1/accounts/%s/transactions?limit=20", src);
  } else {
    op->stage = op->kind == KIND_PAYMENT ? ST_PAY_POST : ST_MOVE;
    new_key(b, op->key, sizeof op->key);
    bench_money_request(b, op->kind, op->src, op->dst, op->amount, op->target,
                        sizeof op->target, op->body, sizeof op->body);
  }
  b->accounts[op->src].touched = true;
  if (op->kind == KIND_TRANSFER || op->kind == KIND_PAYMENT) b->accounts[op->dst].touched = true;
}

static void op_issue(bench_t *b, uint64_t intended_ns) {
  op_t *op = rt_pool_get(&ops);
  if (NEVER(op == NULL)) return; /* slots never exceed the pool: see bench_run */
  op->b = b;
  op->intended_ns = intended_ns;
  rt_timer_init(&op->retry, NULL, op);
  op_prepare(b, op);
  b->inflight++;
  b->issued++;
  step_at(b, intended_ns)->issued++;
  op_send(op);
}

/* Whether a status says the request was not applied, for certain. */
static bool status_refused(int status) {
  return status >= 400 && status < 500 && status != 408 && status != 409;
}

static void on_move(op_t *op, int err, const http_msg_t *resp) {
  bench_t *b = op->b;
  if (err == 0 && resp->status / 100 == 2) {
    bench_model_apply(b, op->kind, op->src, op->dst, op->amount);
    op_finish(op, true, 0, 0);
    return;
  }
  if (err == 0 && status_refused(resp->status)) {
    op_finish(op, false, ERR_STATUS, resp->status);
    return;
  }
  remember_unknown(b, op);
  op_finish(op, false, err == 0 ? ERR_STATUS : err_kind_of(err), err == 0 ? resp->status : 0);
}

static void on_read(op_t *op, int err, const http_msg_t *resp) {
  if (err == 0 && resp->status == 200) {
    op_finish(op, true, 0, 0);
    return;
  }
  op_finish(op, false, err == 0 ? ERR_STATUS : err_kind_of(err), err == 0 ? resp->status : 0);
}

static void poll_payment(op_t *op) {
  op->stage = ST_PAY_POLL;
  snprintf(op->target, sizeof op->target, "/v1/payments/%s?wait=%u", op->pay_id,
           op->b->cfg->payment_wait_ms);
  op_send(op);
}

static void on_pay_post(op_t *op, int err, const http_msg_t *resp) {
  bench_t *b = op->b;
  if (err == 0 && resp->status / 100 == 2) {
    if (bench_json_str(resp->body, resp->body_len, "id", op->pay_id, sizeof op->pay_id) < 0) {
      remember_unknown(b, op);
      op_finish(op, false, ERR_BAD_RESPONSE, 0);
      return;
    }
    op->deadline_ns = rt_now_ns() + (uint64_t)b->cfg->payment_timeout_ms * 1000000u;
    poll_payment(op);
    return;
  }
  if (err == 0 && status_refused(resp->status)) {
    op_finish(op, false, ERR_STATUS, resp->status);
    return;
  }
  remember_unknown(b, op);
  op_finish(op, false, err == 0 ? ERR_STATUS : err_kind_of(err), err == 0 ? resp->status : 0);
}

static void poll_again(rt_timer_t *t) { poll_payment(t->ctx); }

static void on_pay_poll(op_t *op, int err, const http_msg_t *resp) {
  bench_t *b = op->b;
  char state[32] = "";
  if (err == 0 && resp->status == 200)
    bench_json_str(resp->body, resp->body_len, "state", state, sizeof state);
  if (strcmp(state, "completed") == 0) {
    b->payments_completed++;
    bench_model_apply(b, KIND_PAYMENT, op->src, op->dst, op->amount);
    op_finish(op, true, 0, 0);
    return;
  }
  if (strcmp(state, "failed") == 0) {
    b->payments_failed++;
    op_finish(op, false, ERR_PAYMENT_FAILED, 0);
    return;
  }
  if (rt_now_ns() >= op->deadline_ns) {
    remember_unfinished(b, op);
    op_finish(op, false, ERR_PAYMENT_NOT_FINAL, 0);
    return;
  }
  /* Not final yet (the long-poll's wait ran out), or the poll failed: ask
   * again; after a failure, not at once. */
  if (state[0] != '\0') {
    poll_payment(op);
    return;
  }
  op->retry.cb = poll_again;
  (void)bench_timer_start(b, &op->retry, 50, 0);
}

/* ------------------------------------------------------------------------ */
/* Setup                                                                    */
/* ------------------------------------------------------------------------ */

static void setup_step(op_t *op);

static void setup_retry_fire(rt_timer_t *t) { setup_step(t->ctx); }

static bool setup_retryable(int err, const http_msg_t *resp) {
  if (err != 0) return err == HTTP_E_UPSTREAM_TIMEOUT || err == HTTP_E_UPSTREAM_DOWN ||
                       err == HTTP_E_UPSTREAM_BUSY;
  return resp->status == 429 || resp->status == 503 || resp->status == 502 ||
         resp->status == 504 || resp->status == 409;
}

/* The platform asked to come back later: same step, after a back-off. */
static void setup_retry(op_t *op, int err, const http_msg_t *resp) {
  bench_t *b = op->b;
  if (++op->attempts >= SETUP_ATTEMPTS) {
    fatal(b, "setup: %s still failing after %u attempts (%s %d)", op->target, op->attempts,
          err ? rt_strerror(err) : "status", err ? 0 : resp->status);
    return;
  }
  uint32_t ms = 100u * op->attempts;
  op->retry.cb = setup_retry_fire;
  (void)bench_timer_start(b, &op->retry, ms > RETRY_MS_MAX ? RETRY_MS_MAX : ms, 0);
}

static void setup_customer_done(op_t *op);

static void on_setup(op_t *op, int err, const http_msg_t *resp) {
  bench_t *b = op->b;
  bench_hist_record(&b->setup_hist, rt_now_ns() - op->sent_ns);
  if (setup_retryable(err, resp)) {
    setup_retry(op, err, resp);
    return;
  }
  if (err != 0 || resp->status / 100 != 2) {
    fatal(b, "setup: %s answered %s %d %.200s", op->target, err ? rt_strerror(err) : "status",
          err ? 0 : resp->status, err ? "" : body_snippet(resp));
    return;
  }
  customer_t *c = &b->customers[op->cust];
  uint32_t ai = op->cust * b->cfg->accounts_per + op->acct_i;
  int rc = 0;
  op->attempts = 0;
  switch (op->stage) {
  case ST_SIGNUP:
    rc = bench_json_str(resp->body, resp->body_len, "id", c->id, sizeof c->id);
    op->stage = b->cfg->direct ? ST_OPEN : ST_LOGIN;
    break;
  case ST_LOGIN:
    rc = bench_json_str(resp->body, resp->body_len, "access_token", c->token, sizeof c->token);
    op->stage = ST_OPEN;
    break;
  case ST_OPEN:
    rc = bench_json_str(resp->body, resp->body_len, "id", b->accounts[ai].id,
                        sizeof b->accounts[ai].id);
    op->stage = b->cfg->fund > 0 ? ST_FUND : ST_OPEN;
    if (op->stage == ST_OPEN) op->acct_i++;
    break;
  case ST_FUND:
    bench_model_apply(b, KIND_TOPUP, ai, ai, b->cfg->fund);
    op->stage = ST_OPEN;
    op->acct_i++;
    break;
  default:
    (void)NEVER(true);
    break;
  }
  if (rc < 0) {
    fatal(b, "setup: %s answered without the expected field: %.200s", op->target,
          body_snippet(resp));
    return;
  }
  if (op->stage == ST_OPEN && op->acct_i == b->cfg->accounts_per) {
    setup_customer_done(op);
    return;
  }
  setup_step(op);
}

/* Sends the request of the op's current setup step. */
static void setup_step(op_t *op) {
  bench_t *b = op->b;
  const bench_config_t *cfg = b->cfg;
  customer_t *c = &b->customers[op->cust];
  uint32_t ai = op->cust * cfg->accounts_per + op->acct_i;
  const char *password = "bench-password-0123456789";
  upstream_t up = UP_GATEWAY;
  uint32_t who = op->cust;
  const char *key = NULL;
  switch (op->stage) {
  case ST_SIGNUP:
    /* A fresh address per attempt: a retried sign-up must not collide
     * with one that went through unseen. */
    snprintf(c->email, sizeof c->email, "bench-%s-%u-%u@example.com", b->run_id, op->cust,
             op->attempts);
    snprintf(op->target, sizeof op->target, "/v1/customers");
    snprintf(op->body, sizeof op->body,
             "{\"name\":\"Bench Customer %u\",\"email\":\"%s\",\"password\":\"%s\"}", op->cust,
             c->email, password);
    up = bench_api_upstream(b, UP_PROFILE);
    who = UINT32_MAX;
    break;
  case ST_LOGIN:
    snprintf(op->target, sizeof op->target, "/v1/auth/token");
    snprintf(op->body, sizeof op->body, "{\"email\":\"%s\",\"password\":\"%s\"}", c->email,
             password);
    who = UINT32_MAX;
    break;
  case ST_OPEN:
    snprintf(op->target, sizeof op->target, "/v1/accounts");
    snprintf(op->body, sizeof op->body, "{\"currency\":\"%s\"}", cfg->currency);
    up = bench_api_upstream(b, UP_ACCOUNT);
    b->accounts[ai].customer = op->cust;
    break;
  case ST_FUND:
    if (op->attempts == 0) new_key(b, op->key, sizeof op->key); /* retries: same key */
    snprintf(op->target, sizeof op->target, "/v1/accounts/%s/topups", b->accounts[ai].id);
    snprintf(op->body, sizeof op->body, "{\"amount\":%" PRId64 ",\"currency\":\"%s\"}",
             cfg->fund, cfg->currency);
    up = bench_api_upstream(b, UP_ACCOUNT);
    key = op->key;
    break;
  default:
    (void)NEVER(true);
    return;
  }
  op->sent_ns = rt_now_ns();
  int rc = bench_request(b, up, who, NULL, "POST", op->target, key, op->body, op_http_cb, op);
  if (rc < 0) fatal(b, "setup: cannot send %s: %s", op->target, rt_strerror(rc));
}

static void start_run(bench_t *b);

static void setup_customer_done(op_t *op) {
  bench_t *b = op->b;
  b->setup_done++;
  if (b->setup_next < b->cfg->customers) {
    op->cust = b->setup_next++;
    op->acct_i = 0;
    op->attempts = 0;
    op->stage = ST_SIGNUP;
    setup_step(op);
    return;
  }
  op_release(op);
  if (b->setup_done == b->cfg->customers) start_run(b);
}

static void start_setup(bench_t *b) {
  b->phase = PHASE_SETUP;
  b->setup_start_ns = rt_now_ns();
  bench_check_mark_audit(b);
  uint32_t n = b->cfg->customers < SETUP_PARALLEL ? b->cfg->customers : SETUP_PARALLEL;
  for (uint32_t i = 0; i < n; i++) {
    op_t *op = rt_pool_get(&ops);
    assert(op != NULL);
    op->b = b;
    op->setup = true;
    op->cust = b->setup_next++;
    op->stage = ST_SIGNUP;
    rt_timer_init(&op->retry, NULL, op);
    setup_step(op);
  }
}

/* ------------------------------------------------------------------------ */
/* Sending and dispatching                                                  */
/* ------------------------------------------------------------------------ */

static void op_http_cb(void *ctx, int err, const http_msg_t *resp) {
  op_t *op = ctx;
  if (op->setup) {
    on_setup(op, err, resp);
    return;
  }
  switch (op->stage) {
  case ST_MOVE: on_move(op, err, resp); break;
  case ST_PAY_POST: on_pay_post(op, err, resp); break;
  case ST_PAY_POLL: on_pay_poll(op, err, resp); break;
  case ST_READ: on_read(op, err, resp); break;
  default: (void)NEVER(true); break;
  }
}

static void op_send(op_t *op) {
  bench_t *b = op->b;
  assert(!op->setup);
  upstream_t up;
  const char *method = "POST";
  switch (op->stage) {
  case ST_MOVE: up = UP_ACCOUNT; break;
  case ST_PAY_POST: up = UP_PAYMENT; break;
  case ST_PAY_POLL: up = UP_PAYMENT; method = "GET"; break;
  default: up = UP_ACCOUNT; method = "GET"; break;
  }
  up = bench_api_upstream(b, up);
  http_client_t *saved = b->client[up];
  if (op->stage == ST_PAY_POLL) b->client[up] = b->poll_client;
  op->sent_ns = rt_now_ns();
  int rc = bench_request(b, up, op->cust, NULL, method, op->target,
                         op->key[0] && op->stage != ST_PAY_POLL ? op->key : NULL,
                         op->body[0] && strcmp(method, "POST") == 0 ? op->body : NULL, op_http_cb,
                         op);
  b->client[up] = saved;
  if (rc < 0) {
    /* Refused before it left (the client's queue is full): nothing was
     * sent, so nothing is unknown. */
    op_finish(op, false, rc == HTTP_E_UPSTREAM_BUSY ? ERR_BUSY : ERR_OTHER, 0);
  }
}

/* ------------------------------------------------------------------------ */
/* The driver                                                               */
/* ------------------------------------------------------------------------ */

static uint32_t slots(const bench_t *b) {
  return b->cfg->open_loop ? b->cfg->inflight_max : b->cfg->clients;
}

/* A stepping run: judges each step once its window has closed. */
static void judge_steps(bench_t *b, uint64_t now) {
  if (!b->cfg->open_loop || b->steps_count < 2) return;
  uint32_t current = bench_sched_step_of(&b->sched, now);
  while (b->steps_judged < current) {
    step_stats_t *st = &b->steps[b->steps_judged++];
    double secs = (double)b->cfg->step_ms / 1000.0;
    bool kept_up = (double)st->window_ok >= 0.95 * st->rate * secs &&
                   (double)st->late <= 0.01 * (double)st->issued;
    if (!kept_up && b->cfg->stop_when_behind) b->fell_behind = true;
  }
}

static void end_run(bench_t *b, uint64_t now) {
  if (b->phase != PHASE_RUN) return;
  b->phase = PHASE_DRAIN;
  b->run_end_ns = now;
  if (b->cfg->open_loop) {
    uint64_t n = bench_sched_abandon(&b->sched, now);
    b->err_kind[ERR_NOT_SENT] += n;
  }
  drain_maybe_done(b);
}

/* Issues what the slots allow: the closed loop's next operations, or the
 * open loop's due ones. A natural end still sends what fell due before
 * it; an interruption (Ctrl-C, a step that fell behind) counts those as
 * not sent. */
static void refill(bench_t *b) {
  if (b->phase != PHASE_RUN) return;
  uint64_t now = rt_now_ns();
  bool stopping = *b->stop_flag || b->fell_behind;
  if (!b->cfg->open_loop) {
    if (now >= b->run_end_ns || stopping) {
      end_run(b, now);
      return;
    }
    while (b->inflight < slots(b)) op_issue(b, rt_now_ns());
    return;
  }
  uint64_t due = 0;
  while (!stopping && b->inflight < slots(b)) {
    int rc = bench_sched_next(&b->sched, now, &due);
    if (rc <= 0) break;
    if (now - due > b->sched.late_ns) step_at(b, due)->late++;
    op_issue(b, due);
  }
  if (now >= b->run_end_ns || stopping) end_run(b, now);
}

static void tick(rt_timer_t *t) {
  bench_t *b = t->ctx;
  if (*b->stop_flag) b->interrupted = true;
  if (b->phase == PHASE_RUN) {
    judge_steps(b, rt_now_ns());
    refill(b);
  }
  drain_maybe_done(b);
}

static void progress(rt_timer_t *t) {
  bench_t *b = t->ctx;
  if (b->phase == PHASE_RUN || b->phase == PHASE_DRAIN) bench_progress_tick(b, false);
}

static void start_run(bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  b->phase = PHASE_RUN;
  b->run_start_ns = rt_now_ns();
  /* A marker for scripts and tests that act while the run is under way. */
  fprintf(stderr, "phase: run\n");
  b->run_end_ns = b->run_start_ns + (uint64_t)cfg->duration_ms * 1000000u;
  if (cfg->scenario == SCEN_SETUP) {
    end_run(b, b->run_start_ns);
    return;
  }
  if (cfg->open_loop) {
    int rc = bench_sched_init(&b->sched, b->run_start_ns, (uint64_t)cfg->duration_ms * 1000000u,
                              cfg->rate, cfg->step_rate,
                              /* a stepped run as long as one step has one */
                              cfg->step_rate > 0.0 ? (uint64_t)cfg->step_ms * 1000000u : 0,
                              (uint64_t)cfg->late_ms * 1000000u);
    if (NEVER(rc < 0)) {
      fatal(b, "the schedule is impossible");
      return;
    }
    for (uint32_t k = 0; k < b->steps_count; k++)
      b->steps[k].rate = bench_sched_rate_of(&b->sched, k);
  }
  if (cfg->progress > 0 && bench_timer_start(b, &b->progress_timer, 1000, 1000) < 0) return;
  refill(b);
}

static void drain_maybe_done(bench_t *b) {
  if (b->phase != PHASE_DRAIN || b->inflight > 0) return;
  b->drained_ns = rt_now_ns();
  rt_timer_stop(b->loop, &b->progress_timer);
  if (b->cfg->progress > 0 && b->cfg->scenario != SCEN_SETUP) bench_progress_tick(b, true);
  b->phase = PHASE_CHECK;
  if (b->cfg->check) {
    bench_check_start(b);
  } else {
    bench_check_done(b);
  }
}

void bench_check_done(bench_t *b) {
  b->phase = PHASE_DONE;
  rt_timer_stop(b->loop, &b->tick);
  rt_loop_stop(b->loop);
}

/* ------------------------------------------------------------------------ */
/* Start-up and the end                                                     */
/* ------------------------------------------------------------------------ */

/* Long-polls hold their connection while they wait: they get a client of
 * their own with room for one per operation under way, up to this. */
#define POLL_CONNS_MAX 256

/* Connections of a client: the configured ones, or for the long-polls'
 * client one per operation under way up to POLL_CONNS_MAX. */
static uint32_t client_conns(const bench_t *b, bool poll) {
  uint32_t conns = b->cfg->connections;
  if (poll && slots(b) > conns) conns = slots(b) < POLL_CONNS_MAX ? slots(b) : POLL_CONNS_MAX;
  if (poll && conns < b->cfg->connections) conns = b->cfg->connections;
  return conns;
}

/* Every operation under way may wait for a connection. */
static uint32_t client_queue_max(const bench_t *b) {
  return slots(b) + CHECK_PARALLEL + SETUP_PARALLEL;
}

static int client_for(bench_t *b, upstream_t up, const addr_t *a, const http_filter_t *filter,
                      uint32_t timeout_ms, http_client_t **out) {
  bool poll = out == &b->poll_client;
  http_client_config_t hc = {
      .host = a->host,
      .port = a->port,
      .conns_max = client_conns(b, poll),
      .queue_max = client_queue_max(b),
      .connect_timeout_ms = 2000,
      .request_timeout_ms = timeout_ms,
      .filter = filter,
  };
  (void)up;
  return http_client_create(out, b->loop, &hc);
}

/* The client side of TLS to the gateway: its CA file's anchors, no
 * certificate of our own; two clients share the gateway, so engines for
 * both. */
static int gateway_tls(bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  int rc = wire_tls_creds_load(&b->tls_creds, cfg->ca_file, NULL, NULL);
  if (rc < 0) {
    fprintf(stderr, "bench: cannot use %s as trust anchors: %s\n", cfg->ca_file, rt_strerror(rc));
    return BENCH_E_CA;
  }
  uint32_t poll = POLL_CONNS_MAX > cfg->connections ? POLL_CONNS_MAX : cfg->connections;
  return wire_tls_client_create(&b->tls, b->tls_creds, cfg->server_name, cfg->connections + poll);
}

/* With TLS_CA set, the services speak the platform's mutual TLS: the
 * harness shows TLS_CERT (deploy/certs.sh --internal makes bench.crt) and
 * checks each service's name. *out stays NULL without TLS_CA: plain. */
static int inner_tls(bench_t *b, upstream_t up, const http_filter_t **out) {
  *out = NULL;
  const char *ca = getenv("TLS_CA");
  if (ca == NULL || ca[0] == '\0') return 0;
  int rc = 0;
  if (b->inner_creds == NULL) {
    rc = wire_tls_creds_load(&b->inner_creds, ca, getenv("TLS_CERT"), getenv("TLS_KEY"));
    if (rc < 0) {
      fprintf(stderr, "bench: TLS_CA, TLS_CERT, TLS_KEY not usable: %s\n", rt_strerror(rc));
      return BENCH_E_CA;
    }
  }
  /* Its request client, and the payment's long-polls in direct mode. */
  rc = wire_tls_client_create(&b->inner[up], b->inner_creds, bench_up_names[up],
                              b->cfg->connections + POLL_CONNS_MAX);
  if (rc == 0) *out = wire_tls_filter_http(b->inner[up]);
  return rc;
}

static int make_clients(bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  uint32_t poll_timeout = cfg->payment_wait_ms + cfg->request_timeout_ms;
  int rc = 0;
  if (!cfg->direct) {
    /* Two clients share the gateway: TLS engines for both. */
    rc = gateway_tls(b);
    const http_filter_t *gw = rc == 0 ? wire_tls_filter_http(b->tls) : NULL;
    if (rc == 0) rc = client_for(b, UP_GATEWAY, &cfg->gateway, gw, cfg->request_timeout_ms,
                                 &b->client[UP_GATEWAY]);
    if (rc == 0) rc = client_for(b, UP_GATEWAY, &cfg->gateway, gw, poll_timeout, &b->poll_client);
  }
  for (int u = UP_PROFILE; u < UP_COUNT && rc == 0; u++) {
    if (!cfg->svc[u].set) continue;
    const http_filter_t *filter = NULL;
    rc = inner_tls(b, (upstream_t)u, &filter);
    if (rc == 0)
      rc = client_for(b, (upstream_t)u, &cfg->svc[u], filter, cfg->request_timeout_ms,
                      &b->client[u]);
    if (rc == 0 && cfg->direct && u == UP_PAYMENT)
      rc = client_for(b, (upstream_t)u, &cfg->svc[u], filter, poll_timeout, &b->poll_client);
  }
  return rc;
}

/* Ops: the run's slots, or the check phase's requests, whichever is
 * more (the phases do not overlap), plus the setup's customers at once. */
static uint32_t ops_count(const bench_t *b) {
  return (slots(b) > CHECK_PARALLEL ? slots(b) : CHECK_PARALLEL) + SETUP_PARALLEL;
}

/* Timers an HTTP client may hold armed (http_client.c): a deadline per
 * request it holds, waiting or on a connection, and a connect deadline
 * per connection. */
static uint64_t client_timers(const bench_t *b, bool poll) {
  uint64_t conns = client_conns(b, poll);
  return client_queue_max(b) + conns + conns;
}

/* The loop's tables, from the run's configuration, as make_clients()
 * will make its clients. */
static void loop_config(const bench_t *b, rt_loop_config_t *lc) {
  const bench_config_t *cfg = b->cfg;
  uint64_t clients = 0;
  if (!cfg->direct) clients += client_timers(b, false) + client_timers(b, true);
  for (int u = UP_PROFILE; u < UP_COUNT; u++) {
    if (!cfg->svc[u].set) continue;
    clients += client_timers(b, false);
    if (cfg->direct && u == UP_PAYMENT) clients += client_timers(b, true);
  }
  uint64_t timers =
      ops_count(b)     /* an operation's retry back-off */
      + CHECK_PARALLEL /* a check slot's retry (check.c: CHECK_SLOTS) */
      + clients        /* the HTTP clients' deadlines */
      + 4;             /* the tick, the progress line, the check's stage, the settle */
  *lc = (rt_loop_config_t){
      .timers_count = timers > UINT32_MAX ? UINT32_MAX : (uint32_t)timers,
      .msgs_count = 16, /* none are sent: a few, counted should they run out */
  };
  /* No multishot recv: the clients read into their connections' own. */
  lc->bufs_count = rt_loop_bufs_for(lc, 0);
}

static int alloc_measures(bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  int rc = 0;
  for (int k = 0; k < KIND_COUNT && rc == 0; k++) rc = bench_hist_init(&b->hist[k], 7);
  if (rc == 0) rc = bench_hist_init(&b->all, 7);
  if (rc == 0) rc = bench_hist_init(&b->setup_hist, 7);
  /* One row per second of the run, plus the drain: payments may take up
   * to their timeout after the last is issued. */
  b->seconds_count = cfg->duration_ms / 1000 + (cfg->payment_timeout_ms + cfg->request_timeout_ms) / 1000 + 3;
  b->seconds = calloc(b->seconds_count, sizeof *b->seconds);
  if (b->seconds == NULL) return -ENOMEM;
  for (uint32_t i = 0; i < b->seconds_count && rc == 0; i++)
    rc = bench_hist_init(&b->seconds[i].hist, 5);
  b->steps_count = 1;
  if (cfg->open_loop && cfg->step_ms > 0 && cfg->step_rate > 0)
    b->steps_count = (cfg->duration_ms + cfg->step_ms - 1) / cfg->step_ms;
  b->steps = calloc(b->steps_count, sizeof *b->steps);
  if (b->steps == NULL) return -ENOMEM;
  for (uint32_t i = 0; i < b->steps_count && rc == 0; i++) {
    b->steps[i].rate = cfg->open_loop ? cfg->rate : 0;
    rc = bench_hist_init(&b->steps[i].hist, 7);
  }
  return rc;
}

static int alloc_model(bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  b->accounts_count = cfg->customers * cfg->accounts_per;
  b->customers = calloc(cfg->customers, sizeof *b->customers);
  b->accounts = calloc(b->accounts_count, sizeof *b->accounts);
  /* Unknown outcomes and unfinished payments: at most one per operation
   * under way at a time is typical; a platform that keeps failing fills
   * them, and the accounts concerned are then reported unverifiable. */
  b->unknowns_cap = 4 * slots(b) + 1024;
  b->unknowns = calloc(b->unknowns_cap, sizeof *b->unknowns);
  b->unfinished_cap = 4 * slots(b) + 1024;
  b->unfinished = calloc(b->unfinished_cap, sizeof *b->unfinished);
  if (!b->customers || !b->accounts || !b->unknowns || !b->unfinished) return -ENOMEM;
  return 0;
}

int bench_run(bench_t *b, bench_config_t *cfg, volatile sig_atomic_t *stop_flag) {
  b->cfg = cfg;
  b->stop_flag = stop_flag;
  b->rng = cfg->seed ? cfg->seed : UINT64_C(0x9e3779b97f4a7c15);
  uint8_t id[8];
  if (getrandom(id, sizeof id, 0) != (ssize_t)sizeof id) memset(id, 7, sizeof id);
  for (int i = 0; i < 8; i++) snprintf(b->run_id + 2 * i, 3, "%02x", id[i]);
  rt_loop_config_t lc;
  loop_config(b, &lc);
  int rc = rt_loop_create(&b->loop, &lc);
  if (rc == 0) rc = rt_pool_init(&ops, "bench_ops", sizeof(op_t), ops_count(b));
  if (rc == 0) rc = alloc_measures(b);
  if (rc == 0) rc = alloc_model(b);
  if (rc == 0) rc = make_clients(b);
  if (rc < 0) {
    snprintf(b->fatal_msg, sizeof b->fatal_msg, "start-up failed: %s", rt_strerror(rc));
    b->fatal = true;
    return rc;
  }
  rt_timer_init(&b->tick, tick, b);
  rt_timer_init(&b->progress_timer, progress, b);
  if (bench_timer_start(b, &b->tick, TICK_MS, TICK_MS) < 0) return BENCH_E_SETUP;
  start_setup(b);
  rc = rt_loop_run(b->loop);
  if (b->fatal) return BENCH_E_SETUP;
  return rc;
}

/* Runs the loop until every client has closed its connections. */
static void settle(rt_timer_t *t) { rt_loop_stop(((bench_t *)t->ctx)->loop); }

void bench_free(bench_t *b) {
  if (b->loop != NULL) {
    rt_timer_stop(b->loop, &b->tick);
    rt_timer_stop(b->loop, &b->progress_timer);
    for (int u = 0; u < UP_COUNT; u++) http_client_destroy(b->client[u]);
    http_client_destroy(b->poll_client);
    rt_timer_t t;
    rt_timer_init(&t, settle, b);
    /* Without the settle timer the loop would not stop: skip the wait. */
    if (rt_timer_start(b->loop, &t, 100, 0) == 0) rt_loop_run(b->loop);
  }
  wire_tls_filter_destroy(b->tls);
  wire_tls_creds_free(b->tls_creds);
  for (int u = 0; u < UP_COUNT; u++) wire_tls_filter_destroy(b->inner[u]);
  wire_tls_creds_free(b->inner_creds);
  for (int k = 0; k < KIND_COUNT; k++) bench_hist_deinit(&b->hist[k]);
  bench_hist_deinit(&b->all);
  bench_hist_deinit(&b->setup_hist);
  for (uint32_t i = 0; i < b->seconds_count && b->seconds; i++) bench_hist_deinit(&b->seconds[i].hist);
  for (uint32_t i = 0; i < b->steps_count && b->steps; i++) bench_hist_deinit(&b->steps[i].hist);
  free(b->seconds);
  free(b->steps);
  free(b->customers);
  free(b->accounts);
  free(b->unknowns);
  free(b->unfinished);
  if (ops.mem != NULL && !b->fatal) rt_pool_deinit(&ops);
  if (b->loop != NULL) rt_loop_destroy(b->loop);
}
