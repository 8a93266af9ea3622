/*
 * svc_bus.h - the event transport the outbox relay and the inbox speak to.
 *
 * One interface, two transports behind it, chosen by BUS_URL at start-up
 * (svc_bus_url_parse()); the services' code is the same for both:
 *
 *   busd://host:port   our broker (wire/bus.h's client, on the loop
 *                      thread). The default; BUS_ADDR=host:port still
 *                      means this.
 *   amqp://user:pass@host:port[,host:port...]/vhost
 *                      a RabbitMQ cluster: quorum queues, publisher
 *                      confirms, manual acks, a delivery limit and a
 *                      dead-letter exchange (svc_bus_amqp.c). rabbitmq-c
 *                      is blocking, so it runs on a bridge thread of its
 *                      own that talks to the loop through actor mailboxes.
 *
 * What both promise, as wire/BUS_PROTOCOL.md describes for busd:
 *   publish    copied at once; on_confirm runs exactly once per accepted
 *              publish, on the loop thread: err 0 once the broker made the
 *              event durable (PUB_ACK, or the confirm), BUS_E_CLOSED when
 *              the transport was closed first. Unconfirmed publishes are
 *              sent again after a reconnect (at-least-once).
 *   deliver    every delivery of a subscription, on the loop thread, with
 *              the event's id, key, attempt and headers (a msgpack map read
 *              with bus_header_iter_init(), whatever the transport) valid
 *              during the call; answered later with svc_bus_ack() or
 *              svc_bus_nack() naming d->sub, d->partition, d->offset.
 *   failure    a delivery neither acked nor nacked (crash, lost
 *              connection) comes again; after the transport's attempt
 *              limit it goes to "<topic>.dead" with x-dead-* headers.
 *
 * Every call is made on the loop thread that created the transport.
 */
#ifndef SVC_BUS_H
#define SVC_BUS_H

#include <stdbool.h>
#include <stdint.h>

#include "bus.h"
#include "rt.h"

typedef struct svc_bus svc_bus_t;

typedef enum svc_bus_kind {
  SVC_BUS_OFF = 0,
  SVC_BUS_BUSD,
  SVC_BUS_AMQP,
} svc_bus_kind_t;

#define SVC_BUS_HOSTS_MAX 8
#define SVC_BUS_HOST_BYTES 64
#define SVC_BUS_CRED_BYTES 128

/* A parsed BUS_URL. */
typedef struct svc_bus_url {
  svc_bus_kind_t kind;
  uint32_t hosts_count;
  struct {
    char host[SVC_BUS_HOST_BYTES]; /* numeric address or localhost */
    uint16_t port;
  } hosts[SVC_BUS_HOSTS_MAX];
  char user[SVC_BUS_CRED_BYTES];   /* amqp only, percent-decoded */
  char pass[SVC_BUS_CRED_BYTES];
  char vhost[SVC_BUS_CRED_BYTES];
} svc_bus_url_t;

/* Parses "off", "busd://host:port", a bare "host:port" (as BUS_ADDR),
 * or "amqp://user:pass@host:port[,host:port...]/vhost" (port default
 * 5672, vhost default "/", user and pass default guest). Hosts must be
 * numeric or localhost: no name look-up. Returns 0 or -EINVAL. */
int svc_bus_url_parse(const char *text, svc_bus_url_t *out);

/* The URL for logs: the password replaced by ***. */
void svc_bus_url_format(const svc_bus_url_t *url, char *out, size_t out_bytes);

typedef void (*svc_bus_deliver_fn)(void *arg, const bus_delivery_t *d);

typedef struct svc_bus_config {
  svc_bus_url_t url;
  const char *name;            /* the client's name (the service) */
  uint32_t delivery_limit;     /* amqp: x-delivery-limit, failed
                                * deliveries before the dead letter */
  uint32_t heartbeat_s;        /* amqp: heartbeat asked for; 0 none */
  bus_confirm_fn on_confirm;   /* may be NULL */
  void *confirm_arg;
  /* busd: NULL for plain TCP, else the client side of TLS (wire/tls.h),
   * outliving the transport. amqp: must be NULL (not supported). */
  const struct http_filter *filter;
} svc_bus_config_t;

