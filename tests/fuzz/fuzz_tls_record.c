/*
 * fuzz_tls_record.c - the gateway's TLS filter on arbitrary client bytes.
 *
 * The filter (gateway/tls_filter.c) is driven exactly as the wire server
 * drives it: open on an accepted socket, input with the bytes a client
 * sent, output with a response, free. Its engine is set up by tls.c with
 * the gateway's profile, from a throwaway certificate and key kept for
 * this target only (tests/fuzz/tls/). The first byte picks the mode:
 *
 *  - even: the rest is what a client sends from its first byte on
 *    (ClientHellos, records, alerts, garbage). It is fed whole to one
 *    connection and in pieces (sizes taken from the input) to another:
 *    the verdict (closed by an error or not, BearSSL's error code, the
 *    plaintext produced) must not depend on how TCP cut the stream.
 *
 *  - odd: a real client (a BearSSL client engine that knows the server's
 *    key) first completes a handshake with the connection, resuming the
 *    session of an earlier input when it can. Then the next byte says how
 *    much of the rest is application data: the client sends it, and the
 *    server must decode exactly those bytes; the server answers a
 *    response with them as its body, and the client must read exactly
 *    that response with the HSTS line added after its status line.
 *    Whatever is left is fed to the server as raw bytes, records the
 *    client did not make: they must never come out as plaintext.
 *
 * BearSSL is a system library and not instrumented, so libFuzzer's
 * coverage counts our side of the engine (the pumping loops, the stall
 * list, bindings, the response rewriting), while ASan and the properties
 * watch everything the engine hands back. The server's random values
 * make the ciphertext differ from run to run; no property looks at it.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls_internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#ifndef FUZZ_TLS_DIR
#error "FUZZ_TLS_DIR: the directory of the target's certificate and key"
#endif

#define HSTS "max-age=31536000"
#define HSTS_LINE "Strict-Transport-Security: " HSTS "\r\n"
#define INPUT_BYTES_MAX 8192
#define TURNS_MAX 4096

/* What one connection saw: the server's output and plaintext, and what
 * the client read. */
typedef struct io {
  http_buf_t plain;  /* plaintext the server decoded */
  http_buf_t wire;   /* records the server wants sent */
  size_t wire_off;   /* of wire, given to the client so far */
  http_buf_t read;   /* plaintext the client decoded */
  const uint8_t *cuts; /* piece sizes for the server's input; NULL: whole */
  size_t cuts_n;
  size_t cut_i;
} io_t;

static struct {
  gw_tls_t *tls;
  rt_loop_t *loop;
  gw_tls_filter_t *filter;
  const http_filter_t *http;
  int fd; /* the server's end of a loopback connection: its peer address */
  int peer_fd;
  br_ssl_client_context cc;
  br_x509_minimal_context xc;
  br_x509_knownkey_context known;
  br_x509_pkey server_key;
  unsigned char server_q[BR_EC_KBUF_PUB_MAX_SIZE];
  br_ssl_session_parameters session;
  bool has_session;
  unsigned char client_buf[BR_SSL_BUFSIZE_BIDI];
  io_t io;
  rt_actor_t actor; /* only its address is used, as the filter's key */
} g;

static void fail(const char *what) {
  fprintf(stderr, "fuzz_tls_record: %s\n", what);
  abort();
}

/* ------------------------------------------------------------------------ */
/* Set-up, once                                                             */
/* ------------------------------------------------------------------------ */

/* A TCP connection over loopback: the filter asks the accepted socket for
 * its peer address, as it does for every client. */
static void loopback_pair(void) {
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t alen = sizeof a;
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(lfd, 1) < 0 ||
      getsockname(lfd, (struct sockaddr *)&a, &alen) < 0)
    fail("cannot listen on loopback");
  g.peer_fd = socket(AF_INET, SOCK_STREAM, 0);
  if (g.peer_fd < 0 || connect(g.peer_fd, (struct sockaddr *)&a, sizeof a) < 0)
    fail("cannot connect over loopback");
  g.fd = accept(lfd, NULL, NULL);
  if (g.fd < 0) fail("cannot accept over loopback");
  close(lfd);
}

