/*
 * tls.c - the TLS profile: certificate chains and keys from PEM files (an
 * ECDSA pair, an RSA pair, or one of each), the policy that picks one per
 * handshake, the engine set-up of each connection, and the session cache
 * all loop threads share.
 *
 * Profile: TLS 1.2 only; ECDHE key exchange signed by the certificate's
 * key (ECDSA P-256 or RSA, whichever the client can verify, ECDSA when it
 * can do both); AES-GCM or ChaCha20-Poly1305 records. No CBC
 * (padding oracles), no static RSA (no forward secrecy), no TLS 1.0/1.1,
 * no renegotiation. The server's order of suites wins: AES-128-GCM first
 * (AES-NI makes it the cheapest), then ChaCha20 for clients without AES
 * hardware, then AES-256-GCM.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "tls_internal.h"

const char *gw__tls_suite_name(uint16_t suite) {
  switch (suite) {
  case BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256: return "ECDHE-ECDSA-AES128-GCM-SHA256";
  case BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256: return "ECDHE-RSA-AES128-GCM-SHA256";
  case BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256: return "ECDHE-ECDSA-CHACHA20-POLY1305";
  case BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256: return "ECDHE-RSA-CHACHA20-POLY1305";
  case BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384: return "ECDHE-ECDSA-AES256-GCM-SHA384";
  case BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384: return "ECDHE-RSA-AES256-GCM-SHA384";
  default: return "unknown";
  }
}

/* ------------------------------------------------------------------------ */
/* Session cache                                                            */
/* ------------------------------------------------------------------------ */

/* Empties the older generation once the current one is half a lifetime
 * old. Called with the lock held. */
static void cache_rotate(gw__session_cache_t *c) {
  uint64_t now = rt_now_ns();
  if (now - c->rotated_ns < c->half_life_ns) return;
  uint32_t old = c->cur ^ 1u;
  br_ssl_session_cache_lru_init(&c->gen[old], c->store[old], c->store_bytes);
  c->cur = old;
  c->rotated_ns = now;
}

static void cache_save(const br_ssl_session_cache_class **ctx,
                       br_ssl_server_context *sc, const br_ssl_session_parameters *params) {
  gw__session_cache_t *c = (gw__session_cache_t *)ctx;
  pthread_mutex_lock(&c->mu);
  cache_rotate(c);
  const br_ssl_session_cache_class **lru = &c->gen[c->cur].vtable;
  (*lru)->save(lru, sc, params);
  pthread_mutex_unlock(&c->mu);
}

static int cache_load(const br_ssl_session_cache_class **ctx, br_ssl_server_context *sc,
                      br_ssl_session_parameters *params) {
  gw__session_cache_t *c = (gw__session_cache_t *)ctx;
  pthread_mutex_lock(&c->mu);
  cache_rotate(c);
  int found = 0;
  for (uint32_t k = 0; k < 2 && !found; k++) {
    const br_ssl_session_cache_class **lru = &c->gen[c->cur ^ k].vtable;
    found = (*lru)->load(lru, sc, params);
  }
  pthread_mutex_unlock(&c->mu);
  /* The server context is the first member of our connection. */
  if (found) ((gw_tls_conn_t *)(void *)sc)->resumed = true;
  atomic_fetch_add_explicit(found ? &c->stats->cache_hits : &c->stats->cache_misses, 1,
                            memory_order_relaxed);
  return found;
}

static const br_ssl_session_cache_class cache_class = {
    .context_size = sizeof(gw__session_cache_t),
    .save = cache_save,
    .load = cache_load,
};

static int cache_init(gw__session_cache_t *c, uint32_t entries, uint32_t lifetime_s,
                      gw_tls_stats_t *stats) {
  /* BearSSL's LRU uses 100 bytes per entry; each generation holds half. */
  c->store_bytes = (size_t)(entries / 2 + 1) * 100;
  for (int k = 0; k < 2; k++) {
    c->store[k] = malloc(c->store_bytes);
    if (c->store[k] == NULL) return -ENOMEM;
    br_ssl_session_cache_lru_init(&c->gen[k], c->store[k], c->store_bytes);
  }
  pthread_mutex_init(&c->mu, NULL);
  c->vtable = &cache_class;
  c->half_life_ns = (uint64_t)(lifetime_s > 0 ? lifetime_s : 1) * 500000000u;
  c->rotated_ns = rt_now_ns();
  c->stats = stats;
  return 0;
}

