/*
 * config.c - bench/run's flags: defaults first (what `deploy/dev up`
 * started), then argv. --help below is the reference for every flag.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "harness.h"

/* --help, in paragraphs (ISO C bounds one string literal's length). */
static const char *const usage_parts[] = {
    "usage: bench/run [FLAGS]\n"
    "\n",
    "Drives the platform with load and checks afterwards that it kept its\n"
    "invariants. Without flags: 10 customers with 2 accounts each (signed up,\n"
    "logged in and funded through the gateway), then a mixed load at 50\n"
    "operations per second for 10 s over TLS to https://localhost:8443, then\n"
    "the checks: the platform `deploy/dev up` started.\n"
    "\n",
    "Where:\n"
    "  --gateway HOST:PORT    the gateway (default localhost:8443), over TLS 1.2\n"
    "  --ca FILE              PEM file with the CA (or the gateway's own self-signed\n"
    "                         certificate, trusted directly) (default\n"
    "                         .run/certs/tls-ecdsa.crt)\n"
    "  --server-name NAME     name the certificate must carry (default: the\n"
    "                         gateway's host, or localhost for an address)\n"
    "  --direct               the services straight, plain HTTP, with the identity\n"
    "                         headers the gateway would sign (needs the key)\n"
    "                         With TLS_CA, TLS_CERT, TLS_KEY in the environment (the\n"
    "                         platform's mutual TLS, as INTERNAL_TLS=1 deploy/dev up\n"
    "                         runs it: .run/certs/internal/{ca,bench}.*), the services\n"
    "                         are reached over it, directly and for the checks\n"
    "  --profile, --account, --payment, --event HOST:PORT\n"
    "                         the services (default 127.0.0.1:7001 .. 7004); through\n"
    "                         the gateway they are used only for the checks\n"
    "                         (/metrics, the audit chain)\n"
    "  --hmac-key-file FILE   the identity signing key (default .run/auth_hmac_key;\n"
    "                         the environment's AUTH_HMAC_KEY wins)\n"
    "  --db-profile, --db-account, --db-payment, --db-event URL\n"
    "                         PostgreSQL URLs for the SQL checks (default: the\n"
    "                         environment's PROFILE_DB_URL .. EVENT_DB_URL)\n"
    "  --no-sql               no SQL checks, whatever the environment says\n"
    "\n",
    "What:\n"
    "  --scenario NAME        setup, topup, transfer, payment, read or mixed\n"
    "                         (default mixed). setup only makes the customers and\n"
    "                         accounts; payment submits and waits until final\n"
    "  --mix K=W,...          weights of mixed (default\n"
    "                         transfer=40,payment=20,read=30,topup=10)\n"
    "  --customers N          customers to set up (default 10)\n"
    "  --accounts N           accounts per customer (default 2)\n"
    "  --fund MINOR           each account's first top-up (default 1000000)\n"
    "  --amount-max MINOR     largest top-up, transfer or payment (default 100)\n"
    "  --currency CODE        (default EUR)\n"
    "\n",
    "How much:\n"
    "  --clients C            closed loop: C clients, each starts its next\n"
    "                         operation when the last ended\n"
    "  --rate R               open loop: R operations per second whatever the\n"
    "                         answers (the default, at 50/s)\n"
    "  --step-rate S          open loop: add S per second every --step-every\n"
    "  --step-every DUR       (default 5s)\n"
    "  --stop-when-behind     stepping: end after the first step that did not keep\n"
    "                         up (completions under 95% of the rate, over 1% sent\n"
    "                         late, or over 0.1% errors)\n"
    "  --duration DUR         length of the run (default 10s)\n"
    "  --connections N        keep-alive connections per upstream (default 16);\n"
    "                         payment long-polls get one each of their own, up\n"
    "                         to 256, since each holds its connection while it\n"
    "                         waits\n"
    "  --max-inflight N       open loop: operations under way at most (default\n"
    "                         1024); past it, sends wait and count as late\n"
    "  --late-after DUR       a send this much after its intended time is late\n"
    "                         (default 5ms)\n"
    "  --timeout DUR          one request's deadline (default 10s)\n"
    "  --payment-wait DUR     ?wait= of each long-poll (default 5s)\n"
    "  --payment-timeout DUR  a payment not final by then is an error (default 30s)\n"
    "  --drain-timeout DUR    how long the checks wait for outboxes, holds and\n"
    "                         payments to settle (default 15s)\n"
    "  --seed N               the random choices (default fixed: runs repeat)\n"
    "\n",
    "Verdict:\n"
    "  --max-p99 DUR          exit 1 when p99 of all operations is above\n"
    "  --max-error-rate PCT   exit 1 when errors are above this share, e.g. 0.1%\n"
    "  --no-check             skip the invariant check\n"
    "\n",
    "Output:\n"
    "  --json FILE            results (default .run/bench-run.json; '' for none)\n"
    "  --png FILE             chart of ok/s and p50/p99 per second, with gnuplot\n"
    "                         (default .run/bench-run.png; '' for none)\n"
    "  --progress MODE        auto, tty, plain or off (default auto: a live line on\n"
    "                         a terminal, plain lines otherwise)\n"
    "  --progress-every N     plain lines every N seconds (default 5)\n"
    "  --label TEXT           a name for the run, kept in the JSON\n"
    "\n",
    "DUR is a number with ms, s or m (a bare number is seconds). Default paths\n"
    "are under $PAYCORE_RUN_DIR (bench/run sets it to the repository's .run/).\n"
    "Latency is measured from each operation's intended start: in the open loop\n"
    "the schedule's time, so a slow answer delays no later send (no coordinated\n"
    "omission); payments count until their final state. The histogram's error\n"
    "is at most 0.4%.\n"
    "\n",
    "Checks at the end, through the API (and SQL where URLs are given): each\n"
    "balance equals the harness's own model of it; money per currency is\n"
    "unchanged by transfers and payments (balance + held; the system accounts\n"
    "move only with top-ups); operations whose outcome was unknown are replayed\n"
    "with their Idempotency-Key; every payment final; no open holds; no account\n"
    "below its overdraft; every service's outbox drained; the audit chain\n"
    "verifies (GET /v1/events/verify; skipped where the event service does not\n"
    "answer it).\n"
    "\n",
    "Exit status: 0 all well; 1 a threshold crossed; 2 bad usage; 3 an invariant\n"
    "failed; 4 the run could not be made (the platform refused the setup).\n",
};

