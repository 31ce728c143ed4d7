/* The response cache on the admin API (cache_admin.h). */
#include "cache_admin.h"

#include <stdlib.h>
#include <string.h>

#include "cache_store.h"
#include "http1.h"
#include "tchar.h"

static json_t *jint(uint64_t v)
{
    return json_integer((json_int_t)v);
}

json_t *lp_cache_admin_status(const lp_config_t *cfg)
{
    json_t *o = json_object();
    for (size_t i = 0; o && i < cfg->ncache_zones; i++) {
        lp_cache_stats_t st;
        lp_cache_zone_stats(cfg->cache_zones[i], &st);
        const uint64_t *n = st.counts;
        json_object_set_new(
            o, lp_cache_zone_name(cfg->cache_zones[i]),
            json_pack("{s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o,s:o}", "entries",
                      jint(st.entries), "bytes", jint(st.bytes), "index_bytes",
                      jint(st.index_bytes), "capacity", jint(st.capacity), "max_object_size",
                      jint(st.max_object), "hit", jint(n[LP_CACHE_C_HIT]), "miss",
                      jint(n[LP_CACHE_C_MISS]), "expired", jint(n[LP_CACHE_C_EXPIRED]), "stale",
                      jint(n[LP_CACHE_C_STALE]), "revalidated", jint(n[LP_CACHE_C_REVALIDATED]),
                      "bypass", jint(n[LP_CACHE_C_BYPASS]), "stored", jint(n[LP_CACHE_C_STORED]),
                      "abandoned", jint(n[LP_CACHE_C_ABANDONED]), "evicted",
                      jint(n[LP_CACHE_C_EVICTED])));
        /* A Vary key over LP_CACHE_MAX_VARIANTS: its least recently used variant went. */
        json_object_set_new(json_object_get(o, lp_cache_zone_name(cfg->cache_zones[i])),
                            "variants_dropped", jint(n[LP_CACHE_C_VARIANTS_DROPPED]));
        json_object_set_new(json_object_get(o, lp_cache_zone_name(cfg->cache_zones[i])), "native",
                            json_pack("{s:o,s:o,s:o}", "misses", jint(n[LP_CACHE_C_NATIVE_MISS]),
                                      "stored", jint(n[LP_CACHE_C_NATIVE_STORED]), "hits",
                                      jint(n[LP_CACHE_C_NATIVE_HIT])));
        if (st.disk) {
            json_t *zo = json_object_get(o, lp_cache_zone_name(cfg->cache_zones[i]));
            json_object_set_new(zo, "disk",
                                json_pack("{s:o,s:o,s:o,s:o,s:b,s:o,s:o,s:o,s:o}", "entries",
                                          jint(st.disk_entries), "bytes", jint(st.disk_bytes),
                                          "capacity", jint(st.disk_capacity), "only_on_disk",
                                          jint(st.stubs), "loading", st.disk_loading, "evicted",
                                          jint(n[LP_CACHE_C_DISK_EVICTED]), "loaded",
                                          jint(n[LP_CACHE_C_DISK_LOADED]), "streamed",
                                          jint(n[LP_CACHE_C_DISK_STREAMED]), "dropped",
                                          jint(n[LP_CACHE_C_DISK_DROPPED])));
        }
    }
    return o ? o : json_object();
}

/* A query value percent-decoded ('+' is a space) into a malloc'd string of *n bytes; NULL
 * when out of memory. */
static char *decode(lp_str_t v, size_t *n)
{
    char *out = malloc(v.len + 1);
    if (!out)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < v.len; i++) {
        int hi, lo;
        if (v.base[i] == '%' && i + 2 < v.len &&
            (hi = lp_hexval((unsigned char)v.base[i + 1])) >= 0 &&
            (lo = lp_hexval((unsigned char)v.base[i + 2])) >= 0) {
            out[k++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[k++] = v.base[i] == '+' ? ' ' : v.base[i];
        }
    }
    out[k] = 0;
    *n = k;
    return out;
}

json_t *lp_cache_admin_purge(const lp_config_t *cfg, lp_str_t name, lp_str_t query, int *status)
{
    lp_cache_zone_t *z = NULL;
    for (size_t i = 0; i < cfg->ncache_zones; i++) {
        const char *zn = lp_cache_zone_name(cfg->cache_zones[i]);
        if (strlen(zn) == name.len && memcmp(zn, name.base, name.len) == 0)
            z = cfg->cache_zones[i];
    }
    if (!z) {
        *status = 404;
        /* NULL when the name is not UTF-8: then the message without it. */
        json_t *msg = json_sprintf("no such cache zone: %.*s", (int)name.len, name.base);
        return json_pack("{s:b,s:o}", "ok", 0, "error",
                         msg ? msg : json_string("no such cache zone"));
    }
    /* key=K, prefix=P or nothing (all), and nothing else: a misspelt argument must not
     * purge the whole zone. */
    lp_str_t key = {0}, prefix = {0};
    const char *bad = NULL;
    for (size_t i = 0; i < query.len && !bad;) {
        const char *a = query.base + i, *end = memchr(a, '&', query.len - i);
        size_t alen = end ? (size_t)(end - a) : query.len - i;
        i += alen + 1;
        if (!alen)
            continue;
        const char *eq = memchr(a, '=', alen);
        size_t nlen = eq ? (size_t)(eq - a) : alen;
        lp_str_t v = {eq ? eq + 1 : a + alen, eq ? alen - nlen - 1 : 0};
        lp_str_t *slot = nlen == 3 && !memcmp(a, "key", 3)      ? &key
                         : nlen == 6 && !memcmp(a, "prefix", 6) ? &prefix
                                                                : NULL;
        if (!slot)
            bad = "unknown argument: use ?key=KEY, ?prefix=PREFIX, or none to purge all";
        else if (slot->base || !v.len)
            bad = "key and prefix take one non-empty value each";
        else
            *slot = v;
    }
    if (!bad && key.base && prefix.base)
        bad = "give key or prefix, not both";
    if (bad) {
        *status = 400;
        return json_pack("{s:b,s:s}", "ok", 0, "error", bad);
    }
    int mode = key.base      ? LP_CACHE_PURGE_KEY
               : prefix.base ? LP_CACHE_PURGE_PREFIX
                             : LP_CACHE_PURGE_ALL;
    size_t n = 0;
    char *k = NULL;
    if (mode != LP_CACHE_PURGE_ALL && !(k = decode(key.base ? key : prefix, &n))) {
        *status = 500;
        return json_pack("{s:b,s:s}", "ok", 0, "error", "out of memory");
    }
    size_t purged = lp_cache_purge(z, mode, k, n);
    free(k);
    *status = 200;
    return json_pack("{s:b,s:s,s:o}", "ok", 1, "mode",
                     mode == LP_CACHE_PURGE_KEY      ? "key"
                     : mode == LP_CACHE_PURGE_PREFIX ? "prefix"
                                                     : "all",
                     "purged", jint(purged));
}
