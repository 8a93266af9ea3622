/*
 * io.c - the file jobs: every file operation that may block.
 *
 * The loop thread never waits on the disk. A partition's write (pwrite +
 * fdatasync), a group's read of old records, a segment deletion or an
 * offsets snapshot is a job: the loop submits it to the I/O threads (an
 * rt_work pool) and goes on; an I/O thread runs it, and the job's done
 * callback then runs back on the loop thread, followed by the broker's
 * deferred work (busd_after_event()).
 *
 * Why several threads: fdatasync of different files can proceed in
 * parallel (ext4 joins them into one journal commit), so partitions synced
 * at once cost about one flush, not one each. Ordering needs no care here:
 * a partition has at most one write in flight and a group at most one
 * read, so any thread may take any job.
 *
 * A job is embedded in its partition, group, topic or segment, so a submit
 * allocates nothing and can fail only when the queue is full (sized below
 * for every job that can be in flight at once, but for deletions) or the
 * threads are stopping; every caller tries again on a later tick. When the
 * loop stops with jobs still in flight (a drain past its deadline), the
 * runtime takes the queued ones out and waits for the running ones as the
 * loop is destroyed: their done callbacks never run, and no I/O thread
 * touches the loop afterwards.
 */
#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "busd.h"

/* ------------------------------------------------------------------------ */
/* The operations (I/O threads)                                             */
/* ------------------------------------------------------------------------ */

static int write_full(int fd, const uint8_t *data, size_t len, uint64_t pos) {
  size_t done = 0;
  while (done < len) {
    ssize_t n = pwrite(fd, data + done, len - done, (off_t)(pos + done));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) return -EIO;
    done += (size_t)n;
  }
  return 0;
}

/* The directory part of `path`, for fsyncing a new or renamed name. */
static int fsync_parent(const char *path) {
  char dir[PATH_MAX];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (slash == NULL) return busd_fsync_dir(".");
  *slash = '\0';
  return busd_fsync_dir(dir[0] ? dir : "/");
}

/* "<base>.idx" for the segment "<base>.log" at `log_path`. */
static int idx_path_of(char *out, size_t cap, const char *log_path) {
  size_t n = strlen(log_path);
  if (n < 4 || n >= cap || strcmp(log_path + n - 4, ".log") != 0) return -EINVAL;
  memcpy(out, log_path, n - 4);
  memcpy(out + n - 4, ".idx", 5);
  return 0;
}

/* After the records are durable: their index entries, never synced (the
 * index is rebuilt from the log whenever it falls short). A failed seal
 * is not reported: that index is finished from the log at the next start.
 * Failures of the new entries go to idx_result: the segment then stops
 * writing its index. */
static void job_write_index(busd_io_t *io, busd_job_t *job) {
  if (job->seal_fd >= 0 && write_full(job->seal_fd, job->seal, sizeof job->seal, job->seal_pos) < 0)
    atomic_fetch_add_explicit(&io->errors, 1, memory_order_relaxed);
  if (job->idx_data == NULL) return;
  int fd = job->idx_fd;
  uint64_t pos = job->idx_pos;
  if (job->roll) {
    char path[PATH_MAX];
    int rc = idx_path_of(path, sizeof path, job->path);
    /* O_TRUNC: an index left by a segment of this base deleted earlier. */
    fd = rc < 0 ? rc : open(path, O_CREAT | O_TRUNC | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) {
      job->idx_result = rc < 0 ? rc : -errno;
      return;
    }
    job->new_idx_fd = fd;
    pos = 0;
  }
  if (job->idx_len > 0) job->idx_result = write_full(fd, job->idx_data, job->idx_len, pos);
  if (job->idx_result < 0) atomic_fetch_add_explicit(&io->errors, 1, memory_order_relaxed);
}

static int job_write(busd_io_t *io, busd_job_t *job) {
  int fd = job->fd;
  uint64_t pos = job->pos;
  job->new_fd = -1;
  if (job->roll) {
    /* O_EXCL: a segment named by this base must not exist yet. */
    fd = open(job->path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0644);
    if (fd < 0) return -errno;
    job->new_fd = fd;
    pos = 0;
    int rc = fsync_parent(job->path); /* the new name survives a crash */
    if (rc < 0) return rc;
  }
  /* The records in file order: those that wrapped around the partition's
   * ring follow the others. */
  int rc = write_full(fd, job->data, job->len, pos);
  if (rc == 0 && job->len2 > 0) rc = write_full(fd, job->data2, job->len2, pos + job->len);
  if (rc < 0) return rc;
  uint64_t t0 = rt_now_ns();
  if (fdatasync(fd) < 0) return -errno;
  atomic_fetch_add_explicit(&io->fsyncs, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&io->fsync_ns, rt_now_ns() - t0, memory_order_relaxed);
  atomic_fetch_add_explicit(&io->written_bytes, (uint64_t)job->len + job->len2,
                            memory_order_relaxed);
  job_write_index(io, job);
  return 0;
}

