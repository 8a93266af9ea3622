/*
 * test_bus_index.c - busd's segment index files (index.c): the format
 * (header, entries, seal) read back, a missing index rebuilt from the log,
 * a sealed one trusted without reading the log, the last segment read from
 * its last entry and its torn tail cut, every kind of damage detected and
 * rebuilt, a torn append of the index itself tolerated, the write path's
 * plan matching the in-memory index, and lookups through a loaded index.
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
#define COUNT 200
#define BASE 5000u

static char dir[] = "/tmp/test_bus_index.XXXXXX";
static char log_path[256];
static char idx_path[256];
static uint64_t ends[COUNT]; /* ends[i]: bytes after record i */

static size_t put_rec(uint8_t *dst, uint64_t off, size_t size) {
  static uint8_t payload[70000];
  for (size_t i = 0; i < size; i++) payload[i] = (uint8_t)(off + i);
  uint8_t id[16];
  memset(id, (int)off, sizeof id);
  bus_bytes_t data = {.ptr = payload, .len = (uint32_t)size};
  bus_bytes_t key = {.ptr = (const uint8_t *)"k", .len = 1};
  bus_bytes_t none = {0};
  busd_rec_write(dst, off, 1700000000000ull + off, id, key, none, data);
  return busd_rec_size(1, 0, size);
}

/* A fresh segment of COUNT records (sizes vary, a few over a stride) and
 * no index file. Returns its fd. */
static int make_segment(void) {
  unlink(idx_path);
  int fd = open(log_path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
  if (fd < 0) return -1;
  static uint8_t buf[80000];
  uint64_t pos = 0;
  for (int i = 0; i < COUNT; i++) {
    size_t size = (size_t)(i % 11 == 5 ? 66000 : 100 + (i * 53) % 3000);
    size_t n = put_rec(buf, BASE + (uint64_t)i, size);
    if (write(fd, buf, n) != (ssize_t)n) return -1;
    pos += n;
    ends[i] = pos;
  }
  return fd;
}

static busd_seg_loaded_t load(int fd, bool last) {
  busd_seg_loaded_t l;
  int rc = busd_seg_load(fd, idx_path, BASE, last, REC_MAX, &l);
  if (rc < 0) memset(&l, 0, sizeof l);
  return l;
}

static void unload(busd_seg_loaded_t *l) {
  busd_index_free(&l->index);
  if (l->idx_fd >= 0) close(l->idx_fd);
}

static off_t size_of(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Reads the index file whole. */
static size_t read_idx(uint8_t *buf, size_t cap) {
  int fd = open(idx_path, O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, cap);
  close(fd);
  return n < 0 ? 0 : (size_t)n;
}

static void write_idx(const uint8_t *buf, size_t len) {
  int fd = open(idx_path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
  if (fd < 0) return;
  if (write(fd, buf, len) != (ssize_t)len) t_checks_failed++;
  close(fd);
}

static bool same_index(const busd_index_t *a, const busd_index_t *b) {
  if (a->len != b->len) return false;
  for (uint32_t i = 0; i < a->len; i++)
    if (a->offsets[i] != b->offsets[i] || a->positions[i] != b->positions[i]) return false;
  return true;
}

static void test_missing_then_trusted(void) {
  int fd = make_segment();
  T_REQUIRE(fd >= 0);
  busd_scan_t full;
  busd_index_t want = {0};
  T_REQUIRE(busd_seg_scan(fd, BASE, REC_MAX, &full, &want) == 0);
  /* Closed segment, no index file: read whole, index written and sealed. */
  busd_seg_loaded_t l = load(fd, false);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_MISSING);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  T_CHECK(l.scan.valid_bytes == ends[COUNT - 1]);
  T_CHECK(l.scan.read_bytes >= ends[COUNT - 1]);
  T_CHECK(same_index(&l.index, &want));
  T_CHECK_EQ_INT(l.idx_fd, -1);
  T_CHECK_EQ_INT(l.idx_err, 0);
  /* Header, one entry per record the stride kept, and the seal. */
  off_t expect = BUSD_IDX_HEADER_BYTES + (off_t)(want.len + 1) * BUSD_IDX_ENTRY_BYTES;
  T_CHECK_EQ_INT(size_of(idx_path), expect);
  T_CHECK_EQ_INT(l.idx_bytes, expect);
  unload(&l);
  /* Now trusted: nothing of the log read, the same end and entries. */
  l = load(fd, false);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TRUSTED);
  T_CHECK_EQ_INT(l.scan.read_bytes, 0);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  T_CHECK(l.scan.valid_bytes == ends[COUNT - 1]);
  T_CHECK_EQ_INT(l.scan.records, COUNT);
  T_CHECK_EQ_INT(l.index.len, want.len + 1); /* the seal is an entry too */
  T_CHECK(l.index.positions[l.index.len - 1] == ends[COUNT - 1]);
  unload(&l);
  /* The same file as the last segment: read from the seal, which is at
   * the end, so nothing; the index stays open for appends. */
  l = load(fd, true);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TAIL);
  T_CHECK_EQ_INT(l.scan.read_bytes, 0);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  T_CHECK(l.idx_fd >= 0);
  T_CHECK_EQ_INT(size_of(idx_path), expect);
  unload(&l);
  busd_index_free(&want);
  close(fd);
}

