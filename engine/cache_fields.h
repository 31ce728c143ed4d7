/* The walks of a request's or response's fields the cache's hot paths make (cache_ffi.c
 * for the plugin's FFI calls, cache_native.c for the engine's own default policy): inline
 * in both, since a call per walk cost a stored miss as much as a field's test. Which fields
 * count is LP_CF_* (cache_req.h, lp_ffi_cache_fields' bits). */
#ifndef LP_CACHE_FIELDS_H
#define LP_CACHE_FIELDS_H

#include "cache_req.h"
#include "common.h"
#include "http1.h"
#include "proxy-t.h"

/* The index in LP_FFI_CACHE_FIELDS of a field name, or -1: by length first (most names a
 * request or response carries have no candidate of their length, or one). */
static inline __attribute__((always_inline)) int field_index(lp_str_t n)
{
    switch (n.len) {
    case 3:
        return LP_STR_IEQ(n, "age") ? LP_CF_AGE : -1;
    case 4: /* by the first letter: every request's Host has this length too */
        switch (n.base[0] | 0x20) {
        case 'd':
            return LP_STR_IEQ(n, "date") ? LP_CF_DATE : -1;
        case 'e':
            return LP_STR_IEQ(n, "etag") ? LP_CF_ETAG : -1;
        case 'v':
            return LP_STR_IEQ(n, "vary") ? LP_CF_VARY : -1;
        default:
            return -1;
        }
    case 5:
        return LP_STR_IEQ(n, "range") ? LP_CF_RANGE : -1;
    case 6:
        return LP_STR_IEQ(n, "pragma") ? LP_CF_PRAGMA : -1;
    case 7:
        return LP_STR_IEQ(n, "expires") ? LP_CF_EXPIRES : -1;
    case 8:
        return LP_STR_IEQ(n, "if-match")   ? LP_CF_IF_MATCH
               : LP_STR_IEQ(n, "if-range") ? LP_CF_IF_RANGE
               : LP_STR_IEQ(n, "location") ? LP_CF_LOCATION
                                           : -1;
    case 10:
        return LP_STR_IEQ(n, "set-cookie")   ? LP_CF_SET_COOKIE
               : LP_STR_IEQ(n, "connection") ? LP_CF_CONNECTION
                                             : -1;
    case 12:
        return LP_STR_IEQ(n, "cache-status") ? LP_CF_CACHE_STATUS : -1;
    case 13:
        return LP_STR_IEQ(n, "cache-control")   ? LP_CF_CACHE_CONTROL
               : LP_STR_IEQ(n, "if-none-match") ? LP_CF_IF_NONE_MATCH
               : LP_STR_IEQ(n, "authorization") ? LP_CF_AUTHORIZATION
               : LP_STR_IEQ(n, "last-modified") ? LP_CF_LAST_MODIFIED
                                                : -1;
    case 14:
        return LP_STR_IEQ(n, "content-length") ? LP_CF_CONTENT_LENGTH : -1;
    case 16:
        return LP_STR_IEQ(n, "content-location") ? LP_CF_CONTENT_LOCATION : -1;
    case 17:
        return LP_STR_IEQ(n, "if-modified-since")   ? LP_CF_IF_MODIFIED_SINCE
               : LP_STR_IEQ(n, "transfer-encoding") ? LP_CF_TRANSFER_ENCODING
                                                    : -1;
    case 19:
        return LP_STR_IEQ(n, "if-unmodified-since") ? LP_CF_IF_UNMODIFIED_SINCE : -1;
    default:
        return -1;
    }
}

/* The request's (resp 0) or the response's fields, read in place (the lists
 * lp_ffi_header_at reads, without its checks per field): *v, and how many. */
static inline unsigned fields_of(const lp_req_t *r, int resp, const lp_header_t **v)
{
    if (!resp) {
        *v = r->h1.headers;
        return r->h1.nheaders;
    }
    *v = r->resp.headers;
    return r->resp.arena ? r->resp.nheaders : 0; /* no arena: none set up yet */
}

/* Fields never stored with an entry (RFC 9111 §3.1): lua/luaproxy/cache/policy.lua's
 * NOT_STORED, which the plugin's general path applies. Inlined: most names fail on their
 * length alone, cheaper than the call. */
static inline __attribute__((always_inline)) int never_stored(lp_str_t name)
{
    switch (name.len) {
    case 2:
        return LP_STR_IEQ(name, "te");
    case 7:
        return LP_STR_IEQ(name, "upgrade") || LP_STR_IEQ(name, "trailer");
    case 10:
        return LP_STR_IEQ(name, "connection") || LP_STR_IEQ(name, "keep-alive");
    case 16:
        return LP_STR_IEQ(name, "proxy-connection");
    case 17:
        return LP_STR_IEQ(name, "transfer-encoding");
    case 18:
        return LP_STR_IEQ(name, "proxy-authenticate");
    case 19:
        return LP_STR_IEQ(name, "proxy-authorization");
    case 25:
        return LP_STR_IEQ(name, "proxy-authentication-info");
    default:
        return 0;
    }
}

/* A field into what storing the fields takes; never: whether it is one never stored. */
static inline __attribute__((always_inline)) void size_field(lp_cache_fields_size_t *sz,
                                                             const lp_header_t *h, int never)
{
    if (never) {
        sz->skip = 1;
        return;
    }
    sz->need += h->name.len + h->value.len + 4; /* "h " NAME "\t" VALUE "\n" */
    sz->nfields++;
}

/* The fields present (the mask of LP_CF_* bits), the first value of each (first[k] when bit
 * k is set; first holds LP_CF_N), the number of Cache-Control lines in *ncc, and with sz
 * (the response's) what storing its fields needs (lp__cache_store_fields' count, made in this walk
 * instead of a second one). */
static inline __attribute__((always_inline)) int
fields_walk(const lp_req_t *r, int resp, lp_str_t *first, int *ncc, lp_cache_fields_size_t *sz)
{
    const lp_header_t *v;
    unsigned n = fields_of(r, resp, &v);
    int mask = 0, cc = 0;
    lp_cache_fields_size_t size = {0, 0, 0};
    for (unsigned i = 0; i < n; i++) {
        int k = field_index(v[i].name); /* inlined: a call per field cost as much as its test */
        if (k < 0) {
            /* of the fields never stored, only Connection and Transfer-Encoding have an
             * index: the others' names are tested here */
            if (sz)
                size_field(&size, &v[i], never_stored(v[i].name));
            continue;
        }
        if (sz)
            size_field(&size, &v[i], k == LP_CF_CONNECTION || k == LP_CF_TRANSFER_ENCODING);
        if (!(mask & (1 << k)))
            first[k] = v[i].value;
        mask |= 1 << k;
        cc += k == LP_CF_CACHE_CONTROL;
    }
    *ncc = cc;
    if (sz)
        *sz = size;
    return mask;
}

/* The walk for the mask alone (a request's, on every cached GET): no values kept, no count. */
static inline __attribute__((always_inline)) int fields_mask(const lp_req_t *r, int resp)
{
    const lp_header_t *v;
    unsigned n = fields_of(r, resp, &v);
    int mask = 0;
    for (unsigned i = 0; i < n; i++) {
        int k = field_index(v[i].name);
        if (k >= 0)
            mask |= 1 << k;
    }
    return mask;
}

#endif
