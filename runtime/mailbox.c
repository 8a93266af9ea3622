/*
 * mailbox.c - intrusive many-writer/one-reader queue (Vyukov's MPSC).
 *
 * Writers only ever exchange `head` and then link the previous head to the
 * new node, so a push is wait-free: one atomic exchange and one store. The
 * reader walks from `tail`. Between a writer's exchange and its link store
 * the chain is briefly broken; the reader then sees "nothing yet" and tries
 * again on a later turn (rt_mailbox_maybe_nonempty() stays true, so the
 * actor is not forgotten).
 *
 * A stub node lives inside the mailbox so the queue is never truly empty of
 * nodes: that is what lets the reader hand out the last real message without
 * racing a writer on it.
 */
#include <assert.h>
#include <stddef.h>

#include "rt.h"

void rt_mailbox_init(rt_mailbox_t *mb) {
  atomic_store_explicit(&mb->stub.next, NULL, memory_order_relaxed);
  atomic_store_explicit(&mb->head, &mb->stub, memory_order_relaxed);
  mb->tail = &mb->stub;
}

static bool push_link(rt_mailbox_t *mb, rt_mlink_t *msg) {
  atomic_store_explicit(&msg->next, NULL, memory_order_relaxed);
  /* seq_cst: this exchange must be ordered before the writer's later read of
   * the actor's `scheduled` flag (see actor.c), which pairs with the reader's
   * store of that flag followed by rt_mailbox_maybe_nonempty(). */
  rt_mlink_t *prev = atomic_exchange_explicit(&mb->head, msg, memory_order_seq_cst);
  /* release: the reader that follows this link must see msg's contents. */
  atomic_store_explicit(&prev->next, msg, memory_order_release);
  return prev == &mb->stub;
}

bool rt_mailbox_push(rt_mailbox_t *mb, rt_msg_t *msg) {
  return push_link(mb, &msg->link);
}

static rt_msg_t *as_msg(rt_mlink_t *link) {
  _Static_assert(offsetof(rt_msg_t, link) == 0, "link must be first");
  return (rt_msg_t *)link;
}

rt_msg_t *rt_mailbox_pop(rt_mailbox_t *mb) {
  rt_mlink_t *tail = mb->tail;
  rt_mlink_t *next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (tail == &mb->stub) {
    if (next == NULL) return NULL;
    mb->tail = next;
    tail = next;
    next = atomic_load_explicit(&next->next, memory_order_acquire);
  }
  if (next != NULL) {
    mb->tail = next;
    return as_msg(tail);
  }
  /* `tail` is the last linked node. If a writer has already swapped head
   * past it, its link is on the way: come back later. */
  rt_mlink_t *head = atomic_load_explicit(&mb->head, memory_order_acquire);
  if (tail != head) return NULL;
  /* Re-insert the stub behind tail so tail can be handed out. */
  push_link(mb, &mb->stub);
  next = atomic_load_explicit(&tail->next, memory_order_acquire);
  if (next != NULL) {
    mb->tail = next;
    return as_msg(tail);
  }
  return NULL;
}

bool rt_mailbox_maybe_nonempty(rt_mailbox_t *mb) {
  if (mb->tail != &mb->stub) return true;
  if (atomic_load_explicit(&mb->stub.next, memory_order_acquire) != NULL)
    return true;
  /* seq_cst: pairs with the writer's exchange in rt_mailbox_push(). */
  return atomic_load_explicit(&mb->head, memory_order_seq_cst) != &mb->stub;
}
