/*
 * event.c - the event service: the audit log of every event on the bus,
 * kept as a hash chain with signed checkpoints (chain.c), projections
 * (projections.c) and reconciliation with the account service
 * (reconcile.c).
 *
 * It consumes every event type of the registry (actors/common/events.def)
 * as consumer group "event", through the skeleton's consumer table: each
 * delivery is claimed in the inbox, appended to audit_log, queued for the
 * chain and applied to the projections in one transaction, then ACKed, so
 * a redelivered event changes nothing. Exactly one row per event id.
 *
 *   GET  /v1/events                  auditor, admin; the chain in order,
 *                                    filters topic, key, correlation_id,
 *                                    since, until (busd's store time, RFC
 *                                    3339, since inclusive, until
 *                                    exclusive); cursor by chain position
 *   GET  /v1/events/verify           auditor, admin; ?from=&to= positions
 *   GET  /v1/events/checkpoints      auditor, admin; with the public key
 *   GET  /v1/projections/...         operator, auditor, admin
 *   POST /v1/projections/{name}/rebuild   admin
 *   POST /v1/reconciliation          admin
 *   /v1/dead-letters                 operator, admin: dead.c
 *
 * Commands: event verify, event verify-checkpoint, event rebuild NAME,
 * event reconcile (event --help). Plus /healthz, /readyz and /metrics.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "event.h"

extern const svc_migration_t event_migrations[];
extern const size_t event_migrations_count;

#define EVENT_TIME_BYTES_MAX 40
#define HEADERS_JSON_BYTES_MAX 4096

static int s_append, s_list;

static svc_peer_t account_peer; /* ACCOUNT_ADDR, ACCOUNT_TIMEOUT: reconciliation */

static const svc_stmt_t stmts[] = {
    /* $1 the batch: a JSON array of {id, topic, key, payload, partition,
     * offset, stored (busd's store time, Unix ms), headers}; $2 the inbox
     * scope, $3 seconds to keep the claims. Each event claimed, appended,
     * queued for the chainer and applied to the projections, in one
     * transaction for all (migration 0007). The places (1-based) of those
     * that were new. */
    {&s_append, "SELECT audit_append($1::jsonb, $2, $3::double precision)", 3},
    /* The chain in order. $1 topic, $2 since, $3 until, $4 cursor (the
     * position of the last item shown), $5 limit + 1, $6 correlation id,
     * $7 key. headers_text, payload_text and recorded_us are the record's
     * canonical fields (chain.c), for whoever recomputes the hashes. */
    {&s_list,
     "SELECT c.chain_seq::text, json_build_object('seq', c.chain_seq, 'event_id', a.event_id,"
     " 'topic', a.topic, 'key', a.key, 'headers', a.headers, 'payload', a.payload,"
     " 'partition', a.bus_partition, 'offset', a.bus_offset, 'stored_at', a.stored_at,"
     " 'received_at', a.received_at, 'recorded_us',"
     " (extract(epoch FROM a.received_at) * 1000000)::bigint, 'headers_text', a.headers::text,"
     " 'payload_text', a.payload::text, 'prev_hash', encode(c.prev_hash, 'hex'),"
     " 'hash', encode(c.hash, 'hex'))::text"
     " FROM audit_chain c JOIN audit_log a ON a.seq = c.audit_seq"
     " WHERE ($1::text IS NULL OR a.topic = $1)"
     " AND ($2::timestamptz IS NULL OR a.stored_at >= $2::timestamptz)"
     " AND ($3::timestamptz IS NULL OR a.stored_at < $3::timestamptz)"
     " AND ($4::bigint IS NULL OR c.chain_seq > $4::bigint)"
     " AND ($6::text IS NULL OR a.correlation_id = $6)"
     " AND ($7::text IS NULL OR a.key = $7)"
     " ORDER BY c.chain_seq LIMIT $5::int",
     7},
};

/* ------------------------------------------------------------------------ */
/* Consuming: every event type, one handler                                 */
/* ------------------------------------------------------------------------ */

/* The event's headers as one JSON object (names and values as strings). */
static json_t *headers_obj(const svc_event_t *ev) {
  json_t *obj = json_object();
  bus_header_iter_t it;
  bus_header_iter_init(&it, ev->headers);
  bus_bytes_t name, value;
  for (uint32_t n = 0; obj != NULL && n < BUS_HEADERS_MAX && bus_header_next(&it, &name, &value);
       n++) {
    char key[BUS_HEADER_NAME_BYTES_MAX + 1];
    memcpy(key, name.ptr, name.len);
    key[name.len] = '\0';
    json_t *v = json_stringn((const char *)value.ptr, value.len); /* NULL when not UTF-8 */
    if (v != NULL) json_object_set_new(obj, key, v);
  }
  return obj;
}

