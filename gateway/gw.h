/*
 * gw.h - the gateway: the platform's only public entry point.
 *
 * HTTPS in (TLS 1.2 on BearSSL, as a byte filter under the wire HTTP
 * server), JWT authentication, role checks against the route table, rate
 * limits, and proxying to the services over pooled keep-alive connections
 * with the caller's identity in signed headers. Pieces, in the order they
 * appear below:
 *   errors       GW_E_* in -3000..-3099, gw_strerror()
 *   addresses    client addresses as fixed-size keys
 *   connlimit    connections per client address, shared by all threads
 *   ratelimit    token buckets per key (address or subject), shared
 *   inject       fixed header lines added to every response (HSTS)
 *   tls          certificates, the shared session cache, the per-thread filter
 *   roles, jwt   keys by kid with a pinned algorithm, signing, verification
 *   token cache  verified tokens by SHA-256 until they expire, per thread
 *   routes       the route table of the public API and its role checks
 *   forwarding   which client headers reach a service, identity headers
 *   upstreams    service addresses, round robin, health
 *
 * Threads: objects documented "shared" are built at start-up and are safe
 * to use from every loop thread; the others belong to one loop thread.
 */
#ifndef GW_H
#define GW_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "http.h"
#include "rt.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

enum {
  GW_E_CONFIG = -3000,     /* bad or missing configuration */
  GW_E_PEM = -3001,        /* a PEM file could not be read or decoded */
  GW_E_KEY = -3002,        /* a key is missing, unsupported or does not match */
  GW_E_TLS = -3003,        /* the TLS engine failed (bad record, alert, ...) */
  GW_E_LIMIT = -3004,      /* a per-address or per-subject limit was hit */
  GW_E_FULL = -3005,       /* a fixed table is full */
  /* Token verification: every one of these is answered 401. */
  GW_E_TOKEN_MALFORMED = -3010, /* not three base64url parts of JSON */
  GW_E_TOKEN_ALG = -3011,       /* alg refused, or not the key's pinned alg */
  GW_E_TOKEN_KID = -3012,       /* kid missing or unknown */
  GW_E_TOKEN_SIGNATURE = -3013, /* the signature does not verify */
  GW_E_TOKEN_EXPIRED = -3014,   /* exp passed (beyond the leeway) */
  GW_E_TOKEN_EARLY = -3015,     /* nbf or iat in the future (beyond the leeway) */
  GW_E_TOKEN_CLAIMS = -3016,    /* typ, iss, aud, sub or roles wrong or missing */
  GW_E_TOKEN_MISSING = -3017,   /* no bearer token where one is required */
};
#define GW_E_RANGE_LO (-3099)
#define GW_E_RANGE_HI (-3000)

/* A message for a GW_E_* code. Never NULL. Registered with rt_strerror by
 * gw_register_errors(). */
const char *gw_strerror(int err);

/* Registers gw_strerror() with rt_strerror_register(). Call at start-up. */
void gw_register_errors(void);

/* ------------------------------------------------------------------------ */
/* Client addresses                                                         */
/* ------------------------------------------------------------------------ */

/* An IPv4 or IPv6 address as 16 bytes (IPv4 mapped into ::ffff:0:0/96), so
 * that both families make one kind of key. */
typedef struct gw_addr {
  uint8_t bytes[16];
} gw_addr_t;

/* Fills *out from a socket address. Returns 0 or -EAFNOSUPPORT. */
int gw_addr_from_sockaddr(gw_addr_t *out, const struct sockaddr *sa);

/* The peer address of a connected socket. Returns 0 or -errno. */
int gw_addr_of_peer(gw_addr_t *out, int fd);

/* Formats the address as text ("127.0.0.1", "::1") into out. */
void gw_addr_format(const gw_addr_t *a, char *out, size_t out_bytes);

/* ------------------------------------------------------------------------ */
/* Connections per client address (shared)                                  */
/* ------------------------------------------------------------------------ */

/* Counts open connections per address in a fixed table behind one mutex:
 * it is touched twice per connection, never per request. */
typedef struct gw_connlimit gw_connlimit_t;

