/*
 * svc.h - the skeleton every service is built on.
 *
 * A service describes itself in an svc_def_t (name, port, routes, prepared
 * statements, migrations, hooks) and calls svc_main(). The skeleton does
 * the rest:
 *
 *   config      from the environment (svc_main --help lists it all)
 *   migrations  versioned SQL files, embedded at build time, applied at
 *               start-up under an advisory lock (two instances may start at
 *               once), recorded in schema_migrations with a checksum
 *   threads     N loop threads (rt_run); on each an HTTP server on the same
 *               port (SO_REUSEPORT), a PostgreSQL pool with every statement
 *               prepared, and a per-thread hook for the service's own state
 *   routes      /healthz (process up), /readyz (a round trip to the
 *               database), /metrics (HTTP, database pool and service
 *               counters, Prometheus text), plus the service's routes, each
 *               behind identity checks, role checks and strict JSON parsing
 *   drain       on SIGTERM: stop accepting, finish requests in flight, close
 *               the pools, exit 0
 *
 * and offers the helpers handlers need: strict JSON field checks, money and
 * currency validation, the error body, caller identity signed by the
 * gateway, the Idempotency-Key protocol, the transactional outbox, UUID v7
 * ids, and a worker pool for CPU-heavy work (password hashing) that must
 * not run on a loop thread.
 *
 * Threading: a request, its batches and its callbacks stay on the loop
 * thread that accepted it. Handlers answer exactly once with svc_reply_*().
 */
#ifndef SVC_H
#define SVC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "bus.h"
#include "http.h"
#include "pg.h"
#include "rt.h"
#include "svc_bus.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* The skeleton's codes: -4000..-4099 (services take -4100 and down). */
enum {
  SVC_E_AUTH_MISSING = -4000, /* no identity headers: 401 */
  SVC_E_AUTH_BAD = -4001,     /* forged, stale or malformed identity: 401 */
  SVC_E_MIGRATION = -4002,    /* a migration failed or was changed */
  SVC_E_DB_WAIT = -4003,      /* the database did not come up at start-up */
  SVC_E_BUSY = -4004,         /* the worker queue is full: 503 */
  SVC_E_EVENT = -4005,        /* an event's payload lacks what its schema
                               * says: NACKed, dead-lettered in the end */
};

#define SVC_E_RANGE_LO (-4099)
#define SVC_E_RANGE_HI (-4000)

const char *svc_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Identity                                                                 */
/* ------------------------------------------------------------------------ */

/* Roles, as a bit set. `service` is for calls between services (e.g. the
 * account service asking profile whether a customer exists, the gateway
 * verifying credentials); the gateway must never pass it from outside. */
enum {
  SVC_ROLE_CUSTOMER = 1u << 0,
  SVC_ROLE_OPERATOR = 1u << 1,
  SVC_ROLE_AUDITOR = 1u << 2,
  SVC_ROLE_ADMIN = 1u << 3,
  SVC_ROLE_SERVICE = 1u << 4,
};

#define SVC_SUBJECT_BYTES_MAX 64 /* including the NUL */

/* The caller, as the gateway vouches for it. */
typedef struct svc_identity {
  bool present;                        /* valid headers were sent */
  char subject[SVC_SUBJECT_BYTES_MAX]; /* customer id, operator id, service */
  uint32_t roles;                      /* SVC_ROLE_* */
} svc_identity_t;

/*
 * The identity headers:
 *   X-Auth-Subject     the caller ([A-Za-z0-9._:@-], 1..63 bytes)
 *   X-Auth-Roles       comma-separated role names, e.g. "customer"
 *   X-Auth-Timestamp   Unix seconds when the gateway signed
 *   X-Auth-Signature   lowercase hex HMAC-SHA256, keyed by AUTH_HMAC_KEY, of
 *                      subject "|" roles "|" METHOD "|" path "|" timestamp
 * where roles is the header value byte for byte and path is the request
 * target up to (not including) '?'. A timestamp more than max_skew_s away
 * from now is refused, so a captured header set expires quickly.
 */

/* Checks the identity headers of a request. Returns 0 with *out filled,
 * SVC_E_AUTH_MISSING when none of the headers is present, SVC_E_AUTH_BAD
 * for anything else wrong (missing one, bad signature, stale, unknown
 * role). now_s is the current Unix time. */
int svc_auth_verify(const http_msg_t *msg, const uint8_t *key, size_t key_bytes,
                    uint32_t max_skew_s, int64_t now_s, svc_identity_t *out);

/* Writes the four identity header lines ("Name: value\r\n" each) for a
 * request the caller sends, e.g. service to service. Returns the length,
 * or -ENOSPC / -EINVAL. */
int svc_auth_sign(char *out, size_t out_bytes, const uint8_t *key,
                  size_t key_bytes, const char *subject, const char *roles,
                  const char *method, const char *path, int64_t now_s);

/* Parses "customer,operator" into SVC_ROLE_* bits; -EINVAL for an unknown
 * or empty name. */
int svc_roles_parse(const char *csv, uint32_t *out);

/* ------------------------------------------------------------------------ */
/* Requests                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct svc_thread svc_thread_t;

#define SVC_REQ_STATE_BYTES 1536 /* a handler's own per-request state */

