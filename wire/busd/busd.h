/*
 * busd.h - the broker's private header, shared by the files of wire/busd/.
 *
 * One loop thread runs everything that touches broker state: connections,
 * topics, partitions, consumer groups, the HTTP port. File I/O that may
 * block (write + fdatasync, reads of old records, renames, unlinks) runs on
 * the runtime's worker threads (rt_work); each job's done callback runs
 * back on the loop thread, so the loop never blocks. Start-up recovery (scanning
 * segments, cutting torn tails) runs on the main thread before the loop.
 *
 * Files, bottom up:
 *   segment.c  CRC32C, the record format, segment scan and torn-tail cut
 *   io.c       the file jobs, run on the I/O threads (rt_work)
 *   log.c      partitions: append, group commit, the durable-record cache,
 *              fetching records for delivery, retention
 *   store.c    the data directory: topics, start-up recovery, offsets files
 *   groups.c   consumer groups: members, assignment, windows, redelivery,
 *              dead letters, committed offsets
 *   server.c   connections: frames in, frames out
 *   http.c     /healthz, /readyz, /metrics
 *   main.c     configuration, start-up, shutdown
 */
#ifndef BUSD_H
#define BUSD_H

#include <limits.h>
#include <stdatomic.h>

#include "bus.h"
#include "http.h"
#include "rt.h"
#include "tls.h"

/* ------------------------------------------------------------------------ */
/* Configuration                                                            */
/* ------------------------------------------------------------------------ */

#define BUSD_PARTITIONS_MAX 256
#define BUSD_IO_THREADS_MAX 32
/* Connections to the HTTP port (health and metrics: a few scrapers). */
#define BUSD_HTTP_CONNS_MAX 64
/* Internal topic names may be longer than wire names: "<topic>.dead". */
#define BUSD_TOPIC_BYTES_MAX (BUS_NAME_BYTES_MAX + 5)

typedef struct busd_config {
  const char *host;
  uint32_t port;
  uint32_t http_port;
  const char *data_dir;
  uint32_t partitions;          /* for new topics */
  uint32_t frame_bytes_max;
  uint32_t ack_timeout_ms;
  uint32_t max_attempts;
  uint32_t retry_backoff_ms;    /* first NACK back-off, doubles per attempt */
  uint32_t retry_backoff_max_ms;
  uint32_t retention_ms;
  uint32_t segment_bytes;       /* roll to a new segment past this */
  uint32_t cache_bytes;         /* durable records kept in memory, per partition */
  uint32_t conns_max;
  uint32_t subs_max;            /* SUBs (group members) at once */
  uint32_t topics_max;
  uint32_t groups_max;
  uint32_t window_max;          /* in-flight offsets per group and partition */
  uint32_t io_threads;
  uint32_t pending_bytes_max;   /* unsynced bytes before PUBs are refused */
  uint32_t out_bytes_max;       /* queued output per connection */
  uint32_t commit_interval_ms;  /* how often committed offsets are stored */
  uint32_t idle_timeout_ms;     /* a silent connection is closed */
  uint32_t drain_ms;            /* graceful shutdown deadline */
  const char *tls_ca;           /* TLS_CA: mutual TLS on the bus port; NULL: plain */
  const char *tls_cert;         /* TLS_CERT, TLS_KEY: busd's own pair */
  const char *tls_key;
  rt_log_level_t log_level;
} busd_config_t;

/* Reads BUSD_* variables (defaults in main.c's --help). Returns 0 or
 * RT_E_CONFIG (already logged). */
int busd_config_load(busd_config_t *cfg);

/* ------------------------------------------------------------------------ */
/* Records and segments (segment.c)                                         */
/* ------------------------------------------------------------------------ */

/* A record, little-endian, as written in segment files (BUS_PROTOCOL.md):
 *   0 u32 length of the whole record   4 u32 crc32c of bytes [8, length)
 *   8 u64 offset                      16 u64 stored ms (Unix)
 *  24 16-byte id                      40 u16 key length
 *  42 u16 format (1)                  44 u32 headers length
 *  48 u32 data length                 52 key, headers, data */
#define BUSD_REC_HEADER_BYTES 52u
#define BUSD_REC_FORMAT 1u
#define BUSD_INDEX_STRIDE (64u * 1024) /* one index entry per this many bytes */

/* CRC32C (Castagnoli), hardware-accelerated when the CPU has SSE4.2.
 * Start with crc 0; feed the result back in to continue. */
uint32_t busd_crc32c(uint32_t crc, const void *data, size_t len);

/* A record read from a buffer; slices point into that buffer. */
typedef struct busd_rec {
  uint64_t offset;
  uint64_t stored_ms;
  uint8_t id[BUS_ID_BYTES];
  bus_bytes_t key;
  bus_bytes_t headers;
  bus_bytes_t payload;
  uint32_t bytes; /* the whole record */
} busd_rec_t;

/* Bytes a record with these parts takes. */
size_t busd_rec_size(size_t key_len, size_t hdr_len, size_t data_len);

/* Writes a record (header, parts, checksum) at dst, which has room for
 * busd_rec_size() bytes. */
