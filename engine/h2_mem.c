/* nghttp2's memory hooks for one session (h2_mem.h). */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include "h2_mem.h"

/* A block at least this large allocated while the session is made is its frame buffer
 * (nghttp2 1.52: realloc(NULL, 16,394); the next largest is the stream map's 4 KiB). */
#define H2_MEM_FRAMEBUF_MIN 16384
/* The stream map's table (nghttp2 1.52: calloc(256, 16) when the session is made): all
 * zero while the session holds no stream (closed streams are not kept:
 * nghttp2_option_set_no_closed_streams), which lp_h2_mem_trim checks before dropping it. */
#define H2_MEM_MAP 4096

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

static void *mem_malloc(size_t size, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (m->capturing && !m->framebuf && size >= H2_MEM_FRAMEBUF_MIN) {
        /* Page-aligned, so that all but its last partial page can be given back. */
        void *p = NULL;
        if (posix_memalign(&p, page_size(), size))
            return NULL;
        m->framebuf = p;
        m->framebuf_len = size;
        return p;
    }
    return malloc(size);
}

static void mem_free(void *ptr, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (ptr && ptr == m->framebuf)
        m->framebuf = NULL;
    if (ptr && ptr == m->map)
        m->map = NULL;
    free(ptr);
}

static void *mem_calloc(size_t nmemb, size_t size, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (m->capturing && !m->map && nmemb * size == H2_MEM_MAP && page_size() == H2_MEM_MAP) {
        /* Its own page: dropped while all zero (an empty map), see lp_h2_mem_trim. */
        void *p = NULL;
        if (posix_memalign(&p, H2_MEM_MAP, H2_MEM_MAP))
            return NULL;
        memset(p, 0, H2_MEM_MAP);
        m->map = p;
        return p;
    }
    return calloc(nmemb, size);
}

static void *mem_realloc(void *ptr, size_t size, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (!ptr) /* nghttp2 makes its frame buffer this way (nghttp2_buf_reserve) */
        return mem_malloc(size, ud);
    void *p = realloc(ptr, size);
    if (p && ptr && ptr == m->framebuf) {
        m->framebuf = p; /* still the frame buffer, perhaps no longer page-aligned */
        m->framebuf_len = size;
    }
    return p;
}

void lp_h2_mem_init(lp_h2_mem_t *m)
{
    memset(m, 0, sizeof(*m));
    m->mem.mem_user_data = m;
    m->mem.malloc = mem_malloc;
    m->mem.free = mem_free;
    m->mem.calloc = mem_calloc;
    m->mem.realloc = mem_realloc;
}

size_t lp_h2_mem_trim(lp_h2_mem_t *m)
{
    size_t n = 0;
    if (m->map && !memcmp(m->map, zero_page, H2_MEM_MAP) &&
        !madvise(m->map, H2_MEM_MAP, MADV_DONTNEED))
        n += H2_MEM_MAP; /* all zero: it reads back the same */
    if (!m->framebuf)
        return n;
    size_t ps = page_size();
    uintptr_t a = (uintptr_t)m->framebuf, b = a + m->framebuf_len;
    uintptr_t first = (a + ps - 1) & ~(uintptr_t)(ps - 1), last = b & ~(uintptr_t)(ps - 1);
    if (last <= first || madvise((void *)first, last - first, MADV_DONTNEED))
        return n;
    return n + (last - first);
}
