/*
 * report.c - what a run tells: live progress on stderr, the table on
 * stdout, the JSON file for machines, the chart (gnuplot), and the
 * verdict that becomes the exit status.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

static double ms(uint64_t ns) { return (double)ns / 1e6; }

static uint64_t total_ok(const bench_t *b) {
  uint64_t n = 0;
  for (int k = 0; k < KIND_COUNT; k++) n += b->ok[k];
  return n;
}

static uint64_t total_errors(const bench_t *b) {
  uint64_t n = b->err_kind[ERR_NOT_SENT];
  for (int k = 0; k < KIND_COUNT; k++) n += b->errors[k];
  return n;
}

static double error_rate(const bench_t *b) {
  uint64_t all = total_ok(b) + total_errors(b);
  return all ? (double)total_errors(b) / (double)all : 0.0;
}

static double run_seconds(const bench_t *b) {
  uint64_t end = b->run_end_ns > b->run_start_ns ? b->run_end_ns : b->run_start_ns;
  return (double)(end - b->run_start_ns) / 1e9;
}

/* ------------------------------------------------------------------------ */
/* Progress                                                                 */
/* ------------------------------------------------------------------------ */

void bench_progress_tick(bench_t *b, bool final) {
  static uint64_t last_ok, last_err;
  const bench_config_t *cfg = b->cfg;
  uint64_t now = rt_now_ns();
  uint64_t ok = total_ok(b), err = total_errors(b);
  double elapsed = (double)(now - b->run_start_ns) / 1e9;
  double dur = cfg->duration_ms / 1000.0;
  uint32_t sec = (uint32_t)elapsed;
  const bench_hist_t *h = &b->seconds[sec > 0 && sec - 1 < b->seconds_count ? sec - 1 : 0].hist;
  char rate[48] = "";
  if (cfg->open_loop) {
    snprintf(rate, sizeof rate, "  target %.0f/s",
             bench_sched_rate_of(&b->sched, bench_sched_step_of(&b->sched, now)));
  }
  char line[256];
  snprintf(line, sizeof line,
           "%5.1fs/%.0fs%s  %" PRIu64 " ok/s  p99 %.2f ms  errors %" PRIu64 "  in flight %u%s",
           elapsed > dur ? dur : elapsed, dur, rate, ok - last_ok, ms(bench_hist_percentile(h, 99)),
           err, b->inflight, b->phase == PHASE_DRAIN ? "  (draining)" : "");
  last_ok = ok;
  last_err = err;
  (void)last_err;
  if (cfg->progress == 2) {
    int width = 20, done = dur > 0 ? (int)(width * (elapsed > dur ? 1.0 : elapsed / dur)) : width;
    char bar[32];
    for (int i = 0; i < width; i++) bar[i] = i < done ? '#' : '.';
    bar[width] = '\0';
    fprintf(stderr, "\r\033[K[%s] %s%s", bar, line, final ? "\n" : "");
    fflush(stderr);
    return;
  }
  if (final || ++b->progress_lines % cfg->progress_every_s == 0) fprintf(stderr, "%s\n", line);
}

/* ------------------------------------------------------------------------ */
/* Verdict                                                                  */
/* ------------------------------------------------------------------------ */

static bool step_kept_up(const bench_t *b, const step_stats_t *st) {
  double secs = b->cfg->step_ms / 1000.0;
  return (double)st->window_ok >= 0.95 * st->rate * secs &&
         (double)st->late <= 0.01 * (double)st->issued &&
         (double)st->errors <= 0.001 * (double)st->issued;
}

double bench_sustained_rate(const bench_t *b) {
  double best = 0;
  for (uint32_t k = 0; k < b->steps_count && k < b->steps_judged; k++) {
    if (!step_kept_up(b, &b->steps[k])) break;
    best = b->steps[k].rate;
  }
  return best;
}

int bench_verdict(const bench_t *b, char *why, size_t n) {
  uint32_t failed = 0;
  for (uint32_t i = 0; i < b->checks_count; i++)
    if (b->checks[i].status == CHECK_FAIL) failed++;
  if (failed) {
    snprintf(why, n, "%u invariant check%s failed", failed, failed > 1 ? "s" : "");
    return BENCH_EXIT_INVARIANT;
  }
  double p99 = ms(bench_hist_percentile(&b->all, 99));
  if (b->cfg->max_p99_ms > 0 && p99 > b->cfg->max_p99_ms) {
    snprintf(why, n, "p99 %.3f ms is above --max-p99 %.3f ms", p99, b->cfg->max_p99_ms);
    return BENCH_EXIT_THRESHOLD;
  }
  double er = error_rate(b);
  if (b->cfg->max_error_rate >= 0 && er > b->cfg->max_error_rate) {
    snprintf(why, n, "error rate %.4f%% is above --max-error-rate %.4f%%", er * 100,
             b->cfg->max_error_rate * 100);
    return BENCH_EXIT_THRESHOLD;
  }
  snprintf(why, n, "%s", b->cfg->check ? "thresholds met, invariants hold" : "thresholds met");
  return BENCH_EXIT_OK;
}