/* A table for `slots` distinct addresses at once (rounded up to a power of
 * two), allowing `per_addr_max` connections each. 0 disables the limit. */
int gw_connlimit_create(gw_connlimit_t **out, uint32_t per_addr_max, uint32_t slots);
/* Frees the table (NULL is allowed). */
void gw_connlimit_destroy(gw_connlimit_t *cl);

/* Counts one more connection from `a`. Returns 0, GW_E_LIMIT when the
 * address is at its maximum, or GW_E_FULL when the table has no room for a
 * new address (both refuse the connection). */
int gw_connlimit_acquire(gw_connlimit_t *cl, const gw_addr_t *a);

/* Counts one connection less; only after a successful acquire. */
void gw_connlimit_release(gw_connlimit_t *cl, const gw_addr_t *a);

/* Connections counted for `a` now, for tests. */
uint32_t gw_connlimit_count(gw_connlimit_t *cl, const gw_addr_t *a);

/* ------------------------------------------------------------------------ */
/* Token buckets                                                            */
/* ------------------------------------------------------------------------ */

/* A rate: `per_s` tokens per second, at most `burst` saved up. */
typedef struct gw_rate {
  uint32_t per_s;  /* 0: unlimited */
  uint32_t burst;  /* at least 1 when per_s > 0 */
} gw_rate_t;

/* One bucket. Tokens are counted in millionths so that slow rates refill
 * smoothly without floating point. A zeroed bucket is full on first use. */
typedef struct gw_bucket {
  int64_t micro_tokens;
  uint64_t last_ns;
  bool started;
} gw_bucket_t;

/* What a client may know of a limit (the IETF httpapi draft's RateLimit-*
 * headers): the quota (the burst), the requests left now, and the seconds
 * until the bucket is full again. `set` is false for no limit. */
typedef struct gw_rate_state {
  bool set;
  uint32_t limit;
  uint32_t remaining;
  uint32_t reset_s;
} gw_rate_state_t;

/* The state of a bucket as of its last take. */
void gw_bucket_state(const gw_bucket_t *b, const gw_rate_t *rate, gw_rate_state_t *out);

/* Keeps in *into the tighter of the two (fewer requests left; then the
 * later reset). */
void gw_rate_state_merge(gw_rate_state_t *into, const gw_rate_state_t *other);

/* Writes "RateLimit-Limit: ..\r\nRateLimit-Remaining: ..\r\nRateLimit-Reset:
 * ..\r\n", or nothing when !s->set. */
void gw_rate_state_headers(const gw_rate_state_t *s, char *out, size_t out_bytes);

/* Takes one token at time now_ns. Returns 0 when there was one; otherwise
 * GW_E_LIMIT with *retry_after_s set to the whole seconds (at least 1)
 * until a token will be there. Time going backwards refills nothing. */
int gw_bucket_take(gw_bucket_t *b, const gw_rate_t *rate, uint64_t now_ns,
                   uint32_t *retry_after_s);

/* Buckets by key (an address, a subject), shared by every thread: striped
 * locks over fixed tables. When a stripe is full the bucket idle longest
 * is dropped; a dropped bucket comes back full, which only ever favours
 * the client, never refuses one wrongly. */
typedef struct gw_ratelimit gw_ratelimit_t;

/* `slots` buckets in all (rounded up), each at `rate`. */
int gw_ratelimit_create(gw_ratelimit_t **out, const gw_rate_t *rate, uint32_t slots);
/* Frees the table (NULL is allowed). */
void gw_ratelimit_destroy(gw_ratelimit_t *rl);

/* Takes one token from the bucket of `key`. As gw_bucket_take(); always 0
 * when the rate is unlimited. With `state`, also the bucket's state after
 * the take (unset when unlimited). */
int gw_ratelimit_take(gw_ratelimit_t *rl, const void *key, size_t key_bytes,
                      uint64_t now_ns, uint32_t *retry_after_s, gw_rate_state_t *state);

/* ------------------------------------------------------------------------ */
/* Header lines added to every response                                     */
/* ------------------------------------------------------------------------ */

/* Adds fixed header lines (such as Strict-Transport-Security) right after
 * the status line of every response in a stream of responses written by
 * the wire writers. It follows their framing (Content-Length; no body for
 * 1xx, 204 and 304), so a body is never touched, whatever it contains. */
