#include <float.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "common.h"
#include "shdict.h"

typedef struct sd_item_s sd_item_t;
typedef struct sd_node_s sd_node_t;

/* A list item (a list value's element): a string or a number. */
struct sd_item_s {
    sd_item_t *prev, *next; /* borrowed: neighbours in the list (the node owns every item) */
    double num;
    uint32_t len;
    int type; /* LP_SHDICT_TSTR or TNUM */
    char data[];
};

/* A place in a stripe's LRU list: the first member of a node, or the stripe's sentinel. */
typedef struct sd_link_s {
    struct sd_link_s *prev, *next; /* borrowed: neighbours */
} sd_link_t;

/* One key. The key's bytes, then a string value's, follow the struct. */
struct sd_node_s {
    sd_link_t link;         /* first: a link is its node (the sentinel aside) */
    sd_node_t *hnext;       /* borrowed: next in the hash bucket (the stripe owns nodes) */
    sd_item_t *head, *tail; /* owned: a list value's items */
    uint64_t hash;
    double expires; /* clock time it expires at; 0: never */
    double num;     /* TNUM / TBOOL value */
    size_t charge;  /* what it counts against the stripe's budget, items included */
    uint32_t klen;
    uint32_t vlen;  /* TSTR: bytes after the key; TLIST: number of items */
    uint32_t flags; /* the user's */
    int type;
    char data[];
};

/* A node, two bucket pointers (a stripe has fewer than 2n + 16 buckets for n keys) and
 * malloc's header; an item and the header. */
_Static_assert(sizeof(sd_node_t) + 2 * sizeof(void *) + 8 <= LP_SHDICT_ENTRY_OVERHEAD,
               "entry overhead too small");
_Static_assert(sizeof(sd_item_t) + 8 <= LP_SHDICT_ITEM_OVERHEAD, "item overhead too small");

/* A stripe's lock: test-and-test-and-set with a bounded spin, then sched_yield. Taking it is
 * one atomic exchange and releasing it a plain store: half the atomic operations of a
 * pthread mutex, which the profile of one uncontended incr showed as more than half of its
 * cost. Critical sections are a few hundred nanoseconds at most and never block, so a
 * waiter spins briefly; yielding bounds the waste when the holder was preempted (the same
 * scheme as nginx's shared-memory mutex). */
typedef struct {
    int locked; /* 1 while held (atomic) */
} sd_lock_t;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void lock(sd_lock_t *l)
{
    while (__atomic_exchange_n(&l->locked, 1, __ATOMIC_ACQUIRE)) {
        unsigned spins = 0;
        while (__atomic_load_n(&l->locked, __ATOMIC_RELAXED)) {
            if (++spins < 256) {
                cpu_relax();
            } else {
                sched_yield();
                spins = 0;
            }
        }
    }
}

static void unlock(sd_lock_t *l)
{
    __atomic_store_n(&l->locked, 0, __ATOMIC_RELEASE);
}

/* A share of the dict: its keys (those whose hash picks it), their LRU order and a budget of
 * bytes. Everything in it is guarded by `lock`. */
typedef struct {
    sd_lock_t lock;
    sd_node_t **buckets; /* owned: nbuckets chains (a power of two) */
    size_t nbuckets;
    size_t n;      /* keys (expired ones not yet freed included) */
    sd_link_t lru; /* sentinel: lru.next is the most recently used, lru.prev the least */
    size_t used;   /* sum of the nodes' charges */
    size_t budget; /* the dict's capacity / nstripes (stripe 0 takes the remainder) */
    uint64_t evictions;
} __attribute__((aligned(64))) sd_stripe_t;

/* Concurrency: lock striping. A key's hash picks one stripe; each stripe has its own lock,
 * hash table, LRU list and byte budget, so workers using different keys rarely meet on a
 * lock, and every operation on one key takes exactly one lock for a few hundred
 * nanoseconds at most (no system call, no Lua; malloc only when a key or a longer string is
 * stored). The lock is a spinlock (sd_lock_t: why there). The price: LRU order and the
 * budget are per stripe, so a dict evicts the least recently used entry of the key's
 * stripe, and one entry can take at most capacity / nstripes bytes. Small dicts (under
 * 512 KiB) have one stripe, hence an exact LRU; the stripe count is fixed when the dict is
 * made (a resize keeps it), up to SD_MAX_STRIPES. Measured in tests/unit/bench_shdict.c:
 * on one hot key, two threads pay for the cache line moving between cores; on distinct
 * keys they scale. */
