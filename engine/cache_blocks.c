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

/* A slab is SLAB bytes aligned to SLAB, so a block's slab is its address rounded down. */
typedef struct slab_s {
    struct slab_s *next; /* owned: the next slab of its list (the store's slabs or retired) */
    struct slab_s *prev; /* borrowed: the one before it on the retired list (NULL: first, or
                            not retired) */
    uint32_t live;       /* blocks handed out from this slab and not given back */
    uint32_t retired;    /* made under a limit since lowered: hands out nothing more, its
                            freed blocks go on no list, and it goes with its last block */
    uint64_t pad;
    char data[]; /* blocks start 16-byte aligned (the header is 32 bytes) */
} slab_t;

_Static_assert(sizeof(slab_t) % 16 == 0, "blocks start 16-byte aligned");

struct lp_cache_blocks_s {
    lp_mutex_t lock;       /* guards everything below */
    size_t limit;          /* slab bytes allowed, retired ones included */
    size_t slab_bytes;     /* every slab's, retired ones included */
    size_t live;           /* blocks handed out and not given back */
    uint8_t orphan;        /* the zone let go: the last free frees the store */
    void *free_[NCLASS];   /* borrowed: each class's free blocks, linked through their first
                              bytes (inside the store's slabs, never retired ones) */
    char *bump, *bump_end; /* borrowed: the newest slab's bytes not carved yet */
    slab_t *slabs;         /* owned: the slabs blocks are handed out from */
    slab_t *retired;       /* owned: slabs retired by a lowered limit, each with a block out */
};

static slab_t *slab_of(void *p)
{
    return (slab_t *)((uintptr_t)p & ~(uintptr_t)(SLAB - 1));
}

lp_cache_blocks_t *lp_cache_blocks_new(size_t limit)
{
    lp_cache_blocks_t *b = calloc(1, sizeof(*b));
    if (b) {
        lp_mutex_init(&b->lock);
        b->limit = limit;
    }
    return b;
}

static void slab_free(lp_cache_blocks_t *b, slab_t *s)
{
    UNPOISON(s->data, SLAB - sizeof(slab_t));
    b->slab_bytes -= SLAB;
    free(s);
}

/* Under the lock: every slab the store hands out from is retired (a lowered limit). Those
 * with no block out go now; the others go each with its last block (lp_cache_blocks_free),
 * so a busy zone gives its slabs back as their entries go, one slab at a time, rather than
 * when the last entry of all goes (which a zone that keeps serving may never see). Their
 * free blocks are forgotten: nothing more is made in them. */
static void retire(lp_cache_blocks_t *b)
{
    for (slab_t *s = b->slabs, *n; s; s = n) {
        n = s->next;
        if (!s->live) {
            slab_free(b, s);
            continue;
        }
        s->retired = 1;
        s->prev = NULL;
        s->next = b->retired;
        if (b->retired)
            b->retired->prev = s;
        b->retired = s;
    }
    b->slabs = NULL;
    b->bump = b->bump_end = NULL;
    memset(b->free_, 0, sizeof(b->free_));
}

/* A slab is SLAB bytes; blocks out hold their slab, and the store's limit counts retired
 * slabs too: over a lowered limit, the store retires its slabs (retire) and makes fresh ones
 * only while they and the retired ones still out stay within it (entries take malloc's
 * meanwhile), as a lowered `memory` evicts entries. */
void lp_cache_blocks_limit(lp_cache_blocks_t *b, size_t limit)
{
    lp_mutex_lock(&b->lock);
    b->limit = limit;
    if (b->slab_bytes > limit)
        retire(b);
    lp_mutex_unlock(&b->lock);
}

static void destroy(lp_cache_blocks_t *b)
{
    /* No block out: no retired slab is left (each went with its last block). */
    for (slab_t *s = b->slabs, *n; s; s = n) {
        n = s->next;
        slab_free(b, s);
    }
    free(b);
}

void *lp_cache_blocks_alloc(lp_cache_blocks_t *b, size_t size, uint8_t *cls)
{
    if (!size || size > LP_CACHE_BLOCK_MAX)
        return NULL;
    unsigned c = (unsigned)((size - 1) / CLASS_BYTES);
    size_t bytes = (size_t)(c + 1) * CLASS_BYTES;
    lp_mutex_lock(&b->lock);
    char *p = b->free_[c];
    if (p) {
        UNPOISON(p, bytes);
        memcpy(&b->free_[c], p, sizeof(void *));
    } else {
        if ((size_t)(b->bump_end - b->bump) < bytes) {
            /* The rest of the old slab (less than a block) stays unused. */
            slab_t *s = b->slab_bytes + SLAB <= b->limit ? aligned_alloc(SLAB, SLAB) : NULL;
            if (!s) {
                lp_mutex_unlock(&b->lock);
                return NULL;
            }
            s->next = b->slabs;
            s->prev = NULL;
            s->live = 0;
            s->retired = 0;
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
    slab_of(p)->live++;
    b->live++;
    lp_mutex_unlock(&b->lock);
    *cls = (uint8_t)c;
    return p;
}

void lp_cache_blocks_free(lp_cache_blocks_t *b, void *p, uint8_t cls)
{
    slab_t *s = slab_of(p);
    lp_mutex_lock(&b->lock);
    if (!s->retired) {
        memcpy(p, &b->free_[cls], sizeof(void *));
        b->free_[cls] = p;
        s->live--;
    } else if (!--s->live) {
        /* The retired slab's last block: it goes, off the retired list. */
        if (s->prev)
            s->prev->next = s->next;
        else
            b->retired = s->next;
        if (s->next)
            s->next->prev = s->prev;
        slab_free(b, s);
        s = NULL;
    }
    if (s)
        POISON(p, (size_t)(cls + 1) * CLASS_BYTES);
    int last = --b->live == 0 && b->orphan;
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
