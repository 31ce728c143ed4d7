/* The response cache on the admin API (admin.c): zone counters for GET /status and purges for
 * DELETE /cache/NAME. Main thread; the zones are shared (cache_store.h). */
#ifndef LP_CACHE_ADMIN_H
#define LP_CACHE_ADMIN_H

#include <jansson.h>
#include "common.h"
#include "config.h"

/* GET /status "cache": { NAME: { entries, bytes, capacity, max_object_size, hit, miss,
 * expired, stale, revalidated, bypass, stored, abandoned, evicted, variants_dropped, native, disk
 * }, ... } for the zones cfg declares. */
json_t *lp_cache_admin_status(const lp_config_t *cfg);
/* DELETE /cache/NAME with ?key=K (every variant of that key), ?prefix=P, or nothing (all).
 * Fills *status with the HTTP status and returns the answer's JSON. */
json_t *lp_cache_admin_purge(const lp_config_t *cfg, lp_str_t name, lp_str_t query, int *status);

#endif