/* ------------------------------------------------------------------------ */
/* Table                                                                    */
/* ------------------------------------------------------------------------ */

static void describe_load(const bench_t *b, char *out, size_t n) {
  const bench_config_t *cfg = b->cfg;
  if (cfg->scenario == SCEN_SETUP) {
    snprintf(out, n, "setup only");
  } else if (!cfg->open_loop) {
    snprintf(out, n, "closed loop, %u clients, %.0f s", cfg->clients, cfg->duration_ms / 1000.0);
  } else if (cfg->step_rate > 0) {
    snprintf(out, n, "open loop from %.0f/s, +%.0f/s every %.0f s, %.0f s%s", cfg->rate,
             cfg->step_rate, cfg->step_ms / 1000.0, cfg->duration_ms / 1000.0,
             cfg->stop_when_behind ? " (stops when behind)" : "");
  } else {
    snprintf(out, n, "open loop at %.0f/s, %.0f s", cfg->rate, cfg->duration_ms / 1000.0);
  }
}

static void target_url(const bench_t *b, char *out, size_t n) {
  const bench_config_t *cfg = b->cfg;
  if (cfg->direct) {
    snprintf(out, n, "services directly (account %s:%u, payment %s:%u)", cfg->svc[UP_ACCOUNT].host,
             cfg->svc[UP_ACCOUNT].port, cfg->svc[UP_PAYMENT].host, cfg->svc[UP_PAYMENT].port);
  } else {
    snprintf(out, n, "https://%s:%u (gateway, TLS 1.2)", cfg->gateway.host, cfg->gateway.port);
  }
}

static const char *scenario_name(scenario_t s) {
  static const char *const names[] = {"setup", "topup", "transfer", "payment", "read", "mixed"};
  return names[s];
}

static void row(const char *name, const bench_hist_t *h, uint64_t ok, uint64_t err) {
  printf("%-10s %9" PRIu64 " %7" PRIu64 " %9.3f %9.3f %9.3f %9.3f %9.3f\n", name, ok, err,
         ms(bench_hist_percentile(h, 50)), ms(bench_hist_percentile(h, 90)),
         ms(bench_hist_percentile(h, 99)), ms(bench_hist_percentile(h, 99.9)), ms(h->max));
}