static int bad(const char *flag, const char *value, const char *why) {
  fprintf(stderr, "bench/run: %s %s: %s (see --help)\n", flag, value ? value : "", why);
  return BENCH_E_USAGE;
}

/* "10s", "250ms", "2m", "1.5s"; a bare number is seconds. */
static int parse_ms(const char *s, uint32_t *out) {
  char *end = NULL;
  double v = strtod(s, &end);
  if (end == s || !(v >= 0)) return -EINVAL;
  double mult = 1000.0;
  if (strcmp(end, "ms") == 0) mult = 1.0;
  else if (strcmp(end, "m") == 0) mult = 60000.0;
  else if (strcmp(end, "s") != 0 && *end != '\0') return -EINVAL;
  double r = v * mult;
  if (r > 4e9) return -ERANGE;
  *out = (uint32_t)llround(r);
  return 0;
}

static int parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out) {
  char *end = NULL;
  unsigned long long v = strtoull(s, &end, 10);
  if (end == s || *end != '\0' || v < min || v > max) return -EINVAL;
  *out = (uint32_t)v;
  return 0;
}

static int parse_addr(const char *s, addr_t *a) {
  if (strncmp(s, "https://", 8) == 0) s += 8;
  else if (strncmp(s, "http://", 7) == 0) s += 7;
  const char *colon = strrchr(s, ':');
  if (colon == NULL || colon == s || (size_t)(colon - s) >= sizeof a->host) return -EINVAL;
  uint32_t port;
  char portbuf[8];
  snprintf(portbuf, sizeof portbuf, "%.*s", (int)strcspn(colon + 1, "/"), colon + 1);
  if (parse_u32(portbuf, 1, 65535, &port) < 0) return -EINVAL;
  const char *h = s;
  size_t hn = (size_t)(colon - s);
  if (h[0] == '[' && hn >= 2 && h[hn - 1] == ']') {
    h++;
    hn -= 2;
  }
  snprintf(a->host, sizeof a->host, "%.*s", (int)hn, h);
  a->port = (uint16_t)port;
  a->set = true;
  return 0;
}

