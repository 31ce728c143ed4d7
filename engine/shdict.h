/* Shared dicts (`proxy.shared.NAME`): key/value stores in plain heap memory, one per name
 * declared in the config's `shared` table, used by every worker thread of the process. The
 * method set and results follow OpenResty's ngx.shared.DICT. No Lua VM is touched here:
 * values are copied in from the caller and out into a per-thread scratch buffer.
 *
 * Accounting: every entry is charged LP_SHDICT_ENTRY_OVERHEAD + key bytes + string bytes
 * (numbers and booleans: no value bytes), every list item LP_SHDICT_ITEM_OVERHEAD + its
 * string bytes, against the declared capacity: the sum of charges never passes it. The
 * overheads cover what the store really takes per entry: its struct (88 bytes on 64-bit),
 * its share of the hash index (at most two bucket pointers per key beyond the first 16 of
 * each stripe, a fixed cost like the stripes themselves) and malloc's chunk
 * header (8); for an item, its struct (32) and the header. malloc's rounding of a block to
 * 16 bytes is not counted. shdict.c checks the structs against these at compile time.
 *
 * Locking: see struct lp_shdict_s in shdict.c (lock striping by key hash). */
#ifndef LP_SHDICT_H
#define LP_SHDICT_H

#include <stddef.h>
#include <stdint.h>

#define LP_SHDICT_ENTRY_OVERHEAD 112   /* bytes charged per key, besides key and value */
#define LP_SHDICT_ITEM_OVERHEAD  48    /* bytes charged per list item, besides its string */
#define LP_SHDICT_MIN_SIZE       8192  /* smallest capacity a config may declare */
#define LP_SHDICT_KEY_MAX        65535 /* longest key, in bytes (as OpenResty) */

/* Value types (OpenResty's numbering, so flags and types read the same). */
enum {
    LP_SHDICT_TNIL = 0, /* no value (set: delete) */
    LP_SHDICT_TBOOL = 1,
    LP_SHDICT_TNUM = 3,
    LP_SHDICT_TSTR = 4,
    LP_SHDICT_TLIST = 5,
};

/* lp_shdict_store ops; LP_SHDICT_SAFE may be or-ed in: never evict a valid entry. */
enum {
    LP_SHDICT_SET = 0,
    LP_SHDICT_ADD = 1,     /* only when the key is absent (or expired) */
    LP_SHDICT_REPLACE = 2, /* only when the key is present and not expired */
    LP_SHDICT_SAFE = 4,
};

/* Return codes: a range of their own (-301...), apart from LP_E* and LP_FFI_E*. */
enum {
    LP_SHDICT_EEXISTS = -301,   /* add: the key is there */
    LP_SHDICT_ENOTFOUND = -302, /* no such key (or expired) */
    LP_SHDICT_ENOMEM = -303,    /* does not fit (safe_*: without evicting; or bigger than
                                   the dict's stripe, or malloc failed) */
    LP_SHDICT_ENOTNUM = -304,   /* incr on a value that is not a number */
    LP_SHDICT_ENOTLIST = -305,  /* a list operation on a value that is not a list */
    LP_SHDICT_EISLIST = -306,   /* get on a list */
    LP_SHDICT_EINVAL = -307,    /* empty or too long key, bad type */
};

/* A value in or out. Out: str points into this thread's scratch buffer, valid until the
 * thread's next shdict call. */
typedef struct {
    const char *str; /* borrowed: TSTR bytes (in: the caller's; out: the scratch buffer) */
    size_t len;
    double num;     /* TNUM value; TBOOL: 0 or 1; ttl: seconds left */
    uint32_t flags; /* user flags stored with the value */
    int type;       /* LP_SHDICT_T* */
    int forcible;   /* out: a valid entry was evicted to make room */
    int stale;      /* out (get with stale): the value had expired */
} lp_shdict_val_t;

typedef struct lp_shdict_s lp_shdict_t;

typedef struct {
    size_t capacity, used, entries;
    uint64_t evictions; /* valid entries evicted to make room, since the dict was made */
} lp_shdict_stats_t;

/* A dict of `capacity` bytes, outside the registry (unit tests). NULL: out of memory. */
lp_shdict_t *lp_shdict_new(const char *name, size_t capacity);
void lp_shdict_free(lp_shdict_t *d);
const char *lp_shdict_name(const lp_shdict_t *d);