void bench_report_table(const bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  char load[160], url[320];
  describe_load(b, load, sizeof load);
  target_url(b, url, sizeof url);
  printf("bench/run: %s, %s\n", scenario_name(cfg->scenario), load);
  printf("target:    %s\n", url);
  printf("setup:     %u customers x %u accounts in %.2f s (%" PRIu64 " requests, p99 %.1f ms)\n",
         cfg->customers, cfg->accounts_per,
         (double)(b->run_start_ns - b->setup_start_ns) / 1e9, b->setup_hist.count,
         ms(bench_hist_percentile(&b->setup_hist, 99)));
  if (cfg->scenario != SCEN_SETUP) {
    printf("\nlatency in ms, from each operation's intended start; payments until final\n");
    printf("%-10s %9s %7s %9s %9s %9s %9s %9s\n", "operation", "ok", "errors", "p50", "p90",
           "p99", "p99.9", "max");
    for (int k = 0; k < KIND_COUNT; k++)
      if (b->ok[k] + b->errors[k] > 0) row(bench_kind_names[k], &b->hist[k], b->ok[k], b->errors[k]);
    row("all", &b->all, total_ok(b), total_errors(b));
    double secs = run_seconds(b);
    printf("\nthroughput: %.1f ok/s over %.1f s; %" PRIu64 " HTTP requests", secs > 0 ? total_ok(b) / secs : 0,
           secs, b->requests);
    if (cfg->open_loop)
      printf("; late sends %" PRIu64 " (> %u ms), not sent %" PRIu64 ", worst lateness %.1f ms",
             b->sched.late, cfg->late_ms, b->err_kind[ERR_NOT_SENT], ms(b->sched.lateness_max_ns));
    printf("\nerrors:     %.4f%%", error_rate(b) * 100);
    for (int e = 0; e < ERR_COUNT; e++)
      if (e != ERR_STATUS && b->err_kind[e]) printf(", %s %" PRIu64, bench_err_names[e], b->err_kind[e]);
    for (int s = 0; s < 600; s++)
      if (b->err_status[s]) printf(", HTTP %d: %" PRIu64, s, b->err_status[s]);
    printf("\n");
    if (b->steps_count > 1) {
      printf("\nsteps: %-9s %9s %9s %7s %9s %9s  kept up\n", "rate/s", "issued", "ok/s", "late",
             "p50 ms", "p99 ms");
      for (uint32_t k = 0; k < b->steps_count; k++) {
        const step_stats_t *st = &b->steps[k];
        if (st->issued == 0) continue;
        printf("       %-9.0f %9" PRIu64 " %9.1f %7" PRIu64 " %9.3f %9.3f  %s\n", st->rate,
               st->issued, st->window_ok / (cfg->step_ms / 1000.0), st->late,
               ms(bench_hist_percentile(&st->hist, 50)), ms(bench_hist_percentile(&st->hist, 99)),
               k < b->steps_judged ? (step_kept_up(b, st) ? "yes" : "no") : "-");
      }
      printf("sustained rate: %.0f/s\n", bench_sustained_rate(b));
    }
  }
  if (b->checks_count > 0) printf("\ninvariants:\n");
  for (uint32_t i = 0; i < b->checks_count; i++) {
    const check_t *c = &b->checks[i];
    const char *st = c->status == CHECK_PASS ? "PASS" : c->status == CHECK_FAIL ? "FAIL" : "SKIP";
    printf("  %s  %s: %s\n", st, c->name, c->detail);
  }
  if (!cfg->check) printf("\ninvariants: not checked (--no-check)\n");
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                     */
/* ------------------------------------------------------------------------ */

static void jstr(FILE *f, const char *s) {
  fputc('"', f);
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
    else if (c < 0x20) fprintf(f, "\\u%04x", c);
    else fputc(c, f);
  }
  fputc('"', f);
}

static void jhist(FILE *f, const bench_hist_t *h) {
  fprintf(f,
          "{\"count\":%" PRIu64 ",\"p50_ms\":%.4f,\"p90_ms\":%.4f,\"p99_ms\":%.4f,"
          "\"p99_9_ms\":%.4f,\"max_ms\":%.4f,\"mean_ms\":%.4f}",
          h->count, ms(bench_hist_percentile(h, 50)), ms(bench_hist_percentile(h, 90)),
          ms(bench_hist_percentile(h, 99)), ms(bench_hist_percentile(h, 99.9)), ms(h->max),
          bench_hist_mean(h) / 1e6);
}

static void jmachine(FILE *f) {
  struct utsname u;
  uname(&u);
  char cpu[128] = "";
  FILE *ci = fopen("/proc/cpuinfo", "r");
  char line[256];
  while (ci != NULL && fgets(line, sizeof line, ci) != NULL) {
    if (strncmp(line, "model name", 10) != 0) continue;
    const char *p = strchr(line, ':');
    if (p != NULL) snprintf(cpu, sizeof cpu, "%s", p + 2);
    cpu[strcspn(cpu, "\n")] = '\0';
    break;
  }
  if (ci != NULL) fclose(ci);
  fprintf(f, "{\"nproc\":%ld,\"kernel\":", sysconf(_SC_NPROCESSORS_ONLN));
  jstr(f, u.release);
  fprintf(f, ",\"arch\":");
  jstr(f, u.machine);
  fprintf(f, ",\"cpu\":");
  jstr(f, cpu);
  fputc('}', f);
}

static void jconfig(FILE *f, const bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  char url[320];
  target_url(b, url, sizeof url);
  fprintf(f, "{\"target\":");
  jstr(f, url);
  fprintf(f, ",\"direct\":%s,\"scenario\":\"%s\",\"weights\":{", cfg->direct ? "true" : "false",
          scenario_name(cfg->scenario));
  for (int k = 0; k < KIND_COUNT; k++)
    fprintf(f, "%s\"%s\":%u", k ? "," : "", bench_kind_names[k], cfg->weights[k]);
  fprintf(f,
          "},\"loop\":\"%s\",\"clients\":%u,\"rate\":%.3f,\"step_rate\":%.3f,\"step_s\":%.3f,"
          "\"duration_s\":%.3f,\"customers\":%u,\"accounts_per_customer\":%u,\"connections\":%u,"
          "\"inflight_max\":%u,\"late_ms\":%u,\"currency\":\"%s\",\"seed\":%" PRIu64 "}",
          cfg->open_loop ? "open" : "closed", cfg->clients, cfg->rate, cfg->step_rate,
          cfg->step_ms / 1000.0, cfg->duration_ms / 1000.0, cfg->customers, cfg->accounts_per,
          cfg->connections, cfg->inflight_max, cfg->late_ms, cfg->currency, cfg->seed);
}

