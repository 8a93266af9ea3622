/*
 * groups.c - consumer groups: members, partitions, windows, redelivery.
 *
 * A group reads a topic. Each of its partitions has exactly one owner among
 * the group's members (partition p goes to member p mod n, in join order),
 * and a window of offsets [committed, next): every offset in it is in
 * flight, waiting for a retry, dead-lettered or acked; offsets below
 * `committed` are done. The window is a ring of slots (offset & mask), so
 * ACK, NACK and timeout handling cost O(1) per offset, and its size bounds
 * how far a slow or poisoned offset can hold the group back.
 *
 * Delivery ("pump"): while the owner has room (max in flight, output below
 * the high-water mark), first offsets due for redelivery, then new offsets
 * up to the partition's durable end. Records come from the partition's
 * cache, else from this group's own read buffer, else a read is queued on an
 * I/O thread and the pump resumes when it completes.
 *
 * Failure: NACK retries after a back-off doubling per attempt; an ack
 * timeout or a member leaving retries at once (on whichever member owns the
 * partition then). The attempt that reaches max_attempts, when it fails too,
 * sends the record to "<topic>.dead"; once that copy is durable the offset
 * counts as done. Nothing is dropped on the way: an offset leaves the window
 * only through ACK or a durable dead letter (or when retention or
 * corruption made the record unreadable, which is logged and counted).
 */
#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "busd.h"

enum { FETCH_OK = 0, FETCH_PENDING = 1, FETCH_GONE = 2 };

static void gp_pump(busd_gp_t *gp);
static void member_pump(busd_member_t *m);

static busd_slot_t *slot_of(busd_gp_t *gp, uint64_t offset) {
  return &gp->slots[offset & gp->mask];
}

static busd_t *gp_broker(const busd_gp_t *gp) { return gp->group->b; }

/* Records from a dead-letter topic are never dead-lettered again (that
 * would nest without end): they are retried for as long as it takes. */
static bool is_dead_topic(const busd_topic_t *t) {
  return t->name_len > 5 && memcmp(t->name + t->name_len - 5, ".dead", 5) == 0;
}

/* ------------------------------------------------------------------------ */
/* Groups                                                                   */
/* ------------------------------------------------------------------------ */

static int gp_init(busd_gp_t *gp, busd_group_t *g, busd_part_t *part, uint32_t slots) {
  gp->group = g;
  gp->part = part;
  gp->committed = part->start;
  gp->next = part->start;
  gp->slots = calloc(slots, sizeof *gp->slots);
  gp->mask = slots - 1;
  gp->rnext_base = UINT64_MAX;
  return gp->slots == NULL ? -ENOMEM : 0;
}

void busd_group_free(busd_group_t *g) {
  if (g == NULL) return;
  for (uint32_t p = 0; g->gps != NULL && p < g->topic->parts_count; p++) {
    free(g->gps[p].restored);
    free(g->gps[p].slots);
    free(g->gps[p].rbuf);
    free(g->gps[p].rpos);
  }
  free(g->gps);
  free(g);
}

busd_group_t *busd_group_get(busd_t *b, busd_topic_t *t, const uint8_t *name, uint32_t len) {
  for (busd_group_t *g = t->groups; g != NULL; g = g->next) {
    if (g->name_len == len && memcmp(g->name, name, len) == 0) return g;
  }
  if (b->groups_count >= b->cfg.groups_max || len > BUS_NAME_BYTES_MAX) return NULL;
  busd_group_t *g = calloc(1, sizeof *g);
  if (g == NULL) return NULL;
  g->b = b;
  g->topic = t;
  memcpy(g->name, name, len);
  g->name_len = len;
  g->gps = calloc(t->parts_count, sizeof *g->gps);
  int rc = g->gps == NULL ? -ENOMEM : 0;
  for (uint32_t p = 0; p < t->parts_count && rc == 0; p++)
    rc = gp_init(&g->gps[p], g, &t->parts[p], b->cfg.window_max);
  if (rc < 0) {
    busd_group_free(g);
    return NULL;
  }
  g->next = t->groups;
  t->groups = g;
  b->groups_count++;
  return g;
}

