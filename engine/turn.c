/* Work for a later loop turn: see turn.h. */
#include "turn.h"

static void on_turn_idle(uv_idle_t *h)
{
    lp_turns_t *ts = h->data;
    /* Only what was queued before this turn: a continuation that queues itself again
     * waits for the next one, after the loop's I/O, so no owner can hold the loop. */
    lp_list_t batch;
    lp_list_take_all(&batch, &ts->q);
    /* A continuation may end other owners, whose lp_turn_cancel takes them out of the
     * batch: the next one is read from the batch each time, never kept across a call. */
    while (!lp_list_empty(&batch)) {
        lp_turn_t *t = LP_CONTAINER_OF(batch.next, lp_turn_t, link);
        lp_turn_cancel(t);
        t->fn(t);
    }
    if (lp_list_empty(&ts->q))
        uv_idle_stop(&ts->idle);
}

void lp_turns_init(lp_turns_t *ts, uv_loop_t *loop)
{
    lp_list_init(&ts->q);
    uv_idle_init(loop, &ts->idle);
    ts->idle.data = ts;
    ts->on = 1;
}

void lp_turns_close(lp_turns_t *ts)
{
    if (!ts->on)
        return;
    ts->on = 0;
    while (!lp_list_empty(&ts->q)) /* none is left by then; never leave one linked */
        lp_turn_cancel(LP_CONTAINER_OF(ts->q.next, lp_turn_t, link));
    uv_idle_stop(&ts->idle);
    uv_close((uv_handle_t *)&ts->idle, NULL);
}

void lp_turn_queue(lp_turns_t *ts, lp_turn_t *t, lp_turn_fn fn)
{
    if (lp_turn_queued(t) || !ts->on)
        return;
    t->fn = fn;
    lp_list_insert_tail(&ts->q, &t->link);
    uv_idle_start(&ts->idle, on_turn_idle);
}

void lp_turn_cancel(lp_turn_t *t)
{
    if (!lp_turn_queued(t))
        return;
    lp_list_remove(&t->link);
    t->link.next = t->link.prev = NULL;
}
