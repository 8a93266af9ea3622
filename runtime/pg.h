/*
 * pg.h - an asynchronous PostgreSQL client on the loop.
 *
 * libpq in non-blocking mode; its socket is watched by the loop's io_uring
 * (one-shot POLL_ADD for POLLIN, and for POLLOUT while libpq has bytes it
 * could not write). Every connection is in pipeline mode, so many batches
 * share one round trip.
 *
 * The unit of work is a *batch*: up to RT_PG_BATCH_STMTS_MAX statements
 * that the server runs as ONE transaction, answered by one callback with
 * one result per statement. A batch is sent as its statements followed by
 * a single Sync: the extended query protocol runs everything between two
 * Syncs in one implicit transaction, committed at the Sync, rolled back as a
 * whole when any statement fails. So a batch needs no BEGIN/COMMIT, and must
 * not contain them (rt_pg_add_sql() refuses transaction control).
 *
 * Batches of different callers are pipelined back to back on the same
 * connection: each keeps its own Sync, hence its own transaction and its
 * own answer; an error in one never touches its neighbours. A later
 * statement of a batch may depend on an earlier one only through SQL (the
 * rows it wrote, a guarded UPDATE ... RETURNING, a CTE), since the client
 * sees no result before the whole batch is back.
 *
 * Statements registered with rt_pg_prepare() are prepared lazily, once per
 * connection, by a Parse sent in front of the first batch that uses them.
 *
 * A pool owns conns_count connections on one loop thread, each a child
 * actor of the pool's supervisor: a connection that fails (server restart,
 * network) is torn down and restarted with a doubling back-off. Batches
 * wait in a bounded queue when every connection's pipeline is full; a full
 * queue is refused at once with RT_PG_E_POOL_FULL (a service answers 503).
 * While no connection can be made at all, submissions fail fast with
 * RT_PG_E_UNAVAILABLE instead of waiting out their deadline.
 *
 * Not thread-safe: a pool, its batches and its callbacks belong to the loop
 * thread that created the pool. Its statistics may be read from any thread.
 *
 * Host names in the URL are resolved by libpq with a blocking
 * getaddrinfo(): give numeric addresses (127.0.0.1) on loop threads.
 *
 * libpq multi-host URLs work as they do for libpq (postgresql://u:p@h1:p1,
 * h2:p2/db?target_session_attrs=read-write connects to whichever host
 * takes writes; prefer-standby to a standby first). libpq has no timeout
 * per host in non-blocking mode, so a connect attempt that times out
 * (connect_timeout_ms) makes the pool's next attempt start one host
 * further down the list: a host that hangs cannot hold the others back.
 */
#ifndef RT_PG_H
#define RT_PG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "rt.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* PostgreSQL client errors: -3100..-3199. The first group comes from the
 * server's SQLSTATE of the failing statement (see rt_pg_error()). */
enum {
  RT_PG_E_UNIQUE = -3100,            /* 23505 unique_violation */
  RT_PG_E_SERIALIZATION = -3101,     /* 40001 serialization_failure */
  RT_PG_E_DEADLOCK = -3102,          /* 40P01 deadlock_detected */
  RT_PG_E_CHECK = -3103,             /* 23514 check_violation */
  RT_PG_E_FOREIGN_KEY = -3104,       /* 23503 foreign_key_violation */
  RT_PG_E_NOT_NULL = -3105,          /* 23502 not_null_violation */
  RT_PG_E_OUT_OF_RANGE = -3106,      /* 22003 numeric_value_out_of_range */
  RT_PG_E_DATA = -3107,              /* other class 22: bad input syntax... */
  RT_PG_E_STATEMENT_TIMEOUT = -3108, /* 57014 query_canceled (statement_timeout) */
  RT_PG_E_SQL = -3109,               /* any other error the server reported */
  /* The client side. */
  RT_PG_E_CONN_LOST = -3120,   /* the connection died with the batch sent:
                                * its outcome (commit or not) is unknown */
  RT_PG_E_UNAVAILABLE = -3121, /* no connection to the server can be made */
  RT_PG_E_TIMEOUT = -3122,     /* the batch's deadline passed; if it had been
                                * sent, its outcome is unknown */
  RT_PG_E_POOL_FULL = -3123,   /* every pipeline and the wait queue are full */
  RT_PG_E_CLOSED = -3124,      /* the pool is closing */
  RT_PG_E_BATCH_FULL = -3125,  /* too many statements, params or bytes */
  RT_PG_E_NO_STMT = -3126,     /* no such prepared statement id */
};

