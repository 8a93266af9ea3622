/*
 * bus.h - the event bus: frames, protocol, and the client.
 *
 * A frame is a 4-byte big-endian length, then one MessagePack map (see
 * wire/BUS_PROTOCOL.md for every field). The codec does no I/O: a streaming
 * decoder turns bytes into frame bodies, a strict reader turns a body into a
 * bus_frame_t whose slices point into the body, and the encoder appends
 * frames to a capped buffer. The client (wire/bus_client.c) runs on one
 * loop thread of the runtime. The broker, busd, lives in wire/busd/.
 *
 * Pieces, in the order they appear below:
 *   errors      BUS_E_* in -2100..-2199, bus_strerror()
 *   buffers     bus_buf_t, a growable byte buffer with a hard cap
 *   frames      types, limits, the streaming decoder, encode and decode
 *   headers     packing and reading the headers map of PUB and DELIVER
 *   ids         UUID v7 event ids
 *   client      connect, publish with confirms, subscribe, ack and nack
 *
 * Nothing here is thread-safe: a decoder, buffer or client belongs to one
 * loop thread.
 */
#ifndef WIRE_BUS_H
#define WIRE_BUS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rt.h"

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Bus error codes: negative, in -2100..-2199. The codec's codes are also
 * what busd puts in an ERR frame's "code" field. Other failures are -errno
 * (-ENOMEM, -EINVAL for a bad argument from our own code). */
enum {
  BUS_E_FRAME_TOO_LARGE = -2100, /* length prefix above frame_bytes_max */
  BUS_E_MALFORMED = -2101,       /* not exactly one well-formed map */
  BUS_E_LENGTH = -2102,          /* a str/bin/array/map claims more bytes or
                                  * items than the frame has left */
  BUS_E_TRUNCATED = -2103,       /* the frame ends inside a value */
  BUS_E_TOO_DEEP = -2104,        /* nesting deeper than depth_max */
  BUS_E_TYPE = -2105,            /* a known field has the wrong type */
  BUS_E_MISSING = -2106,         /* a required field is absent */
  BUS_E_UNKNOWN_FRAME = -2107,   /* "t" is not a known frame type */
  BUS_E_LIMIT = -2108,           /* a field is over its limit (ids, names,
                                  * headers) or a value is out of range */
  BUS_E_NAME = -2109,            /* a topic or group name is not allowed */
  BUS_E_VERSION = -2110,         /* protocol version not supported */
  BUS_E_STATE = -2111,           /* frame not allowed now (before HELLO) */
  BUS_E_OVERLOADED = -2112,      /* busd refused a PUB for now: re-send */
  BUS_E_STORAGE = -2113,         /* busd cannot write its log */
  BUS_E_CLOSED = -2114,          /* the client or connection went away */
  BUS_E_FULL = -2115,            /* client: too many unconfirmed publishes */
  BUS_E_CORRUPT = -2116,         /* a log record fails its checksum */
  BUS_E_SHUTDOWN = -2117,        /* busd is shutting down */
};

#define BUS_E_RANGE_LO (-2199)
#define BUS_E_RANGE_HI (-2100)

/* A message for a BUS_E_* code (or any -errno). Never returns NULL. */
const char *bus_strerror(int err);

/* Registers bus_strerror with rt_strerror_register() the first time it is
 * called; later calls do nothing. Call at start-up, before threads start.
 * bus_client_create() calls it too. */
void bus_strerror_init(void);

/* ------------------------------------------------------------------------ */
/* Buffers                                                                  */
/* ------------------------------------------------------------------------ */

/* A growable byte buffer whose length never passes cap_max. */
typedef struct bus_buf {
  uint8_t *data;
  size_t len;
  size_t cap;
  size_t cap_max;
} bus_buf_t;

/* An empty buffer; nothing is allocated until the first append. */
void bus_buf_init(bus_buf_t *b, size_t cap_max);

/* Frees the memory. Safe on a zeroed buffer. */
void bus_buf_deinit(bus_buf_t *b);

/* Makes room for n more bytes. Returns 0, BUS_E_LIMIT when len + n would
 * pass cap_max, or -ENOMEM. */
