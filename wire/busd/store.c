/*
 * store.c - the data directory: topics, start-up recovery, committed offsets.
 *
 *   $BUSD_DATA_DIR/topics/<topic>/meta          "partitions=N", written last
 *   $BUSD_DATA_DIR/topics/<topic>/<p>/<base>.log segments of partition p
 *   $BUSD_DATA_DIR/topics/<topic>/<p>/<base>.idx its sparse index (index.c)
 *   $BUSD_DATA_DIR/topics/<topic>/offsets       committed offsets, all groups
 *
 * Start-up (busd_store_open) runs on the main thread before the loop, so it
 * may block: each closed segment is known from its index file alone; the
 * last segment of each partition is read from its last index entry to its
 * end, checking each record's checksum and offset, and cut where that read
 * stops (a torn tail); a segment whose index is missing or damaged is read
 * whole and its index rebuilt. Then the groups' committed offsets are
 * loaded. At run time, new topics are created and offsets stored through
 * I/O jobs.
 *
 * The offsets file, little-endian, replaced atomically (tmp, fsync, rename):
 *   "BUSOFFS2" | u32 count | count x (u16 name length, name, u32 partition,
 *   u64 committed, u32 failed, failed x (u64 offset, u16 failures)) |
 *   u32 crc32c of everything before it
 * where the failed entries are the offsets of the window whose deliveries
 * have failed so far (busd_slot_t.failures), so that the attempt count of
 * an event survives a restart. "BUSOFFS1" files (no failure counts) are
 * still read.
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busd.h"

#define OFFSETS_MAGIC_V1 "BUSOFFS1"
#define OFFSETS_MAGIC "BUSOFFS2"
#define OFFSETS_BYTES_MAX (64u << 20)
#define SEGMENTS_PER_PARTITION_MAX 1000000u

/* ------------------------------------------------------------------------ */
/* Topic table                                                              */
/* ------------------------------------------------------------------------ */

static uint64_t fnv1a(const uint8_t *p, size_t n) {
  uint64_t h = 0xcbf29ce484222325u;
  for (size_t i = 0; i < n; i++) {
    h ^= p[i];
    h *= 0x100000001b3u;
  }
  return h;
}

/* murmur3's finaliser: spreads FNV's weak low bits before a modulo. */
static uint64_t mix64(uint64_t h) {
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdu;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53u;
  h ^= h >> 33;
  return h;
}

uint32_t busd_topic_partition(const busd_topic_t *t, bus_bytes_t key,
                              const uint8_t id[BUS_ID_BYTES]) {
  uint64_t h = key.len > 0 ? fnv1a(key.ptr, key.len) : fnv1a(id, BUS_ID_BYTES);
  return (uint32_t)(mix64(h) % t->parts_count);
}

busd_topic_t *busd_topic_find(busd_t *b, const uint8_t *name, uint32_t len) {
  uint32_t i = (uint32_t)fnv1a(name, len) & b->topic_hash_mask;
  /* Bounded: the table is at least twice the topics, so a free slot ends
   * every probe sequence. */
  for (uint32_t n = 0; n <= b->topic_hash_mask; n++) {
    busd_topic_t *t = b->topic_hash[i];
    if (t == NULL) return NULL;
    if (t->name_len == len && memcmp(t->name, name, len) == 0) return t;
    i = (i + 1) & b->topic_hash_mask;
  }
  return NULL;
}

static void topic_hash_insert(busd_t *b, busd_topic_t *t) {
  uint32_t i = (uint32_t)fnv1a((const uint8_t *)t->name, t->name_len) & b->topic_hash_mask;
  while (b->topic_hash[i] != NULL) i = (i + 1) & b->topic_hash_mask;
  b->topic_hash[i] = t;
}

