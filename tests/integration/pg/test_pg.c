/*
 * runtime/pg.c against a real PostgreSQL (deploy/pg): round trips,
 * pipelining, prepared statements, transactions per batch, error mapping,
 * the queue limit and queueing first, large arenas, deadlines, statement_timeout, and
 * reconnection after the server is killed with SIGKILL and started again.
 *
 * Needs PAYMENT_DB_URL (eval "$(deploy/pg env)"); fails without it. argv[1]
 * is deploy/pg, used to kill and restart the server. Tables are named
 * rtpg_test_* and dropped at the end.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "pgtest.h"

static const char *deploy_pg;

/* ---- tests ------------------------------------------------------------- */

static void test_round_trip(void) {
  rt_pg_pool_t *p = pool_new(2, 16, 64, 3000);
  T_REQUIRE(p != NULL);
  T_REQUIRE(rt_pg_pool_up(p));
  outcome_t o;
  T_CHECK_EQ_INT(exec1(p, "SELECT 40 + 2", &o), 0);
  T_CHECK_STR(o.first[0], "42");
  T_CHECK_EQ_INT(o.rows[0], 1);
  /* statement_timeout was set at connect. */
  T_CHECK_EQ_INT(exec1(p, "SHOW statement_timeout", &o), 0);
  T_CHECK_STR(o.first[0], "3s");
  /* Parameters, NULL included, in text form. */
  rt_pg_batch_t *b = rt_pg_batch_new(p);
  T_REQUIRE(b != NULL);
  const char *vals[] = {"7", NULL, "caf\xc3\xa9"};
  T_CHECK_EQ_INT(rt_pg_add_sql(b, "SELECT $1::int * 6, $2::text IS NULL, length($3)", 3, vals), 0);
  T_CHECK_EQ_INT(submit(b, 0, &o), 0);
  T_CHECK(!o.done); /* never answered inside submit */
  T_REQUIRE(run_until(outcome_done, &o, 5000));
  T_CHECK_EQ_INT(o.err, 0);
  T_CHECK_STR(o.first[0], "42");
  /* Transaction control is refused: it would break the batch's own
   * transaction and its neighbours'. */
  b = rt_pg_batch_new(p);
  T_REQUIRE(b != NULL);
  T_CHECK_EQ_INT(rt_pg_add_sql(b, "  begin", 0, NULL), -EINVAL);
  T_CHECK_EQ_INT(rt_pg_submit(b, 0, outcome_cb, &o), -EINVAL);
  T_CHECK_EQ_INT(rt_pg_prepare(p, "COMMIT", 0), -EINVAL);
  T_CHECK_STR(rt_strerror(RT_PG_E_UNIQUE), "unique violation");
  pool_free(p);
}

static void setup_tables(rt_pg_pool_t *p) {
  outcome_t o;
  const char *sqls[] = {
      "DROP TABLE IF EXISTS rtpg_test_items",
      "DROP TABLE IF EXISTS rtpg_test_parents",
      "CREATE TABLE rtpg_test_parents (id int PRIMARY KEY)",
      "CREATE TABLE rtpg_test_items (id int PRIMARY KEY,"
      " qty int NOT NULL CONSTRAINT rtpg_qty_nonneg CHECK (qty >= 0),"
      " parent int REFERENCES rtpg_test_parents(id))",
      "INSERT INTO rtpg_test_parents VALUES (1)",
  };
  int rc = run_sql(p, &o, sqls, 5);
  T_CHECK_EQ_INT(rc, 0);
}

static int count_items(rt_pg_pool_t *p) {
  outcome_t o;
  if (exec1(p, "SELECT count(*) FROM rtpg_test_items", &o) != 0) return -1;
  return atoi(o.first[0]);
}

/* Each batch is one transaction: a failing statement rolls back the whole
 * batch, and only that batch, even when its neighbours share the pipeline. */
