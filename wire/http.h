/*
 * http.h - HTTP/1.1 for the platform: a strict codec on llhttp, a router,
 * response and request writers, and (at the end) the server and the client.
 *
 * The codec does no I/O: it turns bytes into messages and messages into
 * bytes, so the connection actors on the runtime stay small. Pieces, in the
 * order they appear below:
 *   errors      HTTP_E_* in the wire range, http_strerror()
 *   parser      requests and responses, limits, smuggling defences
 *   router      method + path pattern with {params}
 *   buffers     http_buf_t, a growable output buffer with a hard cap
 *   writers     status reasons, responses, JSON bodies and errors, requests
 *   server and client (wire/http_server.c, wire/http_client.c)
 *
 * Nothing here is thread-safe: a parser, router match or buffer belongs to
 * one loop thread. A router that is only read may be shared once built.
 */
#ifndef WIRE_HTTP_H
#define WIRE_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <llhttp.h>

#include "metrics.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* HTTP error codes: negative, in the wire range -2000..-2099 (the HTTP part
 * uses -2000..-2049). Other failures are -errno: -ENOMEM when an allocation
 * fails, -EINVAL for a bad argument from our own code. */
enum {
  HTTP_E_BAD_REQUEST = -2000,       /* malformed or ambiguous message: 400 */
  HTTP_E_BODY_TOO_LARGE = -2001,    /* body above body_bytes_max: 413 */
  HTTP_E_URL_TOO_LONG = -2002,      /* target above url_bytes_max: 414 */
  HTTP_E_HEADERS_TOO_LARGE = -2003, /* head above header_bytes_max: 431 */
  HTTP_E_HEADERS_TOO_MANY = -2004,  /* more than headers_count_max: 431 */
  HTTP_E_UNSUPPORTED = -2005,       /* transfer-coding, CONNECT, upgrade: 501 */
  HTTP_E_VERSION = -2006,           /* not HTTP/1.0 or HTTP/1.1: 505 */
  HTTP_E_EOF = -2007,               /* the peer closed in mid-message */
  HTTP_E_STATE = -2008,             /* call made in the wrong state */
  HTTP_E_NOT_FOUND = -2009,         /* router: no pattern matches: 404 */
  HTTP_E_METHOD = -2010,            /* router: path matches, method not: 405 */
  HTTP_E_LIMIT = -2011,             /* router: a fixed table limit was hit */
  HTTP_E_PATTERN = -2012,           /* router: bad or conflicting pattern */
  HTTP_E_OVERFLOW = -2013,          /* output buffer would pass its hard cap */
};

#define HTTP_E_RANGE_LO (-2049)
#define HTTP_E_RANGE_HI (-2000)

/* A message for an HTTP_E_* code (or any -errno). Never returns NULL.
 * Register it with rt_strerror_register(HTTP_E_RANGE_LO, HTTP_E_RANGE_HI,
 * http_strerror) at start-up so rt_strerror() knows these codes. */
const char *http_strerror(int err);

/* ------------------------------------------------------------------------ */
/* Parser                                                                   */
/* ------------------------------------------------------------------------ */

/* Limits of one parser; together they bound its memory. */
typedef struct http_limits {
  /* Start line (method, target, version; or version and reason) plus every
   * header name and value, in bytes. Trailers count too. Default 8192. */
  uint32_t header_bytes_max;
  uint32_t headers_count_max; /* header (and trailer) fields; default 64 */
  uint32_t url_bytes_max;     /* request-target bytes; default 2048 */
  uint32_t body_bytes_max;    /* decoded body bytes; default 1 MiB */
} http_limits_t;

/* Fills in the defaults above. */
void http_limits_defaults(http_limits_t *limits);

typedef enum http_kind {
  HTTP_KIND_REQUEST = 1,  /* server side: parse requests */
  HTTP_KIND_RESPONSE = 2, /* client side: parse responses */
} http_kind_t;

/* One header field. Both strings are NUL-terminated; the value has its
 * surrounding whitespace removed. */
typedef struct http_header {
  const char *name;
  const char *value;
  uint32_t name_len;
  uint32_t value_len;
} http_header_t;

/* A complete message. Every pointer points into the parser and stays valid
 * until http_parser_next(), http_parser_deinit() or the next feed. */
