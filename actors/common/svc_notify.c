/*
 * svc_notify.c - parked requests and the cross-thread wake-up.
 *
 * Life of a long-poll (GET /v1/payments/{id}?wait=MS):
 *   1. the handler parks the request on a key (svc_park): a slot from the
 *      thread's fixed pool, chained in the thread's hash table, with a
 *      timer for its deadline; the request holds no thread;
 *   2. the handler reads the database; if the answer is already final it
 *      answers at once (answering unparks);
 *   3. otherwise, when the state changes on loop thread T (an event
 *      applied by the consumer), T calls svc_notify(key): one pooled actor
 *      message per loop thread, through the lock-free mailboxes;
 *   4. each thread's actor finds the requests parked on that key and runs
 *      their woken(req, false): they read again and answer, or park again;
 *      the deadline runs woken(req, true) instead.
 *
 * The order of 1 and 2 is what rules out a lost wake-up: a notify sent
 * after the park finds the request; a notify sent before it was sent after
 * the commit, which the read in 2 then sees. A drain wakes every parked
 * request as timed out, so each answers with what it has.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "svc_internal.h"

typedef struct svc_park {
  svc_req_t *req;
  svc_parking_t *pk;
  struct svc_park *next;    /* hash chain */
  void (*woken)(svc_req_t *req, bool timed_out);
  rt_timer_t timer;
  uint32_t hash;
  char key[SVC_PARK_KEY_BYTES];
} svc_park_t;

struct svc_parking {
  svc_th_t *th;
  rt_pool_t parks;
  svc_park_t **buckets;
  uint32_t mask;
  uint32_t count;
};

static uint32_t key_hash(const char *key) {
  uint32_t h = 2166136261u; /* FNV-1a */
  for (const char *p = key; *p != '\0'; p++) h = (h ^ (uint8_t)*p) * 16777619u;
  return h;
}

int svc_parking_create(svc_parking_t **out, svc_th_t *th, uint32_t capacity) {
  svc_parking_t *pk = calloc(1, sizeof *pk);
  if (pk == NULL) return -ENOMEM;
  pk->th = th;
  uint32_t buckets = 64;
  while (buckets < capacity && buckets < (1u << 20)) buckets <<= 1;
  pk->mask = buckets - 1;
  pk->buckets = calloc(buckets, sizeof *pk->buckets);
  int rc = pk->buckets == NULL ? -ENOMEM
                               : rt_pool_init(&pk->parks, "svc_parked", sizeof(svc_park_t), capacity);
  if (rc < 0) {
    free(pk->buckets);
    free(pk);
    return rc;
  }
  *out = pk;
  return 0;
}

void svc_parking_free(svc_parking_t *pk) {
  if (pk == NULL) return;
  rt_pool_deinit(&pk->parks); /* the leak check; counted after a cut-short drain */
  free(pk->buckets);
  free(pk);
}

static void unlink_park(svc_parking_t *pk, svc_park_t *p) {
  svc_park_t **link = &pk->buckets[p->hash & pk->mask];
  while (*link != p) {
    assert(*link != NULL);
    link = &(*link)->next;
  }
  *link = p->next;
  p->next = NULL;
  pk->count--;
}

void svc_unpark(svc_req_t *req) {
  svc_park_t *p = req->park;
  if (p == NULL) return;
  svc_parking_t *pk = p->pk;
  assert(p->req == req);
  rt_timer_stop(pk->th->pub.loop, &p->timer);
  unlink_park(pk, p);
  req->park = NULL;
  rt_pool_put(&pk->parks, p);
}

/* Unparks, then lets the handler go on. */
static void wake(svc_park_t *p, bool timed_out) {
  svc_req_t *req = p->req;
  void (*woken)(svc_req_t *, bool) = p->woken;
  svc_unpark(req);
  rt_log_set_request_id(http_request_id(req->ex));
  woken(req, timed_out);
  rt_log_set_request_id(NULL);
}

static void park_deadline(rt_timer_t *t) { wake(t->ctx, true); }

int svc_park(svc_req_t *req, const char *key, uint32_t timeout_ms,
             void (*woken)(svc_req_t *req, bool timed_out)) {
  svc_th_t *th = (svc_th_t *)req->th;
  svc_parking_t *pk = th->parking;
  assert(req->park == NULL);
  assert(woken != NULL);
  if (strlen(key) >= SVC_PARK_KEY_BYTES) return -EINVAL;
  if (th->draining) return -ESHUTDOWN;
  svc_park_t *p = rt_pool_get(&pk->parks);
  if (p == NULL) return -ENOSPC;
  p->req = req;
  p->pk = pk;
  p->woken = woken;
  p->hash = key_hash(key);
  memcpy(p->key, key, strlen(key) + 1);
  rt_timer_init(&p->timer, park_deadline, p);
  if (rt_timer_start(th->pub.loop, &p->timer, timeout_ms, 0) < 0) {
    rt_pool_put(&pk->parks, p);
    return -ENOSPC;
  }
  svc_park_t **head = &pk->buckets[p->hash & pk->mask];
  p->next = *head;
  *head = p;
  pk->count++;
  req->park = p;
  return 0;
}

