/*
 * busctl.c - publish to and consume from busd by hand.
 *
 *   busctl pub --topic T [--key K] [--data TEXT | --size N] [--count N]
 *              [--id UUID] [--header NAME=VALUE ...]
 *   busctl sub --topic T --group G [--count N] [--max N] [--nack] [--headers]
 *
 * Both run the bus client on a loop of their own on the main thread. pub
 * publishes with confirms (at most --window unconfirmed) and exits when
 * every event is confirmed; sub prints one line per delivery, acks it (or
 * nacks it with --nack), and exits after --count deliveries (0: never).
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bus.h"
#include "tls.h"

typedef struct opts {
  const char *cmd;
  const char *host;
  uint32_t port;
  const char *topic;
  const char *group;
  const char *key;
  const char *data;
  uint32_t size;
  uint32_t count;
  bool count_set;
  uint32_t window;
  uint32_t max;
  bool nack;
  bool no_ack;
  bool quiet;
  bool show_headers;
  bool id_set;
  uint8_t id[BUS_ID_BYTES];       /* --id: the same id for every publish */
  bus_header_t headers[BUS_HEADERS_MAX];
  uint32_t headers_count;
} opts_t;

typedef struct state {
  opts_t o;
  rt_loop_t *loop;
  bus_client_t *client;
  uint8_t *payload;
  uint32_t payload_len;
  uint64_t sent;
  uint64_t confirmed;
  uint64_t failed;
  uint64_t received;
  uint64_t t0_ns;
  rt_timer_t stop_timer;
} state_t;

static void usage(FILE *f) {
  fprintf(f,
          "usage: busctl [--host ADDR] [--port N] pub --topic T [--key K]\n"
          "              [--data TEXT | --size BYTES] [--count N] [--window N]\n"
          "              [--id UUID] [--header NAME=VALUE]...\n"
          "       busctl [--host ADDR] [--port N] sub --topic T --group G\n"
          "              [--count N] [--max N] [--nack | --no-ack] [--quiet] [--headers]\n"
          "\n"
          "pub publishes --count events (default 1) with fresh UUID v7 ids and waits\n"
          "until busd has confirmed each one (PUB_ACK: fsynced). sub joins the group,\n"
          "prints one line per delivery (topic partition offset attempt id payload)\n"
          "and acks it (--nack: nacks it; --no-ack: neither, as a consumer that\n"
          "crashes would); it stops after --count deliveries\n"
          "(default 0: never); --headers prints each delivery's headers after it, one\n"
          "tab-indented NAME=VALUE line each. --id publishes with that event id (every\n"
          "publish: duplicates on purpose), --header adds a header. Host and port\n"
          "default to $BUSD_HOST and $BUSD_PORT, else 127.0.0.1:7400. With $TLS_CA\n"
          "(the platform CA), $TLS_CERT and $TLS_KEY it speaks mutual TLS to busd,\n"
          "which must show a certificate for the name busd.\n");
}

