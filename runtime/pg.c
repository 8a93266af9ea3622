/*
 * pg.c - asynchronous PostgreSQL on the loop: libpq non-blocking, pipeline
 * mode, a pool of supervised connections and a bounded wait queue.
 *
 * Life of a batch:
 *   new -> add statements (parameters copied into the batch's arena: its
 *          own RT_PG_BATCH_INLINE_BYTES, or once they outgrow it a large
 *          arena from the pool's fixed set, until the batch is released)
 *       -> submit: deadline timer armed, queued (FIFO), and a zero-delay
 *          pool timer armed; it runs at the top of the next loop iteration,
 *          after every completion of this one has been handled, and moves
 *          queued batches to the ready connections with the fewest batches
 *          in flight (up to pipeline_depth each)
 *       -> dispatched: its Parse (for statements not yet prepared on that
 *          connection), Bind/Execute per statement and one Sync are queued
 *          in libpq's output buffer; the connection is marked for a flush
 *       -> flush: the same timer then writes each connection's buffer, so
 *          the batches of all callers of one iteration leave in one write
 *          per connection (PQflush; POLLOUT when the kernel is full)
 *       -> results: POLLIN fires, PQconsumeInput, then PQgetResult while
 *          libpq is not busy; each result is matched to the head batch's
 *          next expected item (a Parse, a statement, the Sync)
 *       -> Sync result: the transaction is over; the callback runs; the
 *          batch goes back to the pool.
 *
 * Life of a connection (a child actor of the pool's supervisor):
 *   start -> CONNECTING (PQconnectStartParams, then PQconnectPoll driven by
 *   one-shot polls in the direction libpq asks for) -> READY (pipeline mode,
 *   POLLIN always armed) -> on any failure CLOSING: batches in flight fail,
 *   polls are cancelled, and once no op is in flight PQfinish() and
 *   rt_actor_stop() with the reason; the supervisor restarts it after its
 *   back-off. A clean close (reason 0) is not restarted.
 *
 * A deadline that passes while a batch is queued fails it and removes it.
 * One that passes while it is in flight answers the caller at once; the
 * batch stays in the pipeline (its results must still be read in order)
 * and is dropped when they arrive. If nothing comes back within
 * statement_timeout + STALL_GRACE_MS, the connection is presumed stuck and
 * reset.
 */
#include <assert.h>
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pg.h"

#define STALL_GRACE_MS 2000
#define BATCH_MARGIN 256          /* batches being built, beyond the queues */
#define READ_RESULTS_MAX 100000   /* results handled per POLLIN, a bound */
#define TLS_READS_MAX 64          /* TLS records read per POLLIN, a bound */
#define ITEMS_MAX (2 * RT_PG_BATCH_STMTS_MAX + 1)

/* ------------------------------------------------------------------------ */
/* Types                                                                    */
/* ------------------------------------------------------------------------ */

typedef enum conn_state {
  CONN_DOWN = 0,  /* not started, or closed and waiting for a restart */
  CONN_CONNECTING,
  CONN_READY,
  CONN_CLOSING,   /* ops being cancelled; PQfinish when they are back */
} conn_state_t;

typedef enum batch_state {
  BATCH_FREE = 0,
  BATCH_BUILDING,
  BATCH_QUEUED,
  BATCH_IN_FLIGHT,
} batch_state_t;

/* What the connection expects back for a batch, in order. */
enum {
  ITEM_PREPARE = 0x40, /* low bits: index of the statement that needs it */
  ITEM_STMT = 0x80,    /* low bits: statement index */
  ITEM_SYNC = 0xff,
};

typedef struct stmt_ref {
  int32_t stmt;        /* registered id, or -1 for ad hoc SQL */
  uint16_t nparams;
  uint32_t sql_off;    /* ad hoc: offset of the SQL text in the arena */
  uint32_t params_off; /* offset of nparams uint32 offsets (UINT32_MAX: NULL) */
} stmt_ref_t;

struct rt_pg_batch {
  rt_pg_pool_t *pool;
  struct pg_conn *conn; /* while in flight */
  rt_pg_batch_t *next; /* queue or in-flight list */
  batch_state_t state;
  bool abandoned;      /* answered by its deadline while in flight */
  bool first;          /* queued ahead of the others (rt_pg_batch_first) */
  int build_err;       /* first rt_pg_add() failure, returned by submit */
  int err;             /* first error of the run */
  uint64_t seq;        /* submission order, for the stall watchdog */
  uint64_t submitted_ns;
  rt_pg_cb cb;
  void *ctx;
  rt_timer_t deadline;
  uint8_t count;
  stmt_ref_t stmts[RT_PG_BATCH_STMTS_MAX];
  PGresult *results[RT_PG_BATCH_STMTS_MAX];
  uint8_t items[ITEMS_MAX];
  uint8_t items_count;
  uint8_t cursor;      /* next item expected */
  char *arena;         /* arena_inline, or a large arena of the pool's */
  uint32_t arena_len;
  uint32_t arena_cap;
  rt_pg_error_t error;
  _Alignas(16) char arena_inline[RT_PG_BATCH_INLINE_BYTES];
};

/* Arena offsets are 4-aligned (arena_put): both kinds of arena start so. */
_Static_assert(RT_PG_BATCH_INLINE_BYTES % 16 == 0, "inline arena keeps the alignment");
_Static_assert(RT_PG_BATCH_INLINE_BYTES < RT_PG_BATCH_BYTES_MAX,
               "a large arena is larger than the inline one");

typedef struct pg_conn {
  rt_actor_t actor;    /* child of the pool's supervisor */
  rt_pg_pool_t *pool;
  uint32_t index;
  conn_state_t state;
  PGconn *pg;
  int fd;
  int close_reason;
  bool needs_flush;
  rt_op_t poll_in;
  rt_op_t poll_out;
  rt_op_t cancel_in;   /* cancels of the polls, when closing */
  rt_op_t cancel_out;
  rt_timer_t connect_timer;
  rt_timer_t stall_timer;
  bool listener;       /* the pool's LISTEN connection: never given batches */
  uint64_t stall_seq;  /* the watchdog's head batch when armed */
  rt_pg_batch_t *head; /* batches in flight, oldest first */
  rt_pg_batch_t *tail;
  uint32_t in_flight;
  uint64_t prepared[RT_PG_STMTS_MAX / 64];
} pg_conn_t;

typedef struct pg_stmt {
  char name[16];
  char *sql;
  int nparams;
} pg_stmt_t;

struct rt_pg_pool {
  rt_loop_t *loop;
  rt_pg_config_t config;
  char name[32];
  /* Connection parameters for PQconnectStartParams, dbname expanded. */
  const char *keywords[12];
  const char *values[12];
  /* A URL naming several hosts (libpq multi-host, target_session_attrs):
   * libpq tries them in order, but in non-blocking mode it has no timeout
   * per host, so a host that hangs (a machine gone, where one that is
   * down would refuse at once) would stall every attempt on the first
   * host. Each attempt that times out starts the next one a host further
   * down the list (host_first), so every host gets its turn first. */
  char hosts[256];       /* the URL's hosts, comma-separated */
  char ports[128];       /* its ports: one for all, or one per host */
  uint32_t hosts_count;  /* > 1: rotation on */
  uint32_t host_first;
  char hosts_rot[256];   /* the lists handed to libpq for this attempt */
  char ports_rot[128];
  char options[512];
  char app_name[64];
  char *url;
  rt_sup_t sup;
  pg_conn_t *conns;
  pg_stmt_t stmts[RT_PG_STMTS_MAX];
  uint32_t stmts_count;
  rt_pool_t batches;
  rt_pool_t large;      /* arenas of RT_PG_BATCH_BYTES_MAX, large_batches */
  rt_pg_batch_t *queue_head;
  rt_pg_batch_t *queue_tail;
  uint32_t queued;
  uint64_t seq;
  rt_timer_t flush_timer;
  rt_timer_t close_timer;
  bool started;
  bool closing;
  bool in_maybe_closed; /* pool_maybe_closed() is on the stack */
  bool in_flush;        /* pool_flush() is on the stack: it flushes itself */
  bool down;           /* no connection up and the last attempt failed */
  void (*close_done)(void *arg);
  void *close_arg;
  /* rt_pg_listen(): the channel, and whom to tell. The listener is
   * conns[config.conns_count], started only when a channel is set. */
  char listen_channel[64];
  rt_pg_notify_fn listen_fn;
  void *listen_arg;
  rt_pg_stats_t stats;
};

/* Data connections plus the listener, when there is one. */
static uint32_t conns_total(const rt_pg_pool_t *p) {
  return p->config.conns_count + (p->listen_fn != NULL ? 1u : 0u);
}

#define STAT_ADD(p, field, n) \
  atomic_fetch_add_explicit(&(p)->stats.field, (n), memory_order_relaxed)
