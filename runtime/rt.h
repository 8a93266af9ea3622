/*
 * rt.h - the io_uring actor runtime.
 *
 * One event loop (one io_uring) per thread. Everything that runs on a loop
 * thread is either an I/O completion callback or an actor handler; neither
 * may block. The runtime knows nothing of HTTP, payments or the bus.
 *
 * Pieces, in the order they appear below:
 *   errors      negative errno or RT_E_* codes, rt_strerror()
 *   pools       fixed-size object pools sized at start-up
 *   logging     JSON lines, sensitive fields masked or hashed
 *   loop        the io_uring loop, operations, provided buffers
 *   timers      one-shot and periodic, cancellable
 *   tcp         listen, accept, connect, recv, send, close
 *   actors      mailboxes, scheduling, cross-thread messages, supervision
 *   work        worker threads for blocking or CPU-heavy jobs
 *   threads     N loops on N threads, graceful shutdown on SIGTERM/SIGINT
 *   env         configuration from environment variables
 */
#ifndef RT_H
#define RT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

/* ------------------------------------------------------------------------ */
/* Errors                                                                   */
/* ------------------------------------------------------------------------ */

/* Runtime error codes: negative, in the range -1000..-1099, disjoint from
 * -errno. Other modules take their own ranges (wire -2000, gateway -3000,
 * services -4000 and up). */
enum {
  RT_E_POOL_EMPTY = -1000, /* a fixed pool is exhausted */
  RT_E_CLOSED = -1001,     /* the loop or object is shutting down */
  RT_E_TIMEOUT = -1002,    /* a deadline passed */
  RT_E_LIMIT = -1003,      /* a configured limit was hit */
  RT_E_PROTO = -1004,      /* the peer broke the protocol */
  RT_E_CONFIG = -1005,     /* bad configuration */
  RT_E_STOPPED = -1006,    /* the actor has been stopped */
};

/* A message for any negative return of this project: -errno or a module
 * code. Never returns NULL. */
const char *rt_strerror(int err);

/* Registers the strerror of another module's range [lo, hi] (lo <= hi < 0). */
void rt_strerror_register(int lo, int hi, const char *(*fn)(int err));

/*
 * Conditions that cannot happen, handled anyway (SQLite's idiom):
 *
 *   if (NEVER(p == NULL)) return -EINVAL;
 *   if (ALWAYS(index < count)) ...
 *
 * Each evaluates to its condition, so the code after it stays the fallback
 * a release build runs. When the impossible happens, it is logged (with
 * file and line) and counted; builds with sanitizers, which are what the
 * tests run, abort there instead, so a test cannot pass over it.
 */
#define NEVER(x) ((x) ? rt__never(#x, __FILE__, __LINE__) : false)
#define ALWAYS(x) ((x) ? true : !rt__never("!(" #x ")", __FILE__, __LINE__))

/* Logs and counts (or aborts, see above); returns true. */
bool rt__never(const char *expr, const char *file, int line);

/* How many NEVER/ALWAYS conditions have fired in this process. */
uint64_t rt_never_count(void);

/* ------------------------------------------------------------------------ */
/* Pools                                                                    */
/* ------------------------------------------------------------------------ */

/* A fixed pool of equally sized objects, one allocation made at start-up.
 * Not thread-safe: a pool belongs to one loop thread. Exhaustion is counted
 * and logged (once per burst), never fatal. A slot's memory is first
 * touched when the slot is first handed out, so a pool sized for the worst
 * case occupies, until then, address space and not memory. */
typedef struct rt_pool {
  const char *name;
  unsigned char *mem;
  void *free_head;
  size_t obj_bytes;
  uint32_t capacity;
  uint32_t fresh;            /* slots [fresh, capacity) never handed out */
  uint32_t in_use;
  uint32_t in_use_max;       /* high-water mark, for metrics */
  uint64_t exhausted_count;  /* rt_pool_get() calls that found it empty */
  bool exhausted_logged;
} rt_pool_t;

/* Allocates room for `capacity` objects of `obj_bytes` each. */
int rt_pool_init(rt_pool_t *pool, const char *name, size_t obj_bytes,
                 uint32_t capacity);

/* Returns a zeroed object, or NULL when the pool is exhausted. */
void *rt_pool_get(rt_pool_t *pool);

/* As rt_pool_get() without zeroing (only its first 16 bytes are): for a
 * buffer written before it is read, whose size would make zeroing cost
 * more than its use (and touch all its pages). */
void *rt_pool_take(rt_pool_t *pool);

/* Gives an object back. It must have come from this pool. */
void rt_pool_put(rt_pool_t *pool, void *obj);

/* True when `obj` points at an object slot of this pool. */
bool rt_pool_owns(const rt_pool_t *pool, const void *obj);

/* Frees the pool. Asserts that every object came back: a leak is an abort.
 * Only after a drain that was cut short (rt_drain_overran()), when work may
 * have been left in flight, are objects still out logged and counted as
 * leftovers instead (rt_leftovers_count()); their memory goes with the
 * pool. */
void rt_pool_deinit(rt_pool_t *pool);

/* ------------------------------------------------------------------------ */
/* Logging                                                                  */
/* ------------------------------------------------------------------------ */

