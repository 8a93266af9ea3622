/*
 * jwt.c - signing and verifying access tokens.
 *
 * libjwt (1.10) signs and checks signatures, but it lets the token's own
 * header choose the algorithm: given an RSA or EC public key and a token
 * that says HS256, it would check an HMAC keyed with the public key text,
 * which anyone can compute. So the header is decoded here first and every
 * decision is ours: the kid picks the key, the key fixes the algorithm,
 * and the token's "alg" must simply agree. libjwt then only runs the
 * signature check of that algorithm, and the claims are checked here too
 * (libjwt 1.10 does not look at exp, nbf, iss or aud at all).
 */
#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include <jansson.h>
#include <jwt.h>

#include "gw.h"
#include "internal.h"

#define TOKEN_BYTES_MAX 8192
#define HEADER_BYTES_MAX 1024
#define PAYLOAD_BYTES_MAX 4096

typedef struct jwt_key {
  char kid[GW_JWT_KID_BYTES_MAX];
  gw_jwt_alg_t alg;
  char *public_pem;
  char *private_pem; /* NULL unless this key may sign */
} jwt_key_t;

struct gw_jwt_keys {
  jwt_key_t keys[GW_JWT_KEYS_MAX];
  size_t count;
  int signer; /* index, or -1 */
};

/* ------------------------------------------------------------------------ */
/* Roles                                                                    */
/* ------------------------------------------------------------------------ */

static const char *const role_names[GW_ROLES_COUNT] = GW_ROLE_NAMES;

uint32_t gw_role_parse(const char *name, size_t len) {
  for (uint32_t i = 0; i < GW_ROLES_COUNT; i++) {
    if (strlen(role_names[i]) == len && memcmp(role_names[i], name, len) == 0) return 1u << i;
  }
  return 0;
}

const char *gw_role_name(uint32_t bit) {
  for (uint32_t i = 0; i < GW_ROLES_COUNT; i++)
    if (bit == 1u << i) return role_names[i];
  return NULL;
}

void gw_roles_format(uint32_t roles, char *out, size_t out_bytes) {
  size_t n = 0;
  if (out_bytes == 0) return;
  out[0] = '\0';
  for (uint32_t i = 0; i < GW_ROLES_COUNT; i++) {
    if (!(roles & (1u << i))) continue;
    int w = snprintf(out + n, out_bytes - n, "%s%s", n > 0 ? "," : "", role_names[i]);
    if (w < 0 || (size_t)w >= out_bytes - n) return;
    n += (size_t)w;
  }
}

/* ------------------------------------------------------------------------ */
/* base64url                                                                */
/* ------------------------------------------------------------------------ */

static int b64url_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

/* Strict: no padding, no whitespace, and unused low bits of the last
 * character must be zero, so each value has exactly one encoding. */
int gw_b64url_decode(const char *in, size_t in_len, uint8_t *out, size_t out_bytes) {
  if (in_len % 4 == 1) return -EINVAL;
  size_t need = in_len / 4 * 3 + (in_len % 4 ? in_len % 4 - 1 : 0);
  if (need > out_bytes) return -EINVAL;
  uint32_t acc = 0;
  int bits = 0;
  size_t n = 0;
  for (size_t i = 0; i < in_len; i++) {
    int v = b64url_value(in[i]);
    if (v < 0) return -EINVAL;
    acc = (acc << 6) | (uint32_t)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[n++] = (uint8_t)(acc >> bits);
    }
  }
  if (bits > 0 && (acc & ((1u << bits) - 1)) != 0) return -EINVAL;
  return (int)n;
}

/* Encodes without padding; out must hold 4 * ceil(len / 3) + 1 bytes. */
static size_t b64url_encode(const uint8_t *in, size_t len, char *out) {
  static const char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  size_t n = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    acc = (acc << 8) | in[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out[n++] = alphabet[(acc >> bits) & 63];
    }
  }
  if (bits > 0) out[n++] = alphabet[(acc << (6 - bits)) & 63];
  out[n] = '\0';
  return n;
}

/* ------------------------------------------------------------------------ */
/* ECDSA signatures: one accepted encoding                                  */
/* ------------------------------------------------------------------------ */

