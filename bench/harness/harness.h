/*
 * harness.h - what the files of bench/run share: the configuration, the
 * run's state, and the phases. Not a public face: bench.h is.
 *
 * The life of a run:
 *   1. config     flags and environment (config.c); --help tells each.
 *   2. sql start  with database URLs, a snapshot of the money per currency
 *                 (check.c), before the loop starts.
 *   3. setup      customers signed up (and logged in, through the
 *                 gateway), accounts opened and funded (run.c).
 *   4. run        operations issued closed- or open-loop for the duration,
 *                 each one measured from its intended start (run.c).
 *   5. drain      the run waits for every operation it issued to end; each
 *                 has a deadline, so this ends.
 *   6. api check  outcomes that were not known replayed with their
 *                 idempotency keys, payments not final polled, every
 *                 account read back and compared with the harness's own
 *                 model, outboxes and the audit chain asked (check.c).
 *   7. sql check  the loop has stopped: the databases asked directly.
 *   8. report     table, JSON, chart; thresholds decide the exit status.
 */
#ifndef BENCH_HARNESS_H
#define BENCH_HARNESS_H

#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#include "bench.h"
#include "tls.h"

/* Exit statuses of bench/run. */
enum {
  BENCH_EXIT_OK = 0,
  BENCH_EXIT_THRESHOLD = 1, /* a --max-* threshold was crossed */
  BENCH_EXIT_USAGE = 2,
  BENCH_EXIT_INVARIANT = 3, /* an invariant check failed (whatever else) */
  BENCH_EXIT_RUN = 4,       /* the run could not be made (setup failed, ...) */
};

/* Scenarios; the run's operations are the last four. */
typedef enum {
  SCEN_SETUP = 0,
  SCEN_TOPUP,
  SCEN_TRANSFER,
  SCEN_PAYMENT,
  SCEN_READ,
  SCEN_MIXED,
} scenario_t;

/* Operation kinds measured in the run, one histogram each. */
typedef enum {
  KIND_TOPUP = 0,
  KIND_TRANSFER,
  KIND_PAYMENT,
  KIND_READ,
  KIND_COUNT,
} kind_t;

extern const char *const bench_kind_names[KIND_COUNT];

/* Upstreams: the gateway, or each service directly. */
typedef enum {
  UP_GATEWAY = 0,
  UP_PROFILE,
  UP_ACCOUNT,
  UP_PAYMENT,
  UP_EVENT,
  UP_COUNT,
} upstream_t;

extern const char *const bench_up_names[UP_COUNT];

#define ADDR_BYTES 128
#define PATH_BYTES 512
#define ID_BYTES 40      /* a UUID and its NUL */
#define TOKEN_BYTES 1536 /* a JWT */
#define KEY_BYTES 160    /* AUTH_HMAC_KEY */

typedef struct addr {
  char host[ADDR_BYTES];
  uint16_t port;
  bool set;
} addr_t;

typedef struct bench_config {
  bool direct;               /* services straight, not the gateway */
  addr_t gateway;
  char ca_file[PATH_BYTES];
  char server_name[256];
  addr_t svc[UP_COUNT];      /* profile .. event (index UP_PROFILE..) */
  char hmac_key[KEY_BYTES];  /* "" when unknown */
  char db_url[UP_COUNT][PATH_BYTES]; /* profile .. event; "" when unknown */
  scenario_t scenario;
  uint32_t weights[KIND_COUNT];
  uint32_t customers;
  uint32_t accounts_per;
  int64_t fund;              /* minor units each account starts with */
  int64_t amount_max;        /* of a top-up, transfer or payment */
  char currency[4];
  bool open_loop;
  uint32_t clients;          /* closed loop */
  double rate;               /* open loop, operations per second */
  double step_rate;          /* added every step_ms; 0: fixed rate */
  uint32_t step_ms;
  bool stop_when_behind;     /* stepping: end after the first step that fell behind */
  uint32_t duration_ms;
  uint32_t connections;      /* per upstream */
  uint32_t inflight_max;     /* open loop: operations under way at most */
  uint32_t late_ms;          /* sent later than this after its time: late */
  uint32_t request_timeout_ms;
  uint32_t payment_wait_ms;  /* ?wait= of each long-poll */
  uint32_t payment_timeout_ms; /* a payment not final by then is an error */
  uint32_t drain_timeout_ms; /* for outboxes, holds and payments to settle */
  double max_p99_ms;         /* 0: no threshold */
  double max_error_rate;     /* fraction; < 0: no threshold */
  bool check;                /* the invariant check at the end */
  char json_path[PATH_BYTES];
  char png_path[PATH_BYTES];
  int progress;              /* 0 off, 1 plain lines, 2 a live line on a TTY */
  uint32_t progress_every_s;
  uint64_t seed;
  char label[128];
  char command[1024];        /* the command line, for the report */
} bench_config_t;

