/* Lazy one-shot timers for connections. Setting or cancelling only records a deadline; the
 * libuv timer is re-armed only when the new deadline is earlier than the armed one, and a
 * firing checks the recorded deadline (re-arming for the rest when it moved later). A
 * request then touches libuv's timer heap rarely instead of several times. */
#ifndef LP_LAZYTIMER_H
#define LP_LAZYTIMER_H

#include <uv.h>

typedef struct {
    uint64_t deadline; /* loop time when it expires; 0: not set */
    uint64_t armed;    /* when the libuv timer fires */
} lp_lazy_t;

static inline void lp_lazy_set(uv_timer_t *t, lp_lazy_t *z, uint64_t ms, uv_timer_cb cb)
{
    uint64_t d = uv_now(t->loop) + ms;
    z->deadline = d;
    if (!uv_is_active((uv_handle_t *)t) || d < z->armed) {
        z->armed = d;
        uv_timer_start(t, cb, ms, 0);
    }
}

static inline void lp_lazy_cancel(lp_lazy_t *z)
{
    z->deadline = 0;
}

/* In the timer callback: 1 when the recorded deadline has passed (it is cleared then);
 * otherwise the timer is re-armed for what is left and 0 is returned. */
static inline int lp_lazy_due(uv_timer_t *t, lp_lazy_t *z, uv_timer_cb cb)
{
    if (!z->deadline)
        return 0;
    uint64_t now = uv_now(t->loop);
    if (now < z->deadline) {
        z->armed = z->deadline;
        uv_timer_start(t, cb, z->deadline - now, 0);
        return 0;
    }
    z->deadline = 0;
    return 1;
}

#endif