typedef enum {
  RT_LOG_DEBUG = 0,
  RT_LOG_INFO = 1,
  RT_LOG_WARN = 2,
  RT_LOG_ERROR = 3,
} rt_log_level_t;

typedef enum {
  RT_LOG_STR,    /* plain string */
  RT_LOG_INT,    /* int64 */
  RT_LOG_BOOL,
  RT_LOG_DOUBLE,
  RT_LOG_MASK,   /* sensitive: written as "***" whatever the value */
  RT_LOG_HASH,   /* sensitive: written as "h:" + keyed hash, so equal values
                  * can be correlated across lines without being readable */
} rt_log_kind_t;

typedef struct rt_log_field {
  const char *key;
  rt_log_kind_t kind;
  union {
    const char *s;
    int64_t i;
    double d;
    bool b;
  } v;
} rt_log_field_t;

#define RT_LF_STR(k, x) ((rt_log_field_t){.key = (k), .kind = RT_LOG_STR, .v.s = (x)})
#define RT_LF_INT(k, x) ((rt_log_field_t){.key = (k), .kind = RT_LOG_INT, .v.i = (int64_t)(x)})
#define RT_LF_BOOL(k, x) ((rt_log_field_t){.key = (k), .kind = RT_LOG_BOOL, .v.b = (x)})
#define RT_LF_DBL(k, x) ((rt_log_field_t){.key = (k), .kind = RT_LOG_DOUBLE, .v.d = (x)})
#define RT_LF_MASK(k, x) ((rt_log_field_t){.key = (k), .kind = RT_LOG_MASK, .v.s = (x)})
#define RT_LF_HASH(k, x) ((rt_log_field_t){.key = (k), .kind = RT_LOG_HASH, .v.s = (x)})

/* Sets the process name, the minimum level and the key of RT_LOG_HASH.
 * Reads nothing else; call once at start-up before any thread starts.
 * key may be NULL: a random key is drawn (hashes then differ per run). */
void rt_log_init(const char *process, rt_log_level_t level_min,
                 const uint8_t *hash_key, size_t hash_key_bytes);

/* Parses "debug", "info", "warn", "error"; returns -1 when unknown. */
int rt_log_level_parse(const char *name);

/* Sets the fd lines are written to (default 2). For tests. */
void rt_log_set_fd(int fd);

/* The request id attached to this thread's lines until changed; NULL clears.
 * The string is copied (at most 63 bytes kept). */
void rt_log_set_request_id(const char *request_id);

/* Writes one JSON line: {"ts":..,"level":..,"proc":..,"rid":..,"msg":..,
 * fields...}. Strings are JSON-escaped. Lines are buffered per thread and
 * flushed by the loop once per iteration, or at once when the buffer fills,
 * the level is ERROR, or the thread runs no loop. Lines longer than 4 KiB
 * are cut and marked "trunc":true. */
void rt_log(rt_log_level_t level, const char *msg, const rt_log_field_t *fields,
            size_t fields_count);

/* Writes this thread's buffered lines. */
void rt_log_flush(void);

/* Called by the loop on its own thread: true when it starts running (lines
 * below ERROR then wait in the thread's buffer for rt_log_flush(), which the
 * loop calls once per iteration), false when it stops (flushes first). Off
 * by default: a thread without a loop writes every line at once. */
void rt_log_set_buffered(bool on);

/* Lines dropped, all threads: the fd failed or stayed full (EAGAIN) while
 * the buffer had no room left. For metrics. */
uint64_t rt_log_dropped_count(void);

/* Formats the keyed hash of `value` as "h:" + 16 hex digits into out (at
 * least 19 bytes). Exposed so other modules can redact the same way. */
void rt_log_hash(const char *value, size_t value_bytes, char out[19]);

#define RT_LOG_(lvl, msg, ...)                                                  \
  rt_log((lvl), (msg), (const rt_log_field_t[]){__VA_ARGS__},                  \
         sizeof((const rt_log_field_t[]){__VA_ARGS__}) / sizeof(rt_log_field_t))
/* Usage: RT_INFO("listening", RT_LF_INT("port", port)); at least one field;
 * use rt_log(level, msg, NULL, 0) for none. */
#define RT_DEBUG(msg, ...) RT_LOG_(RT_LOG_DEBUG, msg, __VA_ARGS__)
#define RT_INFO(msg, ...) RT_LOG_(RT_LOG_INFO, msg, __VA_ARGS__)
#define RT_WARN(msg, ...) RT_LOG_(RT_LOG_WARN, msg, __VA_ARGS__)
#define RT_ERROR(msg, ...) RT_LOG_(RT_LOG_ERROR, msg, __VA_ARGS__)

/* ------------------------------------------------------------------------ */
/* The loop                                                                 */
/* ------------------------------------------------------------------------ */

typedef struct rt_loop rt_loop_t;
typedef struct rt_op rt_op_t;
typedef struct rt_actor rt_actor_t;
typedef struct rt_msg rt_msg_t;

/* Completion callback. `res` is the kernel's result (negative errno on
 * failure), `flags` the CQE flags (see rt_op_more(), rt_op_buffer()).
 * Runs on the loop thread after the whole batch of completions has been
 * collected, never inside the collection. */