void busd_rec_write(uint8_t *dst, uint64_t offset, uint64_t stored_ms,
                    const uint8_t id[BUS_ID_BYTES], bus_bytes_t key,
                    bus_bytes_t headers, bus_bytes_t payload);

/* Reads the record at p with `avail` bytes available. Returns its size,
 * 0 when it is incomplete (more bytes needed: at the end of a file that
 * is a torn tail), or BUS_E_CORRUPT (impossible length or format, or a
 * checksum mismatch when `verify`). Lengths are checked before use. */
int64_t busd_rec_parse(const uint8_t *p, size_t avail, uint32_t rec_bytes_max,
                       bool verify, busd_rec_t *out);

/* The offset -> file position index of one segment, in memory: an entry
 * at least every BUSD_INDEX_STRIDE bytes, so a read starts at most one
 * stride before the record it wants. Its copy on disk is the segment's
 * index file (index.c). */
typedef struct busd_index {
  uint64_t *offsets;
  uint64_t *positions;
  uint32_t len;
  uint32_t cap;
  uint64_t last_pos; /* position of the last entry */
} busd_index_t;

/* Records the record at `pos` when a stride has passed since the last
 * entry (or it is the first). Returns 0 or -ENOMEM. */
int busd_index_add(busd_index_t *idx, uint64_t offset, uint64_t pos);

/* Makes room for `entries` entries in all, so that adding up to that many
 * allocates nothing. Returns 0 or -ENOMEM. */
int busd_index_reserve(busd_index_t *idx, uint32_t entries);

/* Entries a segment of `bytes` bytes may have: one a stride, the first,
 * and its seal. */
#define BUSD_INDEX_ENTRIES_MAX(bytes) ((uint32_t)((bytes) / BUSD_INDEX_STRIDE) + 2u)

/* Position of the last entry at or before `offset` (0 when none); its
 * offset goes to *entry_offset (`base` when none). */
uint64_t busd_index_find(const busd_index_t *idx, uint64_t offset, uint64_t base,
                         uint64_t *entry_offset);

void busd_index_free(busd_index_t *idx);

/* What a scan of one segment file found. */
typedef struct busd_scan {
  uint64_t file_bytes;  /* size of the file */
  uint64_t valid_bytes; /* whole, valid records from the start */
  uint64_t next_offset; /* after the last valid record; base when none */
  uint64_t records;
  uint64_t read_bytes;  /* bytes of the file read */
  int stop;             /* 0: clean end; BUS_E_TRUNCATED: an incomplete
                         * record at the end; BUS_E_CORRUPT: a bad length,
                         * checksum or offset sequence */
} busd_scan_t;

/* Reads a segment from file position `pos`, where the record with
 * `offset` starts, to its end, checking each record's length, checksum and
 * offset (offset, offset + 1, ...), and adds every record to `index` when
 * non-NULL (busd_index_add() keeps one a stride). Blocking: start-up or I/O
 * threads only. Returns 0 (the scan result says where it stopped) or -errno. */
int busd_seg_scan_from(int fd, uint64_t pos, uint64_t offset, uint32_t rec_bytes_max,
                       busd_scan_t *out, busd_index_t *index);

/* busd_seg_scan_from() the start of a segment whose first offset is `base`. */
int busd_seg_scan(int fd, uint64_t base, uint32_t rec_bytes_max, busd_scan_t *out,
                  busd_index_t *index);

/* Cuts the file where the scan stopped, when it ends in anything but whole
 * valid records (ftruncate + fdatasync): the torn-tail recovery. Returns the
 * bytes cut (>= 0) or -errno. */
int64_t busd_seg_cut(int fd, const busd_scan_t *scan);

/* busd_seg_scan() and busd_seg_cut(). Returns the bytes cut or -errno. */
int64_t busd_seg_recover(int fd, uint64_t base, uint32_t rec_bytes_max,
                         busd_scan_t *out, busd_index_t *index);

/* pread until `len` bytes or the end of the file; *got says how many. */
int busd_pread_full(int fd, uint8_t *buf, size_t len, uint64_t pos, size_t *got);

/* Formats "<dir>/<base, 20 digits>.log". Returns 0 or -ENAMETOOLONG. */
int busd_seg_path(char *out, size_t cap, const char *dir, uint64_t base);

/* Parses a segment file name ("00000000000000000042.log") into its base. */
bool busd_seg_name_parse(const char *name, uint64_t *base);

/* fsyncs a directory, so names created or removed in it are durable. */
int busd_fsync_dir(const char *dir);

/* ------------------------------------------------------------------------ */
/* Segment index files (index.c)                                            */
/* ------------------------------------------------------------------------ */

/* "<base>.idx" beside "<base>.log", little-endian (life of an index file:
 * index.c):
 *   header, 32 bytes: 0 "BUSIDX01"  8 u32 version (1)  12 u32 stride
 *                     16 u64 base   24 u32 entry bytes (16)
 *                     28 u32 crc32c of bytes [0, 28)
 *   entries, 16 bytes: 0 u32 offset - base  4 u32 crc32c of bytes [0, 4)
 *                     and [8, 16)  8 u64 file position of that record
 * An entry whose position is the log's size says where the next record
 * would go: written when the segment is closed, it seals the index. */
