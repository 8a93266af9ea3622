/*
 * svc_bus.c - the transport interface (svc_bus.h): BUS_URL, dispatch, and
 * the busd transport, a thin layer over wire/bus.h's client.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc_bus.h"

/* ------------------------------------------------------------------------ */
/* BUS_URL                                                                  */
/* ------------------------------------------------------------------------ */

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Percent-decodes [s, s + n) into out (NUL-terminated). */
static int pct_decode(const char *s, size_t n, char *out, size_t out_bytes) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= n) return -EINVAL;
      int hi = hexval(s[i + 1]), lo = hexval(s[i + 2]);
      if (hi < 0 || lo < 0) return -EINVAL;
      c = (char)(hi << 4 | lo);
      i += 2;
    }
    if (c == '\0' || o + 1 >= out_bytes) return -EINVAL;
    out[o++] = c;
  }
  out[o] = '\0';
  return 0;
}

/* "host:port" in [s, s + n); port_default when ":port" is absent. */
static int parse_hostport(const char *s, size_t n, uint16_t port_default, char *host,
                          uint16_t *port) {
  const char *colon = memrchr(s, ':', n);
  size_t hl = colon ? (size_t)(colon - s) : n;
  if (hl == 0 || hl >= SVC_BUS_HOST_BYTES) return -EINVAL;
  memcpy(host, s, hl);
  host[hl] = '\0';
  for (size_t i = 0; i < hl; i++) {
    char c = host[i];
    bool ok = (c >= '0' && c <= '9') || c == '.' || c == ':' || (c >= 'a' && c <= 'f') ||
              (c >= 'A' && c <= 'F');
    if (!ok && strcmp(host, "localhost") != 0) return -EINVAL;
  }
  if (colon == NULL) {
    *port = port_default;
    return 0;
  }
  unsigned long p = 0;
  size_t pl = n - hl - 1;
  if (pl == 0 || pl > 5) return -EINVAL;
  for (size_t i = 0; i < pl; i++) {
    char c = colon[1 + i];
    if (c < '0' || c > '9') return -EINVAL;
    p = p * 10 + (unsigned long)(c - '0');
  }
  if (p == 0 || p > 65535) return -EINVAL;
  *port = (uint16_t)p;
  return 0;
}

static int parse_amqp(const char *s, svc_bus_url_t *u) {
  snprintf(u->user, sizeof u->user, "guest");
  snprintf(u->pass, sizeof u->pass, "guest");
  snprintf(u->vhost, sizeof u->vhost, "/");
  const char *slash = strchr(s, '/');
  const char *end = slash ? slash : s + strlen(s);
  const char *at = memrchr(s, '@', (size_t)(end - s));
  if (at != NULL) {
    const char *colon = memchr(s, ':', (size_t)(at - s));
    size_t ul = colon ? (size_t)(colon - s) : (size_t)(at - s);
    if (pct_decode(s, ul, u->user, sizeof u->user) < 0) return -EINVAL;
    if (colon && pct_decode(colon + 1, (size_t)(at - colon - 1), u->pass, sizeof u->pass) < 0)
      return -EINVAL;
    s = at + 1;
  }
  while (s < end) {
    const char *comma = memchr(s, ',', (size_t)(end - s));
    const char *he = comma ? comma : end;
    if (u->hosts_count == SVC_BUS_HOSTS_MAX) return -EINVAL;
    if (parse_hostport(s, (size_t)(he - s), 5672, u->hosts[u->hosts_count].host,
                       &u->hosts[u->hosts_count].port) < 0)
      return -EINVAL;
    u->hosts_count++;
    s = comma ? comma + 1 : end;
  }
  if (u->hosts_count == 0) return -EINVAL;
  if (slash != NULL && slash[1] != '\0' &&
      pct_decode(slash + 1, strlen(slash + 1), u->vhost, sizeof u->vhost) < 0)
    return -EINVAL;
  return 0;
}