typedef struct gw_inject {
  const char *lines;   /* "Name: value\r\n"..., not copied */
  size_t lines_len;
  uint8_t state;       /* private */
  uint8_t status_digits;
  uint16_t status;
  bool cl_line;        /* the current header line is Content-Length */
  bool cl_bad;
  uint32_t line_len;   /* bytes of the current header line so far */
  uint64_t body_left;
  uint64_t content_length;
  char line_start[16]; /* first bytes of the current header line */
} gw_inject_t;

/* Where the rewritten stream goes. Returns 0 or a negative error. */
typedef int (*gw_sink_fn)(void *ctx, const char *data, size_t len);

/* Starts a stream: `lines` (NULL or "Name: value\r\n"...) must outlive it. */
void gw_inject_init(gw_inject_t *in, const char *lines);

/* Passes `len` bytes through, adding the lines to each response head.
 * Returns 0, the sink's error, or GW_E_TLS when the stream is not a
 * response stream (our own writers never produce that). */
int gw_inject_push(gw_inject_t *in, const char *data, size_t len, gw_sink_fn sink,
                   void *ctx);

/* ------------------------------------------------------------------------ */
/* TLS                                                                      */
/* ------------------------------------------------------------------------ */

/* The certificates, keys and session cache, shared by every loop thread.
 * The session cache changes behind its own mutex; the certificates and
 * keys are replaced whole by gw_tls_reload(). */
typedef struct gw_tls gw_tls_t;

typedef struct gw_tls_config {
  const char *cert_path;        /* PEM chain, leaf first */
  const char *key_path;         /* PEM key: EC P-256 or RSA (>= 2048 bits) */
  const char *rsa_cert_path;    /* NULL, or a second chain with an RSA key,
                                 * served to clients that cannot verify
                                 * ECDSA; then the first pair must be EC */
  const char *rsa_key_path;     /* set with rsa_cert_path */
  uint32_t session_cache_entries; /* resumable sessions kept (100 B each); 0: none */
  uint32_t session_lifetime_s;  /* a session resumes for at most this long */
  uint32_t handshake_timeout_ms; /* also: longest wait for a whole record */
  const char *hsts;             /* Strict-Transport-Security value */
  bool ec_bearssl;              /* curve arithmetic from BearSSL even when
                                 * libcrypto's (faster) was built in */
} gw_tls_config_t;

/* Counters, all threads. */
typedef struct gw_tls_stats {
  _Atomic uint64_t handshakes;        /* completed */
  _Atomic uint64_t resumed;           /* completed by session resumption */
  _Atomic uint64_t failed;            /* closed by a TLS error */
  _Atomic uint64_t stalled;           /* closed by the handshake/record timer */
  _Atomic uint64_t refused_per_addr;  /* over the per-address connection cap */
  _Atomic uint64_t bufs_exhausted;    /* closed mid-record: no record buffer left */
  _Atomic uint64_t cache_hits;
  _Atomic uint64_t cache_misses;
} gw_tls_stats_t;

/* Reads the chains and keys, checks that each key belongs to its chain,
 * prepares the session cache. Returns 0, GW_E_PEM, GW_E_KEY or -errno
 * (file); a pair that fails is logged with its paths. */
int gw_tls_create(gw_tls_t **out, const gw_tls_config_t *config);
/* Frees the certificate, key and cache (wiping the key); after every
 * filter using it is gone. NULL is allowed. */
void gw_tls_destroy(gw_tls_t *tls);

/* Reads the certificate chain and key files again, every pair (SIGHUP).
 * New handshakes use them; connections already open keep the set they
 * started on. Returns 0, or an error and nothing changes (both pairs stay
 * as they were). Any thread. */
int gw_tls_reload(gw_tls_t *tls);

/* "ecdsa-p256" or "rsa-<bits>", or both comma-separated in the order
 * configured ("ecdsa-p256,rsa-2048"), for the log. */
const char *gw_tls_key_desc(const gw_tls_t *tls);