/* One request being handled. Valid until the handler answers it. */
typedef struct svc_req {
  http_exchange_t *ex;
  svc_thread_t *th;
  const http_msg_t *msg;
  const struct svc_route *route;
  svc_identity_t who;
  json_t *body;             /* the parsed body of routes with json_body */
  char param_id[37];        /* svc_param_id()'s canonical id */
  struct svc_idem *idem;    /* set by svc_idem_begin(): replays by svc_db() */
  struct svc_park *park;    /* while parked (svc_park()) */
  struct {                  /* svc_poll_start()'s long-poll */
    void (*read)(struct svc_req *req);
    uint64_t deadline_ns;
    bool reading;           /* a read is in flight */
    bool woken;             /* woken during it: read again */
    bool over;              /* the deadline passed */
    char key[40];
  } poll;
  uint64_t started_ns;
  void (*db_fn)(struct svc_req *req, rt_pg_batch_t *b, int err);
  struct {                  /* svc_work()'s job, while it runs */
    rt_work_t req;
    void (*fn)(void *arg);
    void (*done)(struct svc_req *req, void *arg);
    void *arg;
  } work;
  _Alignas(16) unsigned char state[SVC_REQ_STATE_BYTES];
} svc_req_t;

/* The handler's state area as `type`, zeroed at the start of the request;
 * a type larger than the area does not compile. */
#define SVC_STATE(req, type)                                                   \
  ((void)sizeof(char[sizeof(type) <= SVC_REQ_STATE_BYTES ? 1 : -1]),          \
   (type *)(void *)(req)->state)

/* ?name= when it is one of values[0..count): its length (out holds it),
 * 0 when absent; otherwise -1 after answering 422 with code and message. */
int svc_query_enum(svc_req_t *req, const char *name, char *out, size_t out_bytes,
                   const char *const *values, size_t count, const char *code,
                   const char *message);

/* A payment's states, as the payment events and lists name them. */
extern const char *const svc_payment_states[];
extern const size_t svc_payment_states_count;

/* A path parameter of the matched route, or NULL. */
const char *svc_param(const svc_req_t *req, const char *name);

/* A query parameter, percent-decoded into out (NUL-terminated). Returns
 * its length, -ENOENT when absent, -EINVAL when malformed or too long. */
int svc_query(const svc_req_t *req, const char *name, char *out, size_t out_bytes);

/* A request header, or NULL. */
const char *svc_header(const svc_req_t *req, const char *name);

/* True when the caller has any of `roles`. */
bool svc_has_role(const svc_req_t *req, uint32_t roles);

/* Answers. Each frees the request: touch nothing of it afterwards. */

/* 2xx/4xx/5xx with a JSON body; steals the reference (NULL: 500). */
void svc_reply_json(svc_req_t *req, int status, json_t *body);

/* A body already serialised (e.g. stored for idempotent replay), sent
 * byte for byte as application/json, with optional extra header lines. */
void svc_reply_raw(svc_req_t *req, int status, const char *body, size_t len,
                   const char *extra_headers);

/* {"error":{"code":code,"message":message}} */
void svc_reply_error(svc_req_t *req, int status, const char *code,
                     const char *message);

/* Maps a database error: pool full, unavailable, lost, timeouts, closing:
 * 503 "unavailable" (the outcome of a write may be unknown: retry with the
 * same Idempotency-Key); anything else 500 "internal" (logged with its
 * SQLSTATE, never its data). batch may be NULL. */
void svc_reply_db_error(svc_req_t *req, int err, const rt_pg_batch_t *batch);

/* True for a database error that says nothing about the request or event
 * (down, busy, a lost connection, a timeout, a serialization failure or
 * deadlock): the same work may succeed later. svc_reply_db_error()
 * answers these 503; consumers try such an event again themselves. */
bool svc_db_transient(int err);

/* ------------------------------------------------------------------------ */
/* Database                                                                 */
/* ------------------------------------------------------------------------ */

/* A prepared statement of a service: registered on every thread's pool in
 * the order given, the id stored in *id. */
typedef struct svc_stmt {
  int *id;
  const char *sql;
  int nparams;
} svc_stmt_t;

typedef void (*svc_db_fn)(svc_req_t *req, rt_pg_batch_t *b, int err);

/* A new batch on the request's thread pool; NULL when exhausted (then the
 * request has been answered 503 already: just return). */
rt_pg_batch_t *svc_batch(svc_req_t *req);

/* Submits the batch with the pool's default deadline; fn runs with the
 * results. When it cannot be submitted, the request is answered (503 and
 * friends) and fn is never called. */
void svc_db(svc_req_t *req, rt_pg_batch_t *b, svc_db_fn fn);

/*
 * Reads that may be slightly stale. With <SVC>_DB_READ_URL set, each loop
 * thread keeps a second pool on it (a replica, or a libpq multi-host URL
 * with target_session_attrs=prefer-standby); list pages, ledger pages and
 * audit queries go there, so the primary keeps its round trips for money.
 * What such a read shows may lag the primary by the replication delay: a
 * write just answered may not be in it yet. Writes, and every read that
 * decides a money movement (balances, holds, claims, a payment's state),
 * stay on svc_batch(), which is the primary.
 *
 * While the read pool has no connection up (not configured, the replica
 * down or still connecting), reads go to the primary: a replica adds
 * capacity, its loss costs only the reads in flight on it (503). libpq
 * picks a host when it connects, so with a multi-host read URL a pool that
 * moved to the primary stays there until its connections are made again.
 */