static void test_transactions_and_errors(void) {
  rt_pg_pool_t *p = pool_new(1, 64, 64, 3000);
  T_REQUIRE(p != NULL);
  setup_tables(p);
  int ins = rt_pg_prepare(p, "INSERT INTO rtpg_test_items (id, qty, parent) VALUES ($1, $2, $3)", 3);
  T_REQUIRE(ins >= 0);

  outcome_t oa, ob, oc;
  const char *a1[] = {"1", "5", "1"}, *a2[] = {"2", "5", NULL};
  const char *b1[] = {"3", "5", NULL}, *b2[] = {"1", "9", NULL}; /* dup of id 1 */
  const char *c1[] = {"4", "5", NULL};
  rt_pg_batch_t *a = rt_pg_batch_new(p), *b = rt_pg_batch_new(p), *c = rt_pg_batch_new(p);
  T_REQUIRE(a && b && c);
  T_CHECK_EQ_INT(rt_pg_add(a, ins, 3, a1), 0);
  T_CHECK_EQ_INT(rt_pg_add(a, ins, 3, a2), 1);
  rt_pg_add(b, ins, 3, b1);
  rt_pg_add(b, ins, 3, b2);
  rt_pg_add(c, ins, 3, c1);
  /* Submitted in one iteration: one connection, one write, three Syncs. */
  T_CHECK_EQ_INT(submit(a, 0, &oa), 0);
  T_CHECK_EQ_INT(submit(b, 0, &ob), 0);
  T_CHECK_EQ_INT(submit(c, 0, &oc), 0);
  T_REQUIRE(run_until(outcome_done, &oc, 5000));
  T_CHECK(oa.done && ob.done);
  T_CHECK_EQ_INT(oa.err, 0);
  T_CHECK_EQ_INT(ob.err, RT_PG_E_UNIQUE);
  T_CHECK_EQ_INT(ob.stmt_index, 1);
  T_CHECK_STR(ob.sqlstate, "23505");
  T_CHECK_STR(ob.constraint, "rtpg_test_items_pkey");
  T_CHECK_EQ_INT(oc.err, 0);
  /* a (2 rows) and c (1 row) committed; b's first insert rolled back. */
  T_CHECK_EQ_INT(count_items(p), 3);
  outcome_t o;
  T_CHECK_EQ_INT(exec1(p, "SELECT count(*) FROM rtpg_test_items WHERE id = 3", &o), 0);
  T_CHECK_STR(o.first[0], "0");

  /* Check, foreign key, not null, range, data, syntax. */
  const char *neg[] = {"10", "-1", NULL};
  b = rt_pg_batch_new(p);
  rt_pg_add(b, ins, 3, neg);
  T_CHECK_EQ_INT(submit(b, 0, &o), 0);
  T_REQUIRE(run_until(outcome_done, &o, 5000));
  T_CHECK_EQ_INT(o.err, RT_PG_E_CHECK);
  T_CHECK_STR(o.constraint, "rtpg_qty_nonneg");
  const char *orphan[] = {"11", "1", "99"};
  b = rt_pg_batch_new(p);
  rt_pg_add(b, ins, 3, orphan);
  submit(b, 0, &o);
  T_REQUIRE(run_until(outcome_done, &o, 5000));
  T_CHECK_EQ_INT(o.err, RT_PG_E_FOREIGN_KEY);
  T_CHECK_STR(o.sqlstate, "23503");
  T_CHECK_EQ_INT(exec1(p, "SELECT 9223372036854775807::bigint + 1", &o), RT_PG_E_OUT_OF_RANGE);
  T_CHECK_EQ_INT(exec1(p, "SELECT 'x'::int", &o), RT_PG_E_DATA);
  T_CHECK_EQ_INT(exec1(p, "SELEC 1", &o), RT_PG_E_SQL);
  T_CHECK_STR(o.sqlstate, "42601");
  T_CHECK_EQ_INT(exec1(p, "INSERT INTO rtpg_test_items (id, qty) VALUES (12, NULL)", &o),
                 RT_PG_E_NOT_NULL);
  /* The connection is still fine after all that. */
  T_CHECK_EQ_INT(count_items(p), 3);
  T_CHECK_EQ_INT(exec1(p, "DROP TABLE rtpg_test_items, rtpg_test_parents", &o), 0);
  pool_free(p);
}

