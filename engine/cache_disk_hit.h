/* A hit on an entry only on disk (cache_disk_hit.c). */
#ifndef LP_CACHE_DISK_HIT_H
#define LP_CACHE_DISK_HIT_H

#include "cache_store.h"
#include "proxy-t.h"

/* Reads stub's file back on the threadpool with the running task parked (Lua waits right
 * after the FFI call returns); when it is done, r->cache.loaded holds the entry read back
 * (NULL: damaged, changed or gone: a miss) and r->cache.load_done is set. 0, or -1 when the
 * task cannot wait here (nothing started: a miss). */
int lp_cache_disk_load(lp_req_t *r, lp_cache_zone_t *z, lp_cache_entry_t *stub);

#endif