#define BUSD_IDX_HEADER_BYTES 32u
#define BUSD_IDX_ENTRY_BYTES 16u
#define BUSD_IDX_VERSION 1u

/* Bytes of index a write of `len` bytes of records can add: an entry per
 * stride and one more, after a header when the write starts a segment. */
#define BUSD_IDX_PLAN_BYTES(len) \
  (BUSD_IDX_HEADER_BYTES + ((len) / BUSD_INDEX_STRIDE + 1u) * BUSD_IDX_ENTRY_BYTES)

/* Formats "<dir>/<base, 20 digits>.idx". Returns 0 or -ENAMETOOLONG. */
int busd_idx_path(char *out, size_t cap, const char *dir, uint64_t base);

/* Writes an index file's header for the segment starting at `base`. */
void busd_idx_header(uint8_t out[BUSD_IDX_HEADER_BYTES], uint64_t base);

/* Writes one entry: the record with `offset` starts at `pos`. */
void busd_idx_entry(uint8_t out[BUSD_IDX_ENTRY_BYTES], uint64_t base, uint64_t offset,
                    uint64_t pos);

/* Reads an index file's bytes into `idx` (which must be empty), checking
 * the header (magic, version, stride, base, checksum), every entry's
 * checksum, that the first entry is (base, 0), that offsets and positions
 * only grow, and that no position is past `log_bytes`. A torn append (a
 * partial last entry, or entries of zeros at the end, what a crash may
 * leave since the file is never synced) ends the entries without being an
 * error. Returns the entries read (>= 0), BUS_E_CORRUPT or -ENOMEM. */
int busd_idx_parse(const uint8_t *p, size_t len, uint64_t base, uint64_t log_bytes,
                   busd_index_t *idx);

/* Encodes the entries that records at file positions file_pos + pos[i]
 * (offsets first + i) will add to `idx` through busd_index_add(), without
 * changing it; after a header when `header`. Returns the bytes written to
 * `out`, at most BUSD_IDX_PLAN_BYTES(bytes those records span). */
uint32_t busd_idx_plan(const busd_index_t *idx, uint64_t base, bool header, uint64_t first,
                       uint64_t file_pos, const uint32_t *pos, uint32_t count, uint8_t *out);

/* How start-up came to know a segment. */
typedef enum busd_idx_how {
  BUSD_IDX_TRUSTED = 1, /* closed, its index sealed: the log was not read */
  BUSD_IDX_TAIL,        /* read from the index's last entry to the end */
  BUSD_IDX_MISSING,     /* no index file: the whole log read, index written */
  BUSD_IDX_DAMAGED,     /* index unusable: the whole log read, index rewritten */
} busd_idx_how_t;

/* What busd_seg_load() found. */
typedef struct busd_seg_loaded {
  busd_scan_t scan;      /* as a scan of the whole log would say */
  busd_index_t index;    /* the caller takes it */
  busd_idx_how_t how;
  int64_t cut;           /* torn-tail bytes cut from the log */
  int idx_fd;            /* the last segment: its index, open to append; -1 */
  uint64_t idx_bytes;    /* length of the index file */
  int idx_err;           /* 0, or why the index file could not be written
                          * (the log is fine; the next start rebuilds it) */
} busd_seg_loaded_t;

/* Start-up of one segment (blocking): through its index file at
 * `idx_path` when that is sound, else by scanning the whole log and
 * writing the index anew. `last`: the partition's last segment, whose
 * end is always found by reading from its last index entry, and whose
 * torn tail is cut. Returns 0 or -errno (out->index freed then). */
int busd_seg_load(int fd, const char *idx_path, uint64_t base, bool last,
                  uint32_t rec_bytes_max, busd_seg_loaded_t *out);

/* ------------------------------------------------------------------------ */
/* I/O threads (io.c)                                                       */
/* ------------------------------------------------------------------------ */

typedef struct busd_job busd_job_t;
typedef struct busd busd_t;

typedef enum busd_job_kind {
  BUSD_JOB_WRITE = 1, /* [create segment,] pwrite, fdatasync */
  BUSD_JOB_READ,      /* pread */
  BUSD_JOB_UNLINK,    /* close and unlink a segment */
  BUSD_JOB_SNAPSHOT,  /* write a file atomically: tmp, fsync, rename */
  BUSD_JOB_MKTOPIC,   /* create a topic's directories and meta file */
} busd_job_kind_t;

/* Runs on the loop thread when the job is done. */
typedef void (*busd_job_done_fn)(busd_job_t *job);

/* One blocking file operation, owned by whoever submits it (embedded in a
 * partition, group or topic): the submit allocates nothing. Only one
 * submission at a time. The fields under "in" are read by the I/O thread,
 * "out" written by it; neither side touches the other's between submit and
 * done. */
