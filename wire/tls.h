/*
 * tls.h - TLS 1.2 on BearSSL for the platform's own connections: between
 * the gateway and the services, between services, and to busd. Both ends
 * are ours, so both authenticate (mutual TLS) with certificates of one
 * private CA; a peer without one is refused during the handshake.
 *
 * Pieces, in the order they appear below:
 *   errors      WIRE_TLS_E_* in -2200..-2299, wire_tls_strerror()
 *   files       small files, PEM objects (also what the gateway reads with)
 *   creds       the CA's anchors, and this process's chain and key
 *   filters     a server or a client side as an http_filter_t, per thread
 *   engines     what every BearSSL filter of ours (the gateway's public one
 *               too) does with its engine: ciphers, and the record pumps
 *
 * A filter is an http_filter_t: the HTTP server and client take it as it
 * is, and the bus (client and busd) call its four functions around their
 * own socket bytes. Profile, the same as the gateway's: TLS 1.2 only,
 * ECDHE signed by an ECDSA P-256 or RSA key, AES-GCM or
 * ChaCha20-Poly1305 records, no renegotiation.
 */
#ifndef WIRE_TLS_H
#define WIRE_TLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <bearssl.h>

#include "http.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

enum {
  WIRE_TLS_E_PEM = -2200,    /* a PEM file could not be read or decoded */
  WIRE_TLS_E_KEY = -2201,    /* a key is not usable, or not the certificate's */
  WIRE_TLS_E_ENGINE = -2202, /* the handshake or a record failed; peer refused */
  WIRE_TLS_E_CA = -2203,     /* the CA file holds no usable certificate */
};

#define WIRE_TLS_E_RANGE_LO (-2299)
#define WIRE_TLS_E_RANGE_HI (-2200)

/* A message for a WIRE_TLS_E_* code. Never returns NULL. */
const char *wire_tls_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Files and PEM                                                            */
/* ------------------------------------------------------------------------ */

#define WIRE_TLS_PEM_OBJS_MAX 8
#define WIRE_TLS_FILE_BYTES_MAX (1u << 20) /* certificates and keys are far smaller */

/* One decoded PEM object: its label ("CERTIFICATE") and DER bytes. */
typedef struct wire_tls_pem_obj {
  char name[128]; /* as long as BearSSL's decoder keeps */
  unsigned char *der;
  size_t len;
  size_t cap;
  bool failed; /* an allocation failed while decoding */
} wire_tls_pem_obj_t;

/* Reads a whole (small) file into a malloc'd, NUL-terminated buffer.
 * Returns 0, -errno, or -EFBIG above WIRE_TLS_FILE_BYTES_MAX. */
int wire_tls_read_file(const char *path, char **out, size_t *out_len);

/* Decodes every PEM object of `text` into objs (at most max). Returns the
 * count, or WIRE_TLS_E_PEM (malformed, too many, none) or -ENOMEM. On
 * error nothing needs freeing. */
int wire_tls_pem_decode(const char *text, size_t len, wire_tls_pem_obj_t *objs, size_t max);

/* Frees the DER buffers of `count` objects (and wipes them: keys). */
void wire_tls_pem_free(wire_tls_pem_obj_t *objs, size_t count);

/* wire_tls_read_file() then wire_tls_pem_decode(): the file's text is
 * wiped and freed. Returns the count of objects or an error. */
int wire_tls_pem_read(const char *path, wire_tls_pem_obj_t *objs, size_t max);

/* Reads the PEM file of a certificate chain, leaf first: its objects into
 * objs (WIRE_TLS_PEM_OBJS_MAX; *objs_count of them, to free with
 * wire_tls_pem_free() whatever the result) and, pointing into them, the
 * CERTIFICATE ones into chain (at most chain_max). Returns 0,
 * WIRE_TLS_E_PEM when it holds no certificate, or a read error. */
int wire_tls_chain_load(const char *path, wire_tls_pem_obj_t *objs, size_t *objs_count,
                        br_x509_certificate *chain, size_t chain_max, size_t *chain_len);

/* Reads the first private key (EC, RSA or PKCS#8) of a PEM file into
 * skey, which then holds its bytes; the file's text is wiped. Returns 0,
 * WIRE_TLS_E_PEM when there is no usable key, or a read error. */
int wire_tls_key_load(const char *path, br_skey_decoder_context *skey);

/* 0 when pk (a certificate's key; NULL allowed) is the public half of
 * skey's key and of a kind we accept (ECDSA P-256, RSA of 2048 bits or
 * more); WIRE_TLS_E_KEY otherwise. */
int wire_tls_key_matches(const br_x509_pkey *pk, const br_skey_decoder_context *skey);

/* ------------------------------------------------------------------------ */
/* Credentials                                                              */
/* ------------------------------------------------------------------------ */

/* What a process trusts and shows: the anchors of a CA file, and its own
 * certificate chain and key. Read-only once loaded, so every loop thread's
 * filters share one. */
typedef struct wire_tls_creds wire_tls_creds_t;