#define STAT_SUB(p, field, n) \
  atomic_fetch_sub_explicit(&(p)->stats.field, (n), memory_order_relaxed)

static void conn_fail(pg_conn_t *c, int reason, int batch_err);
static void conn_arm_in(pg_conn_t *c);
static void pool_pump(rt_pg_pool_t *p);
static void pool_maybe_closed(rt_pg_pool_t *p);
static void batch_release(rt_pg_batch_t *b);
static void conn_continue_close(pg_conn_t *c);
static void conn_watch(pg_conn_t *c);
static void pool_closed_timer(rt_timer_t *t);
static void conn_dispatch(pg_conn_t *c, rt_pg_batch_t *b);
static void listen_send(pg_conn_t *c);
static void listen_deliver(pg_conn_t *c);
static void batch_deadline(rt_timer_t *t);

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

const char *rt_pg_strerror(int err) {
  switch (err) {
  case RT_PG_E_UNIQUE: return "unique violation";
  case RT_PG_E_SERIALIZATION: return "serialization failure";
  case RT_PG_E_DEADLOCK: return "deadlock detected";
  case RT_PG_E_CHECK: return "check constraint violation";
  case RT_PG_E_FOREIGN_KEY: return "foreign key violation";
  case RT_PG_E_NOT_NULL: return "not-null violation";
  case RT_PG_E_OUT_OF_RANGE: return "numeric value out of range";
  case RT_PG_E_DATA: return "invalid data";
  case RT_PG_E_STATEMENT_TIMEOUT: return "statement timeout";
  case RT_PG_E_SQL: return "SQL error";
  case RT_PG_E_CONN_LOST: return "database connection lost";
  case RT_PG_E_UNAVAILABLE: return "database unavailable";
  case RT_PG_E_TIMEOUT: return "database deadline passed";
  case RT_PG_E_POOL_FULL: return "database pool full";
  case RT_PG_E_CLOSED: return "database pool closing";
  case RT_PG_E_BATCH_FULL: return "database batch full";
  case RT_PG_E_NO_STMT: return "no such prepared statement";
  default: return "unknown database error";
  }
}

bool rt_pg_retryable(int err) {
  return err == RT_PG_E_SERIALIZATION || err == RT_PG_E_DEADLOCK;
}

/* Maps a SQLSTATE to our code. NULL means the error came from libpq itself
 * (the connection broke), not from the server. */
static int map_sqlstate(const char *s) {
  if (s == NULL || strlen(s) != 5) return RT_PG_E_CONN_LOST;
  if (strcmp(s, "23505") == 0) return RT_PG_E_UNIQUE;
  if (strcmp(s, "40001") == 0) return RT_PG_E_SERIALIZATION;
  if (strcmp(s, "40P01") == 0) return RT_PG_E_DEADLOCK;
  if (strcmp(s, "23514") == 0) return RT_PG_E_CHECK;
  if (strcmp(s, "23503") == 0) return RT_PG_E_FOREIGN_KEY;
  if (strcmp(s, "23502") == 0) return RT_PG_E_NOT_NULL;
  if (strcmp(s, "22003") == 0) return RT_PG_E_OUT_OF_RANGE;
  if (strcmp(s, "57014") == 0) return RT_PG_E_STATEMENT_TIMEOUT;
  if (strncmp(s, "22", 2) == 0) return RT_PG_E_DATA;
  /* Connection exceptions and the server going away (admin shutdown,
   * crash shutdown, cannot connect now). */
  if (strncmp(s, "08", 2) == 0 || strncmp(s, "57P", 3) == 0) return RT_PG_E_CONN_LOST;
  if (strcmp(s, "53300") == 0) return RT_PG_E_UNAVAILABLE; /* too many connections */
  return RT_PG_E_SQL;
}

/* Copies what went wrong into the batch, once: the first error wins. */
static void batch_set_error(rt_pg_batch_t *b, int code, int stmt_index,
                            const PGresult *res, const char *detail) {
  if (b->err != 0) return;
  b->err = code;
  rt_pg_error_t *e = &b->error;
  e->code = code;
  e->stmt_index = stmt_index;
  const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  const char *cons = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
  const char *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
  snprintf(e->sqlstate, sizeof e->sqlstate, "%s", state ? state : "");
  snprintf(e->constraint, sizeof e->constraint, "%s", cons ? cons : "");
  snprintf(e->message, sizeof e->message, "%s",
           msg ? msg : (detail ? detail : rt_pg_strerror(code)));
}

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */
/* ------------------------------------------------------------------------ */

void rt_pg_config_defaults(rt_pg_config_t *c) {
  if (c->name == NULL) c->name = "pg";
  if (c->conns_count == 0) c->conns_count = 4;
  if (c->pipeline_depth == 0) c->pipeline_depth = 64;
  if (c->queue_max == 0) c->queue_max = 1024;
  if (c->large_batches == 0) c->large_batches = 16;
  if (c->statement_timeout_ms == 0) c->statement_timeout_ms = 5000;
  if (c->deadline_ms == 0) c->deadline_ms = 10000;
  if (c->connect_timeout_ms == 0) c->connect_timeout_ms = 5000;
  if (c->backoff_min_ms == 0) c->backoff_min_ms = 50;
  if (c->backoff_max_ms == 0) c->backoff_max_ms = 2000;
}

int rt_pg_config_from_env(rt_pg_config_t *c, const char *prefix) {
  char name[64];
  int rc = 0;
#define ENV_NAME(suffix) (snprintf(name, sizeof name, "%s_%s", prefix, suffix), name)
  rc = rt_env_u32(ENV_NAME("CONNS"), c->conns_count ? c->conns_count : 4, 1,
                  RT_PG_CONNS_MAX, &c->conns_count);
  if (rc == 0)
    rc = rt_env_u32(ENV_NAME("PIPELINE_DEPTH"), c->pipeline_depth ? c->pipeline_depth : 64,
                    1, 4096, &c->pipeline_depth);
  if (rc == 0)
    rc = rt_env_u32(ENV_NAME("QUEUE_MAX"), c->queue_max ? c->queue_max : 1024, 1,
                    1u << 20, &c->queue_max);
  if (rc == 0)
    rc = rt_env_u32(ENV_NAME("LARGE_BATCHES"), c->large_batches ? c->large_batches : 16, 1,
                    4096, &c->large_batches);
  uint32_t st = 0;
  if (rc == 0) rc = rt_env_ms(ENV_NAME("STATEMENT_TIMEOUT"), 5000, &st);
  if (rc == 0) c->statement_timeout_ms = st == 0 ? RT_PG_TIMEOUT_NONE : st;
  if (rc == 0) rc = rt_env_ms(ENV_NAME("DEADLINE"), 10000, &c->deadline_ms);
  if (rc == 0) rc = rt_env_ms(ENV_NAME("CONNECT_TIMEOUT"), 5000, &c->connect_timeout_ms);
#undef ENV_NAME
  return rc;
}

/* The number of items of a comma-separated list ("" has one). */
static uint32_t list_count(const char *list) {
  uint32_t n = 1;
  for (const char *c = list; *c != '\0'; c++) n += *c == ',';
  return n;
}

/* Writes list's items (comma-separated, count of them) into out starting
 * at item `first` and wrapping around: "a,b,c" from 1 is "b,c,a". A list
 * of one item is copied as it is. */
static void list_rotate(const char *list, uint32_t count, uint32_t first, char *out,
                        size_t out_bytes) {
  assert(out_bytes > strlen(list));
  if (list_count(list) != count || count <= 1) {
    snprintf(out, out_bytes, "%s", list);
    return;
  }
  size_t len = 0;
  for (uint32_t i = 0; i < count; i++) {
    uint32_t want = (first + i) % count;
    const char *item = list;
    for (uint32_t j = 0; j < want; j++) item = strchr(item, ',') + 1;
    size_t item_len = strcspn(item, ",");
    if (i > 0) out[len++] = ',';
    memcpy(out + len, item, item_len);
    len += item_len;
  }
  out[len] = '\0';
}

/* Checks the URL and builds the keyword list: the URL expanded as dbname,
 * then our settings, which override it. The options the URL may carry are
 * kept and ours appended. */
