/* nghttp2's memory: a worker's free lists and one session's hooks (h2_mem.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "h2_mem.h"

/* ---- the free lists ---- */

/* Classes of 64 to 2048 bytes (payload); larger blocks go to malloc directly. */
#define H2M_CLASSES   6
#define H2M_MIN_SHIFT 6
/* Blocks kept per class at most: bounds what a burst leaves cached (2048 x 64: 128 KiB). */
#define H2M_KEEP 256
/* Before each pooled block: its class (H2M_CLASSES: a plain malloc), 16 bytes to keep the
 * payload's alignment. The frame buffer and the stream map (below) have no header: they
 * are told apart by address. */
#define H2M_HDR 16

typedef struct h2m_free_s {
    struct h2m_free_s *next; /* the next free block of its class */
} h2m_free_t;

struct lp_h2_pool_s {
    h2m_free_t *free[H2M_CLASSES]; /* owned: free blocks (at their header) */
    unsigned nfree[H2M_CLASSES];   /* blocks in each list */
    unsigned low[H2M_CLASSES];     /* the fewest in each list since the last trim */
};

static unsigned class_of(size_t n)
{
    unsigned c = 0;
    while (c < H2M_CLASSES && n > ((size_t)1 << (H2M_MIN_SHIFT + c)))
        c++;
    return c;
}

static void *pool_alloc(lp_h2_pool_t *m, size_t n)
{
    unsigned c = class_of(n);
    uint8_t *b;
    if (m && c < H2M_CLASSES && m->free[c]) {
        b = (uint8_t *)m->free[c];
        m->free[c] = m->free[c]->next;
        if (--m->nfree[c] < m->low[c])
            m->low[c] = m->nfree[c];
    } else {
        b = malloc(H2M_HDR + (c < H2M_CLASSES ? (size_t)1 << (H2M_MIN_SHIFT + c) : n));
        if (!b)
            return NULL;
    }
    b[0] = (uint8_t)c;
    return b + H2M_HDR;
}

static void pool_put(lp_h2_pool_t *m, void *p)
{
    if (!p)
        return;
    uint8_t *b = (uint8_t *)p - H2M_HDR;
    unsigned c = b[0];
    if (!m || c >= H2M_CLASSES || m->nfree[c] >= H2M_KEEP) {
        free(b);
        return;
    }
    h2m_free_t *f = (h2m_free_t *)(void *)b;
    f->next = m->free[c];
    m->free[c] = f;
    m->nfree[c]++;
}

static void *pool_realloc(lp_h2_pool_t *m, void *p, size_t n)
{
    unsigned c = ((uint8_t *)p - H2M_HDR)[0];
    if (c < H2M_CLASSES && n <= ((size_t)1 << (H2M_MIN_SHIFT + c)))
        return p; /* still fits its block */
    if (c >= H2M_CLASSES && class_of(n) >= H2M_CLASSES) {
        uint8_t *b = realloc((uint8_t *)p - H2M_HDR, H2M_HDR + n);
        return b ? b + H2M_HDR : NULL;
    }
    void *q = pool_alloc(m, n);
    if (!q)
        return NULL;
    /* The old block's usable size: its class's, or (plain) at least what fits in n. */
    size_t old = c < H2M_CLASSES ? (size_t)1 << (H2M_MIN_SHIFT + c) : n;
    memcpy(q, p, old < n ? old : n);
    pool_put(m, p);
    return q;
}

lp_h2_pool_t *lp_h2_pool_new(void)
{
    return calloc(1, sizeof(lp_h2_pool_t));
}

size_t lp_h2_pool_trim(lp_h2_pool_t *m)
{
    size_t bytes = 0;
    if (!m)
        return 0;
    for (unsigned c = 0; c < H2M_CLASSES; c++) {
        for (unsigned k = m->low[c]; k && m->free[c]; k--) {
            h2m_free_t *f = m->free[c];
            m->free[c] = f->next;
            m->nfree[c]--;
            free(f);
            bytes += H2M_HDR + ((size_t)1 << (H2M_MIN_SHIFT + c));
        }
        m->low[c] = m->nfree[c];
    }
    return bytes;
}

void lp_h2_pool_free(lp_h2_pool_t *m)
{
    if (!m)
        return;
    for (unsigned c = 0; c < H2M_CLASSES; c++)
        m->low[c] = m->nfree[c];
    lp_h2_pool_trim(m);
    free(m);
}

/* ---- one session's hooks ---- */

/* A block at least this large allocated while the session is made is its frame buffer
 * (nghttp2 1.52: realloc(NULL, 16,394); the next largest is the stream map's 4 KiB). */
