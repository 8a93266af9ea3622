/*
 * driver.c - runs a fuzz target without libFuzzer.
 *
 * CI has no clang, so each target is also linked with this driver: it runs
 * every seed given on the command line, then a bounded number of
 * mutations of them (deterministic PRNG, so a failure replays), and exits.
 * Built with -Dfuzzers=true under clang, the same target links against
 * libFuzzer instead and this file is not used.
 *
 * usage: fuzz_X [-n ITERATIONS] [-s SEED] SEED...
 * A seed is a file or a directory of files (its files in name order, so
 * that a run replays). Files are raw bytes, as libFuzzer keeps its corpus
 * (tests/fuzz/corpus/<target>/), except two forms kept by the unit tests:
 * *.txt is the escaped text of tests/unit/wire/corpus (first line "# ..."),
 * unescaped first, and *.hex the hex dumps of tests/unit/bus/corpus ('#'
 * comment lines, then hex digits).
 */
#include <dirent.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_BYTES_MAX 65536
#define SEEDS_MAX 4096
#define PATH_BYTES_MAX 4096

typedef struct seed {
  uint8_t *data;
  size_t len;
} seed_t;

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint64_t rng(void) {
  /* xorshift64*: small, fast, good enough to pick mutations. */
  rng_state ^= rng_state >> 12;
  rng_state ^= rng_state << 25;
  rng_state ^= rng_state >> 27;
  return rng_state * 0x2545f4914f6cdd1du;
}

static int hex_digit(int c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* The corpus's escaped text: '#' comment lines first, physical newlines
 * ignored, \r \n \t \0 \\ \xHH are bytes. */
static size_t unescape(const uint8_t *in, size_t len, uint8_t *out) {
  size_t i = 0, o = 0;
  while (i < len && in[i] == '#') {
    while (i < len && in[i] != '\n') i++;
    if (i < len) i++;
  }
  for (; i < len; i++) {
    if (in[i] == '\n' || in[i] == '\r') continue;
    if (in[i] != '\\' || i + 1 >= len) {
      out[o++] = in[i];
      continue;
    }
    char c = (char)in[++i];
    if (c == 'r') out[o++] = '\r';
    else if (c == 'n') out[o++] = '\n';
    else if (c == 't') out[o++] = '\t';
    else if (c == '0') out[o++] = '\0';
    else if (c == 'x' && i + 2 < len && hex_digit(in[i + 1]) >= 0 && hex_digit(in[i + 2]) >= 0) {
      out[o++] = (uint8_t)(hex_digit(in[i + 1]) * 16 + hex_digit(in[i + 2]));
      i += 2;
    } else out[o++] = (uint8_t)c;
  }
  return o;
}

/* Hex digits after the '#' comment lines; anything else is skipped. */
static size_t unhex(const uint8_t *in, size_t len, uint8_t *out) {
  size_t i = 0, o = 0;
  int hi = -1;
  while (i < len && in[i] == '#') {
    while (i < len && in[i] != '\n') i++;
    if (i < len) i++;
  }
  for (; i < len; i++) {
    int d = hex_digit(in[i]);
    if (d < 0) continue;
    if (hi < 0) {
      hi = d;
    } else {
      out[o++] = (uint8_t)(hi * 16 + d);
      hi = -1;
    }
  }
  return o;
}

static bool ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), m = strlen(suffix);
  return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int load_seed(const char *path, seed_t *seed) {
  FILE *f = fopen(path, "rb");
  if (f == NULL) return -1;
  uint8_t *raw = malloc(INPUT_BYTES_MAX);
  size_t n = raw ? fread(raw, 1, INPUT_BYTES_MAX, f) : 0;
  fclose(f);
  if (raw == NULL) return -1;
  bool hex = ends_with(path, ".hex"), text = ends_with(path, ".txt");
  if (hex || text) {
    uint8_t *plain = malloc(n + 1);
    if (plain == NULL) {
      free(raw);
      return -1;
    }
    n = hex ? unhex(raw, n, plain) : unescape(raw, n, plain);
    free(raw);
    raw = plain;
  }
  seed->data = raw;
  seed->len = n;
  return 0;
}

