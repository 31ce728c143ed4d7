/* Per-worker free lists for nghttp2's allocations (h2_mem.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "h2_mem.h"

/* Classes of 64 to 2048 bytes (payload); larger blocks go to malloc directly. */
#define H2M_CLASSES   6
#define H2M_MIN_SHIFT 6
/* Blocks kept per class at most: bounds what a burst leaves cached (2048 x 64: 128 KiB). */
#define H2M_KEEP 256
/* Before each block: its class (H2M_CLASSES: a plain malloc), 16 bytes to keep the
 * payload's alignment. */
#define H2M_HDR 16

typedef struct h2m_free_s {
    struct h2m_free_s *next; /* the next free block of its class */
} h2m_free_t;

struct lp_h2_mem_s {
    nghttp2_mem mem;               /* points back here (mem_user_data) */
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

static void *h2m_malloc(size_t n, void *ud)
{
    lp_h2_mem_t *m = ud;
    unsigned c = class_of(n);
    uint8_t *b;
    if (c < H2M_CLASSES && m->free[c]) {
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

static void h2m_free(void *p, void *ud)
{
    lp_h2_mem_t *m = ud;
    if (!p)
        return;
    uint8_t *b = (uint8_t *)p - H2M_HDR;
    unsigned c = b[0];
    if (c >= H2M_CLASSES || m->nfree[c] >= H2M_KEEP) {
        free(b);
        return;
    }
    h2m_free_t *f = (h2m_free_t *)(void *)b;
    f->next = m->free[c];
    m->free[c] = f;
    m->nfree[c]++;
}

static void *h2m_calloc(size_t k, size_t n, void *ud)
{
    if (n && k > SIZE_MAX / n)
        return NULL;
    void *p = h2m_malloc(k * n, ud);
    if (p)
        memset(p, 0, k * n);
    return p;
}

static void *h2m_realloc(void *p, size_t n, void *ud)
{
    if (!p)
        return h2m_malloc(n, ud);
    unsigned c = ((uint8_t *)p - H2M_HDR)[0];
    if (c < H2M_CLASSES && n <= ((size_t)1 << (H2M_MIN_SHIFT + c)))
        return p; /* still fits its block */
    if (c >= H2M_CLASSES && class_of(n) >= H2M_CLASSES) {
        uint8_t *b = realloc((uint8_t *)p - H2M_HDR, H2M_HDR + n);
        return b ? b + H2M_HDR : NULL;
    }
    void *q = h2m_malloc(n, ud);
    if (!q)
        return NULL;
    /* The old block's usable size: its class's, or (plain) at least what fits in n. */
    size_t old = c < H2M_CLASSES ? (size_t)1 << (H2M_MIN_SHIFT + c) : n;
    memcpy(q, p, old < n ? old : n);
    h2m_free(p, ud);
    return q;
}

lp_h2_mem_t *lp_h2_mem_new(void)
{
    lp_h2_mem_t *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->mem = (nghttp2_mem){m, h2m_malloc, h2m_free, h2m_calloc, h2m_realloc};
    return m;
}

nghttp2_mem *lp_h2_mem_of(lp_h2_mem_t *m)
{
    return m ? &m->mem : NULL;
}

size_t lp_h2_mem_trim(lp_h2_mem_t *m)
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

void lp_h2_mem_free(lp_h2_mem_t *m)
{
    if (!m)
        return;
    for (unsigned c = 0; c < H2M_CLASSES; c++)
        m->low[c] = m->nfree[c];
    lp_h2_mem_trim(m);
    free(m);
}
