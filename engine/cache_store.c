/* The response cache's memory store: zones, entries, fills (cache_store.h). */
#include "cache_store.h"

#include <assert.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_disk.h"
#include "cache_room.h"
#include "cache_store_int.h"
#include "common.h"
#include "fnv.h"
#include "log.h"

/* A helper of a stored miss's path inlined where it is called: a call's set-up per step (the
 * lookup, the lock, the commit) cost a miss more than some of the steps. */
#define HOT static inline __attribute__((always_inline))

size_t lp_cache_entry_cost(size_t klen, size_t slen, size_t hlen, size_t body_cap)
{
    return sizeof(lp_cache_entry_t) + klen + slen + hlen + body_cap;
}

/* ---- entries ---- */

/* What a disk-only entry (a stub: key and head, no body) holds in memory, in the index: its
 * block, and a replacement head's (lp_cache_entry_set_head keeps its cost). */
static size_t stub_cost(const lp_cache_entry_t *e)
{
    return e->cost;
}

/* Where an entry's first head lives: in its own allocation, after the key and sec (a head
 * replaced later is a block of its own). */
static char *head_inline(const lp_cache_entry_t *e)
{
    return e->key + e->klen + e->slen;
}

static void head_free(const lp_cache_entry_t *e, char *head)
{
    if (head != head_inline(e))
        free(head);
}

static void entry_free(lp_cache_entry_t *e)
{
    lp_cache_served_t *s = atomic_load_explicit(&e->served, memory_order_acquire);
    while (s) {
        lp_cache_served_t *older = s->older;
        free(s);
        s = older;
    }
    lp_cache_chunk_t *c = e->chunks;
    if (e->body_inline)
        c = c->next; /* the first is in e's block */
    while (c) {
        lp_cache_chunk_t *n = c->next;
        free(c);
        c = n;
    }
    head_free(e, e->head);
    if (e->blocks)
        lp_cache_blocks_free(e->blocks, e, e->bclass);
    else
        free(e);
}

void lp__cache_entry_free(lp_cache_entry_t *e)
{
    entry_free(e);
}

uint64_t lp__cache_fid(const char *key, size_t klen, const char *sec, size_t slen)
{
    /* FNV-1a over the key's length, the key and sec: stable across processes (lp_hash64 is
     * seeded per process), as file names must be. A collision (or a crafted key) only makes
     * two entries share a file: a read checks the key and sec it holds. */
    unsigned char len[8];
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)((uint64_t)klen >> (8 * i));
    return lp_fnv1a64(lp_fnv1a64(lp_fnv1a64(LP_FNV1A64_INIT, len, 8), key, klen), sec, slen);
}

static _Atomic uint64_t next_serial = 1; /* lp_cache_entry_t.serial */

uint64_t lp_cache_entry_serial(const lp_cache_entry_t *e)
{
    return atomic_load_explicit(&e->serial, memory_order_relaxed);
}

const lp_cache_served_t *lp_cache_entry_served(const lp_cache_entry_t *e)
{
    return atomic_load_explicit(&e->served, memory_order_acquire);
}

static inline void evict(lp_cache_zone_t *z, lp_cache_entry_t **dead);
static void drop_dead(lp_cache_entry_t *dead);

/* Under the zone lock: the memo bytes of e's list from `from` on, taken back from the zone. */
static void served_uncharge(lp_cache_zone_t *z, lp_cache_entry_t *e, const lp_cache_served_t *from)
{
    size_t bytes = 0;
    for (const lp_cache_served_t *o = from; o; o = o->older)
        bytes += sizeof(*o) + o->wire_len;
    e->cost -= bytes;
    if (e->linked && e->resident)
        z->used -= bytes;
    else if (e->linked)
        z->sbytes -= bytes;
}

/* Under the zone lock, by a caller holding one reference to e: whether nobody else holds
 * one. Then no other thread reads e's memos (a reader holds a reference, and takes a new one
 * only under this lock), and they may be freed. */
static int served_alone(const lp_cache_entry_t *e)
{
    return atomic_load_explicit(&e->refs, memory_order_acquire) <= (e->linked ? 2u : 1u);
}

/* Under the zone lock: frees e's memos from `from` on (served_alone), their bytes taken back. */
static void served_free(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_served_t *from)
{
    served_uncharge(z, e, from);
    while (from) {
        lp_cache_served_t *older = from->older;
        free(from);
        from = older;
    }
}

int lp_cache_entry_served_set(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_served_t *s)
{
    /* Under the zone lock, once per head: the memo's bytes are charged to the zone with the
     * entry's (unlinking it takes them back, and they may evict). Readers take the list
     * without the lock: it is published with a release store, and an older memo is freed only
     * when nobody else holds the entry (served_alone), as a reader on another thread may still
     * be reading one; else it stays until the entry goes, up to LP_CACHE_SERVED_MAX. */
    size_t bytes = sizeof(*s) + s->wire_len;
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    lp_cache_served_t *cur = atomic_load_explicit(&e->served, memory_order_relaxed);
    if (cur && cur->serial != s->serial && served_alone(e)) {
        atomic_store_explicit(&e->served, NULL, memory_order_relaxed);
        served_free(z, e, cur);
        cur = NULL;
    }
    int n = 0;
    for (const lp_cache_served_t *o = cur; o; o = o->older, n++)
        if (o->serial == s->serial || n >= LP_CACHE_SERVED_MAX - 1) {
            lp_mutex_unlock(&z->lock);
            free(s);
            return -1;
        }
    s->older = cur;
    atomic_store_explicit(&e->served, s, memory_order_release);
    e->cost += bytes;
    if (e->linked && e->resident)
        z->used += bytes;
    else if (e->linked)
        z->sbytes += bytes;
    evict(z, &dead);
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
    return 0;
}

lp_cache_entry_t *lp__cache_entry_new(const char *key, size_t klen, const char *sec, size_t slen,
                                      const char *head, size_t hlen, uint64_t body_len,
                                      double keep_until, lp_cache_chunk_t *chunks)
{
    return lp__cache_entry_make(key, klen, sec, slen, head, hlen, body_len, keep_until, chunks,
                                lp_hash64(key, klen), 1, 0);
}

