/*
 * Claims (actors/common svc_idem.c, svc_consume.c) against a real
 * PostgreSQL: the skeleton's own statements, run as the services run them.
 *
 *   - a claim and its finish commit; the same claim again fails its
 *     transaction at statement 0 with a unique violation, and the stored
 *     answer reads back;
 *   - two claims of one key racing on two connections: exactly one wins;
 *   - an inbox claim of an event id: once;
 *   - two-phase: a claim in progress is busy for anyone else, taken over
 *     by the same request once its lock lapsed, by no other request; a
 *     reopen with a stale token does nothing;
 *   - expired claims are pruned, live ones kept.
 *
 * Needs PROBE_DB_URL (eval "$(deploy/pg env)"): applies the common
 * migrations there and uses scopes of its own ("test-claims-*").
 */
#include <stdlib.h>

#include "../pg/pgtest.h"
#include "svc_internal.h"

static rt_pg_pool_t *pool;
static char scope[64];

static void register_stmts(rt_pg_pool_t *p) {
  const svc_stmt_table_t *tables[] = {&svc_main_stmts, &svc_idem_stmts, &svc_consume_stmts};
  for (size_t t = 0; t < 3; t++) {
    for (size_t i = 0; i < tables[t]->count; i++) {
      int id = rt_pg_prepare(p, tables[t]->stmts[i].sql, tables[t]->stmts[i].nparams);
      T_CHECK(id >= 0);
      *tables[t]->stmts[i].id = id;
    }
  }
}

/* A batch of one registered statement, run and waited for. */
static int run1(int stmt, int n, const char *const *vals, outcome_t *o) {
  rt_pg_batch_t *b = rt_pg_batch_new(pool);
  if (b == NULL) return -ENOMEM;
  rt_pg_add(b, stmt, n, vals);
  int rc = submit(b, 10000, o);
  if (rc < 0) return rc;
  return run_until(outcome_done, o, 15000) ? o->err : RT_E_TIMEOUT;
}

/* claim + finish(status, body) as one transaction. */
static int claim_and_finish(const char *key, const char *hash, const char *status,
                            const char *body, outcome_t *o) {
  rt_pg_batch_t *b = rt_pg_batch_new(pool);
  if (b == NULL) return -ENOMEM;
  const char *claim[] = {scope, key, hash, "48"};
  rt_pg_add(b, svc_stmt_idem_claim, 4, claim);
  const char *fin[] = {scope, key, status, body};
  rt_pg_add(b, svc_stmt_idem_finish, 4, fin);
  int rc = submit(b, 10000, o);
  if (rc < 0) return rc;
  return run_until(outcome_done, o, 15000) ? o->err : RT_E_TIMEOUT;
}

static void test_once(void) {
  outcome_t o;
  T_CHECK_EQ_INT(claim_and_finish("k1", "h1", "201", "{\"ok\":1}", &o), 0);
  T_CHECK_STR(o.first[1], "201");
  T_CHECK_EQ_INT(claim_and_finish("k1", "h1", "201", "{\"ok\":2}", &o), RT_PG_E_UNIQUE);
  T_CHECK_EQ_INT(o.stmt_index, 0); /* the claim itself: nothing after it ran */
  const char *read[] = {scope, "k1"};
  T_CHECK_EQ_INT(run1(svc_stmt_idem_read, 2, read, &o), 0);
  T_CHECK_STR(o.first[0], "201");
}

typedef struct race {
  outcome_t o[2];
} race_t;

static bool race_done(void *arg) {
  race_t *r = arg;
  return r->o[0].done && r->o[1].done;
}

static void test_race(void) {
  /* Two connections, one key: the loser waits on the key, then fails. */
  race_t r;
  memset(&r, 0, sizeof r);
  for (int i = 0; i < 2; i++) {
    rt_pg_batch_t *b = rt_pg_batch_new(pool);
    T_REQUIRE(b != NULL);
    const char *claim[] = {scope, "race", "h", "48"};
    rt_pg_add(b, svc_stmt_idem_claim, 4, claim);
    rt_pg_add_sql(b, "SELECT pg_sleep(0.2)", 0, NULL);
    T_REQUIRE(submit(b, 10000, &r.o[i]) == 0);
  }
  T_REQUIRE(run_until(race_done, &r, 15000));
  int wins = (r.o[0].err == 0) + (r.o[1].err == 0);
  int dups = (r.o[0].err == RT_PG_E_UNIQUE) + (r.o[1].err == RT_PG_E_UNIQUE);
  T_CHECK_EQ_INT(wins, 1);
  T_CHECK_EQ_INT(dups, 1);
}

static void test_inbox(void) {
  outcome_t o;
  char id[37];
  svc_uuid7(id);
  const char *vals[] = {id, "payment.requested", "86400"};
  extern const svc_stmt_table_t svc_consume_stmts;
  int stmt = *svc_consume_stmts.stmts[0].id;
  T_CHECK_EQ_INT(run1(stmt, 3, vals, &o), 0);
  T_CHECK_EQ_INT(run1(stmt, 3, vals, &o), RT_PG_E_UNIQUE);
  T_CHECK_EQ_INT(exec1(pool, "SELECT count(*) FROM claims WHERE scope = '#inbox' AND key IN"
                             " (SELECT key FROM claims ORDER BY created_at DESC LIMIT 1)",
                       &o),
                 0);
  T_CHECK_STR(o.first[0], "1");
}

