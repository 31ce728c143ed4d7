/* The response cache on a request's path (engine/cache_ffi.c): what conn.c calls as the
 * response moves, around the store (cache_store.h) and the plugin's FFI calls. */
#ifndef LP_CACHE_REQ_H
#define LP_CACHE_REQ_H

#include "proxy-t.h"

/* The response head is going out: a key lock held without a fill (the plugin did not store
 * this response) is released now, so requests waiting on the key go on. */
void lp_cache_req_head(lp_req_t *req);
/* Upstream body bytes as they go to the client (before any body filter): appended to the fill.
 * A fill over max_object_size is dropped; the response passes on. */
void lp_cache_req_tee(lp_req_t *req, const char *at, size_t len);
/* The upstream response ended complete: the fill is linked. */
void lp_cache_req_done(lp_req_t *req);
/* The request ends: whatever it holds of the cache goes (a fill not committed is dropped). */
void lp_cache_req_end(lp_req_t *req);
/* A hit's body for the client: the pin write batches take on its bytes (NULL when out of
 * memory). */
lp_buf_t *lp_cache_req_pin(lp_req_t *req);
/* Drops the hit's body (written, or cut). */
void lp_cache_req_body_done(lp_req_t *req);
/* An answer from an entry as it fills (req->cache.streaming is LP_CACHE_STREAM_FILL): its
 * next bytes, 1 and *p, *n (in the entry: the pin keeps them); 0 none yet: the fill's next
 * bytes or end call lp_conn_cache_resume (once); 2 the end (the body is complete); -1 the
 * fill failed (or out of memory): the answer must be cut short. */
int lp_cache_req_fill_next(lp_req_t *req, const char **p, size_t *n);

/* The index in LP_FFI_CACHE_FIELDS (lua_api.h) of a field name (any case), or -1
 * (lp_ffi_cache_fields' bits): one of these, which lp__cache_field_index returns for their
 * names (a unit test checks that against the list's order). */
enum {
    LP_CF_CACHE_CONTROL,
    LP_CF_PRAGMA,
    LP_CF_IF_MATCH,
    LP_CF_IF_NONE_MATCH,
    LP_CF_IF_MODIFIED_SINCE,
    LP_CF_IF_UNMODIFIED_SINCE,
    LP_CF_RANGE,
    LP_CF_IF_RANGE,
    LP_CF_AUTHORIZATION,
    LP_CF_CONTENT_LENGTH,
    LP_CF_TRANSFER_ENCODING,
    LP_CF_EXPIRES,
    LP_CF_DATE,
    LP_CF_AGE,
    LP_CF_ETAG,
    LP_CF_LAST_MODIFIED,
    LP_CF_VARY,
    LP_CF_SET_COOKIE,
    LP_CF_CONNECTION,
    LP_CF_CACHE_STATUS,
    LP_CF_LOCATION,
    LP_CF_CONTENT_LOCATION,
    LP_CF_N
};
int lp__cache_field_index(lp_str_t name);
/* What storing the response's fields takes (lp__cache_store_fields): the bytes of their
 * lines, how many, and whether some are never stored (RFC 9111 3.1). cache_fields.h's
 * fields_walk counts it. */
typedef struct {
    size_t need, nfields;
    int skip;
} lp_cache_fields_size_t;

/* lp_ffi_cache_store, _store_fields and _miss_status without the check that the request's
 * Lua phase is running (the engine's own default policy, cache_native.c, calls them). */
struct lp_cache_zone_s;
int lp__cache_store(lp_req_t *r, struct lp_cache_zone_s *zone, const char *key, size_t klen,
                    const char *sec, size_t slen, const char *head, size_t hlen, double keep);
/* _store_fields with the meta given in nmeta pieces (joined as they are written into the
 * entry: the engine's own is made of pieces it keeps, cache_native.c), the number of field
 * lines in it (none in the engine's own) and the time the entry is kept until (seconds,
 * CLOCK_REALTIME) instead of for how long; sized: the response's fields' size as
 * fields_walk gave it (cache_fields.h; the fields unchanged since), or NULL. */
int lp__cache_store_fields(lp_req_t *r, struct lp_cache_zone_s *zone, const char *key, size_t klen,
                           const char *sec, size_t slen, const lp_str_t *meta, size_t nmeta,
                           size_t meta_fields, double keep_until,
                           const lp_cache_fields_size_t *sized);
/* Whether the upstream's body length came with its head (a Content-Length, or no body): a
 * fill started for it was checked against max_object_size then, and is stored unless the
 * body is cut short. A chunked or close-delimited body may go over it after the head went
 * out, and its fill is dropped then: its Cache-Status, sent before, does not say `stored`. */
static inline int lp__cache_body_sized(const lp_req_t *r)
{
    return r->try.peer && !(r->try.peer->h1.flags & (LP_H1F_CHUNKED | LP_H1F_EOF_BODY));
}
/* The common miss's Cache-Status: `stored` (and its ttl) only for a fill of a sized body. */
int lp__cache_miss_status(lp_req_t *r, int status, int stored, double ttl);
/* Its line ("Cache-Status: ...\r\n") into line (LP_CACHE_MISS_LINE bytes): its length, or 0
 * for a status out of range. */
#define LP_CACHE_MISS_LINE       120
#define LP_CACHE_STATUS_NAME_LEN 12 /* "Cache-Status", the line's name */
size_t lp__cache_miss_status_line(char *line, int status, int stored, double ttl);
/* lp_ffi_cache_respond's answer from the looked-up entry (cache.hit), without the Lua phase
 * bookkeeping: the fields (checked: they passed lp__wire_valid), then `more`, and the body or
 * its bytes first..last (first -1: whole; <= -2: none). 0, or an LP_FFI_E* code. */
int lp__cache_answer(lp_req_t *r, int status, const char *fields, size_t flen, int checked,
                     const char *more, size_t mlen, double first, double last);

/* A stopping worker, once nothing runs on it: waits left are cancelled, wake-ups handed over
 * are dropped, and the inbox's async handle closes. */
void lp_cache_worker_close(lp_worker_t *w);

#endif