static int pool_conninfo(rt_pg_pool_t *p) {
  char *errmsg = NULL;
  PQconninfoOption *opts = PQconninfoParse(p->config.url, &errmsg);
  if (opts == NULL) {
    /* libpq's message may quote the URL, password included: not logged. */
    RT_ERROR("database URL is malformed", RT_LF_STR("pool", p->name));
    PQfreemem(errmsg);
    return RT_E_CONFIG;
  }
  const char *url_options = NULL, *app = NULL, *gss = NULL, *hosts = NULL, *ports = NULL;
  bool hostaddr = false;
  for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
    if (o->val == NULL) continue;
    if (strcmp(o->keyword, "options") == 0) url_options = o->val;
    if (strcmp(o->keyword, "application_name") == 0) app = o->val;
    if (strcmp(o->keyword, "gssencmode") == 0) gss = o->val;
    if (strcmp(o->keyword, "host") == 0) hosts = o->val;
    if (strcmp(o->keyword, "port") == 0) ports = o->val;
    if (strcmp(o->keyword, "hostaddr") == 0) hostaddr = true;
  }
  int n = 0;
  if (p->config.statement_timeout_ms != RT_PG_TIMEOUT_NONE) {
    n = snprintf(p->options, sizeof p->options, "%s%s-c statement_timeout=%u",
                 url_options ? url_options : "", url_options ? " " : "",
                 p->config.statement_timeout_ms);
  } else {
    n = snprintf(p->options, sizeof p->options, "%s", url_options ? url_options : "");
  }
  snprintf(p->app_name, sizeof p->app_name, "%s", app ? app : p->name);
  uint32_t k = 0;
  p->keywords[k] = "dbname", p->values[k++] = p->config.url;
  p->keywords[k] = "options", p->values[k++] = p->options;
  p->keywords[k] = "application_name", p->values[k++] = p->app_name;
  /* GSSAPI negotiation could look for Kerberos credentials: not here. */
  if (gss == NULL) p->keywords[k] = "gssencmode", p->values[k++] = "disable";
  /* Detect a dead peer on an idle connection within about a minute. */
  p->keywords[k] = "keepalives", p->values[k++] = "1";
  p->keywords[k] = "keepalives_idle", p->values[k++] = "30";
  /* Several hosts (and no hostaddr list to keep in step): host and port
   * given again after dbname, which they override, rotated per attempt. */
  uint32_t n_hosts = hosts ? list_count(hosts) : 0;
  uint32_t n_ports = ports ? list_count(ports) : 0;
  if (n_hosts > 1 && !hostaddr && strlen(hosts) < sizeof p->hosts &&
      (ports == NULL || strlen(ports) < sizeof p->ports) && (n_ports <= 1 || n_ports == n_hosts)) {
    snprintf(p->hosts, sizeof p->hosts, "%s", hosts);
    snprintf(p->ports, sizeof p->ports, "%s", ports ? ports : "");
    p->hosts_count = n_hosts;
    p->keywords[k] = "host", p->values[k++] = p->hosts_rot;
    p->keywords[k] = "port", p->values[k++] = p->ports_rot;
  }
  p->keywords[k] = NULL, p->values[k] = NULL;
  assert(k < sizeof p->keywords / sizeof p->keywords[0]);
  PQconninfoFree(opts);
  if (n < 0 || (size_t)n >= sizeof p->options) {
    RT_ERROR("database URL options too long", RT_LF_STR("pool", p->name));
    return RT_E_CONFIG;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* Batches: building                                                        */
/* ------------------------------------------------------------------------ */

void rt_pg_batch_first(rt_pg_batch_t *b) { b->first = true; }

rt_pg_batch_t *rt_pg_batch_new(rt_pg_pool_t *p) {
  rt_pg_batch_t *b = rt_pool_get(&p->batches); /* zeroed */
  if (b == NULL) return NULL;
  b->pool = p;
  b->state = BATCH_BUILDING;
  b->error.stmt_index = -1;
  b->arena = b->arena_inline;
  b->arena_cap = sizeof b->arena_inline;
  rt_timer_init(&b->deadline, NULL, b);
  return b;
}

/* Room for n more bytes: the inline arena, else once a large one, which
 * holds everything a batch may carry. */
static int arena_reserve(rt_pg_batch_t *b, uint32_t n) {
  if (n > RT_PG_BATCH_BYTES_MAX - b->arena_len) return RT_PG_E_BATCH_FULL;
  if (b->arena_len + n <= b->arena_cap) return 0;
  if (NEVER(b->arena != b->arena_inline)) return RT_PG_E_BATCH_FULL;
  rt_pg_pool_t *p = b->pool;
  char *large = rt_pool_take(&p->large); /* written before it is read */
  if (large == NULL) {
    STAT_ADD(p, rejected_large, 1);
    return RT_PG_E_POOL_FULL;
  }
  memcpy(large, b->arena_inline, b->arena_len);
  b->arena = large;
  b->arena_cap = RT_PG_BATCH_BYTES_MAX;
  return 0;
}

/* Copies bytes into the arena (4-byte aligned start); returns the offset. */
static int arena_put(rt_pg_batch_t *b, const void *data, uint32_t n,
                     uint32_t *off) {
  uint32_t pad = (4 - (b->arena_len & 3u)) & 3u;
  int rc = arena_reserve(b, n + pad);
  if (rc < 0) return rc;
  b->arena_len += pad;
  *off = b->arena_len;
  if (n > 0) memcpy(b->arena + b->arena_len, data, n);
  b->arena_len += n;
  return 0;
}

/* True for statements that would end or start a transaction, which would
 * break the one-batch-one-transaction rule for this batch and its
 * pipeline neighbours. */
static bool is_txn_control(const char *sql) {
  static const char *const words[] = {"BEGIN", "COMMIT", "ROLLBACK", "START",
                                      "END", "ABORT", "SAVEPOINT", "RELEASE",
                                      "PREPARE", NULL};
  while (isspace((unsigned char)*sql)) sql++;
  for (size_t i = 0; words[i] != NULL; i++) {
    size_t n = strlen(words[i]);
    if (strncasecmp(sql, words[i], n) == 0 &&
        !isalnum((unsigned char)sql[n]) && sql[n] != '_')
      return true;
  }
  return false;
}

static int batch_fail_build(rt_pg_batch_t *b, int err) {
  if (b->build_err == 0) b->build_err = err;
  return err;
}

static int batch_add(rt_pg_batch_t *b, int32_t stmt, const char *sql,
                     int nparams, const char *const *values) {
  assert(b->state == BATCH_BUILDING);
  if (b->build_err != 0) return b->build_err;
  if (b->count == RT_PG_BATCH_STMTS_MAX) return batch_fail_build(b, RT_PG_E_BATCH_FULL);
  if (nparams < 0 || nparams > RT_PG_PARAMS_MAX) return batch_fail_build(b, -EINVAL);
  if (nparams > 0 && values == NULL) return batch_fail_build(b, -EINVAL);
  stmt_ref_t *ref = &b->stmts[b->count];
  ref->stmt = stmt;
  ref->nparams = (uint16_t)nparams;
  int rc = 0;
  if (sql != NULL) rc = arena_put(b, sql, (uint32_t)strlen(sql) + 1, &ref->sql_off);
  uint32_t offs[RT_PG_PARAMS_MAX];
  for (int i = 0; i < nparams && rc == 0; i++) {
    if (values[i] == NULL) {
      offs[i] = UINT32_MAX;
      continue;
    }
    size_t len = strlen(values[i]);
    if (len >= RT_PG_BATCH_BYTES_MAX) {
      rc = RT_PG_E_BATCH_FULL;
      break;
    }
    rc = arena_put(b, values[i], (uint32_t)len + 1, &offs[i]);
  }
  if (rc == 0) rc = arena_put(b, offs, (uint32_t)(sizeof offs[0] * (size_t)nparams), &ref->params_off);
  if (rc < 0) return batch_fail_build(b, rc);
  return b->count++;
}

int rt_pg_add(rt_pg_batch_t *b, int stmt, int nparams, const char *const *values) {
  rt_pg_pool_t *p = b->pool;
  if (b->build_err != 0) return b->build_err;
  if (stmt < 0 || (uint32_t)stmt >= p->stmts_count) return batch_fail_build(b, RT_PG_E_NO_STMT);
  if (p->stmts[stmt].nparams != nparams) return batch_fail_build(b, -EINVAL);
  return batch_add(b, stmt, NULL, nparams, values);
}

int rt_pg_add_sql(rt_pg_batch_t *b, const char *sql, int nparams,
                  const char *const *values) {
  if (b->build_err != 0) return b->build_err;
  if (sql == NULL || is_txn_control(sql)) return batch_fail_build(b, -EINVAL);
  return batch_add(b, -1, sql, nparams, values);
}

void rt_pg_batch_free(rt_pg_batch_t *b) {
  if (b == NULL) return;
  assert(b->state == BATCH_BUILDING);
  batch_release(b);
}

/* ------------------------------------------------------------------------ */
/* Batches: results                                                         */
/* ------------------------------------------------------------------------ */

int rt_pg_count(const rt_pg_batch_t *b) { return b->count; }

const PGresult *rt_pg_result(const rt_pg_batch_t *b, int i) {
  if (i < 0 || i >= b->count) return NULL;
  return b->results[i];
}

int rt_pg_rows(const rt_pg_batch_t *b, int i) {
  const PGresult *r = rt_pg_result(b, i);
  if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) return 0;
  return PQntuples(r);
}