/* Takes a topic slot and sets up its partitions (no I/O). */
static busd_topic_t *topic_add(busd_t *b, const uint8_t *name, uint32_t len,
                               uint32_t parts_count, busd_topic_state_t state) {
  if (b->topics_count == b->cfg.topics_max || len > BUSD_TOPIC_BYTES_MAX) return NULL;
  busd_topic_t *t = &b->topics[b->topics_count];
  memset(t, 0, sizeof *t);
  t->b = b;
  memcpy(t->name, name, len);
  t->name[len] = '\0';
  t->name_len = len;
  int n = snprintf(t->dir, sizeof t->dir, "%s/topics/%s", b->cfg.data_dir, t->name);
  if (n < 0 || (size_t)n >= sizeof t->dir) return NULL;
  t->state = state;
  t->parts = calloc(parts_count, sizeof *t->parts);
  if (t->parts == NULL) return NULL;
  t->parts_count = parts_count;
  bus_buf_init(&t->snap_buf, OFFSETS_BYTES_MAX);
  t->snap_gen_next = 1; /* 0 is "none yet": nothing waits for it */
  for (uint32_t p = 0; p < parts_count; p++) {
    char dir[PATH_MAX + 16];
    snprintf(dir, sizeof dir, "%s/%u", t->dir, p);
    if (busd_part_init(&t->parts[p], b, t, p, dir) < 0) {
      for (uint32_t k = 0; k <= p; k++) busd_part_deinit(&t->parts[k]);
      free(t->parts);
      return NULL;
    }
  }
  b->topics_count++;
  topic_hash_insert(b, t);
  return t;
}

static void mktopic_submit(busd_topic_t *t);

static void mktopic_done(busd_job_t *job) {
  busd_topic_t *t = job->ctx;
  if (job->result < 0) {
    RT_ERROR("cannot create topic", RT_LF_STR("topic", t->name),
             RT_LF_STR("error", rt_strerror(job->result)));
    t->state = BUSD_TOPIC_FAILED;
    for (uint32_t p = 0; p < t->parts_count; p++) busd_part_fail(&t->parts[p]);
    return;
  }
  t->state = BUSD_TOPIC_READY;
  RT_INFO("topic created", RT_LF_STR("topic", t->name), RT_LF_INT("partitions", t->parts_count));
  for (uint32_t p = 0; p < t->parts_count; p++) busd_part_kick(&t->parts[p]);
}

static void mktopic_submit(busd_topic_t *t) {
  busd_job_t *job = &t->mk_job;
  job->kind = BUSD_JOB_MKTOPIC;
  job->done = mktopic_done;
  job->ctx = t;
  job->partitions = t->parts_count;
  snprintf(job->path, sizeof job->path, "%s", t->dir);
  busd_io_submit(&t->b->io, job); /* on failure the tick tries again */
}

busd_topic_t *busd_topic_get(busd_t *b, const uint8_t *name, uint32_t len) {
  busd_topic_t *t = busd_topic_find(b, name, len);
  if (t != NULL) return t;
  t = topic_add(b, name, len, b->cfg.partitions, BUSD_TOPIC_CREATING);
  if (t == NULL) {
    RT_WARN("cannot add topic (topics_max reached or no memory)",
            RT_LF_INT("topics_max", b->cfg.topics_max));
    return NULL;
  }
  mktopic_submit(t);
  return t;
}

/* ------------------------------------------------------------------------ */
/* Start-up: partitions                                                     */
/* ------------------------------------------------------------------------ */

static int u64_cmp(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The base offsets of a partition's segments, sorted. */
static int list_segments(const char *dir, uint64_t **out, uint32_t *count) {
  *out = NULL;
  *count = 0;
  DIR *d = opendir(dir);
  if (d == NULL) return errno == ENOENT ? 0 : -errno;
  uint32_t cap = 0;
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d)) != NULL && rc == 0) {
    uint64_t base;
    if (!busd_seg_name_parse(e->d_name, &base)) continue;
    if (*count == SEGMENTS_PER_PARTITION_MAX) {
      rc = -EMFILE;
    } else if (*count == cap) {
      cap = cap ? cap * 2 : 16;
      uint64_t *p = realloc(*out, cap * sizeof *p);
      if (p == NULL) {
        rc = -ENOMEM;
      } else {
        *out = p;
      }
    }
    if (rc == 0) (*out)[(*count)++] = base;
  }
  closedir(d);
  if (rc == 0 && *count > 1) qsort(*out, *count, sizeof **out, u64_cmp);
  return rc;
}