struct busd_job {
  busd_job_kind_t kind;
  busd_job_done_fn done;
  void *ctx;
  rt_work_t work;       /* the runtime's request; work.ctx is the busd_io_t */
  bool in_flight;       /* submitted, done not yet called */
  /* in */
  int fd;               /* WRITE (unless roll), READ, UNLINK */
  uint64_t pos;         /* WRITE, READ */
  const uint8_t *data;  /* WRITE, SNAPSHOT */
  uint32_t len;         /* WRITE, SNAPSHOT; READ: bytes wanted */
  uint8_t *buf;         /* READ */
  bool roll;            /* WRITE: create `path` first and write there */
  uint32_t partitions;  /* MKTOPIC */
  uint32_t gen;         /* SNAPSHOT: its number (the topic's snap_gen_next) */
  char path[PATH_MAX];  /* new segment, file to unlink or replace, topic dir */
  const uint8_t *data2; /* WRITE: the records that wrapped around the ring */
  uint32_t len2;
  /* WRITE: the segment's index, written after the records are synced and
   * never synced itself (it can always be rebuilt from the log). With a
   * roll, idx_data starts with a header and goes to a new file named like
   * `path`, and `seal` ends the previous segment's index. */
  int idx_fd;           /* no roll: the index to append to, or -1 */
  uint64_t idx_pos;
  const uint8_t *idx_data;
  uint32_t idx_len;
  int seal_fd;          /* roll: the previous segment's index, or -1 */
  uint64_t seal_pos;
  uint8_t seal[BUSD_IDX_ENTRY_BYTES];
  /* out */
  int result;           /* 0 / bytes read, or -errno (-ECANCELED: not run) */
  int new_fd;           /* WRITE with roll */
  int new_idx_fd;       /* WRITE with roll: the new index, or -1 */
  int idx_result;       /* WRITE: 0 or -errno writing index entries */
  uint64_t took_ns;
};

typedef struct busd_io {
  rt_work_pool_t *pool; /* the I/O threads */
  busd_t *b;            /* told after every completion */
  /* Counters, written by I/O threads, read by /metrics. */
  _Atomic uint64_t fsyncs;
  _Atomic uint64_t fsync_ns;
  _Atomic uint64_t written_bytes;
  _Atomic uint64_t read_bytes;
  _Atomic uint64_t errors;
  uint32_t queued;      /* loop-side count of jobs in flight */
} busd_io_t;

/* Starts b->cfg.io_threads I/O threads (main thread, at start-up). After
 * each job's done callback, busd_after_event(b) runs. */
int busd_io_start(busd_io_t *io, busd_t *b);

/* Queues a job (loop thread). Returns 0, or RT_E_LIMIT when the queue is
 * full or RT_E_CLOSED when stopping (try again later); done is then never
 * called. */
int busd_io_submit(busd_io_t *io, busd_job_t *job);

/* Stops and joins the threads (main thread, after the loop has stopped;
 * the loop took its unfinished jobs with it). */
void busd_io_stop(busd_io_t *io);

/* ------------------------------------------------------------------------ */
/* Partitions (log.c)                                                       */
/* ------------------------------------------------------------------------ */

typedef struct busd_topic busd_topic_t;
typedef struct busd_part busd_part_t;
typedef struct busd_group busd_group_t;
typedef struct busd_gp busd_gp_t;
typedef struct busd_member busd_member_t;
typedef struct busd_conn busd_conn_t;

/* Who is told when a record is durable: a connection (PUB_ACK; it stays
 * allocated until all its waiters are resolved), or a group whose dead
 * letter this record is (the source offset is done). */
typedef struct busd_waiter {
  busd_conn_t *conn;
  busd_gp_t *gp;
  uint64_t source_offset;
} busd_waiter_t;

/* Records a partition can hold in memory at once, at most one per this
 * many bytes of its ring: a record of ours (an event with its headers) is
 * a few hundred bytes. A flood of smaller ones fills the table first: the
 * cache then keeps fewer records, and past it appends wait. */
#define BUSD_RING_BYTES_PER_RECORD 256u

/* One segment file of a partition. Loop thread only; I/O jobs get copies
 * of what they need (fd, positions). */
typedef struct busd_seg {
  struct busd_seg *next;
  int fd;
  uint64_t base;           /* first offset */
  uint64_t end;            /* offset after the last record */
  uint64_t bytes;          /* valid bytes in the file */
  uint64_t mtime_ms;       /* last append (wall clock) */
  uint32_t refs;           /* reads in flight */
  bool deleting;
  busd_index_t index;
  int idx_fd;              /* its index file while appended to, else -1 */
  uint64_t idx_bytes;      /* length of the index file */
  busd_job_t unlink_job;
} busd_seg_t;

