/*
 * svc_internal.h - what the skeleton's own files share. Services include
 * svc.h only.
 */
#ifndef SVC_INTERNAL_H
#define SVC_INTERNAL_H

#include <stdatomic.h>

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

/* Statement ids of the relay (svc.c registers them on every pool). */
extern int svc_stmt_relay_scan;
extern int svc_stmt_relay_mark;
extern int svc_stmt_relay_count;

/* The outbox relay of loop thread 0 (svc_relay.c). */
typedef struct svc_relay svc_relay_t;

/* Counters of the relay and the inbox, for /metrics; any thread reads
 * them with relaxed loads. */
typedef struct svc_bus_stats {
  _Atomic uint64_t relay_published;   /* rows marked published */
  _Atomic uint64_t relay_sent;        /* publishes handed to the client */
  _Atomic uint64_t relay_errors;      /* failed scans, marks, refusals */
  _Atomic uint64_t relay_notifies;    /* NOTIFYs received */
  _Atomic uint64_t relay_pending;     /* unpublished rows, counted every few s */
  _Atomic uint64_t relay_last_error_s; /* Unix time of the last error; 0 */
  _Atomic uint64_t inbox_applied;     /* events applied for the first time */
  _Atomic uint64_t inbox_duplicates;  /* deliveries of ids seen before */
  _Atomic uint64_t inbox_failed;      /* transactions that failed: NACKed */
} svc_bus_stats_t;

extern svc_bus_stats_t svc_bus_stats;

/* Creates the relay on th (loop thread 0) with its bus client, made from
 * bus_cfg (whose confirm callback it takes over) and stored in th->bus but
 * not started; starts its LISTEN connection and its timer. */
int svc_relay_create(svc_relay_t **out, svc_thread_t *th, const bus_client_config_t *bus_cfg,
                     const char *db_url);

/* The bus client's confirm callback; arg is the relay. */
void svc_relay_on_confirm(void *arg, const uint8_t id[BUS_ID_BYTES], int err, void *ctx);

/* Stops scanning (drain begins); batches in flight finish. */
void svc_relay_stop(svc_relay_t *r);

/* After the pool closed: destroys the bus client and closes the LISTEN
 * connection (asynchronously; the loop keeps running a little). */
void svc_relay_close(svc_relay_t *r);

/* Frees the relay after the loop stopped. NULL is fine. */
void svc_relay_free(svc_relay_t *r);

#endif /* SVC_INTERNAL_H */
