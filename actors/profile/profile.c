/*
 * profile.c - the profile service: customers and their credentials.
 *
 *   POST  /v1/customers                 sign-up (anyone) or by an operator
 *   GET   /v1/customers                 list, by cursor (operator, admin, auditor)
 *   GET   /v1/customers/{id}            the customer, operator, admin
 *   PATCH /v1/customers/{id}            the customer, operator, admin
 *   GET   /internal/customers/{id}      exists and status (service, operator)
 *   POST  /internal/credentials/verify  email + password -> id + roles (service)
 *
 * Passwords are hashed with Argon2id on the worker threads (tens of ms of
 * CPU and memory each: never on a loop thread), and are never logged nor
 * returned. Names, emails and phones appear in logs only as keyed hashes.
 */
#include <argon2.h>
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "profile_bodies.h"
#include "svc.h"

extern const svc_migration_t profile_migrations[];
extern const size_t profile_migrations_count;

#define ARGON2_SALT_BYTES 16
#define ARGON2_HASH_BYTES 32
#define ENCODED_BYTES_MAX 160
#define PASSWORD_BYTES_MIN 8

static struct {
  uint32_t t_cost;
  uint32_t m_kib;
  /* Verified against when the email is unknown, so that a miss costs the
   * same time as a wrong password. */
  char dummy_hash[ENCODED_BYTES_MAX];
} cfg;

static int s_insert, s_get, s_update, s_list, s_status, s_credentials, s_updated_event;

/* Rendered in SQL so that every route answers the same shape. */
#define CUSTOMER_JSON                                                           \
  "json_build_object('id', id, 'name', name, 'email', email, 'phone', phone,"   \
  " 'status', status, 'roles', roles,"                                          \
  " 'created_at', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'),"  \
  " 'updated_at', to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text"

static const svc_stmt_t stmts[] = {
    {&s_insert,
     "INSERT INTO customers (id, name, email, phone, password_hash)"
     " VALUES ($1::uuid, $2, $3, $4, $5) RETURNING " CUSTOMER_JSON,
     5},
    {&s_get, "SELECT " CUSTOMER_JSON " FROM customers WHERE id = $1::uuid", 1},
    {&s_update,
     "UPDATE customers SET name = COALESCE($2, name), email = COALESCE($3, email),"
     " phone = COALESCE($4, phone), status = COALESCE($5, status), updated_at = now()"
     " WHERE id = $1::uuid RETURNING " CUSTOMER_JSON,
     5},
    {&s_list,
     "SELECT id, " CUSTOMER_JSON " FROM customers"
     " WHERE ($1::uuid IS NULL OR id > $1::uuid) ORDER BY id LIMIT $2::int",
     2},
    {&s_status, "SELECT status FROM customers WHERE id = $1::uuid", 1},
    {&s_credentials,
     "SELECT id, password_hash, status, array_to_json(roles)::text FROM customers WHERE email = $1",
     1},
    /* The event of a PATCH, written only when the customer exists. */
    /* $1 event id, $2 topic, $3 customer id, $4 payload, $5 headers: only
     * when the customer exists (the update found it). */
    {&s_updated_event,
     SVC_OUTBOX_INSERT("customers c", "1", "2", "$3::text", "$4::jsonb", "5")
     " WHERE c.id = $3::text::uuid",
     5},
};

/* ------------------------------------------------------------------------ */
/* Helpers                                                                  */
/* ------------------------------------------------------------------------ */

static bool email_ok(const char *e) {
  size_t n = strlen(e);
  const char *at = strchr(e, '@');
  if (n < 3 || n > 254 || at == NULL || at == e || strchr(at + 1, '@') != NULL) return false;
  const char *dot = strrchr(at + 1, '.');
  if (dot == NULL || dot == at + 1 || dot[1] == '\0') return false;
  for (const char *p = e; *p; p++)
    if ((unsigned char)*p <= ' ' || *p == 0x7f) return false;
  return true;
}

static void lower(char *s) {
  for (; *s; s++) *s = (char)tolower((unsigned char)*s);
}

static bool phone_ok(const char *p) {
  size_t n = strlen(p);
  if (n < 8 || n > 16 || p[0] != '+' || p[1] < '1' || p[1] > '9') return false;
  for (size_t i = 1; i < n; i++)
    if (!isdigit((unsigned char)p[i])) return false;
  return true;
}

/* The caller is this customer, or staff that may see any customer. */
static bool may_access(const svc_req_t *req, const char *id) {
  if (svc_has_role(req, SVC_ROLE_OPERATOR | SVC_ROLE_ADMIN)) return true;
  return svc_has_role(req, SVC_ROLE_CUSTOMER) && strcmp(req->who.subject, id) == 0;
}

