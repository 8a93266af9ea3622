/*
 * svc_bus_amqp.c - the event transport on a RabbitMQ cluster (svc_bus.h).
 *
 * rabbitmq-c has no asynchronous API, so the AMQP connection lives on a
 * bridge thread of its own; the loop thread never waits for RabbitMQ:
 *
 *   loop -> bridge   commands (publish, ack, nack, stop) pushed onto the
 *                    bridge's lock-free mailbox (rt_mailbox_t), plus an
 *                    eventfd write when the bridge may be asleep
 *   bridge -> loop   confirms, deliveries and connection changes, sent to
 *                    the transport's actor on the loop (rt_actor_send)
 *
 * Every message either way is one allocation (rt_msg_t, origin NULL) that
 * carries its data. A publish travels to the bridge, waits there until
 * RabbitMQ confirms it, and comes back as its own confirm.
 *
 * Topology (declared in full at every connect, by every process, so an
 * event published before its consumers ever ran is kept for them):
 *   exchange paycore.events (direct): routing key = topic
 *   queue "<group>:<topic>" per consumer group and topic it consumes:
 *     quorum, x-delivery-limit (AMQP_MAX_ATTEMPTS - 1), dead letters to
 *     exchange paycore.dead with routing key "<topic>.dead", at-least-once
 *     dead-lettering (with x-overflow reject-publish, as RabbitMQ requires),
 *     single active consumer (one instance of a group takes a queue at a
 *     time: order on first delivery, as busd's one member per partition)
 *   exchange paycore.dead (direct), queue "event:<topic>.dead" per topic
 *     (quorum, no limit): the event service's dead-letter consumer
 * The table of who consumes what is the platform's (consumed[] below); a
 * subscription outside it is refused at start-up, so a new consumer cannot
 * silently miss events published before it first ran.
 *
 * Publishing: channel 1 in confirm mode, persistent messages, mandatory.
 * Each publish keeps its place in the bridge's pending list until the
 * broker's basic.ack covers its sequence number; a basic.nack, or a
 * basic.return (no queue bound) before the ack, sends it again after a
 * pause; a lost connection sends every pending publish again, in order,
 * on the next one. So a publish is confirmed to the relay exactly once,
 * and only once RabbitMQ holds it on a quorum of nodes.
 *
 * Consuming: channel 2, basic.consume per subscription with prefetch =
 * its max_in_flight, manual acks. A delivery names (partition = the
 * connection's number, offset = the delivery tag); an answer for an older
 * connection is dropped (RabbitMQ has already put that message back). A
 * nack waits NACK_DELAY_MS before it is sent with requeue, so a failing
 * event does not spin; RabbitMQ counts the attempt and dead-letters past
 * the limit. Since deliveries of an old
 * connection may still be applied on the loop when the new one delivers
 * again, the loop holds back deliveries beyond a subscription's window
 * until answers free room.
 *
 * Event headers travel as AMQP properties and headers: message_id = the
 * event id, type, correlation_id, timestamp, and the headers table with
 * every event header as it is, plus paycore-key (the bus key) and
 * paycore-published-ms. Consumers get them back as the same msgpack
 * headers map busd delivers; a dead letter's x-death becomes busd's
 * x-dead-topic, x-dead-group, x-dead-attempts and x-dead-error.
 */
#include <amqp.h>
#include <amqp_tcp_socket.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "svc.h"
#include "svc_bus.h"

#define EXCHANGE_EVENTS "paycore.events"
#define EXCHANGE_DEAD "paycore.dead"
#define CH_PUB 1
#define CH_SUB 2
#define SUBS_MAX 64
#define PENDING_MAX 1024           /* unconfirmed publishes, as busd's client */
#define CONNECT_TIMEOUT_S 2
#define RPC_TIMEOUT_S 10
#define RECONNECT_MIN_MS 100
#define RECONNECT_MAX_MS 2000
#define RESEND_PAUSE_MS 200        /* after a broker's nack or return */
#define NACK_DELAY_MS 500         /* a failed delivery comes back after this */
#define FRAME_MAX 131072
#define HEADER_BYTES_MAX (16u * 1024u)

/* Who consumes what, besides the event service (every topic and every
 * dead-letter topic). Keep in step with the services' consumer tables:
 * a subscription missing here fails at start-up. */
static const struct {
  const char *group;
  const char *topic;
} consumed[] = {
    {"account", "payment.requested"},      {"account", "payment.authorized"},
    {"account", "payment.cancelled"},      {"payment", "account.funds_reserved"},
    {"payment", "account.funds_rejected"}, {"payment", "account.payment_settled"},
    {"payment", "account.settlement_failed"}, {"payment", "account.funds_released"},
};
#define EVERYTHING_GROUP "event"

enum {
  AM_CONFIRM = RT_MSG_USER + 1, /* data: pub_t, err in u64 */
  AM_DELIVER,                   /* data: dlv_t */
  AM_STATE,                     /* u64: connection number, ptr: non-NULL when up */
  AM_RELEASE,                   /* loop to itself: u64 = subscription */
  CMD_PUBLISH,                  /* data: pub_t */
  CMD_ANSWER,                   /* data: answer_t */
  CMD_STOP,
};

/* A publish: from the loop to the bridge and back as its confirm. */
typedef struct pub {
  rt_msg_t *msg;
  void *ctx;
  struct pub *lprev, *lnext;   /* the loop's list of unconfirmed (loop only) */
  struct pub *next;            /* the bridge's pending list (bridge only) */
  uint64_t seq;                /* bridge: confirm number; 0 = not sent */
  bool returned;               /* bridge: unroutable, send again */
  uint8_t id[BUS_ID_BYTES];
  uint32_t topic_len, key_len, hdr_len, payload_len;
  char data[];                 /* topic NUL, key, headers (msgpack), payload */
} pub_t;

/* A delivery: from the bridge to the loop. */
typedef struct dlv {
  rt_msg_t *msg;
  struct dlv *next;            /* a held-back subscription's queue */
  uint32_t sub;
  uint32_t conn;
  uint64_t tag;
  uint8_t id[BUS_ID_BYTES];
  uint32_t attempt;
  uint64_t stored_ms;
  uint32_t key_len, hdr_len, payload_len;
  uint8_t data[];
} dlv_t;

typedef struct answer {
  bool ack;
  uint32_t sub;
  uint32_t conn;
  uint64_t tag;
} answer_t;

typedef struct sub {
  char topic[BUS_NAME_BYTES_MAX + 1];
  char group[BUS_NAME_BYTES_MAX + 1];
  char queue[2 * BUS_NAME_BYTES_MAX + 2];
  uint32_t max_in_flight;
  svc_bus_deliver_fn fn;
  void *arg;
  /* Loop only: deliveries handed out and not answered, and those held
   * back meanwhile. */
  uint32_t outstanding;
  dlv_t *held_head, *held_tail;
  bool release_queued;         /* an AM_RELEASE is on its way */
} sub_t;