/* The pool for stale-tolerant reads on this thread: the read pool when it
 * is configured and up, else the primary pool. */
rt_pg_pool_t *svc_read_pool(svc_thread_t *th);

/* As svc_batch(), on svc_read_pool(). */
rt_pg_batch_t *svc_batch_read(svc_req_t *req);

/* ------------------------------------------------------------------------ */
/* JSON bodies                                                              */
/* ------------------------------------------------------------------------ */

typedef enum svc_type {
  SVC_T_STRING = 1, /* non-empty UTF-8 string up to max_bytes (default 256) */
  SVC_T_INT64,      /* JSON integer, any int64 */
  SVC_T_AMOUNT,     /* JSON integer, 1..INT64_MAX minor units */
  SVC_T_CURRENCY,   /* ISO 4217 code from svc_currency_valid() */
  SVC_T_UUID,       /* 8-4-4-4-12 hex in either case; svc_json_check()
                     * rewrites it in lowercase, the one form the
                     * services store and compare */
  SVC_T_BOOL,
} svc_type_t;

typedef struct svc_field {
  const char *name;
  svc_type_t type;
  bool required;
  uint32_t max_bytes; /* strings; 0: 256 */
} svc_field_t;

/* What is wrong with a body: the status to answer (400 or 422), a code and
 * a message naming the field. */
typedef struct svc_json_error {
  int status;
  char code[32];
  char message[160];
} svc_json_error_t;

/*
 * Statuses: 400 for a body that is not what the API takes at all
 * (malformed JSON, not an object, duplicate key, unknown field, wrong JSON
 * type); 422 for a well-formed body with a bad value (missing required
 * field, empty string, amount <= 0, integer beyond int64, unknown currency,
 * malformed id).
 */

/* Parses a request body strictly: one JSON object, no duplicate keys, no
 * trailing bytes, no NUL. Returns 0 with *out (a new reference), or -1
 * with err filled. */
int svc_json_parse(const char *body, size_t len, json_t **out,
                   svc_json_error_t *err);

/* Checks obj against the fields: unknown keys, types, required, values;
 * UUID fields are rewritten in canonical lowercase. Returns 0 or -1 with
 * err filled (the first problem, fields in order). */
int svc_json_check(json_t *obj, const svc_field_t *fields,
                   size_t fields_count, svc_json_error_t *err);

/* Answers err (and frees the request). */
void svc_reply_json_error(svc_req_t *req, const svc_json_error_t *err);

/* The value of a checked field, or NULL / 0 when absent. */
const char *svc_json_str(const json_t *obj, const char *name);
int64_t svc_json_int(const json_t *obj, const char *name);

/* True for an ISO 4217 code in our fixed list (currencies in use, upper
 * case, e.g. "EUR"). */
bool svc_currency_valid(const char *code);

/* The fixed list of currencies svc_currency_valid() accepts. */
const char *const *svc_currencies(size_t *count);

/* True for a UUID text (36 chars, hex in either case and dashes). */
bool svc_uuid_valid(const char *s);

/* Writes the canonical (lowercase) form of a UUID text into out and
 * returns true; false when s is not a UUID. RFC 9562 makes UUIDs case-
 * insensitive on input; every id leaves a service in lowercase, and every
 * id that enters one goes through here (or through svc_json_check()), so
 * an id never compares unequal to itself in another case. */
bool svc_uuid_canon(const char *s, char out[37]);

/* The path parameter `name` as a canonical UUID, in storage owned by the
 * request; NULL when absent or not a UUID (the caller answers 404). */
const char *svc_param_id(svc_req_t *req, const char *name);

/*
 * Cursor pagination. A list is ordered by a key that never changes and a
 * cursor is the key of the last item shown, so pages neither repeat nor
 * skip the rows that are there. Lists that clients follow while rows are
 * added (a ledger, the audit log) are ordered by a key assigned in commit
 * order under a lock (a per-account sequence, the audit chain), so a row
 * that becomes visible later always sorts after every cursor already
 * handed out. Lists ordered by id (accounts, customers, payments) show
 * each row that was committed before the first page exactly once; a row
 * created while a client pages may or may not appear.
 */
typedef enum svc_cursor_kind {
  SVC_CURSOR_UUID = 1, /* an id, canonicalised */
  SVC_CURSOR_SEQ,      /* a decimal sequence number, 0..INT64_MAX */
  SVC_CURSOR_DATE,     /* a day, YYYY-MM-DD */
} svc_cursor_kind_t;

#define SVC_CURSOR_BYTES 40

/* Reads ?limit= (1..SVC_PAGE_LIMIT_MAX, default 50) and ?cursor= (the key
 * of the last item of the previous page, "" when absent) of the given
 * kind. Returns 0, or -1 after answering 422. Lists answer
 * {"items":[...],"next_cursor":key-or-null}. */
#define SVC_PAGE_LIMIT_MAX 100
int svc_page(svc_req_t *req, svc_cursor_kind_t kind, int *limit,
             char cursor[SVC_CURSOR_BYTES]);

