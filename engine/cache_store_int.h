/* The response cache's store internals, shared by the memory store (cache_store.c) and its
 * disk tier (cache_disk.c, cache_disk_hit.c). The request path's files (cache_ffi.c,
 * cache_native.c) include it for the inline accessors at its end only. */
#ifndef LP_CACHE_STORE_INT_H
#define LP_CACHE_STORE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "cache_blocks.h"
#include "cache_store.h"
#include "common.h"
#include "mutex.h"

#define LOCK_BUCKETS 256
/* The largest body (of a length known when its fill starts) kept in its entry's block. */
#define LP_CACHE_INLINE_BODY 1024

struct lp_cdisk_s;

struct lp_cache_entry_s {
    atomic_uint refs;        /* the zone's while linked + each reader's */
    lp_cache_entry_t *hnext; /* borrowed: next in its bucket (zone lock); once unlinked,
                                the unlinker's to-free list */
    lp_list_t lru;           /* in zone->lru while linked (zone lock) */
    uint64_t hash;           /* of the primary key */
    char *key;               /* borrowed: key bytes, sec bytes, then the first head, in the
                                entry's own block */
    size_t klen;
    const char *sec; /* borrowed: inside `key`'s allocation */
    size_t slen;
    char *head; /* the policy's head: the first in the entry's block (borrowed), a
                   replacement a block of its own (owned); replaced under the zone lock */
    size_t hlen;
    lp_cache_chunk_t *chunks; /* owned: the body, immutable once linked */
    uint64_t body_len;
    size_t cost;       /* bytes charged to the zone */
    double keep_until; /* seconds (realtime): dropped by a lookup after this */
    /* Which head: drawn when the entry is made and again when its head is replaced, never
     * the same twice in the process (a worker's memo of how a head is served checks it:
     * cache_native.c). Relaxed atomics: read without the zone lock. */
    _Atomic uint64_t serial;
    /* Its place in the order of use (zone->seq): drawn when it is linked and again by each
     * hit, where the LRU moves it (zone lock). A key over LP_CACHE_MAX_VARIANTS drops the
     * variant with the lowest: the least recently used (the list's own order would need a
     * walk of the zone to compare two entries). */
    uint64_t seq;
    uint8_t linked; /* in the zone's table (zone lock) */
    uint8_t marker; /* holds no response (the plugin's markers, cache_store.c's
                       holds_response), set before it is linked (set_marker); counted in
                       zone->nmarkers while linked and resident */
    /* The disk tier (cache_disk.c). An entry is resident (its body in `chunks`), on disk (a
     * file holds it), or both. A disk-only entry (a "stub": chunks NULL, resident 0) is the
     * index's record of a file: key, head and lengths in memory, the body in the file; a hit
     * on it loads the file first (cache_disk_hit.c). */
    uint8_t resident;          /* chunks hold the body; 0 for a stub (fixed at creation) */
    uint8_t body_inline;       /* the first chunk is in the entry's own block (a small fill's) */
    uint8_t bclass;            /* its block's class in `blocks` */
    uint8_t on_disk;           /* its file is written and charged to the disk budget (zone lock) */
    uint8_t plain_head;        /* the head is the engine's own rendering of a stored miss's
                                  decision whose plain hits serve it as stored (cache_native.c:
                                  set before it is linked, cleared with a new head under the
                                  zone lock; read under it: lp_cache_entry_plain_head) */
    uint16_t nfields;          /* its head's fields (cache_room.c; 65535: that many or more; 0:
                                  not counted, a test's), set before it is linked, changed
                                  with its head under the zone lock: read without it by a hit
                                  (relaxed atomics) */
    lp_cache_blocks_t *blocks; /* holds a block count in it: the entry's block is one of its
                                  (cache_blocks.h); NULL: malloc's */
    uint64_t fid;     /* the file's name: hash of key and sec (cache_disk.h); a fill's entry
                         has 0 until it is first written (with_fid) */
    uint64_t stamp;   /* which write of that file holds this content (zone lock): a file
                         read back must carry it, or it was replaced meanwhile */
    uint64_t dsize;   /* file bytes charged to the disk budget while on_disk */
    uint32_t writing; /* writes of it queued and not done (zone lock): an entry pushed out of
                         memory meanwhile stays indexed (demoted), its file on the way */
    lp_list_t dlru;   /* in zone->dlru while on_disk (zone lock) */
    /* owned: how plain hits are served, newest first (lp_cache_entry_served_set, any
       thread, lock-free); NULL until learned */
    _Atomic(struct lp_cache_served_s *) served;
    /* A fill's entry read while it fills (lp_cache_get_filling): LP_CACHE_FILL_* (0, complete,
     * for every other entry). Set by its fill before it is published, then changed once,
     * under the zone lock, with a release store that readers load with acquire: a reader
     * that sees COMPLETE sees every chunk's final `len` and `next`. */
    uint8_t fstate;
    struct lp_cache_fill_s *filler; /* borrowed: the fill gathering it while fstate is
                                       FILLING (zone lock; NULL once it ended) */
};