/* Where the curve arithmetic of handshakes comes from: "libcrypto" or
 * "bearssl", for the start-up log. */
const char *gw_tls_ec_desc(const gw_tls_t *tls);

/* The SHA-256 of each leaf certificate as 64 hex digits, comma-separated
 * in the order of gw_tls_key_desc(), for the log. */
const char *gw_tls_cert_sha256(const gw_tls_t *tls);

/* The counters, updated by every thread with relaxed atomics. */
gw_tls_stats_t *gw_tls_stats(gw_tls_t *tls);

/* The per-thread part: a pool of TLS connection states and the
 * http_filter_t that the wire server drives. Belongs to one loop. */
typedef struct gw_tls_filter gw_tls_filter_t;

/* One TLS connection's state, as seen by the gateway's handlers. Its
 * memory is fixed: ~25 KiB (engine 4 KiB, input buffer for the largest
 * record 16.3 KiB, output buffer 4 KiB), from a pool sized at start-up. */
typedef struct gw_tls_conn gw_tls_conn_t;

/* A filter for `conns_max` connections on `loop`, of which `records_max`
 * (at most conns_max) may hold record buffers between reads, each while
 * a record of theirs is partly received; one more than that finds none and
 * is closed (counted in bufs_exhausted). connlimit may be NULL. Starts a
 * sweep timer that closes connections whose handshake or whose current
 * record is not complete within the handshake timeout. */
int gw_tls_filter_create(gw_tls_filter_t **out, gw_tls_t *tls, rt_loop_t *loop,
                         gw_connlimit_t *connlimit, uint32_t conns_max, uint32_t records_max);

/* Stops the sweep timer (at drain). */
void gw_tls_filter_stop(gw_tls_filter_t *f);

/* Frees the filter; every connection must have been freed. */
void gw_tls_filter_destroy(gw_tls_filter_t *f);

/* The filter to put in http_server_config_t.filter. */
const http_filter_t *gw_tls_filter_http(gw_tls_filter_t *f);

/* The TLS connection an exchange arrived on. The wire server does not
 * expose a connection's filter state, so the filter binds the exchange's
 * connection actor to the connection whose bytes it decoded last the first
 * time it is asked (a connection's first request is always dispatched
 * straight from its decoded bytes) and remembers the pair until the
 * connection is freed. NULL only if it cannot tell. */
gw_tls_conn_t *gw_tls_filter_conn_of(gw_tls_filter_t *f, const rt_actor_t *actor);

/* The client address of a TLS connection. */
const gw_addr_t *gw_tls_conn_peer(const gw_tls_conn_t *c);

/* The negotiated suite's name ("ECDHE-ECDSA-AES128-GCM-SHA256"). */
const char *gw_tls_conn_suite(const gw_tls_conn_t *c);

/* ------------------------------------------------------------------------ */
/* Roles and JWT                                                            */
/* ------------------------------------------------------------------------ */

/* Roles as bits (GW_ROLE_CUSTOMER ...), GW_ROLES_COUNT, GW_ROLES_ALL,
 * GW_ROLE_NAMES, and the route table GW_API_ROUTES(X): generated by the
 * build from wire/api/api.table, the one table the services' roles come from
 * too. */
#include "gw_api.h"

/* The bit of a role name, or 0 when unknown. */
uint32_t gw_role_parse(const char *name, size_t len);

/* The name of one role bit, or NULL. */
const char *gw_role_name(uint32_t bit);

/* Writes the roles of a mask as "customer,operator" (empty for none). */
void gw_roles_format(uint32_t roles, char *out, size_t out_bytes);

/* Token signing algorithms. Each key is pinned to exactly one. */
typedef enum gw_jwt_alg {
  GW_JWT_ES256 = 1,
  GW_JWT_RS256 = 2,
} gw_jwt_alg_t;

#define GW_JWT_KEYS_MAX 16
#define GW_JWT_KID_BYTES_MAX 64  /* including the NUL */
#define GW_SUB_BYTES_MAX 64      /* including the NUL */
#define GW_JTI_BYTES_MAX 40      /* including the NUL */

/* The verification (and signing) keys, by kid. Shared, read-only once
 * loaded. Several kids at once let keys rotate without downtime: sign
 * with the new one while tokens signed with the old one stay valid. */