void busd_group_set_committed(busd_group_t *g, uint32_t partition, uint64_t committed) {
  busd_gp_t *gp = &g->gps[partition];
  busd_part_t *part = gp->part;
  if (committed > part->next) {
    /* The log ends before what the group had done: records were lost on
     * disk. Starting past the end would skip future records. */
    RT_ERROR("committed offset past the end of the log: using the end",
             RT_LF_STR("topic", g->topic->name), RT_LF_STR("group", g->name),
             RT_LF_INT("partition", partition), RT_LF_INT("committed", (int64_t)committed),
             RT_LF_INT("end", (int64_t)part->next));
    committed = part->next;
  }
  if (committed < part->start) committed = part->start;
  gp->committed = committed;
  gp->next = committed;
}

void busd_group_set_restored(busd_group_t *g, uint32_t partition, busd_restored_t *restored,
                             uint32_t count) {
  busd_gp_t *gp = &g->gps[partition];
  free(gp->restored);
  gp->restored = restored;
  gp->restored_count = count;
  gp->restored_pos = 0;
}

/* The failure count stored for `offset` before the last stop, consumed as
 * the window reaches it (offsets come in order). */
static uint16_t gp_take_restored(busd_gp_t *gp, uint64_t offset) {
  while (gp->restored_pos < gp->restored_count &&
         gp->restored[gp->restored_pos].offset < offset)
    gp->restored_pos++;
  if (gp->restored_pos < gp->restored_count && gp->restored[gp->restored_pos].offset == offset)
    return gp->restored[gp->restored_pos++].failures;
  if (gp->restored != NULL && gp->restored_pos == gp->restored_count) {
    free(gp->restored); /* all passed */
    gp->restored = NULL;
    gp->restored_count = gp->restored_pos = 0;
  }
  return 0;
}

uint64_t busd_groups_min_committed(busd_topic_t *t, uint32_t partition) {
  uint64_t min = UINT64_MAX;
  for (busd_group_t *g = t->groups; g != NULL; g = g->next) {
    if (g->gps[partition].committed < min) min = g->gps[partition].committed;
  }
  return min;
}

/* ------------------------------------------------------------------------ */
/* Window bookkeeping                                                       */
/* ------------------------------------------------------------------------ */

static void member_release(busd_gp_t *gp, busd_slot_t *s) {
  s->member->in_flight--;
  gp->in_flight--;
  s->member = NULL;
}

/* Moves `committed` past every acked offset at the bottom of the window. */
static void gp_advance(busd_gp_t *gp) {
  uint64_t before = gp->committed;
  while (gp->committed < gp->next) {
    busd_slot_t *s = slot_of(gp, gp->committed);
    if (s->state != BUSD_SLOT_ACKED) break;
    memset(s, 0, sizeof *s);
    gp->committed++;
  }
  if (gp->committed != before) gp->group->topic->snap_dirty = true;
}

/* A delivery failed (NACK, timeout, member gone): retry after `delay_ms`,
 * or dead-letter when it has had all its attempts. */
/*
 * Failure counts survive a restart: each failure is written to the topic's
 * offsets snapshot, and the retry waits until a snapshot that holds it is
 * on disk (a few ms, within the back-off). So a delivery is retried only
 * once its failure is durable, and after a crash the count goes on from
 * there: an event that keeps failing is dead-lettered after exactly
 * max_attempts deliveries that failed, restarts or not. (A delivery still
 * in flight when busd dies had no outcome; it is made again, as the same
 * attempt.)
 */
static void gp_fail(busd_gp_t *gp, busd_slot_t *s, uint32_t delay_ms) {
  busd_t *b = gp_broker(gp);
  busd_topic_t *t = gp->group->topic;
  assert(s->attempt >= 1);
  s->failures = s->attempt;
  if (s->failures >= b->cfg.max_attempts && !is_dead_topic(t)) {
    s->state = BUSD_SLOT_DEAD;
  } else {
    s->state = BUSD_SLOT_RETRY;
    s->due_ms = busd_now_ms(b) + delay_ms;
    s->persist_gen = t->snap_gen_next;
    busd_store_snapshot_soon(t);
  }
  gp->pending++;
}

