/* A hit on an entry only on disk (cache_disk_hit.c). */
#ifndef LP_CACHE_DISK_HIT_H
#define LP_CACHE_DISK_HIT_H

#include "cache_store.h"
#include "proxy-t.h"

#include "buf.h"

/* Bodies longer than this are streamed from their file (hits on routes without body filters),
 * shorter ones read back whole and promoted into memory. */
#define LP_CACHE_STREAM_MIN LP_CACHE_CHUNK

typedef struct lp_cache_stream_s lp_cache_stream_t;

/* Reads stub's file back on the threadpool with the running task parked (Lua waits right
 * after the FFI call returns); when it is done, r->cache.loaded holds the entry read back
 * (NULL: damaged, changed or gone: a miss) and r->cache.load_done is set. With `stream`, the
 * body is not read: the file is checked and kept open in r->cache.stream, and `loaded` is
 * the disk-only entry itself. 0, or -1 when the task cannot wait here (nothing started: a
 * miss). */
int lp_cache_disk_load(lp_req_t *r, lp_cache_zone_t *z, lp_cache_entry_t *stub, int stream,
                       lp_cache_fill_t *lock);
/* `lock`: the key's lock (from lp_cache_lock, or NULL), held by the read-back until its entry
 * is promoted (or it failed), so that other requests for the key wait for it instead of
 * reading the file again; taken over after this many seconds. */
#define LP_CACHE_LOAD_LOCK 10.0

/* Whether s streams entry e (and has not failed). */
int lp_cache_stream_entry_is(const lp_cache_stream_t *s, const lp_cache_entry_t *e);
/* The answer takes body bytes [from, from + len): reads start at from (the body CRC is
 * checked when that is the whole body). 0, or -1 (a read in flight, a failed stream). */
int lp_cache_stream_start(lp_cache_stream_t *s, lp_req_t *r, uint64_t from, uint64_t len);
/* The next bytes: 1 and a block (*b, a reference for the caller) of *n bytes; 0 while a read
 * runs (its end calls lp_conn_cache_resume); -1 when the file failed (the entry was dropped:
 * the answer must be cut short). */
int lp_cache_stream_next(lp_cache_stream_t *s, lp_buf_t **b, size_t *n);
/* The request lets go of it (a read in flight finishes first, then it is freed). */
void lp_cache_stream_free(lp_cache_stream_t *s);

#endif
