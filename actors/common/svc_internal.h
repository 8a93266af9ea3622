/*
 * svc_internal.h - what the skeleton's own files share. Services include
 * svc.h only.
 */
#ifndef SVC_INTERNAL_H
#define SVC_INTERNAL_H

#include "svc.h"

/* Statement ids of the skeleton's own prepared statements (svc.c). */
extern int svc_stmt_idem_claim;
extern int svc_stmt_idem_finish;
extern int svc_stmt_outbox;

/* The common migrations (outbox, idempotency_keys), embedded at build time
 * from actors/common/migrations/ by embed_sql.py. */
extern const svc_migration_t svc_common_migrations[];
extern const size_t svc_common_migrations_count;

/* Lowercase hex of SHA-256 of data (svc_idem.c). */
void svc_sha256_hex(const void *data, size_t len, char out[65]);

#endif /* SVC_INTERNAL_H */