static int parse_mix(const char *s, uint32_t w[KIND_COUNT]) {
  uint32_t nw[KIND_COUNT] = {0};
  char buf[256];
  snprintf(buf, sizeof buf, "%s", s);
  char *save = NULL;
  for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    if (eq == NULL) return -EINVAL;
    *eq = '\0';
    int k = -1;
    for (int i = 0; i < KIND_COUNT; i++)
      if (strcmp(tok, bench_kind_names[i]) == 0) k = i;
    if (k < 0 || parse_u32(eq + 1, 0, 1000000, &nw[k]) < 0) return -EINVAL;
  }
  uint32_t total = 0;
  for (int i = 0; i < KIND_COUNT; i++) total += nw[i];
  if (total == 0) return -EINVAL;
  memcpy(w, nw, sizeof nw);
  return 0;
}

static void read_key_file(bench_config_t *cfg, const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return;
  char buf[KEY_BYTES] = "";
  if (fgets(buf, sizeof buf, f) != NULL) {
    buf[strcspn(buf, "\r\n")] = '\0';
    snprintf(cfg->hmac_key, sizeof cfg->hmac_key, "%s", buf);
  }
  fclose(f);
}

/* Where `deploy/dev up` keeps its state; bench/run sets it to the
 * repository's, so the defaults hold from any directory. */
static const char *run_dir(void) { return rt_env_str("PAYCORE_RUN_DIR", ".run"); }

static void defaults(bench_config_t *cfg) {
  memset(cfg, 0, sizeof *cfg);
  parse_addr("localhost:8443", &cfg->gateway);
  snprintf(cfg->ca_file, sizeof cfg->ca_file, "%s/certs/tls-ecdsa.crt", run_dir());
  static const char *const ports[UP_COUNT] = {NULL, "127.0.0.1:7001", "127.0.0.1:7002",
                                              "127.0.0.1:7003", "127.0.0.1:7004"};
  static const char *const envs[UP_COUNT] = {NULL, "PROFILE_DB_URL", "ACCOUNT_DB_URL",
                                             "PAYMENT_DB_URL", "EVENT_DB_URL"};
  for (int u = UP_PROFILE; u < UP_COUNT; u++) {
    parse_addr(ports[u], &cfg->svc[u]);
    const char *url = getenv(envs[u]);
    if (url != NULL) snprintf(cfg->db_url[u], sizeof cfg->db_url[u], "%s", url);
  }
  cfg->scenario = SCEN_MIXED;
  cfg->weights[KIND_TOPUP] = 10;
  cfg->weights[KIND_TRANSFER] = 40;
  cfg->weights[KIND_PAYMENT] = 20;
  cfg->weights[KIND_READ] = 30;
  cfg->customers = 10;
  cfg->accounts_per = 2;
  cfg->fund = 1000000;
  cfg->amount_max = 100;
  snprintf(cfg->currency, sizeof cfg->currency, "EUR");
  cfg->open_loop = true;
  cfg->rate = 50;
  cfg->step_ms = 5000;
  cfg->duration_ms = 10000;
  cfg->connections = 16;
  cfg->inflight_max = 1024;
  cfg->late_ms = 5;
  cfg->request_timeout_ms = 10000;
  cfg->payment_wait_ms = 5000;
  cfg->payment_timeout_ms = 30000;
  cfg->drain_timeout_ms = 15000;
  cfg->max_error_rate = -1;
  cfg->check = true;
  snprintf(cfg->json_path, sizeof cfg->json_path, "%s/bench-run.json", run_dir());
  snprintf(cfg->png_path, sizeof cfg->png_path, "%s/bench-run.png", run_dir());
  cfg->progress = -1; /* auto */
  cfg->progress_every_s = 5;
  cfg->seed = 1;
}

