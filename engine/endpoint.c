#include <stdlib.h>
#include "endpoint.h"
#include "log.h"
#include "tls.h"

/* ---- deadlines ---- */

static lp_ep_timers_t *timers_of(lp_endpoint_t *ep)
{
    return &ep->env->timers;
}

static void heap_set(lp_ep_timers_t *t, uint32_t i, lp_endpoint_t *ep)
{
    t->heap[i] = ep;
    ep->hidx = i + 1;
}

static void heap_up(lp_ep_timers_t *t, uint32_t i)
{
    lp_endpoint_t *ep = t->heap[i];
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (t->heap[parent]->key <= ep->key)
            break;
        heap_set(t, i, t->heap[parent]);
        i = parent;
    }
    heap_set(t, i, ep);
}

static void heap_down(lp_ep_timers_t *t, uint32_t i)
{
    lp_endpoint_t *ep = t->heap[i];
    for (;;) {
        uint32_t c = 2 * i + 1;
        if (c >= t->n)
            break;
        if (c + 1 < t->n && t->heap[c + 1]->key < t->heap[c]->key)
            c++;
        if (ep->key <= t->heap[c]->key)
            break;
        heap_set(t, i, t->heap[c]);
        i = c;
    }
    heap_set(t, i, ep);
}

static void heap_remove(lp_ep_timers_t *t, lp_endpoint_t *ep)
{
    uint32_t i = ep->hidx - 1;
    ep->hidx = 0;
    lp_endpoint_t *last = t->heap[--t->n];
    if (i == t->n)
        return;
    heap_set(t, i, last);
    heap_down(t, i);
    heap_up(t, last->hidx - 1);
}

static int heap_push(lp_ep_timers_t *t, lp_endpoint_t *ep)
{
    if (t->n == t->cap) {
        uint32_t cap = t->cap ? t->cap * 2 : 64;
        lp_endpoint_t **h = realloc(t->heap, cap * sizeof(*h));
        if (!h)
            return LP_ENOMEM;
        t->heap = h;
        t->cap = cap;
    }
    heap_set(t, t->n++, ep);
    heap_up(t, t->n - 1);
    return 0;
}

static void on_ep_timers(uv_timer_t *h);

/* Sets the libuv timer for the earliest entry, when that is earlier than it is set for. */
static void timers_arm(lp_ep_timers_t *t, uint64_t now)
{
    if (!t->n)
        return;
    uint64_t k = t->heap[0]->key;
    if (t->armed && t->armed <= k)
        return;
    t->armed = k;
    uv_timer_start(&t->timer, on_ep_timers, k > now ? k - now : 0, 0);
}

static void on_ep_timers(uv_timer_t *h)
{
    lp_ep_timers_t *t = h->data;
    uint64_t now = uv_now(h->loop);
    t->armed = 0;
    while (t->n && t->heap[0]->key <= now) {
        lp_endpoint_t *ep = t->heap[0];
        if (ep->deadline > now) {
            ep->key = ep->deadline; /* it moved later since: wait for it */
            heap_down(t, 0);
            continue;
        }
        heap_remove(t, ep);
        if (!ep->deadline || (ep->flags & LP_EPF_CLOSING))
            continue; /* cancelled */
        ep->deadline = 0;
        ep->ops->timeout(ep, ep->tmode); /* may close it, or set other deadlines */
    }
    timers_arm(t, uv_now(h->loop));
}

void lp_ep_timers_init(lp_ep_timers_t *t, uv_loop_t *loop)
{
    memset(t, 0, sizeof(*t));
    uv_timer_init(loop, &t->timer);
    t->timer.data = t;
}

void lp_ep_timers_close(lp_ep_timers_t *t)
{
    /* Normally empty by now; an endpoint still in it must not reach the freed array. */
    for (uint32_t i = 0; i < t->n; i++) {
        t->heap[i]->hidx = 0;
        t->heap[i]->deadline = 0;
    }
    t->closed = 1;
    uv_close((uv_handle_t *)&t->timer, NULL);
    free(t->heap);
    t->heap = NULL;
    t->n = t->cap = 0;
}

void lp_ep_env_init(lp_ep_env_t *env, uv_loop_t *loop, lp_bufpool_t *bufs, lp_wbpool_t *wbatches)
{
    env->loop = loop;
    env->bufs = bufs;
    env->wbatches = wbatches;
    lp_ep_timers_init(&env->timers, loop);
}

static void on_ep_handle_close(uv_handle_t *h)
{
    lp_endpoint_t *ep = h->data;
    ep->ops->closed(ep);
}

void lp_ep_init(lp_endpoint_t *ep, lp_ep_env_t *env, const lp_endpoint_ops_t *ops)
{
    ep->env = env;
    ep->ops = ops;
    uv_tcp_init(env->loop, &ep->tcp);
    ep->tcp.data = ep;
}

