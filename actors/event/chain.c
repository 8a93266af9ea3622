/*
 * chain.c - the audit log as a hash chain, signed checkpoints, verify.
 *
 * Life of an audited event:
 *   1. the consumer (event.c) appends it to audit_log and queues its row
 *      in audit_unchained, in the transaction that claims its id;
 *   2. the chainer (one, on loop thread 0; an advisory lock keeps it one
 *      across instances) takes up to CHAIN_BATCH queued rows in row order,
 *      gives each the next chain position and
 *          hash(n) = SHA-256(hash(n - 1) || record(n))
 *      computed here, and writes the positions, their hashes and the
 *      queue deletions in one transaction, guarded on the chain head it
 *      started from; every CHECKPOINT_EVERY records or
 *      CHECKPOINT_INTERVAL, the same transaction stores the head signed
 *      with the service's ES256 key;
 *   3. GET /v1/events pages through the chain; verify recomputes it.
 *
 * record(n), the canonical bytes of the row at chain position n, all
 * integers big-endian:
 *     "paycore.audit.v1"            16 bytes
 *     chain position n              8 bytes
 *     event id                      16 bytes (the UUID's bytes)
 *     type (topic)                  4-byte length, bytes
 *     key                           4-byte length, bytes
 *     headers                       4-byte length, bytes of the JSON text
 *     payload                       4-byte length, bytes of the JSON text
 *     recorded at                   8 bytes, signed, microseconds since
 *                                   1970-01-01 UTC (audit_log.received_at)
 * where the JSON texts are PostgreSQL's jsonb output of the stored values
 * (keys in jsonb order, ", " and ": " separators), as GET /v1/events
 * returns them in headers_text and payload_text. hash(0) is 32 zero bytes.
 *
 * A checkpoint signs SHA-256 of
 *     "paycore.checkpoint.v1" (21 bytes) || n (8) || hash(n) (32) ||
 *     signed at (8, microseconds)
 * with ECDSA P-256 (raw r || s, 64 bytes): whoever holds the public key
 * can check that the log up to n is still the one that was signed.
 *
 * One chain, not one per partition: the chainer's batches (one commit per
 * CHAIN_BATCH rows) keep it far ahead of the rate at which events arrive,
 * and one order is what an auditor can follow. `audit_chain_lag` says how
 * far behind it is.
 */
#include <assert.h>
#include <stdatomic.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <bearssl.h>

#include "event.h"

#define CHAIN_BATCH 1000
#define CHAIN_TICK_MS 200        /* looks for work even without a wake-up */
#define CHAIN_LOCK_KEY "7474201" /* pg_advisory_xact_lock: one chainer */
#define RECORD_MAGIC "paycore.audit.v1"
#define CHECKPOINT_MAGIC "paycore.checkpoint.v1"
#define VERIFY_PAGE 1000

_Static_assert(sizeof RECORD_MAGIC - 1 == 16, "the record's magic is 16 bytes");

static int s_lock, s_head, s_last_cp, s_scan, s_append, s_dequeue, s_checkpoint, s_verify_page, s_cp_range,
    s_prev, s_lag, s_cp_list;