static void test_last_segment_tail_and_torn(void) {
  int fd = make_segment();
  T_REQUIRE(fd >= 0);
  busd_seg_loaded_t l = load(fd, true); /* missing: rebuilt, not sealed */
  T_CHECK_EQ_INT(l.how, BUSD_IDX_MISSING);
  T_CHECK(l.idx_fd >= 0);
  uint32_t entries = l.index.len;
  unload(&l);
  T_CHECK_EQ_INT(size_of(idx_path),
                 BUSD_IDX_HEADER_BYTES + (off_t)entries * BUSD_IDX_ENTRY_BYTES);
  /* Read again: only from the last entry, a stride and a record at most. */
  l = load(fd, true);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TAIL);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  T_CHECK(l.scan.read_bytes > 0);
  T_CHECK(l.scan.read_bytes <= BUSD_INDEX_STRIDE + 70000);
  T_CHECK_EQ_INT(l.cut, 0);
  unload(&l);
  /* A torn last record: cut, the rest kept, the index still sound. */
  T_REQUIRE(ftruncate(fd, (off_t)ends[COUNT - 1] - 7) == 0);
  l = load(fd, true);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TAIL);
  T_CHECK(l.scan.next_offset == BASE + COUNT - 1);
  T_CHECK(l.scan.valid_bytes == ends[COUNT - 2]);
  T_CHECK(l.cut == (int64_t)(ends[COUNT - 1] - 7 - ends[COUNT - 2]));
  T_CHECK_EQ_INT(size_of(log_path), ends[COUNT - 2]);
  unload(&l);
  /* A closed segment whose seal was lost (the roll's index write did not
   * land): read from the last entry, then sealed; trusted next time. */
  l = load(fd, false);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TAIL);
  T_CHECK(l.scan.next_offset == BASE + COUNT - 1);
  unload(&l);
  l = load(fd, false);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TRUSTED);
  T_CHECK(l.scan.next_offset == BASE + COUNT - 1);
  T_CHECK(l.scan.valid_bytes == ends[COUNT - 2]);
  unload(&l);
  close(fd);
}

/* Damages the sound, sealed index with `damage`, then loads: it must be
 * rebuilt (whole log read) and trusted again afterwards. */
static void damaged_case(const char *what, void (*damage)(uint8_t *buf, size_t *len)) {
  int fd = make_segment();
  T_REQUIRE(fd >= 0);
  busd_seg_loaded_t l = load(fd, false);
  unload(&l);
  static uint8_t buf[1 << 16];
  size_t len = read_idx(buf, sizeof buf);
  T_REQUIRE(len > BUSD_IDX_HEADER_BYTES + 3 * BUSD_IDX_ENTRY_BYTES);
  damage(buf, &len);
  write_idx(buf, len);
  l = load(fd, false);
  if (l.how != BUSD_IDX_DAMAGED) fprintf(stderr, "not detected: %s\n", what);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_DAMAGED);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  T_CHECK(l.scan.read_bytes >= ends[COUNT - 1]);
  unload(&l);
  l = load(fd, false);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TRUSTED);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  unload(&l);
  close(fd);
}

