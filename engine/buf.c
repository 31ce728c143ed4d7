#include <stdlib.h>
#include <assert.h>
#include "buf.h"

/* Under AddressSanitizer a pooled block's bytes are poisoned while it waits in the free
 * list: a pointer left into a block given back (a header, a capture) reads as a
 * use-after-free at once, as it would after free(), instead of silently reading whatever
 * the block's next user wrote. */
#if defined(__SANITIZE_ADDRESS__)
#define LP_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LP_ASAN 1
#endif
#endif
#ifdef LP_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(b)   ASAN_POISON_MEMORY_REGION((b)->data, (b)->cap)
#define UNPOISON(b) ASAN_UNPOISON_MEMORY_REGION((b)->data, (b)->cap)
#else
#define POISON(b)   ((void)(b))
#define UNPOISON(b) ((void)(b))
#endif

void lp_bufpool_init(lp_bufpool_t *p, size_t max_free)
{
    memset(p, 0, sizeof(*p));
    p->max_free = max_free;
}

static void free_list(lp_buf_t **head)
{
    while (*head) {
        lp_buf_t *b = *head;
        *head = b->next;
        UNPOISON(b);
        free(b);
    }
}

static size_t trim_list(lp_buf_t **head, size_t *n, size_t drop)
{
    size_t bytes = 0;
    for (; drop && *head; drop--) {
        lp_buf_t *b = *head;
        *head = b->next;
        (*n)--;
        bytes += sizeof(*b) + b->cap;
        UNPOISON(b);
        free(b);
    }
    return bytes;
}

size_t lp_bufpool_trim(lp_bufpool_t *p)
{
    size_t bytes = trim_list(&p->free, &p->nfree, p->low) +
                   trim_list(&p->free_small, &p->nfree_small, p->low_small);
    p->low = p->nfree;
    p->low_small = p->nfree_small;
    return bytes;
}

void lp_bufpool_destroy(lp_bufpool_t *p)
{
    free_list(&p->free);
    free_list(&p->free_small);
    p->nfree = p->nfree_small = 0;
}

lp_buf_t *lp_buf_get(lp_bufpool_t *p, size_t size)
{
    lp_buf_t *b;
    if (size <= LP_BUF_SMALL && p->free_small) {
        b = p->free_small;
        p->free_small = b->next;
        if (--p->nfree_small < p->low_small)
            p->low_small = p->nfree_small;
        UNPOISON(b);
    } else if (size > LP_BUF_SMALL && size <= LP_BUF_SIZE && p->free) {
        b = p->free;
        p->free = b->next;
        if (--p->nfree < p->low)
            p->low = p->nfree;
        UNPOISON(b);
    } else {
        size_t cap = size <= LP_BUF_SMALL ? LP_BUF_SMALL : size <= LP_BUF_SIZE ? LP_BUF_SIZE : size;
        if (cap > SIZE_MAX - sizeof(*b))
            return NULL;
        b = malloc(sizeof(*b) + cap);
        if (!b)
            return NULL;
        b->cap = cap;
    }
    b->pool = b->cap == LP_BUF_SIZE || b->cap == LP_BUF_SMALL ? p : NULL;
    b->owner = p;
    b->next = NULL;
    b->release = NULL;
    b->refs = 1;
    p->outstanding++;
    return b;
}

void lp_buf_unref(lp_buf_t *b)
{
    assert(b->refs > 0);
    if (--b->refs)
        return;
    if (b->release) {
        b->release(b);
        return;
    }
    lp_bufpool_t *p = b->pool;
    if (!p) {
        if (b->owner)
            b->owner->outstanding--;
        free(b);
        return;
    }
    p->outstanding--;
    if (b->cap == LP_BUF_SMALL) {
        /* Small blocks are cheap to keep: four times as many. */
        if (p->nfree_small >= p->max_free * 4) {
            free(b);
            return;
        }
        b->next = p->free_small;
        p->free_small = b;
        p->nfree_small++;
        POISON(b);
        return;
    }
    if (p->nfree >= p->max_free) {
        free(b);
        return;
    }
    b->next = p->free;
    p->free = b;
    p->nfree++;
    POISON(b);
}