/* The process-wide registry, by name. acquire: a reference to the dict named so, made with
 * `capacity` if there is none (an existing dict keeps its size until lp_shdict_resize).
 * NULL: out of memory. release: drops it; the last reference frees the dict. lookup: the
 * dict of that name if any (no reference taken: the caller's generation holds one). Any
 * thread. */
lp_shdict_t *lp_shdict_acquire(const char *name, size_t capacity);
void lp_shdict_release(lp_shdict_t *d);
lp_shdict_t *lp_shdict_lookup(const char *name, size_t n);

/* Sets the capacity, evicting least recently used entries until what is stored fits (a
 * reload that resized the dict). Cannot fail. */
void lp_shdict_resize(lp_shdict_t *d, size_t capacity);
void lp_shdict_stats(lp_shdict_t *d, lp_shdict_stats_t *out);

/* The operations (OpenResty's semantics; exptime/ttl in seconds, 0: never expires). */
int lp_shdict_get(lp_shdict_t *d, const char *k, size_t klen, int stale, lp_shdict_val_t *out);
/* op: LP_SHDICT_SET/ADD/REPLACE (| SAFE); v->type TNIL deletes. Sets v->forcible. */
int lp_shdict_store(lp_shdict_t *d, int op, const char *k, size_t klen, lp_shdict_val_t *v,
                    double exptime);
/* out->num: the new value; out->forcible. has_init: create an absent key with init (and
 * init_ttl), then add step. */
int lp_shdict_incr(lp_shdict_t *d, const char *k, size_t klen, double step, int has_init,
                   double init, double init_ttl, lp_shdict_val_t *out);
int lp_shdict_ttl(lp_shdict_t *d, const char *k, size_t klen, double *ttl);

/* One rate-limit decision by GCRA (the generic cell rate algorithm), atomic under the
 * key's lock so that every worker shares one limit. The key holds the theoretical arrival
 * time (TAT) as a number and expires when the bucket is full again, so idle keys cost
 * nothing. `interval`: seconds between requests at the steady rate (period / rate);
 * `burst`: requests allowed at once beyond the steady one; `cost`: how many requests this
 * one counts for (0: look without taking). */
typedef struct {
    int allowed;        /* 1: within the limit (and counted); 0: over it (nothing counted) */
    double remaining;   /* requests still allowed right now */
    double retry_after; /* seconds until this request would be allowed (0 when allowed) */
    double reset_after; /* seconds until the bucket is full again */
    int forcible;       /* a valid entry was evicted to store this key */
} lp_shdict_gcra_t;
int lp_shdict_gcra(lp_shdict_t *d, const char *k, size_t klen, double interval, double burst,
                   double cost, lp_shdict_gcra_t *out);
int lp_shdict_expire(lp_shdict_t *d, const char *k, size_t klen, double exptime);
void lp_shdict_flush_all(lp_shdict_t *d);
/* Frees expired entries, at most max (0: all); returns how many. */
int lp_shdict_flush_expired(lp_shdict_t *d, int max);
/* The keys not expired, at most max (0: all), as an array of {base, len} in the scratch
 * buffer (*out). Returns the count, or LP_SHDICT_ENOMEM. Holds each stripe's lock while it
 * walks it: not for hot paths. */
int lp_shdict_keys(lp_shdict_t *d, int max, void **out);
/* left: lpush/lpop, else rpush/rpop. push: the list's new length. pop: ENOTFOUND when empty
 * or absent. llen: 0 when absent. */
int lp_shdict_push(lp_shdict_t *d, const char *k, size_t klen, int left, lp_shdict_val_t *v);
int lp_shdict_pop(lp_shdict_t *d, const char *k, size_t klen, int left, lp_shdict_val_t *out);
int lp_shdict_llen(lp_shdict_t *d, const char *k, size_t klen);
size_t lp_shdict_capacity(lp_shdict_t *d);
size_t lp_shdict_free_space(lp_shdict_t *d);

/* The clock TTLs use (seconds, monotonic). Tests inject theirs; NULL restores the real one.
 * Set before any thread uses a dict. */
void lp_shdict_set_clock(double (*now)(void));

#endif
