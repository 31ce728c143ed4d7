/* The response cache's store (issue #13): named zones shared by every worker thread, each a
 * hash of entries with an LRU list and a byte budget. The store knows bytes, not HTTP: an
 * entry is a key (the primary key, what purge and coalescing go by), a secondary key (the
 * Vary variant, "" for none), an opaque head the policy wrote (lua/luaproxy/cache/), and a
 * body kept in chunks. Freshness and every RFC 9111 decision are the cache plugin's.
 *
 * Lifetimes:
 * - A zone lives in a process-wide registry while some config names it (lp_cache_zone_acquire
 *   / _release, as shared dicts do), so a reload that keeps a zone keeps its entries.
 * - An entry is reference-counted (atomic): the zone holds one while it is linked in the
 *   table, every reader one more (a hit being written to a client holds it until its write
 *   callback). Eviction, purge and replacement only unlink; the bytes go with the last
 *   reference. An entry's content never changes once linked, except its head, which
 *   lp_cache_entry_set_head replaces under the zone's lock (readers copy it out under that
 *   lock).
 * - A fill (lp_cache_fill_t) belongs to the one request that makes it: it may hold the key's
 *   lock (coalescing: other requests see the key as "being filled" and wait), gathers the
 *   body as it streams by, and links the entry at commit. Abandoning it (too large, an
 *   upstream error, the request ending first) frees what it gathered; nothing partial is
 *   ever linked. A fill holds a registry reference to its zone, except a lock from
 *   lp_cache_get_or_lock, whose caller holds the zone for it. */
#ifndef LP_CACHE_STORE_H
#define LP_CACHE_STORE_H

#include <stddef.h>
#include <stdint.h>

typedef struct lp_cache_zone_s lp_cache_zone_t;
typedef struct lp_cache_entry_s lp_cache_entry_t;
typedef struct lp_cache_fill_s lp_cache_fill_t;

/* Bounds: keys longer than this are refused (not cached); a primary key keeps at most
 * LP_CACHE_MAX_VARIANTS secondary keys (Vary), the least recently used (stored or hit)
 * going first (LP_CACHE_C_VARIANTS_DROPPED). */
#define LP_CACHE_MAX_KEY      4096
#define LP_CACHE_MAX_VARIANTS 32
/* Body chunk size: the largest allocation a fill makes (small bodies get smaller chunks). */
#define LP_CACHE_CHUNK (64 * 1024)

/* One chunk of an entry's body: owned by the entry, immutable once the entry is linked. */
typedef struct lp_cache_chunk_s {
    struct lp_cache_chunk_s *next; /* owned: the next chunk, NULL: last */
    size_t len, cap;
    char data[];
} lp_cache_chunk_t;

/* Counters of a zone (GET /status, metrics). Outcome counts come from the policy
 * (lp_cache_count); the rest from the store. Relaxed atomics. */
enum {
    LP_CACHE_C_HIT,
    LP_CACHE_C_MISS,
    LP_CACHE_C_EXPIRED,
    LP_CACHE_C_STALE,
    LP_CACHE_C_REVALIDATED,
    LP_CACHE_C_BYPASS,
    LP_CACHE_C_STORED,        /* fills committed holding responses (not the plugin's
                                 markers: see lp_cache_purge) */
    LP_CACHE_C_ABANDONED,     /* fills dropped: too large, error, request gone */
    LP_CACHE_C_EVICTED,       /* entries pushed out by the byte budget */
    LP_CACHE_C_DISK_EVICTED,  /* files pushed out by the disk budget */
    LP_CACHE_C_DISK_LOADED,   /* disk-only entries read back for a hit */
    LP_CACHE_C_DISK_DROPPED,  /* files found damaged, changed or gone on a read */
    LP_CACHE_C_DISK_STREAMED, /* disk-only hits served from their files (not read back) */
    /* Of the plugin's outcomes, those the engine replayed (cache_native.c): misses it sent
     * upstream, responses it stored, plain hits it answered. */
    LP_CACHE_C_NATIVE_MISS,
    LP_CACHE_C_NATIVE_STORED,
    LP_CACHE_C_NATIVE_HIT,
    LP_CACHE_C_VARIANTS_DROPPED, /* variants dropped for a key's new one (over MAX_VARIANTS) */
    LP_CACHE_C_N
};

