/*
 * svc_idem.c - Idempotency-Key, the transactional outbox, UUID v7.
 *
 * The three share one idea: whatever a write produces (its effect, its
 * event, its answer) is decided inside the one database transaction that
 * makes it, so a crash or a retry at any point can neither lose nor double
 * anything. See svc.h for the idempotency protocol.
 */
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

static void hex(const uint8_t *in, size_t n, char *out) {
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
  hex(sum, sizeof sum, out);
}

/* ------------------------------------------------------------------------ */
/* Idempotency-Key                                                          */
/* ------------------------------------------------------------------------ */

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

int svc_idem_begin(svc_req_t *req, svc_idem_t *idem) {
  memset(idem, 0, sizeof *idem);
  idem->claim_index = -1;
  idem->finish_index = -1;
  const char *key = svc_header(req, "idempotency-key");
  if (key == NULL) return 0;
  if (!key_ok(key)) {
    svc_reply_error(req, 400, "invalid_idempotency_key",
                    "Idempotency-Key must be 1 to 128 characters of A-Z a-z 0-9 . _ : -");
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
  hex(sum, sizeof sum, idem->hash);
  return 0;
}

const char *svc_idem_scope(const svc_idem_t *idem) { return idem->keyed ? idem->scope : NULL; }

const char *svc_idem_key(const svc_idem_t *idem) { return idem->keyed ? idem->key : NULL; }

void svc_idem_add_claim(rt_pg_batch_t *b, svc_idem_t *idem) {
  if (!idem->keyed) return;
  const char *vals[] = {idem->scope, idem->key, idem->hash};
  idem->claim_index = rt_pg_add(b, svc_stmt_idem_claim, 3, vals);
}

void svc_idem_add_finish(rt_pg_batch_t *b, svc_idem_t *idem, int fail_status,
                         const char *fail_body) {
  if (!idem->keyed) return;
  char st[12];
  snprintf(st, sizeof st, "%d", fail_status);
  const char *vals[] = {idem->scope, idem->key, st, fail_body};
  idem->finish_index = rt_pg_add(b, svc_stmt_idem_finish, 4, vals);
}

svc_idem_result_t svc_idem_outcome(const rt_pg_batch_t *b, const svc_idem_t *idem,
                                   int *status, const char **body) {
  if (!idem->keyed || idem->claim_index < 0 || idem->finish_index < 0) return SVC_IDEM_UNKEYED;
  int64_t st = 0;
  const char *stored = rt_pg_value(b, idem->finish_index, 0, 1);
  const char *hash = rt_pg_value(b, idem->finish_index, 0, 2);
  if (rt_pg_int64(b, idem->finish_index, 0, 0, &st) != 0 || stored == NULL || hash == NULL) {
    *status = 500;
    *body = NULL;
    return SVC_IDEM_NEW; /* NEVER: the row is ours or committed before */
  }
  *status = (int)st;
  *body = stored;
  if (rt_pg_affected(b, idem->claim_index) == 1) return SVC_IDEM_NEW;
  return strcmp(hash, idem->hash) == 0 ? SVC_IDEM_REPLAY : SVC_IDEM_MISMATCH;
}

void svc_idem_reply(svc_req_t *req, svc_idem_result_t r, int status, const char *body) {
  if (r == SVC_IDEM_MISMATCH) {
    svc_reply_error(req, 422, "idempotency_key_reused",
                    "this Idempotency-Key was used with a different request");
    return;
  }
  if (body == NULL || status < 200 || status > 599) {
    svc_reply_error(req, 500, "internal", "stored response missing");
    return;
  }
  svc_reply_raw(req, status, body, strlen(body),
                r == SVC_IDEM_REPLAY ? "Idempotent-Replayed: true\r\n" : NULL);
}

/* ------------------------------------------------------------------------ */
/* Outbox                                                                   */
/* ------------------------------------------------------------------------ */

int svc_outbox_add(rt_pg_batch_t *b, const char *topic, const char *key,
                   const char *payload_json) {
  char id[37];
  svc_uuid7(id);
  const char *vals[] = {id, topic, key, payload_json};
  return rt_pg_add(b, svc_stmt_outbox, 4, vals);
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
  hex(u, 16, h);
  snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", h, h + 8, h + 12, h + 16, h + 20);
}
