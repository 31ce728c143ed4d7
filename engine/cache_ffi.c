/* The response cache's FFI functions (the cache plugin's calls, lua/luaproxy/cache.lua) and
 * its hooks on the request path (cache_req.h). The store (cache_store.c) knows bytes; the
 * policy is Lua's. Everything here runs on the request's worker thread. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cache_req.h"
#include "cache_store.h"
#include "lua_api.h"
#include "lua_vm.h"

void lp__lua_mark_responded(void);

static double real_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Heads read out of the store land here (copied under the zone's lock), then ffi.string. One
 * per thread; grown as needed, never shrunk (heads are small). */
static _Thread_local char *scratch;
static _Thread_local size_t scratch_cap;

/* ---- the request path ---- */

void lp_cache_req_head(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (rc->fill && !lp_cache_fill_active(rc->fill)) {
        lp_cache_fill_abandon(rc->fill);
        rc->fill = NULL;
    }
}

void lp_cache_req_tee(lp_req_t *req, const char *at, size_t len)
{
    lp_req_cache_t *rc = &req->cache;
    if (!rc->fill || !len)
        return;
    if (lp_cache_fill_append(rc->fill, at, len)) {
        lp_cache_fill_abandon(rc->fill); /* over max_object_size: the response passes on */
        rc->fill = NULL;
    }
}

void lp_cache_req_done(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (!rc->fill)
        return;
    lp_cache_fill_t *f = rc->fill;
    rc->fill = NULL;
    if (lp_cache_fill_active(f) && !(req->flags & LP_RF_LOCAL))
        lp_cache_fill_commit(f);
    else
        lp_cache_fill_abandon(f);
}

void lp_cache_req_body_done(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (rc->pin)
        lp_buf_unref(rc->pin); /* the batches' pins keep the entry until their writes end */
    rc->pin = NULL;
    lp_cache_entry_unref(rc->body);
    rc->body = NULL;
    rc->chunk = NULL;
    rc->chunk_off = 0;
    rc->left = 0;
}

void lp_cache_req_end(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (rc->fill)
        lp_cache_fill_abandon(rc->fill);
    rc->fill = NULL;
    lp_cache_entry_unref(rc->hit);
    rc->hit = NULL;
    rc->hit_zone = NULL;
    lp_cache_req_body_done(req);
}

/* A pin over an entry: an lp_buf_t whose data holds the entry pointer (a reference) and
 * whose release drops it. Write batches take a reference per iovec; the last one (the batch's
 * write callback, or the request's own in lp_cache_req_body_done) frees it. Its refs are
 * counted on this worker's thread only, like every block's. */
static void pin_release(lp_buf_t *b)
{
    lp_cache_entry_t *e;
    memcpy(&e, b->data, sizeof(e));
    lp_cache_entry_unref(e);
    free(b);
}

lp_buf_t *lp_cache_req_pin(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    if (rc->pin)
        return rc->pin;
    lp_buf_t *b = calloc(1, sizeof(*b) + sizeof(lp_cache_entry_t *));
    if (!b)
        return NULL;
    b->refs = 1; /* rc->pin's */
    b->cap = sizeof(lp_cache_entry_t *);
    b->release = pin_release;
    lp_cache_entry_t *e = lp_cache_entry_ref(rc->body);
    memcpy(b->data, &e, sizeof(e));
    rc->pin = b;
    return b;
}

char *lp_cache_req_copy(lp_req_t *req)
{
    lp_req_cache_t *rc = &req->cache;
    char *out = malloc(rc->left ? rc->left : 1);
    if (!out)
        return NULL;
    size_t n = 0;
    const lp_cache_chunk_t *c = rc->chunk;
    size_t off = rc->chunk_off;
    while (n < rc->left && c) {
        size_t k = c->len - off;
        if (k > rc->left - n)
            k = (size_t)(rc->left - n);
        memcpy(out + n, c->data + off, k);
        n += k;
        c = c->next;
        off = 0;
    }
    return out;
}

/* ---- FFI ---- */

void *lp_ffi_cache_zone(const char *name, size_t n)
{
    /* The registry holds every zone a live config declares; cache.lua asks only for names its
     * own config declares, and its generation's config holds the reference. */
    return lp_cache_zone_find(name, n);
}

int lp_ffi_cache_get(void *rp, void *zone, const char *key, size_t klen, const char *sec,
                     size_t slen, lp_str_t *head, double *body_len)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    lp_req_cache_t *rc = &r->cache;
    lp_cache_entry_unref(rc->hit);
    rc->hit = lp_cache_get(zone, key, klen, sec, slen, real_now());
    rc->hit_zone = rc->hit ? zone : NULL;
    if (!rc->hit)
        return 0;
    for (;;) {
        size_t n = lp_cache_entry_head(zone, rc->hit, scratch, scratch_cap);
        if (n <= scratch_cap) {
            *head = (lp_str_t){scratch, n};
            break;
        }
        char *s = realloc(scratch, n);
        if (!s) {
            lp_cache_entry_unref(rc->hit);
            rc->hit = NULL;
            return LP_FFI_ENOSPACE;
        }
        scratch = s;
        scratch_cap = n;
    }
    *body_len = (double)lp_cache_entry_body_len(rc->hit);
    return 1;
}

