/*
 * segment.c - records, their checksum, and segment files.
 *
 * A partition's log is a series of segment files named by their first
 * offset; each holds records back to back, each record with its own length
 * and CRC32C, so a reader can find where valid data ends without any other
 * metadata. That is what makes crash recovery local: a write torn by a
 * crash (or a tail of zeros that ext4 may show after one) is an incomplete
 * record or a checksum mismatch at the end of the last segment, and cutting
 * the file there leaves exactly the records that were fsynced before their
 * PUB_ACK.
 *
 * Everything here is plain blocking code with no broker state: it runs at
 * start-up (recovery) and on I/O threads, and unit tests call it directly.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busd.h"

/* Bytes read per pread during a scan; a record larger than this is read
 * whole by growing the buffer to its length (bounded by rec_bytes_max). */
#define SCAN_CHUNK_BYTES (1u << 20)

/* ------------------------------------------------------------------------ */
/* CRC32C                                                                   */
/* ------------------------------------------------------------------------ */

/* The reflected Castagnoli polynomial. */
#define CRC32C_POLY 0x82f63b78u

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static bool crc_hw;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1)));
    crc_table[i] = c;
  }
#if defined(__x86_64__)
  __builtin_cpu_init();
  crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

static uint32_t crc_sw(uint32_t c, const uint8_t *p, size_t n) {
  for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c;
}

#if defined(__x86_64__)
/* SSE4.2's crc32 instruction computes exactly CRC32C, 8 bytes a step. */
__attribute__((target("sse4.2"))) static uint32_t crc_hw8(uint32_t c, const uint8_t *p,
                                                         size_t n) {
  uint64_t c64 = c;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c64 = __builtin_ia32_crc32di(c64, v);
    p += 8;
    n -= 8;
  }
  c = (uint32_t)c64;
  while (n > 0) {
    c = __builtin_ia32_crc32qi(c, *p++);
    n--;
  }
  return c;
}
#endif

uint32_t busd_crc32c(uint32_t crc, const void *data, size_t len) {
  pthread_once(&crc_once, crc_init);
  uint32_t c = ~crc;
#if defined(__x86_64__)
  if (crc_hw) return ~crc_hw8(c, data, len);
#endif
  return ~crc_sw(c, data, len);
}

/* ------------------------------------------------------------------------ */
/* Records                                                                  */
/* ------------------------------------------------------------------------ */

static void put16(uint8_t *p, uint16_t v) { v = htole16(v); memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { v = htole32(v); memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { v = htole64(v); memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return le16toh(v); }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return le32toh(v); }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return le64toh(v); }

size_t busd_rec_size(size_t key_len, size_t hdr_len, size_t data_len) {
  return BUSD_REC_HEADER_BYTES + key_len + hdr_len + data_len;
}

void busd_rec_write(uint8_t *dst, uint64_t offset, uint64_t stored_ms,
                    const uint8_t id[BUS_ID_BYTES], bus_bytes_t key,
                    bus_bytes_t headers, bus_bytes_t payload) {
  size_t total = busd_rec_size(key.len, headers.len, payload.len);
  put32(dst, (uint32_t)total);
  put64(dst + 8, offset);
  put64(dst + 16, stored_ms);
  memcpy(dst + 24, id, BUS_ID_BYTES);
  put16(dst + 40, (uint16_t)key.len);
  put16(dst + 42, BUSD_REC_FORMAT);
  put32(dst + 44, headers.len);
  put32(dst + 48, payload.len);
  uint8_t *p = dst + BUSD_REC_HEADER_BYTES;
  if (key.len) memcpy(p, key.ptr, key.len);
  p += key.len;
  if (headers.len) memcpy(p, headers.ptr, headers.len);
  p += headers.len;
  if (payload.len) memcpy(p, payload.ptr, payload.len);
  put32(dst + 4, busd_crc32c(0, dst + 8, total - 8));
}

int64_t busd_rec_parse(const uint8_t *p, size_t avail, uint32_t rec_bytes_max,
                       bool verify, busd_rec_t *out) {
  if (avail < 8) return 0;
  uint32_t total = get32(p);
  if (total < BUSD_REC_HEADER_BYTES || total > rec_bytes_max) return BUS_E_CORRUPT;
  if (avail < total) return 0;
  uint32_t key_len = get16(p + 40), hdr_len = get32(p + 44), data_len = get32(p + 48);
  if (get16(p + 42) != BUSD_REC_FORMAT) return BUS_E_CORRUPT;
  /* The parts must add up exactly; summed in 64 bits so no overflow. */
  if ((uint64_t)BUSD_REC_HEADER_BYTES + key_len + hdr_len + data_len != total)
    return BUS_E_CORRUPT;
  if (verify && busd_crc32c(0, p + 8, total - 8) != get32(p + 4)) return BUS_E_CORRUPT;
  out->offset = get64(p + 8);
  out->stored_ms = get64(p + 16);
  memcpy(out->id, p + 24, BUS_ID_BYTES);
  const uint8_t *q = p + BUSD_REC_HEADER_BYTES;
  out->key = (bus_bytes_t){.ptr = q, .len = key_len};
  out->headers = (bus_bytes_t){.ptr = q + key_len, .len = hdr_len};
  out->payload = (bus_bytes_t){.ptr = q + key_len + hdr_len, .len = data_len};
  out->bytes = total;
  return total;
}

