/* The FFI side of proxy.shared (lua/luaproxy/shared.lua): thin calls into shdict.c. */
struct lp_req_s; /* named by lua_api.h; this file needs nothing else of the engine */
#include "lua_api.h"
#include "shdict.h"

void *lp_ffi_shdict_find(const char *name, size_t n)
{
    /* The registry holds every dict a live config declares; shared.lua asks only for the
     * names its own config declares, and its generation's config holds the reference. */
    return lp_shdict_lookup(name, n);
}

int lp_ffi_shdict_get(void *d, const char *k, size_t klen, int stale, lp_shdict_val_t *out)
{
    return lp_shdict_get(d, k, klen, stale, out);
}

int lp_ffi_shdict_store(void *d, int op, const char *k, size_t klen, lp_shdict_val_t *v,
                        double exptime)
{
    return lp_shdict_store(d, op, k, klen, v, exptime);
}

int lp_ffi_shdict_incr(void *d, const char *k, size_t klen, double step, int has_init, double init,
                       double init_ttl, lp_shdict_val_t *out)
{
    return lp_shdict_incr(d, k, klen, step, has_init, init, init_ttl, out);
}

int lp_ffi_shdict_gcra(void *d, const char *k, size_t klen, double interval, double burst,
                       double cost, lp_shdict_gcra_t *out)
{
    return lp_shdict_gcra(d, k, klen, interval, burst, cost, out);
}

int lp_ffi_shdict_ttl(void *d, const char *k, size_t klen, lp_shdict_val_t *out)
{
    return lp_shdict_ttl(d, k, klen, &out->num);
}

int lp_ffi_shdict_expire(void *d, const char *k, size_t klen, double exptime)
{
    return lp_shdict_expire(d, k, klen, exptime);
}

void lp_ffi_shdict_flush_all(void *d)
{
    lp_shdict_flush_all(d);
}

int lp_ffi_shdict_flush_expired(void *d, int max)
{
    return lp_shdict_flush_expired(d, max);
}

int lp_ffi_shdict_keys(void *d, int max, lp_str_t **out)
{
    void *arr = NULL;
    int n = lp_shdict_keys(d, max, &arr);
    *out = arr;
    return n;
}

int lp_ffi_shdict_push(void *d, const char *k, size_t klen, int left, lp_shdict_val_t *v)
{
    return lp_shdict_push(d, k, klen, left, v);
}

int lp_ffi_shdict_pop(void *d, const char *k, size_t klen, int left, lp_shdict_val_t *out)
{
    return lp_shdict_pop(d, k, klen, left, out);
}

int lp_ffi_shdict_llen(void *d, const char *k, size_t klen)
{
    return lp_shdict_llen(d, k, klen);
}

double lp_ffi_shdict_capacity(void *d)
{
    return (double)lp_shdict_capacity(d);
}

double lp_ffi_shdict_free_space(void *d)
{
    return (double)lp_shdict_free_space(d);
}
