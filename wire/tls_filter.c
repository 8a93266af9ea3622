/*
 * tls_filter.c - one side (server or client) of the platform's inner TLS,
 * as an http_filter_t: a pool of BearSSL engines on one loop thread.
 *
 * The life of a connection's bytes:
 *   open     an engine from the pool, configured and reset; the server
 *            asks every client for a certificate chained to our anchors,
 *            the client will show its own when asked. Nothing is sent yet.
 *   output 0 (client side) the engine's first records, the ClientHello,
 *            go to `wire`.
 *   output   before the handshake is done the engine takes no application
 *            data: plaintext waits in `held`. After, it is pushed into the
 *            engine, flushed, and the records go to `wire`.
 *   input    ciphertext is pushed into the engine; decrypted bytes go to
 *            `plain`, records it answers with (handshake, alerts) to
 *            `wire`. The call that completes the handshake also sends what
 *            was held.
 *   free     the engine's keys are wiped and it goes back to the pool.
 * Each pumping loop is bounded by the bytes it can move: a turn that moves
 * nothing ends it. A peer that is refused (no certificate, another CA's,
 * the wrong name) makes the engine close with an error: the call returns
 * WIRE_TLS_E_ENGINE and the connection is closed by its owner.
 *
 * A handshake must finish within HANDSHAKE_MS of the open: a peer that
 * trickles handshake bytes is cut off at its next byte past that (one
 * that sends nothing at all is the owner's idle timeout's).
 *
 * Unlike the gateway's filter, which serves the public and lends record
 * buffers per record, each connection here owns its buffers: inner
 * connections are few, long-lived keep-alive ones.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tls_internal.h"

#define HANDSHAKE_MS 10000u
#define SERVER_NAME_BYTES 256
/* Records we build carry 4 KiB of plaintext at most (the engine cuts
 * larger writes); incoming ones may be of any legal size. */
#define OBUF_BYTES (4096 + 85)
#define IBUF_BYTES BR_SSL_BUFSIZE_INPUT

typedef struct tls_conn {
  /* Either context starts with its engine: eng_of() relies on it. */
  union {
    br_ssl_client_context cc;
    br_ssl_server_context sc;
  } ctx;
  br_x509_minimal_context xc; /* validates the peer's chain */
  wire_tls_filter_t *filter;
  http_buf_t held;            /* plaintext waiting for the handshake */
  uint64_t opened_ns;
  bool handshake_done;
  unsigned char ibuf[IBUF_BYTES];
  unsigned char obuf[OBUF_BYTES];
} tls_conn_t;

struct wire_tls_filter {
  http_filter_t http;
  const wire_tls_creds_t *creds;
  bool server;
  char server_name[SERVER_NAME_BYTES];
  rt_pool_t conns;
  wire_tls_counts_t counts;
  /* Implementations chosen once: BearSSL's "default" getters ask the CPU
   * on every call. */
  const br_ec_impl *ec;
  br_ecdsa_sign ecdsa_sign;
  br_ecdsa_vrfy ecdsa_vrfy;
  br_rsa_pkcs1_sign rsa_sign;
  br_rsa_pkcs1_vrfy rsa_vrfy;
  br_rsa_private rsa_private;
  wire_tls_ciphers_t ciphers;
};

static br_ssl_engine_context *eng_of(tls_conn_t *c) {
  _Static_assert(offsetof(br_ssl_client_context, eng) == 0, "engine first (client)");
  _Static_assert(offsetof(br_ssl_server_context, eng) == 0, "engine first (server)");
  return &c->ctx.cc.eng;
}

/* ------------------------------------------------------------------------ */
/* Engine set-up                                                            */
/* ------------------------------------------------------------------------ */

static void choose_impls(wire_tls_filter_t *f) {
  f->ec = br_ec_get_default();
  f->ecdsa_sign = br_ecdsa_sign_asn1_get_default();
  f->ecdsa_vrfy = br_ecdsa_vrfy_asn1_get_default();
  f->rsa_sign = br_rsa_pkcs1_sign_get_default();
  f->rsa_vrfy = br_rsa_pkcs1_vrfy_get_default();
  f->rsa_private = br_rsa_private_get_default();
  wire_tls_ciphers_choose(&f->ciphers);
}

/* The profile both sides share: versions, suites, hashes, ciphers, and
 * the signature checks of the peer's handshake messages. */
static void engine_profile(const wire_tls_filter_t *f, br_ssl_engine_context *eng) {
  wire_tls_engine_profile(eng, &f->ciphers, f->ec);
  br_ssl_engine_set_ecdsa(eng, f->ecdsa_vrfy);
  br_ssl_engine_set_rsavrfy(eng, f->rsa_vrfy);
  br_ssl_engine_add_flags(eng, BR_OPT_NO_RENEGOTIATION);
}