#define H2_MEM_FRAMEBUF_MIN 16384
/* The stream map's table (nghttp2 1.52: calloc(256, 16) when the session is made): all
 * zero while the session holds no stream (closed streams are not kept:
 * nghttp2_option_set_no_closed_streams), which lp_h2_mem_trim checks before dropping it. */
#define H2_MEM_MAP 4096

/* The HPACK tables' entry rings (nghttp2 1.52: malloc(128 * 8) each while the session is
 * made, the deflater's first, then the inflater's). When the deflater has no dynamic table
 * (lp_h2_mem_t.deflate_page), its ring gets a page of its own from the kernel: nghttp2
 * never writes it, so that page is never resident (and were it written, it is given back
 * while the table holds no entry: only a ring's first `len` slots are read). Otherwise, and
 * for the inflater's (most clients index their fields), a page would hold 4 KiB where the
 * ring needs 1: the pool's block. A ring that grows is made anew (malloc, copy, free). */
#define H2_MEM_RING 1024

static const char zero_page[H2_MEM_MAP];

static size_t page_size(void)
{
    static size_t ps;
    if (!ps) {
        long v = sysconf(_SC_PAGESIZE);
        ps = v > 0 ? (size_t)v : 4096;
    }
    return ps;
}

/* ---- the hot page ---- */

/* Blocks on the hot page start at 64-byte steps (at least malloc's alignment). */
#define H2_HOT_ALIGN 64

#if defined(__SANITIZE_ADDRESS__)
#define H2_PARK_GUARD 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define H2_PARK_GUARD 1
#endif
#endif

static void *hot_sess(const lp_h2_mem_t *m)
{
    return m->sess_live ? m->hot : NULL;
}

static void *hot_iring(const lp_h2_mem_t *m)
{
    return m->iring_off ? m->hot + m->iring_off : NULL;
}

