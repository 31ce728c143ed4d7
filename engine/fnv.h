/* FNV-1a 64: a hash that is the same in every process and on every run (lp_hash64 is
 * seeded per process), for what is stored or compared across processes: the cache's file
 * names (cache_store.c), the routes' fingerprint in the overlay file (rtable.c), the etcd
 * content hash (etcd.c). Not for tables a client can fill: a key can be crafted to collide. */
#ifndef LP_FNV_H
#define LP_FNV_H

#include <stddef.h>
#include <stdint.h>

#define LP_FNV1A64_INIT 0xcbf29ce484222325ULL /* the offset basis: the hash of no bytes */

/* h continued over the n bytes at p (start from LP_FNV1A64_INIT). */
static inline uint64_t lp_fnv1a64(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * 0x100000001b3ULL;
    return h;
}

#endif
