/*
 * log.c - partitions: append, group commit, the durable-record cache.
 *
 * Life of a record: a PUB is appended to its partition's accumulating batch
 * (`acc`) with a waiter saying whom to tell. At the end of the event that
 * appended it (busd_log_kick), a partition with no write in flight hands its
 * batch to an I/O thread: pwrite at the end of the last segment (or in a new
 * segment when the last one is full), then fdatasync. While that runs, new
 * PUBs accumulate in the next batch, so under load every fdatasync covers
 * everything that arrived during the previous one: group commit that adapts
 * its batch size to the disk, with no timer. When the write completes the
 * batch's records are durable: PUB_ACKs go out, consumer groups are woken,
 * and the batch itself becomes part of the partition's cache, so consumers
 * that keep up are served from memory without reading the file back.
 *
 * Offsets are assigned at append; if a write fails the partition stops
 * taking PUBs (a failed fdatasync leaves the file's state unknown) and its
 * unwritten records are refused, their offsets given back. Recovery at the
 * next start decides what is on disk.
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "busd.h"

/* Durable batches remembered per partition, at most (also bounded in
 * bytes by cache_bytes). */
#define CACHE_BATCHES_MAX 4096u

/* A spare batch is kept for reuse only when its buffer is not too big. */
#define SPARE_BYTES_MAX (4u << 20)

uint64_t busd_wall_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------------ */
/* Batches                                                                  */
/* ------------------------------------------------------------------------ */

static void batch_free(busd_batch_t *batch) {
  if (batch == NULL) return;
  free(batch->data);
  free(batch->pos);
  free(batch->waiters);
  free(batch);
}

static busd_batch_t *batch_new(busd_part_t *part) {
  busd_batch_t *batch = part->spare;
  if (batch != NULL) {
    part->spare = NULL;
  } else {
    batch = calloc(1, sizeof *batch);
    if (batch == NULL) return NULL;
  }
  batch->len = 0;
  batch->count = 0;
  batch->first = part->next;
  return batch;
}

/* Keeps one emptied batch for the next append, frees the rest. */
static void batch_recycle(busd_part_t *part, busd_batch_t *batch) {
  if (part->spare == NULL && batch->cap <= SPARE_BYTES_MAX) {
    part->spare = batch;
  } else {
    batch_free(batch);
  }
}