/* Every delivery of the batch as one element of a JSON array. */
static int audit_apply_many(svc_event_t *const *evs, uint32_t n, rt_pg_batch_t *b) {
  json_t *arr = json_array();
  int rc = arr != NULL ? 0 : -ENOMEM;
  for (uint32_t i = 0; i < n && rc == 0; i++) {
    const svc_event_t *ev = evs[i];
    json_t *headers = headers_obj(ev);
    json_t *e = headers == NULL ? NULL
                                : json_pack("{s:s, s:s, s:s, s:O, s:I, s:I, s:I, s:o}", "id", ev->id,
                                            "topic", ev->def->topic, "key", ev->key, "payload",
                                            ev->payload, "partition", (json_int_t)ev->partition,
                                            "offset", (json_int_t)ev->offset, "stored",
                                            (json_int_t)ev->stored_ms, "headers", headers);
    if (e == NULL || json_array_append_new(arr, e) < 0) rc = -ENOMEM;
  }
  char *text = rc == 0 ? json_dumps(arr, JSON_COMPACT) : NULL;
  json_decref(arr);
  if (rc == 0 && text == NULL) rc = -ENOMEM;
  if (rc == 0) {
    char keep[16];
    snprintf(keep, sizeof keep, "%" PRIu32, svc_inbox_keep_s());
    const char *vals[] = {text, SVC_INBOX_SCOPE, keep};
    rc = rt_pg_add(b, s_append, 3, vals);
  }
  free(text);
  return rc < 0 ? rc : 0;
}

/* After the commit: the chainer has rows to place. */
static void audit_done_many(svc_event_t *const *evs, uint32_t n, const rt_pg_batch_t *b,
                            int *results) {
  (void)evs;
  if (svc_batch_places(rt_pg_value(b, 0, 0, 0), n, results) > 0) event_chain_wake();
}

/* Every type of the registry, filled in main(). */
static svc_consumer_t consumers[SVC_EV_COUNT];

static void consumers_fill(void) {
  for (int t = 0; t < SVC_EV_COUNT; t++)
    consumers[t] = (svc_consumer_t){.type = (svc_event_type_t)t,
                                    .apply_many = audit_apply_many,
                                    .done_many = audit_done_many};
}

/* ------------------------------------------------------------------------ */
/* GET /v1/events                                                           */
/* ------------------------------------------------------------------------ */

/* An RFC 3339 time, loosely: digits and the separators it uses. The
 * database parses it; what it refuses is answered 422. */
static int time_query(svc_req_t *req, const char *name, char out[EVENT_TIME_BYTES_MAX]) {
  int n = svc_query(req, name, out, EVENT_TIME_BYTES_MAX);
  if (n == -ENOENT) return 0;
  if (n <= 0) return -1;
  for (int i = 0; i < n; i++) {
    char c = out[i];
    if (!((c >= '0' && c <= '9') || c == '-' || c == ':' || c == '.' || c == '+' || c == 'T' ||
          c == 'Z' || c == 'z' || c == 't'))
      return -1;
  }
  return n;
}

static void list_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err == RT_PG_E_DATA) {
    svc_reply_error(req, 422, "invalid_time", "since and until must be RFC 3339 times");
    return;
  }
  svc_page_done(req, b, err);
}