/* With TLS_CA: the client side of mutual TLS to busd. */
static int tls_client(wire_tls_creds_t **creds, wire_tls_filter_t **out) {
  const char *ca = getenv("TLS_CA");
  if (ca == NULL || ca[0] == '\0') return 0;
  int rc = wire_tls_creds_load(creds, ca, getenv("TLS_CERT"), getenv("TLS_KEY"));
  if (rc == 0) rc = wire_tls_client_create(out, *creds, "busd", 1);
  return rc;
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* Canonical UUID text to 16 bytes. */
static int parse_id(const char *s, uint8_t out[BUS_ID_BYTES]) {
  if (strlen(s) != 36) return -1;
  size_t n = 0;
  for (size_t i = 0; i < 36; i += 2) {
    if (s[i] == '-') i++;
    int hi = hexval(s[i]), lo = hexval(s[i + 1]);
    if (hi < 0 || lo < 0 || n == BUS_ID_BYTES) return -1;
    out[n++] = (uint8_t)(hi << 4 | lo);
  }
  return n == BUS_ID_BYTES ? 0 : -1;
}

static int parse(int argc, char **argv, opts_t *o) {
  static const struct option longs[] = {
      {"host", required_argument, NULL, 'H'},  {"port", required_argument, NULL, 'P'},
      {"topic", required_argument, NULL, 't'}, {"group", required_argument, NULL, 'g'},
      {"key", required_argument, NULL, 'k'},   {"data", required_argument, NULL, 'd'},
      {"size", required_argument, NULL, 's'},  {"count", required_argument, NULL, 'n'},
      {"window", required_argument, NULL, 'w'}, {"max", required_argument, NULL, 'm'},
      {"nack", no_argument, NULL, 'N'},        {"no-ack", no_argument, NULL, 'A'},
      {"quiet", no_argument, NULL, 'q'},      {"headers", no_argument, NULL, 'X'},
      {"id", required_argument, NULL, 'i'},    {"header", required_argument, NULL, 'e'},
      {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
  };
  int c;
  while ((c = getopt_long(argc, argv, "+", longs, NULL)) != -1 ||
         (optind < argc && o->cmd == NULL)) {
    if (c == -1) { /* the command word; options may follow it */
      o->cmd = argv[optind++];
      continue;
    }
    char *end = NULL;
    unsigned long v = optarg ? strtoul(optarg, &end, 10) : 0;
    bool num_ok = optarg != NULL && *end == '\0' && v <= UINT32_MAX;
    switch (c) {
    case 'H': o->host = optarg; break;
    case 'P': if (!num_ok || v > 65535) return -1; o->port = (uint32_t)v; break;
    case 't': o->topic = optarg; break;
    case 'g': o->group = optarg; break;
    case 'k': o->key = optarg; break;
    case 'd': o->data = optarg; break;
    case 's': if (!num_ok) return -1; o->size = (uint32_t)v; break;
    case 'n': if (!num_ok) return -1; o->count = (uint32_t)v; o->count_set = true; break;
    case 'w': if (!num_ok || v == 0) return -1; o->window = (uint32_t)v; break;
    case 'm': if (!num_ok || v == 0 || v > BUS_MAX_IN_FLIGHT_MAX) return -1; o->max = (uint32_t)v; break;
    case 'N': o->nack = true; break;
    case 'A': o->no_ack = true; break;
    case 'q': o->quiet = true; break;
    case 'X': o->show_headers = true; break;
    case 'i':
      if (parse_id(optarg, o->id) < 0) return -1;
      o->id_set = true;
      break;
    case 'e': {
      const char *eq = strchr(optarg, '=');
      if (eq == NULL || eq == optarg || o->headers_count == BUS_HEADERS_MAX) return -1;
      o->headers[o->headers_count++] = (bus_header_t){
          .name = optarg, .name_len = (uint32_t)(eq - optarg),
          .value = eq + 1, .value_len = (uint32_t)strlen(eq + 1)};
      break;
    }
    case 'h': return 1;
    default: return -1;
    }
  }
  if (optind != argc || o->cmd == NULL || o->topic == NULL) return -1;
  if (strcmp(o->cmd, "sub") == 0 && o->group == NULL) return -1;
  if (strcmp(o->cmd, "sub") != 0 && strcmp(o->cmd, "pub") != 0) return -1;
  return 0;
}

/* ------------------------------------------------------------------------ */
/* pub                                                                      */
/* ------------------------------------------------------------------------ */

static void pub_fill(state_t *s);

static void on_confirm(void *arg, const uint8_t id[BUS_ID_BYTES], int err, void *ctx) {
  state_t *s = arg;
  if (err == 0) {
    s->confirmed++;
  } else {
    s->failed++;
    fprintf(stderr, "busctl: publish failed: %s\n", bus_strerror(err));
  }
  if (s->confirmed + s->failed == s->o.count) {
    rt_loop_stop(s->loop);
    return;
  }
  pub_fill(s);
}

/* Publishes until the window is full or every event has gone out. */
static void pub_fill(state_t *s) {
  while (s->sent < s->o.count && s->sent - s->confirmed - s->failed < s->o.window) {
    bus_pub_t p;
    memset(&p, 0, sizeof p);
    p.topic = s->o.topic;
    p.key = s->o.key;
    p.key_len = s->o.key ? (uint32_t)strlen(s->o.key) : 0;
    if (s->o.id_set) {
      memcpy(p.id, s->o.id, BUS_ID_BYTES);
    } else {
      bus_uuid_v7(p.id);
    }
    p.headers = s->o.headers;
    p.headers_count = s->o.headers_count;
    p.payload = s->payload;
    p.payload_len = s->payload_len;
    int rc = bus_publish(s->client, &p, NULL);
    if (rc == BUS_E_FULL) return;
    if (rc < 0) {
      fprintf(stderr, "busctl: cannot publish: %s\n", bus_strerror(rc));
      s->failed += s->o.count - s->sent;
      s->sent = s->o.count;
      rt_loop_stop(s->loop);
      return;
    }
    s->sent++;
  }
}

/* ------------------------------------------------------------------------ */
/* sub                                                                      */
/* ------------------------------------------------------------------------ */

static void print_delivery(const bus_delivery_t *d) {
  char id[37];
  bus_uuid_format(d->id, id);
  printf("%.*s %u %llu %u %s ", (int)d->topic.len, (const char *)d->topic.ptr, d->partition,
         (unsigned long long)d->offset, d->attempt, id);
  for (uint32_t i = 0; i < d->payload.len && i < 200; i++) {
    uint8_t ch = d->payload.ptr[i];
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      putchar(ch);
    } else {
      printf("\\x%02x", ch);
    }
  }
  putchar('\n');
}

static void print_headers(const bus_delivery_t *d) {
  bus_header_iter_t it;
  bus_header_iter_init(&it, d->headers);
  bus_bytes_t name, value;
  for (uint32_t n = 0; n < BUS_HEADERS_MAX && bus_header_next(&it, &name, &value); n++) {
    printf("\t%.*s=", (int)name.len, (const char *)name.ptr);
    for (uint32_t i = 0; i < value.len && i < 300; i++) {
      uint8_t ch = value.ptr[i];
      if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
        putchar(ch);
      } else {
        printf("\\x%02x", ch);
      }
    }
    putchar('\n');
  }
}