/* The page body from statement `stmt` of a batch whose rows are (key, json),
 * fetched with LIMIT limit + 1: the first `limit` items, and the last one's
 * key as next_cursor when a further row shows there is more. */
json_t *svc_page_json(const rt_pg_batch_t *b, int stmt, int limit);

/* A svc_db() callback for a list whose batch is just the page query
 * (statement 0) and whose request state is the int limit from svc_page():
 * answers the page, or the database error. */
void svc_page_done(svc_req_t *req, rt_pg_batch_t *b, int err);

/* The whole of a list without filters: svc_page(), then statement `stmt`
 * with ($1 cursor or NULL, $2 limit + 1), answered by done (NULL:
 * svc_page_done; a done of one's own reads the limit as svc_page_done
 * does). */
void svc_list_page(svc_req_t *req, svc_cursor_kind_t kind, int stmt, svc_db_fn done);

/* As svc_list_page(), for a list that may be slightly stale: on
 * svc_read_pool(). */
void svc_list_page_read(svc_req_t *req, svc_cursor_kind_t kind, int stmt, svc_db_fn done);

/* ------------------------------------------------------------------------ */
/* Peers: another service called over REST                                  */
/* ------------------------------------------------------------------------ */

/* Where a peer listens and how long its answer may take. */
typedef struct svc_peer {
  char name[16]; /* for logs: "profile", "account" */
  char host[64];
  uint16_t port;
  uint32_t timeout_ms;
} svc_peer_t;

/* Reads <ENV>_ADDR (host:port, default `addr`) and <ENV>_TIMEOUT (default
 * `timeout_ms`) for the peer `name` (ENV is its name in capitals). Returns
 * 0 or RT_E_CONFIG (logged). */
int svc_peer_config(svc_peer_t *p, const char *name, const char *addr, uint32_t timeout_ms);

/* A keep-alive client to the peer on `loop`, NULL when it cannot be made
 * (the reason logged). */
http_client_t *svc_peer_client(const svc_peer_t *p, rt_loop_t *loop, uint32_t conns_max,
                               uint32_t queue_max);

/* Lower-case hex of n bytes into out (2n + 1 bytes, NUL-terminated). */
void svc_hex(const uint8_t *in, size_t n, char *out);

/* ------------------------------------------------------------------------ */
/* UUID v7                                                                  */
/* ------------------------------------------------------------------------ */

/* A new UUID v7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter that
 * keeps ids from one thread strictly increasing within a millisecond, then
 * 62 random bits (getrandom). Lowercase text, 36 chars + NUL. Any thread. */
void svc_uuid7(char out[37]);

/* ------------------------------------------------------------------------ */
/* Claims: Idempotency-Key and the inbox                                    */
/* ------------------------------------------------------------------------ */

/*
 * One mechanism makes both an HTTP write with an Idempotency-Key and the
 * application of a delivered event happen once: a *claim*, a row of table
 * claims(scope, key, request_hash, status, response_body, created_at,
 * expires_at, lock_token, locked_until) with primary key (scope, key),
 * inserted by the first statement of the very transaction that makes the
 * change. A second claim of the same (scope, key) violates the key: the
 * whole transaction rolls back, so a duplicate can change nothing, and the
 * caller learns it was a duplicate from where the batch failed
 * (RT_PG_E_UNIQUE at the claim's statement). A concurrent duplicate waits
 * on the key until the first commits (then fails) or rolls back (then
 * runs).
 *
 *   HTTP   scope = the caller's subject, key = the Idempotency-Key,
 *          request_hash = SHA-256 of method, path and body; the answer is
 *          stored with the claim (status, response_body) and replayed byte
 *          for byte; the same key with another request is refused (422).
 *          Kept SVC_IDEM_KEEP_HOURS.
 *   inbox  scope = SVC_INBOX_SCOPE, key = the event id, request_hash = the
 *          topic. Kept INBOX_KEEP (default 30 days), longer than the bus
 *          keeps anything it could deliver again.
 *
 * status: 0 while the claiming transaction runs (nobody else can see that
 * row: it commits with its final status or not at all); an HTTP status
 * once answered; -1 for a two-phase claim whose work is under way (below).
 * Thread 0 deletes expired claims.
 */
#define SVC_IDEM_KEEP_HOURS 48
#define SVC_IDEM_KEY_BYTES_MAX 128
#define SVC_INBOX_SCOPE "#inbox" /* '#' is no subject's character */

/* SQL fragment for a service statement that must change nothing unless
 * the request's claim is open in this transaction (two-phase claims, whose
 * batch does not start with a failing INSERT): S and K are the parameter
 * numbers of scope and key, as text. True for unkeyed requests. */
#define SVC_IDEM_CLAIMED(S, K)                                                 \
  "($" K "::text IS NULL OR EXISTS (SELECT 1 FROM claims"                      \
  " WHERE scope = $" S " AND key = $" K " AND status = 0))"
/* An UPDATE that stores the success answer of a claim; use inside a CTE
 * that runs only when the change happened. ST and BODY are parameter
 * numbers; _SQL takes the body as an SQL expression instead. */
#define SVC_IDEM_STORE_OK(S, K, ST, BODY)                                      \
  SVC_IDEM_STORE_OK_SQL(S, K, ST, "$" BODY)