int64_t rt_pg_affected(const rt_pg_batch_t *b, int i) {
  const PGresult *r = rt_pg_result(b, i);
  if (r == NULL) return 0;
  const char *t = PQcmdTuples((PGresult *)r);
  return (t == NULL || *t == '\0') ? 0 : strtoll(t, NULL, 10);
}

const char *rt_pg_value(const rt_pg_batch_t *b, int i, int row, int col) {
  const PGresult *r = rt_pg_result(b, i);
  if (r == NULL || PQresultStatus(r) != PGRES_TUPLES_OK) return NULL;
  if (row < 0 || row >= PQntuples(r) || col < 0 || col >= PQnfields(r)) return NULL;
  if (PQgetisnull(r, row, col)) return NULL;
  return PQgetvalue(r, row, col);
}

int rt_pg_int64(const rt_pg_batch_t *b, int i, int row, int col, int64_t *out) {
  const char *v = rt_pg_value(b, i, row, col);
  if (v == NULL) return -ENOENT;
  char *end = NULL;
  errno = 0;
  long long x = strtoll(v, &end, 10);
  if (errno == ERANGE) return -ERANGE;
  if (end == v || *end != '\0') return -EINVAL;
  *out = (int64_t)x;
  return 0;
}

const rt_pg_error_t *rt_pg_error(const rt_pg_batch_t *b) { return &b->error; }

/* ------------------------------------------------------------------------ */
/* Batches: completion                                                      */
/* ------------------------------------------------------------------------ */

static void batch_release(rt_pg_batch_t *b) {
  rt_pg_pool_t *p = b->pool;
  for (int i = 0; i < b->count; i++) {
    if (b->results[i] != NULL) PQclear(b->results[i]);
  }
  if (b->arena != b->arena_inline) rt_pool_put(&p->large, b->arena);
  b->arena = NULL;
  b->state = BATCH_FREE;
  rt_pool_put(&p->batches, b);
}

/* Answers the caller (unless the deadline already did) and frees. */
static void batch_finish(rt_pg_batch_t *b) {
  rt_pg_pool_t *p = b->pool;
  rt_timer_stop(p->loop, &b->deadline);
  if (!b->abandoned) {
    uint64_t us = (rt_loop_now_ns(p->loop) - b->submitted_ns) / 1000u;
    STAT_ADD(p, latency_us_sum, us);
    if (b->err == 0) {
      STAT_ADD(p, batches_ok, 1);
    } else {
      STAT_ADD(p, batches_failed, 1);
    }
    b->cb(b, b->err, b->ctx);
  }
  batch_release(b);
}

/* Fails a batch that never reached the server (queued). */
static void batch_fail_unsent(rt_pg_batch_t *b, int err) {
  batch_set_error(b, err, -1, NULL, NULL);
  batch_finish(b);
}

static void queue_remove(rt_pg_pool_t *p, rt_pg_batch_t *b) {
  rt_pg_batch_t **pp = &p->queue_head;
  rt_pg_batch_t *prev = NULL;
  while (*pp != NULL && *pp != b) {
    prev = *pp;
    pp = &(*pp)->next;
  }
  assert(*pp == b);
  *pp = b->next;
  if (p->queue_tail == b) p->queue_tail = prev;
  b->next = NULL;
  p->queued--;
  STAT_SUB(p, queued, 1);
}

static void batch_deadline(rt_timer_t *t) {
  rt_pg_batch_t *b = t->ctx;
  rt_pg_pool_t *p = b->pool;
  STAT_ADD(p, timeouts, 1);
  if (b->state == BATCH_QUEUED) {
    queue_remove(p, b);
    batch_fail_unsent(b, RT_PG_E_TIMEOUT);
    pool_maybe_closed(p);
    return;
  }
  assert(b->state == BATCH_IN_FLIGHT);
  /* Answer now; the results, when they come, are read and dropped. */
  batch_set_error(b, RT_PG_E_TIMEOUT, -1, NULL, NULL);
  b->abandoned = true;
  STAT_ADD(p, batches_failed, 1);
  /* Answer first: watching may reset the connection, which releases the
   * abandoned batch. */
  pg_conn_t *c = b->conn;
  b->cb(b, RT_PG_E_TIMEOUT, b->ctx);
  if (c->state == CONN_READY) conn_watch(c);
}

/* ------------------------------------------------------------------------ */
/* Connections: sending                                                     */
/* ------------------------------------------------------------------------ */

static bool conn_prepared(const pg_conn_t *c, int32_t s) {
  return (c->prepared[s / 64] >> (s % 64)) & 1u;
}

static void conn_set_prepared(pg_conn_t *c, int32_t s, bool on) {
  uint64_t bit = (uint64_t)1 << (s % 64);
  if (on) {
    c->prepared[s / 64] |= bit;
  } else {
    c->prepared[s / 64] &= ~bit;
  }
}

static void conn_flush(pg_conn_t *c);

static void flush_soon(rt_pg_pool_t *p, pg_conn_t *c) {
  c->needs_flush = true;
  if (p->in_flush || rt_timer_armed(&p->flush_timer)) return;
  /* No timer to gather the flushes of this iteration: flush this one now. */
  if (rt_timer_start(p->loop, &p->flush_timer, 0, 0) < 0) conn_flush(c);
}

/* Queues a batch's messages in libpq's buffer. Parses come first, so that
 * a statement prepared here is never skipped by an error of the same batch
 * before later batches rely on it. Returns false when libpq refused (the
 * connection is broken). */
static bool conn_send_batch(pg_conn_t *c, rt_pg_batch_t *b) {
  rt_pg_pool_t *p = c->pool;
  b->items_count = 0;
  b->cursor = 0;
  for (int i = 0; i < b->count; i++) {
    int32_t s = b->stmts[i].stmt;
    if (s < 0 || conn_prepared(c, s)) continue;
    const pg_stmt_t *st = &p->stmts[s];
    if (!PQsendPrepare(c->pg, st->name, st->sql, st->nparams, NULL)) return false;
    conn_set_prepared(c, s, true);
    b->items[b->items_count++] = (uint8_t)(ITEM_PREPARE | i);
  }
  for (int i = 0; i < b->count; i++) {
    const stmt_ref_t *ref = &b->stmts[i];
    const char *vals[RT_PG_PARAMS_MAX];
    const uint32_t *offs = (const uint32_t *)(const void *)(b->arena + ref->params_off);
    for (int k = 0; k < ref->nparams; k++)
      vals[k] = offs[k] == UINT32_MAX ? NULL : b->arena + offs[k];
    int ok;
    if (ref->stmt >= 0) {
      ok = PQsendQueryPrepared(c->pg, p->stmts[ref->stmt].name, ref->nparams,
                               ref->nparams ? vals : NULL, NULL, NULL, 0);
    } else {
      ok = PQsendQueryParams(c->pg, b->arena + ref->sql_off, ref->nparams, NULL,
                             ref->nparams ? vals : NULL, NULL, NULL, 0);
    }
    if (!ok) return false;
    b->items[b->items_count++] = (uint8_t)(ITEM_STMT | i);
  }
  if (!PQpipelineSync(c->pg)) return false;
  b->items[b->items_count++] = ITEM_SYNC;
  STAT_ADD(p, statements, b->count);
  return true;
}

static void conn_push(pg_conn_t *c, rt_pg_batch_t *b) {
  b->state = BATCH_IN_FLIGHT;
  b->conn = c;
  b->next = NULL;
  if (c->tail != NULL) {
    c->tail->next = b;
  } else {
    c->head = b;
  }
  c->tail = b;
  c->in_flight++;
  STAT_ADD(c->pool, in_flight, 1);
}

static rt_pg_batch_t *conn_pop(pg_conn_t *c) {
  rt_pg_batch_t *b = c->head;
  if (b == NULL) return NULL;
  c->head = b->next;
  if (c->head == NULL) c->tail = NULL;
  b->next = NULL;
  c->in_flight--;
  STAT_SUB(c->pool, in_flight, 1);
  return b;
}

/* Hands a batch to a connection. On a libpq refusal the connection fails,
 * taking the batch with it. */
static void conn_dispatch(pg_conn_t *c, rt_pg_batch_t *b) {
  conn_push(c, b);
  if (!conn_send_batch(c, b)) {
    conn_fail(c, RT_PG_E_CONN_LOST, RT_PG_E_CONN_LOST);
    return;
  }
  flush_soon(c->pool, c);
}

static void conn_out_ready(rt_op_t *op, int res, uint32_t flags);

