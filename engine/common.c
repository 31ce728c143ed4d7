#include "common.h"
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

const char *lp_strerror(int code)
{
    switch (code) {
    case 0:
        return "ok";
#define LP_E_STR(name, c, msg)                                                                     \
    case c:                                                                                        \
        return msg;
        LP_ERRNO_MAP(LP_E_STR)
#undef LP_E_STR
    }
    return "unknown error";
}

/* Set before main (and when lp_native is loaded), then only read: no lock needed. */
static uint64_t hash_seed;

__attribute__((constructor)) static void hash_seed_init(void)
{
    uint64_t s = 0;
    if (getrandom(&s, sizeof(s), GRND_NONBLOCK) != (ssize_t)sizeof(s))
        s = (uint64_t)time(NULL) * 0x9e3779b97f4a7c15ULL ^ (uint64_t)getpid() << 32;
    hash_seed = s;
}

uint64_t lp_hash64(const void *key, size_t n)
{
    const unsigned char *k = key;
    /* Eight bytes per multiply (keys are short, and this runs on every lookup), then a
     * final mix: high bits may pick a stripe, low bits a bucket. */
    uint64_t h = hash_seed ^ 0x9e3779b97f4a7c15ULL ^ n;
    /* Two words per turn (the same steps as one at a time: the same hash), for the loop's
     * own cost on keys of a few dozen bytes (a cache key: method, authority and target). */
    while (n >= 16) {
        uint64_t a, b;
        memcpy(&a, k, 8);
        memcpy(&b, k + 8, 8);
        h = (h ^ a) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        h = (h ^ b) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        k += 16;
        n -= 16;
    }
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, k, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
        k += 8;
        n -= 8;
    }
    /* The last 0-7 bytes without a variable-length copy: two overlapping 4-byte reads, or
     * the first, middle and last byte (as wyhash does). */
    uint64_t w = 0;
    if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, k, 4);
        memcpy(&b, k + n - 4, 4);
        w = (uint64_t)a << 32 | b;
    } else if (n) {
        w = (uint64_t)k[0] << 16 | (uint64_t)k[n / 2] << 8 | k[n - 1];
    }
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 32;
    return h;
}

int lp_grow(void **p, size_t *cap, size_t need, size_t size, size_t first)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : first ? first : 1;
    while (n < need)
        n = n > SIZE_MAX / 2 ? need : n * 2;
    if (size && n > SIZE_MAX / size)
        return -1;
    void *q = realloc(*p, n * size);
    if (!q)
        return -1;
    *p = q;
    *cap = n;
    return 0;
}
