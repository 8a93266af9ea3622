/*
 * tls_ec_openssl.c - elliptic-curve arithmetic for the TLS engine taken
 * from OpenSSL's libcrypto, when the build finds it.
 *
 * Why: a full TLS 1.2 handshake costs the server one ECDHE key pair, one
 * ECDH and one ECDSA signature. BearSSL 0.6 (Debian's) has only its
 * portable 31-bit code for those: about 0.15 ms per X25519 and 0.35 ms per
 * P-256 signature on our machines, where libcrypto's assembly does each in
 * 0.02-0.03 ms. Handshakes per second are bounded by exactly these three
 * operations, so only they are replaced; the protocol engine, the records
 * (AES-GCM, ChaCha20-Poly1305), the hashes, RSA, the PRF, the scalar
 * ranges (order()) and certificate parsing stay BearSSL's. Both libraries'
 * code for these curves is constant-time.
 *
 * The engine sees a br_ec_impl whose mul/mulgen for P-256 and Curve25519
 * go to libcrypto (the same 32-byte scalar for a key pair and its ECDH, so
 * the convention of the scalar does not matter). Each EC certificate key
 * gets a libcrypto copy when it is loaded (at start-up and on every
 * reload), kept with the key, and tls.c's policy signs with it. Per-thread
 * libcrypto objects are freed by a thread-exit destructor.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/param_build.h>

#include "tls_internal.h"

/* X25519 key pairs made by mulgen (ServerKeyExchange), kept until mul
 * (ClientKeyExchange) asks for the same scalar: importing a raw private
 * key makes libcrypto recompute its public key, which is the costly part.
 * A ring per thread; a pair pushed out (an abandoned handshake, or more
 * handshakes in flight on the thread than slots) is just made again. */
#define XKEYS 64

typedef struct xkey {
  unsigned char k[32];
  EVP_PKEY *pkey; /* NULL: free slot */
} xkey_t;

typedef struct thread_ec {
  EC_GROUP *p256;
  BN_CTX *bn;
  /* For the key this thread signed with last. It holds a reference to
   * that key, so another key is never found at the same address. */
  EVP_PKEY_CTX *sign;
  xkey_t xkeys[XKEYS];
  uint32_t xnext;
} thread_ec_t;

struct gw__tls_ec_key {
  EVP_PKEY *pkey;
};

static void xkey_clear(xkey_t *x) {
  EVP_PKEY_free(x->pkey);
  OPENSSL_cleanse(x, sizeof *x);
}

static pthread_key_t thread_key;
static pthread_once_t thread_once = PTHREAD_ONCE_INIT;
static bool thread_key_made;

static void thread_free(void *p) {
  thread_ec_t *t = p;
  for (int i = 0; i < XKEYS; i++) xkey_clear(&t->xkeys[i]);
  EVP_PKEY_CTX_free(t->sign);
  BN_CTX_free(t->bn);
  EC_GROUP_free(t->p256);
  free(t);
}

static void thread_key_make(void) {
  thread_key_made = pthread_key_create(&thread_key, thread_free) == 0;
}

/* This thread's objects, made on first use; NULL if libcrypto fails. */
static thread_ec_t *thread_ec(void) {
  pthread_once(&thread_once, thread_key_make);
  if (!thread_key_made) return NULL;
  thread_ec_t *t = pthread_getspecific(thread_key);
  if (t != NULL) return t;
  t = calloc(1, sizeof *t);
  if (t == NULL) return NULL;
  t->p256 = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
  t->bn = BN_CTX_new();
  if (t->p256 == NULL || t->bn == NULL || pthread_setspecific(thread_key, t) != 0) {
    thread_free(t);
    return NULL;
  }
  return t;
}

/* ------------------------------------------------------------------------ */
/* P-256                                                                    */
/* ------------------------------------------------------------------------ */

/* R = k * (P, or the generator when P is NULL), uncompressed into out[65]. */
static bool p256_mul(thread_ec_t *t, unsigned char *out, const unsigned char *P, size_t Plen,
                     const unsigned char *k, size_t klen) {
  EC_POINT *in = P != NULL ? EC_POINT_new(t->p256) : NULL;
  EC_POINT *r = EC_POINT_new(t->p256);
  BIGNUM *n = BN_bin2bn(k, (int)klen, NULL);
  bool ok = r != NULL && n != NULL && (P == NULL || in != NULL);
  if (ok) BN_set_flags(n, BN_FLG_CONSTTIME);
  /* oct2point checks that the peer's point is on the curve. */
  if (ok && P != NULL) ok = EC_POINT_oct2point(t->p256, in, P, Plen, t->bn) == 1;
  if (ok)
    ok = EC_POINT_mul(t->p256, r, P == NULL ? n : NULL, in, P == NULL ? NULL : n, t->bn) == 1;
  if (ok)
    ok = EC_POINT_point2oct(t->p256, r, POINT_CONVERSION_UNCOMPRESSED, out, 65, t->bn) == 65;
  BN_clear_free(n);
  EC_POINT_free(r);
  EC_POINT_free(in);
  return ok;
}

