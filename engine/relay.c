#include "relay.h"

void lp_relay_move(lp_endpoint_t *from, lp_endpoint_t *to)
{
    if (from->rbuf && from->rpos < from->rlen) {
        lp_wbatch_t *wb = lp_ep_outb(to, 1, 0);
        if (wb)
            lp_wbatch_add(wb, from->rbuf->data + from->rpos, from->rlen - from->rpos, from->rbuf);
        from->rpos = from->rlen;
    }
    lp_ep_flush(to);
}