struct lp_cache_fill_s {
    lp_cache_zone_t *zone; /* registry reference when zref, else borrowed (a lock from
                              lp_cache_get_or_lock: its caller holds the zone meanwhile) */
    uint8_t zref;
    char *lkey; /* borrowed: the locked primary key, in the fill's own block;
                   NULL: no lock taken */
    size_t lklen;
    size_t lroom; /* bytes for lkey after the struct (a lock's block; 0: no room) */
    uint64_t lhash;
    uint8_t locked;                /* holds lkey's lock in zone->locks (zone lock: a newer
                                      fill may take an old lock over) */
    struct lp_cache_fill_s *lnext; /* borrowed: next in its lock bucket (zone lock) */
    double locked_at;
    /* Its last progress: the head stored, body bytes (lp__cache_fill_progress), in ms of the
     * loop clock (uv_now: CLOCK_MONOTONIC, the same in every worker); 0: none since the
     * lock. Written by the filling thread (a relaxed store, no lock), read under the zone
     * lock by waiters and by lock takers: a fill still receiving keeps its lock and its
     * waiters past lock_timeout (lp_cache_wait_quiet). */
    _Atomic uint64_t progress;
    uint8_t readback;           /* a disk read-back's lock (lp_cache_lock_readback), not a fill's */
    lp_cache_entry_t *e;        /* owned: the entry being gathered (never linked before
                                   commit); NULL before start or once dead */
    lp_cache_chunk_t *tail;     /* borrowed: e's last chunk */
    uint64_t hint;              /* expected body length (0: unknown) */
    lp_cache_waiter_t *waiters; /* borrowed: requests waiting on its lock (zone lock) */
    uint8_t dead;               /* went over a limit: appends are ignored, commit fails */
    uint8_t started;            /* lp_cache_fill_start ran */
    size_t charged;             /* bytes counted in zone->filling (zone lock): its chunks',
                                   or a small body's room reserved with its lock */
    size_t reserve_left;        /* of charged: the lock's reservation no chunk has taken yet
                                   (the owning thread's; the first chunks take it first) */
    /* Streaming to waiters (lp_cache_fill_ready): `pub` is e once its head is written,
     * stored by the filler with a sequentially consistent store (no zone lock), cleared under
     * the zone lock when the fill ends; a reader takes its reference under that lock, before
     * the fill can drop its own. */
    lp_cache_entry_t *pub;
    lp_cache_waiter_t *readers; /* borrowed: readers at the end of what is there, woken by
                                   the next append or the fill's end (zone lock) */
    unsigned nreaders;          /* how many (atomics: the filler tests it without the lock
                                   after each append, a sequentially consistent fence first) */
    unsigned nearly;            /* waiters to wake when the head is ready (atomics, as
                                   nreaders; changed under the zone lock) */
};

/* Concurrency: one mutex per zone, taken by every worker's lookups, commits and purges and by
 * the admin thread's purges and stats. It guards the table (buckets, hnext), the LRU list,
 * the lock table, `used`, `nentries`, the limits and every linked entry's `linked`, `lru` and
 * head. Critical sections do pointer work, memcmp and head copies only: bodies are gathered
 * outside it (a fill's entry is private until commit) and freed outside it (unlinked entries
 * are collected and dropped after the unlock). No Lua is ever touched under it. */
struct lp_cache_zone_s {
    lp_mutex_t lock;            /* cheaper than pthread's uncontended (mutex.h): held briefly */
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
    size_t nmarkers;            /* of them, markers (entry.marker): stats count responses */
    uint64_t seq;               /* links and hits so far (lock): entry.seq */
    lp_cache_entry_t **buckets; /* owned array of nbuckets chains */
    lp_cache_blocks_t *blocks;  /* owned until the zone's free, which orphans it (its entries
                                   may outlive the zone): its fills' entry blocks; NULL: out
                                   of memory at its making (malloc's then) */
    size_t nbuckets;            /* a power of two */
    lp_list_t lru;              /* most recently used first */
    lp_cache_fill_t *locks[LOCK_BUCKETS]; /* borrowed: fills holding a key's lock */
    atomic_uint_fast64_t counts[LP_CACHE_C_N];
    atomic_int refs;           /* registry references: atomic; it reaches 0 only under
                                  reg_lock (lp_cache_zone_release), where it leaves the
                                  registry */
    lp_cache_zone_t *reg_next; /* borrowed: next in the registry (reg_lock) */
    /* The disk tier: NULL when the zone has none. The fields below are under the lock. */
    struct lp_cdisk_s *disk; /* owned: the zone's disk thread and directory (cache_disk.c);
                                set once, before the zone is shared, freed with it */
    size_t dcapacity;        /* disk byte budget */
    size_t dused;            /* file bytes of entries on disk */
    size_t dentries;         /* entries on disk (resident or not) */
    size_t nstubs;           /* linked disk-only entries */
    size_t sbytes;           /* their memory (stub_cost): outside `used`, within `capacity` */
    lp_list_t dlru;          /* entries on disk, most recently used first */
    uint64_t stamps;         /* stamps handed out (entry.stamp): begins past the last
                                process's, and past every file the scan finds */
    /* Linked entries by field count (cache_room.c: how many header slots a request makes
     * room for). Under the lock; room_top is also read without it (atomics). */
    uint32_t *room_n;  /* owned: LP_CACHE_ROOM_MAX + 1 counts (40 KiB, most never touched) */
    unsigned room_top; /* the most fields of a linked entry: 0 when none */
};

