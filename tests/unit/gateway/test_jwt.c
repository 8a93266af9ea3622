/*
 * JWT: the attack corpus against gw_jwt_verify (each token refused with
 * the expected reason, the valid ones accepted), signing and verifying
 * round trips with two kids, key loading rules, strict base64url.
 */
#include <errno.h>
#include <time.h>

#include "jwt_corpus.h"
#include "t.h"

static corpus_key_t k1, k2;
static gw_jwt_keys_t *keys;
static const gw_jwt_policy_t policy = {
    .iss = "paycore", .aud = "paycore-api", .ttl_s = 600, .leeway_s = 30};

static void test_corpus(void) {
  static corpus_item_t items[CORPUS_MAX];
  int64_t now = (int64_t)time(NULL);
  size_t n = corpus_build(items, &policy, now, &k1, &k2);
  T_REQUIRE(n > 25);
  for (size_t i = 0; i < n; i++) {
    gw_identity_t id;
    int rc = gw_jwt_verify(keys, &policy, items[i].token, strlen(items[i].token), now, &id);
    if (rc != items[i].expect)
      fprintf(stderr, "corpus %s: got %d (%s), want %d\n", items[i].name, rc, gw_strerror(rc),
              items[i].expect);
    T_CHECK_EQ_INT(rc, items[i].expect);
  }
}

static void test_valid_identity(void) {
  static corpus_item_t items[CORPUS_MAX];
  int64_t now = (int64_t)time(NULL);
  corpus_build(items, &policy, now, &k1, &k2);
  gw_identity_t id;
  T_REQUIRE(gw_jwt_verify(keys, &policy, items[0].token, strlen(items[0].token), now, &id) == 0);
  T_CHECK_STR(id.sub, "0190c0de-0000-7000-8000-000000000001");
  T_CHECK_EQ_INT(id.roles, GW_ROLE_CUSTOMER);
  T_CHECK_EQ_INT(id.exp, now + 600);
  T_CHECK_STR(id.jti, "corpus");
  /* The same token later: expired once past exp plus the leeway. */
  T_CHECK_EQ_INT(gw_jwt_verify(keys, &policy, items[0].token, strlen(items[0].token),
                               now + 600 + 31, &id),
                 GW_E_TOKEN_EXPIRED);
  T_CHECK_EQ_INT(gw_jwt_verify(keys, &policy, items[0].token, strlen(items[0].token),
                               now + 600 + 29, &id),
                 0);
}

/* Reads the kid out of a token's header. */
static void header_kid(const char *token, char *out, size_t out_bytes) {
  uint8_t buf[512];
  int n = gw_b64url_decode(token, strcspn(token, "."), buf, sizeof buf - 1);
  out[0] = '\0';
  if (n <= 0) return;
  buf[n] = '\0';
  const char *k = strstr((const char *)buf, "\"kid\":\"");
  if (k != NULL) snprintf(out, out_bytes, "%.*s", (int)strcspn(k + 7, "\""), k + 7);
}

static void test_sign_roundtrip_two_kids(void) {
  int64_t now = (int64_t)time(NULL);
  const char *kids[2] = {k1.kid, k2.kid};
  for (int i = 0; i < 2; i++) {
    T_REQUIRE(gw_jwt_keys_set_signer(keys, kids[i]) == 0);
    char *tok = NULL;
    T_REQUIRE(gw_jwt_sign(keys, &policy, "cust-42", GW_ROLE_CUSTOMER | GW_ROLE_AUDITOR, now,
                          &tok) == 0);
    char kid[64];
    header_kid(tok, kid, sizeof kid);
    T_CHECK_STR(kid, kids[i]);
    gw_identity_t id;
    T_CHECK_EQ_INT(gw_jwt_verify(keys, &policy, tok, strlen(tok), now, &id), 0);
    T_CHECK_STR(id.sub, "cust-42");
    T_CHECK_EQ_INT(id.roles, GW_ROLE_CUSTOMER | GW_ROLE_AUDITOR);
    T_CHECK_EQ_INT(id.exp, now + 600);
    T_CHECK(strlen(id.jti) == 32);
    /* Another gateway with only the other key refuses it: unknown kid. */
    gw_jwt_keys_t *other = NULL;
    T_REQUIRE(gw_jwt_keys_create(&other) == 0);
    const corpus_key_t *o = i == 0 ? &k2 : &k1;
    T_CHECK(gw_jwt_keys_add(other, o->kid, o->public_pem, NULL) == 0);
    T_CHECK_EQ_INT(gw_jwt_verify(other, &policy, tok, strlen(tok), now, &id), GW_E_TOKEN_KID);
    gw_jwt_keys_destroy(other);
    free(tok);
  }
}

/* Every token the gateway signs carries the low s, and verifies; the same
 * token with the high s does not. Random nonces make s high about half
 * the time, so 64 tokens exercise both branches of the signer. */
static void test_sign_low_s(void) {
  int64_t now = (int64_t)time(NULL);
  T_REQUIRE(gw_jwt_keys_set_signer(keys, k1.kid) == 0);
  for (int i = 0; i < 64; i++) {
    char *tok = NULL;
    T_REQUIRE(gw_jwt_sign(keys, &policy, "cust-low-s", GW_ROLE_CUSTOMER, now, &tok) == 0);
    char *dot = strrchr(tok, '.');
    uint8_t sig[64];
    T_REQUIRE(gw_b64url_decode(dot + 1, strlen(dot + 1), sig, sizeof sig) == 64);
    T_CHECK(!corpus_s_is_high(sig + 32));
    gw_identity_t id;
    T_CHECK_EQ_INT(gw_jwt_verify(keys, &policy, tok, strlen(tok), now, &id), 0);
    corpus_negate_s(sig + 32);
    char high[CORPUS_TOKEN_BYTES];
    size_t head = (size_t)(dot + 1 - tok);
    memcpy(high, tok, head);
    corpus_b64url(high + head, sig, sizeof sig);
    T_CHECK_EQ_INT(gw_jwt_verify(keys, &policy, high, strlen(high), now, &id),
                   GW_E_TOKEN_SIGNATURE);
    free(tok);
  }
}