#define SVC_IDEM_STORE_OK_SQL(S, K, ST, EXPR)                                  \
  "UPDATE claims SET status = $" ST "::int, response_body = " EXPR            \
  " WHERE scope = $" S " AND key = $" K " AND status = 0"

typedef struct svc_idem {
  bool keyed;                              /* an Idempotency-Key was sent */
  char scope[SVC_SUBJECT_BYTES_MAX];
  char key[SVC_IDEM_KEY_BYTES_MAX + 1];
  char hash[65];
  char token[37];                          /* two-phase: our lock */
  int claim_index;                         /* statement indexes, -1: none */
  int finish_index;
  bool reserved;                           /* two-phase claim committed */
  bool reopened;                           /* ... and reopened in the write */
  bool settled;                            /* ... and given up */
  void (*next)(struct svc_req *req);       /* two-phase: the work */
} svc_idem_t;

/*
 * One-phase (the change is one transaction): svc_idem_begin(), then in the
 * write batch svc_idem_add_claim() first and svc_idem_add_finish() last.
 * When the claim fails as a duplicate, svc_db() does not call the
 * handler's callback: it reads the stored claim and answers the replay
 * (Idempotent-Replayed: true), 422 for another request, or 409 while a
 * two-phase claim is under way. Otherwise svc_idem_outcome() gives the
 * answer to send.
 *
 * Two-phase (the work needs a round trip elsewhere first, e.g. asking
 * another service): svc_idem_reserve() commits a claim with status -1 and
 * a lock (30 s) before the work; a second request with the same key gets
 * 409 meanwhile (or takes the claim over once the lock has lapsed, when
 * it is the same request). The write batch then starts with
 * svc_idem_add_reopen() (status back to 0, only if the lock is still
 * ours), guards its statements with SVC_IDEM_CLAIMED, and ends with
 * svc_idem_add_finish(). If the lock was lost meanwhile, nothing was
 * written and the outcome is the other request's.
 */

/* Reads and checks the Idempotency-Key header (1..128 of [A-Za-z0-9._:-])
 * and hashes the request. required: a missing key is answered 400
 * (idempotency_key_required). Returns 0; or -1 after answering 400. */
int svc_idem_begin(svc_req_t *req, svc_idem_t *idem, bool required);

/* Parameters for the service's own statements: scope and key, or NULLs. */
const char *svc_idem_scope(const svc_idem_t *idem);
const char *svc_idem_key(const svc_idem_t *idem);

/* Adds the claim (first in the batch) / the finish (last). No-ops without
 * a key. fail_body is stored when the change did not happen (the claim is
 * still open at the finish). */
void svc_idem_add_claim(rt_pg_batch_t *b, svc_idem_t *idem);
void svc_idem_add_finish(rt_pg_batch_t *b, svc_idem_t *idem, int fail_status,
                         const char *fail_body);

/* Two-phase: commits the claim in progress, then calls next(req) when it
 * is ours; otherwise answers (replay, 409, 422) itself. Without a key,
 * calls next at once. */
void svc_idem_reserve(svc_req_t *req, svc_idem_t *idem, void (*next)(svc_req_t *req));

/* Two-phase: the write batch's first statement. */
void svc_idem_add_reopen(rt_pg_batch_t *b, svc_idem_t *idem);

typedef enum svc_idem_result {
  SVC_IDEM_UNKEYED = 0, /* no key: the service decides from its results */
  SVC_IDEM_NEW,         /* ran now: answer *status / *body */
  SVC_IDEM_REPLAY,      /* ran before: answer *status / *body as stored */
  SVC_IDEM_MISMATCH,    /* same key, different request: 422 */
  SVC_IDEM_BUSY,        /* the same key's first request is under way: 409 */
} svc_idem_result_t;

/* Reads the outcome of a committed batch. *body points into the batch's
 * results: use it before the callback returns. */
svc_idem_result_t svc_idem_outcome(const rt_pg_batch_t *b, const svc_idem_t *idem,
                                   int *status, const char **body);

/* Answers a NEW or REPLAY outcome (the latter with Idempotent-Replayed),
 * the 422 of a MISMATCH, the 409 of BUSY. */
void svc_idem_reply(svc_req_t *req, svc_idem_result_t r, int status,
                    const char *body);

/* ------------------------------------------------------------------------ */
/* Events: the registry                                                     */
/* ------------------------------------------------------------------------ */

typedef enum svc_event_type {
#define SVC_EVENT(NAME, topic, key, version, producer) SVC_EV_##NAME,
#include "events.def"
#undef SVC_EVENT
  SVC_EV_COUNT
} svc_event_type_t;

typedef struct svc_event_def {
  svc_event_type_t type;
  const char *topic;      /* also the event's type name */
  const char *key_field;  /* the payload field that is the bus key */
  int version;            /* payload schema version */
  const char *producer;   /* the service that emits it */
} svc_event_def_t;

/* The definition of a type (never NULL for a valid type). */
const svc_event_def_t *svc_event_def(svc_event_type_t type);

/* The definition of a topic, or NULL when no event type has it. */
const svc_event_def_t *svc_event_by_topic(const char *topic, size_t len);

/* ------------------------------------------------------------------------ */
/* Events: producing (the transactional outbox)                             */
/* ------------------------------------------------------------------------ */