typedef struct http_msg {
  /* Requests. */
  int method;              /* llhttp_method_t value, e.g. HTTP_GET */
  const char *method_name; /* "GET"; "" for responses */
  const char *target;      /* request-target as received, not decoded */
  const char *path;        /* target up to '?', not percent-decoded */
  const char *query;       /* after '?', without it; "" if none */
  /* Responses. */
  int status;              /* status code; 0 for requests */
  const char *reason;      /* reason phrase, maybe ""; "" for requests */
  /* Both. */
  const http_header_t *headers;
  uint32_t headers_count;
  const char *body;        /* NUL-terminated for convenience, never NULL */
  size_t body_len;
  bool keep_alive;         /* llhttp_should_keep_alive(); when false,
                            * answer and close: no later message comes */
  bool chunked;            /* the body came with chunked transfer-coding */
  uint8_t http_minor;      /* 0 or 1: the major version is always 1 */
} http_msg_t;

/* Scanner of the framing bytes (everything but the body); private. */
typedef struct http_scan {
  const char *pos;         /* next unscanned byte of the current feed */
  uint32_t line_bytes;     /* bytes of the current line so far */
  uint32_t head_bytes;     /* raw bytes of the head so far */
  uint32_t line_index;     /* lines of the head seen so far */
  bool cr_pending;         /* the last byte was CR: LF must follow */
  bool line_start;         /* at the first byte of a line */
  bool in_head;            /* before the empty line that ends the head */
  bool prev_sp;            /* the last byte was SP (request line check) */
  bool chunk_crlf_due;     /* chunk data ended: CRLF must follow */
  char start_tail[9];      /* last bytes of the request line: " HTTP/1.1" */
} http_scan_t;

/* A parser of a stream of requests (or responses). Embed it by value in a
 * connection; it must not be moved or copied once initialised. All fields
 * are private: use the functions below. */
typedef struct http_parser {
  llhttp_t llh;
  http_limits_t limits;
  http_kind_t kind;
  int err;                 /* sticky: once set, every feed returns it */
  const char *err_reason;  /* detail for logs, static string */
  /* Head storage: one fixed area for the target, names and values. */
  char *scratch;
  uint32_t scratch_cap;
  uint32_t scratch_len;
  uint32_t field_start;    /* scratch offset of the name being read */
  uint32_t value_start;    /* scratch offset of the value being read */
  uint32_t reason_start;   /* scratch offset of the reason phrase */
  http_header_t *headers;  /* headers_count_max entries */
  /* Body storage: grows up to body_bytes_max + 1, kept between messages. */
  char *body;
  size_t body_cap;
  size_t body_len;
  uint64_t chunk_left;     /* bytes of the current chunk still to come */
  /* Per message counters and flags. */
  uint32_t header_bytes;
  uint32_t url_bytes;
  uint32_t field_len;      /* bytes of the field name being read */
  uint32_t fields_count;   /* header and trailer fields */
  uint8_t cl_count;
  uint8_t te_count;
  uint8_t host_count;
  bool begun;              /* on_message_begin seen */
  bool headers_done;       /* on_headers_complete seen */
  bool msg_ready;          /* msg is complete and not yet released */
  bool no_body;            /* the next response answers a HEAD request */
  http_scan_t scan;
  http_msg_t msg;
  bool head_lent;          /* scratch and headers are lent by the owner */
} http_parser_t;

/* Allocates the scratch area and the header array (bounded by the limits;
 * limits may be NULL for the defaults). Returns 0, -EINVAL for a zero limit
 * or an unknown kind, or -ENOMEM. On failure nothing needs freeing. */
int http_parser_init(http_parser_t *p, http_kind_t kind,
                     const http_limits_t *limits);

/* Frees what init and the body buffer allocated. Safe on a zeroed parser. */
void http_parser_deinit(http_parser_t *p);

/* Head storage lent by the owner instead (a server holding many idle
 * keep-alive connections keeps one only while a request is read and
 * handled). http_parser_init_lent() allocates none; one is
 * http_parser_head_bytes() long (16-aligned). http_parser_lend() gives
 * one to a parser between messages, before it is fed; a parser fed
 * without one asserts. http_parser_take_back() takes it back from a
 * parser between messages (http_parser_idle(), its message released) or
 * one being thrown away; NULL when it had none. */
