/* proxy.router's FFI functions (lua/luaproxy/router.lua) over the compiled router. Built
 * into the engine and, alone with router.c, into the library the specs load. */
#include <arpa/inet.h>
#include <string.h>
struct lp_req_s; /* lua_api.h names it; this file does not need the engine */
#include "lua_api.h"
#include "router.h"

void *lp_ffi_router_builder(void)
{
    return lp_rbuild_new();
}

int lp_ffi_router_route(void *b)
{
    return lp_rbuild_route(b);
}

int lp_ffi_router_add(void *b, int kind, int mode, const char *name, size_t nlen, const char *value,
                      size_t vlen, char *err, size_t errlen)
{
    return lp_rbuild_add(b, kind, mode, name, nlen, value, vlen, err, errlen);
}

void *lp_ffi_router_finish(void *b, char *err, size_t errlen)
{
    return lp_rbuild_finish(b, err, errlen);
}

void lp_ffi_router_builder_free(void *b)
{
    lp_rbuild_free(b);
}

void lp_ffi_router_free(void *r)
{
    lp_router_free(r);
}

int lp_ffi_router_nnames(void *r, int kind)
{
    return (int)lp_router_nnames(r, kind);
}

const char *lp_ffi_router_name(void *r, int kind, int i)
{
    return i < 0 ? NULL : lp_router_name(r, kind, (size_t)i);
}

int lp_ffi_router_match(void *r, const lp_str_t *in, const lp_str_t *hvals, const lp_str_t *qvals,
                        int from, int *meta, lp_str_t *names, lp_str_t *values)
{
    lp_route_in_t ri;
    memset(&ri, 0, sizeof(ri));
    ri.method = in[0];
    ri.host = in[1];
    ri.path = in[2];
    ri.sni = in[3];
    if (in[4].base && in[4].len < 64) {
        char ip[64];
        memcpy(ip, in[4].base, in[4].len);
        ip[in[4].len] = 0;
        if (inet_pton(AF_INET, ip, ri.addr) == 1)
            ri.family = 4;
        else if (inet_pton(AF_INET6, ip, ri.addr) == 1)
            ri.family = 6;
    }
    ri.hvals = hvals;
    ri.qvals = qvals;
    lp_route_out_t out;
    int idx = lp_router_match(r, &ri, from, &out);
    meta[0] = (int)out.ncaps;
    meta[1] = out.predicate;
    for (unsigned i = 0; i < out.ncaps; i++) {
        names[i] = (lp_str_t){out.caps[i].name, strlen(out.caps[i].name)};
        values[i] = out.caps[i].value;
    }
    return idx;
}

typedef struct {
    int *pairs; /* borrowed: max pairs */
    int max, n;
} shadow_pairs_t;

static void shadow_pair(void *ud, size_t route, size_t by)
{
    shadow_pairs_t *p = ud;
    if (p->n < p->max) {
        p->pairs[2 * p->n] = (int)route;
        p->pairs[2 * p->n + 1] = (int)by;
    }
    p->n++;
}

int lp_ffi_router_shadows(void *r, int *pairs, int max)
{
    shadow_pairs_t p = {pairs, max, 0};
    lp_router_shadows(r, shadow_pair, &p);
    return p.n;
}

int lp_ffi_router_shadow_text(char *out, size_t n, int route, const char *name, int by,
                              const char *by_name)
{
    if (route < 0 || by < 0)
        return -1;
    return lp_router_shadow_text(out, n, (size_t)route, name, (size_t)by, by_name);
}
