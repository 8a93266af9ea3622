/*
 * fuzz_jwt.c - bearer token verification on arbitrary input.
 *
 * The first byte says how the rest is used:
 *  - even: the rest is a compact token, verified as it is, the way the
 *    gateway verifies what follows "Authorization: Bearer ";
 *  - odd: the rest is a header and a payload, JSON text split at the first
 *    NUL byte, which are encoded and signed here (ES256, key "k1"), so
 *    that the signature passes and the fuzzer reaches the header rules and
 *    the claims with every JSON it can make up.
 * Keys and the clock are fixed (two P-256 keys from constant scalars, now
 * = FUZZ_NOW_S; BearSSL's ECDSA signatures are deterministic), so an input
 * always gives the same verdict and a crash replays.
 *
 * Properties beyond "no crash, no sanitizer report":
 *  - the verdict is 0 or one of the GW_E_TOKEN_* codes gw.h documents;
 *  - an accepted token names a subject the services accept, at least one
 *    known role and no unknown one, and an exp not passed at now;
 *  - verifying again gives the same verdict and identity, and the
 *    verified-token cache hands back the identity that was put (when its
 *    exp is still ahead: one only inside the leeway is not kept);
 *  - an accepted token whose signature is changed in one character is
 *    refused: the signature is really what lets it in.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gw.h"
#include "internal.h"
#include "jwt_corpus.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_NOW_S 1700000000
#define INPUT_BYTES_MAX 4096
/* base64url of the input (4/3), two dots and an ES256 signature (86). */
#define TOKEN_BUF_BYTES (INPUT_BYTES_MAX / 3 * 4 + 256)

static const gw_jwt_policy_t policy = {
    .iss = "paycore", .aud = "paycore-api", .ttl_s = 600, .leeway_s = 30};

static corpus_key_t k1, k2;
static gw_jwt_keys_t *keys;
static gw_token_cache_t *cache;

static void fail(const char *what, int rc) {
  fprintf(stderr, "%s (verdict %d: %s)\n", what, rc, gw_strerror(rc));
  abort();
}

/* A key from a fixed scalar: the same key on every run. */
static int fixed_key(corpus_key_t *k, const char *kid, uint8_t first) {
  snprintf(k->kid, sizeof k->kid, "%s", kid);
  for (size_t i = 0; i < 32; i++) k->x[i] = (unsigned char)(first + i);
  k->sk = (br_ec_private_key){.curve = BR_EC_secp256r1, .x = k->x, .xlen = 32};
  return corpus_key_finish(k);
}

static void setup(void) {
  rt_log_init("fuzz_jwt", RT_LOG_ERROR, NULL, 0);
  gw_register_errors();
  if (fixed_key(&k1, "k1", 0x01) < 0 || fixed_key(&k2, "k2", 0x21) < 0 ||
      gw_jwt_keys_create(&keys) < 0 || gw_jwt_keys_add(keys, k1.kid, k1.public_pem, NULL) < 0 ||
      gw_jwt_keys_add(keys, k2.kid, k2.public_pem, NULL) < 0 ||
      gw_token_cache_create(&cache, 16) < 0) {
    fprintf(stderr, "fuzz_jwt: set-up failed\n");
    abort();
  }
}

static bool verdict_known(int rc) {
  return rc == 0 || (rc <= GW_E_TOKEN_MALFORMED && rc >= GW_E_TOKEN_CLAIMS) || rc == -ENOMEM;
}

static void check_identity(const gw_identity_t *id) {
  if (id->sub[0] == '\0' || !gw__subject_ok(id->sub)) fail("accepted with a bad subject", 0);
  if (id->roles == 0 || (id->roles & ~(uint32_t)GW_ROLES_ALL) != 0)
    fail("accepted with no role or an unknown one", 0);
  if (id->exp + (int64_t)policy.leeway_s <= FUZZ_NOW_S) fail("accepted though expired", 0);
  if (memchr(id->jti, '\0', sizeof id->jti) == NULL) fail("jti not terminated", 0);
}

/* The same token with one signature character changed to another of the
 * alphabet whose top bits differ, so the decoded bytes differ. */
static void check_tampered(const char *token, size_t len) {
  static char copy[TOKEN_BUF_BYTES];
  memcpy(copy, token, len);
  char *sig = memrchr(copy, '.', len);
  if (sig == NULL) fail("accepted without a signature", 0);
  char *c = sig + 1;
  *c = *c == 'A' ? 'g' : 'A';
  gw_identity_t id;
  int rc = gw_jwt_verify(keys, &policy, copy, len, FUZZ_NOW_S, &id);
  if (rc != GW_E_TOKEN_SIGNATURE && rc != GW_E_TOKEN_MALFORMED)
    fail("a token with a changed signature is not refused for it", rc);
}

static void verify(const char *token, size_t len) {
  gw_identity_t a, b;
  memset(&a, 0, sizeof a);
  memset(&b, 0, sizeof b);
  int rc = gw_jwt_verify(keys, &policy, token, len, FUZZ_NOW_S, &a);
  if (!verdict_known(rc)) fail("an undocumented verdict", rc);
  int again = gw_jwt_verify(keys, &policy, token, len, FUZZ_NOW_S, &b);
  if (again != rc) fail("the same token verified twice gets two verdicts", again);
  if (rc != 0) return;
  if (memcmp(&a, &b, sizeof a) != 0) fail("the same token gives two identities", rc);
  check_identity(&a);
  uint8_t digest[32];
  gw_identity_t cached;
  gw_token_digest(token, len, digest);
  gw_token_cache_put(cache, digest, &a, FUZZ_NOW_S);
  bool hit = gw_token_cache_get(cache, digest, FUZZ_NOW_S, &cached);
  if (hit != (a.exp > FUZZ_NOW_S)) fail("the cache keeps a token past its exp, or not before", rc);
  if (hit && (strcmp(cached.sub, a.sub) != 0 || cached.roles != a.roles || cached.exp != a.exp))
    fail("the cache does not hand back the verified identity", rc);
  check_tampered(token, len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool ready;
  static char text[INPUT_BYTES_MAX + 2];
  static char token[TOKEN_BUF_BYTES];
  if (!ready) {
    setup();
    ready = true;
  }
  if (size == 0 || size > INPUT_BYTES_MAX) return 0;
  if (data[0] % 2 == 0) {
    verify((const char *)data + 1, size - 1);
    return 0;
  }
  /* header NUL payload; strings end at the next NUL, as C strings do. */
  memcpy(text, data + 1, size - 1);
  text[size - 1] = '\0';
  text[size] = '\0';
  const char *header = text;
  const char *payload = text + strlen(text) + 1;
  corpus_es256(token, header, payload, &k1);
  verify(token, strlen(token));
  return 0;
}
