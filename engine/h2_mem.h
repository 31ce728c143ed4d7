/* nghttp2's memory (nghttp2_mem), for two reasons:
 *
 * - Speed: a session allocates and frees several small blocks per stream (the stream, its
 *   outbound items, the copied header list, header buffers). They come from the worker's
 *   free lists by size class (lp_h2_pool_t): a list pop and push instead of malloc and free.
 *   The worker's thread only: every session using a worker's lists is made and deleted on
 *   that worker's loop.
 * - Idle memory: nghttp2 allocates the buffer its frames are serialized into (a 16 KiB frame
 *   plus its header) when a session is made and keeps it until the session ends; on an idle
 *   connection it is most of the session's memory. The hooks of one session (lp_h2_mem_t)
 *   give it its own pages, and once the session has nothing to send the buffer holds no live
 *   byte (every frame was copied out to the endpoint by lp_h2_fill), so its whole pages can
 *   be dropped (MADV_DONTNEED): they read back as zeros and are faulted in again when the
 *   next frame is written. nginx likewise frees an idle HTTP/2 connection's buffers. */
#ifndef LP_H2_MEM_H
#define LP_H2_MEM_H

#include <stddef.h>
#include <stdint.h>
#include <nghttp2/nghttp2.h>

/* ---- a worker's free lists ---- */

typedef struct lp_h2_pool_s lp_h2_pool_t;

/* A worker's lists (NULL: out of memory; its sessions then allocate with malloc). */
lp_h2_pool_t *lp_h2_pool_new(void);
/* Gives back the blocks no session took since the last call (the house timer). Returns
 * the bytes freed. p may be NULL. */
size_t lp_h2_pool_trim(lp_h2_pool_t *p);
/* Frees the lists and their blocks, once no session uses them (worker teardown). */
void lp_h2_pool_free(lp_h2_pool_t *p);

/* ---- one session's hooks ---- */

typedef struct lp_h2_mem_s {
    nghttp2_mem mem;    /* the hooks nghttp2 copies; their user data is this struct */
    lp_h2_pool_t *pool; /* borrowed: the worker's lists, which outlive the session; NULL: malloc */
    /* borrowed (nghttp2 owns it): the output frame buffer, pages of its own (mmap, whole
     * pages for framebuf_len); NULL: not known */
    void *framebuf;
    /* borrowed (nghttp2 owns it): the stream map's table, a page of its own; NULL: not
     * known. All zero when no stream is in it, and then dropped too (it reads back the
     * same). */
    void *map;
    /* borrowed (nghttp2 owns it): the HPACK deflater's entry ring, a page of its own (mmap)
     * when deflate_page was set; NULL: not known. */
    void *ring;
    /* owned: the hot page (mmap; hot_page below), NULL: none. It holds the session's first
     * block (the session struct) at its start while sess_live, and the inflater's ring at
     * iring_off (0: not there); both are nghttp2's. Unmapped once both were freed. */
    uint8_t *hot;
    /* owned: the hot page's contents while parked (lp_h2_mem_park: zero runs and literal
     * words), the page itself given back to the kernel; NULL: awake. */
    uint8_t *parked;
    uint32_t framebuf_len;
    uint16_t hot_used;  /* bytes of `hot` handed out (blocks at 64-byte steps) */
    uint16_t sess_len;  /* the size asked for the first block */
    uint16_t iring_off; /* the inflater's ring's offset in `hot`; 0: not on it */
    uint8_t sess_live;  /* the first block is on `hot` and not freed */
    /* Set by the caller when the session's deflater has no dynamic table
     * (nghttp2_option_set_max_deflate_dynamic_table_size 0): its ring is never written, and
     * gets a page of its own, never resident. */
    uint8_t deflate_page;
    /* Set by the caller before the session is made: the session's own struct (its first
     * block) and the inflater's ring (the second ring) go on the hot page, which
     * lp_h2_mem_park can fold while the connection is idle. */
    uint8_t hot_page;
    uint8_t rings; /* HPACK rings made while capturing (the first is the deflater's) */
    /* Set while the session is being made: the large block allocated then is the frame
     * buffer (nghttp2 makes no other block that large at that time). */
    uint8_t capturing;
} lp_h2_mem_t;

/* Hooks for a session about to be made (nghttp2_session_*_new3 with &m->mem; set
 * m->capturing around that call). The struct must stay where it is while the session
 * lives; `pool` may be NULL. */
void lp_h2_mem_init(lp_h2_mem_t *m, lp_h2_pool_t *pool);
/* Gives the frame buffer's pages back to the kernel, the stream map's page when it is
 * all zero, and the deflater ring's page (deflate_page) when the deflater of session s
 * holds no entry (s NULL: not that one). Only when the session has nothing to send
 * (nghttp2_session_want_write() is 0, so its buffer holds no frame). Returns the bytes
 * given back. */
size_t lp_h2_mem_trim(lp_h2_mem_t *m, nghttp2_session *s);

/* Parking, for an idle session: its hot page (hot_page above: the session struct and the
 * request HPACK table's ring, about 4 KiB that an idle connection keeps resident, its
 * largest part after OpenSSL's) is packed into a malloc'd copy of its non-zero words and
 * given back to the kernel. nghttp2 keeps pointers to those blocks (and they to each
 * other), so they must come back at the same addresses: lp_h2_mem_wake unpacks them into
 * the same page. Between the two NOTHING may call nghttp2 on that session: the caller
 * wakes it at each of its entry points. Park returns the bytes given back (0: not parked:
 * no hot page, already parked, or out of memory). */
size_t lp_h2_mem_park(lp_h2_mem_t *m);
void lp_h2_mem_wake_slow(lp_h2_mem_t *m);
static inline void lp_h2_mem_wake(lp_h2_mem_t *m)
{
    if (m->parked)
        lp_h2_mem_wake_slow(m);
}

#endif