#define RT_PG_E_RANGE_LO (-3199)
#define RT_PG_E_RANGE_HI (-3100)

/* A message for an RT_PG_E_* code. Never NULL. rt_pg_pool_create()
 * registers it with rt_strerror_register(). */
const char *rt_pg_strerror(int err);

/* True for errors after which the same batch may simply be run again: the
 * server rolled it back (serialization failure, deadlock). Not for
 * CONN_LOST or TIMEOUT, whose outcome is unknown. */
bool rt_pg_retryable(int err);

/* ------------------------------------------------------------------------ */
/* Pool                                                                     */
/* ------------------------------------------------------------------------ */

#define RT_PG_CONNS_MAX RT_SUP_CHILDREN_MAX /* one supervisor per pool */
#define RT_PG_STMTS_MAX 128                 /* registered statements per pool */
#define RT_PG_BATCH_STMTS_MAX 16            /* statements per batch */
#define RT_PG_PARAMS_MAX 32                 /* parameters per statement */
#define RT_PG_BATCH_BYTES_MAX (1u << 20)    /* parameter bytes per batch */
/* Parameter bytes a batch holds in itself. Most batches need far less (a
 * few ids, an amount, an event of about 1 KiB); one that needs more takes
 * a large arena of RT_PG_BATCH_BYTES_MAX from its pool (large_batches of
 * them), and gives it back with the batch. */
#define RT_PG_BATCH_INLINE_BYTES 2048

typedef struct rt_pg_pool rt_pg_pool_t;
typedef struct rt_pg_batch rt_pg_batch_t;

typedef struct rt_pg_config {
  const char *url;               /* libpq URL or conninfo; required */
  const char *name;              /* for logs; default "pg" */
  uint32_t conns_count;          /* 1..RT_PG_CONNS_MAX; default 4 */
  uint32_t pipeline_depth;       /* batches in flight per connection; 64 */
  uint32_t queue_max;            /* batches waiting for a pipeline; 1024 */
  uint32_t large_batches;        /* batches with more than
                                  * RT_PG_BATCH_INLINE_BYTES of parameters,
                                  * built or in flight at once; 16 */
  uint32_t statement_timeout_ms; /* set at connect; default 5000;
                                  * RT_PG_TIMEOUT_NONE: the server's own */
  uint32_t deadline_ms;          /* per batch when submit passes 0; 10000 */
  uint32_t connect_timeout_ms;   /* connect and authenticate; 5000 */
  uint32_t backoff_min_ms;       /* reconnect back-off, doubling; 50 */
  uint32_t backoff_max_ms;       /* 2000 */
} rt_pg_config_t;

#define RT_PG_TIMEOUT_NONE UINT32_MAX

/* Fills defaults for zero fields. */
void rt_pg_config_defaults(rt_pg_config_t *config);

/* Reads <prefix>_CONNS, <prefix>_PIPELINE_DEPTH, <prefix>_QUEUE_MAX,
 * <prefix>_LARGE_BATCHES,
 * <prefix>_STATEMENT_TIMEOUT (duration; "0": none), <prefix>_DEADLINE (duration),
 * <prefix>_CONNECT_TIMEOUT (duration) into config (e.g. prefix "DB"); the
 * URL is left to the caller. Returns 0 or RT_E_CONFIG (already logged). */
int rt_pg_config_from_env(rt_pg_config_t *config, const char *prefix);

/* Counters of one pool; written by its thread, readable from any thread
 * with relaxed loads (as rt_pg_pool_stats() gives them). */