/* Logs how a segment's index served at start-up, and counts it. */
static void load_report(busd_t *b, const char *path, const busd_seg_loaded_t *l) {
  busd_stats_t *st = &b->stats;
  st->start_read_bytes += l->scan.read_bytes;
  if (l->how == BUSD_IDX_TRUSTED) st->segs_trusted++;
  if (l->how == BUSD_IDX_TAIL) st->segs_tail++;
  if (l->how == BUSD_IDX_MISSING || l->how == BUSD_IDX_DAMAGED) {
    st->idx_rebuilt++;
    RT_WARN(l->how == BUSD_IDX_MISSING ? "segment index missing: rebuilt from the log"
                                       : "segment index damaged: rebuilt from the log",
            RT_LF_STR("path", path), RT_LF_INT("records", (int64_t)l->scan.records),
            RT_LF_INT("bytes_read", (int64_t)l->scan.read_bytes));
  }
  if (l->idx_err < 0) {
    st->idx_errors++;
    RT_WARN("cannot write segment index: the next start reads the log again",
            RT_LF_STR("path", path), RT_LF_STR("error", rt_strerror(l->idx_err)));
  }
  if (l->cut > 0) {
    st->torn_bytes_cut += (uint64_t)l->cut;
    RT_WARN("torn tail cut", RT_LF_STR("path", path), RT_LF_INT("bytes_cut", l->cut),
            RT_LF_INT("records_kept", (int64_t)l->scan.records),
            RT_LF_STR("reason", l->scan.stop == BUS_E_TRUNCATED ? "incomplete record at the end"
                                                                : "bad length, checksum or offset"));
  }
}

/* Opens and recovers one segment through its index file (index.c), then
 * hands it to the partition. `last`: the one appended to. */
static int load_segment(busd_part_t *part, uint64_t base, bool last) {
  busd_t *b = part->b;
  char path[PATH_MAX + 32], idx_path[PATH_MAX + 32];
  if (busd_seg_path(path, sizeof path, part->dir, base) < 0) return -ENAMETOOLONG;
  if (busd_idx_path(idx_path, sizeof idx_path, part->dir, base) < 0) return -ENAMETOOLONG;
  if (part->segs_tail != NULL && base < part->segs_tail->end) {
    RT_ERROR("segment overlaps the previous one: skipped", RT_LF_STR("path", path));
    return 0;
  }
  int fd = open(path, O_RDWR | O_CLOEXEC);
  if (fd < 0) return -errno;
  struct stat st;
  busd_seg_loaded_t loaded;
  int rc = fstat(fd, &st) < 0 ? -errno
                              : busd_seg_load(fd, idx_path, base, last, b->rec_bytes_max, &loaded);
  if (rc < 0) {
    close(fd);
    return rc;
  }
  load_report(b, path, &loaded);
  /* An index that failed half-way is not appended to. */
  if (loaded.idx_err < 0 && loaded.idx_fd >= 0) {
    close(loaded.idx_fd);
    loaded.idx_fd = -1;
  }
  uint64_t mtime_ms = (uint64_t)st.st_mtim.tv_sec * 1000u + (uint64_t)st.st_mtim.tv_nsec / 1000000u;
  rc = busd_part_add_segment(part, fd, base, &loaded, mtime_ms, last);
  if (rc < 0) {
    busd_index_free(&loaded.index);
    if (loaded.idx_fd >= 0) close(loaded.idx_fd);
    close(fd);
  }
  return rc;
}

static int load_partition(busd_part_t *part) {
  uint64_t *bases;
  uint32_t count;
  int rc = list_segments(part->dir, &bases, &count);
  for (uint32_t i = 0; i < count && rc == 0; i++) rc = load_segment(part, bases[i], i + 1 == count);
  free(bases);
  if (rc < 0) {
    RT_ERROR("cannot load partition", RT_LF_STR("dir", part->dir),
             RT_LF_STR("error", rt_strerror(rc)));
  }
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Start-up: offsets                                                        */
/* ------------------------------------------------------------------------ */

static uint32_t rd32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return le32toh(v);
}

static uint64_t rd64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return le64toh(v);
}

static int read_file(const char *path, uint8_t **out, size_t *len) {
  *out = NULL;
  *len = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno == ENOENT ? 0 : -errno;
  struct stat st;
  int rc = fstat(fd, &st) < 0 ? -errno : 0;
  if (rc == 0 && (st.st_size < 0 || (uint64_t)st.st_size > OFFSETS_BYTES_MAX)) rc = -EFBIG;
  uint8_t *buf = rc == 0 ? malloc((size_t)st.st_size + 1) : NULL;
  if (rc == 0 && buf == NULL) rc = -ENOMEM;
  size_t got = 0;
  while (rc == 0 && got < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) rc = n < 0 ? -errno : -EIO;
    if (n > 0) got += (size_t)n;
  }
  close(fd);
  if (rc < 0) {
    free(buf);
    return rc;
  }
  *out = buf;
  *len = got;
  return 0;
}