const svc_stmt_t event_chain_stmts[] = {
    /* First in a chainer's write: one chainer at a time, across instances.
     * The statements after it see what an earlier holder committed. */
    {&s_lock, "SELECT pg_advisory_xact_lock(" CHAIN_LOCK_KEY ")", 0},
    {&s_head, "SELECT chain_seq, encode(hash, 'hex') FROM audit_chain ORDER BY chain_seq DESC LIMIT 1",
     0},
    {&s_last_cp, "SELECT coalesce(max(seq), 0) FROM audit_checkpoints", 0},
    /* Queued rows in row order with what their record needs. */
    {&s_scan,
     "SELECT a.seq, a.event_id::text, a.topic, a.key, a.headers::text, a.payload::text,"
     " (extract(epoch FROM a.received_at) * 1000000)::bigint"
     " FROM audit_unchained u JOIN audit_log a ON a.seq = u.audit_seq"
     " ORDER BY u.audit_seq LIMIT $1::int",
     1},
    /* $1 positions, $2 rows, $3 previous hashes, $4 hashes (hex), $5 the
     * head this batch starts from. A head that moved meanwhile (another
     * instance's chainer) makes this write nothing, and the chainer reload;
     * the keys (chain_seq, audit_seq) make a double position or a row
     * chained twice impossible whatever happens. */
    {&s_append,
     "INSERT INTO audit_chain (chain_seq, audit_seq, prev_hash, hash)"
     " SELECT s, a, decode(p, 'hex'), decode(h, 'hex')"
     " FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS x(s, a, p, h)"
     " WHERE (SELECT coalesce(max(chain_seq), 0) FROM audit_chain) = $5::bigint",
     5},
    /* $1 rows: those now chained leave the queue. */
    {&s_dequeue,
     "DELETE FROM audit_unchained u USING audit_chain c"
     " WHERE u.audit_seq = ANY($1::bigint[]) AND c.audit_seq = u.audit_seq",
     1},
    /* $1 position, $2 hash hex, $3 signed at (us), $4 kid, $5 signature hex */
    {&s_checkpoint,
     "INSERT INTO audit_checkpoints (seq, hash, signed_at, kid, signature)"
     " SELECT $1::bigint, decode($2, 'hex'), to_timestamp($3::bigint / 1000000.0), $4,"
     " decode($5, 'hex') WHERE EXISTS (SELECT 1 FROM audit_chain WHERE chain_seq = $1::bigint)",
     5},
    /* A page of the chain for verify: $1 from, $2 to. */
    {&s_verify_page,
     "SELECT c.chain_seq, encode(c.prev_hash, 'hex'), encode(c.hash, 'hex'), a.event_id::text,"
     " a.topic, a.key, a.headers::text, a.payload::text,"
     " (extract(epoch FROM a.received_at) * 1000000)::bigint"
     " FROM audit_chain c JOIN audit_log a ON a.seq = c.audit_seq"
     " WHERE c.chain_seq BETWEEN $1::bigint AND $2::bigint ORDER BY c.chain_seq LIMIT "
     "1000",
     2},
    /* The checkpoints in a range, and the hash before it. */
    {&s_cp_range,
     "SELECT seq, encode(hash, 'hex'), (extract(epoch FROM signed_at) * 1000000)::bigint, kid,"
     " encode(signature, 'hex') FROM audit_checkpoints WHERE seq BETWEEN $1::bigint AND"
     " $2::bigint ORDER BY seq",
     2},
    {&s_prev, "SELECT encode(hash, 'hex') FROM audit_chain WHERE chain_seq = $1::bigint", 1},
    /* Rows waiting for the chain, and how long the oldest has waited. */
    {&s_lag,
     "SELECT count(*), coalesce((extract(epoch FROM now() - min(a.received_at)) * 1000)::bigint, 0)"
     " FROM audit_unchained u JOIN audit_log a ON a.seq = u.audit_seq",
     0},
    /* $1 cursor (seq), $2 limit + 1 */
    {&s_cp_list,
     "SELECT seq::text, json_build_object('seq', seq, 'hash', encode(hash, 'hex'),"
     " 'signed_at', signed_at, 'kid', kid, 'signature', encode(signature, 'hex'))::text"
     " FROM audit_checkpoints WHERE ($1::bigint IS NULL OR seq > $1::bigint)"
     " ORDER BY seq LIMIT $2::int",
     2},
};

const size_t event_chain_stmts_count = sizeof event_chain_stmts / sizeof event_chain_stmts[0];

_Static_assert(VERIFY_PAGE == 1000, "the verify page statement says 1000");

/* ------------------------------------------------------------------------ */
/* Records, hashes, hex                                                     */
/* ------------------------------------------------------------------------ */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