typedef struct {
    /* The memory tier. entries: those holding responses (the plugin's markers, which
     * `bytes` counts, are not: lp_cache_purge's count) */
    uint64_t entries, bytes, capacity, max_object;
    int disk, disk_loading;                                  /* has a disk tier; its scan runs */
    uint64_t disk_entries, disk_bytes, disk_capacity, stubs; /* stubs: on disk only */
    /* The key index outside `bytes`: its bucket array and the disk-only entries' records
     * (with their keys and heads). bytes + index_bytes (and fills' chunks in flight) stay
     * within `capacity` (the zone's `memory`). */
    uint64_t index_bytes;
    uint64_t counts[LP_CACHE_C_N];
} lp_cache_stats_t;

/* ---- zones ---- */
/* The zone of that name (made, empty, when new; an existing one gets the new limits). NULL
 * when out of memory. */
lp_cache_zone_t *lp_cache_zone_acquire(const char *name, size_t memory, size_t max_object);
void lp_cache_zone_release(lp_cache_zone_t *z);
/* One more registry reference to a zone the caller holds one of (directly or through its
 * generation's config); lp_cache_zone_release drops it. */
void lp_cache_zone_hold(lp_cache_zone_t *z);
/* The zone of that name some config holds, or NULL (borrowed: valid while the caller's
 * generation lives). */
lp_cache_zone_t *lp_cache_zone_find(const char *name, size_t n);
const char *lp_cache_zone_name(const lp_cache_zone_t *z);
/* Its max_object_size: the largest body it stores. */
uint64_t lp_cache_zone_max_object(lp_cache_zone_t *z);
/* Gives a zone its disk tier (cache_disk.h): a directory and a byte budget. The first call
 * starts it (the directory's files are indexed in the background); later ones (reloads)
 * keep the directory (a new path is logged and waits for a restart). 0, or -1 when the disk
 * thread cannot start. */
int lp_cache_zone_set_disk(lp_cache_zone_t *z, const char *path, size_t size);
/* Applies a new disk budget (deleting the least recently used files down to it). */
void lp_cache_zone_resize_disk(lp_cache_zone_t *z, size_t size);
/* Applies a new byte budget (evicting down to it) and object limit. */
void lp_cache_zone_resize(lp_cache_zone_t *z, size_t memory, size_t max_object);
void lp_cache_zone_stats(lp_cache_zone_t *z, lp_cache_stats_t *out);
void lp_cache_count(lp_cache_zone_t *z, int what);
/* Calls fn for each zone in the registry (GET /status, metrics), under the registry lock:
 * fn must not call back into the registry. */
void lp_cache_zones_each(void (*fn)(lp_cache_zone_t *z, void *arg), void *arg);

/* ---- lookups ---- */
/* The entry stored for (key, sec), with a new reference for the caller, or NULL. An entry
 * past its keep_until is unlinked and not returned. `now` is seconds (CLOCK_REALTIME). */
lp_cache_entry_t *lp_cache_get(lp_cache_zone_t *z, const char *key, size_t klen, const char *sec,
                               size_t slen, double now);
lp_cache_entry_t *lp_cache_entry_ref(lp_cache_entry_t *e);
void lp_cache_entry_unref(lp_cache_entry_t *e);
/* Copies the entry's head into out (room bytes); returns its length (more than room: out
 * holds nothing useful, ask again with that much room). */
size_t lp_cache_entry_head(lp_cache_zone_t *z, const lp_cache_entry_t *e, char *out, size_t room);
/* lp_cache_entry_head of a head the engine rendered for a plain hit to serve as stored
 * (lp_cache_entry_t.plain_head), with its serial read under the same lock; 0 for any other
 * head. */
size_t lp_cache_entry_plain_head(lp_cache_zone_t *z, const lp_cache_entry_t *e, char *out,
                                 size_t room, uint64_t *serial);
