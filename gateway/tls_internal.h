/*
 * tls_internal.h - what tls.c (certificates, keys, session cache) and
 * tls_filter.c (connections) share. Not part of the gateway's face.
 */
#ifndef GW_TLS_INTERNAL_H
#define GW_TLS_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include <bearssl.h>

#include "gw.h"
#include "internal.h"

#define GW__TLS_CHAIN_MAX 6
/* The output buffer may be smaller than a full record: the engine then
 * sends smaller records. 4 KiB of plaintext per record costs ~0.7% in
 * record overhead and saves 12 KiB per connection. The input buffer must
 * hold the largest record a client may send. */
#define GW__TLS_OBUF_BYTES (4096 + 85)
#define GW__TLS_IBUF_BYTES BR_SSL_BUFSIZE_INPUT

/* The record buffers of one engine. A connection holds a pair only while
 * one of its records is partly received (tls_filter.c says how): an idle
 * connection costs its engine's state, not 20 KiB of buffers. */
typedef struct gw__tls_bufs {
  unsigned char in[GW__TLS_IBUF_BYTES];
  unsigned char out[GW__TLS_OBUF_BYTES];
} gw__tls_bufs_t;

/* The session cache shared by every loop thread. Two BearSSL LRU caches
 * used as generations: sessions are saved into the current one and found
 * in either; every half lifetime the older is emptied and becomes the
 * current one, so a session resumes for at most one lifetime (the LRU
 * alone keeps entries forever). */
typedef struct gw__session_cache {
  const br_ssl_session_cache_class *vtable; /* first: BearSSL calls through it */
  pthread_mutex_t mu;
  br_ssl_session_cache_lru gen[2];
  unsigned char *store[2];
  size_t store_bytes;
  uint32_t cur;
  uint64_t rotated_ns;
  uint64_t half_life_ns;
  gw_tls_stats_t *stats;
} gw__session_cache_t;

/* An EC private key as libcrypto holds it (tls_ec_openssl.c; declared
 * in every build so that the layouts below do not depend on it). */
typedef struct gw__tls_ec_key gw__tls_ec_key_t;

/* One certificate chain and the private key of its leaf. */
typedef struct gw__tls_pair {
  int key_type; /* BR_KEYTYPE_EC or BR_KEYTYPE_RSA */
  br_x509_certificate chain[GW__TLS_CHAIN_MAX];
  size_t chain_len;
  gw__pem_obj_t cert_objs[GW__PEM_OBJS_MAX];
  size_t cert_objs_count;
  /* Holds the key bytes the key points into: never moved or copied. */
  br_skey_decoder_context skey;
  gw__tls_ec_key_t *ec_fast; /* libcrypto's copy of an EC key, or NULL */
  char key_desc[16];    /* "ecdsa-p256", "rsa-2048" */
  char cert_sha256[65];
} gw__tls_pair_t;

#define GW__TLS_PAIRS_MAX 2

/* What handshakes sign with: one pair, or an EC pair and an RSA pair
 * (each full handshake takes the one its client can verify, see the
 * policy in tls.c). Shared by the connections that started on it and
 * replaced whole on a reload (gw_tls_reload()), both pairs at once: each
 * connection holds a reference from its engine's set-up to its end, the
 * gateway one for the current set, and the last reference frees it.
 * BearSSL's server context points into it for as long as the connection
 * lives. */
typedef struct gw__tls_creds {
  atomic_uint refs;
  gw__tls_pair_t pairs[GW__TLS_PAIRS_MAX]; /* in the order configured */
  size_t pairs_count;
  const gw__tls_pair_t *ec;  /* one of pairs[], or NULL */
  const gw__tls_pair_t *rsa; /* one of pairs[], or NULL */
  char key_desc[40];         /* the pairs' key_desc, comma-separated */
  char cert_sha256[GW__TLS_PAIRS_MAX * 65];
} gw__tls_creds_t;

/* The policy BearSSL consults on each full handshake (not on a resumed
 * one): it picks the suite and the chain from what the client offers and
 * signs the ECDHE parameters with that chain's key. One per connection,
 * since it remembers its choice between the two calls. */