/* Remembers why a delivery failed, for its dead letter. */
static void gp_why_set(busd_gp_t *gp, uint64_t offset, bus_bytes_t why) {
  if (why.len == 0) return;
  busd_why_t *w = NULL;
  for (uint32_t i = 0; i < BUSD_WHY_SLOTS && w == NULL; i++)
    if (gp->why[i].used && gp->why[i].offset == offset) w = &gp->why[i];
  if (w == NULL) w = &gp->why[gp->why_next++ % BUSD_WHY_SLOTS];
  uint32_t n = why.len < BUS_NACK_WHY_BYTES_MAX ? why.len : BUS_NACK_WHY_BYTES_MAX;
  memcpy(w->text, why.ptr, n);
  w->text[n] = '\0';
  w->offset = offset;
  w->used = true;
}

static const char *gp_why_get(const busd_gp_t *gp, uint64_t offset) {
  for (uint32_t i = 0; i < BUSD_WHY_SLOTS; i++)
    if (gp->why[i].used && gp->why[i].offset == offset) return gp->why[i].text;
  return NULL;
}

void busd_groups_persisted(busd_topic_t *t) {
  for (busd_group_t *g = t->groups; g != NULL; g = g->next) {
    for (uint32_t p = 0; p < t->parts_count; p++)
      if (g->gps[p].pending > 0) gp_pump(&g->gps[p]);
  }
}

static uint32_t nack_backoff_ms(const busd_t *b, uint32_t attempt) {
  uint64_t ms = b->cfg.retry_backoff_ms;
  for (uint32_t i = 1; i < attempt && ms < b->cfg.retry_backoff_max_ms; i++) ms *= 2;
  return ms > b->cfg.retry_backoff_max_ms ? b->cfg.retry_backoff_max_ms : (uint32_t)ms;
}

/* Offsets below the partition's start were deleted (retention ran before a
 * group that was loaded behind it): the group jumps to the start. */
static void gp_skip_to_start(busd_gp_t *gp) {
  busd_part_t *part = gp->part;
  uint64_t stop = gp->next < part->start ? gp->next : part->start;
  for (uint64_t off = gp->committed; off < stop; off++) {
    busd_slot_t *s = slot_of(gp, off);
    if (s->state == BUSD_SLOT_INFLIGHT) member_release(gp, s);
    if (s->state == BUSD_SLOT_RETRY || s->state == BUSD_SLOT_DEAD) gp->pending--;
    memset(s, 0, sizeof *s);
  }
  gp_broker(gp)->stats.retention_lost += part->start - gp->committed;
  RT_WARN("group behind retention: skipping to the oldest record",
          RT_LF_STR("topic", gp->group->topic->name), RT_LF_STR("group", gp->group->name),
          RT_LF_INT("partition", part->index), RT_LF_INT("from", (int64_t)gp->committed),
          RT_LF_INT("to", (int64_t)part->start));
  if (gp->next < part->start) gp->next = part->start;
  gp->committed = part->start;
  gp->group->topic->snap_dirty = true;
}

/* ------------------------------------------------------------------------ */
/* Reading records back from disk                                           */
/* ------------------------------------------------------------------------ */

/* Frees the read buffer once the group is served from the cache again. */
static void gp_read_release(busd_gp_t *gp) {
  free(gp->rbuf);
  free(gp->rpos);
  gp->rbuf = NULL;
  gp->rpos = NULL;
  gp->rcap = gp->rpos_cap = 0;
  gp->r_lo = gp->r_hi = 0;
}

/* Parses what a read brought: consecutive records from read_first on. */
static void read_parse(busd_gp_t *gp, uint32_t got) {
  busd_t *b = gp_broker(gp);
  uint32_t pos = 0, count = 0;
  bool corrupt = false;
  while (count < gp->rpos_cap) {
    busd_rec_t rec;
    int64_t n = busd_rec_parse(gp->rbuf + pos, got - pos, b->rec_bytes_max, true, &rec);
    if (n == 0) break;
    if (n < 0 || rec.offset != gp->read_first + count) {
      corrupt = true;
      break;
    }
    gp->rpos[count++] = pos;
    pos += (uint32_t)n;
  }
  gp->r_lo = gp->read_first;
  gp->r_hi = gp->read_first + count;
  gp->rnext_base = gp->read_seg->base;
  gp->rnext_off = gp->r_hi;
  gp->rnext_pos = gp->read_job.pos + pos;
  if (corrupt && gp->read_want >= gp->r_hi) {
    b->stats.corrupt++;
    gp->skip_offset = gp->read_want;
    gp->skip_valid = true;
    RT_ERROR("record fails its checksum on read: skipped",
             RT_LF_STR("topic", gp->part->topic->name), RT_LF_INT("partition", gp->part->index),
             RT_LF_INT("offset", (int64_t)gp->read_want));
  }
}

