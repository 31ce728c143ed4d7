/* How many fields a stored head may carry (cache_room.c). */
#ifndef LP_CACHE_ROOM_H
#define LP_CACHE_ROOM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cache_store.h"
#include "proxy-t.h"

/* A head the cache plugin writes (layout 2; plugins/cache.lua encode/decode): "L2", the
 * request and response times as IEEE 754 doubles in little-endian order (8 bytes each; NaN:
 * none), "\n", then text lines "K NAME\tVALUE\n" (K: n number, s string, b flag, h a stored
 * field). The times are binary because writing them as text cost a stored miss more than
 * any other line (exact decimal or hexadecimal floats). Their bytes may be anything, so
 * every reader skips the prefix before looking at lines; a head of another layout (layout 1
 * had the times as text lines, and no prefix) is not the plugin's (decode refuses it: a
 * miss). */
#define LP_CACHE_HEAD_MAGIC  "L2"
#define LP_CACHE_HEAD_PREFIX 19 /* magic, two times, newline */

/* The prefix of a head for those two times at p (LP_CACHE_HEAD_PREFIX bytes). */
static inline void lp_cache_head_prefix(char *p, double request_time, double response_time)
{
    uint64_t a, b;
    memcpy(&a, &request_time, 8);
    memcpy(&b, &response_time, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    a = __builtin_bswap64(a);
    b = __builtin_bswap64(b);
#endif
    memcpy(p, LP_CACHE_HEAD_MAGIC, 2);
    memcpy(p + 2, &a, 8);
    memcpy(p + 10, &b, 8);
    p[18] = '\n';
}

/* Header slots a hit keeps free beyond its stored fields: its Age and Cache-Status, and two
 * for the fields plugins after the cache add (on the miss they had one more: its
 * Cache-Status only). */
#define LP_CACHE_HIT_FIELDS 4

/* Whether a head of nfields fields (a field per "h NAME\tVALUE" line of the cache plugin's
 * layout, counted by its writer) leaves a hit on it LP_CACHE_HIT_FIELDS slots in a request's
 * header array (limits.max_headers + LP_HEADERS_SPARE, w's config; w NULL or without a
 * config, as init_worker's: nothing to check): 1, or 0 (it must not be stored: logged at
 * most once a minute per thread, naming the zone and key). A head that fits is counted into
 * lp_cache_room_cap. */
int lp_cache_fields_fit(const lp_worker_t *w, lp_cache_zone_t *z, const char *key, size_t klen,
                        size_t nfields);
/* How many field lines ("h ...") a head holds (after the prefix, in the plugin's layout). */
size_t lp_cache_head_fields(const char *head, size_t hlen);

/* The most fields of a head requests make room for, and a zone's tally counts (cache_store.c
 * room_add): the largest limits.max_headers (10000) + LP_HEADERS_SPARE. A head with more
 * (a disk file no config of ours wrote) is not counted: a hit on it is a miss
 * (lp_ffi_cache_get finds it too wide for any request). */
#define LP_CACHE_ROOM_MAX 10016
/* The fewest fields of a head that may need more slots than a request has: fewer leave a hit
 * room in any config's arrays (limits.max_headers is 1 or more: 17 slots, 4 the hit's own).
 * Such heads (most) are not counted in the tally. */
#define LP_CACHE_ROOM_MIN (1 + LP_HEADERS_SPARE - LP_CACHE_HIT_FIELDS + 1)

/* An entry of nfields fields is linked (a zone's tally: cache_store.c room_add, before a
 * request can find it): counted into what requests make room for (lp_cache_room_cap). */
void lp_cache_room_note(size_t nfields);

/* The header slots a request takes (its two arrays' capacity): `cap` (limits.max_headers +
 * LP_HEADERS_SPARE), or more when a head stored or indexed since the start has more fields
 * than cap leaves a hit room for (an entry stored before a reload lowered max_headers): its
 * fields + LP_CACHE_HIT_FIELDS. Any thread.
 * A head's width is noted before its entry is linked under the zone lock, so a request made
 * after that makes room for it. Whether a request can carry a hit is told by the entry's own
 * count (lp_ffi_cache_get): one whose arrays are smaller (made before the head was noted, or
 * after it fell back: lp_cache_room_recount) treats the entry as a miss. */
unsigned lp_cache_room_cap(unsigned cap);

/* A zone's most fields fell (its widest entry went: evicted, purged, replaced, or the zone
 * freed): lp_cache_room_recount has work. Any thread, under that zone's lock. */
void lp_cache_room_fell(void);
/* When a zone's most fields fell since the last time: what requests make room for becomes
 * the most fields of an entry any zone holds, so that the header arrays of requests made
 * from now on shrink back (request.c). Off the request path: the workers' house timer, and
 * a purge. Takes the zone registry's lock: never under a zone's. */
void lp_cache_room_recount(void);

/* A miss's Cache-Status was not added (rc: lp__resp_add_wire's code; LP_FFI_ENOSPACE: the
 * response's header list is full): logged at most once a minute per thread. The response
 * goes without it, as it would without the cache. */
void lp_cache_room_no_status(int rc);

#endif