int lp_ffi_cache_lock(void *rp, void *zone, const char *key, size_t klen, double timeout)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    if (r->cache.fill)
        return 1; /* this request holds one already (a revalidation after a wait) */
    int busy;
    r->cache.fill = lp_cache_lock(zone, key, klen, timeout, real_now(), &busy);
    if (r->cache.fill)
        return 1;
    return busy ? 0 : LP_FFI_ENOSPACE;
}

int lp_ffi_cache_locked(void *zone, const char *key, size_t klen)
{
    return lp_cache_locked(zone, key, klen);
}

int lp_ffi_cache_store(void *rp, void *zone, const char *key, size_t klen, const char *sec,
                       size_t slen, const char *head, size_t hlen, double keep)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    /* Only an upstream's body can be gathered: a HEAD's has none, a local answer is not one. */
    if ((r->flags & (LP_RF_HEAD | LP_RF_LOCAL)) || !r->try.peer)
        return LP_FFI_EINVAL;
    const lp_h1_t *h = &r->try.peer->h1;
    uint64_t hint = (h->flags & LP_H1F_LENGTH) ? h->content_length : 0;
    lp_cache_fill_t *f = r->cache.fill;
    if (f && lp_cache_fill_active(f))
        return LP_FFI_EINVAL; /* stored once already */
    r->cache.fill = NULL;
    f = lp_cache_fill_start(zone, f, key, klen, sec, slen, head, hlen, real_now() + keep, hint);
    if (!f)
        return LP_FFI_ENOSPACE; /* too large, key too long, or out of memory */
    r->cache.fill = f; /* an empty body is complete with the response (lp_cache_req_done) */
    return 0;
}

int lp_ffi_cache_put(void *zone, const char *key, size_t klen, const char *sec, size_t slen,
                     const char *head, size_t hlen, const char *body, size_t blen, double keep)
{
    lp_cache_fill_t *f =
        lp_cache_fill_start(zone, NULL, key, klen, sec, slen, head, hlen, real_now() + keep, blen);
    if (!f)
        return LP_FFI_ENOSPACE;
    if (blen && lp_cache_fill_append(f, body, blen)) {
        lp_cache_fill_abandon(f);
        return LP_FFI_ENOSPACE;
    }
    return lp_cache_fill_commit(f) ? LP_FFI_ENOSPACE : 0;
}

int lp_ffi_cache_respond(void *rp, int status, double first, double last)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    lp_req_cache_t *rc = &r->cache;
    if (!rc->hit || status < 200 || status > 999)
        return LP_FFI_EINVAL;
    uint64_t len = lp_cache_entry_body_len(rc->hit);
    uint64_t from = 0, to = len; /* [from, to) */
    if (first <= -2 || status == 204 || status == 304) {
        to = 0; /* an answer without the entry's body (304, 412, 416) */
    } else if (first >= 0) {
        if (first >= (double)len || last < first)
            return LP_FFI_EINVAL;
        from = (uint64_t)first;
        to = last >= (double)len ? len : (uint64_t)last + 1;
    }
    lp_cache_req_body_done(r);
    free(r->resp.local_body);
    r->resp.local_body = NULL;
    rc->body = lp_cache_entry_ref(rc->hit);
    rc->chunk = lp_cache_entry_chunks(rc->body);
    rc->chunk_off = 0;
    while (rc->chunk && from >= rc->chunk->len) {
        from -= rc->chunk->len;
        rc->chunk = rc->chunk->next;
    }
    rc->chunk_off = (size_t)from;
    rc->left = to - (first >= 0 && to ? (uint64_t)first : 0);
    r->resp.local_body_len = (size_t)rc->left;
    r->resp.status = status;
    r->flags |= LP_RF_LOCAL;
    /* The request phase ends here (as req:respond()); in the response phase the plugins that
     * follow still run and see this answer. */
    if (!(r->flags & LP_RF_NO_LUA_RESP))
        lp__lua_mark_responded();
    return 0;
}

int lp_ffi_cache_refresh(void *rp, const char *head, size_t hlen, double keep)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    if (!r->cache.hit)
        return LP_FFI_EINVAL;
    return lp_cache_entry_set_head(r->cache.hit_zone, r->cache.hit, head, hlen, real_now() + keep)
               ? LP_FFI_ENOSPACE
               : 0;
}

double lp_ffi_cache_purge(void *zone, int mode, const char *key, size_t klen)
{
    return (double)lp_cache_purge(zone, mode, key, klen);
}

void lp_ffi_cache_count(void *zone, int what)
{
    lp_cache_count(zone, what);
}