typedef struct gw_jwt_keys gw_jwt_keys_t;

/* An empty key set. Returns 0 or -ENOMEM. */
int gw_jwt_keys_create(gw_jwt_keys_t **out);

/* Frees the set, wiping private keys. NULL is allowed. */
void gw_jwt_keys_destroy(gw_jwt_keys_t *ks);

/* Adds a key from PEM text: a public key (SubjectPublicKeyInfo) and, for
 * the signing key, its private key (may be NULL). The algorithm is pinned
 * from the key type: EC P-256 -> ES256, RSA -> RS256. Returns 0, GW_E_KEY
 * (unsupported key, duplicate kid, bad kid), GW_E_PEM or GW_E_FULL. */
int gw_jwt_keys_add(gw_jwt_keys_t *ks, const char *kid, const char *public_pem,
                    const char *private_pem);

/* Loads every <kid>.pub.pem of a directory, each with <kid>.pem as its
 * private key when present. Returns the number of keys loaded or an error. */
int gw_jwt_keys_load_dir(gw_jwt_keys_t *ks, const char *dir);

/* Loads "kid=public.pem[:private.pem],kid2=..." (paths). Returns the
 * number of keys loaded or an error. */
int gw_jwt_keys_load_list(gw_jwt_keys_t *ks, const char *list);

/* Chooses the signing key: `kid`, or when NULL the greatest kid (in byte
 * order) that has a private key, so that date-named kids rotate by adding
 * a file. Returns 0 or GW_E_KEY. */
int gw_jwt_keys_set_signer(gw_jwt_keys_t *ks, const char *kid);

/* The signing kid, or NULL. */
const char *gw_jwt_keys_signer(const gw_jwt_keys_t *ks);

/* Writes the kids as "kid1(ES256),kid2(ES256)" for the start-up log. */
void gw_jwt_keys_describe(const gw_jwt_keys_t *ks, char *out, size_t out_bytes);

/* Every verification key as a JSON Web Key Set (RFC 7517), each with kid,
 * alg and use "sig": {"keys":[...]}. Public parts only. A malloc'd string
 * (free()), or NULL when out of memory or a key cannot be read. */
char *gw_jwt_keys_jwks(const gw_jwt_keys_t *ks);

/* What a token must say besides its signature. */
typedef struct gw_jwt_policy {
  const char *iss;       /* required issuer */
  const char *aud;       /* required audience (string or array member) */
  uint32_t ttl_s;        /* lifetime of the tokens we sign */
  uint32_t leeway_s;     /* clock skew allowed on exp, nbf and iat */
} gw_jwt_policy_t;

/* Who a verified token says the caller is. */
typedef struct gw_identity {
  char sub[GW_SUB_BYTES_MAX];
  char jti[GW_JTI_BYTES_MAX];
  uint32_t roles;        /* GW_ROLE_* bits; unknown role names are ignored */
  int64_t exp;           /* seconds since the epoch */
} gw_identity_t;

/* Signs a token for `sub` with `roles` at time now_s: header alg, typ
 * "JWT" and kid; claims sub, roles, iss, aud, iat, nbf, exp and a random
 * jti. *token_out is malloc'd (free it). Returns 0, GW_E_KEY (no signer),
 * -EINVAL or -ENOMEM. */
int gw_jwt_sign(const gw_jwt_keys_t *ks, const gw_jwt_policy_t *policy,
                const char *sub, uint32_t roles, int64_t now_s, char **token_out);

/* Verifies a compact token at time now_s. Before any signature check the
 * header is decoded here: typ must be "JWT" when present, kid must name a
 * loaded key, and alg must be exactly that key's pinned algorithm (so
 * "none", HS256 with a public key as secret, or a kid/alg mismatch are
 * refused whatever libjwt would accept). Then the signature (libjwt), then
 * the claims: exp required, nbf and iat not in the future, iss and aud
 * equal to the policy's, sub a non-empty string, roles an array of
 * strings. Returns 0 with *out filled, or a GW_E_TOKEN_* code. */