typedef struct rt_pg_stats {
  _Atomic uint64_t batches;          /* accepted by rt_pg_submit() */
  _Atomic uint64_t batches_ok;
  _Atomic uint64_t batches_failed;   /* any error, SQL errors included */
  _Atomic uint64_t statements;       /* sent to the server */
  _Atomic uint64_t rejected_full;    /* refused: RT_PG_E_POOL_FULL */
  _Atomic uint64_t rejected_down;    /* refused: RT_PG_E_UNAVAILABLE */
  _Atomic uint64_t rejected_large;   /* rt_pg_add() found no large arena
                                      * (RT_PG_E_POOL_FULL) */
  _Atomic uint64_t timeouts;         /* deadlines that passed */
  _Atomic uint64_t conn_lost;        /* batches lost with their connection */
  _Atomic uint64_t connects;         /* connections made */
  _Atomic uint64_t connect_failures; /* attempts that failed */
  _Atomic uint64_t flushes;          /* writes of pipelined batches */
  _Atomic uint64_t latency_us_sum;   /* submit to callback, answered batches */
  _Atomic uint64_t notifies;         /* notifications heard by the listener */
  _Atomic uint32_t conns_up;
  _Atomic uint32_t queued;
  _Atomic uint32_t in_flight;
} rt_pg_stats_t;

/* Timers a pool with this configuration (defaults for zero fields) may
 * keep armed at once on its loop, for the loop's sizing: a deadline per
 * batch queued or in a pipeline, the listener's LISTEN, a connect
 * deadline, a stall watchdog and a restart back-off per connection (the
 * listener's included), its flush and its close. */
uint64_t rt_pg_pool_timers(const rt_pg_config_t *config);

/* Creates a pool on `loop` (the calling thread's). Checks the URL (never
 * logs it: it holds a password). Connections are made by
 * rt_pg_pool_start(). Returns 0, RT_E_CONFIG or -ENOMEM. */
int rt_pg_pool_create(rt_pg_pool_t **out, rt_loop_t *loop,
                      const rt_pg_config_t *config);

/* Registers a statement to be prepared on each connection (lazily, at its
 * first use there) and returns its id (>= 0), the same on every pool that
 * registers the same statements in the same order. nparams is the number
 * of $n placeholders. Returns RT_PG_E_BATCH_FULL past RT_PG_STMTS_MAX,
 * -EINVAL for transaction control or nparams > RT_PG_PARAMS_MAX. */
int rt_pg_prepare(rt_pg_pool_t *pool, const char *sql, int nparams);

/* What a listener tells its caller. */
typedef enum rt_pg_notify {
  RT_PG_LISTENING = 1, /* LISTEN took effect (again): anything notified
                        * while the listener was down was lost */
  RT_PG_NOTIFIED,      /* a notification on the channel arrived */
} rt_pg_notify_t;

typedef void (*rt_pg_notify_fn)(void *arg, rt_pg_notify_t what);

/* Makes the pool keep one more connection that LISTENs on `channel`
 * ([A-Za-z0-9_], < 64 bytes) and is never given batches; it connects,
 * fails and is restarted with back-off like the others. fn runs on the
 * loop thread: RT_PG_LISTENING each time the LISTEN has taken effect (at
 * start and after every reconnect), RT_PG_NOTIFIED per notification.
 * Payloads are not passed on: a notification is a wake-up, what changed
 * is read from the tables. Call before rt_pg_pool_start(); at most
 * RT_PG_CONNS_MAX - 1 data connections then. Returns 0, -EALREADY,
 * -EINVAL or RT_E_CONFIG. */
int rt_pg_listen(rt_pg_pool_t *pool, const char *channel, rt_pg_notify_fn fn,
                 void *arg);

/* Starts the supervisor and opens the connections. */
int rt_pg_pool_start(rt_pg_pool_t *pool);

/* True when at least one connection is ready. */
bool rt_pg_pool_up(const rt_pg_pool_t *pool);

const rt_pg_stats_t *rt_pg_pool_stats(const rt_pg_pool_t *pool);

/* Closes gracefully: new batches are refused (RT_PG_E_CLOSED), queued and
 * in-flight ones finish (bounded by their deadlines), then the connections
 * close and `done` runs once on the loop thread. */
void rt_pg_pool_close(rt_pg_pool_t *pool, void (*done)(void *arg), void *arg);

/* Frees the pool. Either after rt_pg_pool_close()'s callback, or after the
 * loop stopped (at a drain deadline): then connections are closed directly
 * and batches still in flight are dropped without their callbacks. */
void rt_pg_pool_destroy(rt_pg_pool_t *pool);

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