static void set_scenario_weights(bench_config_t *cfg) {
  if (cfg->scenario == SCEN_MIXED || cfg->scenario == SCEN_SETUP) return;
  memset(cfg->weights, 0, sizeof cfg->weights);
  kind_t k = cfg->scenario == SCEN_TOPUP ? KIND_TOPUP
             : cfg->scenario == SCEN_TRANSFER ? KIND_TRANSFER
             : cfg->scenario == SCEN_PAYMENT ? KIND_PAYMENT
                                             : KIND_READ;
  cfg->weights[k] = 1;
}

/* One flag with its value; returns 0 or BENCH_E_USAGE. */
static int apply(bench_config_t *cfg, const char *f, const char *v, bool *key_file_given) {
  static const char *const svc_flags[UP_COUNT] = {NULL, "--profile", "--account", "--payment",
                                                  "--event"};
  static const char *const db_flags[UP_COUNT] = {NULL, "--db-profile", "--db-account",
                                                 "--db-payment", "--db-event"};
  uint32_t u32 = 0;
  for (int u = UP_PROFILE; u < UP_COUNT; u++) {
    if (strcmp(f, svc_flags[u]) == 0)
      return parse_addr(v, &cfg->svc[u]) == 0 ? 0 : bad(f, v, "HOST:PORT expected");
    if (strcmp(f, db_flags[u]) == 0) {
      snprintf(cfg->db_url[u], sizeof cfg->db_url[u], "%s", v);
      return 0;
    }
  }
  if (strcmp(f, "--gateway") == 0)
    return parse_addr(v, &cfg->gateway) == 0 ? 0 : bad(f, v, "HOST:PORT expected");
  if (strcmp(f, "--ca") == 0) {
    snprintf(cfg->ca_file, sizeof cfg->ca_file, "%s", v);
  } else if (strcmp(f, "--server-name") == 0) {
    snprintf(cfg->server_name, sizeof cfg->server_name, "%s", v);
  } else if (strcmp(f, "--hmac-key-file") == 0) {
    cfg->hmac_key[0] = '\0';
    read_key_file(cfg, v);
    if (cfg->hmac_key[0] == '\0') return bad(f, v, "cannot read a key from it");
    *key_file_given = true;
  } else if (strcmp(f, "--scenario") == 0) {
    static const char *const names[] = {"setup", "topup", "transfer", "payment", "read", "mixed"};
    int found = -1;
    for (int i = 0; i < 6; i++)
      if (strcmp(v, names[i]) == 0) found = i;
    if (found < 0) return bad(f, v, "one of setup, topup, transfer, payment, read, mixed");
    cfg->scenario = (scenario_t)found;
  } else if (strcmp(f, "--mix") == 0) {
    if (parse_mix(v, cfg->weights) < 0) return bad(f, v, "K=W,... with K of topup, transfer, payment, read");
  } else if (strcmp(f, "--customers") == 0) {
    if (parse_u32(v, 1, 100000, &cfg->customers) < 0) return bad(f, v, "1..100000");
  } else if (strcmp(f, "--accounts") == 0) {
    if (parse_u32(v, 1, 1000, &cfg->accounts_per) < 0) return bad(f, v, "1..1000");
  } else if (strcmp(f, "--fund") == 0 || strcmp(f, "--amount-max") == 0) {
    char *end = NULL;
    long long x = strtoll(v, &end, 10);
    bool fund = f[2] == 'f';
    if (end == v || *end != '\0' || x < (fund ? 0 : 1) || x > 100000000000LL)
      return bad(f, v, "a count of minor units");
    if (fund) cfg->fund = x;
    else cfg->amount_max = x;
  } else if (strcmp(f, "--currency") == 0) {
    if (strlen(v) != 3) return bad(f, v, "an ISO 4217 code");
    snprintf(cfg->currency, sizeof cfg->currency, "%s", v);
  } else if (strcmp(f, "--clients") == 0) {
    if (parse_u32(v, 1, 100000, &cfg->clients) < 0) return bad(f, v, "1..100000");
    cfg->open_loop = false;
  } else if (strcmp(f, "--rate") == 0 || strcmp(f, "--step-rate") == 0) {
    char *end = NULL;
    double r = strtod(v, &end);
    bool step = f[2] == 's';
    if (end == v || *end != '\0' || !(r >= (step ? 0 : 0.001)) || r > 1e7)
      return bad(f, v, "operations per second");
    if (step) cfg->step_rate = r;
    else cfg->rate = r;
    cfg->open_loop = true;
  } else if (strcmp(f, "--json") == 0) {
    snprintf(cfg->json_path, sizeof cfg->json_path, "%s", v);
  } else if (strcmp(f, "--png") == 0) {
    snprintf(cfg->png_path, sizeof cfg->png_path, "%s", v);
  } else if (strcmp(f, "--label") == 0) {
    snprintf(cfg->label, sizeof cfg->label, "%s", v);
  } else if (strcmp(f, "--progress") == 0) {
    if (strcmp(v, "auto") == 0) cfg->progress = -1;
    else if (strcmp(v, "tty") == 0) cfg->progress = 2;
    else if (strcmp(v, "plain") == 0) cfg->progress = 1;
    else if (strcmp(v, "off") == 0) cfg->progress = 0;
    else return bad(f, v, "auto, tty, plain or off");
  } else if (strcmp(f, "--progress-every") == 0) {
    if (parse_u32(v, 1, 3600, &cfg->progress_every_s) < 0) return bad(f, v, "1..3600");
  } else if (strcmp(f, "--seed") == 0) {
    cfg->seed = strtoull(v, NULL, 10);
  } else if (strcmp(f, "--connections") == 0) {
    if (parse_u32(v, 1, 4096, &cfg->connections) < 0) return bad(f, v, "1..4096");
  } else if (strcmp(f, "--max-inflight") == 0) {
    if (parse_u32(v, 1, 1000000, &cfg->inflight_max) < 0) return bad(f, v, "1..1000000");
  } else if (strcmp(f, "--max-error-rate") == 0) {
    char *end = NULL;
    double r = strtod(v, &end);
    if (end == v || (*end != '\0' && strcmp(end, "%") != 0) || !(r >= 0) || r > 100)
      return bad(f, v, "a percentage, e.g. 0.1%");
    cfg->max_error_rate = r / 100.0;
  } else {
    struct {
      const char *name;
      uint32_t *out;
      uint32_t min;
    } durs[] = {{"--duration", &cfg->duration_ms, 1},
                {"--step-every", &cfg->step_ms, 1},
                {"--late-after", &cfg->late_ms, 0},
                {"--timeout", &cfg->request_timeout_ms, 1},
                {"--payment-wait", &cfg->payment_wait_ms, 0},
                {"--payment-timeout", &cfg->payment_timeout_ms, 1},
                {"--drain-timeout", &cfg->drain_timeout_ms, 0},
                {"--max-p99", &u32, 0}};
    for (size_t i = 0; i < sizeof durs / sizeof durs[0]; i++) {
      if (strcmp(f, durs[i].name) != 0) continue;
      if (strcmp(f, "--max-p99") == 0) {
        char *end = NULL;
        double x = strtod(v, &end);
        double mult = strcmp(end, "ms") == 0 ? 1 : strcmp(end, "us") == 0 ? 0.001
                      : strcmp(end, "s") == 0 || *end == '\0' ? 1000 : -1;
        if (end == v || mult < 0 || !(x > 0)) return bad(f, v, "a duration, e.g. 10ms");
        cfg->max_p99_ms = x * mult;
        return 0;
      }
      if (parse_ms(v, durs[i].out) < 0 || *durs[i].out < durs[i].min)
        return bad(f, v, "a duration, e.g. 10s or 250ms");
      return 0;
    }
    return bad(f, "", "unknown flag");
  }
  return 0;
}