static void *hot_take(lp_h2_mem_t *m, size_t size)
{
    if (!m->hot) {
        void *p =
            mmap(NULL, H2_MEM_MAP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        m->hot = p;
        m->hot_used = 0;
    }
    if (size > (size_t)(H2_MEM_MAP - m->hot_used))
        return NULL;
    void *p = m->hot + m->hot_used; /* zero: fresh from mmap, and cleared when freed */
    m->hot_used = (uint16_t)((m->hot_used + size + H2_HOT_ALIGN - 1) & ~(size_t)(H2_HOT_ALIGN - 1));
    if (m->hot_used > H2_MEM_MAP)
        m->hot_used = H2_MEM_MAP;
    return p;
}

/* One of the two blocks went: the page goes with the last (nghttp2 frees its session
 * last). */
static void hot_put(lp_h2_mem_t *m, void *p, size_t len)
{
    if (p == hot_sess(m))
        m->sess_live = 0;
    else
        m->iring_off = 0;
    if (m->sess_live || m->iring_off) {
        memset(p, 0, len); /* packs smaller, and reads as the fresh page did */
        return;
    }
    munmap(m->hot, H2_MEM_MAP);
    m->hot = NULL;
    m->hot_used = 0;
    free(m->parked); /* cannot be set: nghttp2 runs only on an awake session */
    m->parked = NULL;
}

static size_t fb_pages(size_t len)
{
    return (len + page_size() - 1) & ~(page_size() - 1);
}

static void *mem_malloc(size_t size, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (m->capturing && !m->framebuf && size >= H2_MEM_FRAMEBUF_MIN) {
        /* Pages of its own (not malloc's: its alignment would leave free blocks around it
         * in the heap), so that all of them can be given back. */
        void *p =
            mmap(NULL, fb_pages(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            /* Mappings are a bounded resource (vm.max_map_count): without one the buffer
             * comes from the heap, and is then never given back while idle. */
            return pool_alloc(m->pool, size);
        }
        m->framebuf = p;
        m->framebuf_len = (uint32_t)size; /* a frame and its header: under 16 MiB */
        return p;
    }
    unsigned ring = m->capturing && size == H2_MEM_RING ? ++m->rings : 0;
    if (ring == 1 && m->deflate_page) {
        /* The first ring: the deflater's. Not from malloc's heap, whose pages are resident
         * once any block on them was used. */
        void *p =
            mmap(NULL, H2_MEM_MAP, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p != MAP_FAILED && page_size() == H2_MEM_MAP) {
            m->ring = p;
            return p;
        }
        if (p != MAP_FAILED)
            munmap(p, H2_MEM_MAP);
    }
    if (ring == 2 && m->sess_live && !m->iring_off) {
        uint8_t *p = hot_take(m, size);
        if (p) { /* the inflater's, beside the session struct */
            m->iring_off = (uint16_t)(p - m->hot);
            return p;
        }
    }
    return pool_alloc(m->pool, size);
}

static void mem_free(void *ptr, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (!ptr)
        return;
    if (ptr == m->ring) {
        munmap(ptr, H2_MEM_MAP);
        m->ring = NULL;
        return;
    }
    if (ptr == hot_sess(m) || ptr == hot_iring(m)) {
        hot_put(m, ptr, ptr == hot_sess(m) ? m->sess_len : H2_MEM_RING);
        return;
    }
    if (ptr == m->framebuf) {
        munmap(ptr, fb_pages(m->framebuf_len));
        m->framebuf = NULL;
        return;
    }
    if (ptr == m->map) {
        m->map = NULL;
        free(ptr); /* its own allocation, no pool header */
        return;
    }
    pool_put(m->pool, ptr);
}

static void *mem_calloc(size_t nmemb, size_t size, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (size && nmemb > SIZE_MAX / size)
        return NULL;
    if (m->capturing && !m->map && nmemb * size == H2_MEM_MAP && page_size() == H2_MEM_MAP) {
        /* Its own page: dropped while all zero (an empty map), see lp_h2_mem_trim. */
        void *p = NULL;
        if (posix_memalign(&p, H2_MEM_MAP, H2_MEM_MAP))
            return NULL;
        memset(p, 0, H2_MEM_MAP);
        m->map = p;
        return p;
    }
    if (m->capturing && m->hot_page && !m->hot && nmemb * size <= H2_MEM_MAP - H2_MEM_RING &&
        page_size() == H2_MEM_MAP) {
        /* The first block: the session struct (nghttp2 1.52: calloc(1, 2944)); room is
         * left for the inflater's ring. */
        void *p = hot_take(m, nmemb * size);
        if (p) {
            m->sess_live = 1;
            m->sess_len = (uint16_t)(nmemb * size);
            return p;
        }
    }
    void *p = pool_alloc(m->pool, nmemb * size);
    if (p)
        memset(p, 0, nmemb * size);
    return p;
}

static void *mem_realloc(void *ptr, size_t size, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (!ptr) /* nghttp2 makes its frame buffer this way (nghttp2_buf_reserve) */
        return mem_malloc(size, ud);
    if (ptr == m->framebuf) {
        void *p = mremap(ptr, fb_pages(m->framebuf_len), fb_pages(size), MREMAP_MAYMOVE);
        if (p == MAP_FAILED)
            return NULL;
        m->framebuf = p; /* still the frame buffer */
        m->framebuf_len = (uint32_t)size;
        return p;
    }
    if (ptr == m->map || ptr == m->ring || ptr == hot_sess(m) || ptr == hot_iring(m)) {
        /* nghttp2 makes a new table or ring rather than growing one; should it ever, the
         * block leaves the page of its own (and trimming, parking) for the pool. */
        size_t old = ptr == m->map ? H2_MEM_MAP : ptr == hot_sess(m) ? m->sess_len : H2_MEM_RING;
        void *p = pool_alloc(m->pool, size);
        if (!p)
            return NULL;
        memcpy(p, ptr, size < old ? size : old);
        if (ptr == m->map) {
            m->map = NULL;
            free(ptr);
        } else if (ptr == m->ring) {
            m->ring = NULL;
            munmap(ptr, H2_MEM_MAP);
        } else {
            hot_put(m, ptr, old);
        }
        return p;
    }
    return pool_realloc(m->pool, ptr, size);
}

void lp_h2_mem_init(lp_h2_mem_t *m, lp_h2_pool_t *pool)
{
    memset(m, 0, sizeof(*m));
    m->pool = pool;
    m->mem.mem_user_data = m;
    m->mem.malloc = mem_malloc;
    m->mem.free = mem_free;
    m->mem.calloc = mem_calloc;
    m->mem.realloc = mem_realloc;
}

size_t lp_h2_mem_trim(lp_h2_mem_t *m, nghttp2_session *s)
{
    size_t n = 0;
    if (m->map && !memcmp(m->map, zero_page, H2_MEM_MAP) &&
        !madvise(m->map, H2_MEM_MAP, MADV_DONTNEED))
        n += H2_MEM_MAP; /* all zero: it reads back the same */
    /* A table's size in bytes is 0 only when it holds no entry. */
    if (m->ring && s && !nghttp2_session_get_hd_deflate_dynamic_table_size(s) &&
        !madvise(m->ring, H2_MEM_MAP, MADV_DONTNEED))
        n += H2_MEM_MAP;
    if (!m->framebuf)
        return n;
    if (madvise(m->framebuf, fb_pages(m->framebuf_len), MADV_DONTNEED))
        return n;
    return n + fb_pages(m->framebuf_len);
}

/* ---- parking ---- */

/* The packed form, over the page's first hot_used bytes (whole 8-byte words): records of
 * [zero words: 1 byte][literal words: 1 byte][the literal words]. An idle session's struct
 * and ring are mostly zeros (empty queues, unused slots); the rest are pointers (a fifth
 * into the page itself, most others into the heap nearby) and small counters. So each
 * literal word is a head byte and the word's non-zero bytes: bits 0-6 tell which of bytes
 * 0-6 follow; bit 7 that the word was XORed with the page's address first (a pointer into
 * the page or near it then keeps its low bytes only). A head of 0 (a zero word cannot be
 * literal) is followed by the 8 bytes as they are: a word whose byte 7 is not zero. */
#define H2_WORDS (H2_MEM_MAP / 8)

static unsigned nonzero_bytes(uint64_t v, unsigned *mask)
{
    unsigned n = 0;
    *mask = 0;
    for (unsigned b = 0; b < 8; b++)
        if ((v >> (8 * b)) & 0xff) {
            *mask |= 1u << b;
            n++;
        }
    return n;
}

static size_t pack_word(uint8_t *out, uint64_t w, uint64_t base)
{
    unsigned mw, mx;
    unsigned nw = nonzero_bytes(w, &mw), nx = nonzero_bytes(w ^ base, &mx);
    uint64_t v = nx < nw ? w ^ base : w;
    unsigned mask = nx < nw ? mx : mw;
    if (mask & 0x80) { /* byte 7 set (base's is 0, so both forms have it) */
        out[0] = 0;
        memcpy(out + 1, &w, 8);
        return 9;
    }
    size_t n = 0;
    out[n++] = (uint8_t)(mask | (nx < nw ? 0x80 : 0));
    for (unsigned b = 0; b < 7; b++)
        if (mask & (1u << b))
            out[n++] = (uint8_t)(v >> (8 * b));
    return n;
}

size_t lp_h2_mem_park(lp_h2_mem_t *m)
{
    if (!m->hot || m->parked)
        return 0;
    const uint8_t *page = m->hot;
    uint64_t base = (uintptr_t)m->hot;
    size_t words = ((size_t)m->hot_used + 7) / 8, i = 0, n = 0;
    uint8_t buf[9 * H2_WORDS + 2 * H2_WORDS]; /* the worst case */
    while (i < words) {
        size_t z = 0, l = 0;
        uint64_t w;
        while (i + z < words && z < 255 && (memcpy(&w, page + 8 * (i + z), 8), !w))
            z++;
        while (i + z + l < words && l < 255 && (memcpy(&w, page + 8 * (i + z + l), 8), w))
            l++;
        buf[n++] = (uint8_t)z;
        buf[n++] = (uint8_t)l;
        for (size_t k = i + z; k < i + z + l; k++) {
            memcpy(&w, page + 8 * k, 8);
            n += pack_word(buf + n, w, base);
        }
        i += z + l;
    }
    if (n > H2_MEM_MAP - 1024) /* under 1 KiB to gain: stay as it is */
        return 0;
    uint8_t *p = malloc(n ? n : 1);
    if (!p)
        return 0;
    memcpy(p, buf, n);
    if (madvise(m->hot, H2_MEM_MAP, MADV_DONTNEED)) {
        free(p);
        return 0;
    }
#ifdef H2_PARK_GUARD
    /* Sanitizer builds: any touch while parked faults at once. */
    mprotect(m->hot, H2_MEM_MAP, PROT_NONE);
#endif
    m->parked = p;
    return H2_MEM_MAP;
}

void lp_h2_mem_wake_slow(lp_h2_mem_t *m)
{
#ifdef H2_PARK_GUARD
    mprotect(m->hot, H2_MEM_MAP, PROT_READ | PROT_WRITE);
#endif
    const uint8_t *p = m->parked;
    uint64_t base = (uintptr_t)m->hot;
    size_t words = ((size_t)m->hot_used + 7) / 8, i = 0;
    while (i < words) {
        size_t z = p[0], l = p[1];
        p += 2;
        i += z; /* zeros: the page reads as zero since it was given back */
        for (; l; l--, i++) {
            uint64_t v = 0;
            unsigned head = *p++;
            if (!head) {
                memcpy(&v, p, 8);
                p += 8;
            } else {
                for (unsigned b = 0; b < 7; b++)
                    if (head & (1u << b))
                        v |= (uint64_t)*p++ << (8 * b);
                if (head & 0x80)
                    v ^= base;
            }
            memcpy(m->hot + 8 * i, &v, 8);
        }
    }
    free(m->parked);
    m->parked = NULL;
}
