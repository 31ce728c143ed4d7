#include "http1.h"
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

void lp_relay_body(lp_endpoint_t *to, const char *at, size_t len, lp_buf_t *pin, int chunked)
{
    if (!chunked) {
        lp_wbatch_t *wb = lp_ep_outb(to, 1, 0);
        if (wb)
            lp_wbatch_add(wb, at, len, pin);
        return;
    }
    char size[24];
    size_t n = lp_u64_to_str(len, 16, size);
    size[n++] = '\r';
    size[n++] = '\n';
    lp_wbatch_t *wb = lp_ep_outb(to, 3, (unsigned)n + 2);
    if (!wb)
        return;
    lp_wbatch_add_copy(wb, size, n);
    lp_wbatch_add(wb, at, len, pin);
    lp_wbatch_add(wb, "\r\n", 2, NULL);
}