/* A statement is prepared once per connection, at its first use there. */
static void test_prepared_once(void) {
  rt_pg_pool_t *p = pool_new(1, 64, 64, 3000);
  T_REQUIRE(p != NULL);
  int s_add = rt_pg_prepare(p, "SELECT $1::int + 1", 1);
  int s_unused = rt_pg_prepare(p, "SELECT 2", 0);
  T_REQUIRE(s_add >= 0 && s_unused == s_add + 1);
  outcome_t os[10];
  int done[2] = {0, 10};
  for (int i = 0; i < 10; i++) {
    rt_pg_batch_t *b = rt_pg_batch_new(p);
    char v[16];
    snprintf(v, sizeof v, "%d", i);
    const char *vals[] = {v};
    rt_pg_add(b, s_add, 1, vals);
    rt_pg_add(b, s_add, 1, vals); /* twice in one batch: one Parse */
    T_CHECK_EQ_INT(submit(b, 0, &os[i]), 0);
  }
  for (int i = 0; i < 10; i++) {
    T_CHECK(run_until(outcome_done, &os[i], 5000));
    done[0] += os[i].err == 0;
    char want[16];
    snprintf(want, sizeof want, "%d", i + 1);
    T_CHECK_STR(os[i].first[1], want);
  }
  T_CHECK(counter_reaches(done));
  outcome_t o;
  T_CHECK_EQ_INT(exec1(p, "SELECT count(*), min(statement) FROM pg_prepared_statements", &o), 0);
  T_CHECK_STR(o.first[0], "1");
  /* A wrong parameter count is refused before anything is sent. */
  rt_pg_batch_t *b = rt_pg_batch_new(p);
  T_CHECK_EQ_INT(rt_pg_add(b, s_add, 0, NULL), -EINVAL);
  T_CHECK_EQ_INT(rt_pg_add(b, 999, 0, NULL), -EINVAL); /* sticky first error */
  rt_pg_batch_free(b);
  b = rt_pg_batch_new(p);
  T_CHECK_EQ_INT(rt_pg_add(b, 999, 0, NULL), RT_PG_E_NO_STMT);
  rt_pg_batch_free(b);
  pool_free(p);
}

/* Many batches from many callers share round trips. */
typedef struct many {
  int done;
  int wanted;
  int wrong;
  int failed;
} many_t;

static void many_cb(rt_pg_batch_t *b, int err, void *ctx) {
  many_t *m = ctx;
  m->done++;
  if (err != 0) {
    m->failed++;
    return;
  }
  int64_t in = 0, out = 0;
  if (rt_pg_int64(b, 0, 0, 0, &in) != 0 || rt_pg_int64(b, 0, 0, 1, &out) != 0 || out != in * 2)
    m->wrong++;
}

static bool many_done(void *arg) {
  many_t *m = arg;
  return m->done >= m->wanted;
}

static void test_pipelining(void) {
  rt_pg_pool_t *p = pool_new(2, 256, 8192, 3000);
  T_REQUIRE(p != NULL);
  int s = rt_pg_prepare(p, "SELECT $1::bigint, $1::bigint * 2", 1);
  T_REQUIRE(s >= 0);
  enum { N = 4000 };
  many_t m = {.wanted = N};
  uint64_t flushes0 = atomic_load(&rt_pg_pool_stats(p)->flushes);
  uint64_t t0 = rt_now_ns();
  for (int i = 0; i < N; i++) {
    rt_pg_batch_t *b = rt_pg_batch_new(p);
    T_REQUIRE(b != NULL);
    char v[24];
    snprintf(v, sizeof v, "%d", i);
    const char *vals[] = {v};
    rt_pg_add(b, s, 1, vals);
    T_REQUIRE(rt_pg_submit(b, 20000, many_cb, &m) == 0);
  }
  T_CHECK(run_until(many_done, &m, 30000));
  uint64_t ms = (rt_now_ns() - t0) / 1000000u;
  uint64_t flushes = atomic_load(&rt_pg_pool_stats(p)->flushes) - flushes0;
  T_CHECK_EQ_INT(m.done, N);
  T_CHECK_EQ_INT(m.failed, 0);
  T_CHECK_EQ_INT(m.wrong, 0);
  /* Far fewer writes than batches: they shared round trips. */
  T_CHECK(flushes * 4 < N);
  fprintf(stderr, "pipelining: %d batches in %llu ms over %llu writes\n", N,
          (unsigned long long)ms, (unsigned long long)flushes);
  T_CHECK_EQ_INT(atomic_load(&rt_pg_pool_stats(p)->in_flight), 0);
  T_CHECK_EQ_INT(atomic_load(&rt_pg_pool_stats(p)->queued), 0);
  pool_free(p);
}