static void on_list(svc_req_t *req) {
  int limit;
  char cursor[SVC_CURSOR_BYTES];
  char topic[BUS_NAME_BYTES_MAX + 1], since[EVENT_TIME_BYTES_MAX], until[EVENT_TIME_BYTES_MAX];
  char corr[SVC_TRACE_ID_BYTES], key[BUS_KEY_BYTES_MAX + 1];
  if (svc_page(req, SVC_CURSOR_SEQ, &limit, cursor) < 0) return;
  int kn = svc_query(req, "key", key, sizeof key);
  if (kn == -EINVAL || kn == 0) {
    svc_reply_error(req, 422, "invalid_key", "key is too long or empty");
    return;
  }
  int tn = svc_query(req, "topic", topic, sizeof topic);
  if (tn == -EINVAL || (tn >= 0 && !bus_name_valid((const uint8_t *)topic, (size_t)tn))) {
    svc_reply_error(req, 422, "invalid_topic", "topic is not a valid topic name");
    return;
  }
  int cn = svc_query(req, "correlation_id", corr, sizeof corr);
  if (cn == -EINVAL || cn == 0) {
    svc_reply_error(req, 422, "invalid_correlation_id", "correlation_id is too long or empty");
    return;
  }
  int sn = time_query(req, "since", since), un = time_query(req, "until", until);
  if (sn < 0 || un < 0) {
    svc_reply_error(req, 422, "invalid_time", "since and until must be RFC 3339 times");
    return;
  }
  *SVC_STATE(req, int) = limit;
  char lim[16];
  snprintf(lim, sizeof lim, "%d", limit + 1);
  /* Audit queries may lag the primary a little: the read pool. */
  rt_pg_batch_t *b = svc_batch_read(req);
  if (b == NULL) return;
  const char *vals[] = {tn > 0 ? topic : NULL, sn > 0 ? since : NULL, un > 0 ? until : NULL,
                        cursor[0] ? cursor : NULL, lim, cn > 0 ? corr : NULL,
                        kn > 0 ? key : NULL};
  rt_pg_add(b, s_list, 7, vals);
  svc_db(req, b, list_done);
}

/* ------------------------------------------------------------------------ */
/* GET /v1/events/verify, GET /v1/events/checkpoints                        */
/* ------------------------------------------------------------------------ */

/* ?name= as a chain position (1..INT64_MAX); 0 when absent, -1 answered. */
static int seq_query(svc_req_t *req, const char *name, int64_t *out) {
  char buf[24];
  *out = 0;
  int n = svc_query(req, name, buf, sizeof buf);
  if (n == -ENOENT) return 0;
  char *end = buf;
  errno = 0;
  long long v = n > 0 && buf[0] >= '0' && buf[0] <= '9' ? strtoll(buf, &end, 10) : 0;
  if (n <= 0 || errno != 0 || end == buf || *end != '\0' || v < 1) {
    svc_reply_error(req, 422, "invalid_range", "from and to are chain positions (1 and up)");
    return -1;
  }
  *out = v;
  return 1;
}

static void verify_answer(event_verify_t *v) {
  svc_req_t *req = v->ctx;
  if (v->err != 0) {
    svc_reply_db_error(req, v->err, NULL);
    return;
  }
  if (!v->ok)
    RT_WARN("audit chain verification failed", RT_LF_INT("broken_seq", v->broken_seq),
            RT_LF_INT("bad_checkpoints", v->cp_bad), RT_LF_STR("by", req->who.subject));
  svc_reply_json(req, 200, event_verify_json(v));
}

static void on_verify(svc_req_t *req) {
  int64_t from, to;
  if (seq_query(req, "from", &from) < 0 || seq_query(req, "to", &to) < 0) return;
  if (to != 0 && from > to) {
    svc_reply_error(req, 422, "invalid_range", "from must not be after to");
    return;
  }
  event_verify_t *v = SVC_STATE(req, event_verify_t);
  /* Recomputing the chain reads every record of the range: on the read
   * pool, so a long check never competes with the audit's writes. */
  *v = (event_verify_t){.pool = svc_read_pool(req->th), .from = from, .to = to,
                        .done = verify_answer, .ctx = req};
  int rc = event_verify_start(v);
  if (rc < 0) svc_reply_db_error(req, rc, NULL);
}

static void checkpoints_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  json_t *page = svc_page_json(b, 0, *SVC_STATE(req, int));
  const char *pem = event_chain_public_pem();
  json_t *key = pem ? json_pack("{s:s, s:s, s:s}", "kid", event_chain_kid(), "alg", "ES256",
                                "public_key_pem", pem)
                    : json_null();
  if (page != NULL) json_object_set_new(page, "key", key);
  svc_reply_json(req, 200, page);
}

static void on_checkpoints(svc_req_t *req) {
  svc_list_page_read(req, SVC_CURSOR_SEQ, event_chain_checkpoint_list_stmt(), checkpoints_done);
}

/* ------------------------------------------------------------------------ */
/* POST /v1/reconciliation                                                  */
/* ------------------------------------------------------------------------ */

