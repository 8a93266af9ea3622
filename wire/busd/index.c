/*
 * index.c - a segment's sparse index, in memory and in its index file.
 *
 * Why: a segment's records carry their own lengths and checksums, so the
 * log alone says everything, but only to whoever reads all of it. Before
 * index files, start-up read every record of every segment to learn three
 * things: where each segment ends (its last offset and its valid bytes),
 * where records sit (offset -> file position, so that a consumer catching
 * up on old records can seek instead of reading the segment from its
 * start), and where a torn tail begins. Only the last one needs the last
 * segment; the other two are what the index file keeps, so that start-up
 * reads a few KiB per partition instead of the whole log.
 *
 * Life of an index file ("<base>.idx" beside "<base>.log", format in
 * busd.h):
 *
 * 1. Created by the I/O job that creates its segment (a roll): after the
 *    segment's first records are written and fdatasynced, the same job
 *    writes the header and the entries of those records. An entry is kept
 *    for the first record and then for the first record at least
 *    BUSD_INDEX_STRIDE bytes after the previous entry, so a segment of
 *    64 MiB has about a thousand entries of 16 bytes.
 * 2. Grows with its segment: each write job appends, after the records'
 *    fdatasync, the entries of its batch (planned on the loop thread by
 *    busd_idx_plan(), which mirrors busd_index_add(), so the file and the
 *    in-memory index agree). It is never synced: whatever a crash leaves
 *    of it, start-up checks it and can always rebuild it from the log. And
 *    since entries are written only after their records are durable, an
 *    entry that survives a crash points at a record that survived too.
 * 3. Sealed when its segment is closed: the job that rolls to a new segment
 *    appends to the old index an entry for the offset after the old
 *    segment's last record at the position after its last byte, "the next
 *    record would go here". An index whose last entry is at the log's size
 *    is complete. If a write of entries fails, the segment stops writing
 *    to its index (a hole would be worse than a short file); the next start
 *    finishes it from the log.
 * 4. Read at start-up (busd_seg_load), segment by segment:
 *    - closed segment, sound and sealed index: trusted; the log is not
 *      read at all, its end and size come from the seal.
 *    - last segment (or a closed one whose seal was lost): the log is read
 *      from the last entry to its end, which finds the end and cuts a torn
 *      tail as a full scan would; the entries found are appended, and a
 *      closed segment's seal.
 *    - missing (data directories from before index files) or damaged (bad
 *      header or checksum, an entry out of order or past the log's end, or
 *      a last entry that is not at a record): the whole log is scanned, as
 *      before index files, and the index written anew. Logged.
 * 5. Used by reads of old records (groups.c: gp_read): the last entry at
 *    or before the wanted offset gives where to start, at most a stride
 *    and one record before it.
 * 6. Deleted with its segment (retention: the log first, so a crash in
 *    between leaves an index without a log, which nothing reads and the
 *    next segment of that base, if ever, truncates).
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busd.h"

#define IDX_MAGIC "BUSIDX01"

_Static_assert(BUSD_INDEX_STRIDE >= 4096, "entries every few KiB at least");
_Static_assert(BUSD_IDX_ENTRY_BYTES == 16, "entry layout in busd.h");

static void put32(uint8_t *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

/* ------------------------------------------------------------------------ */
/* In memory                                                                */
/* ------------------------------------------------------------------------ */

int busd_index_reserve(busd_index_t *idx, uint32_t entries) {
  if (entries <= idx->cap) return 0;
  uint64_t *o = realloc(idx->offsets, entries * sizeof *o);
  if (o == NULL) return -ENOMEM;
  idx->offsets = o;
  uint64_t *p = realloc(idx->positions, entries * sizeof *p);
  if (p == NULL) return -ENOMEM;
  idx->positions = p;
  idx->cap = entries;
  return 0;
}

/* Appends an entry whatever the stride. An index read at start-up grows
 * here; one of a segment being appended to was given its room with its
 * segment (busd_index_reserve()), so the write path never grows it. */
static int index_push(busd_index_t *idx, uint64_t offset, uint64_t pos) {
  if (idx->len == idx->cap) {
    int rc = busd_index_reserve(idx, idx->cap ? idx->cap * 2 : 16);
    if (rc < 0) return rc;
  }
  idx->offsets[idx->len] = offset;
  idx->positions[idx->len] = pos;
  idx->len++;
  idx->last_pos = pos;
  return 0;
}

