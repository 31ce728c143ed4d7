/* Work for a later loop turn (engine/turn.c). An object that has done its share of one
 * turn's work (a cache hit's body through a response_body filter that sends little, so the
 * client's queue never fills to stop it) queues its continuation here and returns: the
 * worker serves the other connections' I/O first, then runs the continuation on the next
 * turn. Worker-local.
 *
 * Lifetime: a queued lp_turn_t is embedded in its owner, which cancels it (lp_turn_cancel)
 * before it ends or is freed; the continuation therefore only ever runs on a live owner,
 * which still checks that the work is still wanted (the request may have moved on). */
#ifndef LP_TURN_H
#define LP_TURN_H

#include <uv.h>
#include "common.h"

typedef struct lp_turn_s lp_turn_t;
typedef void (*lp_turn_fn)(lp_turn_t *t);

struct lp_turn_s {
    lp_list_t link; /* in lp_turns_t.q (or the batch running) while queued; zeroed: not */
    lp_turn_fn fn;  /* what runs: set by lp_turn_queue */
};

/* A worker's queue (lp_worker_t.turns). */
typedef struct lp_turns_s {
    lp_list_t q;    /* lp_turn_t.link: to run on the next turn, oldest first */
    uv_idle_t idle; /* active while q is not empty (the loop polls without sleeping) */
    int on;         /* lp_turns_init ran and lp_turns_close did not */
} lp_turns_t;

void lp_turns_init(lp_turns_t *ts, uv_loop_t *loop);
/* At worker exit, once no owner is left (q is empty): closes the idle handle. */
void lp_turns_close(lp_turns_t *ts);

static inline int lp_turn_queued(const lp_turn_t *t)
{
    return t->link.next != NULL;
}

/* Runs fn(t) on the next loop turn; nothing when t is already queued. */
void lp_turn_queue(lp_turns_t *ts, lp_turn_t *t, lp_turn_fn fn);
/* Takes t out of its queue (nothing when it is not queued). */
void lp_turn_cancel(lp_turn_t *t);

#endif