static void read_done(busd_job_t *job) {
  busd_gp_t *gp = job->ctx;
  gp->read_seg->refs--;
  if (job->result < 0) {
    RT_ERROR("segment read failed", RT_LF_STR("topic", gp->part->topic->name),
             RT_LF_INT("partition", gp->part->index), RT_LF_STR("error", rt_strerror(job->result)));
  } else {
    read_parse(gp, (uint32_t)job->result);
  }
  gp->read_seg = NULL;
  gp_pump(gp);
}

static int gp_read_alloc(busd_gp_t *gp) {
  if (gp->rbuf != NULL) return 0;
  busd_t *b = gp_broker(gp);
  /* Enough for the wanted record whatever the index entry before it: up to
   * a stride plus a whole record between them, then the record itself. */
  gp->rcap = 2 * b->rec_bytes_max + BUSD_INDEX_STRIDE;
  gp->rpos_cap = gp->rcap / BUSD_REC_HEADER_BYTES + 1;
  gp->rbuf = malloc(gp->rcap);
  gp->rpos = malloc(gp->rpos_cap * sizeof *gp->rpos);
  if (gp->rbuf == NULL || gp->rpos == NULL) {
    gp_read_release(gp);
    return -ENOMEM;
  }
  return 0;
}

/* Queues a read of `seg` that reaches `offset`: from where the last read
 * stopped when that is closer, else from the index entry before it. */
static void gp_read(busd_gp_t *gp, busd_seg_t *seg, uint64_t offset) {
  busd_t *b = gp_broker(gp);
  if (gp_read_alloc(gp) < 0) return; /* the tick tries again */
  uint64_t first;
  uint64_t pos = busd_index_find(&seg->index, offset, seg->base, &first);
  if (gp->rnext_base == seg->base && gp->rnext_off <= offset && gp->rnext_pos > pos) {
    pos = gp->rnext_pos;
    first = gp->rnext_off;
  }
  busd_job_t *job = &gp->read_job;
  job->kind = BUSD_JOB_READ;
  job->done = read_done;
  job->ctx = gp;
  job->fd = seg->fd;
  job->pos = pos;
  job->buf = gp->rbuf;
  job->len = (uint32_t)(seg->bytes - pos < gp->rcap ? seg->bytes - pos : gp->rcap);
  gp->r_lo = gp->r_hi = 0; /* the buffer is the I/O thread's until done */
  if (busd_io_submit(&b->io, job) < 0) return;
  gp->read_first = first;
  gp->read_want = offset;
  gp->read_seg = seg;
  seg->refs++;
  b->stats.cache_misses++;
}

/* Finds the record at `offset`: FETCH_OK with rec filled, FETCH_PENDING
 * (a read is under way; the pump resumes when it is done), or FETCH_GONE
 * (deleted, or unreadable). */
static int gp_fetch(busd_gp_t *gp, uint64_t offset, busd_rec_t *rec) {
  busd_part_t *part = gp->part;
  if (offset < part->start) return FETCH_GONE;
  if (gp->skip_valid && gp->skip_offset == offset) {
    gp->skip_valid = false;
    return FETCH_GONE;
  }
  if (busd_part_cached(part, offset, rec)) {
    if (gp->rbuf != NULL && !gp->read_job.in_flight && offset >= gp->r_hi) gp_read_release(gp);
    return FETCH_OK;
  }
  if (offset >= gp->r_lo && offset < gp->r_hi) {
    uint32_t pos = gp->rpos[offset - gp->r_lo];
    if (busd_rec_parse(gp->rbuf + pos, gp->rcap - pos, gp_broker(gp)->rec_bytes_max, false,
                       rec) > 0)
      return FETCH_OK;
  }
  if (gp->read_job.in_flight) return FETCH_PENDING;
  busd_seg_t *seg = busd_part_segment(part, offset);
  if (seg == NULL) return FETCH_GONE;
  gp_read(gp, seg, offset);
  return FETCH_PENDING;
}

