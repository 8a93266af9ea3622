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
  uint64_t started_ns;
  void (*db_fn)(struct svc_req *req, rt_pg_batch_t *b, int err);
  void (*work_done)(struct svc_req *req, void *arg);
  _Alignas(16) unsigned char state[SVC_REQ_STATE_BYTES];
} svc_req_t;

/* The handler's state area as `type`, zeroed at the start of the request;
 * a type larger than the area does not compile. */
#define SVC_STATE(req, type)                                                   \
  ((void)sizeof(char[sizeof(type) <= SVC_REQ_STATE_BYTES ? 1 : -1]),          \
   (type *)(void *)(req)->state)

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

/* ------------------------------------------------------------------------ */
/* UUID v7                                                                  */
/* ------------------------------------------------------------------------ */

/* A new UUID v7 (RFC 9562): 48-bit Unix ms, then a 12-bit counter that
 * keeps ids from one thread strictly increasing within a millisecond, then
 * 62 random bits (getrandom). Lowercase text, 36 chars + NUL. Any thread. */
void svc_uuid7(char out[37]);

/* ------------------------------------------------------------------------ */
/* Idempotency-Key                                                          */
/* ------------------------------------------------------------------------ */

/*
 * Table idempotency_keys(scope, key, request_hash, status, response_body,
 * created_at), primary key (scope, key); created by the common migrations.
 * The scope is the caller's subject, so keys never collide between callers;
 * request_hash is SHA-256 of method, path and body, so reusing a key for a
 * different request (or another endpoint) is refused with 422.
 *
 * Protocol, all in the one batch (one transaction) that makes the change:
 *   1. claim:  INSERT (scope, key, hash, status 0) ON CONFLICT DO NOTHING.
 *              A concurrent request with the same key blocks here on the
 *              unique index until the first one commits (then it inserts
 *              nothing) or rolls back (then it inserts and runs): the same
 *              key executes once, and the loser waits, then replays.
 *   2. the service's own statements, each guarded by SVC_IDEM_CLAIMED (the
 *      row is ours and still open: status 0 is only ever visible to the
 *      transaction that inserted it), and on success setting the row's
 *      final status and response body itself (SVC_IDEM_STORE_OK).
 *   3. finish: if the row is still open (the change did not happen, e.g.
 *      insufficient funds) store the failure response; return the row.
 * Then svc_idem_outcome() says: new (answer the stored response), replay
 * (answer the stored response byte for byte, with Idempotent-Replayed:
 * true), or mismatch (422). Without an Idempotency-Key header, claim and
 * finish are left out and the guards pass.
 *
 * Keys are kept at least SVC_IDEM_KEEP_HOURS; thread 0 prunes older ones.
 */
#define SVC_IDEM_KEEP_HOURS 48
#define SVC_IDEM_KEY_BYTES_MAX 128

/* SQL fragments for a service's statements; S and K are the parameter
 * numbers (as text, e.g. "1", "2") of scope and key. */
#define SVC_IDEM_CLAIMED(S, K)                                                 \
  "($" K "::text IS NULL OR EXISTS (SELECT 1 FROM idempotency_keys"            \
  " WHERE scope = $" S " AND key = $" K " AND status = 0))"
/* An UPDATE that stores the success response; use inside a CTE that runs
 * only when the change happened. ST and BODY are parameter numbers. */
#define SVC_IDEM_STORE_OK(S, K, ST, BODY)                                      \
  SVC_IDEM_STORE_OK_SQL(S, K, ST, "$" BODY)
/* The same with the body given as an SQL expression, e.g. a scalar
 * subquery on a CTE that renders the response in the database. */
#define SVC_IDEM_STORE_OK_SQL(S, K, ST, EXPR)                                  \
  "UPDATE idempotency_keys SET status = $" ST "::int, response_body = " EXPR  \
  " WHERE scope = $" S " AND key = $" K " AND status = 0"

typedef struct svc_idem {
  bool keyed;                              /* an Idempotency-Key was sent */
  char scope[SVC_SUBJECT_BYTES_MAX];
  char key[SVC_IDEM_KEY_BYTES_MAX + 1];
  char hash[65];
  int claim_index;                         /* statement indexes, -1: none */
  int finish_index;
} svc_idem_t;

/* Reads and checks the Idempotency-Key header (1..128 of [A-Za-z0-9._:-])
 * and hashes the request. Returns 0; or -1 after answering 400 (the
 * request is gone). */
int svc_idem_begin(svc_req_t *req, svc_idem_t *idem);

/* Parameters for the service's own statements: scope and key, or NULLs. */
const char *svc_idem_scope(const svc_idem_t *idem);
const char *svc_idem_key(const svc_idem_t *idem);

/* Adds the claim (first in the batch) / the finish (last). No-ops without
 * a key. fail_body is stored when the change did not happen. */
void svc_idem_add_claim(rt_pg_batch_t *b, svc_idem_t *idem);
void svc_idem_add_finish(rt_pg_batch_t *b, svc_idem_t *idem, int fail_status,
                         const char *fail_body);