typedef void (*rt_op_cb)(rt_op_t *op, int res, uint32_t flags);

/* One asynchronous operation. The caller owns it (usually embedded in a
 * connection struct); its address is the SQE's user_data. It must stay
 * valid until its last completion (for multishot: a completion without
 * rt_op_more()). When the submission queue is full the op is queued and
 * submitted later in order, never failed. */
struct rt_op {
  rt_op_cb cb;
  void *ctx;        /* the caller's, untouched by the runtime */
  rt_op_t *next;    /* overflow queue link */
  uint8_t opcode;   /* RT_OPC_* below */
  bool in_flight;   /* submitted or queued, until its last completion */
  uint16_t group;   /* provided-buffer group, for multishot recv */
  int fd;
  void *buf;
  uint32_t len;
  uint32_t done;    /* send: bytes already written (partial writes) */
  uint64_t arg;     /* opcode-specific: address length, poll mask, ... */
  const void *addr; /* connect: peer address */
};

enum {
  RT_OPC_NONE = 0,
  RT_OPC_ACCEPT_MULTI,
  RT_OPC_RECV,
  RT_OPC_RECV_MULTI,
  RT_OPC_SEND,
  RT_OPC_CONNECT,
  RT_OPC_CLOSE,
  RT_OPC_POLL,
  RT_OPC_POLL_MULTI,
  RT_OPC_CANCEL,
  RT_OPC_READ,
  RT_OPC_WRITE,
};

/*
 * Sizing a loop. Three of its tables are fixed at creation, and each is a
 * limit: timers_count timers armed at once, msgs_count messages out of
 * this loop's pool at once (they come back when their receiver is done
 * with them, on whatever thread), bufs_count provided buffers filled by
 * the kernel and not yet given back. A program sizes each in its main as
 * the sum of its users, one commented line per user (its connections, its
 * database queue and pipelines, its requests, its consumers' windows...),
 * computed from its own configuration; the defaults are for tests.
 *
 * A limit that is hit is never fatal, and never silent: the timer or the
 * message is refused to its caller, which answers 503 or tries again
 * later; a multishot recv that finds no buffer ends with -ENOBUFS and is
 * armed again. Each refusal is counted (rt_loop_limits(), for /metrics)
 * and logged at the 1st, 2nd, 4th, 8th... occurrence.
 */
typedef struct rt_loop_config {
  uint32_t sq_entries;     /* io_uring submission queue size (default 1024);
                            * the CQ holds 4 x as many completions */
  uint32_t bufs_count;     /* provided recv buffers (default 1024, a power of
                            * 2 up to RT_LOOP_BUFS_MAX; rt_loop_bufs_for()) */
  uint32_t buf_bytes;      /* bytes per provided buffer (default 16384) */
  uint32_t msgs_count;     /* pooled actor messages (default 65536) */
  uint32_t msg_bytes;      /* payload bytes per pooled message (default 192) */
  uint32_t actor_budget;   /* messages an actor handles per turn (default 64) */
  uint32_t timers_count;   /* armed timers at once (default 65536) */
  /* Under load, wait up to batch_wait_us for about as many completions as
   * the last pass reaped (at most batch_wait_max) before waking: fewer
   * wake-ups and system calls per request, for a bounded added latency.
   * batch_wait_us 0 means the default (50); UINT32_MAX disables. */
  uint32_t batch_wait_us;
  uint32_t batch_wait_max; /* default 32 */
} rt_loop_config_t;

/* Reads RT_BATCH_WAIT_US ("off" or 0..10000) and RT_BATCH_WAIT_MAX into
 * config. Returns 0 or RT_E_CONFIG. */
int rt_loop_config_from_env(rt_loop_config_t *config);

/* Fills defaults for zero fields. */
void rt_loop_config_defaults(rt_loop_config_t *config);

/* Most provided buffers one loop may have: the kernel's limit for a
 * buffer ring. */
#define RT_LOOP_BUFS_MAX 32768u

/* A bufs_count for `receivers` connections that may have bytes arriving
 * at once through multishot recv: one buffer each, but no more than the
 * completions the CQ holds (4 x sq_entries, its default when 0), since a
 * buffer comes back as soon as its completion is reaped; rounded up to a
 * power of 2, within [16, RT_LOOP_BUFS_MAX]. */
uint32_t rt_loop_bufs_for(const rt_loop_config_t *config, uint64_t receivers);

/* Creates a loop owned by the calling thread (which becomes its only
 * submitter). */
int rt_loop_create(rt_loop_t **out, const rt_loop_config_t *config);

/* Runs until rt_loop_stop(). Returns 0, or a negative error. */
int rt_loop_run(rt_loop_t *loop);

/* Makes rt_loop_run() return after the current iteration. Any thread. */
void rt_loop_stop(rt_loop_t *loop);