/*
 * Table outbox(id uuid, topic, key, payload jsonb, headers jsonb,
 * created_at, published_at NULL), from the common migrations. A row
 * written in the same transaction as the state change is the event; the
 * relay publishes rows with published_at NULL and sets it once busd has
 * made them durable. Payloads carry ids and amounts, never personal data.
 *
 * Every event carries headers, published on the bus as they are:
 *   event-id        the event's id (UUID v7, also the outbox row's id)
 *   type            its topic
 *   schema-version  the registry's version
 *   occurred-at     RFC 3339, when the producer wrote it
 *   correlation-id  the X-Request-Id of the HTTP request that started the
 *                   work, or the correlation id of the event that caused
 *                   this one: one id follows a payment through every
 *                   service, log line and event
 *   causation-id    the id of the event this one answers ("" when a
 *                   request caused it)
 */
#define SVC_TRACE_ID_BYTES 48

typedef struct svc_trace {
  char correlation_id[SVC_TRACE_ID_BYTES];
  char causation_id[37];
} svc_trace_t;

/* The trace of a request: correlation = its X-Request-Id. */
void svc_trace_of_request(const svc_req_t *req, svc_trace_t *out);

/* An event about to be written: its id, topic and headers, rendered once,
 * ready to be passed as statement parameters. */
#define SVC_HEADERS_BYTES 512
typedef struct svc_emit {
  char id[37];
  const char *topic;
  char headers[SVC_HEADERS_BYTES]; /* JSON object of the headers above */
} svc_emit_t;

/* Fills e for an event of `type` caused by `trace` (a new id, now). */
void svc_emit_prepare(svc_emit_t *e, svc_event_type_t type, const svc_trace_t *trace);

/* Adds an unconditional event to the batch: INSERT INTO outbox. Returns
 * the statement index. */
int svc_emit(rt_pg_batch_t *b, svc_event_type_t type, const char *key,
             const char *payload_json, const svc_trace_t *trace);

/* For an event written only when a guard matched: the service's statement
 * inserts the row from its own CTE, with this fragment (ID, TOPIC and
 * HEADERS are parameter numbers as text, given e->id, e->topic and
 * e->headers; KEY and PAYLOAD are SQL expressions, e.g. "s.id::text" and
 * "json_build_object(...)"). */
#define SVC_OUTBOX_INSERT(FROM, ID, TOPIC, KEY, PAYLOAD, HEADERS)              \
  "INSERT INTO outbox (id, topic, key, payload, headers, created_at)"          \
  " SELECT $" ID "::uuid, $" TOPIC ", " KEY ", " PAYLOAD ", $" HEADERS         \
  "::jsonb, now() FROM " FROM

/* ------------------------------------------------------------------------ */
/* Events: consuming                                                        */
/* ------------------------------------------------------------------------ */

/*
 * A service consumes with a table of event type -> handler; the skeleton
 * does the rest. Life of a delivery (loop thread 0, which owns the bus
 * client):
 *
 *   DELIVER -> a context from a fixed pool (sized by the subscriptions'
 *   windows); the payload parsed once into the context's own arena, the
 *   headers read into ev->trace -> a batch: the inbox claim of the event
 *   id, then the handler's statements (apply) -> commit -> done(ev, b)
 *   looks at the results (a transition matched, or the event was
 *   absorbed) -> ACK.
 *
 *   A duplicate fails at its claim: nothing of it commits; it is counted
 *   and ACKed again. A failure (the handler refused, the database failed)
 *   is NACKed: busd redelivers after a back-off, and after
 *   BUSD_MAX_ATTEMPTS it moves the event to "<topic>.dead" with the last
 *   error; the attempt count survives a busd restart.
 *
 * Handlers write transitions as guarded statements (see svc_consumer_t);
 * an event that finds no allowed transition changes nothing, and done()
 * says SVC_ABSORBED: counted per type in /metrics and logged.
 */
#define SVC_EVENT_STATE_BYTES 512
#define SVC_EVENT_KEY_BYTES 257

typedef struct svc_event {
  svc_thread_t *th;
  const svc_event_def_t *def;
  char id[37];                   /* the event id */
  char key[SVC_EVENT_KEY_BYTES];
  const json_t *payload;         /* an object; valid until done() returns */
  svc_trace_t trace;             /* correlation of the cause; causation:
                                  * this event's id, ready for the events
                                  * the handler emits */
  uint32_t attempt;              /* 1 on the first delivery */
  uint64_t stored_ms;            /* when busd made it durable */
  uint32_t partition;            /* where busd keeps it */
  uint64_t offset;
  bus_bytes_t headers;           /* all its headers, during apply() only
                                  * (bus_header_iter_init()) */
  _Alignas(16) unsigned char state[SVC_EVENT_STATE_BYTES]; /* the handler's */
} svc_event_t;

/* What done() says of a committed event. */
enum { SVC_APPLIED = 0, SVC_ABSORBED = 1 };