static void cache_deinit(gw__session_cache_t *c) {
  if (c->vtable == NULL) return;
  pthread_mutex_destroy(&c->mu);
  for (int k = 0; k < 2; k++) {
    if (c->store[k] != NULL) explicit_bzero(c->store[k], c->store_bytes);
    free(c->store[k]);
  }
}

/* ------------------------------------------------------------------------ */
/* Certificate chains and keys                                              */
/* ------------------------------------------------------------------------ */

/* A chain and its key (wire/tls.h), with the gateway's code for bad PEM. */
static int load_chain_key(gw__tls_pair_t *t, const char *cert_path, const char *key_path) {
  int rc = wire_tls_chain_load(cert_path, t->cert_objs, &t->cert_objs_count, t->chain,
                               GW__TLS_CHAIN_MAX, &t->chain_len);
  if (rc == 0) rc = wire_tls_key_load(key_path, &t->skey);
  if (rc == 0) t->key_type = br_skey_decoder_key_type(&t->skey);
  return rc == WIRE_TLS_E_PEM ? GW_E_PEM : rc;
}

/* The leaf's public key must be the one of our private key, of a type and
 * size we accept. */
static int check_pair(gw__tls_pair_t *t) {
  br_x509_decoder_context dc;
  br_x509_decoder_init(&dc, NULL, NULL);
  br_x509_decoder_push(&dc, t->chain[0].data, t->chain[0].data_len);
  if (wire_tls_key_matches(br_x509_decoder_get_pkey(&dc), &t->skey) < 0) return GW_E_KEY;
  if (t->key_type == BR_KEYTYPE_EC) {
    snprintf(t->key_desc, sizeof t->key_desc, "ecdsa-p256");
  } else {
    unsigned bits = (unsigned)br_skey_decoder_get_rsa(&t->skey)->n_bitlen;
    snprintf(t->key_desc, sizeof t->key_desc, "rsa-%u", bits);
  }
  return 0;
}

static void fingerprint(gw__tls_pair_t *t) {
  br_sha256_context h;
  unsigned char d[32];
  br_sha256_init(&h);
  br_sha256_update(&h, t->chain[0].data, t->chain[0].data_len);
  br_sha256_out(&h, d);
  for (int i = 0; i < 32; i++) snprintf(t->cert_sha256 + 2 * i, 3, "%02x", d[i]);
}

/* With libcrypto's curves, an EC key gets libcrypto's copy to sign with;
 * this runs on every load, so a reloaded key signs as fast as the first. */
static int pair_fast_key(const gw_tls_t *tls, gw__tls_pair_t *t) {
#ifdef GW_HAVE_LIBCRYPTO
  if (tls->ec_libcrypto && t->key_type == BR_KEYTYPE_EC)
    return gw__tls_ec_key_make(&t->ec_fast, br_skey_decoder_get_ec(&t->skey));
#else
  (void)tls;
  (void)t;
#endif
  return 0;
}