/* A nack waiting for its back-off (bridge only). */
typedef struct late_nack {
  uint64_t due_ns;
  uint32_t conn;
  uint64_t tag;
} late_nack_t;

#define LATE_NACKS_MAX 4096

typedef struct amqp_bus {
  svc_bus_t base;
  rt_loop_t *loop;
  svc_bus_config_t cfg;
  char name[64];
  rt_actor_t actor;
  rt_msg_t *spent;             /* the last message handled: freed with the next */
  bool started, closed, connected;
  uint32_t conn_seen;          /* the connection number the loop knows */
  pub_t *lhead, *ltail;        /* unconfirmed publishes (loop) */
  uint32_t unconfirmed;
  sub_t subs[SUBS_MAX];
  uint32_t subs_count;
  bus_client_stats_t stats;
  /* Shared. */
  rt_mailbox_t inbox;          /* commands to the bridge */
  int efd;
  atomic_bool asleep;          /* the bridge may be in poll() */
  pthread_mutex_t send_lock;   /* the bridge sends only while open */
  bool loop_gone;              /* under send_lock */
  pthread_t thread;
  bool thread_started;
  /* The bridge's own. */
  amqp_connection_state_t conn;
  uint32_t conn_no;
  bool up;
  bool partial;                /* the read buffer ends inside a frame */
  bool stopping;
  uint32_t host_next;
  uint32_t backoff_ms;
  uint64_t next_seq;
  pub_t *phead, *ptail;        /* pending publishes, in sequence order */
  uint64_t resend_after_ns;
  late_nack_t late[LATE_NACKS_MAX];
  uint32_t late_count;
} amqp_bus_t;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static rt_msg_t *msg_alloc(uint32_t type, size_t bytes) {
  rt_msg_t *m = calloc(1, sizeof *m + bytes);
  if (m == NULL) return NULL;
  m->type = type;
  m->bytes = (uint32_t)bytes;
  return m;
}

/* ------------------------------------------------------------------------ */
/* Topology                                                                 */
/* ------------------------------------------------------------------------ */

static bool topology_has(const char *group, const char *topic) {
  if (strcmp(group, EVERYTHING_GROUP) == 0) {
    size_t n = strlen(topic);
    if (n > 5 && strcmp(topic + n - 5, ".dead") == 0) n -= 5;
    return svc_event_by_topic(topic, n) != NULL;
  }
  for (size_t i = 0; i < sizeof consumed / sizeof consumed[0]; i++)
    if (strcmp(consumed[i].group, group) == 0 && strcmp(consumed[i].topic, topic) == 0) return true;
  return false;
}

static void queue_name(char *out, size_t out_bytes, const char *group, const char *topic) {
  snprintf(out, out_bytes, "%s:%s", group, topic);
}

/* ------------------------------------------------------------------------ */
/* Bridge: talking to the loop                                              */
/* ------------------------------------------------------------------------ */

/* Sends to the loop's actor unless the loop side has closed. */
static void to_loop(amqp_bus_t *t, rt_msg_t *m) {
  pthread_mutex_lock(&t->send_lock);
  int rc = t->loop_gone ? RT_E_STOPPED : rt_actor_send(&t->actor, m);
  pthread_mutex_unlock(&t->send_lock);
  if (rc < 0) free(m); /* the loop side has closed: nobody will read it */
}

static void tell_state(amqp_bus_t *t, bool up) {
  rt_msg_t *m = msg_alloc(AM_STATE, 0);
  if (m == NULL) return;
  m->u64 = t->conn_no;
  m->ptr = up ? t : NULL;
  to_loop(t, m);
}

/* ------------------------------------------------------------------------ */
/* Bridge: the connection                                                   */
/* ------------------------------------------------------------------------ */

static const char *reply_text(amqp_rpc_reply_t r, char *buf, size_t n) {
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL: return "ok";
  case AMQP_RESPONSE_NONE: return "no reply";
  case AMQP_RESPONSE_LIBRARY_EXCEPTION: return amqp_error_string2(r.library_error);
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD || r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      const amqp_channel_close_t *c = r.reply.decoded; /* same layout for both */
      snprintf(buf, n, "%u %.*s", c->reply_code, (int)c->reply_text.len,
               (const char *)c->reply_text.bytes);
      return buf;
    }
    return "server exception";
  }
  return "?";
}

static void conn_drop(amqp_bus_t *t, const char *why) {
  if (t->conn == NULL) return;
  if (t->up) {
    RT_WARN("amqp connection lost", RT_LF_STR("why", why), RT_LF_INT("connection", t->conn_no));
    tell_state(t, false);
  }
  t->up = false;
  amqp_destroy_connection(t->conn);
  t->conn = NULL;
  /* Every pending publish is unsent again; nacks of that connection are
   * moot (RabbitMQ put those messages back). */
  for (pub_t *p = t->phead; p != NULL; p = p->next) p->seq = 0, p->returned = false;
  t->late_count = 0;
}

static bool rpc_ok(amqp_bus_t *t, const char *what) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(t->conn);
  if (r.reply_type == AMQP_RESPONSE_NORMAL) return true;
  char buf[160];
  RT_WARN("amqp call failed", RT_LF_STR("call", what), RT_LF_STR("error", reply_text(r, buf, sizeof buf)));
  return false;
}

static amqp_table_entry_t entry_str(const char *key, const char *value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_cstring_bytes(value);
  return e;
}

static bool declare_queue(amqp_bus_t *t, const char *group, const char *topic) {
  char q[2 * BUS_NAME_BYTES_MAX + 2], dead_key[BUS_NAME_BYTES_MAX + 8];
  queue_name(q, sizeof q, group, topic);
  size_t tl = strlen(topic);
  bool is_dead = tl > 5 && strcmp(topic + tl - 5, ".dead") == 0;
  snprintf(dead_key, sizeof dead_key, "%s.dead", topic);
  amqp_table_entry_t e[8];
  int n = 0;
  e[n++] = entry_str("x-queue-type", "quorum");
  e[n].key = amqp_cstring_bytes("x-single-active-consumer");
  e[n].value.kind = AMQP_FIELD_KIND_BOOLEAN;
  e[n++].value.value.boolean = 1;
  if (!is_dead) {
    e[n].key = amqp_cstring_bytes("x-delivery-limit");
    e[n].value.kind = AMQP_FIELD_KIND_I64;
    e[n++].value.value.i64 = t->cfg.delivery_limit;
    e[n++] = entry_str("x-dead-letter-exchange", EXCHANGE_DEAD);
    e[n++] = entry_str("x-dead-letter-routing-key", dead_key);
    e[n++] = entry_str("x-dead-letter-strategy", "at-least-once");
    e[n++] = entry_str("x-overflow", "reject-publish");
  }
  amqp_table_t args = {.num_entries = n, .entries = e};
  amqp_queue_declare(t->conn, CH_PUB, amqp_cstring_bytes(q), 0, 1, 0, 0, args);
  if (!rpc_ok(t, "queue.declare")) return false;
  amqp_queue_bind(t->conn, CH_PUB, amqp_cstring_bytes(q),
                  amqp_cstring_bytes(is_dead ? EXCHANGE_DEAD : EXCHANGE_EVENTS),
                  amqp_cstring_bytes(topic), amqp_empty_table);
  return rpc_ok(t, "queue.bind");
}