/* A full queue is refused at once; what was accepted still completes. */
static void test_queue_limit(void) {
  rt_pg_pool_t *p = pool_new(1, 1, 4, 3000);
  T_REQUIRE(p != NULL);
  outcome_t os[6];
  int accepted = 0, refused = 0;
  for (int i = 0; i < 6; i++) {
    rt_pg_batch_t *b = rt_pg_batch_new(p);
    rt_pg_add_sql(b, "SELECT pg_sleep(0.05)", 0, NULL);
    int rc = submit(b, 5000, &os[i]);
    if (rc == 0) accepted++;
    if (rc == RT_PG_E_POOL_FULL) refused++;
  }
  /* One pipeline slot plus four queued. */
  T_CHECK_EQ_INT(accepted, 5);
  T_CHECK_EQ_INT(refused, 1);
  T_CHECK_EQ_INT(atomic_load(&rt_pg_pool_stats(p)->rejected_full), 1);
  for (int i = 0; i < accepted; i++) {
    T_CHECK(run_until(outcome_done, &os[i], 5000));
    T_CHECK_EQ_INT(os[i].err, 0);
  }
  pool_free(p);
}

/* A batch marked first is queued ahead of those already waiting, not of
 * the one in the pipeline; the others keep their order. */
static int order_next;
static int order_of[8];

static void order_cb(rt_pg_batch_t *b, int err, void *ctx) {
  (void)b;
  int *slot = ctx;
  *slot = err == 0 ? ++order_next : -1;
}

static bool order_all(void *arg) { return order_next >= *(int *)arg; }

static bool in_pipeline(void *arg) {
  return atomic_load(&rt_pg_pool_stats((rt_pg_pool_t *)arg)->in_flight) == 1;
}

static void test_queue_first(void) {
  rt_pg_pool_t *p = pool_new(1, 1, 8, 3000);
  T_REQUIRE(p != NULL);
  order_next = 0;
  memset(order_of, 0, sizeof order_of);
  for (int i = 0; i < 5; i++) {
    rt_pg_batch_t *b = rt_pg_batch_new(p);
    T_REQUIRE(b != NULL);
    rt_pg_add_sql(b, i == 0 ? "SELECT pg_sleep(0.1)" : "SELECT 1", 0, NULL);
    if (i == 4) rt_pg_batch_first(b);
    T_REQUIRE(rt_pg_submit(b, 5000, order_cb, &order_of[i]) == 0);
    if (i == 0) T_CHECK(run_until(in_pipeline, p, 2000)); /* 0 leaves the queue */
  }
  int want = 5;
  T_CHECK(run_until(order_all, &want, 5000));
  /* 0 held the one pipeline slot; 4 went ahead of 1, 2 and 3. */
  T_CHECK_EQ_INT(order_of[0], 1);
  T_CHECK_EQ_INT(order_of[4], 2);
  T_CHECK_EQ_INT(order_of[1], 3);
  T_CHECK_EQ_INT(order_of[2], 4);
  T_CHECK_EQ_INT(order_of[3], 5);
  pool_free(p);
}

/* Parameters beyond a batch's own arena take one of the pool's large
 * arenas, with what the batch held already; when none is left the batch
 * is refused as a full pool is (backpressure), and counted. */
static void fill(char *s, size_t n, char c) {
  memset(s, c, n);
  s[n] = '\0';
}

