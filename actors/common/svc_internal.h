/*
 * svc_internal.h - what the skeleton's own files share. Services include
 * svc.h only.
 *
 * The skeleton, file by file:
 *   svc_main.c     start-up: arguments, configuration, migrations, loop
 *                  threads and their set-up, drain, --help/--events
 *   svc_http.c     requests: dispatch, identity and role checks, answers,
 *                  parameters, database round trips for handlers
 *   svc_metrics.c  /healthz, /readyz, /metrics
 *   svc_work.c     CPU-heavy work (password hashing) on rt_work threads
 *   svc_idem.c     claims for Idempotency-Key, SHA-256, UUID v7
 *   svc_events.c   the event registry, traces, writing to the outbox
 *   svc_relay.c    the outbox relay: outbox rows to busd
 *   svc_consume.c  the consumer table: deliveries applied once, then ACKed
 *   svc_notify.c   parked requests and cross-thread wake-ups
 *   svc_auth.c, svc_json.c, svc_migrate.c  identity, bodies, migrations
 *
 * Each file that runs SQL keeps it: a table of svc_stmt_t registered on
 * every thread's pool, in the order of svc_stmt_tables[] (svc_main.c).
 */
#ifndef SVC_INTERNAL_H
#define SVC_INTERNAL_H

#include <assert.h>
#include <stdatomic.h>

#include "svc.h"
#include "tls.h"

/* ------------------------------------------------------------------------ */
/* Statements of the skeleton's own files                                   */
/* ------------------------------------------------------------------------ */

typedef struct svc_stmt_table {
  const svc_stmt_t *stmts;
  size_t count;
} svc_stmt_table_t;

extern const svc_stmt_table_t svc_idem_stmts;    /* svc_idem.c */
extern const svc_stmt_table_t svc_events_stmts;  /* svc_events.c */
extern const svc_stmt_table_t svc_relay_stmts;   /* svc_relay.c */
extern const svc_stmt_table_t svc_consume_stmts; /* svc_consume.c */
extern const svc_stmt_table_t svc_main_stmts;    /* svc_main.c */

extern int svc_stmt_idem_claim, svc_stmt_idem_finish, svc_stmt_idem_read,
    svc_stmt_idem_reserve, svc_stmt_idem_reopen, svc_stmt_idem_abandon;
extern int svc_stmt_outbox;
extern int svc_stmt_ready, svc_stmt_prune, svc_stmt_lazy_commit;

/*
 * Makes the batch's commit return before its WAL is flushed (the batch's
 * first statement: synchronous_commit off for this transaction only). Only
 * for transactions whose loss in a crash changes nothing anyone was told:
 *   - the relay's mark: a row whose mark is lost is published again, and
 *     the consumers' inbox absorbs the duplicate;
 *   - a two-phase idempotency claim (svc_idem_reserve): it answers no one,
 *     and the write that ends it commits durably, which flushes the WAL up
 *     to and including the claim (the log is written in order).
 * Everything else that was answered or ACKed commits durably. A lazy
 * commit also waits on no other commit's flush, which is what the saga's
 * next hop, committing at the same moment, gains from it.
 */
void svc_commit_lazily(rt_pg_batch_t *b);

/* The common migrations, embedded at build time from
 * actors/common/migrations/ by embed_sql.py. */
extern const svc_migration_t svc_common_migrations[];
extern const size_t svc_common_migrations_count;

/* ------------------------------------------------------------------------ */
/* Shared state                                                             */
/* ------------------------------------------------------------------------ */

#define SVC_THREADS_MAX 64

typedef struct svc_relay svc_relay_t;
typedef struct svc_consume svc_consume_t;
typedef struct svc_parking svc_parking_t;

/* The loop thread's state; the public part first. */
typedef struct svc_th {
  svc_thread_t pub;
  rt_pool_t reqs;
  uint32_t inflight;
  bool draining;
  int drain_stage;        /* 0 serving, 1 pool closing, 2 grace */
  rt_actor_t actor;       /* notifies and calls from other threads */
  rt_timer_t grace_timer;
  rt_timer_t prune_timer;
  svc_relay_t *relay;     /* thread 0 with BUS_ADDR on */
  svc_consume_t *consume; /* thread 0 with BUS_ADDR on and consumers */
  svc_parking_t *parking; /* parked requests */
  wire_tls_filter_t *tls_server; /* with TLS_CA: under the HTTP server */
  http_server_t *health;  /* thread 0 with <SVC>_HEALTH_PORT: plain probes */
  _Atomic uint64_t requests;
  _Atomic uint64_t auth_rejected;
  _Atomic uint64_t overloaded;
  _Atomic uint64_t read_fallbacks; /* stale reads sent to the primary */
  _Atomic uint32_t inflight_gauge;
} svc_th_t;

