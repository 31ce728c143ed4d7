/* A stored head is served with the hit's own fields after it, in the request's header array
 * (proxy-t.h, LP_HEADERS_SPARE): an upstream's max_headers fields and a plugin's additions
 * stored whole would leave a hit no room for its Age and Cache-Status, and every hit on the
 * entry would fail. Such a head is refused when stored (issue #13): the response goes to
 * its client uncached, as one over max_object_size does. */
#include <string.h>
#include <time.h>

#include "cache_room.h"
#include "config.h"
#include "log.h"
#include "worker.h"

size_t lp_cache_head_fields(const char *head, size_t hlen)
{
    size_t n = hlen >= 2 && head[0] == 'h' && head[1] == ' ';
    const char *p = head, *end = head + hlen;
    while ((p = memchr(p, '\n', (size_t)(end - p))) && end - p > 2) {
        p++;
        n += p[0] == 'h' && p[1] == ' ';
    }
    return n;
}

int lp_cache_fields_fit(const lp_worker_t *w, lp_cache_zone_t *z, const char *key, size_t klen,
                        size_t nfields)
{
    if (!w)
        return 1;
    size_t room = (size_t)w->config->limits.max_headers + LP_HEADERS_SPARE - LP_CACHE_HIT_FIELDS;
    if (nfields <= room)
        return 1;
    static _Thread_local time_t logged;
    time_t now = time(NULL);
    if (now - logged >= 60) {
        logged = now;
        lp_log(LP_LOG_WARN,
               "cache zone %s: not stored: %.*s: over %zu fields leave a hit no room for its "
               "Age and Cache-Status (limits.max_headers + 16 - 4; logged once a minute)",
               lp_cache_zone_name(z), (int)(klen > 200 ? 200 : klen), key, room);
    }
    return 0;
}

int lp_cache_head_fits(const lp_worker_t *w, lp_cache_zone_t *z, const char *key, size_t klen,
                       const char *head, size_t hlen)
{
    return !w || lp_cache_fields_fit(w, z, key, klen, lp_cache_head_fields(head, hlen));
}