/* Room for one more record of `bytes`. */
static int batch_reserve(busd_batch_t *batch, size_t bytes) {
  if (batch->count == batch->slots_cap) {
    uint32_t cap = batch->slots_cap ? batch->slots_cap * 2 : 64;
    uint32_t *pos = realloc(batch->pos, cap * sizeof *pos);
    if (pos == NULL) return -ENOMEM;
    batch->pos = pos;
    busd_waiter_t *w = realloc(batch->waiters, cap * sizeof *w);
    if (w == NULL) return -ENOMEM;
    batch->waiters = w;
    batch->slots_cap = cap;
  }
  if ((uint64_t)batch->len + bytes > UINT32_MAX) return -ENOMEM;
  if (batch->len + bytes <= batch->cap) return 0;
  size_t cap = batch->cap ? batch->cap : 64 * 1024;
  while (cap < batch->len + bytes) cap *= 2;
  if (cap > UINT32_MAX) cap = UINT32_MAX;
  uint8_t *data = realloc(batch->data, cap);
  if (data == NULL) return -ENOMEM;
  batch->data = data;
  batch->cap = (uint32_t)cap;
  return 0;
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

int busd_part_add_segment(busd_part_t *part, int fd, uint64_t base, busd_seg_loaded_t *loaded,
                          uint64_t mtime_ms) {
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

int busd_part_init(busd_part_t *part, busd_t *b, busd_topic_t *topic, uint32_t index,
                   const char *dir) {
  memset(part, 0, sizeof *part);
  part->b = b;
  part->topic = topic;
  part->index = index;
  size_t n = strlen(dir);
  if (n >= sizeof part->dir) return -ENAMETOOLONG;
  memcpy(part->dir, dir, n + 1);
  part->cache_cap = CACHE_BATCHES_MAX;
  part->cache = calloc(part->cache_cap, sizeof *part->cache);
  return part->cache == NULL ? -ENOMEM : 0;
}

static void cache_clear(busd_part_t *part) {
  for (uint32_t i = 0; i < part->cache_len; i++)
    batch_free(part->cache[(part->cache_head + i) % part->cache_cap]);
  part->cache_len = 0;
  part->cache_bytes = 0;
}

void busd_part_deinit(busd_part_t *part) {
  if (part->cache != NULL) cache_clear(part);
  free(part->cache);
  part->cache = NULL;
  batch_free(part->acc);
  batch_free(part->writing);
  batch_free(part->spare);
  part->acc = part->writing = part->spare = NULL;
  free(part->idx_buf);
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
  return part->writing == NULL && (part->acc == NULL || part->acc->count == 0);
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
  if (part->acc == NULL) {
    part->acc = batch_new(part);
    if (part->acc == NULL) return -ENOMEM;
  }
  busd_batch_t *batch = part->acc;
  int rc = batch_reserve(batch, bytes);
  if (rc < 0) return rc;
  uint64_t offset = part->next++;
  busd_rec_write(batch->data + batch->len, offset, busd_wall_ms(), id, key, headers, payload);
  batch->pos[batch->count] = batch->len;
  batch->waiters[batch->count] = *w;
  batch->count++;
  batch->len += (uint32_t)bytes;
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

/* Room in idx_buf for the index bytes of a write of `len` bytes. */
static bool idx_buf_reserve(busd_part_t *part, uint32_t len) {
  uint64_t need = BUSD_IDX_PLAN_BYTES((uint64_t)len);
  if (need <= part->idx_cap) return true;
  if (need > UINT32_MAX) return false;
  uint8_t *p = realloc(part->idx_buf, need);
  if (p == NULL) return false;
  part->idx_buf = p;
  part->idx_cap = (uint32_t)need;
  return true;
}

/* The index side of a write job (index.c, "life of an index file"): the
 * entries of the batch for the segment it goes to, and on a roll the seal
 * of the segment it leaves. No memory for the entries: the segment goes
 * without an index file and the next start rebuilds it. */
static void write_job_index(busd_part_t *part, busd_job_t *job, busd_batch_t *batch) {
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
  if (!idx_buf_reserve(part, batch->len)) return;
  const busd_index_t *idx = job->roll ? &empty : &seg->index;
  uint64_t base = job->roll ? batch->first : seg->base;
  job->idx_len = busd_idx_plan(idx, base, job->roll, batch->first, job->pos, batch->pos,
                               batch->count, part->idx_buf);
  assert(job->idx_len <= part->idx_cap);
  job->idx_data = part->idx_buf;
  if (!job->roll) {
    job->idx_fd = seg->idx_fd;
    job->idx_pos = seg->idx_bytes;
  }
}

void busd_part_kick(busd_part_t *part) {
  busd_t *b = part->b;
  busd_batch_t *batch = part->acc;
  if (part->writing != NULL || batch == NULL || batch->count == 0) return;
  if (part->topic->state != BUSD_TOPIC_READY || part->failed) return;
  busd_seg_t *seg = part->segs_tail;
  busd_job_t *job = &part->write_job;
  job->kind = BUSD_JOB_WRITE;
  job->done = write_done;
  job->ctx = part;
  job->data = batch->data;
  job->len = batch->len;
  job->new_fd = -1;
  /* Roll at a batch boundary: a batch always lands in one segment. */
  job->roll = seg == NULL || (seg->bytes > 0 && seg->bytes + batch->len > b->cfg.segment_bytes);
  if (job->roll) {
    job->fd = -1;
    job->pos = 0;
    if (busd_seg_path(job->path, sizeof job->path, part->dir, batch->first) < 0) return;
  } else {
    job->fd = seg->fd;
    job->pos = seg->bytes;
  }
  write_job_index(part, job, batch);
  if (busd_io_submit(&b->io, job) < 0) return; /* retried by the tick */
  part->acc = NULL;
  part->writing = batch;
}

/* Tells every waiter of a durable batch. */
static void batch_notify(busd_part_t *part, busd_batch_t *batch) {
  busd_t *b = part->b;
  for (uint32_t i = 0; i < batch->count; i++) {
    const busd_waiter_t *w = &batch->waiters[i];
    if (w->gp != NULL) {
      busd_group_dead_done(w->gp, w->source_offset, 0);
      continue;
    }
    if (w->conn == NULL || !busd_conn_waiter_done(w->conn)) continue;
    bus_frame_t f;
    memset(&f, 0, sizeof f);
    f.type = BUS_PUB_ACK;
    memcpy(f.id, batch->data + batch->pos[i] + 24, BUS_ID_BYTES);
    f.has_id = true;
    f.partition = part->index;
    f.offset = batch->first + i;
    busd_conn_write(w->conn, &f);
    b->stats.pub_acked++;
  }
}

/* Refuses every record of a batch that will not be written. */
static void batch_refuse(busd_part_t *part, busd_batch_t *batch, int err) {
  for (uint32_t i = 0; i < batch->count; i++) {
    const busd_waiter_t *w = &batch->waiters[i];
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
    memcpy(f.id, batch->data + batch->pos[i] + 24, BUS_ID_BYTES);
    f.has_id = true;
    busd_conn_write(w->conn, &f);
    part->b->stats.pub_refused++;
  }
}

void busd_part_fail(busd_part_t *part) {
  busd_t *b = part->b;
  part->failed = true;
  if (part->acc != NULL) {
    b->pending_bytes -= part->acc->len;
    batch_refuse(part, part->acc, BUS_E_STORAGE);
    batch_free(part->acc);
    part->acc = NULL;
  }
  part->next = part->durable;
}

static void write_failed(busd_part_t *part, busd_batch_t *batch, int err) {
  RT_ERROR("partition write failed: refusing publishes until restart",
           RT_LF_STR("topic", part->topic->name), RT_LF_INT("partition", part->index),
           RT_LF_STR("error", rt_strerror(err)));
  batch_refuse(part, batch, BUS_E_STORAGE);
  batch_free(batch);
  busd_part_fail(part);
}

static void cache_evict(busd_part_t *part) {
  busd_batch_t *old = part->cache[part->cache_head];
  part->cache_head = (part->cache_head + 1) % part->cache_cap;
  part->cache_len--;
  part->cache_bytes -= old->len;
  batch_recycle(part, old);
}

/* A durable batch joins the cache, the oldest going when it is full.
 * False when it is larger than the whole cache: the caller recycles it. */
static bool cache_push(busd_part_t *part, busd_batch_t *batch) {
  uint64_t budget = part->b->cfg.cache_bytes;
  if (batch->len > budget) return false;
  while (part->cache_len > 0 &&
         (part->cache_len == part->cache_cap || part->cache_bytes + batch->len > budget))
    cache_evict(part);
  part->cache[(part->cache_head + part->cache_len) % part->cache_cap] = batch;
  part->cache_len++;
  part->cache_bytes += batch->len;
  return true;
}

/* The segment the batch went to: a new one after a roll. */
static busd_seg_t *written_segment(busd_part_t *part, const busd_job_t *job,
                                   const busd_batch_t *batch) {
  if (!job->roll) return part->segs_tail;
  busd_seg_t *seg = seg_new(job->new_fd, batch->first);
  if (seg == NULL) return NULL;
  seg_append(part, seg);
  return seg;
}

/* A write's index entries are on file (or not): the in-memory index takes
 * the same entries, and a segment whose index could not be written stops
 * writing it (the next start finishes it from the log). */
static void written_index(busd_part_t *part, busd_seg_t *seg, const busd_job_t *job,
                          const busd_batch_t *batch, uint64_t file_pos) {
  uint32_t before = seg->index.len;
  for (uint32_t i = 0; i < batch->count; i++)
    busd_index_add(&seg->index, batch->first + i, file_pos + batch->pos[i]);
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
  busd_batch_t *batch = part->writing;
  part->writing = NULL;
  b->pending_bytes -= batch->len;
  busd_seg_t *prev = part->segs_tail;
  busd_seg_t *seg = job->result < 0 ? NULL : written_segment(part, job, batch);
  if (seg == NULL) {
    if (job->roll && job->new_fd >= 0) close(job->new_fd);
    if (job->roll && job->new_idx_fd >= 0) close(job->new_idx_fd);
    write_failed(part, batch, job->result < 0 ? job->result : -ENOMEM);
    return;
  }
  /* The segment left behind is complete: its index is sealed (or, when
   * that failed, finished at the next start). */
  if (job->roll && prev != NULL && prev->idx_fd >= 0) {
    close(prev->idx_fd);
    prev->idx_fd = -1;
  }
  uint64_t file_pos = job->roll ? 0 : job->pos;
  written_index(part, seg, job, batch, file_pos);
  seg->bytes = file_pos + batch->len;
  seg->end = batch->first + batch->count;
  seg->mtime_ms = busd_wall_ms();
  if (part->segs == seg) part->start = seg->base;
  part->durable = seg->end;
  part->batches++;
  b->stats.batches++;
  b->stats.batch_records += batch->count;
  /* Cached before anyone is told, so that deliveries it triggers (dead
   * letters done, groups woken) read it from memory; recycled only after
   * the waiters, which read ids from it. */
  bool cached = cache_push(part, batch);
  batch_notify(part, batch);
  if (!cached) batch_recycle(part, batch);
  busd_groups_wake(part);
  busd_part_kick(part);
}

/* ------------------------------------------------------------------------ */
/* Reading from memory                                                      */
/* ------------------------------------------------------------------------ */

static busd_batch_t *cache_at(const busd_part_t *part, uint32_t i) {
  return part->cache[(part->cache_head + i) % part->cache_cap];
}

bool busd_part_cached(busd_part_t *part, uint64_t offset, busd_rec_t *rec) {
  if (part->cache_len == 0) return false;
  const busd_batch_t *newest = cache_at(part, part->cache_len - 1);
  if (offset < cache_at(part, 0)->first || offset >= newest->first + newest->count)
    return false;
  uint32_t lo = 0, hi = part->cache_len; /* last batch with first <= offset */
  while (hi - lo > 1) {
    uint32_t mid = lo + (hi - lo) / 2;
    if (cache_at(part, mid)->first <= offset) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const busd_batch_t *batch = cache_at(part, lo);
  uint64_t i = offset - batch->first;
  if (i >= batch->count) return false;
  uint32_t pos = batch->pos[i];
  /* Written by us and never on disk in between: no checksum needed. */
  return busd_rec_parse(batch->data + pos, batch->len - pos, part->b->rec_bytes_max, false,
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
