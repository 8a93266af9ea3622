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
int event_dead_subscribe(svc_thread_t *th, bus_client_t *bus);

/* Thread 0: the periodic count of dead letters per topic; its stop. */
int event_dead_start(svc_thread_t *th);
void event_dead_stop(svc_thread_t *th);

/* dead_letters{topic} for /metrics. */
int event_dead_metrics(http_buf_t *out);

/* The routes. */
void event_on_dead_list(svc_req_t *req);
void event_on_redrive(svc_req_t *req);
void event_on_redrive_all(svc_req_t *req);

#endif /* EVENT_H */