/* The process: its definition, configuration and threads. */
typedef struct svc_global {
  const svc_def_t *def;
  svc_config_t cfg;
  http_server_config_t http;
  rt_pg_config_t pg;
  http_router_t router;
  http_router_t health_router; /* the health routes alone: <SVC>_HEALTH_PORT */
  uint32_t reqs_max;
  uint32_t workers;
  uint32_t work_queue_max;
  rt_work_pool_t *work_pool; /* svc_work()'s threads, shared by the loops */
  uint32_t db_wait_ms;
  uint32_t inbox_keep_s;
  uint32_t consume_in_flight;
  uint32_t consume_window_ms;      /* apply_many: a batch waits for company */
  uint32_t parked_max;
  svc_th_t *threads[SVC_THREADS_MAX];
  /* Set by each loop thread once it is fully set up; threads finish their
   * set-up in any order, so metrics and notifies look at the ready ones. */
  _Atomic(svc_th_t *) ready[SVC_THREADS_MAX];
} svc_global_t;

extern svc_global_t svc_g;

/* The thread the caller runs on (a loop thread), or NULL. */
svc_th_t *svc_th_current(void);

/* Actor messages of a loop thread's actor. */
enum {
  SVC_MSG_NOTIFY = RT_MSG_USER + 1, /* data: the key */
  SVC_MSG_CALL,                     /* data: svc_call_t */
};

/* Payload bytes of a loop's pooled messages (rt_loop_config_t.msg_bytes):
 * the largest the skeleton sends is a parked key. */
#define SVC_MSG_BYTES 64
_Static_assert(SVC_PARK_KEY_BYTES <= SVC_MSG_BYTES, "a notify carries a parked key");

/* svc_notify.c: SVC_MSG_CALL on the receiving thread. */
void svc_on_call(svc_th_t *th, rt_msg_t *msg);

/* svc_http.c */
void svc_http_dispatch(http_exchange_t *ex, void *arg);
void svc_req_release(svc_req_t *req);
void svc_drain_step(svc_th_t *th);

/* svc_tls.c: the inner TLS. svc_tls_config() reads TLS_CA, TLS_CERT,
 * TLS_KEY, TLS_CONNS_MAX (main thread, before the loops; 0 or
 * RT_E_CONFIG, logged). The others give *out NULL when TLS is off:
 * plain TCP. svc_tls_server() makes th->tls_server for a server of
 * conns_max connections; svc_tls_client() a client filter that checks the
 * server is `peer`, kept until svc_tls_free() (after the loops). */
int svc_tls_config(void);
bool svc_tls_on(void);
int svc_tls_server(svc_th_t *th, uint32_t conns_max, const http_filter_t **out);
int svc_tls_client(const char *peer, uint32_t conns_max, const http_filter_t **out);
void svc_tls_free(void);

/* svc_metrics.c */
extern const svc_route_t svc_health_routes[];
extern const size_t svc_health_routes_count;

/* svc_work.c: start the worker threads (main thread, after
 * rt_signals_block()); stop them after rt_run() has returned. */
int svc_workers_start(uint32_t count);
void svc_workers_stop(void);

/* svc_idem.c */
void svc_sha256_hex(const void *data, size_t len, char out[65]);
bool svc_idem__is_duplicate(const svc_req_t *req, const rt_pg_batch_t *b, int err);
void svc_idem__replay(svc_req_t *req);
void svc_idem__abandon(svc_req_t *req);

/* svc_notify.c */
int svc_parking_create(svc_parking_t **out, svc_th_t *th, uint32_t capacity);
void svc_parking_free(svc_parking_t *pk);
void svc_parking_on_notify(svc_th_t *th, rt_msg_t *msg);
/* Wakes every request parked on this thread (drain): timed out. */
void svc_parking_wake_all(svc_parking_t *pk);
void svc_unpark(svc_req_t *req);

/* ------------------------------------------------------------------------ */
/* The bus: relay and consumers, on loop thread 0                           */
/* ------------------------------------------------------------------------ */

