/*
 * svc_idem.c - claims (the Idempotency-Key side), SHA-256, UUID v7.
 *
 * Whatever a write produces (its effect, its event, its answer) is decided
 * inside the one database transaction that makes it, and that transaction
 * starts by claiming its key: a crash or a retry at any point can neither
 * lose nor double anything. See svc.h for the protocol; svc_consume.c
 * claims event ids the same way.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include <bearssl.h>

#include "svc_internal.h"

/* ------------------------------------------------------------------------ */
/* SHA-256                                                                  */
/* ------------------------------------------------------------------------ */

void svc_hex(const uint8_t *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

void svc_sha256_hex(const void *data, size_t len, char out[65]) {
  br_sha256_context ctx;
  uint8_t sum[32];
  br_sha256_init(&ctx);
  br_sha256_update(&ctx, data, len);
  br_sha256_out(&ctx, sum);
  svc_hex(sum, sizeof sum, out);
}

/* ------------------------------------------------------------------------ */
/* Idempotency-Key                                                          */
/* ------------------------------------------------------------------------ */

int svc_stmt_idem_claim, svc_stmt_idem_finish, svc_stmt_idem_read, svc_stmt_idem_reserve,
    svc_stmt_idem_reopen, svc_stmt_idem_abandon;

static const svc_stmt_t stmts[] = {
    /* A second claim of one key violates the primary key: its whole
     * transaction rolls back (svc.h). */
    {&svc_stmt_idem_claim,
     "INSERT INTO claims (scope, key, request_hash, status, response_body, created_at, expires_at)"
     " VALUES ($1, $2, $3, 0, '', now(), now() + make_interval(hours => $4::int))",
     4},
    /* The UPDATE's rows are visible only through its RETURNING (a CTE's
     * changes are not seen by the rest of its statement), hence the union. */
    {&svc_stmt_idem_finish,
     "WITH u AS (UPDATE claims SET status = $3::int, response_body = $4"
     "  WHERE scope = $1 AND key = $2 AND status = 0"
     "  RETURNING status, response_body, request_hash)"
     " SELECT status, response_body, request_hash FROM u"
     " UNION ALL"
     " SELECT k.status, k.response_body, k.request_hash FROM claims k"
     "  WHERE k.scope = $1 AND k.key = $2 AND NOT EXISTS (SELECT 1 FROM u)",
     4},
    {&svc_stmt_idem_read,
     "SELECT status, response_body, request_hash FROM claims WHERE scope = $1 AND key = $2", 2},
    /* Two-phase: in progress (-1) with a lock; taken over only by the same
     * request once the lock has lapsed. A row comes back when it is ours. */
    {&svc_stmt_idem_reserve,
     "INSERT INTO claims (scope, key, request_hash, status, response_body, created_at,"
     " expires_at, lock_token, locked_until)"
     " VALUES ($1, $2, $3, -1, '', now(), now() + make_interval(hours => $4::int), $5::uuid,"
     " now() + make_interval(secs => $6::int))"
     " ON CONFLICT (scope, key) DO UPDATE SET lock_token = EXCLUDED.lock_token,"
     " locked_until = EXCLUDED.locked_until"
     " WHERE claims.status = -1 AND claims.locked_until < now()"
     " AND claims.request_hash = EXCLUDED.request_hash"
     " RETURNING 1",
     6},
    {&svc_stmt_idem_reopen,
     "UPDATE claims SET status = 0, lock_token = NULL, locked_until = NULL"
     " WHERE scope = $1 AND key = $2 AND status = -1 AND lock_token = $3::uuid",
     3},
    {&svc_stmt_idem_abandon,
     "DELETE FROM claims WHERE scope = $1 AND key = $2 AND status = -1 AND lock_token = $3::uuid",
     3},
};

const svc_stmt_table_t svc_idem_stmts = {stmts, sizeof stmts / sizeof stmts[0]};

#define IDEM_LOCK_S 30 /* a two-phase claim's work must end within this */

static bool key_ok(const char *k) {
  size_t n = strlen(k);
  if (n == 0 || n > SVC_IDEM_KEY_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    char c = k[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '-';
    if (!ok) return false;
  }
  return true;
}

int svc_idem_begin(svc_req_t *req, svc_idem_t *idem, bool required) {
  memset(idem, 0, sizeof *idem);
  idem->claim_index = -1;
  idem->finish_index = -1;
  const char *key = svc_header(req, "idempotency-key");
  if (key == NULL) {
    if (!required) return 0;
    svc_reply_error(req, 400, "idempotency_key_required",
                    "this request needs an Idempotency-Key header");
    return -1;
  }
  if (!key_ok(key) || http_msg_header_count(req->msg, "idempotency-key") != 1) {
    svc_reply_error(req, 400, "invalid_idempotency_key",
                    "Idempotency-Key must be one header of 1 to 128 characters of"
                    " A-Z a-z 0-9 . _ : -");
    return -1;
  }
  idem->keyed = true;
  snprintf(idem->key, sizeof idem->key, "%s", key);
  /* Anonymous callers share one scope; money writes always have a subject. */
  snprintf(idem->scope, sizeof idem->scope, "%s", req->who.present ? req->who.subject : "-");
  br_sha256_context ctx;
  uint8_t sum[32];
  br_sha256_init(&ctx);
  br_sha256_update(&ctx, req->msg->method_name, strlen(req->msg->method_name));
  br_sha256_update(&ctx, " ", 1);
  br_sha256_update(&ctx, req->msg->path, strlen(req->msg->path));
  br_sha256_update(&ctx, "\n", 1);
  br_sha256_update(&ctx, req->msg->body, req->msg->body_len);
  br_sha256_out(&ctx, sum);
  svc_hex(sum, sizeof sum, idem->hash);
  req->idem = idem;
  return 0;
}

const char *svc_idem_scope(const svc_idem_t *idem) { return idem->keyed ? idem->scope : NULL; }

const char *svc_idem_key(const svc_idem_t *idem) { return idem->keyed ? idem->key : NULL; }

static void keep_hours(char out[16]) { snprintf(out, 16, "%d", SVC_IDEM_KEEP_HOURS); }

void svc_idem_add_claim(rt_pg_batch_t *b, svc_idem_t *idem) {
  if (!idem->keyed) return;
  char hours[16];
  keep_hours(hours);
  const char *vals[] = {idem->scope, idem->key, idem->hash, hours};
  idem->claim_index = rt_pg_add(b, svc_stmt_idem_claim, 4, vals);
}

void svc_idem_add_finish(rt_pg_batch_t *b, svc_idem_t *idem, int fail_status,
                         const char *fail_body) {
  if (!idem->keyed) return;
  char st[12];
  snprintf(st, sizeof st, "%d", fail_status);
  const char *vals[] = {idem->scope, idem->key, st, fail_body};
  idem->finish_index = rt_pg_add(b, svc_stmt_idem_finish, 4, vals);
}

void svc_idem_add_reopen(rt_pg_batch_t *b, svc_idem_t *idem) {
  if (!idem->keyed) return;
  assert(idem->reserved);
  const char *vals[] = {idem->scope, idem->key, idem->token};
  /* The claim is ours again for this transaction, or nothing happens and
   * the guards of the service's statements keep them from writing. */
  idem->claim_index = rt_pg_add(b, svc_stmt_idem_reopen, 3, vals);
  idem->reopened = true;
}

/* The stored claim of a finished (or busy) key: replay, 422 or 409. */
static svc_idem_result_t stored_outcome(const rt_pg_batch_t *b, int stmt, const svc_idem_t *idem,
                                        int *status, const char **body) {
  int64_t st = 0;
  const char *stored = rt_pg_value(b, stmt, 0, 1);
  const char *hash = rt_pg_value(b, stmt, 0, 2);
  *status = 500;
  *body = NULL;
  if (rt_pg_int64(b, stmt, 0, 0, &st) != 0 || stored == NULL || hash == NULL) {
    /* The claim is gone: it lapsed and was pruned, or a two-phase claim
     * was given up. The client may simply try again. */
    return SVC_IDEM_BUSY;
  }
  if (strcmp(hash, idem->hash) != 0) return SVC_IDEM_MISMATCH;
  if (st <= 0) return SVC_IDEM_BUSY;
  *status = (int)st;
  *body = stored;
  return SVC_IDEM_REPLAY;
}

svc_idem_result_t svc_idem_outcome(const rt_pg_batch_t *b, const svc_idem_t *idem,
                                   int *status, const char **body) {
  if (!idem->keyed || idem->finish_index < 0) return SVC_IDEM_UNKEYED;
  if (idem->reopened && rt_pg_affected(b, idem->claim_index) != 1) {
    /* We lost the two-phase lock: the other request's outcome stands. */
    return stored_outcome(b, idem->finish_index, idem, status, body);
  }
  int64_t st = 0;
  const char *stored = rt_pg_value(b, idem->finish_index, 0, 1);
  if (NEVER(rt_pg_int64(b, idem->finish_index, 0, 0, &st) != 0 || stored == NULL)) {
    *status = 500;
    *body = NULL;
    return SVC_IDEM_NEW;
  }
  *status = (int)st;
  *body = stored;
  return SVC_IDEM_NEW;
}

void svc_idem_reply(svc_req_t *req, svc_idem_result_t r, int status, const char *body) {
  if (r == SVC_IDEM_MISMATCH) {
    svc_reply_error(req, 422, "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request");
    return;
  }
  if (r == SVC_IDEM_BUSY) {
    svc_reply_error(req, 409, "idempotency_key_in_use",
                    "a request with this Idempotency-Key is still being processed; retry later");
    return;
  }
  if (body == NULL || status < 200 || status > 599) {
    svc_reply_error(req, 500, "internal", "stored response missing");
    return;
  }
  svc_reply_raw(req, status, body, strlen(body),
                r == SVC_IDEM_REPLAY ? "Idempotent-Replayed: true\r\n" : NULL);
}

/* A duplicate claim: read what is stored and answer from it. */
static void replay_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  int status = 0;
  const char *body = NULL;
  svc_idem_result_t r = stored_outcome(b, 0, req->idem, &status, &body);
  svc_idem_reply(req, r, status, body);
}

void svc_idem__replay(svc_req_t *req) {
  svc_idem_t *idem = req->idem;
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {idem->scope, idem->key};
  rt_pg_add(b, svc_stmt_idem_read, 2, vals);
  svc_db(req, b, replay_done);
}

bool svc_idem__is_duplicate(const svc_req_t *req, const rt_pg_batch_t *b, int err) {
  const svc_idem_t *idem = req->idem;
  return err == RT_PG_E_UNIQUE && idem != NULL && idem->keyed && !idem->reopened &&
         idem->claim_index >= 0 && rt_pg_error(b)->stmt_index == idem->claim_index;
}

/* Two-phase: the claim in progress is committed first. */
static void reserve_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  svc_idem_t *idem = req->idem;
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  if (rt_pg_rows(b, 1) == 1) {
    idem->reserved = true;
    idem->next(req);
    return;
  }
  int status = 0;
  const char *body = NULL;
  svc_idem_result_t r = stored_outcome(b, 2, idem, &status, &body);
  svc_idem_reply(req, r, status, body);
}