/*
 * When a loop may be destroyed.
 *
 * Other threads reach a loop in two ways. As senders: they send to one of
 * its actors, wake it, stop or drain it, or hand it finished work. And
 * through its messages: a message from its pool goes back into that pool
 * from whichever thread frees it. Freeing a loop that either may still
 * reach writes into freed memory, or into whatever file reuses the number
 * of its wake-up eventfd. So rt_loop_destroy(loop) runs, on the loop's own
 * thread, only once:
 *
 *   1. the loop has stopped: rt_loop_run() has returned, every op has had
 *      its last completion, every actor bound to it is stopped or idle;
 *   2. no sender holds it any more: a thread other than the loop's own
 *      that keeps the loop's address to reach it later takes a hold
 *      (rt_loop_hold()) and gives it back (rt_loop_release()) once it
 *      will not touch the loop again. Work pools hold the loops they run
 *      requests for on their own, until the worker has woken the loop
 *      (see "Work"); rt_loop_destroy() first waits for those;
 *   3. every message that came from its pool is back: handled and freed,
 *      or freed unhandled by the loop it was sent to (rt_loop_destroy()
 *      frees what its own actors were sent and never ran, before its own
 *      check). Loops that message one another therefore stop together,
 *      then each is destroyed: rt_run() holds every loop it runs until
 *      all of them have stopped and given back what they were sent.
 *
 * rt_loop_destroy() asserts what it can see of this: that the loop is not
 * running, that no hold is left, and that every message of its pool is
 * back. One exception: after a drain that was cut short
 * (rt_drain_overran()), messages still out are logged and counted as
 * leftovers (rt_leftovers_count()), and the memory they point into is
 * kept rather than freed, so that a late rt_msg_free() stays harmless.
 */
void rt_loop_destroy(rt_loop_t *loop);

/* A hold on a loop, for a thread that is not the loop's own (rule 2
 * above). Any thread; holds are counted. */
void rt_loop_hold(rt_loop_t *loop);

/* Gives a hold back: after it, the caller does not touch the loop. */
void rt_loop_release(rt_loop_t *loop);

/* The loop of the calling thread, or NULL. */
rt_loop_t *rt_loop_current(void);

/* Monotonic time in ns, read once per loop iteration. */
uint64_t rt_loop_now_ns(const rt_loop_t *loop);

/* Monotonic time in ns, read now. */
uint64_t rt_now_ns(void);

/* Counters for metrics. */
typedef struct rt_loop_stats {
  uint64_t iterations;
  uint64_t submitted;
  uint64_t completions;
  uint64_t overflowed;     /* ops queued because the SQ was full */
  uint64_t msgs_handled;
  uint64_t bufs_exhausted; /* multishot recv that ran out of buffers */
  uint32_t msgs_in_use;
  uint32_t msgs_capacity;
  uint64_t msgs_exhausted;
  uint64_t timers_exhausted; /* rt_timer_start() calls that found the heap full */
} rt_loop_stats_t;

void rt_loop_stats(const rt_loop_t *loop, rt_loop_stats_t *out);

/* A loop's limits and how close it came to them (see "Sizing a loop"
 * above). */
typedef struct rt_loop_limits {
  uint32_t timers_capacity;  /* config.timers_count */
  uint32_t timers_armed;
  uint32_t timers_armed_max; /* the most armed at once since creation */
  uint64_t timers_refused;   /* rt_timer_start() calls that found it full */
  uint32_t msgs_capacity;    /* config.msgs_count */
  uint32_t msgs_in_use;
  uint32_t msgs_in_use_max;  /* the most seen at the end of an iteration */
  uint64_t msgs_refused;     /* rt_msg_new() calls that found it empty */
  uint32_t bufs_capacity;    /* config.bufs_count */
  uint64_t bufs_exhausted;   /* multishot recvs that found no buffer */
} rt_loop_limits_t;

/* Any thread (for /metrics): on the loop's own thread the values of now;
 * elsewhere those the loop published at the end of its last iteration,
 * which it does before it waits for completions. */
void rt_loop_limits(const rt_loop_t *loop, rt_loop_limits_t *out);

/* True when a completion's flags say more completions follow (multishot). */
bool rt_op_more(uint32_t flags);

/* ------------------------------------------------------------------------ */
/* Timers                                                                   */
/* ------------------------------------------------------------------------ */

typedef struct rt_timer rt_timer_t;
typedef void (*rt_timer_cb)(rt_timer_t *timer);

/* A timer lives in its owner's struct. Callbacks run on the loop thread. */
struct rt_timer {
  uint64_t deadline_ns;
  uint64_t period_ns;  /* 0: one-shot */
  uint32_t heap_index; /* UINT32_MAX when not armed */
  rt_timer_cb cb;
  void *ctx;
};

void rt_timer_init(rt_timer_t *timer, rt_timer_cb cb, void *ctx);

/* Arms (or re-arms) the timer: first fire after `after_ms`, then every
 * `period_ms` when non-zero. Returns 0 or RT_E_LIMIT when the heap
 * (config.timers_count) is full; the timer is then not armed, and the
 * caller must act on it: whatever the timer was to bound (a connection, a
 * request) is refused or closed, a start-up fails. Counted in
 * rt_loop_stats_t.timers_exhausted.
 *
 * Two starts cannot fail, and callers may lean on that:
 *   - re-arming a timer that is armed (its own slot is given back first);
 *   - the first start made by a one-shot timer's callback, of any timer:
 *     the firing timer left the heap just before its callback ran.
 * Starting a timer that was never rt_timer_init()ed, or that is armed on
 * another loop, is a programming error and asserts. */
