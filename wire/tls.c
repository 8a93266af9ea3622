/*
 * tls.c - credentials of the platform's inner TLS: the anchors of the
 * private CA, and a process's own certificate chain and key.
 *
 * Anchors: every certificate of the CA file becomes one. A CA certificate
 * (basicConstraints CA:TRUE) anchors the chains it signed; any other is
 * trusted as itself, which BearSSL's X.509 engine supports: the peer's
 * leaf must then carry that very key (the gateway's self-signed
 * development certificate is used so by the load harness).
 *
 * Everything here is read once, at start-up, and never written after:
 * the filters of every loop thread point into it without a lock.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <bearssl.h>

#include "tls_internal.h"

const char *wire_tls_strerror(int err) {
  switch (err) {
  case WIRE_TLS_E_PEM: return "PEM data could not be read or decoded";
  case WIRE_TLS_E_KEY: return "TLS key unusable, or not the certificate's";
  case WIRE_TLS_E_ENGINE: return "TLS handshake or record failed (peer not trusted?)";
  case WIRE_TLS_E_CA: return "CA file holds no usable certificate";
  default: return "unknown TLS error";
  }
}

/* ------------------------------------------------------------------------ */
/* Anchors                                                                  */
/* ------------------------------------------------------------------------ */

typedef struct dn_buf {
  unsigned char *data;
  size_t len;
  size_t cap;
  bool failed;
} dn_buf_t;

