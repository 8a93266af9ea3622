/*
 * test_bus_segment.c - busd's segment log: CRC32C against known vectors,
 * records written and read back, a segment scanned with its index, torn
 * tails cut at many offsets (inside a header, inside a payload, on a record
 * boundary, a tail of zeros), and checksum and sequence errors detected.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busd.h"
#include "t.h"

#define REC_MAX (BUS_FRAME_BYTES_MAX_DEFAULT + BUSD_REC_HEADER_BYTES)

static char dir[] = "/tmp/test_bus_segment.XXXXXX";

static void test_crc32c(void) {
  T_CHECK_EQ_INT(busd_crc32c(0, "123456789", 9), 0xe3069283u);
  T_CHECK_EQ_INT(busd_crc32c(0, "", 0), 0);
  uint8_t zeros[32] = {0};
  T_CHECK_EQ_INT(busd_crc32c(0, zeros, 32), 0x8a9136aau);
  /* Incremental equals one shot, at every split (exercises both paths). */
  const char *s = "The quick brown fox jumps over the lazy dog, twice over.";
  size_t n = strlen(s);
  uint32_t whole = busd_crc32c(0, s, n);
  int bad = 0;
  for (size_t cut = 0; cut <= n; cut++)
    if (busd_crc32c(busd_crc32c(0, s, cut), s + cut, n - cut) != whole) bad++;
  T_CHECK_EQ_INT(bad, 0);
}

static bus_bytes_t b(const char *s) {
  return (bus_bytes_t){.ptr = (const uint8_t *)s, .len = (uint32_t)strlen(s)};
}

/* Appends one record with offset `off` and a payload of `size` bytes. */
static size_t put_rec(uint8_t *dst, uint64_t off, size_t size) {
  static uint8_t payload[70000];
  for (size_t i = 0; i < size; i++) payload[i] = (uint8_t)(off + i);
  uint8_t id[16];
  memset(id, (int)off, sizeof id);
  bus_bytes_t data = {.ptr = payload, .len = (uint32_t)size};
  busd_rec_write(dst, off, 1700000000000ull + off, id, b("key"), b("\x80"), data);
  return busd_rec_size(3, 1, size);
}

static void test_record_round_trip(void) {
  uint8_t buf[512];
  size_t n = put_rec(buf, 42, 100);
  busd_rec_t r;
  T_CHECK_EQ_INT(busd_rec_parse(buf, n, REC_MAX, true, &r), (int64_t)n);
  T_CHECK(r.offset == 42);
  T_CHECK(r.stored_ms == 1700000000042ull);
  T_CHECK_EQ_INT(r.key.len, 3);
  T_CHECK(memcmp(r.key.ptr, "key", 3) == 0);
  T_CHECK_EQ_INT(r.payload.len, 100);
  T_CHECK_EQ_INT(r.payload.ptr[5], (uint8_t)(42 + 5));
  T_CHECK_EQ_INT(r.id[0], 42);
  /* Incomplete: every shorter prefix asks for more. */
  int bad = 0;
  for (size_t cut = 0; cut < n; cut++)
    if (busd_rec_parse(buf, cut, REC_MAX, true, &r) != 0) bad++;
  T_CHECK_EQ_INT(bad, 0);
  /* A flipped payload bit is caught by the checksum, not without it. */
  buf[n - 1] ^= 1;
  T_CHECK_EQ_INT(busd_rec_parse(buf, n, REC_MAX, true, &r), BUS_E_CORRUPT);
  T_CHECK_EQ_INT(busd_rec_parse(buf, n, REC_MAX, false, &r), (int64_t)n);
  /* An impossible length is refused before anything else. */
  buf[0] = 10;
  buf[1] = buf[2] = buf[3] = 0;
  T_CHECK_EQ_INT(busd_rec_parse(buf, n, REC_MAX, true, &r), BUS_E_CORRUPT);
  memset(buf, 0xff, 4);
  T_CHECK_EQ_INT(busd_rec_parse(buf, n, REC_MAX, true, &r), BUS_E_CORRUPT);
}