static void test_large_arenas(void) {
  rt_pg_config_t cfg = {.url = db_url, .name = "test", .conns_count = 1, .large_batches = 1};
  rt_pg_pool_t *p = NULL;
  T_REQUIRE(rt_pg_pool_create(&p, loop, &cfg) == 0);
  T_REQUIRE(rt_pg_pool_start(p) == 0);
  T_REQUIRE(run_until(pool_is_up, p, 10000));
  static char big[100001], mid[3001], small[1901];
  fill(big, sizeof big - 1, 'y');
  fill(mid, sizeof mid - 1, 'm');
  fill(small, sizeof small - 1, 's');
  const char *sql = "SELECT $1 || ':' || length($2)::text";

  /* Within its own arena, a batch takes no large one. */
  rt_pg_batch_t *inl = rt_pg_batch_new(p);
  T_REQUIRE(inl != NULL);
  const char *vi[] = {"in", small};
  T_CHECK_EQ_INT(rt_pg_add_sql(inl, sql, 2, vi), 0);
  /* The one large arena: the small parameter moves over with the big. */
  rt_pg_batch_t *a = rt_pg_batch_new(p);
  T_REQUIRE(a != NULL);
  const char *va[] = {"abc", big};
  T_CHECK_EQ_INT(rt_pg_add_sql(a, sql, 2, va), 0);
  /* None left: refused, kept, counted. */
  rt_pg_batch_t *b = rt_pg_batch_new(p);
  T_REQUIRE(b != NULL);
  const char *vb[] = {"b", mid};
  T_CHECK_EQ_INT(rt_pg_add_sql(b, sql, 2, vb), RT_PG_E_POOL_FULL);
  T_CHECK_EQ_INT(atomic_load(&rt_pg_pool_stats(p)->rejected_large), 1);
  outcome_t ob;
  T_CHECK_EQ_INT(submit(b, 0, &ob), RT_PG_E_POOL_FULL);
  T_CHECK(!ob.done);

  outcome_t oi, oa;
  T_CHECK_EQ_INT(submit(inl, 0, &oi), 0);
  T_CHECK_EQ_INT(submit(a, 0, &oa), 0);
  T_REQUIRE(run_until(outcome_done, &oa, 5000));
  T_REQUIRE(run_until(outcome_done, &oi, 5000));
  T_CHECK_EQ_INT(oi.err, 0);
  T_CHECK_STR(oi.first[0], "in:1900");
  T_CHECK_EQ_INT(oa.err, 0);
  T_CHECK_STR(oa.first[0], "abc:100000");

  /* Given back with its batch: the next large one gets it. */
  rt_pg_batch_t *c = rt_pg_batch_new(p);
  T_REQUIRE(c != NULL);
  const char *vc[] = {"c", mid};
  T_CHECK_EQ_INT(rt_pg_add_sql(c, sql, 2, vc), 0);
  outcome_t oc;
  T_CHECK_EQ_INT(submit(c, 0, &oc), 0);
  T_REQUIRE(run_until(outcome_done, &oc, 5000));
  T_CHECK_STR(oc.first[0], "c:3000");
  T_CHECK_EQ_INT(atomic_load(&rt_pg_pool_stats(p)->rejected_large), 1);
  pool_free(p);
}

/* Deadlines: in flight (answered on time, connection reused afterwards),
 * queued (removed), and the server's statement_timeout. */
static void test_deadlines(void) {
  rt_pg_pool_t *p = pool_new(1, 1, 16, RT_PG_TIMEOUT_NONE);
  T_REQUIRE(p != NULL);
  outcome_t slow, queued, next;
  rt_pg_batch_t *b = rt_pg_batch_new(p);
  rt_pg_add_sql(b, "SELECT pg_sleep(1)", 0, NULL);
  T_CHECK_EQ_INT(submit(b, 200, &slow), 0);
  b = rt_pg_batch_new(p);
  rt_pg_add_sql(b, "SELECT 1", 0, NULL);
  T_CHECK_EQ_INT(submit(b, 100, &queued), 0);
  T_REQUIRE(run_until(outcome_done, &slow, 3000));
  T_CHECK(queued.done);
  T_CHECK_EQ_INT(queued.err, RT_PG_E_TIMEOUT);
  T_CHECK_EQ_INT(slow.err, RT_PG_E_TIMEOUT);
  T_CHECK(slow.took_ms >= 190 && slow.took_ms < 600);
  T_CHECK(queued.took_ms >= 90 && queued.took_ms < 600);
  /* The abandoned statement finishes on the server; the next batch waits
   * behind it on the same connection and succeeds. */
  b = rt_pg_batch_new(p);
  rt_pg_add_sql(b, "SELECT 'after'", 0, NULL);
  T_CHECK_EQ_INT(submit(b, 5000, &next), 0);
  T_REQUIRE(run_until(outcome_done, &next, 5000));
  T_CHECK_EQ_INT(next.err, 0);
  T_CHECK_STR(next.first[0], "after");
  T_CHECK(atomic_load(&rt_pg_pool_stats(p)->timeouts) >= 2);
  pool_free(p);

  p = pool_new(1, 4, 16, 300);
  T_REQUIRE(p != NULL);
  outcome_t o;
  T_CHECK_EQ_INT(exec1(p, "SELECT pg_sleep(3)", &o), RT_PG_E_STATEMENT_TIMEOUT);
  T_CHECK_STR(o.sqlstate, "57014");
  T_CHECK(o.took_ms < 2000);
  T_CHECK_EQ_INT(exec1(p, "SELECT 1", &o), 0);
  pool_free(p);
}