/* Replaces the head (a revalidation's 304) of nfields fields (cache_room.c) and the time it
 * is kept until. 0, or -1 when out of memory. */
int lp_cache_entry_set_head(lp_cache_zone_t *z, lp_cache_entry_t *e, const char *head, size_t hlen,
                            size_t nfields, double keep_until);
uint64_t lp_cache_entry_body_len(const lp_cache_entry_t *e);
/* Which head the entry has: a number never given to another entry or head in the process. */
uint64_t lp_cache_entry_serial(const lp_cache_entry_t *e);
/* Whether the body is in memory: 0 for an entry only on disk (its body must be read back
 * first, cache_disk_hit.c; lp_cache_entry_chunks is NULL). */
int lp_cache_entry_resident(const lp_cache_entry_t *e);
/* Whether e is the entry of exactly (key, sec). */
int lp_cache_entry_same(const lp_cache_entry_t *e, const char *key, size_t klen, const char *sec,
                        size_t slen);
/* The first body chunk (the list is immutable while the caller holds a reference). */
const lp_cache_chunk_t *lp_cache_entry_chunks(const lp_cache_entry_t *e);

/* How a plain hit is served from an entry's head (cache_native.c learns it from the cache
 * plugin's first such hit): kept with the entry, so every worker and route answers the next
 * plain hits on it in the engine, however many entries are hot. Immutable once published;
 * freed with the entry (never before), so a thread holding the entry may read it. */
typedef struct lp_cache_served_s {
    struct lp_cache_served_s *older; /* owned: the memo of a head this one came after */
    uint64_t serial;                 /* the head it serves (lp_cache_entry_serial) */
    int status;
    double age0;          /* the age at the response time (RFC 9111 4.2.3's corrected initial) */
    double response_time; /* seconds, CLOCK_REALTIME */
    double ttl;           /* the freshness lifetime */
    size_t wire_len;
    char wire[]; /* the fields served as stored: "Name: value\r\n" lines */
} lp_cache_served_t;
/* The newest memo published on e, or NULL; the caller compares its serial with e's. */
const lp_cache_served_t *lp_cache_entry_served(const lp_cache_entry_t *e);
/* Publishes s (malloc'd; taken either way) on e, an entry of z, by a thread holding one
 * reference to e, its bytes charged to z with e's (older memos freed when nobody else holds
 * e): 0, or -1 when e has one for s's head already or holds LP_CACHE_SERVED_MAX memos others
 * may still read (that head is left to the plugin), and s is freed. */
int lp_cache_entry_served_set(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_served_t *s);
#define LP_CACHE_SERVED_MAX 4

/* ---- purge ---- */
/* Unlinks every variant of `key` (mode LP_CACHE_PURGE_KEY), every entry whose key starts with
 * it (LP_CACHE_PURGE_PREFIX), or everything (LP_CACHE_PURGE_ALL). Returns how many of them
 * held responses (not the plugin's markers: a head that is empty, or "V ..." without a
 * secondary key). */
enum { LP_CACHE_PURGE_KEY, LP_CACHE_PURGE_PREFIX, LP_CACHE_PURGE_ALL };
size_t lp_cache_purge(lp_cache_zone_t *z, int mode, const char *key, size_t klen);
/* Unlinks the entry of exactly (key, sec), if there is one (an entry put already expired:
 * the plugin's way of dropping its refresh marker). */
void lp_cache_remove(lp_cache_zone_t *z, const char *key, size_t klen, const char *sec,
                     size_t slen);

/* ---- fills ---- */
/* lp_cache_get (sec "") and, on a miss when lock_timeout >= 0, lp_cache_lock of the key, in
 * one hold of the zone's lock: *fill the fill holding the lock, or NULL (*busy as
 * lp_cache_lock's). *fill must be NULL on entry: it is set, hit or miss (a fill there would
 * lose its lock and zone reference). Unlike lp_cache_lock's, this fill borrows the zone
 * (no registry reference taken per miss): the caller holds z until the fill is committed or
 * abandoned (a request does, through its generation's config). */