/* Fills the defaults, then reads argv (and the environment it names).
 * Returns 0, 1 when --help was printed, or BENCH_E_USAGE (said why). */
int bench_config_parse(bench_config_t *cfg, int argc, char **argv);

/* ------------------------------------------------------------------------ */
/* The run's state                                                          */
/* ------------------------------------------------------------------------ */

typedef struct customer {
  char id[ID_BYTES];
  char token[TOKEN_BYTES];   /* through the gateway */
  char email[96];
} customer_t;

typedef struct account {
  char id[ID_BYTES];
  uint32_t customer;
  int64_t expected;          /* the harness's model of its balance */
  int64_t seen_balance;      /* as read back at the end */
  int64_t seen_held;
  int64_t overdraft;
  bool seen;
  bool touched;
  bool unverifiable;         /* an outcome stayed unknown */
} account_t;

/* An operation whose outcome the harness could not learn (a timeout, a
 * 5xx): replayed at the end with the same idempotency key. */
typedef struct unknown {
  kind_t kind;
  uint32_t src, dst;
  int64_t amount;
  char key[48];
} unknown_t;

/* A payment the run gave up waiting for: polled again at the end. */
typedef struct unfinished {
  char id[ID_BYTES];
  uint32_t src, dst;
  int64_t amount;
  bool final;
} unfinished_t;

typedef enum {
  ERR_TIMEOUT = 0,
  ERR_DOWN,
  ERR_BUSY,
  ERR_PROTO,
  ERR_STATUS,          /* a non-2xx answer (by status below) */
  ERR_PAYMENT_FAILED,
  ERR_PAYMENT_NOT_FINAL,
  ERR_NOT_SENT,        /* open loop: due, never sent before the end */
  ERR_BAD_RESPONSE,    /* 2xx without the fields expected */
  ERR_OTHER,
  ERR_COUNT,
} err_kind_t;

extern const char *const bench_err_names[ERR_COUNT];

typedef enum {
  CHECK_PASS = 0,
  CHECK_FAIL,
  CHECK_SKIP,
} check_status_t;

#define CHECKS_MAX 32

typedef struct check {
  char name[96];
  check_status_t status;
  char detail[320];
} check_t;

/* One step of a stepping open loop (or the single step of a fixed one). */
typedef struct step_stats {
  double rate;
  uint64_t issued, ok, errors, late;
  uint64_t window_ok;        /* completed ok while this step was running */
  bench_hist_t hist;         /* operations due in this step */
} step_stats_t;

typedef struct second_stats {
  uint64_t ok, errors;
  bench_hist_t hist;         /* coarse: for the chart only */
} second_stats_t;

typedef struct bench bench_t;

struct bench {
  bench_config_t *cfg;
  rt_loop_t *loop;
  wire_tls_creds_t *tls_creds; /* the gateway's CA file */
  wire_tls_filter_t *tls;      /* client side, to the gateway */
  /* With TLS_CA, TLS_CERT, TLS_KEY: the services over the platform's
   * mutual TLS, one client side per service (it checks the name). */
  wire_tls_creds_t *inner_creds;
  wire_tls_filter_t *inner[UP_COUNT];
  http_client_t *client[UP_COUNT];
  http_client_t *poll_client; /* long-polls, apart so they hold no one back */
  char run_id[17];
  uint64_t rng;
  uint64_t key_seq;

  customer_t *customers;
  account_t *accounts;
  uint32_t accounts_count;

  /* Phases and timing. */
  int phase;
  bool interrupted;
  bool fatal;
  char fatal_msg[512];
  uint64_t setup_start_ns, run_start_ns, run_end_ns, drained_ns;
  uint32_t setup_next;       /* the next customer to set up */
  uint32_t setup_done;
  uint32_t inflight;
  uint64_t issued;
  bench_sched_t sched;
  rt_timer_t tick;
  rt_timer_t progress_timer;
  uint32_t progress_lines;
  uint32_t steps_judged;     /* stepping: steps whose window has closed */
  bool fell_behind;