size_t http_parser_head_bytes(const http_limits_t *limits);
int http_parser_init_lent(http_parser_t *p, http_kind_t kind,
                          const http_limits_t *limits);
void http_parser_lend(http_parser_t *p, void *head);
void *http_parser_take_back(http_parser_t *p);
bool http_parser_has_head(const http_parser_t *p);

/* Parses bytes until one message is complete or the input runs out.
 * *consumed is set to the bytes used. When a message is complete, *msg_out
 * points to it and parsing stops there (pipelined requests come out one by
 * one): handle the message, call http_parser_next(), then feed the bytes
 * after *consumed again. Otherwise *msg_out is NULL and all bytes were used.
 * Returns 0 or a negative error (HTTP_E_*, -ENOMEM); after an error the
 * parser is dead, every later feed returns the same error, and the
 * connection must be closed (answer http_parser_error_status() first).
 * HTTP_E_STATE when a message is still waiting for http_parser_next(). */
int http_parser_feed(http_parser_t *p, const char *data, size_t len,
                     size_t *consumed, http_msg_t **msg_out);

/* Releases the message returned by feed and prepares for the next one.
 * The body buffer is kept for reuse. Does nothing if no message waits. */
void http_parser_next(http_parser_t *p);

/* The peer closed its side. For a response whose body runs to EOF this
 * completes it: returns 0 with *msg_out set. Returns 0 with *msg_out NULL
 * when no message was in progress, HTTP_E_EOF when one was cut short, or
 * the parser's earlier error. */
int http_parser_finish(http_parser_t *p, http_msg_t **msg_out);

/* Client side: the next response answers a HEAD request, so it has no body
 * whatever its Content-Length says. Cleared when that response completes. */
void http_parser_expect_no_body(http_parser_t *p);

/* True when a message has begun and its head is not complete yet: a
 * header-read timeout then deserves 408. */
bool http_parser_in_headers(const http_parser_t *p);

/* True when no part of a message has been received (between messages):
 * an idle timeout then closes silently. */
bool http_parser_idle(const http_parser_t *p);

/* The status to answer for a feed error: 400, 413, 414, 431, 501, 505, or
 * 503 for -ENOMEM. 400 for anything unknown. */
int http_parser_error_status(int err);

/* A short static description of the last error, for logs; "" if none. */
const char *http_parser_error_reason(const http_parser_t *p);

/* The value of the first header called `name` (case-insensitive), or NULL. */
const char *http_msg_header(const http_msg_t *msg, const char *name);

/* How many header fields are called `name` (case-insensitive): a field
 * that must appear once (credentials) is refused when this is above 1. */
uint32_t http_msg_header_count(const http_msg_t *msg, const char *name);

/* ------------------------------------------------------------------------ */
/* Router                                                                   */
/* ------------------------------------------------------------------------ */

#define HTTP_ROUTES_MAX 128
#define HTTP_ROUTE_PARAMS_MAX 8
#define HTTP_ROUTE_SEGMENTS_MAX 16
#define HTTP_ROUTE_PATTERN_BYTES_MAX 128     /* including the NUL */
#define HTTP_ROUTE_METHOD_BYTES_MAX 16       /* including the NUL */
#define HTTP_ROUTE_PARAM_NAME_BYTES_MAX 32   /* including the NUL */
#define HTTP_ROUTE_PARAM_VALUE_BYTES_MAX 128 /* including the NUL */
#define HTTP_ROUTE_ALLOW_BYTES_MAX 128       /* including the NUL */
#define HTTP_ROUTE_PATH_BYTES_MAX 8192       /* longer paths never match */

/* A handler as the router stores it. Any function pointer may be cast to
 * this type and back (void (*)(void) is the generic function type; a
 * void * could not hold one in ISO C). */
typedef void (*http_handler_fn)(void);

/* One route; private. Segments are slices of `pattern` after its '/'. */
typedef struct http_route {
  char method[HTTP_ROUTE_METHOD_BYTES_MAX];
  char pattern[HTTP_ROUTE_PATTERN_BYTES_MAX];
  http_handler_fn handler;
  void *arg;
  uint8_t seg_off[HTTP_ROUTE_SEGMENTS_MAX];
  uint8_t seg_len[HTTP_ROUTE_SEGMENTS_MAX];
  uint32_t param_mask; /* bit i set: segment i is a {param} */
  uint8_t segs_count;
} http_route_t;

