/*
 * svc_inbox.c - the consumer side of the bus: apply once, then ACK.
 *
 * An event is applied by one statement of the service (built on
 * SVC_INBOX_CTE) in its own transaction: the inbox row and the state
 * change commit together or not at all. Only after the commit is the
 * delivery ACKed; a crash before the ACK makes busd deliver it again, and
 * then the inbox row already exists, the statement changes nothing and the
 * delivery is only ACKed. A failed transaction is NACKed, so busd retries
 * it after its back-off (and dead-letters it after its attempt limit).
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "svc.h"
#include "svc_internal.h"

#define INBOX_TOPIC_BYTES (BUS_NAME_BYTES_MAX + 1)

/* What the ACK needs once the transaction is back. */
typedef struct inbox_ctx {
  svc_thread_t *th;
  uint32_t sub;
  uint32_t partition;
  uint64_t offset;
} inbox_ctx_t;

/* ACK or NACK; not connected any more is fine: busd redelivers. */
static void inbox_answer(svc_thread_t *th, uint32_t sub, uint32_t partition, uint64_t offset,
                         bool ok) {
  if (th->bus == NULL) return; /* draining: the client is gone */
  int rc = ok ? bus_ack(th->bus, sub, partition, offset) : bus_nack(th->bus, sub, partition, offset);
  if (rc < 0 && rc != BUS_E_CLOSED) {
    RT_WARN("inbox: cannot answer a delivery", RT_LF_BOOL("ack", ok),
            RT_LF_STR("error", rt_strerror(rc)));
  }
}

static void inbox_done(rt_pg_batch_t *b, int err, void *arg) {
  inbox_ctx_t *c = arg;
  if (err != 0) {
    atomic_fetch_add_explicit(&svc_bus_stats.inbox_failed, 1, memory_order_relaxed);
    RT_WARN("inbox: event not applied, NACKed", RT_LF_STR("error", rt_strerror(err)));
  } else if (rt_pg_rows(b, 0) > 0) {
    atomic_fetch_add_explicit(&svc_bus_stats.inbox_applied, 1, memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(&svc_bus_stats.inbox_duplicates, 1, memory_order_relaxed);
    RT_DEBUG("inbox: duplicate absorbed", RT_LF_INT("offset", c->offset));
  }
  inbox_answer(c->th, c->sub, c->partition, c->offset, err == 0);
  free(c);
}

int svc_inbox_apply(svc_thread_t *th, const bus_delivery_t *d, int stmt, int nparams,
                    const char *const *values) {
  char id[37];
  char topic[INBOX_TOPIC_BYTES];
  const char *params[RT_PG_PARAMS_MAX];
  int rc = 0;
  if (nparams < 0 || nparams > RT_PG_PARAMS_MAX - 2 || d->topic.len >= sizeof topic) rc = -EINVAL;
  inbox_ctx_t *c = rc == 0 ? malloc(sizeof *c) : NULL;
  if (rc == 0 && c == NULL) rc = -ENOMEM;
  rt_pg_batch_t *b = rc == 0 ? rt_pg_batch_new(th->pool) : NULL;
  if (rc == 0 && b == NULL) rc = RT_PG_E_POOL_FULL;
  if (rc == 0) {
    bus_uuid_format(d->id, id);
    memcpy(topic, d->topic.ptr, d->topic.len);
    topic[d->topic.len] = '\0';
    params[0] = id;
    params[1] = topic;
    for (int i = 0; i < nparams; i++) params[2 + i] = values[i];
    *c = (inbox_ctx_t){.th = th, .sub = d->sub, .partition = d->partition, .offset = d->offset};
    rt_pg_add(b, stmt, 2 + nparams, params);
    rc = rt_pg_submit(b, 0, inbox_done, c); /* frees b on error */
  }
  if (rc < 0) {
    free(c);
    atomic_fetch_add_explicit(&svc_bus_stats.inbox_failed, 1, memory_order_relaxed);
    RT_WARN("inbox: cannot apply an event, NACKed", RT_LF_STR("error", rt_strerror(rc)));
    inbox_answer(th, d->sub, d->partition, d->offset, false);
  }
  return rc;
}
