/*
 * test_tls_policy.c - the TLS policy of gateway/tls.c (included, to reach
 * its statics): which chain, suite and signature hash a full handshake
 * gets from what the client offers, with an ECDSA pair, an RSA pair or
 * both; and that its signatures verify with the chosen key (BearSSL's
 * ECDSA and RSA, and libcrypto's ECDSA where the build has it).
 *
 * The client's offer is written into a zeroed server context the way
 * BearSSL leaves it before calling choose(): the common suites in server
 * order, each with its key exchange in bits 12-15 of the translated word,
 * and the hashes bit field (RSA hash ids in bits 0-7, ECDSA in 8-15).
 */
#include "../../../gateway/tls.c"

#include "t.h"

#define RSA_HASH(id) (1u << (id))
#define ECDSA_HASH(id) (1u << (8 + (id)))

static br_hmac_drbg_context rng;
static gw_tls_t tls;
static gw__tls_creds_t creds;
static br_ssl_server_context sc;
static br_ec_public_key ec_pub;
static unsigned char ec_pub_buf[BR_EC_KBUF_PUB_MAX_SIZE];
static br_rsa_public_key rsa_pub;
static unsigned char rsa_pub_buf[BR_RSA_KBUF_PUB_SIZE(1024)];
static const unsigned char ec_chain_der[] = "the EC chain";
static const unsigned char rsa_chain_der[] = "the RSA chain";

/* A key into pair->skey, as load_key() leaves it, from its raw DER. */
static bool pair_key(gw__tls_pair_t *pair, const unsigned char *der, size_t len, int type,
                     const unsigned char *chain, size_t chain_len) {
  br_skey_decoder_init(&pair->skey);
  br_skey_decoder_push(&pair->skey, der, len);
  pair->key_type = br_skey_decoder_key_type(&pair->skey);
  pair->chain[0].data = (unsigned char *)chain;
  pair->chain[0].data_len = chain_len;
  pair->chain_len = 1;
  return br_skey_decoder_last_error(&pair->skey) == 0 && pair->key_type == type;
}

static bool make_ec_pair(gw__tls_pair_t *pair) {
  br_ec_private_key sk;
  unsigned char kbuf[BR_EC_KBUF_PRIV_MAX_SIZE], der[256];
  const br_ec_impl *ec = br_ec_get_default();
  if (br_ec_keygen(&rng.vtable, ec, &sk, kbuf, BR_EC_secp256r1) == 0) return false;
  if (br_ec_compute_pub(ec, &ec_pub, ec_pub_buf, &sk) == 0) return false;
  size_t n = br_encode_ec_raw_der(der, &sk, &ec_pub);
  return n > 0 && pair_key(pair, der, n, BR_KEYTYPE_EC, ec_chain_der, sizeof ec_chain_der);
}

static bool make_rsa_pair(gw__tls_pair_t *pair) {
  static unsigned char priv[BR_RSA_KBUF_PRIV_SIZE(1024)], d[128], der[1024];
  br_rsa_private_key sk;
  /* 1024 bits keeps the test fast; check_pair() is what refuses short keys. */
  if (!br_rsa_keygen_get_default()(&rng.vtable, &sk, priv, &rsa_pub, rsa_pub_buf, 1024, 65537))
    return false;
  size_t dlen = br_rsa_compute_privexp_get_default()(d, &sk, 65537);
  size_t n = dlen ? br_encode_rsa_raw_der(der, &sk, &rsa_pub, d, dlen) : 0;
  return n > 0 && n <= sizeof der &&
         pair_key(pair, der, n, BR_KEYTYPE_RSA, rsa_chain_der, sizeof rsa_chain_der);
}

static unsigned keyx_of(uint16_t suite) {
  switch (suite) {
  case BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256:
  case BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256:
  case BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: return BR_SSLKEYX_ECDHE_ECDSA;
  default: return BR_SSLKEYX_ECDHE_RSA;
  }
}

/* The client's offer, then choose() with the pairs given: its answer. */
static int choose(const gw__tls_pair_t *ec, const gw__tls_pair_t *rsa, const uint16_t *offer,
                  size_t n, uint32_t hashes, gw__tls_policy_t *pol, br_ssl_server_choices *ch) {
  memset(&sc, 0, sizeof sc);
  for (size_t i = 0; i < n; i++) {
    sc.client_suites[i][0] = offer[i];
    sc.client_suites[i][1] = (uint16_t)(keyx_of(offer[i]) << 12);
  }
  sc.client_suites_num = (unsigned char)n;
  sc.hashes = hashes;
  creds.ec = ec;
  creds.rsa = rsa;
  *pol = (gw__tls_policy_t){.vtable = &policy_class, .tls = &tls, .creds = &creds};
  memset(ch, 0, sizeof *ch);
  return policy_choose(&pol->vtable, &sc, ch);
}

