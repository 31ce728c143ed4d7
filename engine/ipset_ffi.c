/* The FFI side of IP sets (engine/ipset.h) for the ip_filter plugin and proxy.ipset: thin
 * calls. A set is built and read by one worker's VM; ffi.gc frees it with its Lua object. */
struct lp_req_s; /* named by lua_api.h; this file needs nothing else of the engine */
#include "ipset.h"
#include "lua_api.h"

void *lp_ffi_ipset_new(void)
{
    return lp_ipset_new();
}

void lp_ffi_ipset_free(void *s)
{
    lp_ipset_free(s);
}

int lp_ffi_ipset_add(void *s, const char *text, size_t len, int value)
{
    return lp_ipset_add(s, text, len, value);
}

int lp_ffi_ipset_add_file(void *s, const char *path, int value, char *err, size_t errlen)
{
    return lp_ipset_add_file(s, path, value, err, errlen);
}

int lp_ffi_ipset_build(void *s)
{
    return lp_ipset_build(s);
}

int lp_ffi_ipset_find(const void *s, const char *text, size_t len)
{
    return lp_ipset_find(s, text, len);
}