#define ENTRY(i) (buf + BUSD_IDX_HEADER_BYTES + (i) * BUSD_IDX_ENTRY_BYTES)

static void bad_magic(uint8_t *buf, size_t *len) { buf[0] ^= 1; }
static void bad_header_crc(uint8_t *buf, size_t *len) { buf[29] ^= 1; }
static void wrong_base(uint8_t *buf, size_t *len) { busd_idx_header(buf, BASE + 1); }
static void short_header(uint8_t *buf, size_t *len) { *len = 20; }
static void bad_entry_crc(uint8_t *buf, size_t *len) { ENTRY(1)[9] ^= 0x40; }
static void out_of_order(uint8_t *buf, size_t *len) {
  uint8_t tmp[BUSD_IDX_ENTRY_BYTES];
  memcpy(tmp, ENTRY(1), sizeof tmp);
  memcpy(ENTRY(1), ENTRY(2), sizeof tmp);
  memcpy(ENTRY(2), tmp, sizeof tmp);
}
static void past_the_end(uint8_t *buf, size_t *len) {
  /* A seal further than the log reaches. */
  size_t last = (*len - BUSD_IDX_HEADER_BYTES) / BUSD_IDX_ENTRY_BYTES - 1;
  busd_idx_entry(ENTRY(last), BASE, BASE + COUNT, ends[COUNT - 1] + 1);
}
static void not_at_a_record(uint8_t *buf, size_t *len) {
  /* Sound checksums, but the last entry before the seal points 3 bytes
   * into a record, and the seal is gone: the read from there fails. */
  size_t last = (*len - BUSD_IDX_HEADER_BYTES) / BUSD_IDX_ENTRY_BYTES - 1;
  busd_idx_entry(ENTRY(last), BASE, BASE + COUNT - 1, ends[COUNT - 2] + 3);
}
static void garbage_tail(uint8_t *buf, size_t *len) {
  memset(ENTRY(2), 0xab, BUSD_IDX_ENTRY_BYTES);
}

static void test_damaged(void) {
  damaged_case("magic", bad_magic);
  damaged_case("header checksum", bad_header_crc);
  damaged_case("base", wrong_base);
  damaged_case("short header", short_header);
  damaged_case("entry checksum", bad_entry_crc);
  damaged_case("entries out of order", out_of_order);
  damaged_case("position past the log", past_the_end);
  damaged_case("entry not at a record", not_at_a_record);
  damaged_case("garbage entry", garbage_tail);
}

/* A torn append of the index (a partial entry, or zeros where a crash
 * left the size grown and the data unwritten) is the end of the entries,
 * not damage: the segment is read from the last whole entry. */
static void test_torn_index(void) {
  int fd = make_segment();
  T_REQUIRE(fd >= 0);
  busd_seg_loaded_t l = load(fd, true);
  unload(&l);
  static uint8_t buf[1 << 16];
  size_t len = read_idx(buf, sizeof buf);
  T_REQUIRE(len > BUSD_IDX_HEADER_BYTES + 3 * BUSD_IDX_ENTRY_BYTES);
  write_idx(buf, len - 5);
  l = load(fd, true);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TAIL);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  T_CHECK_EQ_INT(size_of(idx_path), len); /* the lost entry written again */
  unload(&l);
  memset(buf + len, 0, 3 * BUSD_IDX_ENTRY_BYTES);
  write_idx(buf, len + 3 * BUSD_IDX_ENTRY_BYTES);
  l = load(fd, false);
  T_CHECK_EQ_INT(l.how, BUSD_IDX_TAIL);
  T_CHECK(l.scan.next_offset == BASE + COUNT);
  T_CHECK_EQ_INT(size_of(idx_path), len + BUSD_IDX_ENTRY_BYTES); /* zeros cut, sealed */
  unload(&l);
  close(fd);
}

