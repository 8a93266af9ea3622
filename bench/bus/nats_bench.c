/*
 * nats_bench.c - NATS JetStream under bench_bus.h's measurement: a file
 * stream, asynchronous publishes with at most BENCH_BUS_WINDOW awaiting
 * their JetStream ack, a push consumer with explicit acks (MaxAckPending
 * BENCH_BUS_WINDOW) acking every message. Whether a JetStream ack means
 * "on disk" depends on the server (sync_interval: always, or a store on a
 * synchronous mount); compare.sh sets that up and says which.
 *
 * usage: nats_bench URL DURABILITY_LABEL
 */
#include <pthread.h>
#include <unistd.h>

#include <nats/nats.h>

#include "bench_bus.h"

typedef struct ctx {
  bench_t *b;
  char subject[64];
  char stream[64];
  uint64_t done_since_ns;
  _Atomic int errors;
} ctx_t;

static void on_pub_ack(jsCtx *js, natsMsg *msg, jsPubAck *pa, jsPubAckErr *pae, void *closure) {
  ctx_t *x = closure;
  if (pae != NULL || pa == NULL) {
    atomic_fetch_add(&x->errors, 1);
  } else if (natsMsg_GetDataLength(msg) >= 16) {
    uint64_t t;
    memcpy(&t, natsMsg_GetData(msg) + 8, 8);
    bench_confirmed(x->b, t);
  }
  natsMsg_Destroy(msg);
}

/* Called on the subscription's thread only, like our consumer's loop. */
static void on_msg(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure) {
  ctx_t *x = closure;
  bench_delivered(x->b, (const uint8_t *)natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg));
  natsMsg_Ack(msg, NULL);
  natsMsg_Destroy(msg);
}

static int check(natsStatus s, const char *what) {
  if (s == NATS_OK) return 0;
  fprintf(stderr, "nats_bench: %s: %s\n", what, natsStatus_GetText(s));
  return -1;
}

static int add_stream(jsCtx *js, ctx_t *x) {
  jsStreamConfig sc;
  jsStreamConfig_Init(&sc);
  sc.Name = x->stream;
  const char *subjects[1] = {x->subject};
  sc.Subjects = subjects;
  sc.SubjectsLen = 1;
  sc.Storage = js_FileStorage;
  sc.Replicas = 1;
  jsErrCode jerr = 0;
  return check(js_AddStream(NULL, js, &sc, NULL, &jerr), "add stream");
}

static int subscribe(jsCtx *js, ctx_t *x, natsSubscription **sub) {
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = x->stream;
  so.ManualAck = true;
  so.Config.Durable = "bench";
  so.Config.AckPolicy = js_AckExplicit;
  so.Config.MaxAckPending = x->b->cfg.window;
  so.Config.DeliverPolicy = js_DeliverAll;
  jsErrCode jerr = 0;
  return check(js_Subscribe(sub, js, x->subject, on_msg, x, NULL, &so, &jerr), "subscribe");
}

static int publish_all(jsCtx *js, ctx_t *x) {
  bench_t *b = x->b;
  uint8_t *body = calloc(1, b->cfg.size);
  int rc = 0;
  while (rc == 0 && bench_publishing(b)) {
    uint64_t seq = atomic_load(&b->published);
    bench_payload(b, body, seq, bench_now_ns());
    /* Blocks (stalls) while MaxPending publishes await their ack. */
    rc = check(js_PublishAsync(js, x->subject, body, (int)b->cfg.size, NULL), "publish");
    if (rc == 0) atomic_fetch_add(&b->published, 1);
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 60000;
  if (rc == 0) rc = check(js_PublishAsyncComplete(js, &po), "publish complete");
  free(body);
  return rc;
}

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: nats_bench URL DURABILITY_LABEL\n");
    return 2;
  }
  static bench_t b;
  static ctx_t x;
  if (bench_init(&b) < 0) return 2;
  x.b = &b;
  snprintf(x.stream, sizeof x.stream, "BENCH%d", (int)getpid());
  snprintf(x.subject, sizeof x.subject, "bench.%d", (int)getpid());
  natsConnection *pub_nc = NULL, *sub_nc = NULL;
  jsCtx *pub_js = NULL, *sub_js = NULL;
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.MaxPending = b.cfg.window;
  jo.PublishAsync.AckHandler = on_pub_ack;
  jo.PublishAsync.AckHandlerClosure = &x;
  jo.PublishAsync.StallWait = 60000;
  natsSubscription *sub = NULL;
  int rc = check(natsConnection_ConnectTo(&pub_nc, argv[1]), "connect");
  if (rc == 0) rc = check(natsConnection_ConnectTo(&sub_nc, argv[1]), "connect");
  if (rc == 0) rc = check(natsConnection_JetStream(&pub_js, pub_nc, &jo), "jetstream");
  if (rc == 0) rc = check(natsConnection_JetStream(&sub_js, sub_nc, NULL), "jetstream");
  if (rc == 0) rc = add_stream(pub_js, &x);
  if (rc == 0) rc = subscribe(sub_js, &x, &sub);
  if (rc == 0) {
    struct timespec settle = {.tv_nsec = 200 * 1000000L};
    nanosleep(&settle, NULL);
    bench_start(&b);
    rc = publish_all(pub_js, &x);
    atomic_store(&b.publish_done, true);
    /* The consumer runs on the library's thread; wait until it is done. */
    while (!bench_consumer_done(&b, &x.done_since_ns, 30)) {
      struct timespec tick = {.tv_nsec = 5 * 1000000L};
      nanosleep(&tick, NULL);
    }
  }
  if (sub != NULL) {
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
  }
  if (pub_js != NULL) js_DeleteStream(pub_js, x.stream, NULL, NULL);
  jsCtx_Destroy(pub_js);
  jsCtx_Destroy(sub_js);
  natsConnection_Destroy(pub_nc);
  natsConnection_Destroy(sub_nc);
  if (rc == 0 && atomic_load(&x.errors) > 0) {
    fprintf(stderr, "nats_bench: %d publishes failed\n", atomic_load(&x.errors));
    rc = -1;
  }
  if (rc == 0) bench_report(&b, "nats", argv[2]);
  bench_free(&b);
  nats_Close();
  return rc == 0 ? 0 : 1;
}
