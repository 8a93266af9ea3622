/*
 * actor.c - actors, their scheduling, and supervision.
 *
 * An actor is in its loop's run queue at most once: the `scheduled` flag is
 * set by whoever enqueues it (exchange false -> true) and cleared by the
 * loop only when the mailbox looks empty, followed by a second look. A
 * sender that pushes between the loop's clear and its second look either
 * wins the exchange itself or is seen by the second look, so no message is
 * left without its actor scheduled.
 *
 * An actor runs at most `actor_budget` messages per turn, then goes to the
 * back of the queue: one busy actor cannot starve the others.
 */
#include <assert.h>
#include <string.h>

#include "loop_internal.h"

void rt_actor_init(rt_actor_t *actor, rt_loop_t *loop, const char *name,
                   rt_actor_fn handler, void *state) {
  rt_mailbox_init(&actor->mailbox);
  actor->handler = handler;
  actor->on_stop = NULL;
  actor->loop = loop;
  actor->state = state;
  actor->name = name;
  actor->run_next = NULL;
  atomic_store(&actor->remote_next, NULL);
  atomic_store(&actor->scheduled, false);
  actor->stopped = false;
  actor->running = false;
  actor->supervisor = NULL;
  actor->child_index = 0;
  actor->msgs_handled = 0;
}

static void run_queue_append(rt_loop_t *loop, rt_actor_t *actor) {
  actor->run_next = NULL;
  if (loop->run_tail != NULL) {
    loop->run_tail->run_next = actor;
  } else {
    loop->run_head = actor;
  }
  loop->run_tail = actor;
}

static void schedule(rt_actor_t *actor) {
  if (atomic_exchange_explicit(&actor->scheduled, true, memory_order_seq_cst))
    return; /* already queued: the loop will see the new message */
  rt_loop_t *loop = actor->loop;
  if (loop == rt_loop_current()) {
    run_queue_append(loop, actor);
    return;
  }
  rt_actor_t *head = atomic_load_explicit(&loop->remote_actors, memory_order_relaxed);
  do {
    atomic_store_explicit(&actor->remote_next, head, memory_order_relaxed);
  } while (!atomic_compare_exchange_weak_explicit(&loop->remote_actors, &head, actor,
                                                  memory_order_release,
                                                  memory_order_relaxed));
  rt__wake(loop);
}

int rt_actor_send(rt_actor_t *to, rt_msg_t *msg) {
  assert(msg != NULL);
  if (to->stopped && to->loop == rt_loop_current()) {
    rt_msg_free(msg);
    return RT_E_STOPPED;
  }
  msg->flags &= (uint16_t)~RT_MSGF_KEEP;
  rt_mailbox_push(&to->mailbox, msg);
  schedule(to);
  return 0;
}

int rt_actor_tell(rt_actor_t *to, uint32_t type, const void *payload,
                  uint32_t payload_bytes) {
  rt_msg_t *msg = rt_msg_new(type, payload_bytes);
  if (msg == NULL) return RT_E_POOL_EMPTY;
  if (payload_bytes > 0) memcpy(msg->data, payload, payload_bytes);
  return rt_actor_send(to, msg);
}

static void free_pending(rt_actor_t *actor) {
  rt_msg_t *msg;
  uint32_t bound = actor->loop->config.msgs_count + 1;
  while (bound-- > 0 && (msg = rt_mailbox_pop(&actor->mailbox)) != NULL)
    rt_msg_free(msg);
}

static void tell_supervisor(rt_actor_t *actor, int reason) {
  rt_actor_t *sup = actor->supervisor;
  if (sup == NULL || sup->stopped) return;
  rt_msg_t *msg = rt_msg_new(RT_MSG_CHILD_DOWN, sizeof(int));
  if (msg == NULL) {
    RT_ERROR("cannot tell supervisor: message pool empty",
             RT_LF_STR("actor", actor->name));
    return;
  }
  msg->ptr = actor;
  msg->u64 = actor->child_index;
  memcpy(msg->data, &reason, sizeof reason);
  rt_actor_send(sup, msg);
}

void rt_actor_stop(rt_actor_t *actor, int reason) {
  assert(actor->loop == rt_loop_current());
  if (actor->stopped) return;
  actor->stopped = true;
  if (reason < 0) {
    RT_WARN("actor failed", RT_LF_STR("actor", actor->name),
            RT_LF_STR("error", rt_strerror(reason)));
  }
  /* A running actor's mailbox is drained by the loop after the handler
   * returns; otherwise drain it now. */
  if (!actor->running) free_pending(actor);
  if (actor->on_stop != NULL) actor->on_stop(actor, reason);
  tell_supervisor(actor, reason);
}