int bus_buf_reserve(bus_buf_t *b, size_t n);

/* Appends n bytes; as bus_buf_reserve, and on error nothing changes. */
int bus_buf_append(bus_buf_t *b, const void *data, size_t n);

/* Drops the first n bytes, moving the rest to the front. */
void bus_buf_consume(bus_buf_t *b, size_t n);

struct http_filter;
struct http_buf;

/* A connection's next send, into `sending` (empty, no send in flight):
 * without a filter the frames of `out` themselves (the two buffers swap);
 * with one, `wire` (records the filter made already, a handshake's) and
 * then the encoding of `out` by filter->output(state). `out` and `wire`
 * are left empty. Returns 0, or an error after which the connection is to
 * be closed. */
int bus_buf_take_output(bus_buf_t *out, bus_buf_t *sending, const struct http_filter *filter,
                        void *state, struct http_buf *wire);

/* ------------------------------------------------------------------------ */
/* Frames                                                                   */
/* ------------------------------------------------------------------------ */

#define BUS_PROTOCOL_VERSION 1

#define BUS_FRAME_BYTES_MAX_DEFAULT (1u << 20) /* body bytes, prefix excluded */
#define BUS_DEPTH_MAX_DEFAULT 4     /* the frame map is depth 1, hdr is 2 */
#define BUS_ID_BYTES 16             /* event ids are UUIDs */
#define BUS_NAME_BYTES_MAX 128      /* topic and group names */
#define BUS_CLIENT_NAME_BYTES_MAX 64
#define BUS_KEY_BYTES_MAX 256
#define BUS_HEADERS_MAX 32
#define BUS_HEADER_NAME_BYTES_MAX 128
#define BUS_HEADER_VALUE_BYTES_MAX 4096
#define BUS_ERR_MSG_BYTES_MAX 1024
#define BUS_MAX_IN_FLIGHT_MAX 65535 /* largest "max" a SUB may ask for */
/* A PUB's topic, key, headers and payload together must stay this far
 * under frame_bytes_max: its DELIVER adds fields, a dead letter headers,
 * and both must fit the same limit. */
#define BUS_DELIVER_OVERHEAD_BYTES 512

typedef enum bus_frame_type {
  BUS_HELLO = 1,   /* both ways: name, version */
  BUS_PUB = 2,     /* client -> busd */
  BUS_PUB_ACK = 3, /* busd -> client, once the record is durable */
  BUS_SUB = 4,     /* client -> busd */
  BUS_DELIVER = 5, /* busd -> client */
  BUS_ACK = 6,     /* client -> busd */
  BUS_NACK = 7,    /* client -> busd */
  BUS_PING = 8,    /* either way */
  BUS_PONG = 9,    /* answer to PING */
  BUS_ERR = 10,    /* either way; busd closes after most */
} bus_frame_type_t;

/* A slice of bytes. In a decoded frame it points into the frame body. */
typedef struct bus_bytes {
  const uint8_t *ptr;
  uint32_t len;
} bus_bytes_t;

/* Limits of decoding; together they bound memory and work per frame. */
typedef struct bus_limits {
  uint32_t frame_bytes_max; /* default BUS_FRAME_BYTES_MAX_DEFAULT */
  uint32_t depth_max;       /* default BUS_DEPTH_MAX_DEFAULT */
} bus_limits_t;

/* Fills in the defaults above. */
void bus_limits_defaults(bus_limits_t *limits);

/* Every frame type in one flat struct: each type uses the fields listed in
 * BUS_PROTOCOL.md and leaves the rest zero. */
