/*
 * jwt_corpus.h - tokens good and bad, for the JWT unit test, the
 * integration test's attack corpus (tests/integration/gateway/jwt_corpus.c)
 * and the token fuzzer's signing (tests/fuzz/fuzz_jwt.c).
 *
 * Tokens are assembled by hand here - header and payload JSON, base64url,
 * an ES256 signature made with BearSSL - rather than by the code under
 * test, so that a bug in the gateway's signing cannot hide one in its
 * verification. Header only (static functions), included by each user.
 */
#ifndef GW_JWT_CORPUS_H
#define GW_JWT_CORPUS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <bearssl.h>

#include "gw.h"

#define CORPUS_MAX 48
#define CORPUS_TOKEN_BYTES 2048

/* A signing key: the private scalar and its public key as PEM. */
typedef struct corpus_key {
  char kid[32];
  unsigned char x[BR_EC_KBUF_PRIV_MAX_SIZE];
  br_ec_private_key sk;
  char public_pem[512];
  char private_pem[512];
} corpus_key_t;

typedef struct corpus_item {
  const char *name;
  int expect;       /* 0 or the GW_E_TOKEN_* code gw_jwt_verify must give */
  char token[CORPUS_TOKEN_BYTES];
} corpus_item_t;

/* ---- keys ---------------------------------------------------------------- */

/* SubjectPublicKeyInfo of a P-256 point: a fixed prefix, then the point. */
static const unsigned char corpus_spki_p256_prefix[] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
    0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

static void corpus_pem(char *out, size_t out_bytes, const void *der, size_t len,
                       const char *banner) {
  size_t need = br_pem_encode(NULL, der, len, banner, BR_PEM_LINE64);
  if (need + 1 > out_bytes) {
    out[0] = '\0';
    return;
  }
  br_pem_encode(out, der, len, banner, BR_PEM_LINE64);
}

/* Fills the PEM texts of a key whose private scalar is set. */
static int corpus_key_finish(corpus_key_t *k) {
  unsigned char q[BR_EC_KBUF_PUB_MAX_SIZE];
  br_ec_public_key pk;
  size_t qlen = br_ec_compute_pub(br_ec_get_default(), &pk, q, &k->sk);
  if (qlen != 65) return -1;
  unsigned char spki[sizeof corpus_spki_p256_prefix + 65];
  memcpy(spki, corpus_spki_p256_prefix, sizeof corpus_spki_p256_prefix);
  memcpy(spki + sizeof corpus_spki_p256_prefix, q, 65);
  corpus_pem(k->public_pem, sizeof k->public_pem, spki, sizeof spki, "PUBLIC KEY");
  unsigned char der[256];
  size_t n = br_encode_ec_pkcs8_der(NULL, &k->sk, &pk);
  if (n == 0 || n > sizeof der) return -1;
  br_encode_ec_pkcs8_der(der, &k->sk, &pk);
  corpus_pem(k->private_pem, sizeof k->private_pem, der, n, "PRIVATE KEY");
  return 0;
}

/* A fresh P-256 key. */
static inline int corpus_key_generate(corpus_key_t *k, const char *kid) {
  br_hmac_drbg_context rng;
  br_hmac_drbg_init(&rng, &br_sha256_vtable, NULL, 0);
  br_prng_seeder seeder = br_prng_seeder_system(NULL);
  if (seeder == 0 || !seeder(&rng.vtable)) return -1;
  snprintf(k->kid, sizeof k->kid, "%s", kid);
  if (br_ec_keygen(&rng.vtable, br_ec_get_default(), &k->sk, k->x, BR_EC_secp256r1) == 0)
    return -1;
  k->sk.x = k->x;
  return corpus_key_finish(k);
}