/* Handles up to budget messages. */
static void run_one(rt_loop_t *loop, rt_actor_t *actor) {
  actor->running = true;
  for (uint32_t i = 0; i < loop->config.actor_budget && !actor->stopped; i++) {
    rt_msg_t *msg = rt_mailbox_pop(&actor->mailbox);
    if (msg == NULL) break;
    if (msg->type == RT_MSG_STOP) {
      rt_msg_free(msg);
      rt_actor_stop(actor, 0);
      break;
    }
    int rc = actor->handler(actor, msg);
    actor->msgs_handled++;
    loop->stats.msgs_handled++;
    if (!(msg->flags & RT_MSGF_KEEP)) rt_msg_free(msg);
    if (rc < 0) rt_actor_stop(actor, rc);
  }
  actor->running = false;
  if (actor->stopped) free_pending(actor);
}

/* After a turn: back in the queue, or unscheduled with a second look. */
static void reschedule_or_park(rt_loop_t *loop, rt_actor_t *actor) {
  if (rt_mailbox_maybe_nonempty(&actor->mailbox) && !actor->stopped) {
    run_queue_append(loop, actor);
    return;
  }
  atomic_store_explicit(&actor->scheduled, false, memory_order_seq_cst);
  if (rt_mailbox_maybe_nonempty(&actor->mailbox) &&
      !atomic_exchange_explicit(&actor->scheduled, true, memory_order_seq_cst)) {
    run_queue_append(loop, actor);
  }
}

/* Moves actors scheduled from other threads into the local run queue, in
 * the order they were scheduled. */
static void take_remote(rt_loop_t *loop) {
  rt_actor_t *list = atomic_exchange_explicit(&loop->remote_actors, NULL,
                                              memory_order_acquire);
  rt_actor_t *reversed = NULL;
  while (list != NULL) {
    rt_actor_t *next = atomic_load_explicit(&list->remote_next, memory_order_relaxed);
    atomic_store_explicit(&list->remote_next, reversed, memory_order_relaxed);
    reversed = list;
    list = next;
  }
  while (reversed != NULL) {
    rt_actor_t *next = atomic_load_explicit(&reversed->remote_next, memory_order_relaxed);
    run_queue_append(loop, reversed);
    reversed = next;
  }
}

bool rt__actors_run(rt_loop_t *loop) {
  take_remote(loop);
  /* Run only those queued now; actors scheduled during this pass (by one
   * another) run in the next iteration, after I/O has had its turn. */
  rt_actor_t *tail = loop->run_tail;
  while (loop->run_head != NULL) {
    rt_actor_t *actor = loop->run_head;
    loop->run_head = actor->run_next;
    if (loop->run_head == NULL) loop->run_tail = NULL;
    actor->run_next = NULL;
    run_one(loop, actor);
    reschedule_or_park(loop, actor);
    if (actor == tail) break;
  }
  return loop->run_head != NULL;
}

/* Pops until the mailbox is empty. No sender may be half-way through a
 * push (the loop has stopped and nobody holds it), so NULL means empty. */
static uint32_t drop_all(rt_actor_t *actor) {
  uint32_t dropped = 0;
  rt_msg_t *msg;
  while ((msg = rt_mailbox_pop(&actor->mailbox)) != NULL) {
    rt_msg_free(msg);
    dropped++;
  }
  return dropped;
}

uint32_t rt__actors_drop(rt_loop_t *loop) {
  /* An actor with messages waiting is scheduled, hence in one of the two
   * queues: the remote stack or the local run queue. */
  take_remote(loop);
  uint32_t dropped = 0;
  while (loop->run_head != NULL) {
    rt_actor_t *actor = loop->run_head;
    loop->run_head = actor->run_next;
    actor->run_next = NULL;
    dropped += drop_all(actor);
    atomic_store_explicit(&actor->scheduled, false, memory_order_relaxed);
  }
  loop->run_tail = NULL;
  if (dropped > 0) {
    RT_INFO("messages sent after the loop stopped, freed unhandled",
            RT_LF_INT("count", dropped));
  }
  return dropped;
}

/* ------------------------------------------------------------------------ */
/* Supervision                                                              */
/* ------------------------------------------------------------------------ */

/* A child whose restart could not be scheduled stays down; said loudly,
 * since nothing will bring it back. */