/* Called once per submitted batch, on the loop thread, never from inside
 * rt_pg_submit(). err is 0 when the transaction committed, else the first
 * error. Results may be read during the call only; the batch is freed when
 * it returns. */
typedef void (*rt_pg_cb)(rt_pg_batch_t *batch, int err, void *ctx);

/* A new empty batch, or NULL when the pool's batches are exhausted (sized
 * queue_max + conns_count * pipeline_depth + 256): answer 503. Nothing is
 * allocated: batches and their arenas are the pool's, made at creation. */
rt_pg_batch_t *rt_pg_batch_new(rt_pg_pool_t *pool);

/* Frees a batch that will not be submitted. */
void rt_pg_batch_free(rt_pg_batch_t *batch);

/* Queues the batch, once submitted, ahead of those already waiting for a
 * pipeline (not of those in one). For a background task that keeps one
 * batch at a time in flight and must not wait behind a flood of others
 * (the audit chainer behind a backlog of deliveries): it cannot starve
 * them. */
void rt_pg_batch_first(rt_pg_batch_t *batch);

/* Appends a registered statement with its parameters in text form (NULL
 * for SQL NULL); they are copied. Returns the statement's index in the
 * batch, or a negative error, which is also kept and returned by
 * rt_pg_submit(): a caller may add several statements and check once.
 * RT_PG_E_BATCH_FULL past the limits above; RT_PG_E_POOL_FULL when the
 * batch outgrows RT_PG_BATCH_INLINE_BYTES and every large arena is taken
 * (backpressure, as a full queue: answer 503, or try again later). */
int rt_pg_add(rt_pg_batch_t *batch, int stmt, int nparams,
              const char *const *values);

/* Appends an unprepared statement (parsed on each use): for rare or
 * dynamic SQL. As rt_pg_add(); -EINVAL for transaction control. */
int rt_pg_add_sql(rt_pg_batch_t *batch, const char *sql, int nparams,
                  const char *const *values);

/* Submits the batch: it runs as one transaction before `deadline_ms` (0:
 * the pool's default), and cb is called exactly once. Returns 0; or an
 * error (an earlier rt_pg_add() failure, RT_PG_E_POOL_FULL,
 * RT_PG_E_UNAVAILABLE, RT_PG_E_CLOSED, RT_E_LIMIT when the loop's timers
 * are full): then the batch is freed and cb is never called. */
int rt_pg_submit(rt_pg_batch_t *batch, uint32_t deadline_ms, rt_pg_cb cb,
                 void *ctx);

/* Number of statements in the batch. */
int rt_pg_count(const rt_pg_batch_t *batch);

/* The result of statement i, or NULL when it did not run (an earlier
 * statement failed, or the batch failed as a whole). Owned by the batch.
 * Use PQntuples(), PQgetvalue(), PQgetisnull(), PQcmdTuples() on it. */
const PGresult *rt_pg_result(const rt_pg_batch_t *batch, int i);

/* Rows of statement i's result (SELECT or RETURNING); 0 when none. */
int rt_pg_rows(const rt_pg_batch_t *batch, int i);

/* Rows affected by statement i (INSERT/UPDATE/DELETE), 0 when none. */
int64_t rt_pg_affected(const rt_pg_batch_t *batch, int i);

/* The text of row/col of statement i, or NULL for SQL NULL or out of
 * range. */
const char *rt_pg_value(const rt_pg_batch_t *batch, int i, int row, int col);

/* Parses row/col of statement i as a base-10 int64. Returns 0, -ENOENT
 * for NULL or out of range, -ERANGE or -EINVAL for bad text. */
int rt_pg_int64(const rt_pg_batch_t *batch, int i, int row, int col,
                int64_t *out);

/* What went wrong, when the callback's err is not 0. */
typedef struct rt_pg_error {
  int code;              /* RT_PG_E_* */
  int stmt_index;        /* failing statement, -1 for the batch as a whole */
  char sqlstate[6];      /* "" when the server did not send one */
  char constraint[64];   /* PG_DIAG_CONSTRAINT_NAME, or "" */
  char message[200];     /* the server's primary message, cut; it may quote
                          * input values: log it only where that is safe */
} rt_pg_error_t;

const rt_pg_error_t *rt_pg_error(const rt_pg_batch_t *batch);

#endif /* RT_PG_H */