static bool declare_topology(amqp_bus_t *t) {
  const char *ex[] = {EXCHANGE_EVENTS, EXCHANGE_DEAD};
  for (int i = 0; i < 2; i++) {
    amqp_exchange_declare(t->conn, CH_PUB, amqp_cstring_bytes(ex[i]), amqp_cstring_bytes("direct"),
                          0, 1, 0, 0, amqp_empty_table);
    if (!rpc_ok(t, "exchange.declare")) return false;
  }
  for (int e = 0; e < SVC_EV_COUNT; e++) {
    const char *topic = svc_event_def((svc_event_type_t)e)->topic;
    char dead[BUS_NAME_BYTES_MAX + 8];
    snprintf(dead, sizeof dead, "%s.dead", topic);
    if (!declare_queue(t, EVERYTHING_GROUP, topic) || !declare_queue(t, EVERYTHING_GROUP, dead))
      return false;
  }
  for (size_t i = 0; i < sizeof consumed / sizeof consumed[0]; i++)
    if (!declare_queue(t, consumed[i].group, consumed[i].topic)) return false;
  return true;
}

static bool subscribe_all(amqp_bus_t *t) {
  for (uint32_t i = 0; i < t->subs_count; i++) {
    const sub_t *s = &t->subs[i];
    uint32_t pf = s->max_in_flight > 65535 ? 65535 : s->max_in_flight;
    amqp_basic_qos(t->conn, CH_SUB, 0, (uint16_t)pf, 0);
    if (!rpc_ok(t, "basic.qos")) return false;
    char tag[16];
    snprintf(tag, sizeof tag, "%u", i);
    amqp_basic_consume(t->conn, CH_SUB, amqp_cstring_bytes(s->queue), amqp_cstring_bytes(tag), 0, 0,
                       0, amqp_empty_table);
    if (!rpc_ok(t, "basic.consume")) return false;
  }
  return true;
}

static void publish_one(amqp_bus_t *t, pub_t *p);

/* One connection attempt to the next host. True when up. */
static bool conn_open(amqp_bus_t *t) {
  const svc_bus_url_t *u = &t->cfg.url;
  uint32_t h = t->host_next++ % u->hosts_count;
  t->conn = amqp_new_connection();
  amqp_socket_t *sock = t->conn ? amqp_tcp_socket_new(t->conn) : NULL;
  if (sock == NULL) {
    if (t->conn) amqp_destroy_connection(t->conn);
    t->conn = NULL;
    return false;
  }
  struct timeval ct = {CONNECT_TIMEOUT_S, 0}, rt = {RPC_TIMEOUT_S, 0};
  amqp_set_handshake_timeout(t->conn, &ct);
  amqp_set_rpc_timeout(t->conn, &rt);
  int rc = amqp_socket_open_noblock(sock, u->hosts[h].host, u->hosts[h].port, &ct);
  if (rc != AMQP_STATUS_OK) {
    RT_DEBUG("amqp connect failed", RT_LF_STR("host", u->hosts[h].host),
             RT_LF_INT("port", u->hosts[h].port), RT_LF_STR("error", amqp_error_string2(rc)));
    amqp_destroy_connection(t->conn);
    t->conn = NULL;
    return false;
  }
  amqp_rpc_reply_t r = amqp_login(t->conn, u->vhost, 0, FRAME_MAX, (int)t->cfg.heartbeat_s,
                                  AMQP_SASL_METHOD_PLAIN, u->user, u->pass);
  bool ok = r.reply_type == AMQP_RESPONSE_NORMAL;
  if (!ok) {
    char buf[160];
    RT_WARN("amqp login failed", RT_LF_STR("host", u->hosts[h].host),
            RT_LF_INT("port", u->hosts[h].port), RT_LF_STR("error", reply_text(r, buf, sizeof buf)));
  }
  if (ok) {
    amqp_channel_open(t->conn, CH_PUB);
    ok = rpc_ok(t, "channel.open");
  }
  if (ok) {
    amqp_confirm_select(t->conn, CH_PUB);
    ok = rpc_ok(t, "confirm.select");
  }
  if (ok) ok = declare_topology(t);
  if (ok && t->subs_count > 0) {
    amqp_channel_open(t->conn, CH_SUB);
    ok = rpc_ok(t, "channel.open") && subscribe_all(t);
  }
  if (!ok) {
    amqp_destroy_connection(t->conn);
    t->conn = NULL;
    return false;
  }
  t->conn_no++;
  t->up = true;
  t->partial = false;
  t->backoff_ms = 0;
  t->next_seq = 1;
  uint32_t resent = 0;
  for (pub_t *p = t->phead; p != NULL && t->up; p = p->next) {
    publish_one(t, p);
    resent++;
  }
  RT_INFO("amqp connected", RT_LF_STR("host", u->hosts[h].host), RT_LF_INT("port", u->hosts[h].port),
          RT_LF_INT("connection", t->conn_no), RT_LF_INT("subscriptions", t->subs_count),
          RT_LF_INT("resent", resent));
  if (t->up) tell_state(t, true);
  return t->up;
}

/* ------------------------------------------------------------------------ */
/* Bridge: publishing                                                       */
/* ------------------------------------------------------------------------ */

static void publish_one(amqp_bus_t *t, pub_t *p) {
  const char *topic = p->data;
  const uint8_t *key = (const uint8_t *)p->data + p->topic_len + 1;
  bus_bytes_t hdr = {(const uint8_t *)key + p->key_len, p->hdr_len};
  const uint8_t *payload = hdr.ptr + p->hdr_len;
  char id[37], key_text[BUS_KEY_BYTES_MAX + 1], ms[24];
  bus_uuid_format(p->id, id);
  memcpy(key_text, key, p->key_len);
  key_text[p->key_len] = '\0';
  uint64_t now = wall_ms();
  snprintf(ms, sizeof ms, "%" PRIu64, now);
  amqp_table_entry_t e[BUS_HEADERS_MAX + 2];
  int n = 0;
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  props._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG |
                 AMQP_BASIC_MESSAGE_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG | AMQP_BASIC_HEADERS_FLAG;
  props.content_type = amqp_cstring_bytes("application/json");
  props.delivery_mode = 2; /* persistent */
  props.message_id = amqp_cstring_bytes(id);
  props.timestamp = now / 1000u;
  bus_header_iter_t it;
  bus_header_iter_init(&it, hdr);
  bus_bytes_t hn, hv;
  while (n < BUS_HEADERS_MAX && bus_header_next(&it, &hn, &hv)) {
    e[n].key = (amqp_bytes_t){hn.len, (void *)hn.ptr};
    e[n].value.kind = AMQP_FIELD_KIND_UTF8;
    e[n].value.value.bytes = (amqp_bytes_t){hv.len, (void *)hv.ptr};
    if (hn.len == 4 && memcmp(hn.ptr, "type", 4) == 0) {
      props._flags |= AMQP_BASIC_TYPE_FLAG;
      props.type = e[n].value.value.bytes;
    } else if (hn.len == 14 && memcmp(hn.ptr, "correlation-id", 14) == 0) {
      props._flags |= AMQP_BASIC_CORRELATION_ID_FLAG;
      props.correlation_id = e[n].value.value.bytes;
    }
    n++;
  }
  e[n++] = entry_str("paycore-key", key_text);
  e[n++] = entry_str("paycore-published-ms", ms);
  props.headers = (amqp_table_t){.num_entries = n, .entries = e};
  int rc = amqp_basic_publish(t->conn, CH_PUB, amqp_cstring_bytes(EXCHANGE_EVENTS),
                              amqp_cstring_bytes(topic), 1, 0, &props,
                              (amqp_bytes_t){p->payload_len, (void *)payload});
  if (rc != AMQP_STATUS_OK) {
    conn_drop(t, amqp_error_string2(rc));
    return;
  }
  p->seq = t->next_seq++;
  p->returned = false;
}