/* ------------------------------------------------------------------------ */
/* Delivery                                                                 */
/* ------------------------------------------------------------------------ */

static bool member_has_room(const busd_member_t *m) {
  return m != NULL && m->in_flight < m->max_in_flight && busd_conn_writable(m->conn);
}

static void gp_deliver(busd_gp_t *gp, busd_member_t *m, uint64_t offset,
                       const busd_rec_t *rec) {
  busd_t *b = gp_broker(gp);
  busd_slot_t *s = slot_of(gp, offset);
  if (offset == gp->next) {
    memset(s, 0, sizeof *s);
    s->attempt = s->failures = gp_take_restored(gp, offset);
    gp->next++;
  } else {
    gp->pending--; /* was RETRY */
  }
  s->state = BUSD_SLOT_INFLIGHT;
  s->attempt++;
  s->member = m;
  s->due_ms = busd_now_ms(b) + b->cfg.ack_timeout_ms;
  m->in_flight++;
  gp->in_flight++;
  busd_topic_t *t = gp->group->topic;
  bus_frame_t f;
  memset(&f, 0, sizeof f);
  f.type = BUS_DELIVER;
  f.topic = (bus_bytes_t){.ptr = (const uint8_t *)t->name, .len = t->name_len};
  f.group = (bus_bytes_t){.ptr = (const uint8_t *)gp->group->name, .len = gp->group->name_len};
  f.partition = gp->part->index;
  f.offset = offset;
  memcpy(f.id, rec->id, BUS_ID_BYTES);
  f.has_id = true;
  f.attempt = s->attempt;
  f.stored_ms = rec->stored_ms;
  f.key = rec->key;
  f.headers = rec->headers;
  f.payload = rec->payload;
  busd_conn_write(m->conn, &f);
  gp->group->delivered++;
  b->stats.delivered++;
  if (s->attempt > 1) {
    gp->group->redelivered++;
    b->stats.redelivered++;
  }
}

/* ------------------------------------------------------------------------ */
/* Dead letters                                                             */
/* ------------------------------------------------------------------------ */

/* The dead letter's headers: the original ones (as many as fit with ours
 * under BUS_HEADERS_MAX) plus where it came from and why. */
static int dead_headers(busd_gp_t *gp, uint64_t offset, const busd_rec_t *rec,
                        uint32_t attempts) {
  enum { OURS = 6 };
  busd_t *b = gp_broker(gp);
  bus_header_t h[BUS_HEADERS_MAX];
  uint32_t n = 0;
  bus_header_iter_t it;
  bus_header_iter_init(&it, rec->headers);
  bus_bytes_t name, value;
  while (n < BUS_HEADERS_MAX - OURS && bus_header_next(&it, &name, &value))
    h[n++] = (bus_header_t){.name = (const char *)name.ptr, .name_len = name.len,
                            .value = value.ptr, .value_len = value.len};
  char part[16], off[24], att[16];
  snprintf(part, sizeof part, "%u", gp->part->index);
  snprintf(off, sizeof off, "%" PRIu64, offset);
  snprintf(att, sizeof att, "%u", attempts);
  const busd_group_t *g = gp->group;
  const char *why = gp_why_get(gp, offset);
  const char *names[OURS] = {"x-dead-topic", "x-dead-group", "x-dead-partition",
                             "x-dead-offset", "x-dead-attempts", "x-dead-error"};
  const char *values[OURS] = {g->topic->name, g->name, part, off, att,
                              why != NULL ? why : "no reason given"};
  for (int i = 0; i < OURS; i++)
    h[n++] = (bus_header_t){.name = names[i], .name_len = (uint32_t)strlen(names[i]),
                            .value = values[i], .value_len = (uint32_t)strlen(values[i])};
  b->dead_hdr.len = 0;
  return bus_headers_pack(&b->dead_hdr, h, n);
}

/* Appends the record at `offset` to "<topic>.dead". FETCH_OK when done (or
 * the record is gone), FETCH_PENDING when it must wait (a read, a topic
 * limit, a storage failure: the tick tries again). */