/* A JSON document rendered by the database, answered compact. */
static void reply_text_json(svc_req_t *req, int status, const char *json) {
  svc_reply_json(req, status, json ? json_loads(json, 0, NULL) : NULL);
}

/* ------------------------------------------------------------------------ */
/* POST /v1/customers                                                       */
/* ------------------------------------------------------------------------ */

typedef struct create_state {
  char id[37];
  char email[256];
  char password[PROFILE_PASSWORD_BYTES_MAX + 1];
  char hash[ENCODED_BYTES_MAX];
  int hash_rc;
} create_state_t;

/* On a worker thread. */
static void hash_password(void *arg) {
  create_state_t *st = arg;
  uint8_t salt[ARGON2_SALT_BYTES];
  size_t got = 0;
  while (got < sizeof salt) {
    ssize_t r = getrandom(salt + got, sizeof salt - got, 0);
    if (r > 0) got += (size_t)r;
  }
  st->hash_rc = argon2id_hash_encoded(cfg.t_cost, cfg.m_kib, 1, st->password,
                                      strlen(st->password), salt, sizeof salt,
                                      ARGON2_HASH_BYTES, st->hash, sizeof st->hash);
  explicit_bzero(st->password, sizeof st->password);
}

static void create_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  create_state_t *st = SVC_STATE(req, create_state_t);
  if (err == RT_PG_E_UNIQUE && strcmp(rt_pg_error(b)->constraint, "customers_email_key") == 0) {
    svc_reply_error(req, 409, "email_taken", "a customer with this email already exists");
    return;
  }
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  RT_INFO("customer created", RT_LF_STR("customer", st->id), RT_LF_HASH("email", st->email));
  reply_text_json(req, 201, rt_pg_value(b, 0, 0, 0));
}

static void create_hashed(svc_req_t *req, void *arg) {
  create_state_t *st = arg;
  if (st->hash_rc != ARGON2_OK) {
    RT_ERROR("password hashing failed", RT_LF_STR("error", argon2_error_message(st->hash_rc)));
    svc_reply_error(req, 500, "internal", "internal error");
    return;
  }
  const json_t *body = req->body;
  svc_uuid7(st->id);
  const char *vals[] = {st->id, svc_json_str(body, "name"), st->email,
                        svc_json_str(body, "phone"), st->hash};
  char payload[128];
  snprintf(payload, sizeof payload, "{\"customer_id\":\"%s\",\"status\":\"active\"}", st->id);
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  rt_pg_add(b, s_insert, 5, vals);
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit(b, SVC_EV_CUSTOMER_CREATED, st->id, payload, &trace);
  svc_db(req, b, create_done);
}

static void on_create(svc_req_t *req) {
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(profile_create_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  create_state_t *st = SVC_STATE(req, create_state_t);
  const char *email = svc_json_str(req->body, "email");
  const char *phone = svc_json_str(req->body, "phone");
  const char *password = svc_json_str(req->body, "password");
  if (!email_ok(email)) {
    svc_reply_error(req, 422, "invalid_field", "field 'email' is not an email address");
    return;
  }
  if (phone != NULL && !phone_ok(phone)) {
    svc_reply_error(req, 422, "invalid_field", "field 'phone' must be +<country><number>, 7 to 15 digits");
    return;
  }
  if (strlen(password) < PASSWORD_BYTES_MIN) {
    svc_reply_error(req, 422, "invalid_field", "field 'password' must have at least 8 characters");
    return;
  }
  snprintf(st->email, sizeof st->email, "%s", email);
  lower(st->email);
  snprintf(st->password, sizeof st->password, "%s", password);
  svc_work(req, hash_password, create_hashed, st);
}

/* ------------------------------------------------------------------------ */
/* GET /v1/customers/{id}, GET /internal/customers/{id}                     */
/* ------------------------------------------------------------------------ */

static void get_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
  } else if (rt_pg_rows(b, 0) == 0) {
    svc_reply_error(req, 404, "not_found", "no such customer");
  } else {
    reply_text_json(req, 200, rt_pg_value(b, 0, 0, 0));
  }
}

static bool id_param(svc_req_t *req, const char **id) {
  *id = svc_param_id(req, "id");
  if (*id == NULL) {
    svc_reply_error(req, 404, "not_found", "no such customer");
    return false;
  }
  return true;
}

static void on_get(svc_req_t *req) {
  const char *id;
  if (!id_param(req, &id)) return;
  if (!may_access(req, id)) {
    svc_reply_error(req, 404, "not_found", "no such customer");
    return;
  }
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {id};
  rt_pg_add(b, s_get, 1, vals);
  svc_db(req, b, get_done);
}

static void status_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err != 0) {
    svc_reply_db_error(req, err, b);
    return;
  }
  if (rt_pg_rows(b, 0) == 0) {
    svc_reply_error(req, 404, "not_found", "no such customer");
    return;
  }
  svc_reply_json(req, 200, json_pack("{s:s, s:s}", "id", req->param_id, "status",
                                     rt_pg_value(b, 0, 0, 0)));
}