/* The server certificate's key, for the client's known-key check. */
static void load_server_key(const char *cert_path) {
  char *text = NULL;
  size_t len = 0;
  gw__pem_obj_t objs[GW__PEM_OBJS_MAX];
  if (gw__read_file(cert_path, &text, &len) < 0) fail("cannot read the certificate");
  int n = gw__pem_decode(text, len, objs, GW__PEM_OBJS_MAX);
  free(text);
  if (n < 1) fail("cannot decode the certificate");
  br_x509_decoder_context dc;
  br_x509_decoder_init(&dc, NULL, NULL);
  br_x509_decoder_push(&dc, objs[0].der, objs[0].len);
  const br_x509_pkey *pk = br_x509_decoder_get_pkey(&dc);
  if (pk == NULL || pk->key_type != BR_KEYTYPE_EC || pk->key.ec.qlen > sizeof g.server_q)
    fail("the certificate's key is not EC");
  memcpy(g.server_q, pk->key.ec.q, pk->key.ec.qlen);
  g.server_key = *pk;
  g.server_key.key.ec.q = g.server_q;
  gw__pem_free(objs, (size_t)n);
}

static void setup(void) {
  rt_log_init("fuzz_tls_record", RT_LOG_ERROR, NULL, 0);
  gw_register_errors();
  gw_tls_config_t cfg = {
      .cert_path = FUZZ_TLS_DIR "/cert.pem",
      .key_path = FUZZ_TLS_DIR "/key.pem",
      .session_cache_entries = 16,
      .session_lifetime_s = 3600,
      .handshake_timeout_ms = 10000,
      .hsts = HSTS,
  };
  /* The loop only gives the filter its clock and its sweep timer, which
   * never fires here: the loop never runs. */
  rt_loop_config_t lc = {.sq_entries = 8, .bufs_count = 2, .buf_bytes = 4096,
                         .msgs_count = 16, .msg_bytes = 64, .timers_count = 4};
  if (gw_tls_create(&g.tls, &cfg) < 0) fail("gw_tls_create failed");
  if (rt_loop_create(&g.loop, &lc) < 0) fail("rt_loop_create failed");
  if (gw_tls_filter_create(&g.filter, g.tls, g.loop, NULL, 4, 4) < 0)
    fail("gw_tls_filter_create failed");
  g.http = gw_tls_filter_http(g.filter);
  loopback_pair();
  load_server_key(cfg.cert_path);
  br_ssl_client_init_full(&g.cc, &g.xc, NULL, 0);
  br_x509_knownkey_init_ec(&g.known, &g.server_key.key.ec, BR_KEYTYPE_KEYX | BR_KEYTYPE_SIGN);
  br_ssl_engine_set_x509(&g.cc.eng, &g.known.vtable);
  br_ssl_engine_set_buffer(&g.cc.eng, g.client_buf, sizeof g.client_buf, 1);
  if (http_buf_init(&g.io.plain, 4096, 1u << 20) < 0 || http_buf_init(&g.io.wire, 4096, 1u << 20) < 0 ||
      http_buf_init(&g.io.read, 4096, 1u << 20) < 0)
    fail("out of memory");
}

/* ------------------------------------------------------------------------ */
/* The server side, as the wire server drives it                            */
/* ------------------------------------------------------------------------ */

static gw_tls_conn_t *server_open(const uint8_t *cuts, size_t cuts_n) {
  http_buf_reset(&g.io.plain);
  http_buf_reset(&g.io.wire);
  http_buf_reset(&g.io.read);
  g.io.wire_off = 0;
  g.io.cuts = cuts;
  g.io.cuts_n = cuts_n;
  g.io.cut_i = 0;
  gw_tls_conn_t *c = g.http->open(g.http->ctx, g.fd);
  if (c == NULL) fail("the filter refused a connection");
  return c;
}