  /* Measurements. */
  bench_hist_t hist[KIND_COUNT];
  bench_hist_t all;
  bench_hist_t setup_hist;
  uint64_t ok[KIND_COUNT], errors[KIND_COUNT];
  uint64_t err_kind[ERR_COUNT];
  uint64_t err_status[600];
  uint64_t payments_completed, payments_failed;
  second_stats_t *seconds;
  uint32_t seconds_count;
  step_stats_t *steps;
  uint32_t steps_count;
  uint64_t requests;         /* HTTP requests sent, all kinds */
  int64_t audit_from;        /* the audit check verifies from here (the chain's
                                length before setup); 0: the whole chain */

  /* The model. */
  int64_t topups_total;      /* acknowledged, setup funding included */
  unknown_t *unknowns;
  uint32_t unknowns_count, unknowns_cap;
  bool unknowns_overflow;
  unfinished_t *unfinished;  /* payments not final when given up */
  uint32_t unfinished_count, unfinished_cap;

  /* Checks. */
  check_t checks[CHECKS_MAX];
  uint32_t checks_count;
  bool sql_snapshot;
  int64_t sql_start_customer, sql_start_system; /* the currency's money at the start */
  char sql_since[UP_COUNT][40]; /* each database's now() at the start */
  int check_stage;
  uint32_t check_cursor, check_pending;
  uint64_t check_deadline_ns;
  uint32_t tls_handshakes;
  volatile sig_atomic_t *stop_flag;
};

/* Phases. */
enum { PHASE_SETUP = 1, PHASE_RUN, PHASE_DRAIN, PHASE_CHECK, PHASE_DONE };

/* run.c: allocates everything the run needs (pools sized from the
 * config), then runs setup, run, drain and the API check on the loop.
 * Returns 0 or a negative error (b->fatal_msg says what). */
int bench_run(bench_t *b, bench_config_t *cfg, volatile sig_atomic_t *stop_flag);

/* rt_timer_start() for the run's own timers: a timer the run cannot arm
 * ends it as a fatal error (b->fatal_msg), since a stage or retry would
 * otherwise wait for good. Returns what rt_timer_start() returned. */
int bench_timer_start(bench_t *b, rt_timer_t *timer, uint64_t after_ms, uint64_t period_ms);

/* Frees what bench_run allocated. */
void bench_free(bench_t *b);

/* run.c, for check.c: sends one request as a customer (or, with customer
 * UINT32_MAX, as `roles` through signed identity headers) to an upstream.
 * Returns as http_client_request. */
int bench_request(bench_t *b, upstream_t up, uint32_t customer, const char *roles,
                  const char *method, const char *target, const char *idem_key,
                  const char *body, http_client_cb cb, void *ctx);

/* The upstream that serves an API path in this configuration. */
upstream_t bench_api_upstream(const bench_t *b, upstream_t service);

/* check.c: the API checks, run on the loop once the run has drained; calls
 * bench_check_done() at the end. */
/* Notes the audit chain's length before the run makes any event (the
 * event service's audit_chain_length), so that the audit check verifies
 * the run's records and the link into them, not a whole history. */
void bench_check_mark_audit(bench_t *b);
void bench_check_start(bench_t *b);
void bench_check_done(bench_t *b);

/* The target and body of a money movement; a replay must send the very
 * same bytes under the same key. */
void bench_money_request(const bench_t *b, kind_t kind, uint32_t src, uint32_t dst,
                         int64_t amount, char *target, size_t target_bytes, char *body,
                         size_t body_bytes);

/* Applies one acknowledged money movement to the model. */
void bench_model_apply(bench_t *b, kind_t kind, uint32_t src, uint32_t dst, int64_t amount);

/* check.c: with database URLs, before the loop (a snapshot) and after it. */
void bench_sql_start(bench_t *b);
void bench_sql_check(bench_t *b);

/* Records one check's outcome. */
void bench_check_add(bench_t *b, const char *name, check_status_t status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* report.c */
void bench_progress_tick(bench_t *b, bool final);
void bench_report_table(const bench_t *b);
int bench_report_json(const bench_t *b, int exit_status, const char *verdict);
int bench_report_chart(const bench_t *b);
/* The exit status the thresholds and checks call for, and why. */
int bench_verdict(const bench_t *b, char *why, size_t why_bytes);
/* The sustained rate of a stepping run: the highest step that kept up. */
double bench_sustained_rate(const bench_t *b);

#endif /* BENCH_HARNESS_H */