/* Writes what libpq holds; waits for POLLOUT when the socket is full. */
static void conn_flush(pg_conn_t *c) {
  c->needs_flush = false;
  if (c->state != CONN_READY) return;
  STAT_ADD(c->pool, flushes, 1);
  int rc = PQflush(c->pg);
  if (rc < 0) {
    conn_fail(c, RT_PG_E_CONN_LOST, RT_PG_E_CONN_LOST);
  } else if (rc > 0 && !c->poll_out.in_flight) {
    rt_poll(c->pool->loop, &c->poll_out, c->fd, POLLOUT, conn_out_ready, c);
  }
}

static void conn_out_ready(rt_op_t *op, int res, uint32_t flags) {
  pg_conn_t *c = op->ctx;
  if (c->state == CONN_CLOSING) {
    conn_continue_close(c);
    return;
  }
  if (c->state != CONN_READY) return;
  if (res < 0) {
    conn_fail(c, RT_PG_E_CONN_LOST, RT_PG_E_CONN_LOST);
    return;
  }
  conn_flush(c);
}

/* The zero-delay timer: dispatch what was submitted during the last
 * iteration, then write each connection's pipeline once. */
static void pool_flush(rt_timer_t *t) {
  rt_pg_pool_t *p = t->ctx;
  p->in_flush = true;
  pool_pump(p);
  for (uint32_t i = 0; i < conns_total(p); i++) {
    if (p->conns[i].needs_flush) conn_flush(&p->conns[i]);
  }
  p->in_flush = false;
}

/* ------------------------------------------------------------------------ */
/* Connections: receiving                                                   */
/* ------------------------------------------------------------------------ */

/* Arms the stall watchdog (once a batch in flight has been abandoned): if
 * the head of the pipeline has not moved when it fires, the server is not
 * answering on this connection. */
static void conn_watch(pg_conn_t *c) {
  if (c->head == NULL || rt_timer_armed(&c->stall_timer)) return;
  uint32_t st = c->pool->config.statement_timeout_ms;
  uint32_t ms = (st == RT_PG_TIMEOUT_NONE ? c->pool->config.deadline_ms : st) + STALL_GRACE_MS;
  c->stall_seq = c->head->seq;
  if (rt_timer_start(c->pool->loop, &c->stall_timer, ms, 0) < 0) {
    /* A connection nothing would reset if the server stopped answering:
     * reset it now. Its abandoned batches were answered already. */
    RT_WARN("database connection without stall watchdog, resetting",
            RT_LF_STR("pool", c->pool->name), RT_LF_INT("conn", c->index));
    conn_fail(c, RT_PG_E_TIMEOUT, RT_PG_E_TIMEOUT);
  }
}

static bool conn_has_abandoned(const pg_conn_t *c) {
  uint32_t n = 0;
  for (const rt_pg_batch_t *b = c->head; b != NULL && n <= c->in_flight; b = b->next, n++)
    if (b->abandoned) return true;
  return false;
}

static void conn_stalled(rt_timer_t *t) {
  pg_conn_t *c = t->ctx;
  if (c->state != CONN_READY || c->head == NULL) return;
  if (c->head->seq != c->stall_seq) {
    if (conn_has_abandoned(c)) conn_watch(c); /* progress: watch again */
    return;
  }
  RT_WARN("database connection stalled, resetting", RT_LF_STR("pool", c->pool->name),
          RT_LF_INT("conn", c->index), RT_LF_INT("in_flight", c->in_flight));
  conn_fail(c, RT_PG_E_TIMEOUT, RT_PG_E_TIMEOUT);
}

/* One result (or the NULL that ends an item) for the head batch. Returns
 * true when the head batch is complete. */
static bool conn_take_result(pg_conn_t *c, rt_pg_batch_t *b, PGresult *r) {
  assert(b->cursor < b->items_count);
  uint8_t item = b->items[b->cursor];
  ExecStatusType st = r ? PQresultStatus(r) : PGRES_EMPTY_QUERY;
  if (item == ITEM_SYNC) {
    /* The reader stops at a NULL where a Sync is due (see below). */
    if (NEVER(r == NULL)) return false;
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      return true;
    }
    /* An error raised at the Sync itself (a failed commit). */
    if (st == PGRES_FATAL_ERROR) {
      batch_set_error(b, map_sqlstate(PQresultErrorField(r, PG_DIAG_SQLSTATE)), -1, r, NULL);
    }
    PQclear(r);
    return false;
  }
  if (r == NULL) {
    b->cursor++; /* this item's results are complete */
    return false;
  }
  int i = item & 0x3f;
  if (item & ITEM_STMT) {
    if (st == PGRES_FATAL_ERROR) {
      batch_set_error(b, map_sqlstate(PQresultErrorField(r, PG_DIAG_SQLSTATE)), i, r, NULL);
    }
    if (st == PGRES_PIPELINE_ABORTED) {
      PQclear(r); /* it did not run: its result stays NULL */
      return false;
    }
    if (b->results[i] != NULL) PQclear(b->results[i]);
    b->results[i] = r;
    return false;
  }
  /* A Parse of ours. */
  if (st != PGRES_COMMAND_OK) {
    /* Not prepared after all: a later batch will try again. */
    conn_set_prepared(c, b->stmts[i].stmt, false);
    if (st == PGRES_FATAL_ERROR) {
      batch_set_error(b, map_sqlstate(PQresultErrorField(r, PG_DIAG_SQLSTATE)), i, r, NULL);
    }
  }
  PQclear(r);
  return false;
}

/* Reads every complete result libpq holds. */
/* Hands over the results libpq has parsed; returns how many batches
 * they finished. */
static uint32_t conn_read_results(pg_conn_t *c) {
  uint32_t finished = 0;
  for (uint32_t n = 0; n < READ_RESULTS_MAX && c->state == CONN_READY; n++) {
    rt_pg_batch_t *b = c->head;
    if (b == NULL || PQisBusy(c->pg)) break;
    PGresult *r = PQgetResult(c->pg);
    bool sync_item = b->items[b->cursor] == ITEM_SYNC;
    /* Not busy means a result is ready; a Sync is never preceded by a NULL. */
    if (sync_item && NEVER(r == NULL)) break;
    if (!conn_take_result(c, b, r)) continue;
    conn_pop(c);
    batch_finish(b);
    finished++;
  }
  /* Results arriving with nothing in flight are not ours: drop them. */
  if (c->state == CONN_READY && c->head == NULL && !PQisBusy(c->pg)) {
    PGresult *r;
    for (uint32_t n = 0; n < 16 && (r = PQgetResult(c->pg)) != NULL; n++) PQclear(r);
  }
  return finished;
}

/* Reads what the socket holds and hands the results over. Returns false
 * when the connection failed (and was handed to conn_fail()).
 *
 * Over TLS one PQconsumeInput takes one record, and PostgreSQL makes a
 * record of each of its flushes: in a pipeline, one per Sync. One read
 * per wake-up would finish one batch per loop iteration, and the batches
 * queued behind it would leave one write each. So while a record finishes
 * batches, read again, up to TLS_READS_MAX records: the last read finds
 * the kernel empty, one recv a plain connection does not pay.
 *
 * POLLIN sees only what the kernel holds, not what OpenSSL has decrypted
 * and kept: enough, because libpq always reads with room for 8 KiB and
 * PostgreSQL sends no larger record, so each record read is taken whole.
 * (A proxy in between that sends larger records could leave bytes in
 * OpenSSL that no POLLIN announces: libpq's async API has that limit for
 * every caller.) */
static bool conn_read(pg_conn_t *c) {
  uint32_t reads_max = PQsslInUse(c->pg) ? TLS_READS_MAX : 1;
  for (uint32_t reads = 0; reads < reads_max; reads++) {
    if (!PQconsumeInput(c->pg)) {
      RT_WARN("database connection lost", RT_LF_STR("pool", c->pool->name),
              RT_LF_INT("conn", c->index), RT_LF_INT("in_flight", c->in_flight));
      conn_fail(c, RT_PG_E_CONN_LOST, RT_PG_E_CONN_LOST);
      return false;
    }
    uint32_t finished = conn_read_results(c);
    if (c->state != CONN_READY) return false;
    if (finished == 0) break;
  }
  return true;
}

static void conn_in_ready(rt_op_t *op, int res, uint32_t flags) {
  pg_conn_t *c = op->ctx;
  if (c->state == CONN_CLOSING) {
    conn_continue_close(c);
    return;
  }
  if (c->state != CONN_READY) return;
  if (res < 0) {
    conn_fail(c, RT_PG_E_CONN_LOST, RT_PG_E_CONN_LOST);
    return;
  }
  if (!conn_read(c)) return;
  if (c->listener) listen_deliver(c);
  if (PQstatus(c->pg) == CONNECTION_BAD) {
    conn_fail(c, RT_PG_E_CONN_LOST, RT_PG_E_CONN_LOST);
    return;
  }
  /* libpq may have bytes to write that waited for the socket to drain. */
  if (c->needs_flush || PQflush(c->pg) > 0) conn_flush(c);
  if (c->state != CONN_READY) return;
  conn_arm_in(c);
  pool_pump(c->pool);
}