/*
 * An ECDSA signature (r, s) is also valid as (r, n - s): anyone holding a
 * token can make a second, different token string that verifies. We sign
 * with the low s (s <= n / 2, as Bitcoin's BIP 62 and libsecp256k1 do)
 * and refuse the high one, so each token has exactly one signature; with
 * the strict base64url of every segment, one token string, which is what
 * the verified-token cache is keyed on.
 */
#define ES256_PART_BYTES 32

/* The order n of P-256 and n / 2 (rounded down), big-endian. */
static const uint8_t p256_n[ES256_PART_BYTES] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};
static const uint8_t p256_half_n[ES256_PART_BYTES] = {
    0x7f, 0xff, 0xff, 0xff, 0x80, 0x00, 0x00, 0x00, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xde, 0x73, 0x7d, 0x56, 0xd3, 0x8b, 0xcf, 0x42, 0x79, 0xdc, 0xe5, 0x61, 0x7e, 0x31, 0x92, 0xa8};

static bool es256_high_s(const uint8_t sig[2 * ES256_PART_BYTES]) {
  return memcmp(sig + ES256_PART_BYTES, p256_half_n, ES256_PART_BYTES) > 0;
}

/* s = n - s, for 0 < s < n. */
static void es256_negate_s(uint8_t sig[2 * ES256_PART_BYTES]) {
  uint8_t *sp = sig + ES256_PART_BYTES;
  int borrow = 0;
  for (int i = ES256_PART_BYTES - 1; i >= 0; i--) {
    int d = (int)p256_n[i] - (int)sp[i] - borrow;
    borrow = d < 0;
    sp[i] = (uint8_t)(d + (borrow ? 256 : 0));
  }
  assert(borrow == 0);
}