static void on_status(svc_req_t *req) {
  const char *id;
  if (!id_param(req, &id)) return;
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {id};
  rt_pg_add(b, s_status, 1, vals);
  svc_db(req, b, status_done);
}

/* ------------------------------------------------------------------------ */
/* PATCH /v1/customers/{id}                                                 */
/* ------------------------------------------------------------------------ */

static void patch_done(svc_req_t *req, rt_pg_batch_t *b, int err) {
  if (err == RT_PG_E_UNIQUE && strcmp(rt_pg_error(b)->constraint, "customers_email_key") == 0) {
    svc_reply_error(req, 409, "email_taken", "a customer with this email already exists");
  } else if (err != 0) {
    svc_reply_db_error(req, err, b);
  } else if (rt_pg_rows(b, 0) == 0) {
    svc_reply_error(req, 404, "not_found", "no such customer");
  } else {
    reply_text_json(req, 200, rt_pg_value(b, 0, 0, 0));
  }
}

static void on_patch(svc_req_t *req) {
  const char *id;
  if (!id_param(req, &id)) return;
  if (!may_access(req, id)) {
    svc_reply_error(req, 404, "not_found", "no such customer");
    return;
  }
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(profile_patch_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  if (json_object_size(req->body) == 0) {
    svc_reply_error(req, 422, "nothing_to_update", "give at least one of name, email, phone, status");
    return;
  }
  char email[256] = "";
  const char *e = svc_json_str(req->body, "email");
  const char *phone = svc_json_str(req->body, "phone");
  const char *status = svc_json_str(req->body, "status");
  if (e != NULL) {
    if (!email_ok(e)) {
      svc_reply_error(req, 422, "invalid_field", "field 'email' is not an email address");
      return;
    }
    snprintf(email, sizeof email, "%s", e);
    lower(email);
  }
  if (phone != NULL && !phone_ok(phone)) {
    svc_reply_error(req, 422, "invalid_field", "field 'phone' must be +<country><number>, 7 to 15 digits");
    return;
  }
  if (status != NULL) {
    if (!svc_has_role(req, SVC_ROLE_OPERATOR | SVC_ROLE_ADMIN)) {
      svc_reply_error(req, 403, "forbidden", "only operators may change a customer's status");
      return;
    }
    if (strcmp(status, "active") != 0 && strcmp(status, "blocked") != 0 && strcmp(status, "closed") != 0) {
      svc_reply_error(req, 422, "invalid_field", "field 'status' must be active, blocked or closed");
      return;
    }
  }
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {id, svc_json_str(req->body, "name"), e ? email : NULL, phone, status};
  rt_pg_add(b, s_update, 5, vals);
  /* The event names what changed, never the values. */
  json_t *changed = json_array();
  const char *key;
  json_t *v;
  json_object_foreach(req->body, key, v) json_array_append_new(changed, json_string(key));
  json_t *payload = json_pack("{s:s, s:o}", "customer_id", id, "changed", changed);
  char *text = json_dumps(payload, JSON_COMPACT);
  json_decref(payload);
  svc_trace_t trace;
  svc_trace_of_request(req, &trace);
  svc_emit_t emit;
  svc_emit_prepare(&emit, SVC_EV_CUSTOMER_UPDATED, &trace);
  const char *ev[] = {emit.id, emit.topic, id, text, emit.headers};
  rt_pg_add(b, s_updated_event, 5, ev); /* a NULL text fails the batch: 500 */
  free(text);
  svc_db(req, b, patch_done);
}

/* ------------------------------------------------------------------------ */
/* GET /v1/customers                                                        */
/* ------------------------------------------------------------------------ */

/* A list may lag the primary a little: the read pool. */
static void on_list(svc_req_t *req) { svc_list_page_read(req, SVC_CURSOR_UUID, s_list, NULL); }

/* ------------------------------------------------------------------------ */
/* POST /internal/credentials/verify                                        */
/* ------------------------------------------------------------------------ */

typedef struct verify_state {
  char email[256];
  char password[PROFILE_PASSWORD_BYTES_MAX + 1];
  char hash[ENCODED_BYTES_MAX];
  char id[37];
  char roles[128];
  bool known;
  bool active;
  bool ok;
} verify_state_t;

/* On a worker thread. */
static void verify_password(void *arg) {
  verify_state_t *st = arg;
  const char *hash = st->known ? st->hash : cfg.dummy_hash;
  st->ok = argon2id_verify(hash, st->password, strlen(st->password)) == ARGON2_OK && st->known;
  explicit_bzero(st->password, sizeof st->password);
}

static void verify_checked(svc_req_t *req, void *arg) {
  verify_state_t *st = arg;
  if (!st->ok || !st->active) {
    RT_INFO("credentials refused", RT_LF_HASH("email", st->email), RT_LF_BOOL("known", st->known));
    svc_reply_error(req, 401, "invalid_credentials", "email or password is wrong");
    return;
  }
  json_t *roles = json_loads(st->roles, 0, NULL);
  svc_reply_json(req, 200, json_pack("{s:s, s:o*}", "customer_id", st->id, "roles", roles));
}

static void verify_loaded(svc_req_t *req, rt_pg_batch_t *b, int err) {
  verify_state_t *st = SVC_STATE(req, verify_state_t);
  if (err != 0) {
    explicit_bzero(st->password, sizeof st->password);
    svc_reply_db_error(req, err, b);
    return;
  }
  st->known = rt_pg_rows(b, 0) == 1;
  if (st->known) {
    snprintf(st->id, sizeof st->id, "%s", rt_pg_value(b, 0, 0, 0));
    snprintf(st->hash, sizeof st->hash, "%s", rt_pg_value(b, 0, 0, 1));
    st->active = strcmp(rt_pg_value(b, 0, 0, 2), "active") == 0;
    snprintf(st->roles, sizeof st->roles, "%s", rt_pg_value(b, 0, 0, 3));
  }
  svc_work(req, verify_password, verify_checked, st);
}

static void on_verify(svc_req_t *req) {
  svc_json_error_t err;
  if (svc_json_check(req->body, SVC_FIELDS(profile_verify_fields), &err) < 0) {
    svc_reply_json_error(req, &err);
    return;
  }
  verify_state_t *st = SVC_STATE(req, verify_state_t);
  snprintf(st->email, sizeof st->email, "%s", svc_json_str(req->body, "email"));
  lower(st->email);
  snprintf(st->password, sizeof st->password, "%s", svc_json_str(req->body, "password"));
  rt_pg_batch_t *b = svc_batch(req);
  if (b == NULL) return;
  const char *vals[] = {st->email};
  rt_pg_add(b, s_credentials, 1, vals);
  svc_db(req, b, verify_loaded);
}

/* ------------------------------------------------------------------------ */
/* Definition                                                               */
/* ------------------------------------------------------------------------ */

/* The public routes take their roles from wire/api/api.table (svc.h). */
static const svc_route_t routes[] = {
    {SVC_API_POST_CUSTOMERS, .fn = on_create, .json_body = true},
    {SVC_API_GET_CUSTOMERS, .fn = on_list},
    {SVC_API_GET_CUSTOMERS_ID, .fn = on_get},
    {SVC_API_PATCH_CUSTOMERS_ID, .fn = on_patch, .json_body = true},
    {"GET", "/internal/customers/{id}", on_status, SVC_AUTH_REQUIRED,
     SVC_ROLE_SERVICE | SVC_ROLE_OPERATOR, false},
    {"POST", "/internal/credentials/verify", on_verify, SVC_AUTH_REQUIRED, SVC_ROLE_SERVICE, true},
};

/* Main thread, before the loops: the hash verified for unknown emails. */
static int setup(PGconn *conn) {
  uint8_t salt[ARGON2_SALT_BYTES] = {0};
  int rc = argon2id_hash_encoded(cfg.t_cost, cfg.m_kib, 1, "-", 1, salt, sizeof salt,
                                 ARGON2_HASH_BYTES, cfg.dummy_hash, sizeof cfg.dummy_hash);
  if (rc != ARGON2_OK) {
    RT_ERROR("argon2 unusable with these parameters", RT_LF_STR("error", argon2_error_message(rc)));
    return RT_E_CONFIG;
  }
  return 0;
}

static const svc_event_type_t produces[] = {SVC_EV_CUSTOMER_CREATED, SVC_EV_CUSTOMER_UPDATED};

int main(int argc, char **argv) {
  if (rt_env_u32("ARGON2_T_COST", 2, 1, 16, &cfg.t_cost) < 0) return 2;
  if (rt_env_u32("ARGON2_M_KIB", 19456, 64, 1u << 20, &cfg.m_kib) < 0) return 2;
  static const svc_def_t def = {
      .name = "profile",
      .env_prefix = "PROFILE",
      .default_port = 7001,
      .routes = routes,
      .routes_count = sizeof routes / sizeof routes[0],
      .stmts = stmts,
      .stmts_count = sizeof stmts / sizeof stmts[0],
      .migrations = profile_migrations,
      .setup = setup,
      .usage_env = "  ARGON2_T_COST         Argon2id passes             (2)\n"
                   "  ARGON2_M_KIB          Argon2id memory in KiB      (19456)\n",
      .produces = produces,
      .produces_count = sizeof produces / sizeof produces[0],
  };
  svc_def_t d = def;
  d.migrations_count = profile_migrations_count;
  return svc_main(argc, argv, &d);
}