/* A key from a PEM private key text (as deploy/certs.sh writes them). */
static inline int corpus_key_from_pem(corpus_key_t *k, const char *kid, const char *pem) {
  br_pem_decoder_context pc;
  br_skey_decoder_context dc;
  br_pem_decoder_init(&pc);
  br_skey_decoder_init(&dc);
  size_t len = strlen(pem);
  int begun = 0;
  for (int turns = 0; turns < 64 && len > 0; turns++) {
    size_t used = br_pem_decoder_push(&pc, pem, len);
    pem += used;
    len -= used;
    int ev = br_pem_decoder_event(&pc);
    if (ev == BR_PEM_BEGIN_OBJ && !begun) {
      begun = 1;
      br_pem_decoder_setdest(&pc, (void (*)(void *, const void *, size_t))br_skey_decoder_push,
                             &dc);
    } else if (ev == BR_PEM_END_OBJ) {
      break;
    }
  }
  const br_ec_private_key *sk = br_skey_decoder_get_ec(&dc);
  if (sk == NULL || sk->xlen > sizeof k->x) return -1;
  snprintf(k->kid, sizeof k->kid, "%s", kid);
  memcpy(k->x, sk->x, sk->xlen);
  k->sk = (br_ec_private_key){.curve = sk->curve, .x = k->x, .xlen = sk->xlen};
  return corpus_key_finish(k);
}

/* ---- assembling tokens ----------------------------------------------------- */

static size_t corpus_b64url(char *out, const void *data, size_t len) {
  static const char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  const unsigned char *p = data;
  size_t n = 0;
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < len) v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < len) v |= p[i + 2];
    out[n++] = alphabet[(v >> 18) & 63];
    out[n++] = alphabet[(v >> 12) & 63];
    if (i + 1 < len) out[n++] = alphabet[(v >> 6) & 63];
    if (i + 2 < len) out[n++] = alphabet[v & 63];
  }
  out[n] = '\0';
  return n;
}

/* header.payload, base64url each. */
static size_t corpus_signing_input(char *out, const char *header, const char *payload) {
  size_t n = corpus_b64url(out, header, strlen(header));
  out[n++] = '.';
  n += corpus_b64url(out + n, payload, strlen(payload));
  return n;
}

/* The order of P-256, big-endian: s and n - s both verify. */
static const unsigned char corpus_p256_n[32] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

/* s := n - s */
static void corpus_negate_s(unsigned char *s) {
  int borrow = 0;
  for (int i = 31; i >= 0; i--) {
    int d = (int)corpus_p256_n[i] - (int)s[i] - borrow;
    borrow = d < 0;
    s[i] = (unsigned char)(d + (borrow ? 256 : 0));
  }
}

/* True when s > n / 2, comparing 2s with n. */
static int corpus_s_is_high(const unsigned char *s) {
  unsigned char twice[33];
  int carry = 0;
  for (int i = 31; i >= 0; i--) {
    int v = 2 * s[i] + carry;
    twice[i + 1] = (unsigned char)v;
    carry = v >> 8;
  }
  twice[0] = (unsigned char)carry;
  if (twice[0] != 0) return 1;
  return memcmp(twice + 1, corpus_p256_n, 32) > 0;
}

/* An ES256 token: raw r||s over SHA-256 of the signing input, with the
 * low s (what the gateway issues and accepts) or the high one. */
static void corpus_es256_s(char *out, const char *header, const char *payload,
                           const corpus_key_t *k, int want_high) {
  size_t n = corpus_signing_input(out, header, payload);
  unsigned char h[32], sig[132];
  br_sha256_context c;
  br_sha256_init(&c);
  br_sha256_update(&c, out, n);
  br_sha256_out(&c, h);
  size_t slen = br_ecdsa_i31_sign_raw(br_ec_get_default(), &br_sha256_vtable, h, &k->sk, sig);
  if (slen == 64 && corpus_s_is_high(sig + 32) != want_high) corpus_negate_s(sig + 32);
  out[n++] = '.';
  corpus_b64url(out + n, sig, slen);
}

static void corpus_es256(char *out, const char *header, const char *payload,
                         const corpus_key_t *k) {
  corpus_es256_s(out, header, payload, k, 0);
}

/* An HS256 token keyed with `secret` (the public key text, in the attack). */
static void corpus_hs256(char *out, const char *header, const char *payload,
                         const char *secret) {
  size_t n = corpus_signing_input(out, header, payload);
  br_hmac_key_context kc;
  br_hmac_context hc;
  unsigned char mac[32];
  br_hmac_key_init(&kc, &br_sha256_vtable, secret, strlen(secret));
  br_hmac_init(&hc, &kc, 0);
  br_hmac_update(&hc, out, n);
  br_hmac_out(&hc, mac);
  out[n++] = '.';
  corpus_b64url(out + n, mac, sizeof mac);
}