int rt_timer_start(rt_loop_t *loop, rt_timer_t *timer, uint64_t after_ms,
                   uint64_t period_ms);

/* Disarms; harmless when not armed. */
void rt_timer_stop(rt_loop_t *loop, rt_timer_t *timer);

bool rt_timer_armed(const rt_timer_t *timer);

/* ------------------------------------------------------------------------ */
/* TCP and other I/O                                                        */
/* ------------------------------------------------------------------------ */

/* Creates a non-blocking listening socket on host:port (SO_REUSEADDR, and
 * SO_REUSEPORT when `reuseport`). Port 0 picks a free port; see
 * rt_tcp_local_port(). Returns the fd or -errno. Call at start-up. */
int rt_tcp_listen(const char *host, uint16_t port, int backlog, bool reuseport);

/* The local port of a bound socket, or -errno. */
int rt_tcp_local_port(int fd);

/* Resolves a numeric IPv4/IPv6 host or "localhost" into addr. */
int rt_tcp_addr(const char *host, uint16_t port, struct sockaddr_storage *addr,
                socklen_t *addr_len);

/* Turns Nagle's algorithm off: frames and responses are written whole, and
 * Nagle would hold a small one back while the previous is unacknowledged
 * (with the peer's delayed ACK, tens of ms). Every accepted socket gets
 * it. Returns 0 or -errno. */
int rt_tcp_nodelay(int fd);

/* Creates a non-blocking TCP socket for `family` with TCP_NODELAY. */
int rt_tcp_socket(int family);

/* Multishot accept: cb runs once per accepted connection (res = new fd, or
 * -errno); rt_op_more(flags) false means the op ended and must be re-armed
 * if still wanted. Accepted sockets get TCP_NODELAY from the caller. */
int rt_accept_multishot(rt_loop_t *loop, rt_op_t *op, int listen_fd,
                        rt_op_cb cb, void *ctx);

/* Multishot recv into the loop's provided buffers. Each completion with
 * res > 0 carries one buffer: rt_recv_buffer(loop, flags) gives its address;
 * the callback must give it back with rt_recv_buffer_release() (after copying
 * out what it needs) before returning. res == 0 is end of stream, res < 0 an
 * error; -ENOBUFS means the loop ran out of buffers (the op ended; re-arm). */
int rt_recv_multishot(rt_loop_t *loop, rt_op_t *op, int fd, rt_op_cb cb,
                      void *ctx);
void *rt_recv_buffer(rt_loop_t *loop, uint32_t flags);
void rt_recv_buffer_release(rt_loop_t *loop, uint32_t flags);

/* Plain recv into the caller's buffer. */
int rt_recv(rt_loop_t *loop, rt_op_t *op, int fd, void *buf, uint32_t len,
            rt_op_cb cb, void *ctx);

/* Sends all `len` bytes: partial writes are resubmitted by the loop and the
 * callback runs once, with len or a negative error. MSG_NOSIGNAL. */
int rt_send(rt_loop_t *loop, rt_op_t *op, int fd, const void *buf, uint32_t len,
            rt_op_cb cb, void *ctx);

/* Connects a socket from rt_tcp_socket(); addr must outlive the op. */
int rt_connect(rt_loop_t *loop, rt_op_t *op, int fd, const struct sockaddr *addr,
               socklen_t addr_len, rt_op_cb cb, void *ctx);

/* Closes fd asynchronously; cb may be NULL. */
int rt_close(rt_loop_t *loop, rt_op_t *op, int fd, rt_op_cb cb, void *ctx);

/* One-shot poll for `events` (POLLIN, ...); res is the ready mask. */
int rt_poll(rt_loop_t *loop, rt_op_t *op, int fd, uint32_t events, rt_op_cb cb,
            void *ctx);

/* read(2)/write(2) at the current file position (eventfd, signalfd, files). */
int rt_read(rt_loop_t *loop, rt_op_t *op, int fd, void *buf, uint32_t len,
            rt_op_cb cb, void *ctx);
int rt_write(rt_loop_t *loop, rt_op_t *op, int fd, const void *buf,
             uint32_t len, rt_op_cb cb, void *ctx);

/* Asks the kernel to cancel `target` (which then completes, usually with
 * -ECANCELED). `op` carries the cancel itself; cb may be NULL. */
int rt_cancel(rt_loop_t *loop, rt_op_t *op, rt_op_t *target, rt_op_cb cb,
              void *ctx);

/* ------------------------------------------------------------------------ */
/* Actors                                                                   */
/* ------------------------------------------------------------------------ */

/* A message. Pooled messages come from rt_msg_new() on the sender's loop and
 * are returned to that loop's pool by whoever frees them, from any thread.
 * A message belongs to the sender until rt_actor_send() returns, then to the
 * receiver; after the handler returns the runtime frees it unless the
 * handler called rt_msg_keep(). */
/* The mailbox link; the first member of every rt_msg_t. */
typedef struct rt_mlink {
  _Atomic(struct rt_mlink *) next;
} rt_mlink_t;

