/*
 * event.h - what the event service's files share:
 *   event.c  the audit log of every event, and GET /v1/events
 *   dead.c   dead letters: kept, listed, redriven
 */
#ifndef EVENT_H
#define EVENT_H

#include "svc.h"

extern const svc_stmt_t event_dead_stmts[];
extern const size_t event_dead_stmts_count;

/* Thread 0, before the bus connects: the dead topic of every event type. */
int event_dead_subscribe(svc_thread_t *th, svc_bus_t *bus);

/* Thread 0: the periodic count of dead letters per topic; its stop. */
int event_dead_start(svc_thread_t *th);
void event_dead_stop(svc_thread_t *th);

/* dead_letters{topic} for /metrics. */
void event_dead_metrics(wire_metrics_t *m);

/* ------------------------------------------------------------------------ */
/* The hash chain (chain.c)                                                 */
/* ------------------------------------------------------------------------ */

extern const svc_stmt_t event_chain_stmts[];
extern const size_t event_chain_stmts_count;

/* Reads EVENT_SIGNING_KEY, CHECKPOINT_EVERY, CHECKPOINT_INTERVAL. */
int event_chain_config(void);

/* Checkpoints are checked against this public key (SubjectPublicKeyInfo
 * PEM) instead of the signing key's. Returns 0 or a negative error. */
int event_chain_use_public_key(const char *path);

/* The signing key's public half (PEM) and kid, or NULL without a key. */
const char *event_chain_public_pem(void);
const char *event_chain_kid(void);

/* hash(n) of the chain from hash(n - 1) and the record's fields (chain.c
 * documents the canonical bytes). False for a malformed event id. */
bool event_chain_hash(const uint8_t prev[32], int64_t pos, const char *event_id,
                      const char *type, const char *key, const char *headers,
                      const char *payload, int64_t recorded_us, uint8_t out[32]);

/* Thread 0: the chainer; a new audited event wakes it; stop at drain. */
int event_chain_start(svc_thread_t *th);
void event_chain_wake(void);
void event_chain_stop(svc_thread_t *th);
void event_chain_metrics(wire_metrics_t *m);

/* The statement listing checkpoints: $1 cursor (position), $2 limit + 1. */
int event_chain_checkpoint_list_stmt(void);

typedef struct event_checkpoint {
  int64_t seq;
  uint8_t hash[32];
  int64_t at;          /* microseconds */
  uint8_t sig[64];
  char kid[32];
} event_checkpoint_t;

/* One verification of the chain over [from, to] (to 0: the head), run
 * on the pool's loop; done(v) once, with the result filled. */
typedef struct event_verify {
  rt_pg_pool_t *pool;
  int64_t from;
  int64_t to;
  void (*done)(struct event_verify *v);
  void *ctx;
  /* Result. */
  int err;                     /* a database error: nothing was decided */
  bool ok;
  int64_t checked;
  int64_t head_seq;
  uint8_t head_hash[32];       /* as stored */
  uint8_t last_hash[32];       /* recomputed at `to` */
  int64_t broken_seq;          /* the first broken link, 0: none */
  char broken_what[16];        /* hash, prev_hash, missing */
  uint8_t expected[32];
  uint8_t found[32];
  int cp_count;
  int cp_checked;
  int cp_bad;
  int64_t cp_bad_seq[8];
  int cp_at_to;                /* the checkpoint at `to`: 0 none, 1 valid, -1 not */
  int cp_unjudged;             /* signed by another key, or no key here */
  /* Walk. */
  event_checkpoint_t *cps;
  int cps_n;
  int cps_i;
  uint8_t prev[32];
  int64_t next;
} event_verify_t;

/* Starts it. Returns 0 (done comes later) or a negative error. */
int event_verify_start(event_verify_t *v);

/* The result as JSON (GET /v1/events/verify, `event verify`). */
json_t *event_verify_json(const event_verify_t *v);

/* ------------------------------------------------------------------------ */
/* Projections (projections.c) and reconciliation (reconcile.c)             */
/* ------------------------------------------------------------------------ */

extern const svc_stmt_t event_proj_stmts[];
extern const size_t event_proj_stmts_count;

/* True for a projection's name. */
bool event_proj_known(const char *name);

/* The statement SELECT proj_rebuild($1). */
int event_proj_rebuild_stmt(void);

void event_on_proj_daily(svc_req_t *req);
void event_on_proj_volume(svc_req_t *req);
void event_on_proj_payments(svc_req_t *req);
void event_on_proj_states(svc_req_t *req);
void event_on_proj_rebuild(svc_req_t *req);

extern const svc_stmt_t event_reconcile_stmts[];
extern const size_t event_reconcile_stmts_count;

/* One reconciliation, on the loop of pool and client (the account
 * service); done(r) once. */
typedef struct event_reconcile {
  rt_pg_pool_t *pool;
  http_client_t *client;
  void (*done)(struct event_reconcile *r);
  void *ctx;
  /* Result. */
  int err;
  int64_t checked;
  int64_t differences;
  json_t *diffs;        /* the first 100 */
  /* Walk. */
  json_t *page;
  char cursor[40];
  bool last_page;
} event_reconcile_t;

int event_reconcile_start(event_reconcile_t *r);
json_t *event_reconcile_json(const event_reconcile_t *r);
void event_reconcile_free(event_reconcile_t *r);

/* The routes. */
void event_on_dead_list(svc_req_t *req);
void event_on_redrive(svc_req_t *req);
void event_on_redrive_all(svc_req_t *req);

#endif /* EVENT_H */