lp_cache_entry_t *lp_cache_get_or_lock(lp_cache_zone_t *z, const char *key, size_t klen, double now,
                                       double lock_timeout, lp_cache_fill_t **fill, int *busy);
/* Coalescing: takes the lock of `key` (one fill per primary key at a time) and returns a fill
 * holding it; NULL when another fill holds it and is younger than `lock_timeout` seconds or
 * made progress within them (lp__cache_fill_progress: a slow body still coming) (the caller
 * waits on lp_cache_locked, then looks up again), or when out of memory (*busy 0). A quiet
 * older lock is taken over (its fill never commits its lock then, but may still commit its
 * entry). */
lp_cache_fill_t *lp_cache_lock(lp_cache_zone_t *z, const char *key, size_t klen,
                               double lock_timeout, double now, int *busy);
/* The same for a disk read-back (cache_disk_hit.c): *busy only while another read-back holds
 * the key's lock (taken over after lock_timeout); a fill's lock is neither waited for nor
 * taken over (NULL, *busy 0: read back without the lock). */
lp_cache_fill_t *lp_cache_lock_readback(lp_cache_zone_t *z, const char *key, size_t klen,
                                        double lock_timeout, double now, int *busy);
/* Whether a fill holds the lock of key (the waiters' test). */
int lp_cache_locked(lp_cache_zone_t *z, const char *key, size_t klen);

/* A request waiting for the fill that holds a key's lock, owned by its waiting thread. While
 * registered it is linked in that fill (zone lock); when the lock goes (commit, abandon, a
 * fill killed over a limit, a takeover) `notify` is called once, under the zone's lock, from
 * whichever thread dropped it: it may only hand the waiter over to its owner's thread and
 * wake that thread (engine/cache_ffi.c: the worker's inbox and uv_async). */
typedef struct lp_cache_waiter_s {
    struct lp_cache_waiter_s *next; /* borrowed: next in the holder's list (zone lock) */
    struct lp_cache_fill_s *holder; /* borrowed: the fill waited on (zone lock); NULL once
                                       notified or cancelled */
    void (*notify)(struct lp_cache_waiter_s *w);
    uint8_t early;  /* set by its owner before lp_cache_wait: notified as soon as the fill's
                       head is ready (lp_cache_fill_ready), to read the entry as it fills */
    uint8_t reader; /* registered by lp_cache_fill_watch (set there), not lp_cache_wait */
} lp_cache_waiter_t;
/* Registers w on the fill holding key's lock: 1, or 0 when nothing holds it (no notify). An
 * early waiter (w->early) is not registered when the fill's head is ready already: 2 (look
 * the filling entry up: lp_cache_get_filling). */
int lp_cache_wait(lp_cache_zone_t *z, const char *key, size_t klen, lp_cache_waiter_t *w);
/* Takes w out (a waiter's or a reader's): 1 when it was still registered (notify will not
 * come), 0 when notify already ran (the owner gets it through its hand-over). */
int lp_cache_wait_cancel(lp_cache_zone_t *z, lp_cache_waiter_t *w);
/* A wait's bound came (its owner's timer): when the fill it waits on made progress (its head,
 * body bytes: lp__cache_fill_progress) within the last window_ms of now_ms (both the loop
 * clock's ms), the ms until window_ms of quiet will have passed (> 0: w stays registered,
 * wait again); else w is taken out as by lp_cache_wait_cancel: 0 (it was registered), or
 * -1 when notify already ran. */
int64_t lp_cache_wait_quiet(lp_cache_zone_t *z, lp_cache_waiter_t *w, uint64_t now_ms,
                            uint64_t window_ms);

/* ---- reading an entry as it fills (coalesced waiters) ----
 * A fill whose head is written tells so (lp_cache_fill_ready): its early waiters are notified
 * then, and from then on the entry it gathers can be looked up through its key's lock with a
 * reference (lp_cache_get_filling), and its body read as it comes (lp_cache_fill_read). A
 * reader at the end of what is there registers (lp_cache_fill_watch) and is notified once, by
 * the filler's thread, when more comes or the fill ends. The fill's commit completes the
 * entry for its readers; an abandoned or killed fill fails it: every reader's answer is cut
 * short (its bytes stay until the last reference goes). */