static uint32_t seconds_used(const bench_t *b) {
  uint32_t n = 0;
  for (uint32_t i = 0; i < b->seconds_count; i++)
    if (b->seconds[i].ok + b->seconds[i].errors > 0) n = i + 1;
  return n;
}

static void jseries(FILE *f, const bench_t *b) {
  fprintf(f, "[");
  uint32_t n = seconds_used(b);
  for (uint32_t i = 0; i < n; i++) {
    const second_stats_t *s = &b->seconds[i];
    fprintf(f, "%s{\"t\":%u,\"ok\":%" PRIu64 ",\"errors\":%" PRIu64 ",\"p50_ms\":%.4f,\"p99_ms\":%.4f}",
            i ? "," : "", i + 1, s->ok, s->errors, ms(bench_hist_percentile(&s->hist, 50)),
            ms(bench_hist_percentile(&s->hist, 99)));
  }
  fprintf(f, "]");
}

static void jsteps(FILE *f, const bench_t *b) {
  fprintf(f, "[");
  for (uint32_t k = 0; k < b->steps_count; k++) {
    const step_stats_t *st = &b->steps[k];
    fprintf(f,
            "%s{\"rate\":%.3f,\"issued\":%" PRIu64 ",\"ok\":%" PRIu64 ",\"errors\":%" PRIu64
            ",\"late\":%" PRIu64 ",\"completed_per_s\":%.3f,\"kept_up\":%s,\"latency\":",
            k ? "," : "", st->rate, st->issued, st->ok, st->errors, st->late,
            b->cfg->step_ms ? st->window_ok / (b->cfg->step_ms / 1000.0) : 0.0,
            k < b->steps_judged && step_kept_up(b, st) ? "true" : "false");
    jhist(f, &st->hist);
    fputc('}', f);
  }
  fprintf(f, "]");
}

static void jchecks(FILE *f, const bench_t *b) {
  fprintf(f, "[");
  for (uint32_t i = 0; i < b->checks_count; i++) {
    const check_t *c = &b->checks[i];
    fprintf(f, "%s{\"name\":", i ? "," : "");
    jstr(f, c->name);
    fprintf(f, ",\"status\":\"%s\",\"detail\":",
            c->status == CHECK_PASS ? "pass" : c->status == CHECK_FAIL ? "fail" : "skip");
    jstr(f, c->detail);
    fputc('}', f);
  }
  fprintf(f, "]");
}