/* The X.509 engine that judges the peer's chain: our anchors only. */
static void engine_x509(const wire_tls_filter_t *f, tls_conn_t *c) {
  const wire_tls_creds_t *k = f->creds;
  br_x509_minimal_init(&c->xc, &br_sha256_vtable, k->anchors, k->anchors_count);
  br_x509_minimal_set_hash(&c->xc, br_sha256_ID, &br_sha256_vtable);
  br_x509_minimal_set_hash(&c->xc, br_sha384_ID, &br_sha384_vtable);
  br_x509_minimal_set_hash(&c->xc, br_sha512_ID, &br_sha512_vtable);
  br_x509_minimal_set_rsa(&c->xc, f->rsa_vrfy);
  br_x509_minimal_set_ecdsa(&c->xc, f->ec, f->ecdsa_vrfy);
  br_ssl_engine_set_x509(eng_of(c), &c->xc.vtable);
}

static bool server_reset(const wire_tls_filter_t *f, tls_conn_t *c) {
  const wire_tls_creds_t *k = f->creds;
  br_ssl_server_context *sc = &c->ctx.sc;
  br_ssl_server_zero(sc);
  engine_profile(f, &sc->eng);
  if (k->key_type == BR_KEYTYPE_EC) {
    br_ssl_server_set_single_ec(sc, k->chain, k->chain_len, br_skey_decoder_get_ec(&k->skey),
                                BR_KEYTYPE_SIGN, (unsigned)k->issuer_key_type, f->ec,
                                f->ecdsa_sign);
  } else {
    br_ssl_server_set_single_rsa(sc, k->chain, k->chain_len, br_skey_decoder_get_rsa(&k->skey),
                                 BR_KEYTYPE_SIGN, f->rsa_private, f->rsa_sign);
  }
  /* Asks for a client certificate; without BR_OPT_TOLERATE_NO_CLIENT_AUTH
   * a client that sends none, or one our anchors do not lead to, fails
   * the handshake. */
  br_ssl_server_set_trust_anchor_names_alt(sc, k->anchors, k->anchors_count);
  engine_x509(f, c);
  br_ssl_engine_set_buffers_bidi(&sc->eng, c->ibuf, sizeof c->ibuf, c->obuf, sizeof c->obuf);
  return br_ssl_server_reset(sc) != 0;
}

static bool client_reset(const wire_tls_filter_t *f, tls_conn_t *c) {
  const wire_tls_creds_t *k = f->creds;
  br_ssl_client_context *cc = &c->ctx.cc;
  br_ssl_client_zero(cc);
  engine_profile(f, &cc->eng);
  if (k->chain_len > 0 && k->key_type == BR_KEYTYPE_EC) {
    br_ssl_client_set_single_ec(cc, k->chain, k->chain_len, br_skey_decoder_get_ec(&k->skey),
                                BR_KEYTYPE_SIGN, (unsigned)k->issuer_key_type, f->ec,
                                f->ecdsa_sign);
  } else if (k->chain_len > 0) {
    br_ssl_client_set_single_rsa(cc, k->chain, k->chain_len, br_skey_decoder_get_rsa(&k->skey),
                                 f->rsa_sign);
  }
  engine_x509(f, c);
  br_ssl_engine_set_buffers_bidi(&cc->eng, c->ibuf, sizeof c->ibuf, c->obuf, sizeof c->obuf);
  return br_ssl_client_reset(cc, f->server_name, 0) != 0;
}

/* ------------------------------------------------------------------------ */
/* Engine pumping                                                           */
/* ------------------------------------------------------------------------ */

/* The engine closed: cleanly (close_notify) or on an error, a refused
 * peer included. Either way the connection ends; errors are counted. */
static int engine_closed(tls_conn_t *c) {
  int err = br_ssl_engine_last_error(eng_of(c));
  if (err != BR_ERR_OK) {
    c->filter->counts.failures++;
    c->filter->counts.last_error = err;
    RT_DEBUG("tls connection failed", RT_LF_INT("bearssl_error", err),
             RT_LF_BOOL("server", c->filter->server),
             RT_LF_BOOL("handshake_done", c->handshake_done));
  }
  return WIRE_TLS_E_ENGINE;
}

/* Pushes plaintext into the engine, records out as they fill, then the
 * last partial record. */
static int push_plain(tls_conn_t *c, const char *data, size_t len, http_buf_t *wire) {
  int rc = wire_tls_engine_push(eng_of(c), data, len, wire);
  if (rc == WIRE_TLS_CLOSED) return engine_closed(c);
  if (rc < 0) return rc;
  return wire_tls_engine_flush(eng_of(c), wire);
}

/* Once the engine takes application data the handshake is done, and what
 * was held until now goes out. */
static int maybe_handshake_done(tls_conn_t *c, http_buf_t *wire) {
  if (c->handshake_done) return 0;
  if (!(br_ssl_engine_current_state(eng_of(c)) & BR_SSL_SENDAPP)) return 0;
  c->handshake_done = true;
  c->filter->counts.handshakes++;
  if (c->held.len == 0) return 0;
  int rc = push_plain(c, c->held.data, c->held.len, wire);
  explicit_bzero(c->held.data, c->held.len);
  http_buf_reset(&c->held);
  return rc;
}

