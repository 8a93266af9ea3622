/*
 * svc_migrate.c - versioned SQL migrations, applied at start-up.
 *
 * The files live in actors/<svc>/migrations/NNNN_name.sql (and the shared
 * tables in actors/common/migrations/) and are embedded into the binary at
 * build time (embed_sql.py), so a binary always carries exactly the schema
 * it was written against, and nothing has to be shipped next to it.
 *
 * Each is applied once, in version order, in its own transaction together
 * with its row in schema_migrations (component, version, name, checksum).
 * A session advisory lock serialises instances that start at the same time:
 * the second waits, then finds everything applied. A file whose checksum
 * no longer matches the applied one stops the start-up: migrations are
 * append-only.
 *
 * This runs on the main thread before any loop starts, over a plain
 * blocking connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "svc_internal.h"

/* pg_advisory_lock key: "paycore migrations" in ASCII, one per database. */
#define MIGRATION_LOCK_KEY "8245894212856312946"

static int exec_ok(PGconn *conn, const char *sql, const char *what) {
  PGresult *r = PQexec(conn, sql);
  ExecStatusType st = PQresultStatus(r);
  bool ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
  if (!ok) {
    const char *state = PQresultErrorField(r, PG_DIAG_SQLSTATE);
    const char *msg = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    RT_ERROR("migration step failed", RT_LF_STR("step", what),
             RT_LF_STR("sqlstate", state ? state : ""), RT_LF_STR("error", msg ? msg : ""));
  }
  PQclear(r);
  return ok ? 0 : SVC_E_MIGRATION;
}

static int ensure_table(PGconn *conn) {
  return exec_ok(conn,
                 "CREATE TABLE IF NOT EXISTS schema_migrations ("
                 " component text NOT NULL,"
                 " version int NOT NULL,"
                 " name text NOT NULL,"
                 " checksum text NOT NULL,"
                 " applied_at timestamptz NOT NULL DEFAULT now(),"
                 " PRIMARY KEY (component, version))",
                 "schema_migrations");
}

/* The checksum recorded for a version, or "" when not applied. */
static int applied_checksum(PGconn *conn, const char *component, int version, char out[65]) {
  char v[16];
  snprintf(v, sizeof v, "%d", version);
  const char *vals[] = {component, v};
  PGresult *r = PQexecParams(conn,
                             "SELECT checksum FROM schema_migrations"
                             " WHERE component = $1 AND version = $2::int",
                             2, NULL, vals, NULL, NULL, 0);
  int rc = 0;
  out[0] = '\0';
  if (PQresultStatus(r) != PGRES_TUPLES_OK) {
    rc = SVC_E_MIGRATION;
  } else if (PQntuples(r) == 1) {
    snprintf(out, 65, "%s", PQgetvalue(r, 0, 0));
  }
  PQclear(r);
  return rc;
}

static int apply_one(PGconn *conn, const char *component, const svc_migration_t *m,
                     const char *checksum) {
  int rc = exec_ok(conn, "BEGIN", "begin");
  if (rc == 0) rc = exec_ok(conn, m->sql, m->name);
  if (rc == 0) {
    char v[16];
    snprintf(v, sizeof v, "%d", m->version);
    const char *vals[] = {component, v, m->name, checksum};
    PGresult *r = PQexecParams(conn,
                               "INSERT INTO schema_migrations (component, version, name, checksum)"
                               " VALUES ($1, $2::int, $3, $4)",
                               4, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(r) != PGRES_COMMAND_OK) rc = SVC_E_MIGRATION;
    PQclear(r);
  }
  if (rc == 0) rc = exec_ok(conn, "COMMIT", "commit");
  if (rc < 0) exec_ok(conn, "ROLLBACK", "rollback");
  return rc;
}

static int migrate_locked(PGconn *conn, const char *component,
                          const svc_migration_t *migrations, size_t count) {
  int rc = ensure_table(conn);
  int prev = 0;
  for (size_t i = 0; rc == 0 && i < count; i++) {
    const svc_migration_t *m = &migrations[i];
    if (m->version <= prev) {
      RT_ERROR("migrations out of order or duplicated", RT_LF_STR("file", m->name));
      return SVC_E_MIGRATION;
    }
    prev = m->version;
    char want[65], have[65];
    svc_sha256_hex(m->sql, strlen(m->sql), want);
    rc = applied_checksum(conn, component, m->version, have);
    if (rc < 0) break;
    if (have[0] != '\0') {
      if (strcmp(have, want) != 0) {
        RT_ERROR("applied migration was changed; add a new one instead",
                 RT_LF_STR("component", component), RT_LF_STR("file", m->name));
        rc = SVC_E_MIGRATION;
      }
      continue;
    }
    rc = apply_one(conn, component, m, want);
    if (rc == 0) {
      RT_INFO("migration applied", RT_LF_STR("component", component), RT_LF_STR("file", m->name));
    }
  }
  return rc;
}

int svc_migrate(PGconn *conn, const char *component, const svc_migration_t *migrations,
                size_t count) {
  int rc = exec_ok(conn, "SELECT pg_advisory_lock(" MIGRATION_LOCK_KEY ")", "lock");
  if (rc < 0) return rc;
  rc = migrate_locked(conn, component, migrations, count);
  exec_ok(conn, "SELECT pg_advisory_unlock(" MIGRATION_LOCK_KEY ")", "unlock");
  return rc;
}
