/*
 * tls_engine.c - what every BearSSL filter of ours does with its engine,
 * whatever its side or its buffers: the record ciphers set up, and the
 * bytes pumped in and out (tls.h, "Engines").
 *
 * The pumps loop on the engine's state and are bounded by the bytes they
 * can move: a turn that moves nothing ends them. What a closed engine
 * means (counted, logged, which error) is the caller's: they only say so.
 */
#include <string.h>

#include "tls.h"

/* ECDHE only (forward secrecy), AEAD records only (no CBC padding
 * oracles), in the order a server prefers: AES-128-GCM first (AES-NI makes
 * it the cheapest), then ChaCha20 for peers without AES hardware, then
 * AES-256-GCM. */
static const uint16_t suites[] = {
    BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
};

void wire_tls_ciphers_choose(wire_tls_ciphers_t *c) {
  c->aes_ctr = br_aes_x86ni_ctr_get_vtable();
  if (c->aes_ctr == NULL) c->aes_ctr = &br_aes_ct64_ctr_vtable;
  c->ghash = br_ghash_pclmul_get();
  if (c->ghash == 0) c->ghash = br_ghash_ctmul64;
  c->chacha20 = br_chacha20_sse2_get();
  if (c->chacha20 == 0) c->chacha20 = br_chacha20_ct_run;
  c->poly1305 = br_poly1305_ctmulq_get();
  if (c->poly1305 == 0) c->poly1305 = br_poly1305_ctmul_run;
}

void wire_tls_engine_profile(br_ssl_engine_context *eng, const wire_tls_ciphers_t *c,
                             const br_ec_impl *ec) {
  br_ssl_engine_set_versions(eng, BR_TLS12, BR_TLS12);
  br_ssl_engine_set_suites(eng, suites, sizeof suites / sizeof suites[0]);
  /* Hashes: the handshake transcript and PRFs of TLS 1.2 (SHA-256,
   * SHA-384) and the signature hashes a peer may ask for. No MD5, no
   * SHA-1: they serve only TLS 1.0/1.1 and weak signatures. */
  br_ssl_engine_set_hash(eng, br_sha256_ID, &br_sha256_vtable);
  br_ssl_engine_set_hash(eng, br_sha384_ID, &br_sha384_vtable);
  br_ssl_engine_set_hash(eng, br_sha512_ID, &br_sha512_vtable);
  br_ssl_engine_set_prf_sha256(eng, &br_tls12_sha256_prf);
  br_ssl_engine_set_prf_sha384(eng, &br_tls12_sha384_prf);
  br_ssl_engine_set_gcm(eng, &br_sslrec_in_gcm_vtable, &br_sslrec_out_gcm_vtable);
  br_ssl_engine_set_aes_ctr(eng, c->aes_ctr);
  br_ssl_engine_set_ghash(eng, c->ghash);
  br_ssl_engine_set_chapol(eng, &br_sslrec_in_chapol_vtable, &br_sslrec_out_chapol_vtable);
  br_ssl_engine_set_chacha20(eng, c->chacha20);
  br_ssl_engine_set_poly1305(eng, c->poly1305);
  br_ssl_engine_set_ec(eng, ec);
}

int wire_tls_engine_drain(br_ssl_engine_context *eng, http_buf_t *wire) {
  size_t n = 0;
  unsigned char *p = br_ssl_engine_sendrec_buf(eng, &n);
  if (p == NULL || n == 0) return 0;
  int rc = http_buf_append(wire, p, n);
  if (rc == 0) br_ssl_engine_sendrec_ack(eng, n);
  return rc;
}

int wire_tls_engine_input(br_ssl_engine_context *eng, const char *data, size_t len,
                          http_buf_t *plain, http_buf_t *wire, bool *sendapp_seen) {
  size_t off = 0;
  int rc = 0;
  /* Each turn moves bytes somewhere, or the loop ends: the bound is the
   * bytes in plus the records and plaintext they can turn into. */
  for (size_t turns = 0; turns < 2 * len + 64 && rc == 0; turns++) {
    unsigned st = br_ssl_engine_current_state(eng);
    if (st & BR_SSL_CLOSED) return WIRE_TLS_CLOSED;
    if (st & BR_SSL_SENDAPP) *sendapp_seen = true;
    if (st & BR_SSL_SENDREC) {
      rc = wire_tls_engine_drain(eng, wire);
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
  return rc;
}

int wire_tls_engine_push(br_ssl_engine_context *eng, const char *data, size_t len,
                         http_buf_t *wire) {
  const size_t turns_max = 2 * len + 64; /* each turn moves bytes */
  int rc = 0;
  for (size_t turns = 0; len > 0 && rc == 0; turns++) {
    if (turns == turns_max) return WIRE_TLS_E_ENGINE;
    unsigned st = br_ssl_engine_current_state(eng);
    if (st & BR_SSL_CLOSED) return WIRE_TLS_CLOSED;
    if (st & BR_SSL_SENDREC) {
      rc = wire_tls_engine_drain(eng, wire);
    } else if (st & BR_SSL_SENDAPP) {
      size_t n = 0;
      unsigned char *p = br_ssl_engine_sendapp_buf(eng, &n);
      size_t m = len < n ? len : n;
      memcpy(p, data, m);
      br_ssl_engine_sendapp_ack(eng, m);
      data += m;
      len -= m;
    } else {
      return WIRE_TLS_E_ENGINE; /* neither sends nor takes: no handshake yet */
    }
  }
  return rc;
}

int wire_tls_engine_flush(br_ssl_engine_context *eng, http_buf_t *wire) {
  br_ssl_engine_flush(eng, 0);
  int rc = 0;
  for (int turns = 0; turns < 4 && rc == 0; turns++) {
    if (!(br_ssl_engine_current_state(eng) & BR_SSL_SENDREC)) break;
    rc = wire_tls_engine_drain(eng, wire);
  }
  return rc;
}
