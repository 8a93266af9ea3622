/*
 * log.c - partitions: append, group commit, the durable-record cache.
 *
 * Life of a record: a PUB is appended to its partition's ring, after the
 * records accumulating there, with a waiter saying whom to tell. At the end
 * of the event that appended it (busd_log_kick), a partition with no write
 * in flight hands everything accumulated to an I/O thread as one write:
 * pwrite at the end of the last segment (or in a new segment when the last
 * one is full), then fdatasync. While that runs, new PUBs accumulate
 * behind it, so under load every fdatasync covers everything that arrived
 * during the previous one: group commit that adapts its batch size to the
 * disk, with no timer. When the write completes its records are durable:
 * PUB_ACKs go out, consumer groups are woken, and the records stay where
 * they are in the ring as the partition's cache, so consumers that keep up
 * are served from memory without reading the file back.
 *
 * The ring (busd.h: busd_part_t) is the partition's memory for records,
 * one allocation made with the partition: cache_bytes, and room for the
 * largest record being written and another appended beyond it. Records go
 * in at its head, one after the other; one that does not fit before the
 * end of the ring goes to its start, leaving a gap (ring_gap) that is not
 * written: a write that wraps is two pieces of one pwrite each. Room is
 * made by dropping the oldest durable records from the cache; when what is
 * left is all records not yet durable, the append is refused with
 * BUS_E_OVERLOADED (the client sends it again shortly). Where each record
 * is, and its waiter, are kept in two tables indexed by offset, sized with
 * the ring. So an append, a write and a delivery from memory allocate
 * nothing, and the memory a partition holds is the ring it was given.
 *
 * Offsets are assigned at append; if a write fails the partition stops
 * taking PUBs (a failed fdatasync leaves the file's state unknown) and its
 * unwritten records are refused, their offsets given back. Recovery at the
 * next start decides what is on disk.
 */
#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "busd.h"

uint64_t busd_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------------ */
/* The ring                                                                 */
/* ------------------------------------------------------------------------ */

static uint32_t ring_len_at(const busd_part_t *part, uint32_t at) {
  uint32_t len;
  memcpy(&len, part->ring + at, 4);
  return le32toh(len);
}

static uint32_t rec_slot(const busd_part_t *part, uint64_t offset) {
  return (uint32_t)(offset & part->recs_mask);
}

static bool ring_empty(const busd_part_t *part) { return part->mem_first == part->next; }

/* Takes n bytes at the head for the next record, without dropping any:
 * false when they are not free. */
static bool ring_place(busd_part_t *part, uint32_t n, uint32_t *at) {
  if (ring_empty(part)) {
    part->ring_tail = part->ring_head = 0;
    part->ring_wrapped = false;
  }
  if (!part->ring_wrapped) {
    if (part->ring_bytes - part->ring_head >= n) {
      *at = part->ring_head;
      part->ring_head += n;
      return true;
    }
    /* The start of the ring, leaving a gap at its end. */
    if (part->ring_tail < n) return false;
    part->ring_gap = part->ring_head;
    part->ring_wrapped = true;
    *at = 0;
    part->ring_head = n;
    return true;
  }
  if (part->ring_tail - part->ring_head < n) return false;
  *at = part->ring_head;
  part->ring_head += n;
  return true;
}

/* Drops the oldest record from the cache: false when it is not durable,
 * or being told about (records_durable()). */
static bool ring_drop_oldest(busd_part_t *part) {
  if (part->mem_first >= part->durable || part->mem_first >= part->keep_from) return false;
  uint32_t at = part->rec_at[rec_slot(part, part->mem_first)];
  assert(at == part->ring_tail);
  part->ring_tail += ring_len_at(part, at);
  part->mem_first++;
  if (part->ring_wrapped && part->ring_tail == part->ring_gap) {
    part->ring_tail = 0;
    part->ring_wrapped = false;
  }
  return true;
}

/* Where a record of n bytes goes, room made by dropping cached records;
 * BUS_E_OVERLOADED when the ring (or its table) holds only records not
 * yet durable. */
static int ring_reserve(busd_part_t *part, uint32_t n, uint32_t *at) {
  /* Bounded: each turn drops a record, and there are fewer than
   * recs_mask + 1 in the ring. */
  for (uint32_t turn = 0; turn <= part->recs_mask + 1; turn++) {
    bool table_full = part->next - part->mem_first > part->recs_mask;
    if (!table_full && ring_place(part, n, at)) return 0;
    if (!ring_drop_oldest(part)) return BUS_E_OVERLOADED;
  }
  (void)NEVER(true);
  return BUS_E_OVERLOADED;
}