typedef struct bus_frame {
  bus_frame_type_t type;
  uint32_t version;         /* HELLO */
  bus_bytes_t name;         /* HELLO: client or server name */
  bus_bytes_t topic;        /* PUB SUB DELIVER ACK NACK */
  bus_bytes_t group;        /* SUB DELIVER ACK NACK */
  bus_bytes_t key;          /* PUB DELIVER; may be empty */
  uint8_t id[BUS_ID_BYTES]; /* PUB PUB_ACK DELIVER; ERR when has_id */
  bool has_id;
  bus_bytes_t headers;      /* PUB DELIVER: a msgpack map, see below;
                             * empty means no headers */
  bus_bytes_t payload;      /* PUB DELIVER */
  uint32_t partition;       /* PUB_ACK DELIVER ACK NACK */
  uint64_t offset;          /* PUB_ACK DELIVER ACK NACK */
  uint32_t attempt;         /* DELIVER: 1 on the first delivery */
  uint64_t stored_ms;       /* DELIVER: when busd stored it (Unix ms) */
  uint32_t max_in_flight;   /* SUB: 1..BUS_MAX_IN_FLIGHT_MAX */
  uint64_t seq;             /* PING PONG: echoed back */
  int32_t code;             /* ERR: a BUS_E_* code */
  bus_bytes_t message;      /* ERR: for humans; NACK: why (optional) */
} bus_frame_t;

/* The name of a frame type ("PUB"), or "?" when unknown. */
const char *bus_frame_type_name(uint32_t type);

/* A streaming decoder: bytes in, frame bodies out. It allocates only after
 * the length prefix has been checked against frame_bytes_max, and never
 * more than one frame body; a frame that arrives whole in one feed is
 * returned in place without copying. Embed by value; private fields. */
typedef struct bus_decoder {
  bus_limits_t limits;
  uint8_t prefix[4];   /* the length prefix read so far */
  uint32_t prefix_len;
  uint32_t body_len;   /* of the current frame, once the prefix is read */
  uint8_t *buf;        /* partial body, when it spans feeds */
  uint32_t buf_len;
  uint32_t buf_cap;
  bool ready;          /* a body was returned: drop it on the next feed */
  int err;             /* sticky */
} bus_decoder_t;

/* Prepares a decoder (limits NULL: defaults). Nothing is allocated. */
void bus_decoder_init(bus_decoder_t *d, const bus_limits_t *limits);

/* Frees the partial-frame buffer. Safe on a zeroed decoder. */
void bus_decoder_deinit(bus_decoder_t *d);

/* Consumes bytes until one frame body is complete or the input runs out;
 * *consumed is set to the bytes used. When a frame is complete *body is
 * set (valid until the next feed on this decoder or, when returned in
 * place, as long as `data` is) and the caller feeds the rest again;
 * otherwise body->ptr is NULL and all bytes were used. Returns 0,
 * BUS_E_FRAME_TOO_LARGE, BUS_E_MALFORMED (a zero length) or -ENOMEM; an
 * error is sticky and the connection must be closed. */
int bus_decoder_feed(bus_decoder_t *d, const uint8_t *data, size_t len,
                     size_t *consumed, bus_bytes_t *body);

/* True when no part of a frame is buffered (between frames). */
bool bus_decoder_idle(const bus_decoder_t *d);

/* Reads one frame body (the map after the length prefix) into *out, whose
 * slices point into body. Every length, count and nesting level is
 * checked against what is left of the body and the limits before it is
 * used; nothing is allocated. Unknown fields are skipped (after the same
 * checks); duplicate known fields are refused. Returns 0 or a BUS_E_* code
 * saying which rule was broken. limits NULL: defaults. */
int bus_frame_decode(const uint8_t *body, size_t len, const bus_limits_t *limits,
                     bus_frame_t *out);

/* Appends a frame (length prefix and map) holding the fields its type
 * uses. Returns 0; BUS_E_FRAME_TOO_LARGE when the body would pass
 * frame_bytes_max; BUS_E_UNKNOWN_FRAME; BUS_E_LIMIT when out's cap is
 * reached; -ENOMEM. On error out is unchanged. */
int bus_frame_encode(bus_buf_t *out, const bus_frame_t *f,
                     uint32_t frame_bytes_max);

/* True when `name` is a valid topic or group name: 1..BUS_NAME_BYTES_MAX
 * bytes of [A-Za-z0-9._-], not starting with '.'. */
bool bus_name_valid(const uint8_t *name, size_t len);

/* ------------------------------------------------------------------------ */
/* Headers                                                                  */
/* ------------------------------------------------------------------------ */

/* One header: a name and a value, both bytes (values may be binary). */
typedef struct bus_header {
  const char *name;
  const void *value;
  uint32_t name_len;
  uint32_t value_len;
} bus_header_t;