/* A fixed table of routes, filled at start-up, then only read. */
typedef struct http_router {
  http_route_t routes[HTTP_ROUTES_MAX];
  uint32_t routes_count;
} http_router_t;

/* A path parameter copied out of the path, NUL-terminated. */
typedef struct http_route_param {
  char name[HTTP_ROUTE_PARAM_NAME_BYTES_MAX];
  char value[HTTP_ROUTE_PARAM_VALUE_BYTES_MAX];
  size_t value_len;
} http_route_param_t;

/* The result of a match; owns copies, so it outlives the request bytes. */
typedef struct http_route_match {
  http_handler_fn handler;
  void *arg;
  const char *pattern; /* the matched pattern, owned by the router */
  http_route_param_t params[HTTP_ROUTE_PARAMS_MAX];
  uint32_t params_count;
  /* On HTTP_E_METHOD: the methods the path accepts, as an Allow header
   * value ("GET, POST"), in the order routes were added. */
  char allow[HTTP_ROUTE_ALLOW_BYTES_MAX];
} http_route_match_t;

/* Empties the table. */
void http_router_init(http_router_t *r);

/* Adds a route. `pattern` starts with '/'; a segment is either static text
 * (matched byte for byte, not percent-decoded) or a whole `{name}` (one
 * non-empty segment, name of [A-Za-z0-9_]). Only the last segment may be
 * empty, so "/a/" and "/a" differ. `method` is a token such as "GET".
 * Returns 0; HTTP_E_LIMIT when the table, the segments or the params are
 * full; HTTP_E_PATTERN for a malformed pattern, a repeated param name, or
 * the same method with the same shape already added; -EINVAL for a bad
 * method or a NULL handler. */
int http_router_add(http_router_t *r, const char *method, const char *pattern,
                    http_handler_fn handler, void *arg);

/* Finds the route for method + path (the path without query). Where
 * several patterns match, the one whose first differing segment is static
 * wins. Returns 0 with *out filled; HTTP_E_NOT_FOUND when no pattern
 * matches the path (a parameter longer than the value buffer does not
 * match); HTTP_E_METHOD when patterns match but none for this method,
 * with out->allow set. */
int http_router_match(const http_router_t *r, const char *method,
                      const char *path, http_route_match_t *out);

/* The value of the parameter `name` in a match, or NULL. */
const char *http_route_param(const http_route_match_t *m, const char *name);

/* ------------------------------------------------------------------------ */
/* Output buffers                                                           */
/* ------------------------------------------------------------------------ */

#define HTTP_BUF_BYTES_MAX_DEFAULT (4u << 20) /* 1 MiB body + headers, x4 */

/* A growable byte buffer with a hard cap. data is kept NUL-terminated
 * (data[len] == 0) once anything was appended; the NUL is not counted. */
typedef struct http_buf {
  char *data;
  size_t len;
  size_t cap;     /* usable bytes allocated, excluding the NUL */
  size_t cap_max; /* len never passes this */
} http_buf_t;

/* Sets up an empty buffer; allocates cap_initial bytes now (0: on first
 * append). cap_max 0 means HTTP_BUF_BYTES_MAX_DEFAULT. Returns 0, -EINVAL
 * when cap_initial > cap_max, or -ENOMEM. */
int http_buf_init(http_buf_t *b, size_t cap_initial, size_t cap_max);

/* Frees the memory. Safe on a zeroed buffer. */
void http_buf_deinit(http_buf_t *b);

/* Forgets the content and keeps the memory. */
void http_buf_reset(http_buf_t *b);

/* Makes room for n more bytes. Returns 0, HTTP_E_OVERFLOW when len + n
 * would pass cap_max, or -ENOMEM. */
int http_buf_reserve(http_buf_t *b, size_t n);

/* Appends n bytes. Returns 0, HTTP_E_OVERFLOW or -ENOMEM; on error the
 * buffer is unchanged. */
int http_buf_append(http_buf_t *b, const void *data, size_t n);

/* Appends a NUL-terminated string, without its NUL. As http_buf_append. */
int http_buf_append_str(http_buf_t *b, const char *s);