int gw_jwt_verify(const gw_jwt_keys_t *ks, const gw_jwt_policy_t *policy,
                  const char *token, size_t token_len, int64_t now_s,
                  gw_identity_t *out);

/* Decodes base64url without padding (as JWT uses it) into out. Returns the
 * decoded length, or -EINVAL for a bad character, padding or length, or
 * when out is too small. */
int gw_b64url_decode(const char *in, size_t in_len, uint8_t *out, size_t out_bytes);

/* ------------------------------------------------------------------------ */
/* Verified-token cache                                                     */
/* ------------------------------------------------------------------------ */

/* Verified tokens by the SHA-256 of the token text, each until its exp.
 * Per loop thread (no locks): a token costs at most one verification per
 * thread, which is what keeps signature checks off the hot path. Fixed
 * capacity; when full, the entry closest to expiry in the probe window is
 * replaced. */
typedef struct gw_token_cache gw_token_cache_t;

typedef struct gw_token_cache_stats {
  uint64_t hits;
  uint64_t misses;
  uint64_t inserts;
  uint64_t evictions; /* live entries replaced for room */
  uint32_t size;
  uint32_t capacity;
} gw_token_cache_stats_t;

/* A cache of `capacity` entries (rounded up to a power of two, >= 16). */
int gw_token_cache_create(gw_token_cache_t **out, uint32_t capacity);
/* Frees the cache (NULL is allowed). */
void gw_token_cache_destroy(gw_token_cache_t *tc);

/* The SHA-256 of a token: the cache key. */
void gw_token_digest(const char *token, size_t token_len, uint8_t out[32]);

/* Looks a digest up at time now_s. True with *out filled on a hit; an
 * entry whose exp has passed is removed and counts as a miss. */
bool gw_token_cache_get(gw_token_cache_t *tc, const uint8_t digest[32], int64_t now_s,
                        gw_identity_t *out);

/* Remembers a verified identity until id->exp. */
void gw_token_cache_put(gw_token_cache_t *tc, const uint8_t digest[32],
                        const gw_identity_t *id, int64_t now_s);

/* Forgets every entry (the keys changed): each token is verified again. */
void gw_token_cache_clear(gw_token_cache_t *tc);

/* Copies the counters (owning thread only). */
void gw_token_cache_stats(const gw_token_cache_t *tc, gw_token_cache_stats_t *out);

/* ------------------------------------------------------------------------ */
/* Routes and role checks                                                   */
/* ------------------------------------------------------------------------ */

typedef enum gw_service {
  GW_SVC_LOCAL = 0,   /* answered by the gateway itself */
  GW_SVC_PROFILE,
  GW_SVC_ACCOUNT,
  GW_SVC_PAYMENT,
  GW_SVC_EVENT,
  GW_SVC_COUNT,
} gw_service_t;

/* The lower-case name of a service ("profile"), or NULL. */
const char *gw_service_name(gw_service_t s);

/* The service called `name`, or -1. */
int gw_service_parse(const char *name);

/* One route of the public API. */
typedef struct gw_route {
  const char *method;
  const char *pattern;   /* wire router syntax: /v1/accounts/{id} */
  gw_service_t service;
  uint32_t roles;        /* roles allowed with a valid token */
  bool anonymous;        /* also allowed without a token */
} gw_route_t;

/* The table of the public API (GW_API_ROUTES, generated from
 * wire/api/api.table). */
extern const gw_route_t gw_routes[];
extern const size_t gw_routes_count;

typedef enum gw_authz {
  GW_AUTHZ_ALLOW = 0,
  GW_AUTHZ_UNAUTHENTICATED = 401, /* a token is needed and none was given */
  GW_AUTHZ_FORBIDDEN = 403,       /* the token's roles are not allowed here */
} gw_authz_t;

/* Decides a route for an identity (NULL: no token). Deny by default: a
 * route allows only the roles it lists. */
gw_authz_t gw_authorize(const gw_route_t *route, const gw_identity_t *id);

/* Parses extra routes "METHOD /path service role+role;..." (roles from
 * gw_role_parse, or "anonymous") into out[] (at most out_max), strings
 * copied into `storage` (storage_bytes). For benchmarks and staged
 * roll-outs: they are checked like the built-in ones. Returns the count
 * or GW_E_CONFIG. */