static bool takes_no_value(const char *f) {
  return strcmp(f, "--direct") == 0 || strcmp(f, "--no-sql") == 0 ||
         strcmp(f, "--no-check") == 0 || strcmp(f, "--stop-when-behind") == 0 ||
         strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0;
}

static int validate(bench_config_t *cfg) {
  if (cfg->customers * cfg->accounts_per < 2)
    return bad("--customers/--accounts", "", "at least two accounts are needed");
  if (cfg->payment_wait_ms > 30000) return bad("--payment-wait", "", "at most 30s (the service's limit)");
  if (cfg->step_rate > 0 && cfg->step_ms == 0) return bad("--step-every", "", "must be above 0");
  if (cfg->direct && cfg->hmac_key[0] == '\0')
    return bad("--direct", "", "needs the identity key: AUTH_HMAC_KEY or --hmac-key-file");
  if (cfg->server_name[0] == '\0') {
    bool numeric = strspn(cfg->gateway.host, "0123456789.:") == strlen(cfg->gateway.host);
    snprintf(cfg->server_name, sizeof cfg->server_name, "%s",
             numeric ? "localhost" : cfg->gateway.host);
  }
  set_scenario_weights(cfg);
  return 0;
}

int bench_config_parse(bench_config_t *cfg, int argc, char **argv) {
  defaults(cfg);
  bool key_file_given = false, no_sql = false;
  size_t len = 0;
  for (int i = 0; i < argc && len < sizeof cfg->command - 1; i++)
    len += (size_t)snprintf(cfg->command + len, sizeof cfg->command - len, "%s%s", i ? " " : "",
                            i == 0 ? "bench/run" : argv[i]);
  for (int i = 1; i < argc; i++) {
    const char *f = argv[i];
    if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) {
      for (size_t p = 0; p < sizeof usage_parts / sizeof usage_parts[0]; p++)
        fputs(usage_parts[p], stdout);
      return 1;
    }
    if (takes_no_value(f)) {
      if (strcmp(f, "--direct") == 0) cfg->direct = true;
      if (strcmp(f, "--no-sql") == 0) no_sql = true;
      if (strcmp(f, "--no-check") == 0) cfg->check = false;
      if (strcmp(f, "--stop-when-behind") == 0) cfg->stop_when_behind = true;
      continue;
    }
    char flag[64];
    const char *value = NULL;
    const char *eq = strchr(f, '=');
    if (strncmp(f, "--", 2) == 0 && eq != NULL) {
      snprintf(flag, sizeof flag, "%.*s", (int)(eq - f), f);
      value = eq + 1;
    } else if (i + 1 < argc) {
      snprintf(flag, sizeof flag, "%s", f);
      value = argv[++i];
    } else {
      return bad(f, "", strncmp(f, "--", 2) == 0 ? "unknown, or needs a value" : "unknown argument");
    }
    int rc = apply(cfg, flag, value, &key_file_given);
    if (rc < 0) return rc;
  }
  const char *env_key = getenv("AUTH_HMAC_KEY");
  if (env_key != NULL && env_key[0] != '\0') {
    snprintf(cfg->hmac_key, sizeof cfg->hmac_key, "%s", env_key);
  } else if (!key_file_given) {
    char path[PATH_BYTES];
    snprintf(path, sizeof path, "%s/auth_hmac_key", run_dir());
    read_key_file(cfg, path);
  }
  if (no_sql)
    for (int u = 0; u < UP_COUNT; u++) cfg->db_url[u][0] = '\0';
  return validate(cfg);
}