void lp_ep_close(lp_endpoint_t *ep)
{
    if (ep->flags & LP_EPF_CLOSING)
        return;
    ep->flags |= LP_EPF_CLOSING;
    ep->flags &= ~LP_EPF_READING;
    if (ep->rbuf) {
        lp_buf_unref(ep->rbuf);
        ep->rbuf = NULL;
    }
    if (ep->outb) {
        lp_wbatch_put(ep->env->wbatches, ep->outb);
        ep->outb = NULL;
    }
    lp_tls_free(ep->tls);
    ep->tls = NULL;
    ep->deadline = 0;
    if (ep->hidx)
        heap_remove(timers_of(ep), ep);
    uv_close((uv_handle_t *)&ep->tcp, on_ep_handle_close);
}

void lp_ep_timer(lp_endpoint_t *ep, int mode, uint64_t ms)
{
    if ((ep->flags & LP_EPF_BROKEN) && mode != LP_EP_TM_BROKEN)
        return; /* the failure scheduled for a failed write comes first */
    if (ep->flags & LP_EPF_CLOSING)
        return;
    ep->tmode = (uint8_t)mode;
    if (mode == LP_EP_TM_NONE) {
        ep->deadline = 0; /* the heap entry goes when it comes up */
        return;
    }
    lp_ep_timers_t *t = timers_of(ep);
    if (t->closed)
        return; /* the loop is past its last endpoint's end */
    uint64_t now = uv_now(ep->env->loop);
    ep->deadline = now + ms;
    if (ep->hidx) {
        if (ep->deadline < ep->key) {
            ep->key = ep->deadline;
            heap_up(t, ep->hidx - 1);
        }
    } else {
        ep->key = ep->deadline;
        if (heap_push(t, ep)) {
            /* Not closed here, under its caller: it goes when its peer does. */
            lp_log_error("out of memory for a connection timer: it will not time out");
            ep->deadline = 0;
            return;
        }
    }
    timers_arm(t, now);
}

/* ---- writing ---- */

static void on_ep_write(uv_write_t *wr, int status)
{
    lp_wbatch_t *wb = LP_CONTAINER_OF(wr, lp_wbatch_t, req);
    lp_endpoint_t *ep = wb->owner;
    ep->out_pending -= wb->bytes;
    lp_wbatch_put(ep->env->wbatches, wb);
    if (!(ep->flags & LP_EPF_CLOSING))
        ep->ops->written(ep, status);
}

/* The socket broke under a write: the owner hears of it on the next loop turn, when no
 * caller of a flush still holds what the failure would end. */
static int ep_broken(lp_endpoint_t *ep)
{
    ep->flags |= LP_EPF_BROKEN;
    lp_ep_timer(ep, LP_EP_TM_BROKEN, 0);
    return -1;
}

/* Hands one batch of wire bytes to libuv. -1 when the socket broke. */
static int ep_send(lp_endpoint_t *ep, lp_wbatch_t *wb)
{
    wb->owner = ep;
    if (lp_wbatch_send(wb, (uv_stream_t *)&ep->tcp, ep->env->wbatches, &ep->out_pending,
                       on_ep_write))
        return ep_broken(ep);
    return 0;
}

int lp_ep_flush_tls(lp_endpoint_t *ep)
{
    lp_wbatch_t *wb;
    if (ep->flags & (LP_EPF_CLOSING | LP_EPF_BROKEN))
        return 0;
    while (ep->tls && (wb = lp_tls_out(ep->tls, ep->env->wbatches)))
        if (ep_send(ep, wb))
            return -1;
    return 0;
}

int lp_ep_flush(lp_endpoint_t *ep)
{
    if (ep->flags & (LP_EPF_CLOSING | LP_EPF_BROKEN) || !(ep->flags & LP_EPF_WRITABLE))
        return 0;
    lp_wbatch_t *wb = ep->outb;
    if (wb && wb->n) {
        ep->outb = NULL;
        if (ep->tls) {
            /* TLS copies the bytes into records: the plain batch is done with. */
            int rc = lp_tls_write(ep->tls, wb);
            lp_wbatch_put(ep->env->wbatches, wb);
            if (rc)
                return ep_broken(ep);
        } else if (ep_send(ep, wb)) {
            return -1;
        }
    }
    /* TLS output: records, and handshake messages, alerts and tickets. */
    return lp_ep_flush_tls(ep);
}

lp_wbatch_t *lp_ep_outb(lp_endpoint_t *ep, unsigned k, unsigned scratch)
{
    if (ep->outb && !lp_wbatch_room(ep->outb, k, scratch)) {
        if (!(ep->flags & LP_EPF_WRITABLE))
            return NULL; /* nothing can go out before the connect completes */
        lp_ep_flush(ep);
    }
    if (!ep->outb)
        ep->outb = lp_wbatch_get(ep->env->wbatches);
    return ep->outb;
}