static void reconcile_answer(event_reconcile_t *r) {
  svc_req_t *req = r->ctx;
  if (r->err != 0) {
    event_reconcile_free(r);
    svc_reply_error(req, 503, "unavailable",
                    "the account service or the database did not answer; nothing was decided");
    return;
  }
  RT_INFO("reconciliation run", RT_LF_INT("accounts", r->checked),
          RT_LF_INT("differences", r->differences), RT_LF_STR("by", req->who.subject));
  json_t *body = event_reconcile_json(r);
  event_reconcile_free(r);
  svc_reply_json(req, 200, body);
}

static void on_reconcile(svc_req_t *req) {
  event_reconcile_t *r = SVC_STATE(req, event_reconcile_t);
  *r = (event_reconcile_t){.pool = req->th->pool, .client = req->th->user,
                           .done = reconcile_answer, .ctx = req};
  if (event_reconcile_start(r) < 0) svc_reply_error(req, 503, "overloaded", "out of memory");
}

/* The public routes take their roles from wire/api/api.table (svc.h). */
static const svc_route_t routes[] = {
    {SVC_API_GET_EVENTS, .fn = on_list},
    {SVC_API_GET_EVENTS_VERIFY, .fn = on_verify},
    {SVC_API_GET_EVENTS_CHECKPOINTS, .fn = on_checkpoints},
    {SVC_API_GET_PROJECTIONS_ACCOUNT_DAILY, .fn = event_on_proj_daily},
    {SVC_API_GET_PROJECTIONS_PAYMENT_VOLUME, .fn = event_on_proj_volume},
    {SVC_API_GET_PROJECTIONS_PAYMENTS, .fn = event_on_proj_payments},
    {SVC_API_GET_PROJECTIONS_PAYMENT_STATES, .fn = event_on_proj_states},
    {SVC_API_POST_PROJECTIONS_NAME_REBUILD, .fn = event_on_proj_rebuild},
    {SVC_API_POST_RECONCILIATION, .fn = on_reconcile},
    {SVC_API_GET_DEAD_LETTERS, .fn = event_on_dead_list},
    {SVC_API_POST_DEAD_LETTERS_ID_REDRIVE, .fn = event_on_redrive},
    {SVC_API_POST_DEAD_LETTERS_REDRIVE, .fn = event_on_redrive_all},
};

/* ------------------------------------------------------------------------ */
/* Commands                                                                 */
/* ------------------------------------------------------------------------ */

/* --name N as a chain position into *out. */
static bool opt_seq(const char *v, int64_t *out) {
  char *end = NULL;
  errno = 0;
  long long n = v != NULL && v[0] >= '0' && v[0] <= '9' ? strtoll(v, &end, 10) : 0;
  if (n < 1 || errno != 0 || *end != '\0') return false;
  *out = n;
  return true;
}

static void print_json(json_t *j) {
  char *text = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
  if (text != NULL) printf("%s\n", text);
  free(text);
  json_decref(j);
  fflush(stdout);
}

typedef struct verify_cmd {
  event_verify_t v;
  int64_t checkpoint; /* verify-checkpoint: the position whose checkpoint is checked */
} verify_cmd_t;

static void verify_cmd_done(event_verify_t *v) {
  svc_cmd_t *cmd = v->ctx;
  verify_cmd_t *vc = cmd->user;
  if (v->err != 0) {
    fprintf(stderr, "event %s: %s\n", cmd->argv[0], rt_strerror(v->err));
    svc_cmd_finish(cmd, 2);
    return;
  }
  json_t *j = event_verify_json(v);
  bool ok = v->ok;
  if (vc->checkpoint != 0) {
    bool signed_ok = v->cp_at_to > 0;
    ok = ok && signed_ok;
    json_object_set_new(j, "checkpoint",
                        json_pack("{s:I, s:s}", "seq", (json_int_t)vc->checkpoint, "result",
                                  v->cp_at_to > 0   ? "valid"
                                  : v->cp_at_to < 0 ? "does not match the log or the key"
                                                    : "no checkpoint at this position"));
  }
  json_object_set_new(j, "ok", json_boolean(ok));
  print_json(j);
  svc_cmd_finish(cmd, ok ? 0 : 1);
}