struct busd_part {
  busd_t *b;
  busd_topic_t *topic;
  uint32_t index;
  char dir[PATH_MAX];
  busd_seg_t *segs;        /* oldest first; the last one is appended to */
  busd_seg_t *segs_tail;
  uint32_t segs_count;
  uint64_t start;          /* oldest retained offset */
  uint64_t next;           /* offset of the next record appended */
  uint64_t durable;        /* records below are fsynced: deliverable */
  /* Records in memory (log.c, "life of a record"): one ring, made with
   * the partition, holding offsets [mem_first, next) in order: durable
   * ones kept for delivery (the cache), the batch being written
   * [durable, w_end), and those accumulating [w_end, next). */
  uint8_t *ring;
  uint32_t ring_bytes;
  uint32_t ring_tail;      /* the record at mem_first */
  uint32_t ring_head;      /* where the next record goes */
  uint32_t ring_gap;       /* while wrapped: where the records at the top end */
  bool ring_wrapped;       /* [ring_tail, ring_gap) then [0, ring_head) */
  uint64_t mem_first;
  uint64_t keep_from;      /* records from here may not be dropped now */
  /* Per record in the ring, at offset & recs_mask. */
  uint32_t *rec_at;        /* where it is in the ring */
  busd_waiter_t *rec_waiter; /* whom to tell once it is durable */
  uint32_t recs_mask;
  uint64_t w_end;          /* the write in flight ends here (== durable: none) */
  bool writing;
  uint32_t w_bytes;        /* its bytes, and those accumulating */
  uint32_t acc_bytes;
  uint32_t *wpos;          /* each written record's place in its write */
  busd_job_t write_job;
  uint8_t *idx_buf;        /* the write's index entries (write_job.idx_data) */
  uint32_t idx_cap;
  bool kick_queued;        /* on the broker's kick list */
  busd_part_t *kick_next;
  bool failed;             /* a write failed: refuse PUBs until restart */
  /* Counters. */
  uint64_t appended;
  uint64_t batches;
};

/* Initialises a partition of `topic` whose files live in `dir`, with its
 * ring: cache_bytes, and room for a write and an append of the largest
 * record beyond them. Returns 0, -ENAMETOOLONG or -ENOMEM. */
int busd_part_init(busd_part_t *part, busd_t *b, busd_topic_t *topic, uint32_t index,
                   const char *dir);

/* Frees memory and closes files (after the loop has stopped). */
void busd_part_deinit(busd_part_t *part);

/* Adds a recovered segment (start-up): takes ownership of fd, and of the
 * index and index file in `loaded`. `last`: the partition's last segment,
 * appended to from now on, whose index is given now all the room it will
 * need. */
int busd_part_add_segment(busd_part_t *part, int fd, uint64_t base,
                          busd_seg_loaded_t *loaded, uint64_t mtime_ms, bool last);

/* Appends a record; `w` is told when it is durable. The write starts at
 * the next busd_log_kick() (after the current input chunk), so records
 * arriving together share one fdatasync. Returns the offset (>= 0), or
 * BUS_E_STORAGE (partition failed), BUS_E_LIMIT (larger than a record may
 * be), BUS_E_OVERLOADED (its ring is full of records not yet durable: try
 * again later). Allocates nothing. */
int64_t busd_part_append(busd_part_t *part, const uint8_t id[BUS_ID_BYTES],
                         bus_bytes_t key, bus_bytes_t headers, bus_bytes_t payload,
                         const busd_waiter_t *w);

/* Starts the writes of every partition appended to since the last call. */
void busd_log_kick(busd_t *b);

/* Starts a partition's write if it has records and none is in flight. */
void busd_part_kick(busd_part_t *part);

/* Stops the partition taking records (its storage failed) and refuses the
 * ones not yet written: their waiters get BUS_E_STORAGE. */
void busd_part_fail(busd_part_t *part);

/* Finds a durable record in memory. Returns true and fills rec. */
bool busd_part_cached(busd_part_t *part, uint64_t offset, busd_rec_t *rec);

/* The segment holding `offset`, or NULL (deleted or never written). */
busd_seg_t *busd_part_segment(busd_part_t *part, uint64_t offset);

/* Deletes old segments every group has passed (called periodically). */
void busd_part_retention(busd_part_t *part, uint64_t min_committed, uint64_t now_ms);

/* True when no write is queued or in flight. */
bool busd_part_idle(const busd_part_t *part);

/* ------------------------------------------------------------------------ */
/* Topics and the data directory (store.c)                                  */
/* ------------------------------------------------------------------------ */

typedef enum busd_topic_state {
  BUSD_TOPIC_CREATING = 1, /* directories being made: appends wait */
  BUSD_TOPIC_READY,
  BUSD_TOPIC_FAILED,
} busd_topic_state_t;

struct busd_topic {
  busd_t *b;
  char name[BUSD_TOPIC_BYTES_MAX + 1];
  uint32_t name_len;
  char dir[PATH_MAX];
  busd_topic_state_t state;
  uint32_t parts_count;
  busd_part_t *parts;
  busd_group_t *groups;    /* consumer groups of this topic */
  busd_job_t mk_job;
  /* Committed offsets of all its groups, stored as one file. */
  busd_job_t snap_job;
  bus_buf_t snap_buf;
  bool snap_dirty;
  bool snap_again;         /* a failure wants a snapshot after this one */
  uint64_t snap_last_ms;
  /* Snapshots are numbered: the next one built gets snap_gen_next; the
   * last one on disk is snap_gen_done. A failed delivery waits for the
   * snapshot that records its failure count before it is retried. */
  uint32_t snap_gen_next;
  uint32_t snap_gen_done;
  uint64_t dead_letters;   /* records this topic sent to its .dead topic */
};