static void child_restart_lost(const rt_child_t *child) {
  RT_ERROR("child restart not scheduled: timer heap full", RT_LF_STR("actor", child->spec.name),
           RT_LF_INT("restarts", child->restarts));
}

static void child_restart(rt_timer_t *timer) {
  rt_child_t *child = timer->ctx;
  rt_actor_t *actor = child->actor;
  rt_loop_t *loop = actor->loop;
  actor->stopped = false;
  child->restarts++;
  child->started_ns = rt_loop_now_ns(loop);
  RT_INFO("restarting actor", RT_LF_STR("actor", child->spec.name),
          RT_LF_INT("restarts", child->restarts));
  int rc = child->spec.start(actor, loop, child->spec.arg);
  child->up = rc == 0;
  if (rc < 0) {
    actor->stopped = true;
    uint32_t next = child->backoff_ms * 2;
    child->backoff_ms = next > child->spec.backoff_max_ms ? child->spec.backoff_max_ms : next;
    /* From our own timer's callback this start finds the slot it left;
     * called at once by child_down(), it may not. */
    if (rt_timer_start(loop, &child->restart_timer, child->backoff_ms, 0) < 0)
      child_restart_lost(child);
  }
}

static void child_down(rt_sup_t *sup, uint32_t index, int reason) {
  if (index >= sup->children_count) return;
  rt_child_t *child = &sup->children[index];
  rt_loop_t *loop = sup->actor.loop;
  child->up = false;
  if (reason == 0) return; /* a clean stop is not restarted */
  uint64_t up_ms = (rt_loop_now_ns(loop) - child->started_ns) / 1000000u;
  if (up_ms >= child->spec.stable_ms) {
    child->backoff_ms = child->spec.backoff_min_ms;
  } else {
    uint32_t next = child->backoff_ms == 0 ? child->spec.backoff_min_ms
                                           : child->backoff_ms * 2;
    child->backoff_ms = next > child->spec.backoff_max_ms ? child->spec.backoff_max_ms : next;
  }
  RT_WARN("child down", RT_LF_STR("actor", child->spec.name),
          RT_LF_STR("reason", rt_strerror(reason)),
          RT_LF_INT("restart_in_ms", child->backoff_ms));
  if (rt_timer_start(loop, &child->restart_timer, child->backoff_ms, 0) < 0) {
    /* No timer for the back-off: restart at once rather than never. */
    child_restart(&child->restart_timer);
  }
}

static int sup_handler(rt_actor_t *self, rt_msg_t *msg) {
  rt_sup_t *sup = self->state;
  if (msg->type == RT_MSG_CHILD_DOWN) {
    int reason;
    memcpy(&reason, msg->data, sizeof reason);
    child_down(sup, (uint32_t)msg->u64, reason);
  }
  return 0;
}

static void sup_stopped(rt_actor_t *self, int reason) {
  rt_sup_t *sup = self->state;
  for (uint32_t i = 0; i < sup->children_count; i++)
    rt_timer_stop(self->loop, &sup->children[i].restart_timer);
}

void rt_sup_init(rt_sup_t *sup, rt_loop_t *loop, const char *name) {
  memset(sup, 0, sizeof *sup);
  rt_actor_init(&sup->actor, loop, name, sup_handler, sup);
  sup->actor.on_stop = sup_stopped;
}

int rt_sup_start_child(rt_sup_t *sup, rt_actor_t *child,
                       const rt_child_spec_t *spec) {
  if (sup->children_count == RT_SUP_CHILDREN_MAX) return RT_E_LIMIT;
  if (child->loop != sup->actor.loop) return RT_E_CONFIG;
  uint32_t index = sup->children_count++;
  rt_child_t *c = &sup->children[index];
  c->spec = *spec;
  if (c->spec.backoff_min_ms == 0) c->spec.backoff_min_ms = 100;
  if (c->spec.backoff_max_ms < c->spec.backoff_min_ms)
    c->spec.backoff_max_ms = c->spec.backoff_min_ms * 64;
  if (c->spec.stable_ms == 0) c->spec.stable_ms = 10000;
  c->actor = child;
  c->backoff_ms = 0;
  rt_timer_init(&c->restart_timer, child_restart, c);
  child->supervisor = &sup->actor;
  child->child_index = index;
  c->started_ns = rt_loop_now_ns(child->loop);
  int rc = spec->start(child, child->loop, spec->arg);
  c->up = rc == 0;
  if (rc < 0) {
    child->stopped = true;
    child_down(sup, index, rc);
  }
  return 0;
}