/* Appends the msgpack map of `count` headers (names as str, values as bin)
 * to out, ready for bus_frame_t.headers. Returns 0, BUS_E_LIMIT (too many,
 * too long, or out's cap) or -ENOMEM; on error out is unchanged. */
int bus_headers_pack(bus_buf_t *out, const bus_header_t *headers,
                     uint32_t count);

/* Iterates over a headers map from a decoded frame (already validated by
 * bus_frame_decode; anything else is read defensively and simply ends). */
typedef struct bus_header_iter {
  const uint8_t *pos;
  const uint8_t *end;
  uint32_t left;
} bus_header_iter_t;

/* Starts an iteration over `headers` (empty: no headers). */
void bus_header_iter_init(bus_header_iter_t *it, bus_bytes_t headers);

/* The next header, or false at the end (or on malformed input). */
bool bus_header_next(bus_header_iter_t *it, bus_bytes_t *name,
                     bus_bytes_t *value);

/* Finds the first header called `name` (exact bytes). */
bool bus_header_get(bus_bytes_t headers, const char *name, bus_bytes_t *value);

/* ------------------------------------------------------------------------ */
/* Event ids                                                                */
/* ------------------------------------------------------------------------ */

/* A fresh UUID v7 (48-bit Unix ms, then random), so ids sort by time.
 * Thread-safe (per-thread generator seeded from getrandom). */
void bus_uuid_v7(uint8_t out[BUS_ID_BYTES]);

/* Formats an id as the 36-character canonical text, NUL-terminated. */
void bus_uuid_format(const uint8_t id[BUS_ID_BYTES], char out[37]);

/* ------------------------------------------------------------------------ */
/* Client                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct bus_client bus_client_t;

/* One delivered event; every slice is valid only during the handler. */
typedef struct bus_delivery {
  uint32_t sub;             /* the subscription, from bus_subscribe() */
  bus_bytes_t topic;
  bus_bytes_t group;
  uint32_t partition;
  uint64_t offset;
  uint8_t id[BUS_ID_BYTES];
  uint32_t attempt;         /* 1 on the first delivery */
  uint64_t stored_ms;
  bus_bytes_t key;
  bus_bytes_t headers;      /* read with bus_header_iter_init() */
  bus_bytes_t payload;
} bus_delivery_t;

/* Called exactly once per accepted publish, on the client's loop thread:
 * err 0 when busd said the event is durable (PUB_ACK), BUS_E_CLOSED when
 * the client was destroyed first. `ctx` is the publish's own pointer. */
typedef void (*bus_confirm_fn)(void *arg, const uint8_t id[BUS_ID_BYTES],
                               int err, void *ctx);

/* Called for every DELIVER of a subscription. Acknowledge later with
 * bus_ack()/bus_nack() using d->sub, d->partition and d->offset. */
typedef void (*bus_deliver_fn)(void *arg, bus_client_t *client,
                               const bus_delivery_t *d);

/* Called when the connection comes up (after HELLO) or goes down. */
typedef void (*bus_state_fn)(void *arg, bool connected);

typedef struct bus_client_config {
  const char *host;               /* numeric address or "localhost" */
  uint16_t port;
  const char *name;               /* sent in HELLO; default "bus_client" */
  uint32_t frame_bytes_max;       /* default BUS_FRAME_BYTES_MAX_DEFAULT */
  uint32_t pending_max;           /* unconfirmed publishes kept; 1024 */
  uint32_t pending_bytes_max;     /* their encoded bytes; default 64 MiB */
  uint32_t reconnect_min_ms;      /* back-off doubles from here; 50 */
  uint32_t reconnect_max_ms;      /* up to here; 2000 */
  uint32_t connect_timeout_ms;    /* connect plus HELLO answer; 2000 */
  uint32_t ping_interval_ms;      /* idle PING; no answer in 3: reconnect;
                                   * default 5000 */
  bus_confirm_fn on_confirm;      /* may be NULL */
  void *confirm_arg;
  bus_state_fn on_state;          /* may be NULL */
  void *state_arg;
  /* NULL: plain TCP. Else the client side of TLS (wire/tls.h), run over
   * every connection's bytes as for the HTTP client; it must outlive the
   * client. */
  const struct http_filter *filter;
} bus_client_config_t;

