/* hash: consistent hashing on the key bytes given to select (the caller derives the key from
 * the client address, a header, a cookie, the path or a query argument), with Maglev's lookup
 * table (Eisenbud et al., NSDI 2016), weighted as Envoy does it.
 *
 * Each target has a permutation of the table's M slots (M prime) drawn from two hashes of its
 * id: offset = h1 % M, skip = h2 % (M - 1) + 1, slot j = (offset + j * skip) % M. The table
 * is filled in rounds; in each round a target with enough weight credit claims the next free
 * slot of its permutation, so targets own slots in proportion to weight (to within one slot)
 * and a key's target is table[hash(key) % M]. Removing one of N targets hands only its slots
 * to the others (plus a sliver of reshuffle): about 1/N of keys move.
 *
 * Down targets stay in the table: a key whose slot belongs to an unavailable or tried target
 * walks forward to the next slot owned by one that is neither. The walk is deterministic, so
 * a retry of the same key lands on the same second choice, a down target's keys spread over
 * the others in proportion to their slots, and when it comes back it gets exactly its keys
 * back. The table is rebuilt only when an id, a weight or the set changes.
 *
 * Memory: M uint16_t per balancer (M = 65537 up to 655 targets, then the next prime >= 100
 * N: 128 KB), hence at most 65535 targets. */
#include <stdio.h>
#include <stdlib.h>
#include "common.h"
#include "balancer.h"

#define HASH_MIN_TABLE   65537u /* prime */
#define HASH_MAX_TARGETS 65535u /* 0xFFFF marks an empty slot while filling */
#define HASH_EMPTY       0xFFFFu
#define HASH_SEED_OFFSET 0x6d61676c65763121ull
#define HASH_SEED_SKIP   0x736b697070657232ull
#define HASH_SEED_KEY    0x6b65792d68617368ull

typedef struct {
    uint16_t *table; /* owned, m slots: the owning target's index */
    uint32_t m;
    size_t n;
    uint64_t *sig; /* owned, n entries: hash of each target's id and weight at build time */
} hash_state_t;

static int is_prime(uint32_t x)
{
    if (x < 2)
        return 0;
    for (uint32_t d = 2; (uint64_t)d * d <= x; d++)
        if (x % d == 0)
            return 0;
    return 1;
}

/* Maglev wants M >= 100 N for an even spread. */
static uint32_t table_size(size_t n)
{
    uint32_t m = HASH_MIN_TABLE;
    if (n * 100 > m)
        for (m = (uint32_t)(n * 100); !is_prime(m); m++)
            ;
    return m;
}

/* The two hashes of a target's identity. */
static void target_hashes(const lp_bal_target_t *t, size_t i, uint64_t *h1, uint64_t *h2)
{
    char buf[32];
    const char *id = t->id;
    size_t len;
    if (id) {
        len = strlen(id);
    } else {
        len = (size_t)snprintf(buf, sizeof(buf), "#%zu", i);
        id = buf;
    }
    *h1 = lp_balancer_hash64(id, len, HASH_SEED_OFFSET);
    *h2 = lp_balancer_hash64(id, len, HASH_SEED_SKIP);
}

static uint64_t target_sig(const lp_bal_target_t *t, size_t i)
{
    uint64_t h1, h2;
    target_hashes(t, i, &h1, &h2);
    return h1 ^ (h2 * (2 * (uint64_t)lp__balancer_weight(t) + 1));
}

static void free_state(hash_state_t *st)
{
    if (!st)
        return;
    free(st->table);
    free(st->sig);
    free(st);
}

typedef struct {
    uint32_t next; /* the next slot of the permutation to try */
    uint32_t skip;
    uint64_t credit;
    uint64_t h1;
    size_t idx; /* the target's index in b->targets */
} fill_t;

/* Fill order: by identity, not by position, so two proxies that list the same targets in a
 * different order (or get DNS answers shuffled) build the same table. */