static void test_two_phase(void) {
  outcome_t o;
  char t1[37], t2[37];
  svc_uuid7(t1);
  svc_uuid7(t2);
  const char *r1[] = {scope, "tp", "hash-a", "48", t1, "30"};
  T_CHECK_EQ_INT(run1(svc_stmt_idem_reserve, 6, r1, &o), 0);
  T_CHECK_EQ_INT(o.rows[0], 1); /* ours */
  const char *r2[] = {scope, "tp", "hash-a", "48", t2, "30"};
  T_CHECK_EQ_INT(run1(svc_stmt_idem_reserve, 6, r2, &o), 0);
  T_CHECK_EQ_INT(o.rows[0], 0); /* busy: the lock holds */
  /* The lock lapses: the same request takes it over, another does not. */
  char sql[256];
  snprintf(sql, sizeof sql,
           "UPDATE claims SET locked_until = now() - interval '1 s' WHERE scope = '%s' AND key = 'tp'",
           scope);
  T_CHECK_EQ_INT(exec1(pool, sql, &o), 0);
  const char *r3[] = {scope, "tp", "hash-b", "48", t2, "30"};
  T_CHECK_EQ_INT(run1(svc_stmt_idem_reserve, 6, r3, &o), 0);
  T_CHECK_EQ_INT(o.rows[0], 0);
  T_CHECK_EQ_INT(run1(svc_stmt_idem_reserve, 6, r2, &o), 0);
  T_CHECK_EQ_INT(o.rows[0], 1);
  /* The first holder's token is stale now. */
  const char *stale[] = {scope, "tp", t1};
  T_CHECK_EQ_INT(run1(svc_stmt_idem_reopen, 3, stale, &o), 0);
  const char *mine[] = {scope, "tp", t2};
  rt_pg_batch_t *b = rt_pg_batch_new(pool);
  T_REQUIRE(b != NULL);
  rt_pg_add(b, svc_stmt_idem_reopen, 3, mine);
  const char *fin[] = {scope, "tp", "202", "{}"};
  rt_pg_add(b, svc_stmt_idem_finish, 4, fin);
  T_REQUIRE(submit(b, 10000, &o) == 0);
  T_REQUIRE(run_until(outcome_done, &o, 15000));
  T_CHECK_EQ_INT(o.err, 0);
  T_CHECK_STR(o.first[1], "202");
  const char *read[] = {scope, "tp"};
  T_CHECK_EQ_INT(run1(svc_stmt_idem_read, 2, read, &o), 0);
  T_CHECK_STR(o.first[0], "202");
}

static void test_prune(void) {
  outcome_t o;
  T_CHECK_EQ_INT(claim_and_finish("old", "h", "201", "{}", &o), 0);
  T_CHECK_EQ_INT(claim_and_finish("new", "h", "201", "{}", &o), 0);
  char sql[256];
  snprintf(sql, sizeof sql,
           "UPDATE claims SET expires_at = now() - interval '1 s' WHERE scope = '%s' AND key = 'old'",
           scope);
  T_CHECK_EQ_INT(exec1(pool, sql, &o), 0);
  T_CHECK_EQ_INT(run1(svc_stmt_prune, 0, NULL, &o), 0);
  snprintf(sql, sizeof sql,
           "SELECT string_agg(key, ',' ORDER BY key) FROM claims WHERE scope = '%s'"
           " AND key IN ('old', 'new')",
           scope);
  T_CHECK_EQ_INT(exec1(pool, sql, &o), 0);
  T_CHECK_STR(o.first[0], "new");
}

int main(void) {
  rt_log_init("test_claims", RT_LOG_WARN, NULL, 0);
  db_url = getenv("PROBE_DB_URL");
  if (db_url == NULL || db_url[0] == '\0') {
    fprintf(stderr, "PROBE_DB_URL is not set: eval \"$(deploy/pg env)\"\n");
    printf("0 passed, 1 failed\n");
    return 1;
  }
  PGconn *conn = PQconnectdb(db_url);
  if (PQstatus(conn) != CONNECTION_OK ||
      svc_migrate(conn, "common", svc_common_migrations, svc_common_migrations_count) < 0) {
    fprintf(stderr, "cannot migrate the probe database\n");
    PQfinish(conn);
    printf("0 passed, 1 failed\n");
    return 1;
  }
  PQfinish(conn);
  snprintf(scope, sizeof scope, "test-claims-%llu", (unsigned long long)rt_now_ns());
  rt_loop_config_t cfg = {0};
  if (rt_loop_create(&loop, &cfg) != 0) return 1;
  rt_pg_config_t pc = {.url = db_url, .name = "claims", .conns_count = 2};
  if (rt_pg_pool_create(&pool, loop, &pc) != 0) return 1;
  register_stmts(pool);
  if (rt_pg_pool_start(pool) != 0 || !run_until(pool_is_up, pool, 10000)) return 1;
  T_RUN(test_once);
  T_RUN(test_race);
  T_RUN(test_inbox);
  T_RUN(test_two_phase);
  T_RUN(test_prune);
  pool_free(pool);
  rt_loop_destroy(loop);
  return t_done();
}