/* A record's place in its write: its distance from the write's first
 * record, the gap at the end of the ring left out. */
static uint32_t write_pos(uint32_t start, uint32_t first_piece, uint32_t at) {
  return at >= start ? at - start : first_piece + at;
}

/* ------------------------------------------------------------------------ */
/* Segments                                                                 */
/* ------------------------------------------------------------------------ */

static busd_seg_t *seg_new(int fd, uint64_t base) {
  busd_seg_t *seg = calloc(1, sizeof *seg);
  if (seg == NULL) return NULL;
  seg->fd = fd;
  seg->idx_fd = -1;
  seg->base = base;
  seg->end = base;
  return seg;
}

static void seg_free(busd_seg_t *seg) {
  if (seg->fd >= 0) close(seg->fd);
  if (seg->idx_fd >= 0) close(seg->idx_fd);
  busd_index_free(&seg->index);
  free(seg);
}

static void seg_append(busd_part_t *part, busd_seg_t *seg) {
  seg->next = NULL;
  if (part->segs_tail != NULL) {
    part->segs_tail->next = seg;
  } else {
    part->segs = seg;
  }
  part->segs_tail = seg;
  part->segs_count++;
}

/* The most index entries a segment appended to may have: it holds at
 * most segment_bytes, or a single write larger than that, which is at
 * most a ring's worth. */
static uint32_t seg_entries_max(const busd_part_t *part) {
  uint64_t bytes = part->b->cfg.segment_bytes;
  if (part->ring_bytes > bytes) bytes = part->ring_bytes;
  return BUSD_INDEX_ENTRIES_MAX(bytes);
}

int busd_part_add_segment(busd_part_t *part, int fd, uint64_t base, busd_seg_loaded_t *loaded,
                          uint64_t mtime_ms, bool last) {
  if (last) {
    /* Appended to from now on: all the room its index will need. */
    uint32_t room = seg_entries_max(part);
    if (room < loaded->index.len + 2) room = loaded->index.len + 2;
    int rc = busd_index_reserve(&loaded->index, room);
    if (rc < 0) return rc;
  }
  busd_seg_t *seg = seg_new(fd, base);
  if (seg == NULL) return -ENOMEM;
  seg->end = loaded->scan.next_offset;
  seg->bytes = loaded->scan.valid_bytes;
  seg->mtime_ms = mtime_ms;
  seg->index = loaded->index;
  memset(&loaded->index, 0, sizeof loaded->index);
  seg->idx_fd = loaded->idx_fd;
  seg->idx_bytes = loaded->idx_bytes;
  loaded->idx_fd = -1;
  seg_append(part, seg);
  part->start = part->segs->base;
  part->next = seg->end;
  part->durable = seg->end;
  part->w_end = seg->end;
  part->mem_first = seg->end;
  return 0;
}