static bool hex_decode(const char *in, uint8_t *out, size_t n) {
  if (in == NULL || strlen(in) != 2 * n) return false;
  for (size_t i = 0; i < n; i++) {
    int hi = hexval(in[2 * i]), lo = hexval(in[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = (uint8_t)(hi << 4 | lo);
  }
  return true;
}

static void put_be64(br_sha256_context *c, uint64_t v) {
  uint8_t b[8];
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(v >> (56 - 8 * i));
  br_sha256_update(c, b, 8);
}

static void put_field(br_sha256_context *c, const char *s) {
  size_t n = s != NULL ? strlen(s) : 0;
  uint8_t b[4] = {(uint8_t)(n >> 24), (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
  br_sha256_update(c, b, 4);
  if (n > 0) br_sha256_update(c, s, n);
}

bool event_chain_hash(const uint8_t prev[32], int64_t pos, const char *event_id, const char *type,
                      const char *key, const char *headers, const char *payload,
                      int64_t recorded_us, uint8_t out[32]) {
  uint8_t id[16];
  char compact[33];
  size_t k = 0;
  for (const char *p = event_id; p != NULL && *p != '\0' && k < 32; p++)
    if (*p != '-') compact[k++] = *p;
  compact[k] = '\0';
  if (event_id == NULL || strlen(event_id) != 36 || !hex_decode(compact, id, 16)) return false;
  br_sha256_context c;
  br_sha256_init(&c);
  br_sha256_update(&c, prev, 32);
  br_sha256_update(&c, RECORD_MAGIC, 16);
  put_be64(&c, (uint64_t)pos);
  br_sha256_update(&c, id, 16);
  put_field(&c, type);
  put_field(&c, key);
  put_field(&c, headers);
  put_field(&c, payload);
  put_be64(&c, (uint64_t)recorded_us);
  br_sha256_out(&c, out);
  return true;
}

static void checkpoint_digest(int64_t seq, const uint8_t hash[32], int64_t at_us, uint8_t out[32]) {
  br_sha256_context c;
  br_sha256_init(&c);
  br_sha256_update(&c, CHECKPOINT_MAGIC, sizeof CHECKPOINT_MAGIC - 1);
  put_be64(&c, (uint64_t)seq);
  br_sha256_update(&c, hash, 32);
  put_be64(&c, (uint64_t)at_us);
  br_sha256_out(&c, out);
}

/* ------------------------------------------------------------------------ */
/* The signing key                                                          */
/* ------------------------------------------------------------------------ */

/* SubjectPublicKeyInfo of a P-256 point: a fixed prefix, then the point. */
static const uint8_t spki_p256_prefix[] = {0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

static struct {
  bool have_private;
  bool have_public;
  uint8_t x[BR_EC_KBUF_PRIV_MAX_SIZE];
  br_ec_private_key sk;
  uint8_t q[65];
  br_ec_public_key pk;
  char kid[32];
  char public_pem[256];
  uint32_t every;
  uint32_t interval_ms;
  uint32_t window_ms; /* a round waits this long for company */
} key;

static void der_append(void *ctx, const void *data, size_t len) {
  struct {
    uint8_t *buf;
    size_t len, cap;
  } *d = ctx;
  if (d->len + len > d->cap) {
    d->len = d->cap + 1; /* too long: remembered as an error */
    return;
  }
  memcpy(d->buf + d->len, data, len);
  d->len += len;
}

/* Decodes the first PEM object of text into der; returns its length. */
static size_t pem_decode(const char *text, uint8_t *der, size_t cap) {
  br_pem_decoder_context pc;
  br_pem_decoder_init(&pc);
  struct {
    uint8_t *buf;
    size_t len, cap;
  } dest = {der, 0, cap};
  size_t len = strlen(text);
  bool in = false;
  for (int turns = 0; turns < 4096 && len > 0; turns++) {
    size_t used = br_pem_decoder_push(&pc, text, len);
    text += used;
    len -= used;
    int ev = br_pem_decoder_event(&pc);
    if (ev == BR_PEM_BEGIN_OBJ && !in) {
      in = true;
      br_pem_decoder_setdest(&pc, der_append, &dest);
    } else if (ev == BR_PEM_END_OBJ && in) {
      return dest.len <= cap ? dest.len : 0;
    } else if (ev == BR_PEM_ERROR) {
      return 0;
    }
  }
  return 0;
}

static char *read_text(const char *path) {
  FILE *f = fopen(path, "re");
  if (f == NULL) return NULL;
  char *buf = calloc(1, 16384);
  size_t n = buf ? fread(buf, 1, 16383, f) : 0;
  fclose(f);
  if (buf != NULL && n == 0) {
    free(buf);
    return NULL;
  }
  return buf;
}

static void key_finish_public(void) {
  uint8_t spki[sizeof spki_p256_prefix + 65];
  memcpy(spki, spki_p256_prefix, sizeof spki_p256_prefix);
  memcpy(spki + sizeof spki_p256_prefix, key.q, 65);
  br_pem_encode(key.public_pem, spki, sizeof spki, "PUBLIC KEY", BR_PEM_LINE64);
  key.pk = (br_ec_public_key){.curve = BR_EC_secp256r1, .q = key.q, .qlen = 65};
  uint8_t h[32];
  br_sha256_context c;
  br_sha256_init(&c);
  br_sha256_update(&c, key.q, 65);
  br_sha256_out(&c, h);
  char hx[65];
  svc_hex(h, 32, hx);
  snprintf(key.kid, sizeof key.kid, "audit-%.16s", hx);
  key.have_public = true;
}

/* A P-256 private key (PKCS#8 or SEC1 PEM). */
static int key_load_private(const char *path) {
  char *text = read_text(path);
  if (text == NULL) return -errno ? -errno : -ENOENT;
  uint8_t der[512];
  size_t n = pem_decode(text, der, sizeof der);
  free(text);
  if (n == 0) return -EINVAL;
  br_skey_decoder_context dc;
  br_skey_decoder_init(&dc);
  br_skey_decoder_push(&dc, der, n);
  const br_ec_private_key *sk = br_skey_decoder_get_ec(&dc);
  if (sk == NULL || sk->curve != BR_EC_secp256r1 || sk->xlen > sizeof key.x) return -EINVAL;
  memcpy(key.x, sk->x, sk->xlen);
  key.sk = (br_ec_private_key){.curve = sk->curve, .x = key.x, .xlen = sk->xlen};
  br_ec_public_key pk;
  if (br_ec_compute_pub(br_ec_get_default(), &pk, key.q, &key.sk) != 65) return -EINVAL;
  key.have_private = true;
  key_finish_public();
  return 0;
}

/* A P-256 public key (SubjectPublicKeyInfo PEM). */
static int key_load_public(const char *path) {
  char *text = read_text(path);
  if (text == NULL) return -ENOENT;
  uint8_t der[256];
  size_t n = pem_decode(text, der, sizeof der);
  free(text);
  if (n != sizeof spki_p256_prefix + 65 || memcmp(der, spki_p256_prefix, sizeof spki_p256_prefix))
    return -EINVAL;
  memcpy(key.q, der + sizeof spki_p256_prefix, 65);
  key_finish_public();
  return 0;
}

static bool checkpoint_sign(int64_t seq, const uint8_t hash[32], int64_t at_us, uint8_t sig[64]) {
  uint8_t d[32];
  checkpoint_digest(seq, hash, at_us, d);
  return br_ecdsa_i31_sign_raw(br_ec_get_default(), &br_sha256_vtable, d, &key.sk, sig) == 64;
}

static bool checkpoint_valid(int64_t seq, const uint8_t hash[32], int64_t at_us,
                             const uint8_t sig[64]) {
  if (!key.have_public) return false;
  uint8_t d[32];
  checkpoint_digest(seq, hash, at_us, d);
  return br_ecdsa_i31_vrfy_raw(br_ec_get_default(), d, 32, &key.pk, sig, 64) == 1;
}

int event_chain_config(void) {
  const char *path = rt_env_str("EVENT_SIGNING_KEY", NULL);
  int rc = rt_env_u32("CHECKPOINT_EVERY", 1000, 1, 100000000, &key.every);
  if (rc == 0) rc = rt_env_ms("CHECKPOINT_INTERVAL", 60000, &key.interval_ms);
  if (rc == 0) rc = rt_env_ms("CHAIN_WINDOW", 20, &key.window_ms);
  if (rc < 0) return rc;
  if (path == NULL) return 0; /* no checkpoints: warned at start */
  rc = key_load_private(path);
  if (rc < 0) {
    fprintf(stderr, "EVENT_SIGNING_KEY %s: not a P-256 private key PEM (%s)\n", path,
            rt_strerror(rc));
    return RT_E_CONFIG;
  }
  return 0;
}

const char *event_chain_public_pem(void) { return key.have_public ? key.public_pem : NULL; }
const char *event_chain_kid(void) { return key.have_public ? key.kid : NULL; }

/* ------------------------------------------------------------------------ */
/* The chainer (loop thread 0)                                              */
/* ------------------------------------------------------------------------ */

static struct {
  svc_thread_t *th;
  rt_timer_t tick;
  rt_timer_t soon;
  bool busy;        /* a round is in flight */
  bool again;       /* woken meanwhile */
  bool have_head;
  bool stopped;
  int64_t head_seq;
  uint8_t head_hash[32];
  int64_t checkpoint_seq;    /* the last one signed (0: none yet) */
  uint64_t checkpoint_ns;
  /* The round being written. */
  int64_t round_last;
  uint8_t round_hash[32];
  int round_rows;
  int round_limit;
  bool round_checkpoint;
  /* Gauges, read by /metrics on any thread. */
  _Atomic uint64_t length;
  _Atomic uint64_t lag;
  _Atomic uint64_t lag_ms;
  _Atomic uint64_t checkpoints;
  bool counting;
} ch;

static void chain_round(void);

static void chain_later(void);

/* A full round: the next one now (a backlog). Woken meanwhile: the next
 * after the window, with whatever arrives until then. */
static void round_end(bool more) {
  ch.busy = false;
  if (ch.stopped) return;
  bool again = ch.again;
  ch.again = false;
  if (more)
    chain_round();
  else if (again)
    chain_later();
}

static void append_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  if (err != 0 || rt_pg_affected(b, 1) != ch.round_rows) {
    /* Another chainer moved the head, or the database failed: start
     * again from the head as it is. */
    if (err != 0) RT_WARN("audit chain append failed", RT_LF_STR("error", rt_strerror(err)));
    ch.have_head = false;
    round_end(false);
    return;
  }
  ch.head_seq = ch.round_last;
  memcpy(ch.head_hash, ch.round_hash, 32);
  atomic_store(&ch.length, (uint64_t)ch.head_seq);
  if (ch.round_checkpoint) {
    ch.checkpoint_seq = ch.head_seq;
    ch.checkpoint_ns = rt_now_ns();
    atomic_fetch_add(&ch.checkpoints, 1);
    RT_INFO("audit checkpoint signed", RT_LF_INT("seq", ch.head_seq), RT_LF_STR("kid", key.kid));
  }
  round_end(ch.round_rows == ch.round_limit);
}

/* An array literal being built: "{a,b,c}". */
typedef struct arr {
  char *buf;
  size_t len, cap;
} arr_t;

static bool arr_reserve(arr_t *a, size_t n) {
  if (a->len + n + 1 <= a->cap) return true;
  size_t c = a->cap ? a->cap * 2 : 4096;
  while (c < a->len + n + 1) c *= 2;
  char *p = realloc(a->buf, c);
  if (p == NULL) return false;
  a->buf = p;
  a->cap = c;
  return true;
}

static bool arr_begin(arr_t *a) {
  *a = (arr_t){0};
  if (!arr_reserve(a, 1)) return false;
  a->buf[a->len++] = '{';
  a->buf[a->len] = '\0';
  return true;
}

static bool arr_add(arr_t *a, const char *item) {
  size_t n = strlen(item);
  if (!arr_reserve(a, n + 1)) return false;
  if (a->len > 1) a->buf[a->len++] = ',';
  memcpy(a->buf + a->len, item, n);
  a->len += n;
  a->buf[a->len] = '\0';
  return true;
}

static bool arr_end(arr_t *a) {
  if (!arr_reserve(a, 1)) return false;
  a->buf[a->len++] = '}';
  a->buf[a->len] = '\0';
  return true;
}

static bool checkpoint_due(int rows) {
  if (!key.have_private || rows == 0) return false;
  if (ch.head_seq + rows - ch.checkpoint_seq >= (int64_t)key.every) return true;
  return rt_now_ns() - ch.checkpoint_ns >= (uint64_t)key.interval_ms * 1000000u;
}

static void scan_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  if (err != 0 || ch.stopped) {
    round_end(false);
    return;
  }
  int n = rt_pg_rows(b, 0);
  if (n == 0) {
    round_end(false);
    return;
  }
  arr_t pos = {0}, rows = {0}, prevs = {0}, hashes = {0};
  bool ok = arr_begin(&pos) && arr_begin(&rows) && arr_begin(&prevs) && arr_begin(&hashes);
  uint8_t prev[32];
  memcpy(prev, ch.head_hash, 32);
  for (int i = 0; ok && i < n; i++) {
    int64_t seq = 0, us = 0, p = ch.head_seq + 1 + i;
    uint8_t h[32];
    ok = rt_pg_int64(b, 0, i, 0, &seq) == 0 && rt_pg_int64(b, 0, i, 6, &us) == 0 &&
         event_chain_hash(prev, p, rt_pg_value(b, 0, i, 1), rt_pg_value(b, 0, i, 2),
                          rt_pg_value(b, 0, i, 3), rt_pg_value(b, 0, i, 4),
                          rt_pg_value(b, 0, i, 5), us, h);
    char num[24], ph[65], hh[65];
    svc_hex(prev, 32, ph);
    svc_hex(h, 32, hh);
    snprintf(num, sizeof num, "%" PRId64, p);
    ok = ok && arr_add(&pos, num) && arr_add(&prevs, ph) && arr_add(&hashes, hh);
    snprintf(num, sizeof num, "%" PRId64, seq);
    ok = ok && arr_add(&rows, num);
    memcpy(prev, h, 32);
  }
  ok = ok && arr_end(&pos) && arr_end(&rows) && arr_end(&prevs) && arr_end(&hashes);
  rt_pg_batch_t *w = ok ? rt_pg_batch_new(ch.th->pool) : NULL;
  if (w != NULL) {
    rt_pg_batch_first(w); /* see chain_round() */
    ch.round_last = ch.head_seq + n;
    ch.round_rows = n;
    memcpy(ch.round_hash, prev, 32);
    char head[24], last[24];
    snprintf(head, sizeof head, "%" PRId64, ch.head_seq);
    snprintf(last, sizeof last, "%" PRId64, ch.round_last);
    rt_pg_add(w, s_lock, 0, NULL);
    const char *ap[] = {pos.buf, rows.buf, prevs.buf, hashes.buf, head};
    rt_pg_add(w, s_append, 5, ap);
    const char *dv[] = {rows.buf};
    rt_pg_add(w, s_dequeue, 1, dv);
    ch.round_checkpoint = checkpoint_due(n);
    if (ch.round_checkpoint) {
      struct timespec ts;
      clock_gettime(CLOCK_REALTIME, &ts);
      int64_t at = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
      uint8_t sig[64];
      char at_s[24], hh[65], sh[129];
      if (checkpoint_sign(ch.round_last, prev, at, sig)) {
        snprintf(at_s, sizeof at_s, "%" PRId64, at);
        svc_hex(prev, 32, hh);
        svc_hex(sig, 64, sh);
        const char *cv[] = {last, hh, at_s, key.kid, sh};
        rt_pg_add(w, s_checkpoint, 5, cv);
      } else {
        ch.round_checkpoint = false;
      }
    }
    if (rt_pg_submit(w, 0, append_done, NULL) < 0) w = NULL;
  }
  free(pos.buf);
  free(rows.buf);
  free(prevs.buf);
  free(hashes.buf);
  if (w == NULL) {
    RT_WARN("audit chain round not written now", RT_LF_INT("rows", n));
    round_end(false);
  }
}

static void head_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  if (err != 0) {
    round_end(false);
    return;
  }
  ch.head_seq = 0;
  memset(ch.head_hash, 0, 32);
  if (rt_pg_rows(b, 0) == 1 &&
      (rt_pg_int64(b, 0, 0, 0, &ch.head_seq) != 0 ||
       !hex_decode(rt_pg_value(b, 0, 0, 1), ch.head_hash, 32))) {
    rt_log(RT_LOG_ERROR, "audit chain head unreadable", NULL, 0);
    round_end(false);
    return;
  }
  if (rt_pg_int64(b, 1, 0, 0, &ch.checkpoint_seq) != 0) ch.checkpoint_seq = ch.head_seq;
  ch.have_head = true;
  if (ch.checkpoint_ns == 0) ch.checkpoint_ns = rt_now_ns();
  atomic_store(&ch.length, (uint64_t)ch.head_seq);
  ch.busy = false;
  chain_round();
}

static void chain_round(void) {
  if (ch.stopped) return;
  if (ch.busy) {
    ch.again = true;
    return;
  }
  rt_pg_batch_t *b = rt_pg_batch_new(ch.th->pool);
  if (b == NULL) return; /* the tick retries */
  /* Ahead of the deliveries waiting for the pool: after a restart busd
   * replays its backlog, hundreds at a time, and a round queued behind
   * them let the chain fall further behind while they were audited. One
   * round at a time, so they are never starved. */
  rt_pg_batch_first(b);
  ch.busy = true;
  int rc;
  if (!ch.have_head) {
    rt_pg_add(b, s_head, 0, NULL);
    rt_pg_add(b, s_last_cp, 0, NULL);
    rc = rt_pg_submit(b, 0, head_done, NULL);
  } else {
    /* A round ends at the next checkpoint's position, so that one is
     * signed every CHECKPOINT_EVERY records exactly. */
    ch.round_limit = CHAIN_BATCH;
    int64_t left = (int64_t)key.every - (ch.head_seq - ch.checkpoint_seq);
    if (key.have_private && left > 0 && left < ch.round_limit) ch.round_limit = (int)left;
    char limit[16];
    snprintf(limit, sizeof limit, "%d", ch.round_limit);
    const char *vals[] = {limit};
    rt_pg_add(b, s_scan, 1, vals);
    rc = rt_pg_submit(b, 0, scan_done, NULL);
  }
  if (rc < 0) ch.busy = false;
}

static void lag_done(rt_pg_batch_t *b, int err, void *ctx) {
  (void)ctx;
  ch.counting = false;
  int64_t n = 0, ms = 0;
  if (err == 0 && rt_pg_int64(b, 0, 0, 0, &n) == 0 && rt_pg_int64(b, 0, 0, 1, &ms) == 0) {
    atomic_store(&ch.lag, (uint64_t)n);
    atomic_store(&ch.lag_ms, (uint64_t)(ms > 0 ? ms : 0));
  }
}

static void chain_tick(rt_timer_t *t) {
  (void)t;
  chain_round();
  if (ch.counting || !rt_pg_pool_up(ch.th->pool)) return;
  rt_pg_batch_t *b = rt_pg_batch_new(ch.th->pool);
  if (b == NULL) return;
  rt_pg_add(b, s_lag, 0, NULL);
  if (rt_pg_submit(b, 0, lag_done, NULL) == 0) ch.counting = true;
}

static void chain_soon(rt_timer_t *t) {
  (void)t;
  chain_round();
}

/* At most one wake-up in flight: a burst of audited events costs one
 * message to thread 0. */
static _Atomic bool wake_posted;

static void wake_here(svc_thread_t *th, void *arg) {
  (void)th;
  (void)arg;
  atomic_store(&wake_posted, false);
  if (ch.th == NULL || ch.stopped) return;
  chain_later();
}

/* CHAIN_WINDOW to let more events join the same round: each round is two
 * transactions and a commit whatever its size, and under load a round
 * per event or two was most of the event database's work. */
static void chain_later(void) {
  if (rt_timer_armed(&ch.soon)) return;
  /* No timer to wait for company: the round now, alone. */
  if (rt_timer_start(ch.th->loop, &ch.soon, key.window_ms, 0) < 0) chain_round();
}

void event_chain_wake(void) {
  if (atomic_exchange(&wake_posted, true)) return;
  if (svc_thread_call(0, wake_here, NULL) < 0) atomic_store(&wake_posted, false); /* the tick */
}

int event_chain_start(svc_thread_t *th) {
  ch.th = th;
  rt_timer_init(&ch.tick, chain_tick, NULL);
  rt_timer_init(&ch.soon, chain_soon, NULL);
  if (!key.have_private)
    rt_log(RT_LOG_WARN, "no EVENT_SIGNING_KEY: the audit chain is kept, checkpoints are not signed",
           NULL, 0);
  else
    RT_INFO("audit checkpoints signed", RT_LF_STR("kid", key.kid), RT_LF_INT("every", key.every),
            RT_LF_INT("interval_ms", key.interval_ms));
  return rt_timer_start(th->loop, &ch.tick, CHAIN_TICK_MS, CHAIN_TICK_MS);
}

void event_chain_stop(svc_thread_t *th) {
  ch.stopped = true;
  rt_timer_stop(th->loop, &ch.tick);
  rt_timer_stop(th->loop, &ch.soon);
}

void event_chain_metrics(wire_metrics_t *m) {
  wire_metrics_gauge(m, "audit_chain_length", "Records in the audit hash chain.",
                     atomic_load(&ch.length));
  wire_metrics_gauge(m, "audit_chain_lag", "Audited events not yet in the chain.",
                     atomic_load(&ch.lag));
  wire_metrics_family(m, "audit_chain_lag_seconds", WIRE_METRICS_GAUGE,
                      "How long the oldest of them has waited.");
  wire_metrics_f64(m, NULL, 0, (double)atomic_load(&ch.lag_ms) / 1000.0);
  wire_metrics_counter(m, "audit_checkpoints_total", "Checkpoints signed by this process.",
                       atomic_load(&ch.checkpoints));
}

/* ------------------------------------------------------------------------ */
/* Verify                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Life of a verify: the head (and the hash before `from`, the anchor of a
 * range), then the checkpoints of the range, then the chain a page at a
 * time. Each record's hash is recomputed from the previous recomputed
 * hash; the first position whose stored prev_hash or hash differs, or
 * that is missing, is the broken link (expected: what the records say,
 * found: what is stored). The walk goes on to the end of the range with
 * the recomputed hashes, so a checkpoint after a rewritten record no
 * longer matches, while one after a record whose stored hash alone was
 * changed still does: the records themselves are intact.
 */
static void verify_finish(event_verify_t *v, int err) {
  free(v->cps);
  v->cps = NULL;
  v->err = err;
  v->ok = err == 0 && v->broken_seq == 0 && v->cp_bad == 0;
  v->done(v);
}

static void verify_page(event_verify_t *v);

static void note_broken(event_verify_t *v, int64_t seq, const char *what,
                        const uint8_t expected[32], const uint8_t found[32]) {
  if (v->broken_seq != 0) return; /* the first one is the one to report */
  v->broken_seq = seq;
  snprintf(v->broken_what, sizeof v->broken_what, "%s", what);
  memcpy(v->expected, expected, 32);
  memcpy(v->found, found, 32);
}

static void check_checkpoints(event_verify_t *v, int64_t seq, const uint8_t hash[32]) {
  while (v->cps_i < v->cps_n && v->cps[v->cps_i].seq < seq) v->cps_i++;
  for (; v->cps_i < v->cps_n && v->cps[v->cps_i].seq == seq; v->cps_i++) {
    const event_checkpoint_t *c = &v->cps[v->cps_i];
    /* The hash always; the signature when signed by the key at hand
     * (another kid, or no key: not judged, counted). */
    bool judged = key.have_public && strcmp(c->kid, key.kid) == 0;
    bool signed_ok = judged && checkpoint_valid(c->seq, c->hash, c->at, c->sig);
    bool good = memcmp(c->hash, hash, 32) == 0 && (!judged || signed_ok);
    v->cp_checked++;
    if (!judged) v->cp_unjudged++;
    if (seq == v->to) v->cp_at_to = good && signed_ok ? 1 : -1;
    if (!good && v->cp_bad < (int)(sizeof v->cp_bad_seq / sizeof v->cp_bad_seq[0]))
      v->cp_bad_seq[v->cp_bad] = seq;
    if (!good) v->cp_bad++;
  }
}

static void page_done(rt_pg_batch_t *b, int err, void *ctx) {
  event_verify_t *v = ctx;
  if (err != 0) {
    verify_finish(v, err);
    return;
  }
  int n = rt_pg_rows(b, 0);
  for (int i = 0; i < n; i++) {
    int64_t seq = 0, us = 0;
    uint8_t prev_stored[32], stored[32], h[32];
    if (rt_pg_int64(b, 0, i, 0, &seq) != 0 || rt_pg_int64(b, 0, i, 8, &us) != 0 ||
        !hex_decode(rt_pg_value(b, 0, i, 1), prev_stored, 32) ||
        !hex_decode(rt_pg_value(b, 0, i, 2), stored, 32)) {
      verify_finish(v, RT_PG_E_DATA);
      return;
    }
    if (seq != v->next) {
      uint8_t none[32] = {0};
      note_broken(v, v->next, "missing", v->prev, none);
      v->next = seq; /* go on from there */
    }
    if (memcmp(prev_stored, v->prev, 32) != 0) note_broken(v, seq, "prev_hash", v->prev, prev_stored);
    if (!event_chain_hash(v->prev, seq, rt_pg_value(b, 0, i, 3), rt_pg_value(b, 0, i, 4),
                          rt_pg_value(b, 0, i, 5), rt_pg_value(b, 0, i, 6),
                          rt_pg_value(b, 0, i, 7), us, h)) {
      verify_finish(v, RT_PG_E_DATA);
      return;
    }
    if (memcmp(h, stored, 32) != 0) note_broken(v, seq, "hash", h, stored);
    check_checkpoints(v, seq, h);
    memcpy(v->prev, h, 32);
    v->checked++;
    v->next = seq + 1;
  }
  if (n == VERIFY_PAGE && v->next <= v->to) {
    verify_page(v);
    return;
  }
  if (v->next <= v->to) {
    uint8_t none[32] = {0};
    note_broken(v, v->next, "missing", v->prev, none);
  }
  memcpy(v->last_hash, v->prev, 32);
  verify_finish(v, 0);
}

/* Statement stmt over positions [from, to], answered by cb. */
static void verify_query(event_verify_t *v, int stmt, int64_t from, int64_t to,
                         uint32_t deadline_ms, rt_pg_cb cb) {
  rt_pg_batch_t *b = rt_pg_batch_new(v->pool);
  if (b == NULL) {
    verify_finish(v, RT_PG_E_POOL_FULL);
    return;
  }
  char f[24], t[24];
  snprintf(f, sizeof f, "%" PRId64, from);
  snprintf(t, sizeof t, "%" PRId64, to);
  const char *vals[] = {f, t};
  rt_pg_add(b, stmt, 2, vals);
  int rc = rt_pg_submit(b, deadline_ms, cb, v);
  if (rc < 0) verify_finish(v, rc);
}

static void verify_page(event_verify_t *v) {
  verify_query(v, s_verify_page, v->next, v->to, 60000, page_done);
}

static void cps_done(rt_pg_batch_t *b, int err, void *ctx) {
  event_verify_t *v = ctx;
  if (err != 0) {
    verify_finish(v, err);
    return;
  }
  int n = rt_pg_rows(b, 0);
  v->cps = n > 0 ? calloc((size_t)n, sizeof *v->cps) : NULL;
  if (n > 0 && v->cps == NULL) {
    verify_finish(v, -ENOMEM);
    return;
  }
  for (int i = 0; i < n; i++) {
    event_checkpoint_t *c = &v->cps[v->cps_n];
    if (rt_pg_int64(b, 0, i, 0, &c->seq) == 0 && hex_decode(rt_pg_value(b, 0, i, 1), c->hash, 32) &&
        rt_pg_int64(b, 0, i, 2, &c->at) == 0 && hex_decode(rt_pg_value(b, 0, i, 4), c->sig, 64) &&
        snprintf(c->kid, sizeof c->kid, "%s", rt_pg_value(b, 0, i, 3)) < (int)sizeof c->kid)
      v->cps_n++;
  }
  v->cp_count = n;
  if (v->to < v->from) {
    verify_finish(v, 0);
    return;
  }
  verify_page(v);
}

static void anchor_done(rt_pg_batch_t *b, int err, void *ctx) {
  event_verify_t *v = ctx;
  if (err != 0) {
    verify_finish(v, err);
    return;
  }
  v->head_seq = 0;
  if (rt_pg_rows(b, 0) == 1 && (rt_pg_int64(b, 0, 0, 0, &v->head_seq) != 0 ||
                                !hex_decode(rt_pg_value(b, 0, 0, 1), v->head_hash, 32))) {
    verify_finish(v, RT_PG_E_DATA);
    return;
  }
  if (v->to == 0 || v->to > v->head_seq) v->to = v->head_seq;
  memset(v->prev, 0, 32);
  if (v->from > 1 && v->from <= v->to && !hex_decode(rt_pg_value(b, 1, 0, 0), v->prev, 32)) {
    verify_finish(v, RT_PG_E_DATA);
    return;
  }
  verify_query(v, s_cp_range, v->from, v->to, 0, cps_done);
}

int event_verify_start(event_verify_t *v) {
  assert(v->done != NULL);
  if (v->from < 1) v->from = 1;
  v->next = v->from;
  rt_pg_batch_t *b = rt_pg_batch_new(v->pool);
  if (b == NULL) return RT_PG_E_POOL_FULL;
  rt_pg_add(b, s_head, 0, NULL);
  char before[24];
  snprintf(before, sizeof before, "%" PRId64, v->from - 1);
  const char *vals[] = {before};
  rt_pg_add(b, s_prev, 1, vals);
  return rt_pg_submit(b, 0, anchor_done, v);
}

json_t *event_verify_json(const event_verify_t *v) {
  char head[65], at_to[65], exp[65], found[65];
  svc_hex(v->head_hash, 32, head);
  svc_hex(v->last_hash, 32, at_to);
  json_t *bad = json_array();
  for (int i = 0; i < v->cp_bad && i < (int)(sizeof v->cp_bad_seq / sizeof v->cp_bad_seq[0]); i++)
    json_array_append_new(bad, json_integer(v->cp_bad_seq[i]));
  json_t *broken = json_null();
  if (v->broken_seq != 0) {
    svc_hex(v->expected, 32, exp);
    svc_hex(v->found, 32, found);
    broken = json_pack("{s:I, s:s, s:s, s:s}", "seq", (json_int_t)v->broken_seq, "what",
                       v->broken_what, "expected", exp, "found", found);
  }
  return json_pack("{s:b, s:I, s:I, s:I, s:s?, s:{s:I, s:s?}, s:o, s:{s:i, s:i, s:o, s:s?, s:i}}",
                   "ok", v->ok, "from", (json_int_t)v->from, "to", (json_int_t)v->to, "checked",
                   (json_int_t)v->checked, "hash_at_to", v->checked > 0 ? at_to : NULL, "head",
                   "seq", (json_int_t)v->head_seq, "hash", v->head_seq > 0 ? head : NULL,
                   "broken", broken, "checkpoints", "checked", v->cp_checked, "bad", v->cp_bad,
                   "bad_seqs", bad, "kid", event_chain_kid(), "signatures_not_checked",
                   v->cp_unjudged);
}

int event_chain_use_public_key(const char *path) { return key_load_public(path); }

int event_chain_checkpoint_list_stmt(void) { return s_cp_list; }