static uint16_t rd16(const uint8_t *p) {
  uint16_t v;
  memcpy(&v, p, 2);
  return le16toh(v);
}

/* Reads the failure counts of one entry (v2) into a new sorted array. */
static int failures_read(const uint8_t *p, size_t *pos, size_t end, busd_restored_t **out,
                         uint32_t *count) {
  *out = NULL;
  *count = 0;
  if (end - *pos < 4) return BUS_E_CORRUPT;
  uint32_t n = rd32(p + *pos);
  *pos += 4;
  if (n == 0) return 0;
  if ((end - *pos) / 10u < n) return BUS_E_CORRUPT;
  busd_restored_t *r = malloc((size_t)n * sizeof *r);
  if (r == NULL) return -ENOMEM;
  for (uint32_t i = 0; i < n; i++) {
    r[i].offset = rd64(p + *pos);
    r[i].failures = rd16(p + *pos + 8);
    *pos += 10;
    if (i > 0 && r[i].offset <= r[i - 1].offset) {
      free(r);
      return BUS_E_CORRUPT;
    }
  }
  *out = r;
  *count = n;
  return 0;
}

/* Applies the entries of a checked offsets file. Every length is checked
 * against what is left before it is used. */
static int offsets_apply(busd_topic_t *t, const uint8_t *p, size_t len, bool v2) {
  uint32_t count = rd32(p + 8);
  size_t pos = 12, end = len - 4;
  for (uint32_t i = 0; i < count; i++) {
    if (end - pos < 2) return BUS_E_CORRUPT;
    uint16_t n = rd16(p + pos);
    if (end - pos < 2u + n + 12u || !bus_name_valid(p + pos + 2, n)) return BUS_E_CORRUPT;
    busd_group_t *g = busd_group_get(t->b, t, p + pos + 2, n);
    if (g == NULL) {
      RT_ERROR("cannot load a stored group: raise BUSD_GROUPS_MAX",
               RT_LF_STR("topic", t->name), RT_LF_INT("groups_max", t->b->cfg.groups_max));
      return RT_E_LIMIT;
    }
    uint32_t partition = rd32(p + pos + 2 + n);
    uint64_t committed = rd64(p + pos + 6 + n);
    if (partition < t->parts_count) busd_group_set_committed(g, partition, committed);
    pos += 2u + n + 12u;
    if (!v2) continue;
    busd_restored_t *r = NULL;
    uint32_t rn = 0;
    int rc = failures_read(p, &pos, end, &r, &rn);
    if (rc < 0) return rc;
    if (partition < t->parts_count) {
      busd_group_set_restored(g, partition, r, rn);
    } else {
      free(r);
    }
  }
  return 0;
}