static int gp_dead_one(busd_gp_t *gp, uint64_t offset, busd_slot_t *s) {
  busd_t *b = gp_broker(gp);
  busd_rec_t rec;
  int rc = gp_fetch(gp, offset, &rec);
  if (rc == FETCH_PENDING) return FETCH_PENDING;
  if (rc == FETCH_GONE) {
    s->state = BUSD_SLOT_ACKED;
    gp->pending--;
    return FETCH_OK;
  }
  busd_topic_t *t = gp->group->topic;
  char name[BUSD_TOPIC_BYTES_MAX + 1];
  int n = snprintf(name, sizeof name, "%s.dead", t->name);
  busd_topic_t *dt = busd_topic_get(b, (const uint8_t *)name, (uint32_t)n);
  if (dt == NULL || dead_headers(gp, offset, &rec, s->attempt) < 0) return FETCH_PENDING;
  busd_part_t *part = &dt->parts[busd_topic_partition(dt, rec.key, rec.id)];
  busd_waiter_t w = {.gp = gp, .source_offset = offset};
  bus_bytes_t hdr = {.ptr = b->dead_hdr.data, .len = (uint32_t)b->dead_hdr.len};
  if (busd_part_append(part, rec.id, rec.key, hdr, rec.payload, &w) < 0) return FETCH_PENDING;
  s->state = BUSD_SLOT_DEAD_PENDING;
  gp->pending--;
  char id[37];
  bus_uuid_format(rec.id, id);
  RT_WARN("event dead-lettered", RT_LF_STR("topic", t->name), RT_LF_STR("group", gp->group->name),
          RT_LF_INT("partition", gp->part->index), RT_LF_INT("offset", (int64_t)offset),
          RT_LF_INT("attempts", s->attempt), RT_LF_STR("id", id));
  return FETCH_OK;
}

void busd_group_dead_done(busd_gp_t *gp, uint64_t offset, int err) {
  if (offset < gp->committed || offset >= gp->next) return;
  busd_slot_t *s = slot_of(gp, offset);
  if (s->state != BUSD_SLOT_DEAD_PENDING) return;
  if (err < 0) {
    s->state = BUSD_SLOT_DEAD; /* try again later */
    gp->pending++;
    return;
  }
  busd_t *b = gp_broker(gp);
  s->state = BUSD_SLOT_ACKED;
  gp->group->dead++;
  gp->group->topic->dead_letters++;
  b->stats.dead_letters++;
  gp_advance(gp);
  gp_pump(gp);
}

/* ------------------------------------------------------------------------ */
/* The pump                                                                 */
/* ------------------------------------------------------------------------ */

/* One pass over the window for offsets that need action: dead letters to
 * write and redeliveries that are due. False when it must wait for a read. */
static bool gp_pump_pending(busd_gp_t *gp) {
  uint64_t now = busd_now_ms(gp_broker(gp));
  bool ok = true;
  for (uint64_t off = gp->committed; off < gp->next && gp->pending > 0 && ok; off++) {
    busd_slot_t *s = slot_of(gp, off);
    if (s->state == BUSD_SLOT_DEAD) {
      ok = gp_dead_one(gp, off, s) == FETCH_OK;
      continue;
    }
    if (s->state != BUSD_SLOT_RETRY || s->due_ms > now || !member_has_room(gp->owner)) continue;
    if (s->persist_gen > gp->group->topic->snap_gen_done) continue; /* not durable yet */
    busd_rec_t rec;
    int rc = gp_fetch(gp, off, &rec);
    if (rc == FETCH_PENDING) {
      ok = false;
    } else if (rc == FETCH_GONE) {
      s->state = BUSD_SLOT_ACKED;
      gp->pending--;
    } else {
      gp_deliver(gp, gp->owner, off, &rec);
    }
  }
  gp_advance(gp);
  return ok;
}

/* An offset that had used up its attempts when busd stopped goes to its
 * dead letter without another delivery. */
static bool gp_restored_dead(busd_gp_t *gp) {
  busd_t *b = gp_broker(gp);
  if (gp->restored == NULL || is_dead_topic(gp->group->topic)) return false;
  uint32_t pos = gp->restored_pos;
  while (pos < gp->restored_count && gp->restored[pos].offset < gp->next) pos++;
  if (pos >= gp->restored_count || gp->restored[pos].offset != gp->next ||
      gp->restored[pos].failures < b->cfg.max_attempts)
    return false;
  busd_slot_t *s = slot_of(gp, gp->next);
  memset(s, 0, sizeof *s);
  s->attempt = s->failures = gp_take_restored(gp, gp->next);
  s->state = BUSD_SLOT_DEAD;
  gp->pending++;
  gp->next++;
  return true;
}

