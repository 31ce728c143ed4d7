/* The response cache's memory store: zones, entries, fills (cache_store.h). */
#include "cache_store.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

#define LOCK_BUCKETS 256

struct lp_cache_entry_s {
    atomic_uint refs;        /* the zone's while linked + each reader's */
    lp_cache_entry_t *hnext; /* borrowed: next in its bucket (zone lock); once unlinked,
                                the unlinker's to-free list */
    lp_list_t lru;           /* in zone->lru while linked (zone lock) */
    uint64_t hash;           /* of the primary key */
    char *key;               /* owned: key bytes then sec bytes, one allocation */
    size_t klen;
    const char *sec; /* borrowed: inside `key`'s allocation */
    size_t slen;
    char *head; /* owned: the policy's head; replaced under the zone lock */
    size_t hlen;
    lp_cache_chunk_t *chunks; /* owned: the body, immutable once linked */
    uint64_t body_len;
    size_t cost;       /* bytes charged to the zone */
    double keep_until; /* seconds (realtime): dropped by a lookup after this */
    uint64_t seq;      /* commit order (zone->seq): the oldest variant goes first */
    uint8_t linked;    /* in the zone's table (zone lock) */
};

struct lp_cache_fill_s {
    lp_cache_zone_t *zone; /* registry reference */
    char *lkey;            /* owned: the locked primary key; NULL: no lock taken */
    size_t lklen;
    uint64_t lhash;
    uint8_t locked;                /* holds lkey's lock in zone->locks (zone lock: a newer
                                      fill may take an old lock over) */
    struct lp_cache_fill_s *lnext; /* borrowed: next in its lock bucket (zone lock) */
    double locked_at;
    lp_cache_entry_t *e;        /* owned: the entry being gathered (never linked before
                                   commit); NULL before start or once dead */
    lp_cache_chunk_t *tail;     /* borrowed: e's last chunk */
    uint64_t hint;              /* expected body length (0: unknown) */
    lp_cache_waiter_t *waiters; /* borrowed: requests waiting on its lock (zone lock) */
    uint8_t dead;               /* went over a limit: appends are ignored, commit fails */
    uint8_t started;            /* lp_cache_fill_start ran */
    size_t charged;             /* its chunks' bytes counted in zone->filling (zone lock) */
};

/* Concurrency: one mutex per zone, taken by every worker's lookups, commits and purges and by
 * the admin thread's purges and stats. It guards the table (buckets, hnext), the LRU list,
 * the lock table, `used`, `nentries`, the limits and every linked entry's `linked`, `lru` and
 * head. Critical sections do pointer work, memcmp and head copies only: bodies are gathered
 * outside it (a fill's entry is private until commit) and freed outside it (unlinked entries
 * are collected and dropped after the unlock). No Lua is ever touched under it. */
struct lp_cache_zone_s {
    pthread_mutex_t lock;
    char *name;                 /* owned */
    size_t capacity;            /* byte budget (lock) */
    size_t max_object;          /* largest body stored: written under the lock, read by fills
                                   without it (relaxed atomics: a fill may go by the old bound
                                   for a moment after a reload) */
    size_t used;                /* bytes charged (lock) */
    size_t filling;             /* chunk bytes of fills not committed yet (lock): they count
                                   against the budget too, or concurrent fills of large
                                   objects would hold far more than `capacity` */
    size_t nentries;            /* linked entries (lock) */
    uint64_t seq;               /* commits so far (lock) */
    lp_cache_entry_t **buckets; /* owned array of nbuckets chains */
    size_t nbuckets;            /* a power of two */
    lp_list_t lru;              /* most recently used first */
    lp_cache_fill_t *locks[LOCK_BUCKETS]; /* borrowed: fills holding a key's lock */
    atomic_uint_fast64_t counts[LP_CACHE_C_N];
    int refs;                  /* registry references (reg_lock) */
    lp_cache_zone_t *reg_next; /* borrowed: next in the registry (reg_lock) */
};

size_t lp_cache_entry_cost(size_t klen, size_t slen, size_t hlen, size_t body_cap)
{
    return sizeof(lp_cache_entry_t) + klen + slen + hlen + body_cap;
}

/* ---- entries ---- */

static void entry_free(lp_cache_entry_t *e)
{
    lp_cache_chunk_t *c = e->chunks;
    while (c) {
        lp_cache_chunk_t *n = c->next;
        free(c);
        c = n;
    }
    free(e->head);
    free(e->key);
    free(e);
}