static void pending_append(amqp_bus_t *t, pub_t *p) {
  p->next = NULL;
  if (t->ptail) t->ptail->next = p;
  else t->phead = p;
  t->ptail = p;
}

/* The broker's basic.ack or basic.nack for the publish numbered `tag`, or
 * (multiple) for every one up to it. The list is in sequence order: sent
 * publishes first, by number, then the unsent ones. */
static void on_publish_answer(amqp_bus_t *t, uint64_t tag, bool multiple, bool ack) {
  pub_t *keep_head = NULL, *keep_tail = NULL, *again_head = NULL, *again_tail = NULL;
  for (pub_t *p = t->phead, *nx; p != NULL; p = nx) {
    nx = p->next;
    p->next = NULL;
    bool hit = p->seq != 0 && (multiple ? p->seq <= tag : p->seq == tag);
    pub_t **head = &keep_head, **tail = &keep_tail;
    if (hit && ack && !p->returned) {
      p->msg->type = AM_CONFIRM;
      p->msg->u64 = 0;
      to_loop(t, p->msg);
      continue;
    }
    if (hit) {
      /* Refused (nack) or unroutable (returned): once more, later. */
      p->seq = 0;
      head = &again_head;
      tail = &again_tail;
    }
    if (*tail) (*tail)->next = p;
    else *head = p;
    *tail = p;
  }
  if (again_head != NULL) {
    if (keep_tail) keep_tail->next = again_head;
    else keep_head = again_head;
    keep_tail = again_tail;
    t->resend_after_ns = mono_ns() + (uint64_t)RESEND_PAUSE_MS * 1000000u;
    RT_WARN("amqp publish refused or unroutable: sending it again", RT_LF_BOOL("nack", !ack));
  }
  t->phead = keep_head;
  t->ptail = keep_tail;
}

/* basic.return: a mandatory publish no queue took. Its ack follows; the
 * publish is sent again then instead of being confirmed. */
static void on_return(amqp_bus_t *t) {
  amqp_message_t m;
  amqp_rpc_reply_t r = amqp_read_message(t->conn, CH_PUB, &m, 0);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    conn_drop(t, "reading a returned message");
    return;
  }
  if ((m.properties._flags & AMQP_BASIC_MESSAGE_ID_FLAG) && m.properties.message_id.len == 36) {
    for (pub_t *p = t->phead; p != NULL; p = p->next) {
      char pid[37];
      bus_uuid_format(p->id, pid);
      if (p->seq != 0 && memcmp(pid, m.properties.message_id.bytes, 36) == 0) {
        p->returned = true;
        break;
      }
    }
  }
  amqp_destroy_message(&m);
}

/* Sends the unsent pending publishes (after a refusal's pause). */
static void publish_unsent(amqp_bus_t *t) {
  if (!t->up || mono_ns() < t->resend_after_ns) return;
  for (pub_t *p = t->phead; p != NULL && t->up; p = p->next)
    if (p->seq == 0) publish_one(t, p);
}

/* ------------------------------------------------------------------------ */
/* Bridge: deliveries                                                       */
/* ------------------------------------------------------------------------ */

static bool bytes_eq(amqp_bytes_t b, const char *s) {
  size_t n = strlen(s);
  return b.len == n && memcmp(b.bytes, s, n) == 0;
}

static const amqp_field_value_t *table_get(const amqp_table_t *tb, const char *key) {
  for (int i = 0; i < tb->num_entries; i++)
    if (bytes_eq(tb->entries[i].key, key)) return &tb->entries[i].value;
  return NULL;
}

static bool value_int(const amqp_field_value_t *v, int64_t *out) {
  switch (v->kind) {
  case AMQP_FIELD_KIND_I8: *out = v->value.i8; return true;
  case AMQP_FIELD_KIND_U8: *out = v->value.u8; return true;
  case AMQP_FIELD_KIND_I16: *out = v->value.i16; return true;
  case AMQP_FIELD_KIND_U16: *out = v->value.u16; return true;
  case AMQP_FIELD_KIND_I32: *out = v->value.i32; return true;
  case AMQP_FIELD_KIND_U32: *out = v->value.u32; return true;
  case AMQP_FIELD_KIND_I64: *out = v->value.i64; return true;
  case AMQP_FIELD_KIND_U64: *out = (int64_t)v->value.u64; return true;
  default: return false;
  }
}

static bool value_text(const amqp_field_value_t *v, amqp_bytes_t *out) {
  if (v == NULL || (v->kind != AMQP_FIELD_KIND_UTF8 && v->kind != AMQP_FIELD_KIND_BYTES)) return false;
  *out = v->value.bytes;
  return true;
}

static int uuid_parse(const char *s, size_t n, uint8_t out[BUS_ID_BYTES]) {
  if (n != 36) return -EINVAL;
  size_t o = 0;
  for (size_t i = 0; i < 36; i++) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i] != '-') return -EINVAL;
      continue;
    }
    int v = 0;
    for (int k = 0; k < 2; k++, i += (k == 1)) {
      char c = s[i];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
              : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
      if (d < 0) return -EINVAL;
      v = v * 16 + d;
    }
    if (o == BUS_ID_BYTES) return -EINVAL;
    out[o++] = (uint8_t)v;
  }
  return o == BUS_ID_BYTES ? 0 : -EINVAL;
}