/* ---- reading ---- */

uv_buf_t lp_ep_read_space(lp_endpoint_t *ep)
{
    lp_buf_t *b = ep->rbuf;
    if (b) {
        if (ep->rpos >= ep->rlen && b->refs == 1) {
            ep->rpos = ep->rlen = 0; /* all used, nothing pinned: start over */
        } else if (b->cap - ep->rlen < 4096 && ep->rpos >= ep->rlen) {
            lp_buf_unref(b); /* pinned by writes and nearly full: take a fresh one */
            ep->rbuf = b = NULL;
        } else if (b->cap == ep->rlen) {
            return uv_buf_init(NULL, 0); /* full of unparsed input: UV_ENOBUFS pauses */
        }
    }
    if (!b) {
        b = ep->rbuf = lp_buf_get(ep->env->bufs, LP_BUF_SIZE);
        if (!b)
            return uv_buf_init(NULL, 0);
        ep->rpos = ep->rlen = 0;
    }
    return uv_buf_init(b->data + ep->rlen, (unsigned)(b->cap - ep->rlen)); /* 64 KiB */
}

void lp_ep_release_rbuf(lp_endpoint_t *ep)
{
    if (ep->rbuf && ep->rpos >= ep->rlen) {
        lp_buf_unref(ep->rbuf);
        ep->rbuf = NULL;
        ep->rpos = ep->rlen = 0;
    }
}

int lp_ep_tls_fill(lp_endpoint_t *ep, int *err)
{
    *err = 0;
    if (!ep->tls || !lp_tls_established(ep->tls) || (ep->flags & LP_EPF_TLS_END))
        return 0;
    uv_buf_t room = lp_ep_read_space(ep);
    if (!room.len)
        return 0;
    long n = lp_tls_read(ep->tls, room.base, room.len);
    if (n > 0) {
        ep->rlen += (uint32_t)n;
        return 1;
    }
    lp_ep_release_rbuf(ep); /* nothing for the application (a ticket, say): hold no block */
    if (n == 0)
        return 0;
    ep->flags |= LP_EPF_TLS_END;
    *err = n == LP_TLS_EOF ? 0 : UV_EPROTO;
    return -1;
}

static void on_ep_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    lp_endpoint_t *ep = h->data;
    *buf =
        ep->tls && !(ep->flags & LP_EPF_RAW_IN) ? lp_tls_in_space(ep->tls) : lp_ep_read_space(ep);
}

static void on_ep_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    lp_endpoint_t *ep = s->data;
    if (nread == 0)
        return;
    if (nread == UV_ENOBUFS) {
        /* No room: the owner starts reading again once it used what is there. */
        lp_ep_reading(ep, 0);
        return;
    }
    if (nread > 0) {
        if (ep->tls && !(ep->flags & LP_EPF_RAW_IN))
            lp_tls_in_commit(ep->tls, (size_t)nread);
        else
            ep->rlen += (uint32_t)nread;
    }
    ep->ops->input(ep, nread);
}

void lp_ep_reading(lp_endpoint_t *ep, int want)
{
    if (ep->flags & LP_EPF_CLOSING)
        return;
    if (want && ep->tls && lp_tls_in_full(ep->tls))
        want = 0;
    if (want && !(ep->flags & LP_EPF_READING)) {
        if (uv_read_start((uv_stream_t *)&ep->tcp, on_ep_alloc, on_ep_read) == 0)
            ep->flags |= LP_EPF_READING;
    } else if (!want && (ep->flags & LP_EPF_READING)) {
        uv_read_stop((uv_stream_t *)&ep->tcp);
        ep->flags &= ~LP_EPF_READING;
    }
}

/* ---- TLS client ---- */

int lp_ep_tls_connect(lp_endpoint_t *ep, struct lp_tls_client_s *ctx, const char *name,
                      void **session)
{
    ep->tls = lp_tls_connect(ctx, name, session, ep->env->bufs);
    if (!ep->tls)
        return LP_ENOMEM;
    if (lp_tls_handshake(ep->tls) == LP_ERROR)
        return LP_ERROR;
    lp_ep_flush_tls(ep); /* a broken socket is reported through ops->timeout */
    return LP_OK;
}

int lp_ep_tls_handshake(lp_endpoint_t *ep)
{
    int rc = lp_tls_handshake(ep->tls);
    /* What it answers goes first, an alert on failure too. */
    if (lp_ep_flush_tls(ep))
        return LP_AGAIN; /* ops->timeout(LP_EP_TM_BROKEN) ends it */
    return rc;
}