static void conn_arm_in(pg_conn_t *c) {
  if (!c->poll_in.in_flight)
    rt_poll(c->pool->loop, &c->poll_in, c->fd, POLLIN, conn_in_ready, c);
}

/* ------------------------------------------------------------------------ */
/* Connections: life cycle                                                  */
/* ------------------------------------------------------------------------ */

static void notice_ignore(void *arg, const char *message) {
  /* Notices (e.g. "relation already exists, skipping") are not errors;
   * libpq would print them on stderr. They may quote data: not logged. */
}

static void pool_update_down(rt_pg_pool_t *p, bool attempt_failed) {
  uint32_t up = atomic_load_explicit(&p->stats.conns_up, memory_order_relaxed);
  if (up > 0) {
    if (p->down) RT_INFO("database reachable again", RT_LF_STR("pool", p->name));
    p->down = false;
    return;
  }
  if (!attempt_failed || p->down) return;
  p->down = true;
  RT_WARN("database unreachable, failing requests fast until it is back",
          RT_LF_STR("pool", p->name), RT_LF_INT("queued", p->queued));
  /* Nobody will serve the queue soon: answer it now. */
  for (uint32_t n = 0; n < p->config.queue_max + 1 && p->queue_head != NULL; n++) {
    rt_pg_batch_t *b = p->queue_head;
    queue_remove(p, b);
    batch_fail_unsent(b, RT_PG_E_UNAVAILABLE);
  }
  pool_maybe_closed(p);
}

/* The last step of a close, once no op is in flight any more: the socket
 * is closed only now, as a pending poll holds a reference to it. */
static void conn_continue_close(pg_conn_t *c) {
  if (c->state != CONN_CLOSING) return;
  if (c->poll_in.in_flight || c->poll_out.in_flight) return;
  if (c->cancel_in.in_flight || c->cancel_out.in_flight) return;
  rt_pg_pool_t *p = c->pool;
  if (c->pg != NULL) PQfinish(c->pg);
  c->pg = NULL;
  c->fd = -1;
  c->state = CONN_DOWN;
  rt_actor_stop(&c->actor, c->close_reason); /* the supervisor restarts it */
  pool_maybe_closed(p);
}

static void conn_cancel_done(rt_op_t *op, int res, uint32_t flags) {
  conn_continue_close(op->ctx);
}

/* Fails a connection: batches in flight get batch_err, ops are cancelled,
 * and the close finishes when they are back. reason 0 is a clean close. */
static void conn_fail(pg_conn_t *c, int reason, int batch_err) {
  rt_pg_pool_t *p = c->pool;
  if (c->state == CONN_DOWN) return;
  if (c->state != CONN_CLOSING) {
    bool was_ready = c->state == CONN_READY && !c->listener;
    c->state = CONN_CLOSING;
    c->close_reason = reason;
    c->needs_flush = false;
    rt_timer_stop(p->loop, &c->connect_timer);
    rt_timer_stop(p->loop, &c->stall_timer);
    if (was_ready) STAT_SUB(p, conns_up, 1);
    if (c->poll_in.in_flight)
      rt_cancel(p->loop, &c->cancel_in, &c->poll_in, conn_cancel_done, c);
    if (c->poll_out.in_flight)
      rt_cancel(p->loop, &c->cancel_out, &c->poll_out, conn_cancel_done, c);
    /* Detach the pipeline before answering: callbacks may submit again. */
    rt_pg_batch_t *b = c->head;
    uint32_t lost = c->in_flight;
    c->head = c->tail = NULL;
    c->in_flight = 0;
    STAT_SUB(p, in_flight, lost);
    if (batch_err == RT_PG_E_CONN_LOST) STAT_ADD(p, conn_lost, lost);
    while (b != NULL) {
      rt_pg_batch_t *next = b->next;
      b->next = NULL;
      batch_set_error(b, batch_err ? batch_err : RT_PG_E_CLOSED, -1, NULL, NULL);
      batch_finish(b);
      b = next;
    }
    if (was_ready) pool_update_down(p, false);
  }
  conn_continue_close(c);
}

static void conn_connect_step(pg_conn_t *c);

static void conn_connect_ready(rt_op_t *op, int res, uint32_t flags) {
  pg_conn_t *c = op->ctx;
  if (c->state == CONN_CLOSING) {
    conn_continue_close(c);
    return;
  }
  if (c->state != CONN_CONNECTING) return;
  if (res < 0) {
    conn_fail(c, RT_PG_E_UNAVAILABLE, RT_PG_E_UNAVAILABLE);
    return;
  }
  conn_connect_step(c);
}

static void conn_connect_failed(pg_conn_t *c, const char *why) {
  rt_pg_pool_t *p = c->pool;
  STAT_ADD(p, connect_failures, 1);
  /* libpq's message names host and port, never the password. A refused
   * certificate names the host asked for too (verify-full), which in a
   * cluster is a long service name: room for all of it. */
  char msg[256];
  const char *m = c->pg ? PQerrorMessage(c->pg) : "";
  snprintf(msg, sizeof msg, "%s", m ? m : "");
  msg[strcspn(msg, "\n")] = '\0';
  /* Once per outage at WARN; the retries every back-off at DEBUG. */
  rt_log(p->down ? RT_LOG_DEBUG : RT_LOG_WARN, "database connect failed",
         (const rt_log_field_t[]){RT_LF_STR("pool", p->name), RT_LF_INT("conn", c->index),
                                  RT_LF_STR("why", why), RT_LF_STR("error", msg)},
         4);
  conn_fail(c, RT_PG_E_UNAVAILABLE, RT_PG_E_UNAVAILABLE);
  pool_update_down(p, true);
}

/* ------------------------------------------------------------------------ */
/* The listener                                                             */
/* ------------------------------------------------------------------------ */

/*
 * Life of the listener: a connection like the others (same connect, same
 * supervision and back-off), never picked for batches. Each time it is
 * ready it runs one batch of its own, LISTEN <channel>; when that commits
 * the pool's listen_fn hears RT_PG_LISTENING, since notifications sent
 * while it was down are lost and the caller must look for what it missed.
 * Then each notification that arrives is handed over as RT_PG_NOTIFIED.
 */
static void listen_done(rt_pg_batch_t *b, int err, void *ctx) {
  pg_conn_t *c = ctx;
  rt_pg_pool_t *p = c->pool;
  if (err != 0) {
    RT_WARN("database LISTEN failed", RT_LF_STR("pool", p->name),
            RT_LF_STR("channel", p->listen_channel), RT_LF_STR("error", rt_strerror(err)));
    if (c->state == CONN_READY) conn_fail(c, err, err);
    return;
  }
  if (c->state == CONN_READY && !p->closing) p->listen_fn(p->listen_arg, RT_PG_LISTENING);
}

static void listen_send(pg_conn_t *c) {
  rt_pg_pool_t *p = c->pool;
  char sql[96];
  snprintf(sql, sizeof sql, "LISTEN \"%s\"", p->listen_channel);
  rt_pg_batch_t *b = rt_pg_batch_new(p);
  if (b == NULL) {
    conn_fail(c, -ENOMEM, RT_PG_E_CLOSED);
    return;
  }
  if (rt_pg_add_sql(b, sql, 0, NULL) < 0) {
    rt_pg_batch_free(b);
    conn_fail(c, -EINVAL, RT_PG_E_CLOSED);
    return;
  }
  b->cb = listen_done;
  b->ctx = c;
  b->seq = ++p->seq;
  b->submitted_ns = rt_loop_now_ns(p->loop);
  b->deadline.cb = batch_deadline;
  if (rt_timer_start(p->loop, &b->deadline, p->config.deadline_ms, 0) < 0) {
    batch_release(b);
    conn_fail(c, RT_E_LIMIT, RT_PG_E_CLOSED);
    return;
  }
  conn_dispatch(c, b);
}

/* Hands over the notifications libpq has parsed; bounded by what one read
 * brought in. */
static void listen_deliver(pg_conn_t *c) {
  rt_pg_pool_t *p = c->pool;
  PGnotify *n;
  while (c->state == CONN_READY && (n = PQnotifies(c->pg)) != NULL) {
    PQfreemem(n);
    STAT_ADD(p, notifies, 1);
    if (!p->closing) p->listen_fn(p->listen_arg, RT_PG_NOTIFIED);
  }
}

