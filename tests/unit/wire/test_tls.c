/*
 * The platform's inner TLS: a server-side and a client-side filter driven
 * against each other in one thread (no socket: each one's `wire` output is
 * the other's input), on certificates of two private CAs made by
 * deploy/certs.sh --internal. Mutual authentication works and carries
 * bytes both ways; a client without a certificate, with another CA's, or
 * speaking plain text is refused by the server; a client refuses a server
 * whose certificate names another process or comes from another CA.
 *
 *   test_wire_tls CERTS_SH
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "t.h"
#include "tls.h"

static char dir_ours[64], dir_other[64];

static int make_certs(const char *certs_sh, char *dir, size_t dir_bytes) {
  snprintf(dir, dir_bytes, "/tmp/test_wire_tls.XXXXXX");
  if (mkdtemp(dir) == NULL) return -1;
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "bash '%s' --internal '%s' >/dev/null 2>&1", certs_sh, dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void cleanup(void) {
  char cmd[256];
  for (int i = 0; i < 2; i++) {
    const char *d = i ? dir_other : dir_ours;
    if (d[0] == '\0') continue;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", d);
  }
}

/* Credentials: the CA of ca_dir, and name's pair from pair_dir (NULL: none). */
static wire_tls_creds_t *creds(const char *ca_dir, const char *pair_dir, const char *name) {
  char ca[128], crt[128], key[128];
  snprintf(ca, sizeof ca, "%s/ca.crt", ca_dir);
  snprintf(crt, sizeof crt, "%s/%s.crt", pair_dir ? pair_dir : "", name ? name : "");
  snprintf(key, sizeof key, "%s/%s.key", pair_dir ? pair_dir : "", name ? name : "");
  wire_tls_creds_t *k = NULL;
  int rc = wire_tls_creds_load(&k, ca, pair_dir ? crt : NULL, pair_dir ? key : NULL);
  return rc == 0 ? k : NULL;
}

/* One connection: both filters' states and what each decoded. */
typedef struct pair {
  wire_tls_filter_t *srv_f;
  wire_tls_filter_t *cli_f;
  void *srv;
  void *cli;
  http_buf_t to_srv;   /* the client's wire bytes not yet given */
  http_buf_t to_cli;
  http_buf_t srv_plain;
  http_buf_t cli_plain;
  int srv_err;
  int cli_err;
} pair_t;

static void pair_open(pair_t *p, wire_tls_filter_t *srv_f, wire_tls_filter_t *cli_f) {
  memset(p, 0, sizeof *p);
  p->srv_f = srv_f;
  p->cli_f = cli_f;
  http_buf_init(&p->to_srv, 0, 0);
  http_buf_init(&p->to_cli, 0, 0);
  http_buf_init(&p->srv_plain, 0, 0);
  http_buf_init(&p->cli_plain, 0, 0);
  const http_filter_t *s = wire_tls_filter_http(srv_f);
  p->srv = s->open(s->ctx, -1);
  if (cli_f != NULL) {
    const http_filter_t *c = wire_tls_filter_http(cli_f);
    p->cli = c->open(c->ctx, -1);
    if (p->cli != NULL) p->cli_err = c->output(p->cli, NULL, 0, &p->to_srv);
  }
}

/* Moves bytes both ways until neither side has any, or one fails. */
static void pair_pump(pair_t *p) {
  const http_filter_t *s = wire_tls_filter_http(p->srv_f);
  const http_filter_t *c = p->cli_f ? wire_tls_filter_http(p->cli_f) : NULL;
  for (int turns = 0; turns < 32 && p->srv_err == 0 && p->cli_err == 0; turns++) {
    if (p->to_srv.len == 0 && p->to_cli.len == 0) return;
    if (p->to_srv.len > 0) {
      http_buf_t in = p->to_srv;
      http_buf_init(&p->to_srv, 0, 0);
      p->srv_err = s->input(p->srv, in.data, in.len, &p->srv_plain, &p->to_cli);
      http_buf_deinit(&in);
    }
    if (p->to_cli.len > 0 && c != NULL && p->srv_err == 0) {
      http_buf_t in = p->to_cli;
      http_buf_init(&p->to_cli, 0, 0);
      p->cli_err = c->input(p->cli, in.data, in.len, &p->cli_plain, &p->to_srv);
      http_buf_deinit(&in);
    }
  }
}