/* Rewrites a freshly signed ES256 token in place with the low s. */
static int es256_make_low_s(char *token) {
  char *dot = strrchr(token, '.');
  if (dot == NULL) return -EINVAL;
  uint8_t sig[2 * ES256_PART_BYTES];
  size_t len = strlen(dot + 1);
  if (gw_b64url_decode(dot + 1, len, sig, sizeof sig) != (int)sizeof sig) return -EINVAL;
  if (!es256_high_s(sig)) return 0;
  es256_negate_s(sig);
  assert(!es256_high_s(sig));
  char enc[4 * (sizeof sig + 2) / 3 + 1];
  size_t n = b64url_encode(sig, sizeof sig, enc);
  if (n != len) return -EINVAL; /* same length by construction */
  memcpy(dot + 1, enc, n + 1);
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Keys                                                                     */
/* ------------------------------------------------------------------------ */

int gw_jwt_keys_create(gw_jwt_keys_t **out) {
  gw_jwt_keys_t *ks = calloc(1, sizeof *ks);
  if (ks == NULL) return -ENOMEM;
  ks->signer = -1;
  *out = ks;
  return 0;
}

static void key_clear(jwt_key_t *k) {
  free(k->public_pem);
  if (k->private_pem != NULL) explicit_bzero(k->private_pem, strlen(k->private_pem));
  free(k->private_pem);
  *k = (jwt_key_t){0};
}

void gw_jwt_keys_destroy(gw_jwt_keys_t *ks) {
  if (ks == NULL) return;
  for (size_t i = 0; i < ks->count; i++) key_clear(&ks->keys[i]);
  free(ks);
}

static bool kid_ok(const char *kid) {
  size_t n = strlen(kid);
  if (n == 0 || n >= GW_JWT_KID_BYTES_MAX) return false;
  for (size_t i = 0; i < n; i++) {
    char c = kid[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.';
    if (!ok) return false;
  }
  return true;
}

/* Reads one DER tag-length header; returns the content or NULL. */
static const uint8_t *der_next(const uint8_t *p, const uint8_t *end, uint8_t tag,
                               size_t *len) {
  if (end - p < 2 || p[0] != tag) return NULL;
  size_t n = p[1];
  p += 2;
  if (n & 0x80) {
    size_t bytes = n & 0x7f;
    if (bytes == 0 || bytes > 3 || (size_t)(end - p) < bytes) return NULL;
    n = 0;
    for (size_t i = 0; i < bytes; i++) n = n << 8 | *p++;
  }
  if ((size_t)(end - p) < n) return NULL;
  *len = n;
  return p;
}

/* The algorithm a SubjectPublicKeyInfo pins: EC on P-256 -> ES256,
 * rsaEncryption -> RS256. 0 for anything else. */
static gw_jwt_alg_t spki_alg(const uint8_t *der, size_t len) {
  static const uint8_t oid_ec[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};
  static const uint8_t oid_p256[] = {0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07};
  static const uint8_t oid_rsa[] = {0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01};
  size_t n = 0, m = 0, k = 0;
  const uint8_t *spki = der_next(der, der + len, 0x30, &n);
  const uint8_t *algid = spki ? der_next(spki, spki + n, 0x30, &m) : NULL;
  const uint8_t *oid = algid ? der_next(algid, algid + m, 0x06, &k) : NULL;
  if (oid == NULL) return 0;
  if (k == sizeof oid_rsa && memcmp(oid, oid_rsa, k) == 0) return GW_JWT_RS256;
  if (k != sizeof oid_ec || memcmp(oid, oid_ec, k) != 0) return 0;
  const uint8_t *params = der_next(oid + k, algid + m, 0x06, &k);
  if (params != NULL && k == sizeof oid_p256 && memcmp(params, oid_p256, k) == 0)
    return GW_JWT_ES256;
  return 0;
}

static gw_jwt_alg_t public_pem_alg(const char *pem) {
  gw__pem_obj_t objs[GW__PEM_OBJS_MAX];
  int n = gw__pem_decode(pem, strlen(pem), objs, GW__PEM_OBJS_MAX);
  if (n < 0) return 0;
  gw_jwt_alg_t alg = 0;
  if (n == 1 && strcmp(objs[0].name, "PUBLIC KEY") == 0) alg = spki_alg(objs[0].der, objs[0].len);
  gw__pem_free(objs, (size_t)n);
  return alg;
}

static const char *alg_name(gw_jwt_alg_t alg) {
  return alg == GW_JWT_ES256 ? "ES256" : alg == GW_JWT_RS256 ? "RS256" : "none";
}

static jwt_alg_t alg_libjwt(gw_jwt_alg_t alg) {
  return alg == GW_JWT_ES256 ? JWT_ALG_ES256 : JWT_ALG_RS256;
}

static const jwt_key_t *key_by_kid(const gw_jwt_keys_t *ks, const char *kid) {
  for (size_t i = 0; i < ks->count; i++)
    if (strcmp(ks->keys[i].kid, kid) == 0) return &ks->keys[i];
  return NULL;
}

/* A private key must sign what its public key verifies. */
static int check_pair(const gw_jwt_keys_t *ks, const char *kid) {
  gw_jwt_keys_t one = *ks;
  one.signer = (int)(key_by_kid(ks, kid) - ks->keys);
  gw_jwt_policy_t p = {.iss = "check", .aud = "check", .ttl_s = 60, .leeway_s = 0};
  char *token = NULL;
  int rc = gw_jwt_sign(&one, &p, "check", GW_ROLE_CUSTOMER, 1000, &token);
  gw_identity_t id;
  if (rc == 0) rc = gw_jwt_verify(ks, &p, token, strlen(token), 1000, &id);
  free(token);
  return rc == 0 ? 0 : GW_E_KEY;
}

int gw_jwt_keys_add(gw_jwt_keys_t *ks, const char *kid, const char *public_pem,
                    const char *private_pem) {
  if (!kid_ok(kid) || key_by_kid(ks, kid) != NULL) return GW_E_KEY;
  if (ks->count == GW_JWT_KEYS_MAX) return GW_E_FULL;
  gw_jwt_alg_t alg = public_pem_alg(public_pem);
  if (alg == 0) return GW_E_KEY;
  jwt_key_t *k = &ks->keys[ks->count];
  snprintf(k->kid, sizeof k->kid, "%s", kid);
  k->alg = alg;
  k->public_pem = strdup(public_pem);
  k->private_pem = private_pem != NULL ? strdup(private_pem) : NULL;
  if (k->public_pem == NULL || (private_pem != NULL && k->private_pem == NULL)) {
    key_clear(k);
    return -ENOMEM;
  }
  ks->count++;
  if (private_pem != NULL && check_pair(ks, kid) < 0) {
    key_clear(&ks->keys[--ks->count]);
    return GW_E_KEY;
  }
  return 0;
}

/* Adds kid from a public key file and an optional private key file. */
static int add_files(gw_jwt_keys_t *ks, const char *kid, const char *pub_path,
                     const char *priv_path) {
  char *pub = NULL, *priv = NULL;
  size_t len = 0;
  int rc = gw__read_file(pub_path, &pub, &len);
  if (rc == 0 && priv_path != NULL) rc = gw__read_file(priv_path, &priv, &len);
  if (rc == 0) rc = gw_jwt_keys_add(ks, kid, pub, priv);
  if (rc < 0)
    RT_ERROR("cannot load JWT key", RT_LF_STR("kid", kid), RT_LF_STR("path", pub_path),
             RT_LF_STR("error", rt_strerror(rc)));
  free(pub);
  if (priv != NULL) explicit_bzero(priv, len);
  free(priv);
  return rc;
}

int gw_jwt_keys_load_dir(gw_jwt_keys_t *ks, const char *dir) {
  DIR *d = opendir(dir);
  if (d == NULL) return -errno;
  int loaded = 0;
  int rc = 0;
  struct dirent *e;
  static const char suffix[] = ".pub.pem";
  for (uint32_t n = 0; rc >= 0 && n < 4096 && (e = readdir(d)) != NULL; n++) {
    size_t len = strlen(e->d_name);
    if (len <= sizeof suffix - 1 || strcmp(e->d_name + len - (sizeof suffix - 1), suffix) != 0)
      continue;
    char kid[GW_JWT_KID_BYTES_MAX];
    snprintf(kid, sizeof kid, "%.*s", (int)(len - (sizeof suffix - 1)), e->d_name);
    char pub[4096], priv[4096];
    snprintf(pub, sizeof pub, "%s/%s", dir, e->d_name);
    snprintf(priv, sizeof priv, "%s/%s.pem", dir, kid);
    bool has_priv = access(priv, R_OK) == 0;
    rc = add_files(ks, kid, pub, has_priv ? priv : NULL);
    if (rc == 0) loaded++;
  }
  closedir(d);
  return rc < 0 ? rc : loaded;
}

int gw_jwt_keys_load_list(gw_jwt_keys_t *ks, const char *list) {
  char *copy = strdup(list);
  if (copy == NULL) return -ENOMEM;
  int loaded = 0, rc = 0;
  char *save = NULL;
  for (char *item = strtok_r(copy, ",", &save); item != NULL && rc >= 0;
       item = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(item, '=');
    if (eq == NULL) {
      rc = GW_E_CONFIG;
      break;
    }
    *eq = '\0';
    char *priv = strchr(eq + 1, ':');
    if (priv != NULL) *priv++ = '\0';
    rc = add_files(ks, item, eq + 1, priv);
    if (rc == 0) loaded++;
  }
  free(copy);
  return rc < 0 ? rc : loaded;
}

int gw_jwt_keys_set_signer(gw_jwt_keys_t *ks, const char *kid) {
  int best = -1;
  for (size_t i = 0; i < ks->count; i++) {
    if (ks->keys[i].private_pem == NULL) continue;
    if (kid != NULL ? strcmp(ks->keys[i].kid, kid) == 0
                    : best < 0 || strcmp(ks->keys[i].kid, ks->keys[best].kid) > 0)
      best = (int)i;
  }
  if (best < 0) return GW_E_KEY;
  ks->signer = best;
  return 0;
}

const char *gw_jwt_keys_signer(const gw_jwt_keys_t *ks) {
  return ks->signer >= 0 ? ks->keys[ks->signer].kid : NULL;
}

void gw_jwt_keys_describe(const gw_jwt_keys_t *ks, char *out, size_t out_bytes) {
  size_t n = 0;
  if (out_bytes == 0) return;
  out[0] = '\0';
  for (size_t i = 0; i < ks->count; i++) {
    int w = snprintf(out + n, out_bytes - n, "%s%s(%s)", i > 0 ? "," : "", ks->keys[i].kid,
                     alg_name(ks->keys[i].alg));
    if (w < 0 || (size_t)w >= out_bytes - n) return;
    n += (size_t)w;
  }
}

/* ------------------------------------------------------------------------ */
/* JWKS: the verification keys as RFC 7517 JSON Web Keys                    */
/* ------------------------------------------------------------------------ */

/* A big-endian unsigned value as base64url, leading zero bytes dropped (RFC
 * 7518 6.3.1: n and e carry no sign byte; EC coordinates keep their fixed
 * width, so those are passed with strip = false). */
static json_t *b64url_json(const uint8_t *p, size_t len, bool strip) {
  while (strip && len > 1 && p[0] == 0) p++, len--;
  char *out = malloc(4 * ((len + 2) / 3) + 1);
  if (out == NULL) return NULL;
  b64url_encode(p, len, out);
  json_t *j = json_string(out);
  free(out);
  return j;
}

/* The SubjectPublicKeyInfo's key bits (after the BIT STRING's unused-bits
 * byte, which must be 0), or NULL. */
static const uint8_t *spki_key_bits(const uint8_t *der, size_t len, size_t *bits_len) {
  size_t n = 0, m = 0, k = 0;
  const uint8_t *spki = der_next(der, der + len, 0x30, &n);
  const uint8_t *algid = spki ? der_next(spki, spki + n, 0x30, &m) : NULL;
  const uint8_t *bits = algid ? der_next(algid + m, spki + n, 0x03, &k) : NULL;
  if (bits == NULL || k < 2 || bits[0] != 0) return NULL;
  *bits_len = k - 1;
  return bits + 1;
}

/* One key's JWK, or NULL when its public key cannot be read. */
static json_t *key_jwk(const jwt_key_t *k) {
  gw__pem_obj_t objs[GW__PEM_OBJS_MAX];
  int n = gw__pem_decode(k->public_pem, strlen(k->public_pem), objs, GW__PEM_OBJS_MAX);
  if (n < 0) return NULL;
  json_t *jwk = NULL;
  size_t len = 0;
  const uint8_t *key = n == 1 ? spki_key_bits(objs[0].der, objs[0].len, &len) : NULL;
  if (key != NULL && k->alg == GW_JWT_ES256 && len == 65 && key[0] == 0x04) {
    /* An uncompressed P-256 point: 0x04, x, y (32 bytes each). */
    jwk = json_pack("{s:s, s:s, s:o*, s:o*}", "kty", "EC", "crv", "P-256", "x",
                    b64url_json(key + 1, 32, false), "y", b64url_json(key + 33, 32, false));
  } else if (key != NULL && k->alg == GW_JWT_RS256) {
    /* RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER } */
    size_t sn = 0, mn = 0, en = 0;
    const uint8_t *seq = der_next(key, key + len, 0x30, &sn);
    const uint8_t *mod = seq ? der_next(seq, seq + sn, 0x02, &mn) : NULL;
    const uint8_t *exp = mod ? der_next(mod + mn, seq + sn, 0x02, &en) : NULL;
    if (exp != NULL && mn > 0 && en > 0)
      jwk = json_pack("{s:s, s:o*, s:o*}", "kty", "RSA", "n", b64url_json(mod, mn, true), "e",
                      b64url_json(exp, en, true));
  }
  gw__pem_free(objs, (size_t)n);
  bool whole = jwk != NULL && (k->alg == GW_JWT_ES256
                                   ? json_object_get(jwk, "x") && json_object_get(jwk, "y")
                                   : json_object_get(jwk, "n") && json_object_get(jwk, "e"));
  if (!whole) {
    json_decref(jwk);
    return NULL;
  }
  json_object_set_new(jwk, "kid", json_string(k->kid));
  json_object_set_new(jwk, "alg", json_string(alg_name(k->alg)));
  json_object_set_new(jwk, "use", json_string("sig"));
  return jwk;
}

char *gw_jwt_keys_jwks(const gw_jwt_keys_t *ks) {
  json_t *keys = json_array();
  for (size_t i = 0; keys != NULL && i < ks->count; i++) {
    json_t *jwk = key_jwk(&ks->keys[i]);
    if (jwk == NULL || json_array_append_new(keys, jwk) < 0) {
      json_decref(keys);
      return NULL;
    }
  }
  json_t *doc = keys != NULL ? json_pack("{s:o}", "keys", keys) : NULL;
  char *text = doc != NULL ? json_dumps(doc, JSON_COMPACT) : NULL;
  json_decref(doc);
  return text;
}

/* ------------------------------------------------------------------------ */
/* Signing                                                                  */
/* ------------------------------------------------------------------------ */

static void random_jti(char out[GW_JTI_BYTES_MAX]) {
  uint8_t r[16] = {0};
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r) {
    uint64_t a = gw__random_u64() ^ rt_now_ns();
    memcpy(r, &a, sizeof a);
  }
  for (int i = 0; i < 16; i++) snprintf(out + 2 * i, 3, "%02x", r[i]);
}

static int add_claims(jwt_t *j, const gw_jwt_policy_t *p, const char *sub, uint32_t roles,
                      int64_t now_s) {
  char jti[GW_JTI_BYTES_MAX];
  random_jti(jti);
  json_t *r = json_array();
  for (uint32_t i = 0; r != NULL && i < GW_ROLES_COUNT; i++)
    if (roles & (1u << i)) json_array_append_new(r, json_string(role_names[i]));
  json_t *obj = json_pack("{s:o}", "roles", r);
  char *roles_json = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
  json_decref(obj);
  int rc = roles_json != NULL ? 0 : -ENOMEM;
  if (rc == 0) rc = jwt_add_grant(j, "sub", sub);
  if (rc == 0) rc = jwt_add_grant(j, "iss", p->iss);
  if (rc == 0) rc = jwt_add_grant(j, "aud", p->aud);
  if (rc == 0) rc = jwt_add_grant(j, "jti", jti);
  if (rc == 0) rc = jwt_add_grant_int(j, "iat", (long)now_s);
  if (rc == 0) rc = jwt_add_grant_int(j, "nbf", (long)now_s);
  if (rc == 0) rc = jwt_add_grant_int(j, "exp", (long)(now_s + p->ttl_s));
  if (rc == 0) rc = jwt_add_grants_json(j, roles_json);
  free(roles_json);
  return rc == 0 ? 0 : -EINVAL;
}

int gw_jwt_sign(const gw_jwt_keys_t *ks, const gw_jwt_policy_t *p, const char *sub,
                uint32_t roles, int64_t now_s, char **token_out) {
  if (ks->signer < 0) return GW_E_KEY;
  if (sub == NULL || sub[0] == '\0' || strlen(sub) >= GW_SUB_BYTES_MAX) return -EINVAL;
  const jwt_key_t *k = &ks->keys[ks->signer];
  jwt_t *j = NULL;
  if (jwt_new(&j) != 0) return -ENOMEM;
  int rc = jwt_add_header(j, "kid", k->kid) == 0 ? 0 : -EINVAL;
  if (rc == 0) rc = add_claims(j, p, sub, roles, now_s);
  if (rc == 0 && jwt_set_alg(j, alg_libjwt(k->alg), (const unsigned char *)k->private_pem,
                             (int)strlen(k->private_pem)) != 0)
    rc = GW_E_KEY;
  char *token = rc == 0 ? jwt_encode_str(j) : NULL;
  jwt_free(j);
  if (rc == 0 && token == NULL) rc = -ENOMEM;
  if (rc == 0 && k->alg == GW_JWT_ES256 && es256_make_low_s(token) < 0) {
    free(token);
    token = NULL;
    rc = GW_E_KEY;
  }
  if (rc == 0) *token_out = token;
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Verification                                                             */
/* ------------------------------------------------------------------------ */

/* Decodes one base64url JSON object of the token. NULL when malformed. */
static json_t *decode_part(const char *s, size_t len, size_t max) {
  uint8_t buf[PAYLOAD_BYTES_MAX];
  if (len == 0 || max > sizeof buf) return NULL;
  int n = gw_b64url_decode(s, len, buf, max);
  if (n <= 0) return NULL;
  json_t *j = json_loadb((const char *)buf, (size_t)n, JSON_REJECT_DUPLICATES, NULL);
  if (j != NULL && !json_is_object(j)) {
    json_decref(j);
    return NULL;
  }
  return j;
}

/* Header checks, before any cryptography. Sets *key on success. */
static int check_header(const gw_jwt_keys_t *ks, json_t *h, const jwt_key_t **key) {
  /* Keys are never taken from the token, and unknown critical extensions
   * must be refused (RFC 7515 4.1.11). */
  static const char *const refused[] = {"crit", "jwk", "jku", "x5u", "x5c"};
  for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++)
    if (json_object_get(h, refused[i]) != NULL) return GW_E_TOKEN_MALFORMED;
  const char *alg = json_string_value(json_object_get(h, "alg"));
  json_t *typ = json_object_get(h, "typ");
  const char *kid = json_string_value(json_object_get(h, "kid"));
  if (alg == NULL) return GW_E_TOKEN_MALFORMED;
  if (strcasecmp(alg, "none") == 0) return GW_E_TOKEN_ALG;
  if (typ != NULL && (!json_is_string(typ) || strcmp(json_string_value(typ), "JWT") != 0))
    return GW_E_TOKEN_CLAIMS;
  if (kid == NULL) return GW_E_TOKEN_KID;
  const jwt_key_t *k = key_by_kid(ks, kid);
  if (k == NULL) return GW_E_TOKEN_KID;
  if (strcmp(alg, alg_name(k->alg)) != 0) return GW_E_TOKEN_ALG;
  /* The key is the token's own, by kid, and can verify. */
  assert(strcmp(k->kid, kid) == 0);
  assert(k->public_pem != NULL);
  *key = k;
  return 0;
}

/* The signature segment decoded strictly (OpenSSL's decoder, under
 * libjwt, would ignore non-zero unused bits), of the right size, and for
 * ES256 with the low s. */
static int check_signature_encoding(const jwt_key_t *k, const char *sig, size_t len) {
  uint8_t buf[1024];
  int n = gw_b64url_decode(sig, len, buf, sizeof buf);
  if (n <= 0) return GW_E_TOKEN_SIGNATURE;
  if (k->alg == GW_JWT_ES256) {
    if (n != 2 * ES256_PART_BYTES || es256_high_s(buf)) return GW_E_TOKEN_SIGNATURE;
  }
  return 0;
}

static int check_signature(const jwt_key_t *k, const char *token, size_t len) {
  char *copy = strndup(token, len);
  if (copy == NULL) return -ENOMEM;
  jwt_t *j = NULL;
  int rc = jwt_decode(&j, copy, (const unsigned char *)k->public_pem, (int)strlen(k->public_pem));
  /* Belt and braces: libjwt must have checked the pinned algorithm. */
  if (rc == 0 && jwt_get_alg(j) != alg_libjwt(k->alg)) rc = -1;
  jwt_free(j);
  free(copy);
  return rc == 0 ? 0 : GW_E_TOKEN_SIGNATURE;
}

static bool aud_ok(json_t *aud, const char *want) {
  if (json_is_string(aud)) return strcmp(json_string_value(aud), want) == 0;
  if (!json_is_array(aud)) return false;
  size_t i;
  json_t *v;
  json_array_foreach(aud, i, v) {
    if (json_is_string(v) && strcmp(json_string_value(v), want) == 0) return true;
  }
  return false;
}

static int check_times(json_t *c, const gw_jwt_policy_t *p, int64_t now_s, int64_t *exp_out) {
  json_t *exp = json_object_get(c, "exp");
  json_t *nbf = json_object_get(c, "nbf");
  json_t *iat = json_object_get(c, "iat");
  if (!json_is_integer(exp)) return GW_E_TOKEN_CLAIMS;
  if ((nbf != NULL && !json_is_integer(nbf)) || (iat != NULL && !json_is_integer(iat)))
    return GW_E_TOKEN_CLAIMS;
  int64_t leeway = p->leeway_s;
  if (now_s >= (int64_t)json_integer_value(exp) + leeway) return GW_E_TOKEN_EXPIRED;
  if (nbf != NULL && (int64_t)json_integer_value(nbf) > now_s + leeway) return GW_E_TOKEN_EARLY;
  if (iat != NULL && (int64_t)json_integer_value(iat) > now_s + leeway) return GW_E_TOKEN_EARLY;
  *exp_out = (int64_t)json_integer_value(exp);
  return 0;
}

static int check_identity(json_t *c, gw_identity_t *out) {
  const char *sub = json_string_value(json_object_get(c, "sub"));
  json_t *roles = json_object_get(c, "roles");
  json_t *jti = json_object_get(c, "jti");
  if (sub == NULL || !gw__subject_ok(sub)) return GW_E_TOKEN_CLAIMS;
  if (!json_is_array(roles)) return GW_E_TOKEN_CLAIMS;
  if (jti != NULL && (!json_is_string(jti) || strlen(json_string_value(jti)) >= sizeof out->jti))
    return GW_E_TOKEN_CLAIMS;
  snprintf(out->sub, sizeof out->sub, "%s", sub);
  snprintf(out->jti, sizeof out->jti, "%s", jti != NULL ? json_string_value(jti) : "");
  out->roles = 0;
  size_t i;
  json_t *v;
  json_array_foreach(roles, i, v) {
    if (!json_is_string(v)) return GW_E_TOKEN_CLAIMS;
    out->roles |= gw_role_parse(json_string_value(v), json_string_length(v));
  }
  /* A token that grants no role we know is of no use to anyone. */
  return out->roles != 0 ? 0 : GW_E_TOKEN_CLAIMS;
}

static int check_claims(json_t *c, const gw_jwt_policy_t *p, int64_t now_s, gw_identity_t *out) {
  const char *iss = json_string_value(json_object_get(c, "iss"));
  if (iss == NULL || strcmp(iss, p->iss) != 0) return GW_E_TOKEN_CLAIMS;
  if (!aud_ok(json_object_get(c, "aud"), p->aud)) return GW_E_TOKEN_CLAIMS;
  int64_t exp = 0;
  int rc = check_times(c, p, now_s, &exp);
  if (rc == 0) rc = check_identity(c, out);
  out->exp = exp;
  return rc;
}

/* Splits header.payload.signature; only base64url characters allowed. */
static int split(const char *t, size_t len, size_t dots[2]) {
  size_t n = 0;
  for (size_t i = 0; i < len; i++) {
    if (t[i] == '.') {
      if (n == 2) return GW_E_TOKEN_MALFORMED;
      dots[n++] = i;
    } else if (b64url_value(t[i]) < 0) {
      return GW_E_TOKEN_MALFORMED;
    }
  }
  if (n != 2 || dots[0] == 0 || dots[1] == dots[0] + 1 || dots[1] + 1 == len)
    return GW_E_TOKEN_MALFORMED;
  return 0;
}

int gw_jwt_verify(const gw_jwt_keys_t *ks, const gw_jwt_policy_t *p, const char *token,
                  size_t len, int64_t now_s, gw_identity_t *out) {
  size_t dots[2];
  if (len == 0 || len > TOKEN_BYTES_MAX) return GW_E_TOKEN_MALFORMED;
  int rc = split(token, len, dots);
  if (rc < 0) return rc;
  json_t *h = decode_part(token, dots[0], HEADER_BYTES_MAX);
  if (h == NULL) return GW_E_TOKEN_MALFORMED;
  const jwt_key_t *key = NULL;
  assert(dots[0] < dots[1]);
  assert(dots[1] + 1 < len);
  rc = check_header(ks, h, &key);
  json_decref(h);
  if (rc < 0) return rc;
  assert(key != NULL);
  rc = check_signature_encoding(key, token + dots[1] + 1, len - dots[1] - 1);
  if (rc == 0) rc = check_signature(key, token, len);
  if (rc < 0) return rc;
  json_t *c = decode_part(token + dots[0] + 1, dots[1] - dots[0] - 1, PAYLOAD_BYTES_MAX);
  if (c == NULL) return GW_E_TOKEN_MALFORMED;
  rc = check_claims(c, p, now_s, out);
  json_decref(c);
  if (rc == 0) {
    /* What a verified identity always has, whoever reads it next. */
    assert(out->sub[0] != '\0');
    assert(out->roles != 0);
  }
  return rc;
}