int rt_pg_listen(rt_pg_pool_t *p, const char *channel, rt_pg_notify_fn fn, void *arg) {
  if (p->started || p->listen_fn != NULL) return -EALREADY;
  if (fn == NULL || channel == NULL || channel[0] == '\0' ||
      strlen(channel) >= sizeof p->listen_channel)
    return -EINVAL;
  for (const char *ch = channel; *ch != '\0'; ch++)
    if (!isalnum((unsigned char)*ch) && *ch != '_') return -EINVAL;
  if (p->config.conns_count + 1u > RT_SUP_CHILDREN_MAX) return RT_E_CONFIG;
  snprintf(p->listen_channel, sizeof p->listen_channel, "%s", channel);
  p->listen_fn = fn;
  p->listen_arg = arg;
  return 0;
}

static void conn_ready(pg_conn_t *c) {
  rt_pg_pool_t *p = c->pool;
  rt_timer_stop(p->loop, &c->connect_timer);
  PQsetNoticeProcessor(c->pg, notice_ignore, NULL);
  if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1) {
    conn_connect_failed(c, "pipeline mode");
    return;
  }
  memset(c->prepared, 0, sizeof c->prepared);
  c->state = CONN_READY;
  STAT_ADD(p, connects, 1);
  if (c->listener) {
    RT_DEBUG("database listener connected", RT_LF_STR("pool", p->name),
             RT_LF_STR("channel", p->listen_channel));
    conn_arm_in(c);
    listen_send(c);
    return;
  }
  STAT_ADD(p, conns_up, 1);
  RT_DEBUG("database connected", RT_LF_STR("pool", p->name), RT_LF_INT("conn", c->index));
  pool_update_down(p, false);
  conn_arm_in(c);
  pool_pump(p);
}

/* One step of PQconnectPoll, then wait in the direction it asks for. The
 * socket may change between steps (another address, SSL fallback). TLS
 * (sslmode=require and up) takes the same path: the SSLRequest, the
 * handshake and the certificate check are further steps that want to read
 * or to write, and a refused certificate is a failed step whose message
 * says why. */
static void conn_connect_step(pg_conn_t *c) {
  PostgresPollingStatusType st = PQconnectPoll(c->pg);
  c->fd = PQsocket(c->pg);
  switch (st) {
  case PGRES_POLLING_OK:
    conn_ready(c);
    return;
  case PGRES_POLLING_READING:
    rt_poll(c->pool->loop, &c->poll_in, c->fd, POLLIN, conn_connect_ready, c);
    return;
  case PGRES_POLLING_WRITING:
    rt_poll(c->pool->loop, &c->poll_out, c->fd, POLLOUT, conn_connect_ready, c);
    return;
  default:
    conn_connect_failed(c, "refused");
    return;
  }
}

static void conn_connect_timeout(rt_timer_t *t) {
  pg_conn_t *c = t->ctx;
  if (c->state != CONN_CONNECTING) return;
  rt_pg_pool_t *p = c->pool;
  if (p->hosts_count > 1) {
    /* The host libpq is stuck on may hang for good: the next attempt,
     * of any connection, starts one host further down the list. */
    p->host_first = (p->host_first + 1) % p->hosts_count;
  }
  conn_connect_failed(c, "timeout");
}

/* The supervisor's start function: (re)opens the connection. */
static int conn_start(rt_actor_t *actor, rt_loop_t *loop, void *arg) {
  pg_conn_t *c = arg;
  rt_pg_pool_t *p = c->pool;
  if (p->closing) return 0; /* no more restarts; the close sees it down */
  /* The supervisor restarts only a connection that went down. */
  if (NEVER(c->state != CONN_DOWN)) return -EBUSY;
  assert(c->pg == NULL);
  c->close_reason = 0;
  if (p->hosts_count > 1) {
    /* libpq copies the values: the buffers may change for the next one. */
    list_rotate(p->hosts, p->hosts_count, p->host_first, p->hosts_rot, sizeof p->hosts_rot);
    list_rotate(p->ports, p->hosts_count, p->host_first, p->ports_rot, sizeof p->ports_rot);
  }
  c->pg = PQconnectStartParams(p->keywords, p->values, 1);
  if (c->pg == NULL) return -ENOMEM;
  c->state = CONN_CONNECTING;
  if (PQstatus(c->pg) == CONNECTION_BAD) {
    conn_connect_failed(c, "start");
    return 0; /* the failure already went to the supervisor */
  }
  if (rt_timer_start(loop, &c->connect_timer, p->config.connect_timeout_ms, 0) < 0) {
    /* A connect without a deadline could hang for good: give up on it,
     * and the supervisor tries again after its back-off. */
    conn_connect_failed(c, "no timer for the connect deadline");
    return 0;
  }
  /* As if PQconnectPoll had answered PGRES_POLLING_WRITING. */
  c->fd = PQsocket(c->pg);
  rt_poll(loop, &c->poll_out, c->fd, POLLOUT, conn_connect_ready, c);
  return 0;
}

static int conn_actor(rt_actor_t *self, rt_msg_t *msg) {
  return 0; /* connections are driven by I/O, not messages */
}

/* ------------------------------------------------------------------------ */
/* Pool                                                                     */
/* ------------------------------------------------------------------------ */

uint64_t rt_pg_pool_timers(const rt_pg_config_t *config) {
  rt_pg_config_t c = *config;
  rt_pg_config_defaults(&c);
  uint64_t conns = (uint64_t)c.conns_count + 1; /* the listener's too */
  return (uint64_t)c.queue_max + (uint64_t)c.conns_count * c.pipeline_depth /* deadlines */
         + 1                                                           /* the LISTEN */
         + 3 * conns /* connect deadline, stall watchdog, restart back-off */
         + 2;        /* flush, close */
}

int rt_pg_pool_create(rt_pg_pool_t **out, rt_loop_t *loop,
                      const rt_pg_config_t *config) {
  rt_strerror_register(RT_PG_E_RANGE_LO, RT_PG_E_RANGE_HI, rt_pg_strerror);
  if (config == NULL || config->url == NULL) return RT_E_CONFIG;
  rt_pg_pool_t *p = calloc(1, sizeof *p);
  if (p == NULL) return -ENOMEM;
  p->loop = loop;
  p->config = *config;
  rt_pg_config_defaults(&p->config);
  snprintf(p->name, sizeof p->name, "%s", p->config.name);
  p->config.name = p->name;
  int rc = 0;
  if (p->config.conns_count > RT_PG_CONNS_MAX) rc = RT_E_CONFIG;
  if (rc == 0) {
    p->url = strdup(config->url);
    if (p->url == NULL) rc = -ENOMEM;
    p->config.url = p->url;
  }
  if (rc == 0) rc = pool_conninfo(p);
  if (rc == 0) {
    p->conns = calloc(p->config.conns_count + 1u, sizeof *p->conns);
    if (p->conns == NULL) rc = -ENOMEM;
  }
  if (rc == 0) {
    uint64_t n = (uint64_t)p->config.queue_max +
                 (uint64_t)p->config.conns_count * p->config.pipeline_depth + BATCH_MARGIN;
    rc = n > UINT32_MAX ? RT_E_CONFIG
                        : rt_pool_init(&p->batches, "pg_batches", sizeof(rt_pg_batch_t), (uint32_t)n);
  }
  if (rc == 0)
    rc = rt_pool_init(&p->large, "pg_large_batches", RT_PG_BATCH_BYTES_MAX,
                      p->config.large_batches);
  if (rc < 0) {
    if (p->batches.mem != NULL) rt_pool_deinit(&p->batches);
    free(p->conns);
    free(p->url);
    free(p);
    return rc;
  }
  rt_timer_init(&p->flush_timer, pool_flush, p);
  rt_timer_init(&p->close_timer, pool_closed_timer, p);
  for (uint32_t i = 0; i <= p->config.conns_count; i++) {
    pg_conn_t *c = &p->conns[i];
    c->pool = p;
    c->index = i;
    c->listener = i == p->config.conns_count;
    c->fd = -1;
    rt_timer_init(&c->connect_timer, conn_connect_timeout, c);
    rt_timer_init(&c->stall_timer, conn_stalled, c);
  }
  *out = p;
  return 0;
}

int rt_pg_prepare(rt_pg_pool_t *p, const char *sql, int nparams) {
  if (sql == NULL || is_txn_control(sql)) return -EINVAL;
  if (nparams < 0 || nparams > RT_PG_PARAMS_MAX) return -EINVAL;
  if (p->stmts_count == RT_PG_STMTS_MAX) return RT_PG_E_BATCH_FULL;
  pg_stmt_t *s = &p->stmts[p->stmts_count];
  s->sql = strdup(sql);
  if (s->sql == NULL) return -ENOMEM;
  s->nparams = nparams;
  snprintf(s->name, sizeof s->name, "rt_pg_%u", p->stmts_count);
  return (int)p->stmts_count++;
}

