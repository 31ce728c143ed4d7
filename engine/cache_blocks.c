/* A zone's entry blocks: size classes over slabs (cache_blocks.h). */
#include "cache_blocks.h"

#include <stdlib.h>
#include <string.h>

#include "mutex.h"

/* Under AddressSanitizer a free block and a slab's unused bytes are poisoned, so a use of an
 * entry after its free is still reported (the slab itself stays allocated). */
#if defined(__SANITIZE_ADDRESS__)
#define LP_BLOCKS_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LP_BLOCKS_ASAN 1
#endif
#endif
#ifdef LP_BLOCKS_ASAN
#include <sanitizer/asan_interface.h>
#define POISON(p, n)   ASAN_POISON_MEMORY_REGION(p, n)
#define UNPOISON(p, n) ASAN_UNPOISON_MEMORY_REGION(p, n)
#else
#define POISON(p, n)   ((void)(p), (void)(n))
#define UNPOISON(p, n) ((void)(p), (void)(n))
#endif

#define CLASS_BYTES 64
#define NCLASS      (LP_CACHE_BLOCK_MAX / CLASS_BYTES)
#define SLAB        (64 * 1024)

typedef struct slab_s {
    struct slab_s *next; /* owned: the next slab of the store */
    uint64_t pad;        /* blocks start 16-byte aligned */
    char data[];
} slab_t;

struct lp_cache_blocks_s {
    lp_mutex_t lock; /* guards everything below */
    size_t limit;    /* slab bytes allowed */
    size_t slab_bytes;
    size_t live;           /* blocks handed out and not given back */
    uint8_t orphan;        /* the zone let go: the last free frees the store */
    uint8_t draining;      /* over a lowered limit: no block handed out until the last one
                              out comes back, then every slab goes (release) */
    void *free_[NCLASS];   /* borrowed: each class's free blocks, linked through their first
                              bytes (inside the slabs) */
    char *bump, *bump_end; /* borrowed: the newest slab's bytes not carved yet */
    slab_t *slabs;         /* owned: every slab */
};

lp_cache_blocks_t *lp_cache_blocks_new(size_t limit)
{
    lp_cache_blocks_t *b = calloc(1, sizeof(*b));
    if (b) {
        lp_mutex_init(&b->lock);
        b->limit = limit;
    }
    return b;
}

/* Under the lock, no block out: every slab goes; the store starts over empty. */
static void release(lp_cache_blocks_t *b)
{
    for (slab_t *s = b->slabs, *n; s; s = n) {
        n = s->next;
        UNPOISON(s->data, SLAB - sizeof(slab_t));
        free(s);
    }
    b->slabs = NULL;
    b->slab_bytes = 0;
    b->bump = b->bump_end = NULL;
    memset(b->free_, 0, sizeof(b->free_));
    b->draining = 0;
}

/* A slab holds blocks of many entries, so it cannot go while one of them lives. Over a
 * lowered limit the store hands out nothing more (entries take malloc's) and gives every
 * slab back once the blocks out come back: evicted, purged or expired entries, as a
 * lowered `memory` evicts them. */
void lp_cache_blocks_limit(lp_cache_blocks_t *b, size_t limit)
{
    lp_mutex_lock(&b->lock);
    b->limit = limit;
    if (b->slab_bytes <= limit)
        b->draining = 0; /* raised again (a reload back): the slabs serve as before */
    else if (b->live == 0)
        release(b);
    else
        b->draining = 1;
    lp_mutex_unlock(&b->lock);
}

static void destroy(lp_cache_blocks_t *b)
{
    release(b);
    free(b);
}

void *lp_cache_blocks_alloc(lp_cache_blocks_t *b, size_t size, uint8_t *cls)
{
    if (!size || size > LP_CACHE_BLOCK_MAX)
        return NULL;
    unsigned c = (unsigned)((size - 1) / CLASS_BYTES);
    size_t bytes = (size_t)(c + 1) * CLASS_BYTES;
    lp_mutex_lock(&b->lock);
    if (b->draining) {
        lp_mutex_unlock(&b->lock);
        return NULL;
    }
    char *p = b->free_[c];
    if (p) {
        UNPOISON(p, bytes);
        memcpy(&b->free_[c], p, sizeof(void *));
    } else {
        if ((size_t)(b->bump_end - b->bump) < bytes) {
            /* The rest of the old slab (less than a block) stays unused. */
            slab_t *s = b->slab_bytes + SLAB <= b->limit ? malloc(SLAB) : NULL;
            if (!s) {
                lp_mutex_unlock(&b->lock);
                return NULL;
            }
            s->next = b->slabs;
            b->slabs = s;
            b->slab_bytes += SLAB;
            b->bump = s->data;
            b->bump_end = (char *)s + SLAB;
            POISON(b->bump, (size_t)(b->bump_end - b->bump));
        }
        p = b->bump;
        b->bump += bytes;
        UNPOISON(p, bytes);
    }
    b->live++;
    lp_mutex_unlock(&b->lock);
    *cls = (uint8_t)c;
    return p;
}

void lp_cache_blocks_free(lp_cache_blocks_t *b, void *p, uint8_t cls)
{
    lp_mutex_lock(&b->lock);
    memcpy(p, &b->free_[cls], sizeof(void *));
    b->free_[cls] = p;
    POISON(p, (size_t)(cls + 1) * CLASS_BYTES);
    int last = --b->live == 0 && b->orphan;
    if (!last && b->live == 0 && b->draining)
        release(b);
    lp_mutex_unlock(&b->lock);
    if (last)
        destroy(b);
}

void lp_cache_blocks_orphan(lp_cache_blocks_t *b)
{
    if (!b)
        return;
    lp_mutex_lock(&b->lock);
    b->orphan = 1;
    int last = b->live == 0;
    lp_mutex_unlock(&b->lock);
    if (last)
        destroy(b);
}

void lp_cache_blocks_stats(lp_cache_blocks_t *b, size_t *slab_bytes, size_t *live)
{
    lp_mutex_lock(&b->lock);
    *slab_bytes = b->slab_bytes;
    *live = b->live;
    lp_mutex_unlock(&b->lock);
}