int gw_routes_parse_extra(const char *spec, gw_route_t *out, size_t out_max,
                          char *storage, size_t storage_bytes);

/* ------------------------------------------------------------------------ */
/* Forwarding                                                               */
/* ------------------------------------------------------------------------ */

/* True for a request header that must not reach a service as the client
 * sent it: hop-by-hop fields, framing (the client writes its own), Host,
 * Authorization (the identity headers replace it), X-Request-Id (ours
 * replaces it), and every identity header name, so a client can never
 * forge an identity. Case-insensitive. */
bool gw_header_stripped(const char *name, size_t name_len);

/* True for a response header from a service that the gateway does not
 * pass on (hop-by-hop, framing, Date, Server, HSTS which it adds itself). */
bool gw_response_header_dropped(const char *name, size_t name_len);

/* The shared key that signs identity headers. */
typedef struct gw_hmac_key {
  uint8_t bytes[256];
  size_t len;
} gw_hmac_key_t;

/* Appends the four identity header lines the services check
 * (actors/common/svc.h): X-Auth-Subject, X-Auth-Roles (roles_csv byte for
 * byte), X-Auth-Timestamp (now_s) and X-Auth-Signature, the lowercase hex
 * HMAC-SHA256 under `key` of subject|roles|METHOD|path|timestamp, where
 * path is the target up to '?'. Returns 0, -EINVAL for a subject or roles
 * the services would refuse, or as http_buf_append. */
int gw_identity_headers(http_buf_t *out, const char *subject, const char *roles_csv,
                        const char *method, const char *target,
                        const gw_hmac_key_t *key, int64_t now_s);

/* Appends the request headers for a service: the client's headers that
 * survive gw_header_stripped(), then X-Request-Id, then the identity
 * headers for `id` (none when NULL) signed with `key` at now_s. Returns 0
 * or as http_buf_append. */
int gw_forward_headers(http_buf_t *out, const http_msg_t *req, const char *method,
                       const char *target, const char *request_id,
                       const gw_identity_t *id, const gw_hmac_key_t *key,
                       int64_t now_s);

/* ------------------------------------------------------------------------ */
/* Upstreams                                                                */
/* ------------------------------------------------------------------------ */

#define GW_UPSTREAM_ADDRS_MAX 8

/* One address of a service, with health shared by every thread. */
typedef struct gw_upstream_addr {
  char host[64];
  uint16_t port;
  _Atomic uint64_t down_until_ns;  /* 0: healthy; else skipped until then */
  _Atomic uint32_t fails;          /* consecutive failures */
  _Atomic uint64_t requests;
  _Atomic uint64_t errors;
  _Atomic uint64_t last_ok_ns;     /* 0: never answered yet */
} gw_upstream_addr_t;

typedef struct gw_service_addrs {
  gw_upstream_addr_t addrs[GW_UPSTREAM_ADDRS_MAX];
  uint32_t count;
} gw_service_addrs_t;

/* Parses "http://host:port[,http://host:port...]" into s. Returns 0 or
 * GW_E_CONFIG. */
int gw_service_addrs_parse(gw_service_addrs_t *s, const char *urls);

/* Picks the next healthy address after *cursor (round robin), skipping
 * `avoid` (an index, or -1). Returns an index, or -1 when every address
 * is marked down and none is due for a retry. now_ns for the back-off. */
int gw_service_pick(gw_service_addrs_t *s, uint32_t *cursor, int avoid, uint64_t now_ns);

/* Records the outcome of a request to an address: a success clears the
 * failures; `threshold` consecutive failures mark it down for backoff_ms.
 * When that passes, requests reach it again; the first success clears it,
 * another failure marks it down again at once. */
void gw_upstream_report(gw_upstream_addr_t *a, bool ok, uint32_t threshold,
                        uint32_t backoff_ms, uint64_t now_ns);

/* True when the address is not marked down at now_ns (an address never
 * tried counts as healthy: requests are how it gets tried). */
bool gw_upstream_healthy(const gw_upstream_addr_t *a, uint64_t now_ns);

#endif /* GW_H */