static int load_offsets(busd_topic_t *t) {
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/offsets", t->dir);
  uint8_t *buf;
  size_t len;
  int rc = read_file(path, &buf, &len);
  if (rc < 0 || buf == NULL) return rc;
  bool v2 = len >= 16 && memcmp(buf, OFFSETS_MAGIC, 8) == 0;
  bool v1 = len >= 16 && memcmp(buf, OFFSETS_MAGIC_V1, 8) == 0;
  bool ok = (v1 || v2) && busd_crc32c(0, buf, len - 4) == rd32(buf + len - 4);
  rc = ok ? offsets_apply(t, buf, len, v2) : BUS_E_CORRUPT;
  free(buf);
  if (rc == BUS_E_CORRUPT) {
    /* Groups then start again from the oldest record: duplicates, no loss. */
    RT_ERROR("offsets file unreadable: groups restart from the oldest record",
             RT_LF_STR("path", path));
    rc = 0;
  }
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Start-up: topics                                                         */
/* ------------------------------------------------------------------------ */

/* The partition count from a topic's meta file; 0 when absent or bad. */
static uint32_t read_meta(const char *dir) {
  char path[PATH_MAX + 16];
  snprintf(path, sizeof path, "%s/meta", dir);
  FILE *f = fopen(path, "re");
  if (f == NULL) return 0;
  unsigned parts = 0;
  if (fscanf(f, "partitions=%u", &parts) != 1) parts = 0;
  fclose(f);
  return parts >= 1 && parts <= BUSD_PARTITIONS_MAX ? parts : 0;
}

/* Topic directory names: wire names, or dead-letter names that may pass
 * the wire limit by ".dead". */
static bool topic_name_ok(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > BUSD_TOPIC_BYTES_MAX || name[0] == '.') return false;
  for (size_t i = 0; i < n; i++) {
    char c = name[i];
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

static int load_topic(busd_t *b, const char *name) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/topics/%s", b->cfg.data_dir, name);
  uint32_t parts = read_meta(dir);
  if (parts == 0) {
    RT_WARN("topic directory without meta file: ignored", RT_LF_STR("dir", dir));
    return 0;
  }
  busd_topic_t *t = topic_add(b, (const uint8_t *)name, (uint32_t)strlen(name), parts,
                              BUSD_TOPIC_READY);
  if (t == NULL) return RT_E_LIMIT;
  int rc = 0;
  for (uint32_t p = 0; p < parts && rc == 0; p++) rc = load_partition(&t->parts[p]);
  if (rc == 0) rc = load_offsets(t);
  uint64_t records = 0;
  for (uint32_t p = 0; p < parts; p++) records += t->parts[p].next - t->parts[p].start;
  RT_INFO("topic loaded", RT_LF_STR("topic", t->name), RT_LF_INT("partitions", parts),
          RT_LF_INT("records", (int64_t)records));
  return rc;
}

static int mkdir_p1(const char *path) {
  if (mkdir(path, 0755) < 0 && errno != EEXIST) return -errno;
  return 0;
}

/* mkdir -p: each parent in turn (bounded by the path's length). */
static int mkdir_p(const char *path) {
  char buf[PATH_MAX];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) return -ENAMETOOLONG;
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i < n; i++) {
    if (buf[i] != '/') continue;
    buf[i] = '\0';
    int rc = mkdir_p1(buf);
    buf[i] = '/';
    if (rc < 0) return rc;
  }
  return mkdir_p1(buf);
}

int busd_store_open(busd_t *b) {
  uint32_t hash_size = 16;
  while (hash_size < 2 * b->cfg.topics_max) hash_size *= 2;
  b->topics = calloc(b->cfg.topics_max, sizeof *b->topics);
  b->topic_hash = calloc(hash_size, sizeof *b->topic_hash);
  if (b->topics == NULL || b->topic_hash == NULL) return -ENOMEM;
  b->topic_hash_mask = hash_size - 1;
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s/topics", b->cfg.data_dir);
  int rc = mkdir_p(dir);
  if (rc < 0) {
    RT_ERROR("cannot create the data directory", RT_LF_STR("dir", dir),
             RT_LF_STR("error", rt_strerror(rc)));
    return rc;
  }
  DIR *d = opendir(dir);
  if (d == NULL) return -errno;
  struct dirent *e;
  while (rc == 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.' || !topic_name_ok(e->d_name)) continue;
    rc = load_topic(b, e->d_name);
  }
  closedir(d);
  return rc;
}

/* ------------------------------------------------------------------------ */
/* Committed offsets at run time                                            */
/* ------------------------------------------------------------------------ */

static int put(bus_buf_t *buf, const void *p, size_t n) { return bus_buf_append(buf, p, n); }

/* The failure counts of one group's partition: the offsets of its window
 * that have failed at least once, in order. */
static int snapshot_failures(bus_buf_t *buf, const busd_gp_t *gp) {
  uint32_t n = 0;
  for (uint64_t off = gp->committed; off < gp->next; off++) {
    const busd_slot_t *s = &gp->slots[off & gp->mask];
    if (s->failures > 0 && s->state != BUSD_SLOT_ACKED) n++;
  }
  uint32_t c = htole32(n);
  int rc = put(buf, &c, 4);
  for (uint64_t off = gp->committed; off < gp->next && rc == 0; off++) {
    const busd_slot_t *s = &gp->slots[off & gp->mask];
    if (s->failures == 0 || s->state == BUSD_SLOT_ACKED) continue;
    uint64_t o = htole64(off);
    uint16_t f = htole16(s->failures);
    rc = put(buf, &o, 8);
    if (rc == 0) rc = put(buf, &f, 2);
  }
  return rc;
}