/* Claims with the policy's iss and aud, valid around now unless changed. */
static void corpus_claims(char *out, size_t out_bytes, const gw_jwt_policy_t *p, int64_t iat,
                          int64_t nbf, int64_t exp, const char *iss, const char *aud,
                          const char *roles) {
  snprintf(out, out_bytes,
           "{\"sub\":\"0190c0de-0000-7000-8000-000000000001\",\"roles\":%s,"
           "\"iss\":\"%s\",\"aud\":\"%s\",\"iat\":%lld,\"nbf\":%lld,\"exp\":%lld,"
           "\"jti\":\"corpus\"}",
           roles, iss != NULL ? iss : p->iss, aud != NULL ? aud : p->aud, (long long)iat,
           (long long)nbf, (long long)exp);
}

static corpus_item_t *corpus_add(corpus_item_t *items, size_t *n, const char *name, int expect) {
  corpus_item_t *it = &items[(*n)++];
  it->name = name;
  it->expect = expect;
  it->token[0] = '\0';
  return it;
}

static void corpus_header(char *out, size_t out_bytes, const char *alg, const char *kid,
                          const char *extra) {
  snprintf(out, out_bytes, "{\"alg\":\"%s\",\"typ\":\"JWT\"%s%s%s%s}", alg,
           kid != NULL ? ",\"kid\":\"" : "", kid != NULL ? kid : "", kid != NULL ? "\"" : "",
           extra != NULL ? extra : "");
}

/* Tokens that must pass: one per key, and one just past exp but inside
 * the leeway. */
static void corpus_valid(corpus_item_t *items, size_t *n, const gw_jwt_policy_t *p, int64_t now,
                         const corpus_key_t *k1, const corpus_key_t *k2) {
  char h[256], c[512];
  corpus_claims(c, sizeof c, p, now, now, now + 600, NULL, NULL, "[\"customer\"]");
  corpus_header(h, sizeof h, "ES256", k1->kid, NULL);
  corpus_es256(corpus_add(items, n, "valid_kid1", 0)->token, h, c, k1);
  corpus_header(h, sizeof h, "ES256", k2->kid, NULL);
  corpus_es256(corpus_add(items, n, "valid_kid2", 0)->token, h, c, k2);
  corpus_claims(c, sizeof c, p, now - 600, now - 600, now - (int64_t)p->leeway_s / 2, NULL, NULL,
                "[\"customer\"]");
  corpus_header(h, sizeof h, "ES256", k1->kid, NULL);
  corpus_es256(corpus_add(items, n, "expired_within_leeway", 0)->token, h, c, k1);
}

/* Algorithm attacks: none, HMAC keyed with the public key, another alg
 * for the kid's key, and a signature by the other key. */
static void corpus_alg(corpus_item_t *items, size_t *n, const gw_jwt_policy_t *p, int64_t now,
                       const corpus_key_t *k1, const corpus_key_t *k2) {
  char h[256], c[512], in[1024];
  corpus_claims(c, sizeof c, p, now, now, now + 600, NULL, NULL, "[\"admin\"]");
  corpus_header(h, sizeof h, "none", k1->kid, NULL);
  size_t len = corpus_signing_input(in, h, c);
  snprintf(corpus_add(items, n, "alg_none_empty_signature", GW_E_TOKEN_MALFORMED)->token,
           CORPUS_TOKEN_BYTES, "%.*s.", (int)len, in);
  snprintf(corpus_add(items, n, "alg_none_with_signature", GW_E_TOKEN_ALG)->token,
           CORPUS_TOKEN_BYTES, "%.*s.AAAA", (int)len, in);
  corpus_header(h, sizeof h, "None", k1->kid, NULL);
  len = corpus_signing_input(in, h, c);
  snprintf(corpus_add(items, n, "alg_None_mixed_case", GW_E_TOKEN_ALG)->token, CORPUS_TOKEN_BYTES,
           "%.*s.AAAA", (int)len, in);
  corpus_header(h, sizeof h, "HS256", k1->kid, NULL);
  corpus_hs256(corpus_add(items, n, "hs256_keyed_with_public_key", GW_E_TOKEN_ALG)->token, h, c,
               k1->public_pem);
  corpus_header(h, sizeof h, "RS256", k1->kid, NULL);
  corpus_es256(corpus_add(items, n, "alg_kid_mismatch_rs256", GW_E_TOKEN_ALG)->token, h, c, k1);
  corpus_header(h, sizeof h, "ES384", k1->kid, NULL);
  corpus_es256(corpus_add(items, n, "alg_kid_mismatch_es384", GW_E_TOKEN_ALG)->token, h, c, k1);
  corpus_header(h, sizeof h, "ES256", k1->kid, NULL);
  corpus_es256(corpus_add(items, n, "signed_by_other_kid", GW_E_TOKEN_SIGNATURE)->token, h, c, k2);
}