lp_wbatch_t *lp_wbatch_get(lp_wbpool_t *p)
{
    lp_wbatch_t *wb = p->free;
    if (wb) {
        p->free = wb->next_free;
        if (--p->nfree < p->low)
            p->low = p->nfree;
    } else {
        wb = malloc(sizeof(*wb));
        if (!wb)
            return NULL;
    }
    wb->next_free = NULL;
    wb->cb = NULL;
    wb->owner = NULL;
    wb->bytes = 0;
    wb->n = 0;
    wb->scratch_used = 0;
    return wb;
}

void lp_wbatch_release(lp_wbatch_t *wb)
{
    for (unsigned i = 0; i < wb->n; i++)
        if (wb->pins[i])
            lp_buf_unref(wb->pins[i]);
    wb->n = 0;
    wb->bytes = 0;
    wb->scratch_used = 0;
}

void lp_wbatch_put(lp_wbpool_t *p, lp_wbatch_t *wb)
{
    lp_wbatch_release(wb);
    if (p->nfree >= 64) {
        free(wb);
        return;
    }
    wb->next_free = p->free;
    p->free = wb;
    p->nfree++;
}

size_t lp_wbpool_trim(lp_wbpool_t *p)
{
    size_t bytes = 0;
    for (size_t drop = p->low; drop && p->free; drop--) {
        lp_wbatch_t *wb = p->free;
        p->free = wb->next_free;
        p->nfree--;
        bytes += sizeof(*wb);
        free(wb);
    }
    p->low = p->nfree;
    return bytes;
}

void lp_wbpool_destroy(lp_wbpool_t *p)
{
    while (p->free) {
        lp_wbatch_t *wb = p->free;
        p->free = wb->next_free;
        free(wb);
    }
    p->nfree = 0;
}

void lp_wbatch_add(lp_wbatch_t *wb, const char *base, size_t len, lp_buf_t *pin)
{
    assert(wb->n < LP_WBATCH_MAX);
    wb->bufs[wb->n] = uv_buf_init((char *)base, (unsigned)len);
    wb->pins[wb->n] = pin ? lp_buf_ref(pin) : NULL;
    wb->n++;
    wb->bytes += len;
}

void lp_wbatch_add_copy(lp_wbatch_t *wb, const char *base, size_t len)
{
    assert(wb->scratch_used + len <= LP_WBATCH_SCRATCH);
    char *dst = wb->scratch + wb->scratch_used;
    memcpy(dst, base, len);
    wb->scratch_used += (unsigned)len;
    /* Adjacent scratch appends merge into one iovec. */
    if (wb->n && !wb->pins[wb->n - 1] &&
        wb->bufs[wb->n - 1].base + wb->bufs[wb->n - 1].len == dst) {
        wb->bufs[wb->n - 1].len += len;
        wb->bytes += len;
        return;
    }
    lp_wbatch_add(wb, dst, len, NULL);
}

unsigned lp_wbatch_try_write(lp_wbatch_t *wb, uv_stream_t *s)
{
    /* A write that completes at once skips libuv's write queue, whose drain re-arms the
     * descriptor in epoll on every request. */
    int n = uv_try_write(s, wb->bufs, wb->n);
    if (n < 0)
        return 0; /* EAGAIN, or an error that uv_write reports through its callback */
    size_t done = (size_t)n;
    if (done == wb->bytes)
        return LP_WBATCH_DONE;
    /* Partly written: skip what went out; the pins stay until the batch is released. */
    unsigned i = 0;
    while (done >= wb->bufs[i].len) {
        done -= wb->bufs[i].len;
        i++;
    }
    wb->bufs[i].base += done;
    wb->bufs[i].len -= done;
    wb->bytes -= (size_t)n;
    return i;
}

int lp_wbatch_send(lp_wbatch_t *wb, uv_stream_t *s, lp_wbpool_t *pool, size_t *pending,
                   uv_write_cb cb)
{
    unsigned first = 0;
    if (!*pending) {
        first = lp_wbatch_try_write(wb, s);
        if (first == LP_WBATCH_DONE) {
            lp_wbatch_put(pool, wb);
            return 0;
        }
    }
    *pending += wb->bytes;
    int rc = uv_write(&wb->req, s, wb->bufs + first, wb->n - first, cb);
    if (rc) {
        *pending -= wb->bytes;
        lp_wbatch_put(pool, wb);
    }
    return rc;
}