/* Runs the engine over `len` bytes of ciphertext. */
static int pump_input(tls_conn_t *c, const char *data, size_t len, http_buf_t *plain,
                      http_buf_t *wire) {
  bool sendapp_seen = false; /* maybe_handshake_done() asks the engine itself */
  int rc = wire_tls_engine_input(eng_of(c), data, len, plain, wire, &sendapp_seen);
  return rc == WIRE_TLS_CLOSED ? engine_closed(c) : rc;
}

/* ------------------------------------------------------------------------ */
/* The filter's four functions                                              */
/* ------------------------------------------------------------------------ */

static int tls_input(void *state, const char *data, size_t len, http_buf_t *plain,
                     http_buf_t *wire) {
  tls_conn_t *c = state;
  if (!c->handshake_done && rt_now_ns() - c->opened_ns > (uint64_t)HANDSHAKE_MS * 1000000u) {
    c->filter->counts.failures++;
    return WIRE_TLS_E_ENGINE;
  }
  int rc = pump_input(c, data, len, plain, wire);
  if (rc < 0) return rc;
  return maybe_handshake_done(c, wire);
}

static int tls_output(void *state, const char *data, size_t len, http_buf_t *wire) {
  tls_conn_t *c = state;
  if (len == 0) {
    /* The client's first flight: the ClientHello. */
    if (br_ssl_engine_current_state(eng_of(c)) & BR_SSL_CLOSED) return engine_closed(c);
    return wire_tls_engine_drain(eng_of(c), wire);
  }
  if (!c->handshake_done) return http_buf_append(&c->held, data, len);
  return push_plain(c, data, len, wire);
}

static void *tls_open(void *ctx, int fd) {
  (void)fd;
  wire_tls_filter_t *f = ctx;
  tls_conn_t *c = rt_pool_get(&f->conns);
  if (c == NULL) return NULL;
  c->filter = f;
  c->opened_ns = rt_now_ns();
  http_buf_init(&c->held, 0, 0);
  bool ok = f->server ? server_reset(f, c) : client_reset(f, c);
  if (!ok) {
    engine_closed(c);
    http_buf_deinit(&c->held);
    rt_pool_put(&f->conns, c);
    return NULL;
  }
  return c;
}

static void tls_free(void *state) {
  tls_conn_t *c = state;
  wire_tls_filter_t *f = c->filter;
  if (c->held.data != NULL) explicit_bzero(c->held.data, c->held.len);
  http_buf_deinit(&c->held);
  /* The engine holds the session keys. */
  explicit_bzero(c, sizeof *c);
  rt_pool_put(&f->conns, c);
}

bool wire_tls_conn_ready(const void *state) {
  const tls_conn_t *c = state;
  return c->handshake_done;
}

/* ------------------------------------------------------------------------ */
/* The filter                                                               */
/* ------------------------------------------------------------------------ */

static int filter_create(wire_tls_filter_t **out, const wire_tls_creds_t *creds, bool server,
                         const char *server_name, uint32_t conns_max) {
  assert(creds != NULL);
  assert(conns_max > 0);
  wire_tls_filter_t *f = calloc(1, sizeof *f);
  if (f == NULL) return -ENOMEM;
  f->creds = creds;
  f->server = server;
  if (server_name != NULL) snprintf(f->server_name, sizeof f->server_name, "%s", server_name);
  choose_impls(f);
  int rc = rt_pool_init(&f->conns, server ? "tls_server_conns" : "tls_client_conns",
                        sizeof(tls_conn_t), conns_max);
  if (rc < 0) {
    free(f);
    return rc;
  }
  f->http = (http_filter_t){
      .open = tls_open, .input = tls_input, .output = tls_output, .free = tls_free, .ctx = f};
  *out = f;
  return 0;
}

int wire_tls_server_create(wire_tls_filter_t **out, const wire_tls_creds_t *creds,
                           uint32_t conns_max) {
  if (creds->chain_len == 0) return -EINVAL;
  return filter_create(out, creds, true, NULL, conns_max);
}

int wire_tls_client_create(wire_tls_filter_t **out, const wire_tls_creds_t *creds,
                           const char *server_name, uint32_t conns_max) {
  assert(server_name != NULL);
  return filter_create(out, creds, false, server_name, conns_max);
}

const http_filter_t *wire_tls_filter_http(wire_tls_filter_t *f) { return &f->http; }

void wire_tls_filter_counts(const wire_tls_filter_t *f, wire_tls_counts_t *out) {
  *out = f->counts;
}

void wire_tls_filter_destroy(wire_tls_filter_t *f) {
  if (f == NULL) return;
  if (f->conns.mem != NULL) rt_pool_deinit(&f->conns);
  free(f);
}