/* Client bytes into the server, whole or in pieces; stops at an error as
 * the wire server does (it closes the connection). */
static int server_input(gw_tls_conn_t *c, const uint8_t *data, size_t len) {
  io_t *io = &g.io;
  size_t off = 0;
  for (size_t turns = 0; off < len && turns < len + 1; turns++) {
    size_t piece = len - off;
    if (io->cuts_n > 0) {
      size_t want = (size_t)io->cuts[io->cut_i++ % io->cuts_n] % 61 + 1;
      if (want < piece) piece = want;
    }
    int rc = g.http->input(c, (const char *)data + off, piece, &io->plain, &io->wire);
    if (rc < 0) return rc;
    off += piece;
  }
  return 0;
}

/* ------------------------------------------------------------------------ */
/* The client side                                                          */
/* ------------------------------------------------------------------------ */

/* Moves records both ways between the client engine and the server, and
 * the client's plaintext into io.read, until nothing moves. Returns the
 * server's verdict (0 or an error) or 1 when the client engine closed. */
static int exchange(gw_tls_conn_t *c) {
  br_ssl_engine_context *eng = &g.cc.eng;
  io_t *io = &g.io;
  for (int turns = 0; turns < TURNS_MAX; turns++) {
    unsigned st = br_ssl_engine_current_state(eng);
    size_t n = 0;
    if (st & BR_SSL_CLOSED) return 1;
    if (st & BR_SSL_SENDREC) {
      unsigned char *p = br_ssl_engine_sendrec_buf(eng, &n);
      int rc = server_input(c, p, n);
      br_ssl_engine_sendrec_ack(eng, n);
      if (rc < 0) return rc;
    } else if (st & BR_SSL_RECVAPP) {
      unsigned char *p = br_ssl_engine_recvapp_buf(eng, &n);
      if (http_buf_append(&io->read, p, n) < 0) fail("out of memory");
      br_ssl_engine_recvapp_ack(eng, n);
    } else if ((st & BR_SSL_RECVREC) && io->wire_off < io->wire.len) {
      unsigned char *p = br_ssl_engine_recvrec_buf(eng, &n);
      size_t m = io->wire.len - io->wire_off < n ? io->wire.len - io->wire_off : n;
      memcpy(p, io->wire.data + io->wire_off, m);
      br_ssl_engine_recvrec_ack(eng, m);
      io->wire_off += m;
    } else {
      return 0;
    }
  }
  fail("the client and the server keep exchanging records");
  return 0;
}

/* A full handshake, or an abbreviated one on the session of an earlier
 * input. The server must finish it and bind the connection. */
static void handshake(gw_tls_conn_t *c) {
  if (g.has_session) br_ssl_engine_set_session_parameters(&g.cc.eng, &g.session);
  if (!br_ssl_client_reset(&g.cc, NULL, g.has_session)) fail("the client engine cannot reset");
  if (exchange(c) != 0) fail("a real client's handshake failed");
  if (!(br_ssl_engine_current_state(&g.cc.eng) & BR_SSL_SENDAPP))
    fail("the client is not done with the handshake");
  if (!c->handshake_done) fail("the server is not done with the handshake");
  if (strcmp(gw_tls_conn_suite(c), "unknown") == 0) fail("no suite named after a handshake");
  br_ssl_engine_get_session_parameters(&g.cc.eng, &g.session);
  g.has_session = true;
}

/* The client sends len bytes of application data. */
static void client_send(gw_tls_conn_t *c, const uint8_t *data, size_t len) {
  br_ssl_engine_context *eng = &g.cc.eng;
  size_t off = 0;
  for (int turns = 0; off < len && turns < TURNS_MAX; turns++) {
    size_t n = 0;
    unsigned char *p = br_ssl_engine_sendapp_buf(eng, &n);
    if (p == NULL) fail("the client cannot send after the handshake");
    size_t m = len - off < n ? len - off : n;
    memcpy(p, data + off, m);
    br_ssl_engine_sendapp_ack(eng, m);
    br_ssl_engine_flush(eng, 0);
    off += m;
    if (exchange(c) != 0) fail("the server refused a real client's records");
  }
  if (off < len) fail("the client could not send its data");
}