static void test_key_rules(void) {
  gw_jwt_keys_t *ks = NULL;
  T_REQUIRE(gw_jwt_keys_create(&ks) == 0);
  T_CHECK_EQ_INT(gw_jwt_keys_add(ks, "bad/kid", k1.public_pem, NULL), GW_E_KEY);
  T_CHECK_EQ_INT(gw_jwt_keys_add(ks, "a", "not a pem", NULL), GW_E_KEY);
  /* A private key that is not the public key's pair is refused. */
  T_CHECK_EQ_INT(gw_jwt_keys_add(ks, "mixed", k1.public_pem, k2.private_pem), GW_E_KEY);
  T_CHECK_EQ_INT(gw_jwt_keys_add(ks, "2024-01", k1.public_pem, k1.private_pem), 0);
  T_CHECK_EQ_INT(gw_jwt_keys_add(ks, "2024-01", k2.public_pem, NULL), GW_E_KEY);
  T_CHECK_EQ_INT(gw_jwt_keys_add(ks, "2025-06", k2.public_pem, k2.private_pem), 0);
  T_CHECK_EQ_INT(gw_jwt_keys_add(ks, "2026-verify-only", k2.public_pem, NULL), 0);
  /* Without a named kid the greatest kid that can sign is chosen. */
  T_CHECK_EQ_INT(gw_jwt_keys_set_signer(ks, NULL), 0);
  T_CHECK_STR(gw_jwt_keys_signer(ks), "2025-06");
  T_CHECK_EQ_INT(gw_jwt_keys_set_signer(ks, "2026-verify-only"), GW_E_KEY);
  char desc[256];
  gw_jwt_keys_describe(ks, desc, sizeof desc);
  T_CHECK_STR(desc, "2024-01(ES256),2025-06(ES256),2026-verify-only(ES256)");
  gw_jwt_keys_destroy(ks);
  /* No signer: signing fails cleanly. */
  T_REQUIRE(gw_jwt_keys_create(&ks) == 0);
  char *tok = NULL;
  T_CHECK_EQ_INT(gw_jwt_sign(ks, &policy, "x", GW_ROLE_CUSTOMER, 0, &tok), GW_E_KEY);
  gw_jwt_keys_destroy(ks);
}

static void test_b64url(void) {
  uint8_t out[16];
  T_CHECK_EQ_INT(gw_b64url_decode("", 0, out, sizeof out), 0);
  T_CHECK_EQ_INT(gw_b64url_decode("QQ", 2, out, sizeof out), 1);
  T_CHECK_EQ_INT(out[0], 'A');
  T_CHECK_EQ_INT(gw_b64url_decode("QUJD", 4, out, sizeof out), 3);
  T_CHECK_EQ_INT(gw_b64url_decode("-_8", 3, out, sizeof out), 2);
  T_CHECK_EQ_INT(out[0], 0xfb);
  T_CHECK_EQ_INT(gw_b64url_decode("QR", 2, out, sizeof out), -EINVAL);   /* stray bits */
  T_CHECK_EQ_INT(gw_b64url_decode("Q", 1, out, sizeof out), -EINVAL);    /* bad length */
  T_CHECK_EQ_INT(gw_b64url_decode("QQ==", 4, out, sizeof out), -EINVAL); /* padding */
  T_CHECK_EQ_INT(gw_b64url_decode("Q+8/", 4, out, sizeof out), -EINVAL); /* not url-safe */
  T_CHECK_EQ_INT(gw_b64url_decode("QUJDQUJD", 8, out, 5), -EINVAL);      /* too small */
}

static void test_roles(void) {
  T_CHECK_EQ_INT(gw_role_parse("auditor", 7), GW_ROLE_AUDITOR);
  T_CHECK_EQ_INT(gw_role_parse("service", 7), 0); /* never from a token */
  T_CHECK_EQ_INT(gw_role_parse("admin2", 6), 0);
  char s[64];
  gw_roles_format(GW_ROLE_CUSTOMER | GW_ROLE_ADMIN, s, sizeof s);
  T_CHECK_STR(s, "customer,admin");
}

int main(void) {
  rt_log_init("test_gw_jwt", RT_LOG_WARN, NULL, 0);
  gw_register_errors();
  if (corpus_key_generate(&k1, "k1") < 0 || corpus_key_generate(&k2, "k2") < 0) {
    fprintf(stderr, "key generation failed\n");
    return 1;
  }
  if (gw_jwt_keys_create(&keys) < 0 || gw_jwt_keys_add(keys, "k1", k1.public_pem, k1.private_pem) < 0 ||
      gw_jwt_keys_add(keys, "k2", k2.public_pem, k2.private_pem) < 0) {
    fprintf(stderr, "keys not accepted:\n%s\n%s\n", k1.public_pem, k1.private_pem);
    return 1;
  }
  T_RUN(test_corpus);
  T_RUN(test_valid_identity);
  T_RUN(test_sign_roundtrip_two_kids);
  T_RUN(test_sign_low_s);
  T_RUN(test_key_rules);
  T_RUN(test_b64url);
  T_RUN(test_roles);
  gw_jwt_keys_destroy(keys);
  return t_done();
}