typedef struct gw__tls_policy {
  const br_ssl_server_policy_class *vtable; /* first: BearSSL calls through it */
  const gw_tls_t *tls;
  const gw__tls_creds_t *creds;  /* the connection's set */
  const gw__tls_pair_t *chosen;  /* by choose(), for do_sign(); NULL before */
} gw__tls_policy_t;

struct gw_tls {
  _Atomic(gw__tls_creds_t *) creds; /* the current set */
  char *cert_path;                  /* read again by gw_tls_reload() */
  char *key_path;
  char *rsa_cert_path;              /* the second pair's, or NULL */
  char *rsa_key_path;
  pthread_mutex_t reload_mu;        /* one reload at a time */
  const br_ec_impl *ec;   /* ECDHE (and ECDSA) arithmetic */
  br_ecdsa_sign ecdsa;    /* BearSSL's ECDSA, when libcrypto's is not used */
  br_rsa_pkcs1_sign rsa_sign;
  bool ec_libcrypto;      /* ec from libcrypto, and EC keys signed by it
                           * (tls_ec_openssl.c) */
  wire_tls_ciphers_t ciphers;   /* record ciphers, chosen once */
  char *inject_lines;           /* "Strict-Transport-Security: ...\r\n" */
  uint32_t handshake_timeout_ms;
  gw__session_cache_t cache;
  gw_tls_stats_t stats;
};

/* One connection: the engine, and its record buffers while it has some.
 * The server context comes first so that the session cache, which is
 * handed the server context, can find the connection and mark it resumed. */
struct gw_tls_conn {
  br_ssl_server_context sc;
  gw__tls_creds_t *creds; /* the chains and keys its handshake may use */
  gw__tls_policy_t policy;
  gw_tls_filter_t *filter;
  gw_tls_conn_t *next; /* the filter's live list, for the stall sweep */
  gw_tls_conn_t *prev;
  const rt_actor_t *bound_actor; /* see gw_tls_filter_conn_of() */
  gw_addr_t peer;
  int fd;
  bool limited;        /* counted in the connection limit */
  bool handshake_done;
  bool resumed;
  bool failed;         /* a call failed: the engine is not to be run again */
  uint64_t stall_since_ns; /* bytes in that made no plaintext yet; 0: none */
  gw_inject_t inject;
  gw__tls_bufs_t *bufs; /* the engine's buffers; NULL between calls when idle */
};

/* Configures a fresh engine for one connection: TLS 1.2 only, ECDHE with
 * AEAD suites only, our chains and keys, the shared cache, c->bufs as its
 * buffers. Returns 0 or GW_E_TLS when the engine refuses to reset. */
int gw__tls_engine_init(gw_tls_t *tls, gw_tls_conn_t *c);

/* Drops the connection's reference to its chain and key (at its end). */
void gw__tls_engine_done(gw_tls_conn_t *c);

#ifdef GW_HAVE_LIBCRYPTO
/* tls_ec_openssl.c: checks libcrypto's curve arithmetic against BearSSL's
 * before it is trusted with handshakes. Returns 0 or GW_E_TLS. */
int gw__tls_ec_libcrypto_init(void);
/* Frees the calling thread's libcrypto objects (loop threads free theirs
 * when they exit). */
void gw__tls_ec_libcrypto_free(void);
const br_ec_impl *gw__tls_ec_libcrypto(void);
/* libcrypto's copy of a P-256 private key. Returns 0, GW_E_KEY (not
 * P-256, or refused by libcrypto). Any thread. */
int gw__tls_ec_key_make(gw__tls_ec_key_t **out, const br_ec_private_key *sk);
/* NULL is allowed. A thread that signed with the key last may keep it
 * alive until it signs with another or exits. */
void gw__tls_ec_key_free(gw__tls_ec_key_t *key);
/* The DER ECDSA signature of a hash made by hf, into sig (72 bytes at
 * least). Returns its length, or 0 if libcrypto failed. */
size_t gw__tls_ec_key_sign(gw__tls_ec_key_t *key, const br_hash_class *hf, const void *hash,
                           void *sig);
#endif

/* The OpenSSL-style name of a suite, or "unknown". */
const char *gw__tls_suite_name(uint16_t suite);

#endif /* GW_TLS_INTERNAL_H */
