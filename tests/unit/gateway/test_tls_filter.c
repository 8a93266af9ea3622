/*
 * The TLS filter's record buffers, driven by a BearSSL client engine in
 * the same thread (no loop runs: the filter is called the way the HTTP
 * server calls it). Between calls an idle connection must hold no buffer,
 * and every way records can arrive must still decode to the same bytes:
 * whole flights, a byte at a time, pipelined requests, a large body, a
 * large response, two connections interleaved, renegotiation refused,
 * a resumed session, close_notify. With the pool of buffers used up, the
 * connection that needs one more is closed and counted, and the others go
 * on.
 *
 *   test_gw_tls_filter CERTS_SH
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls_filter.c" /* the filter's statics: its pool and spare */
#include "t.h"

#define CHUNK_WHOLE 0

static gw_tls_t *tls;
static rt_loop_t *loop;
static int listen_fd = -1;
static br_x509_decoder_context leaf; /* holds the key the clients trust */
static br_x509_knownkey_context known;

/* One client and the filter's state for its connection. */
typedef struct peer {
  br_ssl_client_context cc;
  br_x509_minimal_context xc; /* set up by init_full, replaced by `known` */
  unsigned char iobuf[BR_SSL_BUFSIZE_BIDI];
  gw_tls_filter_t *f;
  gw_tls_conn_t *srv;
  int cfd;
  http_buf_t plain; /* what the filter decoded */
  http_buf_t wire;  /* what the filter has for the client */
  http_buf_t got;   /* what the client decoded */
  int err;          /* the filter's last error, 0 while none */
} peer_t;

/* ------------------------------------------------------------------------ */
/* Set-up                                                                   */
/* ------------------------------------------------------------------------ */

static char certs_dir[64];

static int make_certs(const char *certs_sh, char *dir, size_t dir_bytes) {
  snprintf(dir, dir_bytes, "/tmp/test_gw_tls_filter.XXXXXX");
  if (mkdtemp(dir) == NULL) return -1;
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "bash '%s' '%s' >/dev/null 2>&1", certs_sh, dir);
  return system(cmd) == 0 ? 0 : -1;
}

static int setup(const char *certs_sh) {
  char *dir = certs_dir, crt[128], key[128];
  if (make_certs(certs_sh, dir, sizeof certs_dir) < 0) return -1;
  snprintf(crt, sizeof crt, "%s/tls-ecdsa.crt", dir);
  snprintf(key, sizeof key, "%s/tls-ecdsa.key", dir);
  gw_tls_config_t tc = {.cert_path = crt, .key_path = key, .session_cache_entries = 64,
                        .session_lifetime_s = 60, .handshake_timeout_ms = 10000};
  if (gw_tls_create(&tls, &tc) < 0) return -1;
  /* The clients trust the leaf's key itself. */
  gw__tls_creds_t *k = atomic_load(&tls->creds);
  br_x509_decoder_init(&leaf, NULL, NULL);
  br_x509_decoder_push(&leaf, k->pairs[0].chain[0].data, k->pairs[0].chain[0].data_len);
  const br_x509_pkey *pk = br_x509_decoder_get_pkey(&leaf);
  if (pk == NULL || pk->key_type != BR_KEYTYPE_EC) return -1;
  br_x509_knownkey_init_ec(&known, &pk->key.ec, BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN);
  rt_loop_config_t lc = {.timers_count = 8, .bufs_count = 16, .buf_bytes = 4096,
                         .msgs_count = 16, .sq_entries = 16};
  if (rt_loop_create(&loop, &lc) < 0) return -1;
  listen_fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  if (bind(listen_fd, (struct sockaddr *)&a, sizeof a) < 0 || listen(listen_fd, 64) < 0) return -1;
  return 0;
}

/* A TCP connection over loopback: the server side goes to the filter
 * (which wants a peer address), the client side only stays open. */
static int tcp_pair(int *cfd, int *sfd) {
  struct sockaddr_in a;
  socklen_t alen = sizeof a;
  if (getsockname(listen_fd, (struct sockaddr *)&a, &alen) < 0) return -1;
  *cfd = socket(AF_INET, SOCK_STREAM, 0);
  if (*cfd < 0 || connect(*cfd, (struct sockaddr *)&a, alen) < 0) return -1;
  *sfd = accept(listen_fd, NULL, NULL);
  return *sfd < 0 ? -1 : 0;
}