/* Appends printf-formatted text. As http_buf_append. */
int http_buf_appendf(http_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Drops the first n bytes (sent ones), moving the rest to the front. */
void http_buf_consume(http_buf_t *b, size_t n);

/* ------------------------------------------------------------------------ */
/* Writers                                                                  */
/* ------------------------------------------------------------------------ */

/* The reason phrase of a status ("Not Found"); "Unknown" when unknown. */
const char *http_status_reason(int status);

/* Appends a whole response: status line, Content-Length, Content-Type
 * (omitted when NULL), "Connection: close" when !keep_alive, extra_headers
 * (NULL or "Name: value\r\n" lines), the empty line and the body. For 1xx,
 * 204 and 304 no Content-Length is written and the body must be empty.
 * Returns 0; -EINVAL for a status outside 100..599, CR/LF/controls in
 * content_type, malformed extra_headers, or a body where none may be;
 * HTTP_E_OVERFLOW or -ENOMEM. On error the buffer is unchanged. */
int http_write_response(http_buf_t *out, int status, const char *content_type,
                        const char *extra_headers, const void *body,
                        size_t body_len, bool keep_alive);

/* A response whose body is `body` as compact JSON (json_dumpb), with
 * Content-Type application/json. Errors as http_write_response, and
 * -EINVAL when jansson cannot encode body. */
int http_write_json(http_buf_t *out, int status, const json_t *body,
                    bool keep_alive, const char *extra_headers);

/* A JSON error response {"error":{"code":..,"message":..}}, escaped by
 * jansson. code NULL gives "error"; message NULL (or not UTF-8) gives the
 * status reason. Errors as http_write_json. */
int http_write_error(http_buf_t *out, int status, const char *code,
                     const char *message, bool keep_alive);

/* Appends an HTTP/1.1 request: request line, Host, Content-Length (when
 * body_len > 0 or the method is POST, PUT or PATCH), extra_headers (as in
 * http_write_response), the empty line and the body. `target` is in
 * origin-form ("/v1/x?y=1") or "*". Returns 0, -EINVAL for a malformed
 * method, host, target or extra_headers, HTTP_E_OVERFLOW or -ENOMEM; on
 * error the buffer is unchanged. */
int http_write_request(http_buf_t *out, const char *method, const char *host,
                       const char *target, const char *extra_headers,
                       const void *body, size_t body_len);

/* ---- server and client (wire/http_server.c, wire/http_client.c) ---- */

#include "rt.h"

/* -- server -------------------------------------------------------------- */

typedef struct http_server http_server_t;
typedef struct http_conn http_conn_t;

/* One request being answered. It stays valid until the handler answers it
 * with one of the http_respond*() calls, which it must do exactly once,
 * now or later (from the same loop thread). */
typedef struct http_exchange http_exchange_t;

/* A route handler. Register with HTTP_HANDLER(fn) as the router's handler. */
typedef void (*http_exchange_fn)(http_exchange_t *ex, void *arg);
#define HTTP_HANDLER(fn) ((http_handler_fn)(http_exchange_fn)(fn))

/* A byte filter between the socket and HTTP, such as TLS. The server, and
 * the client when given one, call it from their loop thread only. All
 * functions but open may append bytes for the peer to `wire` (handshake
 * records, ciphertext, alerts).
 *
 * On the client side (http_client_config_t.filter) open runs once the TCP
 * connection is up, then output is called once with len 0 so the filter can
 * say what it must say first (a TLS ClientHello). A filter may hold plain
 * bytes given to output until its handshake is done and append their
 * encoding to `wire` from a later input call: the client sends whatever
 * either call appended. */
typedef struct http_filter {
  /* A new connection: returns its state, or NULL to refuse it. */
  void *(*open)(void *filter_ctx, int fd);
  /* Bytes from the peer: appends what they decode to, in order, to
   * `plain`. Returns 0, or a negative error to close the connection. */
  int (*input)(void *state, const char *data, size_t len, http_buf_t *plain,
               http_buf_t *wire);
  /* Plain bytes to send: appends their encoding to `wire`. */
  int (*output)(void *state, const char *data, size_t len, http_buf_t *wire);
  /* Frees the state; the connection is closed. */
  void (*free)(void *state);
  void *ctx;
} http_filter_t;

typedef struct http_server_config {
  const char *host;           /* default 127.0.0.1 */
  uint16_t port;              /* 0: any free port (see http_server_port) */
  uint32_t conns_max;         /* per server instance (thread); default 10000 */
  uint32_t header_timeout_ms; /* a begun request must arrive whole; 10000 */
  uint32_t idle_timeout_ms;   /* keep-alive wait between requests; 60000 */
  uint32_t out_bytes_max;     /* per connection output cap; default 4 MiB */
  http_limits_t limits;       /* parser limits; zero: defaults */
  const http_filter_t *filter; /* NULL: plain TCP; must outlive the server */
  bool access_log;            /* one INFO line per request (HTTP_ACCESS_LOG) */
} http_server_config_t;

/* Counters of one server instance; written by its thread, readable from
 * any thread with relaxed loads. */
typedef struct http_server_stats {
  _Atomic uint64_t conns_accepted;
  _Atomic uint64_t conns_active;
  _Atomic uint64_t conns_rejected;  /* refused at set-up: over conns_max (503), no timer, filter */
  _Atomic uint64_t requests;
  _Atomic uint64_t responses_2xx;
  _Atomic uint64_t responses_3xx;
  _Atomic uint64_t responses_4xx;
  _Atomic uint64_t responses_5xx;
  _Atomic uint64_t parse_errors;
  _Atomic uint64_t request_timeouts; /* 408 */
  _Atomic uint64_t idle_closed;
  _Atomic uint64_t bytes_received;
  _Atomic uint64_t bytes_sent;
  _Atomic uint64_t heads_lent;      /* connections reading or handling a request */
} http_server_stats_t;

/* Fills defaults for zero fields. */
void http_server_config_defaults(http_server_config_t *config);

/* Reads HTTP_HEADER_TIMEOUT_MS, HTTP_IDLE_TIMEOUT_MS, HTTP_HEADER_BYTES_MAX,
 * HTTP_HEADERS_COUNT_MAX, HTTP_URL_BYTES_MAX, HTTP_BODY_BYTES_MAX,
 * HTTP_CONNS_MAX and HTTP_ACCESS_LOG into config. Returns 0 or RT_E_CONFIG (already logged). */
int http_server_config_from_env(http_server_config_t *config);

/* Creates a server on `loop` (the router must outlive it). */
int http_server_create(http_server_t **out, rt_loop_t *loop,
                       const http_server_config_t *config,
                       const http_router_t *router);

/* Listens (SO_REUSEPORT, so one server per loop thread can share a port),
 * starts accepting, and registers a drain hook: on drain the listener
 * closes, idle connections close, busy ones close after their response. */
int http_server_start(http_server_t *server);

/* The port actually bound. */
uint16_t http_server_port(const http_server_t *server);

const http_server_stats_t *http_server_stats(const http_server_t *server);

/* Frees the server; its loop must have stopped. */
void http_server_destroy(http_server_t *server);

/* The request; valid until the exchange is answered. */
const http_msg_t *http_request(const http_exchange_t *ex);

/* A path parameter of the matched route, or NULL. */
const char *http_param(const http_exchange_t *ex, const char *name);

/* The request id (from X-Request-Id when it is safe, else generated). */
const char *http_request_id(const http_exchange_t *ex);

/* True when the client went away while the handler was busy: the answer
 * will be dropped, but must still be given to release the connection. */
bool http_exchange_orphaned(const http_exchange_t *ex);

/* The connection's actor, to receive replies from other actors. */
rt_actor_t *http_exchange_actor(http_exchange_t *ex);

/* Answer the exchange. Keep-alive is decided by the request and the
 * server's state; a response that cannot be buffered becomes a 500. */
void http_respond(http_exchange_t *ex, int status, const char *content_type,
                  const void *body, size_t body_len, const char *extra_headers);
void http_respond_json(http_exchange_t *ex, int status, const json_t *body,
                       const char *extra_headers);
/* {"error":{"code":..,"message":..}} with `status`. */
void http_respond_error(http_exchange_t *ex, int status, const char *code,
                        const char *message);

/* Renders the server's counters onto a metrics page, each metric prefixed
 * with `prefix` (e.g. "http_"), summed over `servers_count` instances (one
 * per loop thread). */
void http_server_metrics(wire_metrics_t *m, const char *prefix,
                         http_server_t *const *servers, uint32_t servers_count);

/* Writes a /metrics page; ctx is the one given to http_respond_metrics(). */
typedef void http_metrics_render_fn(wire_metrics_t *m, void *ctx);

/* Answers a /metrics request: renders the page into a buffer of
 * bytes_max bytes and answers 200 text/plain; version=0.0.4. A page that
 * does not fit is answered 500, never cut short; no buffer, 503. */
void http_respond_metrics(http_exchange_t *ex, http_metrics_render_fn *render, void *ctx,
                          size_t bytes_max);

/* -- identity headers (gateway -> services) ------------------------------- */

/* The gateway passes a verified caller to a service as X-Auth-Subject,
 * X-Auth-Roles (comma-separated), X-Auth-Timestamp (Unix seconds) and
 * X-Auth-Signature: hex HMAC-SHA256 over subject|roles|METHOD|path|ts with
 * a key the two share (path without the query). */
#define HTTP_IDENTITY_SUBJECT_BYTES_MAX 63

/* True for a subject both sides accept: 1..63 of [A-Za-z0-9._:@-]. */
bool http_identity_subject_ok(const char *subject);

/* The signature (64 hex digits and a NUL) of one identity. */
void http_identity_sign(const uint8_t *key, size_t key_bytes, const char *subject,
                        const char *roles, const char *method, const char *path,
                        size_t path_len, const char *ts, char out[65]);

/* -- client -------------------------------------------------------------- */

/* Client errors, in the wire range after the codec's. */
enum {
  HTTP_E_UPSTREAM_DOWN = -2050,    /* refused, reset or closed before answering */
  HTTP_E_UPSTREAM_TIMEOUT = -2051, /* no complete response within the deadline */
  HTTP_E_UPSTREAM_BUSY = -2052,    /* every connection busy and the queue full */
  HTTP_E_UPSTREAM_PROTO = -2053,   /* the response could not be parsed */
  HTTP_E_CLIENT_CLOSED = -2054,    /* the client was destroyed first */
};
#define HTTP_CLIENT_E_RANGE_LO (-2059)
#define HTTP_CLIENT_E_RANGE_HI (-2050)

/* A message for an HTTP_E_UPSTREAM_* code; registered with rt_strerror
 * by http_client_create(). */
const char *http_client_strerror(int err);

typedef struct http_client http_client_t;

typedef struct http_client_config {
  const char *host;            /* numeric address or "localhost" */
  uint16_t port;
  uint32_t conns_max;          /* keep-alive connections kept; default 8 */
  uint32_t queue_max;          /* requests waiting for one; default 1024 */
  uint32_t connect_timeout_ms; /* default 1000 */
  uint32_t request_timeout_ms; /* whole request, queueing included; 5000 */
  http_limits_t limits;        /* of responses; zero: defaults */
  /* NULL: plain TCP. Else every connection's bytes pass through it (see
   * http_filter_t for the client side); it must outlive the client. */
  const http_filter_t *filter;
} http_client_config_t;

/* Called exactly once per accepted request, on the client's loop thread.
 * err is 0 with resp set (valid only during the call), or negative with
 * resp NULL. */
typedef void (*http_client_cb)(void *ctx, int err, const http_msg_t *resp);

/* A client for one upstream (host:port), owned by one loop. */
int http_client_create(http_client_t **out, rt_loop_t *loop,
                       const http_client_config_t *config);

/* Sends a request over a pooled keep-alive connection (opening one when
 * none is idle and fewer than conns_max are open, else queueing). A
 * request that fails on a reused connection before any response byte is
 * retried once on a new connection when its method is idempotent. Returns
 * 0 (cb will be called), or HTTP_E_UPSTREAM_BUSY / -EINVAL / -ENOMEM (cb
 * will not be called). */
int http_client_request(http_client_t *client, const char *method,
                        const char *target, const char *extra_headers,
                        const void *body, size_t body_len, http_client_cb cb,
                        void *ctx);

/* Connection counters, for tests and metrics. */
typedef struct http_client_stats {
  uint64_t connects;   /* connections opened */
  uint64_t reused;     /* requests sent on an already used connection */
  uint64_t retried;
  uint64_t failed;
  uint32_t conns_open;
  uint32_t queued;
} http_client_stats_t;

void http_client_stats(const http_client_t *client, http_client_stats_t *out);

/* Fails what is pending with HTTP_E_CLIENT_CLOSED, closes connections and
 * frees the client once their ops have finished (the loop must run). */
void http_client_destroy(http_client_t *client);


#endif /* WIRE_HTTP_H */
