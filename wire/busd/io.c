/*
 * io.c - the I/O threads: every file operation that may block.
 *
 * The loop thread never waits on the disk. A partition's write (pwrite +
 * fdatasync), a group's read of old records, a segment deletion or an
 * offsets snapshot is a job: the loop queues it here and goes on; an I/O
 * thread runs it and sends the job's completion message back to the broker
 * actor, whose handler runs the job's done callback on the loop thread.
 *
 * Why several threads: fdatasync of different files can proceed in
 * parallel (ext4 joins them into one journal commit), so partitions synced
 * at once cost about one flush, not one each. Ordering needs no care here:
 * a partition has at most one write in flight and a group at most one
 * read, so any thread may take any job.
 *
 * The completion message is allocated from the loop's pool at submit time
 * (I/O threads have no loop and cannot allocate one). It is sent with the
 * queue mutex held, and busd_io_close() takes that mutex: once it returns
 * no thread is sending or will send, so the loop may be destroyed even if
 * a job is still stuck in the kernel.
 */
#include <errno.h>
#include <fcntl.h>
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
  int rc = write_full(fd, job->data, job->len, pos);
  if (rc < 0) return rc;
  uint64_t t0 = rt_now_ns();
  if (fdatasync(fd) < 0) return -errno;
  atomic_fetch_add_explicit(&io->fsyncs, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&io->fsync_ns, rt_now_ns() - t0, memory_order_relaxed);
  atomic_fetch_add_explicit(&io->written_bytes, job->len, memory_order_relaxed);
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

static int job_unlink(busd_job_t *job) {
  if (job->fd >= 0) close(job->fd);
  if (unlink(job->path) < 0 && errno != ENOENT) return -errno;
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

static void job_run(busd_io_t *io, busd_job_t *job) {
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

static void *io_main(void *arg) {
  busd_io_t *io = arg;
  pthread_mutex_lock(&io->mu);
  for (;;) {
    while (io->head == NULL && !io->stop) pthread_cond_wait(&io->cv, &io->mu);
    if (io->head == NULL) break; /* stopping and nothing left */
    busd_job_t *job = io->head;
    io->head = job->next;
    if (io->head == NULL) io->tail = NULL;
    pthread_mutex_unlock(&io->mu);
    job_run(io, job);
    pthread_mutex_lock(&io->mu);
    if (!io->closed) {
      rt_actor_send(io->reply_to, job->msg);
    }
  }
  pthread_mutex_unlock(&io->mu);
  return NULL;
}

/* ------------------------------------------------------------------------ */
/* The loop's side                                                          */
/* ------------------------------------------------------------------------ */

int busd_io_start(busd_io_t *io, uint32_t threads, rt_actor_t *reply_to) {
  if (threads == 0 || threads > BUSD_IO_THREADS_MAX) return RT_E_CONFIG;
  pthread_mutex_init(&io->mu, NULL);
  pthread_cond_init(&io->cv, NULL);
  io->reply_to = reply_to;
  for (uint32_t i = 0; i < threads; i++) {
    int rc = pthread_create(&io->threads[i], NULL, io_main, io);
    if (rc != 0) {
      busd_io_stop(io);
      return -rc;
    }
    io->threads_count++;
  }
  return 0;
}

int busd_io_submit(busd_io_t *io, busd_job_t *job) {
  if (job->in_flight) return -EBUSY;
  rt_msg_t *msg = rt_msg_new(BUSD_MSG_IO, 0);
  if (msg == NULL) return RT_E_POOL_EMPTY;
  msg->ptr = job;
  job->msg = msg;
  job->next = NULL;
  job->result = 0;
  job->in_flight = true;
  io->queued++;
  pthread_mutex_lock(&io->mu);
  if (io->tail != NULL) {
    io->tail->next = job;
  } else {
    io->head = job;
  }
  io->tail = job;
  pthread_cond_signal(&io->cv);
  pthread_mutex_unlock(&io->mu);
  return 0;
}

void busd_io_complete(busd_io_t *io, rt_msg_t *msg) {
  busd_job_t *job = msg->ptr;
  job->in_flight = false;
  job->msg = NULL;
  io->queued--;
  job->done(job);
}

void busd_io_close(busd_io_t *io) {
  pthread_mutex_lock(&io->mu);
  io->closed = true;
  pthread_mutex_unlock(&io->mu);
}

void busd_io_stop(busd_io_t *io) {
  if (io->threads_count == 0) return;
  pthread_mutex_lock(&io->mu);
  io->stop = true;
  io->closed = true;
  pthread_cond_broadcast(&io->cv);
  pthread_mutex_unlock(&io->mu);
  for (uint32_t i = 0; i < io->threads_count; i++) pthread_join(io->threads[i], NULL);
  io->threads_count = 0;
  pthread_mutex_destroy(&io->mu);
  pthread_cond_destroy(&io->cv);
}