/* ------------------------------------------------------------------------ */
/* Scan and recovery                                                        */
/* ------------------------------------------------------------------------ */

int busd_pread_full(int fd, uint8_t *buf, size_t len, uint64_t pos, size_t *got) {
  *got = 0;
  while (*got < len) {
    ssize_t n = pread(fd, buf + *got, len - *got, (off_t)(pos + *got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) break;
    *got += (size_t)n;
  }
  return 0;
}

/* Checks one parsed record against the scan so far; false stops the scan. */
static bool scan_accept(busd_scan_t *s, const busd_rec_t *rec, uint64_t pos,
                        busd_index_t *index) {
  if (rec->offset != s->next_offset) {
    s->stop = BUS_E_CORRUPT;
    return false;
  }
  if (index != NULL && busd_index_add(index, rec->offset, pos) < 0) {
    s->stop = -ENOMEM;
    return false;
  }
  s->next_offset++;
  s->records++;
  s->valid_bytes = pos + rec->bytes;
  return true;
}

int busd_seg_scan_from(int fd, uint64_t pos, uint64_t offset, uint32_t rec_bytes_max,
                       busd_scan_t *s, busd_index_t *index) {
  memset(s, 0, sizeof *s);
  s->next_offset = offset;
  s->valid_bytes = pos;
  struct stat st;
  if (fstat(fd, &st) < 0) return -errno;
  s->file_bytes = (uint64_t)st.st_size;
  if (pos > s->file_bytes) {
    s->stop = BUS_E_CORRUPT; /* a start past the end: nothing there to read */
    return 0;
  }
  size_t cap = SCAN_CHUNK_BYTES > rec_bytes_max ? SCAN_CHUNK_BYTES : rec_bytes_max;
  uint8_t *buf = malloc(cap);
  if (buf == NULL) return -ENOMEM;
  int rc = 0;
  /* Bounded: each turn either accepts a record (advancing pos) or stops. */
  while (s->stop == 0 && pos < s->file_bytes) {
    size_t got;
    rc = busd_pread_full(fd, buf, cap, pos, &got);
    if (rc < 0) break;
    s->read_bytes += got;
    size_t used = 0;
    for (;;) {
      busd_rec_t rec;
      int64_t n = busd_rec_parse(buf + used, got - used, rec_bytes_max, true, &rec);
      if (n < 0) s->stop = BUS_E_CORRUPT;
      if (n <= 0 || !scan_accept(s, &rec, pos + used, index)) break;
      used += (size_t)n;
    }
    if (s->stop != 0) break;
    if (used == 0) {
      /* Not even one whole record fits in what is left of the file. */
      s->stop = BUS_E_TRUNCATED;
      break;
    }
    pos += used;
  }
  free(buf);
  return rc;
}

int busd_seg_scan(int fd, uint64_t base, uint32_t rec_bytes_max, busd_scan_t *s,
                  busd_index_t *index) {
  return busd_seg_scan_from(fd, 0, base, rec_bytes_max, s, index);
}

int64_t busd_seg_cut(int fd, const busd_scan_t *s) {
  if (s->valid_bytes == s->file_bytes) return 0;
  if (ftruncate(fd, (off_t)s->valid_bytes) < 0) return -errno;
  if (fdatasync(fd) < 0) return -errno;
  return (int64_t)(s->file_bytes - s->valid_bytes);
}

int64_t busd_seg_recover(int fd, uint64_t base, uint32_t rec_bytes_max, busd_scan_t *s,
                         busd_index_t *index) {
  int rc = busd_seg_scan(fd, base, rec_bytes_max, s, index);
  return rc < 0 ? rc : busd_seg_cut(fd, s);
}

/* ------------------------------------------------------------------------ */
/* Names                                                                    */
/* ------------------------------------------------------------------------ */

int busd_seg_path(char *out, size_t cap, const char *dir, uint64_t base) {
  int n = snprintf(out, cap, "%s/%020" PRIu64 ".log", dir, base);
  return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

bool busd_seg_name_parse(const char *name, uint64_t *base) {
  if (strlen(name) != 24 || strcmp(name + 20, ".log") != 0) return false;
  uint64_t v = 0;
  for (int i = 0; i < 20; i++) {
    if (name[i] < '0' || name[i] > '9') return false;
    uint64_t d = (uint64_t)(name[i] - '0');
    if (v > (UINT64_MAX - d) / 10) return false;
    v = v * 10 + d;
  }
  *base = v;
  return true;
}

int busd_fsync_dir(const char *dir) {
  int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  int rc = fsync(fd) < 0 ? -errno : 0;
  close(fd);
  return rc;
}