/* Counters of the relay and the consumers, for /metrics; any thread reads
 * them with relaxed loads. */
typedef struct svc_bus_stats {
  _Atomic uint64_t relay_published;   /* rows marked published */
  _Atomic uint64_t relay_sent;        /* publishes handed to the client */
  _Atomic uint64_t relay_direct;      /* ... of them at their commit, not by a scan */
  _Atomic uint64_t relay_errors;      /* failed scans, marks, refusals */
  _Atomic uint64_t relay_notifies;    /* NOTIFYs received */
  _Atomic uint64_t relay_pending;     /* unpublished rows, counted every few s */
  _Atomic uint64_t relay_oldest_ms;   /* age of the oldest of them then */
  _Atomic uint64_t relay_last_error_s; /* Unix time of the last error; 0 */
  _Atomic uint64_t inbox_applied[SVC_EV_COUNT]; /* transitions made */
  _Atomic uint64_t inbox_absorbed[SVC_EV_COUNT]; /* no transition allowed */
  _Atomic uint64_t inbox_duplicates;  /* deliveries of ids seen before */
  _Atomic uint64_t inbox_failed;      /* NACKed: handler or database */
  _Atomic uint64_t inbox_retried;     /* tried again here: database down */
  _Atomic uint64_t inbox_unknown;     /* deliveries of no consumer's type */
  _Atomic uint64_t inbox_arena_spills; /* payloads too big for the arena */
} svc_bus_stats_t;

extern svc_bus_stats_t svc_bus_stats;

/* Creates the relay on th (loop thread 0) with its bus transport, made
 * from bus_cfg (whose confirm callback it takes over) and stored in
 * th->bus but not started. It listens for NOTIFY through the thread's pool
 * (call before the pool starts) and scans on a timer as well. */
int svc_relay_create(svc_relay_t **out, svc_thread_t *th, const svc_bus_config_t *bus_cfg);

/* Stops scanning (drain begins); batches in flight finish. */
void svc_relay_stop(svc_relay_t *r);

/* After the pool closed: closes the bus transport. */
void svc_relay_close(svc_relay_t *r);

/* Frees the relay and its transport after the loop stopped. NULL is
 * fine. */
void svc_relay_free(svc_relay_t *r);

/*
 * The events a delivery's apply() prepares, noted so that its transaction
 * can publish them at the commit (svc_pub_* in svc.h, as the consumers use
 * them for every delivery).
 */
#define SVC_EMITS_MAX 8 /* events one transaction may name for this */

typedef struct svc_emits {
  svc_thread_t *th;       /* the thread the transaction runs on */
  rt_pg_batch_t *batch;   /* the transaction being built */
  bool quiet;             /* svc_pub_quiet() added to it */
  uint32_t n;
  bool overflow;          /* more than SVC_EMITS_MAX: left to the scan */
  char ids[SVC_EMITS_MAX][37];
} svc_emits_t;

/* While set on this thread, svc_emit_prepare() notes each event id in e,
 * and at the first makes e->batch quiet (svc_pub_quiet): an event is
 * prepared before the statement that writes it. NULL: stop noting. */
void svc_emits_collect(svc_emits_t *e);

/* svc_pub_fetch() for the events e noted: the read-back's index, or -1
 * when none was noted (or e overflowed: then left to a scan). */
int svc_emits_fetch(const svc_emits_t *e);

/* The consumer table on thread 0: subscribes with the service's name as
 * group. Call after svc_relay_create() (it uses th->bus). */
int svc_consume_create(svc_consume_t **out, svc_th_t *th);

/* Deliveries the consumer table may be applying at once (and the size of
 * its context pool): every subscription's window. 0 without consumers. */
uint64_t svc_consume_deliveries_max(void);

/* Makes jansson allocate from the delivery's arena while a payload is
 * parsed (svc_consume.c); call once at start-up, before any JSON. */
void svc_consume_init_json(void);

/* Stops taking deliveries (drain): new ones are NACKed. */
void svc_consume_stop(svc_consume_t *c);

/* True when no delivery is being applied. */
bool svc_consume_idle(const svc_consume_t *c);

void svc_consume_free(svc_consume_t *c);

/* Reads FAULT_POINT (svc.h: svc_fault()). */
void svc_fault_init(void);

#endif /* SVC_INTERNAL_H */
