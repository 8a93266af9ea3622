/*
 * account.h - what the account service's two files share:
 *   account.c  accounts, balances, the ledger and the money moved by
 *              requests (top-ups, withdrawals, transfers)
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