/* cache_store.h's lp_cache_fill_active, _fill_head, _fill_key, _zone_max_object and
 * lp_cache_count (`what` a constant in range), inline: a stored miss asks each once or more,
 * and a call cost more than what it reads. Same rules as theirs. */
static inline int lp__cache_fill_active(const lp_cache_fill_t *f)
{
    return f->started;
}

static inline char *lp__cache_fill_head(lp_cache_fill_t *f)
{
    return f->e ? f->e->head : NULL;
}

static inline int lp__cache_fill_key(const lp_cache_fill_t *f, const char **key, size_t *klen)
{
    if (!f->lkey)
        return -1;
    *key = f->lkey;
    *klen = f->lklen;
    return 0;
}

static inline uint64_t lp__cache_max_object(lp_cache_zone_t *z)
{
    return __atomic_load_n(&z->max_object, __ATOMIC_RELAXED);
}

/* lp_cache_fill_append's common case, for the request path's tee: len bytes that fit the
 * fill's last chunk (a small body's, in its entry's block) within max_object_size go where
 * this returns: the caller writes them there, then calls lp__cache_fill_wrote (readers of the
 * filling entry must never see the bytes counted before they are written). NULL: any other
 * case, which lp_cache_fill_append decides. */
static inline char *lp__cache_fill_room(lp_cache_fill_t *f, size_t len)
{
    lp_cache_entry_t *e = f->e;
    lp_cache_chunk_t *t = f->tail;
    if (f->dead || !e || !t || t->cap - t->len < len ||
        e->body_len + len > lp__cache_max_object(f->zone))
        return NULL;
    return t->data + t->len;
}

/* Wakes the fill's readers (cache_store.c): the filler's thread, after an append. */
void lp__cache_fill_tell(lp_cache_fill_t *f);

/* The filler published n more bytes of chunk t (written already): a release store readers
 * pair with an acquire load; then, after a full fence (against a reader registering at the
 * same moment: it registers, then reads `len` again), readers waiting for bytes are woken.
 * A fill without readers pays the fence and one load. */
static inline void lp__cache_fill_publish(lp_cache_fill_t *f, lp_cache_chunk_t *t, size_t n)
{
    __atomic_store_n(&t->len, t->len + n, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&f->nreaders, __ATOMIC_RELAXED))
        lp__cache_fill_tell(f);
}

/* Wakes the fill's early waiters (cache_store.c): lp__cache_fill_ready's slow path. */
void lp__cache_fill_wake_early(lp_cache_fill_t *f);

/* lp_cache_fill_ready of a fill just started (its entry there, not dead, not ready yet):
 * a stored miss calls it once. */
static inline void lp__cache_fill_ready_new(lp_cache_fill_t *f)
{
    lp_cache_entry_t *e = f->e;
    e->fstate = LP_CACHE_FILL_FILLING;
    e->filler = f;
    /* Published, then the early waiters counted (both sequentially consistent: a waiter
     * registering meanwhile counts itself, then tests `pub`: lp_cache_wait). */
    __atomic_store_n(&f->pub, e, __ATOMIC_SEQ_CST);
    if (__atomic_load_n(&f->nearly, __ATOMIC_SEQ_CST))
        lp__cache_fill_wake_early(f);
}

static inline void lp__cache_fill_ready(lp_cache_fill_t *f)
{
    if (f->e && !f->dead && !f->pub)
        lp__cache_fill_ready_new(f);
}

/* lp__cache_fill_room's bytes are written. */
static inline void lp__cache_fill_wrote(lp_cache_fill_t *f, size_t len)
{
    f->e->body_len += len;
    lp__cache_fill_publish(f, f->tail, len);
}

/* The same, with e (f->e), t (f->tail) and t's new length read before the bytes were
 * written (the request path's tee: the copy may alias them for the compiler). */