static void on_deliver(amqp_bus_t *t, const amqp_basic_deliver_t *d) {
  amqp_message_t m;
  amqp_rpc_reply_t r = amqp_read_message(t->conn, CH_SUB, &m, 0);
  if (r.reply_type != AMQP_RESPONSE_NORMAL) {
    conn_drop(t, "reading a delivery");
    return;
  }
  char tag[16];
  uint32_t sub = UINT32_MAX;
  if (d->consumer_tag.len < sizeof tag) {
    memcpy(tag, d->consumer_tag.bytes, d->consumer_tag.len);
    tag[d->consumer_tag.len] = '\0';
    sub = (uint32_t)strtoul(tag, NULL, 10);
  }
  const amqp_basic_properties_t *pr = &m.properties;
  uint8_t id[BUS_ID_BYTES];
  bool id_ok = (pr->_flags & AMQP_BASIC_MESSAGE_ID_FLAG) &&
               uuid_parse(pr->message_id.bytes, pr->message_id.len, id) == 0;
  if (sub >= t->subs_count || !id_ok) {
    /* Not ours to apply: straight to the dead letters. */
    RT_ERROR("amqp delivery without an event id or subscription: dead-lettered",
             RT_LF_INT("tag", d->delivery_tag));
    amqp_basic_nack(t->conn, CH_SUB, d->delivery_tag, 0, 0);
    amqp_destroy_message(&m);
    return;
  }
  /* Headers: the event's own pass through; ours and RabbitMQ's become
   * fields (key, stored time, attempt) or busd's x-dead-* names. */
  bus_header_t h[BUS_HEADERS_MAX];
  uint32_t nh = 0;
  amqp_bytes_t key = {0, NULL};
  uint64_t stored_ms = (uint64_t)pr->timestamp * 1000u;
  uint32_t attempt = d->redelivered ? 2 : 1;
  char dead_topic[BUS_NAME_BYTES_MAX + 1] = "", dead_group[BUS_NAME_BYTES_MAX + 1] = "";
  char dead_attempts[16] = "", dead_error[96] = "";
  amqp_table_t empty = {0, NULL};
  const amqp_table_t *tb = (pr->_flags & AMQP_BASIC_HEADERS_FLAG) ? &pr->headers : &empty;
  for (int i = 0; i < tb->num_entries; i++) {
    const amqp_table_entry_t *e = &tb->entries[i];
    amqp_bytes_t v;
    int64_t iv;
    if (bytes_eq(e->key, "paycore-key")) {
      if (value_text(&e->value, &v)) key = v;
    } else if (bytes_eq(e->key, "paycore-published-ms")) {
      if (value_text(&e->value, &v) && v.len < 20) {
        char buf[24];
        memcpy(buf, v.bytes, v.len);
        buf[v.len] = '\0';
        stored_ms = strtoull(buf, NULL, 10);
      }
    } else if (bytes_eq(e->key, "x-delivery-count")) {
      if (value_int(&e->value, &iv) && iv >= 0 && iv < UINT32_MAX - 1) attempt = (uint32_t)iv + 1;
    } else if (bytes_eq(e->key, "x-death")) {
      if (e->value.kind == AMQP_FIELD_KIND_ARRAY && e->value.value.array.num_entries > 0 &&
          e->value.value.array.entries[0].kind == AMQP_FIELD_KIND_TABLE) {
        const amqp_table_t *x = &e->value.value.array.entries[0].value.table;
        amqp_bytes_t q = {0, NULL}, reason = {0, NULL};
        value_text(table_get(x, "queue"), &q);
        value_text(table_get(x, "reason"), &reason);
        const amqp_field_value_t *rk = table_get(x, "routing-keys");
        if (rk && rk->kind == AMQP_FIELD_KIND_ARRAY && rk->value.array.num_entries > 0 &&
            (rk->value.array.entries[0].kind == AMQP_FIELD_KIND_UTF8 ||
             rk->value.array.entries[0].kind == AMQP_FIELD_KIND_BYTES)) {
          amqp_bytes_t b = rk->value.array.entries[0].value.bytes;
          snprintf(dead_topic, sizeof dead_topic, "%.*s", (int)b.len, (const char *)b.bytes);
        }
        const char *colon = q.len ? memchr(q.bytes, ':', q.len) : NULL;
        if (colon != NULL)
          snprintf(dead_group, sizeof dead_group, "%.*s", (int)(colon - (const char *)q.bytes),
                   (const char *)q.bytes);
        snprintf(dead_attempts, sizeof dead_attempts, "%u", t->cfg.delivery_limit + 1);
        snprintf(dead_error, sizeof dead_error, "rabbitmq dead-lettered it: %.*s (the "
                 "consumer's reasons are in its log)", (int)reason.len, (const char *)reason.bytes);
      }
    } else if (e->key.len > 2 && memcmp(e->key.bytes, "x-", 2) == 0) {
      /* RabbitMQ's own (x-first-death-*, ...): not the event's. */
    } else if (nh < BUS_HEADERS_MAX - 4 && value_text(&e->value, &v)) {
      h[nh++] = (bus_header_t){.name = e->key.bytes, .name_len = (uint32_t)e->key.len,
                               .value = v.bytes, .value_len = (uint32_t)v.len};
    }
  }
  if (dead_topic[0] != '\0') {
    const char *names[] = {"x-dead-topic", "x-dead-group", "x-dead-attempts", "x-dead-error"};
    const char *vals[] = {dead_topic, dead_group, dead_attempts, dead_error};
    for (int i = 0; i < 4; i++)
      h[nh++] = (bus_header_t){.name = names[i], .name_len = (uint32_t)strlen(names[i]),
                               .value = vals[i], .value_len = (uint32_t)strlen(vals[i])};
  }
  bus_buf_t hb;
  bus_buf_init(&hb, HEADER_BYTES_MAX);
  int rc = nh > 0 ? bus_headers_pack(&hb, h, nh) : 0;
  size_t klen = key.len > BUS_KEY_BYTES_MAX ? BUS_KEY_BYTES_MAX : key.len;
  rt_msg_t *msg = rc == 0 ? msg_alloc(AM_DELIVER, sizeof(dlv_t) + klen + hb.len + m.body.len) : NULL;
  if (msg == NULL) {
    /* Not taken now: RabbitMQ delivers it again (no attempt counted). */
    amqp_basic_nack(t->conn, CH_SUB, d->delivery_tag, 0, 1);
    bus_buf_deinit(&hb);
    amqp_destroy_message(&m);
    return;
  }
  dlv_t *x = (dlv_t *)msg->data;
  x->msg = msg;
  x->sub = sub;
  x->conn = t->conn_no;
  x->tag = d->delivery_tag;
  memcpy(x->id, id, BUS_ID_BYTES);
  x->attempt = attempt;
  x->stored_ms = stored_ms;
  x->key_len = (uint32_t)klen;
  x->hdr_len = (uint32_t)hb.len;
  x->payload_len = (uint32_t)m.body.len;
  if (klen) memcpy(x->data, key.bytes, klen);
  if (hb.len) memcpy(x->data + klen, hb.data, hb.len);
  if (m.body.len) memcpy(x->data + klen + hb.len, m.body.bytes, m.body.len);
  bus_buf_deinit(&hb);
  amqp_destroy_message(&m);
  to_loop(t, msg);
}