static int snapshot_build(busd_topic_t *t) {
  bus_buf_t *buf = &t->snap_buf;
  buf->len = 0;
  uint32_t count = 0;
  for (busd_group_t *g = t->groups; g != NULL; g = g->next) count += t->parts_count;
  uint32_t c = htole32(count);
  int rc = put(buf, OFFSETS_MAGIC, 8);
  if (rc == 0) rc = put(buf, &c, 4);
  for (busd_group_t *g = t->groups; g != NULL && rc == 0; g = g->next) {
    for (uint32_t p = 0; p < t->parts_count && rc == 0; p++) {
      uint16_t n = htole16((uint16_t)g->name_len);
      uint32_t part = htole32(p);
      uint64_t off = htole64(g->gps[p].committed);
      rc = put(buf, &n, 2);
      if (rc == 0) rc = put(buf, g->name, g->name_len);
      if (rc == 0) rc = put(buf, &part, 4);
      if (rc == 0) rc = put(buf, &off, 8);
      if (rc == 0) rc = snapshot_failures(buf, &g->gps[p]);
    }
  }
  uint32_t crc = htole32(busd_crc32c(0, buf->data, buf->len));
  if (rc == 0) rc = put(buf, &crc, 4);
  return rc;
}

static void snapshot_start(busd_topic_t *t);

static void snapshot_done(busd_job_t *job) {
  busd_topic_t *t = job->ctx;
  if (job->result < 0) {
    RT_ERROR("cannot store committed offsets", RT_LF_STR("topic", t->name),
             RT_LF_STR("error", rt_strerror(job->result)));
    t->snap_dirty = true; /* try again at the next interval */
    return;
  }
  t->snap_gen_done = job->gen;
  if (t->snap_again) {
    t->snap_again = false;
    snapshot_start(t);
  }
  busd_groups_persisted(t);
}

static void snapshot_start(busd_topic_t *t) {
  if (snapshot_build(t) < 0) return;
  busd_job_t *job = &t->snap_job;
  job->gen = t->snap_gen_next;
  job->kind = BUSD_JOB_SNAPSHOT;
  job->done = snapshot_done;
  job->ctx = t;
  job->data = t->snap_buf.data;
  job->len = (uint32_t)t->snap_buf.len;
  int n = snprintf(job->path, sizeof job->path, "%s/offsets", t->dir);
  if (n < 0 || (size_t)n >= sizeof job->path) return;
  if (busd_io_submit(&t->b->io, job) == 0) {
    t->snap_dirty = false;
    t->snap_gen_next++;
  }
}

void busd_store_snapshot_soon(busd_topic_t *t) {
  t->snap_dirty = true;
  if (t->state != BUSD_TOPIC_READY) return; /* the periodic commit will */
  if (t->snap_job.in_flight) {
    t->snap_again = true;
    return;
  }
  snapshot_start(t);
}

void busd_store_commit(busd_t *b, bool force) {
  for (uint32_t i = 0; i < b->topics_count; i++) {
    busd_topic_t *t = &b->topics[i];
    /* The buffer belongs to the job while it runs: never rebuilt then. */
    if (t->state == BUSD_TOPIC_READY && !t->snap_job.in_flight && (t->snap_dirty || force) &&
        t->groups != NULL)
      snapshot_start(t);
  }
}

bool busd_store_idle(busd_t *b) {
  for (uint32_t i = 0; i < b->topics_count; i++) {
    const busd_topic_t *t = &b->topics[i];
    if (t->snap_job.in_flight || t->mk_job.in_flight) return false;
  }
  return true;
}

void busd_store_retry(busd_t *b) {
  for (uint32_t i = 0; i < b->topics_count; i++) {
    busd_topic_t *t = &b->topics[i];
    if (t->state == BUSD_TOPIC_CREATING && !t->mk_job.in_flight) mktopic_submit(t);
  }
}

void busd_store_close(busd_t *b) {
  for (uint32_t i = 0; i < b->topics_count; i++) {
    busd_topic_t *t = &b->topics[i];
    busd_group_t *g = t->groups;
    while (g != NULL) {
      busd_group_t *next = g->next;
      busd_group_free(g);
      g = next;
    }
    for (uint32_t p = 0; p < t->parts_count; p++) busd_part_deinit(&t->parts[p]);
    free(t->parts);
    bus_buf_deinit(&t->snap_buf);
  }
  free(b->topics);
  free(b->topic_hash);
  b->topics = NULL;
  b->topic_hash = NULL;
  b->topics_count = 0;
}