static inline void lp__cache_fill_wrote_at(lp_cache_fill_t *f, lp_cache_entry_t *e,
                                           lp_cache_chunk_t *t, size_t len, size_t end)
{
    e->body_len += len;
    __atomic_store_n(&t->len, end, __ATOMIC_RELEASE);
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    if (__atomic_load_n(&f->nreaders, __ATOMIC_RELAXED))
        lp__cache_fill_tell(f);
}

/* The filling thread's note that its fill moved on at now_ms (the loop clock): a store. */
static inline void lp__cache_fill_progress(lp_cache_fill_t *f, uint64_t now_ms)
{
    atomic_store_explicit(&f->progress, now_ms, memory_order_relaxed);
}

static inline void lp__cache_count(lp_cache_zone_t *z, int what)
{
    atomic_fetch_add_explicit(&z->counts[what], 1, memory_order_relaxed);
}

/* Under the zone lock (cache_store.c): takes e out of the table and both LRUs and puts it on
 * *dead; a file it had is queued for deletion. */
void lp__cache_unlink(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_entry_t **dead);
/* Drops the references of entries unlink collected (after the unlock). */
void lp__cache_drop_dead(lp_cache_entry_t *dead);
/* Under the zone lock: evicts from both tiers down to their budgets. */
void lp__cache_evict(lp_cache_zone_t *z, lp_cache_entry_t **dead);
/* Under the zone lock: the linked entry of exactly (key, sec), or NULL. */
lp_cache_entry_t *lp__cache_find(lp_cache_zone_t *z, uint64_t h, const char *key, size_t klen,
                                 const char *sec, size_t slen);
/* Under the zone lock: links e (not linked, refs 1 = the zone's) into the table; resident
 * entries are charged to memory and put on the LRU. */
void lp__cache_link(lp_cache_zone_t *z, lp_cache_entry_t *e);
/* Under the zone lock: replaces linked `old` by `e` (not linked) in the table, e taking over
 * old's disk state; old goes on *dead. */
void lp__cache_replace(lp_cache_zone_t *z, lp_cache_entry_t *old, lp_cache_entry_t *e,
                       lp_cache_entry_t **dead);
/* Under the zone lock: e's file is written (size bytes): on the disk LRU, charged. */
void lp__cache_on_disk(lp_cache_zone_t *z, lp_cache_entry_t *e, uint64_t size);
void lp__cache_entry_free(lp_cache_entry_t *e);
/* A new entry, not linked, refs 1: a disk-only one (chunks NULL), one whose body was read
 * back from its file (chunks, owned from now on), or a fill's (cache_store.c resets what
 * its commit sets). NULL when out of memory (chunks freed). */
lp_cache_entry_t *lp__cache_entry_new(const char *key, size_t klen, const char *sec, size_t slen,
                                      const char *head, size_t hlen, uint64_t body_len,
                                      double keep_until, lp_cache_chunk_t *chunks);
/* lp__cache_entry_new with the key's hash given (lp_hash64), and its file id only when
 * fid_now (else 0: a fill's entry, given one when first written); with body_cap, an empty
 * chunk of that many bytes in the entry's block is its first (chunks must be NULL). */
lp_cache_entry_t *lp__cache_entry_make(const char *key, size_t klen, const char *sec, size_t slen,
                                       const char *head, size_t hlen, uint64_t body_len,
                                       double keep_until, lp_cache_chunk_t *chunks, uint64_t hash,
                                       int fid_now, size_t body_cap);
/* The most fields of an entry the zone has linked (room_top): any thread. */
unsigned lp__cache_zone_room_top(const lp_cache_zone_t *z);

/* An entry's field count (lp_cache_entry_t.nfields): set before it is linked, or with its
 * head under the zone lock. */
static inline void lp__cache_entry_set_fields(lp_cache_entry_t *e, size_t n)
{
    __atomic_store_n(&e->nfields, (uint16_t)(n > 65535 ? 65535 : n), __ATOMIC_RELAXED);
}

static inline unsigned lp__cache_entry_fields(const lp_cache_entry_t *e)
{
    return __atomic_load_n(&e->nfields, __ATOMIC_RELAXED);
}

/* A disk-only entry for the file fid (known already: its name, or the entry it stands for,
 * so not hashed again). */
static inline lp_cache_entry_t *lp__cache_stub_new(const char *key, size_t klen, const char *sec,
                                                   size_t slen, const char *head, size_t hlen,
                                                   uint64_t body_len, double keep_until,
                                                   uint64_t fid)
{
    lp_cache_entry_t *e = lp__cache_entry_make(key, klen, sec, slen, head, hlen, body_len,
                                               keep_until, NULL, lp_hash64(key, klen), 0, 0);
    if (e)
        e->fid = fid;
    return e;
}
/* The file id of (key, sec). */
uint64_t lp__cache_fid(const char *key, size_t klen, const char *sec, size_t slen);

#endif