/* Signatures that do not match: flipped, truncated, payload swapped. */
static void corpus_signature(corpus_item_t *items, size_t *n, const gw_jwt_policy_t *p,
                             int64_t now, const corpus_key_t *k1) {
  char h[256], c[512], c2[512];
  corpus_claims(c, sizeof c, p, now, now, now + 600, NULL, NULL, "[\"customer\"]");
  corpus_header(h, sizeof h, "ES256", k1->kid, NULL);
  corpus_item_t *bad = corpus_add(items, n, "bad_signature", GW_E_TOKEN_SIGNATURE);
  corpus_es256(bad->token, h, c, k1);
  char *sig = strrchr(bad->token, '.') + 1;
  sig[10] = sig[10] == 'A' ? 'B' : 'A';
  corpus_item_t *cut = corpus_add(items, n, "truncated_signature", GW_E_TOKEN_SIGNATURE);
  corpus_es256(cut->token, h, c, k1);
  cut->token[strlen(cut->token) - 8] = '\0';
  /* The signature of one payload under another (admin) payload. */
  corpus_item_t *t = corpus_add(items, n, "tampered_payload", GW_E_TOKEN_SIGNATURE);
  corpus_es256(t->token, h, c, k1);
  corpus_claims(c2, sizeof c2, p, now, now, now + 600, NULL, NULL, "[\"admin\"]");
  char in[1024];
  corpus_signing_input(in, h, c2);
  char rest[256];
  snprintf(rest, sizeof rest, "%s", strrchr(t->token, '.'));
  snprintf(t->token, CORPUS_TOKEN_BYTES, "%s%s", in, rest);
  /* The same signature as (r, n - s): valid ECDSA, refused as a second
   * encoding of one token. */
  corpus_es256_s(corpus_add(items, n, "high_s_signature", GW_E_TOKEN_SIGNATURE)->token, h, c,
                 k1, 1);
  /* The last character of a 64-byte signature carries 2 bits and 4
   * unused ones: setting one of those decodes to the same bytes in a
   * lenient decoder. */
  corpus_item_t *lb = corpus_add(items, n, "signature_unused_bits_set", GW_E_TOKEN_SIGNATURE);
  corpus_es256(lb->token, h, c, k1);
  char *last = lb->token + strlen(lb->token) - 1;
  static const char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  *last = alphabet[(strchr(alphabet, *last) - alphabet) | 1];
}

