/*
 * msg.c - pooled actor messages.
 *
 * Each loop owns a fixed array of message slots (msgs_count, each with
 * msg_bytes of payload). Only the owning thread allocates. Any thread may
 * free: the owner pushes onto its local free list; another thread pushes onto
 * the owner's remote_free stack with a CAS. The owner takes the whole remote
 * stack in one exchange when its local list runs dry. Because the owner only
 * ever takes the entire stack (never pops one node), the stack has no ABA
 * problem.
 *
 * A free from another thread ends with a release increment of the owner's
 * msgs_remote_freed, and that increment is its last touch of the owner.
 * The owner reads the count with acquire: once it finds every message
 * back, every other thread's writes into the pool (the links of the remote
 * stack) and reads of the loop happen before anything it does next, such
 * as freeing the pool (rule 3 above rt_loop_destroy() in rt.h).
 */
#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "loop_internal.h"

static rt_msg_t *slot(rt_loop_t *loop, uint32_t i) {
  return (rt_msg_t *)(loop->msgs_mem + (size_t)i * loop->msg_stride);
}

int rt__msgs_init(rt_loop_t *loop) {
  size_t stride = sizeof(rt_msg_t) + loop->config.msg_bytes;
  stride = (stride + 63u) & ~(size_t)63u; /* one slot per cache line pair */
  loop->msg_stride = stride;
  loop->msgs_mem = aligned_alloc(64, stride * loop->config.msgs_count);
  if (loop->msgs_mem == NULL) return -ENOMEM;
  loop->msgs_free = NULL;
  for (uint32_t i = loop->config.msgs_count; i-- > 0;) {
    rt_msg_t *m = slot(loop, i);
    atomic_store_explicit(&m->link.next, loop->msgs_free, memory_order_relaxed);
    loop->msgs_free = &m->link;
  }
  atomic_store(&loop->msgs_remote_free, NULL);
  atomic_store(&loop->msgs_remote_freed, 0);
  loop->msgs_taken = 0;
  return 0;
}

uint32_t rt__msgs_in_use(rt_loop_t *loop) {
  /* acquire: pairs with the release increment in rt_msg_free(). */
  return loop->msgs_taken -
         atomic_load_explicit(&loop->msgs_remote_freed, memory_order_acquire);
}

bool rt__msgs_deinit(rt_loop_t *loop) {
  if (loop->msgs_mem == NULL) return true;
  uint32_t out = rt__msgs_in_use(loop);
  if (out > 0) {
    /* Another thread may still free one of them into this memory. */
    bool cut_short = rt_drain_overran();
    assert(cut_short); /* every message comes back before its loop goes */
    (void)cut_short;
    rt_leftovers_add("messages", out);
    return false;
  }
  free(loop->msgs_mem);
  loop->msgs_mem = NULL;
  return true;
}

rt_msg_t *rt_msg_new(uint32_t type, uint32_t payload_bytes) {
  rt_loop_t *loop = rt_loop_current();
  if (loop == NULL || payload_bytes > loop->config.msg_bytes) return NULL;
  if (loop->msgs_free == NULL) {
    loop->msgs_free = atomic_exchange_explicit(&loop->msgs_remote_free, NULL,
                                               memory_order_acquire);
  }
  rt_mlink_t *link = loop->msgs_free;
  if (link == NULL) {
    if (loop->stats.msgs_exhausted++ == 0) {
      RT_WARN("message pool exhausted",
              RT_LF_INT("capacity", loop->config.msgs_count));
    }
    return NULL;
  }
  loop->msgs_free = atomic_load_explicit(&link->next, memory_order_relaxed);
  loop->msgs_taken++;
  rt_msg_t *m = (rt_msg_t *)link;
  memset(m, 0, sizeof *m);
  m->origin = loop;
  m->type = type;
  m->bytes = payload_bytes;
  return m;
}

void rt_msg_keep(rt_msg_t *msg) { msg->flags |= RT_MSGF_KEEP; }

void rt_msg_free(rt_msg_t *msg) {
  if (msg == NULL || msg->origin == NULL) return;
  rt_loop_t *owner = msg->origin;
  assert((unsigned char *)msg >= owner->msgs_mem);
  assert((size_t)((unsigned char *)msg - owner->msgs_mem) % owner->msg_stride == 0);
  if (owner == rt_loop_current()) {
    atomic_store_explicit(&msg->link.next, owner->msgs_free, memory_order_relaxed);
    owner->msgs_free = &msg->link;
    owner->msgs_taken--;
    return;
  }
  rt_mlink_t *head = atomic_load_explicit(&owner->msgs_remote_free, memory_order_relaxed);
  do {
    atomic_store_explicit(&msg->link.next, head, memory_order_relaxed);
  } while (!atomic_compare_exchange_weak_explicit(&owner->msgs_remote_free, &head,
                                                  &msg->link, memory_order_release,
                                                  memory_order_relaxed));
  /* release, and the last touch of owner: once the owner's acquire read
   * counts this message back, it may free the loop (see the top). */
  atomic_fetch_add_explicit(&owner->msgs_remote_freed, 1, memory_order_release);
}