static int verify_cmd_run(svc_cmd_t *cmd, int64_t from, int64_t to, int64_t checkpoint) {
  static verify_cmd_t vc;
  vc = (verify_cmd_t){.checkpoint = checkpoint};
  vc.v = (event_verify_t){.pool = cmd->pool, .from = from, .to = to, .done = verify_cmd_done,
                          .ctx = cmd};
  cmd->user = &vc;
  int rc = event_verify_start(&vc.v);
  if (rc < 0) {
    fprintf(stderr, "event %s: %s\n", cmd->argv[0], rt_strerror(rc));
    return 2;
  }
  return 0;
}

static int cmd_verify(svc_cmd_t *cmd) {
  int64_t from = 1, to = 0;
  for (int i = 1; i < cmd->argc; i += 2) {
    const char *v = i + 1 < cmd->argc ? cmd->argv[i + 1] : NULL;
    bool ok = strcmp(cmd->argv[i], "--from") == 0   ? opt_seq(v, &from)
              : strcmp(cmd->argv[i], "--to") == 0 ? opt_seq(v, &to)
                                                  : false;
    if (!ok) {
      fprintf(stderr, "usage: event verify [--from N] [--to N]\n");
      return 2;
    }
  }
  return verify_cmd_run(cmd, from, to, 0);
}

static int cmd_verify_checkpoint(svc_cmd_t *cmd) {
  int64_t seq = 0;
  const char *key = NULL;
  bool ok = true;
  for (int i = 1; ok && i < cmd->argc; i += 2) {
    const char *v = i + 1 < cmd->argc ? cmd->argv[i + 1] : NULL;
    if (strcmp(cmd->argv[i], "--seq") == 0)
      ok = opt_seq(v, &seq);
    else if (strcmp(cmd->argv[i], "--public-key") == 0 && v != NULL)
      key = v;
    else
      ok = false;
  }
  if (!ok || seq == 0 || key == NULL) {
    fprintf(stderr, "usage: event verify-checkpoint --seq N --public-key FILE.pem\n");
    return 2;
  }
  int rc = event_chain_use_public_key(key);
  if (rc < 0) {
    fprintf(stderr, "event verify-checkpoint: %s is not a P-256 public key PEM\n", key);
    return 2;
  }
  return verify_cmd_run(cmd, 1, seq, seq);
}

static void rebuild_cmd_done(rt_pg_batch_t *b, int err, void *ctx) {
  svc_cmd_t *cmd = ctx;
  int64_t n = 0;
  if (err != 0 || rt_pg_int64(b, 0, 0, 0, &n) != 0) {
    fprintf(stderr, "event rebuild: %s\n", rt_strerror(err ? err : RT_PG_E_SQL));
    svc_cmd_finish(cmd, 2);
    return;
  }
  print_json(json_pack("{s:s, s:I}", "projection", cmd->argv[1], "replayed", (json_int_t)n));
  svc_cmd_finish(cmd, 0);
}

static int cmd_rebuild(svc_cmd_t *cmd) {
  if (cmd->argc != 2 || !event_proj_known(cmd->argv[1])) {
    fprintf(stderr, "usage: event rebuild account-daily|payment-volume|payments|balances\n");
    return 2;
  }
  rt_pg_batch_t *b = rt_pg_batch_new(cmd->pool);
  if (b == NULL) return 2;
  const char *vals[] = {cmd->argv[1]};
  rt_pg_add(b, event_proj_rebuild_stmt(), 1, vals);
  if (rt_pg_submit(b, 0, rebuild_cmd_done, cmd) < 0) return 2;
  fprintf(stderr, "event rebuild: replaying the audit log into %s\n", cmd->argv[1]);
  return 0;
}

static void reconcile_cmd_done(event_reconcile_t *r) {
  svc_cmd_t *cmd = r->ctx;
  int status = 2;
  if (r->err != 0) {
    fprintf(stderr, "event reconcile: %s: nothing was decided\n", rt_strerror(r->err));
  } else {
    print_json(event_reconcile_json(r));
    status = r->differences == 0 ? 0 : 1;
  }
  event_reconcile_free(r);
  http_client_destroy(r->client);
  svc_cmd_finish(cmd, status);
}

static int cmd_reconcile(svc_cmd_t *cmd) {
  static event_reconcile_t r;
  if (cmd->argc != 1) {
    fprintf(stderr, "usage: event reconcile\n");
    return 2;
  }
  r = (event_reconcile_t){.pool = cmd->pool,
                          .client = svc_peer_client(&account_peer, cmd->loop, 1, 64),
                          .done = reconcile_cmd_done, .ctx = cmd};
  if (r.client == NULL || event_reconcile_start(&r) < 0) {
    http_client_destroy(r.client);
    return 2;
  }
  return 0;
}