/* Writes `count` records with offsets base.. to a new segment; returns the
 * record boundaries in ends[] (ends[i] = bytes after record i). */
static int make_segment(const char *path, uint64_t base, int count, uint64_t *ends) {
  int fd = open(path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  static uint8_t buf[80000];
  uint64_t pos = 0;
  for (int i = 0; i < count; i++) {
    /* Sizes vary, a few records span the 64 KiB index stride. */
    size_t size = (size_t)(i % 7 == 3 ? 66000 : 10 + (i * 37) % 900);
    size_t n = put_rec(buf, base + (uint64_t)i, size);
    if (write(fd, buf, n) != (ssize_t)n) return -1;
    pos += n;
    ends[i] = pos;
  }
  return fd;
}

static void test_scan_and_index(void) {
  char path[256];
  busd_seg_path(path, sizeof path, dir, 1000);
  uint64_t ends[64];
  int fd = make_segment(path, 1000, 64, ends);
  T_REQUIRE(fd >= 0);
  busd_scan_t s;
  busd_index_t idx = {0};
  T_REQUIRE(busd_seg_scan(fd, 1000, REC_MAX, &s, &idx) == 0);
  T_CHECK_EQ_INT(s.stop, 0);
  T_CHECK_EQ_INT(s.records, 64);
  T_CHECK(s.next_offset == 1064);
  T_CHECK(s.valid_bytes == ends[63]);
  T_CHECK(s.file_bytes == ends[63]);
  T_CHECK(idx.len > 2);
  /* Every lookup lands on a record boundary at or before the record, and
   * less than a stride plus one record before it. */
  int bad = 0;
  for (int i = 0; i < 64; i++) {
    uint64_t start = i == 0 ? 0 : ends[i - 1];
    uint64_t at = 0;
    uint64_t found = busd_index_find(&idx, 1000 + (uint64_t)i, 1000, &at);
    int k = -1; /* the record that starts at `found` */
    if (found != 0)
      for (k = 0; k < 64 && ends[k] != found; k++) {
      }
    bool boundary = k < 64 && at == 1000 + (uint64_t)(k + 1);
    if (found > start || !boundary || start - found > BUSD_INDEX_STRIDE + 70000) bad++;
  }
  T_CHECK_EQ_INT(bad, 0);
  /* The wrong base is a sequence error at the first record. */
  T_REQUIRE(busd_seg_scan(fd, 999, REC_MAX, &s, NULL) == 0);
  T_CHECK_EQ_INT(s.stop, BUS_E_CORRUPT);
  T_CHECK_EQ_INT(s.records, 0);
  busd_index_free(&idx);
  close(fd);
  unlink(path);
}

/* Cuts the file at `cut` bytes, recovers, and checks what is left. */
static void torn_case(const char *path, const uint64_t *ends, int count, uint64_t cut) {
  int fd = make_segment(path, 0, count, (uint64_t *)ends);
  if (fd < 0 || ftruncate(fd, (off_t)cut) < 0) {
    T_CHECK(!"cannot prepare the segment");
    return;
  }
  int whole = 0;
  while (whole < count && ends[whole] <= cut) whole++;
  uint64_t keep = whole == 0 ? 0 : ends[whole - 1];
  busd_scan_t s;
  int64_t removed = busd_seg_recover(fd, 0, REC_MAX, &s, NULL);
  T_CHECK(removed == (int64_t)(cut - keep));
  T_CHECK_EQ_INT(s.records, whole);
  T_CHECK(s.next_offset == (uint64_t)whole);
  T_CHECK_EQ_INT(s.stop, cut == keep ? 0 : BUS_E_TRUNCATED);
  struct stat st;
  fstat(fd, &st);
  T_CHECK((uint64_t)st.st_size == keep);
  /* A second recovery finds a clean segment. */
  T_CHECK_EQ_INT(busd_seg_recover(fd, 0, REC_MAX, &s, NULL), 0);
  T_CHECK_EQ_INT(s.stop, 0);
  close(fd);
}

static void test_torn_tail(void) {
  char path[256];
  busd_seg_path(path, sizeof path, dir, 0);
  uint64_t ends[20];
  int fd = make_segment(path, 0, 20, ends);
  T_REQUIRE(fd >= 0);
  close(fd);
  uint64_t cuts[] = {
      0,                 /* nothing left */
      3,                 /* inside the first length field */
      30,                /* inside the first header */
      ends[0],           /* exactly one record */
      ends[4] + 1,       /* one byte of the next header */
      ends[4] + 51,      /* header complete but for one byte */
      ends[4] + 52,      /* header whole, no payload */
      ends[9] - 1,       /* all of record 9 but its last byte */
      ends[10] + 70,     /* inside a payload */
      ends[19] - 1,      /* the very last byte missing */
      ends[19],          /* nothing torn */
  };
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) torn_case(path, ends, 20, cuts[i]);
  unlink(path);
}