/* Finds a topic by name, or NULL. */
busd_topic_t *busd_topic_find(busd_t *b, const uint8_t *name, uint32_t len);

/* Finds or creates a topic (creation is asynchronous: appends wait until
 * its directories exist). NULL when topics_max topics exist. */
busd_topic_t *busd_topic_get(busd_t *b, const uint8_t *name, uint32_t len);

/* The partition of a key: FNV-1a of the key (of the id when the key is
 * empty) modulo the topic's partitions, stable across restarts. */
uint32_t busd_topic_partition(const busd_topic_t *t, bus_bytes_t key,
                              const uint8_t id[BUS_ID_BYTES]);

/* Start-up (main thread, blocking allowed): creates the data directory,
 * loads every topic, recovers its segments (cutting torn tails) and its
 * groups' committed offsets. Returns 0 or a negative error (logged). */
int busd_store_open(busd_t *b);

/* Starts writing the committed offsets of topics whose groups changed. */
void busd_store_commit(busd_t *b, bool force);

/* Topics whose creation could not be queued (message pool empty) try
 * again (called periodically). */
void busd_store_retry(busd_t *b);

/* True when no snapshot or topic creation is in flight. */
bool busd_store_idle(busd_t *b);

/* Frees every topic (after the loop and the I/O threads have stopped). */
void busd_store_close(busd_t *b);

/* ------------------------------------------------------------------------ */
/* Consumer groups (groups.c)                                               */
/* ------------------------------------------------------------------------ */

/* The state of one offset inside a group's window. */
typedef enum busd_slot_state {
  BUSD_SLOT_FREE = 0,
  BUSD_SLOT_INFLIGHT,     /* delivered, waiting for ACK/NACK/timeout */
  BUSD_SLOT_RETRY,        /* to be delivered again once due */
  BUSD_SLOT_ACKED,        /* done, waiting for lower offsets */
  BUSD_SLOT_DEAD,         /* out of attempts: to be copied to .dead */
  BUSD_SLOT_DEAD_PENDING, /* copy appended, waiting for it to be durable */
} busd_slot_state_t;

typedef struct busd_slot {
  uint8_t state;
  uint16_t attempt;        /* deliveries so far */
  uint16_t failures;       /* of those, failed (NACK, timeout, member gone);
                            * stored in the offsets snapshot */
  uint32_t persist_gen;    /* RETRY: not before snapshot this is done */
  busd_member_t *member;   /* INFLIGHT: to whom */
  uint64_t due_ms;         /* INFLIGHT: ack deadline; RETRY: not before */
} busd_slot_t;

/* A failure count loaded from the offsets snapshot at start-up. */
typedef struct busd_restored {
  uint64_t offset;
  uint16_t failures;
} busd_restored_t;

/* The last reasons given with NACKs, per group and partition: a few, for
 * the dead letter's x-dead-error (older ones are forgotten). */
#define BUSD_WHY_SLOTS 8
typedef struct busd_why {
  uint64_t offset;
  bool used;
  char text[BUS_NACK_WHY_BYTES_MAX + 1];
} busd_why_t;

/* A group's view of one partition: offsets below `committed` are done,
 * [committed, next) are in the window (slot = offset & mask). */
struct busd_gp {
  busd_group_t *group;
  busd_part_t *part;
  uint64_t committed;
  uint64_t next;
  busd_slot_t *slots;
  uint32_t mask;
  uint32_t pending;        /* slots in RETRY or DEAD */
  uint32_t in_flight;      /* slots INFLIGHT */
  busd_member_t *owner;
  /* Records read from disk for deliveries not in the partition's cache:
   * offsets [r_lo, r_hi), record i at rbuf + rpos[i]. One read at a time. */
  busd_job_t read_job;
  busd_seg_t *read_seg;
  uint64_t read_first;     /* offset of the record at the read position */
  uint64_t read_want;      /* the offset the read is for */
  uint8_t *rbuf;
  uint32_t rcap;
  uint32_t *rpos;
  uint32_t rpos_cap;
  uint64_t r_lo;
  uint64_t r_hi;
  /* Where the last read stopped, so catching up reads sequentially. */
  uint64_t rnext_base;     /* segment (by base offset); UINT64_MAX: none */
  uint64_t rnext_off;
  uint64_t rnext_pos;
  /* An offset whose record failed its checksum on read: skipped. */
  uint64_t skip_offset;
  bool skip_valid;
  /* Failure counts of offsets in the window when busd last stopped,
   * sorted; consumed as the window passes them. */
  busd_restored_t *restored;
  uint32_t restored_count;
  uint32_t restored_pos;
  busd_why_t why[BUSD_WHY_SLOTS];
  uint32_t why_next;
};

