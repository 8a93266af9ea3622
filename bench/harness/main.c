/*
 * main.c - bench/run: load the platform, then check it kept its
 * invariants (the life of a run is in harness.h).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

static volatile sig_atomic_t stop_flag;

/* Ctrl-C ends the run early; the checks and the report still happen. A
 * second one kills (SA_RESETHAND). */
static void on_sigint(int sig) {
  (void)sig;
  stop_flag = 1;
}

const char *bench_strerror(int err) {
  switch (err) {
  case BENCH_E_CA: return "CA file unusable";
  case BENCH_E_TLS: return "TLS failed (server not trusted, or the engine failed)";
  case BENCH_E_USAGE: return "bad usage";
  case BENCH_E_SETUP: return "the platform refused the setup";
  case BENCH_E_RESPONSE: return "a response lacked a field";
  default: return "unknown bench error";
  }
}

void bench_errors_register(void) {
  rt_strerror_register(BENCH_E_RANGE_LO, BENCH_E_RANGE_HI, bench_strerror);
}

int main(int argc, char **argv) {
  static bench_config_t cfg;
  int rc = bench_config_parse(&cfg, argc, argv);
  if (rc == 1) return BENCH_EXIT_OK;
  if (rc < 0) return BENCH_EXIT_USAGE;
  if (cfg.progress < 0) cfg.progress = isatty(STDERR_FILENO) ? 2 : 1;
  bench_errors_register();
  rt_strerror_register(HTTP_E_RANGE_LO, HTTP_E_RANGE_HI, http_strerror);
  rt_log_init("bench", RT_LOG_ERROR, NULL, 0);
  struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = SA_RESETHAND};
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  static bench_t b;
  b.cfg = &cfg;
  if (cfg.check) bench_sql_start(&b);
  fprintf(stderr, "bench: setting up %u customers x %u accounts...\n", cfg.customers,
          cfg.accounts_per);
  rc = bench_run(&b, &cfg, &stop_flag);
  if (rc < 0 || b.fatal) {
    fprintf(stderr, "bench: %s\n", b.fatal_msg[0] ? b.fatal_msg : rt_strerror(rc));
    bench_free(&b);
    return BENCH_EXIT_RUN;
  }
  if (cfg.check) bench_sql_check(&b);
  bench_report_table(&b);
  char why[256];
  int status = bench_verdict(&b, why, sizeof why);
  printf("\nverdict: %s (exit %d)\n", why, status);
  if (bench_report_json(&b, status, why) < 0) fprintf(stderr, "bench: cannot write %s\n", cfg.json_path);
  else if (cfg.json_path[0]) printf("json:    %s\n", cfg.json_path);
  int crc = bench_report_chart(&b);
  if (crc < 0)
    fprintf(stderr, "bench: no chart: %s\n",
            crc == -ENOENT ? "gnuplot is not installed (Debian package gnuplot-nox)" : rt_strerror(crc));
  else if (cfg.png_path[0] && cfg.scenario != SCEN_SETUP) printf("chart:   %s\n", cfg.png_path);
  bench_free(&b);
  return status;
}