/* Kill the server mid-load, start it again: the pool reconnects alone. */
typedef struct chaos {
  rt_pg_pool_t *pool;
  int ok, lost, unavailable, other, in_flight;
  bool restarted;
  int ok_after_restart;
  rt_timer_t tick;
} chaos_t;

static void chaos_cb(rt_pg_batch_t *b, int err, void *ctx) {
  chaos_t *c = ctx;
  c->in_flight--;
  if (err == 0) {
    c->ok++;
    if (c->restarted) c->ok_after_restart++;
  } else if (err == RT_PG_E_CONN_LOST) {
    c->lost++;
  } else if (err == RT_PG_E_UNAVAILABLE || err == RT_PG_E_TIMEOUT) {
    c->unavailable++;
  } else {
    c->other++;
    fprintf(stderr, "chaos: unexpected %s\n", rt_strerror(err));
  }
}

static void chaos_tick(rt_timer_t *t) {
  chaos_t *c = t->ctx;
  for (int i = 0; i < 8 && c->in_flight < 64; i++) {
    rt_pg_batch_t *b = rt_pg_batch_new(c->pool);
    if (b == NULL) return;
    rt_pg_add_sql(b, "SELECT pg_sleep(0.01)", 0, NULL);
    int rc = rt_pg_submit(b, 1000, chaos_cb, c);
    if (rc == 0) {
      c->in_flight++;
    } else if (rc == RT_PG_E_UNAVAILABLE) {
      c->unavailable++;
    } else {
      c->other++;
    }
  }
}

static bool chaos_recovered(void *arg) {
  chaos_t *c = arg;
  return c->restarted && c->ok_after_restart >= 50;
}

static bool chaos_some_ok(void *arg) { return ((chaos_t *)arg)->ok >= 50; }

typedef struct shell_job {
  const char *cmd;
  int status;
  atomic_bool done;
  chaos_t *chaos;
} shell_job_t;

static void *shell_thread(void *arg) {
  shell_job_t *j = arg;
  j->status = system(j->cmd);
  atomic_store(&j->done, true);
  return NULL;
}

static bool job_done(void *arg) { return atomic_load(&((shell_job_t *)arg)->done); }

static void test_reconnect(void) {
  rt_pg_pool_t *p = pool_new(2, 32, 256, 3000);
  T_REQUIRE(p != NULL);
  chaos_t c = {.pool = p};
  rt_timer_init(&c.tick, chaos_tick, &c);
  rt_timer_start(loop, &c.tick, 5, 5);
  T_CHECK(run_until(chaos_some_ok, &c, 10000));

  /* The shell commands run on a thread: the loop keeps going meanwhile. */
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' kill9 >&2", deploy_pg);
  shell_job_t kill = {.cmd = cmd, .chaos = &c};
  pthread_t th;
  pthread_create(&th, NULL, shell_thread, &kill);
  T_CHECK(run_until(job_done, &kill, 20000));
  pthread_join(th, NULL);
  T_CHECK_EQ_INT(WEXITSTATUS(kill.status), 0);
  /* Keep the load on while the server is down for a moment. */
  int ok_before = c.ok;
  static int never[2] = {0, 1};
  run_until(counter_reaches, never, 500);
  T_CHECK(c.lost + c.unavailable > 0);
  T_CHECK(!rt_pg_pool_up(p));
  uint64_t connects_before = atomic_load(&rt_pg_pool_stats(p)->connects);

  char cmd2[1024];
  snprintf(cmd2, sizeof cmd2, "'%s' start >&2", deploy_pg);
  shell_job_t start = {.cmd = cmd2, .chaos = &c};
  pthread_create(&th, NULL, shell_thread, &start);
  T_CHECK(run_until(job_done, &start, 90000));
  pthread_join(th, NULL);
  T_CHECK_EQ_INT(WEXITSTATUS(start.status), 0);
  c.restarted = true;
  T_CHECK(run_until(chaos_recovered, &c, 30000));
  rt_timer_stop(loop, &c.tick);
  T_CHECK(rt_pg_pool_up(p));
  T_CHECK(atomic_load(&rt_pg_pool_stats(p)->connects) > connects_before);
  T_CHECK_EQ_INT(c.other, 0);
  fprintf(stderr, "reconnect: ok %d (before kill %d), lost %d, unavailable %d\n",
          c.ok, ok_before, c.lost, c.unavailable);
  /* The close waits for the batches still in flight. */
  pool_free(p);
  T_CHECK_EQ_INT(c.in_flight, 0);
}