/* Claims: times, issuer, audience, typ, kid, roles, header extensions. */
static void corpus_claims_bad(corpus_item_t *items, size_t *n, const gw_jwt_policy_t *p,
                              int64_t now, const corpus_key_t *k1) {
  char h[256], c[512];
  int64_t late = (int64_t)p->leeway_s + 60;
  corpus_header(h, sizeof h, "ES256", k1->kid, NULL);
  corpus_claims(c, sizeof c, p, now - 3600, now - 3600, now - late, NULL, NULL, "[\"customer\"]");
  corpus_es256(corpus_add(items, n, "expired", GW_E_TOKEN_EXPIRED)->token, h, c, k1);
  corpus_claims(c, sizeof c, p, now, now + late, now + 3600, NULL, NULL, "[\"customer\"]");
  corpus_es256(corpus_add(items, n, "nbf_in_future", GW_E_TOKEN_EARLY)->token, h, c, k1);
  corpus_claims(c, sizeof c, p, now + late, now, now + 3600, NULL, NULL, "[\"customer\"]");
  corpus_es256(corpus_add(items, n, "iat_in_future", GW_E_TOKEN_EARLY)->token, h, c, k1);
  corpus_claims(c, sizeof c, p, now, now, now + 600, "someone-else", NULL, "[\"customer\"]");
  corpus_es256(corpus_add(items, n, "wrong_iss", GW_E_TOKEN_CLAIMS)->token, h, c, k1);
  corpus_claims(c, sizeof c, p, now, now, now + 600, NULL, "another-api", "[\"customer\"]");
  corpus_es256(corpus_add(items, n, "wrong_aud", GW_E_TOKEN_CLAIMS)->token, h, c, k1);
  corpus_claims(c, sizeof c, p, now, now, now + 600, NULL, NULL, "[\"superuser\"]");
  corpus_es256(corpus_add(items, n, "unknown_roles_only", GW_E_TOKEN_CLAIMS)->token, h, c, k1);
  corpus_claims(c, sizeof c, p, now, now, now + 600, NULL, NULL, "\"admin\"");
  corpus_es256(corpus_add(items, n, "roles_not_an_array", GW_E_TOKEN_CLAIMS)->token, h, c, k1);
  snprintf(c, sizeof c, "{\"sub\":\"x\",\"roles\":[\"customer\"],\"iss\":\"%s\",\"aud\":\"%s\"}",
           p->iss, p->aud);
  corpus_es256(corpus_add(items, n, "no_exp", GW_E_TOKEN_CLAIMS)->token, h, c, k1);
  corpus_claims(c, sizeof c, p, now, now, now + 600, NULL, NULL, "[\"customer\"]");
  snprintf(h, sizeof h, "{\"alg\":\"ES256\",\"typ\":\"at+jwt\",\"kid\":\"%s\"}", k1->kid);
  corpus_es256(corpus_add(items, n, "wrong_typ", GW_E_TOKEN_CLAIMS)->token, h, c, k1);
  corpus_header(h, sizeof h, "ES256", "no-such-kid", NULL);
  corpus_es256(corpus_add(items, n, "unknown_kid", GW_E_TOKEN_KID)->token, h, c, k1);
  corpus_header(h, sizeof h, "ES256", NULL, NULL);
  corpus_es256(corpus_add(items, n, "no_kid", GW_E_TOKEN_KID)->token, h, c, k1);
  corpus_header(h, sizeof h, "ES256", k1->kid, ",\"crit\":[\"exp\"]");
  corpus_es256(corpus_add(items, n, "crit_header", GW_E_TOKEN_MALFORMED)->token, h, c, k1);
  corpus_header(h, sizeof h, "ES256", k1->kid, ",\"jku\":\"https://evil.example/keys\"");
  corpus_es256(corpus_add(items, n, "jku_header", GW_E_TOKEN_MALFORMED)->token, h, c, k1);
}

/* Not a JWT at all. */
static void corpus_malformed(corpus_item_t *items, size_t *n) {
  snprintf(corpus_add(items, n, "garbage", GW_E_TOKEN_MALFORMED)->token, CORPUS_TOKEN_BYTES,
           "not-a-token");
  snprintf(corpus_add(items, n, "four_parts", GW_E_TOKEN_MALFORMED)->token, CORPUS_TOKEN_BYTES,
           "eyJhbGciOiJFUzI1NiJ9.e30.AAAA.AAAA");
  snprintf(corpus_add(items, n, "header_not_json", GW_E_TOKEN_MALFORMED)->token,
           CORPUS_TOKEN_BYTES, "bm90LWpzb24.e30.AAAA");
  snprintf(corpus_add(items, n, "padding_in_header", GW_E_TOKEN_MALFORMED)->token,
           CORPUS_TOKEN_BYTES, "eyJhbGciOiJFUzI1NiJ9==.e30.AAAA");
}

/* The whole corpus; returns the number of items. */
static inline size_t corpus_build(corpus_item_t *items, const gw_jwt_policy_t *p, int64_t now,
                           const corpus_key_t *k1, const corpus_key_t *k2) {
  size_t n = 0;
  corpus_valid(items, &n, p, now, k1, k2);
  corpus_alg(items, &n, p, now, k1, k2);
  corpus_signature(items, &n, p, now, k1);
  corpus_claims_bad(items, &n, p, now, k1);
  corpus_malformed(items, &n);
  return n;
}

#endif /* GW_JWT_CORPUS_H */