/* Counters of one client, for tests and metrics. */
typedef struct bus_client_stats {
  uint64_t connects;        /* HELLOs answered */
  uint64_t disconnects;
  uint64_t published;       /* accepted by bus_publish() */
  uint64_t confirmed;       /* PUB_ACKs matched to a pending publish */
  uint64_t resent;          /* PUBs sent again after a reconnect or ERR */
  uint64_t refused;         /* ERR frames about one PUB (overloaded) */
  uint64_t delivered;       /* DELIVER frames handed to handlers */
  uint32_t unconfirmed;     /* pending now */
} bus_client_stats_t;

/* Creates a client on `loop` (its calls must all be made there). Nothing
 * is connected until bus_client_start(). Returns 0, -EINVAL or -ENOMEM. */
int bus_client_create(bus_client_t **out, rt_loop_t *loop,
                      const bus_client_config_t *config);

/* Starts connecting. Losing the connection later is not an error: the
 * client reconnects with back-off, says HELLO, subscribes again and
 * re-sends every unconfirmed publish (so delivery is at-least-once).
 * Returns 0, BUS_E_CLOSED, or RT_E_LIMIT when no timer could be armed. */
int bus_client_start(bus_client_t *client);

/* What to publish; the bytes are copied before bus_publish() returns. */
typedef struct bus_pub {
  const char *topic;
  const void *key;            /* may be NULL: partition by id */
  uint32_t key_len;
  uint8_t id[BUS_ID_BYTES];   /* the event id; re-sends keep it */
  const bus_header_t *headers;
  uint32_t headers_count;
  const void *payload;
  uint32_t payload_len;
} bus_pub_t;

/* Queues a PUB (sent now when connected) and keeps it until its PUB_ACK.
 * Returns 0 (on_confirm will be called once for it), BUS_E_FULL when
 * pending_max or pending_bytes_max unconfirmed publishes are waiting (try
 * again after a confirm), BUS_E_NAME, BUS_E_LIMIT or BUS_E_FRAME_TOO_LARGE
 * for a publish that can never be sent, BUS_E_CLOSED after destroy. */
int bus_publish(bus_client_t *client, const bus_pub_t *pub, void *ctx);

/* Subscribes `group` to `topic` with at most max_in_flight unacked
 * deliveries; `fn` gets every DELIVER. Sent now when connected and after
 * every reconnect. Returns the subscription index (>= 0), BUS_E_NAME,
 * BUS_E_LIMIT (too many subscriptions or max_in_flight out of range). */
int bus_subscribe(bus_client_t *client, const char *topic, const char *group,
                  uint32_t max_in_flight, bus_deliver_fn fn, void *arg);

/* Acknowledges a delivery: the group is done with it. Returns 0, or
 * BUS_E_CLOSED when not connected (busd will then redeliver it), -EINVAL
 * for an unknown subscription. */
int bus_ack(bus_client_t *client, uint32_t sub, uint32_t partition,
            uint64_t offset);

/* Asks for a redelivery later (busd backs off; after its attempt limit the
 * event goes to "<topic>.dead"). Returns as bus_ack(). */
int bus_nack(bus_client_t *client, uint32_t sub, uint32_t partition,
             uint64_t offset);

/* The same, saying why (cut to BUS_NACK_WHY_BYTES_MAX): busd keeps the
 * last reason and puts it in the dead letter's "x-dead-error" header. */
#define BUS_NACK_WHY_BYTES_MAX 256
int bus_nack_why(bus_client_t *client, uint32_t sub, uint32_t partition,
                 uint64_t offset, const char *why);

/* True between the HELLO answer and the loss of the connection. */
bool bus_client_connected(const bus_client_t *client);

/* Copies the client's counters (and its unconfirmed count) into *out. */
void bus_client_stats(const bus_client_t *client, bus_client_stats_t *out);

/* Fails unconfirmed publishes with BUS_E_CLOSED, closes the connection and
 * frees the client once its ops have finished (the loop must run). */
void bus_client_destroy(bus_client_t *client);

#endif /* WIRE_BUS_H */