int svc_bus_url_parse(const char *text, svc_bus_url_t *out) {
  memset(out, 0, sizeof *out);
  if (text == NULL) return -EINVAL;
  if (strcmp(text, "off") == 0) return 0;
  if (strncmp(text, "amqp://", 7) == 0) {
    out->kind = SVC_BUS_AMQP;
    return parse_amqp(text + 7, out);
  }
  const char *hp = strncmp(text, "busd://", 7) == 0 ? text + 7 : text;
  if (strstr(text, "://") != NULL && hp == text) return -EINVAL;
  size_t n = strlen(hp);
  if (n > 0 && hp[n - 1] == '/') n--;
  out->kind = SVC_BUS_BUSD;
  out->hosts_count = 1;
  const char *colon = memrchr(hp, ':', n);
  if (colon == NULL) return -EINVAL; /* busd has no well-known port */
  return parse_hostport(hp, n, 7400, out->hosts[0].host, &out->hosts[0].port);
}

void svc_bus_url_format(const svc_bus_url_t *u, char *out, size_t out_bytes) {
  size_t n = 0;
  if (out_bytes == 0) return;
  out[0] = '\0';
  if (u->kind == SVC_BUS_OFF) {
    snprintf(out, out_bytes, "off");
    return;
  }
  n += (size_t)snprintf(out, out_bytes, "%s://", u->kind == SVC_BUS_AMQP ? "amqp" : "busd");
  if (u->kind == SVC_BUS_AMQP && n < out_bytes)
    n += (size_t)snprintf(out + n, out_bytes - n, "%s:***@", u->user);
  for (uint32_t i = 0; i < u->hosts_count && n < out_bytes; i++)
    n += (size_t)snprintf(out + n, out_bytes - n, "%s%s:%u", i ? "," : "", u->hosts[i].host,
                          u->hosts[i].port);
  if (u->kind == SVC_BUS_AMQP && n < out_bytes) snprintf(out + n, out_bytes - n, "/%s", u->vhost);
}

/* ------------------------------------------------------------------------ */
/* Dispatch                                                                 */
/* ------------------------------------------------------------------------ */

static int busd_create(svc_bus_t **out, rt_loop_t *loop, const svc_bus_config_t *config);

int svc_bus_create(svc_bus_t **out, rt_loop_t *loop, const svc_bus_config_t *config) {
  switch (config->url.kind) {
  case SVC_BUS_BUSD: return busd_create(out, loop, config);
  case SVC_BUS_AMQP: return svc_bus_amqp_create(out, loop, config);
  default: return -EINVAL;
  }
}

int svc_bus_start(svc_bus_t *b) { return b->ops->start(b); }

int svc_bus_publish(svc_bus_t *b, const bus_pub_t *pub, void *ctx) {
  return b->ops->publish(b, pub, ctx);
}

int svc_bus_subscribe(svc_bus_t *b, const char *topic, const char *group, uint32_t max_in_flight,
                      svc_bus_deliver_fn fn, void *arg) {
  return b->ops->subscribe(b, topic, group, max_in_flight, fn, arg);
}

int svc_bus_ack(svc_bus_t *b, uint32_t sub, uint32_t partition, uint64_t offset) {
  return b->ops->answer(b, true, sub, partition, offset, NULL);
}

int svc_bus_nack(svc_bus_t *b, uint32_t sub, uint32_t partition, uint64_t offset,
                 const char *why) {
  return b->ops->answer(b, false, sub, partition, offset, why);
}

bool svc_bus_connected(const svc_bus_t *b) { return b->ops->connected(b); }

const char *svc_bus_kind_name(const svc_bus_t *b) { return b->ops->name; }

void svc_bus_counters(const svc_bus_t *b, bus_client_stats_t *out) { b->ops->stats(b, out); }

void svc_bus_quiesce(svc_bus_t *b) {
  if (b != NULL && b->ops->quiesce != NULL) b->ops->quiesce(b);
}

void svc_bus_close(svc_bus_t *b) {
  if (b != NULL) b->ops->close(b);
}

void svc_bus_free(svc_bus_t *b) {
  if (b != NULL) b->ops->free(b);
}

/* ------------------------------------------------------------------------ */
/* busd                                                                     */
/* ------------------------------------------------------------------------ */

