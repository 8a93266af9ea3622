/*
 * tls_client.c - TLS 1.2 under wire's HTTP client, with BearSSL's client
 * engine: the load harness reaches the gateway the way its clients do.
 *
 * The life of a connection's bytes (the client side of http_filter_t):
 *   open     an engine from the pool, reset for the server name; nothing
 *            is sent yet.
 *   output 0 the engine's first records (ClientHello) go to `wire`.
 *   output   before the handshake is done the engine takes no application
 *            data: the request waits in `held`. After, plaintext is pushed
 *            into the engine, flushed, and its records go to `wire`.
 *   input    ciphertext is pushed into the engine; decrypted bytes go to
 *            `plain`, records it answers (handshake) to `wire`. When the
 *            handshake completes here, the held request is pushed.
 *   free     the engine's keys are wiped and it goes back to the pool.
 * Each pumping loop is bounded by the bytes it can move: a turn that moves
 * nothing ends it.
 *
 * Trust: the anchors come from a PEM file. A CA certificate is a CA anchor;
 * any other (the gateway's self-signed development certificate) is trusted
 * directly, which BearSSL's X.509 engine supports: the server's
 * certificate must then carry that very key and name. The server name is
 * matched in both cases.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bearssl.h>

#include "bench.h"

#define CA_FILE_BYTES_MAX (1u << 20)
#define ANCHORS_MAX 64
#define SERVER_NAME_BYTES 256

typedef struct tls_conn {
  br_ssl_client_context cc;
  br_x509_minimal_context xc;
  bench_tls_t *tls;
  http_buf_t held;       /* plaintext waiting for the handshake */
  bool handshake_done;
  unsigned char io[BR_SSL_BUFSIZE_BIDI];
} tls_conn_t;

struct bench_tls {
  http_filter_t filter;
  br_x509_trust_anchor anchors[ANCHORS_MAX];
  size_t anchors_count;
  char server_name[SERVER_NAME_BYTES];
  rt_pool_t conns;
  uint64_t handshakes;
  uint64_t failures;
  int last_error;
};

/* ------------------------------------------------------------------------ */
/* Trust anchors from PEM                                                   */
/* ------------------------------------------------------------------------ */

typedef struct bytes {
  unsigned char *data;
  size_t len;
  size_t cap;
  bool failed;
} bytes_t;

static void bytes_append(void *ctx, const void *data, size_t len) {
  bytes_t *b = ctx;
  if (b->failed) return;
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 1024;
    while (cap < b->len + len) cap *= 2;
    unsigned char *p = realloc(b->data, cap);
    if (p == NULL) {
      b->failed = true;
      return;
    }
    b->data = p;
    b->cap = cap;
  }
  memcpy(b->data + b->len, data, len);
  b->len += len;
}

static unsigned char *dup_bytes(const void *p, size_t n) {
  unsigned char *q = malloc(n ? n : 1);
  if (q != NULL) memcpy(q, p, n);
  return q;
}

static void anchor_free(br_x509_trust_anchor *ta);

/* One DER certificate -> one anchor (its subject DN and key). */
static int anchor_from_der(br_x509_trust_anchor *ta, const unsigned char *der, size_t len) {
  bytes_t dn = {0};
  br_x509_decoder_context dc;
  br_x509_decoder_init(&dc, bytes_append, &dn);
  br_x509_decoder_push(&dc, der, len);
  const br_x509_pkey *pk = br_x509_decoder_get_pkey(&dc);
  if (pk == NULL || dn.failed) {
    free(dn.data);
    return -EINVAL;
  }
  memset(ta, 0, sizeof *ta);
  ta->dn.data = dn.data;
  ta->dn.len = dn.len;
  ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
  ta->pkey.key_type = pk->key_type;
  bool ok = false;
  if (pk->key_type == BR_KEYTYPE_EC) {
    ta->pkey.key.ec.curve = pk->key.ec.curve;
    ta->pkey.key.ec.q = dup_bytes(pk->key.ec.q, pk->key.ec.qlen);
    ta->pkey.key.ec.qlen = pk->key.ec.qlen;
    ok = ta->pkey.key.ec.q != NULL;
  } else if (pk->key_type == BR_KEYTYPE_RSA) {
    ta->pkey.key.rsa.n = dup_bytes(pk->key.rsa.n, pk->key.rsa.nlen);
    ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
    ta->pkey.key.rsa.e = dup_bytes(pk->key.rsa.e, pk->key.rsa.elen);
    ta->pkey.key.rsa.elen = pk->key.rsa.elen;
    ok = ta->pkey.key.rsa.n != NULL && ta->pkey.key.rsa.e != NULL;
  }
  if (!ok) {
    anchor_free(ta); /* what was copied so far */
    return pk->key_type == BR_KEYTYPE_EC || pk->key_type == BR_KEYTYPE_RSA ? -ENOMEM : -EINVAL;
  }
  return 0;
}