static peer_t *peer_new(gw_tls_filter_t *f, const br_ssl_session_parameters *resume) {
  peer_t *p = calloc(1, sizeof *p);
  int sfd = -1;
  if (p == NULL || tcp_pair(&p->cfd, &sfd) < 0) {
    free(p);
    return NULL;
  }
  p->f = f;
  http_buf_init(&p->plain, 0, 1 << 20);
  http_buf_init(&p->wire, 0, 1 << 20);
  http_buf_init(&p->got, 0, 1 << 20);
  br_ssl_client_init_full(&p->cc, &p->xc, NULL, 0);
  br_ssl_engine_set_x509(&p->cc.eng, &known.vtable);
  br_ssl_engine_set_buffer(&p->cc.eng, p->iobuf, sizeof p->iobuf, 1);
  if (resume != NULL) br_ssl_engine_set_session_parameters(&p->cc.eng, resume);
  br_ssl_client_reset(&p->cc, "localhost", resume != NULL);
  p->srv = f->http.open(f->http.ctx, sfd);
  if (p->srv == NULL) close(sfd);
  return p;
}

static void peer_free(peer_t *p) {
  if (p == NULL) return;
  if (p->srv != NULL) {
    close(p->srv->fd);
    p->f->http.free(p->srv);
  }
  close(p->cfd);
  http_buf_deinit(&p->plain);
  http_buf_deinit(&p->wire);
  http_buf_deinit(&p->got);
  free(p);
}

/* ------------------------------------------------------------------------ */
/* Moving bytes                                                             */
/* ------------------------------------------------------------------------ */

/* An idle connection between calls: no buffers, and an engine that points
 * at none. */
static bool idle(const peer_t *p) {
  return p->srv->bufs == NULL && p->srv->sc.eng.ibuf == NULL && p->srv->sc.eng.obuf == NULL;
}

/* Record buffers taken from the pool: the spare, and those connections hold. */
static uint32_t bufs_in_use(const gw_tls_filter_t *f) { return f->bufs.in_use; }

/* The client's records to the filter, `chunk` bytes per call (0: all in
 * one). Returns the bytes moved. */
static size_t client_to_server(peer_t *p, size_t chunk) {
  size_t moved = 0;
  for (int turns = 0; turns < 64 && p->err == 0; turns++) {
    size_t n = 0;
    unsigned char *rec = br_ssl_engine_sendrec_buf(&p->cc.eng, &n);
    if (rec == NULL) break;
    for (size_t off = 0; off < n && p->err == 0;) {
      size_t m = chunk == CHUNK_WHOLE || n - off < chunk ? n - off : chunk;
      p->err = p->f->http.input(p->srv, (const char *)rec + off, m, &p->plain, &p->wire);
      off += m;
    }
    br_ssl_engine_sendrec_ack(&p->cc.eng, n);
    moved += n;
  }
  return moved;
}

/* The filter's records to the client, and what the client decodes. */
static size_t server_to_client(peer_t *p) {
  size_t moved = 0, off = 0;
  br_ssl_engine_context *eng = &p->cc.eng;
  for (int turns = 0; turns < 4096; turns++) {
    unsigned st = br_ssl_engine_current_state(eng);
    if (st & BR_SSL_RECVAPP) {
      size_t n = 0;
      unsigned char *d = br_ssl_engine_recvapp_buf(eng, &n);
      http_buf_append(&p->got, d, n);
      br_ssl_engine_recvapp_ack(eng, n);
    } else if ((st & BR_SSL_RECVREC) && off < p->wire.len) {
      size_t n = 0;
      unsigned char *d = br_ssl_engine_recvrec_buf(eng, &n);
      size_t m = p->wire.len - off < n ? p->wire.len - off : n;
      memcpy(d, p->wire.data + off, m);
      br_ssl_engine_recvrec_ack(eng, m);
      off += m;
      moved += m;
    } else {
      break;
    }
  }
  http_buf_consume(&p->wire, off);
  return moved;
}

/* Both ways until neither moves. */
static void pump(peer_t *p, size_t chunk) {
  for (int turns = 0; turns < 64; turns++) {
    size_t moved = client_to_server(p, chunk);
    moved += server_to_client(p);
    if (moved == 0 || p->err != 0) break;
  }
}