#define BUSD_SUBS_MAX 64 /* as the client's own table */

typedef struct busd_sub {
  svc_bus_deliver_fn fn;
  void *arg;
} busd_sub_t;

typedef struct busd_bus {
  svc_bus_t base;
  bus_client_t *client;   /* NULL once closed: it frees itself */
  busd_sub_t subs[BUSD_SUBS_MAX];
  uint32_t subs_count;
} busd_bus_t;

static void busd_deliver(void *arg, bus_client_t *client, const bus_delivery_t *d) {
  (void)client;
  busd_sub_t *s = arg;
  s->fn(s->arg, d);
}

static int busd_start(svc_bus_t *b) {
  busd_bus_t *t = (busd_bus_t *)b;
  return t->client ? bus_client_start(t->client) : BUS_E_CLOSED;
}

static int busd_publish(svc_bus_t *b, const bus_pub_t *pub, void *ctx) {
  busd_bus_t *t = (busd_bus_t *)b;
  return t->client ? bus_publish(t->client, pub, ctx) : BUS_E_CLOSED;
}

static int busd_subscribe(svc_bus_t *b, const char *topic, const char *group,
                          uint32_t max_in_flight, svc_bus_deliver_fn fn, void *arg) {
  busd_bus_t *t = (busd_bus_t *)b;
  if (t->client == NULL) return BUS_E_CLOSED;
  if (fn == NULL || t->subs_count == BUSD_SUBS_MAX) return BUS_E_LIMIT;
  /* The client numbers subscriptions 0, 1, ... in the order made. */
  busd_sub_t *s = &t->subs[t->subs_count];
  *s = (busd_sub_t){fn, arg};
  int rc = bus_subscribe(t->client, topic, group, max_in_flight, busd_deliver, s);
  if (rc < 0) return rc;
  if (NEVER((uint32_t)rc != t->subs_count)) return BUS_E_LIMIT;
  t->subs_count++;
  return rc;
}

static int busd_answer(svc_bus_t *b, bool ack, uint32_t sub, uint32_t partition, uint64_t offset,
                       const char *why) {
  busd_bus_t *t = (busd_bus_t *)b;
  if (t->client == NULL) return BUS_E_CLOSED;
  return ack ? bus_ack(t->client, sub, partition, offset)
             : bus_nack_why(t->client, sub, partition, offset, why);
}

static bool busd_connected(const svc_bus_t *b) {
  const busd_bus_t *t = (const busd_bus_t *)b;
  return t->client != NULL && bus_client_connected(t->client);
}

static void busd_stats(const svc_bus_t *b, bus_client_stats_t *out) {
  const busd_bus_t *t = (const busd_bus_t *)b;
  if (t->client == NULL) {
    memset(out, 0, sizeof *out);
    return;
  }
  bus_client_stats(t->client, out);
}

static void busd_close(svc_bus_t *b) {
  busd_bus_t *t = (busd_bus_t *)b;
  bus_client_destroy(t->client);
  t->client = NULL;
}

static void busd_free(svc_bus_t *b) {
  busd_close(b);
  free(b);
}

static const svc_bus_ops_t busd_ops = {
    .name = "busd",
    .start = busd_start,
    .publish = busd_publish,
    .subscribe = busd_subscribe,
    .answer = busd_answer,
    .connected = busd_connected,
    .stats = busd_stats,
    .close = busd_close,
    .free = busd_free,
};

static int busd_create(svc_bus_t **out, rt_loop_t *loop, const svc_bus_config_t *config) {
  busd_bus_t *t = calloc(1, sizeof *t);
  if (t == NULL) return -ENOMEM;
  t->base.ops = &busd_ops;
  bus_client_config_t bc = {
      .host = config->url.hosts[0].host,
      .port = config->url.hosts[0].port,
      .name = config->name,
      .on_confirm = config->on_confirm,
      .confirm_arg = config->confirm_arg,
      .filter = config->filter,
  };
  int rc = bus_client_create(&t->client, loop, &bc);
  if (rc < 0) {
    free(t);
    return rc;
  }
  *out = &t->base;
  return 0;
}