static int job_read(busd_io_t *io, busd_job_t *job) {
  size_t got = 0;
  while (got < job->len) {
    ssize_t n = pread(job->fd, job->buf + got, job->len - got, (off_t)(job->pos + got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) break;
    got += (size_t)n;
  }
  atomic_fetch_add_explicit(&io->read_bytes, got, memory_order_relaxed);
  return (int)got;
}

/* The log first: an index without its log is never read. */
static int job_unlink(busd_job_t *job) {
  if (job->fd >= 0) close(job->fd);
  if (unlink(job->path) < 0 && errno != ENOENT) return -errno;
  char idx[PATH_MAX];
  if (idx_path_of(idx, sizeof idx, job->path) < 0) return 0;
  if (unlink(idx) < 0 && errno != ENOENT) return -errno;
  return 0;
}

/* Replaces `path` with `data` atomically: a crash leaves the old file or
 * the new one, never a mix. */
static int write_atomic(const char *path, const uint8_t *data, size_t len) {
  char tmp[PATH_MAX + 8];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  int fd = open(tmp, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
  if (fd < 0) return -errno;
  int rc = write_full(fd, data, len, 0);
  if (rc == 0 && fdatasync(fd) < 0) rc = -errno;
  close(fd);
  if (rc == 0 && rename(tmp, path) < 0) rc = -errno;
  if (rc == 0) rc = fsync_parent(path);
  return rc;
}

static int mkdir_ok(const char *path) {
  if (mkdir(path, 0755) < 0 && errno != EEXIST) return -errno;
  return 0;
}

/* A topic's directory, one directory per partition, and the meta file
 * last: a topic without meta was never used and is ignored at start-up. */
static int job_mktopic(busd_job_t *job) {
  int rc = mkdir_ok(job->path);
  char sub[PATH_MAX + 16];
  for (uint32_t p = 0; p < job->partitions && rc == 0; p++) {
    snprintf(sub, sizeof sub, "%s/%u", job->path, p);
    rc = mkdir_ok(sub);
  }
  if (rc == 0) rc = busd_fsync_dir(job->path);
  char meta[64];
  int n = snprintf(meta, sizeof meta, "partitions=%u\n", job->partitions);
  snprintf(sub, sizeof sub, "%s/meta", job->path);
  if (rc == 0) rc = write_atomic(sub, (const uint8_t *)meta, (size_t)n);
  if (rc == 0) rc = fsync_parent(job->path);
  return rc;
}

static busd_job_t *job_of(rt_work_t *req) {
  return (busd_job_t *)(void *)((char *)req - offsetof(busd_job_t, work));
}

/* The work_cb: runs on an I/O thread. */
static void job_run(rt_work_t *req) {
  busd_io_t *io = req->ctx;
  busd_job_t *job = job_of(req);
  uint64_t t0 = rt_now_ns();
  int rc;
  switch (job->kind) {
  case BUSD_JOB_WRITE: rc = job_write(io, job); break;
  case BUSD_JOB_READ: rc = job_read(io, job); break;
  case BUSD_JOB_UNLINK: rc = job_unlink(job); break;
  case BUSD_JOB_SNAPSHOT: rc = write_atomic(job->path, job->data, job->len); break;
  case BUSD_JOB_MKTOPIC: rc = job_mktopic(job); break;
  default: rc = -EINVAL; break;
  }
  if (rc < 0) atomic_fetch_add_explicit(&io->errors, 1, memory_order_relaxed);
  job->result = rc;
  job->took_ns = rt_now_ns() - t0;
}

/* ------------------------------------------------------------------------ */
/* The loop's side                                                          */
/* ------------------------------------------------------------------------ */

_Static_assert(BUSD_IO_THREADS_MAX <= RT_WORK_THREADS_MAX, "more I/O threads than a pool has");

/* Extra room in the queue for segment deletions, of which retention may
 * start many at once; past it they wait for the next retention pass. */
#define UNLINKS_QUEUED 1024

/* Every job that can be waiting at once: one write per partition, one
 * read per group and partition, a snapshot and a creation per topic, and
 * the deletions. The queue is intrusive, so its bound costs no memory. */
static uint32_t queue_max(const busd_config_t *cfg) {
  uint64_t writes = (uint64_t)cfg->topics_max * BUSD_PARTITIONS_MAX;
  uint64_t reads = (uint64_t)cfg->groups_max * BUSD_PARTITIONS_MAX;
  uint64_t topic_jobs = 2u * (uint64_t)cfg->topics_max;
  uint64_t sum = writes + reads + topic_jobs + UNLINKS_QUEUED;
  return sum > UINT32_MAX ? UINT32_MAX : (uint32_t)sum;
}

int busd_io_start(busd_io_t *io, busd_t *b) {
  uint32_t threads = b->cfg.io_threads;
  if (threads == 0 || threads > BUSD_IO_THREADS_MAX) return RT_E_CONFIG;
  io->b = b;
  return rt_work_pool_start(&io->pool, "busd_io", threads, queue_max(&b->cfg));
}

/* The after_cb: back on the loop thread. */
static void job_after(rt_work_t *req, int status) {
  busd_io_t *io = req->ctx;
  busd_job_t *job = job_of(req);
  assert(job->in_flight);
  assert(io->queued > 0);
  job->in_flight = false;
  io->queued--;
  if (status < 0) job->result = status; /* cancelled: job_run never ran */
  job->done(job);
  busd_after_event(io->b);
}

int busd_io_submit(busd_io_t *io, busd_job_t *job) {
  if (NEVER(job->in_flight)) return -EBUSY;
  job->result = 0;
  int rc = rt_work_submit(io->b->loop, io->pool, &job->work, job_run, job_after, io);
  if (rc < 0) return rc;
  job->in_flight = true;
  io->queued++;
  return 0;
}

void busd_io_stop(busd_io_t *io) {
  rt_work_pool_stop(io->pool);
  io->pool = NULL;
}