static int cmp_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Loads the files of a directory in name order; returns how many. */
static size_t load_dir(const char *dir, seed_t *seeds, size_t room) {
  DIR *d = opendir(dir);
  if (d == NULL) return 0;
  char **names = calloc(SEEDS_MAX, sizeof *names);
  size_t names_count = 0;
  struct dirent *e;
  while (names != NULL && names_count < SEEDS_MAX && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    names[names_count] = strdup(e->d_name);
    if (names[names_count] != NULL) names_count++;
  }
  closedir(d);
  if (names == NULL) return 0;
  qsort(names, names_count, sizeof *names, cmp_names);
  size_t loaded = 0;
  for (size_t i = 0; i < names_count; i++) {
    char path[PATH_BYTES_MAX];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    free(names[i]);
    if (loaded == room || stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
    if (load_seed(path, &seeds[loaded]) == 0) loaded++;
    else fprintf(stderr, "cannot read seed %s\n", path);
  }
  free(names);
  return loaded;
}

/* Tokens worth splicing into HTTP and bus inputs. */
static const char *const tokens[] = {
    "\r\n", "\n", "\r", "\r\n\r\n", ":", " ", "\t", "0\r\n\r\n", "chunked",
    "Transfer-Encoding: chunked\r\n", "Content-Length: 0\r\n", "Content-Length: 99999999999\r\n",
    "Host: x\r\n", "HTTP/1.1", "HTTP/1.0", "\xff\xff\xff\xff", "\xdb\xff\xff\xff\xff",
    "\xc6\x7f\xff\xff\xff", "\xdf\x7f\xff\xff\xff", "\x00",
};

static size_t mutate(uint8_t *buf, size_t len, size_t cap) {
  uint32_t rounds = 1 + (uint32_t)(rng() % 4);
  for (uint32_t r = 0; r < rounds; r++) {
    size_t pos = len ? (size_t)(rng() % (len + 1)) : 0;
    switch (rng() % 5) {
    case 0: /* flip a byte */
      if (len) buf[pos % len] ^= (uint8_t)(1u << (rng() % 8));
      break;
    case 1: /* set a byte */
      if (len) buf[pos % len] = (uint8_t)rng();
      break;
    case 2: { /* delete a run */
      size_t run = 1 + (size_t)(rng() % 8);
      if (pos + run > len) run = len - pos;
      memmove(buf + pos, buf + pos + run, len - pos - run);
      len -= run;
      break;
    }
    default: { /* insert a token */
      const char *t = tokens[rng() % (sizeof tokens / sizeof tokens[0])];
      size_t tl = strlen(t);
      if (tl == 0) tl = 1; /* the NUL token */
      if (len + tl > cap) break;
      memmove(buf + pos + tl, buf + pos, len - pos);
      memcpy(buf + pos, t, tl);
      len += tl;
      break;
    }
    }
  }
  return len;
}

int main(int argc, char **argv) {
  long iterations = 20000;
  int argi = 1;
  while (argi + 1 < argc && argv[argi][0] == '-') {
    if (strcmp(argv[argi], "-n") == 0) iterations = atol(argv[argi + 1]);
    else if (strcmp(argv[argi], "-s") == 0) rng_state = strtoull(argv[argi + 1], NULL, 0) | 1u;
    argi += 2;
  }
  static seed_t seeds[SEEDS_MAX];
  size_t seeds_count = 0;
  for (; argi < argc && seeds_count < SEEDS_MAX; argi++) {
    struct stat st;
    if (stat(argv[argi], &st) == 0 && S_ISDIR(st.st_mode))
      seeds_count += load_dir(argv[argi], seeds + seeds_count, SEEDS_MAX - seeds_count);
    else if (load_seed(argv[argi], &seeds[seeds_count]) == 0) seeds_count++;
    else fprintf(stderr, "cannot read seed %s\n", argv[argi]);
  }
  if (seeds_count == 0) {
    fprintf(stderr, "no seeds\n");
    return 2;
  }
  for (size_t i = 0; i < seeds_count; i++) LLVMFuzzerTestOneInput(seeds[i].data, seeds[i].len);
  uint8_t *buf = malloc(INPUT_BYTES_MAX);
  if (buf == NULL) return 2;
  for (long it = 0; it < iterations; it++) {
    const seed_t *s = &seeds[rng() % seeds_count];
    size_t len = s->len < INPUT_BYTES_MAX ? s->len : INPUT_BYTES_MAX;
    memcpy(buf, s->data, len);
    len = mutate(buf, len, INPUT_BYTES_MAX);
    LLVMFuzzerTestOneInput(buf, len);
  }
  free(buf);
  for (size_t i = 0; i < seeds_count; i++) free(seeds[i].data);
  /* The targets abort on a broken property; reaching here means none did. */
  printf("%zu passed, 0 failed\n", seeds_count + (size_t)iterations);
  return 0;
}