static void pair_close(pair_t *p) {
  if (p->srv != NULL) wire_tls_filter_http(p->srv_f)->free(p->srv);
  if (p->cli != NULL) wire_tls_filter_http(p->cli_f)->free(p->cli);
  http_buf_deinit(&p->to_srv);
  http_buf_deinit(&p->to_cli);
  http_buf_deinit(&p->srv_plain);
  http_buf_deinit(&p->cli_plain);
}

static bool plain_is(const http_buf_t *b, const char *s) {
  return b->len == strlen(s) && memcmp(b->data, s, b->len) == 0;
}

/* ------------------------------------------------------------------------ */

static wire_tls_creds_t *k_profile, *k_account, *k_anon, *k_foreign, *k_foreign_srv;
static wire_tls_filter_t *srv, *srv_foreign;

static void test_mutual(void) {
  wire_tls_filter_t *cli = NULL;
  T_REQUIRE(wire_tls_client_create(&cli, k_account, "profile", 4) == 0);
  pair_t p;
  pair_open(&p, srv, cli);
  T_REQUIRE(p.srv != NULL && p.cli != NULL);
  /* Given before the handshake: held, then sent by the call that ends it. */
  const http_filter_t *c = wire_tls_filter_http(cli);
  T_CHECK_EQ_INT(c->output(p.cli, "ping", 4, &p.to_srv), 0);
  pair_pump(&p);
  T_CHECK_EQ_INT(p.srv_err, 0);
  T_CHECK_EQ_INT(p.cli_err, 0);
  T_CHECK(wire_tls_conn_ready(p.srv));
  T_CHECK(wire_tls_conn_ready(p.cli));
  T_CHECK(plain_is(&p.srv_plain, "ping"));
  const http_filter_t *s = wire_tls_filter_http(srv);
  T_CHECK_EQ_INT(s->output(p.srv, "pong", 4, &p.to_cli), 0);
  pair_pump(&p);
  T_CHECK(plain_is(&p.cli_plain, "pong"));
  wire_tls_counts_t n;
  wire_tls_filter_counts(cli, &n);
  T_CHECK_EQ_INT(n.handshakes, 1);
  T_CHECK_EQ_INT(n.failures, 0);
  pair_close(&p);
  wire_tls_filter_destroy(cli);
}

/* The client side is fine with the server; the server refuses it. */
static void expect_server_refuses(wire_tls_creds_t *k) {
  wire_tls_counts_t before, after;
  wire_tls_filter_counts(srv, &before);
  wire_tls_filter_t *cli = NULL;
  T_REQUIRE(wire_tls_client_create(&cli, k, "profile", 4) == 0);
  pair_t p;
  pair_open(&p, srv, cli);
  T_REQUIRE(p.srv != NULL && p.cli != NULL);
  wire_tls_filter_http(cli)->output(p.cli, "ping", 4, &p.to_srv);
  pair_pump(&p);
  T_CHECK_EQ_INT(p.srv_err, WIRE_TLS_E_ENGINE);
  T_CHECK(!wire_tls_conn_ready(p.srv));
  T_CHECK_EQ_INT(p.srv_plain.len, 0);
  wire_tls_filter_counts(srv, &after);
  T_CHECK_EQ_INT(after.failures, before.failures + 1);
  T_CHECK_EQ_INT(after.handshakes, before.handshakes);
  pair_close(&p);
  wire_tls_filter_destroy(cli);
}

static void test_client_without_certificate(void) { expect_server_refuses(k_anon); }

static void test_client_of_another_ca(void) { expect_server_refuses(k_foreign); }

static void test_plain_client(void) {
  pair_t p;
  pair_open(&p, srv, NULL);
  T_REQUIRE(p.srv != NULL);
  const char *req = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
  int rc = wire_tls_filter_http(srv)->input(p.srv, req, strlen(req), &p.srv_plain, &p.to_cli);
  T_CHECK_EQ_INT(rc, WIRE_TLS_E_ENGINE);
  T_CHECK_EQ_INT(p.srv_plain.len, 0);
  pair_close(&p);
}