enum { LP_CACHE_FILL_COMPLETE, LP_CACHE_FILL_FILLING, LP_CACHE_FILL_FAILED };
/* The head of the fill's entry is written (and its fields told): readers may come. */
void lp_cache_fill_ready(lp_cache_fill_t *f);
/* The entry a ready fill holding key's lock gathers for (key, sec), with a new reference for
 * the caller, or NULL; *hint its expected body length (0: unknown). */
lp_cache_entry_t *lp_cache_get_filling(lp_cache_zone_t *z, const char *key, size_t klen,
                                       const char *sec, size_t slen, uint64_t *hint);
/* A reader's place in a filling entry (zeroed: its start). */
typedef struct {
    const lp_cache_chunk_t *c; /* borrowed from the entry (the reader holds a reference) */
    size_t off;                /* bytes of c read */
} lp_cache_fill_cursor_t;
/* The next bytes of e after cur: 1 and *p, *n (valid while the reader holds e); 0 none yet
 * (the fill goes on: watch, then read again); 2 the end (the body is complete); -1 the fill
 * failed (the answer must be cut short). Any thread, no lock. */
int lp_cache_fill_read(const lp_cache_entry_t *e, lp_cache_fill_cursor_t *cur, const char **p,
                       size_t *n);
/* Registers w (its notify set) to hear of e's next bytes or end: 1, or 0 when e's fill has
 * ended already (read again). Taken out by lp_cache_wait_cancel. */
int lp_cache_fill_watch(lp_cache_zone_t *z, lp_cache_entry_t *e, lp_cache_waiter_t *w);
/* Starts gathering an entry: with a fill from lp_cache_lock (fill non-NULL), or a new one (fill
 * NULL). `size_hint` is the expected body length (Content-Length), 0 when unknown. Returns the
 * fill, or NULL when the key is too long, the hint is over the zone's max_object_size, or out of
 * memory (the fill given is then abandoned). With head NULL, the head's hlen bytes are left
 * for the caller to write (lp_cache_fill_head) before anything else touches the fill. */
lp_cache_fill_t *lp_cache_fill_start(lp_cache_zone_t *z, lp_cache_fill_t *fill, const char *key,
                                     size_t klen, const char *sec, size_t slen, const char *head,
                                     size_t hlen, double keep_until, uint64_t size_hint);
/* Where the head of the entry a fill gathers is written (lp_cache_fill_start with head NULL):
 * the entry is the fill's alone until its commit. NULL once the fill is dead. */
char *lp_cache_fill_head(lp_cache_fill_t *f);
/* The fields of the fill's head (cache_room.c: a hit on the entry needs room for them), told
 * before its commit; an entry never told has 0 (counted as fitting any request). */
void lp_cache_fill_fields(lp_cache_fill_t *f, size_t nfields);
/* Whether the fill gathers an entry (lp_cache_fill_start ran on it): a lock alone does not. */
int lp_cache_fill_active(const lp_cache_fill_t *f);
/* The key whose lock the fill holds (*key valid while the fill lives): 0, or -1 when it
 * holds none. */
int lp_cache_fill_key(const lp_cache_fill_t *f, const char **key, size_t *klen);
/* Appends body bytes. 0, or -1 when the entry went over max_object_size or memory ran out: the
 * fill is then dead (its bytes freed, its lock released), later appends are ignored and the
 * commit abandons it. */
int lp_cache_fill_append(lp_cache_fill_t *f, const char *data, size_t len);
/* Links the gathered entry (replacing the one of the same keys) and frees the fill. Returns
 * 0, or -1 when the fill was dead or held only a lock (nothing linked). */
int lp_cache_fill_commit(lp_cache_fill_t *f);
/* Frees the fill and what it gathered, releasing its lock. */
void lp_cache_fill_abandon(lp_cache_fill_t *f);

/* Tests: the byte cost the store charges an entry of these sizes. */
size_t lp_cache_entry_cost(size_t klen, size_t slen, size_t hlen, size_t body_cap);

#endif