/* The pool's listener: notifications arrive, and after its connection is
 * killed it comes back by itself and says so (RT_PG_LISTENING again). */
typedef struct heard {
  int listening;
  int notified;
} heard_t;

static void on_heard(void *arg, rt_pg_notify_t what) {
  heard_t *h = arg;
  if (what == RT_PG_LISTENING) h->listening++;
  if (what == RT_PG_NOTIFIED) h->notified++;
}

static bool heard_listening(void *arg) { return ((heard_t *)arg)->listening >= 1; }
static bool heard_notified(void *arg) { return ((heard_t *)arg)->notified >= 1; }
static bool heard_relistening(void *arg) { return ((heard_t *)arg)->listening >= 2; }
static bool heard_notified_again(void *arg) { return ((heard_t *)arg)->notified >= 2; }

static void test_listen(void) {
  rt_pg_config_t cfg = {.url = db_url, .name = "listen", .conns_count = 1, .backoff_min_ms = 20,
                        .backoff_max_ms = 200};
  rt_pg_pool_t *p = NULL;
  heard_t h = {0};
  T_REQUIRE(rt_pg_pool_create(&p, loop, &cfg) == 0);
  T_CHECK_EQ_INT(rt_pg_listen(p, "bad-channel", on_heard, &h), -EINVAL);
  T_REQUIRE(rt_pg_listen(p, "rtpg_test_chan", on_heard, &h) == 0);
  T_CHECK_EQ_INT(rt_pg_listen(p, "rtpg_test_chan", on_heard, &h), -EALREADY);
  T_REQUIRE(rt_pg_pool_start(p) == 0);
  T_REQUIRE(run_until(heard_listening, &h, 10000));
  T_CHECK_EQ_INT(h.notified, 0);
  rt_pg_pool_t *other = pool_new(1, 4, 16, 3000);
  T_REQUIRE(other != NULL);
  outcome_t o;
  T_CHECK_EQ_INT(exec1(other, "NOTIFY rtpg_test_chan", &o), 0);
  T_CHECK(run_until(heard_notified, &h, 10000));
  /* The listener is not a data connection: it never gets batches. */
  T_CHECK_EQ_INT(atomic_load(&rt_pg_pool_stats(p)->conns_up), 1);
  T_CHECK_EQ_INT(exec1(other,
                       "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                       " WHERE query = 'LISTEN \"rtpg_test_chan\"' AND pid <> pg_backend_pid()",
                       &o),
                 0);
  T_CHECK_STR(o.first[0], "1");
  T_CHECK(run_until(heard_relistening, &h, 15000));
  T_CHECK_EQ_INT(exec1(other, "NOTIFY rtpg_test_chan", &o), 0);
  T_CHECK(run_until(heard_notified_again, &h, 10000));
  pool_free(other);
  pool_free(p);
}

int main(int argc, char **argv) {
  rt_log_init("test_pg", RT_LOG_WARN, NULL, 0);
  db_url = getenv("PAYMENT_DB_URL");
  if (db_url == NULL || db_url[0] == '\0') {
    fprintf(stderr, "PAYMENT_DB_URL is not set: start the database with "
                    "deploy/pg start and eval \"$(deploy/pg env)\"\n");
    printf("0 passed, 1 failed\n");
    return 1;
  }
  deploy_pg = argc > 1 ? argv[1] : "deploy/pg";
  rt_loop_config_t cfg = {0};
  if (rt_loop_create(&loop, &cfg) != 0) return 1;
  T_RUN(test_round_trip);
  T_RUN(test_transactions_and_errors);
  T_RUN(test_prepared_once);
  T_RUN(test_pipelining);
  T_RUN(test_queue_limit);
  T_RUN(test_queue_first);
  T_RUN(test_large_arenas);
  T_RUN(test_deadlines);
  T_RUN(test_listen);
  T_RUN(test_reconnect);
  rt_loop_destroy(loop);
  return t_done();
}
