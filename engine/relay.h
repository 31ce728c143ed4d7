/* The two endpoints of one request, side by side: cross-side backpressure (stop reading
 * one side while the other has too much queued) and the raw tunnel after an Upgrade.
 * The downstream and upstream code reach each other's socket only through here. */
#ifndef LP_RELAY_H
#define LP_RELAY_H

#include "endpoint.h"
#include "proxy-t.h"

/* `to` has more queued than the high watermark: stop feeding it. */
static inline int lp_relay_full(const lp_endpoint_t *to)
{
    return lp_ep_queued(to) > LP_HIGH_WATERMARK;
}

/* `to` drained to the low watermark: feeding it may resume. */
static inline int lp_relay_drained(const lp_endpoint_t *to)
{
    return to->out_pending <= LP_LOW_WATERMARK;
}

/* A body span for `to`, as it is (the block pinned, not copied), or as one chunk of
 * chunked framing. */
void lp_relay_body(lp_endpoint_t *to, const char *at, size_t len, lp_buf_t *pin, int chunked);

/* Tunnel: what `from` read and nobody used goes to `to` as it is (the read block pinned,
 * not copied), and out. */
void lp_relay_move(lp_endpoint_t *from, lp_endpoint_t *to);

#endif