/* What the write path plans for a batch is exactly what busd_index_add()
 * then keeps, whatever the batch boundaries. */
static void test_plan_matches_add(void) {
  static uint8_t out[BUSD_IDX_PLAN_BYTES(COUNT * 70000u)];
  busd_index_t mem = {0};
  uint32_t pos[COUNT];
  uint8_t file[1 << 16];
  size_t file_len = 0;
  int bad = 0;
  for (int first = 0; first < COUNT;) {
    int n = 1 + (first * 7) % 13;
    if (first + n > COUNT) n = COUNT - first;
    uint64_t file_pos = first == 0 ? 0 : ends[first - 1];
    for (int i = 0; i < n; i++)
      pos[i] = (uint32_t)((first + i == 0 ? 0 : ends[first + i - 1]) - file_pos);
    uint32_t len = busd_idx_plan(&mem, BASE, first == 0, BASE + (uint64_t)first, file_pos, pos,
                                 (uint32_t)n, out);
    uint64_t span = ends[first + n - 1] - file_pos;
    if (len > BUSD_IDX_PLAN_BYTES(span)) bad++;
    uint32_t before = mem.len;
    for (int i = 0; i < n; i++)
      busd_index_add(&mem, BASE + (uint64_t)(first + i), file_pos + pos[i]);
    uint32_t hdr = first == 0 ? BUSD_IDX_HEADER_BYTES : 0;
    if ((len - hdr) / BUSD_IDX_ENTRY_BYTES != mem.len - before) bad++;
    memcpy(file + file_len, out, len);
    file_len += len;
    first += n;
  }
  T_CHECK_EQ_INT(bad, 0);
  /* The concatenated plans parse back to the in-memory index. */
  busd_index_t back = {0};
  T_CHECK_EQ_INT(busd_idx_parse(file, file_len, BASE, ends[COUNT - 1], &back), mem.len);
  T_CHECK(same_index(&back, &mem));
  busd_index_free(&back);
  busd_index_free(&mem);
}

/* Lookups through a trusted index land on a record boundary at or before
 * the wanted record, less than a stride and a record before it, and a read
 * from there reaches it. */
static void test_lookup(void) {
  int fd = make_segment();
  T_REQUIRE(fd >= 0);
  busd_seg_loaded_t l = load(fd, false);
  unload(&l);
  l = load(fd, false);
  T_REQUIRE(l.how == BUSD_IDX_TRUSTED);
  static uint8_t buf[2 * REC_MAX + BUSD_INDEX_STRIDE];
  int bad = 0;
  for (int i = 0; i < COUNT; i++) {
    uint64_t want = BASE + (uint64_t)i, at;
    uint64_t start = i == 0 ? 0 : ends[i - 1];
    uint64_t pos = busd_index_find(&l.index, want, BASE, &at);
    if (pos > start || start - pos > BUSD_INDEX_STRIDE + 70000) bad++;
    size_t got;
    if (busd_pread_full(fd, buf, sizeof buf, pos, &got) < 0) bad++;
    size_t p = 0;
    busd_rec_t rec;
    rec.offset = at;
    /* Bounded by the records in the buffer. */
    for (uint64_t off = at; off <= want; off++) {
      int64_t n = busd_rec_parse(buf + p, got - p, REC_MAX, true, &rec);
      if (n <= 0 || rec.offset != off) {
        bad++;
        break;
      }
      p += (size_t)n;
    }
    if (rec.offset != want) bad++;
  }
  T_CHECK_EQ_INT(bad, 0);
  unload(&l);
  close(fd);
}

int main(void) {
  if (mkdtemp(dir) == NULL) return 1;
  busd_seg_path(log_path, sizeof log_path, dir, BASE);
  busd_idx_path(idx_path, sizeof idx_path, dir, BASE);
  T_RUN(test_missing_then_trusted);
  T_RUN(test_last_segment_tail_and_torn);
  T_RUN(test_damaged);
  T_RUN(test_torn_index);
  T_RUN(test_plan_matches_add);
  T_RUN(test_lookup);
  unlink(log_path);
  unlink(idx_path);
  rmdir(dir);
  return t_done();
}
