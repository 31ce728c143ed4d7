/* The balancer's shared parts: the policy table, init/destroy, the hash and the rng. */
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "balancer.h"

static const lp_balancer_ops_t *const policies[] = {
    &lp_balancer_round_robin,
    &lp_balancer_least_conn,
    &lp_balancer_p2c,
    &lp_balancer_hash,
};

const lp_balancer_ops_t *lp_balancer_find(const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < LP_ARRAY_LEN(policies); i++)
        if (strcmp(policies[i]->name, name) == 0)
            return policies[i];
    return NULL;
}

int lp_balancer_init(lp_balancer_t *b, const lp_balancer_ops_t *ops, lp_bal_target_t *targets,
                     size_t n, uint64_t seed)
{
    if (!ops || (n && !targets))
        return LP_EINVAL;
    /* select returns an int index. */
    if (n > INT_MAX)
        return LP_ELIMIT;
    b->ops = ops;
    b->targets = targets;
    b->n = n;
    /* xorshift never leaves 0; any other constant will do. */
    b->rng = seed ? seed : 0x9E3779B97F4A7C15ull;
    b->state = NULL;
    return ops->init(b);
}

void lp_balancer_destroy(lp_balancer_t *b)
{
    if (b->ops)
        b->ops->destroy(b);
    b->state = NULL;
}

uint64_t lp__balancer_rand(lp_balancer_t *b)
{
    uint64_t x = b->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    b->rng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

uint32_t lp__balancer_rand_below(lp_balancer_t *b, uint32_t n)
{
    /* Lemire's multiply-shift: no division, bias below 2^-32 for our small n. */
    return (uint32_t)(((lp__balancer_rand(b) >> 32) * (uint64_t)n) >> 32);
}

/* ---- lp_balancer_hash64 ---- */

#define H_P1 0x9E3779B185EBCA87ull
#define H_P2 0xC2B2AE3D27D4EB4Full
#define H_P3 0x165667B19E3779F9ull
#define H_P4 0x85EBCA77C2B2AE63ull
#define H_P5 0x27D4EB2F165667C5ull

static inline uint64_t rotl64(uint64_t x, int r)
{
    return (x << r) | (x >> (64 - r));
}

static inline uint64_t load64le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline uint64_t load32le(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24;
}

uint64_t lp_balancer_hash64(const void *data, size_t len, uint64_t seed)
{
    const unsigned char *p = data;
    uint64_t h = seed + H_P5 + (uint64_t)len;
    /* One lane for every length: keys are short (an address, a cookie), and each 8-byte word
     * goes through a full multiply-rotate-multiply round before it is folded in. */
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t k = rotl64(load64le(p) * H_P2, 31) * H_P1;
        h = rotl64(h ^ k, 27) * H_P1 + H_P4;
    }
    if (len >= 4) {
        h = rotl64(h ^ (load32le(p) * H_P1), 23) * H_P2 + H_P3;
        p += 4;
        len -= 4;
    }
    for (; len; p++, len--)
        h = rotl64(h ^ (*p * H_P5), 11) * H_P1;
    /* murmur3's fmix64: every input bit flips each output bit with probability ~1/2. */
    h ^= h >> 33;
    h *= 0xFF51AFD7ED558CCDull;
    h ^= h >> 33;
    h *= 0xC4CEB9FE1A85EC53ull;
    h ^= h >> 33;
    return h;
}