void svc_idem_reserve(svc_req_t *req, svc_idem_t *idem, void (*next)(svc_req_t *req)) {
  if (!idem->keyed) {
    next(req);
    return;
  }
  idem->next = next;
  svc_uuid7(idem->token);
  char hours[16], lock[16];
  keep_hours(hours);
  snprintf(lock, sizeof lock, "%d", IDEM_LOCK_S);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  /* Lazily: the claim answers no one, and the write that ends it commits
   * durably (svc_commit_lazily). */
  svc_commit_lazily(b);
  const char *vals[] = {idem->scope, idem->key, idem->hash, hours, idem->token, lock};
  rt_pg_add(b, svc_stmt_idem_reserve, 6, vals);
  const char *read[] = {idem->scope, idem->key};
  rt_pg_add(b, svc_stmt_idem_read, 2, read);
  svc_db(req, b, reserve_done);
}

static void abandon_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  if (err != 0) RT_WARN("idempotency claim not given up", RT_LF_STR("error", rt_strerror(err)));
}

void svc_idem__abandon(svc_req_t *req) {
  svc_idem_t *idem = req->idem;
  if (idem == NULL || !idem->reserved || idem->settled) return;
  idem->settled = true;
  /* The work did not start (refused input, another service down): per
   * Stripe's rule nothing is kept, so the same key may run again. */
  rt_pg_batch_t *b = rt_pg_batch_new(req->th->pool);
  if (b == NULL) return; /* the lock lapses by itself */
  const char *vals[] = {idem->scope, idem->key, idem->token};
  rt_pg_add(b, svc_stmt_idem_abandon, 3, vals);
  if (rt_pg_submit(b, 0, abandon_done, NULL) < 0)
    RT_WARN("idempotency claim not given up: it lapses", RT_LF_INT("after_s", IDEM_LOCK_S));
}