/* ------------------------------------------------------------------------ */
/* X25519                                                                   */
/* ------------------------------------------------------------------------ */

static bool x25519_public(thread_ec_t *t, unsigned char out[32], const unsigned char *k) {
  EVP_PKEY *priv = EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, k, 32);
  size_t n = 32;
  bool ok = priv != NULL && EVP_PKEY_get_raw_public_key(priv, out, &n) == 1 && n == 32;
  if (!ok) {
    EVP_PKEY_free(priv);
    return false;
  }
  xkey_t *x = &t->xkeys[t->xnext++ % XKEYS];
  xkey_clear(x);
  memcpy(x->k, k, 32);
  x->pkey = priv;
  return true;
}

/* The pair made for scalar k, taken out of the ring; or a fresh import. */
static EVP_PKEY *x25519_private(thread_ec_t *t, const unsigned char *k) {
  for (int i = 0; i < XKEYS; i++) {
    xkey_t *x = &t->xkeys[i];
    /* Constant-time: the scalars are secrets. */
    if (x->pkey != NULL && CRYPTO_memcmp(x->k, k, 32) == 0) {
      EVP_PKEY *p = x->pkey;
      x->pkey = NULL;
      xkey_clear(x);
      return p;
    }
  }
  return EVP_PKEY_new_raw_private_key(EVP_PKEY_X25519, NULL, k, 32);
}

/* The shared secret; libcrypto refuses an all-zero result (a small-order
 * peer point), as RFC 7748 asks. */
static bool x25519_shared(thread_ec_t *t, unsigned char point[32], const unsigned char *k) {
  EVP_PKEY *priv = x25519_private(t, k);
  EVP_PKEY *peer = EVP_PKEY_new_raw_public_key(EVP_PKEY_X25519, NULL, point, 32);
  EVP_PKEY_CTX *c = priv != NULL ? EVP_PKEY_CTX_new(priv, NULL) : NULL;
  size_t n = 32;
  bool ok = peer != NULL && c != NULL && EVP_PKEY_derive_init(c) == 1 &&
            EVP_PKEY_derive_set_peer(c, peer) == 1 && EVP_PKEY_derive(c, point, &n) == 1 &&
            n == 32;
  EVP_PKEY_CTX_free(c);
  EVP_PKEY_free(peer);
  EVP_PKEY_free(priv);
  return ok;
}

/* ------------------------------------------------------------------------ */
/* The br_ec_impl                                                           */
/* ------------------------------------------------------------------------ */

#define CURVES ((uint32_t)1 << BR_EC_secp256r1 | (uint32_t)1 << BR_EC_curve25519)

static const unsigned char *ec_generator(int curve, size_t *len) {
  return br_ec_all_m31.generator(curve, len);
}

static const unsigned char *ec_order(int curve, size_t *len) {
  return br_ec_all_m31.order(curve, len);
}

static size_t ec_xoff(int curve, size_t *len) { return br_ec_all_m31.xoff(curve, len); }

static uint32_t ec_mul(unsigned char *G, size_t Glen, const unsigned char *x, size_t xlen,
                       int curve) {
  thread_ec_t *t = thread_ec();
  if (t == NULL) return br_ec_all_m31.mul(G, Glen, x, xlen, curve);
  if (curve == BR_EC_curve25519) return Glen == 32 && xlen == 32 && x25519_shared(t, G, x);
  /* Like BearSSL: only uncompressed points. */
  if (curve != BR_EC_secp256r1 || Glen != 65 || G[0] != 0x04) return 0;
  return p256_mul(t, G, G, Glen, x, xlen);
}

static size_t ec_mulgen(unsigned char *R, const unsigned char *x, size_t xlen, int curve) {
  thread_ec_t *t = thread_ec();
  if (t == NULL) return br_ec_all_m31.mulgen(R, x, xlen, curve);
  if (curve == BR_EC_curve25519) return xlen == 32 && x25519_public(t, R, x) ? 32 : 0;
  if (curve != BR_EC_secp256r1) return 0;
  return p256_mul(t, R, NULL, 0, x, xlen) ? 65 : 0;
}

/* Only ECDSA verification needs it (client certificates): BearSSL's. */
static uint32_t ec_muladd(unsigned char *A, const unsigned char *B, size_t len,
                          const unsigned char *x, size_t xlen, const unsigned char *y,
                          size_t ylen, int curve) {
  return br_ec_all_m31.muladd(A, B, len, x, xlen, y, ylen, curve);
}

static const br_ec_impl ec_libcrypto = {
    .supported_curves = CURVES,
    .generator = ec_generator,
    .order = ec_order,
    .xoff = ec_xoff,
    .mul = ec_mul,
    .mulgen = ec_mulgen,
    .muladd = ec_muladd,
};

/* ------------------------------------------------------------------------ */
/* ECDSA with a certificate's key                                           */
/* ------------------------------------------------------------------------ */