struct busd_group {
  busd_t *b;
  busd_topic_t *topic;
  char name[BUS_NAME_BYTES_MAX + 1];
  uint32_t name_len;
  busd_gp_t *gps;          /* one per partition */
  busd_member_t *members;  /* in join order */
  uint32_t members_count;
  busd_group_t *next;      /* in the topic's list */
  /* Counters. */
  uint64_t delivered;
  uint64_t redelivered;
  uint64_t acked;
  uint64_t nacked;
  uint64_t timeouts;
  uint64_t dead;
};

struct busd_member {
  busd_conn_t *conn;
  busd_group_t *group;
  uint32_t id;
  uint32_t max_in_flight;
  uint32_t in_flight;
  busd_member_t *next_in_group;
  busd_member_t *next_in_conn;
  busd_gp_t **owned;       /* partitions assigned to it */
  uint32_t owned_count;
  uint32_t rr;             /* where the next pump starts, for fairness */
};

/* Finds or creates a group of `topic` (start-up load and SUB). NULL when
 * groups_max is reached or memory runs out. */
busd_group_t *busd_group_get(busd_t *b, busd_topic_t *topic, const uint8_t *name,
                             uint32_t len);

/* Sets a partition's committed offset (start-up load only). */
void busd_group_set_committed(busd_group_t *g, uint32_t partition, uint64_t committed);

/* Gives a partition the failure counts stored with its offsets (start-up
 * load only); takes the array (sorted by offset, malloc'd). */
void busd_group_set_restored(busd_group_t *g, uint32_t partition, busd_restored_t *restored,
                             uint32_t count);

/* A snapshot with the failure counts it records is on disk: retries that
 * waited for it may go. */
void busd_groups_persisted(busd_topic_t *t);

/* Starts a snapshot of the topic's offsets and failure counts now, or
 * right after the one in flight. */
void busd_store_snapshot_soon(busd_topic_t *t);

/* A connection's SUB. Returns 0, RT_E_POOL_EMPTY (subs_max) or -ENOMEM. */
int busd_group_join(busd_t *b, busd_conn_t *conn, busd_group_t *g,
                    uint32_t max_in_flight);

/* A connection is going away: its members leave, their deliveries are
 * redelivered to the others. */
void busd_group_conn_gone(busd_t *b, busd_conn_t *conn);

/* ACK and NACK from any member of the group; stale ones are ignored. */
void busd_group_ack(busd_group_t *g, uint32_t partition, uint64_t offset);
void busd_group_nack(busd_group_t *g, uint32_t partition, uint64_t offset,
                     bus_bytes_t why);

/* A dead-letter copy is durable: its source offset is done. */
void busd_group_dead_done(busd_gp_t *gp, uint64_t source_offset, int err);

/* New durable records in a partition: deliver to every group. */
void busd_groups_wake(busd_part_t *part);

/* The connection can take more output: pump its members. */
void busd_groups_conn_writable(busd_conn_t *conn);

/* Periodic work: ack timeouts and due redeliveries. */
void busd_groups_tick(busd_t *b, uint64_t now_ms);

/* The lowest committed offset of a partition over every group (UINT64_MAX
 * when the topic has none), for retention. */
uint64_t busd_groups_min_committed(busd_topic_t *t, uint32_t partition);

/* Frees a group (after the loop has stopped). */
void busd_group_free(busd_group_t *g);

/* ------------------------------------------------------------------------ */
/* Connections (server.c)                                                   */
/* ------------------------------------------------------------------------ */

typedef enum busd_conn_state {
  BUSD_CONN_OPEN = 1,
  BUSD_CONN_FLUSHING,      /* last frames queued (ERR, drain): send them */
  BUSD_CONN_LINGER,        /* write side shut: discard input until EOF */
  BUSD_CONN_CLOSING,       /* waiting for ops before closing the fd */
} busd_conn_state_t;

struct busd_conn {
  rt_actor_t actor;
  busd_t *b;
  int fd;
  busd_conn_state_t state;
  uint32_t waiters;        /* its PUBs appended, not yet durable or refused */
  rt_op_t recv_op;
  rt_op_t send_op;
  rt_op_t cancel_op;
  rt_op_t close_op;
  bus_decoder_t dec;
  bus_buf_t out;           /* frames waiting to be sent */
  bus_buf_t sending;       /* the buffer the kernel is reading */
  void *tls;               /* the TLS filter's state, with TLS_CA; else NULL */
  http_buf_t tls_plain;    /* what one recv decrypted to */
  http_buf_t tls_wire;     /* records waiting to go into `sending` */
  bool hello;
  bool eof;
  bool overflow;           /* output cap hit: closed at the next flush */
  bool flush_queued;
  busd_conn_t *flush_next;
  busd_member_t *members;
  uint64_t last_rx_ms;
  uint64_t linger_until_ms;
  char name[BUS_CLIENT_NAME_BYTES_MAX + 1];
  busd_conn_t *next;
  busd_conn_t *prev;
};

/* Output above this stops deliveries to the connection until it drains. */
#define BUSD_CONN_OUT_HIGH_WATER (1u << 20)

/* Appends a frame to the connection's output; the send starts at the next
 * busd_conns_flush(). A connection whose output is full is closed. */
