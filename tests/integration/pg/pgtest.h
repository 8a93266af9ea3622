/*
 * pgtest.h - the harness of the tests that run runtime/pg against a real
 * PostgreSQL: a loop run until a condition holds, pools made and closed,
 * one batch submitted and waited for with its outcome copied out. Header
 * only (static functions); set pgtest_loop and pgtest_url first.
 */
#ifndef PGTEST_H
#define PGTEST_H

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "pg.h"
#include "t.h"

static rt_loop_t *loop;       /* the test's loop, made by main() */
static const char *db_url;    /* the database the pools connect to */

/* ---- helpers ----------------------------------------------------------- */

typedef bool (*cond_fn)(void *arg);

typedef struct waiter {
  cond_fn cond;
  void *arg;
  uint64_t deadline_ns;
  bool met;
} waiter_t;

static inline void waiter_tick(rt_timer_t *t) {
  waiter_t *w = t->ctx;
  if (w->cond(w->arg)) {
    w->met = true;
    rt_loop_stop(loop);
  } else if (rt_now_ns() > w->deadline_ns) {
    rt_loop_stop(loop);
  }
}

/* Runs the loop until cond holds (checked every 2 ms) or timeout_ms. */
static inline bool run_until(cond_fn cond, void *arg, uint32_t timeout_ms) {
  waiter_t w = {.cond = cond, .arg = arg,
                .deadline_ns = rt_now_ns() + (uint64_t)timeout_ms * 1000000u};
  if (cond(arg)) return true;
  rt_timer_t t;
  rt_timer_init(&t, waiter_tick, &w);
  rt_timer_start(loop, &t, 2, 2);
  rt_loop_run(loop);
  rt_timer_stop(loop, &t);
  return w.met;
}

static inline bool pool_is_up(void *arg) { return rt_pg_pool_up(arg); }

static inline bool counter_reaches(void *arg) {
  int *pair = arg; /* [0] done, [1] wanted */
  return pair[0] >= pair[1];
}

static inline rt_pg_pool_t *pool_new(uint32_t conns, uint32_t depth, uint32_t queue_max,
                              uint32_t statement_timeout_ms) {
  rt_pg_config_t cfg = {
      .url = db_url,
      .name = "test",
      .conns_count = conns,
      .pipeline_depth = depth,
      .queue_max = queue_max,
      .statement_timeout_ms = statement_timeout_ms,
      .backoff_min_ms = 20,
      .backoff_max_ms = 200,
  };
  rt_pg_pool_t *p = NULL;
  if (rt_pg_pool_create(&p, loop, &cfg) != 0) return NULL;
  if (rt_pg_pool_start(p) != 0) return NULL;
  if (!run_until(pool_is_up, p, 10000)) {
    fprintf(stderr, "pool did not come up\n");
  }
  return p;
}

static bool closed_flag;
static inline void on_closed(void *arg) { closed_flag = true; }
static inline bool is_closed(void *arg) { return closed_flag; }

static inline void pool_free(rt_pg_pool_t *p) {
  closed_flag = false;
  rt_pg_pool_close(p, on_closed, NULL);
  T_CHECK(run_until(is_closed, NULL, 10000));
  rt_pg_pool_destroy(p);
}

/* One batch, waited for: the outcome copied out. */
typedef struct outcome {
  bool done;
  int err;
  int stmt_index;
  char sqlstate[6];
  char constraint[64];
  int rows[RT_PG_BATCH_STMTS_MAX];
  char first[RT_PG_BATCH_STMTS_MAX][128]; /* row 0, column 0 */
  uint64_t took_ms;
  uint64_t started_ns;
} outcome_t;

static inline void outcome_cb(rt_pg_batch_t *b, int err, void *ctx) {
  outcome_t *o = ctx;
  o->done = true;
  o->err = err;
  o->took_ms = (rt_now_ns() - o->started_ns) / 1000000u;
  if (err != 0) {
    const rt_pg_error_t *e = rt_pg_error(b);
    o->stmt_index = e->stmt_index;
    snprintf(o->sqlstate, sizeof o->sqlstate, "%s", e->sqlstate);
    snprintf(o->constraint, sizeof o->constraint, "%s", e->constraint);
  }
  for (int i = 0; i < rt_pg_count(b); i++) {
    o->rows[i] = rt_pg_rows(b, i);
    const char *v = rt_pg_value(b, i, 0, 0);
    snprintf(o->first[i], sizeof o->first[i], "%s", v ? v : "");
  }
}

static inline bool outcome_done(void *arg) { return ((outcome_t *)arg)->done; }

static inline int submit(rt_pg_batch_t *b, uint32_t deadline_ms, outcome_t *o) {
  memset(o, 0, sizeof *o);
  o->started_ns = rt_now_ns();
  return rt_pg_submit(b, deadline_ms, outcome_cb, o);
}

/* Runs ad hoc statements (no parameters) as one batch and waits. */
static inline int run_sql(rt_pg_pool_t *p, outcome_t *o, const char *const *sqls, int n) {
  rt_pg_batch_t *b = rt_pg_batch_new(p);
  if (b == NULL) return -ENOMEM;
  for (int i = 0; i < n; i++) rt_pg_add_sql(b, sqls[i], 0, NULL);
  int rc = submit(b, 10000, o);
  if (rc < 0) return rc;
  if (!run_until(outcome_done, o, 15000)) return RT_E_TIMEOUT;
  return o->err;
}

static int exec1(rt_pg_pool_t *p, const char *sql, outcome_t *o) {
  const char *sqls[] = {sql};
  return run_sql(p, o, sqls, 1);
}

#endif /* PGTEST_H */