struct rt_msg {
  rt_mlink_t link;          /* mailbox link; must stay first */
  rt_loop_t *origin;        /* owning pool's loop; NULL: not pooled */
  uint32_t type;            /* the receiver's message type */
  uint32_t bytes;           /* payload bytes used in data[] */
  uint16_t flags;           /* RT_MSGF_* */
  uint16_t reserved;
  uint32_t reserved2;
  void *ptr;                /* free-form pointer, e.g. a reply-to actor */
  uint64_t u64;             /* free-form scalar, e.g. a correlation id */
  _Alignas(16) unsigned char data[];
};

enum {
  RT_MSGF_KEEP = 1,   /* the handler kept the message; runtime won't free */
};

/* Reserved message types: user types start at RT_MSG_USER. */
enum {
  RT_MSG_STOP = 1,    /* ask the actor to stop (handled by the runtime) */
  RT_MSG_CHILD_DOWN,  /* to a supervisor: u64 = child index, ptr = child */
  RT_MSG_USER = 256,
};

/* A message from the calling thread's loop pool with room for payload_bytes
 * (at most the loop's msg_bytes). NULL when exhausted or too large. */
rt_msg_t *rt_msg_new(uint32_t type, uint32_t payload_bytes);

/* Gives a message back to its pool; any thread. NULL is allowed. From
 * another thread than its loop's, this is the last touch of that loop
 * (rule 3 above rt_loop_destroy()). */
void rt_msg_free(rt_msg_t *msg);

/* Called by a handler that keeps the message past its return. */
void rt_msg_keep(rt_msg_t *msg);

/* Handler: returns 0, or a negative error to fail the actor (it is then
 * stopped and its supervisor told). */
typedef int (*rt_actor_fn)(rt_actor_t *self, rt_msg_t *msg);

/* Called once when the actor stops, with 0 or the failure reason. The actor
 * memory may be reused after it returns. */
typedef void (*rt_actor_stop_fn)(rt_actor_t *self, int reason);

/* The intrusive many-writer/one-reader mailbox (Vyukov). */
typedef struct rt_mailbox {
  _Atomic(rt_mlink_t *) head; /* writers exchange here */
  rt_mlink_t *tail;           /* the reader pops here */
  rt_mlink_t stub;
} rt_mailbox_t;

void rt_mailbox_init(rt_mailbox_t *mb);
/* Returns true when the queue was empty before the push (best effort: used
 * only as a hint; scheduling relies on the actor's flag). Any thread. */
bool rt_mailbox_push(rt_mailbox_t *mb, rt_msg_t *msg);
/* Reader only. NULL when empty or while a push is half-done. */
rt_msg_t *rt_mailbox_pop(rt_mailbox_t *mb);
/* Reader only. False only when nothing is queued or being queued. */
bool rt_mailbox_maybe_nonempty(rt_mailbox_t *mb);

struct rt_actor {
  rt_mailbox_t mailbox;
  rt_actor_fn handler;
  rt_actor_stop_fn on_stop;
  rt_loop_t *loop;
  void *state;
  const char *name;
  rt_actor_t *run_next;     /* run-queue link (loop thread only) */
  _Atomic(rt_actor_t *) remote_next; /* remote run-queue link */
  atomic_bool scheduled;    /* in a run queue or about to be */
  bool stopped;
  bool running;
  rt_actor_t *supervisor;
  uint32_t child_index;     /* index in the supervisor's children */
  uint64_t msgs_handled;
};

/* Initialises an actor bound to `loop` (it only ever runs there). */
void rt_actor_init(rt_actor_t *actor, rt_loop_t *loop, const char *name,
                   rt_actor_fn handler, void *state);

/* Queues msg for `to` and schedules it. Any thread. Returns 0 or
 * RT_E_STOPPED (the message is then freed). */
int rt_actor_send(rt_actor_t *to, rt_msg_t *msg);

/* Allocates a message of `type` with a copy of `payload` and sends it. */
int rt_actor_tell(rt_actor_t *to, uint32_t type, const void *payload,
                  uint32_t payload_bytes);

/* Stops an actor from its own loop thread: pending messages are freed,
 * on_stop runs, the supervisor (if any) is told. Idempotent. */
void rt_actor_stop(rt_actor_t *actor, int reason);

/* Supervision. A supervisor restarts children that fail (a handler returned
 * an error) after a back-off that doubles from min to max and resets when a
 * child stays up for `stable_ms`. A child stopped with reason 0 is not
 * restarted. */
typedef int (*rt_child_start_fn)(rt_actor_t *child, rt_loop_t *loop, void *arg);

typedef struct rt_child_spec {
  const char *name;
  rt_child_start_fn start;  /* (re)initialises and starts the child */
  void *arg;
  uint32_t backoff_min_ms;
  uint32_t backoff_max_ms;
  uint32_t stable_ms;
} rt_child_spec_t;

typedef struct rt_child {
  rt_child_spec_t spec;
  rt_actor_t *actor;
  rt_timer_t restart_timer;
  uint32_t backoff_ms;
  uint64_t started_ns;
  uint32_t restarts;
  bool up;
} rt_child_t;

#define RT_SUP_CHILDREN_MAX 16

