/*
 * tls_internal.h - what tls.c (credentials) and tls_filter.c (connections)
 * share. Not part of wire's face.
 */
#ifndef WIRE_TLS_INTERNAL_H
#define WIRE_TLS_INTERNAL_H

#include <bearssl.h>

#include "tls.h"

#define WIRE_TLS_ANCHORS_MAX 8
#define WIRE_TLS_CHAIN_MAX 6

struct wire_tls_creds {
  br_x509_trust_anchor anchors[WIRE_TLS_ANCHORS_MAX];
  size_t anchors_count;
  /* This process's own chain and key; chain_len 0: none. */
  br_x509_certificate chain[WIRE_TLS_CHAIN_MAX];
  size_t chain_len;
  wire_tls_pem_obj_t cert_objs[WIRE_TLS_PEM_OBJS_MAX];
  size_t cert_objs_count;
  /* Holds the key bytes the key points into: never moved or copied. */
  br_skey_decoder_context skey;
  int key_type;        /* BR_KEYTYPE_EC or BR_KEYTYPE_RSA */
  int issuer_key_type; /* of the CA that signed the leaf */
};

#endif /* WIRE_TLS_INTERNAL_H */
