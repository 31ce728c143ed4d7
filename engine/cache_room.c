/* A stored head is served with the hit's own fields after it, in the request's header array
 * (proxy-t.h, LP_HEADERS_SPARE): an upstream's max_headers fields and a plugin's additions
 * stored whole would leave a hit no room for its Age and Cache-Status, and every hit on the
 * entry would fail. Such a head is refused when stored (issue #13): the response goes to
 * its client uncached, as one over max_object_size does.
 *
 * That check is made under the config of the time. An entry stored before a reload that
 * lowered limits.max_headers, or read from disk after a restart with a lower one, keeps its
 * fields: every request's header arrays hold the most fields of an entry the zones hold plus
 * a hit's own (lp_cache_room_cap), so such a hit is served whole, as it was before the
 * reload. The limit is what a client or an upstream may send; what the proxy serves from
 * its own store was checked when stored. Once such entries are gone (evicted, purged,
 * replaced, their zone dropped), the arrays of the requests made next are the config's size
 * again (lp_cache_room_recount). */
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "cache_room.h"
#include "cache_store_int.h"
#include "config.h"
#include "lua_api.h"
#include "lua_vm.h"
#include "log.h"
#include "worker.h"

/* What requests make room for: the most fields of a head stored or linked (noted at a
 * fill's start and when its entry is linked, before a request can find it), until a
 * recount (lp_cache_room_recount) brings it back to the most that any zone holds linked
 * (each zone's tally: cache_store.c room_add). A recount racing a raise may leave it short
 * of an entry for a while: a request whose arrays are too small for an entry's own count
 * treats it as a miss (lp_ffi_cache_get), never a failed hit, and the response it fetches
 * replaces the entry. Relaxed loads: a request reads it when it takes its header arrays. */
static atomic_uint widest;
static atomic_int recount_due; /* a zone's most fields fell since the last recount */

size_t lp_cache_head_fields(const char *head, size_t hlen)
{
    if (hlen >= LP_CACHE_HEAD_PREFIX && memcmp(head, LP_CACHE_HEAD_MAGIC, 2) == 0 &&
        head[LP_CACHE_HEAD_PREFIX - 1] == '\n') {
        head += LP_CACHE_HEAD_PREFIX; /* its time bytes are no lines */
        hlen -= LP_CACHE_HEAD_PREFIX;
    }
    size_t n = hlen >= 2 && head[0] == 'h' && head[1] == ' ';
    const char *p = head, *end = head + hlen;
    while ((p = memchr(p, '\n', (size_t)(end - p))) && end - p > 2) {
        p++;
        n += p[0] == 'h' && p[1] == ' ';
    }
    return n;
}

static void note(size_t n)
{
    if (n > LP_CACHE_ROOM_MAX)
        return; /* no request makes room for it: a hit on it is a miss */
    unsigned v = (unsigned)n;
    /* Sequentially consistent: see lp_cache_room_recount (plain loads on x86 still). */
    unsigned cur = atomic_load(&widest);
    while (v > cur && !atomic_compare_exchange_weak(&widest, &cur, v))
        ;
}

unsigned lp_cache_room_cap(unsigned cap)
{
    unsigned w = atomic_load_explicit(&widest, memory_order_relaxed);
    return w && w + LP_CACHE_HIT_FIELDS > cap ? w + LP_CACHE_HIT_FIELDS : cap;
}

void lp_cache_room_note(size_t nfields)
{
    note(nfields);
}

void lp_cache_room_fell(void)
{
    atomic_store_explicit(&recount_due, 1, memory_order_relaxed);
}

static void top_of(lp_cache_zone_t *z, void *arg)
{
    unsigned *m = arg, t = lp__cache_zone_room_top(z);
    if (t > *m)
        *m = t;
}

void lp_cache_room_recount(void)
{
    if (!atomic_load_explicit(&recount_due, memory_order_relaxed) ||
        !atomic_exchange(&recount_due, 0))
        return;
    unsigned cur = atomic_load(&widest), m = 0;
    lp_cache_zones_each(top_of, &m);
    /* A head noted meanwhile (cur changed) wins; one linked meanwhile with no more fields
     * than cur raised its zone's top without writing here: the zones are read again after
     * the store, which follows that top's store (sequentially consistent both). */
    if (m >= cur || !atomic_compare_exchange_strong(&widest, &cur, m))
        return;
    unsigned again = 0;
    lp_cache_zones_each(top_of, &again);
    if (again > m)
        note(again);
}

/* Whether a warning of this kind may go out now: once a minute per thread and kind. */
static int once_a_minute(time_t *logged)
{
    time_t now = time(NULL);
    if (now - *logged < 60)
        return 0;
    *logged = now;
    return 1;
}

void lp_cache_room_no_status(int rc)
{
    static _Thread_local time_t logged;
    if (once_a_minute(&logged))
        lp_log(LP_LOG_WARN,
               "cache: a miss went out with no Cache-Status: %s (logged once a minute)",
               rc == LP_FFI_ENOSPACE ? "its header list is full" : "the line was refused");
}

int lp_cache_fields_fit(const lp_worker_t *w, lp_cache_zone_t *z, const char *key, size_t klen,
                        size_t nfields)
{
    /* No worker, or init_worker's private one (lp_lua_io(): no config yet): no request's
     * limit to check against (a zone warmed at the start). */
    if (!w || !w->config) {
        note(nfields);
        return 1;
    }
    size_t room = (size_t)w->config->limits.max_headers + LP_HEADERS_SPARE - LP_CACHE_HIT_FIELDS;
    if (nfields <= room) {
        note(nfields);
        return 1;
    }
    static _Thread_local time_t logged;
    if (once_a_minute(&logged))
        lp_log(LP_LOG_WARN,
               "cache zone %s: not stored: %.*s: over %zu fields leave a hit no room for its "
               "Age and Cache-Status (limits.max_headers + 16 - 4; logged once a minute)",
               lp_cache_zone_name(z), (int)(klen > 200 ? 200 : klen), key, room);
    return 0;
}

int lp_ffi_cache_hit_room(void *rp)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    /* The answer's own: Age, Cache-Status and a 206's Content-Range. */
    return r->cap_headers > 3 ? (int)(r->cap_headers - 3) : 0;
}

void lp_ffi_cache_room_no_status(int rc)
{
    lp_cache_room_no_status(rc);
}
