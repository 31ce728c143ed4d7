/* The cache plugin's common miss run by the engine, without a Lua phase (cache_native.c):
 * on a route whose only plugin is `cache` with no Lua of the site's own in play (no
 * cache_key function, no L2 tier, no other plugin or handler that could set the key, bypass
 * or change a decision: plugins/cache.lua's compile says so in `_native`, the runtime hands
 * it over for such a route only). */
#ifndef LP_CACHE_NATIVE_H
#define LP_CACHE_NATIVE_H

#include <lua.h>

#include "proxy-t.h"

typedef struct lp_cache_native_s lp_cache_native_t;

/* The routes' native caches from the runtime's state table at state_idx (routes[i].native =
 * { zone = NAME, lock_timeout = SECONDS or -1 }): an array of cfg->nroutes, owned by the
 * caller (lp_cache_native_free), or NULL when no route has one. */
lp_cache_native_t **lp_cache_native_load(lua_State *L, int state_idx, size_t nroutes);
void lp_cache_native_free(lp_cache_native_t **all, size_t nroutes);

/* The request phase: 0 when the engine ran it for a miss (a GET without any field the
 * policy reads, whose key has no entry, and whose fill lock this request took: it goes
 * upstream), 2 when it answered a hit on an entry the plugin served a plain hit on before
 * (lp_ffi_cache_native_hit) and still fresh, else 1 (the plugin's Lua runs, as without
 * this). */
int lp_cache_native_request(lp_req_t *req);
/* The response phase of a request the engine ran the request phase of: 0 when the engine
 * stored (or did not store) the response as the plugin decided for a response of the same
 * status, shape and Cache-Control value before (lp_ffi_cache_native_learn), else 1 (the
 * plugin's Lua runs). */
int lp_cache_native_response(lp_req_t *req);

#endif
