/* Reference-counted I/O blocks from a per-worker free list, and write batches that
 * gather iovecs over them for one uv_write.
 *
 * Ownership: a block is owned by whoever holds a reference. A read fills a fresh
 * block; body bytes forwarded without copying take an extra reference that the
 * write batch drops in its write callback. Idle connections hold no block. */
#ifndef LP_BUF_H
#define LP_BUF_H

#include <uv.h>
#include "common.h"

#define LP_BUF_SIZE  (64 * 1024) /* reads: large, for throughput */
#define LP_BUF_SMALL 4096        /* message heads and arenas: most fit */

typedef struct lp_bufpool_s lp_bufpool_t;

typedef struct lp_buf_s {
    struct lp_buf_s *next; /* free-list link while pooled */
    lp_bufpool_t *pool;    /* NULL for an oversized block that is freed, not pooled */
    lp_bufpool_t *owner;   /* the pool that counts it in `outstanding` */
    uint32_t refs;
    size_t cap; /* bytes in data */
    /* NULL for a block of our own. Else the block pins memory it does not hold (a cache
     * entry's body, engine/cache_ffi.c): the last lp_buf_unref calls this instead of freeing
     * or pooling, and it frees the block. */
    void (*release)(struct lp_buf_s *b);
    char data[];
} lp_buf_t;

struct lp_bufpool_s {
    lp_buf_t *free; /* LP_BUF_SIZE blocks */
    size_t nfree;
    lp_buf_t *free_small; /* LP_BUF_SMALL blocks */
    size_t nfree_small;
    size_t max_free;       /* blocks kept beyond this go back to malloc */
    size_t outstanding;    /* blocks handed out and not yet returned (metrics, leak checks) */
    size_t low, low_small; /* the fewest free since the last trim: that many went unused */
};

void lp_bufpool_init(lp_bufpool_t *p, size_t max_free);
void lp_bufpool_destroy(lp_bufpool_t *p);
/* Frees the free blocks that went unused since the last trim (what a peak left behind);
 * returns the bytes freed. */
size_t lp_bufpool_trim(lp_bufpool_t *p);
/* A block of at least `size` bytes with one reference: LP_BUF_SMALL or LP_BUF_SIZE from
 * the free lists, or exactly `size` from malloc when larger. */
lp_buf_t *lp_buf_get(lp_bufpool_t *p, size_t size);
static inline lp_buf_t *lp_buf_ref(lp_buf_t *b)
{
    b->refs++;
    return b;
}
void lp_buf_unref(lp_buf_t *b);

/* A write batch: up to LP_WBATCH_MAX iovecs, each optionally pinning a block, plus a
 * small scratch area for framing bytes (chunk sizes) that must outlive the call. */
#define LP_WBATCH_MAX     64
#define LP_WBATCH_SCRATCH 1024

typedef struct lp_wbatch_s lp_wbatch_t;
typedef void (*lp_wbatch_cb)(lp_wbatch_t *wb, int status);

struct lp_wbatch_s {
    uv_write_t req; /* req.data is free for the owner */
    lp_wbatch_t *next_free;
    lp_wbatch_cb cb;
    void *owner;
    size_t bytes;
    unsigned n;
    unsigned scratch_used;
    uv_buf_t bufs[LP_WBATCH_MAX];
    lp_buf_t *pins[LP_WBATCH_MAX];
    char scratch[LP_WBATCH_SCRATCH];
};

typedef struct {
    lp_wbatch_t *free;
    size_t nfree;
    size_t low; /* the fewest free since the last trim */
} lp_wbpool_t;

lp_wbatch_t *lp_wbatch_get(lp_wbpool_t *p);
void lp_wbatch_put(lp_wbpool_t *p, lp_wbatch_t *wb);
void lp_wbpool_destroy(lp_wbpool_t *p);
/* As lp_bufpool_trim, for write batches; returns the bytes freed. */
size_t lp_wbpool_trim(lp_wbpool_t *p);
/* Room left for k more iovecs and `scratch` scratch bytes. */
static inline int lp_wbatch_room(const lp_wbatch_t *wb, unsigned k, unsigned scratch)
{
    return wb->n + k <= LP_WBATCH_MAX && wb->scratch_used + scratch <= LP_WBATCH_SCRATCH;
}
/* Appends bytes; pin (may be NULL) gets an extra reference that the batch releases. */
void lp_wbatch_add(lp_wbatch_t *wb, const char *base, size_t len, lp_buf_t *pin);
/* Copies len (<= free scratch) bytes into the scratch area and appends them. */
void lp_wbatch_add_copy(lp_wbatch_t *wb, const char *base, size_t len);
/* Tries to write the whole batch now. Returns LP_WBATCH_DONE (all written: release it) or
 * the index of the first iovec left to write with uv_write (the batch's bytes then count
 * only what is left). Errors are left to uv_write, whose callback reports them: a flush
 * never closes a connection under its caller's feet. */
#define LP_WBATCH_DONE 0xffffu
unsigned lp_wbatch_try_write(lp_wbatch_t *wb, uv_stream_t *s);
/* Sends wb on s: written at once when nothing is queued (*pending is 0), else queued with
 * uv_write (cb releases it; *pending counts its bytes until then). A non-zero libuv error
 * means nothing was queued and the batch is already released. */
int lp_wbatch_send(lp_wbatch_t *wb, uv_stream_t *s, lp_wbpool_t *pool, size_t *pending,
                   uv_write_cb cb);
/* Drops every pin and resets the batch for reuse. */
void lp_wbatch_release(lp_wbatch_t *wb);

#endif