/* Creates a transport on `loop`; nothing connects before svc_bus_start().
 * Returns 0, -EINVAL, -ENOMEM or a transport's error. */
int svc_bus_create(svc_bus_t **out, rt_loop_t *loop, const svc_bus_config_t *config);

/* Starts connecting (and, for amqp, the bridge thread). */
int svc_bus_start(svc_bus_t *bus);

/* As bus_publish(): 0, BUS_E_FULL (try again after a confirm), or an
 * error for a publish that can never be sent. */
int svc_bus_publish(svc_bus_t *bus, const bus_pub_t *pub, void *ctx);

/* Subscribes consumer group `group` to `topic`, at most max_in_flight
 * unanswered deliveries at once. Returns the subscription (>= 0) or an
 * error. Call before svc_bus_start(). */
int svc_bus_subscribe(svc_bus_t *bus, const char *topic, const char *group,
                      uint32_t max_in_flight, svc_bus_deliver_fn fn, void *arg);

/* Answers a delivery: done with it (ack), or failed (nack, `why` may be
 * NULL): delivered again later, dead-lettered after the limit. Returns 0
 * or BUS_E_CLOSED (not connected: it comes again anyway). */
int svc_bus_ack(svc_bus_t *bus, uint32_t sub, uint32_t partition, uint64_t offset);
int svc_bus_nack(svc_bus_t *bus, uint32_t sub, uint32_t partition, uint64_t offset,
                 const char *why);

bool svc_bus_connected(const svc_bus_t *bus);

/* "busd" or "amqp". */
const char *svc_bus_kind_name(const svc_bus_t *bus);

/* Counters, as bus_client_stats(). */
void svc_bus_counters(const svc_bus_t *bus, bus_client_stats_t *out);

/* Drain begins: no new deliveries or confirms reach the loop from now on
 * (they come again, or the rows are sent again, after a restart); answers
 * to deliveries in flight still go out. After it, the loop may stop at
 * any time without a bridge thread touching it. */
void svc_bus_quiesce(svc_bus_t *bus);

/* Fails unconfirmed publishes with BUS_E_CLOSED, stops delivering and
 * starts closing (the loop must keep running a little). */
void svc_bus_close(svc_bus_t *bus);

/* Frees what is left once the loop has stopped (joins the bridge
 * thread). NULL is fine. */
void svc_bus_free(svc_bus_t *bus);

/* ------------------------------------------------------------------------ */
/* The transports (svc_bus.c dispatches to them)                            */
/* ------------------------------------------------------------------------ */

typedef struct svc_bus_ops {
  const char *name;
  int (*start)(svc_bus_t *bus);
  int (*publish)(svc_bus_t *bus, const bus_pub_t *pub, void *ctx);
  int (*subscribe)(svc_bus_t *bus, const char *topic, const char *group,
                   uint32_t max_in_flight, svc_bus_deliver_fn fn, void *arg);
  int (*answer)(svc_bus_t *bus, bool ack, uint32_t sub, uint32_t partition,
                uint64_t offset, const char *why);
  bool (*connected)(const svc_bus_t *bus);
  void (*stats)(const svc_bus_t *bus, bus_client_stats_t *out);
  void (*quiesce)(svc_bus_t *bus); /* may be NULL */
  void (*close)(svc_bus_t *bus);
  void (*free)(svc_bus_t *bus);
} svc_bus_ops_t;

/* Every transport's struct starts with this. */
struct svc_bus {
  const svc_bus_ops_t *ops;
};

int svc_bus_amqp_create(svc_bus_t **out, rt_loop_t *loop, const svc_bus_config_t *config);

#endif /* SVC_BUS_H */