#define SD_MAX_STRIPES 16
#define SD_STRIPE_MIN  (256 * 1024)

struct lp_shdict_s {
    char *name;            /* owned */
    size_t capacity;       /* atomic: a resize (main thread) writes it while workers read it */
    unsigned nstripes;     /* a power of two */
    sd_stripe_t *stripes;  /* owned */
    int refs;              /* registry references (under reg_lock) */
    lp_shdict_t *reg_next; /* borrowed: next in the registry */
};

/* ---- clock and scratch ---- */

static double real_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double (*clock_now)(void) = real_now;

void lp_shdict_set_clock(double (*now)(void))
{
    clock_now = now ? now : real_now;
}

/* Values read out of a dict land here: copied under the lock, read by the caller after. One
 * per thread (owned by it), grown on demand, never shrunk (it is as large as the largest
 * value read); a thread-specific key frees it when the thread ends. */
static _Thread_local char *scratch;
static _Thread_local size_t scratch_cap;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_key_make(void)
{
    pthread_key_create(&scratch_key, free);
}

static char *scratch_reserve(size_t n)
{
    if (n <= scratch_cap)
        return scratch;
    size_t cap = scratch_cap ? scratch_cap : 256;
    while (cap < n)
        cap *= 2;
    char *p = realloc(scratch, cap);
    if (!p)
        return NULL;
    pthread_once(&scratch_once, scratch_key_make);
    pthread_setspecific(scratch_key, p);
    scratch = p;
    scratch_cap = cap;
    return p;
}

/* ---- hashing ---- */

static sd_stripe_t *stripe_of(lp_shdict_t *d, uint64_t h)
{
    return &d->stripes[(h >> 40) & (d->nstripes - 1)];
}

/* ---- nodes ---- */

static int expired(const sd_node_t *nd, double *now)
{
    if (nd->expires == 0)
        return 0;
    if (*now == 0)
        *now = clock_now();
    return nd->expires <= *now;
}

static sd_node_t *find(sd_stripe_t *s, uint64_t h, const char *k, size_t klen)
{
    for (sd_node_t *nd = s->buckets[h & (s->nbuckets - 1)]; nd; nd = nd->hnext)
        if (nd->hash == h && nd->klen == klen && memcmp(nd->data, k, klen) == 0)
            return nd;
    return NULL;
}

static sd_node_t *node_of(sd_link_t *l)
{
    return (sd_node_t *)(void *)l;
}

static void lru_unlink(sd_node_t *nd)
{
    nd->link.prev->next = nd->link.next;
    nd->link.next->prev = nd->link.prev;
}

static void lru_push(sd_stripe_t *s, sd_node_t *nd)
{
    nd->link.next = s->lru.next;
    nd->link.prev = &s->lru;
    s->lru.next->prev = &nd->link;
    s->lru.next = &nd->link;
}

static void touch(sd_stripe_t *s, sd_node_t *nd)
{
    if (s->lru.next != &nd->link) {
        lru_unlink(nd);
        lru_push(s, nd);
    }
}