/* ------------------------------------------------------------------------ */
/* UUID v7                                                                  */
/* ------------------------------------------------------------------------ */

/* Random bytes from the kernel, drawn 256 at a time per thread. */
static void random_bytes(uint8_t *out, size_t n) {
  static _Thread_local uint8_t pool[256];
  static _Thread_local size_t left;
  while (n > 0) {
    if (left == 0) {
      size_t got = 0;
      while (got < sizeof pool) {
        ssize_t r = getrandom(pool + got, sizeof pool - got, 0);
        if (r > 0) got += (size_t)r;
      }
      left = sizeof pool;
    }
    size_t take = n < left ? n : left;
    memcpy(out, pool + sizeof pool - left, take);
    left -= take;
    out += take;
    n -= take;
  }
}

void svc_uuid7(char out[37]) {
  static _Thread_local uint64_t last_ms;
  static _Thread_local uint16_t counter;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t ms = (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
  uint8_t rnd[10];
  random_bytes(rnd, sizeof rnd);
  if (ms <= last_ms) {
    /* Same millisecond (or the clock stepped back): count up; when the 12
     * bits run out, borrow the next millisecond. */
    ms = last_ms;
    if (++counter > 0xfff) {
      ms++;
      counter = (uint16_t)(rnd[0] & 0x3ff);
    }
  } else {
    counter = (uint16_t)(((rnd[0] << 8) | rnd[1]) & 0x3ff); /* room to count */
  }
  last_ms = ms;
  uint8_t u[16];
  for (int i = 0; i < 6; i++) u[i] = (uint8_t)(ms >> (40 - 8 * i));
  u[6] = (uint8_t)(0x70 | (counter >> 8));
  u[7] = (uint8_t)(counter & 0xff);
  u[8] = (uint8_t)(0x80 | (rnd[2] & 0x3f));
  memcpy(u + 9, rnd + 3, 7);
  char h[33];
  svc_hex(u, 16, h);
  snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}