static bool handshake(peer_t *p, size_t chunk) {
  pump(p, chunk);
  return p->err == 0 && (br_ssl_engine_current_state(&p->cc.eng) & BR_SSL_SENDAPP);
}

/* Application data from the client, flushed into records. */
static void client_send(peer_t *p, const void *data, size_t len) {
  const unsigned char *d = data;
  for (int turns = 0; turns < 4096 && len > 0; turns++) {
    size_t n = 0;
    unsigned char *buf = br_ssl_engine_sendapp_buf(&p->cc.eng, &n);
    if (buf == NULL) {
      client_to_server(p, CHUNK_WHOLE); /* the engine's buffer is full: send */
      continue;
    }
    size_t m = len < n ? len : n;
    memcpy(buf, d, m);
    br_ssl_engine_sendapp_ack(&p->cc.eng, m);
    d += m;
    len -= m;
  }
  br_ssl_engine_flush(&p->cc.eng, 0);
}

static void fill(char *buf, size_t len, unsigned seed) {
  for (size_t i = 0; i < len; i++) buf[i] = (char)('a' + (i * 7 + seed) % 26);
}

static gw_tls_filter_t *filter_new(uint32_t conns_max, uint32_t records_max) {
  gw_tls_filter_t *f = NULL;
  if (gw_tls_filter_create(&f, tls, loop, NULL, conns_max, records_max) < 0) return NULL;
  return f;
}