typedef struct rt_sup {
  rt_actor_t actor;
  rt_child_t children[RT_SUP_CHILDREN_MAX];
  uint32_t children_count;
} rt_sup_t;

void rt_sup_init(rt_sup_t *sup, rt_loop_t *loop, const char *name);

/* Starts `child` under the supervisor with the spec. */
int rt_sup_start_child(rt_sup_t *sup, rt_actor_t *child,
                       const rt_child_spec_t *spec);

/* ------------------------------------------------------------------------ */
/* Work: jobs on worker threads                                             */
/* ------------------------------------------------------------------------ */

/*
 * Life of a work request (libuv's uv_queue_work, on our loops):
 *
 *   1. At start-up rt_work_pool_start() starts a fixed set of threads and
 *      sizes the queue. Nothing is allocated after that.
 *   2. A loop thread fills nothing but the request it owns (embedded in a
 *      partition, an HTTP request, ...) and calls rt_work_submit(). The
 *      request is queued, or refused at once: RT_E_LIMIT when queue_max
 *      requests wait already (backpressure: the caller answers 503 or
 *      tries later), RT_E_CLOSED once the pool is stopping. A refused
 *      request is untouched and neither callback ever runs.
 *   3. A worker takes requests in submission order and runs work_cb(req)
 *      on its own thread. work_cb may block; it touches only what the
 *      request carries, never the loop's objects.
 *   4. The worker pushes the request on its loop's completed stack and
 *      wakes the loop, the same way actors are scheduled from another
 *      thread. From then on the worker forgets the request.
 *   5. At the top of its next iteration the loop runs after_cb(req, status)
 *      on its own thread, once, in completion order. The request is the
 *      caller's again as after_cb starts: it may be submitted anew or
 *      freed there.
 *
 * status is 0 when work_cb ran, or -ECANCELED when the pool was stopped
 * before a worker took the request (work_cb did not run). Stopping never
 * interrupts a running work_cb: it finishes and completes with 0.
 *
 * Shutdown. rt_work_pool_stop() refuses new requests, completes every
 * queued one with -ECANCELED, lets running ones finish, and joins the
 * threads; those completions reach their loops like any other. A loop
 * destroyed with requests still in flight first takes its own queued ones
 * out of every pool and waits for its running ones; their after_cb never
 * runs (the loop is gone, its owner is tearing down), and once
 * rt_loop_destroy() returns no worker touches the loop or the requests.
 *
 * A worker holds the loop of the request it runs (rt_loop_hold()) from the
 * moment it takes the request until it has woken that loop in step 4,
 * which may be after the loop has already run after_cb: a loop that saw
 * the request for another reason does not wait for its wake-up. So
 * rt_loop_destroy() waits for every worker of every pool to let go of the
 * loop, whether or not the loop still counts requests in flight.
 */
typedef struct rt_work rt_work_t;
typedef struct rt_work_pool rt_work_pool_t;

/* Runs on a worker thread. */
typedef void (*rt_work_cb)(rt_work_t *req);

/* Runs on the submitting loop's thread: status 0, or -ECANCELED when
 * work_cb never ran. */
typedef void (*rt_after_work_cb)(rt_work_t *req, int status);

/* One job, owned by the caller (embedded in its own struct, zeroed before
 * its first submit). It must stay valid, and is not touched by the caller,
 * from a successful submit until after_cb starts. */
struct rt_work {
  rt_work_cb work_cb;
  rt_after_work_cb after_cb;
  void *ctx;                      /* the caller's, untouched by the runtime */
  rt_loop_t *loop;                /* the submitter, where after_cb runs */
  rt_work_t *next;                /* pool queue link (under its mutex) */
  _Atomic(rt_work_t *) done_next; /* the loop's completed stack */
  int status;
  bool in_flight;                 /* submitted, after_cb not yet run */
};

/* Threads in one pool at most. */
#define RT_WORK_THREADS_MAX 64

/* Starts `threads` worker threads (1..RT_WORK_THREADS_MAX) and a queue of
 * at most `queue_max` waiting requests. Call at start-up, after
 * rt_signals_block() (the threads inherit the mask). Returns 0, RT_E_CONFIG
 * or -errno (then nothing is left running). `name` must outlive the pool. */
int rt_work_pool_start(rt_work_pool_t **out, const char *name, uint32_t threads,
                       uint32_t queue_max);

/* Queues req on the calling loop thread: work_cb(req) later runs on a
 * worker, then after_cb(req, status) on `loop`. Returns 0, RT_E_LIMIT (the
 * queue is full) or RT_E_CLOSED (the pool is stopping); on failure neither
 * callback is ever called. Submitting a request already in flight is a
 * programmer error (asserted). */
int rt_work_submit(rt_loop_t *loop, rt_work_pool_t *pool, rt_work_t *req,
                   rt_work_cb work_cb, rt_after_work_cb after_cb, void *ctx);

/* Stops the pool (see the life above) and frees it; NULL is allowed. Any
 * thread but a worker. */
void rt_work_pool_stop(rt_work_pool_t *pool);

/* Counters, for metrics. Any thread. */
typedef struct rt_work_stats {
  uint32_t threads;
  uint32_t queued;         /* waiting now */
  uint32_t queued_max;     /* high-water mark */
  uint64_t done;           /* work_cb calls that returned */
  uint64_t rejected;       /* submits refused with RT_E_LIMIT */
} rt_work_stats_t;