static void gp_pump(busd_gp_t *gp) {
  if (gp->committed < gp->part->start) gp_skip_to_start(gp);
  if (gp->pending > 0 && !gp_pump_pending(gp)) return;
  busd_member_t *m = gp->owner;
  /* Bounded by the window: each turn delivers or skips one new offset. */
  for (uint32_t turn = 0; turn <= gp->mask && member_has_room(m); turn++) {
    if (gp->next >= gp->part->durable || gp->next - gp->committed > gp->mask) break;
    if (gp_restored_dead(gp)) continue;
    busd_rec_t rec;
    int rc = gp_fetch(gp, gp->next, &rec);
    if (rc == FETCH_PENDING) break;
    if (rc == FETCH_GONE) {
      memset(slot_of(gp, gp->next), 0, sizeof(busd_slot_t));
      slot_of(gp, gp->next)->state = BUSD_SLOT_ACKED;
      gp->next++;
      gp_advance(gp);
      continue;
    }
    gp_deliver(gp, m, gp->next, &rec);
  }
}

/* Pumps a member's partitions, starting one further each time so that no
 * partition always goes first when the window is tight. */
static void member_pump(busd_member_t *m) {
  uint32_t n = m->owned_count;
  for (uint32_t i = 0; i < n && member_has_room(m); i++) gp_pump(m->owned[(m->rr + i) % n]);
  m->rr++;
}

static void group_pump(busd_group_t *g) {
  for (uint32_t p = 0; p < g->topic->parts_count; p++) gp_pump(&g->gps[p]);
}

void busd_groups_wake(busd_part_t *part) {
  for (busd_group_t *g = part->topic->groups; g != NULL; g = g->next) gp_pump(&g->gps[part->index]);
}

void busd_groups_conn_writable(busd_conn_t *conn) {
  for (busd_member_t *m = conn->members; m != NULL; m = m->next_in_conn) member_pump(m);
}

/* ------------------------------------------------------------------------ */
/* Members                                                                  */
/* ------------------------------------------------------------------------ */

/* Partition p goes to the member p mod n in join order. */
static void assign(busd_group_t *g) {
  uint32_t parts = g->topic->parts_count;
  for (uint32_t p = 0; p < parts; p++) g->gps[p].owner = NULL;
  uint32_t k = 0, n = g->members_count;
  for (busd_member_t *m = g->members; m != NULL; m = m->next_in_group, k++) {
    m->owned_count = 0;
    for (uint32_t p = k; p < parts; p += n) {
      g->gps[p].owner = m;
      m->owned[m->owned_count++] = &g->gps[p];
    }
  }
}

int busd_group_join(busd_t *b, busd_conn_t *conn, busd_group_t *g, uint32_t max_in_flight) {
  uint32_t max = max_in_flight < b->cfg.window_max ? max_in_flight : b->cfg.window_max;
  for (busd_member_t *m = conn->members; m != NULL; m = m->next_in_conn) {
    if (m->group == g) { /* SUB again: a new window size */
      m->max_in_flight = max;
      member_pump(m);
      return 0;
    }
  }
  busd_member_t *m = rt_pool_get(&b->members);
  if (m == NULL) return RT_E_POOL_EMPTY;
  m->owned = calloc(g->topic->parts_count, sizeof *m->owned);
  if (m->owned == NULL) {
    rt_pool_put(&b->members, m);
    return -ENOMEM;
  }
  m->conn = conn;
  m->group = g;
  m->id = ++b->member_ids;
  m->max_in_flight = max;
  busd_member_t **tail = &g->members;
  while (*tail != NULL) tail = &(*tail)->next_in_group;
  *tail = m;
  m->next_in_conn = conn->members;
  conn->members = m;
  g->members_count++;
  RT_INFO("member joined", RT_LF_STR("topic", g->topic->name), RT_LF_STR("group", g->name),
          RT_LF_STR("client", conn->name), RT_LF_INT("members", g->members_count),
          RT_LF_INT("max_in_flight", max));
  assign(g);
  group_pump(g);
  return 0;
}