/* The client refuses: a server that is not the process it asked for. */
static void expect_client_refuses(wire_tls_filter_t *server, const char *name) {
  wire_tls_filter_t *cli = NULL;
  T_REQUIRE(wire_tls_client_create(&cli, k_account, name, 4) == 0);
  pair_t p;
  pair_open(&p, server, cli);
  T_REQUIRE(p.srv != NULL && p.cli != NULL);
  wire_tls_filter_http(cli)->output(p.cli, "secret", 6, &p.to_srv);
  pair_pump(&p);
  T_CHECK_EQ_INT(p.cli_err, WIRE_TLS_E_ENGINE);
  T_CHECK(!wire_tls_conn_ready(p.cli));
  T_CHECK_EQ_INT(p.srv_plain.len, 0); /* the held request never left */
  wire_tls_counts_t n;
  wire_tls_filter_counts(cli, &n);
  T_CHECK_EQ_INT(n.failures, 1);
  T_CHECK(n.last_error != 0);
  pair_close(&p);
  wire_tls_filter_destroy(cli);
}

static void test_server_of_another_name(void) { expect_client_refuses(srv, "account"); }

static void test_server_of_another_ca(void) { expect_client_refuses(srv_foreign, "profile"); }

static void test_bad_files(void) {
  wire_tls_creds_t *k = NULL;
  char ca[128], crt[128], key[128];
  snprintf(ca, sizeof ca, "%s/ca.crt", dir_ours);
  snprintf(crt, sizeof crt, "%s/profile.crt", dir_ours);
  snprintf(key, sizeof key, "%s/account.key", dir_ours);
  /* A key that is not the certificate's. */
  T_CHECK_EQ_INT(wire_tls_creds_load(&k, ca, crt, key), WIRE_TLS_E_KEY);
  /* A key file as the CA: no certificate in it. */
  T_CHECK_EQ_INT(wire_tls_creds_load(&k, key, NULL, NULL), WIRE_TLS_E_CA);
  T_CHECK(wire_tls_creds_load(&k, "/nonexistent/ca.crt", NULL, NULL) < 0);
  /* A server needs a certificate. */
  wire_tls_filter_t *f = NULL;
  T_CHECK_EQ_INT(wire_tls_server_create(&f, k_anon, 4), -EINVAL);
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_wire_tls CERTS_SH\n");
    return 2;
  }
  rt_log_init("test_wire_tls", RT_LOG_WARN, NULL, 0);
  if (make_certs(argv[1], dir_ours, sizeof dir_ours) < 0 ||
      make_certs(argv[1], dir_other, sizeof dir_other) < 0) {
    fprintf(stderr, "deploy/certs.sh --internal failed\n");
    cleanup();
    return 1;
  }
  k_profile = creds(dir_ours, dir_ours, "profile");
  k_account = creds(dir_ours, dir_ours, "account");
  k_anon = creds(dir_ours, NULL, NULL);
  k_foreign = creds(dir_ours, dir_other, "account");     /* trusts us; not ours */
  k_foreign_srv = creds(dir_other, dir_other, "profile"); /* another CA's profile */
  if (k_profile == NULL || k_account == NULL || k_anon == NULL || k_foreign == NULL ||
      k_foreign_srv == NULL || wire_tls_server_create(&srv, k_profile, 8) < 0 ||
      wire_tls_server_create(&srv_foreign, k_foreign_srv, 8) < 0) {
    fprintf(stderr, "set-up failed\n");
    cleanup();
    return 1;
  }
  test_mutual();
  test_client_without_certificate();
  test_client_of_another_ca();
  test_plain_client();
  test_server_of_another_name();
  test_server_of_another_ca();
  test_bad_files();
  wire_tls_filter_destroy(srv);
  wire_tls_filter_destroy(srv_foreign);
  wire_tls_creds_t *all[] = {k_profile, k_account, k_anon, k_foreign, k_foreign_srv};
  for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) wire_tls_creds_free(all[i]);
  cleanup();
  return t_done();
}