static const uint16_t EC128 = BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256;
static const uint16_t EC256 = BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384;
static const uint16_t RSA128 = BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256;
static const uint16_t RSACHA = BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256;

static void test_choice(void) {
  const gw__tls_pair_t *ec = &creds.pairs[0], *rsa = &creds.pairs[1];
  gw__tls_policy_t pol;
  br_ssl_server_choices ch;
  uint32_t both = RSA_HASH(br_sha256_ID) | ECDSA_HASH(br_sha256_ID);

  /* Both offered: the EC chain, with the first ECDSA suite. */
  const uint16_t all[] = {EC128, RSA128, EC256};
  T_CHECK_EQ_INT(choose(ec, rsa, all, 3, both, &pol, &ch), 1);
  T_CHECK(pol.chosen == ec);
  T_CHECK_EQ_INT(ch.cipher_suite, EC128);
  T_CHECK_EQ_INT(ch.algo_id, 0xff00 + br_sha256_ID);
  T_CHECK(ch.chain == ec->chain);
  T_CHECK_EQ_INT(ch.chain_len, 1);

  /* The EC chain wins even over an RSA suite earlier in our order. */
  const uint16_t rsa_first[] = {RSACHA, EC256};
  T_CHECK_EQ_INT(choose(ec, rsa, rsa_first, 2, both, &pol, &ch), 1);
  T_CHECK(pol.chosen == ec);
  T_CHECK_EQ_INT(ch.cipher_suite, EC256);

  /* RSA suites only: the RSA chain. */
  const uint16_t rsa_only[] = {RSA128, RSACHA};
  T_CHECK_EQ_INT(choose(ec, rsa, rsa_only, 2, both, &pol, &ch), 1);
  T_CHECK(pol.chosen == rsa);
  T_CHECK_EQ_INT(ch.cipher_suite, RSA128);
  T_CHECK(ch.chain == rsa->chain);

  /* Every suite but no ECDSA signature: the RSA chain. */
  T_CHECK_EQ_INT(choose(ec, rsa, all, 3, RSA_HASH(br_sha512_ID), &pol, &ch), 1);
  T_CHECK(pol.chosen == rsa);
  T_CHECK_EQ_INT(ch.cipher_suite, RSA128);
  T_CHECK_EQ_INT(ch.algo_id, 0xff00 + br_sha512_ID);

  /* The hash: SHA-256 first, else SHA-384, else SHA-512. */
  T_CHECK_EQ_INT(choose(ec, rsa, all, 3,
                        ECDSA_HASH(br_sha384_ID) | ECDSA_HASH(br_sha256_ID), &pol, &ch), 1);
  T_CHECK_EQ_INT(ch.algo_id, 0xff00 + br_sha256_ID);
  T_CHECK_EQ_INT(choose(ec, rsa, all, 3,
                        ECDSA_HASH(br_sha512_ID) | ECDSA_HASH(br_sha384_ID), &pol, &ch), 1);
  T_CHECK_EQ_INT(ch.algo_id, 0xff00 + br_sha384_ID);

  /* Nothing fits: RSA suites with ECDSA signatures only; or the one pair
   * of a type the client cannot take. */
  T_CHECK_EQ_INT(choose(ec, rsa, rsa_only, 2, ECDSA_HASH(br_sha256_ID), &pol, &ch), 0);
  T_CHECK(pol.chosen == NULL);
  const uint16_t ec_only[] = {EC128, EC256};
  T_CHECK_EQ_INT(choose(NULL, rsa, ec_only, 2, both, &pol, &ch), 0);
  T_CHECK_EQ_INT(choose(ec, NULL, rsa_only, 2, both, &pol, &ch), 0);
  T_CHECK_EQ_INT(choose(ec, NULL, all, 3, both, &pol, &ch), 1);
  T_CHECK(pol.chosen == ec);
  T_CHECK_EQ_INT(choose(ec, rsa, all, 0, both, &pol, &ch), 0);
}

/* The hash BearSSL hands do_sign() for the ECDHE parameters. */
static void hash_of(const br_hash_class *hf, const char *text, unsigned char *out) {
  br_hash_compat_context h;
  hf->init(&h.vtable);
  hf->update(&h.vtable, text, strlen(text));
  hf->out(&h.vtable, out);
}