void rt_work_pool_stats(rt_work_pool_t *pool, rt_work_stats_t *out);

/* ------------------------------------------------------------------------ */
/* Threads and shutdown                                                     */
/* ------------------------------------------------------------------------ */

/* Runs on each loop thread after its loop is created: create listeners
 * (with SO_REUSEPORT) and actors. A negative return aborts start-up. */
typedef int (*rt_thread_setup_fn)(rt_loop_t *loop, uint32_t index, void *arg);

/* A drain hook: asked to stop accepting new work and finish what is in
 * flight. It calls rt_loop_drained() when done; past the deadline the loop
 * stops anyway. */
typedef void (*rt_drain_fn)(rt_loop_t *loop, void *arg);

/* Registers a drain hook on this loop (at most 8). Loop thread only. */
int rt_loop_on_drain(rt_loop_t *loop, rt_drain_fn fn, void *arg);

/* Reports one drain hook as done; when all are, the loop stops. */
void rt_loop_drained(rt_loop_t *loop);

/* True once draining has begun. */
bool rt_loop_draining(const rt_loop_t *loop);

/* Asks a loop to drain; any thread. */
void rt_loop_drain(rt_loop_t *loop, uint32_t deadline_ms);

/* Blocks SIGTERM and SIGINT in the calling thread; threads it starts
 * afterwards inherit the mask. Call it in main() before starting any thread
 * of one's own (rt_run() calls it too), or a stop signal may land on such a
 * thread and kill the process instead of draining it. */
void rt_signals_block(void);

/*
 * Shutdown accounting, for the whole process.
 *
 * A clean drain finishes what is in flight, so afterwards every pooled
 * object and message is back, and rt_pool_deinit() and rt_loop_destroy()
 * assert it. A drain cut short (its deadline passed, or a second signal
 * stopped the loops at once) may leave work behind: from then on what is
 * found still out at teardown is logged and added to the leftovers count
 * instead. Programs write the count in their last log line
 * (rt_log_stopped()), where tests look for it.
 */

/* True once any loop's drain in this process was cut short. Any thread. */
bool rt_drain_overran(void);

/* Logs `count` objects of `what` found still out at teardown, and adds
 * them to the leftovers count. Any thread. */
void rt_leftovers_add(const char *what, uint64_t count);

/* Objects found still out at teardown so far. Any thread. */
uint64_t rt_leftovers_count(void);

/* Writes a program's last log line, "stopped", with its exit status, the
 * leftovers count and whether the drain was cut short; at WARN when there
 * are leftovers (so that it shows at LOG_LEVEL=warn), else at INFO. Then
 * flushes. */
void rt_log_stopped(int exit_status);

/* Asks rt_run() to call fn(arg) on its own (main) thread for every SIGHUP
 * while it runs: a configuration reload. Set it before rt_run(); without
 * it SIGHUP keeps its default action. */
typedef void (*rt_reload_fn)(void *arg);
void rt_on_reload(rt_reload_fn fn, void *arg);

/* Starts `threads` loop threads, runs setup on each, then waits for SIGTERM
 * or SIGINT on the calling thread, drains every loop within deadline_ms and
 * joins them. The loops are destroyed by the rule above rt_loop_destroy():
 * once all have stopped, each frees what its actors were sent and never
 * ran, and only then is any destroyed. Returns 0 on a clean shutdown. */
int rt_run(uint32_t threads, const rt_loop_config_t *config,
           rt_thread_setup_fn setup, void *arg, uint32_t drain_deadline_ms);

/* ------------------------------------------------------------------------ */
/* Configuration from the environment                                       */
/* ------------------------------------------------------------------------ */

/* The value of `name`, or `fallback` when unset or empty. */
const char *rt_env_str(const char *name, const char *fallback);

/* Parses an unsigned integer in [min, max]; unset gives `fallback`. Returns
 * RT_E_CONFIG (and logs which variable) when set but invalid. */
int rt_env_u32(const char *name, uint32_t fallback, uint32_t min, uint32_t max,
               uint32_t *out);

/* Parses 1/0, true/false, yes/no, on/off (any case); unset or empty gives
 * `fallback`. Returns RT_E_CONFIG (and logs which variable) when invalid. */
int rt_env_bool(const char *name, bool fallback, bool *out);

/* Parses a duration into milliseconds: "250ms", "5s", "2m" or a bare number
 * of ms, at most UINT32_MAX ms; unset or empty gives `fallback_ms`. Returns
 * RT_E_CONFIG (and logs which variable) when invalid. */
int rt_env_ms(const char *name, uint32_t fallback_ms, uint32_t *out);

/* Parses "host:port" (a numeric host or localhost: no blocking name
 * look-up; port 1..65535) into host (NUL-terminated, at most host_cap - 1
 * bytes) and *port; unset or empty parses `fallback`. Returns RT_E_CONFIG
 * (and logs which variable) when invalid. */
int rt_env_addr(const char *name, const char *fallback, char *host, size_t host_cap,
                uint16_t *port);

#endif /* RT_H */