/* ------------------------------------------------------------------------ */
/* Bridge: commands and the thread                                          */
/* ------------------------------------------------------------------------ */

static void late_nack_add(amqp_bus_t *t, const answer_t *a) {
  uint64_t ms = NACK_DELAY_MS;
  if (t->late_count == LATE_NACKS_MAX) {
    amqp_basic_nack(t->conn, CH_SUB, a->tag, 0, 1); /* no room to wait: now */
    return;
  }
  t->late[t->late_count++] = (late_nack_t){mono_ns() + ms * 1000000u, a->conn, a->tag};
}

static void late_nacks_due(amqp_bus_t *t, uint64_t now) {
  uint32_t k = 0;
  for (uint32_t i = 0; i < t->late_count; i++) {
    late_nack_t *l = &t->late[i];
    if (l->due_ns <= now && t->up && l->conn == t->conn_no) {
      if (amqp_basic_nack(t->conn, CH_SUB, l->tag, 0, 1) != AMQP_STATUS_OK) {
        conn_drop(t, "sending a nack");
        return;
      }
    } else if (l->due_ns > now) {
      t->late[k++] = *l;
    }
  }
  t->late_count = k;
}

static void on_command(amqp_bus_t *t, rt_msg_t *m) {
  switch (m->type) {
  case CMD_PUBLISH: {
    pub_t *p = (pub_t *)m->data;
    p->seq = 0;
    pending_append(t, p);
    if (t->up && mono_ns() >= t->resend_after_ns) publish_one(t, p);
    return; /* kept until its confirm */
  }
  case CMD_ANSWER: {
    answer_t *a = (answer_t *)m->data;
    if (t->up && a->conn == t->conn_no) {
      if (a->ack) {
        if (amqp_basic_ack(t->conn, CH_SUB, a->tag, 0) != AMQP_STATUS_OK) conn_drop(t, "sending an ack");
      } else {
        late_nack_add(t, a);
      }
    }
    break;
  }
  case CMD_STOP: t->stopping = true; break;
  default: break;
  }
  free(m);
}

static void drain_commands(amqp_bus_t *t) {
  for (;;) {
    rt_msg_t *m = rt_mailbox_pop(&t->inbox);
    if (m == NULL) return;
    on_command(t, m);
  }
}

/* Reads every frame that is there without waiting. */
static void read_frames(amqp_bus_t *t) {
  for (int n = 0; n < 4096 && t->up; n++) {
    amqp_frame_t f;
    struct timeval zero = {0, 0};
    int rc = amqp_simple_wait_frame_noblock(t->conn, &f, &zero);
    if (rc == AMQP_STATUS_TIMEOUT) {
      /* What is left in the buffer, if anything, is the start of a frame:
       * wait for the socket rather than try again at once. */
      t->partial = amqp_data_in_buffer(t->conn);
      break;
    }
    if (rc != AMQP_STATUS_OK) {
      conn_drop(t, amqp_error_string2(rc));
      return;
    }
    if (f.frame_type != AMQP_FRAME_METHOD) continue;
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
      const amqp_basic_ack_t *a = f.payload.method.decoded;
      on_publish_answer(t, a->delivery_tag, a->multiple, true);
      break;
    }
    case AMQP_BASIC_NACK_METHOD: {
      const amqp_basic_nack_t *a = f.payload.method.decoded;
      on_publish_answer(t, a->delivery_tag, a->multiple, false);
      break;
    }
    case AMQP_BASIC_RETURN_METHOD: on_return(t); break;
    case AMQP_BASIC_DELIVER_METHOD: on_deliver(t, f.payload.method.decoded); break;
    case AMQP_BASIC_CANCEL_METHOD: conn_drop(t, "consumer cancelled by the broker"); break;
    case AMQP_CHANNEL_CLOSE_METHOD: {
      const amqp_channel_close_t *c = f.payload.method.decoded;
      char why[160];
      snprintf(why, sizeof why, "channel closed: %u %.*s", c->reply_code, (int)c->reply_text.len,
               (const char *)c->reply_text.bytes);
      conn_drop(t, why);
      break;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: conn_drop(t, "connection closed by the broker"); break;
    default: break;
    }
  }
  if (t->conn != NULL) amqp_maybe_release_buffers(t->conn);
}

static int poll_timeout_ms(amqp_bus_t *t, uint64_t now) {
  uint64_t ms = t->cfg.heartbeat_s ? t->cfg.heartbeat_s * 250u : 1000u;
  for (uint32_t i = 0; i < t->late_count; i++) {
    uint64_t d = t->late[i].due_ns > now ? (t->late[i].due_ns - now) / 1000000u + 1 : 0;
    if (d < ms) ms = d;
  }
  if (t->resend_after_ns > now) {
    uint64_t d = (t->resend_after_ns - now) / 1000000u + 1;
    if (d < ms) ms = d;
  }
  return (int)ms;
}