/* The stride rule, shared by busd_index_add() and busd_idx_plan(). */
static bool index_wants(bool have, uint64_t last_pos, uint64_t pos) {
  return !have || pos >= last_pos + BUSD_INDEX_STRIDE;
}

int busd_index_add(busd_index_t *idx, uint64_t offset, uint64_t pos) {
  if (!index_wants(idx->len > 0, idx->last_pos, pos)) return 0;
  return index_push(idx, offset, pos);
}

uint64_t busd_index_find(const busd_index_t *idx, uint64_t offset, uint64_t base,
                         uint64_t *entry_offset) {
  uint32_t lo = 0, hi = idx->len; /* first entry with offsets[i] > offset */
  while (lo < hi) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (idx->offsets[mid] <= offset) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  *entry_offset = lo == 0 ? base : idx->offsets[lo - 1];
  return lo == 0 ? 0 : idx->positions[lo - 1];
}

void busd_index_free(busd_index_t *idx) {
  free(idx->offsets);
  free(idx->positions);
  memset(idx, 0, sizeof *idx);
}

/* ------------------------------------------------------------------------ */
/* The file format                                                          */
/* ------------------------------------------------------------------------ */

int busd_idx_path(char *out, size_t cap, const char *dir, uint64_t base) {
  int n = snprintf(out, cap, "%s/%020" PRIu64 ".idx", dir, base);
  return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

void busd_idx_header(uint8_t out[BUSD_IDX_HEADER_BYTES], uint64_t base) {
  memcpy(out, IDX_MAGIC, 8);
  put32(out + 8, BUSD_IDX_VERSION);
  put32(out + 12, BUSD_INDEX_STRIDE);
  put64(out + 16, base);
  put32(out + 24, BUSD_IDX_ENTRY_BYTES);
  put32(out + 28, busd_crc32c(0, out, 28));
}

static uint32_t entry_crc(const uint8_t *e) {
  return busd_crc32c(busd_crc32c(0, e, 4), e + 8, 8);
}

void busd_idx_entry(uint8_t out[BUSD_IDX_ENTRY_BYTES], uint64_t base, uint64_t offset,
                    uint64_t pos) {
  /* A segment's records are at least a header each, so offsets within one
   * never come near 2^32 (a segment would be hundreds of GiB). */
  uint64_t rel = offset - base;
  if (NEVER(offset < base || rel > UINT32_MAX)) rel = UINT32_MAX;
  put32(out, (uint32_t)rel);
  put64(out + 8, pos);
  put32(out + 4, entry_crc(out));
}

static bool header_ok(const uint8_t *p, size_t len, uint64_t base) {
  if (len < BUSD_IDX_HEADER_BYTES || memcmp(p, IDX_MAGIC, 8) != 0) return false;
  if (get32(p + 28) != busd_crc32c(0, p, 28)) return false;
  /* Another stride would break the read buffer's bound (groups.c). */
  return get32(p + 8) == BUSD_IDX_VERSION && get32(p + 12) == BUSD_INDEX_STRIDE &&
         get64(p + 16) == base && get32(p + 24) == BUSD_IDX_ENTRY_BYTES;
}

static bool all_zero(const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (p[i] != 0) return false;
  return true;
}

int busd_idx_parse(const uint8_t *p, size_t len, uint64_t base, uint64_t log_bytes,
                   busd_index_t *idx) {
  if (!header_ok(p, len, base)) return BUS_E_CORRUPT;
  /* A partial entry at the end is a torn append: ignored. */
  size_t count = (len - BUSD_IDX_HEADER_BYTES) / BUSD_IDX_ENTRY_BYTES;
  const uint8_t *e = p + BUSD_IDX_HEADER_BYTES;
  for (size_t i = 0; i < count; i++, e += BUSD_IDX_ENTRY_BYTES) {
    if (get32(e + 4) != entry_crc(e)) {
      /* Zeros to the end: the size grew but the data never landed. */
      if (all_zero(e, (size_t)(p + len - e))) break;
      return BUS_E_CORRUPT;
    }
    uint64_t offset = base + get32(e), pos = get64(e + 8);
    if (pos > log_bytes) return BUS_E_CORRUPT;
    if (idx->len == 0 && (offset != base || pos != 0)) return BUS_E_CORRUPT;
    if (idx->len > 0 && offset <= idx->offsets[idx->len - 1]) return BUS_E_CORRUPT;
    if (idx->len > 0 && pos <= idx->last_pos) return BUS_E_CORRUPT;
    if (index_push(idx, offset, pos) < 0) return -ENOMEM;
  }
  return (int)idx->len;
}

uint32_t busd_idx_plan(const busd_index_t *idx, uint64_t base, bool header, uint64_t first,
                       uint64_t file_pos, const uint32_t *pos, uint32_t count, uint8_t *out) {
  uint32_t len = 0;
  if (header) {
    busd_idx_header(out, base);
    len = BUSD_IDX_HEADER_BYTES;
  }
  bool have = idx->len > 0;
  uint64_t last = idx->last_pos;
  for (uint32_t i = 0; i < count; i++) {
    uint64_t at = file_pos + pos[i];
    if (!index_wants(have, last, at)) continue;
    busd_idx_entry(out + len, base, first + i, at);
    len += BUSD_IDX_ENTRY_BYTES;
    have = true;
    last = at;
  }
  return len;
}

/* ------------------------------------------------------------------------ */
/* Start-up                                                                 */
/* ------------------------------------------------------------------------ */

static int write_full(int fd, const uint8_t *p, size_t len, uint64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, p + done, len - done, (off_t)(pos + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return -EIO;
    done += (size_t)n;
  }
  return 0;
}

/* Reads the index file whole into a new buffer; *fd stays open (O_RDWR)
 * for the caller. Returns 0 (buffer NULL when there is no file), -errno,
 * or BUS_E_CORRUPT when it is larger than any index of this log. */
static int idx_read(const char *path, uint64_t log_bytes, int *fd, uint8_t **out,
                    size_t *len) {
  *out = NULL;
  *len = 0;
  *fd = open(path, O_RDWR | O_CLOEXEC);
  if (*fd < 0) return errno == ENOENT ? 0 : -errno;
  struct stat st;
  if (fstat(*fd, &st) < 0) return -errno;
  /* An entry per stride and one per record under a stride, with room for
   * a seal and a torn append: any longer is not this log's index. */
  uint64_t max = BUSD_IDX_HEADER_BYTES +
                 (log_bytes / BUSD_INDEX_STRIDE + 3) * (uint64_t)BUSD_IDX_ENTRY_BYTES;
  if ((uint64_t)st.st_size > max) return BUS_E_CORRUPT;
  *out = malloc((size_t)st.st_size + 1);
  if (*out == NULL) return -ENOMEM;
  return busd_pread_full(*fd, *out, (size_t)st.st_size, 0, len);
}

/* Writes entries idx[from..] and, for a closed segment, the seal, at
 * `at` in the index file (after its last sound entry: a torn append past
 * it is cut first). Returns 0 or -errno. */
static int idx_append(busd_seg_loaded_t *l, uint64_t base, uint32_t from, bool seal,
                      uint64_t at) {
  uint32_t n = l->index.len - from + (seal ? 1u : 0u);
  uint8_t *buf = malloc((size_t)n * BUSD_IDX_ENTRY_BYTES + 1);
  if (buf == NULL) return -ENOMEM;
  uint32_t len = 0;
  for (uint32_t i = from; i < l->index.len; i++, len += BUSD_IDX_ENTRY_BYTES)
    busd_idx_entry(buf + len, base, l->index.offsets[i], l->index.positions[i]);
  /* A seal at an entry's position would repeat it (an empty tail). */
  if (seal && (l->index.len == 0 || l->index.last_pos < l->scan.valid_bytes)) {
    busd_idx_entry(buf + len, base, l->scan.next_offset, l->scan.valid_bytes);
    len += BUSD_IDX_ENTRY_BYTES;
  }
  int rc = ftruncate(l->idx_fd, (off_t)at) < 0 ? -errno : 0;
  if (rc == 0) rc = write_full(l->idx_fd, buf, len, at);
  free(buf);
  if (rc == 0) l->idx_bytes = at + len;
  return rc;
}

/* Scans the whole log (cutting a torn tail) and writes the index anew. */
static int load_rebuild(int fd, const char *idx_path, uint64_t base, bool last,
                        uint32_t rec_bytes_max, busd_seg_loaded_t *l) {
  busd_index_free(&l->index);
  int64_t cut = busd_seg_recover(fd, base, rec_bytes_max, &l->scan, &l->index);
  if (cut < 0) return (int)cut;
  l->cut = cut;
  if (l->idx_fd >= 0) close(l->idx_fd);
  l->idx_fd = open(idx_path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
  if (l->idx_fd < 0) {
    l->idx_err = -errno;
    return 0;
  }
  uint8_t header[BUSD_IDX_HEADER_BYTES];
  busd_idx_header(header, base);
  int rc = write_full(l->idx_fd, header, sizeof header, 0);
  if (rc == 0) rc = idx_append(l, base, 0, !last, BUSD_IDX_HEADER_BYTES);
  l->idx_err = rc;
  return 0;
}

/* Reads the log from the index's last entry to the end, cutting a torn
 * tail. Returns 0, -errno, or BUS_E_CORRUPT when the last entry is not at
 * a record (the index is then rebuilt). */
static int load_tail(int fd, uint64_t base, bool last, uint32_t rec_bytes_max,
                     busd_seg_loaded_t *l, uint64_t idx_end) {
  uint32_t had = l->index.len;
  uint64_t pos = 0, offset = base;
  if (had > 0) {
    pos = l->index.positions[had - 1];
    offset = l->index.offsets[had - 1];
  }
  busd_scan_t *s = &l->scan;
  int rc = busd_seg_scan_from(fd, pos, offset, rec_bytes_max, s, &l->index);
  if (rc < 0) return rc;
  /* Entries point at durable records only: one that points at anything
   * else says the index does not describe this log. */
  if (had > 0 && s->records == 0 && pos < s->file_bytes) return BUS_E_CORRUPT;
  int64_t cut = busd_seg_cut(fd, s);
  if (cut < 0) return (int)cut;
  l->cut = cut;
  s->records = s->next_offset - base;
  l->idx_err = idx_append(l, base, had, !last, idx_end);
  return 0;
}

int busd_seg_load(int fd, const char *idx_path, uint64_t base, bool last,
                  uint32_t rec_bytes_max, busd_seg_loaded_t *out) {
  memset(out, 0, sizeof *out);
  out->idx_fd = -1;
  struct stat st;
  if (fstat(fd, &st) < 0) return -errno;
  uint64_t log_bytes = (uint64_t)st.st_size;
  uint8_t *buf;
  size_t len;
  int rc = idx_read(idx_path, log_bytes, &out->idx_fd, &buf, &len);
  bool exists = out->idx_fd >= 0;
  if (rc == 0 && buf != NULL) rc = busd_idx_parse(buf, len, base, log_bytes, &out->index);
  free(buf);
  if (rc == -ENOMEM) goto fail;
  /* Any other trouble reading it (unreadable, too long, unsound) is
   * mended the same way: a rebuild. */
  bool sound = rc >= 0 && exists;
  if (sound && !last && out->index.len > 0 && out->index.last_pos == log_bytes) {
    out->how = BUSD_IDX_TRUSTED;
    out->scan.file_bytes = out->scan.valid_bytes = log_bytes;
    out->scan.next_offset = out->index.offsets[out->index.len - 1];
    out->scan.records = out->scan.next_offset - base;
    out->idx_bytes = BUSD_IDX_HEADER_BYTES + (uint64_t)out->index.len * BUSD_IDX_ENTRY_BYTES;
    close(out->idx_fd);
    out->idx_fd = -1;
    return 0;
  }
  if (sound) {
    out->how = BUSD_IDX_TAIL;
    uint64_t idx_end = BUSD_IDX_HEADER_BYTES + (uint64_t)out->index.len * BUSD_IDX_ENTRY_BYTES;
    rc = load_tail(fd, base, last, rec_bytes_max, out, idx_end);
    if (rc < 0 && rc != BUS_E_CORRUPT) goto fail;
  }
  if (!sound || rc == BUS_E_CORRUPT) {
    out->how = exists ? BUSD_IDX_DAMAGED : BUSD_IDX_MISSING;
    rc = load_rebuild(fd, idx_path, base, last, rec_bytes_max, out);
    if (rc < 0) goto fail;
  }
  if (!last && out->idx_fd >= 0) {
    close(out->idx_fd); /* sealed: nothing more goes there */
    out->idx_fd = -1;
  }
  return 0;
fail:
  busd_index_free(&out->index);
  if (out->idx_fd >= 0) close(out->idx_fd);
  out->idx_fd = -1;
  return rc;
}