static void stop_loop(rt_timer_t *t) { rt_loop_stop(t->ctx); }

static void on_deliver(void *arg, bus_client_t *client, const bus_delivery_t *d) {
  state_t *s = arg;
  if (!s->o.quiet) print_delivery(d);
  if (!s->o.quiet && s->o.show_headers) print_headers(d);
  fflush(stdout);
  if (s->o.no_ack) {
    /* neither: busd redelivers after its ack timeout */
  } else if (s->o.nack) {
    bus_nack(client, d->sub, d->partition, d->offset);
  } else {
    bus_ack(client, d->sub, d->partition, d->offset);
  }
  s->received++;
  if (s->o.count > 0 && s->received == s->o.count) {
    fflush(stdout);
    /* Stop a moment later, so the last acks leave first. */
    rt_timer_start(s->loop, &s->stop_timer, 100, 0);
  }
}

static void on_state(void *arg, bool up) {
  state_t *s = arg;
  if (up && strcmp(s->o.cmd, "pub") == 0) pub_fill(s);
}

int main(int argc, char **argv) {
  static state_t s;
  s.o.host = rt_env_str("BUSD_HOST", "127.0.0.1");
  s.o.port = 7400;
  rt_log_init("busctl", RT_LOG_WARN, NULL, 0);
  if (rt_env_u32("BUSD_PORT", 7400, 1, 65535, &s.o.port) < 0) return 2;
  s.o.window = 100;
  s.o.max = 100;
  int rc = parse(argc, argv, &s.o);
  if (rc != 0) {
    usage(rc > 0 ? stdout : stderr);
    return rc > 0 ? 0 : 2;
  }
  bool pub = strcmp(s.o.cmd, "pub") == 0;
  if (!s.o.count_set) s.o.count = pub ? 1 : 0; /* sub: until stopped */
  if (rt_loop_create(&s.loop, NULL) < 0) return 1;
  rt_timer_init(&s.stop_timer, stop_loop, s.loop);
  s.payload_len = s.o.data ? (uint32_t)strlen(s.o.data) : s.o.size;
  s.payload = calloc(1, s.payload_len + 1);
  if (s.o.data) memcpy(s.payload, s.o.data, s.payload_len);
  for (uint32_t i = 0; !s.o.data && i < s.payload_len; i++) s.payload[i] = (uint8_t)('a' + i % 26);
  bus_client_config_t cfg;
  memset(&cfg, 0, sizeof cfg);
  cfg.host = s.o.host;
  cfg.port = (uint16_t)s.o.port;
  cfg.name = "busctl";
  cfg.pending_max = s.o.window;
  cfg.on_confirm = on_confirm;
  cfg.confirm_arg = &s;
  cfg.on_state = on_state;
  cfg.state_arg = &s;
  wire_tls_creds_t *creds = NULL;
  wire_tls_filter_t *tls = NULL;
  rc = tls_client(&creds, &tls);
  if (tls != NULL) cfg.filter = wire_tls_filter_http(tls);
  if (rc == 0) rc = bus_client_create(&s.client, s.loop, &cfg);
  if (rc == 0 && !pub) {
    rc = bus_subscribe(s.client, s.o.topic, s.o.group, s.o.max, on_deliver, &s);
    if (rc > 0) rc = 0;
  }
  if (rc == 0) rc = bus_client_start(s.client);
  if (rc < 0) {
    fprintf(stderr, "busctl: %s\n", bus_strerror(rc));
    return 1;
  }
  s.t0_ns = rt_now_ns();
  if (!pub || s.o.count > 0) rt_loop_run(s.loop);
  double secs = (double)(rt_now_ns() - s.t0_ns) / 1e9;
  if (pub) {
    fprintf(stderr, "published %llu, confirmed %llu, failed %llu in %.3f s (%.0f/s)\n",
            (unsigned long long)s.sent, (unsigned long long)s.confirmed,
            (unsigned long long)s.failed, secs, secs > 0 ? (double)s.confirmed / secs : 0.0);
  }
  /* The client frees itself once its ops are done: let the loop run a
   * moment for that. */
  bus_client_destroy(s.client);
  rt_timer_t stop;
  rt_timer_init(&stop, stop_loop, s.loop);
  rt_timer_start(s.loop, &stop, 100, 0);
  rt_loop_run(s.loop);
  rt_loop_destroy(s.loop);
  wire_tls_filter_destroy(tls);
  wire_tls_creds_free(creds);
  free(s.payload);
  return pub && s.failed > 0 ? 1 : 0;
}