static void *bridge_main(void *arg) {
  amqp_bus_t *t = arg;
  while (!t->stopping) {
    if (t->conn == NULL) {
      if (!conn_open(t)) {
        /* Every host tried once: back off before the next round. */
        if (t->host_next % t->cfg.url.hosts_count == 0) {
          t->backoff_ms = t->backoff_ms ? t->backoff_ms * 2 : RECONNECT_MIN_MS;
          if (t->backoff_ms > RECONNECT_MAX_MS) t->backoff_ms = RECONNECT_MAX_MS;
          struct pollfd pf = {t->efd, POLLIN, 0};
          poll(&pf, 1, (int)t->backoff_ms);
          uint64_t v;
          if (read(t->efd, &v, sizeof v) < 0) { /* nothing waiting */
          }
        }
        drain_commands(t);
        continue;
      }
    }
    uint64_t now = mono_ns();
    late_nacks_due(t, now);
    publish_unsent(t);
    if (t->up && (amqp_frames_enqueued(t->conn) || (amqp_data_in_buffer(t->conn) && !t->partial))) {
      read_frames(t);
      drain_commands(t);
      continue;
    }
    atomic_store(&t->asleep, true);
    drain_commands(t); /* what came before the flag was set */
    if (t->stopping || t->conn == NULL) {
      atomic_store(&t->asleep, false);
      continue;
    }
    struct pollfd pf[2] = {{t->efd, POLLIN, 0}, {amqp_get_sockfd(t->conn), POLLIN, 0}};
    int rc = poll(pf, 2, poll_timeout_ms(t, mono_ns()));
    atomic_store(&t->asleep, false);
    if (rc > 0 && (pf[0].revents & POLLIN)) {
      uint64_t v;
      if (read(t->efd, &v, sizeof v) < 0) { /* raced with another read */
      }
    }
    drain_commands(t);
    if (t->up) read_frames(t); /* also services heartbeats */
  }
  if (t->conn != NULL) {
    if (t->up) {
      amqp_channel_close(t->conn, CH_SUB, AMQP_REPLY_SUCCESS);
      amqp_connection_close(t->conn, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(t->conn);
    t->conn = NULL;
    t->up = false;
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Loop side                                                                */
/* ------------------------------------------------------------------------ */

static void to_bridge(amqp_bus_t *t, rt_msg_t *m) {
  rt_mailbox_push(&t->inbox, m);
  if (atomic_exchange(&t->asleep, false)) {
    uint64_t one = 1;
    if (write(t->efd, &one, sizeof one) < 0) { /* counter full: it is awake anyway */
    }
  }
}

static void sub_deliver(amqp_bus_t *t, dlv_t *x) {
  sub_t *s = &t->subs[x->sub];
  bus_delivery_t d = {
      .sub = x->sub,
      .topic = {(const uint8_t *)s->topic, (uint32_t)strlen(s->topic)},
      .group = {(const uint8_t *)s->group, (uint32_t)strlen(s->group)},
      .partition = x->conn,
      .offset = x->tag,
      .attempt = x->attempt,
      .stored_ms = x->stored_ms,
      .key = {x->data, x->key_len},
      .headers = {x->data + x->key_len, x->hdr_len},
      .payload = {x->data + x->key_len + x->hdr_len, x->payload_len},
  };
  memcpy(d.id, x->id, BUS_ID_BYTES);
  s->outstanding++;
  t->stats.delivered++;
  s->fn(s->arg, &d);
}

/* Frees the message handled before (its handler has returned by now). */
static void spend(amqp_bus_t *t, rt_msg_t *m) {
  free(t->spent);
  t->spent = m;
}

static void sub_release_held(amqp_bus_t *t, uint32_t sub);

static int actor_fn(rt_actor_t *self, rt_msg_t *m) {
  amqp_bus_t *t = self->state;
  if (m->type == AM_RELEASE) {
    t->subs[m->u64].release_queued = false;
    if (!t->closed) sub_release_held(t, (uint32_t)m->u64);
    spend(t, m);
    return 0;
  }
  if (t->closed) {
    spend(t, m);
    return 0;
  }
  switch (m->type) {
  case AM_CONFIRM: {
    pub_t *p = (pub_t *)m->data;
    if (p->lprev) p->lprev->lnext = p->lnext;
    else t->lhead = p->lnext;
    if (p->lnext) p->lnext->lprev = p->lprev;
    else t->ltail = p->lprev;
    t->unconfirmed--;
    t->stats.confirmed++;
    if (t->cfg.on_confirm) t->cfg.on_confirm(t->cfg.confirm_arg, p->id, (int)(int64_t)m->u64, p->ctx);
    spend(t, m);
    break;
  }
  case AM_DELIVER: {
    dlv_t *x = (dlv_t *)m->data;
    sub_t *s = &t->subs[x->sub];
    if (s->outstanding >= s->max_in_flight) {
      /* Held back until an answer frees room; kept past the handler. */
      rt_msg_keep(m);
      x->next = NULL;
      if (s->held_tail) s->held_tail->next = x;
      else s->held_head = x;
      s->held_tail = x;
      break;
    }
    sub_deliver(t, x);
    spend(t, m);
    break;
  }
  case AM_STATE: {
    bool up = m->ptr != NULL;
    t->connected = up;
    t->conn_seen = (uint32_t)m->u64;
    if (up) t->stats.connects++;
    else t->stats.disconnects++;
    spend(t, m);
    break;
  }
  default: spend(t, m); break;
  }
  return 0;
}

/* An answer frees room. What was held back is delivered on the actor's
 * next turn, not from inside the answer: the consumer answering still
 * holds the delivery's context until it returns. */
static void sub_release(amqp_bus_t *t, uint32_t sub) {
  sub_t *s = &t->subs[sub];
  if (s->outstanding > 0) s->outstanding--;
  if (s->held_head == NULL || s->release_queued || t->closed) return;
  /* Not from the loop's pool: whatever is left in the mailbox when the
   * loop is gone is freed by am_free(), which can free only our own. */
  rt_msg_t *m = msg_alloc(AM_RELEASE, 0);
  if (m == NULL) {
    sub_release_held(t, sub); /* no message to spare: now, as the fallback */
    return;
  }
  m->u64 = sub;
  s->release_queued = true;
  if (rt_actor_send(&t->actor, m) < 0) {
    s->release_queued = false;
    free(m);
  }
}

static void sub_release_held(amqp_bus_t *t, uint32_t sub) {
  sub_t *s = &t->subs[sub];
  while (s->held_head != NULL && s->outstanding < s->max_in_flight && !t->closed) {
    dlv_t *x = s->held_head;
    s->held_head = x->next;
    if (s->held_head == NULL) s->held_tail = NULL;
    sub_deliver(t, x);
    free(x->msg);
  }
}

static int am_start(svc_bus_t *b) {
  amqp_bus_t *t = (amqp_bus_t *)b;
  if (t->closed) return BUS_E_CLOSED;
  if (t->started) return 0;
  int rc = pthread_create(&t->thread, NULL, bridge_main, t);
  if (rc != 0) return -rc;
  t->thread_started = true;
  t->started = true;
  return 0;
}

static int am_publish(svc_bus_t *b, const bus_pub_t *pub, void *ctx) {
  amqp_bus_t *t = (amqp_bus_t *)b;
  if (t->closed) return BUS_E_CLOSED;
  if (pub->topic == NULL || !bus_name_valid((const uint8_t *)pub->topic, strlen(pub->topic)))
    return BUS_E_NAME;
  if (pub->key_len > BUS_KEY_BYTES_MAX) return BUS_E_LIMIT;
  if (t->unconfirmed >= PENDING_MAX) return BUS_E_FULL;
  bus_buf_t hb;
  bus_buf_init(&hb, HEADER_BYTES_MAX);
  int rc = pub->headers_count ? bus_headers_pack(&hb, pub->headers, pub->headers_count) : 0;
  if (rc < 0) {
    bus_buf_deinit(&hb);
    return rc;
  }
  if (pub->payload_len > FRAME_MAX * 8u) {
    bus_buf_deinit(&hb);
    return BUS_E_FRAME_TOO_LARGE;
  }
  size_t tl = strlen(pub->topic);
  size_t bytes = sizeof(pub_t) + tl + 1 + pub->key_len + hb.len + pub->payload_len;
  rt_msg_t *m = msg_alloc(CMD_PUBLISH, bytes);
  if (m == NULL) {
    bus_buf_deinit(&hb);
    return -ENOMEM;
  }
  pub_t *p = (pub_t *)m->data;
  p->msg = m;
  p->ctx = ctx;
  memcpy(p->id, pub->id, BUS_ID_BYTES);
  p->topic_len = (uint32_t)tl;
  p->key_len = pub->key_len;
  p->hdr_len = (uint32_t)hb.len;
  p->payload_len = pub->payload_len;
  char *w = p->data;
  memcpy(w, pub->topic, tl + 1);
  w += tl + 1;
  if (pub->key_len) memcpy(w, pub->key, pub->key_len);
  w += pub->key_len;
  if (hb.len) memcpy(w, hb.data, hb.len);
  w += hb.len;
  if (pub->payload_len) memcpy(w, pub->payload, pub->payload_len);
  bus_buf_deinit(&hb);
  p->lnext = NULL;
  p->lprev = t->ltail;
  if (t->ltail) t->ltail->lnext = p;
  else t->lhead = p;
  t->ltail = p;
  t->unconfirmed++;
  t->stats.published++;
  to_bridge(t, m);
  return 0;
}

static int am_subscribe(svc_bus_t *b, const char *topic, const char *group, uint32_t max_in_flight,
                        svc_bus_deliver_fn fn, void *arg) {
  amqp_bus_t *t = (amqp_bus_t *)b;
  if (t->closed) return BUS_E_CLOSED;
  if (t->started) return BUS_E_STATE; /* the bridge reads the table */
  size_t tl = topic ? strlen(topic) : 0, gl = group ? strlen(group) : 0;
  if (!bus_name_valid((const uint8_t *)topic, tl) || !bus_name_valid((const uint8_t *)group, gl))
    return BUS_E_NAME;
  if (t->subs_count == SUBS_MAX || fn == NULL || max_in_flight == 0) return BUS_E_LIMIT;
  if (!topology_has(group, topic)) {
    RT_ERROR("amqp: this group's queue for the topic is not in the topology (svc_bus_amqp.c)",
             RT_LF_STR("group", group), RT_LF_STR("topic", topic));
    return RT_E_CONFIG;
  }
  sub_t *s = &t->subs[t->subs_count];
  memset(s, 0, sizeof *s);
  memcpy(s->topic, topic, tl + 1);
  memcpy(s->group, group, gl + 1);
  queue_name(s->queue, sizeof s->queue, group, topic);
  s->max_in_flight = max_in_flight;
  s->fn = fn;
  s->arg = arg;
  return (int)t->subs_count++;
}

static int am_answer(svc_bus_t *b, bool ack, uint32_t sub, uint32_t partition, uint64_t offset,
                     const char *why) {
  amqp_bus_t *t = (amqp_bus_t *)b;
  (void)why; /* RabbitMQ keeps no reason: the consumer logged it */
  if (sub >= t->subs_count) return -EINVAL;
  sub_release(t, sub);
  if (t->closed || !t->connected || partition != t->conn_seen) return BUS_E_CLOSED;
  rt_msg_t *m = msg_alloc(CMD_ANSWER, sizeof(answer_t));
  if (m == NULL) return -ENOMEM;
  answer_t *a = (answer_t *)m->data;
  *a = (answer_t){.ack = ack, .sub = sub, .conn = partition, .tag = offset};
  to_bridge(t, m);
  return 0;
}

static bool am_connected(const svc_bus_t *b) {
  const amqp_bus_t *t = (const amqp_bus_t *)b;
  return !t->closed && t->connected;
}

static void am_stats(const svc_bus_t *b, bus_client_stats_t *out) {
  const amqp_bus_t *t = (const amqp_bus_t *)b;
  *out = t->stats;
  out->unconfirmed = t->unconfirmed;
}

static void am_quiesce(svc_bus_t *b) {
  amqp_bus_t *t = (amqp_bus_t *)b;
  pthread_mutex_lock(&t->send_lock);
  t->loop_gone = true;
  pthread_mutex_unlock(&t->send_lock);
}

static void am_close(svc_bus_t *b) {
  amqp_bus_t *t = (amqp_bus_t *)b;
  if (t->closed) return;
  pthread_mutex_lock(&t->send_lock);
  t->loop_gone = true;
  pthread_mutex_unlock(&t->send_lock);
  t->closed = true;
  t->connected = false;
  /* Unconfirmed publishes: failed now (the bridge still holds their
   * memory and frees it when it stops). */
  for (pub_t *p = t->lhead, *nx; p != NULL; p = nx) {
    nx = p->lnext;
    if (t->cfg.on_confirm) t->cfg.on_confirm(t->cfg.confirm_arg, p->id, BUS_E_CLOSED, p->ctx);
  }
  t->lhead = t->ltail = NULL;
  t->unconfirmed = 0;
  for (uint32_t i = 0; i < t->subs_count; i++) {
    sub_t *s = &t->subs[i];
    while (s->held_head != NULL) {
      dlv_t *x = s->held_head;
      s->held_head = x->next;
      free(x->msg);
    }
    s->held_tail = NULL;
  }
  if (t->thread_started) {
    rt_msg_t *m = msg_alloc(CMD_STOP, 0);
    if (m != NULL) {
      to_bridge(t, m);
    } else {
      t->stopping = true; /* read by the bridge at its next turn */
    }
    uint64_t one = 1;
    if (write(t->efd, &one, sizeof one) < 0) {
    }
  }
}

static void am_free(svc_bus_t *b) {
  amqp_bus_t *t = (amqp_bus_t *)b;
  am_close(b);
  if (t->thread_started) pthread_join(t->thread, NULL);
  /* The bridge is gone: its pending publishes and queued commands, and
   * whatever it sent that the loop never handled. */
  for (pub_t *p = t->phead, *nx; p != NULL; p = nx) {
    nx = p->next;
    free(p->msg);
  }
  for (rt_msg_t *m; (m = rt_mailbox_pop(&t->inbox)) != NULL;) free(m);
  for (rt_msg_t *m; (m = rt_mailbox_pop(&t->actor.mailbox)) != NULL;) free(m);
  free(t->spent);
  if (t->efd >= 0) close(t->efd);
  pthread_mutex_destroy(&t->send_lock);
  free(t);
}

static const svc_bus_ops_t amqp_ops = {
    .name = "amqp",
    .start = am_start,
    .publish = am_publish,
    .subscribe = am_subscribe,
    .answer = am_answer,
    .connected = am_connected,
    .stats = am_stats,
    .quiesce = am_quiesce,
    .close = am_close,
    .free = am_free,
};

int svc_bus_amqp_create(svc_bus_t **out, rt_loop_t *loop, const svc_bus_config_t *config) {
  if (config->url.kind != SVC_BUS_AMQP || config->url.hosts_count == 0) return -EINVAL;
  amqp_bus_t *t = calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  t->base.ops = &amqp_ops;
  t->loop = loop;
  t->cfg = *config;
  snprintf(t->name, sizeof t->name, "%s", config->name ? config->name : "svc");
  t->cfg.name = t->name;
  if (t->cfg.delivery_limit == 0) t->cfg.delivery_limit = 4;
  t->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (t->efd < 0) {
    free(t);
    return -errno;
  }
  pthread_mutex_init(&t->send_lock, NULL);
  rt_mailbox_init(&t->inbox);
  rt_actor_init(&t->actor, loop, "svc_bus_amqp", actor_fn, t);
  *out = &t->base;
  return 0;
}