/* ------------------------------------------------------------------------ */
/* The two modes                                                            */
/* ------------------------------------------------------------------------ */

typedef struct verdict {
  int rc;
  int engine_err;
  size_t plain_len;
} verdict_t;

static verdict_t raw_run(const uint8_t *data, size_t len, const uint8_t *cuts, size_t cuts_n) {
  gw_tls_conn_t *c = server_open(cuts, cuts_n);
  verdict_t v = {.rc = server_input(c, data, len)};
  v.engine_err = br_ssl_engine_last_error(&c->sc.eng);
  v.plain_len = g.io.plain.len;
  g.http->free(c);
  if (v.rc != 0 && v.rc != GW_E_TLS) fail("the filter gave an undocumented error");
  return v;
}

static void raw_mode(const uint8_t *data, size_t len) {
  verdict_t whole = raw_run(data, len, NULL, 0);
  verdict_t split = raw_run(data, len, data, len < 16 ? len : 16);
  if (whole.plain_len != 0 || split.plain_len != 0)
    fail("plaintext from a connection without a handshake");
  if (whole.rc != split.rc || whole.engine_err != split.engine_err) {
    fprintf(stderr, "whole: rc %d, bearssl error %d; in pieces: rc %d, bearssl error %d\n",
            whole.rc, whole.engine_err, split.rc, split.engine_err);
    fail("the verdict depends on how the input is split");
  }
}

/* The response the server writes, and what the client must read. */
static void check_response(gw_tls_conn_t *c, const uint8_t *body, size_t len) {
  static char resp[INPUT_BYTES_MAX + 128], want[INPUT_BYTES_MAX + 256];
  int head = snprintf(resp, sizeof resp, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", len);
  memcpy(resp + head, body, len);
  int want_head = snprintf(want, sizeof want,
                           "HTTP/1.1 200 OK\r\n" HSTS_LINE "Content-Length: %zu\r\n\r\n", len);
  memcpy(want + want_head, body, len);
  if (g.http->output(c, resp, (size_t)head + len, &g.io.wire) != 0)
    fail("the server cannot send a response");
  if (exchange(c) != 0) fail("the exchange of a response failed");
  size_t want_len = (size_t)want_head + len;
  if (g.io.read.len != want_len || memcmp(g.io.read.data, want, want_len) != 0)
    fail("the client did not read the response the server wrote");
}

static void session_mode(const uint8_t *data, size_t len) {
  gw_tls_conn_t *c = server_open(data, len < 16 ? len : 16);
  handshake(c);
  if (gw_tls_filter_conn_of(g.filter, &g.actor) != c) fail("the connection is not bound");
  size_t app = len > 1 ? (size_t)data[0] * (len - 1) / 255 : 0;
  const uint8_t *a = data + 1, *rest = a + app;
  size_t rest_len = len > 1 ? len - 1 - app : 0;
  client_send(c, a, app);
  if (g.io.plain.len != app || (app > 0 && memcmp(g.io.plain.data, a, app) != 0))
    fail("the server did not decode what the client sent");
  check_response(c, a, app);
  size_t plain_before = g.io.plain.len;
  int rc = server_input(c, rest, rest_len);
  if (rc != 0 && rc != GW_E_TLS) fail("the filter gave an undocumented error");
  if (g.io.plain.len != plain_before) fail("plaintext from records the client did not make");
  if (gw_tls_filter_conn_of(g.filter, &g.actor) != c) fail("the binding changed");
  g.http->free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static bool ready;
  if (!ready) {
    setup();
    ready = true;
  }
  if (size == 0 || size > INPUT_BYTES_MAX) return 0;
  if (data[0] % 2 == 0) raw_mode(data + 1, size - 1);
  else session_mode(data + 1, size - 1);
  return 0;
}