static bool ec_signature_verifies(gw__tls_policy_t *pol) {
  unsigned char hash[32], buf[512];
  hash_of(&br_sha256_vtable, "client random, server random, ECDHE point", hash);
  memcpy(buf, hash, sizeof hash);
  size_t n = policy_sign(&pol->vtable, 0xff00 + br_sha256_ID, buf, sizeof hash, sizeof buf);
  return n > 0 &&
         br_ecdsa_vrfy_asn1_get_default()(br_ec_get_default(), hash, sizeof hash, &ec_pub, buf,
                                          n) == 1;
}

static void test_sign_ec(void) {
  gw__tls_policy_t pol;
  br_ssl_server_choices ch;
  const uint16_t all[] = {EC128, RSA128};
  T_REQUIRE(choose(&creds.pairs[0], &creds.pairs[1], all, 2, ECDSA_HASH(br_sha256_ID), &pol,
                   &ch) == 1);
  T_CHECK(ec_signature_verifies(&pol)); /* BearSSL's ECDSA */

  /* A hash of the wrong length for the id is refused, not signed. */
  unsigned char buf[512] = {0};
  T_CHECK_EQ_INT(policy_sign(&pol.vtable, 0xff00 + br_sha256_ID, buf, 20, sizeof buf), 0);
  /* No room for the signature: refused. */
  T_CHECK_EQ_INT(policy_sign(&pol.vtable, 0xff00 + br_sha256_ID, buf, 32, 8), 0);

#ifdef GW_HAVE_LIBCRYPTO
  /* libcrypto's ECDSA with the key's libcrypto copy, as a loaded pair
   * has it when the gateway runs on libcrypto's curves. */
  gw__tls_pair_t *ec = &creds.pairs[0];
  T_REQUIRE(gw__tls_ec_libcrypto_init() == 0);
  T_REQUIRE(gw__tls_ec_key_make(&ec->ec_fast, br_skey_decoder_get_ec(&ec->skey)) == 0);
  T_CHECK(ec_signature_verifies(&pol));
  /* Another key made, then signed with on the same thread: each key
   * signs as itself (the thread's context follows the key). */
  gw__tls_ec_key_t *first = ec->ec_fast;
  T_REQUIRE(gw__tls_ec_key_make(&ec->ec_fast, br_skey_decoder_get_ec(&ec->skey)) == 0);
  T_CHECK(ec_signature_verifies(&pol));
  gw__tls_ec_key_free(first);
  T_CHECK(ec_signature_verifies(&pol));
  gw__tls_ec_key_free(ec->ec_fast);
  ec->ec_fast = NULL;
  gw__tls_ec_libcrypto_free();
#endif
}

static void test_sign_rsa(void) {
  gw__tls_policy_t pol;
  br_ssl_server_choices ch;
  const uint16_t rsa_only[] = {RSA128};
  T_REQUIRE(choose(&creds.pairs[0], &creds.pairs[1], rsa_only, 1, RSA_HASH(br_sha384_ID), &pol,
                   &ch) == 1);
  T_REQUIRE(ch.algo_id == 0xff00 + br_sha384_ID);
  unsigned char hash[48], buf[512], out[48];
  hash_of(&br_sha384_vtable, "client random, server random, ECDHE point", hash);
  memcpy(buf, hash, sizeof hash);
  size_t n = policy_sign(&pol.vtable, ch.algo_id, buf, sizeof hash, sizeof buf);
  T_CHECK_EQ_INT(n, 128); /* the modulus length */
  T_CHECK(br_rsa_pkcs1_vrfy_get_default()(buf, n, BR_HASH_OID_SHA384, sizeof hash, &rsa_pub,
                                          out) == 1);
  T_CHECK(memcmp(out, hash, sizeof hash) == 0);
  /* Smaller than the modulus: no room, refused. */
  memcpy(buf, hash, sizeof hash);
  T_CHECK_EQ_INT(policy_sign(&pol.vtable, ch.algo_id, buf, sizeof hash, 100), 0);
}

int main(void) {
  rt_log_init("test_tls_policy", RT_LOG_ERROR, NULL, 0);
  br_hmac_drbg_init(&rng, &br_sha256_vtable, "test_tls_policy seed", 20);
  tls.ec = br_ec_get_default();
  tls.ecdsa = br_ecdsa_sign_asn1_get_default();
  tls.rsa_sign = br_rsa_pkcs1_sign_get_default();
  if (!make_ec_pair(&creds.pairs[0]) || !make_rsa_pair(&creds.pairs[1])) {
    fprintf(stderr, "cannot make the test keys\n");
    return 1;
  }
  T_RUN(test_choice);
  T_RUN(test_sign_ec);
  T_RUN(test_sign_rsa);
  return t_done();
}