/*
 * apply(ev, b): adds the handler's statements to b, after the claim.
 *   Read the payload with svc_event_str()/svc_event_int(); emit follow-up
 *   events with svc_emit() or SVC_OUTBOX_INSERT, tracing with &ev->trace.
 *   A transition is one guarded statement, in the style of:
 *
 *     WITH s AS (UPDATE payments SET state = 'authorized', ...
 *                WHERE id = $1 AND state IN ('pending', 'reserved')
 *                RETURNING ...),
 *          o AS (SVC_OUTBOX_INSERT("s", ...))
 *     SELECT count(*) FROM s
 *
 *   Returns 0, or a negative error: the event is NACKed without a
 *   transaction (a payload that lacks a field, say).
 * done(ev, b): after the commit, from the results (may be NULL: applied).
 *   Returns SVC_APPLIED or SVC_ABSORBED.
 */
typedef int (*svc_apply_fn)(svc_event_t *ev, rt_pg_batch_t *b);
typedef int (*svc_done_fn)(svc_event_t *ev, const rt_pg_batch_t *b);

typedef struct svc_consumer {
  svc_event_type_t type;
  svc_apply_fn apply;
  svc_done_fn done;
} svc_consumer_t;

/* A payload field, or NULL / 0 (then the handler returns an error). */
const char *svc_event_str(const svc_event_t *ev, const char *name);
int svc_event_int(const svc_event_t *ev, const char *name, int64_t *out);

/* Counters of the consumer side, for /metrics and tests. */
typedef struct svc_consume_stats {
  uint64_t applied[SVC_EV_COUNT];
  uint64_t absorbed[SVC_EV_COUNT];
  uint64_t duplicates;
  uint64_t failed;
} svc_consume_stats_t;

/* ------------------------------------------------------------------------ */
/* Cross-thread notify: long-polls                                          */
/* ------------------------------------------------------------------------ */

/*
 * A request may park on a key (a payment id) until something happens to
 * it or its deadline passes, holding no thread: svc_park() keeps it in
 * its loop thread's table; svc_notify(key), from any thread, wakes every
 * request parked on that key on every loop thread (one actor message per
 * thread, through the mailboxes). The woken request looks at the
 * database again.
 *
 * No lost wake-up: park first, then read; a notify sent after the park is
 * delivered, one sent before it was sent after a commit the read sees.
 */
#define SVC_PARK_KEY_BYTES 40

/* Parks req on key for at most timeout_ms; woken(req, timed_out) runs on
 * the request's thread exactly once (the request stays the handler's).
 * Returns 0, or -ENOSPC when the thread's table is full (answer without
 * waiting). */
int svc_park(svc_req_t *req, const char *key, uint32_t timeout_ms,
             void (*woken)(svc_req_t *req, bool timed_out));

/* Wakes everything parked on key, on every loop thread. Any thread. */
void svc_notify(const char *key);

/* Runs fn(th, arg) on loop thread `index` (through its actor's mailbox),
 * from a loop thread: the way to hand work to a task that lives on one
 * thread (a chainer on thread 0, say). Returns 0, -ENOENT when that thread
 * is not running, -ENOMEM when the message pool is empty. */
int svc_thread_call(uint32_t index, void (*fn)(svc_thread_t *th, void *arg), void *arg);

/*
 * Long-poll, the whole protocol on top of svc_park(): svc_poll_start()
 * parks the request on key for wait_ms (0: no waiting), then calls
 * read(req). read() does its round trip; its callback answers when the
 * result is final, and otherwise asks svc_poll_again(): true means the
 * request waits (read() runs again after the next wake-up, or once more
 * at the deadline), false means the wait is over: answer what was read.
 * A wake-up that comes while a read is in flight is not lost: the read
 * runs again.
 */
typedef void (*svc_poll_read_fn)(svc_req_t *req);
void svc_poll_start(svc_req_t *req, const char *key, uint32_t wait_ms, svc_poll_read_fn read);
bool svc_poll_again(svc_req_t *req);

/* ------------------------------------------------------------------------ */
/* Fault injection                                                          */
/* ------------------------------------------------------------------------ */

/*
 * FAULT_POINT=name[:n] makes the process exit at once (status 86: no
 * drain, no ACK, no flush but the log's) the n-th time (default the 1st)
 * it reaches svc_fault("name"), so that tests can crash it at every step
 * boundary and check that nothing is lost or doubled. The skeleton's
 * points:
 *   relay_before_publish   outbox rows committed, not yet published
 *   relay_before_mark      published and PUB_ACKed, not yet marked sent
 *   consume_before_ack     an event applied and committed, not yet ACKed
 * Services add their own (the account service: sweeper_after_commit).
 * Unset, a check is one load and one branch.
 */
void svc_fault(const char *point);

/* ------------------------------------------------------------------------ */
/* Worker threads                                                           */
/* ------------------------------------------------------------------------ */

/* Runs work(arg) on a worker thread, then done(req, arg) back on the
 * request's loop thread. Returns 0, or after answering 503 a negative
 * error (queue full, or the workers stopping): then neither runs and the
 * request is gone. Allocates nothing: the job lives in the request. */
int svc_work(svc_req_t *req, void (*work)(void *arg),
             void (*done)(svc_req_t *req, void *arg), void *arg);

/* ------------------------------------------------------------------------ */
/* Definition and main                                                      */
/* ------------------------------------------------------------------------ */

typedef void (*svc_handler_fn)(svc_req_t *req);

typedef enum svc_auth_mode {
  SVC_AUTH_REQUIRED = 0, /* missing or bad identity: 401 */
  SVC_AUTH_OPTIONAL,     /* absent: anonymous; present but bad: 401 */
  SVC_AUTH_NONE,         /* not looked at (health and metrics) */
} svc_auth_mode_t;