typedef enum svc_idem_result {
  SVC_IDEM_UNKEYED = 0, /* no key: the service decides from its results */
  SVC_IDEM_NEW,         /* ran now: answer *status / *body */
  SVC_IDEM_REPLAY,      /* ran before: answer *status / *body as stored */
  SVC_IDEM_MISMATCH,    /* same key, different request: 422 */
} svc_idem_result_t;

/* Reads the outcome of a committed batch. *body points into the batch's
 * results: use it before the callback returns. */
svc_idem_result_t svc_idem_outcome(const rt_pg_batch_t *b, const svc_idem_t *idem,
                                   int *status, const char **body);

/* Answers a NEW or REPLAY outcome (the latter with Idempotent-Replayed),
 * or the 422 of a MISMATCH. */
void svc_idem_reply(svc_req_t *req, svc_idem_result_t r, int status,
                    const char *body);

/* ------------------------------------------------------------------------ */
/* Outbox                                                                   */
/* ------------------------------------------------------------------------ */

/*
 * Table outbox(id uuid, topic text, key text, payload jsonb, created_at,
 * published_at NULL); created by the common migrations. A row written in
 * the same transaction as the state change is the event; a relay publishes
 * rows with published_at NULL and sets it after the bus acknowledged them.
 * Payloads carry ids and amounts, never personal data.
 */

/* Adds the event's INSERT to the batch (a new UUID v7 as its id). For a
 * conditional event, write INSERT INTO outbox ... SELECT ... WHERE ... in
 * the service's own statement instead. Returns the statement index. */
int svc_outbox_add(rt_pg_batch_t *b, const char *topic, const char *key,
                   const char *payload_json);

/* ------------------------------------------------------------------------ */
/* Bus: outbox relay and inbox                                              */
/* ------------------------------------------------------------------------ */

/*
 * BUS_ADDR (host:port, default 127.0.0.1:7400; "off": no bus at all) names
 * busd. When it is on, loop thread 0 owns one bus client (svc_thread_t.bus)
 * and runs the outbox relay on it: woken by NOTIFY svc_outbox (a trigger on
 * outbox inserts, common migration 0003) over its own LISTEN connection,
 * and by a timer as a fallback, it reads unpublished rows in id order,
 * publishes each (topic, key, event id = the row's id, payload = the JSON)
 * and sets published_at only after every row of the batch was PUB_ACKed.
 * A crash anywhere loses nothing; it only makes the relay send a row again,
 * which consumers absorb with the inbox below.
 */

/*
 * The inbox: table inbox(event_id uuid primary key, topic, received_at),
 * created by the common migrations. A consumer applies an event with ONE
 * statement that starts with SVC_INBOX_CTE, changes its state only FROM
 * inbox_new (a row there means the id was not seen before), and returns at
 * least one row exactly when it did so, e.g.
 *
 *   SVC_INBOX_CTE " INSERT INTO audit_log (...) SELECT $1::uuid, $2, $3, ...
 *   FROM inbox_new RETURNING seq"
 *
 * $1 is the event id and $2 the topic (filled by svc_inbox_apply()); the
 * service's own parameters start at $3.
 */
#define SVC_INBOX_CTE                                                          \
  "WITH inbox_new AS (INSERT INTO inbox (event_id, topic, received_at)"        \
  " VALUES ($1::uuid, $2, now()) ON CONFLICT (event_id) DO NOTHING"           \
  " RETURNING event_id)"

/* Applies delivery d in one transaction on the thread's pool: statement
 * `stmt` (built on SVC_INBOX_CTE) with the event id and topic as $1, $2 and
 * `values` as $3... Once it committed, the delivery is ACKed (a duplicate,
 * whose statement returned no row, is counted and only ACKed again); when
 * it failed, it is NACKed so busd delivers it again later. Call it from the
 * subscription's bus_deliver_fn on thread 0. Returns 0, or a negative error
 * after NACKing. */
int svc_inbox_apply(svc_thread_t *th, const bus_delivery_t *d, int stmt,
                    int nparams, const char *const *values);

/* ------------------------------------------------------------------------ */
/* Worker threads                                                           */
/* ------------------------------------------------------------------------ */

/* Runs work(arg) on a worker thread, then done(req, arg) back on the
 * request's loop thread. Returns 0, or after answering 503 a negative
 * error (queue full): then neither runs and the request is gone. */
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
  /* On loop thread 0, when BUS_ADDR is not "off", before the bus client
   * connects: subscribe to the service's topics (may be NULL). */
  int (*bus_init)(svc_thread_t *th, bus_client_t *bus);
} svc_def_t;

/* The loop thread's state. */
struct svc_thread {
  uint32_t index;
  rt_loop_t *loop;
  http_server_t *server;
  rt_pg_pool_t *pool;
  void *user;              /* the service's own, set by thread_init */
  bus_client_t *bus;       /* thread 0 with BUS_ADDR on; NULL otherwise */
};

/* The service's configuration, read once at start-up. */
typedef struct svc_config {
  const char *host;
  uint32_t port;
  uint32_t threads;
  const char *db_url;
  const uint8_t *auth_key;
  size_t auth_key_bytes;
  uint32_t auth_max_skew_s;
  bool bus_on;             /* BUS_ADDR is not "off" */
  char bus_host[64];
  uint16_t bus_port;
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