/* A member leaves: what it had in flight is redelivered at once. */
static void member_leave(busd_t *b, busd_member_t *m) {
  busd_group_t *g = m->group;
  for (uint32_t p = 0; p < g->topic->parts_count && m->in_flight > 0; p++) {
    busd_gp_t *gp = &g->gps[p];
    for (uint64_t off = gp->committed; off < gp->next && gp->in_flight > 0; off++) {
      busd_slot_t *s = slot_of(gp, off);
      if (s->state != BUSD_SLOT_INFLIGHT || s->member != m) continue;
      member_release(gp, s);
      gp_fail(gp, s, 0);
    }
  }
  busd_member_t **link = &g->members;
  while (*link != m) link = &(*link)->next_in_group;
  *link = m->next_in_group;
  g->members_count--;
  free(m->owned);
  rt_pool_put(&b->members, m);
  RT_INFO("member left", RT_LF_STR("topic", g->topic->name), RT_LF_STR("group", g->name),
          RT_LF_INT("members", g->members_count));
  assign(g);
  group_pump(g);
}

void busd_group_conn_gone(busd_t *b, busd_conn_t *conn) {
  busd_member_t *m = conn->members;
  conn->members = NULL;
  while (m != NULL) {
    busd_member_t *next = m->next_in_conn;
    member_leave(b, m);
    m = next;
  }
}

/* ------------------------------------------------------------------------ */
/* ACK, NACK, timeouts                                                      */
/* ------------------------------------------------------------------------ */

void busd_group_ack(busd_group_t *g, uint32_t partition, uint64_t offset) {
  if (partition >= g->topic->parts_count) return;
  busd_gp_t *gp = &g->gps[partition];
  if (offset < gp->committed || offset >= gp->next) return; /* stale: done already */
  busd_slot_t *s = slot_of(gp, offset);
  busd_member_t *m = s->member;
  if (s->state == BUSD_SLOT_INFLIGHT) {
    member_release(gp, s);
  } else if (s->state == BUSD_SLOT_RETRY) {
    gp->pending--; /* acked after all, by a slow member */
    m = NULL;
  } else {
    return;
  }
  s->state = BUSD_SLOT_ACKED;
  g->acked++;
  g->b->stats.acked++;
  gp_advance(gp);
  if (m != NULL) member_pump(m);
  gp_pump(gp);
}

void busd_group_nack(busd_group_t *g, uint32_t partition, uint64_t offset, bus_bytes_t why) {
  if (partition >= g->topic->parts_count) return;
  busd_gp_t *gp = &g->gps[partition];
  if (offset < gp->committed || offset >= gp->next) return;
  busd_slot_t *s = slot_of(gp, offset);
  if (s->state != BUSD_SLOT_INFLIGHT) return;
  gp_why_set(gp, offset, why);
  busd_member_t *m = s->member;
  member_release(gp, s);
  g->nacked++;
  g->b->stats.nacked++;
  gp_fail(gp, s, nack_backoff_ms(g->b, s->attempt));
  member_pump(m);
  gp_pump(gp);
}

/* Deliveries whose ack deadline passed are retried at once. */
static void gp_timeouts(busd_gp_t *gp, uint64_t now) {
  busd_t *b = gp_broker(gp);
  for (uint64_t off = gp->committed; off < gp->next && gp->in_flight > 0; off++) {
    busd_slot_t *s = slot_of(gp, off);
    if (s->state != BUSD_SLOT_INFLIGHT || s->due_ms > now) continue;
    member_release(gp, s);
    gp->group->timeouts++;
    b->stats.ack_timeouts++;
    gp_fail(gp, s, 0);
  }
}

void busd_groups_tick(busd_t *b, uint64_t now_ms) {
  for (uint32_t i = 0; i < b->topics_count; i++) {
    for (busd_group_t *g = b->topics[i].groups; g != NULL; g = g->next) {
      for (uint32_t p = 0; p < g->topic->parts_count; p++) {
        busd_gp_t *gp = &g->gps[p];
        if (gp->in_flight > 0) gp_timeouts(gp, now_ms);
        gp_pump(gp);
      }
    }
  }
}