size_t gw__tls_ec_key_sign(gw__tls_ec_key_t *key, const br_hash_class *hf, const void *hash,
                           void *sig) {
  thread_ec_t *t = thread_ec();
  if (t == NULL) return 0;
  if (t->sign != NULL && EVP_PKEY_CTX_get0_pkey(t->sign) != key->pkey) {
    EVP_PKEY_CTX_free(t->sign);
    t->sign = NULL;
  }
  if (t->sign == NULL) {
    t->sign = EVP_PKEY_CTX_new(key->pkey, NULL);
    if (t->sign == NULL) return 0;
  }
  size_t hlen = (hf->desc >> BR_HASHDESC_OUT_OFF) & BR_HASHDESC_OUT_MASK;
  size_t n = 72; /* the longest DER ECDSA P-256 signature */
  if (EVP_PKEY_sign_init(t->sign) != 1 || EVP_PKEY_sign(t->sign, sig, &n, hash, hlen) != 1)
    return 0;
  return n;
}

/* An EVP_PKEY from BearSSL's P-256 private key (scalar and public point). */
static EVP_PKEY *pkey_from(const br_ec_private_key *sk) {
  unsigned char q[65];
  if (br_ec_compute_pub(&br_ec_all_m31, NULL, q, sk) != 65) return NULL;
  OSSL_PARAM_BLD *b = OSSL_PARAM_BLD_new();
  BIGNUM *d = BN_bin2bn(sk->x, (int)sk->xlen, NULL);
  OSSL_PARAM *params = NULL;
  EVP_PKEY *pkey = NULL;
  EVP_PKEY_CTX *c = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL);
  if (b != NULL && d != NULL &&
      OSSL_PARAM_BLD_push_utf8_string(b, OSSL_PKEY_PARAM_GROUP_NAME, "prime256v1", 0) == 1 &&
      OSSL_PARAM_BLD_push_BN(b, OSSL_PKEY_PARAM_PRIV_KEY, d) == 1 &&
      OSSL_PARAM_BLD_push_octet_string(b, OSSL_PKEY_PARAM_PUB_KEY, q, sizeof q) == 1)
    params = OSSL_PARAM_BLD_to_param(b);
  if (params != NULL && c != NULL && EVP_PKEY_fromdata_init(c) == 1)
    (void)EVP_PKEY_fromdata(c, &pkey, EVP_PKEY_KEYPAIR, params);
  EVP_PKEY_CTX_free(c);
  OSSL_PARAM_free(params);
  BN_clear_free(d);
  OSSL_PARAM_BLD_free(b);
  return pkey;
}

/* Answers checked before trusting libcrypto with handshakes: P-256 against
 * BearSSL's own code, X25519 by agreeing on a shared secret. */
static bool self_test(void) {
  unsigned char k[32] = {[0] = 0x5a, [31] = 7}, a[65], b[65], c[65];
  size_t glen = 0;
  const unsigned char *g = br_ec_all_m31.generator(BR_EC_secp256r1, &glen);
  memcpy(b, g, glen);
  if (ec_mulgen(a, k, 32, BR_EC_secp256r1) != 65 || ec_mul(b, 65, k, 32, BR_EC_secp256r1) != 1 ||
      br_ec_all_m31.mulgen(c, k, 32, BR_EC_secp256r1) != 65 || memcmp(a, b, 65) != 0 ||
      memcmp(a, c, 65) != 0)
    return false;
  unsigned char ka[32] = {[0] = 0x11, [31] = 0x42}, kb[32] = {[0] = 0x22, [31] = 0x24};
  unsigned char pa[32], pb[32];
  return ec_mulgen(pa, ka, 32, BR_EC_curve25519) == 32 &&
         ec_mulgen(pb, kb, 32, BR_EC_curve25519) == 32 && ec_mul(pb, 32, ka, 32, BR_EC_curve25519) &&
         ec_mul(pa, 32, kb, 32, BR_EC_curve25519) && memcmp(pa, pb, 32) == 0;
}

int gw__tls_ec_libcrypto_init(void) {
  return thread_ec() != NULL && self_test() ? 0 : GW_E_TLS;
}

int gw__tls_ec_key_make(gw__tls_ec_key_t **out, const br_ec_private_key *sk) {
  if (sk == NULL || sk->curve != BR_EC_secp256r1) return GW_E_KEY;
  gw__tls_ec_key_t *key = calloc(1, sizeof *key);
  if (key == NULL) return -ENOMEM;
  key->pkey = pkey_from(sk);
  if (key->pkey == NULL) {
    free(key);
    return GW_E_KEY;
  }
  *out = key;
  return 0;
}

void gw__tls_ec_key_free(gw__tls_ec_key_t *key) {
  if (key == NULL) return;
  EVP_PKEY_free(key->pkey);
  free(key);
}

void gw__tls_ec_libcrypto_free(void) {
  /* The calling thread's objects; loop threads freed theirs at exit. */
  thread_ec_t *t = thread_key_made ? pthread_getspecific(thread_key) : NULL;
  if (t != NULL) {
    pthread_setspecific(thread_key, NULL);
    thread_free(t);
  }
}

const br_ec_impl *gw__tls_ec_libcrypto(void) { return &ec_libcrypto; }