/* lp__cache_entry_make's body, inlined into a fill's start (a call per stored miss less). */
static inline __attribute__((always_inline)) lp_cache_entry_t *
entry_make(const char *key, size_t klen, const char *sec, size_t slen, const char *head,
           size_t hlen, uint64_t body_len, double keep_until, lp_cache_chunk_t *chunks,
           uint64_t hash, int fid_now, size_t body_cap, lp_cache_blocks_t *blocks)
{
    /* One block: the entry, its key and sec, its first head and, for a fill whose body is
     * known to be small, its body's only chunk (a store makes one entry per miss, and each
     * block an entry keeps costs a fresh allocation). */
    size_t at = (sizeof(lp_cache_entry_t) + klen + slen + hlen + 7) & ~(size_t)7;
    size_t size = body_cap ? at + sizeof(lp_cache_chunk_t) + body_cap : at + 1;
    uint8_t cls = 0;
    lp_cache_entry_t *e = blocks ? lp_cache_blocks_alloc(blocks, size, &cls) : NULL;
    lp_cache_blocks_t *from = e ? blocks : NULL;
    if (!e)
        e = malloc(size);
    if (!e) {
        while (chunks) {
            lp_cache_chunk_t *n = chunks->next;
            free(chunks);
            chunks = n;
        }
        return NULL;
    }
    /* One initialiser (each field stored once; the rest zero), then the bytes. */
    char *k = (char *)(e + 1);
    *e = (lp_cache_entry_t){
        .refs = 1,
        .hash = hash,
        .key = k,
        .klen = klen,
        .sec = k + klen,
        .slen = slen,
        .head = k + klen + slen, /* head_inline(e) */
        .hlen = hlen,
        .body_len = body_len,
        .keep_until = keep_until,
        .serial = atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed),
        .bclass = cls,
        .blocks = from,
    };
    memcpy(k, key, klen);
    if (slen) /* most entries have no secondary key: no call for nothing */
        memcpy(k + klen, sec, slen);
    if (head)
        memcpy(e->head, head, hlen);
    if (fid_now)
        e->fid = lp__cache_fid(key, klen, sec, slen);
    if (body_cap) {
        lp_cache_chunk_t *c = (lp_cache_chunk_t *)((char *)e + at);
        *c = (lp_cache_chunk_t){NULL, 0, body_cap};
        e->chunks = c;
        e->body_inline = 1;
    } else if (chunks) {
        e->resident = 1;
        e->chunks = chunks;
        for (lp_cache_chunk_t *c = chunks; c; c = c->next)
            e->cost += sizeof(*c) + c->cap;
        e->cost += lp_cache_entry_cost(klen, slen, hlen, 0);
    } else {
        /* An empty body needs no load. A stub's cost is counted in the index (stub_cost). */
        e->resident = body_len == 0;
        e->cost = lp_cache_entry_cost(klen, slen, hlen, 0);
    }
    return e;
}

lp_cache_entry_t *lp__cache_entry_make(const char *key, size_t klen, const char *sec, size_t slen,
                                       const char *head, size_t hlen, uint64_t body_len,
                                       double keep_until, lp_cache_chunk_t *chunks, uint64_t hash,
                                       int fid_now, size_t body_cap)
{
    return entry_make(key, klen, sec, slen, head, hlen, body_len, keep_until, chunks, hash, fid_now,
                      body_cap, NULL);
}

/* A fill's entry gets its file id when it is first written (most zones have no disk): 0 until
 * then (an id that is 0 is only computed again). */