busd_seg_t *busd_part_segment(busd_part_t *part, uint64_t offset) {
  /* Few segments per partition (size / segment_bytes): a walk is fine. */
  for (busd_seg_t *seg = part->segs; seg != NULL; seg = seg->next) {
    if (offset >= seg->base && offset < seg->end) return seg->deleting ? NULL : seg;
  }
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* Partition set-up                                                         */
/* ------------------------------------------------------------------------ */

/* The ring: the cache, and room for the largest record being written and
 * another appended behind it, so that a record that fits the limits is
 * never refused for want of a ring, only for a full one. */
static uint64_t ring_bytes_for(const busd_t *b) {
  return (uint64_t)b->cfg.cache_bytes + 2u * (uint64_t)b->rec_bytes_max;
}

int busd_part_init(busd_part_t *part, busd_t *b, busd_topic_t *topic, uint32_t index,
                   const char *dir) {
  memset(part, 0, sizeof *part);
  part->b = b;
  part->topic = topic;
  part->index = index;
  size_t n = strlen(dir);
  if (n >= sizeof part->dir) return -ENAMETOOLONG;
  memcpy(part->dir, dir, n + 1);
  uint64_t ring = ring_bytes_for(b);
  if (ring > UINT32_MAX) return -ENOMEM;
  uint64_t recs = 1024;
  while (recs < ring / BUSD_RING_BYTES_PER_RECORD) recs *= 2;
  uint64_t idx = BUSD_IDX_PLAN_BYTES(ring);
  /* Untouched until records come: the pages cost nothing before. */
  part->ring = malloc(ring);
  part->rec_at = malloc(recs * sizeof *part->rec_at);
  part->rec_waiter = malloc(recs * sizeof *part->rec_waiter);
  part->wpos = malloc(recs * sizeof *part->wpos);
  part->idx_buf = malloc(idx);
  if (!part->ring || !part->rec_at || !part->rec_waiter || !part->wpos || !part->idx_buf)
    return -ENOMEM;
  part->ring_bytes = (uint32_t)ring;
  part->recs_mask = (uint32_t)recs - 1;
  part->idx_cap = (uint32_t)idx;
  part->keep_from = UINT64_MAX;
  return 0;
}

void busd_part_deinit(busd_part_t *part) {
  free(part->ring);
  free(part->rec_at);
  free(part->rec_waiter);
  free(part->wpos);
  free(part->idx_buf);
  part->ring = NULL;
  part->rec_at = NULL;
  part->rec_waiter = NULL;
  part->wpos = NULL;
  part->idx_buf = NULL;
  part->idx_cap = 0;
  busd_seg_t *seg = part->segs;
  while (seg != NULL) {
    busd_seg_t *next = seg->next;
    seg_free(seg);
    seg = next;
  }
  part->segs = part->segs_tail = NULL;
}

bool busd_part_idle(const busd_part_t *part) {
  return !part->writing && part->next == part->durable;
}

/* ------------------------------------------------------------------------ */
/* Append and write                                                         */
/* ------------------------------------------------------------------------ */

static void kick_queue(busd_part_t *part) {
  if (part->kick_queued) return;
  part->kick_queued = true;
  part->kick_next = part->b->kick_head;
  part->b->kick_head = part;
}

int64_t busd_part_append(busd_part_t *part, const uint8_t id[BUS_ID_BYTES], bus_bytes_t key,
                         bus_bytes_t headers, bus_bytes_t payload, const busd_waiter_t *w) {
  busd_t *b = part->b;
  if (part->failed || part->topic->state == BUSD_TOPIC_FAILED) return BUS_E_STORAGE;
  size_t bytes = busd_rec_size(key.len, headers.len, payload.len);
  if (bytes > b->rec_bytes_max) return BUS_E_LIMIT;
  /* The ring holds two of the largest (ring_bytes_for()). */
  assert(bytes <= part->ring_bytes / 2);
  uint32_t at;
  int rc = ring_reserve(part, (uint32_t)bytes, &at);
  if (rc < 0) {
    /* Counted always, logged at 1, 2, 4, 8, ...: a full ring comes with a
     * burst, and the client sends each refused PUB again. */
    uint64_t n = ++b->stats.ring_full;
    if ((n & (n - 1)) == 0) {
      RT_WARN("partition ring full of records not yet durable: PUBs refused for now",
              RT_LF_STR("topic", part->topic->name), RT_LF_INT("partition", part->index),
              RT_LF_INT("ring_bytes", part->ring_bytes), RT_LF_INT("count", (int64_t)n));
    }
    return rc;
  }
  uint64_t offset = part->next++;
  busd_rec_write(part->ring + at, offset, busd_wall_ms(), id, key, headers, payload);
  part->rec_at[rec_slot(part, offset)] = at;
  part->rec_waiter[rec_slot(part, offset)] = *w;
  part->acc_bytes += (uint32_t)bytes;
  b->pending_bytes += bytes;
  part->appended++;
  kick_queue(part);
  return (int64_t)offset;
}

void busd_log_kick(busd_t *b) {
  /* Bounded: each partition is on the list at most once. */
  while (b->kick_head != NULL) {
    busd_part_t *part = b->kick_head;
    b->kick_head = part->kick_next;
    part->kick_next = NULL;
    part->kick_queued = false;
    busd_part_kick(part);
  }
}

static void write_done(busd_job_t *job);

/* The index side of a write job (index.c, "life of an index file"): the
 * entries of the write for the segment it goes to, and on a roll the seal
 * of the segment it leaves. idx_buf holds a plan of the largest write
 * there can be (busd_part_init()). */
static void write_job_index(busd_part_t *part, busd_job_t *job, uint32_t count, uint32_t len) {
  busd_seg_t *seg = part->segs_tail;
  static const busd_index_t empty;
  job->idx_fd = -1;
  job->idx_len = 0;
  job->idx_data = NULL;
  job->seal_fd = -1;
  job->new_idx_fd = -1;
  job->idx_result = 0;
  if (job->roll && seg != NULL && seg->idx_fd >= 0 &&
      (seg->index.len == 0 || seg->index.last_pos < seg->bytes)) {
    job->seal_fd = seg->idx_fd;
    job->seal_pos = seg->idx_bytes;
    busd_idx_entry(job->seal, seg->base, seg->end, seg->bytes);
  }
  if (!job->roll && seg->idx_fd < 0) return;
  if (NEVER(BUSD_IDX_PLAN_BYTES((uint64_t)len) > part->idx_cap)) return;
  const busd_index_t *idx = job->roll ? &empty : &seg->index;
  uint64_t base = job->roll ? part->durable : seg->base;
  job->idx_len = busd_idx_plan(idx, base, job->roll, part->durable, job->pos, part->wpos, count,
                               part->idx_buf);
  assert(job->idx_len <= part->idx_cap);
  job->idx_data = part->idx_buf;
  if (!job->roll) {
    job->idx_fd = seg->idx_fd;
    job->idx_pos = seg->idx_bytes;
  }
}

/* The records accumulated, [durable, next), as one write: their bytes in
 * the ring (two pieces when they wrapped around it) and each record's
 * place in the write. Returns the write's length. */
static uint32_t write_plan(busd_part_t *part, busd_job_t *job, uint32_t count) {
  uint32_t start = part->rec_at[rec_slot(part, part->durable)];
  uint32_t last = part->rec_at[rec_slot(part, part->next - 1)];
  uint32_t len = part->acc_bytes;
  uint32_t first_piece = len;
  job->data = part->ring + start;
  job->data2 = NULL;
  job->len2 = 0;
  if (last < start) { /* wrapped: from start to the gap, then from 0 */
    job->len2 = part->ring_head;
    first_piece = len - job->len2;
    job->data2 = part->ring;
    assert(part->ring_wrapped && start + first_piece == part->ring_gap);
  }
  job->len = first_piece;
  for (uint32_t i = 0; i < count; i++)
    part->wpos[i] = write_pos(start, first_piece, part->rec_at[rec_slot(part, part->durable + i)]);
  return len;
}

void busd_part_kick(busd_part_t *part) {
  busd_t *b = part->b;
  if (part->writing || part->next == part->durable) return;
  if (part->topic->state != BUSD_TOPIC_READY || part->failed) return;
  busd_seg_t *seg = part->segs_tail;
  busd_job_t *job = &part->write_job;
  uint32_t count = (uint32_t)(part->next - part->durable);
  assert(count <= part->recs_mask + 1);
  job->kind = BUSD_JOB_WRITE;
  job->done = write_done;
  job->ctx = part;
  job->new_fd = -1;
  uint32_t len = write_plan(part, job, count);
  /* Roll at a write boundary: a write always lands in one segment. */
  job->roll = seg == NULL || (seg->bytes > 0 && seg->bytes + len > b->cfg.segment_bytes);
  if (job->roll) {
    job->fd = -1;
    job->pos = 0;
    if (busd_seg_path(job->path, sizeof job->path, part->dir, part->durable) < 0) return;
  } else {
    job->fd = seg->fd;
    job->pos = seg->bytes;
  }
  write_job_index(part, job, count, len);
  if (busd_io_submit(&b->io, job) < 0) return; /* retried by the tick */
  part->writing = true;
  part->w_end = part->next;
  part->w_bytes = len;
  part->acc_bytes = 0;
}

/* Tells every waiter of the records [first, end), now durable. A waiter
 * told may append to this partition (a group with its next dead letter):
 * the records told about are kept meanwhile, their ids read from them. */
static void records_durable(busd_part_t *part, uint64_t first, uint64_t end) {
  busd_t *b = part->b;
  part->keep_from = first;
  for (uint64_t o = first; o < end; o++) {
    const busd_waiter_t *w = &part->rec_waiter[rec_slot(part, o)];
    if (w->gp != NULL) {
      busd_group_dead_done(w->gp, w->source_offset, 0);
      continue;
    }
    if (w->conn == NULL || !busd_conn_waiter_done(w->conn)) continue;
    bus_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = BUS_PUB_ACK;
    memcpy(f.id, part->ring + part->rec_at[rec_slot(part, o)] + 24, BUS_ID_BYTES);
    f.has_id = true;
    f.partition = part->index;
    f.offset = o;
    busd_conn_write(w->conn, &f);
    b->stats.pub_acked++;
  }
  part->keep_from = UINT64_MAX;
}

/* Refuses the records [first, next), which will never be written, and
 * gives their offsets and their room in the ring back. */
static void records_refuse(busd_part_t *part, uint64_t first, int err) {
  busd_t *b = part->b;
  for (uint64_t o = first; o < part->next; o++) {
    const busd_waiter_t *w = &part->rec_waiter[rec_slot(part, o)];
    if (w->gp != NULL) {
      busd_group_dead_done(w->gp, w->source_offset, err);
      continue;
    }
    if (w->conn == NULL || !busd_conn_waiter_done(w->conn)) continue;
    bus_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = BUS_ERR;
    f.code = err;
    f.message = (bus_bytes_t){.ptr = (const uint8_t *)"not stored", .len = 10};
    memcpy(f.id, part->ring + part->rec_at[rec_slot(part, o)] + 24, BUS_ID_BYTES);
    f.has_id = true;
    busd_conn_write(w->conn, &f);
    b->stats.pub_refused++;
  }
  if (first < part->next) {
    /* The head goes back to the first of them; when it was above the
     * gap, so were all that followed the wrap, which is undone. */
    uint32_t at = part->rec_at[rec_slot(part, first)];
    if (part->ring_wrapped && at >= part->ring_tail) part->ring_wrapped = false;
    part->ring_head = at;
  }
  part->next = first;
}

void busd_part_fail(busd_part_t *part) {
  busd_t *b = part->b;
  part->failed = true;
  b->pending_bytes -= part->acc_bytes;
  part->acc_bytes = 0;
  records_refuse(part, part->writing ? part->w_end : part->durable, BUS_E_STORAGE);
}

static void write_failed(busd_part_t *part, int err) {
  RT_ERROR("partition write failed: refusing publishes until restart",
           RT_LF_STR("topic", part->topic->name), RT_LF_INT("partition", part->index),
           RT_LF_STR("error", rt_strerror(err)));
  busd_t *b = part->b;
  b->pending_bytes -= part->w_bytes;
  part->writing = false;
  part->w_bytes = 0;
  part->w_end = part->durable;
  busd_part_fail(part); /* the write's records and those behind it */
}

/* The segment the write went to: a new one after a roll, with room for
 * the index it will have. */
static busd_seg_t *written_segment(busd_part_t *part, const busd_job_t *job) {
  if (!job->roll) return part->segs_tail;
  busd_seg_t *seg = seg_new(job->new_fd, part->durable);
  if (seg == NULL) return NULL;
  if (busd_index_reserve(&seg->index, seg_entries_max(part)) < 0) {
    free(seg);
    return NULL;
  }
  seg_append(part, seg);
  return seg;
}

/* A write's index entries are on file (or not): the in-memory index takes
 * the same entries, and a segment whose index could not be written stops
 * writing it (the next start finishes it from the log). */
static void written_index(busd_part_t *part, busd_seg_t *seg, const busd_job_t *job,
                          uint32_t count, uint64_t file_pos) {
  uint32_t before = seg->index.len;
  /* Within the room reserved with the segment: nothing is allocated. */
  for (uint32_t i = 0; i < count; i++)
    busd_index_add(&seg->index, part->durable + i, file_pos + part->wpos[i]);
  assert(seg->index.len <= seg->index.cap);
  if (job->roll) seg->idx_fd = job->new_idx_fd;
  if (job->idx_data == NULL) return; /* none planned: none kept */
  uint32_t entries = job->idx_len - (job->roll ? BUSD_IDX_HEADER_BYTES : 0);
  /* The plan mirrors busd_index_add(): the file and memory agree. */
  bool agree = ALWAYS(seg->index.len - before == entries / BUSD_IDX_ENTRY_BYTES);
  if (agree && job->idx_result == 0 && seg->idx_fd >= 0) {
    seg->idx_bytes = (job->roll ? 0 : seg->idx_bytes) + job->idx_len;
    return;
  }
  part->b->stats.idx_errors++;
  RT_WARN("segment index not written: rebuilt at the next start",
          RT_LF_STR("topic", part->topic->name), RT_LF_INT("partition", part->index),
          RT_LF_INT("base", (int64_t)seg->base),
          RT_LF_STR("error", rt_strerror(job->idx_result < 0 ? job->idx_result : -EINVAL)));
  if (seg->idx_fd >= 0) close(seg->idx_fd);
  seg->idx_fd = -1;
}

static void write_done(busd_job_t *job) {
  busd_part_t *part = job->ctx;
  busd_t *b = part->b;
  assert(part->writing);
  busd_seg_t *prev = part->segs_tail;
  busd_seg_t *seg = job->result < 0 ? NULL : written_segment(part, job);
  if (seg == NULL) {
    if (job->roll && job->new_fd >= 0) close(job->new_fd);
    if (job->roll && job->new_idx_fd >= 0) close(job->new_idx_fd);
    write_failed(part, job->result < 0 ? job->result : -ENOMEM);
    return;
  }
  /* The segment left behind is complete: its index is sealed (or, when
   * that failed, finished at the next start). */
  if (job->roll && prev != NULL && prev->idx_fd >= 0) {
    close(prev->idx_fd);
    prev->idx_fd = -1;
  }
  uint64_t first = part->durable, end = part->w_end;
  uint32_t count = (uint32_t)(end - first);
  uint64_t file_pos = job->roll ? 0 : job->pos;
  written_index(part, seg, job, count, file_pos);
  uint32_t len = part->w_bytes;
  seg->bytes = file_pos + len;
  seg->end = end;
  seg->mtime_ms = busd_wall_ms();
  if (part->segs == seg) part->start = seg->base;
  b->pending_bytes -= len;
  part->writing = false;
  part->w_bytes = 0;
  part->batches++;
  b->stats.batches++;
  b->stats.batch_records += count;
  /* Durable before anyone is told, so that deliveries it triggers (dead
   * letters done, groups woken) find the records in the cache. */
  part->durable = end;
  records_durable(part, first, end);
  busd_groups_wake(part);
  busd_part_kick(part);
}

/* ------------------------------------------------------------------------ */
/* Reading from memory                                                      */
/* ------------------------------------------------------------------------ */

bool busd_part_cached(busd_part_t *part, uint64_t offset, busd_rec_t *rec) {
  if (offset < part->mem_first || offset >= part->durable) return false;
  uint32_t at = part->rec_at[rec_slot(part, offset)];
  /* Written by us and never on disk in between: no checksum needed. */
  return busd_rec_parse(part->ring + at, part->ring_bytes - at, part->b->rec_bytes_max, false,
                        rec) > 0;
}

/* ------------------------------------------------------------------------ */
/* Retention                                                                */
/* ------------------------------------------------------------------------ */

static void unlink_done(busd_job_t *job) {
  busd_seg_t *seg = job->ctx;
  if (job->result < 0) {
    RT_WARN("cannot delete segment", RT_LF_STR("path", job->path),
            RT_LF_STR("error", rt_strerror(job->result)));
  }
  seg->fd = -1; /* closed by the job */
  seg_free(seg);
}

void busd_part_retention(busd_part_t *part, uint64_t min_committed, uint64_t now_ms) {
  busd_t *b = part->b;
  /* Never the last segment: it is the one appended to. Bounded by the
   * number of segments. */
  while (part->segs != NULL && part->segs != part->segs_tail) {
    busd_seg_t *seg = part->segs;
    if (seg->end > min_committed || seg->refs > 0) return;
    if (now_ms < seg->mtime_ms + b->cfg.retention_ms) return;
    busd_job_t *job = &seg->unlink_job;
    job->kind = BUSD_JOB_UNLINK;
    job->done = unlink_done;
    job->ctx = seg;
    job->fd = seg->fd;
    if (busd_seg_path(job->path, sizeof job->path, part->dir, seg->base) < 0) return;
    if (busd_io_submit(&b->io, job) < 0) return;
    seg->deleting = true;
    part->segs = seg->next;
    part->segs_count--;
    part->start = part->segs->base;
    b->stats.segments_deleted++;
    RT_INFO("segment deleted by retention", RT_LF_STR("topic", part->topic->name),
            RT_LF_INT("partition", part->index), RT_LF_INT("base", (int64_t)seg->base),
            RT_LF_INT("end", (int64_t)seg->end));
  }
}