/* Grows the bucket array when keys outnumber buckets; a failed malloc keeps longer chains. */
static void maybe_grow(sd_stripe_t *s)
{
    if (s->n <= s->nbuckets)
        return;
    size_t nb = s->nbuckets * 2;
    sd_node_t **b = calloc(nb, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < s->nbuckets; i++) {
        sd_node_t *nd = s->buckets[i];
        while (nd) {
            sd_node_t *next = nd->hnext;
            nd->hnext = b[nd->hash & (nb - 1)];
            b[nd->hash & (nb - 1)] = nd;
            nd = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

/* Links nd into the hash and at the LRU head, and counts it. */
static void attach(sd_stripe_t *s, sd_node_t *nd)
{
    sd_node_t **b = &s->buckets[nd->hash & (s->nbuckets - 1)];
    nd->hnext = *b;
    *b = nd;
    lru_push(s, nd);
    s->n++;
    s->used += nd->charge;
    maybe_grow(s);
}

/* Unlinks nd from the hash and the LRU and uncounts it (it is not freed). */
static void detach(sd_stripe_t *s, sd_node_t *nd)
{
    sd_node_t **pp = &s->buckets[nd->hash & (s->nbuckets - 1)];
    while (*pp != nd)
        pp = &(*pp)->hnext;
    *pp = nd->hnext;
    lru_unlink(nd);
    s->n--;
    s->used -= nd->charge;
}

static void node_free(sd_node_t *nd)
{
    sd_item_t *it = nd->head;
    while (it) {
        sd_item_t *next = it->next;
        free(it);
        it = next;
    }
    free(nd);
}

static void drop(sd_stripe_t *s, sd_node_t *nd)
{
    detach(s, nd);
    node_free(nd);
}

/* Frees least recently used entries until `need` more bytes fit in the stripe: expired ones
 * freely, valid ones only when !safe (then *forcible). LP_SHDICT_ENOMEM when it cannot. */
static int make_room(sd_stripe_t *s, size_t need, int safe, double *now, int *forcible)
{
    if (need > s->budget)
        return LP_SHDICT_ENOMEM;
    while (s->used + need > s->budget) {
        if (s->lru.prev == &s->lru)
            return LP_SHDICT_ENOMEM;
        sd_node_t *victim = node_of(s->lru.prev);
        if (!expired(victim, now)) {
            if (safe)
                return LP_SHDICT_ENOMEM;
            *forcible = 1;
            s->evictions++;
        }
        drop(s, victim);
    }
    return 0;
}

static sd_node_t *node_new(uint64_t h, const char *k, size_t klen, const lp_shdict_val_t *v)
{
    size_t vlen = v->type == LP_SHDICT_TSTR ? v->len : 0;
    sd_node_t *nd = malloc(sizeof(*nd) + klen + vlen);
    if (!nd)
        return NULL;
    memset(nd, 0, sizeof(*nd));
    nd->hash = h;
    nd->klen = (uint32_t)klen;
    nd->vlen = (uint32_t)vlen;
    nd->type = v->type;
    nd->flags = v->flags;
    nd->num = v->type == LP_SHDICT_TBOOL ? (v->num != 0) : v->num;
    nd->charge = LP_SHDICT_ENTRY_OVERHEAD + klen + vlen;
    memcpy(nd->data, k, klen);
    if (vlen)
        memcpy(nd->data + klen, v->str, vlen);
    return nd;
}

static double expiry(double exptime, double *now)
{
    if (exptime <= 0)
        return 0;
    if (*now == 0)
        *now = clock_now();
    return *now + exptime;
}

/* ---- dicts ---- */

lp_shdict_t *lp_shdict_new(const char *name, size_t capacity)
{
    lp_shdict_t *d = calloc(1, sizeof(*d));
    if (!d)
        return NULL;
    unsigned ns = 1;
    while (ns < SD_MAX_STRIPES && capacity / (ns * 2) >= SD_STRIPE_MIN)
        ns *= 2;
    d->nstripes = ns;
    d->name = strdup(name);
    d->stripes = aligned_alloc(64, ns * sizeof(sd_stripe_t));
    if (!d->name || !d->stripes) {
        free(d->name);
        free(d->stripes);
        free(d);
        return NULL;
    }
    memset(d->stripes, 0, ns * sizeof(sd_stripe_t));
    for (unsigned i = 0; i < ns; i++) {
        sd_stripe_t *s = &d->stripes[i];
        s->lru.next = s->lru.prev = &s->lru;
        s->nbuckets = 16;
        if (!(s->buckets = calloc(s->nbuckets, sizeof(*s->buckets)))) {
            d->nstripes = i + 1;
            lp_shdict_free(d);
            return NULL;
        }
    }
    lp_shdict_resize(d, capacity);
    return d;
}

void lp_shdict_free(lp_shdict_t *d)
{
    if (!d)
        return;
    for (unsigned i = 0; i < d->nstripes; i++) {
        sd_stripe_t *s = &d->stripes[i];
        while (s->lru.next && s->lru.next != &s->lru)
            drop(s, node_of(s->lru.next));
        free(s->buckets);
    }
    free(d->stripes);
    free(d->name);
    free(d);
}

const char *lp_shdict_name(const lp_shdict_t *d)
{
    return d->name;
}

void lp_shdict_resize(lp_shdict_t *d, size_t capacity)
{
    __atomic_store_n(&d->capacity, capacity, __ATOMIC_RELAXED);
    double now = 0;
    for (unsigned i = 0; i < d->nstripes; i++) {
        sd_stripe_t *s = &d->stripes[i];
        lock(&s->lock);
        s->budget = capacity / d->nstripes + (i == 0 ? capacity % d->nstripes : 0);
        int forcible = 0;
        while (s->used > s->budget)
            make_room(s, 0, 0, &now, &forcible);
        unlock(&s->lock);
    }
}

void lp_shdict_stats(lp_shdict_t *d, lp_shdict_stats_t *out)
{
    memset(out, 0, sizeof(*out));
    out->capacity = lp_shdict_capacity(d);
    for (unsigned i = 0; i < d->nstripes; i++) {
        sd_stripe_t *s = &d->stripes[i];
        lock(&s->lock);
        out->used += s->used;
        out->entries += s->n;
        out->evictions += s->evictions;
        unlock(&s->lock);
    }
}

size_t lp_shdict_capacity(lp_shdict_t *d)
{
    return __atomic_load_n(&d->capacity, __ATOMIC_RELAXED);
}

size_t lp_shdict_free_space(lp_shdict_t *d)
{
    lp_shdict_stats_t st;
    lp_shdict_stats(d, &st);
    return st.used < st.capacity ? st.capacity - st.used : 0;
}

/* ---- registry ---- */

/* Every dict some config references, by name: configs (and through them generations) hold
 * the references, so a dict lives while any generation uses it. */
static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static lp_shdict_t *reg_head; /* references held by configs (refs) */

static lp_shdict_t *reg_find(const char *name, size_t n)
{
    for (lp_shdict_t *d = reg_head; d; d = d->reg_next)
        if (strlen(d->name) == n && memcmp(d->name, name, n) == 0)
            return d;
    return NULL;
}

lp_shdict_t *lp_shdict_acquire(const char *name, size_t capacity)
{
    pthread_mutex_lock(&reg_lock);
    lp_shdict_t *d = reg_find(name, strlen(name));
    if (d) {
        d->refs++;
    } else if ((d = lp_shdict_new(name, capacity))) {
        d->refs = 1;
        d->reg_next = reg_head;
        reg_head = d;
    }
    pthread_mutex_unlock(&reg_lock);
    return d;
}

void lp_shdict_release(lp_shdict_t *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&reg_lock);
    int last = --d->refs == 0;
    if (last) {
        lp_shdict_t **pp = &reg_head;
        while (*pp != d)
            pp = &(*pp)->reg_next;
        *pp = d->reg_next;
    }
    pthread_mutex_unlock(&reg_lock);
    if (last)
        lp_shdict_free(d);
}

lp_shdict_t *lp_shdict_lookup(const char *name, size_t n)
{
    pthread_mutex_lock(&reg_lock);
    lp_shdict_t *d = reg_find(name, n);
    pthread_mutex_unlock(&reg_lock);
    return d;
}

/* ---- operations ---- */

static int key_ok(const char *k, size_t klen)
{
    return k && klen > 0 && klen <= LP_SHDICT_KEY_MAX;
}

/* The stripe that holds key k, locked, and the key's node in it (NULL: absent). */
static sd_stripe_t *lock_key(lp_shdict_t *d, const char *k, size_t klen, sd_node_t **nd)
{
    uint64_t h = lp_hash64(k, klen);
    sd_stripe_t *s = stripe_of(d, h);
    lock(&s->lock);
    *nd = find(s, h, k, klen);
    return s;
}

int lp_shdict_get(lp_shdict_t *d, const char *k, size_t klen, int stale, lp_shdict_val_t *out)
{
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    sd_node_t *nd;
    sd_stripe_t *s = lock_key(d, k, klen, &nd);
    double now = 0;
    int rc = 0;
    int old = nd && expired(nd, &now);
    if (!nd || (old && !stale)) {
        rc = LP_SHDICT_ENOTFOUND;
    } else if (nd->type == LP_SHDICT_TLIST) {
        rc = LP_SHDICT_EISLIST;
    } else {
        out->type = nd->type;
        out->flags = nd->flags;
        out->num = nd->num;
        out->stale = old;
        out->len = nd->vlen;
        out->str = NULL;
        if (nd->vlen) {
            char *buf = scratch_reserve(nd->vlen);
            if (buf) {
                memcpy(buf, nd->data + nd->klen, nd->vlen);
                out->str = buf;
            } else {
                rc = LP_SHDICT_ENOMEM;
            }
        }
        if (!old)
            touch(s, nd);
    }
    unlock(&s->lock);
    return rc;
}

/* Stores nd in place of old (NULL: none), making room first. On failure old stays. */
static int put(sd_stripe_t *s, sd_node_t *old, sd_node_t *nd, int safe, double *now, int *forcible)
{
    if (old)
        detach(s, old);
    int rc = make_room(s, nd->charge, safe, now, forcible);
    if (rc) {
        if (old)
            attach(s, old);
        return rc;
    }
    attach(s, nd);
    if (old)
        node_free(old);
    return 0;
}

int lp_shdict_store(lp_shdict_t *d, int op, const char *k, size_t klen, lp_shdict_val_t *v,
                    double exptime)
{
    v->forcible = 0;
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    if (v->type != LP_SHDICT_TNIL && v->type != LP_SHDICT_TBOOL && v->type != LP_SHDICT_TNUM &&
        v->type != LP_SHDICT_TSTR)
        return LP_SHDICT_EINVAL;
    if (v->type == LP_SHDICT_TSTR && v->len > UINT32_MAX)
        return LP_SHDICT_ENOMEM;
    int safe = op & LP_SHDICT_SAFE;
    op &= ~LP_SHDICT_SAFE;
    uint64_t h = lp_hash64(k, klen);
    sd_stripe_t *s = stripe_of(d, h);
    double now = 0;
    int rc = 0;
    lock(&s->lock);
    sd_node_t *nd = find(s, h, k, klen);
    int live = nd && !expired(nd, &now);
    if (op == LP_SHDICT_ADD && live) {
        rc = LP_SHDICT_EEXISTS;
    } else if (op == LP_SHDICT_REPLACE && !live) {
        rc = LP_SHDICT_ENOTFOUND;
    } else if (v->type == LP_SHDICT_TNIL) {
        if (nd)
            drop(s, nd);
    } else if (nd && nd->type != LP_SHDICT_TLIST &&
               (v->type == LP_SHDICT_TSTR ? v->len : 0) == nd->vlen) {
        /* Same size: in place, no malloc (counters, fixed-size values). */
        nd->type = v->type;
        nd->num = v->type == LP_SHDICT_TBOOL ? (v->num != 0) : v->num;
        if (nd->vlen)
            memcpy(nd->data + nd->klen, v->str, nd->vlen);
        nd->flags = v->flags;
        nd->expires = expiry(exptime, &now);
        touch(s, nd);
    } else {
        sd_node_t *fresh = node_new(h, k, klen, v);
        if (!fresh) {
            rc = LP_SHDICT_ENOMEM;
        } else {
            fresh->expires = expiry(exptime, &now);
            if ((rc = put(s, nd, fresh, safe, &now, &v->forcible)))
                free(fresh);
        }
    }
    unlock(&s->lock);
    return rc;
}

int lp_shdict_incr(lp_shdict_t *d, const char *k, size_t klen, double step, int has_init,
                   double init, double init_ttl, lp_shdict_val_t *out)
{
    out->forcible = 0;
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    uint64_t h = lp_hash64(k, klen);
    sd_stripe_t *s = stripe_of(d, h);
    double now = 0;
    int rc = 0;
    lock(&s->lock);
    sd_node_t *nd = find(s, h, k, klen);
    if (nd && expired(nd, &now)) {
        drop(s, nd);
        nd = NULL;
    }
    if (nd) {
        if (nd->type != LP_SHDICT_TNUM) {
            rc = LP_SHDICT_ENOTNUM;
        } else {
            nd->num += step;
            out->num = nd->num;
            touch(s, nd);
        }
    } else if (!has_init) {
        rc = LP_SHDICT_ENOTFOUND;
    } else {
        lp_shdict_val_t v = {.type = LP_SHDICT_TNUM, .num = init + step};
        sd_node_t *fresh = node_new(h, k, klen, &v);
        if (!fresh) {
            rc = LP_SHDICT_ENOMEM;
        } else {
            fresh->expires = expiry(init_ttl, &now);
            if ((rc = put(s, NULL, fresh, 0, &now, &out->forcible)))
                free(fresh);
            else
                out->num = v.num;
        }
    }
    unlock(&s->lock);
    return rc;
}

int lp_shdict_gcra(lp_shdict_t *d, const char *k, size_t klen, double interval, double burst,
                   double cost, lp_shdict_gcra_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!key_ok(k, klen) || !(interval > 0) || !(burst >= 0) || !(cost >= 0))
        return LP_SHDICT_EINVAL;
    uint64_t h = lp_hash64(k, klen);
    sd_stripe_t *s = stripe_of(d, h);
    double now = clock_now();
    /* The bucket holds burst + 1 requests' worth of time; a request is allowed when its
     * new TAT stays within that much of now. The 1 ns slack absorbs rounding, so that a
     * request arriving exactly on its slot is not refused. */
    double limit = (burst + 1) * interval;
    int rc = 0;
    lock(&s->lock);
    sd_node_t *nd = find(s, h, k, klen);
    if (nd && (expired(nd, &now) || nd->type != LP_SHDICT_TNUM)) {
        drop(s, nd);
        nd = NULL;
    }
    double tat = nd && nd->num > now ? nd->num : now;
    /* A TAT further ahead than this limit allows was made under another (a reload that
     * raised the rate): the new limit applies at once, as if the bucket had just been
     * emptied under it (the next slot one new interval away). Under an unchanged limit a
     * TAT never passes now + limit. */
    if (tat > now + limit) {
        tat = now + limit;
        nd->num = nd->expires = tat; /* kept even if this one is refused */
    }
    double new_tat = tat + cost * interval;
    double allow_at = new_tat - limit;
    if (allow_at > now + 1e-9) {
        out->retry_after = allow_at - now;
        out->reset_after = tat - now;
    } else if (cost == 0) {
        out->allowed = 1;
        out->remaining = floor((limit - (tat - now)) / interval + 1e-9);
        out->reset_after = tat - now;
    } else {
        out->allowed = 1;
        out->remaining = floor((limit - (new_tat - now)) / interval + 1e-9);
        out->reset_after = new_tat - now;
        if (nd) {
            nd->num = new_tat;
            nd->expires = new_tat;
            touch(s, nd);
        } else {
            lp_shdict_val_t v = {.type = LP_SHDICT_TNUM, .num = new_tat};
            sd_node_t *fresh = node_new(h, k, klen, &v);
            if (!fresh) {
                rc = LP_SHDICT_ENOMEM;
            } else {
                fresh->expires = new_tat;
                if ((rc = put(s, NULL, fresh, 0, &now, &out->forcible)))
                    free(fresh);
            }
        }
    }
    unlock(&s->lock);
    return rc;
}

int lp_shdict_ttl(lp_shdict_t *d, const char *k, size_t klen, double *ttl)
{
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    sd_node_t *nd;
    sd_stripe_t *s = lock_key(d, k, klen, &nd);
    double now = 0;
    int rc = 0;
    if (!nd || expired(nd, &now))
        rc = LP_SHDICT_ENOTFOUND;
    else
        *ttl = nd->expires == 0 ? 0 : nd->expires - now;
    unlock(&s->lock);
    return rc;
}

int lp_shdict_expire(lp_shdict_t *d, const char *k, size_t klen, double exptime)
{
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    sd_node_t *nd;
    sd_stripe_t *s = lock_key(d, k, klen, &nd);
    double now = 0;
    int rc = 0;
    if (!nd || expired(nd, &now))
        rc = LP_SHDICT_ENOTFOUND;
    else
        nd->expires = expiry(exptime, &now);
    unlock(&s->lock);
    return rc;
}

void lp_shdict_flush_all(lp_shdict_t *d)
{
    /* As OpenResty: every entry is marked expired (get_stale still sees it); the memory
     * comes back through flush_expired or as the LRU reuses it. */
    for (unsigned i = 0; i < d->nstripes; i++) {
        sd_stripe_t *s = &d->stripes[i];
        lock(&s->lock);
        for (sd_link_t *l = s->lru.next; l != &s->lru; l = l->next)
            node_of(l)->expires = DBL_MIN;
        unlock(&s->lock);
    }
}

int lp_shdict_flush_expired(lp_shdict_t *d, int max)
{
    int n = 0;
    double now = 0;
    for (unsigned i = 0; i < d->nstripes && (max <= 0 || n < max); i++) {
        sd_stripe_t *s = &d->stripes[i];
        lock(&s->lock);
        sd_link_t *l = s->lru.prev;
        while (l != &s->lru && (max <= 0 || n < max)) {
            sd_link_t *prev = l->prev;
            if (expired(node_of(l), &now)) {
                drop(s, node_of(l));
                n++;
            }
            l = prev;
        }
        unlock(&s->lock);
    }
    return n;
}

typedef struct {
    const char *base;
    size_t len;
} sd_str_t;

int lp_shdict_keys(lp_shdict_t *d, int max, void **out)
{
    /* Keys are gathered stripe by stripe as (offset, length) records followed by their
     * bytes in a private buffer, then laid out in the scratch buffer as {base, len} pairs
     * pointing at the bytes behind them. */
    char *tmp = NULL;
    size_t tlen = 0, tcap = 0, count = 0;
    double now = 0;
    int rc = 0;
    for (unsigned i = 0; i < d->nstripes && !rc && (max <= 0 || count < (size_t)max); i++) {
        sd_stripe_t *s = &d->stripes[i];
        lock(&s->lock);
        for (sd_link_t *l = s->lru.next; l != &s->lru && (max <= 0 || count < (size_t)max);
             l = l->next) {
            sd_node_t *nd = node_of(l);
            if (expired(nd, &now))
                continue;
            size_t need = tlen + sizeof(uint32_t) + nd->klen;
            if (need > tcap) {
                size_t cap = tcap ? tcap * 2 : 4096;
                while (cap < need)
                    cap *= 2;
                char *p = realloc(tmp, cap);
                if (!p) {
                    rc = LP_SHDICT_ENOMEM;
                    break;
                }
                tmp = p;
                tcap = cap;
            }
            uint32_t kl = nd->klen;
            memcpy(tmp + tlen, &kl, sizeof(kl));
            memcpy(tmp + tlen + sizeof(kl), nd->data, kl);
            tlen = need;
            count++;
        }
        unlock(&s->lock);
    }
    size_t bytes = tlen - count * sizeof(uint32_t);
    char *buf = rc ? NULL : scratch_reserve(count * sizeof(sd_str_t) + bytes + 1);
    if (!buf) {
        free(tmp);
        return LP_SHDICT_ENOMEM;
    }
    sd_str_t *arr = (sd_str_t *)(void *)buf;
    char *b = buf + count * sizeof(sd_str_t);
    size_t off = 0;
    for (size_t j = 0; j < count; j++) {
        uint32_t kl;
        memcpy(&kl, tmp + off, sizeof(kl));
        memcpy(b, tmp + off + sizeof(kl), kl);
        arr[j].base = b;
        arr[j].len = kl;
        b += kl;
        off += sizeof(kl) + kl;
    }
    free(tmp);
    *out = buf;
    return (int)count;
}

int lp_shdict_push(lp_shdict_t *d, const char *k, size_t klen, int left, lp_shdict_val_t *v)
{
    v->forcible = 0;
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    if (v->type != LP_SHDICT_TSTR && v->type != LP_SHDICT_TNUM)
        return LP_SHDICT_EINVAL;
    size_t len = v->type == LP_SHDICT_TSTR ? v->len : 0;
    if (len > UINT32_MAX)
        return LP_SHDICT_ENOMEM;
    uint64_t h = lp_hash64(k, klen);
    sd_stripe_t *s = stripe_of(d, h);
    double now = 0;
    int rc = 0;
    sd_item_t *it = malloc(sizeof(*it) + len);
    if (!it)
        return LP_SHDICT_ENOMEM;
    it->type = v->type;
    it->num = v->num;
    it->len = (uint32_t)len;
    if (len)
        memcpy(it->data, v->str, len);
    size_t charge = LP_SHDICT_ITEM_OVERHEAD + len;
    lock(&s->lock);
    sd_node_t *nd = find(s, h, k, klen);
    if (nd && expired(nd, &now)) {
        drop(s, nd);
        nd = NULL;
    }
    if (nd && nd->type != LP_SHDICT_TLIST) {
        rc = LP_SHDICT_ENOTLIST;
    } else if (nd) {
        /* The list itself must not be evicted to make room for its own item. */
        detach(s, nd);
        rc = make_room(s, nd->charge + charge, 0, &now, &v->forcible);
        if (!rc)
            nd->charge += charge;
        attach(s, nd);
    } else {
        lp_shdict_val_t lv = {.type = LP_SHDICT_TLIST};
        if (!(nd = node_new(h, k, klen, &lv))) {
            rc = LP_SHDICT_ENOMEM;
        } else {
            nd->charge += charge;
            if ((rc = put(s, NULL, nd, 0, &now, &v->forcible))) {
                free(nd);
                nd = NULL;
            }
        }
    }
    if (!rc) {
        if (left) {
            it->prev = NULL;
            it->next = nd->head;
            if (nd->head)
                nd->head->prev = it;
            else
                nd->tail = it;
            nd->head = it;
        } else {
            it->next = NULL;
            it->prev = nd->tail;
            if (nd->tail)
                nd->tail->next = it;
            else
                nd->head = it;
            nd->tail = it;
        }
        it = NULL;
        rc = (int)++nd->vlen;
    }
    unlock(&s->lock);
    free(it);
    return rc;
}

int lp_shdict_pop(lp_shdict_t *d, const char *k, size_t klen, int left, lp_shdict_val_t *out)
{
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    sd_node_t *nd;
    sd_stripe_t *s = lock_key(d, k, klen, &nd);
    double now = 0;
    int rc = 0;
    sd_item_t *it = NULL;
    if (!nd || expired(nd, &now)) {
        rc = LP_SHDICT_ENOTFOUND;
    } else if (nd->type != LP_SHDICT_TLIST) {
        rc = LP_SHDICT_ENOTLIST;
    } else {
        char *buf = nd->vlen ? scratch_reserve((left ? nd->head : nd->tail)->len) : NULL;
        it = left ? nd->head : nd->tail;
        if (it->len && !buf) {
            it = NULL;
            rc = LP_SHDICT_ENOMEM;
        } else {
            if (left) {
                nd->head = it->next;
                if (nd->head)
                    nd->head->prev = NULL;
                else
                    nd->tail = NULL;
            } else {
                nd->tail = it->prev;
                if (nd->tail)
                    nd->tail->next = NULL;
                else
                    nd->head = NULL;
            }
            nd->vlen--;
            size_t charge = LP_SHDICT_ITEM_OVERHEAD + it->len;
            nd->charge -= charge;
            s->used -= charge;
            out->type = it->type;
            out->num = it->num;
            out->len = it->len;
            out->flags = 0;
            out->str = NULL;
            if (it->len) {
                memcpy(buf, it->data, it->len);
                out->str = buf;
            }
            if (!nd->vlen)
                drop(s, nd);
            else
                touch(s, nd);
        }
    }
    unlock(&s->lock);
    free(it);
    return rc;
}

int lp_shdict_llen(lp_shdict_t *d, const char *k, size_t klen)
{
    if (!key_ok(k, klen))
        return LP_SHDICT_EINVAL;
    sd_node_t *nd;
    sd_stripe_t *s = lock_key(d, k, klen, &nd);
    double now = 0;
    int rc;
    if (!nd || expired(nd, &now))
        rc = 0;
    else if (nd->type != LP_SHDICT_TLIST)
        rc = LP_SHDICT_ENOTLIST;
    else
        rc = (int)nd->vlen;
    unlock(&s->lock);
    return rc;
}