lp_cache_entry_t *lp_cache_entry_ref(lp_cache_entry_t *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}

void lp_cache_entry_unref(lp_cache_entry_t *e)
{
    if (e && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1)
        entry_free(e);
}

uint64_t lp_cache_entry_body_len(const lp_cache_entry_t *e)
{
    return e->body_len;
}

const lp_cache_chunk_t *lp_cache_entry_chunks(const lp_cache_entry_t *e)
{
    return e->chunks;
}

/* Under the zone lock: takes e out of the table and the LRU, uncharges it, and puts it on
 * *dead (its zone reference is dropped by the caller after the unlock). */
static void unlink_entry(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_entry_t **dead)
{
    lp_cache_entry_t **pp = &z->buckets[e->hash & (z->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    lp_list_remove(&e->lru);
    e->linked = 0;
    z->used -= e->cost;
    z->nentries--;
    e->hnext = *dead;
    *dead = e;
}

static void drop_dead(lp_cache_entry_t *dead)
{
    while (dead) {
        lp_cache_entry_t *n = dead->hnext;
        lp_cache_entry_unref(dead);
        dead = n;
    }
}

/* Under the zone lock: evicts from the LRU's tail until `used` and `filling` fit the
 * budget. */
static void evict(lp_cache_zone_t *z, lp_cache_entry_t **dead)
{
    while (z->used + z->filling > z->capacity && !lp_list_empty(&z->lru)) {
        lp_cache_entry_t *e = LP_CONTAINER_OF(z->lru.prev, lp_cache_entry_t, lru);
        unlink_entry(z, e, dead);
        atomic_fetch_add_explicit(&z->counts[LP_CACHE_C_EVICTED], 1, memory_order_relaxed);
    }
}

/* Under the zone lock: doubles the table when chains grow long. Failure keeps the old one. */
static void maybe_grow(lp_cache_zone_t *z)
{
    if (z->nentries < z->nbuckets * 2)
        return;
    size_t n = z->nbuckets * 2;
    lp_cache_entry_t **b = calloc(n, sizeof(*b));
    if (!b)
        return;
    for (size_t i = 0; i < z->nbuckets; i++) {
        lp_cache_entry_t *e = z->buckets[i];
        while (e) {
            lp_cache_entry_t *next = e->hnext;
            lp_cache_entry_t **slot = &b[e->hash & (n - 1)];
            e->hnext = *slot;
            *slot = e;
            e = next;
        }
    }
    free(z->buckets);
    z->buckets = b;
    z->nbuckets = n;
}

static int same_key(const lp_cache_entry_t *e, uint64_t h, const char *key, size_t klen)
{
    return e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0;
}

/* ---- zones and the registry ---- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static lp_cache_zone_t *reg_head; /* zones some config references (refs) */

static lp_cache_zone_t *zone_new(const char *name, size_t memory, size_t max_object)
{
    lp_cache_zone_t *z = calloc(1, sizeof(*z));
    if (!z)
        return NULL;
    z->name = strdup(name);
    z->nbuckets = 64;
    z->buckets = calloc(z->nbuckets, sizeof(*z->buckets));
    if (!z->name || !z->buckets || pthread_mutex_init(&z->lock, NULL)) {
        free(z->name);
        free(z->buckets);
        free(z);
        return NULL;
    }
    z->capacity = memory;
    __atomic_store_n(&z->max_object, max_object, __ATOMIC_RELAXED);
    lp_list_init(&z->lru);
    return z;
}

static void zone_free(lp_cache_zone_t *z)
{
    lp_cache_entry_t *dead = NULL;
    while (!lp_list_empty(&z->lru))
        unlink_entry(z, LP_CONTAINER_OF(z->lru.next, lp_cache_entry_t, lru), &dead);
    drop_dead(dead);
    pthread_mutex_destroy(&z->lock);
    free(z->buckets);
    free(z->name);
    free(z);
}

static lp_cache_zone_t *reg_find(const char *name, size_t n)
{
    for (lp_cache_zone_t *z = reg_head; z; z = z->reg_next)
        if (strlen(z->name) == n && memcmp(z->name, name, n) == 0)
            return z;
    return NULL;
}

lp_cache_zone_t *lp_cache_zone_acquire(const char *name, size_t memory, size_t max_object)
{
    pthread_mutex_lock(&reg_lock);
    lp_cache_zone_t *z = reg_find(name, strlen(name));
    if (z) {
        z->refs++;
    } else if ((z = zone_new(name, memory, max_object))) {
        z->refs = 1;
        z->reg_next = reg_head;
        reg_head = z;
    }
    pthread_mutex_unlock(&reg_lock);
    return z;
}

static void zone_ref(lp_cache_zone_t *z)
{
    pthread_mutex_lock(&reg_lock);
    z->refs++;
    pthread_mutex_unlock(&reg_lock);
}

void lp_cache_zone_hold(lp_cache_zone_t *z)
{
    zone_ref(z);
}

void lp_cache_zone_release(lp_cache_zone_t *z)
{
    if (!z)
        return;
    pthread_mutex_lock(&reg_lock);
    int last = --z->refs == 0;
    if (last) {
        lp_cache_zone_t **pp = &reg_head;
        while (*pp != z)
            pp = &(*pp)->reg_next;
        *pp = z->reg_next;
    }
    pthread_mutex_unlock(&reg_lock);
    if (last)
        zone_free(z);
}

lp_cache_zone_t *lp_cache_zone_find(const char *name, size_t n)
{
    pthread_mutex_lock(&reg_lock);
    lp_cache_zone_t *z = reg_find(name, n);
    pthread_mutex_unlock(&reg_lock);
    return z;
}

const char *lp_cache_zone_name(const lp_cache_zone_t *z)
{
    return z->name;
}

void lp_cache_zones_each(void (*fn)(lp_cache_zone_t *z, void *arg), void *arg)
{
    pthread_mutex_lock(&reg_lock);
    for (lp_cache_zone_t *z = reg_head; z; z = z->reg_next)
        fn(z, arg);
    pthread_mutex_unlock(&reg_lock);
}

void lp_cache_zone_resize(lp_cache_zone_t *z, size_t memory, size_t max_object)
{
    lp_cache_entry_t *dead = NULL;
    pthread_mutex_lock(&z->lock);
    z->capacity = memory;
    __atomic_store_n(&z->max_object, max_object, __ATOMIC_RELAXED);
    evict(z, &dead);
    pthread_mutex_unlock(&z->lock);
    drop_dead(dead);
}

void lp_cache_zone_stats(lp_cache_zone_t *z, lp_cache_stats_t *out)
{
    pthread_mutex_lock(&z->lock);
    out->entries = z->nentries;
    out->bytes = z->used;
    out->capacity = z->capacity;
    out->max_object = __atomic_load_n(&z->max_object, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&z->lock);
    for (int i = 0; i < LP_CACHE_C_N; i++)
        out->counts[i] = atomic_load_explicit(&z->counts[i], memory_order_relaxed);
}

void lp_cache_count(lp_cache_zone_t *z, int what)
{
    if (what >= 0 && what < LP_CACHE_C_N)
        atomic_fetch_add_explicit(&z->counts[what], 1, memory_order_relaxed);
}

/* ---- lookups ---- */

lp_cache_entry_t *lp_cache_get(lp_cache_zone_t *z, const char *key, size_t klen, const char *sec,
                               size_t slen, double now)
{
    uint64_t h = lp_hash64(key, klen);
    lp_cache_entry_t *found = NULL, *dead = NULL;
    pthread_mutex_lock(&z->lock);
    for (lp_cache_entry_t *e = z->buckets[h & (z->nbuckets - 1)]; e; e = e->hnext) {
        if (!same_key(e, h, key, klen) || e->slen != slen || memcmp(e->sec, sec, slen) != 0)
            continue;
        if (e->keep_until < now) {
            unlink_entry(z, e, &dead);
        } else {
            found = lp_cache_entry_ref(e);
            lp_list_remove(&e->lru);
            lp_list_insert_head(&z->lru, &e->lru);
        }
        break;
    }
    pthread_mutex_unlock(&z->lock);
    drop_dead(dead);
    return found;
}

size_t lp_cache_entry_head(lp_cache_zone_t *z, const lp_cache_entry_t *e, char *out, size_t room)
{
    pthread_mutex_lock(&z->lock);
    size_t n = e->hlen;
    if (n <= room)
        memcpy(out, e->head, n);
    pthread_mutex_unlock(&z->lock);
    return n;
}

int lp_cache_entry_set_head(lp_cache_zone_t *z, lp_cache_entry_t *e, const char *head, size_t hlen,
                            double keep_until)
{
    char *h = malloc(hlen ? hlen : 1);
    if (!h)
        return -1;
    memcpy(h, head, hlen);
    lp_cache_entry_t *dead = NULL;
    pthread_mutex_lock(&z->lock);
    char *old = e->head;
    if (e->linked) {
        z->used = z->used - e->hlen + hlen;
        e->cost = e->cost - e->hlen + hlen;
    }
    e->head = h;
    e->hlen = hlen;
    e->keep_until = keep_until;
    evict(z, &dead);
    pthread_mutex_unlock(&z->lock);
    free(old);
    drop_dead(dead);
    return 0;
}

/* ---- purge ---- */

size_t lp_cache_purge(lp_cache_zone_t *z, int mode, const char *key, size_t klen)
{
    size_t n = 0;
    lp_cache_entry_t *dead = NULL;
    pthread_mutex_lock(&z->lock);
    if (mode == LP_CACHE_PURGE_KEY) {
        uint64_t h = lp_hash64(key, klen);
        lp_cache_entry_t *e = z->buckets[h & (z->nbuckets - 1)];
        while (e) {
            lp_cache_entry_t *next = e->hnext;
            if (same_key(e, h, key, klen)) {
                unlink_entry(z, e, &dead);
                n++;
            }
            e = next;
        }
    } else {
        for (size_t i = 0; i < z->nbuckets; i++) {
            lp_cache_entry_t *e = z->buckets[i];
            while (e) {
                lp_cache_entry_t *next = e->hnext;
                if (mode == LP_CACHE_PURGE_ALL ||
                    (e->klen >= klen && memcmp(e->key, key, klen) == 0)) {
                    unlink_entry(z, e, &dead);
                    n++;
                }
                e = next;
            }
        }
    }
    pthread_mutex_unlock(&z->lock);
    drop_dead(dead);
    return n;
}

/* ---- fills ---- */

static lp_cache_fill_t **lock_slot(lp_cache_zone_t *z, uint64_t h)
{
    return &z->locks[h & (LOCK_BUCKETS - 1)];
}

/* Under the zone lock: the fill holding key's lock, or NULL. */
static lp_cache_fill_t *lock_find(lp_cache_zone_t *z, uint64_t h, const char *key, size_t klen)
{
    for (lp_cache_fill_t *f = *lock_slot(z, h); f; f = f->lnext)
        if (f->lhash == h && f->lklen == klen && memcmp(f->lkey, key, klen) == 0)
            return f;
    return NULL;
}

/* Under the zone lock: the key's lock goes, and its waiters hear of it. */
static void lock_drop(lp_cache_zone_t *z, lp_cache_fill_t *f)
{
    if (!f->locked)
        return;
    lp_cache_fill_t **pp = lock_slot(z, f->lhash);
    while (*pp != f)
        pp = &(*pp)->lnext;
    *pp = f->lnext;
    f->locked = 0;
    lp_cache_waiter_t *w = f->waiters;
    f->waiters = NULL;
    while (w) {
        lp_cache_waiter_t *next = w->next;
        w->holder = NULL;
        w->next = NULL;
        w->notify(w); /* hands w over to its owner: w is not ours after this */
        w = next;
    }
}

int lp_cache_wait(lp_cache_zone_t *z, const char *key, size_t klen, lp_cache_waiter_t *w)
{
    uint64_t h = lp_hash64(key, klen);
    pthread_mutex_lock(&z->lock);
    lp_cache_fill_t *f = lock_find(z, h, key, klen);
    if (f) {
        w->holder = f;
        w->next = f->waiters;
        f->waiters = w;
    }
    pthread_mutex_unlock(&z->lock);
    return f != NULL;
}

int lp_cache_wait_cancel(lp_cache_zone_t *z, lp_cache_waiter_t *w)
{
    pthread_mutex_lock(&z->lock);
    lp_cache_fill_t *f = w->holder;
    if (f) {
        lp_cache_waiter_t **pp = &f->waiters;
        while (*pp != w)
            pp = &(*pp)->next;
        *pp = w->next;
        w->holder = NULL;
    }
    pthread_mutex_unlock(&z->lock);
    return f != NULL;
}

lp_cache_fill_t *lp_cache_lock(lp_cache_zone_t *z, const char *key, size_t klen,
                               double lock_timeout, double now, int *busy)
{
    *busy = 0;
    if (klen > LP_CACHE_MAX_KEY)
        return NULL;
    lp_cache_fill_t *f = calloc(1, sizeof(*f));
    if (!f || !(f->lkey = malloc(klen ? klen : 1))) {
        free(f);
        return NULL;
    }
    memcpy(f->lkey, key, klen);
    f->lklen = klen;
    f->lhash = lp_hash64(key, klen);
    f->locked_at = now;
    pthread_mutex_lock(&z->lock);
    lp_cache_fill_t *holder = lock_find(z, f->lhash, key, klen);
    if (holder && now - holder->locked_at < lock_timeout) {
        pthread_mutex_unlock(&z->lock);
        free(f->lkey);
        free(f);
        *busy = 1;
        return NULL;
    }
    if (holder)
        lock_drop(z, holder); /* taken over: its fill went quiet past the timeout */
    lp_cache_fill_t **slot = lock_slot(z, f->lhash);
    f->lnext = *slot;
    *slot = f;
    f->locked = 1;
    pthread_mutex_unlock(&z->lock);
    zone_ref(z);
    f->zone = z;
    return f;
}

int lp_cache_locked(lp_cache_zone_t *z, const char *key, size_t klen)
{
    uint64_t h = lp_hash64(key, klen);
    pthread_mutex_lock(&z->lock);
    int r = lock_find(z, h, key, klen) != NULL;
    pthread_mutex_unlock(&z->lock);
    return r;
}

static lp_cache_chunk_t *chunk_new(size_t cap)
{
    lp_cache_chunk_t *c = malloc(sizeof(*c) + cap);
    if (c) {
        c->next = NULL;
        c->len = 0;
        c->cap = cap;
    }
    return c;
}

lp_cache_fill_t *lp_cache_fill_start(lp_cache_zone_t *z, lp_cache_fill_t *fill, const char *key,
                                     size_t klen, const char *sec, size_t slen, const char *head,
                                     size_t hlen, double keep_until, uint64_t size_hint)
{
    if (klen > LP_CACHE_MAX_KEY || slen > LP_CACHE_MAX_KEY ||
        size_hint > __atomic_load_n(&z->max_object, __ATOMIC_RELAXED) ||
        (fill && (fill->zone != z || fill->started))) {
        if (fill)
            lp_cache_fill_abandon(fill);
        return NULL;
    }
    lp_cache_fill_t *f = fill;
    if (!f) {
        if (!(f = calloc(1, sizeof(*f))))
            return NULL;
        zone_ref(z);
        f->zone = z;
    }
    f->started = 1;
    lp_cache_entry_t *e = calloc(1, sizeof(*e));
    if (!e || !(e->key = malloc(klen + slen + 1)) || !(e->head = malloc(hlen ? hlen : 1))) {
        if (e)
            free(e->key);
        free(e);
        lp_cache_fill_abandon(f);
        return NULL;
    }
    memcpy(e->key, key, klen);
    memcpy(e->key + klen, sec, slen);
    e->klen = klen;
    e->sec = e->key + klen;
    e->slen = slen;
    memcpy(e->head, head, hlen);
    e->hlen = hlen;
    e->hash = lp_hash64(key, klen);
    e->keep_until = keep_until;
    atomic_init(&e->refs, 1); /* the zone's, once linked */
    f->e = e;
    f->hint = size_hint;
    return f;
}

int lp_cache_fill_active(const lp_cache_fill_t *f)
{
    return f->started;
}

/* The fill went over a limit: its bytes go now, and its lock, so waiters stop waiting. */
/* Under the zone lock: gives back what the fill's chunks were charged. */
static void fill_uncharge(lp_cache_fill_t *f)
{
    f->zone->filling -= f->charged;
    f->charged = 0;
}

static void fill_kill(lp_cache_fill_t *f)
{
    if (f->e) {
        entry_free(f->e);
        f->e = NULL;
        f->tail = NULL;
    }
    f->dead = 1;
    pthread_mutex_lock(&f->zone->lock);
    fill_uncharge(f);
    lock_drop(f->zone, f);
    pthread_mutex_unlock(&f->zone->lock);
    lp_cache_count(f->zone, LP_CACHE_C_ABANDONED);
}

int lp_cache_fill_append(lp_cache_fill_t *f, const char *data, size_t len)
{
    if (f->dead || !f->e)
        return -1;
    lp_cache_entry_t *e = f->e;
    if (e->body_len + len > __atomic_load_n(&f->zone->max_object, __ATOMIC_RELAXED)) {
        fill_kill(f);
        return -1;
    }
    while (len) {
        lp_cache_chunk_t *t = f->tail;
        if (!t || t->len == t->cap) {
            /* Sized to what is expected, when that is known: a 5-byte body takes a few
             * bytes, not a whole chunk. */
            size_t want = LP_CACHE_CHUNK;
            if (f->hint > e->body_len) {
                if (f->hint - e->body_len < want)
                    want = (size_t)(f->hint - e->body_len);
            } else if (!t) {
                want = 4096; /* length unknown: a small first chunk, then full ones */
            }
            if (want < len && len < LP_CACHE_CHUNK)
                want = len;
            if (want < 256 && f->hint <= e->body_len)
                want = 256; /* length unknown: room for a few small appends */
            /* Charged before it is taken: older entries make room, or the fill stops
             * when fills alone would hold the budget. */
            lp_cache_zone_t *z = f->zone;
            lp_cache_entry_t *dead = NULL;
            size_t charge = sizeof(lp_cache_chunk_t) + want;
            pthread_mutex_lock(&z->lock);
            z->filling += charge;
            f->charged += charge;
            evict(z, &dead);
            int full = z->used + z->filling > z->capacity;
            pthread_mutex_unlock(&z->lock);
            drop_dead(dead);
            lp_cache_chunk_t *c = full ? NULL : chunk_new(want);
            if (!c) {
                fill_kill(f);
                return -1;
            }
            if (t)
                t->next = c;
            else
                e->chunks = c;
            f->tail = t = c;
            e->cost += sizeof(*c) + want;
        }
        size_t n = t->cap - t->len < len ? t->cap - t->len : len;
        memcpy(t->data + t->len, data, n);
        t->len += n;
        e->body_len += n;
        data += n;
        len -= n;
    }
    return 0;
}

static void fill_free(lp_cache_fill_t *f)
{
    lp_cache_zone_t *z = f->zone;
    if (f->locked || f->charged) {
        pthread_mutex_lock(&z->lock);
        fill_uncharge(f);
        lock_drop(z, f);
        pthread_mutex_unlock(&z->lock);
    }
    if (f->e)
        entry_free(f->e);
    free(f->lkey);
    free(f);
    lp_cache_zone_release(z);
}

int lp_cache_fill_commit(lp_cache_fill_t *f)
{
    lp_cache_zone_t *z = f->zone;
    lp_cache_entry_t *e = f->e;
    if (f->dead || !e) {
        fill_free(f);
        return -1;
    }
    f->e = NULL;
    e->cost += lp_cache_entry_cost(e->klen, e->slen, e->hlen, 0);
    lp_cache_entry_t *dead = NULL;
    pthread_mutex_lock(&z->lock);
    fill_uncharge(f); /* its chunks move into `used` with the entry's cost */
    if (e->cost > z->capacity) {
        pthread_mutex_unlock(&z->lock);
        entry_free(e);
        lp_cache_count(z, LP_CACHE_C_ABANDONED);
        fill_free(f);
        return -1;
    }
    /* The entry it replaces, and the oldest variant when the key has too many. */
    lp_cache_entry_t *oldest = NULL;
    unsigned variants = 0;
    for (lp_cache_entry_t *o = z->buckets[e->hash & (z->nbuckets - 1)], *next; o; o = next) {
        next = o->hnext;
        if (!same_key(o, e->hash, e->key, e->klen))
            continue;
        if (o->slen == e->slen && memcmp(o->sec, e->sec, e->slen) == 0) {
            unlink_entry(z, o, &dead);
            continue;
        }
        variants++;
        if (!oldest || o->seq < oldest->seq)
            oldest = o;
    }
    if (variants >= LP_CACHE_MAX_VARIANTS)
        unlink_entry(z, oldest, &dead);
    maybe_grow(z);
    lp_cache_entry_t **slot = &z->buckets[e->hash & (z->nbuckets - 1)];
    e->hnext = *slot;
    *slot = e;
    lp_list_insert_head(&z->lru, &e->lru);
    e->linked = 1;
    e->seq = ++z->seq;
    z->used += e->cost;
    z->nentries++;
    evict(z, &dead);
    lock_drop(z, f);
    pthread_mutex_unlock(&z->lock);
    drop_dead(dead);
    lp_cache_count(z, LP_CACHE_C_STORED);
    fill_free(f);
    return 0;
}

void lp_cache_fill_abandon(lp_cache_fill_t *f)
{
    if (!f)
        return;
    if (f->started && !f->dead)
        lp_cache_count(f->zone, LP_CACHE_C_ABANDONED);
    fill_free(f);
}