void svc_notify(const char *key) {
  size_t n = strlen(key);
  if (n >= SVC_PARK_KEY_BYTES) return;
  for (uint32_t i = 0; i < SVC_THREADS_MAX; i++) {
    svc_th_t *th = atomic_load(&svc_g.ready[i]);
    if (th == NULL) continue;
    rt_msg_t *msg = rt_msg_new(SVC_MSG_NOTIFY, (uint32_t)n + 1);
    if (msg == NULL) {
      /* The waiter then answers at its deadline, with what it reads. */
      RT_WARN("notify dropped: message pool empty", RT_LF_INT("thread", i));
      continue;
    }
    memcpy(msg->data, key, n + 1);
    msg->bytes = (uint32_t)n + 1;
    rt_actor_send(&th->actor, msg);
  }
}

typedef struct svc_call {
  void (*fn)(svc_thread_t *th, void *arg);
  void *arg;
} svc_call_t;

_Static_assert(sizeof(svc_call_t) <= SVC_MSG_BYTES, "a call fits a loop's message");

int svc_thread_call(uint32_t index, void (*fn)(svc_thread_t *th, void *arg), void *arg) {
  svc_th_t *th = index < SVC_THREADS_MAX ? atomic_load(&svc_g.ready[index]) : NULL;
  if (th == NULL) return -ENOENT;
  rt_msg_t *msg = rt_msg_new(SVC_MSG_CALL, sizeof(svc_call_t));
  if (msg == NULL) return -ENOMEM;
  svc_call_t call = {fn, arg};
  memcpy(msg->data, &call, sizeof call);
  msg->bytes = sizeof call;
  rt_actor_send(&th->actor, msg);
  return 0;
}

void svc_on_call(svc_th_t *th, rt_msg_t *msg) {
  svc_call_t call;
  if (NEVER(msg->bytes != sizeof call)) return;
  memcpy(&call, msg->data, sizeof call);
  call.fn(&th->pub, call.arg);
}

void svc_parking_on_notify(svc_th_t *th, rt_msg_t *msg) {
  svc_parking_t *pk = th->parking;
  const char *key = (const char *)msg->data;
  /* We wrote it: a key and its terminator. */
  if (NEVER(msg->bytes == 0)) return;
  if (NEVER(key[msg->bytes - 1] != '\0')) return;
  uint32_t h = key_hash(key);
  /* Woken handlers may park again on the same key: take the matches off
   * the chain first, then wake them. Bounded by the pool's capacity. */
  svc_park_t *hits = NULL;
  svc_park_t **link = &pk->buckets[h & pk->mask];
  while (*link != NULL) {
    svc_park_t *p = *link;
    if (p->hash == h && strcmp(p->key, key) == 0) {
      *link = p->next;
      pk->count--;
      rt_timer_stop(th->pub.loop, &p->timer);
      p->next = hits;
      hits = p;
    } else {
      link = &p->next;
    }
  }
  while (hits != NULL) {
    svc_park_t *p = hits;
    hits = p->next;
    svc_req_t *req = p->req;
    void (*woken)(svc_req_t *, bool) = p->woken;
    req->park = NULL;
    rt_pool_put(&pk->parks, p);
    rt_log_set_request_id(http_request_id(req->ex));
    woken(req, false);
    rt_log_set_request_id(NULL);
  }
}

void svc_parking_wake_all(svc_parking_t *pk) {
  if (pk == NULL) return;
  for (uint32_t b = 0; b <= pk->mask && pk->count > 0; b++) {
    while (pk->buckets[b] != NULL) wake(pk->buckets[b], true);
  }
}

/* ------------------------------------------------------------------------ */
/* Long-polls                                                               */
/* ------------------------------------------------------------------------ */

static void poll_woken(svc_req_t *req, bool timed_out);

/* Parks again for what is left of the wait; false when nothing is left
 * or the table is full (then the caller answers what it has). */
static bool poll_park(svc_req_t *req) {
  uint64_t now = rt_now_ns();
  if (req->poll.over || now >= req->poll.deadline_ns) return false;
  uint32_t left_ms = (uint32_t)((req->poll.deadline_ns - now + 999999u) / 1000000u);
  return svc_park(req, req->poll.key, left_ms, poll_woken) == 0;
}

static void poll_read(svc_req_t *req) {
  req->poll.reading = true;
  req->poll.woken = false;
  req->poll.read(req);
}

static void poll_woken(svc_req_t *req, bool timed_out) {
  if (timed_out) req->poll.over = true;
  if (req->poll.reading) {
    req->poll.woken = true; /* svc_poll_again() reads again */
    return;
  }
  if (!timed_out) (void)poll_park(req);
  poll_read(req);
}

void svc_poll_start(svc_req_t *req, const char *key, uint32_t wait_ms, svc_poll_read_fn read) {
  assert(read != NULL);
  req->poll.read = read;
  req->poll.deadline_ns = rt_now_ns() + (uint64_t)wait_ms * 1000000u;
  req->poll.over = wait_ms == 0 || strlen(key) >= sizeof req->poll.key;
  if (!req->poll.over) {
    memcpy(req->poll.key, key, strlen(key) + 1);
    if (!poll_park(req)) req->poll.over = true;
  }
  poll_read(req);
}

bool svc_poll_again(svc_req_t *req) {
  assert(req->poll.reading);
  req->poll.reading = false;
  if (req->poll.over) return false;
  if (req->poll.woken) {
    if (!poll_park(req)) return false;
    poll_read(req);
    return true;
  }
  return req->park != NULL; /* still parked: wait for the wake-up */
}