int bench_report_json(const bench_t *b, int exit_status, const char *verdict) {
  const bench_config_t *cfg = b->cfg;
  if (cfg->json_path[0] == '\0') return 0;
  FILE *f = fopen(cfg->json_path, "w");
  if (f == NULL) return -errno;
  char when[32];
  time_t now = time(NULL);
  strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
  fprintf(f, "{\"bench\":\"run\",\"time\":\"%s\",\"label\":", when);
  jstr(f, cfg->label);
  fprintf(f, ",\"command\":");
  jstr(f, cfg->command);
  fprintf(f, ",\"machine\":");
  jmachine(f);
  fprintf(f, ",\"config\":");
  jconfig(f, b);
  fprintf(f,
          ",\"setup\":{\"customers\":%u,\"accounts\":%u,\"seconds\":%.3f,\"latency\":",
          cfg->customers, b->accounts_count, (double)(b->run_start_ns - b->setup_start_ns) / 1e9);
  jhist(f, &b->setup_hist);
  double secs = run_seconds(b);
  fprintf(f,
          "},\"run\":{\"seconds\":%.3f,\"ok\":%" PRIu64 ",\"errors\":%" PRIu64
          ",\"ok_per_s\":%.3f,\"http_requests\":%" PRIu64 ",\"late\":%" PRIu64
          ",\"not_sent\":%" PRIu64 ",\"lateness_max_ms\":%.3f,\"payments_completed\":%" PRIu64
          ",\"payments_failed\":%" PRIu64 ",\"error_rate\":%.6f},\"latency\":{\"all\":",
          secs, total_ok(b), total_errors(b), secs > 0 ? total_ok(b) / secs : 0.0, b->requests,
          b->sched.late, b->err_kind[ERR_NOT_SENT], ms(b->sched.lateness_max_ns),
          b->payments_completed, b->payments_failed, error_rate(b));
  jhist(f, &b->all);
  for (int k = 0; k < KIND_COUNT; k++) {
    fprintf(f, ",\"%s\":", bench_kind_names[k]);
    jhist(f, &b->hist[k]);
  }
  fprintf(f, "},\"histogram_error_bound\":%.6f,\"errors\":{\"by_kind\":{", bench_hist_error_bound(7));
  bool first = true;
  for (int e = 0; e < ERR_COUNT; e++) {
    if (!b->err_kind[e] || e == ERR_STATUS) continue;
    fprintf(f, "%s\"%s\":%" PRIu64, first ? "" : ",", bench_err_names[e], b->err_kind[e]);
    first = false;
  }
  fprintf(f, "},\"by_status\":{");
  first = true;
  for (int s = 0; s < 600; s++) {
    if (!b->err_status[s]) continue;
    fprintf(f, "%s\"%d\":%" PRIu64, first ? "" : ",", s, b->err_status[s]);
    first = false;
  }
  fprintf(f, "}},\"per_second\":");
  jseries(f, b);
  fprintf(f, ",\"steps\":");
  jsteps(f, b);
  if (b->steps_count > 1) fprintf(f, ",\"sustained_rate\":%.3f", bench_sustained_rate(b));
  fprintf(f, ",\"checked\":%s,\"checks\":", cfg->check ? "true" : "false");
  jchecks(f, b);
  fprintf(f, ",\"thresholds\":{\"max_p99_ms\":%.4f,\"max_error_rate\":%.6f},\"exit_status\":%d,"
             "\"verdict\":",
          cfg->max_p99_ms, cfg->max_error_rate, exit_status);
  jstr(f, verdict);
  fprintf(f, "}\n");
  int rc = ferror(f) ? -EIO : 0;
  if (fclose(f) != 0) rc = -errno;
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Chart                                                                    */
/* ------------------------------------------------------------------------ */

/* Runs gnuplot on a script; 0 when it exited 0. */
static int run_gnuplot(const char *script) {
  pid_t pid = fork();
  if (pid < 0) return -errno;
  if (pid == 0) {
    execlp("gnuplot", "gnuplot", script, (char *)NULL);
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) < 0) return -errno;
  if (WIFEXITED(status) && WEXITSTATUS(status) == 127) return -ENOENT;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -EIO;
}

int bench_report_chart(const bench_t *b) {
  const bench_config_t *cfg = b->cfg;
  if (cfg->png_path[0] == '\0' || cfg->scenario == SCEN_SETUP) return 0;
  char dat[PATH_BYTES + 8], gp[PATH_BYTES + 8];
  snprintf(dat, sizeof dat, "%s.dat", cfg->png_path);
  snprintf(gp, sizeof gp, "%s.gp", cfg->png_path);
  FILE *f = fopen(dat, "w");
  if (f == NULL) return -errno;
  uint32_t n = seconds_used(b);
  for (uint32_t i = 0; i < n; i++) {
    const second_stats_t *s = &b->seconds[i];
    fprintf(f, "%u %" PRIu64 " %" PRIu64 " %.4f %.4f\n", i + 1, s->ok, s->errors,
            s->ok ? ms(bench_hist_percentile(&s->hist, 99)) : NAN,
            s->ok ? ms(bench_hist_percentile(&s->hist, 50)) : NAN);
  }
  fclose(f);
  char load[160], url[320];
  describe_load(b, load, sizeof load);
  target_url(b, url, sizeof url);
  f = fopen(gp, "w");
  if (f == NULL) return -errno;
  fprintf(f,
          "set terminal png size 1100,520\n"
          "set output '%s'\n"
          "set title \"bench/run %s: %s\\n%s\" noenhanced\n"
          "set xlabel 'seconds since the run started'\n"
          "set ylabel 'completed ok per second'\n"
          "set y2label 'latency (ms)'\n"
          "set ytics nomirror\nset y2tics\nset yrange [0:*]\nset y2range [0:*]\nset offsets 0, 0, graph 0.1, 0\n"
          "set grid\nset key outside bottom center horizontal\nset datafile missing 'nan'\n"
          "plot '%s' using 1:2 with lines lw 2 title 'ok/s' axes x1y1, \\\n"
          "     '' using 1:3 with impulses lw 2 title 'errors/s' axes x1y1, \\\n"
          "     '' using 1:4 with linespoints pt 7 ps 0.5 title 'p99 (ms)' axes x1y2, \\\n"
          "     '' using 1:5 with lines dt 2 title 'p50 (ms)' axes x1y2\n",
          cfg->png_path, scenario_name(cfg->scenario), load, url, dat);
  fclose(f);
  int rc = run_gnuplot(gp);
  unlink(gp);
  unlink(dat);
  return rc;
}