static void filter_done(gw_tls_filter_t *f) {
  gw_tls_filter_stop(f);
  gw_tls_filter_destroy(f);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

static const char request[] = "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n";
static const char response[] = "HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\nhello, world\n";

static void test_exchange(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  T_CHECK_EQ_INT(bufs_in_use(f), 1); /* the spare */
  peer_t *p = peer_new(f, NULL);
  T_REQUIRE(p != NULL && p->srv != NULL);
  T_CHECK(idle(p));
  T_REQUIRE(handshake(p, CHUNK_WHOLE));
  T_CHECK(p->srv->handshake_done);
  T_CHECK(idle(p));
  client_send(p, request, sizeof request - 1);
  client_to_server(p, CHUNK_WHOLE);
  T_CHECK_EQ_INT(p->err, 0);
  T_CHECK(p->plain.len == sizeof request - 1 && memcmp(p->plain.data, request, p->plain.len) == 0);
  T_CHECK(idle(p));
  T_CHECK_EQ_INT(f->http.output(p->srv, response, sizeof response - 1, &p->wire), 0);
  T_CHECK(idle(p));
  server_to_client(p);
  T_CHECK(p->got.len == sizeof response - 1 && memcmp(p->got.data, response, p->got.len) == 0);
  T_CHECK_EQ_INT(bufs_in_use(f), 1);
  peer_free(p);
  T_CHECK_EQ_INT(f->conns.in_use, 0);
  filter_done(f);
}

/* Every byte its own call: the connection holds buffers between calls
 * while a record is partly in, and only then. */
static void test_byte_at_a_time(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  peer_t *p = peer_new(f, NULL);
  T_REQUIRE(p != NULL && p->srv != NULL);
  size_t held = 0, calls = 0;
  for (int turns = 0; turns < 64 && p->err == 0; turns++) {
    size_t n = 0;
    unsigned char *rec = br_ssl_engine_sendrec_buf(&p->cc.eng, &n);
    if (rec == NULL && server_to_client(p) == 0) break;
    for (size_t i = 0; rec != NULL && i < n && p->err == 0; i++) {
      p->err = f->http.input(p->srv, (const char *)rec + i, 1, &p->plain, &p->wire);
      calls++;
      held += p->srv->bufs != NULL;
      /* Mid-record: its own pair, so two are out of the pool. */
      if (p->srv->bufs != NULL) T_CHECK_EQ_INT(bufs_in_use(f), 2);
    }
    if (rec != NULL) br_ssl_engine_sendrec_ack(&p->cc.eng, n);
  }
  T_REQUIRE(p->err == 0 && (br_ssl_engine_current_state(&p->cc.eng) & BR_SSL_SENDAPP));
  T_CHECK(held > 0 && held < calls);
  T_CHECK(idle(p));
  /* A body of two full records and a bit, 1000 bytes a call. */
  static char body[40000];
  fill(body, sizeof body, 1);
  client_send(p, body, sizeof body);
  client_to_server(p, 1000);
  T_CHECK_EQ_INT(p->err, 0);
  T_CHECK(p->plain.len == sizeof body && memcmp(p->plain.data, body, sizeof body) == 0);
  T_CHECK(idle(p));
  T_CHECK_EQ_INT(bufs_in_use(f), 1);
  peer_free(p);
  filter_done(f);
}

/* Two requests in one record, then two records in one call. */
static void test_pipelined(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  peer_t *p = peer_new(f, NULL);
  T_REQUIRE(p != NULL && p->srv != NULL && handshake(p, CHUNK_WHOLE));
  char two[2 * sizeof request];
  memcpy(two, request, sizeof request - 1);
  memcpy(two + sizeof request - 1, request, sizeof request - 1);
  client_send(p, two, 2 * (sizeof request - 1));
  client_to_server(p, CHUNK_WHOLE);
  T_CHECK(p->plain.len == 2 * (sizeof request - 1) &&
          memcmp(p->plain.data, two, p->plain.len) == 0);
  T_CHECK(idle(p));
  /* Two records gathered, then given to the filter in one call. */
  http_buf_reset(&p->plain);
  http_buf_t recs;
  http_buf_init(&recs, 0, 1 << 16);
  for (int r = 0; r < 2; r++) {
    client_send(p, request, sizeof request - 1);
    size_t n = 0;
    unsigned char *rec = br_ssl_engine_sendrec_buf(&p->cc.eng, &n);
    T_REQUIRE(rec != NULL);
    http_buf_append(&recs, rec, n);
    br_ssl_engine_sendrec_ack(&p->cc.eng, n);
  }
  T_CHECK_EQ_INT(f->http.input(p->srv, recs.data, recs.len, &p->plain, &p->wire), 0);
  T_CHECK(p->plain.len == 2 * (sizeof request - 1) &&
          memcmp(p->plain.data, two, p->plain.len) == 0);
  T_CHECK(idle(p));
  http_buf_deinit(&recs);
  peer_free(p);
  filter_done(f);
}

/* A response far larger than a record, in one call, then two small ones
 * one after the other (answers to pipelined requests). The filter checks
 * that it is given responses (it adds HSTS to their heads). */
static void test_large_response(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  peer_t *p = peer_new(f, NULL);
  T_REQUIRE(p != NULL && p->srv != NULL && handshake(p, CHUNK_WHOLE));
  static char big[100 * 1024];
  enum { BODY = sizeof big - 64 };
  int head = snprintf(big, sizeof big, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BODY);
  T_REQUIRE(head > 0 && head < 64);
  fill(big + head, BODY, 3);
  size_t len = (size_t)head + BODY;
  T_CHECK_EQ_INT(f->http.output(p->srv, big, len, &p->wire), 0);
  T_CHECK(idle(p));
  T_CHECK(p->wire.len > len); /* record overhead */
  server_to_client(p);
  T_CHECK(p->got.len == len && memcmp(p->got.data, big, len) == 0);
  http_buf_reset(&p->got);
  T_CHECK_EQ_INT(f->http.output(p->srv, response, sizeof response - 1, &p->wire), 0);
  T_CHECK_EQ_INT(f->http.output(p->srv, response, sizeof response - 1, &p->wire), 0);
  server_to_client(p);
  T_CHECK(p->got.len == 2 * (sizeof response - 1) &&
          memcmp(p->got.data + sizeof response - 1, response, sizeof response - 1) == 0);
  T_CHECK_EQ_INT(bufs_in_use(f), 1);
  peer_free(p);
  filter_done(f);
}

/* A holds half a record (its own buffers) while B is served from the
 * spare, answers included; then A's record completes. */
static void test_interleaved(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  peer_t *a = peer_new(f, NULL), *b = peer_new(f, NULL);
  T_REQUIRE(a != NULL && b != NULL && a->srv != NULL && b->srv != NULL);
  T_REQUIRE(handshake(a, CHUNK_WHOLE) && handshake(b, CHUNK_WHOLE));
  client_send(a, request, sizeof request - 1);
  size_t n = 0;
  unsigned char *rec = br_ssl_engine_sendrec_buf(&a->cc.eng, &n);
  T_REQUIRE(rec != NULL && n > 10);
  T_CHECK_EQ_INT(f->http.input(a->srv, (const char *)rec, 10, &a->plain, &a->wire), 0);
  T_CHECK(a->srv->bufs != NULL);
  T_CHECK_EQ_INT(bufs_in_use(f), 2);
  client_send(b, request, sizeof request - 1);
  client_to_server(b, CHUNK_WHOLE);
  T_CHECK_EQ_INT(f->http.output(b->srv, response, sizeof response - 1, &b->wire), 0);
  server_to_client(b);
  T_CHECK(b->plain.len == sizeof request - 1 && idle(b));
  T_CHECK(b->got.len == sizeof response - 1);
  /* An answer to A while its next record is partly in: its own buffers
   * serve both ways. */
  T_CHECK_EQ_INT(f->http.output(a->srv, response, sizeof response - 1, &a->wire), 0);
  T_CHECK(a->srv->bufs != NULL);
  T_CHECK_EQ_INT(f->http.input(a->srv, (const char *)rec + 10, n - 10, &a->plain, &a->wire), 0);
  br_ssl_engine_sendrec_ack(&a->cc.eng, n);
  T_CHECK(a->plain.len == sizeof request - 1 && memcmp(a->plain.data, request, a->plain.len) == 0);
  T_CHECK(idle(a));
  server_to_client(a);
  T_CHECK(a->got.len == sizeof response - 1 && memcmp(a->got.data, response, a->got.len) == 0);
  T_CHECK_EQ_INT(bufs_in_use(f), 1);
  peer_free(a);
  peer_free(b);
  filter_done(f);
}

/* One pair for connections past the spare: the second connection that
 * needs one is closed and counted; the first, and new ones, go on. */
static void test_exhausted(void) {
  gw_tls_filter_t *f = filter_new(8, 1);
  T_REQUIRE(f != NULL);
  uint64_t before = atomic_load(&tls->stats.bufs_exhausted);
  peer_t *a = peer_new(f, NULL), *b = peer_new(f, NULL);
  T_REQUIRE(a != NULL && b != NULL && a->srv != NULL && b->srv != NULL);
  T_REQUIRE(handshake(a, CHUNK_WHOLE) && handshake(b, CHUNK_WHOLE));
  client_send(a, request, sizeof request - 1);
  size_t an = 0;
  unsigned char *arec = br_ssl_engine_sendrec_buf(&a->cc.eng, &an);
  T_REQUIRE(arec != NULL);
  T_CHECK_EQ_INT(f->http.input(a->srv, (const char *)arec, 7, &a->plain, &a->wire), 0);
  T_CHECK_EQ_INT(bufs_in_use(f), 2); /* all of them */
  client_send(b, request, sizeof request - 1);
  size_t bn = 0;
  unsigned char *brec = br_ssl_engine_sendrec_buf(&b->cc.eng, &bn);
  T_REQUIRE(brec != NULL);
  T_CHECK_EQ_INT(f->http.input(b->srv, (const char *)brec, 7, &b->plain, &b->wire), RT_E_LIMIT);
  T_CHECK_EQ_INT(atomic_load(&tls->stats.bufs_exhausted), before + 1);
  T_CHECK(idle(b) && b->srv->failed);
  T_CHECK_EQ_INT(f->http.input(b->srv, (const char *)brec + 7, bn - 7, &b->plain, &b->wire),
                 GW_E_TLS);
  T_CHECK_EQ_INT(f->http.output(b->srv, response, sizeof response - 1, &b->wire), GW_E_TLS);
  /* A completes its record; a new connection is served from the spare. */
  T_CHECK_EQ_INT(f->http.input(a->srv, (const char *)arec + 7, an - 7, &a->plain, &a->wire), 0);
  br_ssl_engine_sendrec_ack(&a->cc.eng, an);
  T_CHECK(a->plain.len == sizeof request - 1 && idle(a));
  peer_t *c = peer_new(f, NULL);
  T_REQUIRE(c != NULL && c->srv != NULL && handshake(c, CHUNK_WHOLE));
  client_send(c, request, sizeof request - 1);
  client_to_server(c, CHUNK_WHOLE);
  T_CHECK(c->plain.len == sizeof request - 1 && idle(c));
  T_CHECK_EQ_INT(bufs_in_use(f), 1);
  peer_free(a);
  peer_free(b);
  peer_free(c);
  filter_done(f);
}

/* A client asking to renegotiate: the server answers no_renegotiation
 * (which BearSSL's client takes as the end), completes no second
 * handshake, and its own engine is unharmed and idle. */
static void test_renegotiation_refused(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  peer_t *p = peer_new(f, NULL);
  T_REQUIRE(p != NULL && p->srv != NULL && handshake(p, CHUNK_WHOLE));
  uint64_t handshakes = atomic_load(&tls->stats.handshakes);
  T_REQUIRE(br_ssl_engine_renegotiate(&p->cc.eng));
  pump(p, CHUNK_WHOLE);
  T_CHECK_EQ_INT(p->err, 0);
  T_CHECK_EQ_INT(br_ssl_engine_last_error(&p->cc.eng),
                 BR_ERR_RECV_FATAL_ALERT + BR_ALERT_NO_RENEGOTIATION);
  T_CHECK_EQ_INT(atomic_load(&tls->stats.handshakes), handshakes);
  T_CHECK(idle(p) && !p->srv->failed);
  bufs_lend(f, p->srv);
  T_CHECK_EQ_INT(br_ssl_engine_last_error(&p->srv->sc.eng), BR_ERR_OK);
  T_CHECK(br_ssl_engine_current_state(&p->srv->sc.eng) & BR_SSL_RECVREC);
  T_CHECK_EQ_INT(bufs_settle(f, p->srv), 0);
  T_CHECK(idle(p));
  peer_free(p);
  filter_done(f);
}

/* The second connection resumes the first one's session, a byte at a time. */
static void test_resumed(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  peer_t *p = peer_new(f, NULL);
  T_REQUIRE(p != NULL && p->srv != NULL && handshake(p, CHUNK_WHOLE));
  T_CHECK(!p->srv->resumed);
  br_ssl_session_parameters sess;
  br_ssl_engine_get_session_parameters(&p->cc.eng, &sess);
  uint64_t resumed = atomic_load(&tls->stats.resumed);
  peer_t *q = peer_new(f, &sess);
  T_REQUIRE(q != NULL && q->srv != NULL && handshake(q, 1));
  T_CHECK(q->srv->resumed);
  T_CHECK_EQ_INT(atomic_load(&tls->stats.resumed), resumed + 1);
  T_CHECK(idle(q));
  client_send(q, request, sizeof request - 1);
  client_to_server(q, 3);
  T_CHECK(q->plain.len == sizeof request - 1 && memcmp(q->plain.data, request, q->plain.len) == 0);
  T_CHECK(idle(q));
  peer_free(p);
  peer_free(q);
  filter_done(f);
}

/* close_notify from the client: the filter ends the connection, answers
 * with its own, and keeps no buffer. */
static void test_close_notify(void) {
  gw_tls_filter_t *f = filter_new(8, 2);
  T_REQUIRE(f != NULL);
  peer_t *p = peer_new(f, NULL);
  T_REQUIRE(p != NULL && p->srv != NULL && handshake(p, CHUNK_WHOLE));
  br_ssl_engine_close(&p->cc.eng);
  client_to_server(p, CHUNK_WHOLE);
  T_CHECK_EQ_INT(p->err, GW_E_TLS);
  T_CHECK(p->wire.len > 0); /* the server's close_notify */
  T_CHECK(idle(p));
  T_CHECK_EQ_INT(bufs_in_use(f), 1);
  peer_free(p);
  filter_done(f);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CERTS_SH\n", argv[0]);
    return 2;
  }
  rt_log_init("test_gw_tls_filter", RT_LOG_ERROR, NULL, 0);
  if (setup(argv[1]) < 0) {
    fprintf(stderr, "set-up failed (certificates, loop or listener)\n");
    return 1;
  }
  T_RUN(test_exchange);
  T_RUN(test_byte_at_a_time);
  T_RUN(test_pipelined);
  T_RUN(test_large_response);
  T_RUN(test_interleaved);
  T_RUN(test_exhausted);
  T_RUN(test_renegotiation_refused);
  T_RUN(test_resumed);
  T_RUN(test_close_notify);
  close(listen_fd);
  gw_tls_destroy(tls);
  rt_loop_destroy(loop);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", certs_dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", certs_dir);
  return t_done();
}
