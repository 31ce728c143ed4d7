/* A zone's blocks for its fills' entries (cache_store.c): small blocks of 64-byte size classes
 * carved from 64 KiB slabs, a freed block kept on its class's list for the next entry of that
 * class. A stored miss makes one entry block; malloc makes it from fresh memory in a cache
 * that has not filled yet (about 200 instructions: glibc's arena lock, its bins searched, the
 * top split), and otherwise from a freed chunk when one of that 16-byte size is at hand: here
 * it is a list's head or a slab's next bytes, under a lock held for a few instructions.
 *
 * Memory: slabs are taken while the store's slab bytes stay within its limit (a quarter of
 * the zone's `memory`: then blocks come from malloc, as before) and are freed with the store,
 * or after a lowered limit retired them, each once its own blocks have come back
 * (lp_cache_blocks_limit). A class's free blocks
 * serve that class only: the entries are charged their exact sizes (the budget is unchanged),
 * and the slabs may hold up to the limit beside them in blocks of classes no longer asked
 * for, and 63 bytes at most per entry of rounding.
 *
 * Lifetimes: the zone holds the store; every block handed out holds a count in it (an entry
 * may outlive its zone: a hit's body in a connection's write queue). The store goes with
 * the last of its zone and its blocks (lp_cache_blocks_orphan, _free). Any thread. */
#ifndef LP_CACHE_BLOCKS_H
#define LP_CACHE_BLOCKS_H

#include <stddef.h>
#include <stdint.h>

typedef struct lp_cache_blocks_s lp_cache_blocks_t;

/* The largest block served from slabs; larger ones are malloc's. */
#define LP_CACHE_BLOCK_MAX 2048

/* A store whose slabs stay within `limit` bytes, or NULL when out of memory. */
lp_cache_blocks_t *lp_cache_blocks_new(size_t limit);
/* A new limit (a reload's `memory`). Under a lowered one every slab is retired: it hands
 * out nothing more and is given back once its own blocks out have come back (at once when it
 * has none). Fresh slabs are made while they and the retired ones still held stay within the
 * limit (the caller takes malloc's meanwhile). An entry that never goes keeps its one slab. */
void lp_cache_blocks_limit(lp_cache_blocks_t *b, size_t limit);
/* A block of at least size bytes (16-byte aligned) and its class in *cls, or NULL: too large,
 * the limit reached, or out of memory (the caller takes malloc's then). */
void *lp_cache_blocks_alloc(lp_cache_blocks_t *b, size_t size, uint8_t *cls);
/* Gives a block back to its class's list; the store goes when it was the last one of an
 * orphaned store. */
void lp_cache_blocks_free(lp_cache_blocks_t *b, void *p, uint8_t cls);
/* The zone lets go of its store: freed now when no block is out, else by the last free. */
void lp_cache_blocks_orphan(lp_cache_blocks_t *b);
/* Tests: the store's slab bytes and blocks out. */
void lp_cache_blocks_stats(lp_cache_blocks_t *b, size_t *slab_bytes, size_t *live);

#endif