static void with_fid(lp_cache_entry_t *e)
{
    if (!e->fid)
        e->fid = lp__cache_fid(e->key, e->klen, e->sec, e->slen);
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

int lp_cache_entry_resident(const lp_cache_entry_t *e)
{
    return e->resident;
}

int lp_cache_entry_same(const lp_cache_entry_t *e, const char *key, size_t klen, const char *sec,
                        size_t slen)
{
    return e->klen == klen && e->slen == slen && memcmp(e->key, key, klen) == 0 &&
           memcmp(e->sec, sec, slen) == 0;
}

/* Whether an entry holds a response, which a purge, `stored` and `entries` count: the cache
 * plugin also keeps a varying key's Vary marker (no secondary key, a head "V <the Vary
 * field>") and empty markers (a background refresh running) as entries. */
static int holds_response(const lp_cache_entry_t *e)
{
    if (!e->hlen)
        return 0;
    return !(e->slen == 0 && e->hlen >= 2 && e->head[0] == 'V' && e->head[1] == ' ');
}

/* Under the zone lock: e leaves the disk LRU and budget (its file is not deleted here). */
static void off_disk(lp_cache_zone_t *z, lp_cache_entry_t *e)
{
    if (!e->on_disk)
        return;
    lp_list_remove(&e->dlru);
    e->on_disk = 0;
    z->dused -= e->dsize;
    z->dentries--;
}

/* Whether an entry of n fields is counted in its zone's tally: one that every request has
 * room for, or that none can have room for, is not (LP_CACHE_ROOM_MIN, _MAX). */
static inline int room_counted(unsigned n)
{
    return n - LP_CACHE_ROOM_MIN <= LP_CACHE_ROOM_MAX - LP_CACHE_ROOM_MIN;
}

/* Under the zone lock: an entry of n fields is linked. The zone's most fields rises with it
 * at once (and what requests make room for: cache_room.c), before a request can find it. A
 * head wider than any request can be is not counted: no request makes room for it, and a
 * hit on it is a miss (lp_ffi_cache_get). */
static void room_add(lp_cache_zone_t *z, unsigned n)
{
    if (!room_counted(n))
        return;
    z->room_n[n]++;
    if (n > z->room_top) {
        __atomic_store_n(&z->room_top, n, __ATOMIC_SEQ_CST);
        lp_cache_room_note(n);
    }
}

/* Under the zone lock: an entry of n fields is unlinked. When it was the last of the zone's
 * most, the top falls to the next count held, and what requests make room for is counted
 * again (lp_cache_room_recount: later, off this lock). */
static void room_sub(lp_cache_zone_t *z, unsigned n)
{
    if (!room_counted(n) || --z->room_n[n] || n != z->room_top)
        return;
    unsigned t = n;
    while (t && !z->room_n[t])
        t--;
    __atomic_store_n(&z->room_top, t, __ATOMIC_SEQ_CST);
    lp_cache_room_fell();
}

unsigned lp__cache_zone_room_top(const lp_cache_zone_t *z)
{
    return __atomic_load_n(&z->room_top, __ATOMIC_SEQ_CST);
}

/* Under the zone lock: takes e out of the table and the LRUs, uncharges it, and puts it on
 * *dead (its zone reference is dropped by the caller after the unlock). Its file, if any,
 * is queued for deletion. */
static void unlink_entry(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_entry_t **dead)
{
    lp_cache_entry_t **pp = &z->buckets[e->hash & (z->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    if (e->resident) {
        lp_list_remove(&e->lru);
        z->used -= e->cost;
        z->nentries--;
        z->nmarkers -= e->marker;
    } else {
        z->nstubs--;
        z->sbytes -= stub_cost(e);
    }
    if (e->on_disk) {
        off_disk(z, e);
        if (z->disk)
            lp_cdisk_queue_delete(z->disk, e->fid);
    }
    room_sub(z, lp__cache_entry_fields(e));
    e->linked = 0;
    e->hnext = *dead;
    *dead = e;
}

void lp__cache_unlink(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_entry_t **dead)
{
    unlink_entry(z, e, dead);
}

static void drop_dead(lp_cache_entry_t *dead)
{
    while (dead) {
        lp_cache_entry_t *n = dead->hnext;
        lp_cache_entry_unref(dead);
        dead = n;
    }
}

void lp__cache_drop_dead(lp_cache_entry_t *dead)
{
    drop_dead(dead);
}

static void maybe_grow(lp_cache_zone_t *z);

/* Before e is linked: whether it is a marker (entry.marker). Every marker has an empty body:
 * a response with one (most) costs one test. */
static inline void set_marker(lp_cache_entry_t *e)
{
    e->marker = (uint8_t)(e->body_len == 0 && !holds_response(e));
}

HOT void link_entry(lp_cache_zone_t *z, lp_cache_entry_t *e)
{
    maybe_grow(z);
    lp_cache_entry_t **slot = &z->buckets[e->hash & (z->nbuckets - 1)];
    e->hnext = *slot;
    *slot = e;
    if (e->resident) {
        lp_list_insert_head(&z->lru, &e->lru);
        z->used += e->cost;
        z->nentries++;
        z->nmarkers += e->marker; /* set_marker's */
    } else {
        z->nstubs++;
        z->sbytes += stub_cost(e);
    }
    room_add(z, lp__cache_entry_fields(e));
    e->linked = 1;
    e->seq = ++z->seq;
}

void lp__cache_link(lp_cache_zone_t *z, lp_cache_entry_t *e)
{
    set_marker(e);
    link_entry(z, e);
}

void lp__cache_replace(lp_cache_zone_t *z, lp_cache_entry_t *old, lp_cache_entry_t *e,
                       lp_cache_entry_t **dead)
{
    lp_cache_entry_t **pp = &z->buckets[old->hash & (z->nbuckets - 1)];
    while (*pp != old)
        pp = &(*pp)->hnext;
    *pp = e;
    e->hnext = old->hnext;
    e->linked = 1;
    e->seq = old->seq;
    e->fid = old->fid;
    e->stamp = old->stamp;
    if (old->on_disk) {
        /* e takes old's place on the disk LRU: the file is the same */
        e->on_disk = 1;
        e->dsize = old->dsize;
        e->dlru.prev = old->dlru.prev;
        e->dlru.next = old->dlru.next;
        e->dlru.prev->next = &e->dlru;
        e->dlru.next->prev = &e->dlru;
        old->on_disk = 0;
    }
    if (old->resident) {
        lp_list_remove(&old->lru);
        z->used -= old->cost;
        z->nentries--;
        z->nmarkers -= old->marker;
    } else {
        z->nstubs--;
        z->sbytes -= stub_cost(old);
    }
    old->linked = 0;
    set_marker(e);
    if (e->resident) {
        lp_list_insert_head(&z->lru, &e->lru);
        z->used += e->cost;
        z->nentries++;
        z->nmarkers += e->marker;
    } else {
        z->nstubs++;
        z->sbytes += stub_cost(e);
    }
    room_add(z, lp__cache_entry_fields(e));
    room_sub(z, lp__cache_entry_fields(old));
    old->hnext = *dead;
    *dead = old;
}

void lp__cache_on_disk(lp_cache_zone_t *z, lp_cache_entry_t *e, uint64_t size)
{
    if (e->on_disk) {
        z->dused = z->dused - e->dsize + size;
        lp_list_remove(&e->dlru);
    } else {
        e->on_disk = 1;
        z->dused += size;
        z->dentries++;
    }
    e->dsize = size;
    lp_list_insert_head(&z->dlru, &e->dlru);
}

/* Under the zone lock: a resident entry that is on disk leaves memory but stays in the index
 * as a disk-only entry (a copy of its key and head: the entry itself may be read by hits in
 * flight, and an entry's body never changes once linked). 0, or -1 when out of memory. */
static int demote(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_entry_t **dead)
{
    lp_cache_entry_t *s = lp__cache_stub_new(e->key, e->klen, e->sec, e->slen, e->head, e->hlen,
                                             e->body_len, e->keep_until, e->fid);
    if (!s)
        return -1;
    lp__cache_entry_set_fields(s, lp__cache_entry_fields(e));
    if (s->resident) { /* an empty body: nothing to gain */
        entry_free(s);
        return -1;
    }
    lp__cache_replace(z, e, s, dead);
    return 0;
}

/* Under the zone lock: the key index's bytes outside the entries' costs (its bucket array
 * and the disk-only entries), charged to the memory budget with `used` and `filling`. */
static size_t index_bytes(const lp_cache_zone_t *z)
{
    return z->nbuckets * sizeof(*z->buckets) + z->sbytes;
}

/* Under the zone lock: the memory the zone holds against its budget. */
static size_t mem_charged(const lp_cache_zone_t *z)
{
    return z->used + z->filling + index_bytes(z);
}

/* Under the zone lock: evicts from the memory LRU's tail until the zone's memory (`used`,
 * `filling` and the index) fits the budget (an entry on disk stays there, as a disk-only
 * entry), then disk-only entries from the disk LRU's tail while the index alone is over it
 * (their files go: the index is what finds them), then from the disk LRU's until the files
 * fit the disk budget. */
static void evict_over(lp_cache_zone_t *z, lp_cache_entry_t **dead)
{
    while (mem_charged(z) > z->capacity && !lp_list_empty(&z->lru)) {
        lp_cache_entry_t *e = LP_CONTAINER_OF(z->lru.prev, lp_cache_entry_t, lru);
        if (!(e->on_disk || e->writing) || demote(z, e, dead))
            unlink_entry(z, e, dead);
        atomic_fetch_add_explicit(&z->counts[LP_CACHE_C_EVICTED], 1, memory_order_relaxed);
    }
    /* The memory LRU is empty: every linked entry on the disk LRU is disk-only. Dropping
     * them helps only when the index is what is over: never for fills in flight that do not
     * fit the budget anyway (they would wipe the disk tier and then fail). */
    while (mem_charged(z) > z->capacity && z->used + z->filling <= z->capacity &&
           !lp_list_empty(&z->dlru)) {
        lp_cache_entry_t *e = LP_CONTAINER_OF(z->dlru.prev, lp_cache_entry_t, dlru);
        unlink_entry(z, e, dead);
        atomic_fetch_add_explicit(&z->counts[LP_CACHE_C_EVICTED], 1, memory_order_relaxed);
    }
    while (z->dused > z->dcapacity && !lp_list_empty(&z->dlru)) {
        lp_cache_entry_t *e = LP_CONTAINER_OF(z->dlru.prev, lp_cache_entry_t, dlru);
        if (e->resident) {
            off_disk(z, e); /* stays in memory; its file goes */
            if (z->disk)
                lp_cdisk_queue_delete(z->disk, e->fid);
        } else {
            unlink_entry(z, e, dead);
        }
        atomic_fetch_add_explicit(&z->counts[LP_CACHE_C_DISK_EVICTED], 1, memory_order_relaxed);
    }
}

/* evict_over when something is over (its every loop needs one budget over): a commit that
 * fits, the common case, costs two tests. */
static inline void evict(lp_cache_zone_t *z, lp_cache_entry_t **dead)
{
    if (mem_charged(z) > z->capacity || z->dused > z->dcapacity)
        evict_over(z, dead);
}

void lp__cache_evict(lp_cache_zone_t *z, lp_cache_entry_t **dead)
{
    evict(z, dead);
}

/* Under the zone lock: the table remade with n buckets. Failure keeps the old one. */
static void rebuild(lp_cache_zone_t *z, size_t n)
{
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

/* Under the zone lock: doubles the table when chains grow long. */
static void maybe_grow(lp_cache_zone_t *z)
{
    if (z->nentries + z->nstubs >= z->nbuckets * 2)
        rebuild(z, z->nbuckets * 2);
}

/* Under the zone lock: the table made smaller, to `want` buckets or as few over it as its
 * entries need (maybe_grow's load: two a bucket). */
static void shrink_table(lp_cache_zone_t *z, size_t want)
{
    size_t m = want;
    while (m < z->nbuckets && z->nentries + z->nstubs >= m * 2)
        m *= 2;
    if (m < z->nbuckets)
        rebuild(z, m);
}

/* The table a budget starts with: a bucket per 16 KiB of it (0.05 % of the budget), within
 * 64 and 2^22 buckets. A filling cache doubles it less often, each doubling a walk of every
 * entry under the zone's lock, which every worker waits for. */
static size_t buckets_for(size_t memory)
{
    size_t n = 64;
    while (n < (1u << 22) && n * 2 <= memory / (16 * 1024))
        n *= 2;
    return n;
}

static int same_key(const lp_cache_entry_t *e, uint64_t h, const char *key, size_t klen)
{
    return e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0;
}

lp_cache_entry_t *lp__cache_find(lp_cache_zone_t *z, uint64_t h, const char *key, size_t klen,
                                 const char *sec, size_t slen)
{
    for (lp_cache_entry_t *e = z->buckets[h & (z->nbuckets - 1)]; e; e = e->hnext)
        if (same_key(e, h, key, klen) && e->slen == slen && memcmp(e->sec, sec, slen) == 0)
            return e;
    return NULL;
}

/* ---- zones and the registry ---- */

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static lp_cache_zone_t *reg_head; /* zones some config references (refs) */

/* The slab bytes a zone's entry blocks may take (cache_blocks.h): a quarter of its budget,
 * so that free blocks of classes no longer asked for hold at most that beside `bytes`. */
#define BLOCKS_OF(memory) ((memory) / 4)

static lp_cache_zone_t *zone_new(const char *name, size_t memory, size_t max_object)
{
    lp_cache_zone_t *z = calloc(1, sizeof(*z));
    if (!z)
        return NULL;
    z->name = strdup(name);
    z->nbuckets = buckets_for(memory);
    z->buckets = calloc(z->nbuckets, sizeof(*z->buckets));
    z->room_n = calloc(LP_CACHE_ROOM_MAX + 1, sizeof(*z->room_n));
    if (!z->name || !z->buckets || !z->room_n) {
        free(z->name);
        free(z->buckets);
        free(z->room_n);
        free(z);
        return NULL;
    }
    z->capacity = memory;
    __atomic_store_n(&z->max_object, max_object, __ATOMIC_RELAXED);
    z->blocks = lp_cache_blocks_new(BLOCKS_OF(memory)); /* NULL: entries are malloc's */
    lp_mutex_init(&z->lock);
    lp_list_init(&z->lru);
    lp_list_init(&z->dlru);
    return z;
}

static void zone_free(lp_cache_zone_t *z)
{
    /* The disk thread first (its queued writes finish); then the table goes without a file
     * being deleted: the files are the next start's cache. */
    lp_cdisk_stop(z->disk);
    z->disk = NULL;
    lp_cache_entry_t *dead = NULL;
    for (size_t i = 0; i < z->nbuckets; i++)
        while (z->buckets[i])
            unlink_entry(z, z->buckets[i], &dead);
    drop_dead(dead);
    lp_cache_blocks_orphan(z->blocks); /* freed with the last entry still read elsewhere */
    free(z->room_n);
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
        atomic_fetch_add(&z->refs, 1);
    } else if ((z = zone_new(name, memory, max_object))) {
        atomic_init(&z->refs, 1);
        z->reg_next = reg_head;
        reg_head = z;
    }
    pthread_mutex_unlock(&reg_lock);
    return z;
}

/* The caller holds a reference (or borrows a zone someone's reference keeps): refs >= 1, so
 * the registry lock is not needed (every fill takes one). */
static void zone_ref(lp_cache_zone_t *z)
{
    atomic_fetch_add(&z->refs, 1);
}

void lp_cache_zone_hold(lp_cache_zone_t *z)
{
    zone_ref(z);
}

void lp_cache_zone_release(lp_cache_zone_t *z)
{
    if (!z)
        return;
    /* Not the last: no lock (another reference keeps the zone and its registry place). */
    int n = atomic_load(&z->refs);
    while (n > 1)
        if (atomic_compare_exchange_weak(&z->refs, &n, n - 1))
            return;
    pthread_mutex_lock(&reg_lock);
    int last = atomic_fetch_sub(&z->refs, 1) == 1;
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

uint64_t lp_cache_zone_max_object(lp_cache_zone_t *z)
{
    return lp__cache_max_object(z);
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
    lp_mutex_lock(&z->lock);
    z->capacity = memory;
    __atomic_store_n(&z->max_object, max_object, __ATOMIC_RELAXED);
    if (z->blocks)
        lp_cache_blocks_limit(z->blocks, BLOCKS_OF(memory));
    /* The table counts in the budget (index_bytes): one sized for a budget since lowered
     * would leave no room for entries. Made as small as the entries allow before the
     * eviction (which it would otherwise drive), and again after it. */
    shrink_table(z, buckets_for(memory));
    evict(z, &dead);
    shrink_table(z, buckets_for(memory));
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
}

int lp_cache_zone_set_disk(lp_cache_zone_t *z, const char *path, size_t size)
{
    lp_mutex_lock(&z->lock);
    lp_cdisk_t *d = z->disk;
    lp_mutex_unlock(&z->lock);
    if (d) {
        if (strcmp(lp_cdisk_root(d), path) != 0)
            lp_log(LP_LOG_WARN,
                   "cache zone %s: its disk path stays %s until a restart (the reload asks for "
                   "%s)",
                   z->name, lp_cdisk_root(d), path);
        return 0;
    }
    /* Started here, once per zone: the zone may be shared already (a reload giving a memory
     * zone a disk), so z->disk is set under the lock, where every reader takes it. */
    /* Stamps name one write of a file, and the files outlive the process: a new process's
     * stamps begin past the last one's (the time in ns: 10^9 commits a second would be
     * needed to catch up with the clock), or an entry stored again could carry the stamp of
     * its key's file from the last run and take that old content for its own. The scan
     * raises them past every stamp it finds too (a clock set back). */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t base = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    lp_mutex_lock(&z->lock);
    z->dcapacity = size;
    if (z->stamps < base)
        z->stamps = base;
    lp_mutex_unlock(&z->lock);
    d = lp_cdisk_start(z, path); /* sets z->disk before its thread runs */
    return d ? 0 : -1;
}

void lp_cache_zone_resize_disk(lp_cache_zone_t *z, size_t size)
{
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    if (z->disk) {
        z->dcapacity = size;
        evict(z, &dead);
    }
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
}

void lp_cache_zone_stats(lp_cache_zone_t *z, lp_cache_stats_t *out)
{
    lp_mutex_lock(&z->lock);
    out->entries = z->nentries - z->nmarkers; /* responses: purge's count */
    out->bytes = z->used;
    out->capacity = z->capacity;
    out->max_object = __atomic_load_n(&z->max_object, __ATOMIC_RELAXED);
    out->disk = z->disk != NULL;
    out->disk_entries = z->dentries;
    out->disk_bytes = z->dused;
    out->disk_capacity = z->dcapacity;
    out->disk_loading = z->disk && !lp_cdisk_loaded(z->disk);
    out->stubs = z->nstubs;
    out->index_bytes = index_bytes(z);
    lp_mutex_unlock(&z->lock);
    for (int i = 0; i < LP_CACHE_C_N; i++)
        out->counts[i] = atomic_load_explicit(&z->counts[i], memory_order_relaxed);
}

void lp_cache_count(lp_cache_zone_t *z, int what)
{
    if (what >= 0 && what < LP_CACHE_C_N)
        atomic_fetch_add_explicit(&z->counts[what], 1, memory_order_relaxed);
}

/* ---- lookups ---- */

/* Under the zone lock: lp_cache_get's lookup (h: the key's hash). */
HOT lp_cache_entry_t *get_locked(lp_cache_zone_t *z, uint64_t h, const char *key, size_t klen,
                                 const char *sec, size_t slen, double now, lp_cache_entry_t **dead)
{
    lp_cache_entry_t *found = NULL;
    for (lp_cache_entry_t *e = z->buckets[h & (z->nbuckets - 1)]; e; e = e->hnext) {
        if (!same_key(e, h, key, klen) || e->slen != slen || memcmp(e->sec, sec, slen) != 0)
            continue;
        if (e->keep_until < now) {
            unlink_entry(z, e, dead);
        } else if (!e->resident && !e->on_disk) {
            /* pushed out of memory before its file was written: a miss until it is */
        } else {
            found = lp_cache_entry_ref(e);
            e->seq = ++z->seq; /* its variants' use order (a Vary key's drop) */
            if (e->resident) {
                lp_list_remove(&e->lru);
                lp_list_insert_head(&z->lru, &e->lru);
            }
            if (e->on_disk) {
                lp_list_remove(&e->dlru);
                lp_list_insert_head(&z->dlru, &e->dlru);
            }
        }
        break;
    }
    return found;
}

lp_cache_entry_t *lp_cache_get(lp_cache_zone_t *z, const char *key, size_t klen, const char *sec,
                               size_t slen, double now)
{
    uint64_t h = lp_hash64(key, klen);
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    lp_cache_entry_t *found = get_locked(z, h, key, klen, sec, slen, now, &dead);
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
    return found;
}

size_t lp_cache_entry_plain_head(lp_cache_zone_t *z, const lp_cache_entry_t *e, char *out,
                                 size_t room, uint64_t *serial)
{
    lp_mutex_lock(&z->lock);
    size_t n = __atomic_load_n(&e->plain_head, __ATOMIC_RELAXED) ? e->hlen : 0;
    if (n && n <= room)
        memcpy(out, e->head, n);
    *serial = lp_cache_entry_serial(e);
    lp_mutex_unlock(&z->lock);
    return n;
}

size_t lp_cache_entry_head(lp_cache_zone_t *z, const lp_cache_entry_t *e, char *out, size_t room)
{
    lp_mutex_lock(&z->lock);
    size_t n = e->hlen;
    if (n <= room)
        memcpy(out, e->head, n);
    lp_mutex_unlock(&z->lock);
    return n;
}

int lp_cache_entry_set_head(lp_cache_zone_t *z, lp_cache_entry_t *e, const char *head, size_t hlen,
                            size_t nfields, double keep_until)
{
    char *h = malloc(hlen ? hlen : 1);
    if (!h)
        return -1;
    memcpy(h, head, hlen);
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    char *old = e->head;
    int old_own = old != head_inline(e); /* the first head stays in e's block */
    size_t freed = old_own ? e->hlen : 0;
    e->cost = e->cost - freed + hlen;
    if (e->linked && e->resident)
        z->used = z->used - freed + hlen;
    else if (e->linked)
        /* A disk-only entry (a streamed hit revalidated): the index holds its head. Its file
         * keeps the old head (its body is not in memory to write it again): after a restart
         * the entry is revalidated once more. */
        z->sbytes = z->sbytes - freed + hlen;
    e->head = h;
    e->hlen = hlen;
    /* the plugin's head now (a revalidation's), not the engine's; read without the lock */
    __atomic_store_n(&e->plain_head, 0, __ATOMIC_RELAXED);
    /* The memos are of older heads now: gone at once when nobody else holds the entry (the
     * caller holds one reference), else when the next memo finds it so, or with the entry. */
    lp_cache_served_t *memos = atomic_load_explicit(&e->served, memory_order_relaxed);
    if (memos && served_alone(e)) {
        atomic_store_explicit(&e->served, NULL, memory_order_relaxed);
        served_free(z, e, memos);
    }
    if (e->linked) {
        unsigned was = lp__cache_entry_fields(e);
        lp__cache_entry_set_fields(e, nfields);
        room_add(z, lp__cache_entry_fields(e));
        room_sub(z, was);
    } else {
        lp__cache_entry_set_fields(e, nfields);
    }
    e->keep_until = keep_until;
    atomic_store_explicit(&e->serial,
                          atomic_fetch_add_explicit(&next_serial, 1, memory_order_relaxed),
                          memory_order_relaxed);
    if (e->linked && e->resident && z->disk) {
        e->stamp = ++z->stamps; /* the file is written again, with the new head */
        with_fid(e);
        lp_cdisk_queue_write(z->disk, e);
    }
    evict(z, &dead);
    lp_mutex_unlock(&z->lock);
    if (old_own)
        free(old);
    drop_dead(dead);
    return 0;
}

/* ---- purge ---- */

size_t lp_cache_purge(lp_cache_zone_t *z, int mode, const char *key, size_t klen)
{
    size_t n = 0;
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    if (mode == LP_CACHE_PURGE_KEY) {
        uint64_t h = lp_hash64(key, klen);
        lp_cache_entry_t *e = z->buckets[h & (z->nbuckets - 1)];
        while (e) {
            lp_cache_entry_t *next = e->hnext;
            if (same_key(e, h, key, klen)) {
                n += (size_t)holds_response(e);
                unlink_entry(z, e, &dead);
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
                    n += (size_t)holds_response(e);
                    unlink_entry(z, e, &dead);
                }
                e = next;
            }
        }
    }
    if (z->disk && !lp_cdisk_loaded(z->disk))
        lp_cdisk_queue_purge(z->disk, mode, key, klen); /* again once the scan indexed all */
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
    lp_cache_room_recount(); /* the widest entries may have gone: now rather than at a tick */
    return n;
}

void lp_cache_remove(lp_cache_zone_t *z, const char *key, size_t klen, const char *sec, size_t slen)
{
    uint64_t h = lp_hash64(key, klen);
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    lp_cache_entry_t *e = lp__cache_find(z, h, key, klen, sec, slen);
    if (e)
        unlink_entry(z, e, &dead);
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
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
HOT void lock_drop(lp_cache_zone_t *z, lp_cache_fill_t *f)
{
    if (!f->locked)
        return;
    lp_cache_fill_t **pp = lock_slot(z, f->lhash);
    while (*pp != f)
        pp = &(*pp)->lnext;
    *pp = f->lnext;
    f->locked = 0;
    __atomic_store_n(&f->nearly, 0, __ATOMIC_RELAXED);
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
    int r = 0;
    w->reader = 0;
    lp_mutex_lock(&z->lock);
    lp_cache_fill_t *f = lock_find(z, h, key, klen);
    if (f) {
        r = 1;
        if (w->early) {
            /* Counted first, then `pub` tested (both sequentially consistent): the filler
             * stores `pub`, then tests the count, so one of the two sees the other. */
            __atomic_store_n(&f->nearly, f->nearly + 1, __ATOMIC_SEQ_CST);
            if (__atomic_load_n(&f->pub, __ATOMIC_SEQ_CST)) {
                __atomic_store_n(&f->nearly, f->nearly - 1, __ATOMIC_RELAXED);
                r = 2; /* ready already: read it as it fills */
            }
        }
        if (r == 1) {
            w->holder = f;
            w->next = f->waiters;
            f->waiters = w;
        }
    }
    lp_mutex_unlock(&z->lock);
    return r;
}

int lp_cache_wait_cancel(lp_cache_zone_t *z, lp_cache_waiter_t *w)
{
    lp_mutex_lock(&z->lock);
    lp_cache_fill_t *f = w->holder;
    if (f) {
        lp_cache_waiter_t **pp = w->reader ? &f->readers : &f->waiters;
        while (*pp != w)
            pp = &(*pp)->next;
        *pp = w->next;
        w->holder = NULL;
        if (w->reader)
            __atomic_store_n(&f->nreaders, f->nreaders - 1, __ATOMIC_RELAXED);
        else if (w->early)
            __atomic_store_n(&f->nearly, f->nearly - 1, __ATOMIC_RELAXED);
    }
    lp_mutex_unlock(&z->lock);
    return f != NULL;
}

int64_t lp_cache_wait_quiet(lp_cache_zone_t *z, lp_cache_waiter_t *w, uint64_t now_ms,
                            uint64_t window_ms)
{
    int64_t left = -1;
    lp_mutex_lock(&z->lock);
    lp_cache_fill_t *f = w->holder;
    if (f) {
        uint64_t p = atomic_load_explicit(&f->progress, memory_order_relaxed);
        if (p && now_ms < p + window_ms) {
            left = (int64_t)(p + window_ms - now_ms);
        } else {
            lp_cache_waiter_t **pp = &f->waiters;
            while (*pp != w)
                pp = &(*pp)->next;
            *pp = w->next;
            w->holder = NULL;
            if (w->early) /* as lp_cache_wait_cancel: the fill's head wakes none for it */
                __atomic_store_n(&f->nearly, f->nearly - 1, __ATOMIC_RELAXED);
            left = 0;
        }
    }
    lp_mutex_unlock(&z->lock);
    return left;
}

/* A lock's block (a fill with room for a key of up to SPARE_KEY bytes) kept by the thread
 * that freed it, for its next lock: a miss takes a lock per request, and a malloc and a free
 * cost more than the rest of taking it. Owned by the thread; freed when the thread ends (a
 * thread-specific key's destructor, registered with the first). */
#define SPARE_KEY 256
static _Thread_local lp_cache_fill_t *spare;
static _Thread_local uint8_t spare_registered;
static pthread_key_t spare_key;
static pthread_once_t spare_once = PTHREAD_ONCE_INIT;

static void spare_free(void *unused)
{
    (void)unused;
    free(spare);
    spare = NULL;
}

static void spare_key_make(void)
{
    pthread_key_create(&spare_key, spare_free);
}

/* f's block goes (kept as the thread's spare when it is a lock's and none is kept). */
static void fill_block_free(lp_cache_fill_t *f)
{
    if (spare || f->lroom != SPARE_KEY) {
        free(f);
        return;
    }
    if (!spare_registered) {
        pthread_once(&spare_once, spare_key_make);
        spare_registered = pthread_setspecific(spare_key, &spare) == 0;
        if (!spare_registered) {
            free(f); /* nothing would free it with the thread */
            return;
        }
    }
    spare = f;
}

/* A fill for key's lock, not taken yet (lock_locked takes it), or NULL (out of memory, or
 * too long a key). */
HOT lp_cache_fill_t *lock_new(const char *key, size_t klen, uint64_t h, double now)
{
    if (klen > LP_CACHE_MAX_KEY)
        return NULL;
    size_t room = klen > SPARE_KEY ? klen : SPARE_KEY;
    lp_cache_fill_t *f = room == SPARE_KEY && spare ? spare : malloc(sizeof(*f) + room);
    if (!f)
        return NULL;
    if (f == spare)
        spare = NULL;
    *f = (lp_cache_fill_t){
        .lkey = (char *)(f + 1), .lklen = klen, .lroom = room, .lhash = h, .locked_at = now};
    memcpy(f->lkey, key, klen);
    return f;
}

/* CLOCK_MONOTONIC in ms: the clock of the workers' loops (uv_now), whose stamps
 * lp__cache_fill_progress keeps. */
static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Under the zone lock: whether f made progress within the last window_ms (a clock read only
 * for a fill that made some: a lock past its timeout). */
static int lately(lp_cache_fill_t *f, uint64_t window_ms)
{
    uint64_t p = atomic_load_explicit(&f->progress, memory_order_relaxed);
    return p && mono_ms() < p + window_ms;
}

/* Under the zone lock: f (lock_new's) takes its key's lock: 0; else -1 (*busy 1 when a
 * younger fill holds it), and the caller frees f. */
HOT int lock_locked(lp_cache_zone_t *z, lp_cache_fill_t *f, double lock_timeout, int readback,
                    int *busy)
{
    lp_cache_fill_t *holder = lock_find(z, f->lhash, f->lkey, f->lklen);
    if (holder && readback && !holder->readback)
        return -1; /* a fill going upstream (perhaps for another variant): a read-back
                      neither waits for it nor takes its lock over; it reads the file
                      without the lock */
    if (holder && (f->locked_at - holder->locked_at < lock_timeout ||
                   lately(holder, (uint64_t)(lock_timeout * 1000.0)))) {
        *busy = 1;
        return -1;
    }
    if (holder)
        lock_drop(z, holder); /* taken over: its fill went quiet past the timeout */
    lp_cache_fill_t **slot = lock_slot(z, f->lhash);
    f->lnext = *slot;
    *slot = f;
    f->locked = 1;
    f->readback = (uint8_t)readback;
    return 0;
}

/* Under the zone lock, for f that just took its lock: the room a small body (one in its
 * entry's block, lp_cache_fill_start) is charged, charged now while the zone has it free, so
 * that fill_start need not take the zone's lock a second time to charge it. A zone without
 * that room free gets no reservation (nothing is evicted for a response that may never be
 * stored): fill_start charges the body itself then, evicting as it must. The reservation
 * stays with the fill (counted in `filling`) until its commit or end gives it back; the
 * fill's first chunk takes it (fill_take), so a larger body holds no more than its chunks. */
#define RESERVE (sizeof(lp_cache_chunk_t) + LP_CACHE_INLINE_BODY)
static void lock_reserve(lp_cache_zone_t *z, lp_cache_fill_t *f)
{
    if (mem_charged(z) + RESERVE <= z->capacity) {
        z->filling += RESERVE;
        f->charged = RESERVE;
        f->reserve_left = RESERVE;
    }
}

/* f took its lock: it holds a zone reference from now on. */
static lp_cache_fill_t *lock_held(lp_cache_zone_t *z, lp_cache_fill_t *f)
{
    zone_ref(z);
    f->zone = z;
    f->zref = 1;
    return f;
}

static lp_cache_fill_t *lock_take(lp_cache_zone_t *z, const char *key, size_t klen,
                                  double lock_timeout, double now, int readback, int *busy)
{
    *busy = 0;
    lp_cache_fill_t *f = lock_new(key, klen, lp_hash64(key, klen), now);
    if (!f)
        return NULL;
    lp_mutex_lock(&z->lock);
    int rc = lock_locked(z, f, lock_timeout, readback, busy);
    lp_mutex_unlock(&z->lock);
    if (rc) {
        fill_block_free(f);
        return NULL;
    }
    return lock_held(z, f);
}

lp_cache_entry_t *lp_cache_get_or_lock(lp_cache_zone_t *z, const char *key, size_t klen, double now,
                                       double lock_timeout, lp_cache_fill_t **fill, int *busy)
{
    assert(!*fill); /* out only: a fill there would leak (cache_store.h) */
    *fill = NULL;
    *busy = 0;
    uint64_t h = lp_hash64(key, klen);
    lp_cache_entry_t *dead = NULL;
    /* The lock's fill is made under the zone lock, on a miss only (a hit costs nothing more
     * than lp_cache_get). */
    lp_mutex_lock(&z->lock);
    lp_cache_entry_t *found = get_locked(z, h, key, klen, "", 0, now, &dead);
    lp_cache_fill_t *f = NULL;
    if (!found && lock_timeout >= 0 && (f = lock_new(key, klen, h, now))) {
        if (lock_locked(z, f, lock_timeout, 0, busy)) {
            fill_block_free(f); /* under the zone lock: only the thread's own spare is touched */
            f = NULL;
        } else {
            lock_reserve(z, f);
        }
    }
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
    if (f)
        f->zone = z; /* borrowed: the caller holds z while the fill lives (cache_store.h) */
    *fill = f;
    return found;
}

lp_cache_fill_t *lp_cache_lock(lp_cache_zone_t *z, const char *key, size_t klen,
                               double lock_timeout, double now, int *busy)
{
    return lock_take(z, key, klen, lock_timeout, now, 0, busy);
}

lp_cache_fill_t *lp_cache_lock_readback(lp_cache_zone_t *z, const char *key, size_t klen,
                                        double lock_timeout, double now, int *busy)
{
    return lock_take(z, key, klen, lock_timeout, now, 1, busy);
}

int lp_cache_locked(lp_cache_zone_t *z, const char *key, size_t klen)
{
    uint64_t h = lp_hash64(key, klen);
    lp_mutex_lock(&z->lock);
    int r = lock_find(z, h, key, klen) != NULL;
    lp_mutex_unlock(&z->lock);
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

/* Under the zone lock: gives back what the fill's chunks were charged. */
static void fill_uncharge(lp_cache_fill_t *f)
{
    f->zone->filling -= f->charged;
    f->charged = 0;
    f->reserve_left = 0;
}

/* Charges a chunk of f's to `filling` before it is taken: older entries make room; -1 when
 * the fills alone would hold the budget (the charge stays with f, given back when it ends). */
static int fill_charge(lp_cache_fill_t *f, size_t charge)
{
    lp_cache_zone_t *z = f->zone;
    lp_cache_entry_t *dead = NULL;
    lp_mutex_lock(&z->lock);
    z->filling += charge;
    f->charged += charge;
    evict(z, &dead);
    int full = mem_charged(z) > z->capacity;
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
    return full ? -1 : 0;
}

/* need bytes of a chunk of f's: from the lock's reservation while it lasts (no zone lock),
 * the rest charged. */
static int fill_take(lp_cache_fill_t *f, size_t need)
{
    if (f->reserve_left >= need) {
        f->reserve_left -= need;
        return 0;
    }
    need -= f->reserve_left;
    f->reserve_left = 0;
    return fill_charge(f, need);
}

lp_cache_fill_t *lp_cache_fill_start(lp_cache_zone_t *z, lp_cache_fill_t *fill, const char *key,
                                     size_t klen, const char *sec, size_t slen, const char *head,
                                     size_t hlen, double keep_until, uint64_t size_hint)
{
    if (klen > LP_CACHE_MAX_KEY || slen > LP_CACHE_MAX_KEY ||
        size_hint > __atomic_load_n(&z->max_object, __ATOMIC_RELAXED) ||
        (fill && (fill->zone != z || fill->started))) {
        /* Refused by its Content-Length: abandoned at once, as one going over it later is. */
        if (size_hint > __atomic_load_n(&z->max_object, __ATOMIC_RELAXED))
            lp_cache_count(z, LP_CACHE_C_ABANDONED);
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
        f->zref = 1;
    }
    f->started = 1;
    /* refs 1: the zone's, once linked. Not resident until commit: its chunks are charged to
     * `filling` as they come (a small body's at once, below), the rest when it is linked. */
    /* The hash of the key its lock holds, when it is this key; the file id when written. */
    uint64_t hash =
        f->lkey && f->lklen == klen && (f->lkey == key || memcmp(f->lkey, key, klen) == 0)
            ? f->lhash
            : lp_hash64(key, klen);
    /* A body of a known length up to LP_CACHE_INLINE_BODY comes in the entry's block: its
     * chunk is charged to `filling` here (or was, by the lock's reservation: lock_reserve), as
     * lp_cache_fill_append charges the chunks it takes (many small fills in flight hold memory
     * too), and moves into `used` at commit. */
    size_t body_cap = size_hint && size_hint <= LP_CACHE_INLINE_BODY ? (size_t)size_hint : 0;
    lp_cache_entry_t *e = entry_make(key, klen, sec, slen, head, hlen, 0, keep_until, NULL, hash, 0,
                                     body_cap, z->blocks);
    if (!e) {
        lp_cache_fill_abandon(f);
        return NULL;
    }
    e->resident = 0;
    e->cost = body_cap ? sizeof(lp_cache_chunk_t) + body_cap : 0;
    f->e = e;
    f->tail = e->chunks;
    f->hint = size_hint;
    if (body_cap && fill_take(f, e->cost)) {
        lp_cache_fill_abandon(f);
        return NULL;
    }
    return f;
}

char *lp_cache_fill_head(lp_cache_fill_t *f)
{
    return lp__cache_fill_head(f);
}

void lp_cache_fill_fields(lp_cache_fill_t *f, size_t nfields)
{
    if (f->e)
        lp__cache_entry_set_fields(f->e, nfields);
}

int lp_cache_fill_active(const lp_cache_fill_t *f)
{
    return lp__cache_fill_active(f);
}

int lp_cache_fill_key(const lp_cache_fill_t *f, const char **key, size_t *klen)
{
    return lp__cache_fill_key(f, key, klen);
}

/* ---- reading a fill's entry as it fills ---- */

/* Under the zone lock: the fill's readers hear of it (each once: taken out as notified). */
static void readers_notify(lp_cache_fill_t *f)
{
    lp_cache_waiter_t *w = f->readers;
    f->readers = NULL;
    __atomic_store_n(&f->nreaders, 0, __ATOMIC_RELAXED);
    while (w) {
        lp_cache_waiter_t *next = w->next;
        w->holder = NULL;
        w->next = NULL;
        w->notify(w); /* hands w over to its owner */
        w = next;
    }
}

/* Under the zone lock: a published fill ends (state COMPLETE at its commit, FAILED
 * otherwise): no reader attaches any more, and those attached hear of it. The entry's bytes
 * stay with its readers' references. */
static inline void fill_end(lp_cache_fill_t *f, lp_cache_entry_t *e, uint8_t state)
{
    if (!f->pub)
        return;
    __atomic_store_n(&f->pub, NULL, __ATOMIC_RELAXED);
    __atomic_store_n(&e->fstate, state, __ATOMIC_RELEASE);
    e->filler = NULL;
    if (f->readers)
        readers_notify(f);
}

void lp__cache_fill_tell(lp_cache_fill_t *f)
{
    lp_mutex_lock(&f->zone->lock);
    readers_notify(f);
    lp_mutex_unlock(&f->zone->lock);
}

void lp_cache_fill_ready(lp_cache_fill_t *f)
{
    lp__cache_fill_ready(f);
}

void lp__cache_fill_wake_early(lp_cache_fill_t *f)
{
    lp_mutex_lock(&f->zone->lock);
    for (lp_cache_waiter_t **pp = &f->waiters; *pp;) {
        lp_cache_waiter_t *w = *pp;
        if (!w->early) {
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        w->holder = NULL;
        w->next = NULL;
        w->notify(w);
    }
    __atomic_store_n(&f->nearly, 0, __ATOMIC_RELAXED);
    lp_mutex_unlock(&f->zone->lock);
}

lp_cache_entry_t *lp_cache_get_filling(lp_cache_zone_t *z, const char *key, size_t klen,
                                       const char *sec, size_t slen, uint64_t *hint)
{
    uint64_t h = lp_hash64(key, klen);
    lp_mutex_lock(&z->lock);
    lp_cache_fill_t *f = lock_find(z, h, key, klen);
    lp_cache_entry_t *e = f ? __atomic_load_n(&f->pub, __ATOMIC_ACQUIRE) : NULL;
    if (e && lp_cache_entry_same(e, key, klen, sec, slen)) {
        lp_cache_entry_ref(e); /* before the fill can drop its own: its end takes this lock */
        *hint = f->hint;
    } else {
        e = NULL;
    }
    lp_mutex_unlock(&z->lock);
    return e;
}

int lp_cache_fill_read(const lp_cache_entry_t *e, lp_cache_fill_cursor_t *cur, const char **p,
                       size_t *n)
{
    /* The state first: COMPLETE seen (acquire) means every length read after it is final. */
    uint8_t st = __atomic_load_n(&e->fstate, __ATOMIC_ACQUIRE);
    if (st == LP_CACHE_FILL_FAILED)
        return -1;
    if (!cur->c) {
        cur->c = __atomic_load_n(&e->chunks, __ATOMIC_ACQUIRE);
        cur->off = 0;
    }
    while (cur->c) {
        size_t len = __atomic_load_n(&cur->c->len, __ATOMIC_ACQUIRE);
        if (cur->off < len) {
            *p = cur->c->data + cur->off;
            *n = len - cur->off;
            cur->off = len;
            return 1;
        }
        const lp_cache_chunk_t *next = __atomic_load_n(&cur->c->next, __ATOMIC_ACQUIRE);
        if (!next)
            break;
        cur->c = next;
        cur->off = 0;
    }
    return st == LP_CACHE_FILL_COMPLETE ? 2 : 0;
}

int lp_cache_fill_watch(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_waiter_t *w)
{
    lp_mutex_lock(&z->lock);
    lp_cache_fill_t *f = e->filler;
    if (f) {
        w->reader = 1;
        w->holder = f;
        w->next = f->readers;
        f->readers = w;
        __atomic_store_n(&f->nreaders, f->nreaders + 1, __ATOMIC_RELAXED);
    }
    lp_mutex_unlock(&z->lock);
    /* Counted, then the caller reads again: against the filler's store of a chunk's length
     * and its test of the count (lp__cache_fill_publish), one of the two sees the other. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    return f != NULL;
}

/* The fill went over a limit: its bytes go now (but for its readers' references), and its
 * lock, so waiters stop waiting; its readers' answers are cut short. */
static void fill_kill(lp_cache_fill_t *f)
{
    lp_cache_entry_t *e = f->e;
    f->e = NULL;
    f->tail = NULL;
    f->dead = 1;
    lp_mutex_lock(&f->zone->lock);
    if (e)
        fill_end(f, e, LP_CACHE_FILL_FAILED);
    fill_uncharge(f);
    lock_drop(f->zone, f);
    lp_mutex_unlock(&f->zone->lock);
    lp_cache_entry_unref(e);
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
            lp_cache_chunk_t *c =
                fill_take(f, sizeof(lp_cache_chunk_t) + want) ? NULL : chunk_new(want);
            if (!c) {
                fill_kill(f);
                return -1;
            }
            /* Linked with release stores: a reader of the filling entry that finds it
             * finds it initialised. */
            if (t)
                __atomic_store_n(&t->next, c, __ATOMIC_RELEASE);
            else
                __atomic_store_n(&e->chunks, c, __ATOMIC_RELEASE);
            f->tail = t = c;
            e->cost += sizeof(*c) + want;
        }
        size_t n = t->cap - t->len < len ? t->cap - t->len : len;
        memcpy(t->data + t->len, data, n);
        e->body_len += n;
        data += n;
        len -= n;
        if (len)
            __atomic_store_n(&t->len, t->len + n, __ATOMIC_RELEASE);
        else
            lp__cache_fill_publish(f, t, n); /* and its readers hear of it */
    }
    return 0;
}

HOT void fill_free(lp_cache_fill_t *f)
{
    lp_cache_zone_t *z = f->zone;
    if (f->locked || f->charged || f->pub) {
        lp_mutex_lock(&z->lock);
        if (f->e)
            fill_end(f, f->e, LP_CACHE_FILL_FAILED);
        fill_uncharge(f);
        lock_drop(z, f);
        lp_mutex_unlock(&z->lock);
    }
    if (f->e)
        lp_cache_entry_unref(f->e); /* its readers may hold it still */
    int zref = f->zref;
    fill_block_free(f);
    if (zref)
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
    lp_mutex_lock(&z->lock);
    fill_uncharge(f);                       /* its chunks move into `used` with the entry's cost */
    fill_end(f, e, LP_CACHE_FILL_COMPLETE); /* its body is whole, linked or not */
    if (e->cost > z->capacity) {
        lp_mutex_unlock(&z->lock);
        lp_cache_entry_unref(e);
        lp_cache_count(z, LP_CACHE_C_ABANDONED);
        fill_free(f);
        return -1;
    }
    /* The entry it replaces, and the least recently used variant when the key has too many
     * (not the oldest: any client can make new variants, and the hottest one would go). */
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
    if (variants >= LP_CACHE_MAX_VARIANTS) {
        unlink_entry(z, oldest, &dead);
        lp__cache_count(z, LP_CACHE_C_VARIANTS_DROPPED);
    }
    e->resident = 1;
    set_marker(e);
    link_entry(z, e);
    if (z->disk) {
        /* Written as it completes (not when memory evicts it): a restart finds every entry,
         * and an eviction from memory only drops the body (demote). */
        e->stamp = ++z->stamps;
        with_fid(e);
        lp_cdisk_queue_write(z->disk, e);
    }
    evict(z, &dead);
    lock_drop(z, f);
    int marker = e->marker; /* e may go (evicted, replaced) once the lock is let go */
    lp_mutex_unlock(&z->lock);
    drop_dead(dead);
    if (!marker) /* responses: a marker is the plugin's bookkeeping */
        lp__cache_count(z, LP_CACHE_C_STORED);
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