void busd_conn_write(busd_conn_t *c, const bus_frame_t *f);

/* True when deliveries may be appended now. */
bool busd_conn_writable(const busd_conn_t *c);

/* One of the connection's PUBs is resolved (durable or refused). Returns
 * true when the answer should be written (the connection is open); a
 * closing connection is freed once its last waiter is resolved. */
bool busd_conn_waiter_done(busd_conn_t *c);

/* Starts sends of every connection written to since the last call. */
void busd_conns_flush(busd_t *b);

/* Opens the listener and starts accepting (loop thread). */
int busd_server_start(busd_t *b);

/* Stops accepting and closes the listener (drain, first step). */
void busd_server_stop_listening(busd_t *b);

/* Closes every connection: after its queued output has been sent and read,
 * or at once when `now` (drain deadline). */
void busd_server_close_all(busd_t *b, bool now);

/* True when no connection is left and the listener is closed. */
bool busd_server_idle(const busd_t *b);

/* Closes idle connections (called periodically). */
void busd_server_tick(busd_t *b, uint64_t now_ms);

/* Frees what is left (after the loop has stopped). */
void busd_server_free(busd_t *b);

/* ------------------------------------------------------------------------ */
/* The broker                                                               */
/* ------------------------------------------------------------------------ */

typedef struct busd_stats {
  uint64_t published;      /* PUBs appended */
  uint64_t pub_acked;      /* PUB_ACKs sent */
  uint64_t pub_refused;    /* PUBs answered with ERR */
  uint64_t delivered;      /* DELIVERs sent, redeliveries included */
  uint64_t redelivered;
  uint64_t acked;
  uint64_t nacked;
  uint64_t ack_timeouts;
  uint64_t dead_letters;
  uint64_t cache_misses;   /* deliveries read back from disk */
  uint64_t ring_full;      /* appends refused: a ring of records not yet durable */
  uint64_t corrupt;        /* records skipped: failed checksum on read */
  uint64_t retention_lost; /* offsets a group skipped (deleted first) */
  uint64_t segments_deleted;
  uint64_t torn_bytes_cut; /* at start-up */
  uint64_t start_ms;       /* start-up: recovering the data directory */
  uint64_t start_read_bytes; /* start-up: log bytes read */
  uint64_t segs_trusted;   /* start-up: known from their index alone */
  uint64_t segs_tail;      /* start-up: read from their last index entry */
  uint64_t idx_rebuilt;    /* start-up: index missing or damaged, rebuilt */
  uint64_t idx_errors;     /* index files that could not be written */
  uint64_t conns_accepted;
  uint64_t conns_rejected;
  uint64_t proto_errors;
  uint64_t tls_failed;     /* TLS refused (no or foreign certificate) or failed */
  uint64_t batches;        /* group commits */
  uint64_t batch_records;  /* records in them */
} busd_stats_t;

struct busd {
  busd_config_t cfg;
  wire_tls_creds_t *tls_creds;   /* with TLS_CA */
  wire_tls_filter_t *tls;        /* server side, under every connection */
  uint32_t rec_bytes_max;  /* frame_bytes_max + record header */
  rt_loop_t *loop;
  busd_io_t io;
  /* Topics: a fixed table, found through an open-addressing hash. */
  busd_topic_t *topics;
  uint32_t topics_count;
  busd_topic_t **topic_hash;
  uint32_t topic_hash_mask;
  uint32_t groups_count;
  /* Connections and members, pooled. */
  rt_pool_t conns;
  rt_pool_t members;
  busd_conn_t *live;
  uint32_t conns_count;
  uint32_t member_ids;
  int listen_fd;
  rt_op_t accept_op;
  rt_op_t accept_cancel_op;
  rt_op_t listen_close_op;
  bool accepting;
  /* Deferred work lists: partitions to write, connections to flush. */
  busd_part_t *kick_head;
  busd_conn_t *flush_head;
  uint64_t pending_bytes;  /* appended, not yet durable */
  rt_timer_t tick;
  uint64_t last_commit_ms;
  uint64_t last_retention_ms;
  uint64_t last_idle_ms;
  http_router_t router;
  http_server_t *http;
  bus_buf_t dead_hdr;      /* scratch: headers of a dead letter */
  bool ready;
  bool draining;
  bool drain_committed;    /* the final offsets snapshot was started */
  bool drain_closing;      /* connections were told to go */
  bool drained;
  rt_timer_t drain_timer;
  busd_stats_t stats;
};

/* Wall-clock milliseconds (record timestamps, retention). */
uint64_t busd_wall_ms(void);

/* Monotonic milliseconds of the current loop iteration. */
uint64_t busd_now_ms(const busd_t *b);

/* Runs the deferred work after an event: writes, then sends. */
void busd_after_event(busd_t *b);

/* rt_run()'s thread setup: listeners, the tick, the
 * drain hook (broker.c). `arg` is the busd_t. */
int busd_thread_setup(rt_loop_t *loop, uint32_t index, void *arg);

/* Registers the HTTP routes (http.c). */
int busd_http_routes(busd_t *b);

#endif /* BUSD_H */