static int fill_cmp(const void *a, const void *b)
{
    const fill_t *x = a, *y = b;
    if (x->h1 != y->h1)
        return x->h1 < y->h1 ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

/* (slot + skip) % m without a division: both are below m. */
static inline uint32_t step(uint32_t slot, uint32_t skip, uint32_t m)
{
    uint64_t s = (uint64_t)slot + skip;
    return (uint32_t)(s >= m ? s - m : s);
}

static int build(lp_balancer_t *b)
{
    size_t n = b->n;
    if (n > HASH_MAX_TARGETS)
        return LP_ELIMIT;
    hash_state_t *st = calloc(1, sizeof(*st));
    fill_t *f = calloc(n ? n : 1, sizeof(*f));
    if (!st || !f || !(st->sig = calloc(n ? n : 1, sizeof(*st->sig))))
        goto nomem;
    st->n = n;
    for (size_t i = 0; i < n; i++)
        st->sig[i] = target_sig(&b->targets[i], i);
    if (n) {
        st->m = table_size(n);
        if (!(st->table = malloc(st->m * sizeof(*st->table))))
            goto nomem;
        for (uint32_t s = 0; s < st->m; s++)
            st->table[s] = HASH_EMPTY;
        uint64_t maxw = 1;
        for (size_t i = 0; i < n; i++) {
            uint64_t h1, h2;
            target_hashes(&b->targets[i], i, &h1, &h2);
            f[i].next = (uint32_t)(h1 % st->m);
            f[i].skip = (uint32_t)(h2 % (st->m - 1) + 1);
            f[i].h1 = h1;
            f[i].idx = i;
            if (lp__balancer_weight(&b->targets[i]) > maxw)
                maxw = lp__balancer_weight(&b->targets[i]);
        }
        qsort(f, n, sizeof(*f), fill_cmp);
        /* Rounds: every target earns its weight in credit per round and claims one slot per
         * max-weight of credit, so the heaviest claims each round and the others in
         * proportion. M is prime, so each permutation visits every slot. */
        uint32_t filled = 0;
        while (filled < st->m) {
            for (fill_t *e = f; e < f + n && filled < st->m; e++) {
                e->credit += lp__balancer_weight(&b->targets[e->idx]);
                if (e->credit < maxw)
                    continue;
                e->credit -= maxw;
                while (st->table[e->next] != HASH_EMPTY)
                    e->next = step(e->next, e->skip, st->m);
                st->table[e->next] = (uint16_t)e->idx;
                e->next = step(e->next, e->skip, st->m);
                filled++;
            }
        }
    }
    free(f);
    b->state = st;
    return 0;
nomem:
    free(f);
    free_state(st);
    return LP_ENOMEM;
}

static int hash_init(lp_balancer_t *b)
{
    return build(b);
}

static void hash_destroy(lp_balancer_t *b)
{
    free_state(b->state);
    b->state = NULL;
}

static int hash_update(lp_balancer_t *b)
{
    hash_state_t *st = b->state;
    int same = st && st->n == b->n;
    for (size_t i = 0; same && i < b->n; i++)
        same = st->sig[i] == target_sig(&b->targets[i], i);
    if (same)
        return 0;
    hash_destroy(b);
    return build(b);
}

static int any_eligible(lp_balancer_t *b, const uint64_t *tried)
{
    for (size_t i = 0; i < b->n; i++)
        if (lp__balancer_eligible(b, tried, i))
            return 1;
    return 0;
}

static int hash_select(lp_balancer_t *b, const void *key, size_t keylen, const uint64_t *tried,
                       uint64_t now_ns)
{
    hash_state_t *st = b->state;
    if (!st || !st->table)
        return -1;
    /* No key (the header or cookie is absent): a random slot, i.e. a weighted random pick. */
    uint32_t slot = key && keylen
                        ? (uint32_t)(lp_balancer_hash64(key, keylen, HASH_SEED_KEY) % st->m)
                        : lp__balancer_rand_below(b, st->m);
    for (uint32_t k = 0; k < st->m; k++) {
        size_t i = st->table[slot];
        if (i < b->n && lp__balancer_eligible(b, tried, i))
            return (int)i;
        /* A long walk: make sure it can end before walking the whole table. */
        if (k == 64 && !any_eligible(b, tried))
            return -1;
        if (++slot == st->m)
            slot = 0;
    }
    return -1;
}

const lp_balancer_ops_t lp_balancer_hash = {
    .name = "hash",
    .init = hash_init,
    .select = hash_select,
    .report = NULL,
    .update = hash_update,
    .destroy = hash_destroy,
};
