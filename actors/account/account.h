/*
 * account.h - what the account service's two files share:
 *   account.c  accounts, balances, the ledger and the money moved by
 *              requests (top-ups, withdrawals, transfers)
 *   mover.c    those movements gathered into batches, one transaction
 *              per batch (migration 0004)
 *   holds.c    the account's part of the payment saga: holds reserved,
 *              settled and released by events, and the expiry sweeper
 */
#ifndef ACCOUNT_H
#define ACCOUNT_H

#include "svc.h"

/* RFC 3339 in UTC, milliseconds. The colons are written \x3a so that no
 * ':' stands in a literal: tools that run these statements as they are
 * (pgbench, in bench/transfer) would take one for a variable. */
#define ACCOUNT_TS_JSON(col)                                                   \
  "to_char(" col " AT TIME ZONE 'UTC', E'YYYY-MM-DD\"T\"HH24\\x3aMI\\x3aSS.MS\"Z\"')"

/* Locks one or two accounts in id order (FOR UPDATE): every transaction
 * that changes balances takes its rows this way first, so two of them
 * never wait for each other in a cycle. $1, $2 (may be equal). */
extern int account_stmt_lock;

/* ------------------------------------------------------------------------ */
/* Movements (account.c, mover.c)                                            */
/* ------------------------------------------------------------------------ */

typedef enum account_move_kind {
  ACCOUNT_MOVE_TOPUP,
  ACCOUNT_MOVE_WITHDRAWAL,
  ACCOUNT_MOVE_TRANSFER,
} account_move_kind_t;

/* A movement request's state (its svc_req_t's state area). */
typedef struct account_move {
  svc_idem_t idem;
  account_move_kind_t kind;
  char account[37]; /* the caller's account: top-up/withdrawal target, transfer source */
  char other[37];   /* the system account, or the transfer's destination */
  char currency[4];
  int64_t amount;
  int move_index;
  svc_req_t *next;  /* the mover's queue */
} account_move_t;

/* The answer of a movement refused for want of money; also stored under
 * its Idempotency-Key. */
extern const char account_insufficient_body[];

/* The movement's kind as the ledger names it ("transfer"), and its event. */
const char *account_move_kind_name(account_move_kind_t kind);
svc_event_type_t account_move_event(account_move_kind_t kind);

/* The event's payload of a movement: ids and amounts, never personal data. */
void account_move_payload(const account_move_t *mv, const char *txid, char *payload,
                          size_t payload_bytes);

/* The caller's part of the batch function's checks: the customer who must
 * own the source account, "" for nobody, NULL for anyone (staff moving
 * money on a customer's account). */
const char *account_move_owner(const svc_req_t *req, const account_move_t *mv);

/* Runs one movement alone: a read of both accounts, then its own
 * transaction. For what a batch could not settle (a key claimed before, a
 * batch that failed as a whole). */
void account_move_alone(svc_req_t *req);

typedef struct account_mover account_mover_t;

/* The mover's statement (merged into the service's table). */
extern const svc_stmt_t account_mover_stmts[];
extern const size_t account_mover_stmts_count;

/* Reads ACCOUNT_MOVE_BATCH_MAX, ACCOUNT_MOVE_BATCHES, ACCOUNT_MOVE_WINDOW.
 * Returns 0 or RT_E_CONFIG. */
int account_mover_config(void);

/* A loop thread's mover, its memory taken once here. NULL: out of memory. */
account_mover_t *account_mover_create(svc_thread_t *th);

/* Queues a checked movement request (its state filled in); it is answered
 * from the batch it joins. */
void account_mover_add(account_mover_t *m, svc_req_t *req);

/* Writes the movers' counters (all threads) on /metrics. */
void account_mover_metrics(wire_metrics_t *m);

/* At drain, after the last request: stops the timer, frees the memory. */
void account_mover_free(account_mover_t *m);

/* What a loop thread of the service owns (svc_thread_t's user). */
typedef struct account_thread {
  http_client_t *profile;
  account_mover_t *mover;
} account_thread_t;

/* The saga's statements, consumers and events (holds.c). */
extern const svc_stmt_t account_holds_stmts[];
extern const size_t account_holds_stmts_count;
extern const svc_consumer_t account_consumers[];
extern const size_t account_consumers_count;

/* Reads HOLD_TTL and HOLD_SWEEP_INTERVAL. Returns 0 or RT_E_CONFIG. */
int account_holds_config(void);

/* Thread 0: starts the expiry sweeper. */
int account_holds_start(svc_thread_t *th);

/* Thread 0, at drain: stops it. */
void account_holds_stop(svc_thread_t *th);

#endif /* ACCOUNT_H */
