/* The waf plugin's Hyperscan match callback (lua/luaproxy/waf/hs.lua calls hs_scan through
 * the FFI). Hyperscan reports matches through a C callback; a Lua one would force the
 * scanning Lua to run interpreted (LuaJIT refuses callbacks from compiled code), which
 * costs more than the scan. This one only records ids: the engine need not link Hyperscan. */
struct lp_req_s; /* lua_api.h names it; nothing here uses it */
#include "lua_api.h"

int lp_ffi_waf_hs_collect(unsigned int id, unsigned long long from, unsigned long long to,
                          unsigned int flags, void *ctx)
{
    (void)from;
    (void)to;
    (void)flags;
    lp_waf_hits_t *h = ctx;
    if (h->n < h->cap)
        h->ids[h->n++] = id;
    else
        h->more = 1;
    return 0; /* go on: every pattern that matches is wanted */
}