/* Loads the anchors of ca_path (every certificate in it: a CA certificate
 * anchors chains, any other is trusted as itself) and, when cert_path is
 * not NULL, a chain (leaf first) and the key of its leaf (ECDSA P-256 or
 * RSA of 2048 bits at least, checked to match). Returns 0, -errno,
 * WIRE_TLS_E_CA, WIRE_TLS_E_PEM or WIRE_TLS_E_KEY; logs which file failed.
 * -EINVAL when only one of cert_path and key_path is given. */
int wire_tls_creds_load(wire_tls_creds_t **out, const char *ca_path, const char *cert_path,
                        const char *key_path);

/* NULL is allowed. Every filter made on it must be destroyed first. */
void wire_tls_creds_free(wire_tls_creds_t *creds);

/* ------------------------------------------------------------------------ */
/* Filters                                                                  */
/* ------------------------------------------------------------------------ */

/* One side's connections on one loop thread: a pool of engines. */
typedef struct wire_tls_filter wire_tls_filter_t;

/* The server side: creds must hold a chain and key, which it shows; each
 * client must show a chain that leads to one of creds' anchors, else the
 * handshake fails. Returns 0, -EINVAL (no chain) or -ENOMEM. */
int wire_tls_server_create(wire_tls_filter_t **out, const wire_tls_creds_t *creds,
                           uint32_t conns_max);

/* The client side: the server's chain must lead to one of creds' anchors
 * and name server_name (a DNS name, or an address in the certificate's
 * subjectAltName). creds' chain, if it has one, is shown when the server
 * asks for a certificate. Returns 0 or -ENOMEM. */
int wire_tls_client_create(wire_tls_filter_t **out, const wire_tls_creds_t *creds,
                           const char *server_name, uint32_t conns_max);

/* The filter to give to the HTTP server or client, or to drive by hand. A
 * client-side open() sends nothing: output(len 0) yields the ClientHello.
 * Plaintext given to output() before the handshake is done is held and
 * sent by the input() call that completes it. */
const http_filter_t *wire_tls_filter_http(wire_tls_filter_t *f);

/* True once the connection's handshake is done (state from open()). */
bool wire_tls_conn_ready(const void *state);

/* Counters of one filter (its thread's). */
typedef struct wire_tls_counts {
  uint64_t handshakes; /* completed */
  uint64_t failures;   /* connections the engine failed (refused peers too) */
  int last_error;      /* BearSSL's code of the last failure, 0 if none */
} wire_tls_counts_t;

void wire_tls_filter_counts(const wire_tls_filter_t *f, wire_tls_counts_t *out);

/* Frees it; every connection using it must be closed. NULL is allowed. */
void wire_tls_filter_destroy(wire_tls_filter_t *f);

/* ------------------------------------------------------------------------ */
/* Engines                                                                  */
/* ------------------------------------------------------------------------ */

/* The record ciphers' implementations, chosen once per process: BearSSL's
 * "default" getters ask the CPU (cpuid) on every call, which costs a VM
 * exit per connection in a virtual machine. */
typedef struct wire_tls_ciphers {
  const br_block_ctr_class *aes_ctr;
  br_ghash ghash;
  br_chacha20_run chacha20;
  br_poly1305_run poly1305;
} wire_tls_ciphers_t;

/* Fills c with the fastest implementations this CPU has. */
void wire_tls_ciphers_choose(wire_tls_ciphers_t *c);

/* Sets our profile: TLS 1.2 only, the ECDHE suites with AEAD records in
 * our order, their hashes and PRFs, c's cipher implementations, and ec
 * for ECDHE. Signatures, certificates, flags and buffers are the
 * caller's. */
void wire_tls_engine_profile(br_ssl_engine_context *eng, const wire_tls_ciphers_t *c,
                             const br_ec_impl *ec);

/* The pumps below return this when the engine has closed (close_notify,
 * or an error: br_ssl_engine_last_error() says which). */
#define WIRE_TLS_CLOSED 1

/* Moves the records the engine wants to send into `wire`. Returns 0 or an
 * http_buf error. */
int wire_tls_engine_drain(br_ssl_engine_context *eng, http_buf_t *wire);

/* Runs the engine over `len` bytes of ciphertext: decrypted bytes are
 * appended to `plain`, records the engine answers with to `wire`.
 * *sendapp_seen is set when the engine took application data at any turn
 * (its handshake is done). Returns 0, WIRE_TLS_CLOSED, or an http_buf
 * error. */
int wire_tls_engine_input(br_ssl_engine_context *eng, const char *data, size_t len,
                          http_buf_t *plain, http_buf_t *wire, bool *sendapp_seen);

/* Pushes plaintext into the engine, moving full records to `wire` as its
 * buffer fills (the last partial record stays: wire_tls_engine_flush()).
 * Returns 0, WIRE_TLS_CLOSED, WIRE_TLS_E_ENGINE when the engine takes
 * nothing (no handshake yet), or an http_buf error. */
int wire_tls_engine_push(br_ssl_engine_context *eng, const char *data, size_t len,
                         http_buf_t *wire);

/* Sends the partly filled record now, and drains it to `wire`. */
int wire_tls_engine_flush(br_ssl_engine_context *eng, http_buf_t *wire);

#endif /* WIRE_TLS_H */
