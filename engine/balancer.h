/* Target selection for one upstream: load-balancing policies behind one small vtable (h2o's
 * balancer style), each policy in its own file (engine/balancer_<policy>.c).
 *
 * Per worker, single-threaded: no locking. The caller owns the target array and keeps each
 * target's `active` and `available` current; it calls lp_balancer_update() after changing a
 * weight, an id or the set itself (targets/n). See docs/balancing.md. */
#ifndef LP_BALANCER_H
#define LP_BALANCER_H

#include <stddef.h>
#include <stdint.h>

typedef struct lp_balancer_s lp_balancer_t;

/* One target as the policies see it (owned by the caller). */
typedef struct {
    const char *id;  /* stable identity, e.g. "127.0.0.1:9001" (NUL-terminated, caller-owned);
                        hash builds its table from it. NULL: the index stands in (then every
                        change of the set remaps more keys than it must). */
    unsigned weight; /* >= 1 (0 counts as 1) */
    unsigned active; /* requests in flight to this target (the caller keeps it current) */
    int available;   /* 0: down/drained: never picked */
} lp_bal_target_t;

/* A policy. Every function but init/select/destroy may be NULL (the wrappers check).
 * Return conventions: init/update 0 or a negative LP_E* code; select an index or -1. */
typedef struct {
    const char *name; /* "round_robin", "least_conn", "p2c", "hash" */
    /* b->targets, b->n and b->rng are set; allocates b->state. */
    int (*init)(lp_balancer_t *b);
    /* One target for one try: neither unavailable nor set in `tried` (a bitmap of n bits in
     * uint64_t words, NULL: none tried). -1 when none is left. `key` is for hash (NULL or
     * keylen 0: no key); `now_ns` is a monotonic clock for p2c; the others ignore both. */
    int (*select)(lp_balancer_t *b, const void *key, size_t keylen, const uint64_t *tried,
                  uint64_t now_ns);
    /* After each try to target `idx`: its latency (to the response head) and whether the try
     * failed (connect error, timeout, reset). `now_ns` on the same clock as select's. */
    void (*report)(lp_balancer_t *b, int idx, uint64_t latency_ns, int failed, uint64_t now_ns);
    /* Weights, ids or the set (targets/n) changed; availability alone needs no call. On
     * error the policy drops its state and select returns -1 until an update succeeds. */
    int (*update)(lp_balancer_t *b);
    /* Frees b->state; the balancer may be init'ed again. */
    void (*destroy)(lp_balancer_t *b);
    /* Optional (p2c): target idx's latency EWMA in ns as of the last report, 0 before any
     * (the metric luaproxy_upstream_latency_ewma_seconds). */
    double (*ewma)(const lp_balancer_t *b, int idx);
} lp_balancer_ops_t;

struct lp_balancer_s {
    const lp_balancer_ops_t *ops;
    lp_bal_target_t *targets; /* owned by the caller, n entries */
    size_t n;
    uint64_t rng; /* per-balancer xorshift state (seeded by the caller; 0 is replaced) */
    void *state;  /* the policy's own (owned by the policy) */
};

extern const lp_balancer_ops_t lp_balancer_round_robin; /* balancer_rr.c */
extern const lp_balancer_ops_t lp_balancer_least_conn;  /* balancer_least_conn.c */
extern const lp_balancer_ops_t lp_balancer_p2c;         /* balancer_p2c.c */
extern const lp_balancer_ops_t lp_balancer_hash;        /* balancer_hash.c */

/* The policy named `name` (one of the ops' names above); NULL if unknown. */
const lp_balancer_ops_t *lp_balancer_find(const char *name);

/* Fills `b` and calls ops->init. `targets` stays the caller's. 0 or a negative LP_E* code
 * (LP_ENOMEM; LP_ELIMIT when n is beyond what the policy supports: hash takes <= 65535). */
int lp_balancer_init(lp_balancer_t *b, const lp_balancer_ops_t *ops, lp_bal_target_t *targets,
                     size_t n, uint64_t seed);
void lp_balancer_destroy(lp_balancer_t *b);

static inline int lp_balancer_select(lp_balancer_t *b, const void *key, size_t keylen,
                                     const uint64_t *tried, uint64_t now_ns)
{
    return b->ops->select(b, key, keylen, tried, now_ns);
}

static inline void lp_balancer_report(lp_balancer_t *b, int idx, uint64_t latency_ns, int failed,
                                      uint64_t now_ns)
{
    if (b->ops->report && idx >= 0 && (size_t)idx < b->n)
        b->ops->report(b, idx, latency_ns, failed, now_ns);
}

static inline int lp_balancer_update(lp_balancer_t *b)
{
    return b->ops->update ? b->ops->update(b) : 0;
}

/* The "tried" bitmap: LP_BALANCER_TRIED_WORDS(n) words of uint64_t, zeroed per request. */
#define LP_BALANCER_TRIED_WORDS(n) (((n) + 63) / 64)

static inline int lp_balancer_tried(const uint64_t *tried, size_t i)
{
    return tried && ((tried[i / 64] >> (i % 64)) & 1);
}

static inline void lp_balancer_mark_tried(uint64_t *tried, size_t i)
{
    tried[i / 64] |= 1ull << (i % 64);
}

/* A 64-bit hash of a byte range (xxh64-style lanes, murmur3 finalizer). Stable across
 * processes and hosts (bytes are read little-endian), so proxies agree on a key's target. */
uint64_t lp_balancer_hash64(const void *data, size_t len, uint64_t seed);

/* For the policies (internal). */
uint64_t lp__balancer_rand(lp_balancer_t *b);                   /* xorshift64* */
uint32_t lp__balancer_rand_below(lp_balancer_t *b, uint32_t n); /* [0, n), n >= 1 */

static inline unsigned lp__balancer_weight(const lp_bal_target_t *t)
{
    return t->weight ? t->weight : 1;
}

/* Neither down nor tried: select may return it. */
static inline int lp__balancer_eligible(const lp_balancer_t *b, const uint64_t *tried, size_t i)
{
    return b->targets[i].available && !lp_balancer_tried(tried, i);
}

#endif