static void dn_append(void *ctx, const void *data, size_t len) {
  dn_buf_t *b = ctx;
  if (b->failed) return;
  if (b->len + len > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 256;
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

/* Copies the public key the decoder found (it points into the decoder). */
static int anchor_key(br_x509_trust_anchor *ta, const br_x509_pkey *pk) {
  ta->pkey.key_type = pk->key_type;
  if (pk->key_type == BR_KEYTYPE_EC) {
    ta->pkey.key.ec.curve = pk->key.ec.curve;
    ta->pkey.key.ec.q = dup_bytes(pk->key.ec.q, pk->key.ec.qlen);
    ta->pkey.key.ec.qlen = pk->key.ec.qlen;
    return ta->pkey.key.ec.q != NULL ? 0 : -ENOMEM;
  }
  if (pk->key_type == BR_KEYTYPE_RSA) {
    ta->pkey.key.rsa.n = dup_bytes(pk->key.rsa.n, pk->key.rsa.nlen);
    ta->pkey.key.rsa.nlen = pk->key.rsa.nlen;
    ta->pkey.key.rsa.e = dup_bytes(pk->key.rsa.e, pk->key.rsa.elen);
    ta->pkey.key.rsa.elen = pk->key.rsa.elen;
    return ta->pkey.key.rsa.n != NULL && ta->pkey.key.rsa.e != NULL ? 0 : -ENOMEM;
  }
  return WIRE_TLS_E_CA;
}

/* One DER certificate -> one anchor (its subject DN and key). */
static int anchor_from_der(br_x509_trust_anchor *ta, const unsigned char *der, size_t len) {
  dn_buf_t dn = {0};
  br_x509_decoder_context dc;
  br_x509_decoder_init(&dc, dn_append, &dn);
  br_x509_decoder_push(&dc, der, len);
  const br_x509_pkey *pk = br_x509_decoder_get_pkey(&dc);
  memset(ta, 0, sizeof *ta);
  if (pk == NULL || dn.failed) {
    free(dn.data);
    return pk == NULL ? WIRE_TLS_E_CA : -ENOMEM;
  }
  ta->dn.data = dn.data;
  ta->dn.len = dn.len;
  ta->flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
  int rc = anchor_key(ta, pk);
  if (rc < 0) anchor_free(ta); /* what was copied so far */
  return rc;
}

static int load_anchors(wire_tls_creds_t *k, const char *path) {
  wire_tls_pem_obj_t objs[WIRE_TLS_PEM_OBJS_MAX];
  int rc = wire_tls_pem_read(path, objs, WIRE_TLS_PEM_OBJS_MAX);
  if (rc < 0) return rc;
  size_t n = (size_t)rc;
  rc = 0;
  for (size_t i = 0; i < n && rc == 0 && k->anchors_count < WIRE_TLS_ANCHORS_MAX; i++) {
    if (strcmp(objs[i].name, "CERTIFICATE") != 0 && strcmp(objs[i].name, "X509 CERTIFICATE") != 0)
      continue;
    rc = anchor_from_der(&k->anchors[k->anchors_count], objs[i].der, objs[i].len);
    if (rc == 0) k->anchors_count++;
  }
  wire_tls_pem_free(objs, n);
  if (rc == 0 && k->anchors_count == 0) rc = WIRE_TLS_E_CA;
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Chain and key                                                            */
/* ------------------------------------------------------------------------ */

int wire_tls_chain_load(const char *path, wire_tls_pem_obj_t *objs, size_t *objs_count,
                        br_x509_certificate *chain, size_t chain_max, size_t *chain_len) {
  *objs_count = 0;
  *chain_len = 0;
  int rc = wire_tls_pem_read(path, objs, WIRE_TLS_PEM_OBJS_MAX);
  if (rc < 0) return rc;
  *objs_count = (size_t)rc;
  for (size_t i = 0; i < *objs_count && *chain_len < chain_max; i++) {
    if (strcmp(objs[i].name, "CERTIFICATE") != 0) continue;
    chain[*chain_len].data = objs[i].der;
    chain[*chain_len].data_len = objs[i].len;
    (*chain_len)++;
  }
  return *chain_len > 0 ? 0 : WIRE_TLS_E_PEM;
}

static bool is_key_label(const char *name) {
  return strcmp(name, "EC PRIVATE KEY") == 0 || strcmp(name, "RSA PRIVATE KEY") == 0 ||
         strcmp(name, "PRIVATE KEY") == 0;
}

int wire_tls_key_load(const char *path, br_skey_decoder_context *skey) {
  wire_tls_pem_obj_t objs[WIRE_TLS_PEM_OBJS_MAX];
  int rc = wire_tls_pem_read(path, objs, WIRE_TLS_PEM_OBJS_MAX);
  if (rc < 0) return rc;
  size_t n = (size_t)rc;
  rc = WIRE_TLS_E_PEM;
  for (size_t i = 0; i < n; i++) {
    if (!is_key_label(objs[i].name)) continue;
    br_skey_decoder_init(skey);
    br_skey_decoder_push(skey, objs[i].der, objs[i].len);
    rc = br_skey_decoder_last_error(skey) == 0 ? 0 : WIRE_TLS_E_PEM;
    break;
  }
  wire_tls_pem_free(objs, n);
  return rc;
}

static int ec_matches(const br_x509_pkey *pk, const br_ec_private_key *sk) {
  unsigned char q[BR_EC_KBUF_PUB_MAX_SIZE];
  if (sk == NULL || sk->curve != BR_EC_secp256r1 || pk->key.ec.curve != BR_EC_secp256r1)
    return WIRE_TLS_E_KEY;
  size_t qlen = br_ec_compute_pub(br_ec_get_default(), NULL, q, sk);
  if (qlen == 0 || qlen != pk->key.ec.qlen || memcmp(q, pk->key.ec.q, qlen) != 0)
    return WIRE_TLS_E_KEY;
  return 0;
}

static int rsa_matches(const br_x509_pkey *pk, const br_rsa_private_key *sk) {
  if (sk == NULL || sk->n_bitlen < 2048) return WIRE_TLS_E_KEY;
  unsigned char n[512];
  br_rsa_compute_modulus modulus = br_rsa_compute_modulus_get_default();
  size_t nlen = modulus(NULL, sk);
  if (nlen == 0 || nlen > sizeof n || modulus(n, sk) != nlen) return WIRE_TLS_E_KEY;
  /* The certificate's modulus may carry a leading zero byte. */
  const unsigned char *cn = pk->key.rsa.n;
  size_t cnlen = pk->key.rsa.nlen;
  while (cnlen > 0 && *cn == 0) {
    cn++;
    cnlen--;
  }
  return cnlen == nlen && memcmp(cn, n, nlen) == 0 ? 0 : WIRE_TLS_E_KEY;
}

int wire_tls_key_matches(const br_x509_pkey *pk, const br_skey_decoder_context *skey) {
  int key_type = br_skey_decoder_key_type(skey);
  if (pk == NULL || (int)pk->key_type != key_type) return WIRE_TLS_E_KEY;
  if (key_type == BR_KEYTYPE_EC) return ec_matches(pk, br_skey_decoder_get_ec(skey));
  return rsa_matches(pk, br_skey_decoder_get_rsa(skey));
}

/* The leaf's public key must be the one of our private key, of a type and
 * size we accept. */
static int check_pair(wire_tls_creds_t *k) {
  br_x509_decoder_context dc;
  br_x509_decoder_init(&dc, NULL, NULL);
  br_x509_decoder_push(&dc, k->chain[0].data, k->chain[0].data_len);
  const br_x509_pkey *pk = br_x509_decoder_get_pkey(&dc);
  /* The issuer's key type matters to static ECDH only, which our suites
   * exclude; BearSSL still wants it. */
  k->issuer_key_type = br_x509_decoder_get_signer_key_type(&dc);
  return wire_tls_key_matches(pk, &k->skey);
}

/* ------------------------------------------------------------------------ */
/* The set                                                                  */
/* ------------------------------------------------------------------------ */

static int log_failure(const char *what, const char *path, int rc) {
  RT_ERROR("TLS credentials not loaded", RT_LF_STR("file", what), RT_LF_STR("path", path),
           RT_LF_STR("error", rt_strerror(rc)));
  return rc;
}

int wire_tls_creds_load(wire_tls_creds_t **out, const char *ca_path, const char *cert_path,
                        const char *key_path) {
  assert(ca_path != NULL);
  if ((cert_path == NULL) != (key_path == NULL)) {
    RT_ERROR("a TLS certificate goes with its key", RT_LF_BOOL("cert", cert_path != NULL),
             RT_LF_BOOL("key", key_path != NULL));
    return -EINVAL;
  }
  rt_strerror_register(WIRE_TLS_E_RANGE_LO, WIRE_TLS_E_RANGE_HI, wire_tls_strerror);
  wire_tls_creds_t *k = calloc(1, sizeof *k);
  if (k == NULL) return -ENOMEM;
  int rc = load_anchors(k, ca_path);
  if (rc < 0) log_failure("ca", ca_path, rc);
  if (rc == 0 && cert_path != NULL) {
    rc = wire_tls_chain_load(cert_path, k->cert_objs, &k->cert_objs_count, k->chain,
                             WIRE_TLS_CHAIN_MAX, &k->chain_len);
    if (rc == 0) rc = wire_tls_key_load(key_path, &k->skey);
    if (rc == 0) k->key_type = br_skey_decoder_key_type(&k->skey);
    if (rc == 0) rc = check_pair(k);
    if (rc < 0) log_failure("cert and key", cert_path, rc);
  }
  if (rc < 0) {
    wire_tls_creds_free(k);
    return rc;
  }
  *out = k;
  return 0;
}

void wire_tls_creds_free(wire_tls_creds_t *k) {
  if (k == NULL) return;
  for (size_t i = 0; i < k->anchors_count; i++) anchor_free(&k->anchors[i]);
  wire_tls_pem_free(k->cert_objs, k->cert_objs_count);
  explicit_bzero(&k->skey, sizeof k->skey);
  free(k);
}