int rt_pg_pool_start(rt_pg_pool_t *p) {
  if (p->started) return -EALREADY;
  p->started = true;
  rt_sup_init(&p->sup, p->loop, "pg_sup");
  for (uint32_t i = 0; i < conns_total(p); i++) {
    pg_conn_t *c = &p->conns[i];
    rt_actor_init(&c->actor, p->loop, "pg_conn", conn_actor, c);
    rt_child_spec_t spec = {
        .name = "pg_conn",
        .start = conn_start,
        .arg = c,
        .backoff_min_ms = p->config.backoff_min_ms,
        .backoff_max_ms = p->config.backoff_max_ms,
        .stable_ms = 5000,
    };
    int rc = rt_sup_start_child(&p->sup, &c->actor, &spec);
    if (rc < 0) return rc;
  }
  return 0;
}

bool rt_pg_pool_up(const rt_pg_pool_t *p) {
  return atomic_load_explicit(&p->stats.conns_up, memory_order_relaxed) > 0;
}

const rt_pg_stats_t *rt_pg_pool_stats(const rt_pg_pool_t *p) { return &p->stats; }

/* The ready connection with the most room, or NULL when all are full. */
static pg_conn_t *pool_pick(rt_pg_pool_t *p) {
  pg_conn_t *best = NULL;
  for (uint32_t i = 0; i < p->config.conns_count; i++) {
    pg_conn_t *c = &p->conns[i];
    if (c->state != CONN_READY || c->in_flight >= p->config.pipeline_depth) continue;
    if (best == NULL || c->in_flight < best->in_flight) best = c;
  }
  return best;
}

/* Free pipeline slots on ready connections. */
static uint32_t pool_room(const rt_pg_pool_t *p) {
  uint32_t room = 0;
  for (uint32_t i = 0; i < p->config.conns_count; i++) {
    const pg_conn_t *c = &p->conns[i];
    if (c->state == CONN_READY && c->in_flight < p->config.pipeline_depth)
      room += p->config.pipeline_depth - c->in_flight;
  }
  return room;
}

/* Moves queued batches into pipelines while there is room, oldest first. */
static void pool_pump(rt_pg_pool_t *p) {
  for (uint32_t n = 0; n < p->config.queue_max + 1 && p->queue_head != NULL; n++) {
    pg_conn_t *c = pool_pick(p);
    if (c == NULL) break;
    rt_pg_batch_t *b = p->queue_head;
    queue_remove(p, b);
    conn_dispatch(c, b);
  }
  pool_maybe_closed(p);
}

/* Every submission is queued and dispatched by the zero-delay flush timer:
 * the callback can never run inside rt_pg_submit(), and the batches of one
 * loop iteration share each connection's write. The queue limit counts
 * only batches beyond the free pipeline slots. */
int rt_pg_submit(rt_pg_batch_t *b, uint32_t deadline_ms, rt_pg_cb cb, void *ctx) {
  rt_pg_pool_t *p = b->pool;
  assert(b->state == BATCH_BUILDING);
  assert(cb != NULL);
  int rc = b->build_err;
  if (rc == 0 && b->count == 0) rc = -EINVAL;
  if (rc == 0 && p->closing) rc = RT_PG_E_CLOSED;
  if (rc == 0 && p->down) {
    rc = RT_PG_E_UNAVAILABLE;
    STAT_ADD(p, rejected_down, 1);
  }
  if (rc == 0 && p->queued >= p->config.queue_max + pool_room(p)) {
    rc = RT_PG_E_POOL_FULL;
    STAT_ADD(p, rejected_full, 1);
  }
  if (rc == 0) {
    b->deadline.cb = batch_deadline;
    rc = rt_timer_start(p->loop, &b->deadline,
                        deadline_ms ? deadline_ms : p->config.deadline_ms, 0);
  }
  if (rc == 0 && !rt_timer_armed(&p->flush_timer))
    rc = rt_timer_start(p->loop, &p->flush_timer, 0, 0);
  if (rc < 0) {
    rt_timer_stop(p->loop, &b->deadline);
    batch_release(b);
    return rc;
  }
  b->cb = cb;
  b->ctx = ctx;
  b->seq = ++p->seq;
  b->submitted_ns = rt_loop_now_ns(p->loop);
  STAT_ADD(p, batches, 1);
  b->state = BATCH_QUEUED;
  b->next = NULL;
  if (b->first && p->queue_head != NULL) {
    b->next = p->queue_head;
    p->queue_head = b;
  } else if (p->queue_tail != NULL) {
    p->queue_tail->next = b;
    p->queue_tail = b;
  } else {
    p->queue_head = b;
    p->queue_tail = b;
  }
  p->queued++;
  STAT_ADD(p, queued, 1);
  return 0;
}

static bool actor_idle(rt_actor_t *a) {
  return !atomic_load_explicit(&a->scheduled, memory_order_relaxed);
}

/* Reports the close from the top of a loop iteration, so that `done` may
 * free the pool. The supervisor, stopped earlier, may still sit in the run
 * queue for one more pass: wait until it has left. */
static void pool_closed_timer(rt_timer_t *t) {
  rt_pg_pool_t *p = t->ctx;
  bool idle = !p->started || actor_idle(&p->sup.actor);
  for (uint32_t i = 0; p->started && i < conns_total(p); i++)
    idle = idle && actor_idle(&p->conns[i].actor);
  if (!idle) {
    /* Our own slot, left just before this callback: cannot fail. Should it,
     * the close goes unreported and the loop's drain deadline ends it. */
    (void)NEVER(rt_timer_start(p->loop, &p->close_timer, 1, 0) < 0);
    return;
  }
  void (*done)(void *) = p->close_done;
  p->close_done = NULL;
  if (done != NULL) done(p->close_arg);
}

/* During a close: once nothing is queued or in flight, stop the
 * supervisor (no restarts), close the connections, and once all are down,
 * report. Re-entered from the closes it starts: guarded. */
static void pool_maybe_closed(rt_pg_pool_t *p) {
  if (!p->closing || p->close_done == NULL || p->in_maybe_closed) return;
  if (p->queue_head != NULL) return;
  for (uint32_t i = 0; i < conns_total(p); i++) {
    if (p->conns[i].in_flight > 0) return;
  }
  p->in_maybe_closed = true;
  if (p->started && !p->sup.actor.stopped) rt_actor_stop(&p->sup.actor, 0);
  bool all_down = true;
  for (uint32_t i = 0; i < conns_total(p); i++) {
    pg_conn_t *c = &p->conns[i];
    if (c->state == CONN_READY || c->state == CONN_CONNECTING) conn_fail(c, 0, RT_PG_E_CLOSED);
    if (c->state != CONN_DOWN) all_down = false;
  }
  p->in_maybe_closed = false;
  if (!all_down || rt_timer_armed(&p->close_timer)) return;
  rt_timer_stop(p->loop, &p->flush_timer);
  if (rt_timer_start(p->loop, &p->close_timer, 0, 0) < 0) {
    /* `done` may free the pool, so it is never called from here; without
     * a timer the close stays unreported, and the loop's drain deadline
     * is what ends it. */
    RT_ERROR("database pool closed but not reported: timer heap full",
             RT_LF_STR("pool", p->name));
  }
}

void rt_pg_pool_close(rt_pg_pool_t *p, void (*done)(void *arg), void *arg) {
  assert(done != NULL);
  assert(!p->closing);
  p->closing = true;
  p->close_done = done;
  p->close_arg = arg;
  /* Nothing can serve the queue when no connection is up. */
  if (!rt_pg_pool_up(p)) {
    for (uint32_t n = 0; n < p->config.queue_max + 1 && p->queue_head != NULL; n++) {
      rt_pg_batch_t *b = p->queue_head;
      queue_remove(p, b);
      batch_fail_unsent(b, RT_PG_E_CLOSED);
    }
  }
  pool_maybe_closed(p);
}

/* Frees a batch without its callback, timers untouched (the loop may be
 * gone). */
static void batch_drop(rt_pg_batch_t *b) {
  b->abandoned = true;
  batch_release(b);
}

void rt_pg_pool_destroy(rt_pg_pool_t *p) {
  if (p == NULL) return;
  for (uint32_t i = 0; p->conns != NULL && i < conns_total(p); i++) {
    pg_conn_t *c = &p->conns[i];
    rt_pg_batch_t *b = c->head;
    while (b != NULL) {
      rt_pg_batch_t *next = b->next;
      batch_drop(b);
      b = next;
    }
    if (c->pg != NULL) PQfinish(c->pg);
  }
  rt_pg_batch_t *b = p->queue_head;
  while (b != NULL) {
    rt_pg_batch_t *next = b->next;
    batch_drop(b);
    b = next;
  }
  for (uint32_t i = 0; i < p->stmts_count; i++) free(p->stmts[i].sql);
  if (p->batches.mem != NULL) rt_pool_deinit(&p->batches);
  if (p->large.mem != NULL) rt_pool_deinit(&p->large);
  free(p->conns);
  free(p->url);
  free(p);
}