static const svc_command_t commands[] = {
    {"verify", "  verify [--from N] [--to N]\n"
               "      re-checks the hash chain and its checkpoints; exit 1 when broken\n",
     cmd_verify},
    {"verify-checkpoint", "  verify-checkpoint --seq N --public-key FILE.pem\n"
                          "      checks the checkpoint at N against the log, with the public key\n"
                          "      alone; exit 0 when it proves the log up to N unchanged\n",
     cmd_verify_checkpoint},
    {"rebuild", "  rebuild NAME\n"
                "      empties projection NAME and replays the audit log into it\n",
     cmd_rebuild},
    {"reconcile", "  reconcile\n"
                  "      compares every account's balance at the account service with the\n"
                  "      audit log; exit 1 when any differs\n",
     cmd_reconcile},
};

/* ------------------------------------------------------------------------ */
/* Main                                                                     */
/* ------------------------------------------------------------------------ */

static const svc_event_type_t produces[] = {SVC_EV_DEAD_LETTER_REDRIVEN};

static int thread_init(svc_thread_t *th) {
  th->user = svc_peer_client(&account_peer, th->loop, 2, 64);
  int rc = th->user != NULL ? 0 : RT_E_CONFIG;
  if (rc == 0 && th->index == 0) rc = event_dead_start(th);
  if (rc == 0 && th->index == 0) rc = event_chain_start(th);
  return rc;
}

static void thread_drain(svc_thread_t *th) {
  if (th->index == 0) {
    event_chain_stop(th);
    event_dead_stop(th);
  }
  http_client_destroy(th->user);
  th->user = NULL;
}

static void metrics(wire_metrics_t *m) {
  event_dead_metrics(m);
  event_chain_metrics(m);
}

/* Every file's statements, as one table. */
static svc_stmt_t all_stmts[64];

static size_t stmts_merge(void) {
  const struct {
    const svc_stmt_t *stmts;
    size_t n;
  } tables[] = {
      {stmts, sizeof stmts / sizeof stmts[0]},
      {event_dead_stmts, event_dead_stmts_count},
      {event_chain_stmts, event_chain_stmts_count},
      {event_proj_stmts, event_proj_stmts_count},
      {event_reconcile_stmts, event_reconcile_stmts_count},
  };
  size_t n = 0;
  for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++)
    for (size_t i = 0; i < tables[t].n && ALWAYS(n < sizeof all_stmts / sizeof all_stmts[0]); i++)
      all_stmts[n++] = tables[t].stmts[i];
  return n;
}

static int load_config(void) {
  int rc = svc_peer_config(&account_peer, "account", "127.0.0.1:7002", 5000);
  if (rc == 0) rc = event_chain_config();
  return rc;
}

int main(int argc, char **argv) {
  if (load_config() < 0) return 2;
  consumers_fill();
  svc_def_t def = {
      .name = "event",
      .env_prefix = "EVENT",
      .default_port = 7004,
      .routes = routes,
      .routes_count = sizeof routes / sizeof routes[0],
      .stmts = all_stmts,
      .stmts_count = stmts_merge(),
      .migrations = event_migrations,
      .migrations_count = event_migrations_count,
      .produces = produces,
      .produces_count = sizeof produces / sizeof produces[0],
      .consumers = consumers,
      .consumers_count = SVC_EV_COUNT,
      .thread_init = thread_init,
      .thread_drain = thread_drain,
      .bus_init = event_dead_subscribe,
      .metrics = metrics,
      .commands = commands,
      .commands_count = sizeof commands / sizeof commands[0],
      .usage_env =
          "  EVENT_SIGNING_KEY     ES256 (P-256) private key PEM that signs checkpoints\n"
          "                        (unset: the chain is kept, nothing is signed)\n"
          "  CHECKPOINT_EVERY      sign the chain head every N records     (1000)\n"
          "  CHECKPOINT_INTERVAL   ... or at least this often when it grew  (60s)\n"
          "  CHAIN_WINDOW          a chain round waits this long for company (20ms)\n"
          "  ACCOUNT_ADDR          the account service, for reconciliation (127.0.0.1:7002)\n"
          "  ACCOUNT_TIMEOUT       its answer to one page, at most          (5s)\n",
  };
  return svc_main(argc, argv, &def);
}
