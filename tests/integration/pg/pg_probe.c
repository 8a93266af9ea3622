/*
 * pg_probe.c - runtime/pg's asynchronous connect as a program, for the
 * tests that drive it from outside (test_pg_tls.py).
 *
 *   pg_probe URL TIMEOUT_MS
 *
 * Opens a pool of one connection on URL and waits up to TIMEOUT_MS for it
 * to come up. Up: asks the server how this very connection arrived, prints
 * "up ssl=<t|f> version=<TLS version or ->" and exits 0. Not up: prints
 * "down" and exits 1. The pool logs at WARN and above to stderr, so a
 * refused connect says why there ("database connect failed", with libpq's
 * message). Exit 2 on bad arguments.
 */
#include <stdio.h>
#include <stdlib.h>

#include "pgtest.h"

static int probe(uint32_t timeout_ms) {
  rt_pg_config_t cfg = {.url = db_url, .name = "pg_probe", .conns_count = 1,
                        .connect_timeout_ms = timeout_ms, .backoff_min_ms = 100,
                        .backoff_max_ms = 1000};
  rt_pg_pool_t *p = NULL;
  if (rt_pg_pool_create(&p, loop, &cfg) != 0 || rt_pg_pool_start(p) != 0) {
    printf("down\n");
    return 1;
  }
  int rc = 1;
  outcome_t o;
  if (run_until(pool_is_up, p, timeout_ms) &&
      exec1(p,
            "SELECT CASE WHEN ssl THEN 't' ELSE 'f' END || ' ' || coalesce(version, '-')"
            " FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &o) == 0 &&
      o.rows[0] == 1) {
    char ssl[8] = "", version[32] = "";
    if (sscanf(o.first[0], "%7s %31s", ssl, version) == 2) {
      printf("up ssl=%s version=%s\n", ssl, version);
      rc = 0;
    }
  }
  if (rc != 0) printf("down\n");
  pool_free(p);
  return rc;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: pg_probe URL TIMEOUT_MS\n");
    return 2;
  }
  char *end = NULL;
  unsigned long timeout_ms = strtoul(argv[2], &end, 10);
  if (end == argv[2] || *end != '\0' || timeout_ms == 0 || timeout_ms > 600000) {
    fprintf(stderr, "pg_probe: TIMEOUT_MS must be 1..600000\n");
    return 2;
  }
  rt_log_init("pg_probe", RT_LOG_WARN, NULL, 0);
  db_url = argv[1];
  rt_loop_config_t cfg = {0};
  if (rt_loop_create(&loop, &cfg) != 0) return 2;
  int rc = probe((uint32_t)timeout_ms);
  rt_loop_destroy(loop);
  return rc;
}