static void anchor_free(br_x509_trust_anchor *ta) {
  free(ta->dn.data);
  if (ta->pkey.key_type == BR_KEYTYPE_EC) {
    free(ta->pkey.key.ec.q);
  } else if (ta->pkey.key_type == BR_KEYTYPE_RSA) {
    free(ta->pkey.key.rsa.n);
    free(ta->pkey.key.rsa.e);
  }
  memset(ta, 0, sizeof *ta);
}

static int read_file(const char *path, char **out, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -errno;
  char *buf = malloc(CA_FILE_BYTES_MAX);
  if (buf == NULL) {
    fclose(f);
    return -ENOMEM;
  }
  size_t n = fread(buf, 1, CA_FILE_BYTES_MAX, f);
  bool too_big = n == CA_FILE_BYTES_MAX;
  fclose(f);
  if (too_big) {
    free(buf);
    return -EFBIG;
  }
  *out = buf;
  *len = n;
  return 0;
}

/* Decodes every CERTIFICATE object of the PEM text into an anchor. */
static int load_anchors(bench_tls_t *t, const char *text, size_t len) {
  br_pem_decoder_context pc;
  br_pem_decoder_init(&pc);
  bytes_t der = {0};
  bool in_cert = false;
  int rc = 0;
  while (len > 0 && rc == 0) {
    size_t used = br_pem_decoder_push(&pc, text, len);
    text += used;
    len -= used;
    switch (br_pem_decoder_event(&pc)) {
    case BR_PEM_BEGIN_OBJ:
      in_cert = strcmp(br_pem_decoder_name(&pc), "CERTIFICATE") == 0 ||
                strcmp(br_pem_decoder_name(&pc), "X509 CERTIFICATE") == 0;
      der.len = 0;
      br_pem_decoder_setdest(&pc, in_cert ? bytes_append : NULL, &der);
      break;
    case BR_PEM_END_OBJ:
      if (!in_cert) break;
      in_cert = false;
      if (der.failed || t->anchors_count == ANCHORS_MAX) {
        rc = -ENOMEM;
        break;
      }
      rc = anchor_from_der(&t->anchors[t->anchors_count], der.data, der.len);
      if (rc == 0) t->anchors_count++;
      break;
    case BR_PEM_ERROR:
      rc = -EINVAL;
      break;
    default:
      break;
    }
  }
  free(der.data);
  if (rc == 0 && t->anchors_count == 0) rc = -ENOENT;
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Engine pumping                                                           */
/* ------------------------------------------------------------------------ */

static int drain_records(br_ssl_engine_context *eng, http_buf_t *wire) {
  size_t n = 0;
  unsigned char *p = br_ssl_engine_sendrec_buf(eng, &n);
  if (p == NULL || n == 0) return 0;
  int rc = http_buf_append(wire, p, n);
  if (rc == 0) br_ssl_engine_sendrec_ack(eng, n);
  return rc;
}

static int engine_failed(tls_conn_t *c) {
  int err = br_ssl_engine_last_error(&c->cc.eng);
  c->tls->failures++;
  if (err != BR_ERR_OK) c->tls->last_error = err;
  return BENCH_E_TLS;
}

/* Pushes plaintext into the engine, records out as they fill. */
static int push_plain(tls_conn_t *c, const char *data, size_t len, http_buf_t *wire) {
  br_ssl_engine_context *eng = &c->cc.eng;
  const size_t turns_max = 2 * len + 64; /* each turn moves bytes */
  int rc = 0;
  for (size_t turns = 0; len > 0 && rc == 0; turns++) {
    if (turns == turns_max) return BENCH_E_TLS;
    unsigned st = br_ssl_engine_current_state(eng);
    if (st & BR_SSL_CLOSED) return engine_failed(c);
    if (st & BR_SSL_SENDREC) {
      rc = drain_records(eng, wire);
    } else if (st & BR_SSL_SENDAPP) {
      size_t n = 0;
      unsigned char *p = br_ssl_engine_sendapp_buf(eng, &n);
      size_t m = len < n ? len : n;
      memcpy(p, data, m);
      br_ssl_engine_sendapp_ack(eng, m);
      data += m;
      len -= m;
    } else {
      return BENCH_E_TLS;
    }
  }
  if (rc < 0) return rc;
  br_ssl_engine_flush(eng, 0);
  for (int turns = 0; turns < 4 && rc == 0; turns++) {
    if (!(br_ssl_engine_current_state(eng) & BR_SSL_SENDREC)) break;
    rc = drain_records(eng, wire);
  }
  return rc;
}

/* Once the engine takes application data: the handshake is done, and the
 * request held back until now goes out. */
static int maybe_finish_handshake(tls_conn_t *c, http_buf_t *wire) {
  if (c->handshake_done) return 0;
  if (!(br_ssl_engine_current_state(&c->cc.eng) & BR_SSL_SENDAPP)) return 0;
  c->handshake_done = true;
  c->tls->handshakes++;
  if (c->held.len == 0) return 0;
  int rc = push_plain(c, c->held.data, c->held.len, wire);
  explicit_bzero(c->held.data, c->held.len);
  http_buf_reset(&c->held);
  return rc;
}

static int tls_input(void *state, const char *data, size_t len, http_buf_t *plain,
                     http_buf_t *wire) {
  tls_conn_t *c = state;
  br_ssl_engine_context *eng = &c->cc.eng;
  size_t off = 0;
  int rc = 0;
  for (size_t turns = 0; turns < 2 * len + 64 && rc == 0; turns++) {
    unsigned st = br_ssl_engine_current_state(eng);
    if (st & BR_SSL_CLOSED) return engine_failed(c);
    if (st & BR_SSL_SENDREC) {
      rc = drain_records(eng, wire);
    } else if (st & BR_SSL_RECVAPP) {
      size_t n = 0;
      unsigned char *p = br_ssl_engine_recvapp_buf(eng, &n);
      rc = http_buf_append(plain, p, n);
      if (rc == 0) br_ssl_engine_recvapp_ack(eng, n);
    } else if ((st & BR_SSL_RECVREC) && off < len) {
      size_t n = 0;
      unsigned char *p = br_ssl_engine_recvrec_buf(eng, &n);
      size_t m = len - off < n ? len - off : n;
      memcpy(p, data + off, m);
      br_ssl_engine_recvrec_ack(eng, m);
      off += m;
    } else {
      break;
    }
  }
  if (rc < 0) return rc;
  return maybe_finish_handshake(c, wire);
}

static int tls_output(void *state, const char *data, size_t len, http_buf_t *wire) {
  tls_conn_t *c = state;
  if (len == 0) {
    /* The first flight: the ClientHello. */
    if (br_ssl_engine_current_state(&c->cc.eng) & BR_SSL_CLOSED) return engine_failed(c);
    return drain_records(&c->cc.eng, wire);
  }
  if (!c->handshake_done) return http_buf_append(&c->held, data, len);
  return push_plain(c, data, len, wire);
}

static void *tls_open(void *ctx, int fd) {
  bench_tls_t *t = ctx;
  tls_conn_t *c = rt_pool_get(&t->conns);
  if (c == NULL) return NULL;
  c->tls = t;
  http_buf_init(&c->held, 0, 0);
  br_ssl_client_init_full(&c->cc, &c->xc, t->anchors, t->anchors_count);
  br_ssl_engine_set_versions(&c->cc.eng, BR_TLS12, BR_TLS12);
  br_ssl_engine_set_buffer(&c->cc.eng, c->io, sizeof c->io, 1);
  if (!br_ssl_client_reset(&c->cc, t->server_name, 0)) {
    engine_failed(c);
    rt_pool_put(&t->conns, c);
    return NULL;
  }
  return c;
}

static void tls_free(void *state) {
  tls_conn_t *c = state;
  bench_tls_t *t = c->tls;
  if (c->held.data != NULL) explicit_bzero(c->held.data, c->held.len);
  http_buf_deinit(&c->held);
  /* The engine holds the session keys. */
  explicit_bzero(c, sizeof *c);
  rt_pool_put(&t->conns, c);
}

/* ------------------------------------------------------------------------ */
/* The filter                                                               */
/* ------------------------------------------------------------------------ */

int bench_tls_create(bench_tls_t **out, const char *ca_file, const char *server_name,
                     uint32_t conns_max) {
  bench_tls_t *t = calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  snprintf(t->server_name, sizeof t->server_name, "%s", server_name);
  char *text = NULL;
  size_t len = 0;
  int rc = read_file(ca_file, &text, &len);
  if (rc == 0) rc = load_anchors(t, text, len);
  free(text);
  if (rc < 0) {
    fprintf(stderr, "bench: cannot use %s as trust anchors: %s\n", ca_file,
            rc == -ENOENT ? "no certificate in it" : rt_strerror(rc));
    bench_tls_destroy(t);
    return BENCH_E_CA;
  }
  rc = rt_pool_init(&t->conns, "tls_client_conns", sizeof(tls_conn_t), conns_max);
  if (rc < 0) {
    bench_tls_destroy(t);
    return rc;
  }
  t->filter = (http_filter_t){.open = tls_open, .input = tls_input, .output = tls_output,
                              .free = tls_free, .ctx = t};
  *out = t;
  return 0;
}

const http_filter_t *bench_tls_filter(bench_tls_t *t) { return &t->filter; }

void bench_tls_counts(const bench_tls_t *t, uint64_t *handshakes, uint64_t *failures,
                      int *last_error) {
  *handshakes = t->handshakes;
  *failures = t->failures;
  *last_error = t->last_error;
}

void bench_tls_destroy(bench_tls_t *t) {
  if (t == NULL) return;
  if (t->conns.mem != NULL) rt_pool_deinit(&t->conns);
  for (size_t i = 0; i < t->anchors_count; i++) anchor_free(&t->anchors[i]);
  free(t);
}