typedef struct svc_route {
  const char *method;
  const char *pattern;
  svc_handler_fn fn;
  svc_auth_mode_t auth;
  uint32_t roles;     /* any of these may call (403 otherwise); 0: anyone */
  bool json_body;     /* parse the body strictly into req->body first */
} svc_route_t;

/* One migration file, embedded by actors/common/embed_sql.py. */
typedef struct svc_migration {
  int version;        /* NNNN of NNNN_name.sql */
  const char *name;   /* file name */
  const char *sql;
} svc_migration_t;

/*
 * Commands: `<service> NAME [ARGS]` runs a command of the service instead
 * of serving (for operators: checks, rebuilds). The skeleton reads the
 * configuration, applies the migrations, makes a loop on the calling
 * thread and a database pool with every statement prepared, as a loop
 * thread would have, then calls start() and runs the loop until the
 * command calls svc_cmd_finish(). The process exits with its status.
 */
typedef struct svc_cmd {
  rt_loop_t *loop;
  rt_pg_pool_t *pool;
  int argc;             /* the command's words, argv[0] its name */
  char **argv;
  int status;
  bool done;
  void *user;           /* the command's own */
} svc_cmd_t;

typedef struct svc_command {
  const char *name;
  const char *help;     /* its line(s) for --help, "  NAME ARGS  what" */
  /* Starts the work on cmd->loop: returns 0 (svc_cmd_finish() comes
   * later), or an exit status > 0 at once (bad arguments, printed). */
  int (*start)(svc_cmd_t *cmd);
} svc_command_t;

/* Ends a command with the process's exit status. */
void svc_cmd_finish(svc_cmd_t *cmd, int status);

typedef struct svc_def {
  const char *name;        /* process name: "profile" */
  const char *env_prefix;  /* "PROFILE": PROFILE_PORT, PROFILE_DB_URL, ... */
  uint16_t default_port;
  const svc_route_t *routes;
  size_t routes_count;
  const svc_stmt_t *stmts;
  size_t stmts_count;
  const svc_migration_t *migrations;
  size_t migrations_count;
  /* After migrations, on the main thread with a blocking connection:
   * seed rows the service needs (may be NULL). Returns 0 or < 0. */
  int (*setup)(PGconn *conn);
  /* On each loop thread after its server and pool exist (may be NULL). */
  int (*thread_init)(svc_thread_t *th);
  /* On each loop thread when it drains, after the last request (may be
   * NULL): close the service's own clients. */
  void (*thread_drain)(svc_thread_t *th);
  const char *usage_env;   /* extra lines for --help (may be NULL) */
  /* The events the service writes to its outbox (for --events and the
   * check that it writes no other). */
  const svc_event_type_t *produces;
  size_t produces_count;
  /* The events it consumes, one handler each (see svc_consumer_t); the
   * skeleton subscribes to their topics as consumer group `name`. */
  const svc_consumer_t *consumers;
  size_t consumers_count;
  /* On loop thread 0, when the bus is not "off", before the transport
   * connects: subscriptions beyond the consumer table, e.g. dead-letter
   * topics (may be NULL). */
  int (*bus_init)(svc_thread_t *th, svc_bus_t *bus);
  /* Writes the service's own metrics at the end of /metrics (may be
   * NULL). Any thread: read only what is safe to read there. */
  void (*metrics)(wire_metrics_t *m);
  const svc_command_t *commands;
  size_t commands_count;
} svc_def_t;

/* The loop thread's state. */
struct svc_thread {
  uint32_t index;
  rt_loop_t *loop;
  http_server_t *server;
  rt_pg_pool_t *pool;      /* the primary */
  rt_pg_pool_t *read_pool; /* <SVC>_DB_READ_URL's, or NULL: see
                            * svc_read_pool() */
  void *user;              /* the service's own, set by thread_init */
  svc_bus_t *bus;          /* thread 0 with the bus on; NULL otherwise:
                            * busd or RabbitMQ, as BUS_URL says */
};

/* The service's configuration, read once at start-up. */
typedef struct svc_config {
  const char *host;
  uint32_t port;
  uint32_t threads;
  const char *db_url;
  const char *db_read_url; /* NULL: reads on the primary */
  const uint8_t *auth_key;
  size_t auth_key_bytes;
  uint32_t auth_max_skew_s;
  bool bus_on;             /* BUS_URL (or BUS_ADDR) is not "off" */
  svc_bus_url_t bus_url;   /* the transport and where it is */
  uint32_t bus_max_attempts; /* amqp: deliveries before the dead letter */
  uint32_t bus_heartbeat_s;  /* amqp: connection heartbeat */
} svc_config_t;

const svc_config_t *svc_config(void);

/* Parses arguments (--help, --migrate), reads the configuration, applies
 * migrations, runs the loop threads until SIGTERM/SIGINT, drains. Returns
 * the process exit status. */
int svc_main(int argc, char **argv, const svc_def_t *def);

/* Applies migrations over a blocking connection (main thread only):
 * component "common" first, then the service's. Exposed for tests. */
int svc_migrate(PGconn *conn, const char *component,
                const svc_migration_t *migrations, size_t count);

#endif /* SVC_H */