/* A tail of zeros (size updated, data never written) and a flipped byte in
 * the middle are cut as well; records before them stay. */
static void test_zero_tail_and_corruption(void) {
  char path[256];
  busd_seg_path(path, sizeof path, dir, 0);
  uint64_t ends[10];
  int fd = make_segment(path, 0, 10, ends);
  T_REQUIRE(fd >= 0);
  T_REQUIRE(ftruncate(fd, (off_t)(ends[9] + 4096)) == 0);
  busd_scan_t s;
  T_CHECK(busd_seg_recover(fd, 0, REC_MAX, &s, NULL) == 4096);
  T_CHECK_EQ_INT(s.stop, BUS_E_CORRUPT);
  T_CHECK_EQ_INT(s.records, 10);
  uint8_t byte;
  T_REQUIRE(pread(fd, &byte, 1, (off_t)ends[6] + 60) == 1);
  byte ^= 0x40;
  T_REQUIRE(pwrite(fd, &byte, 1, (off_t)ends[6] + 60) == 1);
  T_REQUIRE(busd_seg_scan(fd, 0, REC_MAX, &s, NULL) == 0);
  T_CHECK_EQ_INT(s.stop, BUS_E_CORRUPT);
  T_CHECK_EQ_INT(s.records, 7);
  T_CHECK(s.valid_bytes == ends[6]);
  close(fd);
  unlink(path);
}

static void test_names(void) {
  char path[256];
  T_CHECK_EQ_INT(busd_seg_path(path, sizeof path, "/d", 42), 0);
  T_CHECK_STR(path, "/d/00000000000000000042.log");
  uint64_t base = 0;
  T_CHECK(busd_seg_name_parse("00000000000000000042.log", &base) && base == 42);
  T_CHECK(busd_seg_name_parse("18446744073709551615.log", &base) && base == UINT64_MAX);
  T_CHECK(!busd_seg_name_parse("18446744073709551616.log", &base));
  T_CHECK(!busd_seg_name_parse("0000000000000000004x.log", &base));
  T_CHECK(!busd_seg_name_parse("42.log", &base));
  T_CHECK(!busd_seg_name_parse("00000000000000000042.tmp", &base));
  T_CHECK_EQ_INT(busd_seg_path(path, 8, "/d", 42), -ENAMETOOLONG);
}

int main(void) {
  if (mkdtemp(dir) == NULL) return 1;
  T_RUN(test_crc32c);
  T_RUN(test_record_round_trip);
  T_RUN(test_scan_and_index);
  T_RUN(test_torn_tail);
  T_RUN(test_zero_tail_and_corruption);
  T_RUN(test_names);
  rmdir(dir);
  return t_done();
}