/* Reads a chain and its key into t (zeroed); checks they belong together. */
static int pair_load(const gw_tls_t *tls, gw__tls_pair_t *t, const char *cert_path,
                     const char *key_path) {
  int rc = load_chain_key(t, cert_path, key_path);
  if (rc == 0) rc = check_pair(t);
  if (rc == 0) rc = pair_fast_key(tls, t);
  if (rc < 0) {
    RT_ERROR("TLS certificate and key not loaded", RT_LF_STR("cert", cert_path),
             RT_LF_STR("key", key_path), RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  fingerprint(t);
  return 0;
}

static void pair_free(gw__tls_pair_t *t) {
  gw__pem_free(t->cert_objs, t->cert_objs_count);
#ifdef GW_HAVE_LIBCRYPTO
  gw__tls_ec_key_free(t->ec_fast);
#endif
  explicit_bzero(&t->skey, sizeof t->skey);
}

static void creds_free(gw__tls_creds_t *k) {
  if (k == NULL) return;
  for (size_t i = 0; i < GW__TLS_PAIRS_MAX; i++) pair_free(&k->pairs[i]);
  free(k);
}

static void creds_release(gw__tls_creds_t *k) {
  if (k == NULL) return;
  unsigned before = atomic_fetch_sub_explicit(&k->refs, 1, memory_order_acq_rel);
  assert(before > 0);
  if (before == 1) creds_free(k);
}

/* Files each pair under its key type: at most one of each, and the
 * second pair (GW_TLS_CERT_RSA) must be the RSA one. */
static int creds_sort(gw__tls_creds_t *k) {
  for (size_t i = 0; i < k->pairs_count; i++) {
    const gw__tls_pair_t *t = &k->pairs[i];
    const gw__tls_pair_t **slot = t->key_type == BR_KEYTYPE_EC ? &k->ec : &k->rsa;
    if (*slot != NULL || (i == 1 && t->key_type != BR_KEYTYPE_RSA)) {
      RT_ERROR("the second TLS certificate must be RSA, the first ECDSA",
               RT_LF_STR("first", k->pairs[0].key_desc), RT_LF_STR("second", t->key_desc));
      return GW_E_KEY;
    }
    *slot = t;
  }
  return k->ec != NULL || k->rsa != NULL ? 0 : GW_E_KEY;
}

static void creds_describe(gw__tls_creds_t *k) {
  size_t d = 0, h = 0;
  for (size_t i = 0; i < k->pairs_count; i++) {
    const gw__tls_pair_t *t = &k->pairs[i];
    d += (size_t)snprintf(k->key_desc + d, sizeof k->key_desc - d, "%s%s", i ? "," : "",
                          t->key_desc);
    h += (size_t)snprintf(k->cert_sha256 + h, sizeof k->cert_sha256 - h, "%s%s", i ? "," : "",
                          t->cert_sha256);
    assert(d < sizeof k->key_desc);
    assert(h < sizeof k->cert_sha256);
  }
}

/* Reads every configured pair; the set is whole or not made at all. */
static int creds_load(const gw_tls_t *tls, gw__tls_creds_t **out) {
  gw__tls_creds_t *k = calloc(1, sizeof *k);
  if (k == NULL) return -ENOMEM;
  int rc = pair_load(tls, &k->pairs[k->pairs_count++], tls->cert_path, tls->key_path);
  if (rc == 0 && tls->rsa_cert_path != NULL)
    rc = pair_load(tls, &k->pairs[k->pairs_count++], tls->rsa_cert_path, tls->rsa_key_path);
  if (rc == 0) rc = creds_sort(k);
  if (rc < 0) {
    creds_free(k);
    return rc;
  }
  creds_describe(k);
  atomic_init(&k->refs, 1); /* the gateway's, while it is the current set */
  *out = k;
  return 0;
}

/* "Strict-Transport-Security: <value>\r\n", refusing CR, LF and controls
 * that would let the value split the head. */
static int make_inject_lines(gw_tls_t *t, const char *hsts) {
  if (hsts == NULL || hsts[0] == '\0') return 0;
  for (const char *p = hsts; *p; p++)
    if ((unsigned char)*p < 0x20 || *p == 0x7f) return GW_E_CONFIG;
  size_t n = strlen(hsts) + sizeof "Strict-Transport-Security: \r\n";
  t->inject_lines = malloc(n);
  if (t->inject_lines == NULL) return -ENOMEM;
  snprintf(t->inject_lines, n, "Strict-Transport-Security: %s\r\n", hsts);
  return 0;
}

/* libcrypto's curve arithmetic when built in and not declined, else
 * BearSSL's (see tls_ec_openssl.c for why). */
static int choose_ec(gw_tls_t *t, bool bearssl) {
  t->ec = br_ec_get_default();
  t->ecdsa = br_ecdsa_sign_asn1_get_default();
  t->rsa_sign = br_rsa_pkcs1_sign_get_default();
#ifdef GW_HAVE_LIBCRYPTO
  if (!bearssl) {
    int rc = gw__tls_ec_libcrypto_init();
    if (rc < 0) return rc;
    t->ec = gw__tls_ec_libcrypto();
    t->ec_libcrypto = true;
  }
#else
  (void)bearssl;
#endif
  return 0;
}

/* Copies the paths the reloads read again. */
static int keep_paths(gw_tls_t *t, const gw_tls_config_t *cfg) {
  t->cert_path = strdup(cfg->cert_path);
  t->key_path = strdup(cfg->key_path);
  if (t->cert_path == NULL || t->key_path == NULL) return -ENOMEM;
  if (cfg->rsa_cert_path == NULL) return 0;
  if (NEVER(cfg->rsa_key_path == NULL)) return GW_E_CONFIG;
  t->rsa_cert_path = strdup(cfg->rsa_cert_path);
  t->rsa_key_path = strdup(cfg->rsa_key_path);
  return t->rsa_cert_path != NULL && t->rsa_key_path != NULL ? 0 : -ENOMEM;
}

int gw_tls_create(gw_tls_t **out, const gw_tls_config_t *cfg) {
  gw_tls_t *t = calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  pthread_mutex_init(&t->reload_mu, NULL);
  gw__tls_creds_t *k = NULL;
  int rc = keep_paths(t, cfg);
  /* The curves first: whether EC keys get libcrypto's copy depends on it. */
  if (rc == 0) rc = choose_ec(t, cfg->ec_bearssl);
  if (rc == 0) rc = creds_load(t, &k);
  if (rc == 0) atomic_init(&t->creds, k);
  if (rc == 0) rc = make_inject_lines(t, cfg->hsts);
  /* No entries: no resumption at all (every handshake is a full one). */
  if (rc == 0 && cfg->session_cache_entries > 0)
    rc = cache_init(&t->cache, cfg->session_cache_entries,
                    cfg->session_lifetime_s ? cfg->session_lifetime_s : 3600, &t->stats);
  if (rc < 0) {
    gw_tls_destroy(t);
    return rc;
  }
  t->handshake_timeout_ms = cfg->handshake_timeout_ms ? cfg->handshake_timeout_ms : 10000;
  wire_tls_ciphers_choose(&t->ciphers);
  *out = t;
  return 0;
}

int gw_tls_reload(gw_tls_t *t) {
  pthread_mutex_lock(&t->reload_mu);
  gw__tls_creds_t *k = NULL;
  int rc = creds_load(t, &k);
  if (rc == 0) creds_release(atomic_exchange_explicit(&t->creds, k, memory_order_acq_rel));
  pthread_mutex_unlock(&t->reload_mu);
  return rc;
}

void gw_tls_destroy(gw_tls_t *t) {
  if (t == NULL) return;
  cache_deinit(&t->cache);
  creds_release(atomic_load(&t->creds));
#ifdef GW_HAVE_LIBCRYPTO
  if (t->ec_libcrypto) gw__tls_ec_libcrypto_free();
#endif
  pthread_mutex_destroy(&t->reload_mu);
  free(t->cert_path);
  free(t->key_path);
  free(t->rsa_cert_path);
  free(t->rsa_key_path);
  free(t->inject_lines);
  free(t);
}

const char *gw_tls_key_desc(const gw_tls_t *t) { return atomic_load(&t->creds)->key_desc; }

const char *gw_tls_cert_sha256(const gw_tls_t *t) { return atomic_load(&t->creds)->cert_sha256; }

const char *gw_tls_ec_desc(const gw_tls_t *t) { return t->ec_libcrypto ? "libcrypto" : "bearssl"; }

gw_tls_stats_t *gw_tls_stats(gw_tls_t *t) { return &t->stats; }

/* ------------------------------------------------------------------------ */
/* The policy: which chain a full handshake gets                            */
/* ------------------------------------------------------------------------ */

/*
 * BearSSL calls choose() once the ClientHello is read, with the suites
 * both sides support (in our order: the engine enforces server
 * preferences) and the signature hashes the client accepts, already
 * narrowed to ours; then do_sign() to sign the ECDHE parameters. A
 * resumed handshake calls neither: it reuses the suite and master secret
 * of the session, and no certificate is sent, so a session made on either
 * chain, or on a set a reload has since replaced, resumes as it was.
 *
 * An EC chain is preferred whenever the client takes ECDHE_ECDSA: its
 * signature costs a fraction of an RSA one (see tls_ec_openssl.c) and the
 * chain is shorter. A client that offers only ECDHE_RSA suites, or
 * accepts no ECDSA signature, gets the RSA chain. Our suites are ECDHE
 * only, so the key never decrypts (do_keyx() refuses).
 */

/* The hash that signs the ECDHE parameters: SHA-256, else SHA-384, else
 * SHA-512, the first the client accepts (ids: a bit per hash id). */
static unsigned sign_hash_id(uint32_t ids) {
  static const unsigned order[] = {br_sha256_ID, br_sha384_ID, br_sha512_ID};
  for (size_t i = 0; i < sizeof order / sizeof order[0]; i++)
    if ((ids >> order[i]) & 1u) return order[i];
  return 0;
}

static const br_hash_class *sign_hash(unsigned id) {
  switch (id) {
  case br_sha256_ID: return &br_sha256_vtable;
  case br_sha384_ID: return &br_sha384_vtable;
  case br_sha512_ID: return &br_sha512_vtable;
  default: return NULL;
  }
}

static const unsigned char *sign_hash_oid(unsigned id) {
  switch (id) {
  case br_sha256_ID: return BR_HASH_OID_SHA256;
  case br_sha384_ID: return BR_HASH_OID_SHA384;
  default: return BR_HASH_OID_SHA512;
  }
}

/* The first offered suite whose key exchange is keyx, or -1. */
static int offered_suite(const br_suite_translated *offered, size_t n, unsigned keyx) {
  for (size_t i = 0; i < n; i++)
    if ((unsigned)(offered[i][1] >> 12) == keyx) return (int)i;
  return -1;
}

static int policy_choose(const br_ssl_server_policy_class **pctx, const br_ssl_server_context *cc,
                         br_ssl_server_choices *choices) {
  gw__tls_policy_t *p = (gw__tls_policy_t *)(void *)pctx;
  assert(p->creds->ec != NULL || p->creds->rsa != NULL); /* creds_sort() */
  assert(p->chosen == NULL); /* once per full handshake; none renegotiates */
  size_t n = 0;
  const br_suite_translated *offered = br_ssl_server_get_client_suites(cc, &n);
  uint32_t hashes = br_ssl_server_get_client_hashes(cc);
  /* Bits 0-7: hashes with RSA signatures; 8-15: with ECDSA. */
  const struct {
    const gw__tls_pair_t *pair;
    unsigned keyx;
    unsigned hash;
  } ways[] = {
      {p->creds->ec, BR_SSLKEYX_ECDHE_ECDSA, sign_hash_id((hashes >> 8) & 0xffu)},
      {p->creds->rsa, BR_SSLKEYX_ECDHE_RSA, sign_hash_id(hashes & 0xffu)},
  };
  for (size_t w = 0; w < sizeof ways / sizeof ways[0]; w++) {
    if (ways[w].pair == NULL || ways[w].hash == 0) continue;
    int i = offered_suite(offered, n, ways[w].keyx);
    if (i < 0) continue;
    choices->cipher_suite = offered[i][0];
    choices->algo_id = 0xff00u + ways[w].hash; /* the engine hashes, we sign */
    choices->chain = ways[w].pair->chain;
    choices->chain_len = ways[w].pair->chain_len;
    p->chosen = ways[w].pair;
    return 1;
  }
  return 0; /* no suite for any chain we hold: handshake_failure */
}

static uint32_t policy_keyx(const br_ssl_server_policy_class **pctx, unsigned char *data,
                            size_t *len) {
  (void)pctx;
  (void)data;
  (void)len;
  return 0; /* ECDHE suites only: never asked */
}

static size_t sign_ec(const gw__tls_policy_t *p, const br_hash_class *hf,
                      const unsigned char *hash, unsigned char *out, size_t out_bytes) {
  const gw__tls_pair_t *pair = p->chosen;
  unsigned char sig[80]; /* a DER ECDSA P-256 signature is at most 72 bytes */
  size_t n = 0;
#ifdef GW_HAVE_LIBCRYPTO
  if (pair->ec_fast != NULL) n = gw__tls_ec_key_sign(pair->ec_fast, hf, hash, sig);
#endif
  /* BearSSL's code when there is no libcrypto copy, or it failed. */
  if (n == 0) n = p->tls->ecdsa(p->tls->ec, hf, hash, br_skey_decoder_get_ec(&pair->skey), sig);
  if (n == 0 || n > out_bytes || n > sizeof sig) return 0;
  memcpy(out, sig, n);
  return n;
}

static size_t sign_rsa(const gw__tls_policy_t *p, unsigned id, const unsigned char *hash,
                       size_t hash_len, unsigned char *out, size_t out_bytes) {
  const br_rsa_private_key *sk = br_skey_decoder_get_rsa(&p->chosen->skey);
  size_t n = (sk->n_bitlen + 7) / 8;
  if (n > out_bytes) return 0;
  return p->tls->rsa_sign(sign_hash_oid(id), hash, hash_len, sk, out) ? n : 0;
}

/* data holds the hash of the ECDHE parameters (algo_id is 0xff00 + the
 * hash id chosen above); the signature replaces it. */
static size_t policy_sign(const br_ssl_server_policy_class **pctx, unsigned algo_id,
                          unsigned char *data, size_t hv_len, size_t len) {
  const gw__tls_policy_t *p = (const gw__tls_policy_t *)(const void *)pctx;
  const br_hash_class *hf = sign_hash(algo_id & 0xffu);
  if (NEVER(p->chosen == NULL) || NEVER(hf == NULL)) return 0;
  if (NEVER(algo_id >> 8 != 0xffu)) return 0;
  unsigned char hash[64];
  if (hv_len != ((hf->desc >> BR_HASHDESC_OUT_OFF) & BR_HASHDESC_OUT_MASK)) return 0;
  memcpy(hash, data, hv_len);
  if (p->chosen->key_type == BR_KEYTYPE_EC) return sign_ec(p, hf, hash, data, len);
  return sign_rsa(p, algo_id & 0xffu, hash, hv_len, data, len);
}

static const br_ssl_server_policy_class policy_class = {
    .context_size = sizeof(gw__tls_policy_t),
    .choose = policy_choose,
    .do_keyx = policy_keyx,
    .do_sign = policy_sign,
};

/* ------------------------------------------------------------------------ */
/* Engine of one connection                                                 */
/* ------------------------------------------------------------------------ */

/* The current set, with a reference for the caller. The mutex keeps a
 * reload from releasing the set between the load and the increment. */
static gw__tls_creds_t *creds_acquire(gw_tls_t *t) {
  pthread_mutex_lock(&t->reload_mu);
  gw__tls_creds_t *k = atomic_load_explicit(&t->creds, memory_order_acquire);
  atomic_fetch_add_explicit(&k->refs, 1, memory_order_relaxed);
  pthread_mutex_unlock(&t->reload_mu);
  return k;
}

int gw__tls_engine_init(gw_tls_t *t, gw_tls_conn_t *c) {
  br_ssl_server_context *sc = &c->sc;
  br_ssl_engine_context *eng = &sc->eng;
  br_ssl_server_zero(sc);
  wire_tls_engine_profile(eng, &t->ciphers, t->ec);
  assert(c->creds == NULL);
  c->creds = creds_acquire(t);
  c->policy = (gw__tls_policy_t){.vtable = &policy_class, .tls = t, .creds = c->creds};
  br_ssl_server_set_policy(sc, &c->policy.vtable);
  br_ssl_engine_add_flags(eng, BR_OPT_ENFORCE_SERVER_PREFERENCES | BR_OPT_NO_RENEGOTIATION);
  br_ssl_engine_set_buffers_bidi(eng, c->bufs->in, sizeof c->bufs->in, c->bufs->out,
                                 sizeof c->bufs->out);
  if (t->cache.vtable != NULL) br_ssl_server_set_cache(sc, &t->cache.vtable);
  return br_ssl_server_reset(sc) ? 0 : GW_E_TLS;
}

void gw__tls_engine_done(gw_tls_conn_t *c) {
  creds_release(c->creds);
  c->creds = NULL;
}
